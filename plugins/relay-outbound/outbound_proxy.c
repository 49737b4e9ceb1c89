/*
 * outbound_proxy.c: the Outbound Relay's proxy path. A CONNECT route of the role "outbound"
 * (a TLS listener with `serves = outbound`) authenticates the app (Proxy-Authorization on the
 * CONNECT, or on the first request inside the tunnel), terminates TLS inside the tunnel with a
 * leaf for the CONNECT host signed by the node's relay CA (issue_certificate: the CA key stays
 * in the enclave; the leaf key pair is this worker's, made at init), and serves the requests in
 * the tunnel (stream_serve_http). Each request is looked up among the app's destinations
 * (ob_lookup): a destination's request body is read whole and its ev: values and %EVENC files
 * decrypted (relay-common/decrypt_body.c, the code the Inbound Relay decrypts responses with),
 * then proxied to https://host:port with the body from the spool; any other host gets
 * `forbidden-destination` when the request carries encrypted data in any spelling
 * (relay-common/ev_guard.c), and otherwise what the app's `unconfiguredHosts` says. A
 * destination with fieldsToEncrypt (or encryptFiles) has its response held and its fields
 * encrypted with the app's key (relay-common/encrypt_body.c, the code the Inbound Relay encrypts
 * requests with) before the app sees it. Leaves minted for tunnels not yet authenticated come
 * from a per-worker token bucket. README.md here has the flows, the errors and the trust
 * boundary.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "content_decode.h"
#include "decrypt_body.h"
#include "decrypt_scan.h"
#include "encrypt_body.h"
#include "ev_guard.h"
#include "evserver/evs_plugin.h"
#include "outbound_int.h"
#include "outbound_match.h"
#include "relay_event.h"
#include "relay_path.h"
#include "request_guard.h"
#include "spool.h"
#include "token_bucket.h"

#define OB_PERMISSION "relay:outbound-proxy"
#define LEAF_CACHE_MAX 256
#define LEAF_VALIDITY_S (7u * 24 * 3600)
#define KEY_MAX 512

/* A leaf certificate for one destination host, shared by the tunnels that use it. */
typedef struct ob_leaf {
  struct ob_leaf *next;
  int refs;       /* the cache's, and each tunnel's */
  char *host;     /* as evs__ob_authority_parse writes it */
  char *chain;    /* PEM: the leaf, then the CA */
  size_t chain_len;
  char cache_key[300];
  int64_t renew_at; /* seconds since the epoch: mint a new one from then on */
} ob_leaf;

struct ob_proxy {
  const evs_host *h;
  evs_plugin *p;
  ob_state *st;
  char *key_pem, *pub_pem; /* this worker's leaf key pair */
  size_t key_len;
  ob_leaf *leaves;
  size_t nleaves;
  const char *ca_file;      /* the bundle destinations are verified with (NULL: the host's) */
  char *ca_bundle;          /* system roots + destination_ca_file, written at init */
  const char *spool_dir;
  uint64_t max_body;
  int transaction_log;
  const char *team_uuid, *activity_base;
  /* Leaves minted for tunnels not yet authenticated: a token bucket per worker (cache hits and
   * authenticated tunnels take nothing). */
  evs_token_bucket leaf_bucket;
};

#define TUNNEL_MAGIC 0x6f62746eu /* what request_get_data holds: a CONNECT's tunnel... */
#define TXN_MAGIC 0x6f627478u    /* ...or a request inside one */

typedef struct ob_tunnel {
  uint32_t magic;
  ob_proxy *px;
  int refs;
  evs_request *connect_req; /* until the CONNECT completes */
  char host[260];           /* evs__ob_authority_parse's form ([v6] in brackets) */
  char bare[260];           /* without brackets: the certificate name, the upstream host */
  int port;
  int authed;
  char app_id[80];
  unsigned char key_hash[32]; /* SHA-256 of the key that authenticated the tunnel */
  /* That key, checked again for every request in the tunnel (a revoked key ends it); wiped
   * when the tunnel ends. */
  char *key;
  size_t key_len;
  ob_leaf *leaf;
  int recorded; /* a refused CONNECT's record is queued (END hook) */
} ob_tunnel;

typedef struct ob_txn {
  uint32_t magic;
  ob_tunnel *t;
  int recorded; /* its transaction record is queued (END hook, or LOG) */
  int unbound;  /* refused because the store is away: its record must not hold the answer */
  int64_t started_ms;
  uint64_t started_ns;
  char dest_id[80];       /* the destination's id, or "" */
  uint64_t decrypted;
  evs_request *req;
  int refs;
  char *key; /* the Proxy-Authorization being checked (wiped) */
  size_t key_len;
  int configured;
  evs__decrypt_body *dec; /* a destination's body */
  relay_spool plain;      /* another host's body (passthrough) */
  int plain_init;
  evs__ev_guard guard;
  uint64_t body_bytes;
  relay_spool *out;       /* what body_source reads */
  /* Response encryption (a destination with fieldsToEncrypt): the selection, copied so that it
   * outlives a reload; the decoder of a compressed response; the rewriter, spool and batches
   * (relay-common's encrypt_body.c, the Inbound Relay's request-side code). */
  evs__ob_selection *sel;
  evs__cdecode *cdec;
  evs__encrypt_body *renc;
  int rpass;              /* a response the selection cannot address: passed as it is */
  int rheld, rended;
  uint64_t rbytes;
  uint64_t encrypted;
} ob_txn;

/* ---- small helpers --------------------------------------------------------------------- */

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sha256(const void *p, size_t n, unsigned char out[32]) {
  unsigned int ol = 32;
  EVP_Digest(p, n, out, &ol, EVP_sha256(), NULL);
}

static char *pem_of(EVP_PKEY *k, int pub, size_t *ret_len) {
  BIO *b = BIO_new(BIO_s_mem());
  if (!b) return NULL;
  int ok = pub ? PEM_write_bio_PUBKEY(b, k) : PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
  char *p, *out = NULL;
  long n = BIO_get_mem_data(b, &p);
  if (ok && n > 0 && (out = malloc((size_t)n + 1))) {
    memcpy(out, p, (size_t)n);
    out[n] = 0;
    if (ret_len) *ret_len = (size_t)n;
  }
  BIO_free(b);
  return out;
}

static void proxy_auth_failed(const evs_host *h, evs_request *req) {
  h->respond_error(req, 407, "proxy-auth-failed",
                   "The Proxy-Authorization header is missing or holds no valid API key with the "
                   "relay:outbound-proxy permission");
}

