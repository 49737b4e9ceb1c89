/*
 * A non-streaming reference for the JSON rewriter (plugins/relay-common/json_rewrite.c), shared
 * by tests/unit/test_json_rewrite.c and fuzz/fuzz_json_rewrite.c. Test-only code: static
 * functions in a header so each includer gets its own copy without a shared library.
 */
#ifndef EVS_TEST_JSON_REWRITE_REF_H
#define EVS_TEST_JSON_REWRITE_REF_H

/* A non-streaming reference for the rewriter's output, for valid JSON only: recursive descent
 * over the whole document, the same jsonpath automaton, and each selected non-null scalar span
 * replaced by the marker "\"#<k>\"" (k counting from 0). Spans are recorded so a caller can put
 * the original bytes back. */
struct ref {
  const char *s;
  size_t n, i, last;
  const evs__jsonpath *jp;
  char *out;
  size_t olen, ocap;
  unsigned k;
  size_t spans[4096][2];
};

static void ref_put(struct ref *r, const char *b, size_t n) {
  if (r->olen + n + 1 > r->ocap) {
    r->ocap = (r->olen + n + 1) * 2;
    r->out = realloc(r->out, r->ocap);
    if (!r->out) abort();
  }
  memcpy(r->out + r->olen, b, n);
  r->olen += n;
  r->out[r->olen] = 0;
}

static void ref_ws(struct ref *r) {
  while (r->i < r->n && strchr(" \t\r\n", r->s[r->i]) && r->s[r->i]) r->i++;
}

static unsigned ref_hex4(const char *p) {
  unsigned v = 0;
  for (int j = 0; j < 4; j++) {
    char c = p[j];
    v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return v;
}

/* Decodes the string at r->i (on the quote) into key (cap 4096), advancing past it. */
static size_t ref_string(struct ref *r, char *key) {
  size_t kl = 0;
  r->i++;
  while (r->s[r->i] != '"') {
    char c = r->s[r->i++];
    if (c != '\\') {
      if (key && kl < 4090) key[kl++] = c;
      continue;
    }
    c = r->s[r->i++];
    if (c == 'u') {
      unsigned cp = ref_hex4(r->s + r->i);
      r->i += 4;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (ref_hex4(r->s + r->i + 2) - 0xDC00);
        r->i += 6;
      }
      if (key && kl < 4090) {
        if (cp < 0x80) key[kl++] = (char)cp;
        else if (cp < 0x800) key[kl++] = (char)(0xC0 | (cp >> 6)), key[kl++] = (char)(0x80 | (cp & 63));
        else if (cp < 0x10000)
          key[kl++] = (char)(0xE0 | (cp >> 12)), key[kl++] = (char)(0x80 | ((cp >> 6) & 63)),
          key[kl++] = (char)(0x80 | (cp & 63));
        else
          key[kl++] = (char)(0xF0 | (cp >> 18)), key[kl++] = (char)(0x80 | ((cp >> 12) & 63)),
          key[kl++] = (char)(0x80 | ((cp >> 6) & 63)), key[kl++] = (char)(0x80 | (cp & 63));
      }
    } else if (key && kl < 4090) {
      const char *m = strchr("\"\"\\\\//b\bf\fn\nr\rt\t", c);
      key[kl++] = m ? m[1] : c;
    }
  }
  r->i++;
  return kl;
}

static void ref_value(struct ref *r, const uint64_t *st, bool live, bool sel) {
  size_t nw = r->jp ? evs__jsonpath_nwords(r->jp) : 0;
  uint64_t *cst = calloc(nw ? nw : 1, sizeof *cst);
  char *key = malloc(4096);
  size_t a;
  if (!cst || !key) abort();
  ref_ws(r);
  a = r->i;
  if (r->s[r->i] == '{' || r->s[r->i] == '[') {
    bool obj = r->s[r->i++] == '{';
    uint64_t idx = 0;
    ref_ws(r);
    if (r->s[r->i] == (obj ? '}' : ']')) {
      r->i++;
    } else {
      for (;;) {
        bool clive = false, csel = sel;
        size_t kl = 0;
        ref_ws(r);
        if (obj) {
          kl = ref_string(r, key);
          ref_ws(r);
          r->i++; /* ':' */
        }
        if (!sel && live) {
          clive = evs__jsonpath_step(r->jp, st, cst, obj ? key : NULL, kl, idx);
          csel = clive && evs__jsonpath_accepts(r->jp, cst);
        }
        idx++;
        ref_value(r, cst, clive, csel);
        ref_ws(r);
        if (r->s[r->i++] != ',') break;
      }
    }
  } else {
    if (r->s[r->i] == '"') ref_string(r, NULL);
    else while (r->i < r->n && !strchr(",]} \t\r\n", r->s[r->i])) r->i++;
    if (sel && r->s[a] != 'n') {
      char m[32];
      int ml = snprintf(m, sizeof m, "\"#%u\"", r->k);
      ref_put(r, r->s + r->last, a - r->last);
      ref_put(r, m, (size_t)ml);
      if (r->k < 4096) r->spans[r->k][0] = a, r->spans[r->k][1] = r->i;
      r->k++;
      r->last = r->i;
    }
  }
  free(cst);
  free(key);
}

/* Fills r (caller zeroes it and frees r->out) with the expected output for valid s[0..n). */
static void ref_run(struct ref *r, const evs__jsonpath *jp, const char *s, size_t n) {
  size_t nw = jp ? evs__jsonpath_nwords(jp) : 0;
  uint64_t *st = calloc(nw ? nw : 1, sizeof *st);
  bool live = false, sel = false;
  if (!st) abort();
  r->s = s, r->n = n, r->jp = jp;
  if (jp) {
    evs__jsonpath_start(jp, st);
    live = true;
    sel = evs__jsonpath_accepts(jp, st);
  }
  ref_value(r, st, live, sel);
  ref_put(r, s + r->last, n - r->last);
  free(st);
}

#endif
