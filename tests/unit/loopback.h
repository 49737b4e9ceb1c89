/* tests/unit/loopback.h: a libuv TCP server on 127.0.0.1 at a port the kernel picks (never a
 * fixed port: tests run in parallel). Include after cmocka.h. */
#ifndef EVS_TEST_LOOPBACK_H
#define EVS_TEST_LOOPBACK_H

#include <netinet/in.h>
#include <uv.h>

/* Initialises, binds and listens *server on loop; *addr receives its address (port included).
 * Returns the port. */
static inline int loopback_listen(uv_loop_t *loop, uv_tcp_t *server, int backlog,
                                  uv_connection_cb on_connection, struct sockaddr_in *addr) {
  uv_tcp_init(loop, server);
  uv_ip4_addr("127.0.0.1", 0, addr);
  assert_int_equal(uv_tcp_bind(server, (const struct sockaddr *)addr, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)server, backlog, on_connection), 0);
  int len = sizeof *addr;
  assert_int_equal(uv_tcp_getsockname(server, (struct sockaddr *)addr, &len), 0);
  return ntohs(addr->sin_port);
}

#endif
