/*
 * Client connections: accept, TLS, read and parse request heads, route them to plugins (or the
 * admin endpoints), stream request bodies to whoever consumes them, write responses, keep-alive,
 * limits and timeouts. One request is in flight per connection; pipelined bytes wait in the
 * connection buffer until the current response is done.
 *
 * Slow clients. Every phase of a request has a deadline that the client cannot push back by
 * trickling bytes: the head must be complete within limits.header_timeout of the connection's
 * start (or of the previous response, on keep-alive), the whole request within
 * limits.request_timeout of that moment, and a body must keep up limits.min_body_rate over each
 * window once its grace has passed (windows restart after the server paused reading, which is
 * not the client's doing). Connections are counted node-wide in the shared metrics region, in
 * total (limits.max_connections) and per client address (limits.max_connections_per_ip), so a
 * worker whose share fills up does not refuse while another has room, and one address cannot
 * hold the node's connections.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "admin.h"
#include "appendq.h"
#include "error_body.h"
#include "fmt.h"
#include "host.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "server.h"
#include "stream.h"
#include "tls.h"
#include "tls_sni.h"
#include "worker.h"

/* CONN_SNIFF: a TLS listener reads the ClientHello before its handshake (ABI 1.9 passthrough) */
enum conn_state { CONN_HANDSHAKE, CONN_HEAD, CONN_REQUEST, CONN_CLOSING, CONN_SNIFF };
enum timer_kind { T_NONE, T_HEADER, T_BODY, T_IDLE, T_SEND, T_SERVE, T_RECORD };

struct evs__conn {
  evs__io io;
  evs__listener *lst;
  evs__worker *w;
  char *buf;           /* head bytes and pipelined input */
  size_t len, cap;
  evs__http_scan scan;
  evs_request *req;
  uv_timer_t timer;
  enum timer_kind timer_kind;
  /* The deadline (loop ms) and whether one is set. The uv timer may be due earlier than
   * timer_due (at timer_fire): see timer_set. */
  uint64_t timer_due, timer_fire;
  int timer_armed;
  enum conn_state state;
  int timer_closed;
  int io_closed;
  char client_addr[64];
  evs__conn *prev, *next;
  uint64_t nrequests;
  uint64_t idle_since;  /* loop time the connection last became idle */
  int counted;          /* counts against limits.max_connections (admin connections do not) */
  int ip_counted;       /* counts against limits.max_connections_per_ip under ip_key */
  uint64_t ip_key;
  uint64_t req_start;   /* loop time the current request began (its head's deadlines run from it) */
  uint64_t rate_end;    /* loop time the current min_body_rate window ends; 0: body not started */
  uint64_t rate_bytes;  /* body bytes received in the current window */
  uint64_t body_last_read; /* loop time of the last read of the body (body_timeout) */
  int peer_eof;         /* the client half-closed while a request was in flight */
  evs_stream *stream;   /* taken over (stream.c); requests are then the stream's service's */
  int serve_tls_input;  /* buffered input is TLS records for the stream's TLS (T_SERVE) */
};

