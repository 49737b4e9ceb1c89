/*
 * cmd_cage.c: `evctl cage`, the local half of the Cages workflow (docs/cages.md,
 * docs/evctl.md), which needs no server:
 *
 *   cage init --name N [--app A] [-f Dockerfile] [-o DIR] [--debug] [--egress]
 *             [--egress-ports P,..] [--egress-destinations D,..] [--disable-api-key-auth]
 *             [--signing-cert C --private-key K | --generate-signing] [--force]
 *   cage build [CONTEXT] [-c cage.toml] [-f Dockerfile] [-o DIR] [--signing-cert C
 *             --private-key K] [--build-arg K=V].. [--kernel-dir D] [--init PATH]
 *   cage describe [EIF_PATH]
 *   cage cert new [-o DIR] [--subj /CN=..] [--force]
 *
 * build runs an OCI builder (buildah, else podman) on the Dockerfile, exports the image's root
 * filesystem and config, and writes enclave.eif (plugins/cage-broker/eif.h): the kernel and
 * modules of a kernel directory (scripts/cage-kernel), a bootstrap ramdisk with evs-cage-init
 * as /init, and the application ramdisk (/rootfs and /cage.json). The PCRs go back into
 * cage.toml's [attestation]. `cage attest` and the server-side subcommands live in
 * cmd_cage_attest.c and cmd_cage_remote.c; this file only routes to them.
 */
#include "evctl.h"
#include "evs_app_id.h"
#include "fn_toml.h"

#include "cpio.h"
#include "eif.h"

#include <ctype.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define DEFAULT_KERNEL_DIR "/var/cache/evserver/cage-kernel"
#ifndef EVS_CAGE_INIT_INSTALL_PATH
#define EVS_CAGE_INIT_INSTALL_PATH "/usr/local/libexec/evserver/evs-cage-init"
#endif
#ifndef EVS_CAGE_INIT_BUILD_PATH
#define EVS_CAGE_INIT_BUILD_PATH ""
#endif
/* Fixed by the builder and measured (PCR0, PCR1). The serial console carries the kernel's own
 * messages; rdinit names the bootstrap's /init. */
#define CAGE_CMDLINE "reboot=k panic=30 console=ttyS0 quiet random.trust_cpu=on rdinit=/init"
#define DEFAULT_PORT 8008
#define SMALL_FILE_MAX (1u << 20)     /* Dockerfiles, keys, certificates, configs */
#define INIT_MAX (64u << 20)          /* evs-cage-init */
#define KERNEL_MAX (256u << 20)       /* vmlinuz and each module */
#define CAGE_SUBJ_DEFAULT "/CN=evserver Cage signing/O=evserver"

const evctl_ctx *evctl_cage_ctx;

/* ---- files -------------------------------------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t max, size_t *ret_len, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
    snprintf(err, errlen, "%s: %s", path, S_ISREG(st.st_mode) ? "too large" : "not a file");
    close(fd);
    return NULL;
  }
  size_t len = (size_t)st.st_size, got = 0;
  uint8_t *buf = malloc(len + 1);
  while (buf && got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  if (!buf || got != len) {
    free(buf);
    snprintf(err, errlen, "%s: %s", path, buf ? "read error" : "out of memory");
    return NULL;
  }
  buf[len] = 0;
  *ret_len = len;
  return buf;
}

/* Writes data to path through path.tmp and a rename. */
static int write_atomic(const char *path, const void *data, size_t len, mode_t mode) {
  char tmp[4200];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return -1;
  const uint8_t *p = data;
  size_t left = len;
  while (left) {
    ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno ? errno : EIO;
      close(fd);
      unlink(tmp);
      errno = e;
      return -1;
    }
    p += w;
    left -= (size_t)w;
  }
  if (fchmod(fd, mode) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
    return -1;
  }
  return 0;
}

/* "~/x" with $HOME; anything else as it is. Returns a string to free. */
static char *expand_home(const char *p) {
  if (p[0] == '~' && (p[1] == '/' || !p[1])) {
    const char *home = getenv("HOME");
    if (!home || !*home) {
      struct passwd *pw = getpwuid(getuid());
      home = pw ? pw->pw_dir : "/";
    }
    size_t n = strlen(home) + strlen(p);
    char *r = malloc(n);
    if (r) snprintf(r, n, "%s%s", home, p + 1);
    return r;
  }
  return strdup(p);
}

static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *r = malloc(n);
  if (r) snprintf(r, n, "%s%s%s", dir, *dir && dir[strlen(dir) - 1] == '/' ? "" : "/", name);
  return r;
}

static int mkdir_p(const char *path) {
  char buf[4096];
  if (strlen(path) >= sizeof buf) return -1;
  strcpy(buf, path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  return mkdir(buf, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(p) < 0 && errno != ENOENT ? -1 : 0;
}

static void rm_rf(const char *dir) {
  nftw(dir, rm_one, 32, FTW_DEPTH | FTW_PHYS);
}

/* TOML basic string with the escapes our reader takes. */
static void toml_quote(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

/* ---- cage.toml ---------------------------------------------------------------------------- */

/* Reads cage.toml: 0 and *ret_root ({"": top-level keys, "egress": {...}, ...}), or -1
 * (reported). */
static int load_cage_toml(const char *cmd, const char *path, json_t **ret_root) {
  char err[600];
  size_t len;
  char *text = (char *)slurp(path, EVCTL_TOML_MAX, &len, err, sizeof err);
  if (!text) {
    fprintf(stderr, "evctl: %s: %s (run `evctl cage init` first, or pass -c)\n", cmd, err);
    return -1;
  }
  json_t *root = NULL;
  int rc = evctl_toml_parse(text, len, &root, err, sizeof err);
  free(text);
  if (rc < 0) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, path, err);
    return -1;
  }
  *ret_root = root;
  return 0;
}

static json_t *toml_get(json_t *root, const char *table, const char *key) {
  return json_object_get(json_object_get(root, table), key);
}

static int toml_bool(json_t *root, const char *table, const char *key, int dflt, int *ret,
                     const char *cmd, const char *path) {
  json_t *v = toml_get(root, table, key);
  if (!v) {
    *ret = dflt;
    return 0;
  }
  if (!json_is_boolean(v)) {
    fprintf(stderr, "evctl: %s: %s: %s%s%s must be true or false\n", cmd, path, table,
            *table ? "." : "", key);
    return -1;
  }
  *ret = json_is_true(v);
  return 0;
}

/* A cage name is a DNS label: it becomes <name>.<app>.<cages domain>. */
static int valid_cage_name(const char *n) {
  size_t len = strlen(n);
  if (len < 1 || len > 63 || n[0] == '-' || n[len - 1] == '-') return 0;
  for (const char *p = n; *p; p++)
    if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '-')) return 0;
  return 1;
}

static int valid_port_text(const char *s, long *ret) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (!*s || *end || errno || v < 1 || v > 65535) return 0;
  if (ret) *ret = v;
  return 1;
}

/* A destination as the Outbound Relay's syntax takes it: a host name, "*.suffix" or "*". */
static int valid_destination(const char *s) {
  if (strcmp(s, "*") == 0) return 1;
  if (strncmp(s, "*.", 2) == 0) s += 2;
  size_t n = strlen(s);
  if (n < 1 || n > 253) return 0;
  for (const char *p = s; *p; p++)
    if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '.')) return 0;
  return s[0] != '.' && s[n - 1] != '.' && !strstr(s, "..");
}

