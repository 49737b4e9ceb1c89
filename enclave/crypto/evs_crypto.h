/*
 * evs_crypto.h: the pure cryptography of Evervault Encryption, for the enclave process.
 *
 * This library implements what the Evervault SDKs and E3 agree on (shared/interop/PROTOCOL.md
 * §3-§4): `ev:` strings of the four versions (RFVC, S0lS, Tk9D, QkTC), `%EVENC` files, the two
 * curves (secp256k1 through libsecp256k1, prime256v1 through OpenSSL 3), the two key derivations
 * (raw ECDH and the SHA-256 concat KDF over an explicit-parameters SPKI), data-role metadata,
 * plus Shamir's Secret Sharing for the App Master Key. It has no I/O, no logging and no global
 * mutable state visible to the caller; it links OpenSSL (libcrypto), libsecp256k1 and zlib only.
 * Keys live in the enclave process (see enclave/README once it exists); nothing in core/ or
 * plugins/ may include this header (docs/ARCHITECTURE.md dependency rules).
 *
 * Objects:
 *   evs_ec_key        an app (or test) EC key pair: private scalar + compressed public key.
 *   evs_ec_encryptor  encrypts values and files to one app public key, reusing one ephemeral key
 *                     pair per time window (15 s by default, like the SDK) and one derived AES
 *                     key per window.
 *   evs_ec_decryptor  decrypts with an app's private keys, caching derived AES keys in a bounded
 *                     LRU keyed by (curve, ephemeral public key); each entry keeps one keyed
 *                     AES-GCM context per derivation it has used (see "Key cache" below).
 *
 * Threading: functions without an object are thread-safe. An encryptor or decryptor must be used
 * by one thread at a time (the enclave gives each worker thread its own); evs_ec_key objects are
 * read-only after creation and may be shared between threads and objects.
 *
 * Errors: every function returns EVS_EC_OK (0) or a negative evs_ec_status; evs_ec_strerror()
 * names it. Error strings never contain data, keys or plaintext. Outputs (ret_*) are written only
 * on success, except where noted for batch calls. Malformed input never crashes; every parser is
 * a libFuzzer target (fuzz/fuzz_ev_decode.c).
 *
 * What the caller does (not this library):
 *   - String trimming (§3.3): the SDK trims strings with String.prototype.trim before encrypting;
 *     evs_ec_encrypt encrypts the bytes it is given, so a server-side encrypt API that must match
 *     the SDK trims first. Numbers are given as their JSON text (JSON.stringify rules), booleans
 *     as "true"/"false". Decryption returns text and its type tag; converting a :number text to a
 *     JSON number (and refusing non-numbers) is the caller's job.
 *   - Authorisation by data role: decryption returns the role found in the metadata; checking it
 *     against policy is the caller's.
 *
 * IV generation: each encryptor draws IVs from a 4 KiB buffer filled by OpenSSL's RAND_bytes
 * (a CTR-DRBG in user space, seeded from getrandom and reseeded by OpenSSL on its own schedule
 * and after fork). The buffer is one mmap'd page marked MADV_WIPEONFORK (and MADV_DONTDUMP), and
 * a pthread_atfork generation counter is checked as well, so a forked child never reuses the
 * parent's buffered bytes; used bytes are wiped as they are handed out. bench/crypto measures
 * this against one RAND_bytes call per value.
 *
 * Properties of the SDK's format that this library inherits (it must stay compatible):
 *   - RFVC / Tk9D do not authenticate the :number / :boolean tag (§3.4): a relabelled value
 *     decrypts and comes back with the new type. S0lS / QkTC bind it in the AAD.
 *   - RFVC and version-2 files keyed with raw ECDH authenticate nothing but the ciphertext: the
 *     ephemeral key with its other parity byte (02 <-> 03, the negated point) gives the same Z,
 *     so that twin string decrypts to the same value. It changes no plaintext; do not use the
 *     ciphertext string itself as an identity (e.g. a dedup or replay key) without normalising.
 *   - For RFVC, S0lS and version-2 files a second derivation is tried when the first fails
 *     (§3.2 quirk), so a forgery has two chances at a 128-bit tag instead of one.
 *
 * Key cache: a decryptor caches, per (curve, ephemeral key), the ECDH secret Z and lazily one
 * keyed AES-GCM context per derivation (raw, KDF). This is the cache "keyed by (curve, ephemeral
 * key, derivation)" with the derivation as a slot of the entry: for secp256k1 the SDK quirk
 * (§3.2) means a value may need the other derivation, which then costs a SHA-256 instead of a
 * second ECDH, and the entry remembers which derivation last succeeded so later values from the
 * same SDK client try it first. Entries are wiped (OPENSSL_cleanse, EVP_CIPHER_CTX_free) when
 * evicted and when the decryptor is freed.
 */
