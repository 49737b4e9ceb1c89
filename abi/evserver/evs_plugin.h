/*
 * evs_plugin.h — the evserver plugin ABI. This is the only header a plugin includes.
 *
 * CALL SEQUENCE, from load to unload (all on the worker's loop thread):
 *
 *   1. The host opens the shared object (libltdl) and looks up the data symbol
 *      `evs_plugin_entry` (an evs_plugin_descriptor; use EVS_PLUGIN_DEFINE). Before any plugin code runs it checks
 *      magic, abi_major == host major, abi_minor <= host minor, and size >= the size of the
 *      ABI 1.0 descriptor. A mismatch rejects the plugin with one log line.
 *   2. The host validates the plugin's `[plugin "<name>"]` configuration section against the
 *      descriptor's `config_items` table (data, no plugin code). `evserver -t` then runs
 *      init and fini once in a child process, so the plugin can check its own files.
 *   3. In each worker process: init(host, plugin, &state). Registration (hooks, routes, event
 *      subscriptions, crypto provider) is allowed only during init. Non-zero return: the
 *      plugin is unloaded (fini is not called) and the host logs the error and carries on.
 *   4. Requests flow: hooks run at their phases (enum evs_phase) for every request.
 *   5. On SIGHUP the master validates the new configuration and starts new workers, which run
 *      steps 1–3 with it; old workers stop accepting, finish in-flight requests, then run step 6.
 *      If a new worker's init fails, the new generation is retired instead and the old one
 *      keeps serving.
 *   6. fini(state) once, after the last request the plugin saw has completed. Then the host
 *      closes the shared object.
 *
 * VERSIONING: a plugin built against ABI M.n loads into a host M.m with m >= n. Structs that
 * cross the boundary start with their `size`; the host only appends members to them (and to
 * struct evs_host) within a major version. Opaque handles never change shape.
 *
 * THREADING: every callback runs on the loop thread of the worker process that owns the object;
 * plugins need no locks unless they start threads of their own.
 *
 * ERRORS: functions return 0 (or a positive value) on success and a negative errno-style value
 * (-EINVAL, -ENOMEM, ... or EVS_E*) on failure. If a call that takes a callback fails, the
 * callback never runs; otherwise it runs exactly once, on the loop thread, never before the call
 * returns.
 *
 * CHANGELOG
 *   1.0  first version: descriptor, config items, log, hooks, routes, responses, proxying,
 *        upstream requests, timers, events, store, metrics, crypto calls, takeover.
 *   1.1  request_body_read / request_body_resume (stream a request body into the plugin);
 *        evs_upstream.body_source* (proxy with a body the plugin produces); response filters
 *        may hold the end of a response (EVS_FILTER_HOLD, filter_end) to finish it after an
 *        asynchronous call; response_header (the upstream response's headers, from a
 *        response filter). Used by the Inbound Relay to encrypt fields before anything
 *        reaches the destination and to decrypt responses; response_status (status and error
 *        code, for LOG hooks).
 *   1.2  node messages (node_subscribe, node_broadcast, node_reply): a plugin reaches its own
 *        instances in the node's other worker processes, through the master, and learns how
 *        many acted on it (the enclave plugin's node-wide app unlock); an auxiliary store
 *        (aux_store_open/get/put/delete) in a separately configured location, for data that
 *        must not sit in the same store as the rest (the enclave's second key share).
 *   1.3  kept descriptors (keep_fd, kept_fd): the master holds a descriptor for the worker's
 *        rank, so the worker that replaces it (after a reload or a crash) picks it up; the
 *        enclave plugin keeps a connection to its enclave this way, so the enclave and the
 *        apps unlocked in it outlive the worker.
 *   1.4  evs_upstream.response_head: a proxying plugin sees the destination's response head
 *        before the client gets it, and may drop fields from it (response_remove_header) or
 *        answer instead; the Inbound Relay decodes compressed responses to decrypt them, so it
 *        drops Content-Encoding, and refuses codings it cannot decode.
 *   1.5  evs_upstream.client_key_passphrase_file: the mTLS client key may be encrypted; the
 *        host reads its passphrase from that file when it loads the key, and wipes it after.
 *        (The Inbound Relay's mtls.passphraseFile.)
 *   1.6  typed crypto and auth: encrypt_values, decrypt_values, encrypt_file, decrypt_file,
 *        check_api_key, with named result codes (evs_crypto_status) and value types
 *        (EVS_CRYPTO_STRING, _STRING_EXACT, _NUMBER, _BOOLEAN); a crypto provider registers
 *        a typed table (register_crypto_provider2, evs_crypto_provider). crypto_call and
 *        register_crypto_provider stay as the low-level path (the provider's own wire format).
 *   1.7  streams: stream_serve_http hands a taken-over stream (after stream_start_tls) back to
 *        the host's HTTP engine, so each request inside a CONNECT tunnel is parsed by the same
 *        strict parser, under the same limits, and reaches the plugin as an evs_request
 *        (evs_http_service) that can respond, proxy or filter; request_tunnel gives such a
 *        request's CONNECT authority. stream_connect opens a client stream (TCP, or TLS with
 *        verification) that the stream_* calls read, write and close (for upstreams a plugin
 *        speaks to itself, e.g. WebSocket). The Outbound Relay's CONNECT proxy.
 *   1.7  helper processes (helper_spawn, helper_fd, helper_pid, helper_kill, helper_stop;
 *        evs_helper_spec, evs_helper_event): the host starts a program on a socketpair under a
 *        named seccomp policy from sandbox/, in optional namespaces, with rlimits and cgroup v2
 *        limits, restarts it with backoff, ends it with the master, and keeps it per worker rank
 *        across reloads and worker crashes. The enclave plugin's evserver-enclave runs so.
 *   1.7  routes registered with the host (add_route, evs_route): (listener role, host pattern,
 *        method, path prefix) -> handler; each [listener] names the roles it serves, the host
 *        picks the most specific route and answers the role's documented 404 itself. ROUTE
 *        hooks stay, and run after the routes missed.
 *   1.7  certificates (issue_certificate, ca_certificates; evs_cert_request; the matching
 *        members at the end of evs_crypto_provider): a leaf certificate for given SANs and a
 *        public key the caller holds the private key of, signed by the node's relay CA (whose
 *        key only the provider, the enclave, holds), and the PEM bundle of CAs to trust. The
 *        Outbound Relay's TLS inside a CONNECT tunnel.
 *   1.7  tunnels: stream_start_tls works on a connection that arrived on a TLS listener (TLS
 *        inside TLS: the Outbound Relay's clients speak TLS to evserver, then TLS to the
 *        destination's minted leaf inside the CONNECT tunnel); routes with method "CONNECT"
 *        (path_prefix NULL) match CONNECT requests by the host of their target, and never any
 *        other request; evs_tls_identity.cache_key lets the host keep the context it built from
 *        an identity (a bounded per-worker LRU, [limits] tls_identity_cache) instead of parsing
 *        the PEM on every handshake. The tunnels' TLS issues and accepts session tickets.
 *   1.7  a configuration lookup (config_string, config_int, config_bool) of a key the plugin's
 *        config_items do not declare is an error (NULL, EVS_CONFIG_UNDECLARED, -ENOENT; one
 *        log line per key), where it used to read as unset; the host's error bodies are built
 *        in one place (respond_error). The executable exports no symbol: plugins reach the
 *        host through this table alone, as they always should have.
 *   1.8  evs_api_key_request.recheck (a provider may answer a repeated check from a cache it
 *        keeps coherent with revocations) and response_close (end the connection after this
 *        response): the Outbound Relay checks a tunnel's key again on every request in it and
 *        ends the tunnel once the key is revoked. response_status also gives a code with a
 *        status below 400 when a response was cut short after its head (the destination reset
 *        or timed out mid-body). Stream write backpressure (stream_write_queued,
 *        stream_on_drain, EVS_STREAM_HIGH_WATER, EVS_STREAM_LOW_WATER): a plugin relaying
 *        between two streams pauses its reading side while the other's write queue is above
 *        EVS_STREAM_HIGH_WATER and resumes when it drains (the Inbound Relay's WebSockets); a
 *        client stream closed with stream_close sends what it queued before it shuts down.
 *        The host emits the event "worker.draining" ({"reason":"reload"|"stop"}) when the
 *        worker starts draining, so a plugin holding long-lived streams can end them
 *        gracefully (WebSocket close 1001) within limits.drain_timeout.
 *        evs_stream_connect.client_cert_file, client_key_file, client_key_passphrase_file:
 *        client streams present a client certificate (the Inbound Relay's mTLS relays'
 *        WebSockets).
 *   1.9  durable transaction records: the END hook phase (EVS_PHASE_END: the response is
 *        complete, its last bytes not yet sent), store_append_request (a record bound to a
 *        request: the host holds the end of its response until the record is committed, so
 *        no client holds a complete response whose record a crash could lose) and
 *        store_append_ready (whether the store takes records now: refuse work up front,
 *        cleanly, while it does not). store_append keeps its write-behind behaviour.
 *   1.9  store_put_new: create-only put (-EEXIST when the key is live), atomic across workers
 *        and nodes: claims, locks and version numbers.
 *   1.9  unix sockets and plugin-chosen listener certificates (the Cages front):
 *        evs_upstream.unix_path and evs_stream_connect.unix_path connect to a unix stream
 *        socket instead of host:port (the cage's app socket); add_tls_identity lets a plugin
 *        pick the certificate of a TLS listener serving one of its roles by SNI name (one
 *        certificate per cage, issued from the node CA, which its attestation binds);
 *        response_add_header adds a field to whatever response head the request sends
 *        (x-evervault-cage-ctx on a cage's answers, proxied or not); add_tls_passthrough
 *        hands a TLS listener's connection to a plugin before any handshake, chosen by the
 *        ClientHello's SNI (a cage with disable_tls_termination: its own TLS, untouched).
 */
