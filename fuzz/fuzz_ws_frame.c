/*
 * libFuzzer target for plugins/relay-common/ws_frame.c, the RFC 6455 frame parser the Inbound
 * Relay runs on every byte a WebSocket client or destination sends. Besides memory errors it
 * checks: the events and the verdict do not depend on how the input is split; every text
 * message delivered is UTF-8 and no message exceeds max_message; control payloads are at most
 * 125 bytes; and what was delivered, framed again by the writer (masked or not), parses back to
 * the same messages. The fast path's frame finder (evs__ws_frame_whole) agrees with the parser:
 * each frame it finds at the start of the input, the parser takes whole, as one message (or ping
 * or pong) with the same payload, refusing it only for invalid UTF-8. The client fast path's
 * one pass (evs__ws_remask_plain) on each such frame's payload gives the byte-by-byte rule's
 * verdict, masks with the new key, and never passes what the UTF-8 check or the guard refuses.
 *
 * The first byte picks the side (bit 0: frames from a client, masked), the split step (bits 1-4)
 * and a small max_message (bits 5-7: 0 none, else 2^(4+n) bytes).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ev_guard.h"
#include "ws_frame.h"
#include "../tests/unit/ws_plain_ref.h"

typedef struct log {
  uint8_t *b;
  size_t len, cap;
  uint8_t *msg; /* the data message being assembled */
  size_t msg_len, msg_cap;
  int msg_op;
  int msg_open; /* count_ev: a message's first piece came, its last not yet */
  uint64_t max;
  /* whole messages and control frames, for re-framing: op, len, bytes */
  uint8_t *items;
  size_t items_len, items_cap;
} log_t;

static void put(uint8_t **b, size_t *len, size_t *cap, const void *p, size_t n) {
  if (*len + n > *cap) {
    *cap = (*len + n) * 2 + 64;
    *b = realloc(*b, *cap);
    if (!*b) abort();
  }
  if (n) memcpy(*b + *len, p, n);
  *len += n;
}

static void item(log_t *l, int op, const uint8_t *p, size_t n) {
  uint8_t h[5] = {(uint8_t)op, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
                  (uint8_t)n};
  put(&l->items, &l->items_len, &l->items_cap, h, 5);
  put(&l->items, &l->items_len, &l->items_cap, p, n);
}

static int on_ev(void *arg, const evs__ws_event *ev) {
  log_t *l = arg;
  uint8_t h[3] = {(uint8_t)ev->control, (uint8_t)ev->opcode, (uint8_t)(ev->first | ev->fin << 1)};
  if (ev->control) {
    if (ev->len > 125) __builtin_trap();
    put(&l->b, &l->len, &l->cap, h, 3);
    put(&l->b, &l->len, &l->cap, ev->data, ev->len);
    item(l, ev->opcode, ev->data, ev->len);
    return 0;
  }
  /* Data: the log holds whole messages (chunking depends on the split; content must not). */
  if (ev->first) {
    l->msg_len = 0;
    l->msg_op = ev->opcode;
  } else if (ev->opcode != l->msg_op) {
    __builtin_trap();
  }
  put(&l->msg, &l->msg_len, &l->msg_cap, ev->data, ev->len);
  if (l->max && l->msg_len > l->max) __builtin_trap();
  if (ev->fin) {
    if (l->msg_op == EVS__WS_OP_TEXT && !evs__ws_utf8_valid(l->msg, l->msg_len)) __builtin_trap();
    put(&l->b, &l->len, &l->cap, h, 1);
    put(&l->b, &l->len, &l->cap, &l->msg_op, 1);
    put(&l->b, &l->len, &l->cap, l->msg, l->msg_len);
    item(l, l->msg_op, l->msg, l->msg_len);
  }
  return 0;
}

static long run(int from_client, uint64_t max, const uint8_t *d, size_t n, size_t step,
                log_t *l) {
  evs__ws_parser *p = malloc(sizeof *p);
  if (!p) abort();
  evs__ws_parser_init(p, from_client, max);
  memset(l, 0, sizeof *l);
  l->max = max;
  long r = 0;
  for (size_t i = 0; i < n && r >= 0; i += step) {
    size_t k = n - i < step ? n - i : step;
    r = evs__ws_parse(p, d + i, k, on_ev, l);
    if (r >= 0 && (size_t)r != k) __builtin_trap(); /* the callback never stops it */
  }
  free(p);
  return r < 0 ? r : 0;
}

static void log_free(log_t *l) {
  free(l->b);
  free(l->msg);
  free(l->items);
}

/* A whole frame is one message: one event, or a client's payload in pieces of the parser's
 * scratch buffer, the first piece starting it and only the last ending it. */
