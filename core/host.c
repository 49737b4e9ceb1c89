/*
 * The evs_host service table: what plugins call, adapted to the core modules (requests and
 * responses, proxying, timers, events, store, crypto, streams, node messages). Calls follow the
 * ABI's contract: arguments checked, callbacks never before the call returns (deferred),
 * registrations only during init.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "appendq.h"
#include "client.h"
#include "helper.h"
#include "host.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "plugin.h"
#include "proxy.h"
#include "request.h"
#include "route.h"
#include "storeq.h"
#include "tls.h"
#include "stream.h"
#include "worker.h"

typedef struct evs__subscription {
  char *prefix;
  evs_event_fn fn;
  struct evs__subscription *next;
} evs__subscription;

static evs__plugin_rec *rec(evs_plugin *p) { return (evs__plugin_rec *)p; }

/* ---- hooks ------------------------------------------------------------------------------- */

int evs__plugins_run_hooks(evs__worker *w, evs_phase phase, evs_request *req) {
  for (size_t i = 0; i < w->nhooks; i++) {
    evs__hook *h = &w->hooks[i];
    if (h->phase != phase || !h->plugin->loaded) continue;
    /* Attribute the request before the hook runs: a hook that answers at once may finish it,
     * so the request is not touched after a hook took it. */
    evs__plugin_rec *before = req->handler;
    if (phase == EVS_PHASE_ROUTE && !before) req->handler = h->plugin;
    int r = h->fn(h->plugin->state, req);
    if (phase == EVS_PHASE_ROUTE && r == EVS_HANDLED) return 1;
    if (phase == EVS_PHASE_ROUTE) req->handler = before;
  }
  return 0;
}

/* Routes (ABI 1.7): the table is sorted most specific first, so the first matching route of
 * any of the listener's roles is the one to try; a handler that declines passes to the next. */
int evs__routes_run(evs__worker *w, const char *const *roles, size_t nroles, evs_request *req) {
  const evs_request_info *i = &req->info;
  /* A CONNECT is routed by its target's host, not by the Host header. */
  const char *host = i->host;
  char connect_host[256];
  if (strcmp(i->method, "CONNECT") == 0)
    host = evs__route_connect_host(i->target, connect_host, sizeof connect_host) ? connect_host
                                                                                : "";
  for (size_t k = 0; k < w->nroutes; k++) {
    evs__route *rt = &w->routes[k];
    if (!rt->plugin->loaded) continue;
    int match = 0;
    for (size_t r = 0; r < nroles && !match; r++)
      match = evs__route_matches(rt, roles[r], host, i->method, i->path);
    if (!match) continue;
    /* Attributed before the call, as for hooks: a handler that answers at once may end it. */
    evs__plugin_rec *before = req->handler;
    if (!before) req->handler = rt->plugin;
    if (rt->fn(rt->plugin->state, req) == EVS_HANDLED) return 1;
    req->handler = before;
  }
  return 0;
}

void evs__request_free_pdata(evs_request *req) {
  for (size_t i = 0; i < req->npdata; i++)
    if (req->pdata[i].free_fn && req->pdata[i].data) req->pdata[i].free_fn(req->pdata[i].data);
  free(req->pdata);
  req->pdata = NULL;
  req->npdata = 0;
}

/* ---- deferred callbacks: "never before the call returns" ---------------------------------- */

typedef struct deferred {
  uv_timer_t t;
  void (*run)(struct deferred *d);
  void *cb;
  void *arg;
  int status;
  uint8_t *data;
  size_t len;
  char *s1, *s2;
  struct deferred *next; /* for scans: a chain of items */
} deferred;

static void deferred_free(deferred *d) {
  while (d) {
    deferred *n = d->next;
    free(d->data);
    free(d->s1);
    free(d->s2);
    free(d);
    d = n;
  }
}
static void deferred_closed(uv_handle_t *h) { deferred_free(h->data); }

static void deferred_fire(uv_timer_t *t) {
  deferred *d = t->data;
  d->run(d);
  uv_close((uv_handle_t *)t, deferred_closed);
}

static deferred *defer(void (*run)(deferred *), void *cb, void *arg) {
  deferred *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->run = run;
  d->cb = cb;
  d->arg = arg;
  uv_timer_init(evs__w->loop, &d->t);
  d->t.data = d;
  return d;
}
static void defer_start(deferred *d) { uv_timer_start(&d->t, deferred_fire, 0, 0); }

/* ---- the service table ------------------------------------------------------------------- */

static void h_log(evs_plugin *p, evs_request *req, evs_log_level level, const char *fmt, ...) {
  if (level < EVS_LOG_ERROR || level > EVS_LOG_DEBUG) level = EVS_LOG_INFO;
  va_list ap;
  va_start(ap, fmt);
  evs__logv(level, "EVS-2000", p ? rec(p)->name : NULL, req ? req->request_id : NULL, fmt, ap);
  va_end(ap);
}

static const evs_config_item *find_item(evs__plugin_rec *r, const char *key) {
  if (!r->desc->config_items || !key) return NULL;
  for (const evs_config_item *it = r->desc->config_items; it->key; it++)
    if (strcmp(it->key, key) == 0) return it;
  return NULL;
}

/* A plugin asked for a key its descriptor does not declare: a bug in the plugin, which would
 * otherwise read as unset and pass unnoticed. Logged once per plugin and key in this process
 * (the list holds the few names that ever appear). */
typedef struct undeclared_key {
  char *plugin, *key;
  struct undeclared_key *next;
} undeclared_key;
static undeclared_key *undeclared_keys;

static void log_undeclared(evs__plugin_rec *r, const char *key) {
  for (undeclared_key *u = undeclared_keys; u; u = u->next)
    if (strcmp(u->plugin, r->name) == 0 && strcmp(u->key, key) == 0) return;
  undeclared_key *u = calloc(1, sizeof *u);
  if (u && (u->plugin = strdup(r->name)) && (u->key = strdup(key))) {
    u->next = undeclared_keys;
    undeclared_keys = u;
  } else if (u) {
    free(u->plugin);
    free(u);
  }
  evs__log(EVS_LOG_ERROR, "EVS-1410", r->name, NULL,
           "plugin %s read configuration key '%s', which its descriptor does not declare "
           "(config_items); the lookup failed. Declare the key or fix its name",
           r->name, key);
}

static const char *raw_value(evs__plugin_rec *r, const char *key) {
  const evs_config_item *it = find_item(r, key);
  if (!it) return NULL;
  if (r->section) return evs__conf_value(r->section, r->desc->config_items, key);
  return it->default_value;
}

/* Resolved PATH values live as long as the plugin record: kept in a small list. */
typedef struct path_cache {
  evs__plugin_rec *r;
  char *key, *value;
  struct path_cache *next;
} path_cache;
static path_cache *paths;

