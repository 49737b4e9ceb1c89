/*
 * relay_encrypt.c: the Inbound Relay's request pipeline for requests whose route has fields to
 * encrypt. The body streams in (request_body_read) through the rewriter for its content type;
 * every selected value becomes a hole in the spool and joins a batch for the enclave (one
 * encrypt_values call for many fields). Only when the whole body is valid and every value is back
 * encrypted is the request proxied, with the spool as its body: bad input gets its documented
 * error and nothing reaches the destination.
 *
 * The same path samples request structures (field paths, never values) of pass-through
 * requests, at most one a second, forwarding their bodies unchanged.
 *
 * Memory per request: the rewriter's bounded state, the spool's first MiB (the rest goes to an
 * unlinked temporary file), and the values of at most MAX_INFLIGHT batches of BATCH_BYTES.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "relay_priv.h"
#include "rewriter.h"
#include "spool.h"
#include "structure.h"

#define SPOOL_MEM_MAX (1u << 20)
#define BATCH_FIELDS 512
#define BATCH_BYTES (256u << 10)
#define MAX_INFLIGHT 4
#define SAMPLE_MAX (64u << 10)
#define STRUCTURE_TTL_S 86400
#define STRUCTURE_REFRESH_MS 60000 /* lastSeen is as fine as this */

/* One value of a batch: where its result goes, and its bytes in the batch's payload. */
typedef struct bval {
  size_t hole;
  size_t off, len;
  int type; /* EVS_CRYPTO_* */
} bval;

typedef struct batch {
  struct relay_enc *e;
  uint8_t *payload; /* the values' bytes, one after another (plaintext: wiped when freed) */
  size_t len, cap;
  size_t n;
  bval *holes;
  size_t holes_cap;
  int file; /* an encrypt_file call: one hole, raw bytes */
} batch;

typedef struct relay_enc {
  relay_txn *t;
  /* The body's format by its Content-Type (NULL: one the relay cannot parse), and its rewriter
   * (NULL: bytes are spooled unchanged). */
  const evs__rewriter_ops *ops;
  void *rw;
  relay_spool spool;
  batch *cur;
  int inflight;
  int paused;
  int body_done;
  int answered;
  int err;             /* first error (negative), or 0 */
  int err_status;
  const char *err_code;
  const char *err_detail;
  uint64_t body_bytes;
  char *sample;
  size_t sample_len;
  int sampling;
  const char *app_id;
  const char *curve;
  /* Encrypted data in the body (ev_guard.h): found by the guard in any spelling, and passed
   * unchanged as a selected value (only on relays that do not decrypt responses). More found
   * than passed is encrypted-data-in-field. */
  evs__ev_guard guard;
  size_t passed;
  int decrypts;     /* the relay decrypts responses: no encrypted data in requests at all */
  uint8_t *pass;    /* a passed value as its format writes it */
  size_t pass_cap;
} relay_enc;

int relay_encrypt_idle(const relay_enc *e) { return !e || e->inflight == 0; }

static void batch_free(batch *b) {
  if (!b) return;
  if (b->payload) {
    explicit_bzero(b->payload, b->len);
    free(b->payload);
  }
  free(b->holes);
  free(b);
}

void relay_encrypt_free(relay_enc *e) {
  if (!e) return;
  if (e->rw) e->ops->free(e->rw);
  relay_spool_done(&e->spool);
  batch_free(e->cur);
  free(e->sample);
  free(e->pass);
  free(e);
}

static void fail(relay_enc *e, int err, int status, const char *code, const char *detail) {
  if (e->err) return;
  e->err = err;
  e->err_status = status;
  e->err_code = code;
  e->err_detail = detail;
}

static const char *fmt_name(const relay_enc *e) { return e->ops ? e->ops->name : "other"; }

/* ---- batches ----------------------------------------------------------------------------- */

static int put_bytes(batch *b, const void *a, size_t al) {
  size_t need = b->len + al;
  if (need > b->cap) {
    size_t ncap = b->cap ? b->cap * 2 : 1024;
    while (ncap < need) ncap *= 2;
    uint8_t *np = malloc(ncap);
    if (!np) return -ENOMEM;
    if (b->payload) {
      memcpy(np, b->payload, b->len);
      explicit_bzero(b->payload, b->len);
      free(b->payload);
    }
    b->payload = np;
    b->cap = ncap;
  }
  if (al) memcpy(b->payload + b->len, a, al);
  b->len = need;
  return 0;
}

