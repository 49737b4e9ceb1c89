/*
 * ec_decryptor.c: decryption with an app's private keys, and the cache of derived AES keys.
 *
 * An SDK client reuses one ephemeral key for 15 s, so consecutive values mostly share it; the
 * ECDH (tens of microseconds) is then paid once and every further value costs an AES-GCM
 * decryption with an already keyed context. The cache is a hash table (SipHash with a random
 * key per decryptor, because the keys are chosen by whoever sends ciphertexts) over a fixed array
 * of entries threaded on an LRU list. An entry holds, for one (curve, ephemeral key): the ECDH
 * secret Z until both derivations are keyed, one keyed AES-GCM context per derivation used, and
 * the derivation that last authenticated (§3.2: an SDK client picks its secp256k1 derivation
 * once, so the next value from it needs the same one). Eviction and free wipe Z and reset the
 * contexts (OpenSSL cleanses the key schedule when it frees GCM state).
 *
 * Ciphertexts are decoded and decrypted in place in the caller's buffer; when the first
 * derivation fails authentication the buffer is decoded again for the second one, and on final
 * failure it is wiped, so no unauthenticated plaintext is left for the caller to misuse.
 */
#include <string.h>

#include <openssl/crypto.h>

#include "ec_internal.h"

#define DEFAULT_CAPACITY 4096
#define MAX_CAPACITY ((size_t)1 << 20)

struct cache_entry {
  struct cache_entry *hnext;      /* bucket chain */
  struct cache_entry *prev, *next;/* LRU list, most recent first */
  uint64_t hash;
  uint8_t curve;
  uint8_t have_z;
  uint8_t preferred;              /* evs_ec_kdf + 1 that last worked, 0: none yet */
  uint8_t eph[EVS_EC_PUB_LEN];
  uint8_t unc[EVS_EC_PUB_UNC_LEN];/* the ephemeral key uncompressed, for the KDF */
  uint8_t z[EVS_EC_SECRET_LEN];
  uint8_t keyed[2];
  EVP_CIPHER_CTX *gcm[2];         /* indexed by evs_ec_kdf */
};

struct evs_ec_decryptor {
  evs_ec_key *keys[2]; /* indexed by evs_ec_curve */
  size_t capacity, count;
  struct cache_entry *entries;    /* capacity entries; the first count are or were in use */
  struct cache_entry **buckets;
  size_t nbuckets;                /* a power of two */
  struct cache_entry *lru_head, *lru_tail;
  uint8_t sipkey[16];
  EVP_PKEY_CTX *p256_derive;      /* kept across misses (see evs__ec_ecdh_unc) */
  evs_ec_decryptor_stats stats;
};

static evs_ec_key *copy_key(const evs_ec_key *k, int *r) {
  evs_ec_key *c = NULL;
  *r = evs_ec_key_from_private(k->curve, k->priv, &c);
  return c;
}

int evs_ec_decryptor_new(const evs_ec_decryptor_config *cfg, evs_ec_decryptor **ret) {
  int r = EVS_EC_OK;
  if (!cfg || !ret || cfg->cache_capacity > MAX_CAPACITY) return EVS_EC_EINVAL;
  if ((cfg->secp256k1 && cfg->secp256k1->curve != EVS_EC_SECP256K1) ||
      (cfg->p256 && cfg->p256->curve != EVS_EC_P256))
    return EVS_EC_EINVAL;
  if (!evs__ec_aes_gcm()) return EVS_EC_ECRYPTO;
  evs_ec_decryptor *d = OPENSSL_zalloc(sizeof *d);
  if (!d) return EVS_EC_ENOMEM;
  d->capacity = cfg->cache_capacity ? cfg->cache_capacity : DEFAULT_CAPACITY;
  for (d->nbuckets = 16; d->nbuckets < 2 * d->capacity; d->nbuckets <<= 1) {
  }
  d->entries = OPENSSL_zalloc(d->capacity * sizeof *d->entries);
  d->buckets = OPENSSL_zalloc(d->nbuckets * sizeof *d->buckets);
  if (!d->entries || !d->buckets) r = EVS_EC_ENOMEM;
  if (r == EVS_EC_OK) r = evs__ec_random(d->sipkey, sizeof d->sipkey);
  if (r == EVS_EC_OK && cfg->secp256k1) d->keys[EVS_EC_SECP256K1] = copy_key(cfg->secp256k1, &r);
  if (r == EVS_EC_OK && cfg->p256) d->keys[EVS_EC_P256] = copy_key(cfg->p256, &r);
  if (r != EVS_EC_OK) {
    evs_ec_decryptor_free(d);
    return r;
  }
  *ret = d;
  return EVS_EC_OK;
}

