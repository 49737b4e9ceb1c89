/*
 * The worker process: its loop, listeners, connections, requests and the state plugins see.
 * Shared by server.c (client connections), upstream.c (proxying), plugin.c (loader and the
 * evs_host table), admin.c (the admin endpoints) and worker.c (start, drain, stop).
 */
#ifndef EVS_CORE_WORKER_H
#define EVS_CORE_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "conf.h"
#include "evserver/evs_plugin.h"
#include "http_parse.h"
#include "io.h"
#include "store.h"
#include "tls.h"

typedef struct evs__conn evs__conn;
typedef struct evs__proxy evs__proxy;
typedef struct evs__plugin_rec evs__plugin_rec;

/* A listening socket as the master opened it; workers inherit the fd. */
typedef struct evs__listen_sock {
  char *name;
  int fd;
  int is_admin;              /* the admin Unix socket */
  int tls;
  const evs__listener_conf *conf;
  /* The listener's TLS contexts, built by the master (owner) before it forks: the private keys
   * are read as root, so they can stay readable by root alone, never by the workers' user.
   * Workers use their inherited copy. NULL for plain listeners. */
  evs__tls_server *tls_server;
} evs__listen_sock;

typedef struct evs__listener {
  uv_tcp_t tcp;              /* or pipe for admin (same first member layout via union) */
  uv_pipe_t pipe;
  const evs__listen_sock *sock;
  evs__tls_server *tls;
  int own_tls;               /* tls was built here (no master: tests), so freed here */
  int closed;
} evs__listener;

typedef struct evs__hook {
  evs__plugin_rec *plugin;
  evs_phase phase;
  evs_hook_fn fn;
} evs__hook;

/* A descriptor the master keeps for a rank (ABI keep_fd/kept_fd; node.c, master.c). */
typedef struct evs__kept_fd {
  int rank;
  char plugin[64];
  char name[64];
  int fd;
} evs__kept_fd;
#define EVS__KEPT_MAX 256 /* per node */

typedef struct evs__worker {
  uv_loop_t *loop;
  const evs__settings *settings;
  evs__listen_sock *socks;
  size_t nsocks;
  evs__listener *listeners;
  int slot;                  /* metrics slot */
  int rank;                  /* place in the generation, inherited by replacements (keep_fd) */
  unsigned generation;
  int nworkers;
  evs__conn *conns;          /* all open client connections */
  size_t nconns;
  size_t npublic;            /* connections on public listeners (not admin) */
  int draining;
  uv_timer_t drain_timer;
  uv_signal_t sig_term, sig_quit, sig_int;
  evs__plugin_rec *plugins;  /* loaded, in load order */
  size_t nplugins;
  evs__hook *hooks;
  size_t nhooks;
  evs__store *store;
  struct evs__appendq *appendq; /* stream appends, written behind (appendq.c) */
  uint64_t request_seq;
  char id_prefix[9];
  uint64_t started_ms;
  int ready_fd;              /* pipe to the master: one byte when ready */
  int ctl_fd;                /* node channel to the master (node.c), -1 when none */
  evs__kept_fd *kept;        /* this rank's kept descriptors, until plugins take them in init */
  size_t nkept;
  int first_of_generation;   /* logs what every worker of the generation would log alike */
  int plugin_init_failures;  /* plugins whose init returned an error */
} evs__worker;

extern evs__worker *evs__w;  /* the worker of this process */

/* Stream appends, written behind in batches (appendq.c). add checks and queues a record;
 * sync writes the queue and waits for the batch in flight (before a query); close writes
 * what is left, after the loop ended and before the store closes. */
typedef struct evs__appendq evs__appendq;
int evs__appendq_init(evs__worker *w);
int evs__appendq_add(evs__worker *w, const char *plugin, const char *stream, const char *json);
void evs__appendq_sync(evs__worker *w);
void evs__appendq_close(evs__worker *w);

/* A header edit queued by a plugin for the proxied request. */
typedef struct evs__edit {
  char *name;
  char *value; /* NULL: remove */
} evs__edit;

typedef struct evs__pdata {
  evs__plugin_rec *plugin;
  void *data;
  void (*free_fn)(void *);
} evs__pdata;

/* Where request body bytes go. data returns 1 to ask the connection to pause reading; the sink
 * calls evs__request_body_resume later. end(NULL error) or end(err). */
typedef struct evs__body_sink {
  int (*data)(evs_request *req, const char *data, size_t len);
  void (*end)(evs_request *req, int status);
} evs__body_sink;

