/*
 * Unit tests for plugins/relay-common/json_rewrite.c (selector syntax: test_jsonpath.c): byte-exact forwarding (compared with a
 * non-streaming reference, for whole, byte-by-byte and random splits), typed and decoded
 * transform values, the deferred (async) transform pattern, strict RFC 8259 validation, duplicate
 * keys, the depth / value size / key count limits, ev:-looking unselected strings, and bounded
 * memory on a 25 MB body fed in 64 KiB pieces.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_rewrite.h"
#include "jsonpath.h"

#include "json_rewrite_ref.h"

/* ---- harness (rewrite_harness.h) ---------------------------------------------------------- */

#define RW_HARNESS_SEED 12345
#include "rewrite_harness.h"

static int rw_marker(char *b, size_t cap, evs__rw_type type, unsigned k) {
  (void)type;
  return snprintf(b, cap, "\"#%u\"", k);
}

static void rw_on_value(struct sink *s, evs__rw_type type, const char *v, size_t n) {
  (void)s, (void)type, (void)v, (void)n;
}

/* mode 0: whole; 1: byte by byte; 2: random splits. Returns the feed/finish result. */
static int rewrite(const evs__jsonpath *jp, const struct evs__json_rewrite_opts *o, const char *in,
                   size_t n, int mode, struct sink *s) {
  evs__json_rewrite *rw = NULL;
  int r;
  sink_start(s);
  assert_int_equal(evs__json_rewrite_new(jp, o, sink_emit, sink_transform, s, &rw), 0);
  r = rw_feed_all(&evs__json_rewriter, rw, in, n, mode, 17);
  evs__json_rewrite_free(rw);
  return r;
}

static int rewrite_str(const evs__jsonpath *jp, const char *in, struct sink *s) {
  return rewrite(jp, NULL, in, strlen(in), 0, s);
}

/* ---- byte-exact forwarding ------------------------------------------------------------------ */

static const char *const corpus[] = {
    "{\"name\":\"Claude Shannon\", \"ssn\":\"123-12-1234\"}",
    "  {  \"a\" :\t{ \"b\"\r\n:  \"x\\u00e9\\\"\\\\/\" , \"c\" : [ 1 , -0.5e+7 , true ] } }  \n",
    "{\"big\":123456789012345678901234567890,\"f\":1E400,\"z\":-0,\"e\":0e-0,\"s\":\"\\ud83d\\ude00\"}",
    "{\"items\":[{\"card\":\"4111\",\"n\":1},{\"card\":{\"x\":[\"a\",2,null,false]}},{\"card\":null}]}",
    "[[[[[]]]],{},[{}],\"ssn\",{\"ssn\":[1,{\"ssn\":\"deep\"}]}]",
    "\"top\"",
    " 42 ",
    "-12.25e-3",
    "null",
    "{\"\\u0073sn\":\"escaped key\",\"k\\n\":\"\\t\",\"\xc3\xa9\\u00e9\":\"\xf0\x9f\x98\x80 utf8\"}",
    "{\"a\":{\"b\":{\"c\":{\"ssn\":true,\"card\":1.0}}},\"items\":[\"x\",\"y\",[0,1]]}",
    "{\"ev\":\"ev:but:not:quite\",\"v\":\"ev:\"}",
    "{\"ssn\":\"\",\"card\":[\"\",\"\"],\"\":\"\"}",
};

static const char *const selsets[][2] = {
    {"$.ssn", NULL},        {"$..ssn", "$..card"}, {"$.items[*].card", NULL},
    {"$.items[0]", "$.a.b"}, {"$", NULL},           {"$..*", NULL},
    {"$['a']['c'][1]", NULL}, {"$[4].ssn[1].ssn", "$[*]"}, {"$.nothing", NULL},
};

