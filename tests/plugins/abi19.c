/*
 * test-abi19: the services ABI 1.9 added, for tests/integration/test_53_abi19.py.
 * - add_tls_identity: on TLS listeners serving "relay", names ending in ".ident.test" get the
 *   certificate and key read from the files `cert` and `key` (cache_key "abi19:ident").
 * - GET /unix/...: proxied to the HTTP server on the unix socket `socket` (evs_upstream
 *   unix_path), with x-abi19-added added to the proxied response (response_add_header).
 * - GET /unix-stream: a client stream to the same socket (evs_stream_connect unix_path) sends
 *   a raw HTTP/1.0 request and answers 200 with the first line it read back.
 * - GET /added-error: response_add_header, then respond_error 418: the field is on the error.
 * - GET /bad-adds: response_add_header's refusals (framing fields, non-tokens, CR LF) counted
 *   at /metrics as bad_add_refused (4 when all were refused).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evserver/evs_plugin.h"

static const evs_host *host;
static evs_plugin *self;
static char *cert_pem, *key_pem;
static const char *sock;

static char *slurp(const char *path) {
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) return NULL;
  char *buf = calloc(1, 65536);
  size_t n = buf ? fread(buf, 1, 65535, f) : 0;
  fclose(f);
  if (!n) {
    free(buf);
    return NULL;
  }
  return buf;
}

static int identity(void *arg, const char *sni, evs_tls_identity *ret) {
  (void)arg;
  (void)sni;
  if (!cert_pem || !key_pem) return -ENOENT;
  ret->cert_pem = cert_pem;
  ret->cert_pem_len = strlen(cert_pem);
  ret->key_pem = key_pem;
  ret->key_pem_len = strlen(key_pem);
  ret->cache_key = "abi19:ident";
  return 0;
}

static int r_unix(void *state, evs_request *req) {
  (void)state;
  evs_upstream up;
  memset(&up, 0, sizeof up);
  up.size = sizeof up;
  up.scheme = "http";
  up.host = "unix.test";
  up.unix_path = sock;
  host->response_add_header(req, "x-abi19-added", "yes");
  if (host->proxy(req, &up, NULL, NULL, NULL) < 0)
    host->respond_error(req, 500, "internal-error", "proxy refused");
  return EVS_HANDLED;
}

typedef struct sreq {
  evs_request *req;
  char buf[512];
  size_t n;
  int done;
} sreq;

static void sreq_gone(void *arg) { ((sreq *)arg)->req = NULL; }

static void s_answer(sreq *r, int status, const char *body) {
  if (r->done || !r->req) return;
  r->done = 1;
  host->respond(r->req, status, NULL, 0, (const uint8_t *)body, strlen(body));
}

static void on_read(void *arg, evs_stream *s, int status, const uint8_t *data, size_t len) {
  sreq *r = arg;
  if (status < 0 || len == 0) {
    s_answer(r, 502, "stream ended early");
    host->stream_close(s);
    return;
  }
  size_t room = sizeof r->buf - 1 - r->n;
  memcpy(r->buf + r->n, data, len < room ? len : room);
  r->n += len < room ? len : room;
  r->buf[r->n] = 0;
  char *eol = strstr(r->buf, "\r\n");
  if (eol) {
    *eol = 0;
    s_answer(r, 200, r->buf);
    host->stream_close(s);
  }
}

static void on_connected(void *arg, evs_stream *s, int status) {
  sreq *r = arg;
  if (status < 0) {
    s_answer(r, 502, "connect failed");
    return;
  }
  static const char q[] = "GET /via-stream HTTP/1.0\r\nHost: unix.test\r\n\r\n";
  host->stream_write(s, (const uint8_t *)q, sizeof q - 1, NULL, NULL);
  host->stream_read_start(s, on_read, r);
}

static int r_unix_stream(void *state, evs_request *req) {
  (void)state;
  sreq *r = calloc(1, sizeof *r);
  if (!r) return EVS_DECLINED;
  r->req = req;
  host->request_set_data(req, self, r, NULL);
  evs_stream_connect o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.unix_path = sock;
  if (!host->stream_connect(self, &o, on_connected, r))
    host->respond(req, 500, NULL, 0, (const uint8_t *)"refused", 7);
  /* r is leaked on purpose when the request goes first: test code, one request */
  (void)sreq_gone;
  return EVS_HANDLED;
}

static int r_added_error(void *state, evs_request *req) {
  (void)state;
  host->response_add_header(req, "x-abi19-added", "on-error");
  host->respond_error(req, 418, "teapot", "added field on an error");
  return EVS_HANDLED;
}

static int r_bad_adds(void *state, evs_request *req) {
  (void)state;
  int refused = (host->response_add_header(req, "Content-Length", "1") == -EINVAL) +
                (host->response_add_header(req, "bad name", "1") == -EINVAL) +
                (host->response_add_header(req, "x-ok", "a\r\nb: c") == -EINVAL) +
                (host->response_add_header(req, "connection", "close") == -EINVAL);
  host->counter_add(self, "bad_add_refused", (uint64_t)refused);
  host->respond(req, 200, NULL, 0, (const uint8_t *)"ok", 2);
  int late = host->response_add_header(req, "x-late", "1") == -EALREADY;
  host->counter_add(self, "late_add_refused", (uint64_t)late);
  return EVS_HANDLED;
}

static const evs_config_item items[] = {
    {"cert", EVS_CONFIG_PATH, NULL, 0, 0, 0, "certificate for *.ident.test"},
    {"key", EVS_CONFIG_PATH, NULL, 0, 0, 0, "its key"},
    {"socket", EVS_CONFIG_PATH, NULL, 0, 0, 0, "the unix socket of the test's HTTP server"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static int init(const evs_host *h, evs_plugin *p, void **ret) {
  host = h;
  self = p;
  *ret = NULL;
  cert_pem = slurp(h->config_string(p, "cert"));
  key_pem = slurp(h->config_string(p, "key"));
  sock = h->config_string(p, "socket");
  if (h->add_tls_identity(p, "relay", ".bad", identity, NULL) != -EINVAL) return -EINVAL;
  if (h->add_tls_identity(p, "No Role", "x.test", identity, NULL) != -EINVAL) return -EINVAL;
  int rc = h->add_tls_identity(p, "relay", "ident.test", identity, NULL);
  static const evs_route routes[] = {
      {sizeof(evs_route), "relay", NULL, "GET", "/unix", r_unix},
      {sizeof(evs_route), "relay", NULL, "GET", "/unix-stream", r_unix_stream},
      {sizeof(evs_route), "relay", NULL, "GET", "/added-error", r_added_error},
      {sizeof(evs_route), "relay", NULL, "GET", "/bad-adds", r_bad_adds},
  };
  for (size_t i = 0; rc == 0 && i < sizeof routes / sizeof routes[0]; i++)
    rc = h->add_route(p, &routes[i]);
  return rc;
}

static void fini(void *state) {
  (void)state;
  free(cert_pem);
  free(key_pem);
}

EVS_PLUGIN_DEFINE("test-abi19", "1.0.0", "ABI 1.9: unix sockets, listener identities, added fields",
                  items, init, fini);
