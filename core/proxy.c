/*
 * Proxying a client request to an upstream (the evs_host proxy call): the request head rewritten
 * for the upstream, the request body streamed up (from the client connection, through a request
 * filter, or from the plugin's body_source), the response head offered to the plugin
 * (response_head) and the response streamed down, through a response filter that may hold its
 * end. Bodies stream in both directions with backpressure: when the receiving side's write queue
 * is above the high-water mark the sending side stops reading until it drains. Connect and
 * response timeouts map to the documented error codes (`service-unavailable`,
 * `request-timeout`). Connections come from upstream.c (upstream_conn.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fmt.h"
#include "log.h"
#include "metrics.h"
#include "plugin.h"
#include "proxy.h"
#include "request.h"
#include "upstream_conn.h"
#include "worker.h"

struct evs__proxy {
  evs__upclient cl;
  evs_request *req;
  evs__plugin_rec *plugin;
  evs__upconn *uc;
  evs_upstream up;
  char *scheme, *host, *sni, *host_header, *ca_file, *cert_file, *key_file, *pass_file;
  int port;
  evs_body_filter_fn req_filter, resp_filter;
  void *filter_arg;
  int filtering_response; /* filter_emit targets: 0 upstream (request body), 1 client */
  uv_timer_t timer;
  int timer_closed;
  evs__resp_parser rp;
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
  uint64_t dropped[(EVS__MAX_RESPONSE_FIELDS + 63) / 64];
  int client_corked;      /* held: the client stays corked until the proxy finishes */
  /* A request body the plugin produces (evs_upstream.body_source, ABI 1.1). */
  int (*body_source)(void *arg, uint8_t *buf, size_t cap, size_t *ret_len);
  void *body_source_arg;
  uint64_t body_source_len, body_source_sent;
  uint8_t *source_buf;
  char strs[]; /* scheme, host, sni, host_header and the files point in here */
};

static void proxy_finish(evs__proxy *px);

static void proxy_free(evs__proxy *px) {
  free(px->source_buf);
  free(px->rp.head);
  free(px); /* its strings with it */
}

