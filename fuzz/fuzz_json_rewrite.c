/*
 * libFuzzer target for plugins/relay-common/json_rewrite.c (and jsonpath.c). Besides memory
 * errors it checks: without selectors (identity: nothing is transformed) a body is accepted iff
 * the output equals the input; with selectors, a body valid without them is accepted too, the
 * output equals a non-streaming reference that replaces the selected spans, and putting the
 * original spans back yields the input; the result does not depend on how the body is split;
 * a rewriter reset after (part of) the body rewrites it again as a new one does.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-common \
 *     plugins/relay-common/json_rewrite.c plugins/relay-common/jsonpath.c \
 *     plugins/relay-common/rw_base.c plugins/relay-common/rewriter.c \
 *     fuzz/fuzz_json_rewrite.c -o /tmp/fuzz_json_rewrite
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_rewrite.h"
#include "jsonpath.h"
#include "rewrite_fuzz.h"

#include "../tests/unit/json_rewrite_ref.h"

static int out_transform(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                         size_t *ret_len) {
  struct out *o = ud;
  if (v[n] != 0 || type < EVS__RW_STRING || type > EVS__RW_BOOLEAN) __builtin_trap();
  *ret_len = (size_t)snprintf(o->marker, sizeof o->marker, "\"#%u\"", o->k++);
  *ret = o->marker;
  return 0;
}

static int run(const evs__jsonpath *jp, const uint8_t *data, size_t size, size_t step,
               struct out *o) {
  evs__rewriter_select sel = {.paths = jp}; /* the default options */
  return out_run(&evs__json_rewriter, &sel, out_transform, data, size, step, o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static evs__jsonpath *jp;
  struct out a, b, c, d;
  int ra, rb, rc, rd;
  size_t step = size ? 1 + data[0] % 7 : 1;
  if (!jp) {
    const char *sel[] = {"$..a", "$.*[1]", "$['b'].c"};
    char err[128];
    if (evs__jsonpath_compile(sel, 3, &jp, err, sizeof err) != 0) abort();
  }
  ra = run(NULL, data, size, size ? size : 1, &a);
  if (ra == 0 && (a.len != size || (size && memcmp(a.b, data, size) != 0))) __builtin_trap();
  rb = run(jp, data, size, size ? size : 1, &b);
  rc = run(jp, data, size, step, &c);
  if (rb != rc || (rb == 0 && (b.len != c.len || (b.len && memcmp(b.b, c.b, b.len) != 0))))
    __builtin_trap();
  if (ra == 0 && rb != 0) __builtin_trap();
  evs__rewriter_select sel = {.paths = jp};
  rd = out_run_reset(&evs__json_rewriter, &sel, out_transform, data, size,
                     size ? data[size - 1] % (size + 1) : 0, step, &d);
  if (rd != rb || d.len != b.len || d.k != b.k || (b.len && memcmp(d.b, b.b, b.len) != 0))
    __builtin_trap();
  if (ra == 0 && size <= 4000) {
    struct ref *ref = calloc(1, sizeof *ref);
    size_t last = 0, bl = 0;
    char *back = malloc(size + 1);
    if (!ref || !back) abort();
    ref_run(ref, jp, (const char *)data, size);
    if (ref->olen != b.len || ref->k != b.k || (b.len && memcmp(ref->out, b.b, b.len) != 0))
      __builtin_trap();
    for (unsigned k = 0; k < ref->k && k < 4096; k++) {
      memcpy(back + bl, data + last, ref->spans[k][1] - last);
      bl += ref->spans[k][1] - last;
      last = ref->spans[k][1];
    }
    memcpy(back + bl, data + last, size - last);
    if (bl + size - last != size || memcmp(back, data, size) != 0) __builtin_trap();
    free(back);
    free(ref->out);
    free(ref);
  }
  free(a.b);
  free(b.b);
  free(c.b);
  free(d.b);
  return 0;
}
