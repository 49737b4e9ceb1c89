/*
 * keys.c: the enclave's key hierarchy (enclave/README.md, "Key hierarchy") and the table of
 * unlocked apps.
 *
 *   sealing key (file, 32 B) ── AES-256-GCM ──> sealed share 1, sealed share 2, sealed offset
 *   app token = "evt_" + base64url(share 3 XOR offset)
 *   App Master Key = Shamir-combine(share 1, share 2, share 3)          (3 of 3)
 *   App Master Key ── AES-256-GCM ──> wrapped secp256k1 and prime256v1 private keys
 *
 * Every AAD names its purpose and the app id, so a blob cannot be moved to another app or used
 * as another kind of blob. Transient secrets (AMK, shares, token bytes, private scalars) live in
 * OpenSSL's secure heap (locked, excluded from core dumps, once main.c has initialised it) and
 * are wiped on every path. The unlocked keys themselves are evs_ec_key objects of the crypto
 * library (see enclave/README.md on what is and is not locked).
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "enclave.h"

#define NBUCKETS 256
#define IV_LEN 12
#define TAG_LEN 16
#define SHARE_LEN EVS_SHAMIR_SHARE_LEN
#define KEY_BLOB_LEN (1 + EVS_EC_PUB_LEN + IV_LEN + EVS_EC_PRIV_LEN + TAG_LEN) /* 94 */
#define OFFSET_BLOB_LEN (IV_LEN + 32 + TAG_LEN)                              /* 60 */

static const uint8_t share_magic[4] = {'E', 'V', 'S', 1};
static const uint8_t wrapped_magic[4] = {'E', 'V', 'K', 1};

typedef struct credential {
  char id[EVS_APP_ID_MAX + 1];
  size_t id_len;
  char *token; /* secure heap */
  size_t token_len;
  struct credential *next;
} credential;

struct evs_enclave {
  uint8_t *seal_key; /* secure heap, EVS_SEAL_KEY_LEN */
  evs_app *apps[NBUCKETS];
  size_t napps;
  credential *creds;
  size_t ncreds;
  const char *sandbox;
  const char *mlock;
  const char *tag;
  evs_key_cache *ca;     /* the relay CA last used for CA_SIGN (ca.c) */
  evs_key_cache *attest; /* the node attestation key last used (attest.c) */
};

/* Secrets that an operation needs for a moment, in one secure-heap block. */
typedef struct scratch {
  uint8_t amk[EVS_SHAMIR_SECRET_LEN];
  uint8_t shares[3 * SHARE_LEN];
  uint8_t offset[32];
  uint8_t token[32];
  uint8_t priv[2][EVS_EC_PRIV_LEN];
  char b64[64];
} scratch;

static scratch *scratch_new(void) { return OPENSSL_secure_zalloc(sizeof(scratch)); }
static void scratch_free(scratch *s) {
  if (s) OPENSSL_secure_clear_free(s, sizeof *s);
}

static unsigned bucket(const uint8_t *id, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a: app ids are not secret, and the table is small */
  for (size_t i = 0; i < len; i++) h = (h ^ id[i]) * 16777619u;
  return h % NBUCKETS;
}

/* ---- AES-256-GCM with a random IV ------------------------------------------------------------ */

/* out = IV || ciphertext || tag (IV_LEN + len + TAG_LEN bytes). */
static int seal(const uint8_t key[32], const uint8_t *aad, size_t aad_len, const uint8_t *in,
                size_t len, uint8_t *out) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int outl = 0, ok = ctx && RAND_bytes(out, IV_LEN) == 1 &&
                     EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, out) == 1 &&
                     EVP_EncryptUpdate(ctx, NULL, &outl, aad, (int)aad_len) == 1 &&
                     EVP_EncryptUpdate(ctx, out + IV_LEN, &outl, in, (int)len) == 1 &&
                     (size_t)outl == len &&
                     EVP_EncryptFinal_ex(ctx, out + IV_LEN + len, &outl) == 1 &&
                     EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN,
                                         out + IV_LEN + len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  return ok ? 0 : -1;
}

/* in = IV || ciphertext || tag; out receives len bytes, wiped on failure. */
static int open_sealed(const uint8_t key[32], const uint8_t *aad, size_t aad_len,
                       const uint8_t *in, size_t len, uint8_t *out) {
  uint8_t tag[TAG_LEN];
  memcpy(tag, in + IV_LEN + len, TAG_LEN);
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int outl = 0, ok = ctx && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, in) == 1 &&
                     EVP_DecryptUpdate(ctx, NULL, &outl, aad, (int)aad_len) == 1 &&
                     EVP_DecryptUpdate(ctx, out, &outl, in + IV_LEN, (int)len) == 1 &&
                     EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1 &&
                     EVP_DecryptFinal_ex(ctx, out + len, &outl) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) OPENSSL_cleanse(out, len);
  return ok ? 0 : -1;
}

