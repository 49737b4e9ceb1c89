/*
 * The upstream side: proxying a client request to an upstream server, and plugin-initiated
 * client requests (webhooks). Connections are pooled per upstream identity (scheme, host, port,
 * TLS settings); DNS is asynchronous (uv_getaddrinfo); TLS verifies certificates unless the
 * upstream turns it off; connect and response timeouts map to the documented error codes
 * (`service-unavailable`, `request-timeout`).
 *
 * Bodies stream in both directions with backpressure: when the receiving side's write queue is
 * above the high-water mark the sending side stops reading until it drains.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fmt.h"
#include "log.h"
#include "metrics.h"
#include "plugin.h"
#include "request.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

#define MAX_RESPONSE_HEAD (64u * 1024u)
#define MAX_RESPONSE_FIELDS 256

typedef struct upconn upconn;
typedef struct pool pool;

/* What an upstream connection is for: proxying a request or a plugin's client request. */
typedef struct upclient {
  void (*on_connected)(struct upclient *u, int status);
  void (*on_data)(struct upclient *u, ssize_t nread, const char *data);
  void (*on_drain)(struct upclient *u);
} upclient;

struct upconn {
  evs__io *io;            /* separate, so a failed connect can retry the next address */
  pool *pool;             /* its upstream identity; holds a reference */
  upclient *owner;
  upconn *idle_prev, *idle_next;
  int idle;               /* in pool->idle */
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
};

/* The connections to one upstream identity (scheme, host, port, TLS settings: the key). It lives
 * while any of them does, and counts its idle ones, so releasing a connection compares no keys
 * and getting one compares one key per upstream in use rather than one per idle connection. */
