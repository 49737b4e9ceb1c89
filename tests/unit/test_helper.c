/* tests/unit: the pure parts of core/helper.c: the restart backoff and the spec check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "helper.h"

static void test_backoff(void **unused) {
  (void)unused;
  assert_int_equal(evs__helper_backoff(100, 800, 0), 100);
  assert_int_equal(evs__helper_backoff(100, 800, 1), 200);
  assert_int_equal(evs__helper_backoff(100, 800, 2), 400);
  assert_int_equal(evs__helper_backoff(100, 800, 3), 800);
  assert_int_equal(evs__helper_backoff(100, 800, 60), 800);
  assert_int_equal(evs__helper_backoff(100, 800, ~0u), 800); /* no overflow, no endless loop */
  /* Defaults, and a max below min. */
  assert_int_equal(evs__helper_backoff(0, 0, 0), EVS__HELPER_RESTART_MIN_MS);
  assert_int_equal(evs__helper_backoff(0, 0, 40), EVS__HELPER_RESTART_MAX_MS);
  assert_int_equal(evs__helper_backoff(500, 100, 3), 500);
  assert_int_equal(evs__helper_backoff(UINT64_MAX / 2 + 1, UINT64_MAX, 5), UINT64_MAX);
}

static evs_helper_spec good(void) {
  evs_helper_spec s;
  memset(&s, 0, sizeof s);
  s.size = sizeof s;
  s.path = "/bin/true";
  s.sandbox = "worker";
  return s;
}

static void check_bad(evs_helper_spec s, const char *why) {
  char err[160] = "";
  assert_int_equal(evs__helper_spec_check(&s, err, sizeof err), -EINVAL);
  if (!strstr(err, why)) fail_msg("'%s' does not say '%s'", err, why);
}

static void test_spec_check(void **unused) {
  (void)unused;
  char err[160];
  evs_helper_spec s = good();
  assert_int_equal(evs__helper_spec_check(&s, err, sizeof err), 0);
  s.sandbox = "enclave";
  s.kept = "enclave_1-a";
  s.namespaces = EVS_HELPER_NS_USER | EVS_HELPER_NS_NET;
  s.namespaces_optional = EVS_HELPER_NS_USER;
  assert_int_equal(evs__helper_spec_check(&s, err, sizeof err), 0);
  assert_int_equal(evs__helper_spec_check(NULL, err, sizeof err), -EINVAL);

  s = good(); s.size = offsetof(evs_helper_spec, sandbox); check_bad(s, "shorter");
  s = good(); s.path = "bin/true"; check_bad(s, "absolute");
  s = good(); s.path = NULL; check_bad(s, "absolute");
  s = good(); s.sandbox = NULL; check_bad(s, "sandbox must name");
  s = good(); s.sandbox = "none"; check_bad(s, "unknown sandbox policy 'none'");
  const char *empty[] = {NULL};
  s = good(); s.argv = empty; check_bad(s, "argv");
  s = good(); s.fd = 2; check_bad(s, "fd");
  s = good(); s.flags = 1u << 7; check_bad(s, "flags");
  s = good(); s.namespaces = 1u << 9; check_bad(s, "namespaces");
  s = good(); s.namespaces_optional = EVS_HELPER_NS_PID; check_bad(s, "namespaces_optional");
  s = good(); s.restart_min_ms = 5000; s.restart_max_ms = 100; check_bad(s, "restart_min_ms");
  s = good(); s.kept = "Upper"; check_bad(s, "kept");
  s = good(); s.kept = ""; check_bad(s, "kept");
  s = good(); s.kept = "a123456789a123456789a123456789a1234567890"; check_bad(s, "kept");
  /* A spec from an older minor (shorter) reads as zeros past its size. */
  s = good(); s.size = offsetof(evs_helper_spec, kept); s.kept = "Bad!";
  assert_int_equal(evs__helper_spec_check(&s, err, sizeof err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backoff),
      cmocka_unit_test(test_spec_check),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
