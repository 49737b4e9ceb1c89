/*
 * Configuration: the evserver.conf file format, item validation, and the host's settings.
 *
 * The format (documented in docs/configuration.md and etc/evserver.conf):
 *
 *   # comment                 (whole-line comments only; '#' inside a value is literal)
 *   [section]                 section without a name: server, admin, limits, upstream, store
 *   [section "name"]          named section: listener, certificate, plugin
 *   key = value               value runs to end of line, surrounding whitespace trimmed;
 *                             an optional pair of double quotes around the value is removed
 *
 * Every key of every section is declared once, as data: the host's keys in the tables below
 * (evs__conf_key: the item, of the type plugins use for their own sections in
 * abi/evserver/evs_plugin.h, and the setting it fills), plugins' keys in their descriptors. One
 * mechanism parses, validates, documents and loads all of them. Errors name file, line and key: "evserver.conf:12: key 'workers':
 * expected an integer in [1, 64], got 'x'".
 *
 * Library-like: no logging; errors come back in caller-provided buffers.
 */
#ifndef EVS_CORE_CONF_H
#define EVS_CORE_CONF_H

#include <stddef.h>
#include <stdint.h>

#include "evserver/evs_plugin.h"

/* Limits on the file itself. */
#define EVS_CONF_MAX_FILE_BYTES (1u << 20)
#define EVS_CONF_MAX_LINE_BYTES 4096

typedef struct evs__conf_entry {
  char *key;
  char *value;
  unsigned line;
} evs__conf_entry;

typedef struct evs__conf_section {
  char *type;     /* "server", "listener", "plugin", ... */
  char *name;     /* NULL for unnamed sections */
  unsigned line;
  evs__conf_entry *entries;
  size_t nentries;
} evs__conf_section;

typedef struct evs__conf {
  char *path;     /* as given */
  char *dir;      /* directory of the file (for relative paths) */
  evs__conf_section *sections;
  size_t nsections;
} evs__conf;

/* Parse syntax only (sections, keys, values; duplicate keys in a section are an error; keys are
 * [a-z0-9_]+; a section header must be `[type]` or `[type "name"]`, name without quotes or
 * control characters). Returns 0 or -1 with a message "<path>:<line>: ..." in err. */
int evs__conf_parse_buffer(const char *path, const char *buf, size_t len, evs__conf **ret_conf,
                           char *err, size_t errlen);
int evs__conf_parse_file(const char *path, evs__conf **ret_conf, char *err, size_t errlen);
void evs__conf_free(evs__conf *conf);

/* Validate one section against an item table: unknown keys, missing required keys, and values
 * that do not parse as their type or fall outside [min, max] are errors naming file, line and
 * key. Secret values are never echoed. Returns 0 or -1. */
int evs__conf_validate_section(const evs__conf *conf, const evs__conf_section *sec,
                               const evs_config_item *items, char *err, size_t errlen);

/* The value of key in sec, else the item's default, else NULL. */
const char *evs__conf_value(const evs__conf_section *sec, const evs_config_item *items,
                            const char *key);

/* Typed parsing of one value; 0 on success, -1 if malformed or out of the item's bounds. */
int evs__conf_parse_int(const char *v, int64_t *ret);
int evs__conf_parse_bool(const char *v, int *ret);
int evs__conf_parse_duration_ms(const char *v, int64_t *ret); /* "250ms" "10s" "5m" "1h" "30" (s) */
int evs__conf_parse_size(const char *v, int64_t *ret);        /* "512" "64k" "25m" "1g" (1024-based) */
/* Resolve a PATH value: absolute stays, relative joins conf->dir. Returns a malloc'd string. */
char *evs__conf_resolve_path(const evs__conf *conf, const char *v);

/* ---- The host's settings --------------------------------------------------------------- */

typedef struct evs__listener_conf {
  char *name;
  char *address;        /* "127.0.0.1:8080", "[::1]:8443", "*:80" */
  int tls;
  int session_tickets;  /* TLS session resumption by tickets (tls_tickets.c) */
  char *cert_file;      /* default certificate for TLS listeners without an SNI match */
  char *key_file;
  char **roles;         /* `serves`: the roles whose routes it serves, at least one */
  size_t nroles;
} evs__listener_conf;

typedef struct evs__cert_conf {
  char *name;
  char **server_names;  /* exact names or "*.suffix" wildcards, lower-case */
  size_t nserver_names;
  char *cert_file;
  char *key_file;
} evs__cert_conf;

typedef struct evs__plugin_conf {
  char *name;
  const evs__conf_section *section; /* points into settings->conf */
} evs__plugin_conf;

