/*
 * relay-config.json: the Relay definitions of the Evervault `ev` CLI, loaded and validated.
 *
 * The file maps each Relay domain (the host name clients send requests to) to its destination
 * and the request fields to encrypt:
 *
 *   { "api.example.com": {
 *       "destinationDomain": "backend.example.com:8443",
 *       "fieldsToEncrypt": [ { "route": "/users", "method": "POST", "fields": ["$.ssn"] } ] } }
 *
 * docs/configuration.md documents the format, including evserver's extensions (mtls,
 * responseDecryption, xForwardedFor, verifyDestination, caFile).
 *
 * This file and relay_config.c depend on libc and jansson only, never on other core files: the
 * relay plugin, which may include nothing of core/, compiles relay_config.c into itself.
 *
 * Library-like: no logging; errors come back in the caller's buffer as
 * "<file>: <JSON path>: <message>", e.g.
 * `relay-config.json: $["api.example.com"].fieldsToEncrypt[0].method: expected one of ...`.
 * A loaded configuration is never modified, so any thread may read it; the plugin replaces it
 * as a whole on reload.
 */
#ifndef EVS_CORE_RELAY_CONFIG_H
#define EVS_CORE_RELAY_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* Largest relay-config.json accepted. */
#define EVS_RELAY_CONFIG_MAX_BYTES (1u << 20)

/* One entry of fieldsToEncrypt. */
typedef struct evs__relay_route {
  char *route;    /* starts with '/', as written */
  char *pattern;  /* route in normal form (relay_path.h): what requests are matched against */
  char *method;   /* "GET", "POST", "PUT", "PATCH", "DELETE" or "*" (the default: any) */
  char **fields;  /* non-empty strings as written: "$.ssn", "card.number" */
  size_t nfields; /* >= 1 */
} evs__relay_route;

typedef enum evs__relay_dns_type {
  EVS_RELAY_DNS_A = 1,     /* address is an IPv4 address */
  EVS_RELAY_DNS_CNAME = 2, /* address is a host name (lower-case) */
} evs__relay_dns_type;

typedef struct evs__relay_dns_target {
  evs__relay_dns_type type;
  char *address;
  uint16_t port;            /* evserver extension "port" (1..65535); 443 when not given */
} evs__relay_dns_target;

typedef struct evs__relay {
  char *domain;             /* the Relay domain, lower-case */
  /* Destination: either destinationDomain (destination_host set) or dnsTargets (ndns_targets
   * > 0, destination_host NULL); never both. */
  char *destination_scheme; /* "https" (the default) or "http" */
  char *destination_host;   /* lower-case host name or IP literal (IPv6 without brackets) */
  uint16_t destination_port; /* 0: the scheme's default */
  evs__relay_dns_target *dns_targets;
  size_t ndns_targets;
  evs__relay_route *routes; /* fieldsToEncrypt, in file order; may be empty */
  size_t nroutes;
  /* evserver extensions. Paths are resolved against the directory of the file's name. */
  char *mtls_certificate;   /* client certificate for the destination (PEM) or NULL */
  char *mtls_key;           /* its key; set exactly when mtls_certificate is */
  char *mtls_passphrase_file; /* file holding the key's passphrase (first line), or NULL */
  int response_decryption;  /* decrypt ev: values in responses (default 1) */
  int x_forwarded_for;      /* 1: append the client address (default); 0: preserve as received */
  int verify_destination;   /* verify the destination's certificate (default 1) */
  int case_sensitive_routes; /* caseSensitiveRoutes: routes compare ASCII case (default 0) */
  char *ca_file;            /* CA bundle for the destination or NULL (the host default) */
  char *app_id;             /* the app whose keys encrypt this relay's fields, or NULL (the
                             * plugin's app_id setting) */
  char *curve;              /* "secp256k1" or "prime256v1", or NULL (secp256k1, the SDK's) */
} evs__relay;

typedef struct evs__relay_config {
  evs__relay *relays; /* sorted by domain */
  size_t n;
} evs__relay_config;

/* Load path (at most EVS_RELAY_CONFIG_MAX_BYTES). Relative paths inside the file resolve
 * against the directory of path, so pass an absolute path to get absolute results. On success
 * stores a new configuration (free with evs__relay_config_free) in *ret and returns 0; on
 * failure returns a negative errno (-ENOENT, -EACCES, ... from opening; -EFBIG if too large;
 * -EINVAL if invalid; -ENOMEM) with a message in err, and *ret is untouched. */
int evs__relay_config_load_file(const char *path, evs__relay_config **ret, char *err,
                                size_t errlen);

/* The same over bytes in memory; name is used in messages and to resolve relative paths. */
int evs__relay_config_load_buffer(const char *name, const char *buf, size_t len,
                                  evs__relay_config **ret, char *err, size_t errlen);

/* Accepts NULL and partly built configurations. */
void evs__relay_config_free(evs__relay_config *c);

/* The relay for host (a Host header without port; compared case-insensitively), or NULL. The
 * result lives as long as c. */
const evs__relay *evs__relay_config_find(const evs__relay_config *c, const char *host);

#endif