static void forbidden(const evs_host *h, evs_request *req, const char *detail) {
  h->respond_error(req, 403, "forbidden-destination", detail);
}

/* ---- leaves ---------------------------------------------------------------------------- */

static void leaf_unref(ob_leaf *l) {
  if (!l || --l->refs > 0) return;
  free(l->host);
  free(l->chain);
  free(l);
}

static ob_leaf *leaf_find(ob_proxy *px, const char *host) {
  int64_t now = (int64_t)time(NULL);
  for (ob_leaf **pp = &px->leaves; *pp; pp = &(*pp)->next) {
    ob_leaf *l = *pp;
    if (strcmp(l->host, host) != 0) continue;
    if (now >= l->renew_at) { /* renew: drop it from the cache, tunnels keep theirs */
      *pp = l->next;
      px->nleaves--;
      leaf_unref(l);
      return NULL;
    }
    return l;
  }
  return NULL;
}

/* A leaf from the enclave's PEM chain: its serial names it, its notAfter bounds its use. */
static ob_leaf *leaf_new(const char *host, const uint8_t *pem, size_t len) {
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  if (!x) return NULL;
  ob_leaf *l = calloc(1, sizeof *l);
  struct tm tm;
  char *serial = NULL;
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  if (bn) serial = BN_bn2hex(bn);
  BN_free(bn);
  if (l && serial && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1 &&
      (l->host = strdup(host)) && (l->chain = malloc(len + 1))) {
    memcpy(l->chain, pem, len);
    l->chain[len] = 0;
    l->chain_len = len;
    int64_t now = (int64_t)time(NULL), not_after = (int64_t)timegm(&tm);
    l->renew_at = now + (not_after - now) / 2; /* well before notAfter */
    snprintf(l->cache_key, sizeof l->cache_key, "leaf:%.200s:%.64s", host, serial);
    l->refs = 1;
  } else if (l) {
    free(l->host);
    free(l->chain);
    free(l);
    l = NULL;
  }
  OPENSSL_free(serial);
  X509_free(x);
  return l;
}

static void leaf_cache(ob_proxy *px, ob_leaf *l) {
  l->refs++;
  l->next = px->leaves;
  px->leaves = l;
  if (++px->nleaves > LEAF_CACHE_MAX) { /* drop the oldest (the list's tail) */
    ob_leaf **pp = &px->leaves;
    while ((*pp)->next) pp = &(*pp)->next;
    leaf_unref(*pp);
    *pp = NULL;
    px->nleaves--;
  }
}

/* ---- tunnels --------------------------------------------------------------------------- */

static void tunnel_set_key(ob_tunnel *t, char *key, size_t len) {
  if (t->key) {
    OPENSSL_cleanse(t->key, t->key_len);
    free(t->key);
  }
  t->key = key;
  t->key_len = len;
}

static void tunnel_unref(ob_tunnel *t) {
  if (--t->refs > 0) return;
  leaf_unref(t->leaf);
  OPENSSL_cleanse(t->key_hash, sizeof t->key_hash);
  tunnel_set_key(t, NULL, 0);
  free(t);
}

static void tunnel_closed(void *arg) { tunnel_unref(arg); }

static void connect_gone(void *data) {
  ob_tunnel *t = data;
  t->connect_req = NULL;
  tunnel_unref(t);
}

static int identity(void *arg, const char *sni, evs_tls_identity *ret) {
  (void)sni; /* the leaf is the CONNECT host's: the client verifies that name */
  ob_tunnel *t = arg;
  if (!t->leaf) return -EINVAL;
  ret->cert_pem = t->leaf->chain;
  ret->cert_pem_len = t->leaf->chain_len;
  ret->key_pem = t->px->key_pem;
  ret->key_pem_len = t->px->key_len;
  if (ret->size >= offsetof(evs_tls_identity, cache_key) + sizeof ret->cache_key)
    ret->cache_key = t->leaf->cache_key;
  return 0;
}

static int inner_request(void *arg, evs_request *req);

static void tunnel_open(ob_tunnel *t) {
  ob_proxy *px = t->px;
  const evs_host *h = px->h;
  evs_stream *s = h->takeover(t->connect_req, 200, NULL, 0);
  if (!s) {
    h->respond_error(t->connect_req, 500, "internal-server-error", "The tunnel could not start");
    return;
  }
  evs_http_service svc;
  memset(&svc, 0, sizeof svc);
  svc.size = sizeof svc;
  svc.request = inner_request;
  svc.closed = tunnel_closed;
  t->refs++; /* the stream's, until closed */
  if (h->stream_start_tls(s, identity, t) < 0 || h->stream_serve_http(s, &svc, t) < 0) {
    t->refs--;
    h->stream_close(s);
    return;
  }
  h->counter_add(px->p, "tunnels", 1);
}

static void on_leaf(void *arg, int status, const uint8_t *pem, size_t len) {
  ob_tunnel *t = arg;
  ob_proxy *px = t->px;
  const evs_host *h = px->h;
  if (t->connect_req) {
    ob_leaf *l = status == 0 ? leaf_new(t->host, pem, len) : NULL;
    if (l) {
      h->counter_add(px->p, "leaves_issued", 1);
      leaf_cache(px, l);
      t->leaf = l;
      tunnel_open(t);
    } else {
      h->log(px->p, t->connect_req, EVS_LOG_ERROR,
             "no leaf certificate for %s (status %d): is there a relay CA (evctl relay-ca create)?",
             t->host, status);
      h->respond_error(t->connect_req, 503, "service-unavailable",
                       "The relay cannot issue a certificate for this destination right now");
    }
  }
  tunnel_unref(t);
}

