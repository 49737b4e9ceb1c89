/*
 * encrypt_body.c: selected fields of a body encrypted in batches through the host's typed crypto
 * calls (encrypt_body.h). Moved here from the Inbound Relay's request pipeline so that the
 * Outbound Relay's response path uses the same code.
 *
 * Memory per body: the rewriter's bounded state, the spool's first MiB (the rest goes to an
 * unlinked temporary file), and the values of at most MAX_INFLIGHT batches of BATCH_BYTES.
 * A body that is reused (evs__encrypt_body_reuse) keeps its rewriter, spool and one spare batch
 * between bodies: a small message allocates nothing there after the first.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "encrypt_body.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SPOOL_MEM_MAX (1u << 20)
#define BATCH_FIELDS 512
#define BATCH_BYTES (256u << 10)
#define MAX_INFLIGHT 4

/* One value of a batch: where its result goes, and its bytes in the batch's payload. */
typedef struct ebval {
  size_t hole;
  size_t off, len;
  int type; /* EVS_CRYPTO_* */
} ebval;

typedef struct ebatch {
  struct evs__encrypt_body *e;
  uint8_t *payload; /* the values' bytes, one after another (plaintext: wiped when freed) */
  size_t len, cap;
  size_t n;
  ebval *holes;
  size_t holes_cap;
  evs_crypto_value *vals; /* the encrypt_values request's values (holes_cap of them) */
  int file; /* an encrypt_file call: one hole, raw bytes */
} ebatch;

struct evs__encrypt_body {
  evs__encrypt_body_cfg cfg;
  char *app_id, *curve;
  void *rw; /* cfg.ops's rewriter, or NULL: bytes are spooled unchanged */
  ebatch *whole; /* whole_file: the body, one file */
  size_t whole_hole;
  relay_spool spool;
  ebatch *cur;
  ebatch *spare; /* a values batch back from the enclave, wiped, for the next one */
  int inflight;
  int finished;
  int gone;
  int err; /* first error (negative), or 0 */
  int err_status;
  const char *err_code;
  const char *err_detail;
  uint64_t encrypted, passed;
  uint8_t *pass; /* a passed value as its format writes it */
  size_t pass_cap;
  uint8_t *placed; /* a returned value as its format places it (ciphertext) */
  size_t placed_cap;
};

static void batch_free(ebatch *b) {
  if (!b) return;
  if (b->payload) {
    explicit_bzero(b->payload, b->len);
    free(b->payload);
  }
  free(b->holes);
  free(b->vals);
  free(b);
}

static void body_release(evs__encrypt_body *e) {
  if (e->rw) e->cfg.ops->free(e->rw);
  relay_spool_done(&e->spool);
  batch_free(e->cur);
  batch_free(e->whole);
  batch_free(e->spare);
  free(e->pass);
  free(e->placed);
  free(e->app_id);
  free(e->curve);
  free(e);
}

static void fail(evs__encrypt_body *e, int err, int status, const char *code, const char *detail) {
  if (e->err) return;
  e->err = err;
  e->err_status = status;
  e->err_code = code;
  e->err_detail = detail;
}

void evs__encrypt_body_fail(evs__encrypt_body *e, int r) {
  const char *code = NULL;
  int status = evs__rewriter_answer(r, &code);
  if (r == EVS__RW_E_EVDATA)
    fail(e, r, status, code,
         e->cfg.refuse_ev
             ? "Evervault-encrypted data in the request body: a relay that decrypts responses "
               "accepts none"
             : "Evervault-encrypted data in a field that is not configured for encryption");
  else if (status)
    fail(e, r, status, code, "The request body is malformed for its Content-Type");
  else if (r == -E2BIG)
    fail(e, r, 413, "payload-too-large", "The request exceeds the 25 MB limit for encryption");
  else if (r == -ENOMEM || r == -EIO || r == -ENOSPC)
    fail(e, r, 500, "internal-server-error", "The relay could not hold the request body");
  else
    fail(e, r, 500, "internal-server-error", "Encryption is unavailable; nothing was forwarded");
}

/* A crypto call that failed as a whole, whether it was refused at once or answered so: a locked
 * app is the operator's to fix; an enclave that is not running (restarting) is worth a retry. */
static void fail_crypto(evs__encrypt_body *e, int status) {
  if (status == EVS_CRYPTO_E_NO_APP)
    fail(e, status, 500, "internal-server-error",
         "The relay's app is not unlocked in the enclave (evctl app unlock)");
  else if (status == EVS_ENOCRYPTO)
    fail(e, status, 503, "service-unavailable",
         "Encryption is unavailable (the enclave is not running or restarting); nothing was "
         "forwarded. Retry shortly");
  else
    fail(e, status, 500, "internal-server-error", "Encryption is unavailable; nothing was forwarded");
}

