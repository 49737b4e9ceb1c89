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
 * memory; then evs_sandbox_apply(EVS_SANDBOX_ENCLAVE). From then on one thread serves fd N and
 * every further connection that an ATTACH request hands it (a unix stream socket passed with
 * SCM_RIGHTS), each with its requests answered in order on it, with non-blocking I/O and
 * buffering (see serve). A connection that closes or fails is dropped alone; when the last one
 * has closed the process exits 0, so an enclave outlives the worker that started it while
 * anyone else still holds a connection. It logs nothing but one-line JSON errors on stderr,
 * never with secrets.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
    if (!evs_app_id_valid(id, strlen(id))) {
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
  static const uint8_t id[] = "app_warmup"; /* a valid id (evs_app_id.h), in a scratch enclave */
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
  /* The relay CA: key generation, X.509 building, PEM both ways, unsealing, signing. */
  char *ca = NULL, *leaf = NULL;
  uint8_t *sealed = NULL;
  size_t ca_len = 0, sealed_len = 0, leaf_len = 0;
  static const char leaf_key[] =
      "-----BEGIN PUBLIC KEY-----\n"
      "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAECpPNLG1HkEbPaxjM8KnY4S9OOk5H\n"
      "IcVGO3ZvoMydaygWKn85S0X2OTi+BisPVxZH3fDhHuavQenaC/gK7j3rKA==\n"
      "-----END PUBLIC KEY-----\n";
  evs_ep_item names[2] = {{(const uint8_t *)"warm.up", 7}, {(const uint8_t *)"::1", 3}};
  ok = ok && evs__ca_create(e, NULL, 0, 1, &ca, &ca_len, &sealed, &sealed_len) == EVS_EP_OK &&
       evs__ca_sign(e, (const uint8_t *)ca, ca_len, sealed, sealed_len,
                    (const uint8_t *)leaf_key, sizeof leaf_key - 1, 0, names, 2, &leaf,
                    &leaf_len) == EVS_EP_OK;
  free(ca);
  free(sealed);
  free(leaf);
  /* The attestation keys: P-384 generation, DER both ways, unsealing, signing. */
  uint8_t *root = NULL, *root_sealed = NULL, *node = NULL, *node_sealed = NULL;
  size_t root_len = 0, root_sealed_len = 0, node_len = 0, node_sealed_len = 0;
  static const uint8_t tbs[] = "\x84\x6aSignature1\x40\x40\x40";
  uint8_t sig[EVS_ATTEST_SIG_LEN];
  ok = ok &&
       evs__attest_root_create(e, NULL, 0, 1, &root, &root_len, &root_sealed,
                               &root_sealed_len) == EVS_EP_OK &&
       evs__attest_node_create(e, root, root_len, root_sealed, root_sealed_len,
                               (const uint8_t *)"warm-up", 7, &node, &node_len, &node_sealed,
                               &node_sealed_len) == EVS_EP_OK &&
       evs__attest_chain(e, root, root_len, node, node_len, node_sealed, node_sealed_len) ==
           EVS_EP_OK &&
       evs__attest_sign(e, node, node_len, node_sealed, node_sealed_len, tbs, sizeof tbs - 1,
                        sig) == EVS_EP_OK;
  free(root);
  free(root_sealed);
  free(node);
  free(node_sealed);
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
  return fd; /* blocking or not: the loop's calls say MSG_DONTWAIT and wait with poll */
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

/* The enclave serves several connections (evs_enclave_proto.h, "Connections"): the one it was
 * started with and those that EVS_EP_ATTACH adds, each with its own buffers, served one after
 * the other by one thread. The loop polls them all; for each readable one it makes one read,
 * handles every complete request that read completed, writes their responses back on that
 * connection, and moves on to the next readable one (so a connection that keeps sending cannot
 * starve the others). A connection that reaches EOF, fails, or stalls is closed alone; the loop
 * returns when the last one is gone.
 *
 * Requests are read in chunks of up to IN_CAP bytes, so one read takes every request the
 * plugin has queued (it pipelines them) instead of two reads per request; a message larger than
 * that (a file) gets a buffer of its own. Responses are gathered while more requests are already
 * buffered and written together (one write, one wake-up of the plugin). So that no response
 * waits long, the group is written before a request is handled once its oldest request started
 * FLUSH_NS ago, or when the next request has over GATHER_ITEMS items (a batch of misses costs
 * ~70 us a field), and once it would pass OUT_CAP. Both buffers hold plaintext at times: every
 * byte is wiped once it has been handled or written, and when its connection is closed. */
#define IN_CAP (256u << 10)
#define OUT_CAP (64u << 10)
#define FLUSH_NS 100000u
#define GATHER_ITEMS 32
/* A handful of connections is what the plugin needs (a worker's, an old worker's while it
 * drains, the master's spare); the limit bounds memory (IN_CAP + OUT_CAP each). Descriptors
 * received on a connection wait there for the ATTACH frames that consume them, at most
 * MAX_PENDING_FDS; one recvmsg takes at most RECV_FDS (the kernel closes the rest and says
 * MSG_CTRUNC). */
#define MAX_CONNS 16
#define MAX_PENDING_FDS 4
#define RECV_FDS 8
/* In the middle of a message (the rest of a large request, responses the peer does not read
 * yet) the loop waits for that one connection, and the others wait too; after STALL_MS without
 * progress it gives the connection up. */
#define STALL_MS 10000

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct inbuf {
  uint8_t *p;
  size_t off, len; /* unread bytes are p[off..len) */
} inbuf;

/* One connection. Its descriptor is used with MSG_DONTWAIT rather than made O_NONBLOCK: the
 * file status flags belong to the open file description, which the sender of an ATTACH (or the
 * enclave's parent) may share, and a per-call flag changes nothing for them. */
typedef struct conn {
  int fd;                   /* -1: a free slot */
  inbuf in;                 /* IN_CAP bytes (malloc): requests read, not yet handled */
  uint8_t *w;               /* OUT_CAP bytes (malloc): gathered responses, w[0..wlen) */
  size_t wlen;
  uint64_t first_ns;        /* when the request of the oldest gathered response started */
  int fds[MAX_PENDING_FDS]; /* received, waiting for an ATTACH; oldest first */
  int nfds;
} conn;

typedef struct server {
  evs_enclave *e;
  evs_ep_buf out; /* the response being built; copied or written out before the next request */
  conn conns[MAX_CONNS];
  int nconns;
} server;

/* One recvmsg without waiting. Descriptors that came with the bytes are queued on c in arrival
 * order; beyond MAX_PENDING_FDS they are closed (and logged). Returns the number of bytes, 0 at
 * EOF, or -errno (-EAGAIN: nothing there). */
static ssize_t conn_recv(conn *c, void *buf, size_t len) {
  union {
    struct cmsghdr align;
    char b[CMSG_SPACE(RECV_FDS * sizeof(int))];
  } cbuf;
  struct iovec iov = {buf, len};
  struct msghdr mh = {0};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf.b;
  mh.msg_controllen = sizeof cbuf.b;
  ssize_t n;
  do n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  int extra = (mh.msg_flags & MSG_CTRUNC) != 0;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(cm) + i * sizeof fd, sizeof fd);
      if (c->nfds < MAX_PENDING_FDS) {
        c->fds[c->nfds++] = fd;
      } else {
        close(fd);
        extra = 1;
      }
    }
  }
  if (extra)
    log_error("EVS-3044", "more descriptors received than ATTACH frames consume: closed the extras",
              NULL, 0);
  return n;
}

