/*
 * fn_archive: a function's code as a gzip-compressed tar (pax/ustar), checked and unpacked
 * without trusting it. Used by the function-runtime plugin (unpacking a deployed version into
 * the node's state directory before a box starts) and by its fuzz target; evctl packs with
 * libarchive too (core/evctl/cmd_function.c). No plugin state, no logging.
 *
 * What an archive may hold: regular files and directories, relative names of at most
 * FN_ARCHIVE_NAME_MAX bytes whose components are neither empty, "." nor "..", no NUL or
 * control bytes, and nothing else: symlinks, hard links, devices and FIFOs are refused (so no
 * entry can make a later one land outside the target). At most FN_ARCHIVE_MAX_ENTRIES entries
 * and max_bytes of file data in all; a gzip bomb stops at that limit.
 */
#ifndef EVS_FN_ARCHIVE_H
#define EVS_FN_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>

#define FN_ARCHIVE_NAME_MAX 512
#define FN_ARCHIVE_MAX_ENTRIES 20000

/* Checks (dir == NULL) or unpacks into dir, which must not exist yet (created 0755; files
 * 0644, or 0755 when the archive marks them executable). Returns 0, or a negative errno with a
 * one-line reason in err: -EINVAL (not an archive, a refused entry), -E2BIG (over a limit),
 * -EIO or another errno from the file system. On failure dir may hold part of the archive;
 * the caller removes it. */
int evs__fn_archive_unpack(const uint8_t *data, size_t len, uint64_t max_bytes, const char *dir,
                           char *err, size_t errlen);

/* 1 if name is an acceptable entry name (see above; one trailing '/' allowed), else 0. */
int evs__fn_archive_name_ok(const char *name);

#endif