#ifndef EVS_CRYPTO_H
#define EVS_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ---------------------------------------------------------------------------- */

typedef enum evs_ec_status {
  EVS_EC_OK = 0,
  EVS_EC_EINVAL = -1,    /* bad argument: NULL pointer, unknown enum value, bad size */
  EVS_EC_ENOMEM = -2,    /* allocation failed */
  EVS_EC_ESPACE = -3,    /* the output buffer is too small */
  EVS_EC_EFORMAT = -4,   /* not a well-formed ev: string / %EVENC file (layout, lengths) */
  EVS_EC_EVERSION = -5,  /* unknown version tag or file version */
  EVS_EC_ETYPE = -6,     /* unknown datatype tag */
  EVS_EC_EBASE64 = -7,   /* a field is not valid base64 */
  EVS_EC_EPOINT = -8,    /* a public key is not a valid point of the curve */
  EVS_EC_ENOKEY = -9,    /* the decryptor has no private key for this curve */
  EVS_EC_EAUTH = -10,    /* AES-GCM authentication failed (wrong key, tampered data) */
  EVS_EC_ECRC = -11,     /* %EVENC CRC-32 mismatch */
  EVS_EC_ETOOBIG = -12,  /* over a size limit (files: 25 MiB of plaintext) */
  EVS_EC_EROLE = -13,    /* data role does not match ^[a-z0-9-]{1,20}$ */
  EVS_EC_EMETADATA = -14,/* authenticated plaintext, but its metadata prefix is malformed */
  EVS_EC_EKEY = -15,     /* invalid private key (zero or >= the group order) */
  EVS_EC_ERANDOM = -16,  /* the random generator failed */
  EVS_EC_ECRYPTO = -17,  /* unexpected failure inside OpenSSL or libsecp256k1 */
  EVS_EC_ESHARES = -18,  /* Shamir: too few, duplicate, inconsistent or malformed shares */
  EVS_EC_EROLEFILE = -19,/* data roles are not supported for files */
} evs_ec_status;

/* A fixed, data-free description of a status ("authentication failed", ...); never NULL. */
const char *evs_ec_strerror(int status);
/* A stable short code for a status ("auth", "format", ...), for error bodies and metrics. */
const char *evs_ec_status_name(int status);

/* ---- constants and small types --------------------------------------------------------------- */

typedef enum evs_ec_curve { EVS_EC_SECP256K1 = 0, EVS_EC_P256 = 1 } evs_ec_curve;

/* The datatype code used in the role AAD (§3.4): string 0, number 1, boolean 2. */
typedef enum evs_ec_type { EVS_EC_STRING = 0, EVS_EC_NUMBER = 1, EVS_EC_BOOLEAN = 2 } evs_ec_type;

typedef enum evs_ec_version {
  EVS_EC_RFVC = 0, /* secp256k1, no role; AAD none;            raw ECDH (normally) */
  EVS_EC_S0LS = 1, /* secp256k1, role;    AAD role (nibble 0);   SHA-256 KDF (normally) */
  EVS_EC_TK9D = 2, /* prime256v1, no role; AAD app public key;  SHA-256 KDF */
  EVS_EC_QKTC = 3, /* prime256v1, role;   AAD role (nibble 1);   SHA-256 KDF */
  EVS_EC_FILE_V2 = 4, /* %EVENC 02: secp256k1, AAD none, raw ECDH (normally) */
  EVS_EC_FILE_V3 = 5, /* %EVENC 03: prime256v1, AAD app public key, SHA-256 KDF */
} evs_ec_version;

