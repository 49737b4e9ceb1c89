/*
 * attest_keys.c: the attestation keys of Cages, as the enclave plugin keeps them
 * (enclave/README.md, "The attestation keys"). The enclave makes and uses the keys
 * (EVS_EP_ATTEST_*); this file stores what it returns and offers two things:
 *
 *   - the crypto provider's ops "attest_chain" (no items -> [node certificate DER, root
 *     certificate DER]) and "attest_sign" ([COSE Sig_structure] -> [96-byte r || s]), which
 *     the cage-broker plugin calls through plugins/cage-broker/attest.c;
 *   - GET /attestation-root.pem, without auth, on the api and admin listeners: the root users pin
 *     (`evctl cage attest --root`, the Node bindings).
 *
 * Where things live: the root (certificate and sealed key) in the state store under
 * "attest-root", shared by the cluster, made by the first node that needs it; the node key
 * (certificate and sealed key) in the node's state directory, file attest-node.json, made at the
 * node's first use and certified by the root. Private keys are never here in plaintext: only the
 * enclave opens the sealed blobs. Loaded lazily (the first call waits for it) and checked again
 * every ATTEST_RECHECK_MS, so a node whose certificate is not under the store's root (two nodes
 * made a root at once; the root was replaced) is certified again under the current one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "enclave_int.h"
#include "evs_enclave_proto.h"

#define ATTEST_ROOT_KEY "attest-root"
#define ATTEST_NODE_FILE "attest-node.json"
#define ATTEST_RECHECK_MS 60000
#define ATTEST_RETRY_MS 5000 /* a failed re-check (store or enclave away) is tried again */
#define ATTEST_FILE_MAX 65536

enum { A_IDLE = 0, A_LOADING, A_READY };

typedef void (*ready_fn)(enclave_state *st, void *arg, int status);
typedef struct waiter {
  struct waiter *next;
  ready_fn fn;
  void *arg;
  evs_timer *timer; /* deferral when the keys were ready already */
  enclave_state *st;
} waiter;

