/*
 * A non-streaming reference for the XML rewriter (plugins/relay-common/xml_rewrite.c), shared by
 * tests/unit/test_xml_rewrite.c and fuzz/fuzz_xml_rewrite.c. Test-only code: static functions in
 * a header so each includer gets its own copy without a shared library.
 *
 * For documents the rewriter accepted only: recursive descent over the whole document, the same
 * jsonpath automaton, sibling indices counted by exact name comparison, and the selection rules
 * of xml_rewrite.h applied with the whole element in view (leaf or container decided after
 * reading its content). Each transformed span is replaced by the marker "#<k>" (k counting from
 * 0); spans are recorded so a caller can put the original bytes back, and the decoded values are
 * folded into a hash the caller can compare with what its transform saw.
 */
#ifndef EVS_TEST_XML_REWRITE_REF_H
#define EVS_TEST_XML_REWRITE_REF_H

struct xref {
  const char *s;
  size_t n;
  const evs__jsonpath *jp;
  char *out;
  size_t olen, ocap, last;
  unsigned k;
  uint64_t vhash; /* xref_hash over every value, in order */
  size_t spans[4096][2];
};

/* The value hash both sides compute: FNV-1a over the value bytes, then a separator. */
static uint64_t xref_hash(uint64_t h, const char *v, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)v[i]) * 0x100000001b3ULL;
  return (h ^ 0x1FF) * 0x100000001b3ULL;
}

static void xref_put(char **b, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    *cap = (*len + n + 1) * 2;
    *b = realloc(*b, *cap);
    if (!*b) abort();
  }
  memcpy(*b + *len, s, n);
  *len += n;
  (*b)[*len] = 0;
}

static bool xref_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static bool xref_at(const struct xref *r, size_t i, const char *lit) {
  size_t l = strlen(lit);
  return i + l <= r->n && memcmp(r->s + i, lit, l) == 0;
}

static size_t xref_find(const struct xref *r, size_t i, const char *lit) {
  while (!xref_at(r, i, lit)) i++;
  return i;
}

/* Appends s[a..b) to v with line ends normalised. */
static void xref_norm(char **v, size_t *vl, size_t *vc, const char *s, size_t a, size_t b) {
  for (size_t i = a; i < b; i++) {
    if (s[i] == '\r') {
      xref_put(v, vl, vc, "\n", 1);
      if (i + 1 < b && s[i + 1] == '\n') i++;
    } else {
      xref_put(v, vl, vc, s + i, 1);
    }
  }
}

/* Decodes the text chunk s[a..b) (references resolved) into v. */
static void xref_text(char **v, size_t *vl, size_t *vc, const char *s, size_t a, size_t b) {
  size_t i = a;
  while (i < b) {
    size_t j = i;
    while (j < b && s[j] != '&') j++;
    xref_norm(v, vl, vc, s, i, j);
    if (j == b) break;
    j++;
    if (s[j] == '#') {
      unsigned long cp =
          s[j + 1] == 'x' ? strtoul(s + j + 2, NULL, 16) : strtoul(s + j + 1, NULL, 10);
      char u[4];
      size_t un;
      if (cp < 0x80) u[0] = (char)cp, un = 1;
      else if (cp < 0x800) u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 63)), un = 2;
      else if (cp < 0x10000)
        u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 63)),
        u[2] = (char)(0x80 | (cp & 63)), un = 3;
      else
        u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 63)),
        u[2] = (char)(0x80 | ((cp >> 6) & 63)), u[3] = (char)(0x80 | (cp & 63)), un = 4;
      xref_put(v, vl, vc, u, un);
    } else {
      const char *m = strncmp(s + j, "amp;", 4) == 0    ? "&"
                      : strncmp(s + j, "lt;", 3) == 0   ? "<"
                      : strncmp(s + j, "gt;", 3) == 0   ? ">"
                      : strncmp(s + j, "quot;", 5) == 0 ? "\""
                                                        : "'";
      xref_put(v, vl, vc, m, 1);
    }
    while (s[j] != ';') j++;
    i = j + 1;
  }
}

