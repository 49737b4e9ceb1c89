/*
 * relay-inbound: the Inbound Relay. Requests whose Host names a relay (a custom domain from
 * relay-config.json, or `<destination with dots as dashes>.<base_domain>` as the hosted service
 * names them) are proxied to the relay's destination with method, path, query, headers and body
 * unchanged; responses stream back. Unknown hosts get `relay-not-found`, unknown subdomains of
 * the base domain `subdomain-not-found`.
 *
 * This plugin sees only abi/evserver/evs_plugin.h; the relay-config.json loader is its own code
 * (relay_config.c), also unit-tested on its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "evserver/evs_plugin.h"
#include "relay_config.h"
#include "relay_int.h"

#include <jansson.h>

struct relay_state {
  const evs_host *host;
  evs_plugin *plugin;
  evs__relay_config *config;
  const char *base_domain; /* lower-case, owned by the host's config */
  /* ---- admin glue (h/relayadmin; to reconcile with the relay_inbound.c rewrite) ---- */
  const char *config_path;        /* relay_config, absolute (owned by the host's config) */
  evs__relay_config *override;    /* destination_override as a one-relay config, or NULL */
};

/* ---- admin glue (h/relayadmin): the relay_int.h functions relay_admin.c calls ----------- */

const evs_host *relay_host(const relay_state *st) { return st->host; }
evs_plugin *relay_plugin(const relay_state *st) { return st->plugin; }
const char *relay_config_path(const relay_state *st) { return st->config_path; }
const evs__relay_config *relay_current_config(const relay_state *st) { return st->config; }

/* Writes buf to path through a temporary file in the same directory and a rename, so readers
 * see the old file or the new one, never a mix. */
static int write_atomically(const char *path, const char *buf, size_t len, char *err,
                            size_t errlen) {
  char tmp[4096];
  int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  if (n < 0 || (size_t)n >= sizeof tmp) {
    snprintf(err, errlen, "%s: path too long", path);
    return -ENAMETOOLONG;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "%s: %s", tmp, strerror(e));
    return -e;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(fd, buf + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      int e = errno;
      close(fd);
      unlink(tmp);
      snprintf(err, errlen, "%s: %s", tmp, strerror(e));
      return -e;
    }
    off += (size_t)w;
  }
  if (fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
    int e = errno;
    unlink(tmp);
    snprintf(err, errlen, "%s: %s", path, strerror(e));
    return -e;
  }
  return 0;
}

int relay_config_replace(relay_state *st, const char *buf, size_t len, char *err, size_t errlen) {
  evs__relay_config *c = NULL;
  int rc = evs__relay_config_load_buffer(st->config_path, buf, len, &c, err, errlen);
  if (rc < 0) return rc;
  rc = write_atomically(st->config_path, buf, len, err, errlen);
  if (rc < 0) {
    evs__relay_config_free(c);
    return rc;
  }
  /* Requests in flight hold no pointers into the old configuration: proxy() copies. */
  evs__relay_config_free(st->config);
  st->config = c;
  return 0;
}
/* ---- end of admin glue ------------------------------------------------------------------- */