typedef enum evs_ec_kdf {
  EVS_EC_KDF_RAW = 0,    /* AES key = Z (the ECDH x-coordinate) */
  EVS_EC_KDF_SHA256 = 1, /* AES key = SHA-256(Z || 00000001 || SPKI(ephemeral, explicit params)) */
} evs_ec_kdf;

#define EVS_EC_PRIV_LEN 32
#define EVS_EC_PUB_LEN 33       /* compressed SEC1 */
#define EVS_EC_PUB_UNC_LEN 65   /* uncompressed SEC1 */
#define EVS_EC_SECRET_LEN 32    /* ECDH x-coordinate, AES-256 key */
#define EVS_EC_IV_LEN 12
#define EVS_EC_TAG_LEN 16
#define EVS_EC_ROLE_MAX 20
#define EVS_EC_AAD_MAX 67
/* The SDK's EV_MAX_FILE_SIZE_IN_MB default: plaintext of at most 25 MiB. */
#define EVS_EC_FILE_MAX_PLAINTEXT ((size_t)25 * 1024 * 1024)
/* %EVENC overhead: 55-byte header, 16-byte tag, 4-byte CRC. */
#define EVS_EC_FILE_HEADER_LEN 55
#define EVS_EC_FILE_OVERHEAD 75
/* The encryption origin the Node SDK writes into metadata ("eo": 5). */
#define EVS_EC_ORIGIN_NODE_SDK 5

/* ---- base64 (standard alphabet) -------------------------------------------------------------- */

/* Characters evs_ec_b64_encode writes for len bytes (unpadded, no NUL). */
#define EVS_EC_B64_LEN(len) (((len) / 3) * 4 + (((len) % 3) ? ((len) % 3) + 1 : 0))

/* Encodes len bytes as unpadded standard base64 (as the SDK emits) into out, which must hold
 * EVS_EC_B64_LEN(len) characters; no NUL is written. Returns the number of characters. */
size_t evs_ec_b64_encode(const uint8_t *in, size_t len, char *out);

/* Decodes standard base64, padded or unpadded. Refuses (EVS_EC_EBASE64) any other character,
 * '=' except as 1-2 final padding characters that complete a 4-character group, a dangling
 * single character, and non-zero unused bits in the last character (non-canonical encodings),
 * so one byte string has exactly two accepted spellings (padded, unpadded). Writes at most cap
 * bytes (EVS_EC_ESPACE if more are needed). */
int evs_ec_b64_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *ret_len);

/* ---- keys, points, ECDH, KDF ----------------------------------------------------------------- */

typedef struct evs_ec_key evs_ec_key;

/* A fresh key pair from the CSPRNG. *ret_key is owned by the caller (evs_ec_key_free). */
int evs_ec_key_generate(evs_ec_curve curve, evs_ec_key **ret_key);
/* A key pair from a 32-byte big-endian private scalar; EVS_EC_EKEY unless 1 <= d < n. */
int evs_ec_key_from_private(evs_ec_curve curve, const uint8_t priv[EVS_EC_PRIV_LEN],
                            evs_ec_key **ret_key);
/* Wipes and frees; accepts NULL. */
void evs_ec_key_free(evs_ec_key *key);
evs_ec_curve evs_ec_key_curve(const evs_ec_key *key);
/* The 33-byte compressed public key, the form served to SDKs (§2.1) and used in the AAD. */
void evs_ec_key_public(const evs_ec_key *key, uint8_t ret_pub[EVS_EC_PUB_LEN]);
/* Copies the private scalar out (to be wrapped under the App Master Key); wipe it after use. */
void evs_ec_key_private(const evs_ec_key *key, uint8_t ret_priv[EVS_EC_PRIV_LEN]);

