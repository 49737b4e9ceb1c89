/*
 * decrypt_body.c: Evervault values in a body decrypted in batches through the host's typed
 * crypto calls (decrypt_body.h). Moved here from the Inbound Relay's response filter so that the
 * Outbound Relay's request path uses the same code.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "decrypt_body.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "decrypt_scan.h"
#include "form_rewrite.h"

#define SPOOL_MEM_MAX (1u << 20)
#define BATCH_FIELDS 512

typedef struct dvalue {
  size_t hole;
  int kind;
  char *orig; /* the value as it stood, restored when it does not decrypt */
  size_t orig_len;
  size_t off, len; /* the ev: string (or the file) in the batch's payload */
} dvalue;

typedef struct dbatch {
  struct evs__decrypt_body *d;
  uint8_t *payload;
  size_t len, cap;
  dvalue *v;
  size_t n, vcap;
  int file;
} dbatch;

struct evs__decrypt_body {
  evs__decrypt_body_cfg cfg;
  char *app_id;
  evs__decrypt_scan *scan;
  relay_spool spool;
  dbatch *cur;
  size_t pending; /* enclave calls in flight */
  int err;
  int finished;   /* finish returned PENDING: done is owed */
  int gone;       /* freed by the caller while calls were in flight */
  uint64_t decrypted;
};

static void dbatch_free(dbatch *b) {
  if (!b) return;
  for (size_t i = 0; i < b->n; i++) free(b->v[i].orig);
  free(b->v);
  if (b->payload) explicit_bzero(b->payload, b->len);
  free(b->payload);
  free(b);
}

static void body_release(evs__decrypt_body *d) {
  evs__decrypt_scan_free(d->scan);
  relay_spool_done(&d->spool);
  dbatch_free(d->cur);
  free(d->app_id);
  free(d);
}

static int put(dbatch *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 1024;
    while (nc < b->len + n) nc *= 2;
    uint8_t *np = realloc(b->payload, nc);
    if (!np) return -ENOMEM;
    b->payload = np;
    b->cap = nc;
  }
  if (n) memcpy(b->payload + b->len, p, n);
  b->len += n;
  return 0;
}

/* The plaintext as the surrounding format writes it, into a new buffer. */
static char *render(int kind, int type, const uint8_t *p, size_t n, size_t *ret_len) {
  size_t cap = n * 6 + 3;
  if (kind == EVS__DSCAN_FORM) cap = evs__form_urlencode((const char *)p, n, NULL, 0) + 1;
  char *out = malloc(cap);
  if (!out) return NULL;
  size_t o = 0;
  if (kind == EVS__DSCAN_FORM) {
    o = evs__form_urlencode((const char *)p, n, out, cap);
  } else if (kind == EVS__DSCAN_STRING_JSON && type == 0) {
    static const char hx[] = "0123456789abcdef";
    out[o++] = '"';
    for (size_t i = 0; i < n; i++) {
      uint8_t c = p[i];
      if (c == '"' || c == '\\') {
        out[o++] = '\\';
        out[o++] = (char)c;
      } else if (c < 0x20) {
        memcpy(out + o, "\\u00", 4);
        out[o + 4] = hx[c >> 4];
        out[o + 5] = hx[c & 15];
        o += 6;
      } else {
        out[o++] = (char)c;
      }
    }
    out[o++] = '"';
  } else if (kind == EVS__DSCAN_XML) {
    for (size_t i = 0; i < n; i++) {
      const char *e = p[i] == '&' ? "&amp;" : p[i] == '<' ? "&lt;" : p[i] == '>' ? "&gt;"
                    : p[i] == '"' ? "&quot;" : p[i] == '\'' ? "&apos;" : NULL;
      if (e) {
        memcpy(out + o, e, strlen(e));
        o += strlen(e);
      } else {
        out[o++] = (char)p[i];
      }
    }
  } else { /* numbers and booleans in JSON, text, files: as they are */
    memcpy(out, p, n);
    o = n;
  }
  *ret_len = o;
  return out;
}