/* AAD = label (with its NUL) || extra || app id. */
static size_t make_aad(uint8_t *aad, const char *label, const uint8_t *extra, size_t extra_len,
                       const uint8_t *id, size_t id_len) {
  size_t n = strlen(label) + 1;
  memcpy(aad, label, n);
  if (extra_len) memcpy(aad + n, extra, extra_len);
  n += extra_len;
  memcpy(aad + n, id, id_len);
  return n + id_len;
}
#define AAD_MAX (32 + 1 + EVS_EC_PUB_LEN + EVS_APP_ID_MAX)

static int seal_share(const evs_enclave *e, const uint8_t *id, size_t id_len,
                      const uint8_t share[SHARE_LEN], uint8_t out[EVS_SEALED_SHARE_LEN]) {
  uint8_t aad[AAD_MAX];
  uint8_t x = share[1];
  size_t n = make_aad(aad, "evserver-enclave share v1", &x, 1, id, id_len);
  memcpy(out, share_magic, 4);
  out[4] = x;
  return seal(e->seal_key, aad, n, share, SHARE_LEN, out + 5);
}

static int open_share(const evs_enclave *e, const uint8_t *id, size_t id_len, uint8_t want_x,
                      const uint8_t *in, size_t len, uint8_t share[SHARE_LEN]) {
  if (len != EVS_SEALED_SHARE_LEN || memcmp(in, share_magic, 4) != 0 || in[4] != want_x)
    return -1;
  uint8_t aad[AAD_MAX];
  size_t n = make_aad(aad, "evserver-enclave share v1", &want_x, 1, id, id_len);
  if (open_sealed(e->seal_key, aad, n, in + 5, SHARE_LEN, share) < 0) return -1;
  if (share[0] != 3 || share[1] != want_x) {
    OPENSSL_cleanse(share, SHARE_LEN);
    return -1;
  }
  return 0;
}

/* ---- base64url for the token (through the library's standard base64) ------------------------ */

static void token_format(const uint8_t bytes[32], char *b64, char out[EVS_APP_TOKEN_LEN + 1]) {
  size_t n = evs_ec_b64_encode(bytes, 32, b64);
  memcpy(out, EVS_APP_TOKEN_PREFIX, 4);
  for (size_t i = 0; i < n; i++) out[4 + i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
  out[4 + n] = 0;
  OPENSSL_cleanse(b64, n);
}

static int token_parse(const uint8_t *t, size_t len, char *b64, uint8_t ret[32]) {
  if (len != EVS_APP_TOKEN_LEN || memcmp(t, EVS_APP_TOKEN_PREFIX, 4) != 0) return -1;
  size_t n = len - 4, out_len = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = t[4 + i];
    if (c == '+' || c == '/' || c == '=') return -1; /* base64url only */
    b64[i] = c == '-' ? '+' : c == '_' ? '/' : (char)c;
  }
  int r = evs_ec_b64_decode(b64, n, ret, 32, &out_len);
  OPENSSL_cleanse(b64, n);
  if (r != EVS_EC_OK || out_len != 32) {
    OPENSSL_cleanse(ret, 32);
    return -1;
  }
  return 0;
}

/* ---- the enclave state ----------------------------------------------------------------------- */

int evs__enclave_new(const uint8_t seal_key[EVS_SEAL_KEY_LEN], evs_enclave **ret) {
  evs_enclave *e = OPENSSL_zalloc(sizeof *e);
  if (!e) return EVS_EP_E_INTERNAL;
  e->seal_key = OPENSSL_secure_malloc(EVS_SEAL_KEY_LEN);
  if (!e->seal_key) {
    OPENSSL_free(e);
    return EVS_EP_E_INTERNAL;
  }
  memcpy(e->seal_key, seal_key, EVS_SEAL_KEY_LEN);
  *ret = e;
  return EVS_EP_OK;
}

static void app_free(evs_app *a) {
  if (!a) return;
  for (int c = 0; c < 2; c++) {
    evs_ec_encryptor_free(a->enc[c]);
    evs_ec_key_free(a->keys[c]);
  }
  evs_ec_decryptor_free(a->dec);
  OPENSSL_clear_free(a, sizeof *a);
}

