/*
 * libFuzzer target for the parsers and decryptors of enclave/crypto: ev: strings
 * (evs_ec_parse, evs_ec_decrypt), %EVENC files (evs_ec_decrypt_file), data-role metadata
 * (evs_ec_metadata_parse) and base64, with fixed test keys (those of shared/interop/vectors.json).
 *
 * The first input byte picks a mode. Raw modes feed the bytes as they are; patch modes XOR the
 * input into valid ciphertexts made at start-up (every version, typed, with roles, both file
 * versions), so the fuzzer reaches GCM, the quirk retry and the metadata parser instead of
 * stopping at the layout checks. Output buffers are allocated to the exact size the API asks for,
 * so AddressSanitizer sees any overrun. Invariants besides memory safety: outputs lie inside the
 * buffer, a role is always valid, an unmodified ciphertext always decrypts, and a failure leaves
 * no plaintext behind.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ienclave/crypto \
 *     enclave/crypto/ec_*.c fuzz/fuzz_ev_decode.c -lcrypto -lsecp256k1 -lz -o /tmp/fuzz_ev_decode
 * (or cmake -DEVS_FUZZ=ON with CC=clang, target fuzz_ev_decode)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "evs_crypto.h"

#define CHECK(x)                                                                                  \
  do {                                                                                            \
    if (!(x)) __builtin_trap();                                                                   \
  } while (0)

static const uint8_t k1_priv[32] = {
    0x47, 0x5f, 0x8f, 0x9c, 0x42, 0x3e, 0x38, 0xaa, 0x30, 0xb4, 0xe5, 0x61, 0xd6, 0x3a, 0x73, 0xee,
    0xcb, 0x85, 0xbb, 0x8c, 0x5e, 0x7f, 0x73, 0xb7, 0xf6, 0x42, 0x5d, 0x84, 0xfb, 0xeb, 0x5b, 0xa8};
static const uint8_t p256_priv[32] = {
    0x1f, 0xff, 0xd0, 0x3c, 0x8c, 0x74, 0xc4, 0xaf, 0x3a, 0x27, 0x97, 0x2b, 0x9a, 0xbe, 0xb6, 0xc2,
    0xec, 0xe5, 0x63, 0x98, 0x31, 0x68, 0x6c, 0x61, 0xde, 0xe9, 0x01, 0x59, 0x38, 0x57, 0x83, 0x6b};

#define NSTR 8
#define NFILE 3
static evs_ec_decryptor *dec;
static char *strs[NSTR];
static size_t str_len[NSTR];
static uint8_t *files[NFILE];
static size_t file_len[NFILE];

static uint64_t fixed_mono(void *arg) {
  (void)arg;
  return 1000;
}
static uint64_t fixed_unix(void *arg) {
  (void)arg;
  return 1795555289;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  evs_ec_key *keys[2] = {NULL, NULL};
  CHECK(evs_ec_key_from_private(EVS_EC_SECP256K1, k1_priv, &keys[0]) == EVS_EC_OK);
  CHECK(evs_ec_key_from_private(EVS_EC_P256, p256_priv, &keys[1]) == EVS_EC_OK);
  /* A small cache, so that evictions happen. */
  evs_ec_decryptor_config dc = {keys[0], keys[1], 4};
  CHECK(evs_ec_decryptor_new(&dc, &dec) == EVS_EC_OK);
  int si = 0, fi = 0;
  for (int c = 0; c < 2; c++)
    for (int kd = 0; kd < (c == 0 ? 2 : 1); kd++) {
      evs_ec_encryptor_config cfg;
      evs_ec_encryptor *e = NULL;
      evs_ec_encryptor_config_init(&cfg);
      cfg.curve = (evs_ec_curve)c;
      evs_ec_key_public(keys[c], cfg.app_public_key);
      /* secp256k1: the usual derivations, then a client with the KDF for everything (quirk). */
      cfg.k1_derivation = kd ? EVS_EC_K1_SHA256 : EVS_EC_K1_AUTO;
      cfg.clock.monotonic_ms = fixed_mono;
      cfg.clock.unix_seconds = fixed_unix;
      CHECK(evs_ec_encryptor_new(&cfg, &e) == EVS_EC_OK);
      static const struct {
        evs_ec_type t;
        const char *v, *role;
      } vals[] = {{EVS_EC_STRING, "Hello, Evervault!", NULL},
                  {EVS_EC_NUMBER, "-1.5e-7", "permit-all"},
                  {EVS_EC_BOOLEAN, "true", NULL},
                  {EVS_EC_STRING, "", "r"}};
      for (int v = 0; v < 4 && si < NSTR; v++, si++) {
        size_t cap = evs_ec_encrypt_bound(strlen(vals[v].v), vals[v].role ? 20 : 0);
        strs[si] = malloc(cap);
        CHECK(strs[si] && evs_ec_encrypt(e, vals[v].t, (const uint8_t *)vals[v].v,
                                         strlen(vals[v].v), vals[v].role, strs[si], cap,
                                         &str_len[si]) == EVS_EC_OK);
      }
      if (fi < NFILE) {
        static const char body[] = "small file\n";
        files[fi] = malloc(sizeof body - 1 + EVS_EC_FILE_OVERHEAD);
        CHECK(files[fi] && evs_ec_encrypt_file(e, (const uint8_t *)body, sizeof body - 1,
                                               files[fi], sizeof body - 1 + EVS_EC_FILE_OVERHEAD,
                                               &file_len[fi]) == EVS_EC_OK);
        fi++;
      }
      evs_ec_encryptor_free(e);
    }
  evs_ec_key_free(keys[0]);
  evs_ec_key_free(keys[1]);
  return 0;
}

