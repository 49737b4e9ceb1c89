/*
 * Unit tests for plugins/relay-common/multipart_rewrite.c: the boundary helper, byte-exact
 * forwarding (identity, and split independence with selections, for whole, byte-by-byte and
 * random splits), a file part replaced with its filename and headers kept, text parts, partial
 * delimiters inside bodies, the deferred (async) pattern, every syntax error, ev:-looking
 * unselected text parts, the size caps, Content-Length on selected parts, and bounded memory with
 * an unselected 25 MB file part.
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
#include "multipart_rewrite.h"

/* ---- harness (rewrite_harness.h) ---------------------------------------------------------- */

#define RW_HARNESS_SEED 777
#include "rewrite_harness.h"

/* Replacement for call k: "%EVENC#k" for files, an ev:-shaped string for text. */
static int rw_marker(char *b, size_t cap, evs__rw_type type, unsigned k) {
  return type == EVS__RW_FILE ? snprintf(b, cap, "%%EVENC#%u", k)
                                : snprintf(b, cap, "ev:RFVC:%u:aXY=:ZXBo:$", k);
}

static void rw_on_value(struct sink *s, evs__rw_type type, const char *v, size_t n) {
  (void)s, (void)type, (void)v, (void)n;
}

/* mode 0: whole; 1: byte by byte; 2: random splits. Returns the feed/finish result. */
static int rewrite_n(const char *boundary, const char *const *fields, size_t nf,
                     const struct evs__multipart_rewrite_opts *o, const char *in, size_t n,
                     int mode, struct sink *s, uint64_t *ret_parts) {
  evs__multipart_rewrite *rw = NULL;
  int r;
  sink_start(s);
  assert_int_equal(
      evs__multipart_rewrite_new(boundary, fields, nf, o, sink_emit, sink_transform, s, &rw), 0);
  r = rw_feed_all(&evs__multipart_rewriter, rw, in, n, mode, 23);
  if (ret_parts) *ret_parts = evs__multipart_rewrite_parts(rw);
  evs__multipart_rewrite_free(rw);
  return r;
}

static int rewrite(const char *const *fields, size_t nf, const char *in, int mode, struct sink *s) {
  return rewrite_n("B0und", fields, nf, NULL, in, strlen(in), mode, s, NULL);
}

struct doc {
  const char *s;
  size_t n;
};
#define DOC(x) {x, sizeof x - 1} /* the bodies may hold NULs */

/* ---- boundary ------------------------------------------------------------------------------- */

static void test_boundary(void **state) {
  static const struct {
    const char *ct, *want;
  } ok[] = {
      {"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
       "----WebKitFormBoundary7MA4YWxkTrZu0gW"},
      {"multipart/form-data;boundary=\"a b:c=d/e?f,g(h)'+_.\"", "a b:c=d/e?f,g(h)'+_."},
      {"Multipart/Form-Data ; charset=utf-8; BOUNDARY=xyz ;", "xyz"},
      {"multipart/form-data; a=\"q\\\"uoted;boundary=no\"; boundary=\"\\y\"", "y"},
      {"multipart/form-data; boundary=1234567890123456789012345678901234567890123456789012345678901234567890",
       "1234567890123456789012345678901234567890123456789012345678901234567890"},
  };
  static const char *const bad[] = {
      "multipart/form-data",
      "multipart/form-data; boundary=",
      "multipart/form-data; boundary=\"\"",
      "multipart/form-data; boundary=\"abc ",
      "multipart/form-data; boundary=\"abc \"",
      "multipart/form-data; boundary=a; boundary=a",
      "multipart/form-data; boundary = a",
      "multipart/form-data; boundary=a\"b",
      "multipart/form-data; boundary=\"a\\\"b\"",
      "multipart/form-data; boundary=a{b}",
      "multipart/form-data; boundary=12345678901234567890123456789012345678901234567890123456789012345678901",
      "multipart; boundary=a",
      "/form-data; boundary=a",
      "multipart/form-data boundary=a",
      "multipart/form-data; boundary=a b",
      "",
  };
  char b[EVS__MULTIPART_BOUNDARY_MAX + 1];
  (void)state;
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    int r = evs__multipart_boundary(ok[i].ct, b, sizeof b);
    if (r < 0) fail_msg("%s: %d", ok[i].ct, r);
    assert_int_equal(r, strlen(ok[i].want));
    assert_string_equal(b, ok[i].want);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int r = evs__multipart_boundary(bad[i], b, sizeof b);
    if (r != EVS__RW_E_SYNTAX) fail_msg("accepted: %s (%d)", bad[i], r);
  }
  assert_int_equal(evs__multipart_boundary("multipart/form-data; boundary=abcd", b, 4), -ENOSPC);
  assert_int_equal(evs__multipart_boundary("multipart/form-data; boundary=abcd", b, 5), 4);
  { /* _new checks the boundary too */
    evs__multipart_rewrite *rw = NULL;
    struct sink s;
    assert_int_equal(evs__multipart_rewrite_new("", NULL, 0, NULL, sink_emit, NULL, &s, &rw), -EINVAL);
    assert_int_equal(evs__multipart_rewrite_new("a\r", NULL, 0, NULL, sink_emit, NULL, &s, &rw),
                     -EINVAL);
    assert_int_equal(evs__multipart_rewrite_new("a ", NULL, 0, NULL, sink_emit, NULL, &s, &rw),
                     -EINVAL);
    assert_int_equal(evs__multipart_rewrite_new(ok[4].want, NULL, 0, NULL, sink_emit, NULL, &s, &rw),
                     0);
    evs__multipart_rewrite_free(rw);
  }
}