/* Element at r->s[i] == '<' with jsonpath states st; returns the index after it. */
static size_t xref_element(struct xref *r, size_t i, const uint64_t *st, bool live, bool sel) {
  size_t nw = r->jp ? evs__jsonpath_nwords(r->jp) : 0, sstart, nnames = 0;
  uint64_t *t1 = calloc(3 * (nw ? nw : 1), sizeof *t1), *t2 = t1 + nw, *cst = t2 + nw;
  struct { size_t off, len; uint64_t count; } *names = NULL;
  char *v = NULL;
  size_t vl = 0, vc = 0;
  bool has_child = false, text = false;
  if (!t1) abort();
  xref_put(&v, &vl, &vc, "", 0);
  i++;
  while (!xref_ws(r->s[i]) && r->s[i] != '>' && r->s[i] != '/') i++;
  for (;;) { /* attributes */
    while (xref_ws(r->s[i])) i++;
    if (r->s[i] == '>') break;
    if (r->s[i] == '/') {
      free(t1);
      free(v);
      return i + 2;
    }
    while (r->s[i] != '"' && r->s[i] != '\'') i++;
    { char q = r->s[i++]; while (r->s[i] != q) i++; }
    i++;
  }
  sstart = ++i;
  for (;;) {
    if (r->s[i] != '<') { /* a text chunk */
      size_t a = i;
      bool ws = true;
      while (r->s[i] != '<') ws &= xref_ws(r->s[i++]);
      text |= !ws;
      xref_text(&v, &vl, &vc, r->s, a, i);
    } else if (r->s[i + 1] == '/') {
      break;
    } else if (xref_at(r, i, "<!--")) {
      i = xref_find(r, i + 4, "-->") + 3;
      if (!text) { /* comments before the first character data stay */
        sstart = i;
        vl = 0;
        v[0] = 0;
      }
    } else if (xref_at(r, i, "<![CDATA[")) {
      size_t e = xref_find(r, i + 9, "]]>");
      text = true;
      xref_norm(&v, &vl, &vc, r->s, i + 9, e);
      i = e + 3;
    } else { /* a child element */
      size_t a = i + 1, b = a;
      bool csel = sel, clive = false;
      uint64_t idx = 0;
      has_child = true;
      while (!xref_ws(r->s[b]) && r->s[b] != '>' && r->s[b] != '/') b++;
      for (size_t k = 0; k < nnames; k++)
        if (names[k].len == b - a && memcmp(r->s + names[k].off, r->s + a, b - a) == 0)
          idx = names[k].count++;
      if (idx == 0) {
        names = realloc(names, (nnames + 1) * sizeof *names);
        if (!names) abort();
        names[nnames].off = a, names[nnames].len = b - a, names[nnames].count = 1;
        nnames++;
      }
      if (!sel && live) {
        evs__jsonpath_step(r->jp, st, t1, r->s + a, b - a, 0);
        evs__jsonpath_step(r->jp, t1, t2, NULL, 0, idx);
        for (size_t w = 0; w < nw; w++) cst[w] = t1[w] | t2[w];
        csel = evs__jsonpath_accepts(r->jp, cst);
        clive = !csel;
      }
      i = xref_element(r, i, cst, clive, csel);
    }
  }
  if (sel && !has_child && text) {
    char m[32];
    int ml = snprintf(m, sizeof m, "#%u", r->k);
    xref_put(&r->out, &r->olen, &r->ocap, r->s + r->last, sstart - r->last);
    xref_put(&r->out, &r->olen, &r->ocap, m, (size_t)ml);
    if (r->k < 4096) r->spans[r->k][0] = sstart, r->spans[r->k][1] = i;
    r->k++;
    r->last = i;
    r->vhash = xref_hash(r->vhash, v, vl);
  }
  free(names);
  free(t1);
  free(v);
  return xref_find(r, i, ">") + 1;
}

/* True when out[0..olen) is in[0..n) with exactly the recorded spans replaced by their markers,
 * i.e. putting the original spans back into the output gives the input. */
static bool xref_put_back(const struct xref *r, const char *in, size_t n, const char *out,
                          size_t olen) {
  size_t ip = 0, op = 0;
  for (unsigned k = 0; k < r->k && k < 4096; k++) {
    size_t a = r->spans[k][0], gap = a - ip;
    char m[32];
    size_t ml = (size_t)snprintf(m, sizeof m, "#%u", k);
    if (a < ip || op + gap + ml > olen || memcmp(out + op, in + ip, gap) != 0 ||
        memcmp(out + op + gap, m, ml) != 0)
      return false;
    op += gap + ml;
    ip = r->spans[k][1];
  }
  return olen - op == n - ip && memcmp(out + op, in + ip, n - ip) == 0;
}

/* Fills r (caller zeroes it and frees r->out) with the expected output for accepted s[0..n). */
static void xref_run(struct xref *r, const evs__jsonpath *jp, const char *s, size_t n) {
  size_t nw = jp ? evs__jsonpath_nwords(jp) : 0, i = 0;
  uint64_t *st = calloc(nw ? nw : 1, sizeof *st);
  bool sel = false;
  if (!st) abort();
  r->s = s, r->n = n, r->jp = jp;
  if (jp) {
    evs__jsonpath_start(jp, st);
    sel = evs__jsonpath_accepts(jp, st);
  }
  if (xref_at(r, 0, "\xEF\xBB\xBF")) i = 3;
  for (;;) {
    while (xref_ws(s[i])) i++;
    if (xref_at(r, i, "<?")) i = xref_find(r, i, "?>") + 2;
    else if (xref_at(r, i, "<!--")) i = xref_find(r, i + 4, "-->") + 3;
    else break;
  }
  xref_element(r, i, st, jp && !sel, sel);
  xref_put(&r->out, &r->olen, &r->ocap, s + r->last, n - r->last);
  free(st);
}

#endif