static int add_value(batch *b, size_t hole, int type, const void *value, size_t len) {
  if (b->n == b->holes_cap) {
    size_t nc = b->holes_cap ? b->holes_cap * 2 : 16;
    bval *nh = realloc(b->holes, nc * sizeof *nh);
    if (!nh) return -ENOMEM;
    b->holes = nh;
    b->holes_cap = nc;
  }
  size_t off = b->len;
  if (put_bytes(b, value, len) < 0) return -ENOMEM;
  b->holes[b->n++] = (bval){hole, off, len, type};
  return 0;
}

static batch *batch_new(relay_enc *e, int file) {
  batch *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->e = e;
  b->file = file;
  return b;
}

static void maybe_proceed(relay_enc *e);

/* A crypto call that failed as a whole, whether it was refused at once or answered so: a locked
 * app is the operator's to fix; an enclave that is not running (restarting) is worth a retry. */
static void fail_crypto(relay_enc *e, int status) {
  if (status == EVS_CRYPTO_E_NO_APP)
    fail(e, status, 500, "internal-server-error",
         "The relay's app is not unlocked in the enclave (evctl app unlock)");
  else if (status == EVS_ENOCRYPTO)
    fail(e, status, 503, "service-unavailable",
         "Encryption is unavailable (the enclave is not running or restarting); nothing was "
         "forwarded. Retry shortly");
  else
    fail(e, status, 500, "internal-server-error", "Encryption is unavailable; nothing was forwarded");
}

/* The results of a batch: per value (res, n) from encrypt_values, or the file (file, file_len)
 * from encrypt_file. */
static void batch_done(batch *b, int status, const evs_crypto_result *res, size_t n,
                       const uint8_t *file, size_t file_len) {
  relay_enc *e = b->e;
  relay_txn *t = e->t;
  e->inflight--;
  if (status < 0) {
    fail_crypto(e, status);
  } else {
    size_t got = b->file ? 1 : n;
    for (size_t i = 0; i < b->n && i < got && !e->err; i++) {
      const uint8_t *ct = file;
      size_t ctl = file_len;
      if (!b->file) {
        if (res[i].status != EVS_CRYPTO_OK) {
          fail(e, -EINVAL, 400, "bad-request", "A selected field could not be encrypted");
          break;
        }
        ct = res[i].data;
        ctl = res[i].len;
      }
      size_t wl = e->ops->place((const char *)ct, ctl, NULL, 0);
      uint8_t *tmp = malloc(wl ? wl : 1);
      if (!tmp) {
        fail(e, -ENOMEM, 500, "internal-server-error", "Out of memory");
        break;
      }
      e->ops->place((const char *)ct, ctl, (char *)tmp, wl);
      if (relay_spool_fill(&e->spool, b->holes[i].hole, tmp, wl) < 0)
        fail(e, -ENOMEM, 500, "internal-server-error", "Out of memory");
      free(tmp);
      t->encrypted++;
    }
    if (!e->err && e->spool.filled < e->spool.nholes && e->inflight == 0 && e->body_done &&
        !e->cur)
      fail(e, -EPROTO, 500, "internal-server-error", "The enclave answered too few fields");
  }
  batch_free(b);
  if (!t->req) {
    relay_txn_release(t);
    return;
  }
  if (e->paused && e->inflight < MAX_INFLIGHT) {
    e->paused = 0;
    t->st->host->request_body_resume(t->req);
  }
  maybe_proceed(e);
}

static void on_values(void *arg, int status, const evs_crypto_result *res, size_t n) {
  batch_done(arg, status, res, n, NULL, 0);
}

static void on_file(void *arg, int status, const uint8_t *data, size_t len) {
  batch_done(arg, status, NULL, 0, data, len);
}

static int batch_send(relay_enc *e, batch *b) {
  relay_state *st = e->t->st;
  int r;
  e->inflight++;
  if (b->file) {
    evs_file_request fr = {sizeof fr, e->app_id, e->curve, b->payload, b->len};
    r = st->host->encrypt_file(st->plugin, &fr, on_file, b);
  } else {
    evs_crypto_value *v = calloc(b->n, sizeof *v);
    if (!v) {
      r = -ENOMEM;
    } else {
      for (size_t i = 0; i < b->n; i++)
        v[i] = (evs_crypto_value){sizeof v[i], b->holes[i].type,
                                  b->payload ? b->payload + b->holes[i].off : NULL,
                                  b->holes[i].len};
      evs_encrypt_request er = {sizeof er, e->app_id, e->curve, NULL, v, b->n};
      r = st->host->encrypt_values(st->plugin, &er, on_values, b);
      free(v);
    }
  }
  if (r < 0) {
    e->inflight--;
    batch_free(b);
    fail_crypto(e, r);
  }
  return r;
}