/* The leaf for the CONNECT host, minted before TLS starts (an IP destination sends no SNI). */
static void tunnel_leaf(ob_tunnel *t) {
  ob_proxy *px = t->px;
  const evs_host *h = px->h;
  ob_leaf *l = leaf_find(px, t->host);
  if (l) {
    l->refs++;
    t->leaf = l;
    tunnel_open(t);
    return;
  }
  if (!t->authed && !evs_token_bucket_take(&px->leaf_bucket, mono_ns() / 1000000u)) {
    /* Anyone who reaches the listener can name hosts before any key is seen: new names are
     * rate-limited, so the enclave is not made to sign without bound. */
    h->counter_add(px->p, "leaf_rate_limited", 1);
    h->respond_error(t->connect_req, 503, "service-unavailable",
                     "Too many new destination hosts before authentication; retry shortly, or "
                     "send Proxy-Authorization on the CONNECT");
    return;
  }
  const char *names[1] = {t->bare};
  evs_cert_request cr;
  memset(&cr, 0, sizeof cr);
  cr.size = sizeof cr;
  cr.names = names;
  cr.nnames = 1;
  cr.public_key_pem = px->pub_pem;
  cr.validity_s = LEAF_VALIDITY_S;
  t->refs++;
  int r = h->issue_certificate(px->p, &cr, on_leaf, t);
  if (r < 0) {
    t->refs--;
    h->respond_error(t->connect_req, 503, "service-unavailable",
                     "The relay cannot issue a certificate for this destination right now");
  }
}

static void on_connect_key(void *arg, int status, const char *app_id) {
  ob_tunnel *t = arg;
  const evs_host *h = t->px->h;
  if (t->connect_req) {
    if (status == 0 && app_id && strlen(app_id) < sizeof t->app_id) {
      snprintf(t->app_id, sizeof t->app_id, "%s", app_id);
      t->authed = 1;
      tunnel_leaf(t);
    } else if (status == EVS_ENOCRYPTO || status == EVS_CRYPTO_UNAVAILABLE) {
      h->respond_error(t->connect_req, 503, "service-unavailable",
                       "API keys cannot be checked right now; retry later.");
    } else {
      h->counter_add(t->px->p, "proxy_auth_failed", 1);
      proxy_auth_failed(h, t->connect_req);
    }
  }
  tunnel_unref(t);
}

static int connect_route(void *state, evs_request *req) {
  ob_proxy *px = ob_state_proxy(state);
  const evs_host *h = px->h;
  const evs_request_info *info = h->request_info(req);
  ob_tunnel *t = calloc(1, sizeof *t);
  if (!t) {
    h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return EVS_HANDLED;
  }
  t->magic = TUNNEL_MAGIC;
  t->px = px;
  if (evs__ob_authority_parse(info->target, strlen(info->target), t->host, sizeof t->host,
                              &t->port) < 0) {
    free(t);
    h->respond_error(req, 400, "bad-request", "CONNECT needs host:port");
    return EVS_HANDLED;
  }
  size_t hl = strlen(t->host);
  if (t->host[0] == '[') snprintf(t->bare, sizeof t->bare, "%.*s", (int)(hl - 2), t->host + 1);
  else snprintf(t->bare, sizeof t->bare, "%s", t->host);
  t->connect_req = req;
  t->refs = 1; /* the CONNECT request's */
  h->request_set_data(req, px->p, t, connect_gone);
  evs_header pa;
  if (h->request_header(req, "proxy-authorization", &pa) == 0) {
    if (pa.value_len == 0 || pa.value_len > KEY_MAX) {
      proxy_auth_failed(h, req);
      return EVS_HANDLED;
    }
    char *key = malloc(pa.value_len);
    if (!key) {
      h->respond_error(req, 500, "internal-server-error", "Out of memory");
      return EVS_HANDLED;
    }
    memcpy(key, pa.value, pa.value_len);
    tunnel_set_key(t, key, pa.value_len);
    sha256(pa.value, pa.value_len, t->key_hash);
    evs_api_key_request kr = {sizeof kr, pa.value, pa.value_len, OB_PERMISSION, 0};
    t->refs++;
    int r = h->check_api_key(px->p, &kr, on_connect_key, t);
    if (r < 0) {
      t->refs--;
      if (r == EVS_ENOCRYPTO)
        h->respond_error(req, 503, "service-unavailable", "API keys cannot be checked right now; retry later.");
      else
        proxy_auth_failed(h, req);
    }
    return EVS_HANDLED;
  }
  tunnel_leaf(t); /* the key comes with the first request in the tunnel */
  return EVS_HANDLED;
}

/* ---- requests in a tunnel -------------------------------------------------------------- */

static void txn_unref(ob_txn *x) {
  if (--x->refs > 0) return;
  if (x->key) {
    OPENSSL_cleanse(x->key, x->key_len);
    free(x->key);
  }
  evs__decrypt_body_free(x->dec);
  evs__cdecode_free(x->cdec);
  evs__encrypt_body_free(x->renc); /* calls in flight only release memory when they return */
  evs__ob_selection_free(x->sel);
  if (x->plain_init) relay_spool_done(&x->plain);
  tunnel_unref(x->t);
  free(x);
}

static void txn_gone(void *data) {
  ob_txn *x = data;
  x->req = NULL;
  txn_unref(x);
}

static int body_source(void *arg, uint8_t *buf, size_t cap, size_t *ret_len) {
  ob_txn *x = arg;
  if (!buf) {
    relay_spool_rewind(x->out);
    return 0;
  }
  return relay_spool_read(x->out, buf, cap, ret_len);
}

/* ---- response encryption --------------------------------------------------------------- */

static int resp_emit(void *arg, const uint8_t *p, size_t n) {
  ob_txn *x = arg;
  return x->t->px->h->filter_emit(x->req, p, n);
}

/* Says once, in the log and a counter, why a response was cut off. */
static int resp_failed(ob_txn *x, evs_request *req, int r) {
  ob_proxy *px = x->t->px;
  const evs_host *h = px->h;
  const char *why = r == EVS__CDEC_E_TOOBIG ? "decodes to more than max_body"
                    : r == EVS__CDEC_E_CORRUPT ? "is corrupt or truncated"
                    : r == EVS__CDEC_E_NOMEM ? "needs more memory than allowed to decode"
                    : NULL;
  int status = 0;
  const char *code = NULL, *detail = NULL;
  if (why) {
    h->log(px->p, req, EVS_LOG_WARN, "the destination's compressed response %s: response aborted",
           why);
    h->counter_add(px->p, "decode_errors", 1);
  } else if (x->renc && evs__encrypt_body_error(x->renc, &status, &code, &detail)) {
    h->log(px->p, req, EVS_LOG_WARN,
           "response encryption failed (%s, %d): response aborted, nothing of it was sent", code,
           status);
    h->counter_add(px->p, "encrypt_errors", 1);
  } else if (r == -E2BIG) {
    h->log(px->p, req, EVS_LOG_WARN, "the destination's response is over max_body: response "
           "aborted");
    h->counter_add(px->p, "encrypt_errors", 1);
  }
  return r < 0 ? r : -EIO;
}

