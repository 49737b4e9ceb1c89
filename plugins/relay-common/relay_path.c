/*
 * Request paths for route matching: normal forms, pattern matching and the readings of one path
 * that destinations might apply. The contract, and why a path has several readings, is in
 * relay_path.h; the rule as users see it in README.md ("Route matching").
 */
#include "relay_path.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* pchar without '%' (RFC 3986 §3.3): unreserved, sub-delims, ':' and '@'. These are written as
 * themselves; every other byte as an escape. */
static int is_plain(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
  return c != 0 && strchr("-._~!$&'()*+,;=:@", c) != NULL;
}

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

int evs__path_normalize(const char *in, size_t len, char *out, size_t cap, unsigned flags) {
  static const char hex[] = "0123456789ABCDEF";
  if (!in || len == 0 || in[0] != '/') return EVS__PATH_E_INVALID;
  size_t o = 0, i = 1;
  int trail = 0;
  for (;;) {
    /* One segment: "/" and its bytes are written at start, then kept, cut or taken back. */
    size_t start = o;
    if (o + 1 >= cap) return EVS__PATH_E_NOSPACE;
    out[o++] = '/';
    size_t seg = o;
    while (i < len && in[i] != '/') {
      unsigned char c = (unsigned char)in[i];
      if (c == '%') {
        int h1 = len - i >= 3 ? hexval((unsigned char)in[i + 1]) : -1;
        int h2 = len - i >= 3 ? hexval((unsigned char)in[i + 2]) : -1;
        if (h1 < 0 || h2 < 0) return EVS__PATH_E_INVALID;
        c = (unsigned char)(h1 * 16 + h2);
        i += 3;
        if (c == 0 || c == '/' || c == '\\') return EVS__PATH_E_AMBIGUOUS;
      } else {
        if (c == '\\') return EVS__PATH_E_AMBIGUOUS;
        if (c <= 0x20 || c == 0x7f || c == '?' || c == '#') return EVS__PATH_E_INVALID;
        i++;
      }
      if (is_plain(c)) {
        if (o + 1 >= cap) return EVS__PATH_E_NOSPACE;
        out[o++] = (flags & EVS__PATH_FOLD_CASE) ? lower((char)c) : (char)c;
      } else {
        if (o + 3 >= cap) return EVS__PATH_E_NOSPACE;
        out[o++] = '%';
        out[o++] = hex[c >> 4];
        out[o++] = hex[c & 15];
      }
    }
    /* "%25" before two hex digits is an escape once decoded again (by a proxy in front of the
     * destination, or by the destination itself): which path is meant is anybody's guess.
     * Checked before any flag applies, so every reading of a path fails alike. */
    for (size_t k = seg; k + 4 < o; k++)
      if (out[k] == '%' && out[k + 1] == '2' && out[k + 2] == '5' &&
          hexval((unsigned char)out[k + 3]) >= 0 && hexval((unsigned char)out[k + 4]) >= 0)
        return EVS__PATH_E_AMBIGUOUS;
    if (!(flags & EVS__PATH_KEEP_PARAMS)) {
      const char *semi = memchr(out + seg, ';', o - seg);
      if (semi) o = (size_t)(semi - out);
    }
    size_t sl = o - seg;
    int dots = !(flags & EVS__PATH_KEEP_DOTS);
    if (sl == 0 && !(flags & EVS__PATH_KEEP_EMPTY)) {
      o = start;
      trail = 1;
    } else if (dots && sl == 1 && out[seg] == '.') {
      o = start;
      trail = 1;
    } else if (dots && sl == 2 && out[seg] == '.' && out[seg + 1] == '.') {
      /* Drop this segment and the one before it (if any). */
      o = start;
      while (o > 0 && out[o - 1] != '/') o--;
      if (o > 0) o--;
      trail = 1;
    } else {
      trail = 0;
    }
    if (i >= len) break;
    i++; /* the '/' */
  }
  if (o == 0 || trail) {
    if (o + 1 >= cap) return EVS__PATH_E_NOSPACE;
    out[o++] = '/';
  }
  if (o >= cap) return EVS__PATH_E_NOSPACE;
  out[o] = '\0';
  return (int)o;
}

