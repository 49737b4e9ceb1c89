/*
 * bench_crypto: single-core throughput of enclave/crypto, in fields per second.
 *
 *   encrypt, cached key   one encryptor, one ephemeral key for the whole run (the SDK's 15 s
 *                         window); each field: fresh IV, AES-256-GCM, base64, string assembly
 *   decrypt, cache hit    strings sharing one ephemeral key; each field: parse, base64, cache
 *                         lookup (SipHash), AES-256-GCM with the cached keyed context
 *   decrypt, cache miss   every string has its own ephemeral key; each field adds point
 *                         decoding, ECDH and the key derivation
 *   batch                 50 fields per call, as the enclave protocol sends them
 *   IV source             the encryptor's IV pool vs one RAND_bytes call per IV (the choice
 *                         documented in ec_ivpool.c)
 *
 * Each figure is the median of --runs runs (default 5) of about --seconds of CPU time each
 * (default 0.5), in fields per CPU second, like `openssl speed` (which counts user time); the
 * wall-clock rate is printed beside it, and equals it on an idle machine.
 * bench/crypto/run builds this and prints `openssl speed` beside it as the limit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "ec_internal.h"
#include "evs_crypto.h"

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int runs = 5;
static double seconds = 0.5;

#define DIE(...)                                                                                  \
  do {                                                                                            \
    fprintf(stderr, __VA_ARGS__);                                                                 \
    exit(1);                                                                                      \
  } while (0)

/* Runs op(arg, i) in growing batches until `seconds` of this thread's CPU time pass; returns
 * the median rate in fields per CPU second (what `openssl speed` reports too: it counts user
 * time) and stores the median wall-clock rate in *ret_wall. Each call of op counts as per_call
 * fields. */
typedef void (*op_fn)(void *arg, size_t i);
static double measure(op_fn op, void *arg, double per_call, double *ret_wall) {
  double cpu[64], wall[64];
  for (int r = 0; r < runs && r < 64; r++) {
    size_t n = 0, batch = 64;
    double c0 = clock_s(CLOCK_THREAD_CPUTIME_ID), w0 = clock_s(CLOCK_MONOTONIC), c, w;
    do {
      for (size_t i = 0; i < batch; i++) op(arg, n + i);
      n += batch;
      c = clock_s(CLOCK_THREAD_CPUTIME_ID);
      if (batch < 65536) batch *= 2;
    } while (c - c0 < seconds);
    w = clock_s(CLOCK_MONOTONIC);
    cpu[r] = (double)n * per_call / (c - c0);
    wall[r] = (double)n * per_call / (w - w0);
  }
  qsort(cpu, (size_t)runs, sizeof cpu[0], cmp_double);
  qsort(wall, (size_t)runs, sizeof wall[0], cmp_double);
  if (ret_wall) *ret_wall = wall[runs / 2];
  return cpu[runs / 2];
}

static void report(const char *curve, const char *what, double cpu, double wall) {
  printf("%-10s  %-32s %11.0f /s %8.0f ns   (wall clock %11.0f /s)\n", curve, what, cpu,
         1e9 / cpu, wall);
  fflush(stdout);
}

/* ---- operations ------------------------------------------------------------------------------ */

struct enc_ctx {
  evs_ec_encryptor *e;
  const char *role;
  char out[512];
};

static const char value[] = "4242424242424242"; /* a 16-digit card number */

static void op_encrypt(void *arg, size_t i) {
  struct enc_ctx *c = arg;
  size_t n;
  (void)i;
  if (evs_ec_encrypt(c->e, EVS_EC_STRING, (const uint8_t *)value, 16, c->role, c->out,
                     sizeof c->out, &n) != EVS_EC_OK)
    DIE("encrypt failed\n");
}

struct dec_ctx {
  evs_ec_decryptor *d;
  char **strs;
  size_t *lens;
  size_t count;
  uint8_t out[512];
};

static void op_decrypt(void *arg, size_t i) {
  struct dec_ctx *c = arg;
  evs_ec_plaintext p;
  size_t k = i % c->count;
  if (evs_ec_decrypt(c->d, c->strs[k], c->lens[k], c->out, sizeof c->out, &p) != EVS_EC_OK)
    DIE("decrypt failed\n");
}

#define BATCH 50
struct batch_ctx {
  evs_ec_encryptor *e;
  evs_ec_decryptor *d;
  evs_ec_encrypt_field ef[BATCH];
  evs_ec_decrypt_field df[BATCH];
  char arena[BATCH * 160];
  uint8_t darena[BATCH * 160];
};

static void op_encrypt_batch(void *arg, size_t i) {
  struct batch_ctx *c = arg;
  (void)i;
  if (evs_ec_encrypt_batch(c->e, c->ef, BATCH, c->arena, sizeof c->arena) != BATCH)
    DIE("encrypt batch failed\n");
}

static void op_decrypt_batch(void *arg, size_t i) {
  struct batch_ctx *c = arg;
  (void)i;
  if (evs_ec_decrypt_batch(c->d, c->df, BATCH, c->darena, sizeof c->darena) != BATCH)
    DIE("decrypt batch failed\n");
}

static void op_iv_pool(void *arg, size_t i) {
  uint8_t iv[12];
  (void)i;
  if (evs__ec_ivpool_get(arg, iv) != EVS_EC_OK) DIE("iv pool failed\n");
}

static void op_iv_rand(void *arg, size_t i) {
  uint8_t iv[12];
  (void)arg;
  (void)i;
  if (RAND_bytes(iv, sizeof iv) != 1) DIE("RAND_bytes failed\n");
}

