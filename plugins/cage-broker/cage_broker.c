/*
 * cage_broker.c: the Cages product's control side (docs/cages.md, README.md here): the plugin's
 * configuration, cage records and images in the store, the admin routes behind `evctl cage`
 * (deploy, list, delete, logs, env, cert), and the sync loop through which every worker of
 * every node runs each deployed cage (the runner, cage_run.h) and switches to a redeployed
 * image once it is READY. The HTTPS front and the in-cage Encryption API are cage_front.c.
 *
 * Admin routes (role admin, the admin socket):
 *   GET    /cages[?app=<appId>]                     every cage, with its instances' states
 *   GET    /cages/<app>/<name>                      one cage
 *   GET    /cages/<app>/<name>/deployments          its deployments, newest first
 *   PUT    /cages/<app>/<name>                      deploy {image, size, chunks, settings}
 *   DELETE /cages/<app>/<name>
 *   GET    /cages/<app>/<name>/env                  the environment (secrets as ev: strings)
 *   PUT    /cages/<app>/<name>/env/<KEY>            {value, secret}
 *   DELETE /cages/<app>/<name>/env/<KEY>
 *   GET    /cages/<app>/<name>/certs                uploaded signing certificates, locks
 *   POST   /cages/<app>/<name>/certs                {pem}: upload one
 *   PUT    /cages/<app>/<name>/certs/lock           {pcr8: [...]}: lock deployments to them
 *   GET    /cages/<app>/<name>/logs?limit=N         the app's output (debug cages only)
 *   GET    /cages/<app>/<name>/transactions?limit=N the front's transaction records
 *   GET    /cage-images/<sha256>/<i>                200 when that chunk is stored, else 404
 *   PUT    /cage-images/<sha256>/<i>                one chunk of an image (raw bytes)
 *
 * Store (namespace "cage-broker"):
 *   cage/<app>/<name>        the record: settings from cage.toml, the current deployment
 *                            (id, image digest, size, chunks, PCRs) and the last ones
 *   img/<sha256>/<i>         the image file in chunks of CB_CHUNK (8 MiB): the store holds at
 *                            most 16 MiB per value, and an image is tens of MiB. Keyed by the
 *                            file's digest (content-addressed) so a redeploy of the same image
 *                            uploads nothing, and every node checks what it fetched
 *   env/<app>/<name>         {KEY: {value, secret}}; secret values are ev: strings, opened only
 *                            when an instance starts and handed to the runner
 *   certs/<app>/<name>       {certs: [{pcr8, subject, notAfter}], locked: [pcr8, ...]}
 *   tls/<app>/<name>         the cage's TLS certificate and its key sealed as an ev: string
 *   state/<app>/<name>/<node> one instance's state (TTL: stale entries vanish)
 * Streams: "trx" (a record per front request, never bodies), "logs" (debug cages' output).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "cage_int.h"
#include "eif.h"

#define CB_DEPLOY_HISTORY 10
#define CB_STATE_TTL_S 30
#define CB_LINE_MAX 4096

int64_t cb_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Random bytes are drawn from OpenSSL 1 KiB at a time: one RAND_bytes and 16 sprintf per
 * request (a ctx id each) were 4% of the front's loop. Emptied in a forked child (pthread_atfork,
 * not a getpid per call), so forked workers never share a pool. Loop thread only. */
static uint8_t rand_pool[1024];
static size_t rand_used = sizeof rand_pool;
static void rand_pool_forked(void) {
  OPENSSL_cleanse(rand_pool, sizeof rand_pool);
  rand_used = sizeof rand_pool;
}
static void rand_pool_once(void) {
  pthread_atfork(NULL, NULL, rand_pool_forked);
}

void cb_random_hex(char *out, size_t nbytes) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  static const char hexd[] = "0123456789abcdef";
  pthread_once(&once, rand_pool_once);
  if (nbytes > 64) nbytes = 64;
  if (rand_used + nbytes > sizeof rand_pool) {
    /* A broken RNG ends the worker: ids that others could guess are worse than none. */
    if (RAND_bytes(rand_pool, (int)sizeof rand_pool) != 1) abort();
    rand_used = 0;
  }
  const uint8_t *b = rand_pool + rand_used;
  rand_used += nbytes;
  for (size_t i = 0; i < nbytes; i++) {
    out[2 * i] = hexd[b[i] >> 4];
    out[2 * i + 1] = hexd[b[i] & 15];
  }
  out[2 * nbytes] = 0;
}

static int name_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > CB_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
      return 0;
  return s[0] != '-';
}