struct attest_keys {
  int state;
  int have; /* a complete set was loaded once: it keeps serving while a re-check fails */
  uint64_t loaded_ms;
  uint8_t *root, *root_sealed, *node, *node_sealed;
  size_t root_len, root_sealed_len, node_len, node_sealed_len;
  char *root_pem;
  waiter *waiters;
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static attest_keys *keys_of(enclave_state *st) {
  if (!st->attest) st->attest = calloc(1, sizeof *st->attest);
  return st->attest;
}

static int set_bytes(uint8_t **dst, size_t *dst_len, const uint8_t *p, size_t len) {
  uint8_t *c = malloc(len ? len : 1);
  if (!c) return -ENOMEM;
  memcpy(c, p, len);
  free(*dst);
  *dst = c;
  *dst_len = len;
  return 0;
}

static char *pem_of_der(const uint8_t *der, size_t len) {
  const uint8_t *p = der;
  X509 *x = d2i_X509(NULL, &p, (long)len);
  BIO *b = x ? BIO_new(BIO_s_mem()) : NULL;
  char *data = NULL, *out = NULL;
  long n;
  if (b && PEM_write_bio_X509(b, x) == 1 && (n = BIO_get_mem_data(b, &data)) > 0 &&
      (out = malloc((size_t)n + 1))) {
    memcpy(out, data, (size_t)n);
    out[n] = 0;
  }
  BIO_free(b);
  X509_free(x);
  return out;
}

/* {"version":1,"cert":b64,"sealedKey":b64} -> the two byte strings. */
static int record_parse(const uint8_t *v, size_t len, uint8_t **cert, size_t *cert_len,
                        uint8_t **sealed, size_t *sealed_len) {
  json_t *o = json_loadb((const char *)v, len, 0, NULL);
  const char *c = json_string_value(json_object_get(o, "cert"));
  const char *s = json_string_value(json_object_get(o, "sealedKey"));
  int r = -EINVAL;
  if (c && s && enc_unb64(c, strlen(c), cert, cert_len) == 0) {
    if (enc_unb64(s, strlen(s), sealed, sealed_len) == 0)
      r = 0;
    else
      free(*cert);
  }
  json_decref(o);
  return r;
}

static char *record_make(const uint8_t *cert, size_t cert_len, const uint8_t *sealed,
                         size_t sealed_len) {
  char *c = enc_b64(cert, cert_len), *s = enc_b64(sealed, sealed_len);
  json_t *o = c && s ? json_pack("{s:i,s:s,s:s}", "version", 1, "cert", c, "sealedKey", s) : NULL;
  char *out = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  free(c);
  free(s);
  return out;
}

/* ---- loading: root from the store, node from the state directory --------------------------- */

static void finish(enclave_state *st, int status) {
  attest_keys *k = st->attest;
  if (!k) return; /* stopping */
  k->state = status == 0 ? A_READY : A_IDLE;
  if (status == 0) {
    k->loaded_ms = now_ms();
    k->have = 1;
  } else if (k->have && k->root && k->node && k->node_sealed) {
    /* The keys in memory still sign; check again soon. */
    k->state = A_READY;
    k->loaded_ms = now_ms() - ATTEST_RECHECK_MS + ATTEST_RETRY_MS;
    status = 0;
  }
  waiter *w = k->waiters;
  k->waiters = NULL;
  while (w) {
    waiter *next = w->next;
    w->fn(st, w->arg, status);
    free(w);
    w = next;
  }
}

static void fail(enclave_state *st, int status, const char *what) {
  st->host->log(st->plugin, NULL, EVS_LOG_ERROR, "attestation keys: %s", what);
  finish(st, status);
}

static char *node_path(enclave_state *st) {
  const char *sd = st->host->state_dir(st->plugin);
  char *p = NULL;
  if (asprintf(&p, "%s/%s", sd ? sd : ".", ATTEST_NODE_FILE) < 0) return NULL;
  return p;
}

/* Written beside, synced, then renamed over: a reader sees the old file or the new one. Two
 * workers of a node that both make a key leave one; the other's key (also certified) is
 * replaced at its next check. */
static int node_write(enclave_state *st, const char *json) {
  char *path = node_path(st), *tmp = NULL;
  if (!path || asprintf(&tmp, "%s.%ld.tmp", path, (long)getpid()) < 0) {
    free(path);
    return -ENOMEM;
  }
  int r = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  size_t n = strlen(json);
  if (fd < 0 || write(fd, json, n) != (ssize_t)n || fsync(fd) != 0) r = -errno;
  if (fd >= 0 && close(fd) != 0 && r == 0) r = -errno;
  if (r == 0 && rename(tmp, path) != 0) r = -errno;
  if (r < 0) unlink(tmp);
  free(tmp);
  free(path);
  return r;
}

static int node_read(enclave_state *st, uint8_t **cert, size_t *cert_len, uint8_t **sealed,
                     size_t *sealed_len) {
  char *path = node_path(st);
  int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
  free(path);
  if (fd < 0) return -ENOENT;
  char *buf = malloc(ATTEST_FILE_MAX);
  ssize_t n = buf ? read(fd, buf, ATTEST_FILE_MAX) : -1;
  close(fd);
  int r = n > 0 && n < ATTEST_FILE_MAX
              ? record_parse((const uint8_t *)buf, (size_t)n, cert, cert_len, sealed, sealed_len)
              : -EINVAL;
  free(buf);
  return r;
}

static void on_node_created(void *arg, int status, const ep_item *it, size_t n) {
  enclave_state *st = arg;
  if (!st->attest) return; /* stopping */
  attest_keys *k = st->attest;
  if (status != 0 || n != 2) {
    fail(st, EVS_ENOCRYPTO, "the enclave did not certify a node key");
    return;
  }
  char *json = record_make(it[0].data, it[0].len, it[1].data, it[1].len);
  if (!json || set_bytes(&k->node, &k->node_len, it[0].data, it[0].len) < 0 ||
      set_bytes(&k->node_sealed, &k->node_sealed_len, it[1].data, it[1].len) < 0) {
    free(json);
    fail(st, -ENOMEM, "out of memory");
    return;
  }
  int r = node_write(st, json);
  free(json);
  if (r < 0) {
    st->host->log(st->plugin, NULL, EVS_LOG_ERROR,
                  "attestation keys: cannot write %s in the state directory: %s", ATTEST_NODE_FILE,
                  strerror(-r));
    finish(st, r);
    return;
  }
  st->host->log(st->plugin, NULL, EVS_LOG_INFO,
                "attestation keys: this node's key is certified by the attestation root");
  finish(st, 0);
}

static void node_create(enclave_state *st) {
  attest_keys *k = st->attest;
  char name[65];
  if (gethostname(name, sizeof name) != 0) strcpy(name, "evserver node");
  name[64] = 0;
  for (char *p = name; *p; p++)
    if (*p < 0x20 || *p > 0x7e) *p = '-';
  ep_msg m;
  ep_msg_init(&m, EVS_EP_ATTEST_NODE_CREATE);
  ep_msg_add(&m, k->root, k->root_len);
  ep_msg_add(&m, k->root_sealed, k->root_sealed_len);
  ep_msg_add_str(&m, name);
  if (m.failed) {
    ep_msg_done(&m);
    fail(st, -ENOMEM, "out of memory");
    return;
  }
  int r = enc_enclave_send(st, &m, on_node_created, st);
  if (r < 0) finish(st, r);
}

static void on_chain_checked(void *arg, int status, const ep_item *it, size_t n) {
  enclave_state *st = arg;
  if (!st->attest) return; /* stopping */
  (void)it;
  if (status == 0 && n == 2) {
    finish(st, 0);
    return;
  }
  if (status == EVS_EP_E_INVALID) { /* not under the current root, or does not open */
    st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                  "attestation keys: this node's key is not certified by the store's attestation "
                  "root (or does not open with the sealing key): certifying a new one");
    node_create(st);
    return;
  }
  finish(st, status < 0 ? status : EVS_ENOCRYPTO);
}

