/*
 * eif.c: Nitro Enclave Image Files, the writer, the reader and the PCRs (eif.h has the layout).
 * The signature section and its COSE_Sign1 are CBOR; the few shapes involved are encoded and
 * decoded here by hand (definite lengths only, as serde_cbor writes them), with a bounded
 * decoder since an image comes from outside.
 */
#include "eif.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <zlib.h>

#define EIF_MAGIC "\x2e\x65\x69\x66" /* ".eif" */
#define CBOR_MAX_DEPTH 16

struct eif_image {
  uint8_t *data;
  size_t len;
  uint16_t version, flags, nsections;
  uint64_t mem, cpus;
  struct {
    uint16_t type;
    size_t off, len; /* of the bytes, after the section header */
  } sec[EIF_MAX_SECTIONS];
  uint8_t *cert_der; /* signed images */
  size_t cert_der_len;
  uint8_t *cose; /* the COSE_Sign1 bytes of the first PCR signature */
  size_t cose_len;
};

/* ---- small helpers ------------------------------------------------------------------------ */

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}

static uLong crc_update(uLong crc, const uint8_t *p, size_t n) {
  while (n) { /* zlib's crc32 takes a uInt length */
    uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
    crc = crc32(crc, p, k);
    p += k;
    n -= k;
  }
  return crc;
}

/* Nitro's tpm_extend_finalize_reset: SHA-384(zeros || SHA-384(data)). */
static void pcr_finish(EVP_MD_CTX *md, uint8_t out[EIF_PCR_LEN]) {
  uint8_t inner[EIF_PCR_LEN], zero[EIF_PCR_LEN] = {0};
  unsigned n = 0;
  EVP_DigestFinal_ex(md, inner, &n);
  EVP_DigestInit_ex(md, EVP_sha384(), NULL);
  EVP_DigestUpdate(md, zero, sizeof zero);
  EVP_DigestUpdate(md, inner, sizeof inner);
  EVP_DigestFinal_ex(md, out, &n);
}

void eif_measure(const eif_blob *parts, size_t nparts, uint8_t out[EIF_PCR_LEN]) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!md) abort(); /* only on allocation failure of a few bytes */
  EVP_DigestInit_ex(md, EVP_sha384(), NULL);
  for (size_t i = 0; i < nparts; i++)
    if (parts[i].len) EVP_DigestUpdate(md, parts[i].data, parts[i].len);
  pcr_finish(md, out);
  EVP_MD_CTX_free(md);
}

void eif_pcr_hex(const uint8_t pcr[EIF_PCR_LEN], char out[2 * EIF_PCR_LEN + 1]) {
  static const char hx[] = "0123456789abcdef";
  for (size_t i = 0; i < EIF_PCR_LEN; i++) {
    out[2 * i] = hx[pcr[i] >> 4];
    out[2 * i + 1] = hx[pcr[i] & 15];
  }
  out[2 * EIF_PCR_LEN] = 0;
}

/* ---- CBOR, the part this file needs -------------------------------------------------------- */

typedef struct cbuf {
  uint8_t *p;
  size_t len, cap;
  int oom;
} cbuf;

static void cb_put(cbuf *b, const void *p, size_t n) {
  if (b->oom || !n) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    uint8_t *q = realloc(b->p, cap);
    if (!q) {
      b->oom = 1;
      return;
    }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
}

static void cb_head(cbuf *b, unsigned major, uint64_t v) {
  uint8_t h[9];
  size_t n;
  h[0] = (uint8_t)(major << 5);
  if (v < 24) {
    h[0] |= (uint8_t)v;
    n = 1;
  } else if (v <= 0xff) {
    h[0] |= 24;
    h[1] = (uint8_t)v;
    n = 2;
  } else if (v <= 0xffff) {
    h[0] |= 25;
    put16(h + 1, (uint16_t)v);
    n = 3;
  } else if (v <= 0xffffffffu) {
    h[0] |= 26;
    put32(h + 1, (uint32_t)v);
    n = 5;
  } else {
    h[0] |= 27;
    put64(h + 1, v);
    n = 9;
  }
  cb_put(b, h, n);
}

