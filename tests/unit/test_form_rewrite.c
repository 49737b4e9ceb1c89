/*
 * Unit tests for plugins/relay-common/form_rewrite.c: byte-exact forwarding (identity, and with
 * selections compared with a non-streaming reference, for whole, byte-by-byte and random
 * splits), selection by decoded name, '+' and %XX decoding of the transform value, the encoding of
 * the replacement (the destination decodes exactly the returned ev: string), the deferred
 * (async) pattern, malformed escapes, ev:-looking unselected values (and the shared
 * evs__looks_like_ev_string agreeing with the streaming detector), the value cap, callback
 * errors, and bounded memory on a 25 MB body.
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

#include "ev_detect.h"
#include "form_rewrite.h"
#include "json_rewrite.h"

/* ---- harness (rewrite_harness.h) ---------------------------------------------------------- */

#define RW_HARNESS_SEED 4242
#include "rewrite_harness.h"

/* The replacement for call k: an ev:-shaped string using every character that needs encoding. */
static int marker(char *b, size_t cap, unsigned k) {
  return snprintf(b, cap, "ev:RFVC:%u+/=:aXY=:ZXBo_-:$", k);
}

static int rw_marker(char *b, size_t cap, evs__rw_type type, unsigned k) {
  (void)type;
  return marker(b, cap, k);
}

static void rw_on_value(struct sink *s, evs__rw_type type, const char *v, size_t n) {
  (void)s, (void)type, (void)v, (void)n;
}

/* mode 0: whole; 1: byte by byte; 2: random splits. Returns the feed/finish result. */
static int rewrite(const char *const *fields, size_t nf, const struct evs__form_rewrite_opts *o,
                   const char *in, size_t n, int mode, struct sink *s) {
  evs__form_rewrite *rw = NULL;
  int r;
  sink_start(s);
  assert_int_equal(evs__form_rewrite_new(fields, nf, o, sink_emit, sink_transform, s, &rw), 0);
  r = rw_feed_all(&evs__form_rewriter, rw, in, n, mode, 13);
  evs__form_rewrite_free(rw);
  return r;
}

static int hexv(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes s[0..n) as a form parser does ('+', %XX; inputs here are well-formed). */
static size_t decode(const char *s, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '+') out[o++] = ' ';
    else if (s[i] == '%') {
      out[o++] = (char)(hexv(s[i + 1]) << 4 | hexv(s[i + 2]));
      i += 2;
    } else out[o++] = s[i];
  }
  return o;
}

/* The non-streaming reference: the expected output and transform count. */
static size_t reference(const char *const *fields, size_t nf, const char *in, char *out,
                        unsigned *ret_k) {
  size_t n = strlen(in), o = 0, i = 0;
  unsigned k = 0;
  while (i <= n) {
    const char *amp = memchr(in + i, '&', n - i);
    size_t e = amp ? (size_t)(amp - in) : n;
    const char *eq = memchr(in + i, '=', e - i);
    bool sel = false;
    if (eq) {
      char name[256];
      size_t nl = decode(in + i, (size_t)(eq - in) - i, name);
      for (size_t f = 0; f < nf; f++) sel |= strlen(fields[f]) == nl && !memcmp(fields[f], name, nl);
    }
    if (sel) {
      char m[64];
      size_t pre = (size_t)(eq - in) + 1 - i;
      memcpy(out + o, in + i, pre);
      o += pre;
      o += evs__form_urlencode(m, (size_t)marker(m, sizeof m, k++), out + o, 256);
    } else {
      memcpy(out + o, in + i, e - i);
      o += e - i;
    }
    if (!amp) break;
    out[o++] = '&';
    i = e + 1;
  }
  out[o] = 0;
  *ret_k = k;
  return o;
}

/* ---- byte-exact forwarding ------------------------------------------------------------------ */

static const char *const corpus[] = {
    "",
    "name=Claude+Shannon&ssn=123-12-1234",
    "a=1&&b=2&&&c&=x&d=&==",
    "ssn=%31%32%33&card=4111+1111%201111&note=ssn%3Dnot+selected",
    "s%73n=by+escaped+name&ss+n=space&SSN=case&ssn =trailing+space",
    "k=v=w=x&ssn=a=b&ssn&ssn=",
    "utf8=%C3%A9%e2%82%AC+\xc3\xa9&bin=%00%FF%0d%0A&ssn=%00x",
    "&&&",
    "ssn=last",
    "card=1&ssn=2&card=3&x=ev:hello&y=ev%3A",
};

