/*
 * xml_rewrite: a push (incremental) XML validator and rewriter for the Inbound Relay's "fields to
 * encrypt" (see xml_rewrite.h for the contract and selection rules). One byte-driven state
 * machine whose state survives any split of the input: the lexer state (text, tag, attribute
 * value, reference, comment, CDATA, declaration), the stack of open elements (names for end-tag
 * matching, jsonpath states, sibling-name counts), and the capture of a selected element's text.
 * A separate pass validates UTF-8 and XML's Char range over each buffer before parsing it.
 *
 * Output is emitted as spans of the caller's buffer. Only the content of a selected element is
 * held back (decoded into val) until its end tag or first child decides what it is. While that
 * content is still nothing but literal whitespace, val holds the raw bytes, so a selected element
 * that turns out to have children (or no text) gets them forwarded unchanged; markup bytes held
 * back with it ("<", "<!") are known constants and are re-emitted from literals when the markup
 * began in an earlier buffer.
 */
#include "xml_rewrite.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rw_base.h"

enum lstate {
  L_BOM,          /* at the start: an optional UTF-8 byte order mark */
  L_TEXT,         /* character data (in the root) or whitespace (around it) */
  L_LT,           /* after '<' */
  L_LT_BANG,      /* after "<!" */
  L_COMMENT_OPEN, /* after "<!-" */
  L_COMMENT,
  L_COMMENT_D1, /* "-" inside a comment */
  L_COMMENT_D2, /* "--" inside a comment: only '>' may follow */
  L_CDATA_OPEN, /* matching "CDATA[" after "<![" */
  L_CDATA,
  L_CDATA_B1, /* "]" inside CDATA */
  L_CDATA_B2, /* "]]" inside CDATA */
  L_DECL,     /* inside "<?xml ... ?>" */
  L_STAG_NAME,
  L_STAG_SPACE, /* after the element name or an attribute value */
  L_ATTR_NAME,
  L_ATTR_EQ,
  L_ATTR_QUOTE,
  L_ATTR_VAL,
  L_STAG_SLASH, /* "/" in a start tag: only '>' may follow */
  L_ETAG_NAME,
  L_ETAG_SPACE,
  L_REF, /* after '&' in text or an attribute value */
};

enum rstate { R_START, R_NAME, R_HASH, R_HEX0, R_HEX, R_DEC };
enum kind { K_LIT, K_CDATA, K_REF }; /* where decoded text bytes come from */

struct frame {
  size_t name_off, name_len; /* in names[] */
  size_t key_base;           /* this element's first entry in keys */
  bool sel, live;
};

struct kent {
  uint64_t h, n; /* hash of a child name, number of children with that name so far */
};

struct evs__xml_rewrite {
  evs__rw_base b; /* first: the rewriter is its base (rw_base.h) */
  const evs__jsonpath *paths;
  size_t nw;
  struct evs__xml_rewrite_opts o;
  const char *buf; /* the current buffer (the base's off is the body offset of buf[0]) */

  /* Buffers, kept by a reset (emptied; t1 and t2 are scratch that each step writes whole). */
  struct frame *fr; /* fr[0..depth) */
  uint64_t *st;     /* states of frame d at st[d * nw] */
  uint64_t *t1, *t2;
  unsigned fr_cap;
  evs__rw_buf names; /* names of the open elements, then the start tag being read */
  evs__rw_keys keys; /* the child names of all open elements: struct kent */

  /* Parse state from here on: zero after new and after a reset, but for start(). */
  enum lstate ls;
  unsigned bom_pos, sub, rb; /* rb: consecutive ']' in text (for "]]>") */
  uint64_t bom_len, mark_off; /* mark_off: body offset of the last '<' */
  bool root_seen, had_ws;
  char quote;

  unsigned depth;
  size_t tag_off, etag_i;

  bool cap_ws, recapture, cr; /* the capture: the base's capturing and val */

  enum rstate rs;
  bool ref_attr;
  unsigned ref_n;
  uint32_t ref_val;
  char ref_name[8];

  int ev; /* ev: detector: 0 leading whitespace, 1..2 prefix matched, 3 body, 4 trailing ws */
  unsigned ev_colons;
  unsigned char ev_last[2];

  unsigned u_need; /* UTF-8 validator */
  unsigned char u_lo, u_hi;
  uint32_t u_cp;

  char decl[256];
  size_t decl_len;
};

const char *evs__xml_rewrite_strerror(int err) {
  switch (err) {
  case EVS__RW_E_SYNTAX: return "malformed XML";
  case EVS__RW_E_DEPTH: return "XML nested too deeply";
  case EVS__RW_E_TOOBIG: return "selected text or element name too large";
  case EVS__RW_E_KEYS: return "too many distinct element names in open elements";
  case EVS__RW_E_EVDATA: return "Evervault-encrypted data in an unselected field";
  case EVS__RW_E_DOCTYPE: return "DOCTYPE or markup declaration in XML";
  case EVS__RW_E_ENTITY: return "reference to an undeclared XML entity";
  case EVS__RW_E_PI: return "XML processing instruction";
  case EVS__RW_E_ENCODING: return "XML encoding other than UTF-8";
  case EVS__RW_E_MIXED: return "text beside child elements in a selected XML element";
  case -ENOMEM: return "out of memory";
  default: return "error";
  }
}

