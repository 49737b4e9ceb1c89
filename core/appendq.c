/*
 * appendq.c: stream appends (the ABI's store_append) are written behind.
 *
 * A record is checked and copied into the worker's queue, and the queue is written in one
 * transaction on a libuv work thread, every APPENDQ_INTERVAL_MS or as soon as APPENDQ_BATCH
 * records wait. So a request never waits for the disk or the database (one insert per request
 * was most of the relay's cost with SQLite, and a network round trip on the loop with
 * PostgreSQL), and a transaction carries many records. Records keep the time they were
 * appended. At most one batch is being written at a time; the queue is bounded, and a record
 * that does not fit is refused (-EAGAIN) and counted, never blocking the loop.
 *
 * A query first writes this worker's queue and waits for the batch in flight, so a worker
 * reads what it appended. A stopping worker writes what is left before it closes the store;
 * a crash loses at most the last interval's records.
 *
 * A batch the store could not take for a passing reason (-ENOTCONN: PostgreSQL restarting or
 * unreachable; -EBUSY: a lock wait) goes back to the front of the queue and is tried again
 * at the next interval, within the queue's bounds, so records outlive a database restart
 * (docs/state.md). A batch is one transaction: it is written whole or not at all; a
 * connection lost while its commit was in flight may write it twice, never half.
 *
 * With PostgreSQL the batches go through a connection of their own (own), so the loop's store
 * calls (key-value reads and writes, synchronous on the loop) never wait for a batch's commit
 * behind the handle's mutex; that wait was the p99 of a worker writing audit records. SQLite
 * keeps one handle: a second connection would wait for the same file lock anyway.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "appendq.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "worker.h"

#define APPENDQ_INTERVAL_MS 50
#define APPENDQ_BATCH 512
#define APPENDQ_MAX_RECORDS 65536
#define APPENDQ_MAX_BYTES (16u << 20)

typedef struct batch {
  evs__store_rec *recs; /* stream and json share one allocation, at stream */
  size_t n, cap, bytes;
} batch;

struct evs__appendq {
  evs__worker *w;
  evs__store *own;   /* PostgreSQL: the batches' own connection (NULL: w->store) */
  uv_timer_t timer;
  uv_work_t work;
  batch pending;   /* the loop's */
  batch writing;   /* the work thread's while busy */
  int busy;
  int result;
  uv_mutex_t lock; /* written and its condition: a query waits for the batch in flight */
  uv_cond_t written_cond;
  int written;
  int retrying; /* a batch was put back; logged once per outage */
};

static void batch_free(batch *b) {
  for (size_t i = 0; i < b->n; i++) free((char *)b->recs[i].stream);
  free(b->recs);
  memset(b, 0, sizeof *b);
}

/* Failures are logged and counted, never with content. */
static void report(batch *b, int r) {
  if (r >= 0 || b->n == 0) return;
  EVS_LOG_ERR("EVS-1507", "store: %zu stream record(s) not written: %s", b->n, strerror(-r));
  evs__metrics_plugin_add("core", "store_appends_failed", b->n);
}

static void on_work(uv_work_t *req) {
  evs__appendq *q = req->data;
  q->result = evs__store_append_batch(q->own ? q->own : q->w->store, q->writing.recs,
                                     q->writing.n);
  uv_mutex_lock(&q->lock);
  q->written = 1;
  uv_cond_signal(&q->written_cond);
  uv_mutex_unlock(&q->lock);
}

static int transient(int r) { return r == -ENOTCONN || r == -EBUSY; }

/* The batch being written failed for a passing reason: put it in front of the records queued
 * since, unless that would pass the queue's bounds (then it is reported lost). */
static void requeue(evs__appendq *q, int r) {
  batch *w = &q->writing, *p = &q->pending;
  size_t n = w->n + p->n;
  evs__store_rec *recs = NULL;
  if (n <= APPENDQ_MAX_RECORDS && w->bytes + p->bytes <= APPENDQ_MAX_BYTES)
    recs = malloc(n * sizeof *recs);
  if (!recs) {
    report(w, r);
    batch_free(w);
    return;
  }
  if (!q->retrying)
    EVS_LOG_WARN("EVS-1510", "store: %zu stream record(s) kept to write again: %s", w->n,
                 strerror(-r));
  q->retrying = 1;
  memcpy(recs, w->recs, w->n * sizeof *recs);
  if (p->n) memcpy(recs + w->n, p->recs, p->n * sizeof *recs);
  free(w->recs);
  free(p->recs);
  p->recs = recs;
  p->n = p->cap = n;
  p->bytes += w->bytes;
  memset(w, 0, sizeof *w);
}

static void kick(evs__appendq *q);
static void on_timer(uv_timer_t *t) {
  kick(t->data);
}

