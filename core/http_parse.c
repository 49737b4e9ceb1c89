/*
 * Strict HTTP/1.x parsing (RFC 9112, RFC 9110): the head scanner, the request and response head
 * parsers, the field helpers and the incremental chunked-body decoder declared in http_parse.h.
 *
 * Everything here reads untrusted bytes, so the rule throughout is "one reading only": any shape
 * that another HTTP implementation could frame differently (request smuggling) is rejected rather
 * than repaired. Pure functions over caller buffers; no allocation, no I/O, no logging. Character
 * classes come from one 256-entry table so the hot loops are a load and a test per byte.
 */
#include "http_parse.h"

#include <string.h>

/* Character classes (bits of cclass[]). */
enum {
  CC_TCHAR = 0x01,  /* token character (RFC 9110 §5.6.2) */
  CC_FVAL = 0x02,   /* allowed in a field value: VCHAR, obs-text, SP, HTAB */
  CC_TARGET = 0x04, /* allowed in a request-target: VCHAR except '#' ('%' checked apart) */
  CC_HEX = 0x08,    /* HEXDIG */
  CC_HOST = 0x10,   /* reg-name: unreserved and sub-delims (RFC 3986; '%' checked apart) */
  CC_QDTEXT = 0x20, /* qdtext of a quoted-string */
};

/* Generated once from the RFC ABNF; every byte >= 0x80 is obs-text (value and qdtext only). */
static const unsigned char cclass[256] = {
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x22, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x22, 0x37, 0x06, 0x23, 0x37, 0x27, 0x37, 0x37, 0x36, 0x36, 0x37, 0x37, 0x36, 0x37, 0x37, 0x26,
  0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x26, 0x36, 0x26, 0x36, 0x26, 0x26,
  0x26, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
  0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x06, 0x26, 0x27, 0x37,
  0x27, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
  0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x27, 0x26, 0x37, 0x00,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
};

#define IS(c, cls) ((cclass[(unsigned char)(c)] & (cls)) != 0)

/* Longest method token we accept; the longest registered method is 17 bytes. */
#define METHOD_MAX 32
/* Content-Length values above this are refused: peers commonly hold lengths in a signed 64-bit
 * off_t, and a value one side can represent and the other cannot is a framing disagreement. */
#define CONTENT_LENGTH_MAX UINT64_C(0x7fffffffffffffff)
#define CHUNK_DIGITS_MAX 15
#define TRAILER_DEFAULT_MAX 8192

static int is_ows(unsigned char c) {
  return c == ' ' || c == '\t';
}

static unsigned char to_lower(unsigned char c) {
  return (unsigned)(c - 'A') < 26u ? (unsigned char)(c | 0x20) : c;
}

static int hex_value(unsigned char c) {
  if ((unsigned)(c - '0') < 10u)
    return c - '0';
  c = to_lower(c);
  if ((unsigned)(c - 'a') < 6u)
    return c - 'a' + 10;
  return -1;
}

/* Case-insensitive equality of s[0..n) with a lower-case literal of length lower_len. */
static int eq_lower(const unsigned char *s, size_t n, const char *lower, size_t lower_len) {
  if (n != lower_len)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (to_lower(s[i]) != (unsigned char)lower[i])
      return 0;
  return 1;
}

#define EQ_LIT(s, n, lit) eq_lower((s), (n), lit, sizeof(lit) - 1)

int evs__http_result_status(int result) {
  switch (result) {
  case EVS_HTTP_OK:
  case EVS_HTTP_NEED_MORE:
    return 0;
  case EVS_HTTP_E_HEAD_TOO_LARGE:
  case EVS_HTTP_E_TOO_MANY_FIELDS:
    return 431;
  case EVS_HTTP_E_VERSION:
    return 505;
  case EVS_HTTP_E_TE_UNSUPPORTED:
    return 501;
  default:
    return 400;
  }
}

const char *evs__http_result_code(int result) {
  return result == EVS_HTTP_E_LENGTH ? "content-length-required" : "bad-request";
}

const char *evs__http_result_reason(int result) {
  switch (result) {
  case EVS_HTTP_OK:
    return "ok";
  case EVS_HTTP_NEED_MORE:
    return "incomplete head";
  case EVS_HTTP_E_BAD:
    return "malformed or ambiguous message";
  case EVS_HTTP_E_HEAD_TOO_LARGE:
    return "head too large";
  case EVS_HTTP_E_TOO_MANY_FIELDS:
    return "too many header fields";
  case EVS_HTTP_E_VERSION:
    return "unsupported http version";
  case EVS_HTTP_E_TE_UNSUPPORTED:
    return "unsupported transfer coding";
  case EVS_HTTP_E_METHOD:
    return "invalid method";
  case EVS_HTTP_E_TARGET:
    return "invalid request-target";
  case EVS_HTTP_E_LENGTH:
    return "content-length is not a number";
  default:
    return "unknown error";
  }
}

int evs__http_is_tchar(unsigned char c) {
  return IS(c, CC_TCHAR);
}

/* A field-value as RFC 9110 §5.5 defines it: no CTL but HTAB, no leading or trailing OWS. */
int evs__http_is_valid_field_value(const char *v, size_t len) {
  const unsigned char *p = (const unsigned char *)v;
  if (len == 0)
    return 1;
  if (is_ows(p[0]) || is_ows(p[len - 1]))
    return 0;
  for (size_t i = 0; i < len; i++)
    if (!IS(p[i], CC_FVAL))
      return 0;
  return 1;
}