/* Writes one TOML array of strings from a comma-separated list. */
static void toml_list(FILE *f, const char *csv) {
  fputc('[', f);
  int first = 1;
  const char *p = csv;
  while (*p) {
    size_t n = strcspn(p, ",");
    char item[256];
    size_t a = 0, b = n;
    while (a < b && isspace((unsigned char)p[a])) a++;
    while (b > a && isspace((unsigned char)p[b - 1])) b--;
    if (b > a && b - a < sizeof item) {
      memcpy(item, p + a, b - a);
      item[b - a] = 0;
      fputs(first ? "" : ", ", f);
      toml_quote(f, item);
      first = 0;
    }
    p += n;
    p += *p == ',';
  }
  fputc(']', f);
}

static int check_csv(const char *cmd, const char *what, const char *csv, int ports) {
  const char *p = csv;
  int count = 0;
  while (*p) {
    size_t n = strcspn(p, ",");
    char item[256];
    size_t a = 0, b = n;
    while (a < b && isspace((unsigned char)p[a])) a++;
    while (b > a && isspace((unsigned char)p[b - 1])) b--;
    if (b - a >= sizeof item) return evctl_usage_error(cmd, "%s: %s: item too long", cmd, what);
    memcpy(item, p + a, b - a);
    item[b - a] = 0;
    if (!*item || (ports ? !valid_port_text(item, NULL) : !valid_destination(item)))
      return evctl_usage_error(cmd, "%s: %s: '%s' is not a %s", cmd, what, item,
                               ports ? "port (1-65535)" : "domain, *.domain or *");
    count++;
    p += n;
    p += *p == ',';
  }
  if (!count) return evctl_usage_error(cmd, "%s: %s is empty", cmd, what);
  return 0;
}

/* ---- signing certificates ----------------------------------------------------------------- */

/* A P-384 key (as Nitro's signing uses) and a self-signed certificate for subj
 * ("/CN=x/O=y"), valid for days. Written as cert.pem (0644) and key.pem (0600) in dir. */
static int make_signing_cert(const char *dir, const char *subj, int days, int force,
                             char *err, size_t errlen) {
  int rc = -1;
  EVP_PKEY *key = EVP_EC_gen("P-384");
  X509 *x = X509_new();
  X509_NAME *nm = X509_NAME_new();
  BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
  char *cert_path = path_join(dir, "cert.pem"), *key_path = path_join(dir, "key.pem");
  if (!key || !x || !nm || !cb || !kb || !cert_path || !key_path) {
    snprintf(err, errlen, "cannot make a key (OpenSSL)");
    goto out;
  }
  if (!force && (access(cert_path, F_OK) == 0 || access(key_path, F_OK) == 0)) {
    snprintf(err, errlen, "%s or %s already exists (--force overwrites)", cert_path, key_path);
    goto out;
  }
  /* "/K=V/K=V", as openssl req -subj takes it. */
  if (subj[0] != '/') {
    snprintf(err, errlen, "--subj must look like /CN=name/O=org");
    goto out;
  }
  char buf[1024];
  if (strlen(subj) >= sizeof buf) {
    snprintf(err, errlen, "--subj is too long");
    goto out;
  }
  strcpy(buf, subj + 1);
  for (char *save = NULL, *part = strtok_r(buf, "/", &save); part;
       part = strtok_r(NULL, "/", &save)) {
    char *eq = strchr(part, '=');
    if (!eq || eq == part || !eq[1]) {
      snprintf(err, errlen, "--subj: '%s' is not KEY=VALUE", part);
      goto out;
    }
    *eq = 0;
    if (!X509_NAME_add_entry_by_txt(nm, part, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1,
                                    0)) {
      snprintf(err, errlen, "--subj: unknown attribute '%s'", part);
      goto out;
    }
  }
  if (X509_NAME_entry_count(nm) == 0) {
    snprintf(err, errlen, "--subj names nothing");
    goto out;
  }
  uint8_t serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
  X509_set_version(x, 2);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400);
  X509_set_subject_name(x, nm);
  X509_set_issuer_name(x, nm);
  X509_set_pubkey(x, key);
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,digitalSignature");
  if (ext) {
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (!X509_sign(x, key, EVP_sha384()) || !PEM_write_bio_X509(cb, x) ||
      !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL)) {
    snprintf(err, errlen, "cannot sign the certificate (OpenSSL)");
    goto out;
  }
  char *p;
  long n;
  if (mkdir_p(dir) < 0) {
    snprintf(err, errlen, "%s: %s", dir, strerror(errno));
    goto out;
  }
  n = BIO_get_mem_data(kb, &p);
  if (write_atomic(key_path, p, (size_t)n, 0600) < 0) {
    snprintf(err, errlen, "%s: %s", key_path, strerror(errno));
    goto out;
  }
  n = BIO_get_mem_data(cb, &p);
  if (write_atomic(cert_path, p, (size_t)n, 0644) < 0) {
    snprintf(err, errlen, "%s: %s", cert_path, strerror(errno));
    goto out;
  }
  rc = 0;
out:
  BIO_free(cb);
  if (kb) { /* a memory BIO is not wiped by BIO_free: clear the key's text first */
    char *kp;
    long kn = BIO_get_mem_data(kb, &kp);
    if (kn > 0) OPENSSL_cleanse(kp, (size_t)kn);
  }
  BIO_free(kb);
  X509_NAME_free(nm);
  X509_free(x);
  EVP_PKEY_free(key);
  free(cert_path);
  free(key_path);
  return rc;
}

int evctl_cmd_cage_cert_new(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "cage cert new";
  evctl_opt o[] = {EVCTL_OPT_S("output", 'o'), EVCTL_OPT("subj"), EVCTL_FLAG("force"),
                   EVCTL_OPT("days")};
  if (evctl_parse_opts(cmd, argc, argv, o, 4, NULL, 0, 0, NULL)) return EVCTL_EXIT_USAGE;
  const char *dir = o[0].set ? o[0].value : ".";
  long days = 365;
  if (o[3].set && (!valid_port_text(o[3].value, &days) || days > 3650))
    return evctl_usage_error(cmd, "%s: --days must be 1 to 3650", cmd);
  char err[600];
  if (make_signing_cert(dir, o[1].set ? o[1].value : CAGE_SUBJ_DEFAULT, (int)days, o[2].set, err,
                        sizeof err) < 0) {
    fprintf(stderr, "evctl: %s: %s\n", cmd, err);
    return EVCTL_EXIT_ERROR;
  }
  char *c = path_join(dir, "cert.pem"), *k = path_join(dir, "key.pem");
  if (ctx->json) {
    json_t *j = json_pack("{s:s,s:s}", "certPath", c, "keyPath", k);
    evctl_print_json(j);
    json_decref(j);
  } else {
    printf("Signing certificate: %s\nPrivate key (keep it secret): %s\n", c, k);
  }
  free(c);
  free(k);
  return EVCTL_EXIT_OK;
}

/* ---- init --------------------------------------------------------------------------------- */

