/*
 * bench_enclave: fields per second through the full host -> enclave path. It is a minimal host:
 * it loads the real enclave plugin (enclave.so) through the public ABI with a fake service table,
 * so the plugin spawns a real, sandboxed evserver-enclave; it creates an app with POST /apps on
 * the admin route (the enclave creates and unlocks it); then it calls the plugin's crypto
 * provider exactly as the host's crypto_call does for the Inbound Relay: op "encrypt" or
 * "decrypt", a payload of protocol items, batches of --batches fields, several calls in flight
 * (pipelined on one libuv loop) so that the enclave is never idle.
 *
 *   encrypt             [app, curve, "", "s:<16 digits>" x batch]: the enclave's encryptor keeps
 *                       one ephemeral key per 15 s window ("cached")
 *   decrypt, hit        ev: strings the enclave encrypted (one ephemeral key): key cache hits
 *   decrypt, miss       ev: strings made here with a new ephemeral key each, more of them than
 *                       the enclave's LRU key cache holds, sent in turn: every field misses
 *
 * The enclave is single-threaded, so its CPU time is "one core": the primary figure is fields
 * per enclave CPU second (its process CPU clock, which includes its reads and writes), the
 * median of --runs runs that each last --seconds of enclave CPU. Beside it: the wall-clock rate,
 * host (this process: plugin, ep_client, libuv, payloads) CPU microseconds per field, how busy
 * the enclave was (its CPU / wall clock) and how long it was queued, ready but waiting for a CPU
 * that other processes held (/proc/PID/schedstat): busy + queued near 100% means it never
 * lacked work. bench/crypto/run builds this and runs `openssl speed` beside it.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "evs_crypto.h"
#include "evserver/evs_plugin.h"

#define DIE(...)                                                                                  \
  do {                                                                                            \
    fprintf(stderr, "bench_enclave: " __VA_ARGS__);                                               \
    exit(1);                                                                                      \
  } while (0)

static const char value[] = "4242424242424242"; /* a 16-digit card number, as bench_crypto */
static const char field[] = "s:4242424242424242"; /* the same, as an ENCRYPT item */

static int runs = 5;
static double seconds = 0.5;
static int verbose;
static int do_encrypt = 1, do_hit = 1, do_miss = 1;
static uv_loop_t *loop;

/* ---- the fake host ---------------------------------------------------------------------------
 * Only what the enclave plugin uses at init, for POST /apps and for crypto calls. Callbacks that
 * the ABI says run later (store, body, request end) are deferred to the loop, as the host does. */

struct evs_plugin {
  int unused;
};
struct evs_request {
  evs_request_info info;
  const char *body;
  void *data;
  void (*free_fn)(void *);
  int status;
  char *resp;
  int ended;
};
struct evs_timer {
  uv_timer_t t;
  evs_timer_fn cb;
  void *arg;
};

static struct evs_plugin the_plugin;
static const char *cfg_binary, *cfg_state_dir;
static void *plugin_state;
static evs_hook_fn route_hook;
static evs_crypto_provider_fn provider;
static int enclave_up;

typedef struct store_rec {
  struct store_rec *next;
  char *key;
  uint8_t *val;
  size_t len;
} store_rec;
static store_rec *store;

/* One deferred callback: fn(l) on the next loop iteration, then freed. */
typedef struct later {
  uv_timer_t t;
  void (*fn)(struct later *l);
  void *cb, *arg;
  char *key;
} later;

static void close_free(uv_handle_t *h) { free(h); }

static void on_later(uv_timer_t *t) {
  later *l = (later *)t;
  l->fn(l);
  free(l->key);
  uv_close((uv_handle_t *)t, close_free);
}

static int defer(void (*fn)(later *), void *cb, void *arg, const char *key) {
  later *l = calloc(1, sizeof *l);
  if (!l || (key && !(l->key = strdup(key)))) DIE("out of memory\n");
  l->fn = fn;
  l->cb = cb;
  l->arg = arg;
  uv_timer_init(loop, &l->t);
  uv_timer_start(&l->t, on_later, 0, 0);
  return 0;
}

