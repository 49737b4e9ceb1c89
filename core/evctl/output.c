/*
 * evctl's output: when to colour, printing server-supplied text safely, aligned tables and JSON.
 * Everything the server sends may contain bytes a terminal would obey (a plugin's description is
 * written by the plugin's author), so all of it passes through evctl_print, which replaces
 * control characters; colour codes come only from evctl itself.
 */
#include "evctl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int env_set(const char *name) {
  const char *v = getenv(name);
  return v && *v; /* no-color.org: set and not empty */
}

int evctl_want_color(int no_color_flag) {
  if (no_color_flag || env_set("NO_COLOR") || env_set("EV_NO_COLOR")) return 0;
  const char *term = getenv("TERM");
  if (term && strcmp(term, "dumb") == 0) return 0;
  return isatty(STDOUT_FILENO);
}

static const char *style_on(evctl_style s) {
  switch (s) {
  case EVCTL_BOLD: return "\033[1m";
  case EVCTL_DIM: return "\033[2m";
  case EVCTL_RED: return "\033[31m";
  case EVCTL_GREEN: return "\033[32m";
  case EVCTL_YELLOW: return "\033[33m";
  case EVCTL_PLAIN: break;
  }
  return "";
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_len(const unsigned char *s) {
  if (s[0] < 0x80) return 1;
  size_t n = s[0] >= 0xf5 ? 0 : s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
  if (n == 0) return 0;
  for (size_t i = 1; i < n; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  /* Overlong and surrogate forms. */
  if (n == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0))) return 0;
  if (n == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))) return 0;
  return n;
}

/* Writes s with control characters and invalid UTF-8 replaced by '?'. */
static void put_safe(FILE *f, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    size_t n = utf8_len(p);
    int control = n == 1 ? (*p < 0x20 || *p == 0x7f) : n == 2 ? (p[0] == 0xc2 && p[1] < 0xa0) : 0;
    if (n == 0 || control) {
      fputc('?', f);
      p++;
    } else {
      fwrite(p, 1, n, f);
      p += n;
    }
  }
}

void evctl_print(const evctl_ctx *ctx, FILE *f, evctl_style style, const char *s) {
  int styled = ctx->color && style != EVCTL_PLAIN;
  if (styled) fputs(style_on(style), f);
  put_safe(f, s);
  if (styled) fputs("\033[0m", f);
}

/* A copy of s as put_safe would print it, so widths are measured on what is shown. */
static char *safe_dup(const char *s) {
  char *out = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&out, &len);
  if (!m) return NULL;
  put_safe(m, s);
  if (fclose(m) != 0) {
    free(out);
    return NULL;
  }
  return out;
}

size_t evctl_text_width(const char *s) {
  size_t w = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if ((*p & 0xc0) != 0x80) w++;
  return w;
}

/* ---- tables ------------------------------------------------------------------------------- */

struct evctl_table {
  size_t ncols;
  char **headers;        /* ncols */
  char **cells;          /* nrows * ncols */
  evctl_style *styles;   /* nrows * ncols */
  size_t nrows;
};

void evctl_table_free(evctl_table *t) {
  if (!t) return;
  for (size_t i = 0; i < t->ncols; i++) free(t->headers ? t->headers[i] : NULL);
  for (size_t i = 0; i < t->nrows * t->ncols; i++) free(t->cells[i]);
  free(t->headers);
  free(t->cells);
  free(t->styles);
  free(t);
}

evctl_table *evctl_table_new(size_t ncols, const char *const *headers) {
  evctl_table *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->ncols = ncols;
  t->headers = calloc(ncols, sizeof(*t->headers));
  if (!t->headers) goto fail;
  for (size_t i = 0; i < ncols; i++)
    if (!(t->headers[i] = safe_dup(headers[i]))) goto fail;
  return t;
fail:
  evctl_table_free(t);
  return NULL;
}

int evctl_table_add(evctl_table *t, const char *const *cells, const evctl_style *styles) {
  size_t base = t->nrows * t->ncols, n = base + t->ncols;
  char **c = realloc(t->cells, n * sizeof(*c));
  if (!c) return -1;
  t->cells = c;
  evctl_style *s = realloc(t->styles, n * sizeof(*s));
  if (!s) return -1;
  t->styles = s;
  for (size_t i = 0; i < t->ncols; i++) {
    c[base + i] = safe_dup(cells[i] ? cells[i] : "-");
    s[base + i] = styles ? styles[i] : EVCTL_PLAIN;
    if (!c[base + i]) {
      for (size_t j = 0; j <= i; j++) free(c[base + j]);
      return -1;
    }
  }
  t->nrows++;
  return 0;
}

static void print_row(const evctl_table *t, const evctl_ctx *ctx, FILE *f, char *const *cells,
                      const evctl_style *styles, const size_t *widths) {
  for (size_t i = 0; i < t->ncols; i++) {
    evctl_print(ctx, f, styles ? styles[i] : EVCTL_BOLD, cells[i]);
    if (i + 1 == t->ncols) break; /* no trailing spaces after the last column */
    for (size_t w = evctl_text_width(cells[i]); w < widths[i] + 2; w++) fputc(' ', f);
  }
  fputc('\n', f);
}

void evctl_table_print(const evctl_table *t, const evctl_ctx *ctx, FILE *f) {
  size_t *widths = calloc(t->ncols, sizeof(*widths));
  if (!widths) return;
  for (size_t i = 0; i < t->ncols; i++) widths[i] = evctl_text_width(t->headers[i]);
  for (size_t r = 0; r < t->nrows; r++)
    for (size_t i = 0; i < t->ncols; i++) {
      size_t w = evctl_text_width(t->cells[r * t->ncols + i]);
      if (w > widths[i]) widths[i] = w;
    }
  print_row(t, ctx, f, t->headers, NULL, widths);
  for (size_t r = 0; r < t->nrows; r++)
    print_row(t, ctx, f, t->cells + r * t->ncols, t->styles + r * t->ncols, widths);
  free(widths);
}

void evctl_print_json(const json_t *v) {
  json_dumpf(v, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  fputc('\n', stdout);
}
