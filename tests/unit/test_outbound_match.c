/*
 * Unit tests for plugins/relay-outbound/outbound_match.c: destination domains (every form of
 * the documented syntax, and what is refused, with its reason), CONNECT targets (names, IPv4,
 * IPv6 in brackets, ports) and the matcher's order (most specific first).
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbound_match.h"

static evs__ob_pattern parse_ok(const char *s) {
  evs__ob_pattern p;
  const char *why = NULL;
  if (evs__ob_pattern_parse(s, strlen(s), &p, &why) != 0) fail_msg("%s: refused: %s", s, why);
  return p;
}

static void parse_bad(const char *s, const char *why_part) {
  evs__ob_pattern p;
  const char *why = NULL;
  int rc = evs__ob_pattern_parse(s, strlen(s), &p, &why);
  if (rc != -EINVAL) fail_msg("%s: accepted", s);
  assert_non_null(why);
  if (why_part && !strstr(why, why_part)) fail_msg("%s: reason '%s' lacks '%s'", s, why, why_part);
}

static void test_patterns(void **state) {
  evs__ob_pattern p = parse_ok("API.Example.com");
  assert_int_equal(p.host_kind, EVS__OB_HOST_EXACT);
  assert_string_equal(p.host, "api.example.com");
  assert_int_equal(p.port, 0);
  assert_int_equal(p.path_kind, EVS__OB_PATH_ANY);

  p = parse_ok("*.example.com");
  assert_int_equal(p.host_kind, EVS__OB_HOST_SUFFIX);
  assert_string_equal(p.host, ".example.com");
  p = parse_ok("*example.com");
  assert_string_equal(p.host, "example.com");

  p = parse_ok("api.example.com:8443/v1/pay");
  assert_int_equal(p.port, 8443);
  assert_int_equal(p.path_kind, EVS__OB_PATH_EXACT);
  assert_string_equal(p.path, "/v1/pay");
  p = parse_ok("api.example.com/v1/*");
  assert_int_equal(p.path_kind, EVS__OB_PATH_PREFIX);
  assert_string_equal(p.path, "/v1/");
  p = parse_ok("127.0.0.1/evserver-interop-echo/*"); /* the SDK interop test's domain */
  assert_string_equal(p.host, "127.0.0.1");
  p = parse_ok("[2001:DB8:0::1]:443");
  assert_string_equal(p.host, "[2001:db8::1]");
  assert_int_equal(p.port, 443);
  p = parse_ok("example.com.");
  assert_string_equal(p.host, "example.com");

  parse_bad("", "empty");
  parse_bad("https://api.example.com", "scheme");
  parse_bad("*", "every host");
  parse_bad("api.*.com", "'*'");
  parse_bad("api.example.com/v1/*/x", "'*'");
  parse_bad("api.example.com/a?b", "query");
  parse_bad("api example.com", "space");
  parse_bad("api..example.com", "empty label");
  parse_bad(".example.com", "empty label");
  parse_bad("api.example.com:0", "port");
  parse_bad("api.example.com:65536", "port");
  parse_bad("api.example.com:", "port");
  parse_bad("api.example.com:+80", "port");
  /* A bare IPv6 address is the address alone (Node's options.hostname spelling); the same
   * pattern as in brackets. A port needs the brackets. */
  p = parse_ok("2001:DB8::1");
  assert_string_equal(p.host, "[2001:db8::1]");
  assert_int_equal(p.port, 0);
  p = parse_ok("::1/v1/*");
  assert_string_equal(p.host, "[::1]");
  assert_int_equal(p.path_kind, EVS__OB_PATH_PREFIX);
  assert_string_equal(p.path, "/v1/");
  parse_bad("2001:db8::g", "brackets");
  parse_bad("*::1", "suffix");
  parse_bad("[2001:db8::g]", "IPv6");
  parse_bad("*[::1]", "suffix");
  parse_bad("127.1", "IPv4");
  parse_bad("0177.0.0.1", "IPv4");
  parse_bad("exa$mple.com", "character");
  parse_bad("caf\xc3\xa9.example", "non-ASCII");
  char longlabel[80];
  memset(longlabel, 'a', 64);
  strcpy(longlabel + 64, ".com");
  parse_bad(longlabel, "63");
}

static void authority_ok(const char *s, const char *host, int port) {
  char h[300];
  int pt = -1;
  int rc = evs__ob_authority_parse(s, strlen(s), h, sizeof h, &pt);
  if (rc != 0) fail_msg("%s: refused (%d)", s, rc);
  assert_string_equal(h, host);
  assert_int_equal(pt, port);
}

