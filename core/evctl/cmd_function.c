/*
 * evctl commands for Functions, answered by the function-runtime plugin's admin endpoints
 * (plugins/function-runtime/function_runtime.c):
 *
 *   function init [--language node|python] [--force] [--dir D | D]   writes a hello-world
 *   function create-toml [--force]                     writes ./function.toml
 *   function deploy [--app A] [--dir D]                PUT    /functions/<app>/<name>
 *   function list [--app A]                            GET    /functions[?app=]
 *   function delete [--app A] [--name N]               DELETE /functions/<app>/<name>
 *   function env get|set|delete [--app A] [--name N] [--key K] [--value V] [--secret]
 *                                                      GET/PUT/DELETE .../env[/<K>]
 *   function run [--app A] [--name N] (--data JSON | --in FILE) [--async]
 *                                                      POST   /functions/<app>/<name>/runs
 *   function run-status [--app A] --name N <runId>     GET    .../runs/<runId> (with its log)
 *
 * The app is --app, else $EV_APP_ID; the name is --name, else function.toml's. deploy reads
 * function.toml (fn_toml.c), packs the directory into a gzip-compressed tar with libarchive
 * (regular files and directories; symlinks and .git are left out) and sends it base64 in JSON;
 * the server checks everything again (language, handler file, timeout, the archive itself).
 * docs/evctl.md is the user's guide.
 */
#include "evctl.h"
#include "evs_app_id.h"
#include "fn_toml.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>

#define CODE_MAX (15u << 20)
#define PAYLOAD_MAX (6u << 20)


static char *read_file(const char *path, size_t max, size_t *ret_len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = malloc(max + 1);
  size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
  int bad = ferror(f);
  fclose(f);
  if (!buf || bad || n > max) {
    free(buf);
    snprintf(err, errlen, "%s: %s", path, bad ? "read error" : !buf ? "out of memory" : "too large");
    return NULL;
  }
  buf[n] = 0;
  *ret_len = n;
  return buf;
}

/* function.toml of dir, as its [function] table. */
static json_t *load_toml(const char *cmd, const char *dir) {
  char path[4096], err[512];
  snprintf(path, sizeof path, "%s/function.toml", dir ? dir : ".");
  size_t len;
  char *text = read_file(path, EVCTL_TOML_MAX, &len, err, sizeof err);
  if (!text) {
    fprintf(stderr, "evctl: %s: %s (run `evctl function create-toml` or pass --name)\n", cmd, err);
    return NULL;
  }
  json_t *root = NULL;
  int rc = evctl_toml_parse(text, len, &root, err, sizeof err);
  free(text);
  if (rc < 0) {
    fprintf(stderr, "evctl: %s: %s: %s\n", cmd, path, err);
    return NULL;
  }
  json_t *fn = json_incref(json_object_get(root, "function"));
  json_decref(root);
  if (!json_is_object(fn)) {
    json_decref(fn);
    fprintf(stderr, "evctl: %s: %s has no [function] table\n", cmd, path);
    return NULL;
  }
  return fn;
}

static const char *app_of(const char *cmd, const evctl_opt *app) {
  const char *a = app->set ? app->value : getenv("EV_APP_ID");
  if (!a || !*a) {
    evctl_usage_error(cmd, "%s: which app? Pass --app <appId> or set EV_APP_ID", cmd);
    return NULL;
  }
  if (!evs_app_id_valid(a, strlen(a))) {
    evctl_usage_error(cmd, "%s: '%s' is not an app id (app_ and 12 hex digits)", cmd, a);
    return NULL;
  }
  return a;
}

/* The function's name: --name, else function.toml's (in dir). Returns a string to free. */
static char *name_of(const char *cmd, const evctl_opt *name, const char *dir) {
  if (name->set) return strdup(name->value);
  json_t *fn = load_toml(cmd, dir);
  const char *n = json_string_value(json_object_get(fn, "name"));
  char *r = n ? strdup(n) : NULL;
  if (fn && !n) fprintf(stderr, "evctl: %s: function.toml has no name\n", cmd);
  json_decref(fn);
  return r;
}

