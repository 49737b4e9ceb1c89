/*
 * libFuzzer target for the enclave's relay CA parsers (enclave/proc/ca.c): the SAN check, the
 * leaf's public key (PEM or DER SubjectPublicKeyInfo), the CA certificate (PEM) and the sealed
 * key, all inputs of EVS_EP_CA_SIGN. A real CA is made once; every input is split at 0xff bytes:
 * the first part is the public key, the next ones names (their count from the first byte). Now
 * and then the input also stands in for the sealed key or the CA certificate. Invariant: no
 * crash, no leak, and a signed leaf only for names evs__ca_name_kind accepts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "enclave.h"

static evs_enclave *enclave;
static char *ca_pem;
static uint8_t *sealed;
static size_t ca_pem_len, sealed_len;

static void setup(void) {
  uint8_t seal[EVS_SEAL_KEY_LEN];
  memset(seal, 9, sizeof seal);
  if (evs__enclave_new(seal, &enclave) != 0) abort();
  if (evs__ca_create(enclave, NULL, 0, 0, &ca_pem, &ca_pem_len, &sealed, &sealed_len) != 0)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!enclave) setup();
  (void)evs__ca_name_kind(data, size, NULL, NULL);
  if (size == 0) return 0;
  size_t want = (size_t)data[0] % (EVS_CA_MAX_NAMES + 2);
  evs_ep_item parts[EVS_CA_MAX_NAMES + 2];
  size_t n = 0, start = 1;
  for (size_t i = 1; i <= size && n < want + 1; i++) {
    if (i == size || data[i] == 0xff) {
      parts[n].p = data + start;
      parts[n].len = (uint32_t)(i - start);
      n++;
      start = i + 1;
    }
  }
  if (n == 0) return 0;
  char *pem = NULL;
  size_t len = 0;
  const uint8_t *cap = (const uint8_t *)ca_pem, *sk = sealed;
  size_t capl = ca_pem_len, skl = sealed_len;
  if (data[0] == 0xfe) { sk = data; skl = size; }
  if (data[0] == 0xfd) { cap = data; capl = size; }
  int r = evs__ca_sign(enclave, cap, capl, sk, skl, parts[0].p, parts[0].len, 0, parts + 1, n - 1,
                       &pem, &len);
  if (r == EVS_EP_OK) {
    for (size_t i = 1; i < n; i++)
      if (!evs__ca_name_kind(parts[i].p, parts[i].len, NULL, NULL)) abort();
    free(pem);
  }
  return 0;
}
