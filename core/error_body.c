/*
 * error_body.c: the JSON body of every error answer (error_body.h). No allocation: server.c
 * writes it into a buffer on the stack, sized by a first call when a detail is long.
 */
#include "error_body.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "request.h" /* evs__status_text */

typedef struct out {
  char *buf;
  size_t cap, len;
} out;

static void put(out *o, const char *s, size_t n) {
  if (o->len < o->cap) {
    size_t room = o->cap - o->len;
    memcpy(o->buf + o->len, s, n < room ? n : room);
  }
  o->len += n;
}

static void put_str(out *o, const char *s) { put(o, s, strlen(s)); }

/* The length of the UTF-8 sequence at s (1..4), or 0 if it is not one (overlong forms,
 * surrogates and code points above U+10FFFF included, as jansson's check refuses them). */
static size_t utf8_len(const unsigned char *s) {
  unsigned c = s[0];
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) n = 2, cp = c & 0x1f;
  else if (c >= 0xe0 && c <= 0xef) n = 3, cp = c & 0x0f;
  else if (c >= 0xf0 && c <= 0xf4) n = 4, cp = c & 0x07;
  else return 0;
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

/* A JSON string literal of s, escaped as jansson's dump escapes it. */
static void put_json_str(out *o, const char *s) {
  const unsigned char *p = (const unsigned char *)(s ? s : "");
  put(o, "\"", 1);
  while (*p) {
    unsigned c = *p;
    const char *esc = NULL;
    char u[8];
    switch (c) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\b': esc = "\\b"; break;
    case '\f': esc = "\\f"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    default:
      if (c < 0x20) {
        snprintf(u, sizeof u, "\\u%04X", c);
        esc = u;
      }
    }
    if (esc) {
      put_str(o, esc);
      p++;
      continue;
    }
    size_t n = utf8_len(p);
    if (n == 0) {
      put_str(o, "\xef\xbf\xbd"); /* U+FFFD for a byte that starts no UTF-8 sequence */
      p++;
    } else {
      put(o, (const char *)p, n);
      p += n;
    }
  }
  put(o, "\"", 1);
}

size_t evs__error_body(char *buf, size_t cap, int status, const char *code, const char *detail) {
  out o = {buf, cap, 0};
  char num[16];
  snprintf(num, sizeof num, "%d", status);
  put_str(&o, "{\"status\":");
  put_str(&o, num);
  put_str(&o, ",\"code\":");
  put_json_str(&o, code);
  put_str(&o, ",\"title\":");
  put_json_str(&o, evs__status_text(status));
  put_str(&o, ",\"detail\":");
  put_json_str(&o, detail);
  put_str(&o, ",\"message\":");
  put_json_str(&o, detail);
  put_str(&o, ",\"evervault-error-code\":");
  put_json_str(&o, code);
  put_str(&o, "}");
  if (cap > 0) buf[o.len < cap ? o.len : cap - 1] = '\0';
  return o.len;
}
