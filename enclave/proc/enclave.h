/*
 * enclave.h: the internals of the enclave process, evserver-enclave (enclave/README.md).
 *
 * Three parts, each a file:
 *   frame.c  the wire format of enclave/proto/evs_enclave_proto.h: parsing a received message
 *            into items (pointers into the message) and building a response with a hard cap.
 *   keys.c   the key hierarchy: the sealing key, sealed Shamir shares, the app token, the
 *            wrapped private keys, and the table of unlocked apps (keys in locked memory).
 *   ops.c    one function per protocol op, and evs__ep_handle, which turns one request message
 *            into one response message (it never fails: malformed input gets an error response).
 * main.c is the process around them: arguments, start-up, sandboxing, the read/write loop.
 *
 * Nothing here logs or performs I/O except main.c (and the HELLO self-check, which attempts a
 * forbidden open and socket on purpose). Single-threaded: one evs_enclave is used by one thread.
 * Statuses are enum evs_ep_status values (0 or negative).
 */
#ifndef EVS_ENCLAVE_INTERNAL_H
#define EVS_ENCLAVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "evs_crypto.h"
#include "evs_app_id.h"
#include "evs_enclave_proto.h"

/* ---- frames (frame.c) --------------------------------------------------------------------- */

typedef struct evs_ep_item {
  const uint8_t *p; /* into the message buffer */
  uint32_t len;
} evs_ep_item;

typedef struct evs_ep_msg {
  uint32_t magic;
  uint16_t version;
  uint16_t op;
  uint32_t request_id;
  int32_t status;
  uint32_t nitems;
  evs_ep_item *items; /* the caller's array (parse) */
} evs_ep_msg;

/* Parses a message without its leading u32 length: body[0..len) is magic .. items. items must
 * hold EVS_EP_MAX_ITEMS entries. Returns EVS_EP_OK, or EVS_EP_E_PROTOCOL when the header is
 * short, magic or version are wrong, nitems is over the limit, or the items do not fill the body
 * exactly. On error, ret->op and ret->request_id are still set when the body was long enough to
 * hold them (so the error response can echo them), else 0. */
int evs__ep_parse(const uint8_t *body, size_t len, evs_ep_msg *ret, evs_ep_item *items);

/* A response being built: the whole message, its u32 length first. The buffer grows by
 * allocate-copy-wipe (never realloc, which would leave copies of plaintext behind) up to
 * 4 + EVS_EP_MAX_MESSAGE bytes; beyond that `overflow` is set and items are dropped. */
typedef struct evs_ep_buf {
  uint8_t *p;
  size_t len;
  size_t cap;
  uint32_t nitems;
  int overflow; /* too large, or an allocation failed */
  int nomem;
} evs_ep_buf;

/* Starts a response (resets len, keeps the allocation). */
void evs__ep_begin(evs_ep_buf *b, uint16_t op, uint32_t request_id, int32_t status);
/* Appends one item of len bytes (data may be NULL when len is 0). 0 or -1 (overflow). */
int evs__ep_add(evs_ep_buf *b, const void *data, size_t len);
/* Appends one item `i32 status || a || b` (a per-field result). 0 or -1. */
int evs__ep_add_status(evs_ep_buf *b, int32_t status, const void *a, size_t alen, const void *c,
                       size_t clen);
/* Reserves an item of len bytes and returns where to write them (NULL on overflow); shrink it
 * afterwards with evs__ep_shrink_last if fewer were written. */
uint8_t *evs__ep_reserve(evs_ep_buf *b, size_t len);
void evs__ep_shrink_last(evs_ep_buf *b, size_t reserved, size_t used);
/* Writes the length and item count. When the response overflowed, it is replaced by an empty
 * response with EVS_EP_E_INVALID (too large) or EVS_EP_E_INTERNAL (out of memory). */
