/*
 * apps.c: apps and scoped API keys, and the admin endpoints evctl calls over the admin socket
 * (request_info.listener == "admin"; only the socket's permissions guard them).
 *
 *   POST   /apps                      create an app: {appId, appToken, ecdhKey, ecdhP256Key}
 *   GET    /apps                      {apps: [{appId, createdAt, ecdhKey, ecdhP256Key}]}
 *   POST   /apps/<id>/unlock          {"appToken": ...} -> {appId, unlocked: true, workers,
 *                                      workersUnlocked}: in every worker's enclave (node-wide)
 *   POST   /apps/<id>/lock            {appId, locked: true, workers, workersLocked}, node-wide
 *   POST   /apps/<id>/keys            {"permissions": [...]} -> {apiKey, keyId, appId, permissions}
 *   GET    /apps/<id>/keys            {keys: [{keyId, permissions, createdAt, revoked}]}
 *   DELETE /apps/<id>/keys/<keyId>    {keyId, revoked: true}
 *   POST   /apps/<id>/encrypt         {"data": ..., "curve"?, "role"?} -> {data}
 *   POST   /apps/<id>/decrypt         {"data": ...} -> {data}
 *   GET    /audit[?limit=N]           {records: [{who, app, op, fields, outcome, ts}]}, newest first
 *
 * Store records (the plugin's own namespace):
 *   app/<id>     JSON {appId, createdAt, ecdhKey, ecdhP256Key}
 *   share1/<id>  the enclave's sealed share 1 (bytes)
 *   share2/<id>  sealed share 2 (bytes), in the share store (host->aux_store_*, share_store),
 *                never in the state store: one store alone never holds two shares
 *   wrapped/<id> the app's wrapped private keys (bytes)
 *   key/<keyId>  JSON {keyId, appId, hash: hex SHA-256 of the whole key, permissions,
 *                createdAt, revoked}: the key itself is never stored
 * App tokens and API keys are returned once and never logged.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>
#include <openssl/sha.h>

#include "enclave_int.h"
#include "evs_enclave_proto.h"

enum { A_CREATE = 1, A_LIST, A_UNLOCK, A_KEY_CREATE, A_KEY_LIST, A_KEY_REVOKE, A_ENCRYPT,
       A_DECRYPT, A_LOCK };

/* The permissions of the docs' "API Key permissions" table, slugged; see README.md. */
static const char *const permissions[] = {
    "api:encrypt", "api:decrypt",
    "function:deploy", "function:create", "function:run", "function:create-run-token",
    "function:update", "function:delete", "function:list", "function:read",
    "cage:create", "cage:deploy", "cage:invoke", "cage:create-secret", "cage:delete-secret",
    "cage:delete", "cage:list", "cage:read",
    "relay:outbound-proxy", "relay:inbound-mtls",
    NULL,
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hex(const uint8_t *in, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = d[in[i] >> 4];
    out[2 * i + 1] = d[in[i] & 15];
  }
  out[2 * n] = 0;
}

static int put(enclave_state *st, const char *prefix, const char *id, const void *v, size_t len) {
  char k[ENC_STORE_KEY_MAX];
  snprintf(k, sizeof k, "%s/%s", prefix, id);
  return st->host->store_put(st->plugin, k, v, len, 0, NULL, NULL);
}

static int put_json(enclave_state *st, const char *prefix, const char *id, json_t *obj) {
  char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!s) return -ENOMEM;
  int r = put(st, prefix, id, s, strlen(s));
  free(s);
  return r;
}

/* ---- unlocking: share1 -> share2 -> wrapped -> APP_UNLOCK --------------------------------- */

typedef struct unlock_chain {
  enclave_state *st;
  char app_id[ENC_APP_ID_MAX];
  char *token;
  uint8_t *share[2];
  size_t share_len[2];
  int step;
  ep_reply_fn cb;
  void *arg;
} unlock_chain;