/* Waits until c is ready for events (POLLIN or POLLOUT), at most STALL_MS: 0 (ready, or an
 * error or hang-up that the next call reports), -ETIMEDOUT, or -errno. */
static int conn_wait(const conn *c, short events) {
  struct pollfd p = {.fd = c->fd, .events = events};
  for (;;) {
    int r = poll(&p, 1, STALL_MS);
    if (r > 0) return 0;
    if (r == 0) return -ETIMEDOUT;
    if (errno != EINTR) return -errno;
  }
}

/* Reads exactly len bytes from c's socket (what c->in holds is the caller's business): 0, -EIO
 * at EOF, -ETIMEDOUT, or -errno. */
static int conn_read_full(conn *c, uint8_t *p, size_t len) {
  while (len) {
    ssize_t n = conn_recv(c, p, len);
    if (n > 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (n == 0) return -EIO;
    if (n != -EAGAIN) return (int)n;
    int r = conn_wait(c, POLLIN);
    if (r < 0) return r;
  }
  return 0;
}

/* Writes all of p[0..len) to c: 0, -ETIMEDOUT, or -errno (-EPIPE: the peer went away). */
static int conn_write_full(conn *c, const uint8_t *p, size_t len) {
  while (len) {
    ssize_t n = send(c->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return -errno;
    int r = conn_wait(c, POLLOUT);
    if (r < 0) return r;
  }
  return 0;
}

/* Copies n bytes of c's stream to dst (NULL: discards them): first what is buffered, then
 * straight from the socket. 0 or -errno. */
static int take(conn *c, uint8_t *dst, uint64_t n) {
  inbuf *in = &c->in;
  size_t b = in->len - in->off < n ? in->len - in->off : (size_t)n;
  if (dst) memcpy(dst, in->p + in->off, b);
  OPENSSL_cleanse(in->p + in->off, b);
  in->off += b;
  n -= b;
  if (dst) return n ? conn_read_full(c, dst + b, (size_t)n) : 0;
  uint8_t tmp[65536];
  int r = 0;
  while (n && r == 0) {
    size_t k = n > sizeof tmp ? sizeof tmp : (size_t)n;
    r = conn_read_full(c, tmp, k);
    n -= k;
  }
  OPENSSL_cleanse(tmp, sizeof tmp);
  return r;
}

static int flush(conn *c) {
  int r = conn_write_full(c, c->w, c->wlen);
  OPENSSL_cleanse(c->w, c->wlen);
  c->wlen = 0;
  return r;
}

/* Takes a new connection (an ATTACH's descriptor, or the first one). 0, or -1 with fd closed
 * and the reason logged. */
static int conn_add(server *s, int fd) {
  conn *c = NULL;
  for (int i = 0; i < MAX_CONNS && !c; i++)
    if (s->conns[i].fd < 0) c = &s->conns[i];
  if (!c) {
    log_error("EVS-3043", "too many connections: ATTACH ignored", NULL, 0);
    close(fd);
    return -1;
  }
  uint8_t *in = malloc(IN_CAP), *w = malloc(OUT_CAP);
  if (!in || !w) {
    free(in);
    free(w);
    log_error("EVS-3031", "out of memory for a connection's buffers", NULL, ENOMEM);
    close(fd);
    return -1;
  }
  *c = (conn){.fd = fd, .in = {in, 0, 0}, .w = w};
  s->nconns++;
  return 0;
}

/* Closes c and its waiting descriptors, and wipes and frees its buffers. */
static void conn_drop(server *s, conn *c) {
  close(c->fd);
  for (int i = 0; i < c->nfds; i++) close(c->fds[i]);
  OPENSSL_clear_free(c->in.p, IN_CAP);
  OPENSSL_clear_free(c->w, OUT_CAP);
  *c = (conn){.fd = -1};
  s->nconns--;
}

/* Logs why a connection is given up (err: -errno), unless it is the ordinary end: EOF (-EIO),
 * a peer that closed with responses unread (ECONNRESET) or before they were written (EPIPE).
 * ENOMEM has been logged where it happened. */
static void conn_failed(int err) {
  if (err == -EIO || err == -ECONNRESET || err == -EPIPE || err == -ENOMEM) return;
  if (err == -ETIMEDOUT)
    log_error("EVS-3033", "a connection stalled in the middle of a message: closed it", NULL, 0);
  else
    log_error("EVS-3030", "a connection failed: closed it", NULL, -err);
}

/* 1 when the frame body (after its u32 length) is an ATTACH: right magic and version, op
 * ATTACH. Such a frame is never answered, even when malformed. */
static int is_attach(const uint8_t *body, size_t len) {
  return len >= 8 && evs_ep_get_u32(body) == EVS_EP_MAGIC &&
         evs_ep_get_u16(body + 4) == EVS_EP_VERSION && evs_ep_get_u16(body + 6) == EVS_EP_ATTACH;
}

/* 1 when fd is a unix stream socket that is not listening (one that is not connected fails at
 * its first read and is closed then). */
static int is_unix_stream(int fd) {
  int v = -1;
  socklen_t l = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &l) < 0 || v != AF_UNIX) return 0;
  l = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &l) < 0 || v != SOCK_STREAM) return 0;
  l = sizeof v;
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v == 0;
}

