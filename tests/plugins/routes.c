/*
 * test-routes: a test plugin registering routes with the host (ABI 1.7 add_route), to show
 * which one the host picks. Each route answers 200 with the body "test-routes:<label>". The
 * route for decline.test declines, so the request goes on to less specific routes. init also
 * checks add_route's refusals (-EINVAL, -EEXIST) and fails if one is wrong; a timer checks that
 * add_route after init is -EPERM and counts it as `late_add_route_refused` (GET /metrics).
 * Used by tests/integration/test_26_routes.py.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "evserver/evs_plugin.h"

static const evs_host *host;
static evs_plugin *self;
static evs_timer *late;

static int answer(evs_request *req, const char *label) {
  char body[96];
  size_t n = (size_t)snprintf(body, sizeof body, "test-routes:%s", label);
  host->respond(req, 200, NULL, 0, (const uint8_t *)body, n);
  return EVS_HANDLED;
}

#define ROUTE_FN(name) \
  static int r_##name(void *state, evs_request *req) { (void)state; return answer(req, #name); }
ROUTE_FN(exact)
ROUTE_FN(exact_deep)
ROUTE_FN(exact_deep_post)
ROUTE_FN(wild)
ROUTE_FN(deep_wild)
ROUTE_FN(any_plugin_path)
ROUTE_FN(api_extra)
ROUTE_FN(outbound)
ROUTE_FN(admin)

static int r_decline(void *state, evs_request *req) {
  (void)state;
  (void)req;
  return EVS_DECLINED;
}

static const evs_route routes[] = {
    {sizeof(evs_route), "relay", "exact.test", NULL, "/", r_exact},
    {sizeof(evs_route), "relay", "exact.test", NULL, "/deep", r_exact_deep},
    {sizeof(evs_route), "relay", "exact.test", "POST", "/deep/", r_exact_deep_post},
    {sizeof(evs_route), "relay", "*.wild.test", NULL, "/", r_wild},
    {sizeof(evs_route), "relay", "*.deep.wild.test", NULL, "/", r_deep_wild},
    {sizeof(evs_route), "relay", NULL, NULL, "/plugin-path", r_any_plugin_path},
    {sizeof(evs_route), "relay", "decline.test", NULL, "/", r_decline},
    {sizeof(evs_route), "api", NULL, "GET", "/extra", r_api_extra},
    {sizeof(evs_route), "outbound", NULL, NULL, "/", r_outbound},
    {sizeof(evs_route), "admin", NULL, "GET", "/test-routes", r_admin},
};

static void late_add(void *arg) {
  (void)arg;
  if (host->add_route(self, &routes[0]) == -EPERM)
    host->counter_add(self, "late_add_route_refused", 1);
}

static int init(const evs_host *h, evs_plugin *p, void **ret_state) {
  host = h;
  self = p;
  if (h->abi_minor < 7) return -ENOTSUP;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    int rc = h->add_route(p, &routes[i]);
    if (rc < 0) {
      h->log(p, NULL, EVS_LOG_ERROR, "route %zu refused: %d", i, rc);
      return rc;
    }
  }
  /* The refusals the ABI documents. */
  static const evs_route bad[] = {
      {sizeof(evs_route), "Relay", NULL, NULL, "/", r_exact},          /* role case */
      {sizeof(evs_route), "relay", NULL, NULL, "no-slash", r_exact},   /* prefix */
      {sizeof(evs_route), "relay", "*x.test", NULL, "/", r_exact},     /* wildcard form */
      {sizeof(evs_route), "relay", NULL, "get", "/", r_exact},         /* method */
      {sizeof(evs_route), "relay", NULL, NULL, "/", NULL},             /* handler */
      {4, "relay", NULL, NULL, "/", r_exact},                          /* size */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = h->add_route(p, &bad[i]);
    if (rc != -EINVAL) {
      h->log(p, NULL, EVS_LOG_ERROR, "malformed route %zu: wanted -EINVAL, got %d", i, rc);
      return -EPROTO;
    }
  }
  evs_route again = routes[1];
  again.host = "EXACT.test";
  again.path_prefix = "/deep/"; /* the same route, spelt differently */
  int rc = h->add_route(p, &again);
  if (rc != -EEXIST) {
    h->log(p, NULL, EVS_LOG_ERROR, "repeated route: wanted -EEXIST, got %d", rc);
    return -EPROTO;
  }
  late = h->timer_start(p, 1, 0, late_add, NULL);
  *ret_state = NULL;
  return 0;
}

static void fini(void *state) {
  (void)state;
  host->timer_free(late);
}

EVS_PLUGIN_DEFINE("test-routes", "1.0.0", "registers routes for the routing tests", NULL, init,
                  fini);