static void h_log(evs_plugin *p, evs_request *req, evs_log_level level, const char *fmt, ...) {
  if (level > EVS_LOG_WARN && !verbose) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "enclave plugin: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

static const char *h_config_string(evs_plugin *p, const char *key) {
  if (strcmp(key, "enclave_binary") == 0) return cfg_binary;
  if (strcmp(key, "api_listener") == 0) return "api";
  return NULL; /* seal_key: <state dir>/enclave-seal.key; no credentials directory */
}
static int64_t h_config_int(evs_plugin *p, const char *key) {
  return strcmp(key, "request_timeout") == 0 ? 60000 : 0;
}
static const char *h_state_dir(evs_plugin *p) { return cfg_state_dir; }
static void *h_uv_loop(evs_plugin *p) { return loop; }
static int h_add_hook(evs_plugin *p, evs_phase phase, evs_hook_fn fn) {
  if (phase == EVS_PHASE_ROUTE) route_hook = fn;
  return 0;
}
/* The enclave plugin serves its admin endpoints (POST /apps, all this benchmark calls) as
 * routes of role "admin" (ABI 1.7), all with one handler. */
static int h_add_route(evs_plugin *p, const evs_route *r) {
  (void)p;
  if (strcmp(r->role, "admin") == 0) route_hook = r->handler;
  return 0;
}
/* The typed provider (ABI 1.6) is not what this benchmark drives: accepted and unused. */
static int h_register_crypto_provider2(evs_plugin *p, const evs_crypto_provider *ops) {
  (void)p;
  (void)ops;
  return 0;
}
static int h_register_crypto_provider(evs_plugin *p, evs_crypto_provider_fn fn) {
  provider = fn;
  return 0;
}
/* The plugin counts each enclave start once the process has answered HELLO. */
static int h_counter_add(evs_plugin *p, const char *name, uint64_t delta) {
  if (strcmp(name, "enclave_starts") == 0) enclave_up = 1;
  return 0;
}

static store_rec *store_find(const char *key) {
  for (store_rec *r = store; r; r = r->next)
    if (strcmp(r->key, key) == 0) return r;
  return NULL;
}
static void run_get(later *l) {
  store_rec *r = store_find(l->key);
  ((evs_store_cb)l->cb)(l->arg, r ? 0 : -ENOENT, r ? r->val : NULL, r ? r->len : 0);
}
static int h_store_get(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  return defer(run_get, (void *)cb, arg, key);
}
static void run_put(later *l) {
  if (l->cb) ((evs_store_cb)l->cb)(l->arg, 0, NULL, 0);
}
static int h_store_put(evs_plugin *p, const char *key, const uint8_t *v, size_t len,
                       uint64_t ttl_s, evs_store_cb cb, void *arg) {
  store_rec *r = store_find(key);
  if (!r) {
    if (!(r = calloc(1, sizeof *r)) || !(r->key = strdup(key))) DIE("out of memory\n");
    r->next = store;
    store = r;
  }
  free(r->val);
  if (!(r->val = malloc(len ? len : 1))) DIE("out of memory\n");
  memcpy(r->val, v, len);
  r->len = len;
  return defer(run_put, (void *)cb, arg, NULL);
}
static void run_scan(later *l) {
  evs_store_scan_cb cb = (evs_store_scan_cb)l->cb;
  for (store_rec *r = store; r; r = r->next)
    if (strncmp(r->key, l->key, strlen(l->key)) == 0) cb(l->arg, 0, r->key, r->val, r->len);
  cb(l->arg, 0, NULL, NULL, 0);
}
static int h_store_scan(evs_plugin *p, const char *prefix, evs_store_scan_cb cb, void *arg) {
  return defer(run_scan, (void *)cb, arg, prefix);
}
static int h_store_append(evs_plugin *p, const char *stream, const char *json) { return 0; }
static void run_deleted(later *l) {
  if (l->cb) ((evs_store_cb)l->cb)(l->arg, 0, NULL, 0);
}
static int h_store_delete(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  for (store_rec **pp = &store; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->key, key) == 0) {
      store_rec *r = *pp;
      *pp = r->next;
      free(r->key);
      free(r->val);
      free(r);
      break;
    }
  return defer(run_deleted, (void *)cb, arg, NULL);
}

