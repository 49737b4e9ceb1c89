/*
 * TLS contexts. Servers: TLS 1.2 and 1.3 only, AEAD cipher suites only, ALPN "http/1.1", and a
 * certificate chosen per SNI name (exact names first, then "*.suffix" wildcards, else the
 * listener's default). Clients (upstreams): verification on unless turned off explicitly,
 * optional client certificate for mTLS (its key optionally encrypted, with a passphrase file),
 * contexts cached per (ca, cert, key, passphrase file, verify).
 */
#ifndef EVS_CORE_TLS_H
#define EVS_CORE_TLS_H

#include <openssl/ssl.h>

#include "conf.h"
#include "evserver/evs_plugin.h"

typedef struct evs__tls_server evs__tls_server;

/* Build the server contexts of one TLS listener: its default certificate plus every
 * [certificate] section. Returns 0 or -1 with err (file names only, never key material). */
int evs__tls_server_new(const evs__settings *s, const evs__listener_conf *l,
                        evs__tls_server **ret, char *err, size_t errlen);
SSL_CTX *evs__tls_server_ctx(evs__tls_server *t);
void evs__tls_server_free(evs__tls_server *t);

/* A client context (cached per ca, cert, key, pass_file and verify; owned by the cache). NULL
 * ca_file: the configured default or the system store. pass_file: NULL, or a file whose first
 * line is the passphrase of an encrypted key_file; it is read only while the key loads and
 * wiped after, never kept or put in err. Without it an encrypted key fails to load (OpenSSL
 * never prompts). Returns NULL with err (file names only) on failure. */
SSL_CTX *evs__tls_client_ctx(const char *ca_file, const char *cert_file, const char *key_file,
                             const char *pass_file, int verify, char *err, size_t errlen);
void evs__tls_client_cache_clear(void);
/* A server context from PEM buffers (plugins minting certificates per SNI). */
SSL_CTX *evs__tls_ctx_from_pem(const char *cert_pem, size_t cert_len, const char *key_pem,
                               size_t key_len);
void evs__tls_apply_server_policy(SSL_CTX *ctx);

/* ABI 1.9 add_tls_identity: plugins' certificates on TLS listeners by SNI suffix and role
 * (per worker; owner is the plugin's record, dropped when its init fails). The contexts built
 * from named identities are kept in an LRU of cap entries ([limits] tls_identity_cache). */
int evs__tls_provider_add(const void *owner, const char *role, const char *suffix,
                          evs_tls_identity_fn fn, void *arg);
void evs__tls_provider_drop(const void *owner);
/* ABI 1.9 add_tls_passthrough: the same registry. sniffs: some provider wants this listener's
 * ClientHellos read first; find: the provider for a SNI name (1), or 0. */
int evs__tls_passthrough_add(const void *owner, const char *role, const char *suffix,
                             evs_tls_passthrough_fn fn, void *arg);
int evs__tls_server_sniffs(const evs__tls_server *t);
int evs__tls_passthrough_find(const evs__tls_server *t, const char *name,
                              evs_tls_passthrough_fn *ret_fn, void **ret_arg,
                              const void **ret_owner);
void evs__tls_provider_cache_size(size_t cap);

#endif
