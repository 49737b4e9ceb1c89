/*
 * enclave_int.h: what the files of the enclave plugin share. enclave.c holds the descriptor,
 * init and supervision glue; apps.c the admin endpoints (apps, keys) and the store records;
 * api.c the SDK-facing API and the JSON field walkers; ep_client.c the enclave process.
 */
#ifndef EVS_ENCLAVE_INT_H
#define EVS_ENCLAVE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "evserver/evs_plugin.h"
#include "ep_client.h"
#include "evs_app_id.h" /* the app id rule (enclave/proto, header-only) */
#include "token_bucket.h"

#define ENC_APP_ID_MAX (EVS_APP_ID_MAX_LEN + 1) /* an app id and its NUL */
#define ENC_KEY_ID_MAX 40      /* "key_" + 16 hex, with room */
#define ENC_STORE_KEY_MAX 64

typedef struct relay_ca relay_ca; /* relay_ca.c */
typedef struct attest_keys attest_keys; /* attest_keys.c */

/* Answers to repeated key checks (evs_api_key_request.recheck: each request in an Outbound
 * Relay tunnel; and every API request, /encrypt, /decrypt, /keys, /cages/key: api.c), so that a
 * key is checked per request without a store read (docs/state.md: no database round trip on
 * the request path): a slot
 * holds a successful check's SHA-256(key, permission) and app, valid while no key was revoked
 * in this node since (gen) and for at most ENC_KEYCACHE_MS (other nodes' revocations). */
#define ENC_KEYCACHE_SLOTS 64
#define ENC_KEYCACHE_MS 1000
typedef struct enc_keycache_slot {
  unsigned char id[32];
  char app[ENC_APP_ID_MAX];
  uint64_t gen;      /* enclave_state.key_gen when it was filled (0: empty) */
  uint64_t until_ms; /* monotonic */
} enc_keycache_slot;

/* GET /public-keys rate limiting (browser.c): a token bucket per client address. */
#define ENC_RATE_SLOTS 256
typedef struct enc_rate_slot {
  evs_token_bucket bucket; /* of the addresses hashed here */
  int started;             /* 0: the bucket was never used (full once initialised) */
} enc_rate_slot;

struct enclave_state;
/* enclave.c: the cache above. get: the app of a successful check of (key, perm) made less than
 * ENC_KEYCACHE_MS ago with no revocation in this node since, or NULL. put: records one, unless
 * gen (key_gen when the record was read) is no longer current. */
const char *enc_keycache_get(struct enclave_state *st, const char *key, size_t key_len,
                             const char *perm);
void enc_keycache_put(struct enclave_state *st, uint64_t gen, const char *key, const char *perm,
                      const char *app);

typedef struct enclave_state {
  const evs_host *host;
  evs_plugin *plugin;
  ep_client *client;
  evs_helper *helper;       /* evserver-enclave, run by the host (kept for the worker rank) */
  char *seal_key;
  int disabled; /* enclave_binary not configured and not installed: answer 503 */
  /* From start until the first enclave process has been given its apps from the credentials
   * directory (start, the scan and each unlock count one), provider calls wait in `parked`,
   * so that a reload's new workers never answer "locked" for an app about to be unlocked.
   * At most ENC_FIRST_UNLOCK_MS: then they go (and fail closed if the enclave is not up). */
  int unlocking;
  int started;
  struct parked_call *parked, **parked_tail;
  evs_timer *first_unlock_deadline;
  attest_keys *attest;   /* the attestation root and node key, once loaded (attest_keys.c) */
  relay_ca *ca;          /* this worker's copy of the store's relay CA record (NULL: none) */
  evs_timer *ca_refresh; /* re-reads it now and then (other nodes may rotate it) */
  uint64_t ca_read_ms;   /* when it was last read (a miss re-reads at most once a second) */
  uint64_t key_gen;      /* from 1; +1 whenever a key is revoked in this node */
  enc_keycache_slot keycache[ENC_KEYCACHE_SLOTS];
  /* SHA-256 fetched once and a context reused: the cache is looked up on every request that
   * carries an API key, and an implicit fetch per digest cost more than the digest. */
  EVP_MD *keycache_md;
  EVP_MD_CTX *keycache_ctx;
  int64_t public_keys_rate; /* GET /public-keys: requests per minute per client address */
  enc_rate_slot rate[ENC_RATE_SLOTS];
} enclave_state;