static void check_doc(const evs__jsonpath *jp, const char *doc) {
  size_t n = strlen(doc);
  struct ref *ref = calloc(1, sizeof *ref);
  struct sink s;
  assert_non_null(ref);
  ref_run(ref, jp, doc, n);
  for (int mode = 0; mode < 3; mode++) {
    for (int rep = 0; rep < (mode == 2 ? 20 : 1); rep++) {
      int r = rewrite(jp, NULL, doc, n, mode, &s);
      if (r != 0) fail_msg("doc %s mode %d: %s", doc, mode, evs__json_rewrite_strerror(r));
      if (s.len != ref->olen || memcmp(s.out, ref->out, s.len) != 0)
        fail_msg("doc %s mode %d:\n got %.*s\nwant %s", doc, mode, (int)s.len, s.out, ref->out);
      assert_int_equal(s.k, ref->k);
      free(s.out);
    }
  }
  { /* putting the original spans back gives the input */
    char *back = malloc(n + 1);
    size_t bl = 0, last = 0;
    assert_non_null(back);
    for (unsigned k = 0; k < ref->k; k++) {
      memcpy(back + bl, doc + last, ref->spans[k][0] - last);
      bl += ref->spans[k][0] - last;
      memcpy(back + bl, doc + ref->spans[k][0], ref->spans[k][1] - ref->spans[k][0]);
      bl += ref->spans[k][1] - ref->spans[k][0];
      last = ref->spans[k][1];
    }
    memcpy(back + bl, doc + last, n - last);
    assert_memory_equal(back, doc, n);
    free(back);
  }
  free(ref->out);
  free(ref);
}

static void test_byte_exact(void **state) {
  (void)state;
  for (size_t d = 0; d < sizeof corpus / sizeof corpus[0]; d++) {
    struct sink s;
    assert_int_equal(rewrite(NULL, NULL, corpus[d], strlen(corpus[d]), 1, &s), 0);
    assert_string_equal(s.out, corpus[d]);
    free(s.out);
    for (size_t k = 0; k < sizeof selsets / sizeof selsets[0]; k++) {
      evs__jsonpath *jp = paths(selsets[k][0], selsets[k][1]);
      check_doc(jp, corpus[d]);
      evs__jsonpath_free(jp);
    }
  }
}

static void test_expected_output(void **state) {
  evs__jsonpath *jp = paths("$..ssn", "$.items[*].card");
  struct sink s;
  (void)state;
  assert_int_equal(rewrite_str(jp, "{\"name\":\"Claude Shannon\", \"ssn\":\"123-12-1234\"}", &s), 0);
  assert_string_equal(s.out, "{\"name\":\"Claude Shannon\", \"ssn\":\"#0\"}");
  free(s.out);
  assert_int_equal(
      rewrite_str(jp, "{\"items\" : [ {\"card\": {\"n\":[1, null ,\"x\"]}} ,{\"card\" :true}]}", &s),
      0);
  assert_string_equal(s.out, "{\"items\" : [ {\"card\": {\"n\":[\"#0\", null ,\"#1\"]}} ,{\"card\" :\"#2\"}]}");
  free(s.out);
  evs__jsonpath_free(jp);
}

/* ---- transform values ----------------------------------------------------------------------- */