#ifndef EVSERVER_EVS_PLUGIN_H
#define EVSERVER_EVS_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EVS_PLUGIN_MAGIC 0x50535645u /* "EVSP" little-endian */
#define EVS_ABI_MAJOR 1
#define EVS_ABI_MINOR 9

/* Error codes beyond errno. */
#define EVS_EUPSTREAM_REFUSED (-10001) /* upstream refused the connection */
#define EVS_EUPSTREAM_TIMEOUT (-10002) /* upstream too slow (connect or response) */
#define EVS_ENOCRYPTO (-10003)         /* no crypto provider, or it failed: fail closed */
#define EVS_ECLOSED (-10004)           /* the peer closed the connection */
#define EVS_ETLS (-10005)              /* TLS handshake or verification failed */

/* ---- Opaque handles ---------------------------------------------------------------------- */
typedef struct evs_plugin evs_plugin;   /* the host's record of one loaded plugin */
typedef struct evs_request evs_request; /* one client request; valid until it completes */
typedef struct evs_stream evs_stream;   /* a byte stream taken over from a client connection */
typedef struct evs_timer evs_timer;
typedef struct evs_client_response evs_client_response; /* response to evs_host.http_request */

/* ---- Configuration items (data, validated by the host) ------------------------------------ */
typedef enum evs_config_type {
  EVS_CONFIG_STRING = 1,
  EVS_CONFIG_INT = 2,      /* signed decimal, within [min, max] */
  EVS_CONFIG_BOOL = 3,     /* on/off, yes/no, true/false */
  EVS_CONFIG_DURATION = 4, /* 250ms, 10s, 5m, 1h; read as milliseconds, within [min, max] */
  EVS_CONFIG_SIZE = 5,     /* 512, 64k, 25m, 1g; read as bytes, within [min, max] */
  EVS_CONFIG_PATH = 6,     /* a file system path; relative paths resolve against the config dir */
} evs_config_type;

#define EVS_CONFIG_REQUIRED (1u << 0) /* the key must be set */
#define EVS_CONFIG_SECRET (1u << 1)   /* never echoed in logs or errors */

/* config_int's answer for a key the plugin's config_items do not declare (config_string answers
 * NULL, config_bool -ENOENT); the host also logs the plugin and key once (EVS-1410). */
#define EVS_CONFIG_UNDECLARED INT64_MIN

typedef struct evs_config_item {
  const char *key;           /* lower-case, [a-z0-9_] */
  evs_config_type type;
  const char *default_value; /* in the file's syntax; NULL: no default */
  int64_t min, max;          /* for INT, DURATION (ms), SIZE (bytes); min == max == 0: no bound */
  uint32_t flags;            /* EVS_CONFIG_* */
  const char *help;          /* one line, shown by `evserver --describe-config` */
} evs_config_item;

/* ---- The descriptor ---------------------------------------------------------------------- */
struct evs_host;

typedef struct evs_plugin_descriptor {
  uint32_t magic;     /* EVS_PLUGIN_MAGIC */
  uint16_t abi_major; /* EVS_ABI_MAJOR the plugin was built against */
  uint16_t abi_minor; /* EVS_ABI_MINOR the plugin was built against */
  uint32_t size;      /* sizeof(evs_plugin_descriptor) as the plugin compiled it */
  const char *name;   /* unique, [a-z0-9-]; names its config section */
  const char *version;
  const char *description;
  const evs_config_item *config_items; /* terminated by an item with key == NULL; may be NULL */
  /* Called once per worker. *ret_state is passed back to every callback the plugin registers
   * (as `state`) and to fini. Return 0, or a negative error to refuse loading. */
  int (*init)(const struct evs_host *host, evs_plugin *plugin, void **ret_state);
  void (*fini)(void *state);
} evs_plugin_descriptor;

#define EVS_PLUGIN_DESCRIPTOR_SYMBOL "evs_plugin_entry"

/* Declares the descriptor with the right magic, version and size. */
#define EVS_PLUGIN_DEFINE(name_, version_, description_, items_, init_, fini_)                  \
  __attribute__((visibility("default"))) const evs_plugin_descriptor evs_plugin_entry = { \
      EVS_PLUGIN_MAGIC, EVS_ABI_MAJOR, EVS_ABI_MINOR, sizeof(evs_plugin_descriptor),           \
      (name_), (version_), (description_), (items_), (init_), (fini_)}

/* ---- Logging ----------------------------------------------------------------------------- */
typedef enum evs_log_level {
  EVS_LOG_ERROR = 0, EVS_LOG_WARN = 1, EVS_LOG_INFO = 2, EVS_LOG_DEBUG = 3,
} evs_log_level;

/* ---- Requests ---------------------------------------------------------------------------- */
/* Phases at which request hooks run, in order. Requests on the admin Unix socket reach ROUTE
 * hooks too (request_info.listener is "admin") when the host's own admin endpoints (/metrics,
 * /status, /plugins, /routes) and the routes of role "admin" do not match. Only the socket's
 * file permissions guard it, so such handlers need no further authentication. */
typedef enum evs_phase {
  /* Route: decide who handles the request. A hook that takes the request returns EVS_HANDLED
   * and must eventually respond, proxy, or take over; EVS_DECLINED passes to the next hook.
   * Since ABI 1.7 the host first tries the routes registered with add_route for the roles the
   * listener serves; ROUTE hooks run, on every listener, only when no route took the request.
   * If nobody takes it, the host answers 404 with the documented code of the listener's first
   * role (relay: `relay-not-found`; api and admin: `resource-not-found`). */
  EVS_PHASE_ROUTE = 1,
  /* Log: after the response completed (or the connection failed). Read-only. */
  EVS_PHASE_LOG = 2,
  /* ABI 1.9. End: the response is complete on the host's side (respond, the destination's
   * last body byte, filter_end) and its last bytes have not left yet. Read-only, like LOG
   * (response_status works); the place to bind a transaction record to the response with
   * store_append_request. Runs at most once per request, before LOG, and not at all for a
   * response cut short, a takeover (CONNECT, WebSocket) or a client already gone: LOG sees
   * those. */
  EVS_PHASE_END = 3,
} evs_phase;

#define EVS_DECLINED 0
#define EVS_HANDLED 1

typedef int (*evs_hook_fn)(void *state, evs_request *req);

/* ABI 1.7: a route, registered with evs_host.add_route in init. Each [listener] of
 * evserver.conf serves one or more roles (`serves = api relay`; the admin socket serves
 * "admin"); a request is offered to the routes of those roles whose host pattern, method and
 * path prefix match, most specific first:
 *   1. host: an exact name before a "*.suffix" wildcard (longer suffix first) before NULL (any);
 *   2. path: a longer prefix first;
 *   3. method: a named method before NULL (any);
 *   4. then in registration order (plugin load order, then the order of add_route calls).
 * The handler returns EVS_HANDLED (and answers, proxies or takes over, as a ROUTE hook does) or
 * EVS_DECLINED: the next matching route is tried, then the ROUTE hooks, then the host answers
 * 404 with the documented code of the listener's first role. Routes are fixed at init: a
 * plugin whose table of names changes at run time (the Inbound Relay's relay-config.json)
 * registers one catch route for its role (host NULL, prefix "/"), keeps its own table and
 * declines what is not in it. The host copies every string; the struct may be on the stack.
 *
 * CONNECT routes: method "CONNECT" with path_prefix NULL matches CONNECT requests (whose target
 * is an authority, "host:port", not a path) on the route's role, the host pattern compared with
 * the target's host (no port, no brackets around an IPv6 literal, without case), not with the
 * Host header. A CONNECT request is offered to CONNECT routes only, and a CONNECT route is
 * offered nothing else; routes of any method (NULL) never see a CONNECT. Ordering is by host
 * as above, then registration order. The handler typically takes the connection over
 * (takeover, stream_start_tls, stream_serve_http). */
