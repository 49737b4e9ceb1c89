/*
 * eif.h: AWS Nitro Enclave Image Files (docs/cages.md): write one from its sections, read one
 * back, and compute its PCRs. Pure library (OpenSSL for SHA-384 only, no I/O but the file
 * itself), shared by evctl (build, describe) and the cage-broker plugin (deploy, run).
 * Implemented in eif.c; the reader is a parser of untrusted input and is fuzzed.
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

typedef struct eif_pcrs {
  uint8_t pcr0[EIF_PCR_LEN], pcr1[EIF_PCR_LEN], pcr2[EIF_PCR_LEN], pcr8[EIF_PCR_LEN];
  int has_pcr8; /* 0: unsigned image, pcr8 all zero */
} eif_pcrs;

typedef struct eif_image eif_image;

/* Reads and checks an image file (magic, version, section table, sizes, CRC). 0 and *ret, or
 * a negative errno with a static sentence in *ret_why. */
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

#endif
