/*
 * ec_curve.c: the two curves behind one interface. secp256k1 goes through libsecp256k1 (its ECDH
 * module, with a hash callback that returns the raw x-coordinate), prime256v1 through OpenSSL 3
 * (EC_POINT for decoding and validation, EVP_PKEY_derive for ECDH). Also the explicit-parameters
 * SPKI prefixes and the SHA-256 KDF of PROTOCOL.md §3.2.
 *
 * Point validation: both curves have cofactor 1, so a point that decodes to field elements on the
 * curve (and is not the point at infinity, which has no 33/65-byte encoding) is in the prime-order
 * group. That check happens here, when the point is decoded; EVP_PKEY_derive is then told not to
 * repeat OpenSSL's full public-key check (which would add a scalar multiplication by the order).
 */
#include <pthread.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <secp256k1.h>
#include <secp256k1_ecdh.h>

#include "ec_internal.h"

/* ---- process-wide curve handles -------------------------------------------------------------- */

static pthread_once_t curves_once = PTHREAD_ONCE_INIT;
static secp256k1_context *k1_ctx;
static EC_GROUP *p256_group;

static void curves_init(void) {
  uint8_t seed[32];
  k1_ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
  /* Randomising the context blinds libsecp256k1's scalar multiplications (side channels). */
  if (k1_ctx && (evs__ec_random(seed, sizeof seed) != EVS_EC_OK ||
                 !secp256k1_context_randomize(k1_ctx, seed))) {
    secp256k1_context_destroy(k1_ctx);
    k1_ctx = NULL;
  }
  OPENSSL_cleanse(seed, sizeof seed);
  p256_group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
}

static const secp256k1_context *k1(void) {
  pthread_once(&curves_once, curves_init);
  return k1_ctx;
}

static const EC_GROUP *p256(void) {
  pthread_once(&curves_once, curves_init);
  return p256_group;
}

/* ---- explicit-parameters SPKI prefixes ------------------------------------------------------- */

/* DER of SubjectPublicKeyInfo { AlgorithmIdentifier { id-ecPublicKey, ECParameters { version 1,
 * FieldID { prime-field, p }, Curve { a, b [, seed] }, base G (uncompressed), order n,
 * cofactor 1 } }, BIT STRING { 00, <65-byte point> } } up to the point. These are what OpenSSL
 * writes with explicit curve parameters (OPENSSL_EC_EXPLICIT_CURVE); test_ev_crypto.c checks them
 * against OpenSSL's own encoding. */
static const uint8_t spki_prefix_k1[246] = {
  0x30, 0x82, 0x01, 0x33,                                     /* SEQUENCE SPKI (307) */
  0x30, 0x81, 0xec,                                           /* SEQUENCE AlgorithmIdentifier */
  0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,       /* id-ecPublicKey */
  0x30, 0x81, 0xe0,                                           /* SEQUENCE ECParameters */
  0x02, 0x01, 0x01,                                           /* version 1 */
  0x30, 0x2c, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x01, 0x01, /* FieldID prime-field */
  0x02, 0x21, 0x00,                                           /* p */
  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xfc, 0x2f,
  0x30, 0x44,                                                 /* SEQUENCE Curve */
  0x04, 0x20,                                                 /* a = 0 */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x04, 0x20,                                                 /* b = 7 */
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07,
  0x04, 0x41, 0x04,                                           /* base G, uncompressed */
  0x79, 0xbe, 0x66, 0x7e, 0xf9, 0xdc, 0xbb, 0xac, 0x55, 0xa0, 0x62, 0x95, 0xce, 0x87, 0x0b, 0x07,
  0x02, 0x9b, 0xfc, 0xdb, 0x2d, 0xce, 0x28, 0xd9, 0x59, 0xf2, 0x81, 0x5b, 0x16, 0xf8, 0x17, 0x98,
  0x48, 0x3a, 0xda, 0x77, 0x26, 0xa3, 0xc4, 0x65, 0x5d, 0xa4, 0xfb, 0xfc, 0x0e, 0x11, 0x08, 0xa8,
  0xfd, 0x17, 0xb4, 0x48, 0xa6, 0x85, 0x54, 0x19, 0x9c, 0x47, 0xd0, 0x8f, 0xfb, 0x10, 0xd4, 0xb8,
  0x02, 0x21, 0x00,                                           /* order n */
  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
  0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
  0x02, 0x01, 0x01,                                           /* cofactor 1 */
  0x03, 0x42, 0x00,                                           /* BIT STRING, 0 unused bits */
};

