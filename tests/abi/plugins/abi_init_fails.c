/*
 * abi-init-fails: passes every descriptor check, registers a ROUTE hook and an event
 * subscription, then fails init with -EINVAL. The host must void those registrations: a request
 * for Host abi-init-fails.test must not reach the hook.
 */
#include <errno.h>
#include <string.h>

#include "evserver/evs_plugin.h"

static const evs_host *g_host;

static int route(void *state, evs_request *req) {
  (void)state;
  if (strcmp(g_host->request_info(req)->host, "abi-init-fails.test") != 0) return EVS_DECLINED;
  static const char body[] = "a failed plugin answered\n";
  g_host->respond(req, 200, NULL, 0, (const uint8_t *)body, sizeof body - 1);
  return EVS_HANDLED;
}

static void on_event(void *state, const evs_event *ev) {
  (void)state;
  (void)ev;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  (void)ret_state;
  g_host = host;
  int rc = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (rc < 0) return rc;
  rc = host->subscribe_events(plugin, "", on_event);
  if (rc < 0) return rc;
  host->log(plugin, NULL, EVS_LOG_ERROR, "refusing to start (deliberately, for tests/abi)");
  return -EINVAL;
}

EVS_PLUGIN_DEFINE("abi-init-fails", "0.0.1", "init registers a hook, then fails", NULL, init, NULL);
