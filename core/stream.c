/*
 * Streams: byte streams a plugin reads and writes through evs_host (see stream.h).
 *
 * A server stream is a client connection taken over after a CONNECT or Upgrade request
 * (takeover). The plugin may start a TLS server inside it with a certificate it picks per SNI
 * name (stream_start_tls), and may then hand it back to the HTTP engine (stream_serve_http):
 * the connection parses requests again, with the same strict parser, limits and timeouts as on
 * the listener, and passes each one to the plugin's evs_http_service instead of the ROUTE hooks.
 * That is how a CONNECT proxy (the Outbound Relay) sees every request inside a tunnel as an
 * evs_request it can answer, proxy or filter, without a second HTTP parser or upstream client.
 *
 * The TLS inside a server stream may run inside the listener's TLS (io.c stacks the layers).
 * Tunnels are opened per request by the SDK, so their TLS is cheap to set up: every stream of
 * the worker shares one server context (policy, session tickets, the SNI callback), and the
 * context built from an identity the plugin names (evs_tls_identity.cache_key) is kept in a
 * bounded LRU cache (tls_idcache.c) instead of being parsed from PEM on every handshake.
 *
 * A client stream is a connection a plugin opens itself (stream_connect): TCP, or TLS whose
 * certificate chain and name are verified like an upstream's, for protocols the host does not
 * proxy (WebSocket). It is not pooled.
 *
 * Lifetime: a stream counts references: the plugin's handle (until stream_close, or until
 * stream_serve_http gives the stream to the host), the connection it is attached to (server
 * streams, until the connection closes) or its socket (client streams, until the handle's close
 * callback), a pending DNS lookup or connect timer, and each pending write callback. It is
 * freed at the last.
 */
#include "stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tls.h"
#include "tls_idcache.h"
#include "tls_tickets.h"

enum stream_kind { STREAM_SERVER, STREAM_CLIENT };

struct evs_stream {
  enum stream_kind kind;
  int refs;
  int closed;               /* the plugin closed it (or gave it to the host) */
  evs__io *io;              /* the connection's or its own; NULL once gone */
  evs_stream_read_fn read_cb;
  void *read_arg;
  evs__plugin_rec *plugin;  /* who took it over or opened it */
  /* Server streams. */
  evs__conn *c;             /* NULL once the connection is gone */
  int tls;                  /* stream_start_tls was called */
  evs_tls_identity_fn identity_fn;
  void *identity_arg;
  int served;               /* stream_serve_http */
  evs_http_service svc;
  void *svc_arg;
  char *authority;          /* the CONNECT request-target, for request_tunnel */
  evs_stream_write_fn drain_cb; /* 1.8 stream_on_drain: the write queue fell below low water */
  void *drain_arg;
  /* Client streams. */
  int connecting;
  evs_stream_connect_fn connect_cb;
  void *connect_arg;
  char *host, *sni;
  char *unix_path;          /* 1.9: a client stream to a unix socket, or NULL */
  int sni_is_ip, verify;
  uint16_t port;
  SSL_CTX *client_ctx;      /* owned by the client context cache */
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_timer_t timer;
  int timer_live;
  int literal;              /* host is an address: connect from the timer's first run */
  uint64_t connect_ms;      /* literal: the connect timeout, started then */
  struct addrinfo *addrs, *cur;
  evs_stream *prev, *next;  /* client_streams */
};

/* Client streams of this worker, so that stopping can silence them before plugins unload. */
static evs_stream *client_streams;

/* Not inlined: inlined into a caller that drops one of several references, GCC's
 * -Wuse-after-free (Release builds) cannot tell that this free is not reached there. */
__attribute__((noinline)) static void stream_unref(evs_stream *s) {
  if (--s->refs > 0) return;
  if (s->kind == STREAM_CLIENT) {
    if (s->prev) s->prev->next = s->next;
    else if (client_streams == s) client_streams = s->next;
    if (s->next) s->next->prev = s->prev;
  }
  if (s->addrs) uv_freeaddrinfo(s->addrs);
  free(s->authority);
  free(s->host);
  free(s->unix_path);
  free(s->sni);
  free(s);
}

