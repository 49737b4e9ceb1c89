/*
 * relay_decrypt.c: response decryption for the Inbound Relay (on by default; relay-config.json
 * `responseDecryption: false` turns it off). The destination's response streams through the
 * scanner (decrypt_scan.c) chosen by its Content-Type. Bytes before the first Evervault value go
 * to the client at once; from the first value on, output is spooled with a hole per value while
 * the values go to the enclave in batches. At the end of the body the response is held
 * (EVS_FILTER_HOLD) until every value is back, then the spool is sent and the response ended.
 * Values the app's keys do not open are left as they were. If the enclave fails, the response
 * is aborted: the client never gets a half-decrypted body.
 *
 * Compressed responses (content_decode.c): the request's Accept-Encoding is narrowed to the
 * codings the relay decodes (gzip, deflate, br, identity). When the destination's head arrives
 * (evs_upstream.response_head, ABI 1.4), a gzip, deflate or br body (stacked codings too) is
 * decoded before the scanner and sent as identity: Content-Encoding is dropped and the host
 * sends it chunked. Any other coding is refused before the head reaches the client, with 502
 * `unsupported-content-type-in-response`, so no ciphertext passes in a body the relay could not
 * read. A body that decodes past max_body, or is corrupt, aborts the response.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "content_decode.h"
#include "decrypt_scan.h"
#include "form_rewrite.h"
#include "relay_priv.h"
#include "spool.h"

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
  struct relay_dec *d;
  uint8_t *payload;
  size_t len, cap;
  dvalue *v;
  size_t n, vcap;
  int file;
} dbatch;

typedef struct relay_dec {
  relay_txn *t;
  evs__cdecode *cdec;  /* the destination's Content-Encoding undone, or NULL */
  evs__decrypt_scan *scan;
  relay_spool spool;
  dbatch *cur;
  int err;
  int held;
  int ended;
} relay_dec;

static void dbatch_free(dbatch *b) {
  if (!b) return;
  for (size_t i = 0; i < b->n; i++) free(b->v[i].orig);
  free(b->v);
  free(b->payload);
  free(b);
}

static void dec_free(relay_dec *d) {
  if (!d) return;
  evs__cdecode_free(d->cdec);
  evs__decrypt_scan_free(d->scan);
  relay_spool_done(&d->spool);
  dbatch_free(d->cur);
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

static dbatch *dbatch_new(relay_dec *d, int file) {
  dbatch *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->d = d;
  b->file = file;
  return b;
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

static void finish_held(relay_dec *d);

/* The results of a batch: per value (res, n) from decrypt_values, or the file's plaintext
 * (file, file_len) from decrypt_file. */
static void dbatch_done(dbatch *b, int status, const evs_crypto_result *res, size_t n,
                        const uint8_t *file, size_t file_len) {
  relay_dec *d = b->d;
  relay_txn *t = d->t;
  t->dec_pending--;
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
      t->decrypted++;
      relay_spool_fill(&d->spool, v->hole, out, outl);
      explicit_bzero(out, outl);
      free(out);
    } else if (status < 0 && status != EVS_CRYPTO_E_DECRYPT && status != EVS_CRYPTO_E_INVALID) {
      d->err = status; /* the enclave failed: abort rather than send a partial body */
    } else {
      relay_spool_fill(&d->spool, v->hole, v->orig, v->orig_len);
    }
  }
  dbatch_free(b);
  if (!t->req) {
    relay_txn_release(t);
    return;
  }
  finish_held(d);
}

static void on_decrypted(void *arg, int status, const evs_crypto_result *res, size_t n) {
  dbatch_done(arg, status, res, n, NULL, 0);
}

static void on_file_decrypted(void *arg, int status, const uint8_t *data, size_t len) {
  dbatch_done(arg, status, NULL, 0, data, len);
}

static int send_batch(relay_dec *d, dbatch *b) {
  relay_state *st = d->t->st;
  const char *app = relay_app_id(st, d->t->relay);
  int r;
  d->t->dec_pending++;
  if (b->file) {
    evs_file_request fr = {sizeof fr, app, NULL, b->payload, b->len};
    r = st->host->decrypt_file(st->plugin, &fr, on_file_decrypted, b);
  } else {
    evs_crypto_value *v = calloc(b->n ? b->n : 1, sizeof *v);
    if (!v) {
      r = -ENOMEM;
    } else {
      for (size_t i = 0; i < b->n; i++)
        v[i] = (evs_crypto_value){sizeof v[i], EVS_CRYPTO_STRING,
                                  b->payload ? b->payload + b->v[i].off : NULL, b->v[i].len};
      evs_decrypt_request dr = {sizeof dr, app, v, b->n};
      r = st->host->decrypt_values(st->plugin, &dr, on_decrypted, b);
      free(v);
    }
  }
  if (r < 0) {
    d->t->dec_pending--;
    dbatch_free(b);
    d->err = r;
  }
  return r;
}

