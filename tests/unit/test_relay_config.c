/*
 * Unit tests for core/relay_config.c: the relay-config.json format (destinationDomain forms,
 * dnsTargets, fieldsToEncrypt, evserver's extensions), every error with its JSON path, the size
 * limit, duplicate keys and domains, lookup by host, and the shipped etc/relay-config.json.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay_config.h"

#ifndef EVS_SOURCE_DIR
#error "EVS_SOURCE_DIR must name the source tree"
#endif

#define NAME "relay-config.json"

static char err[1024];

static evs__relay_config *load_ok(const char *json) {
  evs__relay_config *c = NULL;
  err[0] = 0;
  int r = evs__relay_config_load_buffer(NAME, json, strlen(json), &c, err, sizeof err);
  if (r != 0) fail_msg("unexpected error %d: %s\n--- input ---\n%s", r, err, json);
  assert_non_null(c);
  return c;
}

static void expect_error(const char *json, const char *want) {
  evs__relay_config *c = (evs__relay_config *)0x1;
  err[0] = 0;
  int r = evs__relay_config_load_buffer(NAME, json, strlen(json), &c, err, sizeof err);
  if (r == 0) fail_msg("expected error '%s'\n--- input ---\n%s", want, json);
  assert_int_equal(r, -EINVAL);
  assert_ptr_equal(c, (evs__relay_config *)0x1); /* untouched on failure */
  if (strcmp(err, want) != 0) fail_msg("error\n got: %s\nwant: %s", err, want);
}

/* One relay "a.example.com" with the given members. */
static void expect_relay_error(const char *members, const char *want_tail) {
  char json[4096], want[1024];
  snprintf(json, sizeof json, "{\"a.example.com\": {%s}}", members);
  snprintf(want, sizeof want, NAME ": $[\"a.example.com\"]%s", want_tail);
  expect_error(json, want);
}

static const evs__relay *one_relay(const char *members, evs__relay_config **ret_c) {
  char json[4096];
  snprintf(json, sizeof json, "{\"a.example.com\": {%s}}", members);
  *ret_c = load_ok(json);
  assert_int_equal((*ret_c)->n, 1);
  return &(*ret_c)->relays[0];
}

static void test_minimal(void **state) {
  evs__relay_config *c;
  const evs__relay *r = one_relay("\"destinationDomain\": \"backend.example.com\"", &c);
  (void)state;
  assert_string_equal(r->domain, "a.example.com");
  assert_string_equal(r->destination_scheme, "https");
  assert_string_equal(r->destination_host, "backend.example.com");
  assert_int_equal(r->destination_port, 0);
  assert_int_equal(r->ndns_targets, 0);
  assert_null(r->dns_targets);
  assert_int_equal(r->nroutes, 0);
  assert_null(r->mtls_certificate);
  assert_null(r->mtls_key);
  assert_int_equal(r->response_decryption, 1);
  assert_int_equal(r->x_forwarded_for, 1);
  assert_int_equal(r->verify_destination, 1);
  assert_null(r->ca_file);
  evs__relay_config_free(c);

  c = load_ok("{}");
  assert_int_equal(c->n, 0);
  assert_null(evs__relay_config_find(c, "a.example.com"));
  evs__relay_config_free(c);
  evs__relay_config_free(NULL);
}

