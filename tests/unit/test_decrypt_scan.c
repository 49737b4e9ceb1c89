/*
 * Unit tests for plugins/relay-common/decrypt_scan.c, the Inbound Relay's response-decryption
 * scanner: mode selection from Content-Type; JSON (values in objects, arrays and nesting replaced,
 * keys and substrings not, escapes before a token, "\/"); text, XML and urlencoded tokens
 * (percent-encoded too); near-misses passing unchanged; multipart with an %EVENC file part, text
 * and JSON parts and a binary part; raw %EVENC and raw non-%EVENC bodies; the deferred (async)
 * transform pattern; the token and file caps; callback errors. Every case is run whole, byte by
 * byte, split at every offset and in random pieces, and must give the same output and calls.
 * The ev: strings and the %EVENC file are vectors of the official SDK (shared/interop).
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

#include "decrypt_scan.h"

/* From /work/shared/interop/vectors.json. */
#define EV_STR                                                                                     \
  "ev:RFVC:5jrQ0HYlzf3IyTty:A8cM4Q/dbccPRlJOG79u44JF3+g0xa3AwENOz9EfduJA:T5PxWt0kaMZ/"             \
  "+KMPXJ7f+e5z8yqPQUt3ojs5PbzTKq5/:$"
#define EV_NUM                                                                                     \
  "ev:RFVC:number:mX/d+sHopDwAvzFr:A8cM4Q/dbccPRlJOG79u44JF3+g0xa3AwENOz9EfduJA:"                  \
  "7dRM0Wli8OhcDDmRlHF802aY:$"
#define EV_P256                                                                                    \
  "ev:Tk9D:7PVFkYHWxWxaeWE1:AuW5pH1kcHVWQRFK0H3cSfWArWNWbwGDWFiaMsXEesll:nORZZlDmtrjNHku6nDmqad/"  \
  "TTwJYvu2DvgolhSSp/KH7:$"
#define EV_ROLE                                                                                    \
  "ev:QkTC:boolean:4lQT98z1Ap6orOI8:A3HKmBOx2C7b+WUF19BcoubOYZnIdarVdtkaItNRHTH4:/"                \
  "JQOZJUEKvo/8L6WaPSDYuaLV1GbdQIQNLJzKanbznYf3TRZAuBubjHXr0dHTLX9yOwE2ZIuo+7NAgY:$"
/* "prime256v1 string without the :$ terminator" */
#define EV_NOEND                                                                                   \
  "ev:Tk9D:7PVFkYHWxWxaeWE1:AuW5pH1kcHVWQRFK0H3cSfWArWNWbwGDWFiaMsXEesll:nORZZlDmtrjNHku6nDmqad/"  \
  "TTwJYvu2DvgolhSSp/KH7"
/* "prime256v1 file (%EVENC v3)", base64 */
static const char file_b64[] =
    "JUVWRU5DAzcAAuW5pH1kcHVWQRFK0H3cSfWArWNWbwGDWFiaMsXEesllI0bKsyMYbPsx"
    "RWRzABLFWk1K/ztXx+KTAc8DwbaP3gEqRVeH1CFCbEB9";

/* ---- harness --------------------------------------------------------------------------------- */

struct call {
  int kind;
  char *value;
  size_t len;
};

struct sink {
  char *out;
  size_t len, cap;
  bool defer;  /* transform defers; holes recorded */
  int fail_at; /* transform number that fails with -EIO (0: never) */
  unsigned k;  /* transform calls */
  struct call calls[64];
  size_t holes[64];
  char marker[64];
};

static void sink_clear(struct sink *s) {
  for (unsigned i = 0; i < s->k && i < 64; i++)
    free(s->calls[i].value);
  free(s->out);
  memset(s, 0, sizeof *s);
}

static int sink_emit(void *ud, const char *b, size_t n) {
  struct sink *s = ud;
  assert_true(n > 0);
  if (s->len + n + 1 > s->cap) {
    s->cap = (s->len + n + 1) * 2;
    s->out = realloc(s->out, s->cap);
    assert_non_null(s->out);
  }
  memcpy(s->out + s->len, b, n);
  s->len += n;
  s->out[s->len] = 0;
  return 0;
}

/* The marker a synchronous transform returns for call k. */
static int marker(char *m, size_t cap, int kind, unsigned k) {
  switch (kind) {
  case EVS__DSCAN_STRING_JSON: return snprintf(m, cap, "\"#%u\"", k);
  case EVS__DSCAN_FILE: return snprintf(m, cap, "<file#%u>", k);
  default: return snprintf(m, cap, "[%d#%u]", kind, k);
  }
}

static int sink_transform(void *ud, int kind, const char *v, size_t n, const char **ret,
                          size_t *ret_len) {
  struct sink *s = ud;
  unsigned k = s->k++;
  if (k < 64) {
    s->calls[k].kind = kind;
    s->calls[k].len = n;
    s->calls[k].value = malloc(n + 1);
    assert_non_null(s->calls[k].value);
    memcpy(s->calls[k].value, v, n);
    s->calls[k].value[n] = 0;
  }
  if (s->fail_at && (int)s->k == s->fail_at) return -EIO;
  if (s->defer) {
    if (k < 64) s->holes[k] = s->len;
    return EVS__RW_DEFER;
  }
  *ret_len = (size_t)marker(s->marker, sizeof s->marker, kind, k);
  *ret = s->marker;
  return 0;
}

