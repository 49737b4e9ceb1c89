/*
 * Edge-triggered reading for TCP and unix streams (io.h, evs__io_edge_on), plain or with one TLS
 * layer. A long-lived stream carrying many small messages (a WebSocket, a tunnel, a keep-alive
 * connection and its pooled upstream connection) pays per message for libuv's reading:
 * level-triggered epoll polls each socket that was ready once more on the next wait, and libuv
 * reads with read(2), through the file layer. Here such streams sit in an epoll set of the
 * worker's own, edge-triggered, and each stream with input is read with recv(2) until a short
 * read, as nginx does.
 *
 * The worker blocks on that set (evs__io_edge_run), with libuv's own epoll descriptor inside
 * it: a wakeup for the streams alone costs one epoll_wait, and libuv runs a turn (UV_RUN_NOWAIT)
 * only when its descriptor is readable, a timer is due, or a callback left it work that it
 * does only inside a turn (edge_uv_timeout). A loop that is not run so (unit tests, the
 * plugin check) polls the set from libuv instead, through a uv_poll.
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
  uv_poll_t poll; /* started unless evs__io_edge_run blocks on the set */
  uv_loop_t *loop;
  int epfd;
  int driven; /* evs__io_edge_run blocks on the set */
} edge_loop;

static __thread edge_loop *edge;
static __thread char edge_buf[EDGE_BUF_SIZE];

static int edge_fd(const evs__io *io) {
  if (io->edge) return io->edge_fd;
  uv_os_fd_t fd;
  return uv_fileno(&io->h.handle, &fd) == 0 ? (int)fd : -1;
}

static int edge_arm(evs__io *io, int op) {
  /* EPOLLRDHUP: a peer's close that came with its last data (one edge for both) is told apart,
   * so a short read does not end the reading before the EOF (nginx's pending_eof). */
  struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = io};
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
      /* A short read took everything there was; more input brings another edge. Not the EOF
       * if it came in the same edge: then read on until recv says 0. */
      io->edge_ready = (size_t)n == sizeof edge_buf || io->edge_hup;
      if (io->ssl) evs__io_feed(io, edge_buf, (size_t)n); /* records: plaintext to on_read */
      else if (io->on_read) io->on_read(io, n, edge_buf);
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