uint64_t evs__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *evs__status_text(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

/* ---- connection lifetime ----------------------------------------------------------------- */

static void conn_read(evs__io *io, ssize_t nread, const char *data);
static void conn_process(evs__conn *c);
static void conn_serve_start(evs__conn *c);
static void request_finish(evs_request *req);

static void conn_maybe_free(evs__conn *c) {
  if (!c->io_closed || !c->timer_closed) return;
  free(c->buf);
  free(c);
}

static void on_timer_closed(uv_handle_t *h) {
  evs__conn *c = h->data;
  c->timer_closed = 1;
  conn_maybe_free(c);
}

static void on_io_closed(evs__io *io) {
  evs__conn *c = io->data;
  c->io_closed = 1;
  conn_maybe_free(c);
}

/* Tear the connection down now (pending writes are dropped) or gracefully. */
static void conn_close(evs__conn *c, int graceful) {
  if (c->state == CONN_CLOSING) return;
  c->state = CONN_CLOSING;
  evs__worker *w = c->w;
  if (c->prev) c->prev->next = c->next;
  else w->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  w->nconns--;
  if (c->counted) {
    w->npublic--;
    evs__metrics_public_connections(-1);
  }
  if (c->ip_counted) evs__metrics_ip_add(c->ip_key, -1);
  evs__metrics_connections(-1);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
  if (c->req) {
    evs_request *req = c->req;
    req->conn = NULL;
    c->req = NULL;
    if (!req->response_done && req->on_abort) req->on_abort(req);
    if (!req->finished) request_finish(req);
  }
  if (c->stream) {
    evs_stream *s = c->stream;
    c->stream = NULL;
    evs__stream_conn_closed(s);
  }
  if (graceful) evs__io_shutdown_close(&c->io);
  else evs__io_close(&c->io);
}

static void conn_fail(evs__conn *c, int status, const char *code, const char *detail);

static void timer_set(evs__conn *c, enum timer_kind k, int64_t ms);
static void body_timer(evs__conn *c);

/* The head's timer: header_timeout, or what is left of request_timeout if that ends first. */
static int64_t head_timeout_ms(const evs__conn *c) {
  const evs__settings *s = c->w->settings;
  int64_t ms = s->header_timeout_ms;
  if (s->request_timeout_ms > 0) {
    int64_t left = (int64_t)(c->req_start + (uint64_t)s->request_timeout_ms) -
                   (int64_t)uv_now(c->w->loop);
    if (left < ms) ms = left > 0 ? left : 1;
  }
  return ms;
}

/* Why a body timer fired: NULL if it did not end the request (a rate window passed at the
 * minimum rate: the next one starts). */
static const char *body_timeout_reason(evs__conn *c) {
  const evs__settings *s = c->w->settings;
  uint64_t now = uv_now(c->w->loop);
  if (s->request_timeout_ms > 0 && now >= c->req_start + (uint64_t)s->request_timeout_ms)
    return "The request was not received within the time allowed (limits.request_timeout)";
  if (s->min_body_rate > 0 && c->rate_end && now >= c->rate_end) {
    uint64_t need = (uint64_t)s->min_body_rate * (uint64_t)s->min_body_rate_window_ms;
    if (c->req->paused || c->rate_bytes * 1000u >= need) {
      c->rate_end = now + (uint64_t)s->min_body_rate_window_ms;
      c->rate_bytes = 0;
      return NULL;
    }
    return "The request body arrived slower than the minimum rate (limits.min_body_rate)";
  }
  if (now >= c->body_last_read + (uint64_t)s->body_timeout_ms)
    return "The request body was not received in time";
  return NULL; /* woken early (timers fire on loop time): wait for the rest */
}

static void on_timeout(uv_timer_t *t) {
  evs__conn *c = t->data;
  if (!c->timer_armed) return; /* stopped since it was started */
  uint64_t now = uv_now(c->w->loop);
  if (now < c->timer_due) { /* the deadline moved later since: wait for the rest */
    c->timer_fire = c->timer_due;
    uv_timer_start(t, on_timeout, c->timer_due - now, 0);
    return;
  }
  c->timer_armed = 0;
  enum timer_kind k = c->timer_kind;
  c->timer_kind = T_NONE;
  if (k == T_SERVE) {
    conn_serve_start(c);
    return;
  }
  if (k == T_HEADER && c->len > 0 && !c->req) {
    /* A partial head that never completed: tell the client why. */
    conn_fail(c, 408, "request-timeout", "Request head timed out");
    return;
  }
  if (k == T_BODY && c->req && !c->req->head_sent) {
    evs_request *req = c->req;
    if (req->body_done) return;
    const char *why = body_timeout_reason(c);
    if (!why) {
      body_timer(c);
      return;
    }
    req->close_after = 1;
    if (req->on_abort) {
      void (*abort_fn)(evs_request *) = req->on_abort;
      req->on_abort = NULL;
      abort_fn(req);
    }
    if (c->req && !req->head_sent) evs__respond_error(req, 408, "request-timeout", why);
    return;
  }
  if (k == T_RECORD && c->req) {
    /* Not acknowledged: the client never gets the end of a response whose record the store
     * did not take. The record stays queued and is written when the store is back. */
    EVS_LOG_WARN("EVS-1108", "store: transaction record not committed within %" PRId64
                 " ms: connection closed before the response's end",
                 c->w->settings->store_record_timeout_ms);
    evs__metrics_plugin_add("core", "responses_unacknowledged", 1);
  }
  conn_close(c, 0);
}

/* Deadlines move lazily: one pushed later (at every read and every piece of a response) is only
 * recorded, and the uv timer, due earlier, re-arms itself for the rest when it fires; libuv's
 * timer heap is touched only when a deadline comes earlier. Restarting the timer at each step
 * cost about 4% of the cage front's CPU (perf). A stop only disarms. */
static void timer_set(evs__conn *c, enum timer_kind k, int64_t ms) {
  c->timer_kind = k;
  if (ms < 0 || (ms == 0 && k != T_SERVE)) {
    c->timer_armed = 0;
    return;
  }
  uint64_t due = uv_now(c->w->loop) + (uint64_t)ms;
  c->timer_due = due;
  c->timer_armed = 1;
  if (uv_is_active((uv_handle_t *)&c->timer) && c->timer_fire <= due) return;
  c->timer_fire = due;
  uv_timer_start(&c->timer, on_timeout, (uint64_t)ms, 0);
}

static void timer_stop(evs__conn *c) {
  c->timer_armed = 0;
  c->timer_kind = T_NONE;
}

/* Arm the body's timer for the first of its deadlines: body_timeout after the last read, the
 * end of request_timeout, the end of the current min_body_rate window. */
static void body_timer(evs__conn *c) {
  /* A response whose end waits for its record's commit owns the timer (record_timeout): body
   * bytes still arriving must not replace it with a body deadline that would abort the
   * connection and lose the held end. */
  if (c->timer_kind == T_RECORD) return;
  const evs__settings *s = c->w->settings;
  uint64_t now = uv_now(c->w->loop);
  uint64_t at = c->body_last_read + (uint64_t)s->body_timeout_ms;
  if (s->request_timeout_ms > 0 && c->req_start + (uint64_t)s->request_timeout_ms < at)
    at = c->req_start + (uint64_t)s->request_timeout_ms;
  if (s->min_body_rate > 0 && c->rate_end && c->rate_end < at) at = c->rate_end;
  timer_set(c, T_BODY, at > now ? (int64_t)(at - now) : 1);
}

static void conn_drain(evs__io *io) {
  evs__conn *c = io->data;
  /* A taken-over stream's plugin (1.8 stream_on_drain); a served stream's requests as any. */
  if (c->stream) evs__stream_drained(c->stream);
  if (c->req && c->req->on_client_drain) c->req->on_client_drain(c->req);
}

static void on_handshake(evs__io *io, int status) {
  evs__conn *c = io->data;
  if (status < 0) {
    evs__log(EVS_LOG_DEBUG, "EVS-1201", NULL, NULL, "TLS handshake from %s failed", c->client_addr);
    conn_close(c, 0);
    return;
  }
  c->state = CONN_HEAD;
  /* Its keep-alive requests are read edge-triggered from here on (io_edge.c): recv(2) until a
   * short read, no level-triggered re-poll per wait. Refused (libuv reads on) for TLS in TLS. */
  if (io->h.handle.type == UV_TCP) (void)evs__io_edge_on(io);
}

static void on_connection(uv_stream_t *server, int status) {
  evs__listener *l = server->data;
  evs__worker *w = evs__w;
  if (status < 0 || w->draining) return;
  evs__conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->w = w;
  c->lst = l;
  c->idle_since = uv_now(w->loop);
  int r;
  if (l->sock->is_admin) r = uv_pipe_init(w->loop, &c->io.h.pipe, 0);
  else r = uv_tcp_init(w->loop, &c->io.h.tcp);
  if (r < 0) {
    free(c);
    return;
  }
  evs__io_init(&c->io, c);
  if (uv_accept(server, &c->io.h.stream) < 0) {
    c->timer_closed = 1;
    c->io.on_close = on_io_closed;
    evs__io_close(&c->io);
    return;
  }
  uv_timer_init(w->loop, &c->timer);
  c->timer.data = c;
  c->io.on_read = conn_read;
  c->io.on_close = on_io_closed;
  c->io.on_drain = conn_drain;
  c->next = w->conns;
  if (w->conns) w->conns->prev = c;
  w->conns = c;
  w->nconns++;
  evs__metrics_connections(1);

  c->req_start = c->idle_since;
  uint64_t ip_key = 0;
  if (l->sock->is_admin) {
    snprintf(c->client_addr, sizeof c->client_addr, "unix");
  } else {
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    c->client_addr[0] = '\0';
    if (uv_tcp_getpeername(&c->io.h.tcp, (struct sockaddr *)&ss, &sl) == 0) {
      if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, c->client_addr, sizeof c->client_addr);
      else
        uv_ip6_name((struct sockaddr_in6 *)&ss, c->client_addr, sizeof c->client_addr);
      ip_key = evs__metrics_ip_key((struct sockaddr *)&ss);
    }
    uv_tcp_nodelay(&c->io.h.tcp, 1);
  }
  if (!l->sock->is_admin) {
    /* Node-wide counts (metrics.h), checked before anything is allocated for the connection. */
    const evs__settings *s = w->settings;
    const char *why = NULL;
    if (s->max_connections_per_ip > 0 && ip_key &&
        evs__metrics_ip_count(ip_key) >= (uint64_t)s->max_connections_per_ip)
      why = "Too many connections from this address";
    else if (evs__metrics_node_connections() >= s->max_connections)
      why = "Too many connections";
    if (why) {
      evs__metrics_rejected_connection();
      conn_fail(c, 503, "service-unavailable", why);
      return;
    }
    c->counted = 1;
    w->npublic++;
    evs__metrics_public_connections(1);
    if (s->max_connections_per_ip > 0 && ip_key) {
      c->ip_counted = 1;
      c->ip_key = ip_key;
      evs__metrics_ip_add(ip_key, 1);
    }
  }
  c->cap = (size_t)w->settings->max_header_bytes;
  c->buf = malloc(c->cap);
  if (!c->buf) {
    conn_close(c, 0);
    return;
  }
  c->state = CONN_HEAD;
  if (l->tls && evs__tls_server_sniffs(l->tls)) {
    c->state = CONN_SNIFF; /* conn_sniff decides once the ClientHello is in */
  } else if (l->tls) {
    c->state = CONN_HANDSHAKE;
    if (evs__io_tls_server(&c->io, evs__tls_server_ctx(l->tls), on_handshake) < 0) {
      conn_close(c, 0);
      return;
    }
  }
  timer_set(c, T_HEADER, head_timeout_ms(c));
  if (evs__io_read_start(&c->io) < 0) conn_close(c, 0);
}