/* ---- batches ----------------------------------------------------------------------------- */

static int put_bytes(ebatch *b, const void *a, size_t al) {
  size_t need = b->len + al;
  if (relay_buf_grow_wiped(&b->payload, &b->cap, b->len, need, 1024) < 0) return -ENOMEM;
  if (al) memcpy(b->payload + b->len, a, al);
  b->len = need;
  return 0;
}

static int add_value(ebatch *b, size_t hole, int type, const void *value, size_t len) {
  if (b->n == b->holes_cap) {
    size_t nc = b->holes_cap ? b->holes_cap * 2 : 16;
    ebval *nh = realloc(b->holes, nc * sizeof *nh);
    if (!nh) return -ENOMEM;
    b->holes = nh;
    evs_crypto_value *nv = realloc(b->vals, nc * sizeof *nv);
    if (!nv) return -ENOMEM;
    b->vals = nv;
    b->holes_cap = nc;
  }
  size_t off = b->len;
  if (put_bytes(b, value, len) < 0) return -ENOMEM;
  b->holes[b->n++] = (ebval){hole, off, len, type};
  return 0;
}

static ebatch *batch_new(evs__encrypt_body *e, int file) {
  if (!file && e->spare) {
    ebatch *b = e->spare;
    e->spare = NULL;
    return b;
  }
  ebatch *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->e = e;
  b->file = file;
  return b;
}

/* A batch that is done with: kept, wiped, as the spare for the next values batch, or freed. */
static void batch_recycle(evs__encrypt_body *e, ebatch *b) {
  if (b->file || e->spare) {
    batch_free(b);
    return;
  }
  if (b->payload) explicit_bzero(b->payload, b->len);
  b->len = 0;
  b->n = 0;
  e->spare = b;
}

/* The results of a batch: per value (res, n) from encrypt_values, or the file (file, file_len)
 * from encrypt_file. */
static void batch_done(ebatch *b, int status, const evs_crypto_result *res, size_t n,
                       const uint8_t *file, size_t file_len) {
  evs__encrypt_body *e = b->e;
  e->inflight--;
  if (e->gone) {
    batch_free(b);
    if (e->inflight == 0) body_release(e);
    return;
  }
  if (status < 0) {
    fail_crypto(e, status);
  } else {
    size_t got = b->file ? 1 : n;
    for (size_t i = 0; i < b->n && i < got && !e->err; i++) {
      const uint8_t *ct = file;
      size_t ctl = file_len;
      if (!b->file) {
        if (res[i].status != EVS_CRYPTO_OK) {
          fail(e, -EINVAL, 400, "bad-request", "A selected field could not be encrypted");
          break;
        }
        ct = res[i].data;
        ctl = res[i].len;
      }
      size_t (*place)(const char *, size_t, char *, size_t) =
          e->cfg.ops ? e->cfg.ops->place : evs__rewriter_place_verbatim;
      size_t wl = place((const char *)ct, ctl, NULL, 0);
      if (wl > e->placed_cap) {
        uint8_t *np = realloc(e->placed, wl);
        if (!np) {
          fail(e, -ENOMEM, 500, "internal-server-error", "Out of memory");
          break;
        }
        e->placed = np;
        e->placed_cap = wl;
      }
      place((const char *)ct, ctl, (char *)e->placed, wl);
      if (relay_spool_fill(&e->spool, b->holes[i].hole, e->placed, wl) < 0)
        fail(e, -ENOMEM, 500, "internal-server-error", "Out of memory");
      e->encrypted++;
    }
    if (!e->err && e->spool.filled < e->spool.nholes && e->inflight == 0 && e->finished &&
        !e->cur)
      fail(e, -EPROTO, 500, "internal-server-error", "The enclave answered too few fields");
  }
  batch_recycle(e, b);
  if (e->cfg.progress) e->cfg.progress(e->cfg.arg);
}

static void on_values(void *arg, int status, const evs_crypto_result *res, size_t n) {
  batch_done(arg, status, res, n, NULL, 0);
}

static void on_file(void *arg, int status, const uint8_t *data, size_t len) {
  batch_done(arg, status, NULL, 0, data, len);
}

static int batch_send(evs__encrypt_body *e, ebatch *b) {
  const evs_host *h = e->cfg.host;
  int r;
  e->inflight++;
  if (b->file) {
    evs_file_request fr = {sizeof fr, e->app_id, e->curve, b->payload, b->len};
    r = h->encrypt_file(e->cfg.plugin, &fr, on_file, b);
  } else {
    evs_crypto_value *v = b->vals;
    for (size_t i = 0; i < b->n; i++)
      v[i] = (evs_crypto_value){sizeof v[i], b->holes[i].type,
                                b->payload ? b->payload + b->holes[i].off : NULL,
                                b->holes[i].len};
    evs_encrypt_request er = {sizeof er, e->app_id, e->curve, NULL, v, b->n};
    r = h->encrypt_values(e->cfg.plugin, &er, on_values, b);
  }
  if (r < 0) {
    e->inflight--;
    batch_free(b);
    fail_crypto(e, r);
  }
  return r;
}