static void cb_text(cbuf *b, const char *s) {
  cb_head(b, 3, strlen(s));
  cb_put(b, s, strlen(s));
}
static void cb_bytes(cbuf *b, const uint8_t *p, size_t n) {
  cb_head(b, 2, n);
  cb_put(b, p, n);
}
/* serde_cbor's Vec<u8>: an array of unsigned integers. */
static void cb_u8_array(cbuf *b, const uint8_t *p, size_t n) {
  cb_head(b, 4, n);
  for (size_t i = 0; i < n; i++) cb_head(b, 0, p[i]);
}

typedef struct crd {
  const uint8_t *p, *end;
} crd;

/* Reads one item head; indefinite lengths and reserved values are refused. */
static int cr_head(crd *r, unsigned *major, uint64_t *v) {
  if (r->p >= r->end) return -1;
  uint8_t b = *r->p++;
  *major = b >> 5;
  unsigned ai = b & 31;
  if (ai < 24) {
    *v = ai;
    return 0;
  }
  if (ai > 27) return -1;
  size_t n = (size_t)1 << (ai - 24);
  if ((size_t)(r->end - r->p) < n) return -1;
  uint64_t x = 0;
  for (size_t i = 0; i < n; i++) x = x << 8 | r->p[i];
  r->p += n;
  *v = x;
  return 0;
}

static int cr_skip(crd *r, int depth) {
  unsigned m;
  uint64_t v;
  if (depth > CBOR_MAX_DEPTH || cr_head(r, &m, &v) < 0) return -1;
  switch (m) {
  case 0: case 1: case 7:
    return 0;
  case 2: case 3:
    if (v > (uint64_t)(r->end - r->p)) return -1;
    r->p += v;
    return 0;
  case 4: case 5: {
    if (v > (uint64_t)(r->end - r->p)) return -1; /* each item is at least one byte */
    uint64_t items = m == 5 ? 2 * v : v;
    for (uint64_t i = 0; i < items; i++)
      if (cr_skip(r, depth + 1) < 0) return -1;
    return 0;
  }
  case 6:
    return cr_skip(r, depth + 1);
  }
  return -1;
}

/* A byte string, or serde's array of integers 0..255: into a malloc'd buffer. */
static int cr_bytes_any(crd *r, uint8_t **ret, size_t *ret_len) {
  unsigned m;
  uint64_t n;
  if (cr_head(r, &m, &n) < 0 || (m != 2 && m != 4) || n > (uint64_t)(r->end - r->p)) return -1;
  uint8_t *out = malloc(n ? n : 1);
  if (!out) return -1;
  if (m == 2) {
    memcpy(out, r->p, n);
    r->p += n;
  } else {
    for (uint64_t i = 0; i < n; i++) {
      unsigned mm;
      uint64_t v;
      if (cr_head(r, &mm, &v) < 0 || mm != 0 || v > 255) {
        free(out);
        return -1;
      }
      out[i] = (uint8_t)v;
    }
  }
  *ret = out;
  *ret_len = n;
  return 0;
}

/* ---- signing (the writer) ------------------------------------------------------------------ */

/* The COSE_Sign1 payload Nitro signs: serde_cbor of PcrInfo {register_index, register_value}. */
static void pcr_info_cbor(cbuf *b, const uint8_t pcr0[EIF_PCR_LEN]) {
  cb_head(b, 5, 2);
  cb_text(b, "register_index");
  cb_head(b, 0, 0);
  cb_text(b, "register_value");
  cb_u8_array(b, pcr0, EIF_PCR_LEN);
}

/* The COSE algorithm and digest for an EC key, as aws-nitro-enclaves-cose picks them. */
static int cose_alg_of(EVP_PKEY *key, int *ret_alg, const EVP_MD **ret_md, size_t *ret_klen) {
  if (EVP_PKEY_base_id(key) != EVP_PKEY_EC) return -1;
  char curve[64];
  size_t n = 0;
  if (!EVP_PKEY_get_utf8_string_param(key, "group", curve, sizeof curve, &n)) return -1;
  if (strcmp(curve, "prime256v1") == 0 || strcmp(curve, "P-256") == 0) {
    *ret_alg = -7, *ret_md = EVP_sha256(), *ret_klen = 32;
  } else if (strcmp(curve, "secp384r1") == 0 || strcmp(curve, "P-384") == 0) {
    *ret_alg = -35, *ret_md = EVP_sha384(), *ret_klen = 48;
  } else if (strcmp(curve, "secp521r1") == 0 || strcmp(curve, "P-521") == 0) {
    *ret_alg = -36, *ret_md = EVP_sha512(), *ret_klen = 66;
  } else {
    return -1;
  }
  return 0;
}

