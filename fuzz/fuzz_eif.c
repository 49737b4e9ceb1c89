/*
 * libFuzzer target for plugins/cage-broker/eif.c, the Enclave Image File reader: an image comes
 * from a developer's machine through deploy, so every byte is untrusted. Invariants: no crash,
 * no leak; a refused image gives a sentence; an accepted one has a kernel, cmdline and ramdisk
 * inside the input, gives PCRs, and a signature check that ends either way. Each input is
 * read twice: as it is, and with its CRC recomputed, so that mutations get past the checksum to
 * the section table and the signature's CBOR.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/cage-broker plugins/cage-broker/eif.c \
 *     fuzz/fuzz_eif.c -lcrypto -lz -o /tmp/fuzz_eif
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "../plugins/cage-broker/eif.h"

static void one(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  one(data, size);
  if (size >= EIF_HEADER_LEN && size < (1u << 24)) {
    uint8_t *fixed = malloc(size);
    if (!fixed) return 0;
    memcpy(fixed, data, size);
    uLong crc = crc32(0, fixed, EIF_HEADER_LEN - 4);
    crc = crc32(crc, fixed + EIF_HEADER_LEN, (uInt)(size - EIF_HEADER_LEN));
    for (int i = 0; i < 4; i++) fixed[EIF_HEADER_LEN - 4 + i] = (uint8_t)(crc >> (24 - 8 * i));
    one(fixed, size);
    free(fixed);
  }
  return 0;
}

static void one(const uint8_t *data, size_t size) {
  eif_image *img = NULL;
  const char *why = NULL;
  if (eif_parse(data, size, &img, &why) < 0) {
    if (!why || !*why) __builtin_trap();
    return;
  }
  const uint8_t *p;
  size_t n;
  for (int t = EIF_SECTION_KERNEL; t <= EIF_SECTION_METADATA; t++)
    for (unsigned i = 0; eif_section(img, (eif_section_type)t, i, &p, &n) == 0; i++)
      if (n > size) __builtin_trap();
  eif_pcrs pcrs;
  if (eif_pcrs_of(img, &pcrs) < 0) __builtin_trap();
  char hex[2 * EIF_PCR_LEN + 1];
  eif_pcr_hex(pcrs.pcr0, hex);
  if (strlen(hex) != 96) __builtin_trap();
  const char *vwhy = NULL;
  int rc = eif_verify_signature(img, &vwhy);
  if (rc < 0 && rc != -2 /* ENOENT */ && !vwhy) __builtin_trap();
  eif_free(img);
}