/* Decodes and validates a SEC1 point (02/03 + X compressed, 04 + X + Y uncompressed; hybrid and
 * infinity encodings are refused): the coordinates must be field elements and the point on the
 * curve (both curves have cofactor 1, so that makes it a valid public key). Either output may
 * be NULL. EVS_EC_EPOINT if invalid. */
int evs_ec_point_decode(evs_ec_curve curve, const uint8_t *in, size_t len,
                        uint8_t ret_compressed[EVS_EC_PUB_LEN],
                        uint8_t ret_uncompressed[EVS_EC_PUB_UNC_LEN]);

/* Z = the 32-byte big-endian x-coordinate of priv * peer (leading zeros kept). peer is decoded
 * and validated as in evs_ec_point_decode. Wipe ret_z after use. */
int evs_ec_ecdh(const evs_ec_key *priv, const uint8_t *peer, size_t peer_len,
                uint8_t ret_z[EVS_EC_SECRET_LEN]);

/* The constant DER prefix of the explicit-parameters SubjectPublicKeyInfo (246 bytes for
 * secp256k1, 270 for prime256v1, ending 03 42 00); the 65-byte uncompressed point follows it. */
const uint8_t *evs_ec_spki_prefix(evs_ec_curve curve, size_t *ret_len);
#define EVS_EC_SPKI_MAX 335
/* Writes prefix || uncompressed point (311 / 335 bytes) to out (>= EVS_EC_SPKI_MAX). */
size_t evs_ec_spki(evs_ec_curve curve, const uint8_t eph_uncompressed[EVS_EC_PUB_UNC_LEN],
                   uint8_t *out);

/* The AES key from Z (§3.2): raw copies Z; SHA-256 hashes Z || 00000001 || SPKI(eph). */
int evs_ec_derive_key(evs_ec_curve curve, evs_ec_kdf kdf, const uint8_t z[EVS_EC_SECRET_LEN],
                      const uint8_t eph_uncompressed[EVS_EC_PUB_UNC_LEN],
                      uint8_t ret_key[EVS_EC_SECRET_LEN]);

/* The additional authenticated data of a version (§3.4) into out (>= EVS_EC_AAD_MAX bytes);
 * *ret_len is 0 for RFVC and version-2 files, 33 for Tk9D and version-3 files, 67 for S0lS and
 * QkTC (config byte (type << 4) | (0 for S0lS, 1 for QkTC), ephemeral key, app key). */
int evs_ec_aad(evs_ec_version version, evs_ec_type type, const uint8_t eph[EVS_EC_PUB_LEN],
               const uint8_t app_pub[EVS_EC_PUB_LEN], uint8_t *out, size_t *ret_len);

/* ---- data-role metadata (§3.5) --------------------------------------------------------------- */

/* 1 when role[0..len) matches ^[a-z0-9-]{1,20}$, else 0. */
int evs_ec_role_valid(const char *role, size_t len);

typedef struct evs_ec_metadata {
  char role[EVS_EC_ROLE_MAX + 1]; /* "dr", NUL-terminated; validated like evs_ec_role_valid */
  uint64_t origin;                /* "eo": encryption origin (5 = Node SDK) */
  uint64_t time;                  /* "et": encryption time, Unix seconds */
} evs_ec_metadata;

/* The MessagePack metadata the SDK writes: {"dr": role, "eo": origin, "et": uint32 time}.
 * out must hold 64 bytes; returns the length, or a negative status (EVS_EC_EROLE). */
int evs_ec_metadata_encode(const char *role, uint64_t origin, uint32_t time, uint8_t *out);

/* Parses "u16le length || MessagePack map" at the start of a role plaintext. The map must have
 * the keys dr (string), eo and et (unsigned integers); unknown keys with scalar values are
 * skipped. *ret_consumed is 2 + the metadata length (where the value starts). */
int evs_ec_metadata_parse(const uint8_t *in, size_t len, evs_ec_metadata *ret_meta,
                          size_t *ret_consumed);

/* ---- ev: strings without keys ---------------------------------------------------------------- */

