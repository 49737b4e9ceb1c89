/*
 * evs__io: sockets with optional TLS over memory BIOs (see io.h).
 *
 * TLS runs "in memory": ciphertext read from the socket goes into rbio, SSL_read yields
 * plaintext, and whatever OpenSSL wants to send accumulates in wbio and is flushed to the socket
 * after every TLS call. One per-thread read buffer serves every stream because libuv delivers a
 * read and we consume it before returning.
 *
 * TLS inside TLS (a CONNECT tunnel on a TLS listener whose plugin starts TLS in the tunnel) is a
 * second SSL over the first one's plaintext: socket -> outer rbio -> SSL_read(outer) -> inner
 * rbio -> SSL_read(inner) -> owner, and back through SSL_write(inner) -> inner wbio ->
 * SSL_write(outer) -> outer wbio -> socket. Everything above the innermost layer (the owner,
 * reads, writes, backpressure, closing) is unchanged; only the bottom of the pipe knows.
 */
#include "io.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define READ_BUF_SIZE (64u * 1024u)

static __thread char read_buf[READ_BUF_SIZE];
static __thread char plain_buf[READ_BUF_SIZE];

typedef struct evs__io_wreq {
  uv_write_t req;
  evs__io *io;
  size_t len, cap;
  char data[];
} write_req;

void evs__io_init(evs__io *io, void *owner) {
  io->lingering = 0;
  io->linger_timer = NULL;
  io->data = owner;
  io->h.handle.data = io;
  io->on_read = NULL;
  io->on_drain = NULL;
  io->on_close = NULL;
  io->on_handshake = NULL;
  io->ssl = NULL;
  io->rbio = io->wbio = NULL;
  io->outer_ssl = NULL;
  io->outer_rbio = io->outer_wbio = NULL;
  io->write_queued = 0;
  io->cork = NULL;
  io->corked = 0;
  io->held = 0;
  io->cork_plain = 0;
  io->edge = io->edge_ready = io->edge_hup = 0;
  io->edge_fd = -1;
  io->reading = io->handshaking = io->closing = io->shutdown_sent = io->tls_verified = 0;
  io->error = 0;
}

static void on_write_done(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  evs__io *io = w->io;
  size_t before = io->write_queued;
  io->write_queued -= w->len;
  free(w);
  if (status < 0 && !io->error) io->error = status;
  if (!io->closing && io->on_drain && before >= EVS_IO_LOW_WATER &&
      io->write_queued < EVS_IO_LOW_WATER)
    io->on_drain(io);
}

/* Cork buffers of the first size are kept for reuse (a few per thread): nearly every response
 * is gathered once, and a 4 KiB malloc and free per response showed in profiles. */
#define CORK_FIRST 4096
#define CORK_SPARES 8
static __thread write_req *cork_spare[CORK_SPARES];
static __thread int cork_spares;

static write_req *cork_get(void) {
  write_req *w = cork_spares ? cork_spare[--cork_spares] : malloc(sizeof *w + CORK_FIRST);
  if (w) {
    w->len = 0;
    w->cap = CORK_FIRST;
  }
  return w;
}

static void cork_put(write_req *w) {
  if (w && w->cap == CORK_FIRST && cork_spares < CORK_SPARES)
    cork_spare[cork_spares++] = w;
  else
    free(w);
}

/* uv_try_write, with send(2)/sendmsg(2) on TCP: the socket calls skip the file layer write(2)
 * and writev(2) pass through (rw_verify_area, the security hook, sock_write_iter), which a
 * profile of small WebSocket messages shows per message (docs/performance.md, "WebSockets").
 * Same contract: bytes taken, or a negative error (UV_EAGAIN: none). */
