/*
 * libFuzzer target for plugins/relay-common/xml_rewrite.c (with jsonpath.c). Besides memory
 * errors it checks: without selectors (identity: nothing is transformed) a body is accepted iff
 * the output equals the input; with selectors, a body valid without them is accepted too unless a
 * selected element has mixed content; the result does not depend on how the body is split; the
 * output equals a non-streaming reference (tests/unit/xml_rewrite_ref.h) that replaces the
 * selected spans, with the same decoded values; the output re-parses as XML; putting the
 * original spans back yields the input; and a rewriter reset after (part of) the body rewrites
 * it again as a new one does.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-common \
 *     plugins/relay-common/xml_rewrite.c plugins/relay-common/jsonpath.c \
 *     plugins/relay-common/rewriter.c plugins/relay-common/rw_base.c \
 *     fuzz/fuzz_xml_rewrite.c -o /tmp/fuzz_xml_rewrite
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonpath.h"
#include "rewrite_fuzz.h"
#include "xml_rewrite.h"

#include "../tests/unit/xml_rewrite_ref.h"

static int out_transform(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                         size_t *ret_len) {
  struct out *o = ud;
  if (v[n] != 0 || type != EVS__RW_STRING) __builtin_trap();
  o->vhash = xref_hash(o->vhash, v, n);
  *ret_len = (size_t)snprintf(o->marker, sizeof o->marker, "#%u", o->k++);
  *ret = o->marker;
  return 0;
}

static int run(const evs__jsonpath *jp, const uint8_t *data, size_t size, size_t step,
               struct out *o) {
  evs__rewriter_select sel = {.paths = jp}; /* the default options */
  return out_run(&evs__xml_rewriter, &sel, out_transform, data, size, step, o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static evs__jsonpath *jp;
  struct out a, b, c, d, e;
  int ra, rb, rc, re;
  size_t step = size ? 1 + data[0] % 7 : 1;
  if (!jp) {
    const char *sel[] = {"$..a", "$.*[1]", "$['b'].c", "$.d[*].e"};
    char err[128];
    if (evs__jsonpath_compile(sel, 4, &jp, err, sizeof err) != 0) abort();
  }
  ra = run(NULL, data, size, size ? size : 1, &a);
  if (ra == 0 && (a.len != size || (size && memcmp(a.b, data, size) != 0))) __builtin_trap();
  rb = run(jp, data, size, size ? size : 1, &b);
  rc = run(jp, data, size, step, &c);
  if (rb != rc || (rb == 0 && (b.len != c.len || b.k != c.k || b.vhash != c.vhash ||
                               (b.len && memcmp(b.b, c.b, b.len) != 0))))
    __builtin_trap();
  if (ra == 0 && rb != 0 && rb != EVS__RW_E_MIXED) __builtin_trap();
  evs__rewriter_select sel = {.paths = jp};
  re = out_run_reset(&evs__xml_rewriter, &sel, out_transform, data, size,
                     size ? data[size - 1] % (size + 1) : 0, step, &e);
  if (re != rb || e.len != b.len || e.k != b.k || e.vhash != b.vhash ||
      (b.len && memcmp(e.b, b.b, b.len) != 0))
    __builtin_trap();
  free(e.b);
  if (rb == 0) { /* the output is XML again (markers are plain text) */
    if (run(NULL, (const uint8_t *)b.b, b.len, b.len ? b.len : 1, &d) != 0) __builtin_trap();
    free(d.b);
  }
  if (ra == 0 && rb == 0 && size <= 4000) {
    struct xref *ref = calloc(1, sizeof *ref);
    if (!ref) abort();
    xref_run(ref, jp, (const char *)data, size);
    if (ref->olen != b.len || ref->k != b.k || ref->vhash != b.vhash ||
        (b.len && memcmp(ref->out, b.b, b.len) != 0))
      __builtin_trap();
    if (ref->k <= 4096 && !xref_put_back(ref, (const char *)data, size, b.b, b.len))
      __builtin_trap();
    free(ref->out);
    free(ref);
  }
  free(a.b);
  free(b.b);
  free(c.b);
  return 0;
}
