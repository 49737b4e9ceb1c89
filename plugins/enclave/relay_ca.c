/*
 * relay_ca.c: the node's relay CA, as the enclave plugin keeps it (enclave/README.md, "The relay
 * CA"). The enclave makes the CA and signs leaves (EVS_EP_CA_CREATE, EVS_EP_CA_SIGN); this file
 * stores what it returns, keeps a per-worker copy, and offers it three ways:
 *
 *   - the admin API (`evctl relay-ca`): POST /relay-ca (create), GET /relay-ca (show),
 *     POST /relay-ca/rotate, DELETE /relay-ca/<fingerprint> (drop an older CA from the bundle);
 *   - the api role: GET /relay-ca.pem, no auth, the value of the SDKs' EV_CERT_HOSTNAME,
 *     answered from memory with an ETag (the SDK fetches it before every proxied request);
 *   - the crypto provider (ABI 1.7): issue_certificate, ca_certificates.
 *
 * The store holds one record, "relay-ca": {"version":1,"cas":[{"cert":PEM,"sealedKey":base64,
 * "created":unix}, ...]}, newest (current) first. The sealed key is the enclave's blob (AES-GCM
 * under the sealing key); the private key is never in the store, the plugin or the logs in
 * plaintext. Every worker reads the record at start, after a node message ('C', sent by the
 * worker that changed it), every RELAY_CA_REFRESH_MS (other nodes sharing a PostgreSQL store),
 * and on a miss.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "enclave_int.h"
#include "evs_enclave_proto.h"

#define RELAY_CA_KEY "relay-ca"
#define RELAY_CA_REFRESH_MS 60000
#define RELAY_CA_MISS_MS 1000 /* a miss reads the store at most this often */
#define RELAY_CA_MAX_TRUSTED 16

struct relay_ca {
  char *pem;          /* the current CA certificate */
  size_t pem_len;
  uint8_t *sealed;    /* its sealed key (opaque: only the enclave opens it) */
  size_t sealed_len;
  char *bundle;       /* current, then older CAs still valid */
  size_t bundle_len;
  char etag[40];      /* "\"<32 hex>\"" of the bundle */
};

static void ca_free(relay_ca *c) {
  if (!c) return;
  free(c->pem);
  free(c->sealed);
  free(c->bundle);
  free(c);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static X509 *cert_of(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  return x;
}

static int cert_expired(X509 *x) {
  return X509_cmp_time(X509_get0_notAfter(x), NULL) <= 0;
}

/* "AB:CD:..." of SHA-256 over the DER, as `openssl x509 -fingerprint -sha256` prints it. */
static void fingerprint(X509 *x, char out[96 + 1]) {
  unsigned char md[32];
  unsigned int n = 0;
  out[0] = 0;
  if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32) return;
  for (unsigned i = 0; i < 32; i++) sprintf(out + 3 * i, "%02X%s", md[i], i < 31 ? ":" : "");
}

static json_t *asn1_time_json(const ASN1_TIME *t) {
  struct tm tm;
  char buf[32];
  if (ASN1_TIME_to_tm(t, &tm) != 1) return json_null();
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return json_string(buf);
}

/* What show prints of one CA. */
static json_t *cert_json(const char *pem) {
  X509 *x = cert_of(pem);
  if (!x) return json_null();
  char subj[256] = "", fp[97];
  X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof subj);
  fingerprint(x, fp);
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  char *serial = bn ? BN_bn2hex(bn) : NULL;
  json_t *o = json_pack("{s:s,s:s,s:s,s:o,s:o,s:b}", "subject", subj, "fingerprint", fp,
                        "serial", serial ? serial : "", "notBefore",
                        asn1_time_json(X509_get0_notBefore(x)), "notAfter",
                        asn1_time_json(X509_get0_notAfter(x)), "expired", cert_expired(x));
  OPENSSL_free(serial);
  BN_free(bn);
  X509_free(x);
  return o;
}