static const uint8_t spki_prefix_p256[270] = {
  0x30, 0x82, 0x01, 0x4b,                                     /* SEQUENCE SPKI (331) */
  0x30, 0x82, 0x01, 0x03,                                     /* SEQUENCE AlgorithmIdentifier */
  0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,       /* id-ecPublicKey */
  0x30, 0x81, 0xf7,                                           /* SEQUENCE ECParameters */
  0x02, 0x01, 0x01,                                           /* version 1 */
  0x30, 0x2c, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x01, 0x01, /* FieldID prime-field */
  0x02, 0x21, 0x00,                                           /* p */
  0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
  0x30, 0x5b,                                                 /* SEQUENCE Curve */
  0x04, 0x20,                                                 /* a = p - 3 */
  0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc,
  0x04, 0x20,                                                 /* b */
  0x5a, 0xc6, 0x35, 0xd8, 0xaa, 0x3a, 0x93, 0xe7, 0xb3, 0xeb, 0xbd, 0x55, 0x76, 0x98, 0x86, 0xbc,
  0x65, 0x1d, 0x06, 0xb0, 0xcc, 0x53, 0xb0, 0xf6, 0x3b, 0xce, 0x3c, 0x3e, 0x27, 0xd2, 0x60, 0x4b,
  0x03, 0x15, 0x00,                                           /* seed (BIT STRING) */
  0xc4, 0x9d, 0x36, 0x08, 0x86, 0xe7, 0x04, 0x93, 0x6a, 0x66, 0x78, 0xe1, 0x13, 0x9d, 0x26, 0xb7,
  0x81, 0x9f, 0x7e, 0x90,
  0x04, 0x41, 0x04,                                           /* base G, uncompressed */
  0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2,
  0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
  0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16,
  0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
  0x02, 0x21, 0x00,                                           /* order n */
  0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
  0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
  0x02, 0x01, 0x01,                                           /* cofactor 1 */
  0x03, 0x42, 0x00,                                           /* BIT STRING, 0 unused bits */
};

const uint8_t *evs_ec_spki_prefix(evs_ec_curve curve, size_t *ret_len) {
  if (curve == EVS_EC_SECP256K1) {
    if (ret_len) *ret_len = sizeof spki_prefix_k1;
    return spki_prefix_k1;
  }
  if (curve == EVS_EC_P256) {
    if (ret_len) *ret_len = sizeof spki_prefix_p256;
    return spki_prefix_p256;
  }
  if (ret_len) *ret_len = 0;
  return NULL;
}

size_t evs_ec_spki(evs_ec_curve curve, const uint8_t eph_uncompressed[EVS_EC_PUB_UNC_LEN],
                   uint8_t *out) {
  size_t n;
  const uint8_t *prefix = evs_ec_spki_prefix(curve, &n);
  if (!prefix || !eph_uncompressed || !out) return 0;
  memcpy(out, prefix, n);
  memcpy(out + n, eph_uncompressed, EVS_EC_PUB_UNC_LEN);
  return n + EVS_EC_PUB_UNC_LEN;
}

