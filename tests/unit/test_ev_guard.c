/*
 * Unit tests for plugins/relay-common/ev_guard.c: every spelling of an ev: string or a %EVENC
 * file a destination could decode (raw, JSON escapes, percent-encoding, character references,
 * two of them nested) is found, in any split of the input; near misses and ordinary text are
 * not. The property test re-spells real-looking tokens at random and checks each is found.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ev_guard.h"

#define TOKEN "ev:RFVC:Ak3Xl+/y_-=:AAAA:BBBB=:$"
#define TOKEN7 "ev:RFVC:number:Ak3Xl:AAAA:BBBB:CCCC:$"

/* Found in one piece and in every split into two pieces, and byte by byte. */
static size_t found_all_splits(const char *s) {
  size_t n = strlen(s), whole = evs__ev_guard_scan(s, n);
  for (size_t cut = 0; cut <= n; cut++) {
    evs__ev_guard g;
    evs__ev_guard_init(&g);
    evs__ev_guard_feed(&g, s, cut);
    evs__ev_guard_feed(&g, s + cut, n - cut);
    assert_int_equal(evs__ev_guard_finish(&g), whole);
  }
  evs__ev_guard g;
  evs__ev_guard_init(&g);
  for (size_t i = 0; i < n; i++) evs__ev_guard_feed(&g, s + i, 1);
  assert_int_equal(evs__ev_guard_finish(&g), whole);
  return whole;
}

static void test_spellings_found(void **state) {
  (void)state;
  static const char *const hits[] = {
      TOKEN,
      TOKEN7,
      "{\"x\":\"" TOKEN "\"}",
      "x=" TOKEN "&y=1",
      "<a>" TOKEN "</a>",
      "prefix" TOKEN "suffix",
      /* JSON escapes */
      "{\"x\":\"\\u0065v:RFVC:Ak3X:AAAA:BBBB:\\u0024\"}",
      "{\"x\":\"\\u0065\\u0076\\u003aRFVC:Ak3X:AAAA:BBBB:$\"}",
      "{\"x\":\"ev:RFVC:Ak3X\\/y:AAAA:BBBB:$\"}",
      /* percent-encoding, either case */
      "x=%65v%3ARFVC%3aAk3X%3AAAAA%3ABBBB%3A%24",
      "/path/%65v:RFVC:Ak3X:AAAA:BBBB:$/more",
      /* XML and HTML character references */
      "<a>&#101;v&#58;RFVC:Ak3X:AAAA:BBBB:&#x24;</a>",
      "<a>&#x65;v:RFVC:Ak3X:AAAA:BBBB&colon;&dollar;</a>",
      /* nested: percent of a JSON escape, percent of percent, reference of a reference */
      "x=%5Cu0065v:RFVC:Ak3X:AAAA:BBBB:$",
      "x=%2565v:RFVC:Ak3X:AAAA:BBBB:$",
      "<a>&amp;#101;v:RFVC:Ak3X:AAAA:BBBB:$</a>",
      /* escape starters just before a token */
      "\\" TOKEN,
      "%" TOKEN,
      "&" TOKEN,
      "&#" TOKEN,
      "\\u" TOKEN,
      /* files */
      "%EVENC\x01\x02\x03",
      "--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n%EVENC...\r\n--b--",
      "%25EVENC",
      "\\u0025EVENC",
      "%%EVENC",
  };
  for (size_t i = 0; i < sizeof hits / sizeof hits[0]; i++) {
    if (found_all_splits(hits[i]) == 0) fail_msg("not found: %s", hits[i]);
  }
}

static void test_near_misses_not_found(void **state) {
  (void)state;
  static const char *const misses[] = {
      "",
      "{\"name\":\"Claude Shannon\",\"ssn\":\"123-12-1234\"}",
      "ev:abc:$",                  /* too few ':' */
      "ev:a:b:c:d$",               /* no ':' before '$' */
      "ev:a:b:c:d:",               /* unfinished */
      "ev:a:b:c!d:e:$",            /* a character outside the alphabet */
      "eV:a:b:c:d:$",
      "%EVEN",
      "%45VENC",                   /* decodes to EVENC, without the '%' */
      "\\u00",                     /* unfinished escapes at the end */
      "&#x",
      "&unknown;ev",
      "plain text with e v : and $ signs",
  };
  for (size_t i = 0; i < sizeof misses / sizeof misses[0]; i++) {
    if (found_all_splits(misses[i]) != 0) fail_msg("found in: %s", misses[i]);
  }
}