/* The result of parsing an ev: string's layout (no decryption). Pointers are into the input. */
typedef struct evs_ec_parsed {
  evs_ec_version version;
  evs_ec_curve curve;
  evs_ec_type type;
  int has_role;                     /* S0lS, QkTC */
  uint8_t iv[EVS_EC_IV_LEN];
  uint8_t eph[EVS_EC_PUB_LEN];      /* as carried (compressed), not yet validated as a point */
  const char *ct_b64;               /* base64 of ciphertext || tag */
  size_t ct_b64_len;
  size_t ct_len;                    /* decoded length, >= EVS_EC_TAG_LEN */
} evs_ec_parsed;

/* Splits and checks `ev:<VER>[:<type>]:<iv>:<eph>:<ct||tag>:$`: 6 or 7 ':'-fields, the version
 * tag, the type tag (number, boolean), a 12-byte IV, a 33-byte ephemeral key, a ciphertext of at
 * least the tag, each field valid base64. */
int evs_ec_parse(const char *s, size_t len, evs_ec_parsed *ret);

/* ---- encryptor ------------------------------------------------------------------------------- */

typedef struct evs_ec_clock {
  /* Milliseconds of a monotonic clock, for the key window; NULL: CLOCK_MONOTONIC. */
  uint64_t (*monotonic_ms)(void *arg);
  /* Unix seconds, for the metadata "et" field; NULL: CLOCK_REALTIME. */
  uint64_t (*unix_seconds)(void *arg);
  void *arg;
} evs_ec_clock;

/* How the encryptor derives secp256k1 AES keys. AUTO is the table of §3.1 (raw ECDH for RFVC
 * and files, SHA-256 KDF for S0lS); RAW and SHA256 force one derivation for everything, as an SDK
 * client does after its first call (the quirk of §3.2; for tests and interop checks). P-256
 * always uses the KDF. */
typedef enum evs_ec_k1_derivation {
  EVS_EC_K1_AUTO = 0,
  EVS_EC_K1_RAW = 1,
  EVS_EC_K1_SHA256 = 2,
} evs_ec_k1_derivation;

typedef struct evs_ec_encryptor_config {
  evs_ec_curve curve;
  uint8_t app_public_key[EVS_EC_PUB_LEN]; /* compressed, as served to SDKs */
  uint32_t window_ms;       /* ephemeral key lifetime; default 15000 */
  uint64_t max_uses;        /* values per ephemeral key before a new one; default 2^28 */
  uint64_t origin;          /* metadata "eo"; default EVS_EC_ORIGIN_NODE_SDK */
  evs_ec_k1_derivation k1_derivation;
  evs_ec_clock clock;
} evs_ec_encryptor_config;

/* Fills *cfg with the defaults (curve secp256k1, no app key: set curve and app_public_key). */
void evs_ec_encryptor_config_init(evs_ec_encryptor_config *cfg);

typedef struct evs_ec_encryptor evs_ec_encryptor;

/* Validates the app public key (EVS_EC_EPOINT) and builds an encryptor; no ephemeral key is made
 * until the first value. *ret is owned by the caller (evs_ec_encryptor_free). */
int evs_ec_encryptor_new(const evs_ec_encryptor_config *cfg, evs_ec_encryptor **ret);
/* Wipes the window's AES key(s) and the IV buffer, frees; accepts NULL. */
void evs_ec_encryptor_free(evs_ec_encryptor *enc);
/* Ends the current window: the next value gets a new ephemeral key pair. */
void evs_ec_encryptor_rotate(evs_ec_encryptor *enc);
/* The current window's ephemeral public key (compressed); EVS_EC_EINVAL before the first value. */
int evs_ec_encryptor_ephemeral(const evs_ec_encryptor *enc, uint8_t ret_pub[EVS_EC_PUB_LEN]);
/* Number of ephemeral key pairs generated so far (for tests and metrics). */
uint64_t evs_ec_encryptor_generations(const evs_ec_encryptor *enc);

/* The buffer size (with NUL) that evs_ec_encrypt needs for a value of len bytes; role_len is 0
 * without a role. */
size_t evs_ec_encrypt_bound(size_t len, size_t role_len);

