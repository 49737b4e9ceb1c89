/*
 * enclave: the plugin that fronts the key-holding process. The host runs `evserver-enclave` for it
 * as a kept helper process (ABI 1.7: sandboxed, restarted with backoff, carried over to the next
 * worker of the rank); ep_client.c speaks its protocol. The plugin registers itself as the host's crypto provider, keeps the
 * apps and their scoped API keys in the store (apps.c), and answers two sets of endpoints:
 * the admin ones evctl calls over the admin socket (/apps/...) and the SDK-facing API on the
 * listeners serving the role "api" (/cages/key, /keys, /encrypt, /decrypt; api.c).
 *
 * The plugin never sees a private key or the App Master Key: it stores sealed shares and wrapped
 * keys, and API keys only as SHA-256 hashes. Plaintext passes through it for /encrypt and
 * /decrypt, as it must, and is never logged or audited.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

extern char **environ;

#include "enclave_int.h"
#include "evs_enclave_proto.h"

#ifndef EVS_ENCLAVE_DEFAULT_BINARY
#define EVS_ENCLAVE_DEFAULT_BINARY "/usr/libexec/evserver/evserver-enclave"
#endif

static const evs_config_item items[] = {
    /* No default in the table, so init can tell "not configured" from "configured wrong". */
    {"enclave_binary", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "the evserver-enclave executable (default: " EVS_ENCLAVE_DEFAULT_BINARY ")"},
    {"seal_key", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "the enclave's sealing key file (default: enclave-seal.key in the state directory)"},
    {"credentials_dir", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "directory of evserver-app-<appId> token files (default: $CREDENTIALS_DIRECTORY)"},
    {"api_listener", EVS_CONFIG_STRING, "api", 0, 0, 0,
     "obsolete (kept so configurations naming it still load): the API is served on the "
     "listeners whose `serves` names api"},
    {"request_timeout", EVS_CONFIG_DURATION, "10s", 100, 600000, 0,
     "how long a request to the enclave may take before it fails closed"},
    {"share_store", EVS_CONFIG_STRING, NULL, 0, 0, EVS_CONFIG_SECRET,
     "where apps' sealed share 2 is kept, apart from the state store: a SQLite file or a "
     "PostgreSQL connection string (default: share-store/shares.db in the state directory)"},
    {"relay_ca_url", EVS_CONFIG_STRING, NULL, 0, 0, 0,
     "the public URL of the relay CA certificate (GET " RELAY_CA_PATH " on an api listener), "
     "shown by `evctl relay-ca show`: the value for the SDKs' EV_CERT_HOSTNAME"},
    {"public_keys_rate", EVS_CONFIG_INT, "600", 1, 1000000, 0,
     "GET /public-keys/<appId> (no credential): requests per minute per client address and "
     "worker; more are answered 429"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

/* ---- unlocking apps after every (re)start ------------------------------------------------ */

typedef struct unlock_job {
  enclave_state *st;
  char app_id[ENC_APP_ID_MAX];
} unlock_job;

static void release_parked(enclave_state *st);

static void unlocking_done(enclave_state *st) {
  if (st->unlocking > 0 && --st->unlocking == 0) release_parked(st);
}

static void first_unlock_overdue(void *arg) {
  enclave_state *st = arg;
  if (st->unlocking == 0) return;
  st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                "the enclave did not get its apps within %d ms; requests go on", ENC_FIRST_UNLOCK_MS);
  st->unlocking = 0;
  release_parked(st);
}

static void auto_unlock_done(void *arg, int status, const ep_item *items_, size_t n) {
  unlock_job *j = arg;
  enclave_state *st = j->st;
  unlocking_done(st);
  if (status == 0)
    st->host->log(st->plugin, NULL, EVS_LOG_INFO,
                  "app %s is unlocked (from the credentials directory, or already)", j->app_id);
  else if (status != EVS_ENOCRYPTO)
    st->host->log(st->plugin, NULL, EVS_LOG_INFO,
                  "app %s stays locked (no usable credential, status %d): run `evctl app unlock`",
                  j->app_id, status);
  free(j);
}

static void auto_unlock_scan(void *arg, int status, const char *key, const uint8_t *v,
                             size_t len) {
  enclave_state *st = arg;
  if (!key) { /* the end of the scan */
    unlocking_done(st);
    return;
  }
  if (strncmp(key, "app/", 4) != 0) return;
  const char *app = key + 4;
  if (!evs_app_id_valid(app, strlen(app))) return;
  unlock_job *j = calloc(1, sizeof *j);
  if (!j) return;
  j->st = st;
  snprintf(j->app_id, sizeof j->app_id, "%s", app);
  st->unlocking++;
  if (enc_app_unlock(st, app, "", auto_unlock_done, j) < 0) {
    st->unlocking--;
    free(j);
  }
}

/* Apps created before the share store existed have share 2 in the state store: move it (the
 * copy first, so a failure leaves it where it was). Then unlock from credentials. Every worker
 * may do this at once: the moves are idempotent. */
