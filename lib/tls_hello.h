/*
 * tls_hello.h: the server name a TLS client asks for, read from the first bytes it sends (its
 * ClientHello, in the clear), before any handshake. The one reader of the project: the egress
 * proxy of function boxes and cages (plugins/function-runtime/egress_proxy.c) checks it against
 * the host the box asked to CONNECT to, so that a function allowed to reach one name on a
 * shared address (a CDN) cannot ask that address for another; a TLS listener with a passthrough
 * provider (core/tls_sni.c, ABI 1.9 add_tls_passthrough) routes a connection by it. Pure C, no
 * allocation, no state (lib/: linked by core and plugins alike); fuzzed (fuzz/fuzz_tls_sni.c).
 */
#ifndef EVS_TLS_HELLO_H
#define EVS_TLS_HELLO_H

#include <stddef.h>
#include <stdint.h>

/* The most bytes a ClientHello may take before we decide: one TLS record. */
#define EVS_TLS_HELLO_MAX (5 + 16384)

/* Reads the ClientHello at the start of p (n bytes, as received so far) and writes its
 * server_name (a host_name, lower-cased, NUL-terminated) into out (cap bytes). Returns
 *   1        a name was found;
 *   0        a complete ClientHello without server_name;
 *   -EAGAIN  the bytes so far are a valid beginning: read more (up to EVS_TLS_HELLO_MAX);
 *   -EINVAL  not a TLS ClientHello, or malformed, or split over records (we do not reassemble);
 *   -ENAMETOOLONG  the name does not fit in out.
 * evs_tls_hello_is_tls says whether p could be the beginning of a TLS handshake at all (its
 * first byte), to tell a TLS client from a plain one. */
int evs_tls_hello_sni(const uint8_t *p, size_t n, char *out, size_t cap);
int evs_tls_hello_is_tls(const uint8_t *p, size_t n);

#endif