/* The spool (every value back) to the client. */
static int resp_replay(ob_txn *x) {
  x->encrypted = evs__encrypt_body_encrypted(x->renc);
  return relay_spool_replay(evs__encrypt_body_spool(x->renc), resp_emit, x);
}

/* encrypt_body's progress: a held response ends once every value is back. */
static void on_resp_progress(void *arg) {
  ob_txn *x = arg;
  if (!x->req || !x->rheld || x->rended || !evs__encrypt_body_idle(x->renc)) return;
  const evs_host *h = x->t->px->h;
  x->rended = 1;
  int r = evs__encrypt_body_error(x->renc, NULL, NULL, NULL);
  if (r) resp_failed(x, x->req, r);
  else r = resp_replay(x);
  h->filter_end(x->req, r < 0 ? -1 : 0);
}

/* The response's encryption state, made once its head has arrived. */
static int resp_get(ob_txn *x, evs_request *req) {
  if (x->renc || x->rpass) return 0;
  ob_proxy *px = x->t->px;
  const evs_host *h = px->h;
  evs_header ct;
  const evs__rewriter_ops *ops = NULL;
  if (h->response_header(req, "content-type", &ct) == 0)
    ops = evs__rewriter_for_content_type(ct.value, ct.value_len);
  /* No fields to select: passed as it is; a body no rewriter parses is one file with
   * encryptFiles (response_head refused it otherwise). */
  if ((ops && x->sel->nfields == 0) || (!ops && !x->sel->encrypt_files)) {
    x->rpass = 1;
    return 0;
  }
  evs__rewriter_select sel = {x->sel->paths, x->sel->names, x->sel->nnames,
                              ops ? ct.value : NULL, ops ? ct.value_len : 0, 1};
  evs__encrypt_body_cfg c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  c.host = h;
  c.plugin = px->p;
  c.app_id = x->t->app_id; /* the key's app */
  c.spool_dir = px->spool_dir;
  c.ops = ops;
  c.sel = &sel;
  c.files = x->sel->encrypt_files;
  c.whole_file = x->sel->encrypt_files;
  c.progress = on_resp_progress;
  c.arg = x;
  return evs__encrypt_body_new(&c, &x->renc);
}

static int resp_feed(ob_txn *x, const uint8_t *p, size_t n) {
  if (x->rpass) return x->t->px->h->filter_emit(x->req, p, n);
  x->rbytes += n;
  if (x->rbytes > x->t->px->max_body) return -E2BIG;
  return evs__encrypt_body_feed(x->renc, p, n);
}

/* Decoded bytes go on to the rewriter. */
static int cdec_emit(void *ud, const char *buf, size_t len) {
  int r = resp_feed(ud, (const uint8_t *)buf, len);
  return r < 0 ? r : 0;
}

static int response_filter(void *state, evs_request *req, void *arg, const uint8_t *data,
                           size_t len) {
  (void)state;
  ob_txn *x = arg;
  int r = resp_get(x, req);
  if (r < 0) return resp_failed(x, req, r);
  if (data) {
    r = x->cdec ? evs__cdecode_feed(x->cdec, data, len) : resp_feed(x, data, len);
    return r < 0 ? resp_failed(x, req, r) : 0;
  }
  if (x->cdec && (r = evs__cdecode_finish(x->cdec)) < 0) return resp_failed(x, req, r);
  if (x->rpass) return 0;
  if (x->rbytes == 0) return 0; /* no body (HEAD, 204, 304): no fields */
  r = evs__encrypt_body_finish(x->renc);
  if (r < 0) return resp_failed(x, req, r);
  if (r == EVS__EBODY_PENDING) {
    x->rheld = 1;
    return EVS_FILTER_HOLD;
  }
  r = resp_replay(x);
  return r < 0 ? -1 : 0;
}

/* The destination's head: a compressed body is decoded (and sent as identity), as the Inbound
 * Relay does to decrypt; a coding the relay cannot decode is refused before the head reaches
 * the app, so no selected field passes in plaintext. */
static int response_head(void *arg, evs_request *req, int status) {
  ob_txn *x = arg;
  const evs_host *h = x->t->px->h;
  /* A body the rewriters cannot parse is refused, as the documentation says of
   * unsupported-content-type-in-response; a response without a body has no fields. */
  evs_header ct, cl;
  int bodiless = status == 204 || status == 304 || (status >= 100 && status < 200) ||
                 strcmp(h->request_info(req)->method, "HEAD") == 0 ||
                 (h->response_header(req, "content-length", &cl) == 0 && cl.value_len == 1 &&
                  cl.value[0] == '0');
  if (!bodiless && !x->sel->encrypt_files &&
      (h->response_header(req, "content-type", &ct) < 0 ||
       !evs__rewriter_for_content_type(ct.value, ct.value_len))) {
    h->counter_add(x->t->px->p, "unsupported_content_type", 1);
    h->respond_error(req, 502, "unsupported-content-type-in-response",
                     "This destination has fields to encrypt in its responses; the response must "
                     "be JSON, XML, application/x-www-form-urlencoded or multipart/form-data (by "
                     "Content-Type)");
    return 0;
  }
  evs_header ce;
  if (h->response_header(req, "content-encoding", &ce) < 0) return 0;
  int codings[EVS__CDEC_MAX_CODINGS];
  int n = evs__cdecode_parse(ce.value, ce.value_len, codings);
  /* More than one Content-Encoding field: response_header saw only the first. */
  int fields = n >= 0 ? h->response_remove_header(req, "content-encoding") : 0;
  const char *detail = NULL;
  if (n < 0 || fields > 1)
    detail = "The destination's response has a Content-Encoding the relay cannot decode, so its "
             "fields could not be encrypted";
  else if (n > 0 && status == 206)
    detail = "The destination sent part of a compressed response (206), which the relay cannot "
             "decode to encrypt";
  if (detail) {
    h->counter_add(x->t->px->p, "unsupported_encoding", 1);
    h->respond_error(req, 502, "unsupported-content-type-in-response", detail);
    return 0;
  }
  if (n == 0) return 0;
  if (strcmp(h->request_info(req)->method, "HEAD") == 0)
    h->response_remove_header(req, "content-length");
  int r = resp_get(x, req);
  if (r < 0) return r;
  return evs__cdecode_new(codings, (size_t)n, x->t->px->max_body, 0, cdec_emit, x, &x->cdec);
}