/* Builds the in-memory copy from the store record (NULL: malformed or no CA). */
static relay_ca *ca_from_record(const uint8_t *v, size_t len) {
  json_t *root = json_loadb((const char *)v, len, 0, NULL);
  json_t *cas = json_object_get(root, "cas");
  relay_ca *c = NULL;
  if (!json_is_array(cas) || json_array_size(cas) == 0) goto done;
  json_t *cur = json_array_get(cas, 0);
  const char *pem = json_string_value(json_object_get(cur, "cert"));
  const char *sk = json_string_value(json_object_get(cur, "sealedKey"));
  if (!pem || !sk || !(c = calloc(1, sizeof *c))) goto done;
  if (!(c->pem = strdup(pem)) || enc_unb64(sk, strlen(sk), &c->sealed, &c->sealed_len) < 0) {
    ca_free(c);
    c = NULL;
    goto done;
  }
  c->pem_len = strlen(pem);
  size_t cap = 1, i;
  json_t *e;
  json_array_foreach(cas, i, e) {
    const char *p = json_string_value(json_object_get(e, "cert"));
    if (p) cap += strlen(p) + 1;
  }
  if (!(c->bundle = malloc(cap))) {
    ca_free(c);
    c = NULL;
    goto done;
  }
  c->bundle_len = 0;
  json_array_foreach(cas, i, e) {
    const char *p = json_string_value(json_object_get(e, "cert"));
    X509 *x = p ? cert_of(p) : NULL;
    if (x && (i == 0 || !cert_expired(x))) { /* older ones only while they are valid */
      size_t n = strlen(p);
      memcpy(c->bundle + c->bundle_len, p, n);
      c->bundle_len += n;
      if (n && p[n - 1] != '\n') c->bundle[c->bundle_len++] = '\n';
    }
    X509_free(x);
  }
  c->bundle[c->bundle_len] = 0;
  unsigned char md[32];
  unsigned int mdl = 0;
  EVP_Digest(c->bundle, c->bundle_len, md, &mdl, EVP_sha256(), NULL);
  c->etag[0] = '"';
  for (int k = 0; k < 16; k++) sprintf(c->etag + 1 + 2 * k, "%02x", md[k]);
  strcpy(c->etag + 33, "\"");
done:
  json_decref(root);
  return c;
}

static void ca_set(enclave_state *st, relay_ca *c) {
  ca_free(st->ca);
  st->ca = c;
}

/* ---- reading the store ---------------------------------------------------------------------- */

typedef void (*reload_fn)(enclave_state *st, void *arg);
typedef struct reload_job {
  enclave_state *st;
  reload_fn fn;
  void *arg;
} reload_job;

static void on_reload(void *arg, int status, const uint8_t *v, size_t len) {
  reload_job *j = arg;
  enclave_state *st = j->st;
  /* When the read ended, not began: a miss while the first read is on its way (a worker just
   * started) reads too, rather than answering from a memory not yet filled. */
  st->ca_read_ms = now_ms();
  if (status == 0) {
    relay_ca *c = ca_from_record(v, len);
    if (c) ca_set(st, c);
    else st->host->log(st->plugin, NULL, EVS_LOG_ERROR, "the store's relay-ca record is malformed");
  } else if (status == -ENOENT) {
    ca_set(st, NULL); /* removed (or never made) */
  }
  if (j->fn) j->fn(st, j->arg);
  free(j);
}

/* Re-reads the record; fn (may be NULL) runs once afterwards, whatever happened. 0 or negative
 * (fn never runs). */
static int ca_reload(enclave_state *st, reload_fn fn, void *arg) {
  reload_job *j = calloc(1, sizeof *j);
  if (!j) return -ENOMEM;
  j->st = st;
  j->fn = fn;
  j->arg = arg;
  int r = st->host->store_get(st->plugin, RELAY_CA_KEY, on_reload, j);
  if (r < 0) free(j);
  return r;
}

static void on_refresh(void *arg) { ca_reload(arg, NULL, NULL); }

int enc_relay_ca_start(enclave_state *st) {
  /* The first read right after init, then every RELAY_CA_REFRESH_MS. */
  st->ca_refresh = st->host->timer_start(st->plugin, 0, RELAY_CA_REFRESH_MS, on_refresh, st);
  return st->ca_refresh ? 0 : -ENOMEM;
}

