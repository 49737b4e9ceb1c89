/*
 * test-connect-proxy: a test plugin for ABI 1.7 streams, shaped like the Outbound Relay.
 *
 * Everything is served through routes of the role "tunnel" (a listener says `serves = tunnel`),
 * so listeners of other roles (test_50's, with test-takeover's ROUTE hook) never see it.
 *
 * - CONNECT host:port (a CONNECT route, ABI 1.7 tunnels) is taken over; a TLS server starts
 *   inside the tunnel (inside the listener's TLS too, on a TLS listener) with a leaf
 *   certificate minted for the SNI name (the CONNECT host when the client sends no SNI, as for
 *   an IP address) and signed by a test CA (ca_cert, ca_key), and the stream is handed back to
 *   the host's HTTP engine (stream_serve_http). Every request inside the tunnel is proxied to
 *   inner_scheme://host:port of the CONNECT (https: verified against upstream_ca, through the
 *   host's upstream pool). With cache_leaves = on, one leaf per name is minted, kept and given
 *   to the host with a cache_key (the host then keeps its TLS context), as the Outbound Relay
 *   does; otherwise every tunnel gets a fresh leaf. Counters: tunnels, tunnels_closed,
 *   inner_requests, leaves_minted.
 * - Requests with Host dial.test and path /dial open a client stream
 *   (stream_connect) to ?host=&port=[&tls=1][&sni=], write "ping\n", and answer 200 with what
 *   the peer sent back (up to 5 bytes), or 502 with "error <status>".
 * - Other requests go to direct_upstream (http, host:port) when it is set, so a test can send
 *   the same bytes on the listener and inside a tunnel and compare what happens.
 *
 * The minting uses OpenSSL here, in the plugin: the ABI carries PEM only.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evserver/evs_plugin.h"

typedef struct st {
  const evs_host *host;
  evs_plugin *plugin;
  X509 *ca;
  EVP_PKEY *ca_key;
  const char *upstream_ca;
  const char *inner_scheme;
  const char *direct;
  int cache_leaves;
  struct leaf *leaves;      /* cache_leaves: one per name, kept until fini */
} st;

typedef struct leaf {
  struct leaf *next;
  char *name, *key;
  char *cert_pem, *key_pem;
  size_t cert_len, key_len;
} leaf;

typedef struct tunnel {
  st *s;
  char connect_host[256];   /* the CONNECT target's host: the name when there is no SNI */
  leaf own;                 /* without cache_leaves: this tunnel's leaf */
} tunnel;

static void leaf_clear(leaf *l) {
  free(l->name);
  free(l->key);
  free(l->cert_pem);
  free(l->key_pem);
}

static void tunnel_free(void *arg) {
  tunnel *t = arg;
  st *s = t->s;
  s->host->counter_add(s->plugin, "tunnels_closed", 1);
  leaf_clear(&t->own);
  free(t);
}

static char *to_pem(int is_key, void *obj, size_t *ret_len) {
  BIO *b = BIO_new(BIO_s_mem());
  if (!b) return NULL;
  if (is_key) PEM_write_bio_PrivateKey(b, obj, NULL, NULL, 0, NULL, NULL);
  else PEM_write_bio_X509(b, obj);
  char *p;
  long n = BIO_get_mem_data(b, &p);
  char *out = n > 0 ? malloc((size_t)n) : NULL;
  if (out) {
    memcpy(out, p, (size_t)n);
    *ret_len = (size_t)n;
  }
  BIO_free(b);
  return out;
}

/* Mints a leaf for name into l, signed by the test CA: 0 or -ENOMEM. */
static int mint(st *s, const char *name, leaf *l) {
  s->host->counter_add(s->plugin, "leaves_minted", 1);
  const char *sni = name;
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  unsigned char serial[8];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  X509_set_version(x, 2);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)sni, -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(s->ca));
  char san[300];
  int ip = strspn(sni, "0123456789.") == strlen(sni) || strchr(sni, ':') != NULL;
  snprintf(san, sizeof san, "%s:%s", ip ? "IP" : "DNS", sni);
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, s->ca, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
  if (ext) {
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(x, s->ca_key, EVP_sha256());
  l->cert_pem = to_pem(0, x, &l->cert_len);
  l->key_pem = to_pem(1, k, &l->key_len);
  X509_free(x);
  EVP_PKEY_free(k);
  if (!l->cert_pem || !l->key_pem) return -ENOMEM;
  return 0;
}