static const char *h_config_string(evs_plugin *p, const char *key) {
  evs__plugin_rec *r = rec(p);
  const evs_config_item *it = find_item(r, key);
  if (!it) {
    log_undeclared(r, key ? key : "(null)");
    return NULL;
  }
  const char *v = raw_value(r, key);
  if (!v || !it || it->type != EVS_CONFIG_PATH) return v;
  for (path_cache *c = paths; c; c = c->next)
    if (c->r == r && strcmp(c->key, key) == 0) return c->value;
  path_cache *c = calloc(1, sizeof *c);
  if (!c) return v;
  c->r = r;
  c->key = strdup(key);
  c->value = evs__conf_resolve_path(evs__w->settings->conf, v);
  c->next = paths;
  paths = c;
  return c->value;
}

static int64_t h_config_int(evs_plugin *p, const char *key) {
  evs__plugin_rec *r = rec(p);
  const evs_config_item *it = find_item(r, key);
  if (!it) {
    log_undeclared(r, key ? key : "(null)");
    return EVS_CONFIG_UNDECLARED;
  }
  const char *v = raw_value(r, key);
  int64_t out = 0;
  if (!v) return 0;
  switch (it->type) {
    case EVS_CONFIG_DURATION: evs__conf_parse_duration_ms(v, &out); break;
    case EVS_CONFIG_SIZE: evs__conf_parse_size(v, &out); break;
    case EVS_CONFIG_BOOL: {
      int b = 0;
      evs__conf_parse_bool(v, &b);
      out = b;
      break;
    }
    default: evs__conf_parse_int(v, &out); break;
  }
  return out;
}

static int h_config_bool(evs_plugin *p, const char *key) {
  evs__plugin_rec *r = rec(p);
  if (!find_item(r, key)) {
    log_undeclared(r, key ? key : "(null)");
    return -ENOENT;
  }
  const char *v = raw_value(r, key);
  int b = 0;
  if (v) evs__conf_parse_bool(v, &b);
  return b;
}

static const char *h_config_dir(evs_plugin *p) {
  (void)p;
  return evs__w->settings->conf->dir;
}
static const char *h_state_dir(evs_plugin *p) {
  (void)p;
  return evs__w->settings->state_dir;
}

static int h_add_hook(evs_plugin *p, evs_phase phase, evs_hook_fn fn) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  if (phase != EVS_PHASE_ROUTE && phase != EVS_PHASE_LOG && phase != EVS_PHASE_END)
    return -EINVAL;
  evs__worker *w = evs__w;
  evs__hook *nh = realloc(w->hooks, (w->nhooks + 1) * sizeof *nh);
  if (!nh) return -ENOMEM;
  w->hooks = nh;
  w->hooks[w->nhooks++] = (evs__hook){r, phase, fn};
  return 0;
}

static int h_add_route(evs_plugin *p, const evs_route *route) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  evs__worker *w = evs__w;
  evs__route rt;
  int rc = evs__route_make(route, &rt);
  if (rc < 0) return rc;
  for (size_t k = 0; k < w->nroutes; k++) {
    if (w->routes[k].plugin == r && evs__route_same(&w->routes[k], &rt)) {
      evs__route_clear(&rt);
      return -EEXIST;
    }
  }
  static size_t seq;
  rt.plugin = r;
  rt.seq = seq++;
  if ((rc = evs__route_insert(&w->routes, &w->nroutes, &rt)) < 0) evs__route_clear(&rt);
  return rc;
}

static int h_add_tls_identity(evs_plugin *p, const char *role, const char *suffix,
                              evs_tls_identity_fn fn, void *arg) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  if (!evs__route_role_valid(role)) return -EINVAL;
  evs__tls_provider_cache_size((size_t)evs__w->settings->tls_identity_cache);
  return evs__tls_provider_add(r, role, suffix, fn, arg);
}

static int h_add_tls_passthrough(evs_plugin *p, const char *role, const char *suffix,
                                 evs_tls_passthrough_fn fn, void *arg) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  if (!evs__route_role_valid(role)) return -EINVAL;
  return evs__tls_passthrough_add(r, role, suffix, fn, arg);
}

static const evs_request_info *h_request_info(evs_request *req) { return &req->info; }

static int h_request_header_at(evs_request *req, size_t index, evs_header *ret) {
  if (index >= req->h.nfields) return -ENOENT;
  const evs__http_field *f = &req->fields[index];
  ret->name = req->head + f->name_off;
  ret->name_len = f->name_len;
  ret->value = req->head + f->value_off;
  ret->value_len = f->value_len;
  return 0;
}

static int h_request_header(evs_request *req, const char *name, evs_header *ret) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < req->h.nfields; i++) {
    const evs__http_field *f = &req->fields[i];
    if (f->name_len == nl && strncasecmp(req->head + f->name_off, name, nl) == 0)
      return h_request_header_at(req, i, ret);
  }
  return -ENOENT;
}

static int valid_header(const char *name, const char *value) {
  if (!name || !*name) return 0;
  for (const char *c = name; *c; c++)
    if (!evs__http_is_tchar((unsigned char)*c)) return 0;
  return !value || evs__http_is_valid_field_value(value, strlen(value));
}

/* An edit's name and value share one allocation (the name's; the value points after it). */
static int add_edit(evs_request *req, const char *name, const char *value) {
  if (!valid_header(name, value)) return -EINVAL;
  size_t nl = strlen(name) + 1, vl = value ? strlen(value) + 1 : 0;
  char *mem = malloc(nl + vl);
  if (!mem) return -ENOMEM;
  memcpy(mem, name, nl);
  if (value) memcpy(mem + nl, value, vl);
  for (size_t i = 0; i < req->nedits; i++) {
    if (strcasecmp(req->edits[i].name, name) == 0) {
      free(req->edits[i].name);
      req->edits[i].name = mem;
      req->edits[i].value = value ? mem + nl : NULL;
      return 0;
    }
  }
  /* Room for four at first, then doubled: one allocation for a request's usual few edits. */
  size_t n = req->nedits;
  if (n == 0 || (n >= 4 && (n & (n - 1)) == 0)) {
    evs__edit *ne = realloc(req->edits, (n ? 2 * n : 4) * sizeof *ne);
    if (!ne) {
      free(mem);
      return -ENOMEM;
    }
    req->edits = ne;
  }
  req->edits[n].name = mem;
  req->edits[n].value = value ? mem + nl : NULL;
  req->nedits = n + 1;
  return 0;
}

static int h_request_set_header(evs_request *req, const char *name, const char *value) {
  if (!value) return -EINVAL;
  return add_edit(req, name, value);
}
static int h_request_remove_header(evs_request *req, const char *name) {
  return add_edit(req, name, NULL);
}

static void h_request_set_data(evs_request *req, evs_plugin *p, void *data, void (*free_fn)(void *)) {
  for (size_t i = 0; i < req->npdata; i++) {
    if (req->pdata[i].plugin == rec(p)) {
      req->pdata[i].data = data;
      req->pdata[i].free_fn = free_fn;
      return;
    }
  }
  evs__pdata *np = realloc(req->pdata, (req->npdata + 1) * sizeof *np);
  if (!np) return;
  req->pdata = np;
  req->pdata[req->npdata++] = (evs__pdata){rec(p), data, free_fn};
}

