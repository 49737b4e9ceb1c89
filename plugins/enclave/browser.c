/*
 * browser.c: the API endpoints a web page calls (README.md, "Browsers"). A page holds no secret,
 * so what it may do is narrow:
 *
 *   GET /public-keys/<appId>   the app's public keys, no credential: what the browser SDK and
 *                              the Inputs iframe encrypt with (WebCrypto: the P-256 key).
 *                              CORS for any origin, cacheable, rate limited per client address.
 *   POST /client-side-tokens   Basic appId:apiKey with api:decrypt (the server's side, as the
 *                              Node SDK's createClientSideDecryptToken sends it): a token bound
 *                              to one payload, for a short time, for one use.
 *   POST /decrypt              with Authorization: Token <token> instead of a key: decrypts
 *                              exactly the payload the token was made for, once.
 *
 * Single use holds across workers and nodes sharing a store: a token has two records, the
 * record (cst/<sha256 hex of the token>: app, payload, expiry) and a live marker
 * (cstlive/<same>); redeeming takes the marker with store_delete, which is an atomic take on
 * both store backends, and only the caller whose delete found it (status 0) decrypts. The store
 * never holds the token itself, only its hash; both records expire with the token (ttl).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/rand.h>
#include <openssl/sha.h>

#include "enclave_int.h"
#include "evs_enclave_proto.h"

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void hex(const uint8_t *in, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = d[in[i] >> 4];
    out[2 * i + 1] = d[in[i] & 15];
  }
  out[2 * n] = 0;
}

/* ---- GET /public-keys/<appId> ------------------------------------------------------------- */

/* A token bucket per client address (public_keys_rate a minute, as many at once), in a small
 * table per worker indexed by a hash of the address: addresses that collide share one bucket, so
 * the limit errs towards refusing, never towards letting more through. Returns 1 when the
 * request may go on. */
static int rate_ok(enclave_state *st, const char *addr) {
  uint32_t h = 2166136261u;
  for (const char *p = addr; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
  enc_rate_slot *s = &st->rate[h % ENC_RATE_SLOTS];
  uint64_t now = mono_ms();
  if (!s->started) {
    evs_token_bucket_init(&s->bucket, st->public_keys_rate, st->public_keys_rate, now);
    s->started = 1;
  }
  return evs_token_bucket_take(&s->bucket, now);
}

static void on_public_app(void *arg, int status, const uint8_t *v, size_t len) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (status == -ENOENT) {
    enc_reply_error(x, 404, "app-not-found", "No app has this id");
    return;
  }
  json_t *app = status == 0 ? json_loadb((const char *)v, len, 0, NULL) : NULL;
  if (!app) {
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    return;
  }
  json_t *out = json_pack("{s:s,s:O?,s:O?}", "appId", x->app_id, "ecdhKey",
                          json_object_get(app, "ecdhKey"), "ecdhP256Key",
                          json_object_get(app, "ecdhP256Key"));
  json_decref(app);
  char *body = out ? json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(out);
  if (!body) {
    enc_reply_error(x, 500, "internal-error", "Out of memory");
    return;
  }
  size_t n = strlen(body);
  uint8_t md[SHA256_DIGEST_LENGTH];
  SHA256((const uint8_t *)body, n, md);
  char etag[2 + 32 + 1];
  etag[0] = '"';
  hex(md, 16, etag + 1);
  memcpy(etag + 33, "\"", 2);
  evs_header hdr[] = {{"Content-Type", 12, "application/json", 16},
                      {"Access-Control-Allow-Origin", 27, "*", 1},
                      {"Cache-Control", 13, "public, max-age=300", 19},
                      {"ETag", 4, etag, strlen(etag)}};
  evs_header inm;
  if (x->st->host->request_header(x->req, "if-none-match", &inm) == 0 &&
      inm.value_len == strlen(etag) && memcmp(inm.value, etag, inm.value_len) == 0)
    x->st->host->respond(x->req, 304, hdr + 1, 3, NULL, 0);
  else
    x->st->host->respond(x->req, 200, hdr, 4, (const uint8_t *)body, n);
  free(body);
}