static int scan_emit(void *ud, const char *buf, size_t len) {
  relay_dec *d = ud;
  if (d->spool.nholes == 0) return d->t->st->host->filter_emit(d->t->req, (const uint8_t *)buf, len);
  return relay_spool_write(&d->spool, buf, len);
}

static int scan_transform(void *ud, int kind, const char *value, size_t len,
                          const char **ret_buf, size_t *ret_len) {
  relay_dec *d = ud;
  (void)ret_buf;
  (void)ret_len;
  int file = kind == EVS__DSCAN_FILE;
  dbatch *b = file ? dbatch_new(d, 1) : d->cur ? d->cur : (d->cur = dbatch_new(d, 0));
  if (!b) return -ENOMEM;
  if (b->n == b->vcap) {
    size_t nc = b->vcap ? b->vcap * 2 : 8;
    dvalue *nv = realloc(b->v, nc * sizeof *nv);
    if (!nv) return -ENOMEM;
    b->v = nv;
    b->vcap = nc;
  }
  dvalue *v = &b->v[b->n];
  memset(v, 0, sizeof *v);
  v->kind = kind;
  /* What stood there, to restore a value that does not decrypt (JSON: with its quotes). */
  int q = kind == EVS__DSCAN_STRING_JSON;
  if (!(v->orig = malloc(len + 2))) return -ENOMEM;
  if (q) v->orig[0] = '"';
  memcpy(v->orig + q, value, len);
  if (q) v->orig[len + 1] = '"';
  v->orig_len = len + 2 * (size_t)q;
  if (kind == EVS__DSCAN_FORM) { /* restore the form's spelling, percent-encoded */
    size_t el = evs__form_urlencode(value, len, NULL, 0);
    char *enc = malloc(el ? el : 1);
    if (!enc) return -ENOMEM;
    evs__form_urlencode(value, len, enc, el);
    free(v->orig);
    v->orig = enc;
    v->orig_len = el;
  }
  v->off = b->len;
  v->len = len;
  int r = relay_spool_hole(&d->spool, &v->hole);
  if (r < 0 || (r = put(b, value, len)) < 0) {
    free(v->orig);
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

/* Once every value is back: the spool to the client, then the end of the response. */
static int emit_to_client(void *arg, const uint8_t *p, size_t n) {
  relay_txn *t = arg;
  return t->st->host->filter_emit(t->req, p, n);
}

static void finish_held(relay_dec *d) {
  relay_txn *t = d->t;
  if (!d->held || t->dec_pending > 0 || d->ended) return;
  const evs_host *h = t->st->host;
  d->ended = 1;
  int status = d->err;
  if (!status) status = relay_spool_replay(&d->spool, emit_to_client, t);
  if (status < 0) h->counter_add(t->st->plugin, "decrypt_errors", 1);
  h->filter_end(t->req, status < 0 ? -1 : 0);
}

/* The response's decryption state, made once its head has arrived. */
static relay_dec *dec_get(relay_txn *t, evs_request *req) {
  const evs_host *h = t->st->host;
  if (t->dec) return t->dec;
  evs_header ct;
  char ctz[512] = "";
  if (h->response_header(req, "content-type", &ct) == 0 && ct.value_len < sizeof ctz) {
    memcpy(ctz, ct.value, ct.value_len);
    ctz[ct.value_len] = 0;
  }
  relay_dec *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->t = t;
  relay_spool_init(&d->spool, t->st->spool_dir, SPOOL_MEM_MAX);
  struct evs__decrypt_scan_opts o = {sizeof o, 0, (size_t)t->st->max_body};
  if (evs__decrypt_scan_new(ctz[0] ? ctz : NULL, &o, scan_emit, scan_transform, d, &d->scan) < 0) {
    free(d);
    return NULL;
  }
  t->dec = d;
  return d;
}

/* Decoded bytes go on to the scanner. */
static int cdec_emit(void *ud, const char *buf, size_t len) {
  relay_dec *d = ud;
  int r = evs__decrypt_scan_feed(d->scan, buf, len);
  return r < 0 ? r : 0;
}

/* Says once, in the log and a counter, why a compressed response was cut off. */
static int decode_failed(relay_dec *d, evs_request *req, int r) {
  relay_state *st = d->t->st;
  const char *why = r == EVS__CDEC_E_TOOBIG ? "decodes to more than max_body"
                    : r == EVS__CDEC_E_CORRUPT ? "is corrupt or truncated"
                    : r == EVS__CDEC_E_NOMEM ? "needs more memory than allowed to decode"
                    : NULL;
  if (why) {
    st->host->log(st->plugin, req, EVS_LOG_WARN,
                  "the destination's compressed response %s: response aborted", why);
    st->host->counter_add(st->plugin, "decode_errors", 1);
  }
  return r;
}

static int response_filter(void *state, evs_request *req, void *arg, const uint8_t *data,
                           size_t len) {
  (void)state;
  relay_txn *t = arg;
  relay_dec *d = dec_get(t, req);
  if (!d) return -ENOMEM;
  if (data) {
    int r = d->cdec ? evs__cdecode_feed(d->cdec, data, len)
                    : evs__decrypt_scan_feed(d->scan, (const char *)data, len);
    if (r < 0 && d->cdec) return decode_failed(d, req, r);
    return r < 0 ? r : 0;
  }
  int r = d->cdec ? evs__cdecode_finish(d->cdec) : 0;
  if (r < 0) return decode_failed(d, req, r);
  r = evs__decrypt_scan_finish(d->scan);
  if (r < 0) return r;
  if (d->cur) {
    dbatch *b = d->cur;
    d->cur = NULL;
    if (send_batch(d, b) < 0) return d->err;
  }
  if (d->spool.nholes == 0) return 0;
  d->held = 1;
  if (t->dec_pending == 0) {
    /* Everything came back synchronously: finish on the host's terms, from here. */
    d->held = 0;
    r = relay_spool_replay(&d->spool, emit_to_client, t);
    return r < 0 || d->err ? -1 : 0;
  }
  return EVS_FILTER_HOLD;
}

int relay_decrypts_responses(const relay_txn *t) {
  return t->relay->response_decryption && relay_app_id(t->st, t->relay) != NULL;
}

/* The client's Accept-Encoding (all its fields), narrowed to what content_decode.c decodes:
 * the destination then has no reason to send a coding the relay could not read. */
static void narrow_accept_encoding(relay_txn *t) {
  const evs_host *h = t->st->host;
  char *all = NULL;
  size_t len = 0;
  int any = 0;
  evs_header hd;
  for (size_t i = 0; h->request_header_at(t->req, i, &hd) == 0; i++) {
    if (hd.name_len != 15 || strncasecmp(hd.name, "accept-encoding", 15) != 0) continue;
    char *n = realloc(all, len + hd.value_len + 2);
    if (!n) break;
    all = n;
    if (any) all[len++] = ',';
    memcpy(all + len, hd.value, hd.value_len);
    len += hd.value_len;
    any = 1;
  }
  char *out = malloc(2 * len + 9);
  if (out) {
    evs__cdecode_accept_encoding(any ? all : NULL, len, out);
    h->request_set_header(t->req, "Accept-Encoding", out);
  }
  free(out);
  free(all);
}

evs_body_filter_fn relay_response_filter(relay_txn *t) {
  if (!relay_decrypts_responses(t)) return NULL;
  narrow_accept_encoding(t);
  return response_filter;
}

int relay_response_head(void *arg, evs_request *req, int status) {
  relay_txn *t = arg;
  if (!relay_decrypts_responses(t)) return 0;
  const evs_host *h = t->st->host;
  evs_header ce;
  if (h->response_header(req, "content-encoding", &ce) < 0) return 0;
  int codings[EVS__CDEC_MAX_CODINGS];
  int n = evs__cdecode_parse(ce.value, ce.value_len, codings);
  /* More than one Content-Encoding field: response_header saw only the first. */
  int fields = n >= 0 ? h->response_remove_header(req, "content-encoding") : 0;
  const char *detail = NULL;
  if (n < 0 || fields > 1)
    detail = "The destination's response has a Content-Encoding the relay cannot decode, so its "
             "encrypted values could not be decrypted";
  else if (n > 0 && status == 206)
    detail = "The destination sent part of a compressed response (206), which the relay cannot "
             "decode to decrypt";
  if (detail) {
    h->counter_add(t->st->plugin, "unsupported_encoding", 1);
    h->respond_error(req, 502, "unsupported-content-type-in-response", detail);
    return 0;
  }
  if (n == 0) return 0;
  /* The client gets identity. A response to HEAD carries the destination's Content-Length,
   * which was the compressed one. */
  if (strcmp(h->request_info(req)->method, "HEAD") == 0)
    h->response_remove_header(req, "content-length");
  relay_dec *d = dec_get(t, req);
  if (!d) return -ENOMEM;
  return evs__cdecode_new(codings, (size_t)n, t->st->max_body, 0, cdec_emit, d, &d->cdec);
}

void relay_decrypt_free(struct relay_dec *d) { dec_free(d); }