static void *h_request_get_data(evs_request *req, evs_plugin *p) {
  for (size_t i = 0; i < req->npdata; i++)
    if (req->pdata[i].plugin == rec(p)) return req->pdata[i].data;
  return NULL;
}

static int h_respond(evs_request *req, int status, const evs_header *headers, size_t n,
                     const uint8_t *body, size_t len) {
  if (status < 200 || status > 599) return -EINVAL;
  if (req->head_sent) return -EALREADY;
  for (size_t i = 0; i < n; i++) {
    /* Framing is the host's: reject fields that would desynchronise it. */
    static const char *const banned[] = {"content-length", "transfer-encoding", "connection", NULL};
    for (int b = 0; banned[b]; b++)
      if (headers[i].name_len == strlen(banned[b]) &&
          strncasecmp(headers[i].name, banned[b], headers[i].name_len) == 0)
        return -EINVAL;
  }
  return evs__respond(req, status, headers, n, body, len);
}

/* 1.9: a field for whatever head goes out (respond, respond_error, or the proxied one). */
static int h_response_add_header(evs_request *req, const char *name, const char *value) {
  if (!req || !name || !value) return -EINVAL;
  if (req->head_sent) return -EALREADY;
  size_t nl = strlen(name), vl = strlen(value);
  if (nl == 0 || nl > 256 || vl > 8192 || req->extra_out_len + nl + vl + 4 > 16384)
    return -EINVAL;
  for (size_t i = 0; i < nl; i++) /* a token (RFC 9110 §5.6.2) */
    if (!(isalnum((unsigned char)name[i]) || strchr("!#$%&'*+-.^_`|~", name[i])))
      return -EINVAL;
  for (size_t i = 0; i < vl; i++)
    if ((unsigned char)value[i] < 0x20 && value[i] != '\t') return -EINVAL;
  static const char *const banned[] = {"content-length", "transfer-encoding", "connection",
                                       "date", NULL};
  for (int b = 0; banned[b]; b++)
    if (strcasecmp(name, banned[b]) == 0) return -EINVAL;
  char *n = realloc(req->extra_out, req->extra_out_len + nl + vl + 4);
  if (!n) return -ENOMEM;
  req->extra_out = n;
  char *p = n + req->extra_out_len;
  memcpy(p, name, nl);
  p[nl] = ':';
  p[nl + 1] = ' ';
  memcpy(p + nl + 2, value, vl);
  p[nl + 2 + vl] = '\r';
  p[nl + 3 + vl] = '\n';
  req->extra_out_len += nl + vl + 4;
  return 0;
}

static int h_response_close(evs_request *req) {
  if (!req || req->head_sent) return -EALREADY;
  req->close_after = 1;
  return 0;
}

static int h_respond_error(evs_request *req, int status, const char *code, const char *detail) {
  if (status < 400 || status > 599 || !code) return -EINVAL;
  return evs__respond_error(req, status, code, detail ? detail : evs__status_text(status));
}

static int h_proxy(evs_request *req, const evs_upstream *up, evs_body_filter_fn rf,
                   evs_body_filter_fn sf, void *arg) {
  return evs__proxy_start(req, up, rf, sf, arg, req->handler);
}

static int h_filter_emit(evs_request *req, const uint8_t *data, size_t len) {
  return evs__proxy_filter_emit(req, data, len);
}

static int h_http_request(evs_plugin *p, const evs_client_request *c, evs_client_cb cb, void *arg) {
  return evs__client_request(rec(p), c, cb, arg);
}

struct evs_timer {
  uv_timer_t t;
  evs_timer_fn cb;
  void *arg;
};
static void timer_fire(uv_timer_t *t) {
  evs_timer *et = t->data;
  et->cb(et->arg);
}
static evs_timer *h_timer_start(evs_plugin *p, uint64_t timeout, uint64_t repeat, evs_timer_fn cb,
                                void *arg) {
  (void)p;
  evs_timer *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->cb = cb;
  t->arg = arg;
  uv_timer_init(evs__w->loop, &t->t);
  t->t.data = t;
  uv_timer_start(&t->t, timer_fire, timeout, repeat);
  return t;
}
static void timer_closed(uv_handle_t *h) { free(h->data); }
static void h_timer_free(evs_timer *t) {
  if (t) uv_close((uv_handle_t *)&t->t, timer_closed);
}

/* Events. */
static void run_event(deferred *d) {
  evs_event ev = {sizeof ev, d->s1, d->s2};
  evs__worker *w = evs__w;
  for (size_t i = 0; i < w->nplugins; i++) {
    evs__plugin_rec *r = &w->plugins[i];
    if (!r->loaded) continue;
    for (evs__subscription *s = r->subs; s; s = s->next)
      if (strncmp(ev.type, s->prefix, strlen(s->prefix)) == 0) s->fn(r->state, &ev);
  }
}
static int h_emit_event(evs_plugin *p, const evs_event *ev) {
  (void)p;
  if (!ev || !ev->type || !ev->json) return -EINVAL;
  json_error_t jerr;
  json_t *j = json_loads(ev->json, 0, &jerr);
  int ok = j && json_is_object(j);
  json_decref(j);
  if (!ok) return -EINVAL;
  deferred *d = defer(run_event, NULL, NULL);
  if (!d) return -ENOMEM;
  d->s1 = strdup(ev->type);
  d->s2 = strdup(ev->json);
  defer_start(d);
  return 0;
}
static int h_subscribe_events(evs_plugin *p, const char *prefix, evs_event_fn fn) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  evs__subscription *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->prefix = strdup(prefix ? prefix : "");
  s->fn = fn;
  s->next = r->subs;
  r->subs = s;
  return 0;
}

/* Store. Calls with a callback run on the worker's store lane (storeq.c), in the order they
 * were made, so that a PostgreSQL round trip or a SQLite fsync never stalls the loop; the
 * callback runs on the loop thread once the lane answered. put and delete without a callback
 * keep their contract (done when the call returns, its result returned): they wait for the
 * lane to empty, so they still come after the calls made before them, and run on the loop. */
static void run_store(deferred *d) {
  ((evs_store_cb)d->cb)(d->arg, d->status, d->data, d->len);
}

enum { SJ_GET, SJ_PUT, SJ_PUT_NEW, SJ_DEL, SJ_SCAN, SJ_QUERY };
typedef struct store_job {
  evs__storeq_job j;
  int op;
  evs__store *st;
  char *ns;      /* namespace (plugin name) or stream: copied, the plugin may unload first */
  char *key;     /* key, scan prefix */
  uint8_t *val;
  size_t len;
  uint64_t ttl;
  int64_t since;
  size_t limit;
  deferred *d;   /* the answer: status, value, items (chain), and the callback to call */
} store_job;

