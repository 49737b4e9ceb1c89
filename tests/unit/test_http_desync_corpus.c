/*
 * The public HTTP desync corpus (aws/http-desync-guardian, tests/data/http-desync)
 * run through the strict parser: every request is scanned and parsed as the server would.
 * Severe cases must be rejected; Compliant and Acceptable ones must parse, except the few listed
 * in `expected_rejections` below, which RFC 9112 strictness (or a rule of this project) refuses,
 * each with the exact rule that must fire; Ambiguous ones may go either way and the verdict of
 * each is printed. A second pass mutates every accepted case, putting a NUL, bare LF or bare CR
 * into the request line, field names and values, and requires each mutant to be rejected.
 *
 * The YAML corpus is converted to tests/unit/desync_corpus.txt by tests/unit/desync_to_raw.py
 * (committed, so no Python is needed here); that file's header documents the format.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http_parse.h"

#ifndef EVS_SOURCE_DIR
#define EVS_SOURCE_DIR "."
#endif
#define CORPUS_FILE EVS_SOURCE_DIR "/tests/unit/desync_corpus.txt"

#define MAXF 128
#define MAX_HEAD 65536

/* Scanner rejections carry no detail phrase; the corpus test names them this way. */
#define SCANNER_BAD "bare CR or LF (scanner)"

/*
 * Compliant and Acceptable cases that are rejected on purpose, with the rule that must reject
 * them. Each is either a MUST of RFC 9112/9110 or an explicit rule of this parser's contract.
 */
static const struct {
  const char *id;
  const char *detail;
} expected_rejections[] = {
  /* RFC 9112 §5.1: whitespace between field name and colon MUST be rejected with 400. */
  {"acceptable:1", "whitespace before colon"},
  {"acceptable:2", "whitespace before colon"},
  {"acceptable:4", "whitespace before colon"},
  /* A field name must be a token (RFC 9110 §5.1); "\x01name" or "name\x01" is not a field. */
  {"acceptable:3", "invalid field name"},
  {"bad-header-characters:12", "invalid field name"},
  {"bad-header-characters:13", "invalid field name"},
  /* CTLs other than HTAB in a value are invalid (RFC 9110 §5.5); the contract refuses them. */
  {"bad-header-characters:14", "control character in field value"},
  {"bad-header-characters:15", "control character in field value"},
  /* Only HTTP/1.0 and 1.1 are served (505); HTTP/0.9 has no version at all. */
  {"acceptable:7", "unsupported http version"},
  {"acceptable:8", "request line without version"},
  {"acceptable:9", "unsupported http version"},
  /* RFC 9112 §3: exactly one SP between the request-line parts; no whitespace in the target. */
  {"uri-specific-test-cases:2", "malformed http version"},
  {"uri-specific-test-cases:4", "malformed http version"},
  /* Transfer codings other than a single final "chunked" are not implemented (501)... */
  {"rfc-compliant:9", "unsupported transfer coding"},
  {"rfc-compliant:10", "unsupported transfer coding"},
  {"more-compliant-tests:6", "unsupported transfer coding"},
  {"more-compliant-tests:8", "unsupported transfer coding"},
  {"more-compliant-tests:9", "unsupported transfer coding"},
  /* ...and "gzip ;" / "chunked;custom_param" are not valid transfer-parameters (no "="). */
  {"rfc-compliant:11", "invalid transfer-encoding"},
  {"more-compliant-tests:10", "invalid transfer-encoding"},
  /* Targets: '#' (a fragment is never sent), raw non-ASCII bytes, and the empty target. */
  {"rfc-compliant:12", "invalid request-target"},
  {"rfc-compliant:13", "invalid request-target"},
  {"rfc-compliant:14", "empty request-target"},
};
#define N_EXPECTED_REJECTIONS (sizeof(expected_rejections) / sizeof(expected_rejections[0]))

struct corpus_case {
  char tier[16];
  char id[64];
  char name[256];
  unsigned char *raw;
  size_t len;
};

static struct corpus_case *cases;
static size_t ncases;

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

static void copy_field(char *dst, size_t cap, const char *s, size_t n) {
  if (n >= cap)
    n = cap - 1;
  memcpy(dst, s, n);
  dst[n] = '\0';
}

