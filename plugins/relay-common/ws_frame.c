/*
 * ws_frame.c: RFC 6455 framing, a streaming parser and the frame writer (see ws_frame.h for
 * what is refused and why the relay frames WebSockets itself).
 */
#include "ws_frame.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void evs__ws_parser_init(evs__ws_parser *p, int from_client, uint64_t max_message) {
  memset(p, 0, sizeof *p - sizeof p->scratch);
  p->from_client = from_client;
  p->max_message = max_message;
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

/* Feeds s[0..n) to the incremental check; 0 when a byte is not UTF-8. */
static int utf8_feed(uint8_t *need, uint8_t *lo, uint8_t *hi, const uint8_t *s, size_t n) {
  uint8_t nd = *need, l = *lo, h = *hi;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (nd) {
      if (c < l || c > h) return 0;
      nd--;
      l = 0x80;
      h = 0xBF;
      continue;
    }
    if (c < 0x80) {
      /* ASCII runs are the common case: skip them eight at a time. */
      while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ull) break;
        i += 8;
      }
      if (i < n && s[i] >= 0x80) i--; /* look at it again as a lead byte */
      continue;
    }
    l = 0x80;
    h = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) nd = 1;
    else if (c == 0xE0) nd = 2, l = 0xA0;
    else if (c == 0xED) nd = 2, h = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) nd = 2;
    else if (c == 0xF0) nd = 3, l = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) nd = 3;
    else if (c == 0xF4) nd = 3, h = 0x8F;
    else return 0;
  }
  *need = nd;
  *lo = l;
  *hi = h;
  return 1;
}

/* 1 if any byte of s[0..n) has its high bit set (is not ASCII). */
static int any_high(const uint8_t *s, size_t n) {
  size_t i = 0;
#ifdef __SSE2__
  /* Sixteen at a time; a tail of sixteen or more is one block overlapping the one before. */
  if (n >= 16) {
    __m128i acc = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16)
      acc = _mm_or_si128(acc, _mm_loadu_si128((const __m128i *)(const void *)(s + i)));
    if (i < n)
      acc = _mm_or_si128(acc, _mm_loadu_si128((const __m128i *)(const void *)(s + n - 16)));
    return _mm_movemask_epi8(acc) != 0;
  }
#endif
  uint64_t any = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, s + i, 8);
    any |= w;
  }
  for (; i < n; i++) any |= s[i];
  return (any & 0x8080808080808080ull) != 0;
}

int evs__ws_utf8_valid(const uint8_t *s, size_t n) {
  /* Most messages are ASCII: one pass that only looks for a high bit first. */
  if (!any_high(s, n)) return 1;
  uint8_t need = 0, lo = 0x80, hi = 0xBF;
  return utf8_feed(&need, &lo, &hi, s, n) && need == 0;
}

int evs__ws_close_code_ok(int code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

int evs__ws_close_valid(const uint8_t *p, size_t n, int *code) {
  if (n == 0) {
    *code = 1005;
    return 1;
  }
  if (n == 1) return 0;
  int c = (p[0] << 8) | p[1];
  if (!evs__ws_close_code_ok(c) || !evs__ws_utf8_valid(p + 2, n - 2)) return 0;
  *code = c;
  return 1;
}

/* ---- writing ----------------------------------------------------------------------------- */

size_t evs__ws_frame_head(uint8_t out[14], int fin, int opcode, uint64_t len,
                          const uint8_t *mask) {
  size_t o = 0;
  out[o++] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
  uint8_t m = mask ? 0x80 : 0;
  if (len < 126) {
    out[o++] = (uint8_t)(m | len);
  } else if (len <= 0xFFFF) {
    out[o++] = (uint8_t)(m | 126);
    out[o++] = (uint8_t)(len >> 8);
    out[o++] = (uint8_t)len;
  } else {
    out[o++] = (uint8_t)(m | 127);
    for (int i = 7; i >= 0; i--) out[o++] = (uint8_t)(len >> (8 * i));
  }
  if (mask) {
    memcpy(out + o, mask, 4);
    o += 4;
  }
  return o;
}

/* dst[i] = src[i] ^ key[(off + i) & 3]; dst == src masks in place. */
void evs__ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4],
                       uint64_t off) {
  /* The key three times over: its eight bytes from phase off & 3 start at k + (off & 3). */
  uint8_t k3[12];
  memcpy(k3, key, 4);
  memcpy(k3 + 4, key, 4);
  memcpy(k3 + 8, key, 4);
  const uint8_t *k = k3 + (off & 3);
  size_t i = 0;
  uint64_t kw;
  memcpy(&kw, k, 8);
#ifdef __SSE2__
  /* Sixteen at a time: the relay unmasks and masks again every client message. */
  const __m128i kv = _mm_set1_epi64x((long long)kw);
  for (; i + 16 <= n; i += 16) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
    _mm_storeu_si128((__m128i *)(void *)(dst + i), _mm_xor_si128(v, kv));
  }