static int scan_collect(void *arg, const char *key, const uint8_t *v, size_t len);
static int query_collect(void *arg, int64_t id, int64_t ts, const char *json);
typedef struct collect_acc {
  deferred *head, **tail;
} collect_acc;

static void sj_work(evs__storeq_job *jb) {
  store_job *j = (store_job *)jb;
  deferred *d = j->d;
  collect_acc a = {NULL, &d->next};
  switch (j->op) {
    case SJ_GET: d->status = evs__store_get(j->st, j->ns, j->key, &d->data, &d->len); break;
    case SJ_PUT: d->status = evs__store_put(j->st, j->ns, j->key, j->val, j->len, j->ttl); break;
    case SJ_PUT_NEW:
      d->status = evs__store_put_new(j->st, j->ns, j->key, j->val, j->len, j->ttl);
      break;
    case SJ_DEL: d->status = evs__store_delete(j->st, j->ns, j->key); break;
    case SJ_SCAN:
      d->status = evs__store_scan(j->st, j->ns, j->key, scan_collect, &a);
      if (d->status > 0) d->status = 0;
      break;
    case SJ_QUERY:
      d->status = evs__store_query(j->st, j->ns, j->since, j->limit, query_collect, &a);
      if (d->status > 0) d->status = 0;
      break;
  }
}
static void sj_release(evs__storeq_job *jb) {
  store_job *j = (store_job *)jb;
  deferred_free(j->d);
  free(j->ns);
  free(j->key);
  free(j->val);
  free(j);
}
static void sj_done(evs__storeq_job *jb) {
  store_job *j = (store_job *)jb;
  j->d->run(j->d);
  sj_release(jb);
}

/* A job for the lane; NULL when out of memory. */
static store_job *sj_new(int op, evs__store *st, const char *ns, const char *key,
                         void (*run)(deferred *), void *cb, void *arg) {
  store_job *j = calloc(1, sizeof *j);
  deferred *d = calloc(1, sizeof *d);
  if (!j || !d || !(j->ns = strdup(ns)) || (key && !(j->key = strdup(key)))) {
    free(d);
    if (j) free(j->ns);
    free(j);
    return NULL;
  }
  j->j.work = sj_work;
  j->j.done = sj_done;
  j->j.release = sj_release;
  j->op = op;
  j->st = st;
  d->run = run;
  d->cb = cb;
  d->arg = arg;
  j->d = d;
  return j;
}

/* Submits a job; without a lane (evserver -t) it runs here and answers on a later turn. */
static int sj_submit(store_job *j) {
  if (evs__storeq_submit(evs__w, &j->j) == 0) return 0;
  sj_work(&j->j);
  deferred *d = defer(j->d->run, j->d->cb, j->d->arg);
  if (!d) {
    sj_release(&j->j);
    return -ENOMEM;
  }
  d->status = j->d->status;
  d->data = j->d->data;
  d->len = j->d->len;
  d->next = j->d->next;
  j->d->data = NULL;
  j->d->next = NULL;
  sj_release(&j->j);
  defer_start(d);
  return 0;
}

/* The main store and a plugin's auxiliary store answer alike. */
static int store_get_in(evs__store *st, evs_plugin *p, const char *key, evs_store_cb cb,
                        void *arg) {
  if (!st) return -ENOTSUP;
  if (!key || !cb) return -EINVAL;
  store_job *j = sj_new(SJ_GET, st, rec(p)->name, key, run_store, (void *)cb, arg);
  return j ? sj_submit(j) : -ENOMEM;
}
static int store_put_op(int op, evs__store *st, evs_plugin *p, const char *key,
                        const uint8_t *v, size_t len, uint64_t ttl, evs_store_cb cb, void *arg) {
  if (!st) return -ENOTSUP;
  if (!cb) {
    evs__storeq_drain(evs__w);
    if (op == SJ_PUT_NEW) return evs__store_put_new(st, rec(p)->name, key, v, len, ttl);
    return evs__store_put(st, rec(p)->name, key, v, len, ttl);
  }
  if (!key || (!v && len)) return -EINVAL;
  if (len > EVS_STORE_VALUE_MAX) return -E2BIG;
  store_job *j = sj_new(op, st, rec(p)->name, key, run_store, (void *)cb, arg);
  if (!j) return -ENOMEM;
  if (len && !(j->val = malloc(len))) {
    sj_release(&j->j);
    return -ENOMEM;
  }
  if (len) memcpy(j->val, v, len);
  j->len = len;
  j->ttl = ttl;
  return sj_submit(j);
}
static int store_put_in(evs__store *st, evs_plugin *p, const char *key, const uint8_t *v,
                        size_t len, uint64_t ttl, evs_store_cb cb, void *arg) {
  return store_put_op(SJ_PUT, st, p, key, v, len, ttl, cb, arg);
}
static int store_delete_in(evs__store *st, evs_plugin *p, const char *key, evs_store_cb cb,
                           void *arg) {
  if (!st) return -ENOTSUP;
  if (!cb) {
    evs__storeq_drain(evs__w);
    int r = evs__store_delete(st, rec(p)->name, key);
    return r == -ENOENT ? 0 : r;
  }
  if (!key) return -EINVAL;
  store_job *j = sj_new(SJ_DEL, st, rec(p)->name, key, run_store, (void *)cb, arg);
  return j ? sj_submit(j) : -ENOMEM;
}
static int h_store_get(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  return store_get_in(evs__w->store, p, key, cb, arg);
}
static int h_store_put(evs_plugin *p, const char *key, const uint8_t *v, size_t len, uint64_t ttl,
                       evs_store_cb cb, void *arg) {
  return store_put_in(evs__w->store, p, key, v, len, ttl, cb, arg);
}
static int h_store_put_new(evs_plugin *p, const char *key, const uint8_t *v, size_t len,
                           uint64_t ttl, evs_store_cb cb, void *arg) {
  return store_put_op(SJ_PUT_NEW, evs__w->store, p, key, v, len, ttl, cb, arg);
}
static int h_store_delete(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  return store_delete_in(evs__w->store, p, key, cb, arg);
}
static int scan_collect(void *arg, const char *key, const uint8_t *v, size_t len) {
  collect_acc *a = arg;
  deferred *item = calloc(1, sizeof *item);
  if (!item) return 1;
  item->s1 = strdup(key);
  item->data = malloc(len ? len : 1);
  if (len) memcpy(item->data, v, len);
  item->len = len;
  *a->tail = item;
  a->tail = &item->next;
  return 0;
}
static void run_scan(deferred *d) {
  evs_store_scan_cb cb = (evs_store_scan_cb)d->cb;
  for (deferred *i = d->next; i; i = i->next) cb(d->arg, 0, i->s1, i->data, i->len);
  cb(d->arg, d->status, NULL, NULL, 0);
}
static int h_store_scan(evs_plugin *p, const char *prefix, evs_store_scan_cb cb, void *arg) {
  if (!evs__w->store) return -ENOTSUP;
  if (!cb) return -EINVAL;
  store_job *j = sj_new(SJ_SCAN, evs__w->store, rec(p)->name, prefix ? prefix : "", run_scan,
                        (void *)cb, arg);
  return j ? sj_submit(j) : -ENOMEM;
}

