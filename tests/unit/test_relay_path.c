/*
 * Unit tests for plugins/relay-common/relay_path.c: normal forms of a table of spellings (the
 * ones frameworks route alike, the ones refused as ambiguous or invalid), route patterns, the
 * readings of a path, and a property: random paths re-spelt at random (case, escapes of
 * unreserved characters, extra slashes, "./", "x/../", ";params", a trailing slash) have the
 * same normal form as the path and never escape a route the path matches.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_path.h"

#define ALLKEEP (EVS__PATH_KEEP_DOTS | EVS__PATH_KEEP_PARAMS | EVS__PATH_KEEP_EMPTY)

static const char *norm(const char *in, unsigned flags, int *ret) {
  static char out[4096];
  *ret = evs__path_normalize(in, strlen(in), out, sizeof out, flags);
  return out;
}

static void check(const char *in, unsigned flags, const char *want) {
  int rc;
  const char *got = norm(in, flags, &rc);
  if (rc < 0) fail_msg("%s (flags %u): error %d, want %s", in, flags, rc, want);
  if (strcmp(got, want) != 0) fail_msg("%s (flags %u): got %s, want %s", in, flags, got, want);
  assert_int_equal((size_t)rc, strlen(want));
}

static void check_err(const char *in, int want) {
  int rc;
  norm(in, 0, &rc);
  if (rc != want) fail_msg("%s: got %d, want %d", in, rc, want);
  for (unsigned f = 1; f < 16; f++) { /* refused alike in every reading */
    norm(in, f, &rc);
    assert_int_equal(rc, want);
  }
}

static void test_normalize_table(void **state) {
  (void)state;
  /* the spellings of issue 9 item 3 */
  check("/enc", 0, "/enc");
  check("/ENC", 0, "/ENC");
  check("/ENC", EVS__PATH_FOLD_CASE, "/enc");
  check("//enc", 0, "/enc");
  check("/%65nc", 0, "/enc");
  check("/%65NC", EVS__PATH_FOLD_CASE, "/enc");
  check("/x/../enc", 0, "/enc");
  check("/./enc", 0, "/enc");
  check("/enc;x=1", 0, "/enc");
  check("/enc/", 0, "/enc/");
  /* dot segments (RFC 3986 §5.2.4) */
  check("/", 0, "/");
  check("/..", 0, "/");
  check("/../..", 0, "/");
  check("/.", 0, "/");
  check("/a/b/..", 0, "/a/");
  check("/a/b/.", 0, "/a/b/");
  check("/a/./b/../c", 0, "/a/c");
  check("/a/.../b", 0, "/a/.../b");
  check("/a/.b/..c", 0, "/a/.b/..c");
  check("/x/%2e%2E/enc", 0, "/enc");
  check("/%2e/enc", 0, "/enc");
  check("/x/..;/enc", 0, "/enc");          /* Tomcat: parameters first, then dots */
  check("/a//../b", 0, "/b");              /* slashes merged first, as nginx and Tomcat */
  check("/a//../b", EVS__PATH_KEEP_EMPTY, "/a/b"); /* RFC 3986 alone */
  /* slashes, parameters */
  check("///a///b///", 0, "/a/b/");
  check("/a;p/b;q=1;r/c", 0, "/a/b/c");
  check("/;x/enc", 0, "/enc");
  check("/a%3Bp/b", 0, "/a/b");
  check("/a%3bp", EVS__PATH_KEEP_PARAMS, "/a;p");
  /* escapes: decoded when pchar, else upper-case hex; raw non-pchar bytes escaped */
  check("/%7e%41%2d%5F%2A%3a%40%21", 0, "/~A-_*:@!");
  check("/caf%c3%a9", 0, "/caf%C3%A9");
  check("/caf\xc3\xa9", 0, "/caf%C3%A9");
  check("/%7b{}%7D", 0, "/%7B%7B%7D%7D");
  check("/a%3fb%23c%20d", 0, "/a%3Fb%23c%20d");
  check("/%25", 0, "/%25");
  check("/%25zz", 0, "/%25zz");
  check("/%25a", 0, "/%25a");
  check("/%0a", 0, "/%0A");
  /* the KEEP readings */
  check("/x/../enc", EVS__PATH_KEEP_DOTS, "/x/../enc");
  check("/enc;x=1", EVS__PATH_KEEP_PARAMS, "/enc;x=1");
  check("//enc", EVS__PATH_KEEP_EMPTY, "//enc");
  check("/a//", EVS__PATH_KEEP_EMPTY, "/a//");
  check("/a//.", EVS__PATH_KEEP_EMPTY, "/a//");
  check("//x/.././enc;x//", ALLKEEP, "//x/.././enc;x//");
  /* ambiguous: refused */
  check_err("/a%2Fb", EVS__PATH_E_AMBIGUOUS);
  check_err("/a%2fb", EVS__PATH_E_AMBIGUOUS);
  check_err("/a\\b", EVS__PATH_E_AMBIGUOUS);
  check_err("/a%5cb", EVS__PATH_E_AMBIGUOUS);
  check_err("/enc%00", EVS__PATH_E_AMBIGUOUS);
  check_err("/%2565nc", EVS__PATH_E_AMBIGUOUS);
  check_err("/%25%36%35nc", EVS__PATH_E_AMBIGUOUS);
  check_err("/%25AB;x", EVS__PATH_E_AMBIGUOUS);
  /* invalid */
  check_err("", EVS__PATH_E_INVALID);
  check_err("enc", EVS__PATH_E_INVALID);
  check_err("*", EVS__PATH_E_INVALID);
  check_err("/%zz", EVS__PATH_E_INVALID);
  check_err("/%4", EVS__PATH_E_INVALID);
  check_err("/%", EVS__PATH_E_INVALID);
  check_err("/a b", EVS__PATH_E_INVALID);
  check_err("/a?b", EVS__PATH_E_INVALID);
  check_err("/a#b", EVS__PATH_E_INVALID);
  check_err("/a\tb", EVS__PATH_E_INVALID);
  /* the output never needs more than 3 * len + 2 */
  char small[8];
  assert_int_equal(evs__path_normalize("/abcdefgh", 9, small, sizeof small, 0),
                   EVS__PATH_E_NOSPACE);
  assert_int_equal(evs__path_normalize("/abcdef", 7, small, sizeof small, 0), 7);
  char tight[3 * 2 + 2];
  assert_int_equal(evs__path_normalize("/{", 2, tight, sizeof tight, 0), 4);
}

