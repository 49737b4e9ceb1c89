/*
 * The enclave protocol: how the enclave plugin (in a worker) talks to the enclave process (the
 * only holder of key material) over unix stream sockets. Versioned, batched, asynchronous: one
 * message carries many fields, and the plugin may have many requests in flight, matched by
 * request id.
 *
 * Framing (all integers little-endian):
 *
 *   message  = u32 length (bytes after this field, <= EVS_EP_MAX_MESSAGE)
 *              u32 magic  (EVS_EP_MAGIC)
 *              u16 version (EVS_EP_VERSION)
 *              u16 op     (request: enum evs_ep_op; response: the same op)
 *              u32 request_id (chosen by the plugin, echoed in the response)
 *              i32 status (request: 0; response: 0 or a negative enum evs_ep_status)
 *              u32 nitems (<= EVS_EP_MAX_ITEMS)
 *              item[nitems]
 *   item     = u32 len, len bytes
 *
 * Each op documents its request items and response items below. Per-field results in batches
 * are themselves items: `i32 status || bytes` (status 0: bytes are the result). A response
 * with a non-zero status carries no items. The enclave answers every request except ATTACH,
 * on the connection it came from, in the order they arrive there; a malformed or oversized
 * frame gets EVS_EP_E_PROTOCOL (echoing op and request_id when its header could be read) and
 * the enclave carries on.
 *
 * Connections: the enclave serves every connection it has, each exactly like the first (its
 * own requests, its own responses in order). The first is the descriptor it was started with
 * (--fd N); EVS_EP_ATTACH adds more. It exits (status 0) when its last connection has closed,
 * so an enclave outlives the worker that started it as long as anyone holds a connection to it.
 *
 * Nothing in this header is secret-bearing by itself; what travels is ciphertext, public keys,
 * sealed blobs, tokens (APP_CREATE's response and APP_UNLOCK's request, once) and, for DECRYPT,
 * plaintext back to the plugin that asked for it. The channel never leaves the machine.
 */
#ifndef EVS_ENCLAVE_PROTO_H
#define EVS_ENCLAVE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define EVS_EP_MAGIC 0x31455645u /* "EVE1" */
#define EVS_EP_VERSION 1
#define EVS_EP_HEADER_LEN 24     /* length .. nitems */
#define EVS_EP_MAX_MESSAGE (64u << 20) /* 25 MB files plus encoding overhead */
#define EVS_EP_MAX_ITEMS 4096
/* Files (ENCRYPT_FILE, DECRYPT_FILE): at most 25 MiB of plaintext, the SDK's limit
 * (EV_MAX_FILE_SIZE_IN_MB = 25, compared as 25 * 1024 * 1024 bytes); a %EVENC file is its
 * plaintext plus 75 bytes (55-byte header, 16-byte GCM tag, 4-byte CRC-32). */
#define EVS_EP_FILE_MAX_PLAINTEXT ((size_t)25 * 1024 * 1024)
#define EVS_EP_FILE_OVERHEAD 75

