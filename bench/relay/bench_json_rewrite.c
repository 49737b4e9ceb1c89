/*
 * bench_json_rewrite: single-core throughput of the Inbound Relay's streaming JSON rewriter
 * (plugins/relay-common/json_rewrite.c) alone, on a ~1 MB generated request body with a few
 * selected fields, fed in 64 KiB pieces; the transform returns a fixed ev:-sized literal. The
 * baseline, measured in the same run, is a plain pass over the same bytes (memchr for '"' plus
 * memcpy into a scratch buffer), i.e. roughly the cost of merely forwarding the body.
 * Figures are the median of 7 runs of >= 0.3 s each, in MB/s (10^6 bytes).
 *
 *   cc -O2 -Iplugins/relay-common bench/relay/bench_json_rewrite.c \
 *     plugins/relay-common/json_rewrite.c plugins/relay-common/jsonpath.c -o /tmp/bench_jr
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json_rewrite.h"
#include "jsonpath.h"

static size_t sink_bytes;
static unsigned ncalls;

static int emit(void *ud, const char *b, size_t n) {
  (void)ud;
  (void)b;
  sink_bytes += n;
  return 0;
}

static int transform(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                     size_t *ret_len) {
  static const char lit[] = "\"ev:QkTC:aXZpdml2aXZpdml2:QW5FcGhlbWVyYWxQdWJsaWNLZXlBbkVwaGVtZXJh"
                            "bFB1YmxpY0tleQ:Y2lwaGVydGV4dGFuZHRhZw:$\"";
  (void)ud, (void)type, (void)v, (void)n;
  ncalls++;
  *ret = lit;
  *ret_len = sizeof lit - 1;
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static char *make_doc(size_t target, size_t *ret_len) {
  char *d = malloc(target + 1024);
  size_t n = 0;
  unsigned i = 0;
  if (!d) exit(1);
  n += (size_t)sprintf(d + n, "{\"request_id\": \"b7e1c0d2\", \"customer\": {\"name\": \"Claude "
                              "Shannon\", \"ssn\": \"123-12-1234\", \"email\": \"cs@example.com\"},"
                              "\n \"items\": [");
  while (n < target - 300) {
    n += (size_t)sprintf(d + n,
                         "%s\n  {\"sku\": \"SKU-%06u\", \"qty\": %u, \"price\": %u.%02u, "
                         "\"note\": \"caf\\u00e9 \\\"%u\\\" \xc3\xa9t\xc3\xa9\", \"tags\": "
                         "[\"a\", \"b\", true, null], \"card\": %s}",
                         i ? "," : "", i, i % 9 + 1, i % 1000, i % 100, i,
                         i % 500 == 0 ? "\"4111111111111111\"" : "null");
    i++;
  }
  n += (size_t)sprintf(d + n, "\n ]}\n");
  *ret_len = n;
  return d;
}

typedef void (*bench_fn)(const char *doc, size_t len, const evs__jsonpath *jp);

static void run_rewrite(const char *doc, size_t len, const evs__jsonpath *jp) {
  evs__json_rewrite *rw = NULL;
  if (evs__json_rewrite_new(jp, NULL, emit, transform, NULL, &rw) != 0) exit(1);
  for (size_t i = 0; i < len; i += 65536)
    if (evs__json_rewrite_feed(rw, doc + i, len - i < 65536 ? len - i : 65536) != 0) exit(2);
  if (evs__json_rewrite_finish(rw) != 0) exit(3);
  evs__json_rewrite_free(rw);
}

static char scratch[65536];
static void run_baseline(const char *doc, size_t len, const evs__jsonpath *jp) {
  (void)jp;
  for (size_t i = 0; i < len; i += 65536) {
    size_t c = len - i < 65536 ? len - i : 65536;
    const char *p = doc + i, *e = p + c;
    while ((p = memchr(p, '"', (size_t)(e - p)))) p++, sink_bytes++;
    memcpy(scratch, doc + i, c);
    sink_bytes += (unsigned char)scratch[c - 1];
  }
}

static double measure(bench_fn fn, const char *doc, size_t len, const evs__jsonpath *jp) {
  double r[7];
  for (int k = 0; k < 7; k++) {
    double t0 = now(), t;
    unsigned it = 0;
    do {
      fn(doc, len, jp);
      it++;
    } while ((t = now() - t0) < 0.3);
    r[k] = (double)len * it / t / 1e6;
  }
  qsort(r, 7, sizeof r[0], cmp);
  return r[3];
}

int main(int argc, char **argv) {
  const char *sel[] = {"$.customer.ssn", "$.items[*].card", "$..email"};
  evs__jsonpath *jp = NULL;
  char err[256];
  size_t len;
  char *doc = make_doc(1000000, &len);
  const char *sel2[] = {"$.customer.ssn", "$.items[*].card"};
  evs__jsonpath *jp2 = NULL;
  double base, rw_sel, rw_sel2, rw_none;
  if (evs__jsonpath_compile(sel, 3, &jp, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  if (evs__jsonpath_compile(sel2, 2, &jp2, err, sizeof err) != 0) return 1;
  ncalls = 0;
  run_rewrite(doc, len, jp);
  printf("document: %zu bytes, %u selected values\n", len, ncalls);
  if (argc > 1 && strcmp(argv[1], "--profile") == 0) { /* for perf: the selected run alone */
    printf("rewrite, 3 selectors            %8.0f MB/s\n", measure(run_rewrite, doc, len, jp));
    evs__jsonpath_free(jp);
    evs__jsonpath_free(jp2);
    free(doc);
    return 0;
  }
  base = measure(run_baseline, doc, len, NULL);
  rw_sel = measure(run_rewrite, doc, len, jp);
  rw_sel2 = measure(run_rewrite, doc, len, jp2);
  rw_none = measure(run_rewrite, doc, len, NULL);
  printf("baseline (memchr + memcpy)      %8.0f MB/s\n", base);
  printf("rewrite, 3 selectors (1 is $..) %8.0f MB/s\n", rw_sel);
  printf("rewrite, 2 child selectors      %8.0f MB/s\n", rw_sel2);
  printf("validate only, no selectors     %8.0f MB/s\n", rw_none);
  evs__jsonpath_free(jp);
  evs__jsonpath_free(jp2);
  free(doc);
  return 0;
}