static int app_valid(const char *s) {
  size_t n = strlen(s);
  if (n < 5 || n > CB_APP_MAX || strncmp(s, "app_", 4) != 0) return 0;
  for (size_t i = 4; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9'))) return 0;
  return 1;
}

static int sha_valid(const char *s) {
  if (strlen(s) != 64) return 0;
  for (int i = 0; i < 64; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

static int env_key_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 128 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
          (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
      return 0;
  return 1;
}

static int put_json(cb_state *st, const char *key, const json_t *v, uint64_t ttl_s) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!s) return -ENOMEM;
  int rc = st->h->store_put(st->p, key, (const uint8_t *)s, strlen(s), ttl_s, NULL, NULL);
  free(s);
  return rc;
}

static void send_json(cb_state *st, evs_request *req, int status, json_t *obj) {
  char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(obj);
  if (!s) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  evs_header hd = {"Content-Type", 12, "application/json", 16};
  st->h->respond(req, status, &hd, 1, (const uint8_t *)s, strlen(s));
  free(s);
}

/* ---- cages this worker knows --------------------------------------------------------------- */

static void app_dashed(const char *app, char *out, size_t n) {
  snprintf(out, n, "%s", app);
  for (char *p = out; *p; p++)
    if (*p == '_') *p = '-';
}

cb_cage *cb_cage_by_host(cb_state *st, const char *host) {
  if (!host) return NULL;
  /* <nonce>.attest.<cage>.<app>.<domain> names the same cage (PROTOCOL.md §7). */
  const char *a = strstr(host, ".attest.");
  if (a) host = a + 8;
  for (cb_cage *c = st->cages; c; c = c->next)
    if (!c->removed && strcasecmp(c->host, host) == 0) return c;
  return NULL;
}

void cb_cage_ref(cb_cage *c) { c->refs++; }

static void cage_free(cb_cage *c) {
  json_decref(c->rec);
  free(c->cert_pem);
  if (c->key_pem) {
    OPENSSL_cleanse(c->key_pem, c->key_len);
    free(c->key_pem);
  }
  free(c->spki);
  free(c);
}

void cb_cage_unref(cb_cage *c) {
  if (--c->refs > 0 || !c->removed) return;
  cage_free(c);
}

static void inst_write_state(cb_inst *in) {
  cb_state *st = in->st;
  if (!in->c || st->stopping) return;
  static const char *const names[] = {"", "starting", "ready", "crashed", "stopped"};
  json_t *j = json_pack("{s:s,s:s,s:I,s:s,s:i,s:s,s:s,s:I}", "node", st->node_id, "state",
                        names[in->state <= CAGE_STOPPED ? in->state : 0], "deployment",
                        (json_int_t)in->deploy_id, "image", in->image, "restarts",
                        (int)in->restarts, "why", in->why, "backend",
                        in->ci ? cage_run_backend(in->ci) : "", "updatedAt",
                        (json_int_t)cb_now_ms());
  char key[400];
  snprintf(key, sizeof key, "state/%s/%s/%s", in->c->app, in->c->name, st->node_id);
  if (j) put_json(st, key, j, CB_STATE_TTL_S);
  json_decref(j);
}

static void inst_stop(cb_inst *in) {
  if (in->stopping) return;
  in->stopping = 1;
  if (in->c) {
    if (in->c->cur == in) in->c->cur = NULL;
    if (in->c->next_inst == in) in->c->next_inst = NULL;
  }
  in->c = NULL;
  if (in->ci) cage_run_stop(in->ci); /* STOPPED follows and frees */
}

static void inst_free(cb_inst *in) {
  cb_state *st = in->st;
  if (in->retire_timer) {
    st->h->timer_free(in->retire_timer);
    in->retire_timer = NULL;
  }
  if (in->inflight > 0) { /* requests still hold it: the last one frees it */
    in->dead = 1;
    return;
  }
  for (cb_inst **pp = &st->insts; *pp; pp = &(*pp)->next_all)
    if (*pp == in) {
      *pp = in->next_all;
      break;
    }
  free(in);
}

void cb_inst_hold(cb_inst *in) { in->inflight++; }

void cb_inst_release(cb_inst *in) {
  if (in->inflight > 0) in->inflight--;
  if (in->inflight > 0) return;
  if (in->dead) inst_free(in);
  else if (in->retiring) inst_stop(in);
}

static void retire_timeout(void *arg) {
  cb_inst *in = arg;
  in->st->h->timer_free(in->retire_timer);
  in->retire_timer = NULL;
  inst_stop(in); /* its last requests took too long */
}

/* A replaced instance stops once the requests already proxied to it have finished, so that a
 * redeploy fails none of them. */
static void inst_retire(cb_inst *in) {
  if (in->c) {
    if (in->c->cur == in) in->c->cur = NULL;
    if (in->c->next_inst == in) in->c->next_inst = NULL;
  }
  if (in->inflight == 0) {
    inst_stop(in);
    return;
  }
  in->retiring = 1;
  if (!in->retire_timer)
    in->retire_timer = in->st->h->timer_start(in->st->p, CB_RETIRE_MS, 0, retire_timeout, in);
}

static void on_state(void *arg, cage_instance *ci, cage_state state, const char *why) {
  (void)ci;
  cb_inst *in = arg;
  cb_state *st = in->st;
  in->state = state;
  snprintf(in->why, sizeof in->why, "%s", why ? why : "");
  if (state == CAGE_STOPPED) {
    inst_free(in);
    return;
  }
  cb_cage *c = in->c;
  if (!c) return;
  if (state == CAGE_READY) {
    st->h->log(st->p, NULL, EVS_LOG_INFO, "cage %s of app %s: deployment %" PRId64 " ready",
               c->name, c->app, in->deploy_id);
    if (c->next_inst == in) {
      /* A redeploy: the new instance serves from now on, the old one goes. */
      cb_inst *old = c->cur;
      c->cur = in;
      c->next_inst = NULL;
      if (old) inst_retire(old);
    }
  } else if (state == CAGE_CRASHED) {
    in->restarts++;
    st->h->counter_add(st->p, "cage_crashes", 1);
    st->h->log(st->p, NULL, EVS_LOG_WARN, "cage %s of app %s crashed: %s", c->name, c->app,
               in->why);
    json_t *ev = json_pack("{s:s,s:s,s:I,s:s,s:i,s:s}", "app", c->app, "cage", c->name,
                           "deployment", (json_int_t)in->deploy_id, "why", in->why, "restarts",
                           (int)in->restarts, "node", st->node_id);
    char *s = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    if (s) {
      evs_event e = {sizeof e, "cage.error", s};
      st->h->emit_event(st->p, &e);
    }
    free(s);
    json_decref(ev);
  }
  inst_write_state(in);
}

static void on_log(void *arg, cage_instance *ci, int stream, const char *line, size_t len) {
  (void)ci;
  cb_inst *in = arg;
  if (!in->c || !in->c->debug) return;
  if (len > CB_LINE_MAX) len = CB_LINE_MAX;
  json_t *j = json_pack("{s:s,s:s,s:i,s:s%}", "app", in->c->app, "cage", in->c->name, "stream",
                        stream, "line", line, len);
  char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
  if (s) in->st->h->store_append(in->st->p, "logs", s);
  free(s);
  json_decref(j);
}

static void on_egress(void *arg, cage_instance *ci, const char *host, int port, int allowed,
                      const char *why) {
  (void)ci;
  cb_inst *in = arg;
  if (!in->c || allowed) return;
  in->st->h->log(in->st->p, NULL, EVS_LOG_INFO, "cage %s of app %s: egress to %s:%d refused (%s)",
                 in->c->name, in->c->app, host ? host : "?", port, why ? why : "");
}

/* ---- starting an instance: image file, environment, runner --------------------------------- */

typedef struct cb_start {
  cb_inst *in;
  cb_state *st;
  char app[CB_APP_MAX + 1], name[CB_NAME_MAX + 1];
  json_t *settings;
  int64_t chunks, size;
  int64_t next_chunk;
  FILE *tmp;
  char tmp_path[4300], img_path[4300];
  EVP_MD_CTX *md;
  json_t *env;          /* env record */
  char **envp;          /* "K=V" lists, plaintext secrets: wiped */
  size_t nenv;
  size_t *pending_idx;  /* env entries waiting for decryption */
} cb_start;

static void start_free(cb_start *s) {
  if (!s) return;
  if (s->tmp) fclose(s->tmp);
  if (s->tmp_path[0]) unlink(s->tmp_path);
  EVP_MD_CTX_free(s->md);
  json_decref(s->settings);
  json_decref(s->env);
  for (size_t i = 0; s->envp && i < s->nenv; i++) {
    if (s->envp[i]) {
      OPENSSL_cleanse(s->envp[i], strlen(s->envp[i]));
      free(s->envp[i]);
    }
  }
  free(s->envp);
  free(s->pending_idx);
  free(s);
}

static void start_fail(cb_start *s, const char *why) {
  cb_inst *in = s->in;
  in->preparing = 0;
  in->state = CAGE_CRASHED;
  snprintf(in->why, sizeof in->why, "%s", why);
  s->st->h->log(s->st->p, NULL, EVS_LOG_ERROR, "cage %s of app %s cannot start: %s", s->name,
                s->app, why);
  inst_write_state(in);
  if (in->stopping || !in->c) {
    in->c = NULL;
    inst_free(in);
  } else {
    /* Left in place so that the next sync does not retry at once; a later deploy replaces
     * it. A failed start of the serving deployment is retried by the sync after a while. */
  }
  start_free(s);
}

static void start_run(cb_start *s) {
  cb_inst *in = s->in;
  cb_state *st = s->st;
  if (in->stopping || !in->c) {
    in->preparing = 0;
    inst_free(in);
    start_free(s);
    return;
  }
  cb_cage *c = in->c;
  json_t *eg = json_object_get(s->settings, "egress");
  int egress = json_is_true(json_object_get(eg, "enabled"));
  json_t *dests = json_object_get(eg, "destinations"), *ports = json_object_get(eg, "ports");
  const char **allow = NULL;
  uint16_t *pv = NULL;
  size_t na = json_array_size(dests), np = json_array_size(ports);
  allow = calloc(na + 1, sizeof *allow);
  pv = calloc(np + 1, sizeof *pv);
  size_t npv = 0;
  for (size_t i = 0; allow && i < na; i++) allow[i] = json_string_value(json_array_get(dests, i));
  for (size_t i = 0; pv && i < np; i++) {
    json_t *v = json_array_get(ports, i);
    long port = json_is_integer(v) ? (long)json_integer_value(v)
                : json_is_string(v) ? strtol(json_string_value(v), NULL, 10) : 0;
    if (port > 0 && port < 65536) pv[npv++] = (uint16_t)port;
  }
  char **envp = calloc(s->nenv + 1, sizeof *envp);
  for (size_t i = 0; envp && i < s->nenv; i++) envp[i] = s->envp[i];
  char hname[64];
  snprintf(hname, sizeof hname, "c%.12s-%.12s-%" PRId64, c->app + 4, c->name, in->deploy_id % 1000);
  for (char *p = hname; *p; p++)
    if (*p == '.') *p = '-';
  cage_run_spec spec;
  memset(&spec, 0, sizeof spec);
  spec.size = sizeof spec;
  spec.name = hname;
  spec.image_path = s->img_path;
  spec.backend = st->backend;
  spec.env = (const char *const *)envp;
  spec.memory_bytes = st->memory;
  spec.egress = egress;
  spec.egress_allow = na && allow && !(na == 1 && allow[0] && !strcmp(allow[0], "*"))
                          ? (const char *const *)allow
                          : NULL;
  spec.egress_ports = pv;
  spec.n_egress_ports = npv;
  spec.debug = c->debug;
  static const cage_run_callbacks cbs = {on_state, on_log, cb_front_on_api, on_egress};
  int rc = (allow && pv && envp) ? cage_run_start(st->p, st->h, &spec, &cbs, in, &in->ci) : -ENOMEM;
  free(allow);
  free(pv);
  free(envp);
  in->preparing = 0;
  if (rc < 0) {
    char why[160];
    snprintf(why, sizeof why, "the runner refused to start it: %s", strerror(-rc));
    start_fail(s, why);
    return;
  }
  in->state = CAGE_STARTING;
  snprintf(in->why, sizeof in->why, "starting");
  inst_write_state(in);
  st->h->log(st->p, NULL, EVS_LOG_INFO, "cage %s of app %s: deployment %" PRId64 " starting (%s)",
             c->name, c->app, in->deploy_id, cage_run_backend(in->ci));
  start_free(s);
}

static void on_env_decrypted(void *arg, int status, const evs_crypto_result *res, size_t n) {
  cb_start *s = arg;
  if (status != EVS_CRYPTO_OK) {
    start_fail(s, "the cage's secrets could not be decrypted (is the app unlocked?)");
    return;
  }
  for (size_t k = 0; k < n; k++) {
    size_t i = s->pending_idx[k];
    if (res[k].status != EVS_CRYPTO_OK) {
      start_fail(s, "a secret of the cage does not decrypt with its app's keys");
      return;
    }
    /* envp[i] holds "KEY=" so far */
    size_t kl = strlen(s->envp[i]);
    char *v = malloc(kl + res[k].len + 1);
    if (!v) {
      start_fail(s, "out of memory");
      return;
    }
    memcpy(v, s->envp[i], kl);
    memcpy(v + kl, res[k].data, res[k].len);
    v[kl + res[k].len] = 0;
    free(s->envp[i]);
    s->envp[i] = v;
  }
  start_run(s);
}

static void on_env(void *arg, int status, const uint8_t *value, size_t len) {
  cb_start *s = arg;
  s->env = status == 0 ? json_loadb((const char *)value, len, 0, NULL) : json_object();
  if (!s->env) s->env = json_object();
  size_t n = json_object_size(s->env);
  s->envp = calloc(n + 1, sizeof *s->envp);
  s->pending_idx = calloc(n + 1, sizeof *s->pending_idx);
  evs_crypto_value *vals = calloc(n + 1, sizeof *vals);
  if (!s->envp || !s->pending_idx || !vals) {
    free(vals);
    start_fail(s, "out of memory");
    return;
  }
  size_t npend = 0;
  const char *k;
  json_t *v;
  json_object_foreach(s->env, k, v) {
    const char *val = json_string_value(json_object_get(v, "value"));
    if (!val) continue;
    int secret = json_is_true(json_object_get(v, "secret"));
    if (asprintf(&s->envp[s->nenv], "%s=%s", k, secret ? "" : val) < 0) {
      s->envp[s->nenv] = NULL;
      continue;
    }
    if (secret) {
      vals[npend].size = sizeof vals[npend];
      vals[npend].data = (const uint8_t *)val;
      vals[npend].len = strlen(val);
      s->pending_idx[npend++] = s->nenv;
    }
    s->nenv++;
  }
  if (npend == 0) {
    free(vals);
    start_run(s);
    return;
  }
  evs_decrypt_request dr = {sizeof dr, s->app, vals, npend};
  int rc = s->st->h->decrypt_values(s->st->p, &dr, on_env_decrypted, s);
  free(vals);
  if (rc < 0) start_fail(s, "the enclave is unavailable: the cage's secrets cannot be opened");
}

static void start_env(cb_start *s) {
  char key[300];
  snprintf(key, sizeof key, "env/%s/%s", s->app, s->name);
  if (s->st->h->store_get(s->st->p, key, on_env, s) < 0) start_fail(s, "the store is unavailable");
}

static void fetch_next(cb_start *s);

static void on_chunk(void *arg, int status, const uint8_t *value, size_t len) {
  cb_start *s = arg;
  if (status != 0) {
    start_fail(s, "a chunk of the image is missing from the store");
    return;
  }
  if (fwrite(value, 1, len, s->tmp) != len || EVP_DigestUpdate(s->md, value, len) != 1) {
    start_fail(s, "cannot write the image file");
    return;
  }
  s->next_chunk++;
  fetch_next(s);
}

static void fetch_next(cb_start *s) {
  if (s->next_chunk < s->chunks) {
    char key[120];
    snprintf(key, sizeof key, "img/%s/%" PRId64, s->in->image, s->next_chunk);
    if (s->st->h->store_get(s->st->p, key, on_chunk, s) < 0)
      start_fail(s, "the store is unavailable");
    return;
  }
  uint8_t d[32];
  unsigned dl = 0;
  char hex[65];
  EVP_DigestFinal_ex(s->md, d, &dl);
  for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
  int ok = fflush(s->tmp) == 0 && fsync(fileno(s->tmp)) == 0;
  fclose(s->tmp);
  s->tmp = NULL;
  if (!ok || strcmp(hex, s->in->image) != 0) {
    start_fail(s, "the image in the store does not match its digest");
    return;
  }
  if (rename(s->tmp_path, s->img_path) < 0) {
    start_fail(s, "cannot write the image file");
    return;
  }
  s->tmp_path[0] = 0;
  start_env(s);
}

/* Starts a new instance of c's current deployment (the image fetched to local disk first). */
static cb_inst *inst_start(cb_cage *c) {
  cb_state *st = c->st;
  cb_inst *in = calloc(1, sizeof *in);
  cb_start *s = calloc(1, sizeof *s);
  if (!in || !s) {
    free(in);
    free(s);
    return NULL;
  }
  in->st = st;
  in->c = c;
  in->deploy_id = c->deploy_id;
  snprintf(in->image, sizeof in->image, "%s", c->image);
  in->state = CAGE_STARTING;
  in->preparing = 1;
  snprintf(in->why, sizeof in->why, "fetching the image");
  in->next_all = st->insts;
  st->insts = in;
  s->in = in;
  s->st = st;
  snprintf(s->app, sizeof s->app, "%s", c->app);
  snprintf(s->name, sizeof s->name, "%s", c->name);
  json_t *dep = json_object_get(c->rec, "deployment");
  s->settings = json_incref(json_object_get(c->rec, "settings"));
  s->chunks = json_integer_value(json_object_get(dep, "chunks"));
  s->size = json_integer_value(json_object_get(dep, "size"));
  snprintf(s->img_path, sizeof s->img_path, "%s/images/%s.eif", st->dir, in->image);
  struct stat sb;
  if (stat(s->img_path, &sb) == 0 && sb.st_size == s->size) {
    start_env(s);
    return in;
  }
  snprintf(s->tmp_path, sizeof s->tmp_path, "%s/images/.%s.%d.tmp", st->dir, in->image,
           (int)getpid());
  s->tmp = fopen(s->tmp_path, "wbx");
  if (!s->tmp) {
    unlink(s->tmp_path);
    s->tmp = fopen(s->tmp_path, "wbx");
  }
  s->md = EVP_MD_CTX_new();
  if (!s->tmp || !s->md || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1) {
    if (!s->tmp) s->tmp_path[0] = 0;
    start_fail(s, "cannot write the image file");
    return in;
  }
  fetch_next(s);
  return in;
}

/* ---- sync: the store's cages, run here ------------------------------------------------------ */

static void cage_remove(cb_cage *c) {
  cb_state *st = c->st;
  for (cb_cage **pp = &st->cages; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  if (c->next_inst) inst_stop(c->next_inst);
  if (c->cur) inst_stop(c->cur);
  for (cb_inst *in = st->insts; in; in = in->next_all)
    if (in->c == c) in->c = NULL;
  c->removed = 1;
  c->refs++;
  cb_cage_unref(c);
}

static void cage_apply(cb_state *st, const char *app, const char *name, json_t *rec) {
  cb_cage *c;
  for (c = st->cages; c; c = c->next)
    if (!strcmp(c->app, app) && !strcmp(c->name, name)) break;
  if (!c) {
    c = calloc(1, sizeof *c);
    if (!c) return;
    c->st = st;
    snprintf(c->app, sizeof c->app, "%s", app);
    snprintf(c->name, sizeof c->name, "%s", name);
    char dashed[CB_APP_MAX + 1];
    app_dashed(app, dashed, sizeof dashed);
    snprintf(c->host, sizeof c->host, "%s.%s.%s", name, dashed, st->domain);
    c->next = st->cages;
    st->cages = c;
  }
  c->seen = 1;
  json_decref(c->rec);
  c->rec = json_incref(rec);
  json_t *set = json_object_get(rec, "settings"), *dep = json_object_get(rec, "deployment");
  c->debug = json_is_true(json_object_get(set, "debug"));
  json_t *ak = json_object_get(set, "api_key_auth");
  c->api_key_auth = ak ? json_is_true(ak) : 1;
  json_t *tl = json_object_get(set, "trx_logging");
  c->trx_logging = tl ? json_is_true(tl) : 1;
  c->no_tls_termination = json_is_true(json_object_get(set, "disable_tls_termination"));
  c->deploy_id = json_integer_value(json_object_get(dep, "id"));
  snprintf(c->image, sizeof c->image, "%s", json_string_value(json_object_get(dep, "image")) ?: "");
}

static void cage_reconcile(cb_cage *c) {
  cb_front_tls_ensure(c);
  if (!sha_valid(c->image)) return;
  if (c->cur && c->cur->deploy_id == c->deploy_id) {
    if (c->next_inst) inst_stop(c->next_inst);
    /* A start that failed before the runner took it is retried after a while. */
    if (!c->cur->ci && !c->cur->preparing) {
      cb_inst *old = c->cur;
      c->cur = NULL;
      inst_stop(old);
      inst_free(old);
    } else {
      return;
    }
  }
  if (c->next_inst && c->next_inst->deploy_id == c->deploy_id) {
    if (c->next_inst->ci || c->next_inst->preparing) return;
    cb_inst *old = c->next_inst; /* its start failed: retry */
    c->next_inst = NULL;
    inst_stop(old);
    inst_free(old);
  }
  if (c->next_inst) inst_stop(c->next_inst);
  cb_inst *in = inst_start(c);
  if (!in || !in->c) return;
  if (c->cur) c->next_inst = in;
  else c->cur = in;
}

static void on_sync_item(void *arg, int status, const char *key, const uint8_t *value,
                         size_t len) {
  cb_state *st = arg;
  if (!key) {
    st->syncing = 0;
    if (st->stopping) return;
    if (status < 0) return; /* the store failed: keep everything as it is */
    cb_cage *c = st->cages, *next;
    for (; c; c = next) {
      next = c->next;
      if (!c->seen) cage_remove(c);
    }
    for (c = st->cages; c; c = c->next) cage_reconcile(c);
    return;
  }
  /* cage/<app>/<name> */
  char app[CB_APP_MAX + 1], name[CB_NAME_MAX + 1];
  const char *a = key + 5, *slash = strchr(a, '/');
  if (!slash || (size_t)(slash - a) > CB_APP_MAX || strlen(slash + 1) > CB_NAME_MAX) return;
  memcpy(app, a, (size_t)(slash - a));
  app[slash - a] = 0;
  snprintf(name, sizeof name, "%s", slash + 1);
  json_t *rec = json_loadb((const char *)value, len, 0, NULL);
  if (rec) cage_apply(st, app, name, rec);
  json_decref(rec);
}

static void sync_tick(void *arg) {
  cb_state *st = arg;
  if (st->syncing || st->stopping) return;
  for (cb_cage *c = st->cages; c; c = c->next) c->seen = 0;
  st->syncing = 1;
  if (st->h->store_scan(st->p, "cage/", on_sync_item, st) < 0) st->syncing = 0;
  /* Refresh the instances' state records before their TTL ends. */
  static int64_t last_state;
  int64_t now = cb_now_ms();
  if (now - last_state > CB_STATE_TTL_S * 1000 / 3) {
    last_state = now;
    for (cb_inst *in = st->insts; in; in = in->next_all) inst_write_state(in);
  }
}

static void sync_soon_cb(void *arg) {
  cb_state *st = arg;
  st->h->timer_free(st->soon_timer); /* safe from its own callback: freed once closed */
  st->soon_timer = NULL;
  sync_tick(st);
}

/* A sync on the next turn (after a deploy or delete here), rather than within sync_interval. */
void cb_sync_soon(cb_state *st) {
  if (!st->soon_timer) st->soon_timer = st->h->timer_start(st->p, 0, 0, sync_soon_cb, st);
}

/* ---- admin operations ------------------------------------------------------------------------ */

typedef struct cb_op {
  cb_state *st;
  evs_request *req;
  int refs;
  char app[CB_APP_MAX + 1], name[CB_NAME_MAX + 1];
  char sub[200];           /* what follows /cages/<app>/<name>/ */
  json_t *body, *rec, *aux;
  uint8_t *img;            /* deploy: the image, assembled */
  size_t img_len;
  int64_t chunk, chunks;
  EVP_MD_CTX *md;
  char image[65];
  char *tmp_path;
  FILE *tmp;
} cb_op;

static void op_unref(cb_op *o) {
  if (--o->refs > 0) return;
  json_decref(o->body);
  json_decref(o->rec);
  json_decref(o->aux);
  free(o->img);
  EVP_MD_CTX_free(o->md);
  if (o->tmp) fclose(o->tmp);
  if (o->tmp_path) {
    unlink(o->tmp_path);
    free(o->tmp_path);
  }
  free(o);
}

static void op_req_gone(void *arg) {
  cb_op *o = arg;
  o->req = NULL;
  op_unref(o);
}

static cb_op *op_new(cb_state *st, evs_request *req) {
  cb_op *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->st = st;
  o->req = req;
  o->refs = 2; /* the request's and the chain's */
  st->h->request_set_data(req, st->p, o, op_req_gone);
  return o;
}

static void op_json(cb_op *o, int status, json_t *obj) {
  if (o->req) send_json(o->st, o->req, status, obj);
  else json_decref(obj);
  op_unref(o);
}

static void op_error(cb_op *o, int status, const char *code, const char *detail) {
  if (o->req) o->st->h->respond_error(o->req, status, code, detail);
  op_unref(o);
}

static int64_t query_limit(const char *q, int64_t dflt, int64_t max) {
  const char *l = strstr(q ? q : "", "limit=");
  if (!l) return dflt;
  long long v = strtoll(l + 6, NULL, 10);
  return v <= 0 ? dflt : v > max ? max : v;
}

/* list: cages and their instances' states */
static void on_list_states(void *arg, int status, const char *key, const uint8_t *value,
                           size_t len) {
  cb_op *o = arg;
  if (!key) {
    if (status < 0) {
      op_error(o, 500, "internal-error", "The store is unavailable");
      return;
    }
    if (o->name[0]) { /* one cage */
      json_t *c = json_incref(json_array_get(json_object_get(o->body, "cages"), 0));
      if (!c) {
        op_error(o, 404, "resource-not-found", "No such cage");
        return;
      }
      op_json(o, 200, c);
      return;
    }
    op_json(o, 200, json_incref(o->body));
    return;
  }
  /* state/<app>/<name>/<node> */
  char app[CB_APP_MAX + 1], name[CB_NAME_MAX + 1];
  if (sscanf(key, "state/%63[^/]/%63[^/]/", app, name) != 2) return;
  json_t *st = json_loadb((const char *)value, len, 0, NULL);
  if (!st) return;
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(o->body, "cages"), i, c) {
    if (!strcmp(json_string_value(json_object_get(c, "app")) ?: "", app) &&
        !strcmp(json_string_value(json_object_get(c, "name")) ?: "", name))
      json_array_append(json_object_get(c, "instances"), st);
  }
  json_decref(st);
}

static json_t *cage_view(cb_state *st, const char *app, const char *name, json_t *rec) {
  char dashed[CB_APP_MAX + 1], host[CB_HOST_MAX];
  app_dashed(app, dashed, sizeof dashed);
  snprintf(host, sizeof host, "%s.%s.%s", name, dashed, st->domain);
  json_t *v = json_pack("{s:s,s:s,s:O,s:O,s:O,s:s,s:[]}", "name", name, "app", app, "uuid",
                        json_object_get(rec, "uuid") ?: json_null(), "settings",
                        json_object_get(rec, "settings") ?: json_null(), "deployment",
                        json_object_get(rec, "deployment") ?: json_null(), "domain", host,
                        "instances");
  return v;
}

static void on_list_item(void *arg, int status, const char *key, const uint8_t *value,
                         size_t len) {
  cb_op *o = arg;
  if (!key) {
    if (status < 0) {
      op_error(o, 500, "internal-error", "The store is unavailable");
      return;
    }
    char prefix[200] = "state/";
    if (o->app[0]) snprintf(prefix, sizeof prefix, "state/%s/", o->app);
    if (o->st->h->store_scan(o->st->p, prefix, on_list_states, o) < 0)
      op_error(o, 500, "internal-error", "The store is unavailable");
    return;
  }
  char app[CB_APP_MAX + 1], name[CB_NAME_MAX + 1];
  if (sscanf(key, "cage/%63[^/]/%63s", app, name) != 2) return;
  if (o->name[0] && strcmp(name, o->name) != 0) return;
  json_t *rec = json_loadb((const char *)value, len, 0, NULL);
  if (!rec) return;
  json_array_append_new(json_object_get(o->body, "cages"), cage_view(o->st, app, name, rec));
  json_decref(rec);
}

static void admin_list(cb_op *o) {
  o->body = json_pack("{s:[]}", "cages");
  char prefix[200] = "cage/";
  if (o->app[0] && o->name[0]) snprintf(prefix, sizeof prefix, "cage/%s/%s", o->app, o->name);
  else if (o->app[0]) snprintf(prefix, sizeof prefix, "cage/%s/", o->app);
  if (!o->body || o->st->h->store_scan(o->st->p, prefix, on_list_item, o) < 0)
    op_error(o, 500, "internal-error", "The store is unavailable");
}

/* deployments, delete: need the record */
static void on_rec_for(void *arg, int status, const uint8_t *value, size_t len);

static void get_rec(cb_op *o) {
  char key[200];
  snprintf(key, sizeof key, "cage/%s/%s", o->app, o->name);
  if (o->st->h->store_get(o->st->p, key, on_rec_for, o) < 0)
    op_error(o, 500, "internal-error", "The store is unavailable");
}

static void admin_delete_done(cb_op *o) {
  cb_state *st = o->st;
  char key[200];
  snprintf(key, sizeof key, "cage/%s/%s", o->app, o->name);
  st->h->store_delete(st->p, key, NULL, NULL);
  snprintf(key, sizeof key, "tls/%s/%s", o->app, o->name);
  st->h->store_delete(st->p, key, NULL, NULL);
  st->h->log(st->p, NULL, EVS_LOG_INFO, "cage %s of app %s deleted", o->name, o->app);
  cb_sync_soon(st);
  op_json(o, 200, json_pack("{s:s,s:s,s:b}", "name", o->name, "app", o->app, "deleted", 1));
}

/* ---- env ------------------------------------------------------------------------------------- */

static json_t *env_view(const json_t *env) {
  json_t *out = json_object();
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)env, k, v) {
    json_object_set_new(out, k, json_pack("{s:O,s:b}", "value", json_object_get(v, "value"),
                                          "secret", json_is_true(json_object_get(v, "secret"))));
  }
  return out;
}

