/*
 * attest_tool.c: cage-attest-tool, a test tool (built with the tests, never installed) that
 * makes what a node makes, outside the server: an attestation root and a node key certified by
 * it, and documents signed with that key through the same encoder as the server
 * (cage_attest_sign_local). The Node bindings' tests and test_98 use it.
 *
 *   cage-attest-tool ca DIR
 *       DIR/root.pem, root.der (P-384, self-signed CA), node.der, node.key.pem (P-384, signed
 *       by the root)
 *   cage-attest-tool doc DIR [--module-id ID] [--cert-pem FILE] [--pcr N=HEX]... [--nonce HEX]
 *                       [--user-data HEX] [--timestamp MS]
 *       writes a COSE_Sign1 to stdout; public_key is the SubjectPublicKeyInfo of --cert-pem
 *   cage-attest-tool verify ROOT.der DOC [--spki-from-cert-pem FILE] [--pcr N=HEX]...
 *       prints the verdict; exit 0 when verified
 *   cage-attest-tool evctl ARGS...
 *       `evctl cage attest ARGS...` (core/evctl/cmd_cage_attest.c), for test_98
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "attest.h"
#include "x509_make.h"

int cmd_cage_attest(int argc, char **argv); /* core/evctl/cmd_cage_attest.c */

static int fail(const char *what) {
  fprintf(stderr, "cage-attest-tool: %s\n", what);
  return 2;
}

static int write_file(const char *dir, const char *name, const void *p, size_t n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(p, 1, n, f) == n;
  return fclose(f) == 0 && ok ? 0 : -1;
}

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  uint8_t *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, 1 << 20, f) : 0;
  fclose(f);
  *len = n;
  return buf;
}

/* A node certificate with the extensions a node's has (enclave/proc/attest.c), for a year. */
static X509 *make_node(EVP_PKEY *key, X509 *root, EVP_PKEY *root_key) {
  time_t now = time(NULL);
  evs_x509_spec s = {.o = "evserver", .cn = "test-node", .cn_len = 9, .key = key,
                     .issuer = root, .not_before = now - 3600, .not_after = now + 86400L * 365,
                     .exts = evs_x509_signer_exts, .n_exts = 4};
  X509 *x = evs_x509_draft(&s);
  if (x && X509_sign(x, root_key, EVP_sha384()) <= 0) {
    X509_free(x);
    return NULL;
  }
  return x;
}

static int cmd_ca(const char *dir) {
  EVP_PKEY *rk = EVP_EC_gen("P-384"), *nk = EVP_EC_gen("P-384");
  X509 *root = rk ? evs_x509_self_signed_ca(rk, "evserver attestation root (test)", 365,
                                            EVP_sha384())
                   : NULL;
  X509 *node = root && nk ? make_node(nk, root, rk) : NULL;
  if (!node) return fail("cannot make certificates");
  uint8_t *der = NULL;
  int n = i2d_X509(root, &der);
  if (n <= 0 || write_file(dir, "root.der", der, (size_t)n) < 0) return fail("root.der");
  OPENSSL_free(der);
  der = NULL;
  n = i2d_X509(node, &der);
  if (n <= 0 || write_file(dir, "node.der", der, (size_t)n) < 0) return fail("node.der");
  OPENSSL_free(der);
  char path[4096];
  snprintf(path, sizeof path, "%s/root.pem", dir);
  FILE *f = fopen(path, "w");
  if (!f || PEM_write_X509(f, root) != 1) return fail("root.pem");
  fclose(f);
  snprintf(path, sizeof path, "%s/node.key.pem", dir);
  f = fopen(path, "w");
  if (!f || PEM_write_PrivateKey(f, nk, NULL, NULL, 0, NULL, NULL) != 1) return fail("key");
  fclose(f);
  X509_free(root);
  X509_free(node);
  EVP_PKEY_free(rk);
  EVP_PKEY_free(nk);
  return 0;
}

static int unhex(const char *s, uint8_t *out, size_t cap, size_t *ret_len) {
  size_t n = strlen(s);
  if (n % 2 || n / 2 > cap) return -1;
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  *ret_len = n / 2;
  return 0;
}

static int pcr_arg(const char *a, uint8_t pcrs[CAGE_ATTEST_NPCRS][CAGE_ATTEST_PCR_LEN],
                   uint32_t *mask) {
  char *eq = strchr(a, '=');
  size_t l = 0;
  int idx = atoi(a);
  if (!eq || idx < 0 || idx >= CAGE_ATTEST_NPCRS ||
      unhex(eq + 1, pcrs[idx], CAGE_ATTEST_PCR_LEN, &l) < 0 || l != CAGE_ATTEST_PCR_LEN)
    return -1;
  *mask |= 1u << idx;
  return 0;
}