/* ---- byte-exact forwarding ------------------------------------------------------------------ */

#define CD "Content-Disposition: form-data; "

static int rewrite_doc(const char *const *fields, size_t nf, struct doc d, int mode,
                       struct sink *s) {
  return rewrite_n("B0und", fields, nf, NULL, d.s, d.n, mode, s, NULL);
}

static const struct doc corpus[] = {
    /* a browser upload; the file holds NULs, CRs and partial delimiters */
    DOC("--B0und\r\n" CD "name=\"name\"\r\n\r\nClaude Shannon\r\n"
        "--B0und\r\n" CD "name=\"ssn\"\r\n\r\n123-12-1234\r\n"
        "--B0und\r\n" CD "name=\"doc\"; filename=\"scan.png\"\r\nContent-Type: image/png\r\n\r\n"
        "\x89PNG\r\n\x1a\n\0\0\r\n--B0un\r\n-\r\r\n--B0unX\r\n\r\n"
        "--B0und--\r\n"),
    /* preamble, padding, epilogue, odd spellings */
    DOC("This is the preamble.\r\n--B0un not yet\r\n--B0und \t\r\n"
        "content-disposition:FORM-DATA;NAME=ssn ;  filename*=UTF-8''x%20y\r\nX-Other: 1\r\n\r\n"
        "\r\n--B0und\r\n" CD "name=\"\"\r\n\r\n\r\n\r\n"
        "--B0und\r\n" CD "name=\"card\"\r\nContent-Length: 4\r\n\r\n4111\r\n"
        "--B0und--  \r\nepilogue --B0und\r\n garbage \x01"),
    /* an empty form, and an unterminated final line */
    DOC("--B0und--"),
    DOC("--B0und\r\n" CD "name=\"ssn\"\r\n\r\n\r\n--B0und\r\n" CD "name=\"ssn\"; filename=\"\"\r\n\r\n"
        "\r\n--B0und--"),
    /* names with odd characters, a repeated name, a file part holding a whole multipart body */
    DOC("--B0und\r\n" CD "name=\"a;b=c\"; x=\"y\\\"z\"\r\n\r\nv\r\n"
        "--B0und\r\n" CD "filename=\"C:\\dir\\f.txt\"; name=\"card\"\r\n\r\n--B1\r\nnested\r\n--B1--\r\n"
        "--B0und\r\n" CD "name=\"card\"\r\n\r\nsecond\r\n--B0und--\r\n"),
};

static const char *const fieldsets[][3] = {
    {"ssn", NULL, NULL}, {"ssn", "doc", "name"}, {"", "a;b=c", NULL}, {"card", "ssn", NULL},
    {"nothing", NULL, NULL},
};