static void env_save(cb_op *o) {
  char key[200];
  snprintf(key, sizeof key, "env/%s/%s", o->app, o->name);
  if (put_json(o->st, key, o->aux, 0) < 0) {
    op_error(o, 500, "internal-error", "The store is unavailable");
    return;
  }
  op_json(o, 200, json_pack("{s:s,s:s,s:o}", "name", o->name, "app", o->app, "env",
                            env_view(o->aux)));
}

static void on_secret_sealed(void *arg, int status, const evs_crypto_result *res, size_t n) {
  cb_op *o = arg;
  if (status != EVS_CRYPTO_OK || n != 1 || res[0].status != EVS_CRYPTO_OK) {
    op_error(o, 503, "internal-error", "The secret could not be encrypted (is the app unlocked?)");
    return;
  }
  const char *k = strrchr(o->sub, '/') + 1;
  json_object_set_new(o->aux, k, json_pack("{s:s%,s:b}", "value", (const char *)res[0].data,
                                           res[0].len, "secret", 1));
  env_save(o);
}

static void on_env_for(void *arg, int status, const uint8_t *value, size_t len) {
  cb_op *o = arg;
  o->aux = status == 0 ? json_loadb((const char *)value, len, 0, NULL) : json_object();
  if (!o->aux) o->aux = json_object();
  const char *method = o->req ? o->st->h->request_info(o->req)->method : "GET";
  if (!strcmp(method, "GET")) {
    op_json(o, 200, json_pack("{s:s,s:s,s:o}", "name", o->name, "app", o->app, "env",
                              env_view(o->aux)));
    return;
  }
  const char *k = strrchr(o->sub, '/') + 1;
  if (!strcmp(method, "DELETE")) {
    if (json_object_del(o->aux, k) < 0) {
      op_error(o, 404, "resource-not-found", "No such environment variable");
      return;
    }
    env_save(o);
    return;
  }
  const char *val = json_string_value(json_object_get(o->body, "value"));
  if (!val) {
    op_error(o, 400, "bad-request", "value must be a string");
    return;
  }
  if (!json_is_true(json_object_get(o->body, "secret"))) {
    json_object_set_new(o->aux, k, json_pack("{s:s,s:b}", "value", val, "secret", 0));
    env_save(o);
    return;
  }
  /* A secret is sealed with the app's keys before it reaches the store. */
  const char *curve = json_string_value(json_object_get(o->body, "curve"));
  if (!curve || !strcmp(curve, "secp256r1") || !strcmp(curve, "nist")) curve = "prime256v1";
  else if (!strcmp(curve, "koblitz")) curve = "secp256k1";
  evs_crypto_value v = {sizeof v, EVS_CRYPTO_STRING_EXACT, (const uint8_t *)val, strlen(val)};
  evs_encrypt_request er = {sizeof er, o->app, curve, NULL, &v, 1};
  if (o->st->h->encrypt_values(o->st->p, &er, on_secret_sealed, o) < 0)
    op_error(o, 503, "internal-error", "The enclave is unavailable");
}

