/*
 * jsonpath: the JSONPath subset the Inbound Relay uses to select "fields to encrypt", compiled
 * into a small automaton that json_rewrite.c runs while it streams a body. A selector is matched
 * against the path of the value being parsed (the stack of member names and array indices from
 * the root), one path element at a time, so no lookahead or document tree is needed.
 *
 * Supported forms (any sequence after the leading `$`):
 *   .name  ['name']  ["name"]   child member (bracket names take \\ \' \" escapes)
 *   .*  [*]                     any child member or array element
 *   [N]                         array element N (decimal, non-negative)
 *   ..name  ..*  ..['name']  ..[N]  ..[*]   descendant at any depth below
 * `$` alone selects the whole document. Dot names may hold letters, digits, `_ - $ @` and any
 * non-ASCII byte; other names need the bracket form. Not supported (rejected with a message):
 * negative indices and slices (they need the array length, i.e. lookahead), unions, filters.
 *
 * Automaton: each selector is a list of at most EVS__JSONPATH_MAX_STEPS steps; its state is one
 * 64-bit word whose bit s means "the path so far matches steps [0, s)". A descendant step keeps
 * its bit set while stepping (it may skip any number of elements). The set of selectors has one
 * word per selector; stepping costs O(selectors * steps) per path element.
 *
 * Threading: a compiled set is immutable and may be shared between threads.
 */
#ifndef EVS_RELAY_JSONPATH_H
#define EVS_RELAY_JSONPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EVS__JSONPATH_MAX_STEPS 63    /* bit 63 of the state word is then "accepted" */
#define EVS__JSONPATH_MAX_SELECTORS 256 /* bounds per-depth state memory to 2 KiB */

struct evs__jsonpath;
typedef struct evs__jsonpath evs__jsonpath;

/* Compiles n selectors (NUL-terminated strings) into one set. On success returns 0 and sets
 * *ret_path (owned by the caller, freed with evs__jsonpath_free). On failure returns -EINVAL
 * (or -ENOMEM), writes "selector <i> (<text>): <reason> at offset <k>" into err (errlen bytes,
 * always NUL-terminated when errlen > 0) and leaves *ret_path untouched. */
int evs__jsonpath_compile(const char *const *selectors, size_t n, evs__jsonpath **ret_path,
                          char *err, size_t errlen);

void evs__jsonpath_free(evs__jsonpath *p);

/* Number of uint64_t words in one state (= number of selectors). */
size_t evs__jsonpath_nwords(const evs__jsonpath *p);

/* Writes the root state (before any path element) into states[0..nwords). */
void evs__jsonpath_start(const evs__jsonpath *p, uint64_t *states);

/* Steps in[] by one path element into out[] (may not alias in). The element is the member name
 * key[0..keylen) (decoded bytes) when key != NULL, else the array index `index`. Returns
 * EVS__JSONPATH_MATCH when some selector matches the path now (as evs__jsonpath_accepts would
 * say), else EVS__JSONPATH_LIVE when out[] can still lead to a match below, else
 * EVS__JSONPATH_DEAD (0): nothing in this subtree can match. */
enum { EVS__JSONPATH_DEAD = 0, EVS__JSONPATH_LIVE = 1, EVS__JSONPATH_MATCH = 2 };
int evs__jsonpath_step(const evs__jsonpath *p, const uint64_t *in, uint64_t *out, const char *key,
                       size_t keylen, uint64_t index);

/* True when some selector in states[] has matched the whole path. */
bool evs__jsonpath_accepts(const evs__jsonpath *p, const uint64_t *states);

#endif