void enc_relay_ca_stop(enclave_state *st) {
  if (st->ca_refresh) st->host->timer_free(st->ca_refresh);
  st->ca_refresh = NULL;
  ca_set(st, NULL);
}

static void node_reload_done(enclave_state *st, void *arg) { st->host->node_reply(arg, 0); }

void enc_relay_ca_node_msg(enclave_state *st, evs_node_msg *m) {
  if (ca_reload(st, node_reload_done, m) < 0) st->host->node_reply(m, -ENOMEM);
}

/* ---- GET /relay-ca.pem (api role) ------------------------------------------------------------ */

static void pem_answer(enclave_state *st, evs_request *req) {
  const evs_host *h = st->host;
  relay_ca *c = st->ca;
  if (!c) {
    h->respond_error(req, 404, "resource-not-found",
                     "No relay CA exists yet: create one with `evctl relay-ca create`");
    return;
  }
  evs_header inm;
  int fresh = h->request_header(req, "If-None-Match", &inm) == 0 &&
              inm.value_len == strlen(c->etag) && memcmp(inm.value, c->etag, inm.value_len) == 0;
  const evs_header hdr[] = {
      {"Content-Type", 12, "application/x-pem-file", 22},
      {"Cache-Control", 13, "no-cache", 8}, /* revalidate: a rotation must reach clients */
      {"ETag", 4, c->etag, strlen(c->etag)},
  };
  if (fresh)
    h->respond(req, 304, hdr + 1, 2, NULL, 0);
  else
    h->respond(req, 200, hdr, 3, (const uint8_t *)c->bundle, c->bundle_len);
}

static void pem_after_reload(enc_ctx *x, const uint8_t *body, size_t len) {
  (void)body;
  (void)len;
  pem_answer(x->st, x->req);
}

static void pem_reloaded(enclave_state *st, void *arg) {
  enc_ctx *x = arg;
  (void)st;
  if (!enc_ctx_resume(x)) return;
  pem_after_reload(x, NULL, 0);
}

static void pem_miss_step(enc_ctx *x, const uint8_t *body, size_t len) {
  (void)body;
  (void)len;
  x->pending = 1;
  if (ca_reload(x->st, pem_reloaded, x) < 0) {
    x->pending = 0;
    pem_answer(x->st, x->req);
  }
}

int enc_relay_ca_pem_route(enclave_state *st, evs_request *req) {
  if (st->ca || now_ms() - st->ca_read_ms < RELAY_CA_MISS_MS) {
    pem_answer(st, req); /* the hot path: memory only */
    return EVS_HANDLED;
  }
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    st->host->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  return enc_continue(x, 0, pem_miss_step);
}

/* ---- the crypto provider (ABI 1.7) ------------------------------------------------------------ */

typedef struct cert_call {
  enclave_state *st;
  evs_bytes_cb done;
  void *done_arg;
  ep_msg m;         /* CA_SIGN without its CA items (added when the CA is known) */
  char *ca_pem;     /* the CA that signs (the chain's second part) */
  evs_timer *timer; /* ca_certificates' deferral */
} cert_call;

static void cert_call_free(cert_call *cc) {
  ep_msg_done(&cc->m);
  free(cc->ca_pem);
  free(cc);
}

static void sign_reply(void *arg, int status, const ep_item *it, size_t n) {
  cert_call *cc = arg;
  if (status == 0 && n != 1) status = EVS_CRYPTO_E_PROTOCOL;
  if (status == EVS_EP_E_INVALID) /* names may come from clients (CONNECT hosts): debug only */
    cc->st->host->log(cc->st->plugin, NULL, EVS_LOG_DEBUG,
                      "issue_certificate refused by the enclave: a bad name, key or validity, or "
                      "a relay CA that does not open with this node's sealing key");
  if (status != 0) {
    cc->done(cc->done_arg, status, NULL, 0);
  } else {
    size_t cl = strlen(cc->ca_pem), total = it[0].len + cl + 1;
    char *chain = malloc(total + 1);
    if (!chain) {
      cc->done(cc->done_arg, -ENOMEM, NULL, 0);
    } else {
      memcpy(chain, it[0].data, it[0].len);
      size_t k = it[0].len;
      if (k && chain[k - 1] != '\n') chain[k++] = '\n';
      memcpy(chain + k, cc->ca_pem, cl);
      k += cl;
      chain[k] = 0;
      cc->done(cc->done_arg, 0, (const uint8_t *)chain, k);
      free(chain);
    }
  }
  cert_call_free(cc);
}

