/*
 * test-legacy: a plugin as written for ABI 1.6, before routes: its descriptor says 1.6 and it
 * decides by itself in a ROUTE hook, answering 200 "test-legacy" to any request for the host
 * legacy.test and declining the rest. The host runs such hooks on every listener, after no
 * route took the request. Used by tests/integration/test_26_routes.py.
 */
#include <string.h>

#include "evserver/evs_plugin.h"

static const evs_host *host;

static int route(void *state, evs_request *req) {
  (void)state;
  if (strcmp(host->request_info(req)->host, "legacy.test") != 0) return EVS_DECLINED;
  static const char body[] = "test-legacy";
  host->respond(req, 200, NULL, 0, (const uint8_t *)body, sizeof body - 1);
  return EVS_HANDLED;
}

static int init(const evs_host *h, evs_plugin *p, void **ret_state) {
  host = h;
  *ret_state = NULL;
  return h->add_hook(p, EVS_PHASE_ROUTE, route);
}

/* EVS_PLUGIN_DEFINE would stamp this header's minor; the point is a plugin built for 1.6. */
__attribute__((visibility("default"))) const evs_plugin_descriptor evs_plugin_entry = {
    EVS_PLUGIN_MAGIC, EVS_ABI_MAJOR, 6, sizeof(evs_plugin_descriptor), "test-legacy", "1.0.0",
    "an ABI 1.6 plugin routing with a ROUTE hook", NULL, init, NULL};