static int val_append(evs__xml_rewrite *rw, const char *s, size_t n) {
  return evs__rw_val_append(&rw->b, s, n);
}

static bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* XML name characters, with every non-ASCII byte accepted (UTF-8 is validated separately;
 * Unicode name classes are not checked, see xml_rewrite.h). */
static bool name_start(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || c >= 0x80;
}

static bool name_char(unsigned char c) {
  return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

/* ---- ev: detector (the json_rewrite.c rule, with surrounding whitespace ignored) ----------- */

static bool ev_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/' || c == '=' || c == '-' || c == '_' || c == ':' || c == '$';
}

static void ev_start(evs__xml_rewrite *rw) {
  rw->ev = 0;
  rw->ev_colons = 0;
  rw->ev_last[0] = rw->ev_last[1] = 0;
}

static void ev_feed(evs__xml_rewrite *rw, const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n && rw->ev >= 0; i++) {
    unsigned char c = s[i];
    switch (rw->ev) {
    case 0:
      if (!is_ws(c)) rw->ev = c == 'e' ? 1 : -1;
      break;
    case 1:
      rw->ev = c == 'v' ? 2 : -1;
      break;
    case 2:
      rw->ev = c == ':' ? 3 : -1;
      rw->ev_colons = 1;
      rw->ev_last[1] = ':';
      break;
    case 3:
      if (ev_char(c)) {
        rw->ev_colons += c == ':';
        rw->ev_last[0] = rw->ev_last[1];
        rw->ev_last[1] = c;
      } else {
        rw->ev = is_ws(c) ? 4 : -1;
      }
      break;
    default:
      if (!is_ws(c)) rw->ev = -1;
      break;
    }
  }
}

static bool ev_looks_encrypted(const evs__xml_rewrite *rw) {
  return !rw->o.allow_ev && rw->ev >= 3 && (rw->ev_colons == 5 || rw->ev_colons == 6) &&
         rw->ev_last[0] == ':' && rw->ev_last[1] == '$';
}

/* ---- sibling-name counts ------------------------------------------------------------------- */

/* Sets *ret_idx to the number of earlier children named like h of the element whose entries
 * start at base, and counts this one. */
static int sibling_index(evs__xml_rewrite *rw, uint64_t h, size_t base, uint64_t *ret_idx) {
  struct kent *k;
  size_t slot, e = evs__rw_keys_find(&rw->keys, sizeof *k, h, base, &slot);
  int r;
  if (e != EVS__RW_KEYS_NONE) {
    *ret_idx = ((struct kent *)rw->keys.ent)[e].n++;
    return 0;
  }
  if ((r = evs__rw_keys_reserve(&rw->keys, &rw->b.mem, sizeof *k, rw->o.max_keys)) < 0) return r;
  slot = evs__rw_keys_slot(&rw->keys, h); /* after the reserve, which may have rebuilt */
  k = (struct kent *)rw->keys.ent + evs__rw_keys_put(&rw->keys, sizeof *k, slot, h);
  k->n = 1;
  *ret_idx = 0;
  return 0;
}

/* ---- output and capture -------------------------------------------------------------------- */

static uint64_t off_of(const evs__xml_rewrite *rw, const unsigned char *p) {
  return rw->b.off + (uint64_t)((const char *)p - rw->buf);
}

/* Content of a selected element starts at p: flush the pass-through bytes before it. */
static int capture_begin(evs__xml_rewrite *rw, const unsigned char *p) {
  rw->cap_ws = true;
  rw->ev = -1;
  return evs__rw_capture_begin(&rw->b, (const char *)p);
}

/* Pass-through resumes at the markup that began at mark_off, of which prefix[0..n) precedes p. */
static int resume(evs__xml_rewrite *rw, const unsigned char *p, const char *prefix, size_t n) {
  if (rw->mark_off >= rw->b.off) {
    rw->b.pass = rw->buf + (rw->mark_off - rw->b.off);
    return 0;
  }
  rw->b.pass = (const char *)p;
  return evs__rw_emit(&rw->b, prefix, n);
}

/* The captured content, all literal whitespace so far, is forwarded as it was. */
static int capture_flush(evs__xml_rewrite *rw, const unsigned char *p, const char *prefix,
                         size_t n) {
  int r;
  rw->b.capturing = false;
  if ((r = evs__rw_emit(&rw->b, rw->b.val.p, rw->b.val.len)) < 0) return r;
  return resume(rw, p, prefix, n);
}

