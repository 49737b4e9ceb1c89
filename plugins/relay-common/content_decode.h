/*
 * content_decode.h: streaming decoding of HTTP content codings (RFC 9110 §8.4) for the Inbound
 * Relay's response decryption: gzip (x-gzip), deflate (zlib-wrapped as the RFC says, and raw
 * deflate as some servers send and browsers accept) with zlib, br with libbrotli. Stacked
 * codings (`Content-Encoding: gzip, br`) are undone in reverse order. Fed the encoded body in
 * pieces of any size, the decoder hands the decoded bytes to an emit callback.
 *
 * Bounds: the decoded total is at most max_out (else EVS__CDEC_E_TOOBIG, before the byte past
 * the limit is emitted), and the decompressors' own allocations are at most max_mem together
 * (brotli's window is up to 16 MiB; a stream that asks for more fails as EVS__CDEC_E_NOMEM).
 * Malformed, truncated, or trailing data after the end of a stream (other than further gzip
 * members) is EVS__CDEC_E_CORRUPT. After an error, the decoder accepts only _free.
 *
 * Not thread-safe; one decoder per response. Library code: it does not log.
 */
#ifndef EVS_CONTENT_DECODE_H
#define EVS_CONTENT_DECODE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

enum evs__cdec_coding {
  EVS__CDEC_GZIP = 1,
  EVS__CDEC_DEFLATE = 2,
  EVS__CDEC_BR = 3,
};

/* At most this many stacked codings (identity entries do not count). */
#define EVS__CDEC_MAX_CODINGS 3
/* Default bound of the decompressors' memory (brotli's largest window, 16 MiB, and tables). */
#define EVS__CDEC_MEM_DEFAULT (24u << 20)

#define EVS__CDEC_E_UNSUPPORTED (-EOPNOTSUPP) /* a coding the decoder does not know */
#define EVS__CDEC_E_CORRUPT (-EBADMSG) /* malformed, truncated or trailing data */
#define EVS__CDEC_E_TOOBIG (-E2BIG)    /* decoded size over max_out */
#define EVS__CDEC_E_NOMEM (-ENOMEM)    /* out of memory or over max_mem */

/* Parses a Content-Encoding field value (comma-separated, case-insensitive, optional
 * whitespace; `identity` entries ignored) into ret_codings in the order they were applied.
 * Returns the number of codings (0: none, the body is as it is), or EVS__CDEC_E_UNSUPPORTED
 * for an unknown coding (zstd, compress, ...) or more than EVS__CDEC_MAX_CODINGS. Empty
 * list elements are ignored. ret_codings has room for EVS__CDEC_MAX_CODINGS. */
int evs__cdecode_parse(const char *value, size_t len, int *ret_codings);

/* The Accept-Encoding value to send a destination whose responses are decoded: the elements of
 * the client's value in[0..len) (NULL: the client sent none) whose coding this decoder knows
 * (gzip, x-gzip, deflate, br) or that are identity, with their parameters (q-values), joined by
 * ", "; "identity" when none is left. `*` is dropped (it would admit codings the decoder does not
 * know), and so is an element with a control byte. out has room for 2 * len + 9 bytes; it is
 * NUL-terminated. Returns the length written. */
size_t evs__cdecode_accept_encoding(const char *in, size_t len, char *out);

/* Returns the decoded bytes; any negative return stops decoding and is returned by the
 * feed/finish call that emitted. buf is valid during the call. */
typedef int (*evs__cdecode_emit_fn)(void *ud, const char *buf, size_t len);

typedef struct evs__cdecode evs__cdecode;

/* A decoder undoing codings[0..n) (as evs__cdecode_parse returns them; 1 <= n <=
 * EVS__CDEC_MAX_CODINGS). max_out 0: no bound; max_mem 0: EVS__CDEC_MEM_DEFAULT. On success
 * *ret owns a decoder the caller frees with evs__cdecode_free. Returns 0, -EINVAL or
 * EVS__CDEC_E_NOMEM. */
int evs__cdecode_new(const int *codings, size_t n, uint64_t max_out, size_t max_mem,
                     evs__cdecode_emit_fn emit, void *ud, evs__cdecode **ret);
/* Feeds encoded bytes. Returns 0, an EVS__CDEC_E_* error or emit's error. */
int evs__cdecode_feed(evs__cdecode *d, const uint8_t *p, size_t n);
/* The end of the encoded body: EVS__CDEC_E_CORRUPT if a stream is unfinished. */
int evs__cdecode_finish(evs__cdecode *d);
/* Decoded bytes emitted so far. */
uint64_t evs__cdecode_total(const evs__cdecode *d);
/* Accepts NULL. */
void evs__cdecode_free(evs__cdecode *d);

#endif
