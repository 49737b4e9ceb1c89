/*
 * relay-inbound: the Inbound Relay. Requests whose Host names a relay (a custom domain from
 * relay-config.json, or `<destination with dots as dashes>.<base_domain>` as the hosted service
 * names them) are proxied to the relay's destination. When a fieldsToEncrypt entry matches the
 * request's route and method, relay_encrypt.c reads the body, encrypts the selected fields
 * through the enclave and only then proxies the rewritten body; otherwise method, path, query,
 * headers and body pass unchanged. Unknown hosts get `relay-not-found`, unknown subdomains of
 * the base domain `subdomain-not-found`; Evervault-encrypted data in the path or a header gets
 * `encrypted-data-in-field`.
 *
 * This file also owns the configuration: relay-config.json is compiled once (selectors), watched
 * for changes (every worker re-reads it within a second, so `evctl relay push` and `evctl relay
 * dev` apply without a restart) and replaced as a whole; requests keep the configuration they
 * started with. The LOG hook writes the transaction log and emits `relay.error` events for the
 * alerts plugin.
 *
 * Clusters (`config_source = store`): the store, shared by every node through PostgreSQL, holds
 * the configuration in force (keys "config", the document, and "config-gen", a token rewritten
 * after every change). `evctl relay push` on any node writes both; every worker of every node
 * polls config-gen (store_poll_interval) and, when it changed, validates the document, writes it
 * to its relay-config.json (the local copy a node starts from when the store is unreachable) and
 * applies it. A node whose store holds no configuration yet seeds it from its file.
 *
 * This plugin sees only abi/evserver/evs_plugin.h (ABI 1.1).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libxml/parser.h>

#include "evserver/evs_plugin.h"
#include "relay_event.h"
#include "relay_path.h"
#include "relay_priv.h"
#include "request_guard.h"

static const evs_config_item items[] = {
    {"relay_config", EVS_CONFIG_PATH, "relay-config.json", 0, 0, 0,
     "relay-config.json with the relays (relative to evserver.conf)"},
    {"base_domain", EVS_CONFIG_STRING, "relay.localhost", 0, 0, 0,
     "domain under which relays get <destination-with-dashes>.<base_domain> names"},
    {"app_id", EVS_CONFIG_STRING, NULL, 0, 0, 0,
     "app whose keys encrypt fields for relays without an appId in relay-config.json"},
    {"destination_override", EVS_CONFIG_STRING, NULL, 0, 0, 0,
     "http://host:port: send every relay's traffic there instead (evctl relay dev)"},
    {"spool_dir", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "directory for bodies over 1 MiB while their fields are encrypted (default: state dir)"},
    {"max_body", EVS_CONFIG_SIZE, "25m", 1024, 1LL << 30, 0,
     "largest body the relay encrypts or decrypts (payload-too-large above)"},
    {"team_uuid", EVS_CONFIG_STRING, "local", 0, 0, 0, "teamUuid carried by alerts"},
    {"activity_url", EVS_CONFIG_STRING, "evctl://activity", 0, 0, 0,
     "base of the activityLink in alerts; the request id is appended"},
    {"request_structures", EVS_CONFIG_BOOL, "on", 0, 0, 0,
     "record the shapes of requests (field paths, never values) for evctl relay structures"},
    {"transaction_log", EVS_CONFIG_BOOL, "on", 0, 0, 0,
     "record each relayed request (never values) for evctl activity"},
    {"websocket", EVS_CONFIG_BOOL, "on", 0, 0, 0,
     "relay WebSocket upgrades (off: 501 not-implemented)"},
    {"websocket_max_message", EVS_CONFIG_SIZE, "16m", 1024, 1LL << 30, 0,
     "largest WebSocket message, all its frames (close 1009 above)"},
    {"websocket_idle_timeout", EVS_CONFIG_DURATION, "5m", 0, 86400000, 0,
     "close a WebSocket (1001) after this long without a frame either way; 0: never"},
    {"websocket_close_timeout", EVS_CONFIG_DURATION, "5s", 100, 600000, 0,
     "how long the relay waits for close frames before it ends the connections"},
    {"websocket_handshake_timeout", EVS_CONFIG_DURATION, "30s", 100, 600000, 0,
     "how long the destination has to answer the WebSocket handshake (504 after)"},
    {"websocket_max_connections", EVS_CONFIG_INT, "10000", 1, 10000000, 0,
     "open WebSockets per relay and worker process (503 above)"},
    {"config_source", EVS_CONFIG_STRING, "file", 0, 0, 0,
     "file: relay-config.json alone configures this node; store: the store's copy, shared by "
     "every node of a cluster, is authoritative (relay-config.json is its local copy)"},
    {"store_poll_interval", EVS_CONFIG_DURATION, "1s", 200, 60000, 0,
     "with config_source = store: how often each worker checks the store for a configuration "
     "pushed on another node"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

int64_t relay_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- configuration ----------------------------------------------------------------------- */