typedef struct evs_route {
  uint32_t size;           /* sizeof(evs_route) */
  const char *role;        /* [a-z0-9-]{1,32}: "api", "relay", "admin" or a role of your own */
  const char *host;        /* "name.example" (exact), "*.example" (any name ending in
                            * ".example"), or NULL: any host. Compared without case. */
  const char *method;      /* "GET", "POST", ... (exact; a GET route also serves HEAD);
                            * NULL: any method */
  const char *path_prefix; /* starts with '/'; matches the path itself and the paths below it
                            * ("/apps" matches /apps and /apps/x, not /appsx); "/" matches all.
                            * NULL with method "CONNECT" (and only then): a CONNECT route */
  evs_hook_fn handler;     /* called with the plugin's state, like a ROUTE hook */
} evs_route;

/* A request or response header, as bytes (not NUL-terminated). */
typedef struct evs_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} evs_header;

typedef struct evs_request_info {
  uint32_t size;           /* sizeof(evs_request_info) as the host filled it */
  const char *method;      /* NUL-terminated */
  const char *target;      /* request-target as received, NUL-terminated */
  const char *path;        /* target up to '?', NUL-terminated */
  const char *query;       /* after '?', or "" */
  const char *host;        /* Host header without port, lower-case, NUL-terminated */
  const char *client_addr; /* textual IP of the client */
  const char *request_id;  /* unique per request; also in every log line about it */
  int version_minor;       /* HTTP/1.<minor> */
  int tls;                 /* request arrived over TLS */
  const char *sni;         /* TLS server name or NULL */
  const char *listener;    /* name of the listener it arrived on */
  uint64_t content_length; /* if has_content_length */
  int has_content_length;
  int chunked;
} evs_request_info;

/* Description of where to proxy a request. */
typedef struct evs_upstream {
  uint32_t size;             /* sizeof(evs_upstream) */
  const char *scheme;        /* "http" or "https" */
  const char *host;          /* DNS name or IP literal */
  uint16_t port;             /* 0: 80 or 443 by scheme */
  const char *sni;           /* TLS server name; NULL: host */
  int verify;                /* verify the upstream certificate (default 1) */
  const char *ca_file;       /* NULL: the host's configured CA bundle */
  const char *client_cert_file; /* mTLS client certificate (PEM) or NULL */
  const char *client_key_file;
  const char *host_header;   /* Host header to send; NULL: host[:port] */
  int x_forwarded_for;       /* 0: leave X-Forwarded-For as received; 1: append client IP */
  uint64_t connect_timeout_ms; /* 0: host default */
  uint64_t response_timeout_ms; /* 0: host default */
  /* ABI 1.1: a request body produced by the plugin instead of the client's (which the plugin
   * has read whole with request_body_read before calling proxy). The host sends
   * Content-Length: body_source_len and pulls the bytes with body_source as the upstream
   * connection can take them: body_source writes up to cap bytes into buf, sets *ret_len
   * (0 only at the end) and returns 0, or returns a negative error (the request then fails
   * with `internal-server-error`). It may be called again from the start (after a rewind
   * call with buf == NULL) if the host retries on a fresh connection. NULL: the client's
   * body, streamed as received. */
  int (*body_source)(void *arg, uint8_t *buf, size_t cap, size_t *ret_len);
  void *body_source_arg;
  uint64_t body_source_len;
  /* ABI 1.4: called once when the destination's response head has arrived (interim 1xx heads
   * excluded), before anything of it reaches the client, with proxy's filter_arg and the
   * response status. It may read the head (response_header), drop fields from what the client
   * gets (response_remove_header), or answer instead with respond or respond_error: the
   * destination's response is then discarded and its connection closed. Returns 0, or a
   * negative error: the request then fails with 502 `service-unavailable` (unless the callback
   * answered). The host still frames the response itself (Content-Length, Transfer-Encoding).
   * NULL: the head passes as received. */
  int (*response_head)(void *filter_arg, evs_request *req, int status);
  /* ABI 1.5: a file whose first line (up to 1023 bytes, without the line end) is the
   * passphrase of client_key_file, for an encrypted PEM key; NULL: the key is not encrypted.
   * The host reads it when it loads the key (once per worker and key), keeps no copy (its
   * buffer is wiped) and never logs it; the path (never the passphrase) separates pooled
   * connections. A missing file or a wrong passphrase fails the request with 502
   * `service-unavailable` ("TLS with the destination failed"), logged as EVS-1301. */
  const char *client_key_passphrase_file;
  /* ABI 1.9: connect to this unix stream socket instead of host:port (scheme "http" only;
   * host still names the Host header). Connections are pooled per path. NULL: TCP. */
  const char *unix_path;
} evs_upstream;

/* Body filter: sees each body chunk on its way through and may replace it. Called with
 * data == NULL, len == 0 once at the end. Write output with evs_host.filter_emit. Returns 0,
 * or negative to fail the request. ABI 1.1: a response filter may return EVS_FILTER_HOLD from
 * its end call; the host then keeps the response open until the plugin calls
 * evs_host.filter_end (after emitting the rest with filter_emit), e.g. when the last bytes
 * wait for an asynchronous crypto call. */
#define EVS_FILTER_HOLD 1
typedef int (*evs_body_filter_fn)(void *state, evs_request *req, void *filter_arg,
                                  const uint8_t *data, size_t len);

/* ABI 1.1: request_body_read delivers decoded body bytes (chunked framing removed). on_data
 * returns 0 to go on, EVS_BODY_PAUSE to stop reading until request_body_resume, or a negative
 * error: the rest of the body is then read and discarded (the connection closes after the
 * response) and on_end gets that error. on_data must not respond; on_end runs exactly once on
 * a later loop turn, with 0 at the end of the body, the plugin's error, -E2BIG past
 * limits.max_body_bytes, or another negative value when the client went away (then the
 * request is already finished and the plugin must not respond). */
#define EVS_BODY_PAUSE 1
typedef int (*evs_body_data_fn)(void *arg, const uint8_t *data, size_t len);
typedef void (*evs_body_end_fn)(void *arg, int status);

/* ---- Upstream client requests (for plugins: webhooks, health checks) ---------------------- */
typedef struct evs_client_request {
  uint32_t size;
  const char *method;
  const char *url;           /* http:// or https:// */
  const evs_header *headers;
  size_t nheaders;
  const uint8_t *body;
  size_t body_len;
  uint64_t timeout_ms;       /* whole request; 0: host default */
  const char *ca_file;       /* NULL: default */
  int verify;                /* verify TLS certificates; 1 unless set to 0 deliberately */
} evs_client_request;

/* status > 0: the response status; else a negative error. body is valid during the call. */
typedef void (*evs_client_cb)(void *arg, int status, const uint8_t *body, size_t body_len);

/* ---- Events (alerts and audit consume them) ---------------------------------------------- */
typedef struct evs_event {
  uint32_t size;
  const char *type;       /* e.g. "relay.error" */
  const char *json;       /* a JSON object with the event's fields; never request data */
} evs_event;
typedef void (*evs_event_fn)(void *state, const evs_event *ev);

/* ---- Store ------------------------------------------------------------------------------- */
/* Key-value namespaces per plugin, persisted through the host's store (SQLite or PostgreSQL).
 * status: 0 found/done, -ENOENT not found, other negative: error. value valid during the call. */
typedef void (*evs_store_cb)(void *arg, int status, const uint8_t *value, size_t value_len);

/* ABI 1.2 node messages. A message received from another worker; answer it exactly once with
 * node_reply (the handle is freed then). Unanswered messages count as failed at the sender's
 * timeout, and their handles are freed when the worker stops. */
typedef struct evs_node_msg evs_node_msg;
#define EVS_NODE_MSG_MAX 16384 /* bytes, one node message */
/* msg/len are valid during the call only; the host wipes its copy afterwards. */
typedef void (*evs_node_msg_fn)(void *state, const uint8_t *msg, size_t len, evs_node_msg *m);
/* workers: how many other workers the message reached; ok: how many answered status 0 before
 * the timeout. Both 0 when this is the only worker. */
typedef void (*evs_node_done_fn)(void *arg, size_t workers, size_t ok);
/* Called per item, then once with key == NULL at the end (status in `status`). */
typedef void (*evs_store_scan_cb)(void *arg, int status, const char *key, const uint8_t *value,
                                  size_t value_len);

/* ---- Crypto, low level (forwarded to the crypto provider: the enclave plugin) -------------
 * Kept for compatibility: op and payload are the provider's own wire format (for the enclave
 * plugin, its protocol's items, which no installed header describes). New plugins use the typed
 * calls of ABI 1.6 below (encrypt_values, ..., check_api_key). */