static int write_new(const char *path, const char *text, int force) {
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL), 0644);
  if (fd < 0) {
    fprintf(stderr, "evctl: %s: %s%s\n", path, strerror(errno), errno == EEXIST ? " (--force overwrites)" : "");
    return -1;
  }
  size_t n = strlen(text);
  ssize_t w = write(fd, text, n);
  close(fd);
  return w == (ssize_t)n ? 0 : -1;
}

static const char NODE_HANDLER[] =
    "// A hello-world Evervault Function: data is the run's payload, with every encrypted value\n"
    "// already decrypted; context.encrypt(value) encrypts with the app's keys.\n"
    "exports.handler = async (data, context) => {\n"
    "  const name = data && typeof data.name === 'string' ? data.name : 'world';\n"
    "  console.log('greeting someone');\n"
    "  return {\n"
    "    message: `Hello from a Function! It seems you have ${name.length} letters in your name`,\n"
    "    name,\n"
    "  };\n"
    "};\n";

static const char PYTHON_HANDLER[] =
    "# A hello-world Evervault Function: data is the run's payload, with every encrypted value\n"
    "# already decrypted; context.encrypt(value) encrypts with the app's keys.\n"
    "def handler(data, context):\n"
    "    name = data.get('name', 'world') if isinstance(data, dict) else 'world'\n"
    "    print('greeting someone')\n"
    "    return {\n"
    "        'message': f'Hello from a Function! It seems you have {len(name)} letters in your name',\n"
    "        'name': name,\n"
    "    }\n";

static void toml_text(char *out, size_t cap, const char *name, int python) {
  snprintf(out, cap,
           "[function]\n"
           "# The name of your Function\n"
           "name = \"%s\"\n"
           "# <file>.<function>: the file (without .js or .py) and the function it exports\n"
           "handler = \"%s\"\n"
           "# node@<major> or python@3.<minor>\n"
           "language = \"%s\"\n"
           "# seconds, 1 to 900 (runs without X-Async stop at the server's sync_timeout)\n"
           "timeout = 30\n"
           "# Clients allowed to run it (IP addresses or CIDR ranges); empty: any client\n"
           "# inbound_allowlist = [\"203.0.113.0/24\"]\n"
           "# Hosts it may connect to (host, host:port, *.suffix); empty: any public host\n"
           "# outbound_allowlist = [\"api.example.com\", \"*.example.net\"]\n",
           name, python ? "main.handler" : "index.handler", python ? "python@3.9" : "node@18");
}

int evctl_cmd_function_init(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function init";
  evctl_opt o[] = {EVCTL_OPT("language"), EVCTL_FLAG("force"), EVCTL_OPT("dir"), EVCTL_OPT("name")};
  const char *pos[1] = {NULL};
  int np = 0;
  if (evctl_parse_opts(cmd, argc, argv, o, 4, pos, 0, 1, &np)) return EVCTL_EXIT_USAGE;
  const char *lang = o[0].set ? o[0].value : "node";
  if (strcmp(lang, "node") != 0 && strcmp(lang, "python") != 0)
    return evctl_usage_error(cmd, "%s: --language is node or python", cmd);
  int python = strcmp(lang, "python") == 0;
  const char *name = o[3].set ? o[3].value : "hello-function";
  const char *dir = o[2].set ? o[2].value : np ? pos[0] : name;
  if (mkdir(dir, 0755) < 0 && !(errno == EEXIST && o[1].set)) {
    fprintf(stderr, "evctl: %s: %s: %s%s\n", cmd, dir, strerror(errno), errno == EEXIST ? " (--force writes into it)" : "");
    return EVCTL_EXIT_ERROR;
  }
  if (!o[3].set) { /* the directory's own name */
    const char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : dir;
    if (*base && strcmp(base, ".") != 0 && strcmp(base, "..") != 0) name = base;
  }
  char path[4200], toml[1024];
  toml_text(toml, sizeof toml, name, python);
  snprintf(path, sizeof path, "%s/function.toml", dir);
  if (write_new(path, toml, o[1].set) < 0) return EVCTL_EXIT_ERROR;
  snprintf(path, sizeof path, "%s/%s", dir, python ? "main.py" : "index.js");
  if (write_new(path, python ? PYTHON_HANDLER : NODE_HANDLER, o[1].set) < 0) return EVCTL_EXIT_ERROR;
  if (!python) {
    char pkg[512];
    snprintf(pkg, sizeof pkg, "{\n  \"name\": \"%s\",\n  \"version\": \"1.0.0\",\n  \"main\": \"index.js\"\n}\n", name);
    snprintf(path, sizeof path, "%s/package.json", dir);
    if (write_new(path, pkg, o[1].set) < 0) return EVCTL_EXIT_ERROR;
  }
  if (ctx->json) {
    json_t *r = json_pack("{s:s,s:s,s:s}", "dir", dir, "name", name, "language", python ? "python" : "node");
    evctl_print_json(r);
    json_decref(r);
  } else {
    printf("Created a %s hello-world Function '%s' in %s; deploy it with:\n  cd %s && evctl function deploy --app <appId>\n",
           python ? "Python" : "Node.js", name, dir, dir);
  }
  return EVCTL_EXIT_OK;
}

