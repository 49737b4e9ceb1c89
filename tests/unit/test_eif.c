/*
 * Unit tests for plugins/cage-broker/eif.c and cpio.c. The expected PCRs and image digest
 * below were computed independently of this library, by a short Python script laying the image
 * out as Nitro's EifBuilder does (struct.pack, zlib.crc32, hashlib.sha384: the reader class of
 * tests/integration/test_96_cage_build.py is the same logic). Signed images: PCR8 is recomputed here with EVP over the certificate's
 * DER, the signature verifies, and any change to the measured bytes breaks the CRC or the
 * signature. The ramdisk writer: identical bytes for the same tree however it was added.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <zlib.h>

#include "cpio.h"
#include "eif.h"

#define PCR0 "0de1f71561dbb522c04ecc2253efd777346e426b953b457a"                                \
             "0f81a4790dfe7f6af30ab0b327ac5b3b0eaa38f037ef5432"
#define PCR1 "d1484a3d664a0310b9976f5fab992430153c264fa75539c0"                                \
             "83f551ddac9befcaba25adad96506ce3fb3f6e193a5feed0"
#define PCR2 "65630beaa0b40f405cd5666229feb69e0cb106fcc4e348e5"                                \
             "a21da70fb865dfbbb0afbcb799014a9328fda049d84e2bf1"
#define IMG_SHA256 "5e3df64c77b69dc7cc730cb0146d7847a10eea8ad50689523f157baf351c9f0a"
#define IMG_LEN 2275

static uint8_t kernel[1000], r0[400], r1[231];
static const char meta[] = "{\"ImageName\":\"t\"}";
static eif_blob rds[2];

static void inputs(eif_build_in *in) {
  for (size_t i = 0; i < sizeof kernel; i++) kernel[i] = (uint8_t)(i % 251);
  for (size_t i = 0; i < 100; i++) memcpy(r0 + 4 * i, "boot", 4);
  for (size_t i = 0; i < 77; i++) memcpy(r1 + 3 * i, "app", 3);
  rds[0] = (eif_blob){r0, sizeof r0};
  rds[1] = (eif_blob){r1, sizeof r1};
  memset(in, 0, sizeof *in);
  in->kernel = (eif_blob){kernel, sizeof kernel};
  in->cmdline = "console=ttyS0 quiet";
  in->ramdisks = rds;
  in->nramdisks = 2;
  in->metadata = (eif_blob){(const uint8_t *)meta, strlen(meta)};
}

static void hex(const uint8_t *p, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[i]);
}

static void test_unsigned_matches_reference(void **state) {
  (void)state;
  eif_build_in in;
  inputs(&in);
  uint8_t *img;
  size_t len;
  eif_pcrs pcrs;
  const char *why = NULL;
  assert_int_equal(eif_build(&in, &img, &len, &pcrs, &why), 0);
  assert_int_equal(len, IMG_LEN);
  uint8_t d[32];
  char h[97];
  EVP_Digest(img, len, d, NULL, EVP_sha256(), NULL);
  hex(d, 32, h);
  assert_string_equal(h, IMG_SHA256);
  eif_pcr_hex(pcrs.pcr0, h);
  assert_string_equal(h, PCR0);
  eif_pcr_hex(pcrs.pcr1, h);
  assert_string_equal(h, PCR1);
  eif_pcr_hex(pcrs.pcr2, h);
  assert_string_equal(h, PCR2);
  assert_false(pcrs.has_pcr8);

  /* Read back: the same PCRs from the file's sections, sections where they were put. */
  eif_image *e;
  assert_int_equal(eif_parse(img, len, &e, &why), 0);
  eif_pcrs back;
  assert_int_equal(eif_pcrs_of(e, &back), 0);
  assert_memory_equal(&back, &pcrs, sizeof back);
  const uint8_t *p;
  size_t n;
  assert_int_equal(eif_section(e, EIF_SECTION_RAMDISK, 1, &p, &n), 0);
  assert_int_equal(n, sizeof r1);
  assert_memory_equal(p, r1, n);
  assert_int_equal(eif_section(e, EIF_SECTION_CMDLINE, 0, &p, &n), 0);
  assert_int_equal(n, strlen(in.cmdline)); /* no NUL, as Nitro */
  assert_int_equal(eif_section(e, EIF_SECTION_RAMDISK, 2, &p, &n), -ENOENT);
  assert_int_equal(eif_signing_cert(e, &p, &n), -ENOENT);
  assert_int_equal(eif_verify_signature(e, &why), -ENOENT);
  uint64_t mem, cpus;
  uint16_t flags;
  eif_header_info(e, &flags, &mem, &cpus);
  assert_int_equal(mem, 1ull << 30);
  assert_int_equal(cpus, 2);
  eif_free(e);

  /* eif_write gives the same bytes. */
  char path[] = "/tmp/evs-eif-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(eif_write(path, &in, NULL, &why), 0);
  assert_int_equal(eif_open(path, &e, &why), 0);
  eif_free(e);
  FILE *f = fopen(path, "rb");
  uint8_t *again = malloc(len + 1);
  assert_int_equal(fread(again, 1, len + 1, f), len);
  fclose(f);
  assert_memory_equal(again, img, len);
  free(again);
  unlink(path);
  free(img);
}