static unsigned rng_state = 12345;
static unsigned rng(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return rng_state >> 8;
}

/* Feeds in[0..n) cut at the offsets cuts[0..ncuts) (ascending). Returns the feed/finish result. */
static int scan_cuts(const char *ct, const struct evs__decrypt_scan_opts *o, const char *in,
                     size_t n, const size_t *cuts, size_t ncuts, struct sink *s) {
  evs__decrypt_scan *sc = NULL;
  size_t last = 0;
  int r = 0;
  assert_int_equal(evs__decrypt_scan_new(ct, o, sink_emit, sink_transform, s, &sc), 0);
  for (size_t i = 0; i <= ncuts && r == 0; i++) {
    size_t to = i < ncuts ? cuts[i] : n;
    r = evs__decrypt_scan_feed(sc, in + last, to - last);
    last = to;
  }
  if (r == 0) r = evs__decrypt_scan_finish(sc);
  evs__decrypt_scan_free(sc);
  return r;
}

static int scan_whole(const char *ct, const char *in, size_t n, struct sink *s) {
  return scan_cuts(ct, NULL, in, n, NULL, 0, s);
}

static void same_result(const struct sink *a, const struct sink *b, const char *what) {
  if (a->len != b->len || (a->len && memcmp(a->out, b->out, a->len) != 0) || a->k != b->k)
    fail_msg("%s: output differs (%zu vs %zu bytes, %u vs %u calls)", what, a->len, b->len, a->k,
             b->k);
  for (unsigned i = 0; i < a->k && i < 64; i++) {
    assert_int_equal(a->calls[i].kind, b->calls[i].kind);
    assert_int_equal(a->calls[i].len, b->calls[i].len);
    assert_memory_equal(a->calls[i].value, b->calls[i].value, a->calls[i].len);
  }
}

/* Scans in whole, then byte by byte, split once at every offset, split twice at offsets around
 * every position, and in random pieces: all must agree. Leaves the whole-body result in *ret. */
static void scan_all_splits(const char *ct, const char *in, size_t n, struct sink *ret) {
  struct sink t;
  size_t *cuts = malloc((n + 1) * sizeof *cuts);
  assert_non_null(cuts);
  memset(ret, 0, sizeof *ret);
  assert_int_equal(scan_whole(ct, in, n, ret), 0);
  for (size_t i = 1; i < n; i++)
    cuts[i - 1] = i;
  memset(&t, 0, sizeof t);
  assert_int_equal(scan_cuts(ct, NULL, in, n, cuts, n ? n - 1 : 0, &t), 0);
  same_result(ret, &t, "byte by byte");
  sink_clear(&t);
  for (size_t i = 0; i <= n; i++) {
    cuts[0] = i;
    assert_int_equal(scan_cuts(ct, NULL, in, n, cuts, 1, &t), 0);
    same_result(ret, &t, "one split");
    sink_clear(&t);
    if (i + 3 <= n) {
      cuts[1] = i + 1 + rng() % 2;
      assert_int_equal(scan_cuts(ct, NULL, in, n, cuts, 2, &t), 0);
      same_result(ret, &t, "two splits");
      sink_clear(&t);
    }
  }
  for (int round = 0; round < 20; round++) {
    size_t nc = 0, at = 0;
    while ((at += 1 + rng() % 13) < n)
      cuts[nc++] = at;
    assert_int_equal(scan_cuts(ct, NULL, in, n, cuts, nc, &t), 0);
    same_result(ret, &t, "random splits");
    sink_clear(&t);
  }
  free(cuts);
}

static void expect_scan(const char *ct, const char *in, const char *want, unsigned calls) {
  struct sink s;
  scan_all_splits(ct, in, strlen(in), &s);
  if (s.len != strlen(want) || (s.len && memcmp(s.out, want, s.len) != 0))
    fail_msg("content type %s\n in:   %s\n want: %s\n got:  %.*s", ct, in, want, (int)s.len, s.out);
  assert_int_equal(s.k, calls);
  sink_clear(&s);
}

static size_t b64_decode(const char *in, unsigned char *out) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  for (; *in && *in != '='; in++) {
    const char *p = strchr(tab, *in);
    assert_non_null(p);
    acc = acc << 6 | (uint32_t)(p - tab);
    if ((bits += 6) >= 8) out[o++] = (unsigned char)(acc >> (bits -= 8));
  }
  return o;
}

/* ---- content types -----------------------------------------------------------------------------
 */