static void test_typed_values(void **state) {
  evs__jsonpath *jp = paths("$.*", NULL);
  struct sink s;
  const char *doc = "{\"s\":\"a\\u00e9\\ud83d\\ude00\\n\\\"\\/\xe2\x82\xac\",\"n\":-1.5e+10,\"b\":true,"
                    "\"f\":false,\"z\":null,\"big\":123456789012345678901234567890,\"nul\":\"\\u0000x\"}";
  (void)state;
  for (int mode = 0; mode < 3; mode++) {
    assert_int_equal(rewrite(jp, NULL, doc, strlen(doc), mode, &s), 0);
    assert_int_equal(s.k, 6);
    assert_int_equal(s.calls[0].type, EVS__RW_STRING);
    assert_int_equal(s.calls[0].len, strlen("a\xc3\xa9\xf0\x9f\x98\x80\n\"/\xe2\x82\xac"));
    assert_string_equal(s.calls[0].value, "a\xc3\xa9\xf0\x9f\x98\x80\n\"/\xe2\x82\xac");
    assert_int_equal(s.calls[1].type, EVS__RW_NUMBER);
    assert_string_equal(s.calls[1].value, "-1.5e+10");
    assert_int_equal(s.calls[2].type, EVS__RW_BOOLEAN);
    assert_string_equal(s.calls[2].value, "true");
    assert_int_equal(s.calls[3].type, EVS__RW_BOOLEAN);
    assert_string_equal(s.calls[3].value, "false");
    assert_int_equal(s.calls[4].type, EVS__RW_NUMBER);
    assert_string_equal(s.calls[4].value, "123456789012345678901234567890");
    assert_int_equal(s.calls[5].type, EVS__RW_STRING);
    assert_int_equal(s.calls[5].len, 2);
    assert_memory_equal(s.calls[5].value, "\0x", 2);
    assert_string_equal(s.out, "{\"s\":\"#0\",\"n\":\"#1\",\"b\":\"#2\",\"f\":\"#3\",\"z\":null,"
                               "\"big\":\"#4\",\"nul\":\"#5\"}");
    free(s.out);
  }
  evs__jsonpath_free(jp);
}

/* The async pattern: the transform defers, the caller records holes at its output offsets and
 * fills them later; the result equals the synchronous one. */
static void test_deferred(void **state) {
  evs__jsonpath *jp = paths("$..ssn", "$..card");
  const char *doc = corpus[3];
  struct sink sync, async;
  evs__json_rewrite *rw = NULL;
  char *joined;
  size_t jl = 0, last = 0;
  (void)state;
  assert_int_equal(rewrite_str(jp, doc, &sync), 0);
  memset(&async, 0, sizeof async);
  async.store = true;
  async.defer = true;
  assert_int_equal(evs__json_rewrite_new(jp, NULL, sink_emit, sink_transform, &async, &rw), 0);
  for (size_t i = 0; i < strlen(doc); i++) assert_int_equal(evs__json_rewrite_feed(rw, doc + i, 1), 0);
  assert_int_equal(evs__json_rewrite_finish(rw), 0);
  evs__json_rewrite_free(rw);
  assert_int_equal(async.k, sync.k);
  joined = malloc(sync.len + 1);
  assert_non_null(joined);
  for (unsigned k = 0; k < async.k; k++) { /* the batch came back: fill the holes */
    char m[32];
    int ml = snprintf(m, sizeof m, "\"#%u\"", k);
    memcpy(joined + jl, async.out + last, async.holes[k] - last);
    jl += async.holes[k] - last;
    memcpy(joined + jl, m, (size_t)ml);
    jl += (size_t)ml;
    last = async.holes[k];
  }
  memcpy(joined + jl, async.out + last, async.len - last);
  jl += async.len - last;
  assert_int_equal(jl, sync.len);
  assert_memory_equal(joined, sync.out, jl);
  free(joined);
  free(sync.out);
  free(async.out);
  evs__jsonpath_free(jp);
}

/* ---- errors --------------------------------------------------------------------------------- */

static void test_malformed(void **state) {
  static const char *const bad[] = {
      "", "   ", "{", "}", "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{\"a\":}", "{a:1}",
      "{'a':1}", "[01]", "[-]", "[1.]", "[.5]", "[1e]", "[1e+]", "[+1]", "[NaN]", "[Infinity]",
      "[-Infinity]", "[tru]", "[nul]", "[True]", "\"abc", "\"a\nb\"", "\"a\tb\"", "\"\\x\"",
      "\"\\u12g4\"", "\"\\ud800\"", "\"\\ud800x\"", "\"\\ud800\\u0041\"", "\"\\udc00\"",
      "\"\xff\"", "\"\xc0\xaf\"", "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
      "\"\xc3\"", "1 2", "{} {}", "[1]x", "// c\n1", "/* c */ 1", "[1,,2]", "{\"a\":1 \"b\":2}",
      "[1]]", "{\"a\":1}}", "\xef\xbb\xbf{}", "[\"a\":1]", "{\"a\",1}", "-", "0x10", "1.5.5",
  };
  evs__jsonpath *jp = paths("$..*", NULL);
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    for (int mode = 0; mode < 2; mode++) {
      struct sink s;
      int r = rewrite(mode ? jp : NULL, NULL, bad[i], strlen(bad[i]), mode, &s);
      if (r != EVS__RW_E_SYNTAX) fail_msg("accepted: %s (%d)", bad[i], r);
      free(s.out);
    }
  }
  evs__jsonpath_free(jp);
}