/* Encrypts one value into a NUL-terminated ev: string in out (cap bytes, see
 * evs_ec_encrypt_bound); *ret_len excludes the NUL. role NULL -> RFVC / Tk9D; a role (validated,
 * EVS_EC_EROLE) -> S0lS / QkTC with metadata {dr: role, eo: cfg.origin, et: now}. data is the
 * exact text to encrypt (see "What the caller does" above). */
int evs_ec_encrypt(evs_ec_encryptor *enc, evs_ec_type type, const uint8_t *data, size_t len,
                   const char *role, char *out, size_t cap, size_t *ret_len);

/* Encrypts a file (<= EVS_EC_FILE_MAX_PLAINTEXT bytes, else EVS_EC_ETOOBIG) into a %EVENC
 * buffer of len + EVS_EC_FILE_OVERHEAD bytes. */
int evs_ec_encrypt_file(evs_ec_encryptor *enc, const uint8_t *data, size_t len, uint8_t *out,
                        size_t cap, size_t *ret_len);

/* One field of a batch encryption. */
typedef struct evs_ec_encrypt_field {
  evs_ec_type type;
  const uint8_t *data;
  size_t len;
  const char *role;      /* NULL: no role */
  /* outputs */
  int status;            /* EVS_EC_OK or the field's error */
  char *out;             /* NUL-terminated ev: string inside the arena, on success */
  size_t out_len;
} evs_ec_encrypt_field;

/* Encrypts n fields with the same ephemeral key where the window allows, writing each string
 * into arena (cap bytes; the sum of evs_ec_encrypt_bound is always enough). Each field gets
 * its own status; returns the number of fields encrypted, or EVS_EC_EINVAL. */
int evs_ec_encrypt_batch(evs_ec_encryptor *enc, evs_ec_encrypt_field *fields, size_t n,
                         char *arena, size_t cap);

/* ---- decryptor ------------------------------------------------------------------------------- */

typedef struct evs_ec_decryptor_config {
  const evs_ec_key *secp256k1; /* the app's secp256k1 key pair, or NULL */
  const evs_ec_key *p256;      /* the app's prime256v1 key pair, or NULL */
  size_t cache_capacity;       /* derived-key cache entries; 0 -> 4096; 1 ... 1<<20 */
} evs_ec_decryptor_config;

typedef struct evs_ec_decryptor evs_ec_decryptor;

/* Copies the keys (the caller may free its own after this) and builds the cache. */
int evs_ec_decryptor_new(const evs_ec_decryptor_config *cfg, evs_ec_decryptor **ret);
/* Wipes every cached secret and the copied private keys, frees; accepts NULL. */
void evs_ec_decryptor_free(evs_ec_decryptor *dec);

typedef struct evs_ec_decryptor_stats {
  uint64_t hits;      /* a cached derived key was used */
  uint64_t misses;    /* an ECDH was computed */
  uint64_t evictions; /* an entry was dropped for capacity */
  uint64_t fallbacks; /* the secp256k1 quirk: the other derivation was needed */
  size_t entries;     /* current number of entries */
} evs_ec_decryptor_stats;
void evs_ec_decryptor_get_stats(const evs_ec_decryptor *dec, evs_ec_decryptor_stats *ret);

/* A decrypted value. data points into the caller's out buffer. */
typedef struct evs_ec_plaintext {
  evs_ec_version version;
  evs_ec_curve curve;
  evs_ec_type type;       /* from the tag; authenticated only for S0lS / QkTC (§3.4) */
  evs_ec_kdf kdf;         /* the derivation that authenticated */
  const uint8_t *data;    /* the value's bytes (after the metadata, for role versions) */
  size_t len;
  int has_metadata;       /* S0lS, QkTC */
  evs_ec_metadata meta;   /* valid when has_metadata */
} evs_ec_plaintext;