typedef struct evs_crypto_request {
  uint32_t size;
  const char *op;        /* "encrypt", "decrypt", ... (the enclave protocol's operation names) */
  const uint8_t *payload;/* operation input, opaque to the host */
  size_t payload_len;
} evs_crypto_request;
/* status 0: result holds the output; negative: error (EVS_ENOCRYPTO when the provider failed). */
typedef void (*evs_crypto_cb)(void *arg, int status, const uint8_t *result, size_t result_len);
/* A provider's handler: must call done(done_arg, ...) exactly once. */
typedef void (*evs_crypto_done_fn)(void *done_arg, int status, const uint8_t *result,
                                   size_t result_len);
typedef int (*evs_crypto_provider_fn)(void *state, const evs_crypto_request *req,
                                      evs_crypto_done_fn done, void *done_arg);

/* ---- Typed crypto and auth (ABI 1.6) ------------------------------------------------------
 * What a plugin uses to encrypt, decrypt and check API keys, without knowing any provider's
 * wire format. The host forwards each call to the crypto provider (the enclave plugin), which
 * registered an evs_crypto_provider table; with no provider loaded the call returns
 * EVS_ENOCRYPTO and its callback never runs (callers fail closed). As everywhere: a call that
 * returns negative never runs its callback; otherwise the callback runs exactly once, on the
 * loop thread.
 *
 * Status of a whole call (the callback's `status`): EVS_CRYPTO_OK; a negative
 * evs_crypto_status (e.g. EVS_CRYPTO_E_NO_APP: the app is unknown or locked); EVS_ENOCRYPTO
 * (the provider is down or did not answer: retry later); -ENOMEM; -EACCES (check_api_key: the
 * key is unknown or lacks the permission). Per-value statuses in evs_crypto_result use the
 * same names.
 *
 * Ownership: request structs and everything they point to are the caller's; the host and the
 * provider copy what they keep before the call returns. Result bytes (ev strings, ciphertext,
 * plaintext, app ids) belong to the provider and are valid during the callback only; the
 * provider wipes plaintext buffers after the callback returns, so copy what you keep (and wipe
 * your copies of plaintext when done). */
typedef enum evs_crypto_status {
  EVS_CRYPTO_OK = 0,
  EVS_CRYPTO_E_PROTOCOL = -1, /* the provider's answer was malformed (e.g. a count mismatch) */
  EVS_CRYPTO_E_UNKNOWN_OP = -2,
  EVS_CRYPTO_E_NO_APP = -3,   /* app unknown or locked (evctl app unlock) */
  EVS_CRYPTO_E_BAD_TOKEN = -4,
  EVS_CRYPTO_E_DECRYPT = -5,  /* a value does not decrypt with this app's keys (tampered, ...) */
  EVS_CRYPTO_E_INVALID = -6,  /* an input is invalid (curve, role, type, size, not an ev: string) */
  EVS_CRYPTO_E_INTERNAL = -7,
  EVS_CRYPTO_UNAVAILABLE = -8, /* 1.7: what the call needs does not exist yet (no relay CA) */
} evs_crypto_status;

/* Value types. STRING is trimmed like the SDK's (the API's /encrypt); STRING_EXACT is
 * encrypted with its bytes exactly as given (whitespace kept); NUMBER is JSON number text;
 * BOOLEAN is "true" or "false". Decryption yields STRING, NUMBER or BOOLEAN (NUMBER and
 * BOOLEAN plaintexts are checked and safe to splice into JSON as they are). */
#define EVS_CRYPTO_STRING 0
#define EVS_CRYPTO_NUMBER 1
#define EVS_CRYPTO_BOOLEAN 2
#define EVS_CRYPTO_STRING_EXACT 3

#define EVS_CRYPTO_MAX_VALUES 4000 /* per encrypt_values / decrypt_values call */

/* evs_crypto_value and evs_crypto_result travel in arrays, so they never grow (an array's
 * stride is the struct's size): a later minor that needs more adds new types and calls. */
typedef struct evs_crypto_value {
  uint32_t size;       /* sizeof(evs_crypto_value); anything else is -EINVAL */
  int type;            /* EVS_CRYPTO_* (encrypt); ignored by decrypt_values */
  const uint8_t *data; /* the plaintext (encrypt) or the ev: string (decrypt) */
  size_t len;
} evs_crypto_value;

/* One value's result: status EVS_CRYPTO_OK and data/len (the ev: string, or the plaintext and
 * its type), or a negative evs_crypto_status and no data. Valid during the callback only. */
typedef struct evs_crypto_result {
  int status;
  int type;            /* decrypt_values: EVS_CRYPTO_STRING, _NUMBER or _BOOLEAN */
  const uint8_t *data;
  size_t len;
} evs_crypto_result;

typedef struct evs_encrypt_request {
  uint32_t size;          /* sizeof(evs_encrypt_request) */
  const char *app_id;
  const char *curve;      /* "secp256k1" or "prime256v1" */
  const char *role;       /* data role, or NULL for none */
  const evs_crypto_value *values;
  size_t n;               /* 1..EVS_CRYPTO_MAX_VALUES */
} evs_encrypt_request;

typedef struct evs_decrypt_request {
  uint32_t size;          /* sizeof(evs_decrypt_request) */
  const char *app_id;
  const evs_crypto_value *values; /* ev: strings (type ignored) */
  size_t n;               /* 1..EVS_CRYPTO_MAX_VALUES */
} evs_decrypt_request;

typedef struct evs_file_request {
  uint32_t size;          /* sizeof(evs_file_request) */
  const char *app_id;
  const char *curve;      /* encrypt_file: "secp256k1" or "prime256v1"; decrypt_file: ignored */
  const uint8_t *data;    /* the file (encrypt) or the %EVENC bytes (decrypt); <= 25 MiB */
  size_t len;
} evs_file_request;

typedef struct evs_api_key_request {
  uint32_t size;          /* sizeof(evs_api_key_request) */
  const char *key;        /* the API key as received; never logged, wiped by the provider */
  size_t key_len;
  const char *permission; /* e.g. "relay:inbound-mtls", "api:encrypt" */
  /* 1.8: nonzero when the caller checks again a key it already checked (each request in a
   * tunnel): the provider may answer from a per-worker cache it keeps coherent with key
   * revocations on this node (other nodes' within a second), and records no audit entry for
   * such an answer. A struct without it (the 1.7 size) reads as 0. */
  int recheck;
} evs_api_key_request;

/* status EVS_CRYPTO_OK: results[0..n) match the request's values in order (n == request's n);
 * otherwise results is NULL and n is 0. */
typedef void (*evs_values_cb)(void *arg, int status, const evs_crypto_result *results, size_t n);
/* status EVS_CRYPTO_OK: data/len is the whole output (a %EVENC file, or the plaintext). */
typedef void (*evs_bytes_cb)(void *arg, int status, const uint8_t *data, size_t len);
/* status EVS_CRYPTO_OK: the key is the app's and has the permission; app_id is NUL-terminated.
 * -EACCES: unknown key or permission missing (app_id NULL). */
typedef void (*evs_api_key_cb)(void *arg, int status, const char *app_id);

/* ---- Certificates (ABI 1.7) ---------------------------------------------------------------
 * The node's relay CA (created and rotated by the operator: `evctl relay-ca`) signs leaf
 * certificates for the Outbound Relay, which terminates TLS inside a CONNECT tunnel with them.
 * The CA's private key lives with the crypto provider (the enclave) and never reaches a
 * plugin; the caller generates the leaf's key pair itself and sends only the public key.
 * Statuses as for the typed crypto calls: EVS_CRYPTO_OK, EVS_CRYPTO_E_INVALID (a bad name, key
 * or validity), EVS_CRYPTO_UNAVAILABLE (no CA exists yet), EVS_ENOCRYPTO, -ENOMEM. */
#define EVS_CERT_MAX_NAMES 8
typedef struct evs_cert_request {
  uint32_t size;                /* sizeof(evs_cert_request) */
  const char *const *names;     /* DNS names or IP literals: the leaf's SANs (names[0] is also the CN) */
  size_t nnames;                /* 1..EVS_CERT_MAX_NAMES */
  const char *public_key_pem;   /* the leaf's public key (SubjectPublicKeyInfo, PEM); the caller keeps the private key */
  uint32_t validity_s;          /* 0: the provider's default (e.g. 7 days) */
} evs_cert_request;

/* The provider's side (register_crypto_provider2, init only, one provider per worker). Each
 * function gets the provider's state and the caller's request; it either returns negative
 * (done never runs) or calls done(done_arg, ...) exactly once, later, on the loop thread, with
 * results it owns for the duration of that call (and wipes after, for plaintext). NULL members
 * answer -ENOTSUP. The host checks `size` of the request structs before calling. */