static int try_write(evs__io *io, const uv_buf_t *bufs, size_t nbufs) {
  uv_os_fd_t fd = io->edge_fd; /* set while the stream is read edge-triggered (io_edge.c) */
  if (!io->edge && (io->h.handle.type != UV_TCP || uv_fileno(&io->h.handle, &fd) < 0))
    return uv_try_write(&io->h.stream, bufs, (unsigned)nbufs);
  ssize_t n;
  if (nbufs == 1) {
    /* syscall(2), not send(3): the worker has threads (libuv's pool), so glibc's wrapper
     * brackets every call with cancellation bookkeeping, which nothing here uses. */
    n = syscall(SYS_sendto, fd, bufs[0].base, bufs[0].len, MSG_DONTWAIT | MSG_NOSIGNAL, NULL, 0);
  } else {
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = (struct iovec *)(uintptr_t)bufs; /* uv_buf_t is struct iovec's layout on Unix */
    m.msg_iovlen = nbufs;
    n = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  if (n >= 0) return (int)n;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? UV_EAGAIN : -errno;
}

/* Appends to the cork (ciphertext, or a TLS connection's plaintext). */
static int gather(evs__io *io, const uv_buf_t *bufs, size_t nbufs, size_t total) {
  if (!io->cork && !(io->cork = cork_get())) return UV_ENOMEM;
  write_req *c = io->cork;
  size_t have = c->len;
  if (have + total > c->cap) {
    size_t cap = c->cap * 2;
    if (cap < have + total) cap = have + total;
    write_req *nc = realloc(c, sizeof *nc + cap);
    if (!nc) return UV_ENOMEM;
    nc->len = have;
    nc->cap = cap;
    io->cork = c = nc;
  }
  for (size_t i = 0; i < nbufs; i++) {
    memcpy(c->data + c->len, bufs[i].base, bufs[i].len);
    c->len += bufs[i].len;
  }
  io->write_queued += total;
  return 0;
}

static int raw_send(evs__io *io, const uv_buf_t *bufs, size_t nbufs, size_t total);

static int raw_write(evs__io *io, const uv_buf_t *bufs, size_t nbufs) {
  size_t total = 0;
  for (size_t i = 0; i < nbufs; i++) total += bufs[i].len;
  if (total == 0) return 0;
  if (io->closing) return UV_ECANCELED;
  if (io->cork_plain) return raw_send(io, bufs, nbufs, total); /* sealed before what is gathered */
  if (io->corked && !io->held && (io->cork ? io->cork->len : 0) + total > EVS_IO_CORK_MAX) {
    /* Gathering is for small pieces: what is gathered goes out now, and so does a large one. */
    int r = evs__io_uncork(io);
    if (r == 0 && total > EVS_IO_CORK_MAX) r = raw_write(io, bufs, nbufs);
    io->corked = 1;
    if (r < 0 || total > EVS_IO_CORK_MAX) return r;
  }
  if (io->corked) return gather(io, bufs, nbufs, total);
  return raw_send(io, bufs, nbufs, total);
}

static int raw_send(evs__io *io, const uv_buf_t *bufs, size_t nbufs, size_t total) {
  /* Nothing queued: write now. What the socket takes needs no copy, no write request and no
   * POLLOUT start/stop in libuv (each costs an epoll_ctl on the next loop turn). */
  size_t skip = 0;
  if (io->write_queued == 0 && io->h.stream.write_queue_size == 0) { /* libuv's, read-only */
    int n = try_write(io, bufs, nbufs);
    if (n > 0) {
      if ((size_t)n == total) return 0;
      skip = (size_t)n;
    }
  }
  total -= skip;
  write_req *w = malloc(sizeof *w + total);
  if (!w) return UV_ENOMEM;
  size_t off = 0;
  for (size_t i = 0; i < nbufs; i++) {
    size_t bl = bufs[i].len;
    const char *bp = bufs[i].base;
    if (skip >= bl) {
      skip -= bl;
      continue;
    }
    bp += skip;
    bl -= skip;
    skip = 0;
    memcpy(w->data + off, bp, bl);
    off += bl;
  }
  w->io = io;
  w->len = total;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)total);
  int r = uv_write(&w->req, &io->h.stream, &b, 1, on_write_done);
  if (r < 0) {
    free(w);
    return r;
  }
  io->write_queued += total;
  return 0;
}