/* The results of a batch: per value (res, n) from decrypt_values, or the file's plaintext
 * (file, file_len) from decrypt_file. */
static void dbatch_done(dbatch *b, int status, const evs_crypto_result *res, size_t n,
                        const uint8_t *file, size_t file_len) {
  evs__decrypt_body *d = b->d;
  d->pending--;
  if (d->gone) {
    dbatch_free(b);
    if (d->pending == 0) body_release(d);
    return;
  }
  for (size_t i = 0; i < b->n; i++) {
    dvalue *v = &b->v[i];
    char *out = NULL;
    size_t outl = 0;
    if (status == 0 && b->file) {
      out = render(EVS__DSCAN_FILE, 0, file, file_len, &outl);
    } else if (status == 0 && i < n && res[i].status == EVS_CRYPTO_OK) {
      out = render(v->kind, res[i].type, res[i].data, res[i].len, &outl);
    }
    if (out) {
      d->decrypted++;
      relay_spool_fill(&d->spool, v->hole, out, outl);
      explicit_bzero(out, outl);
      free(out);
    } else if (status < 0 && status != EVS_CRYPTO_E_DECRYPT && status != EVS_CRYPTO_E_INVALID) {
      if (!d->err) d->err = status; /* the enclave failed: no partial body */
    } else {
      relay_spool_fill(&d->spool, v->hole, v->orig, v->orig_len);
    }
  }
  dbatch_free(b);
  if (d->finished && d->pending == 0) {
    d->finished = 0;
    d->cfg.done(d->cfg.arg, d->err);
  }
}

static void on_decrypted(void *arg, int status, const evs_crypto_result *res, size_t n) {
  dbatch_done(arg, status, res, n, NULL, 0);
}

static void on_file_decrypted(void *arg, int status, const uint8_t *data, size_t len) {
  dbatch_done(arg, status, NULL, 0, data, len);
}

static int send_batch(evs__decrypt_body *d, dbatch *b) {
  const evs_host *h = d->cfg.host;
  int r;
  d->pending++;
  if (b->file) {
    evs_file_request fr = {sizeof fr, d->app_id, NULL, b->payload, b->len};
    r = h->decrypt_file(d->cfg.plugin, &fr, on_file_decrypted, b);
  } else {
    evs_crypto_value *v = calloc(b->n ? b->n : 1, sizeof *v);
    if (!v) {
      r = -ENOMEM;
    } else {
      for (size_t i = 0; i < b->n; i++)
        v[i] = (evs_crypto_value){sizeof v[i], EVS_CRYPTO_STRING,
                                  b->payload ? b->payload + b->v[i].off : NULL, b->v[i].len};
      evs_decrypt_request dr = {sizeof dr, d->app_id, v, b->n};
      r = h->decrypt_values(d->cfg.plugin, &dr, on_decrypted, b);
      free(v);
    }
  }
  if (r < 0) {
    d->pending--;
    dbatch_free(b);
    if (!d->err) d->err = r;
  }
  return r;
}

static int scan_emit(void *ud, const char *buf, size_t len) {
  evs__decrypt_body *d = ud;
  if (d->spool.nholes == 0 && d->cfg.emit) return d->cfg.emit(d->cfg.arg, (const uint8_t *)buf, len);
  return relay_spool_write(&d->spool, buf, len);
}

