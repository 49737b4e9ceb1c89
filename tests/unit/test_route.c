/* Unit tests for core/route.c: which routes are accepted, how they match (host patterns, path
 * prefixes at segment boundaries, methods, roles) and the order the host tries them in. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "worker.h"

static int h1(void *s, evs_request *r) { (void)s; (void)r; return EVS_HANDLED; }

static evs_route mk(const char *role, const char *host, const char *method, const char *prefix) {
  evs_route r = {sizeof r, role, host, method, prefix, h1};
  return r;
}

static void test_make_refuses_malformed(void **state) {
  (void)state;
  evs__route rt;
  const evs_route bad[] = {
      mk("", NULL, NULL, "/"), mk("Api", NULL, NULL, "/"), mk("a b", NULL, NULL, "/"),
      mk("abcdefghijklmnopqrstuvwxyz0123456", NULL, NULL, "/"), mk(NULL, NULL, NULL, "/"),
      mk("api", NULL, NULL, "x"), mk("api", NULL, NULL, NULL), mk("api", NULL, NULL, ""),
      mk("api", "", NULL, "/"), mk("api", "*", NULL, "/"), mk("api", "*.", NULL, "/"),
      mk("api", "a*.b", NULL, "/"), mk("api", ".a", NULL, "/"), mk("api", "a b", NULL, "/"),
      mk("api", NULL, "", "/"), mk("api", NULL, "get", "/"), mk("api", NULL, "G T", "/"),
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(evs__route_make(&bad[i], &rt), -EINVAL);
  evs_route nofn = mk("api", NULL, NULL, "/");
  nofn.handler = NULL;
  assert_int_equal(evs__route_make(&nofn, &rt), -EINVAL);
  evs_route small = mk("api", NULL, NULL, "/");
  small.size = offsetof(evs_route, handler);
  assert_int_equal(evs__route_make(&small, &rt), -EINVAL);
}

static void test_matching(void **state) {
  (void)state;
  evs__route rt;
  evs_route r = mk("relay", "Shop.Example", "POST", "/apps/");
  assert_int_equal(evs__route_make(&r, &rt), 0);
  assert_true(evs__route_matches(&rt, "relay", "shop.example", "POST", "/apps"));
  assert_true(evs__route_matches(&rt, "relay", "shop.example", "POST", "/apps/x/y"));
  assert_false(evs__route_matches(&rt, "relay", "shop.example", "POST", "/appsx"));
  assert_false(evs__route_matches(&rt, "relay", "shop.example", "POST", "/ap"));
  assert_false(evs__route_matches(&rt, "relay", "shop.example", "GET", "/apps"));
  assert_false(evs__route_matches(&rt, "relay", "shop.example", "HEAD", "/apps"));
  assert_false(evs__route_matches(&rt, "api", "shop.example", "POST", "/apps"));
  assert_false(evs__route_matches(&rt, "relay", "x.shop.example", "POST", "/apps"));
  assert_false(evs__route_matches(&rt, "relay", "", "POST", "/apps"));
  evs__route_clear(&rt);

  r = mk("relay", "shop.example", "GET", "/");
  assert_int_equal(evs__route_make(&r, &rt), 0);
  assert_true(evs__route_matches(&rt, "relay", "shop.example", "HEAD", "/")); /* GET serves HEAD */
  assert_false(evs__route_matches(&rt, "relay", "shop.example", "POST", "/"));
  evs__route_clear(&rt);

  r = mk("relay", "*.example", NULL, "/");
  assert_int_equal(evs__route_make(&r, &rt), 0);
  assert_true(evs__route_matches(&rt, "relay", "a.example", "GET", "/"));
  assert_true(evs__route_matches(&rt, "relay", "a.b.example", "DELETE", "/x"));
  assert_false(evs__route_matches(&rt, "relay", "example", "GET", "/"));
  assert_false(evs__route_matches(&rt, "relay", "aexample", "GET", "/"));
  char buf[64];
  assert_string_equal(evs__route_host_text(&rt, buf, sizeof buf), "*.example");
  evs__route_clear(&rt);

  r = mk("api", NULL, NULL, "/");
  assert_int_equal(evs__route_make(&r, &rt), 0);
  assert_true(evs__route_matches(&rt, "api", "", "GET", "//anything"));
  assert_string_equal(evs__route_host_text(&rt, buf, sizeof buf), "*");
  evs__route_clear(&rt);
  evs__route_clear(NULL);
}

static void test_order_most_specific_first(void **state) {
  (void)state;
  /* Registered least specific first; expected position in the table after each. */
  const evs_route in[] = {
      mk("relay", NULL, NULL, "/"),              /* 7 */
      mk("relay", NULL, NULL, "/long/prefix"),   /* 6 */
      mk("relay", "*.example", NULL, "/"),       /* 5 */
      mk("relay", "*.b.example", NULL, "/"),     /* 4 */
      mk("relay", "a.example", NULL, "/"),       /* 2 */
      mk("relay", "a.example", NULL, "/x"),      /* 1 */
      mk("relay", "a.example", "GET", "/x"),     /* 0 */
      mk("relay", "z.example", NULL, "/"),       /* 3: as specific as a.example /, later */
  };
  const size_t want[] = {7, 6, 5, 4, 2, 1, 0, 3};
  evs__route *table = NULL;
  size_t n = 0;
  for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
    evs__route rt;
    assert_int_equal(evs__route_make(&in[i], &rt), 0);
    rt.seq = i;
    assert_int_equal(evs__route_insert(&table, &n, &rt), 0);
  }
  for (size_t i = 0; i < n; i++) assert_int_equal(table[want[i]].seq, i);
  evs__route a, b;
  evs_route r1 = mk("relay", "A.example", NULL, "/x/"), r2 = mk("relay", "a.example", NULL, "/x");
  assert_int_equal(evs__route_make(&r1, &a), 0);
  assert_int_equal(evs__route_make(&r2, &b), 0);
  assert_true(evs__route_same(&a, &b));
  assert_false(evs__route_same(&a, &table[0])); /* GET */
  evs__route_clear(&a);
  evs__route_clear(&b);
  for (size_t i = 0; i < n; i++) evs__route_clear(&table[i]);
  free(table);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_make_refuses_malformed),
      cmocka_unit_test(test_matching),
      cmocka_unit_test(test_order_most_specific_first),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