/* Sends the CA_SIGN of cc with the current CA; on failure answers through done. */
static void sign_send(enclave_state *st, void *arg) {
  cert_call *cc = arg;
  if (!st->ca) {
    cc->done(cc->done_arg, EVS_CRYPTO_UNAVAILABLE, NULL, 0);
    cert_call_free(cc);
    return;
  }
  ep_msg m;
  ep_msg_init(&m, EVS_EP_CA_SIGN);
  ep_msg_add(&m, st->ca->pem, st->ca->pem_len);
  ep_msg_add(&m, st->ca->sealed, st->ca->sealed_len);
  /* the caller's items (key, validity, names), already encoded after the 24-byte header */
  if (ep_msg_add_items(&m, cc->m.buf + EVS_EP_HEADER_LEN, cc->m.len - EVS_EP_HEADER_LEN) < 0 ||
      m.failed || !(cc->ca_pem = strdup(st->ca->pem))) {
    ep_msg_done(&m);
    cc->done(cc->done_arg, -ENOMEM, NULL, 0);
    cert_call_free(cc);
    return;
  }
  int r = enc_enclave_send(st, &m, sign_reply, cc);
  if (r < 0) {
    cc->done(cc->done_arg, r, NULL, 0);
    cert_call_free(cc);
  }
}

static void sign_deferred(void *arg) {
  cert_call *cc = arg;
  cc->st->host->timer_free(cc->timer);
  cc->timer = NULL;
  sign_send(cc->st, cc);
}

int enc_issue_certificate(void *state, const evs_cert_request *req, evs_bytes_cb done,
                          void *done_arg) {
  enclave_state *st = state;
  if (st->disabled) return EVS_ENOCRYPTO;
  size_t kl = strlen(req->public_key_pem);
  if (kl == 0 || kl > 16384 || req->nnames == 0 || req->nnames > EVS_CERT_MAX_NAMES)
    return -EINVAL;
  cert_call *cc = calloc(1, sizeof *cc);
  if (!cc) return -ENOMEM;
  cc->st = st;
  cc->done = done;
  cc->done_arg = done_arg;
  ep_msg_init(&cc->m, EVS_EP_CA_SIGN);
  ep_msg_add(&cc->m, req->public_key_pem, kl);
  uint8_t v[4];
  evs_ep_put_u32(v, req->validity_s);
  ep_msg_add(&cc->m, v, 4);
  for (size_t i = 0; i < req->nnames; i++) {
    size_t nl = strlen(req->names[i]);
    if (nl == 0 || nl > 253) { /* the enclave checks the rest */
      cert_call_free(cc);
      return -EINVAL;
    }
    ep_msg_add(&cc->m, req->names[i], nl);
  }
  if (cc->m.failed) {
    cert_call_free(cc);
    return -ENOMEM;
  }
  /* Never call done before returning: with the CA in memory, go on from a zero timer; on a
   * miss, read the store first. */
  int r = 0;
  if (st->ca || now_ms() - st->ca_read_ms < RELAY_CA_MISS_MS)
    r = (cc->timer = st->host->timer_start(st->plugin, 0, 0, sign_deferred, cc)) ? 0 : -ENOMEM;
  else
    r = ca_reload(st, sign_send, cc);
  if (r < 0) cert_call_free(cc);
  return r;
}

static void bundle_answer(enclave_state *st, void *arg) {
  cert_call *cc = arg;
  if (st->ca)
    cc->done(cc->done_arg, 0, (const uint8_t *)st->ca->bundle, st->ca->bundle_len);
  else
    cc->done(cc->done_arg, EVS_CRYPTO_UNAVAILABLE, NULL, 0);
  cert_call_free(cc);
}