static void entry_wipe(struct cache_entry *e) {
  OPENSSL_cleanse(e->z, sizeof e->z);
  for (int i = 0; i < 2; i++) {
    if (e->gcm[i]) EVP_CIPHER_CTX_reset(e->gcm[i]);
    e->keyed[i] = 0;
  }
  e->have_z = 0;
  e->preferred = 0;
}

void evs_ec_decryptor_free(evs_ec_decryptor *d) {
  if (!d) return;
  if (d->entries) {
    for (size_t i = 0; i < d->capacity; i++) {
      entry_wipe(&d->entries[i]);
      for (int k = 0; k < 2; k++) EVP_CIPHER_CTX_free(d->entries[i].gcm[k]);
    }
    OPENSSL_clear_free(d->entries, d->capacity * sizeof *d->entries);
  }
  OPENSSL_free(d->buckets);
  EVP_PKEY_CTX_free(d->p256_derive);
  evs_ec_key_free(d->keys[0]);
  evs_ec_key_free(d->keys[1]);
  OPENSSL_clear_free(d, sizeof *d);
}

void evs_ec_decryptor_get_stats(const evs_ec_decryptor *d, evs_ec_decryptor_stats *ret) {
  if (!d || !ret) return;
  *ret = d->stats;
  ret->entries = d->count;
}

/* ---- the LRU cache --------------------------------------------------------------------------- */

static uint64_t entry_hash(const evs_ec_decryptor *d, evs_ec_curve curve,
                           const uint8_t eph[EVS_EC_PUB_LEN]) {
  uint8_t buf[1 + EVS_EC_PUB_LEN];
  buf[0] = (uint8_t)curve;
  memcpy(buf + 1, eph, EVS_EC_PUB_LEN);
  return evs__ec_siphash(d->sipkey, buf, sizeof buf);
}

