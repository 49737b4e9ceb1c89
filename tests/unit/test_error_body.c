/*
 * Unit tests for core/error_body.c, the one builder of the JSON error body: for every status the
 * server knows and a set of codes and details (plain, quotes, backslashes, control characters,
 * multi-byte UTF-8), the bytes equal jansson's compact dump of the documented object (what
 * respond_error sent before there was one builder); invalid UTF-8 becomes U+FFFD; a short buffer
 * is cut and NUL-terminated and the full length returned.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "error_body.h"
#include "request.h"

static char *reference(int status, const char *code, const char *detail) {
  json_t *o = json_pack("{s:i,s:s,s:s,s:s,s:s,s:s}", "status", status, "code", code, "title",
                        evs__status_text(status), "detail", detail, "message", detail,
                        "evervault-error-code", code);
  char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  return s;
}

static void test_same_bytes_as_jansson(void **state) {
  (void)state;
  static const int statuses[] = {400, 401, 403, 404, 405, 408, 411, 413, 415, 421, 422, 429,
                                 431, 500, 501, 502, 503, 504, 505, 599};
  static const char *const codes[] = {"bad-request", "relay-not-found", "service-unavailable"};
  static const char *const details[] = {
      "",
      "The request exceeds the 25 MB limit for encryption",
      "a \"quoted\" word and a back\\slash / slash",
      "tab\there, newline\nthere, cr\r, bs\b, ff\f, bell\x07, esc\x1b, unit\x1f, del\x7f",
      "UTF-8: caf\xc3\xa9, \xe2\x82\xac, \xf0\x9f\x94\x92",
  };
  for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
    for (size_t j = 0; j < sizeof codes / sizeof codes[0]; j++)
      for (size_t k = 0; k < sizeof details / sizeof details[0]; k++) {
        char *want = reference(statuses[i], codes[j], details[k]);
        assert_non_null(want);
        char got[1024];
        size_t n = evs__error_body(got, sizeof got, statuses[i], codes[j], details[k]);
        assert_int_equal(n, strlen(want));
        if (strcmp(got, want) != 0) fail_msg("\n got: %s\nwant: %s", got, want);
        free(want);
      }
}

static void test_invalid_utf8_and_short_buffer(void **state) {
  (void)state;
  char got[256];
  evs__error_body(got, sizeof got, 400, "bad-request", "x\xff\xc3(\xed\xa0\x80y");
  assert_non_null(strstr(got, "\"detail\":\"x\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd"
                              "\xef\xbf\xbdy\""));
  json_error_t e;
  json_t *o = json_loads(got, 0, &e);
  assert_non_null(o); /* valid JSON */
  json_decref(o);
  size_t full = evs__error_body(NULL, 0, 404, "relay-not-found", "No route");
  char small[16];
  assert_int_equal(evs__error_body(small, sizeof small, 404, "relay-not-found", "No route"), full);
  assert_int_equal(strlen(small), sizeof small - 1);
  assert_memory_equal(small, "{\"status\":404,\"", 15);
  evs__error_body(got, sizeof got, 500, "internal-server-error", NULL);
  assert_non_null(strstr(got, "\"detail\":\"\",\"message\":\"\""));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_bytes_as_jansson),
      cmocka_unit_test(test_invalid_utf8_and_short_buffer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
