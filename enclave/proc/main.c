/*
 * evserver-enclave: the key-holding process (enclave/README.md). The enclave plugin starts it
 * with fork+exec as
 *
 *   evserver-enclave --fd N --seal-key PATH [--credentials DIR] [--tag TAG]
 *
 * where fd N is its end of a SOCK_STREAM socketpair. Start-up, in order: make the process
 * undumpable and disable core dumps; initialise OpenSSL's secure heap and warm up every
 * algorithm; read (or create) the sealing key; read app tokens from the systemd credentials
 * directory (so that nothing needs a file after sandboxing); close every other descriptor; lock
 * memory; then evs_sandbox_apply(EVS_SANDBOX_ENCLAVE). From then on it reads requests from fd N
 * and writes their responses in order (single-threaded, blocking, buffered: see serve), until
 * EOF (exit 0). It logs nothing but one-line JSON errors on stderr, never with secrets.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "enclave.h"
#include "evs_sandbox.h"

#define SECURE_HEAP_SIZE (512 * 1024) /* tokens, transient AMKs and shares, OpenSSL's BIGNUMs */
#define CREDENTIAL_PREFIX "evserver-app-"
#define MAX_CREDENTIALS 4096

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EVS_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(EVS_ASAN)
/* Sanitizer builds (-DEVS_SANITIZE=ON): LeakSanitizer's exit-time check needs clone and ptrace,
 * which the enclave's seccomp filter refuses, so it would turn every clean exit into a failure.
 * Leaks in this code are found by the unit tests, which run unsandboxed. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }
#endif

/* One JSON line on stderr. what and detail are fixed strings or non-secret names (paths, app ids
 * validated as [A-Za-z0-9_-]); err is an errno or 0. */
static void log_error(const char *id, const char *what, const char *detail, int err) {
  char line[768];
  int n = snprintf(line, sizeof line,
                   "{\"level\":\"error\",\"id\":\"%s\",\"process\":\"evserver-enclave\","
                   "\"msg\":\"%s\"",
                   id, what);
  if (detail && n > 0 && (size_t)n < sizeof line) {
    n += snprintf(line + n, sizeof line - (size_t)n, ",\"detail\":\"");
    for (const char *p = detail; *p && n > 0 && (size_t)n < sizeof line - 8; p++) {
      unsigned char c = (unsigned char)*p;
      if (c == '"' || c == '\\') line[n++] = '\\';
      line[n++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    if ((size_t)n < sizeof line) n += snprintf(line + n, sizeof line - (size_t)n, "\"");
  }
  if (err && n > 0 && (size_t)n < sizeof line)
    n += snprintf(line + n, sizeof line - (size_t)n, ",\"error\":\"%s\"", strerror(err));
  if (n > 0 && (size_t)n < sizeof line - 2) {
    line[n++] = '}';
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
  }
}

static void usage(void) {
  fprintf(stderr, "usage: evserver-enclave --fd N --seal-key PATH [--credentials DIR]"
                  " [--tag TAG]\n"
                  "  TAG: 1..64 of [A-Za-z0-9_-], shown in HELLO\n"
                  "Started by the enclave plugin; see enclave/README.md.\n");
}

/* ---- start-up (before the sandbox) ---------------------------------------------------- */

static int read_full(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  while (len) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? -errno : -EIO;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? -errno : -EIO;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Reads a 32-byte sealing key file: a regular file of exactly 32 bytes, not accessible to group
 * or others. 0, or -errno for a missing file (ENOENT) and -1 (logged) for any other problem. */
static int read_seal_key(const char *path, uint8_t *key) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return -ENOENT;
    log_error("EVS-3005", "cannot open the sealing key file", path, errno);
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != EVS_SEAL_KEY_LEN) {
    close(fd);
    log_error("EVS-3006", "the sealing key file must be a regular file of exactly 32 bytes",
              path, 0);
    return -1;
  }
  if (st.st_mode & 077) {
    close(fd);
    log_error("EVS-3007", "the sealing key file is accessible to group or others (chmod 600)",
              path, 0);
    return -1;
  }
  int r = read_full(fd, key, EVS_SEAL_KEY_LEN);
  close(fd);
  if (r < 0) {
    log_error("EVS-3008", "cannot read the sealing key file", path, -r);
    return -1;
  }
  return 0;
}

/* Reads the sealing key, or creates it with fresh random bytes. Creation writes a temporary
 * file (0600, O_EXCL), syncs it and link()s it into place, so the key file is never seen
 * half-written, and when several enclaves start at once they all end up with the one key
 * whose link won. */
static int load_seal_key(const char *path, uint8_t *key) {
  int r = read_seal_key(path, key);
  if (r != -ENOENT) return r;
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.new.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
    log_error("EVS-3003", "the sealing key path is too long", NULL, 0);
    return -1;
  }
  if (RAND_bytes(key, EVS_SEAL_KEY_LEN) != 1) {
    log_error("EVS-3002", "cannot generate the sealing key", NULL, 0);
    return -1;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    log_error("EVS-3003", "cannot create the sealing key file", tmp, errno);
    return -1;
  }
  r = write_full(fd, key, EVS_SEAL_KEY_LEN);
  if (r == 0 && fsync(fd) < 0) r = -errno;
  close(fd);
  if (r == 0 && link(tmp, path) < 0) r = -errno;
  unlink(tmp);
  if (r == -EEXIST) /* another enclave created it first: use theirs */
    return read_seal_key(path, key);
  if (r < 0) {
    OPENSSL_cleanse(key, EVS_SEAL_KEY_LEN);
    log_error("EVS-3004", "cannot write the sealing key file", path, -r);
    return -1;
  }
  /* Make the new name durable too: losing the key file loses every app's keys. */
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash == dir) slash[1] = 0;
  else if (slash) *slash = 0;
  else snprintf(dir, sizeof dir, ".");
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)fsync(dfd);
    close(dfd);
  }
  return 0;
}

