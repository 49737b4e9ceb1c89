/*
 * Unit tests for the enclave's relay CA (enclave/proc/ca.c): which SANs are names, addresses or
 * refused; CA_CREATE's certificate (self-signed, CA:TRUE, P-256, the validity asked for) and
 * sealed key (the format, refused when any byte is flipped, with another sealing key, or with
 * another CA's certificate); CA_SIGN's leaf (verifies with the CA key, SANs, serverAuth,
 * CA:FALSE, a 16-byte serial, notBefore five minutes back, notAfter capped at the CA's); the
 * refusals of bad names, counts, validities and keys; and both ops through evs__ep_handle.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "enclave.h"

static evs_enclave *new_enclave(uint8_t fill) {
  uint8_t key[EVS_SEAL_KEY_LEN];
  memset(key, fill, sizeof key);
  evs_enclave *e = NULL;
  assert_int_equal(evs__enclave_new(key, &e), EVS_EP_OK);
  return e;
}

static X509 *cert_of(const char *pem, size_t len) {
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(x);
  return x;
}

/* A fresh leaf key: its public half as PEM (or DER when der) in out. */
static size_t leaf_pub(const char *alg, int bits_or_0, int der, uint8_t *out, size_t cap) {
  EVP_PKEY *k = NULL;
  if (strcmp(alg, "RSA") == 0) k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits_or_0);
  else if (strcmp(alg, "ED25519") == 0) k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  else k = EVP_EC_gen(alg);
  assert_non_null(k);
  size_t n;
  if (der) {
    uint8_t *p = out;
    int l = i2d_PUBKEY(k, NULL);
    assert_true(l > 0 && (size_t)l <= cap);
    i2d_PUBKEY(k, &p);
    n = (size_t)l;
  } else {
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, k);
    char *d;
    long l = BIO_get_mem_data(b, &d);
    assert_true(l > 0 && (size_t)l <= cap);
    memcpy(out, d, (size_t)l);
    n = (size_t)l;
    BIO_free(b);
  }
  EVP_PKEY_free(k);
  return n;
}

typedef struct ca {
  char *pem;
  size_t pem_len;
  uint8_t *sealed;
  size_t sealed_len;
} ca;

static void make_ca(evs_enclave *e, uint32_t days, ca *c) {
  assert_int_equal(evs__ca_create(e, NULL, 0, days, &c->pem, &c->pem_len, &c->sealed,
                                  &c->sealed_len),
                   EVS_EP_OK);
}

static void ca_done(ca *c) {
  free(c->pem);
  free(c->sealed);
}

static int sign(evs_enclave *e, const ca *c, const uint8_t *key, size_t key_len, uint32_t validity,
                const char *const *names, size_t n, X509 **ret) {
  evs_ep_item it[16];
  for (size_t i = 0; i < n; i++) {
    it[i].p = (const uint8_t *)names[i];
    it[i].len = (uint32_t)strlen(names[i]);
  }
  char *pem = NULL;
  size_t len = 0;
  int r = evs__ca_sign(e, (const uint8_t *)c->pem, c->pem_len, c->sealed, c->sealed_len, key,
                       key_len, validity, it, n, &pem, &len);
  if (r == EVS_EP_OK) {
    if (ret) *ret = cert_of(pem, len);
    free(pem);
  }
  return r;
}

