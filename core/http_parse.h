/*
 * HTTP/1.x message parsing (RFC 9112), strict.
 *
 * Pure functions over caller-owned buffers: no allocation, no I/O, no logging. The connection
 * code in server.c (requests) and upstream.c (responses, for proxy.c and client.c) feeds bytes
 * in; this file decides what is a valid message. Everything here parses untrusted input and has
 * a libFuzzer target (fuzz/fuzz_http_parse.c).
 *
 * A message head is parsed in two steps: evs__http_scan_head() finds where the head ends (and
 * rejects bare CR/LF and oversize heads early, byte by byte, so a slowloris of garbage is cut off
 * as soon as it becomes invalid); evs__http_parse_request()/evs__http_parse_response() then parse
 * the complete head and derive its framing. Bodies are framed by Content-Length or decoded by the
 * incremental chunked decoder below.
 */
#ifndef EVS_CORE_HTTP_PARSE_H
#define EVS_CORE_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Parse results. Negative values are errors; each maps to one HTTP status. */
enum evs__http_result {
  EVS_HTTP_OK = 0,
  EVS_HTTP_NEED_MORE = 1,        /* scan: head not complete yet */
  EVS_HTTP_E_BAD = -1,           /* 400: malformed or ambiguous (smuggling shapes) */
  EVS_HTTP_E_HEAD_TOO_LARGE = -2,/* 431: head over the byte limit */
  EVS_HTTP_E_TOO_MANY_FIELDS = -3,/* 431: more header fields than the limit */
  EVS_HTTP_E_VERSION = -4,       /* 505: not HTTP/1.0 or HTTP/1.1 */
  EVS_HTTP_E_TE_UNSUPPORTED = -5,/* 501: a transfer coding other than a final "chunked" */
  EVS_HTTP_E_METHOD = -6,        /* 400: method token invalid or too long */
  EVS_HTTP_E_TARGET = -7,        /* 400: request-target invalid */
  EVS_HTTP_E_LENGTH = -8,        /* 400: Content-Length is not a number (content-length-required) */
};

/* The HTTP status an error result maps to (400, 431, 505, 501). */
int evs__http_result_status(int result);
/* The documented error code an error result is answered with: "content-length-required" for
 * EVS_HTTP_E_LENGTH, else "bad-request". */
const char *evs__http_result_code(int result);
/* A short, fixed, log-safe reason for an error result ("bad content-length", ...). */
const char *evs__http_result_reason(int result);

/* One header field; offsets are into the head buffer. Value has OWS trimmed. */
typedef struct evs__http_field {
  uint32_t name_off, name_len;
  uint32_t value_off, value_len;
} evs__http_field;

/* Framing flags derived from the head. */
enum {
  EVS_HTTP_F_CHUNKED = 1u << 0,         /* Transfer-Encoding: chunked (final coding) */
  EVS_HTTP_F_CONTENT_LENGTH = 1u << 1,  /* valid Content-Length present */
  EVS_HTTP_F_CONN_CLOSE = 1u << 2,      /* Connection: close */
  EVS_HTTP_F_CONN_KEEPALIVE = 1u << 3,  /* Connection: keep-alive */
  EVS_HTTP_F_EXPECT_CONTINUE = 1u << 4, /* Expect: 100-continue */
  EVS_HTTP_F_UPGRADE = 1u << 5,         /* Connection: upgrade and an Upgrade field */
  EVS_HTTP_F_HOST = 1u << 6,            /* exactly one Host field */
  EVS_HTTP_F_EXPECT_OTHER = 1u << 7,    /* an Expect value other than 100-continue (417) */
};

typedef struct evs__http_head {
  /* Request line (requests only); offsets into the buffer. */
  uint32_t method_off, method_len;
  uint32_t target_off, target_len;
  /* Status line (responses only). */
  int status;
  uint32_t reason_off, reason_len;
  int version_minor;         /* 0 or 1 (HTTP/1.x) */
  /* Fields, in order, in caller-provided storage. */
  evs__http_field *fields;   /* set by caller before parsing: array of max_fields */
  size_t max_fields;         /* set by caller */
  size_t nfields;
  /* Derived framing. */
  uint32_t flags;            /* EVS_HTTP_F_* */
  uint64_t content_length;   /* valid if EVS_HTTP_F_CONTENT_LENGTH */
  uint32_t host_field;       /* index of the Host field if EVS_HTTP_F_HOST */
  size_t head_len;           /* bytes of the head including the final CRLFCRLF */
} evs__http_head;

/*
 * Incremental head scanner. `state` is caller storage, zeroed before the first call of a message.
 * Looks at buf[0..len) (the whole buffered head so far; the scanner resumes where it stopped).
 * Returns EVS_HTTP_OK and sets *ret_head_len when the head (ending CRLFCRLF) is complete,
 * EVS_HTTP_NEED_MORE, EVS_HTTP_E_BAD on a bare CR or bare LF, or EVS_HTTP_E_HEAD_TOO_LARGE when
 * more than max_head_bytes arrived without the end of the head.
 * Leading empty lines before a request line (RFC 9112 §2.2) are not accepted.
 */
typedef struct evs__http_scan {
  size_t pos;
  int crlf_run; /* state of the CR LF CR LF matcher */
} evs__http_scan;
int evs__http_scan_head(evs__http_scan *state, const char *buf, size_t len, size_t max_head_bytes,
                        size_t *ret_head_len);