static void forward(ob_txn *x, int with_body) {
  ob_tunnel *t = x->t;
  ob_proxy *px = t->px;
  const evs_host *h = px->h;
  evs_upstream up;
  memset(&up, 0, sizeof up);
  up.size = sizeof up;
  up.scheme = "https";
  up.host = t->bare;
  up.port = (uint16_t)t->port;
  up.verify = 1;
  up.ca_file = px->ca_file;
  if (with_body) {
    up.body_source = body_source;
    up.body_source_arg = x;
    up.body_source_len = relay_spool_total(x->out);
  }
  h->counter_add(px->p, x->configured ? "decrypted_requests" : "passthrough_requests", 1);
  evs_body_filter_fn rf = NULL;
  if (x->sel) { /* response encryption */
    evs__relay_narrow_accept_encoding(h, x->req);
    up.response_head = response_head;
    rf = response_filter;
  }
  if (h->proxy(x->req, &up, NULL, rf, x) < 0)
    h->respond_error(x->req, 500, "internal-server-error", "The relay could not start proxying");
}

static void body_failed(ob_txn *x, int r) {
  const evs_host *h = x->t->px->h;
  if (r == -E2BIG || r == EVS__DSCAN_E_TOOBIG)
    h->respond_error(x->req, 413, "payload-too-large", "The request exceeds the 25 MB limit");
  else if (r == EVS_ENOCRYPTO || r == EVS_CRYPTO_UNAVAILABLE)
    h->respond_error(x->req, 503, "service-unavailable",
                     "Decryption is unavailable right now; nothing was forwarded");
  else
    h->respond_error(x->req, 500, "internal-server-error",
                     "The relay could not decrypt the request; nothing was forwarded");
}

static void on_decrypted(void *arg, int status) {
  ob_txn *x = arg;
  if (x->dec) x->decrypted = evs__decrypt_body_decrypted(x->dec);
  if (x->req) {
    if (status < 0) body_failed(x, status);
    else forward(x, 1);
  }
  txn_unref(x);
}

static int on_body(void *arg, const uint8_t *data, size_t len) {
  ob_txn *x = arg;
  x->body_bytes += len;
  if (x->body_bytes > x->t->px->max_body) return -E2BIG;
  if (x->dec) return evs__decrypt_body_feed(x->dec, data, len);
  evs__ev_guard_feed(&x->guard, data, len);
  return relay_spool_write(&x->plain, data, len);
}

static void on_body_end(void *arg, int status) {
  ob_txn *x = arg;
  const evs_host *h = x->t->px->h;
  if (!x->req) {
    txn_unref(x);
    return;
  }
  if (status < 0) {
    body_failed(x, status);
  } else if (x->dec) {
    int r = evs__decrypt_body_finish(x->dec);
    if (r == EVS__DBODY_PENDING) return; /* on_decrypted has the reference */
    x->decrypted = evs__decrypt_body_decrypted(x->dec);
    if (r < 0) body_failed(x, r);
    else forward(x, 1);
  } else if (evs__ev_guard_finish(&x->guard) > 0) {
    h->counter_add(x->t->px->p, "forbidden_destination", 1);
    forbidden(h, x->req, "Evervault-encrypted data may only be sent to a configured destination");
  } else {
    forward(x, 1);
  }
  txn_unref(x);
}

/* The request, once the tunnel's app is known. */
static void txn_route(ob_txn *x) {
  ob_tunnel *t = x->t;
  ob_proxy *px = t->px;
  const evs_host *h = px->h;
  evs_request *req = x->req;
  const evs_request_info *info = h->request_info(req);
  size_t pl = strlen(info->path);
  char *normal = malloc(3 * pl + 2);
  if (!normal) {
    h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return;
  }
  int nl = evs__path_normalize(info->path, pl, normal, 3 * pl + 2, 0);
  const evs__ob_destination *dest = NULL;
  if (nl >= 0) {
    dest = ob_lookup(px->st, t->app_id, t->host, t->port, normal, (size_t)nl);
  } else if (ob_lookup(px->st, t->app_id, t->host, t->port, NULL, 0)) {
    free(normal);
    h->respond_error(req, 400, "bad-request",
                     "The request path is ambiguous (an encoded slash or backslash, %00, a "
                     "double escape or an invalid escape)");
    return;
  }
  free(normal);
  int has_body = info->chunked || (info->has_content_length && info->content_length > 0);
  if (has_body && evs__relay_body_encoded(h, req)) {
    h->respond_error(req, 415, "bad-request",
                     "The relay does not accept compressed request bodies (Content-Encoding): "
                     "it could not decrypt them or check them for encrypted data");
    return;
  }
  if (!dest) {
    const evs__ob_app *a = ob_app(px->st, t->app_id);
    if (evs__relay_head_carries_ev_data(h, req)) {
      h->counter_add(px->p, "forbidden_destination", 1);
      forbidden(h, req, "Evervault-encrypted data may only be sent to a configured destination");
      return;
    }
    if (!a || a->refuse_unconfigured) {
      h->counter_add(px->p, "forbidden_destination", 1);
      forbidden(h, req, "The host is not a configured Outbound Relay destination of this app");
      return;
    }
  }
  x->configured = dest != NULL;
  if (dest) snprintf(x->dest_id, sizeof x->dest_id, "%s", dest->id);
  if (dest && (dest->nfields > 0 || dest->encrypt_files) &&
      evs__ob_selection_new(dest, &x->sel) < 0) {
    h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return;
  }
  if (!has_body) {
    forward(x, 0);
    return;
  }
  int r = 0;
  if (dest) {
    evs_header ct;
    char ctz[512] = "";
    if (h->request_header(req, "content-type", &ct) == 0 && ct.value_len < sizeof ctz) {
      memcpy(ctz, ct.value, ct.value_len);
      ctz[ct.value_len] = 0;
    }
    evs__decrypt_body_cfg c;
    memset(&c, 0, sizeof c);
    c.size = sizeof c;
    c.host = h;
    c.plugin = px->p;
    c.app_id = t->app_id;
    c.spool_dir = px->spool_dir;
    c.max_file = (size_t)px->max_body;
    c.done = on_decrypted;
    c.arg = x;
    r = evs__decrypt_body_new(&c, ctz[0] ? ctz : NULL, &x->dec);
    if (r == 0) x->out = evs__decrypt_body_spool(x->dec);
  } else {
    relay_spool_init(&x->plain, px->spool_dir, 1u << 20);
    x->plain_init = 1;
    evs__ev_guard_init(&x->guard);
    x->out = &x->plain;
  }
  if (r == 0) {
    x->refs++; /* on_body_end's */
    r = h->request_body_read(req, on_body, on_body_end, x);
    if (r < 0) x->refs--;
  }
  if (r < 0) body_failed(x, r);
}

