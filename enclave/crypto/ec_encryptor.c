/*
 * ec_encryptor.c: encryption to an app public key, as the SDKs do it (PROTOCOL.md §3-§4).
 *
 * Like the SDK, an encryptor keeps one ephemeral key pair for a window (15 s by default) and
 * encrypts every value of that window under the same derived AES key with a fresh random IV.
 * The ephemeral private key lives only for the moment of the key derivation at the start of a
 * window; what stays is the keyed AES-GCM context(s) (one per derivation in use: secp256k1 AUTO
 * needs raw ECDH for RFVC/files and the KDF for S0lS), wiped when the window ends. A window also
 * ends after max_uses values (2^28 by default), far below the 2^32 random-IV limit of GCM.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "ec_internal.h"

#define DEFAULT_WINDOW_MS 15000u
#define DEFAULT_MAX_USES ((uint64_t)1 << 28)
/* Longest value accepted: GCM lengths go through int in OpenSSL's EVP interface. */
#define MAX_VALUE_LEN ((size_t)1 << 30)
/* Metadata: fixmap, "dr" + fixstr role, "eo" + uint (<= 9 bytes), "et" + uint32. */
#define META_MAX(rl) (1 + 3 + 1 + (rl) + 3 + 9 + 3 + 5)

struct evs_ec_encryptor {
  evs_ec_encryptor_config cfg;
  int have_window;
  uint64_t window_start;
  uint64_t uses;
  uint64_t generations;
  uint8_t eph[EVS_EC_PUB_LEN];
  char eph_b64[EVS_EC_B64_LEN(EVS_EC_PUB_LEN)];
  EVP_CIPHER_CTX *gcm[2]; /* indexed by evs_ec_kdf */
  int keyed[2];
  evs__ec_ivpool ivs;
};

/* Read per value. The coarse clocks (a few ms' resolution, from the vDSO without reading the
 * TSC) serve a window of seconds and metadata in whole seconds. */