static const char *const fieldsets[][3] = {
    {"ssn", NULL, NULL}, {"ssn", "card", NULL}, {"", "a", NULL}, {"ss n", "SSN", "ssn "},
    {"nothing", NULL, NULL},
};

static void test_identity(void **state) {
  (void)state;
  for (size_t d = 0; d < sizeof corpus / sizeof corpus[0]; d++) {
    for (int mode = 0; mode < 3; mode++) {
      struct sink s;
      assert_int_equal(rewrite(NULL, 0, NULL, corpus[d], strlen(corpus[d]), mode, &s), 0);
      assert_int_equal(s.len, strlen(corpus[d]));
      if (s.len) assert_memory_equal(s.out, corpus[d], s.len);
      assert_int_equal(s.k, 0);
      free(s.out);
    }
  }
}

static void test_selected_vs_reference(void **state) {
  (void)state;
  for (size_t d = 0; d < sizeof corpus / sizeof corpus[0]; d++) {
    for (size_t f = 0; f < sizeof fieldsets / sizeof fieldsets[0]; f++) {
      size_t nf = fieldsets[f][1] ? fieldsets[f][2] ? 3 : 2 : 1;
      char want[4096];
      unsigned wk;
      size_t wl = reference(fieldsets[f], nf, corpus[d], want, &wk);
      for (int mode = 0; mode < 3; mode++) {
        for (int rep = 0; rep < (mode == 2 ? 10 : 1); rep++) {
          struct sink s;
          int r = rewrite(fieldsets[f], nf, NULL, corpus[d], strlen(corpus[d]), mode, &s);
          if (r != 0) fail_msg("%s: %s", corpus[d], evs__form_rewrite_strerror(r));
          if (s.len != wl || (wl && memcmp(s.out, want, wl) != 0))
            fail_msg("doc %s mode %d:\n got %.*s\nwant %s", corpus[d], mode, (int)s.len, s.out,
                     want);
          assert_int_equal(s.k, wk);
          free(s.out);
        }
      }
    }
  }
}

static void test_expected_output_and_values(void **state) {
  const char *f[] = {"ssn", "card"};
  const char *doc = "name=Claude+Shannon&ssn=12%2B3+4%e2%82%ac&s%73n=&card&card=%00%41";
  struct sink s;
  (void)state;
  for (int mode = 0; mode < 3; mode++) {
    assert_int_equal(rewrite(f, 2, NULL, doc, strlen(doc), mode, &s), 0);
    assert_int_equal(s.k, 3);
    assert_int_equal(s.calls[0].type, EVS__RW_STRING);
    assert_int_equal(s.calls[0].len, 9);
    assert_string_equal(s.calls[0].value, "12+3 4\xe2\x82\xac");
    assert_int_equal(s.calls[1].len, 0); /* "s%73n=" is ssn with an empty value */
    assert_int_equal(s.calls[2].len, 2);
    assert_memory_equal(s.calls[2].value, "\0A", 2);
    assert_string_equal(s.out, "name=Claude+Shannon&ssn=ev%3ARFVC%3A0%2B%2F%3D%3AaXY%3D%3AZXBo_-%3A%24"
                               "&s%73n=ev%3ARFVC%3A1%2B%2F%3D%3AaXY%3D%3AZXBo_-%3A%24&card"
                               "&card=ev%3ARFVC%3A2%2B%2F%3D%3AaXY%3D%3AZXBo_-%3A%24");
    free(s.out);
  }
}

/* What the destination's form parser sees is exactly the string the transform returned. */
static void test_destination_decodes_ev_string(void **state) {
  const char *f[] = {"ssn"};
  const char *doc = "a=1&ssn=123-45-6789&b=2";
  struct sink s;
  char m[64], dec[128];
  const char *v;
  size_t ml, dl;
  (void)state;
  assert_int_equal(rewrite(f, 1, NULL, doc, strlen(doc), 0, &s), 0);
  v = strstr(s.out, "ssn=") + 4;
  dl = decode(v, (size_t)(strchr(v, '&') - v), dec);
  ml = (size_t)marker(m, sizeof m, 0);
  assert_int_equal(dl, ml);
  assert_memory_equal(dec, m, ml);
  assert_true(evs__looks_like_ev_string(dec, dl));
  free(s.out);
  { /* the encoder itself: unreserved bytes kept, space as '+', the rest %XX */
    char o[64];
    assert_int_equal(evs__form_urlencode("aZ09*-._ +/=:$%&\xff", 17, o, sizeof o), 33);
    assert_memory_equal(o, "aZ09*-._+%2B%2F%3D%3A%24%25%26%FF", 33);
    assert_int_equal(evs__form_urlencode("::", 2, o, 4), 6); /* too small: the needed length */
  }
}

