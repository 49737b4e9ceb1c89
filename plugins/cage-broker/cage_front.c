/*
 * cage_front.c: the HTTPS front of every cage (docs/cages.md), on the TLS listeners that serve
 * the plugin's role ("cages"): https://<cage>.<app id with _ as ->.<domain>.
 *
 * - TLS is terminated with the cage's own certificate (issued from the node CA through the
 *   host's issue_certificate, picked by SNI through add_tls_identity, ABI 1.9). Its key is made
 *   here once per cage and kept in the store sealed with the app's keys (an ev: string), so
 *   every worker and node presents the same certificate, which the attestation document binds
 *   (public_key = its SubjectPublicKeyInfo).
 * - GET /.well-known/attestation (no auth): {"attestation_doc": base64}, a document signed in
 *   the enclave (attest.h) with the deployment's PCRs (zeros in debug mode), the module id
 *   naming the backend, and the certificate's key.
 * - Every other request: the API key in `api-key` (unless api_key_auth = false; 401
 *   `unauthorized`), every ev: string of the body decrypted for the cage's app with the
 *   relays' code (relay-common/decrypt_body.c), then proxied to the app through the runner's
 *   unix socket (evs_upstream.unix_path, ABI 1.9). The api-key field is not passed on.
 * - Each answer carries x-evervault-cage-ctx; with trx_logging a record per request (method,
 *   path, status, timing; never bodies or headers) goes to the "trx" stream with the same id.
 * - The Encryption API inside the cage (127.0.0.1:9999, through the runner's on_api):
 *   /encrypt and /decrypt with JSON bodies as the documentation's examples, /attestation-doc.
 * - disable_tls_termination = true: the connection is taken before any TLS (add_tls_passthrough,
 *   ABI 1.9, by the ClientHello's SNI) and piped to the app's socket as it is; the app
 *   terminates TLS itself, so no API key, decryption or transaction record applies.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "attest.h"
#include "cage_int.h"
#include "decrypt_body.h"
#include "eif.h"
#include "fmt.h"
#include "spool.h"

#define TXN_MAGIC 0x43414745u /* "CAGE" */
#define CB_TLS_RETRY_MS 5000
#define CB_API_MAX_BODY (4u << 20)

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static char *b64(const uint8_t *p, size_t n) {
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  if (out) EVP_EncodeBlock((unsigned char *)out, p, (int)n);
  return out;
}

/* ---- the cage's TLS identity ----------------------------------------------------------------- */

typedef struct tls_job {
  cb_cage *c;
  char *cert_pem;
  char *key_pem;   /* plaintext: wiped */
  size_t key_len;
  int wildcard;    /* the first issue asked for the *.attest. name too */
} tls_job;

static void tls_job_end(tls_job *j, int ok) {
  cb_cage *c = j->c;
  c->tls_pending = 0;
  c->tls_checked_ms = cb_now_ms();
  if (!ok && !c->removed)
    c->st->h->log(c->st->p, NULL, EVS_LOG_WARN,
                  "cage %s of app %s: no TLS certificate yet (is the app unlocked and the node "
                  "CA created?); retrying", c->name, c->app);
  free(j->cert_pem);
  if (j->key_pem) {
    OPENSSL_cleanse(j->key_pem, j->key_len);
    free(j->key_pem);
  }
  free(j);
  cb_cage_unref(c);
}

/* Takes the PEMs into the cage (they become the identity served by SNI). */
static int tls_adopt(cb_cage *c, const char *cert, const char *key, size_t key_len) {
  BIO *b = BIO_new_mem_buf(cert, -1);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  if (!x) return -EINVAL;
  uint8_t *spki = NULL;
  int sl = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &spki);
  char serial[80] = "";
  ASN1_INTEGER *sn = X509_get_serialNumber(x);
  BIGNUM *bn = sn ? ASN1_INTEGER_to_BN(sn, NULL) : NULL;
  char *hex = bn ? BN_bn2hex(bn) : NULL;
  if (hex) snprintf(serial, sizeof serial, "%s", hex);
  OPENSSL_free(hex);
  BN_free(bn);
  X509_free(x);
  if (sl <= 0) return -EINVAL;
  free(c->cert_pem);
  if (c->key_pem) {
    OPENSSL_cleanse(c->key_pem, c->key_len);
    free(c->key_pem);
  }
  free(c->spki);
  c->cert_pem = strdup(cert);
  c->cert_len = strlen(cert);
  c->key_pem = malloc(key_len + 1);
  if (c->key_pem) {
    memcpy(c->key_pem, key, key_len);
    c->key_pem[key_len] = 0;
  }
  c->key_len = key_len;
  c->spki = malloc((size_t)sl);
  if (c->spki) memcpy(c->spki, spki, (size_t)sl);
  c->spki_len = (size_t)sl;
  OPENSSL_free(spki);
  snprintf(c->cache_key, sizeof c->cache_key, "cage:%s/%s:%s", c->app, c->name, serial);
  return c->cert_pem && c->key_pem && c->spki ? 0 : -ENOMEM;
}

static void on_tls_rec(void *arg, int status, const uint8_t *value, size_t len);