void evs__enclave_free(evs_enclave *e) {
  if (!e) return;
  for (int i = 0; i < NBUCKETS; i++) {
    while (e->apps[i]) {
      evs_app *a = e->apps[i];
      e->apps[i] = a->next;
      app_free(a);
    }
  }
  while (e->creds) {
    credential *c = e->creds;
    e->creds = c->next;
    OPENSSL_secure_clear_free(c->token, c->token_len + 1);
    OPENSSL_clear_free(c, sizeof *c);
  }
  evs__key_cache_free(e->ca);
  evs__key_cache_free(e->attest);
  OPENSSL_secure_clear_free(e->seal_key, EVS_SEAL_KEY_LEN);
  OPENSSL_clear_free(e, sizeof *e);
}

void evs__enclave_set_info(evs_enclave *e, const char *sandbox, const char *mlock) {
  e->sandbox = sandbox;
  e->mlock = mlock;
}
const char *evs__enclave_sandbox(const evs_enclave *e) { return e->sandbox ? e->sandbox : "none"; }
const char *evs__enclave_mlock(const evs_enclave *e) { return e->mlock ? e->mlock : "none"; }
void evs__enclave_set_tag(evs_enclave *e, const char *tag) { e->tag = tag; }
const char *evs__enclave_tag(const evs_enclave *e) { return e->tag; }

int evs__enclave_add_credential(evs_enclave *e, const char *id, size_t id_len, const char *token,
                                size_t token_len) {
  if (!evs_app_id_valid(id, id_len) || token_len > 4096)
    return EVS_EP_E_INVALID;
  char *t = OPENSSL_secure_malloc(token_len + 1);
  if (!t) return EVS_EP_E_INTERNAL;
  memcpy(t, token, token_len);
  t[token_len] = 0;
  for (credential *c = e->creds; c; c = c->next) {
    if (c->id_len == id_len && memcmp(c->id, id, id_len) == 0) {
      OPENSSL_secure_clear_free(c->token, c->token_len + 1);
      c->token = t;
      c->token_len = token_len;
      return EVS_EP_OK;
    }
  }
  credential *c = OPENSSL_zalloc(sizeof *c);
  if (!c) {
    OPENSSL_secure_clear_free(t, token_len + 1);
    return EVS_EP_E_INTERNAL;
  }
  memcpy(c->id, id, id_len);
  c->id_len = id_len;
  c->token = t;
  c->token_len = token_len;
  c->next = e->creds;
  e->creds = c;
  e->ncreds++;
  return EVS_EP_OK;
}

size_t evs__enclave_credentials(const evs_enclave *e) { return e->ncreds; }

/* The relay CA (ca.c) seals its private key exactly as shares are sealed: AES-256-GCM under the
 * sealing key, a random IV, an AAD that names the purpose. */
int evs__enclave_seal(const evs_enclave *e, const uint8_t *aad, size_t aad_len,
                      const uint8_t *in, size_t len, uint8_t *out) {
  return seal(e->seal_key, aad, aad_len, in, len, out);
}
int evs__enclave_unseal(const evs_enclave *e, const uint8_t *aad, size_t aad_len,
                        const uint8_t *in, size_t len, uint8_t *out) {
  return open_sealed(e->seal_key, aad, aad_len, in, len, out);
}
evs_key_cache **evs__enclave_ca(evs_enclave *e) { return &e->ca; }
evs_key_cache **evs__enclave_attest(evs_enclave *e) { return &e->attest; }
size_t evs__enclave_unlocked(const evs_enclave *e) { return e->napps; }

evs_app *evs__app_find(evs_enclave *e, const uint8_t *id, size_t id_len) {
  if (!evs_app_id_valid(id, id_len)) return NULL;
  for (evs_app *a = e->apps[bucket(id, id_len)]; a; a = a->next)
    if (a->id_len == id_len && memcmp(a->id, id, id_len) == 0) return a;
  return NULL;
}

int evs__app_lock(evs_enclave *e, const uint8_t *id, size_t id_len) {
  if (!evs_app_id_valid(id, id_len)) return 0;
  for (evs_app **pp = &e->apps[bucket(id, id_len)]; *pp; pp = &(*pp)->next) {
    evs_app *a = *pp;
    if (a->id_len == id_len && memcmp(a->id, id, id_len) == 0) {
      *pp = a->next;
      app_free(a);
      e->napps--;
      return 1;
    }
  }
  return 0;
}

