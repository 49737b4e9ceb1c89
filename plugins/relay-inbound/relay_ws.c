/*
 * relay_ws.c: WebSockets through the Inbound Relay (README "WebSockets"). An Upgrade: websocket
 * request to a relay opens a WebSocket to the destination first (a host client stream: TCP, or
 * TLS verified like every upstream) with a key of the relay's own; only when the destination
 * answered 101 does the client get its 101 (takeover), and a refusal passes through with its
 * status. Then frames flow both ways through relay-common's ws_frame.c, which checks each one
 * strictly. Whole single-frame messages that need no rewriting take a fast path (fast_forward:
 * checked, then forwarded together, one write per read); the others are reassembled and
 * re-framed:
 *
 *   client -> destination: every message goes through the trust-boundary guard (ev_guard.c);
 *     JSON and XML messages on a relay whose fieldsToEncrypt select fields for the WebSocket's
 *     path (method GET or "*") are encrypted through encrypt_body.c, the one implementation the
 *     HTTP requests use; an ev: string anywhere else is refused with close 1008
 *     "encrypted-data-in-field" and nothing of the message is forwarded.
 *   destination -> client: JSON and XML messages holding ev: strings are decrypted through
 *     decrypt_body.c when the relay decrypts responses.
 *
 * Messages of one direction stay in order: while one waits for the enclave, reading from its
 * source stops. Reading also stops while the other side's write queue is above
 * EVS_STREAM_HIGH_WATER (ABI 1.8 backpressure), so a peer that never reads holds at most that
 * much plus one message. permessage-deflate is never offered (the relay would have to inflate to
 * rewrite; it does not rewrite compressed payloads blindly), so no extension is in force and the
 * relay may re-fragment: each message leaves as one frame.
 *
 * State lives in one relay_ws per connection, listed in the plugin state for the 1 s tick (idle
 * and close deadlines, handshake timeout) and for draining (close 1001 on reload or stop).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "decrypt_body.h"
#include "encrypt_body.h"
#include "relay_priv.h"
#include "rewriter.h"
#include "spool.h"
#include "ws_frame.h"

#define HS_MAX (16u << 10)      /* the destination's response head */
#define HS_BODY_MAX (64u << 10) /* a refusal's body passed to the client */
#define PENDING_MAX (1u << 20)  /* bytes read while a direction waits */
#define HEADROOM 14             /* a frame head in front of every payload */
#define MAX_HEADERS 64
#define FAST_MAX (128u << 10)  /* input the fast path takes per write (a 64 KiB frame fits) */
#define KEEP_MAX (64u << 10) /* an encrypt_body that rewrote up to this much is kept for reuse */

enum { WS_CONNECTING, WS_HANDSHAKE, WS_OPEN, WS_CLOSING, WS_DONE };

struct relay_ws;

typedef struct ws_dir {
  struct relay_ws *ws;
  int c2s;                /* client to destination */
  evs__ws_parser *parser;
  /* The parser is mid-frame or mid-message, or refused: the fast path waits. Kept here, set
   * after each evs__ws_parse, so the fast path does not load the parser's lines per read. */
  int parser_busy;
  uint64_t max_message;   /* the parser's */
  uint8_t *msg;           /* HEADROOM bytes, then the message being assembled */
  size_t msg_len, msg_cap;
  int msg_op;
  uint8_t *pending;       /* bytes read while the direction could not parse them */
  size_t pending_len;
  int busy;               /* a message is with the enclave */
  int bp_paused;          /* the other side's write queue is full */
  int reading;
  int stopped;            /* nothing more is read from this side */
  int close_received;     /* a close frame came from this side */
  uint64_t messages;
  evs__encrypt_body *enc;
  evs__decrypt_body *dec;
  uint8_t *prefix;        /* decrypt_body's bytes before the first value */
  size_t prefix_len, prefix_cap;
  size_t guard_found;
  uint8_t *out; /* the fast path's frames toward the destination, masked again; a rewritten
                 * message of up to FAST_MAX bytes */
  size_t out_cap;
} ws_dir;

typedef struct relay_ws {
  relay_txn *t;
  relay_state *st;
  const evs_host *h;
  evs_request *req;       /* NULL once the request ended */
  evs_stream *client, *dest;
  int phase;
  int depth;              /* callbacks of ours on the stack */
  int finished;
  char *hs_req;
  size_t hs_req_len;
  char client_accept[29], dest_accept[29];
  uint8_t *hs;            /* the destination's response: head, then body */
  size_t hs_len, hs_head_len;
  int hs_status;
  uint64_t hs_clen;
  int hs_has_clen;
  ws_dir dir[2];          /* [0] client to destination, [1] destination to client */
  int close_sent[2];      /* [0] to the destination, [1] to the client */
  uint64_t deadline_ms;   /* handshake or close deadline; 0: none */
  uint64_t last_ms;       /* the tick that first saw a frame after the ones before */
  int active;             /* a frame came since the last tick (no clock read per frame) */
  int close_code;         /* the close the relay started with, for the log */
  uint64_t domain_hash;   /* the relay's, for websocket_max_connections */
  int listed;
  struct relay_ws *prev, *next;
} relay_ws;

/* ---- helpers ----------------------------------------------------------------------------- */

/* Deadlines and idle times only, checked by a 1 s tick: the coarse monotonic clock does (it is
 * read per read of every WebSocket, and costs a memory load instead of a clock read). */
static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sha1(const uint8_t *in, size_t n, uint8_t out[20]) {
  unsigned int len = 20;
  EVP_Digest(in, n, out, &len, EVP_sha1(), NULL);
}

/* Masking keys (RFC 6455 §5.3: unpredictable, since the client's bytes are attacker-chosen)
 * from OpenSSL's CSPRNG, a page at a time. Never a weaker source: if it fails the frame goes
 * with a key from the kernel, and if that fails too the connection ends (mask_key < 0). */
static int mask_key(uint8_t key[4]) {
  static uint8_t pool[4096];
  static size_t off = sizeof pool;
  if (off + 4 > sizeof pool) {
    if (RAND_bytes(pool, sizeof pool) != 1) {
      ERR_clear_error();
      return getrandom(key, 4, 0) == 4 ? 0 : -EIO;
    }
    off = 0;
  }
  memcpy(key, pool + off, 4);
  off += 4;
  return 0;
}

static int hdr_is(const evs_header *h, const char *name) {
  return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

/* 1 if the comma-separated list v[0..n) holds token (case-insensitive). */
static int has_token(const char *v, size_t n, const char *token) {
  size_t tl = strlen(token);
  size_t i = 0;
  while (i < n) {
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    size_t s = i;
    while (i < n && v[i] != ',') i++;
    size_t e = i;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e - s == tl && strncasecmp(v + s, token, tl) == 0) return 1;
  }
  return 0;
}

static void ws_finish(relay_ws *ws);
static void dir_update(ws_dir *d);
static void on_read(void *arg, evs_stream *s, int status, const uint8_t *data, size_t len);

