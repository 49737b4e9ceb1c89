/*
 * cpio.h: a deterministic gzip'd newc cpio writer, for the ramdisks of a cage image (eif.h,
 * docs/cages.md). Entries are sorted by path, every mtime is 0, owners are 0:0 (or a tree's
 * own, on request), inode
 * numbers follow the sorted order, and the gzip header carries no name and no time, so the same
 * tree always gives the same bytes (and so the same PCRs). Part of the evs_eif library.
 */
#ifndef EVS_CPIO_H
#define EVS_CPIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct cpio_builder cpio_builder;

cpio_builder *cpio_new(void);
void cpio_free(cpio_builder *b);

/* Paths are relative to the archive's root, without a leading '/' ("init", "rootfs/bin/sh").
 * A path added twice keeps its last entry. Every call returns 0 or -ENOMEM/-EINVAL. */

/* A regular file from memory (copied). mode: the permission bits. */
int cpio_add_file(cpio_builder *b, const char *path, mode_t mode, const uint8_t *data, size_t len);
/* A directory. */
int cpio_add_dir(cpio_builder *b, const char *path, mode_t mode);
/* A symbolic link. */
int cpio_add_symlink(cpio_builder *b, const char *path, const char *target);
/* A regular file whose bytes are read from disk_path when the archive is written. */
int cpio_add_disk_file(cpio_builder *b, const char *path, mode_t mode, const char *disk_path);

/* A device node or FIFO (mode carries the type bits, S_IFCHR, S_IFBLK or S_IFIFO). */
int cpio_add_node(cpio_builder *b, const char *path, mode_t mode, unsigned rmajor,
                  unsigned rminor);

/* Everything under dir on disk (not following symbolic links), under prefix in the archive
 * (prefix itself becomes a directory entry with dir's mode). Regular files, directories,
 * symbolic links, FIFOs and device nodes; sockets are left out. keep_owner: the files' uid and
 * gid are kept (an image's rootfs, whose USER may need to own its files), else 0:0. 0, or a
 * negative errno with *ret_why a static sentence and *ret_path (if not NULL) the offending
 * path (malloc'd). */
int cpio_add_tree(cpio_builder *b, const char *prefix, const char *dir, int keep_owner,
                  const char **ret_why, char **ret_path);

/* Writes the archive (sorted entries, then the TRAILER!!! entry), gzip'd: 0 with *ret
 * (malloc'd, the caller frees) and *ret_len, or a negative errno with *ret_why. */
int cpio_write_gz(const cpio_builder *b, uint8_t **ret, size_t *ret_len, const char **ret_why);

#endif
