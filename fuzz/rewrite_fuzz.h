/*
 * rewrite_fuzz.h: what the fuzz targets of the four body rewriters (fuzz_json_rewrite.c,
 * fuzz_xml_rewrite.c, fuzz_form_rewrite.c, fuzz_multipart_rewrite.c) share: an output buffer
 * that also carries what each target's transform records, its emit callback, the feeding of a
 * body in pieces of one size, and a rewriter's reset. Each target keeps its transform and its
 * checks.
 */
#ifndef EVS_FUZZ_REWRITE_FUZZ_H
#define EVS_FUZZ_REWRITE_FUZZ_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_buf.h"
#include "rewriter.h"

struct out {
  char *b;
  size_t len, cap;
  unsigned k;               /* transform calls */
  bool check;               /* form, multipart: re-parse, each value the marker of its index */
  uint64_t vhash;           /* xml: a hash over the values */
  unsigned char types[64];  /* multipart: the type of each value */
  char marker[48];
};

static int out_emit(void *ud, const char *b, size_t n) {
  struct out *o = ud;
  fuzz_buf_append(&o->b, &o->len, &o->cap, b, n);
  return 0;
}

/* Feeds data[0..size) to the rewriter rw of ops in pieces of step bytes, stopping at the first
 * error, else finishes. Returns that error or finish's result; the caller frees rw. */
static inline int out_feed(const evs__rewriter_ops *ops, void *rw, const uint8_t *data,
                           size_t size, size_t step) {
  int r = 0;
  for (size_t i = 0; i < size && r == 0; i += step)
    r = ops->feed(rw, (const char *)data + i, size - i < step ? size - i : step);
  return r == 0 ? ops->finish(rw) : r;
}

/* Makes the rewriter of ops from sel with out_emit and transform into o (reset first), feeds it
 * data as out_feed does and frees it. Returns the result. */
static inline int out_run(const evs__rewriter_ops *ops, const evs__rewriter_select *sel,
                          evs__rw_transform_fn transform, const uint8_t *data, size_t size,
                          size_t step, struct out *o) {
  void *rw = NULL;
  int r;
  memset(o, 0, sizeof *o);
  if (ops->new(sel, out_emit, transform, o, &rw) != 0) abort();
  r = out_feed(ops, rw, data, size, step);
  ops->free(rw);
  return r;
}

/* As out_run, but the rewriter first takes data[0..cut) in pieces of step (whatever they give)
 * and is reset (ops->reset): then the whole body at once. Returns the result after the reset. */
static inline int out_run_reset(const evs__rewriter_ops *ops, const evs__rewriter_select *sel,
                                evs__rw_transform_fn transform, const uint8_t *data, size_t size,
                                size_t cut, size_t step, struct out *o) {
  void *rw = NULL;
  int r;
  memset(o, 0, sizeof *o);
  if (ops->new(sel, out_emit, transform, o, &rw) != 0) abort();
  for (size_t i = 0; i < cut; i += step)
    if (ops->feed(rw, (const char *)data + i, cut - i < step ? cut - i : step) < 0) break;
  free(o->b);
  memset(o, 0, sizeof *o);
  if (ops->reset(rw) != 0) __builtin_trap();
  r = out_feed(ops, rw, data, size, size ? size : 1);
  ops->free(rw);
  return r;
}

#endif