int evs_ec_derive_key(evs_ec_curve curve, evs_ec_kdf kdf, const uint8_t z[EVS_EC_SECRET_LEN],
                      const uint8_t eph_uncompressed[EVS_EC_PUB_UNC_LEN],
                      uint8_t ret_key[EVS_EC_SECRET_LEN]) {
  static const uint8_t counter[4] = {0, 0, 0, 1};
  uint8_t spki[EVS_EC_SPKI_MAX];
  size_t spki_len;
  unsigned int mdlen = 0;
  int ok;
  if (!z || !ret_key || (curve != EVS_EC_SECP256K1 && curve != EVS_EC_P256)) return EVS_EC_EINVAL;
  if (kdf == EVS_EC_KDF_RAW) {
    memcpy(ret_key, z, EVS_EC_SECRET_LEN);
    return EVS_EC_OK;
  }
  if (kdf != EVS_EC_KDF_SHA256 || !eph_uncompressed || eph_uncompressed[0] != 0x04)
    return EVS_EC_EINVAL;
  spki_len = evs_ec_spki(curve, eph_uncompressed, spki);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!md) return EVS_EC_ENOMEM;
  uint8_t digest[EVP_MAX_MD_SIZE];
  ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) && EVP_DigestUpdate(md, z, EVS_EC_SECRET_LEN) &&
       EVP_DigestUpdate(md, counter, sizeof counter) && EVP_DigestUpdate(md, spki, spki_len) &&
       EVP_DigestFinal_ex(md, digest, &mdlen) && mdlen == EVS_EC_SECRET_LEN;
  EVP_MD_CTX_free(md);
  if (ok) memcpy(ret_key, digest, EVS_EC_SECRET_LEN);
  OPENSSL_cleanse(digest, sizeof digest);
  return ok ? EVS_EC_OK : EVS_EC_ECRYPTO;
}

/* ---- secp256k1 (libsecp256k1) ---------------------------------------------------------------- */

/* libsecp256k1's ECDH hashes the shared point by default; the Evervault scheme wants the bare
 * x-coordinate (like OpenSSL's ECDH and Node's computeSecret). */
static int k1_hash_x(unsigned char *output, const unsigned char *x32, const unsigned char *y32,
                     void *data) {
  (void)y32;
  (void)data;
  memcpy(output, x32, 32);
  return 1;
}

static int k1_decode(const uint8_t *in, size_t len, secp256k1_pubkey *pk) {
  const secp256k1_context *ctx = k1();
  if (!ctx) return EVS_EC_ECRYPTO;
  /* libsecp256k1 also parses the hybrid encodings 06/07; SEC1 keys here are 02/03 or 04 only. */
  if (!((len == EVS_EC_PUB_LEN && (in[0] == 0x02 || in[0] == 0x03)) ||
        (len == EVS_EC_PUB_UNC_LEN && in[0] == 0x04)))
    return EVS_EC_EPOINT;
  if (!secp256k1_ec_pubkey_parse(ctx, pk, in, len)) return EVS_EC_EPOINT;
  return EVS_EC_OK;
}

static int k1_serialize(const secp256k1_pubkey *pk, uint8_t *comp, uint8_t *unc) {
  const secp256k1_context *ctx = k1();
  size_t n;
  if (comp) {
    n = EVS_EC_PUB_LEN;
    if (!secp256k1_ec_pubkey_serialize(ctx, comp, &n, pk, SECP256K1_EC_COMPRESSED) ||
        n != EVS_EC_PUB_LEN)
      return EVS_EC_ECRYPTO;
  }
  if (unc) {
    n = EVS_EC_PUB_UNC_LEN;
    if (!secp256k1_ec_pubkey_serialize(ctx, unc, &n, pk, SECP256K1_EC_UNCOMPRESSED) ||
        n != EVS_EC_PUB_UNC_LEN)
      return EVS_EC_ECRYPTO;
  }
  return EVS_EC_OK;
}

/* ---- prime256v1 (OpenSSL) -------------------------------------------------------------------- */