static void test_identity(void **state) {
  static const uint64_t nparts[] = {3, 3, 0, 2, 3};
  (void)state;
  for (size_t d = 0; d < sizeof corpus / sizeof corpus[0]; d++) {
    for (int mode = 0; mode < 3; mode++) {
      for (int rep = 0; rep < (mode == 2 ? 10 : 1); rep++) {
        struct sink s;
        uint64_t parts;
        size_t n = corpus[d].n;
        int r = rewrite_n("B0und", NULL, 0, NULL, corpus[d].s, n, mode, &s, &parts);
        if (r != 0) fail_msg("doc %zu mode %d: %s", d, mode, evs__multipart_rewrite_strerror(r));
        assert_int_equal(s.len, n);
        assert_memory_equal(s.out, corpus[d].s, n);
        assert_int_equal(parts, nparts[d]);
        free(s.out);
      }
    }
  }
}

/* The result with selections does not depend on how the body is split. */
static void test_split_independence(void **state) {
  (void)state;
  for (size_t d = 0; d < sizeof corpus / sizeof corpus[0]; d++) {
    for (size_t f = 0; f < sizeof fieldsets / sizeof fieldsets[0]; f++) {
      size_t nf = fieldsets[f][1] ? fieldsets[f][2] ? 3 : 2 : 1;
      struct sink whole;
      int r0 = rewrite_doc(fieldsets[f], nf, corpus[d], 0, &whole);
      /* corpus[1] has a selected part with Content-Length when "card" is selected */
      if (d == 1 && f == 3) {
        assert_int_equal(r0, EVS__RW_E_UNSUPPORTED);
      } else if (r0 != 0) {
        fail_msg("doc %zu set %zu: %s", d, f, evs__multipart_rewrite_strerror(r0));
      }
      for (int mode = 1; mode < 3; mode++) {
        for (int rep = 0; rep < (mode == 2 ? 10 : 1); rep++) {
          struct sink s;
          assert_int_equal(rewrite_doc(fieldsets[f], nf, corpus[d], mode, &s), r0);
          if (r0 == 0) {
            assert_int_equal(s.len, whole.len);
            assert_memory_equal(s.out, whole.out, s.len);
            assert_int_equal(s.k, whole.k);
          }
          free(s.out);
        }
      }
      free(whole.out);
    }
  }
}

static void test_file_part_replaced(void **state) {
  const char *f[] = {"doc", "ssn"};
  static const char png[] = "\x89PNG\r\n\x1a\n\0\0\r\n--B0un\r\n-\r\r\n--B0unX\r\n";
  struct sink s;
  (void)state;
  for (int mode = 0; mode < 3; mode++) {
    assert_int_equal(rewrite_doc(f, 2, corpus[0], mode, &s), 0);
    assert_int_equal(s.k, 2);
    assert_int_equal(s.calls[0].type, EVS__RW_STRING);
    assert_int_equal(s.calls[0].len, 11);
    assert_string_equal(s.calls[0].value, "123-12-1234");
    assert_int_equal(s.calls[1].type, EVS__RW_FILE);
    assert_int_equal(s.calls[1].len, sizeof png - 1);
    assert_memory_equal(s.calls[1].value, png, sizeof png - 1);
    assert_string_equal(s.out,
                        "--B0und\r\n" CD "name=\"name\"\r\n\r\nClaude Shannon\r\n"
                        "--B0und\r\n" CD "name=\"ssn\"\r\n\r\nev:RFVC:0:aXY=:ZXBo:$\r\n"
                        "--B0und\r\n" CD "name=\"doc\"; filename=\"scan.png\"\r\n"
                        "Content-Type: image/png\r\n\r\n%EVENC#1\r\n"
                        "--B0und--\r\n");
    free(s.out);
  }
}

