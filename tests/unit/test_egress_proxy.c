/*
 * The egress proxy of function boxes (plugins/function-runtime/egress_proxy.c) and its
 * ClientHello reader (lib/tls_hello.c), with real sockets: the proxy and an echo destination
 * run on a libuv loop in this thread, the "box" is a blocking client in another thread.
 * ClientHellos come from OpenSSL.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "egress_proxy.h"
#include "loopback.h"
#include "tls_hello.h"

/* ---- ClientHellos from OpenSSL ------------------------------------------------------------ */

static size_t client_hello(const char *sni, uint8_t *out, size_t cap) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl = SSL_new(ctx);
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, rb, wb);
  if (sni) SSL_set_tlsext_host_name(ssl, sni);
  SSL_set_connect_state(ssl);
  SSL_do_handshake(ssl); /* wants to read: the ClientHello is in wb */
  int n = BIO_read(wb, out, (int)cap);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  assert_true(n > 0);
  return (size_t)n;
}

static void test_sni_from_openssl(void **state) {
  (void)state;
  uint8_t hello[4096];
  char name[256];
  size_t n = client_hello("API.Example.com", hello, sizeof hello);
  assert_int_equal(evs_tls_hello_sni(hello, n, name, sizeof name), 1);
  assert_string_equal(name, "api.example.com");
  assert_true(evs_tls_hello_is_tls(hello, n));
  /* Every proper prefix asks for more, never decides. */
  for (size_t k = 0; k < n; k++)
    assert_int_equal(evs_tls_hello_sni(hello, k, name, sizeof name), -EAGAIN);
  /* A name that does not fit. */
  assert_int_equal(evs_tls_hello_sni(hello, n, name, 8), -ENAMETOOLONG);
  n = client_hello(NULL, hello, sizeof hello);
  assert_int_equal(evs_tls_hello_sni(hello, n, name, sizeof name), 0);
}

static void test_sni_refuses_what_is_not_a_hello(void **state) {
  (void)state;
  char name[256];
  const uint8_t http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_false(evs_tls_hello_is_tls(http, sizeof http - 1));
  assert_int_equal(evs_tls_hello_sni(http, sizeof http - 1, name, sizeof name), -EINVAL);
  uint8_t hello[4096];
  size_t n = client_hello("a.example", hello, sizeof hello);
  uint8_t bad[4096];
  /* Not a client_hello, an unknown record version, a record longer than TLS allows. */
  memcpy(bad, hello, n);
  bad[5] = 2;
  assert_int_equal(evs_tls_hello_sni(bad, n, name, sizeof name), -EINVAL);
  memcpy(bad, hello, n);
  bad[1] = 9;
  assert_int_equal(evs_tls_hello_sni(bad, n, name, sizeof name), -EINVAL);
  memcpy(bad, hello, n);
  bad[3] = 0x40;
  assert_int_equal(evs_tls_hello_sni(bad, n, name, sizeof name), -EINVAL);
  /* A handshake longer than its record: split over records, not reassembled. */
  memcpy(bad, hello, n);
  bad[8] = (uint8_t)(bad[8] + 1);
  assert_int_equal(evs_tls_hello_sni(bad, n, name, sizeof name), -EINVAL);
  /* Flipping any single byte never makes the reader go out of bounds or accept a garbage
   * name (ASan watches the first; the second is checked here). */
  for (size_t i = 5; i < n; i++) {
    memcpy(bad, hello, n);
    bad[i] ^= 0xff;
    int rc = evs_tls_hello_sni(bad, n, name, sizeof name);
    if (rc == 1)
      for (const char *c = name; *c; c++) assert_true(*c > 0x20 && *c < 0x7f);
  }
}

/* ---- the proxy, end to end ---------------------------------------------------------------- */

typedef struct world {
  uv_loop_t loop;
  uv_tcp_t echo;
  int echo_port;
  uv_async_t done;
  egress_proxy *eg;
  char dir[64], sock[96];
  int allowed, refused;
  char last_why[200];
} world;