/* A key refused inside a tunnel ends it: the client must open a new one with a valid key. */
static void tunnel_auth_failed(ob_txn *x) {
  const evs_host *h = x->t->px->h;
  h->counter_add(x->t->px->p, "proxy_auth_failed", 1);
  if (h->size >= offsetof(evs_host, response_close) + sizeof h->response_close)
    h->response_close(x->req);
  proxy_auth_failed(h, x->req);
}

/* The first key of a tunnel checked, or the tunnel's key checked again (t->authed). */
static void on_inner_key(void *arg, int status, const char *app_id) {
  ob_txn *x = arg;
  ob_tunnel *t = x->t;
  const evs_host *h = t->px->h;
  if (x->req) {
    if (status == 0 && app_id && t->authed && strcmp(app_id, t->app_id) == 0) {
      txn_route(x);
    } else if (status == 0 && app_id && strlen(app_id) < sizeof t->app_id && !t->authed) {
      snprintf(t->app_id, sizeof t->app_id, "%s", app_id);
      sha256(x->key, x->key_len, t->key_hash);
      tunnel_set_key(t, x->key, x->key_len); /* the tunnel keeps it for later checks */
      x->key = NULL;
      x->key_len = 0;
      t->authed = 1;
      txn_route(x);
    } else if (status == EVS_ENOCRYPTO || status == EVS_CRYPTO_UNAVAILABLE) {
      h->respond_error(x->req, 503, "service-unavailable",
                       "API keys cannot be checked right now; retry later.");
    } else {
      if (t->authed) h->counter_add(t->px->p, "tunnel_key_refused", 1);
      tunnel_auth_failed(x);
    }
  }
  txn_unref(x);
}

static int inner_request(void *arg, evs_request *req) {
  ob_tunnel *t = arg;
  ob_proxy *px = t->px;
  const evs_host *h = px->h;
  ob_txn *x = calloc(1, sizeof *x);
  if (!x) {
    h->respond_error(req, 500, "internal-server-error", "Out of memory");
    return EVS_HANDLED;
  }
  x->magic = TXN_MAGIC;
  x->t = t;
  t->refs++;
  x->req = req;
  x->started_ms = wall_ms();
  x->started_ns = mono_ns();
  x->refs = 1; /* the request's */
  h->request_set_data(req, px->p, x, txn_gone);
  h->counter_add(px->p, "inner_requests", 1);
  if (px->transaction_log && h->store_append_ready(px->p) == -ENOTCONN) {
    /* No response goes out whose record could not be kept (docs/state.md): refused before
     * anything reaches the destination. */
    x->unbound = 1;
    h->respond_error(req, 503, "service-unavailable",
                     "The transaction log cannot be written right now; retry later.");
    return EVS_HANDLED;
  }
  /* The credential stops here: read it, then drop it from what the destination gets. */
  evs_header pa;
  int has_key = h->request_header(req, "proxy-authorization", &pa) == 0;
  if (has_key) {
    if (pa.value_len == 0 || pa.value_len > KEY_MAX || !(x->key = malloc(pa.value_len))) {
      h->request_remove_header(req, "proxy-authorization");
      proxy_auth_failed(h, req);
      return EVS_HANDLED;
    }
    memcpy(x->key, pa.value, pa.value_len);
    x->key_len = pa.value_len;
    h->request_remove_header(req, "proxy-authorization");
  }
  evs_api_key_request kr = {sizeof kr, x->key, x->key_len, OB_PERMISSION, 0};
  if (t->authed) {
    unsigned char hash[32];
    if (has_key) sha256(x->key, x->key_len, hash);
    if (has_key && CRYPTO_memcmp(hash, t->key_hash, sizeof hash) != 0) {
      tunnel_auth_failed(x);
      return EVS_HANDLED;
    }
    /* The tunnel's key again, for every request: a key revoked (or its permission withdrawn)
     * since the tunnel opened is refused now. A recheck may come from the provider's cache,
     * which revocations invalidate (plugins/enclave/README.md). */
    kr.key = t->key;
    kr.key_len = t->key_len;
    kr.recheck = 1;
  } else if (!has_key) {
    tunnel_auth_failed(x);
    return EVS_HANDLED;
  }
  x->refs++;
  int r = h->check_api_key(px->p, &kr, on_inner_key, x);
  if (r < 0) {
    x->refs--;
    if (r == EVS_ENOCRYPTO)
      h->respond_error(req, 503, "service-unavailable", "API keys cannot be checked right now; retry later.");
    else
      proxy_auth_failed(h, req);
  }
  return EVS_HANDLED;
}

/* ---- transaction log and relay.error events ---------------------------------------------- */

/* Every request in a tunnel (and a refused CONNECT): one record in the plugin's "transactions"
 * stream, for `evctl activity` (never a value, a header or a key), and a relay.error event for
 * the alerts plugin when it failed with a documented error. */
/* The record of a request in a tunnel (x) or of a refused CONNECT (t alone), as it stands. */
static char *ob_record(ob_proxy *px, evs_request *req, ob_txn *x, ob_tunnel *t) {
  const evs_host *h = px->h;
  const evs_request_info *info = h->request_info(req);
  const char *code = NULL;
  int status = h->response_status(req, &code);
  char dest[300], started[40];
  snprintf(dest, sizeof dest, "%s:%d", t->host, t->port);
  int64_t start = x ? x->started_ms : wall_ms();
  evs__relay_iso8601(start, started, sizeof started);
  json_t *rec = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:f,s:I}", "requestId",
                          info->request_id, "relay", "outbound", "destination", dest, "method",
                          info->method, "path", x ? info->path : "", "status", status,
                          "startedAt", started, "durationMs",
                          x ? (double)(mono_ns() - x->started_ns) / 1e6 : 0.0,
                          "decryptedFields", (json_int_t)(x ? x->decrypted : 0));
  if (rec && x && x->sel)
    json_object_set_new(rec, "encryptedFields", json_integer((json_int_t)x->encrypted));
  if (rec && t->authed) json_object_set_new(rec, "appId", json_string(t->app_id));
  if (rec && x && x->dest_id[0]) json_object_set_new(rec, "destinationId", json_string(x->dest_id));
  if (rec && code) json_object_set_new(rec, "errorCode", json_string(code));
  char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
  json_decref(rec);
  return s;
}

