/*
 * relay_priv.h: the relay-inbound plugin's private types, shared by relay_inbound.c (plugin,
 * configuration, routing, transaction log, alerts events) and relay_encrypt.c (the request
 * pipeline that encrypts fields before anything reaches the destination). relay_int.h is the
 * narrower interface the admin endpoints use.
 */
#ifndef EVS_RELAY_PRIV_H
#define EVS_RELAY_PRIV_H

#include <stddef.h>
#include <stdint.h>

#include "evserver/evs_plugin.h"
#include "ev_guard.h"
#include "jsonpath.h"
#include "relay_config.h"
#include "relay_int.h"

/* Selection compiled from one fieldsToEncrypt entry: fields starting with '$' are JSONPath for
 * JSON and XML bodies; other fields are names: form fields by that name, and for JSON and XML
 * the dotted path "$.<name>". */
typedef struct relay_route_sel {
  evs__jsonpath *paths;   /* NULL when the route cannot select JSON/XML fields */
  const char **names;     /* form field names (borrowed from the config) */
  size_t nnames;
} relay_route_sel;

/* A loaded configuration with its compiled selections, shared by the requests that started
 * under it: replaced as a whole, freed when the last of them ends. */
typedef struct relay_cfg {
  evs__relay_config *config;
  relay_route_sel **sel; /* sel[relay][route] */
  size_t *dns_next;      /* dns_next[relay]: the dnsTargets turn of the next request */
  int refs;
} relay_cfg;

struct relay_state {
  const evs_host *host;
  evs_plugin *plugin;
  relay_cfg *cfg;
  char *config_path;
  const char *base_domain;
  const char *app_id;          /* default app for relays without appId */
  const char *spool_dir;
  const char *team_uuid;
  const char *activity_base;   /* for alerts' activityLink */
  char *override_scheme, *override_host; /* destination_override (relay dev) */
  uint16_t override_port;
  uint64_t max_body;
  int record_structures;
  int transaction_log;
  evs_timer *watch;
  uint64_t watch_mtime_ns, watch_size, watch_ino;
  /* config_source = store: the generation applied (or written) last, the one being fetched. */
  int shared;
  evs_timer *poll;
  int polling;
  int store_down;  /* the last poll failed (logged once per outage) */
  char store_gen[RELAY_GEN_MAX];
  char polled_gen[RELAY_GEN_MAX];
  /* Requests sampled lately, per relay, method and path (hash, when): at most one a second
   * each has its body's structure read. */
  struct { uint64_t hash; int64_t sampled_ms; } sampled[256];
  /* Structures stored lately (hash, when): a shape is written at most once a minute, so the
   * store is not written on every request. Overwritten slots only cost an extra write. */
  struct { uint64_t hash; int64_t stored_ms; } structures_seen[512];
  /* WebSockets (relay_ws.c): the open ones, and the websocket_* settings. */
  struct relay_ws *ws_list;
  int ws_enabled;
  uint64_t ws_max_message;
  uint64_t ws_idle_timeout_ms, ws_close_timeout_ms, ws_handshake_timeout_ms;
  int64_t ws_max_connections;
};

/* What one request that matched fieldsToEncrypt needs. */
typedef struct relay_match {
  evs__jsonpath *paths;  /* owned when owns_paths, else borrowed from the route */
  int owns_paths;
  const char **names;    /* owned array of borrowed names */
  size_t nnames;
  const char *const *fields; /* for the transaction log: the route's fields */
  size_t nfields;
} relay_match;

/* Per-request record: the transaction log and the pipeline both hang off it. */
typedef struct relay_txn {
  relay_state *st;
  relay_cfg *cfg;        /* a reference, released at the end */
  const evs__relay *relay;
  evs_request *req;      /* NULL once the request ended */
  int64_t started_ms;
  uint64_t started_ns;
  const char *route_fields_json; /* unused */
  size_t encrypted, decrypted;
  const char *content_type_kind;
  struct relay_enc *enc; /* the encryption pipeline, if any */
  struct relay_dec *dec; /* the response decryption, if any */
  int dec_pending;       /* enclave calls of the response decryption in flight */
  relay_match match;
  int has_match;
  struct relay_ws *ws;   /* a WebSocket (relay_ws.c) while it runs */
  uint64_t ws_in, ws_out; /* its messages, client to destination and back, for the log */
  int ws_close;           /* the close code the relay started with, or 0 */
  int recorded;           /* its transaction record is queued (END hook, or LOG) */
  int unbound;            /* the record must not hold the response (the store is away) */
} relay_txn;

void relay_cfg_unref(relay_cfg *c);
void relay_match_clear(relay_match *m);
/* The upstream of the transaction's relay (destination_override applied; for dnsTargets relays
 * the next target in turn). Call once per request: each call takes a turn. */
void relay_upstream(relay_txn *t, evs_upstream *up);
const char *relay_app_id(relay_state *st, const evs__relay *r);
int64_t relay_now_ms(void);
/* 1 if this request's body should have its structure sampled: structures are on, and no
 * request of this relay, method and path was sampled in the last second. */
int relay_sample_due(relay_state *st, const char *domain, const char *method, const char *path);

/* relay_encrypt.c: reads the body, encrypts the selected fields and proxies the result.
 * Always answers the request (or the request went away). */
void relay_encrypt_start(relay_txn *t, const char *content_type, size_t ct_len);
void relay_encrypt_free(struct relay_enc *e);
int relay_encrypt_idle(const struct relay_enc *e); /* no enclave call in flight */
/* Proxies the request: encrypting when a fieldsToEncrypt entry matches, else unchanged. */
void relay_dispatch(relay_txn *t);
/* Ends the transaction record once the request ended and no enclave call is pending. */
void relay_txn_release(relay_txn *t);
/* relay_encrypt.c: mTLS relays: checks the api-key header (relay:inbound-mtls), then
 * relay_dispatch, else answers proxy-auth-failed. */
void relay_encrypt_check_key_then(relay_txn *t);
/* relay_decrypt.c: 1 when this relay decrypts responses (responseDecryption and an app): the
 * one definition, which also decides that its requests may carry no encrypted data at all. */
int relay_decrypts_responses(const relay_txn *t);
/* relay_decrypt.c: the response filter when the relay decrypts responses, else NULL. Call it
 * once, just before proxy: when it returns a filter it has also narrowed the request's
 * Accept-Encoding to the codings the relay decodes. */
evs_body_filter_fn relay_response_filter(relay_txn *t);
/* relay_decrypt.c: evs_upstream.response_head (arg: the relay_txn) for relays that decrypt
 * responses: prepares decoding of gzip/deflate/br (drops Content-Encoding), refuses other
 * codings with 502 unsupported-content-type-in-response. */
int relay_response_head(void *arg, evs_request *req, int status);
void relay_decrypt_free(struct relay_dec *d);
/* relay_ws.c: WebSockets. is_upgrade: the request asks for one. start: answers the request
 * (a refusal, or 101 once the destination accepted) and relays the WebSocket. request_gone:
 * the request ended before the WebSocket opened. tick: every second (deadlines, idle). drain:
 * close 1001 to every open WebSocket (reload, stop). stop_all: the plugin unloads. */
int relay_ws_is_upgrade(const evs_host *h, evs_request *req);
void relay_ws_start(relay_txn *t);
void relay_ws_request_gone(struct relay_ws *ws);
void relay_ws_tick(relay_state *st);
void relay_ws_drain(relay_state *st);
void relay_ws_stop_all(relay_state *st);
#endif
