/*
 * test-certs: a test plugin for the certificate calls of ABI 1.7 (issue_certificate,
 * ca_certificates), driven over the admin socket:
 *
 *   POST /test-cert?names=a,b[&validity=S]   body: the leaf's public key (PEM)
 *        200 and the PEM chain (leaf, then its CA), or 502 and "status=<n>" (the callback's
 *        status) / "call=<n>" (the call's own refusal)
 *   GET  /test-ca-bundle                     200 and the PEM bundle, or 502 as above
 *
 * Used by tests/integration/test_81_relay_ca.py.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evserver/evs_plugin.h"

static const evs_host *host;
static evs_plugin *self;

typedef struct call {
  evs_request *req;
  evs_timer *timer;
  int status;
} call;

static void fail(evs_request *req, const char *what, int status) {
  char body[64];
  size_t n = (size_t)snprintf(body, sizeof body, "%s=%d", what, status);
  host->respond(req, 502, NULL, 0, (const uint8_t *)body, n);
}

static void on_pem(void *arg, int status, const uint8_t *data, size_t len) {
  call *c = arg;
  if (status == 0)
    host->respond(c->req, 200, NULL, 0, data, len);
  else
    fail(c->req, "status", status);
  free(c);
}

static void on_refused(void *arg) { /* the call's synchronous refusal, answered from a timer */
  call *c = arg;
  host->timer_free(c->timer);
  fail(c->req, "call", c->status);
  free(c);
}

static void refuse(call *c, int r) {
  c->status = r;
  c->timer = host->timer_start(self, 0, 0, on_refused, c);
}

/* Decodes %XX in place (names may hold any byte, to test refusals). */
static void unpercent(char *s) {
  char *o = s;
  for (; *s; s++) {
    unsigned v;
    if (*s == '%' && sscanf(s + 1, "%2x", &v) == 1) {
      *o++ = (char)v;
      s += 2;
    } else {
      *o++ = *s;
    }
  }
  *o = 0;
}

static void on_body(void *arg, int status, const uint8_t *data, size_t len) {
  call *c = arg;
  const evs_request_info *info = host->request_info(c->req);
  char q[1024], key[8192];
  snprintf(q, sizeof q, "%s", info->query ? info->query : "");
  if (status != 0 || len >= sizeof key) {
    refuse(c, status ? status : -E2BIG);
    return;
  }
  memcpy(key, data, len);
  key[len] = 0;
  const char *names[16];
  size_t n = 0;
  uint32_t validity = 0;
  for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
    if (strncmp(kv, "names=", 6) == 0) {
      /* "," separates names; an empty name stays empty (to test refusals) */
      char *p = kv + 6;
      while (n < 16) {
        names[n++] = p;
        char *comma = strchr(p, ',');
        if (!comma) break;
        *comma = 0;
        p = comma + 1;
      }
      for (size_t i = 0; i < n; i++) unpercent((char *)names[i]);
    } else if (strncmp(kv, "validity=", 9) == 0) {
      validity = (uint32_t)strtoul(kv + 9, NULL, 10);
    }
  }
  evs_cert_request cr;
  memset(&cr, 0, sizeof cr);
  cr.size = sizeof cr;
  cr.names = names;
  cr.nnames = n;
  cr.public_key_pem = key;
  cr.validity_s = validity;
  int r = host->issue_certificate(self, &cr, on_pem, c);
  if (r < 0) refuse(c, r);
}

static int r_cert(void *state, evs_request *req) {
  (void)state;
  call *c = calloc(1, sizeof *c);
  if (!c) return EVS_DECLINED;
  c->req = req;
  int r = host->read_body(req, 16384, on_body, c);
  if (r < 0) refuse(c, r);
  return EVS_HANDLED;
}

static int r_bundle(void *state, evs_request *req) {
  (void)state;
  call *c = calloc(1, sizeof *c);
  if (!c) return EVS_DECLINED;
  c->req = req;
  int r = host->ca_certificates(self, on_pem, c);
  if (r < 0) refuse(c, r);
  return EVS_HANDLED;
}

static const evs_route routes[] = {
    {sizeof(evs_route), "admin", NULL, "POST", "/test-cert", r_cert},
    {sizeof(evs_route), "admin", NULL, "GET", "/test-ca-bundle", r_bundle},
};

static int init(const evs_host *h, evs_plugin *p, void **ret_state) {
  host = h;
  self = p;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    int r = h->add_route(p, &routes[i]);
    if (r < 0) return r;
  }
  *ret_state = NULL;
  return 0;
}

static void fini(void *state) { (void)state; }

EVS_PLUGIN_DEFINE("test-certs", "1.0.0", "calls issue_certificate and ca_certificates", NULL, init,
                  fini);
