/*
 * spool.c: the relay's body spool (spool.h): memory first, then an unlinked temporary file;
 * holes filled out of order, read back in order.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REPLAY_CHUNK (64u << 10)

int relay_buf_grow_wiped(uint8_t **buf, size_t *cap, size_t used, size_t need, size_t first) {
  if (need <= *cap) return 0;
  size_t ncap = *cap ? *cap * 2 : first;
  if (ncap < need) ncap = need;
  uint8_t *nb = malloc(ncap);
  if (!nb) return -ENOMEM;
  if (*buf) {
    memcpy(nb, *buf, used);
    explicit_bzero(*buf, used);
    free(*buf);
  }
  *buf = nb;
  *cap = ncap;
  return 0;
}

void relay_spool_init(relay_spool *s, const char *dir, size_t mem_max) {
  memset(s, 0, sizeof *s);
  s->dir = dir;
  s->mem_max = mem_max;
  s->fd = -1;
}

static int open_tmp(relay_spool *s) {
  const char *dir = s->dir && *s->dir ? s->dir : "/tmp";
  int fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    char path[4096];
    snprintf(path, sizeof path, "%s/evs-spool-XXXXXX", dir);
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) return -errno;
    unlink(path);
  }
  s->fd = fd;
  return 0;
}

int relay_spool_write(relay_spool *s, const void *data, size_t len) {
  if (len == 0) return 0;
  if (s->fd < 0 && s->mem_len + len <= s->mem_max) {
    if (s->mem_len + len > s->mem_cap) {
      size_t ncap = s->mem_cap ? s->mem_cap * 2 : 512; /* small bodies: a small (cached) chunk */
      while (ncap < s->mem_len + len) ncap *= 2;
      if (ncap > s->mem_max) ncap = s->mem_max;
      uint8_t *nm = realloc(s->mem, ncap);
      if (!nm) return -ENOMEM;
      s->mem = nm;
      s->mem_cap = ncap;
    }
    memcpy(s->mem + s->mem_len, data, len);
    s->mem_len += len;
    return 0;
  }
  if (s->fd < 0) {
    int r = open_tmp(s);
    if (r < 0) return r;
  }
  const uint8_t *p = data;
  while (len > 0) {
    ssize_t w = pwrite(s->fd, p, len, (off_t)s->file_len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    s->file_len += (uint64_t)w;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

int relay_spool_hole(relay_spool *s, size_t *ret_index) {
  if (s->nholes == s->holes_cap) {
    size_t ncap = s->holes_cap ? s->holes_cap * 2 : 16;
    relay_hole *nh = realloc(s->holes, ncap * sizeof *nh);
    if (!nh) return -ENOMEM;
    s->holes = nh;
    s->holes_cap = ncap;
  }
  s->holes[s->nholes] = (relay_hole){s->mem_len + s->file_len, 0, 0, 0};
  *ret_index = s->nholes++;
  return 0;
}

int relay_spool_fill(relay_spool *s, size_t i, const void *data, size_t len) {
  if (i >= s->nholes || s->holes[i].filled) return -EINVAL;
  if (relay_buf_grow_wiped(&s->fill, &s->fill_cap, s->hole_bytes, s->hole_bytes + len, 256) < 0)
    return -ENOMEM;
  if (len) memcpy(s->fill + s->hole_bytes, data, len);
  s->holes[i] = (relay_hole){s->holes[i].at, s->hole_bytes, len, 1};
  s->filled++;
  s->hole_bytes += len;
  return 0;
}

uint64_t relay_spool_total(const relay_spool *s) {
  return s->mem_len + s->file_len + s->hole_bytes;
}

void relay_spool_rewind(relay_spool *s) {
  s->rd_base = 0;
  s->rd_hole = 0;
  s->rd_hole_off = 0;
}

int relay_spool_read(relay_spool *s, uint8_t *buf, size_t cap, size_t *ret_len) {
  size_t out = 0;
  uint64_t base_len = s->mem_len + s->file_len;
  while (out < cap) {
    if (s->rd_hole < s->nholes && s->holes[s->rd_hole].at == s->rd_base) {
      relay_hole *h = &s->holes[s->rd_hole];
      size_t n = h->len - s->rd_hole_off;
      if (n > cap - out) n = cap - out;
      if (n) memcpy(buf + out, s->fill + h->off + s->rd_hole_off, n);
      out += n;
      s->rd_hole_off += n;
      if (s->rd_hole_off == h->len) {
        s->rd_hole++;
        s->rd_hole_off = 0;
      }
      continue;
    }
    uint64_t stop = s->rd_hole < s->nholes ? s->holes[s->rd_hole].at : base_len;
    if (s->rd_base >= stop) break; /* the end */
    uint64_t n64 = stop - s->rd_base;
    size_t n = n64 < (uint64_t)(cap - out) ? (size_t)n64 : cap - out;
    if (s->rd_base < s->mem_len) {
      size_t m = s->mem_len - (size_t)s->rd_base;
      if (n > m) n = m;
      memcpy(buf + out, s->mem + s->rd_base, n);
    } else {
      ssize_t r;
      do r = pread(s->fd, buf + out, n, (off_t)(s->rd_base - s->mem_len));
      while (r < 0 && errno == EINTR);
      if (r <= 0) return -EIO;
      n = (size_t)r;
    }
    out += n;
    s->rd_base += n;
  }
  *ret_len = out;
  return 0;
}

void relay_spool_done(relay_spool *s) {
  if (s->fill) explicit_bzero(s->fill, s->hole_bytes);
  free(s->fill);
  free(s->holes);
  free(s->mem);
  if (s->fd >= 0) close(s->fd);
  relay_spool_init(s, s->dir, s->mem_max);
}

void relay_spool_reset(relay_spool *s) {
  if (s->fill) explicit_bzero(s->fill, s->hole_bytes);
  if (s->mem) explicit_bzero(s->mem, s->mem_len);
  if (s->fd >= 0) close(s->fd);
  uint8_t *mem = s->mem, *fill = s->fill;
  relay_hole *holes = s->holes;
  size_t mem_cap = s->mem_cap, holes_cap = s->holes_cap, fill_cap = s->fill_cap;
  relay_spool_init(s, s->dir, s->mem_max);
  s->mem = mem;
  s->mem_cap = mem_cap;
  s->holes = holes;
  s->holes_cap = holes_cap;
  s->fill = fill;
  s->fill_cap = fill_cap;
}

int relay_spool_replay(relay_spool *s, int (*fn)(void *arg, const uint8_t *p, size_t n),
                       void *arg) {
  uint64_t total = relay_spool_total(s);
  size_t cap = total < REPLAY_CHUNK ? (size_t)total : REPLAY_CHUNK;
  if (cap == 0) return 0;
  uint8_t *buf = malloc(cap);
  if (!buf) return -ENOMEM;
  size_t got = 0;
  int r;
  relay_spool_rewind(s);
  while ((r = relay_spool_read(s, buf, cap, &got)) == 0 && got > 0)
    if ((r = fn(arg, buf, got)) < 0) break;
  free(buf);
  return r;
}