/* ---- URI pieces (RFC 3986) ------------------------------------------------------------------ */

/* dec-octet "." dec-octet "." dec-octet "." dec-octet, without leading zeros. */
static int valid_ipv4(const unsigned char *s, size_t n) {
  size_t i = 0;
  for (int part = 0; part < 4; part++) {
    if (part > 0) {
      if (i >= n || s[i] != '.')
        return 0;
      i++;
    }
    size_t start = i;
    unsigned v = 0;
    while (i < n && (unsigned)(s[i] - '0') < 10u && i - start < 3)
      v = v * 10 + (unsigned)(s[i++] - '0');
    size_t nd = i - start;
    if (nd == 0 || v > 255 || (nd > 1 && s[start] == '0'))
      return 0;
  }
  return i == n;
}

/* IPv6address (RFC 3986 §3.2.2): eight h16 groups, or fewer around one "::", the last two
 * groups optionally written as an IPv4 address. No zone identifier. */
static int valid_ipv6(const unsigned char *s, size_t n) {
  size_t i = 0;
  int groups = 0, dcolon = 0;
  if (n < 2)
    return 0;
  if (s[0] == ':') {
    if (s[1] != ':')
      return 0;
    dcolon = 1;
    i = 2;
    if (i == n)
      return 1;
  }
  for (;;) {
    size_t start = i;
    while (i < n && IS(s[i], CC_HEX) && i - start < 5)
      i++;
    if (i < n && s[i] == '.') {
      if (!valid_ipv4(s + start, n - start))
        return 0;
      groups += 2;
      break;
    }
    if (i == start || i - start > 4)
      return 0;
    groups++;
    if (i == n)
      break;
    if (s[i] != ':')
      return 0;
    i++;
    if (i < n && s[i] == ':') {
      if (dcolon)
        return 0;
      dcolon = 1;
      i++;
      if (i == n)
        break;
    } else if (i == n) {
      return 0;
    }
  }
  return dcolon ? groups <= 7 : groups == 8;
}

/* port = 1*5DIGIT, at most 65535 (an empty port is legal in RFC 3986 but useless here). */
static int valid_port(const unsigned char *s, size_t n) {
  unsigned v = 0;
  if (n == 0 || n > 5)
    return 0;
  for (size_t i = 0; i < n; i++) {
    if ((unsigned)(s[i] - '0') >= 10u)
      return 0;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  return v <= 65535;
}

/* uri-host [ ":" port ]; need_port demands the port (authority-form of CONNECT). */
static int valid_authority(const unsigned char *s, size_t n, int need_port) {
  size_t i = 0;
  if (n == 0)
    return 0;
  if (s[0] == '[') {
    const unsigned char *close = memchr(s, ']', n);
    if (close == NULL || !valid_ipv6(s + 1, (size_t)(close - s) - 1))
      return 0;
    i = (size_t)(close - s) + 1;
  } else {
    /* reg-name; an IPv4 address is a reg-name by syntax too. */
    while (i < n && s[i] != ':') {
      if (s[i] == '%') {
        if (n - i < 3 || !IS(s[i + 1], CC_HEX) || !IS(s[i + 2], CC_HEX))
          return 0;
        i += 3;
      } else if (IS(s[i], CC_HOST)) {
        i++;
      } else {
        return 0;
      }
    }
    if (i == 0)
      return 0;
  }
  if (i == n)
    return !need_port;
  if (s[i] != ':')
    return 0;
  return valid_port(s + i + 1, n - i - 1);
}

int evs__http_is_valid_host(const char *v, size_t len) {
  return valid_authority((const unsigned char *)v, len, 0);
}

/* path and query bytes of origin- and absolute-form: VCHAR but '#', and '%' must start %HH. */
static int valid_path_query(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!IS(s[i], CC_TARGET))
      return 0;
    if (s[i] == '%') {
      if (n - i < 3 || !IS(s[i + 1], CC_HEX) || !IS(s[i + 2], CC_HEX))
        return 0;
      i += 2;
    }
  }
  return 1;
}

/* The four request-target forms of RFC 9112 §3.2, each only with the methods it belongs to. */
static int valid_target(const unsigned char *t, size_t n, const unsigned char *m, size_t mlen) {
  int is_connect = mlen == 7 && memcmp(m, "CONNECT", 7) == 0;
  int is_options = mlen == 7 && memcmp(m, "OPTIONS", 7) == 0;
  if (is_connect)
    return valid_authority(t, n, 1);
  if (t[0] == '/')
    return valid_path_query(t, n);
  if (n == 1 && t[0] == '*')
    return is_options;
  size_t skip;
  if (n >= 7 && EQ_LIT(t, 7, "http://"))
    skip = 7;
  else if (n >= 8 && EQ_LIT(t, 8, "https://"))
    skip = 8;
  else
    return 0;
  /* Authority runs to the path or query. Userinfo ('@') is refused (RFC 9110 §4.2.4), which
   * valid_authority() does since '@' is not a reg-name character. */
  size_t a = skip;
  while (a < n && t[a] != '/' && t[a] != '?')
    a++;
  if (!valid_authority(t + skip, a - skip, 0))
    return 0;
  return valid_path_query(t + a, n - a);
}

