/*
 * cpio.c: the deterministic gzip'd newc cpio writer (cpio.h). Entries are collected first,
 * sorted, then streamed through zlib; file bytes from disk are read only at that point, so a
 * large rootfs is held once, compressed.
 */
#include "cpio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <zlib.h>

typedef struct cpio_entry {
  char *path;
  mode_t mode; /* type and permission bits */
  uint8_t *data; /* regular files from memory, symbolic link targets */
  size_t len;
  char *disk; /* regular files from disk */
  dev_t rdev;
  uid_t uid;
  gid_t gid;
  size_t seq; /* insertion order, so the last of equal paths wins */
} cpio_entry;

struct cpio_builder {
  cpio_entry *e;
  size_t n, cap;
};

cpio_builder *cpio_new(void) { return calloc(1, sizeof(cpio_builder)); }

void cpio_free(cpio_builder *b) {
  if (!b) return;
  for (size_t i = 0; i < b->n; i++) {
    free(b->e[i].path);
    free(b->e[i].data);
    free(b->e[i].disk);
  }
  free(b->e);
  free(b);
}

static int valid_path(const char *p) {
  if (!*p || *p == '/' || strlen(p) > 4000) return 0;
  for (const char *s = p; *s;) { /* no empty, "." or ".." components */
    size_t n = strcspn(s, "/");
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
    s += n;
    if (*s == '/') {
      s++;
      if (!*s) return 0;
    }
  }
  return 1;
}

static cpio_entry *add(cpio_builder *b, const char *path, mode_t mode) {
  if (!valid_path(path)) return NULL;
  if (b->n == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 64;
    cpio_entry *e = realloc(b->e, cap * sizeof *e);
    if (!e) return NULL;
    b->e = e;
    b->cap = cap;
  }
  cpio_entry *e = &b->e[b->n];
  memset(e, 0, sizeof *e);
  if (!(e->path = strdup(path))) return NULL;
  e->mode = mode;
  e->seq = b->n++;
  return e;
}

int cpio_add_file(cpio_builder *b, const char *path, mode_t mode, const uint8_t *data,
                  size_t len) {
  if (!valid_path(path)) return -EINVAL;
  cpio_entry *e = add(b, path, S_IFREG | (mode & 07777));
  if (!e) return -ENOMEM;
  if (!(e->data = malloc(len ? len : 1))) return -ENOMEM;
  if (len) memcpy(e->data, data, len);
  e->len = len;
  return 0;
}

int cpio_add_dir(cpio_builder *b, const char *path, mode_t mode) {
  if (!valid_path(path)) return -EINVAL;
  return add(b, path, S_IFDIR | (mode & 07777)) ? 0 : -ENOMEM;
}

int cpio_add_symlink(cpio_builder *b, const char *path, const char *target) {
  if (!valid_path(path) || !*target) return -EINVAL;
  cpio_entry *e = add(b, path, S_IFLNK | 0777);
  if (!e) return -ENOMEM;
  if (!(e->data = (uint8_t *)strdup(target))) return -ENOMEM;
  e->len = strlen(target);
  return 0;
}

int cpio_add_disk_file(cpio_builder *b, const char *path, mode_t mode, const char *disk_path) {
  if (!valid_path(path)) return -EINVAL;
  cpio_entry *e = add(b, path, S_IFREG | (mode & 07777));
  if (!e) return -ENOMEM;
  return (e->disk = strdup(disk_path)) ? 0 : -ENOMEM;
}

int cpio_add_node(cpio_builder *b, const char *path, mode_t mode, unsigned rmajor,
                  unsigned rminor) {
  if (!valid_path(path) || !(S_ISCHR(mode) || S_ISBLK(mode) || S_ISFIFO(mode))) return -EINVAL;
  cpio_entry *e = add(b, path, mode & (S_IFMT | 07777));
  if (!e) return -ENOMEM;
  e->rdev = makedev(rmajor, rminor);
  return 0;
}