int evctl_cmd_function_create_toml(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function create-toml";
  evctl_opt o[] = {EVCTL_FLAG("force"), EVCTL_OPT("name"), EVCTL_OPT("language")};
  if (evctl_parse_opts(cmd, argc, argv, o, 3, NULL, 0, 0, NULL)) return EVCTL_EXIT_USAGE;
  char cwd[4096], toml[1024];
  const char *name = o[1].set ? o[1].value : NULL;
  if (!name) {
    name = getcwd(cwd, sizeof cwd) ? strrchr(cwd, '/') + 1 : "my-function";
    if (!*name) name = "my-function";
  }
  toml_text(toml, sizeof toml, name, o[2].set && strcmp(o[2].value, "python") == 0);
  if (write_new("function.toml", toml, o[0].set) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    json_t *r = json_pack("{s:s,s:s}", "file", "function.toml", "name", name);
    evctl_print_json(r);
    json_decref(r);
  } else {
    printf("Wrote function.toml for '%s'\n", name);
  }
  return EVCTL_EXIT_OK;
}

/* ---- packing ------------------------------------------------------------------------------ */

typedef struct pack {
  struct archive *a;
  size_t files, skipped;
  char err[512];
} pack;

static int add_tree(pack *pk, const char *root, const char *rel, int depth) {
  char path[4200];
  snprintf(path, sizeof path, "%s%s%s", root, *rel ? "/" : "", rel);
  DIR *d = opendir(path);
  if (!d) {
    snprintf(pk->err, sizeof pk->err, "%.300s: %.150s", path, strerror(errno));
    return -1;
  }
  if (depth > 32) {
    closedir(d);
    snprintf(pk->err, sizeof pk->err, "%.300s: directories nested too deeply", path);
    return -1;
  }
  struct dirent *e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, ".git") == 0) continue;
    char r2[4200], full[4400];
    snprintf(r2, sizeof r2, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
    snprintf(full, sizeof full, "%s/%s", root, r2);
    struct stat sb;
    if (lstat(full, &sb) < 0) continue;
    if (!S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)) {
      pk->skipped++;
      continue;
    }
    struct archive_entry *ae = archive_entry_new();
    archive_entry_set_pathname(ae, r2);
    archive_entry_set_filetype(ae, S_ISDIR(sb.st_mode) ? AE_IFDIR : AE_IFREG);
    archive_entry_set_perm(ae, S_ISDIR(sb.st_mode) ? 0755 : (sb.st_mode & 0111) ? 0755 : 0644);
    archive_entry_set_size(ae, S_ISDIR(sb.st_mode) ? 0 : sb.st_size);
    archive_entry_set_mtime(ae, sb.st_mtime, 0);
    if (archive_write_header(pk->a, ae) != ARCHIVE_OK) {
      snprintf(pk->err, sizeof pk->err, "%.300s: %.150s", r2, archive_error_string(pk->a));
      rc = -1;
    } else if (S_ISREG(sb.st_mode)) {
      int fd = open(full, O_RDONLY | O_CLOEXEC);
      char buf[65536];
      ssize_t n;
      while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0)
        if (archive_write_data(pk->a, buf, (size_t)n) < 0) {
          snprintf(pk->err, sizeof pk->err, "%.300s: %.150s", r2, archive_error_string(pk->a));
          rc = -1;
          break;
        }
      if (fd >= 0) close(fd);
      pk->files++;
    }
    archive_entry_free(ae);
    if (rc == 0 && S_ISDIR(sb.st_mode)) rc = add_tree(pk, root, r2, depth + 1);
  }
  closedir(d);
  return rc;
}

