/*
 * Unit tests for core/node.c, the worker's end of the node channel: the test plays the master on
 * the other end of a SOCK_SEQPACKET pair. A broadcast leaves as one BCAST datagram with the
 * plugin's name and payload; done runs once with the COUNT and the replies (or at the timeout,
 * counting missing replies as failed); an incoming BCAST reaches the subscribed plugin, whose
 * reply goes back to the sender's slot; one for a plugin without a subscriber is answered
 * -ENOSYS; without a channel done runs on the next turn with 0, 0.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "worker.h"

static evs__worker w;
static evs__plugin_rec plugins[1];
static int master_fd = -1;

static int done_calls;
static size_t done_workers, done_ok;
static void on_done(void *arg, size_t workers, size_t ok) {
  done_calls++;
  done_workers = workers;
  done_ok = ok;
  uv_stop(w.loop);
}

static char got_msg[64];
static void on_msg(void *state, const uint8_t *msg, size_t len, evs_node_msg *m) {
  assert_ptr_equal(state, &w);
  memcpy(got_msg, msg, len < sizeof got_msg - 1 ? len : sizeof got_msg - 1);
  evs__node_reply(m, -EIO);
}

static int setup(void **state) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  memset(&w, 0, sizeof w);
  w.loop = uv_default_loop();
  w.slot = 3;
  w.ctl_fd = sv[1];
  master_fd = sv[0];
  memset(plugins, 0, sizeof plugins);
  plugins[0].name = "enclave";
  plugins[0].loaded = 1;
  plugins[0].state = &w;
  w.plugins = plugins;
  w.nplugins = 1;
  evs__w = &w;
  done_calls = 0;
  assert_int_equal(evs__node_start(&w), 0);
  return 0;
}

static int teardown(void **state) {
  evs__node_stop(&w);
  uv_run(w.loop, UV_RUN_NOWAIT);
  if (master_fd >= 0) close(master_fd);
  master_fd = -1;
  return 0;
}

static void send_hdr(uint8_t type, uint32_t seq, int32_t origin, int32_t value, const char *plugin,
                     const char *payload) {
  uint8_t buf[sizeof(evs__node_hdr) + 64];
  evs__node_hdr h;
  memset(&h, 0, sizeof h);
  h.type = type;
  h.seq = seq;
  h.origin = origin;
  h.value = value;
  strcpy(h.plugin, plugin);
  memcpy(buf, &h, sizeof h);
  size_t pl = payload ? strlen(payload) : 0;
  if (pl) memcpy(buf + sizeof h, payload, pl);
  assert_int_equal(send(master_fd, buf, sizeof h + pl, 0), (ssize_t)(sizeof h + pl));
}

static evs__node_hdr recv_hdr(char *payload, size_t cap) {
  uint8_t buf[EVS__NODE_DGRAM_MAX];
  ssize_t n = recv(master_fd, buf, sizeof buf, 0);
  assert_true(n >= (ssize_t)sizeof(evs__node_hdr));
  evs__node_hdr h;
  memcpy(&h, buf, sizeof h);
  if (payload) {
    size_t pl = (size_t)n - sizeof h;
    assert_true(pl < cap);
    memcpy(payload, buf + sizeof h, pl);
    payload[pl] = 0;
  }
  return h;
}

static void test_broadcast_counts_replies(void **state) {
  const uint8_t msg[] = "Uapp_x";
  assert_int_equal(evs__node_broadcast(&plugins[0], msg, 6, 5000, on_done, NULL), 0);
  char payload[64];
  evs__node_hdr h = recv_hdr(payload, sizeof payload);
  assert_int_equal(h.type, EVS__NODE_BCAST);
  assert_string_equal(h.plugin, "enclave");
  assert_string_equal(payload, "Uapp_x");
  /* Two workers reached: one reply ok, one failed. */
  send_hdr(EVS__NODE_REPLY, h.seq, 3, 0, "enclave", NULL);
  send_hdr(EVS__NODE_COUNT, h.seq, 3, 2, "enclave", NULL);
  send_hdr(EVS__NODE_REPLY, h.seq, 3, -5, "enclave", NULL);
  uv_run(w.loop, UV_RUN_DEFAULT);
  assert_int_equal(done_calls, 1);
  assert_int_equal(done_workers, 2);
  assert_int_equal(done_ok, 1);
}

static void test_broadcast_times_out(void **state) {
  const uint8_t msg[] = "L";
  assert_int_equal(evs__node_broadcast(&plugins[0], msg, 1, 50, on_done, NULL), 0);
  evs__node_hdr h = recv_hdr(NULL, 0);
  send_hdr(EVS__NODE_COUNT, h.seq, 3, 2, "enclave", NULL);
  send_hdr(EVS__NODE_REPLY, h.seq, 3, 0, "enclave", NULL);
  uv_run(w.loop, UV_RUN_DEFAULT); /* the second reply never comes */
  assert_int_equal(done_calls, 1);
  assert_int_equal(done_workers, 2);
  assert_int_equal(done_ok, 1);
}

static void test_bad_arguments(void **state) {
  uint8_t big[EVS_NODE_MSG_MAX + 1] = {0};
  assert_int_equal(evs__node_broadcast(&plugins[0], big, 0, 100, on_done, NULL), -EINVAL);
  assert_int_equal(evs__node_broadcast(&plugins[0], big, sizeof big, 100, on_done, NULL), -EINVAL);
  assert_int_equal(evs__node_broadcast(&plugins[0], big, 1, 0, on_done, NULL), -EINVAL);
  assert_int_equal(evs__node_broadcast(&plugins[0], big, 1, 100, NULL, NULL), -EINVAL);
}

static void stop_loop(uv_timer_t *t) { uv_stop(t->loop); }

static void test_incoming_message_reaches_subscriber(void **state) {
  plugins[0].node_fn = on_msg;
  send_hdr(EVS__NODE_BCAST, 77, 1, 0, "enclave", "hello");
  send_hdr(EVS__NODE_BCAST, 78, 1, 0, "nobody", "x");
  static uv_timer_t t;
  uv_timer_init(w.loop, &t);
  uv_timer_start(&t, stop_loop, 100, 0);
  uv_run(w.loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(w.loop, UV_RUN_NOWAIT);
  assert_string_equal(got_msg, "hello");
  evs__node_hdr h = recv_hdr(NULL, 0);
  assert_int_equal(h.type, EVS__NODE_REPLY);
  assert_int_equal(h.seq, 77);
  assert_int_equal(h.origin, 1);
  assert_int_equal(h.value, -EIO);
  h = recv_hdr(NULL, 0);
  assert_int_equal(h.seq, 78);
  assert_int_equal(h.value, -ENOSYS);
  plugins[0].node_fn = NULL;
}

static void test_alone(void **state) {
  evs__node_stop(&w); /* no channel: evserver -t, or the master is gone */
  const uint8_t msg[] = "U";
  assert_int_equal(evs__node_broadcast(&plugins[0], msg, 1, 5000, on_done, NULL), 0);
  assert_int_equal(done_calls, 0); /* never before the call returns */
  uv_run(w.loop, UV_RUN_DEFAULT);
  assert_int_equal(done_calls, 1);
  assert_int_equal(done_workers, 0);
  assert_int_equal(done_ok, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_broadcast_counts_replies, setup, teardown),
      cmocka_unit_test_setup_teardown(test_broadcast_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_incoming_message_reaches_subscriber, setup, teardown),
      cmocka_unit_test_setup_teardown(test_alone, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
