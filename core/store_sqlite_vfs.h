/*
 * store_sqlite_vfs.h: the SQLite VFS the store opens its file with (store_sqlite_vfs.c): the
 * default VFS, with the frames of each WAL commit written in one call. Internal to core/.
 */
#ifndef EVS_CORE_STORE_SQLITE_VFS_H
#define EVS_CORE_STORE_SQLITE_VFS_H

#include <stdint.h>

#include <sqlite3.h>

/* The name to pass to sqlite3_open_v2 once evs__sqlite_vfs_register returned SQLITE_OK. */
#define EVS_SQLITE_VFS "evs-walbuf"

/* Register the VFS (not as the default); idempotent and thread-safe. Returns SQLITE_OK, or an
 * SQLite error code if it could not (the caller then opens with the default VFS). */
int evs__sqlite_vfs_register(void);

/* fsyncs of files opened with this VFS made by the calling thread (tests: the loop makes none
 * for stream records). */
uint64_t evs__sqlite_vfs_thread_syncs(void);

#endif