static void test_route_match(void **state) {
  (void)state;
  assert_true(evs__route_match("/enc", "/enc", 0));
  assert_true(evs__route_match("/enc", "/enc/", 0));
  assert_true(evs__route_match("/enc/", "/enc", 0));
  assert_true(evs__route_match("/enc", "/ENC", 0));
  assert_false(evs__route_match("/enc", "/ENC", 1));
  assert_true(evs__route_match("/ENC", "/enc", 0));
  assert_false(evs__route_match("/enc", "/enc/x", 0));
  assert_false(evs__route_match("/enc", "/encx", 0));
  assert_false(evs__route_match("/enc", "/", 0));
  assert_true(evs__route_match("/users/*", "/users/42", 0));
  assert_true(evs__route_match("/users/*", "/users/42/x", 0)); /* a trailing '*': the rest */
  assert_true(evs__route_match("/users/*/card", "/users/42/card", 0));
  assert_true(evs__route_match("/users/*/card", "/users/42/card/", 0));
  assert_false(evs__route_match("/users/*/card", "/users/42/x/card", 0));
  assert_true(evs__route_match("/users/*/card", "/users//card", 0)); /* '*' may be empty */
  assert_true(evs__route_match("/a/**", "/a/b/c", 0));
  assert_true(evs__route_match("/a/**", "/a", 0));
  assert_true(evs__route_match("/a/**", "/a/", 0));
  assert_false(evs__route_match("/a/**", "/ab", 0));
  assert_false(evs__route_match("/a/*", "/a", 0));
  assert_true(evs__route_match("/**", "/", 0));
  assert_true(evs__route_match("/*", "/", 0));
  assert_true(evs__route_match("/", "/", 0));
  assert_false(evs__route_match("/", "/a", 0));
  assert_true(evs__route_match("/caf%C3%A9", "/caf%C3%A9", 0));
}