static int h_counter_add(evs_plugin *p, const char *name, uint64_t delta) {
  return evs__metrics_plugin_add(rec(p)->name, name, delta);
}

/* Crypto: the host only routes; the provider (the enclave plugin) does the work. */
typedef struct crypto_call {
  evs_crypto_cb cb;
  void *arg;
  int done;
} crypto_call;
static void crypto_done(void *done_arg, int status, const uint8_t *result, size_t len) {
  crypto_call *c = done_arg;
  if (c->done) return;
  c->done = 1;
  c->cb(c->arg, status, result, len);
  free(c);
}
static int h_crypto_call(evs_plugin *p, const evs_crypto_request *creq, evs_crypto_cb cb, void *arg) {
  (void)p;
  if (!creq || !creq->op || !cb) return -EINVAL;
  evs__worker *w = evs__w;
  for (size_t i = 0; i < w->nplugins; i++) {
    evs__plugin_rec *r = &w->plugins[i];
    if (!r->loaded || !r->crypto) continue;
    crypto_call *c = calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    c->cb = cb;
    c->arg = arg;
    int rc = r->crypto(r->state, creq, crypto_done, c);
    if (rc < 0) {
      free(c);
      return rc;
    }
    return 0;
  }
  return EVS_ENOCRYPTO; /* fail closed: nobody can do crypto */
}
static int h_register_crypto_provider(evs_plugin *p, evs_crypto_provider_fn fn) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  evs__worker *w = evs__w;
  for (size_t i = 0; i < w->nplugins; i++)
    if ((w->plugins[i].crypto || w->plugins[i].crypto2.size) && &w->plugins[i] != r)
      return -EEXIST;
  r->crypto = fn;
  return 0;
}

/* Typed crypto (ABI 1.6): the host checks the request's shape and routes it to the provider's
 * typed table; it never sees a wire format. The provider calls done exactly once (unless it
 * returned negative); results reach the caller only with status 0. */
static evs__plugin_rec *typed_provider(void) {
  evs__worker *w = evs__w;
  for (size_t i = 0; i < w->nplugins; i++)
    if (w->plugins[i].loaded && w->plugins[i].crypto2.size) return &w->plugins[i];
  return NULL;
}
typedef struct typed_call {
  union {
    evs_values_cb values;
    evs_bytes_cb bytes;
    evs_api_key_cb key;
  } cb;
  void *arg;
  int done;
} typed_call;
static typed_call *typed_new(void *arg) {
  typed_call *c = calloc(1, sizeof *c);
  if (c) c->arg = arg;
  return c;
}
static void typed_values_done(void *a, int status, const evs_crypto_result *res, size_t n) {
  typed_call *c = a;
  if (c->done) return;
  c->done = 1;
  c->cb.values(c->arg, status, status == 0 ? res : NULL, status == 0 ? n : 0);
  free(c);
}
static void typed_bytes_done(void *a, int status, const uint8_t *data, size_t len) {
  typed_call *c = a;
  if (c->done) return;
  c->done = 1;
  c->cb.bytes(c->arg, status, status == 0 ? data : NULL, status == 0 ? len : 0);
  free(c);
}
static void typed_key_done(void *a, int status, const char *app_id) {
  typed_call *c = a;
  if (c->done) return;
  c->done = 1;
  c->cb.key(c->arg, status, status == 0 ? app_id : NULL);
  free(c);
}
static int values_ok(const evs_crypto_value *v, size_t n) {
  if (!v || n == 0 || n > EVS_CRYPTO_MAX_VALUES) return 0;
  for (size_t i = 0; i < n; i++)
    if (v[i].size != sizeof(evs_crypto_value) || (!v[i].data && v[i].len)) return 0;
  return 1;
}
static int h_encrypt_values(evs_plugin *p, const evs_encrypt_request *req, evs_values_cb cb,
                            void *arg) {
  (void)p;
  if (!req || req->size < sizeof *req || !req->app_id || !req->curve || !cb ||
      !values_ok(req->values, req->n))
    return -EINVAL;
  evs__plugin_rec *r = typed_provider();
  if (!r) return EVS_ENOCRYPTO;
  if (!r->crypto2.encrypt_values) return -ENOTSUP;
  typed_call *c = typed_new(arg);
  if (!c) return -ENOMEM;
  c->cb.values = cb;
  int rc = r->crypto2.encrypt_values(r->state, req, typed_values_done, c);
  if (rc < 0) free(c);
  return rc < 0 ? rc : 0;
}
static int h_decrypt_values(evs_plugin *p, const evs_decrypt_request *req, evs_values_cb cb,
                            void *arg) {
  (void)p;
  if (!req || req->size < sizeof *req || !req->app_id || !cb || !values_ok(req->values, req->n))
    return -EINVAL;
  evs__plugin_rec *r = typed_provider();
  if (!r) return EVS_ENOCRYPTO;
  if (!r->crypto2.decrypt_values) return -ENOTSUP;
  typed_call *c = typed_new(arg);
  if (!c) return -ENOMEM;
  c->cb.values = cb;
  int rc = r->crypto2.decrypt_values(r->state, req, typed_values_done, c);
  if (rc < 0) free(c);
  return rc < 0 ? rc : 0;
}
static int h_file(evs_plugin *p, const evs_file_request *req, evs_bytes_cb cb, void *arg,
                  int encrypt) {
  (void)p;
  if (!req || req->size < sizeof *req || !req->app_id || (encrypt && !req->curve) || !cb ||
      (!req->data && req->len))
    return -EINVAL;
  evs__plugin_rec *r = typed_provider();
  if (!r) return EVS_ENOCRYPTO;
  int (*fn)(void *, const evs_file_request *, evs_bytes_cb, void *) =
      encrypt ? r->crypto2.encrypt_file : r->crypto2.decrypt_file;
  if (!fn) return -ENOTSUP;
  typed_call *c = typed_new(arg);
  if (!c) return -ENOMEM;
  c->cb.bytes = cb;
  int rc = fn(r->state, req, typed_bytes_done, c);
  if (rc < 0) free(c);
  return rc < 0 ? rc : 0;
}
static int h_encrypt_file(evs_plugin *p, const evs_file_request *req, evs_bytes_cb cb, void *arg) {
  return h_file(p, req, cb, arg, 1);
}
static int h_decrypt_file(evs_plugin *p, const evs_file_request *req, evs_bytes_cb cb, void *arg) {
  return h_file(p, req, cb, arg, 0);
}
static int h_check_api_key(evs_plugin *p, const evs_api_key_request *req, evs_api_key_cb cb,
                           void *arg) {
  (void)p;
  if (!req || req->size < offsetof(evs_api_key_request, recheck) || !req->key || !req->key_len ||
      !req->permission || !cb)
    return -EINVAL;
  evs__plugin_rec *r = typed_provider();
  if (!r) return EVS_ENOCRYPTO;
  if (!r->crypto2.check_api_key) return -ENOTSUP;
  /* The provider always gets the current struct: members a 1.6 caller lacks read as 0. */
  evs_api_key_request k;
  memset(&k, 0, sizeof k);
  memcpy(&k, req, req->size < sizeof k ? req->size : sizeof k);
  k.size = sizeof k;
  typed_call *c = typed_new(arg);
  if (!c) return -ENOMEM;
  c->cb.key = cb;
  int rc = r->crypto2.check_api_key(r->state, &k, typed_key_done, c);
  if (rc < 0) free(c);
  return rc < 0 ? rc : 0;
}
/* Certificates (ABI 1.7): shape checks, then the provider's typed table. */
static int h_issue_certificate(evs_plugin *p, const evs_cert_request *req, evs_bytes_cb cb,
                               void *arg) {
  (void)p;
  if (!req || req->size < sizeof *req || !req->names || req->nnames == 0 ||
      req->nnames > EVS_CERT_MAX_NAMES || !req->public_key_pem || !cb)
    return -EINVAL;
  for (size_t i = 0; i < req->nnames; i++)
    if (!req->names[i]) return -EINVAL;
  evs__plugin_rec *r = typed_provider();
  if (!r) return EVS_ENOCRYPTO;
  if (!r->crypto2.issue_certificate) return -ENOTSUP;
  typed_call *c = typed_new(arg);
  if (!c) return -ENOMEM;
  c->cb.bytes = cb;
  int rc = r->crypto2.issue_certificate(r->state, req, typed_bytes_done, c);
  if (rc < 0) free(c);
  return rc < 0 ? rc : 0;
}
static int h_ca_certificates(evs_plugin *p, evs_bytes_cb cb, void *arg) {
  (void)p;
  if (!cb) return -EINVAL;
  evs__plugin_rec *r = typed_provider();
  if (!r) return EVS_ENOCRYPTO;
  if (!r->crypto2.ca_certificates) return -ENOTSUP;
  typed_call *c = typed_new(arg);
  if (!c) return -ENOMEM;
  c->cb.bytes = cb;
  int rc = r->crypto2.ca_certificates(r->state, typed_bytes_done, c);
  if (rc < 0) free(c);
  return rc < 0 ? rc : 0;
}
static int h_register_crypto_provider2(evs_plugin *p, const evs_crypto_provider *ops) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  if (!ops || ops->size < sizeof(uint32_t)) return -EINVAL;
  evs__worker *w = evs__w;
  for (size_t i = 0; i < w->nplugins; i++)
    if (&w->plugins[i] != r && (w->plugins[i].crypto || w->plugins[i].crypto2.size)) return -EEXIST;
  /* Copy what the provider's size covers; members it does not have stay NULL. */
  evs_crypto_provider t;
  memset(&t, 0, sizeof t);
  memcpy(&t, ops, ops->size < sizeof t ? ops->size : sizeof t);
  t.size = sizeof t;
  r->crypto2 = t;
  return 0;
}

