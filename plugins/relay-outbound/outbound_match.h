/*
 * outbound_match.h: the Outbound Relay's destination domains, parsed and compiled into a
 * matcher, and the parser of a CONNECT request-target (`host:port`, `[v6]:port`). Pure C: no
 * plugin state, no logging, no allocation beyond the matcher itself; shared by the plugin, the
 * unit tests and the fuzzer (fuzz/fuzz_outbound_match.c).
 *
 * The syntax of a destination domain is the one the SDKs apply on the client (the product
 * documentation, interop/PROTOCOL.md §5.1), made strict for the server:
 *
 *   api.example.com            that host exactly (any port)
 *   api.example.com:8443       that host on that port only
 *   *.example.com              every host ending with ".example.com"
 *   *example.com               every host ending with "example.com" (badexample.com too: the
 *                              documented suffix rule; write "*.example.com" to mean subdomains)
 *   api.example.com/v1/pay     that host, and the request path exactly /v1/pay
 *   api.example.com/v1/(star)  that host, and a request path starting with /v1/ ("(star)" is
 *                              a literal asterisk, spelt out only in this C comment)
 *   [2001:db8::1] 127.0.0.1    IP literals (IPv6 in brackets)
 *
 * Hosts compare without case (they are stored lower-case, with no trailing dot). Paths compare
 * byte for byte: the caller passes the request path in its normal form (relay_path.h in
 * plugins/relay-common), without the query. A scheme ("https://...") is refused, not ignored as
 * the SDK does, so that a mistake shows when the configuration is pushed.
 */
#ifndef EVS_OUTBOUND_MATCH_H
#define EVS_OUTBOUND_MATCH_H

#include <stddef.h>

#define EVS__OB_HOST_MAX 253   /* a DNS name; "[v6]" fits easily */
#define EVS__OB_PATH_MAX 1024  /* the path part of a destination domain */
#define EVS__OB_DOMAIN_MAX (EVS__OB_HOST_MAX + 8 + EVS__OB_PATH_MAX)

enum evs__ob_host_kind { EVS__OB_HOST_EXACT = 0, EVS__OB_HOST_SUFFIX = 1 };
enum evs__ob_path_kind { EVS__OB_PATH_EXACT = 0, EVS__OB_PATH_PREFIX = 1, EVS__OB_PATH_ANY = 2 };

/* One parsed destination domain. host (lower-case; IPv6 in brackets) is the whole host for
 * EXACT, the suffix after '*' for SUFFIX. port 0: any. path (NUL-terminated, without the
 * trailing '*' of a prefix) is empty for EVS__OB_PATH_ANY. */
typedef struct evs__ob_pattern {
  int host_kind;
  char host[EVS__OB_HOST_MAX + 1];
  int port;
  int path_kind;
  char path[EVS__OB_PATH_MAX + 1];
} evs__ob_pattern;

/* Parses a destination domain of len bytes. Returns 0 and fills *ret, or -EINVAL with a static
 * sentence in *ret_why saying what is wrong (*ret is then unspecified). */
int evs__ob_pattern_parse(const char *s, size_t len, evs__ob_pattern *ret, const char **ret_why);

/* Parses a CONNECT request-target: `host:port` (a DNS name or IPv4 address) or `[v6]:port`;
 * the port is required (RFC 9110 §9.3.6), 1-65535. Writes the host lower-case, without a
 * trailing dot, IPv6 in brackets, into host (cap bytes, NUL-terminated) and the port into
 * *ret_port. Returns 0, or -EINVAL (malformed) / -ENAMETOOLONG (the host does not fit); on
 * error the outputs are unspecified. */
int evs__ob_authority_parse(const char *s, size_t len, char *host, size_t cap, int *ret_port);

/* A compiled set of patterns: matching tries the most specific first (an exact host before a
 * suffix, a longer suffix before a shorter one, a pattern with a port before one without, an
 * exact path before a prefix, a longer prefix before a shorter one, a path before none), then
 * the order given. Immutable once built, so one matcher may be read by any number of
 * callers. */
typedef struct evs__ob_matcher evs__ob_matcher;

/* Builds a matcher of n patterns (copied; n may be 0). Returns NULL when out of memory. */
evs__ob_matcher *evs__ob_matcher_new(const evs__ob_pattern *patterns, size_t n);
void evs__ob_matcher_free(evs__ob_matcher *m);

/* The index (in the array given to _new) of the most specific pattern matching host (as
 * evs__ob_authority_parse writes it) and port; with path NULL, any pattern for the host
 * matches whatever its path (the question at CONNECT time, before a request is seen);
 * otherwise the request path (path_len bytes, normal form, no query) must match too.
 * Returns -1 when nothing matches. */
int evs__ob_match(const evs__ob_matcher *m, const char *host, int port, const char *path,
                  size_t path_len);

#endif