void relay_cfg_unref(relay_cfg *c) {
  if (!c || --c->refs > 0) return;
  for (size_t i = 0; c->sel && i < c->config->n; i++) {
    for (size_t k = 0; c->sel[i] && k < c->config->relays[i].nroutes; k++) {
      evs__jsonpath_free(c->sel[i][k].paths);
      free(c->sel[i][k].names);
    }
    free(c->sel[i]);
  }
  free(c->sel);
  free(c->dns_next);
  evs__relay_config_free(c->config);
  free(c);
}

static int compile_route(const evs__relay_route *rt, relay_route_sel *sel, char *err,
                         size_t errlen) {
  const char **sels = calloc(rt->nfields, sizeof *sels);
  char **owned = calloc(rt->nfields, sizeof *owned);
  sel->names = calloc(rt->nfields, sizeof *sel->names);
  if (!sels || !owned || !sel->names) {
    free(sels);
    free(owned);
    return -ENOMEM;
  }
  int rc = 0;
  for (size_t i = 0; i < rt->nfields; i++) {
    const char *f = rt->fields[i];
    if (f[0] == '$') {
      sels[i] = f;
    } else {
      sel->names[sel->nnames++] = f;
      if (asprintf(&owned[i], "$.%s", f) < 0) {
        rc = -ENOMEM;
        break;
      }
      sels[i] = owned[i];
    }
  }
  if (rc == 0) rc = evs__jsonpath_compile(sels, rt->nfields, &sel->paths, err, errlen);
  for (size_t i = 0; i < rt->nfields; i++) free(owned[i]);
  free(owned);
  free(sels);
  return rc;
}

static int cfg_load(const char *path, relay_cfg **ret, char *err, size_t errlen) {
  relay_cfg *c = calloc(1, sizeof *c);
  if (!c) return -ENOMEM;
  c->refs = 1;
  int rc = evs__relay_config_load_file(path, &c->config, err, errlen);
  if (rc < 0) {
    free(c);
    return rc;
  }
  c->sel = calloc(c->config->n ? c->config->n : 1, sizeof *c->sel);
  c->dns_next = calloc(c->config->n ? c->config->n : 1, sizeof *c->dns_next);
  if (!c->sel || !c->dns_next) rc = -ENOMEM;
  for (size_t i = 0; rc == 0 && i < c->config->n; i++) {
    const evs__relay *r = &c->config->relays[i];
    c->sel[i] = calloc(r->nroutes ? r->nroutes : 1, sizeof *c->sel[i]);
    if (!c->sel[i]) rc = -ENOMEM;
    for (size_t k = 0; rc == 0 && k < r->nroutes; k++) {
      char e[512];
      rc = compile_route(&r->routes[k], &c->sel[i][k], e, sizeof e);
      if (rc < 0)
        snprintf(err, errlen, "%s: $[\"%s\"].fieldsToEncrypt[%zu].fields: %s", path, r->domain, k,
                 e);
    }
  }
  if (rc < 0) {
    relay_cfg_unref(c);
    return rc;
  }
  *ret = c;
  return 0;
}

static int file_id(const char *path, uint64_t *mt, uint64_t *size, uint64_t *ino) {
  struct stat sb;
  if (stat(path, &sb) < 0) return -errno;
  *mt = (uint64_t)sb.st_mtim.tv_sec * 1000000000u + (uint64_t)sb.st_mtim.tv_nsec;
  *size = (uint64_t)sb.st_size;
  *ino = (uint64_t)sb.st_ino;
  return 0;
}

