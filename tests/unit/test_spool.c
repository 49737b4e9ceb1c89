/*
 * test_spool.c: the relay's body spool (plugins/relay-common/spool.c): bytes and holes in order,
 * holes filled in any order, read back in any piece size, in memory and spilled to a file, and
 * the same spool reset and used again for the next body.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spool.h"

/* Reads the whole spool back in pieces of 1..piece bytes (piece 0: all at once). */
static char *read_back(relay_spool *s, size_t piece, size_t *ret_len) {
  size_t total = (size_t)relay_spool_total(s), len = 0, got;
  char *out = malloc(total + 1);
  assert_non_null(out);
  relay_spool_rewind(s);
  do {
    size_t cap = piece ? 1 + len % piece : total + 1;
    if (cap > total + 1 - len) cap = total + 1 - len;
    assert_int_equal(relay_spool_read(s, (uint8_t *)out + len, cap, &got), 0);
    len += got;
  } while (got > 0);
  assert_int_equal(len, total);
  out[len] = 0;
  *ret_len = len;
  return out;
}

static void check(relay_spool *s, const char *want) {
  for (size_t piece = 0; piece < 5; piece++) {
    size_t len;
    char *got = read_back(s, piece, &len);
    assert_int_equal(len, strlen(want));
    assert_string_equal(got, want);
    free(got);
  }
}

/* A body of n holes between the bytes "<i>", filled last to first with "[i]". */
static void body(relay_spool *s, int n, char *want, size_t cap) {
  size_t holes[512], w = 0;
  assert_true(n <= 512);
  for (int i = 0; i < n; i++) {
    char b[16];
    int bl = snprintf(b, sizeof b, "<%d>", i);
    assert_int_equal(relay_spool_write(s, b, (size_t)bl), 0);
    assert_int_equal(relay_spool_hole(s, &holes[i]), 0);
  }
  assert_int_equal(relay_spool_write(s, "end", 3), 0);
  for (int i = n - 1; i >= 0; i--) {
    char b[16];
    int bl = snprintf(b, sizeof b, "[%d]", i);
    assert_int_equal(relay_spool_fill(s, holes[i], b, (size_t)bl), 0);
  }
  for (int i = 0; i < n; i++) w += (size_t)snprintf(want + w, cap - w, "<%d>[%d]", i, i);
  snprintf(want + w, cap - w, "end");
}

static void test_holes_in_any_order(void **state) {
  relay_spool s;
  size_t h0, h1, h2;
  (void)state;
  relay_spool_init(&s, NULL, 1 << 20);
  assert_int_equal(relay_spool_write(&s, "ab", 2), 0);
  assert_int_equal(relay_spool_hole(&s, &h0), 0);
  assert_int_equal(relay_spool_write(&s, "cd", 2), 0);
  assert_int_equal(relay_spool_hole(&s, &h1), 0);
  assert_int_equal(relay_spool_hole(&s, &h2), 0); /* two holes side by side */
  assert_int_equal(relay_spool_write(&s, "e", 1), 0);
  assert_int_equal(relay_spool_fill(&s, h1, "YY", 2), 0);
  assert_int_equal(relay_spool_fill(&s, h2, "", 0), 0);
  assert_int_equal(relay_spool_fill(&s, h0, "X", 1), 0);
  check(&s, "abXcdYYe");
  /* a hole is filled once; there is no hole past the last */
  assert_int_equal(relay_spool_fill(&s, h1, "Z", 1), -EINVAL);
  assert_int_equal(relay_spool_fill(&s, 3, "Z", 1), -EINVAL);
  check(&s, "abXcdYYe");
  relay_spool_done(&s);
}

static void test_many_holes(void **state) {
  static char want[16384];
  static const struct {
    size_t mem_max;
    int holes;
    int spilled;
  } runs[] = {
      {1 << 20, 500, 0}, /* the holes' buffer grows many times over */
      {64, 200, 1},      /* most of the body goes to the temporary file */
  };
  (void)state;
  for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
    relay_spool s;
    relay_spool_init(&s, NULL, runs[i].mem_max);
    body(&s, runs[i].holes, want, sizeof want);
    assert_int_equal(s.fd >= 0, runs[i].spilled);
    check(&s, want);
    relay_spool_done(&s);
  }
}

static void test_reset_and_reused(void **state) {
  static char want[16384];
  relay_spool s;
  (void)state;
  relay_spool_init(&s, NULL, 256);
  for (int round = 0; round < 6; round++) {
    int n = round % 3 == 0 ? 300 : round; /* large (spilled), then small, bodies */
    body(&s, n, want, sizeof want);
    check(&s, want);
    relay_spool_reset(&s);
    assert_int_equal(relay_spool_total(&s), 0);
    assert_int_equal(s.fd, -1);
    check(&s, "");
  }
  relay_spool_done(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_holes_in_any_order),
      cmocka_unit_test(test_many_holes),
      cmocka_unit_test(test_reset_and_reused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
