/*
 * function_runtime.c: the Functions product (docs/functions.md, README.md here): the API
 * routes the SDKs call, run authentication (Basic appId:apiKey, RunToken, Bearer), run tokens,
 * the decryption of a payload's ev: values, function and run records in the store, async
 * runs, the admin endpoints behind `evctl function`, the activity stream, function.error
 * events and counters. Boxes, pools and the channel to evs-fnbox are fr_box.c.
 *
 * API routes (role api):
 *   POST /functions/<name>/runs            {"payload": ...}; X-Async: true answers 202
 *   GET  /functions/<name>/runs/<runId>    an async run's status and result
 *   POST /v2/functions/<name>/run-token    api-key; body = the payload -> {"token": ...}
 * Admin routes (role admin, the admin socket):
 *   GET    /functions[?app=<appId>]                      every function
 *   PUT    /functions/<app>/<name>                       deploy {handler, language, timeout,
 *                                                        inboundAllowlist?, archive: base64}
 *   GET    /functions/<app>/<name>                       its record
 *   DELETE /functions/<app>/<name>
 *   GET    /functions/<app>/<name>/env                   the environment (secrets as ev:)
 *   PUT    /functions/<app>/<name>/env/<KEY>             {value, secret}
 *   DELETE /functions/<app>/<name>/env/<KEY>
 *   POST   /functions/<app>/<name>/runs                  a run without credentials
 *   GET    /functions/<app>/<name>/runs/<runId>          a run's record, with its console log
 *   GET    /function-activity?limit=N                    recent runs (evctl activity)
 *
 * Store (namespace "function-runtime"):
 *   fn/<app>/<name>             the function's record (version, envVersion, handler, ...)
 *   code/<app>/<name>/<ver>     the version's tar.gz
 *   env/<app>/<name>            {KEY: {value, secret}}; secret values are ev: strings
 *   run/<app>/<runId>           a run's record (run_ttl), with its bounded console log
 *   rt/<sha256(token)>          a run token's binding (app, name, payload digest, expiry)
 *   rtlive/<sha256(token)>      present until the token is used: store_delete is atomic on
 *                               both backends (one caller gets 0, every other -ENOENT), so a
 *                               token runs once even across nodes sharing PostgreSQL
 * Stream "runs": one record per run (never payloads, results or logs) for `evctl activity`.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "fn_archive.h"
#include "fr_int.h"
#include "outbound_match.h"

#define PERM_RUN "function:run"
#define PERM_TOKEN "function:create-run-token"

int64_t fr_now_ms(void) {
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

/* Copies s into d (cap bytes), cut to fit; for names already checked against their limit. */
static void cpy(char *d, size_t cap, const char *s) {
  size_t n = strlen(s);
  if (n >= cap) n = cap - 1;
  memcpy(d, s, n);
  d[n] = 0;
}

static int name_valid(const char *s, size_t n) {
  if (n == 0 || n > FR_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_'))
      return 0;
  }
  return 1;
}

static int app_valid(const char *s) {
  size_t n = strlen(s);
  if (n < 5 || n > FN_APP_MAX || strncmp(s, "app_", 4) != 0) return 0;
  return name_valid(s, n);
}

static int env_key_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 128 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return 0;
  }
  return 1;
}

/* ---- answering ---------------------------------------------------------------------------- */

static void send_json(fr_state *st, evs_request *req, int status, json_t *obj) {
  char *body = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(obj);
  if (!body) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  static const evs_header hdr[] = {{"Content-Type", 12, "application/json", 16}};
  st->h->respond(req, status, hdr, 1, (const uint8_t *)body, strlen(body));
  free(body);
}

/* ---- runs: life cycle ---------------------------------------------------------------------- */

void fr_live(fr_state *st, int delta) {
  st->live += delta;
  if (st->live == 0 && st->orphan) free(st);
}

static void run_unref(fr_run *r) {
  if (--r->refs > 0) return;
  fr_state *st = r->st;
  for (fr_run **pp = &st->runs; *pp; pp = &(*pp)->next_live)
    if (*pp == r) {
      *pp = r->next_live;
      break;
    }
  if (r->timer) st->h->timer_free(r->timer);
  json_decref(r->held_obj);
  free(r->held_detail);
  json_decref(r->body);
  json_decref(r->fn);
  json_decref(r->payload);
  json_decref(r->logs);
  OPENSSL_cleanse(&r->auth, sizeof r->auth);
  free(r);
  fr_live(st, -1);
}

static void run_gone(void *data) {
  fr_run *r = data;
  r->req = NULL;
  run_unref(r);
}

static fr_run *run_new(fr_state *st, evs_request *req) {
  fr_run *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  st->live++;
  r->st = st;
  r->req = req;
  r->refs = req ? 2 : 1; /* the request's, the pipeline's */
  r->created_ms = fr_now_ms();
  memcpy(r->id, "func_run_", 9);
  random_hex(r->id + 9, 12);
  r->logs = json_array();
  r->next_live = st->runs;
  st->runs = r;
  if (req) {
    const evs_request_info *info = st->h->request_info(req);
    snprintf(r->request_id, sizeof r->request_id, "%s", info->request_id ? info->request_id : "");
    st->h->request_set_data(req, st->p, r, run_gone);
  }
  return r;
}

/* Answers the run's request (if any, and not answered yet) with an error. */
static void run_error(fr_run *r, int status, const char *code, const char *detail) {
  if (r->req && !r->answered) {
    evs_request *req = r->req;
    r->answered = 1;
    r->refs++;
    r->st->h->respond_error(req, status, code, detail);
    run_unref(r);
  }
}

static void run_send(fr_run *r, int status, json_t *obj) {
  if (r->req && !r->answered) {
    evs_request *req = r->req;
    r->answered = 1;
    r->refs++;
    send_json(r->st, req, status, obj);
    run_unref(r);
  } else {
    json_decref(obj);
  }
}

/* The client is told only once the run's record is in the store, so that a read of it right
 * after (GET .../runs/<id>, run-status, on any worker or node) finds it: the 202 of an async
 * run waits for "queued", a sync run's answer for its final record. obj NULL: an error. */
static void run_hold(fr_run *r, int http, json_t *obj, const char *code, const char *detail) {
  if (!r->req || r->answered || r->held) {
    json_decref(obj);
    return;
  }
  r->held = 1;
  r->answered = 1; /* nothing else answers it now */
  r->held_http = http;
  r->held_obj = obj;
  r->held_code = code;
  r->held_detail = detail ? strdup(detail) : NULL;
}

static void run_flush(fr_run *r) {
  if (!r->held) return;
  r->held = 0;
  r->answered = 0;
  json_t *obj = r->held_obj;
  r->held_obj = NULL;
  if (r->st->stopping) { /* fini ran: the host closes the connection */
    json_decref(obj);
    r->answered = 1;
  } else if (obj) {
    run_send(r, r->held_http, obj);
  } else {
    run_error(r, r->held_http, r->held_code ? r->held_code : "internal-error",
              r->held_detail ? r->held_detail : "");
  }
  free(r->held_detail);
  r->held_code = NULL;
  r->held_detail = NULL;
}

static const char *fn_str(const json_t *fn, const char *k) {
  return json_string_value(json_object_get(fn, k));
}

static void emit_alert(fr_run *r, int http, const char *code, const char *message) {
  fr_state *st = r->st;
  if (!r->fn) return; /* only for a Function that exists, run by someone with a credential */
  char link[512], ts[40], evmsg[300];
  snprintf(link, sizeof link, "%s?runId=%s", st->activity_url, r->id);
  time_t t = (time_t)(fr_now_ms() / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(evmsg, sizeof evmsg, "Function %s (app %s): run %s failed with %s", r->name, r->app, r->id,
           code);
  const char *uuid = r->fn ? fn_str(r->fn, "functionUuid") : NULL;
  json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:s,s:s}", "teamUuid", st->team_uuid,
                         "errorMessage", message ? message : code, "evMessage", evmsg,
                         "activityLink", link, "timestamp", ts, "errorType", code, "statusCode",
                         http, "statusGroup", http >= 500 ? "5XX" : http >= 400 ? "4XX" : "ERR",
                         "functionUuid", uuid ? uuid : "", "functionName", r->name);
  char *s = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
  json_decref(ev);
  if (!s) return;
  evs_event e = {sizeof e, "function.error", s};
  st->h->emit_event(st->p, &e);
  free(s);
}

static void on_record_put(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v;
  (void)len;
  fr_run *r = arg;
  if (status < 0 && !r->st->stopping)
    r->st->h->log(r->st->p, NULL, EVS_LOG_ERROR, "cannot store the record of run %s: %s", r->id,
                  strerror(-status));
  run_flush(r);
  run_unref(r);
}

/* Through the worker's store thread, off the loop; a run's records are written in the order
 * they are made (the store runs one worker's calls in order), so "queued", "running" and the
 * final record cannot overtake each other. A held answer goes once the write is done. */
static void run_record_put(fr_run *r, json_t *rec) {
  char *s = r->app[0] ? json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  if (!s) {
    run_flush(r);
    return;
  }
  char key[256];
  snprintf(key, sizeof key, "run/%s/%s", r->app, r->id);
  r->refs++;
  int rc = r->st->h->store_put(r->st->p, key, (const uint8_t *)s, strlen(s),
                               (uint64_t)r->st->run_ttl_s, on_record_put, r);
  free(s);
  if (rc < 0) on_record_put(r, rc, NULL, 0);
}

static json_t *run_record(fr_run *r, const char *status) {
  json_t *rec = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:b}", "id", r->id, "runId", r->id, "status", status,
                          "functionName", r->name, "appUuid", r->app, "createdAt",
                          (json_int_t)r->created_ms, "async", r->async);
  if (rec && r->fn) json_object_set(rec, "version", json_object_get(r->fn, "version"));
  return rec;
}

void fr_run_started(fr_run *r) {
  r->started_ms = fr_now_ms();
  if (r->async) {
    json_t *rec = run_record(r, "running");
    if (rec) {
      json_object_set_new(rec, "startedAt", json_integer(r->started_ms));
      run_record_put(r, rec);
      json_decref(rec);
    }
  }
}

void fr_run_log(fr_run *r, const char *stream, const char *text, size_t len) {
  if (r->log_cut) return;
  if (r->log_bytes + len > (size_t)r->st->log_max) {
    r->log_cut = 1;
    json_array_append_new(r->logs, json_pack("{s:s,s:s}", "stream", "evserver", "text",
                                             "(console output past log_max dropped)"));
    return;
  }
  r->log_bytes += len;
  json_t *t = json_stringn_nocheck(text, len);
  if (t)
    json_array_append_new(r->logs, json_pack("{s:s,s:o,s:I}", "stream", stream, "text", t, "ts",
                                             (json_int_t)fr_now_ms()));
}

/* ---- sealed run records ------------------------------------------------------------------ */
/* A run record's private part (`result` of an async run, `error` the Function threw, `logs`) is
 * stored as one ev: string of its JSON, encrypted with the app's keys ("sealed"), so that what a
 * Function was given in plaintext never lies in the store (disk, PostgreSQL) in plaintext. Reads
 * (GET .../runs/<id>, evctl function run-status) open it through the enclave. If it cannot be
 * sealed (the enclave is down), the record is kept without it ("sealed": null) rather than in
 * the clear. */
static void fr_crypto(fr_state *st, const char *app, int encrypt, json_t *data,
                      void (*cb)(void *arg, int status, json_t *data), void *arg);

typedef struct seal_job {
  fr_run *r;
  json_t *rec;
} seal_job;

