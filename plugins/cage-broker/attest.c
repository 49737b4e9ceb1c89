/*
 * attest.c: encoding and verifying Nitro-format attestation documents (attest.h), and the
 * plugin's asynchronous call that has the enclave sign one.
 *
 * CBOR goes through libcbor both ways. Before libcbor loads untrusted bytes, precheck() walks
 * their headers once: libcbor allocates an array or map of the size a header claims before it
 * reads the elements, so a 10-byte input claiming 2^40 entries would ask for terabytes; the
 * walk refuses any count larger than the bytes left, indefinite lengths (Nitro never sends them)
 * and nesting deeper than a document has. Everything after that is type-checked item by item.
 */
#include "attest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cbor.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#define MAX_DEPTH 6

static const uint8_t protected_es384[] = {0xa1, 0x01, 0x38, 0x22}; /* {1: -35} */

/* ---- untrusted CBOR: a bounded walk before libcbor ------------------------------------------ */

/* Reads one header at *pos: major type, argument. -1 when truncated or reserved/indefinite. */
static int head(const uint8_t *p, size_t len, size_t *pos, int *major, uint64_t *arg) {
  if (*pos >= len) return -1;
  uint8_t b = p[(*pos)++];
  *major = b >> 5;
  uint8_t ai = b & 0x1f;
  if (ai < 24) {
    *arg = ai;
    return 0;
  }
  if (ai > 27) return -1; /* 28..30 reserved, 31 indefinite */
  size_t n = (size_t)1 << (ai - 24);
  if (len - *pos < n) return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v = (v << 8) | p[(*pos)++];
  *arg = v;
  return 0;
}

static int walk(const uint8_t *p, size_t len, size_t *pos, int depth) {
  if (depth > MAX_DEPTH) return -1;
  int major;
  uint64_t arg;
  if (head(p, len, pos, &major, &arg) < 0) return -1;
  switch (major) {
    case 0:
    case 1: return 0;
    case 2:
    case 3:
      if (arg > len - *pos) return -1;
      *pos += (size_t)arg;
      return 0;
    case 4:
    case 5: {
      uint64_t n = major == 5 ? arg * 2 : arg;
      if (arg > len - *pos || n > len - *pos) return -1; /* each item takes a byte at least */
      for (uint64_t i = 0; i < n; i++)
        if (walk(p, len, pos, depth + 1) < 0) return -1;
      return 0;
    }
    case 6: return walk(p, len, pos, depth + 1);
    default: return arg >= 20 && arg <= 22 ? 0 : -1; /* 7: only false, true, null */
  }
}

/* One complete CBOR item filling p[0..len), loaded by libcbor; NULL otherwise. */
static cbor_item_t *load(const uint8_t *p, size_t len) {
  size_t pos = 0;
  if (len == 0 || len > CAGE_ATTEST_MAX_DOC || walk(p, len, &pos, 0) < 0 || pos != len) return NULL;
  struct cbor_load_result res;
  cbor_item_t *it = cbor_load(p, len, &res);
  if (it && (res.error.code != CBOR_ERR_NONE || res.read != len)) {
    cbor_decref(&it);
    return NULL;
  }
  return it;
}

static int is_bstr(const cbor_item_t *it) {
  return it && cbor_isa_bytestring(it) && cbor_bytestring_is_definite(it);
}

static int str_eq(const cbor_item_t *it, const char *s) {
  size_t n = strlen(s);
  return it && cbor_isa_string(it) && cbor_string_is_definite(it) && cbor_string_length(it) == n &&
         memcmp(cbor_string_handle(it), s, n) == 0;
}

/* ---- encoding ------------------------------------------------------------------------------- */

/* The shortest encoding of an unsigned integer, as Nitro's encoder writes it. */
static cbor_item_t *uint_min(uint64_t v) {
  if (v <= 0xff) return cbor_build_uint8((uint8_t)v);
  if (v <= 0xffff) return cbor_build_uint16((uint16_t)v);
  if (v <= 0xffffffffu) return cbor_build_uint32((uint32_t)v);
  return cbor_build_uint64(v);
}

static cbor_item_t *bstr_or_null(const uint8_t *p, size_t len) {
  return p ? cbor_build_bytestring(p, len) : cbor_new_null();
}

static int put(cbor_item_t *map, const char *key, cbor_item_t *value) {
  cbor_item_t *k = cbor_build_string(key);
  int ok = k && value && cbor_map_add(map, (struct cbor_pair){.key = k, .value = value});
  if (k) cbor_decref(&k);
  if (value) cbor_decref(&value);
  return ok ? 0 : -1;
}

