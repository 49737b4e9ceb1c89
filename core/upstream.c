/*
 * Upstream connections: the pool, keyed by upstream identity (scheme, host, port, TLS settings);
 * asynchronous DNS (uv_getaddrinfo); connect, falling back to the next address; TLS client with
 * certificate verification unless the upstream turns it off, and mTLS. And the response parser
 * that its two users share: proxying a client request (proxy.c) and the plugins' client requests
 * (client.c), both through upstream_conn.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmt.h"
#include "log.h"
#include "tls.h"
#include "upstream.h"
#include "upstream_conn.h"
#include "worker.h"

#define MAX_RESPONSE_HEAD (64u * 1024u)

typedef struct evs__uppool pool;

/* The connections to one upstream identity (scheme, host, port, TLS settings: the key). It lives
 * while any of them does, and counts its idle ones, so releasing a connection compares no keys
 * and getting one compares one key per upstream in use rather than one per idle connection. */
struct evs__uppool {
  char *key;
  size_t refs;            /* upconns pointing here */
  evs__upconn *idle;           /* newest first */
  size_t nidle;
  pool *next;
};

static pool *pools;

static pool *pool_ref(const char *key) {
  pool *p;
  for (p = pools; p; p = p->next)
    if (strcmp(p->key, key) == 0) break;
  if (!p) {
    p = calloc(1, sizeof *p);
    if (!p || !(p->key = strdup(key))) {
      free(p);
      return NULL;
    }
    p->next = pools;
    pools = p;
  }
  p->refs++;
  return p;
}

