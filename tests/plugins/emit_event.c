/*
 * test-emit: a test plugin that emits events on request, standing in for the plugins that emit
 * them in production (relay-inbound's "relay.error"). `POST /emit-test-event` with a JSON
 * object as the body emits it as an event of type `relay.error` (or the type given as
 * `?type=<type>`), `?count=N` times (at most 10000); the answer is 202, or 400 if the host
 * refused the event. Any other request is declined. Used by tests/integration/test_80_alerts.py.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "evserver/evs_plugin.h"

typedef struct st {
  const evs_host *host;
  evs_plugin *plugin;
} st;

typedef struct call {
  st *s;
  evs_request *req;
  char type[64];
  long count;
  int refs; /* the request and the pending body callback */
} call;

static void call_unref(call *c) {
  if (--c->refs == 0) free(c);
}

static void request_gone(void *data) {
  call *c = data;
  c->req = NULL;
  call_unref(c);
}

/* The value of `name=` in a query string, copied into out; 0 if found. */
static int query_param(const char *q, const char *name, char *out, size_t outlen) {
  size_t nl = strlen(name);
  for (const char *p = q; p && *p;) {
    size_t len = strcspn(p, "&");
    if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
      size_t vl = len - nl - 1;
      if (vl >= outlen) return -1;
      memcpy(out, p + nl + 1, vl);
      out[vl] = 0;
      return 0;
    }
    p += len;
    if (*p == '&') p++;
  }
  return -1;
}

static void emit(call *c, int status, const uint8_t *data, size_t len);

static void on_body(void *arg, int status, const uint8_t *data, size_t len) {
  call *c = arg;
  if (c->req) emit(c, status, data, len);
  call_unref(c);
}

static void emit(call *c, int status, const uint8_t *data, size_t len) {
  const evs_host *h = c->s->host;
  if (status < 0) {
    h->respond_error(c->req, 400, "bad-request", "could not read the body");
    return;
  }
  char *json = malloc(len + 1);
  if (!json) {
    h->respond_error(c->req, 500, "internal-server-error", "out of memory");
    return;
  }
  memcpy(json, data, len);
  json[len] = 0;
  evs_event ev = {sizeof ev, c->type, json};
  int rc = 0;
  for (long i = 0; i < c->count && rc == 0; i++) rc = h->emit_event(c->s->plugin, &ev);
  free(json);
  if (rc < 0) {
    h->respond_error(c->req, 400, "bad-request", "the host refused the event");
    return;
  }
  static const evs_header ct = {"Content-Type", 12, "text/plain", 10};
  h->respond(c->req, 202, &ct, 1, (const uint8_t *)"emitted\n", 8);
}

static int route(void *state, evs_request *req) {
  st *s = state;
  const evs_request_info *info = s->host->request_info(req);
  if (strcmp(info->path, "/emit-test-event") != 0 || strcmp(info->method, "POST") != 0)
    return EVS_DECLINED;
  call *c = calloc(1, sizeof *c);
  if (!c) {
    s->host->respond_error(req, 500, "internal-server-error", "out of memory");
    return EVS_HANDLED;
  }
  c->s = s;
  c->req = req;
  c->count = 1;
  if (query_param(info->query, "type", c->type, sizeof c->type) < 0)
    strcpy(c->type, "relay.error");
  char n[16];
  if (query_param(info->query, "count", n, sizeof n) == 0) c->count = strtol(n, NULL, 10);
  if (c->count < 1 || c->count > 10000) {
    free(c);
    s->host->respond_error(req, 400, "bad-request", "count must be 1..10000");
    return EVS_HANDLED;
  }
  c->refs = 2;
  s->host->request_set_data(req, s->plugin, c, request_gone);
  if (s->host->read_body(req, 64 * 1024, on_body, c) < 0) {
    c->refs--; /* on_body will not run */
    s->host->respond_error(req, 400, "bad-request", "could not read the body");
  }
  return EVS_HANDLED;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  st *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->host = host;
  s->plugin = plugin;
  int rc = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (rc < 0) {
    free(s);
    return rc;
  }
  *ret_state = s;
  return 0;
}

static void fini(void *state) { free(state); }

EVS_PLUGIN_DEFINE("test-emit", "1.0.0", "emits events on POST /emit-test-event (tests only)",
                  NULL, init, fini);