static void test_duplicate_keys(void **state) {
  static const char *const dup[] = {
      "{\"a\":1,\"a\":2}", "{\"a\":1,\"\\u0061\":2}", "{\"x\":{\"a\":1,\"b\":[{}],\"a\":3}}",
      "{\"a\":{\"b\":1},\"c\":2,\"a\":0}",
  };
  static const char *const ok[] = {
      "{\"a\":{\"a\":{\"a\":1}},\"b\":{\"a\":1}}", "[{\"a\":1},{\"a\":2}]", "{\"a\":1,\"A\":2,\"a \":3}",
  };
  struct sink s;
  (void)state;
  for (size_t i = 0; i < sizeof dup / sizeof dup[0]; i++) {
    assert_int_equal(rewrite_str(NULL, dup[i], &s), EVS__RW_E_DUPKEY);
    free(s.out);
  }
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    assert_int_equal(rewrite_str(NULL, ok[i], &s), 0);
    free(s.out);
  }
  { /* a large object: 5000 members, then a duplicate of an early one */
    size_t cap = 5001 * 16, n = 0;
    char *doc = malloc(cap);
    assert_non_null(doc);
    n += (size_t)sprintf(doc + n, "{");
    for (int i = 0; i < 5000; i++) n += (size_t)sprintf(doc + n, "\"k%d\":%d,", i, i);
    n += (size_t)sprintf(doc + n, "\"k17\":0}");
    assert_int_equal(rewrite(NULL, NULL, doc, n, 2, &s), EVS__RW_E_DUPKEY);
    free(s.out);
    strcpy(doc + n - 8, "\"end\":0}");
    assert_int_equal(rewrite(NULL, NULL, doc, strlen(doc), 0, &s), 0);
    free(s.out);
    free(doc);
  }
}

