/*
 * store_sqlite_vfs.c: the SQLite store's VFS, the platform's default VFS with one change: the
 * frames of a WAL commit reach the file in one write instead of two per page.
 *
 * SQLite writes each WAL frame as two pwrite() calls, its 24-byte header and then the page, so
 * a commit of a batch of records (~6 pages) made ~12 system calls, and the kernel's buffered
 * write path per call was the largest part of the store thread's CPU. This VFS collects the
 * consecutive writes of one run of frames in a buffer and writes the run at once when the page
 * of a commit frame arrives (a frame header with a non-zero "database size after commit"
 * field; see the WAL format in SQLite's fileformat2 document). So when SQLite's commit returns,
 * every byte of it has been written to the file exactly as without this VFS: what survives a
 * crash of the process (kill -9) and what synchronous=NORMAL promises are unchanged, and other
 * connections only ever look at frames up to the last commit, which are in the file.
 *
 * Only writes shaped as SQLite writes frames are held: the 32-byte WAL header at offset 0, a
 * 24-byte frame header at the end of the run, then its page. Anything else (another offset, a
 * write of another shape) first writes the run out and then goes straight to the file, as does
 * every other call on the WAL file (read, sync, truncate, size, file control, close), so the
 * file never looks different from what SQLite wrote. A run that is not a commit (a transaction
 * that spills pages before it commits) is held until the next call on the file; a write error
 * surfaces from the call that writes the run, and SQLite then fails the transaction.
 *
 * Database files and everything else pass straight through. One buffer per open WAL file,
 * allocated at its first held write; a file handle belongs to one connection, which the store
 * uses from one thread at a time, so nothing here locks.
 */
#include "store_sqlite_vfs.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bytes held at most; a longer run is written in parts. The default VFS writes at most 128 KiB
 * - 1 bytes per call (it never needs more than a 64 KiB page): a larger write would come out
 * short and fail as SQLITE_FULL. */
#define RUN_MAX (120 * 1024)
#define WAL_HDR 32
#define FRAME_HDR 24

typedef struct wfile {
  sqlite3_file base;
  sqlite3_file *real;    /* the default VFS's file, allocated right after this struct */
  int wal;
  int expect_page;       /* a frame header is held: the next write, if contiguous, is its page */
  int commit;            /* ... and that frame ends a transaction */
  unsigned char *buf;
  size_t len;
  sqlite3_int64 off;     /* of buf[0] in the file */
} wfile;

static sqlite3_vfs *base_vfs;
static sqlite3_vfs walbuf_vfs;
static sqlite3_io_methods walbuf_io;
static int registered_rc = SQLITE_ERROR;
static pthread_once_t once = PTHREAD_ONCE_INIT;

#define REAL(f) (((wfile *)(f))->real)

static int flush(wfile *w) {
  int rc = SQLITE_OK;
  if (w->len)
    rc = w->real->pMethods->xWrite(w->real, w->buf, (int)w->len, w->off);
  w->len = 0;
  w->expect_page = w->commit = 0;
  return rc;
}

/* Append to the run; 0 if held, else the caller writes through. */
static int hold(wfile *w, const void *p, int n, sqlite3_int64 ofst, int *rc) {
  if (!w->buf) {
    w->buf = malloc(RUN_MAX);
    if (!w->buf)
      return 0;
  }
  if (w->len + (size_t)n > RUN_MAX && (*rc = flush(w)) != SQLITE_OK)
    return 1;
  if ((size_t)n > RUN_MAX)
    return 0;
  if (w->len == 0)
    w->off = ofst;
  memcpy(w->buf + w->len, p, (size_t)n);
  w->len += (size_t)n;
  return 1;
}

static int w_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 ofst) {
  wfile *w = (wfile *)f;
  int rc = SQLITE_OK;

  if (!w->wal)
    return w->real->pMethods->xWrite(w->real, p, n, ofst);
  int at_end = w->len ? ofst == w->off + (sqlite3_int64)w->len : 1;
  if (at_end && w->expect_page) {
    int commit = w->commit;
    /* The page of the held frame header: the frame is whole. */
    w->expect_page = w->commit = 0;
    if (!hold(w, p, n, ofst, &rc)) {
      if ((rc = flush(w)) != SQLITE_OK)
        return rc;
      return w->real->pMethods->xWrite(w->real, p, n, ofst);
    }
    if (rc == SQLITE_OK && commit)
      rc = flush(w);
    return rc;
  }
  if (at_end && !w->expect_page &&
      ((n == WAL_HDR && ofst == 0) || (n == FRAME_HDR && ofst >= WAL_HDR))) {
    const unsigned char *h = p;
    int frame = n == FRAME_HDR;
    int commit = frame && (h[4] | h[5] | h[6] | h[7]) != 0;
    if (hold(w, p, n, ofst, &rc)) {
      if (rc != SQLITE_OK)
        return rc;
      w->expect_page = frame;
      w->commit = commit;
      return SQLITE_OK;
    }
  }
  if ((rc = flush(w)) != SQLITE_OK)
    return rc;
  return w->real->pMethods->xWrite(w->real, p, n, ofst);
}