static int ceq(char a, char b, int cs) { return a == b || (!cs && lower(a) == lower(b)); }

int evs__route_match(const char *pat, const char *path, int cs) {
  while (*pat && *path) {
    if (pat[0] == '*' && pat[1] == '*') return 1;
    if (pat[0] == '*' && pat[1] == 0) return 1;
    if (*pat == '*') {
      while (*path && *path != '/') path++;
      pat++;
      continue;
    }
    if (!ceq(*pat, *path, cs)) return 0;
    pat++;
    path++;
  }
  if (*pat == 0) return *path == 0 || (path[0] == '/' && path[1] == 0);
  /* The path is used up. */
  if (pat[0] == '*' && (pat[1] == 0 || (pat[1] == '*' && pat[2] == 0))) return 1;
  if (pat[0] == '/' && pat[1] == 0) return 1;
  return pat[0] == '/' && pat[1] == '*' && pat[2] == '*' && pat[3] == 0;
}

/* The readings: every combination of keeping dot segments, parameters and empty segments. */
#define NVIEWS 8u

int evs__path_views_init(evs__path_views *pv, const char *path, size_t len, int case_sensitive) {
  memset(pv, 0, sizeof *pv);
  pv->case_sensitive = case_sensitive;
  if (len > (size_t)(INT32_MAX / 3 / NVIEWS) - 2) return EVS__PATH_E_NOSPACE;
  size_t cap = 3 * len + 2;
  size_t off[NVIEWS];
  char *buf = malloc(2 * cap);
  if (!buf) return -ENOMEM;
  const unsigned all = EVS__PATH_KEEP_DOTS | EVS__PATH_KEEP_PARAMS | EVS__PATH_KEEP_EMPTY;
  int rc = evs__path_normalize(path, len, buf, cap, 0);
  int rc2 = rc < 0 ? rc : evs__path_normalize(path, len, buf + cap, cap, all);
  if (rc2 < 0) {
    free(buf);
    return rc2;
  }
  size_t n = 1;
  off[0] = 0;
  if (strcmp(buf, buf + cap) != 0) {
    /* Something was dropped: each reading may differ (when nothing was, none does). */
    char *nb = realloc(buf, NVIEWS * cap);
    if (!nb) {
      free(buf);
      return -ENOMEM;
    }
    buf = nb;
    for (unsigned f = 1; f < NVIEWS; f++) {
      char *o = buf + n * cap;
      if (evs__path_normalize(path, len, o, cap, f) < 0) continue; /* cannot: f=0 passed */
      size_t k = 0;
      while (k < n && strcmp(buf + off[k], o) != 0) k++;
      if (k == n) {
        off[n] = n * cap;
        n++;
      }
    }
  }
  pv->buf = buf;
  for (size_t k = 0; k < n; k++) pv->v[k] = buf + off[k];
  pv->n = n;
  return 0;
}

int evs__path_views_match(const evs__path_views *pv, const char *pattern) {
  for (size_t k = 0; k < pv->n; k++)
    if (evs__route_match(pattern, pv->v[k], pv->case_sensitive)) return 1;
  return 0;
}

void evs__path_views_clear(evs__path_views *pv) {
  free(pv->buf);
  memset(pv, 0, sizeof *pv);
}

const char *evs__path_strerror(int err) {
  switch (err) {
  case EVS__PATH_E_INVALID: return "invalid path";
  case EVS__PATH_E_AMBIGUOUS:
    return "ambiguous path (encoded '/' or '\\', backslash, %00 or double encoding)";
  case EVS__PATH_E_NOSPACE: return "path too long";
  case -ENOMEM: return "out of memory";
  default: return "path error";
  }
}