static void public_keys_step(enc_ctx *x, const uint8_t *data, size_t len) {
  (void)data;
  (void)len;
  char k[ENC_STORE_KEY_MAX];
  snprintf(k, sizeof k, "app/%s", x->app_id);
  x->pending = 1;
  if (x->st->host->store_get(x->st->plugin, k, on_public_app, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
  }
}

int enc_public_keys_route(enclave_state *st, evs_request *req, const char *app_id) {
  const evs_host *h = st->host;
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  x->cors = 1;
  if (!evs_app_id_valid(app_id, strlen(app_id)))
    return enc_fail(x, 404, "app-not-found", "No app has this id");
  const char *addr = h->request_info(req)->client_addr;
  if (!rate_ok(st, addr ? addr : "")) {
    h->counter_add(st->plugin, "public_keys_rate_limited", 1);
    return enc_fail(x, 429, "rate-limited",
                    "Too many requests for public keys from this address; try again in a minute");
  }
  snprintf(x->app_id, sizeof x->app_id, "%s", app_id);
  return enc_continue(x, 0, public_keys_step);
}

/* ---- CORS preflight ----------------------------------------------------------------------- */

static void preflight_step(enc_ctx *x, const uint8_t *data, size_t len) {
  (void)data;
  (void)len;
  static const evs_header hdr[] = {
      {"Access-Control-Allow-Origin", 27, "*", 1},
      {"Access-Control-Allow-Methods", 28, "GET, POST", 9},
      {"Access-Control-Allow-Headers", 28, "Authorization, Content-Type", 27},
      {"Access-Control-Max-Age", 22, "600", 3},
  };
  x->st->host->respond(x->req, 204, hdr, 4, NULL, 0);
}

int enc_preflight_route(enclave_state *st, evs_request *req) {
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    st->host->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  return enc_continue(x, 0, preflight_step);
}

/* ---- POST /client-side-tokens ------------------------------------------------------------- */

typedef struct cst_new {
  enc_ctx *x;
  json_t *answer;
  char live_key[ENC_STORE_KEY_MAX + 16];
  uint64_t ttl_s;
} cst_new;

static void cst_new_free(cst_new *c) {
  json_decref(c->answer);
  free(c);
}

static void on_cst_live(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v;
  (void)len;
  cst_new *c = arg;
  enc_ctx *x = c->x;
  if (!enc_ctx_resume(x)) {
    cst_new_free(c);
    return;
  }
  if (status != 0) {
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
  } else {
    enc_audit(x->st, x->key_id, x->app_id, "client-side-token", 1, "ok");
    enc_reply_json(x, 200, json_incref(c->answer));
  }
  cst_new_free(c);
}

static void on_cst_record(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v;
  (void)len;
  cst_new *c = arg;
  enc_ctx *x = c->x;
  if (!enc_ctx_resume(x)) {
    cst_new_free(c);
    return;
  }
  if (status != 0) {
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    cst_new_free(c);
    return;
  }
  /* The marker last: a token whose marker exists has its record. */
  x->pending = 1;
  if (x->st->host->store_put(x->st->plugin, c->live_key, (const uint8_t *)"1", 1, c->ttl_s,
                             on_cst_live, c) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    cst_new_free(c);
  }
}

void enc_cst_create(enc_ctx *x) {
  json_t *body = x->wrapped ? NULL : x->root;
  json_t *action = json_object_get(body, "action");
  json_t *payload = json_object_get(body, "payload");
  json_t *expiry = json_object_get(body, "expiry");
  const char *k;
  json_t *c_;
  json_object_foreach(body, k, c_) {
    if (strcmp(k, "action") && strcmp(k, "payload") && strcmp(k, "expiry")) {
      char label[48], detail[160];
      snprintf(detail, sizeof detail,
               "Unknown body parameter %s: /client-side-tokens takes action, payload, expiry",
               enc_param_label(k, strlen(k), label, sizeof label));
      enc_reply_error(x, 400, "bad-request", detail);
      return;
    }
  }
  if (!json_is_object(body) || !json_is_string(action) ||
      strcmp(json_string_value(action), "api:decrypt") != 0) {
    enc_reply_error(x, 400, "bad-request",
                    "The body must be {\"action\": \"api:decrypt\", \"payload\": ...}");
    return;
  }
  if (!payload || json_is_null(payload)) {
    enc_reply_error(x, 400, "bad-request", "A client-side token needs the payload it decrypts");
    return;
  }
  if (expiry && !json_is_number(expiry)) {
    enc_reply_error(x, 400, "bad-request", "expiry must be a time in epoch milliseconds");
    return;
  }
  /* PROTOCOL.md §2.4: the Node SDK sends getUTCMilliseconds() (0..999, +600000 at most), never a
   * timestamp; an absent or past expiry means the default life, a later one is capped. */
  uint64_t now = wall_ms();
  uint64_t exp = now + ENC_CST_DEFAULT_MS;
  if (expiry) {
    double e = json_number_value(expiry);
    if (e > (double)now) exp = e > (double)(now + ENC_CST_MAX_MS) ? now + ENC_CST_MAX_MS : (uint64_t)e;
  }
  uint8_t raw[32], idr[8], md[SHA256_DIGEST_LENGTH];
  char token[2 * sizeof raw + 1], id[4 + 2 * sizeof idr + 1], hash[65];
  if (RAND_bytes(raw, sizeof raw) != 1 || RAND_bytes(idr, sizeof idr) != 1) {
    enc_reply_error(x, 500, "internal-error", "No randomness");
    return;
  }
  hex(raw, sizeof raw, token);
  OPENSSL_cleanse(raw, sizeof raw);
  memcpy(id, "cst_", 4);
  hex(idr, sizeof idr, id + 4);
  SHA256((const uint8_t *)token, strlen(token), md);
  hex(md, sizeof md, hash);

  cst_new *c = calloc(1, sizeof *c);
  json_t *rec = json_pack("{s:s,s:s,s:O,s:I,s:I}", "id", id, "appId", x->app_id, "payload",
                          payload, "createdAt", (json_int_t)now, "expiry", (json_int_t)exp);
  char *recs = rec ? json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(rec);
  if (c)
    c->answer = json_pack("{s:s,s:s,s:I,s:I}", "id", id, "token", token, "createdAt",
                          (json_int_t)now, "expiry", (json_int_t)exp);
  OPENSSL_cleanse(token, sizeof token);
  if (!c || !recs || !c->answer) {
    free(recs);
    if (c) cst_new_free(c);
    enc_reply_error(x, 500, "internal-error", "Out of memory");
    return;
  }
  c->x = x;
  c->ttl_s = (exp - now) / 1000u + 2;
  snprintf(x->key_id, sizeof x->key_id, "%s", id);
  char rk[ENC_STORE_KEY_MAX + 16];
  snprintf(rk, sizeof rk, "cst/%s", hash);
  snprintf(c->live_key, sizeof c->live_key, "cstlive/%s", hash);
  x->pending = 1;
  int r = x->st->host->store_put(x->st->plugin, rk, (const uint8_t *)recs, strlen(recs), c->ttl_s,
                                 on_cst_record, c);
  free(recs);
  if (r < 0) {
    x->pending = 0;
    cst_new_free(c);
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
  }
}

/* ---- POST /decrypt with Authorization: Token ---------------------------------------------- */

int enc_cst_credential(enc_ctx *x) {
  evs_header hd;
  if (x->st->host->request_header(x->req, "authorization", &hd) != 0 || hd.value_len < 6 ||
      strncasecmp(hd.value, "Token ", 6) != 0)
    return 0;
  x->cors = 1;
  const char *t = hd.value + 6;
  size_t n = hd.value_len - 6;
  while (n && *t == ' ') t++, n--;
  while (n && t[n - 1] == ' ') n--;
  if (n != 64) return -1;
  for (size_t i = 0; i < n; i++)
    if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f'))) return -1;
  if (!(x->token = strndup(t, n))) return -1;
  uint8_t md[SHA256_DIGEST_LENGTH];
  SHA256((const uint8_t *)x->token, n, md);
  hex(md, sizeof md, x->cst_hash);
  return 1;
}

static void on_cst_taken(void *arg, int status, const uint8_t *v, size_t len) {
  (void)v;
  (void)len;
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (status == -ENOENT) {
    enc_audit(x->st, x->key_id, x->app_id, "decrypt", 0, "token-used");
    enc_reply_error(x, 401, "token-used", "This client-side token has already been used");
    return;
  }
  if (status != 0) {
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    return;
  }
  enc_do_decrypt(x);
}

static void on_cst_lookup(void *arg, int status, const uint8_t *v, size_t len) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (status == -ENOENT) {
    enc_reply_error(x, 401, "unauthorized", "Invalid or expired client-side token");
    return;
  }
  json_t *rec = status == 0 ? json_loadb((const char *)v, len, 0, NULL) : NULL;
  if (!rec) {
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    return;
  }
  const char *app = json_string_value(json_object_get(rec, "appId"));
  const char *id = json_string_value(json_object_get(rec, "id"));
  json_int_t exp = json_integer_value(json_object_get(rec, "expiry"));
  if (!app || !id || (uint64_t)exp <= wall_ms()) {
    json_decref(rec);
    enc_reply_error(x, 401, "token-expired", "This client-side token has expired");
    return;
  }
  snprintf(x->app_id, sizeof x->app_id, "%s", app);
  snprintf(x->key_id, sizeof x->key_id, "%s", id);
  /* Bound to its payload: the data must be exactly it (JSON equality: key order and number
   * spelling aside). Checked before the take, so a wrong request does not burn the token. */
  int same = json_equal(json_object_get(rec, "payload"), enc_answer_data(x));
  json_decref(rec);
  if (!same) {
    enc_audit(x->st, x->key_id, x->app_id, "decrypt", 0, "payload-mismatch");
    enc_reply_error(x, 403, "payload-verification-error",
                    "The data is not the payload this token was created for");
    return;
  }
  char k[ENC_STORE_KEY_MAX + 16];
  snprintf(k, sizeof k, "cstlive/%s", x->cst_hash);
  x->pending = 1;
  if (x->st->host->store_delete(x->st->plugin, k, on_cst_taken, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
  }
}

int enc_cst_redeem(enc_ctx *x) {
  char k[ENC_STORE_KEY_MAX + 16];
  snprintf(k, sizeof k, "cst/%s", x->cst_hash);
  x->pending = 1;
  if (x->st->host->store_get(x->st->plugin, k, on_cst_lookup, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    return -1;
  }
  return 0;
}
