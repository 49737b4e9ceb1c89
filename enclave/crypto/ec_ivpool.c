/*
 * ec_ivpool.c: 12-byte GCM IVs without a system call per value.
 *
 * OpenSSL's RAND_bytes is already a user-space DRBG (CTR-DRBG over AES-256, seeded from
 * getrandom, reseeded by OpenSSL on its own schedule and when it notices a fork), but each call
 * pays for a DRBG generate step (an AES key schedule and state update) that costs more than the
 * AES-GCM of a short value. So each encryptor buys random bytes a page at a time and hands them
 * out 12 at a time (bench/crypto measures both ways).
 *
 * Fork safety: a child must never hand out the bytes its parent has already used or will use.
 * The page is mapped with MADV_WIPEONFORK (Linux >= 4.14), so a child sees it zeroed, and the
 * count of unused bytes kept in it reads 0: the child refills from its own (reseeded) DRBG.
 * Where madvise refuses, a pthread_atfork generation counter does the same job for fork().
 * Bytes are wiped as they are handed out, and the page is MADV_DONTDUMP.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ec_internal.h"

#define IVPAGE_SIZE 4096

struct evs__ec_ivpage {
  uint32_t avail;      /* unused bytes at the end of buf; 0 after a fork (wiped page) */
  uint32_t generation; /* fork generation when buf was filled */
  uint8_t buf[IVPAGE_SIZE - 8 - (IVPAGE_SIZE - 8) % EVS_EC_IV_LEN];
};

static atomic_uint fork_generation = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void) {
  atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
}

static void register_atfork(void) {
  (void)pthread_atfork(NULL, NULL, on_fork_child);
}

int evs__ec_ivpool_init(evs__ec_ivpool *pool) {
  pthread_once(&atfork_once, register_atfork);
  void *p = mmap(NULL, IVPAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return EVS_EC_ENOMEM;
#ifdef MADV_WIPEONFORK
  (void)madvise(p, IVPAGE_SIZE, MADV_WIPEONFORK);
#endif
#ifdef MADV_DONTDUMP
  (void)madvise(p, IVPAGE_SIZE, MADV_DONTDUMP);
#endif
  pool->page = p;
  return EVS_EC_OK;
}

int evs__ec_ivpool_get(evs__ec_ivpool *pool, uint8_t iv[EVS_EC_IV_LEN]) {
  struct evs__ec_ivpage *pg = pool->page;
  unsigned gen = atomic_load_explicit(&fork_generation, memory_order_relaxed);
  if (pg->avail < EVS_EC_IV_LEN || pg->generation != gen) {
    pg->avail = 0;
    if (evs__ec_random(pg->buf, sizeof pg->buf) != EVS_EC_OK) {
      OPENSSL_cleanse(pg->buf, sizeof pg->buf);
      return EVS_EC_ERANDOM;
    }
    pg->generation = gen;
    pg->avail = sizeof pg->buf;
  }
  uint8_t *src = pg->buf + pg->avail - EVS_EC_IV_LEN;
  memcpy(iv, src, EVS_EC_IV_LEN);
  OPENSSL_cleanse(src, EVS_EC_IV_LEN);
  pg->avail -= EVS_EC_IV_LEN;
  return EVS_EC_OK;
}

void evs__ec_ivpool_done(evs__ec_ivpool *pool) {
  if (!pool || !pool->page) return;
  OPENSSL_cleanse(pool->page, IVPAGE_SIZE);
  munmap(pool->page, IVPAGE_SIZE);
  pool->page = NULL;
}
