/*
 * ep_client: the worker side of the enclave protocol (enclave/proto/evs_enclave_proto.h). It
 * frames requests and matches responses by request id over a connection of its own to
 * `evserver-enclave`, which it attaches (ATTACH) through the socket the host gave the process
 * at start: the host runs the enclave as a kept helper (ABI 1.7 helper_spawn), restarts it with
 * backoff, and hands the same process to this worker's successor, so the keys unlocked in it
 * stay. When the connection or the process goes, every pending request fails with
 * EVS_ENOCRYPTO (fail closed). Every request also has a deadline, so no caller ever waits
 * forever; a process that misses one, or breaks the protocol, is reported through on_down for
 * the caller to have it killed (and so restarted).
 *
 * Everything runs on the worker's libuv loop thread. The client never logs: it reports through
 * the callbacks it was given and its caller logs once, with context.
 */
#ifndef EVS_EP_CLIENT_H
#define EVS_EP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define EP_RESTART_MIN_MS 200 /* the host's restart backoff for the enclave */
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
  uint64_t request_timeout_ms;
  ep_up_fn on_up;
  void *on_up_arg;     /* also passed to on_down */
  /* Called (on the loop) each time the connection is lost: the process exited or closed it,
   * broke the protocol or let a request pass its deadline; failed is the number of requests
   * failed. Once per loss (ep_client_detach after a loss already reported is a no-op). */
  void (*on_down)(void *arg, size_t failed);
} ep_client_config;

/* Creates the client, with no connection yet. Returns 0 with *ret or -ENOMEM. */
int ep_client_new(uv_loop_t *loop, const ep_client_config *cfg, ep_client **ret);
/* Fails pending requests with EVS_ENOCRYPTO, closes the connection and frees the client once
 * its handles have closed. The process is not the client's: it is left alone. Accepts NULL. */
void ep_client_free(ep_client *c);

/* A process is up (the host's helper STARTED event): attach a new connection through via (the
 * helper's socket, which stays the host's) and say HELLO; on_up follows when it answers.
 * adopted: the process was started by this worker's predecessor. Returns 0 or -errno. */
int ep_client_attach(ep_client *c, int via, int adopted);
/* The process is gone (EXITED): fail what waits on it, as a lost connection does. */
void ep_client_detach(ep_client *c);

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