static void on_tls_put(void *arg, int status, const uint8_t *value, size_t len) {
  (void)value;
  (void)len;
  tls_job *j = arg;
  cb_cage *c = j->c;
  if (status == 0 && !c->removed) {
    tls_job_end(j, tls_adopt(c, j->cert_pem, j->key_pem, j->key_len) == 0);
    return;
  }
  if (status != -EEXIST || c->removed) {
    tls_job_end(j, 0);
    return;
  }
  /* Another worker or node made it first: use theirs. */
  OPENSSL_cleanse(j->key_pem, j->key_len);
  free(j->key_pem);
  j->key_pem = NULL;
  free(j->cert_pem);
  j->cert_pem = NULL;
  char key[200];
  snprintf(key, sizeof key, "tls/%s/%s", c->app, c->name);
  if (c->st->h->store_get(c->st->p, key, on_tls_rec, j) < 0) tls_job_end(j, 0);
}

static void on_key_sealed(void *arg, int status, const evs_crypto_result *res, size_t n) {
  tls_job *j = arg;
  cb_cage *c = j->c;
  if (status != EVS_CRYPTO_OK || n != 1 || res[0].status != EVS_CRYPTO_OK || c->removed) {
    tls_job_end(j, 0);
    return;
  }
  json_t *rec = json_pack("{s:s,s:s%,s:I}", "cert", j->cert_pem, "key", (const char *)res[0].data,
                          res[0].len, "createdAt", (json_int_t)cb_now_ms());
  char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
  json_decref(rec);
  char key[200];
  snprintf(key, sizeof key, "tls/%s/%s", c->app, c->name);
  /* Create-only: of workers and nodes making the cage's identity at once, one wins and the
   * others take its certificate (on_tls_put), so all present the same one. */
  int rc = s ? c->st->h->store_put_new(c->st->p, key, (const uint8_t *)s, strlen(s), 0,
                                       on_tls_put, j)
             : -ENOMEM;
  free(s);
  if (rc < 0) tls_job_end(j, 0);
}

static void issue(tls_job *j);

static void on_cert(void *arg, int status, const uint8_t *pem, size_t len) {
  tls_job *j = arg;
  cb_cage *c = j->c;
  if (status == EVS_CRYPTO_E_INVALID && j->wildcard) {
    j->wildcard = 0; /* the CA would not sign the nonce names: the cage's own name only */
    issue(j);
    return;
  }
  if (status != EVS_CRYPTO_OK || c->removed) {
    tls_job_end(j, 0);
    return;
  }
  j->cert_pem = strndup((const char *)pem, len);
  evs_crypto_value v = {sizeof v, EVS_CRYPTO_STRING_EXACT, (const uint8_t *)j->key_pem,
                        j->key_len};
  evs_encrypt_request er = {sizeof er, c->app, "prime256v1", NULL, &v, 1};
  if (!j->cert_pem || c->st->h->encrypt_values(c->st->p, &er, on_key_sealed, j) < 0)
    tls_job_end(j, 0);
}

static char *pem_of(EVP_PKEY *k, int pub, size_t *ret_len) {
  BIO *b = BIO_new(BIO_s_mem());
  int ok = b && (pub ? PEM_write_bio_PUBKEY(b, k)
                     : PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL));
  char *data = NULL, *out = NULL;
  long n = ok ? BIO_get_mem_data(b, &data) : 0;
  if (n > 0 && (out = malloc((size_t)n + 1))) {
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    *ret_len = (size_t)n;
  }
  if (b && n > 0) OPENSSL_cleanse(data, (size_t)n);
  BIO_free(b);
  return out;
}

static void issue(tls_job *j) {
  cb_cage *c = j->c;
  EVP_PKEY *k = NULL;
  if (!j->key_pem) {
    k = EVP_EC_gen("P-256");
    if (k) j->key_pem = pem_of(k, 0, &j->key_len);
  } else {
    BIO *b = BIO_new_mem_buf(j->key_pem, (int)j->key_len);
    k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
  }
  size_t pl = 0;
  char *pub = k ? pem_of(k, 1, &pl) : NULL;
  EVP_PKEY_free(k);
  if (!pub || !j->key_pem) {
    free(pub);
    tls_job_end(j, 0);
    return;
  }
  char wild[CB_HOST_MAX + 16];
  snprintf(wild, sizeof wild, "*.attest.%s", c->host);
  const char *names[2] = {c->host, wild};
  evs_cert_request cr;
  memset(&cr, 0, sizeof cr);
  cr.size = sizeof cr;
  cr.names = names;
  cr.nnames = j->wildcard ? 2 : 1;
  cr.public_key_pem = pub;
  int rc = c->st->h->issue_certificate(c->st->p, &cr, on_cert, j);
  free(pub);
  if (rc < 0) tls_job_end(j, 0);
}

static void on_key_opened(void *arg, int status, const evs_crypto_result *res, size_t n) {
  tls_job *j = arg;
  cb_cage *c = j->c;
  int ok = status == EVS_CRYPTO_OK && n == 1 && res[0].status == EVS_CRYPTO_OK && !c->removed &&
           tls_adopt(c, j->cert_pem, (const char *)res[0].data, res[0].len) == 0;
  tls_job_end(j, ok);
}

static void on_tls_rec(void *arg, int status, const uint8_t *value, size_t len) {
  tls_job *j = arg;
  cb_cage *c = j->c;
  if (c->removed) {
    tls_job_end(j, 1);
    return;
  }
  json_t *rec = status == 0 ? json_loadb((const char *)value, len, 0, NULL) : NULL;
  const char *cert = json_string_value(json_object_get(rec, "cert"));
  const char *key = json_string_value(json_object_get(rec, "key"));
  if (!cert || !key) {
    json_decref(rec);
    if (status != 0 && status != -ENOENT) {
      tls_job_end(j, 0);
      return;
    }
    j->wildcard = 1;
    issue(j); /* the first worker to see the cage makes its identity */
    return;
  }
  if (c->cert_pem && !strcmp(c->cert_pem, cert)) { /* unchanged */
    json_decref(rec);
    tls_job_end(j, 1);
    return;
  }
  free(j->cert_pem);
  j->cert_pem = strdup(cert);
  evs_crypto_value v = {sizeof v, 0, (const uint8_t *)key, strlen(key)};
  evs_decrypt_request dr = {sizeof dr, c->app, &v, 1};
  int rc = j->cert_pem ? c->st->h->decrypt_values(c->st->p, &dr, on_key_opened, j) : -ENOMEM;
  json_decref(rec);
  if (rc < 0) tls_job_end(j, 0);
}