static int views_match(const char *path, const char *pattern, int cs) {
  evs__path_views pv;
  int rc = evs__path_views_init(&pv, path, strlen(path), cs);
  if (rc < 0) return rc;
  int m = evs__path_views_match(&pv, pattern);
  evs__path_views_clear(&pv);
  return m;
}

static void test_views(void **state) {
  (void)state;
  static const char *const spellings[] = {"/enc",    "/ENC",   "//enc",  "/%65nc", "/x/../enc",
                                          "/./enc",  "/enc;x=1", "/enc/", "/Enc//", "/x/..;/enc",
                                          "/%2E/eNc", "///enc;a;b/.", "/a/b/../../enc"};
  for (size_t i = 0; i < sizeof spellings / sizeof *spellings; i++) {
    if (views_match(spellings[i], "/enc", 0) != 1) fail_msg("%s does not match /enc", spellings[i]);
    assert_int_equal(views_match(spellings[i], "/other", 0), 0);
  }
  assert_int_equal(views_match("/ENC", "/enc", 1), 0);
  assert_int_equal(views_match("/%65nc", "/enc", 1), 1);
  /* Readings that keep what the full normal form drops: frameworks that do not resolve dots
   * (Express) route /enc/../x under the pattern /enc/ and a star; frameworks that do not merge
   * slashes route /a//b under /a/ star /b. */
  assert_int_equal(views_match("/enc/../x", "/enc/*", 0), 1);
  assert_int_equal(views_match("/enc/%2e%2e/x", "/enc/**", 0), 1);
  assert_int_equal(views_match("/a//b", "/a/*/b", 0), 1);
  assert_int_equal(views_match("/a/;x/b", "/a/*/b", 0), 1);
  assert_int_equal(views_match("/a//b", "/a/b", 0), 1);
  assert_int_equal(views_match("/x/../enc", "/x/*/enc", 0), 1);
  /* refused and not-matching */
  assert_int_equal(views_match("/en%63%2Fx", "/enc", 0), EVS__PATH_E_AMBIGUOUS);
  assert_int_equal(views_match("/a/b", "/enc", 0), 0);
  /* a path with nothing to drop has one reading */
  evs__path_views pv;
  assert_int_equal(evs__path_views_init(&pv, "/a/b/", 5, 0), 0);
  assert_int_equal(pv.n, 1);
  evs__path_views_clear(&pv);
  assert_int_equal(evs__path_views_init(&pv, "/a;p/./b//../c", 14, 0), 0);
  assert_true(pv.n > 1 && pv.n <= 8);
  assert_string_equal(pv.v[0], "/a/c");
  for (size_t i = 0; i < pv.n; i++)
    for (size_t j = i + 1; j < pv.n; j++) assert_string_not_equal(pv.v[i], pv.v[j]);
  evs__path_views_clear(&pv);
  evs__path_views_clear(&pv); /* cleared twice is fine */
}

/* ---- property: re-spellings ------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static unsigned rnd(unsigned n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (unsigned)(rng_state % n);
}

static const char seg_chars[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~";

struct buf {
  char b[2048];
  size_t n;
};
static void put(struct buf *o, const char *s, size_t n) {
  assert_true(o->n + n < sizeof o->b);
  memcpy(o->b + o->n, s, n);
  o->n += n;
  o->b[o->n] = 0;
}
static void puts_(struct buf *o, const char *s) { put(o, s, strlen(s)); }

/* A segment that is neither "." nor "..". */
static void gen_seg(char *s, size_t cap) {
  size_t n;
  do {
    n = 1 + rnd((unsigned)(cap - 1 < 8 ? cap - 1 : 8));
    for (size_t i = 0; i < n; i++) s[i] = seg_chars[rnd(sizeof seg_chars - 1)];
    s[n] = 0;
  } while (strcmp(s, ".") == 0 || strcmp(s, "..") == 0);
}