/* Takeover and streams live in stream.c (stream.h). */
static evs_stream *h_stream_connect(evs_plugin *p, const evs_stream_connect *opts,
                                    evs_stream_connect_fn cb, void *arg) {
  return evs__stream_connect(rec(p), opts, cb, arg);
}

static void *h_uv_loop(evs_plugin *p) {
  (void)p;
  return evs__w->loop;
}

static int h_read_body(evs_request *req, size_t max_bytes,
                       void (*cb)(void *arg, int status, const uint8_t *data, size_t len), void *arg);

static int stream_name(evs__plugin_rec *r, const char *stream, char *out, size_t n) {
  if (!stream || !*stream) return -EINVAL;
  size_t pl = strlen(r->name), sl = strlen(stream); /* not snprintf: once per record */
  if (pl + 1 + sl >= n) return -E2BIG;
  memcpy(out, r->name, pl);
  out[pl] = '/';
  memcpy(out + pl + 1, stream, sl + 1);
  return 0;
}

static int h_store_append(evs_plugin *p, const char *stream, const char *json) {
  if (!evs__w->store) return -ENOTSUP;
  char name[EVS_STORE_NAME_MAX + 1];
  int r = stream_name(rec(p), stream, name, sizeof name);
  if (r < 0) return r;
  return evs__appendq_add(evs__w, rec(p)->name, name, json, NULL);
}

/* 1.9: a record the response's end waits for (server.c holds it, appendq.c commits it). */
static int h_store_append_request(evs_plugin *p, evs_request *req, const char *stream,
                                  const char *json) {
  if (!req) return -EINVAL;
  if (!evs__w->store) return -ENOTSUP;
  char name[EVS_STORE_NAME_MAX + 1];
  int r = stream_name(rec(p), stream, name, sizeof name);
  if (r < 0) return r;
  int bind = evs__request_can_bind(req);
  uint64_t seq = 0;
  if ((r = evs__appendq_add(evs__w, rec(p)->name, name, json, bind ? &seq : NULL)) < 0) {
    /* The queue is full (the store far behind) or memory ran out: the response must not be
     * acknowledged without its record (a malformed record is the plugin's bug: refused). */
    if (bind && (r == -EAGAIN || r == -ENOMEM)) req->record_lost = 1;
    return r;
  }
  return bind ? evs__request_bind_record(req, seq) : req->conn ? -EALREADY : -ECONNRESET;
}

static int h_store_append_ready(evs_plugin *p) {
  (void)p;
  return evs__appendq_ready(evs__w);
}

static int query_collect(void *arg, int64_t id, int64_t ts, const char *json) {
  (void)id;
  collect_acc *a = arg;
  deferred *item = calloc(1, sizeof *item);
  if (!item) return 1;
  item->s1 = strdup(json);
  item->status = 0;
  item->len = (size_t)ts;
  *a->tail = item;
  a->tail = &item->next;
  return 0;
}
typedef void (*query_cb)(void *arg, int status, int64_t ts_ms, const char *json);
static void run_query(deferred *d) {
  query_cb cb = (query_cb)d->cb;
  for (deferred *i = d->next; i; i = i->next) cb(d->arg, 0, (int64_t)i->len, i->s1);
  cb(d->arg, d->status, 0, NULL);
}
/* A query waits for this worker's queued records to be written (appendq.c), so that it sees
 * them, then goes to the lane. */