int evctl_cmd_cage_init(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "cage init";
  enum { NAME, APP, FILE_, OUT, DEBUG, EGRESS, EPORTS, EDEST, NOAUTH, GENSIGN, KEY, CERT,
         VERBOSE, FORCE, NOPT };
  evctl_opt o[NOPT] = {
      [NAME] = EVCTL_OPT("name"),
      [APP] = EVCTL_OPT("app"),
      [FILE_] = EVCTL_OPT_S("file", 'f'),
      [OUT] = EVCTL_OPT_S("output", 'o'),
      [DEBUG] = EVCTL_FLAG("debug"),
      [EGRESS] = EVCTL_FLAG("egress"),
      [EPORTS] = EVCTL_OPT("egress-ports"),
      [EDEST] = EVCTL_OPT("egress-destinations"),
      [NOAUTH] = EVCTL_FLAG("disable-api-key-auth"),
      [GENSIGN] = EVCTL_FLAG("generate-signing"),
      [KEY] = EVCTL_OPT("private-key"),
      [CERT] = EVCTL_OPT("signing-cert"),
      [VERBOSE] = EVCTL_FLAG_S("verbose", 'v'),
      [FORCE] = EVCTL_FLAG("force"),
  };
  if (evctl_parse_opts(cmd, argc, argv, o, NOPT, NULL, 0, 0, NULL)) return EVCTL_EXIT_USAGE;
  if (!o[NAME].set) return evctl_usage_error(cmd, "%s: --name is required", cmd);
  if (!valid_cage_name(o[NAME].value))
    return evctl_usage_error(cmd, "%s: '%s' is not a cage name (a DNS label: a-z, 0-9 and '-', "
                             "1 to 63 characters, no '-' at either end)", cmd, o[NAME].value);
  const char *app = o[APP].set ? o[APP].value : getenv("EV_APP_ID");
  if (!app || !*app)
    return evctl_usage_error(cmd, "%s: which app? Pass --app <appId> or set EV_APP_ID", cmd);
  if (!evs_app_id_valid(app, strlen(app)))
    return evctl_usage_error(cmd, "%s: '%s' is not an app id (app_ and 12 hex digits)", cmd, app);
  if (o[EPORTS].set && check_csv(cmd, "--egress-ports", o[EPORTS].value, 1))
    return EVCTL_EXIT_USAGE;
  if (o[EDEST].set && check_csv(cmd, "--egress-destinations", o[EDEST].value, 0))
    return EVCTL_EXIT_USAGE;
  if (o[KEY].set != o[CERT].set)
    return evctl_usage_error(cmd, "%s: --signing-cert and --private-key go together", cmd);
  if (o[GENSIGN].set && o[KEY].set)
    return evctl_usage_error(cmd, "%s: --generate-signing or --signing-cert, not both", cmd);

  const char *dir = o[OUT].set ? o[OUT].value : ".";
  char *toml_path = path_join(dir, "cage.toml");
  if (!toml_path) return EVCTL_EXIT_ERROR;
  if (!o[FORCE].set && access(toml_path, F_OK) == 0) {
    fprintf(stderr, "evctl: %s: %s already exists (--force overwrites)\n", cmd, toml_path);
    free(toml_path);
    return EVCTL_EXIT_ERROR;
  }
  const char *cert_path = o[CERT].value, *key_path = o[KEY].value;
  if (o[GENSIGN].set) {
    /* The default certificate, made once per user and shared by their cages. */
    char *d = expand_home("~/.ev/cages"), err[600];
    char *c = d ? path_join(d, "cert.pem") : NULL, *k = d ? path_join(d, "key.pem") : NULL;
    int have = c && k && access(c, R_OK) == 0 && access(k, R_OK) == 0;
    int rc = have || !d ? 0 : make_signing_cert(d, CAGE_SUBJ_DEFAULT, 365, 0, err, sizeof err);
    free(d);
    free(c);
    free(k);
    if (rc < 0 || !d) {
      fprintf(stderr, "evctl: %s: %s\n", cmd, !d ? "out of memory" : err);
      free(toml_path);
      return EVCTL_EXIT_ERROR;
    }
    cert_path = "~/.ev/cages/cert.pem";
    key_path = "~/.ev/cages/key.pem";
  }

  uint8_t rnd[6];
  char uuid[32];
  if (RAND_bytes(rnd, sizeof rnd) != 1) {
    fprintf(stderr, "evctl: %s: no randomness for the cage id\n", cmd);
    free(toml_path);
    return EVCTL_EXIT_ERROR;
  }
  snprintf(uuid, sizeof uuid, "cage_%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3],
           rnd[4], rnd[5]);

  char *text = NULL;
  size_t tlen = 0;
  FILE *f = open_memstream(&text, &tlen);
  if (!f) {
    free(toml_path);
    return EVCTL_EXIT_ERROR;
  }
  fputs("# The name of your Cage\nname = ", f);
  toml_quote(f, o[NAME].value);
  fputs("\n# The ID of your Cage\nuuid = ", f);
  toml_quote(f, uuid);
  fputs("\n# The ID of the Evervault App which is hosting the Cage\napp_uuid = ", f);
  toml_quote(f, app);
  fputs("\n# The ID of the Evervault Team which owns the App (evserver has no teams)\n"
        "team_uuid = \"\"\n"
        "# Whether `debug` mode should be enabled.\n# Logs are only available in `debug` mode.\n",
        f);
  fprintf(f, "debug = %s\n", o[DEBUG].set ? "true" : "false");
  fprintf(f, "# Whether api key auth is enabled for the Cage\napi_key_auth = %s\n",
          o[NOAUTH].set ? "false" : "true");
  fputs("# Whether transaction logging is enabled for the Cage.\n"
        "# Note: Requires TLS Termination to be enabled\ntrx_logging = true\n"
        "# Turn off TLS Termination with certs signed by Evervault Root CA.\n"
        "# Note: you will have to handle TLS termination within your process.\n"
        "disable_tls_termination = false\n"
        "# The path to your Cage's `Dockerfile`\ndockerfile = ",
        f);
  toml_quote(f, o[FILE_].set ? o[FILE_].value : "Dockerfile");
  fputs("\n# Whether or not to enable outbound network requests from your Cage\n"
        "# If enabled, the networking layer will be bundled at build time\n[egress]\n",
        f);
  fprintf(f, "enabled = %s\ndestinations = ", o[EGRESS].set ? "true" : "false");
  toml_list(f, o[EDEST].set ? o[EDEST].value : "*");
  fputs("\nports = ", f);
  toml_list(f, o[EPORTS].set ? o[EPORTS].value : "443");
  fputc('\n', f);
  if (cert_path) {
    fputs("# The path to the signing key and certificate for your Cage\n[signing]\ncertPath = ",
          f);
    toml_quote(f, cert_path);
    fputs("\nkeyPath = ", f);
    toml_quote(f, key_path);
    fputc('\n', f);
  }
  fclose(f);
  int rc = EVCTL_EXIT_OK;
  if ((o[OUT].set && mkdir_p(dir) < 0) || write_atomic(toml_path, text, tlen, 0644) < 0) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, toml_path, strerror(errno));
    rc = EVCTL_EXIT_ERROR;
  } else if (ctx->json) {
    json_t *j = json_pack("{s:s,s:s,s:s,s:s}", "name", o[NAME].value, "uuid", uuid, "app_uuid",
                          app, "config", toml_path);
    evctl_print_json(j);
    json_decref(j);
  } else {
    printf("Wrote %s for cage '%s' (%s). Build it with:\n  evctl cage build --output %s\n",
           toml_path, o[NAME].value, uuid, dir);
  }
  free(text);
  free(toml_path);
  return rc;
}

/* ---- running the builder ------------------------------------------------------------------ */

/* Runs argv; its stdout goes to out_fd (or is captured into *ret_out when ret_out is set), its
 * stderr to ours. Returns the exit status, or -1 if it could not run. */