void cb_front_tls_ensure(cb_cage *c) {
  int64_t now = cb_now_ms();
  /* Re-read now and then, so that every worker converges on the certificate in the store. */
  int64_t every = c->cert_pem ? 60000 : CB_TLS_RETRY_MS;
  if (c->tls_pending || (c->tls_checked_ms && now - c->tls_checked_ms < every)) return;
  tls_job *j = calloc(1, sizeof *j);
  if (!j) return;
  j->c = c;
  cb_cage_ref(c);
  c->tls_pending = 1;
  char key[200];
  snprintf(key, sizeof key, "tls/%s/%s", c->app, c->name);
  if (c->st->h->store_get(c->st->p, key, on_tls_rec, j) < 0) tls_job_end(j, 0);
}

static int identity(void *arg, const char *sni, evs_tls_identity *ret) {
  cb_state *st = arg;
  cb_cage *c = cb_cage_by_host(st, sni);
  if (!c || !c->cert_pem || !c->key_pem) return -ENOENT;
  ret->cert_pem = c->cert_pem;
  ret->cert_pem_len = c->cert_len;
  ret->key_pem = c->key_pem;
  ret->key_pem_len = c->key_len;
  ret->cache_key = c->cache_key;
  return 0;
}

/* ---- attestation documents ------------------------------------------------------------------- */

typedef void (*attest_done_fn)(void *arg, int status, const uint8_t *doc, size_t len);

static int hex_to_bin(const char *hex, uint8_t *out, size_t n) {
  if (!hex || strlen(hex) != 2 * n) return -1;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  return 0;
}

/* A document for the cage's current deployment, binding its TLS key (and nonce, user data). */
static int attest(cb_cage *c, const uint8_t *nonce, size_t nonce_len, const uint8_t *ud,
                  size_t ud_len, attest_done_fn cb, void *arg) {
  if (!c->spki) return -EAGAIN;
  json_t *pcrs = json_object_get(json_object_get(c->rec, "deployment"), "pcrs");
  uint8_t p0[48], p1[48], p2[48], p8[48];
  int have = hex_to_bin(json_string_value(json_object_get(pcrs, "pcr0")), p0, 48) == 0 &&
             hex_to_bin(json_string_value(json_object_get(pcrs, "pcr1")), p1, 48) == 0 &&
             hex_to_bin(json_string_value(json_object_get(pcrs, "pcr2")), p2, 48) == 0 &&
             hex_to_bin(json_string_value(json_object_get(pcrs, "pcr8")), p8, 48) == 0;
  if (!have) return -EAGAIN;
  const char *backend = c->cur && c->cur->ci ? cage_run_backend(c->cur->ci) : "none";
  char module[128];
  snprintf(module, sizeof module, "evserver-%s-%.80s", backend,
           json_string_value(json_object_get(c->rec, "uuid")) ?: c->name);
  cage_attest_request r;
  memset(&r, 0, sizeof r);
  r.size = sizeof r;
  r.module_id = module;
  r.pcr0 = p0;
  r.pcr1 = p1;
  r.pcr2 = p2;
  r.pcr8 = p8;
  r.debug = c->debug;
  r.public_key = c->spki;
  r.public_key_len = c->spki_len;
  r.nonce = nonce;
  r.nonce_len = nonce_len;
  r.user_data = ud;
  r.user_data_len = ud_len;
  return cage_attest_doc_build(c->st->h, c->st->p, &r, cb, arg);
}

/* ---- requests -------------------------------------------------------------------------------- */

typedef struct cb_txn {
  uint32_t magic;
  int refs;
  cb_state *st;
  evs_request *req;
  cb_cage *c;
  char app[CB_APP_MAX + 1], name[CB_NAME_MAX + 1];
  char ctx[40];
  int64_t t0;
  int trx;
  int recorded;           /* its record is bound to the response (END) */
  evs__decrypt_body *dec;
  uint64_t decrypted;
  cb_inst *inst;          /* the instance it was proxied to (held until the end) */
} cb_txn;

static void txn_unref(cb_txn *t) {
  if (--t->refs > 0) return;
  if (t->inst) cb_inst_release(t->inst);
  evs__decrypt_body_free(t->dec);
  if (t->c) cb_cage_unref(t->c);
  free(t);
}

static void txn_gone(void *arg) {
  cb_txn *t = arg;
  t->req = NULL;
  txn_unref(t);
}

static void txn_error(cb_txn *t, int status, const char *code, const char *detail) {
  if (t->req) t->st->h->respond_error(t->req, status, code, detail);
  txn_unref(t);
}

static int body_source(void *arg, uint8_t *buf, size_t cap, size_t *ret_len) {
  cb_txn *t = arg;
  relay_spool *sp = evs__decrypt_body_spool(t->dec);
  if (!buf) {
    relay_spool_rewind(sp);
    return 0;
  }
  return relay_spool_read(sp, buf, cap, ret_len);
}

