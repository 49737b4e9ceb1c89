/*
 * tls_sni.h: the server name in a TLS ClientHello, read from the first bytes a client sends on
 * a TLS listener before any handshake, so that a plugin may take the connection as it is
 * (ABI 1.9 add_tls_passthrough: a cage that terminates its own TLS). Pure C, no allocation,
 * fuzzed (fuzz/fuzz_tls_sni.c). The listener reads at most EVS_SNI_MAX_HELLO bytes to decide.
 */
#ifndef EVS_CORE_TLS_SNI_H
#define EVS_CORE_TLS_SNI_H

#include <stddef.h>
#include <stdint.h>

#define EVS_SNI_MAX_HELLO (5 + 16384) /* one TLS record */

/* p[0..n) as received so far. Returns 1 with the host_name (lower-case, NUL-terminated) in
 * out[cap]; 0 for a complete ClientHello without one; -EAGAIN when more bytes are needed;
 * -EINVAL for anything that is not a ClientHello in one record, or a name that does not fit
 * or is not a plain host name. */
int evs__tls_sni_parse(const uint8_t *p, size_t n, char *out, size_t cap);

#endif