/* ---- setup ----------------------------------------------------------------------------------- */

static evs_ec_encryptor *make_encryptor(const evs_ec_key *app) {
  evs_ec_encryptor_config cfg;
  evs_ec_encryptor *e = NULL;
  evs_ec_encryptor_config_init(&cfg);
  cfg.curve = evs_ec_key_curve(app);
  evs_ec_key_public(app, cfg.app_public_key);
  cfg.window_ms = 3600u * 1000u; /* the whole run in one window: "cached" */
  if (evs_ec_encryptor_new(&cfg, &e) != EVS_EC_OK) DIE("encryptor\n");
  return e;
}

/* count strings, each with a new ephemeral key (distinct = 1) or all with one. */
static void make_strings(evs_ec_encryptor *e, size_t count, int distinct, char ***ret_strs,
                         size_t **ret_lens) {
  char **strs = calloc(count, sizeof *strs);
  size_t *lens = calloc(count, sizeof *lens);
  if (!strs || !lens) DIE("oom\n");
  for (size_t i = 0; i < count; i++) {
    if (distinct) evs_ec_encryptor_rotate(e);
    strs[i] = malloc(256);
    if (!strs[i] || evs_ec_encrypt(e, EVS_EC_STRING, (const uint8_t *)value, 16, NULL, strs[i],
                                   256, &lens[i]) != EVS_EC_OK)
      DIE("encrypt\n");
  }
  *ret_strs = strs;
  *ret_lens = lens;
}

static void free_strings(char **strs, size_t *lens, size_t count) {
  for (size_t i = 0; i < count; i++) free(strs[i]);
  free(strs);
  free(lens);
}

static void bench_curve(evs_ec_curve curve, const char *name) {
  evs_ec_key *app = NULL;
  if (evs_ec_key_generate(curve, &app) != EVS_EC_OK) DIE("key\n");
  evs_ec_decryptor_config dc = {curve == EVS_EC_SECP256K1 ? app : NULL,
                                curve == EVS_EC_P256 ? app : NULL, 0};

  double wall;
  struct enc_ctx ec = {make_encryptor(app), NULL, {0}};
  double rate = measure(op_encrypt, &ec, 1, &wall);
  report(name, "encrypt, cached key", rate, wall);
  ec.role = "permit-all";
  rate = measure(op_encrypt, &ec, 1, &wall);
  report(name, "encrypt, cached key, data role", rate, wall);

  struct dec_ctx hit = {0};
  if (evs_ec_decryptor_new(&dc, &hit.d) != EVS_EC_OK) DIE("decryptor\n");
  hit.count = 1024;
  make_strings(ec.e, hit.count, 0, &hit.strs, &hit.lens);
  rate = measure(op_decrypt, &hit, 1, &wall);
  report(name, "decrypt, cache hit", rate, wall);

  struct batch_ctx *b = calloc(1, sizeof *b);
  if (!b) DIE("oom\n");
  b->e = ec.e;
  b->d = hit.d;
  for (int i = 0; i < BATCH; i++) {
    b->ef[i].type = EVS_EC_STRING;
    b->ef[i].data = (const uint8_t *)value;
    b->ef[i].len = 16;
    b->df[i].s = hit.strs[i];
    b->df[i].len = hit.lens[i];
  }
  rate = measure(op_encrypt_batch, b, BATCH, &wall);
  report(name, "encrypt, batches of 50", rate, wall);
  rate = measure(op_decrypt_batch, b, BATCH, &wall);
  report(name, "decrypt, batches of 50 (hits)", rate, wall);

  struct dec_ctx miss = {0};
  dc.cache_capacity = 16; /* far fewer entries than keys: every field misses */
  if (evs_ec_decryptor_new(&dc, &miss.d) != EVS_EC_OK) DIE("decryptor\n");
  miss.count = 4096;
  make_strings(ec.e, miss.count, 1, &miss.strs, &miss.lens);
  rate = measure(op_decrypt, &miss, 1, &wall);
  report(name, "decrypt, cache miss (ECDH)", rate, wall);
  evs_ec_decryptor_stats st;
  evs_ec_decryptor_get_stats(miss.d, &st);
  if (st.hits) DIE("miss benchmark hit the cache\n");

  free(b);
  free_strings(hit.strs, hit.lens, hit.count);
  free_strings(miss.strs, miss.lens, miss.count);
  evs_ec_decryptor_free(hit.d);
  evs_ec_decryptor_free(miss.d);
  evs_ec_encryptor_free(ec.e);
  evs_ec_key_free(app);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
      runs = atoi(argv[++i]);
    else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
      seconds = atof(argv[++i]);
    else
      DIE("usage: bench_crypto [--runs N] [--seconds S]\n");
  }
  if (runs < 1 || runs > 64 || seconds <= 0) DIE("bad --runs / --seconds\n");
  printf("median of %d runs of %.2f CPU seconds each, one thread, 16-byte values\n", runs, seconds);
  bench_curve(EVS_EC_P256, "P-256");
  bench_curve(EVS_EC_SECP256K1, "secp256k1");
  evs__ec_ivpool pool;
  double wall;
  if (evs__ec_ivpool_init(&pool) != EVS_EC_OK) DIE("pool\n");
  double rate = measure(op_iv_pool, &pool, 1, &wall);
  report("IV", "pool (RAND_bytes per 4 KiB)", rate, wall);
  rate = measure(op_iv_rand, NULL, 1, &wall);
  report("IV", "RAND_bytes per IV", rate, wall);
  evs__ec_ivpool_done(&pool);
  return 0;
}