struct evs_request {
  evs__conn *conn;           /* NULL once the client connection is gone */
  evs_request_info info;
  char *head;                /* copy of the request head bytes */
  evs__http_head h;
  evs__http_field *fields;
  char *strings;             /* method, target, path, query, host (one allocation) */
  char request_id[24];
  char client_addr[64];
  uint64_t start_ns;
  evs__edit *edits;
  size_t nedits;
  evs__pdata *pdata;
  size_t npdata;
  /* Body. */
  int has_body;
  uint64_t body_remaining;   /* for Content-Length bodies */
  evs__http_chunked chunked;
  uint64_t body_received;
  int body_done;
  const evs__body_sink *sink;
  void *sink_arg;
  int paused;
  int continue_sent;
  /* read_body collector. */
  char *rb_buf;
  size_t rb_len, rb_cap, rb_max;
  int rb_overflow;
  void (*rb_cb)(void *arg, int status, const uint8_t *data, size_t len);
  void *rb_arg;
  /* Response. */
  int status;
  int head_sent;
  int response_done;
  int chunked_out;
  int close_after;
  uint64_t bytes_out;
  const char *error_code;    /* documented code, if the host answered with one */
  evs__plugin_rec *handler;  /* plugin that took the request */
  evs__proxy *proxy;
  void (*on_client_drain)(evs_request *req);
  void (*on_abort)(evs_request *req); /* client went away */
  int handled;
  int finished;
  int holds;                 /* code on the stack (or a deferred callback) still uses it */
  int taken_over;
};

/* ---- server.c ---------------------------------------------------------------------------- */
int evs__server_listen(evs__worker *w);
void evs__server_stop_accepting(evs__worker *w);
/* Close keep-alive connections idle for at least min_idle_ms; connections with a request in
 * flight close after it (draining workers answer with Connection: close). Waiting a little
 * before closing an idle connection avoids racing a client that is sending its next request. */
void evs__server_close_idle(evs__worker *w, uint64_t min_idle_ms);
void evs__server_free_tls(evs__worker *w);
/* In a child of `evserver -t`: initialise and finalise every plugin once; 0 if all succeeded. */
int evs__worker_check_plugins(const evs__settings *s);
/* Run a worker process until it has drained; returns the exit status. */
int evs__worker_run(const evs__settings *s, evs__listen_sock *socks, size_t nsocks, int slot,
                    int rank, unsigned generation, int nworkers, int first_of_generation,
                    int ready_fd, int ctl_fd, evs__kept_fd *kept, size_t nkept);
void evs__server_close_all(evs__worker *w);

/* Responses. content_length < 0: unknown (chunked to HTTP/1.1 clients, close-delimited to 1.0).
 * headers must not contain hop-by-hop or framing fields. */
int evs__response_start(evs_request *req, int status, const evs_header *headers, size_t n,
                        int64_t content_length);
int evs__response_body(evs_request *req, const void *data, size_t len);
int evs__response_end(evs_request *req);
/* Whole response in one call. */
int evs__respond(evs_request *req, int status, const evs_header *headers, size_t n,
                 const void *body, size_t len);
int evs__respond_error(evs_request *req, int status, const char *code, const char *detail);
/* True if the client's write queue is above the high-water mark. */
int evs__response_congested(evs_request *req);
/* The client connection's stream, or NULL once it is gone (valid until the next loop turn). */
evs__io *evs__request_io(evs_request *req);
/* Abort: the response cannot be completed (upstream failed mid-body): close the client. */
void evs__request_abort(evs_request *req);

/* Body: attach a sink (starts reading the body; sends 100 Continue if the client asked). */
int evs__request_body_attach(evs_request *req, const evs__body_sink *sink, void *arg);
void evs__request_body_resume(evs_request *req);
/* The proxy drops its reference to a request; frees it if the request already finished. */
void evs__request_release(evs_request *req);
/* Keep a request's memory alive across calls that may complete it (a hook that answers at
 * once, a deferred callback): it is freed at the last unhold if it finished meanwhile. */
void evs__request_hold(evs_request *req);
void evs__request_unhold(evs_request *req);

const char *evs__status_text(int status);

/* ---- upstream.c -------------------------------------------------------------------------- */
int evs__proxy_start(evs_request *req, const evs_upstream *up, evs_body_filter_fn req_filter,
                     evs_body_filter_fn resp_filter, void *filter_arg, evs__plugin_rec *p);
