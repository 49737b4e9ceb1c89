/*
 * libFuzzer target for the attestation document verifier (plugins/cage-broker/attest.c): the
 * bytes `evctl cage attest` fetches from a cage's /.well-known/attestation. Each input is
 * parsed, then verified against a root made once (so the chain and signature paths run on
 * whatever certificates the input carries). Invariant: no crash, no leak, no allocation
 * larger than the input justifies, and nothing verifies (the input is never signed by the root).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "attest.h"

static uint8_t *root_der;
static size_t root_len;

static void setup(void) {
  EVP_PKEY *k = EVP_EC_gen("P-384");
  X509 *x = X509_new();
  X509_NAME *n = X509_NAME_new();
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz root", -1, -1,
                             0);
  X509_set_version(x, 2);
  X509_set_subject_name(x, n);
  X509_set_issuer_name(x, n);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, k);
  if (X509_sign(x, k, EVP_sha384()) <= 0) abort();
  int len = i2d_X509(x, &root_der);
  if (len <= 0) abort();
  root_len = (size_t)len;
  X509_NAME_free(n);
  X509_free(x);
  EVP_PKEY_free(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!root_der) setup();
  cage_attest_doc d;
  if (cage_attest_parse(data, size, &d) == 0) cage_attest_doc_done(&d);
  cage_attest_expect e;
  memset(&e, 0, sizeof e);
  e.root_der = root_der;
  e.root_len = root_len;
  if (cage_attest_verify(data, size, &e, &d) == 0) abort();
  return 0;
}
