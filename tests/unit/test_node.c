/*
 * Unit tests for core/node.c, the worker's end of the node channel: the test plays the master on
 * the other end of a SOCK_SEQPACKET pair. A broadcast leaves as one BCAST datagram with the
 * plugin's name and payload; done runs once with the COUNT and the replies (or at the timeout,
 * counting missing replies as failed); an incoming BCAST reaches the subscribed plugin, whose
 * reply goes back to the sender's slot; one for a plugin without a subscriber is answered
 * -ENOSYS; without a channel done runs on the next turn with 0, 0. keep_fd sends a KEEP datagram
 * carrying the name and a duplicate descriptor (none to drop), refused while draining or with a
 * bad name; kept_fd hands a plugin its own kept descriptor once, in init only, and the rest are
 * closed after init.
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

#include "../../core/node.h"
#include "../../core/plugin.h"
#include "../../core/worker.h"

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

/* The master's side of a KEEP: header, name and the descriptor that came with it (or -1). */
static ssize_t recv_keep(evs__node_hdr *h, char *name, size_t cap, int *fd) {
  uint8_t buf[256];
  union {
    struct cmsghdr align;
    char b[CMSG_SPACE(sizeof(int))];
  } cm;
  struct iovec iov = {buf, sizeof buf};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b,
                      .msg_controllen = sizeof cm.b};
  ssize_t n = recvmsg(master_fd, &mh, MSG_DONTWAIT);
  assert_true(n >= (ssize_t)sizeof *h);
  memcpy(h, buf, sizeof *h);
  size_t nl = (size_t)n - sizeof *h < cap - 1 ? (size_t)n - sizeof *h : cap - 1;
  memcpy(name, buf + sizeof *h, nl);
  name[nl] = 0;
  *fd = -1;
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  if (c && c->cmsg_type == SCM_RIGHTS) memcpy(fd, CMSG_DATA(c), sizeof *fd);
  return n;
}

static void test_keep_fd(void **state) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  assert_int_equal(evs__node_keep_fd(&plugins[0], "enclave", p[1]), 0);
  evs__node_hdr h;
  char name[64];
  int fd;
  recv_keep(&h, name, sizeof name, &fd);
  assert_int_equal(h.type, EVS__NODE_KEEP);
  assert_string_equal(h.plugin, "enclave");
  assert_string_equal(name, "enclave");
  assert_true(fd >= 0 && fd != p[1]); /* a duplicate: the caller keeps its own */
  assert_int_equal(write(fd, "k", 1), 1);
  char c = 0;
  assert_int_equal(read(p[0], &c, 1), 1);
  assert_int_equal(c, 'k');
  close(fd);
  /* fd < 0 drops what was kept: a KEEP without a descriptor. */
  assert_int_equal(evs__node_keep_fd(&plugins[0], "enclave", -1), 0);
  recv_keep(&h, name, sizeof name, &fd);
  assert_int_equal(fd, -1);
  assert_int_equal(evs__node_keep_fd(&plugins[0], "Bad Name", p[1]), -EINVAL);
  assert_int_equal(evs__node_keep_fd(&plugins[0], "", p[1]), -EINVAL);
  w.draining = 1; /* a successor has the rank now */
  assert_int_equal(evs__node_keep_fd(&plugins[0], "enclave", p[1]), -EPERM);
  w.draining = 0;
  evs__node_stop(&w);
  assert_int_equal(evs__node_keep_fd(&plugins[0], "enclave", p[1]), -ENOTCONN);
  close(p[0]);
  close(p[1]);
}

static void test_kept_fd(void **state) {
  int a[2], b[2];
  assert_int_equal(pipe(a), 0);
  assert_int_equal(pipe(b), 0);
  evs__kept_fd kept[2] = {{0, "enclave", "enclave", a[1]}, {0, "other", "enclave", b[1]}};
  w.kept = kept;
  w.nkept = 2;
  assert_int_equal(evs__node_kept_fd(&plugins[0], "enclave"), -EPERM); /* init only */
  plugins[0].in_init = 1;
  assert_int_equal(evs__node_kept_fd(&plugins[0], "nothing"), -ENOENT);
  assert_int_equal(evs__node_kept_fd(&plugins[0], "enclave"), a[1]);
  assert_int_equal(evs__node_kept_fd(&plugins[0], "enclave"), -ENOENT); /* taken once */
  plugins[0].in_init = 0;
  /* Another plugin's descriptor is not ours, and is closed after init. */
  evs__node_kept_close_rest(&w);
  assert_int_equal(w.nkept, 0);
  char c;
  assert_int_equal(read(b[0], &c, 1), 0); /* EOF: its write end is closed */
  assert_int_equal(write(a[1], "x", 1), 1); /* ours stays open */
  close(a[0]);
  close(a[1]);
  close(b[0]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_broadcast_counts_replies, setup, teardown),
      cmocka_unit_test_setup_teardown(test_broadcast_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_incoming_message_reaches_subscriber, setup, teardown),
      cmocka_unit_test_setup_teardown(test_alone, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keep_fd, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kept_fd, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
