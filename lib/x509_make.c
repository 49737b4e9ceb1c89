/* x509_make.c: see x509_make.h. */
#include "x509_make.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

static int random_serial(X509 *x) {
  uint8_t b[16];
  if (RAND_bytes(b, sizeof b) != 1) return -1;
  b[0] &= 0x7f; /* positive */
  b[0] |= 0x40; /* and exactly 16 bytes long */
  BIGNUM *bn = BN_bin2bn(b, sizeof b, NULL);
  int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
  BN_free(bn);
  return ok ? 0 : -1;
}

int evs_x509_add_ext(X509 *issuer, X509 *x, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  int ok = ext && X509_add_ext(x, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok ? 0 : -1;
}

static int add_name(X509_NAME *n, const char *field, const char *v, int len) {
  return !v || X509_NAME_add_entry_by_txt(n, field, MBSTRING_ASC, (const unsigned char *)v, len,
                                          -1, 0) == 1;
}

X509 *evs_x509_draft(const evs_x509_spec *s) {
  X509 *x = X509_new();
  X509_NAME *subj = X509_NAME_new();
  int ok = x && subj && X509_set_version(x, 2) == 1 && random_serial(x) == 0 &&
           add_name(subj, "O", s->o, -1) && add_name(subj, "OU", s->ou, -1) &&
           add_name(subj, "CN", s->cn, (int)s->cn_len) && X509_set_subject_name(x, subj) == 1 &&
           X509_set_issuer_name(x, s->issuer ? X509_get_subject_name(s->issuer) : subj) == 1 &&
           ASN1_TIME_set(X509_getm_notBefore(x), s->not_before) &&
           (s->not_after_as ? X509_set1_notAfter(x, s->not_after_as) == 1
                            : ASN1_TIME_set(X509_getm_notAfter(x), s->not_after) != NULL) &&
           X509_set_pubkey(x, s->key) == 1;
  for (size_t i = 0; ok && i < s->n_exts; i++)
    ok = evs_x509_add_ext(s->issuer, x, s->exts[i].nid, s->exts[i].value) == 0;
  X509_NAME_free(subj);
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

const evs_x509_ext evs_x509_ca_exts[3] = {
    {NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
    {NID_key_usage, "critical,keyCertSign,cRLSign"},
    {NID_subject_key_identifier, "hash"},
};

const evs_x509_ext evs_x509_signer_exts[4] = {
    {NID_basic_constraints, "critical,CA:FALSE"},
    {NID_key_usage, "critical,digitalSignature"},
    {NID_subject_key_identifier, "hash"},
    {NID_authority_key_identifier, "keyid:always"},
};

X509 *evs_x509_self_signed_ca(EVP_PKEY *key, const char *cn, unsigned days, const EVP_MD *md) {
  time_t now = time(NULL);
  evs_x509_spec s = {.o = "evserver", .cn = cn, .cn_len = strlen(cn), .key = key,
                     .not_before = now - 3600, .not_after = now + (time_t)days * 86400,
                     .exts = evs_x509_ca_exts, .n_exts = 3};
  X509 *x = evs_x509_draft(&s);
  if (x && X509_sign(x, key, md) <= 0) {
    X509_free(x);
    return NULL;
  }
  return x;
}

int evs_x509_der(X509 *x, uint8_t **ret, size_t *ret_len) {
  uint8_t *der = NULL;
  int n = i2d_X509(x, &der);
  if (n <= 0) return -1;
  uint8_t *out = malloc((size_t)n);
  if (out) memcpy(out, der, (size_t)n);
  OPENSSL_free(der);
  if (!out) return -1;
  *ret = out;
  *ret_len = (size_t)n;
  return 0;
}

int evs_x509_pem(X509 *x, char **ret, size_t *ret_len) {
  BIO *b = BIO_new(BIO_s_mem());
  char *data = NULL;
  long n = 0;
  int ok = b && PEM_write_bio_X509(b, x) == 1 && (n = BIO_get_mem_data(b, &data)) > 0;
  char *out = ok ? malloc((size_t)n + 1) : NULL;
  if (out) {
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    *ret = out;
    *ret_len = (size_t)n;
  }
  BIO_free(b);
  return out ? 0 : -1;
}