/* ---- head scanner --------------------------------------------------------------------------- */

/* crlf_run: 0 inside a line, 1 after CR, 2 after CRLF, 3 after CRLF CR, 4 head complete. */
int evs__http_scan_head(evs__http_scan *state, const char *buf, size_t len, size_t max_head_bytes,
                        size_t *ret_head_len) {
  const unsigned char *p = (const unsigned char *)buf;
  size_t pos = state->pos;
  int run = state->crlf_run;

  if (run == 4) {
    *ret_head_len = pos;
    return EVS_HTTP_OK;
  }
  if (pos > len || run < 0 || run > 3)
    return EVS_HTTP_E_BAD;
  size_t lim = len < max_head_bytes ? len : max_head_bytes;
  while (pos < lim) {
    /* Bytes above CR are neither CR nor LF: the common case is this tight loop. */
    if (run == 0) {
      while (pos < lim && p[pos] > '\r')
        pos++;
      if (pos == lim)
        break;
    }
    unsigned char c = p[pos];
    if (run == 1 || run == 3) {
      if (c != '\n')
        return EVS_HTTP_E_BAD; /* bare CR */
      run++;
      if (run == 4) {
        state->pos = pos + 1;
        state->crlf_run = 4;
        *ret_head_len = pos + 1;
        return EVS_HTTP_OK;
      }
    } else if (c == '\r') {
      if (pos == 0)
        return EVS_HTTP_E_BAD; /* empty line before the start line */
      run++;
    } else if (c == '\n') {
      return EVS_HTTP_E_BAD; /* bare LF */
    } else {
      run = 0;
    }
    pos++;
  }
  state->pos = pos;
  state->crlf_run = run;
  if (len > max_head_bytes)
    return EVS_HTTP_E_HEAD_TOO_LARGE;
  return EVS_HTTP_NEED_MORE;
}

/* ---- head parser ---------------------------------------------------------------------------- */

/* What the field pass learns about framing, checked once all fields are read. */
struct framing {
  unsigned cl_count, te_count, host_count;
  uint32_t host_index;
  uint64_t content_length;
  unsigned te_chunked;  /* "chunked" elements over all Transfer-Encoding fields */
  unsigned te_other;    /* any other coding, or chunked with parameters */
  int te_syntax;        /* a Transfer-Encoding value that is not a valid list */
  int conn_upgrade, has_upgrade, expect_continue, expect_other, conn_close, conn_keepalive;
};

#define FAIL(code, why) \
  do {                  \
    *detail = (why);    \
    return (code);      \
  } while (0)

/* 1*DIGIT, nothing else: no sign, no inner space, no list ("1,1"). */
static int parse_content_length(const unsigned char *v, size_t n, uint64_t *out) {
  uint64_t x = 0;
  if (n == 0)
    return -1;
  for (size_t i = 0; i < n; i++) {
    unsigned d = (unsigned)(v[i] - '0');
    if (d >= 10u)
      return -1;
    if (x > (CONTENT_LENGTH_MAX - d) / 10)
      return -2;
    x = x * 10 + d;
  }
  *out = x;
  return 0;
}

/* quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE; returns bytes used or 0. */
static size_t quoted_string_len(const unsigned char *v, size_t n) {
  if (n == 0 || v[0] != '"')
    return 0;
  for (size_t i = 1; i < n; i++) {
    if (v[i] == '"')
      return i + 1;
    if (v[i] == '\\') {
      if (i + 1 >= n || !IS(v[i + 1], CC_FVAL))
        return 0;
      i++;
    } else if (!IS(v[i], CC_QDTEXT)) {
      return 0;
    }
  }
  return 0;
}

/*
 * One Transfer-Encoding value: 1#transfer-coding, transfer-coding = token *( OWS ";" OWS
 * token BWS "=" BWS ( token / quoted-string ) ). Empty list elements are refused although RFC
 * 9110 §5.6.1 asks recipients to skip them: "chunked," is exactly the kind of value another
 * parser may not recognise as chunked, and the only value we accept has no commas anyway.
 */
static void scan_transfer_encoding(const unsigned char *v, size_t n, struct framing *fr) {
  size_t i = 0;
  if (n == 0) {
    fr->te_syntax = 1;
    return;
  }
  for (;;) {
    while (i < n && is_ows(v[i]))
      i++;
    size_t t = i;
    while (i < n && IS(v[i], CC_TCHAR))
      i++;
    if (i == t) {
      fr->te_syntax = 1;
      return;
    }
    int chunked = EQ_LIT(v + t, i - t, "chunked");
    int params = 0;
    for (;;) {
      size_t j = i;
      while (j < n && is_ows(v[j]))
        j++;
      if (j >= n || v[j] != ';') {
        i = j;
        break;
      }
      j++;
      while (j < n && is_ows(v[j]))
        j++;
      size_t pn = j;
      while (j < n && IS(v[j], CC_TCHAR))
        j++;
      if (j == pn) {
        fr->te_syntax = 1;
        return;
      }
      while (j < n && is_ows(v[j]))
        j++;
      if (j >= n || v[j] != '=') {
        fr->te_syntax = 1;
        return;
      }
      j++;
      while (j < n && is_ows(v[j]))
        j++;
      size_t pv = j;
      while (j < n && IS(v[j], CC_TCHAR))
        j++;
      if (j == pv) {
        size_t q = quoted_string_len(v + j, n - j);
        if (q == 0) {
          fr->te_syntax = 1;
          return;
        }
        j += q;
      }
      params++;
      i = j;
    }
    if (chunked && params == 0)
      fr->te_chunked++;
    else if (chunked)
      fr->te_chunked++, fr->te_other++;
    else
      fr->te_other++;
    if (i == n)
      return;
    if (v[i] != ',') {
      fr->te_syntax = 1;
      return;
    }
    i++;
  }
}