static void pool_unref(pool *p) {
  if (!p || --p->refs > 0) return;
  for (pool **pp = &pools; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  free(p->key);
  free(p);
}

static void upconn_maybe_free(evs__upconn *u) {
  if (!u->io_done || !u->timer_done || u->gai_pending) return;
  if (u->addrs) uv_freeaddrinfo(u->addrs);
  pool_unref(u->pool);
  free(u->host);
  free(u->sni);
  free(u);
}
static void upconn_io_closed(evs__io *io) {
  evs__upconn *u = io->data;
  free(io);
  u->io_done = 1;
  upconn_maybe_free(u);
}
static void upconn_timer_closed(uv_handle_t *h) {
  evs__upconn *u = h->data;
  u->timer_done = 1;
  upconn_maybe_free(u);
}

static void idle_remove(evs__upconn *u) {
  if (!u->idle) return;
  pool *p = u->pool;
  if (u->idle_prev) u->idle_prev->idle_next = u->idle_next;
  else p->idle = u->idle_next;
  if (u->idle_next) u->idle_next->idle_prev = u->idle_prev;
  u->idle_prev = u->idle_next = NULL;
  u->idle = 0;
  p->nidle--;
}

static void idle_add(evs__upconn *u) {
  pool *p = u->pool;
  u->idle_prev = NULL;
  u->idle_next = p->idle;
  if (p->idle) p->idle->idle_prev = u;
  p->idle = u;
  u->idle = 1;
  p->nidle++;
}

void evs__upconn_close(evs__upconn *u) {
  if (u->closed) return;
  u->closed = 1;
  u->owner = NULL;
  idle_remove(u);
  uv_close((uv_handle_t *)&u->idle_timer, upconn_timer_closed);
  evs__io_close(u->io);
}

void evs__upstream_pool_close_all(void) {
  for (pool *p = pools; p; p = p->next)
    while (p->idle) evs__upconn_close(p->idle); /* pools go when their connections are freed */
}

static void upconn_read(evs__io *io, ssize_t nread, const char *data) {
  evs__upconn *u = io->data;
  if (u->owner) {
    u->owner->on_data(u->owner, nread, data);
    return;
  }
  /* Idle: anything (data or EOF) makes the connection unusable. */
  evs__upconn_close(u);
}

static void upconn_drain(evs__io *io) {
  evs__upconn *u = io->data;
  if (u->owner && u->owner->on_drain) u->owner->on_drain(u->owner);
}

static void idle_timeout(uv_timer_t *t) { evs__upconn_close(t->data); }

void evs__upconn_release(evs__upconn *u, int reusable) {
  u->owner = NULL;
  if (!reusable || u->closed || evs__w->draining) {
    evs__upconn_close(u);
    return;
  }
  if (u->pool->nidle >= (size_t)evs__w->settings->upstream_pool_max_idle) {
    evs__upconn_close(u);
    return;
  }
  u->reused = 1;
  idle_add(u);
  uv_timer_start(&u->idle_timer, idle_timeout, (uint64_t)evs__w->settings->upstream_pool_idle_timeout_ms, 0);
  evs__io_read_start(u->io);
}

static void connect_next(evs__upconn *u);

static void free_io(evs__io *io) { free(io); }

static int upconn_new_io(evs__upconn *u) {
  u->io = malloc(sizeof *u->io);
  if (!u->io) return -ENOMEM;
  if (u->unix_path) uv_pipe_init(evs__w->loop, &u->io->h.pipe, 0);
  else uv_tcp_init(evs__w->loop, &u->io->h.tcp);
  evs__io_init(u->io, u);
  u->io->on_close = upconn_io_closed;
  u->io->on_read = upconn_read;
  u->io->on_drain = upconn_drain;
  return 0;
}

static void on_tls_handshake(evs__io *io, int status) {
  evs__upconn *u = io->data;
  if (u->owner) u->owner->on_connected(u->owner, status < 0 ? EVS_ETLS : 0);
}

static void on_connect(uv_connect_t *req, int status) {
  evs__upconn *u = req->data;
  if (u->closed) return;
  if (status < 0) {
    if (u->cur && u->cur->ai_next) {
      u->cur = u->cur->ai_next;
      /* A failed connect leaves the handle unusable: start over with a fresh one. */
      evs__io *old = u->io;
      old->on_close = free_io;
      evs__io_close(old);
      if (upconn_new_io(u) < 0) {
        u->io_done = 1;
        if (u->owner) u->owner->on_connected(u->owner, -ENOMEM);
        return;
      }
      connect_next(u);
      return;
    }
    if (u->owner) u->owner->on_connected(u->owner, EVS_EUPSTREAM_REFUSED);
    return;
  }
  if (!u->unix_path) uv_tcp_nodelay(&u->io->h.tcp, 1);
  if (u->ctx) {
    int r = evs__io_tls_client(u->io, u->ctx, u->sni_is_ip ? NULL : u->sni,
                               u->tls_verify ? u->sni : NULL, on_tls_handshake);
    if (r < 0) {
      if (u->owner) u->owner->on_connected(u->owner, EVS_ETLS);
      return;
    }
    evs__io_read_start(u->io);
    return;
  }
  /* A plain connection is pooled and reused request after request: read edge-triggered
   * (io_edge.c), as the client's side is. On failure libuv reads it. */
  (void)evs__io_edge_on(u->io);
  evs__io_read_start(u->io);
  if (u->owner) u->owner->on_connected(u->owner, 0);
}

static void connect_next(evs__upconn *u) {
  u->connect.data = u;
  int r = uv_tcp_connect(&u->connect, &u->io->h.tcp, u->cur->ai_addr, on_connect);
  if (r < 0 && u->owner) u->owner->on_connected(u->owner, EVS_EUPSTREAM_REFUSED);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  evs__upconn *u = req->data;
  u->gai_pending = 0;
  if (u->closed) {
    if (res) uv_freeaddrinfo(res);
    upconn_maybe_free(u);
    return;
  }
  if (status < 0 || !res) {
    if (res) uv_freeaddrinfo(res);
    if (u->owner) u->owner->on_connected(u->owner, EVS_EUPSTREAM_REFUSED);
    return;
  }
  u->addrs = u->cur = res;
  connect_next(u);
}

static evs__upconn *upconn_get_key(evs__upclient *owner, const char *k, int tls, const char *host,
                                   int port, const char *sni, int verify, const char *ca_file,
                                   const char *cert, const char *key, const char *pass_file,
                                   int *ret_err);

evs__upconn *evs__upconn_get(evs__upclient *owner, const char *scheme, const char *host, int port,
                             const char *sni, int verify, const char *ca_file, const char *cert,
                             const char *key, const char *pass_file, int *ret_err) {
  int tls = strcmp(scheme, "https") == 0;
  const char *parts[] = {scheme, host, sni ? sni : "", ca_file ? ca_file : "", cert ? cert : "",
                         key ? key : "", pass_file ? pass_file : ""};
  size_t plen[7], klen = 2 * 20 + 9;
  for (size_t i = 0; i < 7; i++) klen += plen[i] = strlen(parts[i]);
  char stack_k[2048];
  char *k = klen <= sizeof stack_k ? stack_k : malloc(klen);
  if (!k) {
    *ret_err = -ENOMEM;
    return NULL;
  }
  /* scheme|host|port|sni|verify|ca_file|cert|key|pass_file (the passphrase's file, never the
   * passphrase) */
  char *e = evs__fmt_mem(k, parts[0], plen[0]);
  *e++ = '|';
  e = evs__fmt_mem(e, parts[1], plen[1]);
  *e++ = '|';
  e = evs__fmt_i64(e, port);
  *e++ = '|';
  e = evs__fmt_mem(e, parts[2], plen[2]);
  *e++ = '|';
  e = evs__fmt_i64(e, verify);
  for (size_t i = 3; i < 7; i++) {
    *e++ = '|';
    e = evs__fmt_mem(e, parts[i], plen[i]);
  }
  *e = '\0';
  evs__upconn *u = upconn_get_key(owner, k, tls, host, port, sni, verify, ca_file, cert, key,
                                  pass_file, ret_err);
  if (k != stack_k) free(k);
  return u;
}

static evs__upconn *upconn_get_key(evs__upclient *owner, const char *k, int tls, const char *host,
                                   int port, const char *sni, int verify, const char *ca_file,
                                   const char *cert, const char *key, const char *pass_file,
                                   int *ret_err) {
  for (pool *p = pools; p; p = p->next) {
    if (p->idle && strcmp(p->key, k) == 0) {
      evs__upconn *i = p->idle;
      idle_remove(i);
      uv_timer_stop(&i->idle_timer);
      i->owner = owner;
      return i;
    }
  }
  evs__upconn *u = calloc(1, sizeof *u);
  if (!u) {
    *ret_err = -ENOMEM;
    return NULL;
  }
  u->host = strdup(host);
  /* RFC 6066: no IP literals in SNI; the name still serves for certificate verification. */
  u->sni = strdup(sni ? sni : host);
  struct in6_addr ip;
  u->sni_is_ip = inet_pton(AF_INET, u->sni, &ip) == 1 || inet_pton(AF_INET6, u->sni, &ip) == 1;
  u->port = port;
  u->tls_verify = verify;
  u->owner = owner;
  if (u->host && strncmp(u->host, "unix:", 5) == 0 && u->host[5]) u->unix_path = u->host + 5;
  if (tls && u->unix_path) { /* plain HTTP only on a unix socket */
    free(u->host);
    free(u->sni);
    free(u);
    *ret_err = -EINVAL;
    return NULL;
  }
  if (tls) {
    char err[512];
    u->ctx = evs__tls_client_ctx(ca_file ? ca_file : evs__w->settings->upstream_ca_file, cert, key,
                                 pass_file, verify, err, sizeof err);
    if (!u->ctx) {
      EVS_LOG_ERR("EVS-1301", "upstream %s: %s", host, err);
      free(u->host);
      free(u->sni);
      free(u);
      *ret_err = EVS_ETLS;
      return NULL;
    }
  }
  if (!(u->pool = pool_ref(k)) || upconn_new_io(u) < 0) {
    pool_unref(u->pool);
    free(u->host);
    free(u->sni);
    free(u);
    *ret_err = -ENOMEM;
    return NULL;
  }
  uv_timer_init(evs__w->loop, &u->idle_timer);
  u->idle_timer.data = u;
  if (u->unix_path) {
    u->connect.data = u;
    uv_pipe_connect(&u->connect, &u->io->h.pipe, u->unix_path, on_connect);
    return u;
  }
  char port_s[8];
  snprintf(port_s, sizeof port_s, "%d", port);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  u->gai.data = u;
  int r = uv_getaddrinfo(evs__w->loop, &u->gai, on_resolved, host, port_s, &hints);
  u->gai_pending = r == 0;
  if (r < 0) {
    u->owner = NULL;
    evs__upconn_close(u);
    *ret_err = EVS_EUPSTREAM_REFUSED;
    return NULL;
  }
  return u;
}

/* ---- response head parsing, shared by proxy and client ---------------------------------- */

/* Heads are parsed into this per-thread array (4 KiB), then only the fields a head has are kept
 * with it: no zeroed 4 KiB array in every proxied request. */
static __thread evs__http_field resp_fields[EVS__MAX_RESPONSE_FIELDS];

static int resp_reserve(evs__resp_parser *p, size_t need) {
  if (need <= p->cap) return 0;
  char *nh = realloc(p->head, need);
  if (!nh) return -ENOMEM;
  p->head = nh;
  p->cap = need;
  return 0;
}

int evs__resp_parse_head(evs__resp_parser *p, const char *data, size_t len, int head_request,
                         size_t *ret_used) {
  size_t before = p->len;
  size_t head_len = 0;
  const char *hb = data; /* where the complete head is: this read, or the gathered bytes */
  int r;
  if (p->len == 0) {
    /* The usual case: the whole head is in this read. Parse it in place and copy just the head,
     * not the body bytes behind it. */
    evs__http_scan sc;
    memset(&sc, 0, sizeof sc);
    r = evs__http_scan_head(&sc, data, len, MAX_RESPONSE_HEAD, &head_len);
    if (r < 0 && r != EVS_HTTP_E_HEAD_TOO_LARGE) return -EPROTO;
  } else {
    r = EVS_HTTP_NEED_MORE;
  }
  if (r != EVS_HTTP_OK) {
    /* A head split over reads: gather it (bounded by MAX_RESPONSE_HEAD). */
    size_t room = MAX_RESPONSE_HEAD - p->len;
    size_t take = len < room ? len : room;
    if (resp_reserve(p, MAX_RESPONSE_HEAD) < 0) return -ENOMEM;
    memcpy(p->head + p->len, data, take);
    p->len += take;
    r = evs__http_scan_head(&p->scan, p->head, p->len, MAX_RESPONSE_HEAD, &head_len);
    if (r == EVS_HTTP_NEED_MORE) {
      if (take < len) return -E2BIG;
      *ret_used = take;
      return 0;
    }
    if (r < 0) return -EPROTO;
    hb = p->head;
  }
  memset(&p->h, 0, sizeof p->h);
  p->h.fields = resp_fields;
  p->h.max_fields = EVS__MAX_RESPONSE_FIELDS;
  if (evs__http_parse_response(hb, head_len, &p->h) < 0) return -EPROTO;
  *ret_used = head_len - before;
  int st = p->h.status;
  if (st >= 100 && st < 200) {
    /* Interim response: drop it and parse the next head. */
    p->len = 0;
    memset(&p->scan, 0, sizeof p->scan);
    return 1;
  }
  /* Keep the head and its fields for as long as the response lasts (plugins may ask for a
   * field through response_header). */
  size_t foff = (head_len + 7u) & ~(size_t)7u;
  if (resp_reserve(p, foff + p->h.nfields * sizeof *p->fields) < 0) return -ENOMEM;
  if (hb == data) memcpy(p->head, data, head_len);
  p->len = head_len;
  p->fields = (evs__http_field *)(void *)(p->head + foff);
  memcpy(p->fields, resp_fields, p->h.nfields * sizeof *p->fields);
  p->h.fields = p->fields;
  p->have_head = 1;
  memset(&p->chunked, 0, sizeof p->chunked);
  p->chunked.max_trailer_bytes = 8192;
  if (head_request || st == 204 || st == 304) p->mode = 0;
  else if (p->h.flags & EVS_HTTP_F_CHUNKED) p->mode = 2;
  else if (p->h.flags & EVS_HTTP_F_CONTENT_LENGTH) p->mode = 1, p->remaining = p->h.content_length;
  else p->mode = 3;
  if (p->mode == 0 || (p->mode == 1 && p->remaining == 0)) p->done = 1;
  return 0;
}
