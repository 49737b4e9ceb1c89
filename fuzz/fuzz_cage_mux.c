/*
 * libFuzzer target for plugins/cage-broker/cage_mux.c: the cage mux's frames as the host side
 * reads them from a cage (a cage's init is code the image's author controls, so everything it
 * sends is untrusted), and the same bytes through the payload readers. The input is written
 * into one end of a socketpair and a host-side engine (even channel ids, accepting every
 * OPEN with a socketpair of its own) services the other end until it has read everything or
 * died. Checks, beyond memory safety: the parser never returns a size beyond the input or
 * below the header, and a dead engine stays dead.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cage_mux.h"

static int dead;

static void on_ctrl(void *arg, cmux *m, const cmux_frame *f) {
  (void)arg, (void)m;
  cmux_rd r;
  cmux_rd_init(&r, f->payload, f->len);
  uint32_t id;
  uint16_t v16;
  uint8_t v8;
  const char *s;
  size_t l;
  const uint8_t *rest;
  cmux_get_u32(&r, &id);
  cmux_get_u16(&r, &v16);
  cmux_get_u8(&r, &v8);
  while (cmux_get_str(&r, &s, &l) == 0 && l) {
    if (s + l > (const char *)f->payload + f->len) __builtin_trap();
  }
  cmux_get_rest(&r, &rest, &l);
}

static int on_open(void *arg, cmux *m, uint32_t chan, uint8_t kind, uint16_t port,
                   const char *name, int *skip_head) {
  (void)arg, (void)m, (void)chan, (void)port;
  if (strlen(name) > 255) __builtin_trap();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return -1;
  close(sv[1]); /* the local end sees EOF and a broken pipe: SHUT, CLOSE paths */
  *skip_head = kind == CMUX_KIND_EGRESS;
  return sv[0];
}

static void on_dead(void *arg, cmux *m, const char *why) {
  (void)arg, (void)m, (void)why;
  dead = 1;
}

static const cmux_ops ops = {on_ctrl, on_open, on_dead};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The parser alone, frame after frame. */
  for (size_t off = 0; off < size;) {
    cmux_frame f;
    long r = cmux_parse(data + off, size - off, &f);
    if (r <= 0) break;
    if ((size_t)r > size - off || r < CMUX_HDR || f.len != (size_t)r - CMUX_HDR) __builtin_trap();
    off += (size_t)r;
  }
  /* The engine. */
  int sv[2];
  if (size > 1 << 20 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return 0;
  int big = 1 << 21;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  dead = 0;
  cmux *m = cmux_new(sv[0], 0, &ops, NULL);
  size_t sent = 0;
  for (int round = 0; round < 64 && !dead; round++) {
    if (sent < size) {
      ssize_t k = send(sv[1], data + sent, size - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (k > 0) sent += (size_t)k;
      if (sent == size) shutdown(sv[1], SHUT_WR);
    }
    struct pollfd pf[300];
    size_t n = cmux_pollfds(m, pf, 300);
    if (n == 0) break;
    if (poll(pf, n, 0) < 0) break;
    cmux_service(m, pf, n);
    char sink[65536];
    while (recv(sv[1], sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
  }
  if (dead && cmux_pollfds(m, (struct pollfd[1]){{0}}, 1) != 0) __builtin_trap();
  cmux_free(m);
  close(sv[0]);
  close(sv[1]);
  return 0;
}
