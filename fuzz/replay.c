/*
 * replay.c: runs a libFuzzer target's LLVMFuzzerTestOneInput once on every file named on the
 * command line or found in a directory named there, without libFuzzer. ctest builds each
 * fuzz/fuzz_*.c with it (fuzz-replay/<target>) and replays fuzz/regressions/<target>/ (every
 * input that ever crashed the target) and fuzz/corpus/<target>/: deterministic, in the normal
 * and the sanitizer builds, apart from the time-boxed random runs of scripts/test.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "%s: cannot open\n", path);
    return -1;
  }
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 4096;
      uint8_t *nb = realloc(buf, cap);
      if (!nb) abort();
      buf = nb;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    if (n == 0) break;
    len += n;
  }
  fclose(f);
  /* A copy of exactly the input's size, so ASan sees reads past its end. */
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact) abort();
  if (len) memcpy(exact, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 0;
}

int main(int argc, char **argv) {
  int files = 0, failed = 0;
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  for (int i = 1; i < argc; i++) {
    struct stat sb;
    if (stat(argv[i], &sb) < 0) continue; /* a target without a corpus */
    if (!S_ISDIR(sb.st_mode)) {
      failed += replay_file(argv[i]) < 0;
      files++;
      continue;
    }
    struct dirent **ents;
    int n = scandir(argv[i], &ents, NULL, alphasort);
    for (int k = 0; k < n; k++) {
      if (ents[k]->d_name[0] != '.') {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[i], ents[k]->d_name);
        printf("%s\n", path);
        fflush(stdout);
        failed += replay_file(path) < 0;
        files++;
      }
      free(ents[k]);
    }
    free(ents);
  }
  printf("%d input(s) replayed\n", files);
  return failed ? 1 : 0;
}
