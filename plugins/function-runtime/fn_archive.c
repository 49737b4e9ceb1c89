/*
 * fn_archive.c: checking and unpacking a function's tar.gz (fn_archive.h). libarchive reads
 * the container (gzip, tar in its ustar/pax/GNU spellings), and this file alone decides what
 * reaches the disk: it never uses archive_write_disk, so no option of libarchive's can be
 * forgotten. Every entry is checked before anything of it is written; files are created with
 * O_EXCL|O_NOFOLLOW below a directory this call created, and since the archive can hold no
 * symlink, no path can leave it.
 */
#include "fn_archive.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

int evs__fn_archive_name_ok(const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > FN_ARCHIVE_NAME_MAX || name[0] == '/') return 0;
  if (name[n - 1] == '/') n--; /* a directory's trailing slash */
  if (n == 0) return 0;
  size_t start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i < n) {
      unsigned char c = (unsigned char)name[i];
      if (c < 0x20 || c == 0x7f || c == '\\') return 0;
      if (c != '/') continue;
    }
    size_t len = i - start;
    const char *seg = name + start;
    if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
      return 0;
    start = i + 1;
  }
  return 1;
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, const char *arg) {
  if (err && errlen) snprintf(err, errlen, fmt, arg ? arg : "");
  return rc;
}

/* mkdir -p of the directories leading to (and, with last, including) rel below dir. */
static int make_parents(const char *dir, const char *rel, int last) {
  char path[FN_ARCHIVE_NAME_MAX + 4096 + 2];
  int n = snprintf(path, sizeof path, "%s/%s", dir, rel);
  if (n < 0 || (size_t)n >= sizeof path) return -ENAMETOOLONG;
  size_t base = strlen(dir) + 1;
  if (path[n - 1] == '/') path[--n] = 0;
  for (size_t i = base; i <= (size_t)n; i++) {
    if (path[i] != '/' && path[i] != 0) continue;
    if (path[i] == 0 && !last) break;
    char c = path[i];
    path[i] = 0;
    struct stat sb;
    if (mkdir(path, 0755) < 0 && errno != EEXIST) return -errno;
    if (lstat(path, &sb) < 0) return -errno;
    if (!S_ISDIR(sb.st_mode)) return -ENOTDIR;
    if ((sb.st_mode & 07777) != 0755 && chmod(path, 0755) < 0) return -errno;
    path[i] = c;
  }
  return 0;
}

int evs__fn_archive_unpack(const uint8_t *data, size_t len, uint64_t max_bytes, const char *dir,
                           char *err, size_t errlen) {
  if (err && errlen) err[0] = 0;
  struct archive *a = archive_read_new();
  if (!a) return fail(err, errlen, -ENOMEM, "out of memory%s", NULL);
  archive_read_support_filter_gzip(a);
  archive_read_support_format_tar(a);
  int rc = 0;
  if (archive_read_open_memory(a, data, len) != ARCHIVE_OK) {
    rc = fail(err, errlen, -EINVAL, "not a gzip-compressed tar archive%s", NULL);
    goto out;
  }
  /* Modes are set explicitly, whatever the umask: a box started by root runs as a uid of its
   * own (docs/functions.md, "Files and uids") and reads the code as "others". */
  if (dir && (mkdir(dir, 0755) < 0 || chmod(dir, 0755) < 0)) {
    rc = fail(err, errlen, -errno, "cannot create the code directory: %s", strerror(errno));
    goto out;
  }
  uint64_t total = 0;
  size_t entries = 0;
  struct archive_entry *e;
  uint8_t buf[65536];
  for (;;) {
    int r = archive_read_next_header(a, &e);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      rc = fail(err, errlen, -EINVAL, "the archive is damaged: %s", archive_error_string(a));
      goto out;
    }
    if (++entries > FN_ARCHIVE_MAX_ENTRIES) {
      rc = fail(err, errlen, -E2BIG, "the archive has too many entries%s", NULL);
      goto out;
    }
    const char *name = archive_entry_pathname(e);
    if (name && name[0] == '.' && name[1] == '/') name += 2; /* "./x", as tar writes it */
    if (name && (strcmp(name, ".") == 0 || strcmp(name, "./") == 0 || name[0] == 0)) continue;
    if (!evs__fn_archive_name_ok(name)) {
      rc = fail(err, errlen, -EINVAL, "refused entry name '%.200s'", name ? name : "(none)");
      goto out;
    }
    if (archive_entry_hardlink(e) || archive_entry_symlink(e)) {
      rc = fail(err, errlen, -EINVAL, "links are not allowed ('%.200s')", name);
      goto out;
    }
    mode_t type = archive_entry_filetype(e);
    if (type == AE_IFDIR) {
      if (dir && (r = make_parents(dir, name, 1)) < 0) {
        rc = fail(err, errlen, r, "cannot create a directory: %s", strerror(-r));
        goto out;
      }
      continue;
    }
    if (type != AE_IFREG) {
      rc = fail(err, errlen, -EINVAL, "only files and directories are allowed ('%.200s')", name);
      goto out;
    }
    int fd = -1;
    if (dir) {
      if ((r = make_parents(dir, name, 0)) < 0) {
        rc = fail(err, errlen, r, "cannot create a directory: %s", strerror(-r));
        goto out;
      }
      char path[FN_ARCHIVE_NAME_MAX + 4096 + 2];
      snprintf(path, sizeof path, "%s/%s", dir, name);
      mode_t mode = (archive_entry_perm(e) & 0111) ? 0755 : 0644;
      fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
      if (fd >= 0 && fchmod(fd, mode) < 0) {
        close(fd);
        fd = -1;
      }
      if (fd < 0) {
        rc = fail(err, errlen, -errno, "cannot write a file: %s", strerror(errno));
        goto out;
      }
    }
    for (;;) {
      la_ssize_t n = archive_read_data(a, buf, sizeof buf);
      if (n == 0) break;
      if (n < 0) {
        if (fd >= 0) close(fd);
        rc = fail(err, errlen, -EINVAL, "the archive is damaged: %s", archive_error_string(a));
        goto out;
      }
      total += (uint64_t)n;
      if (total > max_bytes) {
        if (fd >= 0) close(fd);
        rc = fail(err, errlen, -E2BIG, "the unpacked code is larger than the limit%s", NULL);
        goto out;
      }
      for (la_ssize_t off = 0; fd >= 0 && off < n;) {
        ssize_t w = write(fd, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
          int e2 = errno;
          close(fd);
          rc = fail(err, errlen, -e2, "cannot write a file: %s", strerror(e2));
          goto out;
        }
        off += w;
      }
    }
    if (fd >= 0 && close(fd) < 0) {
      rc = fail(err, errlen, -EIO, "cannot write a file%s", NULL);
      goto out;
    }
  }
out:
  archive_read_free(a);
  return rc;
}
