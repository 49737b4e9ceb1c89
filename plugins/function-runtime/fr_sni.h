/*
 * fr_sni.h: the server name a TLS client asks for, read from the first bytes it sends (its
 * ClientHello, in the clear). The egress proxy of function boxes checks it against the host the
 * box asked to CONNECT to, so that a function allowed to reach one name on a shared address
 * (a CDN) cannot ask that address for another. Pure C, no allocation; fuzzed
 * (fuzz/fuzz_fr_sni.c).
 */
#ifndef EVS_FR_SNI_H
#define EVS_FR_SNI_H

#include <stddef.h>
#include <stdint.h>

/* The most bytes a ClientHello may take before we decide: one TLS record. */
#define FR_SNI_MAX_HELLO (5 + 16384)

/* Reads the ClientHello at the start of p (n bytes, as received so far) and writes its
 * server_name (a host_name, lower-cased, NUL-terminated) into out (cap bytes). Returns
 *   1        a name was found;
 *   0        a complete ClientHello without server_name;
 *   -EAGAIN  the bytes so far are a valid beginning: read more (up to FR_SNI_MAX_HELLO);
 *   -EINVAL  not a TLS ClientHello, or malformed, or split over records (we do not reassemble);
 *   -ENAMETOOLONG  the name does not fit in out.
 * fr_sni_is_tls says whether p could be the beginning of a TLS handshake at all (its first
 * byte), to tell a TLS client from a plain one. */
int fr_sni_parse(const uint8_t *p, size_t n, char *out, size_t cap);
int fr_sni_is_tls(const uint8_t *p, size_t n);

#endif