/* Send whatever ciphertext a layer's write BIO holds to the socket. */
static int flush_bio(evs__io *io, BIO *wbio) {
  char buf[16384];
  int n;
  while ((n = BIO_read(wbio, buf, sizeof buf)) > 0) {
    uv_buf_t b = uv_buf_init(buf, (unsigned)n);
    int r = raw_write(io, &b, 1);
    if (r < 0) return r;
  }
  return 0;
}

/* Send whatever ciphertext the innermost layer produced: to the socket, or as plaintext of the
 * outer layer. */
static int flush_tls(evs__io *io) {
  if (!io->outer_ssl) return flush_bio(io, io->wbio);
  char buf[16384];
  int n;
  while ((n = BIO_read(io->wbio, buf, sizeof buf)) > 0) {
    int off = 0;
    while (off < n) {
      int w = SSL_write(io->outer_ssl, buf + off, n - off);
      if (w <= 0) {
        ERR_clear_error();
        return UV_EPROTO;
      }
      off += w;
    }
  }
  return flush_bio(io, io->outer_wbio);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = read_buf;
  buf->len = sizeof read_buf;
}

static void deliver_error(evs__io *io, int err) {
  if (!io->error) io->error = err;
  if (io->handshaking && io->on_handshake) {
    io->handshaking = 0;
    io->on_handshake(io, err);
    return;
  }
  if (io->on_read) io->on_read(io, err, NULL);
}