static int spki_of_pem(const char *path, uint8_t **spki, size_t *len) {
  FILE *f = fopen(path, "r");
  X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
  if (f) fclose(f);
  if (!x) return -1;
  uint8_t *der = NULL;
  int n = i2d_PUBKEY(X509_get0_pubkey(x), &der);
  X509_free(x);
  if (n <= 0) return -1;
  *spki = der;
  *len = (size_t)n;
  return 0;
}

static int cmd_doc(const char *dir, int argc, char **argv) {
  cage_attest_fields f;
  memset(&f, 0, sizeof f);
  f.module_id = "evserver-sandbox-test";
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  f.timestamp_ms = (uint64_t)ts.tv_sec * 1000;
  uint32_t mask = 0;
  uint8_t nonce[512], ud[512];
  uint8_t *spki = NULL;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) return fail("an option without its value");
    i++;
    if (!strcmp(a, "--module-id")) f.module_id = v;
    else if (!strcmp(a, "--pcr")) { if (pcr_arg(v, f.pcrs, &mask) < 0) return fail("--pcr"); }
    else if (!strcmp(a, "--nonce")) {
      if (unhex(v, nonce, sizeof nonce, &f.nonce_len) < 0) return fail("--nonce");
      f.nonce = nonce;
    } else if (!strcmp(a, "--user-data")) {
      if (unhex(v, ud, sizeof ud, &f.user_data_len) < 0) return fail("--user-data");
      f.user_data = ud;
    } else if (!strcmp(a, "--cert-pem")) {
      if (spki_of_pem(v, &spki, &f.public_key_len) < 0) return fail("--cert-pem");
      f.public_key = spki;
    } else if (!strcmp(a, "--timestamp")) f.timestamp_ms = strtoull(v, NULL, 10);
    else return fail("unknown option");
  }
  char path[4096];
  size_t root_len = 0;
  snprintf(path, sizeof path, "%s/root.der", dir);
  uint8_t *root = read_file(path, &root_len);
  snprintf(path, sizeof path, "%s/node.der", dir);
  uint8_t *node = read_file(path, &f.cert_len);
  snprintf(path, sizeof path, "%s/node.key.pem", dir);
  FILE *kf = fopen(path, "r");
  EVP_PKEY *key = kf ? PEM_read_PrivateKey(kf, NULL, NULL, NULL) : NULL;
  if (kf) fclose(kf);
  if (!root || !node || !key) return fail("run `ca DIR` first");
  f.cert_der = node;
  const uint8_t *bundle[1] = {root};
  size_t bundle_len[1] = {root_len};
  f.bundle = bundle;
  f.bundle_len = bundle_len;
  f.nbundle = 1;
  uint8_t *doc = NULL;
  size_t doc_len = 0;
  if (cage_attest_sign_local(&f, key, &doc, &doc_len) < 0) return fail("cannot sign");
  fwrite(doc, 1, doc_len, stdout);
  free(doc);
  free(root);
  free(node);
  OPENSSL_free(spki);
  EVP_PKEY_free(key);
  return 0;
}

static int cmd_verify(const char *root_path, const char *doc_path, int argc, char **argv) {
  cage_attest_expect e;
  memset(&e, 0, sizeof e);
  uint8_t pcrs[CAGE_ATTEST_NPCRS][CAGE_ATTEST_PCR_LEN];
  uint32_t mask = 0;
  uint8_t *spki = NULL;
  for (int i = 0; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--pcr")) {
      if (pcr_arg(argv[i + 1], pcrs, &mask) < 0) return fail("--pcr");
    } else if (!strcmp(argv[i], "--spki-from-cert-pem")) {
      if (spki_of_pem(argv[i + 1], &spki, &e.spki_len) < 0) return fail("cert");
      e.spki_der = spki;
    } else {
      return fail("unknown option");
    }
  }
  for (int i = 0; i < CAGE_ATTEST_NPCRS; i++)
    if (mask & (1u << i)) e.pcrs[i] = pcrs[i];
  size_t doc_len = 0;
  uint8_t *root = read_file(root_path, &e.root_len), *doc = read_file(doc_path, &doc_len);
  if (!root || !doc) return fail("cannot read the inputs");
  e.root_der = root;
  int r = cage_attest_verify(doc, doc_len, &e, NULL);
  printf("%s\n", cage_attest_strerror(r));
  free(root);
  free(doc);
  OPENSSL_free(spki);
  return r == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "evctl")) { /* as evctl's router calls it */
    argv[1] = (char *)"attest";
    return cmd_cage_attest(argc - 1, argv + 1);
  }
  if (argc >= 3 && !strcmp(argv[1], "ca")) return cmd_ca(argv[2]);
  if (argc >= 3 && !strcmp(argv[1], "doc")) return cmd_doc(argv[2], argc - 3, argv + 3);
  if (argc >= 4 && !strcmp(argv[1], "verify"))
    return cmd_verify(argv[2], argv[3], argc - 4, argv + 4);
  fprintf(stderr, "usage: cage-attest-tool ca DIR | doc DIR [options] | verify ROOT.der DOC\n");
  return 2;
}
