/*
 * ev_guard.c: Evervault-encrypted data in any spelling (contract in ev_guard.h). Bytes pass
 * through two decoding levels, each of which resolves one escape (JSON, percent, character
 * reference) and passes everything else on unchanged, into a detector of ev: strings and the
 * %EVENC magic. A raw ev: string holds no escape-starting byte, so decoding never hides one:
 * the decoded view finds everything the raw view would.
 */
#include "ev_guard.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define NONASCII 0x80 /* what a decoded code point above 0x7f becomes */

static int hexval(unsigned c) {
  if (c >= '0' && c <= '9') return (int)(c - '0');
  if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
  return -1;
}

static int is_b64(unsigned c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/' || c == '=' || c == '_' || c == '-';
}

static int is_alpha(unsigned c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

static void detect(evs__ev_guard *g, unsigned c) {
  static const char magic[] = "%EVENC";
  if (c == (unsigned char)magic[g->magic]) {
    if (++g->magic == sizeof magic - 1) {
      g->found++;
      g->magic = 0;
    }
  } else {
    g->magic = c == '%';
  }
  if (g->ev < 3) {
    if (c == (unsigned char)"ev:"[g->ev]) {
      if (++g->ev == 3) {
        g->colons = 1;
        g->last_colon = 1;
      }
    } else {
      g->ev = c == 'e';
    }
    return;
  }
  if (c == ':') {
    g->colons++;
    g->last_colon = 1;
    return;
  }
  if (is_b64(c)) {
    g->last_colon = 0;
    return;
  }
  if (c == '$' && g->last_colon && g->colons >= 5) g->found++;
  g->ev = 0;
}

static void level(evs__ev_guard *g, int l, unsigned c);

static void out(evs__ev_guard *g, int l, unsigned c) {
  if (l == 1)
    detect(g, c);
  else
    level(g, l + 1, c);
}

/* The pending bytes are not an escape: the first goes on as it is, the rest is read again. */
static void reject(evs__ev_guard *g, int l) {
  evs__ev_guard_dec *d = &g->dec[l];
  unsigned char tmp[sizeof d->p];
  size_t n = d->n;
  memcpy(tmp, d->p, n);
  d->n = 0;
  out(g, l, tmp[0]);
  for (size_t i = 1; i < n; i++) level(g, l, tmp[i]);
}

static unsigned named_ref(const unsigned char *name, size_t n) {
  static const struct {
    const char *name;
    char c;
  } refs[] = {{"colon", ':'}, {"dollar", '$'}, {"equals", '='}, {"plus", '+'}, {"sol", '/'},
              {"lowbar", '_'}, {"amp", '&'},   {"percnt", '%'}, {"bsol", '\\'}, {"num", '#'},
              {"semi", ';'},  {"lt", '<'},     {"gt", '>'},     {"quot", '"'},  {"apos", '\''}};
  for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
    if (strlen(refs[i].name) == n && memcmp(refs[i].name, name, n) == 0)
      return (unsigned char)refs[i].c;
  return 0;
}

static void level(evs__ev_guard *g, int l, unsigned c) {
  evs__ev_guard_dec *d = &g->dec[l];
  if (d->n == 0) {
    if (c == '\\' || c == '%' || c == '&') {
      d->p[0] = (unsigned char)c;
      d->n = 1;
    } else {
      out(g, l, c);
    }
    return;
  }
  d->p[d->n++] = (unsigned char)c;
  if (d->p[0] == '%') { /* %XX */
    if (hexval(c) < 0) {
      reject(g, l);
    } else if (d->n == 3) {
      d->n = 0;
      out(g, l, (unsigned)(hexval(d->p[1]) << 4 | hexval(d->p[2])));
    }
    return;
  }
  if (d->p[0] == '\\') { /* \X or \uXXXX */
    if (d->n == 2) {
      if (c == 'u') return;
      d->n = 0;
      out(g, l, c && strchr("bfnrt", (int)c) ? 0x01 : c);
      return;
    }
    if (hexval(c) < 0) {
      reject(g, l);
    } else if (d->n == 6) {
      unsigned cp = 0;
      for (int i = 2; i < 6; i++) cp = cp << 4 | (unsigned)hexval(d->p[i]);
      d->n = 0;
      out(g, l, cp < 0x80 ? cp : NONASCII);
    }
    return;
  }
  /* '&': &#DDD; &#xHH; &name; */
  if (d->n == 2) {
    if (c != '#' && !is_alpha(c)) reject(g, l);
    return;
  }
  if (d->p[1] != '#') {
    if (c == ';') {
      unsigned v = named_ref(d->p + 1, d->n - 2u);
      if (!v) {
        reject(g, l);
      } else {
        d->n = 0;
        out(g, l, v);
      }
    } else if (!is_alpha(c) || d->n == sizeof d->p) {
      reject(g, l);
    }
    return;
  }
  int hex = d->p[2] == 'x' || d->p[2] == 'X';
  if (d->n == 3 && hex) return;
  size_t first = hex ? 3 : 2;
  if (c == ';' && (size_t)d->n - 1 > first) {
    unsigned cp = 0;
    for (size_t i = first; i + 1 < d->n; i++) {
      cp = hex ? cp << 4 | (unsigned)hexval(d->p[i]) : cp * 10 + (d->p[i] - '0');
      if (cp >= 0x80) cp = NONASCII; /* stays non-ASCII, and cannot overflow */
    }
    d->n = 0;
    out(g, l, cp);
  } else if ((hex ? hexval(c) < 0 : !(c >= '0' && c <= '9')) || d->n == sizeof d->p) {
    reject(g, l);
  }
}

void evs__ev_guard_init(evs__ev_guard *g) { memset(g, 0, sizeof *g); }

/* The bytes of w equal to b (SWAR): nonzero if any of the eight is, and then its lowest set bit
 * is in the first such byte in memory order (little-endian; bits above it may be false). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
static uint64_t has_byte(uint64_t w, unsigned char b) {
  uint64_t x = w ^ (ONES * b);
  return (x - ONES) & ~x & HIGHS;
}

/* The offset of the first byte of p[0..n) that starts an escape or a value ('e', '%', '\\',
 * '&'), or n. Eight bytes at a time: every message of a WebSocket is scanned whole. */
static size_t next_trigger(const unsigned char *p, size_t n) {
  size_t i = 0;
#ifdef __SSE2__
  /* Sixteen at a time where SSE2 is there (every x86-64). */
  const __m128i te = _mm_set1_epi8('e'), tp = _mm_set1_epi8('%'), tb = _mm_set1_epi8('\\'),
                ta = _mm_set1_epi8('&');
  for (; i + 16 <= n; i += 16) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
    __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, te), _mm_cmpeq_epi8(v, tp)),
                             _mm_or_si128(_mm_cmpeq_epi8(v, tb), _mm_cmpeq_epi8(v, ta)));
    unsigned bits = (unsigned)_mm_movemask_epi8(m);
    if (bits) return i + (size_t)__builtin_ctz(bits);
  }