/* The selected element's content ends at "</" (p on the '/'). */
static int capture_end(evs__xml_rewrite *rw, const unsigned char *p) {
  int r;
  if (rw->cap_ws) return capture_flush(rw, p, "<", 1);
  /* pass is set by resume() after the replacement. */
  if ((r = evs__rw_capture_end(&rw->b, EVS__RW_STRING, rw->b.pass, NULL)) < 0) return r;
  return resume(rw, p, "<", 1);
}

/* Character data (not literal whitespace) starts in a capture: val stops being raw bytes, so its
 * line ends are normalised as XML requires. */
static void capture_text(evs__xml_rewrite *rw) {
  size_t j = 0;
  bool cr = false;
  if (!rw->cap_ws) return;
  rw->cap_ws = false;
  for (size_t i = 0; i < rw->b.val.len; i++) {
    char c = rw->b.val.p[i];
    if (c == '\n' && cr) {
      cr = false;
      continue;
    }
    cr = c == '\r';
    rw->b.val.p[j++] = cr ? '\n' : c;
  }
  rw->b.val.len = j;
  rw->b.val.p[j] = 0;
  rw->cr = cr;
}

/* Appends raw text to val with "\r\n" and "\r" turned into "\n". */
static int append_norm(evs__xml_rewrite *rw, const char *s, size_t n) {
  int r;
  while (n) {
    const char *q;
    size_t k;
    if (rw->cr && *s == '\n') {
      s++, n--;
      rw->cr = false;
      continue;
    }
    rw->cr = false;
    q = memchr(s, '\r', n);
    k = q ? (size_t)(q - s) : n;
    if ((r = val_append(rw, s, k)) < 0) return r;
    if (!q) break;
    if ((r = val_append(rw, "\n", 1)) < 0) return r;
    rw->cr = true;
    s += k + 1;
    n -= k + 1;
  }
  return 0;
}

/* Decoded character data of the innermost element goes to the capture or the ev: detector. */
static int text_out(evs__xml_rewrite *rw, const char *s, size_t n, enum kind kind) {
  if (rw->b.capturing) {
    if (rw->cap_ws && kind == K_LIT) {
      size_t i = 0;
      int r;
      while (i < n && is_ws((unsigned char)s[i])) i++;
      if (i && (r = val_append(rw, s, i)) < 0) return r;
      if (i == n) return 0;
      s += i, n -= i;
    }
    capture_text(rw);
    if (kind == K_REF) {
      rw->cr = false;
      return val_append(rw, s, n);
    }
    return append_norm(rw, s, n);
  }
  if (rw->ev >= 0) ev_feed(rw, (const unsigned char *)s, n);
  return 0;
}

/* ---- elements ------------------------------------------------------------------------------ */

/* The start tag's name names[tag_off..names_len) is complete: open the element and decide its
 * selection. */
static int open_element(evs__xml_rewrite *rw) {
  const char *name = rw->names.p + rw->tag_off;
  size_t len = rw->names.len - rw->tag_off;
  struct frame *f;
  uint64_t *slot;
  bool sel = false, live = false;
  int r;
  void *fr = rw->fr;
  r = evs__rw_frames_reserve(&rw->b.mem, &fr, &rw->st, &rw->fr_cap, rw->depth, rw->o.max_depth,
                             sizeof *rw->fr, rw->nw);
  rw->fr = fr;
  if (r < 0) return r;
  slot = rw->st ? rw->st + rw->depth * rw->nw : NULL;
  if (rw->depth == 0) { /* the root element is `$` */
    rw->root_seen = true;
    if (rw->paths) {
      evs__jsonpath_start(rw->paths, slot);
      sel = evs__jsonpath_accepts(rw->paths, slot);
      live = !sel;
    }
  } else {
    struct frame *p = &rw->fr[rw->depth - 1];
    if (p->sel) {
      sel = true;
    } else if (p->live) {
      const uint64_t *pst = rw->st + (rw->depth - 1) * rw->nw;
      int m1 = evs__jsonpath_step(rw->paths, pst, rw->t1, name, len, 0);
      if (m1 != EVS__JSONPATH_DEAD) {
        uint64_t idx;
        int m2;
        if ((r = sibling_index(rw, evs__rw_name_hash(name, len), p->key_base, &idx)) < 0)
          return r;
        /* The index among same-named siblings is an optional second step: the element's state
         * is the union of "name" and "name, index". */
        m2 = evs__jsonpath_step(rw->paths, rw->t1, rw->t2, NULL, 0, idx);
        for (size_t w = 0; w < rw->nw; w++) slot[w] = rw->t1[w] | rw->t2[w];
        sel = m1 == EVS__JSONPATH_MATCH || m2 == EVS__JSONPATH_MATCH;
        live = !sel;
      }
    }
  }
  f = &rw->fr[rw->depth++];
  f->name_off = rw->tag_off;
  f->name_len = len;
  f->key_base = rw->keys.len;
  f->sel = sel;
  f->live = live;
  return 0;
}