static void test_destination_forms(void **state) {
  static const struct {
    const char *in, *scheme, *host;
    uint16_t port;
  } ok[] = {
      {"http://127.0.0.1:9000", "http", "127.0.0.1", 9000},
      {"https://x.example.com:8443/", "https", "x.example.com", 8443},
      {"localhost:9000", "https", "localhost", 9000},
      {"HTTP://Backend.Example.COM", "http", "backend.example.com", 0},
      {"[::1]:9000", "https", "::1", 9000},
      {"http://[2001:db8::1]", "http", "2001:db8::1", 0},
      {"backend", "https", "backend", 0},
      {"x.example.com:65535", "https", "x.example.com", 65535},
      {"x.example.com:1", "https", "x.example.com", 1},
  };
  static const char *bad[] = {
      "\"ftp://x.example.com\"",
      "\"http://x.example.com/path\"",
      "\"x.example.com:0\"",
      "\"x.example.com:65536\"",
      "\"x.example.com:\"",
      "\"user@x.example.com\"",
      "\"::1:9000\"",
      "\"[::1\"",
      "\"[::1]x\"",
      "\"[not-v6]:80\"",
      "\"bad_host\"",
      "\"\"",
      "\"http://\"",
      "\"x?y\"",
      "\"x:80:90\"",
      "\"x:8o\"",
      "\"-x.example.com\"",
      "123",
      "null",
  };
  (void)state;
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    char m[256];
    evs__relay_config *c;
    snprintf(m, sizeof m, "\"destinationDomain\": \"%s\"", ok[i].in);
    const evs__relay *r = one_relay(m, &c);
    assert_string_equal(r->destination_scheme, ok[i].scheme);
    assert_string_equal(r->destination_host, ok[i].host);
    assert_int_equal(r->destination_port, ok[i].port);
    evs__relay_config_free(c);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char json[256];
    evs__relay_config *c = NULL;
    snprintf(json, sizeof json, "{\"a.example.com\": {\"destinationDomain\": %s}}", bad[i]);
    assert_int_equal(evs__relay_config_load_buffer(NAME, json, strlen(json), &c, err, sizeof err),
                     -EINVAL);
    if (strncmp(err, NAME ": $[\"a.example.com\"].destinationDomain: ", 56) != 0)
      fail_msg("%s: %s", bad[i], err);
    assert_null(c);
  }
  expect_relay_error("\"destinationDomain\": \"ftp://x.example.com\"",
                     ".destinationDomain: unsupported scheme in \"ftp://x.example.com\"; write "
                     "http://, https:// or no scheme");
  expect_relay_error("\"destinationDomain\": \"http://x/p\"",
                     ".destinationDomain: expected [http://|https://]host[:port] without a path, "
                     "got \"http://x/p\"");
  expect_relay_error("\"destinationDomain\": \"x:0\"",
                     ".destinationDomain: expected a port in 1..65535 in \"x:0\"");
  expect_relay_error("\"destinationDomain\": \"::1:9000\"",
                     ".destinationDomain: write an IPv6 destination in brackets: [::1]:9000, got "
                     "\"::1:9000\"");
  expect_relay_error("\"destinationDomain\": \"bad_host\"",
                     ".destinationDomain: expected an RFC 1123 host name or IP address, got "
                     "\"bad_host\"");
  expect_relay_error("\"destinationDomain\": 1", ".destinationDomain: expected a string");
}

static void test_dns_targets(void **state) {
  evs__relay_config *c;
  const evs__relay *r =
      one_relay("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"203.0.113.7\"},"
                " {\"type\": \"CNAME\", \"address\": \"Backend.Example.com\"}]",
                &c);
  (void)state;
  assert_null(r->destination_host);
  assert_string_equal(r->destination_scheme, "https");
  assert_int_equal(r->destination_port, 0);
  assert_int_equal(r->ndns_targets, 2);
  assert_int_equal(r->dns_targets[0].type, EVS_RELAY_DNS_A);
  assert_string_equal(r->dns_targets[0].address, "203.0.113.7");
  assert_int_equal(r->dns_targets[1].type, EVS_RELAY_DNS_CNAME);
  assert_string_equal(r->dns_targets[1].address, "backend.example.com");
  assert_int_equal(r->dns_targets[0].port, 443); /* the default */
  assert_int_equal(r->dns_targets[1].port, 443);
  evs__relay_config_free(c);

  /* evserver extension: a port per target. */
  r = one_relay("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"127.0.0.1\", \"port\": 8443},"
                " {\"type\": \"CNAME\", \"address\": \"localhost\", \"port\": 65535}]",
                &c);
  assert_int_equal(r->dns_targets[0].port, 8443);
  assert_int_equal(r->dns_targets[1].port, 65535);
  evs__relay_config_free(c);
  expect_relay_error("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"127.0.0.1\", \"port\": 0}]",
                     ".dnsTargets[0].port: expected a port in 1..65535");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"127.0.0.1\"}, "
                     "{\"type\": \"A\", \"address\": \"127.0.0.1\", \"port\": 65536}]",
                     ".dnsTargets[1].port: expected a port in 1..65535");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"127.0.0.1\", \"port\": \"443\"}]",
                     ".dnsTargets[0].port: expected a port in 1..65535");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"127.0.0.1\", \"port\": 443.5}]",
                     ".dnsTargets[0].port: expected a port in 1..65535");

  expect_relay_error("\"destinationDomain\": \"x.example.com\", \"dnsTargets\": "
                     "[{\"type\": \"A\", \"address\": \"203.0.113.7\"}]",
                     ": destinationDomain and dnsTargets are mutually exclusive; keep one");
  expect_relay_error("", ": missing member \"destinationDomain\" (or \"dnsTargets\")");
  expect_relay_error("\"dnsTargets\": []",
                     ".dnsTargets: expected a non-empty array of {\"type\", \"address\"} objects");
  expect_relay_error("\"dnsTargets\": {}",
                     ".dnsTargets: expected a non-empty array of {\"type\", \"address\"} objects");
  expect_relay_error("\"dnsTargets\": [1]", ".dnsTargets[0]: expected an object");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"AAAA\", \"address\": \"::1\"}]",
                     ".dnsTargets[0].type: expected \"A\" or \"CNAME\"");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"203.0.113.7\"}, "
                     "{\"type\": \"A\", \"address\": \"backend.example.com\"}]",
                     ".dnsTargets[1].address: an A target needs an IPv4 address");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"CNAME\", \"address\": \"bad_name\"}]",
                     ".dnsTargets[0].address: a CNAME target needs an RFC 1123 host name");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"CNAME\"}]",
                     ".dnsTargets[0]: missing member \"address\"");
  expect_relay_error("\"dnsTargets\": [{\"address\": \"x.example.com\"}]",
                     ".dnsTargets[0]: missing member \"type\"");
  expect_relay_error("\"dnsTargets\": [{\"type\": \"A\", \"address\": \"203.0.113.7\", "
                     "\"ttl\": 60}]",
                     ".dnsTargets[0].ttl: unknown member; expected one of type, address, port");
}