static void test_text_parts_and_odd_spellings(void **state) {
  const char *f[] = {"ssn", ""};
  struct sink s;
  (void)state;
  for (int mode = 0; mode < 3; mode++) {
    assert_int_equal(rewrite_doc(f, 2, corpus[1], mode, &s), 0);
    assert_int_equal(s.k, 2);
    /* filename*= makes it a file part; the body is empty ("\r\n" is the delimiter's) */
    assert_int_equal(s.calls[0].type, EVS__RW_FILE);
    assert_int_equal(s.calls[0].len, 0);
    assert_int_equal(s.calls[1].type, EVS__RW_STRING);
    assert_int_equal(s.calls[1].len, 2);
    assert_string_equal(s.calls[1].value, "\r\n");
    assert_string_equal(
        s.out,
        "This is the preamble.\r\n--B0un not yet\r\n--B0und \t\r\n"
        "content-disposition:FORM-DATA;NAME=ssn ;  filename*=UTF-8''x%20y\r\nX-Other: 1\r\n\r\n"
        "%EVENC#0\r\n--B0und\r\n" CD "name=\"\"\r\n\r\nev:RFVC:1:aXY=:ZXBo:$\r\n"
        "--B0und\r\n" CD "name=\"card\"\r\nContent-Length: 4\r\n\r\n4111\r\n"
        "--B0und--  \r\nepilogue --B0und\r\n garbage \x01");
    free(s.out);
  }
  { /* a repeated name, token-quoted names with ';', a nested multipart inside a file part */
    const char *g[] = {"card", "a;b=c"};
    assert_int_equal(rewrite_doc(g, 2, corpus[4], 2, &s), 0);
    assert_int_equal(s.k, 3);
    assert_string_equal(s.calls[0].value, "v");
    assert_int_equal(s.calls[1].type, EVS__RW_FILE);
    assert_string_equal(s.calls[1].value, "--B1\r\nnested\r\n--B1--");
    assert_string_equal(s.calls[2].value, "second");
    free(s.out);
  }
}