static void after_work(uv_work_t *req, int status) {
  evs__appendq *q = req->data;
  if (status == 0 && transient(q->result) && !uv_is_closing((uv_handle_t *)&q->timer)) {
    requeue(q, q->result);
  } else {
    if (status == 0 && q->result >= 0 && q->retrying) {
      EVS_LOG_INFO("EVS-1511", "store: stream records written again");
      q->retrying = 0;
    }
    report(&q->writing, status < 0 ? status : q->result);
  }
  batch_free(&q->writing);
  q->busy = 0;
  if (q->pending.n >= APPENDQ_BATCH)
    kick(q);
  else if (q->pending.n && !uv_is_closing((uv_handle_t *)&q->timer))
    uv_timer_start(&q->timer, on_timer, APPENDQ_INTERVAL_MS, 0);
}

static void kick(evs__appendq *q) {
  if (q->busy || q->pending.n == 0) return;
  if (!uv_is_closing((uv_handle_t *)&q->timer)) uv_timer_stop(&q->timer);
  q->writing = q->pending;
  memset(&q->pending, 0, sizeof q->pending);
  q->written = 0;
  q->busy = 1;
  q->work.data = q;
  if (uv_queue_work(q->w->loop, &q->work, on_work, after_work) < 0) {
    /* No thread: write it here rather than lose it. */
    on_work(&q->work);
    after_work(&q->work, 0);
  }
}

int evs__appendq_init(evs__worker *w, const evs__store_options *so) {
  evs__appendq *q = calloc(1, sizeof *q);
  if (!q) return -ENOMEM;
  q->w = w;
  if (so && so->backend && strcmp(so->backend, "postgresql") == 0) {
    char err[512];
    if (evs__store_open(so, &q->own, err, sizeof err) < 0) {
      EVS_LOG_WARN("EVS-1512", "store: no second connection for stream records (%s); they share "
                   "the worker's", err);
      q->own = NULL;
    }
  }
  if (uv_mutex_init(&q->lock) < 0) {
    free(q);
    return -ENOMEM;
  }
  if (uv_cond_init(&q->written_cond) < 0) {
    uv_mutex_destroy(&q->lock);
    free(q);
    return -ENOMEM;
  }
  uv_timer_init(w->loop, &q->timer);
  q->timer.data = q;
  uv_unref((uv_handle_t *)&q->timer); /* a waiting record does not keep the loop running */
  w->appendq = q;
  return 0;
}

int evs__appendq_add(evs__worker *w, const char *plugin, const char *stream, const char *json) {
  evs__appendq *q = w->appendq;
  int r;
  if (!q || !w->store) return -ENOTSUP;
  if ((r = evs__store_check_record(stream, json)) < 0) return r;
  size_t slen = strlen(stream), jlen = strlen(json);
  batch *b = &q->pending;
  if (b->n >= APPENDQ_MAX_RECORDS || b->bytes + jlen > APPENDQ_MAX_BYTES) {
    evs__metrics_plugin_add(plugin, "store_appends_dropped", 1);
    return -EAGAIN;
  }
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    evs__store_rec *recs = realloc(b->recs, cap * sizeof *recs);
    if (!recs) return -ENOMEM;
    b->recs = recs;
    b->cap = cap;
  }
  char *copy = malloc(slen + 1 + jlen + 1);
  if (!copy) return -ENOMEM;
  memcpy(copy, stream, slen + 1);
  memcpy(copy + slen + 1, json, jlen + 1);
  b->recs[b->n++] = (evs__store_rec){copy, copy + slen + 1, evs__store_now_ms(w->store)};
  b->bytes += jlen;
  if (b->n >= APPENDQ_BATCH)
    kick(q);
  else if (!q->busy && !uv_is_active((uv_handle_t *)&q->timer))
    uv_timer_start(&q->timer, on_timer, APPENDQ_INTERVAL_MS, 0);
  return 0;
}

void evs__appendq_sync(evs__worker *w) {
  evs__appendq *q = w->appendq;
  if (!q) return;
  if (q->busy) { /* the work thread is writing (or about to): wait for the store to have it */
    uv_mutex_lock(&q->lock);
    while (!q->written) uv_cond_wait(&q->written_cond, &q->lock);
    uv_mutex_unlock(&q->lock);
  }
  if (q->pending.n) {
    report(&q->pending, evs__store_append_batch(q->own ? q->own : w->store, q->pending.recs,
                                                q->pending.n));
    batch_free(&q->pending);
  }
}

void evs__appendq_close(evs__worker *w) {
  evs__appendq *q = w->appendq;
  if (!q) return;
  /* The loop has run to its end: no batch is in flight, and the timer is closed. */
  evs__appendq_sync(w);
  evs__store_close(q->own);
  uv_cond_destroy(&q->written_cond);
  uv_mutex_destroy(&q->lock);
  free(q);
  w->appendq = NULL;
}