/* ---- errors before a request exists ------------------------------------------------------ */

static void conn_fail(evs__conn *c, int status, const char *code, const char *detail) {
  char body[1024], head[512];
  const char *title = evs__status_text(status);
  /* The details here are the server's own short sentences: they fit. */
  int bl = (int)evs__error_body(body, sizeof body, status, code, detail);
  if (bl >= (int)sizeof body) bl = (int)sizeof body - 1;
  int hl = snprintf(head, sizeof head,
                    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                    "X-Evervault-Error-Code: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n",
                    status, title, code, bl);
  uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)hl), uv_buf_init(body, (unsigned)bl)};
  evs__io_writev(&c->io, bufs, 2);
  evs__metrics_request(status, 0);
  evs__log(EVS_LOG_INFO, "EVS-1202", NULL, NULL, "rejected request from %s: %d %s (%s)",
           c->client_addr, status, code, detail);
  conn_close(c, 1);
}

/* ---- requests ---------------------------------------------------------------------------- */

static void make_request_id(evs__worker *w, char *out, size_t n) {
  char t[sizeof w->id_prefix + 16];
  char *e = evs__fmt_hex(evs__fmt_str(t, w->id_prefix), ++w->request_seq, 8);
  size_t len = (size_t)(e - t);
  if (len >= n) len = n - 1; /* as snprintf would cut it */
  memcpy(out, t, len);
  out[len] = '\0';
}

static int lower_host(const char *in, size_t len, char *out) {
  /* Host without port, lower-case. IPv6 literals keep their brackets. */
  size_t end = len;
  if (len && in[0] == '[') {
    const char *rb = memchr(in, ']', len);
    end = rb ? (size_t)(rb - in) + 1 : len;
  } else {
    const char *colon = memchr(in, ':', len);
    if (colon) end = (size_t)(colon - in);
  }
  for (size_t i = 0; i < end; i++) out[i] = (char)((in[i] >= 'A' && in[i] <= 'Z') ? in[i] + 32 : in[i]);
  out[end] = '\0';
  return 0;
}

/* Requests we forward but that another parser might frame differently: a GET or HEAD with a
 * body, or a field whose name only looks like a framing field (Transfer---Encoding). The
 * connection closes after them, so nothing can be smuggled behind them. */
static int request_is_ambiguous(const evs_request *req) {
  const char *m = req->info.method;
  if ((strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0) &&
      (req->info.chunked || (req->info.has_content_length && req->info.content_length > 0)))
    return 1;
  for (size_t i = 0; i < req->h.nfields; i++) {
    const evs__http_field *f = &req->fields[i];
    char norm[32];
    size_t n = 0;
    for (size_t k = 0; k < f->name_len && n < sizeof norm - 1; k++) {
      char ch = req->head[f->name_off + k];
      if (ch >= 'A' && ch <= 'Z') ch = (char)(ch + 32);
      if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) norm[n++] = ch;
    }
    norm[n] = '\0';
    if ((strcmp(norm, "transferencoding") == 0 && f->name_len != 17) ||
        (strcmp(norm, "contentlength") == 0 && f->name_len != 14))
      return 1;
  }
  return 0;
}

_Static_assert(sizeof ((evs_request *)0)->client_addr == sizeof ((evs__conn *)0)->client_addr,
               "request_new copies the client address whole");

static evs_request *request_new(evs__conn *c, size_t head_len, const evs__http_head *h,
                                evs__http_field *fields) {
  evs_request *req = calloc(1, sizeof *req);
  if (!req) return NULL;
  req->head = malloc(head_len);
  req->fields = malloc(sizeof *fields * (h->nfields ? h->nfields : 1));
  /* method, target, path, query, host: each NUL-terminated, all within the head's size. */
  req->strings = malloc(head_len * 3 + 16);
  if (!req->head || !req->fields || !req->strings) {
    free(req->head);
    free(req->fields);
    free(req->strings);
    free(req);
    return NULL;
  }
  memcpy(req->head, c->buf, head_len);
  memcpy(req->fields, fields, sizeof *fields * h->nfields);
  req->h = *h;
  req->h.fields = req->fields;
  req->conn = c;
  req->start_ns = evs__now_ns();
  make_request_id(c->w, req->request_id, sizeof req->request_id);
  memcpy(req->client_addr, c->client_addr, sizeof req->client_addr); /* same size, NUL inside */

  char *s = req->strings;
  char *method = s;
  memcpy(method, req->head + h->method_off, h->method_len);
  method[h->method_len] = '\0';
  s += h->method_len + 1;
  char *target = s;
  memcpy(target, req->head + h->target_off, h->target_len);
  target[h->target_len] = '\0';
  s += h->target_len + 1;
  /* Path: for absolute-form, skip scheme://authority. */
  const char *t = target;
  if (t[0] != '/' && t[0] != '*') {
    const char *p = strstr(t, "://");
    if (p) {
      p = strchr(p + 3, '/');
      t = p ? p : "/";
    }
  }
  char *path = s;
  size_t plen = strcspn(t, "?");
  memcpy(path, t, plen);
  path[plen] = '\0';
  s += plen + 1;
  char *query = s;
  if (t[plen] == '?') {
    size_t ql = strlen(t + plen + 1);
    memcpy(query, t + plen + 1, ql);
    query[ql] = '\0';
    s += ql + 1;
  } else {
    *s++ = '\0';
  }
  char *host = s;
  host[0] = '\0';
  const char *scheme_end = t != target ? strstr(target, "://") : NULL;
  if (scheme_end) {
    /* Absolute-form: the target's authority names the host and Host is ignored (RFC 9112 3.2.2). */
    const char *auth = scheme_end + 3;
    const char *at = NULL;
    size_t alen = strcspn(auth, "/?");
    for (size_t k = 0; k < alen; k++)
      if (auth[k] == '@') at = auth + k;
    if (at) {
      alen -= (size_t)(at + 1 - auth);
      auth = at + 1;
    }
    lower_host(auth, alen, host);
  } else if (h->flags & EVS_HTTP_F_HOST) {
    const evs__http_field *hf = &req->fields[h->host_field];
    lower_host(req->head + hf->value_off, hf->value_len, host);
  }

  evs_request_info *i = &req->info;
  i->size = sizeof *i;
  i->method = method;
  i->target = target;
  i->path = path;
  i->query = query;
  i->host = host;
  i->client_addr = req->client_addr;
  i->request_id = req->request_id;
  i->version_minor = h->version_minor;
  i->tls = c->io.ssl != NULL; /* the listener's TLS, or a tunnel's (stream_serve_http) */
  i->sni = evs__io_sni(&c->io);
  i->listener = c->lst->sock->name;
  i->has_content_length = (h->flags & EVS_HTTP_F_CONTENT_LENGTH) != 0;
  i->content_length = h->content_length;
  i->chunked = (h->flags & EVS_HTTP_F_CHUNKED) != 0;

  req->has_body = i->chunked || (i->has_content_length && h->content_length > 0);
  req->body_remaining = i->has_content_length ? h->content_length : 0;
  req->body_done = !req->has_body;
  req->chunked.max_trailer_bytes = 8192;
  int keepalive = h->version_minor == 1 ? !(h->flags & EVS_HTTP_F_CONN_CLOSE)
                                        : (h->flags & EVS_HTTP_F_CONN_KEEPALIVE) != 0;
  req->close_after = !keepalive || request_is_ambiguous(req);
  return req;
}

