/*
 * cmd_cage_attest.c: `evctl cage attest` (docs/evctl.md, docs/cages.md "Attestation"). Fetches a
 * cage's /.well-known/attestation over TLS and verifies the document with
 * plugins/cage-broker/attest.c: signed by a node key that chains to the attestation root the user
 * pinned (--root), the expected PCRs, and public_key equal to the SubjectPublicKeyInfo of the
 * certificate the server presented in that very handshake (so the document vouches for the
 * connection, not just for some server). The server's certificate chain is not checked against
 * a CA: the attestation is what binds the key.
 *
 * Called by `evctl cage`'s router (cmd_cage.c) with argv[0] "attest" and the global flags in
 * evctl_cage_ctx (evctl strips --json before commands see it). Self-contained apart from the
 * response parser of admin_http.c, so a test build (cage-attest-tool evctl) can drive it without
 * the rest of evctl; evctl_cage_ctx is then absent (a weak reference) and --json is read here.
 * Exit status: 0 verified, 1 refused or unreachable, 2 usage.
 */
#include "evctl.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "attest.h"

/* Declared in evctl.h by the `evctl cage` router; weak, for builds without it. */
int cmd_cage_attest(int argc, char **argv);
extern const evctl_ctx *evctl_cage_ctx __attribute__((weak));

#define CA_TIMEOUT_S 10
#define CA_MAX_RESPONSE (1u << 20)

static const char usage_text[] =
    "usage: evctl cage attest --url https://<cage host>[:port] --root ROOT.pem\n"
    "                         (--pcrs-from cage.toml | --pcr0 HEX [--pcr1 HEX] [--pcr2 HEX]"
    " [--pcr8 HEX])\n"
    "                         [--nonce] [--json]\n"
    "Fetches the cage's attestation document and verifies it: signed under the attestation\n"
    "root ROOT.pem (GET /attestation-root.pem on an api listener of the evserver cluster),\n"
    "the expected PCRs, and bound to the TLS certificate the cage presented.\n"
    "Exit status: 0 verified, 1 refused or unreachable, 2 usage error.\n";

static int usage(const char *fmt, const char *arg) {
  fprintf(stderr, "evctl: cage attest: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n%s", usage_text);
  return 2;
}

static int unhex(const char *s, uint8_t *out, size_t want) {
  if (strlen(s) != 2 * want) return -1;
  for (size_t i = 0; i < want; i++) {
    int hi = isxdigit((unsigned char)s[2 * i]), lo = isxdigit((unsigned char)s[2 * i + 1]);
    unsigned v;
    if (!hi || !lo || sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  return 0;
}

static void tohex(const uint8_t *p, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[i]);
  out[2 * n] = 0;
}

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  uint8_t *buf = malloc(CA_MAX_RESPONSE);
  size_t n = buf ? fread(buf, 1, CA_MAX_RESPONSE - 1, f) : 0;
  fclose(f);
  if (buf) buf[n] = 0;
  *len = n;
  return buf;
}

/* The root as DER, from a PEM or DER file. */
static uint8_t *load_root(const char *path, size_t *ret_len) {
  size_t n = 0;
  uint8_t *raw = read_all(path, &n);
  if (!raw) return NULL;
  X509 *x = NULL;
  if (n > 10 && memmem(raw, n, "-----BEGIN", 10)) {
    BIO *b = BIO_new_mem_buf(raw, (int)n);
    x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
  } else {
    const uint8_t *p = raw;
    x = d2i_X509(NULL, &p, (long)n);
  }
  free(raw);
  uint8_t *der = NULL;
  int l = x ? i2d_X509(x, &der) : -1;
  X509_free(x);
  if (l <= 0) return NULL;
  uint8_t *out = malloc((size_t)l);
  if (out) memcpy(out, der, (size_t)l);
  OPENSSL_free(der);
  *ret_len = (size_t)l;
  return out;
}