static void on_sealed(void *arg, int status, json_t *data) {
  seal_job *j = arg;
  fr_run *r = j->r;
  if (status == 0 && json_is_string(data)) {
    json_object_set(j->rec, "sealed", data);
  } else {
    json_object_set_new(j->rec, "sealed", json_null());
    if (!r->st->stopping)
      r->st->h->log(r->st->p, NULL, EVS_LOG_WARN, "run %s: its output could not be sealed with the "
                    "app's keys (status %d): the record keeps none of it", r->id, status);
  }
  json_decref(data);
  if (!r->st->stopping) run_record_put(r, j->rec);
  else run_flush(r);
  json_decref(j->rec);
  free(j);
  run_unref(r);
}

static void record_seal_put(fr_run *r, json_t *rec, json_t *priv) {
  char *text = priv ? json_dumps(priv, JSON_COMPACT) : NULL;
  if (priv) {
    json_object_clear(priv);
    json_decref(priv);
  }
  seal_job *j = text ? calloc(1, sizeof *j) : NULL;
  json_t *str = j ? json_string(text) : NULL;
  if (text) {
    OPENSSL_cleanse(text, strlen(text));
    free(text);
  }
  if (!str) {
    free(j);
    json_object_set_new(rec, "sealed", json_null());
    run_record_put(r, rec);
    json_decref(rec);
    return;
  }
  j->r = r;
  j->rec = rec; /* ours now */
  r->refs++;
  fr_crypto(r->st, r->app, 1, str, on_sealed, j);
}

void fr_run_finish(fr_run *r, const char *status, json_t *result, json_t *error, int http,
                   const char *code, const char *detail) {
  fr_state *st = r->st;
  if (r->done) {
    json_decref(result);
    json_decref(error);
    return;
  }
  r->done = 1;
  if (r->timer) {
    st->h->timer_free(r->timer);
    r->timer = NULL;
  }
  json_decref(r->payload);
  r->payload = NULL;
  int64_t now = fr_now_ms();
  const char *rec_status = status ? status : (code && strcmp(code, "request-timeout") == 0) ? "timeout" : "failure";
  /* The activity stream: never payloads, results or console output. */
  int shown = status ? 200 : http;
  /* Shaped like the relays' transaction records, so `evctl activity` lists them together. */
  char started[40], path[128], label[96];
  time_t secs = (time_t)(r->created_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  size_t sl = strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(started + sl, sizeof started - sl, ".%03dZ", (int)(r->created_ms % 1000));
  snprintf(path, sizeof path, "/functions/%s/runs", r->name);
  snprintf(label, sizeof label, "function %s", r->name);
  json_t *act = json_pack("{s:s,s:s,s:s,s:s,s:i,s:s,s:I,s:s,s:s,s:s,s:s,s:b,s:b}", "requestId", r->request_id,
                          "relay", label, "method", "POST", "path", path, "status", shown, "startedAt", started,
                          "durationMs", (json_int_t)(now - r->created_ms), "runId", r->id, "appUuid", r->app,
                          "functionName", r->name, "runStatus", rec_status, "coldStart", r->cold, "async", r->async);
  if (act && code) json_object_set_new(act, "errorCode", json_string(code));
  char *as = act ? json_dumps(act, JSON_COMPACT) : NULL;
  json_decref(act);
  /* Requests that never got as far as an app (no or bad credentials) are not recorded: anyone
   * could fill the stream with them. */
  if (as && r->app[0]) {
    /* A synchronous run's answer waits for its record's commit (ABI 1.9, docs/state.md); an
     * async run was answered (202) before it ran, so its record is written behind. */
    if (r->req && !r->answered)
      st->h->store_append_request(st->p, r->req, "runs", as);
    else
      st->h->store_append(st->p, "runs", as);
  }
  free(as);
  st->h->counter_add(st->p, "function_runs", 1);
  if (status && strcmp(status, "success") == 0) {
    st->h->counter_add(st->p, "function_runs_success", 1);
  } else if (status) {
    st->h->counter_add(st->p, "function_runs_failure", 1);
    const char *m = json_string_value(json_object_get(error, "message"));
    emit_alert(r, 200, "function-runtime-error", m);
  } else {
    st->h->counter_add(st->p, code && strcmp(code, "request-timeout") == 0 ? "function_runs_timeout"
                                                                          : "function_runs_error", 1);
    emit_alert(r, http, code, detail);
  }
  /* The answer waits for the record (run_hold); the activity record above is bound to the
   * request first, so it too is committed before the answer ends. */
  if (status) {
    json_t *obj = json_pack("{s:s,s:s,s:s,s:I,s:s}", "id", r->id, "runId", r->id, "status", status,
                            "createdAt", (json_int_t)r->created_ms, "appUuid", r->app);
    if (obj && result) json_object_set(obj, "result", result);
    if (obj && error) json_object_set(obj, "error", error);
    run_hold(r, 200, obj, NULL, NULL);
  } else {
    run_hold(r, http, NULL, code, detail);
  }
  json_t *rec = run_record(r, rec_status);
  if (rec) {
    json_object_set_new(rec, "finishedAt", json_integer(now));
    json_object_set_new(rec, "durationMs", json_integer(now - (r->started_ms ? r->started_ms : r->created_ms)));
    json_object_set_new(rec, "coldStart", json_boolean(r->cold));
    /* What the Function produced (an async result, what it threw, its console output) may hold
     * the plaintext it was given: it is kept sealed with the app's keys (record_seal_put). An
     * error of our own (code) is ours, and stays readable. */
    json_t *priv = json_object();
    if (priv && r->async && result) json_object_set(priv, "result", result);
    if (priv && error) json_object_set(priv, "error", error);
    if (priv) json_object_set(priv, "logs", r->logs);
    if (code) json_object_set_new(rec, "error", json_pack("{s:s,s:s,s:i}", "code", code, "message",
                                                          detail ? detail : "", "status", http));
    record_seal_put(r, rec, priv);
  } else {
    run_flush(r);
  }
  json_decref(result);
  json_decref(error);
  run_unref(r); /* the pipeline's reference */
}

/* ---- crypto over JSON: the payload's ev: values, context.encrypt/decrypt ---------------- */

typedef struct fr_slot {
  json_t *parent;
  char *key; /* object member, or NULL: array index */
  size_t index;
  char *text; /* encrypt: a number's text */
} fr_slot;

typedef struct fr_cjob {
  fr_state *st;
  json_t *root; /* [data] */
  fr_slot *s;
  size_t n, cap;
  int encrypt, too_many;
  void (*cb)(void *arg, int status, json_t *data);
  void *arg;
} fr_cjob;

static int slot_add(fr_cjob *j, json_t *parent, const char *key, size_t index) {
  if (j->n == EVS_CRYPTO_MAX_VALUES) {
    j->too_many = 1;
    return -E2BIG;
  }
  if (j->n == j->cap) {
    size_t nc = j->cap ? j->cap * 2 : 16;
    fr_slot *ns = realloc(j->s, nc * sizeof *ns);
    if (!ns) return -ENOMEM;
    j->s = ns;
    j->cap = nc;
  }
  fr_slot *s = &j->s[j->n++];
  memset(s, 0, sizeof *s);
  s->parent = parent;
  s->index = index;
  if (key && !(s->key = strdup(key))) return -ENOMEM;
  return 0;
}

static int walk(fr_cjob *j, json_t *parent, const char *key, size_t index, json_t *v, int depth) {
  if (depth > 64) return -EINVAL;
  if (json_is_object(v)) {
    const char *k;
    json_t *c;
    json_object_foreach(v, k, c) {
      int r = walk(j, v, k, 0, c, depth + 1);
      if (r < 0) return r;
    }
    return 0;
  }
  if (json_is_array(v)) {
    for (size_t i = 0; i < json_array_size(v); i++) {
      int r = walk(j, v, NULL, i, json_array_get(v, i), depth + 1);
      if (r < 0) return r;
    }
    return 0;
  }
  if (j->encrypt) {
    if (json_is_string(v) || json_is_number(v) || json_is_boolean(v)) return slot_add(j, parent, key, index);
    return 0;
  }
  if (json_is_string(v) && strncmp(json_string_value(v), "ev:", 3) == 0) return slot_add(j, parent, key, index);
  return 0;
}

static json_t *slot_get(const fr_slot *s) {
  return s->key ? json_object_get(s->parent, s->key) : json_array_get(s->parent, s->index);
}

static void cjob_free(fr_cjob *j) {
  for (size_t i = 0; i < j->n; i++) {
    free(j->s[i].key);
    free(j->s[i].text);
  }
  free(j->s);
  json_decref(j->root);
  fr_state *st = j->st;
  free(j);
  fr_live(st, -1);
}

static void on_crypto_values(void *arg, int status, const evs_crypto_result *res, size_t n) {
  fr_cjob *j = arg;
  if (j->st->stopping) { /* after fini: the callback only releases what waits on it */
    void (*cb)(void *, int, json_t *) = j->cb;
    void *cbarg = j->arg;
    cjob_free(j);
    cb(cbarg, EVS_ENOCRYPTO, NULL);
    return;
  }
  if (status == 0 && n == j->n) {
    for (size_t i = 0; i < n && status == 0; i++) {
      if (res[i].status != 0) {
        status = res[i].status;
        break;
      }
      json_t *nv = NULL;
      if (j->encrypt || res[i].type == EVS_CRYPTO_STRING)
        nv = json_stringn((const char *)res[i].data, res[i].len);
      else if (res[i].type == EVS_CRYPTO_NUMBER)
        nv = json_loadb((const char *)res[i].data, res[i].len, JSON_DECODE_ANY, NULL);
      else if (res[i].type == EVS_CRYPTO_BOOLEAN)
        nv = json_boolean(res[i].len == 4 && memcmp(res[i].data, "true", 4) == 0);
      if (!nv) {
        status = EVS_CRYPTO_E_DECRYPT;
        break;
      }
      fr_slot *s = &j->s[i];
      if (s->key) json_object_set_new(s->parent, s->key, nv);
      else json_array_set_new(s->parent, s->index, nv);
    }
  } else if (status == 0) {
    status = EVS_CRYPTO_E_PROTOCOL;
  }
  json_t *out = status == 0 ? json_incref(json_array_get(j->root, 0)) : NULL;
  void (*cb)(void *, int, json_t *) = j->cb;
  void *cbarg = j->arg;
  cjob_free(j);
  cb(cbarg, status, out);
}

/* Encrypts (every string, number and boolean) or decrypts (every ev: string) the values of
 * data (consumed) with app's keys, in one enclave call. cb gets status 0 and the new data (a
 * reference it owns), or an error: -E2BIG (too many values), an evs_crypto_status,
 * EVS_ENOCRYPTO. cb runs exactly once, maybe before this returns. */
static void fr_crypto(fr_state *st, const char *app, int encrypt, json_t *data,
                      void (*cb)(void *arg, int status, json_t *data), void *arg) {
  fr_cjob *j = calloc(1, sizeof *j);
  if (!j) {
    json_decref(data);
    cb(arg, -ENOMEM, NULL);
    return;
  }
  st->live++;
  j->st = st;
  j->encrypt = encrypt;
  j->cb = cb;
  j->arg = arg;
  j->root = json_array();
  json_array_append_new(j->root, data);
  int rc = walk(j, j->root, NULL, 0, data, 0);
  if (rc < 0 || j->n == 0) {
    json_t *out = rc == 0 ? json_incref(data) : NULL;
    cjob_free(j);
    cb(arg, rc, out);
    return;
  }
  evs_crypto_value *vals = calloc(j->n, sizeof *vals);
  if (!vals) {
    cjob_free(j);
    cb(arg, -ENOMEM, NULL);
    return;
  }
  for (size_t i = 0; i < j->n; i++) {
    json_t *v = slot_get(&j->s[i]);
    vals[i].size = sizeof vals[i];
    if (json_is_string(v)) {
      vals[i].type = EVS_CRYPTO_STRING;
      vals[i].data = (const uint8_t *)json_string_value(v);
      vals[i].len = json_string_length(v);
    } else if (json_is_boolean(v)) {
      vals[i].type = EVS_CRYPTO_BOOLEAN;
      vals[i].data = (const uint8_t *)(json_is_true(v) ? "true" : "false");
      vals[i].len = json_is_true(v) ? 4 : 5;
    } else {
      j->s[i].text = json_dumps(v, JSON_ENCODE_ANY);
      vals[i].type = EVS_CRYPTO_NUMBER;
      vals[i].data = (const uint8_t *)(j->s[i].text ? j->s[i].text : "0");
      vals[i].len = strlen((const char *)vals[i].data);
    }
  }
  if (encrypt) {
    evs_encrypt_request er = {sizeof er, app, "secp256k1", NULL, vals, j->n};
    rc = st->h->encrypt_values(st->p, &er, on_crypto_values, j);
  } else {
    evs_decrypt_request dr = {sizeof dr, app, vals, j->n};
    rc = st->h->decrypt_values(st->p, &dr, on_crypto_values, j);
  }
  free(vals);
  if (rc < 0) {
    cjob_free(j);
    cb(arg, rc, NULL);
  }
}

/* For fr_box.c: context.encrypt / context.decrypt. */
void fr_context_crypto(fr_state *st, const char *app, int encrypt, json_t *data,
                       void (*cb)(void *arg, int status, json_t *data), void *arg) {
  fr_crypto(st, app, encrypt, data, cb, arg);
}

/* ---- the run pipeline -------------------------------------------------------------------- */

static void on_run_timeout(void *arg) {
  fr_run *r = arg;
  fr_state *st = r->st;
  char d[160];
  int64_t t = json_integer_value(json_object_get(r->fn, "timeout"));
  int64_t limit_ms = r->async ? t * 1000 : (t * 1000 < st->sync_timeout_ms ? t * 1000 : st->sync_timeout_ms);
  snprintf(d, sizeof d, "The function run did not complete within its timeout (%" PRId64 " ms)", limit_ms);
  st->h->timer_free(r->timer);
  r->timer = NULL;
  fr_box_abandon(r); /* kills the box: its whole process tree */
  fr_run_finish(r, NULL, NULL, NULL, 408, "request-timeout", d);
}

static void dispatch(fr_run *r) {
  fr_state *st = r->st;
  int64_t t = json_integer_value(json_object_get(r->fn, "timeout"));
  if (t <= 0) t = 30;
  int64_t limit = t * 1000;
  if (!r->async && limit > st->sync_timeout_ms) limit = st->sync_timeout_ms;
  /* The timeout covers the whole run, a cold start included: the client waits that long. */
  r->timer = st->h->timer_start(st->p, (uint64_t)limit, 0, on_run_timeout, r);
  if (r->async) {
    json_t *rec = run_record(r, "queued");
    run_hold(r, 202, json_pack("{s:s,s:s,s:s,s:I,s:s}", "id", r->id, "runId", r->id, "status",
                               "queued", "createdAt", (json_int_t)r->created_ms, "appUuid", r->app),
             NULL, NULL);
    if (rec) run_record_put(r, rec);
    else run_flush(r);
    json_decref(rec);
  }
  int rc = fr_pool_submit(st, r);
  if (rc < 0) fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The function could not be started");
}

static void on_payload_decrypted(void *arg, int status, json_t *data) {
  fr_run *r = arg;
  if (r->st->stopping) {
    json_decref(data);
    run_unref(r);
    return;
  }
  if (status < 0) {
    json_decref(data);
    if (status == -E2BIG)
      fr_run_finish(r, NULL, NULL, NULL, 400, "bad-request", "The payload holds more than 4000 encrypted values");
    else if (status == EVS_ENOCRYPTO || status == -ENOMEM || status == EVS_CRYPTO_E_INTERNAL)
      fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The payload could not be decrypted right now; retry later");
    else if (status == -EINVAL)
      fr_run_finish(r, NULL, NULL, NULL, 400, "bad-request", "The payload is nested too deeply");
    else
      fr_run_finish(r, NULL, NULL, NULL, 422, "decryption-error",
                    "The payload holds a value that does not decrypt with this app's keys");
    return;
  }
  r->payload = data;
  dispatch(r);
}

static int ip_allowed(const json_t *list, const char *addr) {
  if (!json_is_array(list) || json_array_size(list) == 0) return 1;
  unsigned char a[16], n[16];
  int fam = strchr(addr, ':') ? AF_INET6 : AF_INET, alen = fam == AF_INET ? 4 : 16;
  if (inet_pton(fam, addr, a) != 1) return 0;
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v) {
    const char *s = json_string_value(v);
    if (!s) continue;
    char net[64];
    snprintf(net, sizeof net, "%s", s);
    char *slash = strchr(net, '/');
    int bits = alen * 8;
    if (slash) {
      *slash = 0;
      bits = atoi(slash + 1);
    }
    int nf = strchr(net, ':') ? AF_INET6 : AF_INET;
    if (nf != fam || inet_pton(nf, net, n) != 1 || bits < 0 || bits > alen * 8) continue;
    int ok = 1;
    for (int b = 0; b < bits && ok; b++)
      if (((a[b / 8] ^ n[b / 8]) >> (7 - b % 8)) & 1) ok = 0;
    if (ok) return 1;
  }
  return 0;
}