int relay_sample_due(relay_state *st, const char *domain, const char *method, const char *path) {
  if (!st->record_structures) return 0;
  uint64_t h = 1469598103934665603ull; /* FNV-1a over the three, NUL-separated */
  const char *parts[] = {domain, method, path};
  for (size_t i = 0; i < 3; i++) {
    for (const char *p = parts[i]; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
  }
  int64_t now = relay_now_ms();
  size_t slot = h % (sizeof st->sampled / sizeof st->sampled[0]);
  if (st->sampled[slot].hash == h && now - st->sampled[slot].sampled_ms < 1000) return 0;
  st->sampled[slot].hash = h;
  st->sampled[slot].sampled_ms = now;
  return 1;
}

static void cfg_swap(relay_state *st, relay_cfg *c) {
  relay_cfg *old = st->cfg;
  st->cfg = c;
  relay_cfg_unref(old);
}

/* Re-reads the file when it changed; a broken file keeps the configuration in force. */
static void watch_tick(void *arg) {
  relay_state *st = arg;
  relay_ws_tick(st); /* WebSocket deadlines ride on the same second */
  uint64_t mt = 0, size = 0, ino = 0; /* gcc -O3 cannot see file_id sets them */
  if (file_id(st->config_path, &mt, &size, &ino) < 0) return;
  if (mt == st->watch_mtime_ns && size == st->watch_size && ino == st->watch_ino) return;
  st->watch_mtime_ns = mt;
  st->watch_size = size;
  st->watch_ino = ino;
  char err[1024];
  relay_cfg *c;
  if (cfg_load(st->config_path, &c, err, sizeof err) < 0) {
    st->host->log(st->plugin, NULL, EVS_LOG_ERROR, "relay-config not applied, keeping the previous one: %s", err);
    return;
  }
  cfg_swap(st, c);
  st->host->log(st->plugin, NULL, EVS_LOG_INFO, "%zu relay(s) from %s (file changed)",
                c->config->n, st->config_path);
}

const evs_host *relay_host(const relay_state *st) { return st->host; }
evs_plugin *relay_plugin(const relay_state *st) { return st->plugin; }
const char *relay_config_path(const relay_state *st) { return st->config_path; }
const evs__relay_config *relay_current_config(const relay_state *st) { return st->cfg->config; }

int relay_config_replace(relay_state *st, const char *buf, size_t len, char *err, size_t errlen) {
  evs__relay_config *check;
  int rc = evs__relay_config_load_buffer(st->config_path, buf, len, &check, err, errlen);
  if (rc < 0) return rc;
  evs__relay_config_free(check);
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", st->config_path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = -errno;
    snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(errno));
    return rc;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(fd, buf + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  if (off != len || fsync(fd) < 0) {
    rc = -EIO;
    snprintf(err, errlen, "%s: write failed", tmp);
    close(fd);
    unlink(tmp);
    return rc;
  }
  close(fd);
  relay_cfg *c;
  if ((rc = cfg_load(tmp, &c, err, errlen)) < 0) {
    unlink(tmp);
    return rc;
  }
  if (rename(tmp, st->config_path) < 0) {
    rc = -errno;
    snprintf(err, errlen, "%s: cannot replace: %s", st->config_path, strerror(errno));
    unlink(tmp);
    relay_cfg_unref(c);
    return rc;
  }
  cfg_swap(st, c);
  file_id(st->config_path, &st->watch_mtime_ns, &st->watch_size, &st->watch_ino);
  return 0;
}

/* ---- the store's copy (config_source = store) ------------------------------------------- */

typedef struct publish_ctx {
  relay_state *st;
  relay_publish_cb cb;
  void *arg;
  char gen[RELAY_GEN_MAX];
} publish_ctx;

static void new_gen(char *out, size_t outlen) {
  unsigned char b[8];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
    for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)(rand() & 0xff);
  snprintf(out, outlen, "%" PRId64 "-%02x%02x%02x%02x%02x%02x%02x%02x", relay_now_ms(), b[0], b[1],
           b[2], b[3], b[4], b[5], b[6], b[7]);
}

static void on_gen_written(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v, (void)len;
  publish_ctx *x = arg;
  if (status == 0) memcpy(x->st->store_gen, x->gen, sizeof x->gen);
  if (x->cb) x->cb(x->arg, status);
  free(x);
}

static void on_doc_written(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v, (void)len;
  publish_ctx *x = arg;
  const evs_host *h = x->st->host;
  if (status < 0 || h->store_put(x->st->plugin, "config-gen", (const uint8_t *)x->gen,
                                 strlen(x->gen), 0, on_gen_written, x) < 0)
    on_gen_written(x, status < 0 ? status : -EIO, NULL, 0);
}

int relay_config_shared(const relay_state *st) { return st->shared; }

int relay_config_publish(relay_state *st, const char *buf, size_t len, relay_publish_cb cb,
                         void *arg) {
  publish_ctx *x = calloc(1, sizeof *x);
  if (!x) return -ENOMEM;
  x->st = st;
  x->cb = cb;
  x->arg = arg;
  new_gen(x->gen, sizeof x->gen);
  int rc = st->host->store_put(st->plugin, "config", (const uint8_t *)buf, len, 0, on_doc_written,
                               x);
  if (rc < 0) free(x);
  return rc;
}

static void on_seeded(void *arg, int status) {
  relay_state *st = arg;
  if (status < 0)
    st->host->log(st->plugin, NULL, EVS_LOG_WARN, "cannot seed the store's relay configuration "
                  "(%s): will retry", strerror(-status));
  st->polling = 0;
}

/* The store has no configuration yet: offer this node's file (every worker may; identical). */
static void seed_store(relay_state *st) {
  FILE *f = fopen(st->config_path, "rb");
  char *buf = NULL;
  size_t len = 0;
  if (f) {
    buf = malloc(1u << 20);
    if (buf) len = fread(buf, 1, 1u << 20, f);
    fclose(f);
  }
  if (!buf || len == 0 || relay_config_publish(st, buf, len, on_seeded, st) < 0) st->polling = 0;
  free(buf);
}

static void on_store_doc(void *arg, int status, const uint8_t *v, size_t len) {
  relay_state *st = arg;
  st->polling = 0;
  if (status < 0) {
    if (!st->store_down)
      st->host->log(st->plugin, NULL, EVS_LOG_WARN, "cannot read the store's relay configuration "
                    "(%s): keeping the one in force", strerror(-status));
    st->store_down = 1;
    return;
  }
  char err[1024];
  if (relay_config_replace(st, (const char *)v, len, err, sizeof err) < 0) {
    /* Remember the generation anyway: the same broken document would fail again every tick. */
    st->host->log(st->plugin, NULL, EVS_LOG_ERROR,
                  "the store's relay configuration (gen %s) not applied, keeping the previous "
                  "one: %s", st->polled_gen, err);
  } else {
    st->host->log(st->plugin, NULL, EVS_LOG_INFO, "%zu relay(s) from the store (gen %s)",
                  st->cfg->config->n, st->polled_gen);
  }
  memcpy(st->store_gen, st->polled_gen, sizeof st->store_gen);
}

