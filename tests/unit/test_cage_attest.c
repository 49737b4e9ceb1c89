/*
 * Unit tests for the attestation documents (plugins/cage-broker/attest.c): a document signed by
 * a node key under a root verifies against that root with the expected PCRs, public key and
 * nonce, in the untagged (Nitro) and the tagged COSE form; each of these is refused with its own
 * status: a flipped signature byte, another root, a rogue root smuggled into cabundle, a PCR, a
 * public key or a nonce that differs, a protected header other than ES384, a truncated
 * document, a header that claims more entries than there are bytes, a node key on P-256.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "attest.h"

typedef struct pki {
  EVP_PKEY *root_key, *node_key;
  uint8_t *root, *node;
  size_t root_len, node_len;
} pki;

static int add_ext(X509 *issuer, X509 *x, int nid, const char *v) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, v);
  int ok = e && X509_add_ext(x, e, -1) == 1;
  X509_EXTENSION_free(e);
  return ok;
}

static uint8_t *cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *ik, size_t *len,
                     X509 **keep) {
  X509 *x = X509_new();
  X509_NAME *n = X509_NAME_new();
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_set_version(x, 2);
  X509_set_subject_name(x, n);
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509 *is = issuer ? issuer : x;
  assert_true(add_ext(is, x, NID_basic_constraints, issuer ? "critical,CA:FALSE"
                                                           : "critical,CA:TRUE"));
  assert_true(add_ext(is, x, NID_key_usage, issuer ? "critical,digitalSignature"
                                                   : "critical,keyCertSign"));
  assert_true(add_ext(is, x, NID_subject_key_identifier, "hash"));
  if (issuer) assert_true(add_ext(is, x, NID_authority_key_identifier, "keyid:always"));
  assert_true(X509_sign(x, ik ? ik : key, EVP_sha384()) > 0);
  uint8_t *der = NULL;
  int l = i2d_X509(x, &der);
  assert_true(l > 0);
  *len = (size_t)l;
  X509_NAME_free(n);
  if (keep) *keep = x;
  else X509_free(x);
  return der;
}

static void pki_make(pki *p, const char *node_curve) {
  X509 *root = NULL;
  p->root_key = EVP_EC_gen("P-384");
  p->node_key = EVP_EC_gen(node_curve);
  p->root = cert("test root", p->root_key, NULL, NULL, &p->root_len, &root);
  p->node = cert("test node", p->node_key, root, p->root_key, &p->node_len, NULL);
  X509_free(root);
}

static void pki_done(pki *p) {
  EVP_PKEY_free(p->root_key);
  EVP_PKEY_free(p->node_key);
  OPENSSL_free(p->root);
  OPENSSL_free(p->node);
}

static const uint8_t spki_a[] = "pretend SubjectPublicKeyInfo A";
static const uint8_t spki_b[] = "pretend SubjectPublicKeyInfo B";
static const uint8_t nonce[] = {1, 2, 3, 4};

static uint8_t *make_doc(pki *p, const uint8_t *bundle_root, size_t bundle_len, size_t *len) {
  cage_attest_fields f;
  memset(&f, 0, sizeof f);
  f.module_id = "evserver-sandbox-test";
  f.timestamp_ms = 1700000000123ull;
  memset(f.pcrs[0], 0xa0, 48);
  memset(f.pcrs[1], 0xa1, 48);
  memset(f.pcrs[2], 0xa2, 48);
  memset(f.pcrs[8], 0xa8, 48);
  f.cert_der = p->node;
  f.cert_len = p->node_len;
  const uint8_t *b[1] = {bundle_root ? bundle_root : p->root};
  size_t bl[1] = {bundle_root ? bundle_len : p->root_len};
  f.bundle = b;
  f.bundle_len = bl;
  f.nbundle = 1;
  f.public_key = spki_a;
  f.public_key_len = sizeof spki_a;
  f.nonce = nonce;
  f.nonce_len = sizeof nonce;
  uint8_t *doc = NULL;
  assert_int_equal(cage_attest_sign_local(&f, p->node_key, &doc, len), 0);
  return doc;
}

static void expect_for(const pki *p, cage_attest_expect *e, uint8_t pcrs[4][48]) {
  memset(e, 0, sizeof *e);
  e->root_der = p->root;
  e->root_len = p->root_len;
  const int idx[4] = {0, 1, 2, 8};
  for (int i = 0; i < 4; i++) {
    memset(pcrs[i], 0xa0 + idx[i], 48);
    e->pcrs[idx[i]] = pcrs[i];
  }
  e->spki_der = spki_a;
  e->spki_len = sizeof spki_a;
  e->nonce = nonce;
  e->nonce_len = sizeof nonce;
}

static void test_round_trip(void **state) {
  (void)state;
  pki p;
  pki_make(&p, "P-384");
  size_t len = 0;
  uint8_t *doc = make_doc(&p, NULL, 0, &len);
  cage_attest_expect e;
  uint8_t pcrs[4][48];
  expect_for(&p, &e, pcrs);
  cage_attest_doc d;
  assert_int_equal(cage_attest_verify(doc, len, &e, &d), 0);
  assert_string_equal(d.module_id, "evserver-sandbox-test");
  assert_string_equal(d.digest, "SHA384");
  assert_int_equal(d.timestamp_ms, 1700000000123ull);
  assert_int_equal(d.pcr_mask, 0xffff);
  assert_int_equal(d.pcrs[3][0], 0);
  assert_int_equal(d.public_key_len, sizeof spki_a);
  assert_null(d.user_data);
  assert_memory_equal(d.public_key, spki_a, sizeof spki_a);
  assert_memory_equal(d.nonce, nonce, sizeof nonce);
  cage_attest_doc_done(&d);

  /* COSE_Sign1_Tagged: tag 18 (0xd2) in front */
  uint8_t *tagged = malloc(len + 1);
  tagged[0] = 0xd2;
  memcpy(tagged + 1, doc, len);
  assert_int_equal(cage_attest_verify(tagged, len + 1, &e, NULL), 0);
  tagged[0] = 0xd3; /* tag 19 */
  assert_int_equal(cage_attest_verify(tagged, len + 1, &e, NULL), CAGE_ATTEST_EFORMAT);
  free(tagged);

  /* every expectation that differs is refused with its own status */
  uint8_t other[48];
  memset(other, 0xee, 48);
  cage_attest_expect e2 = e;
  e2.pcrs[8] = other;
  assert_int_equal(cage_attest_verify(doc, len, &e2, NULL), CAGE_ATTEST_EPCR);
  e2 = e;
  e2.spki_der = spki_b;
  assert_int_equal(cage_attest_verify(doc, len, &e2, NULL), CAGE_ATTEST_EKEY);
  e2 = e;
  e2.nonce_len = 3;
  assert_int_equal(cage_attest_verify(doc, len, &e2, NULL), CAGE_ATTEST_ENONCE);
  e2 = e;
  e2.root_der = NULL;
  assert_int_equal(cage_attest_verify(doc, len, &e2, NULL), -EINVAL);

  /* tampering with the signature, the payload (a PCR byte) or the protected header */
  uint8_t *t = malloc(len);
  memcpy(t, doc, len);
  t[len - 10] ^= 1;
  assert_int_equal(cage_attest_verify(t, len, &e, NULL), CAGE_ATTEST_ESIG);
  memcpy(t, doc, len);
  uint8_t pat[48];
  memset(pat, 0xa8, 48);
  uint8_t *at = memmem(t, len, pat, 48);
  assert_non_null(at);
  at[0] = 0xa9;
  assert_int_equal(cage_attest_verify(t, len, &e, NULL), CAGE_ATTEST_ESIG);
  memcpy(t, doc, len);
  assert_memory_equal(t + 1, "\x44\xa1\x01\x38\x22", 5);
  t[5] = 0x23; /* alg -36 (ES512) */
  assert_int_equal(cage_attest_verify(t, len, &e, NULL), CAGE_ATTEST_EALG);
  for (size_t cut = 0; cut < len; cut += 97)
    assert_int_equal(cage_attest_verify(doc, cut, &e, NULL), CAGE_ATTEST_EFORMAT);
  free(t);
  free(doc);
  pki_done(&p);
}

