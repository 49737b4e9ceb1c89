/*
 * Unit tests for core/io_edge.c's loop (evs__io_edge_run): the worker blocks on the
 * edge-triggered streams' epoll set, with libuv's descriptor inside it, and lets libuv take a
 * turn only when it needs one. A callback run outside libuv's turn (an edge-triggered read) may
 * leave libuv work that it does only inside a turn and that uv_backend_timeout does not report:
 * a watcher to register (a uv_poll started there), a prepare handle. Each step of the chain
 * below starts the next, so a loop that blocked without giving libuv its turn would hang here
 * (alarm fails the test): an edge read starts a poll on a readable pipe, whose callback starts a
 * prepare handle, which starts a timer, which wakes the loop from a thread through an async
 * handle, which stops the loop. The stream's answer leaves from the edge callback; after the
 * loop, libuv polls the set again and the stream is read edge-triggered as before.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../core/io.h"
#include "loopback.h"

static uv_loop_t *loop;
static uv_tcp_t server;
static evs__io io;
static int have_io, stop;
static uv_poll_t poll_h;
static uv_prepare_t prep;
static uv_timer_t timer;
static uv_async_t async;
static int pipefd[2] = {-1, -1};
static int reads, polled, prepared, timed, woken;
static char got[64];
static size_t got_len;

static void on_async(uv_async_t *h) {
  (void)h;
  woken++;
  stop = 1;
}

static void *wake(void *arg) {
  (void)arg;
  uv_async_send(&async);
  return NULL;
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  timed++;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, wake, NULL), 0);
  pthread_join(th, NULL);
}

static void on_prepare(uv_prepare_t *p) {
  uv_prepare_stop(p);
  prepared++;
  uv_timer_start(&timer, on_timer, 5, 0);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  (void)status;
  (void)events;
  uv_poll_stop(p);
  polled++;
  uv_prepare_start(&prep, on_prepare);
}

static void on_read(evs__io *s, ssize_t n, const char *data) {
  assert_true(n > 0);
  assert_true(s->edge); /* read by io_edge.c, not by libuv */
  memcpy(got + got_len, data, (size_t)n);
  got_len += (size_t)n;
  if (reads++ == 0) {
    assert_int_equal(evs__io_write(s, "pong", 4), 0);
    /* libuv registers this watcher only inside a turn */
    assert_int_equal(uv_poll_start(&poll_h, UV_READABLE, on_poll), 0);
  }
}

static void on_connection(uv_stream_t *srv, int status) {
  assert_int_equal(status, 0);
  uv_tcp_init(loop, &io.h.tcp);
  evs__io_init(&io, NULL);
  assert_int_equal(uv_accept(srv, &io.h.stream), 0);
  io.on_read = on_read;
  assert_int_equal(evs__io_edge_on(&io), 0);
  assert_int_equal(evs__io_read_start(&io), 0);
  have_io = 1;
}

static void test_edge_run(void **state) {
  (void)state;
  alarm(20); /* a loop that forgets libuv's turn hangs: fail instead */
  loop = uv_default_loop();
  assert_int_equal(pipe(pipefd), 0);
  assert_int_equal(write(pipefd[1], "x", 1), 1); /* readable from the start */
  uv_poll_init(loop, &poll_h, pipefd[0]);
  uv_prepare_init(loop, &prep);
  uv_timer_init(loop, &timer);
  uv_async_init(loop, &async, on_async);
  struct sockaddr_in a;
  loopback_listen(loop, &server, 8, on_connection, &a);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(send(c, "ping", 4, 0), 4);

  assert_int_equal(evs__io_edge_run(loop, &stop), 1);
  assert_true(have_io);
  assert_int_equal(reads, 1);
  assert_int_equal(got_len, 4);
  assert_memory_equal(got, "ping", 4);
  assert_int_equal(polled, 1);
  assert_int_equal(prepared, 1);
  assert_int_equal(timed, 1);
  assert_int_equal(woken, 1);
  char buf[8];
  assert_int_equal(recv(c, buf, sizeof buf, 0), 4);
  assert_memory_equal(buf, "pong", 4);

  /* After the loop libuv polls the set again: the stream still reads edge-triggered. */
  assert_int_equal(send(c, "more", 4, 0), 4);
  while (got_len < 8) uv_run(loop, UV_RUN_ONCE);
  assert_memory_equal(got + 4, "more", 4);
  assert_int_equal(reads, 2);

  close(c);
  evs__io_close(&io);
  uv_close((uv_handle_t *)&poll_h, NULL);
  uv_close((uv_handle_t *)&prep, NULL);
  uv_close((uv_handle_t *)&timer, NULL);
  uv_close((uv_handle_t *)&async, NULL);
  uv_close((uv_handle_t *)&server, NULL);
  uv_run(loop, UV_RUN_DEFAULT); /* returns: the set's poll does not keep the loop alive */
  close(pipefd[0]);
  close(pipefd[1]);
  alarm(0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_edge_run)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
