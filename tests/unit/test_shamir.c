/*
 * Unit tests for Shamir's Secret Sharing in enclave/crypto (evs_shamir_split/combine): the field
 * arithmetic against a slow reference, known answers computed with an independent (log/exp
 * table) implementation, split/combine over every subset, a missing or wrong share, and the
 * refusals.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "evs_crypto.h"

uint8_t evs__shamir_gf_mul(uint8_t a, uint8_t b);
uint8_t evs__shamir_gf_inv(uint8_t a);

#define SL EVS_SHAMIR_SHARE_LEN

static uint8_t slow_mul(uint8_t a, uint8_t b) {
  /* Carry-less product, then reduction by x^8 + x^4 + x^3 + x + 1. */
  unsigned p = 0;
  for (int i = 0; i < 8; i++)
    if (b >> i & 1) p ^= (unsigned)a << i;
  for (int i = 14; i >= 8; i--)
    if (p >> i & 1) p ^= 0x11bu << (i - 8);
  return (uint8_t)p;
}

static void test_gf(void **state) {
  (void)state;
  /* FIPS-197 §4.2 examples, and the inverse from its S-box derivation. */
  assert_int_equal(evs__shamir_gf_mul(0x57, 0x83), 0xc1);
  assert_int_equal(evs__shamir_gf_mul(0x57, 0x13), 0xfe);
  assert_int_equal(evs__shamir_gf_inv(0x53), 0xca);
  assert_int_equal(evs__shamir_gf_inv(0), 0);
  for (unsigned a = 0; a < 256; a++) {
    for (unsigned b = 0; b < 256; b++)
      assert_int_equal(evs__shamir_gf_mul((uint8_t)a, (uint8_t)b),
                       slow_mul((uint8_t)a, (uint8_t)b));
    if (a) assert_int_equal(evs__shamir_gf_mul((uint8_t)a, evs__shamir_gf_inv((uint8_t)a)), 1);
  }
}

/* A deterministic "random" source: seed, seed + 37, seed + 74, ... (mod 256). */
struct pattern {
  unsigned next;
  int fail;
};
static int pattern_rng(void *arg, uint8_t *out, size_t len) {
  struct pattern *p = arg;
  if (p->fail) return 0;
  for (size_t i = 0; i < len; i++) {
    out[i] = (uint8_t)p->next;
    p->next = (p->next + 37) & 0xff;
  }
  return 1;
}