/* ---- certs ----------------------------------------------------------------------------------- */

/* PCR8 as Nitro measures a signing certificate: SHA-384 over 48 zero bytes and the SHA-384 of
 * the certificate's DER (one extension of a zeroed PCR). */
static int pcr8_of_pem(const char *pem, char hex[97], char *subject, size_t slen,
                       int64_t *not_after) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  if (!x) return -EINVAL;
  unsigned char *der = NULL;
  int dl = i2d_X509(x, &der);
  uint8_t buf[96], out[48];
  unsigned ol = 0;
  memset(buf, 0, 48);
  int ok = dl > 0 && EVP_Digest(der, (size_t)dl, buf + 48, &ol, EVP_sha384(), NULL) == 1 &&
           EVP_Digest(buf, 96, out, &ol, EVP_sha384(), NULL) == 1;
  OPENSSL_free(der);
  if (ok) {
    for (int i = 0; i < 48; i++) sprintf(hex + 2 * i, "%02x", out[i]);
    X509_NAME_oneline(X509_get_subject_name(x), subject, (int)slen);
    struct tm tm;
    *not_after = ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1 ? (int64_t)timegm(&tm) : 0;
  }
  X509_free(x);
  return ok ? 0 : -EINVAL;
}

static void on_certs_for(void *arg, int status, const uint8_t *value, size_t len) {
  cb_op *o = arg;
  o->aux = status == 0 ? json_loadb((const char *)value, len, 0, NULL) : NULL;
  if (!o->aux) o->aux = json_pack("{s:[],s:[]}", "certs", "locked");
  const char *method = o->req ? o->st->h->request_info(o->req)->method : "GET";
  char key[200];
  snprintf(key, sizeof key, "certs/%s/%s", o->app, o->name);
  if (!strcmp(method, "GET")) {
    op_json(o, 200, json_incref(o->aux));
    return;
  }
  if (!strcmp(o->sub, "certs/lock")) {
    json_t *want = json_object_get(o->body, "pcr8");
    if (!json_is_array(want)) {
      op_error(o, 400, "bad-request", "pcr8 must be an array of uploaded certificates' PCR8");
      return;
    }
    size_t i, j;
    json_t *w, *c;
    json_array_foreach(want, i, w) {
      int found = 0;
      json_array_foreach(json_object_get(o->aux, "certs"), j, c)
          found |= json_equal(json_object_get(c, "pcr8"), w);
      if (!found) {
        op_error(o, 400, "bad-request", "Only uploaded certificates can be locked");
        return;
      }
    }
    json_object_set(o->aux, "locked", want);
  } else {
    const char *pem = json_string_value(json_object_get(o->body, "pem"));
    char hex[97], subject[256] = "";
    int64_t na = 0;
    if (!pem || pcr8_of_pem(pem, hex, subject, sizeof subject, &na) < 0) {
      op_error(o, 400, "bad-request", "pem must be a PEM certificate");
      return;
    }
    size_t j;
    json_t *c;
    int dup = 0;
    json_array_foreach(json_object_get(o->aux, "certs"), j, c)
        dup |= !strcmp(json_string_value(json_object_get(c, "pcr8")) ?: "", hex);
    if (!dup)
      json_array_append_new(json_object_get(o->aux, "certs"),
                            json_pack("{s:s,s:s,s:I,s:I}", "pcr8", hex, "subject", subject,
                                      "notAfter", (json_int_t)na, "uploadedAt",
                                      (json_int_t)cb_now_ms()));
  }
  if (put_json(o->st, key, o->aux, 0) < 0) {
    op_error(o, 500, "internal-error", "The store is unavailable");
    return;
  }
  op_json(o, 200, json_incref(o->aux));
}