static void check_plaintext(int r, const evs_ec_plaintext *p, const uint8_t *out, size_t cap) {
  if (r != EVS_EC_OK) return;
  CHECK(p->data >= out && p->data + p->len <= out + cap);
  CHECK(p->version <= EVS_EC_QKTC && p->type <= EVS_EC_BOOLEAN);
  if (p->has_metadata) CHECK(evs_ec_role_valid(p->meta.role, strlen(p->meta.role)));
}

static void try_string(const char *s, size_t len) {
  /* Exactly the room the documentation promises is enough (cap >= len), nothing more. */
  uint8_t *out = malloc(len ? len : 1);
  evs_ec_plaintext p;
  evs_ec_parsed parsed;
  if (!out) return;
  int pr = evs_ec_parse(s, len, &parsed);
  int r = evs_ec_decrypt(dec, s, len, out, len, &p);
  check_plaintext(r, &p, out, len);
  if (r == EVS_EC_OK) CHECK(pr == EVS_EC_OK);
  if (pr == EVS_EC_OK) CHECK(parsed.ct_len >= 16 && parsed.ct_len <= len);
  if (r == EVS_EC_EAUTH && pr == EVS_EC_OK)
    for (size_t i = 0; i < parsed.ct_len; i++) CHECK(out[i] == 0);
  free(out);
}

static void try_file(const uint8_t *f, size_t len) {
  size_t cap = len > EVS_EC_FILE_OVERHEAD ? len - EVS_EC_FILE_OVERHEAD : 1, olen = 0;
  uint8_t *out = malloc(cap);
  if (!out) return;
  int r = evs_ec_decrypt_file(dec, f, len, out, cap, &olen, NULL);
  if (r == EVS_EC_OK) CHECK(olen + EVS_EC_FILE_OVERHEAD == len && olen <= cap);
  free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t mode = data[0] % 6;
  const uint8_t *in = data + 1;
  size_t n = size - 1;
  switch (mode) {
    case 0: { /* raw ev: string (copied so the string has no readable bytes past n) */
      char *s = malloc(n ? n : 1);
      if (!s) return 0;
      memcpy(s, in, n);
      try_string(s, n);
      free(s);
      break;
    }
    case 1: /* raw %EVENC file */
      try_file(in, n);
      break;
    case 2:   /* a valid string, XOR-patched: pairs of (position, mask) */
    case 3: { /* a valid file, XOR-patched */
      if (n < 1) return 0;
      int is_file = mode == 3;
      size_t which = in[0] % (is_file ? NFILE : NSTR);
      size_t len = is_file ? file_len[which] : str_len[which];
      uint8_t *buf = malloc(len);
      if (!buf) return 0;
      memcpy(buf, is_file ? files[which] : (const uint8_t *)strs[which], len);
      int changed = 0;
      for (size_t i = 1; i + 1 < n; i += 2) {
        buf[in[i] % len] ^= in[i + 1];
        changed |= in[i + 1] != 0;
      }
      if (is_file) {
        try_file(buf, len);
      } else {
        try_string((const char *)buf, len);
      }
      if (!changed) {
        /* Unmodified: must decrypt. */
        uint8_t out[256];
        size_t olen;
        evs_ec_plaintext p;
        if (is_file)
          CHECK(evs_ec_decrypt_file(dec, buf, len, out, sizeof out, &olen, NULL) == EVS_EC_OK);
        else
          CHECK(evs_ec_decrypt(dec, (const char *)buf, len, out, sizeof out, &p) == EVS_EC_OK);
      }
      free(buf);
      break;
    }
    case 4: { /* metadata and base64 on their own */
      evs_ec_metadata m;
      size_t used = 0, olen = 0;
      uint8_t *copy = malloc(n ? n : 1);
      if (!copy) return 0;
      memcpy(copy, in, n);
      if (evs_ec_metadata_parse(copy, n, &m, &used) == EVS_EC_OK) {
        CHECK(used >= 2 && used <= n);
        CHECK(evs_ec_role_valid(m.role, strlen(m.role)));
      }
      uint8_t *dec64 = malloc(n ? n : 1);
      if (dec64 && evs_ec_b64_decode((const char *)copy, n, dec64, n, &olen) == EVS_EC_OK) {
        /* Canonical: re-encoding gives the input without its padding. */
        char *re = malloc(EVS_EC_B64_LEN(olen) + 1);
        if (re) {
          size_t rl = evs_ec_b64_encode(dec64, olen, re);
          CHECK(rl <= n && memcmp(re, copy, rl) == 0);
          for (size_t i = rl; i < n; i++) CHECK(copy[i] == '=');
          free(re);
        }
      }
      free(dec64);
      free(copy);
      break;
    }
    case 5: { /* a valid string's prefix spliced with fuzz bytes */
      if (n < 1) return 0;
      size_t which = in[0] % NSTR, keep = n > 1 ? in[1] % (str_len[which] + 1) : 0;
      size_t extra = n > 2 ? n - 2 : 0, len = keep + extra;
      char *s = malloc(len ? len : 1);
      if (!s) return 0;
      memcpy(s, strs[which], keep);
      if (extra) memcpy(s + keep, in + 2, extra);
      try_string(s, len);
      free(s);
      break;
    }
  }
  return 0;
}
