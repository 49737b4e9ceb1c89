/*
 * The admin endpoints, served on the admin Unix socket by whichever worker accepts the
 * connection: GET /metrics (Prometheus text), GET /status, GET /plugins and GET /routes (JSON).
 * evctl is their client. Plugins add their own through routes of role "admin" (and ROUTE
 * hooks). The socket's file mode is the access control (0660, owner and group).
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "host.h"
#include "metrics.h"
#include "plugin.h"
#include "request.h"
#include "route.h"
#include "server.h"
#include "worker.h"

static void respond_json(evs_request *req, json_t *o) {
  char *body = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!body) {
    evs__respond_error(req, 500, "internal-server-error", "Out of memory");
    return;
  }
  evs_header h = {"Content-Type", 12, "application/json", 16};
  evs__respond(req, 200, &h, 1, body, strlen(body));
  free(body);
}

/* GET /routes: the route table in the order the host tries it, the roles each listener
 * serves, and the plugins that still route with ROUTE hooks (tried after the routes). Every
 * worker loads the same plugins, so any worker's table is the node's. */
static json_t *routes_json(evs__worker *w) {
  json_t *routes = json_array(), *listeners = json_array(), *hooks = json_array();
  for (size_t k = 0; k < w->nroutes; k++) {
    const evs__route *rt = &w->routes[k];
    if (!rt->plugin->loaded) continue;
    char hb[300];
    json_array_append_new(
        routes, json_pack("{s:s,s:s,s:s,s:s,s:s}", "role", rt->role, "host",
                          evs__route_host_text(rt, hb, sizeof hb), "method",
                          rt->method ? rt->method : "*", "prefix", rt->prefix, "plugin",
                          rt->plugin->name));
  }
  for (size_t i = 0; i < w->nsocks; i++) {
    const evs__listen_sock *so = &w->socks[i];
    json_t *roles = json_array();
    if (so->is_admin) json_array_append_new(roles, json_string("admin"));
    for (size_t r = 0; so->conf && r < so->conf->nroles; r++)
      json_array_append_new(roles, json_string(so->conf->roles[r]));
    json_array_append_new(listeners, json_pack("{s:s,s:s,s:o}", "name", so->name, "address",
                                               so->conf ? so->conf->address : "admin socket",
                                               "roles", roles));
  }
  for (size_t i = 0; i < w->nhooks; i++) {
    const evs__hook *h = &w->hooks[i];
    if (h->phase != EVS_PHASE_ROUTE || !h->plugin->loaded) continue;
    int seen = 0;
    for (size_t j = 0; j < i && !seen; j++)
      seen = w->hooks[j].phase == EVS_PHASE_ROUTE && w->hooks[j].plugin == h->plugin;
    if (!seen) json_array_append_new(hooks, json_string(h->plugin->name));
  }
  return json_pack("{s:o,s:o,s:o}", "routes", routes, "listeners", listeners, "route_hooks",
                   hooks);
}

void evs__admin_handle(evs__worker *w, evs_request *req) {
  const char *path = req->info.path;
  int get = strcmp(req->info.method, "GET") == 0 || strcmp(req->info.method, "HEAD") == 0;
  if (get && strcmp(path, "/metrics") == 0) {
    size_t len = 0;
    char *text = evs__metrics_render(&len);
    if (!text) {
      evs__respond_error(req, 500, "internal-server-error", "Out of memory");
      return;
    }
    evs_header h = {"Content-Type", 12, "text/plain; version=0.0.4", 25};
    evs__respond(req, 200, &h, 1, text, len);
    free(text);
    return;
  }
  if (get && strcmp(path, "/status") == 0) {
    evs__metrics_region *m = evs__metrics_region_get();
    int64_t conns = 0;
    uint64_t requests = 0;
    int workers = 0;
    if (m) {
      for (int i = 0; i < EVS_METRICS_SLOTS; i++) {
        evs__metrics_slot *s = &m->slots[i];
        if (__atomic_load_n(&s->pid, __ATOMIC_RELAXED) != 0) {
          workers++;
          conns += __atomic_load_n(&s->active_connections, __ATOMIC_RELAXED);
        }
        for (int c = 0; c < 600; c++) requests += __atomic_load_n(&s->requests[c], __ATOMIC_RELAXED);
      }
    }
    uint64_t now = uv_now(w->loop);
    json_t *o = json_pack("{s:s,s:i,s:i,s:i,s:I,s:I,s:I,s:s,s:s}", "version", EVS_VERSION, "pid",
                          (int)getppid(), "workers", workers, "generation", (int)w->generation,
                          "uptime_s", (json_int_t)((now - w->started_ms) / 1000), "connections",
                          (json_int_t)conns, "requests", (json_int_t)requests, "store",
                          w->store ? evs__store_backend_name(w->store) : "none", "config",
                          w->settings->conf->path);
    respond_json(req, o);
    return;
  }
  if (get && strcmp(path, "/plugins") == 0) {
    json_t *arr = json_array();
    for (size_t i = 0; i < w->nplugins; i++) {
      evs__plugin_rec *r = &w->plugins[i];
      json_t *p = json_pack("{s:s,s:s,s:s,s:s,s:s}", "name", r->name ? r->name : "", "version",
                            r->desc && r->desc->version ? r->desc->version : "", "description",
                            r->desc && r->desc->description ? r->desc->description : "", "file",
                            r->file, "status", r->loaded ? "loaded" : "rejected");
      if (!r->loaded && r->reason) json_object_set_new(p, "reason", json_string(r->reason));
      if (r->desc) {
        char abi[16];
        snprintf(abi, sizeof abi, "%u.%u", r->desc->abi_major, r->desc->abi_minor);
        json_object_set_new(p, "abi", json_string(abi));
      }
      json_array_append_new(arr, p);
    }
    respond_json(req, json_pack("{s:o}", "plugins", arr));
    return;
  }
  if (get && strcmp(path, "/routes") == 0) {
    respond_json(req, routes_json(w));
    return;
  }
  /* Plugins add admin endpoints (evctl commands) as routes of role "admin", or through their
   * ROUTE hooks. */
  static const char *const admin_role[] = {"admin"};
  if (evs__routes_run(w, admin_role, 1, req) || req->head_sent) return;
  if (evs__plugins_run_hooks(w, EVS_PHASE_ROUTE, req) || req->head_sent) return;
  evs__respond_not_found(req, "admin");
}
