/*
 * libFuzzer target for the enclave's request handling (enclave/proc): every input is one request
 * message body. The enclave holds one unlocked app, created once, so ENCRYPT/DECRYPT and the
 * per-item parsers run on real keys. Invariant: evs__ep_handle always produces one well-formed
 * response whose length prefix matches and whose request id is the one parsed, if any.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "enclave.h"

static evs_enclave *enclave;

static void setup(void) {
  uint8_t seal[EVS_SEAL_KEY_LEN];
  memset(seal, 7, sizeof seal);
  if (evs__enclave_new(seal, &enclave) != 0) abort();
  evs_app_created c;
  if (evs__app_create(enclave, (const uint8_t *)"app_fuzz", 8, &c) != 0) abort();
  evs__app_created_done(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Inputs may create apps (state the enclave keeps by design): start afresh now and then so
   * the fuzzer measures leaks, not the apps it made. */
  static unsigned runs;
  if (enclave && ++runs % 256 == 0) {
    evs__enclave_free(enclave);
    enclave = NULL;
  }
  if (!enclave) setup();
  evs_ep_buf out;
  memset(&out, 0, sizeof out);
  evs__ep_handle(enclave, data, size, &out);
  if (out.len < EVS_EP_HEADER_LEN) abort(); /* the header length includes the length field */
  if (evs_ep_get_u32(out.p) != out.len - 4) abort();
  if (evs_ep_get_u32(out.p + 4) != EVS_EP_MAGIC) abort();
  evs__ep_buf_done(&out);
  return 0;
}
