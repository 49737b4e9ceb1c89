/*
 * storeq.c: the worker's store lane. Key-value calls of the ABI (store_get, _put, _delete,
 * _scan, _query and the auxiliary store's) used to run on the loop: one PostgreSQL round trip
 * or one SQLite fsync then stalled every connection of the worker. They now run here, on one
 * thread per worker, one at a time and in the order they were made (a get after a put sees
 * it, as it did on the loop); a uv_async_t brings their results back, and the host runs the
 * plugin's callback on the loop thread, exactly once (host.c). One thread rather than
 * libuv's pool: the pool would reorder calls, and it is shared with the transaction records'
 * batches (appendq.c), which must not queue behind a slow key-value call or ahead of one.
 *
 * The lane's thread only calls the store, whose handle serializes calls with its own mutex;
 * PostgreSQL's reconnect backoff (store_pg.c) works as before, per handle. The thread starts
 * with a call and ends 20 ms after the last one: a worker that calls only now and then in its
 * steady state (a relay polling a generation token every 2 s) is single-threaded most of the
 * time, and the kernel then skips the file reference counting that every system call of a
 * threaded process pays. A thread start (~50 us) per call at worst.
 */
#include <errno.h>
#include <stdlib.h>

#include "storeq.h"

#define LANE_IDLE_NS (20ull * 1000 * 1000)

enum { LANE_NONE, LANE_RUNNING, LANE_EXITED };

struct evs__storeq {
  uv_thread_t thread;
  uv_mutex_t lock;
  uv_cond_t todo_cond;  /* work queued, or stop */
  uv_cond_t idle_cond;  /* everything queued has run */
  evs__storeq_job *todo, **todo_tail;
  evs__storeq_job *done, **done_tail;
  int running;          /* the thread is inside a job's work */
  int state;            /* LANE_*: EXITED ended for want of work and is still to be joined */
  int stop;
  int joined;
  size_t outstanding;   /* queued and not yet handed back (loop thread only) */
  uv_async_t async;
};

static void lane(void *arg) {
  evs__storeq *q = arg;
  uv_mutex_lock(&q->lock);
  for (;;) {
    while (!q->todo && !q->stop) {
      if (uv_cond_timedwait(&q->todo_cond, &q->lock, LANE_IDLE_NS) == UV_ETIMEDOUT &&
          !q->todo && !q->stop) {
        q->state = LANE_EXITED;
        uv_mutex_unlock(&q->lock);
        return;
      }
    }
    if (!q->todo) break;
    evs__storeq_job *j = q->todo;
    q->todo = j->next;
    if (!q->todo) q->todo_tail = &q->todo;
    q->running = 1;
    uv_mutex_unlock(&q->lock);
    j->work(j);
    uv_mutex_lock(&q->lock);
    q->running = 0;
    j->next = NULL;
    *q->done_tail = j;
    q->done_tail = &j->next;
    if (!q->todo) uv_cond_broadcast(&q->idle_cond);
    if (!q->stop) uv_async_send(&q->async);
  }
  uv_mutex_unlock(&q->lock);
}

static void on_async(uv_async_t *h) {
  evs__storeq *q = h->data;
  uv_mutex_lock(&q->lock);
  evs__storeq_job *j = q->done;
  q->done = NULL;
  q->done_tail = &q->done;
  uv_mutex_unlock(&q->lock);
  while (j) {
    evs__storeq_job *n = j->next;
    q->outstanding--;
    j->done(j);
    j = n;
  }
  /* Work in flight keeps the loop running (a draining worker waits for its answers). */
  if (q->outstanding == 0) uv_unref((uv_handle_t *)&q->async);
}

int evs__storeq_init(evs__worker *w) {
  evs__storeq *q = calloc(1, sizeof *q);
  if (!q) return -ENOMEM;
  q->todo_tail = &q->todo;
  q->done_tail = &q->done;
  if (uv_mutex_init(&q->lock) < 0) goto fail_mutex;
  if (uv_cond_init(&q->todo_cond) < 0) goto fail_todo;
  if (uv_cond_init(&q->idle_cond) < 0) goto fail_idle;
  if (uv_async_init(w->loop, &q->async, on_async) < 0) goto fail_async;
  q->async.data = q;
  uv_unref((uv_handle_t *)&q->async);
  w->storeq = q;
  return 0;
fail_async:
  uv_cond_destroy(&q->idle_cond);
fail_idle:
  uv_cond_destroy(&q->todo_cond);
fail_todo:
  uv_mutex_destroy(&q->lock);
fail_mutex:
  free(q);
  return -ENOMEM;
}

int evs__storeq_submit(evs__worker *w, evs__storeq_job *j) {
  evs__storeq *q = w->storeq;
  if (!q || q->stop || uv_is_closing((uv_handle_t *)&q->async)) return -ENOTSUP;
  uv_mutex_lock(&q->lock);
  if (q->state == LANE_EXITED) { /* it set EXITED as its last act under the lock */
    uv_thread_join(&q->thread);
    q->state = LANE_NONE;
  }
  if (q->state == LANE_NONE) { /* the new thread takes the lock once this call has queued */
    if (uv_thread_create(&q->thread, lane, q) < 0) {
      uv_mutex_unlock(&q->lock);
      return -ENOTSUP;
    }
    q->state = LANE_RUNNING;
  }
  j->next = NULL;
  if (q->outstanding++ == 0) uv_ref((uv_handle_t *)&q->async);
  *q->todo_tail = j;
  q->todo_tail = &j->next;
  uv_cond_signal(&q->todo_cond);
  uv_mutex_unlock(&q->lock);
  return 0;
}

void evs__storeq_drain(evs__worker *w) {
  evs__storeq *q = w->storeq;
  if (!q) return;
  uv_mutex_lock(&q->lock);
  while (q->todo || q->running) uv_cond_wait(&q->idle_cond, &q->lock);
  uv_mutex_unlock(&q->lock);
}

void evs__storeq_stop(evs__worker *w) {
  evs__storeq *q = w->storeq;
  if (!q || q->joined) return;
  uv_mutex_lock(&q->lock);
  q->stop = 1;
  uv_cond_signal(&q->todo_cond);
  int state = q->state;
  uv_mutex_unlock(&q->lock);
  if (state != LANE_NONE) uv_thread_join(&q->thread);
  q->joined = 1;
}

void evs__storeq_close(evs__worker *w) {
  evs__storeq *q = w->storeq;
  if (!q) return;
  evs__storeq_stop(w);
  /* The loop is over: answers nobody can be given any more are dropped. */
  evs__storeq_job *j = q->done;
  while (j) {
    evs__storeq_job *n = j->next;
    j->release(j);
    j = n;
  }
  uv_cond_destroy(&q->idle_cond);
  uv_cond_destroy(&q->todo_cond);
  uv_mutex_destroy(&q->lock);
  free(q);
  w->storeq = NULL;
}
