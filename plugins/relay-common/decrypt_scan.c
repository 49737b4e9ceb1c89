/*
 * decrypt_scan: the Inbound Relay's streaming response-decryption scanner (contract in
 * decrypt_scan.h). Two layers: an optional multipart splitter that finds the delimiters and part
 * headers, and a "segment" scanner for the whole body or one part body, which first looks for the
 * %EVENC magic (raw files and parts) and then either collects a file or runs the JSON or text
 * token scanner. Every state survives any split of the input: a candidate token still open at the
 * end of a feed is copied into `hold` (capped), a partial delimiter match is remembered as a
 * count (its bytes are the delimiter's own), and a partial magic likewise. Everything else is
 * emitted as spans of the caller's buffer.
 */
#include "decrypt_scan.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_TOKEN ((size_t)1 << 20)
#define DEFAULT_MAX_FILE ((size_t)25 << 20)
#define MAX_HDR 8192        /* part headers kept to find the part's Content-Type */
#define JSON_MAX_DEPTH 1024 /* container kinds remembered; deeper strings are left alone */
#define MAX_BOUNDARY 70     /* RFC 2046 */

static const char magic[6] = {'%', 'E', 'V', 'E', 'N', 'C'};

enum scan { SC_RAW, SC_JSON, SC_TEXT };
enum tstate { TS_SCAN, TS_CAND, TS_SKIP };
enum mpstate { MP_PREAMBLE, MP_DELIM_LINE, MP_HEADERS, MP_BODY, MP_EPILOGUE };
enum { TK_MORE, TK_DONE, TK_FAIL };

/* Incremental check of an ev: string, fed its (decoded) characters. */
struct tk {
  unsigned pos;    /* bytes of "ev:" matched, 0..3 */
  unsigned colons; /* ':' seen, the one of "ev:" included */
  bool last_colon; /* the previous character was ':' */
  bool done;       /* ":$" seen with a valid colon count */
};

struct evs__decrypt_scan {
  evs__rw_emit_fn emit;
  evs__decrypt_transform_fn transform;
  void *ud;
  size_t max_token, max_file;
  evs__dscan_mode mode;
  int err;
  bool finished;
  uint64_t found;
  size_t mem, mem_hw;

  /* segment: the whole body, or the current part body */
  enum scan scan;
  int kind; /* transform kind of this segment's tokens */
  bool probing, file;
  size_t probe_len;

  /* token scanners (JSON and text) */
  enum tstate ts;
  bool cand;               /* JSON: inside a candidate string */
  bool prev_alnum;         /* text: the byte before the current feed was a letter or digit */
  const char *cand_start;  /* candidate start in the current buffer; NULL: it began earlier */
  size_t cand_len;         /* raw bytes of the candidate so far */
  struct tk tk;
  unsigned pct;            /* FORM: 0, or hex digits still expected after '%' (2, 1) */
  unsigned char pct_val;
  bool decode;             /* the candidate holds an escape ("\/", "%XX") */
  bool cand_esc;           /* JSON candidate: after a backslash */
  bool in_str, esc, expect_key;
  size_t depth;
  uint8_t is_obj[JSON_MAX_DEPTH / 8];

  char *hold; /* candidate bytes from earlier feeds (<= max_token) */
  size_t hold_len, hold_cap;
  char *val; /* decoded candidate (<= max_token) */
  size_t val_cap;
  char *fbuf; /* %EVENC file (<= max_file) */
  size_t flen, fcap;

  /* multipart */
  enum mpstate mp;
  char delim[4 + MAX_BOUNDARY]; /* "\r\n--" boundary */
  size_t dlen;
  size_t match;     /* delimiter bytes matched, delim[0..match) */
  size_t mstart;    /* 2 while the first delimiter may come without its CRLF, else 0 */
  size_t held;      /* matched bytes from earlier feeds, not yet emitted */
  const char *mpos; /* where the current match starts in this feed's buffer */
  unsigned dashes;  /* delimiter line: leading '-' (3: not a close delimiter) */
  size_t line_len;  /* header line: bytes other than CR */
  char *hdr;
  size_t hdr_len, hdr_cap;
};

