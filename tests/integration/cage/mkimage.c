/*
 * evs-test-cage-mkimage: assembles a cage image for the runner's tests (test_97) without a
 * container builder: the bootstrap ramdisk (/init and the modules with their order), the
 * application ramdisk (a directory as /rootfs, and /cage.json), a kernel and its cmdline, with
 * the same writers `evctl cage build` uses (cpio.c, eif.c).
 *   evs-test-cage-mkimage --out F --kernel F --cmdline S --init F --rootfs DIR --cage-json F
 *                         [--module F ...] [--keep-owner 1]  (the rootfs's owners, as
 *                         `evctl cage build` keeps an image's; else 0:0)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpio.h"
#include "eif.h"

static uint8_t *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    exit(1);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *p = malloc((size_t)n + 1);
  if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) exit(1);
  fclose(f);
  *len = (size_t)n;
  return p;
}

int main(int argc, char **argv) {
  const char *out = NULL, *kernel = NULL, *cmdline = "", *init = NULL, *rootfs = NULL,
             *cj = NULL, *mods[32];
  int nmods = 0, keep_owner = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--out")) out = argv[i + 1];
    else if (!strcmp(argv[i], "--kernel")) kernel = argv[i + 1];
    else if (!strcmp(argv[i], "--cmdline")) cmdline = argv[i + 1];
    else if (!strcmp(argv[i], "--init")) init = argv[i + 1];
    else if (!strcmp(argv[i], "--rootfs")) rootfs = argv[i + 1];
    else if (!strcmp(argv[i], "--cage-json")) cj = argv[i + 1];
    else if (!strcmp(argv[i], "--keep-owner")) keep_owner = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--module") && nmods < 32) mods[nmods++] = argv[i + 1];
  }
  if (!out || !kernel || !init || !rootfs || !cj) {
    fprintf(stderr, "usage: see the file's head\n");
    return 2;
  }
  const char *why = "";
  cpio_builder *boot = cpio_new(), *app = cpio_new();
  char order[2048] = "";
  int r = cpio_add_disk_file(boot, "init", 0755, init);
  cpio_add_dir(boot, "lib", 0755);
  cpio_add_dir(boot, "lib/modules", 0755);
  cpio_add_dir(boot, "lib/modules/evs", 0755);
  for (int i = 0; i < nmods && r == 0; i++) {
    const char *base = strrchr(mods[i], '/') ? strrchr(mods[i], '/') + 1 : mods[i];
    char p[256];
    snprintf(p, sizeof p, "lib/modules/evs/%s", base);
    r = cpio_add_disk_file(boot, p, 0644, mods[i]);
    strncat(order, base, sizeof order - strlen(order) - 2);
    strcat(order, "\n");
  }
  if (r == 0)
    r = cpio_add_file(boot, "lib/modules/evs/order", 0644, (const uint8_t *)order, strlen(order));
  char *bad = NULL;
  if (r == 0) r = cpio_add_tree(app, "rootfs", rootfs, keep_owner, &why, &bad);
  size_t cjl;
  uint8_t *cjb = slurp(cj, &cjl);
  if (r == 0) r = cpio_add_file(app, "cage.json", 0644, cjb, cjl);
  eif_blob rd[2];
  uint8_t *b0, *b1;
  if (r == 0) r = cpio_write_gz(boot, &b0, &rd[0].len, &why);
  if (r == 0) r = cpio_write_gz(app, &b1, &rd[1].len, &why);
  if (r < 0) {
    fprintf(stderr, "mkimage: %s %s\n", why, bad ? bad : "");
    return 1;
  }
  rd[0].data = b0;
  rd[1].data = b1;
  eif_build_in in;
  memset(&in, 0, sizeof in);
  in.kernel.data = slurp(kernel, &in.kernel.len);
  in.cmdline = cmdline;
  in.ramdisks = rd;
  in.nramdisks = 2;
  in.metadata.data = (const uint8_t *)"{}";
  in.metadata.len = 2;
  eif_pcrs pcrs;
  int w = eif_write(out, &in, &pcrs, &why);
  free((void *)in.kernel.data);
  free(b0);
  free(b1);
  free(cjb);
  free(bad);
  cpio_free(boot);
  cpio_free(app);
  if (w < 0) {
    fprintf(stderr, "mkimage: %s\n", why);
    return 1;
  }
  char hex[2 * EIF_PCR_LEN + 1];
  eif_pcr_hex(pcrs.pcr0, hex);
  printf("%s\n", hex);
  return 0;
}
