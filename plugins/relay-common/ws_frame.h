/*
 * ws_frame: the WebSocket framing of RFC 6455 (§5), as a streaming parser and a frame writer,
 * for the Inbound Relay's WebSockets (relay-inbound/relay_ws.c). The relay terminates the
 * protocol on both sides: it parses every frame a client or a destination sends, checks it
 * strictly, reassembles messages, and writes frames of its own toward the other side.
 *
 * Why here and not libwebsockets: the client side of a relayed WebSocket is a stream the host
 * already took over (its TLS terminated by the core's listener, possibly TLS inside TLS), and
 * libwebsockets can only drive sockets and TLS it owns. The destination side is a host client
 * stream (stream_connect) for the same reason: the host's DNS, connect timeout, CA bundle and
 * certificate verification apply as they do to every other upstream. One parser for both
 * sides, fuzzed (fuzz/fuzz_ws_frame.c), is less code to trust than two.
 *
 * What the parser refuses (the close code the relay then sends, and why):
 *   1002 protocol error: a client frame without a mask or a server frame with one (§5.1); a
 *        reserved bit set (no extension is negotiated: §5.2); an unknown opcode; a control frame
 *        longer than 125 bytes or fragmented (§5.5); a continuation with no message started, or
 *        a new data frame inside a fragmented message (§5.4); a 64-bit length with its top bit
 *        set; a close frame of 1 byte or with a code no peer may send (§7.4).
 *   1007 invalid data: a text message (or a close reason) that is not UTF-8 (§8.1), found as
 *        soon as the bytes arrive, not at the message end.
 *   1009 message too big: a data message longer than max_message bytes in all its frames.
 *
 * Library code: no allocation, no logging, no plugin state; any split of the input gives the
 * same events.
 */
#ifndef EVS_RELAY_WS_FRAME_H
#define EVS_RELAY_WS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define EVS__WS_OP_CONT 0x0
#define EVS__WS_OP_TEXT 0x1
#define EVS__WS_OP_BINARY 0x2
#define EVS__WS_OP_CLOSE 0x8
#define EVS__WS_OP_PING 0x9
#define EVS__WS_OP_PONG 0xA

/* Close codes the relay sends (RFC 6455 §7.4.1). */
#define EVS__WS_CLOSE_NORMAL 1000
#define EVS__WS_CLOSE_GOING_AWAY 1001
#define EVS__WS_CLOSE_PROTOCOL 1002
#define EVS__WS_CLOSE_INVALID_DATA 1007
#define EVS__WS_CLOSE_POLICY 1008
#define EVS__WS_CLOSE_TOO_BIG 1009
#define EVS__WS_CLOSE_INTERNAL 1011
#define EVS__WS_CLOSE_BAD_GATEWAY 1014

/* The parser's events. For data messages: one or more DATA events with the payload unmasked, in
 * order, the last with `fin` set (a message of 0 bytes gives one event with len 0). For control
 * frames: one CONTROL event with the whole (unmasked) payload. Return 0 to go on, or nonzero to
 * stop parsing after this event (evs__ws_parse then returns how much it consumed). */
typedef struct evs__ws_event {
  int control;          /* 0: DATA, 1: CONTROL */
  int opcode;           /* the message's (TEXT, BINARY) or the control frame's */
  int first;            /* DATA: the first bytes of a message */
  int fin;              /* DATA: the message ends with these bytes */
  const uint8_t *data;  /* valid during the call */
  size_t len;
} evs__ws_event;

typedef int (*evs__ws_event_fn)(void *arg, const evs__ws_event *ev);

typedef struct evs__ws_parser {
  int from_client;      /* frames must be masked (client to server) or must not be */
  uint64_t max_message; /* 0: no limit */
  /* frame head being read */
  uint8_t head[14];
  uint8_t head_len;
  /* current frame */
  int in_frame;
  int fin, opcode;
  uint8_t mask[4];
  int masked;
  uint64_t remaining;
  uint64_t frame_off;   /* payload bytes of this frame seen (the mask's phase) */
  /* current data message */
  int in_message, msg_opcode, msg_started;
  uint64_t msg_len;
  /* UTF-8 of a text message: bytes still expected, and the bounds of the next one */
  uint8_t utf8_need, utf8_lo, utf8_hi;
  /* a control frame's payload */
  uint8_t ctl[125];
  uint8_t ctl_len;
  int error;            /* the close code after a refusal (sticky) */
  uint8_t scratch[4096];/* unmasked payload on its way to the callback */
} evs__ws_parser;

void evs__ws_parser_init(evs__ws_parser *p, int from_client, uint64_t max_message);
/* Parses buf[0..len). Returns the number of bytes consumed (len unless the callback stopped),
 * or a negative close code (-1002, -1007, -1009) once the input is refused: the connection is
 * then over (later calls return the same). */
long evs__ws_parse(evs__ws_parser *p, const uint8_t *buf, size_t len, evs__ws_event_fn fn,
                   void *arg);
/* 1 when no frame or message is half-read. Inline: the fast path asks it per read. */
static inline int evs__ws_parser_idle(const evs__ws_parser *p) {
  return !p->in_frame && p->head_len == 0 && !p->in_message;
}

/* One whole frame found by evs__ws_frame_whole: the relay's fast path (relay_ws.c) forwards such
 * frames without the streaming parser, reassembly or a copy per frame. */