static world W;

static void echo_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)h;
  *b = uv_buf_init(malloc(s), (unsigned)s);
}
static void echo_written(uv_write_t *w, int st) {
  (void)st;
  free(w->data);
  free(w);
}
static void echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n < 0) {
    free(b->base);
    uv_close((uv_handle_t *)s, (uv_close_cb)free);
    return;
  }
  if (n == 0) {
    free(b->base);
    return;
  }
  uv_write_t *w = malloc(sizeof *w);
  w->data = b->base;
  uv_buf_t o = uv_buf_init(b->base, (unsigned)n);
  uv_write(w, s, &o, 1, echo_written);
}
static void echo_conn(uv_stream_t *l, int st) {
  (void)st;
  uv_tcp_t *c = malloc(sizeof *c);
  uv_tcp_init(l->loop, c);
  uv_accept(l, (uv_stream_t *)c);
  uv_read_start((uv_stream_t *)c, echo_alloc, echo_read);
}

static void on_event(void *arg, const char *host, int port, int allowed, const char *why) {
  (void)arg;
  (void)host;
  (void)port;
  if (allowed) W.allowed++;
  else W.refused++;
  snprintf(W.last_why, sizeof W.last_why, "%s", why ? why : "");
}

static void on_done(uv_async_t *a) { uv_stop(a->loop); }

static void open_egress(const char *const *allow, size_t n, int allow_private, unsigned max) {
  egress_proxy_opts o = {.path = W.sock, .allow = allow, .n_allow = n,
                      .allow_private = allow_private, .max_tunnels = max, .event = on_event};
  const char *why = NULL;
  assert_int_equal(egress_proxy_open(&W.loop, &o, &W.eg, &why), 0);
}

static int setup(void **state) {
  (void)state;
  memset(&W, 0, sizeof W);
  uv_loop_init(&W.loop);
  strcpy(W.dir, "/tmp/fr-egress-XXXXXX");
  assert_non_null(mkdtemp(W.dir));
  snprintf(W.sock, sizeof W.sock, "%s/egress.sock", W.dir);
  struct sockaddr_in a;
  W.echo_port = loopback_listen(&W.loop, &W.echo, 16, echo_conn, &a);
  uv_async_init(&W.loop, &W.done, on_done);
  return 0;
}

static void close_all(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int teardown(void **state) {
  (void)state;
  if (W.eg) egress_proxy_close(W.eg);
  uv_run(&W.loop, UV_RUN_NOWAIT);
  uv_walk(&W.loop, close_all, NULL);
  uv_run(&W.loop, UV_RUN_DEFAULT);
  uv_loop_close(&W.loop);
  rmdir(W.dir);
  return 0;
}

/* The box's side, in a thread: a blocking unix socket client. */
static int box_connect(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", W.sock);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

/* Sends a CONNECT; returns the status of the answer (its head read byte by byte, so nothing
 * after it is consumed), or -1 when the proxy closed without answering. */
static int box_connect_to(int fd, const char *target, char *body, size_t cap) {
  char req[512];
  int n = snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target);
  assert_int_equal(write(fd, req, (size_t)n), n);
  char head[1024];
  size_t k = 0;
  while (k < sizeof head - 1) {
    if (read(fd, head + k, 1) != 1) return -1;
    k++;
    if (k >= 4 && !memcmp(head + k - 4, "\r\n\r\n", 4)) break;
  }
  head[k] = 0;
  int status = atoi(head + 9);
  if (body) {
    ssize_t r = status == 200 ? 0 : read(fd, body, cap - 1);
    body[r > 0 ? r : 0] = 0;
  }
  return status;
}

/* Writes data and reads as much back (the echo); returns 1 when it came back whole, 0 when the
 * proxy closed the tunnel instead. */
static int box_echo(int fd, const void *data, size_t n) {
  if (write(fd, data, n) != (ssize_t)n) return 0;
  uint8_t *back = malloc(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, back + got, n - got);
    if (r <= 0) break;
    got += (size_t)r;
  }
  int ok = got == n && memcmp(back, data, n) == 0;
  free(back);
  return ok;
}

