/*
 * The identity context cache (see tls_idcache.h): a hash table with chaining for lookups and a
 * doubly-linked list in recency order for eviction, both over the same entries. The bucket
 * count is fixed at twice the capacity (rounded to a power of two), so chains stay short
 * without resizing.
 */
#include "tls_idcache.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
  const void *owner;
  char *key;
  uint64_t hash;
  SSL_CTX *ctx;
  struct entry *chain;       /* next in the bucket */
  struct entry *newer, *older;
} entry;

struct evs__tls_idcache {
  size_t cap, count, evictions;
  size_t mask;               /* buckets - 1 */
  entry **buckets;
  entry *newest, *oldest;
};

static uint64_t hash_of(const void *owner, const char *key) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  uintptr_t o = (uintptr_t)owner;
  for (size_t i = 0; i < sizeof o; i++) {
    h ^= (uint8_t)(o >> (8 * i));
    h *= 1099511628211ull;
  }
  for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
    h ^= *p;
    h *= 1099511628211ull;
  }
  return h;
}

evs__tls_idcache *evs__tls_idcache_new(size_t cap) {
  if (cap < 1) cap = 1;
  evs__tls_idcache *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  size_t n = 16;
  while (n < cap * 2) n <<= 1;
  c->buckets = calloc(n, sizeof *c->buckets);
  if (!c->buckets) {
    free(c);
    return NULL;
  }
  c->mask = n - 1;
  c->cap = cap;
  return c;
}

static void list_unlink(evs__tls_idcache *c, entry *e) {
  if (e->newer) e->newer->older = e->older;
  else c->newest = e->older;
  if (e->older) e->older->newer = e->newer;
  else c->oldest = e->newer;
  e->newer = e->older = NULL;
}

static void list_push_newest(evs__tls_idcache *c, entry *e) {
  e->older = c->newest;
  e->newer = NULL;
  if (c->newest) c->newest->newer = e;
  c->newest = e;
  if (!c->oldest) c->oldest = e;
}

static entry **find(evs__tls_idcache *c, const void *owner, const char *key, uint64_t h) {
  entry **at = &c->buckets[h & c->mask];
  while (*at && !((*at)->hash == h && (*at)->owner == owner && strcmp((*at)->key, key) == 0))
    at = &(*at)->chain;
  return at;
}

static void drop(evs__tls_idcache *c, entry **at) {
  entry *e = *at;
  *at = e->chain;
  list_unlink(c, e);
  SSL_CTX_free(e->ctx); /* the cache's reference; connections keep theirs */
  free(e->key);
  free(e);
  c->count--;
}

void evs__tls_idcache_free(evs__tls_idcache *c) {
  if (!c) return;
  while (c->oldest) drop(c, find(c, c->oldest->owner, c->oldest->key, c->oldest->hash));
  free(c->buckets);
  free(c);
}

SSL_CTX *evs__tls_idcache_get(evs__tls_idcache *c, const void *owner, const char *key) {
  entry *e = *find(c, owner, key, hash_of(owner, key));
  if (!e) return NULL;
  list_unlink(c, e);
  list_push_newest(c, e);
  return e->ctx;
}

int evs__tls_idcache_put(evs__tls_idcache *c, const void *owner, const char *key, SSL_CTX *ctx) {
  uint64_t h = hash_of(owner, key);
  entry *e = calloc(1, sizeof *e);
  if (!e || !(e->key = strdup(key)) || !SSL_CTX_up_ref(ctx)) {
    if (e) free(e->key);
    free(e);
    return -ENOMEM;
  }
  entry **at = find(c, owner, key, h);
  if (*at) drop(c, at);
  e->owner = owner;
  e->hash = h;
  e->ctx = ctx;
  at = &c->buckets[h & c->mask];
  e->chain = *at;
  *at = e;
  list_push_newest(c, e);
  c->count++;
  while (c->count > c->cap) {
    entry *old = c->oldest;
    drop(c, find(c, old->owner, old->key, old->hash));
    c->evictions++;
  }
  return 0;
}

size_t evs__tls_idcache_count(const evs__tls_idcache *c) { return c ? c->count : 0; }
size_t evs__tls_idcache_evictions(const evs__tls_idcache *c) { return c ? c->evictions : 0; }