static void migrate_scan(void *arg, int status, const char *key, const uint8_t *v, size_t len) {
  enclave_state *st = arg;
  if (key) {
    if (strncmp(key, "share2/", 7) != 0 || !evs_app_id_valid(key + 7, strlen(key + 7))) return;
    int r = st->host->aux_store_put(st->plugin, key, v, len, NULL, NULL);
    if (r == 0) r = st->host->store_delete(st->plugin, key, NULL, NULL);
    if (r == 0)
      st->host->log(st->plugin, NULL, EVS_LOG_INFO, "app %s: share 2 moved to the share store",
                    key + 7);
    else
      st->host->log(st->plugin, NULL, EVS_LOG_ERROR,
                    "app %s: share 2 could not be moved to the share store (%s)", key + 7,
                    strerror(-r));
    return;
  }
  if (st->host->store_scan(st->plugin, "app/", auto_unlock_scan, st) < 0) unlocking_done(st);
}

/* A new enclave process answered HELLO: ask it to unlock every app whose token it can read
 * from the credentials directory (APP_UNLOCK with an empty token). */
static void on_enclave_up(void *arg) {
  enclave_state *st = arg;
  st->host->counter_add(st->plugin, "enclave_starts", 1);
  if (ep_client_adopted(st->client))
    st->host->log(st->plugin, NULL, EVS_LOG_INFO,
                  "enclave process %d carried over from this worker's predecessor: its unlocked "
                  "apps stay unlocked", ep_client_pid(st->client));
  else if (ep_client_starts(st->client) > 1)
    st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                  "enclave process restarted (pid %d): apps unlocked with evctl are locked in this "
                  "worker until `evctl app unlock` runs again",
                  ep_client_pid(st->client));
  else
    st->host->log(st->plugin, NULL, EVS_LOG_INFO, "enclave process %d started",
                  ep_client_pid(st->client));
  if (st->started) /* the first start's count is init's */
    st->unlocking++; /* until the app scan has ended and each unlock it started answered */
  st->started = 1;
  if (st->host->store_scan(st->plugin, "share2/", migrate_scan, st) < 0 &&
      st->host->store_scan(st->plugin, "app/", auto_unlock_scan, st) < 0)
    unlocking_done(st);
}

/* ---- node-wide unlock and lock ------------------------------------------------------------
 * Each worker has its own enclave process. An app unlocked (or locked) through the admin socket
 * reaches one worker; that worker tells the others through the master (host->node_broadcast).
 * Message: 'U' | u8 app id length | app id | token, or 'L' | u8 length | app id. */

int enc_node_fanout(enclave_state *st, const char *app_id, const char *token,
                    evs_node_done_fn done, void *arg) {
  size_t al = strlen(app_id), tl = token ? strlen(token) : 0;
  if (al > 255 || 2 + al + tl > EVS_NODE_MSG_MAX) return -EINVAL;
  uint8_t *m = malloc(2 + al + tl);
  if (!m) return -ENOMEM;
  m[0] = token ? 'U' : 'L';
  m[1] = (uint8_t)al;
  memcpy(m + 2, app_id, al);
  if (tl) memcpy(m + 2 + al, token, tl);
  int r = st->host->node_broadcast(st->plugin, m, 2 + al + tl, ENC_NODE_TIMEOUT_MS, done, arg);
  OPENSSL_cleanse(m, 2 + al + tl);
  free(m);
  return r;
}

typedef struct peer_job {
  enclave_state *st;
  evs_node_msg *m;
  char op;
  char app_id[ENC_APP_ID_MAX];
} peer_job;

static void peer_done(void *arg, int status, const ep_item *it, size_t n) {
  peer_job *j = arg;
  enclave_state *st = j->st;
  if (status == 0)
    st->host->log(st->plugin, NULL, EVS_LOG_INFO, "app %s %s in this worker's enclave (node-wide)",
                  j->app_id, j->op == 'U' ? "unlocked" : "locked");
  else
    st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                  "app %s: node-wide %s failed in this worker's enclave (status %d)", j->app_id,
                  j->op == 'U' ? "unlock" : "lock", status);
  st->host->node_reply(j->m, status == 0 ? 0 : status < 0 ? status : -EIO);
  free(j);
}

static void on_node_msg(void *state, const uint8_t *msg, size_t len, evs_node_msg *m) {
  enclave_state *st = state;
  if (len == 1 && msg[0] == 'C') { /* the relay CA record changed */
    enc_relay_ca_node_msg(st, m);
    return;
  }
  if (len == 1 && msg[0] == 'K') { /* a key was revoked: cached checks are stale */
    st->key_gen++;
    st->host->node_reply(m, 0);
    return;
  }
  peer_job *j = calloc(1, sizeof *j);
  if (!j || st->disabled || len < 2 || (msg[0] != 'U' && msg[0] != 'L') ||
      (size_t)msg[1] + 2 > len || msg[1] >= ENC_APP_ID_MAX) {
    free(j);
    st->host->node_reply(m, st->disabled ? EVS_ENOCRYPTO : -EINVAL);
    return;
  }
  j->st = st;
  j->m = m;
  j->op = (char)msg[0];
  memcpy(j->app_id, msg + 2, msg[1]);
  size_t tl = len - 2 - msg[1];
  int r;
  if (!evs_app_id_valid(j->app_id, strlen(j->app_id)) || (j->op == 'U') != (tl > 0)) {
    r = -EINVAL; /* an empty token would mean "from the credentials directory" */
  } else if (j->op == 'U') {
    char *token = strndup((const char *)msg + 2 + msg[1], tl);
    r = token ? enc_app_unlock(st, j->app_id, token, peer_done, j) : -ENOMEM;
    if (token) {
      OPENSSL_cleanse(token, tl);
      free(token);
    }
  } else {
    r = enc_app_lock(st, j->app_id, peer_done, j);
  }
  if (r < 0) {
    free(j);
    st->host->node_reply(m, r);
  }
}