static void test_fields_to_encrypt(void **state) {
  evs__relay_config *c;
  const evs__relay *r = one_relay(
      "\"destinationDomain\": \"x.example.com\", \"fieldsToEncrypt\": ["
      "{\"route\": \"/users\", \"method\": \"POST\", \"fields\": [\"$.ssn\", \"card.number\"]},"
      "{\"route\": \"/any/*\", \"fields\": [\"$.a\"]},"
      "{\"route\": \"/d\", \"method\": \"DELETE\", \"fields\": [\"x\"]}]",
      &c);
  (void)state;
  assert_int_equal(r->nroutes, 3);
  assert_string_equal(r->routes[0].route, "/users");
  assert_string_equal(r->routes[0].method, "POST");
  assert_int_equal(r->routes[0].nfields, 2);
  assert_string_equal(r->routes[0].fields[0], "$.ssn");
  assert_string_equal(r->routes[0].fields[1], "card.number");
  assert_string_equal(r->routes[1].route, "/any/*");
  assert_string_equal(r->routes[1].method, "*"); /* the default */
  assert_string_equal(r->routes[2].method, "DELETE");
  assert_string_equal(r->routes[0].pattern, "/users");
  assert_int_equal(r->case_sensitive_routes, 0); /* the default */
  evs__relay_config_free(c);

  /* Patterns are kept in normal form (relay_path.h); strict case is a per-relay option. */
  r = one_relay("\"destinationDomain\": \"x\", \"caseSensitiveRoutes\": true, "
                "\"fieldsToEncrypt\": [{\"route\": \"/Caf%c3%a9/%7euser/{id}/\", "
                "\"fields\": [\"f\"]}]",
                &c);
  assert_string_equal(r->routes[0].route, "/Caf%c3%a9/%7euser/{id}/");
  assert_string_equal(r->routes[0].pattern, "/Caf%C3%A9/~user/%7Bid%7D/");
  assert_int_equal(r->case_sensitive_routes, 1);
  evs__relay_config_free(c);

  const char *methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "*", NULL};
  for (int i = 0; methods[i]; i++) {
    char m[256];
    snprintf(m, sizeof m,
             "\"destinationDomain\": \"x\", \"fieldsToEncrypt\": [{\"route\": \"/\", \"method\": "
             "\"%s\", \"fields\": [\"f\"]}]",
             methods[i]);
    r = one_relay(m, &c);
    assert_string_equal(r->routes[0].method, methods[i]);
    evs__relay_config_free(c);
  }

  expect_error("{\"api.example.com\": {\"destinationDomain\": \"x\", \"fieldsToEncrypt\": "
               "[{\"route\": \"/\", \"method\": \"post\", \"fields\": [\"f\"]}]}}",
               NAME ": $[\"api.example.com\"].fieldsToEncrypt[0].method: expected one of GET, "
                    "POST, PUT, PATCH, DELETE, *, got \"post\"");
