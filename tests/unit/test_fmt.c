/* Unit tests for lib/fmt.h: each appender writes what snprintf would, checked against it at the
 * edges (zero, limits, signs, padding). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fmt.h"

static void test_decimal(void **state) {
  (void)state;
  static const uint64_t u[] = {0, 1, 9, 10, 99, 100, 65535, 4294967296u, UINT64_MAX};
  for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) {
    char got[32], want[32];
    *evs__fmt_u64(got, u[i]) = '\0';
    snprintf(want, sizeof want, "%" PRIu64, u[i]);
    assert_string_equal(got, want);
  }
  static const int64_t s[] = {0, -1, 1, -200, 404, INT64_MAX, INT64_MIN};
  for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
    char got[32], want[32];
    *evs__fmt_i64(got, s[i]) = '\0';
    snprintf(want, sizeof want, "%" PRId64, s[i]);
    assert_string_equal(got, want);
  }
}

static void test_hex(void **state) {
  (void)state;
  static const uint64_t v[] = {0, 1, 15, 16, 0xabcdef, 0xffffffffu, 0x100000000u, UINT64_MAX};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    char got[32], want[32];
    *evs__fmt_hex(got, v[i], 1) = '\0';
    snprintf(want, sizeof want, "%" PRIx64, v[i]);
    assert_string_equal(got, want);
    *evs__fmt_hex(got, v[i], 8) = '\0';
    snprintf(want, sizeof want, "%08" PRIx64, v[i]);
    assert_string_equal(got, want);
  }
}

static void test_strings(void **state) {
  (void)state;
  char buf[64];
  char *p = EVS__FMT_LIT(buf, "Host: ");
  p = evs__fmt_str(p, "example.com");
  p = evs__fmt_mem(p, ":443xyz", 4);
  *p = '\0';
  assert_string_equal(buf, "Host: example.com:443");
  assert_ptr_equal(evs__fmt_str(buf, ""), buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decimal),
      cmocka_unit_test(test_hex),
      cmocka_unit_test(test_strings),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