static void protected_of(cbuf *b, int alg) {
  cb_head(b, 5, 1);
  cb_head(b, 0, 1);
  cb_head(b, 1, (uint64_t)(-1 - alg));
}

static void sig_structure(cbuf *b, const uint8_t *prot, size_t prot_len, const uint8_t *payload,
                          size_t payload_len) {
  cb_head(b, 4, 4);
  cb_text(b, "Signature1");
  cb_bytes(b, prot, prot_len);
  cb_bytes(b, NULL, 0);
  cb_bytes(b, payload, payload_len);
}

static int cert_pem_to_der(const uint8_t *pem, size_t len, uint8_t **ret, size_t *ret_len) {
  if (len > INT32_MAX) return -1;
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  if (!x) return -1;
  int n = i2d_X509(x, NULL);
  uint8_t *der = n > 0 ? malloc((size_t)n) : NULL, *q = der;
  if (!der || i2d_X509(x, &q) != n) {
    free(der);
    X509_free(x);
    return -1;
  }
  X509_free(x);
  *ret = der;
  *ret_len = (size_t)n;
  return 0;
}

/* Builds the signature section: [{signing_certificate, signature: COSE_Sign1}]. */
static int make_signature(const eif_build_in *in, const uint8_t pcr0[EIF_PCR_LEN], cbuf *out,
                          const char **why) {
  int rc = -EINVAL;
  cbuf payload = {0}, prot = {0}, tbs = {0}, cose = {0};
  EVP_MD_CTX *md = NULL;
  ECDSA_SIG *es = NULL;
  uint8_t *der = NULL;
  if (in->signing_key.len > INT32_MAX) {
    *why = "the signing key is too large";
    return -EINVAL;
  }
  BIO *bio = BIO_new_mem_buf(in->signing_key.data, (int)in->signing_key.len);
  EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  int alg;
  const EVP_MD *mdt;
  size_t klen;
  if (!key) {
    *why = "the signing key is not a PEM private key";
    goto out;
  }
  if (cose_alg_of(key, &alg, &mdt, &klen) < 0) {
    *why = "the signing key is not an EC key on P-256, P-384 or P-521";
    goto out;
  }
  /* The key must match the certificate, or the image would never verify. */
  BIO *cb = BIO_new_mem_buf(in->signing_cert.data, (int)in->signing_cert.len);
  X509 *x = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
  BIO_free(cb);
  if (!x) {
    *why = "the signing certificate is not a PEM certificate";
    goto out;
  }
  int match = X509_check_private_key(x, key);
  X509_free(x);
  if (!match) {
    *why = "the signing key does not belong to the signing certificate";
    goto out;
  }
  pcr_info_cbor(&payload, pcr0);
  protected_of(&prot, alg);
  sig_structure(&tbs, prot.p, prot.len, payload.p, payload.len);
  if (payload.oom || prot.oom || tbs.oom) goto oom;
  size_t dlen = 0;
  md = EVP_MD_CTX_new();
  if (!md || EVP_DigestSignInit(md, NULL, mdt, NULL, key) != 1 ||
      EVP_DigestSign(md, NULL, &dlen, tbs.p, tbs.len) != 1 || !(der = malloc(dlen)) ||
      EVP_DigestSign(md, der, &dlen, tbs.p, tbs.len) != 1) {
    *why = "signing failed";
    goto out;
  }
  const uint8_t *dp = der;
  es = d2i_ECDSA_SIG(NULL, &dp, (long)dlen);
  uint8_t rs[2 * 66];
  if (!es || BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, (int)klen) < 0 ||
      BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + klen, (int)klen) < 0) {
    *why = "signing failed";
    goto out;
  }
  cb_head(&cose, 4, 4);
  cb_bytes(&cose, prot.p, prot.len);
  cb_head(&cose, 5, 0);
  cb_bytes(&cose, payload.p, payload.len);
  cb_bytes(&cose, rs, 2 * klen);
  cb_head(out, 4, 1);
  cb_head(out, 5, 2);
  cb_text(out, "signing_certificate");
  cb_u8_array(out, in->signing_cert.data, in->signing_cert.len);
  cb_text(out, "signature");
  if (!cose.oom) cb_u8_array(out, cose.p, cose.len);
  if (cose.oom || out->oom) goto oom;
  rc = 0;
  goto out;
oom:
  *why = "out of memory";
  rc = -ENOMEM;