static void query_flushed(void *arg, int status) {
  (void)status; /* not written (the store is away): the query says what it can */
  store_job *j = arg;
  if (evs__storeq_submit(evs__w, &j->j) == 0) return;
  sj_work(&j->j); /* no lane; a later turn already: answer now */
  sj_done(&j->j);
}
static int h_store_query(evs_plugin *p, const char *stream, int64_t since_ms, size_t limit,
                         query_cb cb, void *arg) {
  if (!evs__w->store) return -ENOTSUP;
  if (!cb) return -EINVAL;
  char name[EVS_STORE_NAME_MAX + 1];
  int r = stream_name(rec(p), stream, name, sizeof name);
  if (r < 0) return r;
  store_job *j = sj_new(SJ_QUERY, evs__w->store, name, NULL, run_query, (void *)cb, arg);
  if (!j) return -ENOMEM;
  j->since = since_ms;
  j->limit = limit;
  r = evs__appendq_flush(evs__w, query_flushed, j);
  if (r == 0) return 0;
  return sj_submit(j);
}

/* request_body_read: the body streams into the plugin; its end is reported on a later turn. */
typedef struct body_reader {
  evs_body_data_fn on_data;
  evs_body_end_fn on_end;
  void *arg;
  int err; /* the plugin's error: the rest of the body is discarded */
} body_reader;
static int br_data(evs_request *req, const char *data, size_t len) {
  body_reader *b = req->sink_arg;
  if (b->err) return 0;
  int r = b->on_data(b->arg, (const uint8_t *)data, len);
  if (r < 0) {
    b->err = r;
    req->close_after = 1;
    return 0;
  }
  return r == EVS_BODY_PAUSE;
}
static void run_br(deferred *d) {
  evs_request *req = d->arg;
  body_reader *b = (body_reader *)d->cb;
  int status = req->conn ? d->status : -ECONNRESET;
  b->on_end(b->arg, status);
  free(b);
  evs__request_unhold(req);
}
static void br_end(evs_request *req, int status) {
  body_reader *b = req->sink_arg;
  deferred *d = defer(run_br, (void *)b, req);
  if (!d) {
    b->on_end(b->arg, -ENOMEM);
    free(b);
    return;
  }
  d->status = status < 0 ? status : b->err;
  evs__request_hold(req);
  defer_start(d);
}
static const evs__body_sink br_sink = {br_data, br_end};
static int h_request_body_read(evs_request *req, evs_body_data_fn on_data, evs_body_end_fn on_end,
                               void *arg) {
  if (req->sink || !req->conn || !on_data || !on_end) return -EINVAL;
  if (req->info.has_content_length &&
      req->info.content_length > (uint64_t)evs__w->settings->max_body_bytes)
    return -E2BIG;
  body_reader *b = calloc(1, sizeof *b);
  if (!b) return -ENOMEM;
  b->on_data = on_data;
  b->on_end = on_end;
  b->arg = arg;
  int r = evs__request_body_attach(req, &br_sink, b);
  if (r < 0) free(b);
  return r;
}

static int h_response_status(evs_request *req, const char **ret_code) {
  if (ret_code) *ret_code = req->error_code;
  return req->status;
}

/* Node messages (node.c). */
static int h_node_subscribe(evs_plugin *p, evs_node_msg_fn fn) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  if (!fn) return -EINVAL;
  r->node_fn = fn;
  return 0;
}
static int h_node_broadcast(evs_plugin *p, const uint8_t *msg, size_t len, uint64_t timeout_ms,
                            evs_node_done_fn done, void *arg) {
  return evs__node_broadcast(rec(p), msg, len, timeout_ms, done, arg);
}

static int h_keep_fd(evs_plugin *p, const char *name, int fd) {
  return evs__node_keep_fd(rec(p), name, fd);
}
static int h_kept_fd(evs_plugin *p, const char *name) { return evs__node_kept_fd(rec(p), name); }

