/*
 * ec_internal.h: what the files of enclave/crypto share and nobody else uses: the key object's
 * layout, the process-wide curve and cipher handles, AES-GCM helpers, the IV pool, SipHash and
 * the Shamir field arithmetic (exported for the known-answer tests only).
 */
#ifndef EVS_EC_INTERNAL_H
#define EVS_EC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "evs_crypto.h"

struct evs_ec_key {
  evs_ec_curve curve;
  uint8_t priv[EVS_EC_PRIV_LEN];
  uint8_t pub[EVS_EC_PUB_LEN];
  uint8_t pub_unc[EVS_EC_PUB_UNC_LEN];
  EVP_PKEY *pkey;     /* prime256v1: the key pair for EVP_PKEY_derive; NULL for secp256k1 */
  EVP_PKEY *pub_only; /* prime256v1: the public key alone, duplicated to make peer keys */
};

/* The fetched AES-256-GCM implementation, fetched once per process; NULL if OpenSSL has none. */
EVP_CIPHER *evs__ec_aes_gcm(void);

/* ECDH of key with a peer given compressed or uncompressed: validates the point, returns Z and
 * (optionally) the peer's uncompressed encoding for the KDF. derive_ctx (may be NULL) keeps a
 * prime256v1 EVP_PKEY_CTX, initialised for key, across calls; the caller frees it with
 * EVP_PKEY_CTX_free and must pass it only with the same key. */
int evs__ec_ecdh_unc(const evs_ec_key *key, EVP_PKEY_CTX **derive_ctx, const uint8_t *peer,
                     size_t peer_len, uint8_t ret_z[EVS_EC_SECRET_LEN],
                     uint8_t ret_unc[EVS_EC_PUB_UNC_LEN]);

/* Random bytes from OpenSSL's DRBG; EVS_EC_ERANDOM on failure. */
int evs__ec_random(uint8_t *out, size_t len);

/* AES-256-GCM with a context keyed once and reused with a new IV per message. *pctx is created
 * on first use; encrypt selects the direction. */
int evs__ec_gcm_key(EVP_CIPHER_CTX **pctx, int encrypt, const uint8_t key[EVS_EC_SECRET_LEN]);
/* Encrypts p1 || p2 (either may be empty) to out (l1 + l2 bytes) and the tag to tag. */
int evs__ec_gcm_seal(EVP_CIPHER_CTX *ctx, const uint8_t iv[EVS_EC_IV_LEN], const uint8_t *aad,
                     size_t aad_len, const uint8_t *p1, size_t l1, const uint8_t *p2, size_t l2,
                     uint8_t *out, uint8_t tag[EVS_EC_TAG_LEN]);
/* Decrypts ct (len bytes; out may equal ct) and checks tag: EVS_EC_OK or EVS_EC_EAUTH. */
int evs__ec_gcm_open(EVP_CIPHER_CTX *ctx, const uint8_t iv[EVS_EC_IV_LEN], const uint8_t *aad,
                     size_t aad_len, const uint8_t *ct, size_t len,
                     const uint8_t tag[EVS_EC_TAG_LEN], uint8_t *out);

/* The IV pool: random bytes bought from RAND_bytes a page at a time, handed out 12 at a time.
 * The page is MADV_WIPEONFORK and the fork generation is checked too, so a child refills. */
typedef struct evs__ec_ivpool {
  struct evs__ec_ivpage *page;
} evs__ec_ivpool;
int evs__ec_ivpool_init(evs__ec_ivpool *pool);
int evs__ec_ivpool_get(evs__ec_ivpool *pool, uint8_t iv[EVS_EC_IV_LEN]);
void evs__ec_ivpool_done(evs__ec_ivpool *pool);

/* SipHash-2-4 (Aumasson and Bernstein), for the decryptor's hash table: its keys are ephemeral
 * keys chosen by whoever sends ciphertexts, so the bucket index must be keyed. */
uint64_t evs__ec_siphash(const uint8_t key[16], const uint8_t *in, size_t len);

/* Version facts. */
evs_ec_curve evs__ec_version_curve(evs_ec_version v);
int evs__ec_version_has_role(evs_ec_version v);
/* The derivation the SDK uses for a version "normally" (table of §3.1). */
evs_ec_kdf evs__ec_version_kdf(evs_ec_version v);
/* The 4-character tag of a string version. */
const char *evs__ec_version_tag(evs_ec_version v);
/* Parses an ev: string; with validate_ct the ciphertext's base64 is checked too (else the caller
 * decodes it and reports EVS_EC_EBASE64 itself). */
int evs__ec_parse(const char *s, size_t len, evs_ec_parsed *ret, int validate_ct);
/* Length and validity of a base64 field without decoding it. */
int evs__ec_b64_check(const char *in, size_t len, size_t *ret_len);
/* Decodes base64 that evs__ec_b64_check accepted into out (room for its ret_len); returns the
 * length. Unchecked input is undefined. */
size_t evs__ec_b64_decode_valid(const char *in, size_t len, uint8_t *out);

/* CRC-32 (IEEE, as zlib). */
uint32_t evs__ec_crc32(const uint8_t *in, size_t len);

/* GF(2^8) with the AES polynomial, constant-time (exported for tests). */
uint8_t evs__shamir_gf_mul(uint8_t a, uint8_t b);
uint8_t evs__shamir_gf_inv(uint8_t a);

#endif /* EVS_EC_INTERNAL_H */