/*
 * Next element of a comma-separated list starting at *pos: sets [*s, *e) with OWS trimmed
 * (possibly empty) and moves *pos past the comma. Returns 0 when the list is exhausted.
 */
static int next_element(const unsigned char *v, size_t n, size_t *pos, size_t *s, size_t *e) {
  size_t i = *pos;
  if (i >= n)
    return 0;
  size_t a = i;
  while (i < n && v[i] != ',')
    i++;
  size_t b = i;
  while (a < b && is_ows(v[a]))
    a++;
  while (b > a && is_ows(v[b - 1]))
    b--;
  *s = a;
  *e = b;
  *pos = i + 1;
  return 1;
}

/* The Connection options we act on; other elements name hop-by-hop fields (see below). */
static void scan_connection(const unsigned char *v, size_t n, struct framing *fr) {
  size_t pos = 0, s, e;
  while (next_element(v, n, &pos, &s, &e)) {
    if (EQ_LIT(v + s, e - s, "close"))
      fr->conn_close = 1;
    else if (EQ_LIT(v + s, e - s, "keep-alive"))
      fr->conn_keepalive = 1;
    else if (EQ_LIT(v + s, e - s, "upgrade"))
      fr->conn_upgrade = 1;
  }
}

/*
 * "Content_Length" or "transfer_encoding" are valid tokens, but CGI-style upstreams fold '_' and
 * '-' into one name (HTTP_CONTENT_LENGTH), so forwarding one could change the upstream's framing.
 * Such names are refused outright (nginx drops them for the same reason). lower_name has the
 * same length as the name here.
 */
static int is_underscore_twin(const unsigned char *name, size_t n, const char *lower_name) {
  int underscore = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = to_lower(name[i]);
    if (c == '_' && lower_name[i] == '-')
      underscore = 1;
    else if (c != (unsigned char)lower_name[i])
      return 0;
  }
  return underscore;
}

/*
 * Field lines from pos up to and including the empty line that ends the head. Each line is
 * field-name ":" OWS field-value OWS CRLF; a line starting with whitespace is obs-fold (or
 * whitespace after the start line, RFC 9112 §2.2) and is refused, as is whitespace before the
 * colon (RFC 9112 §5.1).
 */
static int parse_fields(const unsigned char *p, size_t len, size_t pos, evs__http_head *h,
                        int is_request, struct framing *fr, const char **detail) {
  for (;;) {
    if (pos >= len)
      FAIL(EVS_HTTP_E_BAD, "head not terminated");
    if (p[pos] == '\r') {
      if (pos + 1 < len && p[pos + 1] == '\n') {
        h->head_len = pos + 2;
        return EVS_HTTP_OK;
      }
      FAIL(EVS_HTTP_E_BAD, "bare CR");
    }
    if (is_ows(p[pos]))
      FAIL(EVS_HTTP_E_BAD, "obs-fold or whitespace before field line");

    size_t name_off = pos;
    while (pos < len && IS(p[pos], CC_TCHAR))
      pos++;
    if (pos >= len)
      FAIL(EVS_HTTP_E_BAD, "head not terminated");
    if (p[pos] != ':') {
      if (is_ows(p[pos]))
        FAIL(EVS_HTTP_E_BAD, "whitespace before colon");
      if (p[pos] == '\n')
        FAIL(EVS_HTTP_E_BAD, "bare LF");
      if (p[pos] == '\r')
        FAIL(EVS_HTTP_E_BAD, "field line without colon");
      FAIL(EVS_HTTP_E_BAD, "invalid field name");
    }
    if (pos == name_off)
      FAIL(EVS_HTTP_E_BAD, "empty field name");
    size_t name_len = pos - name_off;
    pos++;
    while (pos < len && is_ows(p[pos]))
      pos++;
    size_t value_off = pos, value_end = pos;
    while (pos < len && IS(p[pos], CC_FVAL)) {
      if (!is_ows(p[pos]))
        value_end = pos + 1;
      pos++;
    }
    if (pos >= len)
      FAIL(EVS_HTTP_E_BAD, "head not terminated");
    if (p[pos] != '\r')
      FAIL(EVS_HTTP_E_BAD, p[pos] == '\n' ? "bare LF" : "control character in field value");
    if (pos + 1 >= len || p[pos + 1] != '\n')
      FAIL(EVS_HTTP_E_BAD, "bare CR");
    pos += 2;

    if (h->nfields >= h->max_fields)
      FAIL(EVS_HTTP_E_TOO_MANY_FIELDS, "too many header fields");
    size_t idx = h->nfields++;
    evs__http_field *f = &h->fields[idx];
    f->name_off = (uint32_t)name_off;
    f->name_len = (uint32_t)name_len;
    f->value_off = (uint32_t)value_off;
    f->value_len = (uint32_t)(value_end - value_off);

    const unsigned char *name = p + name_off, *val = p + value_off;
    size_t vlen = value_end - value_off;
    switch (name_len) {
    case 4:
      if (EQ_LIT(name, name_len, "host")) {
        fr->host_count++;
        fr->host_index = (uint32_t)idx;
      }
      break;
    case 6:
      if (is_request && EQ_LIT(name, name_len, "expect")) {
        if (EQ_LIT(val, vlen, "100-continue"))
          fr->expect_continue = 1;
        else
          fr->expect_other = 1;
      }
      break;
    case 7:
      if (EQ_LIT(name, name_len, "upgrade"))
        fr->has_upgrade = 1;
      break;
    case 10:
      if (EQ_LIT(name, name_len, "connection"))
        scan_connection(val, vlen, fr);
      break;
    case 14:
      if (is_underscore_twin(name, name_len, "content-length"))
        FAIL(EVS_HTTP_E_BAD, "framing field name with underscore");
      if (EQ_LIT(name, name_len, "content-length")) {
        if (++fr->cl_count > 1)
          FAIL(EVS_HTTP_E_BAD, "duplicate content-length");
        int r = parse_content_length(val, vlen, &fr->content_length);
        if (r == -1)
          FAIL(EVS_HTTP_E_LENGTH, "invalid content-length");
        if (r == -2)
          FAIL(EVS_HTTP_E_BAD, "content-length too large");
      }
      break;
    case 17:
      if (is_underscore_twin(name, name_len, "transfer-encoding"))
        FAIL(EVS_HTTP_E_BAD, "framing field name with underscore");
      if (EQ_LIT(name, name_len, "transfer-encoding")) {
        fr->te_count++;
        scan_transfer_encoding(val, vlen, fr);
      }
      break;
    default:
      break;
    }
  }
}

