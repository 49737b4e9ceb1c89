/*
 * relay_encrypt.c: the Inbound Relay's request pipeline for requests whose route has fields to
 * encrypt. The body streams in (request_body_read) through the rewriter for its content type;
 * every selected value becomes a hole in the spool and joins a batch for the enclave (one
 * encrypt_values call for many fields). Only when the whole body is valid and every value is back
 * encrypted is the request proxied, with the spool as its body: bad input gets its documented
 * error and nothing reaches the destination.
 *
 * The same path samples request structures (field paths, never values) of pass-through
 * requests, at most one a second, forwarding their bodies unchanged.
 *
 * The rewriter, the spool with holes and the batches are relay-common's encrypt_body.c (the
 * Outbound Relay encrypts its destinations' responses with the same code); this file adds what
 * is the Inbound Relay's own: the body read and its back-pressure, the trust-boundary guard, the
 * structure samples and the proxying.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "relay_priv.h"
#include "encrypt_body.h"
#include "rewriter.h"
#include "spool.h"
#include "structure.h"

#define SAMPLE_MAX (64u << 10)
#define STRUCTURE_TTL_S 86400
#define STRUCTURE_REFRESH_MS 60000 /* lastSeen is as fine as this */

typedef struct relay_enc {
  relay_txn *t;
  /* The body's format by its Content-Type (NULL: one the relay cannot parse). */
  const evs__rewriter_ops *ops;
  /* The rewriter, the spool with holes and the enclave batches (relay-common's encrypt_body.c;
   * without a rewriter, bytes are spooled unchanged). */
  evs__encrypt_body *body;
  int paused;
  int body_done;
  int answered;
  uint64_t body_bytes;
  char *sample;
  size_t sample_len;
  int sampling;
  /* Encrypted data in the body (ev_guard.h): found by the guard in any spelling, and passed
   * unchanged as a selected value (only on relays that do not decrypt responses). More found
   * than passed is encrypted-data-in-field. */
  evs__ev_guard guard;
  int decrypts;     /* the relay decrypts responses: no encrypted data in requests at all */
} relay_enc;

int relay_encrypt_idle(const relay_enc *e) { return !e || evs__encrypt_body_idle(e->body); }

void relay_encrypt_free(relay_enc *e) {
  if (!e) return;
  evs__encrypt_body_free(e->body);
  free(e->sample);
  free(e);
}

static const char *fmt_name(const relay_enc *e) { return e->ops ? e->ops->name : "other"; }

static void maybe_proceed(relay_enc *e);

/* encrypt_body's progress: an enclave call came back. */
static void on_progress(void *arg) {
  relay_enc *e = arg;
  relay_txn *t = e->t;
  t->encrypted = (size_t)evs__encrypt_body_encrypted(e->body);
  if (!t->req) {
    relay_txn_release(t);
    return;
  }
  if (e->paused && !evs__encrypt_body_busy(e->body)) {
    e->paused = 0;
    t->st->host->request_body_resume(t->req);
  }
  maybe_proceed(e);
}

static uint64_t ev_found(void *arg) {
  relay_enc *e = arg;
  return evs__ev_guard_finish(&e->guard);
}

/* ---- structures -------------------------------------------------------------------------- */

/* A structure sample is best effort: a failed put waits for the next refresh of its shape. */
static void structure_stored(void *arg, int status, const uint8_t *v, size_t len) {
  (void)arg;
  (void)status;
  (void)v;
  (void)len;
}

static void record_structure(relay_enc *e) {
  relay_txn *t = e->t;
  relay_state *st = t->st;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(t->req);
  json_t *fields = relay_structure_fields(fmt_name(e), e->sample, e->sample_len);
  if (!fields) return;
  char *flat = json_dumps(fields, JSON_COMPACT);
  uint64_t hsh = 1469598103934665603ull;
  const char *parts[] = {info->method, info->path, fmt_name(e), flat ? flat : ""};
  for (size_t i = 0; i < 4; i++) {
    for (const char *p = parts[i]; *p; p++) hsh = (hsh ^ (unsigned char)*p) * 1099511628211ull;
    hsh = (hsh ^ 0xff) * 1099511628211ull;
  }
  free(flat);
  int64_t now = relay_now_ms();
  size_t slot = hsh % (sizeof st->structures_seen / sizeof st->structures_seen[0]);
  if (st->structures_seen[slot].hash == hsh &&
      now - st->structures_seen[slot].stored_ms < STRUCTURE_REFRESH_MS) {
    json_decref(fields);
    return;
  }
  st->structures_seen[slot].hash = hsh;
  st->structures_seen[slot].stored_ms = now;
  json_t *rec = json_pack("{s:s,s:s,s:s,s:s,s:o,s:I}", "relay", t->relay->domain, "method",
                          info->method, "route", info->path, "contentType", fmt_name(e),
                          "fields", fields, "lastSeen", (json_int_t)now);
  char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
  char key[300];
  snprintf(key, sizeof key, "structure/%s/%016" PRIx64, t->relay->domain, hsh);
  /* With a callback the put runs on the host's store thread: the request never waits for it
   * (without one it would be synchronous, on the loop). */
  if (s)
    h->store_put(st->plugin, key, (const uint8_t *)s, strlen(s), STRUCTURE_TTL_S,
                 structure_stored, NULL);
  free(s);
  json_decref(rec);
}