static void on_enclave_down(void *arg, size_t failed) {
  enclave_state *st = arg;
  st->host->counter_add(st->plugin, "enclave_failures", 1);
  st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                "enclave process lost (exited, closed its socket or stopped answering); %zu "
                "request(s) failed closed; restarting it",
                failed);
  /* A process that broke the protocol or stopped answering is not trusted: the host restarts
   * it once it is gone. (If it already exited, this is a no-op.) */
  if (st->helper) st->host->helper_kill(st->helper, SIGKILL);
}

/* The host's reports on the enclave process. */
static void on_helper_event(void *arg, evs_helper *h, const evs_helper_event *ev) {
  enclave_state *st = arg;
  (void)h;
  if (ev->type == EVS_HELPER_STARTED) {
    int r = ep_client_attach(st->client, ev->fd, ev->adopted);
    if (r < 0) {
      st->host->log(st->plugin, NULL, EVS_LOG_ERROR,
                    "cannot connect to enclave process %d (%s); restarting it", ev->pid,
                    strerror(-r));
      st->host->helper_kill(st->helper, SIGKILL);
    }
  } else if (ev->type == EVS_HELPER_EXITED) {
    ep_client_detach(st->client);
  }
}

/* ---- the crypto provider ----------------------------------------------------------------- */

typedef struct provider_call {
  evs_crypto_done_fn done;
  void *done_arg;
} provider_call;

typedef struct parked_call {
  struct parked_call *next;
  ep_msg m;
  ep_reply_fn fn;
  void *arg; /* one allocation, freed with free() if the call is dropped at shutdown */
} parked_call;

static void provider_reply(void *arg, int status, const ep_item *it, size_t n) {
  provider_call *pc = arg;
  if (status != 0) {
    pc->done(pc->done_arg, status == EVS_ENOCRYPTO ? EVS_ENOCRYPTO : status, NULL, 0);
    free(pc);
    return;
  }
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += 4 + it[i].len;
  uint8_t *out = malloc(total ? total : 1), *p = out;
  if (!out) {
    pc->done(pc->done_arg, -ENOMEM, NULL, 0);
    free(pc);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    evs_ep_put_u32(p, it[i].len);
    memcpy(p + 4, it[i].data, it[i].len);
    p += 4 + it[i].len;
  }
  pc->done(pc->done_arg, 0, out, total);
  OPENSSL_cleanse(out, total);
  free(out);
  free(pc);
}

static const struct {
  const char *name;
  uint16_t op;
} provider_ops[] = {
    {"encrypt", EVS_EP_ENCRYPT},           {"decrypt", EVS_EP_DECRYPT},
    {"encrypt_file", EVS_EP_ENCRYPT_FILE}, {"decrypt_file", EVS_EP_DECRYPT_FILE},
    {"app_status", EVS_EP_APP_STATUS},     {"decrypt_role", EVS_EP_DECRYPT_ROLE},
};

/* check_api_key: [api key, permission] -> [app id, key id], or -EACCES. For plugins that
 * guard their own traffic with the app's scoped API keys (the Inbound Relay's mTLS relays).
 * Answered from the key records (hashes only); the key never goes further. */
typedef struct key_check {
  enclave_state *st;
  evs_crypto_done_fn done;
  evs_api_key_cb kdone; /* the typed call (ABI 1.6) instead of done */
  void *done_arg;
  char *key;
  char *perm;
  uint64_t gen; /* key_gen when the record was read: a revocation since makes it stale */
} key_check;

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A cache slot's name: SHA-256 of the key, a NUL and the permission (the key is not kept). */
static int keycache_id(enclave_state *st, const char *key, size_t key_len, const char *perm,
                       size_t perm_len, unsigned char out[32]) {
  if (!st->keycache_md) st->keycache_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  if (!st->keycache_ctx) st->keycache_ctx = EVP_MD_CTX_new();
  EVP_MD_CTX *c = st->keycache_ctx;
  unsigned int n = 32;
  return st->keycache_md && c && EVP_DigestInit_ex2(c, st->keycache_md, NULL) &&
                 EVP_DigestUpdate(c, key, key_len) && EVP_DigestUpdate(c, "", 1) &&
                 EVP_DigestUpdate(c, perm, perm_len) && EVP_DigestFinal_ex(c, out, &n)
             ? 0
             : -1;
}