static void test_mode_for(void **state) {
  static const struct {
    const char *ct;
    evs__dscan_mode m;
  } t[] = {
      {"application/json", EVS__DSCAN_MODE_JSON},
      {"Application/JSON; charset=utf-8", EVS__DSCAN_MODE_JSON},
      {"application/problem+json", EVS__DSCAN_MODE_JSON},
      {"application/vnd.api+json", EVS__DSCAN_MODE_JSON},
      {"application/x-ndjson", EVS__DSCAN_MODE_JSON},
      {"text/json", EVS__DSCAN_MODE_JSON},
      {"application/xml", EVS__DSCAN_MODE_XML},
      {"text/xml; charset=\"utf-8\"", EVS__DSCAN_MODE_XML},
      {"application/soap+xml", EVS__DSCAN_MODE_XML},
      {"text/html", EVS__DSCAN_MODE_XML},
      {"application/x-www-form-urlencoded", EVS__DSCAN_MODE_FORM},
      {"text/plain", EVS__DSCAN_MODE_TEXT},
      {"text/csv", EVS__DSCAN_MODE_TEXT},
      {"application/javascript", EVS__DSCAN_MODE_TEXT},
      {"application/x-custom; charset=utf-8", EVS__DSCAN_MODE_TEXT},
      {"multipart/form-data; boundary=abc", EVS__DSCAN_MODE_MULTIPART},
      {"multipart/mixed; boundary=abc", EVS__DSCAN_MODE_MULTIPART},
      {"multipart/byteranges; boundary=abc", EVS__DSCAN_MODE_RAW},
      {"image/png", EVS__DSCAN_MODE_RAW},
      {"application/octet-stream", EVS__DSCAN_MODE_RAW},
      {"application/pdf", EVS__DSCAN_MODE_RAW},
      {"", EVS__DSCAN_MODE_RAW},
      {"json", EVS__DSCAN_MODE_RAW},
      {"/json", EVS__DSCAN_MODE_RAW},
      {"application/jsonx", EVS__DSCAN_MODE_RAW},
  };
  (void)state;
  assert_int_equal(evs__decrypt_scan_mode_for(NULL), EVS__DSCAN_MODE_RAW);
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
    if (evs__decrypt_scan_mode_for(t[i].ct) != t[i].m)
      fail_msg("%s: mode %d, want %d", t[i].ct, evs__decrypt_scan_mode_for(t[i].ct), t[i].m);
}

static void test_effective_mode(void **state) {
  static const struct {
    const char *ct;
    evs__dscan_mode m;
  } t[] = {
      {"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxk", EVS__DSCAN_MODE_MULTIPART},
      {"multipart/form-data; charset=utf-8; BOUNDARY=\"a b:c\"", EVS__DSCAN_MODE_MULTIPART},
      {"multipart/form-data", EVS__DSCAN_MODE_TEXT},
      {"multipart/form-data; boundary=", EVS__DSCAN_MODE_TEXT},
      {"multipart/form-data; boundary=\"\"", EVS__DSCAN_MODE_TEXT},
      {"multipart/form-data; "
       "boundary=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaa",
       EVS__DSCAN_MODE_TEXT}, /* 71 bytes */
      {"application/json", EVS__DSCAN_MODE_JSON},
  };
  (void)state;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    struct sink s;
    evs__decrypt_scan *sc = NULL;
    memset(&s, 0, sizeof s);
    assert_int_equal(evs__decrypt_scan_new(t[i].ct, NULL, sink_emit, sink_transform, &s, &sc), 0);
    if (evs__decrypt_scan_mode(sc) != t[i].m)
      fail_msg("%s: mode %d, want %d", t[i].ct, evs__decrypt_scan_mode(sc), t[i].m);
    evs__decrypt_scan_free(sc);
  }
}

/* ---- JSON ------------------------------------------------------------------------------------ */