typedef struct evs__settings {
  evs__conf *conf;                  /* owned */
  /* [server] */
  int64_t workers;                  /* 0: one per CPU */
  char *state_dir;
  char *plugins_dir;
  char *log_level;                  /* error|warn|info|debug */
  char *user;                       /* drop privileges to this user after binding (optional) */
  /* [admin] */
  char *admin_socket;
  /* [limits] */
  int64_t max_header_bytes, max_header_fields, max_body_bytes, max_connections;
  int64_t max_connections_per_ip;   /* 0: no limit */
  int64_t tls_identity_cache;       /* entries per worker (stream.c) */
  int64_t tls_ticket_rotation_ms;
  int64_t header_timeout_ms, body_timeout_ms, idle_timeout_ms, send_timeout_ms, drain_timeout_ms;
  int64_t request_timeout_ms;       /* 0: no limit */
  int64_t min_body_rate;            /* bytes per second; 0: no minimum */
  int64_t min_body_rate_window_ms, min_body_rate_grace_ms;
  /* [upstream] */
  int64_t upstream_connect_timeout_ms, upstream_response_timeout_ms;
  int64_t upstream_pool_max_idle, upstream_pool_idle_timeout_ms;
  char *upstream_ca_file;           /* NULL: system default */
  /* [store] */
  char *store_backend;              /* "sqlite" or "postgresql" */
  char *store_path;                 /* sqlite: file, relative to state_dir */
  char *store_dsn;                  /* postgresql: libpq connection string */
  int64_t store_record_timeout_ms;  /* longest a response's end waits for its record's commit */
  /* Named sections. */
  evs__listener_conf *listeners;
  size_t nlisteners;
  evs__cert_conf *certs;
  size_t ncerts;
  evs__plugin_conf *plugins;
  size_t nplugins;
} evs__settings;

/* One key of the host's own sections: its item (name, type, default, bounds, flags, help: what
 * validation and `--describe-config` read), the evs__settings member it fills (offsetof + 1; 0:
 * the loader reads it by hand, as for the named sections' keys), and for a STRING with a fixed
 * set of values, that set (NULL-terminated; NULL: any). Tables end with a row whose item.key is
 * NULL. */
typedef struct evs__conf_key {
  evs_config_item item; /* first: a table of keys is walked as a table of items */
  size_t setting;
  const char *const *one_of;
} evs__conf_key;

extern const evs__conf_key evs__conf_server_keys[];
extern const evs__conf_key evs__conf_admin_keys[];
extern const evs__conf_key evs__conf_limits_keys[];
extern const evs__conf_key evs__conf_upstream_keys[];
extern const evs__conf_key evs__conf_store_keys[];
extern const evs__conf_key evs__conf_listener_keys[];
extern const evs__conf_key evs__conf_certificate_keys[];

/* Load and validate a configuration file into settings (plugin sections are checked for syntax
 * here and against their plugin's items by the plugin loader). Unknown section types are
 * errors. At least one listener is required. Returns 0 or -1 with err. */
int evs__settings_load(const char *path, evs__settings **ret_settings, char *err, size_t errlen);
void evs__settings_free(evs__settings *s);

/* ---- Additions: lookups, buffers, addresses -------------------------------------------- */

/* The sections the host knows, in documentation order, terminated by type == NULL. keys is
 * NULL for "plugin" (its items come from the plugin's descriptor). `evserver --describe-config`,
 * the tests and the fuzzer walk this table. */
typedef struct evs__conf_section_def {
  const char *type;
  int named;                   /* 1: written [type "name"]; 0: written [type] */
  const evs__conf_key *keys;
  const char *help;            /* one line */
} evs__conf_section_def;
extern const evs__conf_section_def evs__conf_host_sections[];

/* The section [type] (name == NULL) or [type "name"], or NULL. Sections are unique (the parser
 * rejects a repeated header), so there is at most one. */
const evs__conf_section *evs__conf_find_section(const evs__conf *conf, const char *type,
                                                const char *name);
/* The entry for key in sec (sec may be NULL), or NULL. */
const evs__conf_entry *evs__conf_find_entry(const evs__conf_section *sec, const char *key);

/* Split a listener address: "127.0.0.1:8080", "[::1]:8443", "*:80". On success writes the
 * host in normalised form without brackets ("127.0.0.1", "::1", or "*" for any address) to
 * ret_host (hostlen >= 46, INET6_ADDRSTRLEN), its family to *ret_family (AF_INET, AF_INET6, or
 * AF_UNSPEC for "*") and the port (1..65535) to *ret_port, and returns 0. Host names are not
 * accepted (nothing is resolved). Returns -1 if malformed; the outputs are then untouched. */
int evs__conf_parse_address(const char *address, char *ret_host, size_t hostlen,
                            int *ret_family, uint16_t *ret_port);

/* evs__settings_load over bytes already in memory. path names the file in errors and its
 * directory anchors relative paths, exactly as for a file of that name. */
int evs__settings_load_buffer(const char *path, const char *buf, size_t len,
                              evs__settings **ret_settings, char *err, size_t errlen);

#endif