typedef void (*scenario_fn)(void);
static void *scenario_thread(void *arg) {
  ((scenario_fn)arg)();
  uv_async_send(&W.done);
  return NULL;
}
static void run_scenario(scenario_fn f) {
  pthread_t th;
  pthread_create(&th, NULL, scenario_thread, (void *)f);
  uv_run(&W.loop, UV_RUN_DEFAULT);
  pthread_join(th, NULL);
}

/* Results the thread leaves for the test's asserts (cmocka asserts belong to the main thread). */
static int R[16];
static char RB[8][512];

static void sc_allowed_echo(void) {
  char t[64];
  snprintf(t, sizeof t, "localhost:%d", W.echo_port);
  int fd = box_connect();
  R[0] = box_connect_to(fd, t, NULL, 0);
  R[1] = box_echo(fd, "\x01raw bytes, not HTTP, not TLS", 29);
  static uint8_t big[4 << 20];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7);
  R[2] = box_echo(fd, big, sizeof big); /* 4 MiB through, with backpressure on both ends */
  close(fd);
}

static void test_allowed_host_is_relayed(void **state) {
  (void)state;
  const char *allow[] = {"localhost"};
  open_egress(allow, 1, 1, 0);
  run_scenario(sc_allowed_echo);
  assert_int_equal(R[0], 200);
  assert_true(R[1]);
  assert_true(R[2]);
  assert_int_equal(W.allowed, 1);
}

static void sc_refusals(void) {
  char t[64];
  int fd = box_connect();
  R[0] = box_connect_to(fd, "example.com:443", RB[0], sizeof RB[0]); /* not in the list */
  close(fd);
  fd = box_connect();
  snprintf(t, sizeof t, "127.0.0.1:%d", W.echo_port); /* listed, but loopback */
  R[1] = box_connect_to(fd, t, RB[1], sizeof RB[1]);
  close(fd);
  fd = box_connect();
  const char get[] = "GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n";
  R[4] = write(fd, get, sizeof get - 1) > 0;
  char buf[512];
  ssize_t r = read(fd, buf, sizeof buf - 1);
  buf[r > 0 ? r : 0] = 0;
  R[2] = atoi(buf + 9);
  close(fd);
  fd = box_connect();
  R[3] = box_connect_to(fd, "localhost", RB[3], sizeof RB[3]); /* no port */
  close(fd);
}

static void test_refusals_say_why(void **state) {
  (void)state;
  const char *allow[] = {"localhost", "127.0.0.1"};
  open_egress(allow, 2, 0, 0);
  run_scenario(sc_refusals);
  assert_int_equal(R[0], 403);
  assert_non_null(strstr(RB[0], "allowlist"));
  assert_int_equal(R[1], 403);
  assert_non_null(strstr(RB[1], "loopback"));
  assert_int_equal(R[2], 400);
  assert_int_equal(R[3], 400);
  assert_int_equal(W.allowed, 0);
  assert_int_equal(W.refused, 4);
}

