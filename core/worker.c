/*
 * A worker process: one libuv loop serving client connections on the listening sockets it
 * inherited from the master. Started by fork() from master.c; on SIGTERM or SIGQUIT it stops
 * accepting, lets in-flight requests finish (up to limits.drain_timeout), then exits.
 */
#include <errno.h>
#include <malloc.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "appendq.h"
#include "storeq.h"
#include "host.h"
#include "io.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "plugin.h"
#include "server.h"
#include "stream.h"
#include "upstream.h"
#include "worker.h"

evs__worker *evs__w;

#define DRAIN_TICK_MS 200
#define DRAIN_IDLE_GRACE_MS 1000

static int finished; /* ends evs__io_edge_run (uv_stop ends only the turn it is in) */

static void finish(evs__worker *w) {
  finished = 1;
  uv_timer_stop(&w->drain_timer);
  evs__server_close_all(w);
  evs__streams_stop();
  evs__upstream_pool_close_all();
  uv_stop(w->loop);
}

static void drain_tick(uv_timer_t *t) {
  evs__worker *w = t->data;
  uint64_t elapsed = uv_now(w->loop) - w->started_ms;
  (void)elapsed;
  evs__server_close_idle(w, DRAIN_IDLE_GRACE_MS);
  if (w->nconns == 0) finish(w);
}

static uint64_t drain_started;

static void drain_deadline(uv_timer_t *t) {
  evs__worker *w = t->data;
  if (w->nconns > 0)
    EVS_LOG_WARN("EVS-1501", "drain timeout: closing %zu connection(s) with requests in flight",
                 w->nconns);
  finish(w);
}

static uv_timer_t deadline_timer;

static void on_stop_signal(uv_signal_t *h, int signum) {
  evs__worker *w = h->data;
  if (w->draining) return;
  w->draining = 1;
  drain_started = uv_now(w->loop);
  EVS_LOG_INFO("EVS-1502", "draining (%s): %zu connection(s) open", signum == SIGQUIT ? "reload" : "stop",
               w->nconns);
  evs__server_stop_accepting(w);
  evs__host_emit_draining(signum == SIGQUIT ? "reload" : "stop");
  uv_timer_start(&w->drain_timer, drain_tick, 0, DRAIN_TICK_MS);
  uv_timer_start(&deadline_timer, drain_deadline, (uint64_t)w->settings->drain_timeout_ms, 0);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

int evs__worker_run(const evs__settings *s, evs__listen_sock *socks, size_t nsocks, int slot,
                    int rank, unsigned generation, int nworkers, int first_of_generation,
                    int ready_fd, int ctl_fd, evs__kept_fd *kept, size_t nkept) {
  static evs__worker worker;
  evs__worker *w = &worker;
  evs__w = w;
  evs__log_set_role("worker");
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, SIG_IGN); /* Ctrl-C reaches the whole group: the master decides. */
  signal(SIGHUP, SIG_IGN);
  /* Requests allocate and free buffers of tens of KiB. By default glibc hands the top of the
   * heap back once 128 KiB of it are free and takes it again on the next request: a brk, page
   * faults and a TLB flush on every thread's CPU, per request. Keep up to 16 MiB instead. */
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);

  w->loop = uv_default_loop();
  w->settings = s;
  w->socks = socks;
  w->nsocks = nsocks;
  w->slot = slot;
  w->rank = rank;
  w->kept = kept;
  w->nkept = nkept;
  w->generation = generation;
  w->nworkers = nworkers;
  w->ready_fd = ready_fd;
  w->ctl_fd = ctl_fd;
  w->first_of_generation = first_of_generation;
  w->started_ms = uv_now(w->loop);
  unsigned char rnd[4];
  RAND_bytes(rnd, sizeof rnd);
  snprintf(w->id_prefix, sizeof w->id_prefix, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
  evs__metrics_use_slot(slot);

  uv_timer_init(w->loop, &w->drain_timer);
  w->drain_timer.data = w;
  uv_timer_init(w->loop, &deadline_timer);
  deadline_timer.data = w;
  uv_signal_init(w->loop, &w->sig_term);
  uv_signal_init(w->loop, &w->sig_quit);
  w->sig_term.data = w->sig_quit.data = w;
  uv_signal_start(&w->sig_term, on_stop_signal, SIGTERM);
  uv_signal_start(&w->sig_quit, on_stop_signal, SIGQUIT);

  evs__store_options so = {s->store_backend, s->store_path, s->store_dsn};
  char err[512];
  if (evs__store_open(&so, &w->store, err, sizeof err) < 0) {
    EVS_LOG_ERR("EVS-1503", "store (%s): %s", s->store_backend, err);
    w->store = NULL; /* plugins see -ENOTSUP from store calls */
  } else if (evs__appendq_init(w, &so) < 0 || evs__storeq_init(w) < 0) {
    EVS_LOG_ERR("EVS-1503", "store: out of memory");
    return 1;
  }
  evs__plugins_load(w);
  evs__node_kept_close_rest(w);
  if (evs__node_start(w) < 0)
    EVS_LOG_WARN("EVS-1508", "node channel unavailable: plugins reach only this worker");
  if (evs__server_listen(w) < 0) {
    EVS_LOG_ERR("EVS-1504", "worker cannot listen; exiting");
    return 1;
  }
  char one = w->plugin_init_failures ? 'P' : 'R'; /* 'P': serving without a failed plugin */
  if (ready_fd >= 0) {
    ssize_t wr = write(ready_fd, &one, 1);
    (void)wr;
    close(ready_fd);
  }
  EVS_LOG_DEBUG("EVS-1505", "worker ready (slot %d, generation %u)", slot, generation);
  evs__io_edge_run(w->loop, &finished);

  evs__plugins_unload(w);
  evs__node_stop(w); /* after fini: a plugin may still answer node messages there */
  evs__storeq_stop(w); /* what fini queued is written; nobody is answered any more */
  evs__server_free_tls(w);
  uv_walk(w->loop, close_walk, NULL);
  uv_run(w->loop, UV_RUN_DEFAULT);
  uv_loop_close(w->loop);
  evs__tls_client_cache_clear();
  evs__storeq_close(w);
  evs__appendq_close(w);
  evs__store_close(w->store);
  EVS_LOG_DEBUG("EVS-1506", "worker exiting");
  return 0;
}

int evs__worker_check_plugins(const evs__settings *s) {
  static evs__worker worker;
  evs__worker *w = &worker;
  evs__w = w;
  evs__log_set_role("check");
  w->loop = uv_default_loop();
  w->settings = s;
  w->nworkers = 1;
  w->first_of_generation = 1;
  w->ctl_fd = -1;
  evs__plugins_load(w);
  int failures = w->plugin_init_failures;
  evs__plugins_unload(w);
  uv_walk(w->loop, close_walk, NULL);
  uv_run(w->loop, UV_RUN_DEFAULT);
  return failures;
}