static void proxy_now(cb_txn *t) {
  cb_state *st = t->st;
  evs_request *req = t->req;
  if (!req) {
    txn_unref(t);
    return;
  }
  cb_inst *in = t->c->cur;
  const char *sock = in && in->ci && in->state == CAGE_READY ? cage_run_app_socket(in->ci) : NULL;
  if (!sock) {
    txn_error(t, 503, "service-unavailable", "The cage is not running");
    return;
  }
  const evs_request_info *ri = st->h->request_info(req);
  st->h->request_remove_header(req, "api-key");
  st->h->request_set_header(req, "x-forwarded-proto", "https");
  evs_upstream up;
  memset(&up, 0, sizeof up);
  up.size = sizeof up;
  up.scheme = "http";
  up.host = "localhost";
  up.host_header = ri->host;
  up.x_forwarded_for = 1;
  up.verify = 1;
  up.unix_path = sock;
  if (t->dec) {
    up.body_source = body_source;
    up.body_source_arg = t;
    up.body_source_len = relay_spool_total(evs__decrypt_body_spool(t->dec));
  }
  int rc = st->h->proxy(req, &up, NULL, NULL, t);
  if (rc == 0) {
    t->inst = in;
    cb_inst_hold(in);
  }
  if (rc < 0) {
    txn_error(t, 502, "service-unavailable", "The cage could not be reached");
    return;
  }
  txn_unref(t); /* the chain's reference; the request keeps its own until it ends */
}

static void on_values_back(void *arg, int status) {
  cb_txn *t = arg;
  if (status < 0) {
    txn_error(t, 500, "decryption-error", "The request's encrypted values could not be decrypted");
    return;
  }
  t->decrypted = evs__decrypt_body_decrypted(t->dec);
  proxy_now(t);
}

static void on_req_body(void *arg, int status, const uint8_t *data, size_t len) {
  cb_txn *t = arg;
  cb_state *st = t->st;
  if (status < 0 || !t->req) {
    if (status == -E2BIG) txn_error(t, 413, "bad-request", "The request body is too large");
    else txn_error(t, 400, "bad-request", "The request body could not be read");
    return;
  }
  evs_header ct;
  char ctz[512] = "";
  if (st->h->request_header(t->req, "content-type", &ct) == 0 && ct.value_len < sizeof ctz) {
    memcpy(ctz, ct.value, ct.value_len);
    ctz[ct.value_len] = 0;
  }
  evs__decrypt_body_cfg cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = sizeof cfg;
  cfg.host = st->h;
  cfg.plugin = st->p;
  cfg.app_id = t->app;
  cfg.spool_dir = st->spool_dir; /* borrowed: the state outlives requests */
  cfg.max_file = (size_t)st->max_body;
  cfg.done = on_values_back;
  cfg.arg = t;
  int r = evs__decrypt_body_new(&cfg, ctz[0] ? ctz : NULL, &t->dec);
  if (r == 0) r = evs__decrypt_body_feed(t->dec, data, len);
  if (r == 0) r = evs__decrypt_body_finish(t->dec);
  if (r == EVS__DBODY_PENDING) return; /* on_values_back follows */
  if (r < 0) {
    txn_error(t, 500, "decryption-error", "The request's encrypted values could not be decrypted");
    return;
  }
  t->decrypted = evs__decrypt_body_decrypted(t->dec);
  proxy_now(t);
}

static void after_auth(cb_txn *t) {
  cb_state *st = t->st;
  if (!t->req) {
    txn_unref(t);
    return;
  }
  const evs_request_info *ri = st->h->request_info(t->req);
  if ((ri->has_content_length && ri->content_length > 0) || ri->chunked) {
    if (st->h->read_body(t->req, (size_t)st->max_body, on_req_body, t) < 0)
      txn_error(t, 400, "bad-request", "The request body could not be read");
    return;
  }
  proxy_now(t);
}

static void on_key_checked(void *arg, int status, const char *app_id) {
  cb_txn *t = arg;
  if (status == EVS_ENOCRYPTO) {
    txn_error(t, 503, "service-unavailable", "The API key cannot be checked now");
    return;
  }
  /* The key must be one of the cage's own app. */
  if (status != EVS_CRYPTO_OK || !app_id || strcmp(app_id, t->app) != 0) {
    txn_error(t, 401, "unauthorized", "A valid api-key header for the cage's app is required");
    return;
  }
  after_auth(t);
}

static void on_wellknown_doc(void *arg, int status, const uint8_t *doc, size_t len) {
  cb_txn *t = arg;
  if (status < 0 || !t->req) {
    txn_error(t, 503, "service-unavailable", "The attestation document cannot be made now");
    return;
  }
  char *b = b64(doc, len);
  json_t *j = b ? json_pack("{s:s}", "attestation_doc", b) : NULL;
  char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
  free(b);
  json_decref(j);
  if (!s) {
    txn_error(t, 500, "internal-error", "Out of memory");
    return;
  }
  evs_header hd = {"Content-Type", 12, "application/json", 16};
  t->st->h->respond(t->req, 200, &hd, 1, (const uint8_t *)s, strlen(s));
  free(s);
  txn_unref(t);
}