/* The async pattern: holes at output offsets, filled with the replacements later. */
static void test_deferred(void **state) {
  const char *f[] = {"doc", "ssn", "name"};
  const char *doc = corpus[0].s;
  size_t doc_len = corpus[0].n;
  struct sink sync, async;
  evs__multipart_rewrite *rw = NULL;
  char joined[2048];
  size_t jl = 0, last = 0;
  (void)state;
  assert_int_equal(rewrite_doc(f, 3, corpus[0], 0, &sync), 0);
  memset(&async, 0, sizeof async);
  async.store = true;
  async.defer = true;
  assert_int_equal(
      evs__multipart_rewrite_new("B0und", f, 3, NULL, sink_emit, sink_transform, &async, &rw), 0);
  for (size_t i = 0; i < doc_len; i++)
    assert_int_equal(evs__multipart_rewrite_feed(rw, doc + i, 1), 0);
  assert_int_equal(evs__multipart_rewrite_finish(rw), 0);
  evs__multipart_rewrite_free(rw);
  assert_int_equal(async.k, 3);
  assert_int_equal(async.k, sync.k);
  for (unsigned k = 0; k < async.k; k++) {
    memcpy(joined + jl, async.out + last, async.holes[k] - last);
    jl += async.holes[k] - last;
    jl += (size_t)rw_marker(joined + jl, sizeof joined - jl, async.calls[k].type, k);
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

#define P1 "--B0und\r\n" CD "name=\"a\"\r\n\r\nv\r\n"

static void test_malformed(void **state) {
  static const char *const bad[] = {
      "",                                                  /* no delimiter at all */
      "preamble only\r\n",                                 /* ditto */
      "--B0und\r\n",                                       /* no headers, no close */
      P1,                                                  /* no close delimiter */
      P1 "--B0und-",                                       /* half a close delimiter */
      P1 "--B0und-x",                                      /* ditto */
      P1 "--B0undX\r\n",                                   /* delimiter followed by junk */
      P1 "--B0und \tx\r\n",                                /* padding followed by junk */
      P1 "--B0und\rx",                                     /* CR without LF */
      P1 "--B0und\n" CD "name=\"b\"\r\n\r\nv\r\n--B0und--", /* bare LF after delimiter */
      "--B0und\r\n\r\nno headers\r\n--B0und--",             /* no Content-Disposition */
      "--B0und\r\nContent-Type: text/plain\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "filename=\"x\"\r\n\r\nv\r\n--B0und--", /* no name */
      "--B0und\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nv\r\n--B0und--",
      "--B0und\r\nContent-Disposition: form-data name=\"a\"\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\"; name=\"b\"\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\\\"b\"\r\n\r\nv\r\n--B0und--", /* quoted-pair in the name */
      "--B0und\r\n" CD "name*=UTF-8''a\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\r\n\r\nv\r\n--B0und--", /* unterminated quote */
      "--B0und\r\n" CD "name=\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\"; x\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\"\r\n" CD "name=\"a\"\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\"\r\n folded\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\"\nX: y\r\n\r\nv\r\n--B0und--", /* bare LF in headers */
      "--B0und\r\n" CD "name=\"a\"\rX: y\r\n\r\nv\r\n--B0und--", /* bare CR in headers */
      "--B0und\r\n" CD "name=\"a\"\r\nX : y\r\n\r\nv\r\n--B0und--", /* space before ':' */
      "--B0und\r\nno colon\r\n" CD "name=\"a\"\r\n\r\nv\r\n--B0und--",
      "--B0und\r\n" CD "name=\"a\"\r\nX: \x01\r\n\r\nv\r\n--B0und--", /* control byte */
      "--B0und\r\n" CD "name=\"a\"\r\n\r\r\nv\r\n--B0und--", /* CR CR ending headers */
      "--B0und\r\n" CD "name=\"a\"\r\n",                    /* headers never end */
  };
  const char *f[] = {"a"};
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    for (int mode = 0; mode < 3; mode++) {
      struct sink s;
      int r = rewrite(mode == 2 ? NULL : f, mode == 2 ? 0 : 1, bad[i], mode, &s);
      if (r != EVS__RW_E_SYNTAX) fail_msg("accepted #%zu mode %d: %s (%d)", i, mode, bad[i], r);
      free(s.out);
    }
  }
  { /* the offset of the error, then poisoned */
    struct sink s;
    evs__multipart_rewrite *rw = NULL;
    memset(&s, 0, sizeof s);
    assert_int_equal(evs__multipart_rewrite_new("B0und", NULL, 0, NULL, sink_emit, NULL, &s, &rw), 0);
    assert_int_equal(evs__multipart_rewrite_feed(rw, "--B0u", 5), 0);
    assert_int_equal(evs__multipart_rewrite_feed(rw, "ndXY", 4), EVS__RW_E_SYNTAX);
    assert_int_equal(evs__multipart_rewrite_error_offset(rw), 7);
    assert_int_equal(evs__multipart_rewrite_feed(rw, "\r\n", 2), EVS__RW_E_SYNTAX);
    assert_int_equal(evs__multipart_rewrite_finish(rw), EVS__RW_E_SYNTAX);
    evs__multipart_rewrite_free(rw);
  }
}

static void test_ev_data(void **state) {
  static const char *const enc[] = {
      "--B0und\r\n" CD "name=\"x\"\r\n\r\nev:RFVC:aXY=:ZXBo:Y3Q=:$\r\n--B0und--",
      P1 "--B0und\r\n" CD "name=\"x\"\r\n\r\nev:Tk9D:number:aXY=:ZXBo:Y3Q=:$\r\n--B0und--\r\n",
  };
  static const char *const plain[] = {
      /* a file part may hold anything; an almost-ev: text part is fine */
      "--B0und\r\n" CD "name=\"x\"; filename=\"f\"\r\n\r\nev:RFVC:aXY=:ZXBo:Y3Q=:$\r\n--B0und--",
      "--B0und\r\n" CD "name=\"x\"\r\n\r\nev:RFVC:aXY=:ZXBo:Y3Q=:$\r\n\r\n--B0und--",
      "--B0und\r\n" CD "name=\"x\"\r\n\r\nev:RFVC:aXY=:ZXBo:Y3Q=\r\n--B0und--",
      "--B0und\r\n" CD "name=\"ev:RFVC:aXY=:ZXBo:Y3Q=:$\"\r\n\r\nv\r\n--B0und--",
      "ev:RFVC:aXY=:ZXBo:Y3Q=:$\r\n--B0und--", /* the preamble is not a field */
  };
  const char *f[] = {"ssn"};
  struct sink s;
  (void)state;
  for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
    for (int mode = 0; mode < 3; mode++) {
      assert_int_equal(rewrite(f, 1, enc[i], mode, &s), EVS__RW_E_EVDATA);
      free(s.out);
    }
  }
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    if (rewrite(f, 1, plain[i], 1, &s) != 0) fail_msg("%s", plain[i]);
    free(s.out);
  }
  /* selected ev: data is the transform's business */
  {
    const char *g[] = {"x"};
    assert_int_equal(rewrite(g, 1, enc[0], 0, &s), 0);
    assert_int_equal(s.k, 1);
    free(s.out);
  }
}

