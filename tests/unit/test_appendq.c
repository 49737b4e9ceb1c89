/*
 * Unit tests for core/appendq.c: group commit of the records responses wait for
 * (store_append_request), on a real loop and a SQLite store in a temporary directory.
 *
 * The same tests run against PostgreSQL when EVS_TEST_PG_DSN names a server
 * (tests/integration/pg_store.sh test_appendq starts a throwaway one): there the batches go
 * through a connection of their own.
 *
 * What must hold: a waiter is told only once its record, and every record queued before it,
 * is in the store; waiters are told in order, on the loop thread, never inside the call that
 * queued; records queued while a batch is being written share the next batch, which starts as
 * soon as that one committed (no timer); records written behind wait for the interval unless a
 * waited-for record takes them along. With SQLite a batch is written on the loop unless that
 * would wait (the file's write lock held elsewhere, a checkpoint due): then on the work thread,
 * the loop going on.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "appendq.h"
#include "store.h"
#include "store_sqlite_vfs.h"
#include "worker.h"

static const char *pg_dsn;
static int use_pg;
static int fixture_n;

typedef struct fx {
  char stream[64]; /* of this fixture alone (PostgreSQL keeps the tables across tests) */
  char dir[64];
  char path[128];
  uv_loop_t loop;
  uv_timer_t alive; /* a worker's listeners keep its loop running; this does here */
  evs__worker w;
} fx;

/* What each waiter saw when it was told. */
typedef struct told {
  fx *f;
  int id;
  int status;
  int stored;  /* records of the stream in the store at that moment */
  int in_call; /* told while a test's append call was running */
} told;

static int order[64], norder;
static int appending;

static int count_cb(void *arg, int64_t id, int64_t ts, const char *json) {
  (void)id;
  (void)ts;
  (void)json;
  (*(int *)arg)++;
  return 0;
}

static int stored(fx *f) {
  int n = 0;
  assert_int_equal(evs__store_query(f->w.store, f->stream, 0, 100000, count_cb, &n), 0);
  return n;
}

static void on_told(void *arg, int status) {
  told *t = arg;
  t->status = status;
  t->stored = stored(t->f);
  t->in_call = appending;
  order[norder++] = t->id;
}

