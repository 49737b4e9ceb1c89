/*
 * ca.c: the Outbound Relay's certificate authority, inside the enclave (enclave/README.md, "The
 * relay CA"). The relay terminates TLS inside a CONNECT tunnel with a leaf certificate for the
 * destination host, which clients (the Evervault SDKs) accept because they trust this CA; whoever
 * holds the CA key can therefore impersonate any host to those clients, so the key is made here
 * and leaves the enclave only sealed with the sealing key, like the app key shares.
 *
 * The enclave keeps no CA state of its own: the plugin stores the certificate and the sealed key
 * and sends both with every CA_SIGN. The last pair unsealed is cached (keyed by a hash of both),
 * so signing costs one ECDSA signature, and a restarted enclave or a rotated CA just works.
 * Every input (SANs, the leaf's public key, the CA certificate) is checked before OpenSSL builds
 * anything from it. Nothing here logs.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "enclave.h"
#include "x509_make.h"

static const uint8_t ca_magic[4] = {'E', 'V', 'C', 1};
static const char ca_label[] = "evserver-enclave relay-ca v1";
#define CA_DEFAULT_CN "evserver Outbound Relay CA"

/* ---- names ---------------------------------------------------------------------------------- */

static int is_alnum(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

int evs__ca_name_kind(const uint8_t *s, size_t len, uint8_t ip[16], size_t *ip_len) {
  uint8_t tmp[16];
  if (!ip) ip = tmp;
  if (!s || len == 0 || len > EVS_CA_NAME_MAX) return 0;
  char buf[EVS_CA_NAME_MAX + 1];
  memcpy(buf, s, len);
  buf[len] = 0;
  if (memchr(s, 0, len)) return 0;
  if (memchr(s, ':', len)) { /* IPv6: inet_pton refuses brackets, zones and garbage */
    if (len > 45 || inet_pton(AF_INET6, buf, ip) != 1) return 0;
    if (ip_len) *ip_len = 16;
    return EVS_CA_NAME_IP;
  }
  int all_numeric = 1;
  size_t label = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || s[i] == '.') {
      if (label == 0 || label > 63) return 0;       /* empty label, trailing dot, too long */
      if (s[i - 1] == '-' || s[i - label] == '-') return 0;
      label = 0;
      continue;
    }
    if (!is_alnum(s[i]) && s[i] != '-') return 0; /* no '*', '_', spaces, UTF-8 */
    if (s[i] < '0' || s[i] > '9') all_numeric = 0;
    label++;
  }
  if (all_numeric) { /* digits and dots: an IPv4 address in its one strict form, or nothing */
    if (inet_pton(AF_INET, buf, ip) != 1) return 0;
    if (ip_len) *ip_len = 4;
    return EVS_CA_NAME_IP;
  }
  return EVS_CA_NAME_DNS;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static X509 *parse_pem_cert(const uint8_t *pem, size_t len) {
  if (len == 0 || len > EVS_CA_PEM_MAX) return NULL;
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  return x;
}

/* ---- create --------------------------------------------------------------------------------- */