/* ---- takeover ---------------------------------------------------------------------------- */

static void server_on_read(evs__io *io, ssize_t nread, const char *data) {
  evs_stream *s = evs__conn_stream(io->data);
  if (!s || s->closed || !s->read_cb) return;
  if (nread < 0)
    s->read_cb(s->read_arg, s, nread == UV_EOF ? EVS_ECLOSED : (int)nread, NULL, 0);
  else
    s->read_cb(s->read_arg, s, 0, (const uint8_t *)data, (size_t)nread);
}

evs_stream *evs__takeover(evs_request *req, int status, const evs_header *h, size_t n) {
  evs__conn *c = req->conn;
  if (!c || req->head_sent || req->taken_over || req->proxy) return NULL;
  if (status != 101 && (status < 200 || status > 299)) return NULL;
  evs_stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  /* The head carries no framing: after it the connection is the plugin's byte stream. */
  size_t cap = 128;
  for (size_t i = 0; i < n; i++) cap += h[i].name_len + h[i].value_len + 4;
  char *out = malloc(cap);
  if (!out) {
    free(s);
    return NULL;
  }
  if (strcmp(req->info.method, "CONNECT") == 0 && !(s->authority = strdup(req->info.target))) {
    free(out);
    free(s);
    return NULL;
  }
  s->kind = STREAM_SERVER;
  s->refs = 2; /* the plugin's handle and the connection */
  s->c = c;
  s->io = evs__conn_io(c);
  s->plugin = req->handler;
  req->taken_over = 1;
  req->head_sent = 1;
  req->status = status;
  req->body_done = 1;
  size_t o = (size_t)snprintf(out, cap, "HTTP/1.1 %d %s\r\n", status, evs__status_text(status));
  for (size_t i = 0; i < n; i++) {
    memcpy(out + o, h[i].name, h[i].name_len);
    o += h[i].name_len;
    out[o++] = ':';
    out[o++] = ' ';
    memcpy(out + o, h[i].value, h[i].value_len);
    o += h[i].value_len;
    out[o++] = '\r';
    out[o++] = '\n';
  }
  out[o++] = '\r';
  out[o++] = '\n';
  evs__io_write(s->io, out, o);
  free(out);
  evs__conn_attach_stream(c, s);
  evs__io_read_stop(s->io); /* until the plugin calls stream_read_start */
  s->io->on_read = server_on_read;
  return s;
}

evs_stream *evs__stream_from_conn(evs__conn *c, evs__plugin_rec *p) {
  evs_stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->kind = STREAM_SERVER;
  s->refs = 2; /* the plugin's handle and the connection */
  s->c = c;
  s->io = evs__conn_io(c);
  s->plugin = p;
  evs__conn_attach_stream(c, s);
  evs__io_read_stop(s->io); /* until the plugin calls stream_read_start */
  s->io->on_read = server_on_read;
  return s;
}

void evs__stream_unclaimed(evs_stream *s, evs__io_read_cb on_read) {
  /* Declined before any use: the connection is the host's again. */
  s->io->on_read = on_read;
  s->c = NULL;
  s->io = NULL;
  s->closed = 1;
  s->refs = 1;
  stream_unref(s);
}

void evs__stream_conn_closed(evs_stream *s) {
  s->c = NULL;
  s->io = NULL;
  if (s->served) {
    if (s->svc.closed) s->svc.closed(s->svc_arg);
  } else if (!s->closed && s->read_cb) {
    s->refs++; /* the plugin closes its handle from the callback */
    s->read_cb(s->read_arg, s, EVS_ECLOSED, NULL, 0);
    s->refs--;
  }
  stream_unref(s); /* the connection's reference */
}

/* ---- TLS inside a server stream ---------------------------------------------------------- */

