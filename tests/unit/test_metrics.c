/* Unit tests for core/metrics.c: shared slots, summing, Prometheus rendering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics.h"

static int has_line(const char *text, const char *line) {
  size_t n = strlen(line);
  for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
    if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0')) return 1;
  return 0;
}

static void test_counts_across_processes(void **state) {
  (void)state;
  assert_int_equal(evs__metrics_init(), 0);
  /* Two "workers" in child processes write to their own slots; the parent sums them. */
  for (int slot = 0; slot < 2; slot++) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      evs__metrics_use_slot(slot);
      evs__metrics_request(200, 500);    /* 0.5 ms */
      evs__metrics_request(404, 30000);  /* 30 ms */
      evs__metrics_upstream_error(EVS_UPERR_REFUSED);
      evs__metrics_connections(1);
      evs__metrics_plugin_add("relay-inbound", "relayed_requests", 3);
      _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    assert_int_equal(WEXITSTATUS(st), 0);
  }
  size_t len;
  char *text = evs__metrics_render(&len);
  assert_non_null(text);
  assert_int_equal(strlen(text), len);
  assert_true(has_line(text, "evserver_requests_total{code=\"200\"} 2"));
  assert_true(has_line(text, "evserver_requests_total{code=\"404\"} 2"));
  assert_true(has_line(text, "evserver_request_duration_seconds_bucket{le=\"0.001\"} 2"));
  assert_true(has_line(text, "evserver_request_duration_seconds_bucket{le=\"0.025\"} 2"));
  assert_true(has_line(text, "evserver_request_duration_seconds_bucket{le=\"0.05\"} 4"));
  assert_true(has_line(text, "evserver_request_duration_seconds_bucket{le=\"+Inf\"} 4"));
  assert_true(has_line(text, "evserver_request_duration_seconds_count 4"));
  assert_true(has_line(text, "evserver_upstream_errors_total{kind=\"refused\"} 2"));
  assert_true(has_line(text, "evserver_plugin_events_total{plugin=\"relay-inbound\",name=\"relayed_requests\"} 6"));
  /* Dead workers' connections do not count (pid 0 slots are skipped for the gauge). */
  assert_true(has_line(text, "evserver_active_connections 2"));
  free(text);
}

static void test_plugin_counter_names(void **state) {
  (void)state;
  evs__metrics_use_slot(5);
  assert_int_equal(evs__metrics_plugin_add("p", "ok_name", 1), 0);
  assert_int_not_equal(evs__metrics_plugin_add("p", "Bad-Name", 1), 0);
  assert_int_not_equal(evs__metrics_plugin_add("p", "a\"}injected", 1), 0);
  char longname[100];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  assert_int_not_equal(evs__metrics_plugin_add("p", longname, 1), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counts_across_processes),
      cmocka_unit_test(test_plugin_counter_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