static void ws_enter(relay_ws *ws) { ws->depth++; }

static void ws_free(relay_ws *ws) {
  for (int i = 0; i < 2; i++) {
    ws_dir *d = &ws->dir[i];
    free(d->parser);
    free(d->msg);
    free(d->pending);
    evs__encrypt_body_free(d->enc);
    evs__decrypt_body_free(d->dec);
    free(d->prefix);
    free(d->out);
  }
  free(ws->hs_req);
  free(ws->hs);
  free(ws);
}

/* Leaves a callback; frees the connection if it finished and nothing of ours is on the stack. */
static void ws_leave(relay_ws *ws) {
  if (--ws->depth == 0 && ws->finished) ws_free(ws);
}

/* ---- writing frames ---------------------------------------------------------------------- */

static evs_stream *to_stream(relay_ws *ws, int to_client) {
  return to_client ? ws->client : ws->dest;
}

static void on_drain(void *arg, evs_stream *s, int status);

/* Writes whole frames to one side (one write: the stream copies only what the socket does not
 * take at once). */
static int send_bytes(relay_ws *ws, int to_client, const uint8_t *p, size_t n) {
  evs_stream *s = to_stream(ws, to_client);
  if (!s) return -ECONNRESET;
  int r = ws->h->stream_write(s, p, n, NULL, NULL);
  if (r < 0) return r;
  /* Backpressure: the direction feeding this side waits while its queue is full. */
  if (ws->h->stream_write_queued(s) >= EVS_STREAM_HIGH_WATER) {
    ws_dir *feeder = &ws->dir[to_client ? 1 : 0];
    if (!feeder->bp_paused) {
      feeder->bp_paused = 1;
      ws->h->stream_on_drain(s, on_drain, ws);
      dir_update(feeder);
    }
  }
  return 0;
}

/* Writes one frame whose payload sits at buf + HEADROOM (buf is writable: the head goes in front,
 * and a payload to the destination is masked in place). */
static int send_frame(relay_ws *ws, int to_client, int op, uint8_t *buf, size_t len) {
  evs_stream *s = to_stream(ws, to_client);
  if (!s) return -ECONNRESET;
  uint8_t head[14], key[4];
  if (!to_client && mask_key(key) < 0) return -EIO;
  size_t hl = evs__ws_frame_head(head, 1, op, len, to_client ? NULL : key);
  uint8_t *p = buf + HEADROOM - hl;
  memcpy(p, head, hl);
  if (!to_client) evs__ws_mask(buf + HEADROOM, len, key, 0);
  return send_bytes(ws, to_client, p, hl + len);
}

static void send_close(relay_ws *ws, int to_client, int code, const char *reason) {
  if (ws->close_sent[to_client] || !to_stream(ws, to_client)) return;
  ws->close_sent[to_client] = 1;
  uint8_t buf[HEADROOM + 125];
  size_t n = 0;
  if (code) {
    buf[HEADROOM] = (uint8_t)(code >> 8);
    buf[HEADROOM + 1] = (uint8_t)code;
    n = 2;
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > 123) rl = 123;
    memcpy(buf + HEADROOM + 2, reason, rl);
    n += rl;
  }
  send_frame(ws, to_client, EVS__WS_OP_CLOSE, buf, n);
}

/* The relay ends the WebSocket: close frames to both sides (each with its own code), then it
 * waits for their answers until websocket_close_timeout. */
static void ws_close_both(relay_ws *ws, int code_client, const char *reason_client,
                          int code_dest, const char *reason_dest) {
  if (ws->phase >= WS_CLOSING) return;
  ws->phase = WS_CLOSING;
  if (!ws->close_code) ws->close_code = code_client;
  ws->deadline_ms = now_ms() + ws->st->ws_close_timeout_ms;
  send_close(ws, 1, code_client, reason_client);
  send_close(ws, 0, code_dest, reason_dest);
  for (int i = 0; i < 2; i++) dir_update(&ws->dir[i]);
}

/* Both closing handshakes are over (or a side is gone): end both streams. */
static void maybe_done(relay_ws *ws) {
  if (ws->close_sent[0] && ws->close_sent[1] && (ws->dir[0].close_received || ws->dir[0].stopped) &&
      (ws->dir[1].close_received || ws->dir[1].stopped))
    ws_finish(ws);
}

/* ---- messages ---------------------------------------------------------------------------- */

/* A message leaves: the direction's counter, the frame, the buffer reused. */
static void forward(ws_dir *d, uint8_t *buf, size_t len) {
  relay_ws *ws = d->ws;
  d->messages++;
  send_frame(ws, d->c2s ? 0 : 1, d->msg_op, buf, len);
}

/* Copies a spool (after an optional prefix) into a buffer with headroom and forwards it: d->out
 * up to FAST_MAX bytes (kept: the stream copies what the socket does not take), else a buffer
 * of the message's own. */
static int forward_spool(ws_dir *d, const uint8_t *prefix, size_t plen, relay_spool *sp) {
  uint64_t total = plen + (sp ? relay_spool_total(sp) : 0);
  size_t need = HEADROOM + (size_t)total + 1;
  uint8_t *buf = d->out;
  if (need > FAST_MAX) {
    buf = malloc(need);
  } else if (d->out_cap < need) {
    size_t cap = need < 4096 ? 4096 : need;
    if ((buf = realloc(d->out, cap))) {
      d->out = buf;
      d->out_cap = cap;
    }
  }
  if (!buf) return -ENOMEM;
  if (plen) memcpy(buf + HEADROOM, prefix, plen);
  size_t o = plen;
  if (sp) {
    relay_spool_rewind(sp);
    for (;;) {
      size_t got = 0;
      int r = relay_spool_read(sp, buf + HEADROOM + o, total - o, &got);
      if (r < 0) {
        free(buf);
        return r;
      }
      if (got == 0) break;
      o += got;
    }
  }
  forward(d, buf, o);
  if (buf != d->out) free(buf);
  return 0;
}

static void fail_enclave(ws_dir *d) {
  relay_ws *ws = d->ws;
  ws->h->counter_add(ws->st->plugin, d->c2s ? "encrypt_errors" : "decrypt_errors", 1);
  ws_close_both(ws, EVS__WS_CLOSE_INTERNAL, "relay could not reach the enclave",
                EVS__WS_CLOSE_INTERNAL, "relay could not reach the enclave");
}

