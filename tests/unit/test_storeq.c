/*
 * Unit tests for core/storeq.c, the worker's store lane: jobs run one at a time on its thread,
 * in the order they were submitted, and are answered on the loop thread; the thread exists only
 * while there is work (from a submit until 20 ms without one), so a worker that makes no
 * store call in its steady state is single-threaded.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "storeq.h"
#include "worker.h"

enum { JOBS = 100 };

typedef struct job {
  evs__storeq_job j;
  int id;
  uv_thread_t worked_on;
} job;

static int worked[JOBS + 1], nworked; /* the lane's order (only its thread writes, one at a time) */
static int answered[JOBS + 1], nanswered;
static uv_thread_t loop_thread;
static int answered_off_loop;

static int threads(void) {
  DIR *d = opendir("/proc/self/task");
  assert_non_null(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* Polls (up to 10 s) until the process is down to n threads. */
static void wait_threads(int n) {
  for (int i = 0; i < 1000 && threads() > n; i++) usleep(10 * 1000);
  assert_int_equal(threads(), n);
}

static void work(evs__storeq_job *jb) {
  job *x = (job *)jb;
  x->worked_on = uv_thread_self();
  worked[nworked++] = x->id;
}

static void done(evs__storeq_job *jb) {
  job *x = (job *)jb;
  uv_thread_t self = uv_thread_self();
  if (!uv_thread_equal(&self, &loop_thread) || uv_thread_equal(&x->worked_on, &loop_thread))
    answered_off_loop++;
  answered[nanswered++] = x->id;
}

static void release(evs__storeq_job *jb) { (void)jb; }

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* A worker with only a loop and a lane. */
static void lane_open(uv_loop_t *loop, evs__worker *w) {
  memset(w, 0, sizeof *w);
  assert_int_equal(uv_loop_init(loop), 0);
  w->loop = loop;
  assert_int_equal(evs__storeq_init(w), 0);
}

/* Stops the lane, closes the loop's handles (the lane's async), then frees the lane. */
static void lane_close(uv_loop_t *loop, evs__worker *w) {
  evs__storeq_stop(w);
  uv_walk(loop, close_walk, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  evs__storeq_close(w);
  assert_null(w->storeq);
  assert_int_equal(uv_loop_close(loop), 0);
}

static void test_lazy_thread_and_order(void **state) {
  (void)state;
  uv_loop_t loop;
  evs__worker w;
  loop_thread = uv_thread_self();
  int base = threads();
  lane_open(&loop, &w);
  assert_int_equal(threads(), base);
  evs__storeq_drain(&w); /* nothing queued, no thread: returns at once */
  assert_int_equal(threads(), base);

  static job jobs[JOBS];
  for (int i = 0; i < JOBS; i++) {
    jobs[i] = (job){.j = {work, done, release, NULL}, .id = i};
    assert_int_equal(evs__storeq_submit(&w, &jobs[i].j), 0);
  }
  assert_int_equal(threads(), base + 1);
  /* Outstanding jobs keep the loop running until every answer is in. */
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(nworked, JOBS);
  assert_int_equal(nanswered, JOBS);
  for (int i = 0; i < JOBS; i++) {
    assert_int_equal(worked[i], i);
    assert_int_equal(answered[i], i);
  }
  assert_int_equal(answered_off_loop, 0);

  /* 20 ms without work: the thread ends (storeq.c LANE_IDLE_NS). */
  wait_threads(base);
  /* The next call starts another, and is answered. */
  job again = {.j = {work, done, release, NULL}, .id = 7};
  assert_int_equal(evs__storeq_submit(&w, &again.j), 0);
  assert_int_equal(threads(), base + 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(nanswered, JOBS + 1);
  assert_int_equal(answered[JOBS], 7);
  evs__storeq_drain(&w);
  /* Stopping a lane whose thread ended for want of work reaps it. */
  wait_threads(base);

  evs__storeq_stop(&w);
  assert_int_equal(threads(), base);
  job late = {.j = {work, done, release, NULL}, .id = 0};
  assert_int_equal(evs__storeq_submit(&w, &late.j), -ENOTSUP);
  lane_close(&loop, &w);
}

/* A lane that never got a job stops and closes without a thread to join. */
static void test_unused_lane_closes(void **state) {
  (void)state;
  uv_loop_t loop;
  evs__worker w;
  int base = threads();
  lane_open(&loop, &w);
  lane_close(&loop, &w);
  assert_int_equal(threads(), base);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lazy_thread_and_order),
      cmocka_unit_test(test_unused_lane_closes),
  };
  return cmocka_run_group_tests_name("storeq", tests, NULL, NULL);
}
