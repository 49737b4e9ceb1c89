/*
 * test-helper: a test plugin that runs tests/plugins/helper_prog.c as a helper process (ABI 1.7
 * helper_spawn) and lets the test drive it over the admin socket:
 *   GET  /test-helper              {"pid": N, "starts": N, "adopted": 0|1}
 *   POST /test-helper/send?c=CMD   writes CMD and a newline to the helper's socket (202)
 *   POST /test-helper/stop         helper_stop (200)
 * Every event is logged ("helper event ..."), which is what the tests mostly read. Used by
 * tests/integration/test_62_helpers.py.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "evserver/evs_plugin.h"

typedef struct st {
  const evs_host *host;
  evs_plugin *plugin;
  evs_helper *helper;
  int adopted;
  uint64_t starts;
} st;

static const evs_config_item items[] = {
    {"program", EVS_CONFIG_PATH, NULL, 0, 0, EVS_CONFIG_REQUIRED, "the helper program"},
    {"sandbox", EVS_CONFIG_STRING, "worker", 0, 0, 0, "the sandbox policy"},
    {"kept", EVS_CONFIG_STRING, "t", 0, 0, 0, "kept name; empty: not kept"},
    {"namespaces", EVS_CONFIG_STRING, "", 0, 0, 0, "user,pid,mount,net,ipc,uts"},
    {"optional_namespaces", EVS_CONFIG_STRING, "", 0, 0, 0, "those that may be refused"},
    {"restart_min", EVS_CONFIG_DURATION, "100ms", 0, 0, 0, "first restart delay"},
    {"restart_max", EVS_CONFIG_DURATION, "800ms", 0, 0, 0, "longest restart delay"},
    {"nofile", EVS_CONFIG_INT, "0", 0, 1000000, 0, "RLIMIT_NOFILE; 0: inherited"},
    {"tag", EVS_CONFIG_STRING, "", 0, 0, 0, "an argument, to change the spec"},
    {"memory_max", EVS_CONFIG_SIZE, "0", 0, 0, 0, "cgroup memory.max; 0: none"},
    {"pids_max", EVS_CONFIG_INT, "0", 0, 100000, 0, "cgroup pids.max; 0: none"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static uint32_t ns_flags(const char *s) {
  static const struct { const char *n; uint32_t f; } t[] = {
      {"user", EVS_HELPER_NS_USER}, {"pid", EVS_HELPER_NS_PID}, {"mount", EVS_HELPER_NS_MOUNT},
      {"net", EVS_HELPER_NS_NET},   {"ipc", EVS_HELPER_NS_IPC}, {"uts", EVS_HELPER_NS_UTS}};
  uint32_t f = 0;
  for (size_t i = 0; s && i < sizeof t / sizeof t[0]; i++)
    if (strstr(s, t[i].n)) f |= t[i].f;
  return f;
}

static void on_event(void *arg, evs_helper *h, const evs_helper_event *ev) {
  st *s = arg;
  (void)h;
  switch (ev->type) {
    case EVS_HELPER_STARTED:
      s->adopted = ev->adopted;
      s->starts = ev->starts;
      s->host->log(s->plugin, NULL, EVS_LOG_INFO,
                   "helper event started pid=%d adopted=%d starts=%llu fd_ok=%d", ev->pid,
                   ev->adopted, (unsigned long long)ev->starts, ev->fd >= 0);
      break;
    case EVS_HELPER_EXITED:
      s->host->log(s->plugin, NULL, EVS_LOG_INFO, "helper event exited pid=%d code=%d signal=%d",
                   ev->pid, ev->exit_code, ev->signal);
      break;
    case EVS_HELPER_RESTARTING:
      s->host->log(s->plugin, NULL, EVS_LOG_INFO, "helper event restarting delay=%llu",
                   (unsigned long long)ev->delay_ms);
      break;
    case EVS_HELPER_FAILED:
      s->host->log(s->plugin, NULL, EVS_LOG_INFO, "helper event failed error=%d", ev->error);
      break;
  }
}

static int route(void *arg, evs_request *req) {
  st *s = arg;
  const evs_request_info *in = s->host->request_info(req);
  if (strncmp(in->path, "/test-helper", 12) != 0) return EVS_DECLINED;
  char body[160];
  if (strcmp(in->path, "/test-helper") == 0) {
    int n = snprintf(body, sizeof body, "{\"pid\": %d, \"starts\": %llu, \"adopted\": %d}\n",
                     s->helper ? s->host->helper_pid(s->helper) : 0,
                     (unsigned long long)s->starts, s->adopted);
    s->host->respond(req, 200, NULL, 0, (const uint8_t *)body, (size_t)n);
  } else if (strcmp(in->path, "/test-helper/send") == 0 && strncmp(in->query, "c=", 2) == 0) {
    int fd = s->helper ? s->host->helper_fd(s->helper) : -1;
    int n = snprintf(body, sizeof body, "%s\n", in->query + 2);
    for (char *p = body; *p; p++)
      if (*p == '+') *p = ' ';
    if (fd < 0 || write(fd, body, (size_t)n) != n)
      s->host->respond_error(req, 503, "service-unavailable", "no helper");
    else
      s->host->respond(req, 202, NULL, 0, NULL, 0);
  } else if (strcmp(in->path, "/test-helper/stop") == 0) {
    s->host->helper_stop(s->helper);
    s->helper = NULL;
    s->host->respond(req, 200, NULL, 0, NULL, 0);
  } else {
    s->host->respond_error(req, 404, "not-found", "unknown");
  }
  return EVS_HANDLED;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret) {
  st *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->host = host;
  s->plugin = plugin;
  const char *prog = host->config_string(plugin, "program");
  const char *tag = host->config_string(plugin, "tag");
  const char *kept = host->config_string(plugin, "kept");
  const char *argv[] = {prog, tag && *tag ? tag : NULL, NULL};
  evs_helper_spec spec;
  memset(&spec, 0, sizeof spec);
  spec.size = sizeof spec;
  spec.path = prog;
  spec.argv = argv;
  spec.sandbox = host->config_string(plugin, "sandbox");
  spec.namespaces = ns_flags(host->config_string(plugin, "namespaces"));
  spec.namespaces_optional =
      ns_flags(host->config_string(plugin, "optional_namespaces")) & spec.namespaces;
  spec.rlimit_nofile = (uint64_t)host->config_int(plugin, "nofile");
  spec.restart_min_ms = (uint64_t)host->config_int(plugin, "restart_min");
  spec.restart_max_ms = (uint64_t)host->config_int(plugin, "restart_max");
  spec.kept = kept && *kept ? kept : NULL;
  spec.cgroup_memory_max = (uint64_t)host->config_int(plugin, "memory_max");
  spec.cgroup_pids_max = (uint64_t)host->config_int(plugin, "pids_max");
  int r = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (r == 0) r = host->helper_spawn(plugin, &spec, on_event, s, &s->helper);
  if (r < 0) {
    free(s);
    return r;
  }
  *ret = s;
  return 0;
}

static void fini(void *arg) { free(arg); }

EVS_PLUGIN_DEFINE("test-helper", "1.0.0", "runs a helper process for the tests", items, init,
                  fini);