static int serialize(const cbor_item_t *it, uint8_t **ret, size_t *ret_len) {
  unsigned char *buf = NULL;
  size_t cap = 0;
  size_t n = cbor_serialize_alloc(it, &buf, &cap);
  if (n == 0) {
    free(buf);
    return -ENOMEM;
  }
  *ret = buf;
  *ret_len = n;
  return 0;
}

/* Sig_structure = ["Signature1", protected, external_aad = h'', payload] (RFC 9052 §4.4). */
static int sig_structure(const uint8_t *payload, size_t len, uint8_t **ret, size_t *ret_len) {
  cbor_item_t *a = cbor_new_definite_array(4);
  int r = -ENOMEM;
  if (a && cbor_array_push(a, cbor_move(cbor_build_string("Signature1"))) &&
      cbor_array_push(a,
                      cbor_move(cbor_build_bytestring(protected_es384, sizeof protected_es384))) &&
      cbor_array_push(a, cbor_move(cbor_build_bytestring(NULL, 0))) &&
      cbor_array_push(a, cbor_move(cbor_build_bytestring(payload, len))))
    r = serialize(a, ret, ret_len);
  if (a) cbor_decref(&a);
  return r;
}

int cage_attest_encode_tbs(const cage_attest_fields *f, uint8_t **ret_payload,
                           size_t *ret_payload_len, uint8_t **ret_tbs, size_t *ret_tbs_len) {
  if (!f || !f->module_id || !*f->module_id || strlen(f->module_id) > 127 || !f->cert_der ||
      !f->cert_len || f->nbundle > CAGE_ATTEST_MAX_BUNDLE ||
      f->public_key_len > CAGE_ATTEST_MAX_FIELD || f->user_data_len > CAGE_ATTEST_MAX_FIELD ||
      f->nonce_len > CAGE_ATTEST_MAX_FIELD)
    return -EINVAL;
  int r = -ENOMEM;
  cbor_item_t *m = cbor_new_definite_map(9);
  cbor_item_t *pcrs = cbor_new_definite_map(CAGE_ATTEST_NPCRS);
  cbor_item_t *bundle = cbor_new_definite_array(f->nbundle);
  uint8_t *payload = NULL, *tbs = NULL;
  size_t payload_len = 0, tbs_len = 0;
  if (!m || !pcrs || !bundle) goto done;
  for (size_t i = 0; i < CAGE_ATTEST_NPCRS; i++) {
    cbor_item_t *k = uint_min(i), *v = cbor_build_bytestring(f->pcrs[i], CAGE_ATTEST_PCR_LEN);
    int ok = k && v && cbor_map_add(pcrs, (struct cbor_pair){.key = k, .value = v});
    if (k) cbor_decref(&k);
    if (v) cbor_decref(&v);
    if (!ok) goto done;
  }
  for (size_t i = 0; i < f->nbundle; i++)
    if (!cbor_array_push(bundle, cbor_move(cbor_build_bytestring(f->bundle[i], f->bundle_len[i]))))
      goto done;
  cbor_item_t *p = pcrs, *b = bundle;
  pcrs = bundle = NULL; /* put() takes them */
  if (put(m, "module_id", cbor_build_string(f->module_id)) < 0 ||
      put(m, "digest", cbor_build_string("SHA384")) < 0 ||
      put(m, "timestamp", uint_min(f->timestamp_ms)) < 0 || put(m, "pcrs", p) < 0 ||
      put(m, "certificate", cbor_build_bytestring(f->cert_der, f->cert_len)) < 0 ||
      put(m, "cabundle", b) < 0 ||
      put(m, "public_key", bstr_or_null(f->public_key, f->public_key_len)) < 0 ||
      put(m, "user_data", bstr_or_null(f->user_data, f->user_data_len)) < 0 ||
      put(m, "nonce", bstr_or_null(f->nonce, f->nonce_len)) < 0)
    goto done;
  if ((r = serialize(m, &payload, &payload_len)) < 0) goto done;
  if ((r = sig_structure(payload, payload_len, &tbs, &tbs_len)) < 0) goto done;
  *ret_payload = payload;
  *ret_payload_len = payload_len;
  *ret_tbs = tbs;
  *ret_tbs_len = tbs_len;
  payload = tbs = NULL;
  r = 0;
done:
  free(payload);
  free(tbs);
  if (m) cbor_decref(&m);
  if (pcrs) cbor_decref(&pcrs);
  if (bundle) cbor_decref(&bundle);
  return r;
}