/* Reads every "evserver-app-<appId>" file of the credentials directory into the enclave. A
 * missing directory is an error only when it was named explicitly; an unreadable or oversized
 * file is logged and skipped (its app can still be unlocked with `evctl app unlock`). */
static int load_credentials(evs_enclave *e, const char *dir, int explicit_dir) {
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    if (!explicit_dir && errno == ENOENT) return 0;
    log_error("EVS-3010", "cannot open the credentials directory", dir, errno);
    return -1;
  }
  DIR *d = fdopendir(dfd);
  if (!d) {
    close(dfd);
    log_error("EVS-3010", "cannot open the credentials directory", dir, errno);
    return -1;
  }
  size_t plen = strlen(CREDENTIAL_PREFIX);
  int count = 0, status = 0;
  char *buf = OPENSSL_secure_malloc(4097);
  if (!buf) {
    closedir(d);
    return -1;
  }
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    const char *name = de->d_name;
    if (strncmp(name, CREDENTIAL_PREFIX, plen) != 0) continue;
    const char *id = name + plen;
    if (!evs__app_id_valid((const uint8_t *)id, strlen(id))) {
      log_error("EVS-3011", "ignoring a credential whose name is not a valid app id", name, 0);
      continue;
    }
    if (++count > MAX_CREDENTIALS) {
      log_error("EVS-3012", "too many app credentials; ignoring the rest", NULL, 0);
      break;
    }
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
      log_error("EVS-3013", "cannot open an app credential", name, errno);
      continue;
    }
    size_t len = 0;
    for (;;) {
      ssize_t n = read(fd, buf + len, 4097 - len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      len += (size_t)n;
      if (len == 4097) break;
    }
    close(fd);
    if (len > 4096) {
      log_error("EVS-3014", "an app credential is too large", name, 0);
      OPENSSL_cleanse(buf, 4097);
      continue;
    }
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ')) len--;
    if (evs__enclave_add_credential(e, id, strlen(id), buf, len) != EVS_EP_OK) {
      log_error("EVS-3015", "cannot keep an app credential", name, 0);
      status = -1; /* out of (secure) memory: the operator must know */
    }
    OPENSSL_cleanse(buf, 4097);
  }
  OPENSSL_secure_clear_free(buf, 4097);
  closedir(d);
  return status;
}

