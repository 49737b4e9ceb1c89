/*
 * Unit tests for plugins/relay-common/jsonpath.c: every supported selector form matched against
 * paths (member names and array indices), descendant and wildcard steps, several selectors in
 * one set, dead-subtree reporting, and the error message for each unsupported or invalid form.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "jsonpath.h"
#include "jsonpath_paths.h"

static bool jp_match(const char *sel, const char *const *elems, size_t n) {
  evs__jsonpath *p = paths(sel, NULL);
  uint64_t a = 0, b = 0;
  bool ok;
  evs__jsonpath_start(p, &a);
  for (size_t i = 0; i < n; i++) {
    const char *e = elems[i];
    int m = e[0] == '#' ? evs__jsonpath_step(p, &a, &b, NULL, 0, strtoull(e + 1, NULL, 10))
                        : evs__jsonpath_step(p, &a, &b, e, strlen(e), 0);
    /* the return value agrees with the state */
    assert_int_equal(m == EVS__JSONPATH_MATCH, evs__jsonpath_accepts(p, &b));
    assert_int_equal(m == EVS__JSONPATH_DEAD, b == 0);
    a = b;
  }
  ok = evs__jsonpath_accepts(p, &a);
  evs__jsonpath_free(p);
  return ok;
}

#define PATH(...) ((const char *const[]){__VA_ARGS__}), sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *)

static void test_jsonpath_forms(void **state) {
  (void)state;
  assert_true(jp_match("$.a.b", PATH("a", "b")));
  assert_false(jp_match("$.a.b", PATH("a", "b", "c")));
  assert_false(jp_match("$.a.b", PATH("a")));
  assert_true(jp_match("$['a']", PATH("a")));
  assert_true(jp_match("$[\"a b\"]['c\\'d']", PATH("a b", "c'd")));
  assert_true(jp_match("$..ssn", PATH("ssn")));
  assert_true(jp_match("$..ssn", PATH("x", "#3", "y", "ssn")));
  assert_false(jp_match("$..ssn", PATH("ssn", "x")));
  assert_true(jp_match("$.items[*].card", PATH("items", "#7", "card")));
  assert_true(jp_match("$.items[*].card", PATH("items", "k", "card"))); /* [*]: members too */
  assert_true(jp_match("$.items[0]", PATH("items", "#0")));
  assert_false(jp_match("$.items[0]", PATH("items", "#1")));
  assert_false(jp_match("$.items[0]", PATH("items", "0")));
  assert_true(jp_match("$.*", PATH("q")));
  assert_true(jp_match("$.*", PATH("#2")));
  assert_true(jp_match("$..*", PATH("a", "#1", "b")));
  assert_true(jp_match("$..a..b", PATH("x", "a", "y", "z", "b")));
  assert_true(jp_match("$..[2]", PATH("x", "#2")));
  assert_true(jp_match("$", (const char *const[]){"x"}, 0));
  assert_true(jp_match("$.first-name.@type", PATH("first-name", "@type")));
}

static void test_jsonpath_errors(void **state) {
  static const char *const bad[][2] = {
      {"a.b", "must start with '$'"},
      {"", "must start with '$'"},
      {"$.", "expected a member name"},
      {"$.a b", "expected '.' or '['"},
      {"$[-1]", "negative indices"},
      {"$[1:2]", "slices"},
      {"$.a]", "expected '.' or '['"},
      {"$[1", "expected ']'"},
      {"$[?(@.a)]", "filter"},
      {"$['a','b']", "unions"},
      {"$['a", "unterminated"},
      {"$[01]", "leading zero"},
      {"$[99999999999999999999999]", "too large"},
      {"$[a]", "expected '*', a quoted name or an index"},
      {"$['\\n']", "escapes"},
  };
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    evs__jsonpath *p = NULL;
    char err[256];
    const char *sel = bad[i][0];
    assert_int_equal(evs__jsonpath_compile(&sel, 1, &p, err, sizeof err), -EINVAL);
    assert_null(p);
    if (!strstr(err, bad[i][1])) fail_msg("%s: %s", sel, err);
  }
  {
    const char *sel[2] = {"$.ok", "$x"};
    evs__jsonpath *p = NULL;
    char err[256];
    assert_int_equal(evs__jsonpath_compile(sel, 2, &p, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "selector 1 ($x)"));
  }
}


static void test_jsonpath_set(void **state) {
  evs__jsonpath *p = paths("$.a.b", "$..c");
  uint64_t s0[2], s1[2], s2[2];
  (void)state;
  assert_int_equal(evs__jsonpath_nwords(p), 2);
  evs__jsonpath_start(p, s0);
  assert_false(evs__jsonpath_accepts(p, s0));
  assert_true(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s0, s1, "a", 1, 0));
  assert_true(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s1, s2, "b", 1, 0));
  assert_true(evs__jsonpath_accepts(p, s2));
  assert_true(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s1, s2, "c", 1, 0));
  assert_true(evs__jsonpath_accepts(p, s2));
  assert_true(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s1, s2, NULL, 0, 3)); /* $..c is still alive */
  assert_false(evs__jsonpath_accepts(p, s2));
  evs__jsonpath_free(p);
  p = paths("$.a[2]", NULL); /* no descendant step: subtrees die */
  evs__jsonpath_start(p, s0);
  assert_false(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s0, s1, "b", 1, 0));
  assert_true(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s0, s1, "a", 1, 0));
  assert_false(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s1, s2, NULL, 0, 1));
  assert_true(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s1, s2, NULL, 0, 2));
  assert_true(evs__jsonpath_accepts(p, s2));
  assert_false(EVS__JSONPATH_DEAD != evs__jsonpath_step(p, s2, s0, NULL, 0, 0)); /* below a match: nothing left */
  evs__jsonpath_free(p);
}

static void test_jsonpath_limits(void **state) {
  char sel[200];
  const char *s = sel;
  evs__jsonpath *p = NULL;
  char err[256];
  (void)state;
  strcpy(sel, "$");
  for (int i = 0; i < 63; i++) strcat(sel, ".a");
  assert_int_equal(evs__jsonpath_compile(&s, 1, &p, err, sizeof err), 0);
  evs__jsonpath_free(p);
  p = NULL;
  strcat(sel, ".a");
  assert_int_equal(evs__jsonpath_compile(&s, 1, &p, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "too many steps"));
  assert_int_equal(evs__jsonpath_compile(&s, 0, &p, err, sizeof err), -EINVAL);
  assert_null(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_jsonpath_forms),
      cmocka_unit_test(test_jsonpath_errors),
      cmocka_unit_test(test_jsonpath_set),
      cmocka_unit_test(test_jsonpath_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