int cage_attest_encode_cose(const uint8_t *payload, size_t payload_len,
                            const uint8_t sig[CAGE_ATTEST_SIG_LEN], uint8_t **ret_doc,
                            size_t *ret_doc_len) {
  cbor_item_t *a = cbor_new_definite_array(4);
  int r = -ENOMEM;
  if (a &&
      cbor_array_push(a,
                      cbor_move(cbor_build_bytestring(protected_es384, sizeof protected_es384))) &&
      cbor_array_push(a, cbor_move(cbor_new_definite_map(0))) &&
      cbor_array_push(a, cbor_move(cbor_build_bytestring(payload, payload_len))) &&
      cbor_array_push(a, cbor_move(cbor_build_bytestring(sig, CAGE_ATTEST_SIG_LEN))))
    r = serialize(a, ret_doc, ret_doc_len);
  if (a) cbor_decref(&a);
  return r;
}

/* ECDSA P-384 over SHA-384, as raw r || s (COSE's form, not DER). */
static int sign_raw(EVP_PKEY *key, const uint8_t *tbs, size_t len, uint8_t out[96]) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  uint8_t der[128];
  size_t der_len = sizeof der;
  int r = -EINVAL;
  if (md && EVP_DigestSignInit(md, NULL, EVP_sha384(), NULL, key) == 1 &&
      EVP_DigestSign(md, der, &der_len, tbs, len) == 1) {
    const uint8_t *p = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    const BIGNUM *br = NULL, *bs = NULL;
    if (s) ECDSA_SIG_get0(s, &br, &bs);
    if (s && BN_bn2binpad(br, out, 48) == 48 && BN_bn2binpad(bs, out + 48, 48) == 48) r = 0;
    ECDSA_SIG_free(s);
  }
  EVP_MD_CTX_free(md);
  return r;
}

int cage_attest_sign_local(const cage_attest_fields *f, EVP_PKEY *key, uint8_t **ret_doc,
                           size_t *ret_doc_len) {
  uint8_t *payload = NULL, *tbs = NULL, sig[96];
  size_t pl = 0, tl = 0;
  int r = cage_attest_encode_tbs(f, &payload, &pl, &tbs, &tl);
  if (r == 0) r = sign_raw(key, tbs, tl, sig);
  if (r == 0) r = cage_attest_encode_cose(payload, pl, sig, ret_doc, ret_doc_len);
  free(payload);
  free(tbs);
  return r;
}

/* ---- parsing -------------------------------------------------------------------------------- */

typedef struct parsed {
  cbor_item_t *cose, *payload;
  const uint8_t *prot, *pay, *sig, *cert;
  size_t prot_len, pay_len, sig_len, cert_len;
  const uint8_t *bundle[CAGE_ATTEST_MAX_BUNDLE];
  size_t bundle_len[CAGE_ATTEST_MAX_BUNDLE], nbundle;
} parsed;

static void parsed_done(parsed *ps) {
  if (ps->cose) cbor_decref(&ps->cose);
  if (ps->payload) cbor_decref(&ps->payload);
}

void cage_attest_doc_done(cage_attest_doc *d) {
  if (!d) return;
  free(d->owned);
  memset(d, 0, sizeof *d);
}

/* libcbor copies byte strings into its items, which parsed_done frees: the fields a caller
 * keeps are copied into one buffer of the doc's own. */
static int own_fields(cage_attest_doc *d) {
  const uint8_t **f[4] = {&d->cert_der, &d->public_key, &d->user_data, &d->nonce};
  size_t *l[4] = {&d->cert_len, &d->public_key_len, &d->user_data_len, &d->nonce_len};
  size_t total = 1;
  for (int i = 0; i < 4; i++) total += *f[i] ? *l[i] : 0;
  uint8_t *buf = malloc(total), *p = buf;
  if (!buf) return -ENOMEM;
  for (int i = 0; i < 4; i++) {
    if (!*f[i]) continue;
    memcpy(p, *f[i], *l[i]);
    *f[i] = p;
    p += *l[i];
  }
  d->owned = buf;
  return 0;
}