out:
  ECDSA_SIG_free(es);
  free(der);
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  free(payload.p);
  free(prot.p);
  free(tbs.p);
  free(cose.p);
  return rc;
}

/* ---- the writer ---------------------------------------------------------------------------- */

typedef int (*emit_fn)(void *arg, const uint8_t *p, size_t n);

typedef struct plan {
  size_t n;
  uint16_t type[EIF_MAX_SECTIONS];
  eif_blob blob[EIF_MAX_SECTIONS];
  uint8_t header[EIF_HEADER_LEN];
  uint64_t total;
} plan;

static void section_header(uint8_t h[EIF_SECTION_HEADER_LEN], uint16_t type, uint64_t len) {
  put16(h, type);
  put16(h + 2, 0);
  put64(h + 4, len);
}

/* Lays the sections out in Nitro's order, measures them, signs, and fills the header. */
static int plan_image(const eif_build_in *in, plan *pl, cbuf *sig, eif_pcrs *pcrs,
                      const char **why) {
  memset(pl, 0, sizeof *pl);
  memset(pcrs, 0, sizeof *pcrs);
  if (!in->kernel.len || !in->cmdline || in->nramdisks < 1 ||
      in->nramdisks > EIF_MAX_SECTIONS - 4) {
    *why = "an image needs a kernel, a cmdline and 1 to 28 ramdisks";
    return -EINVAL;
  }
  int signing = in->signing_cert.len || in->signing_key.len;
  if (signing && (!in->signing_cert.len || !in->signing_key.len)) {
    *why = "signing needs both a certificate and its private key";
    return -EINVAL;
  }
  eif_blob cmd = {(const uint8_t *)in->cmdline, strlen(in->cmdline)};
  pl->type[pl->n] = EIF_SECTION_KERNEL, pl->blob[pl->n++] = in->kernel;
  pl->type[pl->n] = EIF_SECTION_CMDLINE, pl->blob[pl->n++] = cmd;
  pl->type[pl->n] = EIF_SECTION_METADATA, pl->blob[pl->n++] = in->metadata;
  for (size_t i = 0; i < in->nramdisks; i++)
    pl->type[pl->n] = EIF_SECTION_RAMDISK, pl->blob[pl->n++] = in->ramdisks[i];

  eif_blob parts[EIF_MAX_SECTIONS];
  size_t np = 0;
  parts[np++] = in->kernel;
  parts[np++] = cmd;
  for (size_t i = 0; i < in->nramdisks; i++) parts[np++] = in->ramdisks[i];
  eif_measure(parts, np, pcrs->pcr0);
  eif_measure(parts, 3, pcrs->pcr1);
  eif_measure(in->ramdisks + 1, in->nramdisks - 1, pcrs->pcr2);
  if (signing) {
    uint8_t *der;
    size_t dlen;
    if (in->signing_cert.len > INT32_MAX ||
        cert_pem_to_der(in->signing_cert.data, in->signing_cert.len, &der, &dlen) < 0) {
      *why = "the signing certificate is not a PEM certificate";
      return -EINVAL;
    }
    eif_blob b = {der, dlen};
    eif_measure(&b, 1, pcrs->pcr8);
    pcrs->has_pcr8 = 1;
    free(der);
    int rc = make_signature(in, pcrs->pcr0, sig, why);
    if (rc < 0) return rc;
    pl->type[pl->n] = EIF_SECTION_SIGNATURE;
    pl->blob[pl->n++] = (eif_blob){sig->p, sig->len};
  }

  uint8_t *h = pl->header;
  memcpy(h, EIF_MAGIC, 4);
  put16(h + 4, EIF_VERSION);
  put16(h + 6, in->flags);
  put64(h + 8, in->default_mem ? in->default_mem : EIF_DEFAULT_MEM);
  put64(h + 16, in->default_cpus ? in->default_cpus : EIF_DEFAULT_CPUS);
  put16(h + 24, 0);
  put16(h + 26, (uint16_t)pl->n);
  uint64_t off = EIF_HEADER_LEN;
  for (size_t i = 0; i < pl->n; i++) {
    put64(h + 28 + 8 * i, off);
    put64(h + 28 + 8 * EIF_MAX_SECTIONS + 8 * i, pl->blob[i].len);
    off += EIF_SECTION_HEADER_LEN + pl->blob[i].len;
  }
  pl->total = off;
  /* unused (4 bytes) stays zero; the CRC covers the header without its own last 4 bytes. */
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc_update(crc, h, EIF_HEADER_LEN - 4);
  for (size_t i = 0; i < pl->n; i++) {
    uint8_t sh[EIF_SECTION_HEADER_LEN];
    section_header(sh, pl->type[i], pl->blob[i].len);
    crc = crc_update(crc, sh, sizeof sh);
    if (pl->blob[i].len) crc = crc_update(crc, pl->blob[i].data, pl->blob[i].len);
  }
  put32(h + EIF_HEADER_LEN - 4, (uint32_t)crc);
  return 0;
}