static void hex(const char *h, uint8_t *out) {
  for (size_t i = 0; h[2 * i]; i++) {
    unsigned v;
    assert_int_equal(sscanf(h + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
}

static void test_known_answers(void **state) {
  (void)state;
  /* Computed with an independent implementation (log/exp tables, generator 3), secret 00..1f;
   * polynomial coefficients taken from the pattern source in order: c1[0..31], c2[0..31]. */
  static const char *kat_3of3[] = {
      "0301a0e1a2a3e4a566a7e8a9aaebac6daeef70b1f2b374b5f677b8f9ba7bbcbd7ebf",
      "0302d01875985a39c9c933609b7b228cca2ad69e687387ff39cfb57d70a6e43cccac",
      "030370f8d538ba99a969d3c03b9b82ec6acab63e88d3e75fd9af159dd0c6449cac0c",
  };
  static const char *kat_2of5[] = {
      "0201a5cbed173d5b85afc5fb1d376d8ba5dfe50b2d779dbbc5ef055b7d97adcbe53f",
      "0202518ec72b76b91b4c89f62473ce1a43b4e1256cdb1d52abfc229dd41865aaf35f",
      "0203f444283f4fe798e44404334faf9ce864143f53bf94fc78043fdfb394d47c087f",
      "0204a2049353e0663c9111ec56fb93239462e979ee98069b77da6c0a9d1dee68df9f",
      "020507ce7c47d938bf39dc1e41c7f2a53fb21c63d1fc8f35a4227148fa915fbe24bf",
  };
  uint8_t secret[32], shares[5 * SL], want[SL], back[32];
  for (int i = 0; i < 32; i++) secret[i] = (uint8_t)i;
  struct pattern p = {0x11, 0};
  assert_int_equal(evs_shamir_split(secret, 3, 3, pattern_rng, &p, shares), EVS_EC_OK);
  for (int i = 0; i < 3; i++) {
    hex(kat_3of3[i], want);
    assert_memory_equal(shares + i * SL, want, SL);
  }
  assert_int_equal(evs_shamir_combine(shares, 3, back), EVS_EC_OK);
  assert_memory_equal(back, secret, 32);
  p.next = 0xa5;
  assert_int_equal(evs_shamir_split(secret, 5, 2, pattern_rng, &p, shares), EVS_EC_OK);
  for (int i = 0; i < 5; i++) {
    hex(kat_2of5[i], want);
    assert_memory_equal(shares + i * SL, want, SL);
  }
  /* Combining the known shares alone (not produced by split here). */
  uint8_t two[2 * SL];
  hex(kat_2of5[4], two);
  hex(kat_2of5[1], two + SL);
  assert_int_equal(evs_shamir_combine(two, 2, back), EVS_EC_OK);
  assert_memory_equal(back, secret, 32);
}

static void test_split_combine(void **state) {
  (void)state;
  static const unsigned params[][2] = {{3, 3}, {5, 3}, {1, 1}, {4, 1}, {6, 6}, {8, 2}};
  uint8_t secret[32], shares[8 * SL], pick[8 * SL], back[32];
  for (size_t t = 0; t < sizeof params / sizeof params[0]; t++) {
    unsigned n = params[t][0], k = params[t][1];
    for (int rep = 0; rep < 3; rep++) {
      assert_int_equal(evs_shamir_split((const uint8_t[32]){0}, 1, 1, NULL, NULL, shares),
                       EVS_EC_OK);
      memcpy(secret, shares + 2, 32); /* any 32 bytes: here those of a trivial split */
      secret[0] ^= (uint8_t)(rep * 77 + t);
      assert_int_equal(evs_shamir_split(secret, n, k, NULL, NULL, shares), EVS_EC_OK);
      for (unsigned i = 0; i < n; i++) {
        assert_int_equal(shares[i * SL], k);
        assert_int_equal(shares[i * SL + 1], i + 1);
      }
      /* Every subset of exactly k shares, in rotated orders, reconstructs. */
      for (unsigned mask = 0; mask < (1u << n); mask++) {
        if ((unsigned)__builtin_popcount(mask) != k) continue;
        for (unsigned rot = 0; rot < k; rot++) {
          unsigned m = 0, idx[8];
          for (unsigned i = 0; i < n; i++)
            if (mask >> i & 1) idx[m++] = i;
          for (unsigned j = 0; j < k; j++)
            memcpy(pick + j * SL, shares + idx[(j + rot) % k] * SL, SL);
          assert_int_equal(evs_shamir_combine(pick, k, back), EVS_EC_OK);
          assert_memory_equal(back, secret, 32);
        }
      }
      /* More than k: the first k are used. */
      assert_int_equal(evs_shamir_combine(shares, n, back), EVS_EC_OK);
      assert_memory_equal(back, secret, 32);
    }
  }
  /* With k = 1 each share carries the secret in the clear: that is what k = 1 means. */
}

static void test_missing_and_wrong_shares(void **state) {
  (void)state;
  uint8_t secret[32], shares[3 * SL], pick[3 * SL], back[32];
  for (int i = 0; i < 32; i++) secret[i] = (uint8_t)(0xa0 + i);
  assert_int_equal(evs_shamir_split(secret, 3, 3, NULL, NULL, shares), EVS_EC_OK);
  /* Any missing share: refused (the threshold travels in every share). */
  for (unsigned missing = 0; missing < 3; missing++) {
    unsigned m = 0;
    for (unsigned i = 0; i < 3; i++)
      if (i != missing) memcpy(pick + SL * m++, shares + SL * i, SL);
    assert_int_equal(evs_shamir_combine(pick, 2, back), EVS_EC_ESHARES);
    /* Lying about the threshold does not help: two points of a degree-2 polynomial give a
     * different constant term. */
    pick[0] = 2;
    pick[SL] = 2;
    assert_int_equal(evs_shamir_combine(pick, 2, back), EVS_EC_OK);
    assert_memory_not_equal(back, secret, 32);
  }
  assert_int_equal(evs_shamir_combine(shares, 1, back), EVS_EC_ESHARES);
  /* A wrong share (one y byte changed) gives a wrong secret, in that byte only. */
  for (unsigned which = 0; which < 3; which++)
    for (unsigned b = 0; b < 32; b += 7) {
      memcpy(pick, shares, sizeof shares);
      pick[which * SL + 2 + b] ^= 0x5c;
      assert_int_equal(evs_shamir_combine(pick, 3, back), EVS_EC_OK);
      for (unsigned i = 0; i < 32; i++) {
        if (i == b) assert_int_not_equal(back[i], secret[i]);
        else assert_int_equal(back[i], secret[i]);
      }
    }
  /* A share from another split of the same secret: wrong secret. */
  uint8_t other[3 * SL];
  assert_int_equal(evs_shamir_split(secret, 3, 3, NULL, NULL, other), EVS_EC_OK);
  memcpy(pick, shares, sizeof shares);
  memcpy(pick + SL, other + SL, SL);
  assert_int_equal(evs_shamir_combine(pick, 3, back), EVS_EC_OK);
  assert_memory_not_equal(back, secret, 32);
}

static void test_refusals(void **state) {
  (void)state;
  uint8_t secret[32] = {1}, shares[4 * SL], back[32];
  assert_int_equal(evs_shamir_split(secret, 3, 0, NULL, NULL, shares), EVS_EC_EINVAL);
  assert_int_equal(evs_shamir_split(secret, 3, 4, NULL, NULL, shares), EVS_EC_EINVAL);
  assert_int_equal(evs_shamir_split(secret, 256, 3, NULL, NULL, shares), EVS_EC_EINVAL);
  assert_int_equal(evs_shamir_split(NULL, 3, 3, NULL, NULL, shares), EVS_EC_EINVAL);
  assert_int_equal(evs_shamir_split(secret, 3, 3, NULL, NULL, NULL), EVS_EC_EINVAL);
  struct pattern failing = {0, 1};
  assert_int_equal(evs_shamir_split(secret, 3, 3, pattern_rng, &failing, shares), EVS_EC_ERANDOM);
  assert_int_equal(evs_shamir_split(secret, 3, 3, NULL, NULL, shares), EVS_EC_OK);
  assert_int_equal(evs_shamir_combine(shares, 0, back), EVS_EC_EINVAL);
  assert_int_equal(evs_shamir_combine(NULL, 3, back), EVS_EC_EINVAL);
  uint8_t t[4 * SL];
  /* Duplicate x. */
  memcpy(t, shares, 3 * SL);
  memcpy(t + 2 * SL, t, SL);
  assert_int_equal(evs_shamir_combine(t, 3, back), EVS_EC_ESHARES);
  /* x = 0 (the secret's own coordinate). */
  memcpy(t, shares, 3 * SL);
  t[SL + 1] = 0;
  assert_int_equal(evs_shamir_combine(t, 3, back), EVS_EC_ESHARES);
  /* Mixed thresholds, threshold 0. */
  memcpy(t, shares, 3 * SL);
  t[2 * SL] = 2;
  assert_int_equal(evs_shamir_combine(t, 3, back), EVS_EC_ESHARES);
  memcpy(t, shares, 3 * SL);
  t[0] = t[SL] = t[2 * SL] = 0;
  assert_int_equal(evs_shamir_combine(t, 3, back), EVS_EC_ESHARES);
  /* A duplicate beyond the first k is refused too. */
  memcpy(t, shares, 3 * SL);
  memcpy(t + 3 * SL, shares, SL);
  assert_int_equal(evs_shamir_combine(t, 4, back), EVS_EC_ESHARES);
  /* The largest split. */
  static uint8_t many[255 * SL];
  assert_int_equal(evs_shamir_split(secret, 255, 255, NULL, NULL, many), EVS_EC_OK);
  assert_int_equal(evs_shamir_combine(many, 255, back), EVS_EC_OK);
  assert_memory_equal(back, secret, 32);
  assert_int_equal(evs_shamir_combine(many + 200 * SL, 55, back), EVS_EC_ESHARES);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gf),
      cmocka_unit_test(test_known_answers),
      cmocka_unit_test(test_split_combine),
      cmocka_unit_test(test_missing_and_wrong_shares),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