#define D "\"destinationDomain\": \"x\", "
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"method\": \"HEAD\", "
                       "\"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].method: expected one of GET, POST, PUT, PATCH, DELETE, "
                     "*, got \"HEAD\"");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"method\": 1, "
                       "\"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].method: expected one of GET, POST, PUT, PATCH, DELETE, "
                     "*");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"fields\": [\"f\"]}, "
                       "{\"route\": \"secure\", \"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[1].route: must start with '/'");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/a b\", \"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].route: must be a path without spaces, query or "
                     "fragment");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/a?b=1\", \"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].route: must be a path without spaces, query or "
                     "fragment");
  static const char *const unmatchable[] = {"/a;b", "/a//b", "/a/./b", "/a/../b", "/a/%2e", "//"};
  for (size_t i = 0; i < sizeof unmatchable / sizeof *unmatchable; i++) {
    char m[256];
    snprintf(m, sizeof m, D "\"fieldsToEncrypt\": [{\"route\": \"%s\", \"fields\": [\"f\"]}]",
             unmatchable[i]);
    expect_relay_error(m, ".fieldsToEncrypt[0].route: must not contain ';', \"//\", \".\" or "
                          "\"..\" segments");
  }
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/a%2Fb\", \"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].route: ambiguous path (encoded '/' or '\\', "
                     "backslash, %00 or double encoding)");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/a%zz\", \"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].route: invalid path");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"\", \"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].route: must not be empty");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": 5, \"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0].route: expected a string");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"fields\": [\"f\"]}]",
                     ".fieldsToEncrypt[0]: missing member \"route\"");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\"}]",
                     ".fieldsToEncrypt[0]: missing member \"fields\"");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"fields\": []}]",
                     ".fieldsToEncrypt[0].fields: expected a non-empty array of strings");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"fields\": \"$.ssn\"}]",
                     ".fieldsToEncrypt[0].fields: expected a non-empty array of strings");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"fields\": [\"a\", \"\"]}]",
                     ".fieldsToEncrypt[0].fields[1]: must not be empty");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"fields\": [\"a\", 1]}]",
                     ".fieldsToEncrypt[0].fields[1]: expected a string");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"fields\": [\"a\\tb\"]}]",
                     ".fieldsToEncrypt[0].fields[0]: must not contain control characters");
  expect_relay_error(D "\"fieldsToEncrypt\": [{\"route\": \"/\", \"methods\": \"GET\", "
                       "\"fields\": [\"a\"]}]",
                     ".fieldsToEncrypt[0].methods: unknown member; expected one of route, "
                     "method, fields");
  expect_relay_error(D "\"fieldsToEncrypt\": {}", ".fieldsToEncrypt: expected an array");
  expect_relay_error(D "\"fieldsToEncrypt\": [\"/x\"]", ".fieldsToEncrypt[0]: expected an object");
  /* An empty list is allowed: a pure proxy. */
  r = one_relay(D "\"fieldsToEncrypt\": []", &c);
  assert_int_equal(r->nroutes, 0);
  evs__relay_config_free(c);
}

