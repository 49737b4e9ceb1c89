/*
 * test-attest-doc: stands in for the cage-broker's front in tests/integration/test_98: serves
 * GET /.well-known/attestation on its role "cage-test" with a document built and signed in the
 * server by plugins/cage-broker/attest.c (cage_attest_doc_build: the node's attestation key in
 * the enclave), as {"attestation_doc": base64}, which is what the Evervault SDK fetches.
 *
 *   cert_file   the PEM certificate of the listener: its SubjectPublicKeyInfo is public_key
 *   pcr0 pcr1 pcr2 pcr8   hex (96 digits); unset: zero
 *   debug       every PCR zero
 *   ?nonce=HEX  the document's nonce (what `evctl cage attest --nonce` sends)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "attest.h"
#include "evserver/evs_plugin.h"

static const evs_host *host;
static evs_plugin *self;
static uint8_t *spki;
static size_t spki_len;
static uint8_t pcr[4][48];
static int have_pcr[4], debug;

static int unhex(const char *s, uint8_t *out, size_t cap, size_t *ret_len) {
  size_t n = strlen(s);
  if (n % 2 || n / 2 > cap) return -1;
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  *ret_len = n / 2;
  return 0;
}

static void on_doc(void *arg, int status, const uint8_t *doc, size_t len) {
  evs_request *req = arg;
  if (status < 0) {
    char d[64];
    snprintf(d, sizeof d, "status=%d", status);
    host->respond_error(req, 503, "service-unavailable", d);
    return;
  }
  size_t cap = 4 * ((len + 2) / 3) + 64;
  char *body = malloc(cap);
  int n = snprintf(body, cap, "{\"attestation_doc\":\"");
  n += EVP_EncodeBlock((unsigned char *)body + n, doc, (int)len);
  n += snprintf(body + n, cap - (size_t)n, "\"}");
  static const evs_header hdr[] = {{"Content-Type", 12, "application/json", 16}};
  host->respond(req, 200, hdr, 1, (const uint8_t *)body, (size_t)n);
  free(body);
}

static int r_doc(void *state, evs_request *req) {
  (void)state;
  const evs_request_info *ri = host->request_info(req);
  uint8_t nonce[512];
  size_t nonce_len = 0;
  const char *q = strstr(ri->query, "nonce=");
  int has_nonce = q && unhex(q + 6, nonce, sizeof nonce, &nonce_len) == 0;
  cage_attest_request r;
  memset(&r, 0, sizeof r);
  r.size = sizeof r;
  r.module_id = "evserver-sandbox-test-cage";
  r.pcr0 = have_pcr[0] ? pcr[0] : NULL;
  r.pcr1 = have_pcr[1] ? pcr[1] : NULL;
  r.pcr2 = have_pcr[2] ? pcr[2] : NULL;
  r.pcr8 = have_pcr[3] ? pcr[3] : NULL;
  r.debug = debug;
  r.public_key = spki;
  r.public_key_len = spki_len;
  r.nonce = has_nonce ? nonce : NULL;
  r.nonce_len = nonce_len;
  int rc = cage_attest_doc_build(host, self, &r, on_doc, req);
  if (rc < 0) {
    char d[64];
    snprintf(d, sizeof d, "call=%d", rc);
    host->respond_error(req, 503, "service-unavailable", d);
  }
  return EVS_HANDLED;
}

static const evs_config_item items[] = {
    {"cert_file", EVS_CONFIG_PATH, NULL, 0, 0, 0, "the listener's certificate (PEM)"},
    {"pcr0", EVS_CONFIG_STRING, NULL, 0, 0, 0, "hex"},
    {"pcr1", EVS_CONFIG_STRING, NULL, 0, 0, 0, "hex"},
    {"pcr2", EVS_CONFIG_STRING, NULL, 0, 0, 0, "hex"},
    {"pcr8", EVS_CONFIG_STRING, NULL, 0, 0, 0, "hex"},
    {"debug", EVS_CONFIG_BOOL, "false", 0, 0, 0, "all PCRs zero"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static const evs_route route = {sizeof(evs_route), "cage-test", NULL, "GET",
                                "/.well-known/attestation", r_doc};

static int init(const evs_host *h, evs_plugin *p, void **ret_state) {
  host = h;
  self = p;
  *ret_state = NULL;
  const char *cf = h->config_string(p, "cert_file");
  FILE *f = cf ? fopen(cf, "r") : NULL;
  X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
  if (f) fclose(f);
  int n = x ? i2d_PUBKEY(X509_get0_pubkey(x), &spki) : -1;
  X509_free(x);
  if (n <= 0) return -EINVAL;
  spki_len = (size_t)n;
  const char *names[4] = {"pcr0", "pcr1", "pcr2", "pcr8"};
  for (int i = 0; i < 4; i++) {
    const char *v = h->config_string(p, names[i]);
    size_t l = 0;
    if (v && (unhex(v, pcr[i], 48, &l) < 0 || l != 48)) return -EINVAL;
    have_pcr[i] = v != NULL;
  }
  debug = h->config_bool(p, "debug") == 1;
  return h->add_route(p, &route);
}

static void fini(void *state) {
  (void)state;
  OPENSSL_free(spki);
  spki = NULL;
}

EVS_PLUGIN_DEFINE("test-attest-doc", "1.0.0", "serves attestation documents for test_98", items,
                  init, fini);
