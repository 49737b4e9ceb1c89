/*
 * attest.c: the attestation keys of Cages, inside the enclave (enclave/README.md, "The
 * attestation keys"). Whoever holds the node's attestation key can vouch for any PCRs and any
 * TLS key to every client that pinned the evserver attestation root, so both keys are made here
 * and leave the enclave only sealed, exactly as the relay CA's key (ca.c):
 *
 *   root  P-384, self-signed, one per cluster: made once (ATTEST_ROOT_CREATE), its certificate
 *         and sealed key kept in the store by the enclave plugin, used only to certify nodes;
 *   node  P-384, one per node, certified by the root at the node's first start
 *         (ATTEST_NODE_CREATE); it signs documents (ATTEST_SIGN).
 *
 * The enclave keeps no attestation state: the plugin sends the certificate and sealed key with
 * each request, and the last node key unsealed is cached (keyed by a hash of both). ATTEST_SIGN
 * signs only COSE Sig_structures ("Signature1" first), so the node key cannot be made to sign a
 * certificate, a TLS handshake or anything else. Nothing here logs.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "enclave.h"
#include "x509_make.h"

static const uint8_t att_magic[4] = {'E', 'V', 'A', 1};
static const char root_label[] = "evserver-enclave attest-root v1";
static const char node_label[] = "evserver-enclave attest-node v1";
#define ROOT_DEFAULT_CN "evserver attestation root"
/* ["Signature1", ...: array(4), text(10) */
static const uint8_t sig_structure_prefix[] = {0x84, 0x6a, 'S', 'i', 'g', 'n', 'a', 't',
                                               'u', 'r', 'e', '1'};

/* ---- helpers -------------------------------------------------------------------------------- */

static X509 *parse_der(const uint8_t *p, size_t len) {
  if (len == 0 || len > EVS_CA_PEM_MAX) return NULL;
  const uint8_t *q = p;
  X509 *x = d2i_X509(NULL, &q, (long)len);
  if (x && q != p + len) {
    X509_free(x);
    return NULL;
  }
  return x;
}

static int is_p384(EVP_PKEY *k) {
  char group[32];
  size_t gl = 0;
  return k && EVP_PKEY_get_base_id(k) == EVP_PKEY_EC &&
         EVP_PKEY_get_group_name(k, group, sizeof group, &gl) == 1 &&
         strcmp(group, "secp384r1") == 0;
}

/* A certificate whose key can be a root's or a node's (P-384), else NULL. */
static X509 *parse_p384_der(const uint8_t *p, size_t len) {
  X509 *x = parse_der(p, len);
  if (x && !is_p384(X509_get0_pubkey(x))) {
    X509_free(x);
    return NULL;
  }
  return x;
}

static int valid_now(X509 *x) {
  time_t now = time(NULL);
  return X509_cmp_time(X509_get0_notAfter(x), &now) > 0 &&
         X509_cmp_time(X509_get0_notBefore(x), &now) < 0;
}

static int name_ok(const uint8_t *s, size_t len) {
  if (len > EVS_CA_CN_MAX) return 0;
  for (size_t i = 0; i < len; i++)
    if (s[i] < 0x20 || s[i] > 0x7e) return 0;
  return 1;
}

/* What ROOT_CREATE and NODE_CREATE answer: x's DER and key sealed under label, both malloc'd
 * and written only on success. EVS_EP_OK or EVS_EP_E_INTERNAL. */
static int32_t cert_and_key(evs_enclave *e, const char *label, size_t label_len, X509 *x,
                            EVP_PKEY *key, uint8_t **ret_der, size_t *ret_der_len,
                            uint8_t **ret_sealed, size_t *ret_sealed_len) {
  uint8_t *der = NULL, *sealed = NULL;
  size_t der_len = 0, sealed_len = 0;
  if (evs__seal_key(e, att_magic, label, label_len, key, &sealed, &sealed_len) < 0 ||
      evs_x509_der(x, &der, &der_len) < 0) {
    free(sealed);
    return EVS_EP_E_INTERNAL;
  }
  *ret_der = der;
  *ret_der_len = der_len;
  *ret_sealed = sealed;
  *ret_sealed_len = sealed_len;
  return EVS_EP_OK;
}

/* ---- the root ------------------------------------------------------------------------------- */

int evs__attest_root_create(evs_enclave *e, const uint8_t *cn, size_t cn_len, uint32_t days,
                            uint8_t **ret_der, size_t *ret_der_len, uint8_t **ret_sealed,
                            size_t *ret_sealed_len) {
  if (!name_ok(cn, cn_len) || days > EVS_CA_MAX_DAYS) return EVS_EP_E_INVALID;
  char name[EVS_CA_CN_MAX + 1];
  if (cn_len) memcpy(name, cn, cn_len);
  name[cn_len] = 0;
  if (!cn_len) strcpy(name, ROOT_DEFAULT_CN);
  if (days == 0) days = EVS_CA_DEFAULT_DAYS;
  EVP_PKEY *key = EVP_EC_gen("P-384");
  X509 *x = key ? evs_x509_self_signed_ca(key, name, days, EVP_sha384()) : NULL;
  int32_t r = x ? cert_and_key(e, root_label, sizeof root_label, x, key, ret_der, ret_der_len,
                               ret_sealed, ret_sealed_len)
                : EVS_EP_E_INTERNAL;
  X509_free(x);
  EVP_PKEY_free(key);
  return r;
}

