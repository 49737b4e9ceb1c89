/*
 * spool: where the relay holds a rewritten body until every encrypted (or decrypted) value is
 * back from the enclave. The bytes around the values are written in order; each value is a
 * hole recorded at the current position and filled later, in any order. Reading then yields
 * the body with the holes' bytes in place.
 *
 * Memory is bounded: the first mem_max bytes stay in memory, the rest go to an unlinked
 * temporary file (O_TMPFILE) in the spool directory. Only bytes that pass through unchanged go
 * to that file; hole contents (ciphertext on requests, plaintext on responses) stay in memory,
 * one after another in one buffer (never moved without wiping the old copy), and are wiped when
 * the spool is freed or reset.
 */
#ifndef EVS_RELAY_SPOOL_H
#define EVS_RELAY_SPOOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct relay_hole {
  uint64_t at; /* offset among the spooled bytes (holes excluded) */
  size_t off, len; /* its bytes in fill, once filled */
  int filled;
} relay_hole;

typedef struct relay_spool {
  const char *dir; /* for the temporary file; borrowed */
  size_t mem_max;
  uint8_t *mem;
  size_t mem_len, mem_cap;
  int fd; /* -1: nothing spilled */
  uint64_t file_len;
  relay_hole *holes;
  size_t nholes, holes_cap, filled;
  size_t hole_bytes;
  uint8_t *fill; /* the holes' bytes, in the order they were filled */
  size_t fill_cap;
  /* reader */
  uint64_t rd_base;
  size_t rd_hole, rd_hole_off;
} relay_spool;

/* Makes room for need bytes in *buf (*cap of room; its first used bytes kept): at least twice
 * the room, from first. By a new buffer, the old copy wiped, where realloc would leave it
 * behind: a body's values may be plaintext. 0 or -ENOMEM (*buf unchanged). */
int relay_buf_grow_wiped(uint8_t **buf, size_t *cap, size_t used, size_t need, size_t first);

void relay_spool_init(relay_spool *s, const char *dir, size_t mem_max);
/* 0 or a negative errno (-ENOSPC, -EIO, -ENOMEM). */
int relay_spool_write(relay_spool *s, const void *data, size_t len);
/* Records a hole at the current position; its index in *ret_index. */
int relay_spool_hole(relay_spool *s, size_t *ret_index);
/* Fills hole i with a copy of data[0..len). */
int relay_spool_fill(relay_spool *s, size_t i, const void *data, size_t len);
/* The spooled bytes plus the filled holes. */
uint64_t relay_spool_total(const relay_spool *s);
void relay_spool_rewind(relay_spool *s);
/* Reads the next bytes (at most cap) into buf; *ret_len is 0 at the end. 0 or -EIO. */
int relay_spool_read(relay_spool *s, uint8_t *buf, size_t cap, size_t *ret_len);
/* Wipes the hole contents and frees everything; s may be half-built. */
/* Rewind, then hand the whole spool to fn in pieces of at most 64 KiB (through one buffer of
 * at most that size). Returns 0, or the first negative value of reading or of fn. */
int relay_spool_replay(relay_spool *s, int (*fn)(void *arg, const uint8_t *p, size_t n),
                       void *arg);
void relay_spool_done(relay_spool *s);
/* As done, but the memory part and the holes' array are kept (wiped, emptied) for the next body
 * (a WebSocket's next message); a temporary file is closed. */
void relay_spool_reset(relay_spool *s);

#endif