/* Reads the streams of a batch of events; says whether libuv's descriptor was among them. */
static int edge_dispatch(const struct epoll_event *ev, int n) {
  int uv_ready = 0;
  /* An evs__io closed by an earlier stream's callback is freed only in libuv's closing phase,
   * after the batch: its pointer stays valid here, and edge_off cleared io->edge. */
  for (int i = 0; i < n; i++) {
    evs__io *io = ev[i].data.ptr;
    if (!io) { /* libuv's descriptor (evs__io_edge_run) */
      uv_ready = 1;
      continue;
    }
    if (!io->edge || io->closing) continue;
    io->edge_ready = 1;
    if (ev[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) io->edge_hup = 1;
    edge_read(io);
  }
  return uv_ready;
}

/* syscall(2) as for the reads (no cancellation bookkeeping); epoll_pwait: every architecture */
static int edge_wait(int epfd, struct epoll_event *ev, int timeout) {
  return (int)syscall(SYS_epoll_pwait, epfd, ev, EDGE_EVENTS, timeout, NULL, 0);
}

static void edge_poll(uv_poll_t *p, int status, int events) {
  (void)events;
  edge_loop *e = p->data;
  if (status < 0) return;
  struct epoll_event ev[EDGE_EVENTS];
  int n = edge_wait(e->epfd, ev, 0);
  if (n > 0) edge_dispatch(ev, n);
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
  uv_unref((uv_handle_t *)&e->poll); /* it never keeps the loop alive by itself */
  edge = e;
  return e;
}

/* Work that libuv does only inside a turn of its loop: uv_backend_timeout reports due timers,
 * pending callbacks, idle and closing handles, and (since libuv 1.44) watchers started or
 * changed by a callback (uv_read_start, a uv_write the socket did not take at once, a connect),
 * which libuv hands to epoll only inside uv__io_poll. Not prepare and check handles, run around
 * the poll (the enclave client flushes its calls from one), nor the watchers before 1.44. Their
 * heads are in uv_loop_t's public layout: a queue is two pointers, the first the next element,
 * and is empty when it points to itself. */
static int queue_busy(const void *head) {
  return *(void *const *)head != head;
}

/* How long the worker may block before libuv wants a turn: 0 if it wants one now. */
static int edge_uv_timeout(const uv_loop_t *loop) {
  _Static_assert(sizeof loop->watcher_queue == 2 * sizeof(void *), "libuv's queue layout");
  if (queue_busy(&loop->watcher_queue) || queue_busy(&loop->prepare_handles) ||
      queue_busy(&loop->check_handles))
    return 0;
  return uv_backend_timeout(loop);
}

int evs__io_edge_run(uv_loop_t *loop, const int *stop) {
  edge_loop *e = edge_get(loop);
  int uvfd = uv_backend_fd(loop);
  struct epoll_event uvev = {.events = EPOLLIN, .data.ptr = NULL};
  if (!e || uvfd < 0) return uv_run(loop, UV_RUN_DEFAULT);
  uv_poll_stop(&e->poll); /* libuv drops the set from its own (a cycle is refused) */
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, uvfd, &uvev) < 0) {
    uv_poll_start(&e->poll, UV_READABLE, edge_poll);
    return uv_run(loop, UV_RUN_DEFAULT);
  }
  e->driven = 1;
  struct epoll_event ev[EDGE_EVENTS];
  int turn = 1, timeout = 0;
  for (;;) {
    if (turn) {
      uv_run(loop, UV_RUN_NOWAIT);
      if (*stop || !uv_loop_alive(loop)) break;
      timeout = edge_uv_timeout(loop);
    }
    int n = edge_wait(e->epfd, ev, timeout);
    if (n < 0) {
      if (errno != EINTR) abort(); /* as libuv does: the set is the worker's own */
      turn = 1;                    /* a signal: libuv's handler wrote to its pipe */
      continue;
    }
    uv_update_time(loop);
    int uv_ready = edge_dispatch(ev, n);
    timeout = edge_uv_timeout(loop);
    /* n == 0: the wait's timeout, so a timer is due */
    turn = uv_ready || n == 0 || timeout == 0 || *stop;
  }
  /* Back to being polled by libuv, for whatever runs the loop after this. */
  e->driven = 0;
  struct epoll_event none = {0};
  epoll_ctl(e->epfd, EPOLL_CTL_DEL, uvfd, &none);
  uv_poll_start(&e->poll, UV_READABLE, edge_poll);
  return uv_loop_alive(loop);
}

int evs__io_edge_on(evs__io *io) {
  if (io->edge) return 0;
  /* TLS: one layer whose handshake is done (its records are fed from here); unix sockets too
   * (an upstream app's). */
  if ((io->h.handle.type != UV_TCP && io->h.handle.type != UV_NAMED_PIPE) ||
      (io->ssl && (io->handshaking || io->outer_ssl)) || io->closing || io->lingering)
    return UV_EINVAL;
  edge_loop *e = edge_get(io->h.handle.loop);
  if (!e) return UV_ENOMEM;
  if (!e->driven && !uv_is_active((uv_handle_t *)&e->poll) &&
      uv_poll_start(&e->poll, UV_READABLE, edge_poll) < 0)
    return UV_ENOMEM;
  /* Registering reports input already waiting as an edge. */
  if (edge_arm(io, EPOLL_CTL_ADD) < 0) return uv_translate_sys_error(errno);
  if (io->reading) uv_read_stop(&io->h.stream);
  io->edge_fd = edge_fd(io);
  io->edge = 1;
  io->edge_ready = 0;
  io->edge_hup = 0;
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
