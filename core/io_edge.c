/*
 * Edge-triggered reading for plain TCP streams (io.h, evs__io_edge_on). A long-lived stream
 * carrying many small messages (a WebSocket, a tunnel) pays per message for libuv's reading:
 * level-triggered epoll polls each socket that was ready once more on the next wait, and libuv
 * reads with read(2), through the file layer. Here such streams sit in an epoll set of the
 * worker's own, edge-triggered, which libuv polls as one descriptor; when it is readable, one
 * epoll_wait lists the streams with input and each is read with recv(2) until a short read,
 * as nginx does.
 *
 * Backpressure is unchanged: a paused stream is not read, so its input stays in the kernel and
 * TCP's window closes. An edge that came while paused is remembered (edge_ready) and on resume
 * the registration is re-armed (EPOLL_CTL_MOD re-checks readiness and queues an event), so
 * nothing is read synchronously inside evs__io_read_start, as with libuv.
 */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define EDGE_BUF_SIZE (64u * 1024u)
#define EDGE_EVENTS 64
#define EDGE_READS 16 /* per stream and event, then re-armed: one stream cannot starve others */

typedef struct edge_loop {
  uv_poll_t poll;
  uv_loop_t *loop;
  int epfd;
} edge_loop;

static __thread edge_loop *edge;
static __thread char edge_buf[EDGE_BUF_SIZE];

static void edge_closed(uv_handle_t *h) {
  edge_loop *e = h->data;
  close(e->epfd);
  if (edge == e) edge = NULL;
  free(e);
}

static int edge_fd(const evs__io *io) {
  if (io->edge) return io->edge_fd;
  uv_os_fd_t fd;
  return uv_fileno(&io->h.handle, &fd) == 0 ? (int)fd : -1;
}

static int edge_arm(evs__io *io, int op) {
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = io};
  int fd = edge_fd(io);
  if (fd < 0 || !edge || epoll_ctl(edge->epfd, op, fd, &ev) < 0) return -1;
  return 0;
}

static void edge_fail(evs__io *io, int err) {
  io->edge_ready = 0;
  if (!io->error) io->error = err;
  if (io->on_read) io->on_read(io, err, NULL);
}

static void edge_read(evs__io *io) {
  int fd = edge_fd(io);
  for (int i = 0; i < EDGE_READS; i++) {
    if (!io->edge || !io->reading || io->closing || !io->edge_ready) return;
    /* syscall(2): glibc's recv(3) adds cancellation bookkeeping in a threaded process */
    ssize_t n = syscall(SYS_recvfrom, fd, edge_buf, sizeof edge_buf, 0, NULL, NULL);
    if (n > 0) {
      /* A short read took everything there was; more input brings another edge. */
      io->edge_ready = (size_t)n == sizeof edge_buf;
      if (io->on_read) io->on_read(io, n, edge_buf);
    } else if (n == 0) {
      edge_fail(io, UV_EOF);
      return;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      io->edge_ready = 0;
      return;
    } else if (errno != EINTR) {
      edge_fail(io, -errno);
      return;
    }
  }
  /* Still input after EDGE_READS reads: come back on the next turn of the loop. */
  if (io->edge && io->reading && !io->closing && io->edge_ready && edge_arm(io, EPOLL_CTL_MOD))
    edge_fail(io, UV_EIO);
}

static void edge_poll(uv_poll_t *p, int status, int events) {
  (void)events;
  edge_loop *e = p->data;
  if (status < 0) return;
  struct epoll_event ev[EDGE_EVENTS];
  /* syscall(2) as for the reads (no cancellation bookkeeping); epoll_pwait: every architecture */
  int n = (int)syscall(SYS_epoll_pwait, e->epfd, ev, EDGE_EVENTS, 0, NULL, 0);
  /* An evs__io closed by an earlier stream's callback is freed only in libuv's closing phase,
   * after this callback: its pointer stays valid here, and edge_off cleared io->edge. */
  for (int i = 0; i < n; i++) {
    evs__io *io = ev[i].data.ptr;
    if (!io->edge || io->closing) continue;
    io->edge_ready = 1;
    edge_read(io);
  }
}

static edge_loop *edge_get(uv_loop_t *loop) {
  /* The worker's exit closes every handle without a callback: that set is done with. */
  if (edge && uv_is_closing((uv_handle_t *)&edge->poll)) edge = NULL;
  if (edge) return edge->loop == loop ? edge : NULL;
  edge_loop *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->loop = loop;
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (e->epfd < 0) {
    free(e);
    return NULL;
  }
  if (uv_poll_init(loop, &e->poll, e->epfd) < 0) {
    close(e->epfd);
    free(e);
    return NULL;
  }
  e->poll.data = e;
  edge = e;
  if (uv_poll_start(&e->poll, UV_READABLE, edge_poll) < 0) {
    uv_close((uv_handle_t *)&e->poll, edge_closed);
    return NULL;
  }
  uv_unref((uv_handle_t *)&e->poll); /* it never keeps the loop alive by itself */
  return e;
}

int evs__io_edge_on(evs__io *io) {
  if (io->edge) return 0;
  if (io->h.handle.type != UV_TCP || io->ssl || io->outer_ssl || io->closing || io->lingering)
    return UV_EINVAL;
  if (!edge_get(io->h.handle.loop)) return UV_ENOMEM;
  /* Registering reports input already waiting as an edge. */
  if (edge_arm(io, EPOLL_CTL_ADD) < 0) return uv_translate_sys_error(errno);
  if (io->reading) uv_read_stop(&io->h.stream);
  io->edge_fd = edge_fd(io);
  io->edge = 1;
  io->edge_ready = 0;
  return 0;
}

void evs__io_edge_off(evs__io *io) {
  if (!io->edge) return;
  struct epoll_event ev = {0};
  int fd = edge_fd(io);
  if (edge && fd >= 0) epoll_ctl(edge->epfd, EPOLL_CTL_DEL, fd, &ev);
  io->edge = 0;
  io->edge_fd = -1;
  io->edge_ready = 0;
}

int evs__io_edge_resume(evs__io *io) {
  if (!io->edge_ready) return 0;
  return edge_arm(io, EPOLL_CTL_MOD) < 0 ? UV_EIO : 0;
}