/* Tunnels' sessions are their own: a ticket the listener issued never resumes inside a tunnel,
 * nor the reverse (OpenSSL refuses a session of another session id context). */
static const unsigned char tunnel_sid_ctx[] = "evserver tunnel";

/* Per worker (one loop, one thread): the context every stream's TLS starts on, and the
 * contexts built from named identities. Made on first use; dropped when the worker stops
 * (connections still using them keep their references). */
static SSL_CTX *tunnel_base;
static evs__tls_idcache *tunnel_identities;

static int stream_sni_cb(SSL *ssl, int *al, void *arg);

static SSL_CTX *tunnel_base_ctx(void) {
  if (tunnel_base) return tunnel_base;
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return NULL;
  evs__tls_apply_server_policy(ctx);
  evs__tls_tickets_apply(ctx, 1); /* the SDK opens a tunnel per request: let it resume */
  SSL_CTX_set_session_id_context(ctx, tunnel_sid_ctx, sizeof tunnel_sid_ctx - 1);
  SSL_CTX_set_tlsext_servername_callback(ctx, stream_sni_cb);
  return tunnel_base = ctx;
}

/* The longest cache_key kept; longer ones are used uncached. */
#define CACHE_KEY_MAX 255

static int stream_sni_cb(SSL *ssl, int *al, void *arg) {
  (void)al;
  (void)arg;
  evs__io *io = SSL_get_app_data(ssl);
  evs_stream *s = evs__conn_stream(io->data);
  if (!s || !s->identity_fn) return SSL_TLSEXT_ERR_ALERT_FATAL;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  evs_tls_identity id;
  memset(&id, 0, sizeof id);
  id.size = sizeof id;
  if (s->identity_fn(s->identity_arg, name, &id) < 0) return SSL_TLSEXT_ERR_ALERT_FATAL;
  /* A plugin built against an older header may have set a smaller size. */
  const char *key = id.size >= offsetof(evs_tls_identity, cache_key) + sizeof id.cache_key
                        ? id.cache_key
                        : NULL;
  if (key && (!key[0] || strnlen(key, CACHE_KEY_MAX + 1) > CACHE_KEY_MAX)) key = NULL;
  if (key && !tunnel_identities)
    tunnel_identities = evs__tls_idcache_new((size_t)evs__w->settings->tls_identity_cache);
  SSL_CTX *ctx = key && tunnel_identities
                     ? evs__tls_idcache_get(tunnel_identities, s->plugin, key)
                     : NULL;
  if (ctx) {
    SSL_set_SSL_CTX(ssl, ctx); /* the SSL takes its own reference */
    return SSL_TLSEXT_ERR_OK;
  }
  ctx = evs__tls_ctx_from_pem(id.cert_pem, id.cert_pem_len, id.key_pem, id.key_pem_len);
  if (!ctx) return SSL_TLSEXT_ERR_ALERT_FATAL;
  /* Same session id context as the base, so that switching keeps the tunnels' sessions. */
  SSL_CTX_set_session_id_context(ctx, tunnel_sid_ctx, sizeof tunnel_sid_ctx - 1);
  if (key && tunnel_identities) evs__tls_idcache_put(tunnel_identities, s->plugin, key, ctx);
  SSL_set_SSL_CTX(ssl, ctx);
  SSL_CTX_free(ctx); /* the SSL (and the cache) hold their own references */
  return SSL_TLSEXT_ERR_OK;
}

static void stream_handshake(evs__io *io, int status) {
  evs_stream *s = evs__conn_stream(io->data);
  if (status >= 0 || !s) return;
  if (s->served) evs__conn_abort(s->c);
  else if (!s->closed && s->read_cb) s->read_cb(s->read_arg, s, EVS_ETLS, NULL, 0);
}

