/*
 * relay_decrypt.c: response decryption for the Inbound Relay (on by default; relay-config.json
 * `responseDecryption: false` turns it off). The destination's response streams through
 * relay-common's decrypt_body.c (the scanner, decrypt_scan.c, chosen by its Content-Type, the
 * spool and the enclave batches; the Outbound Relay decrypts its requests with the same code).
 * Bytes before the first Evervault value go to the client at once; from the first value on, output is spooled with a hole per value while
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
#include "decrypt_body.h"
#include "relay_priv.h"
#include "request_guard.h"
#include "spool.h"

typedef struct relay_dec {
  relay_txn *t;
  evs__cdecode *cdec;        /* the destination's Content-Encoding undone, or NULL */
  evs__decrypt_body *body;   /* scanner, spool and enclave batches (relay-common) */
  int held;
  int ended;
} relay_dec;

static void dec_free(relay_dec *d) {
  if (!d) return;
  evs__cdecode_free(d->cdec);
  evs__decrypt_body_free(d->body); /* calls in flight only release memory when they return */
  free(d);
}

/* Bytes before the first value go to the client at once. */
static int emit_direct(void *arg, const uint8_t *p, size_t n) {
  relay_dec *d = arg;
  return d->t->st->host->filter_emit(d->t->req, p, n);
}

/* Once every value is back: the spool to the client, then the end of the response. */
static int emit_to_client(void *arg, const uint8_t *p, size_t n) {
  relay_txn *t = arg;
  return t->st->host->filter_emit(t->req, p, n);
}

/* decrypt_body's done: runs only while the transaction holds d (freeing d cancels it). */
static void on_values_back(void *arg, int status) {
  relay_dec *d = arg;
  relay_txn *t = d->t;
  if (!d->held || d->ended || !t->req) return;
  const evs_host *h = t->st->host;
  d->ended = 1;
  t->decrypted = (size_t)evs__decrypt_body_decrypted(d->body);
  if (!status) status = relay_spool_replay(evs__decrypt_body_spool(d->body), emit_to_client, t);
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
  evs__decrypt_body_cfg c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  c.host = h;
  c.plugin = t->st->plugin;
  c.app_id = relay_app_id(t->st, t->relay);
  c.spool_dir = t->st->spool_dir;
  c.max_file = (size_t)t->st->max_body;
  c.emit = emit_direct;
  c.done = on_values_back;
  c.arg = d;
  if (evs__decrypt_body_new(&c, ctz[0] ? ctz : NULL, &d->body) < 0) {
    free(d);
    return NULL;
  }
  t->dec = d;
  return d;
}

/* Decoded bytes go on to the scanner. */
static int cdec_emit(void *ud, const char *buf, size_t len) {
  relay_dec *d = ud;
  int r = evs__decrypt_body_feed(d->body, (const uint8_t *)buf, len);
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
                    : evs__decrypt_body_feed(d->body, data, len);
    if (r < 0 && d->cdec) return decode_failed(d, req, r);
    return r < 0 ? r : 0;
  }
  int r = d->cdec ? evs__cdecode_finish(d->cdec) : 0;
  if (r < 0) return decode_failed(d, req, r);
  r = evs__decrypt_body_finish(d->body);
  if (r < 0) return r;
  if (r == EVS__DBODY_PENDING) {
    d->held = 1;
    return EVS_FILTER_HOLD;
  }
  /* Everything came back synchronously (or nothing was found): finish from here. */
  t->decrypted = (size_t)evs__decrypt_body_decrypted(d->body);
  relay_spool *sp = evs__decrypt_body_spool(d->body);
  if (sp->nholes == 0) return 0;
  r = relay_spool_replay(sp, emit_to_client, t);
  return r < 0 ? -1 : 0;
}

int relay_decrypts_responses(const relay_txn *t) {
  return t->relay->response_decryption && relay_app_id(t->st, t->relay) != NULL;
}

evs_body_filter_fn relay_response_filter(relay_txn *t) {
  if (!relay_decrypts_responses(t)) return NULL;
  evs__relay_narrow_accept_encoding(t->st->host, t->req);
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