static void chain_free(unlock_chain *c) {
  if (c->token) {
    OPENSSL_cleanse(c->token, strlen(c->token));
    free(c->token);
  }
  free(c->share[0]);
  free(c->share[1]);
  free(c);
}

static void chain_reply(void *arg, int status, const ep_item *it, size_t n) {
  unlock_chain *c = arg;
  c->cb(c->arg, status, it, n);
  chain_free(c);
}

static void chain_next(void *arg, int status, const uint8_t *v, size_t len) {
  unlock_chain *c = arg;
  if (status != 0) {
    /* share 1 missing: no such app; share 2 (share store) or wrapped keys missing: the app
     * cannot be opened, and there is no fallback to another copy. */
    c->cb(c->arg, status != -ENOENT ? EVS_EP_E_INTERNAL : c->step == 0 ? -ENOENT : -ENODATA,
          NULL, 0);
    chain_free(c);
    return;
  }
  if (c->step < 2) {
    if (!(c->share[c->step] = malloc(len ? len : 1))) {
      c->cb(c->arg, -ENOMEM, NULL, 0);
      chain_free(c);
      return;
    }
    memcpy(c->share[c->step], v, len);
    c->share_len[c->step] = len;
    c->step++;
    char k[ENC_STORE_KEY_MAX];
    snprintf(k, sizeof k, "%s/%s", c->step == 1 ? "share2" : "wrapped", c->app_id);
    const evs_host *h = c->st->host;
    if ((c->step == 1 ? h->aux_store_get(c->st->plugin, k, chain_next, c)
                      : h->store_get(c->st->plugin, k, chain_next, c)) < 0) {
      c->cb(c->arg, EVS_EP_E_INTERNAL, NULL, 0);
      chain_free(c);
    }
    return;
  }
  ep_msg m;
  ep_msg_init(&m, EVS_EP_APP_UNLOCK);
  ep_msg_add_str(&m, c->app_id);
  ep_msg_add_str(&m, c->token);
  ep_msg_add(&m, c->share[0], c->share_len[0]);
  ep_msg_add(&m, c->share[1], c->share_len[1]);
  ep_msg_add(&m, v, len);
  int r = ep_client_call(c->st->client, &m, chain_reply, c);
  if (r < 0) {
    c->cb(c->arg, EVS_ENOCRYPTO, NULL, 0);
    chain_free(c);
  }
}

int enc_app_unlock(enclave_state *st, const char *app_id, const char *token, ep_reply_fn cb,
                   void *arg) {
  unlock_chain *c = calloc(1, sizeof *c);
  if (!c) return -ENOMEM;
  c->st = st;
  snprintf(c->app_id, sizeof c->app_id, "%s", app_id);
  c->cb = cb;
  c->arg = arg;
  if (!(c->token = strdup(token))) {
    free(c);
    return -ENOMEM;
  }
  char k[ENC_STORE_KEY_MAX];
  snprintf(k, sizeof k, "share1/%s", app_id);
  int r = st->host->store_get(st->plugin, k, chain_next, c);
  if (r < 0) chain_free(c);
  return r;
}

int enc_app_lock(enclave_state *st, const char *app_id, ep_reply_fn cb, void *arg) {
  ep_msg m;
  ep_msg_init(&m, EVS_EP_APP_LOCK);
  ep_msg_add_str(&m, app_id);
  return ep_client_call(st->client, &m, cb, arg);
}

/* The token has reached every enclave it will reach: drop the plugin's copy now, not at the
 * end of the request. */
static void drop_token(enc_ctx *x) {
  if (!x->token) return;
  OPENSSL_cleanse(x->token, strlen(x->token));
  free(x->token);
  x->token = NULL;
}

/* ---- POST /apps --------------------------------------------------------------------------- */

static void on_created_fanout(void *arg, size_t workers, size_t ok) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  json_t *out = x->body_obj;
  x->body_obj = NULL;
  if (ok < workers)
    x->st->host->log(x->st->plugin, x->req, EVS_LOG_WARN,
                     "app %s created but unlocked in only %zu of %zu other workers' enclaves: "
                     "run `evctl app unlock`", x->app_id, ok, workers);
  enc_reply_json(x, 201, out);
}