/* Framing rules that need every field (RFC 9112 §6). */
static int derive_framing(const unsigned char *buf, const evs__http_head *hc, int is_request,
                          const struct framing *fr, uint32_t *flags, const char **detail) {
  if (fr->te_count > 0) {
    if (fr->cl_count > 0)
      FAIL(EVS_HTTP_E_BAD, "both content-length and transfer-encoding");
    if (is_request && hc->version_minor == 0)
      FAIL(EVS_HTTP_E_BAD, "transfer-encoding in an http/1.0 request");
    if (fr->te_syntax)
      FAIL(EVS_HTTP_E_BAD, "invalid transfer-encoding");
    if (fr->te_chunked > 1)
      FAIL(EVS_HTTP_E_BAD, "chunked applied more than once");
    if (fr->te_other > 0 || fr->te_chunked == 0)
      FAIL(EVS_HTTP_E_TE_UNSUPPORTED, "unsupported transfer coding");
    *flags |= EVS_HTTP_F_CHUNKED;
  }
  if (fr->cl_count > 0)
    *flags |= EVS_HTTP_F_CONTENT_LENGTH;
  if (fr->conn_close)
    *flags |= EVS_HTTP_F_CONN_CLOSE;
  if (fr->conn_keepalive)
    *flags |= EVS_HTTP_F_CONN_KEEPALIVE;
  if (!is_request)
    return EVS_HTTP_OK;
  /* HTTP/1.0 servers must ignore Upgrade and 100-continue (RFC 9110 §7.8, §10.1.1). */
  if (fr->conn_upgrade && fr->has_upgrade && hc->version_minor == 1)
    *flags |= EVS_HTTP_F_UPGRADE;
  if (fr->expect_continue && hc->version_minor == 1)
    *flags |= EVS_HTTP_F_EXPECT_CONTINUE;
  if (fr->expect_other)
    *flags |= EVS_HTTP_F_EXPECT_OTHER;
  if (fr->host_count > 1)
    FAIL(EVS_HTTP_E_BAD, "duplicate host");
  if (fr->host_count == 0 && hc->version_minor == 1)
    FAIL(EVS_HTTP_E_BAD, "missing host");
  if (fr->host_count == 1) {
    const evs__http_field *f = &hc->fields[fr->host_index];
    if (!evs__http_is_valid_host((const char *)buf + f->value_off, f->value_len))
      FAIL(EVS_HTTP_E_BAD, "invalid host");
    *flags |= EVS_HTTP_F_HOST;
  }
  return EVS_HTTP_OK;
}

static void head_reset(evs__http_head *h) {
  h->method_off = h->method_len = 0;
  h->target_off = h->target_len = 0;
  h->status = 0;
  h->reason_off = h->reason_len = 0;
  h->version_minor = 0;
  h->nfields = 0;
  h->flags = 0;
  h->content_length = 0;
  h->host_field = 0;
  h->head_len = 0;
}

/* "HTTP/" DIGIT "." DIGIT at p: 1 for HTTP/1.0 and HTTP/1.1 (minor in *minor), 0 for another
 * well-formed version, -1 if it is not a version at all. */