void evs__ep_finish(evs_ep_buf *b);
/* Wipes (the response may hold plaintext) and frees the buffer; the struct can be reused. */
void evs__ep_buf_done(evs_ep_buf *b);

/* ---- keys and apps (keys.c) ------------------------------------------------------------- */

#define EVS_APP_ID_MAX EVS_APP_ID_MAX_LEN /* the rule is evs_app_id.h */
#define EVS_SEAL_KEY_LEN 32
/* "evt_" + 43 characters of unpadded base64url of 32 bytes. */
#define EVS_APP_TOKEN_PREFIX "evt_"
#define EVS_APP_TOKEN_LEN 47
#define EVS_SEALED_SHARE_LEN 67 /* "EVS\1" | x | IV 12 | share 34 | tag 16 */
/* "EVK\1" | offset (IV, 32, tag) | 2 x (curve, pub, IV, 32, tag) */
#define EVS_WRAPPED_KEYS_LEN 252

typedef struct evs_enclave evs_enclave;

typedef struct evs_app {
  char id[EVS_APP_ID_MAX + 1];
  size_t id_len;
  evs_ec_key *keys[2];          /* by evs_ec_curve */
  uint8_t pub[2][EVS_EC_PUB_LEN];
  evs_ec_encryptor *enc[2];     /* made on first use */
  evs_ec_decryptor *dec;
  struct evs_app *next;
} evs_app;

/* A new enclave state holding a copy of the sealing key (in the secure heap). *ret is the
 * caller's (evs__enclave_free, which wipes every key). */
int evs__enclave_new(const uint8_t seal_key[EVS_SEAL_KEY_LEN], evs_enclave **ret);
void evs__enclave_free(evs_enclave *e);
/* Facts for HELLO, set by main.c (static strings; NULL: "none"). */
void evs__enclave_set_info(evs_enclave *e, const char *sandbox, const char *mlock);
const char *evs__enclave_sandbox(const evs_enclave *e);
const char *evs__enclave_mlock(const evs_enclave *e);
/* The --tag for HELLO (a string that outlives e, validated by main.c; NULL: none). */
void evs__enclave_set_tag(evs_enclave *e, const char *tag);
const char *evs__enclave_tag(const evs_enclave *e);

/* Remembers the token of an app (from the credentials directory) for APP_UNLOCK with an empty
 * token item; kept in the secure heap. Replaces an earlier one. EVS_EP_E_INVALID for a bad id. */
int evs__enclave_add_credential(evs_enclave *e, const char *id, size_t id_len, const char *token,
                                size_t token_len);
size_t evs__enclave_credentials(const evs_enclave *e);

/* What APP_CREATE returns; every buffer is the caller's (evs__app_created_done wipes them). */
typedef struct evs_app_created {
  char token[EVS_APP_TOKEN_LEN + 1];
  uint8_t pub[2][EVS_EC_PUB_LEN];
  uint8_t share1[EVS_SEALED_SHARE_LEN];
  uint8_t share2[EVS_SEALED_SHARE_LEN];
  uint8_t wrapped[EVS_WRAPPED_KEYS_LEN];
} evs_app_created;
void evs__app_created_done(evs_app_created *c);

/* Creates an app's keys (see enclave/README.md "Key hierarchy"); the app is unlocked afterwards.
 * *ret is written in place (put it in locked memory) and wiped on failure. EVS_EP_E_INVALID for a
 * bad id or an app that is unlocked here already, EVS_EP_E_INTERNAL on a crypto failure. */
int evs__app_create(evs_enclave *e, const uint8_t *id, size_t id_len, evs_app_created *ret);

/* Opens an app's keys with its token (token_len 0: the token from the credentials directory)
 * and keeps them unlocked (replacing an earlier unlock). Statuses: EVS_EP_E_INVALID (bad id,
 * sealed blobs that do not open with the sealing key for this app: tampered, another app's,
 * another sealing key), EVS_EP_E_BAD_TOKEN (token malformed, missing, or not opening the keys).
 * A failed unlock leaves an earlier unlock of the app in place. ret_pub may be NULL. */