void enc_keycache_put(enclave_state *st, uint64_t gen, const char *key, const char *perm,
                      const char *app) {
  if (gen != st->key_gen) return; /* a key was revoked since the record was read */
  unsigned char id[32];
  if (keycache_id(st, key, strlen(key), perm, strlen(perm), id) < 0) return;
  enc_keycache_slot *sl = &st->keycache[id[0] % ENC_KEYCACHE_SLOTS];
  memcpy(sl->id, id, sizeof id);
  snprintf(sl->app, sizeof sl->app, "%s", app);
  sl->gen = st->key_gen;
  sl->until_ms = mono_ms() + ENC_KEYCACHE_MS;
}

/* The app of a recent successful check of key and perm still valid, or NULL. */
const char *enc_keycache_get(enclave_state *st, const char *key, size_t key_len,
                             const char *perm) {
  unsigned char id[32];
  if (keycache_id(st, key, key_len, perm, strlen(perm), id) < 0) return NULL;
  enc_keycache_slot *sl = &st->keycache[id[0] % ENC_KEYCACHE_SLOTS];
  if (sl->gen != st->key_gen || CRYPTO_memcmp(sl->id, id, sizeof id) != 0 ||
      mono_ms() >= sl->until_ms)
    return NULL;
  return sl->app;
}

int enc_keys_changed(enclave_state *st, evs_node_done_fn done, void *arg) {
  st->key_gen++;
  static const uint8_t msg[] = {'K'};
  return st->host->node_broadcast(st->plugin, msg, 1, ENC_NODE_TIMEOUT_MS, done, arg);
}

static void key_check_free(key_check *kc) {
  if (kc->key) {
    OPENSSL_cleanse(kc->key, strlen(kc->key));
    free(kc->key);
  }
  free(kc->perm);
  free(kc);
}

static void on_check_record(void *arg, int status, const uint8_t *v, size_t len) {
  key_check *kc = arg;
  int ok = 0;
  char app[ENC_APP_ID_MAX] = "", key_id[ENC_KEY_ID_MAX] = "";
  if (status == 0)
    ok = enc_api_key_verify(v, len, kc->key, kc->perm, NULL, app, key_id) == ENC_KEY_OK;
  enc_audit(kc->st, key_id[0] ? key_id : "unknown", app, "relay-auth", 0, ok ? "ok" : "unauthorized");
  if (ok && kc->kdone) enc_keycache_put(kc->st, kc->gen, kc->key, kc->perm, app);
  if (kc->kdone) {
    kc->kdone(kc->done_arg, ok ? 0 : -EACCES, ok ? app : NULL);
  } else if (!ok) {
    kc->done(kc->done_arg, -EACCES, NULL, 0);
  } else {
    size_t al = strlen(app), kl = strlen(key_id);
    uint8_t *out = malloc(8 + al + kl);
    if (!out) {
      kc->done(kc->done_arg, -ENOMEM, NULL, 0);
    } else {
      evs_ep_put_u32(out, (uint32_t)al);
      memcpy(out + 4, app, al);
      evs_ep_put_u32(out + 4 + al, (uint32_t)kl);
      memcpy(out + 8 + al, key_id, kl);
      kc->done(kc->done_arg, 0, out, 8 + al + kl);
      free(out);
    }
  }
  key_check_free(kc);
}

static int key_check_start(enclave_state *st, const uint8_t *key, size_t key_len,
                           const uint8_t *perm, size_t perm_len, evs_crypto_done_fn done,
                           evs_api_key_cb kdone, void *done_arg) {
  key_check *kc = calloc(1, sizeof *kc);
  if (!kc) return -ENOMEM;
  kc->st = st;
  kc->done = done;
  kc->kdone = kdone;
  kc->done_arg = done_arg;
  kc->gen = st->key_gen;
  kc->key = strndup((const char *)key, key_len);
  kc->perm = strndup((const char *)perm, perm_len);
  char key_id[ENC_KEY_ID_MAX];
  if (!kc->key || !kc->perm || enc_api_key_id(kc->key, key_id) < 0) {
    key_check_free(kc);
    return -EACCES;
  }
  char k[ENC_KEY_ID_MAX + 8];
  snprintf(k, sizeof k, "key/%s", key_id);
  int r = st->host->store_get(st->plugin, k, on_check_record, kc);
  if (r < 0) key_check_free(kc);
  return r;
}

static int check_api_key(enclave_state *st, const evs_crypto_request *creq,
                         evs_crypto_done_fn done, void *done_arg) {
  ep_item it[2];
  if (ep_items_parse(creq->payload, creq->payload_len, it, 2) != 2) return -EINVAL;
  return key_check_start(st, it[0].data, it[0].len, it[1].data, it[1].len, done, NULL, done_arg);
}

/* Sends m (consumed either way) to the enclave, or parks it while the first unlocks run.
 * fn runs exactly once unless this returns negative. */