/* Decrypts one ev: string s[0..len) (no NUL needed). out (cap bytes; cap >= len is always
 * enough) receives the whole GCM plaintext at out[0] (for role versions: u16 length, metadata,
 * value); ret->data points at the value inside it. On any failure out is wiped (no unauthenticated
 * plaintext is left behind). Errors, in order of checking: EVS_EC_EFORMAT / EVERSION / ETYPE /
 * EBASE64 (layout), EVS_EC_ENOKEY, EVS_EC_EPOINT, EVS_EC_EAUTH, EVS_EC_EMETADATA. For RFVC and
 * S0lS the other derivation is tried when the usual one fails authentication (§3.2 quirk). */
int evs_ec_decrypt(evs_ec_decryptor *dec, const char *s, size_t len, uint8_t *out, size_t cap,
                   evs_ec_plaintext *ret);

/* Decrypts a %EVENC file into out (cap >= len - EVS_EC_FILE_OVERHEAD). Checks, in order: size
 * (EVS_EC_EFORMAT if shorter than 75 bytes, EVS_EC_ETOOBIG over the 25 MiB plaintext limit),
 * magic (EFORMAT), version 02/03 (EVERSION), offset 55 and flags 00 (EFORMAT), CRC-32 (ECRC),
 * the ephemeral key (EPOINT), then GCM (EAUTH; version 2 tries both derivations). *ret_kdf (may
 * be NULL) receives the derivation that authenticated. */
int evs_ec_decrypt_file(evs_ec_decryptor *dec, const uint8_t *in, size_t len, uint8_t *out,
                        size_t cap, size_t *ret_len, evs_ec_kdf *ret_kdf);

/* One field of a batch decryption. */
typedef struct evs_ec_decrypt_field {
  const char *s;          /* the ev: string */
  size_t len;
  /* outputs */
  int status;
  evs_ec_plaintext plain; /* valid when status == EVS_EC_OK; data points into the arena */
} evs_ec_decrypt_field;

/* Decrypts n fields, each into its own part of arena (cap >= the sum of the lengths is always
 * enough; a field that does not fit gets EVS_EC_ESPACE). Fields that share an ephemeral key hit
 * the cache after the first. Returns the number decrypted, or EVS_EC_EINVAL. */
int evs_ec_decrypt_batch(evs_ec_decryptor *dec, evs_ec_decrypt_field *fields, size_t n,
                         uint8_t *arena, size_t cap);

/* ---- Shamir's Secret Sharing over GF(2^8) (App Master Key) ----------------------------------- */

#define EVS_SHAMIR_SECRET_LEN 32
/* A share: threshold k (1 byte), x coordinate (1 byte, 1..255), y (32 bytes). */
#define EVS_SHAMIR_SHARE_LEN 34
#define EVS_SHAMIR_MAX_SHARES 255

/* A source of random bytes: fills out[0..len) and returns 1, or 0 on failure. */
typedef int (*evs_shamir_rng)(void *arg, uint8_t *out, size_t len);

/* Splits a 32-byte secret into n shares (x = 1 ... n), any k of which reconstruct it
 * (1 <= k <= n <= 255; the AMK uses 3 of 3). Each byte of the secret is the constant term of
 * its own random polynomial of degree k-1 over GF(2^8) (AES polynomial x^8+x^4+x^3+x+1).
 * rng NULL: RAND_bytes. ret_shares receives n * EVS_SHAMIR_SHARE_LEN bytes. The arithmetic is
 * constant-time (no tables, no secret-dependent branches). */
int evs_shamir_split(const uint8_t secret[EVS_SHAMIR_SECRET_LEN], unsigned n, unsigned k,
                     evs_shamir_rng rng, void *rng_arg, uint8_t *ret_shares);

/* Reconstructs the secret from count shares (count * EVS_SHAMIR_SHARE_LEN bytes): the first k
 * are interpolated at x = 0. EVS_EC_ESHARES when fewer than k shares are given, when thresholds
 * differ, or when an x is 0 or repeated. A wrong (but well-formed) share gives a wrong secret:
 * Shamir's scheme carries no integrity check (the AMK's users detect a wrong key by GCM). */
int evs_shamir_combine(const uint8_t *shares, unsigned count,
                       uint8_t ret_secret[EVS_SHAMIR_SECRET_LEN]);

#ifdef __cplusplus
}
#endif
#endif /* EVS_CRYPTO_H */
