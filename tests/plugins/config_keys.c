/*
 * test-config-keys: a test plugin that reads its configuration through config_string,
 * config_int and config_bool, declared keys and undeclared ones, in init and again for every
 * request. `GET /config-keys` answers what it read as JSON; any other request is declined. Used
 * by tests/integration/test_46_plugin_config.py: declared keys read their values or defaults; an
 * undeclared key is an error return (NULL, EVS_CONFIG_UNDECLARED, -ENOENT) and one EVS-1410 log
 * line per key and process, however often and through whichever function it is read.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evserver/evs_plugin.h"

typedef struct st {
  const evs_host *host;
  evs_plugin *plugin;
} st;

/* Reads everything; writes the JSON answer to out. */
static void read_all(st *s, char *out, size_t cap) {
  const evs_host *h = s->host;
  evs_plugin *p = s->plugin;
  const char *greeting = h->config_string(p, "greeting");
  int64_t limit = h->config_int(p, "limit");
  int flag = h->config_bool(p, "flag");
  /* Undeclared: "colour" through all three lookups, "shade" through config_int only. */
  const char *colour = h->config_string(p, "colour");
  int64_t colour_int = h->config_int(p, "colour");
  int colour_bool = h->config_bool(p, "colour");
  int64_t shade = h->config_int(p, "shade");
  snprintf(out, cap,
           "{\"greeting\":\"%s\",\"limit\":%" PRId64 ",\"flag\":%d,\"colour_null\":%s,"
           "\"colour_int_undeclared\":%s,\"colour_bool\":%d,\"shade_undeclared\":%s}",
           greeting ? greeting : "", limit, flag, colour ? "false" : "true",
           colour_int == EVS_CONFIG_UNDECLARED ? "true" : "false", colour_bool,
           shade == EVS_CONFIG_UNDECLARED ? "true" : "false");
}

static int route(void *arg, evs_request *req) {
  st *s = arg;
  const evs_request_info *info = s->host->request_info(req);
  if (strcmp(info->path, "/config-keys") != 0) return EVS_DECLINED;
  char body[512];
  read_all(s, body, sizeof body);
  evs_header ct = {"Content-Type", 12, "application/json", 16};
  s->host->respond(req, 200, &ct, 1, (const uint8_t *)body, strlen(body));
  return EVS_HANDLED;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  st *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->host = host;
  s->plugin = plugin;
  char body[512];
  read_all(s, body, sizeof body); /* in init too: still one log line per key */
  int r = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (r < 0) {
    free(s);
    return r;
  }
  *ret_state = s;
  return 0;
}

static void fini(void *arg) { free(arg); }

static const evs_config_item items[] = {
    {"greeting", EVS_CONFIG_STRING, "hi", 0, 0, 0, "a string"},
    {"limit", EVS_CONFIG_INT, "5", 0, 100, 0, "a number"},
    {"flag", EVS_CONFIG_BOOL, "off", 0, 0, 0, "a switch"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

EVS_PLUGIN_DEFINE("test-config-keys", "1.0.0", "reads declared and undeclared keys", items, init,
                  fini);