const char *evs__decrypt_scan_strerror(int err) {
  switch (err) {
  case EVS__DSCAN_E_TOOBIG: return "encrypted file too large";
  case -ENOMEM: return "out of memory";
  case -EINVAL: return "invalid argument or transform result";
  default: return "error";
  }
}

/* ---- content types -------------------------------------------------------------------------- */

static int lc(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
static bool is_ws(int c) { return c == ' ' || c == '\t'; }

static bool eq_ci(const char *a, size_t n, const char *lit) {
  size_t m = strlen(lit);
  if (n != m) return false;
  for (size_t i = 0; i < n; i++)
    if (lc((unsigned char)a[i]) != lit[i]) return false;
  return true;
}

static bool ends_ci(const char *a, size_t n, const char *lit) {
  size_t m = strlen(lit);
  return n >= m && eq_ci(a + n - m, m, lit);
}

/* Calls back for each parameter of a media type (after the first ';'): name and value, a quoted
 * value unescaped into buf (truncated at cap). Returns what cb returns when non-zero, else 0. */
typedef int (*param_fn)(void *ctx, const char *name, size_t nlen, const char *val, size_t vlen);

static int each_param(const char *p, param_fn cb, void *ctx) {
  char buf[256];
  while (*p) {
    const char *name, *v;
    size_t nlen, vlen = 0;
    int r;
    while (*p && *p != ';') p++;
    if (!*p) break;
    p++;
    while (is_ws(*p)) p++;
    name = p;
    while (*p && *p != '=' && *p != ';' && !is_ws(*p)) p++;
    nlen = (size_t)(p - name);
    while (is_ws(*p)) p++;
    if (*p != '=') continue;
    p++;
    while (is_ws(*p)) p++;
    if (*p == '"') {
      p++;
      while (*p && *p != '"') {
        if (*p == '\\' && p[1]) p++;
        if (vlen < sizeof buf) buf[vlen++] = *p;
        p++;
      }
      if (*p == '"') p++;
      v = buf;
    } else {
      v = p;
      while (*p && *p != ';' && !is_ws(*p)) p++;
      vlen = (size_t)(p - v);
    }
    if ((r = cb(ctx, name, nlen, v, vlen)) != 0) return r;
  }
  return 0;
}

static int has_charset(void *ctx, const char *name, size_t nlen, const char *v, size_t vlen) {
  (void)ctx, (void)v;
  return eq_ci(name, nlen, "charset") && vlen > 0;
}

static int get_boundary(void *ctx, const char *name, size_t nlen, const char *v, size_t vlen) {
  evs__decrypt_scan *s = ctx;
  if (!eq_ci(name, nlen, "boundary")) return 0;
  /* A boundary we could not match safely (empty, too long, control bytes) leaves dlen at 0. The
   * splitter relies on it holding no CR: then a failed match never restarts inside itself. */
  if (vlen == 0 || vlen > MAX_BOUNDARY) return 1;
  for (size_t i = 0; i < vlen; i++)
    if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e) return 1;
  memcpy(s->delim, "\r\n--", 4);
  memcpy(s->delim + 4, v, vlen);
  s->dlen = 4 + vlen;
  return 1;
}