static int walk(cpio_builder *b, char *apath, size_t alen, char *dpath, size_t dlen, int keep,
                const char **why, char **ret_path) {
  DIR *d = opendir(dpath);
  if (!d) {
    *why = "cannot read a directory of the tree";
    if (ret_path) *ret_path = strdup(dpath);
    return -errno;
  }
  int rc = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    size_t nl = strlen(de->d_name);
    if (alen + 1 + nl >= PATH_MAX || dlen + 1 + nl >= PATH_MAX) {
      *why = "a path in the tree is too long";
      rc = -ENAMETOOLONG;
      break;
    }
    apath[alen] = '/';
    memcpy(apath + alen + 1, de->d_name, nl + 1);
    dpath[dlen] = '/';
    memcpy(dpath + dlen + 1, de->d_name, nl + 1);
    struct stat st;
    if (lstat(dpath, &st) < 0) {
      rc = -errno;
      *why = "cannot stat a file of the tree";
      if (ret_path) *ret_path = strdup(dpath);
      break;
    }
    mode_t perm = st.st_mode & 07777;
    if (S_ISDIR(st.st_mode)) {
      rc = cpio_add_dir(b, apath, perm);
      if (rc == 0 && keep) b->e[b->n - 1].uid = st.st_uid, b->e[b->n - 1].gid = st.st_gid;
      if (rc == 0) rc = walk(b, apath, alen + 1 + nl, dpath, dlen + 1 + nl, keep, why, ret_path);
      if (rc < 0) break;
    } else if (S_ISREG(st.st_mode)) {
      rc = cpio_add_disk_file(b, apath, perm, dpath);
    } else if (S_ISLNK(st.st_mode)) {
      char target[PATH_MAX];
      ssize_t n = readlink(dpath, target, sizeof target - 1);
      if (n <= 0) {
        rc = n < 0 ? -errno : -EINVAL;
        *why = "cannot read a symbolic link of the tree";
        if (ret_path) *ret_path = strdup(dpath);
        break;
      }
      target[n] = 0;
      rc = cpio_add_symlink(b, apath, target);
    } else if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      cpio_entry *e = add(b, apath, st.st_mode & (S_IFMT | 07777));
      if (!e) rc = -ENOMEM;
      else e->rdev = st.st_rdev;
    }
    if (rc < 0) {
      if (!*why) *why = "out of memory";
      break;
    }
    if (keep && !S_ISDIR(st.st_mode) && b->n && strcmp(b->e[b->n - 1].path, apath) == 0)
      b->e[b->n - 1].uid = st.st_uid, b->e[b->n - 1].gid = st.st_gid;
  }
  closedir(d);
  apath[alen] = 0;
  dpath[dlen] = 0;
  return rc;
}

int cpio_add_tree(cpio_builder *b, const char *prefix, const char *dir, int keep_owner,
                  const char **ret_why, char **ret_path) {
  const char *why = NULL;
  if (ret_path) *ret_path = NULL;
  struct stat st;
  if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    *ret_why = "the tree is not a directory";
    return -ENOTDIR;
  }
  char *apath = malloc(PATH_MAX), *dpath = malloc(PATH_MAX);
  int rc = -ENOMEM;
  if (apath && dpath && strlen(prefix) < PATH_MAX && strlen(dir) < PATH_MAX) {
    strcpy(apath, prefix);
    strcpy(dpath, dir);
    size_t dl = strlen(dpath);
    while (dl > 1 && dpath[dl - 1] == '/') dpath[--dl] = 0;
    rc = cpio_add_dir(b, prefix, st.st_mode & 07777);
    if (rc == 0) rc = walk(b, apath, strlen(apath), dpath, dl, keep_owner, &why, ret_path);
  }
  free(apath);
  free(dpath);
  if (rc < 0) *ret_why = why ? why : rc == -EINVAL ? "a bad path in the tree" : "out of memory";
  return rc;
}

/* ---- writing --------------------------------------------------------------------------- */

typedef struct gz {
  z_stream z;
  uint8_t *out;
  size_t len, cap;
  uint64_t in_total; /* uncompressed bytes so far: the cpio padding depends on it */
} gz;

static int gz_grow(gz *g) {
  size_t cap = g->cap ? 2 * g->cap : 1 << 16;
  uint8_t *p = realloc(g->out, cap);
  if (!p) return -ENOMEM;
  g->out = p;
  g->cap = cap;
  return 0;
}

static int gz_put(gz *g, const void *p, size_t n, int flush) {
  const uint8_t *in = p;
  g->in_total += n;
  for (;;) {
    uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
    int fl = n == chunk ? flush : Z_NO_FLUSH;
    g->z.next_in = (Bytef *)(uintptr_t)in;
    g->z.avail_in = chunk;
    for (;;) {
      if (g->len == g->cap && gz_grow(g) < 0) return -ENOMEM;
      size_t room = g->cap - g->len;
      g->z.next_out = g->out + g->len;
      g->z.avail_out = room > (1u << 30) ? (1u << 30) : (uInt)room;
      uInt before = g->z.avail_out;
      int r = deflate(&g->z, fl);
      if (r == Z_STREAM_ERROR) return -EIO;
      g->len += before - g->z.avail_out;
      if (r == Z_STREAM_END) return 0;
      if (g->z.avail_in == 0 && g->z.avail_out != 0 && fl != Z_FINISH) break;
    }
    in += chunk;
    n -= chunk;
    if (!n) return 0;
  }
}