static int emit_image(const plan *pl, emit_fn emit, void *arg) {
  if (emit(arg, pl->header, EIF_HEADER_LEN) < 0) return -1;
  for (size_t i = 0; i < pl->n; i++) {
    uint8_t sh[EIF_SECTION_HEADER_LEN];
    section_header(sh, pl->type[i], pl->blob[i].len);
    if (emit(arg, sh, sizeof sh) < 0) return -1;
    if (pl->blob[i].len && emit(arg, pl->blob[i].data, pl->blob[i].len) < 0) return -1;
  }
  return 0;
}

typedef struct membuf {
  uint8_t *p;
  size_t len;
} membuf;

static int emit_mem(void *arg, const uint8_t *p, size_t n) {
  membuf *m = arg;
  memcpy(m->p + m->len, p, n);
  m->len += n;
  return 0;
}

static int emit_fd(void *arg, const uint8_t *p, size_t n) {
  int fd = *(int *)arg;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int eif_build(const eif_build_in *in, uint8_t **ret_data, size_t *ret_len, eif_pcrs *ret_pcrs,
              const char **ret_why) {
  plan pl;
  cbuf sig = {0};
  eif_pcrs pcrs;
  int rc = plan_image(in, &pl, &sig, &pcrs, ret_why);
  if (rc == 0 && pl.total > SIZE_MAX) {
    *ret_why = "the image is too large";
    rc = -EFBIG;
  }
  membuf m = {0};
  if (rc == 0 && !(m.p = malloc((size_t)pl.total))) {
    *ret_why = "out of memory";
    rc = -ENOMEM;
  }
  if (rc == 0) {
    emit_image(&pl, emit_mem, &m);
    *ret_data = m.p;
    *ret_len = m.len;
    if (ret_pcrs) *ret_pcrs = pcrs;
  }
  free(sig.p);
  return rc;
}

int eif_write(const char *path, const eif_build_in *in, eif_pcrs *ret_pcrs, const char **ret_why) {
  plan pl;
  cbuf sig = {0};
  eif_pcrs pcrs;
  int rc = plan_image(in, &pl, &sig, &pcrs, ret_why);
  if (rc < 0) {
    free(sig.p);
    return rc;
  }
  size_t n = strlen(path);
  char *tmp = malloc(n + 5);
  if (!tmp) {
    free(sig.p);
    *ret_why = "out of memory";
    return -ENOMEM;
  }
  memcpy(tmp, path, n);
  memcpy(tmp + n, ".tmp", 5);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = -errno;
    *ret_why = "cannot create the image file";
  } else {
    if (emit_image(&pl, emit_fd, &fd) < 0 || fsync(fd) < 0) {
      rc = -(errno ? errno : EIO);
      *ret_why = "cannot write the image file";
    }
    if (close(fd) < 0 && rc == 0) {
      rc = -errno;
      *ret_why = "cannot write the image file";
    }
    if (rc == 0 && rename(tmp, path) < 0) {
      rc = -errno;
      *ret_why = "cannot rename the image file into place";
    }
    if (rc < 0) unlink(tmp);
  }
  if (rc == 0 && ret_pcrs) *ret_pcrs = pcrs;
  free(tmp);
  free(sig.p);
  return rc;
}

/* ---- the reader ---------------------------------------------------------------------------- */

void eif_free(eif_image *img) {
  if (!img) return;
  free(img->data);
  free(img->cert_der);
  free(img->cose);
  free(img);
}

/* Nitro's signature section: an array of at least one {signing_certificate, signature}; the
 * first entry is PCR0's. Unknown keys are skipped. */
