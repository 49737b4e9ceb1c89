/*
 * appendq.c: stream appends (the ABI's store_append and store_append_request) are written in
 * batches, one transaction each, so that a request never waits for the disk or the database on
 * the loop (one insert per request was most of the relay's cost with SQLite, and a network
 * round trip on the loop with PostgreSQL). Records keep the time they were appended. At most
 * one batch is being written at a time; the queue is bounded, and a record that does not fit is
 * refused (-EAGAIN) and counted, never blocking the loop.
 *
 * Where a batch goes: SQLite writes it on the loop when that needs no waiting
 * (evs__store_append_batch_try: the file's write lock free, no checkpoint due), which is almost
 * always and costs the batch's CPU alone; handing it to a thread cost each batch two context
 * switches, futex and eventfd wake-ups and a loop turn, about a sixth of a cage request's time.
 * Otherwise (another worker holds the lock, a checkpoint with its fsyncs is due, PostgreSQL) a
 * libuv work thread writes it and the loop goes on.
 *
 * Two kinds of records share the queue, in one order (each gets a sequence number):
 * - written behind (store_append): a batch within APPENDQ_INTERVAL_MS or as soon as
 *   APPENDQ_BATCH records wait; a crash loses at most the last interval's records.
 * - waited for (store_append_request: a transaction record whose response the host holds until
 *   it is committed, docs/state.md): group commit. The first such record starts a batch at the
 *   next loop turn (so the records of one turn share it); records that arrive while a batch is
 *   being written go together into the next one, which starts at the loop turn after that one
 *   committed (with the records of the turn in which it committed).
 *   No timer: under load a batch carries what arrived during one commit, idle it carries one
 *   record. A batch written on the loop waits while waited-for records keep arriving, turn
 *   after turn, up to APPENDQ_GROUP of them: a busy loop then commits a few times less often
 *   (a commit's fixed cost, ~10 us, is about as much as seven records'), and a loop with
 *   nothing new to do commits at its next turn. Waiters (evs__appendq_wait) are told on the
 *   loop thread, as soon as their batch's commit is back (libuv's after-work callback, or the
 *   idle handle that wrote it on the loop) or else from the idle handle, so that a released
 *   response never runs inside a plugin's call.
 *
 * A query first has this worker's queue written (evs__appendq_flush, as for a waited-for
 * record), so a worker reads what it appended. A stopping worker writes what is left before it
 * closes the store.
 *
 * A batch the store could not take for a passing reason (-ENOTCONN: PostgreSQL restarting or
 * unreachable; -EBUSY: a lock wait) goes back to the front of the queue and is tried again
 * at the next interval, within the queue's bounds, so records outlive a database restart
 * (docs/state.md); their waiters wait on. A batch is one transaction: it is written whole or
 * not at all; a connection lost while its commit was in flight may write it twice, never half.
 *
 * With PostgreSQL the batches go through a connection of their own (own), so the loop's store
 * calls never wait for a batch's commit behind the handle's mutex; that wait was the p99 of a
 * worker writing audit records. SQLite keeps one handle: a second connection would wait for
 * the same file lock anyway.
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
#define APPENDQ_GROUP 16
#define APPENDQ_MAX_RECORDS 65536
#define APPENDQ_MAX_BYTES (16u << 20)

typedef struct batch {
  evs__store_rec *recs; /* stream and json share one allocation, at stream */
  size_t n, cap, bytes;
} batch;

/* Somebody waiting for a record: in waiting until its batch settles, then in ready. */
typedef struct waiter {
  uint64_t seq;
  evs__appendq_fn fn;
  void *arg;
  int status;
  struct waiter *next;
} waiter;