static void test_extensions(void **state) {
  evs__relay_config *c = NULL;
  const char *json =
      "{\"a.example.com\": {\"destinationDomain\": \"x\", "
      "\"mtls\": {\"certificate\": \"tls/client.crt\", \"key\": \"/keys/client.key\"}, "
      "\"responseDecryption\": false, \"xForwardedFor\": \"preserve\", "
      "\"verifyDestination\": false, \"caFile\": \"ca.pem\"}}";
  const evs__relay *r;
  (void)state;
  assert_int_equal(evs__relay_config_load_buffer("/etc/evs/relay-config.json", json,
                                                 strlen(json), &c, err, sizeof err),
                   0);
  r = &c->relays[0];
  assert_string_equal(r->mtls_certificate, "/etc/evs/tls/client.crt");
  assert_string_equal(r->mtls_key, "/keys/client.key");
  assert_null(r->mtls_passphrase_file);
  assert_int_equal(r->response_decryption, 0);
  assert_int_equal(r->x_forwarded_for, 0);
  assert_int_equal(r->verify_destination, 0);
  assert_string_equal(r->ca_file, "/etc/evs/ca.pem");
  evs__relay_config_free(c);

  /* Without a directory in the name, relative paths stay relative; "/x.json" anchors at /. */
  r = one_relay(D "\"caFile\": \"ca.pem\", \"xForwardedFor\": \"append\", "
                  "\"responseDecryption\": true, \"verifyDestination\": true",
                &c);
  assert_string_equal(r->ca_file, "ca.pem");
  assert_int_equal(r->x_forwarded_for, 1);
  assert_int_equal(r->response_decryption, 1);
  assert_int_equal(r->verify_destination, 1);
  evs__relay_config_free(c);
  json = "{\"a.example.com\": {\"destinationDomain\": \"x\", \"caFile\": \"ca.pem\"}}";
  assert_int_equal(
      evs__relay_config_load_buffer("/r.json", json, strlen(json), &c, err, sizeof err), 0);
  assert_string_equal(c->relays[0].ca_file, "/ca.pem");
  evs__relay_config_free(c);

  expect_relay_error(D "\"mtls\": {\"certificate\": \"c.pem\"}",
                     ".mtls: missing member \"key\"");
  expect_relay_error(D "\"mtls\": {\"key\": \"k.pem\"}", ".mtls: missing member \"certificate\"");
  expect_relay_error(D "\"mtls\": {\"certificate\": \"c\", \"key\": \"\"}",
                     ".mtls.key: must not be empty");
  expect_relay_error(D "\"mtls\": {\"certificate\": \"c\", \"key\": \"k\", \"password\": \"p\"}",
                     ".mtls.password: unknown member; expected one of certificate, key, "
                     "passphraseFile");
  /* The passphrase itself never sits in the file, only where to read it. */
  expect_relay_error(D "\"mtls\": {\"certificate\": \"c\", \"key\": \"k\", \"passphrase\": \"p\"}",
                     ".mtls.passphrase: unknown member; expected one of certificate, key, "
                     "passphraseFile");
  expect_relay_error(D "\"mtls\": {\"certificate\": \"c\", \"key\": \"k\", \"passphraseFile\": \"\"}",
                     ".mtls.passphraseFile: must not be empty");
  expect_relay_error(D "\"mtls\": {\"certificate\": \"c\", \"key\": \"k\", \"passphraseFile\": 1}",
                     ".mtls.passphraseFile: expected a string");
  {
    const char *pj = "{\"a.example.com\": {\"destinationDomain\": \"x\", \"mtls\": "
                     "{\"certificate\": \"c.crt\", \"key\": \"c.key\", \"passphraseFile\": "
                     "\"secrets/key.pass\"}}}";
    evs__relay_config *pc = NULL;
    assert_int_equal(evs__relay_config_load_buffer("/etc/evs/relay-config.json", pj, strlen(pj),
                                                   &pc, err, sizeof err),
                     0);
    assert_string_equal(pc->relays[0].mtls_passphrase_file, "/etc/evs/secrets/key.pass");
    evs__relay_config_free(pc);
  }
  expect_relay_error(D "\"mtls\": true", ".mtls: expected an object with certificate and key");
  expect_relay_error(D "\"responseDecryption\": \"no\"",
                     ".responseDecryption: expected true or false");
  expect_relay_error(D "\"verifyDestination\": 0", ".verifyDestination: expected true or false");
  expect_relay_error(D "\"caseSensitiveRoutes\": 1",
                     ".caseSensitiveRoutes: expected true or false");
  expect_relay_error(D "\"xForwardedFor\": \"replace\"",
                     ".xForwardedFor: expected \"append\" or \"preserve\"");
  expect_relay_error(D "\"xForwardedFor\": true",
                     ".xForwardedFor: expected \"append\" or \"preserve\"");
  expect_relay_error(D "\"caFile\": 7", ".caFile: expected a string");
  expect_relay_error(D "\"appId\": \"a b\"", ".appId: an app id is letters, digits, '_' and '-'");
  expect_relay_error(D "\"curve\": \"p384\"", ".curve: expected \"secp256k1\" or \"prime256v1\"");
  expect_relay_error(D "\"encryptEmptyStrings\": true",
                     ".encryptEmptyStrings: unknown member; expected one of destinationDomain, "
                     "dnsTargets, fieldsToEncrypt, mtls, responseDecryption, xForwardedFor, "
                     "verifyDestination, caFile, appId, curve, caseSensitiveRoutes");
  expect_relay_error(D "\"has space\": 1",
                     "[\"has space\"]: unknown member; expected one of destinationDomain, "
                     "dnsTargets, fieldsToEncrypt, mtls, responseDecryption, xForwardedFor, "
                     "verifyDestination, caFile, appId, curve, caseSensitiveRoutes");
#undef D
}