/* ---- logs and transactions ------------------------------------------------------------------- */

static void on_stream_rec(void *arg, int status, int64_t ts, const char *json) {
  cb_op *o = arg;
  if (!json) {
    if (status < 0) op_error(o, 500, "internal-error", "The store is unavailable");
    else op_json(o, 200, json_incref(o->body));
    return;
  }
  json_t *r = json_loads(json, 0, NULL);
  if (!r) return;
  if (!strcmp(json_string_value(json_object_get(r, "app")) ?: "", o->app) &&
      !strcmp(json_string_value(json_object_get(r, "cage")) ?: "", o->name)) {
    json_object_set_new(r, "ts", json_integer(ts));
    json_array_append(json_object_get(o->body, "records"), r);
  }
  json_decref(r);
}

/* ---- deploy ---------------------------------------------------------------------------------- */

static void deploy_fail(cb_op *o, int status, const char *code, const char *detail) {
  op_error(o, status, code, detail);
}

static void deploy_finish(cb_op *o, const eif_pcrs *pcrs) {
  cb_state *st = o->st;
  json_t *old = o->rec;
  json_t *set = json_object_get(o->body, "settings");
  json_t *olddep = json_object_get(old, "deployment");
  int64_t id = olddep ? json_integer_value(json_object_get(olddep, "id")) + 1 : 1;
  char p0[97], p1[97], p2[97], p8[97];
  eif_pcr_hex(pcrs->pcr0, p0);
  eif_pcr_hex(pcrs->pcr1, p1);
  eif_pcr_hex(pcrs->pcr2, p2);
  eif_pcr_hex(pcrs->pcr8, p8);
  int64_t now = cb_now_ms();
  json_t *dep = json_pack("{s:I,s:s,s:I,s:I,s:{s:s,s:s,s:s,s:s},s:b,s:I}", "id", (json_int_t)id,
                          "image", o->image, "size", (json_int_t)o->img_len, "chunks",
                          (json_int_t)o->chunks, "pcrs", "pcr0", p0, "pcr1", p1, "pcr2", p2,
                          "pcr8", p8, "signed", pcrs->has_pcr8, "deployedAt", (json_int_t)now);
  json_t *hist = json_array();
  if (olddep) json_array_append(hist, olddep);
  size_t i;
  json_t *h;
  json_array_foreach(json_object_get(old, "history"), i, h) {
    if (json_array_size(hist) >= CB_DEPLOY_HISTORY) break;
    json_array_append(hist, h);
  }
  const char *uuid = json_string_value(json_object_get(set, "uuid"));
  char ubuf[40];
  if (!uuid) uuid = json_string_value(json_object_get(old, "uuid"));
  if (!uuid) {
    memcpy(ubuf, "cage_", 5);
    cb_random_hex(ubuf + 5, 12);
    uuid = ubuf;
  }
  json_t *rec = json_pack("{s:s,s:s,s:s,s:O,s:o,s:o,s:I,s:I}", "name", o->name, "app", o->app,
                          "uuid", uuid, "settings", set ?: json_object(), "deployment", dep,
                          "history", hist, "createdAt",
                          old ? json_integer_value(json_object_get(old, "createdAt"))
                              : (json_int_t)now,
                          "updatedAt", (json_int_t)now);
  char key[200];
  snprintf(key, sizeof key, "cage/%s/%s", o->app, o->name);
  if (!rec || put_json(st, key, rec, 0) < 0) {
    json_decref(rec);
    deploy_fail(o, 500, "internal-error", "The store is unavailable");
    return;
  }
  st->h->log(st->p, NULL, EVS_LOG_INFO,
             "cage %s of app %s deployed: deployment %" PRId64 " (%zu bytes)", o->name, o->app,
             id, o->img_len);
  st->h->counter_add(st->p, "cage_deploys", 1);
  cb_sync_soon(st);
  json_t *view = cage_view(st, o->app, o->name, rec);
  json_decref(rec);
  op_json(o, 200, view);
}