int evs__ca_create(evs_enclave *e, const uint8_t *cn, size_t cn_len, uint32_t days,
                   char **ret_pem, size_t *ret_pem_len, uint8_t **ret_sealed,
                   size_t *ret_sealed_len) {
  char name[EVS_CA_CN_MAX + 1];
  if (cn_len > EVS_CA_CN_MAX || days > EVS_CA_MAX_DAYS) return EVS_EP_E_INVALID;
  for (size_t i = 0; i < cn_len; i++)
    if (cn[i] < 0x20 || cn[i] > 0x7e) return EVS_EP_E_INVALID;
  if (cn_len) {
    memcpy(name, cn, cn_len);
    name[cn_len] = 0;
  } else {
    strcpy(name, CA_DEFAULT_CN);
  }
  if (days == 0) days = EVS_CA_DEFAULT_DAYS;

  int32_t r = EVS_EP_E_INTERNAL;
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = key ? evs_x509_self_signed_ca(key, name, days, EVP_sha256()) : NULL;
  uint8_t *sealed = NULL;
  size_t sealed_len = 0;
  char *pem = NULL;
  size_t pem_len = 0;
  if (!x) goto done;

  /* The private key, sealed (sealed_key.c). */
  if (evs__seal_key(e, ca_magic, ca_label, sizeof ca_label, key, &sealed, &sealed_len) < 0)
    goto done;
  if (evs_x509_pem(x, &pem, &pem_len) < 0) goto done;
  *ret_pem = pem;
  *ret_pem_len = pem_len;
  *ret_sealed = sealed;
  *ret_sealed_len = sealed_len;
  pem = NULL;
  sealed = NULL;
  r = EVS_EP_OK;
done:
  free(sealed);
  free(pem);
  X509_free(x);
  EVP_PKEY_free(key);
  return r;
}

/* ---- sign ----------------------------------------------------------------------------------- */

static EVP_PKEY *parse_leaf_key(const uint8_t *spki, size_t len, int *ret_rsa) {
  if (len == 0 || len > EVS_CA_SPKI_MAX) return NULL;
  EVP_PKEY *k = NULL;
  if (len > 11 && memcmp(spki, "-----BEGIN ", 11) == 0) {
    BIO *b = BIO_new_mem_buf(spki, (int)len);
    k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
  } else {
    const uint8_t *p = spki;
    k = d2i_PUBKEY(NULL, &p, (long)len);
    if (k && p != spki + len) { /* trailing bytes */
      EVP_PKEY_free(k);
      k = NULL;
    }
  }
  if (!k) return NULL;
  int ok = 0, bits = EVP_PKEY_get_bits(k);
  *ret_rsa = 0;
  switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_EC: {
      char group[32];
      size_t gl = 0;
      ok = EVP_PKEY_get_group_name(k, group, sizeof group, &gl) == 1 &&
           (strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0 ||
            strcmp(group, "secp521r1") == 0);
      break;
    }
    case EVP_PKEY_RSA:
      ok = bits >= 2048 && bits <= 8192;
      *ret_rsa = 1;
      break;
    case EVP_PKEY_ED25519: ok = 1; break;
    default: break;
  }
  if (!ok) {
    EVP_PKEY_free(k);
    return NULL;
  }
  return k;
}

static GENERAL_NAMES *make_sans(const evs_ep_item *names, size_t n) {
  GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
  if (!gens) return NULL;
  for (size_t i = 0; i < n; i++) {
    uint8_t ip[16];
    size_t ip_len = 0;
    int kind = evs__ca_name_kind(names[i].p, names[i].len, ip, &ip_len);
    GENERAL_NAME *g = GENERAL_NAME_new();
    ASN1_STRING *s = ASN1_STRING_type_new(kind == EVS_CA_NAME_IP ? V_ASN1_OCTET_STRING
                                                                 : V_ASN1_IA5STRING);
    int ok = g && s && kind;
    if (ok && kind == EVS_CA_NAME_IP) {
      ok = ASN1_STRING_set(s, ip, (int)ip_len) == 1;
      if (ok) GENERAL_NAME_set0_value(g, GEN_IPADD, s);
    } else if (ok) {
      char lower[EVS_CA_NAME_MAX];
      for (size_t j = 0; j < names[i].len; j++) {
        uint8_t c = names[i].p[j];
        lower[j] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
      }
      ok = ASN1_STRING_set(s, lower, (int)names[i].len) == 1;
      if (ok) GENERAL_NAME_set0_value(g, GEN_DNS, s);
    }
    if (ok) s = NULL; /* owned by g */
    if (ok && !sk_GENERAL_NAME_push(gens, g)) ok = 0;
    if (!ok) {
      ASN1_STRING_free(s); /* not yet g's */
      GENERAL_NAME_free(g);
      GENERAL_NAMES_free(gens);
      return NULL;
    }
  }
  return gens;
}