int evs__proxy_filter_emit(evs_request *req, const uint8_t *data, size_t len);
/* Ends a response held by a response filter (EVS_FILTER_HOLD). */
int evs__proxy_filter_end(evs_request *req, int status);
/* A header of the upstream response being proxied, once its head arrived. */
int evs__proxy_response_header(evs_request *req, const char *name, evs_header *ret);
/* ABI 1.4: from evs_upstream.response_head: drops fields from the head the client gets;
 * returns how many, or -EINVAL outside that callback. */
int evs__proxy_response_remove_header(evs_request *req, const char *name);
int evs__client_request(evs__plugin_rec *p, const evs_client_request *creq, evs_client_cb cb,
                        void *arg);
void evs__upstream_pool_close_all(void);

/* ---- plugin.c ---------------------------------------------------------------------------- */
struct evs__plugin_rec {
  char *file;
  char *name;
  const evs_plugin_descriptor *desc;
  void *handle;              /* lt_dlhandle */
  void *state;
  const evs__conf_section *section;
  int loaded;
  char *reason;              /* why it was rejected */
  evs_crypto_provider_fn crypto;
  evs_crypto_provider crypto2; /* register_crypto_provider2 (size 0: none) */
  struct evs__subscription *subs;
  int in_init;
  evs_node_msg_fn node_fn;   /* node_subscribe */
  evs__store *aux_store;     /* aux_store_open */
};

/* Scan the plugins directory and check each plugin's descriptor and configuration section,
 * without running plugin code. Rejections are logged (one line each) and kept in *ret with
 * loaded == 0. Returns the number of plugins found, or -1 on a fatal error (unreadable dir). */
int evs__plugins_scan(const evs__settings *s, evs__plugin_rec **ret, size_t *ret_n);
/* In a worker: scan, then init each acceptable plugin. */
int evs__plugins_load(evs__worker *w);
void evs__plugins_unload(evs__worker *w);
void evs__plugins_free(evs__plugin_rec *p, size_t n);
/* Run the hooks of a phase; for ROUTE returns 1 if a plugin took the request. */
int evs__plugins_run_hooks(evs__worker *w, evs_phase phase, evs_request *req);
/* A configuration section mentions a plugin that is not in plugins.d: for `-t`. */
int evs__plugins_check_sections(const evs__settings *s, const evs__plugin_rec *p, size_t n,
                                char *err, size_t errlen);
void evs__request_free_pdata(evs_request *req);

/* ---- node.c: messages between the workers of a node, relayed by the master ----------------
 * One SOCK_SEQPACKET socketpair per worker; the master forwards a BCAST to every other worker
 * and tells the sender how many it reached (COUNT); receivers answer with a REPLY addressed to
 * the sender's slot. Payloads may be secret: every buffer that held one is wiped. */
enum { EVS__NODE_BCAST = 1, EVS__NODE_COUNT = 2, EVS__NODE_REPLY = 3 };
/* KEEP (worker to master): payload = the name; one descriptor as SCM_RIGHTS, or none to drop. */
enum { EVS__NODE_KEEP = 4 };
typedef struct evs__node_hdr {
  uint8_t type;
  uint8_t pad[3];
  uint32_t seq;       /* chosen by the sender */
  int32_t origin;     /* the sender's slot (the master sets it on BCAST) */
  int32_t value;      /* COUNT: workers reached; REPLY: status */
  char plugin[64];    /* NUL-terminated plugin name */
} evs__node_hdr;
#define EVS__NODE_DGRAM_MAX (sizeof(evs__node_hdr) + EVS_NODE_MSG_MAX)

int evs__node_start(evs__worker *w);
/* Drops pending broadcasts (their done never runs) and unanswered messages; closes the fd. */
void evs__node_stop(evs__worker *w);
int evs__node_broadcast(evs__plugin_rec *p, const uint8_t *msg, size_t len, uint64_t timeout_ms,
                        evs_node_done_fn done, void *arg);
void evs__node_reply(evs_node_msg *m, int status);
int evs__node_keep_fd(evs__plugin_rec *p, const char *name, int fd);
int evs__node_kept_fd(evs__plugin_rec *p, const char *name);
/* Closes the kept descriptors no plugin took (after init). */
void evs__node_kept_close_rest(evs__worker *w);

/* ---- admin.c ----------------------------------------------------------------------------- */
/* Serve a request that arrived on the admin socket. */
void evs__admin_handle(evs__worker *w, evs_request *req);

/* ---- util -------------------------------------------------------------------------------- */
uint64_t evs__now_ns(void);

#endif