/* Sends the token to every other worker's enclave, then wipes it here. 0: done runs later. */
static int fanout_token(enc_ctx *x, evs_node_done_fn done) {
  x->pending = 1;
  int r = enc_node_fanout(x->st, x->app_id, x->token, done, x);
  drop_token(x);
  if (r != 0) x->pending = 0;
  return r;
}

static void on_created_unlocked(void *arg, int status, const ep_item *it, size_t n) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (status == 0) {
    /* The new app works in every worker at once: the other enclaves unlock it too. */
    if (fanout_token(x, on_created_fanout) == 0) return;
  }
  json_t *out = x->body_obj;
  x->body_obj = NULL;
  if (status != 0)
    x->st->host->log(x->st->plugin, x->req, EVS_LOG_WARN,
                     "app %s created but not unlocked (status %d)", x->app_id, status);
  enc_reply_json(x, 201, out);
}

static void on_app_created(void *arg, int status, const ep_item *it, size_t n) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  enclave_state *st = x->st;
  if (status == 0 && (n < 6 || it[1].len != 33 || it[2].len != 33)) status = EVS_EP_E_PROTOCOL;
  enc_audit(st, "admin", x->app_id, "app.create", 0, status == 0 ? "ok" : "error");
  if (status != 0) {
    enc_reply_error(x, status == EVS_ENOCRYPTO ? 503 : 500,
                    status == EVS_ENOCRYPTO ? "service-unavailable" : "internal-error",
                    "The enclave could not create the app");
    return;
  }
  char *k1 = enc_b64(it[1].data, it[1].len), *k2 = enc_b64(it[2].data, it[2].len);
  json_t *rec = json_pack("{s:s,s:I,s:s?,s:s?}", "appId", x->app_id, "createdAt",
                          (json_int_t)now_ms(), "ecdhKey", k1, "ecdhP256Key", k2);
  int r = rec ? 0 : -ENOMEM;
  /* Shares and wrapped keys first: an app record without them could never be unlocked. */
  if (r == 0) r = put(st, "share1", x->app_id, it[3].data, it[3].len);
  if (r == 0) {
    char k[ENC_STORE_KEY_MAX];
    snprintf(k, sizeof k, "share2/%s", x->app_id);
    r = st->host->aux_store_put(st->plugin, k, it[4].data, it[4].len, NULL, NULL);
  }
  if (r == 0) r = put(st, "wrapped", x->app_id, it[5].data, it[5].len);
  if (r == 0) r = put_json(st, "app", x->app_id, rec);
  json_decref(rec);
  if (r < 0) {
    free(k1);
    free(k2);
    enc_reply_error(x, 500, "internal-error", "The app could not be stored");
    return;
  }
  x->token = strndup((const char *)it[0].data, it[0].len);
  json_decref(x->body_obj); /* the request's object: the answer takes its place */
  x->body_obj = json_pack("{s:s,s:s%,s:s?,s:s?}", "appId", x->app_id, "appToken",
                          (const char *)it[0].data, (size_t)it[0].len, "ecdhKey", k1,
                          "ecdhP256Key", k2);
  free(k1);
  free(k2);
  if (!x->token || !x->body_obj) {
    enc_reply_error(x, 500, "internal-error", "Out of memory");
    return;
  }
  /* Unlock with the fresh token so the app works at once (harmless if the enclave already
   * holds its keys after creating them). */
  x->pending = 1;
  if (enc_app_unlock(st, x->app_id, x->token, on_created_unlocked, x) < 0) {
    x->pending = 0;
    json_t *out = x->body_obj;
    x->body_obj = NULL;
    enc_reply_json(x, 201, out);
  }
}