evs__dscan_mode evs__decrypt_scan_mode_for(const char *ct) {
  const char *type, *sub;
  size_t tlen, slen;
  if (!ct) return EVS__DSCAN_MODE_RAW;
  while (is_ws(*ct)) ct++;
  type = ct;
  while (*ct && *ct != '/' && *ct != ';' && !is_ws(*ct)) ct++;
  tlen = (size_t)(ct - type);
  if (*ct != '/') return EVS__DSCAN_MODE_RAW;
  sub = ++ct;
  while (*ct && *ct != ';' && !is_ws(*ct)) ct++;
  slen = (size_t)(ct - sub);
  if (tlen == 0 || slen == 0) return EVS__DSCAN_MODE_RAW;

  if (eq_ci(type, tlen, "multipart")) {
    /* byteranges are slices of one file: never decrypt a part of one. */
    if (eq_ci(sub, slen, "form-data") || eq_ci(sub, slen, "mixed") ||
        eq_ci(sub, slen, "related") || eq_ci(sub, slen, "alternative"))
      return EVS__DSCAN_MODE_MULTIPART;
    return EVS__DSCAN_MODE_RAW;
  }
  if (ends_ci(sub, slen, "+json") ||
      ((eq_ci(type, tlen, "application") || eq_ci(type, tlen, "text")) &&
       (eq_ci(sub, slen, "json") || eq_ci(sub, slen, "x-ndjson") || eq_ci(sub, slen, "ndjson"))))
    return EVS__DSCAN_MODE_JSON;
  /* HTML takes markup escaping too: a raw plaintext could inject markup. */
  if (ends_ci(sub, slen, "+xml") || eq_ci(sub, slen, "xml") ||
      (eq_ci(type, tlen, "text") && eq_ci(sub, slen, "html")))
    return EVS__DSCAN_MODE_XML;
  if (eq_ci(type, tlen, "application") && eq_ci(sub, slen, "x-www-form-urlencoded"))
    return EVS__DSCAN_MODE_FORM;
  if (eq_ci(type, tlen, "text")) return EVS__DSCAN_MODE_TEXT;
  if (eq_ci(type, tlen, "application") &&
      (eq_ci(sub, slen, "javascript") || eq_ci(sub, slen, "x-javascript") ||
       eq_ci(sub, slen, "ecmascript") || eq_ci(sub, slen, "yaml") || eq_ci(sub, slen, "x-yaml") ||
       eq_ci(sub, slen, "csv") || eq_ci(sub, slen, "graphql")))
    return EVS__DSCAN_MODE_TEXT;
  if (each_param(ct, has_charset, NULL)) return EVS__DSCAN_MODE_TEXT;
  return EVS__DSCAN_MODE_RAW;
}

/* ---- buffers and callbacks ------------------------------------------------------------------ */

static int grow(evs__decrypt_scan *s, char **buf, size_t *cap, size_t need, size_t limit) {
  size_t n;
  char *p;
  if (need <= *cap) return 0;
  if (need > limit) return EVS__DSCAN_E_TOOBIG;
  n = *cap ? *cap : 256;
  if (n > limit) n = limit;
  while (n < need) n = n > limit / 2 ? limit : n * 2;
  if (!(p = realloc(*buf, n))) return -ENOMEM;
  s->mem = s->mem - *cap + n;
  if (s->mem > s->mem_hw) s->mem_hw = s->mem;
  *buf = p;
  *cap = n;
  return 0;
}

static int emit(evs__decrypt_scan *s, const char *b, size_t n) {
  return n ? s->emit(s->ud, b, n) : 0;
}

static int transform(evs__decrypt_scan *s, int kind, const char *v, size_t n) {
  const char *out = NULL;
  size_t outlen = 0;
  int r;
  s->found++;
  r = s->transform(s->ud, kind, v, n, &out, &outlen);
  if (r == EVS__RW_DEFER) return 0;
  if (r < 0) return r;
  if (r > 0 || (outlen && !out)) return -EINVAL;
  return emit(s, out, outlen);
}

/* ---- candidates ------------------------------------------------------------------------------ */

/* The characters of a token's base64 fields (standard and URL-safe alphabets, padding). */
static const bool b64_chars[256] = {
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,
    ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1,
    ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1,
    ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['+'] = 1, ['/'] = 1,
    ['='] = 1, ['_'] = 1, ['-'] = 1,
};

static bool is_b64(unsigned char c) { return b64_chars[c]; }