typedef struct evs_crypto_provider {
  uint32_t size; /* sizeof(evs_crypto_provider) */
  int (*encrypt_values)(void *state, const evs_encrypt_request *req, evs_values_cb done,
                        void *done_arg);
  int (*decrypt_values)(void *state, const evs_decrypt_request *req, evs_values_cb done,
                        void *done_arg);
  int (*encrypt_file)(void *state, const evs_file_request *req, evs_bytes_cb done,
                      void *done_arg);
  int (*decrypt_file)(void *state, const evs_file_request *req, evs_bytes_cb done,
                      void *done_arg);
  int (*check_api_key)(void *state, const evs_api_key_request *req, evs_api_key_cb done,
                       void *done_arg);
  /* 1.7: certificates (see "Certificates" above). issue_certificate's done gets the PEM chain
   * (the leaf, then the CA that signed it); ca_certificates' the PEM bundle to trust. */
  int (*issue_certificate)(void *state, const evs_cert_request *req, evs_bytes_cb done,
                           void *done_arg);
  int (*ca_certificates)(void *state, evs_bytes_cb done, void *done_arg);
} evs_crypto_provider;

/* ---- Helper processes (ABI 1.7) ---------------------------------------------------------- */
/* A helper is a program the host runs for a plugin, on one end of a socketpair, sandboxed and
 * supervised: the host restarts it with backoff when it exits, kills it when the master dies
 * (whatever way the master dies), and with `kept` it outlives the worker: the next worker of the
 * same rank (after a crash or a reload) re-attaches to it. See abi/README.md, "Helper
 * processes". */
typedef struct evs_helper evs_helper;

/* Namespaces (evs_helper_spec.namespaces). USER maps the worker's uid and gid to themselves
 * (the helper gains no privilege over the host); PID makes the helper pid 1 of its own tree
 * (it then gets only the signals it handles, apart from SIGKILL); MOUNT gives it a private
 * copy of the mount table; NET an empty network (loopback only, down); IPC and UTS their
 * own. */
#define EVS_HELPER_NS_USER (1u << 0)
#define EVS_HELPER_NS_PID (1u << 1)
#define EVS_HELPER_NS_MOUNT (1u << 2)
#define EVS_HELPER_NS_NET (1u << 3)
#define EVS_HELPER_NS_IPC (1u << 4)
#define EVS_HELPER_NS_UTS (1u << 5)

/* evs_helper_spec.flags */
#define EVS_HELPER_NO_RESTART (1u << 0) /* an exit is final: EXITED, then nothing */
#define EVS_HELPER_SEQPACKET (1u << 1)  /* a SOCK_SEQPACKET pair instead of SOCK_STREAM */

/* What to run and how; filled by the plugin (zero it, set size = sizeof). Everything is copied
 * by helper_spawn. */
typedef struct evs_helper_spec {
  uint32_t size;
  const char *path;        /* absolute path of the executable (exec'd as is, no PATH search) */
  const char *const *argv; /* NULL-terminated; NULL: { path, NULL } */
  const char *const *envp; /* NULL-terminated; NULL: an empty environment */
  /* A seccomp policy by name, from sandbox/ ("worker", "enclave"; see sandbox/README.md).
   * Required: an unknown name is -EINVAL. The host loads the policy's exec stage in the child
   * before exec; a policy whose tightest stage cannot survive exec (the enclave's) is finished
   * by the helper itself, which links sandbox/. */
  const char *sandbox;
  int fd;                   /* the helper's end of the socketpair appears as this fd (0: 3) */
  uint32_t flags;           /* EVS_HELPER_* */
  uint32_t namespaces;      /* EVS_HELPER_NS_* wanted */
  /* Those of `namespaces` the helper may run without when the kernel refuses them (no
   * unprivileged user namespaces, say); a refused namespace not listed here fails the start
   * with -EPERM and a log line naming it. */
  uint32_t namespaces_optional;
  /* rlimits, soft = hard; 0: inherited. */
  uint64_t rlimit_as;      /* bytes of address space */
  uint64_t rlimit_nofile;  /* open descriptors */
  uint64_t rlimit_nproc;   /* processes of the user (counts the whole uid, not just this tree) */
  uint64_t rlimit_cpu;     /* CPU seconds: SIGXCPU, then SIGKILL */
  uint64_t rlimit_fsize;   /* largest file written, bytes */
  /* cgroup v2 limits, applied where the machine delegates a writable cgroup to the server;
   * elsewhere the host logs once that it cannot and starts the helper without them. 0: none. */
  uint64_t cgroup_memory_max; /* memory.max, bytes */
  uint64_t cgroup_pids_max;   /* pids.max */
  uint32_t cgroup_cpu_max_pct; /* cpu.max as a percentage of one CPU (100: one CPU) */
  /* Restart backoff: the first restart after min_ms, doubling up to max_ms; it falls back to
   * min_ms once a start has lived max_ms. 0: 200 ms and 10 s. */
  uint64_t restart_min_ms, restart_max_ms;
  /* [a-z0-9_-]{1,40}: keep the helper for this worker rank under this name (per plugin). The
   * next worker of the rank that spawns the same name re-attaches to the running helper (event
   * STARTED with adopted = 1) instead of starting one, if the spec and the executable file are
   * unchanged; otherwise the old helper is stopped and a new one started. The helper's socket
   * is then shared by successive workers, so use it to hand over fresh connections (as the
   * enclave plugin does), not for a conversation. NULL: the helper ends with the worker. */
  const char *kept;
} evs_helper_spec;

typedef enum evs_helper_event_type {
  EVS_HELPER_STARTED = 1,    /* a process runs (pid, fd; adopted when a predecessor started it) */
  EVS_HELPER_EXITED = 2,     /* it ended (exit_code or signal); fd is closed after the callback */
  EVS_HELPER_RESTARTING = 3, /* a new start follows after delay_ms */
  EVS_HELPER_FAILED = 4,     /* a start failed (error); another follows unless NO_RESTART */
} evs_helper_event_type;

typedef struct evs_helper_event {
  uint32_t size;             /* sizeof(evs_helper_event) as the host filled it */
  evs_helper_event_type type;
  int pid;                   /* the helper's pid (in the server's pid namespace), 0 if none */
  int fd;                    /* STARTED: the host's end of the socketpair (the host's; dup it to
                                keep it), -1 otherwise */
  int adopted;               /* STARTED: re-attached to a kept helper */
  int exit_code;             /* EXITED: the exit status, or -1 when killed or unknown */
  int signal;                /* EXITED: the signal that killed it, or 0. SIGSYS: a system call
                                its sandbox policy forbids */
  int error;                 /* FAILED: a negative errno (-EPERM: a namespace was refused) */
  uint64_t delay_ms;         /* RESTARTING: the next start is in delay_ms */
  uint64_t starts;           /* processes started (or adopted) for this handle so far */
} evs_helper_event;

/* Runs on the loop thread, never before helper_spawn returned, never after helper_stop or the
 * plugin's fini. The event is valid during the call only. */
typedef void (*evs_helper_event_fn)(void *arg, evs_helper *h, const evs_helper_event *ev);

/* ---- Takeover (CONNECT, Upgrade, own TLS) ------------------------------------------------ */
/* Data read from a taken-over stream; len == 0 with status < 0 means closed or error. */
typedef void (*evs_stream_read_fn)(void *arg, evs_stream *s, int status, const uint8_t *data,
                                   size_t len);
typedef void (*evs_stream_write_fn)(void *arg, evs_stream *s, int status);
/* Picks a certificate for a TLS server handshake on a stream by SNI name (NULL when the client
 * sent none, as clients do for an IP address): fill the PEM buffers and return 0, or return
 * negative to abort the handshake. The host zeroes *ret and sets its size before the call;
 * the buffers need to stay valid only during the call (the host copies what it keeps). */
typedef struct evs_tls_identity {
  uint32_t size;
  const char *cert_pem; size_t cert_pem_len; /* certificate chain, PEM */
  const char *key_pem; size_t key_pem_len;   /* private key, PEM */
  /* 1.7: a name for this certificate and key, unique among the identities of your plugin
   * (say "leaf:api.example.com:<serial>"), or NULL. With a name, the host keeps the TLS context
   * it builds from the PEM in a per-worker LRU cache (at most [limits] tls_identity_cache
   * entries, default 1024) and later handshakes that return the same name use that context
   * without parsing the PEM again: a name must never be reused for a different certificate or
   * key. Eviction never affects connections already using a context. At most 255 bytes. */
  const char *cache_key;
} evs_tls_identity;
typedef int (*evs_tls_identity_fn)(void *arg, const char *sni, evs_tls_identity *ret);
typedef void (*evs_timer_fn)(void *arg);

/* ABI 1.7: what serves the requests of a stream handed back to the HTTP engine
 * (stream_serve_http). Zero it and set size = sizeof. */