typedef enum evs_ep_op {
  /* req: (none) — resp: [u16 version, "evserver-enclave <ver>"]. The text goes on with
   *   " sandbox=<policy> open=<EPERM|...> socket=<EPERM|...> mlock=<all|secure-heap|none>": a live
   *   self-check, made when HELLO is answered, that the seccomp filter refuses open and socket.
   *   Then " pid=<decimal pid>" (the enclave process, so that a client that attached to an
   *   enclave it did not start knows which process it talks to), and " tag=<tag>" when the
   *   enclave was started with --tag (1..64 of [A-Za-z0-9_-], opaque to the enclave: the
   *   plugin uses it to check that an enclave it attaches to was started with the configuration
   *   it would start one with). Fields are only ever appended: parse by name, not position. */
  EVS_EP_HELLO = 1,
  /* req: [app_id] — resp: [app_token (text, shown once), pub_secp256k1 (33 B), pub_p256 (33 B),
   *   sealed_share_1, sealed_share_2, wrapped_keys]. The plugin stores the last three (two
   *   shares in two separate stores) and never sees the App Master Key or a private key.
   *   app_id: valid by evs_app_id.h (else EVS_EP_E_INVALID). The token is "evt_" + 43
   *   base64url characters. The new app is left unlocked; an app id that is unlocked in this
   *   enclave already is refused (EVS_EP_E_INVALID), as creating it again would replace keys. */
  EVS_EP_APP_CREATE = 2,
  /* req: [app_id, app_token, sealed_share_1, sealed_share_2, wrapped_keys]
   * resp: [pub_secp256k1, pub_p256]. Keys then live in the enclave's locked memory.
   * An empty app_token item: the token from the enclave's credentials directory (file
   * evserver-app-<app_id>). EVS_EP_E_BAD_TOKEN: the token is missing, malformed or does not open
   * the keys; EVS_EP_E_INVALID: a sealed blob does not open (tampered, another app's, another
   * sealing key). A failed unlock leaves an earlier unlock of the app in place. */
  EVS_EP_APP_UNLOCK = 3,
  /* req: [app_id] — resp: (none). Wipes the app's keys from the enclave (OK if not unlocked). */
  EVS_EP_APP_LOCK = 4,
  /* req: [app_id] — resp: [u8 unlocked (0|1), pub_secp256k1, pub_p256] (empty keys when 0) */
  EVS_EP_APP_STATUS = 5,
  /* req: [app_id, curve ("secp256k1"|"prime256v1"), role ("" for none), then per field:
   *   one item "s:<text>" | "r:<text>" | "n:<json number text>" | "b:true|false"]
   * resp: per field `i32 status || ev string`
   * The app must be unlocked (EVS_EP_E_NO_APP). "s:" strings are trimmed like the SDK's
   * String.prototype.trim (the API's /encrypt); "r:" strings are encrypted exactly as given
   * (the Inbound Relay: a value keeps the bytes its sender sent); a field with an unknown type, a non-JSON number or a boolean other
   * than true/false gets EVS_EP_E_INVALID (the others are still encrypted). A bad curve or role
   * fails the whole message (EVS_EP_E_INVALID). */
  EVS_EP_ENCRYPT = 6,
  /* req: [app_id, then per field: one ev: string]
   * resp: per field `i32 status || u8 type (0 string, 1 number, 2 boolean) || plaintext`
   * A failed field is its 4-byte status alone: EVS_EP_E_INVALID (not an ev: string) or
   * EVS_EP_E_DECRYPT (does not authenticate with this app's keys, or its plaintext is not of
   * its type: a :number whose text is not a JSON number or "null" (what JSON.stringify makes
   * of NaN and Infinity), a :boolean other than "true" / "false"; RFVC and Tk9D do not
   * authenticate the type tag, so a relabelled value would otherwise reach the caller). Type 1
   * and 2 plaintexts are therefore safe to splice into JSON as they are. */
  EVS_EP_DECRYPT = 7,
  /* req: [app_id, curve, file bytes] — resp: [%EVENC bytes]
   * File bytes over EVS_EP_FILE_MAX_PLAINTEXT: EVS_EP_E_INVALID. */
  EVS_EP_ENCRYPT_FILE = 8,
  /* req: [app_id, %EVENC bytes] — resp: [plaintext bytes]
   * EVS_EP_E_INVALID: not a well-formed %EVENC file (too short, magic, version, header) or over
   * EVS_EP_FILE_MAX_PLAINTEXT + EVS_EP_FILE_OVERHEAD bytes; EVS_EP_E_DECRYPT: CRC or GCM
   * authentication fails (tampered, truncated, another app's). */
  EVS_EP_DECRYPT_FILE = 9,
  /* Added after the first version of this list (ops are only ever appended):
   * req: as DECRYPT — resp: per field `i32 status || u8 type || u8 role_len || role || plaintext`
   * The data role from the value's metadata (S0lS / QkTC; role_len 0 for RFVC / Tk9D), for a
   * caller that enforces data-role policy; the enclave does not judge roles itself. */
  EVS_EP_DECRYPT_ROLE = 10,
  /* req: (none), sent with exactly one file descriptor as SCM_RIGHTS ancillary data, on the
   *   sendmsg() that carries this frame or an earlier one on the same connection — resp: NONE.
   * The descriptor must be a connected AF_UNIX SOCK_STREAM socket (the sender then closes its
   * own copy); it becomes a further connection of the enclave, served exactly like the first,
   * until either end closes it. ATTACH is one-way: send it with request_id 0 and do not wait
   * for an answer (it is meant to be sent over a connection that nobody reads, a spare held
   * only to keep the enclave reachable, where an answer would pile up unread). An ATTACH
   * without a received descriptor, with a descriptor that is not a unix stream socket, with
   * items or a non-zero status, or beyond the enclave's connection limit, is ignored: the
   * descriptor (if any) is closed and the enclave logs it. Descriptors received on a
   * connection wait there, in arrival order and at most 4, for the ATTACH frames that consume
   * them; extras are closed. A client learns an ATTACH's outcome only by talking on the new
   * connection (HELLO; a refused one is closed, so the client reads EOF). */
  EVS_EP_ATTACH = 11,
  /* The Outbound Relay's CA (enclave/README.md, "The relay CA"). The enclave keeps no CA state:
   * the plugin stores what CA_CREATE returns and sends it back with every CA_SIGN.
   * req: [common name (0..64 printable ASCII; empty: "evserver Outbound Relay CA"),
   *   u32 validity in days (0: 3650; at most 10950)]
   * resp: [CA certificate (PEM), sealed private key ("EVC\1" || IV 12 || AES-256-GCM of the
   *   key's SEC1 DER under the sealing key || tag 16; AAD binds it to the certificate's key)].
   * A new P-256 key each time; the private key leaves the enclave only sealed.
   * EVS_EP_E_INVALID: a bad name or validity. */
  EVS_EP_CA_CREATE = 12,
  /* req: [CA certificate (PEM), sealed key (both as CA_CREATE returned them), the leaf's public
   *   key (SubjectPublicKeyInfo, PEM or DER: EC P-256/384/521, RSA 2048..8192, Ed25519),
   *   u32 validity in seconds (0: 7 days; 60..398 days), then 1..8 names (SANs: DNS names or
   *   IPv4/IPv6 literals; the first is also the CN when at most 64 bytes)]
   * resp: [leaf certificate (PEM)]: random serial, notBefore 5 minutes ago, notAfter capped at
   *   the CA's, CA:FALSE, serverAuth. EVS_EP_E_INVALID: a bad name, key or validity, too many
   *   names, or a CA that does not open (tampered, another sealing key, expired). */
  EVS_EP_CA_SIGN = 13,
  /* The attestation keys of Cages (enclave/README.md, "The attestation keys"): a root per
   * cluster, a key per node certified by it; both P-384, both leave the enclave only sealed
   * ("EVA\1" || IV 12 || AES-256-GCM of the SEC1 DER || tag 16, bound to the key). Certificates
   * are DER. The enclave keeps no attestation state: the plugin stores what these return.
   * req: [common name (0..64 printable ASCII; empty: "evserver attestation root"),
   *   u32 validity in days (0: 3650; at most 10950)]
   * resp: [root certificate (DER), sealed root key]. EVS_EP_E_INVALID: a bad name or validity. */
  EVS_EP_ATTEST_ROOT_CREATE = 14,
  /* req: [root certificate (DER), sealed root key, node name (1..64 printable ASCII, the CN)]
   * resp: [node certificate (DER; CA:FALSE, valid until the root's notAfter), sealed node key].
   * EVS_EP_E_INVALID: the root does not open (tampered, another sealing key) or has expired. */
  EVS_EP_ATTEST_NODE_CREATE = 15,
  /* req: [root certificate, node certificate, sealed node key] — resp: [node certificate, root
   * certificate] (the chain, leaf first), once the enclave has checked that the node key opens,
   * is the certificate's, and that the root signed the certificate; else EVS_EP_E_INVALID. */
  EVS_EP_ATTEST_CHAIN = 16,
  /* req: [node certificate, sealed node key, COSE Sig_structure (CBOR, must start
   *   ["Signature1", ...; at most 64 KiB)] — resp: [signature: 96 bytes, P-384 r || s over
   *   SHA-384]. EVS_EP_E_INVALID: not a Sig_structure, a key that does not open, an expired
   *   node certificate. Nothing but Sig_structures is ever signed with the node key. */
  EVS_EP_ATTEST_SIGN = 17,
} evs_ep_op;

typedef enum evs_ep_status {
  EVS_EP_OK = 0,
  EVS_EP_E_PROTOCOL = -1,     /* malformed message, bad magic/version, too large */
  EVS_EP_E_UNKNOWN_OP = -2,
  EVS_EP_E_NO_APP = -3,       /* app unknown or not unlocked */
  EVS_EP_E_BAD_TOKEN = -4,    /* app token does not open the keys */
  EVS_EP_E_DECRYPT = -5,      /* a field could not be decrypted (tampered, wrong app, ...) */
  EVS_EP_E_INVALID = -6,      /* an input is invalid (curve, role, type, size) */
  EVS_EP_E_INTERNAL = -7,
} evs_ep_status;

/* ---- encoding helpers (header-only: used by both sides, no dependencies) ------------------ */

static inline void evs_ep_put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t evs_ep_get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void evs_ep_put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static inline uint16_t evs_ep_get_u16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}

#endif
