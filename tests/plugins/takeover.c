/*
 * test-takeover: a test plugin for connection takeover. CONNECT requests to any host become a
 * TLS server inside the tunnel with a certificate minted for the SNI name (as the Outbound Relay
 * will do); requests with `Upgrade: echo` switch protocols to a raw echo. Both echo what they
 * read in upper case, so a test can tell the plugin answered.
 */
#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "evserver/evs_plugin.h"

typedef struct st {
  const evs_host *host;
  evs_plugin *plugin;
} st;

typedef struct tunnel {
  st *s;
  evs_stream *stream;
  char *cert_pem, *key_pem;
  size_t cert_len, key_len;
} tunnel;

static st *global;

static void tunnel_free(tunnel *t) {
  free(t->cert_pem);
  free(t->key_pem);
  free(t);
}

static void on_read(void *arg, evs_stream *s, int status, const uint8_t *data, size_t len) {
  tunnel *t = arg;
  if (status < 0) {
    global->host->stream_close(s);
    tunnel_free(t);
    return;
  }
  uint8_t *out = malloc(len);
  if (!out) return;
  for (size_t i = 0; i < len; i++) out[i] = (uint8_t)toupper(data[i]);
  global->host->stream_write(s, out, len, NULL, NULL);
  free(out);
}

static char *to_pem(int is_key, void *obj, size_t *ret_len) {
  BIO *b = BIO_new(BIO_s_mem());
  if (is_key) PEM_write_bio_PrivateKey(b, obj, NULL, NULL, 0, NULL, NULL);
  else PEM_write_bio_X509(b, obj);
  char *p;
  long n = BIO_get_mem_data(b, &p);
  char *out = malloc((size_t)n);
  memcpy(out, p, (size_t)n);
  *ret_len = (size_t)n;
  BIO_free(b);
  return out;
}

/* Mint a self-signed certificate for the requested name. */
static int identity(void *arg, const char *sni, evs_tls_identity *ret) {
  tunnel *t = arg;
  if (!sni) return -EINVAL;
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)sni, -1, -1, 0);
  X509_set_issuer_name(x, n);
  X509_sign(x, k, EVP_sha256());
  t->cert_pem = to_pem(0, x, &t->cert_len);
  t->key_pem = to_pem(1, k, &t->key_len);
  X509_free(x);
  EVP_PKEY_free(k);
  ret->cert_pem = t->cert_pem;
  ret->cert_pem_len = t->cert_len;
  ret->key_pem = t->key_pem;
  ret->key_pem_len = t->key_len;
  return 0;
}

static int route(void *state, evs_request *req) {
  st *s = state;
  const evs_request_info *info = s->host->request_info(req);
  evs_header up;
  int is_connect = strcmp(info->method, "CONNECT") == 0;
  int is_upgrade = s->host->request_header(req, "upgrade", &up) == 0 && up.value_len == 4 &&
                   strncasecmp(up.value, "echo", 4) == 0;
  if (!is_connect && !is_upgrade) return EVS_DECLINED;
  tunnel *t = calloc(1, sizeof *t);
  if (!t) return EVS_DECLINED;
  t->s = s;
  evs_stream *stream;
  if (is_connect) {
    stream = s->host->takeover(req, 200, NULL, 0);
    if (stream) s->host->stream_start_tls(stream, identity, t);
  } else {
    evs_header hs[2] = {{"Upgrade", 7, "echo", 4}, {"Connection", 10, "Upgrade", 7}};
    stream = s->host->takeover(req, 101, hs, 2);
  }
  if (!stream) {
    tunnel_free(t);
    s->host->respond_error(req, 500, "internal-server-error", "takeover failed");
    return EVS_HANDLED;
  }
  t->stream = stream;
  s->host->counter_add(s->plugin, is_connect ? "tunnels" : "upgrades", 1);
  s->host->stream_read_start(stream, on_read, t);
  return EVS_HANDLED;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  st *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->host = host;
  s->plugin = plugin;
  global = s;
  host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  *ret_state = s;
  return 0;
}

static void fini(void *state) { free(state); }

EVS_PLUGIN_DEFINE("test-takeover", "0.1.0", "test plugin: CONNECT with minted TLS, Upgrade echo",
                  NULL, init, fini);
