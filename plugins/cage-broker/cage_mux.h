/*
 * cage_mux.h: the cage mux (docs/cages.md, "The runner"): many byte channels and a control
 * channel over one byte stream (a virtio-serial port under kvm, a socketpair under the
 * sandbox), with per-channel credit windows and half-close. The same frames carry the runner's
 * own channel between the plugin and evs-cage-vmm (fd 3), where only control frames are used.
 *
 * Two layers: the frame codec (cmux_parse and the cmux_get_* readers; pure, no allocation,
 * fuzzed by fuzz/fuzz_cage_mux.c), and a poll(2)-driven channel engine (struct cmux) that
 * evs-cage-init and evs-cage-vmm share: single-threaded, no libuv, so the cage's init stays a
 * small static binary. Shared by sandbox/cage_init.c, sandbox/cage_vmm.c and cage_run.c.
 */
#ifndef EVS_CAGE_MUX_H
#define EVS_CAGE_MUX_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

/* Frame: u32 payload length, u8 type, u32 channel (big-endian), then the payload. */
#define CMUX_HDR 9
#define CMUX_MAX_PAYLOAD (1u << 20) /* control frames (env, API bodies) */
#define CMUX_MAX_DATA 16384u        /* one DATA frame */
#define CMUX_WINDOW 65536u          /* initial credit of a channel, each direction */

enum cmux_type {
  /* channel frames (channel != 0) */
  CMUX_OPEN = 1,   /* u8 kind, u16 port, name (the rest, <= 255 bytes) */
  CMUX_DATA = 2,   /* bytes, <= CMUX_MAX_DATA, never more than the sender's credit */
  CMUX_CREDIT = 3, /* u32: the receiver consumed this many more bytes */
  CMUX_SHUT = 4,   /* the sender sends no more (half-close) */
  CMUX_CLOSE = 5,  /* the channel is gone both ways (refused, reset or done) */
  /* control frames (channel 0) */
  CMUX_HELLO = 16,    /* init -> host: u16 app port (init is up and read /cage.json);
                         vmm -> plugin: the same, asking for START */
  CMUX_START = 17,    /* host -> init: the environment, strings (u16 length + bytes) */
  CMUX_READY = 18,    /* the app accepts connections on its port */
  CMUX_EXIT = 19,     /* u8 how (0 exit code, 1 signal), u32 number: the app ended */
  CMUX_LOG = 20,      /* u8 stream (1, 2), bytes: one line of the app's output (debug) */
  CMUX_API_REQ = 21,  /* u32 id, string method, string path, body (the rest) */
  CMUX_API_RESP = 22, /* u32 id, u16 status, string content type, body (the rest) */
  CMUX_FAIL = 23,     /* a set-up failure: text (no secret) */
  CMUX_EGRESS = 24,   /* vmm -> plugin: u8 allowed, u16 port, string host, string why */
  CMUX_WHERE = 25,    /* vmm -> plugin: the app socket's path (first on each attach);
                         plugin -> vmm: the egress proxy's socket path */
};

/* Channel kinds (OPEN). */
enum cmux_kind {
  CMUX_KIND_APP = 1,    /* host -> cage: a connection to the app's port */
  CMUX_KIND_EGRESS = 2, /* cage -> host: a connection out, to name:port */
};

typedef struct cmux_frame {
  uint8_t type;
  uint32_t chan;
  const uint8_t *payload;
  uint32_t len;
} cmux_frame;

/* Reads one frame at the start of p (n bytes). Returns its total size (> 0) and *f, 0 when more
 * bytes are needed, or -EPROTO for a frame no peer may send (length over the limits, a control
 * type on a channel or a channel type on channel 0, an unknown type). */
long cmux_parse(const uint8_t *p, size_t n, cmux_frame *f);

/* A cursor over a payload; each reader returns 0, or -EPROTO when the bytes run out (then the
 * cursor is spent and every later read fails too). */
