/*
 * jsonpath_paths.h: compiles one or two selectors for a unit test (test_jsonpath.c and the JSON
 * and XML rewriters' tests through rewrite_harness.h). Include it after cmocka.h.
 */
#ifndef EVS_TEST_JSONPATH_PATHS_H
#define EVS_TEST_JSONPATH_PATHS_H

#include "jsonpath.h"

/* Selectors a and b (b may be NULL), compiled, or the test fails with the compiler's message. */
static inline evs__jsonpath *paths(const char *a, const char *b) {
  const char *sel[2] = {a, b};
  evs__jsonpath *p = NULL;
  char err[256];
  int r = evs__jsonpath_compile(sel, b ? 2 : 1, &p, err, sizeof err);
  if (r != 0) fail_msg("%s", err);
  return p;
}

#endif
