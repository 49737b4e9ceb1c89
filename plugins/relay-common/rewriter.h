/*
 * rewriter: the one interface of the Inbound Relay's streaming, byte-exact body rewriters (JSON,
 * XML, application/x-www-form-urlencoded, multipart/form-data). Each format's header
 * (json_rewrite.h, xml_rewrite.h, form_rewrite.h, multipart_rewrite.h) describes what it selects,
 * how strict it is and what it costs; this header holds what they share:
 *   - the callbacks (emit, transform), the value types a transform receives, EVS__RW_DEFER;
 *   - the error codes, one enum for all formats, and the mapping of an error to the relay's
 *     documented answer (evs__rewriter_answer);
 *   - an operations table per format (evs__rewriter_ops), so a caller drives any of them the
 *     same way without casting function pointers, and the choice of format by Content-Type, made
 *     here and nowhere else (evs__rewriter_for_content_type).
 *
 * The asynchronous pattern (json_rewrite.h explains it in full): transform and emit calls are
 * strictly ordered; a transform that cannot answer yet returns EVS__RW_DEFER, nothing is emitted
 * for that value, and the caller records a hole at its output position and later fills it with
 * the replacement written the way the format places values (ops->place).
 *
 * Threading: one rewriter per request, used from one thread at a time.
 */
#ifndef EVS_RELAY_REWRITER_H
#define EVS_RELAY_REWRITER_H

#include <stddef.h>
#include <stdint.h>

#include "jsonpath.h"

/* Errors of every rewriter (a rewriter that returned one is poisoned and returns it again on
 * every later call). Which formats produce which is in each format's header. Besides these, a
 * rewriter returns -ENOMEM, or any negative value a callback returned, unchanged. */
typedef enum evs__rw_error {
  EVS__RW_E_SYNTAX = -2001,  /* malformed for the format */
  EVS__RW_E_DUPKEY = -2002,  /* JSON: a member name repeated within one object */
  EVS__RW_E_DEPTH = -2003,   /* nested deeper than the limit */
  EVS__RW_E_TOOBIG = -2004,  /* a selected value (or a name) over the limit */
  EVS__RW_E_KEYS = -2005,    /* too many names held for duplicate or sibling tracking */
  EVS__RW_E_EVDATA = -2006,  /* an unselected value looks like an ev: string */
  EVS__RW_E_DOCTYPE = -2101, /* XML: a DOCTYPE or other markup declaration */
  EVS__RW_E_ENTITY = -2102,  /* XML: a reference to an entity other than the predefined five */
  EVS__RW_E_PI = -2103,      /* XML: a processing instruction other than the declaration */
  EVS__RW_E_ENCODING = -2104, /* XML: an encoding other than UTF-8 */
  EVS__RW_E_MIXED = -2105,    /* XML: text beside child elements in a selected element */
  EVS__RW_E_UNSUPPORTED = -2106, /* multipart: a part whose framing cannot be rewritten */
  EVS__RW_E_BOUNDARY = -2107,    /* multipart: no valid boundary in the Content-Type */
} evs__rw_error;

/* The relay's documented answer to a rewriter error: returns the HTTP status and sets *ret_code
 * to the error code (X-Evervault-Error-Code): 400 "encrypted-data-in-field" for
 * EVS__RW_E_EVDATA, 400 "bad-request" for every other evs__rw_error. Returns 0 (and leaves
 * *ret_code alone) for anything that is not an evs__rw_error: the caller answers those. */
int evs__rewriter_answer(int err, const char **ret_code);

#define EVS__RW_DEFER 1 /* transform return: the replacement will be placed by the caller */

typedef enum evs__rw_type {
  EVS__RW_STRING = 1,
  EVS__RW_NUMBER,
  EVS__RW_BOOLEAN,
  /* Only from the multipart rewriter: the raw bytes of a file part (multipart_rewrite.h),
   * whose replacement (a %EVENC file) becomes the part's new body, placed raw. */
  EVS__RW_FILE = 4,
} evs__rw_type;

/* Receives output bytes buf[0..len) (valid only during the call; len > 0). Returns 0, or a
 * negative value that aborts the rewrite and is returned by feed/finish. */
/* The memory a rewriter holds and its peak (what mem_high_water reports), kept by every format
 * alike. */
typedef struct evs__rw_mem {
  size_t now, high;
} evs__rw_mem;
static inline void evs__rw_mem_account(evs__rw_mem *m, size_t old_bytes, size_t new_bytes) {
  m->now = m->now - old_bytes + new_bytes;
  if (m->now > m->high) m->high = m->now;
}
/* Grows *b (elements of size el, *cap of them, doubling from 16) to hold at least need
 * elements, accounting the change in m. 0 or -ENOMEM (*b unchanged). The check is inline: it
 * runs on every append, the growing rarely. */
int evs__rw_grow_slow(evs__rw_mem *m, void **b, size_t *cap, size_t need, size_t el);
static inline int evs__rw_grow(evs__rw_mem *m, void **b, size_t *cap, size_t need, size_t el) {
  return need <= *cap ? 0 : evs__rw_grow_slow(m, b, cap, need, el);
}

typedef int (*evs__rw_emit_fn)(void *ud, const char *buf, size_t len);