/* The auxiliary store: a second evs__store handle per plugin, opened in its init. */
static int h_aux_store_open(evs_plugin *p, const char *location) {
  evs__plugin_rec *r = rec(p);
  if (!r->in_init) return -EPERM;
  if (r->aux_store) return -EEXIST;
  if (!location || !*location) return -EINVAL;
  int pg = strncmp(location, "postgresql://", 13) == 0 || strncmp(location, "postgres://", 11) == 0 ||
           strchr(location, '=') != NULL;
  if (!pg) {
    /* The file's directory, like the state directory, is private to evserver. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", location);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
      *slash = 0;
      for (char *c = dir + 1; *c; c++) {
        if (*c != '/') continue;
        *c = 0;
        mkdir(dir, 0700);
        *c = '/';
      }
      mkdir(dir, 0700);
    }
  }
  evs__store_options so = {pg ? "postgresql" : "sqlite", pg ? NULL : location, pg ? location : NULL};
  char err[512];
  int rc = evs__store_open(&so, &r->aux_store, err, sizeof err);
  if (rc < 0) {
    r->aux_store = NULL;
    evs__log(EVS_LOG_ERROR, "EVS-1405", r->name, NULL, "auxiliary store (%s): %s", so.backend, err);
  }
  return rc;
}
static int h_aux_store_get(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  return store_get_in(rec(p)->aux_store, p, key, cb, arg);
}
static int h_aux_store_put(evs_plugin *p, const char *key, const uint8_t *v, size_t len,
                           evs_store_cb cb, void *arg) {
  return store_put_in(rec(p)->aux_store, p, key, v, len, 0, cb, arg);
}
static int h_aux_store_delete(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  return store_delete_in(rec(p)->aux_store, p, key, cb, arg);
}

static int h_helper_spawn(evs_plugin *p, const evs_helper_spec *spec, evs_helper_event_fn cb,
                          void *arg, evs_helper **ret) {
  return evs__helper_spawn(rec(p), spec, cb, arg, ret);
}

static const evs_host host_table = {
    .size = sizeof(evs_host),
    .abi_major = EVS_ABI_MAJOR,
    .abi_minor = EVS_ABI_MINOR,
    .log = h_log,
    .config_string = h_config_string,
    .config_int = h_config_int,
    .config_bool = h_config_bool,
    .config_dir = h_config_dir,
    .state_dir = h_state_dir,
    .add_hook = h_add_hook,
    .request_info = h_request_info,
    .request_header_at = h_request_header_at,
    .request_header = h_request_header,
    .request_set_header = h_request_set_header,
    .request_remove_header = h_request_remove_header,
    .request_set_data = h_request_set_data,
    .request_get_data = h_request_get_data,
    .respond = h_respond,
    .respond_error = h_respond_error,
    .proxy = h_proxy,
    .filter_emit = h_filter_emit,
    .http_request = h_http_request,
    .timer_start = h_timer_start,
    .timer_free = h_timer_free,
    .emit_event = h_emit_event,
    .subscribe_events = h_subscribe_events,
    .store_get = h_store_get,
    .store_put = h_store_put,
    .store_delete = h_store_delete,
    .store_scan = h_store_scan,
    .counter_add = h_counter_add,
    .crypto_call = h_crypto_call,
    .register_crypto_provider = h_register_crypto_provider,
    .takeover = evs__takeover,
    .stream_read_start = evs__stream_read_start,
    .stream_read_stop = evs__stream_read_stop,
    .stream_write = evs__stream_write,
    .stream_start_tls = evs__stream_start_tls,
    .stream_close = evs__stream_close,
    .uv_loop = h_uv_loop,
    .read_body = h_read_body,
    .store_append = h_store_append,
    .store_query = h_store_query,
    .store_append_request = h_store_append_request,
    .store_append_ready = h_store_append_ready,
    .store_put_new = h_store_put_new,
    .request_body_read = h_request_body_read,
    .request_body_resume = evs__request_body_resume,
    .response_header = evs__proxy_response_header,
    .filter_end = evs__proxy_filter_end,
    .response_status = h_response_status,
    .node_subscribe = h_node_subscribe,
    .node_broadcast = h_node_broadcast,
    .node_reply = evs__node_reply,
    .aux_store_open = h_aux_store_open,
    .aux_store_get = h_aux_store_get,
    .aux_store_put = h_aux_store_put,
    .aux_store_delete = h_aux_store_delete,
    .keep_fd = h_keep_fd,
    .kept_fd = h_kept_fd,
    .response_remove_header = evs__proxy_response_remove_header,
    .encrypt_values = h_encrypt_values,
    .decrypt_values = h_decrypt_values,
    .encrypt_file = h_encrypt_file,
    .decrypt_file = h_decrypt_file,
    .check_api_key = h_check_api_key,
    .register_crypto_provider2 = h_register_crypto_provider2,
    .stream_serve_http = evs__stream_serve_http,
    .request_tunnel = evs__request_tunnel,
    .stream_connect = h_stream_connect,
    /* 1.7: helper processes */
    .helper_spawn = h_helper_spawn,
    .helper_fd = evs__helper_fd,
    .helper_pid = evs__helper_pid,
    .helper_kill = evs__helper_kill,
    .helper_stop = evs__helper_stop,
    /* 1.7: routes */
    .add_route = h_add_route,
    .issue_certificate = h_issue_certificate,
    .ca_certificates = h_ca_certificates,
    .response_close = h_response_close,
    .stream_write_queued = evs__stream_write_queued,
    .stream_on_drain = evs__stream_on_drain,
    .add_tls_identity = h_add_tls_identity,
    .response_add_header = h_response_add_header,
    .add_tls_passthrough = h_add_tls_passthrough,
};

void evs__host_emit_draining(const char *reason) {
  deferred *d = defer(run_event, NULL, NULL);
  if (!d) return;
  d->s1 = strdup("worker.draining");
  char json[64];
  snprintf(json, sizeof json, "{\"reason\":\"%s\"}", reason);
  d->s2 = strdup(json);
  defer_start(d);
}

const evs_host *evs__host_table(void) { return &host_table; }

void evs__host_forget(evs__plugin_rec *r) {
  evs__helpers_release(r); /* after fini or a failed init: no callback into the plugin */
  r->crypto = NULL;
  memset(&r->crypto2, 0, sizeof r->crypto2);
  r->node_fn = NULL;
  evs__storeq_drain(evs__w); /* no call the plugin queued still uses its auxiliary store */
  evs__store_close(r->aux_store);
  r->aux_store = NULL;
  while (r->subs) {
    evs__subscription *sub = r->subs;
    r->subs = sub->next;
    free(sub->prefix);
    free(sub);
  }
}

void evs__host_done(void) {
  while (paths) {
    path_cache *c = paths;
    paths = c->next;
    free(c->key);
    free(c->value);
    free(c);
  }
}

/* read_body: collect the whole body (bounded) and hand it over on the next loop turn. */
#define RB_FIRST_MAX 65536
static int rb_data(evs_request *req, const char *data, size_t len) {
  if (req->rb_overflow) return 0;
  if (req->rb_len + len > req->rb_max) {
    req->rb_overflow = 1; /* reported once the body ended, as -E2BIG */
    return 0;
  }
  if (req->rb_len + len > req->rb_cap) {
    /* A small body of known length gets one buffer of its size (a 16 KiB buffer for a
     * 400-byte body was a large allocation at every request). Never more than RB_FIRST_MAX up
     * front: a Content-Length alone must not make the worker allocate what was not sent. */
    size_t ncap = 16384;
    if (req->rb_cap)
      ncap = req->rb_cap * 2;
    else if (req->info.has_content_length && req->info.content_length > 0 &&
             req->info.content_length <= RB_FIRST_MAX)
      ncap = (size_t)req->info.content_length;
    while (ncap < req->rb_len + len) ncap *= 2;
    if (ncap > req->rb_max) ncap = req->rb_max;
    char *nb = realloc(req->rb_buf, ncap);
    if (!nb) {
      req->rb_overflow = 1;
      return 0;
    }
    req->rb_buf = nb;
    req->rb_cap = ncap;
  }
  memcpy(req->rb_buf + req->rb_len, data, len);
  req->rb_len += len;
  return 0;
}
static void run_rb(deferred *d) {
  evs_request *req = d->arg;
  void (*cb)(void *, int, const uint8_t *, size_t) = req->rb_cb;
  req->rb_cb = NULL;
  /* The client may have gone meanwhile: then the handler learns it instead of getting a body. */
  int status = req->conn ? d->status : -ECONNRESET;
  if (cb) cb(req->rb_arg, status, (const uint8_t *)req->rb_buf, status < 0 ? 0 : req->rb_len);
  evs__request_unhold(req);
}
static void rb_end(evs_request *req, int status) {
  /* Never call back from inside read_body or the connection's read path: the handler may answer
   * at once, and the connection must first finish consuming this request's bytes. */
  deferred *d = defer(run_rb, NULL, req);
  if (!d) {
    void (*cb)(void *, int, const uint8_t *, size_t) = req->rb_cb;
    req->rb_cb = NULL;
    if (cb) cb(req->rb_arg, -ENOMEM, NULL, 0);
    return;
  }
  d->status = status < 0 ? status : req->rb_overflow ? -E2BIG : 0;
  evs__request_hold(req);
  defer_start(d);
}
static const evs__body_sink rb_sink = {rb_data, rb_end};
static int h_read_body(evs_request *req, size_t max_bytes,
                       void (*cb)(void *arg, int status, const uint8_t *data, size_t len), void *arg) {
  if (req->sink || !req->conn || !cb) return -EINVAL;
  if (max_bytes == 0 || max_bytes > (size_t)evs__w->settings->max_body_bytes)
    max_bytes = (size_t)evs__w->settings->max_body_bytes;
  if (req->info.has_content_length && req->info.content_length > max_bytes) return -E2BIG;
  req->rb_max = max_bytes;
  req->rb_cb = cb;
  req->rb_arg = arg;
  return evs__request_body_attach(req, &rb_sink, NULL);
}