struct pool {
  char *key;
  size_t refs;            /* upconns pointing here */
  upconn *idle;           /* newest first */
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

static void upconn_maybe_free(upconn *u) {
  if (!u->io_done || !u->timer_done || u->gai_pending) return;
  if (u->addrs) uv_freeaddrinfo(u->addrs);
  pool_unref(u->pool);
  free(u->host);
  free(u->sni);
  free(u);
}
static void upconn_io_closed(evs__io *io) {
  upconn *u = io->data;
  free(io);
  u->io_done = 1;
  upconn_maybe_free(u);
}
static void upconn_timer_closed(uv_handle_t *h) {
  upconn *u = h->data;
  u->timer_done = 1;
  upconn_maybe_free(u);
}

static void idle_remove(upconn *u) {
  if (!u->idle) return;
  pool *p = u->pool;
  if (u->idle_prev) u->idle_prev->idle_next = u->idle_next;
  else p->idle = u->idle_next;
  if (u->idle_next) u->idle_next->idle_prev = u->idle_prev;
  u->idle_prev = u->idle_next = NULL;
  u->idle = 0;
  p->nidle--;
}

static void idle_add(upconn *u) {
  pool *p = u->pool;
  u->idle_prev = NULL;
  u->idle_next = p->idle;
  if (p->idle) p->idle->idle_prev = u;
  p->idle = u;
  u->idle = 1;
  p->nidle++;
}

static void upconn_close(upconn *u) {
  if (u->closed) return;
  u->closed = 1;
  u->owner = NULL;
  idle_remove(u);
  uv_close((uv_handle_t *)&u->idle_timer, upconn_timer_closed);
  evs__io_close(u->io);
}

void evs__upstream_pool_close_all(void) {
  for (pool *p = pools; p; p = p->next)
    while (p->idle) upconn_close(p->idle); /* pools go when their connections are freed */
}

static void upconn_read(evs__io *io, ssize_t nread, const char *data) {
  upconn *u = io->data;
  if (u->owner) {
    u->owner->on_data(u->owner, nread, data);
    return;
  }
  /* Idle: anything (data or EOF) makes the connection unusable. */
  upconn_close(u);
}

static void upconn_drain(evs__io *io) {
  upconn *u = io->data;
  if (u->owner && u->owner->on_drain) u->owner->on_drain(u->owner);
}

static void idle_timeout(uv_timer_t *t) { upconn_close(t->data); }

static void upconn_release(upconn *u, int reusable) {
  u->owner = NULL;
  if (!reusable || u->closed || evs__w->draining) {
    upconn_close(u);
    return;
  }
  if (u->pool->nidle >= (size_t)evs__w->settings->upstream_pool_max_idle) {
    upconn_close(u);
    return;
  }
  u->reused = 1;
  idle_add(u);
  uv_timer_start(&u->idle_timer, idle_timeout, (uint64_t)evs__w->settings->upstream_pool_idle_timeout_ms, 0);
  evs__io_read_start(u->io);
}

static void connect_next(upconn *u);

static void free_io(evs__io *io) { free(io); }

static int upconn_new_io(upconn *u) {
  u->io = malloc(sizeof *u->io);
  if (!u->io) return -ENOMEM;
  uv_tcp_init(evs__w->loop, &u->io->h.tcp);
  evs__io_init(u->io, u);
  u->io->on_close = upconn_io_closed;
  u->io->on_read = upconn_read;
  u->io->on_drain = upconn_drain;
  return 0;
}

static void on_tls_handshake(evs__io *io, int status) {
  upconn *u = io->data;
  if (u->owner) u->owner->on_connected(u->owner, status < 0 ? EVS_ETLS : 0);
}

static void on_connect(uv_connect_t *req, int status) {
  upconn *u = req->data;
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
  uv_tcp_nodelay(&u->io->h.tcp, 1);
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
  evs__io_read_start(u->io);
  if (u->owner) u->owner->on_connected(u->owner, 0);
}

static void connect_next(upconn *u) {
  u->connect.data = u;
  int r = uv_tcp_connect(&u->connect, &u->io->h.tcp, u->cur->ai_addr, on_connect);
  if (r < 0 && u->owner) u->owner->on_connected(u->owner, EVS_EUPSTREAM_REFUSED);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  upconn *u = req->data;
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

static upconn *upconn_get_key(upclient *owner, const char *k, int tls, const char *host, int port,
                              const char *sni, int verify, const char *ca_file, const char *cert,
                              const char *key, const char *pass_file, int *ret_err);

/* Get a pooled connection or start a new one; on_connected runs when it is usable. */
static upconn *upconn_get(upclient *owner, const char *scheme, const char *host, int port,
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
  upconn *u = upconn_get_key(owner, k, tls, host, port, sni, verify, ca_file, cert, key, pass_file,
                             ret_err);
  if (k != stack_k) free(k);
  return u;
}

static upconn *upconn_get_key(upclient *owner, const char *k, int tls, const char *host, int port,
                              const char *sni, int verify, const char *ca_file, const char *cert,
                              const char *key, const char *pass_file, int *ret_err) {
  for (pool *p = pools; p; p = p->next) {
    if (p->idle && strcmp(p->key, k) == 0) {
      upconn *i = p->idle;
      idle_remove(i);
      uv_timer_stop(&i->idle_timer);
      i->owner = owner;
      return i;
    }
  }
  upconn *u = calloc(1, sizeof *u);
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
    upconn_close(u);
    *ret_err = EVS_EUPSTREAM_REFUSED;
    return NULL;
  }
  return u;
}

/* ---- response head parsing, shared by proxy and client ---------------------------------- */

typedef struct resp_parser {
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
} resp_parser;

/* Heads are parsed into this per-thread array (4 KiB), then only the fields a head has are kept
 * with it: no zeroed 4 KiB array in every proxied request. */
static __thread evs__http_field resp_fields[MAX_RESPONSE_FIELDS];

static int resp_reserve(resp_parser *p, size_t need) {
  if (need <= p->cap) return 0;
  char *nh = realloc(p->head, need);
  if (!nh) return -ENOMEM;
  p->head = nh;
  p->cap = need;
  return 0;
}

/* Feed bytes; calls body(data) for body bytes. Returns consumed bytes or negative error.
 * Sets p->have_head when the head has been parsed (caller checks after each call). */
static int resp_parse_head(resp_parser *p, const char *data, size_t len, int head_request,
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
  p->h.max_fields = MAX_RESPONSE_FIELDS;
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

/* Decode body bytes; emits runs through cb. Returns consumed or -EPROTO. */
static int resp_parse_body(resp_parser *p, const char *data, size_t len,
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

/* ---- proxy ------------------------------------------------------------------------------- */

struct evs__proxy {
  upclient cl;
  evs_request *req;
  evs__plugin_rec *plugin;
  upconn *uc;
  evs_upstream up;
  char *scheme, *host, *sni, *host_header, *ca_file, *cert_file, *key_file, *pass_file;
  int port;
  evs_body_filter_fn req_filter, resp_filter;
  void *filter_arg;
  int filtering_response; /* filter_emit targets: 0 upstream (request body), 1 client */
  uv_timer_t timer;
  int timer_closed;
  resp_parser rp;
  int req_chunked;        /* request body sent chunked upstream */
  int req_body_sent;      /* all request body bytes written upstream */
  uint64_t req_bytes_up;
  int response_started;
  int upstream_paused;    /* we stopped reading upstream because the client is congested */
  int client_paused;      /* we asked the client connection to pause the body */
  int retried;
  int done;
  int upstream_keepalive;
  int held;               /* the response filter holds the end of the response (filter_end) */
  /* ABI 1.4: evs_upstream.response_head runs (in_head); fields it removed from the head the
   * client gets, by index into rp.fields. */
  int (*response_head)(void *filter_arg, evs_request *req, int status);
  int in_head;
  uint64_t dropped[(MAX_RESPONSE_FIELDS + 63) / 64];
  int client_corked;      /* held: the client stays corked until the proxy finishes */
  /* A request body the plugin produces (evs_upstream.body_source, ABI 1.1). */
  int (*body_source)(void *arg, uint8_t *buf, size_t cap, size_t *ret_len);
  void *body_source_arg;
  uint64_t body_source_len, body_source_sent;
  uint8_t *source_buf;
};

static void proxy_finish(evs__proxy *px);

static void proxy_free(evs__proxy *px) {
  free(px->source_buf);
  free(px->rp.head);
  free(px->scheme);
  free(px->host);
  free(px->sni);
  free(px->host_header);
  free(px->ca_file);
  free(px->cert_file);
  free(px->key_file);
  free(px->pass_file);
  free(px);
}

static void proxy_timer_closed(uv_handle_t *h) {
  proxy_free(h->data);
}

static void proxy_fail(evs__proxy *px, int err) {
  if (px->done) return;
  evs_request *req = px->req;
  enum evs__upstream_error kind = EVS_UPERR_PROTOCOL;
  int status = 502;
  const char *code = "service-unavailable", *detail = "The destination sent an invalid response";
  if (err == EVS_EUPSTREAM_REFUSED) {
    kind = EVS_UPERR_REFUSED;
    status = 503;
    detail = "The destination refused the connection and could not be reached";
  } else if (err == EVS_EUPSTREAM_TIMEOUT) {
    kind = EVS_UPERR_TIMEOUT;
    status = 504;
    code = "request-timeout";
    detail = "The destination took too long to respond";
  } else if (err == EVS_ETLS) {
    kind = EVS_UPERR_TLS;
    detail = "TLS with the destination failed";
  } else if (err == UV_ECONNRESET || err == UV_EOF || err == UV_EPIPE) {
    kind = EVS_UPERR_RESET;
    detail = "The destination closed the connection";
  }
  evs__metrics_upstream_error(kind);
  evs__log(EVS_LOG_WARN, "EVS-1302", px->plugin ? px->plugin->name : NULL, req ? req->request_id : NULL,
           "upstream %s:%d failed: %s", px->host, px->port, detail);
  if (px->uc) {
    upconn_close(px->uc);
    px->uc = NULL;
  }
  if (req && req->conn) {
    if (!req->head_sent) {
      req->close_after = 1;
      px->done = 1; /* before responding: the response may finish the request synchronously */
      evs__respond_error(req, status, code, detail);
    } else {
      evs__request_abort(req);
    }
  }
  px->done = 1;
  proxy_finish(px);
}

static void proxy_finish(evs__proxy *px) {
  px->done = 1;
  evs_request *req = px->req;
  if (req && px->client_corked) {
    px->client_corked = 0;
    evs__io *cio = evs__request_io(req);
    if (cio) evs__io_uncork(cio);
  }
  if (req) {
    req->on_abort = NULL;
    req->on_client_drain = NULL;
    px->req = NULL;
    evs__request_release(req);
  }
  if (!px->timer_closed) {
    px->timer_closed = 1;
    uv_close((uv_handle_t *)&px->timer, proxy_timer_closed);
  }
}

static void on_proxy_timeout(uv_timer_t *t) {
  evs__proxy *px = t->data;
  proxy_fail(px, EVS_EUPSTREAM_TIMEOUT);
}

static void arm_response_timer(evs__proxy *px) {
  uint64_t ms = px->up.response_timeout_ms ? px->up.response_timeout_ms
                                           : (uint64_t)evs__w->settings->upstream_response_timeout_ms;
  uv_timer_start(&px->timer, on_proxy_timeout, ms, 0);
}

/* Client went away. */
static void proxy_on_abort(evs_request *req) {
  evs__proxy *px = req->proxy;
  if (!px || px->done) return;
  if (px->uc) {
    upconn_close(px->uc);
    px->uc = NULL;
  }
  proxy_finish(px);
}

static int write_up(evs__proxy *px, const char *data, size_t len) {
  if (!px->uc) return -ECONNRESET;
  px->req_bytes_up += len;
  if (px->req_chunked) {
    char pre[32];
    char *pe = EVS__FMT_LIT(evs__fmt_hex(pre, len, 1), "\r\n");
    uv_buf_t bufs[3] = {uv_buf_init(pre, (unsigned)(pe - pre)),
                        uv_buf_init((char *)data, (unsigned)len), uv_buf_init("\r\n", 2)};
    return evs__io_writev(px->uc->io, bufs, 3);
  }
  return evs__io_write(px->uc->io, data, len);
}

int evs__proxy_filter_end(evs_request *req, int status) {
  evs__proxy *px = req ? req->proxy : NULL;
  if (!px || px->done || !px->held) return -EINVAL;
  px->held = 0;
  px->done = 1;
  if (status < 0) evs__request_abort(req);
  else evs__response_end(req);
  proxy_finish(px);
  return 0;
}

static int field_dropped(const evs__proxy *px, size_t i) {
  return (px->dropped[i / 64] >> (i % 64)) & 1;
}

int evs__proxy_response_header(evs_request *req, const char *name, evs_header *ret) {
  evs__proxy *px = req ? req->proxy : NULL;
  if (!px || !px->rp.have_head || !name || !ret) return -ENOENT;
  resp_parser *p = &px->rp;
  size_t nl = strlen(name);
  for (size_t i = 0; i < p->h.nfields; i++) {
    const evs__http_field *f = &p->fields[i];
    if (field_dropped(px, i)) continue;
    if (f->name_len == nl && strncasecmp(p->head + f->name_off, name, nl) == 0) {
      ret->name = p->head + f->name_off;
      ret->name_len = f->name_len;
      ret->value = p->head + f->value_off;
      ret->value_len = f->value_len;
      return 0;
    }
  }
  return -ENOENT;
}

int evs__proxy_response_remove_header(evs_request *req, const char *name) {
  evs__proxy *px = req ? req->proxy : NULL;
  if (!px || !px->in_head || !name) return -EINVAL;
  resp_parser *p = &px->rp;
  size_t nl = strlen(name);
  int n = 0;
  for (size_t i = 0; i < p->h.nfields; i++) {
    const evs__http_field *f = &p->fields[i];
    if (!field_dropped(px, i) && f->name_len == nl &&
        strncasecmp(p->head + f->name_off, name, nl) == 0) {
      px->dropped[i / 64] |= (uint64_t)1 << (i % 64);
      n++;
    }
  }
  return n;
}

int evs__proxy_filter_emit(evs_request *req, const uint8_t *data, size_t len) {
  evs__proxy *px = req->proxy;
  if (!px || px->done) return -ECANCELED;
  if (len == 0) return 0;
  if (px->filtering_response) return evs__response_body(req, data, len);
  return write_up(px, (const char *)data, len);
}

static int sink_data(evs_request *req, const char *data, size_t len) {
  evs__proxy *px = req->proxy;
  if (!px || px->done) return 0;
  if (px->req_filter) {
    px->filtering_response = 0;
    if (px->req_filter(px->plugin ? px->plugin->state : NULL, req, px->filter_arg,
                       (const uint8_t *)data, len) < 0) {
      proxy_fail(px, -EPROTO);
      return 0;
    }
  } else if (write_up(px, data, len) < 0) {
    return 0;
  }
  if (px->uc && px->uc->io->write_queued > EVS_IO_HIGH_WATER) {
    px->client_paused = 1;
    return 1;
  }
  return 0;
}

static void sink_end(evs_request *req, int status) {
  evs__proxy *px = req->proxy;
  if (!px || px->done || status < 0) return;
  if (px->req_filter && req->has_body) {
    px->filtering_response = 0;
    px->req_filter(px->plugin ? px->plugin->state : NULL, req, px->filter_arg, NULL, 0);
  }
  if (px->req_chunked && px->uc) evs__io_write(px->uc->io, "0\r\n\r\n", 5);
  px->req_body_sent = 1;
  if (!px->response_started) arm_response_timer(px);
}

static const evs__body_sink proxy_sink = {sink_data, sink_end};

/* Sends the plugin's body (body_source) while the upstream connection takes it: up to the
 * high-water mark now, the rest from proxy_up_drain. */
#define SOURCE_CHUNK (64u * 1024u)
static void pump_source(evs__proxy *px) {
  while (!px->done && px->uc && !px->req_body_sent &&
         px->uc->io->write_queued <= EVS_IO_HIGH_WATER) {
    uint64_t left = px->body_source_len - px->body_source_sent;
    size_t got = 0;
    if (left > 0) {
      size_t cap = left < SOURCE_CHUNK ? (size_t)left : SOURCE_CHUNK;
      /* Sized by the first piece, the largest: a small body gets a small buffer. */
      if (!px->source_buf && !(px->source_buf = malloc(cap))) {
        proxy_fail(px, -ENOMEM);
        return;
      }
      if (px->body_source(px->body_source_arg, px->source_buf, cap, &got) < 0 || got == 0 ||
          got > cap) {
        proxy_fail(px, -EIO);
        return;
      }
      if (write_up(px, (const char *)px->source_buf, got) < 0) return;
      px->body_source_sent += got;
    }
    if (px->body_source_sent == px->body_source_len) {
      px->req_body_sent = 1;
      if (!px->response_started) arm_response_timer(px);
    }
  }
}

static void proxy_up_drain(upclient *cl) {
  evs__proxy *px = (evs__proxy *)cl;
  if (px->body_source) pump_source(px);
  if (px->client_paused && px->req) {
    px->client_paused = 0;
    evs__request_body_resume(px->req);
  }
}

static void proxy_client_drain(evs_request *req) {
  evs__proxy *px = req->proxy;
  if (px && px->upstream_paused && px->uc) {
    px->upstream_paused = 0;
    evs__io_read_start(px->uc->io);
  }
}

/* Build and send the upstream request head. */
static int send_head(evs__proxy *px) {
  evs_request *req = px->req;
  const char *b = req->head;
  /* The request line and the fields kept fit in the client's head, each field plus one byte (a
   * space after the colon) and joined X-Forwarded-For values within theirs; then the fields
   * added here, edits and Host. */
  size_t hhlen = strlen(px->host_header);
  size_t cap = req->h.head_len + 2 * req->h.nfields + 512 + sizeof req->client_addr + hhlen;
  for (size_t i = 0; i < req->nedits; i++)
    cap += strlen(req->edits[i].name) + (req->edits[i].value ? strlen(req->edits[i].value) : 0) + 4;
  /* The write copies what it does not send at once, so a usual head needs no allocation. */
  char stack_out[8192];
  char *out = cap <= sizeof stack_out ? stack_out : malloc(cap);
  if (!out) return -ENOMEM;
  const char *target = req->info.target;
  char *p = evs__fmt_str(out, req->info.method);
  *p++ = ' ';
  if (target[0] != '/' && target[0] != '*') {
    /* absolute-form: origin-form upstream */
    p = evs__fmt_str(p, req->info.path);
    if (req->info.query[0]) {
      *p++ = '?';
      p = evs__fmt_str(p, req->info.query);
    }
  } else {
    p = evs__fmt_str(p, target);
  }
  p = EVS__FMT_LIT(p, " HTTP/1.1\r\n");
  /* Earlier X-Forwarded-For fields, joined in order (a list may be split over fields). */
  char *xff_prev = NULL;
  size_t xff_prev_len = 0;
  for (size_t i = 0; i < req->h.nfields; i++) {
    const evs__http_field *f = &req->fields[i];
    if (evs__http_field_is_hop_by_hop(b, &req->h, i) || EVS__HTTP_FIELD_IS(b, f, "host") ||
        EVS__HTTP_FIELD_IS(b, f, "content-length") || EVS__HTTP_FIELD_IS(b, f, "expect") ||
        EVS__HTTP_FIELD_IS(b, f, "x-forwarded-proto"))
      continue;
    if (px->up.x_forwarded_for && EVS__HTTP_FIELD_IS(b, f, "x-forwarded-for")) {
      char *nx = realloc(xff_prev, xff_prev_len + f->value_len + 3);
      if (!nx) continue;
      xff_prev = nx;
      if (xff_prev_len) {
        memcpy(xff_prev + xff_prev_len, ", ", 2);
        xff_prev_len += 2;
      }
      memcpy(xff_prev + xff_prev_len, b + f->value_off, f->value_len);
      xff_prev_len += f->value_len;
      continue;
    }
    int edited = 0;
    for (size_t e = 0; e < req->nedits; e++) {
      const char *en = req->edits[e].name;
      if (strlen(en) == f->name_len && strncasecmp(en, b + f->name_off, f->name_len) == 0) edited = 1;
    }
    if (edited) continue;
    p = evs__fmt_mem(p, b + f->name_off, f->name_len);
    p = EVS__FMT_LIT(p, ": ");
    p = evs__fmt_mem(p, b + f->value_off, f->value_len);
    p = EVS__FMT_LIT(p, "\r\n");
  }
  for (size_t e = 0; e < req->nedits; e++) {
    if (!req->edits[e].value) continue;
    p = evs__fmt_str(p, req->edits[e].name);
    p = EVS__FMT_LIT(p, ": ");
    p = evs__fmt_str(p, req->edits[e].value);
    p = EVS__FMT_LIT(p, "\r\n");
  }
  p = evs__fmt_mem(EVS__FMT_LIT(p, "Host: "), px->host_header, hhlen);
  p = EVS__FMT_LIT(p, "\r\n");
  if (px->up.x_forwarded_for) {
    p = EVS__FMT_LIT(p, "X-Forwarded-For: ");
    if (xff_prev) p = EVS__FMT_LIT(evs__fmt_mem(p, xff_prev, xff_prev_len), ", ");
    p = evs__fmt_str(p, req->client_addr);
    p = EVS__FMT_LIT(p, "\r\n");
  }
  free(xff_prev);
  if (req->info.tls) p = EVS__FMT_LIT(p, "X-Forwarded-Proto: https\r\n");
  else p = EVS__FMT_LIT(p, "X-Forwarded-Proto: http\r\n");
  if (px->body_source) {
    p = evs__fmt_u64(EVS__FMT_LIT(p, "Content-Length: "), px->body_source_len);
    p = EVS__FMT_LIT(p, "\r\n");
  } else if (req->has_body) {
    if (req->info.chunked || px->req_filter) {
      px->req_chunked = 1;
      p = EVS__FMT_LIT(p, "Transfer-Encoding: chunked\r\n");
    } else {
      p = evs__fmt_u64(EVS__FMT_LIT(p, "Content-Length: "), req->info.content_length);
      p = EVS__FMT_LIT(p, "\r\n");
    }
  } else if (req->info.has_content_length) {
    p = EVS__FMT_LIT(p, "Content-Length: 0\r\n");
  }
  p = EVS__FMT_LIT(p, "\r\n");
  int r = evs__io_write(px->uc->io, out, (size_t)(p - out));
  if (out != stack_out) free(out);
  return r;
}

static void proxy_connected(upclient *cl, int status) {
  evs__proxy *px = (evs__proxy *)cl;
  if (px->done) return;
  if (status < 0) {
    proxy_fail(px, status);
    return;
  }
  evs_request *req = px->req;
  if (!req || !req->conn) {
    proxy_finish(px);
    return;
  }
  uv_timer_stop(&px->timer);
  /* The head and what body is at hand leave in one write. A failure below closes the
   * connection, which drops what was gathered. */
  upconn *u = px->uc;
  evs__io_cork(u->io);
  if (send_head(px) < 0) {
    proxy_fail(px, -EPIPE);
    return;
  }
  arm_response_timer(px);
  if (px->body_source) {
    px->body_source_sent = 0;
    px->req_body_sent = 0;
    if (px->body_source(px->body_source_arg, NULL, 0, NULL) < 0) { /* rewind */
      proxy_fail(px, -EIO);
      return;
    }
    pump_source(px);
  } else if (!px->req_body_sent) {
    evs__request_body_attach(req, &proxy_sink, px);
  }
  if (px->uc == u) evs__io_uncork(u->io);
}

static int client_emit(void *arg, const char *d, size_t n) {
  evs__proxy *px = arg;
  evs_request *req = px->req;
  if (!req) return -1;
  if (px->resp_filter) {
    px->filtering_response = 1;
    return px->resp_filter(px->plugin ? px->plugin->state : NULL, req, px->filter_arg,
                           (const uint8_t *)d, n) < 0 ? -1 : 0;
  }
  evs__response_body(req, d, n);
  return 0;
}

/* ABI 1.4: the plugin's look at the head before the client gets it. 0: go on; 1: the plugin
 * answered itself (the destination's response is discarded); negative: fail. */
static int run_response_head(evs__proxy *px) {
  evs_request *req = px->req;
  px->in_head = 1;
  int r = px->response_head(px->filter_arg, req, px->rp.h.status);
  px->in_head = 0;
  if (req->head_sent) return 1;
  return r < 0 ? r : 0;
}

static void start_client_response(evs__proxy *px) {
  evs_request *req = px->req;
  resp_parser *p = &px->rp;
  if (px->response_head) {
    int r = run_response_head(px);
    if (r == 1) {
      /* Answered by the plugin: the rest of the destination's response is never read, so its
       * connection cannot be reused. */
      if (px->uc) {
        upconn_close(px->uc);
        px->uc = NULL;
      }
      px->done = 1;
      proxy_finish(px);
      return;
    }
    if (r < 0) {
      proxy_fail(px, -EPROTO);
      return;
    }
  }
  evs_header hs[MAX_RESPONSE_FIELDS];
  size_t n = 0;
  int close = (p->h.flags & EVS_HTTP_F_CONN_CLOSE) || p->h.version_minor == 0;
  px->upstream_keepalive = !close && p->mode != 3;
  int cl_dropped = 0;
  for (size_t i = 0; i < p->h.nfields && n < MAX_RESPONSE_FIELDS; i++) {
    const evs__http_field *f = &p->fields[i];
    if (field_dropped(px, i)) {
      if (EVS__HTTP_FIELD_IS(p->head, f, "content-length")) cl_dropped = 1;
      continue;
    }
    if (evs__http_field_is_hop_by_hop(p->head, &p->h, i) ||
        EVS__HTTP_FIELD_IS(p->head, f, "content-length") || EVS__HTTP_FIELD_IS(p->head, f, "date"))
      continue;
    hs[n].name = p->head + f->name_off;
    hs[n].name_len = f->name_len;
    hs[n].value = p->head + f->value_off;
    hs[n].value_len = f->value_len;
    n++;
  }
  int64_t cl = -1;
  int head_req = strcmp(req->info.method, "HEAD") == 0;
  if (!px->resp_filter && (p->h.flags & EVS_HTTP_F_CONTENT_LENGTH)) cl = (int64_t)p->h.content_length;
  if (head_req && (p->h.flags & EVS_HTTP_F_CONTENT_LENGTH) && !cl_dropped)
    cl = (int64_t)p->h.content_length;
  if (p->mode == 0 && !head_req) cl = 0;
  px->response_started = 1;
  evs__response_start(req, p->h.status, hs, n, cl);
}

static void proxy_data_corked(upclient *cl, ssize_t nread, const char *data);

/* What one upstream read produces for the client leaves in one write. The client stream stays
 * valid through this call even if the request ends in it (handles are freed on a later turn). */
static void proxy_data(upclient *cl, ssize_t nread, const char *data) {
  evs__proxy *px = (evs__proxy *)cl;
  evs__io *cio = px->req && !px->done ? evs__request_io(px->req) : NULL;
  if (cio) evs__io_cork(cio);
  proxy_data_corked(cl, nread, data);
  /* A held response stays corked, so that its head and what the filter emits at its end leave
   * together (in pieces of at most EVS_IO_CORK_MAX); proxy_finish uncorks. */
  if (cio && px->held && !px->done) {
    px->client_corked = 1;
    return;
  }
  if (cio) evs__io_uncork(cio);
}

static void proxy_data_corked(upclient *cl, ssize_t nread, const char *data) {
  evs__proxy *px = (evs__proxy *)cl;
  if (px->done) return;
  resp_parser *p = &px->rp;
  if (nread < 0) {
    if (p->have_head && p->mode == 3 && nread == UV_EOF) {
      p->done = 1;
    } else if (!p->have_head && px->uc && px->uc->reused && !px->retried &&
               (px->body_source || (px->req_bytes_up == 0 && !px->req->has_body))) {
      /* A pooled connection the upstream had already closed: retry once on a fresh one. */
      px->retried = 1;
      upconn_close(px->uc);
      int err = 0;
      px->uc = upconn_get(&px->cl, px->scheme, px->host, px->port, px->sni, px->up.verify,
                          px->ca_file, px->cert_file, px->key_file, px->pass_file, &err);
      if (!px->uc) proxy_fail(px, err);
      else if (px->uc->reused) proxy_connected(&px->cl, 0);
      return;
    } else {
      proxy_fail(px, (int)nread);
      return;
    }
  }
  size_t off = 0, len = nread > 0 ? (size_t)nread : 0;
  while (off < len && !p->have_head) {
    size_t used = 0;
    int r = resp_parse_head(p, data + off, len - off, strcmp(px->req->info.method, "HEAD") == 0, &used);
    if (r < 0) {
      proxy_fail(px, -EPROTO);
      return;
    }
    off += used;
    if (p->have_head) start_client_response(px);
    if (px->done || !px->req) return;
  }
  if (p->have_head && off < len && !p->done) {
    size_t used = 0;
    if (resp_parse_body(p, data + off, len - off, client_emit, px, &used) < 0) {
      if (px->req) evs__request_abort(px->req);
      proxy_fail(px, -EPROTO);
      return;
    }
  }
  if (!px->req || px->done) return;
  if (p->have_head && p->done) {
    uv_timer_stop(&px->timer);
    evs_request *req = px->req;
    int fr = 0;
    if (px->resp_filter) {
      px->filtering_response = 1;
      fr = px->resp_filter(px->plugin ? px->plugin->state : NULL, req, px->filter_arg, NULL, 0);
    }
    upconn *u = px->uc;
    px->uc = NULL;
    int reusable = px->upstream_keepalive && px->req_body_sent && nread > 0;
    if (u) upconn_release(u, reusable);
    if (fr == EVS_FILTER_HOLD) {
      px->held = 1; /* evs__proxy_filter_end finishes the response */
      return;
    }
    if (fr < 0) {
      px->done = 1;
      evs__request_abort(req);
      proxy_finish(px);
      return;
    }
    px->done = 1;
    evs__response_end(req);
    proxy_finish(px);
    return;
  }
  if (p->have_head) arm_response_timer(px);
  if (evs__response_congested(px->req) && px->uc) {
    px->upstream_paused = 1;
    evs__io_read_stop(px->uc->io);
  }
}

int evs__proxy_start(evs_request *req, const evs_upstream *up, evs_body_filter_fn req_filter,
                     evs_body_filter_fn resp_filter, void *filter_arg, evs__plugin_rec *p) {
  if (!req->conn || req->proxy || req->head_sent) return -EINVAL;
  if (!up || up->size < offsetof(evs_upstream, response_timeout_ms) + sizeof(uint64_t) ||
      !up->host || !up->scheme)
    return -EINVAL;
  int tls = strcmp(up->scheme, "https") == 0;
  if (!tls && strcmp(up->scheme, "http") != 0) return -EINVAL;
  evs__proxy *px = calloc(1, sizeof *px);
  if (!px) return -ENOMEM;
  /* A plugin built against an older ABI passes a shorter struct: copy what it has. */
  memcpy(&px->up, up, up->size < sizeof px->up ? up->size : sizeof px->up);
  px->up.size = sizeof px->up;
  px->port = up->port ? up->port : (tls ? 443 : 80);
  px->scheme = strdup(up->scheme);
  px->host = strdup(up->host);
  px->sni = up->sni ? strdup(up->sni) : NULL;
  if (up->host_header) {
    px->host_header = strdup(up->host_header);
  } else if ((tls && px->port == 443) || (!tls && px->port == 80)) {
    px->host_header = strdup(up->host);
  } else {
    size_t hl = strlen(up->host);
    if ((px->host_header = malloc(hl + 24))) {
      char *e = evs__fmt_i64(EVS__FMT_LIT(evs__fmt_mem(px->host_header, up->host, hl), ":"), px->port);
      *e = '\0';
    }
  }
  px->ca_file = up->ca_file ? strdup(up->ca_file) : NULL;
  px->cert_file = up->client_cert_file ? strdup(up->client_cert_file) : NULL;
  px->key_file = up->client_key_file ? strdup(up->client_key_file) : NULL;
  /* ABI 1.5; px->up holds NULL there when the plugin's struct is older (copied by its size). */
  if (px->up.client_key_passphrase_file)
    px->pass_file = strdup(px->up.client_key_passphrase_file);
  if (!px->scheme || !px->host || !px->host_header || /* send_head needs them */
      (px->up.client_key_passphrase_file && !px->pass_file)) {
    proxy_free(px);
    return -ENOMEM;
  }
  if (up->size >= offsetof(evs_upstream, body_source_len) + sizeof(uint64_t) && up->body_source) {
    px->body_source = up->body_source;
    px->body_source_arg = up->body_source_arg;
    px->body_source_len = up->body_source_len;
  }
  if (up->size >= offsetof(evs_upstream, response_head) + sizeof up->response_head)
    px->response_head = up->response_head;
  px->req_filter = req_filter;
  px->resp_filter = resp_filter;
  px->filter_arg = filter_arg;
  px->plugin = p;
  px->req = req;
  px->cl.on_connected = proxy_connected;
  px->cl.on_data = proxy_data;
  px->cl.on_drain = proxy_up_drain;
  uv_timer_init(evs__w->loop, &px->timer);
  px->timer.data = px;
  req->proxy = px;
  req->on_abort = proxy_on_abort;
  req->on_client_drain = proxy_client_drain;
  req->handler = p;
  int err = 0;
  px->uc = upconn_get(&px->cl, px->scheme, px->host, px->port, px->sni, up->verify, px->ca_file,
                      px->cert_file, px->key_file, px->pass_file, &err);
  if (!px->uc) {
    proxy_fail(px, err);
    return 0;
  }
  if (px->uc->reused) {
    proxy_connected(&px->cl, 0);
  } else {
    uint64_t ms = up->connect_timeout_ms ? up->connect_timeout_ms
                                         : (uint64_t)evs__w->settings->upstream_connect_timeout_ms;
    uv_timer_start(&px->timer, on_proxy_timeout, ms, 0);
  }
  return 0;
}

/* ---- client requests for plugins ---------------------------------------------------------- */

typedef struct creq {
  upclient cl;
  upconn *uc;
  evs_client_cb cb;
  void *arg;
  char *out;
  size_t out_len;
  resp_parser rp;
  char *body;
  size_t body_len, body_cap;
  uv_timer_t timer;
  int done;
  int head_req;
} creq;

static void creq_timer_closed(uv_handle_t *h) {
  creq *c = h->data;
  free(c->out);
  free(c->body);
  free(c->rp.head);
  free(c);
}

static void creq_done(creq *c, int status) {
  if (c->done) return;
  c->done = 1;
  uv_timer_stop(&c->timer);
  if (c->uc) {
    upconn *u = c->uc;
    c->uc = NULL;
    int reusable = status > 0 && c->rp.mode != 3 && !(c->rp.h.flags & EVS_HTTP_F_CONN_CLOSE);
    upconn_release(u, reusable);
  }
  c->cb(c->arg, status, (const uint8_t *)c->body, status > 0 ? c->body_len : 0);
  uv_close((uv_handle_t *)&c->timer, creq_timer_closed);
}

static void creq_timeout(uv_timer_t *t) {
  creq *c = t->data;
  if (c->uc) {
    upconn_close(c->uc);
    c->uc = NULL;
  }
  creq_done(c, EVS_EUPSTREAM_TIMEOUT);
}

static void creq_connected(upclient *cl, int status) {
  creq *c = (creq *)cl;
  if (c->done) return;
  if (status < 0) {
    if (c->uc) upconn_close(c->uc);
    c->uc = NULL;
    creq_done(c, status);
    return;
  }
  evs__io_write(c->uc->io, c->out, c->out_len);
}

static int creq_body(void *arg, const char *d, size_t n) {
  creq *c = arg;
  if (c->body_len + n > (16u << 20)) return -1;
  if (c->body_len + n > c->body_cap) {
    size_t nc = (c->body_len + n) * 2;
    char *nb = realloc(c->body, nc);
    if (!nb) return -1;
    c->body = nb;
    c->body_cap = nc;
  }
  memcpy(c->body + c->body_len, d, n);
  c->body_len += n;
  return 0;
}

static void creq_data(upclient *cl, ssize_t nread, const char *data) {
  creq *c = (creq *)cl;
  if (c->done) return;
  resp_parser *p = &c->rp;
  if (nread < 0) {
    if (p->have_head && p->mode == 3) {
      creq_done(c, p->h.status);
      return;
    }
    if (c->uc) upconn_close(c->uc);
    c->uc = NULL;
    creq_done(c, EVS_ECLOSED);
    return;
  }
  size_t off = 0, len = (size_t)nread;
  while (off < len && !p->have_head) {
    size_t used = 0;
    if (resp_parse_head(p, data + off, len - off, c->head_req, &used) < 0) {
      if (c->uc) upconn_close(c->uc);
      c->uc = NULL;
      creq_done(c, -EPROTO);
      return;
    }
    off += used;
  }
  if (p->have_head && off < len && !p->done) {
    size_t used;
    if (resp_parse_body(p, data + off, len - off, creq_body, c, &used) < 0) {
      if (c->uc) upconn_close(c->uc);
      c->uc = NULL;
      creq_done(c, -EPROTO);
      return;
    }
  }
  if (p->have_head && p->done) creq_done(c, p->h.status);
}

int evs__client_request(evs__plugin_rec *pl, const evs_client_request *r, evs_client_cb cb,
                        void *arg) {
  (void)pl;
  if (!r || !r->url || !r->method || !cb) return -EINVAL;
  const char *url = r->url;
  int tls;
  if (strncmp(url, "https://", 8) == 0) tls = 1, url += 8;
  else if (strncmp(url, "http://", 7) == 0) tls = 0, url += 7;
  else return -EINVAL;
  size_t hl = strcspn(url, "/?");
  char hostport[512];
  if (hl == 0 || hl >= sizeof hostport) return -EINVAL;
  memcpy(hostport, url, hl);
  hostport[hl] = '\0';
  const char *path = url[hl] ? url + hl : "/";
  char host[512];
  int port = tls ? 443 : 80;
  char *colon = strrchr(hostport, ':');
  if (hostport[0] == '[') {
    char *rb = strchr(hostport, ']');
    if (!rb) return -EINVAL;
    memcpy(host, hostport + 1, (size_t)(rb - hostport - 1));
    host[rb - hostport - 1] = '\0';
    if (rb[1] == ':') port = atoi(rb + 2);
  } else if (colon) {
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    port = atoi(colon + 1);
  } else {
    snprintf(host, sizeof host, "%s", hostport);
  }
  if (port <= 0 || port > 65535) return -EINVAL;

  creq *c = calloc(1, sizeof *c);
  if (!c) return -ENOMEM;
  size_t cap = strlen(path) + strlen(hostport) + r->body_len + 256;
  for (size_t i = 0; i < r->nheaders; i++) cap += r->headers[i].name_len + r->headers[i].value_len + 4;
  c->out = malloc(cap);
  if (!c->out) {
    free(c);
    return -ENOMEM;
  }
  size_t o = (size_t)snprintf(c->out, cap, "%s %s HTTP/1.1\r\nHost: %s\r\n", r->method, path, hostport);
  for (size_t i = 0; i < r->nheaders; i++) {
    memcpy(c->out + o, r->headers[i].name, r->headers[i].name_len);
    o += r->headers[i].name_len;
    c->out[o++] = ':';
    c->out[o++] = ' ';
    memcpy(c->out + o, r->headers[i].value, r->headers[i].value_len);
    o += r->headers[i].value_len;
    c->out[o++] = '\r';
    c->out[o++] = '\n';
  }
  o += (size_t)snprintf(c->out + o, cap - o, "Content-Length: %zu\r\n\r\n", r->body_len);
  if (r->body_len) memcpy(c->out + o, r->body, r->body_len);
  c->out_len = o + r->body_len;
  c->cb = cb;
  c->arg = arg;
  c->head_req = strcmp(r->method, "HEAD") == 0;
  c->cl.on_connected = creq_connected;
  c->cl.on_data = creq_data;
  uv_timer_init(evs__w->loop, &c->timer);
  c->timer.data = c;
  uint64_t to = r->timeout_ms ? r->timeout_ms : (uint64_t)evs__w->settings->upstream_response_timeout_ms;
  uv_timer_start(&c->timer, creq_timeout, to, 0);
  int err = 0;
  c->uc = upconn_get(&c->cl, tls ? "https" : "http", host, port, NULL, r->verify, r->ca_file,
                     NULL, NULL, NULL, &err);
  if (!c->uc) {
    uv_close((uv_handle_t *)&c->timer, creq_timer_closed);
    return err ? err : -ENOMEM;
  }
  if (c->uc->reused) creq_connected(&c->cl, 0);
  return 0;
}