/* An ATTACH frame arrived on c: the oldest descriptor waiting there becomes a connection, if
 * the frame and the descriptor are what the protocol asks for; otherwise it is closed and the
 * frame ignored (logged). Never answered, never fatal to c. */
static void attach(server *s, conn *c, const uint8_t *body, size_t len) {
  int fd = -1;
  if (c->nfds) {
    fd = c->fds[0];
    c->nfds--;
    memmove(c->fds, c->fds + 1, (size_t)c->nfds * sizeof *c->fds);
  }
  int well_formed = len == EVS_EP_HEADER_LEN - 4 && evs_ep_get_u32(body + 12) == 0 &&
                    evs_ep_get_u32(body + 16) == 0; /* status 0, no items */
  if (!well_formed)
    log_error("EVS-3042", "an ATTACH frame with items or a status: ignored", NULL, 0);
  else if (fd < 0)
    log_error("EVS-3040", "an ATTACH frame without a descriptor: ignored", NULL, 0);
  else if (!is_unix_stream(fd))
    log_error("EVS-3041", "the descriptor of an ATTACH is not a unix stream socket: ignored",
              NULL, 0);
  else {
    conn_add(s, fd); /* closes fd and logs when it cannot */
    return;
  }
  if (fd >= 0) close(fd);
}