/* How long the other workers' enclaves get to act on a node-wide unlock or lock. */
#define ENC_FIRST_UNLOCK_MS 5000
#define ENC_NODE_TIMEOUT_MS 4000 /* under evctl's 5 s, so it hears the answer */

/* ---- per-request context (api.c) ---------------------------------------------------------
 * Lives from the route hook until both the request has ended and no asynchronous step is
 * outstanding: `req` turns NULL when the host ends the request, `pending` is set while a store,
 * body or enclave callback is due. Whoever sees both clear frees it. */
typedef struct enc_slot {
  json_t *parent; /* object or array holding the leaf (borrowed from root) */
  const char *key; /* for objects (borrowed from the object's key storage) */
  size_t index;    /* for arrays */
} enc_slot;

typedef struct enc_ctx enc_ctx;
typedef void (*enc_step_fn)(enc_ctx *x, const uint8_t *body, size_t len);

struct enc_ctx {
  enclave_state *st;
  evs_request *req;
  int pending;
  int action;
  int admin;
  char app_id[ENC_APP_ID_MAX];
  char key_id[ENC_KEY_ID_MAX];
  char curve[16];
  char role[64];
  char *api_key;      /* the presented key, wiped on free */
  uint64_t key_gen;   /* enclave_state.key_gen when the key record was asked for */
  json_t *root;       /* the data to encrypt/decrypt: an object or array */
  int wrapped;        /* root is a one-element array around a top-level scalar */
  json_t *body_obj;   /* admin request object */
  enc_slot *slots;
  size_t nslots, cap;
  uint8_t *body;      /* raw body (files), wiped on free */
  size_t body_len;
  int octet;          /* application/octet-stream */
  size_t limit;       /* GET /audit: how many records */
  char *token;        /* app token on unlock, wiped on free (and as soon as it is sent) */
  size_t workers, workers_ok; /* node-wide unlock/lock: other workers reached, and done */
  enc_step_fn step;   /* what enc_continue runs once the body (if any) is in */
  evs_timer *timer;   /* enc_continue's deferral when no body is read */
  int body_status;
  size_t body_max;    /* enc_continue's read_body limit (0: the host's limits.max_body_bytes) */
  const char *too_big; /* the 413's detail when the body is over body_max (static; NULL: generic) */
  char ca_fp[100];    /* DELETE /relay-ca/<fingerprint> */
  int cors;           /* a browser's request (public keys, a client-side token): answers carry
                       * Access-Control-Allow-Origin: * (bearer credentials, never cookies) */
  char cst_hash[65];  /* POST /decrypt with a client-side token: hex SHA-256 of the token */
  int err_status;     /* enc_fail: answer this instead of running step */
  const char *err_code, *err_detail; /* static strings */
};

enc_ctx *enc_ctx_new(enclave_state *st, evs_request *req);
/* At the start of every asynchronous callback: clears pending; returns 0 (and frees the ctx)
 * when the request has already ended. */
int enc_ctx_resume(enc_ctx *x);

/* Route hooks never answer synchronously (the host touches the request after the hook
 * returns, and an answered Connection: close request is already freed): they create a ctx and
 * return enc_continue(x, read_body, step), which runs step on the loop after the body (POST) has
 * been read, or on a zero timer. enc_fail does the same with an error answer. Both return
 * EVS_HANDLED. */
int enc_continue(enc_ctx *x, int read_body, enc_step_fn step);
int enc_fail(enc_ctx *x, int status, const char *code, const char *detail);

/* Answers with a JSON object (stolen) or an error; the ctx must not be touched afterwards. */
void enc_reply_json(enc_ctx *x, int status, json_t *obj);
void enc_reply_error(enc_ctx *x, int status, const char *code, const char *detail);