static bool is_alnum(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = (unsigned char)lc(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int tk_step(struct tk *t, unsigned char c) {
  if (t->done) return TK_FAIL;
  if (t->pos < 3) {
    if (c != (unsigned char)"ev:"[t->pos]) return TK_FAIL;
    if (++t->pos == 3) {
      t->colons = 1;
      t->last_colon = true;
    }
    return TK_MORE;
  }
  if (c == ':') {
    if (t->last_colon || ++t->colons > 6) return TK_FAIL;
    t->last_colon = true;
    return TK_MORE;
  }
  if (c == '$') {
    if (!t->last_colon || t->colons < 5) return TK_FAIL;
    t->done = true;
    return TK_DONE;
  }
  if (!is_b64(c)) return TK_FAIL;
  t->last_colon = false;
  return TK_MORE;
}

static void cand_begin(evs__decrypt_scan *s, const char *p) {
  s->cand_start = p;
  s->cand_len = 0;
  s->hold_len = 0;
  memset(&s->tk, 0, sizeof s->tk);
  s->pct = 0;
  s->decode = false;
  s->cand_esc = false;
}

/* The candidate is not a token: its held bytes go out now, the rest (in this buffer) becomes
 * pass-through again from *pass. */
static int cand_fail(evs__decrypt_scan *s, const char *b, const char **pass) {
  int r = 0;
  if (s->hold_len) r = emit(s, s->hold, s->hold_len);
  s->hold_len = 0;
  *pass = s->cand_start ? s->cand_start : b;
  return r;
}

/* The candidate is a token ending just before q (in the buffer starting at b). */
static int cand_done(evs__decrypt_scan *s, const char *b, const char *q) {
  const char *raw;
  size_t n, o = 0;
  int r;
  if (s->hold_len) { /* began in an earlier feed: cand_start is NULL */
    if ((r = grow(s, &s->hold, &s->hold_cap, s->hold_len + (size_t)(q - b), s->max_token)) < 0)
      return r;
    memcpy(s->hold + s->hold_len, b, (size_t)(q - b));
    raw = s->hold;
    n = s->hold_len + (size_t)(q - b);
  } else {
    raw = s->cand_start;
    n = (size_t)(q - raw);
  }
  s->hold_len = 0;
  if (s->scan == SC_JSON) { /* drop the quotes */
    raw++;
    n -= 2;
  }
  if (s->decode) {
    if ((r = grow(s, &s->val, &s->val_cap, n, s->max_token)) < 0) return r;
    for (size_t i = 0; i < n; i++) {
      if (s->scan == SC_JSON && raw[i] == '\\') { /* only "\/" reaches here */
        s->val[o++] = raw[++i];
      } else if (s->scan != SC_JSON && raw[i] == '%') { /* checked: two hex digits follow */
        s->val[o++] = (char)(hexval((unsigned char)raw[i + 1]) << 4 |
                             hexval((unsigned char)raw[i + 2]));
        i += 2;
      } else {
        s->val[o++] = raw[i];
      }
    }
    raw = s->val;
    n = o;
  }
  return transform(s, s->kind, raw, n);
}

/* End of a feed: an open candidate is kept for the next one, anything else goes out. */
static int feed_end(evs__decrypt_scan *s, bool open, const char *b, const char *pass,
                    const char *end) {
  const char *from;
  int r;
  if (!open) return emit(s, pass, (size_t)(end - pass));
  from = s->cand_start ? s->cand_start : b;
  if ((r = emit(s, pass, (size_t)(from - pass))) < 0) return r;
  /* cand_len <= max_token covers the held bytes too */
  if ((r = grow(s, &s->hold, &s->hold_cap, s->hold_len + (size_t)(end - from), s->max_token)) < 0)
    return r;
  memcpy(s->hold + s->hold_len, from, (size_t)(end - from));
  s->hold_len += (size_t)(end - from);
  s->cand_start = NULL;
  return 0;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

static bool json_value_pos(const evs__decrypt_scan *s) {
  size_t d = s->depth;
  if (d == 0) return true;
  if (d > JSON_MAX_DEPTH) return false;
  return !(s->is_obj[(d - 1) / 8] >> ((d - 1) % 8) & 1) || !s->expect_key;
}

static bool json_top_is_obj(const evs__decrypt_scan *s) {
  size_t d = s->depth;
  return d > 0 && d <= JSON_MAX_DEPTH && (s->is_obj[(d - 1) / 8] >> ((d - 1) % 8) & 1);
}

static void json_push(evs__decrypt_scan *s, bool obj) {
  size_t d = s->depth++;
  if (d < JSON_MAX_DEPTH) {
    if (obj) s->is_obj[d / 8] |= (uint8_t)(1u << (d % 8));
    else s->is_obj[d / 8] &= (uint8_t)~(1u << (d % 8));
  }
  s->expect_key = obj;
}

static int json_feed(evs__decrypt_scan *s, const char *b, size_t n) {
  const char *p = b, *end = b + n, *pass = b;
  int r;
  while (p < end) {
    unsigned char c = (unsigned char)*p;
    if (s->cand && s->tk.pos == 3 && !s->tk.done && !s->cand_esc && is_b64(c)) {
      /* Inside a field of a token: a run of base64 takes each byte as tk_step would (last_colon
       * cleared), up to max_token; the byte after it goes the byte-by-byte way below. */
      size_t room = s->max_token - s->cand_len;
      const char *q = p, *lim = (size_t)(end - p) < room ? end : p + room;
      while (q < lim && is_b64((unsigned char)*q)) q++;
      if (q > p) {
        s->tk.last_colon = false;
        s->cand_len += (size_t)(q - p);
        p = q;
        continue;
      }
    }
    if (s->cand) {
      int t = TK_MORE;
      if (s->cand_esc) {
        s->cand_esc = false;
        if (c == '/') {
          t = tk_step(&s->tk, '/');
          s->decode = true;
        } else {
          t = TK_FAIL;
        }
        if (t == TK_FAIL) { /* the escaped byte is an ordinary part of the string */
          if ((r = cand_fail(s, b, &pass)) < 0) return r;
          s->cand = false;
          p++;
          continue;
        }
      } else if (c == '"') {
        bool ok = s->tk.done;
        s->cand = false;
        s->in_str = false;
        p++;
        /* The closing quote counts: a held candidate never exceeds max_token. */
        if (ok && ++s->cand_len <= s->max_token) {
          if ((r = cand_done(s, b, p)) < 0) return r;
          pass = p;
        } else if ((r = cand_fail(s, b, &pass)) < 0) {
          return r;
        }
        continue;
      } else if (c == '\\') {
        s->cand_esc = true;
      } else if (tk_step(&s->tk, c) == TK_FAIL) {
        if ((r = cand_fail(s, b, &pass)) < 0) return r;
        s->cand = false;
        p++;
        continue;
      }
      p++;
      if (++s->cand_len > s->max_token) { /* too long: an ordinary string from here on */
        if ((r = cand_fail(s, b, &pass)) < 0) return r;
        s->cand = false;
        s->esc = s->cand_esc;
      }
      continue;
    }
    if (s->in_str) {
      if (s->esc) {
        s->esc = false;
        p++;
        continue;
      }
      while (p < end && *p != '"' && *p != '\\') p++;
      if (p == end) break;
      if (*p == '\\') s->esc = true;
      else s->in_str = false;
      p++;
      continue;
    }
    switch (c) {
    case '"':
      s->in_str = true;
      if (json_value_pos(s)) {
        if ((r = emit(s, pass, (size_t)(p - pass))) < 0) return r;
        pass = p;
        cand_begin(s, p);
        s->cand = true;
        s->cand_len = 1;
      }
      break;
    case '{': json_push(s, true); break;
    case '[': json_push(s, false); break;
    case '}':
    case ']':
      if (s->depth) s->depth--;
      s->expect_key = false;
      break;
    case ',':
      if (json_top_is_obj(s)) s->expect_key = true;
      break;
    case ':': s->expect_key = false; break;
    default: break;
    }
    p++;
  }
  return feed_end(s, s->cand, b, pass, end);
}

/* ---- text (XML, form, plain) ---------------------------------------------------------------- */

static bool is_run(const evs__decrypt_scan *s, unsigned char c) {
  return is_b64(c) || c == ':' || (c == '%' && s->kind == EVS__DSCAN_FORM);
}

static int text_feed(evs__decrypt_scan *s, const char *b, size_t n) {
  const char *p = b, *end = b + n, *pass = b;
  int r;
  while (p < end) {
    if (s->ts == TS_SCAN) {
      const char *q = memchr(p, 'e', (size_t)(end - p));
      if (!q) break;
      p = q + 1;
      if (q > b ? is_alnum((unsigned char)q[-1]) : s->prev_alnum) continue;
      if ((r = emit(s, pass, (size_t)(q - pass))) < 0) return r;
      pass = q;
      cand_begin(s, q);
      tk_step(&s->tk, 'e');
      s->cand_len = 1;
      s->ts = TS_CAND;
    } else if (s->ts == TS_CAND) {
      unsigned char c = (unsigned char)*p;
      int t;
      if (s->pct) {
        int h = hexval(c);
        if (h < 0) {
          t = TK_FAIL;
        } else {
          s->pct_val = (unsigned char)(s->pct_val << 4 | h);
          t = --s->pct ? TK_MORE : tk_step(&s->tk, s->pct_val);
        }
      } else if (c == '%' && s->kind == EVS__DSCAN_FORM) {
        s->pct = 2;
        s->pct_val = 0;
        s->decode = true;
        t = TK_MORE;
      } else {
        t = tk_step(&s->tk, c);
      }
      if (t == TK_FAIL) {
        /* The run is not a token. Inside "ev:" nothing started, so c is looked at again;
         * past it the rest of the run is skipped as a whole. */
        if ((r = cand_fail(s, b, &pass)) < 0) return r;
        s->ts = s->tk.pos < 3 || !is_run(s, c) ? TS_SCAN : TS_SKIP;
        continue;
      }
      p++;
      /* The final '$' counts: a held candidate never exceeds max_token. */
      if (++s->cand_len > s->max_token) {
        if ((r = cand_fail(s, b, &pass)) < 0) return r;
        s->ts = TS_SKIP;
      } else if (t == TK_DONE) {
        if ((r = cand_done(s, b, p)) < 0) return r;
        pass = p;
        s->ts = TS_SCAN;
      }
    } else {
      while (p < end && is_run(s, (unsigned char)*p)) p++;
      if (p < end) s->ts = TS_SCAN;
    }
  }
  if (n) s->prev_alnum = is_alnum((unsigned char)end[-1]);
  return feed_end(s, s->ts == TS_CAND, b, pass, end);
}

/* ---- segments -------------------------------------------------------------------------------- */

static void seg_reset(evs__decrypt_scan *s, evs__dscan_mode m, bool probe) {
  switch (m) {
  case EVS__DSCAN_MODE_JSON: s->scan = SC_JSON, s->kind = EVS__DSCAN_STRING_JSON; break;
  case EVS__DSCAN_MODE_XML: s->scan = SC_TEXT, s->kind = EVS__DSCAN_XML; break;
  case EVS__DSCAN_MODE_FORM: s->scan = SC_TEXT, s->kind = EVS__DSCAN_FORM; break;
  case EVS__DSCAN_MODE_RAW: s->scan = SC_RAW, s->kind = EVS__DSCAN_TEXT; break;
  default: s->scan = SC_TEXT, s->kind = EVS__DSCAN_TEXT; break;
  }
  s->probing = probe;
  s->probe_len = 0;
  s->file = false;
  s->flen = 0;
  s->ts = TS_SCAN;
  s->cand = false;
  s->prev_alnum = false;
  s->cand_start = NULL;
  s->hold_len = 0;
  s->in_str = s->esc = s->expect_key = false;
  s->depth = 0;
}

static int scan_feed(evs__decrypt_scan *s, const char *b, size_t n) {
  if (!n) return 0;
  switch (s->scan) {
  case SC_JSON: return json_feed(s, b, n);
  case SC_TEXT: return text_feed(s, b, n);
  default: return emit(s, b, n);
  }
}

static int seg_feed(evs__decrypt_scan *s, const char *b, size_t n) {
  int r;
  if (s->probing) {
    while (n && s->probe_len < sizeof magic && *b == magic[s->probe_len]) {
      s->probe_len++;
      b++;
      n--;
    }
    if (s->probe_len == sizeof magic) {
      s->probing = false;
      s->file = true;
      if ((r = grow(s, &s->fbuf, &s->fcap, sizeof magic, s->max_file)) < 0) return r;
      memcpy(s->fbuf, magic, sizeof magic);
      s->flen = sizeof magic;
    } else if (n) { /* mismatch: the matched prefix is ordinary content */
      s->probing = false;
      if ((r = scan_feed(s, magic, s->probe_len)) < 0) return r;
    }
  }
  if (s->file) {
    if (!n) return 0;
    if ((r = grow(s, &s->fbuf, &s->fcap, s->flen + n, s->max_file)) < 0) return r;
    memcpy(s->fbuf + s->flen, b, n);
    s->flen += n;
    return 0;
  }
  return scan_feed(s, b, n);
}

static int seg_finish(evs__decrypt_scan *s) {
  int r = 0;
  if (s->probing) {
    s->probing = false;
    if ((r = scan_feed(s, magic, s->probe_len)) < 0) return r;
  }
  if (s->file) {
    s->file = false;
    return transform(s, EVS__DSCAN_FILE, s->fbuf, s->flen);
  }
  /* an open candidate at the end is not a token */
  if (s->hold_len) r = emit(s, s->hold, s->hold_len);
  s->hold_len = 0;
  s->cand = false;
  s->ts = TS_SCAN;
  return r;
}

/* ---- multipart ------------------------------------------------------------------------------- */

/* A part's headers are complete in hdr[0..hdr_len): scan its body by its Content-Type. */
static void part_begin(evs__decrypt_scan *s) {
  evs__dscan_mode m = EVS__DSCAN_MODE_TEXT; /* form fields carry no Content-Type */
  const char *p = s->hdr, *end = s->hdr + s->hdr_len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end;
    if (le - p > 13 && eq_ci(p, 13, "content-type:")) {
      char ct[512];
      size_t n = (size_t)(le - p - 13);
      if (n >= sizeof ct) n = sizeof ct - 1;
      memcpy(ct, p + 13, n);
      ct[n] = 0;
      for (size_t i = 0; i < n; i++)
        if (ct[i] == '\r' || ct[i] == 0) ct[i] = ' ';
      m = evs__decrypt_scan_mode_for(ct);
      if (m == EVS__DSCAN_MODE_MULTIPART) m = EVS__DSCAN_MODE_TEXT; /* not nested */
      break;
    }
    p = le + 1;
  }
  seg_reset(s, m, true);
}

static int mp_flush(evs__decrypt_scan *s, const char *b, size_t n) {
  return s->mp == MP_BODY ? seg_feed(s, b, n) : emit(s, b, n);
}

static int mp_feed(evs__decrypt_scan *s, const char *b, size_t n) {
  const char *p = b, *end = b + n, *run = b; /* run: bytes not yet flushed */
  int r;
  if (s->match) s->mpos = b;
  while (p < end) {
    switch (s->mp) {
    case MP_PREAMBLE:
    case MP_BODY:
      if (s->match == 0) {
        const char *q = memchr(p, '\r', (size_t)(end - p));
        if (!q) {
          p = end;
          break;
        }
        s->mpos = q;
        s->mstart = s->held = 0;
        s->match = 1;
        p = q + 1;
        break;
      }
      if (*p != s->delim[s->match]) {
        /* The delimiter's only CR is its first byte, so no suffix of a failed match can start
         * another: the matched bytes are content and *p is looked at again. */
        if (s->held && (r = mp_flush(s, s->delim + s->mstart, s->held)) < 0) return r;
        s->held = 0;
        s->match = 0;
        break;
      }
      p++;
      if (++s->match < s->dlen) break;
      if ((r = mp_flush(s, run, (size_t)(s->mpos - run))) < 0) return r;
      if (s->mp == MP_BODY && (r = seg_finish(s)) < 0) return r;
      if ((r = emit(s, s->delim + s->mstart, s->dlen - s->mstart)) < 0) return r;
      run = p;
      s->match = s->held = s->mstart = 0;
      s->mp = MP_DELIM_LINE;
      s->dashes = 0;
      break;
    case MP_DELIM_LINE: {
      char c = *p++;
      if (s->dashes < 2 && c == '-') {
        if (++s->dashes == 2) s->mp = MP_EPILOGUE;
      } else {
        s->dashes = 3;
        if (c == '\n') {
          s->mp = MP_HEADERS;
          s->line_len = 0;
          s->hdr_len = 0;
        }
      }
      break;
    }
    case MP_HEADERS: {
      char c = *p++;
      if (s->hdr_len < MAX_HDR) {
        if ((r = grow(s, &s->hdr, &s->hdr_cap, s->hdr_len + 1, MAX_HDR)) < 0) return r;
        s->hdr[s->hdr_len++] = c;
      }
      if (c == '\n') {
        if (s->line_len == 0) { /* the empty line: the body follows */
          if ((r = emit(s, run, (size_t)(p - run))) < 0) return r;
          run = p;
          s->mp = MP_BODY;
          part_begin(s);
        }
        s->line_len = 0;
      } else if (c != '\r') {
        s->line_len++;
      }
      break;
    }
    case MP_EPILOGUE: p = end; break;
    }
  }
  if ((s->mp == MP_PREAMBLE || s->mp == MP_BODY) && s->match) {
    if ((r = mp_flush(s, run, (size_t)(s->mpos - run))) < 0) return r;
    s->held = s->match - s->mstart;
    return 0;
  }
  return mp_flush(s, run, (size_t)(end - run));
}

static int mp_finish(evs__decrypt_scan *s) {
  int r;
  if ((s->mp == MP_PREAMBLE || s->mp == MP_BODY) && s->held &&
      (r = mp_flush(s, s->delim + s->mstart, s->held)) < 0)
    return r;
  s->held = s->match = 0;
  return s->mp == MP_BODY ? seg_finish(s) : 0;
}

/* ---- API ------------------------------------------------------------------------------------- */

int evs__decrypt_scan_new(const char *content_type, const struct evs__decrypt_scan_opts *opts,
                          evs__rw_emit_fn emit_cb, evs__decrypt_transform_fn transform_cb,
                          void *ud, evs__decrypt_scan **ret_scan) {
  evs__decrypt_scan *s;
  if (!emit_cb || !transform_cb || !ret_scan) return -EINVAL;
  if (opts && opts->size < sizeof *opts) return -EINVAL;
  if (!(s = calloc(1, sizeof *s))) return -ENOMEM;
  s->emit = emit_cb;
  s->transform = transform_cb;
  s->ud = ud;
  s->max_token = opts && opts->max_token ? opts->max_token : DEFAULT_MAX_TOKEN;
  s->max_file = opts && opts->max_file ? opts->max_file : DEFAULT_MAX_FILE;
  if (s->max_token < 3) s->max_token = 3; /* room for the "" of a JSON candidate */
  s->mode = evs__decrypt_scan_mode_for(content_type);
  if (s->mode == EVS__DSCAN_MODE_MULTIPART) {
    each_param(content_type, get_boundary, s);
    if (s->dlen == 0) s->mode = EVS__DSCAN_MODE_TEXT;
  }
  if (s->mode == EVS__DSCAN_MODE_MULTIPART) {
    s->mp = MP_PREAMBLE;
    s->match = s->mstart = 2; /* the body may open with the delimiter, without its CRLF */
  } else {
    seg_reset(s, s->mode, s->mode == EVS__DSCAN_MODE_RAW);
  }
  *ret_scan = s;
  return 0;
}

void evs__decrypt_scan_free(evs__decrypt_scan *s) {
  if (!s) return;
  free(s->hold);
  free(s->val);
  free(s->fbuf);
  free(s->hdr);
  free(s);
}

int evs__decrypt_scan_feed(evs__decrypt_scan *s, const char *buf, size_t len) {
  int r;
  if (s->err) return s->err;
  if (s->finished) return s->err = -EINVAL;
  if (!len) return 0;
  if (s->mode == EVS__DSCAN_MODE_MULTIPART) r = mp_feed(s, buf, len);
  else r = seg_feed(s, buf, len);
  if (r < 0) s->err = r;
  return r < 0 ? r : 0;
}

int evs__decrypt_scan_finish(evs__decrypt_scan *s) {
  int r;
  if (s->err) return s->err;
  if (s->finished) return s->err = -EINVAL;
  s->finished = true;
  r = s->mode == EVS__DSCAN_MODE_MULTIPART ? mp_finish(s) : seg_finish(s);
  if (r < 0) s->err = r;
  return r < 0 ? r : 0;
}

evs__dscan_mode evs__decrypt_scan_mode(const evs__decrypt_scan *s) { return s->mode; }

uint64_t evs__decrypt_scan_values_found(const evs__decrypt_scan *s) { return s->found; }

size_t evs__decrypt_scan_mem_high_water(const evs__decrypt_scan *s) { return s->mem_hw; }
