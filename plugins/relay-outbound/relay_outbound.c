/*
 * relay_outbound.c: the Outbound Relay plugin: the per-app destinations configuration (kept in
 * the store, cached per worker, reloaded on every worker of every node when it changes),
 * GET /v2/relay-outbound for the SDKs (role api) and the admin endpoints behind
 * `evctl outbound` (role admin). The CONNECT proxy (role outbound) is outbound_proxy.c; it looks
 * destinations up with ob_lookup() below. README.md here is the user's guide.
 *
 * Store (namespace "relay-outbound"):
 *   app/<appId>  one JSON document per app, replaced whole (outbound_config.h)
 *   gen          a token rewritten after every change; workers poll it (store_poll_interval)
 *                to notice changes made on other nodes, then reload every app/ document
 *
 * Admin endpoints (role admin, the admin socket):
 *   GET    /outbound                          every app's summary
 *   GET    /outbound/<app>                    the app's stored document (version 0 if none)
 *   PUT    /outbound/<app>[?dryRun=1]         replace the document (If-Match: etag optional);
 *                                             dryRun validates and shows, stores nothing
 *   DELETE /outbound/<app>                    remove the app's document
 *   POST   /outbound/<app>/destinations       add one destination {id?, destinationDomain, ...}
 *   DELETE /outbound/<app>/destinations/<id>  remove one
 * A change is answered once this worker and every other worker of the node have reloaded
 * (node message 'R'); other nodes follow within store_poll_interval.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <jansson.h>

#include "evserver/evs_plugin.h"
#include "outbound_config.h"
#include "outbound_int.h"

#define OB_PERMISSION "relay:outbound-proxy" /* "Outbound Relay Proxy" in the docs' table */
#define OB_NODE_TIMEOUT_MS 5000
#define OB_KEY_MAX 512

/* Someone waiting for a reload of the table: a node message to answer, an admin request. */
typedef struct ob_ticket {
  struct ob_ticket *next;
  void (*done)(void *arg, int status); /* or, for a node message, node_reply(m, status) */
  void *arg;
  evs_node_msg *m;
} ob_ticket;

/* A GET /v2/relay-outbound in flight; owned by the pending callback and the request. */
typedef struct ob_v2 {
  ob_state *st;
  evs_request *req;
  int refs;
  int second; /* the key failed OB_PERMISSION: asking whether it is a key at all */
  char app_id[EVS__OB_APP_ID_MAX + 1];
  struct ob_v2 *next_waiting;
} ob_v2;

static void v2_answer(ob_v2 *v);

struct ob_state {
  const evs_host *h;
  evs_plugin *p;
  evs__ob_table *table; /* NULL until the first load */
  char gen[80];         /* the store's gen when table was loaded */
  int loading, again;
  evs__ob_table *building;
  char building_gen[80];
  int build_error;
  ob_ticket *current, *next; /* served by the load in flight / by the one after it */
  ob_v2 *waiting;            /* /v2 requests before the first load */
  evs_timer *poll;
  int polling;
  char poll_header[32]; /* x-poll-interval, seconds */
  int stopping;
  ob_proxy *proxy; /* outbound_proxy.c */
};

ob_proxy *ob_state_proxy(void *state) { return ((ob_state *)state)->proxy; }

static void v2_unref(ob_v2 *v) {
  if (--v->refs == 0) free(v);
}

/* ---- loading the table from the store --------------------------------------------------- */

static void load_start(ob_state *st);

static void load_finish(ob_state *st, int status) {
  if (status == 0) {
    evs__ob_table_seal(st->building);
    evs__ob_table_free(st->table);
    st->table = st->building;
    memcpy(st->gen, st->building_gen, sizeof st->gen);
    st->h->log(st->p, NULL, EVS_LOG_INFO, "outbound configuration loaded: %zu app(s), generation %s",
               evs__ob_table_count(st->table), st->gen[0] ? st->gen : "none");
  } else {
    evs__ob_table_free(st->building);
    st->h->log(st->p, NULL, EVS_LOG_ERROR, "cannot load the outbound configuration from the store "
               "(%s); keeping the previous one", strerror(-status));
  }
  st->building = NULL;
  st->loading = 0;
  ob_ticket *t = st->current;
  st->current = NULL;
  if (st->again) {
    st->again = 0;
    st->current = st->next;
    st->next = NULL;
    load_start(st);
  }
  while (t) {
    ob_ticket *n = t->next;
    if (t->m) st->h->node_reply(t->m, status);
    else t->done(t->arg, status);
    free(t);
    t = n;
  }
  /* Requests waiting for the first load: answered now, from the table or (it could not be
   * loaded, e.g. no store) with 503, rather than left waiting for a load that may never come. */
  if (!st->loading) {
    ob_v2 *w = st->waiting;
    st->waiting = NULL;
    while (w) {
      ob_v2 *n = w->next_waiting;
      v2_answer(w);
      w = n;
    }
  }
}