/* ---- a node --------------------------------------------------------------------------------- */

int evs__attest_node_create(evs_enclave *e, const uint8_t *root_der, size_t root_len,
                            const uint8_t *root_sealed, size_t root_sealed_len,
                            const uint8_t *name, size_t name_len, uint8_t **ret_der,
                            size_t *ret_der_len, uint8_t **ret_sealed, size_t *ret_sealed_len) {
  if (name_len == 0 || !name_ok(name, name_len)) return EVS_EP_E_INVALID;
  X509 *root = parse_p384_der(root_der, root_len);
  EVP_PKEY *root_key = root ? evs__unseal_key(e, att_magic, root_label, sizeof root_label,
                                              X509_get0_pubkey(root), root_sealed,
                                              root_sealed_len)
                            : NULL;
  int32_t r = EVS_EP_E_INVALID;
  EVP_PKEY *key = NULL;
  X509 *x = NULL;
  if (!root_key || !valid_now(root)) goto done;
  r = EVS_EP_E_INTERNAL;
  /* Valid as long as the root: a node certificate is renewed only with a new root. */
  evs_x509_spec spec = {.o = "evserver", .ou = "attestation node", .cn = (const char *)name,
                        .cn_len = name_len, .issuer = root, .not_before = time(NULL) - 300,
                        .not_after_as = X509_get0_notAfter(root), .exts = evs_x509_signer_exts,
                        .n_exts = 4};
  if (!(key = EVP_EC_gen("P-384"))) goto done;
  spec.key = key;
  if (!(x = evs_x509_draft(&spec)) || X509_sign(x, root_key, EVP_sha384()) <= 0) goto done;
  r = cert_and_key(e, node_label, sizeof node_label, x, key, ret_der, ret_der_len, ret_sealed,
                   ret_sealed_len);
done:
  X509_free(x);
  EVP_PKEY_free(key);
  EVP_PKEY_free(root_key);
  X509_free(root);
  return r;
}

/* The node key for this certificate and blob, unsealed or as the last call left it. */
static evs_key_cache *node_open(evs_enclave *e, const uint8_t *cert, size_t cert_len,
                                const uint8_t *sealed, size_t sealed_len) {
  return evs__key_cache_open(evs__enclave_attest(e), e, att_magic, node_label, sizeof node_label,
                             cert, cert_len, parse_p384_der, sealed, sealed_len);
}

int evs__attest_chain(evs_enclave *e, const uint8_t *root_der, size_t root_len,
                      const uint8_t *node_der, size_t node_len, const uint8_t *sealed,
                      size_t sealed_len) {
  X509 *root = parse_der(root_der, root_len);
  evs_key_cache *c = root ? node_open(e, node_der, node_len, sealed, sealed_len) : NULL;
  EVP_PKEY *rk = root ? X509_get0_pubkey(root) : NULL;
  int ok = c && is_p384(rk) && valid_now(root) && valid_now(c->cert) &&
           X509_check_issued(root, c->cert) == X509_V_OK && X509_verify(c->cert, rk) == 1;
  X509_free(root);
  return ok ? EVS_EP_OK : EVS_EP_E_INVALID;
}

int evs__attest_sign(evs_enclave *e, const uint8_t *node_der, size_t node_len,
                     const uint8_t *sealed, size_t sealed_len, const uint8_t *tbs, size_t tbs_len,
                     uint8_t sig[EVS_ATTEST_SIG_LEN]) {
  if (tbs_len < sizeof sig_structure_prefix || tbs_len > EVS_ATTEST_TBS_MAX ||
      memcmp(tbs, sig_structure_prefix, sizeof sig_structure_prefix) != 0)
    return EVS_EP_E_INVALID;
  evs_key_cache *c = node_open(e, node_der, node_len, sealed, sealed_len);
  if (!c || !valid_now(c->cert)) return EVS_EP_E_INVALID;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  uint8_t der[128];
  size_t der_len = sizeof der;
  int32_t r = EVS_EP_E_INTERNAL;
  if (md && EVP_DigestSignInit(md, NULL, EVP_sha384(), NULL, c->key) == 1 &&
      EVP_DigestSign(md, der, &der_len, tbs, tbs_len) == 1) {
    const uint8_t *p = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    const BIGNUM *br = NULL, *bs = NULL;
    if (s) ECDSA_SIG_get0(s, &br, &bs);
    if (s && BN_bn2binpad(br, sig, 48) == 48 && BN_bn2binpad(bs, sig + 48, 48) == 48)
      r = EVS_EP_OK;
    ECDSA_SIG_free(s);
  }
  EVP_MD_CTX_free(md);
  return r;
}