static void node_load(enclave_state *st) {
  attest_keys *k = st->attest;
  uint8_t *cert = NULL, *sealed = NULL;
  size_t cl = 0, sl = 0;
  if (node_read(st, &cert, &cl, &sealed, &sl) < 0) {
    node_create(st);
    return;
  }
  free(k->node);
  free(k->node_sealed);
  k->node = cert;
  k->node_len = cl;
  k->node_sealed = sealed;
  k->node_sealed_len = sl;
  ep_msg m;
  ep_msg_init(&m, EVS_EP_ATTEST_CHAIN);
  ep_msg_add(&m, k->root, k->root_len);
  ep_msg_add(&m, k->node, k->node_len);
  ep_msg_add(&m, k->node_sealed, k->node_sealed_len);
  if (m.failed) {
    ep_msg_done(&m);
    fail(st, -ENOMEM, "out of memory");
    return;
  }
  int r = enc_enclave_send(st, &m, on_chain_checked, st);
  if (r < 0) finish(st, r);
}

static void on_root(void *arg, int status, const uint8_t *v, size_t len);

static void on_root_put(void *arg, int status, const uint8_t *v, size_t len) {
  enclave_state *st = arg;
  if (!st->attest) return; /* stopping */
  (void)v;
  (void)len;
  if (status < 0) {
    fail(st, status, "cannot store the new attestation root");
    return;
  }
  /* Read it back: of two nodes that made a root at once, both go on with the one kept. */
  int r = st->host->store_get(st->plugin, ATTEST_ROOT_KEY, on_root, st);
  if (r < 0) finish(st, r);
}

static void on_root_created(void *arg, int status, const ep_item *it, size_t n) {
  enclave_state *st = arg;
  if (!st->attest) return; /* stopping */
  if (status != 0 || n != 2) {
    fail(st, EVS_ENOCRYPTO, "the enclave did not make a root");
    return;
  }
  char *json = record_make(it[0].data, it[0].len, it[1].data, it[1].len);
  if (!json) {
    fail(st, -ENOMEM, "out of memory");
    return;
  }
  int r = st->host->store_put(st->plugin, ATTEST_ROOT_KEY, (const uint8_t *)json, strlen(json), 0,
                              on_root_put, st);
  free(json);
  if (r < 0)
    finish(st, r);
  else
    st->host->log(st->plugin, NULL, EVS_LOG_INFO,
                  "attestation keys: made the cluster's attestation root (P-384, in the store "
                  "as %s)",
                  ATTEST_ROOT_KEY);
}