/* Handles the request at c->in.off, whose length field (len) has been read and whose body is
 * buffered whole when len <= IN_CAP - 4; a larger one is read on. Its response is gathered or
 * written. 0, or -errno: the connection is to be closed (conn_failed says why). */
static int handle_one(server *s, conn *c, uint32_t len) {
  inbuf *in = &c->in;
  evs_ep_buf *out = &s->out;
  uint64_t t0 = now_ns();
  int r;
  if (len <= IN_CAP - 4) {
    const uint8_t *body = in->p + in->off + 4;
    int one_way = is_attach(body, len);
    if (one_way) {
      attach(s, c, body, len);
    } else {
      if (c->wlen &&
          (t0 - c->first_ns >= FLUSH_NS ||
           (len >= EVS_EP_HEADER_LEN - 4 && evs_ep_get_u32(body + 16) > GATHER_ITEMS)) &&
          (r = flush(c)) < 0)
        return r;
      evs__ep_handle(s->e, body, len, out);
    }
    OPENSSL_cleanse(in->p + in->off, 4 + (size_t)len); /* it may hold plaintext or a token */
    in->off += 4 + (size_t)len;
    if (one_way) return 0; /* no response */
  } else {
    if (c->wlen && (r = flush(c)) < 0) return r; /* the rest of this one may take a while */
    in->off += 4;
    uint8_t *body = len <= EVS_EP_MAX_MESSAGE ? malloc(len) : NULL;
    if (!body) {
      /* Too large (or no memory): read the header, so that the error response can name the
       * request the plugin is waiting for, and discard the rest. */
      uint8_t head[EVS_EP_HEADER_LEN - 4] = {0};
      if ((r = take(c, head, sizeof head)) < 0 || (r = take(c, NULL, len - sizeof head)) < 0)
        return r;
      if (is_attach(head, sizeof head)) {
        attach(s, c, head, len); /* malformed: ignored */
        return 0;
      }
      evs__ep_begin(out, evs_ep_get_u16(head + 6), evs_ep_get_u32(head + 8),
                    len > EVS_EP_MAX_MESSAGE ? EVS_EP_E_PROTOCOL : EVS_EP_E_INTERNAL);
      evs__ep_finish(out);
    } else {
      if ((r = take(c, body, len)) < 0) {
        OPENSSL_clear_free(body, len);
        return r;
      }
      int one_way = is_attach(body, len);
      if (one_way)
        attach(s, c, body, len); /* malformed: ignored */
      else
        evs__ep_handle(s->e, body, len, out);
      OPENSSL_clear_free(body, len);
      if (one_way) return 0;
    }
  }
  if (out->len == 0) { /* not even an error response could be built: better closed than mute */
    log_error("EVS-3031", "out of memory for a response: closed the connection", NULL, ENOMEM);
    return -ENOMEM;
  }
  if (c->wlen && out->len > OUT_CAP - c->wlen && (r = flush(c)) < 0) return r;
  if (out->len > OUT_CAP) { /* large: written as it is */
    r = conn_write_full(c, out->p, out->len);
    OPENSSL_cleanse(out->p, out->len);
    return r;
  }
  if (!c->wlen) c->first_ns = t0;
  memcpy(c->w + c->wlen, out->p, out->len);
  c->wlen += out->len;
  OPENSSL_cleanse(out->p, out->len);
  return 0;
}

