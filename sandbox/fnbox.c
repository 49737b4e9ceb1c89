/*
 * evs-fnbox: the box that runs one function's code (docs/functions.md is its contract).
 *
 * Started by the host as a helper (sandbox policy "fnbox": its exec stage lets the set-up below
 * through), it builds the box and execs the runtime's interpreter on its bootstrap, which then
 * serves runs over fd 3. The set-up, in order:
 *
 *   outer process   unshares user, mount, pid, net, ipc and uts namespaces at once (the outer
 *                   uid is 0 inside, with every capability there until the set-up is done;
 *                   started by root, a forked child does this and the box's uid 0 is
 *                   EVS_FNBOX_UID on the host: map_child_and_wait), opens (O_PATH) everything
 *                   the box will see and forks the box's pid 1; then it drops its capabilities,
 *                   waits and passes the exit status on. Killing it kills the box
 *                   (PR_SET_PDEATHSIG, and a pid namespace ends with its init).
 *   pid 1           mounts a fresh tmpfs root: read-only binds of the interpreter, the shared
 *                   libraries it loads, the runtime's stdlib (python), public CA certificates
 *                   and time zones, the bootstrap at /bootstrap, the code at /function, the
 *                   egress socket at /run/evs/egress.sock; a tmpfs /tmp of --tmp-size bytes
 *                   (/dev/shm points there); /dev with null, zero, random, urandom; a small
 *                   /etc of its own; /proc of the new pid namespace. pivot_root, old root
 *                   detached, root remounted read-only. Then every capability goes (bounding
 *                   set, ambient, securebits locked so that exec as uid 0 regains nothing),
 *                   no-new-privs, the runtime's seccomp policy (function-node, function-python:
 *                   it allows this one exec and no other), exec, with /function as the working
 *                   directory.
 *
 * Set-up errors go to stderr (one line, no payload) and, as a `fail` frame, to the channel.
 * This program parses no untrusted input: only its command line, written by the plugin.
 */
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "evs_sandbox.h"
#include "userns.h"

#define CHANNEL_FD 3
#define EGRESS_IN_BOX "/run/evs/egress.sock"
#define MAX_BINDS 192

enum { RT_NODE = 1, RT_PYTHON = 2 };

/* One read-only bind: an O_PATH descriptor opened before any mount, and where it goes. */
struct bind {
  int fd;
  int is_dir;
  char dst[PATH_MAX];
};

struct box {
  int runtime;
  const char *interpreter_arg, *code_arg, *handler, *egress_arg;
  unsigned long long tmp_size;
  int seccomp_log;
  char interpreter[PATH_MAX]; /* resolved */
  char pyver[16];             /* "3.11" */
  struct bind binds[MAX_BINDS];
  int nbinds;
  /* Symbolic links to recreate in the new root (/lib -> usr/lib on merged-/usr systems). */
  char links[16][2][PATH_MAX];
  int nlinks;
};

static int json_str(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 8 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[n++] = '\\';
      out[n++] = (char)c;
    } else if (c < 0x20) {
      n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
    } else if (c >= 0x80) {
      out[n++] = '?'; /* a path need not be UTF-8; the frame must be */
    } else {
      out[n++] = (char)c;
    }
  }
  out[n] = 0;
  return (int)n;
}