static void on_scan(void *arg, int status, const char *key, const uint8_t *value, size_t len) {
  ob_state *st = arg;
  if (st->stopping) return;
  if (!key) {
    load_finish(st, status == 0 || status == -ENOENT ? 0 : status);
    return;
  }
  if (strncmp(key, "app/", 4) != 0) return;
  evs__ob_app *a = NULL;
  char err[256];
  int rc = evs__ob_app_from_doc(key + 4, value, len, &a, err, sizeof err);
  if (rc == 0) rc = evs__ob_table_add(st->building, a);
  else
    st->h->log(st->p, NULL, EVS_LOG_ERROR, "outbound configuration of app %.64s ignored: %s",
               key + 4, err);
  (void)rc;
}

static void on_gen_for_load(void *arg, int status, const uint8_t *v, size_t len) {
  ob_state *st = arg;
  if (st->stopping) return;
  st->building_gen[0] = 0;
  if (status == 0 && len < sizeof st->building_gen) {
    memcpy(st->building_gen, v, len);
    st->building_gen[len] = 0;
  } else if (status != -ENOENT && status != 0) {
    load_finish(st, status);
    return;
  }
  int rc = st->h->store_scan(st->p, "app/", on_scan, st);
  if (rc < 0) load_finish(st, rc);
}

static void load_start(ob_state *st) {
  st->loading = 1;
  st->building = evs__ob_table_new();
  int rc = st->building ? st->h->store_get(st->p, "gen", on_gen_for_load, st) : -ENOMEM;
  if (rc < 0) load_finish(st, rc);
}

/* Reloads the table; done(arg, status) runs once it holds everything stored before this
 * call (NULL: nobody waits). */
static int reload(ob_state *st, void (*done)(void *, int), void *arg, evs_node_msg *m) {
  if (done || m) {
    ob_ticket *t = calloc(1, sizeof *t);
    if (!t) return -ENOMEM;
    t->done = done;
    t->arg = arg;
    t->m = m;
    ob_ticket **list = st->loading ? &st->next : &st->current;
    t->next = *list;
    *list = t;
  }
  if (st->loading)
    st->again = 1;
  else
    load_start(st);
  return 0;
}

/* Other nodes: poll the generation token. */
static void on_gen_poll(void *arg, int status, const uint8_t *v, size_t len) {
  ob_state *st = arg;
  st->polling = 0;
  if (st->stopping || st->loading) return;
  int changed = status == 0 ? (len != strlen(st->gen) || memcmp(v, st->gen, len) != 0)
                            : status == -ENOENT && st->gen[0];
  if (changed || !st->table) reload(st, NULL, NULL, NULL); /* !table: the last load failed */
}

static void on_poll_timer(void *arg) {
  ob_state *st = arg;
  if (st->polling || st->loading || st->stopping) return;
  st->polling = 1;
  if (st->h->store_get(st->p, "gen", on_gen_poll, st) < 0) st->polling = 0;
}

/* This node's other workers: a node message 'R' asks for a reload. */
static void on_node_msg(void *state, const uint8_t *msg, size_t len, evs_node_msg *m) {
  ob_state *st = state;
  if (len != 1 || msg[0] != 'R' || reload(st, NULL, NULL, m) < 0) st->h->node_reply(m, -EINVAL);
}

/* ---- the plugin's internal API for the proxy step -------------------------------------- */

const evs__ob_app *ob_app(ob_state *st, const char *app_id) {
  return evs__ob_table_get(st->table, app_id);
}

const evs__ob_destination *ob_lookup(ob_state *st, const char *app_id, const char *host, int port,
                                     const char *path, size_t path_len) {
  return evs__ob_app_match(ob_app(st, app_id), host, port, path, path_len);
}

