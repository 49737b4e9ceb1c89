/*
 * Plugins' client requests (the evs_host http_request call, webhooks and the like): a request
 * built whole, sent over a pooled upstream connection (upstream.c, upstream_conn.h), and the
 * response body gathered (up to 16 MiB) for the plugin's callback.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "upstream_conn.h"
#include "worker.h"

typedef struct creq {
  evs__upclient cl;
  evs__upconn *uc;
  evs_client_cb cb;
  void *arg;
  char *out;
  size_t out_len;
  evs__resp_parser rp;
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
    evs__upconn *u = c->uc;
    c->uc = NULL;
    int reusable = status > 0 && c->rp.mode != 3 && !(c->rp.h.flags & EVS_HTTP_F_CONN_CLOSE);
    evs__upconn_release(u, reusable);
  }
  c->cb(c->arg, status, (const uint8_t *)c->body, status > 0 ? c->body_len : 0);
  uv_close((uv_handle_t *)&c->timer, creq_timer_closed);
}

static void creq_timeout(uv_timer_t *t) {
  creq *c = t->data;
  if (c->uc) {
    evs__upconn_close(c->uc);
    c->uc = NULL;
  }
  creq_done(c, EVS_EUPSTREAM_TIMEOUT);
}

static void creq_connected(evs__upclient *cl, int status) {
  creq *c = (creq *)cl;
  if (c->done) return;
  if (status < 0) {
    if (c->uc) evs__upconn_close(c->uc);
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

static void creq_data(evs__upclient *cl, ssize_t nread, const char *data) {
  creq *c = (creq *)cl;
  if (c->done) return;
  evs__resp_parser *p = &c->rp;
  if (nread < 0) {
    if (p->have_head && p->mode == 3) {
      creq_done(c, p->h.status);
      return;
    }
    if (c->uc) evs__upconn_close(c->uc);
    c->uc = NULL;
    creq_done(c, EVS_ECLOSED);
    return;
  }
  size_t off = 0, len = (size_t)nread;
  while (off < len && !p->have_head) {
    size_t used = 0;
    if (evs__resp_parse_head(p, data + off, len - off, c->head_req, &used) < 0) {
      if (c->uc) evs__upconn_close(c->uc);
      c->uc = NULL;
      creq_done(c, -EPROTO);
      return;
    }
    off += used;
  }
  if (p->have_head && off < len && !p->done) {
    size_t used;
    if (evs__resp_parse_body(p, data + off, len - off, creq_body, c, &used) < 0) {
      if (c->uc) evs__upconn_close(c->uc);
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
  c->uc = evs__upconn_get(&c->cl, tls ? "https" : "http", host, port, NULL, r->verify,
                          r->ca_file, NULL, NULL, NULL, &err);
  if (!c->uc) {
    uv_close((uv_handle_t *)&c->timer, creq_timer_closed);
    return err ? err : -ENOMEM;
  }
  if (c->uc->reused) creq_connected(&c->cl, 0);
  return 0;
}