static int flush(relay_enc *e) {
  batch *b = e->cur;
  e->cur = NULL;
  if (!b || b->n == 0) {
    batch_free(b);
    return 0;
  }
  return batch_send(e, b);
}

/* The rewriters' transform: every selected value joins the batch and leaves a hole. */
static int transform(void *ud, evs__rw_type type, const char *value, size_t len,
                     const char **ret_buf, size_t *ret_len) {
  relay_enc *e = ud;
  int file = type == EVS__RW_FILE;
  if (file ? len >= 6 && memcmp(value, "%EVENC", 6) == 0
           : type == EVS__RW_STRING && evs__looks_like_ev_string(value, len)) {
    /* Already encrypted: never encrypted twice. A relay that decrypts responses refuses it
     * (its destination could echo it back decrypted); another passes it as it is. */
    if (e->decrypts) return EVS__RW_E_EVDATA;
    /* Returned now, a value is written by the rewriter itself, as its format takes it. */
    size_t wl = e->ops->place_returned(value, len, NULL, 0);
    if (wl > e->pass_cap) {
      uint8_t *np = realloc(e->pass, wl);
      if (!np) return -ENOMEM;
      e->pass = np;
      e->pass_cap = wl;
    }
    e->ops->place_returned(value, len, (char *)e->pass, wl);
    e->passed++;
    *ret_buf = (const char *)e->pass;
    *ret_len = wl;
    return 0;
  }
  size_t hole;
  int r = relay_spool_hole(&e->spool, &hole);
  if (r < 0) return r;
  if (file) {
    batch *fb = batch_new(e, 1);
    if (!fb) return -ENOMEM;
    if (add_value(fb, hole, EVS_CRYPTO_STRING_EXACT, value, len) < 0) {
      batch_free(fb);
      return -ENOMEM;
    }
    if ((r = batch_send(e, fb)) < 0) return r;
    return EVS__RW_DEFER;
  }
  if (!e->cur && !(e->cur = batch_new(e, 0))) return -ENOMEM;
  batch *b = e->cur;
  /* Exact strings keep their leading and trailing whitespace (the SDK trims; the relay must
   * not change what its client sent). */
  int ctype = type == EVS__RW_NUMBER    ? EVS_CRYPTO_NUMBER
              : type == EVS__RW_BOOLEAN ? EVS_CRYPTO_BOOLEAN
                                          : EVS_CRYPTO_STRING_EXACT;
  if (add_value(b, hole, ctype, value, len) < 0) return -ENOMEM;
  if (b->n >= BATCH_FIELDS || b->len >= BATCH_BYTES) {
    if ((r = flush(e)) < 0) return r;
  }
  return EVS__RW_DEFER;
}

static int emit(void *ud, const char *buf, size_t len) {
  relay_enc *e = ud;
  return relay_spool_write(&e->spool, buf, len);
}

/* ---- structures -------------------------------------------------------------------------- */

static void record_structure(relay_enc *e) {
  relay_txn *t = e->t;
  relay_state *st = t->st;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(t->req);
  json_t *fields = relay_structure_fields(fmt_name(e), e->sample, e->sample_len);
  if (!fields) return;
  char *flat = json_dumps(fields, JSON_COMPACT);
  uint64_t hsh = 1469598103934665603ull;
  const char *parts[] = {info->method, info->path, fmt_name(e), flat ? flat : ""};
  for (size_t i = 0; i < 4; i++) {
    for (const char *p = parts[i]; *p; p++) hsh = (hsh ^ (unsigned char)*p) * 1099511628211ull;
    hsh = (hsh ^ 0xff) * 1099511628211ull;
  }
  free(flat);
  int64_t now = relay_now_ms();
  size_t slot = hsh % (sizeof st->structures_seen / sizeof st->structures_seen[0]);
  if (st->structures_seen[slot].hash == hsh &&
      now - st->structures_seen[slot].stored_ms < STRUCTURE_REFRESH_MS) {
    json_decref(fields);
    return;
  }
  st->structures_seen[slot].hash = hsh;
  st->structures_seen[slot].stored_ms = now;
  json_t *rec = json_pack("{s:s,s:s,s:s,s:s,s:o,s:I}", "relay", t->relay->domain, "method",
                          info->method, "route", info->path, "contentType", fmt_name(e),
                          "fields", fields, "lastSeen", (json_int_t)now);
  char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
  char key[300];
  snprintf(key, sizeof key, "structure/%s/%016" PRIx64, t->relay->domain, hsh);
  if (s) h->store_put(st->plugin, key, (const uint8_t *)s, strlen(s), STRUCTURE_TTL_S, NULL, NULL);
  free(s);
  json_decref(rec);
}