/* bstr or null into (*p, *len); -1 for anything else or over the bound. */
static int opt_bstr(const cbor_item_t *v, const uint8_t **p, size_t *len) {
  if (cbor_is_null(v)) {
    *p = NULL;
    *len = 0;
    return 0;
  }
  if (!is_bstr(v) || cbor_bytestring_length(v) > CAGE_ATTEST_MAX_FIELD) return -1;
  *p = cbor_bytestring_handle(v);
  *len = cbor_bytestring_length(v);
  return 0;
}

static int parse_payload(parsed *ps, cage_attest_doc *d) {
  cbor_item_t *m = ps->payload = load(ps->pay, ps->pay_len);
  if (!m || !cbor_isa_map(m) || !cbor_map_is_definite(m)) return CAGE_ATTEST_EFORMAT;
  struct cbor_pair *kv = cbor_map_handle(m);
  unsigned seen = 0;
  for (size_t i = 0; i < cbor_map_size(m); i++) {
    cbor_item_t *k = kv[i].key, *v = kv[i].value;
    unsigned bit;
    if (str_eq(k, "module_id")) {
      bit = 1;
      size_t n = cbor_isa_string(v) && cbor_string_is_definite(v) ? cbor_string_length(v) : 0;
      if (n == 0 || n >= sizeof d->module_id_buf) return CAGE_ATTEST_EFORMAT;
      memcpy(d->module_id_buf, cbor_string_handle(v), n);
      d->module_id_buf[n] = 0;
      if (strlen(d->module_id_buf) != n) return CAGE_ATTEST_EFORMAT;
      d->module_id = d->module_id_buf;
    } else if (str_eq(k, "digest")) {
      bit = 2;
      if (!str_eq(v, "SHA384")) return CAGE_ATTEST_EFORMAT;
      strcpy(d->digest, "SHA384");
    } else if (str_eq(k, "timestamp")) {
      bit = 4;
      if (!cbor_isa_uint(v)) return CAGE_ATTEST_EFORMAT;
      d->timestamp_ms = cbor_get_int(v);
    } else if (str_eq(k, "pcrs")) {
      bit = 8;
      if (!cbor_isa_map(v) || !cbor_map_is_definite(v) || cbor_map_size(v) == 0 ||
          cbor_map_size(v) > CAGE_ATTEST_NPCRS)
        return CAGE_ATTEST_EFORMAT;
      struct cbor_pair *pp = cbor_map_handle(v);
      for (size_t j = 0; j < cbor_map_size(v); j++) {
        if (!cbor_isa_uint(pp[j].key) || cbor_get_int(pp[j].key) >= CAGE_ATTEST_NPCRS ||
            !is_bstr(pp[j].value) || cbor_bytestring_length(pp[j].value) != CAGE_ATTEST_PCR_LEN)
          return CAGE_ATTEST_EFORMAT;
        size_t idx = (size_t)cbor_get_int(pp[j].key);
        if (d->pcr_mask & (1u << idx)) return CAGE_ATTEST_EFORMAT; /* twice */
        d->pcr_mask |= 1u << idx;
        memcpy(d->pcrs[idx], cbor_bytestring_handle(pp[j].value), CAGE_ATTEST_PCR_LEN);
      }
    } else if (str_eq(k, "certificate")) {
      bit = 16;
      if (!is_bstr(v) || cbor_bytestring_length(v) == 0) return CAGE_ATTEST_EFORMAT;
      ps->cert = d->cert_der = cbor_bytestring_handle(v);
      ps->cert_len = d->cert_len = cbor_bytestring_length(v);
    } else if (str_eq(k, "cabundle")) {
      bit = 32;
      if (!cbor_isa_array(v) || !cbor_array_is_definite(v) || cbor_array_size(v) == 0 ||
          cbor_array_size(v) > CAGE_ATTEST_MAX_BUNDLE)
        return CAGE_ATTEST_EFORMAT;
      cbor_item_t **items = cbor_array_handle(v);
      for (size_t j = 0; j < cbor_array_size(v); j++) {
        if (!is_bstr(items[j]) || cbor_bytestring_length(items[j]) == 0) return CAGE_ATTEST_EFORMAT;
        ps->bundle[j] = cbor_bytestring_handle(items[j]);
        ps->bundle_len[j] = cbor_bytestring_length(items[j]);
      }
      ps->nbundle = cbor_array_size(v);
    } else if (str_eq(k, "public_key")) {
      bit = 64;
      if (opt_bstr(v, &d->public_key, &d->public_key_len) < 0) return CAGE_ATTEST_EFORMAT;
    } else if (str_eq(k, "user_data")) {
      bit = 128;
      if (opt_bstr(v, &d->user_data, &d->user_data_len) < 0) return CAGE_ATTEST_EFORMAT;
    } else if (str_eq(k, "nonce")) {
      bit = 256;
      if (opt_bstr(v, &d->nonce, &d->nonce_len) < 0) return CAGE_ATTEST_EFORMAT;
    } else {
      return CAGE_ATTEST_EFORMAT; /* an unknown key: not a document we understand */
    }
    if (seen & bit) return CAGE_ATTEST_EFORMAT; /* a key twice */
    seen |= bit;
  }
  /* public_key, user_data and nonce are optional in Nitro's definition; the rest is not. */
  return (seen & 63) == 63 ? 0 : CAGE_ATTEST_EFORMAT;
}

