/*
 * libFuzzer target for plugins/relay-inbound/structure.c (request structures: field paths of a
 * body sample, never values). The first byte picks the kind, the rest is the sample. Besides
 * memory errors it checks: the result is an array of at most RELAY_STRUCTURE_MAX_FIELDS distinct
 * strings, and JSON and XML paths start with "$".
 */
#include <stdint.h>
#include <string.h>

#include "structure.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *kinds[] = {"json", "xml", "form", "multipart"};
  if (size < 1) return 0;
  const char *kind = kinds[data[0] % 4];
  json_t *f = relay_structure_fields(kind, (const char *)data + 1, size - 1);
  if (!f) return 0;
  if (!json_is_array(f) || json_array_size(f) > RELAY_STRUCTURE_MAX_FIELDS) __builtin_trap();
  for (size_t i = 0; i < json_array_size(f); i++) {
    const char *s = json_string_value(json_array_get(f, i));
    if (!s) __builtin_trap();
    if ((data[0] % 4) < 2 && s[0] != '$') __builtin_trap();
    for (size_t j = 0; j < i; j++)
      if (strcmp(s, json_string_value(json_array_get(f, j))) == 0) __builtin_trap();
  }
  json_decref(f);
  return 0;
}
