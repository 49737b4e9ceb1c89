/*
 * Unit tests for the enclave's attestation keys (enclave/proc/attest.c): a root and a node key
 * certified by it (P-384, CA:TRUE / CA:FALSE, the node valid until the root's notAfter); the
 * chain check; a document built by plugins/cage-broker/attest.c and signed by the enclave
 * verifies against the root; refusals: a blob under another sealing key, a root blob offered as
 * a node blob (another label), another root, a tampered blob, bytes that are not a COSE
 * Sig_structure; and the four ops through evs__ep_handle.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "attest.h"
#include "enclave.h"

typedef struct keys {
  uint8_t *root, *root_sealed, *node, *node_sealed;
  size_t root_len, root_sealed_len, node_len, node_sealed_len;
} keys;

static evs_enclave *new_enclave(uint8_t fill) {
  uint8_t key[EVS_SEAL_KEY_LEN];
  memset(key, fill, sizeof key);
  evs_enclave *e = NULL;
  assert_int_equal(evs__enclave_new(key, &e), EVS_EP_OK);
  return e;
}

static void make_keys(evs_enclave *e, keys *k) {
  assert_int_equal(evs__attest_root_create(e, (const uint8_t *)"test root", 9, 30, &k->root,
                                           &k->root_len, &k->root_sealed,
                                           &k->root_sealed_len),
                   EVS_EP_OK);
  assert_int_equal(evs__attest_node_create(e, k->root, k->root_len, k->root_sealed,
                                           k->root_sealed_len, (const uint8_t *)"node-a", 6,
                                           &k->node, &k->node_len, &k->node_sealed,
                                           &k->node_sealed_len),
                   EVS_EP_OK);
}

static void free_keys(keys *k) {
  free(k->root);
  free(k->root_sealed);
  free(k->node);
  free(k->node_sealed);
}

static X509 *der(const uint8_t *p, size_t len) {
  const uint8_t *q = p;
  X509 *x = d2i_X509(NULL, &q, (long)len);
  assert_non_null(x);
  return x;
}

static void test_certificates(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(1);
  keys k;
  make_keys(e, &k);
  X509 *root = der(k.root, k.root_len), *node = der(k.node, k.node_len);
  assert_int_equal(X509_check_ca(root), 1);
  assert_int_equal(X509_check_ca(node), 0);
  assert_int_equal(X509_check_issued(root, node), X509_V_OK);
  assert_int_equal(X509_verify(node, X509_get0_pubkey(root)), 1);
  assert_int_equal(ASN1_TIME_compare(X509_get0_notAfter(node), X509_get0_notAfter(root)), 0);
  char group[32];
  size_t gl = 0;
  assert_int_equal(EVP_PKEY_get_group_name(X509_get0_pubkey(node), group, sizeof group, &gl), 1);
  assert_string_equal(group, "secp384r1");
  assert_memory_equal(k.node_sealed, "EVA\1", 4);
  X509_free(root);
  X509_free(node);
  assert_int_equal(evs__attest_chain(e, k.root, k.root_len, k.node, k.node_len, k.node_sealed,
                                     k.node_sealed_len),
                   EVS_EP_OK);

  /* refusals: the root's blob as the node's, another root, a flipped byte, another sealing key */
  assert_int_equal(evs__attest_chain(e, k.root, k.root_len, k.node, k.node_len, k.root_sealed,
                                     k.root_sealed_len),
                   EVS_EP_E_INVALID);
  keys other;
  make_keys(e, &other);
  assert_int_equal(evs__attest_chain(e, other.root, other.root_len, k.node, k.node_len,
                                     k.node_sealed, k.node_sealed_len),
                   EVS_EP_E_INVALID);
  free_keys(&other);
  k.node_sealed[20] ^= 1;
  uint8_t sig[EVS_ATTEST_SIG_LEN];
  static const uint8_t tbs[] = "\x84\x6aSignature1\x40\x40\x40";
  assert_int_equal(evs__attest_sign(e, k.node, k.node_len, k.node_sealed, k.node_sealed_len, tbs,
                                    sizeof tbs - 1, sig),
                   EVS_EP_E_INVALID);
  k.node_sealed[20] ^= 1;
  evs_enclave *e2 = new_enclave(2);
  assert_int_equal(evs__attest_sign(e2, k.node, k.node_len, k.node_sealed, k.node_sealed_len,
                                    tbs, sizeof tbs - 1, sig),
                   EVS_EP_E_INVALID);
  uint8_t *n2 = NULL, *s2 = NULL;
  size_t n2l = 0, s2l = 0;
  assert_int_equal(evs__attest_node_create(e2, k.root, k.root_len, k.root_sealed,
                                           k.root_sealed_len, (const uint8_t *)"n", 1, &n2, &n2l,
                                           &s2, &s2l),
                   EVS_EP_E_INVALID);
  evs__enclave_free(e2);
  /* only Sig_structures are signed */
  static const uint8_t not_tbs[] = "\x84\x6aSignaturE1\x40\x40\x40";
  assert_int_equal(evs__attest_sign(e, k.node, k.node_len, k.node_sealed, k.node_sealed_len,
                                    not_tbs, sizeof not_tbs - 1, sig),
                   EVS_EP_E_INVALID);
  assert_int_equal(evs__attest_sign(e, k.node, k.node_len, k.node_sealed, k.node_sealed_len,
                                    tbs, sizeof tbs - 1, sig),
                   EVS_EP_OK);
  free_keys(&k);
  evs__enclave_free(e);
}

