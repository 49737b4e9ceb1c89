/*
 * multipart_rewrite: a push parser and rewriter for multipart/form-data bodies (the contract is in
 * multipart_rewrite.h). A byte-driven state machine over the RFC 2046 structure (preamble,
 * delimiter line, header block, body, ..., close delimiter, epilogue) that survives any split of
 * the input. A body ends at the delimiter D = CRLF "--" boundary. Since D holds a CR only at its
 * start (boundary characters exclude CR and LF), a mismatch after k matched bytes restarts the
 * match at 0, or at 1 when the mismatching byte is itself a CR: the partial match is always the
 * constant D[0..k), so nothing of the input is held across feeds, and the bytes of a failed
 * partial match are recovered from D itself. Header blocks are copied (bounded) to be parsed once
 * complete; they are still emitted from the caller's buffer.
 */
#include "multipart_rewrite.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "ev_detect.h"
#include "rw_base.h"

enum mstate {
  M_PREAMBLE,   /* before the first delimiter */
  M_DELIM_END,  /* just after D: "--", padding or CRLF */
  M_PAD,        /* transport padding after D */
  M_PAD_CR,     /* CR ending the delimiter line */
  M_CLOSE_DASH, /* the second '-' of the close delimiter */
  M_HEADERS,    /* a part's header block */
  M_BODY,       /* a part's body */
  M_EPILOGUE,   /* after the close delimiter: forwarded, not parsed */
};

enum hstate { H_LINE_START, H_IN_LINE, H_CR, H_END_CR };

struct evs__multipart_rewrite {
  evs__rw_base b; /* first: the rewriter is its base (rw_base.h) */
  evs__rw_names fields;
  char delim[4 + EVS__MULTIPART_BOUNDARY_MAX + 1]; /* D = CRLF "--" boundary */
  size_t dlen;
  struct evs__multipart_rewrite_opts o;
  uint64_t parts;

  enum mstate ms;
  enum hstate hs;
  size_t k; /* bytes of D matched */
  evs__rw_buf hdr;
  bool is_file, ev_on;
  struct evs__ev_detect ev;
};

const char *evs__multipart_rewrite_strerror(int err) {
  switch (err) {
  case EVS__RW_E_SYNTAX: return "malformed multipart/form-data body";
  case EVS__RW_E_TOOBIG: return "selected multipart part too large";
  case EVS__RW_E_EVDATA: return "Evervault-encrypted data in an unselected multipart text field";
  case EVS__RW_E_UNSUPPORTED:
    return "selected multipart part has Content-Length or Content-Transfer-Encoding";
  case -ENOMEM: return "out of memory";
  default: return "error";
  }
}

/* Appends to the header block or the value: from 256 bytes, doubling, never past max + 1 (the
 * value's policy in multipart_class). Out of line, as body_bytes() and header_byte() run on every
 * piece of a body: inlined, the append made them heavier (callgrind, +10% on a 25 MB body). */
static __attribute__((noinline)) int append(evs__multipart_rewrite *rw, evs__rw_buf *buf,
                                            size_t max, int err, const char *s, size_t n) {
  return evs__rw_buf_append(&rw->b.mem, buf, max, err, 256, max + 1, s, n);
}

/* ---- header parsing ------------------------------------------------------------------------- */

static bool is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_ows(unsigned char c) { return c == ' ' || c == '\t'; }

static bool ieq(const char *a, size_t n, const char *lit) {
  size_t i = 0;
  for (; i < n && lit[i]; i++) {
    unsigned char x = (unsigned char)a[i], y = (unsigned char)lit[i];
    if (x >= 'A' && x <= 'Z') x = (unsigned char)(x + 32);
    if (x != y) return false;
  }
  return i == n && !lit[i];
}

struct disp {
  const char *name;
  size_t name_len;
  bool has_name, has_file;
};