/* The display name: "\xNN" escapes decoded, then anything unprintable shown as '?'. */
static void copy_name(char *dst, size_t cap, const char *s) {
  size_t o = 0;
  while (*s != '\0' && o + 1 < cap) {
    int c = (unsigned char)*s++;
    if (c == '\\' && s[0] == 'x' && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
      c = hexval(s[1]) << 4 | hexval(s[2]);
      s += 3;
    }
    dst[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
  }
  dst[o] = '\0';
}

/* Loads desync_corpus.txt: "tier TAB id TAB hex TAB name" per line. */
static int load_corpus(void **state) {
  (void)state;
  FILE *f = fopen(CORPUS_FILE, "r");
  if (f == NULL) {
    print_error("cannot open %s\n", CORPUS_FILE);
    return -1;
  }
  char *line = NULL;
  size_t cap = 0, alloc = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, f)) > 0) {
    if (line[0] == '#' || line[0] == '\n')
      continue;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      line[--n] = '\0';
    char *t1 = strchr(line, '\t');
    char *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
    char *t3 = t2 ? strchr(t2 + 1, '\t') : NULL;
    if (t3 == NULL || (t3 - t2 - 1) % 2 != 0) {
      print_error("%s: malformed line: %.60s\n", CORPUS_FILE, line);
      free(line);
      fclose(f);
      return -1;
    }
    if (ncases == alloc) {
      alloc = alloc ? alloc * 2 : 64;
      cases = realloc(cases, alloc * sizeof(*cases));
      assert_non_null(cases);
    }
    struct corpus_case *c = &cases[ncases++];
    memset(c, 0, sizeof(*c));
    copy_field(c->tier, sizeof(c->tier), line, (size_t)(t1 - line));
    copy_field(c->id, sizeof(c->id), t1 + 1, (size_t)(t2 - t1 - 1));
    copy_name(c->name, sizeof(c->name), t3 + 1);
    c->len = (size_t)(t3 - t2 - 1) / 2;
    c->raw = malloc(c->len + 1);
    assert_non_null(c->raw);
    for (size_t i = 0; i < c->len; i++) {
      int hi = hexval(t2[1 + 2 * i]), lo = hexval(t2[2 + 2 * i]);
      if (hi < 0 || lo < 0) {
        print_error("%s: bad hex in %s\n", CORPUS_FILE, c->id);
        free(line);
        fclose(f);
        return -1;
      }
      c->raw[i] = (unsigned char)(hi << 4 | lo);
    }
  }
  free(line);
  fclose(f);
  return ncases > 0 ? 0 : -1;
}

static int free_corpus(void **state) {
  (void)state;
  for (size_t i = 0; i < ncases; i++)
    free(cases[i].raw);
  free(cases);
  cases = NULL;
  ncases = 0;
  return 0;
}

/*
 * What the server would do with these bytes: scan and parse each head in turn. A head whose
 * message has a body ends the walk (the corpus carries no bodies, so what follows would be body
 * bytes); otherwise the bytes after it are the next pipelined request. Returns the first error,
 * or OK; *detail names the rule on error.
 */
static int verdict(const unsigned char *raw, size_t len, const char **detail,
                   evs__http_head *first, evs__http_field *first_fields) {
  size_t off = 0;
  int nmsg = 0;
  while (off < len) {
    evs__http_scan sc;
    size_t hl = 0;
    memset(&sc, 0, sizeof(sc));
    int r = evs__http_scan_head(&sc, (const char *)raw + off, len - off, MAX_HEAD, &hl);
    if (r == EVS_HTTP_NEED_MORE && nmsg > 0)
      return EVS_HTTP_OK; /* a partial next request: the server would wait for the rest */
    if (r != EVS_HTTP_OK) {
      *detail = r == EVS_HTTP_E_BAD ? SCANNER_BAD : evs__http_result_reason(r);
      return r < 0 ? r : EVS_HTTP_E_BAD;
    }
    evs__http_field fields[MAXF];
    evs__http_head h;
    memset(&h, 0, sizeof(h));
    h.fields = nmsg == 0 ? first_fields : fields;
    h.max_fields = MAXF;
    r = evs__http_parse_request_detail((const char *)raw + off, hl, &h, detail);
    if (r != EVS_HTTP_OK)
      return r;
    if (nmsg == 0)
      *first = h;
    nmsg++;
    off += hl;
    if (h.flags & (EVS_HTTP_F_CONTENT_LENGTH | EVS_HTTP_F_CHUNKED))
      break;
  }
  return EVS_HTTP_OK;
}

static const char *expected_rejection(const char *id) {
  for (size_t i = 0; i < N_EXPECTED_REJECTIONS; i++)
    if (strcmp(expected_rejections[i].id, id) == 0)
      return expected_rejections[i].detail;
  return NULL;
}

/* Does the request line end in SP "HTTP/" DIGIT "." DIGIT? Not so for HTTP/0.9 (version ""). */
static int has_version(const unsigned char *raw, size_t len) {
  const unsigned char *crlf = memmem(raw, len, "\r\n", 2);
  size_t n = crlf ? (size_t)(crlf - raw) : len;
  if (n < 9)
    return 0;
  const unsigned char *v = raw + n - 9;
  return memcmp(v, " HTTP/", 6) == 0 && v[6] >= '0' && v[6] <= '9' && v[7] == '.' &&
         v[8] >= '0' && v[8] <= '9';
}