static int front_request(void *state, evs_request *req) {
  cb_state *st = state;
  const evs_host *h = st->h;
  const evs_request_info *ri = h->request_info(req);
  cb_cage *c = cb_cage_by_host(st, ri->host);
  if (!c || c->no_tls_termination) {
    h->respond_error(req, 404, "resource-not-found", "No cage is deployed at this address");
    return EVS_HANDLED;
  }
  cb_txn *t = calloc(1, sizeof *t);
  if (!t) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  t->magic = TXN_MAGIC;
  t->refs = 2; /* the request's and the chain's */
  t->st = st;
  t->req = req;
  t->c = c;
  cb_cage_ref(c);
  /* Copied without snprintf: its three calls here were ~1% of the worker's samples. */
  _Static_assert(sizeof t->app == sizeof c->app && sizeof t->name == sizeof c->name,
                 "the cage's names fit the transaction's");
  memcpy(t->app, c->app, sizeof t->app);
  memcpy(t->name, c->name, sizeof t->name);
  t->t0 = mono_ns();
  t->trx = c->trx_logging;
  /* The ctx id: what the transaction record and the response share (8-4-4-4-12 hex). */
  char hex[33];
  cb_random_hex(hex, 16);
  static const uint8_t at[5] = {0, 8, 12, 16, 20}, len[5] = {8, 4, 4, 4, 12};
  char *o = t->ctx;
  for (int i = 0; i < 5; i++) {
    if (i) *o++ = '-';
    memcpy(o, hex + at[i], len[i]);
    o += len[i];
  }
  *o = 0;
  h->request_set_data(req, st->p, t, txn_gone);
  h->response_add_header(req, "x-evervault-cage-ctx", t->ctx);
  if (!strcmp(ri->path, "/.well-known/attestation") &&
      (!strcmp(ri->method, "GET") || !strcmp(ri->method, "HEAD"))) {
    /* ?nonce=<hex> (evctl cage attest --nonce): the document carries it, so it is fresh. */
    uint8_t nonce[CAGE_ATTEST_MAX_FIELD];
    size_t nn = 0;
    const char *q = strstr(ri->query, "nonce=");
    if (q && (q == ri->query || q[-1] == '&')) {
      q += 6;
      while (nn < sizeof nonce && isxdigit((unsigned char)q[2 * nn]) &&
             isxdigit((unsigned char)q[2 * nn + 1])) {
        unsigned v;
        sscanf(q + 2 * nn, "%2x", &v);
        nonce[nn++] = (uint8_t)v;
      }
    }
    if (attest(c, nn ? nonce : NULL, nn, NULL, 0, on_wellknown_doc, t) < 0)
      txn_error(t, 503, "service-unavailable", "The attestation document cannot be made now");
    return EVS_HANDLED;
  }
  if (t->trx && h->store_append_ready(st->p) == -ENOTCONN) {
    /* No response goes out whose record could not be kept (docs/state.md): refused before
     * anything reaches the cage, so the client may retry safely. */
    t->trx = 0;
    txn_error(t, 503, "service-unavailable",
              "The transaction log cannot be written right now; retry later.");
    return EVS_HANDLED;
  }
  if (!c->api_key_auth) {
    after_auth(t);
    return EVS_HANDLED;
  }
  evs_header key;
  if (h->request_header(req, "api-key", &key) != 0 || key.value_len == 0 ||
      key.value_len > 512) {
    txn_error(t, 401, "unauthorized", "A valid api-key header for the cage's app is required");
    return EVS_HANDLED;
  }
  evs_api_key_request kr;
  memset(&kr, 0, sizeof kr);
  kr.size = sizeof kr;
  kr.key = key.value;
  kr.key_len = key.value_len;
  kr.permission = "api:encrypt"; /* granted to every key of the app */
  kr.recheck = 1;
  int rc = h->check_api_key(st->p, &kr, on_key_checked, t);
  if (rc == EVS_ENOCRYPTO)
    txn_error(t, 503, "service-unavailable", "The API key cannot be checked now");
  else if (rc < 0) /* a key the provider refuses to look at (malformed) */
    txn_error(t, 401, "unauthorized", "A valid api-key header for the cage's app is required");
  return EVS_HANDLED;
}

/* A growing JSON text: the record is written by hand, since building a jansson object and
 * dumping it (its double through printf) was most of the record's cost on the loop. */
typedef struct jbuf {
  char *p;
  size_t n, cap;
  int oom;
  char *heap;     /* p once the text outgrew the caller's buffer */
} jbuf;

/* Starts in the caller's buffer: a record is copied by the append queue, so it needs no
 * allocation of its own unless its path is long. */
static void jb_init(jbuf *b, char *stack, size_t cap) {
  memset(b, 0, sizeof *b);
  b->p = stack;
  b->cap = cap;
}

static void jb_free(jbuf *b) {
  free(b->heap);
  b->heap = NULL;
}

static void jb_put(jbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *np = realloc(b->heap, cap);
    if (!np) {
      b->oom = 1;
      return;
    }
    if (!b->heap) memcpy(np, b->p, b->n);
    b->heap = b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}

/* ,"key":"value" with value escaped as JSON requires (bytes >= 0x80 are passed as they are:
 * the store refuses a record that is not UTF-8, as jansson refused to build one). */
static void jb_str(jbuf *b, const char *key, const char *v) {
  char tmp[8];
  jb_put(b, b->n > 1 ? ",\"" : "\"", b->n > 1 ? 2 : 1);
  jb_put(b, key, strlen(key));
  jb_put(b, "\":\"", 3);
  const char *run = v;
  for (; *v; v++) {
    unsigned char ch = (unsigned char)*v;
    if (ch >= 0x20 && ch != '"' && ch != '\\') continue;
    jb_put(b, run, (size_t)(v - run));
    if (ch == '"' || ch == '\\') {
      tmp[0] = '\\';
      tmp[1] = (char)ch;
      jb_put(b, tmp, 2);
    } else {
      snprintf(tmp, sizeof tmp, "\\u%04x", ch);
      jb_put(b, tmp, 6);
    }
    run = v + 1;
  }
  jb_put(b, run, (size_t)(v - run));
  jb_put(b, "\"", 1);
}