static void test_counts_each_value(void **state) {
  (void)state;
  assert_int_equal(found_all_splits("[\"" TOKEN "\",\"" TOKEN "\",\"%EVENC\"]"), 3);
  /* '$' ends a value: one right after it is another. */
  assert_int_equal(found_all_splits(TOKEN TOKEN), 2);
  assert_int_equal(found_all_splits(TOKEN " " TOKEN), 2);
}

/* Property: a token re-spelled at random (each byte raw, %XX, \u00XX, &#N;, &#xH;, or two of
 * these nested) and placed in random text is found, in every split. */
static void respell(char *out, size_t cap, const char *tok, unsigned *seed) {
  size_t o = 0;
  for (const char *p = tok; *p; p++) {
    char one[64];
    unsigned char c = (unsigned char)*p;
    switch (rand_r(seed) % 6) {
    case 0: snprintf(one, sizeof one, "%c", c); break;
    case 1: snprintf(one, sizeof one, "%%%02X", c); break;
    case 2: snprintf(one, sizeof one, "\\u%04x", c); break;
    case 3: snprintf(one, sizeof one, "&#%u;", c); break;
    case 4: snprintf(one, sizeof one, "&#x%x;", c); break;
    default: snprintf(one, sizeof one, "%%25%02x", c); break; /* %XX, percent-encoded again */
    }
    size_t l = strlen(one);
    assert_true(o + l < cap);
    memcpy(out + o, one, l);
    o += l;
  }
  out[o] = 0;
}

static void test_property_respelled_tokens_found(void **state) {
  (void)state;
  static const char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-";
  /* (Not a backslash: it would escape the spelling's first byte, a third level.) */
  static const char *const around[] = {"", "x", "{\"a\":\"", "%", "&#", "&", " e", "ev"};
  unsigned seed = 12345;
  for (int round = 0; round < 2000; round++) {
    char tok[128], spelled[2048], text[2200];
    size_t t = 0;
    memcpy(tok, "ev:", 3);
    t = 3;
    int segs = 4 + rand_r(&seed) % 2; /* 5 or 6 ':' in all */
    for (int s = 0; s < segs; s++) {
      int len = 1 + rand_r(&seed) % 8;
      for (int k = 0; k < len; k++) tok[t++] = alphabet[rand_r(&seed) % (sizeof alphabet - 1)];
      tok[t++] = ':';
    }
    tok[t++] = '$';
    tok[t] = 0;
    respell(spelled, sizeof spelled, tok, &seed);
    snprintf(text, sizeof text, "%s%s\"}", around[rand_r(&seed) % 8], spelled);
    if (found_all_splits(text) == 0) fail_msg("not found: %s (from %s)", text, tok);
  }
}

/* The scan skips eight bytes at a time where none can start an escape or a value: a value or an
 * escape at every alignment, behind and before long plain runs, is still found. */
static void test_every_alignment(void **state) {
  (void)state;
  static const char *const inner[] = {TOKEN, "\\u0065v:RFVC:Ak3X:AAAA:BBBB:$", "%EVENC",
                                      "&#101;v:RFVC:Ak3X:AAAA:BBBB:$",
                                      "%65v:RFVC:Ak3X:AAAA:BBBB:$"};
  char buf[128];
  for (size_t k = 0; k < sizeof inner / sizeof inner[0]; k++) {
    for (size_t pad = 0; pad < 20; pad++) {
      memset(buf, 'x', pad);
      snprintf(buf + pad, sizeof buf - pad, "%s yyyyyyyyyyyyyyyy", inner[k]);
      assert_int_equal(found_all_splits(buf), 1);
    }
  }
  memset(buf, 'Z', sizeof buf - 1);
  buf[sizeof buf - 1] = 0;
  assert_int_equal(found_all_splits(buf), 0);
  /* The whole scan's last byte (no next one) against byte by byte, a value before it or not */
  static const char last[] = "e%\\&vx";
  for (size_t n = 16; n < 60; n++)
    for (size_t k = 0; k < sizeof last - 1; k++)
      for (int tok = 0; tok < 2; tok++) {
        memset(buf, 'y', n);
        if (tok && n > sizeof TOKEN) memcpy(buf + n - sizeof TOKEN, TOKEN, sizeof TOKEN - 1);
        buf[n - 1] = last[k];
        buf[n] = 0;
        assert_int_equal(found_all_splits(buf), tok && n > sizeof TOKEN ? 1 : 0);
      }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spellings_found),
      cmocka_unit_test(test_near_misses_not_found),
      cmocka_unit_test(test_counts_each_value),
      cmocka_unit_test(test_property_respelled_tokens_found),
      cmocka_unit_test(test_every_alignment),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