static char *pack_dir(const char *dir, size_t *ret_len, size_t *ret_files, char *err, size_t errlen) {
  size_t cap = CODE_MAX, used = 0;
  char *buf = malloc(cap);
  pack pk = {archive_write_new(), 0, 0, ""};
  if (!buf || !pk.a) {
    free(buf);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  archive_write_add_filter_gzip(pk.a);
  archive_write_set_format_pax_restricted(pk.a);
  int rc = archive_write_open_memory(pk.a, buf, cap, &used) == ARCHIVE_OK ? add_tree(&pk, dir, "", 0) : -1;
  if (rc == 0 && archive_write_close(pk.a) != ARCHIVE_OK) {
    snprintf(pk.err, sizeof pk.err, "the archive is larger than %u MiB (%s)", CODE_MAX >> 20, archive_error_string(pk.a));
    rc = -1;
  }
  archive_write_free(pk.a);
  if (rc < 0) {
    snprintf(err, errlen, "%s", pk.err[0] ? pk.err : "cannot pack the directory");
    free(buf);
    return NULL;
  }
  *ret_len = used;
  *ret_files = pk.files;
  return buf;
}

/* ---- dependencies ------------------------------------------------------------------------- */
/* As the documentation says of deploys: a Node.js Function's non-development dependencies are
 * installed from package.json unless it ships node_modules, a Python Function's from
 * requirements.txt. They are installed here, on the machine that deploys (with whatever package
 * index it is configured for), into a copy of the directory that is then packed: never on the
 * server, where an installer's scripts would run outside any sandbox. npm runs with
 * --ignore-scripts (ship node_modules for packages that need their install scripts); pip
 * installs into .python_packages, which the box puts on sys.path after /function. */

/* Runs argv in dir, its output on our stderr (stdout may carry --json). Returns its exit code,
 * or -1 when it could not run. */
static int run_in(const char *dir, char *const argv[]) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(2, 1);
    if (chdir(dir) < 0) _exit(126);
    execvp(argv[0], argv);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int has_file(const char *dir, const char *name) {
  char p[4200];
  struct stat sb;
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &sb) == 0;
}

/* What needs installing: 'n' (npm), 'p' (pip) or 0. */
static int deps_kind(const char *dir, int python) {
  char p[4200];
  if (python) {
    snprintf(p, sizeof p, "%s/requirements.txt", dir);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    char line[1024];
    int any = 0;
    while (!any && fgets(line, sizeof line, f)) {
      const char *c = line + strspn(line, " \t");
      any = *c && *c != '#' && *c != '\n' && *c != '\r';
    }
    fclose(f);
    return any ? 'p' : 0;
  }
  if (has_file(dir, "node_modules")) return 0; /* shipped: installation is skipped */
  snprintf(p, sizeof p, "%s/package.json", dir);
  json_t *pkg = json_load_file(p, 0, NULL);
  json_t *deps = json_object_get(pkg, "dependencies");
  int any = json_is_object(deps) && json_object_size(deps) > 0;
  json_decref(pkg);
  return any ? 'n' : 0;
}

/* Copies dir into a new temporary directory and installs the dependencies there. Returns the
 * directory (malloc'd; the caller removes it), or NULL with err set. */