/* encrypt_body finished (at once or from progress): forward, or close with its error. */
static void enc_done(ws_dir *d) {
  relay_ws *ws = d->ws;
  int status;
  const char *code, *detail;
  d->busy = 0;
  if (ws->t) ws->t->encrypted += (size_t)evs__encrypt_body_encrypted(d->enc);
  if (evs__encrypt_body_error(d->enc, &status, &code, &detail)) {
    ws->h->counter_add(ws->st->plugin, "encrypt_errors", 1);
    if (code && strcmp(code, "encrypted-data-in-field") == 0) {
      ws->h->counter_add(ws->st->plugin, "encrypted_data_in_field", 1);
      ws_close_both(ws, EVS__WS_CLOSE_POLICY, "encrypted-data-in-field",
                    EVS__WS_CLOSE_GOING_AWAY, "client message refused");
    } else if (status >= 500) {
      fail_enclave(d);
    } else {
      ws_close_both(ws, EVS__WS_CLOSE_INVALID_DATA, code ? code : "bad-request",
                    EVS__WS_CLOSE_GOING_AWAY, "client message refused");
    }
  } else if (ws->phase == WS_OPEN) {
    if (forward_spool(d, NULL, 0, evs__encrypt_body_spool(d->enc)) < 0) fail_enclave(d);
  }
  /* Kept for the next message (evs__encrypt_body_reuse), with what a message of up to KEEP_MAX
   * bytes grew in it; a larger message's, or one with calls still out, is freed. */
  if (!evs__encrypt_body_idle(d->enc) || d->msg_len > KEEP_MAX) {
    evs__encrypt_body_free(d->enc);
    d->enc = NULL;
  }
  dir_update(d);
}

static void enc_progress(void *arg) {
  ws_dir *d = arg;
  relay_ws *ws = d->ws;
  if (!d->busy || !evs__encrypt_body_idle(d->enc)) return;
  ws_enter(ws);
  enc_done(d);
  ws_leave(ws);
}

static uint64_t enc_ev_found(void *arg) {
  ws_dir *d = arg;
  return d->guard_found;
}

static int dec_emit(void *arg, const uint8_t *p, size_t n) {
  ws_dir *d = arg;
  if (d->prefix_len + n > d->prefix_cap) {
    size_t cap = d->prefix_cap ? d->prefix_cap : 4096;
    while (cap < d->prefix_len + n) cap *= 2;
    uint8_t *np = realloc(d->prefix, cap);
    if (!np) return -ENOMEM;
    d->prefix = np;
    d->prefix_cap = cap;
  }
  memcpy(d->prefix + d->prefix_len, p, n);
  d->prefix_len += n;
  return 0;
}

static void dec_finish(ws_dir *d, int status) {
  relay_ws *ws = d->ws;
  d->busy = 0;
  if (status < 0) {
    fail_enclave(d);
  } else {
    if (ws->t) ws->t->decrypted += (size_t)evs__decrypt_body_decrypted(d->dec);
    relay_spool *sp =
        evs__decrypt_body_found(d->dec) ? evs__decrypt_body_spool(d->dec) : NULL;
    if (ws->phase == WS_OPEN && forward_spool(d, d->prefix, d->prefix_len, sp) < 0)
      fail_enclave(d);
  }
  evs__decrypt_body_free(d->dec);
  d->dec = NULL;
  d->prefix_len = 0;
  dir_update(d);
}

static void dec_done(void *arg, int status) {
  ws_dir *d = arg;
  relay_ws *ws = d->ws;
  ws_enter(ws);
  dec_finish(d, status);
  ws_leave(ws);
}

/* A client's message: guard, then encrypt or forward. */
static void c2s_message(ws_dir *d) {
  relay_ws *ws = d->ws;
  relay_txn *t = ws->t;
  const evs_host *h = ws->h;
  uint8_t *m = d->msg + HEADROOM;
  d->guard_found = evs__ev_guard_scan(m, d->msg_len);
  int kind = evs__ws_message_kind(m, d->msg_len);
  if (kind && t && t->has_match) {
    const char *ct = evs__ws_message_content_type(kind);
    evs__rewriter_select sel = {t->match.paths, t->match.names, t->match.nnames, ct, strlen(ct),
                                0};
    evs__encrypt_body_cfg c;
    memset(&c, 0, sizeof c);
    c.size = sizeof c;
    c.host = h;
    c.plugin = ws->st->plugin;
    c.app_id = relay_app_id(ws->st, t->relay);
    c.curve = t->relay->curve;
    c.spool_dir = ws->st->spool_dir;
    c.ops = evs__rewriter_for_content_type(ct, strlen(ct));
    c.sel = &sel;
    c.refuse_ev = relay_decrypts_responses(t);
    c.files = 0;
    c.progress = enc_progress;
    c.ev_found = enc_ev_found;
    c.arg = d;
    if (!c.app_id) {
      ws_close_both(ws, EVS__WS_CLOSE_INTERNAL, "relay has fields to encrypt but no app",
                    EVS__WS_CLOSE_GOING_AWAY, "relay error");
      return;
    }
    int r = d->enc ? evs__encrypt_body_reuse(d->enc, &c) : evs__encrypt_body_new(&c, &d->enc);
    if (r < 0) {
      evs__encrypt_body_free(d->enc);
      d->enc = NULL;
      fail_enclave(d);
      return;
    }
    d->busy = 1;
    r = evs__encrypt_body_feed(d->enc, m, d->msg_len);
    if (r >= 0) r = evs__encrypt_body_finish(d->enc);
    else evs__encrypt_body_fail(d->enc, r);
    if (r != EVS__EBODY_PENDING) enc_done(d);
    return;
  }
  if (d->guard_found) {
    h->counter_add(ws->st->plugin, "encrypted_data_in_field", 1);
    ws_close_both(ws, EVS__WS_CLOSE_POLICY, "encrypted-data-in-field", EVS__WS_CLOSE_GOING_AWAY,
                  "client message refused");
    return;
  }
  forward(d, d->msg, d->msg_len);
}

/* A destination's message: decrypt ev: strings of JSON and XML, or forward. */
static void s2c_message(ws_dir *d) {
  relay_ws *ws = d->ws;
  relay_txn *t = ws->t;
  uint8_t *m = d->msg + HEADROOM;
  int kind = evs__ws_message_kind(m, d->msg_len);
  if (kind && t && relay_decrypts_responses(t) && memmem(m, d->msg_len, "ev:", 3)) {
    evs__decrypt_body_cfg c;
    memset(&c, 0, sizeof c);
    c.size = sizeof c;
    c.host = ws->h;
    c.plugin = ws->st->plugin;
    c.app_id = relay_app_id(ws->st, t->relay);
    c.spool_dir = ws->st->spool_dir;
    c.max_file = ws->st->ws_max_message;
    c.emit = dec_emit;
    c.done = dec_done;
    c.arg = d;
    int r = evs__decrypt_body_new(&c, evs__ws_message_content_type(kind), &d->dec);
    if (r < 0) {
      fail_enclave(d);
      return;
    }
    d->busy = 1;
    d->prefix_len = 0;
    r = evs__decrypt_body_feed(d->dec, m, d->msg_len);
    if (r >= 0) r = evs__decrypt_body_finish(d->dec);
    if (r != EVS__DBODY_PENDING) dec_finish(d, r < 0 ? r : 0);
    return;
  }
  forward(d, d->msg, d->msg_len);
}

/* ---- reading ----------------------------------------------------------------------------- */

