/*
 * evctl: the command-line client of a running evserver, talking to its admin API over the Unix
 * socket. This file holds the entry point, the global flags (--socket, --json, --no-color,
 * --help, --version), the command table and the call into the admin API shared by every
 * command. Commands live in cmd_*.c; docs/evctl.md is the user's guide.
 *
 * Global flags may appear anywhere before a "--"; whatever else follows the command's words
 * is the command's own. Exit status: 0 success, 1 error, 2 usage error.
 */
#include "evctl.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* cmd_app.c (answered by the enclave plugin). */
int evctl_cmd_app_create(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_app_list(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_app_unlock(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_app_lock(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_key_create(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_key_list(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_key_revoke(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_encrypt(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_decrypt(const evctl_ctx *ctx, int argc, char **argv);

/* The commands, in the order --help lists them. A multi-word name ("app create") is matched
 * word by word, so groups of subcommands need nothing more than rows here. */
static const evctl_command commands[] = {
    {"status", "", "Show the server's version, process and counters", evctl_cmd_status},
    {"plugins", "", "List the plugins and whether each was loaded or rejected", evctl_cmd_plugins},
    {"routes", "", "List the route table: role, host, method, path prefix, plugin", evctl_cmd_routes},
    {"app create", "", "Create an app; prints its id and app token (once)", evctl_cmd_app_create},
    {"app list", "", "List the apps", evctl_cmd_app_list},
    {"app unlock", "<appId> [--token T]",
     "Unlock an app's keys in every worker (token from stdin if not given)", evctl_cmd_app_unlock},
    {"app lock", "<appId>", "Wipe an app's keys from every worker's enclave until the next unlock",
     evctl_cmd_app_lock},
    {"key create", "<appId> --permissions a,b", "Create a scoped API key; prints it (once)",
     evctl_cmd_key_create},
    {"key list", "<appId>", "List an app's API keys (never the keys themselves)", evctl_cmd_key_list},
    {"key revoke", "<appId> <keyId>", "Revoke an API key", evctl_cmd_key_revoke},
    {"encrypt", "<appId> [--curve C] [--role R] <value|JSON>", "Encrypt a value or every JSON leaf",
     evctl_cmd_encrypt},
    {"decrypt", "<appId> <ev:...|JSON>", "Decrypt an ev: string or every one in JSON",
     evctl_cmd_decrypt},
    {"relay create",
     "[--force] [--destination-domain D] [--custom-domain C] [--relay-type AUTO|CUSTOM|DNS] "
     "[--dns-target JSON]... [--base-domain B] [--file F]",
     "Write a relay-config.json with one relay (no server needed)", evctl_cmd_relay_create},
    {"relay clone", "--domain D [--file F] [--force]",
     "Copy a relay from the server into a relay-config.json", evctl_cmd_relay_clone},
    {"relay push", "[--file F] [--prune] [--yes]",
     "Apply a relay-config.json to the server, after a summary of the changes", evctl_cmd_relay_push},
    {"relay diff", "[--file F] [--prune]",
     "Show what `relay push` would change, per relay and per key", evctl_cmd_relay_diff},
    {"relay delete", "--domain D", "Delete a relay from the server", evctl_cmd_relay_delete},
    {"relay list", "", "List the server's relays", evctl_cmd_relay_list},
    {"relay structures", "[--relay D]",
     "Request shapes (method, route, fields) seen by the relays in the last 24 h",
     evctl_cmd_relay_structures},
    {"relay dev", "--port P [--host H] [--file F] [--listen ADDR] [--state-dir DIR]",
     "Run a local relay that forwards to H:P and follows edits of F", evctl_cmd_relay_dev},
    {"relay-ca create", "[--cn NAME] [--days N]",
     "Create the Outbound Relay's CA (key made and sealed in the enclave); prints where it is served",
     evctl_cmd_relay_ca_create},
    {"relay-ca show", "", "Show the relay CA: subject, fingerprint, validity, URL, trusted CAs",
     evctl_cmd_relay_ca_show},
    {"relay-ca rotate", "[--cn NAME] [--days N]",
     "Make a new relay CA current; the old one stays trusted until it expires or is removed",
     evctl_cmd_relay_ca_rotate},
    {"relay-ca remove", "<fingerprint>", "Stop trusting an older relay CA", evctl_cmd_relay_ca_remove},
    {"outbound list", "[<appId>]", "Outbound Relay: every app's destinations, or one app's",
     evctl_cmd_outbound_list},
    {"outbound create",
     "<appId> --destination-domain D [--id ID] [--fields-to-encrypt a,b] [--encrypt-files]",
     "Add an outbound destination to an app", evctl_cmd_outbound_create},
    {"outbound delete", "<appId> <destId>|--all",
     "Remove an outbound destination (or the app's whole configuration)", evctl_cmd_outbound_delete},
    {"outbound push", "FILE [--app ID]", "Replace an app's outbound configuration with FILE",
     evctl_cmd_outbound_push},
    {"outbound diff", "FILE [--app ID]", "Show what `outbound push FILE` would change",
     evctl_cmd_outbound_diff},
    {"function init", "[--language node|python] [--force] [--name N] [DIR]",
     "Functions: write a hello-world Function into DIR", evctl_cmd_function_init},
    {"function create-toml", "[--force] [--name N] [--language node|python]",
     "Write a starter function.toml in the current directory", evctl_cmd_function_create_toml},
    {"function deploy", "[--app ID] [--dir D]", "Deploy the Function in D (default .) from its function.toml",
     evctl_cmd_function_deploy},
    {"function list", "[--app ID]", "List Functions", evctl_cmd_function_list},
    {"function delete", "[--app ID] [--name N]", "Delete a Function", evctl_cmd_function_delete},
    {"function env", "get|set|delete [--app ID] [--name N] [--key K] [--value V] [--secret]",
     "A Function's environment variables (--secret: encrypted with the app's keys)", evctl_cmd_function_env},
    {"function run", "[--app ID] [--name N] --data JSON|--in FILE [--async]",
     "Run a Function with a JSON payload (not encrypted first)", evctl_cmd_function_run},
    {"function run-status", "[--app ID] [--name N] RUN_ID", "A run's status, result and console output",
     evctl_cmd_function_run_status},
    {"cage init",
     "--name N [--app ID] [-f Dockerfile] [-o DIR] [--debug] [--egress] [--egress-ports P,..] "
     "[--egress-destinations D,..] [--disable-api-key-auth] [--signing-cert C --private-key K | "
     "--generate-signing] [--force]",
     "Cages: write a cage.toml (no server needed)", evctl_cmd_cage_init},
    {"cage build",
     "[CONTEXT] [-c cage.toml] [-f Dockerfile] [-o DIR] [--signing-cert C --private-key K] "
     "[--build-arg K=V].. [--kernel-dir D] [--init PATH]",
     "Build the Dockerfile into enclave.eif; PCRs into cage.toml", evctl_cmd_cage_build},
    {"cage describe", "[EIF_PATH]", "The PCRs (and signature) of an image file",
     evctl_cmd_cage_describe},
    {"cage cert new", "[-o DIR] [--subj /CN=..] [--days N] [--force]",
     "Make a P-384 signing key and self-signed certificate", evctl_cmd_cage_cert_new},
    {"cage cert upload", "[-p CERT] [-c cage.toml]",
     "Register a signing certificate with the server", evctl_cmd_cage_cert_upload},
    {"cage cert lock", "[-c cage.toml]", "Lock a cage's deployments to registered certificates",
     evctl_cmd_cage_cert_lock},
    {"cage deploy", "[CONTEXT] [-c cage.toml] [--eif-path P] [build options]",
     "Deploy a cage (building it first unless --eif-path)", evctl_cmd_cage_deploy},
    {"cage list", "[cages|deployments] [--cage-uuid U]", "List cages or a cage's deployments",
     evctl_cmd_cage_list},
    {"cage delete", "[-c cage.toml] [--cage-uuid U]", "Delete a cage", evctl_cmd_cage_delete},
    {"cage logs", "[-c cage.toml]", "A debug-mode cage's output", evctl_cmd_cage_logs},
    {"cage env", "add|delete|get [--key K] [--value V] [--secret]",
     "A cage's environment variables (--secret: encrypted)", evctl_cmd_cage_env},
    {"cage attest", "[options]", "Fetch and verify a running cage's attestation document",
     evctl_cmd_cage_attest},
    {"activity",
     "[--relay D] [--status S] [--method M] [--since 10m|1h|24h] [--limit N] [--request-id ID]",
     "Relayed requests, newest first (never values, headers or bodies)", evctl_cmd_activity},
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

#define HELP_SYNOPSIS_MAX 44

static void print_help(FILE *f) {
  fprintf(f,
          "Usage: evctl [flags] <command> [arguments]\n"
          "\n"
          "Control a running evserver through its admin socket.\n"
          "\n"
          "Commands:\n");
  size_t w = 0;
  for (size_t i = 0; i < NCOMMANDS; i++) {
    size_t n = strlen(commands[i].name) + (*commands[i].args ? 1 + strlen(commands[i].args) : 0);
    if (n > w && n <= HELP_SYNOPSIS_MAX) w = n;
  }
  for (size_t i = 0; i < NCOMMANDS; i++) {
    char synopsis[512];
    snprintf(synopsis, sizeof(synopsis), "%s%s%s", commands[i].name, *commands[i].args ? " " : "",
             commands[i].args);
    /* A long synopsis gets a line of its own, so the summaries stay in one narrow column. */
    if (strlen(synopsis) > HELP_SYNOPSIS_MAX)
      fprintf(f, "  %s\n  %-*s  %s\n", synopsis, (int)w, "", commands[i].summary);
    else
      fprintf(f, "  %-*s  %s\n", (int)w, synopsis, commands[i].summary);
  }
  fprintf(f,
          "\n"
          "Flags:\n"
          "  --socket PATH  The admin socket (default: $EVSERVER_ADMIN_SOCKET, else\n"
          "                 " EVCTL_DEFAULT_SOCKET ")\n"
          "  --json         Print the server's answer as one JSON object\n"
          "  --no-color     Disable coloured output (NO_COLOR and EV_NO_COLOR are respected too)\n"
          "  --help         Print this help, or a command's with `evctl <command> --help`\n"
          "  --version      Print evctl's version\n"
          "\n"
          "Exit status: 0 success, 1 error, 2 usage error.\n");
}

static void print_command_help(const evctl_command *c) {
  printf("Usage: evctl [flags] %s%s%s\n\n%s.\n\nRun `evctl --help` for the global flags.\n",
         c->name, *c->args ? " " : "", c->args, c->summary);
}

int evctl_usage_error(const char *name, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("evctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (name)
    fprintf(stderr, "\nTry 'evctl %s --help' for more information.\n", name);
  else
    fputs("\nTry 'evctl --help' for more information.\n", stderr);
  return EVCTL_EXIT_USAGE;
}

int evctl_parse_opts(const char *cmd, int argc, char **argv, evctl_opt *o, size_t no,
                     const char **pos, int npos_min, int npos_max, int *ret_npos) {
  int np = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *inline_val = NULL;
    size_t k = no;
    if (a[0] == '-' && a[1] == '-' && a[2]) {
      size_t nl = strcspn(a + 2, "=");
      for (k = 0; k < no; k++)
        if (strlen(o[k].name) == nl && strncmp(o[k].name, a + 2, nl) == 0) break;
      if (k == no) return evctl_usage_error(cmd, "%s: unknown option '%s'", cmd, a);
      if (a[2 + nl] == '=') inline_val = a + 3 + nl;
    } else if (a[0] == '-' && a[1] && a[1] != '-') {
      /* A one-letter alias where the table has one; anything else stays a positional. */
      for (k = 0; k < no; k++)
        if (o[k].short_name == a[1]) break;
      if (k < no && a[2]) inline_val = a + 2;
    }
    if (k == no) {
      if (np == npos_max) return evctl_usage_error(cmd, "%s: unexpected argument '%s'", cmd, a);
      pos[np++] = a;
      continue;
    }
    evctl_opt *op = &o[k];
    const char *val;
    if (op->flag) {
      if (inline_val)
        return evctl_usage_error(cmd, "%s: --%s takes no value", cmd, op->name);
      val = "";
    } else if (inline_val) {
      val = inline_val;
    } else {
      if (i + 1 == argc) return evctl_usage_error(cmd, "%s: --%s needs a value", cmd, op->name);
      val = argv[++i];
    }
    int max = op->max > 0 && op->max <= EVCTL_OPT_VALUES ? op->max : 1;
    if (op->set == max) {
      if (max == 1) return evctl_usage_error(cmd, "%s: --%s given twice", cmd, op->name);
      return evctl_usage_error(cmd, "%s: --%s given more than %d times", cmd, op->name, max);
    }
    if (!op->set) op->value = val;
    op->v[op->set++] = val;
  }
  if (np < npos_min) return evctl_usage_error(cmd, "%s: missing argument", cmd);
  if (ret_npos) *ret_npos = np;
  return 0;
}

int evctl_no_args(const char *name, int argc, char **argv) {
  if (argc == 0) return 0;
  if (argv[0][0] == '-' && argv[0][1])
    return evctl_usage_error(name, "%s: unknown option '%s'", name, argv[0]);
  return evctl_usage_error(name, "%s takes no arguments, got '%s'", name, argv[0]);
}

/* Number of leading words of argv that match the command name, or 0 if they do not all. */
static size_t match_words(const char *name, int argc, char **argv) {
  size_t words = 0;
  for (const char *p = name; *p;) {
    size_t n = strcspn(p, " ");
    if ((int)words >= argc || strlen(argv[words]) != n || strncmp(argv[words], p, n) != 0) return 0;
    words++;
    p += n;
    p += *p == ' ';
  }
  return words;
}

/* Whether word starts multi-word command names ("app" for "app create"). */
static int is_group(const char *word) {
  size_t n = strlen(word);
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strncmp(commands[i].name, word, n) == 0 && commands[i].name[n] == ' ') return 1;
  return 0;
}

static void list_group(const char *word) {
  size_t n = strlen(word);
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strncmp(commands[i].name, word, n) == 0 && commands[i].name[n] == ' ')
      fprintf(stderr, "  evctl %s%s%s\n", commands[i].name, *commands[i].args ? " " : "",
              commands[i].args);
}

/* Reports a failed admin call. The server's errors are JSON {status, code, title, detail,
 * message}; anything else is shown as its status line and the start of its body. */
static void report_http_error(const evctl_ctx *ctx, const char *method, const char *path,
                              const evctl_response *r, json_t *obj) {
  const char *detail = NULL, *code = evctl_response_header(r, "X-Evervault-Error-Code");
  if (obj) {
    json_t *d = json_object_get(obj, "detail");
    if (!json_is_string(d)) d = json_object_get(obj, "message");
    if (!json_is_string(d)) d = json_object_get(obj, "title");
    if (json_is_string(d)) detail = json_string_value(d);
    json_t *c = json_object_get(obj, "code");
    if (json_is_string(c)) code = json_string_value(c);
    if (ctx->json) evctl_print_json(obj);
  }
  char status[160];
  snprintf(status, sizeof(status), "evctl: %s %s: %d %s", method, path, r->status, r->reason);
  evctl_print(ctx, stderr, EVCTL_PLAIN, status);
  if (detail) {
    fputs(": ", stderr);
    evctl_print(ctx, stderr, EVCTL_PLAIN, detail);
  } else if (!obj && r->body_len) {
    char excerpt[201];
    size_t n = strcspn(r->body, "\r\n");
    snprintf(excerpt, sizeof(excerpt), "%.*s", (int)(n < 200 ? n : 200), r->body);
    fputs(": ", stderr);
    evctl_print(ctx, stderr, EVCTL_PLAIN, excerpt);
  }
  if (code) {
    fputs(" [", stderr);
    evctl_print(ctx, stderr, EVCTL_PLAIN, code);
    fputc(']', stderr);
  }
  fputc('\n', stderr);
}

int evctl_admin_call(const evctl_ctx *ctx, const char *method, const char *path,
                     const json_t *body, json_t **ret_obj) {
  char *payload = NULL;
  if (body && !(payload = json_dumps(body, JSON_COMPACT))) {
    fprintf(stderr, "evctl: out of memory\n");
    return -1;
  }
  int rc = evctl_admin_call_text(ctx, method, path, payload, payload ? strlen(payload) : 0, ret_obj);
  free(payload);
  return rc;
}

int evctl_admin_call_text(const evctl_ctx *ctx, const char *method, const char *path,
                          const char *payload, size_t payload_len, json_t **ret_obj) {
  evctl_response r = {0};
  char err[512];
  int rc = evctl_http_request(ctx->socket_path, method, path, "application/json", payload,
                              payload_len, ctx->timeout_ms, &r, err, sizeof(err));
  if (rc < 0) {
    fputs("evctl: ", stderr);
    evctl_print(ctx, stderr, EVCTL_PLAIN, err);
    fputc('\n', stderr);
    return -1;
  }
  json_error_t jerr;
  json_t *obj = json_loadb(r.body, r.body_len, JSON_REJECT_DUPLICATES, &jerr);
  if (obj && !json_is_object(obj)) {
    json_decref(obj);
    obj = NULL;
  }
  if (r.status < 200 || r.status > 299) {
    report_http_error(ctx, method, path, &r, obj);
    rc = -1;
  } else if (!obj) {
    char msg[400];
    snprintf(msg, sizeof(msg), "evctl: %s %s: the server's answer is not a JSON object: %s", method,
             path, r.body_len ? jerr.text : "empty body");
    evctl_print(ctx, stderr, EVCTL_PLAIN, msg);
    fputc('\n', stderr);
    rc = -1;
  } else {
    *ret_obj = obj;
    obj = NULL;
  }
  json_decref(obj);
  evctl_response_done(&r);
  return rc;
}

int main(int argc, char **argv) {
  evctl_ctx ctx = {.timeout_ms = EVCTL_TIMEOUT_MS};
  int no_color = 0, help = 0, version = 0, nargs = 0;
  char **args = calloc((size_t)argc + 1, sizeof(*args));
  if (!args) {
    fputs("evctl: out of memory\n", stderr);
    return EVCTL_EXIT_ERROR;
  }

  /* Pull the global flags out of argv wherever they are; the rest, in order, is the command. */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      while (++i < argc) args[nargs++] = argv[i];
    } else if (strcmp(a, "--json") == 0) {
      ctx.json = 1;
    } else if (strcmp(a, "--no-color") == 0 || strcmp(a, "--no-colour") == 0) {
      no_color = 1;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      help = 1;
    } else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
      version = 1;
    } else if (strcmp(a, "--socket") == 0) {
      if (i + 1 == argc || !*argv[i + 1]) {
        free(args);
        return evctl_usage_error(NULL, "--socket needs a path");
      }
      ctx.socket_path = argv[++i];
    } else if (strncmp(a, "--socket=", 9) == 0) {
      if (!a[9]) {
        free(args);
        return evctl_usage_error(NULL, "--socket needs a path");
      }
      ctx.socket_path = a + 9;
    } else {
      args[nargs++] = argv[i];
    }
  }
  if (!ctx.socket_path) {
    const char *env = getenv("EVSERVER_ADMIN_SOCKET");
    ctx.socket_path = env && *env ? env : EVCTL_DEFAULT_SOCKET;
  }
  ctx.color = evctl_want_color(no_color);

  int rc;
  /* The longest match wins, so "relay" and "relay list" can both be commands. */
  const evctl_command *cmd = NULL;
  size_t words = 0;
  for (size_t i = 0; i < NCOMMANDS; i++) {
    size_t n = match_words(commands[i].name, nargs, args);
    if (n > words) {
      words = n;
      cmd = &commands[i];
    }
  }

  if (version) {
    printf("evctl %s\n", EVS_VERSION);
    rc = EVCTL_EXIT_OK;
  } else if (nargs == 0) {
    print_help(help ? stdout : stderr);
    rc = help ? EVCTL_EXIT_OK : EVCTL_EXIT_USAGE;
  } else if (!cmd) {
    if (help) {
      print_help(stdout);
      rc = EVCTL_EXIT_OK;
    } else if (args[0][0] == '-' && args[0][1]) {
      rc = evctl_usage_error(NULL, "unknown option '%s'", args[0]);
    } else if (is_group(args[0])) {
      if (nargs > 1)
        fprintf(stderr, "evctl: unknown command '%s %s'; '%s' takes one of:\n", args[0], args[1],
                args[0]);
      else
        fprintf(stderr, "evctl: '%s' needs a subcommand, one of:\n", args[0]);
      list_group(args[0]);
      fputs("Try 'evctl --help' for more information.\n", stderr);
      rc = EVCTL_EXIT_USAGE;
    } else {
      rc = evctl_usage_error(NULL, "unknown command '%s'", args[0]);
    }
  } else if (help) {
    print_command_help(cmd);
    rc = EVCTL_EXIT_OK;
  } else {
    rc = cmd->run(&ctx, nargs - (int)words, args + words);
  }
  free(args);

  /* A full disk or a closed pipe on stdout is a failure the caller must see. */
  if (fflush(stdout) != 0 || ferror(stdout)) {
    if (rc == EVCTL_EXIT_OK) fputs("evctl: cannot write to standard output\n", stderr);
    rc = rc == EVCTL_EXIT_OK ? EVCTL_EXIT_ERROR : rc;
  }
  return rc;
}