static int count_ev(void *arg, const evs__ws_event *ev) {
  log_t *l = arg;
  if (ev->first == l->msg_open || l->len) __builtin_trap();
  l->msg_open = !ev->fin;
  l->msg_op = ev->opcode;
  put(&l->msg, &l->msg_len, &l->msg_cap, ev->data, ev->len);
  if (ev->fin) l->len++;
  return 0;
}

static void check_remask(const uint8_t *masked, size_t n, const uint8_t key[4]) {
  const uint8_t ko[4] = {0xa5, 0x5a, (uint8_t)n, 0x3c};
  uint8_t *o = malloc(n + 1), *plain = malloc(n + 1);
  if (!o || !plain) abort();
  for (size_t k = 0; k < n; k++) plain[k] = masked[k] ^ key[k & 3];
  int r = evs__ws_remask_plain(o, masked, n, key, ko);
  if (r != ws_plain_ref(plain, n)) __builtin_trap();
  if (r && (!evs__ws_utf8_valid(plain, n) || evs__ev_guard_scan(plain, n) != 0))
    __builtin_trap();
  for (size_t k = 0; r && k < n; k++)
    if (o[k] != (plain[k] ^ ko[k & 3])) __builtin_trap();
  free(o);
  free(plain);
}

static void check_whole(int from_client, uint64_t max, const uint8_t *d, size_t n) {
  evs__ws_frame f;
  evs__ws_parser *p = malloc(sizeof *p);
  if (!p) abort();
  for (size_t i = 0; evs__ws_frame_whole(d + i, n - i, from_client, max, &f);) {
    size_t fl = f.head_len + f.len;
    if (fl > n - i || (from_client != (f.mask != NULL))) __builtin_trap();
    static const uint8_t none[4];
    check_remask(d + i + f.head_len, f.len, f.mask ? f.mask : none);
    log_t l;
    memset(&l, 0, sizeof l);
    evs__ws_parser_init(p, from_client, max);
    long r = evs__ws_parse(p, d + i, fl, count_ev, &l);
    if (r < 0) {
      if (r != -1007 || f.opcode != EVS__WS_OP_TEXT) __builtin_trap();
      log_free(&l);
      break;
    }
    if ((size_t)r != fl || l.len != 1 || l.msg_open || l.msg_op != f.opcode ||
        l.msg_len != f.len || !evs__ws_parser_idle(p))
      __builtin_trap();
    uint8_t *pl = malloc(f.len + 1);
    if (!pl) abort();
    memcpy(pl, d + i + f.head_len, f.len);
    if (f.mask) evs__ws_mask(pl, f.len, f.mask, 0);
    if (f.len && memcmp(pl, l.msg, f.len) != 0) __builtin_trap();
    free(pl);
    log_free(&l);
    i += fl;
  }
  free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int from_client = data[0] & 1;
  size_t step = 1 + ((data[0] >> 1) & 15);
  unsigned mx = data[0] >> 5;
  uint64_t max = mx ? (uint64_t)1 << (4 + mx) : 0;
  data++;
  size--;
  check_whole(from_client, max, data, size);
  log_t a, b;
  long ra = run(from_client, max, data, size, size ? size : 1, &a);
  long rb = run(from_client, max, data, size, step, &b);
  if (ra != rb || a.len != b.len || (a.len && memcmp(a.b, b.b, a.len) != 0)) __builtin_trap();
  if (ra < 0 && ra != -1002 && ra != -1007 && ra != -1009) __builtin_trap();

  /* Frame what was delivered again (a close frame only if it came last) and parse it back. */
  uint8_t *out = NULL;
  size_t olen = 0, ocap = 0;
  for (size_t i = 0; i < a.items_len;) {
    int op = a.items[i];
    size_t n = (size_t)a.items[i + 1] << 24 | (size_t)a.items[i + 2] << 16 |
               (size_t)a.items[i + 3] << 8 | a.items[i + 4];
    const uint8_t *p = a.items + i + 5;
    uint8_t head[14], key[4] = {0x12, 0x34, 0x56, (uint8_t)n};
    size_t hl = evs__ws_frame_head(head, 1, op, n, from_client ? key : NULL);
    put(&out, &olen, &ocap, head, hl);
    size_t at = olen;
    put(&out, &olen, &ocap, p, n);
    if (from_client) evs__ws_mask(out + at, n, key, 0);
    i += 5 + n;
  }
  log_t c;
  long rc = run(from_client, max, out, olen, olen ? olen : 1, &c);
  if (rc != 0 || c.items_len != a.items_len ||
      (a.items_len && memcmp(c.items, a.items, a.items_len) != 0))
    __builtin_trap();
  free(out);
  log_free(&a);
  log_free(&b);
  log_free(&c);
  return 0;
}