/* ---- the request ------------------------------------------------------------------------- */

static int body_source(void *arg, uint8_t *buf, size_t cap, size_t *ret_len) {
  relay_enc *e = arg;
  if (!buf) {
    relay_spool_rewind(evs__encrypt_body_spool(e->body));
    return 0;
  }
  return relay_spool_read(evs__encrypt_body_spool(e->body), buf, cap, ret_len);
}

static void maybe_proceed(relay_enc *e) {
  relay_txn *t = e->t;
  if (!e->body_done || !evs__encrypt_body_idle(e->body) || e->answered || !t->req) return;
  relay_state *st = t->st;
  const evs_host *h = st->host;
  e->answered = 1;
  int status;
  const char *code, *detail;
  if (evs__encrypt_body_error(e->body, &status, &code, &detail)) {
    h->counter_add(st->plugin, "encrypt_errors", 1);
    h->respond_error(t->req, status, code, detail);
    return;
  }
  if (e->sampling && e->sample) record_structure(e);
  evs_upstream up;
  relay_upstream(t, &up);
  up.body_source = body_source;
  up.body_source_arg = e;
  up.body_source_len = relay_spool_total(evs__encrypt_body_spool(e->body));
  if (h->proxy(t->req, &up, NULL, relay_response_filter(t), t) < 0)
    h->respond_error(t->req, 500, "internal-server-error", "Relay could not start proxying");
}

static int on_data(void *arg, const uint8_t *data, size_t len) {
  relay_enc *e = arg;
  int err = evs__encrypt_body_error(e->body, NULL, NULL, NULL);
  if (err) return err;
  if (evs__ev_guard_feed(&e->guard, data, len) > 0 && e->decrypts) {
    evs__encrypt_body_fail(e->body, EVS__RW_E_EVDATA);
    return evs__encrypt_body_error(e->body, NULL, NULL, NULL);
  }
  e->body_bytes += len;
  if (e->body_bytes > e->t->st->max_body) {
    evs__encrypt_body_fail(e->body, -E2BIG);
    return -E2BIG;
  }
  if (e->sampling) {
    if (e->sample_len + len > SAMPLE_MAX) {
      e->sampling = 0;
    } else {
      char *ns = realloc(e->sample, e->sample_len + len);
      if (ns) {
        memcpy(ns + e->sample_len, data, len);
        e->sample = ns;
        e->sample_len += len;
      } else {
        e->sampling = 0;
      }
    }
  }
  int r = evs__encrypt_body_feed(e->body, data, len);
  if (r < 0) return r;
  if (evs__encrypt_body_busy(e->body)) {
    e->paused = 1;
    return EVS_BODY_PAUSE;
  }
  return 0;
}

static void on_end(void *arg, int status) {
  relay_enc *e = arg;
  relay_txn *t = e->t;
  if (!t->req) { /* the client went away */
    relay_txn_release(t);
    return;
  }
  if (status < 0 && !evs__encrypt_body_error(e->body, NULL, NULL, NULL)) {
    if (status == -E2BIG) evs__encrypt_body_fail(e->body, status);
    else {
      /* The client went away or broke the body: nothing to answer. */
      e->answered = 1;
      e->body_done = 1;
      return;
    }
  }
  if (!evs__encrypt_body_error(e->body, NULL, NULL, NULL)) evs__encrypt_body_finish(e->body);
  e->body_done = 1;
  maybe_proceed(e);
}