static void on_root(void *arg, int status, const uint8_t *v, size_t len) {
  enclave_state *st = arg;
  if (!st->attest) return; /* stopping */
  attest_keys *k = st->attest;
  if (status == -ENOENT) {
    ep_msg m;
    ep_msg_init(&m, EVS_EP_ATTEST_ROOT_CREATE);
    ep_msg_add(&m, "", 0);
    uint8_t days[4];
    evs_ep_put_u32(days, 0);
    ep_msg_add(&m, days, 4);
    int r = m.failed ? -ENOMEM : enc_enclave_send(st, &m, on_root_created, st);
    if (m.failed) ep_msg_done(&m);
    if (r < 0) finish(st, r);
    return;
  }
  if (status < 0) { /* the store is away: try again on the next call */
    finish(st, status);
    return;
  }
  uint8_t *cert = NULL, *sealed = NULL;
  size_t cl = 0, sl = 0;
  if (record_parse(v, len, &cert, &cl, &sealed, &sl) < 0) {
    fail(st, -EINVAL, "the store's attest-root record is malformed");
    return;
  }
  char *pem = pem_of_der(cert, cl);
  if (!pem) {
    free(cert);
    free(sealed);
    fail(st, -EINVAL, "the store's attestation root is not a certificate");
    return;
  }
  free(k->root);
  free(k->root_sealed);
  free(k->root_pem);
  k->root = cert;
  k->root_len = cl;
  k->root_sealed = sealed;
  k->root_sealed_len = sl;
  k->root_pem = pem;
  node_load(st);
}

static void on_deferred(void *arg) {
  waiter *w = arg;
  w->st->host->timer_free(w->timer);
  w->fn(w->st, w->arg, 0);
  free(w);
}

/* fn(st, arg, status) runs once, later, when the keys are loaded (0) or could not be. */
static int attest_ready(enclave_state *st, ready_fn fn, void *arg) {
  attest_keys *k = keys_of(st);
  waiter *w = k ? calloc(1, sizeof *w) : NULL;
  if (!w) return -ENOMEM;
  w->fn = fn;
  w->arg = arg;
  w->st = st;
  if (k->state == A_READY && now_ms() - k->loaded_ms >= ATTEST_RECHECK_MS) k->state = A_IDLE;
  if (k->state == A_READY) {
    if (!(w->timer = st->host->timer_start(st->plugin, 0, 0, on_deferred, w))) {
      free(w);
      return -ENOMEM;
    }
    return 0;
  }
  w->next = k->waiters;
  k->waiters = w;
  if (k->state == A_IDLE) {
    k->state = A_LOADING;
    int r = st->host->store_get(st->plugin, ATTEST_ROOT_KEY, on_root, st);
    if (r < 0) {
      k->waiters = w->next;
      free(w);
      k->state = A_IDLE;
      return r;
    }
  }
  return 0;
}

void enc_attest_free(enclave_state *st) {
  attest_keys *k = st->attest;
  if (!k) return;
  for (waiter *w = k->waiters, *next; w; w = next) { /* stopping: nobody waits */
    next = w->next;
    free(w);
  }
  free(k->root);
  free(k->root_sealed);
  free(k->node);
  free(k->node_sealed);
  free(k->root_pem);
  free(k);
  st->attest = NULL;
}

/* ---- the crypto provider's ops -------------------------------------------------------------- */

typedef struct attest_call {
  enclave_state *st;
  evs_crypto_done_fn done;
  void *done_arg;
  int sign;
  uint8_t *tbs;
  size_t tbs_len;
} attest_call;

static void call_free(attest_call *c) {
  free(c->tbs);
  free(c);
}

static void answer_items(attest_call *c, const ep_item *it, size_t n) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += 4 + it[i].len;
  uint8_t *out = malloc(total ? total : 1), *p = out;
  if (!out) {
    c->done(c->done_arg, -ENOMEM, NULL, 0);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    evs_ep_put_u32(p, it[i].len);
    memcpy(p + 4, it[i].data, it[i].len);
    p += 4 + it[i].len;
  }
  c->done(c->done_arg, 0, out, total);
  free(out);
}