static int msg_append(ws_dir *d, const uint8_t *p, size_t n) {
  if (HEADROOM + d->msg_len + n > d->msg_cap) {
    size_t cap = d->msg_cap ? d->msg_cap : 4096;
    while (cap < HEADROOM + d->msg_len + n) cap *= 2;
    uint8_t *nm = realloc(d->msg, cap);
    if (!nm) return -ENOMEM;
    d->msg = nm;
    d->msg_cap = cap;
  }
  memcpy(d->msg + HEADROOM + d->msg_len, p, n);
  d->msg_len += n;
  return 0;
}

static int can_parse(const ws_dir *d) {
  return !d->busy && !d->bp_paused && !d->stopped && !d->ws->finished &&
         (d->ws->phase == WS_OPEN || d->ws->phase == WS_CLOSING);
}

static void on_close_frame(ws_dir *d, const uint8_t *p, size_t n) {
  relay_ws *ws = d->ws;
  int from_client = d->c2s;
  d->close_received = 1;
  d->stopped = 1;
  if (ws->phase == WS_OPEN) {
    ws->phase = WS_CLOSING;
    ws->deadline_ms = now_ms() + ws->st->ws_close_timeout_ms;
  }
  /* The other side gets the same close (code and reason), unless it already got one. */
  int to_client = !from_client;
  if (!ws->close_sent[to_client]) {
    uint8_t buf[HEADROOM + 125];
    memcpy(buf + HEADROOM, p, n);
    ws->close_sent[to_client] = 1;
    send_frame(ws, to_client, EVS__WS_OP_CLOSE, buf, n);
  }
  /* A close the relay itself started toward this side is now answered; a close this side
   * started is answered by the other side's close (forwarded above or later). */
  maybe_done(ws);
}

static int on_event(void *arg, const evs__ws_event *ev) {
  ws_dir *d = arg;
  relay_ws *ws = d->ws;
  ws->active = 1;
  if (ev->control) {
    if (ev->opcode == EVS__WS_OP_CLOSE) {
      on_close_frame(d, ev->data, ev->len);
      return 1;
    }
    if (ws->phase == WS_OPEN) { /* ping and pong pass end to end */
      uint8_t buf[HEADROOM + 125];
      memcpy(buf + HEADROOM, ev->data, ev->len);
      send_frame(ws, d->c2s ? 0 : 1, ev->opcode, buf, ev->len);
    }
    return !can_parse(d);
  }
  if (ev->first) {
    d->msg_len = 0;
    d->msg_op = ev->opcode;
  }
  if (msg_append(d, ev->data, ev->len) < 0) {
    ws_close_both(ws, EVS__WS_CLOSE_INTERNAL, "out of memory", EVS__WS_CLOSE_INTERNAL,
                  "out of memory");
    return 1;
  }
  if (ev->fin && ws->phase == WS_OPEN) {
    if (d->c2s) c2s_message(d);
    else s2c_message(d);
  }
  return !can_parse(d);
}

/* A refused frame: the side at fault gets the parser's code, the other side 1001 (a client at
 * fault) or 1014 (a destination at fault: the client learns its server broke the protocol). */
static void parse_error(ws_dir *d, int code) {
  relay_ws *ws = d->ws;
  const char *why = code == EVS__WS_CLOSE_TOO_BIG     ? "message too big"
                    : code == EVS__WS_CLOSE_INVALID_DATA ? "invalid UTF-8"
                                                          : "protocol error";
  ws->h->counter_add(ws->st->plugin, code == EVS__WS_CLOSE_TOO_BIG ? "websocket_too_big"
                                                                    : "websocket_protocol_errors",
                     1);
  d->stopped = 1;
  d->close_received = 1; /* nothing more is read from it */
  if (d->c2s) {
    ws_close_both(ws, code, why, EVS__WS_CLOSE_GOING_AWAY, "client broke the protocol");
  } else {
    char reason[64];
    snprintf(reason, sizeof reason, "destination: %s", why);
    ws_close_both(ws, EVS__WS_CLOSE_BAD_GATEWAY, reason, code, why);
  }
  maybe_done(ws);
}

/* memmem(p, n, "ev:", 3) != NULL, without memmem's set-up cost on short messages. */
static int has_ev(const uint8_t *p, size_t n) {
  const uint8_t *end = p + n;
  for (const uint8_t *e = p; end - e >= 3 && (e = memchr(e, 'e', (size_t)(end - e) - 2)); e++)
    if (e[1] == 'v' && e[2] == ':') return 1;
  return 0;
}

/* The fast path, for what most WebSockets carry: while the parser is between messages, the
 * whole single-frame messages, pings and pongs at the start of the input leave in one write,
 * without the streaming parser, reassembly or a copy per frame. Toward the client the
 * destination's frames leave as they came (unmasked; the input itself is written); toward the
 * destination each frame is unmasked into d->out, checked, and masked again with a key of the
 * relay's: in one pass when it is ASCII with nothing the guard could take for the start of a
 * value (evs__ws_remask_plain; most messages), else in steps. The checks are the parser's and
 * the message handlers' (UTF-8 of text, the trust-boundary guard); a frame that would need
 * anything else (a fragment, a close, a frame not yet whole, a message to encrypt or decrypt,
 * an ev: token to refuse, invalid UTF-8, a frame the parser refuses) stops the fast path, and
 * the streaming path takes it and the rest, so each of those decisions is made in one place
 * only. Takes at most FAST_MAX bytes (the write, and d->out, stay bounded); returns the bytes
 * consumed. */
static size_t fast_forward(ws_dir *d, const uint8_t *p, size_t n) {
  relay_ws *ws = d->ws;
  if (n > FAST_MAX) n = FAST_MAX;
  relay_txn *t = ws->t;
  if (ws->phase != WS_OPEN || !t || d->parser_busy) return 0;
  uint64_t max = d->max_message;
  int c2s = d->c2s;
  int decrypts = !c2s && relay_decrypts_responses(t);
  if (c2s && d->out_cap < n) {
    /* The output is as long as the input (same heads, another key). */
    size_t cap = n < 4096 ? 4096 : n;
    uint8_t *o = realloc(d->out, cap);
    if (!o) return 0;
    d->out = o;
    d->out_cap = cap;
  }
  size_t i = 0;
  uint64_t msgs = 0;
  evs__ws_frame f;
  while (evs__ws_frame_whole(p + i, n - i, c2s, max, &f)) {
    const uint8_t *q = p + i + f.head_len;
    int data = f.opcode < 0x8;
    if (c2s) {
      uint8_t *o = d->out + i, *oq = o + f.head_len;
      uint8_t key[4];
      if (mask_key(key) < 0) break;
      /* One pass for the common message (ASCII, nothing the guard could take for the start of
       * a value): unmasked, looked at and masked again. Anything else, or a relay with fields
       * to select, is unmasked first and checked in full. */
      if (t->has_match || !evs__ws_remask_plain(oq, q, f.len, f.mask, key)) {
        evs__ws_mask_copy(oq, q, f.len, f.mask, 0);
        if (f.opcode == EVS__WS_OP_TEXT && !evs__ws_utf8_valid(oq, f.len)) break;
        if (data && (evs__ev_guard_scan(oq, f.len) ||
                     (t->has_match && evs__ws_message_kind(oq, f.len))))
          break;
        evs__ws_mask(oq, f.len, key, 0);
      }
      memcpy(o, p + i, f.head_len - 4);
      memcpy(o + f.head_len - 4, key, 4);
    } else {
      if (f.opcode == EVS__WS_OP_TEXT && !evs__ws_utf8_valid(q, f.len)) break;
      if (data && decrypts && evs__ws_message_kind(q, f.len) && has_ev(q, f.len)) break;
    }
    msgs += data;
    i += f.head_len + f.len;
  }
  if (i == 0) return 0;
  ws->active = 1;
  d->messages += msgs;
  send_bytes(ws, !c2s, c2s ? d->out : p, i);
  return i;
}

