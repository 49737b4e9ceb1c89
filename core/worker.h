/*
 * The worker process: its loop, listeners, connections, plugins and store (evs__worker, one per
 * process, reached through evs__w). Every core module of a worker reads it; each module's own
 * types and calls are in its header (server.h, request.h, upstream.h, proxy.h, client.h, plugin.h,
 * host.h, node.h, admin.h, appendq.h).
 */
#ifndef EVS_CORE_WORKER_H
#define EVS_CORE_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "conf.h"
#include "store.h"

typedef struct evs__conn evs__conn;
typedef struct evs__plugin_rec evs__plugin_rec;
typedef struct evs__listen_sock evs__listen_sock;
typedef struct evs__listener evs__listener;
typedef struct evs__hook evs__hook;
typedef struct evs__route evs__route;
struct evs__appendq;
struct evs__storeq;

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
  evs__route *routes;        /* ABI 1.7 add_route, most specific first (route.h) */
  size_t nroutes;
  evs__store *store;
  struct evs__appendq *appendq; /* stream appends, written in batches (appendq.c) */
  struct evs__storeq *storeq;   /* key-value calls, on the store lane (storeq.c) */
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

/* In a child of `evserver -t`: initialise and finalise every plugin once; 0 if all succeeded. */
int evs__worker_check_plugins(const evs__settings *s);
/* Run a worker process until it has drained; returns the exit status. */
int evs__worker_run(const evs__settings *s, evs__listen_sock *socks, size_t nsocks, int slot,
                    int rank, unsigned generation, int nworkers, int first_of_generation,
                    int ready_fd, int ctl_fd, evs__kept_fd *kept, size_t nkept);

uint64_t evs__now_ns(void);

#endif