static void jb_raw(jbuf *b, const char *key, const char *num) {
  jb_put(b, ",\"", 2);
  jb_put(b, key, strlen(key));
  jb_put(b, "\":", 2);
  jb_put(b, num, strlen(num));
}

/* The transaction record of a request (never bodies), as JSON text in b (jb_free after);
 * NULL if out of memory. */
static const char *trx_record(cb_state *st, evs_request *req, cb_txn *t, jbuf *b) {
  const evs_request_info *ri = st->h->request_info(req);
  const char *code = NULL;
  int status = st->h->response_status(req, &code);
  int64_t us = (mono_ns() - t->t0) / 1000;
  char num[3][48]; /* formatted by hand: three snprintf calls were most of the record's cost */
  *evs__fmt_i64(num[0], status) = 0;
  char *p = evs__fmt_i64(num[1], us / 1000);
  *p++ = '.';
  unsigned ms_frac = (unsigned)(us % 1000);
  *p++ = (char)('0' + ms_frac / 100);
  *p++ = (char)('0' + ms_frac / 10 % 10);
  *p++ = (char)('0' + ms_frac % 10);
  *p = 0;
  *evs__fmt_u64(num[2], (uint64_t)t->decrypted) = 0;
  jb_put(b, "{", 1);
  jb_str(b, "ctx", t->ctx);
  jb_str(b, "app", t->app);
  jb_str(b, "cage", t->name);
  jb_str(b, "method", ri->method);
  jb_str(b, "path", ri->path);
  jb_raw(b, "status", num[0]);
  jb_raw(b, "durationMs", num[1]);
  jb_raw(b, "decryptedFields", num[2]);
  jb_str(b, "requestId", ri->request_id ? ri->request_id : "");
  if (code) jb_str(b, "errorCode", code);
  jb_put(b, "}", 1);
  return b->oom ? NULL : b->p;
}

/* END (ABI 1.9): the response is complete and its end not yet sent. Its record is bound to it,
 * so the client gets the end only once the record is committed, as for the relays. */
static int front_end(void *state, evs_request *req) {
  cb_state *st = state;
  cb_txn *t = st->h->request_get_data(req, st->p);
  if (!t || t->magic != TXN_MAGIC || !t->trx || t->recorded) return EVS_DECLINED;
  char stack[512];
  jbuf b;
  jb_init(&b, stack, sizeof stack);
  const char *s = trx_record(st, req, t, &b);
  int r = s ? st->h->store_append_request(st->p, req, "trx", s) : -ENOMEM;
  t->recorded = r == 0 || r == -EALREADY || r == -ECONNRESET; /* else LOG tries again */
  jb_free(&b);
  return EVS_DECLINED;
}

/* LOG: a response that never ended (cut short, the client gone, a passthrough) is recorded
 * here, written behind: no client holds a complete response for it. */
static int front_log(void *state, evs_request *req) {
  cb_state *st = state;
  cb_txn *t = st->h->request_get_data(req, st->p);
  if (!t || t->magic != TXN_MAGIC || !t->trx || t->recorded) return EVS_DECLINED;
  char stack[512];
  jbuf b;
  jb_init(&b, stack, sizeof stack);
  const char *s = trx_record(st, req, t, &b);
  if (s) st->h->store_append(st->p, "trx", s);
  jb_free(&b);
  return EVS_DECLINED;
}

/* ---- the Encryption API inside the cage ------------------------------------------------------ */

typedef struct api_job {
  cb_state *st;
  cage_api_call *call;
  json_t *doc;
  json_t **slots;       /* the leaves being replaced, in order */
  size_t n, cap;
  int decrypt;
} api_job;

static void api_reply_json(cage_api_call *call, int status, json_t *j) {
  char *s = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  if (!s) {
    static const char err[] = "{\"error\":\"internal error\"}";
    cage_api_reply(call, 500, "application/json", (const uint8_t *)err, sizeof err - 1);
    return;
  }
  cage_api_reply(call, status, "application/json", (const uint8_t *)s, strlen(s));
  OPENSSL_cleanse(s, strlen(s));
  free(s);
}

static void api_error(cage_api_call *call, int status, const char *msg) {
  json_t *j = json_pack("{s:s}", "error", msg);
  api_reply_json(call, status, j);
  json_decref(j);
}

static void api_job_free(api_job *a) {
  json_decref(a->doc);
  free(a->slots);
  free(a);
}

/* Collects the leaves to encrypt (every string, number and boolean) or to decrypt (ev:
 * strings). Containers hold references: the slots point into the document. */
static int collect(api_job *a, json_t *v) {
  if (json_is_object(v)) {
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) if (collect(a, x) < 0) return -1;
    return 0;
  }
  if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) if (collect(a, x) < 0) return -1;
    return 0;
  }
  int take = a->decrypt ? json_is_string(v) && !strncmp(json_string_value(v), "ev:", 3)
                        : json_is_string(v) || json_is_number(v) || json_is_boolean(v);
  if (!take) return 0;
  if (a->n == EVS_CRYPTO_MAX_VALUES) return -1;
  if (a->n == a->cap) {
    size_t nc = a->cap ? 2 * a->cap : 16;
    json_t **ns = realloc(a->slots, nc * sizeof *ns);
    if (!ns) return -1;
    a->slots = ns;
    a->cap = nc;
  }
  a->slots[a->n++] = v;
  return 0;
}