int evs__ca_sign(evs_enclave *e, const uint8_t *ca_pem, size_t ca_pem_len, const uint8_t *sealed,
                 size_t sealed_len, const uint8_t *spki, size_t spki_len, uint32_t validity_s,
                 const evs_ep_item *names, size_t nnames, char **ret_pem, size_t *ret_pem_len) {
  if (nnames == 0 || nnames > EVS_CA_MAX_NAMES) return EVS_EP_E_INVALID;
  for (size_t i = 0; i < nnames; i++)
    if (!evs__ca_name_kind(names[i].p, names[i].len, NULL, NULL)) return EVS_EP_E_INVALID;
  if (validity_s == 0) validity_s = EVS_CA_LEAF_DEFAULT_S;
  if (validity_s < 60 || validity_s > EVS_CA_LEAF_MAX_S) return EVS_EP_E_INVALID;
  int rsa = 0;
  EVP_PKEY *leaf_key = parse_leaf_key(spki, spki_len, &rsa);
  if (!leaf_key) return EVS_EP_E_INVALID;
  /* The CA, unsealed or as the last CA_SIGN left it. */
  evs_key_cache *ca = evs__key_cache_open(evs__enclave_ca(e), e, ca_magic, ca_label,
                                          sizeof ca_label, ca_pem, ca_pem_len, parse_pem_cert,
                                          sealed, sealed_len);
  if (!ca) {
    EVP_PKEY_free(leaf_key);
    return EVS_EP_E_INVALID;
  }

  int32_t r = EVS_EP_E_INVALID;
  time_t now = time(NULL);
  time_t until = now + (time_t)validity_s;
  X509 *x = NULL;
  GENERAL_NAMES *gens = NULL;
  char *pem = NULL;
  size_t pem_len = 0;
  /* An expired CA (or one not yet valid) signs nothing; a leaf never outlives its CA. */
  if (X509_cmp_time(X509_get0_notAfter(ca->cert), &now) <= 0 ||
      X509_cmp_time(X509_get0_notBefore(ca->cert), &now) >= 0)
    goto done;
  r = EVS_EP_E_INTERNAL;
  /* A subject without a CN (a name over 64 bytes) makes the SAN extension critical (RFC 5280). */
  int cn = names[0].len <= EVS_CA_CN_MAX;
  const evs_x509_ext exts[] = {
      {NID_basic_constraints, "critical,CA:FALSE"},
      {NID_key_usage,
       rsa ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature"},
      {NID_ext_key_usage, "serverAuth"},
      {NID_subject_key_identifier, "hash"},
      {NID_authority_key_identifier, "keyid:always"},
  };
  const int capped = X509_cmp_time(X509_get0_notAfter(ca->cert), &until) < 0;
  evs_x509_spec spec = {.cn = cn ? (const char *)names[0].p : NULL, .cn_len = names[0].len,
                        .key = leaf_key, .issuer = ca->cert,
                        .not_before = now - EVS_CA_LEAF_BACKDATE_S, .not_after = until,
                        .not_after_as = capped ? X509_get0_notAfter(ca->cert) : NULL,
                        .exts = exts, .n_exts = sizeof exts / sizeof exts[0]};
  if (!(gens = make_sans(names, nnames)) || !(x = evs_x509_draft(&spec)) ||
      X509_add1_ext_i2d(x, NID_subject_alt_name, gens, !cn, X509V3_ADD_DEFAULT) != 1 ||
      X509_sign(x, ca->key, EVP_sha256()) <= 0 || evs_x509_pem(x, &pem, &pem_len) < 0)
    goto done;
  *ret_pem = pem;
  *ret_pem_len = pem_len;
  r = EVS_EP_OK;
done:
  GENERAL_NAMES_free(gens);
  X509_free(x);
  EVP_PKEY_free(leaf_key);
  return r;
}
