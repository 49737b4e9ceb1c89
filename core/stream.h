/*
 * Streams (evs_stream, core/stream.c): a client connection a plugin took over (CONNECT,
 * Upgrade), optionally with a TLS server started inside it and handed back to the HTTP engine
 * (stream_serve_http), and client streams a plugin opens itself (stream_connect).
 *
 * server.c owns client connections; stream.c owns the stream objects. They meet through the
 * small evs__conn_* interface below, so neither reaches into the other's structures, and a
 * connection that was never taken over pays nothing for streams (one NULL pointer).
 */
#ifndef EVS_CORE_STREAM_H
#define EVS_CORE_STREAM_H

#include "io.h"
#include "plugin.h"
#include "request.h"
#include "worker.h"

/* ---- evs_host entries (plugin.c) --------------------------------------------------------- */
evs_stream *evs__takeover(evs_request *req, int status, const evs_header *h, size_t n);
int evs__stream_read_start(evs_stream *s, evs_stream_read_fn cb, void *arg);
int evs__stream_read_stop(evs_stream *s);
int evs__stream_write(evs_stream *s, const uint8_t *d, size_t len, evs_stream_write_fn cb,
                      void *arg);
int evs__stream_start_tls(evs_stream *s, evs_tls_identity_fn fn, void *arg);
void evs__stream_close(evs_stream *s);
/* ABI 1.7 */
int evs__stream_serve_http(evs_stream *s, const evs_http_service *svc, void *arg);
const char *evs__request_tunnel(evs_request *req);
evs_stream *evs__stream_connect(evs__plugin_rec *p, const evs_stream_connect *opts,
                                evs_stream_connect_fn cb, void *arg);

/* ABI 1.8: bytes queued on the stream's connection and not yet written; a callback when that
 * queue falls below EVS_IO_LOW_WATER after having been above it. */
size_t evs__stream_write_queued(evs_stream *s);
int evs__stream_on_drain(evs_stream *s, evs_stream_write_fn cb, void *arg);
/* server.c: the connection's write queue drained (its on_drain). */
void evs__stream_drained(evs_stream *s);

/* The worker stops (before plugins unload): close every client stream; no callback runs after.
 * Handles stay valid until the plugin closes them. */
void evs__streams_stop(void);

/* ---- stream.c, for server.c -------------------------------------------------------------- */
/* The connection s belongs to is closing (by anyone): s forgets it. A plugin that still holds
 * an unserved stream gets EVS_ECLOSED through its read callback; a served stream's service
 * gets its closed callback. Called after the connection's request (if any) finished. */
void evs__stream_conn_closed(evs_stream *s);
/* ABI 1.9 passthrough: a server stream for a connection that has no request (a TLS listener's
 * connection before its handshake), attached to c; and, when the plugin declined it unused,
 * its undoing (the connection reads through on_read again; the caller detaches it from c). */
evs_stream *evs__stream_from_conn(evs__conn *c, evs__plugin_rec *p);
void evs__stream_unclaimed(evs_stream *s, evs__io_read_cb on_read);
/* A request parsed on a served stream: pass it to the service. Returns EVS_HANDLED or
 * EVS_DECLINED (the caller then answers 404). */
int evs__stream_dispatch(evs_stream *s, evs_request *req);

/* ---- server.c, for stream.c -------------------------------------------------------------- */
evs__io *evs__conn_io(evs__conn *c);
evs_stream *evs__conn_stream(evs__conn *c);
/* Attach s to c (takeover): c stops parsing HTTP, stops its timers, and tells s when it
 * closes. */
void evs__conn_attach_stream(evs__conn *c, evs_stream *s);
/* Bytes the client sent after the taken-over head, moved out of the connection's buffer:
 * returns their length, *ret a malloc'd copy (NULL when none) the caller frees; -ENOMEM. */
ssize_t evs__conn_take_input(evs__conn *c, char **ret);
/* The plugin closed its stream: end the taken-over request and close gracefully. */
void evs__conn_end_stream(evs__conn *c);
/* A stream's TLS failed: close at once. */
void evs__conn_abort(evs__conn *c);
/* Become an HTTP server connection again (stream_serve_http): the taken-over request
 * completes now; on the next loop turn, buffered input is fed (input_is_tls: through the
 * stream's TLS, as ciphertext) or parsed, and reading starts, under the head's deadlines. */
void evs__conn_serve_http(evs__conn *c, int input_is_tls);

#endif