static void after_token(fr_run *r);

static void decrypt_payload(fr_run *r);

/* The atomic take of rtlive/<digest>: of concurrent uses (any worker, any node), one gets 0. */
static void on_token_live_deleted(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v, (void)len;
  fr_run *r = arg;
  if (r->st->stopping) {
    run_unref(r); /* fini ran: release, answer nobody */
    return;
  }
  if (status == -ENOENT) {
    fr_run_finish(r, NULL, NULL, NULL, 401, "run-token-used-error", "This run token has already been used");
    return;
  }
  if (status < 0) {
    fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The store is unavailable");
    return;
  }
  decrypt_payload(r);
}

static void on_token_record(void *arg, int status, const uint8_t *v, size_t len) {
  fr_run *r = arg;
  fr_state *st = r->st;
  if (st->stopping) {
    run_unref(r); /* fini ran: release, answer nobody */
    return;
  }
  if (status == -ENOENT) {
    fr_run_finish(r, NULL, NULL, NULL, 401, "run-token-validation-error", "The run token is not valid");
    return;
  }
  if (status < 0) {
    fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The store is unavailable");
    return;
  }
  json_t *t = json_loadb((const char *)v, len, 0, NULL);
  const char *app = json_string_value(json_object_get(t, "appUuid"));
  const char *name = json_string_value(json_object_get(t, "functionName"));
  const char *digest = json_string_value(json_object_get(t, "payloadDigest"));
  int64_t exp = json_integer_value(json_object_get(t, "expiresAt"));
  if (!app || !name || !digest || strcmp(name, r->name) != 0 || strlen(app) > FN_APP_MAX) {
    json_decref(t);
    fr_run_finish(r, NULL, NULL, NULL, 401, "run-token-validation-error", "The run token is not valid for this function");
    return;
  }
  if (fr_now_ms() >= exp) {
    json_decref(t);
    fr_run_finish(r, NULL, NULL, NULL, 401, "run-token-expired", "The run token has expired");
    return;
  }
  char want[65];
  json_t *payload = json_object_get(r->body, "payload");
  if (evs__fn_payload_digest(payload, want) < 0 || CRYPTO_memcmp(want, digest, 64) != 0) {
    json_decref(t);
    fr_run_finish(r, NULL, NULL, NULL, 403, "payload-verification-error",
                  "The payload is not the one the run token was created for");
    return;
  }
  cpy(r->app, sizeof r->app, app);
  json_decref(t);
  after_token(r); /* the token is used up only once the run is allowed to go ahead */
}

static void on_fn_record(void *arg, int status, const uint8_t *v, size_t len);

/* The app is known (key or token): load the function. */
static void after_token(fr_run *r) {
  char key[256];
  snprintf(key, sizeof key, "fn/%s/%s", r->app, r->name);
  int rc = r->st->h->store_get(r->st->p, key, on_fn_record, r);
  if (rc < 0) fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The store is unavailable");
}

static void on_fn_record(void *arg, int status, const uint8_t *v, size_t len) {
  fr_run *r = arg;
  fr_state *st = r->st;
  if (st->stopping) {
    run_unref(r); /* fini ran: release, answer nobody */
    return;
  }
  if (status == -ENOENT) {
    fr_run_finish(r, NULL, NULL, NULL, 404, "resource-not-found", "No function of this name exists in the app");
    return;
  }
  if (status < 0 || !(r->fn = json_loadb((const char *)v, len, 0, NULL))) {
    fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The store is unavailable");
    return;
  }
  if (r->req && !r->admin) {
    const evs_request_info *info = st->h->request_info(r->req);
    if (!ip_allowed(json_object_get(r->fn, "inboundAllowlist"), info->client_addr ? info->client_addr : "")) {
      fr_run_finish(r, NULL, NULL, NULL, 403, "forbidden-ip-error",
                    "The client's IP address is not in the function's inbound allowlist");
      return;
    }
  }
  if (r->token) {
    char key[128];
    snprintf(key, sizeof key, "rtlive/%s", r->token_digest);
    int rc = st->h->store_delete(st->p, key, on_token_live_deleted, r);
    if (rc < 0) fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The store is unavailable");
    return;
  }
  decrypt_payload(r);
}

static void decrypt_payload(fr_run *r) {
  json_t *payload = json_incref(json_object_get(r->body, "payload"));
  json_decref(r->body); /* the ciphertext copy is no longer needed */
  r->body = NULL;
  fr_crypto(r->st, r->app, 0, payload, on_payload_decrypted, r);
}

static void on_run_key(void *arg, int status, const char *app_id) {
  fr_run *r = arg;
  fr_state *st = r->st;
  if (st->stopping) {
    run_unref(r); /* fini ran: release, answer nobody */
    return;
  }
  if (status == EVS_ENOCRYPTO) {
    fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "API keys cannot be checked right now; retry later");
    return;
  }
  if (status != 0 || !app_id || strcmp(app_id, r->auth.app_id) != 0) {
    fr_run_finish(r, NULL, NULL, NULL, 401, "unauthorized",
                  "Invalid authorization provided (the API key needs the function:run permission)");
    return;
  }
  cpy(r->app, sizeof r->app, app_id);
  OPENSSL_cleanse(r->auth.key, sizeof r->auth.key);
  after_token(r);
}

static void start_auth(fr_run *r) {
  fr_state *st = r->st;
  if (r->admin) {
    after_token(r);
    return;
  }
  if (r->auth.kind == FN_AUTH_TOKEN) {
    r->token = 1;
    evs__fn_token_digest(r->auth.token, r->token_digest);
    char key[128];
    snprintf(key, sizeof key, "rt/%s", r->token_digest);
    int rc = st->h->store_get(st->p, key, on_token_record, r);
    if (rc < 0) fr_run_finish(r, NULL, NULL, NULL, 500, "internal-error", "The store is unavailable");
    return;
  }
  evs_api_key_request kr;
  memset(&kr, 0, sizeof kr);
  kr.size = sizeof kr;
  kr.key = r->auth.key;
  kr.key_len = strlen(r->auth.key);
  kr.permission = PERM_RUN;
  int rc = st->h->check_api_key(st->p, &kr, on_run_key, r);
  if (rc < 0) on_run_key(r, rc, NULL);
}