int enc_enclave_send(enclave_state *st, ep_msg *m, ep_reply_fn fn, void *arg) {
  if (st->unlocking > 0) {
    parked_call *pk = calloc(1, sizeof *pk);
    if (!pk) {
      ep_msg_done(m);
      return -ENOMEM;
    }
    pk->m = *m;
    pk->fn = fn;
    pk->arg = arg;
    *st->parked_tail = pk;
    st->parked_tail = &pk->next;
    return 0;
  }
  return ep_client_call(st->client, m, fn, arg);
}

/* Other plugins (functions, relays) reach the enclave through host->crypto_call: op is one of
 * the names above and payload/result are the protocol's items, each `u32 len || bytes`. */
static int provider(void *state, const evs_crypto_request *creq, evs_crypto_done_fn done,
                    void *done_arg) {
  enclave_state *st = state;
  if (creq->op && strcmp(creq->op, "check_api_key") == 0)
    return check_api_key(st, creq, done, done_arg);
  if (st->disabled) return EVS_ENOCRYPTO;
  if (creq->op && (strcmp(creq->op, "attest_chain") == 0 || strcmp(creq->op, "attest_sign") == 0))
    return enc_attest_call(st, creq, done, done_arg);
  uint16_t op = 0;
  for (size_t i = 0; i < sizeof provider_ops / sizeof provider_ops[0]; i++)
    if (creq->op && strcmp(creq->op, provider_ops[i].name) == 0) op = provider_ops[i].op;
  if (!op) return -EINVAL;
  ep_msg m;
  ep_msg_init(&m, op);
  /* The payload is already in the protocol's item encoding: one copy, no item table. */
  if (ep_msg_add_items(&m, creq->payload, creq->payload_len) < 0) {
    ep_msg_done(&m);
    return -EINVAL;
  }
  provider_call *pc = calloc(1, sizeof *pc);
  if (!pc) {
    ep_msg_done(&m);
    return -ENOMEM;
  }
  pc->done = done;
  pc->done_arg = done_arg;
  int r = enc_enclave_send(st, &m, provider_reply, pc);
  if (r < 0) free(pc);
  return r;
}

/* The enclave has its apps: send what waited, in order. A call that cannot be sent fails as
 * it would have at once. */
static void release_parked(enclave_state *st) {
  parked_call *pk = st->parked;
  st->parked = NULL;
  st->parked_tail = &st->parked;
  while (pk) {
    parked_call *next = pk->next;
    int r = ep_client_call(st->client, &pk->m, pk->fn, pk->arg);
    if (r < 0) pk->fn(pk->arg, r, NULL, 0);
    free(pk);
    pk = next;
  }
}

/* ---- the typed crypto provider (ABI 1.6) -------------------------------------------------
 * The same enclave operations as provider_ops[], from typed requests: the protocol stays in
 * this plugin. Results point into the enclave's reply, valid during the caller's callback
 * (ep_client wipes its buffers after). */

typedef struct typed_call {
  evs_values_cb values;
  evs_bytes_cb bytes;
  void *done_arg;
  size_t n;
  int decrypt;
} typed_call;

static void values_reply(void *arg, int status, const ep_item *it, size_t n) {
  typed_call *tc = arg;
  evs_crypto_result *res = NULL;
  if (status == 0 && n != tc->n) status = EVS_CRYPTO_E_PROTOCOL;
  if (status == 0 && !(res = calloc(n, sizeof *res))) status = -ENOMEM;
  if (status != 0) {
    tc->values(tc->done_arg, status, NULL, 0);
    free(tc);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    /* `i32 status || ev string` (encrypt); `i32 status || u8 type || plaintext` (decrypt) */
    size_t head = tc->decrypt ? 5 : 4;
    int32_t fs = it[i].len >= 4 ? (int32_t)evs_ep_get_u32(it[i].data) : EVS_CRYPTO_E_PROTOCOL;
    if (fs == 0 && it[i].len < head) fs = EVS_CRYPTO_E_PROTOCOL;
    res[i].status = fs;
    if (fs != 0) continue;
    res[i].type = tc->decrypt ? it[i].data[4] : EVS_CRYPTO_STRING;
    res[i].data = it[i].data + head;
    res[i].len = it[i].len - head;
  }
  tc->values(tc->done_arg, 0, res, n);
  free(res);
  free(tc);
}

static void bytes_reply(void *arg, int status, const ep_item *it, size_t n) {
  typed_call *tc = arg;
  if (status == 0 && n != 1) status = EVS_CRYPTO_E_PROTOCOL;
  if (status != 0)
    tc->bytes(tc->done_arg, status, NULL, 0);
  else
    tc->bytes(tc->done_arg, 0, it[0].data, it[0].len);
  free(tc);
}

static int typed_send(enclave_state *st, ep_msg *m, typed_call *tc, ep_reply_fn fn) {
  if (m->failed) { /* out of memory or over the protocol's limits */
    ep_msg_done(m);
    free(tc);
    return -E2BIG;
  }
  int r = enc_enclave_send(st, m, fn, tc);
  if (r < 0) free(tc);
  return r;
}

