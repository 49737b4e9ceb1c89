/*
 * A bounded LRU cache of TLS server contexts built from plugins' identities (tls_idcache.c),
 * one per worker: a tunnel's TLS (stream_start_tls) asks its plugin for a certificate per SNI
 * name, and when the plugin names the identity (evs_tls_identity.cache_key) the PEM is parsed
 * and the key checked once, not on every handshake. Keys are scoped by owner (the plugin), so
 * two plugins' keys never collide.
 *
 * Contexts are reference-counted by OpenSSL: the cache holds one reference per entry, and an SSL
 * that switched to a context (SSL_set_SSL_CTX) holds its own, so evicting an entry never breaks
 * a connection that uses it. Loop thread only; no logging.
 */
#ifndef EVS_CORE_TLS_IDCACHE_H
#define EVS_CORE_TLS_IDCACHE_H

#include <openssl/ssl.h>
#include <stddef.h>

typedef struct evs__tls_idcache evs__tls_idcache;

/* A cache of at most cap entries (cap >= 1); NULL on allocation failure. */
evs__tls_idcache *evs__tls_idcache_new(size_t cap);
/* Drops every entry (their references) and the cache; accepts NULL. */
void evs__tls_idcache_free(evs__tls_idcache *c);
/* The context cached for (owner, key), now the most recently used; NULL if none. The reference
 * is borrowed: valid until the next put or free. */
SSL_CTX *evs__tls_idcache_get(evs__tls_idcache *c, const void *owner, const char *key);
/* Caches ctx under (owner, key) (taking a reference of its own; the caller keeps its own),
 * replacing an entry of the same key and evicting the least recently used entry beyond cap.
 * 0 or -ENOMEM (nothing changed). */
int evs__tls_idcache_put(evs__tls_idcache *c, const void *owner, const char *key, SSL_CTX *ctx);
/* Entries cached, and entries evicted since the cache was made. */
size_t evs__tls_idcache_count(const evs__tls_idcache *c);
size_t evs__tls_idcache_evictions(const evs__tls_idcache *c);

#endif