static void test_reader_refuses(void **state) {
  (void)state;
  eif_build_in in;
  inputs(&in);
  uint8_t *img;
  size_t len;
  const char *why = NULL;
  eif_image *e = NULL;
  assert_int_equal(eif_build(&in, &img, &len, NULL, &why), 0);
  /* Every truncation is refused. */
  for (size_t cut = 0; cut < len; cut += 37) {
    why = NULL;
    assert_int_equal(eif_parse(img, cut, &e, &why), -EINVAL);
    assert_non_null(why);
  }
  /* Any flipped bit of a section or of the header is refused (CRC or structure). */
  for (size_t i = 0; i < len; i += 13) {
    img[i] ^= 0x10;
    why = NULL;
    assert_int_equal(eif_parse(img, len, &e, &why), -EINVAL);
    assert_non_null(why);
    img[i] ^= 0x10;
  }
  assert_int_equal(eif_parse(img, len, &e, &why), 0);
  eif_free(e);
  assert_int_equal(eif_open("/nonexistent/x.eif", &e, &why), -ENOENT);
  free(img);
  /* Bad inputs to the writer. */
  in.nramdisks = 0;
  assert_int_equal(eif_build(&in, &img, &len, NULL, &why), -EINVAL);
  inputs(&in);
  in.signing_cert = (eif_blob){(const uint8_t *)"x", 1};
  assert_int_equal(eif_build(&in, &img, &len, NULL, &why), -EINVAL);
}

/* A P-384 key and a self-signed certificate, as PEM. */
static void make_cert(const char *cn, char **cert_pem, char **key_pem) {
  EVP_PKEY *k = EVP_EC_gen("P-384");
  assert_non_null(k);
  X509 *x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_NAME *nm = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(x, nm);
  X509_set_pubkey(x, k);
  assert_true(X509_sign(x, k, EVP_sha384()) > 0);
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  char *p;
  long n = BIO_get_mem_data(b, &p);
  *cert_pem = strndup(p, (size_t)n);
  BIO_free(b);
  b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
  n = BIO_get_mem_data(b, &p);
  *key_pem = strndup(p, (size_t)n);
  BIO_free(b);
  X509_free(x);
  EVP_PKEY_free(k);
}

static void expected_pcr8(const char *cert_pem, uint8_t out[48]) {
  BIO *b = BIO_new_mem_buf(cert_pem, -1);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  unsigned char *der = NULL;
  int n = i2d_X509(x, &der);
  uint8_t inner[96] = {0};
  EVP_Digest(der, (size_t)n, inner + 48, NULL, EVP_sha384(), NULL);
  EVP_Digest(inner, 96, out, NULL, EVP_sha384(), NULL);
  OPENSSL_free(der);
  X509_free(x);
  BIO_free(b);
}

