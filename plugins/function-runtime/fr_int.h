/*
 * fr_int.h: what the function-runtime plugin's files share (function_runtime.c: routes,
 * auth, run tokens, records, admin endpoints; fr_box.c: boxes, pools, the channel). Not
 * installed, not seen by other plugins.
 */
#ifndef EVS_FR_INT_H
#define EVS_FR_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "evserver/evs_plugin.h"
#include "fn_token.h"

#define FR_NAME_MAX 64
#define FR_ID_MAX 48

typedef struct fr_state fr_state;
typedef struct fr_run fr_run;
typedef struct fr_pool fr_pool;
typedef struct fr_box fr_box;
typedef struct fr_egress fr_egress;

struct fr_state {
  const evs_host *h;
  evs_plugin *p;
  void *loop; /* uv_loop_t */
  const char *fnbox, *node, *python;
  char code_dir_base[4096]; /* code_dir: where versions are unpacked on this node */
  char node_version[32], python_version[32]; /* "20.20.2", "3.11.7"; "" when not found */
  int node_major, python_minor;
  int64_t pool_max, idle_ms, start_timeout_ms, sync_timeout_ms, max_payload, token_ttl_s,
      run_ttl_s, log_max, tmp_size, memory_max, max_code;
  const char *team_uuid, *activity_url;
  int egress_on, egress_allow_private, python_rlimit_as, prewarm;
  char egress_dir[96];
  fr_pool *pools;
  fr_run *runs; /* every run in flight */
  evs_timer *reaper;
  struct fr_admin *lock_waiters; /* admin calls waiting to retry a Function's write lock */
  int stopping;
  /* Objects alive that a callback may still reach (runs, requests' contexts, crypto jobs,
   * boxes). After fini (stopping) the state stays until the last of them is released: the
   * enclave plugin, unloaded after this one, fails its pending calls into us. */
  int live, orphan;
};

/* One run, from the request (or async start) to its record. */
struct fr_run {
  fr_state *st;
  fr_run *next_live, *next_queued;
  evs_request *req; /* NULL once answered, gone or async */
  int refs;
  int admin, async, token, answered, done, cold;
  char id[FR_ID_MAX];
  char app[FN_APP_MAX + 1];
  char name[FR_NAME_MAX + 1];
  char request_id[80];
  fn_auth auth;
  char token_digest[65];
  json_t *body;    /* the request body */
  json_t *fn;      /* the function's record */
  json_t *payload; /* decrypted: plaintext, dropped as soon as it is sent */
  json_t *logs;    /* console output, bounded by log_max */
  size_t log_bytes;
  int log_cut;
  int64_t created_ms, started_ms;
  /* An answer held until the run's record is in the store (run_hold, run_flush). */
  int held, held_http;
  json_t *held_obj;
  const char *held_code; /* static, as every error code: the host keeps the pointer */
  char *held_detail;
  evs_timer *timer;
  fr_box *box;
  fr_pool *pool;
};

/* fr_box.c */
int fr_pool_submit(fr_state *st, fr_run *r);     /* queues r on its function's pool */
/* Starts one box for the Function of record fn if its pool in this worker has none. */
int fr_pool_warm(fr_state *st, const char *app, const char *name, json_t *fn);
void fr_pools_free(fr_state *st);                  /* fini: stop every box */
void fr_pools_reap(fr_state *st);                  /* idle boxes past idle_ms */
void fr_box_abandon(fr_run *r);                    /* timeout: kill r's box */
void fr_rm_tree(const char *dir);

/* fr_egress.c: the box's CONNECT proxy on a unix socket (NULL: could not listen). */
fr_egress *fr_egress_open(fr_state *st, const json_t *allow, const char *label);
const char *fr_egress_path(const fr_egress *eg);
void fr_egress_close(fr_egress *eg); /* accepts NULL; connections end, memory goes later */                  /* rm -r without following links */

/* function_runtime.c, for fr_box.c */
/* The run ended: status "success"/"failure" with result or error (consumed references), or an
 * error code (http >= 400, then code and detail). */
void fr_run_finish(fr_run *r, const char *status, json_t *result, json_t *error, int http,
                   const char *code, const char *detail);
void fr_run_log(fr_run *r, const char *stream, const char *text, size_t len);
void fr_run_started(fr_run *r);
int64_t fr_now_ms(void);
void fr_live(fr_state *st, int delta); /* may free st (after fini): last use of st */

#endif