/* Runs every algorithm once, so that OpenSSL has loaded its configuration, providers and
 * method tables, and seeded its DRBG, before the sandbox takes file access away. */
static int warm_up(void) {
  if (OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG | OPENSSL_INIT_ADD_ALL_CIPHERS |
                              OPENSSL_INIT_ADD_ALL_DIGESTS,
                          NULL) != 1)
    return -1;
  uint8_t seal_key[EVS_SEAL_KEY_LEN];
  if (RAND_bytes(seal_key, sizeof seal_key) != 1) return -1;
  evs_enclave *e = NULL;
  int ok = evs__enclave_new(seal_key, &e) == EVS_EP_OK;
  OPENSSL_cleanse(seal_key, sizeof seal_key);
  evs_app_created c;
  static const uint8_t id[] = "warm-up";
  ok = ok && evs__app_create(e, id, sizeof id - 1, &c) == EVS_EP_OK;
  if (ok) {
    uint8_t pub[2][EVS_EC_PUB_LEN];
    ok = evs__app_unlock(e, id, sizeof id - 1, (const uint8_t *)c.token, EVS_APP_TOKEN_LEN,
                         c.share1, sizeof c.share1, c.share2, sizeof c.share2, c.wrapped,
                         sizeof c.wrapped, pub) == EVS_EP_OK;
    evs__app_created_done(&c);
  }
  evs_app *app = ok ? evs__app_find(e, id, sizeof id - 1) : NULL;
  for (int curve = 0; app && ok && curve < 2; curve++) {
    evs_ec_encryptor *enc = evs__app_encryptor(app, (evs_ec_curve)curve);
    char s[512];
    uint8_t plain[512], file[EVS_EC_FILE_OVERHEAD + 4];
    size_t len = 0;
    evs_ec_plaintext pt;
    ok = enc && evs_ec_encrypt(enc, EVS_EC_STRING, (const uint8_t *)"x", 1, NULL, s, sizeof s,
                               &len) == EVS_EC_OK &&
         evs_ec_decrypt(app->dec, s, len, plain, sizeof plain, &pt) == EVS_EC_OK &&
         evs_ec_encrypt(enc, EVS_EC_NUMBER, (const uint8_t *)"1", 1, "warm-up", s, sizeof s,
                        &len) == EVS_EC_OK &&
         evs_ec_decrypt(app->dec, s, len, plain, sizeof plain, &pt) == EVS_EC_OK &&
         evs_ec_encrypt_file(enc, (const uint8_t *)"file", 4, file, sizeof file, &len) ==
             EVS_EC_OK &&
         evs_ec_decrypt_file(app->dec, file, len, plain, sizeof plain, &len, NULL) == EVS_EC_OK;
  }
  evs__enclave_free(e);
  return ok ? 0 : -1;
}

/* Closes descriptors lo..hi; close_range where the kernel has it (5.9+), else one by one. */
static int close_between(int lo, int hi) {
  if (lo > hi) return 0;
  if (close_range((unsigned)lo, (unsigned)hi, 0) == 0) return 0;
  if (errno != ENOSYS) return -1;
  long max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > 1 << 20) max = 1 << 20;
  for (long i = lo; i <= hi && i < max; i++) close((int)i);
  return 0;
}

/* Keeps fd (moved above 2 if needed), stderr, and /dev/null as stdin and stdout; closes the
 * rest. Returns the (possibly new) fd, or -1. */
