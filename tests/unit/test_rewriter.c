/*
 * Unit tests for plugins/relay-common/rewriter.{h,c}: the choice of a rewriter by Content-Type,
 * the relay's answer to every rewriter error (and that the codes are distinct), and each format
 * driven through its operations table alone, as relay_encrypt.c drives it: selection, the
 * replacement as a transform returns it (place_returned) and as a caller fills a hole (place),
 * and the multipart boundary read from the Content-Type.
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

#include "jsonpath.h"
#include "rewriter.h"

static void test_content_type(void **state) {
  (void)state;
  static const struct {
    const char *ct;
    const evs__rewriter_ops *want;
  } cases[] = {
      {"application/json", &evs__json_rewriter},
      {"APPLICATION/JSON; charset=utf-8", &evs__json_rewriter},
      {"application/problem+json", &evs__json_rewriter},
      {"application/xml", &evs__xml_rewriter},
      {"text/xml;charset=utf-8", &evs__xml_rewriter},
      {"application/soap+xml", &evs__xml_rewriter},
      {"application/x-www-form-urlencoded", &evs__form_rewriter},
      {"multipart/form-data; boundary=x", &evs__multipart_rewriter},
      {"text/plain", NULL},
      {"application/jsonx", NULL},
      {"multipart/mixed; boundary=x", NULL},
      {"", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const evs__rewriter_ops *got = evs__rewriter_for_content_type(cases[i].ct, strlen(cases[i].ct));
    if (got != cases[i].want) fail_msg("%s: got %s", cases[i].ct, got ? got->name : "NULL");
  }
  assert_string_equal(evs__json_rewriter.name, "json");
  assert_string_equal(evs__xml_rewriter.name, "xml");
  assert_string_equal(evs__form_rewriter.name, "form");
  assert_string_equal(evs__multipart_rewriter.name, "multipart");
  assert_true(evs__multipart_rewriter.parse_unselected);
  assert_false(evs__json_rewriter.parse_unselected);
}

static void test_answer(void **state) {
  (void)state;
  static const int errs[] = {EVS__RW_E_SYNTAX,   EVS__RW_E_DUPKEY,      EVS__RW_E_DEPTH,
                             EVS__RW_E_TOOBIG,   EVS__RW_E_KEYS,        EVS__RW_E_EVDATA,
                             EVS__RW_E_DOCTYPE,  EVS__RW_E_ENTITY,      EVS__RW_E_PI,
                             EVS__RW_E_ENCODING, EVS__RW_E_MIXED,       EVS__RW_E_UNSUPPORTED,
                             EVS__RW_E_BOUNDARY};
  size_t n = sizeof errs / sizeof errs[0];
  for (size_t i = 0; i < n; i++) {
    for (size_t j = i + 1; j < n; j++) assert_int_not_equal(errs[i], errs[j]);
    const char *code = NULL;
    assert_int_equal(evs__rewriter_answer(errs[i], &code), 400);
    assert_string_equal(code, errs[i] == EVS__RW_E_EVDATA ? "encrypted-data-in-field"
                                                          : "bad-request");
  }
  const char *code = "untouched";
  assert_int_equal(evs__rewriter_answer(-ENOMEM, &code), 0);
  assert_int_equal(evs__rewriter_answer(-E2BIG, &code), 0);
  assert_int_equal(evs__rewriter_answer(0, &code), 0);
  assert_int_equal(evs__rewriter_answer(-2000, &code), 0);
  assert_string_equal(code, "untouched");
}

/* ---- driving a format through its table -------------------------------------------------- */

struct sink {
  const evs__rewriter_ops *ops;
  char out[1024];
  size_t len;
  char ret[64];
  int defer;
  size_t hole;
};

static int sink_emit(void *ud, const char *b, size_t n) {
  struct sink *s = ud;
  assert_true(s->len + n <= sizeof s->out);
  memcpy(s->out + s->len, b, n);
  s->len += n;
  return 0;
}

static int sink_transform(void *ud, evs__rw_type type, const char *v, size_t n,
                          const char **ret_buf, size_t *ret_len) {
  struct sink *s = ud;
  (void)type;
  assert_int_equal(n, 1);
  assert_int_equal(v[0], '1');
  if (s->defer) {
    s->hole = s->len;
    return EVS__RW_DEFER;
  }
  size_t l = s->ops->place_returned("ev:x y", 6, s->ret, sizeof s->ret);
  assert_true(l <= sizeof s->ret);
  *ret_buf = s->ret;
  *ret_len = l;
  return 0;
}

/* Rewrites body with the value "1" selected, through ops only; returns what new returned, or
 * the first error. With defer, the replacement goes into the hole with ops->place. */