static void on_store_gen(void *arg, int status, const uint8_t *v, size_t len) {
  relay_state *st = arg;
  if (status == -ENOENT) {
    seed_store(st);
    return;
  }
  if (status < 0) {
    if (!st->store_down)
      st->host->log(st->plugin, NULL, EVS_LOG_WARN, "cannot poll the store for relay "
                    "configuration changes (%s): keeping the one in force", strerror(-status));
    st->store_down = 1;
    st->polling = 0;
    return;
  }
  if (st->store_down)
    st->host->log(st->plugin, NULL, EVS_LOG_INFO, "the store answers again; relay configuration "
                  "changes are followed");
  st->store_down = 0;
  if (len >= sizeof st->polled_gen ||
      (len == strlen(st->store_gen) && memcmp(v, st->store_gen, len) == 0)) {
    st->polling = 0;
    return;
  }
  memcpy(st->polled_gen, v, len);
  st->polled_gen[len] = 0;
  if (st->host->store_get(st->plugin, "config", on_store_doc, st) < 0) st->polling = 0;
}

static void poll_tick(void *arg) {
  relay_state *st = arg;
  if (st->polling) return;
  st->polling = 1;
  if (st->host->store_get(st->plugin, "config-gen", on_store_gen, st) < 0) st->polling = 0;
}

/* ---- routing ----------------------------------------------------------------------------- */

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

/* A route matches when any reading of the request path does (relay_path.h, README "Route
 * matching"). */
static int route_matches(const evs__relay_route *rt, const evs__path_views *pv) {
  return evs__path_views_match(pv, rt->pattern);
}

void relay_match_clear(relay_match *m) {
  if (m->owns_paths) evs__jsonpath_free(m->paths);
  free(m->names);
  memset(m, 0, sizeof *m);
}

/* Collects the selections of every fieldsToEncrypt entry matching the request. 1 if any. */
static int match_routes(relay_cfg *cfg, size_t ri, const char *method, const evs__path_views *path,
                        relay_match *m) {
  const evs__relay *r = &cfg->config->relays[ri];
  size_t nm = 0, first = 0, nsel = 0, nnames = 0;
  for (size_t k = 0; k < r->nroutes; k++) {
    const evs__relay_route *rt = &r->routes[k];
    if ((strcmp(rt->method, "*") == 0 || strcasecmp(rt->method, method) == 0) &&
        route_matches(rt, path)) {
      if (nm++ == 0) first = k;
      nsel += rt->nfields;
      nnames += cfg->sel[ri][k].nnames;
    }
  }
  if (nm == 0) return 0;
  memset(m, 0, sizeof *m);
  m->names = calloc(nnames ? nnames : 1, sizeof *m->names);
  if (!m->names) return -ENOMEM;
  for (size_t k = 0; k < r->nroutes; k++) {
    const evs__relay_route *rt = &r->routes[k];
    if ((strcmp(rt->method, "*") == 0 || strcasecmp(rt->method, method) == 0) &&
        route_matches(rt, path))
      for (size_t j = 0; j < cfg->sel[ri][k].nnames; j++) m->names[m->nnames++] = cfg->sel[ri][k].names[j];
  }
  m->fields = (const char *const *)r->routes[first].fields;
  m->nfields = r->routes[first].nfields;
  if (nm == 1) {
    m->paths = cfg->sel[ri][first].paths;
    return 1;
  }
  /* Several entries match: one selection with all their fields. */
  const char **sels = calloc(nsel, sizeof *sels);
  char **owned = calloc(nsel, sizeof *owned);
  size_t n = 0;
  int rc = sels && owned ? 0 : -ENOMEM;
  for (size_t k = 0; rc == 0 && k < r->nroutes; k++) {
    const evs__relay_route *rt = &r->routes[k];
    if (!((strcmp(rt->method, "*") == 0 || strcasecmp(rt->method, method) == 0) &&
          route_matches(rt, path)))
      continue;
    for (size_t j = 0; j < rt->nfields; j++) {
      if (rt->fields[j][0] == '$') {
        sels[n++] = rt->fields[j];
      } else if (asprintf(&owned[n], "$.%s", rt->fields[j]) >= 0) {
        sels[n] = owned[n];
        n++;
      } else {
        rc = -ENOMEM;
      }
    }
  }
  char err[256];
  if (rc == 0 && evs__jsonpath_compile(sels, n, &m->paths, err, sizeof err) < 0) rc = -EINVAL;
  else if (rc == 0) m->owns_paths = 1;
  for (size_t i = 0; owned && i < n; i++) free(owned[i]);
  free(owned);
  free(sels);
  if (rc < 0) relay_match_clear(m);
  return rc < 0 ? rc : 1;
}

