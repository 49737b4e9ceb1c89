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

/* CONNECT routes: no prefix, matched on the target's host; CONNECT requests meet CONNECT
 * routes only, and CONNECT routes nothing else. */
static void test_connect_routes(void **state) {
  (void)state;
  evs__route rt, any, get;
  evs_route bad_prefix = mk("tunnel", NULL, "CONNECT", "/");
  assert_int_equal(evs__route_make(&bad_prefix, &rt), -EINVAL);
  evs_route no_prefix_not_connect = mk("tunnel", NULL, "GET", NULL);
  assert_int_equal(evs__route_make(&no_prefix_not_connect, &rt), -EINVAL);

  evs_route r = mk("tunnel", "*.Example.com", "CONNECT", NULL);
  assert_int_equal(evs__route_make(&r, &rt), 0);
  assert_true(rt.connect);
  char h[256];
  assert_int_equal(evs__route_connect_host("API.example.com:443", h, sizeof h), 15);
  assert_string_equal(h, "api.example.com");
  assert_true(evs__route_matches(&rt, "tunnel", h, "CONNECT", ""));
  assert_false(evs__route_matches(&rt, "relay", h, "CONNECT", ""));
  assert_false(evs__route_matches(&rt, "tunnel", "example.com", "CONNECT", ""));
  /* Not for requests with paths, of any method. */
  assert_false(evs__route_matches(&rt, "tunnel", h, "GET", "/"));
  assert_false(evs__route_matches(&rt, "tunnel", h, "POST", "/x"));

  /* Routes of any method, or another, never see a CONNECT. */
  evs_route ra = mk("tunnel", NULL, NULL, "/");
  evs_route rg = mk("tunnel", NULL, "GET", "/");
  assert_int_equal(evs__route_make(&ra, &any), 0);
  assert_int_equal(evs__route_make(&rg, &get), 0);
  assert_false(evs__route_matches(&any, "tunnel", h, "CONNECT", ""));
  assert_false(evs__route_matches(&get, "tunnel", h, "CONNECT", ""));
  assert_true(evs__route_matches(&any, "tunnel", h, "GET", "/"));
  assert_false(evs__route_same(&rt, &any));

  /* Target hosts: IPv6 literals lose their brackets, ports go, empty or oversized fail. */
  assert_int_equal(evs__route_connect_host("[2001:DB8::1]:8443", h, sizeof h), 11);
  assert_string_equal(h, "2001:db8::1");
  assert_int_equal(evs__route_connect_host("10.0.0.1:443", h, sizeof h), 8);
  assert_string_equal(h, "10.0.0.1");
  assert_int_equal(evs__route_connect_host(":443", h, sizeof h), 0);
  assert_int_equal(evs__route_connect_host("[::1", h, sizeof h), 0);
  assert_int_equal(evs__route_connect_host("abcdef:1", h, 4), 0);
  evs__route_clear(&rt);
  evs__route_clear(&any);
  evs__route_clear(&get);
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
      cmocka_unit_test(test_connect_routes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
