/*
 * libFuzzer target for plugins/relay-common/form_rewrite.c. Besides memory errors it checks:
 * without selections a body is accepted iff the output equals the input; with selections a body
 * accepted without them is accepted too, the result does not depend on how the body is split,
 * and the output re-parses with the same pairs, names and selected pairs, whose decoded values
 * are exactly the replacements the transform returned.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/relay-common \
 *     plugins/relay-common/form_rewrite.c plugins/relay-common/json_rewrite.c \
 *     plugins/relay-common/rewriter.c plugins/relay-common/rw_base.c \
 *     plugins/relay-common/jsonpath.c fuzz/fuzz_form_rewrite.c -o /tmp/fuzz_form_rewrite
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "form_rewrite.h"
#include "rewrite_fuzz.h"

/* Not ev:-shaped ('#'), so an unselected marker is not refused; needs encoding throughout. */
static int marker(char *b, size_t cap, unsigned k) {
  return snprintf(b, cap, "ev:R /+=&%%:#%u:$", k);
}

static int out_transform(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                         size_t *ret_len) {
  struct out *o = ud;
  int ml = marker(o->marker, sizeof o->marker, o->k++);
  if (v[n] != 0 || type != EVS__RW_STRING) __builtin_trap();
  if (o->check && ((size_t)ml != n || memcmp(v, o->marker, n) != 0)) __builtin_trap();
  *ret = o->marker;
  *ret_len = (size_t)ml;
  return 0;
}

static int run(const char *const *f, size_t nf, const uint8_t *data, size_t size, size_t step,
               bool check, struct out *o, uint64_t *ret_pairs) {
  evs__form_rewrite *rw = NULL;
  int r;
  memset(o, 0, sizeof *o);
  o->check = check;
  if (evs__form_rewrite_new(f, nf, NULL, out_emit, out_transform, o, &rw) != 0) abort();
  r = out_feed(&evs__form_rewriter, rw, data, size, step);
  *ret_pairs = evs__form_rewrite_pairs(rw);
  evs__form_rewrite_free(rw);
  return r;
}

/* The raw names of the pairs (up to the first '='), joined with '&': unchanged by a rewrite. */
static size_t names(const char *s, size_t n, char *out) {
  size_t o = 0;
  bool in_name = true;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '&') in_name = true;
    else if (s[i] == '=') in_name = false;
    if (in_name) out[o++] = s[i];
  }
  return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const f[] = {"a", "b c", ""};
  struct out a, b, c, d;
  uint64_t pa, pb, pc, pd;
  int ra, rb, rc;
  size_t step = size ? 1 + data[0] % 7 : 1;
  ra = run(NULL, 0, data, size, size ? size : 1, false, &a, &pa);
  if (ra == 0 && (a.len != size || (size && memcmp(a.b, data, size) != 0))) __builtin_trap();
  rb = run(f, 3, data, size, size ? size : 1, false, &b, &pb);
  rc = run(f, 3, data, size, step, false, &c, &pc);
  if (rb != rc || (rb == 0 && (b.len != c.len || b.k != c.k || pb != pc ||
                               (b.len && memcmp(b.b, c.b, b.len) != 0))))
    __builtin_trap();
  if (ra == 0 && rb != 0) __builtin_trap();
  if (rb == 0) {
    char *n1 = malloc(size + 1), *n2 = malloc(b.len + 1);
    size_t l1, l2;
    if (!n1 || !n2) abort();
    if (run(f, 3, (const uint8_t *)b.b, b.len, b.len ? b.len : 1, true, &d, &pd) != 0 ||
        d.k != b.k || pd != pb)
      __builtin_trap();
    l1 = names((const char *)data, size, n1);
    l2 = names(b.b, b.len, n2);
    if (l1 != l2 || (l1 && memcmp(n1, n2, l1) != 0)) __builtin_trap();
    free(n1);
    free(n2);
    free(d.b);
  }
  free(a.b);
  free(b.b);
  free(c.b);
  return 0;
}