/* END (ABI 1.9): the record is bound to the response, whose end the client gets once the
 * record is committed (docs/state.md). */
static int end_hook(void *state, evs_request *req) {
  ob_proxy *px = ob_state_proxy(state);
  const evs_host *h = px->h;
  uint32_t *tag = h->request_get_data(req, px->p);
  if (!px->transaction_log || !tag || (*tag != TXN_MAGIC && *tag != TUNNEL_MAGIC))
    return EVS_DECLINED;
  ob_txn *x = *tag == TXN_MAGIC ? (ob_txn *)tag : NULL;
  ob_tunnel *t = x ? x->t : (ob_tunnel *)tag;
  if (x ? x->recorded || x->unbound : t->recorded) return EVS_DECLINED;
  if (!x && h->response_status(req, NULL) < 400) return EVS_DECLINED;
  char *s = ob_record(px, req, x, t);
  int r = s ? h->store_append_request(px->p, req, "transactions", s) : -ENOMEM;
  free(s);
  int queued = r == 0 || r == -EALREADY || r == -ECONNRESET; /* else LOG tries again */
  if (x) x->recorded = queued;
  else t->recorded = queued;
  return EVS_DECLINED;
}

static int log_hook(void *state, evs_request *req) {
  ob_proxy *px = ob_state_proxy(state);
  const evs_host *h = px->h;
  uint32_t *tag = h->request_get_data(req, px->p);
  if (!tag || (*tag != TXN_MAGIC && *tag != TUNNEL_MAGIC)) return EVS_DECLINED;
  ob_txn *x = *tag == TXN_MAGIC ? (ob_txn *)tag : NULL;
  ob_tunnel *t = x ? x->t : (ob_tunnel *)tag;
  const evs_request_info *info = h->request_info(req);
  const char *code = NULL;
  int status = h->response_status(req, &code);
  if (!x && status < 400) return EVS_DECLINED; /* an open tunnel: its requests say the rest */
  char dest[300];
  snprintf(dest, sizeof dest, "%s:%d", t->host, t->port);
  /* A response that never ended (cut short, the client gone) is recorded here, written
   * behind: no client holds a complete response for it. */
  if (px->transaction_log && !(x ? x->recorded : t->recorded)) {
    char *s = ob_record(px, req, x, t);
    if (s) h->store_append(px->p, "transactions", s);
    free(s);
    if (x) x->recorded = 1;
  }
  if (code) { /* an error answer, or (status < 400) a response cut short after its head */
    char link[512], msg[700], uuid[40];
    snprintf(link, sizeof link, "%s?requestId=%s", px->activity_base, info->request_id);
    snprintf(msg, sizeof msg, "Outbound Relay to %s: %s %s %s %s", dest, info->method,
             x ? info->path : "(CONNECT)",
             status >= 400 ? "failed with" : "was cut short mid-response:", code);
    evs__relay_uuid("outbound", t->host, uuid, sizeof uuid);
    evs__relay_error e = {px->team_uuid, link, uuid, t->host, msg, code, status, wall_ms()};
    evs__relay_error_emit(h, px->p, &e);
  }
  return EVS_DECLINED;
}

/* ---- GET /outbound-activity (role admin): the transaction log, for evctl activity ---------- */

typedef struct ob_activity {
  ob_proxy *px;
  evs_request *req;
  int refs;
  json_t *items;
  size_t limit;
  char request_id[80];
  char relay[260];  /* "outbound", or a destination host */
  char method[16];
  int status_exact, status_class;
} ob_activity;

/* evctl activity's filters, as relay-inbound's GET /activity applies them. */
static int activity_matches(const ob_activity *a, json_t *rec) {
  const char *s;
  if (a->request_id[0] && (!(s = json_string_value(json_object_get(rec, "requestId"))) ||
                           strcmp(s, a->request_id) != 0))
    return 0;
  if (a->method[0] && (!(s = json_string_value(json_object_get(rec, "method"))) ||
                       strcasecmp(s, a->method) != 0))
    return 0;
  if (a->relay[0] && strcasecmp(a->relay, "outbound") != 0) {
    s = json_string_value(json_object_get(rec, "destination"));
    size_t n = strlen(a->relay);
    if (!s || strncasecmp(s, a->relay, n) != 0 || s[n] != ':') return 0;
  }
  if (a->status_exact || a->status_class) {
    json_t *st = json_object_get(rec, "status");
    if (!json_is_integer(st)) return 0;
    json_int_t code = json_integer_value(st);
    if (a->status_exact && code != a->status_exact) return 0;
    if (a->status_class && code / 100 != a->status_class) return 0;
  }
  return 1;
}

static void activity_unref(ob_activity *a) {
  if (--a->refs > 0) return;
  json_decref(a->items);
  free(a);
}

static void activity_gone(void *data) {
  ob_activity *a = data;
  a->req = NULL;
  activity_unref(a);
}

static void on_activity(void *arg, int status, int64_t ts_ms, const char *json) {
  ob_activity *a = arg;
  (void)ts_ms;
  if (json) {
    if (!a->req || json_array_size(a->items) >= a->limit) return;
    json_t *rec = json_loads(json, 0, NULL);
    if (json_is_object(rec) && activity_matches(a, rec)) json_array_append(a->items, rec);
    json_decref(rec);
    return;
  }
  const evs_host *h = a->px->h;
  if (a->req) {
    if (status < 0) {
      h->respond_error(a->req, 500, "internal-error", "The store is unavailable");
    } else {
      json_t *o = json_pack("{s:O}", "transactions", a->items);
      char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
      evs_header hd = {"Content-Type", 12, "application/json", 16};
      if (s) h->respond(a->req, 200, &hd, 1, (const uint8_t *)s, strlen(s));
      else h->respond_error(a->req, 500, "internal-error", "Out of memory");
      free(s);
      json_decref(o);
    }
  }
  activity_unref(a);
}

/* The query of relay-inbound's GET /activity (relay, status, method, since, limit, requestId;
 * relay is "outbound" or a destination host): matching records, newest first. evctl activity
 * sends the same query to both and merges. */
