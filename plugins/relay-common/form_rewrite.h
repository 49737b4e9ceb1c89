/*
 * form_rewrite: the Inbound Relay's streaming field rewriter for application/x-www-form-urlencoded
 * request bodies, the sibling of json_rewrite.h (callbacks and error codes from rewriter.h,
 * asynchronous pattern as in json_rewrite.h; read those first). The body is a sequence of pairs split on '&'; a pair is
 * name=value (the first '=' splits; a pair without '=' is a name with no value). Names and values
 * are decoded for matching and for the transform ('+' is a space, %XX a byte), as the
 * destination's form parser will decode them.
 *
 * Selection: form fields are plain names, not JSONPath (the product documentation: "Form URL
 * Encoded and Multipart Form Data only take the names of the fields to be encrypted"). A pair is
 * selected when its decoded name equals one of the names byte for byte (case-sensitive); every
 * selected pair that has a '=' is one transform call, with type EVS__RW_STRING and the decoded
 * value (which may be empty; value[len] is a NUL). A selected name without '=' has no value and
 * passes through unchanged. A repeated selected name is transformed each time.
 *
 * Output: every byte outside the selected values is forwarded as sent (names, separators,
 * escapes, empty pairs). The transform returns the plain replacement (the ev: string, not a JSON
 * literal); the rewriter emits it percent-encoded the way the form serialiser of the WHATWG URL
 * standard does (alphanumerics and "*-._" as they are, space as '+', every other byte as %XX with
 * upper-case hex), so the destination's decoder yields exactly the returned bytes: an ev: string
 * "ev:RFVC:...:$" goes on the wire as "ev%3ARFVC%3A...%3A%24" (its '+', '/', '=' escaped too).
 * With EVS__RW_DEFER nothing is emitted for the value and the caller places the replacement
 * itself: it must encode it with evs__form_urlencode().
 *
 * Memory: the decoded current name up to the longest selected name (a longer name cannot match
 * and is not held), and the decoded current selected value (<= max_value). Unselected values are
 * never held.
 *
 * Errors (the rewriter is then poisoned, as in json_rewrite.h):
 *   EVS__RW_E_SYNTAX   a '%' not followed by two hex digits, in a name or a value
 *   EVS__RW_E_TOOBIG   a selected value longer than max_value bytes (decoded)
 *   EVS__RW_E_EVDATA   an unselected value that looks like an ev: string once decoded
 *                        (evs__looks_like_ev_string)
 *   -ENOMEM, or any negative value a callback returned.
 *
 * Threading: one rewriter per request, used from one thread at a time.
 */
#ifndef EVS_RELAY_FORM_REWRITE_H
#define EVS_RELAY_FORM_REWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "rewriter.h"

struct evs__form_rewrite_opts {
  size_t size;      /* sizeof(struct evs__form_rewrite_opts) */
  size_t max_value; /* decoded bytes of a selected value; 0: 1 MiB */
  int allow_ev;      /* nonzero: unselected ev:-looking values pass (no EVS__RW_E_EVDATA) */
};

struct evs__form_rewrite;
typedef struct evs__form_rewrite evs__form_rewrite;

/* Creates a rewriter selecting the pairs named fields[0..nfields) (NUL-terminated names, copied;
 * nfields may be 0: then it only validates and forwards, and transform may be NULL). opts may be
 * NULL for the defaults. Returns 0 and sets *ret_rw, or -EINVAL / -ENOMEM. */
int evs__form_rewrite_new(const char *const *fields, size_t nfields,
                          const struct evs__form_rewrite_opts *opts, evs__rw_emit_fn emit,
                          evs__rw_transform_fn transform, void *ud, evs__form_rewrite **ret_rw);

void evs__form_rewrite_free(evs__form_rewrite *rw);

/* Consumes buf[0..len) (any split of the body). Returns 0 or a negative error. */
int evs__form_rewrite_feed(evs__form_rewrite *rw, const char *buf, size_t len);

/* Signals the end of the body; a trailing selected value is transformed here. Fails with
 * EVS__RW_E_SYNTAX on a truncated %XX escape. Returns 0 or a negative error. */
int evs__form_rewrite_finish(evs__form_rewrite *rw);

/* The byte offset in the body where the error was detected (for logs). */
uint64_t evs__form_rewrite_error_offset(const evs__form_rewrite *rw);

/* Peak bytes allocated by the rewriter. */
size_t evs__form_rewrite_mem_high_water(const evs__form_rewrite *rw);

/* Pairs seen so far (non-empty segments between '&'), for logs and tests. */
uint64_t evs__form_rewrite_pairs(const evs__form_rewrite *rw);

/* A static English description of an error code (the EVS__RW_E_* codes read in form terms). */
const char *evs__form_rewrite_strerror(int err);

/* Percent-encodes in[0..len) as the rewriter does (see above) into out[0..cap). Returns the
 * encoded length (at most 3 * len), even when it exceeds cap; out is then left incomplete. Not
 * NUL-terminated. */
size_t evs__form_urlencode(const char *in, size_t len, char *out, size_t cap);

#endif