/* The async pattern: holes at output offsets, filled with the encoded replacements later. */
static void test_deferred(void **state) {
  const char *f[] = {"ssn", "card"};
  const char *doc = corpus[9];
  struct sink sync, async;
  evs__form_rewrite *rw = NULL;
  char joined[1024];
  size_t jl = 0, last = 0;
  (void)state;
  assert_int_equal(rewrite(f, 2, NULL, doc, strlen(doc), 0, &sync), 0);
  memset(&async, 0, sizeof async);
  async.store = true;
  async.defer = true;
  assert_int_equal(evs__form_rewrite_new(f, 2, NULL, sink_emit, sink_transform, &async, &rw), 0);
  for (size_t i = 0; i < strlen(doc); i++) assert_int_equal(evs__form_rewrite_feed(rw, doc + i, 1), 0);
  assert_int_equal(evs__form_rewrite_finish(rw), 0);
  evs__form_rewrite_free(rw);
  assert_int_equal(async.k, 3);
  assert_int_equal(async.k, sync.k);
  for (unsigned k = 0; k < async.k; k++) {
    char m[64];
    int ml = marker(m, sizeof m, k);
    memcpy(joined + jl, async.out + last, async.holes[k] - last);
    jl += async.holes[k] - last;
    jl += evs__form_urlencode(m, (size_t)ml, joined + jl, sizeof joined - jl);
    last = async.holes[k];
  }
  memcpy(joined + jl, async.out + last, async.len - last);
  jl += async.len - last;
  assert_int_equal(jl, sync.len);
  assert_memory_equal(joined, sync.out, jl);
  free(sync.out);
  free(async.out);
}

/* ---- errors --------------------------------------------------------------------------------- */

static void test_malformed(void **state) {
  static const char *const bad[] = {
      "%", "a=%", "a=%4", "a=%4g", "a=%g4", "a=%%41", "%zz=1", "a%=1", "ssn=%", "ssn=%2",
      "ssn=1%2&b", "x=1&ssn=%Z0&y", "a=b%", "a=%\xc3\xa9", "ssn=%+1",
  };
  const char *f[] = {"ssn"};
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    for (int mode = 0; mode < 3; mode++) {
      struct sink s;
      int r = rewrite(mode == 2 ? NULL : f, mode == 2 ? 0 : 1, NULL, bad[i], strlen(bad[i]), mode,
                      &s);
      if (r != EVS__RW_E_SYNTAX) fail_msg("accepted: %s (%d)", bad[i], r);
      free(s.out);
    }
  }
  { /* the offset of the bad escape */
    struct sink s;
    evs__form_rewrite *rw = NULL;
    memset(&s, 0, sizeof s);
    assert_int_equal(evs__form_rewrite_new(NULL, 0, NULL, sink_emit, NULL, &s, &rw), 0);
    assert_int_equal(evs__form_rewrite_feed(rw, "ab=c%4", 6), 0);
    assert_int_equal(evs__form_rewrite_feed(rw, "x", 1), EVS__RW_E_SYNTAX);
    assert_int_equal(evs__form_rewrite_error_offset(rw), 6);
    assert_int_equal(evs__form_rewrite_feed(rw, "y", 1), EVS__RW_E_SYNTAX); /* poisoned */
    assert_int_equal(evs__form_rewrite_finish(rw), EVS__RW_E_SYNTAX);
    evs__form_rewrite_free(rw);
  }
}