/*
 * Parse a complete request head (buf[0..len), as found by the scanner) into *h. Rejects
 * (EVS_HTTP_E_BAD unless noted): methods that are not tokens (EVS_HTTP_E_METHOD), targets with
 * CTLs, spaces, '#' or that are not origin-form, absolute-form, authority-form (CONNECT only) or
 * asterisk-form (OPTIONS only) (EVS_HTTP_E_TARGET); versions other than HTTP/1.0 and HTTP/1.1
 * (EVS_HTTP_E_VERSION; malformed version strings are EVS_HTTP_E_BAD); field names that are not
 * tokens, whitespace before the colon, obs-fold, CTLs other than HTAB in values; more than
 * h->max_fields fields (EVS_HTTP_E_TOO_MANY_FIELDS); both Content-Length and Transfer-Encoding;
 * Content-Length that is not 1*DIGIT, or appears more than once (even with equal values), or
 * overflows; Transfer-Encoding in an HTTP/1.0 request; Transfer-Encoding whose final coding is
 * not chunked, or chunked twice, or any coding we do not implement (EVS_HTTP_E_TE_UNSUPPORTED);
 * no Host in HTTP/1.1, more than one Host, or a Host that is not a valid uri-host[:port].
 */
int evs__http_parse_request(const char *buf, size_t len, evs__http_head *h);

/*
 * Parse a complete response head. Same field rules as requests, except that Transfer-Encoding
 * in an HTTP/1.0 response is allowed and Host is not required. Status must be three digits.
 */
int evs__http_parse_response(const char *buf, size_t len, evs__http_head *h);

/*
 * The same parsers, and on an error result they also set *detail (if detail is not NULL) to a
 * fixed, log-safe phrase naming the rule that failed ("duplicate content-length", ...). The
 * phrase never contains message bytes; *detail is left alone on success.
 */
int evs__http_parse_request_detail(const char *buf, size_t len, evs__http_head *h,
                                   const char **detail);
int evs__http_parse_response_detail(const char *buf, size_t len, evs__http_head *h,
                                    const char **detail);

/* Case-insensitive token comparison of a field name with a NUL-terminated lower-case name. */
int evs__http_field_is(const char *buf, const evs__http_field *f, const char *lower_name);

/* The same with the name's length given. Inline, and the length is compared first, because the
 * proxy checks every field of every head against several names. */
static inline int evs__http_field_is_n(const char *buf, const evs__http_field *f,
                                       const char *lower_name, size_t len) {
  if (f->name_len != len) return 0;
  const unsigned char *s = (const unsigned char *)buf + f->name_off;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = s[i];
    if ((unsigned)(c - 'A') < 26u) c = (unsigned char)(c | 0x20);
    if (c != (unsigned char)lower_name[i]) return 0;
  }
  return 1;
}
/* For a string literal: its length is known at compile time. */
#define EVS__HTTP_FIELD_IS(buf, f, lit) evs__http_field_is_n((buf), (f), "" lit, sizeof(lit) - 1)

/* Find the first field with that (lower-case) name; returns its index or -1. */
int evs__http_find_field(const char *buf, const evs__http_head *h, const char *lower_name);

/* True if the field is a hop-by-hop field (RFC 9110 §7.6.1): Connection, Keep-Alive,
 * Proxy-Connection, TE, Transfer-Encoding, Upgrade, Proxy-Authenticate, Proxy-Authorization
 * (Trailer is end-to-end), or a field named in any Connection field of the head. */
int evs__http_field_is_hop_by_hop(const char *buf, const evs__http_head *h, size_t field_index);

/*
 * Incremental chunked-body decoder (RFC 9112 §7.1). Zero the struct to start. Strict: chunk
 * size is 1*HEXDIG (at most 15 digits, no sign, no leading/trailing whitespace, no "0x"), chunk
 * extensions are token[=token|quoted-string] with BWS only around ';' and '=', every CRLF is
 * exact (no bare LF), trailer fields obey the header-field rules and total at most
 * max_trailer_bytes.
 *
 * Each call consumes input and may yield a run of body data that lies inside `in` (no copy):
 * returns EVS_HTTP_OK with *ret_consumed bytes consumed and, if *ret_data_len > 0, body bytes at
 * *ret_data (pointing into `in`); callers loop until all input is consumed. When the final
 * chunk and trailers have been read, dec->done is set and the remaining input (the next
 * pipelined message) is not consumed. Errors: EVS_HTTP_E_BAD.
 */
typedef struct evs__http_chunked {
  int state;
  uint64_t remaining;      /* bytes left in the current chunk */
  unsigned digits;         /* hex digits read in the current size line */
  size_t trailer_bytes;
  size_t max_trailer_bytes;/* 0 means 8192 */
  int done;
  uint8_t ext_quote;       /* inside a quoted-string in an extension */
} evs__http_chunked;
int evs__http_chunked_decode(evs__http_chunked *dec, const char *in, size_t in_len,
                             size_t *ret_consumed, const char **ret_data, size_t *ret_data_len);

/* Helpers for tokens and values, shared with the header-rewriting code. */
int evs__http_is_tchar(unsigned char c);
int evs__http_is_valid_field_value(const char *v, size_t len);
int evs__http_is_valid_host(const char *v, size_t len);

#endif
