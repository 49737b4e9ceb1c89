/*
 * evs-test-eif: writes a small image file for the cage tests with plugins/cage-broker/eif.c:
 *   evs-test-eif OUT TAG [CERT.pem KEY.pem]
 * The kernel, cmdline and ramdisks are made from TAG (different tags, different PCRs); with a
 * certificate and key the image is signed (PCR8). Prints the PCRs as JSON.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eif.h"

static eif_blob slurp(const char *path) {
  eif_blob b = {NULL, 0};
  FILE *f = fopen(path, "rb");
  if (!f) return b;
  static uint8_t buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  b.data = malloc(n);
  if (b.data) memcpy((void *)b.data, buf, n);
  b.len = n;
  return b;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 5) {
    fprintf(stderr, "usage: evs-test-eif OUT TAG [CERT KEY]\n");
    return 2;
  }
  char kernel[256], rd0[256], rd1[4096];
  snprintf(kernel, sizeof kernel, "kernel of %s", argv[2]);
  snprintf(rd0, sizeof rd0, "bootstrap of %s", argv[2]);
  memset(rd1, 'a', sizeof rd1);
  memcpy(rd1, argv[2], strlen(argv[2]) < sizeof rd1 ? strlen(argv[2]) : sizeof rd1);
  eif_blob rds[2] = {{(const uint8_t *)rd0, strlen(rd0)}, {(const uint8_t *)rd1, sizeof rd1}};
  eif_build_in in;
  memset(&in, 0, sizeof in);
  in.kernel.data = (const uint8_t *)kernel;
  in.kernel.len = strlen(kernel);
  in.cmdline = "console=ttyS0";
  in.ramdisks = rds;
  in.nramdisks = 2;
  in.metadata.data = (const uint8_t *)"{}";
  in.metadata.len = 2;
  if (argc == 5) {
    static eif_blob c, k;
    c = slurp(argv[3]);
    k = slurp(argv[4]);
    in.signing_cert = c;
    in.signing_key = k;
  }
  eif_pcrs pcrs;
  const char *why = NULL;
  if (eif_write(argv[1], &in, &pcrs, &why) < 0) {
    fprintf(stderr, "evs-test-eif: %s\n", why ? why : "failed");
    return 1;
  }
  char h0[97], h1[97], h2[97], h8[97];
  eif_pcr_hex(pcrs.pcr0, h0);
  eif_pcr_hex(pcrs.pcr1, h1);
  eif_pcr_hex(pcrs.pcr2, h2);
  eif_pcr_hex(pcrs.pcr8, h8);
  printf("{\"pcr0\":\"%s\",\"pcr1\":\"%s\",\"pcr2\":\"%s\",\"pcr8\":\"%s\"}\n", h0, h1, h2, h8);
  return 0;
}