typedef struct cmux_rd {
  const uint8_t *p;
  size_t n;
  int bad;
} cmux_rd;
void cmux_rd_init(cmux_rd *r, const uint8_t *p, size_t n);
int cmux_get_u8(cmux_rd *r, uint8_t *v);
int cmux_get_u16(cmux_rd *r, uint16_t *v);
int cmux_get_u32(cmux_rd *r, uint32_t *v);
/* A string (u16 length + bytes), not NUL-terminated: *s points into the payload. */
int cmux_get_str(cmux_rd *r, const char **s, size_t *len);
/* The rest of the payload. */
void cmux_get_rest(cmux_rd *r, const uint8_t **p, size_t *len);

/* A growable byte buffer with a hard cap; the frame writers append to one. */
typedef struct cmux_buf {
  uint8_t *p;
  size_t len, cap, max;
} cmux_buf;
int cmux_buf_put(cmux_buf *b, const void *p, size_t n); /* -ENOBUFS over max, -ENOMEM */
void cmux_buf_drop(cmux_buf *b, size_t n);              /* consumed from the front */
void cmux_buf_free(cmux_buf *b);                        /* wipes: env and bodies pass here */

/* Frame writers into b: a header, then put_* fields; cmux_frame_end fixes the length. */
size_t cmux_frame_begin(cmux_buf *b, uint8_t type, uint32_t chan); /* returns its offset */
int cmux_put_u8(cmux_buf *b, uint8_t v);
int cmux_put_u16(cmux_buf *b, uint16_t v);
int cmux_put_u32(cmux_buf *b, uint32_t v);
int cmux_put_str(cmux_buf *b, const char *s, size_t len);
int cmux_frame_end(cmux_buf *b, size_t off); /* -EMSGSIZE over CMUX_MAX_PAYLOAD */

/* ---- the channel engine ----------------------------------------------------------------- */

typedef struct cmux cmux;

typedef struct cmux_ops {
  /* A control frame arrived (channel 0). */
  void (*on_ctrl)(void *arg, cmux *m, const cmux_frame *f);
  /* The peer opens channel chan: return a connected local descriptor (made non-blocking by the
   * engine, owned by it from then on) or -1 to refuse (CLOSE is sent). *skip_head set to 1:
   * the first bytes read from the descriptor are an HTTP response head to a CONNECT, checked
   * for 200 and dropped (the egress proxy's answer). */
  int (*on_open)(void *arg, cmux *m, uint32_t chan, uint8_t kind, uint16_t port,
                 const char *name, int *skip_head);
  /* The stream broke or sent a frame no peer may send: the engine is dead (every channel
   * closed); the owner frees it. why is static. */
  void (*on_dead)(void *arg, cmux *m, const char *why);
} cmux_ops;

/* An engine on stream fd (not owned: the caller closes it after cmux_free). odd: this side
 * numbers the channels it opens with odd ids (the cage), else even (the host). */
cmux *cmux_new(int fd, int odd, const cmux_ops *ops, void *arg);
void cmux_free(cmux *m); /* closes every channel's descriptor */

/* Opens a channel for local descriptor fd (connected; owned by the engine from now on, closed on
 * failure too). Returns the channel id, or 0 when over the limit of channels. */
uint32_t cmux_open(cmux *m, int fd, uint8_t kind, uint16_t port, const char *name);

/* Queues a control frame built with the writers on channel 0 (payload of len bytes). */
int cmux_send(cmux *m, uint8_t type, const void *payload, size_t len);
/* Direct access to the output buffer, for control frames built in place. */
cmux_buf *cmux_out(cmux *m);

/* poll(2) integration: fills up to cap entries (the stream first), returns how many. Then
 * cmux_service with the same array after poll returned. */
size_t cmux_pollfds(cmux *m, struct pollfd *pf, size_t cap);
void cmux_service(cmux *m, const struct pollfd *pf, size_t n);
/* Whether the engine has queued output (flush before exiting). */
int cmux_pending(const cmux *m);
/* Channels open. */
unsigned cmux_channels(const cmux *m);

#endif
