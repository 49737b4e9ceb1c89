/*
 * Unit tests for edge-triggered reading of a TLS stream (core/io_edge.c with core/io.c's TLS):
 * a server connection is read edge-triggered once its handshake is done (refused before), and
 * records that OpenSSL holds are never stranded, since no socket edge will come for them:
 * - two records that arrive in one read are both delivered (io.c stops calling SSL_read once
 *   nothing is left, which must not be while the second record waits in the BIO);
 * - the owner pauses after the first; the second, held, comes at read_start.
 * A stranded record hangs the loop: alarm fails the test. Also a unix socket reads
 * edge-triggered (the upstream app's connection), and its peer's close that comes with the last
 * data is not missed.
 * The client is a thread with a blocking OpenSSL client; TCP_CORK sends its two records in
 * one segment.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../core/io.h"
#include "loopback.h"

static uv_loop_t *loop;
static uv_tcp_t server;
static evs__io io;
static uv_timer_t resume_timer;
static SSL_CTX *sctx;
static int port, handshakes, paused, resumed, refused_early, done;
static volatile int client_ok; /* the client thread checks without cmocka (not its thread) */
static char got[64];
static size_t got_len;

static SSL_CTX *server_ctx(void) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  assert_non_null(k);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                             0);
  X509_set_issuer_name(x, n);
  assert_true(X509_sign(x, k, EVP_sha256()) > 0);
  SSL_CTX *c = SSL_CTX_new(TLS_server_method());
  assert_int_equal(SSL_CTX_use_certificate(c, x), 1);
  assert_int_equal(SSL_CTX_use_PrivateKey(c, k), 1);
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS); /* as core/tls.c */
  X509_free(x);
  EVP_PKEY_free(k);
  return c;
}

/* Two records in one TCP segment, then the server's answer. */
static int send_two(int fd, SSL *s, const char *a, const char *b) {
  int one = 1, zero = 0;
  char buf[8];
  setsockopt(fd, IPPROTO_TCP, TCP_CORK, &one, sizeof one);
  int ok = SSL_write(s, a, (int)strlen(a)) == (int)strlen(a) &&
           SSL_write(s, b, (int)strlen(b)) == (int)strlen(b);
  setsockopt(fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero);
  return ok && SSL_read(s, buf, 2) == 2 && memcmp(buf, "ok", 2) == 0;
}

static void *client(void *arg) {
  (void)arg;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  SSL_CTX *c = SSL_CTX_new(TLS_client_method());
  SSL *s = SSL_new(c);
  client_ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && SSL_set_fd(s, fd) == 1 &&
              SSL_connect(s) == 1 &&
              send_two(fd, s, "ab", "cd") && /* the server pauses after "ab" */
              send_two(fd, s, "ef", "gh");   /* it does not: both in one go */
  SSL_free(s);
  SSL_CTX_free(c);
  close(fd);
  return NULL;
}

static void on_resume(uv_timer_t *t) {
  (void)t;
  resumed++;
  /* Nothing new on the socket: "cd" is in OpenSSL's BIO and must come from here. */
  assert_int_equal(evs__io_read_start(&io), 0);
}

static void on_read(evs__io *s, ssize_t n, const char *data) {
  if (n < 0) {
    done = 1; /* the client closed */
    return;
  }
  assert_true(s->edge); /* read by io_edge.c, not by libuv */
  memcpy(got + got_len, data, (size_t)n);
  got_len += (size_t)n;
  if (got_len == 2 && !paused) {
    paused = 1;
    evs__io_read_stop(s);
    uv_timer_start(&resume_timer, on_resume, 10, 0);
    return;
  }
  if (got_len == 4 || got_len == 8) assert_int_equal(evs__io_write(s, "ok", 2), 0);
}

static void on_handshake(evs__io *s, int status) {
  assert_int_equal(status, 0);
  handshakes++;
  assert_int_equal(evs__io_edge_on(s), 0);
}

static void on_connection(uv_stream_t *srv, int status) {
  assert_int_equal(status, 0);
  uv_tcp_init(loop, &io.h.tcp);
  evs__io_init(&io, NULL);
  assert_int_equal(uv_accept(srv, &io.h.stream), 0);
  io.on_read = on_read;
  assert_int_equal(evs__io_tls_server(&io, sctx, on_handshake), 0);
  refused_early = evs__io_edge_on(&io) == UV_EINVAL; /* not while handshaking */
  assert_int_equal(evs__io_read_start(&io), 0);
}

static void test_tls_edge(void **state) {
  (void)state;
  alarm(20); /* a stranded record hangs the loop: fail instead */
  loop = uv_default_loop();
  sctx = server_ctx();
  uv_timer_init(loop, &resume_timer);
  struct sockaddr_in a;
  port = loopback_listen(loop, &server, 8, on_connection, &a);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, client, NULL), 0);
  while (!done) uv_run(loop, UV_RUN_ONCE);
  pthread_join(th, NULL);
  assert_true(client_ok);
  assert_true(refused_early);
  assert_int_equal(handshakes, 1);
  assert_int_equal(paused, 1);
  assert_int_equal(resumed, 1);
  assert_int_equal(got_len, 8);
  assert_memory_equal(got, "abcdefgh", 8);
  evs__io_close(&io);
  uv_close((uv_handle_t *)&resume_timer, NULL);
  uv_close((uv_handle_t *)&server, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  SSL_CTX_free(sctx);
  alarm(0);
}

static evs__io pio;
static char pgot[16];
static size_t pgot_len;

static int peof;

static void on_pipe_read(evs__io *s, ssize_t n, const char *data) {
  assert_true(s->edge);
  if (n == UV_EOF) {
    peof = 1;
    return;
  }
  assert_true(n > 0);
  memcpy(pgot + pgot_len, data, (size_t)n);
  pgot_len += (size_t)n;
}

static void on_keep(uv_timer_t *t) { (void)t; }

static void test_unix_edge(void **state) {
  (void)state;
  alarm(20);
  loop = uv_default_loop();
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  uv_pipe_init(loop, &pio.h.pipe, 0);
  evs__io_init(&pio, NULL);
  assert_int_equal(uv_pipe_open(&pio.h.pipe, sv[0]), 0);
  pio.on_read = on_pipe_read;
  assert_int_equal(evs__io_edge_on(&pio), 0);
  assert_int_equal(evs__io_read_start(&pio), 0);
  assert_int_equal(write(sv[1], "hello", 5), 5);
  uv_timer_t keep; /* the set's poll is unreferenced: something must keep the loop running */
  uv_timer_init(loop, &keep);
  uv_timer_start(&keep, on_keep, 5, 5);
  while (pgot_len < 5) uv_run(loop, UV_RUN_ONCE);
  assert_memory_equal(pgot, "hello", 5);
  /* Writes go out with send(2) on the socket the set reads. */
  assert_int_equal(evs__io_write(&pio, "back", 4), 0);
  char buf[8];
  assert_int_equal(read(sv[1], buf, sizeof buf), 4);
  assert_memory_equal(buf, "back", 4);
  /* The last data and the close in one edge (an upstream that answers and closes): the short
   * read must not end the reading before the EOF. */
  assert_int_equal(write(sv[1], "bye", 3), 3);
  close(sv[1]);
  while (!peof) uv_run(loop, UV_RUN_ONCE);
  assert_int_equal(pgot_len, 8);
  assert_memory_equal(pgot, "hellobye", 8);
  uv_close((uv_handle_t *)&keep, NULL);
  evs__io_close(&pio);
  uv_run(loop, UV_RUN_DEFAULT);
  alarm(0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tls_edge),
                                     cmocka_unit_test(test_unix_edge)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