static int run(char *const argv[], int out_fd, char **ret_out, size_t *ret_len) {
  int pfd[2] = {-1, -1};
  if (ret_out && pipe2(pfd, O_CLOEXEC) < 0) return -1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = ret_out ? pfd[1] : out_fd;
    if (fd >= 0 && fd != 1) dup2(fd, 1);
    execvp(argv[0], argv);
    _exit(127);
  }
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (ret_out) {
    close(pfd[1]);
    for (;;) {
      if (len + 4096 > cap) {
        cap = cap ? 2 * cap : 65536;
        char *nb = cap <= (64u << 20) ? realloc(buf, cap + 1) : NULL;
        if (!nb) break;
        buf = nb;
      }
      ssize_t r = read(pfd[0], buf + len, cap - len);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      len += (size_t)r;
    }
    close(pfd[0]);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (ret_out) {
    if (buf) buf[len] = 0;
    *ret_out = buf;
    *ret_len = len;
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st) == 127 ? -1 : WEXITSTATUS(st);
  return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Runs argv with its output thrown away; returns its exit status, or -1. */
static int run_quiet(char *const argv[]) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int on_path(const char *prog) {
  const char *path = getenv("PATH");
  if (strchr(prog, '/')) return access(prog, X_OK) == 0;
  if (!path) path = "/usr/bin:/bin";
  while (*path) {
    size_t n = strcspn(path, ":");
    char p[4096];
    snprintf(p, sizeof p, "%.*s/%s", (int)n, path, prog);
    if (access(p, X_OK) == 0) return 1;
    path += n;
    path += *path == ':';
  }
  return 0;
}

/* ---- the image config --------------------------------------------------------------------- */

/* The first EXPOSE of the Dockerfile's last stage (a number), or 0. */
static long dockerfile_port(const char *text) {
  long port = 0;
  const char *p = text;
  while (*p) {
    const char *line = p;
    size_t n = strcspn(p, "\n");
    p += n;
    p += *p == '\n';
    while (*line == ' ' || *line == '\t') line++;
    if (strncasecmp(line, "FROM", 4) == 0 && isspace((unsigned char)line[4])) port = 0;
    if (port || strncasecmp(line, "EXPOSE", 6) != 0 || !isspace((unsigned char)line[6]))
      continue;
    const char *v = line + 6;
    while (*v == ' ' || *v == '\t') v++;
    char word[32];
    size_t w = strcspn(v, " \t\r\n/\\");
    if (w == 0 || w >= sizeof word) continue;
    memcpy(word, v, w);
    word[w] = 0;
    long x;
    if (valid_port_text(word, &x)) port = x;
    else port = -1; /* a variable or a range: leave it to the image config */
  }
  return port > 0 ? port : 0;
}

/* The lowest port of the config's ExposedPorts ("8080/tcp"), or 0. */
static long config_port(json_t *cfg) {
  long best = 0;
  const char *k;
  json_t *v;
  json_object_foreach(json_object_get(cfg, "ExposedPorts"), k, v) {
    char word[16];
    size_t n = strcspn(k, "/");
    if (n == 0 || n >= sizeof word) continue;
    memcpy(word, k, n);
    word[n] = 0;
    long x;
    if (valid_port_text(word, &x) && (!best || x < best)) best = x;
  }
  return best;
}

/* Looks name up in a passwd- or group-format file of the rootfs: 0 with the id (and the
 * primary group, for passwd), or -1. */
static int lookup_id(const char *rootfs, const char *file, const char *name, long *ret_id,
                     long *ret_gid) {
  char *path = path_join(rootfs, file), err[64];
  size_t len;
  char *text = path ? (char *)slurp(path, SMALL_FILE_MAX, &len, err, sizeof err) : NULL;
  free(path);
  if (!text) return -1;
  int rc = -1;
  for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    char *f[4] = {0};
    int nf = 0;
    for (char *p = line; nf < 4; nf++) {
      f[nf] = p;
      p = strchr(p, ':');
      if (!p) {
        nf++;
        break;
      }
      *p++ = 0;
    }
    if (nf >= 3 && strcmp(f[0], name) == 0) {
      char *end;
      long id = strtol(f[2], &end, 10);
      if (*end || id < 0) break;
      *ret_id = id;
      if (ret_gid) {
        long g = nf >= 4 ? strtol(f[3], &end, 10) : 0;
        *ret_gid = nf >= 4 && !*end && g >= 0 ? g : 0;
      }
      rc = 0;
      break;
    }
  }
  free(text);
  return rc;
}

static int is_number(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!isdigit((unsigned char)*s)) return 0;
  return 1;
}

/* The image's USER ("", "1000", "node", "1000:1000", "node:staff") as "uid:gid". */
static int resolve_user(const char *rootfs, const char *user, char *out, size_t cap,
                        char *err, size_t errlen) {
  if (!user || !*user) {
    snprintf(out, cap, "0:0");
    return 0;
  }
  char u[256], g[256] = "";
  size_t n = strcspn(user, ":");
  if (n >= sizeof u || strlen(user + n) >= sizeof g) {
    snprintf(err, errlen, "the image's USER is too long");
    return -1;
  }
  memcpy(u, user, n);
  u[n] = 0;
  if (user[n] == ':') strcpy(g, user + n + 1);
  long uid = -1, gid = -1, pgid = 0;
  if (is_number(u)) {
    uid = strtol(u, NULL, 10);
    /* Docker: a numeric user without a group takes its passwd entry's group, else 0. */
    char *path = path_join(rootfs, "etc/passwd"), e2[64];
    size_t len;
    char *text = path ? (char *)slurp(path, SMALL_FILE_MAX, &len, e2, sizeof e2) : NULL;
    free(path);
    for (char *save = NULL, *line = text ? strtok_r(text, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save)) {
      char *f1 = strchr(line, ':'), *f2 = f1 ? strchr(f1 + 1, ':') : NULL;
      char *f3 = f2 ? strchr(f2 + 1, ':') : NULL;
      if (f2 && f3 && strtol(f2 + 1, NULL, 10) == uid) {
        pgid = strtol(f3 + 1, NULL, 10);
        break;
      }
    }
    free(text);
  } else if (lookup_id(rootfs, "etc/passwd", u, &uid, &pgid) < 0) {
    snprintf(err, errlen, "the image's USER '%s' is not in its /etc/passwd", u);
    return -1;
  }
  if (!*g) gid = pgid;
  else if (is_number(g)) gid = strtol(g, NULL, 10);
  else if (lookup_id(rootfs, "etc/group", g, &gid, NULL) < 0) {
    snprintf(err, errlen, "the image's USER group '%s' is not in its /etc/group", g);
    return -1;
  }
  snprintf(out, cap, "%ld:%ld", uid, gid);
  return 0;
}

/* ---- build -------------------------------------------------------------------------------- */

typedef struct build_state {
  const char *cmd;
  char tmp[256];
  char *kernel_dir;
  uint8_t *kernel, *init, *boot_gz, *app_gz, *cert, *key;
  size_t kernel_len, init_len, boot_len, app_len, cert_len, key_len;
  json_t *toml, *inspect;
  char *cage_json, *metadata;
} build_state;

static void build_done(build_state *b) {
  if (b->tmp[0]) rm_rf(b->tmp);
  free(b->kernel_dir);
  free(b->kernel);
  free(b->init);
  free(b->boot_gz);
  free(b->app_gz);
  free(b->cert);
  if (b->key) OPENSSL_cleanse(b->key, b->key_len);
  free(b->key);
  json_decref(b->toml);
  json_decref(b->inspect);
  free(b->cage_json);
  free(b->metadata);
}

/* Whether an ELF file has no program interpreter (a static binary, as /init must be). */
static int elf_static(const uint8_t *p, size_t n) {
  if (n < sizeof(Elf64_Ehdr) || memcmp(p, ELFMAG, SELFMAG) != 0 || p[EI_CLASS] != ELFCLASS64)
    return 0;
  const Elf64_Ehdr *eh = (const Elf64_Ehdr *)p;
  if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phoff > n ||
      (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > n - eh->e_phoff)
    return 0;
  for (unsigned i = 0; i < eh->e_phnum; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, p + eh->e_phoff + i * sizeof ph, sizeof ph);
    if (ph.p_type == PT_INTERP) return 0;
  }
  return 1;
}