static void test_ev_data(void **state) {
  static const char *const enc[] = {
      "x=ev:RFVC:aXY=:ZXBo:Y3Q=:$",
      "x=ev%3ARFVC%3AaXY%3D%3AZXBo%3AY3Q%3D%3A%24",
      "a=1&x=ev:Tk9D:number:aXY=:ZXBo:Y3Q=:$&b=2",
      "x=%65v:RFVC:aXY:ZXBo:Y3Q_-:%24",
      "ssn=1&ev=ev:RFVC:aXY=:ZXBo:Y3Q=:$",
  };
  static const char *const plain[] = {
      "x=ev:hello", "x=ev:RFVC:a+b:ZXBo:Y3Q=:$", "x=ev:RFVC:aXY=:ZXBo:Y3Q=",
      "x=Xev:RFVC:aXY=:ZXBo:Y3Q=:$", "ev:RFVC:aXY=:ZXBo:Y3Q=:$=1", "x=ev:RFVC:a:b:c:d:e:f:$",
      "ev:RFVC:aXY=:ZXBo:Y3Q=:$",
  };
  const char *f[] = {"ssn"};
  struct sink s;
  (void)state;
  for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
    for (int mode = 0; mode < 3; mode++) {
      assert_int_equal(rewrite(f, 1, NULL, enc[i], strlen(enc[i]), mode, &s), EVS__RW_E_EVDATA);
      free(s.out);
    }
  }
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    if (rewrite(f, 1, NULL, plain[i], strlen(plain[i]), 1, &s) != 0) fail_msg("%s", plain[i]);
    free(s.out);
  }
  /* selected ev: data is the transform's business */
  assert_int_equal(rewrite(f, 1, NULL, "ssn=ev:RFVC:aXY=:ZXBo:Y3Q=:$", 28, 0, &s), 0);
  assert_int_equal(s.k, 1);
  free(s.out);
}

/* The shared one-shot heuristic and the streaming detector agree, on any split. */
static void test_ev_detector_matches_shared_heuristic(void **state) {
  static const char alpha[] = "ev:$ab+/=-_:$. %";
  unsigned hits = 0;
  (void)state;
  for (int t = 0; t < 200000; t++) {
    char s[24];
    size_t n = 3 + rng() % 18;
    struct evs__ev_detect d;
    bool one;
    for (size_t i = 0; i < n; i++) s[i] = alpha[rng() % (sizeof alpha - 1)];
    if (rng() % 2) memcpy(s, "ev:", 3);
    if (rng() % 2) memcpy(s + n - 2, ":$", 2);
    one = evs__looks_like_ev_string(s, n) != 0;
    evs__ev_detect_reset(&d);
    for (size_t i = 0; i < n;) {
      size_t c = 1 + rng() % 4;
      if (c > n - i) c = n - i;
      evs__ev_detect_feed(&d, s + i, c);
      i += c;
    }
    if (one != evs__ev_detect_done(&d)) fail_msg("disagree on %.*s", (int)n, s);
    hits += one;
  }
  assert_true(hits > 100); /* the generator does produce ev: strings */
  assert_true(evs__looks_like_ev_string("ev:RFVC:aXY=:ZXBo:Y3Q=:$", 24));
  assert_false(evs__looks_like_ev_string("ev:RFVC:aXY=:ZXBo:Y3Q=:", 23));
  assert_false(evs__looks_like_ev_string("ev:$", 4));
}