static char *stage_with_deps(const char *dir, int kind, char *err, size_t errlen) {
  err[0] = 0;
  char *stage = strdup("/tmp/evctl-deploy-XXXXXX");
  if (!stage || !mkdtemp(stage)) {
    snprintf(err, errlen, "cannot make a staging directory: %s", strerror(errno));
    free(stage);
    return NULL;
  }
  char src[4200];
  snprintf(src, sizeof src, "%s/.", dir);
  char *cp[] = {"cp", "-a", "--", src, stage, NULL};
  char *npm[] = {"npm", "install", "--omit=dev", "--ignore-scripts", "--install-links",
                 "--no-audit", "--no-fund", "--no-package-lock", NULL};
  const char *py = getenv("EVCTL_PYTHON") ? getenv("EVCTL_PYTHON") : "python3";
  char *pip[] = {(char *)py, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                 "--target", ".python_packages", "-r", "requirements.txt", NULL};
  int rc = run_in(".", cp);
  if (rc != 0) {
    snprintf(err, errlen, "cannot copy %s to a staging directory", dir);
  } else {
    fprintf(stderr, "evctl: installing dependencies (%s)\n",
            kind == 'n' ? "npm install --omit=dev --ignore-scripts" : "pip install -r requirements.txt");
    rc = run_in(stage, kind == 'n' ? npm : pip);
    if (rc == 0 && kind == 'n') {
      /* npm links local (file:) packages into node_modules, and links are not packed: copy
       * what they point to instead. */
      char *deref[] = {"cp", "-RL", "--", "node_modules", ".evs-node_modules", NULL};
      char *rmnm[] = {"rm", "-rf", "--", "node_modules", NULL};
      char *mv[] = {"mv", "--", ".evs-node_modules", "node_modules", NULL};
      if (run_in(stage, deref) != 0 || run_in(stage, rmnm) != 0 || run_in(stage, mv) != 0) {
        snprintf(err, errlen, "cannot copy the installed node_modules");
        rc = -1;
      }
    }
    if (rc != 0 && !err[0])
      snprintf(err, errlen, "%s failed (exit %d); fix it, or install the dependencies into the "
               "directory yourself%s", kind == 'n' ? "npm install" : "pip install", rc,
               kind == 'n' ? " (node_modules is then shipped as it is)" : "");
  }
  if (rc != 0) {
    char *rm[] = {"rm", "-rf", "--", stage, NULL};
    run_in(".", rm);
    free(stage);
    return NULL;
  }
  return stage;
}