static void test_chain(void **state) {
  (void)state;
  pki p, rogue;
  pki_make(&p, "P-384");
  pki_make(&rogue, "P-384");
  size_t len = 0;
  cage_attest_expect e;
  uint8_t pcrs[4][48];
  expect_for(&p, &e, pcrs);
  /* signed under another root, which the document even names in its cabundle */
  uint8_t *doc = make_doc(&rogue, NULL, 0, &len);
  assert_int_equal(cage_attest_verify(doc, len, &e, NULL), CAGE_ATTEST_ECHAIN);
  free(doc);
  /* the right node, with a rogue root in the bundle: the pinned root decides */
  doc = make_doc(&p, rogue.root, rogue.root_len, &len);
  assert_int_equal(cage_attest_verify(doc, len, &e, NULL), 0);
  free(doc);
  pki_done(&rogue);
  /* a node key on P-256 is not ES384 */
  pki weak;
  pki_make(&weak, "P-256");
  doc = make_doc(&weak, NULL, 0, &len);
  expect_for(&weak, &e, pcrs);
  assert_int_not_equal(cage_attest_verify(doc, len, &e, NULL), 0);
  free(doc);
  pki_done(&weak);
  pki_done(&p);
}

static void test_hostile_cbor(void **state) {
  (void)state;
  cage_attest_doc d;
  static const uint8_t huge_array[] = {0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  static const uint8_t huge_map[] = {0x84, 0x40, 0xbb, 0, 0, 1, 0, 0, 0, 0, 0};
  static const uint8_t indefinite[] = {0x9f, 0x40, 0x40, 0x40, 0x40, 0xff};
  static const uint8_t trailing[] = {0x80, 0x00};
  uint8_t deep[64];
  memset(deep, 0x81, sizeof deep);
  deep[63] = 0;
  memset(&d, 0, sizeof d);
  assert_int_equal(cage_attest_parse(huge_array, sizeof huge_array, &d), CAGE_ATTEST_EFORMAT);
  assert_int_equal(cage_attest_parse(huge_map, sizeof huge_map, &d), CAGE_ATTEST_EFORMAT);
  assert_int_equal(cage_attest_parse(indefinite, sizeof indefinite, &d), CAGE_ATTEST_EFORMAT);
  assert_int_equal(cage_attest_parse(trailing, sizeof trailing, &d), CAGE_ATTEST_EFORMAT);
  assert_int_equal(cage_attest_parse(deep, sizeof deep, &d), CAGE_ATTEST_EFORMAT);
  assert_int_equal(cage_attest_parse(NULL, 0, &d), CAGE_ATTEST_EFORMAT);
}

static void test_encode_limits(void **state) {
  (void)state;
  cage_attest_fields f;
  memset(&f, 0, sizeof f);
  uint8_t *a = NULL, *b = NULL;
  size_t al = 0, bl = 0;
  assert_int_equal(cage_attest_encode_tbs(&f, &a, &al, &b, &bl), -EINVAL); /* no module id */
  f.module_id = "m";
  f.cert_der = (const uint8_t *)"x";
  f.cert_len = 1;
  f.user_data = (const uint8_t *)"";
  f.user_data_len = CAGE_ATTEST_MAX_FIELD + 1;
  assert_int_equal(cage_attest_encode_tbs(&f, &a, &al, &b, &bl), -EINVAL);
  f.user_data_len = 0;
  assert_int_equal(cage_attest_encode_tbs(&f, &a, &al, &b, &bl), 0);
  /* the Sig_structure starts ["Signature1", h'a10138 22', ... */
  assert_memory_equal(b, "\x84\x6aSignature1\x44\xa1\x01\x38\x22\x40", 18);
  free(a);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_chain),
      cmocka_unit_test(test_hostile_cbor),
      cmocka_unit_test(test_encode_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