/* ABI 1.2: the share store is the same in-memory map under "aux/"; no other workers. */
static int h_aux_store_open(evs_plugin *p, const char *location) { return 0; }
static int aux_key(const char *key, char *out, size_t n) {
  int w = snprintf(out, n, "aux/%s", key);
  return w < 0 || (size_t)w >= n ? -E2BIG : 0;
}
static int h_aux_store_get(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  char k[1100];
  return aux_key(key, k, sizeof k) < 0 ? -E2BIG : h_store_get(p, k, cb, arg);
}
static int h_aux_store_put(evs_plugin *p, const char *key, const uint8_t *v, size_t len,
                           evs_store_cb cb, void *arg) {
  char k[1100];
  return aux_key(key, k, sizeof k) < 0 ? -E2BIG : h_store_put(p, k, v, len, 0, cb, arg);
}
static int h_aux_store_delete(evs_plugin *p, const char *key, evs_store_cb cb, void *arg) {
  char k[1100];
  return aux_key(key, k, sizeof k) < 0 ? -E2BIG : h_store_delete(p, k, cb, arg);
}
static int h_node_subscribe(evs_plugin *p, evs_node_msg_fn fn) { return 0; }
static void run_node_done(later *l) { ((evs_node_done_fn)l->cb)(l->arg, 0, 0); }
static int h_node_broadcast(evs_plugin *p, const uint8_t *msg, size_t len, uint64_t timeout_ms,
                            evs_node_done_fn done, void *arg) {
  return defer(run_node_done, (void *)done, arg, NULL);
}
static void h_node_reply(evs_node_msg *m, int status) {}
/* One process, no master: nothing is kept, so the enclave ends with the benchmark. */
static int h_keep_fd(evs_plugin *p, const char *name, int fd) { return -ENOTCONN; }
static int h_kept_fd(evs_plugin *p, const char *name) { return -ENOENT; }

static void on_timer(uv_timer_t *t) {
  evs_timer *et = (evs_timer *)t;
  et->cb(et->arg);
}
static evs_timer *h_timer_start(evs_plugin *p, uint64_t timeout_ms, uint64_t repeat_ms,
                                evs_timer_fn cb, void *arg) {
  evs_timer *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->cb = cb;
  t->arg = arg;
  uv_timer_init(loop, &t->t);
  uv_timer_start(&t->t, on_timer, timeout_ms, repeat_ms);
  return t;
}
static void h_timer_free(evs_timer *t) {
  if (!t) return;
  uv_timer_stop(&t->t);
  uv_close((uv_handle_t *)&t->t, close_free);
}

static const evs_request_info *h_request_info(evs_request *req) { return &req->info; }
static int h_request_header(evs_request *req, const char *name, evs_header *ret) {
  return -ENOENT;
}
static void h_request_set_data(evs_request *req, evs_plugin *p, void *data,
                               void (*free_fn)(void *)) {
  req->data = data;
  req->free_fn = free_fn;
}
static void run_body(later *l) { /* the body travels as the deferred call's key */
  ((void (*)(void *, int, const uint8_t *, size_t))l->cb)(l->arg, 0, (const uint8_t *)l->key,
                                                          strlen(l->key));
}
static int h_read_body(evs_request *req, size_t max, void (*cb)(void *, int, const uint8_t *,
                                                                 size_t),
                       void *arg) {
  return defer(run_body, (void *)cb, arg, req->body);
}
/* The request ends after the response, on the loop: then the plugin's data is released. */
static void run_end(later *l) {
  evs_request *req = l->arg;
  if (req->free_fn) req->free_fn(req->data);
  req->ended = 1;
}
static int h_respond(evs_request *req, int status, const evs_header *h, size_t n,
                     const uint8_t *body, size_t len) {
  req->status = status;
  if (!(req->resp = strndup((const char *)body, len))) DIE("out of memory\n");
  return defer(run_end, NULL, req, NULL);
}
static int h_respond_error(evs_request *req, int status, const char *code, const char *detail) {
  req->status = status;
  fprintf(stderr, "bench_enclave: %d %s: %s\n", status, code, detail);
  return defer(run_end, NULL, req, NULL);
}

