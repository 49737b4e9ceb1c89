/*
 * rewrite_harness.h: what the unit tests of the four body rewriters (test_json_rewrite.c,
 * test_xml_rewrite.c, test_form_rewrite.c, test_multipart_rewrite.c) share: a sink that stores
 * or counts the output and records each transform call (or the hole of a deferred one), a
 * deterministic rng, the feeding of a body whole, byte by byte or in random pieces, and the
 * check that a reset rewriter is as good as a new one.
 *
 * Include it after cmocka.h. The test file defines, before or after including it:
 *   RW_HARNESS_SEED  the rng's first state (each test keeps the sequence it always had);
 *   rw_marker()      the replacement of the k-th transform call, in the format's terms;
 *   rw_on_value()    a check of each transform value (and anything to accumulate), or nothing.
 */
#ifndef EVS_TEST_REWRITE_HARNESS_H
#define EVS_TEST_REWRITE_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonpath_paths.h" /* paths(): the JSON and XML tests' selectors */
#include "rewriter.h"

#ifndef RW_HARNESS_SEED
#error "define RW_HARNESS_SEED before including rewrite_harness.h"
#endif

struct call {
  evs__rw_type type;
  char value[256];
  size_t len;
};

struct sink {
  char *out;
  size_t len, cap;
  bool store;     /* false: count bytes only */
  bool defer;     /* transform defers; holes recorded */
  unsigned k;     /* transform calls */
  uint64_t vhash; /* for rw_on_value(), e.g. a hash over the values */
  struct call calls[64];
  size_t holes[4096];
  char marker[64];
};

/* Writes the replacement for transform call k of a value of type into b[0..cap); returns its
 * length (snprintf's). */
static int rw_marker(char *b, size_t cap, evs__rw_type type, unsigned k);
/* Sees every transform value v[0..n) (after the harness checked its NUL) before it is counted. */
static void rw_on_value(struct sink *s, evs__rw_type type, const char *v, size_t n);

static int sink_emit(void *ud, const char *b, size_t n) {
  struct sink *s = ud;
  assert_true(n > 0);
  if (s->store) {
    if (s->len + n + 1 > s->cap) {
      s->cap = (s->len + n + 1) * 2;
      s->out = realloc(s->out, s->cap);
      assert_non_null(s->out);
    }
    memcpy(s->out + s->len, b, n);
    s->out[s->len + n] = 0;
  }
  s->len += n;
  return 0;
}

static int sink_transform(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                          size_t *ret_len) {
  struct sink *s = ud;
  assert_int_equal(v[n], 0);
  rw_on_value(s, type, v, n);
  if (s->k < 64) {
    s->calls[s->k].type = type;
    s->calls[s->k].len = n;
    memcpy(s->calls[s->k].value, v, n < 255 ? n : 255);
  }
  if (s->defer) {
    if (s->k < 4096) s->holes[s->k] = s->len;
    s->k++;
    return EVS__RW_DEFER;
  }
  *ret_len = (size_t)rw_marker(s->marker, sizeof s->marker, type, s->k++);
  *ret = s->marker;
  return 0;
}

static unsigned rng_state = RW_HARNESS_SEED;
static inline unsigned rng(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return rng_state >> 8;
}

/* Starts s as a storing sink. */
static inline void sink_start(struct sink *s) {
  memset(s, 0, sizeof *s);
  s->store = true;
}

/* Feeds in[0..n) to the rewriter rw of ops: mode 0 whole, 1 byte by byte, 2 in random pieces of
 * 1..split bytes; stops at the first error, else finishes. Returns that error or finish's
 * result. The caller frees rw. */
static inline int rw_feed_all(const evs__rewriter_ops *ops, void *rw, const char *in, size_t n,
                              int mode, unsigned split) {
  size_t i = 0;
  int r = 0;
  while (i < n && r == 0) {
    size_t c = mode == 0 ? n : mode == 1 ? 1 : 1 + rng() % split;
    if (c > n - i) c = n - i;
    r = ops->feed(rw, in + i, c);
    i += c;
  }
  return r == 0 ? ops->finish(rw) : r;
}

/* A new rewriter of the test's format over jp, emitting into and transforming with s. */
typedef void *(*rw_make_fn)(const evs__jsonpath *jp, struct sink *s);

/* A rewriter of ops reset after any of docs (whole, or cut off in the middle) rewrites each doc
 * exactly as a new one does: the same output, the same transform calls and values, the same
 * result, whatever the first document grew, held or poisoned. Each doc is fed whole and byte by
 * byte (the output before an error differs). */
static inline void rw_check_reset_docs(const evs__rewriter_ops *ops, rw_make_fn make,
                                       const evs__jsonpath *jp, const char *const *docs,
                                       size_t ndocs) {
  for (size_t d = 0; d < ndocs * 2; d++) {
    struct sink want, s;
    int mode = (int)(d % 2);
    const char *doc = docs[d / 2];
    size_t n = strlen(doc);
    sink_start(&want);
    void *fresh = make(jp, &want);
    int want_r = rw_feed_all(ops, fresh, doc, n, mode, 1);
    ops->free(fresh);
    for (size_t p = 0; p < ndocs; p++) {
      for (int cut = 0; cut < 2; cut++) {
        size_t pn = strlen(docs[p]);
        sink_start(&s);
        void *rw = make(jp, &s);
        if (cut) (void)ops->feed(rw, docs[p], pn / 2);
        else (void)rw_feed_all(ops, rw, docs[p], pn, 0, 1);
        free(s.out);
        sink_start(&s);
        assert_int_equal(ops->reset(rw), 0);
        int r = rw_feed_all(ops, rw, doc, n, mode, 1);
        if (r != want_r || s.len != want.len || (s.len && memcmp(s.out, want.out, s.len)) ||
            s.k != want.k || s.vhash != want.vhash)
          fail_msg("after %s (cut %d), %s: %d %.*s, want %d %.*s", docs[p], cut, doc, r,
                   (int)s.len, s.out ? s.out : "", want_r, (int)want.len,
                   want.out ? want.out : "");
        for (unsigned c = 0; c < s.k && c < 64; c++) {
          assert_int_equal(s.calls[c].type, want.calls[c].type);
          assert_int_equal(s.calls[c].len, want.calls[c].len);
          assert_memory_equal(s.calls[c].value, want.calls[c].value,
                              s.calls[c].len < 255 ? s.calls[c].len : 255);
        }
        free(s.out);
        ops->free(rw);
      }
    }
    free(want.out);
  }
}

/* rw_check_reset_docs over the test's corpus and extra documents, under each of its selector
 * sets (one or two selectors each). */
static inline void rw_check_reset(const evs__rewriter_ops *ops, rw_make_fn make,
                                  const char *const *corpus, size_t ncorpus,
                                  const char *const *extra, size_t nextra,
                                  const char *const (*selsets)[2], size_t nsel) {
  const char **docs = calloc(ncorpus + nextra, sizeof *docs);
  assert_non_null(docs);
  memcpy(docs, corpus, ncorpus * sizeof *docs);
  memcpy(docs + ncorpus, extra, nextra * sizeof *docs);
  for (size_t k = 0; k < nsel; k++) {
    evs__jsonpath *jp = paths(selsets[k][0], selsets[k][1]);
    rw_check_reset_docs(ops, make, jp, docs, ncorpus + nextra);
    evs__jsonpath_free(jp);
  }
  free(docs);
}

#endif
