/*
 * ec_util.c: the small shared pieces of enclave/crypto: status names, the process-wide AES-GCM
 * handle and the GCM helpers every encrypt and decrypt path goes through, random bytes, CRC-32
 * and SipHash.
 */
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <zlib.h>

#include "ec_internal.h"

static const struct {
  int status;
  const char *name;
  const char *text;
} statuses[] = {
  {EVS_EC_OK, "ok", "success"},
  {EVS_EC_EINVAL, "invalid-argument", "invalid argument"},
  {EVS_EC_ENOMEM, "no-memory", "out of memory"},
  {EVS_EC_ESPACE, "no-space", "output buffer too small"},
  {EVS_EC_EFORMAT, "format", "malformed encrypted data"},
  {EVS_EC_EVERSION, "version", "unknown encryption version"},
  {EVS_EC_ETYPE, "datatype", "unknown datatype tag"},
  {EVS_EC_EBASE64, "base64", "invalid base64"},
  {EVS_EC_EPOINT, "invalid-point", "invalid elliptic curve point"},
  {EVS_EC_ENOKEY, "no-key", "no key for this curve"},
  {EVS_EC_EAUTH, "auth", "authentication failed"},
  {EVS_EC_ECRC, "crc", "CRC-32 mismatch"},
  {EVS_EC_ETOOBIG, "too-big", "data too large"},
  {EVS_EC_EROLE, "role", "invalid data role"},
  {EVS_EC_EMETADATA, "metadata", "malformed metadata"},
  {EVS_EC_EKEY, "invalid-key", "invalid private key"},
  {EVS_EC_ERANDOM, "random", "random number generator failure"},
  {EVS_EC_ECRYPTO, "crypto", "cryptographic library failure"},
  {EVS_EC_ESHARES, "shares", "invalid or insufficient key shares"},
  {EVS_EC_EROLEFILE, "role-file", "data roles are not supported for files"},
};

const char *evs_ec_strerror(int status) {
  for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
    if (statuses[i].status == status) return statuses[i].text;
  return "unknown error";
}

const char *evs_ec_status_name(int status) {
  for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
    if (statuses[i].status == status) return statuses[i].name;
  return "unknown";
}

/* ---- AES-256-GCM ----------------------------------------------------------------------------- */

static pthread_once_t gcm_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *gcm_cipher;

static void gcm_fetch(void) {
  gcm_cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

EVP_CIPHER *evs__ec_aes_gcm(void) {
  pthread_once(&gcm_once, gcm_fetch);
  return gcm_cipher;
}

int evs__ec_gcm_key(EVP_CIPHER_CTX **pctx, int encrypt, const uint8_t key[EVS_EC_SECRET_LEN]) {
  EVP_CIPHER *c = evs__ec_aes_gcm();
  if (!c) return EVS_EC_ECRYPTO;
  if (!*pctx && !(*pctx = EVP_CIPHER_CTX_new())) return EVS_EC_ENOMEM;
  if (!EVP_CipherInit_ex(*pctx, c, NULL, key, NULL, encrypt ? 1 : 0)) {
    EVP_CIPHER_CTX_reset(*pctx);
    return EVS_EC_ECRYPTO;
  }
  return EVS_EC_OK;
}

int evs__ec_gcm_seal(EVP_CIPHER_CTX *ctx, const uint8_t iv[EVS_EC_IV_LEN], const uint8_t *aad,
                     size_t aad_len, const uint8_t *p1, size_t l1, const uint8_t *p2, size_t l2,
                     uint8_t *out, uint8_t tag[EVS_EC_TAG_LEN]) {
  int n;
  if (l1 > INT_MAX || l2 > INT_MAX || aad_len > INT_MAX) return EVS_EC_ETOOBIG;
  if (!EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv)) return EVS_EC_ECRYPTO;
  if (aad_len && !EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len)) return EVS_EC_ECRYPTO;
  if (l1 && !EVP_EncryptUpdate(ctx, out, &n, p1, (int)l1)) return EVS_EC_ECRYPTO;
  if (l2 && !EVP_EncryptUpdate(ctx, out + l1, &n, p2, (int)l2)) return EVS_EC_ECRYPTO;
  if (!EVP_EncryptFinal_ex(ctx, out + l1 + l2, &n)) return EVS_EC_ECRYPTO;
  if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, EVS_EC_TAG_LEN, tag)) return EVS_EC_ECRYPTO;
  return EVS_EC_OK;
}

int evs__ec_gcm_open(EVP_CIPHER_CTX *ctx, const uint8_t iv[EVS_EC_IV_LEN], const uint8_t *aad,
                     size_t aad_len, const uint8_t *ct, size_t len,
                     const uint8_t tag[EVS_EC_TAG_LEN], uint8_t *out) {
  int n;
  if (len > INT_MAX || aad_len > INT_MAX) return EVS_EC_ETOOBIG;
  if (!EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, iv)) return EVS_EC_ECRYPTO;
  if (aad_len && !EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len)) return EVS_EC_ECRYPTO;
  if (len && !EVP_DecryptUpdate(ctx, out, &n, ct, (int)len)) return EVS_EC_ECRYPTO;
  if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, EVS_EC_TAG_LEN, (void *)tag))
    return EVS_EC_ECRYPTO;
  /* The tag comparison inside OpenSSL is constant-time (CRYPTO_memcmp). */
  if (EVP_DecryptFinal_ex(ctx, out + len, &n) <= 0) return EVS_EC_EAUTH;
  return EVS_EC_OK;
}

/* ---- random, CRC-32 -------------------------------------------------------------------------- */

int evs__ec_random(uint8_t *out, size_t len) {
  while (len) {
    int chunk = len > (1u << 20) ? (1 << 20) : (int)len;
    if (RAND_bytes(out, chunk) != 1) return EVS_EC_ERANDOM;
    out += chunk;
    len -= (size_t)chunk;
  }
  return EVS_EC_OK;
}

uint32_t evs__ec_crc32(const uint8_t *in, size_t len) {
  return (uint32_t)crc32_z(0L, in, len);
}

/* ---- SipHash-2-4 ----------------------------------------------------------------------------- */

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static uint64_t load64_le(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

#define SIPROUND                                                                                  \
  do {                                                                                            \
    v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);                                 \
    v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                                                      \
    v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                                                      \
    v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);                                 \
  } while (0)

uint64_t evs__ec_siphash(const uint8_t key[16], const uint8_t *in, size_t len) {
  uint64_t k0 = load64_le(key), k1 = load64_le(key + 8);
  uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t m = load64_le(in + i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (size_t j = 0; i + j < len; j++) b |= (uint64_t)in[i + j] << (8 * j);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}