/* Installs an app made from two private scalars (replacing an earlier one). */
static int app_install(evs_enclave *e, const uint8_t *id, size_t id_len,
                       uint8_t priv[2][EVS_EC_PRIV_LEN],
                       const uint8_t *want_pub /* 2 x 33, or NULL */) {
  evs_app *a = OPENSSL_zalloc(sizeof *a);
  if (!a) return EVS_EP_E_INTERNAL;
  memcpy(a->id, id, id_len);
  a->id_len = id_len;
  int status = EVS_EP_OK;
  for (int c = 0; c < 2 && status == EVS_EP_OK; c++) {
    if (evs_ec_key_from_private((evs_ec_curve)c, priv[c], &a->keys[c]) != EVS_EC_OK) {
      status = want_pub ? EVS_EP_E_BAD_TOKEN : EVS_EP_E_INTERNAL;
      break;
    }
    evs_ec_key_public(a->keys[c], a->pub[c]);
    if (want_pub && CRYPTO_memcmp(a->pub[c], want_pub + c * EVS_EC_PUB_LEN, EVS_EC_PUB_LEN) != 0)
      status = EVS_EP_E_BAD_TOKEN;
  }
  if (status == EVS_EP_OK) {
    evs_ec_decryptor_config dc = {.secp256k1 = a->keys[0], .p256 = a->keys[1]};
    if (evs_ec_decryptor_new(&dc, &a->dec) != EVS_EC_OK) status = EVS_EP_E_INTERNAL;
  }
  if (status != EVS_EP_OK) {
    app_free(a);
    return status;
  }
  evs__app_lock(e, id, id_len);
  unsigned b = bucket(id, id_len);
  a->next = e->apps[b];
  e->apps[b] = a;
  e->napps++;
  return EVS_EP_OK;
}

evs_ec_encryptor *evs__app_encryptor(evs_app *app, evs_ec_curve curve) {
  if ((unsigned)curve > EVS_EC_P256) return NULL;
  if (!app->enc[curve]) {
    evs_ec_encryptor_config cfg;
    evs_ec_encryptor_config_init(&cfg);
    cfg.curve = curve;
    memcpy(cfg.app_public_key, app->pub[curve], EVS_EC_PUB_LEN);
    if (evs_ec_encryptor_new(&cfg, &app->enc[curve]) != EVS_EC_OK) return NULL;
  }
  return app->enc[curve];
}

/* ---- create and unlock ----------------------------------------------------------------------- */

void evs__app_created_done(evs_app_created *c) { OPENSSL_cleanse(c, sizeof *c); }

int evs__app_create(evs_enclave *e, const uint8_t *id, size_t id_len, evs_app_created *ret) {
  if (!evs_app_id_valid(id, id_len)) return EVS_EP_E_INVALID;
  /* An app that is unlocked here already exists: creating it again would replace keys that
   * data is encrypted under (two workers racing to create the same app, or a confused plugin). */
  if (evs__app_find(e, id, id_len)) return EVS_EP_E_INVALID;
  scratch *s = scratch_new();
  if (!s) return EVS_EP_E_INTERNAL;
  evs_app_created *out = ret; /* written directly: the caller's memory may be locked, a copy on
                                 the stack would not be */
  memset(out, 0, sizeof *out);
  evs_ec_key *k[2] = {NULL, NULL};
  int status = EVS_EP_E_INTERNAL;
  uint8_t aad[AAD_MAX];
  size_t n;

  if (RAND_bytes(s->amk, sizeof s->amk) != 1 || RAND_bytes(s->offset, sizeof s->offset) != 1)
    goto done;
  if (evs_shamir_split(s->amk, 3, 3, NULL, NULL, s->shares) != EVS_EC_OK) goto done;
  /* The token is share 3's y XOR the offset; its threshold (3) and x (3) are implied. */
  const uint8_t *share3 = s->shares + 2 * SHARE_LEN;
  if (share3[0] != 3 || share3[1] != 3) goto done;
  for (int i = 0; i < 32; i++) s->token[i] = share3[2 + i] ^ s->offset[i];
  token_format(s->token, s->b64, out->token);

  if (seal_share(e, id, id_len, s->shares, out->share1) < 0 ||
      seal_share(e, id, id_len, s->shares + SHARE_LEN, out->share2) < 0)
    goto done;
  memcpy(out->wrapped, wrapped_magic, 4);
  n = make_aad(aad, "evserver-enclave offset v1", NULL, 0, id, id_len);
  if (seal(e->seal_key, aad, n, s->offset, 32, out->wrapped + 4) < 0) goto done;
  for (int c = 0; c < 2; c++) {
    uint8_t *blob = out->wrapped + 4 + OFFSET_BLOB_LEN + c * KEY_BLOB_LEN;
    if (evs_ec_key_generate((evs_ec_curve)c, &k[c]) != EVS_EC_OK) goto done;
    evs_ec_key_public(k[c], out->pub[c]);
    evs_ec_key_private(k[c], s->priv[c]);
    blob[0] = (uint8_t)c;
    memcpy(blob + 1, out->pub[c], EVS_EC_PUB_LEN);
    n = make_aad(aad, "evserver-enclave key v1", blob, 1 + EVS_EC_PUB_LEN, id, id_len);
    if (seal(s->amk, aad, n, s->priv[c], EVS_EC_PRIV_LEN, blob + 1 + EVS_EC_PUB_LEN) < 0)
      goto done;
  }
  status = app_install(e, id, id_len, s->priv, NULL);

done:
  evs_ec_key_free(k[0]);
  evs_ec_key_free(k[1]);
  if (status != EVS_EP_OK) OPENSSL_cleanse(out, sizeof *out);
  scratch_free(s);
  return status;
}