/* Parses a Content-Disposition value v[0..n) (OWS already trimmed). */
static int parse_disposition(const char *v, size_t n, struct disp *d) {
  size_t i = 0, s;
  while (i < n && is_tchar((unsigned char)v[i])) i++;
  if (!ieq(v, i, "form-data")) return EVS__RW_E_SYNTAX;
  for (;;) {
    const char *pn, *pv;
    size_t pnl, pvl;
    bool quoted = false;
    while (i < n && is_ows((unsigned char)v[i])) i++;
    if (i == n) break;
    if (v[i++] != ';') return EVS__RW_E_SYNTAX;
    while (i < n && is_ows((unsigned char)v[i])) i++;
    if (i == n) break; /* a trailing ';' */
    for (s = i; i < n && is_tchar((unsigned char)v[i]); i++) {
    }
    pn = v + s;
    pnl = i - s;
    if (!pnl) return EVS__RW_E_SYNTAX;
    while (i < n && is_ows((unsigned char)v[i])) i++;
    if (i == n || v[i++] != '=') return EVS__RW_E_SYNTAX;
    while (i < n && is_ows((unsigned char)v[i])) i++;
    if (i < n && v[i] == '"') {
      bool bs = false;
      quoted = true;
      for (s = ++i; i < n; i++) {
        if (bs) bs = false;
        else if (v[i] == '\\') bs = true;
        else if (v[i] == '"') break;
      }
      if (i == n) return EVS__RW_E_SYNTAX;
      pv = v + s;
      pvl = i - s;
      i++;
    } else {
      for (s = i; i < n && is_tchar((unsigned char)v[i]); i++) {
      }
      pv = v + s;
      pvl = i - s;
      if (!pvl) return EVS__RW_E_SYNTAX;
    }
    if (ieq(pn, pnl, "name")) {
      if (d->has_name || (quoted && memchr(pv, '\\', pvl))) return EVS__RW_E_SYNTAX;
      d->has_name = true;
      d->name = pv;
      d->name_len = pvl;
    } else if (ieq(pn, pnl, "name*")) {
      return EVS__RW_E_SYNTAX; /* RFC 7578 4.2: not for names; parsers would prefer it */
    } else if (ieq(pn, pnl, "filename") || ieq(pn, pnl, "filename*")) {
      d->has_file = true;
    }
  }
  return d->has_name ? 0 : EVS__RW_E_SYNTAX;
}

/* Parses the complete header block hdr.p[0..hdr.len) (lines ending CRLF, the last one empty; the
 * line syntax was checked byte by byte) and decides what to do with the part's body. */
static int headers_done(evs__multipart_rewrite *rw, const char *body_start) {
  struct disp d = {0};
  bool has_disp = false, has_len = false, has_cte = false, cte_decodes = false, sel = false;
  const char *h = rw->hdr.p, *end = rw->hdr.p + rw->hdr.len - 2;
  int r;
  while (h < end) {
    const char *eol = memchr(h, '\r', (size_t)(end - h)), *c = h, *v, *ve;
    while (c < eol && is_tchar((unsigned char)*c)) c++;
    if (c == h || c == eol || *c != ':') return EVS__RW_E_SYNTAX;
    for (v = c + 1; v < eol && is_ows((unsigned char)*v); v++) {
    }
    for (ve = eol; ve > v && is_ows((unsigned char)ve[-1]); ve--) {
    }
    if (ieq(h, (size_t)(c - h), "content-disposition")) {
      if (has_disp) return EVS__RW_E_SYNTAX;
      has_disp = true;
      if ((r = parse_disposition(v, (size_t)(ve - v), &d)) < 0) return r;
    } else if (ieq(h, (size_t)(c - h), "content-length")) {
      has_len = true;
    } else if (ieq(h, (size_t)(c - h), "content-transfer-encoding")) {
      has_cte = true;
      /* Anything but the identity codings is a body the destination may decode (base64,
       * quoted-printable): what it holds could not be checked here. */
      size_t vl = (size_t)(ve - v);
      cte_decodes = !(ieq(v, vl, "7bit") || ieq(v, vl, "8bit") || ieq(v, vl, "binary"));
    }
    h = eol + 2;
  }
  if (!has_disp) return EVS__RW_E_SYNTAX;
  if (cte_decodes) return EVS__RW_E_UNSUPPORTED;
  rw->parts++;
  sel = evs__rw_names_has(&rw->fields, d.name, d.name_len);
  rw->is_file = d.has_file;
  rw->ev_on = false;
  if (sel) {
    if (has_len || has_cte) return EVS__RW_E_UNSUPPORTED;
    return evs__rw_capture_begin(&rw->b, body_start);
  }
  if (!d.has_file) {
    rw->ev_on = true;
    evs__ev_detect_reset(&rw->ev);
  }
  return 0;
}