void relay_encrypt_start(relay_txn *t, const char *content_type, size_t ct_len) {
  relay_state *st = t->st;
  const evs_host *h = st->host;
  relay_enc *e = calloc(1, sizeof *e);
  if (!e) {
    h->respond_error(t->req, 500, "internal-server-error", "Out of memory");
    return;
  }
  t->enc = e;
  e->t = t;
  e->ops = evs__rewriter_for_content_type(content_type, ct_len);
  t->content_type_kind = fmt_name(e);
  const char *app_id = relay_app_id(st, t->relay);
  evs__ev_guard_init(&e->guard);
  e->decrypts = relay_decrypts_responses(t);
  const evs_request_info *info = h->request_info(t->req);
  e->sampling = ct_len > 0 && relay_sample_due(st, t->relay->domain, info->method, info->path);
  if (t->has_match && !e->ops) {
    /* Fields are selected here, but the relay cannot parse this body: forwarding it would send
     * them in plaintext. */
    e->answered = 1;
    h->respond_error(t->req, 415, "bad-request",
                     "This route has fields to encrypt; its body must be JSON, XML, "
                     "application/x-www-form-urlencoded or multipart/form-data (by Content-Type)");
    return;
  }
  if (t->has_match && !app_id) {
    e->answered = 1;
    h->respond_error(t->req, 500, "internal-server-error",
                     "The relay has fields to encrypt but no app (set appId in relay-config.json)");
    return;
  }
  evs__rewriter_select sel = {t->match.paths, t->match.names, t->match.nnames, content_type,
                              ct_len, 0};
  evs__encrypt_body_cfg c;
  memset(&c, 0, sizeof c);
  c.size = sizeof c;
  c.host = h;
  c.plugin = st->plugin;
  c.app_id = app_id;
  c.curve = t->relay->curve;
  c.spool_dir = st->spool_dir;
  c.ops = e->ops;
  c.sel = e->ops && (t->has_match || e->ops->parse_unselected) ? &sel : NULL;
  c.refuse_ev = e->decrypts;
  c.files = 1;
  c.progress = on_progress;
  c.ev_found = ev_found;
  c.arg = e;
  int r = evs__encrypt_body_new(&c, &e->body);
  if (r == EVS__RW_E_BOUNDARY) {
    e->answered = 1;
    h->respond_error(t->req, 400, "bad-request", "multipart/form-data without a valid boundary");
    return;
  }
  if (r >= 0) r = h->request_body_read(t->req, on_data, on_end, e);
  if (r < 0) {
    e->answered = 1;
    if (r == -E2BIG)
      h->respond_error(t->req, 413, "payload-too-large",
                       "The request exceeds the 25 MB limit for encryption");
    else
      h->respond_error(t->req, 500, "internal-server-error", "Relay could not read the body");
  }
}

/* ---- mTLS relays: the api-key header ------------------------------------------------------ */

static void on_key_checked(void *arg, int status, const char *app_id) {
  relay_txn *t = arg;
  (void)app_id;
  t->dec_pending--;
  if (!t->req) {
    relay_txn_release(t);
    return;
  }
  if (status != 0) {
    t->st->host->respond_error(t->req, 401, "proxy-auth-failed",
                               "This relay needs an api-key header with the Inbound Relay mTLS "
                               "Proxy permission");
    return;
  }
  relay_dispatch(t);
}

void relay_encrypt_check_key_then(relay_txn *t) {
  const evs_host *h = t->st->host;
  evs_header hd;
  if (h->request_header(t->req, "api-key", &hd) != 0 || hd.value_len == 0 || hd.value_len > 512) {
    h->respond_error(t->req, 401, "proxy-auth-failed",
                     "This relay needs an api-key header with the Inbound Relay mTLS Proxy "
                     "permission");
    return;
  }
  char *key = malloc(hd.value_len + 1);
  if (!key) {
    h->respond_error(t->req, 500, "internal-server-error", "Out of memory");
    return;
  }
  memcpy(key, hd.value, hd.value_len);
  key[hd.value_len] = '\0';
  evs_api_key_request kr = {sizeof kr, key, hd.value_len, "relay:inbound-mtls", 0};
  /* The key authenticates to the relay and could decrypt everything: it never goes further. */
  h->request_remove_header(t->req, "api-key");
  t->dec_pending++;
  int r = h->check_api_key(t->st->plugin, &kr, on_key_checked, t);
  explicit_bzero(key, hd.value_len);
  free(key);
  if (r < 0) {
    t->dec_pending--;
    h->respond_error(t->req, 401, "proxy-auth-failed",
                     "API keys cannot be checked: the enclave plugin is not loaded");
  }
}