static void test_json(void **state) {
  struct sink s;
  static const char doc[] =
      "{\"name\":\"" EV_STR "\", \"age\" : \"" EV_NUM "\",\n"
      " \"" EV_P256 "\": \"key is not replaced\",\n"
      " \"list\":[\"" EV_P256 "\", 1, \"plain\", {\"deep\":[[\"" EV_ROLE "\"]]}],\n"
      " \"esc\":\"quote \\\" then " EV_STR "\", \"after\":\"" EV_STR "\",\n"
      " \"bs\":\"\\\\\", \"t\":\"" EV_STR "\",\n"
      " \"inside\":\"x" EV_STR "\", \"prefix\":\"" EV_STR " \",\n"
      " \"php\":\"ev:RFVC:5jrQ0HYlzf3IyTty:A8cM4Q\\/dbcc:T5Px:$\"}";
  static const char want[] = "{\"name\":\"#0\", \"age\" : \"#1\",\n"
                             " \"" EV_P256 "\": \"key is not replaced\",\n"
                             " \"list\":[\"#2\", 1, \"plain\", {\"deep\":[[\"#3\"]]}],\n"
                             " \"esc\":\"quote \\\" then " EV_STR "\", \"after\":\"#4\",\n"
                             " \"bs\":\"\\\\\", \"t\":\"#5\",\n"
                             " \"inside\":\"x" EV_STR "\", \"prefix\":\"" EV_STR " \",\n"
                             " \"php\":\"#6\"}";
  (void)state;
  scan_all_splits("application/json", doc, strlen(doc), &s);
  if (strcmp(s.out, want) != 0) fail_msg("got %s", s.out);
  assert_int_equal(s.k, 7);
  for (unsigned i = 0; i < s.k; i++)
    assert_int_equal(s.calls[i].kind, EVS__DSCAN_STRING_JSON);
  assert_string_equal(s.calls[0].value, EV_STR);
  assert_string_equal(s.calls[1].value, EV_NUM);
  assert_string_equal(s.calls[2].value, EV_P256);
  assert_string_equal(s.calls[3].value, EV_ROLE);
  assert_string_equal(s.calls[6].value, "ev:RFVC:5jrQ0HYlzf3IyTty:A8cM4Q/dbcc:T5Px:$");
  sink_clear(&s);

  /* top-level string, ndjson lines, a key after a nested value */
  expect_scan("application/json", "\"" EV_STR "\"", "\"#0\"", 1);
  expect_scan("application/x-ndjson", "{\"a\":\"" EV_STR "\"}\n\"" EV_NUM "\"\n",
              "{\"a\":\"#0\"}\n\"#1\"\n", 2);
  expect_scan("application/json", "{\"a\":{\"b\":[]},\"" EV_STR "\":\"" EV_STR "\"}",
              "{\"a\":{\"b\":[]},\"" EV_STR "\":\"#0\"}", 1);
  expect_scan("application/json", "[{\"" EV_STR "\":1},\"" EV_STR "\"]",
              "[{\"" EV_STR "\":1},\"#0\"]", 1);
  /* other escapes make it an ordinary string */
  expect_scan("application/json", "[\"ev:RFVC:a:b:c\\u003a$\",\"ev:RFVC:a\\nb:c:d:$\"]",
              "[\"ev:RFVC:a:b:c\\u003a$\",\"ev:RFVC:a\\nb:c:d:$\"]", 0);
}

static void test_json_deep(void **state) {
  /* Beyond the remembered depth strings are left alone; back above it they are found again. */
  size_t d = 1100, n = 0;
  char *doc = malloc(2 * d + 3 * sizeof(EV_STR) + 64),
       *want = malloc(2 * d + 2 * sizeof(EV_STR) + 64);
  char *p;
  struct sink s;
  (void)state;
  assert_non_null(doc);
  assert_non_null(want);
  p = doc;
  for (size_t i = 0; i < d; i++)
    *p++ = '[';
  p += sprintf(p, "\"%s\"", EV_STR);
  for (size_t i = 0; i < d - 10; i++)
    *p++ = ']';
  p += sprintf(p, ",\"%s\"", EV_STR);
  for (size_t i = 0; i < 10; i++)
    *p++ = ']';
  n = (size_t)(p - doc);
  memset(&s, 0, sizeof s);
  assert_int_equal(scan_whole("application/json", doc, n, &s), 0);
  p = want;
  for (size_t i = 0; i < d; i++)
    *p++ = '[';
  p += sprintf(p, "\"%s\"", EV_STR);
  for (size_t i = 0; i < d - 10; i++)
    *p++ = ']';
  p += sprintf(p, ",\"#0\"");
  for (size_t i = 0; i < 10; i++)
    *p++ = ']';
  assert_int_equal(s.len, (size_t)(p - want));
  assert_memory_equal(s.out, want, s.len);
  assert_int_equal(s.k, 1);
  sink_clear(&s);
  free(doc);
  free(want);
}

/* ---- text, XML, form --------------------------------------------------------------------------
 */

static void test_text(void **state) {
  (void)state;
  expect_scan("application/xml",
              "<?xml version=\"1.0\"?><r><card>" EV_STR "</card><n a=\"" EV_NUM "\"/></r>",
              "<?xml version=\"1.0\"?><r><card>[3#0]</card><n a=\"[3#1]\"/></r>", 2);
  expect_scan("text/plain", EV_STR, "[2#0]", 1);
  expect_scan("text/plain", "card: " EV_STR "\nssn=" EV_P256 ";x(" EV_ROLE ")" EV_STR "tail",
              "card: [2#0]\nssn=[2#1];x([2#2])[2#3]tail", 4);
  /* "$" ends a token: what follows is not part of it */
  expect_scan("text/plain", EV_STR EV_STR, "[2#0][2#1]", 2);
  expect_scan("text/plain", EV_STR "x", "[2#0]x", 1);
  /* not after a letter or digit */
  expect_scan("text/plain", "prev:RFVC:a:b:c:d:$ 1" EV_STR, "prev:RFVC:a:b:c:d:$ 1" EV_STR, 0);
  expect_scan("text/plain", "x-" EV_STR, "x-[2#0]", 1);
  expect_scan("text/plain", "eev:RFVC:a:b:c:d:$ ev-" EV_STR, "eev:RFVC:a:b:c:d:$ ev-[2#0]", 1);
  expect_scan("text/html", "<p>" EV_STR "</p>", "<p>[3#0]</p>", 1);
  /* urlencoded: plain and percent-encoded tokens; the transform gets the decoded string */
  {
    struct sink s;
    static const char in[] =
        "a=" EV_STR "&b=ev%3ARFVC%3Anumber%3AmX%2Fd%2BsHopDwAvzFr%3AA8cM4Q%2Fdbcc%3A7dRM%3a%24&c=1";
    scan_all_splits("application/x-www-form-urlencoded", in, strlen(in), &s);
    assert_string_equal(s.out, "a=[4#0]&b=[4#1]&c=1");
    assert_int_equal(s.k, 2);
    assert_int_equal(s.calls[0].kind, EVS__DSCAN_FORM);
    assert_string_equal(s.calls[0].value, EV_STR);
    assert_string_equal(s.calls[1].value, "ev:RFVC:number:mX/d+sHopDwAvzFr:A8cM4Q/dbcc:7dRM:$");
    sink_clear(&s);
  }
  expect_scan("application/x-www-form-urlencoded", "a=ev%3Ax%3Ay%3Az%3Aw%3G%24&b=ev%3",
              "a=ev%3Ax%3Ay%3Az%3Aw%3G%24&b=ev%3", 0);
  /* percent escapes are plain bytes outside urlencoded bodies */
  expect_scan("text/plain", "ev%3ARFVC%3Aa%3Ab%3Ac%3Ad%3A%24", "ev%3ARFVC%3Aa%3Ab%3Ac%3Ad%3A%24",
              0);
}

