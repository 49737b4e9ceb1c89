/*
 * ws_plain_ref.h: evs__ws_remask_plain's rule (plugins/relay-common/ws_frame.h), byte by byte:
 * the reference that test_ws_frame and fuzz_ws_frame hold the sixteen-byte pass to.
 */
#ifndef EVS_TESTS_WS_PLAIN_REF_H
#define EVS_TESTS_WS_PLAIN_REF_H

#include <stddef.h>
#include <stdint.h>

/* 1 when every byte is ASCII and none could start a token the guard looks for. */
static inline int ws_plain_ref(const uint8_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint8_t c = t[i], c2 = i + 1 < n ? t[i + 1] : 0;
    if (c >= 0x80 || c == '%' || c == '\\' || c == '&') return 0;
    if (c == 'e' && (i + 1 == n || c2 == 'v' || c2 == 'e' || c2 == '%' || c2 == '\\' ||
                     c2 == '&'))
      return 0;
  }
  return 1;
}

#endif
