/*
 * TLS contexts (see tls.h). The SNI callback swaps the SSL_CTX of a handshake to the one whose
 * certificate matches the requested name; it never fails a handshake for an unknown name (the
 * default certificate answers, as browsers and curl expect).
 */
#include "tls.h"
#include "tls_idcache.h"
#include "tls_tickets.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TLS12_AEAD_CIPHERS                                                              \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

typedef struct sni_entry {
  char *name; /* exact, or ".suffix" for "*.suffix" */
  SSL_CTX *ctx;
} sni_entry;

struct evs__tls_server {
  SSL_CTX *default_ctx;
  char **roles; /* the listener's `serves`, for plugins' identities (ABI 1.9) */
  size_t nroles;
  sni_entry *entries;
  size_t nentries;
  SSL_CTX **owned;
  size_t nowned;
};

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  static const unsigned char h11[] = "\x08http/1.1";
  unsigned char *sel;
  if (SSL_select_next_proto(&sel, outlen, h11, sizeof h11 - 1, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* client offers only protocols we do not speak (h2) */
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

void evs__tls_apply_server_policy(SSL_CTX *ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_cipher_list(ctx, TLS12_AEAD_CIPHERS);
  SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
}

static SSL_CTX *server_ctx_load(const char *cert, const char *key, int tickets, char *err,
                                size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    snprintf(err, errlen, "cannot create TLS context");
    return NULL;
  }
  evs__tls_apply_server_policy(ctx);
  evs__tls_tickets_apply(ctx, tickets);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    snprintf(err, errlen, "cannot load certificate chain '%s'", cert);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    snprintf(err, errlen, "cannot load private key '%s': missing, unreadable, or it does not "
             "match certificate '%s'", key, cert);
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    snprintf(err, errlen, "private key '%s' does not match certificate '%s'", key, cert);
    goto fail;
  }
  return ctx;
fail:
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return NULL;
}

static int name_matches(const char *pattern, const char *name) {
  if (pattern[0] == '.') {
    size_t pl = strlen(pattern), nl = strlen(name);
    /* "*.example.com" covers exactly one label: a.example.com, not a.b.example.com. */
    if (nl <= pl || strcasecmp(name + nl - pl, pattern) != 0) return 0;
    return memchr(name, '.', nl - pl) == NULL;
  }
  return strcasecmp(pattern, name) == 0;
}

/* ---- plugins' identities on listeners (ABI 1.9 add_tls_identity) ----------------------- */

typedef struct tls_provider {
  const void *owner;
  char *role, *suffix; /* suffix with its leading '.' */
  evs_tls_identity_fn fn;
  evs_tls_passthrough_fn pass; /* a passthrough provider (fn NULL) */
  void *arg;
} tls_provider;

/* Per worker: registered in init, read during handshakes. */
static tls_provider *providers;
static size_t nproviders;
static evs__tls_idcache *provider_contexts;
static size_t provider_cache_cap = 1024;

static int provider_add(const void *owner, const char *role, const char *suffix,
                        evs_tls_identity_fn fn, evs_tls_passthrough_fn pass, void *arg) {
  if ((!fn && !pass) || !role || !role[0] || !suffix || !suffix[0] || suffix[0] == '.' ||
      strlen(suffix) > 253)
    return -EINVAL;
  tls_provider *np = realloc(providers, (nproviders + 1) * sizeof *np);
  if (!np) return -ENOMEM;
  providers = np;
  tls_provider *tp = &providers[nproviders];
  tp->owner = owner;
  tp->fn = fn;
  tp->pass = pass;
  tp->arg = arg;
  tp->role = strdup(role);
  tp->suffix = malloc(strlen(suffix) + 2);
  if (!tp->role || !tp->suffix) {
    free(tp->role);
    free(tp->suffix);
    return -ENOMEM;
  }
  tp->suffix[0] = '.';
  strcpy(tp->suffix + 1, suffix);
  nproviders++;
  return 0;
}