static void lru_unlink(evs_ec_decryptor *d, struct cache_entry *e) {
  if (e->prev) e->prev->next = e->next;
  else d->lru_head = e->next;
  if (e->next) e->next->prev = e->prev;
  else d->lru_tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push_front(evs_ec_decryptor *d, struct cache_entry *e) {
  e->prev = NULL;
  e->next = d->lru_head;
  if (d->lru_head) d->lru_head->prev = e;
  d->lru_head = e;
  if (!d->lru_tail) d->lru_tail = e;
}

static struct cache_entry *cache_find(evs_ec_decryptor *d, evs_ec_curve curve,
                                      const uint8_t eph[EVS_EC_PUB_LEN], uint64_t h) {
  /* Ephemeral keys are public: an ordinary comparison is fine. */
  for (struct cache_entry *e = d->buckets[h & (d->nbuckets - 1)]; e; e = e->hnext)
    if (e->hash == h && e->curve == curve && memcmp(e->eph, eph, EVS_EC_PUB_LEN) == 0) {
      if (d->lru_head != e) {
        lru_unlink(d, e);
        lru_push_front(d, e);
      }
      return e;
    }
  return NULL;
}

static void bucket_remove(evs_ec_decryptor *d, struct cache_entry *e) {
  struct cache_entry **pp = &d->buckets[e->hash & (d->nbuckets - 1)];
  while (*pp && *pp != e) pp = &(*pp)->hnext;
  if (*pp) *pp = e->hnext;
  e->hnext = NULL;
}

/* A new entry for (curve, eph) after a successful ECDH: a never-used slot, else the least
 * recently used one, wiped. */
static struct cache_entry *cache_insert(evs_ec_decryptor *d, evs_ec_curve curve,
                                        const uint8_t eph[EVS_EC_PUB_LEN], uint64_t h) {
  struct cache_entry *e;
  if (d->count < d->capacity) {
    e = &d->entries[d->count++];
  } else {
    e = d->lru_tail;
    lru_unlink(d, e);
    bucket_remove(d, e);
    entry_wipe(e);
    d->stats.evictions++;
  }
  e->hash = h;
  e->curve = (uint8_t)curve;
  memcpy(e->eph, eph, EVS_EC_PUB_LEN);
  size_t b = h & (d->nbuckets - 1);
  e->hnext = d->buckets[b];
  d->buckets[b] = e;
  lru_push_front(d, e);
  return e;
}

/* Keys the entry's context for one derivation (from Z), dropping Z once both are keyed. */
static int entry_key(struct cache_entry *e, evs_ec_kdf kdf) {
  uint8_t key[EVS_EC_SECRET_LEN];
  int r;
  if (e->keyed[kdf]) return EVS_EC_OK;
  if (!e->have_z) return EVS_EC_ECRYPTO;
  r = evs_ec_derive_key((evs_ec_curve)e->curve, kdf, e->z, e->unc, key);
  if (r == EVS_EC_OK) r = evs__ec_gcm_key(&e->gcm[kdf], 0, key);
  OPENSSL_cleanse(key, sizeof key);
  if (r != EVS_EC_OK) return r;
  e->keyed[kdf] = 1;
  /* Z is kept only while a derivation this curve may need is still unkeyed. */
  if (e->curve == EVS_EC_P256 || (e->keyed[0] && e->keyed[1])) {
    OPENSSL_cleanse(e->z, sizeof e->z);
    e->have_z = 0;
  }
  return EVS_EC_OK;
}

/* The cache entry for (key's curve, eph), computing the ECDH on a miss. */
static int lookup(evs_ec_decryptor *d, const evs_ec_key *key, const uint8_t eph[EVS_EC_PUB_LEN],
                  struct cache_entry **ret) {
  uint64_t h = entry_hash(d, key->curve, eph);
  struct cache_entry *e = cache_find(d, key->curve, eph, h);
  if (e) {
    d->stats.hits++;
    *ret = e;
    return EVS_EC_OK;
  }
  uint8_t z[EVS_EC_SECRET_LEN], unc[EVS_EC_PUB_UNC_LEN];
  int r = evs__ec_ecdh_unc(key, key->curve == EVS_EC_P256 ? &d->p256_derive : NULL, eph,
                           EVS_EC_PUB_LEN, z, unc);
  if (r != EVS_EC_OK) {
    OPENSSL_cleanse(z, sizeof z);
    return r;
  }
  d->stats.misses++;
  e = cache_insert(d, key->curve, eph, h);
  memcpy(e->z, z, sizeof z);
  memcpy(e->unc, unc, sizeof unc);
  e->have_z = 1;
  OPENSSL_cleanse(z, sizeof z);
  *ret = e;
  return EVS_EC_OK;
}

/* The derivations to try, in order: the one that last worked for this ephemeral key, else the
 * version's usual one; for secp256k1 (RFVC, S0lS, files v2) then the other (§3.2 quirk). */
static int kdf_order(const struct cache_entry *e, evs_ec_version v, evs_ec_kdf order[2]) {
  evs_ec_kdf usual = evs__ec_version_kdf(v);
  if (evs__ec_version_curve(v) == EVS_EC_P256) {
    order[0] = EVS_EC_KDF_SHA256;
    return 1;
  }
  order[0] = e->preferred ? (evs_ec_kdf)(e->preferred - 1) : usual;
  order[1] = order[0] == EVS_EC_KDF_RAW ? EVS_EC_KDF_SHA256 : EVS_EC_KDF_RAW;
  return 2;
}

/* ---- strings --------------------------------------------------------------------------------- */

int evs_ec_decrypt(evs_ec_decryptor *d, const char *s, size_t len, uint8_t *out, size_t cap,
                   evs_ec_plaintext *ret) {
  evs_ec_parsed p;
  evs_ec_plaintext pt;
  struct cache_entry *e;
  evs_ec_kdf order[2];
  uint8_t aad[EVS_EC_AAD_MAX], tag[EVS_EC_TAG_LEN];
  size_t aad_len, n = 0, pt_len;
  int r, tries;
  if (!d || !ret || (!out && cap) || (!s && len)) return EVS_EC_EINVAL;
  if ((r = evs__ec_parse(s, len, &p, 1)) != EVS_EC_OK) return r;
  const evs_ec_key *key = d->keys[p.curve];
  if (!key) return EVS_EC_ENOKEY;
  if (cap < p.ct_len) return EVS_EC_ESPACE;
  if ((r = lookup(d, key, p.eph, &e)) != EVS_EC_OK) return r;
  if ((r = evs_ec_aad(p.version, p.type, p.eph, key->pub, aad, &aad_len)) != EVS_EC_OK) return r;
  memset(&pt, 0, sizeof pt);
  pt_len = p.ct_len - EVS_EC_TAG_LEN;
  tries = kdf_order(e, p.version, order);
  r = EVS_EC_EAUTH;
  for (int t = 0; t < tries && r == EVS_EC_EAUTH; t++) {
    int kr = entry_key(e, order[t]);
    if (kr != EVS_EC_OK) {
      r = kr;
      break;
    }
    /* (Re)decode: a failed in-place attempt has overwritten the ciphertext. Checked by the
     * parse above (validate_ct), and cap >= its length. */
    n = evs__ec_b64_decode_valid(p.ct_b64, p.ct_b64_len, out);
    memcpy(tag, out + pt_len, EVS_EC_TAG_LEN);
    r = evs__ec_gcm_open(e->gcm[order[t]], p.iv, aad, aad_len, out, pt_len, tag, out);
    if (r == EVS_EC_OK) {
      if (t > 0) d->stats.fallbacks++;
      e->preferred = (uint8_t)(order[t] + 1);
      pt.kdf = order[t];
    }
  }
  if (r == EVS_EC_OK && p.has_role) {
    size_t used = 0;
    r = evs_ec_metadata_parse(out, pt_len, &pt.meta, &used);
    pt.data = out + used;
    pt.len = pt_len - used;
  } else {
    pt.data = out;
    pt.len = pt_len;
  }
  if (r != EVS_EC_OK) {
    /* Nothing unauthenticated (or unusable) is left for the caller. */
    OPENSSL_cleanse(out, n);
    return r;
  }
  pt.version = p.version;
  pt.curve = p.curve;
  pt.type = p.type;
  pt.has_metadata = p.has_role;
  *ret = pt;
  return EVS_EC_OK;
}

int evs_ec_decrypt_batch(evs_ec_decryptor *d, evs_ec_decrypt_field *fields, size_t n,
                         uint8_t *arena, size_t cap) {
  size_t used = 0;
  int done = 0;
  if (!d || (!fields && n) || (!arena && cap) || n > (size_t)INT32_MAX) return EVS_EC_EINVAL;
  for (size_t i = 0; i < n; i++) {
    evs_ec_decrypt_field *f = &fields[i];
    memset(&f->plain, 0, sizeof f->plain);
    f->status = evs_ec_decrypt(d, f->s, f->len, arena ? arena + used : NULL, cap - used,
                               &f->plain);
    if (f->status == EVS_EC_OK) {
      /* The next field starts after this one's GCM plaintext. */
      used = (size_t)(f->plain.data + f->plain.len - arena);
      done++;
    }
  }
  return done;
}

/* ---- files ----------------------------------------------------------------------------------- */

int evs_ec_decrypt_file(evs_ec_decryptor *d, const uint8_t *in, size_t len, uint8_t *out,
                        size_t cap, size_t *ret_len, evs_ec_kdf *ret_kdf) {
  struct cache_entry *e;
  evs_ec_kdf order[2];
  uint8_t aad[EVS_EC_AAD_MAX];
  size_t aad_len;
  int r, tries;
  if (!d || !ret_len || (!in && len) || (!out && cap)) return EVS_EC_EINVAL;
  if (len < EVS_EC_FILE_OVERHEAD) return EVS_EC_EFORMAT;
  size_t pt_len = len - EVS_EC_FILE_OVERHEAD;
  if (pt_len > EVS_EC_FILE_MAX_PLAINTEXT) return EVS_EC_ETOOBIG;
  if (memcmp(in, "%EVENC", 6) != 0) return EVS_EC_EFORMAT;
  if (in[6] != 0x02 && in[6] != 0x03) return EVS_EC_EVERSION;
  if (in[7] != EVS_EC_FILE_HEADER_LEN || in[8] != 0 || in[54] != 0) return EVS_EC_EFORMAT;
  uint32_t want = (uint32_t)in[len - 4] | (uint32_t)in[len - 3] << 8 |
                  (uint32_t)in[len - 2] << 16 | (uint32_t)in[len - 1] << 24;
  if (evs__ec_crc32(in, len - 4) != want) return EVS_EC_ECRC;
  evs_ec_version v = in[6] == 0x02 ? EVS_EC_FILE_V2 : EVS_EC_FILE_V3;
  const evs_ec_key *key = d->keys[evs__ec_version_curve(v)];
  if (!key) return EVS_EC_ENOKEY;
  if (cap < pt_len) return EVS_EC_ESPACE;
  const uint8_t *eph = in + 9, *iv = in + 42, *ct = in + EVS_EC_FILE_HEADER_LEN;
  if ((r = lookup(d, key, eph, &e)) != EVS_EC_OK) return r;
  if ((r = evs_ec_aad(v, EVS_EC_STRING, eph, key->pub, aad, &aad_len)) != EVS_EC_OK) return r;
  tries = kdf_order(e, v, order);
  r = EVS_EC_EAUTH;
  evs_ec_kdf kdf = order[0];
  for (int t = 0; t < tries && r == EVS_EC_EAUTH; t++) {
    int kr = entry_key(e, order[t]);
    if (kr != EVS_EC_OK) {
      r = kr;
      break;
    }
    r = evs__ec_gcm_open(e->gcm[order[t]], iv, aad, aad_len, ct, pt_len, ct + pt_len, out);
    if (r == EVS_EC_OK) {
      if (t > 0) d->stats.fallbacks++;
      e->preferred = (uint8_t)(order[t] + 1);
      kdf = order[t];
    }
  }
  if (r != EVS_EC_OK) {
    if (pt_len) OPENSSL_cleanse(out, pt_len);
    return r;
  }
  *ret_len = pt_len;
  if (ret_kdf) *ret_kdf = kdf;
  return EVS_EC_OK;
}