static void on_run_body(void *arg, int status, const uint8_t *data, size_t len) {
  fr_run *r = arg;
  if (r->st->stopping) {
    run_unref(r); /* fini ran: release, answer nobody */
    return;
  }
  if (status < 0) {
    if (status == -E2BIG) fr_run_finish(r, NULL, NULL, NULL, 413, "bad-request", "The payload is too large");
    else fr_run_finish(r, NULL, NULL, NULL, 400, "bad-request", "The request body could not be read");
    return;
  }
  json_error_t je;
  r->body = json_loadb((const char *)data, len, 0, &je);
  if (!json_is_object(r->body)) {
    fr_run_finish(r, NULL, NULL, NULL, 400, "bad-request", "The body must be a JSON object {\"payload\": ...}");
    return;
  }
  if (!json_object_get(r->body, "payload")) {
    /* The docs' curl posts the payload itself with a Bearer token; a run with an API key
     * always wraps it (as the SDKs do). */
    if (r->auth.kind != FN_AUTH_TOKEN) {
      fr_run_finish(r, NULL, NULL, NULL, 400, "bad-request", "The body must be a JSON object {\"payload\": ...}");
      return;
    }
    json_t *wrapped = json_pack("{s:O}", "payload", r->body);
    json_decref(r->body);
    r->body = wrapped;
  }
  start_auth(r);
}

static int header_is_true(fr_state *st, evs_request *req, const char *name) {
  evs_header hd;
  if (st->h->request_header(req, name, &hd) != 0) return 0;
  return (hd.value_len == 4 && strncasecmp(hd.value, "true", 4) == 0) || (hd.value_len == 1 && hd.value[0] == '1');
}

/* A run request: from the api role (authenticated) or the admin socket (admin = 1, app given). */
static void start_run(fr_state *st, evs_request *req, const char *app, const char *name, int admin) {
  fr_run *r = run_new(st, req);
  if (!r) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  r->admin = admin;
  cpy(r->name, sizeof r->name, name);
  if (app) cpy(r->app, sizeof r->app, app);
  r->async = header_is_true(st, req, "X-Async");
  if (admin) {
    const char *q = st->h->request_info(req)->query;
    if (q && (strstr(q, "async=1") || strstr(q, "async=true"))) r->async = 1;
  }
  if (!admin) {
    evs_header hd;
    int rc = st->h->request_header(req, "Authorization", &hd) == 0
                 ? evs__fn_auth_parse(hd.value, hd.value_len, &r->auth) : -EINVAL;
    if (rc == -EBADMSG) {
      fr_run_finish(r, NULL, NULL, NULL, 401, "run-token-validation-error", "The run token is malformed");
      return;
    }
    if (rc < 0) {
      fr_run_finish(r, NULL, NULL, NULL, 401, "unauthorized", "Invalid authorization provided");
      return;
    }
  }
  int rc = st->h->read_body(req, (size_t)st->max_payload, on_run_body, r);
  if (rc < 0) on_run_body(r, rc, NULL, 0);
}

/* ---- request-bound operations ------------------------------------------------------------ */
/* What a GET of a run, a run-token request and an admin call share: the request, held until it
 * is answered or gone (then req is NULL), and one reference per callback in flight. Each is a
 * struct whose first member is an fr_op; release frees what it owns besides itself. */
typedef struct fr_op fr_op;
struct fr_op {
  fr_state *st;
  evs_request *req;
  int refs;
  void (*release)(fr_op *op);
};

static void op_start(fr_op *o, fr_state *st, evs_request *req, void (*release)(fr_op *)) {
  st->live++;
  o->st = st;
  o->req = req;
  o->refs = 2; /* the request's, the pipeline's */
  o->release = release;
}

static void op_unref(fr_op *o) {
  if (--o->refs) return;
  fr_state *st = o->st;
  if (o->release) o->release(o);
  free(o); /* the first member: the operation itself */
  fr_live(st, -1);
}

static void op_gone(void *d) {
  fr_op *o = d;
  o->req = NULL;
  op_unref(o);
}

/* Answers with the documented error body (if the request is still there), then lets go. */
static void op_error(fr_op *o, int status, const char *code, const char *detail) {
  if (o->req) {
    evs_request *req = o->req;
    o->refs++;
    o->st->h->respond_error(req, status, code, detail);
    o->refs--;
  }
  op_unref(o);
}

/* ---- GET /functions/<name>/runs/<id> ----------------------------------------------------- */

typedef struct fr_get {
  fr_op op;
  json_t *rec; /* the record, while its sealed part is being opened */
  int admin;
  char app[FN_APP_MAX + 1];
  char name[FR_NAME_MAX + 1];
  char id[FR_ID_MAX];
  fn_auth auth;
} fr_get;

static void get_release(fr_op *o) {
  fr_get *g = (fr_get *)o;
  json_decref(g->rec);
  OPENSSL_cleanse(&g->auth, sizeof g->auth);
}

/* Answers a run's record: its private part merged back (output only for the admin). */
static void get_answer(fr_get *g, json_t *rec) {
  json_object_del(rec, "sealed");
  if (!g->admin) json_object_del(rec, "logs");
  if (g->op.req) {
    evs_request *req = g->op.req;
    g->op.refs++;
    send_json(g->op.st, req, 200, rec);
    g->op.refs--;
  } else {
    json_decref(rec);
  }
  op_unref(&g->op);
}

static void on_run_unsealed(void *arg, int status, json_t *data) {
  fr_get *g = arg;
  json_t *rec = g->rec;
  g->rec = NULL;
  if (g->op.st->stopping) {
    json_decref(data);
    json_decref(rec);
    op_unref(&g->op);
    return;
  }
  json_t *priv = status == 0 && json_is_string(data)
                     ? json_loadb(json_string_value(data), json_string_length(data), 0, NULL)
                     : NULL;
  if (data && json_is_string(data)) OPENSSL_cleanse((void *)json_string_value(data), json_string_length(data));
  json_decref(data);
  if (!json_is_object(priv)) {
    json_decref(priv);
    json_decref(rec);
    op_error(&g->op, status == EVS_CRYPTO_E_NO_APP ? 503 : 500, "internal-error",
              "The run's output cannot be opened right now (is the app unlocked?)");
    return;
  }
  json_object_update(rec, priv);
  json_decref(priv);
  get_answer(g, rec);
}