int evs__tls_provider_add(const void *owner, const char *role, const char *suffix,
                          evs_tls_identity_fn fn, void *arg) {
  return fn ? provider_add(owner, role, suffix, fn, NULL, arg) : -EINVAL;
}

int evs__tls_passthrough_add(const void *owner, const char *role, const char *suffix,
                             evs_tls_passthrough_fn fn, void *arg) {
  return fn ? provider_add(owner, role, suffix, NULL, fn, arg) : -EINVAL;
}

static int serves(const evs__tls_server *t, const char *role) {
  for (size_t r = 0; r < t->nroles; r++)
    if (!strcmp(t->roles[r], role)) return 1;
  return 0;
}

int evs__tls_server_sniffs(const evs__tls_server *t) {
  for (size_t i = 0; i < nproviders; i++)
    if (providers[i].pass && serves(t, providers[i].role)) return 1;
  return 0;
}

int evs__tls_passthrough_find(const evs__tls_server *t, const char *name,
                              evs_tls_passthrough_fn *ret_fn, void **ret_arg,
                              const void **ret_owner) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < nproviders; i++) {
    tls_provider *tp = &providers[i];
    size_t sl = strlen(tp->suffix);
    if (!tp->pass || nl <= sl || strcasecmp(name + nl - sl, tp->suffix) != 0 ||
        !serves(t, tp->role))
      continue;
    *ret_fn = tp->pass;
    *ret_arg = tp->arg;
    *ret_owner = tp->owner;
    return 1;
  }
  return 0;
}

void evs__tls_provider_drop(const void *owner) {
  size_t out = 0;
  for (size_t i = 0; i < nproviders; i++) {
    if (providers[i].owner == owner) {
      free(providers[i].role);
      free(providers[i].suffix);
    } else {
      providers[out++] = providers[i];
    }
  }
  nproviders = out;
}

void evs__tls_provider_cache_size(size_t cap) { provider_cache_cap = cap ? cap : 1; }

#define PROVIDER_KEY_MAX 255

/* 1 when a plugin's identity was set on ssl. */
static int provider_identity(evs__tls_server *t, SSL *ssl, const char *name) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < nproviders; i++) {
    tls_provider *tp = &providers[i];
    size_t sl = strlen(tp->suffix);
    if (!tp->fn || nl <= sl || strcasecmp(name + nl - sl, tp->suffix) != 0) continue;
    if (!serves(t, tp->role)) continue;
    evs_tls_identity id;
    memset(&id, 0, sizeof id);
    id.size = sizeof id;
    if (tp->fn(tp->arg, name, &id) < 0) continue;
    const char *key = id.cache_key;
    if (key && (!key[0] || strnlen(key, PROVIDER_KEY_MAX + 1) > PROVIDER_KEY_MAX)) key = NULL;
    if (key && !provider_contexts) provider_contexts = evs__tls_idcache_new(provider_cache_cap);
    SSL_CTX *ctx = key && provider_contexts
                       ? evs__tls_idcache_get(provider_contexts, tp->owner, key)
                       : NULL;
    if (ctx) {
      SSL_set_SSL_CTX(ssl, ctx);
      return 1;
    }
    ctx = evs__tls_ctx_from_pem(id.cert_pem, id.cert_pem_len, id.key_pem, id.key_pem_len);
    if (!ctx) return 0;
    if (key && provider_contexts) evs__tls_idcache_put(provider_contexts, tp->owner, key, ctx);
    SSL_set_SSL_CTX(ssl, ctx);
    SSL_CTX_free(ctx); /* the SSL (and the cache) hold their own references */
    return 1;
  }
  return 0;
}

static int sni_cb(SSL *ssl, int *al, void *arg) {
  (void)al;
  evs__tls_server *t = arg;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name) return SSL_TLSEXT_ERR_OK;
  if (nproviders && provider_identity(t, ssl, name)) return SSL_TLSEXT_ERR_OK;
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < t->nentries; i++) {
      int wildcard = t->entries[i].name[0] == '.';
      if (wildcard != pass) continue;
      if (name_matches(t->entries[i].name, name)) {
        SSL_set_SSL_CTX(ssl, t->entries[i].ctx);
        return SSL_TLSEXT_ERR_OK;
      }
    }
  }
  return SSL_TLSEXT_ERR_OK;
}

