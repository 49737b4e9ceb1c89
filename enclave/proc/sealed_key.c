/* sealed_key.c: private keys sealed for the store (enclave.h, evs__seal_key). */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "enclave.h"

#define KEY_DER_MAX 512   /* SEC1 DER: a P-256 key is 121 bytes, a P-384 key 167 */
#define LABEL_MAX 64

/* AAD = label || SHA-256(SubjectPublicKeyInfo DER). */
static int key_aad(const char *label, size_t label_len, EVP_PKEY *pub, uint8_t *aad) {
  uint8_t *der = NULL;
  int n = i2d_PUBKEY(pub, &der);
  unsigned int hl = 0;
  int ok = n > 0 && EVP_Digest(der, (size_t)n, aad + label_len, &hl, EVP_sha256(), NULL) == 1;
  OPENSSL_free(der);
  memcpy(aad, label, label_len);
  return ok && hl == 32 ? 0 : -1;
}

int evs__seal_key(const evs_enclave *e, const uint8_t magic[4], const char *label,
                  size_t label_len, EVP_PKEY *key, uint8_t **ret, size_t *ret_len) {
  int der_len = i2d_PrivateKey(key, NULL);
  if (label_len > LABEL_MAX || der_len <= 0 || der_len > KEY_DER_MAX) return -1;
  uint8_t *der = OPENSSL_secure_malloc((size_t)der_len), *p = der;
  uint8_t aad[LABEL_MAX + 32];
  size_t sealed_len = 4 + (size_t)der_len + EVS_SEAL_OVERHEAD;
  uint8_t *sealed = NULL;
  int r = -1;
  if (der && i2d_PrivateKey(key, &p) == der_len && key_aad(label, label_len, key, aad) == 0 &&
      (sealed = malloc(sealed_len))) {
    memcpy(sealed, magic, 4);
    if (evs__enclave_seal(e, aad, label_len + 32, der, (size_t)der_len, sealed + 4) == 0) {
      *ret = sealed;
      *ret_len = sealed_len;
      sealed = NULL;
      r = 0;
    }
  }
  if (der) OPENSSL_secure_clear_free(der, (size_t)der_len);
  free(sealed);
  return r;
}

EVP_PKEY *evs__unseal_key(const evs_enclave *e, const uint8_t magic[4], const char *label,
                          size_t label_len, EVP_PKEY *pub, const uint8_t *sealed,
                          size_t sealed_len) {
  if (!pub || label_len > LABEL_MAX || sealed_len < 4 + EVS_SEAL_OVERHEAD + 1 ||
      sealed_len > 4 + EVS_SEAL_OVERHEAD + KEY_DER_MAX || memcmp(sealed, magic, 4) != 0)
    return NULL;
  size_t der_len = sealed_len - 4 - EVS_SEAL_OVERHEAD;
  uint8_t *der = OPENSSL_secure_malloc(der_len);
  uint8_t aad[LABEL_MAX + 32];
  EVP_PKEY *key = NULL;
  if (der && key_aad(label, label_len, pub, aad) == 0 &&
      evs__enclave_unseal(e, aad, label_len + 32, sealed + 4, der_len, der) == 0) {
    const uint8_t *p = der;
    key = d2i_PrivateKey(EVP_PKEY_EC, NULL, &p, (long)der_len);
    /* The key must be the certificate's (the AAD binds the blob to it; this checks the pair). */
    if (key && (p != der + der_len || EVP_PKEY_eq(key, pub) != 1)) {
      EVP_PKEY_free(key);
      key = NULL;
    }
  }
  if (der) OPENSSL_secure_clear_free(der, der_len);
  return key;
}

void evs__key_cache_free(evs_key_cache *c) {
  if (!c) return;
  X509_free(c->cert);
  EVP_PKEY_free(c->key);
  OPENSSL_clear_free(c, sizeof *c);
}

evs_key_cache *evs__key_cache_open(evs_key_cache **slot, const evs_enclave *e,
                                   const uint8_t magic[4], const char *label, size_t label_len,
                                   const uint8_t *cert, size_t cert_len,
                                   X509 *(*parse)(const uint8_t *, size_t),
                                   const uint8_t *sealed, size_t sealed_len) {
  uint8_t id[32];
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
           EVP_DigestUpdate(md, cert, cert_len) == 1 && EVP_DigestUpdate(md, "\0", 1) == 1 &&
           EVP_DigestUpdate(md, sealed, sealed_len) == 1 &&
           EVP_DigestFinal_ex(md, id, NULL) == 1;
  EVP_MD_CTX_free(md);
  if (!ok) return NULL;
  if (*slot && CRYPTO_memcmp((*slot)->id, id, 32) == 0) return *slot;
  X509 *x = parse(cert, cert_len);
  EVP_PKEY *key = x ? evs__unseal_key(e, magic, label, label_len, X509_get0_pubkey(x), sealed,
                                      sealed_len)
                    : NULL;
  evs_key_cache *c = key ? OPENSSL_zalloc(sizeof *c) : NULL;
  if (!c) {
    EVP_PKEY_free(key);
    X509_free(x);
    return NULL;
  }
  memcpy(c->id, id, 32);
  c->cert = x;
  c->key = key;
  evs__key_cache_free(*slot);
  *slot = c;
  return c;
}