/* Reports a set-up failure on stderr and as a `fail` frame, then exits. */
static __attribute__((noreturn, format(printf, 2, 3))) void die(int err, const char *fmt, ...) {
  char msg[512], esc[1100], frame[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (err) {
    size_t l = strlen(msg);
    snprintf(msg + l, sizeof msg - l, ": %s", strerror(err));
  }
  dprintf(2, "evs-fnbox: %s\n", msg);
  json_str(esc, sizeof esc, msg);
  int n = snprintf(frame + 4, sizeof frame - 4,
                   "{\"t\":\"fail\",\"error\":{\"message\":\"evs-fnbox: %s\","
                   "\"stack\":\"\"}}",
                   esc);
  if (n > 0 && (size_t)n < sizeof frame - 4) {
    uint32_t len = (uint32_t)n;
    frame[0] = (char)(len >> 24), frame[1] = (char)(len >> 16);
    frame[2] = (char)(len >> 8), frame[3] = (char)len;
    ssize_t w = write(CHANNEL_FD, frame, (size_t)n + 4);
    (void)w;
  }
  _exit(127);
}

static void usage(void) {
  dprintf(2, "usage: evs-fnbox --runtime node|python --interpreter <abs path> --code <dir> "
             "--handler <file>.<func> --tmp-size <bytes> [--egress <unix socket path>] "
             "[--seccomp-log]\n");
  _exit(2);
}

static void parse_args(struct box *b, int argc, char **argv) {
  const char *rt = NULL, *tmp = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--seccomp-log") == 0) {
      b->seccomp_log = 1;
      continue;
    }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (strcmp(a, "--runtime") == 0) rt = v;
    else if (strcmp(a, "--interpreter") == 0) b->interpreter_arg = v;
    else if (strcmp(a, "--code") == 0) b->code_arg = v;
    else if (strcmp(a, "--handler") == 0) b->handler = v;
    else if (strcmp(a, "--tmp-size") == 0) tmp = v;
    else if (strcmp(a, "--egress") == 0) b->egress_arg = v;
    else usage();
  }
  if (!rt || !b->interpreter_arg || !b->code_arg || !b->handler || !tmp) usage();
  if (strcmp(rt, "node") == 0) b->runtime = RT_NODE;
  else if (strcmp(rt, "python") == 0) b->runtime = RT_PYTHON;
  else die(0, "unknown runtime '%.20s' (node, python)", rt);
  char *end;
  errno = 0;
  b->tmp_size = strtoull(tmp, &end, 10);
  if (errno || *end || b->tmp_size < 4096) die(0, "--tmp-size must be a number of bytes >= 4096");
  if (b->interpreter_arg[0] != '/') die(0, "--interpreter must be an absolute path");
  const char *dot = strrchr(b->handler, '.');
  if (!dot || dot == b->handler || !dot[1] || strlen(b->handler) > 256)
    die(0, "--handler must be <file>.<func>");
}

/* Adds a read-only bind of host path src at dst in the box (dst NULL: the same path). */
static void add_bind(struct box *b, const char *src, const char *dst, int required) {
  if (b->nbinds >= MAX_BINDS) die(0, "too many bind mounts");
  int fd = open(src, O_PATH | O_CLOEXEC);
  if (fd < 0) {
    if (!required && errno == ENOENT) return;
    die(errno, "%s", src);
  }
  struct stat sb;
  if (fstat(fd, &sb) < 0) die(errno, "%s", src);
  struct bind *bd = &b->binds[b->nbinds++];
  bd->fd = fd;
  bd->is_dir = S_ISDIR(sb.st_mode);
  snprintf(bd->dst, sizeof bd->dst, "%s", dst ? dst : src);
}

/* Whether path is already in the box, under a bound directory. */
static int covered(const struct box *b, const char *path) {
  for (int i = 0; i < b->nbinds; i++) {
    size_t n = strlen(b->binds[i].dst);
    if (strncmp(path, b->binds[i].dst, n) == 0 && (path[n] == 0 || path[n] == '/')) return 1;
  }
  return 0;
}

/* A host path the box needs at the same place: a symbolic link is recreated (and what it
 * points to added), a directory or file bound read-only; a missing one is skipped. */
static void add_path(struct box *b, const char *path, int depth) {
  struct stat sb;
  if (depth > 4 || covered(b, path) || lstat(path, &sb) < 0) return;
  if (!S_ISLNK(sb.st_mode)) {
    if (S_ISDIR(sb.st_mode) || S_ISREG(sb.st_mode)) add_bind(b, path, NULL, 0);
    return;
  }
  if (b->nlinks >= (int)(sizeof b->links / sizeof b->links[0])) return;
  char target[PATH_MAX];
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n <= 0) return;
  target[n] = 0;
  snprintf(b->links[b->nlinks][0], PATH_MAX, "%s", path);
  snprintf(b->links[b->nlinks][1], PATH_MAX, "%s", target);
  b->nlinks++;
  char abs[PATH_MAX * 2];
  if (target[0] == '/') {
    snprintf(abs, sizeof abs, "%s", target);
  } else { /* relative to the link's directory */
    snprintf(abs, sizeof abs, "%s", path);
    *strrchr(abs, '/') = 0;
    size_t l = strlen(abs);
    snprintf(abs + l, sizeof abs - l, "/%s", target);
  }
  add_path(b, abs, depth + 1);
}

/* ---- shared libraries: the closure of an ELF file's dependencies ------------------------- */