static void test_limits_and_unsupported(void **state) {
  struct evs__multipart_rewrite_opts o = {.size = sizeof o, .max_value = 8, .max_header = 64};
  const char *f[] = {"a"};
  const char *ok8 = "--B0und\r\n" CD "name=\"a\"\r\n\r\n12345678\r\n--B0und--";
  const char *big9 = "--B0und\r\n" CD "name=\"a\"\r\n\r\n123456789\r\n--B0und--";
  const char *other = "--B0und\r\n" CD "name=\"b\"\r\n\r\n123456789012345\r\n--B0und--";
  struct sink s;
  (void)state;
  assert_int_equal(rewrite_n("B0und", f, 1, &o, ok8, strlen(ok8), 1, &s, NULL), 0);
  free(s.out);
  assert_int_equal(rewrite_n("B0und", f, 1, &o, big9, strlen(big9), 1, &s, NULL),
                   EVS__RW_E_TOOBIG);
  free(s.out);
  assert_int_equal(rewrite_n("B0und", f, 1, &o, other, strlen(other), 1, &s, NULL), 0);
  free(s.out);
  { /* the header block cap: 64 bytes here, 16 KiB by default */
    char doc[20000];
    size_t n = (size_t)sprintf(doc, "--B0und\r\n" CD "name=\"a\"\r\nX: ");
    const char *h62 = "--B0und\r\n" CD "name=\"a\"\r\nX: 123456789\r\n\r\nv\r\n--B0und--";
    assert_int_equal(rewrite_n("B0und", NULL, 0, &o, h62, strlen(h62), 0, &s, NULL), 0);
    free(s.out);
    assert_int_equal(rewrite_n("B0und", NULL, 0, &o, h62, strlen(h62) - 1, 0, &s, NULL),
                     EVS__RW_E_SYNTAX);
    free(s.out);
    memset(doc + n, 'x', 16 * 1024);
    n += 16 * 1024;
    n += (size_t)sprintf(doc + n, "\r\n\r\nv\r\n--B0und--");
    assert_int_equal(rewrite_n("B0und", NULL, 0, NULL, doc, n, 0, &s, NULL), EVS__RW_E_SYNTAX);
    free(s.out);
    n = (size_t)sprintf(doc, "--B0und\r\n" CD "name=\"a\"\r\nX: ");
    memset(doc + n, 'x', 15 * 1024);
    n += 15 * 1024;
    n += (size_t)sprintf(doc + n, "\r\n\r\nv\r\n--B0und--");
    assert_int_equal(rewrite_n("B0und", NULL, 0, NULL, doc, n, 2, &s, NULL), 0);
    free(s.out);
  }
  { /* Content-Length or Content-Transfer-Encoding: refused on selected parts; on others only
     * a decoding Content-Transfer-Encoding (the destination would see what the relay did not) */
    const char *cl = "--B0und\r\n" CD "name=\"a\"\r\ncontent-length: 1\r\n\r\nv\r\n--B0und--";
    const char *cte =
        "--B0und\r\n" CD "name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\ndg==\r\n--B0und--";
    const char *qp = "--B0und\r\n" CD
                     "name=\"a\"\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\n=76\r\n--B0und--";
    const char *cte8 =
        "--B0und\r\n" CD "name=\"a\"\r\nContent-Transfer-Encoding: 8BIT\r\n\r\nv\r\n--B0und--";
    const char *g[] = {"b"};
    assert_int_equal(rewrite(f, 1, cl, 0, &s), EVS__RW_E_UNSUPPORTED);
    free(s.out);
    assert_int_equal(rewrite(f, 1, cte, 0, &s), EVS__RW_E_UNSUPPORTED);
    free(s.out);
    assert_int_equal(rewrite(f, 1, cte8, 0, &s), EVS__RW_E_UNSUPPORTED);
    free(s.out);
    assert_int_equal(rewrite(g, 1, cl, 0, &s), 0);
    free(s.out);
    assert_int_equal(rewrite(g, 1, cte8, 0, &s), 0);
    free(s.out);
    assert_int_equal(rewrite(g, 1, cte, 0, &s), EVS__RW_E_UNSUPPORTED);
    free(s.out);
    assert_int_equal(rewrite(g, 1, qp, 0, &s), EVS__RW_E_UNSUPPORTED);
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

static void test_callback_errors(void **state) {
  evs__multipart_rewrite *rw = NULL;
  const char *f[] = {"a"};
  struct sink s;
  (void)state;
  assert_int_equal(evs__multipart_rewrite_new("b", f, 1, NULL, sink_emit, NULL, NULL, &rw), -EINVAL);
  assert_int_equal(evs__multipart_rewrite_new("b", NULL, 0, NULL, emit_fail, NULL, NULL, &rw), 0);
  assert_int_equal(evs__multipart_rewrite_feed(rw, "--b--", 5), -EPIPE);
  assert_int_equal(evs__multipart_rewrite_finish(rw), -EPIPE);
  evs__multipart_rewrite_free(rw);
  evs__multipart_rewrite_free(NULL);
  memset(&s, 0, sizeof s);
  assert_int_equal(
      evs__multipart_rewrite_new("B0und", f, 1, NULL, sink_emit, transform_fail, &s, &rw), 0);
  assert_int_equal(evs__multipart_rewrite_feed(rw, P1 "--B0und--", strlen(P1) + 9), -EIO);
  evs__multipart_rewrite_free(rw);
}

/* ---- bounded memory ------------------------------------------------------------------------- */

/* A 25 MB unselected file part streams through with a few KiB of memory, and the selected text
 * parts around it are still rewritten. */
static void test_bounded_memory(void **state) {
  const char *f[] = {"ssn", "card"};
  evs__multipart_rewrite *rw = NULL;
  struct sink s;
  char *chunk = malloc(65536);
  size_t total = 0, target = 25u * 1024 * 1024, hw, in = 0;
  const char *head = "--B0und\r\n" CD "name=\"ssn\"\r\n\r\n123-45-6789\r\n"
                     "--B0und\r\n" CD "name=\"big\"; filename=\"big.bin\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n";
  const char *tail = "\r\n--B0und\r\n" CD "name=\"card\"\r\n\r\n4111111111111111\r\n--B0und--\r\n";
  (void)state;
  assert_non_null(chunk);
  /* content full of near-delimiters: CRs, CRLF--, CRLF--B0un */
  for (size_t i = 0; i < 65536; i++) chunk[i] = "\r\n--B0un\rx\r\n-"[i % 14];
  memset(&s, 0, sizeof s); /* count only */
  assert_int_equal(
      evs__multipart_rewrite_new("B0und", f, 2, NULL, sink_emit, sink_transform, &s, &rw), 0);
  assert_int_equal(evs__multipart_rewrite_feed(rw, head, strlen(head)), 0);
  in += strlen(head);
  while (total < target) {
    size_t c = 65536 - rng() % 100; /* feeds not aligned with the pattern */
    assert_int_equal(evs__multipart_rewrite_feed(rw, chunk, c), 0);
    total += c;
  }
  in += total;
  assert_int_equal(evs__multipart_rewrite_feed(rw, tail, strlen(tail)), 0);
  in += strlen(tail);
  assert_int_equal(evs__multipart_rewrite_finish(rw), 0);
  hw = evs__multipart_rewrite_mem_high_water(rw);
  assert_int_equal(s.k, 2);
  assert_int_equal(evs__multipart_rewrite_parts(rw), 3);
  {
    char m[64];
    size_t m0 = (size_t)rw_marker(m, sizeof m, EVS__RW_STRING, 0);
    size_t m1 = (size_t)rw_marker(m, sizeof m, EVS__RW_STRING, 1);
    assert_int_equal(s.len, in - 11 - 16 + m0 + m1);
  }
  if (hw >= 4096) fail_msg("high water %zu bytes for a %zu-byte body", hw, in);
  evs__multipart_rewrite_free(rw);
  free(chunk);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_boundary),
      cmocka_unit_test(test_identity),
      cmocka_unit_test(test_split_independence),
      cmocka_unit_test(test_file_part_replaced),
      cmocka_unit_test(test_text_parts_and_odd_spellings),
      cmocka_unit_test(test_deferred),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_ev_data),
      cmocka_unit_test(test_limits_and_unsupported),
      cmocka_unit_test(test_callback_errors),
      cmocka_unit_test(test_bounded_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