#endif
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    uint64_t m = has_byte(w, 'e') | has_byte(w, '%') | has_byte(w, '\\') | has_byte(w, '&');
    if (m) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      return i + (size_t)__builtin_ctzll(m) / 8;
#else
      break;
#endif
    }
  }
  for (; i < n; i++)
    if (p[i] == 'e' || p[i] == '%' || p[i] == '\\' || p[i] == '&') break;
  return i;
}

#ifdef __SSE2__
/* Bit k: p[k] of the sixteen starts an escape ('%', '\\', '&'), or is an 'e' whose next byte
 * (p[16] for the last) is 'v' or one of those or another 'e'. */
static unsigned candidates16(const unsigned char *p) {
  const __m128i te = _mm_set1_epi8('e'), tp = _mm_set1_epi8('%'), tb = _mm_set1_epi8('\\'),
                ta = _mm_set1_epi8('&'), tv = _mm_set1_epi8('v');
  __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
  __m128i w = _mm_loadu_si128((const __m128i *)(const void *)(p + 1));
  __m128i e = _mm_cmpeq_epi8(v, te);
  __m128i other = _mm_or_si128(_mm_cmpeq_epi8(v, tp),
                               _mm_or_si128(_mm_cmpeq_epi8(v, tb), _mm_cmpeq_epi8(v, ta)));
  __m128i next = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(w, te), _mm_cmpeq_epi8(w, tv)),
                              _mm_or_si128(_mm_cmpeq_epi8(w, tp),
                                           _mm_or_si128(_mm_cmpeq_epi8(w, tb),
                                                        _mm_cmpeq_epi8(w, ta))));
  return (unsigned)_mm_movemask_epi8(_mm_or_si128(other, _mm_and_si128(e, next)));
}
#endif