static void request_free(evs_request *req) {
  evs__request_free_pdata(req);
  for (size_t i = 0; i < req->nedits; i++) free(req->edits[i].name); /* the value with it */
  free(req->edits);
  free(req->rb_buf);
  free(req->extra_out);
  free(req->tunnel);
  free(req->head);
  free(req->fields);
  free(req->strings);
  free(req);
}

/* The request is over (response done or client gone): log it, count it, free it, and let the
 * connection continue with the next one. */
static void request_finish(evs_request *req) {
  if (req->finished) return;
  req->finished = 1;
  evs__worker *w = evs__w;
  uint64_t us = (evs__now_ns() - req->start_ns) / 1000u;
  int status = req->response_done ? req->status : (req->status ? req->status : 499);
  evs__metrics_request(status, us);
  if (evs__log_enabled(EVS_LOG_INFO))
    evs__log(EVS_LOG_INFO, "EVS-1100", req->handler ? req->handler->name : NULL, req->request_id,
             "%s %s %d %" PRIu64 "us in=%" PRIu64 " out=%" PRIu64 " client=%s host=%s%s%s",
             req->info.method, req->info.path, status, us, req->body_received, req->bytes_out,
             req->client_addr, req->info.host, req->error_code ? " code=" : "",
             req->error_code ? req->error_code : "");
  evs__plugins_run_hooks(w, EVS_PHASE_LOG, req);

  evs__conn *c = req->conn;
  if (c) {
    c->req = NULL;
    req->conn = NULL;
  }
  /* The proxy or a caller up the stack may still use it: the last of them frees it. */
  if (req->proxy || req->holds) return;
  request_free(req);
}

void evs__request_release(evs_request *req) {
  req->proxy = NULL;
  if (req->finished && !req->holds) request_free(req);
}

void evs__request_hold(evs_request *req) { req->holds++; }

void evs__request_unhold(evs_request *req) {
  if (--req->holds == 0 && req->finished && !req->proxy) request_free(req);
}

/* After a response completed: close, or wait for the next request. */
static void conn_after_response(evs__conn *c, evs_request *req) {
  /* A draining worker keeps a connection whose response promised keep-alive: the idle grace
   * in worker.c closes it, so a client never loses a request it sent right after. */
  int close_after = req->close_after || !req->body_done;
  request_finish(req);
  if (c->state == CONN_CLOSING) return;
  if (close_after) {
    conn_close(c, 1);
    return;
  }
  if (c->len == 0 && c->peer_eof) {
    conn_close(c, 1); /* answered; the client sends nothing more */
    return;
  }
  c->state = CONN_HEAD;
  c->idle_since = uv_now(c->w->loop);
  c->req_start = c->idle_since; /* pipelined bytes: the next request began when this one ended */
  memset(&c->scan, 0, sizeof c->scan);
  if (c->len > 0) {
    timer_set(c, T_HEADER, head_timeout_ms(c));
    conn_process(c);
  } else {
    timer_set(c, T_IDLE, c->w->settings->idle_timeout_ms);
  }
  if (c->state == CONN_HEAD) evs__io_read_start(&c->io);
}

static void dispatch_held(evs__conn *c, evs_request *req);

/* Handlers may answer synchronously, which can finish and free the request (and start the next
 * pipelined one) before they return: hold it for the duration. */
static void dispatch(evs__conn *c, evs_request *req) {
  evs__request_hold(req);
  dispatch_held(c, req);
  evs__request_unhold(req);
}

static void dispatch_held(evs__conn *c, evs_request *req) {
  evs__worker *w = c->w;
  c->req = req;
  c->state = CONN_REQUEST;
  c->rate_end = 0; /* the body's rate is measured once something reads it */
  timer_stop(c);
  /* Reading goes on: what arrives during the request waits in the buffer and conn_read stops
   * reading then. Stopping here would cost an epoll_ctl pair on every request. */
  if (req->h.flags & EVS_HTTP_F_EXPECT_OTHER) {
    evs__respond_error(req, 417, "bad-request", "Unsupported Expect value");
    return;
  }
  if (req->has_body && req->info.has_content_length &&
      req->h.content_length > (uint64_t)w->settings->max_body_bytes) {
    req->close_after = 1;
    evs__respond_error(req, 413, "payload-too-large",
                       "The request exceeds the per-request size limit");
    return;
  }
  if (c->lst->sock->is_admin) {
    evs__admin_handle(w, req);
    return;
  }
  if (c->stream) {
    /* Inside a tunnel handed back to HTTP (stream_serve_http) the stream's service routes:
     * the listener's routes are for what arrives on the listener itself. */
    if (evs__stream_dispatch(c->stream, req) == EVS_HANDLED || req->head_sent || c->req != req)
      return;
    evs__respond_not_found(req, "relay");
    return;
  }
  /* Routes of the roles this listener serves, most specific first; then the ROUTE hooks of
   * plugins that decide by themselves (every listener, as before ABI 1.7); then the documented
   * 404 of the listener's first role. */
  const evs__listener_conf *lc = c->lst->sock->conf;
  const char *const *roles = lc ? (const char *const *)lc->roles : NULL;
  size_t nroles = lc ? lc->nroles : 0;
  if (evs__routes_run(w, roles, nroles, req) || req->head_sent || c->req != req) return;
  if (evs__plugins_run_hooks(w, EVS_PHASE_ROUTE, req) || req->head_sent || c->req != req) return;
  evs__respond_not_found(req, nroles ? roles[0] : "relay");
}