/* The bootstrap ramdisk: /init and the kernel directory's modules. */
static int make_bootstrap(build_state *b, const char *init_path, char *err, size_t errlen) {
  b->init = slurp(init_path, INIT_MAX, &b->init_len, err, errlen);
  if (!b->init) return -1;
  if (!elf_static(b->init, b->init_len)) {
    snprintf(err, errlen, "%s is not a static x86-64 ELF binary (the cage's /init must be)",
             init_path);
    return -1;
  }
  char *order_path = path_join(b->kernel_dir, "modules/order");
  size_t olen;
  char *order = order_path ? (char *)slurp(order_path, SMALL_FILE_MAX, &olen, err, errlen) : NULL;
  free(order_path);
  if (!order) return -1;
  cpio_builder *c = cpio_new();
  int rc = c ? 0 : -ENOMEM, reported = 0;
  const char *dirs[] = {"dev", "lib", "lib/modules", "lib/modules/evs", "proc", "run", "sys",
                        "tmp"};
  for (size_t i = 0; rc == 0 && i < sizeof dirs / sizeof dirs[0]; i++)
    rc = cpio_add_dir(c, dirs[i], strcmp(dirs[i], "tmp") == 0 ? 01777 : 0755);
  /* The kernel opens /dev/console for init's stdio before anything is mounted. */
  if (rc == 0) rc = cpio_add_node(c, "dev/console", S_IFCHR | 0600, 5, 1);
  if (rc == 0) rc = cpio_add_file(c, "init", 0755, b->init, b->init_len);
  if (rc == 0) rc = cpio_add_file(c, "lib/modules/evs/order", 0644, (uint8_t *)order, olen);
  for (char *save = NULL, *m = rc == 0 ? strtok_r(order, "\n", &save) : NULL; m && rc == 0;
       m = strtok_r(NULL, "\n", &save)) {
    if (!*m) continue;
    if (strchr(m, '/') || m[0] == '.') {
      snprintf(err, errlen, "%s/modules/order: bad module file name '%s'", b->kernel_dir, m);
      rc = -EINVAL, reported = 1;
      break;
    }
    char rel[300], *disk;
    snprintf(rel, sizeof rel, "modules/%s", m);
    disk = path_join(b->kernel_dir, rel);
    if (!disk || access(disk, R_OK) != 0) {
      snprintf(err, errlen, "%s/%s: %s", b->kernel_dir, rel, strerror(errno));
      free(disk);
      rc = -ENOENT, reported = 1;
      break;
    }
    snprintf(rel, sizeof rel, "lib/modules/evs/%s", m);
    rc = cpio_add_disk_file(c, rel, 0644, disk);
    free(disk);
  }
  free(order);
  const char *why = "out of memory";
  if (rc == 0) rc = cpio_write_gz(c, &b->boot_gz, &b->boot_len, &why);
  if (rc < 0 && !reported) snprintf(err, errlen, "the bootstrap ramdisk: %s", why);
  cpio_free(c);
  return rc < 0 ? -1 : 0;
}

static json_t *str_array(json_t *v) {
  return json_is_array(v) ? json_incref(v) : json_array();
}