typedef struct evs_http_service {
  uint32_t size; /* sizeof(evs_http_service) */
  /* Each request parsed on the stream, like a ROUTE hook: return EVS_HANDLED and answer it
   * (respond, respond_error, proxy; now or later), or EVS_DECLINED and the host answers 404
   * `relay-not-found`. ROUTE hooks never see these requests; LOG hooks do. */
  int (*request)(void *arg, evs_request *req);
  /* Once, when the connection has ended (after its last request finished); free arg here.
   * May be NULL. */
  void (*closed)(void *arg);
} evs_http_service;

/* ABI 1.7: where a client stream connects (stream_connect). Zero it and set size = sizeof. */
typedef struct evs_stream_connect {
  uint32_t size;       /* sizeof(evs_stream_connect) */
  const char *host;    /* DNS name or IP literal */
  uint16_t port;
  int tls;             /* 1: TLS client; the certificate chain and the name (sni) are verified */
  int no_verify;       /* 1: skip verification (tests only); zeroed structs always verify */
  const char *sni;     /* TLS server name and name verified; NULL: host */
  const char *ca_file; /* NULL: the host's configured upstream CA bundle */
  uint64_t connect_timeout_ms; /* TCP and TLS handshake; 0: upstream.connect_timeout */
  /* 1.8: a client certificate for TLS (mTLS), as evs_upstream's: PEM files, the key optionally
   * encrypted with the passphrase in client_key_passphrase_file (read while the key loads, then
   * wiped). NULL: none. A struct of the 1.7 size has none. */
  const char *client_cert_file;
  const char *client_key_file;
  const char *client_key_passphrase_file;
  /* 1.9: connect to this unix stream socket instead of host:port (tls must be 0; host and
   * port are then ignored and may be NULL and 0). NULL: TCP. */
  const char *unix_path;
} evs_stream_connect;
/* status 0: s is connected (and, with tls, verified) and ready for the stream_* calls;
 * negative (EVS_EUPSTREAM_REFUSED, EVS_EUPSTREAM_TIMEOUT, EVS_ETLS for a failed handshake or
 * verification, -ENOMEM): s is NULL and nothing is left to close. */
typedef void (*evs_stream_connect_fn)(void *arg, evs_stream *s, int status);
/* ABI 1.9 (add_tls_passthrough): a connection on a TLS listener, before any handshake, whose
 * ClientHello names sni. Return 1 and s is the plugin's, a server stream as after takeover
 * (stream_read_start delivers the ClientHello's bytes first, then whatever follows; write,
 * close, on_drain; not stream_serve_http). Return 0 without having used s and the listener
 * terminates TLS itself as usual (s is then gone). */
typedef int (*evs_tls_passthrough_fn)(void *arg, const char *sni, evs_stream *s);

/* ---- The host's service table ------------------------------------------------------------ */
/* Append-only: new services go at the end and bump EVS_ABI_MINOR. Check `size` (or the host's
 * minor) before using a member added after 1.0. */