int evs__stream_start_tls(evs_stream *s, evs_tls_identity_fn fn, void *arg) {
  /* Once per stream; on a TLS listener the stream's TLS runs inside the listener's. */
  if (s->kind != STREAM_SERVER || s->closed || !s->c || s->tls || !fn) return -EINVAL;
  SSL_CTX *base = tunnel_base_ctx();
  if (!base) return -ENOMEM;
  s->identity_fn = fn;
  s->identity_arg = arg;
  int r = evs__io_tls_server(s->io, base, stream_handshake);
  if (r < 0) return r == UV_ENOMEM ? -ENOMEM : -EINVAL;
  s->tls = 1;
  return 0;
}

/* ---- back to HTTP ------------------------------------------------------------------------ */

int evs__stream_serve_http(evs_stream *s, const evs_http_service *svc, void *arg) {
  if (s->kind != STREAM_SERVER || s->closed || s->served || s->read_cb || !svc ||
      svc->size < offsetof(evs_http_service, request) + sizeof svc->request || !svc->request)
    return -EINVAL;
  if (!s->c) return -ECONNRESET;
  memset(&s->svc, 0, sizeof s->svc);
  memcpy(&s->svc, svc, svc->size < sizeof s->svc ? svc->size : sizeof s->svc);
  s->svc_arg = arg;
  s->served = 1;
  s->closed = 1; /* the handle is the host's now */
  evs__conn_serve_http(s->c, s->tls);
  stream_unref(s); /* the plugin's reference; the connection keeps its own */
  return 0;
}

int evs__stream_dispatch(evs_stream *s, evs_request *req) {
  if (s->authority && !req->tunnel) req->tunnel = strdup(s->authority);
  req->handler = s->plugin;
  return s->svc.request(s->svc_arg, req) == EVS_HANDLED ? EVS_HANDLED : EVS_DECLINED;
}

const char *evs__request_tunnel(evs_request *req) { return req->tunnel; }

/* ---- reading and writing (both kinds) ---------------------------------------------------- */

int evs__stream_read_start(evs_stream *s, evs_stream_read_fn cb, void *arg) {
  if (s->closed || !s->io || s->connecting || !cb) return s->closed || !cb ? -EINVAL : -ECONNRESET;
  s->read_cb = cb;
  s->read_arg = arg;
  if (s->kind == STREAM_SERVER) {
    /* Bytes the client sent after the head come first. They are plaintext already (the
     * listener's TLS decrypted them), unless the plugin started its own TLS on a plain
     * connection: then they are its first records. */
    char *copy = NULL;
    ssize_t len = evs__conn_take_input(s->c, &copy);
    if (len < 0) return (int)len;
    if (len > 0) {
      s->refs++;
      if (s->tls) evs__io_feed(s->io, copy, (size_t)len);
      else s->io->on_read(s->io, len, copy);
      free(copy);
      if (s->closed || !s->io || s->refs == 1) {
        stream_unref(s); /* the last reference may be ours: nothing is touched after it */
        return 0;
      }
      s->refs--; /* others still hold it, so this cannot free it */
    }
  }
  /* Plain TCP streams read edge-triggered (io_edge.c); a failure leaves libuv reading. */
  if (!s->io->edge) (void)evs__io_edge_on(s->io);
  return evs__io_read_start(s->io);
}

int evs__stream_read_stop(evs_stream *s) {
  if (s->closed) return -EINVAL;
  if (!s->io || s->connecting) return -ECONNRESET;
  evs__io_read_stop(s->io);
  return 0;
}

typedef struct stream_write_done {
  uv_timer_t t;
  evs_stream *s;
  evs_stream_write_fn cb;
  void *arg;
} stream_write_done;

static void stream_write_closed(uv_handle_t *h) { free(h->data); }

static void stream_write_fire(uv_timer_t *t) {
  stream_write_done *d = t->data;
  evs_stream *s = d->s;
  d->cb(d->arg, s, s->closed || !s->io ? EVS_ECLOSED : 0);
  stream_unref(s);
  uv_close((uv_handle_t *)t, stream_write_closed);
}