/* Where ld.so looks when nothing else says (no ld.so.cache in the box), in its order. */
static const char *const lib_dirs[] = {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                                       "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                       "/lib64", "/usr/lib64", "/lib", "/usr/lib"};

static void elf_deps(struct box *b, const char *file, int depth);

/* A library the box needs, bound at the name the loader opens, in the directory it resolves to
 * (through the host's /lib -> usr/lib links, recreated in the box), then its own needs. */
static void add_lib(struct box *b, const char *path, int depth) {
  char dir[PATH_MAX], real[PATH_MAX], dst[PATH_MAX * 2];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return;
  *slash = 0;
  if (!realpath(dir, real)) return;
  snprintf(dst, sizeof dst, "%s/%s", real, slash + 1);
  if (strlen(dst) >= PATH_MAX || covered(b, dst)) return;
  add_bind(b, path, dst, 0);
  elf_deps(b, path, depth + 1);
}

/* The file a DT_NEEDED name is loaded from: DT_RUNPATH/DT_RPATH ($ORIGIN is the file's own
 * directory), then the default directories. */
static int find_lib(const char *name, const char *runpath, const char *origin, char *out,
                    size_t cap) {
  if (strchr(name, '/')) return snprintf(out, cap, "%s", name) < (int)cap ? 0 : -1;
  for (const char *r = runpath; r && *r;) {
    size_t n = strcspn(r, ":");
    char dir[PATH_MAX];
    if (n < sizeof dir) {
      memcpy(dir, r, n);
      dir[n] = 0;
      const char *rest = NULL;
      if (strncmp(dir, "$ORIGIN", 7) == 0) rest = dir + 7;
      else if (strncmp(dir, "${ORIGIN}", 9) == 0) rest = dir + 9;
      int w = rest ? snprintf(out, cap, "%s%s/%s", origin, rest, name)
                   : snprintf(out, cap, "%s/%s", dir, name);
      if (w > 0 && (size_t)w < cap && access(out, F_OK) == 0) return 0;
    }
    r += n + (r[n] == ':');
  }
  for (size_t i = 0; i < sizeof lib_dirs / sizeof lib_dirs[0]; i++) {
    snprintf(out, cap, "%s/%s", lib_dirs[i], name);
    if (access(out, F_OK) == 0) return 0;
  }
  return -1;
}

/* A NUL-terminated string at off (0, or -1 if none fits in cap). */
static int read_str(int fd, off_t off, char *buf, size_t cap) {
  ssize_t n = pread(fd, buf, cap - 1, off);
  if (n <= 0) return -1;
  buf[n] = 0;
  return strlen(buf) < (size_t)n ? 0 : -1;
}

/* Reads PT_INTERP and the DT_NEEDED entries of a 64-bit ELF file (the host's own binaries:
 * anything malformed simply adds nothing). */
static void elf_deps(struct box *b, const char *file, int depth) {
  if (depth > 16) return;
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  Elf64_Ehdr eh;
  Elf64_Phdr ph[64];
  Elf64_Dyn dyn[512];
  if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
      eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) ||
      eh.e_phnum > 64 ||
      pread(fd, ph, eh.e_phnum * sizeof ph[0], (off_t)eh.e_phoff) !=
          (ssize_t)(eh.e_phnum * sizeof ph[0]))
    goto out;
  ssize_t ndyn = 0;
  for (int i = 0; i < eh.e_phnum; i++) {
    if (ph[i].p_type == PT_INTERP && ph[i].p_filesz < PATH_MAX) {
      char interp[PATH_MAX];
      if (pread(fd, interp, ph[i].p_filesz, (off_t)ph[i].p_offset) == (ssize_t)ph[i].p_filesz) {
        interp[ph[i].p_filesz] = 0;
        add_lib(b, interp, depth);
      }
    } else if (ph[i].p_type == PT_DYNAMIC) {
      size_t n = ph[i].p_filesz < sizeof dyn ? ph[i].p_filesz : sizeof dyn;
      ndyn = pread(fd, dyn, n, (off_t)ph[i].p_offset) / (ssize_t)sizeof dyn[0];
    }
  }
  uint64_t str_va = 0, str_sz = 0, path_off = UINT64_MAX;
  for (ssize_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
    if (dyn[i].d_tag == DT_STRTAB) str_va = dyn[i].d_un.d_ptr;
    else if (dyn[i].d_tag == DT_STRSZ) str_sz = dyn[i].d_un.d_val;
    else if (dyn[i].d_tag == DT_RUNPATH || (dyn[i].d_tag == DT_RPATH && path_off == UINT64_MAX))
      path_off = dyn[i].d_un.d_val;
  }
  if (!str_va || !str_sz) goto out;
  off_t str_off = -1;
  for (int i = 0; i < eh.e_phnum; i++)
    if (ph[i].p_type == PT_LOAD && str_va >= ph[i].p_vaddr &&
        str_va + str_sz <= ph[i].p_vaddr + ph[i].p_filesz)
      str_off = (off_t)(str_va - ph[i].p_vaddr + ph[i].p_offset);
  if (str_off < 0) goto out;
  /* Only the strings wanted: a big binary's string table (node's) runs to megabytes. */
  char origin[PATH_MAX], runpath[PATH_MAX], name[256], lib[PATH_MAX];
  snprintf(origin, sizeof origin, "%s", file);
  *strrchr(origin, '/') = 0;
  int have_rp = path_off < str_sz && read_str(fd, str_off + (off_t)path_off, runpath,
                                                sizeof runpath) == 0;
  for (ssize_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
    if (dyn[i].d_tag != DT_NEEDED || dyn[i].d_un.d_val >= str_sz) continue;
    if (read_str(fd, str_off + (off_t)dyn[i].d_un.d_val, name, sizeof name) == 0 &&
        find_lib(name, have_rp ? runpath : NULL, origin, lib, sizeof lib) == 0)
      add_lib(b, lib, depth);
  }