/* PCR0/1/2/8 = "hex" in the [attestation] table of a cage.toml. Returns how many were found. */
static int pcrs_from_toml(const char *path, uint8_t pcr[4][48], int have[4], const char **err) {
  size_t n = 0;
  char *t = (char *)read_all(path, &n);
  if (!t) {
    *err = "cannot read the --pcrs-from file";
    return -1;
  }
  int in = 0, found = 0;
  for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
    while (*line == ' ' || *line == '\t') line++;
    if (*line == '[') {
      in = strncmp(line, "[attestation]", 13) == 0;
      continue;
    }
    static const char *names[4] = {"PCR0", "PCR1", "PCR2", "PCR8"};
    for (int i = 0; in && i < 4; i++) {
      size_t l = strlen(names[i]);
      if (strncasecmp(line, names[i], l) != 0) continue;
      char *q1 = strchr(line + l, '"'), *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
      if (!q1 || !q2) continue;
      *q2 = 0;
      if (unhex(q1 + 1, pcr[i], 48) < 0) {
        *err = "a PCR in the --pcrs-from file is not 96 hex digits";
        free(t);
        return -1;
      }
      have[i] = 1;
      found++;
    }
  }
  free(t);
  if (!found) *err = "no PCR0, PCR1, PCR2 or PCR8 in the [attestation] table of --pcrs-from";
  return found;
}

typedef struct target {
  char host[256];
  char port[8];
  char hostport[300];
} target;

static int parse_url(const char *url, target *t) {
  if (strncmp(url, "https://", 8) != 0) return -1;
  const char *h = url + 8, *end = h + strcspn(h, "/?#");
  const char *hs = h, *he, *colon;
  if (*h == '[') { /* [IPv6]:port */
    he = memchr(h, ']', (size_t)(end - h));
    if (!he) return -1;
    hs = h + 1;
    colon = he + 1 < end && he[1] == ':' ? he + 1 : NULL;
  } else {
    colon = memchr(h, ':', (size_t)(end - h));
    he = colon ? colon : end;
  }
  size_t hl = (size_t)(he - hs);
  if (hl == 0 || hl >= sizeof t->host) return -1;
  memcpy(t->host, hs, hl);
  t->host[hl] = 0;
  if (colon) {
    size_t pl = (size_t)(end - colon - 1);
    if (pl == 0 || pl >= sizeof t->port) return -1;
    memcpy(t->port, colon + 1, pl);
    t->port[pl] = 0;
    for (size_t i = 0; i < pl; i++)
      if (!isdigit((unsigned char)t->port[i])) return -1;
  } else {
    strcpy(t->port, "443");
  }
  snprintf(t->hostport, sizeof t->hostport, "%.*s", (int)(end - h), h);
  return 0;
}