int evs__app_unlock(evs_enclave *e, const uint8_t *id, size_t id_len, const uint8_t *token,
                    size_t token_len, const uint8_t *share1, size_t share1_len,
                    const uint8_t *share2, size_t share2_len, const uint8_t *wrapped,
                    size_t wrapped_len, uint8_t ret_pub[2][EVS_EC_PUB_LEN]);

/* Wipes an app's keys; 1 if it was unlocked, 0 if not. */
int evs__app_lock(evs_enclave *e, const uint8_t *id, size_t id_len);
/* The unlocked app, or NULL. */
evs_app *evs__app_find(evs_enclave *e, const uint8_t *id, size_t id_len);
/* The app's encryptor for a curve, made on first use; NULL on failure. */
evs_ec_encryptor *evs__app_encryptor(evs_app *app, evs_ec_curve curve);
size_t evs__enclave_unlocked(const evs_enclave *e);

/* AES-256-GCM under the sealing key with a random IV: out = IV 12 || ciphertext (len) || tag 16.
 * unseal wipes out on failure. 0 or -1. For ca.c, which seals the relay CA's key as keys.c
 * seals shares. */
#define EVS_SEAL_OVERHEAD 28
int evs__enclave_seal(const evs_enclave *e, const uint8_t *aad, size_t aad_len,
                      const uint8_t *in, size_t len, uint8_t *out);
int evs__enclave_unseal(const evs_enclave *e, const uint8_t *aad, size_t aad_len,
                        const uint8_t *in, size_t len, uint8_t *out);

/* A private key that leaves the enclave only sealed (sealed_key.c; the relay CA's, the
 * attestation root's and nodes'): magic (4 bytes) || seal(SEC1 DER of the key), AAD = label
 * (label_len bytes, at most 64: with its NUL) || SHA-256 of the key's SubjectPublicKeyInfo, so a
 * blob opens only with the certificate it belongs to. seal: 0 with a malloc'd *ret, or -1.
 * unseal: the key, if the blob opens under pub and holds pub's private half; else NULL. */
typedef struct evp_pkey_st EVP_PKEY;
int evs__seal_key(const evs_enclave *e, const uint8_t magic[4], const char *label,
                  size_t label_len, EVP_PKEY *key, uint8_t **ret, size_t *ret_len);
EVP_PKEY *evs__unseal_key(const evs_enclave *e, const uint8_t magic[4], const char *label,
                          size_t label_len, EVP_PKEY *pub, const uint8_t *sealed,
                          size_t sealed_len);
/* The last key unsealed for one use (the relay CA's, an attestation node's), with its
 * certificate, kept while the same certificate bytes and blob come back (id: SHA-256(cert || 0
 * || sealed)), so that a request does not unseal again. */
typedef struct x509_st X509;
typedef struct evs_key_cache {
  uint8_t id[32];
  X509 *cert;
  EVP_PKEY *key;
} evs_key_cache;
void evs__key_cache_free(evs_key_cache *c);
/* *slot if it holds cert and sealed; else parse(cert) unsealed under magic and label into a
 * new entry that replaces *slot. NULL when the certificate does not parse or the key does not
 * open (parse may refuse a certificate, say for its key's curve). */
evs_key_cache *evs__key_cache_open(evs_key_cache **slot, const evs_enclave *e,
                                   const uint8_t magic[4], const char *label, size_t label_len,
                                   const uint8_t *cert, size_t cert_len,
                                   X509 *(*parse)(const uint8_t *, size_t),
                                   const uint8_t *sealed, size_t sealed_len);

