/*
 * attest.h: Nitro-format attestation documents for Cages (docs/cages.md, "Attestation").
 *
 * A document is a COSE_Sign1 (RFC 9052) with the protected header {1: -35} (ES384), an empty
 * unprotected header, a CBOR payload map (module_id, digest "SHA384", timestamp in ms, pcrs,
 * certificate, cabundle, public_key, user_data, nonce, as AWS Nitro Enclaves write it) and a
 * P-384 signature, raw r || s (96 bytes), over the Sig_structure
 * ["Signature1", protected, h'', payload]. The signing key is the node's attestation key, which
 * only the enclave process holds (enclave/README.md, "The attestation keys"); its certificate
 * is `certificate`, and `cabundle` holds the evserver attestation root (root first, as Nitro).
 *
 * Three users: the cage-broker plugin (cage_attest_doc_build: asks the enclave plugin to sign
 * through host->crypto_call), evctl (`evctl cage attest`: cage_attest_verify) and the tests
 * and fuzz target. Encoding and decoding go through libcbor; the verifier reads untrusted bytes
 * and never trusts a length it has not checked (cage_attest_verify). Nothing here logs.
 * Statuses: 0 or a negative errno / CAGE_ATTEST_E*.
 */
#ifndef EVS_CAGE_ATTEST_H
#define EVS_CAGE_ATTEST_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include <evserver/evs_plugin.h>

#define CAGE_ATTEST_PCR_LEN 48     /* SHA-384 */
#define CAGE_ATTEST_NPCRS 16       /* PCR0..PCR15, as a Nitro enclave reports them */
#define CAGE_ATTEST_SIG_LEN 96     /* P-384 r || s */
#define CAGE_ATTEST_MAX_DOC (64u * 1024) /* a document is ~2 KiB; anything this big is refused */
#define CAGE_ATTEST_MAX_FIELD 1024 /* public_key, user_data, nonce (Nitro's limits: 1024, 512,
                                      512; one bound for all three) */
#define CAGE_ATTEST_MAX_BUNDLE 8

/* Verification failures (negative, below the errno range). */
enum {
  CAGE_ATTEST_EFORMAT = -20001, /* not a COSE_Sign1 / Nitro payload (malformed, wrong types) */
  CAGE_ATTEST_EALG = -20002,    /* protected header is not {1: -35} */
  CAGE_ATTEST_ECHAIN = -20003,  /* the certificate does not chain to the given root */
  CAGE_ATTEST_ESIG = -20004,    /* the signature does not verify with the certificate's key */
  CAGE_ATTEST_EPCR = -20005,    /* a PCR differs from the expected value */
  CAGE_ATTEST_EKEY = -20006,    /* public_key is not the expected SubjectPublicKeyInfo */
  CAGE_ATTEST_ENONCE = -20007,  /* nonce is not the expected one */
};

/* What goes into a document. Pointers are borrowed for the call. */
typedef struct cage_attest_fields {
  const char *module_id;
  uint64_t timestamp_ms;
  uint8_t pcrs[CAGE_ATTEST_NPCRS][CAGE_ATTEST_PCR_LEN];
  const uint8_t *cert_der;      /* the signing key's certificate */
  size_t cert_len;
  const uint8_t *const *bundle; /* DER certificates, root first */
  const size_t *bundle_len;
  size_t nbundle;
  const uint8_t *public_key;    /* NULL: CBOR null */
  size_t public_key_len;
  const uint8_t *user_data;     /* NULL: CBOR null */
  size_t user_data_len;
  const uint8_t *nonce;         /* NULL: CBOR null */
  size_t nonce_len;
} cage_attest_fields;

/* The payload (CBOR map) and the Sig_structure to sign over it; both malloc'd, the caller's.
 * -EINVAL for a missing module_id or certificate, a field over CAGE_ATTEST_MAX_FIELD or more
 * than CAGE_ATTEST_MAX_BUNDLE bundle entries; -ENOMEM. */
int cage_attest_encode_tbs(const cage_attest_fields *f, uint8_t **ret_payload,
                           size_t *ret_payload_len, uint8_t **ret_tbs, size_t *ret_tbs_len);
/* The COSE_Sign1 (untagged, as Nitro sends it) of a payload and its signature; malloc'd. */
int cage_attest_encode_cose(const uint8_t *payload, size_t payload_len,
                            const uint8_t sig[CAGE_ATTEST_SIG_LEN], uint8_t **ret_doc,
                            size_t *ret_doc_len);
/* Both steps, signing with a key held here (P-384): for the tests and the test tool only; the
 * server signs in the enclave (cage_attest_doc_build). */
int cage_attest_sign_local(const cage_attest_fields *f, EVP_PKEY *key, uint8_t **ret_doc,
                           size_t *ret_doc_len);