/* Push ciphertext into OpenSSL and deliver what plaintext comes out. */
static void tls_input(evs__io *io, const char *data, size_t len) {
  while (len > 0) {
    int w = BIO_write(io->rbio, data, (int)len);
    if (w <= 0) {
      deliver_error(io, UV_EPROTO);
      return;
    }
    data += w;
    len -= (size_t)w;
  }
  if (io->handshaking) {
    int r = SSL_do_handshake(io->ssl);
    if (flush_tls(io) < 0) {
      deliver_error(io, UV_EPIPE);
      return;
    }
    if (r != 1) {
      int e = SSL_get_error(io->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
      ERR_clear_error();
      deliver_error(io, UV_EPROTO);
      return;
    }
    io->handshaking = 0;
    if (io->on_handshake) io->on_handshake(io, 0);
    if (io->closing) return;
  }
  /* Deliver plaintext while the owner keeps reading; stop if it pauses (data then waits in
   * OpenSSL's buffer until read_start). */
  while (io->reading && !io->closing) {
    int n = SSL_read(io->ssl, plain_buf, sizeof plain_buf);
    if (n > 0) {
      io->on_read(io, n, plain_buf);
      /* Everything in: no record, whole or partial, is left in OpenSSL or the BIO. Another
       * SSL_read would only say WANT_READ, and with SSL_MODE_RELEASE_BUFFERS it allocates and
       * frees its 16 KiB read buffer to say so (once per request on keep-alive). */
      if (!SSL_has_pending(io->ssl) && BIO_ctrl_pending(io->rbio) == 0) {
        if (!io->closing) flush_tls(io); /* what a record read may answer (a key update) */
        break;
      }
      continue;
    }
    int e = SSL_get_error(io->ssl, n);
    flush_tls(io);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    ERR_clear_error();
    deliver_error(io, e == SSL_ERROR_ZERO_RETURN ? UV_EOF : UV_EPROTO);
    break;
  }
}

/* Two layers: push the socket's ciphertext into the outer layer and its plaintext (the inner
 * layer's records) into the inner one. Everything the outer layer decrypts goes on at once;
 * the inner layer holds it while the owner is paused, which is bounded by the one socket read
 * it came in (reading from the socket stops with the owner). */
static void outer_input(evs__io *io, const char *data, size_t len) {
  while (len > 0) {
    int w = BIO_write(io->outer_rbio, data, (int)len);
    if (w <= 0) {
      deliver_error(io, UV_EPROTO);
      return;
    }
    data += w;
    len -= (size_t)w;
  }
  char buf[16384];
  while (!io->closing) {
    int n = SSL_read(io->outer_ssl, buf, sizeof buf);
    if (n > 0) {
      tls_input(io, buf, (size_t)n);
      continue;
    }
    int e = SSL_get_error(io->outer_ssl, n);
    flush_bio(io, io->outer_wbio); /* what the outer layer answers by itself (a key update) */
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    ERR_clear_error();
    deliver_error(io, e == SSL_ERROR_ZERO_RETURN ? UV_EOF : UV_EPROTO);
    break;
  }
}

/* Input held in a layer while the owner was paused: decrypted records not delivered, or
 * records not yet decrypted. */
static int tls_held(SSL *ssl, BIO *rbio) {
  return SSL_pending(ssl) > 0 || BIO_ctrl_pending(rbio) > 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  evs__io *io = s->data;
  if (nread == 0) return;
  if (io->lingering) {
    if (nread < 0) {
      io->lingering = 0;
      io->closing = 0;
      evs__io_close(io);
    }
    return;
  }
  if (nread < 0) {
    deliver_error(io, (int)nread);
    return;
  }
  if (io->outer_ssl)
    outer_input(io, buf->base, (size_t)nread);
  else if (io->ssl)
    tls_input(io, buf->base, (size_t)nread);
  else if (io->on_read)
    io->on_read(io, nread, buf->base);
}

void evs__io_feed(evs__io *io, const char *data, size_t len) {
  if (len == 0) return;
  if (io->ssl)
    tls_input(io, data, len);
  else if (io->on_read)
    io->on_read(io, (ssize_t)len, data);
}

int evs__io_read_start(evs__io *io) {
  if (io->closing) return UV_ECANCELED;
  if (io->reading) return 0;
  io->reading = 1;
  if (io->edge) {
    int r = evs__io_edge_resume(io);
    /* Records OpenSSL holds from before the pause: the socket has no edge for them. */
    if (r == 0 && io->ssl && !io->closing && tls_held(io->ssl, io->rbio)) tls_input(io, NULL, 0);
    return r;
  }
  int r = uv_read_start(&io->h.stream, alloc_cb, on_read);
  if (r < 0) {
    io->reading = 0;
    return r;
  }
  /* Input OpenSSL holds but we did not deliver while paused: the outer layer's first (it may
   * carry the inner layer's handshake, as after a takeover), then the inner layer's. */
  if (io->outer_ssl && tls_held(io->outer_ssl, io->outer_rbio)) outer_input(io, NULL, 0);
  if (io->ssl && !io->handshaking && !io->closing && io->reading && tls_held(io->ssl, io->rbio))
    tls_input(io, NULL, 0);
  return 0;
}

void evs__io_read_stop(evs__io *io) {
  if (!io->reading) return;
  io->reading = 0;
  if (!io->closing && !io->edge) uv_read_stop(&io->h.stream);
}

/* TLS: plaintext into records, out to the socket (or the outer layer). */
static int tls_write(evs__io *io, const char *p, size_t len) {
  size_t off = 0;
  while (off < len) {
    int n = SSL_write(io->ssl, p + off, (int)(len - off));
    if (n <= 0) {
      ERR_clear_error();
      return UV_EPROTO;
    }
    off += (size_t)n;
  }
  return flush_tls(io);
}

int evs__io_writev(evs__io *io, const uv_buf_t *bufs, size_t nbufs) {
  if (io->closing) return UV_ECANCELED;
  if (!io->ssl) return raw_write(io, bufs, nbufs);
  if (io->corked && (!io->cork || io->cork_plain)) {
    /* Corked TLS gathers plaintext: a response's head and body become one record at uncork,
     * not one each (every record is a seal here and an open at the peer). Ciphertext made
     * meanwhile (a handshake message) goes out ahead: its records come first in sequence. */
    size_t total = 0;
    for (size_t i = 0; i < nbufs; i++) total += bufs[i].len;
    if (!io->held && (io->cork ? io->cork->len : 0) + total > EVS_IO_CORK_MAX) {
      int r = evs__io_uncork(io);
      if (r == 0 && total > EVS_IO_CORK_MAX) r = evs__io_writev(io, bufs, nbufs);
      io->corked = 1;
      if (r < 0 || total > EVS_IO_CORK_MAX) return r;
    }
    int r = gather(io, bufs, nbufs, total);
    if (r == 0) io->cork_plain = 1;
    return r;
  }
  if (nbufs > 1) {
    /* One TLS record for a gathered write (a chunk header, its data and CRLF), not three. */
    size_t total = 0;
    for (size_t i = 0; i < nbufs; i++) total += bufs[i].len;
    char *joined = malloc(total ? total : 1);
    if (!joined) return UV_ENOMEM;
    size_t off = 0;
    for (size_t i = 0; i < nbufs; i++) {
      memcpy(joined + off, bufs[i].base, bufs[i].len);
      off += bufs[i].len;
    }
    uv_buf_t one = uv_buf_init(joined, (unsigned)total);
    int r = evs__io_writev(io, &one, 1);
    free(joined);
    return r;
  }
  return nbufs ? tls_write(io, bufs[0].base, bufs[0].len) : flush_tls(io);
}

void evs__io_cork(evs__io *io) { io->corked = 1; }

void evs__io_hold(evs__io *io) {
  io->corked = 1;
  io->held = 1;
}

int evs__io_release(evs__io *io) {
  io->held = 0;
  return evs__io_uncork(io);
}

int evs__io_uncork(evs__io *io) {
  if (io->held) return 0;
  io->corked = 0;
  write_req *w = io->cork;
  if (!w) return 0;
  io->cork = NULL;
  io->write_queued -= w->len;
  int plain = io->cork_plain;
  io->cork_plain = 0;
  int r = UV_ECANCELED;
  if (!io->closing) {
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    r = plain ? tls_write(io, w->data, w->len) : raw_write(io, &b, 1);
  }
  cork_put(w);
  return r;
}

int evs__io_write(evs__io *io, const void *data, size_t len) {
  uv_buf_t b = {.base = (char *)data, .len = len}; /* uv_buf_init, not a call per message */
  return evs__io_writev(io, &b, 1);
}

static int tls_common(evs__io *io, SSL_CTX *ctx, evs__io_handshake_cb cb) {
  if (io->edge) { /* TLS reads through libuv again */
    evs__io_edge_off(io);
    if (io->reading && uv_read_start(&io->h.stream, alloc_cb, on_read) < 0) return UV_EIO;
  }
  SSL *ssl = SSL_new(ctx);
  BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
  if (!ssl || !rbio || !wbio) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(ssl);
    return UV_ENOMEM;
  }
  if (io->ssl) { /* TLS inside TLS: the present layer carries the new one */
    io->outer_ssl = io->ssl;
    io->outer_rbio = io->rbio;
    io->outer_wbio = io->wbio;
  }
  io->ssl = ssl;
  io->rbio = rbio;
  io->wbio = wbio;
  BIO_set_mem_eof_return(io->rbio, -1);
  SSL_set_bio(io->ssl, io->rbio, io->wbio);
  SSL_set_app_data(io->ssl, io);
  io->handshaking = 1;
  io->on_handshake = cb;
  return 0;
}

