/*
 * ec_shamir.c: Shamir's Secret Sharing over GF(2^8) for the 32-byte App Master Key (the docs:
 * three shares, all three needed). Each secret byte is the constant term of its own random
 * polynomial of degree k-1; share i is the value of every polynomial at x = i. Reconstruction is
 * Lagrange interpolation at x = 0.
 *
 * Constant time: the field arithmetic uses no tables (log/exp tables indexed by secret bytes leak
 * through the cache) and no branches on data: multiplication is shift-and-add with masks, and
 * inversion (needed only for the public x coordinates, but written the same way) is a^254 by a
 * fixed chain of multiplications.
 */
#include <string.h>

#include <openssl/crypto.h>

#include "ec_internal.h"

uint8_t evs__shamir_gf_mul(uint8_t a, uint8_t b) {
  unsigned r = 0, x = a, y = b;
  for (int i = 0; i < 8; i++) {
    r ^= x & (0u - (y & 1u));             /* add x when the low bit of y is set */
    y >>= 1;
    x = (x << 1) ^ (0x11bu & (0u - (x >> 7))); /* x *= t, reduced by x^8+x^4+x^3+x+1 */
  }
  return (uint8_t)r;
}

uint8_t evs__shamir_gf_inv(uint8_t a) {
  /* a^254 = a^-1 for a != 0 (the multiplicative group has order 255); 0 maps to 0. */
  uint8_t a2 = evs__shamir_gf_mul(a, a);      /* a^2 */
  uint8_t a3 = evs__shamir_gf_mul(a2, a);     /* a^3 */
  uint8_t a6 = evs__shamir_gf_mul(a3, a3);    /* a^6 */
  uint8_t a12 = evs__shamir_gf_mul(a6, a6);   /* a^12 */
  uint8_t a15 = evs__shamir_gf_mul(a12, a3);  /* a^15 */
  uint8_t a30 = evs__shamir_gf_mul(a15, a15); /* a^30 */
  uint8_t a60 = evs__shamir_gf_mul(a30, a30); /* a^60 */
  uint8_t a63 = evs__shamir_gf_mul(a60, a3);  /* a^63 */
  uint8_t a126 = evs__shamir_gf_mul(a63, a63);/* a^126 */
  uint8_t a127 = evs__shamir_gf_mul(a126, a); /* a^127 */
  return evs__shamir_gf_mul(a127, a127);      /* a^254 */
}

static int default_rng(void *arg, uint8_t *out, size_t len) {
  (void)arg;
  return evs__ec_random(out, len) == EVS_EC_OK;
}

int evs_shamir_split(const uint8_t secret[EVS_SHAMIR_SECRET_LEN], unsigned n, unsigned k,
                     evs_shamir_rng rng, void *rng_arg, uint8_t *ret_shares) {
  /* coef[j][b]: coefficient of x^j of the polynomial for secret byte b; coef[0] is the secret. */
  uint8_t coef[EVS_SHAMIR_MAX_SHARES][EVS_SHAMIR_SECRET_LEN];
  if (!secret || !ret_shares || k < 1 || k > n || n > EVS_SHAMIR_MAX_SHARES) return EVS_EC_EINVAL;
  if (!rng) rng = default_rng;
  memcpy(coef[0], secret, EVS_SHAMIR_SECRET_LEN);
  if (k > 1 && !rng(rng_arg, coef[1], (size_t)(k - 1) * EVS_SHAMIR_SECRET_LEN)) {
    OPENSSL_cleanse(coef, sizeof coef);
    return EVS_EC_ERANDOM;
  }
  for (unsigned i = 0; i < n; i++) {
    uint8_t x = (uint8_t)(i + 1), *sh = ret_shares + (size_t)i * EVS_SHAMIR_SHARE_LEN;
    sh[0] = (uint8_t)k;
    sh[1] = x;
    for (unsigned b = 0; b < EVS_SHAMIR_SECRET_LEN; b++) {
      /* Horner: ((c[k-1] x + c[k-2]) x + ...) x + c[0]. */
      uint8_t y = 0;
      for (unsigned j = k; j-- > 0;) y = (uint8_t)(evs__shamir_gf_mul(y, x) ^ coef[j][b]);
      sh[2 + b] = y;
    }
  }
  OPENSSL_cleanse(coef, sizeof coef);
  return EVS_EC_OK;
}

int evs_shamir_combine(const uint8_t *shares, unsigned count,
                       uint8_t ret_secret[EVS_SHAMIR_SECRET_LEN]) {
  uint8_t acc[EVS_SHAMIR_SECRET_LEN] = {0};
  if (!shares || !ret_secret || count == 0) return EVS_EC_EINVAL;
  unsigned k = shares[0];
  if (k < 1 || count < k) return EVS_EC_ESHARES;
  for (unsigned i = 0; i < count; i++) {
    const uint8_t *si = shares + (size_t)i * EVS_SHAMIR_SHARE_LEN;
    if (si[0] != k || si[1] == 0) return EVS_EC_ESHARES;
    for (unsigned j = 0; j < i; j++)
      if (shares[(size_t)j * EVS_SHAMIR_SHARE_LEN + 1] == si[1]) return EVS_EC_ESHARES;
  }
  /* secret = sum_i y_i * prod_{j != i} x_j / (x_j - x_i), over the first k shares
   * (subtraction is XOR in GF(2^8)). */
  for (unsigned i = 0; i < k; i++) {
    const uint8_t *si = shares + (size_t)i * EVS_SHAMIR_SHARE_LEN;
    uint8_t num = 1, den = 1;
    for (unsigned j = 0; j < k; j++) {
      if (j == i) continue;
      uint8_t xj = shares[(size_t)j * EVS_SHAMIR_SHARE_LEN + 1];
      num = evs__shamir_gf_mul(num, xj);
      den = evs__shamir_gf_mul(den, (uint8_t)(xj ^ si[1]));
    }
    uint8_t li = evs__shamir_gf_mul(num, evs__shamir_gf_inv(den));
    for (unsigned b = 0; b < EVS_SHAMIR_SECRET_LEN; b++)
      acc[b] ^= evs__shamir_gf_mul(si[2 + b], li);
  }
  memcpy(ret_secret, acc, EVS_SHAMIR_SECRET_LEN);
  OPENSSL_cleanse(acc, sizeof acc);
  return EVS_EC_OK;
}
