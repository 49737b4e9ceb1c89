/*
 * fn_toml.c: the function.toml subset (fn_toml.h).
 */
#include "fn_toml.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tp {
  const char *s, *end;
  int line;
  char *err;
  size_t errlen;
} tp;

static int fail(tp *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(tp *p, const char *fmt, ...) {
  if (p->err && p->errlen) {
    int n = snprintf(p->err, p->errlen, "line %d: ", p->line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < p->errlen) vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static void skip_ws(tp *p) {
  while (p->s < p->end && (*p->s == ' ' || *p->s == '\t')) p->s++;
}

/* After a value or header: spaces, an optional comment, then the end of the line. */
static int end_of_line(tp *p) {
  skip_ws(p);
  if (p->s < p->end && *p->s == '#')
    while (p->s < p->end && *p->s != '\n') p->s++;
  if (p->s < p->end && *p->s == '\r') p->s++;
  if (p->s < p->end && *p->s != '\n') return fail(p, "unexpected text after the value");
  if (p->s < p->end) {
    p->s++;
    p->line++;
  }
  return 0;
}

static int is_bare(char c) {
  return isalnum((unsigned char)c) || c == '_' || c == '-';
}

static int parse_key(tp *p, char *out, size_t cap) {
  size_t n = 0;
  while (p->s < p->end && is_bare(*p->s)) {
    if (n + 1 >= cap) return fail(p, "key too long");
    out[n++] = *p->s++;
  }
  if (n == 0) return fail(p, "expected a key");
  out[n] = 0;
  return 0;
}

static void put_utf8(char *o, size_t *n, unsigned long c) {
  if (c < 0x80) o[(*n)++] = (char)c;
  else if (c < 0x800) {
    o[(*n)++] = (char)(0xc0 | (c >> 6));
    o[(*n)++] = (char)(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    o[(*n)++] = (char)(0xe0 | (c >> 12));
    o[(*n)++] = (char)(0x80 | ((c >> 6) & 0x3f));
    o[(*n)++] = (char)(0x80 | (c & 0x3f));
  } else {
    o[(*n)++] = (char)(0xf0 | (c >> 18));
    o[(*n)++] = (char)(0x80 | ((c >> 12) & 0x3f));
    o[(*n)++] = (char)(0x80 | ((c >> 6) & 0x3f));
    o[(*n)++] = (char)(0x80 | (c & 0x3f));
  }
}

static json_t *parse_string(tp *p) {
  char q = *p->s++;
  size_t cap = (size_t)(p->end - p->s) + 8, n = 0;
  char *o = malloc(cap);
  if (!o) {
    fail(p, "out of memory");
    return NULL;
  }
  for (;;) {
    if (p->s >= p->end || *p->s == '\n') {
      free(o);
      fail(p, "unterminated string");
      return NULL;
    }
    char c = *p->s++;
    if (c == q) break;
    if ((unsigned char)c < 0x20 && c != '\t') {
      free(o);
      fail(p, "control character in a string");
      return NULL;
    }
    if (c != '\\' || q == '\'') {
      o[n++] = c;
      continue;
    }
    if (p->s >= p->end) break;
    c = *p->s++;
    switch (c) {
    case '"': o[n++] = '"'; break;
    case '\\': o[n++] = '\\'; break;
    case 'n': o[n++] = '\n'; break;
    case 't': o[n++] = '\t'; break;
    case 'r': o[n++] = '\r'; break;
    case 'u': {
      unsigned long u = 0;
      for (int i = 0; i < 4; i++) {
        if (p->s >= p->end || !isxdigit((unsigned char)*p->s)) {
          free(o);
          fail(p, "bad \\u escape");
          return NULL;
        }
        char h = *p->s++;
        u = u * 16 + (unsigned long)(isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
      }
      if ((u >= 0xd800 && u <= 0xdfff) || u == 0) {
        free(o);
        fail(p, "bad \\u escape");
        return NULL;
      }
      put_utf8(o, &n, u);
      break;
    }
    default:
      free(o);
      fail(p, "unknown escape \\%c", isprint((unsigned char)c) ? c : '?');
      return NULL;
    }
  }
  json_t *s = json_stringn(o, n);
  free(o);
  if (!s) fail(p, "a string is not valid UTF-8");
  return s;
}

static json_t *parse_value(tp *p, int in_array) {
  skip_ws(p);
  if (p->s >= p->end) {
    fail(p, "expected a value");
    return NULL;
  }
  char c = *p->s;
  if (c == '"' || c == '\'') return parse_string(p);
  if (!in_array && c == '[') {
    p->s++;
    json_t *a = json_array();
    for (;;) {
      skip_ws(p);
      if (p->s < p->end && *p->s == ']') {
        p->s++;
        return a;
      }
      json_t *v = parse_value(p, 1);
      if (!v || !json_is_string(v)) {
        if (v) fail(p, "arrays hold strings only");
        json_decref(v);
        json_decref(a);
        return NULL;
      }
      json_array_append_new(a, v);
      skip_ws(p);
      if (p->s < p->end && *p->s == ',') {
        p->s++;
        continue;
      }
      if (p->s < p->end && *p->s == ']') continue;
      json_decref(a);
      fail(p, "expected ',' or ']' (arrays are on one line)");
      return NULL;
    }
  }
  if (p->end - p->s >= 4 && strncmp(p->s, "true", 4) == 0 && !is_bare(p->s + 4 < p->end ? p->s[4] : ' ')) {
    p->s += 4;
    return json_true();
  }
  if (p->end - p->s >= 5 && strncmp(p->s, "false", 5) == 0 && !is_bare(p->s + 5 < p->end ? p->s[5] : ' ')) {
    p->s += 5;
    return json_false();
  }
  if (c == '-' || c == '+' || isdigit((unsigned char)c)) {
    char buf[32];
    size_t n = 0;
    while (p->s < p->end && (isdigit((unsigned char)*p->s) || *p->s == '_' || ((*p->s == '-' || *p->s == '+') && n == 0))) {
      if (*p->s == '_') {
        p->s++;
        continue;
      }
      if (n + 1 >= sizeof buf) {
        fail(p, "number too long");
        return NULL;
      }
      buf[n++] = *p->s++;
    }
    buf[n] = 0;
    char *e;
    errno = 0;
    long long v = strtoll(buf, &e, 10);
    if (errno || *e || n == 0 || !isdigit((unsigned char)buf[n - 1])) {
      fail(p, "bad integer");
      return NULL;
    }
    return json_integer(v);
  }
  fail(p, "expected a string, integer, boolean or array");
  return NULL;
}

int evctl_toml_parse(const char *text, size_t len, json_t **ret, char *err, size_t errlen) {
  tp p = {text, text + len, 1, err, errlen};
  if (len > EVCTL_TOML_MAX) return fail(&p, "function.toml is larger than 64 KiB");
  if (memchr(text, 0, len)) return fail(&p, "NUL byte in the file");
  json_t *root = json_object(), *table = json_object();
  json_object_set_new(root, "", table);
  while (p.s < p.end) {
    skip_ws(&p);
    if (p.s >= p.end) break;
    char c = *p.s;
    if (c == '#' || c == '\n' || c == '\r') {
      if (end_of_line(&p) < 0) goto bad;
      continue;
    }
    char key[128];
    if (c == '[') {
      p.s++;
      skip_ws(&p);
      if (parse_key(&p, key, sizeof key) < 0) goto bad;
      skip_ws(&p);
      if (p.s >= p.end || *p.s != ']') {
        fail(&p, "expected ']' (nested and array tables are not supported)");
        goto bad;
      }
      p.s++;
      if (json_object_get(root, key)) {
        fail(&p, "table [%s] defined twice", key);
        goto bad;
      }
      table = json_object();
      json_object_set_new(root, key, table);
      if (end_of_line(&p) < 0) goto bad;
      continue;
    }
    if (parse_key(&p, key, sizeof key) < 0) goto bad;
    skip_ws(&p);
    if (p.s >= p.end || *p.s != '=') {
      fail(&p, "expected '=' after %s (dotted keys are not supported)", key);
      goto bad;
    }
    p.s++;
    json_t *v = parse_value(&p, 0);
    if (!v) goto bad;
    if (json_object_get(table, key)) {
      json_decref(v);
      fail(&p, "key %s defined twice", key);
      goto bad;
    }
    json_object_set_new(table, key, v);
    if (end_of_line(&p) < 0) goto bad;
  }
  *ret = root;
  return 0;
bad:
  json_decref(root);
  return -1;
}