int evs__io_tls_server(evs__io *io, SSL_CTX *ctx, evs__io_handshake_cb cb) {
  if (io->closing || (io->ssl && (io->outer_ssl || io->handshaking || io->shutdown_sent)))
    return UV_EINVAL;
  int r = tls_common(io, ctx, cb);
  if (r < 0) return r;
  SSL_set_accept_state(io->ssl);
  return 0;
}

int evs__io_tls_client(evs__io *io, SSL_CTX *ctx, const char *sni, const char *verify_host,
                       evs__io_handshake_cb cb) {
  if (io->ssl) return UV_EINVAL; /* clients have one layer */
  int r = tls_common(io, ctx, cb);
  if (r < 0) return r;
  SSL_set_connect_state(io->ssl);
  if (sni) SSL_set_tlsext_host_name(io->ssl, sni);
  if (verify_host) {
    SSL_set_hostflags(io->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (!SSL_set1_host(io->ssl, verify_host)) return UV_EINVAL;
  }
  int hr = SSL_do_handshake(io->ssl);
  (void)hr;
  ERR_clear_error();
  if (flush_tls(io) < 0) return UV_EPIPE;
  return 0;
}

const char *evs__io_sni(const evs__io *io) {
  return io->ssl ? SSL_get_servername(io->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

static void linger_timer_closed(uv_handle_t *h) { free(h); }

static void on_closed(uv_handle_t *h) {
  evs__io *io = h->data;
  if (io->linger_timer) {
    uv_close((uv_handle_t *)io->linger_timer, linger_timer_closed);
    io->linger_timer = NULL;
  }
  if (io->ssl) {
    SSL_free(io->ssl); /* frees both BIOs */
    io->ssl = NULL;
  }
  if (io->outer_ssl) {
    SSL_free(io->outer_ssl);
    io->outer_ssl = NULL;
  }
  if (io->on_close) io->on_close(io);
}

/* close_notify on every layer, innermost first. */
static void tls_shutdown(evs__io *io) {
  io->shutdown_sent = 1;
  SSL_shutdown(io->ssl);
  flush_tls(io);
  if (io->outer_ssl) {
    SSL_shutdown(io->outer_ssl);
    ERR_clear_error();
    flush_bio(io, io->outer_wbio);
  }
}

void evs__io_close(evs__io *io) {
  if (io->closing) return;
  if (io->cork) {
    io->write_queued -= io->cork->len;
    cork_put(io->cork);
    io->cork = NULL;
  }
  io->corked = 0;
  io->held = 0;
  io->cork_plain = 0;
  evs__io_edge_off(io);
  if (io->ssl && !io->handshaking && !io->shutdown_sent) tls_shutdown(io);
  io->closing = 1;
  io->reading = 0;
  uv_close(&io->h.handle, on_closed);
}

static void linger_done(uv_timer_t *t) {
  evs__io *io = t->data;
  io->lingering = 0;
  io->closing = 0;
  evs__io_close(io);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  evs__io *io = req->data;
  free(req);
  if (status == 0 && io->h.handle.type == UV_TCP && (io->linger_timer = malloc(sizeof(uv_timer_t)))) {
    uv_timer_init(io->h.handle.loop, io->linger_timer);
    io->linger_timer->data = io;
    uv_timer_start(io->linger_timer, linger_done, EVS_IO_LINGER_MS, 0);
    io->lingering = 1;
    if (uv_read_start(&io->h.stream, alloc_cb, on_read) == 0) return;
    io->lingering = 0;
  }
  io->closing = 0; /* let evs__io_close run its course */
  evs__io_close(io);
}

void evs__io_shutdown_close(evs__io *io) {
  if (io->closing) return;
  evs__io_uncork(io);
  if (io->ssl && !io->handshaking && !io->shutdown_sent) tls_shutdown(io);
  evs__io_read_stop(io);
  evs__io_edge_off(io); /* a lingering close reads through libuv */
  uv_shutdown_t *req = malloc(sizeof *req);
  if (!req || (req->data = io, uv_shutdown(req, &io->h.stream, on_shutdown)) < 0) {
    free(req);
    evs__io_close(io);
    return;
  }
  io->closing = 1; /* no more writes; reads stopped */
}