static int close_other_fds(int fd) {
  if (fd <= 2) {
    int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (nfd < 0) return -1;
    fd = nfd;
  }
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) return -1;
  if (dup2(null, 0) < 0 || dup2(null, 1) < 0) return -1;
  if (null > 2) close(null);
  if (close_between(3, fd - 1) < 0 || close_between(fd + 1, INT_MAX) < 0) return -1;
  /* The loop blocks on reads: a parent that made both ends non-blocking would otherwise see
   * the enclave exit on the first EAGAIN. */
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || ((fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)) return -1;
  return fd;
}

/* 1 when the process has CAP_IPC_LOCK in its effective set (then RLIMIT_MEMLOCK does not
 * apply). Read from /proc so as not to need libcap. */
static int have_ipc_lock(void) {
  FILE *f = fopen("/proc/self/status", "re");
  if (!f) return 0;
  char line[256];
  unsigned long long caps = 0;
  int found = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "CapEff: %llx", &caps) == 1) {
      found = 1;
      break;
    }
  fclose(f);
  return found && (caps >> 14 & 1); /* CAP_IPC_LOCK */
}

/* Locks memory as far as the limit allows: everything (mlockall, so the crypto library's key
 * objects and caches too) when the process has CAP_IPC_LOCK (AmbientCapabilities=) or
 * RLIMIT_MEMLOCK's hard limit is unlimited (LimitMEMLOCK=infinity); else the secure heap alone
 * (initialised in main), which holds the sealing key, tokens and transient secrets. A finite
 * limit is not used for mlockall: with MCL_FUTURE every allocation past it would fail, and a
 * 64 MiB message needs more than a typical 8 MiB. Returns a word for HELLO. */
static const char *lock_memory(int secure_heap) {
  struct rlimit rl;
  if (have_ipc_lock() && mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0) return "all";
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_max == RLIM_INFINITY) {
    rl.rlim_cur = RLIM_INFINITY; /* a soft limit may be raised up to the hard one */
    if (setrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
        mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0)
      return "all";
  }
  return secure_heap == 1 ? "secure-heap" : "none";
}

/* ---- the loop ------------------------------------------------------------------------ */

/* Requests are read in chunks of up to IN_CAP bytes, so one read() takes every request the
 * plugin has queued (it pipelines them) instead of two reads per request; a message larger than
 * that (a file) gets a buffer of its own. Responses are gathered while more requests are already
 * buffered and written together (one write, one wake-up of the plugin). So that no response
 * waits long, the group is written before a request is handled once its oldest request started
 * FLUSH_NS ago, or when the next request has over GATHER_ITEMS items (a batch of misses costs
 * ~70 us a field), and once it would pass OUT_CAP. Both buffers hold plaintext at times: every
 * byte is wiped once it has been handled or written. */
#define IN_CAP (256u << 10)
#define OUT_CAP (64u << 10)
#define FLUSH_NS 100000u
#define GATHER_ITEMS 32

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct inbuf {
  uint8_t *p;
  size_t off, len; /* unread bytes are p[off..len) */
} inbuf;

/* Copies n bytes of the stream to dst (NULL: discards them): first what is buffered, then
 * straight from fd. */
static int take(int fd, inbuf *in, uint8_t *dst, uint64_t n) {
  size_t b = in->len - in->off < n ? in->len - in->off : (size_t)n;
  if (dst) memcpy(dst, in->p + in->off, b);
  OPENSSL_cleanse(in->p + in->off, b);
  in->off += b;
  n -= b;
  if (dst) return n ? read_full(fd, dst + b, (size_t)n) : 0;
  uint8_t tmp[65536];
  while (n) {
    size_t k = n > sizeof tmp ? sizeof tmp : (size_t)n;
    if (read_full(fd, tmp, k) < 0) return -1;
    n -= k;
  }
  return 0;
}

static int flush(int fd, uint8_t *w, size_t *wlen) {
  int r = write_full(fd, w, *wlen);
  OPENSSL_cleanse(w, *wlen);
  *wlen = 0;
  return r;
}