/* c is readable: one read, every request it completes, their responses written. 0, or -1 when
 * c is to be closed (the reason, if any, is logged). */
static int conn_serve(server *s, conn *c) {
  inbuf *in = &c->in;
  if (in->off) {
    size_t avail = in->len - in->off;
    memmove(in->p, in->p + in->off, avail);
    OPENSSL_cleanse(in->p + avail, in->off); /* copies left behind by the move */
    in->off = 0;
    in->len = avail;
  }
  /* Never full here: a request that fits in IN_CAP was handled once complete, and a larger
   * one is read on as soon as its length is known. */
  ssize_t n = conn_recv(c, in->p + in->len, IN_CAP - in->len);
  if (n == -EAGAIN) return 0;
  int r = n == 0 ? -EIO : n < 0 ? (int)n : 0;
  if (r == 0) {
    in->len += (size_t)n;
    for (;;) {
      size_t avail = in->len - in->off;
      uint32_t len = avail >= 4 ? evs_ep_get_u32(in->p + in->off) : 0;
      if (avail < 4 || (len <= IN_CAP - 4 && avail - 4 < len)) break; /* wait for the rest */
      if ((r = handle_one(s, c, len)) < 0) break;
    }
  }
  if (r == 0 && c->wlen) r = flush(c); /* before the loop waits again */
  if (r < 0) conn_failed(r);
  return r < 0 ? -1 : 0;
}

/* Serves the connection fd, and every connection ATTACH adds, until the last one has closed
 * (0); 1 when the loop itself fails. */
static int serve(evs_enclave *e, int fd) {
  server s = {.e = e};
  for (int i = 0; i < MAX_CONNS; i++) s.conns[i].fd = -1;
  if (conn_add(&s, fd) < 0) return 1;
  int rc = 0;
  while (s.nconns > 0) {
    struct pollfd p[MAX_CONNS];
    int slot[MAX_CONNS];
    nfds_t n = 0;
    for (int i = 0; i < MAX_CONNS; i++) {
      if (s.conns[i].fd < 0) continue;
      p[n] = (struct pollfd){.fd = s.conns[i].fd, .events = POLLIN};
      slot[n++] = i;
    }
    if (poll(p, n, -1) < 0) {
      if (errno == EINTR) continue;
      log_error("EVS-3032", "waiting for requests failed", NULL, errno);
      rc = 1;
      break;
    }
    for (nfds_t k = 0; k < n; k++) {
      conn *c = &s.conns[slot[k]];
      /* A slot closed (and perhaps refilled by an ATTACH) during this round: its new
       * connection is polled next round; a read of it now would only find EAGAIN. */
      if (!p[k].revents || c->fd != p[k].fd) continue;
      if (conn_serve(&s, c) < 0) conn_drop(&s, c);
    }
  }
  for (int i = 0; i < MAX_CONNS; i++)
    if (s.conns[i].fd >= 0) conn_drop(&s, &s.conns[i]);
  evs__ep_buf_done(&s.out);
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
  /* _exit, not return: every secret is wiped by now, and exit-time handlers have nothing left
   * to do but what the sandbox refuses (LeakSanitizer's check needs ptrace, and the worker's
   * ASAN_OPTIONS, which the enclave inherits, may ask for it). */
  _exit(rc);
}