/* ---- GET /v2/relay-outbound ------------------------------------------------------------- */

static void v2_gone(void *data) {
  ob_v2 *v = data;
  v->req = NULL;
  v2_unref(v);
}

static void v2_answer(ob_v2 *v) {
  ob_state *st = v->st;
  if (!v->req) {
    v2_unref(v); /* the waiting list's reference */
    return;
  }
  if (!st->table) {
    if (st->loading) { /* the first load is under way */
      v->next_waiting = st->waiting;
      st->waiting = v;
      return;
    }
    evs_request *r = v->req;
    v->refs++; /* respond_error may free the request (v2_gone) */
    st->h->respond_error(r, 503, "service-unavailable",
                         "The outbound configuration could not be loaded from the store; retry later.");
    v->refs--;
    v2_unref(v);
    return;
  }
  static const char empty[] = "{\"outboundDestinations\":{}}";
  const evs__ob_app *a = evs__ob_table_get(st->table, v->app_id);
  evs_header hdr[] = {{"Content-Type", 12, "application/json", 16},
                      {"x-poll-interval", 15, st->poll_header, strlen(st->poll_header)},
                      {"Cache-Control", 13, "no-store", 8}};
  evs_request *req = v->req;
  v->refs++; /* respond may free the request (v2_gone) */
  st->h->respond(req, 200, hdr, 3, a ? (const uint8_t *)a->v2_body : (const uint8_t *)empty,
                 a ? a->v2_len : sizeof empty - 1);
  v->refs--; /* the guard; the waiting list's reference still holds v */
  v2_unref(v); /* the waiting list's (or the key check's) reference */
}

static void on_key_checked(void *arg, int status, const char *app_id) {
  ob_v2 *v = arg;
  ob_state *st = v->st;
  if (!v->req || st->stopping) {
    v2_unref(v);
    return;
  }
  if (status == 0 && !v->second && app_id && evs__ob_app_id_valid(app_id)) {
    snprintf(v->app_id, sizeof v->app_id, "%s", app_id);
    v2_answer(v); /* waits if the first load is under way */
    return;
  }
  evs_request *req = v->req;
  if (status == EVS_ENOCRYPTO) {
    st->h->respond_error(req, 503, "service-unavailable", "API keys cannot be checked right now; retry later.");
  } else if (status == 0 && v->second) {
    st->h->respond_error(req, 403, "forbidden", "The API key does not have the required permissions.");
  } else if (status == -EACCES && !v->second) {
    /* Every key may encrypt: a key that can is a key of some app, without this permission. */
    v->second = 1;
    v->refs++;
    evs_api_key_request kr;
    evs_header hd;
    memset(&kr, 0, sizeof kr);
    kr.size = sizeof kr;
    kr.permission = "api:encrypt";
    if (st->h->request_header(req, "api-key", &hd) == 0) {
      kr.key = hd.value;
      kr.key_len = hd.value_len;
    }
    if (kr.key && st->h->check_api_key(st->p, &kr, on_key_checked, v) == 0) {
      v2_unref(v);
      return;
    }
    v->refs--;
    st->h->respond_error(req, 401, "unauthorized", "Invalid authorization provided.");
  } else {
    st->h->respond_error(req, 401, "unauthorized", "Invalid authorization provided.");
  }
  v2_unref(v);
}

static int v2_route(void *arg, evs_request *req) {
  ob_state *st = arg;
  evs_header hd;
  if (st->h->request_header(req, "api-key", &hd) != 0 || hd.value_len == 0 || hd.value_len > 512) {
    st->h->respond_error(req, 401, "unauthorized", "Invalid authorization provided.");
    return EVS_HANDLED;
  }
  ob_v2 *v = calloc(1, sizeof *v);
  if (!v) {
    st->h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return EVS_HANDLED;
  }
  v->st = st;
  v->req = req;
  v->refs = 2; /* the request, the key check */
  st->h->request_set_data(req, st->p, v, v2_gone);
  evs_api_key_request kr;
  memset(&kr, 0, sizeof kr);
  kr.size = sizeof kr;
  kr.key = hd.value;
  kr.key_len = hd.value_len;
  kr.permission = OB_PERMISSION;
  int rc = st->h->check_api_key(st->p, &kr, on_key_checked, v);
  if (rc < 0) {
    v->refs--;
    if (rc == EVS_ENOCRYPTO)
      st->h->respond_error(req, 503, "service-unavailable", "API keys cannot be checked right now; retry later.");
    else
      st->h->respond_error(req, 401, "unauthorized", "Invalid authorization provided.");
  }
  return EVS_HANDLED;
}