int evctl_cmd_function_deploy(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function deploy";
  evctl_opt o[] = {EVCTL_OPT("app"), EVCTL_OPT("dir"), EVCTL_FLAG("background"),
                   EVCTL_FLAG("no-install")};
  if (evctl_parse_opts(cmd, argc, argv, o, 4, NULL, 0, 0, NULL)) return EVCTL_EXIT_USAGE;
  const char *app = app_of(cmd, &o[0]);
  if (!app) return EVCTL_EXIT_USAGE;
  const char *dir = o[1].set ? o[1].value : ".";
  json_t *fn = load_toml(cmd, dir);
  if (!fn) return EVCTL_EXIT_ERROR;
  const char *name = json_string_value(json_object_get(fn, "name"));
  const char *handler = json_string_value(json_object_get(fn, "handler"));
  const char *lang = json_string_value(json_object_get(fn, "language"));
  json_t *timeout = json_object_get(fn, "timeout"), *allow = json_object_get(fn, "inbound_allowlist");
  json_t *out_allow = json_object_get(fn, "outbound_allowlist");
  if (!name || !handler || !lang || (timeout && !json_is_integer(timeout)) || (allow && !json_is_array(allow)) ||
      (out_allow && !json_is_array(out_allow))) {
    fprintf(stderr, "evctl: %s: function.toml needs name, handler and language (strings); timeout is an "
                    "integer, inbound_allowlist and outbound_allowlist arrays of strings\n", cmd);
    json_decref(fn);
    return EVCTL_EXIT_ERROR;
  }
  char err[600];
  size_t len, files;
  int kind = o[3].set ? 0 : deps_kind(dir, strncmp(lang, "python", 6) == 0);
  char *stage = kind ? stage_with_deps(dir, kind, err, sizeof err) : NULL;
  if (kind && !stage) {
    fprintf(stderr, "evctl: %s: %s\n", cmd, err);
    json_decref(fn);
    return EVCTL_EXIT_ERROR;
  }
  char *code = pack_dir(stage ? stage : dir, &len, &files, err, sizeof err);
  if (stage) {
    char *rm[] = {"rm", "-rf", "--", stage, NULL};
    run_in(".", rm);
    free(stage);
  }
  if (!code) {
    fprintf(stderr, "evctl: %s: %s\n", cmd, err);
    json_decref(fn);
    return EVCTL_EXIT_ERROR;
  }
  char *b64 = malloc(4 * ((len + 2) / 3) + 1);
  if (b64) EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)code, (int)len);
  free(code);
  json_t *body = b64 ? json_pack("{s:s,s:s,s:I,s:s}", "handler", handler, "language", lang, "timeout",
                                 timeout ? json_integer_value(timeout) : (json_int_t)30, "archive", b64) : NULL;
  free(b64);
  if (body && allow) json_object_set(body, "inboundAllowlist", allow);
  if (body && out_allow) json_object_set(body, "outboundAllowlist", out_allow);
  char path[512];
  snprintf(path, sizeof path, "/functions/%s/%s", app, name);
  json_t *res = NULL;
  evctl_ctx c2 = *ctx;
  c2.timeout_ms = 60000;
  int rc = body ? evctl_admin_call(&c2, "PUT", path, body, &res) : -1;
  json_decref(body);
  json_decref(fn);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(res);
  } else {
    printf("Deployed %s (app %s): version %lld, %s, %zu files, %lld bytes packed\n",
           json_string_value(json_object_get(res, "name")), app,
           (long long)json_integer_value(json_object_get(res, "version")),
           json_string_value(json_object_get(res, "language")), files,
           (long long)json_integer_value(json_object_get(res, "codeBytes")));
  }
  json_decref(res);
  return EVCTL_EXIT_OK;
}

int evctl_cmd_function_list(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function list";
  evctl_opt o[] = {EVCTL_OPT("app")};
  if (evctl_parse_opts(cmd, argc, argv, o, 1, NULL, 0, 0, NULL)) return EVCTL_EXIT_USAGE;
  const char *app = o[0].set || getenv("EV_APP_ID") ? app_of(cmd, &o[0]) : NULL;
  if ((o[0].set || getenv("EV_APP_ID")) && !app) return EVCTL_EXIT_USAGE;
  char path[128];
  if (app) snprintf(path, sizeof path, "/functions?app=%s", app);
  else snprintf(path, sizeof path, "/functions");
  json_t *res = NULL;
  if (evctl_admin_call(ctx, "GET", path, NULL, &res) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(res);
    json_decref(res);
    return EVCTL_EXIT_OK;
  }
  static const char *const hdr[] = {"APP", "NAME", "VERSION", "LANGUAGE", "HANDLER", "TIMEOUT"};
  evctl_table *t = evctl_table_new(6, hdr);
  size_t i;
  json_t *f;
  json_array_foreach(json_object_get(res, "functions"), i, f) {
    char ver[24], to[24];
    snprintf(ver, sizeof ver, "%lld", (long long)json_integer_value(json_object_get(f, "version")));
    snprintf(to, sizeof to, "%llds", (long long)json_integer_value(json_object_get(f, "timeout")));
    const char *cells[] = {json_string_value(json_object_get(f, "appUuid")), json_string_value(json_object_get(f, "name")),
                           ver, json_string_value(json_object_get(f, "language")),
                           json_string_value(json_object_get(f, "handler")), to};
    evctl_table_add(t, cells, NULL);
  }
  evctl_table_print(t, ctx, stdout);
  evctl_table_free(t);
  json_decref(res);
  return EVCTL_EXIT_OK;
}

