/*
 * ev_guard: finds Evervault-encrypted data (ev: strings and %EVENC files) in bytes a client sent,
 * in every spelling a destination could turn back into one: raw, JSON escapes (\u0065, \/),
 * percent-encoding (%65), XML/HTML character references (&#101; &#x65; &colon; &dollar;), and
 * any two of these nested (%5Cu0065, %2565). It is the one place that answers "does this request
 * carry ciphertext": the Inbound Relay runs every request's path, query, header values and body
 * through it, whatever the content type, before anything reaches the destination.
 *
 * Why every spelling: a relay that decrypts responses turns any ev: string its destination
 * echoes back into plaintext. A client must not be able to smuggle someone else's ciphertext to
 * the destination in a spelling the relay's own parsers did not look at.
 *
 * What counts (a superset of what decrypt_scan.c decrypts, so nothing it would decrypt slips
 * past): "ev:" followed by a run of base64/base64url characters and ':' with at least 5 ':' in
 * all (counting the one after "ev"), ending ":$"; and the bytes "%EVENC" anywhere. A byte
 * decoded to a code point above 0x7f counts as an ordinary character.
 *
 * Streaming: any split of the input finds the same values; state is a few bytes. No
 * allocation, no logging. Library-like C (libc only), so other plugins can compile it in.
 */
#ifndef EVS_RELAY_EV_GUARD_H
#define EVS_RELAY_EV_GUARD_H

#include <stddef.h>
#include <stdint.h>

/* One decoding level: an escape being read (at most 12 bytes: "&#x0000000;" or "\u0065"). */
typedef struct evs__ev_guard_dec {
  unsigned char p[12];
  uint8_t n;
} evs__ev_guard_dec;

typedef struct evs__ev_guard {
  evs__ev_guard_dec dec[2]; /* raw -> dec[0] -> dec[1] -> detector */
  uint8_t ev;               /* how much of "ev:" matched; 3: inside a candidate */
  uint8_t last_colon;
  uint32_t colons;
  uint8_t magic;            /* how much of "%EVENC" matched */
  size_t found;             /* values found so far */
} evs__ev_guard;

void evs__ev_guard_init(evs__ev_guard *g);
/* Looks at buf[0..len), any split. Returns the number of values found so far. */
size_t evs__ev_guard_feed(evs__ev_guard *g, const void *buf, size_t len);
/* The end of the input: an escape left open is read as the plain bytes it is. Returns the
 * number of values found in all. The guard may be fed again afterwards (a new input). */
size_t evs__ev_guard_finish(evs__ev_guard *g);
/* The number of values in buf[0..len) on its own. */
size_t evs__ev_guard_scan(const void *buf, size_t len);

#endif