static void app_create(enc_ctx *x) {
  uint8_t rnd[6];
  if (RAND_bytes(rnd, sizeof rnd) != 1) {
    enc_reply_error(x, 500, "internal-error", "No randomness available");
    return;
  }
  memcpy(x->app_id, "app_", 4);
  hex(rnd, sizeof rnd, x->app_id + 4);
  ep_msg m;
  ep_msg_init(&m, EVS_EP_APP_CREATE);
  ep_msg_add_str(&m, x->app_id);
  x->pending = 1;
  if (ep_client_call(x->st->client, &m, on_app_created, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 503, "service-unavailable", "The enclave is not running");
  }
}

/* ---- GET /apps, GET /apps/<id>/keys ------------------------------------------------------- */

static void on_scan(void *arg, int status, const char *key, const uint8_t *v, size_t len) {
  enc_ctx *x = arg;
  if (key) {
    if (!x->req) return;
    json_t *rec = json_loadb((const char *)v, len, 0, NULL);
    if (!rec) return;
    if (x->action == A_KEY_LIST) {
      if (strcmp(json_string_value(json_object_get(rec, "appId")) ?: "", x->app_id) != 0) {
        json_decref(rec);
        return;
      }
      json_object_del(rec, "hash");
      json_object_del(rec, "appId");
    }
    json_array_append_new(x->root, rec);
    return;
  }
  if (!enc_ctx_resume(x)) return;
  if (status < 0) {
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    return;
  }
  json_t *out = json_pack("{s:O}", x->action == A_KEY_LIST ? "keys" : "apps", x->root);
  enc_reply_json(x, 200, out);
}

static void scan(enc_ctx *x, const char *prefix) {
  x->root = json_array();
  x->pending = 1;
  if (!x->root || x->st->host->store_scan(x->st->plugin, prefix, on_scan, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
  }
}

/* ---- steps that need the app record first ------------------------------------------------- */

/* After this worker's enclave unlocked or locked the app: the other workers' enclaves did too
 * (or did not, in time). Anything short of all of them is an error the operator sees. */
static void on_node_done(void *arg, size_t workers, size_t ok) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  int lock = x->action == A_LOCK;
  enc_audit(x->st, "admin", x->app_id, lock ? "app.lock" : "app.unlock", 0,
            ok == workers ? "ok" : "partial");
  if (ok < workers) {
    char detail[200];
    snprintf(detail, sizeof detail,
             "The app was %s in %zu of %zu workers' enclaves; the others did not answer in "
             "time: run the command again", lock ? "locked" : "unlocked", ok + 1, workers + 1);
    x->st->host->log(x->st->plugin, x->req, EVS_LOG_ERROR, "app %s: %s", x->app_id, detail);
    enc_reply_error(x, 503, "service-unavailable", detail);
    return;
  }
  enc_reply_json(x, 200, json_pack("{s:s,s:b,s:I,s:I}", "appId", x->app_id,
                                   lock ? "locked" : "unlocked", 1, "workers",
                                   (json_int_t)workers + 1,
                                   lock ? "workersLocked" : "workersUnlocked", (json_int_t)ok + 1));
}

static void on_locked(void *arg, int status, const ep_item *it, size_t n) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  /* Locking is fail-safe: the other workers lock even when this enclave is down. */
  if (status != 0 && status != EVS_ENOCRYPTO && status != EVS_EP_E_NO_APP) {
    enc_audit(x->st, "admin", x->app_id, "app.lock", 0, "error");
    enc_reply_error(x, 500, "internal-error", "The enclave could not lock the app");
    return;
  }
  x->pending = 1;
  if (enc_node_fanout(x->st, x->app_id, NULL, on_node_done, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "The other workers could not be reached");
  }
}