static int parse_version(const unsigned char *p, size_t avail, int *minor) {
  if (avail < 8 || memcmp(p, "HTTP/", 5) != 0 || (unsigned)(p[5] - '0') >= 10u || p[6] != '.' ||
      (unsigned)(p[7] - '0') >= 10u)
    return -1;
  if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
    return 0;
  *minor = p[7] - '0';
  return 1;
}

int evs__http_parse_request_detail(const char *buf, size_t len, evs__http_head *h,
                                   const char **detail) {
  const unsigned char *p = (const unsigned char *)buf;
  const char *why_local;
  if (detail == NULL)
    detail = &why_local;
  head_reset(h);
  if (len > UINT32_MAX)
    FAIL(EVS_HTTP_E_HEAD_TOO_LARGE, "head too large");

  /* method SP request-target SP HTTP-version CRLF, single SPs only (RFC 9112 §3). */
  size_t i = 0;
  while (i < len && IS(p[i], CC_TCHAR))
    i++;
  if (i >= len)
    FAIL(EVS_HTTP_E_BAD, "head not terminated");
  if (i == 0)
    FAIL(EVS_HTTP_E_METHOD, "invalid method");
  if (p[i] != ' ') {
    if (p[i] == '\r' || p[i] == '\n')
      FAIL(EVS_HTTP_E_BAD, "request line without target");
    FAIL(EVS_HTTP_E_METHOD, "invalid method");
  }
  if (i > METHOD_MAX)
    FAIL(EVS_HTTP_E_METHOD, "method too long");
  size_t method_len = i;

  size_t t = ++i;
  while (i < len && p[i] != ' ' && p[i] != '\r' && p[i] != '\n')
    i++;
  if (i >= len)
    FAIL(EVS_HTTP_E_BAD, "head not terminated");
  if (i == t)
    FAIL(EVS_HTTP_E_BAD, "empty request-target");
  if (p[i] != ' ')
    FAIL(EVS_HTTP_E_BAD, "request line without version");
  if (!valid_target(p + t, i - t, p, method_len))
    FAIL(EVS_HTTP_E_TARGET, "invalid request-target");
  size_t target_len = i - t;

  i++;
  int minor = 0;
  int v = parse_version(p + i, len - i, &minor);
  if (v < 0 || len - i < 10 || p[i + 8] != '\r' || p[i + 9] != '\n')
    FAIL(EVS_HTTP_E_BAD, "malformed http version");
  if (v == 0)
    FAIL(EVS_HTTP_E_VERSION, "unsupported http version");

  h->method_off = 0;
  h->method_len = (uint32_t)method_len;
  h->target_off = (uint32_t)t;
  h->target_len = (uint32_t)target_len;
  h->version_minor = minor;

  struct framing fr;
  memset(&fr, 0, sizeof(fr));
  int r = parse_fields(p, len, i + 10, h, 1, &fr, detail);
  if (r != EVS_HTTP_OK)
    return r;
  uint32_t flags = 0;
  r = derive_framing(p, h, 1, &fr, &flags, detail);
  if (r != EVS_HTTP_OK)
    return r;
  if (flags & EVS_HTTP_F_HOST)
    h->host_field = fr.host_index;
  h->flags = flags;
  h->content_length = fr.content_length;
  return EVS_HTTP_OK;
}

int evs__http_parse_request(const char *buf, size_t len, evs__http_head *h) {
  return evs__http_parse_request_detail(buf, len, h, NULL);
}

/*
 * status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF. A missing SP after the code
 * ("HTTP/1.1 204\r\n") is tolerated: servers send it, and it cannot change framing.
 */
int evs__http_parse_response_detail(const char *buf, size_t len, evs__http_head *h,
                                    const char **detail) {
  const unsigned char *p = (const unsigned char *)buf;
  const char *why_local;
  if (detail == NULL)
    detail = &why_local;
  head_reset(h);
  if (len > UINT32_MAX)
    FAIL(EVS_HTTP_E_HEAD_TOO_LARGE, "head too large");

  int minor = 0;
  int v = parse_version(p, len, &minor);
  if (v < 0 || len < 12 || p[8] != ' ')
    FAIL(EVS_HTTP_E_BAD, "malformed status line");
  if (v == 0)
    FAIL(EVS_HTTP_E_VERSION, "unsupported http version");
  int status = 0;
  for (size_t k = 9; k < 12; k++) {
    if ((unsigned)(p[k] - '0') >= 10u)
      FAIL(EVS_HTTP_E_BAD, "malformed status code");
    status = status * 10 + (p[k] - '0');
  }
  if (status < 100 || status > 599)
    FAIL(EVS_HTTP_E_BAD, "status code out of range");
  size_t i = 12, reason_off = 12;
  if (i < len && p[i] == ' ') {
    reason_off = ++i;
    while (i < len && IS(p[i], CC_FVAL))
      i++;
  }
  if (i + 1 >= len || p[i] != '\r' || p[i + 1] != '\n')
    FAIL(EVS_HTTP_E_BAD, "malformed status line");

  h->status = status;
  h->reason_off = (uint32_t)reason_off;
  h->reason_len = (uint32_t)(i - reason_off);
  h->version_minor = minor;

  struct framing fr;
  memset(&fr, 0, sizeof(fr));
  int r = parse_fields(p, len, i + 2, h, 0, &fr, detail);
  if (r != EVS_HTTP_OK)
    return r;
  uint32_t flags = 0;
  r = derive_framing(p, h, 0, &fr, &flags, detail);
  if (r != EVS_HTTP_OK)
    return r;
  h->flags = flags;
  h->content_length = fr.content_length;
  return EVS_HTTP_OK;
}

