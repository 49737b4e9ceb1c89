/*
 * jsonpath: compiles relay "fields to encrypt" selectors into per-selector step lists and runs
 * them as a bit-parallel automaton over path elements (see jsonpath.h for the grammar).
 */
#include "jsonpath.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum step_kind { STEP_NAME, STEP_INDEX, STEP_ANY };

struct step {
  enum step_kind kind;
  bool descendant; /* `..`: may skip any number of elements before matching */
  char *name;      /* STEP_NAME: decoded bytes, owned */
  size_t namelen;
  uint64_t index; /* STEP_INDEX */
};

struct selector {
  struct step steps[EVS__JSONPATH_MAX_STEPS];
  unsigned nsteps;
  uint64_t stay;   /* bit s set when steps[s] is a descendant step */
  uint64_t accept; /* bit nsteps: the whole selector has matched */
};

struct evs__jsonpath {
  size_t n;
  struct selector *sel;
};

static int fail(char *err, size_t errlen, size_t i, const char *s, size_t off, const char *why) {
  if (errlen) snprintf(err, errlen, "selector %zu (%s): %s at offset %zu", i, s, why, off);
  return -EINVAL;
}

static bool dot_name_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '$' || c == '@' || c >= 0x80;
}

/* Parses one selector into *out. Returns 0 or a negative errno after writing err. */
static int parse_one(const char *s, size_t i, struct selector *out, char *err, size_t errlen) {
  size_t p = 1, len = strlen(s);
  if (len == 0 || s[0] != '$') return fail(err, errlen, i, s, 0, "must start with '$'");
  while (p < len) {
    struct step st = {0};
    if (out->nsteps == EVS__JSONPATH_MAX_STEPS)
      return fail(err, errlen, i, s, p, "too many steps (at most 63)");
    if (s[p] == '.') {
      p++;
      if (p < len && s[p] == '.') {
        st.descendant = true;
        p++;
        if (p < len && s[p] == '[') goto bracket;
      }
      if (p < len && s[p] == '*') {
        st.kind = STEP_ANY;
        p++;
      } else {
        size_t b = p;
        while (p < len && dot_name_char((unsigned char)s[p])) p++;
        if (p == b)
          return fail(err, errlen, i, s, p,
                      "expected a member name or '*' (use ['...'] for other characters)");
        st.kind = STEP_NAME;
        st.namelen = p - b;
        st.name = malloc(st.namelen + 1);
        if (!st.name) return -ENOMEM;
        memcpy(st.name, s + b, st.namelen);
        st.name[st.namelen] = 0;
      }
    } else if (s[p] == '[') {
    bracket:
      p++;
      if (p < len && s[p] == '*') {
        st.kind = STEP_ANY;
        p++;
      } else if (p < len && (s[p] == '\'' || s[p] == '"')) {
        char q = s[p++];
        size_t n = 0;
        st.kind = STEP_NAME;
        st.name = malloc(len + 1);
        if (!st.name) return -ENOMEM;
        while (p < len && s[p] != q) {
          if (s[p] == '\\') {
            p++;
            if (p >= len || (s[p] != '\\' && s[p] != '\'' && s[p] != '"')) {
              free(st.name);
              return fail(err, errlen, i, s, p, "only \\\\ \\' \\\" escapes are supported");
            }
          }
          st.name[n++] = s[p++];
        }
        if (p >= len) {
          free(st.name);
          return fail(err, errlen, i, s, p, "unterminated quoted name");
        }
        st.name[n] = 0;
        st.namelen = n;
        p++;
      } else if (p < len && s[p] >= '0' && s[p] <= '9') {
        st.kind = STEP_INDEX;
        if (s[p] == '0' && p + 1 < len && s[p + 1] >= '0' && s[p + 1] <= '9')
          return fail(err, errlen, i, s, p, "index with a leading zero");
        while (p < len && s[p] >= '0' && s[p] <= '9') {
          if (st.index > (UINT64_MAX - 9) / 10) return fail(err, errlen, i, s, p, "index too large");
          st.index = st.index * 10 + (uint64_t)(s[p++] - '0');
        }
      } else if (p < len && (s[p] == '-' || s[p] == ':')) {
        return fail(err, errlen, i, s, p,
                    "negative indices and slices are not supported (they need the array length)");
      } else if (p < len && s[p] == '?') {
        return fail(err, errlen, i, s, p, "filter expressions are not supported");
      } else {
        return fail(err, errlen, i, s, p, "expected '*', a quoted name or an index after '['");
      }
      if (p >= len || s[p] != ']') {
        free(st.name);
        return fail(err, errlen, i, s, p,
                    p < len && s[p] == ',' ? "unions are not supported"
                    : p < len && s[p] == ':' ? "slices are not supported"
                                             : "expected ']'");
      }
      p++;
    } else {
      return fail(err, errlen, i, s, p, "expected '.' or '['");
    }
    if (st.descendant) out->stay |= UINT64_C(1) << out->nsteps;
    out->steps[out->nsteps++] = st;
  }
  out->accept = UINT64_C(1) << out->nsteps;
  return 0;
}

