/* token_bucket.h: the one rate limiter (alerts per destination, the Outbound
 * Relay's unauthenticated leaves, GET /public-keys per client address). A bucket holds at most
 * `burst` tokens and gains `per_minute` every 60 s, continuously: unlike a fixed window, a burst
 * across a window's edge cannot pass twice the rate. Header-only, libc alone, no state beyond
 * the struct; the caller passes a monotonic clock in milliseconds. */
#ifndef EVS_TOKEN_BUCKET_H
#define EVS_TOKEN_BUCKET_H

#include <stdint.h>

typedef struct evs_token_bucket {
  double tokens;
  double burst;
  double per_ms;
  uint64_t last_ms;
} evs_token_bucket;

/* A full bucket. per_minute and burst below 1 are taken as 1. */
static inline void evs_token_bucket_init(evs_token_bucket *b, int64_t per_minute, int64_t burst,
                                         uint64_t now_ms) {
  b->burst = burst >= 1 ? (double)burst : 1.0;
  b->per_ms = (per_minute >= 1 ? (double)per_minute : 1.0) / 60000.0;
  b->tokens = b->burst;
  b->last_ms = now_ms;
}

/* Takes a token: 1 if one was there, 0 if the caller must refuse. A clock that went backwards
 * adds nothing. */
static inline int evs_token_bucket_take(evs_token_bucket *b, uint64_t now_ms) {
  if (now_ms > b->last_ms) {
    b->tokens += (double)(now_ms - b->last_ms) * b->per_ms;
    if (b->tokens > b->burst) b->tokens = b->burst;
    b->last_ms = now_ms;
  }
  if (b->tokens < 1.0) return 0;
  b->tokens -= 1.0;
  return 1;
}

#endif