int evs__stream_write(evs_stream *s, const uint8_t *d, size_t len, evs_stream_write_fn cb,
                      void *arg) {
  if (s->closed) return -EINVAL;
  if (!s->io || s->connecting) return -ECONNRESET;
  stream_write_done *w = NULL;
  if (cb && !(w = malloc(sizeof *w))) return -ENOMEM;
  int r = evs__io_write(s->io, d, len);
  if (r < 0) {
    free(w);
    return r;
  }
  if (w) {
    /* The data is copied into the write queue, so it is "written" from the caller's point of
     * view; report that on the next loop turn, never before this call returns. */
    w->s = s;
    w->cb = cb;
    w->arg = arg;
    uv_timer_init(evs__w->loop, &w->t);
    w->t.data = w;
    uv_timer_start(&w->t, stream_write_fire, 0, 0);
    s->refs++;
  }
  return 0;
}

/* ---- write backpressure (1.8) ------------------------------------------------------------ */

size_t evs__stream_write_queued(evs_stream *s) {
  return s && !s->closed && s->io ? s->io->write_queued : 0;
}

int evs__stream_on_drain(evs_stream *s, evs_stream_write_fn cb, void *arg) {
  if (!s || s->closed) return -EINVAL;
  s->drain_cb = cb;
  s->drain_arg = arg;
  return 0;
}

void evs__stream_drained(evs_stream *s) {
  if (!s || s->closed || !s->drain_cb || !s->io) return;
  s->refs++; /* the plugin may close its handle from the callback */
  s->drain_cb(s->drain_arg, s, 0);
  stream_unref(s);
}

static void client_io_drain(evs__io *io) { evs__stream_drained(io->data); }

/* ---- client streams ---------------------------------------------------------------------- */

static void client_timer_closed(uv_handle_t *h) { stream_unref(h->data); }

static void client_timer_stop(evs_stream *s) {
  if (!s->timer_live) return;
  s->timer_live = 0;
  uv_close((uv_handle_t *)&s->timer, client_timer_closed);
}

static void client_io_closed(evs__io *io) {
  evs_stream *s = io->data;
  free(io);
  stream_unref(s);
}

static void client_io_close(evs_stream *s) {
  evs__io *io = s->io;
  s->io = NULL;
  if (io) evs__io_close(io);
}

static void client_on_read(evs__io *io, ssize_t nread, const char *data) {
  evs_stream *s = io->data;
  if (s->closed || !s->read_cb || s->io != io) return;
  if (nread < 0)
    s->read_cb(s->read_arg, s, nread == UV_EOF ? EVS_ECLOSED : (int)nread, NULL, 0);
  else
    s->read_cb(s->read_arg, s, 0, (const uint8_t *)data, (size_t)nread);
}

/* The connect ends: cb learns how (s on success, NULL and nothing to close on failure). */
static void client_done(evs_stream *s, int status) {
  s->connecting = 0;
  client_timer_stop(s);
  evs_stream_connect_fn cb = s->connect_cb;
  s->connect_cb = NULL;
  if (status < 0) {
    client_io_close(s);
    s->closed = 1;
    cb(s->connect_arg, NULL, status);
    stream_unref(s); /* the plugin's reference, never handed out */
    return;
  }
  evs__io_read_stop(s->io); /* until the plugin reads; TLS data waits in OpenSSL's buffer */
  cb(s->connect_arg, s, 0);
}

static void client_handshake(evs__io *io, int status) {
  evs_stream *s = io->data;
  if (s->closed || s->io != io || !s->connecting) return;
  client_done(s, status < 0 ? EVS_ETLS : 0);
}

static void client_try(evs_stream *s);

static void client_on_connect(uv_connect_t *req, int status) {
  evs_stream *s = req->data;
  if (s->closed || !s->connecting || !s->io || req->handle != &s->io->h.stream) return;
  if (status < 0) {
    client_io_close(s); /* a failed connect leaves the handle unusable */
    if (s->cur && s->cur->ai_next) {
      s->cur = s->cur->ai_next;
      client_try(s);
    } else {
      client_done(s, EVS_EUPSTREAM_REFUSED);
    }
    return;
  }
  if (!s->unix_path) uv_tcp_nodelay(&s->io->h.tcp, 1);
  s->io->on_read = client_on_read;
  if (!s->client_ctx) {
    client_done(s, 0);
    return;
  }
  int r = evs__io_tls_client(s->io, s->client_ctx, s->sni_is_ip ? NULL : s->sni,
                             s->verify ? s->sni : NULL, client_handshake);
  if (r < 0 || evs__io_read_start(s->io) < 0) client_done(s, EVS_ETLS);
}