static void test_top_level(void **state) {
  evs__relay_config *c = NULL;
  (void)state;
  expect_error("[]", NAME ": $: expected an object mapping Relay domains to their settings");
  expect_error("{\"a.example.com\": []}", NAME ": $[\"a.example.com\"]: expected an object");
  expect_error("{\"bad_domain\": {\"destinationDomain\": \"x\"}}",
               NAME ": $[\"bad_domain\"]: the Relay domain must be an RFC 1123 host name");
  expect_error("{\"\": {\"destinationDomain\": \"x\"}}",
               NAME ": $[\"\"]: the Relay domain must be an RFC 1123 host name");
  expect_error("{\"a\\\"b\\n\": {}}",
               NAME ": $[\"a\\\"b\\u000a\"]: the Relay domain must be an RFC 1123 host name");
  expect_error("{\"a.example.com\": {\"destinationDomain\": \"x\"}, "
               "\"A.Example.COM\": {\"destinationDomain\": \"y\"}}",
               NAME ": $: the Relay domain \"a.example.com\" is listed twice (domains are "
                    "case-insensitive)");
  /* Syntax errors and duplicate keys come from jansson, with line and column. */
  err[0] = 0;
  const char *dup = "{\"a.example.com\": {\"destinationDomain\": \"x\",\n"
                    "\"destinationDomain\": \"y\"}}";
  assert_int_equal(evs__relay_config_load_buffer(NAME, dup, strlen(dup), &c, err, sizeof err),
                   -EINVAL);
  assert_null(c);
  if (strncmp(err, NAME ":2:", strlen(NAME ":2:")) != 0 || !strstr(err, "duplicate"))
    fail_msg("%s", err);
  assert_int_equal(evs__relay_config_load_buffer(NAME, "{", 1, &c, err, sizeof err), -EINVAL);
  assert_true(strncmp(err, NAME ":1:", strlen(NAME ":1:")) == 0);
  assert_int_equal(evs__relay_config_load_buffer(NAME, "", 0, &c, err, sizeof err), -EINVAL);
  assert_int_equal(evs__relay_config_load_buffer(NAME, NULL, 0, &c, err, sizeof err), -EINVAL);
  static const char nul_key[] = "{\"a\\u0000b\": {}}";
  assert_int_equal(
      evs__relay_config_load_buffer(NAME, nul_key, strlen(nul_key), &c, err, sizeof err),
      -EINVAL);
  assert_null(c);
  /* A NULL or zero-length error buffer is allowed. */
  assert_int_equal(evs__relay_config_load_buffer(NAME, "[]", 2, &c, NULL, 0), -EINVAL);
}

