/*
 * libFuzzer target for plugins/relay-common/multipart_rewrite.c (and the boundary helper).
 * Besides memory errors it checks: without selections a body is accepted iff the output equals
 * the input; with selections a body accepted without them is accepted too (unless a selected part
 * carries Content-Length), the result does not depend on how the body is split, and the output
 * re-parses with the same number of parts and the same selected parts, in order and of the same
 * kind, whose bodies are exactly the replacements the transform returned.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-common \
 *     plugins/relay-common/multipart_rewrite.c plugins/relay-common/json_rewrite.c \
 *     plugins/relay-common/rewriter.c plugins/relay-common/rw_base.c \
 *     plugins/relay-common/jsonpath.c fuzz/fuzz_multipart_rewrite.c -o /tmp/fuzz_multipart
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "multipart_rewrite.h"
#include "rewrite_fuzz.h"

static int marker(char *b, size_t cap, evs__rw_type type, unsigned k) {
  return type == EVS__RW_FILE ? snprintf(b, cap, "%%EVENC#%u", k) : snprintf(b, cap, "#%u", k);
}

static int out_transform(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                         size_t *ret_len) {
  struct out *o = ud;
  int ml;
  if (v[n] != 0 || (type != EVS__RW_STRING && type != EVS__RW_FILE)) __builtin_trap();
  ml = marker(o->marker, sizeof o->marker, type, o->k);
  if (o->check && ((size_t)ml != n || memcmp(v, o->marker, n) != 0)) __builtin_trap();
  if (o->k < 64) o->types[o->k] = (unsigned char)type;
  o->k++;
  *ret = o->marker;
  *ret_len = (size_t)ml;
  return 0;
}

static int run(const char *bd, const char *const *f, size_t nf, const uint8_t *data, size_t size,
               size_t step, bool check, struct out *o, uint64_t *ret_parts) {
  evs__multipart_rewrite *rw = NULL;
  int r;
  memset(o, 0, sizeof *o);
  o->check = check;
  if (evs__multipart_rewrite_new(bd, f, nf, NULL, out_emit, out_transform, o, &rw) != 0) abort();
  r = out_feed(&evs__multipart_rewriter, rw, data, size, step);
  *ret_parts = evs__multipart_rewrite_parts(rw);
  evs__multipart_rewrite_free(rw);
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const f[] = {"a", "f", ""};
  static const char *const bds[] = {"B", "--", "a b", "0123456789"};
  struct out a, b, c, d;
  uint64_t pa, pb, pc, pd;
  int ra, rb, rc;
  const char *bd;
  size_t step;
  if (size == 0) return 0;
  bd = bds[data[0] & 3];
  step = 1 + (data[0] >> 2) % 11;
  data++, size--;
  { /* the Content-Type parser on the same bytes */
    char ct[256], out[EVS__MULTIPART_BOUNDARY_MAX + 1];
    size_t n = size < sizeof ct - 1 ? size : sizeof ct - 1;
    int r;
    memcpy(ct, data, n);
    ct[n] = 0;
    r = evs__multipart_boundary(ct, out, sizeof out);
    if (r > 0 && ((size_t)r != strlen(out) || r > EVS__MULTIPART_BOUNDARY_MAX)) __builtin_trap();
  }
  ra = run(bd, NULL, 0, data, size, size ? size : 1, false, &a, &pa);
  if (ra == 0 && (a.len != size || (size && memcmp(a.b, data, size) != 0))) __builtin_trap();
  rb = run(bd, f, 3, data, size, size ? size : 1, false, &b, &pb);
  rc = run(bd, f, 3, data, size, step, false, &c, &pc);
  if (rb != rc || (rb == 0 && (b.len != c.len || b.k != c.k || pb != pc ||
                               (b.len && memcmp(b.b, c.b, b.len) != 0))))
    __builtin_trap();
  if (ra == 0 && rb != 0 && rb != EVS__RW_E_UNSUPPORTED) __builtin_trap();
  if (ra == 0 && pa != pb && rb == 0) __builtin_trap();
  if (rb == 0) {
    struct out e;
    uint64_t pe;
    /* the output is a valid body with the same parts; unselected it passes unchanged */
    if (run(bd, NULL, 0, (const uint8_t *)b.b, b.len, b.len ? b.len : 1, false, &e, &pe) != 0 ||
        pe != pb || e.len != b.len)
      __builtin_trap();
    if (run(bd, f, 3, (const uint8_t *)b.b, b.len, step, true, &d, &pd) != 0 || d.k != b.k ||
        pd != pb || memcmp(d.types, b.types, b.k < 64 ? b.k : 64) != 0)
      __builtin_trap();
    free(d.b);
    free(e.b);
  }
  free(a.b);
  free(b.b);
  free(c.b);
  return 0;
}