#endif
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, src + i, 8);
    w ^= kw;
    memcpy(dst + i, &w, 8);
  }
  /* Under eight left, i a multiple of eight: four, two, one, the key from k[i & 7] (< 8). */
  if (n - i >= 4) {
    uint32_t w, kk;
    memcpy(&w, src + i, 4);
    memcpy(&kk, k, 4);
    w ^= kk;
    memcpy(dst + i, &w, 4);
    i += 4;
  }
  if (n - i >= 2) {
    uint16_t w, kk;
    memcpy(&w, src + i, 2);
    memcpy(&kk, k + (i & 7), 2);
    w ^= kk;
    memcpy(dst + i, &w, 2);
    i += 2;
  }
  if (i < n) dst[i] = src[i] ^ k[i & 7];
}

void evs__ws_mask(uint8_t *p, size_t n, const uint8_t key[4], uint64_t off) {
  evs__ws_mask_copy(p, p, n, key, off);
}

/* The guard's rule (ev_guard.c, next_candidate): c starts an escape, or is an 'e' that the
 * next byte may turn into the start of a value. */
static int guard_trigger(unsigned c) { return c == '%' || c == '\\' || c == '&'; }

#ifdef __SSE2__
/* Of sixteen unmasked bytes v: *trig, the bytes that start an escape; *e, the 'e's; and the
 * return, the bytes after which an 'e' may start a value ('v', 'e' or a trigger). */
static inline __m128i guard_classes(__m128i v, __m128i *trig, __m128i *e) {
  *trig = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('%')),
                       _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\\')),
                                    _mm_cmpeq_epi8(v, _mm_set1_epi8('&'))));
  *e = _mm_cmpeq_epi8(v, _mm_set1_epi8('e'));
  return _mm_or_si128(_mm_or_si128(*e, *trig), _mm_cmpeq_epi8(v, _mm_set1_epi8('v')));
}
#endif

int evs__ws_remask_plain(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key_in[4],
                         const uint8_t key_out[4]) {
  if (n == 0) return 1;
#ifdef __SSE2__
  if (n >= 16) {
    /* Each key five times over: its sixteen bytes from any phase are one unaligned load. */
    uint8_t ki[20], ko[20];
    for (int r = 0; r < 20; r += 4) {
      memcpy(ki + r, key_in, 4);
      memcpy(ko + r, key_out, 4);
    }
    const __m128i ki0 = _mm_loadu_si128((const __m128i *)(const void *)ki),
                  ko0 = _mm_loadu_si128((const __m128i *)(const void *)ko);
    /* High bits of acc: a byte that is not ASCII, or a candidate. A candidate is a trigger, or
     * an 'e' whose next byte may continue a value: within a block the next bytes are the block
     * shifted by one; the last 'e' of a block meets the next block's first byte there. */
    __m128i acc = _mm_setzero_si128(), e_prev = _mm_setzero_si128(), trig, e;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(src + i)), ki0);
      __m128i next = guard_classes(v, &trig, &e);
      acc = _mm_or_si128(acc, _mm_or_si128(_mm_or_si128(v, trig),
                                           _mm_and_si128(e, _mm_srli_si128(next, 1))));
      acc = _mm_or_si128(acc, _mm_and_si128(_mm_srli_si128(e_prev, 15), next));
      e_prev = e;
      _mm_storeu_si128((__m128i *)(void *)(dst + i), _mm_xor_si128(v, ko0));
    }
    if (i < n) {
      /* The last sixteen bytes as one block, overlapping the one before (which wrote the same
       * bytes there): the byte after that block's last is inside this one. */
      size_t j = n - 16, ph = j & 3;
      __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(src + j)),
                                _mm_loadu_si128((const __m128i *)(const void *)(ki + ph)));
      __m128i next = guard_classes(v, &trig, &e);
      acc = _mm_or_si128(acc, _mm_or_si128(_mm_or_si128(v, trig),
                                           _mm_and_si128(e, _mm_srli_si128(next, 1))));
      _mm_storeu_si128((__m128i *)(void *)(dst + j),
                       _mm_xor_si128(v, _mm_loadu_si128((const __m128i *)(const void *)(ko + ph))));
    }
    /* The last byte has no next one: an 'e' there counts on its own (next_candidate). */
    return !_mm_movemask_epi8(acc) && (src[n - 1] ^ key_in[(n - 1) & 3]) != 'e';
  }