/* A document whose Sig_structure the enclave signed verifies with attest.c's verifier. */
static void test_document(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(3);
  keys k;
  make_keys(e, &k);
  cage_attest_fields f;
  memset(&f, 0, sizeof f);
  f.module_id = "evserver-sandbox-unit";
  f.timestamp_ms = 1;
  memset(f.pcrs[0], 7, 48);
  f.cert_der = k.node;
  f.cert_len = k.node_len;
  const uint8_t *b[1] = {k.root};
  size_t bl[1] = {k.root_len};
  f.bundle = b;
  f.bundle_len = bl;
  f.nbundle = 1;
  uint8_t *payload = NULL, *tbs = NULL, *doc = NULL, sig[EVS_ATTEST_SIG_LEN];
  size_t pl = 0, tl = 0, dl = 0;
  assert_int_equal(cage_attest_encode_tbs(&f, &payload, &pl, &tbs, &tl), 0);
  assert_int_equal(evs__attest_sign(e, k.node, k.node_len, k.node_sealed, k.node_sealed_len, tbs,
                                    tl, sig),
                   EVS_EP_OK);
  assert_int_equal(cage_attest_encode_cose(payload, pl, sig, &doc, &dl), 0);
  cage_attest_expect x;
  memset(&x, 0, sizeof x);
  x.root_der = k.root;
  x.root_len = k.root_len;
  x.pcrs[0] = f.pcrs[0];
  assert_int_equal(cage_attest_verify(doc, dl, &x, NULL), 0);
  x.pcrs[1] = f.pcrs[0];
  assert_int_equal(cage_attest_verify(doc, dl, &x, NULL), CAGE_ATTEST_EPCR);
  free(payload);
  free(tbs);
  free(doc);
  free_keys(&k);
  evs__enclave_free(e);
}

/* ---- through the protocol ------------------------------------------------------------------ */

static uint8_t msg[1 << 16];
static size_t msg_len;

static void begin(uint16_t op) {
  memset(msg, 0, EVS_EP_HEADER_LEN);
  evs_ep_put_u32(msg + 4, EVS_EP_MAGIC);
  evs_ep_put_u16(msg + 8, EVS_EP_VERSION);
  evs_ep_put_u16(msg + 10, op);
  evs_ep_put_u32(msg + 12, 7);
  msg_len = EVS_EP_HEADER_LEN;
}