static void test_signed(void **state) {
  (void)state;
  char *cert, *key, *cert2, *key2;
  make_cert("one", &cert, &key);
  make_cert("two", &cert2, &key2);
  eif_build_in in;
  inputs(&in);
  in.signing_cert = (eif_blob){(const uint8_t *)cert, strlen(cert)};
  in.signing_key = (eif_blob){(const uint8_t *)key, strlen(key)};
  uint8_t *img;
  size_t len;
  eif_pcrs pcrs;
  const char *why = NULL;
  assert_int_equal(eif_build(&in, &img, &len, &pcrs, &why), 0);
  char h[97];
  eif_pcr_hex(pcrs.pcr0, h);
  assert_string_equal(h, PCR0); /* signing does not change PCR0..2 */
  eif_pcr_hex(pcrs.pcr2, h);
  assert_string_equal(h, PCR2);
  uint8_t want8[48];
  expected_pcr8(cert, want8);
  assert_true(pcrs.has_pcr8);
  assert_memory_equal(pcrs.pcr8, want8, 48);

  eif_image *e;
  assert_int_equal(eif_parse(img, len, &e, &why), 0);
  eif_pcrs back;
  eif_pcrs_of(e, &back);
  assert_memory_equal(&back, &pcrs, sizeof back);
  assert_int_equal(eif_verify_signature(e, &why), 0);
  const uint8_t *p;
  size_t n;
  assert_int_equal(eif_section(e, EIF_SECTION_SIGNATURE, 0, &p, &n), 0);
  /* Nitro's shape: array(1), map(2), "signing_certificate" first. */
  assert_int_equal(p[0], 0x81);
  assert_int_equal(p[1], 0xa2);
  assert_int_equal(p[2], 0x60 + 19);
  assert_memory_equal(p + 3, "signing_certificate", 19);
  eif_free(e);

  /* A signature moved onto another image does not verify: swap the app ramdisk, keep the
   * signature section and fix the CRC the way an attacker could. */
  uint8_t *img2;
  size_t len2;
  r1[0] ^= 1;
  in.signing_cert = (eif_blob){0};
  in.signing_key = (eif_blob){0};
  eif_build_in in2 = in;
  in2.ramdisks = rds;
  /* Build an unsigned twin with a changed ramdisk, then graft the signature section on. */
  assert_int_equal(eif_build(&in2, &img2, &len2, NULL, &why), 0);
  size_t off_app = len2 - sizeof r1;
  memcpy(img + off_app, img2 + off_app, sizeof r1);
  uLong crc = crc32(0, img, 544);
  crc = crc32(crc, img + 548, (uInt)(len - 548));
  img[544] = (uint8_t)(crc >> 24), img[545] = (uint8_t)(crc >> 16);
  img[546] = (uint8_t)(crc >> 8), img[547] = (uint8_t)crc;
  assert_int_equal(eif_parse(img, len, &e, &why), 0);
  assert_int_equal(eif_verify_signature(e, &why), -EBADMSG);
  eif_free(e);
  free(img2);
  r1[0] ^= 1;

  /* Another certificate changes PCR8 only. */
  in.signing_cert = (eif_blob){(const uint8_t *)cert2, strlen(cert2)};
  in.signing_key = (eif_blob){(const uint8_t *)key2, strlen(key2)};
  eif_pcrs pcrs2;
  free(img);
  assert_int_equal(eif_build(&in, &img, &len, &pcrs2, &why), 0);
  assert_memory_equal(pcrs2.pcr0, pcrs.pcr0, 48);
  assert_memory_equal(pcrs2.pcr1, pcrs.pcr1, 48);
  assert_memory_equal(pcrs2.pcr2, pcrs.pcr2, 48);
  assert_memory_not_equal(pcrs2.pcr8, pcrs.pcr8, 48);
  free(img);
  /* A key that is not the certificate's is refused. */
  in.signing_key = (eif_blob){(const uint8_t *)key, strlen(key)};
  assert_int_equal(eif_build(&in, &img, &len, NULL, &why), -EINVAL);
  free(cert), free(key), free(cert2), free(key2);
}

static uint8_t *gunzip(const uint8_t *p, size_t n, size_t *ret_len) {
  size_t cap = 1 << 20;
  uint8_t *out = malloc(cap);
  z_stream z = {0};
  assert_int_equal(inflateInit2(&z, 31), Z_OK);
  z.next_in = (Bytef *)(uintptr_t)p;
  z.avail_in = (uInt)n;
  z.next_out = out;
  z.avail_out = (uInt)cap;
  assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
  *ret_len = z.total_out;
  inflateEnd(&z);
  return out;
}

static void test_cpio(void **state) {
  (void)state;
  cpio_builder *a = cpio_new(), *b = cpio_new();
  /* The same entries in another order give the same bytes. */
  assert_int_equal(cpio_add_file(a, "init", 0755, (const uint8_t *)"xyz", 3), 0);
  assert_int_equal(cpio_add_dir(a, "lib", 0755), 0);
  assert_int_equal(cpio_add_symlink(a, "lib/link", "../init"), 0);
  assert_int_equal(cpio_add_symlink(b, "lib/link", "../init"), 0);
  assert_int_equal(cpio_add_dir(b, "lib", 0755), 0);
  assert_int_equal(cpio_add_file(b, "init", 0700, (const uint8_t *)"old", 3), 0);
  assert_int_equal(cpio_add_file(b, "init", 0755, (const uint8_t *)"xyz", 3), 0); /* last wins */
  assert_int_equal(cpio_add_file(a, "../x", 0644, NULL, 0), -EINVAL);
  assert_int_equal(cpio_add_file(a, "/x", 0644, NULL, 0), -EINVAL);
  uint8_t *ga, *gb;
  size_t na, nb;
  const char *why;
  assert_int_equal(cpio_write_gz(a, &ga, &na, &why), 0);
  assert_int_equal(cpio_write_gz(b, &gb, &nb, &why), 0);
  assert_int_equal(na, nb);
  assert_memory_equal(ga, gb, na);
  /* gzip header: no name, mtime 0. */
  assert_int_equal(ga[0], 0x1f);
  assert_int_equal(ga[3], 0);
  assert_int_equal(ga[4] | ga[5] | ga[6] | ga[7], 0);
  size_t n;
  uint8_t *raw = gunzip(ga, na, &n);
  assert_memory_equal(raw, "070701", 6);
  /* First entry "init", ino 1, mode 0100755, uid/gid 0, mtime 0, size 3. */
  assert_memory_equal(raw + 6, "00000001000081ED00000000000000000000000100000000000000030", 57);
  assert_memory_equal(raw + 110, "init\0", 5);
  assert_memory_equal(raw + 116, "xyz", 3);
  assert_true(memmem(raw, n, "TRAILER!!!", 10) != NULL);
  assert_int_equal(n % 4, 0);
  free(raw);
  free(ga);
  free(gb);
  cpio_free(a);
  cpio_free(b);
}

