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
 *   EVS__RW_E_SYNTAX   malformed JSON (bad-request)
 *   EVS__RW_E_DUPKEY   a member name repeated within one object (bad-request: parsers disagree
 *                        on which one wins). Names are compared by a 64-bit hash of their decoded
 *                        bytes, so a false "duplicate" has probability ~ k^2 / 2^65 for k names;
 *                        it can only reject the request, never let a duplicate through.
 *   EVS__RW_E_DEPTH    nesting deeper than max_depth
 *   EVS__RW_E_TOOBIG   a selected value or a member name longer than max_value (decoded)
 *   EVS__RW_E_KEYS     more than max_keys member names held by the open objects together
 *   EVS__RW_E_EVDATA   an unselected string value that looks like an ev: string (starts with
 *                        "ev:", ends with ":$", 5 or 6 ':' in all, only base64/base64url
 *                        characters otherwise) (encrypted-data-in-field)
 *   -ENOMEM, or any negative value a callback returned (passed through unchanged).
 *
 * Asynchronous transforms (the relay batches all fields of a request into one enclave call):
 * transform calls are strictly ordered with emit calls. Every byte before a selected value has
 * been emitted when its transform runs, and nothing after it is emitted before the transform
 * returns. A transform that cannot answer yet returns EVS__RW_DEFER: nothing is emitted for
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
#include "rewriter.h" /* callbacks, value types, error codes, EVS__RW_DEFER */

struct evs__json_rewrite_opts {
  size_t size;        /* sizeof(struct evs__json_rewrite_opts) */
  unsigned max_depth; /* 0: 256 */
  size_t max_value;   /* decoded bytes of a selected value or member name; 0: 1 MiB */
  size_t max_keys;    /* member names held by all open objects; 0: 100000 */
  int allow_ev;      /* nonzero: unselected ev:-looking values pass (no EVS__RW_E_EVDATA) */
};

struct evs__json_rewrite;
typedef struct evs__json_rewrite evs__json_rewrite;

/* Creates a rewriter. paths (borrowed, must outlive the rewriter) may be NULL: then nothing is
 * selected and the rewriter only validates and forwards. opts may be NULL for the defaults.
 * Returns 0 and sets *ret_rw (free with evs__json_rewrite_free), or -EINVAL / -ENOMEM. */
int evs__json_rewrite_new(const evs__jsonpath *paths, const struct evs__json_rewrite_opts *opts,
                          evs__rw_emit_fn emit, evs__rw_transform_fn transform, void *ud,
                          evs__json_rewrite **ret_rw);

void evs__json_rewrite_free(evs__json_rewrite *rw);

/* Consumes buf[0..len) (any split of the body). Returns 0 or a negative error; callbacks run
 * from inside this call. */
int evs__json_rewrite_feed(evs__json_rewrite *rw, const char *buf, size_t len);

/* Signals the end of the body: fails with EVS__RW_E_SYNTAX unless exactly one complete value
 * (with optional surrounding whitespace) was fed. May call transform/emit for a trailing
 * top-level number. Returns 0 or a negative error. */
int evs__json_rewrite_finish(evs__json_rewrite *rw);

/* The byte offset in the body where the error was detected (for logs). */
uint64_t evs__json_rewrite_error_offset(const evs__json_rewrite *rw);

/* Peak bytes allocated by the rewriter for its buffers, frames and key hashes. */
size_t evs__json_rewrite_mem_high_water(const evs__json_rewrite *rw);

/* A static English description of an EVS__RW_E_* code, in JSON terms. */
const char *evs__json_rewrite_strerror(int err);

#endif