/* dnsTargets relays (README "DNS targets"): the relay's own domain is what clients asked for,
 * and the targets are the addresses it resolves to, as DNS would give them. So the connection
 * goes to a target, and TLS (SNI and certificate verification) and the Host header name the
 * relay domain. Targets take turns, one per request, counted per relay and configuration in
 * this worker: round robin, as clients spread over several A records. */
static void dns_target(relay_txn *t, evs_upstream *up) {
  const evs__relay *r = t->relay;
  size_t ri = (size_t)(r - t->cfg->config->relays);
  const evs__relay_dns_target *d = &r->dns_targets[t->cfg->dns_next[ri]++ % r->ndns_targets];
  up->scheme = "https";
  up->host = d->address;
  up->port = d->port;
  up->sni = r->domain;
  up->host_header = r->domain;
}

void relay_upstream(relay_txn *t, evs_upstream *up) {
  relay_state *st = t->st;
  const evs__relay *r = t->relay;
  memset(up, 0, sizeof *up);
  up->size = sizeof *up;
  up->scheme = r->destination_scheme;
  up->host = r->destination_host;
  up->port = r->destination_port;
  if (!r->destination_host && r->ndns_targets) dns_target(t, up);
  up->verify = r->verify_destination;
  up->ca_file = r->ca_file;
  up->client_cert_file = r->mtls_certificate;
  up->client_key_file = r->mtls_key;
  up->client_key_passphrase_file = r->mtls_passphrase_file; /* ABI 1.5 */
  up->x_forwarded_for = r->x_forwarded_for;
  up->response_head = relay_response_head; /* relay_decrypt.c: compressed responses */
  if (st->override_host) {
    up->scheme = st->override_scheme;
    up->host = st->override_host;
    up->port = st->override_port;
    up->sni = NULL;
    up->host_header = NULL;
    up->verify = 0;
  }
}

const char *relay_app_id(relay_state *st, const evs__relay *r) {
  return r->app_id ? r->app_id : st->app_id;
}

void relay_txn_release(relay_txn *t) {
  if (t->req || (t->enc && !relay_encrypt_idle(t->enc)) || t->dec_pending) return;
  relay_encrypt_free(t->enc);
  relay_decrypt_free(t->dec);
  relay_match_clear(&t->match);
  relay_cfg_unref(t->cfg);
  free(t);
}

static void txn_end(void *data) {
  relay_txn *t = data;
  t->req = NULL;
  if (t->ws) relay_ws_request_gone(t->ws); /* the client left before the 101 */
  relay_txn_release(t); /* or later, when the last enclave call is back */
}

/* The catch route of role "relay" (every host, every path): relay-config.json is replaced at
 * run time, so the relays' names stay in the compiled config rather than in the host's route
 * table, which is fixed at init. A name that is no relay's is declined: the host then answers
 * `relay-not-found` (after any ROUTE hook of another plugin had its chance); a name under
 * base_domain gets the documented `subdomain-not-found` here. */
static int route(void *state, evs_request *req) {
  relay_state *st = state;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  const char *host = info->host;
  const evs__relay_config *c = st->cfg->config;
  const evs__relay *r = evs__relay_config_find(c, host);
  size_t hl = strlen(host), bl = strlen(st->base_domain);
  int under_base = hl > bl + 1 && host[hl - bl - 1] == '.' &&
                   strcasecmp(host + hl - bl, st->base_domain) == 0;
  if (!r && under_base) r = find_by_label(c, host, hl - bl - 1);
  if (!r) {
    h->counter_add(st->plugin, "relay_not_found", 1);
    if (!under_base) return EVS_DECLINED;
    h->respond_error(req, 404, "subdomain-not-found", "No relay exists for this subdomain");
    return EVS_HANDLED;
  }
  relay_txn *t = calloc(1, sizeof *t);
  if (!t) {
    h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return EVS_HANDLED;
  }
  t->st = st;
  t->cfg = st->cfg;
  t->cfg->refs++;
  t->relay = r;
  t->req = req;
  t->started_ms = relay_now_ms();
  t->started_ns = mono_ns();
  h->request_set_data(req, st->plugin, t, txn_end);
  h->counter_add(st->plugin, "relayed_requests", 1);
  if (st->transaction_log && h->store_append_ready(st->plugin) == -ENOTCONN) {
    /* No response goes out whose record could not be kept (docs/state.md): refused before
     * anything reaches the destination, so the client may retry safely. */
    t->unbound = 1;
    h->counter_add(st->plugin, "refused_store_unavailable", 1);
    h->respond_error(req, 503, "service-unavailable",
                     "The transaction log cannot be written right now; retry later.");
    return EVS_HANDLED;
  }

  if (evs__relay_head_carries_ev_data(h, req)) {
    h->counter_add(st->plugin, "encrypted_data_in_field", 1);
    h->respond_error(req, 400, "encrypted-data-in-field",
                     "Evervault-encrypted data in the request path, query or a header");
    return EVS_HANDLED;
  }
  /* Credentials for a proxy stop at the proxy (the mTLS relays' api-key: relay_encrypt.c). */
  evs_header pa;
  if (h->request_header(req, "proxy-authorization", &pa) == 0)
    h->request_remove_header(req, "proxy-authorization");
  if (r->mtls_certificate) {
    /* mTLS relays need an API key with the relay:inbound-mtls permission (relay_encrypt.c). */
    relay_encrypt_check_key_then(t);
    return EVS_HANDLED;
  }
  relay_dispatch(t);
  return EVS_HANDLED;
}