/* ---- verifying ------------------------------------------------------------------------------ */

/* What the verifier checks against. root_der is required; the rest is checked when set. */
typedef struct cage_attest_expect {
  const uint8_t *root_der;      /* the evserver attestation root the user pinned */
  size_t root_len;
  /* expected PCRs by index (NULL: not checked); evctl and the SDK check 0, 1, 2 and 8 */
  const uint8_t *pcrs[CAGE_ATTEST_NPCRS];
  const uint8_t *spki_der;      /* the SubjectPublicKeyInfo the document must name */
  size_t spki_len;
  const uint8_t *nonce;
  size_t nonce_len;
  int64_t now_s;                /* certificate validity at this time; 0: now */
} cage_attest_expect;

/* What a verified document says. The byte fields point into `owned`, a copy made for this
 * struct: release it with cage_attest_doc_done. */
typedef struct cage_attest_doc {
  const char *module_id;        /* module_id_buf of this struct (re-point it after a copy) */
  char module_id_buf[128];
  char digest[16];
  uint64_t timestamp_ms;
  uint8_t pcrs[CAGE_ATTEST_NPCRS][CAGE_ATTEST_PCR_LEN];
  uint32_t pcr_mask;            /* which indexes the document had */
  const uint8_t *public_key;
  size_t public_key_len;
  const uint8_t *user_data;
  size_t user_data_len;
  const uint8_t *nonce;
  size_t nonce_len;
  const uint8_t *cert_der;
  size_t cert_len;
  uint8_t *owned;
} cage_attest_doc;
/* Frees what a parse or verify left in d (accepts a zeroed struct); d is zeroed. */
void cage_attest_doc_done(cage_attest_doc *d);

/* Parses and verifies doc[0..len) (COSE_Sign1, tagged 18 or not): structure, ES384, the
 * certificate chain (certificate, then cabundle's intermediates, up to exactly root_der; the
 * document's own bundle root is not trusted), the signature, then the expected PCRs, public
 * key and nonce. Returns 0 and fills *ret (may be NULL), or the first failure: -EINVAL (no
 * root), CAGE_ATTEST_E*, -ENOMEM. Reads untrusted input: bounded by CAGE_ATTEST_MAX_DOC. */
int cage_attest_verify(const uint8_t *doc, size_t len, const cage_attest_expect *exp,
                       cage_attest_doc *ret);
/* Parses without any check beyond structure (for printing a refused document, and the fuzz
 * target): 0 (*ret filled: cage_attest_doc_done it) or CAGE_ATTEST_EFORMAT / -ENOMEM. */
int cage_attest_parse(const uint8_t *doc, size_t len, cage_attest_doc *ret);
/* A short English reason for a status of the calls above. */
const char *cage_attest_strerror(int status);
/* The DER SubjectPublicKeyInfo of a DER certificate (malloc'd), for public_key. 0 or -EINVAL. */
int cage_attest_spki_of_cert(const uint8_t *cert_der, size_t len, uint8_t **ret_spki,
                             size_t *ret_len);

/* ---- the plugin's call ----------------------------------------------------------------------
 * Builds and signs a document in the server: asks the crypto provider (the enclave plugin) for
 * the node's attestation chain ("attest_chain") and for the signature ("attest_sign"), and calls
 * cb(arg, 0, doc, len) with the COSE bytes (valid during the call), or cb(arg, status, NULL, 0)
 * with EVS_ENOCRYPTO (the enclave is down or has no attestation key yet: retry), -ENOMEM,
 * -EPROTO. Returns 0 (cb runs exactly once, later, on the loop) or a negative errno (-EINVAL,
 * EVS_ENOCRYPTO without a provider; cb never runs). Everything in req is copied. */
typedef struct cage_attest_request {
  uint32_t size;                /* sizeof(cage_attest_request) */
  const char *module_id;        /* e.g. "evserver-kvm-<cage uuid>" (1..127 bytes) */
  const uint8_t *pcr0, *pcr1, *pcr2, *pcr8; /* 48 bytes each; NULL: zero */
  int debug;                    /* 1: every PCR zero, whatever was given */
  const uint8_t *public_key;    /* DER SubjectPublicKeyInfo of the cage's TLS certificate */
  size_t public_key_len;
  const uint8_t *user_data;     /* NULL: none */
  size_t user_data_len;
  const uint8_t *nonce;         /* NULL: none */
  size_t nonce_len;
} cage_attest_request;
typedef void (*cage_attest_doc_cb)(void *arg, int status, const uint8_t *doc, size_t len);
int cage_attest_doc_build(const evs_host *host, evs_plugin *p, const cage_attest_request *req,
                          cage_attest_doc_cb cb, void *arg);

#endif