/* The start tag ended with '>' just before p. */
static int content_begin(evs__xml_rewrite *rw, const unsigned char *p) {
  rw->ls = L_TEXT;
  rw->rb = 0;
  rw->cr = false;
  if (rw->fr[rw->depth - 1].sel) return capture_begin(rw, p);
  ev_start(rw);
  return 0;
}

static void close_element(evs__xml_rewrite *rw) {
  struct frame *f = &rw->fr[--rw->depth];
  rw->names.len = f->name_off;
  rw->keys.len = f->key_base;
  rw->ls = L_TEXT;
  rw->rb = 0;
  rw->cr = false;
  if (rw->depth && !rw->fr[rw->depth - 1].sel) ev_start(rw);
  else rw->ev = -1;
}

/* ---- XML declaration ----------------------------------------------------------------------- */

/* Checks d[0..n), the text between "<?" and "?>" at the start of the body. */
static int decl_check(const char *d, size_t n) {
  static const char *const names[] = {"version", "encoding", "standalone"};
  size_t i = 3;
  unsigned next = 0;
  if (n < 3 || memcmp(d, "xml", 3) != 0 || (n > 3 && !is_ws((unsigned char)d[3])))
    return EVS__RW_E_PI;
  for (;;) {
    size_t ws = i, vb, vl;
    unsigned k;
    char q;
    while (i < n && is_ws((unsigned char)d[i])) i++;
    if (i == n) break;
    if (i == ws) return EVS__RW_E_SYNTAX;
    for (k = next; k < 3; k++) {
      size_t l = strlen(names[k]);
      if (n - i >= l && memcmp(d + i, names[k], l) == 0) break;
    }
    if (k == 3 || (next == 0 && k != 0)) return EVS__RW_E_SYNTAX; /* version comes first */
    i += strlen(names[k]);
    while (i < n && is_ws((unsigned char)d[i])) i++;
    if (i == n || d[i] != '=') return EVS__RW_E_SYNTAX;
    i++;
    while (i < n && is_ws((unsigned char)d[i])) i++;
    if (i == n || (d[i] != '"' && d[i] != '\'')) return EVS__RW_E_SYNTAX;
    q = d[i++];
    vb = i;
    while (i < n && d[i] != q) i++;
    if (i == n) return EVS__RW_E_SYNTAX;
    vl = i++ - vb;
    if (k == 0 && !(vl == 3 && memcmp(d + vb, "1.0", 3) == 0)) return EVS__RW_E_SYNTAX;
    if (k == 1 && !(vl == 5 && strncasecmp(d + vb, "UTF-8", 5) == 0)) return EVS__RW_E_ENCODING;
    if (k == 2 && !((vl == 3 && memcmp(d + vb, "yes", 3) == 0) ||
                    (vl == 2 && memcmp(d + vb, "no", 2) == 0)))
      return EVS__RW_E_SYNTAX;
    next = k + 1;
  }
  return next ? 0 : EVS__RW_E_SYNTAX;
}

/* ---- references ---------------------------------------------------------------------------- */