static void test_limits(void **state) {
  struct evs__form_rewrite_opts o = {.size = sizeof o, .max_value = 8};
  const char *f[] = {"v"};
  struct sink s;
  (void)state;
  assert_int_equal(rewrite(f, 1, &o, "v=12345678", 10, 1, &s), 0);
  free(s.out);
  assert_int_equal(rewrite(f, 1, &o, "v=%31%32%33%34%35%36%37%38", 26, 1, &s), 0); /* decoded */
  free(s.out);
  assert_int_equal(rewrite(f, 1, &o, "v=123456789", 11, 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  assert_int_equal(rewrite(f, 1, &o, "w=123456789012&vv=123456789012", 30, 1, &s), 0);
  free(s.out);
  { /* names longer than any field are not held */
    char doc[5000];
    memset(doc, 'n', 4000);
    memcpy(doc + 4000, "=1&v=2", 7);
    assert_int_equal(rewrite(f, 1, &o, doc, strlen(doc), 2, &s), 0);
    assert_int_equal(s.k, 1);
    free(s.out);
  }
}

static int emit_fail(void *ud, const char *b, size_t n) {
  (void)ud, (void)b, (void)n;
  return -EPIPE;
}

static int transform_fail(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                          size_t *ret_len) {
  (void)ud, (void)type, (void)v, (void)n, (void)ret, (void)ret_len;
  return -EIO;
}

static void test_callback_errors_and_counts(void **state) {
  evs__form_rewrite *rw = NULL;
  const char *f[] = {"a"};
  struct sink s;
  (void)state;
  assert_int_equal(evs__form_rewrite_new(f, 1, NULL, sink_emit, NULL, NULL, &rw), -EINVAL);
  assert_int_equal(evs__form_rewrite_new(NULL, 0, NULL, emit_fail, NULL, NULL, &rw), 0);
  assert_int_equal(evs__form_rewrite_feed(rw, "a=1", 3), -EPIPE);
  assert_int_equal(evs__form_rewrite_finish(rw), -EPIPE);
  evs__form_rewrite_free(rw);
  memset(&s, 0, sizeof s);
  assert_int_equal(evs__form_rewrite_new(f, 1, NULL, sink_emit, transform_fail, &s, &rw), 0);
  assert_int_equal(evs__form_rewrite_feed(rw, "b=1&a=1", 7), 0);
  assert_int_equal(evs__form_rewrite_finish(rw), -EIO);
  assert_int_equal(evs__form_rewrite_pairs(rw), 2);
  evs__form_rewrite_free(rw);
  evs__form_rewrite_free(NULL);
  memset(&s, 0, sizeof s);
  assert_int_equal(evs__form_rewrite_new(NULL, 0, NULL, sink_emit, NULL, &s, &rw), 0);
  assert_int_equal(evs__form_rewrite_feed(rw, "&a&&b=&=c&", 10), 0);
  assert_int_equal(evs__form_rewrite_finish(rw), 0);
  assert_int_equal(evs__form_rewrite_pairs(rw), 3);
  evs__form_rewrite_free(rw);
}

/* ---- bounded memory ------------------------------------------------------------------------- */

static void test_bounded_memory(void **state) {
  const char *f[] = {"ssn", "card"};
  evs__form_rewrite *rw = NULL;
  struct sink s;
  char *chunk = malloc(65536);
  size_t total = 0, target = 25u * 1024 * 1024, hw;
  (void)state;
  assert_non_null(chunk);
  memset(&s, 0, sizeof s); /* count only */
  assert_int_equal(evs__form_rewrite_new(f, 2, NULL, sink_emit, sink_transform, &s, &rw), 0);
  assert_int_equal(evs__form_rewrite_feed(rw, "ssn=1&big=", 10), 0);
  /* an unselected value with escapes, none of them split by the 64 KiB pieces */
  for (size_t i = 0; i + 7 <= 65536; i += 7) memcpy(chunk + i, "ab%20+c", 7);
  memset(chunk + 65536 - 65536 % 7, 'x', 65536 % 7);
  while (total < target) {
    assert_int_equal(evs__form_rewrite_feed(rw, chunk, 65536), 0);
    total += 65536;
  }
  assert_int_equal(evs__form_rewrite_feed(rw, "&card=4111", 10), 0);
  assert_int_equal(evs__form_rewrite_finish(rw), 0);
  hw = evs__form_rewrite_mem_high_water(rw);
  assert_int_equal(s.k, 2);
  { /* "1" and "4111" replaced by the encoded markers */
    char m[64], e[256];
    size_t e0 = evs__form_urlencode(m, (size_t)marker(m, sizeof m, 0), e, sizeof e);
    size_t e1 = evs__form_urlencode(m, (size_t)marker(m, sizeof m, 1), e, sizeof e);
    assert_int_equal(s.len, 10 + total + 10 - 1 - 4 + e0 + e1);
  }
  if (hw >= 1024) fail_msg("high water %zu bytes for a %zu-byte body", hw, total);
  evs__form_rewrite_free(rw);
  free(chunk);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_identity),
      cmocka_unit_test(test_selected_vs_reference),
      cmocka_unit_test(test_expected_output_and_values),
      cmocka_unit_test(test_destination_decodes_ev_string),
      cmocka_unit_test(test_deferred),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_ev_data),
      cmocka_unit_test(test_ev_detector_matches_shared_heuristic),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_callback_errors_and_counts),
      cmocka_unit_test(test_bounded_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