/* Transforms one selected value. value[0..len) is: for a string, its decoded bytes (escapes
 * resolved; may contain NUL; value[len] is a NUL); for a number, its text as sent (e.g.
 * "-1.5e300"); for a boolean, "true" or "false"; for a file, its raw bytes. The buffer is valid
 * only during the call. Returns 0 after setting *ret_buf and *ret_len to the bytes to emit in
 * place of the value (JSON: a literal such as "\"ev:...\""; form: the plain replacement, which
 * the rewriter percent-encodes; XML and multipart: verbatim), owned by the transform and valid
 * until it is called again or the rewriter is freed; EVS__RW_DEFER (nothing is emitted); or a
 * negative value that aborts the rewrite. */
typedef int (*evs__rw_transform_fn)(void *ud, evs__rw_type type, const char *value, size_t len,
                                    const char **ret_buf, size_t *ret_len);

/* What a rewriter selects, and what it needs of the request to start. Borrowed by new: paths
 * must outlive the rewriter; names and content_type are copied where kept. */
typedef struct evs__rewriter_select {
  const evs__jsonpath *paths;  /* JSON and XML: the compiled selectors (NULL: none) */
  const char *const *names;    /* form and multipart: plain field names */
  size_t nnames;
  const char *content_type;    /* the Content-Type value (multipart reads its boundary) */
  size_t content_type_len;
  /* Nonzero: an unselected value that looks like an ev: string is written as it is rather than
   * refused (EVS__RW_E_EVDATA): responses, where it is not the request trust boundary's
   * business (the Outbound Relay's response encryption). */
  int allow_ev;
} evs__rewriter_select;

/* A format's operations. Each format's .c defines one constant table; the typed functions of
 * its header stay for its own tests and fuzzers. impl is the format's rewriter. */
typedef struct evs__rewriter_ops {
  const char *name; /* "json", "xml", "form", "multipart": for logs, transactions, structures */
  /* Nonzero: the body is parsed even when nothing is selected. Multipart is, so that a part the
   * destination may decode (Content-Transfer-Encoding), which the guard cannot see into, is
   * refused; the other formats' bodies need the guard only. */
  int parse_unselected;
  /* Write a replacement value[0..len) into out[0..cap) and return its length, even when that
   * exceeds cap (out is then incomplete; out may be NULL with cap 0 to ask for the length).
   * place: as it goes on the wire, for a hole the caller fills after EVS__RW_DEFER (JSON: a
   * string literal; form: percent-encoded; XML, multipart: verbatim, file parts included).
   * place_returned: as a transform returns it for the rewriter to write (the same, except
   * form: verbatim, since the form rewriter percent-encodes what a transform returns). */
  size_t (*place)(const char *value, size_t len, char *out, size_t cap);
  size_t (*place_returned)(const char *value, size_t len, char *out, size_t cap);
  /* Creates a rewriter: 0 and *ret_impl, or -EINVAL, -ENOMEM, EVS__RW_E_BOUNDARY. */
  int (*new)(const evs__rewriter_select *sel, evs__rw_emit_fn emit, evs__rw_transform_fn transform,
             void *ud, void **ret_impl);
  int (*feed)(void *impl, const char *buf, size_t len); /* any split of the body */
  int (*finish)(void *impl);                            /* the end of the body */
  void (*free)(void *impl);                             /* accepts NULL */
  /* Optional (NULL where a format has none): makes the rewriter as new (same selection and
   * callbacks, poisoned or not, mid-body or not) while keeping the memory it grew, for a
   * caller that rewrites many small bodies in a row (a WebSocket's messages). 0, or
   * -EOPNOTSUPP. */
  int (*reset)(void *impl);
  uint64_t (*error_offset)(const void *impl);           /* where the error was found */
  size_t (*mem_high_water)(const void *impl);           /* peak bytes allocated */
  const char *(*strerror)(int err); /* a static English description, in the format's terms */
} evs__rewriter_ops;

/* The place (and place_returned) of the formats that take a replacement verbatim. */
size_t evs__rewriter_place_verbatim(const char *value, size_t len, char *out, size_t cap);

extern const evs__rewriter_ops evs__json_rewriter;
extern const evs__rewriter_ops evs__xml_rewriter;
extern const evs__rewriter_ops evs__form_rewriter;
extern const evs__rewriter_ops evs__multipart_rewriter;

/* The rewriter for a Content-Type value ct[0..len) (not NUL-terminated): application/json and
 * any +json type; application/xml, text/xml and any +xml type; x-www-form-urlencoded;
 * multipart/form-data (media types case-insensitive, parameters ignored). NULL for any other:
 * such a body can only be forwarded as it is. */
const evs__rewriter_ops *evs__rewriter_for_content_type(const char *ct, size_t len);

/* The heuristic behind EVS__RW_E_EVDATA, shared by every format: 1 if s[0..len) starts with
 * "ev:", ends with ":$", has 5 or 6 ':' in all and otherwise only base64/base64url characters
 * (A-Z a-z 0-9 + / = - _ and '$'), else 0. (Defined in json_rewrite.c.) */
int evs__looks_like_ev_string(const char *s, size_t len);

#endif