static void on_signed(void *arg, int status, const ep_item *it, size_t n) {
  attest_call *c = arg;
  if (status == 0 && n == 1 && it[0].len == 96) {
    answer_items(c, it, 1);
  } else {
    if (status == EVS_EP_E_INVALID && c->st->attest && c->st->attest->state == A_READY)
      c->st->attest->state = A_IDLE; /* the key stopped opening: load and check it again */
    c->done(c->done_arg, status == EVS_ENOCRYPTO || status >= 0 ? EVS_ENOCRYPTO : status, NULL, 0);
  }
  call_free(c);
}

static void on_keys(enclave_state *st, void *arg, int status) {
  attest_call *c = arg;
  attest_keys *k = st->attest;
  if (status < 0) {
    c->done(c->done_arg, EVS_ENOCRYPTO, NULL, 0);
    call_free(c);
    return;
  }
  if (!c->sign) {
    ep_item it[2] = {{k->node, (uint32_t)k->node_len}, {k->root, (uint32_t)k->root_len}};
    answer_items(c, it, 2);
    call_free(c);
    return;
  }
  ep_msg m;
  ep_msg_init(&m, EVS_EP_ATTEST_SIGN);
  ep_msg_add(&m, k->node, k->node_len);
  ep_msg_add(&m, k->node_sealed, k->node_sealed_len);
  ep_msg_add(&m, c->tbs, c->tbs_len);
  int r = m.failed ? -ENOMEM : enc_enclave_send(st, &m, on_signed, c);
  if (m.failed) ep_msg_done(&m);
  if (r < 0) {
    c->done(c->done_arg, r, NULL, 0);
    call_free(c);
  }
}

int enc_attest_call(enclave_state *st, const evs_crypto_request *creq, evs_crypto_done_fn done,
                    void *done_arg) {
  int sign = strcmp(creq->op, "attest_sign") == 0;
  ep_item it[2];
  int n = creq->payload_len ? ep_items_parse(creq->payload, creq->payload_len, it, 2) : 0;
  if (n != (sign ? 1 : 0)) return -EINVAL;
  attest_call *c = calloc(1, sizeof *c);
  if (!c) return -ENOMEM;
  c->st = st;
  c->done = done;
  c->done_arg = done_arg;
  c->sign = sign;
  if (sign && set_bytes(&c->tbs, &c->tbs_len, it[0].data, it[0].len) < 0) {
    free(c);
    return -ENOMEM;
  }
  int r = attest_ready(st, on_keys, c);
  if (r < 0) call_free(c);
  return r;
}

/* ---- GET /attestation-root.pem ------------------------------------------------------------- */

static void root_answer(enclave_state *st, void *arg, int status) {
  enc_ctx *x = arg;
  if (!enc_ctx_resume(x)) return;
  attest_keys *k = st->attest;
  if (status < 0 || !k || !k->root_pem) {
    enc_reply_error(x, 503, "service-unavailable",
                    "The attestation root is not available: the enclave or the store is down");
    return;
  }
  static const evs_header hdr[] = {{"Content-Type", 12, "application/x-pem-file", 22},
                                   {"Cache-Control", 13, "no-cache", 8}};
  st->host->respond(x->req, 200, hdr, 2, (const uint8_t *)k->root_pem, strlen(k->root_pem));
}

static void root_step(enc_ctx *x, const uint8_t *body, size_t len) {
  (void)body;
  (void)len;
  x->pending = 1;
  if (attest_ready(x->st, root_answer, x) < 0) {
    x->pending = 0;
    enc_reply_error(x, 500, "internal-error", "Out of memory");
  }
}

int enc_attest_root_route(enclave_state *st, evs_request *req) {
  const evs_request_info *ri = st->host->request_info(req);
  if (ri && strcmp(ri->path, ATTEST_ROOT_PATH) != 0) return EVS_DECLINED; /* a longer path */
  enc_ctx *x = enc_ctx_new(st, req);
  if (!x) {
    st->host->respond_error(req, 500, "internal-error", "Out of memory");
    return EVS_HANDLED;
  }
  return enc_continue(x, 0, root_step);
}
