/*
 * test-cage-run: drives the Cages runner (plugins/cage-broker/cage_run.h) without the
 * cage-broker's front, for tests/integration/test_97_cage_run.py. One instance from its
 * configuration, started in init; the admin socket shows it:
 *   GET  /test-cage        {"state", "why", "app_socket", "backend", "api_calls", "history",
 *                           "egress"}
 *   POST /test-cage/stop   cage_run_stop
 * The Encryption API calls from inside the cage get answers a test can recognise: /encrypt
 * answers "HOST-ENC:" + the body, /decrypt takes that prefix off again.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cage_run.h"
#include "evserver/evs_plugin.h"

typedef struct st {
  const evs_host *host;
  evs_plugin *plugin;
  cage_instance *ci;
  char state[16], why[256];
  char history[8192];
  char egress[4096];
  unsigned api_calls, logs;
  const char *env[16], *allow[16];
  uint16_t ports[8];
} st;

static const evs_config_item items[] = {
    {"image", EVS_CONFIG_PATH, NULL, 0, 0, EVS_CONFIG_REQUIRED, "the .eif"},
    {"backend", EVS_CONFIG_STRING, "sandbox", 0, 0, 0, "kvm, sandbox or auto"},
    {"name", EVS_CONFIG_STRING, "t", 0, 0, 0, "the instance's name"},
    {"env", EVS_CONFIG_STRING, "", 0, 0, 0, "K=V;K=V"},
    {"egress", EVS_CONFIG_BOOL, "false", 0, 0, 0, "egress on"},
    {"egress_allow", EVS_CONFIG_STRING, "", 0, 0, 0, "destinations, comma-separated"},
    {"egress_ports", EVS_CONFIG_STRING, "", 0, 0, 0, "ports, comma-separated"},
    {"allow_private", EVS_CONFIG_BOOL, "false", 0, 0, 0, "egress to loopback"},
    {"debug", EVS_CONFIG_BOOL, "false", 0, 0, 0, "forward the app's output"},
    {"tcg", EVS_CONFIG_BOOL, "false", 0, 0, 0, "kvm backend under software emulation"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static const char *state_name(cage_state s) {
  switch (s) {
    case CAGE_STARTING: return "STARTING";
    case CAGE_READY: return "READY";
    case CAGE_CRASHED: return "CRASHED";
    case CAGE_STOPPED: return "STOPPED";
  }
  return "?";
}

static void json_append(char *dst, size_t cap, const char *s) {
  size_t n = strlen(dst);
  for (; *s && n + 8 < cap; s++) {
    if (*s == '"' || *s == '\\') dst[n++] = '\\';
    dst[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
  }
  dst[n] = 0;
}

static void on_state(void *arg, cage_instance *ci, cage_state state, const char *why) {
  st *s = arg;
  (void)ci;
  snprintf(s->state, sizeof s->state, "%s", state_name(state));
  snprintf(s->why, sizeof s->why, "%s", why);
  s->host->log(s->plugin, NULL, EVS_LOG_INFO, "cage state %s: %s", s->state, why);
  size_t n = strlen(s->history);
  if (n + 300 < sizeof s->history) {
    snprintf(s->history + n, sizeof s->history - n, "%s\"%s: ", n ? "," : "", s->state);
    json_append(s->history, sizeof s->history, why);
    strcat(s->history, "\"");
  }
  if (state == CAGE_STOPPED) s->ci = NULL;
}

static void on_log(void *arg, cage_instance *ci, int stream, const char *line, size_t len) {
  st *s = arg;
  (void)ci;
  s->logs++;
  s->host->log(s->plugin, NULL, EVS_LOG_INFO, "cage log %d: %.*s", stream, (int)len, line);
}

static void on_api(void *arg, cage_instance *ci, cage_api_call *call, const char *method,
                   const char *path, const uint8_t *body, size_t len) {
  st *s = arg;
  (void)ci, (void)method;
  s->api_calls++;
  if (strcmp(path, "/encrypt") == 0) {
    char *b = malloc(len + 9);
    memcpy(b, "HOST-ENC:", 9);
    memcpy(b + 9, body, len);
    cage_api_reply(call, 200, "text/plain", (const uint8_t *)b, len + 9);
    free(b);
  } else if (strcmp(path, "/decrypt") == 0 && len >= 9 && memcmp(body, "HOST-ENC:", 9) == 0) {
    cage_api_reply(call, 200, "application/json", body + 9, len - 9);
  } else {
    cage_api_reply(call, 404, "application/json", (const uint8_t *)"{\"error\":1}", 11);
  }
}

static void on_egress(void *arg, cage_instance *ci, const char *host, int port, int allowed,
                      const char *why) {
  st *s = arg;
  (void)ci;
  size_t n = strlen(s->egress);
  if (n + 400 >= sizeof s->egress) return;
  snprintf(s->egress + n, sizeof s->egress - n, "%s{\"host\":\"", n ? "," : "");
  json_append(s->egress, sizeof s->egress, host);
  n = strlen(s->egress);
  snprintf(s->egress + n, sizeof s->egress - n, "\",\"port\":%d,\"allowed\":%d,\"why\":\"", port,
           allowed);
  json_append(s->egress, sizeof s->egress, why);
  strcat(s->egress, "\"}");
}

static int route(void *arg, evs_request *req) {
  st *s = arg;
  const evs_request_info *in = s->host->request_info(req);
  if (strncmp(in->path, "/test-cage", 10) != 0) return EVS_DECLINED;
  if (strcmp(in->path, "/test-cage") == 0) {
    static char body[16384];
    const char *sock = s->ci ? cage_run_app_socket(s->ci) : NULL;
    char w[600] = "";
    json_append(w, sizeof w, s->why);
    int n = snprintf(body, sizeof body,
                     "{\"state\":\"%s\",\"why\":\"%s\",\"app_socket\":\"%s\",\"backend\":\"%s\","
                     "\"api_calls\":%u,\"logs\":%u,\"history\":[%s],\"egress\":[%s]}\n",
                     s->state, w, sock ? sock : "", s->ci ? cage_run_backend(s->ci) : "",
                     s->api_calls, s->logs, s->history, s->egress);
    s->host->respond(req, 200, NULL, 0, (const uint8_t *)body, (size_t)n);
  } else if (strcmp(in->path, "/test-cage/stop") == 0) {
    cage_run_stop(s->ci);
    s->ci = NULL;
    s->host->respond(req, 200, NULL, 0, NULL, 0);
  } else {
    s->host->respond_error(req, 404, "not-found", "unknown");
  }
  return EVS_HANDLED;
}

/* Splits a copy of list at sep into out (NULL-terminated, at most max - 1). */
static void split(char *list, char sep, const char **out, int max) {
  int n = 0;
  for (char *p = list; p && *p && n < max - 1;) {
    out[n++] = p;
    p = strchr(p, sep);
    if (p) *p++ = 0;
  }
  out[n] = NULL;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret) {
  st *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->host = host;
  s->plugin = plugin;
  static char env[2048], allow[1024], ports[256];
  snprintf(env, sizeof env, "%s", host->config_string(plugin, "env"));
  snprintf(allow, sizeof allow, "%s", host->config_string(plugin, "egress_allow"));
  snprintf(ports, sizeof ports, "%s", host->config_string(plugin, "egress_ports"));
  split(env, ';', s->env, 16);
  split(allow, ',', s->allow, 16);
  const char *pl[9];
  split(ports, ',', pl, 9);
  size_t np = 0;
  for (; pl[np]; np++) s->ports[np] = (uint16_t)atoi(pl[np]);
  const char *b = host->config_string(plugin, "backend");
  cage_run_spec spec = {
      .size = sizeof spec,
      .name = host->config_string(plugin, "name"),
      .image_path = host->config_string(plugin, "image"),
      .backend = strcmp(b, "kvm") == 0       ? CAGE_BACKEND_KVM
                 : strcmp(b, "sandbox") == 0 ? CAGE_BACKEND_SANDBOX
                                             : CAGE_BACKEND_AUTO,
      .env = s->env,
      .egress_allow = s->allow[0] ? s->allow : NULL,
      .egress_ports = s->ports,
      .n_egress_ports = np,
      .egress = host->config_bool(plugin, "egress"),
      .debug = host->config_bool(plugin, "debug"),
      .egress_allow_private = host->config_bool(plugin, "allow_private"),
      .kvm_tcg = host->config_bool(plugin, "tcg"),
  };
  static const cage_run_callbacks cb = {on_state, on_log, on_api, on_egress};
  int r = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (r == 0) r = cage_run_start(plugin, host, &spec, &cb, s, &s->ci);
  if (r < 0) {
    free(s);
    return r;
  }
  *ret = s;
  return 0;
}

static void fini(void *arg) {
  st *s = arg;
  if (s->ci) cage_run_stop(s->ci);
  free(s);
}

EVS_PLUGIN_DEFINE("test-cage-run", "1.0.0", "runs one cage for the tests", items, init, fini);