/* Replaces old with nv in the document (a leaf is found by identity). */
static int replace(json_t *parent, json_t *old, json_t *nv) {
  if (json_is_object(parent)) {
    const char *k;
    json_t *x;
    json_object_foreach(parent, k, x) {
      if (x == old) {
        json_object_set_new(parent, k, nv);
        return 1;
      }
      if (replace(x, old, nv)) return 1;
    }
  } else if (json_is_array(parent)) {
    size_t i;
    json_t *x;
    json_array_foreach(parent, i, x) {
      if (x == old) {
        json_array_set_new(parent, i, nv);
        return 1;
      }
      if (replace(x, old, nv)) return 1;
    }
  }
  return 0;
}

static void on_api_values(void *arg, int status, const evs_crypto_result *res, size_t n) {
  api_job *a = arg;
  if (status != EVS_CRYPTO_OK || n != a->n) {
    api_error(a->call, status == EVS_CRYPTO_E_NO_APP ? 503 : 500,
              "the values could not be processed (is the app unlocked?)");
    api_job_free(a);
    return;
  }
  json_t *out = a->doc;
  for (size_t i = 0; i < n; i++) {
    json_t *nv;
    if (res[i].status != EVS_CRYPTO_OK) {
      nv = json_incref(a->slots[i]); /* left as it was, as the relays do */
    } else if (a->decrypt && res[i].type == EVS_CRYPTO_NUMBER) {
      nv = json_loadb((const char *)res[i].data, res[i].len, JSON_DECODE_ANY, NULL);
    } else if (a->decrypt && res[i].type == EVS_CRYPTO_BOOLEAN) {
      nv = json_boolean(res[i].len == 4 && !memcmp(res[i].data, "true", 4));
    } else {
      nv = json_stringn((const char *)res[i].data, res[i].len);
    }
    if (!nv) nv = json_null();
    if (out == a->slots[i]) {
      out = nv; /* the whole body was one value */
      a->slots[i] = NULL;
      continue;
    }
    replace(out, a->slots[i], nv);
  }
  api_reply_json(a->call, 200, out);
  if (out != a->doc) json_decref(out);
  api_job_free(a);
}

static void on_api_doc(void *arg, int status, const uint8_t *doc, size_t len) {
  cage_api_call *call = arg;
  if (status < 0) {
    api_error(call, 503, "the attestation document cannot be made now");
    return;
  }
  char *b = b64(doc, len);
  if (!b) {
    api_error(call, 500, "out of memory");
    return;
  }
  cage_api_reply(call, 200, "text/plain", (const uint8_t *)b, strlen(b));
  free(b);
}

void cb_front_on_api(void *arg, cage_instance *ci, cage_api_call *call, const char *method,
                     const char *path, const uint8_t *body, size_t len) {
  (void)ci;
  cb_inst *in = arg;
  cb_cage *c = in->c;
  if (!c) {
    api_error(call, 503, "the cage is stopping");
    return;
  }
  cb_state *st = c->st;
  if (strcmp(method, "POST") != 0 && strcmp(method, "GET") != 0) {
    api_error(call, 405, "method not allowed");
    return;
  }
  if (len > CB_API_MAX_BODY) {
    api_error(call, 413, "the body is too large");
    return;
  }
  json_t *doc = len ? json_loadb((const char *)body, len, JSON_DECODE_ANY, NULL) : json_object();
  if (!strcmp(path, "/attestation-doc")) {
    const char *ch = json_string_value(json_object_get(doc, "challenge"));
    const char *no = json_string_value(json_object_get(doc, "nonce"));
    int rc = attest(c, (const uint8_t *)no, no ? strlen(no) : 0, (const uint8_t *)ch,
                    ch ? strlen(ch) : 0, on_api_doc, call);
    json_decref(doc);
    if (rc < 0) api_error(call, 503, "the attestation document cannot be made now");
    return;
  }
  int decrypt = !strcmp(path, "/decrypt");
  if (!decrypt && strcmp(path, "/encrypt") != 0) {
    json_decref(doc);
    api_error(call, 404, "no such endpoint: /encrypt, /decrypt or /attestation-doc");
    return;
  }
  if (!doc) {
    api_error(call, 400, "the body must be JSON");
    return;
  }
  api_job *a = calloc(1, sizeof *a);
  if (!a) {
    json_decref(doc);
    api_error(call, 500, "out of memory");
    return;
  }
  a->st = st;
  a->call = call;
  a->doc = doc;
  a->decrypt = decrypt;
  if (collect(a, doc) < 0) {
    api_error(call, 400, "too many values in one request");
    api_job_free(a);
    return;
  }
  if (a->n == 0) {
    api_reply_json(call, 200, doc);
    api_job_free(a);
    return;
  }
  evs_crypto_value *vals = calloc(a->n, sizeof *vals);
  char (*nums)[64] = calloc(a->n, sizeof *nums);
  if (!vals || !nums) {
    free(vals);
    free(nums);
    api_error(call, 500, "out of memory");
    api_job_free(a);
    return;
  }
  for (size_t i = 0; i < a->n; i++) {
    json_t *v = a->slots[i];
    vals[i].size = sizeof vals[i];
    if (json_is_string(v)) {
      vals[i].type = EVS_CRYPTO_STRING;
      vals[i].data = (const uint8_t *)json_string_value(v);
      vals[i].len = json_string_length(v);
    } else if (json_is_boolean(v)) {
      vals[i].type = EVS_CRYPTO_BOOLEAN;
      vals[i].data = (const uint8_t *)(json_is_true(v) ? "true" : "false");
      vals[i].len = json_is_true(v) ? 4 : 5;
    } else {
      vals[i].type = EVS_CRYPTO_NUMBER;
      if (json_is_integer(v))
        snprintf(nums[i], sizeof nums[i], "%" JSON_INTEGER_FORMAT, json_integer_value(v));
      else snprintf(nums[i], sizeof nums[i], "%.17g", json_real_value(v));
      vals[i].data = (const uint8_t *)nums[i];
      vals[i].len = strlen(nums[i]);
    }
  }
  int rc;
  if (decrypt) {
    evs_decrypt_request dr = {sizeof dr, c->app, vals, a->n};
    rc = st->h->decrypt_values(st->p, &dr, on_api_values, a);
  } else {
    evs_encrypt_request er = {sizeof er, c->app, "prime256v1", NULL, vals, a->n};
    rc = st->h->encrypt_values(st->p, &er, on_api_values, a);
  }
  free(vals);
  free(nums);
  if (rc < 0) {
    api_error(call, 503, "the enclave is unavailable");
    api_job_free(a);
  }
}