/* ---- helpers (api.c) ---------------------------------------------------------------------- */
/* The largest JSON request body of the encrypt/decrypt API and the admin encrypt/decrypt: the
 * docs' "per-request limit of 25 MB for encryption/decryption". Files have their own limits
 * (EVS_EP_FILE_MAX_PLAINTEXT, plus EVS_EP_FILE_OVERHEAD for a %EVENC file to decrypt). */
#define ENC_MAX_JSON_BODY ((size_t)25 * 1024 * 1024)

/* The canonical curve name ("secp256k1" or "prime256v1") of v[0..len): the names and aliases
 * secp256k1, koblitz, prime256v1, secp256r1, nist, in any ASCII case. NULL for anything else. */
const char *enc_curve_name(const char *v, size_t len);
/* 1 when v[0..len) is a data role: ^[a-z0-9-]{1,20}$ (PROTOCOL.md §3.5), else 0. */
int enc_role_valid(const char *v, size_t len);
/* What error details say a valid curve and role are. */
#define ENC_CURVE_HINT "use secp256k1 (or koblitz) or prime256v1 (or secp256r1, nist)"
#define ENC_ROLE_HINT "a data role is 1 to 20 of a-z, 0-9 and '-'"
/* Writes "'name'" into out (cap bytes) when name is short and printable ([A-Za-z0-9_.-]),
 * else a placeholder: for error details that name what the client sent. Returns out. */
const char *enc_param_label(const char *name, size_t len, char *out, size_t cap);
char *enc_b64(const uint8_t *data, size_t len);                   /* malloc'd, NUL-terminated */
int enc_unb64(const char *s, size_t len, uint8_t **ret, size_t *ret_len);
void enc_audit(enclave_state *st, const char *who, const char *app, const char *op,
               size_t fields, const char *outcome);

/* Reads share1/<app>, share2/<app> and wrapped/<app> from the store and sends APP_UNLOCK
 * with token ("" asks the enclave to read it from its credentials directory). Returns 0 (cb
 * then runs exactly once, status as for ep_reply_fn, -ENOENT for an unknown app) or negative. */
int enc_app_unlock(enclave_state *st, const char *app_id, const char *token, ep_reply_fn cb,
                   void *arg);

/* enclave.c: asks the enclaves of the node's other workers to unlock app_id with token, or to
 * lock it (token NULL). done(arg, workers, ok) runs once, as for host->node_broadcast. The
 * token is copied only into buffers that are wiped. Returns 0 or negative (done never runs). */
/* A key was revoked: drop this worker's cached key checks, then the other workers' (node
 * message 'K'); done(arg, workers, ok) as for node_broadcast. */
int enc_keys_changed(enclave_state *st, evs_node_done_fn done, void *arg);
int enc_node_fanout(enclave_state *st, const char *app_id, const char *token,
                    evs_node_done_fn done, void *arg);
/* apps.c: sends APP_LOCK for app_id to this worker's enclave. */
int enc_app_lock(enclave_state *st, const char *app_id, ep_reply_fn cb, void *arg);

/* Encrypts or decrypts every field of x->root (JSON) or x->body (file) in one enclave round
 * trip and answers; x->app_id, x->curve, x->role set. Used by the API and admin endpoints. */
void enc_do_encrypt(enc_ctx *x);
/* Takes data (stolen) as the value to work on: sets x->root (NULL on ENOMEM), x->wrapped. */
void enc_set_data(enc_ctx *x, json_t *data);
void enc_do_decrypt(enc_ctx *x);

/* ---- the browser's endpoints (browser.c) --------------------------------------------------
 * GET /public-keys/<appId> (no credential, CORS, cached, rate limited per client address),
 * POST /client-side-tokens (Basic, api:decrypt), POST /decrypt with Authorization: Token <t>
 * (single use: redeemed by taking the token's live marker from the store) and the CORS
 * preflight of those paths. README.md, "Browsers". */
