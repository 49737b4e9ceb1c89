/*
 * The admin endpoints, served on the admin Unix socket by whichever worker accepts the
 * connection: GET /metrics (Prometheus text), GET /status and GET /plugins (JSON). evctl is
 * their client. The socket's file mode is the access control (0660, owner and group).
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
  /* Plugins add admin endpoints (evctl commands) through their ROUTE hooks. */
  if (evs__plugins_run_hooks(w, EVS_PHASE_ROUTE, req) || req->head_sent) return;
  evs__respond_error(req, 404, "resource-not-found", "No such admin endpoint");
}