static void on_unlocked(void *arg, int status, const ep_item *it, size_t n) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (status == 0) {
    /* This enclave accepted the token, so it is right: now every other worker's enclave. */
    if (fanout_token(x, on_node_done) == 0) return;
    enc_audit(x->st, "admin", x->app_id, "app.unlock", 0, "partial");
    enc_reply_error(x, 500, "internal-error", "The other workers could not be reached");
    return;
  }
  drop_token(x);
  enc_audit(x->st, "admin", x->app_id, "app.unlock", 0, "error");
  if (status == -ENOENT) {
    enc_reply_error(x, 404, "resource-not-found", "No such app");
  } else if (status == -ENODATA) {
    x->st->host->log(x->st->plugin, x->req, EVS_LOG_ERROR,
                     "app %s: a sealed share or the wrapped keys are missing (is share_store the "
                     "store the app was created with?)", x->app_id);
    enc_reply_error(x, 500, "internal-error",
                    "The app's second share is missing from the share store (share_store)");
  } else if (status == EVS_EP_E_BAD_TOKEN) {
    enc_reply_error(x, 401, "unauthorized", "The app token does not open this app's keys");
  } else if (status == EVS_ENOCRYPTO) {
    enc_reply_error(x, 503, "service-unavailable", "The enclave is not running");
  } else if (status != 0) {
    enc_reply_error(x, 500, "internal-error", "The enclave could not unlock the app");
  } else {
    enc_reply_json(x, 200, json_pack("{s:s,s:b}", "appId", x->app_id, "unlocked", 1));
  }
}

static void key_create(enc_ctx *x) {
  enclave_state *st = x->st;
  json_t *perms = json_object_get(x->body_obj, "permissions"), *p;
  json_t *list = json_array();
  size_t i;
  if (!list) {
    enc_reply_error(x, 500, "internal-error", "Out of memory");
    return;
  }
  json_array_append_new(list, json_string("api:encrypt")); /* always granted (the docs) */
  if (perms && !json_is_array(perms)) goto bad;
  json_array_foreach(perms, i, p) {
    const char *s = json_string_value(p);
    size_t k = 0;
    while (s && permissions[k] && strcmp(permissions[k], s) != 0) k++;
    if (!s || !permissions[k]) goto bad;
    if (strcmp(s, "api:encrypt") != 0) json_array_append(list, p);
  }
  uint8_t secret[32], rnd[8], digest[SHA512_DIGEST_LENGTH], h[SHA256_DIGEST_LENGTH];
  if (RAND_bytes(secret, sizeof secret) != 1 || RAND_bytes(rnd, sizeof rnd) != 1) {
    json_decref(list);
    enc_reply_error(x, 500, "internal-error", "No randomness available");
    return;
  }
  memcpy(x->key_id, "key_", 4);
  hex(rnd, sizeof rnd, x->key_id + 4);
  SHA512((const uint8_t *)x->app_id, strlen(x->app_id), digest);
  char *sec64 = enc_b64(secret, sizeof secret), *app64 = enc_b64(digest, sizeof digest);
  OPENSSL_cleanse(secret, sizeof secret);
  char *key = NULL;
  if (sec64 && app64 &&
      asprintf(&key, "ev:key:1:%s:%.6s:%s", sec64, app64, x->key_id) < 0)
    key = NULL;
  if (sec64) {
    OPENSSL_cleanse(sec64, strlen(sec64));
    free(sec64);
  }
  free(app64);
  if (!key) {
    json_decref(list);
    enc_reply_error(x, 500, "internal-error", "Out of memory");
    return;
  }
  x->api_key = key;
  char hash_hex[2 * SHA256_DIGEST_LENGTH + 1];
  SHA256((const uint8_t *)key, strlen(key), h);
  hex(h, sizeof h, hash_hex);
  json_t *rec = json_pack("{s:s,s:s,s:s,s:O,s:I,s:b}", "keyId", x->key_id, "appId", x->app_id,
                          "hash", hash_hex, "permissions", list, "createdAt",
                          (json_int_t)now_ms(), "revoked", 0);
  int r = rec ? put_json(st, "key", x->key_id, rec) : -ENOMEM;
  json_decref(rec);
  enc_audit(st, "admin", x->app_id, "key.create", 0, r == 0 ? "ok" : "error");
  if (r < 0) {
    json_decref(list);
    enc_reply_error(x, 500, "internal-error", "The key could not be stored");
    return;
  }
  enc_reply_json(x, 201, json_pack("{s:s,s:s,s:s,s:o}", "apiKey", key, "keyId", x->key_id,
                                   "appId", x->app_id, "permissions", list));
  return;
bad:
  json_decref(list);
  enc_reply_error(x, 400, "bad-request",
                  "permissions must be a list of known permission names (see evctl key create "
                  "--help)");
}