static int run_ev(const evs__rewriter_ops *ops, const char *ct, const char *body, int defer,
                  int allow_ev, struct sink *s) {
  static const char *const names[] = {"a"};
  static const char *const sels[] = {"$.a"};
  evs__jsonpath *jp = NULL;
  assert_int_equal(evs__jsonpath_compile(sels, 1, &jp, NULL, 0), 0);
  memset(s, 0, sizeof *s);
  s->ops = ops;
  s->defer = defer;
  evs__rewriter_select sel = {jp, names, 1, ct, strlen(ct), allow_ev};
  void *rw = NULL;
  int r = ops->new(&sel, sink_emit, sink_transform, s, &rw);
  if (r == 0) {
    for (size_t i = 0; body[i] && r == 0; i++) r = ops->feed(rw, body + i, 1);
    if (r == 0) r = ops->finish(rw);
    assert_true(ops->mem_high_water(rw) > 0 || ops == &evs__form_rewriter);
    ops->free(rw);
  }
  evs__jsonpath_free(jp);
  if (r == 0 && defer) { /* fill the hole as relay_encrypt.c does */
    char tmp[64];
    size_t l = ops->place("ev:x y", 6, NULL, 0);
    assert_true(l <= sizeof tmp);
    assert_int_equal(ops->place("ev:x y", 6, tmp, sizeof tmp), l);
    memmove(s->out + s->hole + l, s->out + s->hole, s->len - s->hole);
    memcpy(s->out + s->hole, tmp, l);
    s->len += l;
  }
  s->out[s->len] = '\0';
  return r;
}

static int run(const evs__rewriter_ops *ops, const char *ct, const char *body, int defer,
               struct sink *s) {
  return run_ev(ops, ct, body, defer, 0, s);
}

static void test_formats(void **state) {
  (void)state;
  static const struct {
    const evs__rewriter_ops *ops;
    const char *ct, *in, *want;
  } cases[] = {
      {&evs__json_rewriter, "application/json", "{\"a\":\"1\",\"b\":2}",
       "{\"a\":\"ev:x y\",\"b\":2}"},
      {&evs__xml_rewriter, "application/xml", "<r><a>1</a><b>2</b></r>",
       "<r><a>ev:x y</a><b>2</b></r>"},
      {&evs__form_rewriter, "application/x-www-form-urlencoded", "a=1&b=2", "a=ev%3Ax+y&b=2"},
      {&evs__multipart_rewriter, "multipart/form-data; boundary=BB",
       "--BB\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--BB--\r\n",
       "--BB\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nev:x y\r\n--BB--\r\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    for (int defer = 0; defer <= 1; defer++) {
      struct sink s;
      int r = run(cases[i].ops, cases[i].ct, cases[i].in, defer, &s);
      if (r != 0) fail_msg("%s: %s", cases[i].ops->name, cases[i].ops->strerror(r));
      if (strcmp(s.out, cases[i].want) != 0)
        fail_msg("%s (defer %d): got %s", cases[i].ops->name, defer, s.out);
    }
  }
}

static void test_errors_through_ops(void **state) {
  (void)state;
  struct sink s;
  assert_int_equal(run(&evs__multipart_rewriter, "multipart/form-data", "--BB--\r\n", 0, &s),
                   EVS__RW_E_BOUNDARY);
  assert_int_equal(run(&evs__json_rewriter, "application/json", "{\"a\":", 0, &s),
                   EVS__RW_E_SYNTAX);
  assert_int_equal(run(&evs__xml_rewriter, "text/xml", "<!DOCTYPE r><r/>", 0, &s),
                   EVS__RW_E_DOCTYPE);
  assert_int_equal(run(&evs__form_rewriter, "application/x-www-form-urlencoded", "b=%zz", 0, &s),
                   EVS__RW_E_SYNTAX);
  assert_int_equal(
      run(&evs__multipart_rewriter, "multipart/form-data; boundary=BB",
          "--BB\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Length: 1\r\n\r\n1\r\n"
          "--BB--\r\n",
          0, &s),
      EVS__RW_E_UNSUPPORTED);
  assert_string_equal(evs__multipart_rewriter.strerror(EVS__RW_E_UNSUPPORTED),
                      "selected multipart part has Content-Length or Content-Transfer-Encoding");
  assert_string_equal(evs__xml_rewriter.strerror(EVS__RW_E_DOCTYPE),
                      "DOCTYPE or markup declaration in XML");
}

/* An unselected ev:-looking value: refused by default (the request trust boundary), written as it
 * is with allow_ev (responses), in every format. */
static void test_allow_ev(void **state) {
  (void)state;
#define EVL "ev:Tk9D:abc:def:ghi:$"
  static const struct {
    const evs__rewriter_ops *ops;
    const char *ct, *in;
  } cases[] = {
      {&evs__json_rewriter, "application/json", "{\"a\":\"1\",\"b\":\"" EVL "\"}"},
      {&evs__xml_rewriter, "application/xml", "<r><a>1</a><b>" EVL "</b></r>"},
      {&evs__form_rewriter, "application/x-www-form-urlencoded", "a=1&b=" EVL},
      {&evs__multipart_rewriter, "multipart/form-data; boundary=BB",
       "--BB\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n" EVL "\r\n--BB--\r\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct sink s;
    assert_int_equal(run_ev(cases[i].ops, cases[i].ct, cases[i].in, 0, 0, &s), EVS__RW_E_EVDATA);
    int r = run_ev(cases[i].ops, cases[i].ct, cases[i].in, 0, 1, &s);
    if (r != 0) fail_msg("%s: %s", cases[i].ops->name, cases[i].ops->strerror(r));
    if (!strstr(s.out, EVL)) fail_msg("%s: got %s", cases[i].ops->name, s.out);
  }
#undef EVL
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_content_type),
      cmocka_unit_test(test_answer),
      cmocka_unit_test(test_formats),
      cmocka_unit_test(test_errors_through_ops),
      cmocka_unit_test(test_allow_ev),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