static int admin_route(void *state, evs_request *req) { return relay_admin_route(state, req); }

/* Encrypts when a fieldsToEncrypt entry matches, else proxies unchanged. */
void relay_dispatch(relay_txn *t) {
  relay_state *st = t->st;
  const evs_host *h = st->host;
  evs_request *req = t->req;
  const evs_request_info *info = h->request_info(req);
  size_t ri = (size_t)(t->relay - t->cfg->config->relays);
  /* Matched in every reading a destination might give the path; one none can describe is
   * refused when the relay has fields to encrypt (relay_path.h). */
  evs__path_views pv;
  int pr = t->relay->nroutes == 0 || strcmp(info->path, "*") == 0
               ? (memset(&pv, 0, sizeof pv), 0)
               : evs__path_views_init(&pv, info->path, strlen(info->path),
                                      t->relay->case_sensitive_routes);
  if (pr == EVS__PATH_E_INVALID || pr == EVS__PATH_E_AMBIGUOUS || pr == EVS__PATH_E_NOSPACE) {
    h->respond_error(req, 400, "bad-request", evs__path_strerror(pr));
    return;
  }
  int m = pr < 0 ? pr : match_routes(t->cfg, ri, info->method, &pv, &t->match);
  evs__path_views_clear(&pv);
  if (m < 0) {
    h->respond_error(req, 500, "internal-server-error", "Relay could not compile its selection");
    return;
  }
  t->has_match = m;
  /* A WebSocket: its client messages get the route's selections (relay_ws.c). */
  if (relay_ws_is_upgrade(h, req)) {
    relay_ws_start(t);
    return;
  }
  evs_header ct;
  int has_ct = h->request_header(req, "content-type", &ct) == 0;
  if (m && !info->has_content_length && !info->chunked &&
      (strcmp(info->method, "POST") == 0 || strcmp(info->method, "PUT") == 0 ||
       strcmp(info->method, "PATCH") == 0)) {
    h->respond_error(req, 411, "content-length-required",
                     "A request with fields to encrypt needs a Content-Length header");
    return;
  }
  /* Every body is read whole before anything is sent: checked for encrypted data, its
   * selected fields encrypted, its structure sampled (relay_encrypt.c). */
  if (info->chunked || (info->has_content_length && (m || info->content_length > 0))) {
    if (evs__relay_body_encoded(h, req)) {
      h->respond_error(req, 415, "bad-request",
                       "The relay does not accept compressed request bodies (Content-Encoding): "
                       "it could not select fields in them or check them for encrypted data");
      return;
    }
    relay_encrypt_start(t, has_ct ? ct.value : "", has_ct ? ct.value_len : 0);
    return;
  }
  evs_upstream up;
  relay_upstream(t, &up);
  int rc = h->proxy(req, &up, NULL, relay_response_filter(t), t);
  if (rc < 0) h->respond_error(req, 500, "internal-server-error", "Relay could not start proxying");
}

/* ---- transaction log and alerts ---------------------------------------------------------- */


/* A transaction record under construction: JSON text in a fixed buffer (records are small;
 * one that does not fit is not written). */
typedef struct txlog_buf {
  char s[8192];
  size_t p;
  int overflow;
} txlog_buf;

static void txlog_raw(txlog_buf *b, const char *s) {
  size_t n = strlen(s);
  if (b->overflow || n >= sizeof b->s - b->p) {
    b->overflow = 1;
    return;
  }
  memcpy(b->s + b->p, s, n + 1);
  b->p += n;
}

static void txlog_fmt(txlog_buf *b, const char *fmt, ...) {
  if (b->overflow) return;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(b->s + b->p, sizeof b->s - b->p, fmt, ap);
  va_end(ap);
  if (w < 0 || (size_t)w >= sizeof b->s - b->p)
    b->overflow = 1;
  else
    b->p += (size_t)w;
}

/* A JSON string: '"' and '\\' escaped, control bytes as \u00XX, other bytes as they are (the
 * store refuses a record that is not UTF-8). */
static void txlog_str(txlog_buf *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  if (b->overflow) return;
  size_t cap = sizeof b->s - 1, p = b->p;
  if (p >= cap) goto full;
  b->s[p++] = '"';
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (p + 6 >= cap) goto full;
    if (c == '"' || c == '\\') {
      b->s[p++] = '\\';
      b->s[p++] = (char)c;
    } else if (c < 0x20) {
      memcpy(b->s + p, "\\u00", 4);
      b->s[p + 4] = hex[c >> 4];
      b->s[p + 5] = hex[c & 15];
      p += 6;
    } else {
      b->s[p++] = (char)c;
    }
  }
  if (p + 1 >= cap) goto full;
  b->s[p++] = '"';
  b->s[p] = 0;
  b->p = p;
  return;