static int p256_decode(const uint8_t *in, size_t len, uint8_t *comp, uint8_t *unc) {
  const EC_GROUP *g = p256();
  int r = EVS_EC_EPOINT;
  if (!g) return EVS_EC_ECRYPTO;
  if (!((len == EVS_EC_PUB_LEN && (in[0] == 0x02 || in[0] == 0x03)) ||
        (len == EVS_EC_PUB_UNC_LEN && in[0] == 0x04)))
    return EVS_EC_EPOINT;
  EC_POINT *pt = EC_POINT_new(g);
  BN_CTX *bn = BN_CTX_new();
  if (!pt || !bn) {
    r = EVS_EC_ENOMEM;
    goto out;
  }
  /* oct2point refuses coordinates >= p, a compressed x with no square root, and an uncompressed
   * pair off the curve; the explicit checks below keep that true whatever OpenSSL version. */
  if (!EC_POINT_oct2point(g, pt, in, len, bn)) goto out;
  if (EC_POINT_is_at_infinity(g, pt) || EC_POINT_is_on_curve(g, pt, bn) != 1) goto out;
  if (comp && EC_POINT_point2oct(g, pt, POINT_CONVERSION_COMPRESSED, comp, EVS_EC_PUB_LEN, bn) !=
                  EVS_EC_PUB_LEN) {
    r = EVS_EC_ECRYPTO;
    goto out;
  }
  if (unc && EC_POINT_point2oct(g, pt, POINT_CONVERSION_UNCOMPRESSED, unc, EVS_EC_PUB_UNC_LEN,
                                bn) != EVS_EC_PUB_UNC_LEN) {
    r = EVS_EC_ECRYPTO;
    goto out;
  }
  r = EVS_EC_OK;
out:
  EC_POINT_free(pt);
  BN_CTX_free(bn);
  return r;
}

/* An EVP_PKEY for a prime256v1 public point (already validated) or key pair. Slow (it builds
 * an EC_GROUP): for keys made once, not per ciphertext. */
static EVP_PKEY *p256_pkey(const uint8_t unc[EVS_EC_PUB_UNC_LEN], const uint8_t *priv) {
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM *params = NULL;
  EVP_PKEY_CTX *pctx = NULL;
  EVP_PKEY *pkey = NULL;
  BIGNUM *d = NULL;
  if (!bld) return NULL;
  if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, unc, EVS_EC_PUB_UNC_LEN))
    goto out;
  if (priv) {
    d = BN_secure_new();
    if (!d || !BN_bin2bn(priv, EVS_EC_PRIV_LEN, d) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d))
      goto out;
  }
  params = OSSL_PARAM_BLD_to_param(bld);
  pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  if (!params || !pctx || EVP_PKEY_fromdata_init(pctx) <= 0 ||
      EVP_PKEY_fromdata(pctx, &pkey, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) <= 0)
    pkey = NULL;
out:
  EVP_PKEY_CTX_free(pctx);
  OSSL_PARAM_free(params); /* clear-frees the secure block holding d */
  OSSL_PARAM_BLD_free(bld);
  BN_clear_free(d);
  return pkey;
}

static int p256_pub_from_priv(const uint8_t priv[EVS_EC_PRIV_LEN], uint8_t *comp, uint8_t *unc) {
  const EC_GROUP *g = p256();
  int r = EVS_EC_ECRYPTO;
  if (!g) return EVS_EC_ECRYPTO;
  BN_CTX *bn = BN_CTX_secure_new();
  BIGNUM *d = BN_secure_new();
  EC_POINT *pt = EC_POINT_new(g);
  if (!bn || !d || !pt) {
    r = EVS_EC_ENOMEM;
    goto out;
  }
  if (!BN_bin2bn(priv, EVS_EC_PRIV_LEN, d)) goto out;
  if (BN_is_zero(d) || BN_cmp(d, EC_GROUP_get0_order(g)) >= 0) {
    r = EVS_EC_EKEY;
    goto out;
  }
  BN_set_flags(d, BN_FLG_CONSTTIME);
  if (!EC_POINT_mul(g, pt, d, NULL, NULL, bn)) goto out;
  if (EC_POINT_point2oct(g, pt, POINT_CONVERSION_COMPRESSED, comp, EVS_EC_PUB_LEN, bn) !=
          EVS_EC_PUB_LEN ||
      EC_POINT_point2oct(g, pt, POINT_CONVERSION_UNCOMPRESSED, unc, EVS_EC_PUB_UNC_LEN, bn) !=
          EVS_EC_PUB_UNC_LEN)
    goto out;
  r = EVS_EC_OK;
out:
  EC_POINT_free(pt);
  BN_clear_free(d);
  BN_CTX_free(bn);
  return r;
}