void evs__jsonpath_free(evs__jsonpath *p) {
  if (!p) return;
  for (size_t i = 0; p->sel && i < p->n; i++)
    for (unsigned k = 0; k < p->sel[i].nsteps; k++) free(p->sel[i].steps[k].name);
  free(p->sel);
  free(p);
}

int evs__jsonpath_compile(const char *const *selectors, size_t n, evs__jsonpath **ret_path,
                          char *err, size_t errlen) {
  evs__jsonpath *p;
  if (errlen) err[0] = 0;
  if (n == 0 || n > EVS__JSONPATH_MAX_SELECTORS) {
    if (errlen) snprintf(err, errlen, "between 1 and %d selectors are needed, got %zu",
                         EVS__JSONPATH_MAX_SELECTORS, n);
    return -EINVAL;
  }
  p = calloc(1, sizeof *p);
  if (!p || !(p->sel = calloc(n, sizeof *p->sel))) {
    free(p);
    return -ENOMEM;
  }
  p->n = n;
  for (size_t i = 0; i < n; i++) {
    int r = parse_one(selectors[i], i, &p->sel[i], err, errlen);
    if (r < 0) {
      if (r == -ENOMEM && errlen) snprintf(err, errlen, "out of memory");
      evs__jsonpath_free(p);
      return r;
    }
  }
  *ret_path = p;
  return 0;
}

size_t evs__jsonpath_nwords(const evs__jsonpath *p) { return p->n; }

void evs__jsonpath_start(const evs__jsonpath *p, uint64_t *states) {
  for (size_t i = 0; i < p->n; i++) states[i] = 1;
}

static bool step_matches(const struct step *st, const char *key, size_t keylen, uint64_t index) {
  switch (st->kind) {
  case STEP_ANY:
    return true;
  case STEP_NAME:
    return key && keylen == st->namelen && memcmp(key, st->name, keylen) == 0;
  case STEP_INDEX:
    return !key && index == st->index;
  }
  return false;
}

int evs__jsonpath_step(const evs__jsonpath *p, const uint64_t *in, uint64_t *out, const char *key,
                       size_t keylen, uint64_t index) {
  uint64_t any = 0, match = 0;
  for (size_t i = 0; i < p->n; i++) {
    const struct selector *sel = &p->sel[i];
    uint64_t w = in[i] & ~sel->accept, o; /* an accepted path has no steps left to take */
    o = w & sel->stay;
    while (w) {
      unsigned s = (unsigned)__builtin_ctzll(w);
      w &= w - 1;
      if (step_matches(&sel->steps[s], key, keylen, index)) o |= UINT64_C(1) << (s + 1);
    }
    out[i] = o;
    any |= o;
    match |= o & sel->accept;
  }
  return match ? EVS__JSONPATH_MATCH : any ? EVS__JSONPATH_LIVE : EVS__JSONPATH_DEAD;
}

bool evs__jsonpath_accepts(const evs__jsonpath *p, const uint64_t *states) {
  for (size_t i = 0; i < p->n; i++)
    if (states[i] & p->sel[i].accept) return true;
  return false;
}
