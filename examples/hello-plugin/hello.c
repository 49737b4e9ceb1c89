/*
 * hello: the smallest useful evserver plugin, built outside the evserver tree against the
 * installed header only (see README.md). It registers one route (ABI 1.7): requests whose Host
 * is its configured `host`, on the listeners serving the role "relay", get 200 and a line of
 * text, and are counted. The host routes every other request elsewhere (or answers its 404).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <evserver/evs_plugin.h>

typedef struct hello_state {
  const evs_host *host;
  evs_plugin *plugin;
  const char *vhost;   /* owned by the host's configuration, valid until fini */
  const char *message;
} hello_state;

/* Declared as data: the host validates [plugin "hello"] against it before init runs, and
 * `evserver -t` reports mistakes with file, line and key. */
static const evs_config_item items[] = {
    {"host", EVS_CONFIG_STRING, "hello.test", 0, 0, 0, "Host header this plugin answers"},
    {"message", EVS_CONFIG_STRING, "Hello from a third-party plugin", 0, 0, 0,
     "first line of every answer"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static int hello(void *state, evs_request *req) {
  hello_state *st = state;
  const evs_request_info *info = st->host->request_info(req);
  char body[512];
  int n = snprintf(body, sizeof body, "%s\n%s %s\n", st->message, info->method, info->path);
  if (n < 0) return EVS_DECLINED;
  size_t len = (size_t)n < sizeof body ? (size_t)n : sizeof body - 1;
  static const evs_header ct = {"Content-Type", 12, "text/plain; charset=utf-8", 25};
  if (st->host->respond(req, 200, &ct, 1, (const uint8_t *)body, len) < 0)
    st->host->respond_error(req, 500, "internal-server-error", "hello: could not respond");
  st->host->counter_add(st->plugin, "hello_requests", 1);
  return EVS_HANDLED;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  hello_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  st->vhost = host->config_string(plugin, "host");
  st->message = host->config_string(plugin, "message");
  /* Any method, any path, on the host named in the configuration; the host copies the route. */
  evs_route r = {sizeof r, "relay", st->vhost, NULL, "/", hello};
  int rc = host->add_route(plugin, &r);
  if (rc < 0) {
    free(st);
    return rc;
  }
  host->log(plugin, NULL, EVS_LOG_INFO, "answering Host %s", st->vhost);
  *ret_state = st;
  return 0;
}

static void fini(void *state) { free(state); }

EVS_PLUGIN_DEFINE("hello", "1.0.0", "example: answers one Host with a line of text", items, init,
                  fini);