static void test_find(void **state) {
  char *json = malloc(200000);
  size_t off = 0;
  evs__relay_config *c;
  (void)state;
  assert_non_null(json);
  off += (size_t)sprintf(json, "{");
  for (int i = 999; i >= 0; i--)
    off += (size_t)sprintf(json + off, "%s\"r%d.Relay.example.com\": {\"destinationDomain\": "
                                       "\"b%d.example.com\"}",
                           i == 999 ? "" : ",", i, i);
  sprintf(json + off, "}");
  c = load_ok(json);
  free(json);
  assert_int_equal(c->n, 1000);
  for (size_t i = 1; i < c->n; i++)
    assert_true(strcmp(c->relays[i - 1].domain, c->relays[i].domain) < 0);
  for (int i = 0; i < 1000; i++) {
    char host[64], dest[64];
    snprintf(host, sizeof host, i % 2 ? "r%d.relay.example.com" : "R%d.RELAY.Example.Com", i);
    snprintf(dest, sizeof dest, "b%d.example.com", i);
    const evs__relay *r = evs__relay_config_find(c, host);
    if (!r) fail_msg("not found: %s", host);
    assert_string_equal(r->destination_host, dest);
  }
  assert_null(evs__relay_config_find(c, "r1000.relay.example.com"));
  assert_null(evs__relay_config_find(c, "r1.relay.example.com:443"));
  assert_null(evs__relay_config_find(c, "r1.relay.example.co"));
  assert_null(evs__relay_config_find(c, ""));
  assert_null(evs__relay_config_find(c, NULL));
  assert_null(evs__relay_config_find(NULL, "x"));
  evs__relay_config_free(c);
}

static void test_size_limit(void **state) {
  size_t n = EVS_RELAY_CONFIG_MAX_BYTES + 1;
  char *buf = malloc(n + 1), path[] = "/tmp/evs_test_relay_XXXXXX";
  evs__relay_config *c = NULL;
  int fd;
  (void)state;
  assert_non_null(buf);
  /* Exactly the limit (whitespace padding) loads; one more byte does not. */
  memset(buf, ' ', n);
  memcpy(buf, "{}", 2);
  assert_int_equal(
      evs__relay_config_load_buffer(NAME, buf, n - 1, &c, err, sizeof err), 0);
  evs__relay_config_free(c);
  c = NULL;
  assert_int_equal(evs__relay_config_load_buffer(NAME, buf, n, &c, err, sizeof err), -EFBIG);
  assert_string_equal(err, NAME ": file is larger than 1048576 bytes (1 MiB)");
  assert_null(c);
  fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, buf, n), (ssize_t)n);
  close(fd);
  assert_int_equal(evs__relay_config_load_file(path, &c, err, sizeof err), -EFBIG);
  assert_null(c);
  assert_int_equal(truncate(path, (off_t)(n - 1)), 0);
  assert_int_equal(evs__relay_config_load_file(path, &c, err, sizeof err), 0);
  evs__relay_config_free(c);
  unlink(path);
  free(buf);
}

static void test_load_file(void **state) {
  evs__relay_config *c = NULL;
  char want[512];
  (void)state;
  assert_int_equal(evs__relay_config_load_file("/nonexistent/relay-config.json", &c, err,
                                               sizeof err),
                   -ENOENT);
  snprintf(want, sizeof want, "/nonexistent/relay-config.json: %s", strerror(ENOENT));
  assert_string_equal(err, want);
  assert_int_equal(evs__relay_config_load_file("/tmp", &c, err, sizeof err), -EISDIR);
  assert_int_equal(evs__relay_config_load_file(NULL, &c, err, sizeof err), -EINVAL);
  assert_null(c);
}

static void test_shipped_example(void **state) {
  evs__relay_config *c = NULL;
  const evs__relay *r;
  (void)state;
  if (evs__relay_config_load_file(EVS_SOURCE_DIR "/etc/relay-config.json", &c, err, sizeof err))
    fail_msg("%s", err);
  assert_int_equal(c->n, 1);
  r = evs__relay_config_find(c, "httpbin-local.relay.localhost");
  assert_non_null(r);
  assert_string_equal(r->destination_scheme, "http");
  assert_string_equal(r->destination_host, "127.0.0.1");
  assert_int_equal(r->destination_port, 9000);
  assert_int_equal(r->nroutes, 1);
  assert_string_equal(r->routes[0].route, "/secure");
  assert_string_equal(r->routes[0].method, "POST");
  assert_int_equal(r->routes[0].nfields, 1);
  assert_string_equal(r->routes[0].fields[0], "$.ssn");
  evs__relay_config_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_minimal),
      cmocka_unit_test(test_destination_forms),
      cmocka_unit_test(test_dns_targets),
      cmocka_unit_test(test_fields_to_encrypt),
      cmocka_unit_test(test_extensions),
      cmocka_unit_test(test_top_level),
      cmocka_unit_test(test_find),
      cmocka_unit_test(test_size_limit),
      cmocka_unit_test(test_load_file),
      cmocka_unit_test(test_shipped_example),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