static int t_encrypt_values(void *state, const evs_encrypt_request *req, evs_values_cb done,
                            void *done_arg) {
  enclave_state *st = state;
  if (st->disabled) return EVS_ENOCRYPTO;
  static const char *const tags[] = {[EVS_CRYPTO_STRING] = "s:", [EVS_CRYPTO_NUMBER] = "n:",
                                     [EVS_CRYPTO_BOOLEAN] = "b:", [EVS_CRYPTO_STRING_EXACT] = "r:"};
  for (size_t i = 0; i < req->n; i++)
    if (req->values[i].type < 0 || req->values[i].type > EVS_CRYPTO_STRING_EXACT) return -EINVAL;
  typed_call *tc = calloc(1, sizeof *tc);
  if (!tc) return -ENOMEM;
  tc->values = done;
  tc->done_arg = done_arg;
  tc->n = req->n;
  ep_msg m;
  ep_msg_init(&m, EVS_EP_ENCRYPT);
  ep_msg_add_str(&m, req->app_id);
  ep_msg_add_str(&m, req->curve);
  ep_msg_add_str(&m, req->role ? req->role : "");
  for (size_t i = 0; i < req->n; i++)
    ep_msg_add2(&m, tags[req->values[i].type], 2, req->values[i].data, req->values[i].len);
  return typed_send(st, &m, tc, values_reply);
}

static int t_decrypt_values(void *state, const evs_decrypt_request *req, evs_values_cb done,
                            void *done_arg) {
  enclave_state *st = state;
  if (st->disabled) return EVS_ENOCRYPTO;
  typed_call *tc = calloc(1, sizeof *tc);
  if (!tc) return -ENOMEM;
  tc->values = done;
  tc->done_arg = done_arg;
  tc->n = req->n;
  tc->decrypt = 1;
  ep_msg m;
  ep_msg_init(&m, EVS_EP_DECRYPT);
  ep_msg_add_str(&m, req->app_id);
  for (size_t i = 0; i < req->n; i++) ep_msg_add(&m, req->values[i].data, req->values[i].len);
  return typed_send(st, &m, tc, values_reply);
}

static int t_file(enclave_state *st, const evs_file_request *req, evs_bytes_cb done,
                  void *done_arg, int encrypt) {
  if (st->disabled) return EVS_ENOCRYPTO;
  typed_call *tc = calloc(1, sizeof *tc);
  if (!tc) return -ENOMEM;
  tc->bytes = done;
  tc->done_arg = done_arg;
  ep_msg m;
  ep_msg_init(&m, encrypt ? EVS_EP_ENCRYPT_FILE : EVS_EP_DECRYPT_FILE);
  ep_msg_add_str(&m, req->app_id);
  if (encrypt) ep_msg_add_str(&m, req->curve);
  ep_msg_add(&m, req->data, req->len);
  return typed_send(st, &m, tc, bytes_reply);
}

static int t_encrypt_file(void *state, const evs_file_request *req, evs_bytes_cb done,
                          void *done_arg) {
  return t_file(state, req, done, done_arg, 1);
}

static int t_decrypt_file(void *state, const evs_file_request *req, evs_bytes_cb done,
                          void *done_arg) {
  return t_file(state, req, done, done_arg, 0);
}

static int t_check_api_key(void *state, const evs_api_key_request *req, evs_api_key_cb done,
                           void *done_arg) {
  enclave_state *st = state;
  /* A recheck answered from the cache runs done before this returns (no store read, no audit
   * record: the check that filled the slot has one). */
  const char *app =
      req->recheck ? enc_keycache_get(st, req->key, req->key_len, req->permission) : NULL;
  if (app) {
    done(done_arg, 0, app);
    return 0;
  }
  return key_check_start(state, (const uint8_t *)req->key, req->key_len,
                         (const uint8_t *)req->permission, strlen(req->permission), NULL, done,
                         done_arg);
}

static const evs_crypto_provider typed_provider = {
    .size = sizeof(evs_crypto_provider),
    .encrypt_values = t_encrypt_values,
    .decrypt_values = t_decrypt_values,
    .encrypt_file = t_encrypt_file,
    .decrypt_file = t_decrypt_file,
    .check_api_key = t_check_api_key,
    .issue_certificate = enc_issue_certificate,
    .ca_certificates = enc_ca_certificates,
};

/* ---- routing ------------------------------------------------------------------------------ */

static int disabled_answer(enclave_state *st, evs_request *req) {
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    st->host->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  return enc_fail(x, 503, "service-unavailable",
                  "The enclave is not installed or not configured (enclave_binary)");
}

/* Routes of role "api": the listeners that serve it carry the SDK's EV_API_URL. */
static int api_route(void *state, evs_request *req) {
  enclave_state *st = state;
  if (st->disabled) return disabled_answer(st, req);
  return enc_api_route(st, req);
}

/* Routes of role "admin" (the admin socket): evctl app ..., evctl audit. */
static int admin_route(void *state, evs_request *req) {
  enclave_state *st = state;
  if (st->disabled) return disabled_answer(st, req);
  return enc_admin_route(st, req);
}