static int tcp_connect(const target *t, char *err, size_t errlen) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  int rc = getaddrinfo(t->host, t->port, &hints, &res);
  if (rc != 0) {
    snprintf(err, errlen, "cannot resolve %s: %s", t->host, gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  struct timeval tv = {CA_TIMEOUT_S, 0};
  for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      snprintf(err, errlen, "cannot connect to %s: %s", t->hostport, strerror(errno));
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

/* GET path over TLS; the body (malloc'd) and the server's certificate. 0 or -1 with err. */
static int fetch(const target *t, const char *path, X509 **ret_cert, evctl_response *ret,
                 char *err, size_t errlen) {
  int fd = tcp_connect(t, err, errlen);
  if (fd < 0) return -1;
  int r = -1;
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl = ctx ? SSL_new(ctx) : NULL;
  char *buf = malloc(CA_MAX_RESPONSE);
  size_t len = 0;
  if (!ssl || !buf) {
    snprintf(err, errlen, "out of memory");
    goto done;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  /* No CA check here: the document must name this very certificate's key (checked after). */
  SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
  SSL_set_fd(ssl, fd);
  if (t->host[0] && !strchr(t->host, ':')) SSL_set_tlsext_host_name(ssl, t->host);
  if (SSL_connect(ssl) != 1) {
    unsigned long e = ERR_get_error();
    snprintf(err, errlen, "TLS handshake with %s failed: %s", t->hostport,
             e ? ERR_reason_error_string(e) : "the connection closed");
    goto done;
  }
  X509 *peer = SSL_get1_peer_certificate(ssl);
  if (!peer) {
    snprintf(err, errlen, "%s presented no certificate", t->hostport);
    goto done;
  }
  *ret_cert = peer;
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
                   "User-Agent: evctl/%s\r\nConnection: close\r\n\r\n",
                   path, t->hostport, EVS_VERSION);
  if (n <= 0 || (size_t)n >= sizeof req || SSL_write(ssl, req, n) != n) {
    snprintf(err, errlen, "cannot send the request to %s", t->hostport);
    goto done;
  }
  for (;;) {
    size_t used = 0;
    int pr = evctl_http_parse(buf, len, 0, 0, ret, &used, err, errlen);
    if (pr == 1) break;
    if (pr < 0) goto done;
    if (len >= CA_MAX_RESPONSE - 1) {
      snprintf(err, errlen, "the response from %s is too large", t->hostport);
      goto done;
    }
    int got = SSL_read(ssl, buf + len, (int)(CA_MAX_RESPONSE - 1 - len));
    if (got <= 0) {
      pr = evctl_http_parse(buf, len, 1, 0, ret, &used, err, errlen);
      if (pr == 1) break;
      if (pr == 0) snprintf(err, errlen, "%s closed the connection early", t->hostport);
      goto done;
    }
    len += (size_t)got;
  }
  r = 0;
done:
  if (r < 0 && *ret_cert) {
    X509_free(*ret_cert);
    *ret_cert = NULL;
  }
  free(buf);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  close(fd);
  return r;
}

static char *name_of(const X509_NAME *n) {
  char *s = X509_NAME_oneline(n, NULL, 0);
  return s ? s : strdup("?");
}

static void fingerprint(const uint8_t *der, size_t len, char out[65]) {
  uint8_t md[32];
  unsigned int ml = 0;
  EVP_Digest(der, len, md, &ml, EVP_sha256(), NULL);
  tohex(md, 32, out);
}

int cmd_cage_attest(int argc, char **argv) {
  const char *url = NULL, *root_path = NULL, *toml = NULL, *pcr_arg[4] = {NULL};
  int want_nonce = 0, json = &evctl_cage_ctx && evctl_cage_ctx && evctl_cage_ctx->json;
  static const char *pcr_opts[4] = {"--pcr0", "--pcr1", "--pcr2", "--pcr8"};
  int first = argc > 0 && strcmp(argv[0], "attest") == 0; /* the router's subcommand word */
  for (int i = first; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    const char **slot = NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fputs(usage_text, stdout);
      return 0;
    }
    if (!strcmp(a, "--nonce")) { want_nonce = 1; continue; }
    if (!strcmp(a, "--json")) { json = 1; continue; }
    if (!strcmp(a, "--url")) slot = &url;
    else if (!strcmp(a, "--root")) slot = &root_path;
    else if (!strcmp(a, "--pcrs-from")) slot = &toml;
    for (int k = 0; k < 4 && !slot; k++)
      if (!strcmp(a, pcr_opts[k])) slot = &pcr_arg[k];
    if (!slot) return usage("unknown argument '%s'", a);
    if (!v) return usage("%s needs a value", a);
    if (*slot) return usage("%s given twice", a);
    *slot = v;
    i++;
  }
  if (!url) return usage("%s", "--url is required");
  if (!root_path)
    return usage("%s", "--root is required: the cluster's attestation root, from "
                       "GET /attestation-root.pem on an api listener");
  target t;
  if (parse_url(url, &t) < 0) return usage("'%s' is not an https://host[:port] URL", url);
  uint8_t pcr[4][48];
  int have[4] = {0};
  if (toml) {
    if (pcr_arg[0] || pcr_arg[1] || pcr_arg[2] || pcr_arg[3])
      return usage("%s", "--pcrs-from and --pcrN exclude each other");
    const char *err = NULL;
    if (pcrs_from_toml(toml, pcr, have, &err) <= 0) return usage("%s", err);
  } else {
    for (int k = 0; k < 4; k++)
      if (pcr_arg[k]) {
        if (unhex(pcr_arg[k], pcr[k], 48) < 0) return usage("%s is not 96 hex digits", pcr_opts[k]);
        have[k] = 1;
      }
    if (!have[0] && !have[1] && !have[2] && !have[3])
      return usage("%s", "give the expected PCRs: --pcrs-from cage.toml or --pcr0 .. --pcr8");
  }
  size_t root_len = 0;
  uint8_t *root = load_root(root_path, &root_len);
  if (!root) return usage("%s is not a certificate (PEM or DER)", root_path);

  uint8_t nonce[16];
  char nonce_hex[33] = "", path[128] = "/.well-known/attestation";
  if (want_nonce) {
    if (RAND_bytes(nonce, sizeof nonce) != 1) return 1;
    tohex(nonce, sizeof nonce, nonce_hex);
    snprintf(path, sizeof path, "/.well-known/attestation?nonce=%s", nonce_hex);
  }

  int rc = 1, status = 0;
  char err[512] = "";
  X509 *peer = NULL;
  evctl_response resp;
  memset(&resp, 0, sizeof resp);
  uint8_t *doc = NULL, *spki = NULL;
  size_t doc_len = 0, spki_len = 0;
  cage_attest_doc d;
  memset(&d, 0, sizeof d);
  json_t *body = NULL;
  if (fetch(&t, path, &peer, &resp, err, sizeof err) < 0) goto report;
  if (resp.status != 200) {
    snprintf(err, sizeof err, "GET %s answered %d", path, resp.status);
    goto report;
  }
  body = json_loadb(resp.body, resp.body_len, 0, NULL);
  const char *b64 = json_string_value(json_object_get(body, "attestation_doc"));
  size_t bl = b64 ? strlen(b64) : 0;
  if (!b64 || bl == 0 || bl > 4 * (CAGE_ATTEST_MAX_DOC / 3) + 4 ||
      !(doc = malloc(bl / 4 * 3 + 3))) {
    snprintf(err, sizeof err, "the answer has no attestation_doc");
    goto report;
  }
  int dl = EVP_DecodeBlock(doc, (const unsigned char *)b64, (int)bl);
  if (dl < 0) {
    snprintf(err, sizeof err, "attestation_doc is not base64");
    goto report;
  }
  doc_len = (size_t)dl - (bl >= 1 && b64[bl - 1] == '=') - (bl >= 2 && b64[bl - 2] == '=');
  uint8_t *pder = NULL;
  int pl = i2d_PUBKEY(X509_get0_pubkey(peer), &pder);
  if (pl <= 0) {
    snprintf(err, sizeof err, "the server's certificate has no usable key");
    goto report;
  }
  spki = pder;
  spki_len = (size_t)pl;
  cage_attest_expect e;
  memset(&e, 0, sizeof e);
  e.root_der = root;
  e.root_len = root_len;
  static const int idx[4] = {0, 1, 2, 8};
  for (int k = 0; k < 4; k++)
    if (have[k]) e.pcrs[idx[k]] = pcr[k];
  e.spki_der = spki;
  e.spki_len = spki_len;
  if (want_nonce) {
    e.nonce = nonce;
    e.nonce_len = sizeof nonce;
  }
  status = cage_attest_verify(doc, doc_len, &e, &d);
  if (status != 0) {
    /* what the document says, for the report, even though it was refused */
    cage_attest_doc tmp;
    if (cage_attest_parse(doc, doc_len, &tmp) == 0) {
      d = tmp;
      d.module_id = d.module_id_buf;
    }
    snprintf(err, sizeof err, "%s", cage_attest_strerror(status));
  } else {
    rc = 0;
  }

report:;
  char root_fp[65];
  fingerprint(root, root_len, root_fp);
  const char *why = rc == 0 ? NULL : err;
  char *signer = NULL;
  if (d.cert_der) {
    const uint8_t *p = d.cert_der;
    X509 *sx = d2i_X509(NULL, &p, (long)d.cert_len);
    if (sx) signer = name_of(X509_get_subject_name(sx));
    X509_free(sx);
  }
  if (json) {
    json_t *o = json_object(), *pcrs = json_object(), *exp = json_object();
    json_object_set_new(o, "verified", json_boolean(rc == 0));
    json_object_set_new(o, "error", why ? json_string(why) : json_null());
    json_object_set_new(o, "url", json_string(url));
    json_object_set_new(o, "rootFingerprint", json_string(root_fp));
    if (d.module_id) {
      json_object_set_new(o, "moduleId", json_string(d.module_id));
      json_object_set_new(o, "timestamp", json_integer((json_int_t)d.timestamp_ms));
      for (int i = 0; i < CAGE_ATTEST_NPCRS; i++)
        if (d.pcr_mask & (1u << i)) {
          char k[4], h[97];
          snprintf(k, sizeof k, "%d", i);
          tohex(d.pcrs[i], 48, h);
          json_object_set_new(pcrs, k, json_string(h));
        }
      json_object_set_new(o, "pcrs", pcrs);
      pcrs = NULL;
    }
    for (int k = 0; k < 4; k++)
      if (have[k]) {
        char key[8], h[97];
        snprintf(key, sizeof key, "%d", idx[k]);
        tohex(pcr[k], 48, h);
        json_object_set_new(exp, key, json_string(h));
      }
    json_object_set_new(o, "expectedPcrs", exp);
    json_object_set_new(o, "nonce", want_nonce ? json_string(nonce_hex) : json_null());
    json_object_set_new(o, "signer", signer ? json_string(signer) : json_null());
    json_decref(pcrs);
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) puts(s);
    free(s);
    json_decref(o);
  } else if (rc == 0) {
    printf("attestation verified: %s\n", url);
    printf("  module      %s\n", d.module_id);
    time_t ts = (time_t)(d.timestamp_ms / 1000);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", gmtime(&ts));
    printf("  signed at   %s\n", when);
    for (int k = 0; k < 4; k++) {
      char h[97];
      tohex(d.pcrs[idx[k]], 48, h);
      printf("  PCR%-2d       %s%s\n", idx[k], h, have[k] ? "  (matches)" : "");
    }
    printf("  TLS key     the document names the key of the certificate %s presented\n",
           t.hostport);
    if (want_nonce) printf("  nonce       %s (fresh)\n", nonce_hex);
    printf("  signed by   %s, under the root %s\n", signer ? signer : "?", root_fp);
  } else {
    fprintf(stderr, "evctl: cage attest: %s: attestation FAILED: %s\n", url, why);
    if (status == CAGE_ATTEST_EPCR) {
      for (int k = 0; k < 4; k++) {
        if (!have[k]) continue;
        char want[97], got[97];
        tohex(pcr[k], 48, want);
        tohex(d.pcrs[idx[k]], 48, got);
        if (strcmp(want, got) != 0)
          fprintf(stderr, "  PCR%d expected %s\n       got      %s\n", idx[k], want, got);
      }
    }
  }
  free(signer);
  cage_attest_doc_done(&d);
  json_decref(body);
  OPENSSL_free(spki);
  free(doc);
  X509_free(peer);
  evctl_response_done(&resp);
  free(root);
  return rc;
}