static void bundle_deferred(void *arg) {
  cert_call *cc = arg;
  cc->st->host->timer_free(cc->timer);
  cc->timer = NULL;
  bundle_answer(cc->st, cc);
}

int enc_ca_certificates(void *state, evs_bytes_cb done, void *done_arg) {
  enclave_state *st = state;
  if (st->disabled) return EVS_ENOCRYPTO;
  cert_call *cc = calloc(1, sizeof *cc);
  if (!cc) return -ENOMEM;
  cc->st = st;
  cc->done = done;
  cc->done_arg = done_arg;
  int r;
  if (st->ca || now_ms() - st->ca_read_ms < RELAY_CA_MISS_MS)
    r = (cc->timer = st->host->timer_start(st->plugin, 0, 0, bundle_deferred, cc)) ? 0 : -ENOMEM;
  else
    r = ca_reload(st, bundle_answer, cc);
  if (r < 0) free(cc);
  return r;
}

/* ---- the admin API ---------------------------------------------------------------------------- */

enum { CA_SHOW = 1, CA_CREATE, CA_ROTATE, CA_REMOVE };

static json_t *show_json(enclave_state *st, const uint8_t *record, size_t len) {
  json_t *root = json_loadb((const char *)record, len, 0, NULL);
  json_t *cas = json_object_get(root, "cas");
  json_t *trusted = json_array(), *current = json_null();
  size_t i;
  json_t *e;
  json_array_foreach(cas, i, e) {
    const char *p = json_string_value(json_object_get(e, "cert"));
    json_t *cj = p ? cert_json(p) : json_null();
    if (i == 0) current = json_incref(cj);
    json_array_append_new(trusted, cj);
  }
  json_decref(root);
  const char *url = st->host->config_string(st->plugin, "relay_ca_url");
  return json_pack("{s:o,s:o,s:s,s:o}", "current", current, "trusted", trusted, "path",
                   RELAY_CA_PATH, "url", url && *url ? json_string(url) : json_null());
}

typedef struct admin_job {
  enc_ctx *x;
  int action;
  char cn[65];
  uint32_t days;
  char fp[100];
  json_t *record; /* the record as read (NULL: none) */
  char *new_record;
} admin_job;

static void job_free(admin_job *j) {
  json_decref(j->record);
  free(j->new_record);
  free(j);
}

static void job_reply_error(admin_job *j, int status, const char *code, const char *detail) {
  enc_reply_error(j->x, status, code, detail);
  job_free(j);
}

static void on_broadcast(void *arg, size_t workers, size_t ok) {
  admin_job *j = arg;
  enc_ctx *x = j->x;
  if (!enc_ctx_resume(x)) {
    job_free(j);
    return;
  }
  json_t *o = show_json(x->st, (const uint8_t *)j->new_record, strlen(j->new_record));
  json_object_set_new(o, "workers", json_integer((json_int_t)workers + 1));
  json_object_set_new(o, "workersUpdated", json_integer((json_int_t)ok + 1));
  enc_reply_json(x, j->action == CA_CREATE ? 201 : 200, o);
  job_free(j);
}

static void on_put(void *arg, int status, const uint8_t *v, size_t len) {
  admin_job *j = arg;
  enc_ctx *x = j->x;
  (void)v;
  (void)len;
  if (status == 0) { /* this worker at once; the others through the node message */
    relay_ca *c = ca_from_record((const uint8_t *)j->new_record, strlen(j->new_record));
    if (c) ca_set(x->st, c);
  }
  if (!enc_ctx_resume(x)) {
    job_free(j);
    return;
  }
  if (status != 0) {
    job_reply_error(j, 500, "internal-error", "The relay CA could not be stored");
    return;
  }
  x->pending = 1;
  static const uint8_t msg[] = {'C'};
  if (x->st->host->node_broadcast(x->st->plugin, msg, 1, ENC_NODE_TIMEOUT_MS, on_broadcast, j) < 0)
    on_broadcast(j, 0, 0);
}