/* One byte of a header block: the line syntax, and the copy kept for headers_done(). */
static int header_byte(evs__multipart_rewrite *rw, const char *p, bool *ret_done) {
  unsigned char c = (unsigned char)*p;
  int r;
  *ret_done = false;
  if ((r = append(rw, &rw->hdr, rw->o.max_header, EVS__RW_E_SYNTAX, p, 1)) < 0)
    return r;
  switch (rw->hs) {
  case H_LINE_START:
    if (c == '\r') {
      rw->hs = H_END_CR;
      return 0;
    }
    if (is_ows(c)) return EVS__RW_E_SYNTAX; /* obsolete line folding */
    /* fall through */
  case H_IN_LINE:
    if (c == '\r') rw->hs = H_CR;
    else if ((c < 0x20 && c != '\t') || c == 0x7f) return EVS__RW_E_SYNTAX;
    else rw->hs = H_IN_LINE;
    return 0;
  case H_CR:
    if (c != '\n') return EVS__RW_E_SYNTAX;
    rw->hs = H_LINE_START;
    return 0;
  case H_END_CR:
    if (c != '\n') return EVS__RW_E_SYNTAX;
    *ret_done = true;
    return 0;
  }
  return 0;
}

/* ---- bodies --------------------------------------------------------------------------------- */

/* Body bytes of the current part (never called for the preamble). */
static int body_bytes(evs__multipart_rewrite *rw, const char *s, size_t n) {
  if (!n) return 0;
  if (rw->b.capturing) return append(rw, &rw->b.val, rw->o.max_value, EVS__RW_E_TOOBIG, s, n);
  if (rw->ev_on && rw->ev.st >= 0) evs__ev_detect_feed(&rw->ev, s, n);
  return 0;
}

/* The part's body ended at a delimiter whose last byte is just before q. */
static int part_end(evs__multipart_rewrite *rw, const char *q) {
  int r = 0;
  if (rw->b.capturing) {
    r = evs__rw_capture_end(&rw->b, rw->is_file ? EVS__RW_FILE : EVS__RW_STRING, q, NULL);
    /* The delimiter was not emitted while the body was held; its bytes are D's. */
    if (r == 0) r = evs__rw_emit(&rw->b, rw->delim, rw->dlen);
  } else if (rw->ev_on && !rw->o.allow_ev && evs__ev_detect_done(&rw->ev)) {
    r = EVS__RW_E_EVDATA;
  }
  rw->ev_on = false;
  return r;
}

/* Scans for D from *pp in the preamble or a body; returns with *ret_found when D is complete. */
static int scan(evs__multipart_rewrite *rw, const char **pp, const char *e, bool *ret_found) {
  const char *p = *pp;
  bool body = rw->ms == M_BODY;
  int r = 0;
  *ret_found = false;
  while (p < e) {
    if (rw->k == 0) {
      const char *q = memchr(p, '\r', (size_t)(e - p));
      if (!q) q = e;
      if (body && (r = body_bytes(rw, p, (size_t)(q - p))) < 0) break;
      p = q;
      if (p == e) break;
      rw->k = 1;
      p++;
    } else if (*p == rw->delim[rw->k]) {
      p++;
      if (++rw->k == rw->dlen) {
        rw->k = 0;
        *ret_found = true;
        if (body) r = part_end(rw, p);
        break;
      }
    } else {
      /* The partial match was body bytes after all; the mismatching byte is looked at again. */
      if (body && (r = body_bytes(rw, rw->delim, rw->k)) < 0) break;
      rw->k = 0;
    }
  }
  *pp = p;
  return r;
}