void evs__respond_not_found(evs_request *req, const char *role) {
  if (strcmp(role, "relay") == 0)
    evs__respond_error(req, 404, "relay-not-found",
                       "No relay is configured for the requested domain");
  else if (strcmp(role, "admin") == 0)
    evs__respond_error(req, 404, "resource-not-found", "No such admin endpoint");
  else
    evs__respond_error(req, 404, "resource-not-found",
                       "The API is unable to find the resource you have requested");
}

/* Feed buffered input to the request body. Returns 0 to continue, 1 if paused, -1 on error
 * (the connection was closed or answered). */
static int body_input_held(evs__conn *c, evs_request *req);

static int body_input(evs__conn *c) {
  evs_request *req = c->req;
  if (!req) return 0;
  evs__request_hold(req);
  int r = body_input_held(c, req);
  evs__request_unhold(req);
  return r;
}

static int body_input_held(evs__conn *c, evs_request *req) {
  size_t off = 0;
  int rc = 0;
  while (req && !req->body_done && off < c->len && !req->paused) {
    const char *data = c->buf + off;
    size_t avail = c->len - off, consumed, dlen = 0;
    const char *dptr = NULL;
    if (req->info.chunked) {
      int r = evs__http_chunked_decode(&req->chunked, data, avail, &consumed, &dptr, &dlen);
      if (r < 0) {
        off = c->len;
        req->close_after = 1;
        if (!req->head_sent) {
          if (req->on_abort) req->on_abort(req);
          if (c->req == req && !req->head_sent)
            evs__respond_error(req, 400, "bad-request", "Malformed chunked request body");
        } else {
          evs__request_abort(req);
        }
        rc = -1;
        break;
      }
      if (req->chunked.done) req->body_done = 1;
    } else {
      consumed = avail < req->body_remaining ? avail : (size_t)req->body_remaining;
      dptr = data;
      dlen = consumed;
      req->body_remaining -= consumed;
      if (req->body_remaining == 0) req->body_done = 1;
    }
    off += consumed;
    c->rate_bytes += consumed;
    if (dlen) {
      req->body_received += dlen;
      if (req->body_received > (uint64_t)c->w->settings->max_body_bytes) {
        off = c->len;
        req->close_after = 1;
        if (!req->head_sent) {
          if (req->on_abort) req->on_abort(req);
          if (c->req == req && !req->head_sent)
            evs__respond_error(req, 413, "payload-too-large",
                               "The request exceeds the per-request size limit");
        } else {
          evs__request_abort(req);
        }
        rc = -1;
        break;
      }
      if (req->sink && req->sink->data(req, dptr, dlen) == 1) req->paused = 1;
      if (c->req != req) break; /* the sink answered and finished the request */
    }
    if (req->body_done && req->sink) req->sink->end(req, 0);
  }
  if (off > 0 && c->state != CONN_CLOSING) {
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    size_t base = (size_t)c->w->settings->max_header_bytes;
    if (c->cap > base && c->len <= base) {
      char *nb = realloc(c->buf, base);
      if (nb) {
        c->buf = nb;
        c->cap = base;
      }
    }
  }
  if (rc < 0) return -1;
  if (c->req == req && req && req->paused) return 1;
  return 0;
}

static void conn_process(evs__conn *c) {
  evs__worker *w = c->w;
  while (c->state == CONN_HEAD && c->len > 0) {
    size_t head_len = 0;
    int r = evs__http_scan_head(&c->scan, c->buf, c->len, c->cap, &head_len);
    if (r == EVS_HTTP_NEED_MORE) return;
    if (r < 0) {
      conn_fail(c, evs__http_result_status(r), evs__http_result_code(r),
                evs__http_result_reason(r));
      return;
    }
    evs__http_field fields[1024];
    evs__http_head h;
    memset(&h, 0, sizeof h);
    h.fields = fields;
    h.max_fields = (size_t)w->settings->max_header_fields;
    if (h.max_fields > 1024) h.max_fields = 1024;
    r = evs__http_parse_request(c->buf, head_len, &h);
    if (r < 0) {
      conn_fail(c, evs__http_result_status(r), evs__http_result_code(r),
                evs__http_result_reason(r));
      return;
    }
    evs_request *req = request_new(c, head_len, &h, fields);
    if (!req) {
      conn_fail(c, 500, "internal-server-error", "Out of memory");
      return;
    }
    c->nrequests++;
    memmove(c->buf, c->buf + head_len, c->len - head_len);
    c->len -= head_len;
    dispatch(c, req);
    return;
  }
}

/* ABI 1.9 passthrough: the ClientHello read so far decides who gets the connection: a plugin
 * whose suffix its SNI ends in (as a raw stream, these bytes first), else this listener's own
 * TLS, fed with them. */
static void conn_sniff(evs__conn *c) {
  char name[256];
  int r = evs__tls_sni_parse((const uint8_t *)c->buf, c->len, name, sizeof name);
  if (r == -EAGAIN && c->len < c->cap && c->len < EVS_SNI_MAX_HELLO) return; /* more to read */
  evs_tls_passthrough_fn fn;
  void *arg;
  const void *owner;
  if (r == 1 && evs__tls_passthrough_find(c->lst->tls, name, &fn, &arg, &owner)) {
    evs_stream *s = evs__stream_from_conn(c, (evs__plugin_rec *)owner);
    if (!s) {
      conn_close(c, 0);
      return;
    }
    c->state = CONN_REQUEST;
    if (fn(arg, name, s) == 1) return; /* the plugin's now */
    c->stream = NULL;
    evs__stream_unclaimed(s, conn_read);
    /* Reading and the head's deadline, as the stream's making had stopped them. */
    timer_set(c, T_HEADER, head_timeout_ms(c));
    if (evs__io_read_start(&c->io) < 0) {
      conn_close(c, 0);
      return;
    }
  }
  c->state = CONN_HANDSHAKE;
  char *copy = NULL;
  ssize_t n = evs__conn_take_input(c, &copy);
  if (n < 0 || evs__io_tls_server(&c->io, evs__tls_server_ctx(c->lst->tls), on_handshake) < 0) {
    free(copy);
    conn_close(c, 0);
    return;
  }
  evs__io_feed(&c->io, copy, (size_t)n); /* the ClientHello, into the TLS layer */
  free(copy);
}

