/*
 * Upstream connections as proxy.c and client.c use them (upstream.c): a connection to one
 * upstream identity, taken from its pool or made afresh (DNS, connect with fallback to the next
 * address, TLS with verification), the owner it reports to, and the response parser both users
 * share. Internal to those three files: the rest of the core sees upstream.h, proxy.h and
 * client.h. All calls run on the worker's loop thread.
 */
#ifndef EVS_CORE_UPSTREAM_CONN_H
#define EVS_CORE_UPSTREAM_CONN_H

#include <errno.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <uv.h>

#include "http_parse.h"
#include "io.h"

#define EVS__MAX_RESPONSE_FIELDS 256

struct evs__uppool;

/* What an upstream connection is for: proxying a request or a plugin's client request. */
typedef struct evs__upclient {
  /* The connection is usable (0), or could not be made: EVS_EUPSTREAM_REFUSED, EVS_ETLS,
   * -ENOMEM. Not called for a connection taken from the pool (reused). */
  void (*on_connected)(struct evs__upclient *u, int status);
  /* Bytes read, or a negative libuv error (UV_EOF). */
  void (*on_data)(struct evs__upclient *u, ssize_t nread, const char *data);
  /* The write queue fell below the low-water mark; may be NULL. */
  void (*on_drain)(struct evs__upclient *u);
} evs__upclient;

/* One connection to an upstream. Its owner reads io and reused; the rest is upstream.c's. */
typedef struct evs__upconn evs__upconn;
struct evs__upconn {
  evs__io *io;               /* separate, so a failed connect can retry the next address */
  struct evs__uppool *pool;  /* its upstream identity; holds a reference */
  evs__upclient *owner;
  evs__upconn *idle_prev, *idle_next;
  int idle;                  /* in pool->idle */
  uv_timer_t idle_timer;
  uv_getaddrinfo_t gai;
  uv_connect_t connect;
  struct addrinfo *addrs, *cur;
  char *host, *sni;
  int port;
  int tls_verify;
  SSL_CTX *ctx;
  int reused;
  int closed;
  int io_done, timer_done;
  int gai_pending;
  int sni_is_ip;
  const char *unix_path;     /* ABI 1.9: within host ("unix:<path>"), or NULL for TCP */
};

/* A host of the form "unix:<path>" (scheme http) connects to that unix socket (ABI 1.9).
 * Gets an idle connection from the pool of this upstream identity (scheme, host, port, sni,
 * verify, ca_file, cert, key, pass_file; the strings are copied) or starts a new one. The
 * connection reports to owner until it is released or closed. A pooled one comes back with
 * reused set and is usable at once: on_connected is not called for it. Otherwise on_connected
 * runs once, later, unless the connection is closed first. Returns NULL with *ret_err set
 * (-ENOMEM, EVS_ETLS, EVS_EUPSTREAM_REFUSED) on failure; then nothing is called. */
evs__upconn *evs__upconn_get(evs__upclient *owner, const char *scheme, const char *host, int port,
                             const char *sni, int verify, const char *ca_file, const char *cert,
                             const char *key, const char *pass_file, int *ret_err);
/* Gives a connection back: to its pool when reusable (and the pool has room and the worker is not
 * draining), closed otherwise. Its owner is called no more. */
void evs__upconn_release(evs__upconn *u, int reusable);
/* Closes a connection (idempotent). Its owner is called no more; the memory goes once its
 * handles have closed. */
void evs__upconn_close(evs__upconn *u);

/* ---- response parsing, shared by proxy and client ---------------------------------------- */

typedef struct evs__resp_parser {
  char *head;             /* the head, then its fields (aligned): one allocation, owned */
  size_t len, cap;
  evs__http_scan scan;
  evs__http_head h;
  evs__http_field *fields;/* into head, once have_head */
  int have_head;
  int mode;               /* 0 none, 1 length, 2 chunked, 3 until close */
  uint64_t remaining;
  evs__http_chunked chunked;
  int done;
} evs__resp_parser;

/* Feeds bytes of a response head. Returns 0 with *ret_used consumed (have_head set once the
 * head is parsed: its fields stay valid, in head, until head is freed), 1 when an interim (1xx)
 * response was dropped (parse again from *ret_used), -EPROTO, -E2BIG or -ENOMEM. head_request:
 * the response has no body. The parser owns head (free it when done). */
int evs__resp_parse_head(evs__resp_parser *p, const char *data, size_t len, int head_request,
                         size_t *ret_used);

/* Decodes body bytes after the head, handing runs of body to cb (a negative return from cb
 * stops with -ECANCELED). Sets done at the end of the body. Returns 0 with *ret_used bytes
 * consumed (bytes behind the body are not), or -EPROTO. Inline: it runs for every read of a
 * response body, and the proxy's emit callback can be inlined into it. */
static inline int evs__resp_parse_body(evs__resp_parser *p, const char *data, size_t len,
                                       int (*cb)(void *arg, const char *d, size_t n), void *arg,
                                       size_t *ret_used) {
  size_t off = 0;
  while (off < len && !p->done) {
    if (p->mode == 1) {
      size_t n = len - off < p->remaining ? len - off : (size_t)p->remaining;
      p->remaining -= n;
      if (p->remaining == 0) p->done = 1;
      if (cb(arg, data + off, n) < 0) return -ECANCELED;
      off += n;
    } else if (p->mode == 2) {
      size_t used, dl = 0;
      const char *dp = NULL;
      if (evs__http_chunked_decode(&p->chunked, data + off, len - off, &used, &dp, &dl) < 0)
        return -EPROTO;
      off += used;
      if (p->chunked.done) p->done = 1;
      if (dl && cb(arg, dp, dl) < 0) return -ECANCELED;
    } else if (p->mode == 3) {
      if (cb(arg, data + off, len - off) < 0) return -ECANCELED;
      off = len;
    } else {
      break;
    }
  }
  *ret_used = off;
  return 0;
}

#endif