/* The API's endpoints by name (what `evctl routes` shows), and a catch route for the same
 * paths written with a doubled leading slash (an EV_API_URL with a trailing slash), which
 * enc_api_route accepts and declines otherwise: the host then answers `resource-not-found`. */
static int ca_pem_route(void *state, evs_request *req) {
  return enc_relay_ca_pem_route(state, req);
}

static int ca_admin_route(void *state, evs_request *req) {
  enclave_state *st = state;
  if (st->disabled) return disabled_answer(st, req);
  return enc_relay_ca_admin_route(st, req);
}

static int attest_root_route(void *state, evs_request *req) {
  enclave_state *st = state;
  if (st->disabled) return disabled_answer(st, req);
  return enc_attest_root_route(st, req);
}

static const evs_route routes[] = {
    {sizeof(evs_route), "api", NULL, "GET", ATTEST_ROOT_PATH, attest_root_route},
    {sizeof(evs_route), "admin", NULL, "GET", ATTEST_ROOT_PATH, attest_root_route},
    {sizeof(evs_route), "api", NULL, "GET", RELAY_CA_PATH, ca_pem_route},
    {sizeof(evs_route), "admin", NULL, NULL, "/relay-ca", ca_admin_route},
    {sizeof(evs_route), "api", NULL, "GET", "/cages/key", api_route},
    {sizeof(evs_route), "api", NULL, "GET", "/keys", api_route},
    {sizeof(evs_route), "api", NULL, "POST", "/encrypt", api_route},
    {sizeof(evs_route), "api", NULL, "POST", "/decrypt", api_route},
    {sizeof(evs_route), "api", NULL, "POST", "/client-side-tokens", api_route},
    {sizeof(evs_route), "api", NULL, "GET", "/public-keys", api_route},
    {sizeof(evs_route), "api", NULL, NULL, "/", api_route},
    {sizeof(evs_route), "admin", NULL, NULL, "/apps", admin_route},
    {sizeof(evs_route), "admin", NULL, "GET", "/audit", admin_route},
};

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void state_free(enclave_state *st) {
  if (!st) return;
  for (parked_call *pk = st->parked, *next; pk; pk = next) { /* stopping: nobody waits */
    next = pk->next;
    ep_msg_done(&pk->m);
    free(pk->arg);
    free(pk);
  }
  if (st->first_unlock_deadline) st->host->timer_free(st->first_unlock_deadline);
  enc_relay_ca_stop(st);
  ep_client_free(st->client); /* fails what waits on the enclave, attestation loads too */
  enc_attest_free(st);
  free(st->seal_key);
  EVP_MD_CTX_free(st->keycache_ctx);
  EVP_MD_free(st->keycache_md);
  free(st);
}

/* Names what an enclave is started with (--tag, echoed by HELLO). The host itself re-attaches a
 * successor only to an enclave started from the same arguments and file. Not a secret. */