static int gz_pad4(gz *g) {
  static const uint8_t zero[4] = {0};
  size_t pad = (size_t)((4 - (g->in_total & 3)) & 3);
  return pad ? gz_put(g, zero, pad, Z_NO_FLUSH) : 0;
}

static int put_header(gz *g, uint32_t ino, uint32_t mode, uint32_t uid, uint32_t gid,
                      uint32_t nlink, uint64_t size, uint32_t rmaj, uint32_t rmin,
                      const char *name) {
  char h[128];
  size_t namesize = strlen(name) + 1;
  if (size > 0xffffffffu) return -EFBIG; /* newc sizes are 32-bit */
  snprintf(h, sizeof h, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", ino, mode,
           uid, gid, nlink, 0u, (uint32_t)size, 0u, 0u, rmaj, rmin, (uint32_t)namesize, 0u);
  int rc = gz_put(g, h, 110, Z_NO_FLUSH);
  if (rc == 0) rc = gz_put(g, name, namesize, Z_NO_FLUSH);
  if (rc == 0) rc = gz_pad4(g);
  return rc;
}

static int cmp_entry(const void *a, const void *b) {
  const cpio_entry *x = a, *y = b;
  int c = strcmp(x->path, y->path);
  if (c) return c;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int cpio_write_gz(const cpio_builder *b, uint8_t **ret, size_t *ret_len, const char **ret_why) {
  cpio_entry *s = malloc((b->n ? b->n : 1) * sizeof *s);
  gz g = {0};
  int rc = 0;
  *ret_why = "out of memory";
  if (!s) return -ENOMEM;
  if (b->n) memcpy(s, b->e, b->n * sizeof *s);
  qsort(s, b->n, sizeof *s, cmp_entry);
  if (deflateInit2(&g.z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    free(s);
    return -ENOMEM;
  }
  uint32_t ino = 0;
  uint8_t *buf = malloc(1 << 16);
  if (!buf) rc = -ENOMEM;
  for (size_t i = 0; rc == 0 && i < b->n; i++) {
    const cpio_entry *e = &s[i];
    if (i + 1 < b->n && strcmp(e->path, s[i + 1].path) == 0) continue; /* the last one wins */
    ino++;
    if (e->disk) {
      int fd = open(e->disk, O_RDONLY | O_CLOEXEC);
      struct stat st;
      if (fd < 0 || fstat(fd, &st) < 0) {
        rc = -errno;
        if (fd >= 0) close(fd);
        *ret_why = "cannot read a file of the tree";
        break;
      }
      uint64_t size = (uint64_t)st.st_size, done = 0;
      rc = put_header(&g, ino, (uint32_t)e->mode, e->uid, e->gid, 1, size, 0, 0, e->path);
      while (rc == 0 && done < size) {
        ssize_t r = read(fd, buf, 1 << 16);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0 || (uint64_t)r > size - done) { /* changed while we read it */
          rc = r < 0 ? -errno : -EIO;
          *ret_why = "a file of the tree changed or could not be read while archiving";
          break;
        }
        rc = gz_put(&g, buf, (size_t)r, Z_NO_FLUSH);
        done += (uint64_t)r;
      }
      close(fd);
      if (rc == -EFBIG) *ret_why = "a file is larger than cpio's 4 GiB limit";
    } else {
      uint32_t nlink = S_ISDIR(e->mode) ? 2 : 1;
      rc = put_header(&g, ino, (uint32_t)e->mode, e->uid, e->gid, nlink, e->len,
                      major(e->rdev), minor(e->rdev), e->path);
      if (rc == 0 && e->len) rc = gz_put(&g, e->data, e->len, Z_NO_FLUSH);
    }
    if (rc == 0) rc = gz_pad4(&g);
  }
  if (rc == 0) rc = put_header(&g, 0, 0, 0, 0, 1, 0, 0, 0, "TRAILER!!!");
  if (rc == 0) rc = gz_put(&g, NULL, 0, Z_FINISH);
  deflateEnd(&g.z);
  free(buf);
  free(s);
  if (rc < 0) {
    free(g.out);
    return rc;
  }
  *ret = g.out;
  *ret_len = g.len;
  return 0;
}