static int parse(const uint8_t *doc, size_t len, parsed *ps, cage_attest_doc *d) {
  memset(ps, 0, sizeof *ps);
  memset(d, 0, sizeof *d);
  /* COSE_Sign1_Tagged is tag 18 (one byte, 0xd2) around the array; Nitro sends the untagged
   * form. The tag is taken off here: Debian's libcbor 0.8 refuses tags it has no name for. */
  if (len > 0 && doc[0] == 0xd2) {
    doc++;
    len--;
  }
  cbor_item_t *top = ps->cose = load(doc, len);
  if (!top) return CAGE_ATTEST_EFORMAT;
  if (!cbor_isa_array(top) || !cbor_array_is_definite(top) || cbor_array_size(top) != 4)
    return CAGE_ATTEST_EFORMAT;
  cbor_item_t **a = cbor_array_handle(top);
  if (!is_bstr(a[0]) || !cbor_isa_map(a[1]) || !is_bstr(a[2]) || !is_bstr(a[3]))
    return CAGE_ATTEST_EFORMAT;
  ps->prot = cbor_bytestring_handle(a[0]);
  ps->prot_len = cbor_bytestring_length(a[0]);
  ps->pay = cbor_bytestring_handle(a[2]);
  ps->pay_len = cbor_bytestring_length(a[2]);
  ps->sig = cbor_bytestring_handle(a[3]);
  ps->sig_len = cbor_bytestring_length(a[3]);
  int r = parse_payload(ps, d);
  if (r < 0) return r;
  /* The algorithm: exactly {1: -35}, in any valid encoding of that map. */
  cbor_item_t *ph = load(ps->prot, ps->prot_len);
  int alg_ok = ph && cbor_isa_map(ph) && cbor_map_size(ph) == 1 &&
               cbor_isa_uint(cbor_map_handle(ph)[0].key) &&
               cbor_get_int(cbor_map_handle(ph)[0].key) == 1 &&
               cbor_isa_negint(cbor_map_handle(ph)[0].value) &&
               cbor_get_int(cbor_map_handle(ph)[0].value) == 34;
  if (ph) cbor_decref(&ph);
  if (!alg_ok) return CAGE_ATTEST_EALG;
  if (ps->sig_len != CAGE_ATTEST_SIG_LEN) return CAGE_ATTEST_ESIG;
  return 0;
}

int cage_attest_parse(const uint8_t *doc, size_t len, cage_attest_doc *ret) {
  parsed ps;
  cage_attest_doc d;
  int r = parse(doc, len, &ps, &d);
  if (r == 0 && ret) r = own_fields(&d);
  if (r == 0 && ret) {
    *ret = d;
    ret->module_id = d.module_id ? ret->module_id_buf : NULL;
  }
  parsed_done(&ps);
  return r;
}

/* ---- verifying ------------------------------------------------------------------------------ */

static X509 *der_cert(const uint8_t *p, size_t len) {
  if (!p || len == 0 || len > CAGE_ATTEST_MAX_DOC) return NULL;
  const uint8_t *q = p;
  X509 *x = d2i_X509(NULL, &q, (long)len);
  if (x && q != p + len) { /* trailing bytes */
    X509_free(x);
    return NULL;
  }
  return x;
}

/* certificate → intermediates from the bundle → exactly the pinned root. The bundle's own root
 * (its first entry) is only an untrusted hint, as every other entry. */