static void on_deploy_certs(void *arg, int status, const uint8_t *value, size_t len) {
  cb_op *o = arg;
  json_t *certs = status == 0 ? json_loadb((const char *)value, len, 0, NULL) : NULL;
  eif_image *img = NULL;
  const char *why = NULL;
  int rc = eif_parse(o->img, o->img_len, &img, &why);
  eif_pcrs pcrs;
  memset(&pcrs, 0, sizeof pcrs);
  if (rc == 0) rc = eif_pcrs_of(img, &pcrs);
  /* A signed image's signature must hold: PCR8 is only worth its certificate if it does. */
  if (rc == 0 && pcrs.has_pcr8 && eif_verify_signature(img, &why) != 0) rc = -EBADMSG;
  eif_free(img);
  if (rc < 0) {
    json_decref(certs);
    char msg[300];
    snprintf(msg, sizeof msg, "The image is not a valid enclave image file: %s",
             why ? why : "its PCRs cannot be computed");
    deploy_fail(o, 400, "bad-request", msg);
    return;
  }
  json_t *locked = json_object_get(certs, "locked");
  if (json_array_size(locked) > 0) {
    char p8[97];
    eif_pcr_hex(pcrs.pcr8, p8);
    int ok = 0;
    size_t i;
    json_t *l;
    json_array_foreach(locked, i, l) ok |= pcrs.has_pcr8 && !strcmp(json_string_value(l) ?: "", p8);
    if (!ok) {
      json_decref(certs);
      deploy_fail(o, 403, "forbidden",
                  "The image's signing certificate is not among the cage's locked certificates");
      return;
    }
  }
  json_decref(certs);
  deploy_finish(o, &pcrs);
}

static void deploy_chunk(cb_op *o);

static void on_deploy_chunk(void *arg, int status, const uint8_t *value, size_t len) {
  cb_op *o = arg;
  if (status != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "Chunk %" PRId64 " of the image was not uploaded", o->chunk);
    deploy_fail(o, 400, "bad-request", msg);
    return;
  }
  if (len > o->img_len - (size_t)(o->chunk * CB_CHUNK) ||
      (o->chunk + 1 < o->chunks && len != CB_CHUNK)) {
    deploy_fail(o, 400, "bad-request", "The image's chunks do not add up to its size");
    return;
  }
  memcpy(o->img + o->chunk * CB_CHUNK, value, len);
  o->chunk++;
  deploy_chunk(o);
}