/* /cage.json (docs/cages.md): cage.toml's settings and the image's config, measured in PCR2. */
static int make_cage_json(build_state *b, json_t *cfg, const char *rootfs, long port,
                          char *err, size_t errlen) {
  json_t *top = json_object_get(b->toml, "");
  int debug, auth, trx, notls, egress;
  if (toml_bool(b->toml, "", "debug", 0, &debug, b->cmd, "cage.toml") ||
      toml_bool(b->toml, "", "api_key_auth", 1, &auth, b->cmd, "cage.toml") ||
      toml_bool(b->toml, "", "trx_logging", 1, &trx, b->cmd, "cage.toml") ||
      toml_bool(b->toml, "", "disable_tls_termination", 0, &notls, b->cmd, "cage.toml") ||
      toml_bool(b->toml, "egress", "enabled", 0, &egress, b->cmd, "cage.toml")) {
    snprintf(err, errlen, "cage.toml has a bad setting (above)");
    return -1;
  }
  json_t *dest = json_array(), *ports = json_array();
  json_t *d = toml_get(b->toml, "egress", "destinations");
  json_t *p = toml_get(b->toml, "egress", "ports");
  size_t i;
  json_t *x;
  if (d && !json_is_array(d)) goto bad_egress;
  json_array_foreach(d, i, x) {
    if (!valid_destination(json_string_value(x))) goto bad_egress;
    json_array_append(dest, x);
  }
  if (!json_array_size(dest)) json_array_append_new(dest, json_string("*"));
  if (p && !json_is_array(p)) goto bad_egress;
  json_array_foreach(p, i, x) {
    long v;
    if (!valid_port_text(json_string_value(x), &v)) goto bad_egress;
    json_array_append_new(ports, json_integer(v));
  }
  if (!json_array_size(ports)) json_array_append_new(ports, json_integer(443));
  if (port == 9999 || (egress && (port == 53 || port == 443))) {
    snprintf(err, errlen, "the app's port %ld is reserved in a cage (9999: the Encryption API%s)",
             port, egress ? "; 53 and 443: egress" : "");
    json_decref(dest);
    json_decref(ports);
    return -1;
  }
  char user[64];
  if (resolve_user(rootfs, json_string_value(json_object_get(cfg, "User")), user, sizeof user,
                   err, errlen) < 0) {
    json_decref(dest);
    json_decref(ports);
    return -1;
  }
  const char *wd = json_string_value(json_object_get(cfg, "WorkingDir"));
  json_t *cj = json_pack(
      "{s:i,s:s,s:s,s:s,s:b,s:b,s:b,s:b,s:{s:b,s:o,s:o},s:o,s:o,s:o,s:s,s:s,s:i}", "version", 1,
      "name", json_string_value(json_object_get(top, "name")), "uuid",
      json_string_value(json_object_get(top, "uuid")), "app_uuid",
      json_string_value(json_object_get(top, "app_uuid")), "debug", debug, "api_key_auth", auth,
      "trx_logging", trx, "disable_tls_termination", notls, "egress", "enabled", egress,
      "destinations", dest, "ports", ports, "entrypoint",
      str_array(json_object_get(cfg, "Entrypoint")), "cmd", str_array(json_object_get(cfg, "Cmd")),
      "env", str_array(json_object_get(cfg, "Env")), "workdir", wd && *wd ? wd : "/", "user", user,
      "port", (json_int_t)port);
  if (!cj) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  b->cage_json = json_dumps(cj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(cj);
  return b->cage_json ? 0 : -1;
bad_egress:
  snprintf(err, errlen, "cage.toml: [egress] destinations must be domains and ports numbers, "
           "as lists of strings (ports = [\"443\"])");
  json_decref(dest);
  json_decref(ports);
  return -1;
}

/* Rewrites cage.toml with a fresh [attestation] table at its end, the rest kept as it was. */
static int write_attestation(const char *path, const eif_pcrs *pcrs, char *err, size_t errlen) {
  size_t len;
  char *text = (char *)slurp(path, EVCTL_TOML_MAX, &len, err, errlen);
  if (!text) return -1;
  char *out = NULL;
  size_t olen = 0;
  FILE *f = open_memstream(&out, &olen);
  int skipping = 0;
  for (char *p = text; *p;) {
    size_t n = strcspn(p, "\n");
    const char *l = p;
    while (l < p + n && (*l == ' ' || *l == '\t')) l++;
    if (*l == '[') skipping = strncmp(l, "[attestation]", 13) == 0;
    if (!skipping) fwrite(p, 1, n + (p[n] == '\n'), f);
    p += n + (p[n] == '\n');
  }
  free(text);
  char h[2 * EIF_PCR_LEN + 1];
  fflush(f);
  if (olen && out[olen - 1] != '\n') fputc('\n', f);
  fputs("[attestation]\nHashAlgorithm = \"Sha384 { ... }\"\n", f);
  eif_pcr_hex(pcrs->pcr0, h);
  fprintf(f, "PCR0 = \"%s\"\n", h);
  eif_pcr_hex(pcrs->pcr1, h);
  fprintf(f, "PCR1 = \"%s\"\n", h);
  eif_pcr_hex(pcrs->pcr2, h);
  fprintf(f, "PCR2 = \"%s\"\n", h);
  if (pcrs->has_pcr8) {
    eif_pcr_hex(pcrs->pcr8, h);
    fprintf(f, "PCR8 = \"%s\"\n", h);
  }
  fclose(f);
  int rc = write_atomic(path, out, olen, 0644);
  if (rc < 0) snprintf(err, errlen, "%s: %s", path, strerror(errno));
  free(out);
  return rc;
}

static json_t *pcrs_json(const eif_pcrs *pcrs) {
  char h[2 * EIF_PCR_LEN + 1];
  json_t *j = json_object();
  json_object_set_new(j, "HashAlgorithm", json_string("Sha384 { ... }"));
  eif_pcr_hex(pcrs->pcr0, h);
  json_object_set_new(j, "PCR0", json_string(h));
  eif_pcr_hex(pcrs->pcr1, h);
  json_object_set_new(j, "PCR1", json_string(h));
  eif_pcr_hex(pcrs->pcr2, h);
  json_object_set_new(j, "PCR2", json_string(h));
  if (pcrs->has_pcr8) {
    eif_pcr_hex(pcrs->pcr8, h);
    json_object_set_new(j, "PCR8", json_string(h));
  }
  return j;
}

static void print_pcrs(const eif_pcrs *pcrs) {
  char h[2 * EIF_PCR_LEN + 1];
  printf("HashAlgorithm = \"Sha384 { ... }\"\n");
  eif_pcr_hex(pcrs->pcr0, h);
  printf("PCR0 = \"%s\"\n", h);
  eif_pcr_hex(pcrs->pcr1, h);
  printf("PCR1 = \"%s\"\n", h);
  eif_pcr_hex(pcrs->pcr2, h);
  printf("PCR2 = \"%s\"\n", h);
  if (pcrs->has_pcr8) {
    eif_pcr_hex(pcrs->pcr8, h);
    printf("PCR8 = \"%s\"\n", h);
  }
}

/* The kernel directory: --kernel-dir, $EVS_CAGE_KERNEL_DIR, then the default. */
static char *find_kernel_dir(const evctl_opt *opt) {
  const char *d = opt->set ? opt->value : getenv("EVS_CAGE_KERNEL_DIR");
  return strdup(d && *d ? d : DEFAULT_KERNEL_DIR);
}

/* evs-cage-init: --init, $EVS_CAGE_INIT, the installed one, the build tree's. */
static const char *find_init(const evctl_opt *opt) {
  if (opt->set) return opt->value;
  const char *e = getenv("EVS_CAGE_INIT");
  if (e && *e) return e;
  if (access(EVS_CAGE_INIT_INSTALL_PATH, X_OK) == 0) return EVS_CAGE_INIT_INSTALL_PATH;
  if (*EVS_CAGE_INIT_BUILD_PATH && access(EVS_CAGE_INIT_BUILD_PATH, X_OK) == 0)
    return EVS_CAGE_INIT_BUILD_PATH;
  return NULL;
}

int evctl_cmd_cage_build(const evctl_ctx *ctx, int argc, char **argv) {
  enum { CONFIG, FILE_, OUT, KEY, CERT, BARG, KDIR, INIT, VERBOSE, NOPT };
  evctl_opt o[NOPT] = {
      [CONFIG] = EVCTL_OPT_S("config", 'c'),
      [FILE_] = EVCTL_OPT_S("file", 'f'),
      [OUT] = EVCTL_OPT_S("output", 'o'),
      [KEY] = EVCTL_OPT("private-key"),
      [CERT] = EVCTL_OPT("signing-cert"),
      [BARG] = EVCTL_OPT("build-arg"),
      [KDIR] = EVCTL_OPT("kernel-dir"),
      [INIT] = EVCTL_OPT("init"),
      [VERBOSE] = EVCTL_FLAG_S("verbose", 'v'),
  };
  build_state b = {.cmd = "cage build"};
  const char *cmd = b.cmd, *pos[1] = {0};
  int npos = 0;
  if (evctl_parse_opts(cmd, argc, argv, o, NOPT, pos, 0, 1, &npos)) return EVCTL_EXIT_USAGE;
  if (o[KEY].set != o[CERT].set)
    return evctl_usage_error(cmd, "%s: --signing-cert and --private-key go together", cmd);
  for (int i = 0; i < o[BARG].set; i++)
    if (!strchr(o[BARG].v[i], '=') || o[BARG].v[i][0] == '=')
      return evctl_usage_error(cmd, "%s: --build-arg takes KEY=VALUE", cmd);
  const char *context = npos ? pos[0] : ".";
  const char *toml_path = o[CONFIG].set ? o[CONFIG].value : "./cage.toml";
  const char *outdir = o[OUT].set ? o[OUT].value : ".";
  char err[1200];
  int rc = EVCTL_EXIT_ERROR;
  char *dockerfile = NULL, *userdf = NULL, *eif_path = NULL, *inspect_out = NULL;
  char *cert_path = NULL, *key_path = NULL, *rootfs = NULL, *iidfile = NULL;
  uint8_t *df_text = NULL;
  size_t df_len = 0;

  if (load_cage_toml(cmd, toml_path, &b.toml) < 0) goto out;
  json_t *top = json_object_get(b.toml, "");
  const char *name = json_string_value(json_object_get(top, "name"));
  const char *uuid = json_string_value(json_object_get(top, "uuid"));
  const char *app = json_string_value(json_object_get(top, "app_uuid"));
  if (!name || !valid_cage_name(name) || !uuid || !*uuid || !app ||
      !evs_app_id_valid(app, strlen(app))) {
    fprintf(stderr, "evctl: %s: %s needs name (a DNS label), uuid and app_uuid (an app id)\n",
            cmd, toml_path);
    goto out;
  }
  int ignored;
  if (toml_bool(b.toml, "", "debug", 0, &ignored, cmd, toml_path) ||
      toml_bool(b.toml, "egress", "enabled", 0, &ignored, cmd, toml_path))
    goto out;

  /* Everything that can be checked before the (slow) image build. */
  const char *df = o[FILE_].set ? o[FILE_].value
                                : json_string_value(json_object_get(top, "dockerfile"));
  dockerfile = strdup(df && *df ? df : "./Dockerfile");
  if (!(df_text = slurp(dockerfile, SMALL_FILE_MAX, &df_len, err, sizeof err))) {
    fprintf(stderr, "evctl: %s: no Dockerfile: %s\n", cmd, err);
    goto out;
  }
  b.kernel_dir = find_kernel_dir(&o[KDIR]);
  char *vm = path_join(b.kernel_dir, "vmlinuz");
  b.kernel = vm ? slurp(vm, KERNEL_MAX, &b.kernel_len, err, sizeof err) : NULL;
  free(vm);
  if (!b.kernel) {
    fprintf(stderr, "evctl: %s: no cage kernel: %s\n  (make one with scripts/cage-kernel, and "
            "pass --kernel-dir or set EVS_CAGE_KERNEL_DIR if not in " DEFAULT_KERNEL_DIR ")\n",
            cmd, err);
    goto out;
  }
  const char *init = find_init(&o[INIT]);
  if (!init) {
    fprintf(stderr, "evctl: %s: no evs-cage-init (the cage's /init): pass --init PATH or set "
            "EVS_CAGE_INIT\n", cmd);
    goto out;
  }
  if (make_bootstrap(&b, init, err, sizeof err) < 0) {
    fprintf(stderr, "evctl: %s: %s\n", cmd, err);
    goto out;
  }
  /* Signing: the flags, else cage.toml's [signing]. */
  const char *c = o[CERT].value, *k = o[KEY].value;
  if (!o[CERT].set) {
    c = json_string_value(toml_get(b.toml, "signing", "certPath"));
    k = json_string_value(toml_get(b.toml, "signing", "keyPath"));
    if (!c != !k) {
      fprintf(stderr, "evctl: %s: %s: [signing] needs both certPath and keyPath\n", cmd, toml_path);
      goto out;
    }
  }
  if (c) {
    cert_path = expand_home(c);
    key_path = expand_home(k);
    if (!cert_path || !key_path ||
        !(b.cert = slurp(cert_path, SMALL_FILE_MAX, &b.cert_len, err, sizeof err)) ||
        !(b.key = slurp(key_path, SMALL_FILE_MAX, &b.key_len, err, sizeof err))) {
      fprintf(stderr, "evctl: %s: signing: %s\n", cmd, err);
      goto out;
    }
  }
  if (mkdir_p(outdir) < 0) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, outdir, strerror(errno));
    goto out;
  }
  /* The Dockerfile actually built: the user's, byte for byte (evserver's runtime is in the
   * bootstrap ramdisk and /cage.json, not in image layers). */
  userdf = path_join(outdir, "ev-user.Dockerfile");
  if (!userdf || write_atomic(userdf, df_text, df_len, 0644) < 0) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, userdf ? userdf : outdir, strerror(errno));
    goto out;
  }

  const char *builder = getenv("EVS_CAGE_BUILDER");
  if (!builder || !*builder)
    builder = on_path("buildah") ? "buildah" : on_path("podman") ? "podman" : NULL;
  if (!builder) {
    fprintf(stderr, "evctl: %s: neither buildah nor podman is installed (apt-get install "
            "buildah)\n", cmd);
    goto out;
  }
  const char *t = getenv("TMPDIR");
  snprintf(b.tmp, sizeof b.tmp, "%s/evs-cage-build-XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp(b.tmp)) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, b.tmp, strerror(errno));
    b.tmp[0] = 0;
    goto out;
  }
  rootfs = path_join(b.tmp, "rootfs");
  iidfile = path_join(b.tmp, "iid");
  char outspec[600];
  snprintf(outspec, sizeof outspec, "type=local,dest=%s", rootfs);
  /* buildah/podman as root in a container: chroot isolation needs no nested namespaces
   * ($BUILDAH_ISOLATION overrides it); the rootfs comes out as a directory. */
  const char *iso = getenv("BUILDAH_ISOLATION");
  char isolation[64];
  snprintf(isolation, sizeof isolation, "--isolation=%s", iso && *iso ? iso : "chroot");
  char *bargv[16 + 2 * EVCTL_OPT_VALUES];
  size_t n = 0;
  bargv[n++] = (char *)builder;
  bargv[n++] = strcmp(builder, "podman") == 0 || strstr(builder, "podman") ? "build" : "bud";
  bargv[n++] = isolation;
  bargv[n++] = "-f";
  bargv[n++] = userdf;
  bargv[n++] = "--iidfile";
  bargv[n++] = iidfile;
  bargv[n++] = "--output";
  bargv[n++] = outspec;
  for (int i = 0; i < o[BARG].set; i++) {
    bargv[n++] = "--build-arg";
    bargv[n++] = (char *)o[BARG].v[i];
  }
  bargv[n++] = (char *)context;
  bargv[n] = NULL;
  if (!ctx->json) fprintf(stderr, "Building the image with %s...\n", builder);
  /* The builder's progress goes to stderr, so that stdout stays ours (--json). */
  int st = run(bargv, 2, NULL, NULL);
  if (st != 0) {
    fprintf(stderr, "evctl: %s: %s failed (%s%d)%s\n", cmd, builder,
            st < 0 ? "could not run it, " : "exit ", st,
            " — without registry access, base the Dockerfile on FROM scratch, a local image "
            "or FROM oci-archive:PATH");
    goto out;
  }
  size_t ilen;
  char *iid = (char *)slurp(iidfile, 4096, &ilen, err, sizeof err);
  if (!iid) {
    fprintf(stderr, "evctl: %s: %s wrote no image id: %s\n", cmd, builder, err);
    goto out;
  }
  iid[strcspn(iid, "\r\n")] = 0;
  char *iargv[] = {(char *)builder, strstr(builder, "podman") ? "image" : "inspect",
                   strstr(builder, "podman") ? "inspect" : "--type=image", iid, NULL};
  size_t outlen;
  st = run(iargv, -1, &inspect_out, &outlen);
  /* The image itself is not kept: its root filesystem and config are all the build needs, and
   * every build would otherwise leave one more image in the builder's storage. */
  char *rargv[] = {(char *)builder, "rmi", iid, NULL};
  run_quiet(rargv);
  free(iid);
  json_error_t jerr;
  b.inspect = st == 0 && inspect_out ? json_loadb(inspect_out, outlen, 0, &jerr) : NULL;
  if (json_is_array(b.inspect)) { /* podman: an array of one */
    json_t *first = json_incref(json_array_get(b.inspect, 0));
    json_decref(b.inspect);
    b.inspect = first;
  }
  json_t *cfg = json_object_get(json_object_get(b.inspect, "OCIv1"), "config");
  if (!cfg) cfg = json_object_get(b.inspect, "Config");
  if (!json_is_object(cfg)) cfg = NULL;
  if (!b.inspect) {
    fprintf(stderr, "evctl: %s: cannot read the image's config from `%s inspect`\n", cmd, builder);
    goto out;
  }
  json_t *empty = json_object();
  if (!cfg) cfg = empty;

  long port = dockerfile_port((char *)df_text);
  if (!port) port = config_port(cfg);
  if (!port) port = DEFAULT_PORT;
  int crc = make_cage_json(&b, cfg, rootfs, port, err, sizeof err);
  if (crc < 0) {
    json_decref(empty);
    fprintf(stderr, "evctl: %s: %s\n", cmd, err);
    goto out;
  }

  /* The application ramdisk: /rootfs with the image's owners, /cage.json. */
  cpio_builder *app_cpio = cpio_new();
  const char *why = "out of memory";
  char *bad = NULL;
  int r = app_cpio ? cpio_add_tree(app_cpio, "rootfs", rootfs, 1, &why, &bad) : -ENOMEM;
  if (r == 0) {
    /* The export's top directory is the builder's (0700); a root filesystem's is 0755. */
    r = cpio_add_dir(app_cpio, "rootfs", 0755);
  }
  if (r == 0)
    r = cpio_add_file(app_cpio, "cage.json", 0644, (uint8_t *)b.cage_json, strlen(b.cage_json));
  if (r == 0) r = cpio_write_gz(app_cpio, &b.app_gz, &b.app_len, &why);
  cpio_free(app_cpio);
  if (r < 0) {
    json_decref(empty);
    fprintf(stderr, "evctl: %s: the application ramdisk: %s%s%s\n", cmd, why, bad ? ": " : "",
            bad ? bad : "");
    free(bad);
    goto out;
  }

  /* Metadata, Nitro's EifIdentityInfo. Not measured; kept free of times and ids so that a
   * rebuild gives the same bytes (SOURCE_DATE_EPOCH sets BuildTime if given). */
  char *kv_path = path_join(b.kernel_dir, "version"), kver[128] = "";
  size_t kvl;
  uint8_t *kvt = kv_path ? slurp(kv_path, 4096, &kvl, err, sizeof err) : NULL;
  if (kvt) snprintf(kver, sizeof kver, "%.*s", (int)strcspn((char *)kvt, "\r\n"), (char *)kvt);
  free(kvt);
  free(kv_path);
  const char *sde = getenv("SOURCE_DATE_EPOCH");
  time_t when = sde && is_number(sde) ? (time_t)strtoll(sde, NULL, 10) : 0;
  char btime[64];
  struct tm tmv;
  strftime(btime, sizeof btime, "%Y-%m-%dT%H:%M:%S+00:00", gmtime_r(&when, &tmv));
  json_t *docker = json_object();
  const char *keys[] = {"Entrypoint", "Cmd", "Env", "WorkingDir", "User", "ExposedPorts"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (json_object_get(cfg, keys[i]))
      json_object_set(docker, keys[i], json_object_get(cfg, keys[i]));
  json_t *meta = json_pack("{s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s},s:{s:o},s:{s:s,s:s,s:i}}",
                           "ImageName", name, "ImageVersion", "latest", "BuildMetadata",
                           "BuildTime", btime, "BuildTool", "evctl", "BuildToolVersion",
                           EVS_VERSION, "OperatingSystem", "Linux", "KernelVersion", kver,
                           "DockerInfo", "Config", docker, "CustomMetadata", "cage_uuid", uuid,
                           "app_uuid", app, "port", (json_int_t)port);
  b.metadata = meta ? json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(meta);
  json_decref(empty);

  eif_blob rds[2] = {{b.boot_gz, b.boot_len}, {b.app_gz, b.app_len}};
  eif_build_in in = {
      .kernel = {b.kernel, b.kernel_len},
      .cmdline = CAGE_CMDLINE,
      .ramdisks = rds,
      .nramdisks = 2,
      .metadata = {(uint8_t *)b.metadata, b.metadata ? strlen(b.metadata) : 0},
      .signing_cert = {b.cert, b.cert_len},
      .signing_key = {b.key, b.key_len},
  };
  eif_path = path_join(outdir, "enclave.eif");
  eif_pcrs pcrs;
  const char *ewhy = "out of memory";
  if (!eif_path || eif_write(eif_path, &in, &pcrs, &ewhy) < 0) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, eif_path ? eif_path : outdir, ewhy);
    goto out;
  }
  if (write_attestation(toml_path, &pcrs, err, sizeof err) < 0) {
    fprintf(stderr, "evctl: %s: %s\n", cmd, err);
    goto out;
  }
  if (ctx->json) {
    json_t *j = json_pack("{s:s,s:s,s:s,s:o,s:b,s:i}", "eif", eif_path, "dockerfile", userdf,
                          "config", toml_path, "measurements", pcrs_json(&pcrs), "signed",
                          pcrs.has_pcr8, "port", (json_int_t)port);
    evctl_print_json(j);
    json_decref(j);
  } else {
    printf("Built %s (%s; app port %ld) and %s; PCRs written to %s:\n", eif_path,
           pcrs.has_pcr8 ? "signed" : "unsigned", port, userdf, toml_path);
    print_pcrs(&pcrs);
  }
  rc = EVCTL_EXIT_OK;
