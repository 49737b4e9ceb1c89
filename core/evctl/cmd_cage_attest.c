/*
 * cmd_cage_attest.c: `evctl cage attest` (fetch a running cage's attestation document and verify
 * it against expected PCRs). Placeholder until the attestation piece lands (issue 14).
 */
#include "evctl.h"

int cmd_cage_attest(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fputs("evctl: cage attest: not built\n", stderr);
  return EVCTL_EXIT_USAGE;
}