static int flush(evs__encrypt_body *e) {
  ebatch *b = e->cur;
  e->cur = NULL;
  if (!b || b->n == 0) {
    batch_free(b);
    return 0;
  }
  return batch_send(e, b);
}

/* A value written as it is, by the rewriter itself, as its format takes it. */
static int pass_value(evs__encrypt_body *e, const char *value, size_t len, const char **ret_buf,
                      size_t *ret_len) {
  size_t wl = e->cfg.ops->place_returned(value, len, NULL, 0);
  if (wl > e->pass_cap) {
    uint8_t *np = realloc(e->pass, wl);
    if (!np) return -ENOMEM;
    e->pass = np;
    e->pass_cap = wl;
  }
  e->cfg.ops->place_returned(value, len, (char *)e->pass, wl);
  *ret_buf = (const char *)e->pass;
  *ret_len = wl;
  return 0;
}

/* The rewriters' transform: every selected value joins the batch and leaves a hole. */
static int transform(void *ud, evs__rw_type type, const char *value, size_t len,
                     const char **ret_buf, size_t *ret_len) {
  evs__encrypt_body *e = ud;
  int file = type == EVS__RW_FILE;
  if (file ? len >= 6 && memcmp(value, "%EVENC", 6) == 0
           : type == EVS__RW_STRING && evs__looks_like_ev_string(value, len)) {
    /* Already encrypted: never encrypted twice. */
    if (e->cfg.refuse_ev) return EVS__RW_E_EVDATA;
    int r = pass_value(e, value, len, ret_buf, ret_len);
    if (r == 0) e->passed++;
    return r;
  }
  if (file && !e->cfg.files) return pass_value(e, value, len, ret_buf, ret_len);
  size_t hole;
  int r = relay_spool_hole(&e->spool, &hole);
  if (r < 0) return r;
  if (file) {
    ebatch *fb = batch_new(e, 1);
    if (!fb) return -ENOMEM;
    if (add_value(fb, hole, EVS_CRYPTO_STRING_EXACT, value, len) < 0) {
      batch_free(fb);
      return -ENOMEM;
    }
    if ((r = batch_send(e, fb)) < 0) return r;
    return EVS__RW_DEFER;
  }
  if (!e->cur && !(e->cur = batch_new(e, 0))) return -ENOMEM;
  ebatch *b = e->cur;
  /* Exact strings keep their leading and trailing whitespace (the SDK trims; the relay must
   * not change what it was sent). */
  int ctype = type == EVS__RW_NUMBER    ? EVS_CRYPTO_NUMBER
              : type == EVS__RW_BOOLEAN ? EVS_CRYPTO_BOOLEAN
                                          : EVS_CRYPTO_STRING_EXACT;
  if (add_value(b, hole, ctype, value, len) < 0) return -ENOMEM;
  if (b->n >= BATCH_FIELDS || b->len >= BATCH_BYTES) {
    if ((r = flush(e)) < 0) return r;
  }
  return EVS__RW_DEFER;
}

static int rw_emit(void *ud, const char *buf, size_t len) {
  evs__encrypt_body *e = ud;
  return relay_spool_write(&e->spool, buf, len);
}

/* ---- the body ---------------------------------------------------------------------------- */

/* Keeps *dst if it already holds s (NULL alike), else replaces it with a copy. 0 or -ENOMEM. */
static int keep_str(char **dst, const char *s) {
  if (*dst && s && strcmp(*dst, s) == 0) return 0;
  if (!*dst && !s) return 0;
  free(*dst);
  *dst = NULL;
  return s && !(*dst = strdup(s)) ? -ENOMEM : 0;
}

/* What new and reuse share: the configuration, the names, and the rewriter (the one there is,
 * reset, when the format is the same and can be) or the whole-file batch. On error e is only
 * fit to be released. */
static int body_setup(evs__encrypt_body *e, const evs__encrypt_body_cfg *cfg) {
  /* The old rewriter goes first, by its own ops: e->cfg names the new ones from here on. */
  if (e->rw && !(cfg->ops && cfg->sel && cfg->ops == e->cfg.ops && cfg->ops->reset &&
                 cfg->ops->reset(e->rw) == 0)) {
    e->cfg.ops->free(e->rw);
    e->rw = NULL;
  }
  e->cfg = *cfg;
  if (keep_str(&e->app_id, cfg->app_id) < 0 ||
      keep_str(&e->curve, cfg->curve ? cfg->curve : "secp256k1") < 0)
    return -ENOMEM;
  if (!e->rw && cfg->ops && cfg->sel) {
    int r = cfg->ops->new(cfg->sel, rw_emit, transform, e, &e->rw);
    if (r < 0) {
      e->rw = NULL;
      return r;
    }
  } else if (!cfg->ops && cfg->whole_file) {
    if (!(e->whole = batch_new(e, 1)) || relay_spool_hole(&e->spool, &e->whole_hole) < 0)
      return -ENOMEM;
  }
  return 0;
}