static void on_keys_changed(void *arg, size_t workers, size_t ok) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (ok < workers)
    x->st->host->log(x->st->plugin, x->req, EVS_LOG_WARN,
                     "key %s revoked; %zu of %zu other workers did not confirm in time (their "
                     "cached checks expire within %d ms)", x->key_id, workers - ok, workers,
                     ENC_KEYCACHE_MS);
  enc_reply_json(x, 200, json_pack("{s:s,s:b}", "keyId", x->key_id, "revoked", 1));
}

static void on_key_for_revoke(void *arg, int status, const uint8_t *v, size_t len) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  json_t *rec = status == 0 ? json_loadb((const char *)v, len, 0, NULL) : NULL;
  if (!rec || strcmp(json_string_value(json_object_get(rec, "appId")) ?: "", x->app_id) != 0) {
    json_decref(rec);
    enc_reply_error(x, 404, "resource-not-found", "No such key for this app");
    return;
  }
  json_object_set_new(rec, "revoked", json_true());
  json_object_set_new(rec, "revokedAt", json_integer(now_ms()));
  int r = put_json(x->st, "key", x->key_id, rec);
  json_decref(rec);
  enc_audit(x->st, "admin", x->app_id, "key.revoke", 0, r == 0 ? "ok" : "error");
  if (r < 0) {
    enc_reply_error(x, 500, "internal-error", "The key could not be stored");
    return;
  }
  /* Answered once every worker of the node dropped its cached checks: from then on no tunnel
   * of this node passes another request with the key. */
  x->pending = 1;
  if (enc_keys_changed(x->st, on_keys_changed, x) < 0) on_keys_changed(x, 0, 0);
}

/* The body parameters of POST /apps/<id>/encrypt {"data", "curve"?, "role"?} and /decrypt
 * {"data"} into x->curve and x->role. As on the API (api.c, "parameters"), nothing is silently
 * dropped: an unknown key, a curve or role that is not a string or not valid is refused, with
 * its name. 0, or -1 with the 400 detail in detail. */
static int crypt_params(enc_ctx *x, char *detail, size_t cap) {
  const char *k;
  json_t *v;
  char label[48];
  snprintf(x->curve, sizeof x->curve, "secp256k1");
  x->role[0] = 0;
  json_object_foreach(x->body_obj, k, v) {
    if (strcmp(k, "data") == 0) continue;
    if (x->action != A_ENCRYPT || (strcmp(k, "curve") != 0 && strcmp(k, "role") != 0)) {
      snprintf(detail, cap, "Unknown body parameter %s: %s",
               enc_param_label(k, strlen(k), label, sizeof label),
               x->action == A_ENCRYPT ? "encrypt takes data, curve and role"
                                      : "decrypt takes data");
      return -1;
    }
    const char *s = json_string_value(v);
    size_t n = s ? json_string_length(v) : 0;
    if (strcmp(k, "curve") == 0) {
      const char *c = s ? enc_curve_name(s, n) : NULL;
      if (!c) {
        snprintf(detail, cap, "Invalid body parameter 'curve': " ENC_CURVE_HINT);
        return -1;
      }
      snprintf(x->curve, sizeof x->curve, "%s", c);
    } else {
      if (!s || !enc_role_valid(s, n)) {
        snprintf(detail, cap, "Invalid body parameter 'role': " ENC_ROLE_HINT);
        return -1;
      }
      memcpy(x->role, s, n + 1);
    }
  }
  return 0;
}