static uint64_t default_monotonic_ms(void *arg) {
  struct timespec ts;
  (void)arg;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t default_unix_seconds(void *arg) {
  struct timespec ts;
  (void)arg;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return (uint64_t)ts.tv_sec;
}

void evs_ec_encryptor_config_init(evs_ec_encryptor_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->curve = EVS_EC_SECP256K1;
  cfg->window_ms = DEFAULT_WINDOW_MS;
  cfg->max_uses = DEFAULT_MAX_USES;
  cfg->origin = EVS_EC_ORIGIN_NODE_SDK;
  cfg->k1_derivation = EVS_EC_K1_AUTO;
}

int evs_ec_encryptor_new(const evs_ec_encryptor_config *cfg, evs_ec_encryptor **ret) {
  uint8_t comp[EVS_EC_PUB_LEN];
  int r;
  if (!cfg || !ret || (cfg->curve != EVS_EC_SECP256K1 && cfg->curve != EVS_EC_P256) ||
      (unsigned)cfg->k1_derivation > EVS_EC_K1_SHA256)
    return EVS_EC_EINVAL;
  if ((r = evs_ec_point_decode(cfg->curve, cfg->app_public_key, EVS_EC_PUB_LEN, comp, NULL)) !=
      EVS_EC_OK)
    return r;
  if (!evs__ec_aes_gcm()) return EVS_EC_ECRYPTO;
  evs_ec_encryptor *e = OPENSSL_zalloc(sizeof *e);
  if (!e) return EVS_EC_ENOMEM;
  e->cfg = *cfg;
  if (!e->cfg.window_ms) e->cfg.window_ms = DEFAULT_WINDOW_MS;
  if (!e->cfg.max_uses) e->cfg.max_uses = DEFAULT_MAX_USES;
  if (!e->cfg.clock.monotonic_ms) e->cfg.clock.monotonic_ms = default_monotonic_ms;
  if (!e->cfg.clock.unix_seconds) e->cfg.clock.unix_seconds = default_unix_seconds;
  if ((r = evs__ec_ivpool_init(&e->ivs)) != EVS_EC_OK) {
    OPENSSL_free(e);
    return r;
  }
  *ret = e;
  return EVS_EC_OK;
}

static void end_window(evs_ec_encryptor *e) {
  for (int i = 0; i < 2; i++) {
    /* Resetting frees OpenSSL's GCM state, which cleanses the key schedule. */
    if (e->gcm[i]) EVP_CIPHER_CTX_reset(e->gcm[i]);
    e->keyed[i] = 0;
  }
  e->have_window = 0;
}

void evs_ec_encryptor_free(evs_ec_encryptor *e) {
  if (!e) return;
  end_window(e);
  for (int i = 0; i < 2; i++) EVP_CIPHER_CTX_free(e->gcm[i]);
  evs__ec_ivpool_done(&e->ivs);
  OPENSSL_clear_free(e, sizeof *e);
}

void evs_ec_encryptor_rotate(evs_ec_encryptor *e) {
  if (e) end_window(e);
}

int evs_ec_encryptor_ephemeral(const evs_ec_encryptor *e, uint8_t ret_pub[EVS_EC_PUB_LEN]) {
  if (!e || !ret_pub || !e->have_window) return EVS_EC_EINVAL;
  memcpy(ret_pub, e->eph, EVS_EC_PUB_LEN);
  return EVS_EC_OK;
}

uint64_t evs_ec_encryptor_generations(const evs_ec_encryptor *e) {
  return e ? e->generations : 0;
}

/* Which derivation(s) the window needs: bit 1 << kdf. */
static unsigned window_kdfs(const evs_ec_encryptor *e) {
  if (e->cfg.curve == EVS_EC_P256) return 1u << EVS_EC_KDF_SHA256;
  switch (e->cfg.k1_derivation) {
    case EVS_EC_K1_RAW: return 1u << EVS_EC_KDF_RAW;
    case EVS_EC_K1_SHA256: return 1u << EVS_EC_KDF_SHA256;
    default: return 1u << EVS_EC_KDF_RAW | 1u << EVS_EC_KDF_SHA256;
  }
}

static evs_ec_kdf kdf_for(const evs_ec_encryptor *e, evs_ec_version v) {
  if (e->cfg.curve == EVS_EC_SECP256K1 && e->cfg.k1_derivation == EVS_EC_K1_RAW)
    return EVS_EC_KDF_RAW;
  if (e->cfg.curve == EVS_EC_SECP256K1 && e->cfg.k1_derivation == EVS_EC_K1_SHA256)
    return EVS_EC_KDF_SHA256;
  return evs__ec_version_kdf(v);
}

static int new_window(evs_ec_encryptor *e, uint64_t now) {
  evs_ec_key *eph = NULL;
  uint8_t z[EVS_EC_SECRET_LEN], key[EVS_EC_SECRET_LEN];
  unsigned need = window_kdfs(e);
  int r;
  end_window(e);
  if ((r = evs_ec_key_generate(e->cfg.curve, &eph)) != EVS_EC_OK) return r;
  r = evs__ec_ecdh_unc(eph, NULL, e->cfg.app_public_key, EVS_EC_PUB_LEN, z, NULL);
  for (int k = 0; r == EVS_EC_OK && k < 2; k++) {
    if (!(need & 1u << k)) continue;
    r = evs_ec_derive_key(e->cfg.curve, (evs_ec_kdf)k, z, eph->pub_unc, key);
    if (r == EVS_EC_OK) r = evs__ec_gcm_key(&e->gcm[k], 1, key);
    if (r == EVS_EC_OK) e->keyed[k] = 1;
  }
  if (r == EVS_EC_OK) {
    memcpy(e->eph, eph->pub, EVS_EC_PUB_LEN);
    evs_ec_b64_encode(e->eph, EVS_EC_PUB_LEN, e->eph_b64);
    e->window_start = now;
    e->uses = 0;
    e->generations++;
    e->have_window = 1;
  } else {
    end_window(e);
  }
  OPENSSL_cleanse(z, sizeof z);
  OPENSSL_cleanse(key, sizeof key);
  evs_ec_key_free(eph);
  return r;
}

static int ensure_window(evs_ec_encryptor *e) {
  uint64_t now = e->cfg.clock.monotonic_ms(e->cfg.clock.arg);
  /* A clock that goes backwards (an injected one) also ends the window. */
  if (e->have_window && now >= e->window_start && now - e->window_start < e->cfg.window_ms &&
      e->uses < e->cfg.max_uses)
    return EVS_EC_OK;
  return new_window(e, now);
}

size_t evs_ec_encrypt_bound(size_t len, size_t role_len) {
  if (len > MAX_VALUE_LEN || role_len > EVS_EC_ROLE_MAX) return 0;
  size_t pt = len + (role_len ? 2 + META_MAX(role_len) : 0);
  /* "ev:" VER ":boolean" ":" iv ":" eph ":" ct ":$" NUL */
  return 3 + 4 + 8 + 1 + EVS_EC_B64_LEN(EVS_EC_IV_LEN) + 1 + EVS_EC_B64_LEN(EVS_EC_PUB_LEN) + 1 +
         EVS_EC_B64_LEN(pt + EVS_EC_TAG_LEN) + 2 + 1;
}

int evs_ec_encrypt(evs_ec_encryptor *e, evs_ec_type type, const uint8_t *data, size_t len,
                   const char *role, char *out, size_t cap, size_t *ret_len) {
  uint8_t iv[EVS_EC_IV_LEN], aad[EVS_EC_AAD_MAX], prefix[2 + META_MAX(EVS_EC_ROLE_MAX)];
  uint8_t stackbuf[1024], *ct;
  size_t aad_len, prefix_len = 0, rl = 0;
  int r;
  if (!e || !out || !ret_len || (!data && len) || (unsigned)type > EVS_EC_BOOLEAN)
    return EVS_EC_EINVAL;
  if (role) {
    rl = strnlen(role, EVS_EC_ROLE_MAX + 1);
    if (!evs_ec_role_valid(role, rl)) return EVS_EC_EROLE;
  }
  size_t need = evs_ec_encrypt_bound(len, rl);
  if (!need) return EVS_EC_ETOOBIG;
  if (cap < need) return EVS_EC_ESPACE;
  if ((r = ensure_window(e)) != EVS_EC_OK) return r;

  evs_ec_version v = e->cfg.curve == EVS_EC_SECP256K1 ? (role ? EVS_EC_S0LS : EVS_EC_RFVC)
                                                     : (role ? EVS_EC_QKTC : EVS_EC_TK9D);
  evs_ec_kdf kdf = kdf_for(e, v);
  if (role) {
    uint64_t now = e->cfg.clock.unix_seconds(e->cfg.clock.arg);
    int ml = evs_ec_metadata_encode(role, e->cfg.origin, (uint32_t)now, prefix + 2);
    if (ml < 0) return ml;
    prefix[0] = (uint8_t)ml;
    prefix[1] = (uint8_t)(ml >> 8);
    prefix_len = 2 + (size_t)ml;
  }
  if ((r = evs_ec_aad(v, type, e->eph, e->cfg.app_public_key, aad, &aad_len)) != EVS_EC_OK)
    return r;
  if ((r = evs__ec_ivpool_get(&e->ivs, iv)) != EVS_EC_OK) return r;

  size_t ct_len = prefix_len + len + EVS_EC_TAG_LEN;
  ct = ct_len <= sizeof stackbuf ? stackbuf : malloc(ct_len);
  if (!ct) return EVS_EC_ENOMEM;
  r = evs__ec_gcm_seal(e->gcm[kdf], iv, aad, aad_len, prefix, prefix_len, data, len, ct,
                       ct + ct_len - EVS_EC_TAG_LEN);
  if (r == EVS_EC_OK) {
    e->uses++;
    char *o = out;
    memcpy(o, "ev:", 3);
    memcpy(o + 3, evs__ec_version_tag(v), 4);
    o += 7;
    if (type == EVS_EC_NUMBER) {
      memcpy(o, ":number", 7);
      o += 7;
    } else if (type == EVS_EC_BOOLEAN) {
      memcpy(o, ":boolean", 8);
      o += 8;
    }
    *o++ = ':';
    o += evs_ec_b64_encode(iv, EVS_EC_IV_LEN, o);
    *o++ = ':';
    memcpy(o, e->eph_b64, sizeof e->eph_b64);
    o += sizeof e->eph_b64;
    *o++ = ':';
    o += evs_ec_b64_encode(ct, ct_len, o);
    memcpy(o, ":$", 3);
    *ret_len = (size_t)(o + 2 - out);
  }
  /* ct holds ciphertext only: nothing to wipe. */
  if (ct != stackbuf) free(ct);
  return r;
}

int evs_ec_encrypt_file(evs_ec_encryptor *e, const uint8_t *data, size_t len, uint8_t *out,
                        size_t cap, size_t *ret_len) {
  uint8_t iv[EVS_EC_IV_LEN], aad[EVS_EC_AAD_MAX];
  size_t aad_len;
  int r;
  if (!e || !out || !ret_len || (!data && len)) return EVS_EC_EINVAL;
  if (len > EVS_EC_FILE_MAX_PLAINTEXT) return EVS_EC_ETOOBIG;
  if (cap < len + EVS_EC_FILE_OVERHEAD) return EVS_EC_ESPACE;
  if ((r = ensure_window(e)) != EVS_EC_OK) return r;
  evs_ec_version v = e->cfg.curve == EVS_EC_SECP256K1 ? EVS_EC_FILE_V2 : EVS_EC_FILE_V3;
  evs_ec_kdf kdf = kdf_for(e, v);
  if ((r = evs_ec_aad(v, EVS_EC_STRING, e->eph, e->cfg.app_public_key, aad, &aad_len)) !=
      EVS_EC_OK)
    return r;
  if ((r = evs__ec_ivpool_get(&e->ivs, iv)) != EVS_EC_OK) return r;
  memcpy(out, "%EVENC", 6);
  out[6] = v == EVS_EC_FILE_V2 ? 0x02 : 0x03;
  out[7] = EVS_EC_FILE_HEADER_LEN; /* offset, u16 little-endian */
  out[8] = 0;
  memcpy(out + 9, e->eph, EVS_EC_PUB_LEN);
  memcpy(out + 42, iv, EVS_EC_IV_LEN);
  out[54] = 0; /* flags */
  r = evs__ec_gcm_seal(e->gcm[kdf], iv, aad, aad_len, data, len, NULL, 0,
                       out + EVS_EC_FILE_HEADER_LEN, out + EVS_EC_FILE_HEADER_LEN + len);
  if (r != EVS_EC_OK) return r;
  e->uses++;
  size_t body = EVS_EC_FILE_HEADER_LEN + len + EVS_EC_TAG_LEN;
  uint32_t crc = evs__ec_crc32(out, body);
  for (int i = 0; i < 4; i++) out[body + (size_t)i] = (uint8_t)(crc >> (8 * i));
  *ret_len = body + 4;
  return EVS_EC_OK;
}

int evs_ec_encrypt_batch(evs_ec_encryptor *e, evs_ec_encrypt_field *fields, size_t n,
                         char *arena, size_t cap) {
  size_t used = 0;
  int done = 0;
  if (!e || (!fields && n) || (!arena && cap) || n > (size_t)INT32_MAX) return EVS_EC_EINVAL;
  for (size_t i = 0; i < n; i++) {
    evs_ec_encrypt_field *f = &fields[i];
    f->out = NULL;
    f->out_len = 0;
    f->status = evs_ec_encrypt(e, f->type, f->data, f->len, f->role, arena ? arena + used : NULL,
                               cap - used, &f->out_len);
    if (f->status == EVS_EC_OK) {
      f->out = arena + used;
      used += f->out_len + 1;
      done++;
    }
  }
  return done;
}