static void respell_seg(struct buf *o, const char *seg) {
  static const char hx[] = "0123456789abcdef0123456789ABCDEF";
  for (const char *c = seg; *c; c++) {
    char ch = *c;
    if (rnd(4) == 0 && ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))) ch ^= 0x20;
    if (rnd(4) == 0) {
      char e[3] = {'%', hx[(unsigned char)ch >> 4 | (rnd(2) ? 16 : 0)],
                   hx[((unsigned char)ch & 15) | (rnd(2) ? 16 : 0)]};
      put(o, e, 3);
    } else {
      put(o, &ch, 1);
    }
  }
  if (rnd(6) == 0) puts_(o, rnd(2) ? ";x=1" : ";jsessionid=ab,c;d");
}

static void respell(struct buf *o, char segs[][16], size_t n, int trailing) {
  for (size_t i = 0; i < n; i++) {
    puts_(o, "/");
    while (rnd(5) == 0) puts_(o, "/");
    while (rnd(6) == 0) puts_(o, rnd(2) ? "./" : "%2E/");
    while (rnd(6) == 0) {
      char x[16];
      gen_seg(x, sizeof x);
      respell_seg(o, x);
      puts_(o, rnd(3) ? "/../" : "/.%2e;p/");
    }
    respell_seg(o, segs[i]);
  }
  if (trailing || n == 0 || rnd(5) == 0) puts_(o, "/");
  if (rnd(8) == 0) puts_(o, rnd(2) ? "/." : "//");
}

static void strip_trailing(char *s) {
  size_t n = strlen(s);
  if (n > 1 && s[n - 1] == '/') s[n - 1] = 0;
}

static void test_respellings(void **state) {
  (void)state;
  for (int iter = 0; iter < 20000; iter++) {
    char segs[6][16];
    size_t n = rnd(6);
    for (size_t i = 0; i < n; i++) gen_seg(segs[i], sizeof segs[i]);
    struct buf canon = {.n = 0}, sp = {.n = 0};
    for (size_t i = 0; i < n; i++) {
      puts_(&canon, "/");
      puts_(&canon, segs[i]);
    }
    if (n == 0) puts_(&canon, "/");
    respell(&sp, segs, n, 0);

    char a[4096], b[4096];
    int ra = evs__path_normalize(canon.b, canon.n, a, sizeof a, EVS__PATH_FOLD_CASE);
    int rb = evs__path_normalize(sp.b, sp.n, b, sizeof b, EVS__PATH_FOLD_CASE);
    assert_true(ra > 0 && rb > 0);
    strip_trailing(a);
    strip_trailing(b);
    if (strcmp(a, b) != 0) fail_msg("%s -> %s but %s -> %s", canon.b, a, sp.b, b);

    /* Patterns the canonical path matches: itself (case changed), one segment as '*', a
     * prefix and "**". The re-spelling must match each; and the full normal forms agree on
     * every pattern. */
    struct buf pats[4];
    memset(pats, 0, sizeof pats);
    size_t star = n ? rnd((unsigned)n) : 0, pre = rnd((unsigned)n + 1);
    for (size_t i = 0; i < n; i++) {
      puts_(&pats[0], "/");
      for (const char *c = segs[i]; *c; c++) {
        char ch = rnd(2) && ((*c | 0x20) >= 'a' && (*c | 0x20) <= 'z') ? (char)(*c ^ 0x20) : *c;
        put(&pats[0], &ch, 1);
      }
      puts_(&pats[1], "/");
      puts_(&pats[1], i == star ? "*" : segs[i]);
      if (i < pre) {
        puts_(&pats[2], "/");
        puts_(&pats[2], segs[i]);
      }
    }
    if (n == 0) {
      puts_(&pats[0], "/");
      puts_(&pats[1], "/*");
    }
    puts_(&pats[2], "/**");
    puts_(&pats[3], "/nomatch-here");
    for (int k = 0; k < 4; k++) {
      char pn[4096];
      assert_true(evs__path_normalize(pats[k].b, pats[k].n, pn, sizeof pn, 0) > 0);
      int mc = evs__route_match(pn, a, 0);
      assert_int_equal(mc, evs__route_match(pn, b, 0));
      if (k < 3 && !mc) fail_msg("%s does not match %s", a, pn);
      int mv = views_match(sp.b, pn, 0);
      if (mc && mv != 1) fail_msg("%s (%s) escapes %s", sp.b, b, pn);
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_normalize_table),
      cmocka_unit_test(test_route_match),
      cmocka_unit_test(test_views),
      cmocka_unit_test(test_respellings),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