/* A tree on disk: files, a directory, a symbolic link and a FIFO come out sorted, with their
 * modes, mtimes 0 and owners kept or dropped on request; a socket is left out. */
static void test_cpio_tree(void **state) {
  (void)state;
  char dir[] = "/tmp/evs-cpio-XXXXXX", p[600];
  assert_non_null(mkdtemp(dir));
  snprintf(p, sizeof p, "%s/b", dir);
  assert_int_equal(mkdir(p, 0750), 0);
  snprintf(p, sizeof p, "%s/b/file", dir);
  FILE *f = fopen(p, "w");
  fputs("content", f);
  fclose(f);
  assert_int_equal(chmod(p, 0640), 0);
  int root = geteuid() == 0; /* owners can only be given away by root */
  if (root) assert_int_equal(chown(p, 1234, 5678), 0);
  snprintf(p, sizeof p, "%s/a-link", dir);
  assert_int_equal(symlink("b/file", p), 0);
  snprintf(p, sizeof p, "%s/fifo", dir);
  assert_int_equal(mkfifo(p, 0600), 0);
  cpio_builder *c = cpio_new();
  const char *why;
  char *bad = NULL;
  assert_int_equal(cpio_add_tree(c, "rootfs", dir, 1, &why, &bad), 0);
  uint8_t *gz;
  size_t n, rn;
  assert_int_equal(cpio_write_gz(c, &gz, &n, &why), 0);
  uint8_t *raw = gunzip(gz, n, &rn);
  /* Names in order: rootfs, rootfs/a-link, rootfs/b, rootfs/b/file, rootfs/fifo. */
  const char *want[] = {"rootfs", "rootfs/a-link", "rootfs/b", "rootfs/b/file", "rootfs/fifo"};
  size_t off = 0;
  for (size_t i = 0; i < 5; i++) {
    char h[9] = {0};
    unsigned long fld[13];
    for (int k = 0; k < 13; k++) {
      memcpy(h, raw + off + 6 + 8 * k, 8);
      fld[k] = strtoul(h, NULL, 16);
    }
    const char *name = (const char *)raw + off + 110;
    assert_string_equal(name, want[i]);
    assert_int_equal(fld[0], i + 1); /* inode */
    assert_int_equal(fld[5], 0);     /* mtime */
    if (i == 3) {
      assert_int_equal(fld[1], 0100640);
      assert_int_equal(fld[2], root ? 1234 : geteuid());
      assert_int_equal(fld[3], root ? 5678 : getegid());
      assert_int_equal(fld[6], 7);
    }
    if (i == 1) assert_int_equal(fld[1] & 0170000, 0120000);
    if (i == 4) assert_int_equal(fld[1], 010600);
    off = (off + 110 + fld[11] + 3) & ~(size_t)3;
    off = (off + fld[6] + 3) & ~(size_t)3;
  }
  assert_memory_equal(raw + off + 110, "TRAILER!!!", 10);
  free(raw);
  free(gz);
  cpio_free(c);
  /* Owners dropped. */
  c = cpio_new();
  assert_int_equal(cpio_add_tree(c, "r", dir, 0, &why, &bad), 0);
  assert_int_equal(cpio_write_gz(c, &gz, &n, &why), 0);
  raw = gunzip(gz, n, &rn);
  assert_null(memmem(raw, rn, "000004D2", 8)); /* uid 1234 nowhere */
  free(raw);
  free(gz);
  cpio_free(c);
  c = cpio_new();
  assert_int_equal(cpio_add_tree(c, "r", "/nonexistent-evs", 0, &why, &bad), -ENOTDIR);
  cpio_free(c);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unsigned_matches_reference),
      cmocka_unit_test(test_reader_refuses),
      cmocka_unit_test(test_signed),
      cmocka_unit_test(test_cpio),
      cmocka_unit_test(test_cpio_tree),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
