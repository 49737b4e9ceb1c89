/*
 * json_rewrite: the Inbound Relay's streaming JSON field rewriter. A push parser validates a
 * request body strictly (RFC 8259) as it arrives in pieces of any size and forwards it through
 * an emit callback; the values picked by a jsonpath set are handed to a transform callback and
 * replaced by what it returns. Everything outside the selected values is forwarded byte for byte
 * (key order, whitespace, escapes, number spellings are never re-serialised): unselected bytes
 * are emitted straight from the caller's input buffer, without copying.
 *
 * Selection: a selected string, number or boolean is one transform call; a selected object or
 * array has each of its string/number/boolean leaves transformed (keys and punctuation kept);
 * null is never transformed and passes through as is.
 *
 * Memory is bounded by the nesting depth and the largest selected value, not by the body size:
 * per open container a frame (with one jsonpath state word per selector), the decoded current
 * member name (<= max_value bytes), the decoded current selected value (<= max_value bytes), and
 * 8 bytes per member name of the open objects (for duplicate detection, <= max_keys in all).
 * evs__json_rewrite_mem_high_water() reports the peak of these allocations.
 *
 * Errors (the rewriter is then poisoned and returns the same error on every later call):
 *   EVS__JSON_E_SYNTAX   malformed JSON (bad-request)
 *   EVS__JSON_E_DUPKEY   a member name repeated within one object (bad-request: parsers disagree
 *                        on which one wins). Names are compared by a 64-bit hash of their decoded
 *                        bytes, so a false "duplicate" has probability ~ k^2 / 2^65 for k names;
 *                        it can only reject the request, never let a duplicate through.
 *   EVS__JSON_E_DEPTH    nesting deeper than max_depth
 *   EVS__JSON_E_TOOBIG   a selected value or a member name longer than max_value (decoded)
 *   EVS__JSON_E_KEYS     more than max_keys member names held by the open objects together
 *   EVS__JSON_E_EVDATA   an unselected string value that looks like an ev: string (starts with
 *                        "ev:", ends with ":$", 5 or 6 ':' in all, only base64/base64url
 *                        characters otherwise) (encrypted-data-in-field)
 *   -ENOMEM, or any negative value a callback returned (passed through unchanged).
 *
 * Asynchronous transforms (the relay batches all fields of a request into one enclave call):
 * transform calls are strictly ordered with emit calls. Every byte before a selected value has
 * been emitted when its transform runs, and nothing after it is emitted before the transform
 * returns. A transform that cannot answer yet returns EVS__JSON_DEFER: nothing is emitted for
 * that value and the caller records a hole at its current output position (e.g. an offset into
 * its spooled output), then fills the holes when the batch comes back. Holding the output is
 * thereby the caller's choice (memory arena with a cap, or a spool file for a 25 MB body), and
 * this rewriter's own memory stays bounded. tests/unit/test_json_rewrite.c shows the pattern.
 *
 * Threading: one rewriter per request, used from one thread at a time.
 */
#ifndef EVS_RELAY_JSON_REWRITE_H
#define EVS_RELAY_JSON_REWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "jsonpath.h"

enum {
  EVS__JSON_E_SYNTAX = -2001,
  EVS__JSON_E_DUPKEY = -2002,
  EVS__JSON_E_DEPTH = -2003,
  EVS__JSON_E_TOOBIG = -2004,
  EVS__JSON_E_KEYS = -2005,
  EVS__JSON_E_EVDATA = -2006,
};

#define EVS__JSON_DEFER 1 /* transform return: replacement will be placed by the caller */

typedef enum evs__json_type {
  EVS__JSON_STRING = 1,
  EVS__JSON_NUMBER,
  EVS__JSON_BOOLEAN,
  /* Not produced by the JSON rewriter: the raw bytes of a multipart/form-data file part
   * (multipart_rewrite.h), whose replacement (a %EVENC file) becomes the part's new body. */
  EVS__JSON_FILE = 4,
} evs__json_type;

/* Receives output bytes buf[0..len) (valid only during the call; len > 0). Returns 0, or a
 * negative value that aborts the rewrite and is returned by feed/finish. */
typedef int (*evs__json_emit_fn)(void *ud, const char *buf, size_t len);

/* Transforms one selected value. value[0..len) is: for a string, its decoded bytes (escapes
 * resolved, valid UTF-8, may contain NUL; value[len] is a NUL); for a number, its text as sent
 * (e.g. "-1.5e300", "123456789012345678901234567890"); for a boolean, "true" or "false". The
 * buffer is valid only during the call. Returns 0 after setting *ret_buf and *ret_len to the bytes
 * to emit in place of the value (a JSON literal, e.g. "\"ev:...\"", owned by the transform and
 * valid until the transform is called again or the rewriter is freed), EVS__JSON_DEFER (see
 * above; nothing is emitted), or a negative value that aborts the rewrite. */
typedef int (*evs__json_transform_fn)(void *ud, evs__json_type type, const char *value, size_t len,
                                      const char **ret_buf, size_t *ret_len);

struct evs__json_rewrite_opts {
  size_t size;        /* sizeof(struct evs__json_rewrite_opts) */
  unsigned max_depth; /* 0: 256 */
  size_t max_value;   /* decoded bytes of a selected value or member name; 0: 1 MiB */
  size_t max_keys;    /* member names held by all open objects; 0: 100000 */
};

struct evs__json_rewrite;
typedef struct evs__json_rewrite evs__json_rewrite;

/* Creates a rewriter. paths (borrowed, must outlive the rewriter) may be NULL: then nothing is
 * selected and the rewriter only validates and forwards. opts may be NULL for the defaults.
 * Returns 0 and sets *ret_rw (free with evs__json_rewrite_free), or -EINVAL / -ENOMEM. */
int evs__json_rewrite_new(const evs__jsonpath *paths, const struct evs__json_rewrite_opts *opts,
                          evs__json_emit_fn emit, evs__json_transform_fn transform, void *ud,
                          evs__json_rewrite **ret_rw);

void evs__json_rewrite_free(evs__json_rewrite *rw);

/* Consumes buf[0..len) (any split of the body). Returns 0 or a negative error; callbacks run
 * from inside this call. */
int evs__json_rewrite_feed(evs__json_rewrite *rw, const char *buf, size_t len);

/* Signals the end of the body: fails with EVS__JSON_E_SYNTAX unless exactly one complete value
 * (with optional surrounding whitespace) was fed. May call transform/emit for a trailing
 * top-level number. Returns 0 or a negative error. */
int evs__json_rewrite_finish(evs__json_rewrite *rw);

/* The byte offset in the body where the error was detected (for logs). */
uint64_t evs__json_rewrite_error_offset(const evs__json_rewrite *rw);

/* Peak bytes allocated by the rewriter for its buffers, frames and key hashes. */
size_t evs__json_rewrite_mem_high_water(const evs__json_rewrite *rw);

/* A static English description of an EVS__JSON_E_* code. */
const char *evs__json_rewrite_strerror(int err);

/* The heuristic behind EVS__JSON_E_EVDATA, shared by the form and multipart rewriters: 1 if
 * s[0..len) starts with "ev:", ends with ":$", has 5 or 6 ':' in all and otherwise only
 * base64/base64url characters (A-Z a-z 0-9 + / = - _ and '$'), else 0. */
int evs__looks_like_ev_string(const char *s, size_t len);

#endif