/* ---- the request ------------------------------------------------------------------------- */

static int body_source(void *arg, uint8_t *buf, size_t cap, size_t *ret_len) {
  relay_enc *e = arg;
  if (!buf) {
    relay_spool_rewind(&e->spool);
    return 0;
  }
  return relay_spool_read(&e->spool, buf, cap, ret_len);
}

static void maybe_proceed(relay_enc *e) {
  relay_txn *t = e->t;
  if (!e->body_done || e->inflight > 0 || e->answered || !t->req) return;
  relay_state *st = t->st;
  const evs_host *h = st->host;
  e->answered = 1;
  if (e->err) {
    h->counter_add(st->plugin, "encrypt_errors", 1);
    h->respond_error(t->req, e->err_status, e->err_code, e->err_detail);
    return;
  }
  if (e->sampling && e->sample) record_structure(e);
  evs_upstream up;
  relay_upstream(t, &up);
  up.body_source = body_source;
  up.body_source_arg = e;
  up.body_source_len = relay_spool_total(&e->spool);
  if (h->proxy(t->req, &up, NULL, relay_response_filter(t), t) < 0)
    h->respond_error(t->req, 500, "internal-server-error", "Relay could not start proxying");
}

static void map_rewrite_error(relay_enc *e, int r) {
  const char *code = NULL;
  int status = evs__rewriter_answer(r, &code);
  if (r == EVS__RW_E_EVDATA)
    fail(e, r, status, code,
         e->decrypts ? "Evervault-encrypted data in the request body: a relay that decrypts "
                       "responses accepts none"
                     : "Evervault-encrypted data in a field that is not configured for encryption");
  else if (status)
    fail(e, r, status, code, "The request body is malformed for its Content-Type");
  else if (r == -E2BIG)
    fail(e, r, 413, "payload-too-large", "The request exceeds the 25 MB limit for encryption");
  else if (r == -ENOMEM || r == -EIO || r == -ENOSPC)
    fail(e, r, 500, "internal-server-error", "The relay could not hold the request body");
  else if (!e->err)
    fail(e, r, 500, "internal-server-error", "Encryption is unavailable; nothing was forwarded");
}

static int on_data(void *arg, const uint8_t *data, size_t len) {
  relay_enc *e = arg;
  if (e->err) return e->err;
  if (evs__ev_guard_feed(&e->guard, data, len) > 0 && e->decrypts) {
    map_rewrite_error(e, EVS__RW_E_EVDATA);
    return e->err;
  }
  e->body_bytes += len;
  if (e->body_bytes > e->t->st->max_body) {
    map_rewrite_error(e, -E2BIG);
    return -E2BIG;
  }
  if (e->sampling) {
    if (e->sample_len + len > SAMPLE_MAX) {
      e->sampling = 0;
    } else {
      char *ns = realloc(e->sample, e->sample_len + len);
      if (ns) {
        memcpy(ns + e->sample_len, data, len);
        e->sample = ns;
        e->sample_len += len;
      } else {
        e->sampling = 0;
      }
    }
  }
  int r = e->rw ? e->ops->feed(e->rw, (const char *)data, len)
                : relay_spool_write(&e->spool, data, len);
  if (r < 0) {
    map_rewrite_error(e, r);
    return e->err ? e->err : r;
  }
  if (e->inflight >= MAX_INFLIGHT) {
    e->paused = 1;
    return EVS_BODY_PAUSE;
  }
  return 0;
}

static void on_end(void *arg, int status) {
  relay_enc *e = arg;
  relay_txn *t = e->t;
  if (!t->req) { /* the client went away */
    relay_txn_release(t);
    return;
  }
  if (status < 0 && !e->err) {
    if (status == -E2BIG) map_rewrite_error(e, status);
    else {
      /* The client went away or broke the body: nothing to answer. */
      e->answered = 1;
      e->body_done = 1;
      return;
    }
  }
  if (!e->err && e->rw) {
    int r = e->ops->finish(e->rw);
    if (r < 0) map_rewrite_error(e, r);
  }
  if (!e->err && evs__ev_guard_finish(&e->guard) > e->passed)
    map_rewrite_error(e, EVS__RW_E_EVDATA);
  if (!e->err) flush(e);
  e->body_done = 1;
  maybe_proceed(e);
}