static void conn_read(evs__io *io, ssize_t nread, const char *data) {
  evs__conn *c = io->data;
  if (nread < 0) {
    /* A half-close while a request is in flight and not reading its body: the request still
     * gets its answer. A body read later (or a plain socket read again) meets the EOF anew. */
    if (nread == UV_EOF && c->state == CONN_REQUEST && c->req &&
        (!c->req->sink || c->req->body_done)) {
      c->peer_eof = 1;
      evs__io_read_stop(&c->io);
      return;
    }
    conn_close(c, 0);
    return;
  }
  size_t n = (size_t)nread;
  if (c->state == CONN_SNIFF) {
    size_t take = n < c->cap - c->len ? n : c->cap - c->len;
    memcpy(c->buf + c->len, data, take);
    c->len += take;
    conn_sniff(c);
    if (take < n && c->state == CONN_HANDSHAKE) evs__io_feed(&c->io, data + take, n - take);
    else if (take < n) conn_close(c, 0); /* a plugin's stream: more than one buffer at once */
    return;
  }
  while (n > 0 && c->state != CONN_CLOSING) {
    if (c->state == CONN_HEAD && c->timer_kind == T_IDLE) {
      /* The first byte of the next request: its deadlines run from now, not from each byte. */
      c->req_start = uv_now(c->w->loop);
      timer_set(c, T_HEADER, head_timeout_ms(c));
    }
    size_t room = c->cap - c->len;
    if (room == 0) {
      if (c->state == CONN_HEAD) {
        conn_fail(c, 431, "bad-request", "request head too large");
        return;
      }
      /* A request is in flight and its body sink is paused: stop reading and keep the rest of
       * this read below (the buffer grows by at most one read, and shrinks once drained). */
      evs__io_read_stop(&c->io);
      break;
    }
    size_t take = n < room ? n : room;
    memcpy(c->buf + c->len, data, take);
    c->len += take;
    data += take;
    n -= take;
    if (c->state == CONN_HEAD) {
      conn_process(c);
    } else if (c->state == CONN_REQUEST && c->req && c->req->sink) {
      if (c->req->body_done) {
        /* Pipelined bytes after the body: they wait for the next request. */
        evs__io_read_stop(&c->io);
      } else {
        c->body_last_read = uv_now(c->w->loop);
        int r = body_input(c);
        if (r == 1) evs__io_read_stop(&c->io);
        if (r < 0) return;
        if (c->req && !c->req->body_done)
          body_timer(c);
        else if (c->timer_kind == T_BODY)
          timer_set(c, T_NONE, 0);
      }
    } else if (c->state == CONN_REQUEST) {
      evs__io_read_stop(&c->io);
    }
  }
  if (n > 0 && c->state == CONN_REQUEST) {
    /* Buffer full while paused: bytes that did not fit would be lost, so the read was stopped
     * above before this could happen, except for TLS records decrypted in one go. Keep them by
     * growing the buffer once (bounded: one TLS record). */
    char *nb = realloc(c->buf, c->cap + n);
    if (!nb) {
      conn_close(c, 0);
      return;
    }
    c->buf = nb;
    memcpy(c->buf + c->len, data, n);
    c->cap += n;
    c->len += n;
  }
}

/* ---- request body ------------------------------------------------------------------------ */

int evs__request_body_attach(evs_request *req, const evs__body_sink *sink, void *arg) {
  evs__conn *c = req->conn;
  if (!c) return -ECONNRESET;
  req->sink = sink;
  req->sink_arg = arg;
  if (!req->has_body) {
    sink->end(req, 0);
    return 0;
  }
  if ((req->h.flags & EVS_HTTP_F_EXPECT_CONTINUE) && !req->continue_sent && c->len == 0 &&
      req->body_received == 0) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    req->continue_sent = 1;
    evs__io_write(&c->io, cont, sizeof cont - 1);
  }
  evs__request_body_resume(req);
  return 0;
}

void evs__request_body_resume(evs_request *req) {
  evs__conn *c = req->conn;
  int was_paused = req->paused;
  req->paused = 0;
  if (!c || c->req != req || req->body_done) return;
  const evs__settings *s = c->w->settings;
  uint64_t now = uv_now(c->w->loop);
  if (!c->rate_end || was_paused) {
    /* The body starts (with its grace), or reading resumes after the server paused it: either
     * way a fresh window, since the time the server did not read is not the client's. */
    c->rate_end = now + (uint64_t)s->min_body_rate_window_ms +
                  (c->rate_end ? 0 : (uint64_t)s->min_body_rate_grace_ms);
    c->rate_bytes = 0;
    c->body_last_read = now;
  }
  if (c->len > 0 && body_input(c) != 0) return;
  if (c->req == req && !req->body_done && !req->paused) {
    c->body_last_read = now;
    body_timer(c);
    evs__io_read_start(&c->io);
  } else if (c->req == req && req->body_done && c->timer_kind == T_BODY) {
    timer_set(c, T_NONE, 0);
  }
}

/* ---- responses --------------------------------------------------------------------------- */

/* Appends the Date value (at most 31 bytes). It changes once a second: format it then, not
 * for every response. */