/* ---- the Outbound Relay's CA (ca.c) ------------------------------------------------------
 * A P-256 CA made here; its private key leaves the enclave only sealed ("EVC\1" || IV ||
 * AES-256-GCM(SEC1 DER of the key) || tag, AAD = label || SHA-256 of the CA's
 * SubjectPublicKeyInfo), so the store holds the certificate and that blob. CA_SIGN sends both
 * back with every request; the enclave keeps the last one it unsealed (evs_key_cache), so a
 * restarted enclave or a rotated CA needs no extra step. */
#define EVS_CA_MAX_NAMES 8
#define EVS_CA_NAME_MAX 253
#define EVS_CA_CN_MAX 64
#define EVS_CA_DEFAULT_DAYS 3650
#define EVS_CA_MAX_DAYS 10950                      /* 30 years */
#define EVS_CA_LEAF_DEFAULT_S (7u * 86400)         /* 7 days */
#define EVS_CA_LEAF_MAX_S (398u * 86400)           /* the CA/Browser Forum's ceiling */
#define EVS_CA_LEAF_BACKDATE_S 300                 /* notBefore: 5 minutes ago (clock skew) */
#define EVS_CA_SPKI_MAX 16384
#define EVS_CA_PEM_MAX 16384

evs_key_cache **evs__enclave_ca(evs_enclave *e);

/* What a SAN is: EVS_CA_NAME_DNS (a host name: 1..253 bytes, labels of 1..63 of [A-Za-z0-9-],
 * not starting or ending with '-', no trailing dot, no wildcard, not all-numeric like an IPv4
 * address would be), EVS_CA_NAME_IP (a dotted-quad IPv4 or an IPv6 literal, no brackets, no
 * zone), or 0 (refused). ip receives 4 or 16 bytes and ip_len their count (may be NULL). */
enum { EVS_CA_NAME_DNS = 1, EVS_CA_NAME_IP = 2 };
int evs__ca_name_kind(const uint8_t *s, size_t len, uint8_t ip[16], size_t *ip_len);

/* Makes a CA: a new P-256 key, a self-signed certificate (CN cn, or "evserver Outbound Relay
 * CA" when cn_len is 0; cn: 1..64 printable ASCII) valid for days (0: EVS_CA_DEFAULT_DAYS) from
 * an hour ago. *ret_pem and *ret_sealed are malloc'd (the caller frees). EVS_EP_E_INVALID for a
 * bad cn or days, EVS_EP_E_INTERNAL for a crypto failure. */
int evs__ca_create(evs_enclave *e, const uint8_t *cn, size_t cn_len, uint32_t days,
                   char **ret_pem, size_t *ret_pem_len, uint8_t **ret_sealed,
                   size_t *ret_sealed_len);

/* Issues a leaf: CA certificate (PEM) and its sealed key (as evs__ca_create made them), the
 * leaf's public key (SubjectPublicKeyInfo, PEM or DER: EC P-256/P-384/P-521, RSA 2048..8192 or
 * Ed25519), validity_s (0: EVS_CA_LEAF_DEFAULT_S; 60..EVS_CA_LEAF_MAX_S; never past the CA's
 * notAfter), names (1..EVS_CA_MAX_NAMES, each evs__ca_name_kind; names[0] is the CN when it is
 * at most 64 bytes). The leaf: random 128-bit serial, notBefore 5 minutes ago, CA:FALSE,
 * digitalSignature (and keyEncipherment for RSA), serverAuth, the SANs, key identifiers.
 * *ret_pem is malloc'd. EVS_EP_E_INVALID for any bad input (a blob that does not open with the
 * sealing key for this certificate, an expired CA included), EVS_EP_E_INTERNAL otherwise. */
int evs__ca_sign(evs_enclave *e, const uint8_t *ca_pem, size_t ca_pem_len, const uint8_t *sealed,
                 size_t sealed_len, const uint8_t *spki, size_t spki_len, uint32_t validity_s,
                 const evs_ep_item *names, size_t nnames, char **ret_pem, size_t *ret_pem_len);