#endif
  unsigned bad = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned c = src[i] ^ key_in[i & 3];
    dst[i] = (uint8_t)(c ^ key_out[i & 3]);
    bad |= (c & 0x80) | (unsigned)guard_trigger(c);
    if (c == 'e') {
      unsigned c2 = i + 1 < n ? src[i + 1] ^ key_in[(i + 1) & 3] : 'e';
      bad |= (unsigned)(c2 == 'v' || c2 == 'e' || guard_trigger(c2));
    }
  }
  return !bad;
}

/* ---- parsing ----------------------------------------------------------------------------- */

static long fail(evs__ws_parser *p, int code) {
  p->error = code;
  return -code;
}

/* The head is complete when it holds 2 bytes, the extended length and the mask. */
static size_t head_need(const evs__ws_parser *p) {
  if (p->head_len < 2) return 2;
  size_t n = 2;
  uint8_t l7 = p->head[1] & 0x7F;
  if (l7 == 126) n += 2;
  else if (l7 == 127) n += 8;
  if (p->head[1] & 0x80) n += 4;
  return n;
}

/* Checks the complete head and starts the frame. 0 or a close code. */
static int head_done(evs__ws_parser *p) {
  uint8_t b0 = p->head[0], b1 = p->head[1];
  int fin = b0 >> 7, op = b0 & 0x0F, masked = b1 >> 7;
  if (b0 & 0x70) return EVS__WS_CLOSE_PROTOCOL;
  if (masked != p->from_client) return EVS__WS_CLOSE_PROTOCOL;
  uint64_t len = b1 & 0x7F;
  size_t o = 2;
  if (len == 126) {
    len = ((uint64_t)p->head[2] << 8) | p->head[3];
    o = 4;
  } else if (len == 127) {
    len = 0;
    for (int i = 0; i < 8; i++) len = (len << 8) | p->head[2 + i];
    o = 10;
    if (len >> 63) return EVS__WS_CLOSE_PROTOCOL;
  }
  if (masked) memcpy(p->mask, p->head + o, 4);
  if (op >= 0x8) {
    if (op > EVS__WS_OP_PONG) return EVS__WS_CLOSE_PROTOCOL;
    if (!fin || len > 125) return EVS__WS_CLOSE_PROTOCOL;
    p->ctl_len = 0;
  } else if (op == EVS__WS_OP_CONT) {
    if (!p->in_message) return EVS__WS_CLOSE_PROTOCOL;
  } else if (op == EVS__WS_OP_TEXT || op == EVS__WS_OP_BINARY) {
    if (p->in_message) return EVS__WS_CLOSE_PROTOCOL;
    p->in_message = 1;
    p->msg_opcode = op;
    p->msg_started = 0;
    p->msg_len = 0;
    p->utf8_need = 0;
    p->utf8_lo = 0x80;
    p->utf8_hi = 0xBF;
  } else {
    return EVS__WS_CLOSE_PROTOCOL;
  }
  if (op < 0x8) {
    if (p->max_message && (len > p->max_message || p->msg_len + len > p->max_message))
      return EVS__WS_CLOSE_TOO_BIG;
    p->msg_len += len;
  }
  p->in_frame = 1;
  p->fin = fin;
  p->opcode = op;
  p->masked = masked;
  p->remaining = len;
  p->frame_off = 0;
  p->head_len = 0;
  return 0;
}

/* A control frame is complete: check a close frame's payload, then deliver. */
static int control_done(evs__ws_parser *p, evs__ws_event_fn fn, void *arg, int *stop) {
  int code;
  if (p->opcode == EVS__WS_OP_CLOSE && !evs__ws_close_valid(p->ctl, p->ctl_len, &code)) {
    /* A code no peer may send is a protocol error; a bad reason is invalid data. */
    if (p->ctl_len >= 2 && evs__ws_close_code_ok((p->ctl[0] << 8) | p->ctl[1]))
      return EVS__WS_CLOSE_INVALID_DATA;
    return EVS__WS_CLOSE_PROTOCOL;
  }
  evs__ws_event ev = {1, p->opcode, 1, 1, p->ctl, p->ctl_len};
  p->in_frame = 0;
  *stop = fn(arg, &ev);
  return 0;
}