static int run(evs__rw_base *b, const char *p, const char *e, const char **ret_p) {
  evs__multipart_rewrite *rw = (evs__multipart_rewrite *)b;
  int r = 0;
  while (p < e && r == 0) {
    unsigned char c = (unsigned char)*p;
    switch (rw->ms) {
    case M_PREAMBLE:
    case M_BODY: {
      bool found;
      r = scan(rw, &p, e, &found);
      if (r == 0 && found) rw->ms = M_DELIM_END;
      continue;
    }
    case M_DELIM_END:
      if (c == '-') rw->ms = M_CLOSE_DASH;
      else if (is_ows(c)) rw->ms = M_PAD;
      else if (c == '\r') rw->ms = M_PAD_CR;
      else r = EVS__RW_E_SYNTAX;
      break;
    case M_PAD:
      if (c == '\r') rw->ms = M_PAD_CR;
      else if (!is_ows(c)) r = EVS__RW_E_SYNTAX;
      break;
    case M_PAD_CR:
      if (c != '\n') {
        r = EVS__RW_E_SYNTAX;
        break;
      }
      rw->ms = M_HEADERS;
      rw->hs = H_LINE_START;
      rw->hdr.len = 0;
      break;
    case M_CLOSE_DASH:
      if (c != '-') r = EVS__RW_E_SYNTAX;
      else rw->ms = M_EPILOGUE;
      break;
    case M_HEADERS: {
      bool done;
      if ((r = header_byte(rw, p, &done)) < 0) break;
      if (done) {
        if ((r = headers_done(rw, p + 1)) < 0) break;
        rw->ms = M_BODY;
        rw->k = 0;
      }
      break;
    }
    case M_EPILOGUE:
      p = e;
      continue;
    }
    if (r == 0) p++;
  }
  *ret_p = p;
  return r;
}

static int finish(evs__rw_base *b) {
  return ((evs__multipart_rewrite *)b)->ms != M_EPILOGUE ? EVS__RW_E_SYNTAX : 0;
}

static void clear(evs__rw_base *b) {
  evs__multipart_rewrite *rw = (evs__multipart_rewrite *)b;
  evs__rw_names_clear(&rw->fields);
  free(rw->hdr.p);
}

/* The value grows from 256 bytes, doubling, but never past max_value + 1: a 25 MiB cap does not
 * allocate 32 MiB. */
static const evs__rw_class multipart_class = {finish, clear, 256, true, NULL};

/* ---- boundary and set-up -------------------------------------------------------------------- */

static bool is_bchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("'()+_,-./:=? ", c));
}

static bool boundary_ok(const char *b, size_t n) {
  if (n < 1 || n > EVS__MULTIPART_BOUNDARY_MAX || b[n - 1] == ' ') return false;
  for (size_t i = 0; i < n; i++)
    if (!is_bchar((unsigned char)b[i])) return false;
  return true;
}

int evs__multipart_boundary(const char *ct, char *ret, size_t cap) {
  char b[EVS__MULTIPART_BOUNDARY_MAX + 1];
  size_t bl = 0, i = 0, s;
  bool found = false;
  if (!ct) return EVS__RW_E_SYNTAX;
  while (is_ows((unsigned char)ct[i])) i++;
  for (s = i; is_tchar((unsigned char)ct[i]); i++) {
  }
  if (i == s || ct[i++] != '/') return EVS__RW_E_SYNTAX;
  for (s = i; is_tchar((unsigned char)ct[i]); i++) {
  }
  if (i == s) return EVS__RW_E_SYNTAX;
  for (;;) {
    size_t pn, pnl;
    bool is_b;
    while (is_ows((unsigned char)ct[i])) i++;
    if (!ct[i]) break;
    if (ct[i++] != ';') return EVS__RW_E_SYNTAX;
    while (is_ows((unsigned char)ct[i])) i++;
    if (!ct[i]) break;
    for (pn = i; is_tchar((unsigned char)ct[i]); i++) {
    }
    pnl = i - pn;
    if (!pnl || ct[i++] != '=') return EVS__RW_E_SYNTAX;
    is_b = ieq(ct + pn, pnl, "boundary");
    if (is_b) {
      if (found) return EVS__RW_E_SYNTAX; /* which one would the destination use? */
      found = true;
    }
    if (ct[i] == '"') {
      for (i++; ct[i] != '"'; i++) {
        char c = ct[i];
        if (!c) return EVS__RW_E_SYNTAX;
        if (c == '\\') {
          if (!ct[++i]) return EVS__RW_E_SYNTAX;
          c = ct[i];
        }
        if (is_b) {
          if (bl == EVS__MULTIPART_BOUNDARY_MAX) return EVS__RW_E_SYNTAX;
          b[bl++] = c;
        }
      }
      i++;
    } else {
      for (s = i; is_tchar((unsigned char)ct[i]); i++) {
        if (is_b) {
          if (bl == EVS__MULTIPART_BOUNDARY_MAX) return EVS__RW_E_SYNTAX;
          b[bl++] = ct[i];
        }
      }
      if (i == s) return EVS__RW_E_SYNTAX;
    }
  }
  if (!found || !boundary_ok(b, bl)) return EVS__RW_E_SYNTAX;
  if (cap < bl + 1) return -ENOSPC;
  memcpy(ret, b, bl);
  ret[bl] = 0;
  return (int)bl;
}