/* Parses what can be parsed now; the rest waits in pending. */
static void parse_bytes(ws_dir *d, const uint8_t *p, size_t n) {
  size_t used = 0;
  while (used < n) {
    size_t k = fast_forward(d, p + used, n - used);
    used += k;
    if (k == 0 || !can_parse(d)) break;
  }
  if (used < n && can_parse(d)) {
    long r = evs__ws_parse(d->parser, p + used, n - used, on_event, d);
    d->parser_busy = d->parser->error || !evs__ws_parser_idle(d->parser);
    if (r < 0) {
      parse_error(d, (int)-r);
      return;
    }
    used += (size_t)r;
  }
  if (used < n && !d->stopped && !d->ws->finished) {
    size_t rest = n - used;
    if (d->pending_len + rest > PENDING_MAX) {
      parse_error(d, EVS__WS_CLOSE_TOO_BIG);
      return;
    }
    uint8_t *np = realloc(d->pending, d->pending_len + rest);
    if (!np) {
      parse_error(d, EVS__WS_CLOSE_INTERNAL);
      return;
    }
    memcpy(np + d->pending_len, p + used, rest);
    d->pending = np;
    d->pending_len += rest;
  }
}

/* Reading follows what the direction may do now: parse what waits, then read or stop. */
static void dir_update(ws_dir *d) {
  relay_ws *ws = d->ws;
  evs_stream *from = d->c2s ? ws->client : ws->dest;
  while (can_parse(d) && d->pending_len) {
    /* Parse from a detached copy: parsing may append to pending again. */
    uint8_t *p = d->pending;
    size_t len = d->pending_len;
    d->pending = NULL;
    d->pending_len = 0;
    parse_bytes(d, p, len);
    free(p);
  }
  if (ws->finished || !from) return;
  int want = can_parse(d);
  if (want && !d->reading) {
    d->reading = 1;
    ws->h->stream_read_start(from, on_read, d);
  } else if (!want && d->reading) {
    d->reading = 0;
    ws->h->stream_read_stop(from);
  }
}

static void on_drain(void *arg, evs_stream *s, int status) {
  relay_ws *ws = arg;
  (void)status;
  ws_enter(ws);
  ws_dir *feeder = &ws->dir[s == ws->client ? 1 : 0];
  ws->h->stream_on_drain(s, NULL, NULL);
  feeder->bp_paused = 0;
  dir_update(feeder);
  ws_leave(ws);
}

static void on_read(void *arg, evs_stream *s, int status, const uint8_t *data, size_t len) {
  ws_dir *d = arg;
  relay_ws *ws = d->ws;
  (void)s;
  if (ws->finished) return;
  ws_enter(ws);
  if (status < 0) {
    /* The side went away. Without a close frame that is abnormal (1006, never sent): the other
     * side learns it as 1001 (the client left) or 1014 (the destination did). Either way the
     * WebSocket is over: the other side's stream shuts down after its close frame. */
    d->stopped = 1;
    if (!d->close_received) {
      if (d->c2s) send_close(ws, 0, EVS__WS_CLOSE_GOING_AWAY, "client went away");
      else {
        if (!ws->close_code) ws->close_code = EVS__WS_CLOSE_BAD_GATEWAY;
        send_close(ws, 1, EVS__WS_CLOSE_BAD_GATEWAY, "destination closed the connection");
      }
    }
    ws_finish(ws);
    ws_leave(ws);
    return;
  }
  if (!can_parse(d) || d->pending_len) {
    /* A read that arrived after we asked to stop, or behind bytes that wait. */
    if (!d->stopped) {
      uint8_t *np = d->pending_len + len <= PENDING_MAX ? realloc(d->pending, d->pending_len + len)
                                                         : NULL;
      if (!np) {
        parse_error(d, EVS__WS_CLOSE_TOO_BIG);
      } else {
        memcpy(np + d->pending_len, data, len);
        d->pending = np;
        d->pending_len += len;
      }
    }
  } else {
    parse_bytes(d, data, len);
  }
  dir_update(d);
  ws_leave(ws);
}

/* ---- the end ----------------------------------------------------------------------------- */

static void ws_unlink(relay_ws *ws) {
  relay_state *st = ws->st;
  if (!ws->listed) return;
  ws->listed = 0;
  if (ws->prev) ws->prev->next = ws->next;
  else if (st->ws_list == ws) st->ws_list = ws->next;
  if (ws->next) ws->next->prev = ws->prev;
  ws->prev = ws->next = NULL;
}

static uint64_t domain_hash(const char *d) {
  uint64_t h = 1469598103934665603ull;
  for (; *d; d++) h = (h ^ (unsigned char)(*d | 0x20)) * 1099511628211ull;
  return h;
}

/* WebSockets of this relay open in this worker (the limit is per worker: README). */
static int64_t relay_ws_count(relay_state *st, uint64_t dh) {
  int64_t n = 0;
  for (relay_ws *w = st->ws_list; w; w = w->next) n += w->domain_hash == dh;
  return n;
}

static void ws_finish(relay_ws *ws) {
  if (ws->finished) return;
  ws->finished = 1;
  ws->phase = WS_DONE;
  relay_state *st = ws->st;
  const evs_host *h = ws->h;
  ws_unlink(ws);
  if (ws->t) {
    ws->t->ws_in = ws->dir[0].messages;
    ws->t->ws_out = ws->dir[1].messages;
    ws->t->ws_close = ws->close_code;
    ws->t->ws = NULL;
  }
  h->counter_add(st->plugin, "websocket_messages_in", ws->dir[0].messages);
  h->counter_add(st->plugin, "websocket_messages_out", ws->dir[1].messages);
  evs_stream *dest = ws->dest, *client = ws->client;
  ws->dest = ws->client = NULL;
  if (dest) h->stream_close(dest);
  if (client) h->stream_close(client); /* ends the request: its log line and transaction */
  ws->t = NULL;
  if (ws->depth == 0) ws_free(ws);
}