full:
  b->overflow = 1;
}


/* The transaction record of a request, as it stands (status, duration, counts). */
static int txn_record(relay_state *st, evs_request *req, relay_txn *t, txlog_buf *b) {
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  const char *code = NULL;
  int status = h->response_status(req, &code);
  char started[40];
  evs__relay_iso8601(t->started_ms, started, sizeof started);
  double dur = (double)(mono_ns() - t->started_ns) / 1e6;
  /* Written directly rather than through jansson: this runs for every request. */
  b->p = 0;
  b->overflow = 0;
  txlog_raw(b, "{\"requestId\":");
  txlog_str(b, info->request_id);
  txlog_raw(b, ",\"relay\":");
  txlog_str(b, t->relay->domain);
  txlog_raw(b, ",\"method\":");
  txlog_str(b, info->method);
  txlog_raw(b, ",\"path\":");
  txlog_str(b, info->path);
  txlog_fmt(b, ",\"status\":%d,\"startedAt\":\"%s\",\"durationMs\":%.3f,\"contentType\":",
            status, started, dur);
  if (t->content_type_kind)
    txlog_str(b, t->content_type_kind);
  else
    txlog_raw(b, "null");
  txlog_raw(b, ",\"encryptedFields\":[");
  for (size_t i = 0; t->has_match && i < t->match.nfields; i++) {
    if (i) txlog_raw(b, ",");
    txlog_str(b, t->match.fields[i]);
  }
  txlog_fmt(b, "],\"encryptedCount\":%zu,\"decryptedFields\":%zu", (size_t)t->encrypted,
            (size_t)t->decrypted);
  if (status == 101) /* a WebSocket: its message counts, never contents */
    txlog_fmt(b, ",\"websocket\":{\"messagesIn\":%llu,\"messagesOut\":%llu,\"closeCode\":%d}",
              (unsigned long long)t->ws_in, (unsigned long long)t->ws_out, t->ws_close);
  if (code) {
    txlog_raw(b, ",\"errorCode\":");
    txlog_str(b, code);
  }
  txlog_raw(b, "}");
  return b->overflow ? -E2BIG : 0;
}

/* END (ABI 1.9): the response is complete and its end not sent: its record is bound to it, so
 * the client gets the end only once the record is committed (docs/state.md). */
static int end_hook(void *state, evs_request *req) {
  relay_state *st = state;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  if (!st->transaction_log || (info->listener && strcmp(info->listener, "admin") == 0))
    return EVS_DECLINED;
  relay_txn *t = h->request_get_data(req, st->plugin);
  if (!t || t->recorded || t->unbound) return EVS_DECLINED;
  txlog_buf b;
  if (txn_record(st, req, t, &b) < 0) return EVS_DECLINED;
  int r = h->store_append_request(st->plugin, req, "transactions", b.s);
  t->recorded = r == 0 || r == -EALREADY || r == -ECONNRESET; /* else LOG tries again */
  return EVS_DECLINED;
}

static int log_hook(void *state, evs_request *req) {
  relay_state *st = state;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  /* Admin requests carry relay_admin.c's data, not a transaction. */
  if (info->listener && strcmp(info->listener, "admin") == 0) return EVS_DECLINED;
  relay_txn *t = h->request_get_data(req, st->plugin);
  if (!t) return EVS_DECLINED;
  const char *code = NULL;
  int status = h->response_status(req, &code);
  /* A response that never ended (cut short, a WebSocket, the client gone) is recorded here,
   * written behind: no client holds a complete response for it. */
  if (st->transaction_log && !t->recorded) {
    txlog_buf b;
    if (txn_record(st, req, t, &b) == 0) h->store_append(st->plugin, "transactions", b.s);
    t->recorded = 1;
  }
  if (code) { /* an error answer, or (status < 400) a response cut short after its head */
    char link[512], msg[600], uuid[40];
    snprintf(link, sizeof link, "%s?requestId=%s", st->activity_base, info->request_id);
    snprintf(msg, sizeof msg, "Inbound Relay %s: %s %s %s %s", t->relay->domain, info->method,
             info->path, status >= 400 ? "failed with" : "was cut short mid-response:", code);
    evs__relay_uuid("relay", t->relay->domain, uuid, sizeof uuid);
    evs__relay_error e = {st->team_uuid, link, uuid, t->relay->domain, msg, code, status,
                          relay_now_ms()};
    evs__relay_error_emit(h, st->plugin, &e);
  }
  return EVS_DECLINED;
}

/* ---- init / fini ------------------------------------------------------------------------- */

static int parse_override(relay_state *st, const char *url) {
  const char *p = url;
  if (strncmp(p, "http://", 7) == 0) {
    st->override_scheme = strdup("http");
    p += 7;
  } else if (strncmp(p, "https://", 8) == 0) {
    st->override_scheme = strdup("https");
    p += 8;
  } else {
    return -EINVAL;
  }
  const char *colon = strrchr(p, ':');
  size_t hl = colon ? (size_t)(colon - p) : strlen(p);
  st->override_host = strndup(p, hl);
  if (colon) {
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) return -EINVAL;
    st->override_port = (uint16_t)port;
  }
  return st->override_scheme && st->override_host && hl ? 0 : -EINVAL;
}

