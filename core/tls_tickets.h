/*
 * TLS session resumption across the workers of a node: TLS 1.3 tickets and TLS 1.2 session
 * tickets sealed with keys every worker shares and the master rotates (tls_tickets.c). A client
 * that opens a new connection per request (the SDK does) resumes on whichever worker accepts
 * it, skipping the certificate signature and key exchange of a full handshake.
 */
#ifndef EVS_CORE_TLS_TICKETS_H
#define EVS_CORE_TLS_TICKETS_H

#include <openssl/ssl.h>
#include <stdint.h>

/* Master, before the first fork: the shared key ring, with a first key. 0 or -errno. */
int evs__tls_tickets_init(uint64_t now_ms);
/* Master, on every turn of its loop: a new key once rotation_ms has passed (0: never). */
void evs__tls_tickets_tick(uint64_t now_ms, uint64_t rotation_ms);
/* A server context issues and accepts tickets (on) or none (off, or no key ring: -t, tests). */
/* A server context issues and accepts tickets (on) or none (off). Without a key ring (-t, tests
 * without a master) it issues none either. */
void evs__tls_tickets_apply(SSL_CTX *ctx, int on);

#endif