/* The Upgrade request ended before the WebSocket opened (the client went away). */
void relay_ws_request_gone(struct relay_ws *ws) {
  ws->req = NULL;
  ws->t = NULL;
  ws_enter(ws);
  ws_finish(ws);
  ws_leave(ws);
}

/* ---- the opening handshake --------------------------------------------------------------- */

/* Headers of the client's request that are the connection's, not the WebSocket's. */
static int hop_by_hop(const evs_header *h) {
  static const char *const names[] = {"host", "connection", "upgrade", "keep-alive",
                                      "te", "trailer", "transfer-encoding", "content-length",
                                      "proxy-authorization", "proxy-connection",
                                      "sec-websocket-key", "sec-websocket-version",
                                      "sec-websocket-extensions", "sec-websocket-accept", NULL};
  for (int i = 0; names[i]; i++)
    if (hdr_is(h, names[i])) return 1;
  return 0;
}

static void refuse(relay_ws *ws, int status, const char *code, const char *detail) {
  if (ws->req) ws->h->respond_error(ws->req, status, code, detail);
  ws_finish(ws);
}

/* Finds the end of the head in hs; parses the status line. 1 when complete, 0 more, -1 bad. */
static int hs_parse_head(relay_ws *ws) {
  uint8_t *e = memmem(ws->hs, ws->hs_len, "\r\n\r\n", 4);
  if (!e) return ws->hs_len > HS_MAX ? -1 : 0;
  ws->hs_head_len = (size_t)(e - ws->hs) + 4;
  if (ws->hs_len < 12 || memcmp(ws->hs, "HTTP/1.", 7) != 0 || ws->hs[8] != ' ') return -1;
  int st = 0;
  for (int i = 9; i < 12; i++) {
    if (ws->hs[i] < '0' || ws->hs[i] > '9') return -1;
    st = st * 10 + (ws->hs[i] - '0');
  }
  ws->hs_status = st;
  return 1;
}

/* The head's fields into hdrs (pointing into hs). Returns how many. */
static size_t hs_headers(relay_ws *ws, evs_header *hdrs, size_t max) {
  char *p = memchr(ws->hs, '\n', ws->hs_head_len);
  char *end = (char *)ws->hs + ws->hs_head_len - 2;
  size_t n = 0;
  if (!p) return 0;
  p++;
  while (p < end && n < max) {
    char *eol = memchr(p, '\n', (size_t)(end - p) + 1);
    if (!eol) break;
    char *le = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
    char *colon = memchr(p, ':', (size_t)(le - p));
    if (colon && colon > p) {
      char *v = colon + 1;
      while (v < le && (*v == ' ' || *v == '\t')) v++;
      char *ve = le;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      hdrs[n].name = p;
      hdrs[n].name_len = (size_t)(colon - p);
      hdrs[n].value = v;
      hdrs[n].value_len = (size_t)(ve - v);
      n++;
    }
    p = eol + 1;
  }
  return n;
}

static void open_ws(relay_ws *ws, evs_header *dh, size_t ndh);

/* The destination answered something other than 101: its status and body pass to the client. */
static void pass_refusal(relay_ws *ws, evs_header *dh, size_t ndh) {
  evs_header out[MAX_HEADERS];
  size_t n = 0;
  for (size_t i = 0; i < ndh; i++) {
    if (hop_by_hop(&dh[i]) || hdr_is(&dh[i], "date") || hdr_is(&dh[i], "server")) continue;
    out[n++] = dh[i];
  }
  size_t body = ws->hs_len - ws->hs_head_len;
  if (ws->hs_has_clen && body > ws->hs_clen) body = (size_t)ws->hs_clen;
  ws->h->counter_add(ws->st->plugin, "websocket_refused_by_destination", 1);
  if (ws->req)
    ws->h->respond(ws->req, ws->hs_status, out, n, ws->hs + ws->hs_head_len, body);
  ws_finish(ws);
}

static void on_hs_read(void *arg, evs_stream *s, int status, const uint8_t *data, size_t len) {
  relay_ws *ws = arg;
  (void)s;
  if (ws->finished) return;
  ws_enter(ws);
  int eof = status < 0;
  if (!eof) {
    size_t cap = HS_MAX + HS_BODY_MAX;
    if (ws->hs_len + len > cap) len = cap - ws->hs_len;
    memcpy(ws->hs + ws->hs_len, data, len);
    ws->hs_len += len;
  }
  int r = ws->hs_head_len ? 1 : hs_parse_head(ws);
  if (r < 0 || (r == 0 && eof)) {
    refuse(ws, 502, "service-unavailable", "The destination's WebSocket handshake was invalid");
    ws_leave(ws);
    return;
  }
  if (r == 0) {
    ws_leave(ws);
    return;
  }
  evs_header dh[MAX_HEADERS];
  size_t ndh = hs_headers(ws, dh, MAX_HEADERS);
  if (ws->hs_status == 101) {
    open_ws(ws, dh, ndh);
    ws_leave(ws);
    return;
  }
  if (ws->hs_status < 200) {
    refuse(ws, 502, "service-unavailable", "The destination answered the WebSocket handshake with 1xx");
    ws_leave(ws);
    return;
  }
  /* A refusal: wait for its body (Content-Length, at most HS_BODY_MAX) or the end. */
  ws->hs_has_clen = 0;
  int chunked = 0;
  for (size_t i = 0; i < ndh; i++) {
    if (hdr_is(&dh[i], "content-length")) {
      ws->hs_has_clen = 1;
      ws->hs_clen = strtoull(dh[i].value, NULL, 10);
    } else if (hdr_is(&dh[i], "transfer-encoding")) {
      chunked = 1;
    }
  }
  size_t have = ws->hs_len - ws->hs_head_len;
  int complete = eof || chunked || (ws->hs_has_clen && (have >= ws->hs_clen || ws->hs_clen > HS_BODY_MAX)) ||
                 ws->hs_status == 204 || ws->hs_status == 304 ||
                 ws->hs_len >= HS_MAX + HS_BODY_MAX;
  if (chunked || (ws->hs_has_clen && ws->hs_clen > HS_BODY_MAX)) {
    ws->hs_len = ws->hs_head_len; /* a body the relay does not hold is left out */
    ws->hs_has_clen = 0;
  }
  if (complete) pass_refusal(ws, dh, ndh);
  ws_leave(ws);
}