static int verify_chain(const parsed *ps, const cage_attest_expect *exp, X509 *leaf) {
  X509 *root = der_cert(exp->root_der, exp->root_len);
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  STACK_OF(X509) *untrusted = sk_X509_new_null();
  int r = CAGE_ATTEST_ECHAIN;
  if (!root) {
    r = -EINVAL;
    goto done;
  }
  if (!store || !ctx || !untrusted || X509_STORE_add_cert(store, root) != 1) {
    r = -ENOMEM;
    goto done;
  }
  for (size_t i = 0; i < ps->nbundle; i++) {
    X509 *x = der_cert(ps->bundle[i], ps->bundle_len[i]);
    if (!x) goto done;
    if (!sk_X509_push(untrusted, x)) {
      X509_free(x);
      r = -ENOMEM;
      goto done;
    }
  }
  if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1) {
    r = -ENOMEM;
    goto done;
  }
  X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(ctx);
  X509_VERIFY_PARAM_set_flags(vp, X509_V_FLAG_X509_STRICT);
  if (exp->now_s) X509_VERIFY_PARAM_set_time(vp, (time_t)exp->now_s);
  X509_VERIFY_PARAM_set_depth(vp, CAGE_ATTEST_MAX_BUNDLE);
  if (X509_verify_cert(ctx) == 1) r = 0;
done:
  sk_X509_pop_free(untrusted, X509_free);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(root);
  return r;
}

static int verify_sig(const parsed *ps, X509 *leaf) {
  EVP_PKEY *k = X509_get0_pubkey(leaf);
  char group[32];
  size_t gl = 0;
  if (!k || EVP_PKEY_get_base_id(k) != EVP_PKEY_EC ||
      EVP_PKEY_get_group_name(k, group, sizeof group, &gl) != 1 || strcmp(group, "secp384r1"))
    return CAGE_ATTEST_ESIG;
  /* The Sig_structure is rebuilt around the protected header exactly as received. */
  cbor_item_t *a = cbor_new_definite_array(4);
  uint8_t *tbs = NULL, *der = NULL;
  size_t tbs_len = 0;
  int der_len = 0, r = -ENOMEM;
  if (a && cbor_array_push(a, cbor_move(cbor_build_string("Signature1"))) &&
      cbor_array_push(a, cbor_move(cbor_build_bytestring(ps->prot, ps->prot_len))) &&
      cbor_array_push(a, cbor_move(cbor_build_bytestring(NULL, 0))) &&
      cbor_array_push(a, cbor_move(cbor_build_bytestring(ps->pay, ps->pay_len))))
    r = serialize(a, &tbs, &tbs_len);
  if (a) cbor_decref(&a);
  if (r < 0) return r;
  ECDSA_SIG *s = ECDSA_SIG_new();
  BIGNUM *br = BN_bin2bn(ps->sig, 48, NULL), *bs = BN_bin2bn(ps->sig + 48, 48, NULL);
  if (s && br && bs && ECDSA_SIG_set0(s, br, bs) == 1) {
    br = bs = NULL;
    der_len = i2d_ECDSA_SIG(s, &der);
  }
  BN_free(br);
  BN_free(bs);
  ECDSA_SIG_free(s);
  r = CAGE_ATTEST_ESIG;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (der_len > 0 && md && EVP_DigestVerifyInit(md, NULL, EVP_sha384(), NULL, k) == 1 &&
      EVP_DigestVerify(md, der, (size_t)der_len, tbs, tbs_len) == 1)
    r = 0;
  EVP_MD_CTX_free(md);
  OPENSSL_free(der);
  free(tbs);
  return r;
}

int cage_attest_verify(const uint8_t *doc, size_t len, const cage_attest_expect *exp,
                       cage_attest_doc *ret) {
  if (!exp || !exp->root_der || !exp->root_len) return -EINVAL;
  parsed ps;
  cage_attest_doc d;
  X509 *leaf = NULL;
  int r = parse(doc, len, &ps, &d);
  if (r < 0) goto done;
  if (!(leaf = der_cert(ps.cert, ps.cert_len))) {
    r = CAGE_ATTEST_ECHAIN;
    goto done;
  }
  if ((r = verify_chain(&ps, exp, leaf)) < 0) goto done;
  if ((r = verify_sig(&ps, leaf)) < 0) goto done;
  for (size_t i = 0; i < CAGE_ATTEST_NPCRS; i++)
    if (exp->pcrs[i] &&
        (!(d.pcr_mask & (1u << i)) || memcmp(exp->pcrs[i], d.pcrs[i], CAGE_ATTEST_PCR_LEN) != 0)) {
      r = CAGE_ATTEST_EPCR;
      goto done;
    }
  if (exp->spki_der && (!d.public_key || d.public_key_len != exp->spki_len ||
                        memcmp(d.public_key, exp->spki_der, exp->spki_len) != 0)) {
    r = CAGE_ATTEST_EKEY;
    goto done;
  }
  if (exp->nonce && (!d.nonce || d.nonce_len != exp->nonce_len ||
                     CRYPTO_memcmp(d.nonce, exp->nonce, exp->nonce_len) != 0)) {
    r = CAGE_ATTEST_ENONCE;
    goto done;
  }
  if (ret && (r = own_fields(&d)) < 0) goto done;
  if (ret) {
    *ret = d;
    ret->module_id = ret->module_id_buf; /* not into this frame's copy */
  }
  r = 0;
done:
  X509_free(leaf);
  parsed_done(&ps);
  return r;
}