#define ENC_CST_DEFAULT_MS (5 * 60 * 1000)  /* a token's life when the SDK sends no usable expiry */
#define ENC_CST_MAX_MS (10 * 60 * 1000)     /* and the most it may ask for */
int enc_public_keys_route(enclave_state *st, evs_request *req, const char *app_id);
int enc_preflight_route(enclave_state *st, evs_request *req);
/* Steps of api.c's flow once the caller is known. */
void enc_cst_create(enc_ctx *x);           /* Basic key checked: mint a token, answer */
int enc_cst_redeem(enc_ctx *x);            /* Token given, body parsed: check, take, decrypt */
/* 1 when the request carries Authorization: Token <t>: x->token, x->cst_hash, x->cors set;
 * 0 when it carries none; -1 when malformed. */
int enc_cst_credential(enc_ctx *x);
/* api.c: the data of a request (the value itself when a scalar was wrapped). */
json_t *enc_answer_data(enc_ctx *x);

/* ---- the relay CA (relay_ca.c) --------------------------------------------------------------- */
#define RELAY_CA_PATH "/relay-ca.pem" /* on the api role: the SDKs' EV_CERT_HOSTNAME */
#define EVS_CA_MAX_DAYS_API 10950
/* Starts this worker's copy (read now, then every minute); enc_relay_ca_stop frees it. */
int enc_relay_ca_start(enclave_state *st);
void enc_relay_ca_stop(enclave_state *st);
/* A node message 'C' (another worker changed the record): re-read it, then node_reply. */
void enc_relay_ca_node_msg(enclave_state *st, evs_node_msg *m);
int enc_relay_ca_pem_route(enclave_state *st, evs_request *req);   /* GET /relay-ca.pem */
int enc_relay_ca_admin_route(enclave_state *st, evs_request *req); /* /relay-ca (admin) */
/* The crypto provider's members of ABI 1.7. */
int enc_issue_certificate(void *state, const evs_cert_request *req, evs_bytes_cb done,
                          void *done_arg);
int enc_ca_certificates(void *state, evs_bytes_cb done, void *done_arg);
/* enclave.c: sends m to this worker's enclave (parked while the first unlocks run). m is
 * consumed. As ep_client_call. */
int enc_enclave_send(enclave_state *st, ep_msg *m, ep_reply_fn fn, void *arg);

/* ---- the attestation keys of Cages (attest_keys.c) ----------------------------------------- */
#define ATTEST_ROOT_PATH "/attestation-root.pem" /* api and admin roles, no auth */
/* The crypto provider's "attest_chain" and "attest_sign" (creq->op is one of them). */
int enc_attest_call(enclave_state *st, const evs_crypto_request *creq, evs_crypto_done_fn done,
                    void *done_arg);
int enc_attest_root_route(enclave_state *st, evs_request *req); /* GET /attestation-root.pem */
void enc_attest_free(enclave_state *st);

/* ---- the route hooks ---------------------------------------------------------------------- */
int enc_admin_route(enclave_state *st, evs_request *req); /* apps.c */
int enc_api_route(enclave_state *st, evs_request *req);   /* api.c */
/* api.c: the key id of an API key string (ev:key:1:<secret>:<app hash>:<keyId>), 0 or -1 when
 * malformed. The one parser of a presented key, for every path. */
int enc_api_key_id(const char *key, char ret_id[ENC_KEY_ID_MAX]);
/* api.c: the one verifier of a presented API key, for the API's own endpoints and for other
 * plugins (check_api_key). record[0..len) is the stored key record (JSON: hash, appId, keyId,
 * permissions, revoked), found by the key id enc_api_key_id() read from key. Returns
 * ENC_KEY_INVALID unless the record is well formed, not revoked, its hash is SHA-256(key)
 * (compared in constant time) and, when app_id is not NULL, its app is app_id; else
 * ENC_KEY_FORBIDDEN unless the key grants perm (every key may "api:encrypt"), else ENC_KEY_OK.
 * ret_app and ret_key_id are filled unless ENC_KEY_INVALID. */
enum { ENC_KEY_OK = 0, ENC_KEY_INVALID = -1, ENC_KEY_FORBIDDEN = -2 };
int enc_api_key_verify(const uint8_t *record, size_t len, const char *key, const char *perm,
                       const char *app_id, char ret_app[ENC_APP_ID_MAX],
                       char ret_key_id[ENC_KEY_ID_MAX]);

#endif
