/*
 * Session ticket keys shared by the workers of a node (see tls_tickets.h).
 *
 * One anonymous shared mapping, made by the master before the first fork, holds a ring of
 * EVS__TICKET_KEYS keys. The newest seals new tickets; the older ones still open tickets (and
 * ask the client to take a fresh one). The master replaces the oldest every rotation interval,
 * so a ticket opens for between KEYS-1 and KEYS intervals and a key read from memory opens no
 * ticket older than that. Workers read under a sequence lock: the master is the only writer.
 * Keys come from getrandom, never touch the disk and are excluded from core dumps.
 */
#include "tls_tickets.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#define EVS__TICKET_KEYS 3

typedef struct ticket_key {
  unsigned char name[16];
  unsigned char aes[32];  /* AES-256-CBC, as OpenSSL's own ticket format uses */
  unsigned char hmac[32]; /* HMAC-SHA256 */
} ticket_key;

typedef struct ticket_region {
  uint64_t seq;            /* odd while the master writes */
  uint64_t rotated_ms;     /* when the newest key was made */
  uint32_t newest;         /* index of the key that seals */
  uint32_t count;          /* keys made so far, up to EVS__TICKET_KEYS */
  ticket_key keys[EVS__TICKET_KEYS];
} ticket_region;

static ticket_region *region;

static int fill_random(void *p, size_t n) {
  unsigned char *b = p;
  while (n) {
    ssize_t r = getrandom(b, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    b += r;
    n -= (size_t)r;
  }
  return 0;
}

/* Master only: the newest slot gets a fresh key. */
static int add_key(uint64_t now_ms) {
  ticket_key k;
  if (fill_random(&k, sizeof k) < 0) return -EIO;
  uint32_t next = region->count ? (region->newest + 1) % EVS__TICKET_KEYS : 0;
  __atomic_store_n(&region->seq, region->seq + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  region->keys[next] = k;
  region->newest = next;
  if (region->count < EVS__TICKET_KEYS) region->count++;
  region->rotated_ms = now_ms;
  __atomic_store_n(&region->seq, region->seq + 1, __ATOMIC_RELEASE);
  OPENSSL_cleanse(&k, sizeof k);
  return 0;
}

int evs__tls_tickets_init(uint64_t now_ms) {
  if (region) return 0;
  void *m = mmap(NULL, sizeof *region, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return -errno;
  madvise(m, sizeof *region, MADV_DONTDUMP);
  region = m;
  return add_key(now_ms);
}

void evs__tls_tickets_tick(uint64_t now_ms, uint64_t rotation_ms) {
  if (!region || rotation_ms == 0) return;
  if (now_ms - region->rotated_ms >= rotation_ms) add_key(now_ms);
}

/* A consistent copy of the key ring (workers). */
static void snapshot(ticket_region *out) {
  for (;;) {
    uint64_t s1 = __atomic_load_n(&region->seq, __ATOMIC_ACQUIRE);
    if (s1 & 1) continue;
    memcpy(out, region, sizeof *out);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&region->seq, __ATOMIC_RELAXED) == s1) return;
  }
}

static int mac_init(EVP_MAC_CTX *hctx, const unsigned char *key) {
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
      OSSL_PARAM_construct_end(),
  };
  return EVP_MAC_init(hctx, key, 32, params) == 1 ? 0 : -1;
}

/* OpenSSL's ticket key callback: enc = 1 seals with the newest key (returns 1); enc = 0 looks
 * the ticket's key up by name: 2 (OpenSSL then issues a fresh ticket) when it is older than the
 * newest, or always in TLS 1.3, 1 when it is the newest in TLS 1.2, 0 when unknown or expired
 * (full handshake). A TLS 1.3 client gets a new ticket on every resumption, as RFC 8446 C.4
 * advises (a ticket used twice links the connections): OpenSSL clients do not offer a used one
 * again, so without it every other connection of theirs was a full handshake. */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                     EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc) {
  if (!region) return 0; /* no key ring (tests without a master): no ticket, full handshakes */
  ticket_region r;
  snapshot(&r);
  int rc = -1;
  if (enc) {
    const ticket_key *k = &r.keys[r.newest];
    if (RAND_bytes(iv, 16) == 1 &&
        EVP_EncryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1 &&
        mac_init(hctx, k->hmac) == 0) {
      memcpy(key_name, k->name, 16);
      rc = 1;
    }
  } else {
    rc = 0;
    for (uint32_t i = 0; i < r.count; i++) {
      const ticket_key *k = &r.keys[i];
      if (memcmp(key_name, k->name, 16) != 0) continue;
      if (mac_init(hctx, k->hmac) == 0 &&
          EVP_DecryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1)
        rc = i == r.newest && SSL_version(ssl) < TLS1_3_VERSION ? 1 : 2;
      else
        rc = -1;
      break;
    }
  }
  OPENSSL_cleanse(&r, sizeof r);
  return rc;
}

void evs__tls_tickets_apply(SSL_CTX *ctx, int on) {
  /* Tickets only: a server-side session cache would be per worker, and the next connection of
   * the same client lands on any worker. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (!on) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 0);
    return;
  }
  SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx, 1);
  SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
}