/* ---- disable_tls_termination: the client's TLS to the app, untouched ------------------------ */

typedef struct cb_pipe {
  cb_state *st;
  evs_stream *client, *app;
  int closed;
} cb_pipe;

static void pipe_close(cb_pipe *p) {
  if (p->closed) return;
  p->closed = 1;
  /* Closing a stream stops its callbacks (and cancels a connect still in flight). */
  if (p->client) p->st->h->stream_close(p->client);
  if (p->app) p->st->h->stream_close(p->app);
  free(p);
}

static void on_client_data(void *arg, evs_stream *s, int status, const uint8_t *d, size_t n);
static void on_app_data(void *arg, evs_stream *s, int status, const uint8_t *d, size_t n);

/* Backpressure: a side whose peer's write queue is full stops reading until it drains. */
static void resume_client(void *arg, evs_stream *s, int status) {
  (void)s;
  cb_pipe *p = arg;
  if (status == 0 && !p->closed) p->st->h->stream_read_start(p->client, on_client_data, p);
}

static void resume_app(void *arg, evs_stream *s, int status) {
  (void)s;
  cb_pipe *p = arg;
  if (status == 0 && !p->closed) p->st->h->stream_read_start(p->app, on_app_data, p);
}

static void relay(cb_pipe *p, evs_stream *from, evs_stream *to, const uint8_t *d, size_t n,
                  evs_stream_write_fn resume) {
  const evs_host *h = p->st->h;
  if (h->stream_write(to, d, n, NULL, NULL) < 0) {
    pipe_close(p);
    return;
  }
  if (h->stream_write_queued(to) >= EVS_STREAM_HIGH_WATER) {
    h->stream_read_stop(from);
    h->stream_on_drain(to, resume, p);
  }
}

static void on_client_data(void *arg, evs_stream *s, int status, const uint8_t *d, size_t n) {
  cb_pipe *p = arg;
  if (status < 0 || n == 0) pipe_close(p);
  else relay(p, s, p->app, d, n, resume_client);
}

static void on_app_data(void *arg, evs_stream *s, int status, const uint8_t *d, size_t n) {
  cb_pipe *p = arg;
  if (status < 0 || n == 0) pipe_close(p);
  else relay(p, s, p->client, d, n, resume_app);
}

static void on_app_connected(void *arg, evs_stream *s, int status) {
  cb_pipe *p = arg;
  if (status < 0) {
    p->app = NULL;
    pipe_close(p);
    return;
  }
  p->app = s;
  const evs_host *h = p->st->h;
  if (h->stream_read_start(p->app, on_app_data, p) < 0 ||
      h->stream_read_start(p->client, on_client_data, p) < 0) /* the ClientHello comes first */
    pipe_close(p);
}

static int passthrough(void *arg, const char *sni, evs_stream *s) {
  cb_state *st = arg;
  cb_cage *c = cb_cage_by_host(st, sni);
  if (!c || !c->no_tls_termination) return 0; /* TLS terminated here, as usual */
  cb_inst *in = c->cur;
  const char *sock = in && in->ci && in->state == CAGE_READY ? cage_run_app_socket(in->ci) : NULL;
  cb_pipe *p = sock ? calloc(1, sizeof *p) : NULL;
  if (!p) {
    st->h->stream_close(s); /* not running: the client's handshake fails */
    return 1;
  }
  p->st = st;
  p->client = s;
  st->h->counter_add(st->p, "passthrough_connections", 1);
  evs_stream_connect o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.unix_path = sock;
  p->app = st->h->stream_connect(st->p, &o, on_app_connected, p);
  if (!p->app) pipe_close(p);
  return 1;
}

int cb_front_init(cb_state *st) {
  const evs_host *h = st->h;
  const char *role = h->config_string(st->p, "role") ?: "cages";
  int rc = h->add_tls_identity(st->p, role, st->domain, identity, st);
  if (rc == 0) rc = h->add_tls_passthrough(st->p, role, st->domain, passthrough, st);
  evs_route r;
  memset(&r, 0, sizeof r);
  r.size = sizeof r;
  r.role = role;
  r.path_prefix = "/";
  r.handler = front_request;
  if (rc == 0) rc = h->add_route(st->p, &r);
  if (rc == 0) rc = h->add_hook(st->p, EVS_PHASE_END, front_end);
  if (rc == 0) rc = h->add_hook(st->p, EVS_PHASE_LOG, front_log);
  if (rc < 0) h->log(st->p, NULL, EVS_LOG_ERROR, "cannot register the cages' front: %s",
                     strerror(-rc));
  return rc;
}