/* The leaf for the SNI name, or for the CONNECT host when the client sent no SNI. */
static int identity(void *arg, const char *sni, evs_tls_identity *ret) {
  tunnel *t = arg;
  st *s = t->s;
  const char *name = sni ? sni : t->connect_host;
  if (!name[0] || !s->ca) return -EINVAL;
  leaf *l = &t->own;
  if (s->cache_leaves) {
    for (l = s->leaves; l && strcmp(l->name, name) != 0; l = l->next) {
    }
    if (!l) {
      if (!(l = calloc(1, sizeof *l)) || !(l->name = strdup(name)) || mint(s, name, l) < 0) {
        if (l) leaf_clear(l);
        free(l);
        return -ENOMEM;
      }
      char key[300];
      snprintf(key, sizeof key, "leaf:%s", name);
      if (!(l->key = strdup(key))) {
        leaf_clear(l);
        free(l);
        return -ENOMEM;
      }
      l->next = s->leaves;
      s->leaves = l;
    }
  } else if (!l->cert_pem && mint(s, name, l) < 0) {
    return -ENOMEM;
  }
  ret->cert_pem = l->cert_pem;
  ret->cert_pem_len = l->cert_len;
  ret->key_pem = l->key_pem;
  ret->key_pem_len = l->key_len;
  if (ret->size >= offsetof(evs_tls_identity, cache_key) + sizeof ret->cache_key)
    ret->cache_key = l->key; /* NULL without cache_leaves */
  return 0;
}

/* "host:port" or "[v6]:port" into host (brackets dropped) and port. */
static int split_authority(const char *a, char *host, size_t cap, uint16_t *ret_port) {
  const char *colon = strrchr(a, ':');
  if (!colon || colon == a) return -EINVAL;
  const char *h = a;
  size_t hl = (size_t)(colon - a);
  if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  if (hl == 0 || hl >= cap) return -EINVAL;
  memcpy(host, h, hl);
  host[hl] = '\0';
  long port = strtol(colon + 1, NULL, 10);
  if (port <= 0 || port > 65535) return -EINVAL;
  *ret_port = (uint16_t)port;
  return 0;
}

static int proxy_to(st *s, evs_request *req, const char *scheme, const char *authority) {
  char host[256];
  uint16_t port;
  if (split_authority(authority, host, sizeof host, &port) < 0) {
    s->host->respond_error(req, 400, "bad-request", "bad authority");
    return EVS_HANDLED;
  }
  evs_upstream up;
  memset(&up, 0, sizeof up);
  up.size = sizeof up;
  up.scheme = scheme;
  up.host = host;
  up.port = port;
  up.verify = 1;
  up.ca_file = s->upstream_ca;
  if (s->host->proxy(req, &up, NULL, NULL, NULL) < 0)
    s->host->respond_error(req, 500, "internal-server-error", "proxy failed");
  return EVS_HANDLED;
}

/* Each request inside a tunnel. */
static int inner_request(void *arg, evs_request *req) {
  tunnel *t = arg;
  st *s = t->s;
  const char *authority = s->host->request_tunnel(req);
  const evs_request_info *info = s->host->request_info(req);
  if (!authority || !info->tls) {
    s->host->respond_error(req, 500, "internal-server-error", "not in a TLS tunnel");
    return EVS_HANDLED;
  }
  s->host->counter_add(s->plugin, "inner_requests", 1);
  if (strcmp(info->path, "/declined") == 0) return EVS_DECLINED;
  return proxy_to(s, req, s->inner_scheme, authority);
}

/* ---- client streams ------------------------------------------------------------------------ */

typedef struct dial {
  st *s;
  evs_request *req;   /* NULL once the request went away */
  evs_stream *stream;
  char got[8];
  size_t len;
} dial;