void relay_encrypt_start(relay_txn *t, const char *content_type, size_t ct_len) {
  relay_state *st = t->st;
  const evs_host *h = st->host;
  relay_enc *e = calloc(1, sizeof *e);
  if (!e) {
    h->respond_error(t->req, 500, "internal-server-error", "Out of memory");
    return;
  }
  t->enc = e;
  e->t = t;
  e->ops = evs__rewriter_for_content_type(content_type, ct_len);
  t->content_type_kind = fmt_name(e);
  relay_spool_init(&e->spool, st->spool_dir, SPOOL_MEM_MAX);
  e->app_id = relay_app_id(st, t->relay);
  e->curve = t->relay->curve ? t->relay->curve : "secp256k1";
  evs__ev_guard_init(&e->guard);
  e->decrypts = relay_decrypts_responses(t);
  const evs_request_info *info = h->request_info(t->req);
  e->sampling = ct_len > 0 && relay_sample_due(st, t->relay->domain, info->method, info->path);
  if (t->has_match && !e->ops) {
    /* Fields are selected here, but the relay cannot parse this body: forwarding it would send
     * them in plaintext. */
    e->answered = 1;
    h->respond_error(t->req, 415, "bad-request",
                     "This route has fields to encrypt; its body must be JSON, XML, "
                     "application/x-www-form-urlencoded or multipart/form-data (by Content-Type)");
    return;
  }
  if (t->has_match && !e->app_id) {
    e->answered = 1;
    h->respond_error(t->req, 500, "internal-server-error",
                     "The relay has fields to encrypt but no app (set appId in relay-config.json)");
    return;
  }
  int r = 0;
  if (e->ops && (t->has_match || e->ops->parse_unselected)) {
    evs__rewriter_select sel = {t->match.paths, t->match.names, t->match.nnames, content_type,
                                ct_len};
    r = e->ops->new(&sel, emit, transform, e, &e->rw);
    if (r == EVS__RW_E_BOUNDARY) {
      e->answered = 1;
      h->respond_error(t->req, 400, "bad-request", "multipart/form-data without a valid boundary");
      return;
    }
  }
  if (r >= 0) r = h->request_body_read(t->req, on_data, on_end, e);
  if (r < 0) {
    e->answered = 1;
    if (r == -E2BIG)
      h->respond_error(t->req, 413, "payload-too-large",
                       "The request exceeds the 25 MB limit for encryption");
    else
      h->respond_error(t->req, 500, "internal-server-error", "Relay could not read the body");
  }
}

/* ---- mTLS relays: the api-key header ------------------------------------------------------ */

static void on_key_checked(void *arg, int status, const char *app_id) {
  relay_txn *t = arg;
  (void)app_id;
  t->dec_pending--;
  if (!t->req) {
    relay_txn_release(t);
    return;
  }
  if (status != 0) {
    t->st->host->respond_error(t->req, 401, "proxy-auth-failed",
                               "This relay needs an api-key header with the Inbound Relay mTLS "
                               "Proxy permission");
    return;
  }
  relay_dispatch(t);
}

void relay_encrypt_check_key_then(relay_txn *t) {
  const evs_host *h = t->st->host;
  evs_header hd;
  if (h->request_header(t->req, "api-key", &hd) != 0 || hd.value_len == 0 || hd.value_len > 512) {
    h->respond_error(t->req, 401, "proxy-auth-failed",
                     "This relay needs an api-key header with the Inbound Relay mTLS Proxy "
                     "permission");
    return;
  }
  char *key = malloc(hd.value_len + 1);
  if (!key) {
    h->respond_error(t->req, 500, "internal-server-error", "Out of memory");
    return;
  }
  memcpy(key, hd.value, hd.value_len);
  key[hd.value_len] = '\0';
  evs_api_key_request kr = {sizeof kr, key, hd.value_len, "relay:inbound-mtls"};
  /* The key authenticates to the relay and could decrypt everything: it never goes further. */
  h->request_remove_header(t->req, "api-key");
  t->dec_pending++;
  int r = h->check_api_key(t->st->plugin, &kr, on_key_checked, t);
  explicit_bzero(key, hd.value_len);
  free(key);
  if (r < 0) {
    t->dec_pending--;
    h->respond_error(t->req, 401, "proxy-auth-failed",
                     "API keys cannot be checked: the enclave plugin is not loaded");
  }
}
