/*
 * libFuzzer target for plugins/function-runtime/fn_archive.c: a deployed Function's tar.gz,
 * checked without writing (dir NULL takes the same decisions as an unpack, entry by entry). The
 * input is the archive itself. Invariants: no crash, no leak, an answer of 0 or a negative
 * errno with a NUL-terminated reason; and the name check accepts nothing that could leave the
 * target directory.
 *
 *   clang -g -fsanitize=fuzzer,address,undefined -Iplugins/function-runtime \
 *     plugins/function-runtime/fn_archive.c fuzz/fuzz_fn_archive.c -larchive -o /tmp/fuzz_fn_archive
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fn_archive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256];
  memset(err, 'x', sizeof err);
  int rc = evs__fn_archive_unpack(data, size, 1u << 20, NULL, err, sizeof err);
  if (rc > 0 || memchr(err, 0, sizeof err) == NULL) __builtin_trap();
  /* The name rule on the raw bytes, as text. */
  char name[FN_ARCHIVE_NAME_MAX + 2];
  size_t n = size < sizeof name - 1 ? size : sizeof name - 1;
  memcpy(name, data, n);
  name[n] = 0;
  if (evs__fn_archive_name_ok(name)) {
    /* Component by component: none empty (but a trailing '/'), ".", or ".."; not absolute. */
    size_t l = strlen(name);
    if (name[0] == '/' || l == 0) __builtin_trap();
    if (name[l - 1] == '/') name[--l] = 0;
    for (char *c = name, *e; c; c = e ? e + 1 : NULL) {
      e = strchr(c, '/');
      size_t cl = e ? (size_t)(e - c) : strlen(c);
      if (cl == 0 || (cl == 1 && c[0] == '.') || (cl == 2 && c[0] == '.' && c[1] == '.')) __builtin_trap();
    }
  }
  return 0;
}