static size_t utf8_encode(uint32_t cp, char *b) {
  if (cp < 0x80) {
    b[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    b[0] = (char)(0xC0 | (cp >> 6));
    b[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    b[0] = (char)(0xE0 | (cp >> 12));
    b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    b[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  b[0] = (char)(0xF0 | (cp >> 18));
  b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  b[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

static bool xml_char(uint32_t cp) {
  return cp == 0x9 || cp == 0xA || cp == 0xD || (cp >= 0x20 && cp <= 0xD7FF) ||
         (cp >= 0xE000 && cp <= 0xFFFD) || (cp >= 0x10000 && cp <= 0x10FFFF);
}

/* One byte of a reference; on ';' the decoded character goes to the text or attribute value. */
static int ref_byte(evs__xml_rewrite *rw, unsigned char c) {
  char b[4];
  size_t n;
  int d = -1;
  switch (rw->rs) {
  case R_START:
    if (c == '#') rw->rs = R_HASH;
    else if (name_start(c)) rw->rs = R_NAME, rw->ref_name[0] = (char)c, rw->ref_n = 1;
    else return EVS__RW_E_SYNTAX;
    return 0;
  case R_NAME:
    if (name_char(c)) {
      if (rw->ref_n < sizeof rw->ref_name) rw->ref_name[rw->ref_n] = (char)c;
      rw->ref_n++;
      return 0;
    }
    if (c != ';') return EVS__RW_E_SYNTAX;
    {
      static const char ents[][5] = {"amp", "lt", "gt", "quot", "apos"};
      static const char chars[] = "&<>\"'";
      size_t k;
      for (k = 0; k < 5; k++)
        if (rw->ref_n == strlen(ents[k]) && memcmp(rw->ref_name, ents[k], rw->ref_n) == 0) break;
      if (k == 5) return EVS__RW_E_ENTITY; /* never expanded: no DTD can declare one */
      b[0] = chars[k];
      n = 1;
    }
    break;
  case R_HASH:
    if (c == 'x') {
      rw->rs = R_HEX0;
      rw->ref_val = 0;
      return 0;
    }
    rw->rs = R_DEC;
    rw->ref_val = 0;
    /* fall through */
  case R_DEC:
    if (c >= '0' && c <= '9') d = c - '0';
    if (d >= 0) {
      rw->ref_val = rw->ref_val * 10 + (uint32_t)d;
      if (rw->ref_val > 0x110000) rw->ref_val = 0x110000; /* stays invalid, no overflow */
      rw->ref_n = 1;
      return 0;
    }
    if (c != ';' || rw->rs != R_DEC || !rw->ref_n) return EVS__RW_E_SYNTAX;
    goto num;
  case R_HEX0:
  case R_HEX:
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    if (d >= 0) {
      rw->ref_val = rw->ref_val * 16 + (uint32_t)d;
      if (rw->ref_val > 0x110000) rw->ref_val = 0x110000;
      rw->rs = R_HEX;
      return 0;
    }
    if (c != ';' || rw->rs != R_HEX) return EVS__RW_E_SYNTAX;
  num:
    if (!xml_char(rw->ref_val)) return EVS__RW_E_SYNTAX;
    n = utf8_encode(rw->ref_val, b);
    break;
  default:
    return EVS__RW_E_SYNTAX;
  }
  rw->rb = 0;
  if (rw->ref_attr) {
    if (rw->ev >= 0) ev_feed(rw, (const unsigned char *)b, n);
    rw->ls = L_ATTR_VAL;
    return 0;
  }
  rw->ls = L_TEXT;
  return text_out(rw, b, n, K_REF);
}

static void ref_begin(evs__xml_rewrite *rw, bool in_attr) {
  rw->ls = L_REF;
  rw->rs = R_START;
  rw->ref_attr = in_attr;
  rw->ref_n = 0;
}

/* ---- the state machine --------------------------------------------------------------------- */

/* Bytes of character data that need no attention: all but '<' '&' ']' '>'. */
static bool text_plain(unsigned char c) { return c != '<' && c != '&' && c != ']' && c != '>'; }

static int parse(evs__xml_rewrite *rw, const unsigned char *p, const unsigned char *e,
                 const unsigned char **ret_p) {
  int r = 0;
  while (p < e && r == 0) {
    unsigned char c = *p;
    switch (rw->ls) {
    case L_BOM:
      if (c == (unsigned char)"\xEF\xBB\xBF"[rw->bom_pos]) {
        p++;
        if (++rw->bom_pos == 3) rw->bom_len = 3, rw->ls = L_TEXT;
      } else if (rw->bom_pos == 0) {
        rw->ls = L_TEXT;
      } else {
        r = EVS__RW_E_SYNTAX;
      }
      break;
    case L_TEXT: {
      const unsigned char *s = p;
      bool free_text = rw->depth && !rw->b.capturing && !rw->fr[rw->depth - 1].sel;
      if (!rw->b.capturing && !free_text) { /* around the root, or between selected children */
        while (p < e && is_ws(*p)) p++;
        if (p == e) break;
        if (*p != '<') {
          r = rw->depth ? EVS__RW_E_MIXED : EVS__RW_E_SYNTAX;
          break;
        }
      } else {
        for (;;) {
          const unsigned char *q = p;
          while (p < e && text_plain(*p)) p++;
          if (p > q) rw->rb = 0;
          if (p == e) break;
          if (*p == ']') {
            rw->rb = rw->rb < 2 ? rw->rb + 1 : 2;
          } else if (*p == '>') {
            if (rw->rb == 2) { /* "]]>" may not appear in character data */
              r = EVS__RW_E_SYNTAX;
              break;
            }
            rw->rb = 0;
          } else {
            break;
          }
          p++;
        }
        if (r < 0) break;
        if (p > s && (rw->b.capturing || rw->ev >= 0) &&
            (r = text_out(rw, (const char *)s, (size_t)(p - s), K_LIT)) < 0)
          break;
        if (p == e) break;
        if (*p == '&') {
          ref_begin(rw, false);
          p++;
          break;
        }
      }
      rw->mark_off = off_of(rw, p); /* '<' */
      rw->ls = L_LT;
      p++;
      break;
    }
    case L_LT:
      if (c == '/') {
        if (!rw->depth) {
          r = EVS__RW_E_SYNTAX;
          break;
        }
        if (rw->b.capturing) r = capture_end(rw, p);
        else if (ev_looks_encrypted(rw)) r = EVS__RW_E_EVDATA;
        rw->ev = -1;
        rw->etag_i = 0;
        rw->ls = L_ETAG_NAME;
        p++;
      } else if (c == '!') {
        rw->ls = L_LT_BANG;
        p++;
      } else if (c == '?') {
        if (rw->mark_off == rw->bom_len) { /* only the very first thing may be the declaration */
          rw->decl_len = 0;
          rw->ls = L_DECL;
          p++;
        } else {
          r = EVS__RW_E_PI;
        }
      } else if (name_start(c)) {
        if (!rw->depth && rw->root_seen) {
          r = EVS__RW_E_SYNTAX; /* a second root element */
          break;
        }
        if (rw->b.capturing) r = rw->cap_ws ? capture_flush(rw, p, "<", 1) : EVS__RW_E_MIXED;
        else if (ev_looks_encrypted(rw)) r = EVS__RW_E_EVDATA;
        rw->ev = -1;
        rw->tag_off = rw->names.len;
        rw->ls = L_STAG_NAME;
      } else {
        r = EVS__RW_E_SYNTAX;
      }
      break;
    case L_LT_BANG:
      if (c == '-') {
        /* A comment while a selected element's content is still whitespace is kept: the capture
         * restarts after it. Later ones are part of the replaced content. */
        if (rw->b.capturing && rw->cap_ws) {
          rw->recapture = true;
          r = capture_flush(rw, p, "<!", 2);
        }
        rw->ls = L_COMMENT_OPEN;
        p++;
      } else if (c == '[') {
        if (!rw->depth) r = EVS__RW_E_SYNTAX;
        else if (!rw->b.capturing && rw->fr[rw->depth - 1].sel) r = EVS__RW_E_MIXED;
        rw->sub = 0;
        rw->ls = L_CDATA_OPEN;
        p++;
      } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
        r = EVS__RW_E_DOCTYPE;
      } else {
        r = EVS__RW_E_SYNTAX;
      }
      break;
    case L_COMMENT_OPEN:
      if (c != '-') {
        r = EVS__RW_E_SYNTAX;
        break;
      }
      rw->ls = L_COMMENT;
      p++;
      break;
    case L_COMMENT: {
      const unsigned char *q = memchr(p, '-', (size_t)(e - p));
      if (!q) {
        p = e;
        break;
      }
      p = q + 1;
      rw->ls = L_COMMENT_D1;
      break;
    }
    case L_COMMENT_D1:
      rw->ls = c == '-' ? L_COMMENT_D2 : L_COMMENT;
      p++;
      break;
    case L_COMMENT_D2:
      if (c != '>') { /* "--" may not appear inside a comment */
        r = EVS__RW_E_SYNTAX;
        break;
      }
      p++;
      rw->ls = L_TEXT;
      rw->rb = 0;
      rw->cr = false;
      if (rw->recapture) {
        rw->recapture = false;
        r = capture_begin(rw, p);
      }
      break;
    case L_CDATA_OPEN:
      if (c != (unsigned char)"CDATA["[rw->sub]) {
        r = EVS__RW_E_SYNTAX;
        break;
      }
      p++;
      if (++rw->sub == 6) {
        rw->ls = L_CDATA;
        rw->cr = false;
        if (rw->b.capturing) capture_text(rw); /* even an empty section is character data */
      }
      break;
    case L_CDATA: {
      const unsigned char *q = memchr(p, ']', (size_t)(e - p)), *s = p;
      p = q ? q : e;
      if (p > s && (r = text_out(rw, (const char *)s, (size_t)(p - s), K_CDATA)) < 0) break;
      if (q) {
        rw->ls = L_CDATA_B1;
        p++;
      }
      break;
    }
    case L_CDATA_B1:
      if (c == ']') {
        rw->ls = L_CDATA_B2;
        p++;
      } else {
        r = text_out(rw, "]", 1, K_CDATA);
        rw->ls = L_CDATA;
      }
      break;
    case L_CDATA_B2:
      if (c == '>') {
        rw->ls = L_TEXT;
        rw->rb = 0;
        rw->cr = false;
        p++;
      } else if (c == ']') {
        r = text_out(rw, "]", 1, K_CDATA);
        p++;
      } else {
        r = text_out(rw, "]]", 2, K_CDATA);
        rw->ls = L_CDATA;
      }
      break;
    case L_DECL:
      if (c == '>' && rw->decl_len && rw->decl[rw->decl_len - 1] == '?') {
        r = decl_check(rw->decl, rw->decl_len - 1);
        rw->ls = L_TEXT;
      } else if (rw->decl_len == sizeof rw->decl) {
        bool xml = memcmp(rw->decl, "xml", 3) == 0 && is_ws((unsigned char)rw->decl[3]);
        r = xml ? EVS__RW_E_SYNTAX : EVS__RW_E_PI;
      } else {
        rw->decl[rw->decl_len++] = (char)c;
      }
      p++;
      break;
    case L_STAG_NAME: {
      const unsigned char *s = p;
      while (p < e && name_char(*p)) p++;
      if ((r = evs__rw_buf_append(&rw->b.mem, &rw->names, rw->o.max_value, EVS__RW_E_TOOBIG, 16,
                                  0, (const char *)s, (size_t)(p - s))) < 0)
        break;
      if (p == e) break;
      r = open_element(rw);
      rw->had_ws = false;
      rw->ls = L_STAG_SPACE;
      break;
    }
    case L_STAG_SPACE:
      if (is_ws(c)) {
        rw->had_ws = true;
        p++;
      } else if (c == '>') {
        p++;
        r = content_begin(rw, p);
      } else if (c == '/') {
        rw->ls = L_STAG_SLASH;
        p++;
      } else if (name_start(c) && rw->had_ws) {
        rw->ls = L_ATTR_NAME;
        p++;
      } else {
        r = EVS__RW_E_SYNTAX;
      }
      break;
    case L_ATTR_NAME:
      while (p < e && name_char(*p)) p++;
      if (p < e) rw->ls = L_ATTR_EQ;
      break;
    case L_ATTR_EQ:
    case L_ATTR_QUOTE:
      if (is_ws(c)) {
        p++;
      } else if (rw->ls == L_ATTR_EQ && c == '=') {
        rw->ls = L_ATTR_QUOTE;
        p++;
      } else if (rw->ls == L_ATTR_QUOTE && (c == '"' || c == '\'')) {
        rw->quote = (char)c;
        ev_start(rw);
        rw->ls = L_ATTR_VAL;
        p++;
      } else {
        r = EVS__RW_E_SYNTAX;
      }
      break;
    case L_ATTR_VAL: {
      const unsigned char *s = p;
      while (p < e && *p != (unsigned char)rw->quote && *p != '<' && *p != '&') p++;
      if (p > s && rw->ev >= 0) ev_feed(rw, s, (size_t)(p - s));
      if (p == e) break;
      if (*p == '<') {
        r = EVS__RW_E_SYNTAX;
      } else if (*p == '&') {
        ref_begin(rw, true);
        p++;
      } else {
        if (ev_looks_encrypted(rw)) r = EVS__RW_E_EVDATA;
        rw->ev = -1;
        rw->had_ws = false;
        rw->ls = L_STAG_SPACE;
        p++;
      }
      break;
    }
    case L_STAG_SLASH:
      if (c != '>') {
        r = EVS__RW_E_SYNTAX;
        break;
      }
      p++;
      close_element(rw); /* an empty element is never transformed */
      break;
    case L_ETAG_NAME: {
      const struct frame *f = &rw->fr[rw->depth - 1];
      const char *want = rw->names.p + f->name_off;
      while (p < e && name_char(*p)) {
        if (rw->etag_i >= f->name_len || (unsigned char)want[rw->etag_i] != *p) {
          r = EVS__RW_E_SYNTAX; /* mismatched end tag */
          break;
        }
        rw->etag_i++;
        p++;
      }
      if (r < 0 || p == e) break;
      if (rw->etag_i != f->name_len) r = EVS__RW_E_SYNTAX;
      rw->ls = L_ETAG_SPACE;
      break;
    }
    case L_ETAG_SPACE:
      if (is_ws(c)) {
        p++;
      } else if (c == '>') {
        p++;
        close_element(rw);
      } else {
        r = EVS__RW_E_SYNTAX;
      }
      break;
    case L_REF:
      r = ref_byte(rw, c);
      p++;
      break;
    }
  }
  *ret_p = p;
  return r;
}

/* Validates UTF-8 and XML's Char production (no C0 controls but tab, LF, CR; no U+FFFE/U+FFFF;
 * surrogates and overlongs are excluded by the byte ranges). Returns the length of the valid
 * prefix, n when all is valid. Not inlined: inlined into run(), its loop cost one instruction
 * more per byte (callgrind). */
static __attribute__((noinline)) size_t utf8_check(evs__xml_rewrite *rw, const unsigned char *p,
                                                   size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = p[i];
    if (rw->u_need) {
      if (c < rw->u_lo || c > rw->u_hi) return i;
      rw->u_cp = rw->u_cp << 6 | (c & 0x3Fu);
      rw->u_lo = 0x80, rw->u_hi = 0xBF;
      if (--rw->u_need == 0 && (rw->u_cp == 0xFFFE || rw->u_cp == 0xFFFF)) return i;
      continue;
    }
    if (c >= 0x20 && c < 0x80) continue;
    if (c < 0x20) {
      if (c == '\t' || c == '\n' || c == '\r') continue;
      return i;
    }
    if (c >= 0xC2 && c <= 0xDF) rw->u_need = 1, rw->u_cp = c & 0x1Fu;
    else if (c >= 0xE0 && c <= 0xEF) rw->u_need = 2, rw->u_cp = c & 0xFu;
    else if (c >= 0xF0 && c <= 0xF4) rw->u_need = 3, rw->u_cp = c & 0x7u;
    else return i;
    /* The second byte's range excludes overlongs, surrogates and code points past U+10FFFF. */
    rw->u_lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    rw->u_hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
  }
  return n;
}

/* Not inlined into the feed: the machine's code then stays laid out as it was (inlined, the
 * 25 MB body cost 0.7% more instructions, callgrind). */
static __attribute__((noinline)) int run(evs__rw_base *b, const char *buf, const char *e,
                                         const char **ret_p) {
  evs__xml_rewrite *rw = (evs__xml_rewrite *)b;
  const unsigned char *p = (const unsigned char *)buf;
  size_t len = (size_t)(e - buf), ok;
  int r;
  /* The bytes before an invalid one are parsed first, so that the error reported is the first
   * one in the body however it was split. */
  ok = utf8_check(rw, p, len);
  rw->buf = buf;
  r = parse(rw, p, p + ok, &p);
  *ret_p = (const char *)p;
  if (r < 0 || ok == len) return r;
  *ret_p = buf + ok;
  return EVS__RW_E_SYNTAX;
}

static int finish(evs__rw_base *b) {
  evs__xml_rewrite *rw = (evs__xml_rewrite *)b;
  return rw->ls != L_TEXT || rw->depth || !rw->root_seen || rw->u_need ? EVS__RW_E_SYNTAX : 0;
}

static void clear(evs__rw_base *b) {
  evs__xml_rewrite *rw = (evs__xml_rewrite *)b;
  free(rw->fr);
  free(rw->st);
  free(rw->t1);
  free(rw->names.p);
  evs__rw_keys_clear(&rw->keys);
}

/* The state before the first byte (new and reset). */
static void start(evs__xml_rewrite *rw) {
  rw->ls = L_BOM;
  rw->ev = -1;
}

static void reset(evs__rw_base *b) {
  evs__xml_rewrite *rw = (evs__xml_rewrite *)b;
  memset(&rw->ls, 0, sizeof *rw - offsetof(evs__xml_rewrite, ls));
  rw->names.len = 0;
  evs__rw_keys_empty(&rw->keys);
  start(rw);
}

static const evs__rw_class xml_class = {finish, clear, 16, false, reset};

int evs__xml_rewrite_new(const evs__jsonpath *paths, const struct evs__xml_rewrite_opts *opts,
                         evs__rw_emit_fn emit_fn, evs__rw_transform_fn transform, void *ud,
                         evs__xml_rewrite **ret_rw) {
  evs__xml_rewrite *rw;
  if (!emit_fn || (paths && !transform)) return -EINVAL;
  rw = evs__rw_base_new(sizeof *rw, offsetof(evs__xml_rewrite, o), sizeof rw->o, opts, &xml_class,
                        emit_fn, transform, ud);
  if (!rw) return -ENOMEM;
  evs__rw_tree_limits(&rw->o.max_depth, &rw->o.max_value, &rw->o.max_keys);
  rw->b.val_max = rw->o.max_value;
  rw->paths = paths;
  rw->nw = paths ? evs__jsonpath_nwords(paths) : 0;
  start(rw);
  if (paths) {
    rw->t1 = calloc(2 * rw->nw, sizeof *rw->t1);
    if (!rw->t1) {
      free(rw);
      return -ENOMEM;
    }
    rw->t2 = rw->t1 + rw->nw;
    evs__rw_mem_account(&rw->b.mem, 0, 2 * rw->nw * sizeof *rw->t1);
  }
  *ret_rw = rw;
  return 0;
}

EVS__RW_DEFINE_TYPED(evs__xml_rewrite, run)

/* ---- the rewriter interface (rewriter.h) ------------------------------------------------- */

static int ops_new(const evs__rewriter_select *sel, evs__rw_emit_fn emit_fn,
                   evs__rw_transform_fn transform_fn, void *ud, void **ret_impl) {
  evs__xml_rewrite *rw = NULL;
  struct evs__xml_rewrite_opts o = {sizeof o, 0, 0, 0, sel->allow_ev};
  int r = evs__xml_rewrite_new(sel->paths, &o, emit_fn, transform_fn, ud, &rw);
  if (r == 0) *ret_impl = rw;
  return r;
}

const evs__rewriter_ops evs__xml_rewriter = {
    .name = "xml",
    .parse_unselected = 0,
    .place = evs__rewriter_place_verbatim,
    .place_returned = evs__rewriter_place_verbatim,
    .new = ops_new,
    .reset = evs__rw_base_reset,
    EVS__RW_BASE_OPS(evs__xml_rewrite),
    .strerror = evs__xml_rewrite_strerror,
};
