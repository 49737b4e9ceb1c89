/*
 * libFuzzer target for core/evctl/fn_toml.c, evctl's reader of function.toml. The input is the
 * file. Invariants: no crash, no leak; an accepted file gives an object of objects whose values
 * are strings, integers, booleans or arrays of strings, and dumps to JSON; a refused one gives
 * a "line N: ..." reason.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Icore/evctl core/evctl/fn_toml.c \
 *     fuzz/fuzz_fn_toml.c -ljansson -o /tmp/fuzz_fn_toml
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../core/evctl/fn_toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_t *root = NULL;
  char err[256];
  if (evctl_toml_parse((const char *)data, size, &root, err, sizeof err) < 0) {
    if (strncmp(err, "line ", 5) != 0) __builtin_trap();
    return 0;
  }
  const char *t;
  json_t *table;
  json_object_foreach(root, t, table) {
    if (!json_is_object(table)) __builtin_trap();
    const char *k;
    json_t *v;
    json_object_foreach(table, k, v) {
      if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) if (!json_is_string(x)) __builtin_trap();
      } else if (!json_is_string(v) && !json_is_integer(v) && !json_is_boolean(v)) {
        __builtin_trap();
      }
    }
  }
  char *s = json_dumps(root, 0);
  if (!s) __builtin_trap();
  free(s);
  json_decref(root);
  return 0;
}