static int serve(evs_enclave *e, int fd) {
  evs_ep_buf out = {0};
  inbuf in = {malloc(IN_CAP), 0, 0};
  uint8_t *w = malloc(OUT_CAP);
  size_t wlen = 0;
  uint64_t first_ns = 0; /* when the request of the oldest gathered response started */
  int rc = 0;
  if (!in.p || !w) {
    log_error("EVS-3031", "out of memory for the I/O buffers", NULL, ENOMEM);
    rc = 1;
    goto done;
  }
  for (;;) {
    size_t avail = in.len - in.off;
    uint32_t len = avail >= 4 ? evs_ep_get_u32(in.p + in.off) : 0;
    if (avail < 4 || (len <= IN_CAP - 4 && avail - 4 < len)) {
      /* No complete request is buffered: write what is gathered before blocking. */
      if (wlen && flush(fd, w, &wlen) < 0) break; /* the plugin went away */
      if (in.off) {
        memmove(in.p, in.p + in.off, avail);
        OPENSSL_cleanse(in.p + avail, in.off); /* copies left behind by the move */
        in.off = 0;
        in.len = avail;
      }
      ssize_t n = read(fd, in.p + in.len, IN_CAP - in.len);
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) break; /* EOF: the plugin closed its end */
      if (n < 0) {
        log_error("EVS-3030", "reading from the plugin failed", NULL, errno);
        rc = 1;
        break;
      }
      in.len += (size_t)n;
      continue;
    }
    uint64_t t0 = now_ns();
    if (len <= IN_CAP - 4) {
      const uint8_t *body = in.p + in.off + 4;
      if (wlen && (t0 - first_ns >= FLUSH_NS ||
                   (len >= EVS_EP_HEADER_LEN - 4 && evs_ep_get_u32(body + 16) > GATHER_ITEMS)) &&
          flush(fd, w, &wlen) < 0)
        break;
      evs__ep_handle(e, body, len, &out);
      OPENSSL_cleanse(in.p + in.off, 4 + (size_t)len); /* it may hold plaintext or a token */
      in.off += 4 + (size_t)len;
    } else {
      if (wlen && flush(fd, w, &wlen) < 0) break; /* the rest of this one may take a while */
      in.off += 4;
      uint8_t *body = len <= EVS_EP_MAX_MESSAGE ? malloc(len) : NULL;
      if (!body) {
        /* Too large (or no memory): read the header, so that the error response can name the
         * request the plugin is waiting for, and discard the rest. */
        uint8_t head[EVS_EP_HEADER_LEN - 4] = {0};
        if (take(fd, &in, head, sizeof head) < 0 || take(fd, &in, NULL, len - sizeof head) < 0)
          break;
        evs__ep_begin(&out, evs_ep_get_u16(head + 6), evs_ep_get_u32(head + 8),
                      len > EVS_EP_MAX_MESSAGE ? EVS_EP_E_PROTOCOL : EVS_EP_E_INTERNAL);
        evs__ep_finish(&out);
      } else {
        if (take(fd, &in, body, len) < 0) {
          OPENSSL_clear_free(body, len);
          break;
        }
        evs__ep_handle(e, body, len, &out);
        OPENSSL_clear_free(body, len);
      }
    }
    if (out.len == 0) { /* not even an error response could be built: better dead than mute */
      log_error("EVS-3031", "out of memory for a response", NULL, ENOMEM);
      rc = 1;
      break;
    }
    if (wlen && out.len > OUT_CAP - wlen && flush(fd, w, &wlen) < 0) break;
    if (out.len > OUT_CAP) { /* large: written as it is */
      int r = write_full(fd, out.p, out.len);
      OPENSSL_cleanse(out.p, out.len);
      if (r < 0) break;
      continue;
    }
    if (!wlen) first_ns = t0;
    memcpy(w + wlen, out.p, out.len);
    wlen += out.len;
    OPENSSL_cleanse(out.p, out.len);
  }