out:
  build_done(&b);
  free(dockerfile);
  free(df_text);
  free(userdf);
  free(eif_path);
  free(inspect_out);
  free(cert_path);
  free(key_path);
  free(rootfs);
  free(iidfile);
  return rc;
}

/* ---- describe ----------------------------------------------------------------------------- */

int evctl_cmd_cage_describe(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "cage describe", *pos[1] = {0};
  evctl_opt o[] = {EVCTL_FLAG_S("verbose", 'v')};
  int npos = 0;
  if (evctl_parse_opts(cmd, argc, argv, o, 1, pos, 0, 1, &npos)) return EVCTL_EXIT_USAGE;
  const char *path = npos ? pos[0] : "./enclave.eif";
  eif_image *img;
  const char *why = NULL;
  int r = eif_open(path, &img, &why);
  if (r < 0) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, path, why);
    return EVCTL_EXIT_ERROR;
  }
  eif_pcrs pcrs;
  eif_pcrs_of(img, &pcrs);
  const char *vwhy = NULL;
  int signed_ok = pcrs.has_pcr8 ? eif_verify_signature(img, &vwhy) == 0 : 0;
  const uint8_t *meta;
  size_t mlen;
  json_t *mj = NULL;
  if (eif_section(img, EIF_SECTION_METADATA, 0, &meta, &mlen) == 0)
    mj = json_loadb((const char *)meta, mlen, 0, NULL);
  uint64_t mem, cpus;
  eif_header_info(img, NULL, &mem, &cpus);
  if (ctx->json) {
    json_t *j = json_pack("{s:s,s:o,s:b}", "eif", path, "measurements", pcrs_json(&pcrs),
                          "signed", pcrs.has_pcr8);
    if (pcrs.has_pcr8) json_object_set_new(j, "signatureValid", json_boolean(signed_ok));
    if (mj) json_object_set(j, "metadata", mj);
    evctl_print_json(j);
    json_decref(j);
  } else {
    printf("%s: %s", path,
           !pcrs.has_pcr8 ? "unsigned"
           : signed_ok    ? "signed, signature valid"
                          : "signed, SIGNATURE INVALID");
    const char *kv = json_string_value(
        json_object_get(json_object_get(mj, "BuildMetadata"), "KernelVersion"));
    if (kv && *kv) {
      printf(", Linux ");
      evctl_print(ctx, stdout, EVCTL_PLAIN, kv);
    }
    printf("\n");
    print_pcrs(&pcrs);
    if (pcrs.has_pcr8 && !signed_ok && vwhy) printf("# %s\n", vwhy);
  }
  json_decref(mj);
  eif_free(img);
  return pcrs.has_pcr8 && !signed_ok ? EVCTL_EXIT_ERROR : EVCTL_EXIT_OK;
}

