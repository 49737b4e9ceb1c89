/*
 * A byte stream on the loop: a TCP or Unix socket, optionally wrapped in TLS (OpenSSL over
 * memory BIOs). Server connections (server.c) and upstream connections (upstream.c) both use it,
 * so TLS, write accounting and backpressure live in one place.
 *
 * Reads deliver plaintext through on_read; the data is valid only during the callback (it points
 * into a per-loop buffer). Writes copy their input. `write_queued` counts bytes handed to the
 * kernel but not yet written: callers stop reading their source above EVS_IO_HIGH_WATER and
 * resume from on_drain, which fires once the queue falls below EVS_IO_LOW_WATER. That keeps
 * memory per proxied request bounded whatever the body size.
 */
#ifndef EVS_CORE_IO_H
#define EVS_CORE_IO_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <uv.h>

#define EVS_IO_HIGH_WATER (256u * 1024u)
#define EVS_IO_CORK_MAX (64u * 1024u) /* bytes gathered while corked, then written */
#define EVS_IO_LOW_WATER (64u * 1024u)

typedef struct evs__io evs__io;

/* nread > 0: data; nread < 0: UV_EOF or error (the stream is then unusable). */
typedef void (*evs__io_read_cb)(evs__io *io, ssize_t nread, const char *data);
typedef void (*evs__io_cb)(evs__io *io);
/* status 0: handshake done; negative: failed. */
typedef void (*evs__io_handshake_cb)(evs__io *io, int status);

struct evs__io {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  void *data;                    /* owner */
  evs__io_read_cb on_read;
  evs__io_cb on_drain;           /* write queue fell below the low-water mark */
  evs__io_cb on_close;           /* after the handle closed; the owner may free now */
  evs__io_handshake_cb on_handshake;
  SSL *ssl;                      /* the innermost TLS layer: its plaintext is the owner's */
  BIO *rbio, *wbio;              /* its network side: rbio gets ciphertext in, wbio holds it out */
  /* TLS inside TLS (a tunnel's TLS on a TLS listener): the listener's layer moves here and
   * carries the inner layer's records as its plaintext. NULL on every other connection. */
  SSL *outer_ssl;
  BIO *outer_rbio, *outer_wbio;
  size_t write_queued;
  unsigned reading : 1;
  unsigned handshaking : 1;
  unsigned closing : 1;
  unsigned shutdown_sent : 1;
  unsigned tls_verified : 1;
  unsigned lingering : 1;
  unsigned corked : 1;
  unsigned held : 1;             /* corked until evs__io_release: uncork does nothing */
  unsigned cork_plain : 1;       /* TLS: cork holds plaintext, sealed into records at uncork */
  unsigned edge : 1;             /* read by io_edge.c (edge-triggered, recv), not by libuv */
  unsigned edge_ready : 1;       /* edge: input may be waiting in the kernel */
  unsigned edge_hup : 1;         /* edge: the peer closed (EPOLLRDHUP): read on to the EOF */
  int edge_fd;                   /* edge: the socket, not asked of libuv per read and send */
  uv_timer_t *linger_timer;
  struct evs__io_wreq *cork;     /* writes gathered while corked */
  int error;                     /* last error, if any */
};

/* Initialise an accepted or new TCP stream in io->h.tcp (the caller did uv_tcp_init). */
void evs__io_init(evs__io *io, void *owner);
/* Make io a TLS server or client on ctx. A client verifies per ctx and checks host if given.
 * A server on an io that has TLS already (its handshake done) runs inside it: the existing
 * layer becomes the outer one and carries the new layer's records; at most two layers. */
int evs__io_tls_server(evs__io *io, SSL_CTX *ctx, evs__io_handshake_cb cb);
int evs__io_tls_client(evs__io *io, SSL_CTX *ctx, const char *sni, const char *verify_host,
                       evs__io_handshake_cb cb);
int evs__io_read_start(evs__io *io);
/* Read a TCP or unix stream edge-triggered from here on (io_edge.c): for long-lived streams of
 * small messages. Plain, or TLS once its handshake is done (one layer). 0, or a negative uv
 * error and libuv reads it as before. Starting TLS or closing turns it off. */
int evs__io_edge_on(evs__io *io);
void evs__io_edge_off(evs__io *io);
int evs__io_edge_resume(evs__io *io);
/* Run loop like uv_run(UV_RUN_DEFAULT), blocking on the edge-triggered streams' epoll set with
 * libuv's descriptor inside it, until *stop is set (by a callback) or nothing is alive. */
int evs__io_edge_run(uv_loop_t *loop, const int *stop);
void evs__io_read_stop(evs__io *io);
/* Queue plaintext; returns 0 or a negative uv error. */
int evs__io_write(evs__io *io, const void *data, size_t len);
/* Gather write of several buffers. */
int evs__io_writev(evs__io *io, const uv_buf_t *bufs, size_t nbufs);
/* Close (idempotent); on_close runs later. Pending writes are flushed first by the kernel only
 * if the caller waited for on_drain; a hard close drops them. */
void evs__io_close(evs__io *io);
/* Close after every queued write reached the kernel: uv_shutdown, then read and discard what
 * the peer still sends for up to EVS_IO_LINGER_MS so that closing with unread input does not
 * reset the connection and destroy the response we just sent (a "lingering close"). */
#define EVS_IO_LINGER_MS 2000
void evs__io_shutdown_close(evs__io *io);
/* Gather writes into one buffer until uncork, so a response head and body (or everything one
 * upstream read produced) leave in one write and one TCP segment. */
void evs__io_cork(evs__io *io);
int evs__io_uncork(evs__io *io);
/* Cork until evs__io_release, whoever uncorks meanwhile, and however much gathers: a
 * response's end waits so for its transaction record's commit (server.c). */
void evs__io_hold(evs__io *io);
int evs__io_release(evs__io *io);
/* Feed bytes that were read before the stream was wrapped (e.g. after takeover): they go to
 * the innermost layer (with two layers, they are the outer layer's plaintext already). */
void evs__io_feed(evs__io *io, const char *data, size_t len);
/* Selected SNI name of a TLS server connection, or NULL. */
const char *evs__io_sni(const evs__io *io);

#endif