static void test_names(void **state) {
  (void)state;
  static const char *const dns[] = {"example.test", "a", "A-b.C0", "xn--bcher-kva.example",
                                    "1a.example", "123.example", "localhost"};
  static const char *const ip[] = {"127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "fe80::1",
                                   "2001:db8::ff00:42:8329", "::ffff:192.0.2.1"};
  static const char *const bad[] = {"", ".", "example.test.", ".example", "a..b", "-a.test",
                                    "a-.test", "*.example.test", "a*.test", "bad_name", "a b",
                                    "é.test", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4x:",
                                    "[::1]", "fe80::1%eth0", "::g", "1.2.3.04"};
  uint8_t addr[16];
  size_t alen = 0;
  for (size_t i = 0; i < sizeof dns / sizeof *dns; i++)
    assert_int_equal(evs__ca_name_kind((const uint8_t *)dns[i], strlen(dns[i]), NULL, NULL),
                     EVS_CA_NAME_DNS);
  for (size_t i = 0; i < sizeof ip / sizeof *ip; i++)
    assert_int_equal(evs__ca_name_kind((const uint8_t *)ip[i], strlen(ip[i]), addr, &alen),
                     EVS_CA_NAME_IP);
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    if (evs__ca_name_kind((const uint8_t *)bad[i], strlen(bad[i]), NULL, NULL) != 0)
      fail_msg("accepted '%s'", bad[i]);
  }
  assert_int_equal(evs__ca_name_kind((const uint8_t *)"10.0.0.1", 8, addr, &alen), EVS_CA_NAME_IP);
  assert_int_equal(alen, 4);
  assert_memory_equal(addr, "\x0a\x00\x00\x01", 4);
  /* Lengths: a 63-byte label and a 253-byte name are the most; NUL bytes are refused. */
  char label[80], name[300];
  memset(label, 'a', 64);
  assert_int_equal(evs__ca_name_kind((const uint8_t *)label, 63, NULL, NULL), EVS_CA_NAME_DNS);
  assert_int_equal(evs__ca_name_kind((const uint8_t *)label, 64, NULL, NULL), 0);
  for (int i = 0; i < 300; i++) name[i] = i % 2 ? '.' : 'a';
  assert_int_equal(evs__ca_name_kind((const uint8_t *)name, 253, NULL, NULL), EVS_CA_NAME_DNS);
  assert_int_equal(evs__ca_name_kind((const uint8_t *)name, 254, NULL, NULL), 0); /* also '.' */
  name[253] = 'a';
  assert_int_equal(evs__ca_name_kind((const uint8_t *)name, 254, NULL, NULL), 0);
  assert_int_equal(evs__ca_name_kind((const uint8_t *)"a\0b", 3, NULL, NULL), 0);
}