typedef struct evs__ws_frame {
  int opcode;           /* TEXT or BINARY (then a whole message: FIN set), PING or PONG */
  size_t head_len;      /* bytes before the payload, the mask key included */
  size_t len;           /* payload bytes: the frame is p[0 .. head_len + len) */
  const uint8_t *mask;  /* the key of a client frame (inside p), else NULL */
} evs__ws_frame;

/* 1 if p[0..n) starts with a whole frame that a parser between messages would take as it is: a
 * data frame with FIN set (a whole message of at most max_message bytes, 0: no limit) or a ping
 * or pong, with the side's mask rule and no reserved bit; *f then describes it. 0 for anything
 * else (a frame not yet whole, a fragment, a close, a frame the parser refuses): those bytes
 * belong to evs__ws_parse, which alone decides on them. The payload is not looked at: UTF-8 of
 * a text frame is the caller's to check (a client's payload is still masked here).
 * Inline: the fast path asks it per frame. */
static inline int evs__ws_frame_whole(const uint8_t *p, size_t n, int from_client,
                                      uint64_t max_message, evs__ws_frame *f) {
  if (n < 2) return 0;
  int op = p[0] & 0x0F, fin = p[0] >> 7, masked = p[1] >> 7;
  if ((p[0] & 0x70) || masked != from_client) return 0;
  size_t hl = 2;
  uint64_t len = p[1] & 0x7F;
  if (len == 126) {
    if (n < 4) return 0;
    len = ((uint64_t)p[2] << 8) | p[3];
    hl = 4;
  } else if (len == 127) {
    return 0; /* over 64 KiB: the streaming parser takes it a piece at a time */
  }
  if (op == EVS__WS_OP_TEXT || op == EVS__WS_OP_BINARY) {
    if (!fin || (max_message && len > max_message)) return 0;
  } else if (op == EVS__WS_OP_PING || op == EVS__WS_OP_PONG) {
    if (!fin || len > 125) return 0;
  } else {
    return 0;
  }
  if (masked) hl += 4;
  if (n < hl || n - hl < len) return 0;
  f->opcode = op;
  f->head_len = hl;
  f->len = (size_t)len;
  f->mask = masked ? p + hl - 4 : NULL;
  return 1;
}

/* Writes a frame head for one whole frame into out (at most 14 bytes); returns its length.
 * mask NULL: unmasked (server to client); else the 4-byte key (the caller masks the payload). */
size_t evs__ws_frame_head(uint8_t out[14], int fin, int opcode, uint64_t len,
                          const uint8_t *mask);
/* XORs p[0..n) with key, starting at phase `off` of the key (off = bytes masked before). */
void evs__ws_mask(uint8_t *p, size_t n, const uint8_t key[4], uint64_t off);
/* The same from src into dst (the same buffer, or not overlapping): copies and masks at once. */
void evs__ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4],
                       uint64_t off);

/* The client-to-destination fast path's one pass over a client frame's payload (relay_ws.c):
 * dst[0..n) gets src[0..n) unmasked with key_in and masked again with key_out (no overlap
 * between dst and src), and the unmasked bytes are looked at on the way. Returns 1 if they are
 * all ASCII and none of them is where the trust-boundary guard could start an escape or a value
 * (a '%', '\\' or '&'; an 'e' followed by 'v', 'e', '%', '\\' or '&', or last): then
 * evs__ws_utf8_valid holds and evs__ev_guard_scan finds nothing, so neither needs to run. 0
 * otherwise, with dst unspecified: the caller then unmasks and runs those checks themselves
 * (test_ws_frame checks the rule against both, at every offset). */
int evs__ws_remask_plain(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key_in[4],
                         const uint8_t key_out[4]);

/* A close frame's payload: 1 if valid (empty, or a code a peer may send followed by UTF-8), and
 * then *code (1005 for an empty payload); 0 otherwise. */
int evs__ws_close_valid(const uint8_t *p, size_t n, int *code);
/* 1 if a close code may appear on the wire (1000-1003, 1007-1014, 3000-4999). */
int evs__ws_close_code_ok(int code);
/* 1 if s[0..n) is UTF-8 (RFC 3629: no overlongs, surrogates or code points above 10FFFF). */
int evs__ws_utf8_valid(const uint8_t *s, size_t n);

/* What a data message holds, by its first byte after an optional UTF-8 BOM and whitespace:
 * EVS__WS_MSG_JSON ('{' or '['), EVS__WS_MSG_XML ('<'), else EVS__WS_MSG_OTHER (passes through
 * unchanged, after the trust-boundary guard). The rewriter then parses it strictly: a message
 * that only starts like JSON is refused, never forwarded half-understood. */
#define EVS__WS_MSG_OTHER 0
#define EVS__WS_MSG_JSON 1
#define EVS__WS_MSG_XML 2
int evs__ws_message_kind(const uint8_t *p, size_t n);
/* The Content-Type whose rewriter reads a message of that kind. */
const char *evs__ws_message_content_type(int kind);

/* The Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2): out gets 28 characters and
 * a NUL. sha1 is the caller's SHA-1 (20 bytes out), so this file needs no crypto library. */
void evs__ws_accept(const char *key, size_t key_len,
                    void (*sha1)(const uint8_t *in, size_t n, uint8_t out[20]), char out[29]);

#endif