static void store_record(admin_job *j, json_t *cas) {
  enc_ctx *x = j->x;
  json_t *rec = json_pack("{s:i,s:o}", "version", 1, "cas", cas);
  j->new_record = rec ? json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(rec);
  if (!j->new_record) {
    job_reply_error(j, 500, "internal-error", "Out of memory");
    return;
  }
  x->pending = 1;
  if (x->st->host->store_put(x->st->plugin, RELAY_CA_KEY, (const uint8_t *)j->new_record,
                             strlen(j->new_record), 0, on_put, j) < 0) {
    x->pending = 0;
    job_reply_error(j, 500, "internal-error", "The relay CA could not be stored");
  }
}

static void on_created(void *arg, int status, const ep_item *it, size_t n) {
  admin_job *j = arg;
  enc_ctx *x = j->x;
  if (!enc_ctx_resume(x)) {
    job_free(j);
    return;
  }
  if (status == 0 && n != 2) status = EVS_EP_E_PROTOCOL;
  if (status != 0) {
    if (status == EVS_EP_E_INVALID)
      job_reply_error(j, 400, "bad-request",
                      "commonName must be 1 to 64 printable ASCII characters and validityDays "
                      "at most 10950");
    else
      job_reply_error(j, 503, "service-unavailable", "The enclave could not create the CA");
    return;
  }
  char *pem = strndup((const char *)it[0].data, it[0].len);
  char *sealed = enc_b64(it[1].data, it[1].len);
  json_t *cas = json_array();
  json_t *ca = pem && sealed ? json_pack("{s:s,s:s,s:I}", "cert", pem, "sealedKey", sealed,
                                         "created", (json_int_t)time(NULL))
                             : NULL;
  free(pem);
  free(sealed);
  if (!ca || !cas) {
    json_decref(ca);
    json_decref(cas);
    job_reply_error(j, 500, "internal-error", "Out of memory");
    return;
  }
  json_array_append_new(cas, ca);
  /* Rotation: the older CAs stay trusted until they expire (or are removed). */
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(j->record, "cas"), i, e) {
    const char *p = json_string_value(json_object_get(e, "cert"));
    X509 *xc = p ? cert_of(p) : NULL;
    if (xc && !cert_expired(xc) && json_array_size(cas) < RELAY_CA_MAX_TRUSTED)
      json_array_append(cas, e);
    X509_free(xc);
  }
  store_record(j, cas);
}

static void on_record(void *arg, int status, const uint8_t *v, size_t len) {
  admin_job *j = arg;
  enc_ctx *x = j->x;
  if (status == 0) j->record = json_loadb((const char *)v, len, 0, NULL);
  if (!enc_ctx_resume(x)) {
    job_free(j);
    return;
  }
  if (status != 0 && status != -ENOENT) {
    job_reply_error(j, 500, "internal-error", "The store could not be read");
    return;
  }
  int exists = json_array_size(json_object_get(j->record, "cas")) > 0;
  if (j->action == CA_SHOW || j->action == CA_REMOVE) {
    if (!exists) {
      job_reply_error(j, 404, "resource-not-found",
                      "No relay CA exists yet: create one with `evctl relay-ca create`");
      return;
    }
    if (j->action == CA_SHOW) {
      char *s = json_dumps(j->record, JSON_COMPACT);
      json_t *o = s ? show_json(x->st, (const uint8_t *)s, strlen(s)) : NULL;
      free(s);
      if (!o) {
        job_reply_error(j, 500, "internal-error", "Out of memory");
        return;
      }
      enc_reply_json(x, 200, o);
      job_free(j);
      return;
    }
    json_t *cas = json_array();
    int found = 0, current = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j->record, "cas"), i, e) {
      const char *p = json_string_value(json_object_get(e, "cert"));
      X509 *xc = p ? cert_of(p) : NULL;
      char fp[97] = "";
      if (xc) fingerprint(xc, fp);
      X509_free(xc);
      if (strcasecmp(fp, j->fp) == 0) {
        found = 1;
        current = i == 0;
        continue;
      }
      json_array_append(cas, e);
    }
    if (!found || current) {
      json_decref(cas);
      if (!found)
        job_reply_error(j, 404, "resource-not-found", "No trusted relay CA has that fingerprint");
      else
        job_reply_error(j, 409, "conflict",
                        "That is the current relay CA: rotate first, then remove the old one");
      return;
    }
    store_record(j, cas);
    return;
  }
  if (j->action == CA_CREATE && exists) {
    job_reply_error(j, 409, "conflict",
                    "A relay CA exists already: `evctl relay-ca rotate` replaces it");
    return;
  }
  if (j->action == CA_ROTATE && !exists) {
    job_reply_error(j, 404, "resource-not-found",
                    "No relay CA exists yet: create one with `evctl relay-ca create`");
    return;
  }
  ep_msg m;
  ep_msg_init(&m, EVS_EP_CA_CREATE);
  ep_msg_add_str(&m, j->cn);
  uint8_t d[4];
  evs_ep_put_u32(d, j->days);
  ep_msg_add(&m, d, 4);
  x->pending = 1;
  int r = ep_client_call(x->st->client, &m, on_created, j);
  if (r < 0) {
    x->pending = 0;
    job_reply_error(j, 503, "service-unavailable", "The enclave is not running");
  }
}