static void on_run_rec(void *arg, int status, const uint8_t *v, size_t len) {
  fr_get *g = arg;
  if (g->op.st->stopping) {
    op_unref(&g->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status == -ENOENT) {
    op_error(&g->op, 404, "resource-not-found", "No run of this id exists");
    return;
  }
  json_t *rec = status == 0 ? json_loadb((const char *)v, len, 0, NULL) : NULL;
  const char *name = json_string_value(json_object_get(rec, "functionName"));
  if (!rec || !name) {
    json_decref(rec);
    op_error(&g->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  if (strcmp(name, g->name) != 0) {
    json_decref(rec);
    op_error(&g->op, 404, "resource-not-found", "No run of this id exists for this function");
    return;
  }
  json_t *sealed = json_object_get(rec, "sealed");
  if (json_is_string(sealed)) { /* opened through the enclave: on_run_unsealed answers */
    g->rec = rec;
    fr_crypto(g->op.st, g->app, 0, json_incref(sealed), on_run_unsealed, g);
    return;
  }
  get_answer(g, rec);
}

static void get_load(fr_get *g) {
  char key[256];
  snprintf(key, sizeof key, "run/%s/%s", g->app, g->id);
  if (g->op.st->h->store_get(g->op.st->p, key, on_run_rec, g) < 0) op_error(&g->op, 500, "internal-error", "The store is unavailable");
}

static void on_get_key(void *arg, int status, const char *app_id) {
  fr_get *g = arg;
  if (g->op.st->stopping) {
    op_unref(&g->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status == EVS_ENOCRYPTO) {
    op_error(&g->op, 500, "internal-error", "API keys cannot be checked right now; retry later");
    return;
  }
  if (status != 0 || !app_id || strcmp(app_id, g->auth.app_id) != 0) {
    op_error(&g->op, 401, "unauthorized", "Invalid authorization provided");
    return;
  }
  cpy(g->app, sizeof g->app, app_id);
  get_load(g);
}

static void start_get(fr_state *st, evs_request *req, const char *app, const char *name, const char *id,
                      int admin) {
  fr_get *g = calloc(1, sizeof *g);
  if (!g) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  op_start(&g->op, st, req, get_release);
  g->admin = admin;
  cpy(g->name, sizeof g->name, name);
  cpy(g->id, sizeof g->id, id);
  st->h->request_set_data(req, st->p, g, op_gone);
  if (admin) {
    cpy(g->app, sizeof g->app, app);
    get_load(g);
    return;
  }
  evs_header hd;
  if (st->h->request_header(req, "Authorization", &hd) != 0 ||
      evs__fn_auth_parse(hd.value, hd.value_len, &g->auth) < 0 || g->auth.kind != FN_AUTH_BASIC) {
    op_error(&g->op, 401, "unauthorized", "Invalid authorization provided");
    return;
  }
  evs_api_key_request kr;
  memset(&kr, 0, sizeof kr);
  kr.size = sizeof kr;
  kr.key = g->auth.key;
  kr.key_len = strlen(g->auth.key);
  kr.permission = PERM_RUN;
  int rc = st->h->check_api_key(st->p, &kr, on_get_key, g);
  if (rc < 0) on_get_key(g, rc, NULL);
}

/* ---- POST /v2/functions/<name>/run-token ------------------------------------------------- */

typedef struct fr_tok {
  fr_op op;
  char name[FR_NAME_MAX + 1];
  char app[FN_APP_MAX + 1];
  char digest[65];
} fr_tok;


static void on_tok_fn(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v, (void)len;
  fr_tok *t = arg;
  fr_state *st = t->op.st;
  if (st->stopping) {
    op_unref(&t->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status == -ENOENT) {
    op_error(&t->op, 404, "resource-not-found", "No function of this name exists in the app");
    return;
  }
  if (status < 0) {
    op_error(&t->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  char token[FN_TOKEN_LEN + 1], tdig[65], key[128];
  if (evs__fn_token_new(token) < 0) {
    op_error(&t->op, 500, "internal-error", "No randomness");
    return;
  }
  evs__fn_token_digest(token, tdig);
  int64_t exp = fr_now_ms() + st->token_ttl_s * 1000;
  json_t *rec = json_pack("{s:s,s:s,s:s,s:I}", "appUuid", t->app, "functionName", t->name,
                          "payloadDigest", t->digest, "expiresAt", (json_int_t)exp);
  char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
  json_decref(rec);
  int rc = -ENOMEM;
  if (s) {
    snprintf(key, sizeof key, "rt/%s", tdig);
    /* The binding outlives the token by an hour, so a late use is told "expired". */
    rc = st->h->store_put(st->p, key, (const uint8_t *)s, strlen(s), (uint64_t)st->token_ttl_s + 3600, NULL, NULL);
    snprintf(key, sizeof key, "rtlive/%s", tdig);
    if (rc == 0) rc = st->h->store_put(st->p, key, (const uint8_t *)"1", 1, (uint64_t)st->token_ttl_s + 60, NULL, NULL);
    free(s);
  }
  if (rc < 0) {
    op_error(&t->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  st->h->counter_add(st->p, "function_run_tokens", 1);
  json_t *obj = json_pack("{s:s,s:I}", "token", token, "expiresAt", (json_int_t)exp);
  OPENSSL_cleanse(token, sizeof token);
  if (t->op.req) {
    evs_request *req = t->op.req;
    t->op.refs++;
    send_json(st, req, 200, obj);
    t->op.refs--;
  } else {
    json_decref(obj);
  }
  op_unref(&t->op);
}

static void on_tok_key(void *arg, int status, const char *app_id) {
  fr_tok *t = arg;
  fr_state *st = t->op.st;
  if (st->stopping) {
    op_unref(&t->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status == EVS_ENOCRYPTO) {
    op_error(&t->op, 500, "internal-error", "API keys cannot be checked right now; retry later");
    return;
  }
  if (status != 0 || !app_id || strlen(app_id) > FN_APP_MAX) {
    op_error(&t->op, 401, "unauthorized", "Invalid authorization provided (the API key needs the function:create-run-token permission)");
    return;
  }
  cpy(t->app, sizeof t->app, app_id);
  char key[256];
  snprintf(key, sizeof key, "fn/%s/%s", t->app, t->name);
  if (st->h->store_get(st->p, key, on_tok_fn, t) < 0) op_error(&t->op, 500, "internal-error", "The store is unavailable");
}

static void on_tok_body(void *arg, int status, const uint8_t *data, size_t len) {
  fr_tok *t = arg;
  fr_state *st = t->op.st;
  if (st->stopping) {
    op_unref(&t->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status < 0) {
    op_error(&t->op, status == -E2BIG ? 413 : 400, "bad-request", "The payload could not be read");
    return;
  }
  json_t *payload = json_loadb((const char *)data, len, JSON_DECODE_ANY, NULL);
  if (!payload || evs__fn_payload_digest(payload, t->digest) < 0) {
    json_decref(payload);
    op_error(&t->op, 400, "bad-request", "The body must be the JSON payload the token is for");
    return;
  }
  json_decref(payload);
  evs_header hd;
  if (!t->op.req || st->h->request_header(t->op.req, "api-key", &hd) != 0 || hd.value_len == 0 || hd.value_len > FN_KEY_MAX) {
    op_error(&t->op, 401, "unauthorized", "Invalid authorization provided");
    return;
  }
  evs_api_key_request kr;
  memset(&kr, 0, sizeof kr);
  kr.size = sizeof kr;
  kr.key = hd.value;
  kr.key_len = hd.value_len;
  kr.permission = PERM_TOKEN;
  int rc = st->h->check_api_key(st->p, &kr, on_tok_key, t);
  if (rc < 0) on_tok_key(t, rc, NULL);
}

static void start_token(fr_state *st, evs_request *req, const char *name) {
  fr_tok *t = calloc(1, sizeof *t);
  if (!t) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return;
  }
  op_start(&t->op, st, req, NULL);
  cpy(t->name, sizeof t->name, name);
  st->h->request_set_data(req, st->p, t, op_gone);
  int rc = st->h->read_body(req, (size_t)st->max_payload, on_tok_body, t);
  if (rc < 0) on_tok_body(t, rc, NULL, 0);
}

/* ---- API routing ------------------------------------------------------------------------- */

/* Splits path (after the prefix) into up to 4 '/'-separated segments; -1 if malformed. */
static int split(const char *path, char seg[][FR_ID_MAX + FR_NAME_MAX], int max) {
  int n = 0;
  while (*path == '/') {
    path++;
    const char *e = strchr(path, '/');
    size_t len = e ? (size_t)(e - path) : strlen(path);
    if (len == 0) {
      if (!e) break; /* trailing slash */
      return -1;
    }
    if (n == max || len >= FR_ID_MAX + FR_NAME_MAX) return -1;
    memcpy(seg[n], path, len);
    seg[n][len] = 0;
    n++;
    path += len;
  }
  return *path ? -1 : n;
}

static int api_route(void *arg, evs_request *req) {
  fr_state *st = arg;
  const evs_request_info *info = st->h->request_info(req);
  char seg[4][FR_ID_MAX + FR_NAME_MAX];
  int v2 = strncmp(info->path, "/v2/", 4) == 0;
  int n = split(info->path + (v2 ? 3 : 0), seg, 4);
  int post = strcmp(info->method, "POST") == 0, get = strcmp(info->method, "GET") == 0;
  if (n < 3 || strcmp(seg[0], "functions") != 0 || !name_valid(seg[1], strlen(seg[1]))) {
    st->h->respond_error(req, 404, "resource-not-found", "No such Functions endpoint");
    return EVS_HANDLED;
  }
  if (v2) {
    if (n == 3 && strcmp(seg[2], "run-token") == 0 && post) start_token(st, req, seg[1]);
    else st->h->respond_error(req, 404, "resource-not-found", "No such Functions endpoint");
    return EVS_HANDLED;
  }
  if (strcmp(seg[2], "runs") != 0) {
    st->h->respond_error(req, 404, "resource-not-found", "No such Functions endpoint");
  } else if (n == 3 && post) {
    start_run(st, req, NULL, seg[1], 0);
  } else if (n == 4 && get && strlen(seg[3]) < FR_ID_MAX && name_valid(seg[3], strlen(seg[3]))) {
    start_get(st, req, NULL, seg[1], seg[3], 0);
  } else {
    st->h->respond_error(req, n == 3 ? 405 : 404, n == 3 ? "method-not-allowed" : "resource-not-found",
                         n == 3 ? "Runs are started with POST" : "No such Functions endpoint");
  }
  return EVS_HANDLED;
}

/* ---- pre-warming ---------------------------------------------------------------------------
 * Pools are per worker, so without this a Function's first run on each worker would be a cold
 * start. After a deploy or an environment change the worker that made it starts one box of the
 * new version and tells the node's other workers (node_broadcast: the record, which holds no
 * secret) to do the same; each starts one only if its pool of that version has none. */

static void on_warm_sent(void *arg, size_t workers, size_t ok) {
  (void)arg;
  (void)workers;
  (void)ok;
}

static void warm_node(fr_state *st, const char *app, const char *name, json_t *fn) {
  if (!st->prewarm) return;
  if (fr_pool_warm(st, app, name, fn) < 0)
    st->h->log(st->p, NULL, EVS_LOG_WARN, "function %s of app %s: cannot pre-warm a box", name,
               app);
  char *s = json_dumps(fn, JSON_COMPACT);
  if (s && strlen(s) <= EVS_NODE_MSG_MAX)
    st->h->node_broadcast(st->p, (const uint8_t *)s, strlen(s), 5000, on_warm_sent, NULL);
  free(s);
}

/* A worker that starts (a reload, a crashed worker replaced) warms the Functions run on the
 * node within idle_timeout, at most FR_WARM_RECENT of them: one query of the runs stream, one
 * read of each record. */
#define FR_WARM_RECENT 16

static void on_recent_fn(void *arg, int status, const uint8_t *v, size_t len) {
  fr_state *st = arg;
  if (status == 0 && !st->stopping) {
    json_t *fn = json_loadb((const char *)v, len, 0, NULL);
    const char *app = json_string_value(json_object_get(fn, "appUuid"));
    const char *name = json_string_value(json_object_get(fn, "name"));
    if (app && name) fr_pool_warm(st, app, name, fn);
    json_decref(fn);
  }
  fr_live(st, -1);
}

typedef struct fr_recent {
  fr_state *st;
  json_t *seen; /* "fn/<app>/<name>" keys */
} fr_recent;

static void on_recent_run(void *arg, int status, int64_t ts, const char *json) {
  (void)status;
  (void)ts;
  fr_recent *rc = arg;
  fr_state *st = rc->st;
  json_t **seen = &rc->seen;
  if (json) {
    json_t *rec = json_loads(json, 0, NULL);
    const char *app = json_string_value(json_object_get(rec, "appUuid"));
    const char *name = json_string_value(json_object_get(rec, "functionName"));
    char key[FN_APP_MAX + FR_NAME_MAX + 8];
    if (app && name && app_valid(app) && name_valid(name, strlen(name)) &&
        json_object_size(*seen) < FR_WARM_RECENT) {
      snprintf(key, sizeof key, "fn/%s/%s", app, name);
      json_object_set_new(*seen, key, json_true());
    }
    json_decref(rec);
    return;
  }
  const char *key;
  json_t *v;
  json_object_foreach(*seen, key, v) {
    if (st->stopping) break;
    st->live++;
    if (st->h->store_get(st->p, key, on_recent_fn, st) < 0) st->live--;
  }
  json_decref(rc->seen);
  free(rc);
  fr_live(st, -1);
}

static void warm_recent(fr_state *st) {
  fr_recent *rc = st->prewarm ? calloc(1, sizeof *rc) : NULL;
  if (!rc || st->idle_ms <= 0 || !(rc->seen = json_object())) {
    free(rc);
    return;
  }
  rc->st = st;
  st->live++;
  if (st->h->store_query(st->p, "runs", fr_now_ms() - st->idle_ms, 500, on_recent_run, rc) < 0) {
    json_decref(rc->seen);
    free(rc);
    st->live--;
  }
}

static void on_node_msg(void *state, const uint8_t *msg, size_t len, evs_node_msg *m) {
  fr_state *st = state;
  json_t *fn = json_loadb((const char *)msg, len, 0, NULL);
  const char *app = json_string_value(json_object_get(fn, "appUuid"));
  const char *name = json_string_value(json_object_get(fn, "name"));
  int rc = -EINVAL;
  if (app && name && app_valid(app) && name_valid(name, strlen(name)) &&
      json_is_integer(json_object_get(fn, "version")))
    rc = fr_pool_warm(st, app, name, fn);
  json_decref(fn);
  st->h->node_reply(m, rc);
}

/* ---- admin ------------------------------------------------------------------------------- */

enum { AD_LIST, AD_DEPLOY, AD_GET, AD_DELETE, AD_ENV_GET, AD_ENV_SET, AD_ENV_DEL, AD_ACTIVITY };

typedef struct fr_admin {
  fr_op op;
  int action, secret;
  int locked;             /* holds lock/<app>/<name> (released with the operation) */
  int64_t lock_since;     /* ms: when it started to wait for the lock */
  evs_timer *lock_retry;
  struct fr_admin *next_waiter;
  json_int_t gone_version; /* the version a deleted Function of this name had reached */
  char app[FN_APP_MAX + 1];
  char name[FR_NAME_MAX + 1];
  char env_key[130];
  json_t *body, *fn, *env, *items;
  char *env_value;
  int64_t filter;
} fr_admin;

static void lock_key(const fr_admin *x, char *key, size_t len) {
  snprintf(key, len, "lock/%s/%s", x->app, x->name);
}

static void admin_release(fr_op *o) {
  fr_admin *x = (fr_admin *)o;
  fr_state *st = o->st;
  if (x->lock_retry && !st->stopping) st->h->timer_free(x->lock_retry);
  for (fr_admin **pp = &st->lock_waiters; *pp; pp = &(*pp)->next_waiter)
    if (*pp == x) {
      *pp = x->next_waiter;
      break;
    }
  if (x->locked && !st->stopping) { /* synchronous: written before a waiter can take it */
    char key[512];
    lock_key(x, key, sizeof key);
    st->h->store_delete(st->p, key, NULL, NULL);
  }
  json_decref(x->body);
  json_decref(x->fn);
  json_decref(x->env);
  json_decref(x->items);
  if (x->env_value) {
    OPENSSL_cleanse(x->env_value, strlen(x->env_value));
    free(x->env_value);
  }
}
static void admin_json(fr_admin *x, int status, json_t *obj) {
  if (x->op.req) {
    evs_request *req = x->op.req;
    x->op.refs++;
    send_json(x->op.st, req, status, obj);
    x->op.refs--;
  } else {
    json_decref(obj);
  }
  op_unref(&x->op);
}

static int put_json(fr_state *st, const char *key, const json_t *v) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!s) return -ENOMEM;
  int rc = st->h->store_put(st->p, key, (const uint8_t *)s, strlen(s), 0, NULL, NULL);
  free(s);
  return rc;
}

/* "node@18" -> runtime "node"; checks the installed interpreter can serve it. */
static int check_language(fr_state *st, const char *lang, char *runtime, char *err, size_t errlen) {
  int major = 0, minor = 0;
  char tail;
  if (sscanf(lang, "node@%d%c", &major, &tail) == 1 && major > 0) {
    if (!st->node_major) {
      snprintf(err, errlen, "%s cannot be served: no node interpreter at %s", lang, st->node);
      return -1;
    }
    if (major > st->node_major) {
      snprintf(err, errlen, "%s cannot be served: this node has node %s (%s); node@N runs on the "
               "installed node for every N up to its major version %d", lang, st->node_version,
               st->node, st->node_major);
      return -1;
    }
    strcpy(runtime, "node");
    return 0;
  }
  if (sscanf(lang, "python@3.%d%c", &minor, &tail) == 1 && minor >= 0) {
    if (!st->python_minor) {
      snprintf(err, errlen, "%s cannot be served: no python3 interpreter at %s", lang, st->python);
      return -1;
    }
    if (minor > st->python_minor) {
      snprintf(err, errlen, "%s cannot be served: this node has Python %s (%s); python@3.x runs "
               "on it for every x up to %d", lang, st->python_version, st->python, st->python_minor);
      return -1;
    }
    strcpy(runtime, "python");
    return 0;
  }
  snprintf(err, errlen, "language must be node@<major> or python@3.<minor>, not '%.40s'", lang);
  return -1;
}

static void deploy(fr_admin *x, const uint8_t *prev, size_t prev_len) {
  fr_state *st = x->op.st;
  json_t *b = x->body;
  const char *handler = json_string_value(json_object_get(b, "handler"));
  const char *lang = json_string_value(json_object_get(b, "language"));
  const char *archive = json_string_value(json_object_get(b, "archive"));
  json_t *timeout = json_object_get(b, "timeout"), *allow = json_object_get(b, "inboundAllowlist");
  char err[400], runtime[16];
  if (!handler || !lang || !archive) {
    op_error(&x->op, 400, "bad-request", "handler, language and archive are required");
    return;
  }
  const char *dot = strrchr(handler, '.');
  if (!dot || dot == handler || !dot[1] || strlen(handler) > 200 || !evs__fn_archive_name_ok(handler)) {
    op_error(&x->op, 400, "bad-request", "handler must be <file>.<function>, e.g. index.handler");
    return;
  }
  int64_t t = timeout ? (json_is_integer(timeout) ? json_integer_value(timeout) : -1) : 30;
  if (t < 1 || t > 900) {
    op_error(&x->op, 400, "bad-request", "timeout must be a whole number of seconds from 1 to 900");
    return;
  }
  if (allow && !json_is_array(allow)) {
    op_error(&x->op, 400, "bad-request", "inboundAllowlist must be an array of IP addresses or CIDR ranges");
    return;
  }
  size_t i;
  json_t *a;
  json_array_foreach(allow, i, a) {
    const char *s = json_string_value(a);
    unsigned char buf[16];
    char net[64];
    if (!s || strlen(s) >= sizeof net) goto bad_allow;
    snprintf(net, sizeof net, "%s", s);
    char *slash = strchr(net, '/');
    if (slash) *slash = 0;
    if (inet_pton(strchr(net, ':') ? AF_INET6 : AF_INET, net, buf) != 1) goto bad_allow;
    continue;
  bad_allow:
    op_error(&x->op, 400, "bad-request", "inboundAllowlist must be an array of IP addresses or CIDR ranges");
    return;
  }
  /* The Outbound Relay's destination-domain syntax, hosts and ports only (the egress proxy
   * matches with the same code: egress_proxy.c). */
  json_t *out_allow = json_object_get(b, "outboundAllowlist");
  if (out_allow && !json_is_array(out_allow)) {
    op_error(&x->op, 400, "bad-request", "outboundAllowlist must be an array of destination domains");
    return;
  }
  json_array_foreach(out_allow, i, a) {
    const char *h = json_string_value(a), *why = "it is not a string";
    evs__ob_pattern pat;
    int ok = h && evs__ob_pattern_parse(h, strlen(h), &pat, &why) == 0;
    if (ok && pat.path_kind != EVS__OB_PATH_ANY) {
      ok = 0;
      why = "an outbound allowlist entry names hosts (and ports), not paths";
    }
    if (ok) continue;
    char msg[320];
    snprintf(msg, sizeof msg, "outboundAllowlist entry %zu: %s", i, why);
    op_error(&x->op, 400, "bad-request", msg);
    return;
  }
  if (check_language(st, lang, runtime, err, sizeof err) < 0) {
    op_error(&x->op, 400, "bad-request", err);
    return;
  }
  uint8_t *code = NULL;
  size_t code_len = 0;
  if (evs__fn_b64_decode(archive, strlen(archive), &code, &code_len) < 0) {
    op_error(&x->op, 400, "bad-request", "archive must be base64");
    return;
  }
  if (code_len > (size_t)st->max_code) {
    free(code);
    op_error(&x->op, 413, "bad-request", "The archive is larger than max_code");
    return;
  }
  /* Unpacked once here, into a scratch directory, to check it and find the handler's file. */
  char dir[4200], file[4400];
  snprintf(dir, sizeof dir, "%s/.check-%d-%" PRId64, st->code_dir_base, (int)getpid(), fr_now_ms());
  mkdir(st->code_dir_base, 0700);
  int rc = evs__fn_archive_unpack(code, code_len, (uint64_t)st->max_code * 8, dir, err, sizeof err);
  if (rc == 0) {
    size_t flen = (size_t)(dot - handler);
    snprintf(file, sizeof file, "%s/%.*s.%s", dir, (int)flen, handler, strcmp(runtime, "node") == 0 ? "js" : "py");
    struct stat sb;
    if (stat(file, &sb) < 0 || !S_ISREG(sb.st_mode)) {
      snprintf(err, sizeof err, "handler %s: the archive has no file %.*s.%s", handler, (int)flen, handler,
               strcmp(runtime, "node") == 0 ? "js" : "py");
      rc = -ENOENT;
    }
  }
  fr_rm_tree(dir);
  if (rc < 0) {
    free(code);
    op_error(&x->op, 400, "bad-request", err);
    return;
  }
  json_t *old = prev ? json_loadb((const char *)prev, prev_len, 0, NULL) : NULL;
  json_int_t ver = old ? json_integer_value(json_object_get(old, "version")) : x->gone_version;
  ver++;
  /* The write lock makes deploys of one Function take turns; the claim makes each version
   * number used once whatever happens (a lock that expired under a stalled holder, a deleted
   * Function deployed again: nodes keep unpacked versions by number). */
  char key[512];
  for (int tries = 0;; tries++, ver++) {
    snprintf(key, sizeof key, "ver/%s/%s/%" JSON_INTEGER_FORMAT, x->app, x->name, ver);
    rc = st->h->store_put_new(st->p, key, (const uint8_t *)"", 0, 0, NULL, NULL);
    if (rc != -EEXIST || tries == 16) break;
  }
  if (rc < 0) {
    json_decref(old);
    free(code);
    op_error(&x->op, rc == -EEXIST ? 409 : 500, rc == -EEXIST ? "conflict" : "internal-error",
             rc == -EEXIST ? "Concurrent deploys of this Function: try again"
                           : "The store is unavailable");
    return;
  }
  const char *uuid = old ? json_string_value(json_object_get(old, "functionUuid")) : NULL;
  char uuidbuf[48];
  if (!uuid) {
    memcpy(uuidbuf, "func_", 5);
    random_hex(uuidbuf + 5, 12);
    uuid = uuidbuf;
  }
  int64_t now = fr_now_ms();
  json_t *fn = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:I,s:I,s:I,s:I}", "name", x->name, "appUuid",
                         x->app, "functionUuid", uuid, "version", ver, "envVersion",
                         old ? json_integer_value(json_object_get(old, "envVersion")) : (json_int_t)0,
                         "handler", handler, "language", lang, "runtime", runtime, "timeout",
                         (json_int_t)t, "codeBytes", (json_int_t)code_len, "createdAt",
                         old ? json_integer_value(json_object_get(old, "createdAt")) : (json_int_t)now,
                         "updatedAt", (json_int_t)now);
  json_decref(old);
  if (fn && allow) json_object_set(fn, "inboundAllowlist", allow);
  if (fn && out_allow) json_object_set(fn, "outboundAllowlist", out_allow);
  snprintf(key, sizeof key, "code/%s/%s/%" JSON_INTEGER_FORMAT, x->app, x->name, ver);
  rc = fn ? st->h->store_put(st->p, key, code, code_len, 0, NULL, NULL) : -ENOMEM;
  free(code);
  snprintf(key, sizeof key, "fn/%s/%s", x->app, x->name);
  if (rc == 0) rc = put_json(st, key, fn);
  if (rc == 0 && ver > 2) { /* the version before the previous one: no box can still start it */
    snprintf(key, sizeof key, "code/%s/%s/%" JSON_INTEGER_FORMAT, x->app, x->name, ver - 2);
    st->h->store_delete(st->p, key, NULL, NULL);
  }
  if (rc < 0) {
    json_decref(fn);
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  st->h->log(st->p, NULL, EVS_LOG_INFO, "function %s of app %s deployed: version %" JSON_INTEGER_FORMAT
             " (%s, %zu bytes)", x->name, x->app, ver, lang, code_len);
  st->h->counter_add(st->p, "function_deploys", 1);
  warm_node(st, x->app, x->name, fn);
  admin_json(x, 200, fn);
}

static void bump_env_version(fr_admin *x) {
  json_object_set_new(x->fn, "envVersion", json_integer(json_integer_value(json_object_get(x->fn, "envVersion")) + 1));
  char key[512];
  snprintf(key, sizeof key, "fn/%s/%s", x->app, x->name);
  if (put_json(x->op.st, key, x->fn) == 0) warm_node(x->op.st, x->app, x->name, x->fn);
}

static json_t *env_view(const json_t *env) {
  json_t *out = json_object();
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)env, k, v) {
    json_object_set_new(out, k, json_pack("{s:O,s:b}", "value", json_object_get(v, "value"), "secret",
                                          json_is_true(json_object_get(v, "secret"))));
  }
  return out;
}

static void env_store(fr_admin *x) {
  char key[512];
  snprintf(key, sizeof key, "env/%s/%s", x->app, x->name);
  if (put_json(x->op.st, key, x->env) < 0) {
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  bump_env_version(x);
  admin_json(x, 200, json_pack("{s:s,s:o}", "name", x->name, "env", env_view(x->env)));
}

static void on_secret_encrypted(void *arg, int status, json_t *data) {
  fr_admin *x = arg;
  if (x->op.st->stopping) {
    json_decref(data);
    op_unref(&x->op);
    return;
  }
  if (status < 0 || !json_is_string(data)) {
    json_decref(data);
    op_error(&x->op, 503, "internal-error", "The secret could not be encrypted (is the app unlocked?)");
    return;
  }
  json_object_set_new(x->env, x->env_key, json_pack("{s:o,s:b}", "value", data, "secret", 1));
  env_store(x);
}

static void on_env(void *arg, int status, const uint8_t *v, size_t len) {
  fr_admin *x = arg;
  if (x->op.st->stopping) {
    op_unref(&x->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status < 0 && status != -ENOENT) {
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  x->env = status == 0 ? json_loadb((const char *)v, len, 0, NULL) : json_object();
  if (!json_is_object(x->env)) {
    json_decref(x->env);
    x->env = json_object();
  }
  if (x->action == AD_ENV_GET) {
    admin_json(x, 200, json_pack("{s:s,s:o}", "name", x->name, "env", env_view(x->env)));
    return;
  }
  if (x->action == AD_ENV_DEL) {
    if (json_object_del(x->env, x->env_key) < 0) {
      op_error(&x->op, 404, "resource-not-found", "The function has no such environment variable");
      return;
    }
    env_store(x);
    return;
  }
  if (x->secret) {
    json_t *plain = json_string(x->env_value);
    /* STRING_EXACT would keep whitespace; secrets go through the same path as SDK strings. */
    fr_crypto(x->op.st, x->app, 1, plain, on_secret_encrypted, x);
    return;
  }
  json_object_set_new(x->env, x->env_key, json_pack("{s:s,s:b}", "value", x->env_value, "secret", 0));
  env_store(x);
}

static void on_admin_gone(void *arg, int status, const uint8_t *v, size_t len);

static void on_admin_fn(void *arg, int status, const uint8_t *v, size_t len) {
  fr_admin *x = arg;
  fr_state *st = x->op.st;
  if (st->stopping) {
    op_unref(&x->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status < 0 && status != -ENOENT) {
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  if (x->action == AD_DEPLOY && status == -ENOENT && !x->gone_version) {
    char key[512];
    snprintf(key, sizeof key, "gone/%s/%s", x->app, x->name);
    x->gone_version = -1;
    if (st->h->store_get(st->p, key, on_admin_gone, x) < 0)
      op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  if (x->action == AD_DEPLOY) {
    if (x->gone_version < 0) x->gone_version = 0;
    deploy(x, status == 0 ? v : NULL, len);
    return;
  }
  if (status == -ENOENT) {
    op_error(&x->op, 404, "resource-not-found", "No function of this name exists in the app");
    return;
  }
  x->fn = json_loadb((const char *)v, len, 0, NULL);
  if (!x->fn) {
    op_error(&x->op, 500, "internal-error", "The stored record is not JSON");
    return;
  }
  char key[512];
  switch (x->action) {
  case AD_GET:
    admin_json(x, 200, json_incref(x->fn));
    return;
  case AD_DELETE: {
    json_int_t ver = json_integer_value(json_object_get(x->fn, "version"));
    for (json_int_t k = ver > 2 ? ver - 1 : 1; k <= ver; k++) {
      snprintf(key, sizeof key, "code/%s/%s/%" JSON_INTEGER_FORMAT, x->app, x->name, k);
      st->h->store_delete(st->p, key, NULL, NULL);
    }
    snprintf(key, sizeof key, "env/%s/%s", x->app, x->name);
    st->h->store_delete(st->p, key, NULL, NULL);
    /* The next Function of this name goes on from this version (see deploy). */
    char gone[64];
    snprintf(gone, sizeof gone, "{\"version\":%" JSON_INTEGER_FORMAT "}", ver);
    snprintf(key, sizeof key, "gone/%s/%s", x->app, x->name);
    int grc = st->h->store_put(st->p, key, (const uint8_t *)gone, strlen(gone), 0, NULL, NULL);
    snprintf(key, sizeof key, "fn/%s/%s", x->app, x->name);
    if (grc < 0 || st->h->store_delete(st->p, key, NULL, NULL) < 0) {
      op_error(&x->op, 500, "internal-error", "The store is unavailable");
      return;
    }
    st->h->log(st->p, NULL, EVS_LOG_INFO, "function %s of app %s deleted", x->name, x->app);
    admin_json(x, 200, json_pack("{s:s,s:s,s:b}", "name", x->name, "appUuid", x->app, "deleted", 1));
    return;
  }
  default:
    snprintf(key, sizeof key, "env/%s/%s", x->app, x->name);
    if (st->h->store_get(st->p, key, on_env, x) < 0) op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
}

static void on_admin_gone(void *arg, int status, const uint8_t *v, size_t len) {
  fr_admin *x = arg;
  if (status == 0) {
    json_t *g = json_loadb((const char *)v, len, 0, NULL);
    x->gone_version = json_integer_value(json_object_get(g, "version"));
    json_decref(g);
  }
  on_admin_fn(x, status < 0 && status != -ENOENT ? status : -ENOENT, NULL, 0);
}

static void admin_load_fn(fr_admin *x) {
  char key[512];
  snprintf(key, sizeof key, "fn/%s/%s", x->app, x->name);
  if (x->op.st->h->store_get(x->op.st->p, key, on_admin_fn, x) < 0) op_error(&x->op, 500, "internal-error", "The store is unavailable");
}

/* Calls that rewrite fn/<app>/<name> (deploy, env changes, delete) take turns per Function,
 * on every worker and node: the lock is a create-only key with a time to live, so a holder
 * that died lets go by itself. */
#define FR_LOCK_TTL_S 30
#define FR_LOCK_RETRY_MS 20

static void admin_lock(fr_admin *x);

static void on_lock_retry(void *arg) {
  fr_admin *x = arg;
  fr_state *st = x->op.st;
  st->h->timer_free(x->lock_retry);
  x->lock_retry = NULL;
  for (fr_admin **pp = &st->lock_waiters; *pp; pp = &(*pp)->next_waiter)
    if (*pp == x) {
      *pp = x->next_waiter;
      break;
    }
  admin_lock(x);
}

static void on_lock(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v;
  (void)len;
  fr_admin *x = arg;
  fr_state *st = x->op.st;
  if (st->stopping) {
    x->locked = status == 0;
    op_unref(&x->op);
    return;
  }
  if (status == 0) {
    x->locked = 1;
    admin_load_fn(x);
    return;
  }
  if (status != -EEXIST) {
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  if (fr_now_ms() - x->lock_since > FR_LOCK_TTL_S * 1000) {
    op_error(&x->op, 409, "conflict", "Another change of this Function is in progress: try again");
    return;
  }
  x->lock_retry = st->h->timer_start(st->p, FR_LOCK_RETRY_MS, 0, on_lock_retry, x);
  if (!x->lock_retry) {
    op_error(&x->op, 500, "internal-error", "Out of memory");
    return;
  }
  x->next_waiter = st->lock_waiters;
  st->lock_waiters = x;
}

static void admin_lock(fr_admin *x) {
  fr_state *st = x->op.st;
  char key[512], who[32];
  lock_key(x, key, sizeof key);
  int n = snprintf(who, sizeof who, "%d", (int)getpid());
  if (!x->lock_since) x->lock_since = fr_now_ms();
  if (st->h->store_put_new(st->p, key, (const uint8_t *)who, (size_t)n, FR_LOCK_TTL_S, on_lock,
                          x) < 0)
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
}

static void admin_start(fr_admin *x) {
  if (x->action == AD_DEPLOY || x->action == AD_DELETE || x->action == AD_ENV_SET ||
      x->action == AD_ENV_DEL)
    admin_lock(x);
  else
    admin_load_fn(x);
}

static void on_admin_body(void *arg, int status, const uint8_t *data, size_t len) {
  fr_admin *x = arg;
  if (x->op.st->stopping) {
    op_unref(&x->op); /* fini ran: release, answer nobody */
    return;
  }
  if (status < 0) {
    op_error(&x->op, status == -E2BIG ? 413 : 400, "bad-request",
                status == -E2BIG ? "The request body is too large" : "The request body could not be read");
    return;
  }
  x->body = json_loadb((const char *)data, len, 0, NULL);
  if (!json_is_object(x->body)) {
    op_error(&x->op, 400, "bad-request", "The body must be a JSON object");
    return;
  }
  if (x->action == AD_ENV_SET) {
    const char *v = json_string_value(json_object_get(x->body, "value"));
    if (!v || strlen(v) > 32768) {
      op_error(&x->op, 400, "bad-request", "value must be a string of at most 32 KiB");
      return;
    }
    x->secret = json_is_true(json_object_get(x->body, "secret"));
    x->env_value = strdup(v);
    json_object_del(x->body, "value");
    if (!x->env_value) {
      op_error(&x->op, 500, "internal-error", "Out of memory");
      return;
    }
  }
  admin_start(x);
}

static void on_list_item(void *arg, int status, const char *key, const uint8_t *v, size_t len) {
  fr_admin *x = arg;
  if (x->op.st->stopping) {
    if (!key) op_unref(&x->op);
    return;
  }
  if (key) {
    json_t *fn = json_loadb((const char *)v, len, 0, NULL);
    if (fn) json_array_append_new(x->items, fn);
    return;
  }
  if (status < 0 && status != -ENOENT) {
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  json_t *items = x->items;
  x->items = NULL;
  admin_json(x, 200, json_pack("{s:o}", "functions", items));
}

static void on_activity(void *arg, int status, int64_t ts, const char *json) {
  fr_admin *x = arg;
  if (x->op.st->stopping) {
    if (!json) op_unref(&x->op);
    return;
  }
  if (json) {
    json_t *rec = json_loads(json, 0, NULL);
    if (rec) {
      json_object_set_new(rec, "ts", json_integer(ts));
      json_array_append_new(x->items, rec);
    }
    return;
  }
  if (status < 0) {
    op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return;
  }
  json_t *items = x->items;
  x->items = NULL;
  admin_json(x, 200, json_pack("{s:o}", "transactions", items));
}

static int query_param(const char *q, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  for (const char *p = q; p && *p;) {
    const char *amp = strchr(p, '&');
    size_t len = amp ? (size_t)(amp - p) : strlen(p);
    if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
      size_t vl = len - nl - 1;
      if (vl >= cap) return -2;
      memcpy(out, p + nl + 1, vl);
      out[vl] = 0;
      return 0;
    }
    p = amp ? amp + 1 : NULL;
  }
  return -1;
}

static int admin_route(void *arg, evs_request *req) {
  fr_state *st = arg;
  const evs_request_info *info = st->h->request_info(req);
  const char *m = info->method;
  int get = strcmp(m, "GET") == 0, put = strcmp(m, "PUT") == 0, del = strcmp(m, "DELETE") == 0,
      post = strcmp(m, "POST") == 0;
  if (strcmp(info->path, "/function-activity") == 0) {
    fr_admin *x = calloc(1, sizeof *x);
    if (!x) {
      st->h->respond_error(req, 500, "internal-error", "Out of memory");
      return EVS_HANDLED;
    }
    op_start(&x->op, st, req, admin_release);
    st->h->request_set_data(req, st->p, x, op_gone);
    char lim[16], since[24], relay[8];
    long limit = query_param(info->query, "limit", lim, sizeof lim) == 0 ? atol(lim) : 50;
    if (limit < 1 || limit > 1000) limit = 50;
    int64_t since_ms = query_param(info->query, "since", since, sizeof since) == 0 ? atoll(since) : 0;
    x->items = json_array();
    if (query_param(info->query, "relay", relay, sizeof relay) == 0 || query_param(info->query, "relay", NULL, 0) == -2) {
      admin_json(x, 200, json_pack("{s:o}", "transactions", json_incref(x->items))); /* a relay's: none */
      return EVS_HANDLED;
    }
    if (st->h->store_query(st->p, "runs", since_ms, (size_t)limit, on_activity, x) < 0)
      op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return EVS_HANDLED;
  }
  char seg[6][FR_ID_MAX + FR_NAME_MAX];
  int n = split(info->path, seg, 6);
  if (n < 1 || strcmp(seg[0], "functions") != 0) return EVS_DECLINED;
  /* Runs through the admin socket: no credentials, the app named in the path. */
  if (n >= 4 && strcmp(seg[3], "runs") == 0 && app_valid(seg[1]) && name_valid(seg[2], strlen(seg[2]))) {
    if (n == 4 && post) {
      start_run(st, req, seg[1], seg[2], 1);
      return EVS_HANDLED;
    }
    if (n == 5 && get && strlen(seg[4]) < FR_ID_MAX) {
      start_get(st, req, seg[1], seg[2], seg[4], 1);
      return EVS_HANDLED;
    }
  }
  fr_admin *x = calloc(1, sizeof *x);
  if (!x) {
    st->h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  op_start(&x->op, st, req, admin_release);
  st->h->request_set_data(req, st->p, x, op_gone);
  if (n == 1) {
    if (!get) {
      op_error(&x->op, 405, "method-not-allowed", "/functions takes GET");
      return EVS_HANDLED;
    }
    char app[FN_APP_MAX + 1], prefix[FN_APP_MAX + 8] = "fn/";
    if (query_param(info->query, "app", app, sizeof app) == 0) {
      if (!app_valid(app)) {
        op_error(&x->op, 400, "bad-request", "app must be an app id");
        return EVS_HANDLED;
      }
      snprintf(prefix, sizeof prefix, "fn/%s/", app);
    }
    x->action = AD_LIST;
    x->items = json_array();
    if (st->h->store_scan(st->p, prefix, on_list_item, x) < 0)
      op_error(&x->op, 500, "internal-error", "The store is unavailable");
    return EVS_HANDLED;
  }
  if (n < 3 || !app_valid(seg[1]) || !name_valid(seg[2], strlen(seg[2]))) {
    op_error(&x->op, 400, "bad-request", "Paths are /functions/<appId>/<name>[/...]; names are 1 to 64 "
                "letters, digits, '-' or '_'");
    return EVS_HANDLED;
  }
  cpy(x->app, sizeof x->app, seg[1]);
  cpy(x->name, sizeof x->name, seg[2]);
  size_t body_max = 0;
  if (n == 3 && put) {
    x->action = AD_DEPLOY;
    body_max = (size_t)st->max_code / 3 * 4 + 65536;
  } else if (n == 3 && get) {
    x->action = AD_GET;
  } else if (n == 3 && del) {
    x->action = AD_DELETE;
  } else if (n >= 4 && strcmp(seg[3], "env") == 0) {
    if (n == 4 && get) {
      x->action = AD_ENV_GET;
    } else if (n == 5 && env_key_valid(seg[4]) && (put || del)) {
      cpy(x->env_key, sizeof x->env_key, seg[4]);
      x->action = put ? AD_ENV_SET : AD_ENV_DEL;
      if (put) body_max = 65536 * 2;
    } else {
      op_error(&x->op, 400, "bad-request", "GET .../env, PUT or DELETE .../env/<KEY> (letters, digits, '_')");
      return EVS_HANDLED;
    }
  } else {
    op_error(&x->op, 404, "resource-not-found", "No such function endpoint");
    return EVS_HANDLED;
  }
  if (body_max) {
    int rc = st->h->read_body(req, body_max, on_admin_body, x);
    if (rc < 0) on_admin_body(x, rc, NULL, 0);
  } else {
    admin_start(x);
  }
  return EVS_HANDLED;
}

/* ---- init and fini ----------------------------------------------------------------------- */

static const evs_config_item items[] = {
    {"fnbox_binary", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "the evs-fnbox executable that builds each function's sandbox; default the installed "
     "one, else the build tree's"},
    {"node", EVS_CONFIG_PATH, "/usr/bin/node", 0, 0, 0,
     "the Node.js interpreter; node@N functions run on it for every N up to its major version"},
    {"python", EVS_CONFIG_PATH, "/usr/bin/python3", 0, 0, 0,
     "the Python 3 interpreter; python@3.x functions run on it for every x up to its minor version"},
    {"pool_max", EVS_CONFIG_INT, "4", 1, 256, 0,
     "boxes one function (one version) may have at once in each worker; runs beyond wait"},
    {"idle_timeout", EVS_CONFIG_DURATION, "60s", 0, 86400000, 0,
     "a warm box idle this long is stopped (0: after every run)"},
    {"start_timeout", EVS_CONFIG_DURATION, "15s", 100, 600000, 0,
     "a box not ready this long after it was started fails (function-not-ready-error)"},
    {"sync_timeout", EVS_CONFIG_DURATION, "30s", 100, 900000, 0,
     "the longest a run without X-Async may take whatever the function's timeout says"},
    {"max_payload", EVS_CONFIG_SIZE, "6m", 1024, 64LL << 20, 0, "largest run request body"},
    {"max_code", EVS_CONFIG_SIZE, "10m", 1024, 15LL << 20, 0, "largest deployed archive (tar.gz)"},
    {"run_token_ttl", EVS_CONFIG_DURATION, "5m", 1000, 86400000, 0,
     "how long a run token may be used (the docs: five minutes)"},
    {"run_ttl", EVS_CONFIG_DURATION, "24h", 60000, 30LL * 86400000, 0,
     "how long run records (status, async result, console output) are kept"},
    {"log_max", EVS_CONFIG_SIZE, "64k", 0, 16LL << 20, 0, "console output kept per run"},
    {"tmp_size", EVS_CONFIG_SIZE, "512m", 1LL << 20, 64LL << 30, 0, "each box's /tmp (tmpfs)"},
    {"memory_max", EVS_CONFIG_SIZE, "1g", 64LL << 20, 64LL << 30, 0,
     "memory of one box (cgroup v2 memory.max where delegated)"},
    {"python_rlimit_as", EVS_CONFIG_BOOL, "on", 0, 0, 0,
     "Python boxes run under RLIMIT_AS of memory_max (off for an evs-fnbox built with "
     "AddressSanitizer, whose shadow memory does not fit under it)"},
    {"code_dir", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "where deployed versions are unpacked on this node; default <state_dir>/functions"},
    {"prewarm", EVS_CONFIG_BOOL, "on", 0, 0, 0,
     "start one box of a Function in every worker after its deploy or environment change, and "
     "in a starting worker for the Functions run within idle_timeout"},
    {"egress", EVS_CONFIG_BOOL, "on", 0, 0, 0,
     "Functions may open outbound connections (through a CONNECT proxy per box)"},
    {"egress_allow_private", EVS_CONFIG_BOOL, "off", 0, 0, 0,
     "let Functions reach loopback, private and link-local addresses (off: the node's own "
     "services stay out of reach)"},
    {"egress_dir", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "where the boxes' egress sockets are made (short: a socket path has at most 107 bytes); "
     "default <state_dir>/fn-egress"},
    {"team_uuid", EVS_CONFIG_STRING, "local", 0, 0, 0, "teamUuid carried by alerts"},
    {"activity_url", EVS_CONFIG_STRING, "evctl://function-activity", 0, 0, 0,
     "base of the activityLink in alerts; ?runId=<id> is appended"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

/* "v20.20.2" / "Python 3.11.7" from `<interp> --version`, run once per worker at init. */
static void probe(const char *path, char *out, size_t cap) {
  out[0] = 0;
  int fds[2];
  if (access(path, X_OK) < 0 || pipe(fds) < 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    execl(path, path, "--version", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  char buf[128];
  ssize_t n = 0, r;
  while (pid > 0 && (size_t)n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - (size_t)n)) > 0) n += r;
  close(fds[0]);
  if (pid > 0) waitpid(pid, NULL, 0);
  buf[n > 0 ? n : 0] = 0;
  const char *p = buf;
  while (*p && !(*p >= '0' && *p <= '9')) p++;
  size_t len = strspn(p, "0123456789.");
  if (len >= cap) len = cap - 1;
  memcpy(out, p, len);
  out[len] = 0;
}

static void on_reap(void *arg) { fr_pools_reap(arg); }

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  /* store_put_new (1.9): deploys take turns and claim their versions with it. */
  if (host->abi_minor < 9 ||
      host->size < offsetof(evs_host, store_put_new) + sizeof host->store_put_new) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "function-runtime needs a host with store_put_new "
              "(ABI 1.9 as of this evserver): upgrade evserver");
    return -ENOTSUP;
  }
  fr_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->h = host;
  st->p = plugin;
  st->loop = host->uv_loop(plugin);
  st->fnbox = host->config_string(plugin, "fnbox_binary");
  if (!st->fnbox) st->fnbox = access(EVS_FNBOX_INSTALL_PATH, X_OK) == 0 ? EVS_FNBOX_INSTALL_PATH : EVS_FNBOX_BUILD_PATH;
  st->node = host->config_string(plugin, "node");
  st->python = host->config_string(plugin, "python");
  st->pool_max = host->config_int(plugin, "pool_max");
  st->idle_ms = host->config_int(plugin, "idle_timeout");
  st->start_timeout_ms = host->config_int(plugin, "start_timeout");
  st->sync_timeout_ms = host->config_int(plugin, "sync_timeout");
  st->max_payload = host->config_int(plugin, "max_payload");
  st->max_code = host->config_int(plugin, "max_code");
  st->token_ttl_s = (host->config_int(plugin, "run_token_ttl") + 999) / 1000;
  st->run_ttl_s = host->config_int(plugin, "run_ttl") / 1000;
  st->log_max = host->config_int(plugin, "log_max");
  st->tmp_size = host->config_int(plugin, "tmp_size");
  st->memory_max = host->config_int(plugin, "memory_max");
  st->team_uuid = host->config_string(plugin, "team_uuid");
  st->activity_url = host->config_string(plugin, "activity_url");
  st->python_rlimit_as = host->config_bool(plugin, "python_rlimit_as") == 1;
  st->egress_on = host->config_bool(plugin, "egress") == 1;
  st->prewarm = host->config_bool(plugin, "prewarm") == 1;
  st->egress_allow_private = host->config_bool(plugin, "egress_allow_private") == 1;
  const char *ed = host->config_string(plugin, "egress_dir");
  int edn = ed ? snprintf(st->egress_dir, sizeof st->egress_dir, "%s", ed)
               : snprintf(st->egress_dir, sizeof st->egress_dir, "%s/fn-egress", host->state_dir(plugin));
  if (edn < 0 || (size_t)edn >= sizeof st->egress_dir - 24) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "egress_dir is too long for a unix socket path (at most %zu "
              "bytes); set a shorter one", sizeof st->egress_dir - 25);
    free(st);
    return -ENAMETOOLONG;
  }
  const char *cd = host->config_string(plugin, "code_dir");
  if (cd) snprintf(st->code_dir_base, sizeof st->code_dir_base, "%s", cd);
  else snprintf(st->code_dir_base, sizeof st->code_dir_base, "%s/functions", host->state_dir(plugin));
  probe(st->node, st->node_version, sizeof st->node_version);
  probe(st->python, st->python_version, sizeof st->python_version);
  st->node_major = atoi(st->node_version);
  if (strncmp(st->python_version, "3.", 2) == 0) st->python_minor = atoi(st->python_version + 2);
  static const evs_route routes[] = {
      {sizeof(evs_route), "api", NULL, NULL, "/functions", api_route},
      {sizeof(evs_route), "api", NULL, NULL, "/v2/functions", api_route},
      {sizeof(evs_route), "admin", NULL, NULL, "/functions", admin_route},
      {sizeof(evs_route), "admin", NULL, "GET", "/function-activity", admin_route},
  };
  int r = 0;
  for (size_t i = 0; r == 0 && i < sizeof routes / sizeof routes[0]; i++) r = host->add_route(plugin, &routes[i]);
  if (r < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "cannot register the Functions routes: %s", strerror(-r));
    free(st);
    return r;
  }
  if (r == 0) r = host->node_subscribe(plugin, on_node_msg);
  if (r < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "cannot subscribe to node messages: %s", strerror(-r));
    free(st);
    return r;
  }
  st->reaper = host->timer_start(plugin, 1000, 1000, on_reap, st);
  warm_recent(st);
  host->log(plugin, NULL, EVS_LOG_INFO, "Functions: node %s (%s), python %s (%s), evs-fnbox %s",
            st->node_version[0] ? st->node_version : "absent", st->node,
            st->python_version[0] ? st->python_version : "absent", st->python, st->fnbox);
  *ret_state = st;
  return 0;
}

static void fini(void *state) {
  fr_state *st = state;
  st->stopping = 1;
  if (st->reaper) st->h->timer_free(st->reaper);
  st->reaper = NULL;
  fr_pools_free(st); /* boxes killed, their runs recorded as failed, waiting runs answered */
  while (st->lock_waiters) { /* their timers go while the host's table may still be used */
    fr_admin *x = st->lock_waiters;
    st->lock_waiters = x->next_waiter;
    st->h->timer_free(x->lock_retry);
    x->lock_retry = NULL;
    op_unref(&x->op);
  }
  /* Runs still waiting on a callback keep their memory until it comes (it then only releases
   * them); their timers go now, while the host's table may still be used. */
  for (fr_run *r = st->runs; r; r = r->next_live) {
    if (r->timer) st->h->timer_free(r->timer);
    r->timer = NULL;
  }
  if (st->live == 0) free(st);
  else st->orphan = 1;
}

EVS_PLUGIN_DEFINE("function-runtime", "0.1.0",
                  "Functions: deploy, run (sync, async, run tokens) user code in evs-fnbox sandboxes",
                  items, init, fini);