/* As the host's crypto_call (core/plugin.c): route to the provider, which calls done once. */
static int h_crypto_call(evs_plugin *p, const evs_crypto_request *creq, evs_crypto_cb cb,
                         void *arg) {
  return provider(plugin_state, creq, cb, arg);
}

static const evs_host host = {
    .size = sizeof(evs_host),
    .abi_major = EVS_ABI_MAJOR,
    .abi_minor = EVS_ABI_MINOR,
    .log = h_log,
    .config_string = h_config_string,
    .config_int = h_config_int,
    .state_dir = h_state_dir,
    .add_hook = h_add_hook,
    .add_route = h_add_route,
    .request_info = h_request_info,
    .request_header = h_request_header,
    .request_set_data = h_request_set_data,
    .respond = h_respond,
    .respond_error = h_respond_error,
    .timer_start = h_timer_start,
    .timer_free = h_timer_free,
    .store_get = h_store_get,
    .store_put = h_store_put,
    .store_scan = h_store_scan,
    .counter_add = h_counter_add,
    .crypto_call = h_crypto_call,
    .register_crypto_provider = h_register_crypto_provider,
    .register_crypto_provider2 = h_register_crypto_provider2,
    .uv_loop = h_uv_loop,
    .read_body = h_read_body,
    .store_append = h_store_append,
    .store_delete = h_store_delete,
    .node_subscribe = h_node_subscribe,
    .node_broadcast = h_node_broadcast,
    .node_reply = h_node_reply,
    .aux_store_open = h_aux_store_open,
    .aux_store_get = h_aux_store_get,
    .aux_store_put = h_aux_store_put,
    .aux_store_delete = h_aux_store_delete,
    .keep_fd = h_keep_fd,
    .kept_fd = h_kept_fd,
};

/* A ref'd ticker keeps uv_run blocking while the plugin's own handles are unref'd. */
static uv_timer_t ticker;
static void (*tick_fn)(void);
static void on_tick(uv_timer_t *t) {
  if (tick_fn) tick_fn();
}

static void run_until(int *flag, const char *what) {
  double t0 = (double)uv_now(loop);
  while (!*flag) {
    uv_run(loop, UV_RUN_ONCE);
    if ((double)uv_now(loop) - t0 > 20000) DIE("timed out waiting for %s\n", what);
  }
}

/* ---- clocks ---------------------------------------------------------------------------------- */