static void on_app_record(void *arg, int status, const uint8_t *v, size_t len) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  if (status != 0) {
    enc_reply_error(x, 404, "resource-not-found", "No such app");
    return;
  }
  switch (x->action) {
    case A_UNLOCK: {
      if (!x->token || !*x->token) {
        enc_reply_error(x, 400, "bad-request", "appToken is required");
        return;
      }
      x->pending = 1;
      if (enc_app_unlock(x->st, x->app_id, x->token, on_unlocked, x) < 0) {
        x->pending = 0;
        enc_reply_error(x, 500, "internal-error", "Out of memory");
      }
      return;
    }
    case A_LOCK:
      x->pending = 1;
      if (enc_app_lock(x->st, x->app_id, on_locked, x) < 0) on_locked(x, EVS_ENOCRYPTO, NULL, 0);
      return;
    case A_KEY_CREATE:
      key_create(x);
      return;
    case A_KEY_LIST:
      scan(x, "key/");
      return;
    case A_KEY_REVOKE: {
      char k[ENC_STORE_KEY_MAX];
      snprintf(k, sizeof k, "key/%s", x->key_id);
      x->pending = 1;
      if (x->st->host->store_get(x->st->plugin, k, on_key_for_revoke, x) < 0) {
        x->pending = 0;
        enc_reply_error(x, 500, "internal-error", "The store is unavailable");
      }
      return;
    }
    case A_ENCRYPT:
    case A_DECRYPT: {
      json_t *d = json_object_get(x->body_obj, "data");
      if (!d) {
        enc_reply_error(x, 400, "bad-request", "data is required");
        return;
      }
      char detail[256];
      if (crypt_params(x, detail, sizeof detail) < 0) {
        enc_reply_error(x, 400, "bad-request", detail);
        return;
      }
      snprintf(x->key_id, sizeof x->key_id, "admin");
      enc_set_data(x, json_incref(d));
      if (!x->root) {
        enc_reply_error(x, 500, "internal-error", "Out of memory");
        return;
      }
      if (x->action == A_ENCRYPT)
        enc_do_encrypt(x);
      else
        enc_do_decrypt(x);
      return;
    }
  }
}

/* ---- routing ------------------------------------------------------------------------------ */

static void start(enc_ctx *x) {
  if (x->action == A_CREATE) {
    app_create(x);
  } else if (x->action == A_LIST) {
    scan(x, "app/");
  } else {
    char k[ENC_STORE_KEY_MAX];
    snprintf(k, sizeof k, "app/%s", x->app_id);
    x->pending = 1;
    if (x->st->host->store_get(x->st->plugin, k, on_app_record, x) < 0) {
      x->pending = 0;
      enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    }
  }
}

static void admin_step(enc_ctx *x, const uint8_t *data, size_t len) {
  if (strcmp(x->st->host->request_info(x->req)->method, "POST") != 0) {
    start(x);
    return;
  }
  x->body_obj = len ? json_loadb((const char *)data, len, 0, NULL) : json_object();
  if (x->action == A_UNLOCK) {
    /* One copy of the token, wiped when sent; the body buffer and jansson's copy go now. */
    json_t *t = json_object_get(x->body_obj, "appToken");
    const char *tv = json_string_value(t);
    if (tv) {
      x->token = strdup(tv);
      OPENSSL_cleanse((char *)tv, strlen(tv));
    }
    OPENSSL_cleanse((uint8_t *)data, len);
  }
  if (!json_is_object(x->body_obj)) {
    enc_reply_error(x, 400, "bad-request", "The request body must be a JSON object");
    return;
  }
  start(x);
}

/* GET /audit[?limit=N]: the newest audit records (who, app, op, fields, outcome). */
static void on_audit(void *arg, int status, int64_t ts_ms, const char *json) {
  enc_ctx *x = arg;
  if (json) {
    json_t *rec = x->req ? json_loads(json, 0, NULL) : NULL;
    if (json_is_object(rec)) {
      json_object_set_new(rec, "ts", json_integer(ts_ms));
      json_array_append(x->root, rec);
    }
    json_decref(rec);
    return;
  }
  if (!enc_ctx_resume(x)) return;
  if (status < 0) {
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
    return;
  }
  enc_reply_json(x, 200, json_pack("{s:O}", "records", x->root));
}