int evctl_cmd_function_delete(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function delete";
  evctl_opt o[] = {EVCTL_OPT("app"), EVCTL_OPT("name"), EVCTL_FLAG("use-current-directory")};
  if (evctl_parse_opts(cmd, argc, argv, o, 3, NULL, 0, 0, NULL)) return EVCTL_EXIT_USAGE;
  const char *app = app_of(cmd, &o[0]);
  if (!app) return EVCTL_EXIT_USAGE;
  char *name = name_of(cmd, &o[1], ".");
  if (!name) return EVCTL_EXIT_ERROR;
  char path[512];
  snprintf(path, sizeof path, "/functions/%s/%s", app, name);
  json_t *res = NULL;
  int rc = evctl_admin_call(ctx, "DELETE", path, NULL, &res);
  if (rc == 0) {
    if (ctx->json) evctl_print_json(res);
    else printf("Deleted function %s (app %s)\n", name, app);
  }
  free(name);
  json_decref(res);
  return rc < 0 ? EVCTL_EXIT_ERROR : EVCTL_EXIT_OK;
}

int evctl_cmd_function_env(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function env";
  evctl_opt o[] = {EVCTL_OPT("app"), EVCTL_OPT("name"), EVCTL_OPT("key"), EVCTL_OPT("value"),
                   EVCTL_FLAG("secret")};
  const char *pos[1] = {NULL};
  int np = 0;
  if (evctl_parse_opts(cmd, argc, argv, o, 5, pos, 0, 1, &np)) return EVCTL_EXIT_USAGE;
  if (np != 1 || (strcmp(pos[0], "get") != 0 && strcmp(pos[0], "set") != 0 && strcmp(pos[0], "delete") != 0))
    return evctl_usage_error(cmd, "%s: get, set or delete?", cmd);
  const char *app = app_of(cmd, &o[0]);
  if (!app) return EVCTL_EXIT_USAGE;
  int set = strcmp(pos[0], "set") == 0, del = strcmp(pos[0], "delete") == 0;
  if ((set || del) && !o[2].set) return evctl_usage_error(cmd, "%s %s: --key is required", cmd, pos[0]);
  if (set && !o[3].set) return evctl_usage_error(cmd, "%s set: --value is required", cmd);
  char *name = name_of(cmd, &o[1], ".");
  if (!name) return EVCTL_EXIT_ERROR;
  char path[700];
  if (set || del) snprintf(path, sizeof path, "/functions/%s/%s/env/%s", app, name, o[2].value);
  else snprintf(path, sizeof path, "/functions/%s/%s/env", app, name);
  json_t *body = set ? json_pack("{s:s,s:b}", "value", o[3].value, "secret", o[4].set) : NULL;
  json_t *res = NULL;
  int rc = evctl_admin_call(ctx, set ? "PUT" : del ? "DELETE" : "GET", path, body, &res);
  json_decref(body);
  free(name);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(res);
  } else {
    json_t *env = json_object_get(res, "env");
    const char *k;
    json_t *v;
    if (o[2].set && !set && !del) {
      json_t *e = json_object_get(env, o[2].value);
      if (e) printf("%s\n", json_string_value(json_object_get(e, "value")));
    } else {
      json_object_foreach(env, k, v) {
        printf("%s=%s%s\n", k, json_string_value(json_object_get(v, "value")),
               json_is_true(json_object_get(v, "secret")) ? "  (secret)" : "");
      }
    }
  }
  json_decref(res);
  return EVCTL_EXIT_OK;
}