/* Copies s to *at (room counted by the caller) and moves *at past it. */
static char *keep(char **at, const char *s) {
  size_t n = strlen(s) + 1;
  char *d = *at;
  memcpy(d, s, n);
  *at += n;
  return d;
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
    evs__upconn_close(px->uc);
    px->uc = NULL;
  }
  if (req && req->conn) {
    if (!req->head_sent) {
      req->close_after = 1;
      px->done = 1; /* before responding: the response may finish the request synchronously */
      evs__respond_error(req, status, code, detail);
    } else {
      req->error_code = code; /* cut short after the head: LOG hooks see why (alerts) */
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
    evs__upconn_close(px->uc);
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
  evs__resp_parser *p = &px->rp;
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
  evs__resp_parser *p = &px->rp;
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

static void proxy_up_drain(evs__upclient *cl) {
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

static void proxy_connected(evs__upclient *cl, int status) {
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
  evs__upconn *u = px->uc;
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
  evs__resp_parser *p = &px->rp;
  if (px->response_head) {
    int r = run_response_head(px);
    if (r == 1) {
      /* Answered by the plugin: the rest of the destination's response is never read, so its
       * connection cannot be reused. */
      if (px->uc) {
        evs__upconn_close(px->uc);
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
  evs_header hs[EVS__MAX_RESPONSE_FIELDS];
  size_t n = 0;
  int close = (p->h.flags & EVS_HTTP_F_CONN_CLOSE) || p->h.version_minor == 0;
  px->upstream_keepalive = !close && p->mode != 3;
  int cl_dropped = 0;
  for (size_t i = 0; i < p->h.nfields && n < EVS__MAX_RESPONSE_FIELDS; i++) {
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

static void proxy_data_corked(evs__upclient *cl, ssize_t nread, const char *data);

/* What one upstream read produces for the client leaves in one write. The client stream stays
 * valid through this call even if the request ends in it (handles are freed on a later turn). */
static void proxy_data(evs__upclient *cl, ssize_t nread, const char *data) {
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

static void proxy_data_corked(evs__upclient *cl, ssize_t nread, const char *data) {
  evs__proxy *px = (evs__proxy *)cl;
  if (px->done) return;
  evs__resp_parser *p = &px->rp;
  if (nread < 0) {
    if (p->have_head && p->mode == 3 && nread == UV_EOF) {
      p->done = 1;
    } else if (!p->have_head && px->uc && px->uc->reused && !px->retried &&
               (px->body_source || (px->req_bytes_up == 0 && !px->req->has_body))) {
      /* A pooled connection the upstream had already closed: retry once on a fresh one. */
      px->retried = 1;
      evs__upconn_close(px->uc);
      int err = 0;
      px->uc = evs__upconn_get(&px->cl, px->scheme, px->host, px->port, px->sni, px->up.verify,
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
    int r = evs__resp_parse_head(p, data + off, len - off,
                                 strcmp(px->req->info.method, "HEAD") == 0, &used);
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
    if (evs__resp_parse_body(p, data + off, len - off, client_emit, px, &used) < 0) {
      proxy_fail(px, -EPROTO); /* aborts the response, its head being out */
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
    evs__upconn *u = px->uc;
    px->uc = NULL;
    int reusable = px->upstream_keepalive && px->req_body_sent && nread > 0;
    if (u) evs__upconn_release(u, reusable);
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
  const char *unix_path =
      up->size >= offsetof(evs_upstream, unix_path) + sizeof up->unix_path ? up->unix_path : NULL;
  if (unix_path && (tls || !unix_path[0])) return -EINVAL; /* plain HTTP on a unix socket */
  /* The strings it keeps live in the same allocation (one malloc per proxied request, not up
   * to nine). */
  const char *pass = up->size >= offsetof(evs_upstream, client_key_passphrase_file) +
                                     sizeof up->client_key_passphrase_file
                         ? up->client_key_passphrase_file
                         : NULL;
  int port = up->port ? up->port : (tls ? 443 : 80);
  size_t room = strlen(up->scheme) + 1 + strlen(up->host) + 1 +
                (unix_path ? strlen(unix_path) + 6 : 0) + (up->sni ? strlen(up->sni) + 1 : 0) +
                (up->host_header ? strlen(up->host_header) : strlen(up->host) + 24) + 1 +
                (up->ca_file ? strlen(up->ca_file) + 1 : 0) +
                (up->client_cert_file ? strlen(up->client_cert_file) + 1 : 0) +
                (up->client_key_file ? strlen(up->client_key_file) + 1 : 0) +
                (pass ? strlen(pass) + 1 : 0);
  evs__proxy *px = calloc(1, sizeof *px + room);
  if (!px) return -ENOMEM;
  /* A plugin built against an older ABI passes a shorter struct: copy what it has. */
  memcpy(&px->up, up, up->size < sizeof px->up ? up->size : sizeof px->up);
  px->up.size = sizeof px->up;
  px->port = port;
  char *at = px->strs;
  px->scheme = keep(&at, up->scheme);
  /* ABI 1.9: a unix socket; the connection pool keys it as the host "unix:<path>". */
  if (unix_path) {
    px->host = at;
    at = evs__fmt_str(EVS__FMT_LIT(at, "unix:"), unix_path);
    *at++ = '\0';
  } else {
    px->host = keep(&at, up->host);
  }
  px->sni = up->sni ? keep(&at, up->sni) : NULL;
  if (up->host_header) {
    px->host_header = keep(&at, up->host_header);
  } else if ((tls && px->port == 443) || (!tls && px->port == 80)) {
    px->host_header = keep(&at, up->host);
  } else {
    px->host_header = at;
    at = evs__fmt_i64(EVS__FMT_LIT(evs__fmt_str(at, up->host), ":"), px->port);
    *at++ = '\0';
  }
  px->ca_file = up->ca_file ? keep(&at, up->ca_file) : NULL;
  px->cert_file = up->client_cert_file ? keep(&at, up->client_cert_file) : NULL;
  px->key_file = up->client_key_file ? keep(&at, up->client_key_file) : NULL;
  /* ABI 1.5; NULL when the plugin's struct is older. */
  px->pass_file = pass ? keep(&at, pass) : NULL;
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
  px->uc = evs__upconn_get(&px->cl, px->scheme, px->host, px->port, px->sni, up->verify,
                           px->ca_file, px->cert_file, px->key_file, px->pass_file, &err);
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
