/*
 * One client request as the host holds it (struct evs_request, opaque to plugins), and the
 * calls that answer it and read its body (server.c).
 */
#ifndef EVS_CORE_REQUEST_H
#define EVS_CORE_REQUEST_H

#include <stdint.h>

#include "evserver/evs_plugin.h"
#include "http_parse.h"
#include "io.h"
#include "worker.h"

typedef struct evs__proxy evs__proxy;

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
  char *extra_out;           /* ABI 1.9 response_add_header: "name: value\r\n" lines */
  size_t extra_out_len;
  uint64_t bytes_out;
  int64_t out_left;          /* body bytes the head announced and not yet written; -1: unknown */
  uint64_t record_seq;       /* the last record bound to the response (store_append_request) */
  int end_sent;              /* the response's end went to the client (or never will) */
  int end_bound;             /* the END hooks ran: a record bound later would not be waited for */
  int record_lost;           /* a record for it could not be queued: its end must not leave */
  const char *error_code;    /* documented code, if the host answered with one */
  evs__plugin_rec *handler;  /* plugin that took the request */
  evs__proxy *proxy;
  void (*on_client_drain)(evs_request *req);
  void (*on_abort)(evs_request *req); /* client went away */
  int handled;
  int finished;
  int holds;                 /* code on the stack (or a deferred callback) still uses it */
  int taken_over;
  char *tunnel;              /* CONNECT authority of a served stream (stream.c), owned */
};

/* Responses. content_length < 0: unknown (chunked to HTTP/1.1 clients, close-delimited to 1.0).
 * headers must not contain hop-by-hop or framing fields. */
int evs__response_start(evs_request *req, int status, const evs_header *headers, size_t n,
                        int64_t content_length);
int evs__response_body(evs_request *req, const void *data, size_t len);
/* Ends the response. Since ABI 1.9 the END hooks run first; if a transaction record is bound
 * to the response (evs__request_bind_record) and not yet committed, the response's last bytes
 * (the last body byte, the final chunk, or a bodyless head) wait for the commit, at most
 * [store] record_timeout: then the connection closes without them. */
int evs__response_end(evs_request *req);
/* store_append_request: 1 while a record can still be bound to the response (its END hooks
 * have not finished), else 0; then evs__request_bind_record makes its end wait for seq. */
int evs__request_can_bind(const evs_request *req);
int evs__request_bind_record(evs_request *req, uint64_t seq);
/* Whole response in one call. */
int evs__respond(evs_request *req, int status, const evs_header *headers, size_t n,
                 const void *body, size_t len);
int evs__respond_error(evs_request *req, int status, const char *code, const char *detail);
/* The documented 404 of a listener role when nothing took the request (server.c): relay:
 * `relay-not-found`; api, admin and plugin roles: `resource-not-found`. */
void evs__respond_not_found(evs_request *req, const char *role);
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

#endif