static void open_ws(relay_ws *ws, evs_header *dh, size_t ndh) {
  int up = 0, conn = 0, acc = 0;
  const evs_header *proto = NULL;
  for (size_t i = 0; i < ndh; i++) {
    if (hdr_is(&dh[i], "upgrade")) up = has_token(dh[i].value, dh[i].value_len, "websocket");
    else if (hdr_is(&dh[i], "connection")) conn = has_token(dh[i].value, dh[i].value_len, "upgrade");
    else if (hdr_is(&dh[i], "sec-websocket-accept"))
      acc = dh[i].value_len == 28 && memcmp(dh[i].value, ws->dest_accept, 28) == 0;
    else if (hdr_is(&dh[i], "sec-websocket-protocol")) proto = &dh[i];
    else if (hdr_is(&dh[i], "sec-websocket-extensions") && dh[i].value_len) {
      /* None was offered: the relay cannot honour one. */
      refuse(ws, 502, "service-unavailable",
             "The destination chose a WebSocket extension the relay did not offer");
      return;
    }
  }
  if (!up || !conn || !acc) {
    refuse(ws, 502, "service-unavailable", "The destination's WebSocket handshake was invalid");
    return;
  }
  evs_header out[MAX_HEADERS];
  size_t n = 0;
  out[n++] = (evs_header){"Upgrade", 7, "websocket", 9};
  out[n++] = (evs_header){"Connection", 10, "Upgrade", 7};
  out[n++] = (evs_header){"Sec-WebSocket-Accept", 20, ws->client_accept, 28};
  if (proto) out[n++] = *proto;
  for (size_t i = 0; i < ndh && n < MAX_HEADERS; i++) {
    if (hop_by_hop(&dh[i]) || hdr_is(&dh[i], "sec-websocket-protocol") ||
        hdr_is(&dh[i], "date") || hdr_is(&dh[i], "server"))
      continue;
    out[n++] = dh[i];
  }
  evs_stream *c = ws->req ? ws->h->takeover(ws->req, 101, out, n) : NULL;
  if (!c) {
    refuse(ws, 500, "internal-server-error", "Relay could not take the connection over");
    return;
  }
  ws->client = c;
  ws->phase = WS_OPEN;
  ws->deadline_ms = 0;
  ws->last_ms = now_ms();
  ws->h->counter_add(ws->st->plugin, "websocket_connections", 1);
  /* Bytes behind the destination's 101 are its first frames. */
  ws_dir *s2c = &ws->dir[1];
  size_t extra = ws->hs_len - ws->hs_head_len;
  if (extra) {
    s2c->pending = malloc(extra);
    if (s2c->pending) {
      memcpy(s2c->pending, ws->hs + ws->hs_head_len, extra);
      s2c->pending_len = extra;
    }
  }
  free(ws->hs);
  ws->hs = NULL;
  dir_update(&ws->dir[0]);
  if (!ws->finished) dir_update(s2c);
}

static void on_connect(void *arg, evs_stream *s, int status) {
  relay_ws *ws = arg;
  ws_enter(ws);
  if (status < 0) {
    ws->dest = NULL;
    refuse(ws, 502, "service-unavailable",
           status == EVS_ETLS ? "TLS with the destination failed"
                              : "The destination could not be reached");
    ws_leave(ws);
    return;
  }
  ws->phase = WS_HANDSHAKE;
  ws->deadline_ms = now_ms() + ws->st->ws_handshake_timeout_ms;
  if (ws->h->stream_write(s, (const uint8_t *)ws->hs_req, ws->hs_req_len, NULL, NULL) < 0 ||
      ws->h->stream_read_start(s, on_hs_read, ws) < 0) {
    refuse(ws, 502, "service-unavailable", "The destination could not be reached");
    ws_leave(ws);
    return;
  }
  free(ws->hs_req);
  ws->hs_req = NULL;
  ws_leave(ws);
}

/* 1 if the request asks for a WebSocket (Upgrade: websocket, Connection: upgrade). */
int relay_ws_is_upgrade(const evs_host *h, evs_request *req) {
  int up = 0, conn = 0;
  evs_header hd;
  /* Every relayed request asks: one lookup when there is no Upgrade field at all. */
  if (h->request_header(req, "upgrade", &hd) != 0) return 0;
  for (size_t i = 0; h->request_header_at(req, i, &hd) == 0; i++) {
    if (hdr_is(&hd, "upgrade") && has_token(hd.value, hd.value_len, "websocket")) up = 1;
    else if (hdr_is(&hd, "connection") && has_token(hd.value, hd.value_len, "upgrade")) conn = 1;
  }
  return up && conn;
}

/* Appends s[0..n) to the handshake being built (a fixed cap: the client's head is bounded). */
typedef struct hs_buf {
  char *p;
  size_t len, cap;
  int over;
} hs_buf;