static int activity_route(void *state, evs_request *req) {
  ob_proxy *px = ob_state_proxy(state);
  const evs_host *h = px->h;
  const char *q = h->request_info(req)->query;
  int64_t since = 0;
  size_t limit = 100;
  ob_activity *a = calloc(1, sizeof *a);
  if (!a || !(a->items = json_array())) {
    free(a);
    h->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  for (const char *p = q; p && *p;) {
    size_t n = strcspn(p, "&");
    if (strncmp(p, "since=", 6) == 0) since = strtoll(p + 6, NULL, 10);
    else if (strncmp(p, "limit=", 6) == 0) limit = (size_t)strtoul(p + 6, NULL, 10);
    else if (strncmp(p, "requestId=", 10) == 0 && n - 10 < sizeof a->request_id)
      snprintf(a->request_id, sizeof a->request_id, "%.*s", (int)(n - 10), p + 10);
    else if (strncmp(p, "relay=", 6) == 0 && n - 6 < sizeof a->relay)
      snprintf(a->relay, sizeof a->relay, "%.*s", (int)(n - 6), p + 6);
    else if (strncmp(p, "method=", 7) == 0 && n - 7 < sizeof a->method)
      snprintf(a->method, sizeof a->method, "%.*s", (int)(n - 7), p + 7);
    else if (strncmp(p, "status=", 7) == 0 && n == 10 && (p[8] == 'x' || p[8] == 'X'))
      a->status_class = p[7] - '0';
    else if (strncmp(p, "status=", 7) == 0)
      a->status_exact = atoi(p + 7);
    p += n;
    if (*p) p++;
  }
  if (limit == 0 || limit > 1000) limit = 1000;
  a->px = px;
  a->req = req;
  a->limit = limit;
  a->refs = 2;
  h->request_set_data(req, px->p, a, activity_gone);
  int filtered = a->request_id[0] || a->relay[0] || a->method[0] || a->status_exact ||
                 a->status_class;
  if (h->store_query(px->p, "transactions", since, filtered ? 10000 : limit, on_activity, a) < 0) {
    a->refs--;
    h->respond_error(req, 500, "internal-error", "The store is unavailable");
  }
  return EVS_HANDLED;
}

/* ---- init and fini --------------------------------------------------------------------- */

static int append_file(FILE *out, const char *path) {
  FILE *in = fopen(path, "r");
  if (!in) return -errno;
  char buf[16384];
  size_t n;
  int r = 0;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n) r = -EIO;
  if (ferror(in)) r = -EIO;
  fclose(in);
  fputc('\n', out);
  return r;
}

/* destination_ca_file adds to the system's roots rather than replacing them: one bundle of both
 * in the state directory (the same bytes from every worker: written to a temporary name, then
 * renamed over). Returns the path (owned by px) or NULL, and logs why. */
static char *write_bundle(ob_proxy *px, const char *extra) {
  const evs_host *h = px->h;
  const char *sys = getenv(X509_get_default_cert_file_env());
  if (!sys) sys = X509_get_default_cert_file();
  const char *dir = h->state_dir(px->p);
  char path[4096], tmp[4200];
  snprintf(path, sizeof path, "%s/outbound-ca.pem", dir);
  snprintf(tmp, sizeof tmp, "%s.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) {
    h->log(px->p, NULL, EVS_LOG_ERROR, "cannot write %s: %s", tmp, strerror(errno));
    return NULL;
  }
  int r = append_file(f, extra);
  if (r < 0) {
    h->log(px->p, NULL, EVS_LOG_ERROR, "destination_ca_file %s: %s", extra, strerror(-r));
  } else if (append_file(f, sys) < 0) {
    h->log(px->p, NULL, EVS_LOG_WARN,
           "no system CA bundle at %s: destinations are verified with destination_ca_file alone",
           sys);
  }
  if (fclose(f) != 0 && r == 0) r = -EIO;
  if (r < 0 || rename(tmp, path) != 0) {
    unlink(tmp);
    return NULL;
  }
  return strdup(path);
}

int ob_proxy_init(const evs_host *h, evs_plugin *p, ob_state *st, ob_proxy **ret) {
  ob_proxy *px = calloc(1, sizeof *px);
  if (!px) return -ENOMEM;
  px->h = h;
  px->p = p;
  px->st = st;
  const char *extra = h->config_string(p, "destination_ca_file");
  if (extra && !(px->ca_file = px->ca_bundle = write_bundle(px, extra))) {
    ob_proxy_free(px);
    return -EINVAL;
  }
  px->spool_dir = h->config_string(p, "spool_dir");
  if (!px->spool_dir) px->spool_dir = h->state_dir(p);
  px->max_body = (uint64_t)h->config_int(p, "max_body");
  evs_token_bucket_init(&px->leaf_bucket, h->config_int(p, "unauthenticated_leaf_rate"),
                        h->config_int(p, "unauthenticated_leaf_burst"), mono_ns() / 1000000u);
  EVP_PKEY *k = EVP_EC_gen("P-256");
  if (k) {
    px->key_pem = pem_of(k, 0, &px->key_len);
    px->pub_pem = pem_of(k, 1, NULL);
    EVP_PKEY_free(k);
  }
  if (!px->key_pem || !px->pub_pem) {
    ob_proxy_free(px);
    return -ENOMEM;
  }
  px->transaction_log = h->config_bool(p, "transaction_log");
  px->team_uuid = h->config_string(p, "team_uuid");
  px->activity_base = h->config_string(p, "activity_url");
  static const evs_route routes[] = {
      {sizeof(evs_route), "outbound", NULL, "CONNECT", NULL, connect_route},
      {sizeof(evs_route), "admin", NULL, "GET", "/outbound-activity", activity_route},
  };
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < sizeof routes / sizeof routes[0]; i++)
    rc = h->add_route(p, &routes[i]);
  if (rc == 0) rc = h->add_hook(p, EVS_PHASE_END, end_hook);
  if (rc == 0) rc = h->add_hook(p, EVS_PHASE_LOG, log_hook);
  if (rc < 0) {
    ob_proxy_free(px);
    return rc;
  }
  *ret = px;
  return 0;
}

void ob_proxy_free(ob_proxy *px) {
  if (!px) return;
  while (px->leaves) {
    ob_leaf *l = px->leaves;
    px->leaves = l->next;
    leaf_unref(l);
  }
  if (px->key_pem) OPENSSL_cleanse(px->key_pem, px->key_len);
  free(px->key_pem);
  free(px->pub_pem);
  free(px->ca_bundle);
  free(px);
}