static void state_free(relay_state *st) {
  if (!st) return;
  relay_ws_stop_all(st);
  if (st->watch) st->host->timer_free(st->watch);
  if (st->poll) st->host->timer_free(st->poll);
  relay_cfg_unref(st->cfg);
  free(st->config_path);
  free(st->override_scheme);
  free(st->override_host);
  free(st);
}

/* A reload or stop began: open WebSockets get close 1001 (ABI 1.8 event). */
static void on_draining(void *state, const evs_event *ev) {
  (void)ev;
  relay_ws_drain(state);
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  if (host->size < offsetof(evs_host, response_status) + sizeof host->response_status) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "this host lacks ABI 1.1 services");
    return -ENOTSUP;
  }
  xmlInitParser(); /* once per process, before any sample is parsed (relay_encrypt.c) */
  relay_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  const char *path = host->config_string(plugin, "relay_config");
  st->config_path = realpath(path, NULL);
  if (!st->config_path) st->config_path = strdup(path);
  char err[1024];
  int rc = st->config_path ? cfg_load(st->config_path, &st->cfg, err, sizeof err) : -ENOMEM;
  if (rc < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "%s", err);
    state_free(st);
    return rc;
  }
  file_id(st->config_path, &st->watch_mtime_ns, &st->watch_size, &st->watch_ino);
  st->base_domain = host->config_string(plugin, "base_domain");
  st->app_id = host->config_string(plugin, "app_id");
  st->spool_dir = host->config_string(plugin, "spool_dir");
  if (!st->spool_dir) st->spool_dir = host->state_dir(plugin);
  st->team_uuid = host->config_string(plugin, "team_uuid");
  st->activity_base = host->config_string(plugin, "activity_url");
  st->max_body = (uint64_t)host->config_int(plugin, "max_body");
  st->record_structures = host->config_bool(plugin, "request_structures");
  st->transaction_log = host->config_bool(plugin, "transaction_log");
  st->ws_enabled = host->config_bool(plugin, "websocket");
  st->ws_max_message = (uint64_t)host->config_int(plugin, "websocket_max_message");
  st->ws_idle_timeout_ms = (uint64_t)host->config_int(plugin, "websocket_idle_timeout");
  st->ws_close_timeout_ms = (uint64_t)host->config_int(plugin, "websocket_close_timeout");
  st->ws_handshake_timeout_ms = (uint64_t)host->config_int(plugin, "websocket_handshake_timeout");
  st->ws_max_connections = host->config_int(plugin, "websocket_max_connections");
  const char *src = host->config_string(plugin, "config_source");
  if (src && strcmp(src, "store") == 0) {
    st->shared = 1;
  } else if (src && strcmp(src, "file") != 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "config_source: expected file or store");
    state_free(st);
    return -EINVAL;
  }
  const char *ov = host->config_string(plugin, "destination_override");
  if (ov && parse_override(st, ov) < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR,
              "destination_override: expected http://host:port or https://host:port");
    state_free(st);
    return -EINVAL;
  }
  /* Relayed traffic on the listeners serving "relay"; evctl's endpoints on the admin socket. */
  static const evs_route routes[] = {
      {sizeof(evs_route), "relay", NULL, NULL, "/", route},
      {sizeof(evs_route), "admin", NULL, NULL, "/relays", admin_route},
      {sizeof(evs_route), "admin", NULL, NULL, "/activity", admin_route},
  };
  rc = 0;
  for (size_t i = 0; rc == 0 && i < sizeof routes / sizeof routes[0]; i++)
    rc = host->add_route(plugin, &routes[i]);
  if (rc == 0 && host->abi_minor >= 8)
    rc = host->subscribe_events(plugin, "worker.draining", on_draining);
  if (rc == 0) rc = host->add_hook(plugin, EVS_PHASE_END, end_hook);
  if (rc < 0 || (rc = host->add_hook(plugin, EVS_PHASE_LOG, log_hook)) < 0) {
    state_free(st);
    return rc;
  }
  st->watch = host->timer_start(plugin, 1000, 1000, watch_tick, st);
  if (st->shared) {
    uint64_t every = (uint64_t)host->config_int(plugin, "store_poll_interval");
    /* The first poll at once: a node joining a cluster serves the cluster's relays, not its
     * file's, as soon as the store answers. */
    st->poll = host->timer_start(plugin, 1, every, poll_tick, st);
  }
  host->log(plugin, NULL, EVS_LOG_INFO, "%zu relay(s) from %s", st->cfg->config->n,
            st->config_path);
  *ret_state = st;
  return 0;
}

static void fini(void *state) { state_free(state); }

EVS_PLUGIN_DEFINE("relay-inbound", "0.2.0",
                  "Inbound Relay: encrypts configured fields, decrypts responses", items, init,
                  fini);
