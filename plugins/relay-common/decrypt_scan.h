/*
 * decrypt_scan: the Inbound Relay's response-decryption scanner. "By default, Inbound Relay will
 * automatically scan any responses from your endpoint and decrypt any fields containing
 * Evervault-encrypted data", including multipart/form-data parts and raw file responses. The
 * scanner is fed a response body in pieces of any size and forwards it through an emit callback
 * byte for byte, except the Evervault-encrypted values it finds, which it hands to a transform
 * callback and replaces by what the transform returns. Bytes that are not part of a candidate
 * value are emitted straight from the caller's buffer, without copying.
 *
 * The mode is chosen once, from the response Content-Type (evs__decrypt_scan_mode_for):
 *
 *   JSON       application/json, text/json, any +json, (x-)ndjson. A string token in value
 *              position whose whole content is an ev: string is replaced, quotes included
 *              (kind EVS__DSCAN_STRING_JSON; value = the ev: string without its quotes, with a
 *              "\/" escape, as PHP writes it, resolved). Object keys are never replaced, nor is
 *              an ev: string inside a longer string. The JSON is not validated (the scanner
 *              tracks strings, escapes and object/array nesting only); strings nested deeper
 *              than 1024 levels are left alone.
 *   XML        application/xml, text/xml, any +xml, text/html: text scanning, kind EVS__DSCAN_XML
 *              (the replacement must be markup-escaped).
 *   FORM       application/x-www-form-urlencoded: text scanning, kind EVS__DSCAN_FORM. The token
 *              may be percent-encoded ("ev%3ARFVC%3A...%3A%24"); the transform gets it decoded
 *              and must return it percent-encoded. A literal '+' is taken as base64, not space.
 *   TEXT       text/ (any), application/javascript, yaml, csv, graphql, and any type with a charset
 *              parameter: text scanning, kind EVS__DSCAN_TEXT (raw replacement).
 *   MULTIPART  multipart/form-data, mixed, related, alternative, with a valid boundary (without
 *              one: TEXT). Preamble, delimiters, part headers and epilogue pass through. A part
 *              body starting with "%EVENC" is one EVS__DSCAN_FILE transform (the part's headers
 *              are left unchanged). Other part bodies are scanned by their own Content-Type as
 *              above (none: text); a raw part passes through.
 *   RAW        anything else (image/png, application/octet-stream, application/pdf, no type): a
 *              body starting with "%EVENC" is one EVS__DSCAN_FILE transform; otherwise it passes
 *              through as it arrives, nothing held but its first (up to 6) bytes.
 *
 * Text scanning: a token is "ev:" not preceded by an ASCII letter or digit, then a maximal run of
 * [A-Za-z0-9+/=_-] and ':', ending ":$", with 5 or 6 ':' in all and no empty segment ("::").
 * A run that starts like a token but does not satisfy this passes through unchanged in full (a
 * valid-looking token later inside it is not looked for), as does a candidate longer than
 * max_token. "$" ends a token, so "ev:...:$x" is a token followed by "x".
 *
 * Memory is bounded by max_token (a candidate held across feeds, and its decoded copy), max_file
 * (a %EVENC file is held whole: larger is EVS__DSCAN_E_TOOBIG, payload-too-large) and 8 KiB of
 * part headers. evs__decrypt_scan_mem_high_water() reports the peak of these allocations.
 *
 * Asynchronous transforms follow json_rewrite.h: transform and emit calls are strictly ordered.
 * Every output byte before a value has been emitted when its transform runs, and nothing after
 * it is emitted before the transform returns. A transform may return EVS__RW_DEFER: nothing
 * is emitted for the value and the caller records a hole at its current output position, to fill
 * when the batch of values of this response comes back from the enclave.
 *
 * Errors (the scanner is then poisoned and returns the same error on every later call):
 *   EVS__DSCAN_E_TOOBIG  a %EVENC file larger than max_file
 *   -EINVAL              a transform returned a positive value other than EVS__RW_DEFER, or a
 *                        feed after finish
 *   -ENOMEM, or any negative value a callback returned (passed through unchanged).
 *
 * Threading: one scanner per response, used from one thread at a time.
 */
#ifndef EVS_RELAY_DECRYPT_SCAN_H
#define EVS_RELAY_DECRYPT_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "rewriter.h" /* evs__rw_emit_fn, EVS__RW_DEFER */