int evs__multipart_rewrite_new(const char *boundary, const char *const *fields, size_t nfields,
                               const struct evs__multipart_rewrite_opts *opts,
                               evs__rw_emit_fn emit_fn, evs__rw_transform_fn transform,
                               void *ud, evs__multipart_rewrite **ret_rw) {
  evs__multipart_rewrite *rw;
  size_t bl;
  if (!emit_fn || !boundary || (nfields && (!fields || !transform))) return -EINVAL;
  bl = strnlen(boundary, EVS__MULTIPART_BOUNDARY_MAX + 1);
  if (!boundary_ok(boundary, bl)) return -EINVAL;
  for (size_t i = 0; i < nfields; i++)
    if (!fields[i]) return -EINVAL;
  rw = evs__rw_base_new(sizeof *rw, offsetof(evs__multipart_rewrite, o), sizeof rw->o, opts,
                        &multipart_class, emit_fn, transform, ud);
  if (!rw) return -ENOMEM;
  if (!rw->o.max_value) rw->o.max_value = 25u * 1024 * 1024;
  if (!rw->o.max_header) rw->o.max_header = 16 * 1024;
  rw->b.val_max = rw->o.max_value;
  memcpy(rw->delim, "\r\n--", 4);
  memcpy(rw->delim + 4, boundary, bl);
  rw->dlen = 4 + bl;
  /* The first delimiter may open the body without a CRLF before it: start as if one was seen. */
  rw->ms = M_PREAMBLE;
  rw->k = 2;
  if (nfields && evs__rw_names_copy(&rw->fields, &rw->b.mem, fields, nfields, false, NULL, NULL)) {
    free(rw);
    return -ENOMEM;
  }
  *ret_rw = rw;
  return 0;
}

EVS__RW_DEFINE_TYPED(evs__multipart_rewrite, run)

uint64_t evs__multipart_rewrite_parts(const evs__multipart_rewrite *rw) { return rw->parts; }

/* ---- the rewriter interface (rewriter.h) ------------------------------------------------- */

static int ops_new(const evs__rewriter_select *sel, evs__rw_emit_fn emit_fn,
                   evs__rw_transform_fn transform_fn, void *ud, void **ret_impl) {
  /* The boundary is read from the Content-Type here, so that a caller needs nothing of the
   * format but its table. */
  char ct[1024], boundary[EVS__MULTIPART_BOUNDARY_MAX + 1];
  size_t n = sel->content_type_len < sizeof ct - 1 ? sel->content_type_len : sizeof ct - 1;
  if (!sel->content_type) return EVS__RW_E_BOUNDARY;
  memcpy(ct, sel->content_type, n);
  ct[n] = '\0';
  if (evs__multipart_boundary(ct, boundary, sizeof boundary) < 0) return EVS__RW_E_BOUNDARY;
  evs__multipart_rewrite *rw = NULL;
  struct evs__multipart_rewrite_opts o = {sizeof o, 0, 0, sel->allow_ev};
  int r = evs__multipart_rewrite_new(boundary, sel->names, sel->nnames, &o, emit_fn, transform_fn,
                                     ud, &rw);
  if (r == 0) *ret_impl = rw;
  return r;
}

const evs__rewriter_ops evs__multipart_rewriter = {
    .name = "multipart",
    .parse_unselected = 1,
    .place = evs__rewriter_place_verbatim,
    .place_returned = evs__rewriter_place_verbatim,
    .new = ops_new,
    EVS__RW_BASE_OPS(evs__multipart_rewrite),
    .strerror = evs__multipart_rewrite_strerror,
};