static void hs_add(hs_buf *b, const char *s, size_t n) {
  if (b->over || b->len + n > b->cap) {
    b->over = 1;
    return;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}
static void hs_str(hs_buf *b, const char *s) { hs_add(b, s, strlen(s)); }

void relay_ws_start(relay_txn *t) {
  relay_state *st = t->st;
  const evs_host *h = st->host;
  evs_request *req = t->req;
  const evs_request_info *info = h->request_info(req);
  if (!st->ws_enabled) {
    h->respond_error(req, 501, "not-implemented", "WebSockets are turned off on this relay");
    return;
  }
  evs_header key = {0}, ver = {0};
  int has_key = h->request_header(req, "sec-websocket-key", &key) == 0;
  int has_ver = h->request_header(req, "sec-websocket-version", &ver) == 0;
  if (strcmp(info->method, "GET") != 0 || info->version_minor != 1 || !has_key ||
      key.value_len != 24 || key.value[22] != '=' || key.value[23] != '=') {
    h->respond_error(req, 400, "bad-request", "Invalid WebSocket handshake (RFC 6455 4.2.1)");
    return;
  }
  if (!has_ver || ver.value_len != 2 || memcmp(ver.value, "13", 2) != 0) {
    evs_header vh = {"Sec-WebSocket-Version", 21, "13", 2};
    static const char body[] = "{\"status\":426,\"code\":\"bad-request\",\"title\":\"Upgrade Required\",\"detail\":\"Only WebSocket version 13 is supported\"}";
    h->respond(req, 426, &vh, 1, (const uint8_t *)body, sizeof body - 1);
    return;
  }
  evs_upstream up;
  relay_upstream(t, &up);
  uint64_t dh = domain_hash(t->relay->domain);
  if (relay_ws_count(st, dh) >= st->ws_max_connections) {
    h->counter_add(st->plugin, "websocket_limit", 1);
    h->respond_error(req, 503, "service-unavailable",
                     "Too many WebSocket connections to this relay (websocket_max_connections)");
    return;
  }
  relay_ws *ws = calloc(1, sizeof *ws);
  size_t cap = 8192;
  for (size_t i = 0;; i++) {
    evs_header hd;
    if (h->request_header_at(req, i, &hd) < 0) break;
    cap += hd.name_len + hd.value_len + 4;
  }
  cap += strlen(info->target) + 256 + strlen(info->client_addr);
  hs_buf b = {malloc(cap), 0, cap, 0};
  if (ws) {
    ws->dir[0].parser = malloc(sizeof(evs__ws_parser));
    ws->dir[1].parser = malloc(sizeof(evs__ws_parser));
    ws->hs = malloc(HS_MAX + HS_BODY_MAX);
  }
  if (!ws || !b.p || !ws->dir[0].parser || !ws->dir[1].parser || !ws->hs) {
    free(b.p);
    if (ws) ws_free(ws);
    h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return;
  }
  ws->t = t;
  ws->st = st;
  ws->h = h;
  ws->req = req;
  ws->phase = WS_CONNECTING;
  for (int i = 0; i < 2; i++) {
    ws->dir[i].ws = ws;
    ws->dir[i].c2s = i == 0;
    evs__ws_parser_init(ws->dir[i].parser, i == 0, st->ws_max_message);
    ws->dir[i].max_message = st->ws_max_message;
  }
  evs__ws_accept(key.value, key.value_len, sha1, ws->client_accept);
  /* The destination gets a key of the relay's own. */
  uint8_t rnd[16];
  if (RAND_bytes(rnd, sizeof rnd) != 1) { /* a nonce, not a secret: the kernel's will do */
    ERR_clear_error();
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, 0x5a, sizeof rnd);
  }
  char dkey[25];
  EVP_EncodeBlock((unsigned char *)dkey, rnd, sizeof rnd);
  evs__ws_accept(dkey, 24, sha1, ws->dest_accept);

  int tls = strcmp(up.scheme, "https") == 0;
  uint16_t port = up.port ? up.port : (tls ? 443 : 80);
  hs_str(&b, "GET ");
  hs_str(&b, info->target);
  hs_str(&b, " HTTP/1.1\r\nHost: ");
  if (up.host_header) {
    hs_str(&b, up.host_header);
  } else {
    int v6 = strchr(up.host, ':') != NULL;
    if (v6) hs_str(&b, "[");
    hs_str(&b, up.host);
    if (v6) hs_str(&b, "]");
    if (port != (tls ? 443 : 80)) {
      char ps[8];
      snprintf(ps, sizeof ps, ":%u", (unsigned)port);
      hs_str(&b, ps);
    }
  }
  hs_str(&b, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Key: ");
  hs_add(&b, dkey, 24);
  hs_str(&b, "\r\n");
  /* End-to-end fields pass (Origin, cookies, subprotocols, credentials); fields named in
   * Connection are the client's connection's and stop here. */
  evs_header conn_h = {0};
  int has_conn = h->request_header(req, "connection", &conn_h) == 0;
  int xff_done = 0;
  for (size_t i = 0;; i++) {
    evs_header hd;
    if (h->request_header_at(req, i, &hd) < 0) break;
    if (hop_by_hop(&hd)) continue;
    /* An mTLS relay's api-key authenticated the client to the relay and stops here, as on
     * HTTP requests (relay_encrypt.c): it could decrypt everything. */
    if (t->relay->mtls_certificate && hdr_is(&hd, "api-key")) continue;
    char nm[128];
    if (has_conn && hd.name_len < sizeof nm) {
      memcpy(nm, hd.name, hd.name_len);
      nm[hd.name_len] = 0;
      if (has_token(conn_h.value, conn_h.value_len, nm)) continue;
    }
    hs_add(&b, hd.name, hd.name_len);
    hs_str(&b, ": ");
    hs_add(&b, hd.value, hd.value_len);
    if (up.x_forwarded_for && hdr_is(&hd, "x-forwarded-for")) {
      hs_str(&b, ", ");
      hs_str(&b, info->client_addr);
      xff_done = 1;
    }
    hs_str(&b, "\r\n");
  }
  if (up.x_forwarded_for && !xff_done) {
    hs_str(&b, "X-Forwarded-For: ");
    hs_str(&b, info->client_addr);
    hs_str(&b, "\r\n");
  }
  hs_str(&b, "\r\n");
  if (b.over) {
    free(b.p);
    ws_free(ws);
    h->respond_error(req, 431, "bad-request", "Request head too large");
    return;
  }
  ws->hs_req = b.p;
  ws->hs_req_len = b.len;
  t->ws = ws;
  t->content_type_kind = "websocket";
  ws->domain_hash = dh;
  ws->listed = 1;
  ws->next = st->ws_list;
  if (st->ws_list) st->ws_list->prev = ws;
  st->ws_list = ws;
  evs_stream_connect sc;
  memset(&sc, 0, sizeof sc);
  sc.size = sizeof sc;
  sc.host = up.host;
  sc.port = port;
  sc.tls = tls;
  sc.no_verify = tls && !up.verify;
  sc.sni = up.sni;
  sc.ca_file = up.ca_file;
  sc.connect_timeout_ms = up.connect_timeout_ms;
  sc.client_cert_file = up.client_cert_file; /* mTLS relays (ABI 1.8) */
  sc.client_key_file = up.client_key_file;
  sc.client_key_passphrase_file = up.client_key_passphrase_file;
  ws->deadline_ms = 0;
  ws_enter(ws);
  ws->dest = h->stream_connect(st->plugin, &sc, on_connect, ws);
  if (!ws->dest) refuse(ws, 502, "service-unavailable", "The destination could not be reached");
  ws_leave(ws);
}

/* ---- the tick and draining --------------------------------------------------------------- */

void relay_ws_tick(relay_state *st) {
  uint64_t now = now_ms();
  relay_ws *next;
  for (relay_ws *ws = st->ws_list; ws; ws = next) {
    next = ws->next;
    ws_enter(ws);
    /* Idle time counts from the first tick after the last frame: at most a tick later than
     * the frame, the tick's own resolution anyway. */
    if (ws->active) {
      ws->active = 0;
      ws->last_ms = now;
    }
    if (ws->phase == WS_HANDSHAKE && ws->deadline_ms && now >= ws->deadline_ms) {
      refuse(ws, 504, "request-timeout", "The destination did not answer the WebSocket handshake");
    } else if (ws->phase == WS_CLOSING && ws->deadline_ms && now >= ws->deadline_ms) {
      ws_finish(ws);
    } else if (ws->phase == WS_OPEN && st->ws_idle_timeout_ms &&
               now - ws->last_ms >= st->ws_idle_timeout_ms) {
      st->host->counter_add(st->plugin, "websocket_idle_timeouts", 1);
      ws_close_both(ws, EVS__WS_CLOSE_GOING_AWAY, "idle timeout", EVS__WS_CLOSE_GOING_AWAY,
                    "idle timeout");
    }
    ws_leave(ws);
  }
}

void relay_ws_drain(relay_state *st) {
  relay_ws *next;
  for (relay_ws *ws = st->ws_list; ws; ws = next) {
    next = ws->next;
    ws_enter(ws);
    if (ws->phase == WS_OPEN)
      ws_close_both(ws, EVS__WS_CLOSE_GOING_AWAY, "server going away", EVS__WS_CLOSE_GOING_AWAY,
                    "server going away");
    ws_leave(ws);
  }
}

void relay_ws_stop_all(relay_state *st) {
  while (st->ws_list) {
    relay_ws *ws = st->ws_list;
    ws_enter(ws);
    ws_finish(ws);
    ws_leave(ws);
  }
}
