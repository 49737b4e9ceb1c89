/*
 * eif.h: AWS Nitro Enclave Image Files (docs/cages.md): write one from its sections, read one
 * back, and compute its PCRs. Pure library (OpenSSL for SHA-384 and the signature, zlib for the
 * CRC, no I/O but the file itself), shared by evctl (build, describe) and the cage-broker plugin
 * (deploy, run). Implemented in eif.c; the reader is a parser of untrusted input and is fuzzed
 * (fuzz/fuzz_eif.c).
 *
 * The layout is Nitro's format version 4, byte for byte: a 548-byte big-endian header (magic
 * ".eif", version, flags, default memory and CPUs, the section count, 32 section offsets and 32
 * sizes, the CRC-32 of everything but itself), then each section as a 12-byte header (type,
 * flags, size) and its bytes, in Nitro's order: kernel, cmdline, metadata, ramdisks, signature.
 * Offsets in the header point at the section headers.
 *
 * PCRs are Nitro's: PCRn = SHA-384(48 zero bytes || SHA-384(measured bytes)), where PCR0
 * measures kernel, cmdline and every ramdisk, PCR1 kernel, cmdline and the first ramdisk,
 * PCR2 the other ramdisks, PCR8 the signing certificate (DER). The metadata and signature
 * sections are not measured. The signature section is Nitro's CBOR array of one
 * {signing_certificate: PEM bytes, signature: COSE_Sign1 over {register_index: 0,
 * register_value: PCR0}} (serde_cbor's encoding: byte vectors as arrays of integers).
 */
#ifndef EVS_EIF_H
#define EVS_EIF_H

#include <stddef.h>
#include <stdint.h>

typedef enum eif_section_type {
  EIF_SECTION_KERNEL = 1,
  EIF_SECTION_CMDLINE = 2,
  EIF_SECTION_RAMDISK = 3,
  EIF_SECTION_SIGNATURE = 4,
  EIF_SECTION_METADATA = 5,
} eif_section_type;

#define EIF_PCR_LEN 48 /* SHA-384 */
#define EIF_HEADER_LEN 548
#define EIF_SECTION_HEADER_LEN 12
#define EIF_MAX_SECTIONS 32
#define EIF_VERSION 4
#define EIF_DEFAULT_MEM (1024ull * 1024 * 1024) /* what Nitro's builder writes */
#define EIF_DEFAULT_CPUS 2

typedef struct eif_pcrs {
  uint8_t pcr0[EIF_PCR_LEN], pcr1[EIF_PCR_LEN], pcr2[EIF_PCR_LEN], pcr8[EIF_PCR_LEN];
  int has_pcr8; /* 0: unsigned image, pcr8 all zero */
} eif_pcrs;

typedef struct eif_image eif_image;

/* Reads and checks an image file (magic, version, section table, sizes, CRC, and a signature
 * section's shape and certificate). 0 and *ret, or a negative errno with a static sentence in
 * *ret_why (-ENOENT/-EIO for the file itself, -EINVAL for its content). */
int eif_open(const char *path, eif_image **ret, const char **ret_why);
/* The same from memory (copied). */
int eif_parse(const uint8_t *data, size_t len, eif_image **ret, const char **ret_why);
void eif_free(eif_image *img);

/* The nth (0-based) section of a type: its bytes, valid until eif_free. -ENOENT if none. */
int eif_section(const eif_image *img, eif_section_type type, unsigned nth, const uint8_t **ret,
                size_t *ret_len);

/* PCR0, PCR1, PCR2 (and PCR8 when signed) as Nitro computes them. */
int eif_pcrs_of(const eif_image *img, eif_pcrs *ret);

/* Hex (lower case, 96 digits + NUL) of one PCR. */
void eif_pcr_hex(const uint8_t pcr[EIF_PCR_LEN], char out[2 * EIF_PCR_LEN + 1]);

/* The header's flags, default memory (bytes) and CPU count. */
void eif_header_info(const eif_image *img, uint16_t *ret_flags, uint64_t *ret_mem,
                     uint64_t *ret_cpus);

/* A signed image's signing certificate, DER, valid until eif_free. -ENOENT if unsigned. */
int eif_signing_cert(const eif_image *img, const uint8_t **ret_der, size_t *ret_len);

/* Checks a signed image's signature: the COSE_Sign1 verifies with the certificate's key and its
 * payload is {register_index: 0, register_value: this image's PCR0}. 0, -ENOENT if unsigned, or
 * -EINVAL/-EBADMSG with *ret_why. Certificate validity dates are the caller's policy. */
int eif_verify_signature(const eif_image *img, const char **ret_why);

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct eif_blob {
  const uint8_t *data;
  size_t len;
} eif_blob;

/* What an image is made of. Everything is borrowed for the duration of the call. */
typedef struct eif_build_in {
  eif_blob kernel;          /* the bzImage */
  const char *cmdline;      /* written without its NUL, as Nitro does */
  const eif_blob *ramdisks; /* [0] the bootstrap ramdisk (PCR1), the rest the app's (PCR2) */
  size_t nramdisks;         /* 1 .. EIF_MAX_SECTIONS - 4 */
  eif_blob metadata;        /* JSON, Nitro's EifIdentityInfo by convention; not measured */
  eif_blob signing_cert;    /* PEM; with signing_key: a signed image (PCR8, signature) */
  eif_blob signing_key;     /* PEM private key, EC P-256, P-384 (Nitro's usual) or P-521 */
  uint16_t flags;           /* 0 on x86_64 */
  uint64_t default_mem;     /* 0: EIF_DEFAULT_MEM */
  uint64_t default_cpus;    /* 0: EIF_DEFAULT_CPUS */
} eif_build_in;

/* Builds the image into memory: 0 with *ret_data (malloc'd, the caller frees), *ret_len and
 * *ret_pcrs (may be NULL), or a negative errno with a static sentence in *ret_why. The same
 * inputs give the same bytes, except a signed image's signature (ECDSA is randomised); its
 * PCRs are the same. */
int eif_build(const eif_build_in *in, uint8_t **ret_data, size_t *ret_len, eif_pcrs *ret_pcrs,
              const char **ret_why);
/* The same, written to path (through path.tmp and a rename, mode 0644). */
int eif_write(const char *path, const eif_build_in *in, eif_pcrs *ret_pcrs, const char **ret_why);

/* One PCR as Nitro computes it, over the concatenation of parts (for callers that measure
 * something themselves, and the tests). */
void eif_measure(const eif_blob *parts, size_t nparts, uint8_t out[EIF_PCR_LEN]);

#endif