int evctl_cmd_function_run(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function run";
  evctl_opt o[] = {EVCTL_OPT("app"), EVCTL_OPT("name"), EVCTL_OPT("data"), EVCTL_OPT("in"),
                   EVCTL_FLAG("async")};
  if (evctl_parse_opts(cmd, argc, argv, o, 5, NULL, 0, 0, NULL)) return EVCTL_EXIT_USAGE;
  if (o[2].set == o[3].set) return evctl_usage_error(cmd, "%s: give the payload with --data JSON or --in FILE", cmd);
  const char *app = app_of(cmd, &o[0]);
  if (!app) return EVCTL_EXIT_USAGE;
  char err[512];
  size_t len;
  char *text = o[2].set ? strdup(o[2].value) : read_file(o[3].value, PAYLOAD_MAX, &len, err, sizeof err);
  if (!text) {
    fprintf(stderr, "evctl: %s: %s\n", cmd, err);
    return EVCTL_EXIT_ERROR;
  }
  json_error_t je;
  json_t *payload = json_loads(text, JSON_DECODE_ANY, &je);
  free(text);
  if (!payload) {
    fprintf(stderr, "evctl: %s: the payload is not JSON: %s\n", cmd, je.text);
    return EVCTL_EXIT_USAGE;
  }
  char *name = name_of(cmd, &o[1], ".");
  if (!name) {
    json_decref(payload);
    return EVCTL_EXIT_ERROR;
  }
  char path[512];
  snprintf(path, sizeof path, "/functions/%s/%s/runs%s", app, name, o[4].set ? "?async=1" : "");
  json_t *body = json_pack("{s:o}", "payload", payload);
  json_t *res = NULL;
  evctl_ctx c2 = *ctx;
  c2.timeout_ms = 910000; /* the server ends the run at its timeout */
  int rc = evctl_admin_call(&c2, "POST", path, body, &res);
  json_decref(body);
  free(name);
  if (rc < 0) return EVCTL_EXIT_ERROR;
  const char *status = json_string_value(json_object_get(res, "status"));
  if (ctx->json) {
    evctl_print_json(res);
  } else if (status && strcmp(status, "success") == 0) {
    char *r = json_dumps(json_object_get(res, "result"), JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    printf("%s\n", r ? r : "null");
    free(r);
  } else if (status && strcmp(status, "failure") == 0) {
    json_t *e = json_object_get(res, "error");
    fprintf(stderr, "evctl: the function threw: %s\n%s\n", json_string_value(json_object_get(e, "message")),
            json_string_value(json_object_get(e, "stack")) ? json_string_value(json_object_get(e, "stack")) : "");
  } else {
    printf("Run %s: %s\n", json_string_value(json_object_get(res, "runId")), status ? status : "?");
  }
  int ok = !status || strcmp(status, "failure") != 0;
  json_decref(res);
  return ok ? EVCTL_EXIT_OK : EVCTL_EXIT_ERROR;
}

int evctl_cmd_function_run_status(const evctl_ctx *ctx, int argc, char **argv) {
  const char *cmd = "function run-status";
  evctl_opt o[] = {EVCTL_OPT("app"), EVCTL_OPT("name")};
  const char *pos[1] = {NULL};
  int np = 0;
  if (evctl_parse_opts(cmd, argc, argv, o, 2, pos, 0, 1, &np)) return EVCTL_EXIT_USAGE;
  if (np != 1) return evctl_usage_error(cmd, "%s: which run id?", cmd);
  const char *app = app_of(cmd, &o[0]);
  if (!app) return EVCTL_EXIT_USAGE;
  char *name = name_of(cmd, &o[1], ".");
  if (!name) return EVCTL_EXIT_ERROR;
  char path[600];
  snprintf(path, sizeof path, "/functions/%s/%s/runs/%s", app, name, pos[0]);
  free(name);
  json_t *res = NULL;
  if (evctl_admin_call(ctx, "GET", path, NULL, &res) < 0) return EVCTL_EXIT_ERROR;
  if (ctx->json) {
    evctl_print_json(res);
  } else {
    printf("%s: %s\n", pos[0], json_string_value(json_object_get(res, "status")));
    size_t i;
    json_t *l;
    json_array_foreach(json_object_get(res, "logs"), i, l) {
      evctl_print(ctx, stdout, EVCTL_DIM, json_string_value(json_object_get(l, "text")));
    }
  }
  json_decref(res);
  return EVCTL_EXIT_OK;
}
