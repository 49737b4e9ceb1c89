/*
 * multipart_rewrite: the Inbound Relay's streaming field rewriter for multipart/form-data request
 * bodies (RFC 7578 over RFC 2046), the sibling of json_rewrite.h and form_rewrite.h (callbacks
 * and error codes from rewriter.h; asynchronous pattern as in json_rewrite.h, read that first).
 *
 * Selection: plain field names, compared byte for byte with the name= parameter of each part's
 * Content-Disposition. A selected part is one transform call:
 *   - a file part (its Content-Disposition has filename= or filename*=): type EVS__RW_FILE and
 *     the raw file bytes; the replacement (a %EVENC file) becomes the part's body. The filename
 *     and every part header stay as sent, as the product documentation promises ("Encrypted files
 *     will arrive at your server with an unchanged filename, but the bytes in the file will be
 *     fully encrypted").
 *   - a text part: type EVS__RW_STRING and the body bytes; the replacement (an ev: string) is
 *     the new body, verbatim.
 * value[len] is a NUL in both cases (the bytes may contain NULs). A repeated selected name (e.g.
 * several files under one name) is transformed each time.
 *
 * Output: the preamble, every delimiter line, every header block, the unselected parts and the
 * epilogue are forwarded byte for byte; unselected bytes are emitted straight from the caller's
 * buffer, never copied or held, however large the part. Only a selected part's body is held, to
 * be handed to the transform (<= max_value bytes).
 *
 * Content-Length and Content-Transfer-Encoding: RFC 7578 parts carry neither (section 4.7 forbids
 * the latter). A selected part carrying one is refused with EVS__RW_E_UNSUPPORTED: its
 * length would be wrong after encryption, and encrypting a transfer-encoded body would hand the
 * destination a decoder error instead of a %EVENC file. Rewriting the header is not possible in a
 * stream (it precedes the body, and deferred transforms answer later). Unselected parts may carry
 * them (their bytes do not change), except a Content-Transfer-Encoding other than 7bit, 8bit or
 * binary on any part: the destination may decode it (base64, quoted-printable), so what the part
 * holds could not be checked for encrypted data.
 *
 * Strictness, because the destination's parser decides what the fields are and must not see a
 * different split than the relay: a delimiter "--boundary" must be followed by optional
 * whitespace and CRLF, or by "--" (the close delimiter); header lines end in CRLF (no bare CR or
 * LF, no folding, no control bytes), each header name is a token followed directly by ':';
 * exactly one Content-Disposition, of type form-data, with exactly one name= parameter (token or
 * quoted-string without backslashes, since parsers disagree about quoted-pairs) and no name*=.
 *
 * Memory: the current header block (<= max_header), the selected body being held (<= max_value),
 * a copy of the names and the delimiter; evs__multipart_rewrite_mem_high_water() reports the peak.
 *
 * Errors (the rewriter is then poisoned, as in json_rewrite.h):
 *   EVS__RW_E_SYNTAX   malformed multipart (see above; also no close delimiter at finish, a
 *                        header block over max_header, no Content-Disposition)
 *   EVS__RW_E_TOOBIG   a selected part's body over max_value bytes
 *   EVS__RW_E_EVDATA   an unselected text part (no filename) whose body looks like an ev: string
 *                        (evs__looks_like_ev_string)
 *   EVS__RW_E_UNSUPPORTED  a selected part with Content-Length or
 *                        Content-Transfer-Encoding, or any part with a decoding
 *                        Content-Transfer-Encoding (bad-request)
 *   -ENOMEM, or any negative value a callback returned.
 *
 * Threading: one rewriter per request, used from one thread at a time.
 */
#ifndef EVS_RELAY_MULTIPART_REWRITE_H
#define EVS_RELAY_MULTIPART_REWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "rewriter.h"

#define EVS__MULTIPART_BOUNDARY_MAX 70 /* RFC 2046 section 5.1.1 */

struct evs__multipart_rewrite_opts {
  size_t size;       /* sizeof(struct evs__multipart_rewrite_opts) */
  size_t max_value;  /* bytes of a selected part's body; 0: 25 MiB (the SDK's file limit) */
  size_t max_header; /* bytes of one part's header block; 0: 16 KiB */
  int allow_ev;      /* nonzero: unselected ev:-looking values pass (no EVS__RW_E_EVDATA) */
};

struct evs__multipart_rewrite;
typedef struct evs__multipart_rewrite evs__multipart_rewrite;

/* Extracts the boundary parameter from a Content-Type value (e.g. `multipart/form-data;
 * boundary="a b"`): the media type must be a syntactically valid type/subtype (not checked to be
 * multipart/form-data: that is the caller's routing decision), parameters are token=token or
 * token=quoted-string (names case-insensitive), exactly one boundary parameter, 1..70 characters
 * of RFC 2046's bchars, not ending in a space. Writes it NUL-terminated to ret[0..cap) and
 * returns its length; EVS__RW_E_SYNTAX if it is missing or malformed, -ENOSPC if cap is too
 * small (71 is always enough). */
int evs__multipart_boundary(const char *content_type, char *ret, size_t cap);

/* Creates a rewriter for a body delimited by boundary (as returned by evs__multipart_boundary;
 * copied), selecting the parts named fields[0..nfields) (copied; nfields may be 0: then it only
 * validates and forwards, and transform may be NULL). opts may be NULL for the defaults. Returns
 * 0 and sets *ret_rw, or -EINVAL (bad boundary or arguments) / -ENOMEM. */
int evs__multipart_rewrite_new(const char *boundary, const char *const *fields, size_t nfields,
                               const struct evs__multipart_rewrite_opts *opts,
                               evs__rw_emit_fn emit, evs__rw_transform_fn transform, void *ud,
                               evs__multipart_rewrite **ret_rw);

void evs__multipart_rewrite_free(evs__multipart_rewrite *rw);

/* Consumes buf[0..len) (any split of the body). Returns 0 or a negative error. */
int evs__multipart_rewrite_feed(evs__multipart_rewrite *rw, const char *buf, size_t len);

/* Signals the end of the body: fails with EVS__RW_E_SYNTAX unless the close delimiter was
 * seen. Returns 0 or a negative error. */
int evs__multipart_rewrite_finish(evs__multipart_rewrite *rw);

/* The byte offset in the body where the error was detected (for logs). */
uint64_t evs__multipart_rewrite_error_offset(const evs__multipart_rewrite *rw);

/* Peak bytes allocated by the rewriter. */
size_t evs__multipart_rewrite_mem_high_water(const evs__multipart_rewrite *rw);

/* Parts whose header block has been parsed so far, for logs and tests. */
uint64_t evs__multipart_rewrite_parts(const evs__multipart_rewrite *rw);

/* A static English description of an error code (EVS__RW_E_* read in multipart
 * terms). */
const char *evs__multipart_rewrite_strerror(int err);

#endif