typedef struct evs_host {
  uint32_t size;
  uint16_t abi_major, abi_minor;

  /* Logging: one JSON line, with the plugin name and (if req != NULL) the request id. Never
   * pass secrets or bodies. */
  void (*log)(evs_plugin *p, evs_request *req, evs_log_level level, const char *fmt, ...)
      __attribute__((format(printf, 4, 5)));

  /* Configuration: values of the plugin's own section, validated against its items. A key not
   * in the descriptor's config_items is an error, logged once per key (EVS-1410): config_string
   * returns NULL, config_int EVS_CONFIG_UNDECLARED, config_bool -ENOENT. */
  const char *(*config_string)(evs_plugin *p, const char *key); /* NULL if unset, no default */
  int64_t (*config_int)(evs_plugin *p, const char *key);        /* INT, DURATION (ms), SIZE */
  int (*config_bool)(evs_plugin *p, const char *key);           /* 0 or 1 */
  const char *(*config_dir)(evs_plugin *p);   /* directory of evserver.conf */
  const char *(*state_dir)(evs_plugin *p);    /* the state directory */

  /* Registration (init only). */
  int (*add_hook)(evs_plugin *p, evs_phase phase, evs_hook_fn fn);

  /* Request access. */
  const evs_request_info *(*request_info)(evs_request *req);
  /* Headers as received: index-based iteration; returns 0, or -ENOENT past the end. */
  int (*request_header_at)(evs_request *req, size_t index, evs_header *ret);
  /* First header with that name (case-insensitive); 0 or -ENOENT. */
  int (*request_header)(evs_request *req, const char *name, evs_header *ret);
  /* Outgoing header edits applied when proxying (set replaces all of that name). */
  int (*request_set_header)(evs_request *req, const char *name, const char *value);
  int (*request_remove_header)(evs_request *req, const char *name);
  /* Per-request plugin data, freed by the plugin in its LOG hook or via free_fn at the end. */
  void (*request_set_data)(evs_request *req, evs_plugin *p, void *data, void (*free_fn)(void *));
  void *(*request_get_data)(evs_request *req, evs_plugin *p);

  /* Responses. headers may be NULL. The body is copied. */
  int (*respond)(evs_request *req, int status, const evs_header *headers, size_t nheaders,
                 const uint8_t *body, size_t body_len);
  /* The documented error shape: X-Evervault-Error-Code header and a JSON body with status,
   * code, title, detail, message. */
  int (*respond_error)(evs_request *req, int status, const char *code, const char *detail);

  /* Proxy the request to an upstream, streaming the body both ways. Upstream failures answer
   * with the documented codes (service-unavailable, request-timeout). Optional filters see the
   * request and response bodies. */
  int (*proxy)(evs_request *req, const evs_upstream *up, evs_body_filter_fn request_filter,
               evs_body_filter_fn response_filter, void *filter_arg);
  /* From a body filter: pass bytes on downstream of the filter. */
  int (*filter_emit)(evs_request *req, const uint8_t *data, size_t len);

  /* An independent HTTP(S) request. */
  int (*http_request)(evs_plugin *p, const evs_client_request *creq, evs_client_cb cb, void *arg);

  /* Timers. repeat_ms 0: once. The handle stays valid until timer_free. */
  evs_timer *(*timer_start)(evs_plugin *p, uint64_t timeout_ms, uint64_t repeat_ms,
                            evs_timer_fn cb, void *arg);
  void (*timer_free)(evs_timer *t);

  /* Events: emit to every subscriber in this worker (delivery is asynchronous). */
  int (*emit_event)(evs_plugin *p, const evs_event *ev);
  int (*subscribe_events)(evs_plugin *p, const char *type_prefix, evs_event_fn fn);

  /* Store, in the plugin's namespace. ttl_s 0: no expiry. */
  int (*store_get)(evs_plugin *p, const char *key, evs_store_cb cb, void *arg);
  int (*store_put)(evs_plugin *p, const char *key, const uint8_t *value, size_t value_len,
                   uint64_t ttl_s, evs_store_cb cb, void *arg);
  /* cb's status is 0 when the key existed (and was live), -ENOENT when it did not. This is an
   * atomic take: of any number of concurrent deletes of one key, from any workers or from any
   * nodes sharing a PostgreSQL store, exactly one is told 0 (both backends; tests/unit/
   * test_store.c test_delete_once_concurrent). A single-use token is "put, then delete to use":
   * the function-runtime plugin's run tokens. */
  int (*store_delete)(evs_plugin *p, const char *key, evs_store_cb cb, void *arg);
  int (*store_scan)(evs_plugin *p, const char *prefix, evs_store_scan_cb cb, void *arg);

  /* Metrics: a counter exported at /metrics as evserver_plugin_events_total{plugin,name};
   * name is [a-z0-9_]. */
  int (*counter_add)(evs_plugin *p, const char *name, uint64_t delta);

  /* Crypto: forwarded to the registered provider (the enclave plugin). Returns EVS_ENOCRYPTO
   * (and the callback never runs) when no provider is loaded: callers fail closed. */
  int (*crypto_call)(evs_plugin *p, const evs_crypto_request *creq, evs_crypto_cb cb, void *arg);
  int (*register_crypto_provider)(evs_plugin *p, evs_crypto_provider_fn fn);

  /* Takeover: after a CONNECT or Upgrade request, send `status` with headers (e.g. 200 or 101)
   * and hand the client connection to the plugin as a stream. Bytes the client already sent
   * after the head arrive first through read. The request completes when the stream closes. */
  evs_stream *(*takeover)(evs_request *req, int status, const evs_header *headers,
                          size_t nheaders);
  int (*stream_read_start)(evs_stream *s, evs_stream_read_fn cb, void *arg);
  int (*stream_read_stop)(evs_stream *s);
  int (*stream_write)(evs_stream *s, const uint8_t *data, size_t len, evs_stream_write_fn cb,
                      void *arg);
  /* Start a TLS server handshake on the stream; identity_fn picks the certificate per SNI.
   * Reads after this return plaintext. Since 1.7 also on a connection that arrived on a TLS
   * listener: the stream's TLS then runs inside the listener's (once per stream). */
  int (*stream_start_tls)(evs_stream *s, evs_tls_identity_fn identity_fn, void *arg);
  void (*stream_close)(evs_stream *s);

  /* The worker's libuv loop (uv_loop_t *), for plugins that need raw I/O. libuv 1.x keeps its
   * ABI stable; a plugin that uses it links libuv itself. */
  void *(*uv_loop)(evs_plugin *p);

  /* Read the whole request body (at most max_bytes; 0: limits.max_body_bytes) into memory and
   * call cb with it; -E2BIG if it is larger. For handlers that answer themselves (APIs). */
  int (*read_body)(evs_request *req, size_t max_bytes,
                   void (*cb)(void *arg, int status, const uint8_t *data, size_t len), void *arg);

  /* Append-only record streams (transaction and audit logs), shared by all workers and nodes.
   * stream is [A-Za-z0-9_.:/-]{1,64} and is prefixed with the plugin's name; json_record is one
   * JSON object (<= 1 MiB, never secrets). append checks and queues the record (stamped now)
   * and returns at once; the host writes queued records in batches within ~50 ms, off the loop
   * (-EAGAIN: the queue is full and the record was dropped). query delivers records newest
   * first, at most limit, with ts_ms >= since_ms, then once with json == NULL at the end; it
   * sees every record this worker appended, other workers' once written. */
  int (*store_append)(evs_plugin *p, const char *stream, const char *json_record);
  int (*store_query)(evs_plugin *p, const char *stream, int64_t since_ms, size_t limit,
                     void (*cb)(void *arg, int status, int64_t ts_ms, const char *json), void *arg);

  /* ---- ABI 1.1 ---- */
  /* Stream the request body into the plugin (see evs_body_data_fn). At most once per request,
   * and not together with read_body or a proxy that streams the client's body. */
  int (*request_body_read)(evs_request *req, evs_body_data_fn on_data, evs_body_end_fn on_end,
                           void *arg);
  void (*request_body_resume)(evs_request *req);
  /* First header of the upstream response with that name (case-insensitive), once its head has
   * arrived (i.e. from a response filter); 0 or -ENOENT. Valid until the request completes. */
  int (*response_header)(evs_request *req, const char *name, evs_header *ret);
  /* Ends a response held with EVS_FILTER_HOLD: status 0 completes it, negative aborts it (the
   * client connection closes). */
  int (*filter_end)(evs_request *req, int status);
  /* The response status sent to the client so far (0 before the head), and in *ret_code (if
   * not NULL) the documented error code when the response was an error from the host or a
   * plugin's respond_error (else NULL). Since 1.8 a code with a status below 400 means the
   * response was cut short after its head: the destination reset the connection or timed out
   * mid-body (service-unavailable, request-timeout). For LOG hooks: transaction logs and
   * alerts. */
  int (*response_status)(evs_request *req, const char **ret_code);

  /* ---- ABI 1.2 ---- */
  /* Node messages (init only): fn receives what this plugin's instances in the node's other
   * worker processes broadcast. */
  int (*node_subscribe)(evs_plugin *p, evs_node_msg_fn fn);
  /* Send msg (1..EVS_NODE_MSG_MAX bytes) to this plugin in every other live worker of the
   * node (all generations), through the master. done runs once, when each reached worker has
   * answered or after timeout_ms (1..60000). The message may be secret: the host never logs or
   * stores it, and wipes every copy it makes (here, in the master, in the receivers) as soon
   * as it has been passed on. Workers started later never see it. */
  int (*node_broadcast)(evs_plugin *p, const uint8_t *msg, size_t len, uint64_t timeout_ms,
                        evs_node_done_fn done, void *arg);
  /* Answer a received message (0: done, negative: failed). Exactly once per message. */
  void (*node_reply)(evs_node_msg *m, int status);

  /* An auxiliary store: the plugin's namespace in a second store, opened (and migrated) from
   * location, which is a PostgreSQL connection string ("postgresql://..." or "key=value ...")
   * or else the path of a SQLite file (its directory is created with mode 0700). Init only,
   * once per plugin; -EEXIST the second time. The calls below then work like store_get, _put
   * and _delete on it; -ENOTSUP before aux_store_open succeeded. */
  int (*aux_store_open)(evs_plugin *p, const char *location);
  int (*aux_store_get)(evs_plugin *p, const char *key, evs_store_cb cb, void *arg);
  int (*aux_store_put)(evs_plugin *p, const char *key, const uint8_t *value, size_t value_len,
                       evs_store_cb cb, void *arg);
  int (*aux_store_delete)(evs_plugin *p, const char *key, evs_store_cb cb, void *arg);

  /* ---- ABI 1.3 ---- */
  /* Kept descriptors. A worker has a rank in the node: the k-th worker of a generation has rank
   * k, and so have the worker that replaces it after a crash and the k-th worker of the next
   * generation (reload). keep_fd hands a duplicate of fd to the master, which holds it for this
   * plugin and rank under name ([a-z0-9_-]{1,63}), replacing what was kept under that name;
   * fd < 0 drops it. The master never reads or writes it; it closes it when the node stops or
   * when a reload leaves the rank with no worker. Only the current generation may keep: keep_fd
   * in a draining worker returns -EPERM. -ENOTCONN when there is no master (evserver -t).
   * kept_fd (init only) returns what a predecessor of this rank kept under name, now owned by
   * the caller (close it), or -ENOENT; the master keeps its own copy. Descriptors no plugin
   * took in init are closed after init. */
  int (*keep_fd)(evs_plugin *p, const char *name, int fd);
  int (*kept_fd)(evs_plugin *p, const char *name);

  /* ---- ABI 1.4 ---- */
  /* Only from evs_upstream.response_head: drops every field of that name (case-insensitive)
   * from the response head the client gets; response_header no longer finds them. Returns the
   * number of fields dropped (0 when there was none), or -EINVAL outside that callback.
   * Dropping Content-Length also drops the length of a response to HEAD (other responses
   * through a response filter never carry the destination's length). */
  int (*response_remove_header)(evs_request *req, const char *name);

  /* ---- ABI 1.6 ---- */
  /* Typed crypto and auth (see "Typed crypto and auth" above): forwarded to the registered
   * evs_crypto_provider. -EINVAL for a malformed request (NULL members, n out of range, a
   * request struct smaller than its 1.6 size); EVS_ENOCRYPTO when no provider is loaded. */
  int (*encrypt_values)(evs_plugin *p, const evs_encrypt_request *req, evs_values_cb cb,
                        void *arg);
  int (*decrypt_values)(evs_plugin *p, const evs_decrypt_request *req, evs_values_cb cb,
                        void *arg);
  int (*encrypt_file)(evs_plugin *p, const evs_file_request *req, evs_bytes_cb cb, void *arg);
  int (*decrypt_file)(evs_plugin *p, const evs_file_request *req, evs_bytes_cb cb, void *arg);
  int (*check_api_key)(evs_plugin *p, const evs_api_key_request *req, evs_api_key_cb cb,
                       void *arg);
  /* Init only: become the worker's typed crypto provider (ops is copied). -EEXIST when another
   * plugin already provides crypto. A provider usually registers the low-level
   * register_crypto_provider as well, for plugins built against older minors. */
  int (*register_crypto_provider2)(evs_plugin *p, const evs_crypto_provider *ops);

  /* 1.7: streams */
  /* Hand a taken-over stream back to the HTTP engine: from now on the connection is an HTTP
   * server connection again (inside the TLS started with stream_start_tls, if any; bytes that
   * already arrived count). Requests on it are parsed by the host's strict parser under the
   * listener's limits (head size and fields, body size, timeouts, keep-alive), and each one is
   * passed to svc->request(arg, req) as an evs_request on which respond, respond_error,
   * proxy (same upstream pool and TLS verification as any request), filters and LOG hooks
   * work as on a listener. The taken-over CONNECT/Upgrade request completes now (its log line
   * and LOG hooks run); request_info of the inner requests names the same listener, with tls
   * and sni those of the stream's TLS. On success the stream handle belongs to the host: do
   * not use it again; svc->closed(arg) runs once when the connection ends. Returns 0,
   * -EINVAL (bad svc, a stream not from takeover, reads started), -ECONNRESET (gone). svc is
   * copied. */
  int (*stream_serve_http)(evs_stream *s, const evs_http_service *svc, void *arg);
  /* For a request parsed on a stream served with stream_serve_http: the request-target of the
   * CONNECT request that opened the tunnel (its authority, "host:port"), NUL-terminated and
   * valid as long as req; NULL for every other request. */
  const char *(*request_tunnel)(evs_request *req);
  /* Open a client stream to opts->host:opts->port, optionally TLS-verified (see
   * evs_stream_connect), and call cb once with it. The stream is read, written and closed
   * with stream_read_start, stream_read_stop, stream_write and stream_close (stream_start_tls
   * and stream_serve_http do not apply: -EINVAL). stream_close before cb ran cancels the
   * connect: cb then never runs. Returns the stream handle (for cancelling), or NULL on a bad
   * argument or no memory: cb never runs. Not pooled: one connection per call. */
  evs_stream *(*stream_connect)(evs_plugin *p, const evs_stream_connect *opts,
                                evs_stream_connect_fn cb, void *arg);
  /* 1.7: helper processes */
  /* Starts a helper (see evs_helper_spec) or re-attaches to this rank's kept one. On success
   * (0, *ret set) the process runs and helper_fd gives its socket at once; cb then reports
   * STARTED on a later turn and every later change. Fails with -EINVAL (a bad spec, an unknown
   * policy), -ENOENT or -EACCES (the executable), -EPERM (a namespace the kernel refused, not
   * optional; the host logs which), or another negative errno; the host logs the cause once.
   * The handle is the plugin's until helper_stop; at unload (after fini) the host stops the
   * plugin's helpers that are not kept and lets kept ones run for the next worker. */
  int (*helper_spawn)(evs_plugin *p, const evs_helper_spec *spec, evs_helper_event_fn cb,
                      void *arg, evs_helper **ret);
  /* The host's end of the socketpair to the running process (owned by the host, valid until
   * the next EXITED event), or -1 while none runs. */
  int (*helper_fd)(evs_helper *h);
  /* The running process's pid, or 0. */
  int (*helper_pid)(evs_helper *h);
  /* Sends sig to the running process (-ESRCH if none). It restarts as after any exit. */
  int (*helper_kill)(evs_helper *h, int sig);
  /* Stops the helper (SIGTERM, SIGKILL after 2 s), drops it from the rank if it was kept, and
   * frees the handle: no callback runs after. Accepts NULL. */
  void (*helper_stop)(evs_helper *h);
  /* 1.7: routes */
  /* Init only (-EPERM later): register a route (see evs_route). Returns 0, -EINVAL for a
   * malformed route (size smaller than 1.7's, a bad role, host pattern, method or prefix, no
   * handler), -EEXIST when this plugin already registered the same role, host, method and
   * prefix, -ENOMEM. A failed init drops the routes it registered. The route table is listed by
   * the admin endpoint GET /routes (`evctl routes`). */
  int (*add_route)(evs_plugin *p, const evs_route *route);
  /* 1.7: certificates */
  /* A leaf certificate for req->names and req->public_key_pem, signed by the node's current
   * relay CA (see "Certificates"). cb: PEM chain, leaf then the CA that signed it; statuses
   * evs_crypto_status (e.g. EVS_CRYPTO_UNAVAILABLE when no CA exists yet). Returns -EINVAL for
   * a malformed request (size smaller than 1.7's, no names or more than EVS_CERT_MAX_NAMES, a
   * NULL name or key), EVS_ENOCRYPTO without a provider, -ENOTSUP when the provider has no
   * certificates. */
  int (*issue_certificate)(evs_plugin *p, const evs_cert_request *req, evs_bytes_cb cb, void *arg); /* cb: PEM chain, leaf then the CA that signed it; statuses evs_crypto_status (e.g. EVS_CRYPTO_UNAVAILABLE when no CA exists yet) */
  /* The PEM bundle clients should trust (current CA, then older ones still valid);
   * EVS_CRYPTO_UNAVAILABLE when no CA exists. Answered from memory (no enclave round trip). */
  int (*ca_certificates)(evs_plugin *p, evs_bytes_cb cb, void *arg); /* PEM bundle clients should trust (current CA, then older ones still valid) */
  /* 1.8: the connection closes once this request's response is sent (its head says
   * `Connection: close`), whatever keep-alive would allow: for an answer after which the
   * connection must not be used again (a tunnel whose key was revoked). Before the head goes
   * out: 0; -EALREADY after. */
  int (*response_close)(evs_request *req);
  /* 1.8: stream write backpressure. stream_write copies into the connection's write queue at
   * once, so a fast reader could grow it without bound: stream_write_queued gives the bytes
   * queued and not yet written to the socket (0 for a closed stream); a relaying plugin stops
   * reading its source while that is above EVS_STREAM_HIGH_WATER. stream_on_drain sets (cb
   * NULL: clears) the callback that runs, with status 0, each time the queue falls below
   * EVS_STREAM_LOW_WATER after having been at or above it; then resume reading. -EINVAL for a
   * closed stream. */
  size_t (*stream_write_queued)(evs_stream *s);
  int (*stream_on_drain)(evs_stream *s, evs_stream_write_fn cb, void *arg);
  /* 1.9: durable transaction records. store_append_request appends like store_append (same
   * stream names, record rules and queue) and binds the record to req: the host sends the
   * end of req's response (its last body byte, its final chunk, or its head when it has no
   * body) only once the record is committed to the store, in a batch that starts as soon as
   * the store is free (group commit), so a client never holds a complete response whose
   * record a crash of the node could lose. Call it before the response ends (from an
   * EVS_PHASE_END hook, or earlier); several records may be bound to one request. A record
   * the store does not take within [store] record_timeout (the store unreachable), or
   * refuses, costs the response its end: the connection closes without it, and the record
   * stays queued to be written when the store is back. Returns 0; -EALREADY when the
   * response's end has gone out and -ECONNRESET when the client is gone (the record is
   * queued all the same, written behind); the errors of store_append otherwise (nothing
   * queued; when the queue is full (-EAGAIN) or memory ran out, the response loses its end
   * too: it is not acknowledged without its record). */
  int (*store_append_request)(evs_plugin *p, evs_request *req, const char *stream,
                              const char *json_record);
  /* 1.9: 0 while the store takes records; -ENOTCONN while it does not (a batch failed because
   * the store is unreachable and waits to be written again): a handler whose response needs a
   * record answers 503 `service-unavailable` up front rather than do work it cannot record;
   * -ENOTSUP without a store. */
  int (*store_append_ready)(evs_plugin *p);
  /* 1.9: create-only store_put: writes only if the key is absent or expired, else status
   * -EEXIST and nothing written. Atomic like store_delete: of concurrent creators of one key
   * (any workers, any nodes sharing PostgreSQL) exactly one is told 0. cb NULL: done when it
   * returns (the result is the return value), as store_put. */
  int (*store_put_new)(evs_plugin *p, const char *key, const uint8_t *value, size_t value_len,
                       uint64_t ttl_s, evs_store_cb cb, void *arg);
  /* 1.9: init only (-EPERM later). On TLS listeners that serve `role`, a client whose SNI name
   * ends in "." host_suffix (any number of labels before it) is offered to fn first, during
   * the handshake and on the loop thread: fn fills the identity (as for stream_start_tls;
   * give it a cache_key, so the host builds the TLS context once) and returns 0, or returns
   * negative and the listener's own certificates apply. fn must answer at once from memory.
   * Returns 0, -EINVAL (bad role or suffix, no fn), -ENOMEM. */
  int (*add_tls_identity)(evs_plugin *p, const char *role, const char *host_suffix,
                          evs_tls_identity_fn fn, void *arg);
  /* 1.9: adds a field to the response head this request will send, whichever sends it
   * (respond, respond_error, or the proxied response, where it follows the destination's
   * fields): x-evervault-cage-ctx on every answer of a cage. Before the head goes out (also
   * from evs_upstream.response_head); -EALREADY after. -EINVAL for a name that is not a
   * token, a framing field (Content-Length, Transfer-Encoding, Connection, Date), a value
   * with control characters, or more than 16 KiB of added fields. Copied. */
  int (*response_add_header)(evs_request *req, const char *name, const char *value);
  /* 1.9: init only (-EPERM later). On TLS listeners that serve `role`, the host reads each
   * client's ClientHello before its own handshake (within limits.header_timeout and one TLS
   * record); when its SNI name ends in "." host_suffix, fn decides (evs_tls_passthrough_fn).
   * A ClientHello without SNI, split over records or not TLS goes to the listener's TLS as
   * usual. Returns 0, -EINVAL (bad role or suffix, no fn), -ENOMEM. */
  int (*add_tls_passthrough)(evs_plugin *p, const char *role, const char *host_suffix,
                             evs_tls_passthrough_fn fn, void *arg);
} evs_host;

/* ABI 1.8: the write-queue marks of stream_write_queued and stream_on_drain. */
#define EVS_STREAM_HIGH_WATER (256u * 1024u)
#define EVS_STREAM_LOW_WATER (64u * 1024u)

#ifdef __cplusplus
}
#endif
#endif