int evs__http_parse_response(const char *buf, size_t len, evs__http_head *h) {
  return evs__http_parse_response_detail(buf, len, h, NULL);
}

/* ---- field helpers -------------------------------------------------------------------------- */

int evs__http_field_is(const char *buf, const evs__http_field *f, const char *lower_name) {
  return evs__http_field_is_n(buf, f, lower_name, strlen(lower_name));
}

int evs__http_find_field(const char *buf, const evs__http_head *h, const char *lower_name) {
  size_t n = strlen(lower_name);
  for (size_t i = 0; i < h->nfields && i <= (size_t)INT32_MAX; i++)
    if (eq_lower((const unsigned char *)buf + h->fields[i].name_off, h->fields[i].name_len,
                 lower_name, n))
      return (int)i;
  return -1;
}

/* Is name one of the elements of the Connection field value v? */
static int list_has(const unsigned char *v, size_t n, const unsigned char *name, size_t nlen) {
  size_t pos = 0, s, e;
  while (next_element(v, n, &pos, &s, &e)) {
    if (e - s != nlen)
      continue;
    size_t k = 0;
    while (k < nlen && to_lower(v[s + k]) == to_lower(name[k]))
      k++;
    if (k == nlen)
      return 1;
  }
  return 0;
}

/*
 * The fixed hop-by-hop set plus fields a Connection field names. Content-Length and Host are
 * never hop-by-hop, even when named: dropping them would let a client strip the framing or the
 * routing of what we forward ("Connection: content-length" is a known desync trick).
 */
int evs__http_field_is_hop_by_hop(const char *buf, const evs__http_head *h, size_t field_index) {
  /* With their lengths: most names differ in length from most of these, so most checks are one
   * integer comparison. */
#define NAME(s) {s, sizeof(s) - 1}
  static const struct {
    const char *name;
    size_t len;
  } fixed[] = {
    NAME("connection"), NAME("keep-alive"), NAME("proxy-connection"), NAME("te"),
    NAME("transfer-encoding"), NAME("upgrade"), NAME("proxy-authenticate"),
    NAME("proxy-authorization"),
  };
#undef NAME
  if (field_index >= h->nfields)
    return 0;
  const evs__http_field *f = &h->fields[field_index];
  for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
    if (evs__http_field_is_n(buf, f, fixed[i].name, fixed[i].len))
      return 1;
  if (EVS__HTTP_FIELD_IS(buf, f, "content-length") || EVS__HTTP_FIELD_IS(buf, f, "host"))
    return 0;
  const unsigned char *name = (const unsigned char *)buf + f->name_off;
  for (size_t i = 0; i < h->nfields; i++) {
    const evs__http_field *c = &h->fields[i];
    if (EVS__HTTP_FIELD_IS(buf, c, "connection") &&
        list_has((const unsigned char *)buf + c->value_off, c->value_len, name, f->name_len))
      return 1;
  }
  return 0;
}

/* ---- chunked decoder ------------------------------------------------------------------------ */

enum {
  CH_SIZE0 = 0,  /* first hex digit of a chunk-size line (a zeroed struct starts here) */
  CH_SIZE,       /* further hex digits */
  CH_WS_SEMI,    /* BWS after the size or a value: only more BWS or ';' may follow */
  CH_EXT_NAME0,  /* after ';': BWS, then the first byte of the extension name */
  CH_EXT_NAME,   /* in the name */
  CH_EXT_NAME_WS,/* BWS after the name: '=' or ';' must follow */
  CH_EXT_VAL0,   /* after '=': BWS, then a token or a quoted-string */
  CH_EXT_TOKEN,  /* in a token value */
  CH_EXT_QUOTED, /* in a quoted-string value (ext_quote: 1 plain, 2 after backslash) */
  CH_EXT_QEND,   /* right after the closing quote */
  CH_SIZE_LF,    /* CR of the size line seen */
  CH_DATA,
  CH_DATA_CR,
  CH_DATA_LF,
  CH_TR_LINE0,   /* start of a trailer line: CR ends the body, else a field name */
  CH_TR_NAME,
  CH_TR_VALUE,
  CH_TR_LF,
  CH_END_LF,
  CH_DONE,
  CH_ERROR,
};

/*
 * trailer_bytes counts the bytes of the current chunk-size line (so an endless extension is cut
 * off) and, after the last chunk, the bytes of the whole trailer section; both are capped by
 * max_trailer_bytes.
 */
