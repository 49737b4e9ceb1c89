/*
 * libFuzzer target for the Inbound Relay's WebSocket message rewriting (relay-inbound/relay_ws.c):
 * a client message is classified (ws_frame.c's evs__ws_message_kind), rewritten by the
 * rewriter for its kind with the relay's selections (rewriter.h: the JSON and XML rewriters the
 * HTTP bodies use), then framed toward the destination (masked) by ws_frame.c. Besides memory
 * errors it checks: a message classified OTHER is never parsed; the rewritten message frames
 * and parses back byte for byte; a text message that was UTF-8 stays UTF-8 after rewriting (a
 * text frame must carry UTF-8); every value replaced is visible to the trust-boundary guard in
 * the output (the destination sees each as an ev: string); and a message the rewriter accepts
 * without selections is unchanged.
 *
 * The first byte picks the opcode (bit 0: text or binary) and the selection (bit 1: none).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ev_guard.h"
#include "jsonpath.h"
#include "rewriter.h"
#include "ws_frame.h"

typedef struct out {
  uint8_t *b;
  size_t len, cap;
  size_t replaced;
  int json;
} out_t;

static const char EV_JSON[] = "\"ev:QkTC:AAAA:BBBBBBBB:CCCCCCCC:$\"";
static const char EV_RAW[] = "ev:QkTC:AAAA:BBBBBBBB:CCCCCCCC:$";

static int emit(void *ud, const char *b, size_t n) {
  out_t *o = ud;
  if (o->len + n + 14 > o->cap) {
    o->cap = (o->len + n + 14) * 2;
    o->b = realloc(o->b, o->cap);
    if (!o->b) abort();
  }
  memcpy(o->b + 14 + o->len, b, n);
  o->len += n;
  return 0;
}

static int transform(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                     size_t *ret_len) {
  out_t *o = ud;
  (void)type;
  (void)v;
  (void)n;
  o->replaced++;
  *ret = o->json ? EV_JSON : EV_RAW;
  *ret_len = o->json ? sizeof EV_JSON - 1 : sizeof EV_RAW - 1;
  return 0;
}

typedef struct got {
  uint8_t *b;
  size_t len;
  int done;
} got_t;

static int on_ev(void *arg, const evs__ws_event *ev) {
  got_t *g = arg;
  if (ev->control) __builtin_trap();
  g->b = realloc(g->b, g->len + ev->len + 1);
  if (!g->b) abort();
  if (ev->len) memcpy(g->b + g->len, ev->data, ev->len);
  g->len += ev->len;
  g->done = ev->fin;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static evs__jsonpath *jp;
  if (!jp) {
    const char *sel[] = {"$.ssn", "$.card.number", "$.doc.ssn", "$..secret"};
    char err[128];
    if (evs__jsonpath_compile(sel, 4, &jp, err, sizeof err) != 0) abort();
  }
  if (size < 1 || size > 65536) return 0;
  int op = data[0] & 1 ? EVS__WS_OP_TEXT : EVS__WS_OP_BINARY;
  int selecting = !(data[0] & 2);
  data++;
  size--;
  int kind = evs__ws_message_kind(data, size);
  out_t o = {0};
  if (kind == EVS__WS_MSG_OTHER) {
    /* passes unchanged: the frame carries the message itself */
    emit(&o, (const char *)data, size ? size : 0);
  } else {
    const char *ct = evs__ws_message_content_type(kind);
    const evs__rewriter_ops *ops = evs__rewriter_for_content_type(ct, strlen(ct));
    if (!ops) __builtin_trap();
    o.json = kind == EVS__WS_MSG_JSON;
    evs__rewriter_select sel = {selecting ? jp : NULL, NULL, 0, ct, strlen(ct), 0};
    void *rw = NULL;
    if (ops->new(&sel, emit, transform, &o, &rw) != 0) abort();
    int r = ops->feed(rw, (const char *)data, size);
    if (r == 0) r = ops->finish(rw);
    ops->free(rw);
    if (r != 0) { /* refused: nothing is forwarded */
      free(o.b);
      return 0;
    }
    if (!selecting && (o.len != size || (size && memcmp(o.b + 14, data, size) != 0)))
      __builtin_trap();
    if (o.replaced && evs__ev_guard_scan(o.b + 14, o.len) < o.replaced) __builtin_trap();
    if (op == EVS__WS_OP_TEXT && evs__ws_utf8_valid(data, size) &&
        !evs__ws_utf8_valid(o.b + 14, o.len))
      __builtin_trap();
  }
  if (!o.b) emit(&o, "", 0), o.len = 0;
  /* Toward the destination: masked, one frame; the destination's parser gets it back. */
  uint8_t head[14], key[4] = {1, 2, 3, 4};
  size_t hl = evs__ws_frame_head(head, 1, op, o.len, key);
  uint8_t *f = o.b + 14 - hl;
  memcpy(f, head, hl);
  uint8_t *copy = malloc(o.len + 1);
  if (!copy) abort();
  memcpy(copy, o.b + 14, o.len);
  evs__ws_mask(o.b + 14, o.len, key, 0);
  evs__ws_parser *p = malloc(sizeof *p);
  if (!p) abort();
  evs__ws_parser_init(p, 1, 0);
  got_t g = {0};
  long r = evs__ws_parse(p, f, hl + o.len, on_ev, &g);
  int utf8_ok = op != EVS__WS_OP_TEXT || evs__ws_utf8_valid(copy, o.len);
  if (utf8_ok && (r != (long)(hl + o.len) || !g.done || g.len != o.len ||
                  (o.len && memcmp(g.b, copy, o.len) != 0)))
    __builtin_trap();
  if (!utf8_ok && r != -1007) __builtin_trap();
  free(g.b);
  free(p);
  free(copy);
  free(o.b);
  return 0;
}