/* ---- routing to cmd_cage_attest.c and cmd_cage_remote.c ----------------------------------- */

static int route(const evctl_ctx *ctx, int (*fn)(int, char **), const char *w1, const char *w2,
                 int argc, char **argv) {
  char **v = calloc((size_t)argc + 3, sizeof *v);
  if (!v) return EVCTL_EXIT_ERROR;
  int n = 0;
  v[n++] = (char *)w1;
  if (w2) v[n++] = (char *)w2;
  for (int i = 0; i < argc; i++) v[n++] = argv[i];
  evctl_cage_ctx = ctx;
  int rc = fn(n, v);
  free(v);
  return rc;
}

int evctl_cmd_cage_attest(const evctl_ctx *ctx, int argc, char **argv) {
  return route(ctx, cmd_cage_attest, "attest", NULL, argc, argv);
}
#define REMOTE(fn, w1, w2)                                                                     \
  int fn(const evctl_ctx *ctx, int argc, char **argv) {                                        \
    return route(ctx, cmd_cage_remote, w1, w2, argc, argv);                                    \
  }
REMOTE(evctl_cmd_cage_deploy, "deploy", NULL)
REMOTE(evctl_cmd_cage_list, "list", NULL)
REMOTE(evctl_cmd_cage_delete, "delete", NULL)
REMOTE(evctl_cmd_cage_logs, "logs", NULL)
REMOTE(evctl_cmd_cage_env, "env", NULL)
REMOTE(evctl_cmd_cage_cert_upload, "cert", "upload")
REMOTE(evctl_cmd_cage_cert_lock, "cert", "lock")
