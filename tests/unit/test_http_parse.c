/*
 * Unit tests for core/http_parse.c: the head scanner, the strict request and response parsers
 * (request line, targets, versions, field syntax, Content-Length / Transfer-Encoding / Host
 * rules), the field helpers and hop-by-hop detection, and the incremental chunked decoder fed
 * whole, byte by byte and split at every position. Most tests are tables: one row per message,
 * with the result and (for the parser) the detail phrase naming the rule that must fire, so a
 * row cannot pass by failing for an unrelated reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http_parse.h"

#define MAXF 64
#define BIG_HEAD 65536

/* ---- helpers -------------------------------------------------------------------------------- */

static void head_init(evs__http_head *h, evs__http_field *f, size_t maxf) {
  memset(h, 0, sizeof(*h));
  h->fields = f;
  h->max_fields = maxf;
}

/* Printable rendering of raw bytes for failure messages. */
static const char *esc(const char *s, size_t n) {
  static char out[2048];
  size_t o = 0;
  for (size_t i = 0; i < n && o + 5 < sizeof(out); i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\r')
      o += (size_t)snprintf(out + o, sizeof(out) - o, "\\r");
    else if (c == '\n')
      o += (size_t)snprintf(out + o, sizeof(out) - o, "\\n");
    else if (c < 0x20 || c >= 0x7f || c == '\\')
      o += (size_t)snprintf(out + o, sizeof(out) - o, "\\x%02x", c);
    else
      out[o++] = (char)c;
  }
  out[o] = '\0';
  return out;
}

/* Scan, then parse what the scanner found, as the server does. Returns the first non-OK. */
static int request(const char *buf, size_t len, evs__http_head *h, const char **detail) {
  evs__http_scan sc;
  size_t hl = 0;
  memset(&sc, 0, sizeof(sc));
  int r = evs__http_scan_head(&sc, buf, len, BIG_HEAD, &hl);
  if (r != EVS_HTTP_OK)
    return r;
  return evs__http_parse_request_detail(buf, hl, h, detail);
}

static int response(const char *buf, size_t len, evs__http_head *h, const char **detail) {
  evs__http_scan sc;
  size_t hl = 0;
  memset(&sc, 0, sizeof(sc));
  int r = evs__http_scan_head(&sc, buf, len, BIG_HEAD, &hl);
  if (r != EVS_HTTP_OK)
    return r;
  return evs__http_parse_response_detail(buf, hl, h, detail);
}

struct msg_case {
  const char *raw;
  size_t len;
  int want;
  const char *detail; /* NULL: the scanner rejects (no detail) or the row expects success */
};
#define MC(s, w, d) {s, sizeof(s) - 1, w, d}

/*
 * Runs each row through scan+parse and checks the result and detail. Also runs the parser alone
 * on the raw bytes: it must agree in sign, so the parser never relies on the scanner for safety.
 */
static void run_cases(const struct msg_case *c, size_t n, int is_request) {
  int failures = 0;
  for (size_t i = 0; i < n; i++) {
    evs__http_field f[MAXF];
    evs__http_head h;
    const char *detail = NULL;
    head_init(&h, f, MAXF);
    int r = is_request ? request(c[i].raw, c[i].len, &h, &detail)
                       : response(c[i].raw, c[i].len, &h, &detail);
    int ok = r == c[i].want;
    if (c[i].detail != NULL && (detail == NULL || strcmp(detail, c[i].detail) != 0))
      ok = 0;
    head_init(&h, f, MAXF);
    int r2 = is_request ? evs__http_parse_request(c[i].raw, c[i].len, &h)
                        : evs__http_parse_response(c[i].raw, c[i].len, &h);
    if ((r2 < 0) != (c[i].want < 0))
      ok = 0;
    if (!ok) {
      print_message("row %zu: %s\n  got %d (%s), parser alone %d; want %d (%s)\n", i,
                    esc(c[i].raw, c[i].len), r, detail ? detail : "-", r2, c[i].want,
                    c[i].detail ? c[i].detail : "-");
      failures++;
    }
  }
  assert_int_equal(failures, 0);
}

/* Parse one request that must succeed; returns its flags. */
static uint32_t parse_ok(const char *raw, size_t len, evs__http_head *h, evs__http_field *f) {
  const char *detail = NULL;
  head_init(h, f, MAXF);
  int r = request(raw, len, h, &detail);
  if (r != EVS_HTTP_OK)
    print_message("%s\n  got %d (%s)\n", esc(raw, len), r, detail ? detail : "-");
  assert_int_equal(r, EVS_HTTP_OK);
  return h->flags;
}
#define PARSE_OK(s, h, f) parse_ok(s, sizeof(s) - 1, h, f)

#define GET11 "GET / HTTP/1.1\r\nHost: example.com\r\n"
#define POST11 "POST /p HTTP/1.1\r\nHost: example.com\r\n"
#define POST10 "POST /p HTTP/1.0\r\n"

/* ---- head scanner --------------------------------------------------------------------------- */