int evs__http_chunked_decode(evs__http_chunked *dec, const char *in, size_t in_len,
                             size_t *ret_consumed, const char **ret_data, size_t *ret_data_len) {
  const unsigned char *p = (const unsigned char *)in;
  size_t max = dec->max_trailer_bytes ? dec->max_trailer_bytes : TRAILER_DEFAULT_MAX;
  int st = dec->state;
  size_t pos = 0;

  if (st == CH_ERROR || st < CH_SIZE0 || st > CH_ERROR)
    goto fail;
  while (pos < in_len && st != CH_DONE) {
    if (st == CH_DATA) {
      size_t n = in_len - pos;
      if ((uint64_t)n > dec->remaining)
        n = (size_t)dec->remaining;
      dec->remaining -= n;
      if (dec->remaining == 0)
        st = CH_DATA_CR;
      dec->state = st;
      *ret_consumed = pos + n;
      *ret_data = in + pos;
      *ret_data_len = n;
      return EVS_HTTP_OK;
    }
    unsigned char c = p[pos++];
    if (st < CH_DATA || st >= CH_TR_LINE0) {
      if (++dec->trailer_bytes > max)
        goto fail;
    }
    switch (st) {
    case CH_SIZE0:
    case CH_SIZE: {
      int hv = hex_value(c);
      if (hv >= 0) {
        if (++dec->digits > CHUNK_DIGITS_MAX)
          goto fail;
        dec->remaining = (dec->remaining << 4) | (uint64_t)hv;
        st = CH_SIZE;
      } else if (st == CH_SIZE0) {
        goto fail;
      } else if (c == '\r') {
        st = CH_SIZE_LF;
      } else if (c == ';') {
        st = CH_EXT_NAME0;
      } else if (is_ows(c)) {
        st = CH_WS_SEMI;
      } else {
        goto fail;
      }
      break;
    }
    case CH_WS_SEMI:
      if (c == ';')
        st = CH_EXT_NAME0;
      else if (!is_ows(c))
        goto fail;
      break;
    case CH_EXT_NAME0:
      if (IS(c, CC_TCHAR))
        st = CH_EXT_NAME;
      else if (!is_ows(c))
        goto fail;
      break;
    case CH_EXT_NAME:
      if (c == '\r')
        st = CH_SIZE_LF;
      else if (c == ';')
        st = CH_EXT_NAME0;
      else if (c == '=')
        st = CH_EXT_VAL0;
      else if (is_ows(c))
        st = CH_EXT_NAME_WS;
      else if (!IS(c, CC_TCHAR))
        goto fail;
      break;
    case CH_EXT_NAME_WS:
      if (c == ';')
        st = CH_EXT_NAME0;
      else if (c == '=')
        st = CH_EXT_VAL0;
      else if (!is_ows(c))
        goto fail;
      break;
    case CH_EXT_VAL0:
      if (c == '"') {
        st = CH_EXT_QUOTED;
        dec->ext_quote = 1;
      } else if (IS(c, CC_TCHAR)) {
        st = CH_EXT_TOKEN;
      } else if (!is_ows(c)) {
        goto fail;
      }
      break;
    case CH_EXT_TOKEN:
      if (c == '\r')
        st = CH_SIZE_LF;
      else if (c == ';')
        st = CH_EXT_NAME0;
      else if (is_ows(c))
        st = CH_WS_SEMI;
      else if (!IS(c, CC_TCHAR))
        goto fail;
      break;
    case CH_EXT_QUOTED:
      if (dec->ext_quote == 2) {
        if (!IS(c, CC_FVAL))
          goto fail;
        dec->ext_quote = 1;
      } else if (c == '\\') {
        dec->ext_quote = 2;
      } else if (c == '"') {
        dec->ext_quote = 0;
        st = CH_EXT_QEND;
      } else if (!IS(c, CC_QDTEXT)) {
        goto fail;
      }
      break;
    case CH_EXT_QEND:
      if (c == '\r')
        st = CH_SIZE_LF;
      else if (c == ';')
        st = CH_EXT_NAME0;
      else if (is_ows(c))
        st = CH_WS_SEMI;
      else
        goto fail;
      break;
    case CH_SIZE_LF:
      if (c != '\n')
        goto fail;
      dec->digits = 0;
      dec->trailer_bytes = 0;
      st = dec->remaining == 0 ? CH_TR_LINE0 : CH_DATA;
      break;
    case CH_DATA_CR:
      if (c != '\r')
        goto fail;
      st = CH_DATA_LF;
      break;
    case CH_DATA_LF:
      if (c != '\n')
        goto fail;
      st = CH_SIZE0;
      break;
    case CH_TR_LINE0:
      if (c == '\r')
        st = CH_END_LF;
      else if (IS(c, CC_TCHAR))
        st = CH_TR_NAME;
      else
        goto fail; /* obs-fold, leading whitespace, or not a field name */
      break;
    case CH_TR_NAME:
      if (c == ':')
        st = CH_TR_VALUE;
      else if (!IS(c, CC_TCHAR))
        goto fail;
      break;
    case CH_TR_VALUE:
      if (c == '\r')
        st = CH_TR_LF;
      else if (!IS(c, CC_FVAL))
        goto fail;
      break;
    case CH_TR_LF:
      if (c != '\n')
        goto fail;
      st = CH_TR_LINE0;
      break;
    case CH_END_LF:
      if (c != '\n')
        goto fail;
      st = CH_DONE;
      dec->done = 1;
      break;
    default:
      goto fail;
    }
  }
  dec->state = st;
  *ret_consumed = pos;
  *ret_data = NULL;
  *ret_data_len = 0;
  return EVS_HTTP_OK;

fail:
  dec->state = CH_ERROR;
  return EVS_HTTP_E_BAD;
}
