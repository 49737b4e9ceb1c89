/* Unit tests for core/tls.c: server policy (TLS 1.2/1.3 only, AEAD only, ALPN http/1.1), SNI
 * certificate selection with exact and one-label wildcard names, client verification. Each case
 * runs a real handshake between two in-memory SSL objects. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tls.h"

static char dir[] = "/tmp/evs-test-tls-XXXXXX";

/* Write a self-signed certificate for cn (with that SAN) and its key. */
static void make_cert(const char *cn, const char *cert_path, const char *key_path) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  assert_non_null(k);
  X509 *x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(x, n);
  char san[300];
  snprintf(san, sizeof san, "DNS:%s", cn);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, san);
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  assert_true(X509_sign(x, k, EVP_sha256()) > 0);
  FILE *f = fopen(cert_path, "w");
  PEM_write_X509(f, x);
  fclose(f);
  f = fopen(key_path, "w");
  PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
  fclose(f);
  X509_free(x);
  EVP_PKEY_free(k);
}

static char path_buf[8][512];
static const char *p(int i, const char *name) {
  snprintf(path_buf[i], sizeof path_buf[i], "%s/%s", dir, name);
  return path_buf[i];
}

static evs__settings settings;
static evs__listener_conf listener;
static evs__cert_conf certs[2];
static char *names_api[] = {"api.example.test"};
static char *names_wild[] = {"*.relay.example.test"};

static int setup(void **state) {
  (void)state;
  assert_non_null(mkdtemp(dir));
  make_cert("default.test", p(0, "d.crt"), p(1, "d.key"));
  make_cert("api.example.test", p(2, "a.crt"), p(3, "a.key"));
  make_cert("*.relay.example.test", p(4, "w.crt"), p(5, "w.key"));
  listener = (evs__listener_conf){.name = "tls", .address = "127.0.0.1:0", .tls = 1,
                                  .cert_file = path_buf[0], .key_file = path_buf[1]};
  certs[0] = (evs__cert_conf){"api", names_api, 1, path_buf[2], path_buf[3]};
  certs[1] = (evs__cert_conf){"wild", names_wild, 1, path_buf[4], path_buf[5]};
  settings.certs = certs;
  settings.ncerts = 2;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd);
}

/* Pump bytes between a client and a server SSL until both finish or one fails. */
static int handshake(SSL *c, SSL *s) {
  int cdone = 0, sdone = 0;
  for (int i = 0; i < 100 && !(cdone && sdone); i++) {
    if (!cdone) {
      int r = SSL_do_handshake(c);
      if (r == 1) cdone = 1;
      else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ) return -1;
    }
    if (!sdone) {
      int r = SSL_do_handshake(s);
      if (r == 1) sdone = 1;
      else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ) return -1;
    }
  }
  return cdone && sdone ? 0 : -1;
}

typedef struct result {
  int ok;
  char cn[256];
  char alpn[32];
  int version;
} result;

static result connect_with(SSL_CTX *cctx, const char *sni, void (*tweak)(SSL *)) {
  result res = {0};
  evs__tls_server *t = NULL;
  char err[512];
  assert_int_equal(evs__tls_server_new(&settings, &listener, &t, err, sizeof err), 0);
  SSL *s = SSL_new(evs__tls_server_ctx(t));
  SSL *c = SSL_new(cctx);
  BIO *b1, *b2;
  BIO_new_bio_pair(&b1, 0, &b2, 0);
  SSL_set_bio(c, b1, b1);
  SSL_set_bio(s, b2, b2);
  SSL_set_connect_state(c);
  SSL_set_accept_state(s);
  if (sni) SSL_set_tlsext_host_name(c, sni);
  if (tweak) tweak(c);
  if (handshake(c, s) == 0) {
    res.ok = 1;
    X509 *peer = SSL_get1_peer_certificate(c);
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, res.cn, sizeof res.cn);
    X509_free(peer);
    const unsigned char *a;
    unsigned al;
    SSL_get0_alpn_selected(c, &a, &al);
    snprintf(res.alpn, sizeof res.alpn, "%.*s", (int)al, a);
    res.version = SSL_version(c);
  }
  ERR_clear_error();
  SSL_free(c);
  SSL_free(s);
  evs__tls_server_free(t);
  return res;
}