static void test_near_misses(void **state) {
  static const char *const miss[] = {
      EV_NOEND,                   /* no :$ */
      "ev:RFVC:a:b:$",            /* 4 colons */
      "ev:RFVC:number:a:b:c:d:$", /* 7 colons */
      "ev:RFVC::a:b:c:$",         /* empty segment */
      "ev::RFVC:a:b:c:$",         /* empty segment */
      "ev:RFVC:a:b:c:d$",         /* $ not after : */
      "ev:RFVC:a:b:c:d:",         /* ends without $ */
      "ev:RFVC:a!b:c:d:e:$",      /* invalid character */
      "ev:RFVC:a b:c:d:e:$",      /* space */
      "ev:RFVC:\xc3\xa9:b:c:d:$", /* non-ASCII */
      "eV:RFVC:a:b:c:d:$",        /* case */
      "ev;RFVC:a:b:c:d:$",
      "e",
      "ev",
      "ev:",
      "ev:$",
      ":$",
  };
  (void)state;
  for (size_t i = 0; i < sizeof miss / sizeof miss[0]; i++) {
    char buf[512];
    snprintf(buf, sizeof buf, "x %s y", miss[i]);
    expect_scan("text/plain", buf, buf, 0);
    expect_scan("application/xml", miss[i], miss[i], 0);
    snprintf(buf, sizeof buf, "{\"k\":\"%s\",\"l\":[\"%s\"]}", miss[i], miss[i]);
    expect_scan("application/json", buf, buf, 0);
  }
  /* a failed run is passed whole: a token-like tail inside it is not looked for */
  expect_scan("text/plain", "ev:x:" EV_STR, "ev:x:" EV_STR, 0);
  /* ...but a separator ends the run */
  expect_scan("text/plain", "ev:x " EV_STR, "ev:x [2#0]", 1);
}

/* ---- multipart and files --------------------------------------------------------------------- */