static void test_scan_complete(void **unused) {
  (void)unused;
  static const char m[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
  evs__http_scan sc;
  size_t hl = 0;
  memset(&sc, 0, sizeof(sc));
  assert_int_equal(evs__http_scan_head(&sc, m, sizeof(m) - 1, 1024, &hl), EVS_HTTP_OK);
  assert_int_equal(hl, sizeof(m) - 1 - 4);
  /* Calling again after completion reports the same head. */
  hl = 0;
  assert_int_equal(evs__http_scan_head(&sc, m, sizeof(m) - 1, 1024, &hl), EVS_HTTP_OK);
  assert_int_equal(hl, sizeof(m) - 1 - 4);
}

/* Feeding the growing buffer one byte at a time finds the same end as one call. */
static void test_scan_incremental(void **unused) {
  (void)unused;
  static const char m[] = "POST /x HTTP/1.1\r\nHost: a\r\nX: \r\r\n\r\n";
  /* That has a bare CR in the X value: the incremental scan must fail exactly there. */
  evs__http_scan sc;
  size_t hl = 0;
  memset(&sc, 0, sizeof(sc));
  int r = EVS_HTTP_NEED_MORE;
  size_t n;
  for (n = 1; n <= sizeof(m) - 1; n++) {
    r = evs__http_scan_head(&sc, m, n, 1024, &hl);
    if (r != EVS_HTTP_NEED_MORE)
      break;
  }
  assert_int_equal(r, EVS_HTTP_E_BAD);
  assert_int_equal(n, strlen("POST /x HTTP/1.1\r\nHost: a\r\nX: \r\r"));

  static const char g[] = "GET /a HTTP/1.1\r\nHost: a\r\nA: b\r\n\r\n";
  memset(&sc, 0, sizeof(sc));
  for (n = 1; n <= sizeof(g) - 1; n++) {
    r = evs__http_scan_head(&sc, g, n, 1024, &hl);
    if (n < sizeof(g) - 1)
      assert_int_equal(r, EVS_HTTP_NEED_MORE);
  }
  assert_int_equal(r, EVS_HTTP_OK);
  assert_int_equal(hl, sizeof(g) - 1);
}

static void test_scan_bare_cr_lf(void **unused) {
  (void)unused;
  static const struct {
    const char *s;
    int want;
  } rows[] = {
    {"GET / HTTP/1.1\nHost: a\r\n\r\n", EVS_HTTP_E_BAD},       /* bare LF ends request line */
    {"GET / HTTP/1.1\r\nHost: a\n\r\n", EVS_HTTP_E_BAD},       /* bare LF ends a field */
    {"GET / HTTP/1.1\r\nHost: a\r\n\n", EVS_HTTP_E_BAD},       /* LF-only empty line */
    {"GET / HTTP/1.1\r\nHost: a\r\n\n\n", EVS_HTTP_E_BAD},     /* LF LF */
    {"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", EVS_HTTP_E_BAD},     /* bare CR in a value */
    {"GET / HTTP/1.1\r\r\n\r\n", EVS_HTTP_E_BAD},              /* CR CR LF */
    {"GET / HTTP/1.1\r\nHost: a\r\n\r\r", EVS_HTTP_E_BAD},     /* CRLF CR CR */
    {"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD}, /* leading empty line */
    {"\nGET / HTTP/1.1\r\n\r\n", EVS_HTTP_E_BAD},              /* leading LF */
    {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_OK},
    {"GET / HTTP/1.1\r\nHost: a\r\n", EVS_HTTP_NEED_MORE},
    {"GET / HTTP/1.1\r\nHost: a\r\n\r", EVS_HTTP_NEED_MORE},
  };
  for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    evs__http_scan sc;
    size_t hl = 0;
    memset(&sc, 0, sizeof(sc));
    int r = evs__http_scan_head(&sc, rows[i].s, strlen(rows[i].s), 1024, &hl);
    if (r != rows[i].want)
      print_message("row %zu: %s got %d\n", i, esc(rows[i].s, strlen(rows[i].s)), r);
    assert_int_equal(r, rows[i].want);
  }

  /* A CR at the end of one read and a non-LF at the start of the next is still a bare CR. */
  static const char m[] = "GET / HTTP/1.1\rX";
  evs__http_scan sc;
  size_t hl = 0;
  memset(&sc, 0, sizeof(sc));
  assert_int_equal(evs__http_scan_head(&sc, m, sizeof(m) - 2, 1024, &hl), EVS_HTTP_NEED_MORE);
  assert_int_equal(evs__http_scan_head(&sc, m, sizeof(m) - 1, 1024, &hl), EVS_HTTP_E_BAD);
}

static void test_scan_limits(void **unused) {
  (void)unused;
  static const char m[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  size_t n = sizeof(m) - 1;
  evs__http_scan sc;
  size_t hl = 0;

  memset(&sc, 0, sizeof(sc));
  assert_int_equal(evs__http_scan_head(&sc, m, n, n, &hl), EVS_HTTP_OK); /* exactly the limit */
  assert_int_equal(hl, n);

  memset(&sc, 0, sizeof(sc));
  assert_int_equal(evs__http_scan_head(&sc, m, n, n - 1, &hl), EVS_HTTP_E_HEAD_TOO_LARGE);

  /* At the limit without an end: need more; one byte over: too large. */
  memset(&sc, 0, sizeof(sc));
  assert_int_equal(evs__http_scan_head(&sc, m, 10, 10, &hl), EVS_HTTP_NEED_MORE);
  assert_int_equal(evs__http_scan_head(&sc, m, 11, 10, &hl), EVS_HTTP_E_HEAD_TOO_LARGE);

  /* A slowloris of valid-looking bytes is cut off as soon as the limit is passed. */
  char big[300];
  memset(big, 'a', sizeof(big));
  memcpy(big, "GET /", 5);
  memset(&sc, 0, sizeof(sc));
  size_t k;
  int r = EVS_HTTP_NEED_MORE;
  for (k = 1; k <= sizeof(big) && r == EVS_HTTP_NEED_MORE; k++)
    r = evs__http_scan_head(&sc, big, k, 256, &hl);
  assert_int_equal(r, EVS_HTTP_E_HEAD_TOO_LARGE);
  assert_int_equal(k - 1, 257);

  /* A resume position beyond the buffer is a caller bug, reported rather than read past. */
  memset(&sc, 0, sizeof(sc));
  sc.pos = 50;
  assert_int_equal(evs__http_scan_head(&sc, m, 10, 1024, &hl), EVS_HTTP_E_BAD);
}

/* ---- request line --------------------------------------------------------------------------- */

static void test_request_line(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    MC("GET / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_OK, NULL),
    /* Methods are case-sensitive tokens: "get" is some other method, not GET. */
    MC("get / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("X!#$%&'*+-.^_`|~9 / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_METHOD,
       "method too long"),
    MC(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_METHOD, "invalid method"),
    MC("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_METHOD, "invalid method"),
    MC("GE\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_METHOD, "invalid method"),
    MC("G\x80T / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_METHOD, "invalid method"),
    MC("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_METHOD, "invalid method"),
    MC("bad_method\x01 /foo HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_METHOD, "invalid method"),
    MC("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "empty request-target"),
    MC("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/1.1\t\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "request line without version"),
    MC("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/1.1 HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET /\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "request line without version"), /* 0.9 */
    MC("GET\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "request line without target"),
    MC("GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_TARGET, "invalid request-target"),
    MC("GET / HTTP/1.1\r\n\r\n", EVS_HTTP_E_BAD, "missing host"),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 1);
}

static void test_versions(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    MC("GET / HTTP/1.0\r\n\r\n", EVS_HTTP_OK, NULL), /* no Host needed in 1.0 */
    MC("GET / HTTP/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("GET / HTTP/1.2\r\nHost: a\r\n\r\n", EVS_HTTP_E_VERSION, "unsupported http version"),
    MC("GET / HTTP/2.0\r\nHost: a\r\n\r\n", EVS_HTTP_E_VERSION, "unsupported http version"),
    MC("GET / HTTP/0.9\r\nHost: a\r\n\r\n", EVS_HTTP_E_VERSION, "unsupported http version"),
    MC("GET / HTTP/9.9\r\nHost: a\r\n\r\n", EVS_HTTP_E_VERSION, "unsupported http version"),
    MC("GET / HTTP/1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/2\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/1.1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/1.10\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/11.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/01.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / http/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/1.a\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTPS/1.1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / HTTP/1,1\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
    MC("GET / \r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "malformed http version"),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 1);

  evs__http_field f[MAXF];
  evs__http_head h;
  PARSE_OK("GET / HTTP/1.0\r\n\r\n", &h, f);
  assert_int_equal(h.version_minor, 0);
  PARSE_OK("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &h, f);
  assert_int_equal(h.version_minor, 1);
}

/* ---- request-target ------------------------------------------------------------------------- */

#define TGT(m, t, w, d) MC(m " " t " HTTP/1.1\r\nHost: example.com\r\n\r\n", w, d)
#define TGT_OK(m, t) TGT(m, t, EVS_HTTP_OK, NULL)
#define TGT_BAD(m, t) TGT(m, t, EVS_HTTP_E_TARGET, "invalid request-target")

static void test_targets(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    /* origin-form */
    TGT_OK("GET", "/"),
    TGT_OK("GET", "/a/b/c.html"),
    TGT_OK("GET", "/a?b=c&d=%2F"),
    TGT_OK("GET", "/a?b=/c?d"),
    TGT_OK("GET", "//double"),
    TGT_OK("GET", "/path-%0D-uri"),
    TGT_OK("GET", "/!$&'()*+,;=:@-._~"),
    TGT_OK("OPTIONS", "/"),
    TGT_BAD("GET", "a/b"),
    TGT_BAD("GET", "/a#frag"),
    TGT_BAD("GET", "/#"),
    TGT_BAD("GET", "/a\x01"),
    TGT_BAD("GET", "/a\x7f"),
    TGT_BAD("GET", "/\xd1\x81"),  /* UTF-8 */
    TGT_BAD("GET", "/a\x80"),
    TGT_BAD("GET", "/%"),
    TGT_BAD("GET", "/%2"),
    TGT_BAD("GET", "/%zz"),
    TGT_BAD("GET", "/%2g"),
    /* absolute-form */
    TGT_OK("GET", "http://example.com"),
    TGT_OK("GET", "http://example.com/"),
    TGT_OK("GET", "https://example.com:8443/a?b"),
    TGT_OK("GET", "HTTP://EXAMPLE.COM/"),
    TGT_OK("GET", "http://example.com?q"),
    TGT_OK("GET", "http://[::1]:8080/x"),
    TGT_OK("GET", "http://127.0.0.1/x"),
    TGT_OK("OPTIONS", "http://example.com"),
    TGT_BAD("GET", "ftp://example.com/"),
    TGT_BAD("GET", "ws://example.com/"),
    TGT_BAD("GET", "http:/example.com/"),
    TGT_BAD("GET", "http://"),
    TGT_BAD("GET", "http:///path"),
    TGT_BAD("GET", "http://user@example.com/"),
    TGT_BAD("GET", "http://user:pw@example.com/"),
    TGT_BAD("GET", "http://example.com/#x"),
    TGT_BAD("GET", "http://example.com:99999/"),
    TGT_BAD("GET", "http://example.com:/"),
    /* The space ends the target, so what is malformed is the version. */
    TGT("GET", "http://exa mple.com/", EVS_HTTP_E_BAD, "malformed http version"),
    TGT_BAD("GET", "http://[::1/"),
    /* authority-form: CONNECT only, port required */
    TGT_OK("CONNECT", "example.com:443"),
    TGT_OK("CONNECT", "[2001:db8::1]:443"),
    TGT_OK("CONNECT", "10.0.0.1:8080"),
    TGT_BAD("CONNECT", "example.com"),
    TGT_BAD("CONNECT", "example.com:"),
    TGT_BAD("CONNECT", "example.com:443/x"),
    TGT_BAD("CONNECT", "/"),
    TGT_BAD("CONNECT", "http://example.com:443/"),
    TGT_BAD("CONNECT", "*"),
    TGT_BAD("GET", "example.com:443"),
    TGT_BAD("connect", "example.com:443"), /* method names are case-sensitive */
    /* asterisk-form: OPTIONS only */
    TGT_OK("OPTIONS", "*"),
    TGT_BAD("GET", "*"),
    TGT_BAD("OPTIONS", "*/"),
    TGT_BAD("OPTIONS", "**"),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 1);

  evs__http_field f[MAXF];
  evs__http_head h;
  static const char m[] = "GET /a?b HTTP/1.1\r\nHost: example.com\r\n\r\n";
  PARSE_OK(m, &h, f);
  assert_int_equal(h.method_off, 0);
  assert_int_equal(h.method_len, 3);
  assert_int_equal(h.target_off, 4);
  assert_int_equal(h.target_len, 4);
  assert_memory_equal(m + h.target_off, "/a?b", 4);
}

/* ---- field syntax --------------------------------------------------------------------------- */

static void test_field_syntax(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    MC(GET11 "X-Empty:\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(GET11 "X-Empty: \t \r\n\r\n", EVS_HTTP_OK, NULL),
    MC(GET11 "X: a b\tc\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(GET11 "X: \x80\xff\xa0\r\n\r\n", EVS_HTTP_OK, NULL), /* obs-text */
    MC(GET11 "My-Custom-Header.!#$%&'*+^_`|~0123456789: v\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(GET11 "X-test: Transfer-Encoding: chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    /* obs-fold and leading whitespace */
    MC(GET11 "X: a\r\n b\r\n\r\n", EVS_HTTP_E_BAD, "obs-fold or whitespace before field line"),
    MC(GET11 "X: a\r\n\tb\r\n\r\n", EVS_HTTP_E_BAD, "obs-fold or whitespace before field line"),
    MC("GET / HTTP/1.1\r\n Host: a\r\n\r\n", EVS_HTTP_E_BAD,
       "obs-fold or whitespace before field line"),
    /* whitespace between name and colon (RFC 9112 §5.1) */
    MC(GET11 "X : a\r\n\r\n", EVS_HTTP_E_BAD, "whitespace before colon"),
    MC(GET11 "X\t: a\r\n\r\n", EVS_HTTP_E_BAD, "whitespace before colon"),
    MC(GET11 "Content-Length : 5\r\n\r\n", EVS_HTTP_E_BAD, "whitespace before colon"),
    MC(GET11 "Transfer-Encoding\t: chunked\r\n\r\n", EVS_HTTP_E_BAD, "whitespace before colon"),
    /* field names that are not tokens */
    MC(GET11 "X Y: a\r\n\r\n", EVS_HTTP_E_BAD, "whitespace before colon"),
    MC(GET11 "X\"Y: a\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 "X@Y: a\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 "X(Y): a\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 "\x01X: a\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 "X\x01: a\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 "X\x00Y: a\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 "Tran\xc5\xbf" "fer-Encoding: chunked\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 "\xa0X: a\r\n\r\n", EVS_HTTP_E_BAD, "invalid field name"),
    MC(GET11 ": a\r\n\r\n", EVS_HTTP_E_BAD, "empty field name"),
    MC(GET11 ":X: a\r\n\r\n", EVS_HTTP_E_BAD, "empty field name"),
    MC(GET11 "NoColon\r\n\r\n", EVS_HTTP_E_BAD, "field line without colon"),
    /* controls in values: only HTAB is allowed */
    MC(GET11 "X: a\x01\r\n\r\n", EVS_HTTP_E_BAD, "control character in field value"),
    MC(GET11 "X: \x01" "a\r\n\r\n", EVS_HTTP_E_BAD, "control character in field value"),
    MC(GET11 "X: a\x00z\r\n\r\n", EVS_HTTP_E_BAD, "control character in field value"),
    MC(GET11 "X: \x00\r\n\r\n", EVS_HTTP_E_BAD, "control character in field value"),
    MC(GET11 "X: a\x7f\r\n\r\n", EVS_HTTP_E_BAD, "control character in field value"),
    MC(GET11 "X: a\x1b[0m\r\n\r\n", EVS_HTTP_E_BAD, "control character in field value"),
    MC(GET11 "X: a\x0b\r\n\r\n", EVS_HTTP_E_BAD, "control character in field value"),
    /* bare CR / LF anywhere: the scanner stops them, and so does the parser alone */
    MC(GET11 "X: a\rb\r\n\r\n", EVS_HTTP_E_BAD, NULL),
    MC(GET11 "X: a\nb\r\n\r\n", EVS_HTTP_E_BAD, NULL),
    MC(GET11 "X\n: a\r\n\r\n", EVS_HTTP_E_BAD, NULL),
    MC(GET11 "X\r: a\r\n\r\n", EVS_HTTP_E_BAD, NULL),
    MC(GET11 "X: a\n\r\n", EVS_HTTP_E_BAD, NULL),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 1);
}

static void test_field_offsets(void **unused) {
  (void)unused;
  static const char m[] = "GET / HTTP/1.1\r\nHost: a.b\r\nX-A:  one two \t\r\nX-Empty:\r\n"
                          "x-b:\tv\r\n\r\nBODY";
  evs__http_field f[MAXF];
  evs__http_head h;
  /* The parser stops at the end of the head even if the caller passes more bytes. */
  head_init(&h, f, MAXF);
  assert_int_equal(evs__http_parse_request(m, sizeof(m) - 1, &h), EVS_HTTP_OK);
  assert_int_equal(h.head_len, sizeof(m) - 1 - 4);
  assert_int_equal(h.nfields, 4);
  assert_int_equal(f[1].name_len, 3);
  assert_memory_equal(m + f[1].name_off, "X-A", 3);
  assert_int_equal(f[1].value_len, 7);
  assert_memory_equal(m + f[1].value_off, "one two", 7);
  assert_int_equal(f[2].value_len, 0);
  assert_int_equal(f[3].value_len, 1);
  assert_memory_equal(m + f[3].value_off, "v", 1);
  assert_true(h.flags & EVS_HTTP_F_HOST);
  assert_int_equal(h.host_field, 0);

  /* A head without its final empty line is not a head. */
  head_init(&h, f, MAXF);
  assert_int_equal(evs__http_parse_request(m, 27, &h), EVS_HTTP_E_BAD);
  head_init(&h, f, MAXF);
  assert_int_equal(evs__http_parse_request(m, 0, &h), EVS_HTTP_E_BAD);
}

static void test_too_many_fields(void **unused) {
  (void)unused;
  static const char m[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  evs__http_field f[4];
  evs__http_head h;
  const char *detail = NULL;
  head_init(&h, f, 4);
  assert_int_equal(request(m, sizeof(m) - 1, &h, &detail), EVS_HTTP_OK);
  assert_int_equal(h.nfields, 4);
  head_init(&h, f, 3);
  assert_int_equal(request(m, sizeof(m) - 1, &h, &detail), EVS_HTTP_E_TOO_MANY_FIELDS);
  head_init(&h, NULL, 0);
  assert_int_equal(request(m, sizeof(m) - 1, &h, &detail), EVS_HTTP_E_TOO_MANY_FIELDS);
  /* No fields at all needs no storage (HTTP/1.0 without Host). */
  head_init(&h, NULL, 0);
  assert_int_equal(evs__http_parse_request("GET / HTTP/1.0\r\n\r\n", 18, &h), EVS_HTTP_OK);
}

/* ---- Content-Length ------------------------------------------------------------------------- */

static void test_content_length(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    MC(POST11 "Content-Length: 0\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Content-Length: 1000\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Content-Length:   22220  \r\n\r\n", EVS_HTTP_OK, NULL), /* OWS is not the value */
    MC(POST11 "Content-Length:\t5\t\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "content-LENGTH: 5\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Content-Length: 0005\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Content-Length: 9223372036854775807\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", EVS_HTTP_E_BAD,
       "duplicate content-length"),
    MC(POST11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", EVS_HTTP_E_BAD,
       "duplicate content-length"),
    MC(POST11 "Content-Length: 5\r\ncontent-length: 5\r\n\r\n", EVS_HTTP_E_BAD,
       "duplicate content-length"),
    MC(POST11 "Content-Length: 1000,1000\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: 1000, 1000\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: 1000 1000\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: 1000.1000\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: +5\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: -5\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: -0\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: 0x10\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: 1e3\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: 5a\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: \"5\"\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length:\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: \xa0" "5\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: 5\xa0\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: \xef\xbc\x95\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: $9000\r\n\r\n", EVS_HTTP_E_LENGTH, "invalid content-length"),
    MC(POST11 "Content-Length: \x0b" "5\r\n\r\n", EVS_HTTP_E_BAD,
       "control character in field value"),
    MC(POST11 "Content-Length: 1000\x11\r\n\r\n", EVS_HTTP_E_BAD,
       "control character in field value"),
    MC(POST11 "Content-Length: 9223372036854775808\r\n\r\n", EVS_HTTP_E_BAD,
       "content-length too large"),
    MC(POST11 "Content-Length: 18446744073709551616\r\n\r\n", EVS_HTTP_E_BAD,
       "content-length too large"),
    MC(POST11 "Content-Length: 99999999999999999999999999\r\n\r\n", EVS_HTTP_E_BAD,
       "content-length too large"),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 1);

  evs__http_field f[MAXF];
  evs__http_head h;
  uint32_t fl = PARSE_OK(POST11 "Content-Length:   22220  \r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_CONTENT_LENGTH);
  assert_false(fl & EVS_HTTP_F_CHUNKED);
  assert_int_equal(h.content_length, 22220);
  PARSE_OK(POST11 "Content-Length: 9223372036854775807\r\n\r\n", &h, f);
  assert_true(h.content_length == UINT64_C(9223372036854775807));
  fl = PARSE_OK(POST11 "\r\n", &h, f);
  assert_false(fl & (EVS_HTTP_F_CONTENT_LENGTH | EVS_HTTP_F_CHUNKED));
}

/* ---- Transfer-Encoding ---------------------------------------------------------------------- */

#define TE_BAD(v, d) MC(POST11 "Transfer-Encoding: " v "\r\n\r\n", EVS_HTTP_E_BAD, d)
#define TE_UNSUP(v) \
  MC(POST11 "Transfer-Encoding: " v "\r\n\r\n", EVS_HTTP_E_TE_UNSUPPORTED, \
     "unsupported transfer coding")

static void test_transfer_encoding(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    MC(POST11 "Transfer-Encoding: chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Transfer-Encoding: Chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Transfer-Encoding: CHUNKED\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "TrAnSfEr-EnCoDiNg: ChUnKeD\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Transfer-Encoding: \t chunked \t\r\n\r\n", EVS_HTTP_OK, NULL),
    /* CL and TE together, in either order */
    MC(POST11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", EVS_HTTP_E_BAD,
       "both content-length and transfer-encoding"),
    MC(POST11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", EVS_HTTP_E_BAD,
       "both content-length and transfer-encoding"),
    MC(POST11 "Content-Length: 0\r\nTransfer-Encoding: gzip\r\n\r\n", EVS_HTTP_E_BAD,
       "both content-length and transfer-encoding"),
    /* chunked twice */
    TE_BAD("chunked, chunked", "chunked applied more than once"),
    TE_BAD("chunked,chunked", "chunked applied more than once"),
    MC(POST11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
       EVS_HTTP_E_BAD, "chunked applied more than once"),
    /* other codings, well-formed lists: 501 */
    TE_UNSUP("gzip"),
    TE_UNSUP("gzip, chunked"),
    TE_UNSUP("gzip ,\tchunked"),
    TE_UNSUP("deflate, identity, chunked"),
    TE_UNSUP("chunked, identity"),
    TE_UNSUP("chunked, gzip"),
    TE_UNSUP("identity"),
    TE_UNSUP("xchunked"),
    TE_UNSUP("chunk"),
    TE_UNSUP("chunked-x"),
    TE_UNSUP("cow"),
    TE_UNSUP("chunked;foo=bar"),
    TE_UNSUP("chunked; foo = \"b,a;r\""),
    TE_UNSUP("gzip;q=1, chunked"),
    MC(POST11 "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
       EVS_HTTP_E_TE_UNSUPPORTED, "unsupported transfer coding"),
    MC(POST11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n",
       EVS_HTTP_E_TE_UNSUPPORTED, "unsupported transfer coding"),
    /* not a valid list: 400 */
    TE_BAD("", "invalid transfer-encoding"),
    TE_BAD("chunked,", "invalid transfer-encoding"),
    TE_BAD(", chunked", "invalid transfer-encoding"),
    TE_BAD("chunked,,gzip", "invalid transfer-encoding"),
    TE_BAD("chunked chunked", "invalid transfer-encoding"),
    TE_BAD("chunked;", "invalid transfer-encoding"),
    TE_BAD("chunked;custom_param", "invalid transfer-encoding"),
    TE_BAD("chunked;custom_param;", "invalid transfer-encoding"),
    TE_BAD("chunked;a=", "invalid transfer-encoding"),
    TE_BAD("chunked;a=\"x", "invalid transfer-encoding"),
    TE_BAD("\"chunked\"", "invalid transfer-encoding"),
    TE_BAD("chunked\xa0", "invalid transfer-encoding"),
    TE_BAD("\xa0" "chunked", "invalid transfer-encoding"),
    TE_BAD("chunked\x80", "invalid transfer-encoding"),
    TE_BAD("chun/ked", "invalid transfer-encoding"),
    MC(POST11 "Transfer-Encoding: chunked\x01\r\n\r\n", EVS_HTTP_E_BAD,
       "control character in field value"),
    MC(POST11 "Transfer-Encoding: \x00" "chunked\r\n\r\n", EVS_HTTP_E_BAD,
       "control character in field value"),
    MC(POST11 "Transfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n", EVS_HTTP_E_BAD,
       "invalid transfer-encoding"),
    /* HTTP/1.0 requests may not use it at all */
    MC(POST10 "Transfer-Encoding: chunked\r\n\r\n", EVS_HTTP_E_BAD,
       "transfer-encoding in an http/1.0 request"),
    MC(POST10 "Host: a\r\nTransfer-Encoding: gzip\r\n\r\n", EVS_HTTP_E_BAD,
       "transfer-encoding in an http/1.0 request"),
    /* names that are not Transfer-Encoding are just fields... */
    MC(POST11 "Transfer--Encoding: chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Transfer-Encoding2: chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "X_Transfer_Encoding: chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    /* ...except the underscore twins of the framing fields, which CGI folds into them */
    MC(POST11 "Transfer_Encoding: chunked\r\n\r\n", EVS_HTTP_E_BAD,
       "framing field name with underscore"),
    MC(POST11 "transfer-encoding_: chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    MC(POST11 "Content_Length: 5\r\n\r\n", EVS_HTTP_E_BAD, "framing field name with underscore"),
    MC(POST11 "content_length: 5\r\nContent-Length: 5\r\n\r\n", EVS_HTTP_E_BAD,
       "framing field name with underscore"),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 1);

  evs__http_field f[MAXF];
  evs__http_head h;
  uint32_t fl = PARSE_OK(POST11 "Transfer-Encoding:  chunked \r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_CHUNKED);
  assert_false(fl & EVS_HTTP_F_CONTENT_LENGTH);
  fl = PARSE_OK(POST11 "Transfer--Encoding: chunked\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_CHUNKED);
}

/* ---- Host ----------------------------------------------------------------------------------- */

static void test_host(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    MC("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("GET / HTTP/1.1\r\nhOsT: example.com:8080\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("GET / HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("GET / HTTP/1.0\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("GET / HTTP/1.0\r\nHost: a\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("GET / HTTP/1.1\r\n\r\n", EVS_HTTP_E_BAD, "missing host"),
    MC("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n", EVS_HTTP_E_BAD, "missing host"),
    MC("GET / HTTP/1.1\r\nHost_: a\r\n\r\n", EVS_HTTP_E_BAD, "missing host"),
    /* absolute-form still needs Host in 1.1 (RFC 9112 §3.2) */
    MC("GET http://example.com/ HTTP/1.1\r\n\r\n", EVS_HTTP_E_BAD, "missing host"),
    MC("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", EVS_HTTP_E_BAD, "duplicate host"),
    MC("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", EVS_HTTP_E_BAD, "duplicate host"),
    MC("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", EVS_HTTP_E_BAD, "duplicate host"),
    MC("GET / HTTP/1.1\r\nHost:\r\n\r\n", EVS_HTTP_E_BAD, "invalid host"),
    MC("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", EVS_HTTP_E_BAD, "invalid host"),
    MC("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", EVS_HTTP_OK, NULL), /* ',' is a sub-delim */
    MC("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", EVS_HTTP_E_BAD, "invalid host"),
    MC("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", EVS_HTTP_E_BAD, "invalid host"),
    MC("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", EVS_HTTP_E_BAD, "invalid host"),
    MC("GET / HTTP/1.0\r\nHost: a:\r\n\r\n", EVS_HTTP_E_BAD, "invalid host"),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 1);

  evs__http_field f[MAXF];
  evs__http_head h;
  uint32_t fl = PARSE_OK("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nHost: h.example\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_HOST);
  assert_int_equal(h.host_field, 2);
  fl = PARSE_OK("GET / HTTP/1.0\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_HOST);
}

static void test_is_valid_host(void **unused) {
  (void)unused;
  static const struct {
    const char *v;
    int ok;
  } rows[] = {
    {"example.com", 1},
    {"EXAMPLE.com.", 1},
    {"example.com:0", 1},
    {"example.com:65535", 1},
    {"localhost", 1},
    {"xn--bcher-kva.example", 1},
    {"under_score.example", 1},
    {"a%2eb", 1},
    {"!$&'()*+,;=-._~", 1},
    {"127.0.0.1", 1},
    {"127.0.0.1:80", 1},
    {"[::1]", 1},
    {"[::]", 1},
    {"[::1]:8080", 1},
    {"[2001:db8::1]", 1},
    {"[2001:db8:0:0:0:0:0:1]", 1},
    {"[1:2:3:4:5:6:7::]", 1},
    {"[::ffff:192.0.2.1]", 1},
    {"[1:2:3:4:5:6:1.2.3.4]", 1},
    {"", 0},
    {":80", 0},
    {"a:", 0},
    {"a:65536", 0},
    {"a:123456", 0},
    {"a:8a", 0},
    {"a:80:80", 0},
    {"a b", 0},
    {"a@b", 0},
    {"a/b", 0},
    {"a?b", 0},
    {"a#b", 0},
    {"a%2", 0},
    {"a%zz", 0},
    {"a\"b", 0},
    {"\xc3\xa9.example", 0},
    {"[::1", 0},
    {"::1", 0},
    {"[::1]x", 0},
    {"[::1]:", 0},
    {"[]", 0},
    {"[:]", 0},
    {"[:::]", 0},
    {"[1::2::3]", 0},
    {"[1:2:3:4:5:6:7:8:9]", 0},
    {"[1:2:3:4:5:6:7]", 0},
    {"[12345::1]", 0},
    {"[g::1]", 0},
    {"[::1%25eth0]", 0},
    {"[1:2:3:4:5:6:7:1.2.3.4]", 0},
    {"[::1.2.3]", 0},
    {"[::1.2.3.256]", 0},
    {"[::01.2.3.4]", 0},
    {"[1:]", 0},
    {"[:1]", 0},
    {"[v1.x]", 0},
  };
  int failures = 0;
  for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
    int ok = evs__http_is_valid_host(rows[i].v, strlen(rows[i].v)) != 0;
    if (ok != rows[i].ok) {
      print_message("host %s: got %d\n", esc(rows[i].v, strlen(rows[i].v)), ok);
      failures++;
    }
  }
  assert_int_equal(failures, 0);
}

/* ---- Connection, Upgrade, Expect ------------------------------------------------------------ */

static void test_connection_flags(void **unused) {
  (void)unused;
  evs__http_field f[MAXF];
  evs__http_head h;
  uint32_t fl;
  fl = PARSE_OK(GET11 "Connection: close\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_CONN_CLOSE);
  assert_false(fl & EVS_HTTP_F_CONN_KEEPALIVE);
  fl = PARSE_OK(GET11 "Connection: Keep-Alive\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_CONN_KEEPALIVE);
  assert_false(fl & EVS_HTTP_F_CONN_CLOSE);
  fl = PARSE_OK(GET11 "Connection: foo ,CLOSE\t, keep-alive\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_CONN_CLOSE);
  assert_true(fl & EVS_HTTP_F_CONN_KEEPALIVE);
  fl = PARSE_OK(GET11 "Connection: closed, xclose\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_CONN_CLOSE);

  fl = PARSE_OK(GET11 "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_UPGRADE);
  fl = PARSE_OK(GET11 "Upgrade: websocket\r\nConnection: keep-alive, upgrade\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_UPGRADE);
  fl = PARSE_OK(GET11 "Connection: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_UPGRADE);
  fl = PARSE_OK(GET11 "Connection: upgrade\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_UPGRADE);
  fl = PARSE_OK(GET11 "Upgrade: websocket\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_UPGRADE);
  fl = PARSE_OK(GET11 "Connection: upgraded\r\nUpgrade: websocket\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_UPGRADE);
  /* HTTP/1.0 servers ignore Upgrade (RFC 9110 §7.8). */
  fl = PARSE_OK("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_UPGRADE);
}

static void test_expect(void **unused) {
  (void)unused;
  evs__http_field f[MAXF];
  evs__http_head h;
  uint32_t fl;
  fl = PARSE_OK(POST11 "Expect: 100-continue\r\nContent-Length: 3\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_EXPECT_CONTINUE);
  assert_false(fl & EVS_HTTP_F_EXPECT_OTHER);
  fl = PARSE_OK(POST11 "Expect:  100-Continue \r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_EXPECT_CONTINUE);
  fl = PARSE_OK(POST11 "expect: 100-CONTINUE\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_EXPECT_CONTINUE);
  fl = PARSE_OK(POST11 "Expect: 200-ok\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_EXPECT_CONTINUE);
  assert_true(fl & EVS_HTTP_F_EXPECT_OTHER);
  fl = PARSE_OK(POST11 "Expect: 100-continue, foo\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_EXPECT_OTHER);
  fl = PARSE_OK(POST11 "Expect: 100-continued\r\n\r\n", &h, f);
  assert_true(fl & EVS_HTTP_F_EXPECT_OTHER);
  assert_false(fl & EVS_HTTP_F_EXPECT_CONTINUE);
  fl = PARSE_OK(POST11 "\r\n", &h, f);
  assert_false(fl & (EVS_HTTP_F_EXPECT_CONTINUE | EVS_HTTP_F_EXPECT_OTHER));
  /* A 100-continue expectation in HTTP/1.0 is ignored (RFC 9110 §10.1.1). */
  fl = PARSE_OK("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &h, f);
  assert_false(fl & EVS_HTTP_F_EXPECT_CONTINUE);
}

/* ---- responses ------------------------------------------------------------------------------ */

static void test_response(void **unused) {
  (void)unused;
  static const struct msg_case rows[] = {
    MC("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 204 No Content\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 204\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 200 \r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 404 Not \x80 Found\t!\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
       EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 200 OK\r\n\r\n", EVS_HTTP_OK, NULL), /* no Host needed */
    MC("HTTP/1.1 599 x\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 100 Continue\r\n\r\n", EVS_HTTP_OK, NULL),
    MC("HTTP/1.1 20 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status code"),
    MC("HTTP/1.1 2000 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status line"),
    MC("HTTP/1.1 2x0 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status code"),
    MC("HTTP/1.1 099 OK\r\n\r\n", EVS_HTTP_E_BAD, "status code out of range"),
    MC("HTTP/1.1 600 OK\r\n\r\n", EVS_HTTP_E_BAD, "status code out of range"),
    MC("HTTP/1.1  200 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status code"),
    MC("HTTP/1.1\t200 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status line"),
    MC("HTTP/1.1 200 O\x01K\r\n\r\n", EVS_HTTP_E_BAD, "malformed status line"),
    MC("HTTP/2.0 200 OK\r\n\r\n", EVS_HTTP_E_VERSION, "unsupported http version"),
    MC("HTTP/1.2 200 OK\r\n\r\n", EVS_HTTP_E_VERSION, "unsupported http version"),
    MC("HTTP/2 200 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status line"),
    MC("http/1.1 200 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status line"),
    MC("ICY 200 OK\r\n\r\n", EVS_HTTP_E_BAD, "malformed status line"),
    MC("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", EVS_HTTP_E_BAD,
       "duplicate content-length"),
    MC("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
       EVS_HTTP_E_BAD, "both content-length and transfer-encoding"),
    MC("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", EVS_HTTP_E_TE_UNSUPPORTED,
       "unsupported transfer coding"),
    MC("HTTP/1.1 200 OK\r\nX : y\r\n\r\n", EVS_HTTP_E_BAD, "whitespace before colon"),
    MC("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", EVS_HTTP_E_BAD,
       "obs-fold or whitespace before field line"),
    MC("HTTP/1.1 200 OK\nX: y\r\n\r\n", EVS_HTTP_E_BAD, NULL),
  };
  run_cases(rows, sizeof(rows) / sizeof(rows[0]), 0);

  static const char m[] = "HTTP/1.0 404 Not Found\r\nTransfer-Encoding: chunked\r\n"
                          "Connection: close\r\nHost: [bogus\r\n\r\n";
  evs__http_field f[MAXF];
  evs__http_head h;
  head_init(&h, f, MAXF);
  assert_int_equal(evs__http_parse_response(m, sizeof(m) - 1, &h), EVS_HTTP_OK);
  assert_int_equal(h.status, 404);
  assert_int_equal(h.version_minor, 0);
  assert_int_equal(h.reason_len, 9);
  assert_memory_equal(m + h.reason_off, "Not Found", 9);
  assert_true(h.flags & EVS_HTTP_F_CHUNKED);
  assert_true(h.flags & EVS_HTTP_F_CONN_CLOSE);
  assert_false(h.flags & EVS_HTTP_F_HOST); /* Host means nothing in a response */
  assert_int_equal(h.head_len, sizeof(m) - 1);

  head_init(&h, f, MAXF);
  assert_int_equal(evs__http_parse_response("HTTP/1.1 304\r\n\r\n", 16, &h), EVS_HTTP_OK);
  assert_int_equal(h.status, 304);
  assert_int_equal(h.reason_len, 0);
}

/* ---- helpers: tchar, field values, lookup, hop-by-hop --------------------------------------- */

static void test_helpers(void **unused) {
  (void)unused;
  static const char tchars[] = "!#$%&'*+-.^_`|~0123456789"
                               "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  for (int c = 0; c < 256; c++) {
    int want = c != 0 && strchr(tchars, c) != NULL;
    assert_int_equal(evs__http_is_tchar((unsigned char)c) != 0, want);
  }

  assert_true(evs__http_is_valid_field_value("", 0));
  assert_true(evs__http_is_valid_field_value("a", 1));
  assert_true(evs__http_is_valid_field_value("a b\tc", 5));
  assert_true(evs__http_is_valid_field_value("\x80\xff", 2));
  assert_false(evs__http_is_valid_field_value(" a", 2));
  assert_false(evs__http_is_valid_field_value("a\t", 2));
  assert_false(evs__http_is_valid_field_value("a\r\nb", 4));
  assert_false(evs__http_is_valid_field_value("a\nb", 3));
  assert_false(evs__http_is_valid_field_value("a\0b", 3));
  assert_false(evs__http_is_valid_field_value("a\x7f", 2));
  assert_false(evs__http_is_valid_field_value("a\x01", 2));

  static const char m[] = "GET / HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nx-one: 2\r\nX-On: 3\r\n\r\n";
  evs__http_field f[MAXF];
  evs__http_head h;
  PARSE_OK(m, &h, f);
  assert_int_equal(evs__http_find_field(m, &h, "x-one"), 1);
  assert_int_equal(evs__http_find_field(m, &h, "x-on"), 3);
  assert_int_equal(evs__http_find_field(m, &h, "host"), 0);
  assert_int_equal(evs__http_find_field(m, &h, "x-o"), -1);
  assert_int_equal(evs__http_find_field(m, &h, "x-one2"), -1);
  assert_true(evs__http_field_is(m, &f[2], "x-one"));
  assert_false(evs__http_field_is(m, &f[2], "x-on"));
  assert_false(evs__http_field_is(m, &f[3], "x-one"));
}

static void test_hop_by_hop(void **unused) {
  (void)unused;
  static const char m[] = "GET / HTTP/1.1\r\n"
                          "Host: a\r\n"                              /* 0 */
                          "Connection: keep-alive, X-Secret ,x-other\r\n" /* 1 */
                          "Keep-Alive: timeout=5\r\n"                /* 2 */
                          "Proxy-Connection: close\r\n"              /* 3 */
                          "TE: trailers\r\n"                         /* 4 */
                          "Upgrade: h2c\r\n"                         /* 5 */
                          "Proxy-Authorization: Basic x\r\n"         /* 6 */
                          "Proxy-Authenticate: Basic\r\n"            /* 7 */
                          "Trailer: X-Sum\r\n"                       /* 8 */
                          "x-secret: 1\r\n"                          /* 9 */
                          "X-Other: 2\r\n"                           /* 10 */
                          "X-Kept: 3\r\n"                            /* 11 */
                          "connection: Content-Length, HOST\r\n"     /* 12 */
                          "Content-Length: 0\r\n"                    /* 13 */
                          "Accept: */*\r\n"                          /* 14 */
                          "\r\n";
  static const int want[] = {0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 0};
  evs__http_field f[MAXF];
  evs__http_head h;
  PARSE_OK(m, &h, f);
  assert_int_equal(h.nfields, sizeof(want) / sizeof(want[0]));
  for (size_t i = 0; i < h.nfields; i++) {
    int got = evs__http_field_is_hop_by_hop(m, &h, i) != 0;
    if (got != want[i])
      print_message("field %zu: got %d\n", i, got);
    assert_int_equal(got, want[i]);
  }
  assert_false(evs__http_field_is_hop_by_hop(m, &h, h.nfields));
  assert_false(evs__http_field_is_hop_by_hop(m, &h, (size_t)-1));

  static const char t[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  PARSE_OK(t, &h, f);
  assert_true(evs__http_field_is_hop_by_hop(t, &h, 1));
  assert_false(evs__http_field_is_hop_by_hop(t, &h, 0));
}

static void test_result_mapping(void **unused) {
  (void)unused;
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_BAD), 400);
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_METHOD), 400);
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_TARGET), 400);
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_LENGTH), 400);
  assert_string_equal(evs__http_result_code(EVS_HTTP_E_LENGTH), "content-length-required");
  assert_string_equal(evs__http_result_code(EVS_HTTP_E_BAD), "bad-request");
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_HEAD_TOO_LARGE), 431);
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_TOO_MANY_FIELDS), 431);
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_VERSION), 505);
  assert_int_equal(evs__http_result_status(EVS_HTTP_E_TE_UNSUPPORTED), 501);
  assert_int_equal(evs__http_result_status(-100), 400);
  assert_int_equal(evs__http_result_status(EVS_HTTP_OK), 0);
  for (int r = -8; r <= 1; r++) {
    const char *s = evs__http_result_reason(r);
    assert_non_null(s);
    assert_true(strlen(s) > 0);
  }
  assert_string_equal(evs__http_result_reason(EVS_HTTP_E_TE_UNSUPPORTED),
                      "unsupported transfer coding");
}

/* ---- chunked decoder ------------------------------------------------------------------------ */

struct dec_out {
  int rc;
  int done;
  size_t consumed;
  size_t dlen;
  char data[4096];
};

/* Piece boundaries: multiples of step (0: none) and the single cut (0: none). */
static size_t piece_end(size_t off, size_t len, size_t step, size_t cut) {
  size_t e = len;
  if (step != 0 && off - off % step + step < e)
    e = off - off % step + step;
  if (cut > off && cut < e)
    e = cut;
  return e;
}

static void decode(const char *in, size_t len, size_t step, size_t cut, size_t max_trailer,
                   struct dec_out *o) {
  evs__http_chunked d;
  memset(&d, 0, sizeof(d));
  d.max_trailer_bytes = max_trailer;
  memset(o, 0, sizeof(*o));
  size_t off = 0;
  while (off < len && !d.done) {
    size_t end = piece_end(off, len, step, cut);
    size_t used = 0, dl = 0;
    const char *dp = NULL;
    int r = evs__http_chunked_decode(&d, in + off, end - off, &used, &dp, &dl);
    if (r != EVS_HTTP_OK) {
      o->rc = r;
      /* Errors are sticky. */
      assert_int_equal(evs__http_chunked_decode(&d, "0\r\n\r\n", 5, &used, &dp, &dl),
                       EVS_HTTP_E_BAD);
      break;
    }
    assert_true(used <= end - off);
    if (dl > 0) {
      /* The data run lies inside this input and ends where consumption stopped. */
      assert_true(dp >= in + off && dp + dl <= in + off + used);
      assert_ptr_equal(dp + dl, in + off + used);
      assert_true(o->dlen + dl <= sizeof(o->data));
      memcpy(o->data + o->dlen, dp, dl);
      o->dlen += dl;
    }
    if (used == 0 && !d.done)
      fail_msg("decoder made no progress at offset %zu", off);
    off += used;
  }
  o->done = d.done;
  o->consumed = off;
}

struct chunk_case {
  const char *in;
  size_t len;
  const char *out; /* decoded body; NULL: must be rejected */
  size_t out_len;
};
#define CK(s, o) {s, sizeof(s) - 1, o, sizeof(o) - 1}
#define CK_BAD(s) {s, sizeof(s) - 1, NULL, 0}

/* Whole, byte by byte, in 3-byte pieces and split at every position: all must agree. */
static void check_chunk_case(const struct chunk_case *c, size_t i) {
  struct dec_out whole, other;
  decode(c->in, c->len, 0, 0, 0, &whole);
  if (c->out != NULL) {
    if (whole.rc != EVS_HTTP_OK || !whole.done || whole.consumed != c->len ||
        whole.dlen != c->out_len || memcmp(whole.data, c->out, c->out_len) != 0)
      fail_msg("chunk row %zu (%s): rc %d done %d consumed %zu dlen %zu", i, esc(c->in, c->len),
               whole.rc, whole.done, whole.consumed, whole.dlen);
  } else if (whole.rc != EVS_HTTP_E_BAD) {
    fail_msg("chunk row %zu (%s): accepted, rc %d done %d", i, esc(c->in, c->len), whole.rc,
             whole.done);
  }
  for (size_t mode = 0; mode <= c->len + 1; mode++) {
    size_t step = mode == 0 ? 1 : mode == 1 ? 3 : 0;
    size_t cut = mode >= 2 ? mode - 1 : 0;
    decode(c->in, c->len, step, cut, 0, &other);
    /* After an error only the verdict matters: how far each split got before it may differ. */
    int same = other.rc == whole.rc;
    if (same && whole.rc == EVS_HTTP_OK)
      same = other.done == whole.done && other.consumed == whole.consumed &&
             other.dlen == whole.dlen && memcmp(other.data, whole.data, whole.dlen) == 0;
    if (!same)
      fail_msg("chunk row %zu (%s): split step %zu cut %zu differs", i, esc(c->in, c->len), step,
               cut);
  }
}

static void test_chunked_valid(void **unused) {
  (void)unused;
  static const struct chunk_case rows[] = {
    CK("0\r\n\r\n", ""),
    CK("5\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
    CK("A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
    CK("a\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
    CK("00005\r\nhello\r\n000\r\n\r\n", "hello"),
    CK("4\r\n\r\n\0\n\r\n0\r\n\r\n", "\r\n\0\n"), /* data is opaque */
    CK("1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", "abc"),
    /* extensions */
    CK("5;a\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5;a=b\r\nhello\r\n0;last\r\n\r\n", "hello"),
    CK("5 ;a\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5\t; a = b ;c\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5;a=\"q\\\"x;y\\\\\"\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5;a=\"\"\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5;a=\"\x80 \t\"\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5;a=\"x\" ;b\r\nhello\r\n0\r\n\r\n", "hello"),
    CK("5;a;b;c=d\r\nhello\r\n0\r\n\r\n", "hello"),
    /* trailers */
    CK("5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n", "hello"),
    CK("5\r\nhello\r\n0\r\nX-Sum: 1\r\nY:\r\nZ:\t a b \r\n\r\n", "hello"),
    CK("0\r\nX: \x80\r\n\r\n", ""),
  };
  for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
    check_chunk_case(&rows[i], i);
}

static void test_chunked_invalid(void **unused) {
  (void)unused;
  static const struct chunk_case rows[] = {
    CK_BAD("\r\n"),
    CK_BAD("0x5\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("x5\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("+5\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("-5\r\nhello\r\n0\r\n\r\n"),
    CK_BAD(" 5\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("\t5\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5 \r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5\t\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5 5\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("g\r\n"),
    CK_BAD("5\nhello\r\n0\r\n\r\n"),
    CK_BAD("5\r\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5\rhello\r\n0\r\n\r\n"),
    CK_BAD("0000000000000005\r\nhello\r\n0\r\n\r\n"), /* 16 digits */
    CK_BAD("1000000000000000\r\n"),
    CK_BAD("5\r\nhello\n0\r\n\r\n"),
    CK_BAD("5\r\nhelloXX\r\n0\r\n\r\n"),
    CK_BAD("5\r\nhello\r0\r\n\r\n"),
    CK_BAD("5\r\nhell\r\n0\r\n\r\n"),
    CK_BAD("5,5\r\nhello\r\n0\r\n\r\n"),
    /* extensions */
    CK_BAD("5;\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5; \r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;=b\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a b\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=b c\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=b \r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a \r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=\"x\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=\"x\"y\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a@b\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=b@\r\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a\nhello\r\n0\r\n\r\n"),
    CK_BAD("5;a=\"x\"\nhello\r\n0\r\n\r\n"),
    /* trailers */
    CK_BAD("0\r\n X: y\r\n\r\n"),
    CK_BAD("0\r\nX: y\r\n z\r\n\r\n"),
    CK_BAD("0\r\nX: y\r\n\tz\r\n\r\n"),
    CK_BAD("0\r\nX y\r\n\r\n"),
    CK_BAD("0\r\nX : y\r\n\r\n"),
    CK_BAD("0\r\n: y\r\n\r\n"),
    CK_BAD("0\r\nX\r\n\r\n"),
    CK_BAD("0\r\nX: \x01\r\n\r\n"),
    CK_BAD("0\r\nX: a\0b\r\n\r\n"),
    CK_BAD("0\r\nX: y\n\r\n"),
    CK_BAD("0\r\nX: y\r\r\n\r\n"),
    CK_BAD("0\r\n\n"),
    CK_BAD("0\r\n\r\r"),
    CK_BAD("0\n\r\n"),
  };
  for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
    check_chunk_case(&rows[i], i);
}

static void test_chunked_limits(void **unused) {
  (void)unused;
  struct dec_out o;
  /* 15 hex digits is the most we accept (already 2^60 - 1 bytes). */
  evs__http_chunked d;
  size_t used = 0, dl = 0;
  const char *dp = NULL;
  memset(&d, 0, sizeof(d));
  static const char big[] = "fffffffffffffff\r\nab";
  assert_int_equal(evs__http_chunked_decode(&d, big, 19, &used, &dp, &dl), EVS_HTTP_OK);
  assert_int_equal(used, 19); /* the size line, then the data run in the same call */
  assert_int_equal(dl, 2);
  assert_ptr_equal(dp, big + 17);
  assert_true(d.remaining == UINT64_C(0xfffffffffffffff) - 2);
  assert_int_equal(evs__http_chunked_decode(&d, "cd", 2, &used, &dp, &dl), EVS_HTTP_OK);
  assert_int_equal(dl, 2);
  assert_true(d.remaining == UINT64_C(0xfffffffffffffff) - 4);

  /* Trailer section cap (the count includes the final CRLF). */
  static const char tr[] = "0\r\nX-Trailer: 0123456789\r\n\r\n"; /* 25 trailer bytes */
  decode(tr, sizeof(tr) - 1, 0, 0, 25, &o);
  assert_int_equal(o.rc, EVS_HTTP_OK);
  assert_true(o.done);
  decode(tr, sizeof(tr) - 1, 0, 0, 24, &o);
  assert_int_equal(o.rc, EVS_HTTP_E_BAD);
  decode(tr, sizeof(tr) - 1, 1, 0, 24, &o);
  assert_int_equal(o.rc, EVS_HTTP_E_BAD);

  /* A chunk-size line is capped too, so an endless extension cannot stall us. */
  static char line[9000];
  memset(line, 'a', sizeof(line));
  memcpy(line, "1;", 2);
  decode(line, sizeof(line), 0, 0, 0, &o);
  assert_int_equal(o.rc, EVS_HTTP_E_BAD);
  assert_true(o.consumed == 0);
  /* ...but each line has its own budget: many extended chunks are fine. */
  static char many[20000];
  size_t n = 0;
  for (int k = 0; k < 200; k++) {
    memcpy(many + n, "1;ext=0123456789012345678901234567890123456789\r\nx\r\n", 51);
    n += 51;
  }
  memcpy(many + n, "0\r\n\r\n", 5);
  n += 5;
  decode(many, n, 0, 0, 64, &o);
  assert_int_equal(o.rc, EVS_HTTP_OK);
  assert_int_equal(o.dlen, 200);
}

static void test_chunked_done(void **unused) {
  (void)unused;
  static const char m[] = "3\r\nabc\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n";
  evs__http_chunked d;
  memset(&d, 0, sizeof(d));
  size_t off = 0, used = 0, dl = 0;
  const char *dp = NULL;
  while (!d.done) {
    assert_int_equal(
        evs__http_chunked_decode(&d, m + off, sizeof(m) - 1 - off, &used, &dp, &dl),
        EVS_HTTP_OK);
    off += used;
  }
  assert_int_equal(off, strlen("3\r\nabc\r\n0\r\nT: 1\r\n\r\n"));
  /* Once done, nothing more is consumed: the rest is the next message. */
  assert_int_equal(evs__http_chunked_decode(&d, m + off, sizeof(m) - 1 - off, &used, &dp, &dl),
                   EVS_HTTP_OK);
  assert_int_equal(used, 0);
  assert_int_equal(dl, 0);
  /* Empty input is fine and consumes nothing. */
  memset(&d, 0, sizeof(d));
  assert_int_equal(evs__http_chunked_decode(&d, m, 0, &used, &dp, &dl), EVS_HTTP_OK);
  assert_int_equal(used, 0);
  assert_false(d.done);
}

/* ---- pipelining ----------------------------------------------------------------------------- */

/* Three messages in one buffer, framed by Content-Length, chunked, and nothing. */
static void test_pipelined(void **unused) {
  (void)unused;
  static const char m[] = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                          "POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "3\r\nabc\r\n0\r\n\r\n"
                          "GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
  const size_t len = sizeof(m) - 1;
  const char *targets[] = {"/a", "/b", "/c"};
  const char *bodies[] = {"hello", "abc", ""};
  size_t off = 0;
  for (int k = 0; k < 3; k++) {
    evs__http_scan sc;
    size_t hl = 0;
    memset(&sc, 0, sizeof(sc));
    assert_int_equal(evs__http_scan_head(&sc, m + off, len - off, 1024, &hl), EVS_HTTP_OK);
    evs__http_field f[MAXF];
    evs__http_head h;
    head_init(&h, f, MAXF);
    assert_int_equal(evs__http_parse_request(m + off, hl, &h), EVS_HTTP_OK);
    assert_int_equal(h.head_len, hl);
    assert_int_equal(h.target_len, 2);
    assert_memory_equal(m + off + h.target_off, targets[k], 2);
    off += hl;
    char body[16];
    size_t blen = 0;
    if (h.flags & EVS_HTTP_F_CONTENT_LENGTH) {
      memcpy(body, m + off, (size_t)h.content_length);
      blen = (size_t)h.content_length;
      off += blen;
    } else if (h.flags & EVS_HTTP_F_CHUNKED) {
      evs__http_chunked d;
      memset(&d, 0, sizeof(d));
      while (!d.done) {
        size_t used = 0, dl = 0;
        const char *dp = NULL;
        assert_int_equal(evs__http_chunked_decode(&d, m + off, len - off, &used, &dp, &dl),
                         EVS_HTTP_OK);
        if (dl > 0) {
          assert_true(blen + dl <= sizeof(body));
          memcpy(body + blen, dp, dl);
          blen += dl;
        }
        off += used;
      }
    }
    assert_int_equal(blen, strlen(bodies[k]));
    assert_memory_equal(body, bodies[k], blen);
  }
  assert_int_equal(off, len);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_scan_complete),
    cmocka_unit_test(test_scan_incremental),
    cmocka_unit_test(test_scan_bare_cr_lf),
    cmocka_unit_test(test_scan_limits),
    cmocka_unit_test(test_request_line),
    cmocka_unit_test(test_versions),
    cmocka_unit_test(test_targets),
    cmocka_unit_test(test_field_syntax),
    cmocka_unit_test(test_field_offsets),
    cmocka_unit_test(test_too_many_fields),
    cmocka_unit_test(test_content_length),
    cmocka_unit_test(test_transfer_encoding),
    cmocka_unit_test(test_host),
    cmocka_unit_test(test_is_valid_host),
    cmocka_unit_test(test_connection_flags),
    cmocka_unit_test(test_expect),
    cmocka_unit_test(test_response),
    cmocka_unit_test(test_helpers),
    cmocka_unit_test(test_hop_by_hop),
    cmocka_unit_test(test_result_mapping),
    cmocka_unit_test(test_chunked_valid),
    cmocka_unit_test(test_chunked_invalid),
    cmocka_unit_test(test_chunked_limits),
    cmocka_unit_test(test_chunked_done),
    cmocka_unit_test(test_pipelined),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