static SSL_CTX *client_ctx(void) {
  SSL_CTX *c = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
  SSL_CTX_set_security_level(c, 0);
  return c;
}

static void alpn_h11(SSL *c) { SSL_set_alpn_protos(c, (const unsigned char *)"\x02h2\x08http/1.1", 12); }
static void alpn_h2_only(SSL *c) { SSL_set_alpn_protos(c, (const unsigned char *)"\x02h2", 3); }

static void test_sni_selection(void **state) {
  (void)state;
  SSL_CTX *c = client_ctx();
  result r = connect_with(c, "api.example.test", alpn_h11);
  assert_true(r.ok);
  assert_string_equal(r.cn, "api.example.test");
  assert_string_equal(r.alpn, "http/1.1");
  assert_int_equal(r.version, TLS1_3_VERSION);
  r = connect_with(c, "API.Example.Test", NULL);
  assert_string_equal(r.cn, "api.example.test");
  r = connect_with(c, "card.relay.example.test", NULL);
  assert_string_equal(r.cn, "*.relay.example.test");
  /* A wildcard covers one label only. */
  r = connect_with(c, "a.b.relay.example.test", NULL);
  assert_string_equal(r.cn, "default.test");
  r = connect_with(c, "unknown.test", NULL);
  assert_string_equal(r.cn, "default.test");
  r = connect_with(c, NULL, NULL);
  assert_string_equal(r.cn, "default.test");
  SSL_CTX_free(c);
}

static void test_policy(void **state) {
  (void)state;
  SSL_CTX *c = client_ctx();
  SSL_CTX_set_max_proto_version(c, TLS1_1_VERSION);
  SSL_CTX_set_min_proto_version(c, TLS1_VERSION);
  assert_false(connect_with(c, "api.example.test", NULL).ok);
  SSL_CTX_free(c);

  c = client_ctx();
  SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_cipher_list(c, "AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA");
  assert_false(connect_with(c, "api.example.test", NULL).ok); /* CBC suites refused */
  SSL_CTX_set_cipher_list(c, "ECDHE-ECDSA-AES256-GCM-SHA384");
  result r = connect_with(c, "api.example.test", NULL);
  assert_true(r.ok);
  assert_int_equal(r.version, TLS1_2_VERSION);
  SSL_CTX_free(c);

  c = client_ctx();
  assert_false(connect_with(c, "api.example.test", alpn_h2_only).ok);
  SSL_CTX_free(c);
}

static void test_load_errors(void **state) {
  (void)state;
  evs__listener_conf bad = listener;
  bad.key_file = path_buf[3]; /* key of another certificate */
  evs__tls_server *t = NULL;
  char err[512];
  assert_int_not_equal(evs__tls_server_new(&settings, &bad, &t, err, sizeof err), 0);
  assert_non_null(strstr(err, "does not match"));
  assert_null(strstr(err, "PRIVATE KEY")); /* only file names, never key material */
  bad.cert_file = "/nonexistent.crt";
  assert_int_not_equal(evs__tls_server_new(&settings, &bad, &t, err, sizeof err), 0);
  assert_non_null(strstr(err, "/nonexistent.crt"));
}

static void test_client_verification(void **state) {
  (void)state;
  char err[512];
  /* Verification on: trusting the api cert as CA verifies it; the default cert fails. */
  SSL_CTX *v = evs__tls_client_ctx(path_buf[2], NULL, NULL, NULL, 1, err, sizeof err);
  assert_non_null(v);
  assert_ptr_equal(v, evs__tls_client_ctx(path_buf[2], NULL, NULL, NULL, 1, err, sizeof err)); /* cached */
  result r = connect_with(v, "api.example.test", NULL);
  assert_true(r.ok);
  r = connect_with(v, "unknown.test", NULL); /* gets default.test, not trusted */
  assert_false(r.ok);
  assert_null(evs__tls_client_ctx("/nonexistent-ca.pem", NULL, NULL, NULL, 1, err, sizeof err));
  assert_null(evs__tls_client_ctx(NULL, path_buf[2], path_buf[1], NULL, 0, err, sizeof err)); /* mismatched mTLS pair */
  evs__tls_client_cache_clear();
}