/* Like next_trigger, but also steps over an 'e' followed by a byte that is neither 'v' nor a
 * trigger (the pair leaves the detector at rest, see evs__ev_guard_feed): a message with no
 * "ev" and no escape is passed over sixteen bytes at a time, not stopped at every 'e'. Each
 * block looks one byte ahead; the last block overlaps the one before, and the last byte, which
 * has no next one, counts as a candidate if it is any trigger. */
static size_t next_candidate(const unsigned char *p, size_t n) {
#ifdef __SSE2__
  if (n < 17) return next_trigger(p, n);
  size_t i = 0;
  for (; i + 17 <= n; i += 16) {
    unsigned bits = candidates16(p + i);
    if (bits) return i + (size_t)__builtin_ctz(bits);
  }
  if (i < n - 1) {
    size_t j = n - 17; /* i - j is 1 to 16: the bits below i were looked at already */
    unsigned bits = candidates16(p + j) & (0xffffu << (i - j));
    if (bits) return j + (size_t)__builtin_ctz(bits);
  }
  /* The loop and the block above leave the last byte alone (i == n - 1): it has no next one. */
  unsigned c = p[n - 1];
  return c == 'e' || c == '%' || c == '\\' || c == '&' ? n - 1 : n;
#else
  return next_trigger(p, n);
#endif
}

size_t evs__ev_guard_feed(evs__ev_guard *g, const void *buf, size_t len) {
  const unsigned char *p = buf;
  for (size_t i = 0; i < len; i++) {
    /* Fast path: bytes that start no escape and no value, at the detector's rest state; eight
     * at a time while none of them could (every message of a WebSocket is scanned whole). */
    if (g->dec[0].n == 0 && g->dec[1].n == 0 && g->ev == 0 && g->magic == 0) {
      i += next_candidate(p + i, len - i);
      if (i == len) break;
      unsigned c = p[i];
      /* An 'e' not followed by 'v' (nor by a byte that starts something) leaves the detector
       * at rest again after that byte: the pair changes nothing. Common in text. */
      if (c == 'e' && i + 1 < len) {
        unsigned c2 = p[i + 1];
        if (c2 != 'v' && c2 != 'e' && c2 != '%' && c2 != '\\' && c2 != '&') {
          i++;
          continue;
        }
      }
    }
    level(g, 0, p[i]);
  }
  return g->found;
}

size_t evs__ev_guard_finish(evs__ev_guard *g) {
  for (int l = 0; l < 2; l++)
    while (g->dec[l].n) reject(g, l);
  /* A value cannot end here: the detector starts afresh for the next input. */
  g->ev = 0;
  g->magic = 0;
  return g->found;
}

size_t evs__ev_guard_scan(const void *buf, size_t len) {
  evs__ev_guard g;
  evs__ev_guard_init(&g);
  evs__ev_guard_feed(&g, buf, len);
  return evs__ev_guard_finish(&g);
}
