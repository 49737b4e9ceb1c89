/*
 * libFuzzer target for core/relay_config.c: evs__relay_config_load_buffer over arbitrary bytes,
 * then lookups. Invariants checked besides memory errors: every loaded relay is found by its
 * own domain (the sorted array and the case-insensitive search agree), and the loaded data
 * satisfies the documented guarantees (one kind of destination, non-empty route fields).
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icore \
 *     core/relay_config.c fuzz/fuzz_relay_config.c -ljansson -o /tmp/fuzz_relay_config
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512], host[300];
  evs__relay_config *c = NULL;
  size_t k;
  if (evs__relay_config_load_buffer("/fuzz/relay-config.json", (const char *)data, size, &c, err,
                                    sizeof err) != 0) {
    if (c) __builtin_trap(); /* outputs are written only on success */
    return 0;
  }
  for (size_t i = 0; i < c->n; i++) {
    const evs__relay *r = &c->relays[i];
    if (evs__relay_config_find(c, r->domain) != r) __builtin_trap();
    if (!r->destination_scheme || (!r->destination_host == !r->ndns_targets)) __builtin_trap();
    for (size_t j = 0; j < r->nroutes; j++) {
      if (r->routes[j].route[0] != '/' || r->routes[j].nfields == 0) __builtin_trap();
      for (size_t f = 0; f < r->routes[j].nfields; f++)
        if (!r->routes[j].fields[f][0]) __builtin_trap();
    }
    if (!r->mtls_certificate != !r->mtls_key) __builtin_trap();
  }
  k = size < sizeof host - 1 ? size : sizeof host - 1;
  memcpy(host, data, k);
  host[k] = 0;
  (void)evs__relay_config_find(c, host);
  evs__relay_config_free(c);
  return 0;
}