done:
  if (in.p) OPENSSL_clear_free(in.p, IN_CAP);
  if (w) OPENSSL_clear_free(w, OUT_CAP);
  evs__ep_buf_done(&out);
  return rc;
}

int main(int argc, char **argv) {
  const char *seal_path = NULL, *cred_dir = NULL, *tag = NULL;
  int fd = -1, explicit_creds = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--fd") == 0 && i + 1 < argc) {
      char *end;
      errno = 0;
      long v = strtol(argv[++i], &end, 10);
      if (errno || *end || v < 0 || v > INT_MAX) {
        usage();
        return 2;
      }
      fd = (int)v;
    } else if (strcmp(a, "--seal-key") == 0 && i + 1 < argc) {
      seal_path = argv[++i];
    } else if (strcmp(a, "--credentials") == 0 && i + 1 < argc) {
      cred_dir = argv[++i];
      explicit_creds = 1;
    } else if (strcmp(a, "--tag") == 0 && i + 1 < argc) {
      tag = argv[++i];
      size_t n = strlen(tag);
      if (n < 1 || n > 64 || strspn(tag, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                          "0123456789_-") != n) {
        usage();
        return 2;
      }
    } else if (strcmp(a, "--version") == 0) {
      printf("evserver-enclave %s\n", EVS_ENCLAVE_VERSION);
      return 0;
    } else {
      usage();
      return 2;
    }
  }
  if (fd < 0 || !seal_path) {
    usage();
    return 2;
  }
  /* First of all, before any secret is read: exec made the process dumpable again, so another
   * process of the same user could attach to it or read a core file. */
  struct rlimit none = {0, 0};
  if (setrlimit(RLIMIT_CORE, &none) < 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
    log_error("EVS-3021", "cannot disable core dumps", NULL, errno);
    return 1;
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
    log_error("EVS-3001", "--fd is not an open socket", NULL, errno);
    return 2;
  }
  if (!cred_dir) cred_dir = getenv("CREDENTIALS_DIRECTORY");
  signal(SIGPIPE, SIG_IGN); /* a vanished plugin is a write error, handled as EOF */

  int secure_heap = CRYPTO_secure_malloc_init(SECURE_HEAP_SIZE, 16);
  if (warm_up() < 0) {
    log_error("EVS-3009", "cryptography self-test failed", NULL, 0);
    return 1;
  }
  uint8_t *seal_key = OPENSSL_secure_malloc(EVS_SEAL_KEY_LEN);
  evs_enclave *e = NULL;
  if (!seal_key || load_seal_key(seal_path, seal_key) < 0 ||
      evs__enclave_new(seal_key, &e) != EVS_EP_OK) {
    OPENSSL_secure_clear_free(seal_key, EVS_SEAL_KEY_LEN);
    return 1;
  }
  OPENSSL_secure_clear_free(seal_key, EVS_SEAL_KEY_LEN);
  if (cred_dir && *cred_dir && load_credentials(e, cred_dir, explicit_creds) < 0 &&
      explicit_creds) {
    evs__enclave_free(e);
    return 1;
  }

  fd = close_other_fds(fd);
  if (fd < 0) {
    log_error("EVS-3020", "cannot close inherited descriptors", NULL, errno);
    evs__enclave_free(e);
    return 1;
  }
  const char *mlock_mode = lock_memory(secure_heap);
  int r = evs_sandbox_apply(EVS_SANDBOX_ENCLAVE);
  if (r < 0) {
    log_error("EVS-3022", "cannot apply the seccomp sandbox", NULL, -r);
    evs__enclave_free(e);
    return 1;
  }
  evs__enclave_set_info(e, evs_sandbox_policy_name(EVS_SANDBOX_ENCLAVE), mlock_mode);
  evs__enclave_set_tag(e, tag);
  int rc = serve(e, fd);
  evs__enclave_free(e);
  return rc;
}