out:
  close(fd);
}

/* The closure for a runtime: the interpreter's, the libraries glibc itself loads at run time
 * (name service, unwinding), and for python every extension module of its stdlib. */
static void add_libraries(struct box *b, const char *stdlib) {
  elf_deps(b, b->interpreter, 0);
  static const char *const dlopened[] = {"libnss_files.so.2", "libnss_dns.so.2",
                                         "libgcc_s.so.1"};
  for (size_t i = 0; i < sizeof dlopened / sizeof dlopened[0]; i++) {
    char lib[PATH_MAX];
    if (find_lib(dlopened[i], NULL, "/", lib, sizeof lib) == 0) add_lib(b, lib, 0);
  }
  if (!stdlib) return;
  char dyn[PATH_MAX];
  snprintf(dyn, sizeof dyn, "%s/lib-dynload", stdlib);
  DIR *d = opendir(dyn);
  for (struct dirent *e; d && (e = readdir(d));) {
    size_t n = strlen(e->d_name);
    if (n < 4 || strcmp(e->d_name + n - 3, ".so") != 0) continue;
    char so[PATH_MAX * 2];
    snprintf(so, sizeof so, "%s/%s", dyn, e->d_name);
    elf_deps(b, so, 1);
  }
  if (d) closedir(d);
}

/* A top-level symbolic link of the host recreated in the box (nothing is bound for it). */
static void add_link(struct box *b, const char *path) {
  struct stat sb;
  if (lstat(path, &sb) < 0 || !S_ISLNK(sb.st_mode)) return;
  if (b->nlinks >= (int)(sizeof b->links / sizeof b->links[0])) return;
  char target[PATH_MAX];
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n <= 0) return;
  target[n] = 0;
  snprintf(b->links[b->nlinks][0], PATH_MAX, "%s", path);
  snprintf(b->links[b->nlinks][1], PATH_MAX, "%s", target);
  b->nlinks++;
}

/* "3.11" from ".../python3.11"; else the only lib/python3.* under the prefix. */
static void python_version(struct box *b, const char *prefix) {
  const char *base = strrchr(b->interpreter, '/') + 1;
  unsigned maj, min;
  if (sscanf(base, "python%u.%u", &maj, &min) == 2) {
    snprintf(b->pyver, sizeof b->pyver, "%u.%u", maj, min);
    return;
  }
  for (min = 30; min >= 6; min--) {
    char p[PATH_MAX];
    int w = snprintf(p, sizeof p, "%s/lib/python3.%u/os.py", prefix, min);
    if (w > 0 && (size_t)w < sizeof p && access(p, F_OK) == 0) {
      snprintf(b->pyver, sizeof b->pyver, "3.%u", min);
      return;
    }
  }
  die(0, "cannot tell the Python version of %s", b->interpreter);
}

/* What the box will see, opened now, before the tmpfs root hides anything: the binds use
 * these descriptors, not paths. */