static void client_try(evs_stream *s) {
  evs__io *io = malloc(sizeof *io);
  if (!io) {
    client_done(s, -ENOMEM);
    return;
  }
  if (s->unix_path) uv_pipe_init(evs__w->loop, &io->h.pipe, 0);
  else uv_tcp_init(evs__w->loop, &io->h.tcp);
  evs__io_init(io, s);
  io->on_close = client_io_closed;
  io->on_drain = client_io_drain;
  s->refs++;
  s->io = io;
  s->creq.data = s;
  if (s->unix_path) {
    uv_pipe_connect(&s->creq, &io->h.pipe, s->unix_path, client_on_connect);
    return;
  }
  if (uv_tcp_connect(&s->creq, &io->h.tcp, s->cur->ai_addr, client_on_connect) < 0) {
    client_io_close(s);
    if (s->cur->ai_next) {
      s->cur = s->cur->ai_next;
      client_try(s);
    } else {
      client_done(s, EVS_EUPSTREAM_REFUSED);
    }
  }
}

static void client_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  evs_stream *s = req->data;
  if (s->closed || !s->connecting || status < 0 || !res) {
    if (res) uv_freeaddrinfo(res);
    if (!s->closed && s->connecting) client_done(s, EVS_EUPSTREAM_REFUSED);
  } else {
    s->addrs = s->cur = res;
    client_try(s);
  }
  stream_unref(s); /* the lookup's reference */
}

static void client_timeout(uv_timer_t *t) {
  evs_stream *s = t->data;
  if (s->literal) {
    s->literal = 0;
    if (s->closed || !s->connecting) return;
    uv_timer_start(&s->timer, client_timeout, s->connect_ms, 0);
    client_try(s);
    return;
  }
  if (s->connecting && !s->closed) client_done(s, EVS_EUPSTREAM_TIMEOUT);
}