const char *cage_attest_strerror(int status) {
  switch (status) {
    case 0: return "verified";
    case CAGE_ATTEST_EFORMAT: return "not a well-formed attestation document";
    case CAGE_ATTEST_EALG: return "the document is not signed with ES384";
    case CAGE_ATTEST_ECHAIN: return "the signing certificate does not chain to the given root";
    case CAGE_ATTEST_ESIG: return "the document's signature does not verify";
    case CAGE_ATTEST_EPCR: return "a PCR differs from the expected value";
    case CAGE_ATTEST_EKEY: return "the document is for another TLS key than the server's";
    case CAGE_ATTEST_ENONCE: return "the document's nonce is not the one asked for";
    case -EINVAL: return "invalid argument (the root certificate does not parse)";
    case -ENOMEM: return "out of memory";
    case EVS_ENOCRYPTO: return "the enclave is unavailable";
    default: return "attestation failed";
  }
}

int cage_attest_spki_of_cert(const uint8_t *cert_der, size_t len, uint8_t **ret_spki,
                             size_t *ret_len) {
  X509 *x = der_cert(cert_der, len);
  uint8_t *der = NULL;
  int n = x ? i2d_PUBKEY(X509_get0_pubkey(x), &der) : -1;
  X509_free(x);
  if (n <= 0) return -EINVAL;
  uint8_t *out = malloc((size_t)n);
  if (out) memcpy(out, der, (size_t)n);
  OPENSSL_free(der);
  if (!out) return -ENOMEM;
  *ret_spki = out;
  *ret_len = (size_t)n;
  return 0;
}

/* ---- the plugin's call: chain, then signature, from the enclave plugin ---------------------- */

typedef struct build_job {
  const evs_host *host;
  evs_plugin *p;
  cage_attest_doc_cb cb;
  void *arg;
  cage_attest_fields f;
  char module_id[128];
  uint8_t *pk, *ud, *nonce;
  uint8_t *cert, *root;
  size_t root_len;
  uint8_t *payload;
  size_t payload_len;
} build_job;

static void job_free(build_job *j) {
  free(j->pk);
  free(j->ud);
  free(j->nonce);
  free(j->cert);
  free(j->root);
  free(j->payload);
  free(j);
}

static void job_fail(build_job *j, int status) {
  j->cb(j->arg, status, NULL, 0);
  job_free(j);
}

/* result = items `u32 le length || bytes`; returns how many were read (<= max) or -1. */
static int items_of(const uint8_t *p, size_t len, const uint8_t **it, size_t *il, int max) {
  int n = 0;
  size_t pos = 0;
  while (pos < len) {
    if (n == max || len - pos < 4) return -1;
    uint32_t l = (uint32_t)p[pos] | (uint32_t)p[pos + 1] << 8 | (uint32_t)p[pos + 2] << 16 |
                 (uint32_t)p[pos + 3] << 24;
    pos += 4;
    if (l > len - pos) return -1;
    it[n] = p + pos;
    il[n++] = l;
    pos += l;
  }
  return n;
}

static void on_sig(void *arg, int status, const uint8_t *res, size_t len) {
  build_job *j = arg;
  const uint8_t *it[1];
  size_t il[1];
  if (status < 0) {
    job_fail(j, status);
    return;
  }
  if (items_of(res, len, it, il, 1) != 1 || il[0] != CAGE_ATTEST_SIG_LEN) {
    job_fail(j, -EPROTO);
    return;
  }
  uint8_t *doc = NULL;
  size_t doc_len = 0;
  int r = cage_attest_encode_cose(j->payload, j->payload_len, it[0], &doc, &doc_len);
  if (r < 0) {
    job_fail(j, r);
    return;
  }
  j->cb(j->arg, 0, doc, doc_len);
  free(doc);
  job_free(j);
}