static void sc_names(void) {
  char t[64], http[256];
  uint8_t hello[4096];
  snprintf(t, sizeof t, "localhost:%d", W.echo_port);
  /* A TLS client asking the allowed address for another name: cut off. */
  int fd = box_connect();
  R[0] = box_connect_to(fd, t, NULL, 0);
  size_t n = client_hello("evil.example", hello, sizeof hello);
  R[1] = box_echo(fd, hello, n);
  close(fd);
  /* The same with the CONNECT's name: through. */
  fd = box_connect();
  box_connect_to(fd, t, NULL, 0);
  n = client_hello("LocalHost", hello, sizeof hello);
  R[2] = box_echo(fd, hello, n);
  close(fd);
  /* A ClientHello sent in two pieces, the name in the second. */
  fd = box_connect();
  box_connect_to(fd, t, NULL, 0);
  n = client_hello("localhost", hello, sizeof hello);
  R[3] = write(fd, hello, 20) == 20;
  usleep(20000); /* the proxy has the first piece alone: it must wait, not decide */
  if (write(fd, hello + 20, n - 20) == (ssize_t)(n - 20)) {
    uint8_t back[4096];
    size_t got = 0;
    while (got < n) {
      ssize_t r = read(fd, back + got, n - got);
      if (r <= 0) break;
      got += (size_t)r;
    }
    R[3] = R[3] && got == n && memcmp(back, hello, n) == 0;
  }
  close(fd);
  /* Plain HTTP: the Host header must name the CONNECT host too. */
  fd = box_connect();
  box_connect_to(fd, t, NULL, 0);
  int k = snprintf(http, sizeof http, "GET / HTTP/1.1\r\nHost: other.example\r\n\r\n");
  R[4] = box_echo(fd, http, (size_t)k);
  close(fd);
  fd = box_connect();
  box_connect_to(fd, t, NULL, 0);
  k = snprintf(http, sizeof http, "GET / HTTP/1.1\r\nhost: localhost:%d\r\n\r\n", W.echo_port);
  R[5] = box_echo(fd, http, (size_t)k);
  close(fd);
}

static void test_server_name_must_be_the_connect_host(void **state) {
  (void)state;
  const char *allow[] = {"localhost"};
  open_egress(allow, 1, 1, 0);
  run_scenario(sc_names);
  assert_int_equal(R[0], 200);
  assert_false(R[1]);
  assert_true(R[2]);
  assert_true(R[3]);
  assert_false(R[4]);
  assert_true(R[5]);
}

static void sc_limit(void) {
  char t[64];
  snprintf(t, sizeof t, "localhost:%d", W.echo_port);
  int a = box_connect();
  R[0] = box_connect_to(a, t, NULL, 0);
  if (getenv("FR_EGRESS_DEBUG")) fprintf(stderr, "a=%d\n", R[0]);
  int b = box_connect();
  R[1] = box_connect_to(b, t, RB[1], sizeof RB[1]);
  if (getenv("FR_EGRESS_DEBUG")) fprintf(stderr, "a=%d b=%d\n", R[0], R[1]);
  close(b);
  close(a);
  /* The slot comes back once the first tunnel is gone. */
  for (int i = 0; i < 100; i++) {
    int c = box_connect();
    R[2] = box_connect_to(c, t, NULL, 0);
    if (getenv("FR_EGRESS_DEBUG")) fprintf(stderr, "c=%d\n", R[2]);
    close(c);
    if (R[2] == 200) break;
    usleep(10000);
  }
}

static void test_tunnel_limit(void **state) {
  (void)state;
  open_egress(NULL, 0, 1, 1); /* no allowlist: any host */
  run_scenario(sc_limit);
  assert_int_equal(R[0], 200);
  assert_int_equal(R[1], 503);
  assert_int_equal(R[2], 200);
}

static void test_bad_allowlist_is_refused(void **state) {
  (void)state;
  const char *allow[] = {"api.example.com/v1/pay"};
  egress_proxy_opts o = {.path = W.sock, .allow = allow, .n_allow = 1};
  const char *why = NULL;
  egress_proxy *e = NULL;
  assert_int_equal(egress_proxy_open(&W.loop, &o, &e, &why), -EINVAL);
  assert_non_null(strstr(why, "paths"));
  const char *allow2[] = {"https://api.example.com"};
  o.allow = allow2;
  assert_int_equal(egress_proxy_open(&W.loop, &o, &e, &why), -EINVAL);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* a refused tunnel is a closed socket: the write sees EPIPE */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sni_from_openssl),
      cmocka_unit_test(test_sni_refuses_what_is_not_a_hello),
      cmocka_unit_test_setup_teardown(test_allowed_host_is_relayed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refusals_say_why, setup, teardown),
      cmocka_unit_test_setup_teardown(test_server_name_must_be_the_connect_host, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tunnel_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_allowlist_is_refused, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