static void audit_step(enc_ctx *x, const uint8_t *data, size_t len) {
  size_t limit = x->limit;
  if (!(x->root = json_array())) {
    enc_reply_error(x, 500, "internal-error", "Out of memory");
    return;
  }
  x->pending = 1;
  if (x->st->host->store_query(x->st->plugin, "audit", 0, limit, on_audit, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "The store is unavailable");
  }
}

static int audit_route(enclave_state *st, evs_request *req, const char *query) {
  long limit = 100;
  const char *l = strstr(query, "limit=");
  if (l && (l == query || l[-1] == '&')) limit = strtol(l + 6, NULL, 10);
  if (limit < 1 || limit > 10000) limit = 100;
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    st->host->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  x->limit = (size_t)limit;
  return enc_continue(x, 0, audit_step);
}

int enc_admin_route(enclave_state *st, evs_request *req) {
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  const char *path = info->path, *m = info->method;
  if (strcmp(path, "/audit") == 0 && strcmp(m, "GET") == 0)
    return audit_route(st, req, info->query ? info->query : "");
  if (strncmp(path, "/apps", 5) != 0 || (path[5] && path[5] != '/')) return EVS_DECLINED;
  /* app holds more than an app id, so that a longer one is refused by the rule below. */
  char app[128] = "", rest[64] = "", kid[ENC_KEY_ID_MAX] = "";
  int action = 0;
  const char *p = path + 5;
  if (!*p || strcmp(p, "/") == 0) {
    action = strcmp(m, "POST") == 0 ? A_CREATE : strcmp(m, "GET") == 0 ? A_LIST : 0;
  } else {
    p++;
    size_t n = strcspn(p, "/");
    if (n >= sizeof app) return EVS_DECLINED;
    memcpy(app, p, n);
    p += n;
    if (*p == '/') p++;
    n = strcspn(p, "/");
    if (n >= sizeof rest) return EVS_DECLINED;
    memcpy(rest, p, n);
    p += n;
    if (*p == '/') {
      p++;
      if (strlen(p) >= sizeof kid || strchr(p, '/')) return EVS_DECLINED;
      strcpy(kid, p);
    }
    if (strcmp(rest, "unlock") == 0 && !*kid && strcmp(m, "POST") == 0) action = A_UNLOCK;
    else if (strcmp(rest, "lock") == 0 && !*kid && strcmp(m, "POST") == 0) action = A_LOCK;
    else if (strcmp(rest, "keys") == 0 && !*kid && strcmp(m, "POST") == 0) action = A_KEY_CREATE;
    else if (strcmp(rest, "keys") == 0 && !*kid && strcmp(m, "GET") == 0) action = A_KEY_LIST;
    else if (strcmp(rest, "keys") == 0 && *kid && strcmp(m, "DELETE") == 0) action = A_KEY_REVOKE;
    else if (strcmp(rest, "encrypt") == 0 && !*kid && strcmp(m, "POST") == 0) action = A_ENCRYPT;
    else if (strcmp(rest, "decrypt") == 0 && !*kid && strcmp(m, "POST") == 0) action = A_DECRYPT;
  }
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  if (!action) return enc_fail(x, 404, "resource-not-found", "No such admin endpoint");
  if (*app && !evs_app_id_valid(app, strlen(app)))
    return enc_fail(x, 400, "bad-request",
                    "Not an app id: app_ followed by 1 to 27 lower-case letters or digits");
  x->admin = 1;
  x->action = action;
  memcpy(x->app_id, app, strlen(app) + 1); /* valid, so it fits */
  snprintf(x->key_id, sizeof x->key_id, "%s", kid);
  if (action == A_ENCRYPT || action == A_DECRYPT) {
    x->body_max = ENC_MAX_JSON_BODY;
    x->too_big = "The request body is over the 25 MiB (26214400 bytes) limit";
  }
  return enc_continue(x, strcmp(m, "POST") == 0, admin_step);
}