static void on_chain(void *arg, int status, const uint8_t *res, size_t len) {
  build_job *j = arg;
  const uint8_t *it[2];
  size_t il[2];
  if (status < 0) {
    job_fail(j, status);
    return;
  }
  if (items_of(res, len, it, il, 2) != 2 || !il[0] || !il[1]) {
    job_fail(j, -EPROTO);
    return;
  }
  if (!(j->cert = malloc(il[0])) || !(j->root = malloc(il[1]))) {
    job_fail(j, -ENOMEM);
    return;
  }
  memcpy(j->cert, it[0], il[0]);
  memcpy(j->root, it[1], il[1]);
  j->root_len = il[1];
  const uint8_t *bundle[1] = {j->root};
  size_t bundle_len[1] = {j->root_len};
  j->f.cert_der = j->cert;
  j->f.cert_len = il[0];
  j->f.bundle = bundle;
  j->f.bundle_len = bundle_len;
  j->f.nbundle = 1;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  j->f.timestamp_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
  uint8_t *tbs = NULL;
  size_t tbs_len = 0;
  int r = cage_attest_encode_tbs(&j->f, &j->payload, &j->payload_len, &tbs, &tbs_len);
  j->f.bundle = NULL;
  j->f.bundle_len = NULL;
  if (r < 0) {
    job_fail(j, r);
    return;
  }
  uint8_t *req = malloc(4 + tbs_len);
  if (!req) {
    free(tbs);
    job_fail(j, -ENOMEM);
    return;
  }
  req[0] = (uint8_t)tbs_len;
  req[1] = (uint8_t)(tbs_len >> 8);
  req[2] = (uint8_t)(tbs_len >> 16);
  req[3] = (uint8_t)(tbs_len >> 24);
  memcpy(req + 4, tbs, tbs_len);
  free(tbs);
  evs_crypto_request cr = {sizeof cr, "attest_sign", req, 4 + tbs_len};
  r = j->host->crypto_call(j->p, &cr, on_sig, j);
  free(req);
  if (r < 0) job_fail(j, r);
}

static int dup_bytes(const uint8_t *p, size_t len, uint8_t **ret) {
  *ret = NULL;
  if (!p) return 0;
  if (len > CAGE_ATTEST_MAX_FIELD) return -EINVAL;
  if (!(*ret = malloc(len ? len : 1))) return -ENOMEM;
  if (len) memcpy(*ret, p, len);
  return 0;
}

int cage_attest_doc_build(const evs_host *host, evs_plugin *p, const cage_attest_request *req,
                          cage_attest_doc_cb cb, void *arg) {
  if (!host || !req || req->size < sizeof *req || !cb || !req->module_id || !*req->module_id ||
      strlen(req->module_id) > 127)
    return -EINVAL;
  build_job *j = calloc(1, sizeof *j);
  if (!j) return -ENOMEM;
  j->host = host;
  j->p = p;
  j->cb = cb;
  j->arg = arg;
  strcpy(j->module_id, req->module_id);
  j->f.module_id = j->module_id;
  if (!req->debug) {
    const uint8_t *given[4] = {req->pcr0, req->pcr1, req->pcr2, req->pcr8};
    const int idx[4] = {0, 1, 2, 8};
    for (int i = 0; i < 4; i++)
      if (given[i]) memcpy(j->f.pcrs[idx[i]], given[i], CAGE_ATTEST_PCR_LEN);
  }
  int r = dup_bytes(req->public_key, req->public_key_len, &j->pk);
  if (r == 0) r = dup_bytes(req->user_data, req->user_data_len, &j->ud);
  if (r == 0) r = dup_bytes(req->nonce, req->nonce_len, &j->nonce);
  if (r < 0) {
    job_free(j);
    return r;
  }
  j->f.public_key = j->pk;
  j->f.public_key_len = req->public_key_len;
  j->f.user_data = j->ud;
  j->f.user_data_len = req->user_data_len;
  j->f.nonce = j->nonce;
  j->f.nonce_len = req->nonce_len;
  evs_crypto_request cr = {sizeof cr, "attest_chain", NULL, 0};
  r = host->crypto_call(p, &cr, on_chain, j);
  if (r < 0) job_free(j);
  return r;
}