static int w_close(sqlite3_file *f) {
  wfile *w = (wfile *)f;
  int rc = flush(w);
  int rc2 = w->real->pMethods->xClose(w->real);
  free(w->buf);
  w->buf = NULL;
  return rc != SQLITE_OK ? rc : rc2;
}

/* Every other call sees the file as SQLite wrote it: the held run first. */
#define FLUSHED(f)                                                                            \
  do {                                                                                        \
    int frc_ = flush((wfile *)(f));                                                           \
    if (frc_ != SQLITE_OK)                                                                    \
      return frc_;                                                                            \
  } while (0)

static int w_read(sqlite3_file *f, void *p, int n, sqlite3_int64 ofst) {
  FLUSHED(f);
  return REAL(f)->pMethods->xRead(REAL(f), p, n, ofst);
}

static int w_truncate(sqlite3_file *f, sqlite3_int64 size) {
  FLUSHED(f);
  return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static _Thread_local uint64_t thread_syncs;

uint64_t evs__sqlite_vfs_thread_syncs(void) {
  return thread_syncs;
}

static int w_sync(sqlite3_file *f, int flags) {
  thread_syncs++;
  FLUSHED(f);
  return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int w_file_size(sqlite3_file *f, sqlite3_int64 *size) {
  FLUSHED(f);
  return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int w_file_control(sqlite3_file *f, int op, void *arg) {
  FLUSHED(f);
  return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int w_fetch(sqlite3_file *f, sqlite3_int64 ofst, int n, void **pp) {
  FLUSHED(f);
  return REAL(f)->pMethods->xFetch(REAL(f), ofst, n, pp);
}

static int w_lock(sqlite3_file *f, int l) {
  return REAL(f)->pMethods->xLock(REAL(f), l);
}

static int w_unlock(sqlite3_file *f, int l) {
  return REAL(f)->pMethods->xUnlock(REAL(f), l);
}

static int w_check_reserved(sqlite3_file *f, int *out) {
  return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int w_sector_size(sqlite3_file *f) {
  return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int w_device_characteristics(sqlite3_file *f) {
  return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int w_shm_map(sqlite3_file *f, int i, int size, int extend, void volatile **pp) {
  return REAL(f)->pMethods->xShmMap(REAL(f), i, size, extend, pp);
}

static int w_shm_lock(sqlite3_file *f, int ofst, int n, int flags) {
  return REAL(f)->pMethods->xShmLock(REAL(f), ofst, n, flags);
}

static void w_shm_barrier(sqlite3_file *f) {
  REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int w_shm_unmap(sqlite3_file *f, int del) {
  return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static int w_unfetch(sqlite3_file *f, sqlite3_int64 ofst, void *p) {
  return REAL(f)->pMethods->xUnfetch(REAL(f), ofst, p);
}

static int w_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags,
                  int *out_flags) {
  wfile *w = (wfile *)f;
  int rc;

  (void)vfs;
  memset(w, 0, sizeof(*w));
  w->real = (sqlite3_file *)(w + 1);
  rc = base_vfs->xOpen(base_vfs, name, w->real, flags, out_flags);
  if (!w->real->pMethods) {
    f->pMethods = NULL; /* SQLite then does not call xClose */
    return rc;
  }
  w->wal = (flags & SQLITE_OPEN_WAL) != 0;
  f->pMethods = &walbuf_io;
  return rc;
}

static void init(void) {
  base_vfs = sqlite3_vfs_find(NULL);
  if (!base_vfs || base_vfs->iVersion < 1)
    return;
  walbuf_io = (sqlite3_io_methods){
    .iVersion = 3,
    .xClose = w_close,
    .xRead = w_read,
    .xWrite = w_write,
    .xTruncate = w_truncate,
    .xSync = w_sync,
    .xFileSize = w_file_size,
    .xLock = w_lock,
    .xUnlock = w_unlock,
    .xCheckReservedLock = w_check_reserved,
    .xFileControl = w_file_control,
    .xSectorSize = w_sector_size,
    .xDeviceCharacteristics = w_device_characteristics,
    .xShmMap = w_shm_map,
    .xShmLock = w_shm_lock,
    .xShmBarrier = w_shm_barrier,
    .xShmUnmap = w_shm_unmap,
    .xFetch = w_fetch,
    .xUnfetch = w_unfetch,
  };
  /* Everything but xOpen is the default VFS's own (they do not look at the VFS pointer beyond
   * pAppData, copied with it). */
  walbuf_vfs = *base_vfs;
  walbuf_vfs.zName = EVS_SQLITE_VFS;
  walbuf_vfs.szOsFile = (int)sizeof(wfile) + base_vfs->szOsFile;
  walbuf_vfs.xOpen = w_open;
  walbuf_vfs.pNext = NULL;
  registered_rc = sqlite3_vfs_register(&walbuf_vfs, 0);
}

int evs__sqlite_vfs_register(void) {
  pthread_once(&once, init);
  return registered_rc;
}