static void test_multipart(void **state) {
  unsigned char file[256];
  size_t flen = b64_decode(file_b64, file);
  static const char png[] = "\x89PNG\r\n\x1a\n\0\0\0\rIHDR ev:RFVC:a:b:c:d:$ \r\n--X\r";
  char body[2048];
  char want[2048];
  size_t n = 0, wn = 0;
  struct sink s;
  const char *ct = "multipart/form-data; boundary=\"bnd-42\"";
  (void)state;
  assert_int_equal(flen, 84);
  assert_memory_equal(file, "%EVENC\x03", 7);
#define ADD(b, len, str, l) (memcpy((b) + (len), (str), (l)), (len) += (l))
#define BOTH(str, l) (ADD(body, n, str, l), ADD(want, wn, str, l))
  BOTH("preamble " EV_STR "\r\n", strlen("preamble " EV_STR "\r\n"));
  BOTH("--bnd-42\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.pdf\"\r\n"
       "Content-Type: application/pdf\r\n\r\n",
       strlen("--bnd-42\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.pdf\"\r\n"
              "Content-Type: application/pdf\r\n\r\n"));
  ADD(body, n, (const char *)file, flen);
  ADD(want, wn, "<file#0>", 8);
  BOTH("\r\n--bnd-42\r\nContent-Disposition: form-data; name=\"card\"\r\n\r\n",
       strlen("\r\n--bnd-42\r\nContent-Disposition: form-data; name=\"card\"\r\n\r\n"));
  ADD(body, n, "x " EV_STR, strlen("x " EV_STR));
  ADD(want, wn, "x [2#1]", 7);
  BOTH("\r\n--bnd-42\r\ncontent-type: application/json\r\n\r\n",
       strlen("\r\n--bnd-42\r\ncontent-type: application/json\r\n\r\n"));
  ADD(body, n, "{\"" EV_STR "\":\"" EV_NUM "\"}", strlen("{\"" EV_STR "\":\"" EV_NUM "\"}"));
  ADD(want, wn, "{\"" EV_STR "\":\"#2\"}", strlen("{\"" EV_STR "\":\"#2\"}"));
  BOTH("\r\n--bnd-42\r\nContent-Type: image/png\r\n\r\n",
       strlen("\r\n--bnd-42\r\nContent-Type: image/png\r\n\r\n"));
  BOTH(png, sizeof png - 1);
  BOTH("\r\n--bnd-42\r\n\r\n%EVEN", strlen("\r\n--bnd-42\r\n\r\n%EVEN"));
  BOTH("\r\n--bnd-42--\r\nepilogue " EV_STR, strlen("\r\n--bnd-42--\r\nepilogue " EV_STR));
  scan_all_splits(ct, body, n, &s);
  if (s.len != wn || memcmp(s.out, want, wn) != 0) fail_msg("got %.*s", (int)s.len, s.out);
  assert_int_equal(s.k, 3);
  assert_int_equal(s.calls[0].kind, EVS__DSCAN_FILE);
  assert_int_equal(s.calls[0].len, flen);
  assert_memory_equal(s.calls[0].value, file, flen);
  assert_int_equal(s.calls[1].kind, EVS__DSCAN_TEXT);
  assert_string_equal(s.calls[1].value, EV_STR);
  assert_int_equal(s.calls[2].kind, EVS__DSCAN_STRING_JSON);
  assert_string_equal(s.calls[2].value, EV_NUM);
  sink_clear(&s);

  /* no preamble; an empty part; an unterminated file part is still handed over at the end */
  n = wn = 0;
  BOTH("--b\r\n\r\n\r\n--b\r\nX: y\r\n\r\n", strlen("--b\r\n\r\n\r\n--b\r\nX: y\r\n\r\n"));
  ADD(body, n, (const char *)file, flen);
  ADD(want, wn, "<file#0>", 8);
  scan_all_splits("multipart/mixed; boundary=b", body, n, &s);
  if (s.len != wn || memcmp(s.out, want, wn) != 0) fail_msg("got %.*s", (int)s.len, s.out);
  assert_int_equal(s.k, 1);
  sink_clear(&s);
  /* without a boundary it is text */
  expect_scan("multipart/form-data", "--b\r\n\r\n" EV_STR "\r\n--b--", "--b\r\n\r\n[2#0]\r\n--b--",
              1);
#undef BOTH
#undef ADD
}

static void test_raw(void **state) {
  unsigned char file[256];
  size_t flen = b64_decode(file_b64, file);
  static const char png[] = "\x89PNG\r\n\x1a\n\0\0\0\rIHDR %EVENC ev:RFVC:a:b:c:d:$";
  struct sink s;
  (void)state;
  scan_all_splits("application/octet-stream", (const char *)file, flen, &s);
  assert_int_equal(s.k, 1);
  assert_int_equal(s.calls[0].kind, EVS__DSCAN_FILE);
  assert_int_equal(s.calls[0].len, flen);
  assert_memory_equal(s.calls[0].value, file, flen);
  assert_string_equal(s.out, "<file#0>");
  sink_clear(&s);
  scan_all_splits(NULL, (const char *)file, flen, &s);
  assert_int_equal(s.k, 1);
  sink_clear(&s);

  /* not a file: untouched, nothing buffered */
  {
    evs__decrypt_scan *sc = NULL;
    memset(&s, 0, sizeof s);
    assert_int_equal(evs__decrypt_scan_new("image/png", NULL, sink_emit, sink_transform, &s, &sc),
                     0);
    assert_int_equal(evs__decrypt_scan_feed(sc, png, sizeof png - 1), 0);
    assert_int_equal(s.len, sizeof png - 1); /* all out before finish */
    assert_int_equal(evs__decrypt_scan_finish(sc), 0);
    assert_int_equal(s.len, sizeof png - 1);
    assert_memory_equal(s.out, png, s.len);
    assert_int_equal(s.k, 0);
    assert_int_equal(evs__decrypt_scan_mem_high_water(sc), 0);
    assert_int_equal(evs__decrypt_scan_values_found(sc), 0);
    evs__decrypt_scan_free(sc);
    sink_clear(&s);
  }
  expect_scan("image/png", "%EVEN", "%EVEN", 0);
  expect_scan("image/png", "%EVEN%EVENC", "%EVEN%EVENC", 0);
  expect_scan("image/png", "", "", 0);
  /* text types never take files */
  expect_scan("text/plain", "%EVENC\x03", "%EVENC\x03", 0);
}

/* ---- async ----------------------------------------------------------------------------------- */