/* Payload bytes of a data frame (unmasked), with the UTF-8 check of text messages. */
static int data_chunk(evs__ws_parser *p, const uint8_t *d, size_t n, int frame_end,
                      evs__ws_event_fn fn, void *arg, int *stop) {
  if (p->msg_opcode == EVS__WS_OP_TEXT &&
      !utf8_feed(&p->utf8_need, &p->utf8_lo, &p->utf8_hi, d, n))
    return EVS__WS_CLOSE_INVALID_DATA;
  int msg_end = frame_end && p->fin;
  if (msg_end && p->msg_opcode == EVS__WS_OP_TEXT && p->utf8_need)
    return EVS__WS_CLOSE_INVALID_DATA;
  /* Empty chunks are delivered only where they carry news: the start or the end of a message. */
  if (n == 0 && !msg_end && p->msg_started) return 0;
  evs__ws_event ev = {0, p->msg_opcode, !p->msg_started, msg_end, d, n};
  p->msg_started = 1;
  if (msg_end) p->in_message = 0;
  *stop = fn(arg, &ev);
  return 0;
}

long evs__ws_parse(evs__ws_parser *p, const uint8_t *buf, size_t len, evs__ws_event_fn fn,
                   void *arg) {
  if (p->error) return -p->error;
  size_t i = 0;
  int stop = 0;
  while (!stop && (i < len || (p->in_frame && p->remaining == 0))) {
    if (!p->in_frame) {
      size_t need = head_need(p);
      while (p->head_len < need && i < len) {
        p->head[p->head_len++] = buf[i++];
        need = head_need(p);
      }
      if (p->head_len < need) break;
      int rc = head_done(p);
      if (rc) return fail(p, rc);
      continue; /* a frame of 0 bytes completes below without input */
    }
    size_t avail = len - i;
    size_t n = p->remaining < avail ? (size_t)p->remaining : avail;
    int rc = 0;
    if (p->opcode >= 0x8) {
      memcpy(p->ctl + p->ctl_len, buf + i, n);
      if (p->masked) evs__ws_mask(p->ctl + p->ctl_len, n, p->mask, p->frame_off);
      p->ctl_len = (uint8_t)(p->ctl_len + n);
      p->frame_off += n;
      p->remaining -= n;
      i += n;
      if (p->remaining == 0) rc = control_done(p, fn, arg, &stop);
    } else if (!p->masked) {
      p->remaining -= n;
      p->frame_off += n;
      i += n;
      int end = p->remaining == 0;
      if (end) p->in_frame = 0;
      rc = data_chunk(p, buf + i - n, n, end, fn, arg, &stop);
    } else {
      /* Unmask through the scratch buffer, a piece at a time. */
      if (n > sizeof p->scratch) n = sizeof p->scratch;
      memcpy(p->scratch, buf + i, n);
      evs__ws_mask(p->scratch, n, p->mask, p->frame_off);
      p->remaining -= n;
      p->frame_off += n;
      i += n;
      int end = p->remaining == 0;
      if (end) p->in_frame = 0;
      rc = data_chunk(p, p->scratch, n, end, fn, arg, &stop);
    }
    if (rc) return fail(p, rc);
  }
  return (long)i;
}


/* ---- messages ----------------------------------------------------------------------------- */

int evs__ws_message_kind(const uint8_t *p, size_t n) {
  size_t i = 0;
  if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) i = 3;
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
  if (i == n) return EVS__WS_MSG_OTHER;
  if (p[i] == '{' || p[i] == '[') return EVS__WS_MSG_JSON;
  if (p[i] == '<') return EVS__WS_MSG_XML;
  return EVS__WS_MSG_OTHER;
}

const char *evs__ws_message_content_type(int kind) {
  return kind == EVS__WS_MSG_XML ? "application/xml" : "application/json";
}

/* ---- the opening handshake --------------------------------------------------------------- */

void evs__ws_accept(const char *key, size_t key_len,
                    void (*sha1)(const uint8_t *in, size_t n, uint8_t out[20]), char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  uint8_t in[128 + sizeof guid];
  if (key_len > 128) key_len = 128; /* callers check the key's form first */
  memcpy(in, key, key_len);
  memcpy(in + key_len, guid, sizeof guid - 1);
  uint8_t d[21];
  sha1(in, key_len + sizeof guid - 1, d);
  d[20] = 0;
  size_t o = 0;
  for (size_t i = 0; i < 21; i += 3) {
    uint32_t v = ((uint32_t)d[i] << 16) | ((uint32_t)(i + 1 < 21 ? d[i + 1] : 0) << 8) |
                 (uint32_t)(i + 2 < 21 ? d[i + 2] : 0);
    out[o++] = b64[(v >> 18) & 63];
    out[o++] = b64[(v >> 12) & 63];
    out[o++] = b64[(v >> 6) & 63];
    out[o++] = b64[v & 63];
  }
  /* 20 bytes: 27 characters and one '=' */
  out[27] = '=';
  out[28] = 0;
}