static int scan_transform(void *ud, int kind, const char *value, size_t len,
                          const char **ret_buf, size_t *ret_len) {
  evs__decrypt_body *d = ud;
  (void)ret_buf;
  (void)ret_len;
  int file = kind == EVS__DSCAN_FILE;
  dbatch *b = file ? calloc(1, sizeof *b) : d->cur ? d->cur : (d->cur = calloc(1, sizeof *b));
  if (!b) return -ENOMEM;
  b->d = d;
  b->file = file;
  if (b->n == b->vcap) {
    size_t nc = b->vcap ? b->vcap * 2 : 8;
    dvalue *nv = realloc(b->v, nc * sizeof *nv);
    if (!nv) {
      if (file) dbatch_free(b);
      return -ENOMEM;
    }
    b->v = nv;
    b->vcap = nc;
  }
  dvalue *v = &b->v[b->n];
  memset(v, 0, sizeof *v);
  v->kind = kind;
  /* What stood there, to restore a value that does not decrypt (JSON: with its quotes). */
  int q = kind == EVS__DSCAN_STRING_JSON;
  if (kind == EVS__DSCAN_FORM) { /* the form's spelling, percent-encoded */
    size_t el = evs__form_urlencode(value, len, NULL, 0);
    if ((v->orig = malloc(el ? el : 1))) evs__form_urlencode(value, len, v->orig, el);
    v->orig_len = el;
  } else if ((v->orig = malloc(len + 2))) {
    if (q) v->orig[0] = '"';
    memcpy(v->orig + q, value, len);
    if (q) v->orig[len + 1] = '"';
    v->orig_len = len + 2 * (size_t)q;
  }
  int r = v->orig ? 0 : -ENOMEM;
  v->off = b->len;
  v->len = len;
  if (r == 0) r = relay_spool_hole(&d->spool, &v->hole);
  if (r == 0) r = put(b, value, len);
  if (r < 0) {
    free(v->orig);
    if (file) dbatch_free(b);
    return r;
  }
  b->n++;
  if (file) {
    if ((r = send_batch(d, b)) < 0) return r;
  } else if (b->n >= BATCH_FIELDS) {
    d->cur = NULL;
    if ((r = send_batch(d, b)) < 0) return r;
  }
  return EVS__RW_DEFER;
}

int evs__decrypt_body_new(const evs__decrypt_body_cfg *cfg, const char *content_type,
                          evs__decrypt_body **ret) {
  if (!cfg || cfg->size < sizeof *cfg || !cfg->host || !cfg->app_id || !cfg->done) return -EINVAL;
  evs__decrypt_body *d = calloc(1, sizeof *d);
  if (!d) return -ENOMEM;
  d->cfg = *cfg;
  if (!(d->app_id = strdup(cfg->app_id))) {
    free(d);
    return -ENOMEM;
  }
  relay_spool_init(&d->spool, cfg->spool_dir, SPOOL_MEM_MAX);
  struct evs__decrypt_scan_opts o = {sizeof o, 0, cfg->max_file};
  int r = evs__decrypt_scan_new(content_type, &o, scan_emit, scan_transform, d, &d->scan);
  if (r < 0) {
    body_release(d);
    return r;
  }
  *ret = d;
  return 0;
}

int evs__decrypt_body_feed(evs__decrypt_body *d, const uint8_t *p, size_t n) {
  if (d->err) return d->err;
  int r = evs__decrypt_scan_feed(d->scan, (const char *)p, n);
  if (r < 0) return r;
  return d->err;
}

int evs__decrypt_body_finish(evs__decrypt_body *d) {
  if (d->err) return d->err;
  int r = evs__decrypt_scan_finish(d->scan);
  if (r < 0) return r;
  if (d->cur) {
    dbatch *b = d->cur;
    d->cur = NULL;
    if ((r = send_batch(d, b)) < 0) return r;
  }
  if (d->err) return d->err;
  if (d->pending == 0) return 0;
  d->finished = 1;
  return EVS__DBODY_PENDING;
}

relay_spool *evs__decrypt_body_spool(evs__decrypt_body *d) { return &d->spool; }

uint64_t evs__decrypt_body_found(const evs__decrypt_body *d) {
  return evs__decrypt_scan_values_found(d->scan);
}

uint64_t evs__decrypt_body_decrypted(const evs__decrypt_body *d) { return d->decrypted; }

void evs__decrypt_body_free(evs__decrypt_body *d) {
  if (!d) return;
  if (d->pending > 0) {
    d->gone = 1;
    d->finished = 0;
    return;
  }
  body_release(d);
}