static void write_file(const char *path, const char *text, size_t len) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, len, f), len);
  fclose(f);
}

/* An encrypted client key loads with the passphrase from its file (first line, LF or CRLF
 * removed), and fails cleanly without it, with a wrong one, or with an unusable file; the
 * passphrase never appears in the error. */
static void test_client_key_passphrase(void **state) {
  (void)state;
  static const char pass[] = "correct horse battery staple";
  char err[512], enc[600], pf[600], name[600];
  snprintf(enc, sizeof enc, "%s/enc.key", dir);
  snprintf(pf, sizeof pf, "%s/key.pass", dir);
  FILE *f = fopen(path_buf[1], "r");
  assert_non_null(f);
  EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  assert_non_null(k);
  f = fopen(enc, "w");
  assert_int_equal(PEM_write_PrivateKey(f, k, EVP_aes_256_cbc(), (const unsigned char *)pass,
                                        (int)strlen(pass), NULL, NULL),
                   1);
  fclose(f);
  EVP_PKEY_free(k);

  write_file(pf, "correct horse battery staple\n", strlen(pass) + 1);
  SSL_CTX *c = evs__tls_client_ctx(NULL, path_buf[0], enc, pf, 0, err, sizeof err);
  assert_non_null(c);
  evs__tls_client_cache_clear();
  write_file(pf, "correct horse battery staple\r\nsecond line\n", strlen(pass) + 14);
  assert_non_null(evs__tls_client_ctx(NULL, path_buf[0], enc, pf, 0, err, sizeof err));
  evs__tls_client_cache_clear();
  write_file(pf, "correct horse battery staple", strlen(pass)); /* no line end */
  assert_non_null(evs__tls_client_ctx(NULL, path_buf[0], enc, pf, 0, err, sizeof err));
  evs__tls_client_cache_clear();

  /* No passphrase file: refused, not prompted for. */
  assert_null(evs__tls_client_ctx(NULL, path_buf[0], enc, NULL, 0, err, sizeof err));
  /* Wrong passphrase. */
  write_file(pf, "correct horse battery stapler\n", strlen(pass) + 2);
  assert_null(evs__tls_client_ctx(NULL, path_buf[0], enc, pf, 0, err, sizeof err));
  assert_non_null(strstr(err, "wrong passphrase"));
  assert_non_null(strstr(err, pf));
  assert_null(strstr(err, "horse"));
  /* Empty, a line too long, missing. */
  write_file(pf, "\n", 1);
  assert_null(evs__tls_client_ctx(NULL, path_buf[0], enc, pf, 0, err, sizeof err));
  assert_non_null(strstr(err, "cannot read the passphrase"));
  char big[1100];
  memset(big, 'x', sizeof big);
  write_file(pf, big, sizeof big);
  assert_null(evs__tls_client_ctx(NULL, path_buf[0], enc, pf, 0, err, sizeof err));
  assert_non_null(strstr(err, "cannot read the passphrase"));
  snprintf(name, sizeof name, "%s/missing.pass", dir);
  assert_null(evs__tls_client_ctx(NULL, path_buf[0], enc, name, 0, err, sizeof err));
  assert_non_null(strstr(err, "missing.pass"));
  /* A passphrase of 1023 bytes is the longest accepted. */
  write_file(pf, big, 1023);
  f = fopen(enc, "w");
  k = NULL;
  {
    FILE *kf = fopen(path_buf[1], "r");
    k = PEM_read_PrivateKey(kf, NULL, NULL, NULL);
    fclose(kf);
  }
  assert_int_equal(PEM_write_PrivateKey(f, k, EVP_aes_256_cbc(), (const unsigned char *)big,
                                        1023, NULL, NULL),
                   1);
  fclose(f);
  EVP_PKEY_free(k);
  assert_non_null(evs__tls_client_ctx(NULL, path_buf[0], enc, pf, 0, err, sizeof err));
  evs__tls_client_cache_clear();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sni_selection),
      cmocka_unit_test(test_policy),
      cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_client_verification),
      cmocka_unit_test(test_client_key_passphrase),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