static void deploy_chunk(cb_op *o) {
  cb_state *st = o->st;
  if (o->chunk < o->chunks) {
    char key[120];
    snprintf(key, sizeof key, "img/%s/%" PRId64, o->image, o->chunk);
    if (st->h->store_get(st->p, key, on_deploy_chunk, o) < 0)
      deploy_fail(o, 500, "internal-error", "The store is unavailable");
    return;
  }
  uint8_t d[32];
  unsigned dl = 0;
  char hex[65];
  EVP_Digest(o->img, o->img_len, d, &dl, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
  if (strcmp(hex, o->image) != 0) {
    deploy_fail(o, 400, "bad-request", "The uploaded image does not match its digest");
    return;
  }
  char key[200];
  snprintf(key, sizeof key, "certs/%s/%s", o->app, o->name);
  if (st->h->store_get(st->p, key, on_deploy_certs, o) < 0)
    deploy_fail(o, 500, "internal-error", "The store is unavailable");
}

static void admin_deploy(cb_op *o) {
  const char *image = json_string_value(json_object_get(o->body, "image"));
  json_int_t size = json_integer_value(json_object_get(o->body, "size"));
  json_t *set = json_object_get(o->body, "settings");
  if (!image || !sha_valid(image) || size <= 0 || size > o->st->max_body) {
    op_error(o, 400, "bad-request", "image (sha256 hex) and size (within max_image) are required");
    return;
  }
  if (set && !json_is_object(set)) {
    op_error(o, 400, "bad-request", "settings must be an object");
    return;
  }
  snprintf(o->image, sizeof o->image, "%s", image);
  o->img_len = (size_t)size;
  o->chunks = (int64_t)((o->img_len + CB_CHUNK - 1) / CB_CHUNK);
  o->img = malloc(o->img_len);
  if (!o->img) {
    op_error(o, 500, "internal-error", "Out of memory");
    return;
  }
  deploy_chunk(o);
}

static void on_rec_for(void *arg, int status, const uint8_t *value, size_t len) {
  cb_op *o = arg;
  if (status == 0) o->rec = json_loadb((const char *)value, len, 0, NULL);
  else if (status != -ENOENT) {
    op_error(o, 500, "internal-error", "The store is unavailable");
    return;
  }
  const char *method = o->req ? o->st->h->request_info(o->req)->method : "GET";
  char key[200];
  if (!strcmp(method, "PUT") && !o->sub[0]) {
    admin_deploy(o);
    return;
  }
  if (!o->rec) {
    op_error(o, 404, "resource-not-found", "No such cage");
    return;
  }
  if (!strcmp(method, "DELETE") && !o->sub[0]) {
    admin_delete_done(o);
  } else if (!strcmp(o->sub, "deployments")) {
    json_t *list = json_array();
    json_t *dep = json_object_get(o->rec, "deployment");
    if (dep) json_array_append(list, dep);
    json_array_extend(list, json_object_get(o->rec, "history"));
    op_json(o, 200, json_pack("{s:s,s:s,s:O,s:o}", "name", o->name, "app", o->app, "uuid",
                              json_object_get(o->rec, "uuid") ?: json_null(), "deployments",
                              list));
  } else if (!strncmp(o->sub, "env", 3)) {
    snprintf(key, sizeof key, "env/%s/%s", o->app, o->name);
    if (o->st->h->store_get(o->st->p, key, on_env_for, o) < 0)
      op_error(o, 500, "internal-error", "The store is unavailable");
  } else if (!strncmp(o->sub, "certs", 5)) {
    snprintf(key, sizeof key, "certs/%s/%s", o->app, o->name);
    if (o->st->h->store_get(o->st->p, key, on_certs_for, o) < 0)
      op_error(o, 500, "internal-error", "The store is unavailable");
  } else if (!strcmp(o->sub, "logs") || !strcmp(o->sub, "transactions")) {
    int logs = !strcmp(o->sub, "logs");
    if (logs && !json_is_true(json_object_get(json_object_get(o->rec, "settings"), "debug"))) {
      op_error(o, 400, "bad-request", "Logs are only available for cages in debug mode");
      return;
    }
    o->body = json_pack("{s:s,s:s,s:[]}", "name", o->name, "app", o->app, "records");
    const char *q = o->req ? o->st->h->request_info(o->req)->query : "";
    if (!o->body || o->st->h->store_query(o->st->p, logs ? "logs" : "trx", 0,
                                          (size_t)query_limit(q, 100, 10000), on_stream_rec,
                                          o) < 0)
      op_error(o, 500, "internal-error", "The store is unavailable");
  } else {
    op_error(o, 404, "resource-not-found", "No such cage endpoint");
  }
}

static void on_body(void *arg, int status, const uint8_t *data, size_t len) {
  cb_op *o = arg;
  if (status < 0) {
    op_error(o, status == -E2BIG ? 413 : 400, "bad-request", "The request body is too large");
    return;
  }
  o->body = len ? json_loadb((const char *)data, len, 0, NULL) : json_object();
  if (!json_is_object(o->body)) {
    op_error(o, 400, "bad-request", "The body must be a JSON object");
    return;
  }
  get_rec(o);
}

/* PUT /cage-images/<sha>/<i>: one chunk, stored as received. */
static void on_chunk_body(void *arg, int status, const uint8_t *data, size_t len) {
  cb_op *o = arg;
  if (status < 0 || len == 0 || len > CB_CHUNK) {
    op_error(o, 400, "bad-request", "A chunk is 1 byte to 8 MiB");
    return;
  }
  char key[120];
  snprintf(key, sizeof key, "img/%s/%" PRId64, o->image, o->chunk);
  if (o->st->h->store_put(o->st->p, key, data, len, 0, NULL, NULL) < 0) {
    op_error(o, 500, "internal-error", "The store is unavailable");
    return;
  }
  op_json(o, 200, json_pack("{s:s,s:I,s:I}", "image", o->image, "chunk", (json_int_t)o->chunk,
                            "size", (json_int_t)len));
}

static void on_chunk_exists(void *arg, int status, const uint8_t *value, size_t len) {
  cb_op *o = arg;
  if (status != 0) {
    op_error(o, 404, "resource-not-found", "No such chunk");
    return;
  }
  op_json(o, 200, json_pack("{s:s,s:I,s:I}", "image", o->image, "chunk", (json_int_t)o->chunk,
                            "size", (json_int_t)len));
  (void)value;
}

static int admin_images(cb_state *st, evs_request *req) {
  const evs_request_info *ri = st->h->request_info(req);
  char sha[80];
  long long i = -1;
  char extra;
  if (sscanf(ri->path, "/cage-images/%65[0-9a-f]/%lld%c", sha, &i, &extra) != 2 ||
      !sha_valid(sha) || i < 0 || i > 4096) {
    st->h->respond_error(req, 404, "resource-not-found", "No such image chunk");
    return EVS_HANDLED;
  }
  cb_op *o = op_new(st, req);
  if (!o) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  snprintf(o->image, sizeof o->image, "%.64s", sha);
  o->chunk = i;
  if (!strcmp(ri->method, "PUT")) {
    if (st->h->read_body(req, CB_CHUNK, on_chunk_body, o) < 0)
      op_error(o, 400, "bad-request", "The body cannot be read");
  } else {
    char key[120];
    snprintf(key, sizeof key, "img/%s/%lld", sha, i);
    if (st->h->store_get(st->p, key, on_chunk_exists, o) < 0)
      op_error(o, 500, "internal-error", "The store is unavailable");
  }
  return EVS_HANDLED;
}

static int admin_cages(void *state, evs_request *req) {
  cb_state *st = state;
  const evs_request_info *ri = st->h->request_info(req);
  const char *p = ri->path + strlen("/cages");
  char app[CB_APP_MAX + 2] = "", name[CB_NAME_MAX + 2] = "", sub[200] = "";
  if (*p == '/') {
    p++;
    const char *s1 = strchr(p, '/');
    size_t al = s1 ? (size_t)(s1 - p) : strlen(p);
    if (al > CB_APP_MAX) goto notfound;
    memcpy(app, p, al);
    app[al] = 0;
    if (s1) {
      const char *s2 = strchr(s1 + 1, '/');
      size_t nl = s2 ? (size_t)(s2 - s1 - 1) : strlen(s1 + 1);
      if (nl > CB_NAME_MAX) goto notfound;
      memcpy(name, s1 + 1, nl);
      name[nl] = 0;
      if (s2 && snprintf(sub, sizeof sub, "%s", s2 + 1) >= (int)sizeof sub) goto notfound;
    }
  }
  if ((app[0] && !app_valid(app)) || (name[0] && !name_valid(name))) goto notfound;
  if (sub[0] && strcmp(sub, "deployments") && strcmp(sub, "env") && strcmp(sub, "certs") &&
      strcmp(sub, "certs/lock") && strcmp(sub, "logs") && strcmp(sub, "transactions") &&
      !(strncmp(sub, "env/", 4) == 0 && env_key_valid(sub + 4)))
    goto notfound;
  cb_op *o = op_new(st, req);
  if (!o) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  snprintf(o->app, sizeof o->app, "%.63s", app);
  snprintf(o->name, sizeof o->name, "%.63s", name);
  snprintf(o->sub, sizeof o->sub, "%.159s", sub);
  const char *m = ri->method;
  if (!strcmp(m, "GET") && (!name[0] || (!sub[0]))) {
    if (!app[0] && ri->query[0] && !strncmp(ri->query, "app=", 4))
      snprintf(o->app, sizeof o->app, "%s", ri->query + 4);
    if (o->app[0] && !app_valid(o->app)) {
      op_error(o, 400, "bad-request", "app must be an app id");
      return EVS_HANDLED;
    }
    admin_list(o);
    return EVS_HANDLED;
  }
  if (!name[0]) {
    op_error(o, 404, "resource-not-found", "No such cage endpoint");
    return EVS_HANDLED;
  }
  int needs_body = (!strcmp(m, "PUT") && (!sub[0] || !strncmp(sub, "env/", 4) ||
                                          !strcmp(sub, "certs/lock"))) ||
                   (!strcmp(m, "POST") && !strcmp(sub, "certs"));
  int ok_method = needs_body || !strcmp(m, "GET") ||
                  (!strcmp(m, "DELETE") && (!sub[0] || !strncmp(sub, "env/", 4)));
  if (!ok_method) {
    op_error(o, 405, "method-not-allowed", "Method not allowed here");
    return EVS_HANDLED;
  }
  if (needs_body) {
    if (st->h->read_body(req, 1 << 20, on_body, o) < 0)
      op_error(o, 400, "bad-request", "The body cannot be read");
  } else {
    get_rec(o);
  }
  return EVS_HANDLED;
notfound:
  st->h->respond_error(req, 404, "resource-not-found", "No such cage endpoint");
  return EVS_HANDLED;
}

static int admin_images_route(void *state, evs_request *req) { return admin_images(state, req); }

/* ---- plugin ---------------------------------------------------------------------------------- */

static const evs_config_item config_items[] = {
    {"domain", EVS_CONFIG_STRING, "cages.localhost", 0, 0, 0,
     "the cages' base domain: https://<cage>.<app id with _ as ->.<domain>"},
    {"role", EVS_CONFIG_STRING, "cages", 0, 0, 0,
     "the listener role of the cages' front (a TLS listener with serves = cages)"},
    {"backend", EVS_CONFIG_STRING, "auto", 0, 0, 0,
     "what isolates a cage: auto (kvm where KVM can boot a kernel and qemu exists), kvm or "
     "sandbox"},
    {"memory", EVS_CONFIG_SIZE, "256m", 32LL << 20, 64LL << 30, 0, "memory of each cage"},
    {"max_image", EVS_CONFIG_SIZE, "512m", 1 << 20, 4LL << 30, 0, "largest image file deployed"},
    {"max_body", EVS_CONFIG_SIZE, "25m", 1024, 256LL << 20, 0,
     "largest request body the front decrypts and passes to a cage"},
    {"sync_interval", EVS_CONFIG_DURATION, "1s", 100, 60000, 0,
     "how often each worker reads the deployed cages from the store"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static int mkdir_p(const char *path) {
  char tmp[4300];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    mkdir(tmp, 0700);
    *p = '/';
  }
  return mkdir(tmp, 0700) == 0 || errno == EEXIST ? 0 : -errno;
}

static int cb_init(const evs_host *h, evs_plugin *p, void **ret) {
  if (h->size < offsetof(evs_host, add_tls_passthrough) + sizeof h->add_tls_passthrough ||
      h->size < offsetof(evs_host, store_put_new) + sizeof h->store_put_new) {
    h->log(p, NULL, EVS_LOG_ERROR, "cage-broker needs a host with plugin ABI 1.9");
    return -ENOTSUP;
  }
  cb_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->h = h;
  st->p = p;
  snprintf(st->domain, sizeof st->domain, "%s", h->config_string(p, "domain") ?: "cages.localhost");
  for (char *c = st->domain; *c; c++)
    if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
  const char *be = h->config_string(p, "backend") ?: "auto";
  st->backend = !strcmp(be, "kvm") ? CAGE_BACKEND_KVM
                : !strcmp(be, "sandbox") ? CAGE_BACKEND_SANDBOX
                                         : CAGE_BACKEND_AUTO;
  if (strcmp(be, "kvm") && strcmp(be, "sandbox") && strcmp(be, "auto")) {
    h->log(p, NULL, EVS_LOG_ERROR, "[plugin \"cage-broker\"] backend: auto, kvm or sandbox");
    free(st);
    return -EINVAL;
  }
  st->memory = (uint64_t)h->config_int(p, "memory");
  st->max_body = h->config_int(p, "max_image");
  st->sync_ms = h->config_int(p, "sync_interval");
  char hn[64] = "node";
  gethostname(hn, sizeof hn - 1);
  snprintf(st->node_id, sizeof st->node_id, "%.60s-%d", hn, (int)getpid());
  snprintf(st->dir, sizeof st->dir, "%s/cage-broker", h->state_dir(p));
  char sub[4300];
  snprintf(sub, sizeof sub, "%s/images", st->dir);
  int rc = mkdir_p(sub);
  snprintf(st->spool_dir, sizeof st->spool_dir, "%s/spool", st->dir);
  if (rc == 0) rc = mkdir_p(st->spool_dir);
  if (rc < 0) {
    h->log(p, NULL, EVS_LOG_ERROR, "cannot create %s: %s", st->dir, strerror(-rc));
    free(st);
    return rc;
  }
  static const char *const admin_paths[] = {"/cages", NULL};
  evs_route r;
  memset(&r, 0, sizeof r);
  r.size = sizeof r;
  r.role = "admin";
  r.path_prefix = admin_paths[0];
  r.handler = admin_cages;
  rc = h->add_route(p, &r);
  r.path_prefix = "/cage-images";
  r.handler = admin_images_route;
  if (rc == 0) rc = h->add_route(p, &r);
  if (rc == 0) rc = cb_front_init(st);
  if (rc < 0) {
    free(st);
    return rc;
  }
  st->sync_timer = h->timer_start(p, 50, (uint64_t)st->sync_ms, sync_tick, st);
  *ret = st;
  return 0;
}

static void cb_fini(void *state) {
  cb_state *st = state;
  if (!st) return;
  st->stopping = 1;
  if (st->sync_timer) st->h->timer_free(st->sync_timer);
  if (st->soon_timer) st->h->timer_free(st->soon_timer);
  /* The cages keep running for this rank's next worker (the runner keeps them); what is
   * left here is freed with the process, since late callbacks may still name it. */
}

EVS_PLUGIN_DEFINE("cage-broker", "1.0.0",
                  "Cages: deploy measured images, run them isolated, and front them with attested "
                  "TLS, API keys and auto-decryption",
                  config_items, cb_init, cb_fini);