static void test_limits(void **state) {
  struct evs__json_rewrite_opts o = {.size = sizeof o, .max_depth = 4, .max_value = 8,
                                     .max_keys = 3};
  evs__jsonpath *jp = paths("$..v", NULL);
  struct sink s;
  (void)state;
  assert_int_equal(rewrite(NULL, &o, "[[[[1]]]]", 9, 0, &s), 0);
  free(s.out);
  assert_int_equal(rewrite(NULL, &o, "[[[[[1]]]]]", 11, 0, &s), EVS__RW_E_DEPTH);
  free(s.out);
  assert_int_equal(rewrite(jp, &o, "{\"v\":\"12345678\"}", 16, 1, &s), 0);
  free(s.out);
  assert_int_equal(rewrite(jp, &o, "{\"v\":\"123456789\"}", 17, 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  assert_int_equal(rewrite(jp, &o, "{\"v\":123456789}", 15, 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  /* unselected values may be of any size; member names are capped */
  assert_int_equal(rewrite(jp, &o, "{\"w\":\"123456789012\"}", 20, 1, &s), 0);
  free(s.out);
  assert_int_equal(rewrite(jp, &o, "{\"123456789\":1}", 15, 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  assert_int_equal(rewrite(jp, &o, "{\"a\":1,\"b\":{\"c\":1}}", 19, 1, &s), 0);
  free(s.out);
  assert_int_equal(rewrite(jp, &o, "{\"a\":1,\"b\":{\"c\":1,\"d\":2}}", 25, 1, &s), EVS__RW_E_KEYS);
  free(s.out);
  { /* the default cap: a huge flat object is refused at 100000 names, memory stays ~3 MiB */
    size_t n = 0;
    char *doc = malloc(100001 * 16 + 16);
    evs__json_rewrite *rw = NULL;
    assert_non_null(doc);
    doc[n++] = '{';
    for (int i = 0; i < 100001; i++) n += (size_t)sprintf(doc + n, "%s\"k%d\":0", i ? "," : "", i);
    doc[n++] = '}';
    memset(&s, 0, sizeof s);
    assert_int_equal(evs__json_rewrite_new(NULL, NULL, sink_emit, NULL, &s, &rw), 0);
    assert_int_equal(evs__json_rewrite_feed(rw, doc, n), EVS__RW_E_KEYS);
    assert_true(evs__json_rewrite_mem_high_water(rw) < 4u * 1024 * 1024);
    evs__json_rewrite_free(rw);
    free(doc);
  }
  /* keys of closed objects are released */
  assert_int_equal(rewrite(jp, &o, "[{\"a\":1,\"b\":2,\"c\":3},{\"a\":1,\"b\":2,\"c\":3}]", 41, 1, &s), 0);
  free(s.out);
  evs__jsonpath_free(jp);
}

static void test_ev_data(void **state) {
  static const char *const enc[] = {
      "{\"x\":\"ev:RFVC:aXY=:ZXBo:Y3Q=:$\"}", "[\"ev:Tk9D:number:aXY=:ZXBo:Y3Q=:$\"]",
      "\"ev:RFVC:aXY:ZXBo:Y3Q_-:$\"", "{\"x\":\"\\u0065v:RFVC:aXY=:ZXBo:Y3Q=:\\u0024\"}",
  };
  static const char *const plain[] = {
      "{\"x\":\"ev:hello\"}", "{\"x\":\"ev:RFVC:a b:ZXBo:Y3Q=:$\"}", "{\"x\":\"ev:RFVC:aXY=:ZXBo:Y3Q=\"}",
      "{\"x\":\"Xev:RFVC:aXY=:ZXBo:Y3Q=:$\"}", "{\"ev:RFVC:aXY=:ZXBo:Y3Q=:$\":1}",
      "{\"x\":\"ev:RFVC:a:b:c:d:e:f:$\"}",
  };
  evs__jsonpath *jp = paths("$.sel", NULL);
  struct sink s;
  (void)state;
  for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
    assert_int_equal(rewrite(jp, NULL, enc[i], strlen(enc[i]), 1, &s), EVS__RW_E_EVDATA);
    free(s.out);
  }
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    if (rewrite(jp, NULL, plain[i], strlen(plain[i]), 1, &s) != 0) fail_msg("%s", plain[i]);
    free(s.out);
  }
  /* selected ev: data is the transform's business */
  assert_int_equal(rewrite_str(jp, "{\"sel\":\"ev:RFVC:aXY=:ZXBo:Y3Q=:$\"}", &s), 0);
  assert_int_equal(s.k, 1);
  free(s.out);
  evs__jsonpath_free(jp);
}

static int emit_fail(void *ud, const char *b, size_t n) {
  (void)ud, (void)b, (void)n;
  return -EPIPE;
}

static void test_callback_errors_and_poison(void **state) {
  evs__json_rewrite *rw = NULL;
  (void)state;
  assert_int_equal(evs__json_rewrite_new(NULL, NULL, emit_fail, NULL, NULL, &rw), 0);
  assert_int_equal(evs__json_rewrite_feed(rw, "[1]", 3), -EPIPE);
  assert_int_equal(evs__json_rewrite_feed(rw, " ", 1), -EPIPE);
  assert_int_equal(evs__json_rewrite_finish(rw), -EPIPE);
  evs__json_rewrite_free(rw);
  {
    struct sink s;
    memset(&s, 0, sizeof s);
    assert_int_equal(evs__json_rewrite_new(NULL, NULL, sink_emit, NULL, &s, &rw), 0);
    assert_int_equal(evs__json_rewrite_feed(rw, "[1,\n2", 5), 0);
    assert_int_equal(evs__json_rewrite_feed(rw, "x", 1), EVS__RW_E_SYNTAX);
    assert_int_equal(evs__json_rewrite_error_offset(rw), 5);
    evs__json_rewrite_free(rw);
  }
}

/* ---- bounded memory ------------------------------------------------------------------------- */

static void test_bounded_memory(void **state) {
  evs__jsonpath *jp = paths("$.items[*].card", "$..ssn");
  evs__json_rewrite *rw = NULL;
  struct sink s;
  char *chunk = malloc(65536 + 512);
  size_t fill = 0, total = 0, target = 25u * 1024 * 1024;
  unsigned long i = 0;
  size_t hw;
  (void)state;
  assert_non_null(chunk);
  memset(&s, 0, sizeof s); /* count only */
  assert_int_equal(evs__json_rewrite_new(jp, NULL, sink_emit, sink_transform, &s, &rw), 0);
  fill = (size_t)sprintf(chunk, "{\"meta\": {\"v\": 1}, \"items\": [\n");
  while (total + fill < target) {
    fill += (size_t)sprintf(chunk + fill,
                            "%s{\"card\": \"4111111111111111\", \"name\": \"customer %lu\", "
                            "\"n\": %lu, \"ok\": true, \"ssn\": \"123-45-%04lu\", \"x\": null}\n",
                            i ? "," : "", i, i * 7919, i % 10000);
    i++;
    if (fill >= 65536) {
      assert_int_equal(evs__json_rewrite_feed(rw, chunk, 65536), 0);
      total += 65536;
      memmove(chunk, chunk + 65536, fill - 65536);
      fill -= 65536;
    }
  }
  fill += (size_t)sprintf(chunk + fill, "]}\n");
  assert_int_equal(evs__json_rewrite_feed(rw, chunk, fill), 0);
  total += fill;
  assert_int_equal(evs__json_rewrite_finish(rw), 0);
  hw = evs__json_rewrite_mem_high_water(rw);
  assert_int_equal(s.k, 2 * i);
  assert_true(total >= target);
  if (hw >= 4096) fail_msg("high water %zu bytes for a %zu-byte body", hw, total);
  evs__json_rewrite_free(rw);
  evs__jsonpath_free(jp);
  free(chunk);
}

/* ---- reset ------------------------------------------------------------------------------------ */

/* Few names allowed, so that names a reset failed to forget would show. */
static void *make(const evs__jsonpath *jp, struct sink *s) {
  struct evs__json_rewrite_opts o = {sizeof o, 0, 0, 16, 0};
  evs__json_rewrite *rw = NULL;
  assert_int_equal(evs__json_rewrite_new(jp, &o, sink_emit, sink_transform, s, &rw), 0);
  return rw;
}

/* A rewriter reset after any document (malformed, poisoned by a duplicate name, deep, with many
 * names) is as good as a new one (rw_check_reset), under every selector set. */
static void test_reset_is_new(void **state) {
  static const char *const extra[] = {
      "{\"a\":1,\"a\":2}", "[1,]", "{\"a\":[1,{\"b\":\"unterminated", "[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]",
      "{\"k0\":0,\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,"
      "\"ka\":{\"kb\":[\"ssn\",{\"ssn\":\"x\"}]}}",
  };
  (void)state;
  rw_check_reset(&evs__json_rewriter, make, corpus, sizeof corpus / sizeof corpus[0], extra,
                 sizeof extra / sizeof extra[0], selsets, sizeof selsets / sizeof selsets[0]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_byte_exact),
      cmocka_unit_test(test_expected_output),
      cmocka_unit_test(test_typed_values),
      cmocka_unit_test(test_deferred),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_duplicate_keys),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_ev_data),
      cmocka_unit_test(test_callback_errors_and_poison),
      cmocka_unit_test(test_bounded_memory),
      cmocka_unit_test(test_reset_is_new),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
