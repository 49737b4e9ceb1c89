/*
 * Request paths as route matching sees them: the normal form of a path (RFC 3986 §6.2.2 and
 * §5.2.4 plus the readings web frameworks add), route patterns matched against it, and the set
 * of readings ("views") of one request path that a destination might apply.
 *
 * Why views and not one normal form: the relay forwards the path as the client sent it, so the
 * destination's own framework decides what it means, and frameworks disagree. Express matches
 * the raw path (`/x/../enc` is three segments); nginx and Tomcat resolve dot segments, Tomcat
 * and Spring drop `;params`, Werkzeug, Rails and nginx merge `//`. A route must be selected if
 * any of them would route the request to it, so a path is matched in each combination of those
 * three readings (at most 8, usually 1). What no combination can describe is refused instead:
 * an encoded '/' or '\' (one segment or two?), a backslash, an encoded NUL, a `%25` that decodes
 * to another escape (decoded twice by proxy chains), and invalid escapes.
 *
 * Library-like: no logging, no global state; thread-compatible. Used by the Inbound Relay; meant
 * for every component that matches routes (Outbound Relay, WebSockets, Functions).
 */
#ifndef EVS_RELAY_PATH_H
#define EVS_RELAY_PATH_H

#include <stddef.h>

/* evs__path_normalize flags. 0 is the full normal form. */
#define EVS__PATH_KEEP_DOTS 0x1u   /* keep "." and ".." segments as ordinary segments */
#define EVS__PATH_KEEP_PARAMS 0x2u /* keep ";params" in segments */
#define EVS__PATH_KEEP_EMPTY 0x4u  /* keep empty segments ("//") */
#define EVS__PATH_FOLD_CASE 0x8u   /* write ASCII letters lower-case (not the hex of escapes) */

/* Errors (negative). */
#define EVS__PATH_E_INVALID (-1)   /* empty, no leading '/', '?', '#', a control byte or space, or
                                    * '%' not followed by two hex digits */
#define EVS__PATH_E_AMBIGUOUS (-2) /* %2F, %5C, '\', %00, or %25 decoding to an escape (%2541) */
#define EVS__PATH_E_NOSPACE (-3)   /* cap too small; 3 * len + 2 always suffices */

/*
 * Writes the normal form of the path in[0..len) (the request-target up to '?') to out, NUL-
 * terminated, and returns its length (without the NUL), or a negative EVS__PATH_E_*.
 *
 * Each segment is percent-decoded where the escape names a character allowed as such in a path
 * segment (unreserved, sub-delims, ':' and '@'; so `%65` is `e` and `%3B` is `;`); every other
 * byte (other escapes, and raw bytes such as `{` or UTF-8) is written `%HH` with upper-case hex,
 * so each segment has one spelling. Then, unless a KEEP flag says otherwise: a segment is cut at
 * its first ';' (matrix parameters), empty segments are dropped, and "." and ".." are removed as
 * in RFC 3986 §5.2.4, in that order (so `/x/..;/enc` is `/enc`, as Tomcat reads it). A trailing
 * slash is kept (one). The result starts with '/', and with flags 0 holds no "//", no "/./" or
 * "/../" segment and no ';'. Normalising a normal form (same flags) gives it back.
 * out and in must not overlap.
 */
int evs__path_normalize(const char *in, size_t len, char *out, size_t cap, unsigned flags);

/*
 * 1 if normal_path (an output of evs__path_normalize) matches the route pattern, else 0.
 * Patterns (in normal form themselves) match segment by segment: literal characters, `*` the
 * rest of one segment (possibly nothing), a trailing `*` or `**` (or `**` anywhere) the rest of
 * the path; a final "/" "**" also matches the path without it (`/a/` `**` matches `/a`). One
 * trailing slash on either side is ignored (`/enc` matches `/enc/` and the other way round).
 * ASCII letters compare case-insensitively unless case_sensitive.
 */
int evs__route_match(const char *pattern, const char *normal_path, int case_sensitive);

/* The distinct readings of one request path (see above). Fill with evs__path_views_init, free
 * with evs__path_views_clear. */
typedef struct evs__path_views {
  char *buf;         /* owns the strings */
  const char *v[8];  /* distinct normal forms, v[0] the full one (flags 0) */
  size_t n;
  int case_sensitive;
} evs__path_views;

/* Computes the views of path[0..len). 0, or a negative EVS__PATH_E_* (then nothing to clear),
 * or -ENOMEM. */
int evs__path_views_init(evs__path_views *pv, const char *path, size_t len, int case_sensitive);

/* 1 if any view matches the pattern (evs__route_match), else 0. */
int evs__path_views_match(const evs__path_views *pv, const char *pattern);

/* Frees the strings; accepts a zeroed or cleared struct. */
void evs__path_views_clear(evs__path_views *pv);

/* A short English description of an EVS__PATH_E_* code. */
const char *evs__path_strerror(int err);

#endif
