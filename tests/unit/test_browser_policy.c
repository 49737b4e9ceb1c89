/*
 * Unit tests for plugins/browser/policy.c: allowed_origins, origins, the Inputs page's query
 * and Accept-Encoding.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "browser_policy.h"

static void test_policy_parse(void **state) {
  (void)state;
  evs_bp_policy p;
  char err[256];
  assert_int_equal(evs__bp_policy_parse("app_0123456789ab=https://Shop.Example:443,"
                                        "http://127.0.0.1:8082;  app_ba9876543210=http://[::1]:80",
                                        &p, err, sizeof err), 0);
  assert_int_equal(p.napps, 2);
  const evs_bp_app *a = evs__bp_policy_app(&p, "app_0123456789ab");
  assert_non_null(a);
  assert_int_equal(a->norigins, 2);
  assert_string_equal(a->origins[0], "https://shop.example");
  assert_string_equal(a->origins[1], "http://127.0.0.1:8082");
  assert_true(evs__bp_origin_allowed(a, "http://127.0.0.1:8082"));
  assert_false(evs__bp_origin_allowed(a, "http://127.0.0.1:8083"));
  assert_string_equal(evs__bp_policy_app(&p, "app_ba9876543210")->origins[0], "http://[::1]");
  assert_null(evs__bp_policy_app(&p, "app_000000000000"));
  evs__bp_policy_free(&p);
  assert_int_equal(evs__bp_policy_parse("", &p, err, sizeof err), 0);
  assert_int_equal(p.napps, 0);
  const char *bad[] = {"app_0123456789ab", "app_0123456789ab=", "app_0123=https://a",
                       "app_0123456789ab=https://a/path", "app_0123456789ab=*",
                       "app_0123456789ab=https://a, ", "app_0123456789ab=ftp://a",
                       "app_0123456789ab=https://u@a", "app_0123456789ab=https://a:0",
                       "app_0123456789ab=https://a,",
                       "app_0123456789ab=https://a app_0123456789ab=https://b"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(evs__bp_policy_parse(bad[i], &p, err, sizeof err), -1);
    assert_int_equal(p.napps, 0);
    assert_true(strlen(err) > 0);
  }
}

static void test_query(void **state) {
  (void)state;
  char out[64];
  assert_int_equal(evs__bp_query_get("app=app_1&origin=http%3A%2F%2Fa%3A1", "origin", out,
                                     sizeof out), 10);
  assert_string_equal(out, "http://a:1");
  assert_int_equal(evs__bp_query_get("app=a&app=b", "app", out, sizeof out), -1);
  assert_int_equal(evs__bp_query_get("x=1", "app", out, sizeof out), -1);
  assert_int_equal(evs__bp_query_get("app=%zz", "app", out, sizeof out), -2);
  assert_int_equal(evs__bp_query_get("app=%00", "app", out, sizeof out), -2);
  assert_int_equal(evs__bp_query_get("apps=1&app=", "app", out, sizeof out), 0);
}

static void test_gzip(void **state) {
  (void)state;
  assert_true(evs__bp_accepts_gzip("gzip, deflate, br", 17));
  assert_true(evs__bp_accepts_gzip("br;q=1, *;q=0.5", 15));
  assert_false(evs__bp_accepts_gzip("gzip;q=0", 8));
  assert_false(evs__bp_accepts_gzip("br", 2));
  assert_false(evs__bp_accepts_gzip("", 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_policy_parse),
      cmocka_unit_test(test_query),
      cmocka_unit_test(test_gzip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