static void plan(struct box *b, const char *self_dir) {
  if (!realpath(b->interpreter_arg, b->interpreter)) die(errno, "%s", b->interpreter_arg);
  if (access(b->interpreter, X_OK) < 0) die(errno, "%s", b->interpreter);
  add_bind(b, b->interpreter, NULL, 1);
  /* Merged-/usr systems' top-level links (/lib -> usr/lib): the loader's paths go through them.
   * The libraries themselves come one by one (add_libraries, below). */
  static const char *const top[] = {"/lib", "/lib64", "/lib32", "/libx32"};
  for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) add_link(b, top[i]);
  if (b->runtime == RT_PYTHON) {
    /* <prefix>/bin/pythonX.Y: the stdlib is <prefix>/lib/pythonX.Y, libpython beside it. */
    char prefix[PATH_MAX], p[PATH_MAX * 2];
    snprintf(prefix, sizeof prefix, "%s", b->interpreter);
    for (int k = 0; k < 2; k++) {
      char *s = strrchr(prefix, '/');
      if (!s || s == prefix) die(0, "cannot tell the prefix of %s", b->interpreter);
      *s = 0;
    }
    python_version(b, prefix);
    snprintf(p, sizeof p, "%s/lib/python%s", prefix, b->pyver);
    if (!covered(b, p)) add_bind(b, p, NULL, 1);
    add_libraries(b, p);
  } else {
    add_libraries(b, NULL);
  }
  /* CA certificates, for TLS through the egress proxy: the public ones only (never all of
   * /etc/ssl: its private/ may be readable by evserver's uid or groups, which the box keeps). */
  static const char *const ca[] = {"/etc/ssl/certs", "/usr/share/ca-certificates",
                                   "/etc/ssl/openssl.cnf", "/usr/lib/ssl/certs",
                                   "/usr/lib/ssl/cert.pem", "/usr/lib/ssl/openssl.cnf"};
  for (size_t i = 0; i < sizeof ca / sizeof ca[0]; i++) add_path(b, ca[i], 0);
  add_path(b, "/usr/share/zoneinfo", 0); /* time zones, for python's zoneinfo (node has ICU's) */
  char p[PATH_MAX];
  int w = snprintf(p, sizeof p, "%s/fnbox-runtimes/%s", self_dir,
                   b->runtime == RT_NODE ? "node" : "python");
  if (w < 0 || (size_t)w >= sizeof p) die(ENAMETOOLONG, "%s/fnbox-runtimes", self_dir);
  add_bind(b, p, "/bootstrap", 1);
  add_bind(b, b->code_arg, "/function", 1);
  if (!b->binds[b->nbinds - 1].is_dir) die(ENOTDIR, "%s", b->code_arg);
  if (b->egress_arg) {
    add_bind(b, b->egress_arg, EGRESS_IN_BOX, 1);
    struct stat sb;
    if (stat(b->egress_arg, &sb) < 0 || !S_ISSOCK(sb.st_mode))
      die(ENOTSOCK, "--egress %s", b->egress_arg);
  }
}

/* mkdir -p under the new root. */
static void mkdirs(const char *path, mode_t mode) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s", path);
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(p, 0755) < 0 && errno != EEXIST) die(errno, "mkdir %s", p);
    *s = '/';
  }
  if (mkdir(p, mode) < 0 && errno != EEXIST) die(errno, "mkdir %s", p);
}

/* The mount flags a read-only remount must keep: in a user namespace the kernel refuses to
 * clear nosuid, nodev, noexec or the atime flags it inherited (they are locked). */