static char *fmt_date(char *p) {
  static __thread time_t last = (time_t)-1;
  static __thread char cached[32];
  static __thread size_t cached_len;
  time_t now = time(NULL);
  if (now != last) {
    struct tm tm;
    gmtime_r(&now, &tm);
    cached_len = strftime(cached, sizeof cached, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    last = now;
  }
  return evs__fmt_mem(p, cached, cached_len);
}

int evs__response_start(evs_request *req, int status, const evs_header *headers, size_t n,
                        int64_t content_length) {
  evs__conn *c = req->conn;
  if (req->head_sent) return -EALREADY;
  req->head_sent = 1;
  req->status = status;
  if (!c) return -ECONNRESET;
  int head_method = strcmp(req->info.method, "HEAD") == 0;
  int bodyless = head_method || status == 204 || status == 304 || status < 200;
  if (c->w->draining) req->close_after = 1;
  if (!bodyless && content_length < 0) {
    if (req->info.version_minor >= 1) req->chunked_out = 1;
    else req->close_after = 1;
  }
  if (!req->body_done) req->close_after = 1; /* unread body: cannot reuse the connection */
  req->out_left = bodyless ? 0 : content_length;
  /* A head that is the whole response is the response's end: it waits in the cork for
   * evs__response_end (and, there, perhaps for a transaction record's commit). */
  if (status >= 200 && req->out_left == 0) evs__io_cork(&c->io);

  /* 256: the status line (at most 64 bytes), Date, one framing field, Connection, CRLF. */
  size_t cap = 256 + req->extra_out_len;
  for (size_t i = 0; i < n; i++) cap += headers[i].name_len + headers[i].value_len + 4;
  /* The write copies what it does not send at once, so a usual head needs no allocation. */
  char stack_out[8192];
  char *out = cap <= sizeof stack_out ? stack_out : malloc(cap);
  if (!out) return -ENOMEM;
  char *p = EVS__FMT_LIT(out, "HTTP/1.1 ");
  p = evs__fmt_i64(p, status);
  *p++ = ' ';
  p = evs__fmt_str(p, evs__status_text(status));
  p = EVS__FMT_LIT(p, "\r\n");
  for (size_t i = 0; i < n; i++) {
    p = evs__fmt_mem(p, headers[i].name, headers[i].name_len);
    p = EVS__FMT_LIT(p, ": ");
    p = evs__fmt_mem(p, headers[i].value, headers[i].value_len);
    p = EVS__FMT_LIT(p, "\r\n");
  }
  if (req->extra_out_len) p = evs__fmt_mem(p, req->extra_out, req->extra_out_len);
  p = fmt_date(EVS__FMT_LIT(p, "Date: "));
  p = EVS__FMT_LIT(p, "\r\n");
  if (!bodyless || head_method) {
    if (req->chunked_out) {
      p = EVS__FMT_LIT(p, "Transfer-Encoding: chunked\r\n");
    } else if (content_length >= 0) {
      p = evs__fmt_i64(EVS__FMT_LIT(p, "Content-Length: "), content_length);
      p = EVS__FMT_LIT(p, "\r\n");
    }
  }
  if (req->close_after) p = EVS__FMT_LIT(p, "Connection: close\r\n");
  else if (req->info.version_minor == 0) p = EVS__FMT_LIT(p, "Connection: keep-alive\r\n");
  p = EVS__FMT_LIT(p, "\r\n");
  int r = evs__io_write(&c->io, out, (size_t)(p - out));
  if (out != stack_out) free(out);
  if (bodyless) req->chunked_out = 0;
  timer_set(c, T_SEND, c->w->settings->send_timeout_ms);
  return r;
}

int evs__response_body(evs_request *req, const void *data, size_t len) {
  evs__conn *c = req->conn;
  if (!c) return -ECONNRESET;
  if (len == 0) return 0;
  if (strcmp(req->info.method, "HEAD") == 0) return 0;
  req->bytes_out += len;
  int r;
  if (req->out_left > 0 && (uint64_t)len >= (uint64_t)req->out_left) {
    /* The last body byte is the response's end: it waits in the cork for evs__response_end,
     * whatever the cork's size limit flushes of the rest. */
    req->out_left = 0;
    r = len > 1 ? evs__io_write(&c->io, data, len - 1) : 0;
    evs__io_cork(&c->io);
    int r2 = evs__io_write(&c->io, (const char *)data + len - 1, 1);
    timer_set(c, T_SEND, c->w->settings->send_timeout_ms);
    return r < 0 ? r : r2;
  }
  if (req->out_left > 0) req->out_left -= (int64_t)len;
  if (req->chunked_out) {
    char pre[32];
    char *pe = EVS__FMT_LIT(evs__fmt_hex(pre, len, 1), "\r\n");
    uv_buf_t bufs[3] = {uv_buf_init(pre, (unsigned)(pe - pre)),
                        uv_buf_init((char *)data, (unsigned)len), uv_buf_init("\r\n", 2)};
    r = evs__io_writev(&c->io, bufs, 3);
  } else {
    r = evs__io_write(&c->io, data, len);
  }
  timer_set(c, T_SEND, c->w->settings->send_timeout_ms);
  return r;
}

int evs__response_congested(evs_request *req) {
  return req->conn && req->conn->io.write_queued > EVS_IO_HIGH_WATER;
}

/* The response's last bytes go out and the connection moves on. */
static void response_send_end(evs_request *req) {
  evs__conn *c = req->conn;
  req->end_sent = 1;
  if (req->chunked_out) evs__io_write(&c->io, "0\r\n\r\n", 5);
  evs__io_release(&c->io);
  timer_set(c, T_NONE, 0);
  conn_after_response(c, req);
}

static void on_record_settled(void *arg, int status) {
  evs_request *req = arg;
  evs__conn *c = req->conn;
  if (c && c->req == req && !req->end_sent) {
    if (status < 0) {
      /* The store refused the record for good: the response is not acknowledged. */
      EVS_LOG_ERR("EVS-1109", "store: transaction record not written (%s): connection closed "
                  "before the response's end", strerror(-status));
      evs__metrics_plugin_add("core", "responses_unacknowledged", 1);
      req->end_sent = 1;
      conn_close(c, 0);
    } else {
      response_send_end(req);
    }
  }
  evs__request_unhold(req);
}

int evs__request_can_bind(const evs_request *req) {
  return req->conn && !req->end_sent && !req->end_bound && !req->finished;
}

int evs__request_bind_record(evs_request *req, uint64_t seq) {
  if (!evs__request_can_bind(req)) return req->conn ? -EALREADY : -ECONNRESET;
  if (seq > req->record_seq) req->record_seq = seq;
  return 0;
}

int evs__response_end(evs_request *req) {
  evs__conn *c = req->conn;
  if (req->response_done) return -EALREADY;
  req->response_done = 1;
  if (!c) {
    request_finish(req);
    return -ECONNRESET;
  }
  /* ABI 1.9: END hooks see the complete response before its end leaves (read-only; they may
   * bind transaction records to it). */
  evs__plugins_run_hooks(c->w, EVS_PHASE_END, req);
  req->end_bound = 1;
  if (req->conn != c || req->finished) return 0;
  if (req->record_lost) {
    EVS_LOG_ERR("EVS-1109", "store: transaction record not queued (queue full): connection "
                "closed before the response's end");
    evs__metrics_plugin_add("core", "responses_unacknowledged", 1);
    req->end_sent = 1;
    conn_close(c, 0);
    return 0;
  }
  if (req->record_seq) {
    int r = evs__appendq_wait(c->w, req->record_seq, on_record_settled, req);
    if (r == 0) {
      /* Group commit (appendq.c): the end waits in the cork for the batch's commit. */
      evs__io_hold(&c->io);
      evs__request_hold(req);
      timer_set(c, T_RECORD, c->w->settings->store_record_timeout_ms);
      return 0;
    }
    if (r < 0) {
      req->end_sent = 1;
      conn_close(c, 0);
      return r;
    }
  }
  response_send_end(req);
  return 0;
}

evs__io *evs__request_io(evs_request *req) { return req->conn ? &req->conn->io : NULL; }

int evs__respond(evs_request *req, int status, const evs_header *headers, size_t n,
                 const void *body, size_t len) {
  if (req->conn) evs__io_cork(&req->conn->io); /* head and body in one write; end uncorks */
  int r = evs__response_start(req, status, headers, n, (int64_t)len);
  if (r < 0 && r != -ECONNRESET) {
    if (req->conn) evs__io_uncork(&req->conn->io);
    return r;
  }
  evs__response_body(req, body, len);
  evs__response_end(req);
  return 0;
}

int evs__respond_error(evs_request *req, int status, const char *code, const char *detail) {
  if (req->head_sent) {
    evs__request_abort(req);
    return -EALREADY;
  }
  req->error_code = code;
  /* The one builder of the documented body (error_body.h); on the stack unless the detail is
   * long. */
  char stack[1024], *body = stack;
  size_t bl = evs__error_body(stack, sizeof stack, status, code, detail);
  if (bl >= sizeof stack) {
    if (!(body = malloc(bl + 1))) return -ENOMEM;
    evs__error_body(body, bl + 1, status, code, detail);
  }
  evs_header hs[2] = {
      {"Content-Type", 12, "application/json", 16},
      {"X-Evervault-Error-Code", 22, code, strlen(code)},
  };
  /* An error before the body was read leaves it unread: the connection cannot be reused. */
  int r = evs__respond(req, status, hs, 2, body, bl);
  if (body != stack) free(body);
  return r;
}

void evs__request_abort(evs_request *req) {
  evs__conn *c = req->conn;
  if (c) conn_close(c, 0);
  else if (!req->finished) request_finish(req);
}

/* ---- listeners --------------------------------------------------------------------------- */

int evs__server_listen(evs__worker *w) {
  w->listeners = calloc(w->nsocks, sizeof *w->listeners);
  if (!w->listeners) return -ENOMEM;
  for (size_t i = 0; i < w->nsocks; i++) {
    evs__listener *l = &w->listeners[i];
    const evs__listen_sock *s = &w->socks[i];
    l->sock = s;
    uv_stream_t *st;
    int r;
    if (s->is_admin) {
      uv_pipe_init(w->loop, &l->pipe, 0);
      r = uv_pipe_open(&l->pipe, s->fd);
      st = (uv_stream_t *)&l->pipe;
    } else {
      uv_tcp_init(w->loop, &l->tcp);
      r = uv_tcp_open(&l->tcp, s->fd);
      st = (uv_stream_t *)&l->tcp;
      if (s->tls && s->tls_server) {
        l->tls = s->tls_server;
      } else if (s->tls) {
        char err[512];
        if (evs__tls_server_new(w->settings, s->conf, &l->tls, err, sizeof err) < 0) {
          EVS_LOG_ERR("EVS-1203", "listener '%s': %s", s->name, err);
          return -EINVAL;
        }
        l->own_tls = 1;
      }
    }
    if (r < 0) return r;
    st->data = l;
    r = uv_listen(st, 1024, on_connection);
    if (r < 0) {
      EVS_LOG_ERR("EVS-1204", "listener '%s': listen failed: %s", s->name, uv_strerror(r));
      return r;
    }
  }
  return 0;
}

static void on_listener_closed(uv_handle_t *h) { (void)h; }

void evs__server_stop_accepting(evs__worker *w) {
  for (size_t i = 0; i < w->nsocks && w->listeners; i++) {
    evs__listener *l = &w->listeners[i];
    if (l->closed) continue;
    l->closed = 1;
    /* Closing our handle closes this process's copy of the fd only: the master keeps the socket
     * open, so connections in its accept queue wait for the next generation of workers. */
    if (l->sock->is_admin) uv_close((uv_handle_t *)&l->pipe, on_listener_closed);
    else uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
  }
}

void evs__server_close_idle(evs__worker *w, uint64_t min_idle_ms) {
  evs__conn *c = w->conns;
  uint64_t now = uv_now(w->loop);
  while (c) {
    evs__conn *next = c->next;
    if (!c->req && c->len == 0 && c->state == CONN_HEAD && now - c->idle_since >= min_idle_ms)
      conn_close(c, 0);
    c = next;
  }
}

void evs__server_close_all(evs__worker *w) {
  while (w->conns) conn_close(w->conns, 0);
}

void evs__server_free_tls(evs__worker *w);
void evs__server_free_tls(evs__worker *w) {
  for (size_t i = 0; i < w->nsocks && w->listeners; i++)
    if (w->listeners[i].own_tls) evs__tls_server_free(w->listeners[i].tls);
  free(w->listeners);
  w->listeners = NULL;
}

/* ---- streams (stream.c): the connection taken over, and handed back ---------------------- */

evs__io *evs__conn_io(evs__conn *c) { return &c->io; }

evs_stream *evs__conn_stream(evs__conn *c) { return c->stream; }

void evs__conn_attach_stream(evs__conn *c, evs_stream *s) {
  c->stream = s;
  timer_set(c, T_NONE, 0);
}

ssize_t evs__conn_take_input(evs__conn *c, char **ret) {
  *ret = NULL;
  if (c->len == 0) return 0;
  char *copy = malloc(c->len);
  if (!copy) return -ENOMEM;
  memcpy(copy, c->buf, c->len);
  ssize_t n = (ssize_t)c->len;
  c->len = 0;
  *ret = copy;
  return n;
}

void evs__conn_end_stream(evs__conn *c) {
  if (c->req) c->req->response_done = 1;
  conn_close(c, 1);
}

void evs__conn_abort(evs__conn *c) { conn_close(c, 0); }

void evs__conn_serve_http(evs__conn *c, int input_is_tls) {
  evs_request *req = c->req;
  if (req) {
    /* The CONNECT (or Upgrade) request is over: logged and counted now, with its status. */
    req->response_done = 1;
    request_finish(req);
  }
  /* The state stays CONN_REQUEST until T_SERVE: what the read in progress still delivers (this
   * call usually runs inside it) is only buffered, as during a takeover, never parsed yet. */
  c->io.on_read = conn_read;
  c->serve_tls_input = input_is_tls != 0;
  memset(&c->scan, 0, sizeof c->scan);
  c->idle_since = c->req_start = uv_now(c->w->loop);
  /* Start on the next loop turn, not inside the plugin's call (usually its ROUTE hook, on the
   * stack of this connection's read): T_SERVE feeds what is buffered, then the head's deadlines
   * run as for a new connection. */
  timer_set(c, T_SERVE, 0);
}

static void conn_serve_start(evs__conn *c) {
  c->state = CONN_HEAD;
  timer_set(c, T_HEADER, head_timeout_ms(c));
  if (c->len > 0 && c->serve_tls_input) {
    char *copy = NULL;
    ssize_t n = evs__conn_take_input(c, &copy);
    if (n < 0) {
      conn_close(c, 0);
      return;
    }
    evs__io_feed(&c->io, copy, (size_t)n); /* the client's first TLS records */
    free(copy);
  } else if (c->len > 0) {
    conn_process(c);
  }
  if (c->state == CONN_HEAD) evs__io_read_start(&c->io);
}