static int parse_signature(eif_image *img, const uint8_t *p, size_t len, const char **why) {
  crd r = {p, p + len};
  unsigned m;
  uint64_t n, nkeys;
  uint8_t *pem = NULL;
  size_t pem_len = 0;
  *why = "the signature section is not Nitro's CBOR array of PCR signatures";
  if (cr_head(&r, &m, &n) < 0 || m != 4 || n < 1 || cr_head(&r, &m, &nkeys) < 0 || m != 5 ||
      nkeys > len)
    return -EINVAL;
  for (uint64_t i = 0; i < nkeys; i++) {
    uint64_t klen;
    if (cr_head(&r, &m, &klen) < 0 || m != 3 || klen > (uint64_t)(r.end - r.p)) goto bad;
    const uint8_t *key = r.p;
    r.p += klen;
    if (klen == 19 && memcmp(key, "signing_certificate", 19) == 0) {
      if (pem || cr_bytes_any(&r, &pem, &pem_len) < 0) goto bad;
    } else if (klen == 9 && memcmp(key, "signature", 9) == 0) {
      if (img->cose || cr_bytes_any(&r, &img->cose, &img->cose_len) < 0) goto bad;
    } else if (cr_skip(&r, 0) < 0) {
      goto bad;
    }
  }
  if (!pem || !img->cose) goto bad;
  if (cert_pem_to_der(pem, pem_len, &img->cert_der, &img->cert_der_len) < 0) {
    *why = "the signing certificate in the signature section is not a PEM certificate";
    goto bad;
  }
  free(pem);
  return 0;
bad:
  free(pem);
  free(img->cose);
  img->cose = NULL;
  return -EINVAL;
}

int eif_parse(const uint8_t *data, size_t len, eif_image **ret, const char **ret_why) {
  const char *why_dummy;
  if (!ret_why) ret_why = &why_dummy;
  if (len < EIF_HEADER_LEN || memcmp(data, EIF_MAGIC, 4) != 0) {
    *ret_why = "not an Enclave Image File (no .eif magic)";
    return -EINVAL;
  }
  eif_image *img = calloc(1, sizeof *img);
  if (!img || !(img->data = malloc(len))) {
    free(img);
    *ret_why = "out of memory";
    return -ENOMEM;
  }
  memcpy(img->data, data, len);
  img->len = len;
  const uint8_t *h = img->data;
  img->version = get16(h + 4);
  img->flags = get16(h + 6);
  img->mem = get64(h + 8);
  img->cpus = get64(h + 16);
  img->nsections = get16(h + 26);
  int rc = -EINVAL;
  if (img->version < 2 || img->version > EIF_VERSION) {
    *ret_why = "unsupported image format version (2 to 4 are)";
    goto fail;
  }
  if (img->nsections < 1 || img->nsections > EIF_MAX_SECTIONS) {
    *ret_why = "bad section count in the image header";
    goto fail;
  }
  /* Walk the sections as Nitro's reader does, back to back to the end of the file, and
   * check that the header's table agrees with what is there. */
  uLong crc = crc_update(crc32(0L, Z_NULL, 0), h, EIF_HEADER_LEN - 4);
  size_t off = EIF_HEADER_LEN, i = 0, nsig = 0;
  while (off < len) {
    if (i == img->nsections) {
      *ret_why = "the image has more sections than its header says";
      goto fail;
    }
    if (len - off < EIF_SECTION_HEADER_LEN) {
      *ret_why = "the image ends inside a section header";
      goto fail;
    }
    const uint8_t *sh = img->data + off;
    uint16_t type = get16(sh);
    uint64_t slen = get64(sh + 4);
    if (type < EIF_SECTION_KERNEL || type > EIF_SECTION_METADATA) {
      *ret_why = "the image has a section of unknown type";
      goto fail;
    }
    if (slen > len - off - EIF_SECTION_HEADER_LEN) {
      *ret_why = "a section runs past the end of the image";
      goto fail;
    }
    if (get64(h + 28 + 8 * i) != off || get64(h + 28 + 8 * EIF_MAX_SECTIONS + 8 * i) != slen) {
      *ret_why = "the image header's section table does not match its sections";
      goto fail;
    }
    img->sec[i].type = type;
    img->sec[i].off = off + EIF_SECTION_HEADER_LEN;
    img->sec[i].len = (size_t)slen;
    crc = crc_update(crc, sh, EIF_SECTION_HEADER_LEN + (size_t)slen);
    nsig += type == EIF_SECTION_SIGNATURE;
    off += EIF_SECTION_HEADER_LEN + (size_t)slen;
    i++;
  }
  if (i != img->nsections) {
    *ret_why = "the image has fewer sections than its header says";
    goto fail;
  }
  if ((uint32_t)crc != get32(h + EIF_HEADER_LEN - 4)) {
    *ret_why = "the image's CRC does not match (corrupt or truncated)";
    goto fail;
  }
  const uint8_t *p;
  size_t n;
  if (eif_section(img, EIF_SECTION_KERNEL, 0, &p, &n) < 0 ||
      eif_section(img, EIF_SECTION_CMDLINE, 0, &p, &n) < 0 ||
      eif_section(img, EIF_SECTION_RAMDISK, 0, &p, &n) < 0) {
    *ret_why = "the image lacks a kernel, a cmdline or a ramdisk";
    goto fail;
  }
  if (nsig > 1) {
    *ret_why = "the image has more than one signature section";
    goto fail;
  }
  if (nsig && eif_section(img, EIF_SECTION_SIGNATURE, 0, &p, &n) == 0 &&
      parse_signature(img, p, n, ret_why) < 0)
    goto fail;
  *ret = img;
  return 0;
fail:
  eif_free(img);
  return rc;
}