struct evs__appendq {
  evs__worker *w;
  evs__store *own;   /* PostgreSQL: the batches' own connection (NULL: w->store) */
  uv_timer_t timer;
  uv_idle_t idle;    /* tells settled waiters, starts an urgent batch */
  uv_work_t work;
  batch pending;   /* the loop's */
  batch writing;   /* the work thread's while busy */
  uint64_t seq;         /* of the last record queued */
  uint64_t writing_last; /* seq of the last record of writing */
  uint64_t settled;     /* every record up to this one is written or given up */
  int urgent;           /* a waited-for record is queued: start a batch when the store is free */
  int added;            /* a waited-for record was queued since the last idle turn */
  waiter *waiting, **waiting_tail;
  waiter *ready, **ready_tail;
  uint64_t batches, batches_on_loop;
  int on_loop; /* try each batch on the loop first (until the store says it cannot) */
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

static int closing(evs__appendq *q) { return uv_is_closing((uv_handle_t *)&q->timer); }

static void on_idle(uv_idle_t *h);

/* Records up to seq are written (status 0) or given up: their waiters are told at the next
 * idle turn. */
static void settle(evs__appendq *q, uint64_t seq, int status) {
  if (seq > q->settled) q->settled = seq;
  for (waiter **pp = &q->waiting; *pp;) {
    waiter *x = *pp;
    if (x->seq > seq) {
      pp = &x->next;
      continue;
    }
    *pp = x->next;
    x->status = status;
    x->next = NULL;
    *q->ready_tail = x;
    q->ready_tail = &x->next;
  }
  q->waiting_tail = &q->waiting;
  while (*q->waiting_tail) q->waiting_tail = &(*q->waiting_tail)->next;
  if (q->ready && !closing(q)) uv_idle_start(&q->idle, on_idle);
}

/* Tells the settled waiters (their callbacks may queue records: the list is taken first). */
static void tell_ready(evs__appendq *q) {
  waiter *x = q->ready;
  q->ready = NULL;
  q->ready_tail = &q->ready;
  while (x) {
    waiter *n = x->next;
    x->fn(x->arg, x->status);
    free(x);
    x = n;
  }
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
    settle(q, q->writing_last, r);
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

/* The batch is written (or not): settles its waiters and starts what comes next. */
static void batch_done(evs__appendq *q, int status) {
  int r = status < 0 ? status : q->result;
  q->batches++;
  q->busy = 0;
  if (status == 0 && transient(r) && !closing(q)) {
    requeue(q, r);
    batch_free(&q->writing);
    /* Written again at the next interval, not at once: the store said it is away. */
    if (q->pending.n) uv_timer_start(&q->timer, on_timer, APPENDQ_INTERVAL_MS, 0);
    return;
  }
  if (r >= 0 && q->retrying) {
    EVS_LOG_INFO("EVS-1511", "store: stream records written again");
    q->retrying = 0;
  }
  report(&q->writing, r);
  batch_free(&q->writing);
  settle(q, q->writing_last, r < 0 ? r : 0);
  if (closing(q)) return;
  /* Group commit: what arrived during this batch goes at the next turn (on_idle), if anybody
   * waits for it, so that the records of the rest of this turn's events join it (kicked here,
   * in the middle of the turn, they waited for the whole next commit). */
  if (q->pending.n >= APPENDQ_BATCH)
    kick(q);
  else if (q->urgent && q->pending.n)
    uv_idle_start(&q->idle, on_idle);
  else if (q->pending.n)
    uv_timer_start(&q->timer, on_timer, APPENDQ_INTERVAL_MS, 0);
}

static void after_work(uv_work_t *req, int status) {
  evs__appendq *q = req->data;
  batch_done(q, status);
  /* A callback of the loop's own (libuv's async), never inside a plugin's call: the released
   * responses leave now rather than at the next turn's idle (under load a turn is every
   * connection's events, a large part of a response's latency). */
  tell_ready(q);
}

static void kick(evs__appendq *q) {
  if (q->busy || q->pending.n == 0) return;
  if (!closing(q)) uv_timer_stop(&q->timer);
  q->writing = q->pending;
  q->writing_last = q->seq;
  memset(&q->pending, 0, sizeof q->pending);
  q->urgent = 0;
  q->written = 0;
  q->busy = 1;
  if (q->on_loop) {
    int r = evs__store_append_batch_try(q->w->store, q->writing.recs, q->writing.n);
    if (r == -EOPNOTSUPP) q->on_loop = 0;
    if (r != -EOPNOTSUPP && r != -EWOULDBLOCK) {
      q->result = r;
      q->batches_on_loop++;
      batch_done(q, 0); /* maybe inside a plugin's call: the waiters are told at the idle turn */
      return;
    }
  }
  q->work.data = q;
  if (uv_queue_work(q->w->loop, &q->work, on_work, after_work) < 0) {
    /* No thread: write it here rather than lose it. */
    on_work(&q->work);
    batch_done(q, 0); /* maybe inside a plugin's call: the waiters are told at the idle turn */
  }
}

/* Tell the settled waiters, then start the urgent batch (unless the store is away: the
 * timer retries). Runs at the top of a loop turn, never inside a plugin's call. */
static void on_idle(uv_idle_t *h) {
  evs__appendq *q = h->data;
  uv_idle_stop(h);
  tell_ready(q);
  if (q->urgent && !q->busy && !q->retrying) {
    if (q->on_loop && q->added && q->pending.n < APPENDQ_GROUP) {
      q->added = 0; /* more may come this turn: look again at the next */
      uv_idle_start(h, on_idle);
      return;
    }
    kick(q);
    tell_ready(q); /* written on the loop: its waiters need not wait for another turn */
    if (!q->ready && !(q->urgent && q->pending.n)) uv_idle_stop(h);
  }
}

int evs__appendq_init(evs__worker *w, const evs__store_options *so) {
  evs__appendq *q = calloc(1, sizeof *q);
  if (!q) return -ENOMEM;
  q->w = w;
  q->waiting_tail = &q->waiting;
  q->ready_tail = &q->ready;
  if (so && so->backend && strcmp(so->backend, "postgresql") == 0) {
    char err[512];
    if (evs__store_open(so, &q->own, err, sizeof err) < 0) {
      EVS_LOG_WARN("EVS-1512", "store: no second connection for stream records (%s); they share "
                   "the worker's", err);
      q->own = NULL;
    }
  }
  q->on_loop = !q->own;
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
  uv_idle_init(w->loop, &q->idle);
  q->idle.data = q;
  uv_unref((uv_handle_t *)&q->idle);
  w->appendq = q;
  return 0;
}

int evs__appendq_add(evs__worker *w, const char *plugin, const char *stream, const char *json,
                     uint64_t *ret_seq) {
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
  q->seq++;
  if (ret_seq) {
    *ret_seq = q->seq;
    q->urgent = 1;
    q->added = 1;
    if (!q->busy && !q->retrying && !closing(q)) uv_idle_start(&q->idle, on_idle);
  }
  if (b->n >= APPENDQ_BATCH)
    kick(q);
  else if (!q->busy && !q->urgent && !uv_is_active((uv_handle_t *)&q->timer))
    uv_timer_start(&q->timer, on_timer, APPENDQ_INTERVAL_MS, 0);
  return 0;
}

int evs__appendq_wait(evs__worker *w, uint64_t seq, evs__appendq_fn fn, void *arg) {
  evs__appendq *q = w->appendq;
  if (!q) return -ENOTSUP;
  if (seq <= q->settled) return 1;
  if (seq > q->seq || !fn) return -EINVAL;
  waiter *x = calloc(1, sizeof *x);
  if (!x) return -ENOMEM;
  x->seq = seq;
  x->fn = fn;
  x->arg = arg;
  *q->waiting_tail = x;
  q->waiting_tail = &x->next;
  return 0;
}

int evs__appendq_flush(evs__worker *w, evs__appendq_fn fn, void *arg) {
  evs__appendq *q = w->appendq;
  if (!q || q->retrying || q->seq <= q->settled) return 1;
  q->urgent = 1;
  if (!q->busy && !closing(q)) uv_idle_start(&q->idle, on_idle);
  return evs__appendq_wait(w, q->seq, fn, arg);
}

int evs__appendq_ready(evs__worker *w) {
  evs__appendq *q = w->appendq;
  if (!q || !w->store) return -ENOTSUP;
  return q->retrying ? -ENOTCONN : 0;
}

uint64_t evs__appendq_batches(evs__worker *w) { return w->appendq ? w->appendq->batches : 0; }

uint64_t evs__appendq_batches_on_loop(evs__worker *w) {
  return w->appendq ? w->appendq->batches_on_loop : 0;
}

void evs__appendq_sync(evs__worker *w) {
  evs__appendq *q = w->appendq;
  if (!q) return;
  if (q->busy) { /* the work thread is writing (or about to): wait for the store to have it */
    uv_mutex_lock(&q->lock);
    while (!q->written) uv_cond_wait(&q->written_cond, &q->lock);
    uv_mutex_unlock(&q->lock);
    if (q->result < 0) return; /* the store is away: after_work keeps the batch for later */
  }
  if (q->pending.n) {
    int r = evs__store_append_batch(q->own ? q->own : w->store, q->pending.recs, q->pending.n);
    q->batches++;
    if (transient(r) && !closing(q)) { /* kept, as a batch written behind would be */
      if (!uv_is_active((uv_handle_t *)&q->timer))
        uv_timer_start(&q->timer, on_timer, APPENDQ_INTERVAL_MS, 0);
      return;
    }
    report(&q->pending, r);
    batch_free(&q->pending);
    q->urgent = 0;
    settle(q, q->seq, r < 0 ? r : 0);
  }
}

static void give_up(waiter *x, int settled) {
  while (x) {
    waiter *n = x->next;
    x->fn(x->arg, settled ? x->status : -ECANCELED);
    free(x);
    x = n;
  }
}

void evs__appendq_close(evs__worker *w) {
  evs__appendq *q = w->appendq;
  if (!q) return;
  /* The loop has run to its end: no batch is in flight, and the timer is closed. */
  evs__appendq_sync(w);
  if (q->pending.n) { /* still unwritable: the store is away */
    report(&q->pending, -ENOTCONN);
    batch_free(&q->pending);
  }
  give_up(q->ready, 1);
  give_up(q->waiting, 0);
  evs__store_close(q->own);
  uv_cond_destroy(&q->written_cond);
  uv_mutex_destroy(&q->lock);
  free(q);
  w->appendq = NULL;
}