/* The request's end frees the dial; closing the stream first means none of its callbacks
 * runs after. */
static void dial_free(void *data) {
  dial *d = data;
  if (d->stream) d->s->host->stream_close(d->stream);
  free(d);
}

static void dial_finish(dial *d, int status) {
  st *s = d->s;
  if (d->stream) {
    s->host->stream_close(d->stream);
    d->stream = NULL;
  }
  if (d->req) { /* the answer ends the request, which frees d: nothing touches d after */
    char body[64];
    int n;
    evs_request *req = d->req;
    d->req = NULL;
    if (status == 0) {
      n = snprintf(body, sizeof body, "%.*s", (int)d->len, d->got);
      s->host->respond(req, 200, NULL, 0, (const uint8_t *)body, (size_t)n);
    } else {
      n = snprintf(body, sizeof body, "error %d", status);
      s->host->respond(req, 502, NULL, 0, (const uint8_t *)body, (size_t)n);
    }
  }
}

static void dial_read(void *arg, evs_stream *stream, int status, const uint8_t *data, size_t len) {
  (void)stream;
  dial *d = arg;
  if (status < 0) {
    dial_finish(d, d->len > 0 ? 0 : status);
    return;
  }
  size_t take = len < 5 - d->len ? len : 5 - d->len;
  memcpy(d->got + d->len, data, take);
  d->len += take;
  if (d->len == 5) dial_finish(d, 0);
}

static void dial_connected(void *arg, evs_stream *stream, int status) {
  dial *d = arg;
  st *s = d->s;
  if (status < 0) {
    d->stream = NULL;
    dial_finish(d, status);
    return;
  }
  static const char ping[] = "ping\n";
  s->host->stream_write(stream, (const uint8_t *)ping, sizeof ping - 1, NULL, NULL);
  s->host->stream_read_start(stream, dial_read, d);
}

static const char *query_value(const char *q, const char *key, char *out, size_t cap) {
  size_t kl = strlen(key);
  for (const char *p = q; p && *p;) {
    if (strncmp(p, key, kl) == 0 && p[kl] == '=') {
      size_t vl = strcspn(p + kl + 1, "&");
      if (vl >= cap) return NULL;
      memcpy(out, p + kl + 1, vl);
      out[vl] = '\0';
      return out;
    }
    p = strchr(p, '&');
    if (p) p++;
  }
  return NULL;
}

static int dial_route(st *s, evs_request *req, const evs_request_info *info) {
  char host[256], port[8], tls[4], sni[256];
  if (!query_value(info->query, "host", host, sizeof host) ||
      !query_value(info->query, "port", port, sizeof port)) {
    s->host->respond_error(req, 400, "bad-request", "host and port");
    return EVS_HANDLED;
  }
  dial *d = calloc(1, sizeof *d);
  if (!d) return EVS_DECLINED;
  d->s = s;
  d->req = req;
  evs_stream_connect o;
  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.host = host;
  o.port = (uint16_t)atoi(port);
  o.tls = query_value(info->query, "tls", tls, sizeof tls) && strcmp(tls, "1") == 0;
  o.sni = query_value(info->query, "sni", sni, sizeof sni);
  o.ca_file = s->upstream_ca;
  d->stream = s->host->stream_connect(s->plugin, &o, dial_connected, d);
  if (!d->stream) {
    free(d);
    s->host->respond_error(req, 500, "internal-server-error", "stream_connect failed");
    return EVS_HANDLED;
  }
  s->host->request_set_data(req, s->plugin, d, dial_free);
  return EVS_HANDLED;
}

/* ---- listener requests (routes of the role "tunnel") ---------------------------------------- */

static int dial_open(void *state, evs_request *req) {
  st *s = state;
  return dial_route(s, req, s->host->request_info(req));
}

static int direct(void *state, evs_request *req) {
  st *s = state;
  return s->direct ? proxy_to(s, req, "http", s->direct) : EVS_DECLINED;
}

