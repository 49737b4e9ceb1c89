/*
 * ep_client: the worker side of the enclave protocol (enclave/proto/evs_enclave_proto.h). It
 * spawns `evserver-enclave` on one end of a socketpair, frames requests, matches responses by
 * request id, and supervises the process: when it exits or its socket closes, every pending
 * request fails with EVS_ENOCRYPTO (fail closed), and a timer starts a new process within
 * EP_RESTART_MAX_MS. Every request also has a deadline, so no caller ever waits forever.
 *
 * The process may outlive the client: each new one gets a spare connection (ATTACH) that the
 * caller hands to the host to keep for the worker's successor, which attaches to the same
 * process through it (adopt_fd) instead of starting one, so the keys unlocked in it stay.
 *
 * Everything runs on the worker's libuv loop thread. The client never logs: it reports through
 * the callbacks it was given and its caller logs once, with context.
 */
#ifndef EVS_EP_CLIENT_H
#define EVS_EP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define EP_RESTART_MIN_MS 200
#define EP_RESTART_MAX_MS 2000

/* One item of a message: points into a buffer that lives for the duration of a callback. */
typedef struct ep_item {
  const uint8_t *data;
  uint32_t len;
} ep_item;

/* A request under construction: items appended to one growing buffer (header space first). */
typedef struct ep_msg {
  uint8_t *buf;
  size_t len, cap;
  uint32_t nitems;
  uint16_t op;
  int failed; /* an append ran out of memory or over the protocol's limits */
} ep_msg;

void ep_msg_init(ep_msg *m, uint16_t op);
void ep_msg_add(ep_msg *m, const void *data, size_t len);
void ep_msg_add_str(ep_msg *m, const char *s);
/* One item that is data followed by data2 (e.g. a type tag and a value). */
void ep_msg_add2(ep_msg *m, const void *data, size_t len, const void *data2, size_t len2);
/* Appends a concatenation of items (`u32 len, bytes` repeated, as in crypto-provider payloads)
 * as it is, in one copy. Returns 0, or -EINVAL when p is malformed or holds more than
 * EVS_EP_MAX_ITEMS items (m is then unchanged). */
int ep_msg_add_items(ep_msg *m, const uint8_t *p, size_t len);
void ep_msg_done(ep_msg *m);

/* Parses a concatenation of items (`u32 len, bytes` repeated) as used in crypto-provider payloads.
 * Returns the count (<= max) or -EINVAL if malformed. */
int ep_items_parse(const uint8_t *p, size_t len, ep_item *ret, size_t max);

/* status: 0 or a negative enum evs_ep_status from the enclave; EVS_ENOCRYPTO when the enclave
 * is down, died, or did not answer in time. items are valid during the call only. */
typedef void (*ep_reply_fn)(void *arg, int status, const ep_item *items, size_t nitems);

/* Called (on the loop) each time a new enclave process has answered HELLO, so the caller can
 * re-unlock apps. */
typedef void (*ep_up_fn)(void *arg);

typedef struct ep_client ep_client;

typedef struct ep_client_config {
  const char *binary;          /* evserver-enclave; copied */
  const char *seal_key;        /* copied */
  const char *credentials_dir; /* copied; NULL: none */
  /* Names the configuration an enclave is started with (--tag, echoed by HELLO): an enclave
   * reached through adopt_fd is used only if its tag is this one. Copied; NULL: none. */
  const char *tag;
  /* A connection to a running enclave that a predecessor of this worker started (the host's
   * kept_fd), or -1. The first start attaches to that enclave instead of starting one; the
   * client owns and closes the descriptor. */
  int adopt_fd;
  /* Called after each start of a new process with a spare connection to it, to be kept where a
   * successor finds it (the host's keep_fd): nothing is ever read from it, and it is used only
   * to attach further connections. Returns 0 if it was kept (the process then outlives this
   * client); the client closes fd after the call. NULL: the process ends with the client. */
  int (*on_spare)(void *arg, int fd);
  uint64_t request_timeout_ms;
  ep_up_fn on_up;
  void *on_up_arg;     /* also passed to on_down */
  /* Called (on the loop) each time the process is lost: exited, closed its socket, broke the
   * protocol or let a request pass its deadline; failed is the number of requests failed. */
  void (*on_down)(void *arg, size_t failed);
} ep_client_config;

/* Creates the client and starts the first enclave process. Returns 0 with *ret or a negative
 * errno (the process could not be started). */
int ep_client_new(uv_loop_t *loop, const ep_client_config *cfg, ep_client **ret);
/* Fails pending requests with EVS_ENOCRYPTO, stops the process (SIGTERM, then SIGKILL) and
 * frees the client once its handles have closed. Accepts NULL. */
void ep_client_free(ep_client *c);

/* Sends m (consumed: it is done on return, whatever happens). If the call fails (-ENOMEM,
 * -E2BIG, EVS_ENOCRYPTO when the enclave is down) cb never runs; otherwise it runs exactly once,
 * later, on the loop. */
int ep_client_call(ep_client *c, ep_msg *m, ep_reply_fn cb, void *arg);

/* Whether a process is running and answered HELLO. pid 0 when none (from HELLO for an adopted
 * process). */
int ep_client_ready(const ep_client *c);
int ep_client_pid(const ep_client *c);
/* Enclaves that answered HELLO so far (started or adopted). */
uint64_t ep_client_starts(const ep_client *c);
/* Whether the current enclave was adopted from a predecessor rather than started here. */
int ep_client_adopted(const ep_client *c);

#endif