/* ---- admin endpoints -------------------------------------------------------------------- */

enum { A_LIST, A_GET, A_PUT, A_DELETE_APP, A_ADD, A_DELETE_DEST };

typedef struct ob_admin {
  ob_state *st;
  evs_request *req;
  int refs;
  int action;
  int dry_run;
  char app_id[EVS__OB_APP_ID_MAX + 1];
  char dest_id[EVS__OB_ID_MAX + 1];
  char if_match[EVS__OB_ETAG_MAX + 8];
  json_t *body;    /* the request's JSON */
  json_t *current; /* the stored document, or NULL */
  json_t *result;  /* the answer being built */
  json_t *apps;    /* A_LIST */
} ob_admin;

static void admin_unref(ob_admin *x) {
  if (--x->refs) return;
  json_decref(x->body);
  json_decref(x->current);
  json_decref(x->result);
  json_decref(x->apps);
  free(x);
}

static void admin_gone(void *data) {
  ob_admin *x = data;
  x->req = NULL;
  admin_unref(x);
}

/* Answers with obj (consumed) and drops the pending callback's reference. */
static void admin_json(ob_admin *x, int status, json_t *obj) {
  ob_state *st = x->st;
  char *body = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(obj);
  if (x->req) {
    static const evs_header hdr[] = {{"Content-Type", 12, "application/json", 16}};
    evs_request *req = x->req;
    x->refs++;
    if (body) st->h->respond(req, status, hdr, 1, (const uint8_t *)body, strlen(body));
    else st->h->respond_error(req, 500, "internal-server-error", "Out of memory");
    x->refs--; /* the guard; the pending reference still holds x */
  }
  free(body);
  admin_unref(x);
}