static double clock_s(clockid_t id) {
  struct timespec ts;
  if (clock_gettime(id, &ts) < 0) DIE("clock_gettime: %s\n", strerror(errno));
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static clockid_t enclave_clock;

/* The enclave process: our child whose name is evserver-enclave (comm is cut at 15). */
static pid_t find_enclave(void) {
  DIR *d = opendir("/proc");
  if (!d) DIE("/proc: %s\n", strerror(errno));
  pid_t found = 0;
  struct dirent *de;
  while ((de = readdir(d)) && !found) {
    char path[300], buf[512];
    snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
    FILE *f = fopen(path, "re");
    if (!f) continue;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    int ppid;
    if (strstr(buf, "(evserver-enclav") && rp && sscanf(rp + 2, "%*c %d", &ppid) == 1 &&
        ppid == getpid())
      found = (pid_t)atoi(de->d_name);
  }
  closedir(d);
  return found;
}

/* ---- the app --------------------------------------------------------------------------------- */

static char app_id[64];
static uint8_t app_pub[2][EVS_EC_PUB_LEN]; /* by evs_ec_curve */

static void pub_from_json(json_t *o, const char *key, uint8_t *out) {
  const char *s = json_string_value(json_object_get(o, key));
  size_t n;
  if (!s || evs_ec_b64_decode(s, strlen(s), out, EVS_EC_PUB_LEN, &n) != EVS_EC_OK ||
      n != EVS_EC_PUB_LEN)
    DIE("POST /apps: no usable %s\n", key);
}

static void create_app(void) {
  evs_request req = {.info = {.size = sizeof req.info,
                              .method = "POST",
                              .target = "/apps",
                              .path = "/apps",
                              .query = "",
                              .host = "localhost",
                              .client_addr = "127.0.0.1",
                              .request_id = "bench-1",
                              .version_minor = 1,
                              .listener = "admin"},
                     .body = "{}"};
  if (route_hook(plugin_state, &req) != EVS_HANDLED) DIE("POST /apps was declined\n");
  run_until(&req.ended, "POST /apps");
  if (req.status != 201 || !req.resp) DIE("POST /apps answered %d\n", req.status);
  json_t *o = json_loads(req.resp, 0, NULL);
  const char *id = json_string_value(json_object_get(o, "appId"));
  if (!id || strlen(id) >= sizeof app_id) DIE("POST /apps: no appId\n");
  snprintf(app_id, sizeof app_id, "%s", id);
  pub_from_json(o, "ecdhKey", app_pub[EVS_EC_SECP256K1]);
  pub_from_json(o, "ecdhP256Key", app_pub[EVS_EC_P256]);
  json_decref(o);
  free(req.resp);
}

/* ---- payloads -------------------------------------------------------------------------------- */

typedef struct buf {
  uint8_t *p;
  size_t len, cap;
} buf;

static void put_item(buf *b, const void *data, size_t len) {
  if (b->len + 4 + len > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + 4 + len) cap *= 2;
    if (!(b->p = realloc(b->p, cap))) DIE("out of memory\n");
    b->cap = cap;
  }
  b->p[b->len] = (uint8_t)len;
  b->p[b->len + 1] = (uint8_t)(len >> 8);
  b->p[b->len + 2] = (uint8_t)(len >> 16);
  b->p[b->len + 3] = (uint8_t)(len >> 24);
  memcpy(b->p + b->len + 4, data, len);
  b->len += 4 + len;
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A pool of ev: strings, used in turn. */
typedef struct pool {
  char **s;
  size_t *len;
  size_t n;
} pool;

static void pool_add(pool *p, const uint8_t *s, size_t len) {
  if (!(p->s = realloc(p->s, (p->n + 1) * sizeof *p->s)) ||
      !(p->len = realloc(p->len, (p->n + 1) * sizeof *p->len)) ||
      !(p->s[p->n] = strndup((const char *)s, len)))
    DIE("out of memory\n");
  p->len[p->n++] = len;
}

static void pool_free(pool *p) {
  for (size_t i = 0; i < p->n; i++) free(p->s[i]);
  free(p->s);
  free(p->len);
  memset(p, 0, sizeof *p);
}

/* ---- the pipelined stream of crypto calls ------------------------------------------------------ */

enum kind { K_ENCRYPT, K_HIT, K_MISS };

typedef struct stream {
  enum kind kind;
  const char *curve; /* protocol name */
  size_t batch, depth;
  pool *src;         /* decrypt: the strings, in turn */
  size_t cursor;
  pool *keep;        /* encrypt: collect the results here (NULL: discard) */
  buf payload;       /* reused: the provider copies it into its message */
  size_t inflight;
  int running;
  uint64_t fields;   /* fields answered with status 0 */
} stream;

static void issue(stream *s);
static void measure_check(void);
static int check_due; /* set by the ticker: the next reply checks the clocks */

static void on_reply(void *arg, int status, const uint8_t *res, size_t len) {
  stream *s = arg;
  s->inflight--;
  if (status != 0) DIE("crypto call failed: status %d\n", status);
  size_t off = 0, n = 0;
  while (off < len) {
    if (len - off < 8) DIE("malformed reply\n");
    uint32_t il = get_u32(res + off);
    if (il > len - off - 4 || il < 4 || get_u32(res + off + 4) != 0)
      DIE("a field failed (item %zu)\n", n);
    if (s->keep) pool_add(s->keep, res + off + 8, il - 4);
    off += 4 + il;
    n++;
  }
  if (n != s->batch) DIE("%zu fields answered, %zu sent\n", n, s->batch);
  s->fields += n;
  if (check_due) {
    check_due = 0;
    measure_check();
  }
  if (s->running) issue(s);
}

static void issue(stream *s) {
  while (s->inflight < s->depth) {
    buf *b = &s->payload;
    b->len = 0;
    put_item(b, app_id, strlen(app_id));
    if (s->kind == K_ENCRYPT) {
      put_item(b, s->curve, strlen(s->curve));
      put_item(b, "", 0);
      for (size_t i = 0; i < s->batch; i++) put_item(b, field, sizeof field - 1);
    } else {
      for (size_t i = 0; i < s->batch; i++) {
        put_item(b, s->src->s[s->cursor], s->src->len[s->cursor]);
        if (++s->cursor == s->src->n) s->cursor = 0;
      }
    }
    evs_crypto_request cr = {sizeof cr, s->kind == K_ENCRYPT ? "encrypt" : "decrypt", b->p,
                             b->len};
    int r = host.crypto_call(&the_plugin, &cr, on_reply, s);
    if (r < 0) DIE("crypto_call: %d\n", r);
    s->inflight++;
  }
}

static void drain(stream *s) {
  s->running = 0;
  while (s->inflight) uv_run(loop, UV_RUN_ONCE);
}

/* ---- measurement ------------------------------------------------------------------------------- */

typedef struct sample {
  double enc_cpu, host_cpu, wall, enc_wait;
  uint64_t fields;
} sample;

static char schedstat_path[64];

/* Seconds the enclave was ready to run but waited for a CPU (other processes had it): on a
 * shared machine this, not a lack of work, is what keeps "busy" below 100%. */
static double enclave_wait_s(void) {
  FILE *f = fopen(schedstat_path, "re");
  unsigned long long run = 0, wait = 0;
  if (!f) return 0;
  if (fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
  fclose(f);
  return (double)wait / 1e9;
}

static sample snap(const stream *s) {
  sample x = {clock_s(enclave_clock), clock_s(CLOCK_PROCESS_CPUTIME_ID), clock_s(CLOCK_MONOTONIC),
              enclave_wait_s(), s->fields};
  return x;
}

/* The window starts and ends as a reply has been counted, so that its fields and its time
 * match even when one call takes many milliseconds (misses in batches of 512). It ends after
 * --seconds of enclave CPU and at least two calls, or after a long wall-clock limit. */
static stream *cur;
static sample t_start;
static int phase, phase_done; /* 0 warm-up, 1 measuring */
static sample t_end;

static void measure_check(void) {
  if (!cur || phase_done) return;
  sample now = snap(cur);
  double limit = 10 * seconds < 30 ? 30 : 10 * seconds;
  if (phase == 0) {
    if (now.wall - t_start.wall >= 0.05) {
      t_start = now;
      phase = 1;
    }
  } else if ((now.enc_cpu - t_start.enc_cpu >= seconds &&
              now.fields - t_start.fields >= 2 * cur->batch) ||
             now.wall - t_start.wall >= limit) {
    t_end = now;
    phase_done = 1;
  }
}

static void measure_tick(void) { check_due = 1; }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return v[n / 2];
}

static void bench(const char *curve_name, const char *what, stream *s) {
  double rate[64], wall[64], host_us[64], busy[64], waited[64];
  for (int r = 0; r < runs; r++) {
    s->fields = 0;
    s->running = 1;
    cur = s;
    phase = phase_done = check_due = 0;
    t_start = snap(s);
    tick_fn = measure_tick;
    issue(s);
    while (!phase_done) uv_run(loop, UV_RUN_ONCE);
    tick_fn = NULL;
    cur = NULL;
    drain(s);
    double f = (double)(t_end.fields - t_start.fields);
    if (f <= 0) DIE("no field was answered in a run\n");
    rate[r] = f / (t_end.enc_cpu - t_start.enc_cpu);
    wall[r] = f / (t_end.wall - t_start.wall);
    host_us[r] = (t_end.host_cpu - t_start.host_cpu) / f * 1e6;
    busy[r] = (t_end.enc_cpu - t_start.enc_cpu) / (t_end.wall - t_start.wall) * 100;
    waited[r] = (t_end.enc_wait - t_start.enc_wait) / (t_end.wall - t_start.wall) * 100;
  }
  double m = median(rate, runs);
  printf("%-9s  %-17s %5zu %6zu  %10.0f /s %8.2f us   %10.0f /s   %6.2f us   %4.0f%%  %4.0f%%\n",
         curve_name, what, s->batch, s->depth, m, 1e6 / m, median(wall, runs),
         median(host_us, runs), median(busy, runs), median(waited, runs));
  fflush(stdout);
}

static size_t depth_for(size_t batch, size_t want) {
  if (want) return want;
  size_t d = 2048 / batch; /* about 2048 fields in flight, 4 calls at least */
  return d < 4 ? 4 : d > 64 ? 64 : d;
}

/* Strings that each have their own ephemeral key (more than the enclave's cache holds). */
static void make_miss_pool(evs_ec_curve curve, size_t n, pool *p) {
  evs_ec_encryptor_config cfg;
  evs_ec_encryptor *e = NULL;
  evs_ec_encryptor_config_init(&cfg);
  cfg.curve = curve;
  memcpy(cfg.app_public_key, app_pub[curve], EVS_EC_PUB_LEN);
  if (evs_ec_encryptor_new(&cfg, &e) != EVS_EC_OK) DIE("encryptor\n");
  char s[256];
  size_t len;
  for (size_t i = 0; i < n; i++) {
    evs_ec_encryptor_rotate(e);
    if (evs_ec_encrypt(e, EVS_EC_STRING, (const uint8_t *)value, 16, NULL, s, sizeof s, &len) !=
        EVS_EC_OK)
      DIE("encrypt\n");
    pool_add(p, (const uint8_t *)s, len);
  }
  evs_ec_encryptor_free(e);
}

#define MISS_POOL 6000 /* > 4096, the enclave's key cache (keys.c: the decryptor's default) */

static void bench_curve(evs_ec_curve curve, const size_t *batches, size_t nb, size_t depth) {
  const char *proto = curve == EVS_EC_P256 ? "prime256v1" : "secp256k1";
  const char *name = curve == EVS_EC_P256 ? "P-256" : "secp256k1";
  pool hit = {0}, miss = {0};

  /* The hit pool: 1024 strings from the enclave's own encryptor (one ephemeral key). */
  stream mk = {.kind = K_ENCRYPT, .curve = proto, .batch = 512, .depth = 2, .keep = &hit};
  issue(&mk);
  drain(&mk);
  free(mk.payload.p);
  if (do_miss) make_miss_pool(curve, MISS_POOL, &miss);

  for (size_t i = 0; i < nb && do_encrypt; i++) {
    stream s = {.kind = K_ENCRYPT, .curve = proto, .batch = batches[i],
                .depth = depth_for(batches[i], depth)};
    bench(name, "encrypt", &s);
    free(s.payload.p);
  }
  for (size_t i = 0; i < nb && do_hit; i++) {
    stream s = {.kind = K_HIT, .batch = batches[i], .depth = depth_for(batches[i], depth),
                .src = &hit};
    bench(name, "decrypt, hit", &s);
    free(s.payload.p);
  }
  for (size_t i = 0; i < nb && do_miss; i++) {
    stream s = {.kind = K_MISS, .batch = batches[i], .depth = depth_for(batches[i], depth),
                .src = &miss};
    bench(name, "decrypt, miss", &s);
    free(s.payload.p);
  }
  pool_free(&hit);
  pool_free(&miss);
}

static void usage(void) {
  fprintf(stderr,
          "usage: bench_enclave --enclave PATH --plugin PATH [--runs N] [--seconds S]\n"
          "                     [--batches 1,16,512] [--depth D] [--curve p256|secp256k1]\n"
          "                     [--ops encrypt,hit,miss] [--enclave-cpu N] [--verbose]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *plugin_path = NULL, *curves = "both", *batch_list = "1,16,512";
  size_t depth = 0;
  int enclave_cpu = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--verbose") == 0) {
      verbose = 1;
      continue;
    }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (strcmp(a, "--enclave") == 0) cfg_binary = v;
    else if (strcmp(a, "--plugin") == 0) plugin_path = v;
    else if (strcmp(a, "--runs") == 0) runs = atoi(v);
    else if (strcmp(a, "--seconds") == 0) seconds = atof(v);
    else if (strcmp(a, "--batches") == 0) batch_list = v;
    else if (strcmp(a, "--depth") == 0) depth = (size_t)atoi(v);
    else if (strcmp(a, "--curve") == 0) curves = v;
    else if (strcmp(a, "--enclave-cpu") == 0) enclave_cpu = atoi(v);
    else if (strcmp(a, "--ops") == 0) {
      do_encrypt = strstr(v, "encrypt") != NULL;
      do_hit = strstr(v, "hit") != NULL;
      do_miss = strstr(v, "miss") != NULL;
    }
    else usage();
  }
  if (!cfg_binary || !plugin_path || runs < 1 || runs > 64 || seconds <= 0) usage();
  size_t batches[16], nb = 0;
  for (const char *p = batch_list; *p && nb < 16;) {
    long b = strtol(p, (char **)&p, 10);
    if (b < 1 || b > 4000) usage(); /* the protocol's 4096 items, less the call's own */
    batches[nb++] = (size_t)b;
    if (*p == ',') p++;
    else if (*p) usage();
  }

  char dir[] = "/tmp/bench-enclave-XXXXXX";
  if (!mkdtemp(dir)) DIE("mkdtemp: %s\n", strerror(errno));
  cfg_state_dir = dir;
  unsetenv("CREDENTIALS_DIRECTORY");
  loop = uv_default_loop();
  uv_timer_init(loop, &ticker);
  uv_timer_start(&ticker, on_tick, 2, 2);

  void *so = dlopen(plugin_path, RTLD_NOW | RTLD_LOCAL);
  if (!so) DIE("%s\n", dlerror());
  const evs_plugin_descriptor *d = dlsym(so, EVS_PLUGIN_DESCRIPTOR_SYMBOL);
  if (!d || d->magic != EVS_PLUGIN_MAGIC || d->abi_major != EVS_ABI_MAJOR)
    DIE("%s is not an evserver plugin of ABI %d\n", plugin_path, EVS_ABI_MAJOR);
  if (d->init(&host, &the_plugin, &plugin_state) != 0) DIE("the enclave plugin's init failed\n");
  if (!provider || !route_hook) DIE("the enclave plugin registered no provider or route\n");
  run_until(&enclave_up, "the enclave's HELLO");
  pid_t pid = find_enclave();
  if (!pid) DIE("no evserver-enclave child found\n");
  if (clock_getcpuclockid(pid, &enclave_clock) != 0) DIE("no CPU clock for the enclave\n");
  snprintf(schedstat_path, sizeof schedstat_path, "/proc/%d/schedstat", (int)pid);
  if (enclave_cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(enclave_cpu, &set);
    if (sched_setaffinity(pid, sizeof set, &set) < 0)
      fprintf(stderr, "bench_enclave: cannot pin the enclave: %s\n", strerror(errno));
  }
  create_app();

  printf("median of %d runs of %.2f enclave CPU seconds each, 16-byte values; enclave pid %d\n",
         runs, seconds, (int)pid);
  printf("%-9s  %-17s %5s %6s  %13s %11s   %13s   %9s   %5s %6s\n", "curve", "operation", "batch",
         "depth", "per encl. CPU", "encl. CPU", "wall clock", "host CPU", "busy", "queued");
  fflush(stdout);
  if (strcmp(curves, "secp256k1") != 0) bench_curve(EVS_EC_P256, batches, nb, depth);
  if (strcmp(curves, "p256") != 0) bench_curve(EVS_EC_SECP256K1, batches, nb, depth);

  d->fini(plugin_state);
  uv_timer_stop(&ticker);
  uv_close((uv_handle_t *)&ticker, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  char path[sizeof dir + 32];
  snprintf(path, sizeof path, "%s/enclave-seal.key", dir);
  unlink(path);
  rmdir(dir);
  return 0;
}