int eif_open(const char *path, eif_image **ret, const char **ret_why) {
  const char *why_dummy;
  if (!ret_why) ret_why = &why_dummy;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    *ret_why = e == ENOENT ? "no such image file" : "cannot open the image file";
    return -e;
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    *ret_why = "the image is not a regular file";
    return -EINVAL;
  }
  size_t len = (size_t)st.st_size;
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf) {
    close(fd);
    *ret_why = "out of memory";
    return -ENOMEM;
  }
  size_t got = 0;
  while (got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  if (got != len) {
    free(buf);
    *ret_why = "cannot read the image file";
    return -EIO;
  }
  /* eif_parse copies; a file-backed parse could take buf over, not worth a second path. */
  int rc = eif_parse(buf, len, ret, ret_why);
  free(buf);
  return rc;
}

int eif_section(const eif_image *img, eif_section_type type, unsigned nth, const uint8_t **ret,
                size_t *ret_len) {
  for (unsigned i = 0; i < img->nsections; i++) {
    if (img->sec[i].type != type) continue;
    if (nth-- == 0) {
      *ret = img->data + img->sec[i].off;
      *ret_len = img->sec[i].len;
      return 0;
    }
  }
  return -ENOENT;
}

int eif_pcrs_of(const eif_image *img, eif_pcrs *ret) {
  eif_blob all[EIF_MAX_SECTIONS], boot[EIF_MAX_SECTIONS], app[EIF_MAX_SECTIONS];
  size_t na = 0, nb = 0, np = 0, nramdisk = 0;
  memset(ret, 0, sizeof *ret);
  /* In file order, as Nitro's reader measures them. */
  for (unsigned i = 0; i < img->nsections; i++) {
    eif_blob b = {img->data + img->sec[i].off, img->sec[i].len};
    switch (img->sec[i].type) {
    case EIF_SECTION_KERNEL:
    case EIF_SECTION_CMDLINE:
      all[na++] = b;
      boot[nb++] = b;
      break;
    case EIF_SECTION_RAMDISK:
      all[na++] = b;
      if (nramdisk++ == 0)
        boot[nb++] = b;
      else
        app[np++] = b;
      break;
    default:
      break;
    }
  }
  eif_measure(all, na, ret->pcr0);
  eif_measure(boot, nb, ret->pcr1);
  eif_measure(app, np, ret->pcr2);
  if (img->cert_der) {
    eif_blob c = {img->cert_der, img->cert_der_len};
    eif_measure(&c, 1, ret->pcr8);
    ret->has_pcr8 = 1;
  }
  return 0;
}

void eif_header_info(const eif_image *img, uint16_t *ret_flags, uint64_t *ret_mem,
                     uint64_t *ret_cpus) {
  if (ret_flags) *ret_flags = img->flags;
  if (ret_mem) *ret_mem = img->mem;
  if (ret_cpus) *ret_cpus = img->cpus;
}

int eif_signing_cert(const eif_image *img, const uint8_t **ret_der, size_t *ret_len) {
  if (!img->cert_der) return -ENOENT;
  *ret_der = img->cert_der;
  *ret_len = img->cert_der_len;
  return 0;
}

