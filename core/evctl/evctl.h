/*
 * evctl: the command-line client of evserver's admin API. This header is shared by the files of
 * core/evctl/ only: evctl.c (flags, the command table, help), admin_http.c (HTTP/1.1 over the
 * admin Unix socket), output.c (colour, sanitised text, tables) and cmd_*.c (one file per group
 * of commands). evctl is its own program and never links into the server, so its cross-file
 * names use the prefix evctl_ rather than the core's evs__.
 *
 * Adding a command: write `int evctl_cmd_x(const evctl_ctx *ctx, int argc, char **argv)` in a
 * cmd_*.c file, declare it below and add a row to the command table in evctl.c. Commands return
 * an exit status (EVCTL_EXIT_*) and report their own errors.
 */
#ifndef EVS_EVCTL_H
#define EVS_EVCTL_H

#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#ifndef EVS_VERSION
#define EVS_VERSION "unknown"
/* ---- cmd_outbound.c: Outbound Relay destinations (the relay-outbound plugin's endpoints) ---- */

int evctl_cmd_outbound_list(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_create(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_delete(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_push(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_diff(const evctl_ctx *ctx, int argc, char **argv);

#endif

#define EVCTL_EXIT_OK 0
#define EVCTL_EXIT_ERROR 1
#define EVCTL_EXIT_USAGE 2

#define EVCTL_DEFAULT_SOCKET "/run/evserver/admin.sock"
#define EVCTL_TIMEOUT_MS 5000

/* What every command gets: the resolved global flags. Lives for the whole run. */
typedef struct evctl_ctx {
  const char *socket_path;  /* --socket, else $EVSERVER_ADMIN_SOCKET, else the default */
  int json;                 /* --json: exactly one JSON object on stdout */
  int color;                /* stdout is a TTY and colour was not disabled */
  int timeout_ms;           /* for the whole exchange with the server */
} evctl_ctx;

/* One row of the command table. name is one or more space-separated words ("status",
 * "app create"); run gets the arguments after those words, global flags already removed. */
typedef struct evctl_command {
  const char *name;
  const char *args;     /* synopsis of the arguments, "" if none */
  const char *summary;  /* one line for --help */
  int (*run)(const evctl_ctx *ctx, int argc, char **argv);
} evctl_command;

/* ---- admin_http.c: one HTTP/1.1 exchange over a Unix socket --------------------------------- */

typedef struct evctl_header {
  char *name;
  char *value;
} evctl_header;

/* A complete response. Owned by the caller; release with evctl_response_done. */
typedef struct evctl_response {
  int status;
  char *reason;
  evctl_header *headers;
  size_t nheaders;
  char *body;           /* NUL-terminated (the NUL is not counted in body_len) */
  size_t body_len;
} evctl_response;

/* The largest response evctl accepts; the admin API never sends anything near it. */
#define EVCTL_MAX_RESPONSE_BYTES (64u << 20)

/* Connects to the Unix socket at socket_path, sends `method target` with Connection: close
 * (and body with content_type when body is not NULL), and reads the whole response within
 * timeout_ms. Returns 0 with *ret filled, or -1 with a one-line message in err (no "evctl:"
 * prefix); *ret is then untouched. Blocking; no signals are raised (SIGPIPE is suppressed). */
int evctl_http_request(const char *socket_path, const char *method, const char *target,
                       const char *content_type, const char *body, size_t body_len,
                       int timeout_ms, evctl_response *ret, char *err, size_t errlen);
/* The first header called name (case-insensitive), or NULL. */
const char *evctl_response_header(const evctl_response *r, const char *name);
/* Frees what r owns; r may be zeroed or already done. */
void evctl_response_done(evctl_response *r);

/* Parses raw response bytes (exposed for the parser's own checks). eof says the peer has closed,
 * which completes a close-delimited body. Returns 1 with *ret filled and *ret_used set to the
 * bytes consumed, 0 if more bytes are needed, -1 with err if malformed. */
int evctl_http_parse(const char *buf, size_t len, int eof, int head_request,
                     evctl_response *ret, size_t *ret_used, char *err, size_t errlen);

/* ---- output.c: colour, safe text, tables ---------------------------------------------------- */

/* Whether to colour stdout: only on a TTY, and not with --no-color, NO_COLOR or EV_NO_COLOR set
 * to a non-empty value, or TERM=dumb. */
int evctl_want_color(int no_color_flag);

typedef enum evctl_style {
  EVCTL_PLAIN = 0,
  EVCTL_BOLD,
  EVCTL_DIM,
  EVCTL_RED,
  EVCTL_GREEN,
  EVCTL_YELLOW,
} evctl_style;

/* Writes s to f with control characters (C0, DEL, C1) and invalid UTF-8 replaced by '?', so
 * text from the server cannot drive the terminal; wrapped in style when ctx->color. */
void evctl_print(const evctl_ctx *ctx, FILE *f, evctl_style style, const char *s);
/* Display width of s in terminal columns, counting one per UTF-8 character. */
size_t evctl_text_width(const char *s);

/* A table printed with aligned columns; cells are copied. */
typedef struct evctl_table evctl_table;
evctl_table *evctl_table_new(size_t ncols, const char *const *headers);
/* Appends a row of ncols cells (NULL cells print as "-"); styles may be NULL. 0 or -1 (ENOMEM). */
int evctl_table_add(evctl_table *t, const char *const *cells, const evctl_style *styles);
void evctl_table_print(const evctl_table *t, const evctl_ctx *ctx, FILE *f);
void evctl_table_free(evctl_table *t);

/* Prints a JSON value on stdout, indented, keys in the order received, then a newline. */
void evctl_print_json(const json_t *v);

/* ---- evctl.c: shared helpers for commands --------------------------------------------------- */

/* Reports a usage error for command name ("evctl: msg" and a pointer to --help) on stderr and
 * returns EVCTL_EXIT_USAGE. */
int evctl_usage_error(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One option of a command, for evctl_parse_opts: `--name value`, `--name=value`, or `--name`
 * alone for a flag. Declare a table with the macros below ({EVCTL_OPT("app"),
 * EVCTL_FLAG("force")}); the parser fills the rest. An empty value is a value (commands
 * validate their own); an option given more often than max is refused. */
#define EVCTL_OPT_VALUES 32
typedef struct evctl_opt {
  const char *name;
  int flag;                        /* 1: takes no value */
  int max;                         /* times it may be given, up to EVCTL_OPT_VALUES; 0: once */
  const char *value;               /* the first value (a flag: ""); NULL: not given */
  int set;                         /* times given */
  const char *v[EVCTL_OPT_VALUES]; /* every value given, in order */
  char short_name;                 /* also `-x value`, `-xvalue` (a flag: `-x`); 0: none */
} evctl_opt;
#define EVCTL_OPT(n) {.name = (n)}
#define EVCTL_FLAG(n) {.name = (n), .flag = 1}
#define EVCTL_OPT_REPEAT(n, m) {.name = (n), .max = (m)}
/* With a one-letter alias, for commands that mirror a CLI which has them (ev-cage's -c -f -o). */
#define EVCTL_OPT_S(n, c) {.name = (n), .short_name = (c)}
#define EVCTL_FLAG_S(n, c) {.name = (n), .flag = 1, .short_name = (c)}

/* Splits argv into the options of o (no of them) and positionals: at least npos_min, at most
 * npos_max, stored in pos; *ret_npos (if not NULL) gets their number. Returns 0, or
 * EVCTL_EXIT_USAGE with the error reported (unknown option, missing value, value of a flag,
 * repeated option, too few or too many positionals). */
int evctl_parse_opts(const char *cmd, int argc, char **argv, evctl_opt *o, size_t no,
                     const char **pos, int npos_min, int npos_max, int *ret_npos);
/* Checks that a command given no arguments got none; returns 0 or EVCTL_EXIT_USAGE (reported). */
int evctl_no_args(const char *name, int argc, char **argv);

/* Calls the admin API: method and path, with body as a JSON request body (NULL for none). On a
 * 2xx answer carrying a JSON object, returns 0 with *ret_obj (the caller owns a reference).
 * Otherwise reports the error once (stderr; with --json, the server's own error object also
 * goes to stdout) and returns -1. */
int evctl_admin_call(const evctl_ctx *ctx, const char *method, const char *path,
                     const json_t *body, json_t **ret_obj);
/* The same with a request body that is already JSON text (payload may be NULL: no body), for
 * callers that choose its layout (relay push sends an indented relay-config.json, which the
 * server stores as it is). */
int evctl_admin_call_text(const evctl_ctx *ctx, const char *method, const char *path,
                          const char *payload, size_t payload_len, json_t **ret_obj);

/* ---- cmd_relay_ca.c: the Outbound Relay's CA (the enclave plugin's /relay-ca endpoints) ----- */
int evctl_cmd_relay_ca_create(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_ca_show(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_ca_rotate(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_ca_remove(const evctl_ctx *ctx, int argc, char **argv);
/* ---- cmd_server.c: the running server ------------------------------------------------------- */

int evctl_cmd_status(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_plugins(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_routes(const evctl_ctx *ctx, int argc, char **argv);

/* ---- cmd_relay.c: relays and their traffic (the relay-inbound plugin's endpoints) ------------ */

int evctl_cmd_relay_create(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_clone(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_push(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_diff(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_delete(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_list(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_structures(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_relay_dev(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_activity(const evctl_ctx *ctx, int argc, char **argv);

/* ---- cmd_outbound.c: Outbound Relay destinations (the relay-outbound plugin's endpoints) ---- */

int evctl_cmd_outbound_list(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_create(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_delete(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_push(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_outbound_diff(const evctl_ctx *ctx, int argc, char **argv);

/* ---- cmd_function.c: Functions (the function-runtime plugin's endpoints) ------------------- */

int evctl_cmd_function_init(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_function_create_toml(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_function_deploy(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_function_list(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_function_delete(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_function_env(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_function_run(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_function_run_status(const evctl_ctx *ctx, int argc, char **argv);

/* ---- cmd_cage.c: Cages (evctl cage ...; docs/cages.md) -------------------------------------- */

/* Local subcommands: init, build, describe, cert new (cmd_cage.c). */
int evctl_cmd_cage_init(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_build(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_describe(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_cert_new(const evctl_ctx *ctx, int argc, char **argv);
/* The table's rows for `cage attest` and the server-side subcommands: each sets evctl_cage_ctx
 * and calls cmd_cage_attest or cmd_cage_remote with the subcommand's words in front. */
int evctl_cmd_cage_attest(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_deploy(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_list(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_delete(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_logs(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_env(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_cert_upload(const evctl_ctx *ctx, int argc, char **argv);
int evctl_cmd_cage_cert_lock(const evctl_ctx *ctx, int argc, char **argv);

/* The global flags (--socket, --json, colour, timeout) while a cage subcommand runs; set before
 * cmd_cage_attest and cmd_cage_remote are called, so that they can use evctl_admin_call. */
extern const evctl_ctx *evctl_cage_ctx;
/* `evctl cage attest ...` (cmd_cage_attest.c): argv[0] is "attest", the rest its arguments,
 * as for main. Returns an EVCTL_EXIT_* status. */
int cmd_cage_attest(int argc, char **argv);
/* Every server-side cage subcommand (cmd_cage_remote.c): deploy, list, delete, logs, env,
 * cert upload, cert lock. argv[0] is the subcommand's first word ("deploy", "env", "cert"; for
 * "cert upload" argv[1] is "upload"), then the rest of the command line, as for main.
 * Returns an EVCTL_EXIT_* status. */
int cmd_cage_remote(int argc, char **argv);

#endif