static unsigned long locked_flags(const char *path) {
  struct statvfs sv;
  unsigned long f = 0;
  if (statvfs(path, &sv) < 0) return 0;
  if (sv.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (sv.f_flag & ST_NODEV) f |= MS_NODEV;
  if (sv.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (sv.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (sv.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
  if (sv.f_flag & ST_RELATIME) f |= MS_RELATIME;
  return f;
}

static void bind_ro(const struct bind *bd, const char *root) {
  char dst[PATH_MAX * 2], src[64];
  snprintf(dst, sizeof dst, "%s%s", root, bd->dst);
  if (bd->is_dir) {
    mkdirs(dst, 0755);
  } else {
    char *s = strrchr(dst, '/');
    *s = 0;
    mkdirs(dst, 0755);
    *s = '/';
    int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) die(errno, "mount point %s", bd->dst);
    close(fd);
  }
  snprintf(src, sizeof src, "/proc/self/fd/%d", bd->fd);
  if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0) die(errno, "bind %s", bd->dst);
  unsigned long f = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | locked_flags(dst);
  if (mount(NULL, dst, NULL, f, NULL) < 0) die(errno, "read-only %s", bd->dst);
}

static void build_root(const struct box *b) {
  /* The tmpfs root goes over /tmp of this (private) mount namespace: every source is already
   * open, so what it hides does not matter. */
  const char *root = "/tmp";
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die(errno, "private mounts");
  if (mount("fnbox", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755") < 0)
    die(errno, "root tmpfs");
  char p[PATH_MAX * 2];
  for (int i = 0; i < b->nbinds; i++) bind_ro(&b->binds[i], root);
  for (int i = 0; i < b->nlinks; i++) {
    snprintf(p, sizeof p, "%s%s", root, b->links[i][0]);
    char *slash = strrchr(p, '/');
    *slash = 0;
    mkdirs(p, 0755);
    *slash = '/';
    if (symlink(b->links[i][1], p) < 0 && errno != EEXIST) die(errno, "symlink %s", p);
  }
  /* /tmp: the function's only writable place, of bounded size. */
  /* Inodes cost kernel memory that size= does not count: one per 4 KiB of /tmp, at least 1024. */
  char opt[96];
  unsigned long long inodes = b->tmp_size / 4096 > 1024 ? b->tmp_size / 4096 : 1024;
  snprintf(opt, sizeof opt, "size=%llu,nr_inodes=%llu,mode=1777", b->tmp_size, inodes);
  snprintf(p, sizeof p, "%s/tmp", root);
  mkdirs(p, 01777);
  if (mount("tmp", p, "tmpfs", MS_NOSUID | MS_NODEV, opt) < 0) die(errno, "/tmp tmpfs");
  /* /dev: device nodes cannot be made in a user namespace; bind the host's harmless ones. */
  static const char *const devs[] = {"null", "zero", "random", "urandom"};
  snprintf(p, sizeof p, "%s/dev", root);
  mkdirs(p, 0755);
  for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
    char src[64];
    snprintf(src, sizeof src, "/dev/%s", devs[i]);
    snprintf(p, sizeof p, "%s/dev/%s", root, devs[i]);
    int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) die(errno, "mount point /dev/%s", devs[i]);
    close(fd);
    if (mount(src, p, NULL, MS_BIND, NULL) < 0) die(errno, "bind %s", src);
    mount(NULL, p, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC | locked_flags(p), NULL);
  }
  /* /dev/shm is /tmp: POSIX semaphores and shared memory (python's multiprocessing locks) then
   * count against --tmp-size and go with the run like the rest of /tmp. */
  static const char *const devlinks[][2] = {{"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
                                            {"stdout", "/proc/self/fd/1"},
                                            {"stderr", "/proc/self/fd/2"}, {"shm", "/tmp"}};
  for (size_t i = 0; i < sizeof devlinks / sizeof devlinks[0]; i++) {
    snprintf(p, sizeof p, "%s/dev/%s", root, devlinks[i][0]);
    if (symlink(devlinks[i][1], p) < 0) die(errno, "symlink %s", p);
  }
  /* Who uid 0 is (home /tmp), and localhost: what libraries ask of /etc when nothing is set. */
  static const char *const etc[][2] = {
      {"passwd", "root:x:0:0:function:/tmp:/nonexistent\n"},
      {"group", "root:x:0:\n"},
      {"hosts", "127.0.0.1 localhost\n::1 localhost\n"},
  };
  snprintf(p, sizeof p, "%s/etc", root);
  mkdirs(p, 0755);
  for (size_t i = 0; i < sizeof etc / sizeof etc[0]; i++) {
    snprintf(p, sizeof p, "%s/etc/%s", root, etc[i][0]);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) die(errno, "%s", p);
    ssize_t w = write(fd, etc[i][1], strlen(etc[i][1]));
    close(fd);
    if (w < 0) die(errno, "%s", p);
  }
  /* /proc of the box's own pid namespace: it shows the box and nothing else. Read-only: the
   * global sysctls under /proc/sys (core_pattern…) and /proc/sysrq-trigger check the writer's
   * uid, not a capability, and the box's uid 0 may be the host's.
   * The kernel refuses a new proc in a user namespace when the host's /proc is partly hidden
   * (systemd's ProtectKernelTunables=, container runtimes' masked paths): the box then has no
   * /proc, which node and python do without. */
  snprintf(p, sizeof p, "%s/proc", root);
  mkdirs(p, 0555);
  if (mount("proc", p, "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
    if (errno != EPERM) die(errno, "/proc of the box");
    dprintf(2, "evs-fnbox: no /proc in the box (%s)\n", strerror(errno));
  }
  /* Enter it and drop the host's tree entirely. */
  if (chdir(root) < 0) die(errno, "chdir new root");
  if (syscall(SYS_pivot_root, ".", ".") < 0) die(errno, "pivot_root");
  if (umount2(".", MNT_DETACH) < 0) die(errno, "detach the old root");
  if (chdir("/") < 0) die(errno, "chdir /");
  if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
    die(errno, "read-only root");
  if (chdir("/function") < 0) die(errno, "chdir /function"); /* relative paths: the code's */
}

/* Descriptors: the channel on 3, /dev/null on 0-2 (the function's output goes over the channel
 * as log frames, never to evserver's stdout or stderr), nothing else. */
static void fix_fds(void) {
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) die(errno, "/dev/null");
  for (int i = 0; i < 3; i++)
    if (dup2(null, i) < 0) die(errno, "dup2");
  close(null);
  if (fcntl(CHANNEL_FD, F_SETFD, 0) < 0) die(errno, "the channel (fd 3)");
  syscall(SYS_close_range, CHANNEL_FD + 1, ~0u, 0);
}

static __attribute__((noreturn)) void run_box(struct box *b, int parent_alive) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct pollfd pf = {parent_alive, POLLIN, 0};
  if (poll(&pf, 1, 0) != 0) _exit(1); /* the outer process died before the line above */
  close(parent_alive);
  build_root(b);
  for (int i = 0; i < b->nbinds; i++) close(b->binds[i].fd);
  sethostname("fnbox", 5);
  evs__loopback_up();
  struct rlimit none = {0, 0};
  setrlimit(RLIMIT_CORE, &none);
  const char *policy_name = b->runtime == RT_NODE ? "function-node" : "function-python";
  evs_sandbox_policy pol;
  if (evs_sandbox_policy_lookup(policy_name, &pol) < 0) die(0, "no policy %s", policy_name);
  char *argv[16];
  int n = 0;
  if (b->runtime == RT_NODE) {
    argv[n++] = b->interpreter;
    /* Under a write-xor-execute rule (systemd's MemoryDenyWriteExecute=, PR_SET_MDWE, both
     * inherited), V8's JIT dies at its first compile: node runs without it then. */
    void *wx = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
    if (wx == MAP_FAILED) argv[n++] = "--jitless";
    else munmap(wx, 4096);
    argv[n++] = "/bootstrap/bootstrap.js";
  } else {
    argv[n++] = b->interpreter; /* python finds its prefix from it (PATH is the function's) */
    argv[n++] = "-I"; /* no PYTHON* variables, no user site: the box decides sys.path */
    argv[n++] = "-S";
    argv[n++] = "-B";
    argv[n++] = "/bootstrap/bootstrap.py";
  }
  argv[n++] = (char *)b->handler;
  argv[n++] = b->egress_arg ? EGRESS_IN_BOX : "";
  /* Python coerces the C locale by setting LC_CTYPE (PEP 538): the bootstrap takes it out of
   * the function's environment again unless the function had it. */
  if (b->runtime == RT_PYTHON) argv[n++] = getenv("LC_CTYPE") ? "lc_ctype" : "";
  argv[n] = NULL;
  int r = evs__drop_caps();
  if (r < 0) die(-r, "dropping capabilities");
  r = evs_sandbox_apply_exec(pol, b->seccomp_log ? EVS_SANDBOX_LOG_DENIED : 0,
                                 b->interpreter);
  if (r < 0) die(-r, "seccomp policy %s", policy_name);
  fix_fds();
  extern char **environ;
  execve(b->interpreter, argv, environ);
  die(errno, "exec %s", b->interpreter);
}

/* Waits for pid and ends the same way: its exit code, or the same signal (a seccomp kill
 * stays a SIGSYS for whoever waits for us). */
static __attribute__((noreturn)) void wait_and_pass_on(pid_t pid) {
  int ws;
  while (waitpid(pid, &ws, 0) < 0)
    if (errno != EINTR) _exit(1);
  if (WIFSIGNALED(ws)) {
    int sig = WTERMSIG(ws);
    signal(sig, SIG_DFL);
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    kill(getpid(), sig);
    _exit(128 + sig);
  }
  _exit(WIFEXITED(ws) ? WEXITSTATUS(ws) : 1);
}

static void drop_all_caps(void) {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct none_caps[2];
  memset(none_caps, 0, sizeof none_caps);
  if (syscall(SYS_capset, &hdr, none_caps) < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    _exit(1);
}

/* Root's part when the box is a stranger: only a process outside the new user namespace with
 * CAP_SETUID there may map another uid than its own, so root forks the process that unshares,
 * writes its maps once it has, then becomes EVS_FNBOX_UID itself and waits. */
static __attribute__((noreturn)) void map_child_and_wait(pid_t child, int ready, int go) {
  char c;
  int r = read(ready, &c, 1) == 1 ? 0 : -EIO;
  if (r == 0) r = evs__map_stranger(child, EVS_FNBOX_UID);
  if (r < 0) {
    kill(child, SIGKILL);
    die(-r, "user namespace id maps");
  }
  if (write(go, "g", 1) != 1) kill(child, SIGKILL);
  close(ready);
  close(go);
  close(CHANNEL_FD);
  syscall(SYS_close_range, 0, 2, 0);
  if (setgroups(0, NULL) < 0 || setresgid(EVS_FNBOX_UID, EVS_FNBOX_UID, EVS_FNBOX_UID) < 0 ||
      setresuid(EVS_FNBOX_UID, EVS_FNBOX_UID, EVS_FNBOX_UID) < 0) {
    kill(child, SIGKILL);
    _exit(1);
  }
  drop_all_caps();
  wait_and_pass_on(child);
}

int main(int argc, char **argv) {
  static struct box b; /* large (paths of every bind): not on the stack */
  parse_args(&b, argc, argv);
  /* Only the channel is ours: whatever else was inherited would keep, say, its other end open. */
  syscall(SYS_close_range, CHANNEL_FD + 1, ~0u, 0);
  struct stat sb;
  if (fstat(CHANNEL_FD, &sb) < 0 || !S_ISSOCK(sb.st_mode))
    die(EBADF, "fd 3 must be the channel socket");
  char self[PATH_MAX];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sl <= 0) die(errno, "/proc/self/exe");
  self[sl] = 0;
  *strrchr(self, '/') = 0;

  /* Started by root, the box's uid 0 is not the host's root but EVS_FNBOX_UID, a uid nobody
   * else has: what checks a uid rather than a capability (global sysctls, signals, ptrace of
   * same-uid processes) then finds a stranger. Everything the box sees is opened before the
   * switch, as root; after it, the box reads its files as "others". One exception: an egress
   * socket others cannot connect to keeps the box at the host's uid 0 (said on stderr). */
  uid_t uid = geteuid();
  gid_t gid = getegid();
  int stranger = uid == 0;
  struct stat es;
  if (stranger && b.egress_arg && stat(b.egress_arg, &es) == 0 && !(es.st_mode & S_IWOTH)) {
    dprintf(2, "evs-fnbox: %s is not writable by others: the box keeps uid 0 (give the socket "
               "mode 0666 in a private directory)\n", b.egress_arg);
    stranger = 0;
  }
  int ready[2] = {-1, -1}, go[2] = {-1, -1};
  pid_t root_pid = getpid();
  if (stranger) {
    if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0) die(errno, "pipe");
    pid_t c = fork();
    if (c < 0) die(errno, "fork");
    if (c > 0) {
      close(ready[1]);
      close(go[0]);
      map_child_and_wait(c, ready[0], go[1]);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(ready[0]);
    close(go[1]);
  }
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC |
              CLONE_NEWUTS) < 0)
    die(errno, "namespaces (unprivileged user namespaces disabled?)");
  if (stranger) {
    char c;
    if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1) _exit(1); /* root is gone */
    close(ready[1]);
    close(go[0]);
  } else {
    int r = evs__map_self(uid, gid);
    if (r < 0) die(-r, "user namespace id maps");
  }
  /* Opened in the new mount namespace: a bind's source must be one of its own mounts. */
  plan(&b, self);
  if (stranger) {
    int r = evs__become_ns_root();
    if (r < 0) die(-r, "becoming uid %u", EVS_FNBOX_UID);
    /* A change of uid clears the parent-death signal: set it again, and check root is there. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != root_pid) _exit(1);
  }

  int alive[2];
  if (pipe2(alive, O_CLOEXEC) < 0) die(errno, "pipe");
  pid_t pid = fork();
  if (pid < 0) die(errno, "fork");
  if (pid == 0) {
    close(alive[1]);
    run_box(&b, alive[0]);
  }
  /* The waiting process: holds alive[1] until it ends, waits, passes the status on. It owns
   * the box's namespaces: it keeps no capability in them while it waits. */
  close(alive[0]);
  close(CHANNEL_FD);
  for (int i = 0; i < b.nbinds; i++) close(b.binds[i].fd);
  syscall(SYS_close_range, 0, 2, 0);
  drop_all_caps();
  wait_and_pass_on(pid);
}