int evs__tls_server_new(const evs__settings *s, const evs__listener_conf *l,
                        evs__tls_server **ret, char *err, size_t errlen) {
  evs__tls_server *t = calloc(1, sizeof *t);
  if (!t) return -1;
  t->owned = calloc(s->ncerts + 1, sizeof *t->owned);
  size_t total_names = 0;
  for (size_t i = 0; i < s->ncerts; i++) total_names += s->certs[i].nserver_names;
  t->entries = calloc(total_names + 1, sizeof *t->entries);
  t->roles = calloc(l->nroles + 1, sizeof *t->roles);
  if (!t->owned || !t->entries || !t->roles) goto fail;
  for (size_t i = 0; i < l->nroles; i++)
    if (!(t->roles[t->nroles++] = strdup(l->roles[i]))) goto fail;
  t->default_ctx = server_ctx_load(l->cert_file, l->key_file, l->session_tickets, err, errlen);
  if (!t->default_ctx) goto fail;
  t->owned[t->nowned++] = t->default_ctx;
  SSL_CTX_set_tlsext_servername_callback(t->default_ctx, sni_cb);
  SSL_CTX_set_tlsext_servername_arg(t->default_ctx, t);
  for (size_t i = 0; i < s->ncerts; i++) {
    const evs__cert_conf *c = &s->certs[i];
    SSL_CTX *ctx = server_ctx_load(c->cert_file, c->key_file, l->session_tickets, err, errlen);
    if (!ctx) goto fail;
    t->owned[t->nowned++] = ctx;
    for (size_t j = 0; j < c->nserver_names; j++) {
      const char *n = c->server_names[j];
      t->entries[t->nentries].name = strdup(n[0] == '*' ? n + 1 : n);
      t->entries[t->nentries].ctx = ctx;
      if (!t->entries[t->nentries].name) goto fail;
      t->nentries++;
    }
  }
  *ret = t;
  return 0;
fail:
  evs__tls_server_free(t);
  return -1;
}

SSL_CTX *evs__tls_server_ctx(evs__tls_server *t) { return t->default_ctx; }

void evs__tls_server_free(evs__tls_server *t) {
  if (!t) return;
  for (size_t i = 0; i < t->nentries; i++) free(t->entries[i].name);
  for (size_t i = 0; i < t->nroles; i++) free(t->roles[i]);
  free(t->roles);
  for (size_t i = 0; i < t->nowned; i++) SSL_CTX_free(t->owned[i]);
  free(t->entries);
  free(t->owned);
  free(t);
}