int evs__app_unlock(evs_enclave *e, const uint8_t *id, size_t id_len, const uint8_t *token,
                    size_t token_len, const uint8_t *share1, size_t share1_len,
                    const uint8_t *share2, size_t share2_len, const uint8_t *wrapped,
                    size_t wrapped_len, uint8_t ret_pub[2][EVS_EC_PUB_LEN]) {
  if (!evs_app_id_valid(id, id_len)) return EVS_EP_E_INVALID;
  if (token_len == 0) { /* the token from the credentials directory */
    token = NULL;
    for (credential *c = e->creds; c; c = c->next) {
      if (c->id_len == id_len && memcmp(c->id, id, id_len) == 0) {
        token = (const uint8_t *)c->token;
        token_len = c->token_len;
      }
    }
    if (!token) {
      /* No credential, but unlocked already (created here, or unlocked by hand): nothing to
       * do, and the caller must not be told the app is locked. */
      evs_app *a = evs__app_find(e, id, id_len);
      if (!a) return EVS_EP_E_BAD_TOKEN;
      if (ret_pub) {
        memcpy(ret_pub[0], a->pub[0], EVS_EC_PUB_LEN);
        memcpy(ret_pub[1], a->pub[1], EVS_EC_PUB_LEN);
      }
      return EVS_EP_OK;
    }
  }
  scratch *s = scratch_new();
  if (!s) return EVS_EP_E_INTERNAL;
  int status = EVS_EP_E_INVALID;
  uint8_t aad[AAD_MAX];
  size_t n;

  /* The sealed parts first: if they do not open, the token is not to blame. */
  if (open_share(e, id, id_len, 1, share1, share1_len, s->shares) < 0 ||
      open_share(e, id, id_len, 2, share2, share2_len, s->shares + SHARE_LEN) < 0)
    goto done;
  if (wrapped_len != EVS_WRAPPED_KEYS_LEN || memcmp(wrapped, wrapped_magic, 4) != 0) goto done;
  n = make_aad(aad, "evserver-enclave offset v1", NULL, 0, id, id_len);
  if (open_sealed(e->seal_key, aad, n, wrapped + 4, 32, s->offset) < 0) goto done;
  for (int c = 0; c < 2; c++)
    if (wrapped[4 + OFFSET_BLOB_LEN + c * KEY_BLOB_LEN] != c) goto done;

  status = EVS_EP_E_BAD_TOKEN;
  if (token_parse(token, token_len, s->b64, s->token) < 0) goto done;
  uint8_t *share3 = s->shares + 2 * SHARE_LEN;
  share3[0] = 3;
  share3[1] = 3;
  for (int i = 0; i < 32; i++) share3[2 + i] = s->token[i] ^ s->offset[i];
  if (evs_shamir_combine(s->shares, 3, s->amk) != EVS_EC_OK) {
    status = EVS_EP_E_INTERNAL;
    goto done;
  }
  /* A wrong token gives a wrong AMK, which GCM refuses here. */
  uint8_t pubs[2 * EVS_EC_PUB_LEN];
  for (int c = 0; c < 2; c++) {
    const uint8_t *blob = wrapped + 4 + OFFSET_BLOB_LEN + c * KEY_BLOB_LEN;
    memcpy(pubs + c * EVS_EC_PUB_LEN, blob + 1, EVS_EC_PUB_LEN);
    n = make_aad(aad, "evserver-enclave key v1", blob, 1 + EVS_EC_PUB_LEN, id, id_len);
    if (open_sealed(s->amk, aad, n, blob + 1 + EVS_EC_PUB_LEN, EVS_EC_PRIV_LEN, s->priv[c]) < 0)
      goto done;
  }
  status = app_install(e, id, id_len, s->priv, pubs);
  if (status == EVS_EP_OK && ret_pub) memcpy(ret_pub, pubs, sizeof pubs);

done:
  scratch_free(s);
  return status;
}