/* ---- keys ------------------------------------------------------------------------------------ */

int evs_ec_key_from_private(evs_ec_curve curve, const uint8_t priv[EVS_EC_PRIV_LEN],
                            evs_ec_key **ret_key) {
  int r;
  if (!priv || !ret_key || (curve != EVS_EC_SECP256K1 && curve != EVS_EC_P256))
    return EVS_EC_EINVAL;
  evs_ec_key *k = OPENSSL_zalloc(sizeof *k);
  if (!k) return EVS_EC_ENOMEM;
  k->curve = curve;
  memcpy(k->priv, priv, EVS_EC_PRIV_LEN);
  if (curve == EVS_EC_SECP256K1) {
    const secp256k1_context *ctx = k1();
    secp256k1_pubkey pk;
    if (!ctx) {
      r = EVS_EC_ECRYPTO;
      goto fail;
    }
    if (!secp256k1_ec_seckey_verify(ctx, priv)) {
      r = EVS_EC_EKEY;
      goto fail;
    }
    if (!secp256k1_ec_pubkey_create(ctx, &pk, priv)) {
      r = EVS_EC_ECRYPTO;
      goto fail;
    }
    if ((r = k1_serialize(&pk, k->pub, k->pub_unc)) != EVS_EC_OK) goto fail;
  } else {
    if ((r = p256_pub_from_priv(priv, k->pub, k->pub_unc)) != EVS_EC_OK) goto fail;
    k->pkey = p256_pkey(k->pub_unc, priv);
    k->pub_only = p256_pkey(k->pub_unc, NULL);
    if (!k->pkey || !k->pub_only) {
      r = EVS_EC_ECRYPTO;
      goto fail;
    }
  }
  *ret_key = k;
  return EVS_EC_OK;
fail:
  evs_ec_key_free(k);
  return r;
}

int evs_ec_key_generate(evs_ec_curve curve, evs_ec_key **ret_key) {
  uint8_t d[EVS_EC_PRIV_LEN];
  int r = EVS_EC_EKEY;
  if (!ret_key || (curve != EVS_EC_SECP256K1 && curve != EVS_EC_P256)) return EVS_EC_EINVAL;
  /* Rejection sampling: a random 256-bit string is out of range with probability < 2^-32. */
  for (int tries = 0; tries < 64 && r == EVS_EC_EKEY; tries++) {
    if ((r = evs__ec_random(d, sizeof d)) != EVS_EC_OK) break;
    r = evs_ec_key_from_private(curve, d, ret_key);
  }
  OPENSSL_cleanse(d, sizeof d);
  return r;
}

void evs_ec_key_free(evs_ec_key *key) {
  if (!key) return;
  EVP_PKEY_free(key->pkey);
  EVP_PKEY_free(key->pub_only);
  OPENSSL_clear_free(key, sizeof *key);
}

evs_ec_curve evs_ec_key_curve(const evs_ec_key *key) {
  return key->curve;
}

void evs_ec_key_public(const evs_ec_key *key, uint8_t ret_pub[EVS_EC_PUB_LEN]) {
  memcpy(ret_pub, key->pub, EVS_EC_PUB_LEN);
}

void evs_ec_key_private(const evs_ec_key *key, uint8_t ret_priv[EVS_EC_PRIV_LEN]) {
  memcpy(ret_priv, key->priv, EVS_EC_PRIV_LEN);
}

/* ---- points and ECDH ------------------------------------------------------------------------- */