static void test_deferred(void **state) {
  unsigned char file[256];
  size_t flen = b64_decode(file_b64, file);
  static const char doc[] = "[\"" EV_STR "\",{\"a\":\"" EV_NUM "\",\"b\":\"" EV_P256 "\"},\"x\"]";
  struct {
    const char *ct;
    const char *in;
    size_t n;
  } cases[] = {
      {"application/json", doc, sizeof doc - 1},
      {"text/plain", doc, sizeof doc - 1},
      {"image/png", (const char *)file, flen},
  };
  (void)state;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    struct sink sync, async;
    evs__decrypt_scan *sc = NULL;
    char joined[1024];
    size_t jl = 0, last = 0;
    memset(&sync, 0, sizeof sync);
    assert_int_equal(scan_whole(cases[c].ct, cases[c].in, cases[c].n, &sync), 0);
    assert_true(sync.k > 0);
    memset(&async, 0, sizeof async);
    async.defer = true;
    assert_int_equal(
        evs__decrypt_scan_new(cases[c].ct, NULL, sink_emit, sink_transform, &async, &sc), 0);
    for (size_t i = 0; i < cases[c].n; i++)
      assert_int_equal(evs__decrypt_scan_feed(sc, cases[c].in + i, 1), 0);
    assert_int_equal(evs__decrypt_scan_finish(sc), 0);
    assert_int_equal(evs__decrypt_scan_values_found(sc), sync.k);
    evs__decrypt_scan_free(sc);
    assert_int_equal(async.k, sync.k);
    for (unsigned k = 0; k < async.k; k++) { /* the batch came back: fill the holes */
      char m[64];
      int ml = marker(m, sizeof m, async.calls[k].kind, k);
      if (async.holes[k] > last) memcpy(joined + jl, async.out + last, async.holes[k] - last);
      jl += async.holes[k] - last;
      memcpy(joined + jl, m, (size_t)ml);
      jl += (size_t)ml;
      last = async.holes[k];
    }
    if (async.len > last) memcpy(joined + jl, async.out + last, async.len - last);
    jl += async.len - last;
    assert_int_equal(jl, sync.len);
    assert_memory_equal(joined, sync.out, jl);
    sink_clear(&sync);
    sink_clear(&async);
  }
}

/* ---- limits and errors ----------------------------------------------------------------------- */

static void test_caps(void **state) {
  struct evs__decrypt_scan_opts o = {sizeof o, 64, 100};
  unsigned char file[256];
  size_t flen = b64_decode(file_b64, file);
  static const char big[] = "x " EV_STR " y ev:RFVC:a:b:c:d:$";
  static const char bigj[] = "[\"" EV_STR "\",\"ev:RFVC:a:b:c:d:$\"]";
  struct sink s;
  size_t cuts[1];
  (void)state;
  /* an over-long candidate passes unchanged; a short one after it is still found */
  for (size_t i = 0; i <= sizeof big - 1; i++) {
    memset(&s, 0, sizeof s);
    cuts[0] = i;
    assert_int_equal(scan_cuts("text/plain", &o, big, sizeof big - 1, cuts, 1, &s), 0);
    assert_string_equal(s.out, "x " EV_STR " y [2#0]");
    assert_int_equal(s.k, 1);
    sink_clear(&s);
  }
  for (size_t i = 0; i <= sizeof bigj - 1; i++) {
    memset(&s, 0, sizeof s);
    cuts[0] = i;
    assert_int_equal(scan_cuts("application/json", &o, bigj, sizeof bigj - 1, cuts, 1, &s), 0);
    assert_string_equal(s.out, "[\"" EV_STR "\",\"#0\"]");
    sink_clear(&s);
  }
  /* JSON: a candidate of max_token bytes with its quotes is a token, one byte more is not
   * (the long base64 field crosses the limit inside a run, at every cut) */
  for (size_t extra = 0; extra <= 1; extra++) {
    char tok[128], doc[160];
    size_t k = 46 + extra; /* 2 quotes + "ev:RFVC:" + k + ":b:c:d:$" = 64 + extra bytes */
    memcpy(tok, "ev:RFVC:", 8);
    memset(tok + 8, 'A', k);
    memcpy(tok + 8 + k, ":b:c:d:$", 9);
    int n = snprintf(doc, sizeof doc, "{\"a\":\"%s\"}", tok);
    for (size_t i = 0; i <= (size_t)n; i++) {
      memset(&s, 0, sizeof s);
      cuts[0] = i;
      assert_int_equal(scan_cuts("application/json", &o, doc, (size_t)n, cuts, 1, &s), 0);
      assert_string_equal(s.out, extra ? doc : "{\"a\":\"#0\"}");
      assert_int_equal(s.k, extra ? 0 : 1);
      sink_clear(&s);
    }
  }
  /* a file over the cap is an error (in raw bodies and parts), at the cap it is not */
  o.max_file = flen - 1;
  memset(&s, 0, sizeof s);
  assert_int_equal(scan_cuts("image/png", &o, (const char *)file, flen, NULL, 0, &s),
                   EVS__DSCAN_E_TOOBIG);
  assert_int_equal(s.k, 0);
  assert_int_equal(s.len, 0);
  sink_clear(&s);
  {
    char body[512];
    size_t n = 0;
    memcpy(body, "--b\r\n\r\n", 7);
    n = 7;
    memcpy(body + n, file, flen);
    n += flen;
    memcpy(body + n, "\r\n--b--", 7);
    n += 7;
    assert_int_equal(scan_cuts("multipart/form-data; boundary=b", &o, body, n, NULL, 0, &s),
                     EVS__DSCAN_E_TOOBIG);
    sink_clear(&s);
    o.max_file = flen;
    assert_int_equal(scan_cuts("multipart/form-data; boundary=b", &o, body, n, NULL, 0, &s), 0);
    assert_string_equal(s.out, "--b\r\n\r\n<file#0>\r\n--b--");
    sink_clear(&s);
  }
  assert_int_equal(scan_cuts("image/png", &o, (const char *)file, flen, NULL, 0, &s), 0);
  assert_int_equal(s.k, 1);
  sink_clear(&s);
  assert_string_equal(evs__decrypt_scan_strerror(EVS__DSCAN_E_TOOBIG), "encrypted file too large");
}