static void admin_error(ob_admin *x, int status, const char *code, const char *detail) {
  if (x->req) {
    evs_request *req = x->req;
    x->refs++;
    x->st->h->respond_error(req, status, code, detail);
    x->refs--; /* the guard; the pending reference still holds x */
  }
  admin_unref(x);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void random_hex(char *out, size_t nbytes) {
  unsigned char b[32];
  if (nbytes > sizeof b) nbytes = sizeof b;
  if (getrandom(b, nbytes, 0) != (ssize_t)nbytes)
    for (size_t i = 0; i < nbytes; i++) b[i] = (unsigned char)(rand() & 0xff);
  for (size_t i = 0; i < nbytes; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

static json_t *empty_doc(const char *app_id) {
  return json_pack("{s:s, s:i, s:n, s:n, s:{s:{}, s:s}}", "appId", app_id, "version", 0, "etag",
                   "updatedAt", "config", "outboundDestinations", "unconfiguredHosts", "refuse");
}

static const char *doc_etag(const json_t *doc) {
  return doc ? json_string_value(json_object_get(doc, "etag")) : NULL;
}

/* After a change: every worker of this node reloads, then the answer. */
static void on_broadcast(void *arg, size_t workers, size_t ok) {
  ob_admin *x = arg;
  json_t *r = x->result;
  x->result = NULL;
  json_object_set_new(r, "workers", json_integer((json_int_t)workers + 1));
  json_object_set_new(r, "workersReloaded", json_integer((json_int_t)ok + 1));
  if (x->action == A_ADD) json_object_set_new(r, "destinationId", json_string(x->dest_id));
  if (ok < workers)
    x->st->h->log(x->st->p, NULL, EVS_LOG_WARN, "outbound configuration of app %s: %zu of %zu "
                  "other workers reloaded in time; the rest follow within store_poll_interval",
                  x->app_id, ok, workers);
  admin_json(x, 200, r);
}

static void on_local_reload(void *arg, int status) {
  ob_admin *x = arg;
  ob_state *st = x->st;
  static const uint8_t msg[] = {'R'};
  if (st->stopping || st->h->node_broadcast(st->p, msg, 1, OB_NODE_TIMEOUT_MS, on_broadcast, x) < 0)
    on_broadcast(x, 0, 0);
}

static void on_gen_put(void *arg, int status, const uint8_t *v, size_t len) {
  ob_admin *x = arg;
  if (status < 0)
    x->st->h->log(x->st->p, NULL, EVS_LOG_WARN, "cannot update the outbound generation (key gen) "
                  "(%s): other nodes see the change at their next successful poll", strerror(-status));
  if (x->st->stopping || reload(x->st, on_local_reload, x, NULL) < 0) on_local_reload(x, -ENOMEM);
}

static void bump_gen(ob_admin *x) {
  char gen[64];
  int n = snprintf(gen, sizeof gen, "%" PRId64 "-", now_ms());
  random_hex(gen + n, 8);
  if (x->st->h->store_put(x->st->p, "gen", (const uint8_t *)gen, strlen(gen), 0, on_gen_put, x) < 0)
    on_gen_put(x, -EIO, NULL, 0);
}

static void on_doc_written(void *arg, int status, const uint8_t *v, size_t len) {
  ob_admin *x = arg;
  if (status < 0) {
    x->st->h->log(x->st->p, NULL, EVS_LOG_ERROR, "cannot store the outbound configuration of app %s: %s",
                  x->app_id, strerror(-status));
    admin_error(x, 500, "internal-server-error", "The store is unavailable");
    return;
  }
  x->st->h->log(x->st->p, NULL, EVS_LOG_INFO, "outbound configuration of app %s %s", x->app_id,
                x->action == A_DELETE_APP ? "deleted" : "replaced");
  bump_gen(x);
}

static void app_key(char *key, const char *app_id) { snprintf(key, OB_KEY_MAX, "app/%s", app_id); }

/* Validates config as the app's next version and stores it (or, dryRun, shows it). */
static void commit(ob_admin *x, const json_t *config) {
  ob_state *st = x->st;
  char err[512], key[OB_KEY_MAX];
  evs__ob_app *a = NULL;
  int rc = evs__ob_app_compile(x->app_id, config, &a, err, sizeof err);
  if (rc == -ENOMEM) {
    admin_error(x, 500, "internal-server-error", "Out of memory");
    return;
  }
  if (rc < 0) {
    admin_error(x, 400, "bad-request", err);
    return;
  }
  json_int_t cur = x->current ? json_integer_value(json_object_get(x->current, "version")) : 0;
  json_t *doc = evs__ob_app_doc(a, (uint64_t)cur + 1, now_ms());
  evs__ob_app_free(a);
  if (!doc) {
    admin_error(x, 500, "internal-server-error", "Out of memory");
    return;
  }
  if (x->dry_run) {
    json_t *cur_doc = x->current ? json_incref(x->current) : empty_doc(x->app_id);
    admin_json(x, 200, json_pack("{s:b, s:o, s:o}", "valid", 1, "current", cur_doc, "proposed", doc));
    return;
  }
  char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
  x->result = doc;
  app_key(key, x->app_id);
  rc = text ? st->h->store_put(st->p, key, (const uint8_t *)text, strlen(text), 0, on_doc_written, x) : -ENOMEM;
  free(text);
  if (rc < 0) on_doc_written(x, rc, NULL, 0);
}

static void on_current(void *arg, int status, const uint8_t *v, size_t len) {
  ob_admin *x = arg;
  if (status < 0 && status != -ENOENT) {
    admin_error(x, 500, "internal-server-error", "The store is unavailable");
    return;
  }
  if (status == 0) {
    x->current = json_loadb((const char *)v, len, 0, NULL);
    if (!x->current) {
      admin_error(x, 500, "internal-server-error", "The stored document is not JSON");
      return;
    }
  }
  if (x->action == A_GET) {
    admin_json(x, 200, x->current ? json_incref(x->current) : empty_doc(x->app_id));
    return;
  }
  if (x->if_match[0]) {
    const char *et = doc_etag(x->current);
    if (!(et && strcmp(et, x->if_match) == 0) && strcmp(x->if_match, "*") != 0) {
      admin_error(x, 412, "precondition-failed",
                  "The app's outbound configuration changed since you read it (If-Match); read it again");
      return;
    }
  }
  json_t *cfg = x->current ? json_object_get(x->current, "config") : NULL;
  switch (x->action) {
  case A_PUT:
    commit(x, x->body);
    return;
  case A_DELETE_APP: {
    char key[OB_KEY_MAX];
    if (!x->current) {
      admin_error(x, 404, "resource-not-found", "This app has no outbound configuration");
      return;
    }
    x->result = json_pack("{s:s, s:b}", "appId", x->app_id, "deleted", 1);
    app_key(key, x->app_id);
    int rc = x->st->h->store_delete(x->st->p, key, on_doc_written, x);
    if (rc < 0) on_doc_written(x, rc, NULL, 0);
    return;
  }
  case A_ADD: {
    json_t *next = cfg ? json_deep_copy(cfg) : json_pack("{s:{}}", "outboundDestinations");
    json_t *dests = json_object_get(next, "outboundDestinations");
    json_t *d = json_deep_copy(x->body);
    const char *id = json_string_value(json_object_get(d, "id"));
    char gen_id[EVS__OB_ID_MAX + 1];
    if (json_object_get(d, "id") && !id) {
      json_decref(next);
      json_decref(d);
      admin_error(x, 400, "bad-request", "id: expected a string");
      return;
    }
    if (!id) {
      memcpy(gen_id, "dest_", 5);
      random_hex(gen_id + 5, 8);
      id = gen_id;
    }
    char idc[EVS__OB_ID_MAX + 1];
    if (strlen(id) > EVS__OB_ID_MAX) {
      json_decref(next);
      json_decref(d);
      admin_error(x, 400, "bad-request", "id: at most 64 letters, digits, '_' or '-'");
      return;
    }
    memcpy(idc, id, strlen(id) + 1);
    json_object_del(d, "id");
    if (json_object_get(dests, idc)) {
      json_decref(next);
      json_decref(d);
      admin_error(x, 409, "conflict", "A destination with this id exists; delete it first or choose another id");
      return;
    }
    json_object_set_new(dests, idc, d);
    memcpy(x->dest_id, idc, sizeof idc);
    commit(x, next);
    json_decref(next);
    return;
  }
  case A_DELETE_DEST: {
    json_t *dests = json_object_get(cfg, "outboundDestinations");
    if (!json_object_get(dests, x->dest_id)) {
      admin_error(x, 404, "resource-not-found", "This app has no destination with this id");
      return;
    }
    json_t *next = json_deep_copy(cfg);
    json_object_del(json_object_get(next, "outboundDestinations"), x->dest_id);
    commit(x, next);
    json_decref(next);
    return;
  }
  }
}

static void read_current(ob_admin *x) {
  char key[OB_KEY_MAX];
  app_key(key, x->app_id);
  int rc = x->st->h->store_get(x->st->p, key, on_current, x);
  if (rc < 0) admin_error(x, 500, "internal-server-error", "The store is unavailable");
}

static void on_body(void *arg, int status, const uint8_t *data, size_t len) {
  ob_admin *x = arg;
  if (status < 0 || !x->req) {
    if (status == -E2BIG) admin_error(x, 413, "payload-too-large", "The document may be at most 512 KiB");
    else admin_error(x, 400, "bad-request", "The request body could not be read");
    return;
  }
  json_error_t je;
  x->body = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &je);
  if (!x->body || !json_is_object(x->body)) {
    char d[300];
    snprintf(d, sizeof d, "The body must be a JSON object%s%s", x->body ? "" : ": ", x->body ? "" : je.text);
    admin_error(x, 400, "bad-request", d);
    return;
  }
  read_current(x);
}

static void on_list_item(void *arg, int status, const char *key, const uint8_t *v, size_t len) {
  ob_admin *x = arg;
  if (key) {
    evs__ob_app *a = NULL;
    char err[256];
    if (strncmp(key, "app/", 4) != 0) return;
    if (evs__ob_app_from_doc(key + 4, v, len, &a, err, sizeof err) == 0) {
      json_array_append_new(x->apps, json_pack("{s:s, s:I, s:s, s:I, s:I, s:s}", "appId", a->app_id,
                                                "version", (json_int_t)a->version, "etag", a->etag,
                                                "updatedAt", (json_int_t)a->updated_at, "destinations",
                                                (json_int_t)a->n, "unconfiguredHosts",
                                                a->refuse_unconfigured ? "refuse" : "passthrough"));
      evs__ob_app_free(a);
    } else {
      json_array_append_new(x->apps, json_pack("{s:s, s:s}", "appId", key + 4, "error", err));
    }
    return;
  }
  if (status < 0 && status != -ENOENT) {
    admin_error(x, 500, "internal-server-error", "The store is unavailable");
    return;
  }
  json_t *apps = x->apps;
  x->apps = NULL;
  admin_json(x, 200, json_pack("{s:o}", "apps", apps));
}

/* Copies the next path segment after *p (which points at '/') into out; 0, or -1. */
static int segment(const char **p, char *out, size_t cap) {
  if (**p != '/') return -1;
  const char *s = *p + 1, *e = strchr(s, '/');
  size_t n = e ? (size_t)(e - s) : strlen(s);
  if (n == 0 || n >= cap) return -1;
  memcpy(out, s, n);
  out[n] = 0;
  *p = s + n;
  return 0;
}

static int admin_route(void *arg, evs_request *req) {
  ob_state *st = arg;
  const evs_request_info *info = st->h->request_info(req);
  const char *path = info->path + strlen("/outbound"), *m = info->method;
  char seg[EVS__OB_APP_ID_MAX + 16];
  ob_admin *x = calloc(1, sizeof *x);
  if (!x) {
    st->h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return EVS_HANDLED;
  }
  x->st = st;
  x->req = req;
  x->refs = 2;
  st->h->request_set_data(req, st->p, x, admin_gone);
  int get = strcmp(m, "GET") == 0;
  if (*path == 0 || strcmp(path, "/") == 0) {
    if (!get) {
      admin_error(x, 405, "method-not-allowed", "/outbound takes GET");
      return EVS_HANDLED;
    }
    x->action = A_LIST;
    if (!(x->apps = json_array()) || st->h->store_scan(st->p, "app/", on_list_item, x) < 0)
      admin_error(x, 500, "internal-server-error", "The store is unavailable");
    return EVS_HANDLED;
  }
  if (segment(&path, seg, sizeof seg) < 0 || !evs__ob_app_id_valid(seg)) {
    admin_error(x, 400, "bad-request", "The app id must be 1 to 64 letters, digits, '_' or '-'");
    return EVS_HANDLED;
  }
  memcpy(x->app_id, seg, strlen(seg) + 1); /* valid: at most EVS__OB_APP_ID_MAX bytes */
  int want_body = 0;
  if (*path == 0) {
    if (get) {
      x->action = A_GET;
    } else if (strcmp(m, "PUT") == 0) {
      x->action = A_PUT;
      want_body = 1;
      const char *q = info->query ? info->query : "";
      x->dry_run = strstr(q, "dryRun=1") != NULL || strstr(q, "dryRun=true") != NULL;
      evs_header hd;
      if (st->h->request_header(req, "If-Match", &hd) == 0) {
        if (hd.value_len >= sizeof x->if_match) {
          admin_error(x, 412, "precondition-failed", "The If-Match etag is not this app's");
          return EVS_HANDLED;
        }
        memcpy(x->if_match, hd.value, hd.value_len);
      }
    } else if (strcmp(m, "DELETE") == 0) {
      x->action = A_DELETE_APP;
    } else {
      admin_error(x, 405, "method-not-allowed", "/outbound/<app> takes GET, PUT and DELETE");
      return EVS_HANDLED;
    }
  } else if (strncmp(path, "/destinations", 13) == 0 && (path[13] == 0 || path[13] == '/')) {
    path += 13;
    if (*path == 0 && strcmp(m, "POST") == 0) {
      x->action = A_ADD;
      want_body = 1;
    } else if (*path && strcmp(m, "DELETE") == 0 && segment(&path, x->dest_id, sizeof x->dest_id) == 0 &&
               *path == 0) {
      x->action = A_DELETE_DEST;
    } else {
      admin_error(x, 405, "method-not-allowed",
                  "POST /outbound/<app>/destinations adds one, DELETE .../destinations/<id> removes one");
      return EVS_HANDLED;
    }
  } else {
    admin_error(x, 404, "resource-not-found", "No such outbound endpoint");
    return EVS_HANDLED;
  }
  if (want_body) {
    int rc = st->h->read_body(req, EVS__OB_DOC_MAX, on_body, x);
    if (rc < 0) on_body(x, rc, NULL, 0);
  } else {
    read_current(x);
  }
  return EVS_HANDLED;
}

/* ---- init and fini ---------------------------------------------------------------------- */

static const evs_config_item items[] = {
    {"poll_interval", EVS_CONFIG_DURATION, "5s", 1000, 3600000, 0,
     "x-poll-interval of GET /v2/relay-outbound: how often the SDKs fetch the destinations"},
    {"store_poll_interval", EVS_CONFIG_DURATION, "2s", 200, 60000, 0,
     "how often each worker checks the store for outbound configuration changed on other nodes"},
    {"destination_ca_file", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "CA certificates (PEM) trusted for destinations besides the system's roots (private "
     "destinations); unset: the host's bundle ([upstream] ca_file or the system's)"},
    {"spool_dir", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "where request bodies past 1 MiB wait for decryption (unlinked files); default state_dir"},
    {"max_body", EVS_CONFIG_SIZE, "25m", 1024, 1LL << 30, 0,
     "largest request body the proxy reads (payload-too-large above)"},
    {"unauthenticated_leaf_rate", EVS_CONFIG_INT, "60", 1, 1000000, 0,
     "leaf certificates per minute each worker mints for tunnels not yet authenticated "
     "(CONNECT without Proxy-Authorization; known hosts are free); 503 beyond"},
    {"unauthenticated_leaf_burst", EVS_CONFIG_INT, "30", 1, 100000, 0,
     "how many such leaves a worker may mint at once before unauthenticated_leaf_rate applies"},
    {"transaction_log", EVS_CONFIG_BOOL, "on", 0, 0, 0,
     "record each proxied request (never values) for evctl activity"},
    {"team_uuid", EVS_CONFIG_STRING, "local", 0, 0, 0, "teamUuid carried by alerts"},
    {"activity_url", EVS_CONFIG_STRING, "evctl://activity", 0, 0, 0,
     "base of the activityLink in alerts; the request id is appended"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static void state_free(ob_state *st) {
  if (!st) return;
  if (st->poll) st->h->timer_free(st->poll);
  ob_proxy_free(st->proxy);
  evs__ob_table_free(st->table);
  evs__ob_table_free(st->building);
  /* Nobody is answered after fini: node messages' handles are the host's to free, and an
   * admin request waiting for a reload is ended by the host. */
  for (ob_ticket *t = st->current, *n; t; t = n) {
    n = t->next;
    free(t);
  }
  for (ob_ticket *t = st->next, *n; t; t = n) {
    n = t->next;
    free(t);
  }
  free(st);
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  if (host->abi_minor < 7) return -ENOTSUP;
  ob_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->h = host;
  st->p = plugin;
  int64_t pi = host->config_int(plugin, "poll_interval");
  if (pi % 1000 == 0) snprintf(st->poll_header, sizeof st->poll_header, "%" PRId64, pi / 1000);
  else snprintf(st->poll_header, sizeof st->poll_header, "%.3f", (double)pi / 1000.0);
  static const evs_route routes[] = {
      {sizeof(evs_route), "api", NULL, "GET", "/v2/relay-outbound", v2_route},
      {sizeof(evs_route), "admin", NULL, NULL, "/outbound", admin_route},
  };
  int r = 0;
  for (size_t i = 0; r == 0 && i < sizeof routes / sizeof routes[0]; i++) r = host->add_route(plugin, &routes[i]);
  if (r == 0) r = host->node_subscribe(plugin, on_node_msg);
  if (r == 0) r = ob_proxy_init(host, plugin, st, &st->proxy);
  if (r < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "cannot register the outbound routes: %s", strerror(-r));
    free(st);
    return r;
  }
  int64_t spi = host->config_int(plugin, "store_poll_interval");
  st->poll = host->timer_start(plugin, (uint64_t)spi, (uint64_t)spi, on_poll_timer, st);
  load_start(st);
  *ret_state = st;
  return 0;
}

static void fini(void *state) {
  ob_state *st = state;
  st->stopping = 1;
  for (ob_v2 *w = st->waiting, *n; w; w = n) {
    n = w->next_waiting;
    v2_unref(w);
  }
  state_free(st);
}

EVS_PLUGIN_DEFINE("relay-outbound", "0.1.0",
                  "Outbound Relay: per-app destinations (store), GET /v2/relay-outbound, evctl outbound",
                  items, init, fini);