static void test_create(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(1);
  ca c;
  make_ca(e, 0, &c);
  X509 *x = cert_of(c.pem, c.pem_len);
  EVP_PKEY *pub = X509_get0_pubkey(x);
  assert_int_equal(X509_verify(x, pub), 1); /* self-signed */
  assert_int_equal(X509_check_ca(x), 1);
  assert_int_equal(EVP_PKEY_get_base_id(pub), EVP_PKEY_EC);
  assert_int_equal(X509_get_extension_flags(x) & EXFLAG_CA, EXFLAG_CA);
  assert_int_equal(X509_get_key_usage(x), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
  int days = 0, secs = 0;
  assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
  assert_true(days == 3650 || (days == 3649 && secs > 0)); /* from an hour ago */
  assert_memory_equal(c.sealed, "EVC\1", 4);
  assert_int_equal(c.sealed_len, 4 + 12 + 121 + 16);
  X509_free(x);
  /* Names and validity. */
  char *pem;
  uint8_t *sealed;
  size_t pl, sl;
  assert_int_equal(evs__ca_create(e, (const uint8_t *)"My CA", 5, 7, &pem, &pl, &sealed, &sl),
                   EVS_EP_OK);
  x = cert_of(pem, pl);
  char cn[64];
  X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
  assert_string_equal(cn, "My CA");
  X509_free(x);
  free(pem);
  free(sealed);
  assert_int_equal(evs__ca_create(e, (const uint8_t *)"a\nb", 3, 0, &pem, &pl, &sealed, &sl),
                   EVS_EP_E_INVALID);
  char long_cn[65];
  memset(long_cn, 'x', sizeof long_cn);
  assert_int_equal(evs__ca_create(e, (const uint8_t *)long_cn, 65, 0, &pem, &pl, &sealed, &sl),
                   EVS_EP_E_INVALID);
  assert_int_equal(evs__ca_create(e, NULL, 0, EVS_CA_MAX_DAYS + 1, &pem, &pl, &sealed, &sl),
                   EVS_EP_E_INVALID);
  ca_done(&c);
  evs__enclave_free(e);
}

static void test_sign(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(2);
  ca c;
  make_ca(e, 0, &c);
  X509 *cax = cert_of(c.pem, c.pem_len);
  uint8_t key[4096];
  size_t kl = leaf_pub("P-256", 0, 0, key, sizeof key);
  static const char *const names[] = {"Example.TEST", "127.0.0.1", "::1"};
  X509 *leaf = NULL;
  time_t before = time(NULL);
  assert_int_equal(sign(e, &c, key, kl, 0, names, 3, &leaf), EVS_EP_OK);
  assert_int_equal(X509_verify(leaf, X509_get0_pubkey(cax)), 1);
  assert_int_equal(X509_check_issued(cax, leaf), X509_V_OK);
  assert_int_equal(X509_check_ca(leaf), 0);
  assert_int_equal(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
  assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
  assert_int_equal(X509_check_host(leaf, "example.test", 0, 0, NULL), 1);
  assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
  assert_int_equal(X509_check_ip_asc(leaf, "::1", 0), 1);
  assert_int_equal(X509_check_host(leaf, "other.test", 0, 0, NULL), 0);
  char cn[64];
  X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof cn);
  assert_string_equal(cn, "Example.TEST");
  assert_int_equal(ASN1_STRING_length(X509_get0_serialNumber(leaf)), 16);
  time_t nb = before - EVS_CA_LEAF_BACKDATE_S + 2;
  assert_true(X509_cmp_time(X509_get0_notBefore(leaf), &nb) < 0);
  int days = 0, secs = 0;
  ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(leaf), X509_get0_notAfter(leaf));
  assert_int_equal(days * 86400 + secs, 7 * 86400 + EVS_CA_LEAF_BACKDATE_S);
  X509_free(leaf);

  /* DER keys, RSA and Ed25519 keys; RSA gets keyEncipherment. */
  kl = leaf_pub("P-384", 0, 1, key, sizeof key);
  assert_int_equal(sign(e, &c, key, kl, 60, names, 1, NULL), EVS_EP_OK);
  kl = leaf_pub("RSA", 2048, 0, key, sizeof key);
  assert_int_equal(sign(e, &c, key, kl, 0, names, 1, &leaf), EVS_EP_OK);
  assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
  X509_free(leaf);
  kl = leaf_pub("ED25519", 0, 0, key, sizeof key);
  assert_int_equal(sign(e, &c, key, kl, 0, names, 1, NULL), EVS_EP_OK);

  /* Refused keys: small RSA, another curve, garbage, trailing bytes after DER. */
  kl = leaf_pub("RSA", 1024, 0, key, sizeof key);
  assert_int_equal(sign(e, &c, key, kl, 0, names, 1, NULL), EVS_EP_E_INVALID);
  kl = leaf_pub("secp256k1", 0, 0, key, sizeof key);
  assert_int_equal(sign(e, &c, key, kl, 0, names, 1, NULL), EVS_EP_E_INVALID);
  assert_int_equal(sign(e, &c, (const uint8_t *)"junk", 4, 0, names, 1, NULL), EVS_EP_E_INVALID);
  kl = leaf_pub("P-256", 0, 1, key, sizeof key);
  key[kl] = 0;
  assert_int_equal(sign(e, &c, key, kl + 1, 0, names, 1, NULL), EVS_EP_E_INVALID);
  assert_int_equal(sign(e, &c, key, kl, 0, names, 1, NULL), EVS_EP_OK);

  /* Names, counts and validity. */
  static const char *const nine[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
  assert_int_equal(sign(e, &c, key, kl, 0, nine, 8, NULL), EVS_EP_OK);
  assert_int_equal(sign(e, &c, key, kl, 0, nine, 9, NULL), EVS_EP_E_INVALID);
  assert_int_equal(sign(e, &c, key, kl, 0, nine, 0, NULL), EVS_EP_E_INVALID);
  static const char *const badn[] = {"ok.test", "not_ok.test"};
  assert_int_equal(sign(e, &c, key, kl, 0, badn, 2, NULL), EVS_EP_E_INVALID);
  assert_int_equal(sign(e, &c, key, kl, 59, names, 1, NULL), EVS_EP_E_INVALID);
  assert_int_equal(sign(e, &c, key, kl, EVS_CA_LEAF_MAX_S + 1, names, 1, NULL), EVS_EP_E_INVALID);

  /* A name over 64 bytes: no CN, and the SAN extension is critical. */
  char longname[100];
  memset(longname, 'a', 60);
  strcpy(longname + 60, ".example.test");
  const char *ln[] = {longname};
  assert_int_equal(sign(e, &c, key, kl, 0, ln, 1, &leaf), EVS_EP_OK);
  assert_int_equal(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
  int crit = -1;
  GENERAL_NAMES *g = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
  assert_int_equal(crit, 1);
  GENERAL_NAMES_free(g);
  X509_free(leaf);
  X509_free(cax);
  ca_done(&c);
  evs__enclave_free(e);
}

static void test_leaf_never_outlives_ca(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(3);
  ca c;
  make_ca(e, 1, &c); /* one day (from an hour ago) */
  X509 *cax = cert_of(c.pem, c.pem_len);
  uint8_t key[1024];
  size_t kl = leaf_pub("P-256", 0, 0, key, sizeof key);
  const char *n[] = {"example.test"};
  X509 *leaf = NULL;
  assert_int_equal(sign(e, &c, key, kl, EVS_CA_LEAF_MAX_S, n, 1, &leaf), EVS_EP_OK);
  assert_int_equal(ASN1_TIME_compare(X509_get0_notAfter(leaf), X509_get0_notAfter(cax)), 0);
  X509_free(leaf);
  X509_free(cax);
  ca_done(&c);
  evs__enclave_free(e);
}

static void test_sealed_key_checked(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(4), *other = new_enclave(5);
  ca c, d;
  make_ca(e, 0, &c);
  make_ca(e, 0, &d);
  uint8_t key[1024];
  size_t kl = leaf_pub("P-256", 0, 0, key, sizeof key);
  const char *n[] = {"example.test"};
  /* Every bit of every byte flipped (a fresh enclave each time: no cache). */
  for (size_t i = 0; i < c.sealed_len; i++) {
    for (int bit = 0; bit < 8; bit += 3) {
      evs_enclave *f = new_enclave(4);
      c.sealed[i] ^= (uint8_t)(1u << bit);
      assert_int_equal(sign(f, &c, key, kl, 0, n, 1, NULL), EVS_EP_E_INVALID);
      c.sealed[i] ^= (uint8_t)(1u << bit);
      evs__enclave_free(f);
    }
  }
  assert_int_equal(sign(e, &c, key, kl, 0, n, 1, NULL), EVS_EP_OK);
  /* Truncated, another sealing key, another CA's blob with this certificate. */
  ca t = c;
  t.sealed_len--;
  assert_int_equal(sign(e, &t, key, kl, 0, n, 1, NULL), EVS_EP_E_INVALID);
  assert_int_equal(sign(other, &c, key, kl, 0, n, 1, NULL), EVS_EP_E_INVALID);
  ca swapped = {c.pem, c.pem_len, d.sealed, d.sealed_len};
  assert_int_equal(sign(e, &swapped, key, kl, 0, n, 1, NULL), EVS_EP_E_INVALID);
  /* Not a certificate at all. */
  ca junk = {"junk", 4, c.sealed, c.sealed_len};
  assert_int_equal(sign(e, &junk, key, kl, 0, n, 1, NULL), EVS_EP_E_INVALID);
  /* A restarted enclave (same sealing key) opens it: the CA state is the caller's. */
  evs_enclave *again = new_enclave(4);
  assert_int_equal(sign(again, &d, key, kl, 0, n, 1, NULL), EVS_EP_OK);
  evs__enclave_free(again);
  ca_done(&c);
  ca_done(&d);
  evs__enclave_free(e);
  evs__enclave_free(other);
}

/* ---- through the protocol ------------------------------------------------------------------ */

static size_t frame(uint8_t *buf, uint16_t op, const void *const *it, const uint32_t *len,
                    uint32_t n) {
  size_t off = 0;
  evs_ep_put_u32(buf, EVS_EP_MAGIC);
  evs_ep_put_u16(buf + 4, EVS_EP_VERSION);
  evs_ep_put_u16(buf + 6, op);
  evs_ep_put_u32(buf + 8, 77);
  evs_ep_put_u32(buf + 12, 0);
  evs_ep_put_u32(buf + 16, n);
  off = 20;
  for (uint32_t i = 0; i < n; i++) {
    evs_ep_put_u32(buf + off, len[i]);
    memcpy(buf + off + 4, it[i], len[i]);
    off += 4 + len[i];
  }
  return off;
}

static int32_t status_of(const evs_ep_buf *out) { return (int32_t)evs_ep_get_u32(out->p + 16); }
static uint32_t nitems_of(const evs_ep_buf *out) { return evs_ep_get_u32(out->p + 20); }

static void test_ops(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(6);
  static uint8_t buf[65536];
  evs_ep_buf out;
  memset(&out, 0, sizeof out);
  uint8_t zero[4] = {0};
  const void *ci[] = {"", zero};
  uint32_t cl[] = {0, 4};
  evs__ep_handle(e, buf, frame(buf, EVS_EP_CA_CREATE, ci, cl, 2), &out);
  assert_int_equal(status_of(&out), EVS_EP_OK);
  assert_int_equal(nitems_of(&out), 2);
  /* Copy the two items out of the response. */
  const uint8_t *p = out.p + 24;
  uint32_t pem_len = evs_ep_get_u32(p);
  char *pem = malloc(pem_len);
  memcpy(pem, p + 4, pem_len);
  p += 4 + pem_len;
  uint32_t sl = evs_ep_get_u32(p);
  uint8_t *sealed = malloc(sl);
  memcpy(sealed, p + 4, sl);
  /* Wrong shapes: item counts, a 3-byte validity. */
  evs__ep_handle(e, buf, frame(buf, EVS_EP_CA_CREATE, ci, cl, 1), &out);
  assert_int_equal(status_of(&out), EVS_EP_E_PROTOCOL);
  cl[1] = 3;
  evs__ep_handle(e, buf, frame(buf, EVS_EP_CA_CREATE, ci, cl, 2), &out);
  assert_int_equal(status_of(&out), EVS_EP_E_PROTOCOL);

  uint8_t key[1024];
  size_t kl = leaf_pub("P-256", 0, 0, key, sizeof key);
  const void *si[] = {pem, sealed, key, zero, "example.test", "10.1.2.3"};
  uint32_t sl2[] = {pem_len, sl, (uint32_t)kl, 4, 12, 8};
  evs__ep_handle(e, buf, frame(buf, EVS_EP_CA_SIGN, si, sl2, 6), &out);
  assert_int_equal(status_of(&out), EVS_EP_OK);
  assert_int_equal(nitems_of(&out), 1);
  X509 *leaf = cert_of((const char *)out.p + 28, evs_ep_get_u32(out.p + 24));
  assert_int_equal(X509_check_ip_asc(leaf, "10.1.2.3", 0), 1);
  X509_free(leaf);
  evs__ep_handle(e, buf, frame(buf, EVS_EP_CA_SIGN, si, sl2, 4), &out); /* no names */
  assert_int_equal(status_of(&out), EVS_EP_E_PROTOCOL);
  si[5] = "10.1.2.3.4";
  sl2[5] = 10;
  evs__ep_handle(e, buf, frame(buf, EVS_EP_CA_SIGN, si, sl2, 6), &out);
  assert_int_equal(status_of(&out), EVS_EP_E_INVALID);
  assert_int_equal(nitems_of(&out), 0);
  evs__ep_buf_done(&out);
  free(pem);
  free(sealed);
  evs__enclave_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_create),
      cmocka_unit_test(test_sign),
      cmocka_unit_test(test_leaf_never_outlives_ca),
      cmocka_unit_test(test_sealed_key_checked),
      cmocka_unit_test(test_ops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