static const evs_config_item items[] = {
    {"relay_config", EVS_CONFIG_PATH, "relay-config.json", 0, 0, 0,
     "relay-config.json with the relays (relative to evserver.conf)"},
    {"base_domain", EVS_CONFIG_STRING, "relay.localhost", 0, 0, 0,
     "domain under which relays get <destination-with-dashes>.<base_domain> names"},
    /* admin glue (h/relayadmin): `evctl relay dev` needs it before the rewrite lands. */
    {"destination_override", EVS_CONFIG_STRING, NULL, 0, 0, 0,
     "if set (http://host:port), every relay forwards there instead (evctl relay dev)"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

/* `label` is a destination host with '.' written as '-' (the hosted relay naming). */
static const evs__relay *find_by_label(const evs__relay_config *c, const char *label, size_t len) {
  for (size_t i = 0; i < c->n; i++) {
    const char *d = c->relays[i].destination_host;
    if (!d || strlen(d) != len) continue;
    size_t k = 0;
    for (; k < len; k++) {
      char a = d[k] == '.' ? '-' : d[k];
      if ((a | 0x20) != (label[k] | 0x20) && a != label[k]) break;
    }
    if (k == len) return &c->relays[i];
  }
  return NULL;
}

static int route(void *state, evs_request *req) {
  relay_state *st = state;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  if (info->listener && strcmp(info->listener, "admin") == 0) /* admin glue (h/relayadmin) */
    return relay_admin_route(st, req);
  const char *host = info->host;
  const evs__relay *r = evs__relay_config_find(st->config, host);
  size_t hl = strlen(host), bl = strlen(st->base_domain);
  int under_base = hl > bl + 1 && host[hl - bl - 1] == '.' &&
                   strcasecmp(host + hl - bl, st->base_domain) == 0;
  if (!r && under_base) r = find_by_label(st->config, host, hl - bl - 1);
  if (!r) {
    h->counter_add(st->plugin, "relay_not_found", 1);
    if (under_base)
      h->respond_error(req, 404, "subdomain-not-found", "No relay exists for this subdomain");
    else
      h->respond_error(req, 404, "relay-not-found", "No relay is configured for this domain");
    return EVS_HANDLED;
  }
  if (st->override) /* admin glue (h/relayadmin) */
    r = &st->override->relays[0];
  if (!r->destination_host) {
    /* dnsTargets relays: the destination is the request's own host, resolved by the targets. */
    h->respond_error(req, 502, "service-unavailable", "DNS-target relays are not supported yet");
    return EVS_HANDLED;
  }
  evs_upstream up;
  memset(&up, 0, sizeof up);
  up.size = sizeof up;
  up.scheme = r->destination_scheme;
  up.host = r->destination_host;
  up.port = r->destination_port;
  up.verify = r->verify_destination;
  up.ca_file = r->ca_file;
  up.client_cert_file = r->mtls_certificate;
  up.client_key_file = r->mtls_key;
  up.x_forwarded_for = r->x_forwarded_for;
  int rc = h->proxy(req, &up, NULL, NULL, NULL);
  if (rc < 0) h->respond_error(req, 500, "internal-server-error", "Relay could not start proxying");
  h->counter_add(st->plugin, "relayed_requests", 1);
  return EVS_HANDLED;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  relay_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  const char *path = host->config_string(plugin, "relay_config");
  char err[1024];
  int rc = evs__relay_config_load_file(path, &st->config, err, sizeof err);
  if (rc < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "%s", err);
    free(st);
    return rc;
  }
  st->base_domain = host->config_string(plugin, "base_domain");
  st->config_path = path; /* admin glue (h/relayadmin) */
  const char *ovr = host->config_string(plugin, "destination_override");
  if (ovr && *ovr) {
    /* Validated by the relay-config.json loader, as a relay's destinationDomain would be. */
    json_t *o = json_pack("{s:{s:s}}", "override.invalid", "destinationDomain", ovr);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    rc = text ? evs__relay_config_load_buffer("destination_override", text, strlen(text),
                                              &st->override, err, sizeof err)
              : -ENOMEM;
    free(text);
    if (rc < 0) {
      host->log(plugin, NULL, EVS_LOG_ERROR, "%s", err);
      evs__relay_config_free(st->config);
      free(st);
      return rc;
    }
  }
  rc = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (rc < 0) {
    evs__relay_config_free(st->override);
    evs__relay_config_free(st->config);
    free(st);
    return rc;
  }
  host->log(plugin, NULL, EVS_LOG_INFO, "%zu relay(s) from %s", st->config->n, path);
  *ret_state = st;
  return 0;
}

static void fini(void *state) {
  relay_state *st = state;
  evs__relay_config_free(st->override);
  evs__relay_config_free(st->config);
  free(st);
}

EVS_PLUGIN_DEFINE("relay-inbound", "0.1.0", "Inbound Relay: routes requests by Host to their destination",
                  items, init, fini);