SSL_CTX *evs__tls_ctx_from_pem(const char *cert_pem, size_t cert_len, const char *key_pem,
                               size_t key_len) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return NULL;
  evs__tls_apply_server_policy(ctx);
  evs__tls_tickets_apply(ctx, 1);
  BIO *cb = BIO_new_mem_buf(cert_pem, (int)cert_len);
  BIO *kb = BIO_new_mem_buf(key_pem, (int)key_len);
  X509 *x = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
  EVP_PKEY *k = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
  int ok = x && k && SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_use_PrivateKey(ctx, k) == 1;
  if (ok) {
    X509 *extra;
    while ((extra = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL)
      SSL_CTX_add_extra_chain_cert(ctx, extra);
  }
  ERR_clear_error();
  X509_free(x);
  EVP_PKEY_free(k);
  BIO_free(cb);
  BIO_free(kb);
  if (!ok) {
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/* ---- client contexts ------------------------------------------------------------------- */

typedef struct client_entry {
  char *key;
  SSL_CTX *ctx;
  struct client_entry *next;
} client_entry;

static client_entry *client_cache;

/* The passphrase of a client key, read from its file just before the key is loaded and wiped
 * right after. */
typedef struct key_pass {
  char s[1024];
  size_t len;
} key_pass;

/* OpenSSL's PEM password callback. Without a passphrase it refuses (-1) rather than letting
 * OpenSSL prompt on a terminal, which a server must never do. */
static int key_pass_cb(char *buf, int size, int rwflag, void *userdata) {
  const key_pass *p = userdata;
  (void)rwflag;
  if (!p || size < 0 || p->len > (size_t)size) return -1;
  memcpy(buf, p->s, p->len);
  return (int)p->len;
}

/* The first line of path, without its line end (LF or CRLF). 0, or -1 when unreadable, empty
 * or longer than the buffer. */
static int key_pass_read(const char *path, key_pass *p) {
  char raw[sizeof p->s + 2];
  size_t n = 0;
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  n = fread(raw, 1, sizeof raw, f);
  fclose(f);
  size_t line = 0;
  while (line < n && raw[line] != '\n') line++;
  int ok = line < sizeof p->s && (line < n || n < sizeof raw);
  if (ok && line > 0 && raw[line - 1] == '\r') line--;
  ok = ok && line > 0;
  if (ok) {
    memcpy(p->s, raw, line);
    p->len = line;
  }
  OPENSSL_cleanse(raw, sizeof raw);
  return ok ? 0 : -1;
}

SSL_CTX *evs__tls_client_ctx(const char *ca_file, const char *cert_file, const char *key_file,
                             const char *pass_file, int verify, char *err, size_t errlen) {
  char key[4096];
  snprintf(key, sizeof key, "%s|%s|%s|%s|%d", ca_file ? ca_file : "", cert_file ? cert_file : "",
           key_file ? key_file : "", pass_file ? pass_file : "", verify);
  for (client_entry *e = client_cache; e; e = e->next)
    if (strcmp(e->key, key) == 0) return e->ctx;

  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return NULL;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9);
  if (verify) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
      snprintf(err, errlen, "cannot load CA file '%s'", ca_file ? ca_file : "(system)");
      goto fail;
    }
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  }
  if (cert_file) {
    const char *kf = key_file ? key_file : cert_file;
    key_pass pass = {.len = 0};
    int pass_ok = !pass_file || key_pass_read(pass_file, &pass) == 0;
    SSL_CTX_set_default_passwd_cb(ctx, key_pass_cb);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, pass_file ? &pass : NULL);
    int cert_ok = pass_ok && SSL_CTX_use_certificate_chain_file(ctx, cert_file) == 1;
    int key_ok = cert_ok && SSL_CTX_use_PrivateKey_file(ctx, kf, SSL_FILETYPE_PEM) == 1;
    /* The context keeps the callback (it refuses without userdata), never the passphrase. */
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    OPENSSL_cleanse(&pass, sizeof pass);
    if (!pass_ok) {
      snprintf(err, errlen, "cannot read the passphrase of client key '%s' from '%s' (missing, "
               "unreadable, empty, or a first line over 1023 bytes)", kf, pass_file);
      goto fail;
    }
    if (!cert_ok || !key_ok || SSL_CTX_check_private_key(ctx) != 1) {
      if (cert_ok && !key_ok && pass_file)
        snprintf(err, errlen, "cannot load client key '%s' with the passphrase from '%s' "
                 "(wrong passphrase?)", kf, pass_file);
      else
        snprintf(err, errlen, "cannot load client certificate '%s'", cert_file);
      goto fail;
    }
  }
  client_entry *e = calloc(1, sizeof *e);
  if (!e || !(e->key = strdup(key))) {
    free(e);
    goto fail;
  }
  e->ctx = ctx;
  e->next = client_cache;
  client_cache = e;
  return ctx;
fail:
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return NULL;
}

void evs__tls_client_cache_clear(void) {
  while (client_cache) {
    client_entry *e = client_cache;
    client_cache = e->next;
    SSL_CTX_free(e->ctx);
    free(e->key);
    free(e);
  }
}