/* ---- the attestation keys of Cages (attest.c) ----------------------------------------------
 * A per-cluster root and a per-node key, both P-384, made here; each leaves the enclave only
 * sealed ("EVA\1" || IV || AES-256-GCM(SEC1 DER) || tag, AAD = label || SHA-256 of the key's
 * SubjectPublicKeyInfo; the root and node labels differ, so one blob never opens as the other).
 * Certificates travel as DER. The last node key unsealed is cached. */
#define EVS_ATTEST_SIG_LEN 96             /* P-384 r || s, as COSE wants it */
#define EVS_ATTEST_TBS_MAX (64u * 1024)   /* a Sig_structure; a document is ~2 KiB */
evs_key_cache **evs__enclave_attest(evs_enclave *e);
/* A root: CN cn (0..64 printable ASCII; empty: "evserver attestation root"), valid days (0:
 * EVS_CA_DEFAULT_DAYS, at most EVS_CA_MAX_DAYS) from an hour ago, CA:TRUE pathlen 0. Returns
 * its DER certificate and sealed key (malloc'd). EVS_EP_E_INVALID, EVS_EP_E_INTERNAL. */
int evs__attest_root_create(evs_enclave *e, const uint8_t *cn, size_t cn_len, uint32_t days,
                            uint8_t **ret_der, size_t *ret_der_len, uint8_t **ret_sealed,
                            size_t *ret_sealed_len);
/* A node key certified by the root (CN name, 1..64 printable ASCII; CA:FALSE,
 * digitalSignature; valid until the root's notAfter). EVS_EP_E_INVALID when the root or its
 * sealed key does not open (tampered, another sealing key) or the root is expired. */
int evs__attest_node_create(evs_enclave *e, const uint8_t *root_der, size_t root_len,
                            const uint8_t *root_sealed, size_t root_sealed_len,
                            const uint8_t *name, size_t name_len, uint8_t **ret_der,
                            size_t *ret_der_len, uint8_t **ret_sealed, size_t *ret_sealed_len);
/* EVS_EP_OK when the sealed node key opens, is the node certificate's, and that certificate
 * is signed by the root (a P-384 root), both valid now; else EVS_EP_E_INVALID. */
int evs__attest_chain(evs_enclave *e, const uint8_t *root_der, size_t root_len,
                      const uint8_t *node_der, size_t node_len, const uint8_t *sealed,
                      size_t sealed_len);
/* Signs a COSE Sig_structure (it must start ["Signature1", ...; at most EVS_ATTEST_TBS_MAX)
 * with the node key: ECDSA P-384 over SHA-384, r || s. EVS_EP_E_INVALID for anything else, a
 * key that does not open, or an expired node certificate. */
int evs__attest_sign(evs_enclave *e, const uint8_t *node_der, size_t node_len,
                     const uint8_t *sealed, size_t sealed_len, const uint8_t *tbs, size_t tbs_len,
                     uint8_t sig[EVS_ATTEST_SIG_LEN]);

/* ---- ops (ops.c) -------------------------------------------------------------------------- */

/* Handles one request message (body = the bytes after its u32 length) and leaves the complete
 * response message in out (evs__ep_finish done). Never fails: malformed input, unknown ops and
 * errors become error responses. EVS_EP_ATTACH is not an op of this function (it is about
 * connections: main.c's loop handles it and never passes it here); it gets EVS_EP_E_UNKNOWN_OP. */
void evs__ep_handle(evs_enclave *e, const uint8_t *body, size_t len, evs_ep_buf *out);

/* Utilities shared with the tests. */
/* 1 when s[0..len) is a JSON number (RFC 8259 grammar). */
int evs__json_number_valid(const uint8_t *s, size_t len);
/* Trims like JavaScript's String.prototype.trim (WhiteSpace and LineTerminator code points) on
 * UTF-8; returns the new length and sets *ret_start. */
size_t evs__js_trim(const uint8_t *s, size_t len, size_t *ret_start);

#endif