static void test_corpus_tiers(void **unused) {
  (void)unused;
  static const char *const tiers[] = {"Compliant", "Acceptable", "Ambiguous", "Severe"};
  unsigned rejected[4] = {0}, accepted[4] = {0};
  unsigned used_exceptions = 0, versionless = 0;
  int failures = 0;

  for (size_t i = 0; i < ncases; i++) {
    const struct corpus_case *c = &cases[i];
    int t = 0;
    while (t < 4 && strcmp(c->tier, tiers[t]) != 0)
      t++;
    assert_true(t < 4);
    evs__http_field f[MAXF];
    evs__http_head h;
    const char *detail = NULL;
    int r = verdict(c->raw, c->len, &detail, &h, f);
    if (r < 0)
      rejected[t]++;
    else
      accepted[t]++;

    if (!has_version(c->raw, c->len)) {
      versionless++;
      if (r >= 0) {
        print_message("FAIL %s %s: request line without a version accepted\n", c->id, c->name);
        failures++;
      }
    }

    const char *exp = expected_rejection(c->id);
    if (exp != NULL) {
      used_exceptions++;
      if (t != 0 && t != 1) {
        print_message("FAIL %s: listed as an expected rejection but its tier is %s\n", c->id,
                      c->tier);
        failures++;
      } else if (r >= 0 || detail == NULL || strcmp(detail, exp) != 0) {
        print_message("FAIL %s (%s) %s: want rejection \"%s\", got %d (%s)\n", c->tier, c->id,
                      c->name, exp, r, r < 0 && detail ? detail : "accepted");
        failures++;
      }
      continue;
    }
    if (t == 3 && r >= 0) {
      print_message("FAIL Severe %s %s: accepted\n", c->id, c->name);
      failures++;
    } else if (t <= 1 && r < 0) {
      print_message("FAIL %s %s %s: rejected: %s (%d)\n", c->tier, c->id, c->name,
                    detail ? detail : "-", r);
      failures++;
    } else if (t == 2) {
      print_message("Ambiguous  %-28s %-9s %-40s %s\n", c->id, r < 0 ? "rejected" : "accepted",
                    r < 0 ? detail : "", c->name);
    }
  }
  for (int t = 0; t < 4; t++)
    print_message("%-10s %3u rejected, %3u accepted\n", tiers[t], rejected[t], accepted[t]);
  print_message("expected rejections among Compliant/Acceptable: %u (listed %zu)\n",
                used_exceptions, N_EXPECTED_REJECTIONS);
  print_message("request lines without a version (HTTP/0.9 and the like), all rejected: %u\n",
                versionless);
  assert_true(versionless >= 3);
  /* A listed id that is not in the corpus is a stale list. */
  assert_int_equal(used_exceptions, N_EXPECTED_REJECTIONS);
  assert_int_equal(failures, 0);
}

/* Inserts byte b at position pos of c's raw bytes; returns the mutant's verdict. */
static int mutant(const struct corpus_case *c, size_t pos, unsigned char b, const char **detail) {
  static unsigned char buf[MAX_HEAD];
  assert_true(c->len + 1 <= sizeof(buf));
  memcpy(buf, c->raw, pos);
  buf[pos] = b;
  memcpy(buf + pos + 1, c->raw + pos, c->len - pos);
  evs__http_field f[MAXF];
  evs__http_head h;
  return verdict(buf, c->len + 1, detail, &h, f);
}

/* NUL, bare LF or bare CR inside any name, value or request-line part is always fatal. */
static void test_corpus_mutants(void **unused) {
  (void)unused;
  static const unsigned char bytes[] = {'\0', '\n', '\r'};
  unsigned tried = 0;
  int failures = 0;
  for (size_t i = 0; i < ncases; i++) {
    const struct corpus_case *c = &cases[i];
    evs__http_field f[MAXF];
    evs__http_head h;
    const char *detail = NULL;
    if (verdict(c->raw, c->len, &detail, &h, f) < 0)
      continue;
    size_t pos[6 * MAXF + 6], np = 0;
    pos[np++] = h.method_off + h.method_len / 2;
    pos[np++] = h.target_off;
    pos[np++] = h.target_off + h.target_len / 2;
    pos[np++] = h.target_off + h.target_len;
    pos[np++] = h.target_off + h.target_len + 5; /* inside "HTTP/1.x" */
    for (size_t k = 0; k < h.nfields; k++) {
      pos[np++] = f[k].name_off;
      pos[np++] = f[k].name_off + f[k].name_len / 2;
      pos[np++] = f[k].name_off + f[k].name_len;
      pos[np++] = f[k].value_off;
      pos[np++] = f[k].value_off + f[k].value_len / 2;
      pos[np++] = f[k].value_off + f[k].value_len;
    }
    for (size_t k = 0; k < np; k++) {
      for (size_t b = 0; b < sizeof(bytes); b++) {
        tried++;
        int r = mutant(c, pos[k], bytes[b], &detail);
        if (r >= 0) {
          print_message("FAIL %s: byte 0x%02x at %zu accepted\n", c->id, bytes[b], pos[k]);
          failures++;
        }
      }
    }
  }
  print_message("mutants tried: %u, all rejected: %s\n", tried, failures ? "no" : "yes");
  assert_true(tried > 0);
  assert_int_equal(failures, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_corpus_tiers),
    cmocka_unit_test(test_corpus_mutants),
  };
  return cmocka_run_group_tests(tests, load_corpus, free_corpus);
}