/* A large body with many tokens, fed in 64 KiB pieces: memory stays near one token. */
static void test_bounded_memory(void **state) {
  size_t total = 0, target = 8u << 20, hw;
  char *chunk = malloc(65536 + 512);
  struct sink s;
  evs__decrypt_scan *sc = NULL;
  uint64_t tokens = 0;
  (void)state;
  assert_non_null(chunk);
  memset(&s, 0, sizeof s);
  s.defer = true; /* nothing emitted for values; the sink stores only pass-through */
  assert_int_equal(
      evs__decrypt_scan_new("application/json", NULL, sink_emit, sink_transform, &s, &sc), 0);
  assert_int_equal(evs__decrypt_scan_feed(sc, "[", 1), 0);
  while (total < target) {
    size_t fill = 0;
    while (fill < 65536) {
      fill += (size_t)sprintf(chunk + fill, "\"%s\",{\"k\":\"v\"},", EV_STR);
      tokens++;
    }
    /* cut mid-token so a candidate is held across feeds */
    assert_int_equal(evs__decrypt_scan_feed(sc, chunk, fill - 20), 0);
    assert_int_equal(evs__decrypt_scan_feed(sc, chunk + fill - 20, 20), 0);
    total += fill;
    free(s.out); /* keep the sink small */
    s.out = NULL;
    s.len = s.cap = 0;
    for (unsigned i = 0; i < s.k && i < 64; i++) {
      free(s.calls[i].value);
      s.calls[i].value = NULL;
    }
    s.k = 64; /* stop recording calls */
  }
  assert_int_equal(evs__decrypt_scan_feed(sc, "1]", 2), 0);
  assert_int_equal(evs__decrypt_scan_finish(sc), 0);
  assert_int_equal(evs__decrypt_scan_values_found(sc), tokens);
  hw = evs__decrypt_scan_mem_high_water(sc);
  if (hw == 0 || hw > 1024) fail_msg("high water %zu bytes", hw);
  evs__decrypt_scan_free(sc);
  free(s.out);
  free(chunk);
}

static void test_errors(void **state) {
  struct sink s;
  evs__decrypt_scan *sc = NULL;
  struct evs__decrypt_scan_opts bad = {1, 0, 0};
  static const char doc[] = "[\"" EV_STR "\",\"" EV_STR "\"]";
  (void)state;
  memset(&s, 0, sizeof s);
  assert_int_equal(evs__decrypt_scan_new("text/plain", NULL, NULL, sink_transform, &s, &sc),
                   -EINVAL);
  assert_int_equal(evs__decrypt_scan_new("text/plain", &bad, sink_emit, sink_transform, &s, &sc),
                   -EINVAL);
  /* a failing transform aborts and poisons */
  s.fail_at = 2;
  assert_int_equal(
      evs__decrypt_scan_new("application/json", NULL, sink_emit, sink_transform, &s, &sc), 0);
  assert_int_equal(evs__decrypt_scan_feed(sc, doc, sizeof doc - 1), -EIO);
  assert_int_equal(evs__decrypt_scan_feed(sc, "x", 1), -EIO);
  assert_int_equal(evs__decrypt_scan_finish(sc), -EIO);
  assert_int_equal(s.k, 2);
  evs__decrypt_scan_free(sc);
  sink_clear(&s);
  /* feed after finish */
  assert_int_equal(evs__decrypt_scan_new("text/plain", NULL, sink_emit, sink_transform, &s, &sc),
                   0);
  assert_int_equal(evs__decrypt_scan_feed(sc, "a", 1), 0);
  assert_int_equal(evs__decrypt_scan_finish(sc), 0);
  assert_int_equal(evs__decrypt_scan_feed(sc, "b", 1), -EINVAL);
  evs__decrypt_scan_free(sc);
  evs__decrypt_scan_free(NULL);
  sink_clear(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mode_for),       cmocka_unit_test(test_effective_mode),
      cmocka_unit_test(test_json),           cmocka_unit_test(test_json_deep),
      cmocka_unit_test(test_text),           cmocka_unit_test(test_near_misses),
      cmocka_unit_test(test_multipart),      cmocka_unit_test(test_raw),
      cmocka_unit_test(test_deferred),       cmocka_unit_test(test_caps),
      cmocka_unit_test(test_bounded_memory), cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