int evs_ec_point_decode(evs_ec_curve curve, const uint8_t *in, size_t len,
                        uint8_t ret_compressed[EVS_EC_PUB_LEN],
                        uint8_t ret_uncompressed[EVS_EC_PUB_UNC_LEN]) {
  if (!in && len) return EVS_EC_EINVAL;
  if (len != EVS_EC_PUB_LEN && len != EVS_EC_PUB_UNC_LEN) return EVS_EC_EPOINT;
  if (curve == EVS_EC_SECP256K1) {
    secp256k1_pubkey pk;
    int r = k1_decode(in, len, &pk);
    return r ? r : k1_serialize(&pk, ret_compressed, ret_uncompressed);
  }
  if (curve == EVS_EC_P256) return p256_decode(in, len, ret_compressed, ret_uncompressed);
  return EVS_EC_EINVAL;
}

/* ECDH on prime256v1 through EVP_PKEY_derive. The peer key is a duplicate of the app's public
 * key with the (already validated) point swapped in: cheaper than building one from parameters
 * (which creates a new EC_GROUP each time), and a kept derive context saves a provider lookup. */
static int p256_derive(const evs_ec_key *key, EVP_PKEY_CTX **keep,
                       const uint8_t unc[EVS_EC_PUB_UNC_LEN], uint8_t z[EVS_EC_SECRET_LEN]) {
  int r = EVS_EC_ECRYPTO;
  size_t zlen = EVS_EC_SECRET_LEN;
  EVP_PKEY_CTX *ctx = keep ? *keep : NULL;
  EVP_PKEY *peer = EVP_PKEY_dup(key->pub_only);
  if (!peer || EVP_PKEY_set1_encoded_public_key(peer, unc, EVS_EC_PUB_UNC_LEN) != 1) goto out;
  if (!ctx) {
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->pkey, NULL);
    if (!ctx || EVP_PKEY_derive_init(ctx) <= 0) {
      EVP_PKEY_CTX_free(ctx);
      ctx = NULL;
      goto out;
    }
    if (keep) *keep = ctx;
  }
  /* validate_peer = 0: the point was validated when decoded (cofactor 1, see the top). */
  if (EVP_PKEY_derive_set_peer_ex(ctx, peer, 0) > 0 && EVP_PKEY_derive(ctx, z, &zlen) > 0 &&
      zlen == EVS_EC_SECRET_LEN)
    r = EVS_EC_OK;
out:
  if (!keep) EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(peer);
  return r;
}

int evs__ec_ecdh_unc(const evs_ec_key *key, EVP_PKEY_CTX **derive_ctx, const uint8_t *peer,
                     size_t peer_len, uint8_t ret_z[EVS_EC_SECRET_LEN],
                     uint8_t ret_unc[EVS_EC_PUB_UNC_LEN]) {
  uint8_t unc[EVS_EC_PUB_UNC_LEN], z[EVS_EC_SECRET_LEN];
  int r;
  if (!key || !ret_z || (!peer && peer_len)) return EVS_EC_EINVAL;
  if (peer_len != EVS_EC_PUB_LEN && peer_len != EVS_EC_PUB_UNC_LEN) return EVS_EC_EPOINT;
  if (key->curve == EVS_EC_SECP256K1) {
    secp256k1_pubkey pk;
    if ((r = k1_decode(peer, peer_len, &pk)) != EVS_EC_OK) return r;
    if (ret_unc && (r = k1_serialize(&pk, NULL, unc)) != EVS_EC_OK) return r;
    if (!secp256k1_ecdh(k1(), z, &pk, key->priv, k1_hash_x, NULL)) r = EVS_EC_ECRYPTO;
  } else {
    if ((r = p256_decode(peer, peer_len, NULL, unc)) != EVS_EC_OK) return r;
    r = p256_derive(key, derive_ctx, unc, z);
  }
  if (r == EVS_EC_OK) {
    memcpy(ret_z, z, EVS_EC_SECRET_LEN);
    if (ret_unc) memcpy(ret_unc, unc, EVS_EC_PUB_UNC_LEN);
  }
  OPENSSL_cleanse(z, sizeof z);
  return r;
}

int evs_ec_ecdh(const evs_ec_key *priv, const uint8_t *peer, size_t peer_len,
                uint8_t ret_z[EVS_EC_SECRET_LEN]) {
  return evs__ec_ecdh_unc(priv, NULL, peer, peer_len, ret_z, NULL);
}