static void admin_ca_step(enc_ctx *x, const uint8_t *data, size_t len) {
  admin_job *j = calloc(1, sizeof *j);
  if (!j) {
    enc_reply_error(x, 500, "internal-error", "Out of memory");
    return;
  }
  j->x = x;
  j->action = x->action;
  snprintf(j->fp, sizeof j->fp, "%s", x->ca_fp);
  if (x->action == CA_CREATE || x->action == CA_ROTATE) {
    json_t *b = len ? json_loadb((const char *)data, len, 0, NULL) : json_object();
    json_t *cn = json_object_get(b, "commonName"), *days = json_object_get(b, "validityDays");
    int bad = !json_is_object(b) || (cn && (!json_is_string(cn) ||
                                            strlen(json_string_value(cn)) > 64)) ||
              (days && (!json_is_integer(days) || json_integer_value(days) < 1 ||
                        json_integer_value(days) > EVS_CA_MAX_DAYS_API));
    if (!bad && cn) snprintf(j->cn, sizeof j->cn, "%s", json_string_value(cn));
    if (!bad && days) j->days = (uint32_t)json_integer_value(days);
    json_decref(b);
    if (bad) {
      job_reply_error(j, 400, "bad-request",
                      "The body is a JSON object with optional commonName (1 to 64 printable "
                      "ASCII characters) and validityDays (1 to 10950)");
      return;
    }
  }
  x->pending = 1;
  if (x->st->host->store_get(x->st->plugin, RELAY_CA_KEY, on_record, j) < 0) {
    x->pending = 0;
    job_reply_error(j, 500, "internal-error", "The store could not be read");
  }
}

int enc_relay_ca_admin_route(enclave_state *st, evs_request *req) {
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  const char *path = info->path, *m = info->method;
  if (strncmp(path, "/relay-ca", 9) != 0 || (path[9] && path[9] != '/')) return EVS_DECLINED;
  const char *rest = path[9] ? path + 10 : "";
  int action = 0;
  if (!*rest && strcmp(m, "GET") == 0) action = CA_SHOW;
  else if (!*rest && strcmp(m, "POST") == 0) action = CA_CREATE;
  else if (strcmp(rest, "rotate") == 0 && strcmp(m, "POST") == 0) action = CA_ROTATE;
  else if (*rest && strcmp(m, "DELETE") == 0 && strlen(rest) < 96 + 1 && !strchr(rest, '/'))
    action = CA_REMOVE;
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  if (!action) return enc_fail(x, 404, "resource-not-found", "No such admin endpoint");
  x->admin = 1;
  x->action = action;
  if (action == CA_REMOVE) snprintf(x->ca_fp, sizeof x->ca_fp, "%s", rest);
  x->body_max = 4096;
  return enc_continue(x, strcmp(m, "POST") == 0, admin_ca_step);
}