static void config_tag(const char *binary, const char *seal, const char *creds, char out[17]) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  struct stat sb;
  memset(&sb, 0, sizeof sb);
  (void)stat(binary, &sb);
  uint64_t ids[] = {(uint64_t)sb.st_dev, (uint64_t)sb.st_ino, (uint64_t)sb.st_size,
                    (uint64_t)sb.st_mtim.tv_sec, (uint64_t)sb.st_mtim.tv_nsec, EVS_EP_VERSION};
  const char *strs[] = {binary, seal, creds ? creds : ""};
  for (size_t i = 0; i < 3; i++)
    for (const char *p = strs[i];; p++) {
      h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
      if (!*p) break;
    }
  const uint8_t *b = (const uint8_t *)ids;
  for (size_t i = 0; i < sizeof ids; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  enclave_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  st->parked_tail = &st->parked;
  st->key_gen = 1;
  st->public_keys_rate = host->config_int(plugin, "public_keys_rate");
  const char *binary = host->config_string(plugin, "enclave_binary");
  const char *seal = host->config_string(plugin, "seal_key");
  const char *creds = host->config_string(plugin, "credentials_dir");
  /* Before listener roles, the API was served on the listener of this name. Roles replaced
   * it: the API is served wherever `serves` names api (by default, the listener "api"). */
  const char *api = host->config_string(plugin, "api_listener");
  if (api && *api && strcmp(api, "api") != 0)
    host->log(plugin, NULL, EVS_LOG_WARN,
              "api_listener = %s is no longer used: add `serves = api` to [listener \"%s\"] "
              "(a listener named \"api\" serves the API by default)", api, api);
  if (!creds || !*creds) creds = getenv("CREDENTIALS_DIRECTORY");
  if (creds && !*creds) creds = NULL;
  if (seal && *seal) {
    st->seal_key = strdup(seal);
  } else {
    const char *sd = host->state_dir(plugin);
    size_t n = strlen(sd ? sd : ".") + sizeof "/enclave-seal.key";
    if ((st->seal_key = malloc(n))) snprintf(st->seal_key, n, "%s/enclave-seal.key", sd ? sd : ".");
  }
  if (!st->seal_key) {
    free(st);
    return -ENOMEM;
  }
  int configured = binary && *binary;
  if (!configured) binary = EVS_ENCLAVE_DEFAULT_BINARY;
  if (access(binary, X_OK) != 0) {
    int e = errno;
    if (configured) {
      host->log(plugin, NULL, EVS_LOG_ERROR,
                "enclave_binary %s is not an executable file (%s); fix enclave_binary in the "
                "[plugin \"enclave\"] section",
                binary, strerror(e));
      state_free(st);
      return -ENOENT;
    }
    /* Not configured and not installed: stay loaded but disabled, answering 503, so servers
     * that do not use apps (and their config checks) are not broken by this plugin. */
    st->disabled = 1;
    host->log(plugin, NULL, EVS_LOG_WARN,
              "%s is not installed (%s): apps, keys and the encrypt/decrypt API are disabled; "
              "set enclave_binary in the [plugin \"enclave\"] section to enable them",
              binary, strerror(e));
  }
  if (!st->disabled) {
    st->unlocking = 1; /* released by the first enclave's unlocks, or the deadline */
    st->first_unlock_deadline =
        host->timer_start(plugin, ENC_FIRST_UNLOCK_MS, 0, first_unlock_overdue, st);
  }
  int r = host->register_crypto_provider(plugin, provider);
  if (r == 0 && host->abi_minor >= 6 && host->register_crypto_provider2) r = host->register_crypto_provider2(plugin, &typed_provider);
  for (size_t i = 0; r == 0 && i < sizeof routes / sizeof routes[0]; i++)
    r = host->add_route(plugin, &routes[i]);
  if (r == 0) r = host->node_subscribe(plugin, on_node_msg);
  if (r == 0 && !st->disabled) {
    /* Share 2 lives apart from the state store, so that one store alone never holds two shares. */
    const char *ss = host->config_string(plugin, "share_store");
    char *def = NULL;
    if (!ss || !*ss) {
      const char *sd = host->state_dir(plugin);
      if (asprintf(&def, "%s/share-store/shares.db", sd ? sd : ".") < 0) def = NULL;
      ss = def;
    } else if (ss[0] != '/' && !strchr(ss, '=') && strncmp(ss, "postgres", 8) != 0) {
      const char *sd = host->state_dir(plugin); /* a relative file is in the state directory */
      if (asprintf(&def, "%s/%s", sd ? sd : ".", ss) < 0) def = NULL;
      ss = def;
    }
    r = ss ? host->aux_store_open(plugin, ss) : -ENOMEM;
    if (r < 0)
      host->log(plugin, NULL, EVS_LOG_ERROR,
                "cannot open the share store (share_store in the [plugin \"enclave\"] section): %s",
                strerror(-r));
    free(def);
  }
  if (r < 0 || st->disabled) {
    if (r < 0) {
      state_free(st);
      return r;
    }
    *ret_state = st;
    return 0;
  }
  char tag[17];
  config_tag(binary, st->seal_key, creds, tag);
  ep_client_config cfg = {
      .request_timeout_ms = (uint64_t)host->config_int(plugin, "request_timeout"),
      .on_up = on_enclave_up,
      .on_up_arg = st,
      .on_down = on_enclave_down,
  };
  r = ep_client_new((uv_loop_t *)host->uv_loop(plugin), &cfg, &st->client);
  /* The enclave applies its own policy once it has read its files; the host loads the policy's
   * exec stage before that, and keeps the process for this worker rank. It inherits the
   * environment (sanitizer options in tests); nothing secret is in it or in argv. */
  const char *argv[10];
  int n = 0;
  argv[n++] = binary;
  argv[n++] = "--fd";
  argv[n++] = "3";
  argv[n++] = "--seal-key";
  argv[n++] = st->seal_key;
  if (creds) {
    argv[n++] = "--credentials";
    argv[n++] = creds;
  }
  argv[n++] = "--tag";
  argv[n++] = tag;
  argv[n] = NULL;
  evs_helper_spec spec;
  memset(&spec, 0, sizeof spec);
  spec.size = sizeof spec;
  spec.path = binary;
  spec.argv = argv;
  spec.envp = (const char *const *)environ;
  spec.sandbox = "enclave";
  spec.fd = 3;
  spec.restart_min_ms = EP_RESTART_MIN_MS;
  spec.restart_max_ms = EP_RESTART_MAX_MS;
  spec.kept = "enclave";
  if (r == 0) r = host->helper_spawn(plugin, &spec, on_helper_event, st, &st->helper);
  if (r == 0) r = enc_relay_ca_start(st);
  if (r < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "cannot start %s: %s", binary, strerror(-r));
    state_free(st);
    return r;
  }
  *ret_state = st;
  return 0;
}

static void fini(void *state) { state_free(state); }

EVS_PLUGIN_DEFINE("enclave", "0.1.0",
                  "Apps, API keys and the Evervault encrypt/decrypt API, backed by evserver-enclave",
                  items, init, fini);