static void authority_bad(const char *s) {
  char h[300];
  int pt;
  if (evs__ob_authority_parse(s, strlen(s), h, sizeof h, &pt) == 0) fail_msg("%s: accepted", s);
}

static void test_authority(void **state) {
  authority_ok("API.example.com:443", "api.example.com", 443);
  authority_ok("127.0.0.1:9999", "127.0.0.1", 9999);
  authority_ok("[::1]:8443", "[::1]", 8443);
  authority_ok("[2001:DB8:0:0::1]:1", "[2001:db8::1]", 1);
  authority_ok("example.com.:65535", "example.com", 65535);
  authority_bad("api.example.com");      /* the port is required */
  authority_bad("api.example.com:");
  authority_bad(":443");
  authority_bad("::1:443");              /* IPv6 without brackets */
  authority_bad("[::1]");
  authority_bad("[::1]443");
  authority_bad("a.com:443:1");
  authority_bad("user@a.com:443");
  authority_bad("a.com/x:443");
  authority_bad("*.a.com:443");
  authority_bad("a.com:99999");
  authority_bad("a.com:0");
  authority_bad("a b.com:443");
  authority_bad("127.1:443");
  authority_bad("");
  char h[8];
  int pt;
  assert_int_equal(evs__ob_authority_parse("abcdefghijkl.com:1", 18, h, sizeof h, &pt), -ENAMETOOLONG);
}

static int match(const evs__ob_matcher *m, const char *host, int port, const char *path) {
  return evs__ob_match(m, host, port, path, path ? strlen(path) : 0);
}

static void test_matcher_order(void **state) {
  const char *doms[] = {
      "*example.com",             /* 0 */
      "*.example.com",            /* 1 */
      "api.example.com",          /* 2 */
      "api.example.com/v1/*",     /* 3 */
      "api.example.com/v1/pay",   /* 4 */
      "api.example.com:8443",     /* 5 */
      "api.example.com/v1/p*",    /* 6 */
      "[::1]",                    /* 7 */
  };
  size_t n = sizeof doms / sizeof doms[0];
  evs__ob_pattern pats[8];
  for (size_t i = 0; i < n; i++) pats[i] = parse_ok(doms[i]);
  evs__ob_matcher *m = evs__ob_matcher_new(pats, n);
  assert_non_null(m);
#define M(host, port, path) match(m, host, port, path)
  assert_int_equal(M("api.example.com", 443, "/v1/pay"), 4);
  assert_int_equal(M("api.example.com", 443, "/v1/pat"), 6);
  assert_int_equal(M("api.example.com", 443, "/v1/x"), 3);
  assert_int_equal(M("api.example.com", 443, "/v2"), 2);
  assert_int_equal(M("api.example.com", 8443, "/v1/pay"), 5); /* a port is more specific */
  assert_int_equal(M("api.example.com", 443, NULL), 4);       /* at CONNECT: any of the host's */
  assert_int_equal(M("www.example.com", 443, "/"), 1);
  assert_int_equal(M("example.com", 443, "/"), 0);
  assert_int_equal(M("badexample.com", 443, "/"), 0);         /* the documented suffix rule */
  assert_int_equal(M("example.org", 443, "/"), -1);
  assert_int_equal(M("[::1]", 443, "/"), 7);
  assert_int_equal(M("::1", 443, "/"), -1);
#undef M
  evs__ob_matcher_free(m);

  /* A path-only destination does not take the host's other paths. */
  evs__ob_pattern one = parse_ok("pay.example/v1/charge");
  m = evs__ob_matcher_new(&one, 1);
  assert_int_equal(evs__ob_match(m, "pay.example", 443, "/v1/charge", 10), 0);
  assert_int_equal(evs__ob_match(m, "pay.example", 443, "/v1/charge/x", 12), -1);
  assert_int_equal(evs__ob_match(m, "pay.example", 443, "/v1/charg", 9), -1);
  assert_int_equal(evs__ob_match(m, "pay.example", 443, NULL, 0), 0);
  evs__ob_matcher_free(m);

  m = evs__ob_matcher_new(NULL, 0);
  assert_non_null(m);
  assert_int_equal(evs__ob_match(m, "a.com", 443, NULL, 0), -1);
  evs__ob_matcher_free(m);
  evs__ob_matcher_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_patterns),
      cmocka_unit_test(test_authority),
      cmocka_unit_test(test_matcher_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
