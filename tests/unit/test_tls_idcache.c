/* Unit tests for core/tls_idcache.c: the bounded LRU of identity contexts that tunnels' TLS
 * uses (stream.c). Lookups by (owner, key), recency order, the bound, and references: an
 * evicted context stays alive for whoever still holds it (an SSL that switched to it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <openssl/ssl.h>
#include <stdio.h>

#include "tls_idcache.h"

static int owner_a, owner_b;

static SSL_CTX *ctx_new(void) {
  SSL_CTX *c = SSL_CTX_new(TLS_server_method());
  assert_non_null(c);
  return c;
}

static void test_lookup_and_owner_scope(void **state) {
  (void)state;
  evs__tls_idcache *c = evs__tls_idcache_new(4);
  SSL_CTX *x = ctx_new(), *y = ctx_new();
  assert_int_equal(evs__tls_idcache_put(c, &owner_a, "leaf:a", x), 0);
  assert_int_equal(evs__tls_idcache_put(c, &owner_b, "leaf:a", y), 0);
  assert_ptr_equal(evs__tls_idcache_get(c, &owner_a, "leaf:a"), x);
  assert_ptr_equal(evs__tls_idcache_get(c, &owner_b, "leaf:a"), y);
  assert_null(evs__tls_idcache_get(c, &owner_a, "leaf:b"));
  /* The same key again replaces the entry (and drops its reference). */
  SSL_CTX *z = ctx_new();
  assert_int_equal(evs__tls_idcache_put(c, &owner_a, "leaf:a", z), 0);
  assert_ptr_equal(evs__tls_idcache_get(c, &owner_a, "leaf:a"), z);
  assert_int_equal(evs__tls_idcache_count(c), 2);
  assert_int_equal(evs__tls_idcache_evictions(c), 0);
  SSL_CTX_free(x);
  SSL_CTX_free(y);
  SSL_CTX_free(z);
  evs__tls_idcache_free(c);
  evs__tls_idcache_free(NULL);
}

static void test_bound_evicts_least_recently_used(void **state) {
  (void)state;
  evs__tls_idcache *c = evs__tls_idcache_new(3);
  SSL_CTX *ctx[5];
  char key[16];
  for (int i = 0; i < 3; i++) {
    ctx[i] = ctx_new();
    snprintf(key, sizeof key, "k%d", i);
    assert_int_equal(evs__tls_idcache_put(c, &owner_a, key, ctx[i]), 0);
    SSL_CTX_free(ctx[i]); /* the cache's reference keeps it */
  }
  assert_ptr_equal(evs__tls_idcache_get(c, &owner_a, "k0"), ctx[0]); /* k1 is now the oldest */
  ctx[3] = ctx_new();
  assert_int_equal(evs__tls_idcache_put(c, &owner_a, "k3", ctx[3]), 0);
  SSL_CTX_free(ctx[3]);
  assert_int_equal(evs__tls_idcache_count(c), 3);
  assert_int_equal(evs__tls_idcache_evictions(c), 1);
  assert_null(evs__tls_idcache_get(c, &owner_a, "k1"));
  assert_non_null(evs__tls_idcache_get(c, &owner_a, "k0"));
  assert_non_null(evs__tls_idcache_get(c, &owner_a, "k2"));
  assert_non_null(evs__tls_idcache_get(c, &owner_a, "k3"));
  /* Many more than the bound: it holds. */
  for (int i = 0; i < 1000; i++) {
    SSL_CTX *t = ctx_new();
    snprintf(key, sizeof key, "n%d", i);
    assert_int_equal(evs__tls_idcache_put(c, &owner_a, key, t), 0);
    SSL_CTX_free(t);
  }
  assert_int_equal(evs__tls_idcache_count(c), 3);
  assert_int_equal(evs__tls_idcache_evictions(c), 1001);
  assert_non_null(evs__tls_idcache_get(c, &owner_a, "n999"));
  evs__tls_idcache_free(c);
}

/* A connection that switched to a context keeps it when the cache lets go (ASan would see a
 * use after free otherwise). */
static void test_eviction_keeps_live_users(void **state) {
  (void)state;
  evs__tls_idcache *c = evs__tls_idcache_new(1);
  SSL_CTX *base = ctx_new(), *leaf = ctx_new();
  SSL_CTX_set_options(leaf, SSL_OP_NO_TICKET);
  assert_int_equal(evs__tls_idcache_put(c, &owner_a, "leaf", leaf), 0);
  SSL_CTX_free(leaf);
  SSL *ssl = SSL_new(base);
  assert_non_null(ssl);
  assert_ptr_equal(SSL_set_SSL_CTX(ssl, evs__tls_idcache_get(c, &owner_a, "leaf")), leaf);
  SSL_CTX *other = ctx_new();
  assert_int_equal(evs__tls_idcache_put(c, &owner_a, "other", other), 0); /* evicts "leaf" */
  SSL_CTX_free(other);
  assert_null(evs__tls_idcache_get(c, &owner_a, "leaf"));
  assert_ptr_equal(SSL_get_SSL_CTX(ssl), leaf);
  assert_true(SSL_CTX_get_options(SSL_get_SSL_CTX(ssl)) & SSL_OP_NO_TICKET);
  evs__tls_idcache_free(c);
  assert_true(SSL_CTX_get_options(SSL_get_SSL_CTX(ssl)) & SSL_OP_NO_TICKET);
  SSL_free(ssl);
  SSL_CTX_free(base);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lookup_and_owner_scope),
      cmocka_unit_test(test_bound_evicts_least_recently_used),
      cmocka_unit_test(test_eviction_keeps_live_users),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