evs_stream *evs__stream_connect(evs__plugin_rec *p, const evs_stream_connect *opts,
                                evs_stream_connect_fn cb, void *arg) {
  evs_stream_connect o;
  memset(&o, 0, sizeof o);
  if (!opts || !cb || opts->size < offsetof(evs_stream_connect, connect_timeout_ms)) return NULL;
  memcpy(&o, opts, opts->size < sizeof o ? opts->size : sizeof o);
  /* 1.9 members read as NULL from an older struct (copied by its size above). */
  if (o.unix_path && (!o.unix_path[0] || o.tls)) return NULL;
  if (o.unix_path) {
    o.host = "localhost";
    o.port = 1;
  }
  if (!o.host || !o.host[0] || o.port == 0) return NULL;
  evs_stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->kind = STREAM_CLIENT;
  s->refs = 1; /* the plugin's handle */
  s->next = client_streams;
  if (client_streams) client_streams->prev = s;
  client_streams = s;
  s->plugin = p;
  s->connect_cb = cb;
  s->connect_arg = arg;
  s->port = o.port;
  s->verify = !o.no_verify;
  s->host = strdup(o.host);
  s->sni = strdup(o.sni ? o.sni : o.host);
  if (!s->host || !s->sni) {
    stream_unref(s);
    return NULL;
  }
  /* RFC 6066: no IP literals in SNI; the name still serves for certificate verification. */
  struct in6_addr ip;
  s->sni_is_ip = inet_pton(AF_INET, s->sni, &ip) == 1 || inet_pton(AF_INET6, s->sni, &ip) == 1;
  if (o.tls) {
    char err[512];
    /* 1.8 members read as NULL from a 1.7 struct (copied by its size above). */
    s->client_ctx = evs__tls_client_ctx(o.ca_file ? o.ca_file : evs__w->settings->upstream_ca_file,
                                        o.client_cert_file, o.client_key_file,
                                        o.client_key_passphrase_file, s->verify, err, sizeof err);
    if (!s->client_ctx) {
      evs__log(EVS_LOG_ERROR, "EVS-1301", p ? p->name : NULL, NULL, "stream to %s: %s", s->host,
               err);
      stream_unref(s);
      return NULL;
    }
  }
  if (o.unix_path) {
    if (!(s->unix_path = strdup(o.unix_path))) {
      stream_unref(s);
      return NULL;
    }
    s->connecting = 1;
  } else {
    char port_s[8];
    snprintf(port_s, sizeof port_s, "%u", (unsigned)s->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* An address needs no lookup, so no thread of libuv's pool either (uv_getaddrinfo runs
     * there): a worker with no other thread then pays no file reference counting per system
     * call. Connecting starts from the timer's first run, on a later turn, as after a lookup. */
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    struct addrinfo *lit = NULL;
    if (getaddrinfo(s->host, port_s, &hints, &lit) == 0 && lit) {
      s->addrs = s->cur = lit;
      s->literal = 1;
    } else {
      hints.ai_flags = 0;
      s->gai.data = s;
      if (uv_getaddrinfo(evs__w->loop, &s->gai, client_resolved, s->host, port_s, &hints) < 0) {
        stream_unref(s);
        return NULL;
      }
      s->refs++; /* the lookup's */
    }
    s->connecting = 1;
  }
  uv_timer_init(evs__w->loop, &s->timer);
  s->timer.data = s;
  s->timer_live = 1;
  s->refs++; /* the timer's */
  uint64_t ms = o.connect_timeout_ms ? o.connect_timeout_ms
                                     : (uint64_t)evs__w->settings->upstream_connect_timeout_ms;
  s->connect_ms = ms;
  uv_timer_start(&s->timer, client_timeout, s->literal ? 0 : ms, 0);
  /* A pipe connect reports its result in the callback, on a later turn. */
  if (s->unix_path) client_try(s);
  return s;
}

/* ---- closing ----------------------------------------------------------------------------- */

void evs__stream_close(evs_stream *s) {
  if (s->closed) return;
  s->closed = 1;
  s->read_cb = NULL;
  if (s->kind == STREAM_SERVER) {
    if (s->c) evs__conn_end_stream(s->c); /* calls evs__stream_conn_closed */
  } else {
    int connected = !s->connecting;
    s->connecting = 0;
    s->connect_cb = NULL;
    client_timer_stop(s);
    /* A connected stream's queued writes (a WebSocket close frame, say) still reach the peer:
     * shut down after them, as a server stream closes gracefully. */
    evs__io *io = s->io;
    if (connected && io) {
      s->io = NULL;
      evs__io_shutdown_close(io);
    } else {
      client_io_close(s);
    }
  }
  stream_unref(s); /* the plugin's reference */
}

void evs__streams_stop(void) {
  /* Plugins unload next: none of their callbacks may run after, so every client stream is
   * closed and silenced now; the handles stay valid (a plugin's fini may still close them). */
  for (evs_stream *s = client_streams; s; s = s->next) {
    s->connecting = 0;
    s->connect_cb = NULL;
    s->read_cb = NULL;
    client_timer_stop(s);
    client_io_close(s);
  }
  /* Connections still draining hold their own references to these contexts. */
  evs__tls_idcache_free(tunnel_identities);
  tunnel_identities = NULL;
  SSL_CTX_free(tunnel_base);
  tunnel_base = NULL;
}

_Static_assert(EVS_STREAM_HIGH_WATER == EVS_IO_HIGH_WATER &&
                   EVS_STREAM_LOW_WATER == EVS_IO_LOW_WATER,
               "the ABI's stream marks are the write queue's");