static int tunnel_open(void *state, evs_request *req) {
  st *s = state;
  const evs_request_info *info = s->host->request_info(req);
  if (!s->ca) return EVS_DECLINED;
  tunnel *t = calloc(1, sizeof *t);
  if (!t) return EVS_DECLINED;
  t->s = s;
  uint16_t port;
  if (split_authority(info->target, t->connect_host, sizeof t->connect_host, &port) < 0) {
    free(t);
    s->host->respond_error(req, 400, "bad-request", "bad authority");
    return EVS_HANDLED;
  }
  evs_stream *stream = s->host->takeover(req, 200, NULL, 0);
  if (!stream) {
    free(t);
    s->host->respond_error(req, 500, "internal-server-error", "takeover failed");
    return EVS_HANDLED;
  }
  evs_http_service svc;
  memset(&svc, 0, sizeof svc);
  svc.size = sizeof svc;
  svc.request = inner_request;
  svc.closed = tunnel_free;
  if (s->host->stream_start_tls(stream, identity, t) < 0 ||
      s->host->stream_serve_http(stream, &svc, t) < 0) {
    s->host->stream_close(stream);
    free(t);
    return EVS_HANDLED;
  }
  s->host->counter_add(s->plugin, "tunnels", 1);
  return EVS_HANDLED;
}

static void st_free(st *s) {
  while (s->leaves) {
    leaf *l = s->leaves;
    s->leaves = l->next;
    leaf_clear(l);
    free(l);
  }
  X509_free(s->ca);
  EVP_PKEY_free(s->ca_key);
  free(s);
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  st *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->host = host;
  s->plugin = plugin;
  s->upstream_ca = host->config_string(plugin, "upstream_ca");
  s->inner_scheme = host->config_string(plugin, "inner_scheme");
  s->direct = host->config_string(plugin, "direct_upstream");
  s->cache_leaves = host->config_bool(plugin, "cache_leaves");
  const char *cert = host->config_string(plugin, "ca_cert");
  const char *key = host->config_string(plugin, "ca_key");
  if (cert && key) {
    FILE *f = fopen(cert, "r");
    if (f) {
      s->ca = PEM_read_X509(f, NULL, NULL, NULL);
      fclose(f);
    }
    if ((f = fopen(key, "r"))) {
      s->ca_key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
      fclose(f);
    }
    if (!s->ca || !s->ca_key) {
      host->log(plugin, NULL, EVS_LOG_ERROR, "cannot read the test CA %s / %s", cert, key);
      st_free(s);
      return -EINVAL;
    }
  }
  static const evs_route routes[] = {
      {sizeof(evs_route), "tunnel", NULL, "CONNECT", NULL, tunnel_open},
      {sizeof(evs_route), "tunnel", "dial.test", NULL, "/dial", dial_open},
      {sizeof(evs_route), "tunnel", NULL, NULL, "/", direct},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    int rc = host->add_route(plugin, &routes[i]);
    if (rc < 0) {
      st_free(s);
      return rc;
    }
  }
  *ret_state = s;
  return 0;
}

static void fini(void *state) { st_free(state); }

static const evs_config_item items[] = {
    {"ca_cert", EVS_CONFIG_PATH, NULL, 0, 0, 0, "CA certificate that signs the minted leaves"},
    {"ca_key", EVS_CONFIG_PATH, NULL, 0, 0, 0, "its private key"},
    {"upstream_ca", EVS_CONFIG_PATH, NULL, 0, 0, 0, "CA bundle verifying destinations"},
    {"inner_scheme", EVS_CONFIG_STRING, "https", 0, 0, 0, "scheme of requests in a tunnel"},
    {"direct_upstream", EVS_CONFIG_STRING, NULL, 0, 0, 0, "host:port for other requests"},
    {"cache_leaves", EVS_CONFIG_BOOL, "off", 0, 0, 0,
     "one leaf per name, kept and named (cache_key) so the host keeps its TLS context"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

EVS_PLUGIN_DEFINE("test-connect-proxy", "0.1.0",
                  "test plugin: CONNECT, minted TLS, inner requests proxied; client streams", items,
                  init, fini);