static void add(const void *p, size_t n) {
  evs_ep_put_u32(msg + msg_len, (uint32_t)n);
  memcpy(msg + msg_len + 4, p, n);
  msg_len += 4 + n;
  evs_ep_put_u32(msg + 20, evs_ep_get_u32(msg + 20) + 1);
}

/* Sends the message; returns the status, and the items in it[] (into out's buffer). */
static int32_t call(evs_enclave *e, evs_ep_buf *out, evs_ep_item *it, size_t max, size_t *n) {
  evs_ep_put_u32(msg, (uint32_t)(msg_len - 4));
  evs__ep_handle(e, msg + 4, msg_len - 4, out);
  int32_t st = (int32_t)evs_ep_get_u32(out->p + 16);
  uint32_t cnt = evs_ep_get_u32(out->p + 20);
  assert_true(cnt <= max);
  size_t pos = EVS_EP_HEADER_LEN;
  for (uint32_t i = 0; i < cnt; i++) {
    it[i].len = evs_ep_get_u32(out->p + pos);
    it[i].p = out->p + pos + 4;
    pos += 4 + it[i].len;
  }
  *n = cnt;
  return st;
}

static void test_ops(void **state) {
  (void)state;
  evs_enclave *e = new_enclave(4);
  evs_ep_buf out;
  memset(&out, 0, sizeof out);
  evs_ep_item it[4];
  size_t n = 0;
  uint8_t days[4];
  evs_ep_put_u32(days, 0);
  begin(EVS_EP_ATTEST_ROOT_CREATE);
  add("", 0);
  add(days, 4);
  assert_int_equal(call(e, &out, it, 4, &n), EVS_EP_OK);
  assert_int_equal(n, 2);
  keys k;
  memset(&k, 0, sizeof k);
  k.root = malloc(it[0].len);
  memcpy(k.root, it[0].p, k.root_len = it[0].len);
  k.root_sealed = malloc(it[1].len);
  memcpy(k.root_sealed, it[1].p, k.root_sealed_len = it[1].len);

  begin(EVS_EP_ATTEST_NODE_CREATE);
  add(k.root, k.root_len);
  add(k.root_sealed, k.root_sealed_len);
  add("node-b", 6);
  assert_int_equal(call(e, &out, it, 4, &n), EVS_EP_OK);
  assert_int_equal(n, 2);
  k.node = malloc(it[0].len);
  memcpy(k.node, it[0].p, k.node_len = it[0].len);
  k.node_sealed = malloc(it[1].len);
  memcpy(k.node_sealed, it[1].p, k.node_sealed_len = it[1].len);

  begin(EVS_EP_ATTEST_CHAIN);
  add(k.root, k.root_len);
  add(k.node, k.node_len);
  add(k.node_sealed, k.node_sealed_len);
  assert_int_equal(call(e, &out, it, 4, &n), EVS_EP_OK);
  assert_int_equal(n, 2);
  assert_int_equal(it[0].len, k.node_len);
  assert_int_equal(it[1].len, k.root_len);

  begin(EVS_EP_ATTEST_SIGN);
  add(k.node, k.node_len);
  add(k.node_sealed, k.node_sealed_len);
  add("\x84\x6aSignature1\x40\x40\x40", 15);
  assert_int_equal(call(e, &out, it, 4, &n), EVS_EP_OK);
  assert_int_equal(n, 1);
  assert_int_equal(it[0].len, EVS_ATTEST_SIG_LEN);

  begin(EVS_EP_ATTEST_SIGN); /* too few items */
  add(k.node, k.node_len);
  assert_int_equal(call(e, &out, it, 4, &n), EVS_EP_E_PROTOCOL);
  begin(EVS_EP_ATTEST_ROOT_CREATE); /* validity beyond 30 years */
  add("", 0);
  evs_ep_put_u32(days, 20000);
  add(days, 4);
  assert_int_equal(call(e, &out, it, 4, &n), EVS_EP_E_INVALID);
  free_keys(&k);
  evs__ep_buf_done(&out);
  evs__enclave_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_certificates),
      cmocka_unit_test(test_document),
      cmocka_unit_test(test_ops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
