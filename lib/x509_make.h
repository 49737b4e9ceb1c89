/*
 * x509_make.h: the certificates evserver makes, drafted by one code: the relay CA and its leaves
 * (enclave/proc/ca.c), the attestation root and node certificates (enclave/proc/attest.c), and
 * the test tool that makes the same outside the server (plugins/cage-broker/attest_tool.c). A
 * static library linked into each: a key handed to it is used in the caller's process and kept
 * nowhere, so the enclave's keys stay in the enclave process. OpenSSL only, no state, no logging
 * (lib/).
 */
#ifndef EVS_X509_MAKE_H
#define EVS_X509_MAKE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/x509.h>

/* An extension as OpenSSL's configuration strings write it ("critical,CA:FALSE"). */
typedef struct evs_x509_ext {
  int nid;
  const char *value;
} evs_x509_ext;

typedef struct evs_x509_spec {
  const char *o, *ou;           /* subject O and OU (NUL-terminated), or NULL */
  const char *cn;               /* subject CN, cn_len bytes, or NULL */
  size_t cn_len;
  EVP_PKEY *key;                /* the certified (public) key */
  X509 *issuer;                 /* NULL: self-issued (the issuer is the subject) */
  time_t not_before, not_after; /* validity, seconds since the epoch */
  const ASN1_TIME *not_after_as; /* if not NULL, the notAfter instead (an issuer's, as encoded) */
  const evs_x509_ext *exts;     /* added in this order, from the issuer and the draft */
  size_t n_exts;
} evs_x509_spec;

/* An unsigned v3 certificate with a random positive 16-byte serial and everything s says; the
 * caller may add extensions, then signs (X509_sign). NULL on any failure. */
X509 *evs_x509_draft(const evs_x509_spec *s);

/* The extensions of evserver's CAs (the relay CA, the attestation root): a CA that signs leaves
 * only. And of a certificate that signs but certifies nothing (an attestation node). */
extern const evs_x509_ext evs_x509_ca_exts[3];
extern const evs_x509_ext evs_x509_signer_exts[4];

/* A self-signed CA certificate, O=evserver and CN cn, valid from an hour ago for days days,
 * with evs_x509_ca_exts, signed by key with md. NULL on any failure. */
X509 *evs_x509_self_signed_ca(EVP_PKEY *key, const char *cn, unsigned days, const EVP_MD *md);

/* One more extension, from the issuer's and x's own data (NULL issuer: x itself). 0 or -1. */
int evs_x509_add_ext(X509 *issuer, X509 *x, int nid, const char *value);

/* x's DER / PEM in a new malloc'd buffer (PEM NUL-terminated): 0, or -1 with nothing set. */
int evs_x509_der(X509 *x, uint8_t **ret, size_t *ret_len);
int evs_x509_pem(X509 *x, char **ret, size_t *ret_len);

#endif