int evs__encrypt_body_new(const evs__encrypt_body_cfg *cfg, evs__encrypt_body **ret) {
  if (!cfg || cfg->size < sizeof *cfg || !cfg->host) return -EINVAL;
  evs__encrypt_body *e = calloc(1, sizeof *e);
  if (!e) return -ENOMEM;
  relay_spool_init(&e->spool, cfg->spool_dir, SPOOL_MEM_MAX);
  int r = body_setup(e, cfg);
  if (r < 0) {
    body_release(e);
    return r;
  }
  *ret = e;
  return 0;
}

int evs__encrypt_body_reuse(evs__encrypt_body *e, const evs__encrypt_body_cfg *cfg) {
  if (!cfg || cfg->size < sizeof *cfg || !cfg->host) return -EINVAL;
  if (e->inflight > 0 || e->gone) return -EBUSY;
  relay_spool_reset(&e->spool);
  e->spool.dir = cfg->spool_dir;
  if (e->cur) batch_recycle(e, e->cur); /* values an error kept from the enclave: wiped */
  e->cur = NULL;
  batch_free(e->whole);
  e->whole = NULL;
  e->finished = 0;
  e->err = e->err_status = 0;
  e->err_code = e->err_detail = NULL;
  e->encrypted = e->passed = 0;
  return body_setup(e, cfg);
}

int evs__encrypt_body_feed(evs__encrypt_body *e, const uint8_t *p, size_t n) {
  if (e->err) return e->err;
  int r = e->rw      ? e->cfg.ops->feed(e->rw, (const char *)p, n)
          : e->whole ? put_bytes(e->whole, p, n)
                     : relay_spool_write(&e->spool, p, n);
  if (r < 0) {
    evs__encrypt_body_fail(e, r);
    return e->err;
  }
  return e->err;
}

int evs__encrypt_body_finish(evs__encrypt_body *e) {
  if (!e->err && e->rw) {
    int r = e->cfg.ops->finish(e->rw);
    if (r < 0) evs__encrypt_body_fail(e, r);
  }
  if (!e->err && e->cfg.ev_found && e->cfg.ev_found(e->cfg.arg) > e->passed)
    evs__encrypt_body_fail(e, EVS__RW_E_EVDATA);
  if (!e->err) flush(e);
  if (!e->err && e->whole) {
    ebatch *b = e->whole;
    e->whole = NULL;
    if (b->len >= 6 && memcmp(b->payload, "%EVENC", 6) == 0) { /* never encrypted twice */
      if (relay_spool_fill(&e->spool, e->whole_hole, b->payload, b->len) < 0)
        fail(e, -ENOMEM, 500, "internal-server-error", "Out of memory");
      else
        e->passed++;
      batch_free(b);
    } else if (!(b->holes = calloc(1, sizeof *b->holes))) {
      batch_free(b);
      fail(e, -ENOMEM, 500, "internal-server-error", "Out of memory");
    } else {
      b->holes_cap = 1;
      b->holes[0] = (ebval){e->whole_hole, 0, b->len, EVS_CRYPTO_STRING_EXACT};
      b->n = 1;
      batch_send(e, b);
    }
  }
  e->finished = 1;
  if (e->err) return e->err;
  return e->inflight > 0 ? EVS__EBODY_PENDING : 0;
}

int evs__encrypt_body_error(const evs__encrypt_body *e, int *ret_status, const char **ret_code,
                            const char **ret_detail) {
  if (!e->err) return 0;
  if (ret_status) *ret_status = e->err_status;
  if (ret_code) *ret_code = e->err_code;
  if (ret_detail) *ret_detail = e->err_detail;
  return e->err;
}

int evs__encrypt_body_busy(const evs__encrypt_body *e) { return e->inflight >= MAX_INFLIGHT; }

int evs__encrypt_body_idle(const evs__encrypt_body *e) { return !e || e->inflight == 0; }

relay_spool *evs__encrypt_body_spool(evs__encrypt_body *e) { return &e->spool; }

uint64_t evs__encrypt_body_encrypted(const evs__encrypt_body *e) { return e->encrypted; }

uint64_t evs__encrypt_body_passed(const evs__encrypt_body *e) { return e->passed; }

void evs__encrypt_body_free(evs__encrypt_body *e) {
  if (!e) return;
  if (e->inflight > 0) {
    e->gone = 1;
    return;
  }
  body_release(e);
}