enum {
  EVS__DSCAN_E_TOOBIG = -2101,
};

typedef enum evs__dscan_mode {
  EVS__DSCAN_MODE_RAW = 0,
  EVS__DSCAN_MODE_JSON,
  EVS__DSCAN_MODE_XML,
  EVS__DSCAN_MODE_FORM,
  EVS__DSCAN_MODE_TEXT,
  EVS__DSCAN_MODE_MULTIPART,
} evs__dscan_mode;

/* What a transform is given, and so what it must return. */
enum {
  EVS__DSCAN_STRING_JSON = 1, /* ev: string from a JSON string: return a JSON literal (a quoted,
                                 escaped string, or the bare number/boolean for typed values) */
  EVS__DSCAN_TEXT,            /* ev: token in text: return the plaintext as is */
  EVS__DSCAN_XML,             /* ev: token in XML/HTML: return the plaintext markup-escaped */
  EVS__DSCAN_FORM,            /* ev: token (decoded) in a urlencoded form: return it
                                 percent-encoded */
  EVS__DSCAN_FILE,            /* a whole %EVENC file: return the plaintext bytes */
};

/* Transforms one value. value[0..len) is the ev: string (no quotes; not NUL-terminated) or the
 * whole %EVENC file; it is valid only during the call. Returns 0 after setting *ret_buf and
 * *ret_len to the bytes to emit in its place (owned by the transform, valid until it is called
 * again or the scanner is freed; *ret_len may be 0), EVS__RW_DEFER (nothing is emitted; the
 * caller fills the hole later), or a negative value that aborts the scan. */
typedef int (*evs__decrypt_transform_fn)(void *ud, int kind, const char *value, size_t len,
                                         const char **ret_buf, size_t *ret_len);

struct evs__decrypt_scan_opts {
  size_t size;      /* sizeof(struct evs__decrypt_scan_opts) */
  size_t max_token; /* bytes of one candidate token (with quotes in JSON); 0: 1 MiB */
  size_t max_file;  /* bytes of one %EVENC file; 0: 25 MiB */
};

struct evs__decrypt_scan;
typedef struct evs__decrypt_scan evs__decrypt_scan;

/* The mode for a Content-Type header value (NULL: RAW). Parameters are ignored except charset
 * (which makes an unknown type TEXT); a multipart type without a usable boundary is reported as
 * MULTIPART here but scanned as TEXT (see evs__decrypt_scan_mode). */
evs__dscan_mode evs__decrypt_scan_mode_for(const char *content_type);

/* Creates a scanner for a response with this Content-Type (NULL if absent; borrowed, only read
 * during the call). opts may be NULL for the defaults. Returns 0 and sets *ret_scan (free with
 * evs__decrypt_scan_free), or -EINVAL / -ENOMEM. */
int evs__decrypt_scan_new(const char *content_type, const struct evs__decrypt_scan_opts *opts,
                          evs__rw_emit_fn emit, evs__decrypt_transform_fn transform, void *ud,
                          evs__decrypt_scan **ret_scan);

void evs__decrypt_scan_free(evs__decrypt_scan *scan);

/* Consumes buf[0..len) (any split of the body). Returns 0 or a negative error; callbacks run from
 * inside this call. */
int evs__decrypt_scan_feed(evs__decrypt_scan *scan, const char *buf, size_t len);

/* Signals the end of the body: emits what is still held and runs the transform of a trailing
 * file. Returns 0 or a negative error. */
int evs__decrypt_scan_finish(evs__decrypt_scan *scan);

/* The mode in effect (MULTIPART without a boundary is TEXT). A RAW scanner whose body did not
 * start with %EVENC changes nothing, so a caller may stop feeding it and splice the rest. */
evs__dscan_mode evs__decrypt_scan_mode(const evs__decrypt_scan *scan);

/* Values handed to the transform so far (ev: tokens and files). */
uint64_t evs__decrypt_scan_values_found(const evs__decrypt_scan *scan);

/* Peak bytes allocated by the scanner for its buffers. */
size_t evs__decrypt_scan_mem_high_water(const evs__decrypt_scan *scan);

/* A static English description of an EVS__DSCAN_E_* code. */
const char *evs__decrypt_scan_strerror(int err);

#endif
