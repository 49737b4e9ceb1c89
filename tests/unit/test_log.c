/* Unit tests for core/log.c: every line is one valid JSON object, escapes are right, levels
 * filter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* Capture stderr into a pipe around fn. */
static char *capture(void (*fn)(void)) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  int saved = dup(2);
  dup2(p[1], 2);
  fn();
  dup2(saved, 2);
  close(saved);
  close(p[1]);
  static char buf[65536];
  ssize_t n = read(p[0], buf, sizeof buf - 1);
  close(p[0]);
  buf[n > 0 ? n : 0] = '\0';
  return buf;
}

static void emit_tricky(void) {
  evs__log_set_level(EVS_LOG_INFO);
  evs__log(EVS_LOG_INFO, "EVS-9001", "relay-inbound", "abc123", "quote \" backslash \\ nl \n tab \t ctl \x01 end");
  evs__log(EVS_LOG_DEBUG, "EVS-9002", NULL, NULL, "filtered out");
  evs__log(EVS_LOG_ERROR, "EVS-9003", NULL, NULL, "%s", "second");
}

static void test_lines_are_json(void **state) {
  (void)state;
  char *out = capture(emit_tricky);
  char *save = NULL;
  int lines = 0;
  for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    assert_non_null(j);
    lines++;
    if (lines == 1) {
      assert_string_equal(json_string_value(json_object_get(j, "id")), "EVS-9001");
      assert_string_equal(json_string_value(json_object_get(j, "plugin")), "relay-inbound");
      assert_string_equal(json_string_value(json_object_get(j, "request_id")), "abc123");
      assert_string_equal(json_string_value(json_object_get(j, "msg")),
                          "quote \" backslash \\ nl \n tab \t ctl \x01 end");
      assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    } else {
      assert_string_equal(json_string_value(json_object_get(j, "id")), "EVS-9003");
    }
    json_decref(j);
  }
  assert_int_equal(lines, 2); /* the debug line was filtered */
}

static void test_escape_bounds(void **state) {
  (void)state;
  char out[8];
  size_t n = evs__json_escape(out, sizeof out, "\x01\x02\x03", 3);
  assert_true(n < sizeof out);
  assert_int_equal(out[n], '\0');
  assert_string_equal(out, "\\u0001"); /* a partial escape is never emitted */
  evs_log_level l;
  assert_int_equal(evs__log_level_from_string("DEBUG", &l), 0);
  assert_int_equal(l, EVS_LOG_DEBUG);
  assert_int_not_equal(evs__log_level_from_string("loud", &l), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lines_are_json),
      cmocka_unit_test(test_escape_bounds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