static void keep(uv_timer_t *t) { (void)t; }

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  snprintf(f->dir, sizeof f->dir, "/tmp/evs-appendq-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof f->path, "%s/s.db", f->dir);
  snprintf(f->stream, sizeof f->stream, "t/tx%d_%d", (int)getpid(), ++fixture_n);
  evs__store_options o = {"sqlite", f->path, NULL};
  if (use_pg) o = (evs__store_options){"postgresql", NULL, pg_dsn};
  char err[256];
  assert_int_equal(evs__store_open(&o, &f->w.store, err, sizeof err), 0);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->w.loop = &f->loop;
  uv_timer_init(&f->loop, &f->alive);
  uv_timer_start(&f->alive, keep, 3600 * 1000, 0);
  assert_int_equal(evs__appendq_init(&f->w, &o), 0);
  norder = 0;
  *state = f;
  return 0;
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int teardown(void **state) {
  fx *f = *state;
  uv_walk(&f->loop, close_walk, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  evs__appendq_close(&f->w);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  evs__store_close(f->w.store);
  unlink(f->path);
  char wal[160];
  snprintf(wal, sizeof wal, "%s-wal", f->path);
  unlink(wal);
  snprintf(wal, sizeof wal, "%s-shm", f->path);
  unlink(wal);
  rmdir(f->dir);
  free(f);
  return 0;
}

static uint64_t add(fx *f, int urgent, told *t) {
  char json[64];
  snprintf(json, sizeof json, "{\"n\":%d}", t ? t->id : -1);
  uint64_t seq = 0;
  appending = 1;
  assert_int_equal(evs__appendq_add(&f->w, "t", f->stream, json, urgent ? &seq : NULL), 0);
  if (t) assert_int_equal(evs__appendq_wait(&f->w, seq, on_told, t), 0);
  appending = 0;
  return seq;
}

/* Runs the loop until n waiters were told (the work thread's completion keeps it running). */
static void run_until(fx *f, int n) {
  for (int i = 0; norder < n && i < 100000; i++) uv_run(&f->loop, UV_RUN_ONCE);
  assert_int_equal(norder, n);
}

/* One record waited for: committed at once (no 50 ms timer), and in the store when told. */
static void test_one_record(void **state) {
  fx *f = *state;
  told t = {f, 1, 99, 0, 0};
  uint64_t t0 = uv_hrtime();
  add(f, 1, &t);
  run_until(f, 1);
  assert_int_equal(t.status, 0);
  assert_int_equal(t.stored, 1);
  assert_int_equal(t.in_call, 0);
  assert_int_equal(evs__appendq_batches(&f->w), 1);
  /* Not the write-behind interval: a loaded machine still commits far sooner. */
  print_message("one record committed in %.1f ms\n", (double)(uv_hrtime() - t0) / 1e6);
  /* Settled: a second wait answers at once. */
  assert_int_equal(evs__appendq_wait(&f->w, 1, on_told, &t), 1);
}

/* Records that arrive while a batch is being written go together into the next batch, which
 * starts when the first one committed; waiters are told in order, each once its record and
 * all before it are stored. */
static void test_group_commit_order(void **state) {
  fx *f = *state;
  told t[11];
  for (int i = 0; i < 11; i++) t[i] = (told){f, i, 99, 0, 0};
  add(f, 1, &t[0]);
  /* One turn: the idle handle starts the first batch on the work thread (SQLite: two, the
   * second, with nothing new, writes it on the loop). */
  uv_run(&f->loop, UV_RUN_NOWAIT);
  if (!use_pg) uv_run(&f->loop, UV_RUN_NOWAIT);
  for (int i = 1; i < 11; i++) add(f, 1, &t[i]);
  run_until(f, 11);
  for (int i = 0; i < 11; i++) {
    assert_int_equal(order[i], i);
    assert_int_equal(t[i].status, 0);
    assert_true(t[i].stored >= i + 1);
    assert_int_equal(t[i].in_call, 0);
  }
  /* The first record alone (or with nothing), then the ten together. */
  assert_int_equal(evs__appendq_batches(&f->w), 2);
  assert_int_equal(stored(f), 11);
}

/* The waiters of a batch are told in the loop turn in which its commit comes back (libuv's
 * after-work callback), not one turn later: under load a turn is every connection's events. */
static void test_told_with_commit(void **state) {
  fx *f = *state;
  told t[3];
  for (int i = 0; i < 3; i++) t[i] = (told){f, i, 99, 0, 0};
  for (int i = 0; i < 3; i++) add(f, 1, &t[i]);
  for (int i = 0; i < 100000 && evs__appendq_batches(&f->w) == 0; i++)
    uv_run(&f->loop, UV_RUN_ONCE);
  assert_int_equal(evs__appendq_batches(&f->w), 1);
  assert_int_equal(norder, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(order[i], i);
    assert_int_equal(t[i].status, 0);
    assert_int_equal(t[i].stored, 3);
    assert_int_equal(t[i].in_call, 0);
  }
}

/* A record written behind waits for the interval, unless a waited-for record queued after it
 * takes it along; the waiter is told once both are in. */
static void test_behind_then_urgent(void **state) {
  fx *f = *state;
  add(f, 0, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(evs__appendq_batches(&f->w), 0);
  told t = {f, 7, 99, 0, 0};
  add(f, 1, &t);
  run_until(f, 1);
  assert_int_equal(t.status, 0);
  assert_int_equal(t.stored, 2);
  assert_int_equal(evs__appendq_batches(&f->w), 1);
}

/* Waiters registered out of sequence order are each told once their own record is in; a
 * record queued later never makes an earlier waiter wait longer than its batch. */
static void test_waiters_out_of_order(void **state) {
  fx *f = *state;
  told a = {f, 1, 99, 0, 0}, b = {f, 2, 99, 0, 0};
  char json[] = "{\"n\":0}";
  uint64_t sa, sb;
  assert_int_equal(evs__appendq_add(&f->w, "t", f->stream, json, &sa), 0);
  assert_int_equal(evs__appendq_add(&f->w, "t", f->stream, json, &sb), 0);
  assert_true(sb > sa);
  assert_int_equal(evs__appendq_wait(&f->w, sb, on_told, &b), 0);
  assert_int_equal(evs__appendq_wait(&f->w, sa, on_told, &a), 0);
  run_until(f, 2);
  assert_int_equal(a.stored, 2);
  assert_int_equal(b.stored, 2);
  assert_int_equal(a.status, 0);
  assert_int_equal(b.status, 0);
  /* A sequence number never handed out is refused. */
  assert_int_equal(evs__appendq_wait(&f->w, sb + 5, on_told, &a), -EINVAL);
  assert_int_equal(evs__appendq_ready(&f->w), 0);
}

/* A worker that stops with a waiter writes the record first and tells it so. */
static void test_close_tells(void **state) {
  fx *f = *state;
  told t = {f, 3, 99, 0, 0};
  add(f, 1, &t);
  uv_walk(&f->loop, close_walk, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  evs__appendq_close(&f->w);
  assert_int_equal(norder, 1);
  assert_int_equal(t.status, 0);
  assert_int_equal(stored(f), 1);
  /* teardown closes again: nothing left. */
  assert_int_equal(evs__appendq_init(&f->w, NULL), 0);
}

/* The queue is bounded (appendq.c: 16 MiB of records, 65536 records): past the bound a record
 * is refused with -EAGAIN at once, waited-for or not, and the loop never blocks. What was taken
 * is all written once the loop runs, and the queue takes records again. */
#define QUEUE_MAX_BYTES (16u << 20)

static void test_queue_full(void **state) {
  fx *f = *state;
  enum { PAD = 60000 };
  char *json = malloc(PAD + 16);
  assert_non_null(json);
  memcpy(json, "{\"pad\":\"", 8);
  memset(json + 8, 'x', PAD);
  memcpy(json + 8 + PAD, "\"}", 3);
  size_t jlen = strlen(json);
  uint64_t seq = 0;
  int taken = 0, r;
  /* The loop does not run: nothing leaves the queue meanwhile. */
  while ((r = evs__appendq_add(&f->w, "t", f->stream, json, NULL)) == 0) taken++;
  assert_int_equal(r, -EAGAIN);
  assert_true((size_t)taken * jlen <= QUEUE_MAX_BYTES);
  assert_true((size_t)(taken + 1) * jlen > QUEUE_MAX_BYTES);
  assert_int_equal(evs__appendq_add(&f->w, "t", f->stream, json, &seq), -EAGAIN);
  assert_int_equal(evs__appendq_add(&f->w, "t", f->stream, json, NULL), -EAGAIN);
  /* Everything taken is written, and the queue takes records again. */
  told t = {f, 1, 99, 0, 0};
  assert_int_equal(evs__appendq_flush(&f->w, on_told, &t), 0);
  run_until(f, 1);
  assert_int_equal(t.status, 0);
  assert_int_equal(stored(f), taken);
  told u = {f, 2, 99, 0, 0};
  add(f, 1, &u);
  run_until(f, 2);
  assert_int_equal(u.status, 0);
  assert_int_equal(stored(f), taken + 1);
  free(json);
}

/* SQLite writes a waited-for batch on the loop, and its waiters are told in that same turn;
 * PostgreSQL never does (a network round trip). */
static void test_written_on_loop(void **state) {
  fx *f = *state;
  told t[3];
  for (int i = 0; i < 3; i++) t[i] = (told){f, i, 99, 0, 0};
  for (int i = 0; i < 3; i++) add(f, 1, &t[i]);
  if (use_pg) {
    run_until(f, 3);
    assert_int_equal(evs__appendq_batches_on_loop(&f->w), 0);
    return;
  }
  /* The first turn looks for more records; the next, with none new, commits and tells. */
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(evs__appendq_batches(&f->w), 0);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(norder, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(t[i].status, 0);
    assert_int_equal(t[i].stored, 3);
    assert_int_equal(t[i].in_call, 0);
  }
  assert_int_equal(evs__appendq_batches(&f->w), 1);
  assert_int_equal(evs__appendq_batches_on_loop(&f->w), 1);
}

/* On the loop, records that keep arriving turn after turn share one batch, until a turn brings
 * none or 16 wait (APPENDQ_GROUP); a commit costs about as much as seven records. */
static void test_grouped_on_loop(void **state) {
  fx *f = *state;
  if (use_pg) skip();
  told t[20];
  for (int i = 0; i < 20; i++) t[i] = (told){f, i, 99, 0, 0};
  for (int i = 0; i < 3; i++) {
    add(f, 1, &t[i]);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(evs__appendq_batches(&f->w), 0);
  }
  uv_run(&f->loop, UV_RUN_NOWAIT); /* a turn with nothing new */
  assert_int_equal(evs__appendq_batches(&f->w), 1);
  assert_int_equal(norder, 3);
  assert_int_equal(t[2].stored, 3);
  /* 16 waiting: the next turn commits, new arrivals or not. */
  for (int i = 3; i < 19; i++) add(f, 1, &t[i]);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(evs__appendq_batches(&f->w), 2);
  assert_int_equal(norder, 19);
  assert_int_equal(t[18].stored, 19);
}

/* Another connection (another worker) holds the file's write lock: the loop does not wait for
 * it (its busy timeout would stall every connection of the worker). The batch goes to the work
 * thread, which waits; its waiter is told once the lock is released and the record is in. */
static void test_lock_held_elsewhere(void **state) {
  fx *f = *state;
  if (use_pg) skip();
  sqlite3 *other = NULL;
  assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
  assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  told t = {f, 1, 99, 0, 0};
  add(f, 1, &t);
  /* Written on the loop, the second turn would block in the busy timeout, then fail with
   * -EBUSY. */
  uv_run(&f->loop, UV_RUN_NOWAIT);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(norder, 0);
  assert_int_equal(evs__appendq_batches_on_loop(&f->w), 0);
  assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  run_until(f, 1);
  assert_int_equal(t.status, 0);
  assert_int_equal(t.stored, 1);
  assert_int_equal(evs__appendq_batches_on_loop(&f->w), 0);
  assert_int_equal(evs__appendq_batches(&f->w), 1);
  /* The lock is free again: the next batch is the loop's. */
  told u = {f, 2, 99, 0, 0};
  add(f, 1, &u);
  run_until(f, 2);
  assert_int_equal(u.stored, 2);
  assert_int_equal(evs__appendq_batches_on_loop(&f->w), 1);
  sqlite3_close(other);
}

/* Batches written on the loop never checkpoint there (copying pages and two fsyncs) nor start
 * the log over (an fsync of its header): a checkpoint falls due and the next batch goes to the
 * work thread, which does it, and so does the batch after it; the loop thread makes no fsync
 * at all. The log file stays bounded (it is reused from its start once checkpointed) instead
 * of growing with every record. */
static void test_checkpoint_off_loop(void **state) {
  fx *f = *state;
  if (use_pg) skip();
  enum { PAD = 2000, ROUNDS = 60, PER_ROUND = 100 }; /* 12 MB of records, 3x the checkpoint */
  char *json = malloc(PAD + 16);
  assert_non_null(json);
  memcpy(json, "{\"pad\":\"", 8);
  memset(json + 8, 'x', PAD);
  memcpy(json + 8 + PAD, "\"}", 3);
  told t[ROUNDS];
  uint64_t syncs = evs__sqlite_vfs_thread_syncs();
  for (int r = 0; r < ROUNDS; r++) {
    uint64_t seq = 0;
    for (int i = 0; i < PER_ROUND; i++)
      assert_int_equal(evs__appendq_add(&f->w, "t", f->stream, json, &seq), 0);
    t[r] = (told){f, r, 99, 0, 0};
    assert_int_equal(evs__appendq_wait(&f->w, seq, on_told, &t[r]), 0);
    run_until(f, r + 1);
    assert_int_equal(t[r].status, 0);
    assert_int_equal(t[r].stored, (r + 1) * PER_ROUND);
  }
  uint64_t all = evs__appendq_batches(&f->w), on_loop = evs__appendq_batches_on_loop(&f->w);
  print_message("%llu batches, %llu on the loop\n", (unsigned long long)all,
                (unsigned long long)on_loop);
  assert_true(on_loop < all);          /* the checkpoints' batches went to the thread */
  assert_true(on_loop >= all - all / 4); /* and only those */
  assert_int_equal(evs__sqlite_vfs_thread_syncs(), syncs);
  char wal[160];
  struct stat st;
  snprintf(wal, sizeof wal, "%s-wal", f->path);
  assert_int_equal(stat(wal, &st), 0);
  print_message("log file: %lld bytes\n", (long long)st.st_size);
  assert_true(st.st_size < 8 << 20);
  free(json);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_one_record, setup, teardown),
      cmocka_unit_test_setup_teardown(test_group_commit_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_told_with_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_behind_then_urgent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_waiters_out_of_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_close_tells, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
      cmocka_unit_test_setup_teardown(test_written_on_loop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_grouped_on_loop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lock_held_elsewhere, setup, teardown),
      cmocka_unit_test_setup_teardown(test_checkpoint_off_loop, setup, teardown),
  };
  int failed = cmocka_run_group_tests_name("appendq/sqlite", tests, NULL, NULL);
  pg_dsn = getenv("EVS_TEST_PG_DSN");
  if (!pg_dsn || !*pg_dsn) {
    print_message("appendq/postgresql: skipped: EVS_TEST_PG_DSN is not set "
                  "(tests/integration/pg_store.sh starts a server and sets it)\n");
    return failed ? 1 : 0;
  }
  use_pg = 1;
  failed += cmocka_run_group_tests_name("appendq/postgresql", tests, NULL, NULL);
  return failed ? 1 : 0;
}