int eif_verify_signature(const eif_image *img, const char **ret_why) {
  const char *why_dummy;
  if (!ret_why) ret_why = &why_dummy;
  if (!img->cose) return -ENOENT;
  crd r = {img->cose, img->cose + img->cose_len};
  unsigned m;
  uint64_t n, v;
  const uint8_t *prot, *payload, *sig;
  size_t prot_len, payload_len, sig_len;
  *ret_why = "the image's signature is not a COSE_Sign1";
  if (cr_head(&r, &m, &n) < 0) return -EINVAL;
  if (m == 6 && n == 18 && cr_head(&r, &m, &n) < 0) return -EINVAL;
  if (m != 4 || n != 4) return -EINVAL;
#define CR_BSTR(ptr, plen)                                                                     \
  do {                                                                                         \
    if (cr_head(&r, &m, &v) < 0 || m != 2 || v > (uint64_t)(r.end - r.p)) return -EINVAL;      \
    ptr = r.p, plen = (size_t)v, r.p += v;                                                     \
  } while (0)
  CR_BSTR(prot, prot_len);
  if (cr_skip(&r, 0) < 0) return -EINVAL; /* unprotected header map */
  CR_BSTR(payload, payload_len);
  CR_BSTR(sig, sig_len);
#undef CR_BSTR
  /* The protected header: a map holding alg (1). */
  crd pr = {prot, prot + prot_len};
  int alg = 0;
  if (cr_head(&pr, &m, &n) < 0 || m != 5) return -EINVAL;
  for (uint64_t i = 0; i < n; i++) {
    unsigned km, vm;
    uint64_t kv, vv;
    const uint8_t *save = pr.p;
    if (cr_head(&pr, &km, &kv) < 0) return -EINVAL;
    if (km == 0 && kv == 1) {
      if (cr_head(&pr, &vm, &vv) < 0 || vm != 1 || vv > 64) return -EINVAL;
      alg = -1 - (int)vv;
    } else {
      pr.p = save;
      if (cr_skip(&pr, 0) < 0 || cr_skip(&pr, 0) < 0) return -EINVAL;
    }
  }
  const EVP_MD *mdt;
  size_t klen;
  if (alg == -7) mdt = EVP_sha256(), klen = 32;
  else if (alg == -35) mdt = EVP_sha384(), klen = 48;
  else if (alg == -36) mdt = EVP_sha512(), klen = 66;
  else {
    *ret_why = "the image's signature uses an algorithm other than ES256, ES384 or ES512";
    return -EINVAL;
  }
  if (sig_len != 2 * klen) return -EINVAL;
  eif_pcrs pcrs;
  eif_pcrs_of(img, &pcrs);
  cbuf want = {0}, tbs = {0};
  pcr_info_cbor(&want, pcrs.pcr0);
  sig_structure(&tbs, prot, prot_len, payload, payload_len);
  int rc = -EBADMSG;
  EVP_MD_CTX *md = NULL;
  ECDSA_SIG *es = NULL;
  uint8_t *der = NULL;
  X509 *x = NULL;
  EVP_PKEY *pub = NULL;
  if (want.oom || tbs.oom) {
    rc = -ENOMEM;
    *ret_why = "out of memory";
    goto out;
  }
  if (payload_len != want.len || memcmp(payload, want.p, want.len) != 0) {
    *ret_why = "the image's signature is over another PCR0 than the image's";
    goto out;
  }
  const uint8_t *cp = img->cert_der;
  x = d2i_X509(NULL, &cp, (long)img->cert_der_len);
  pub = x ? X509_get_pubkey(x) : NULL;
  BIGNUM *br = BN_bin2bn(sig, (int)klen, NULL), *bs = BN_bin2bn(sig + klen, (int)klen, NULL);
  es = ECDSA_SIG_new();
  if (!pub || !br || !bs || !es || !ECDSA_SIG_set0(es, br, bs)) {
    BN_free(br);
    BN_free(bs);
    *ret_why = "the image's signing certificate has no usable public key";
    goto out;
  }
  int dlen = i2d_ECDSA_SIG(es, &der);
  md = EVP_MD_CTX_new();
  if (dlen <= 0 || !md || EVP_DigestVerifyInit(md, NULL, mdt, NULL, pub) != 1 ||
      EVP_DigestVerify(md, der, (size_t)dlen, tbs.p, tbs.len) != 1) {
    *ret_why = "the image's signature does not verify with its signing certificate";
    goto out;
  }
  rc = 0;
out:
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(pub);
  X509_free(x);
  free(want.p);
  free(tbs.p);
  return rc;
}
