/* Unit tests for core/metrics.c: shared slots, summing, Prometheus rendering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
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

static uint64_t key4(const char *a) {
  struct sockaddr_in in = {.sin_family = AF_INET};
  inet_pton(AF_INET, a, &in.sin_addr);
  return evs__metrics_ip_key((struct sockaddr *)&in);
}

static uint64_t key6(const char *a) {
  struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
  inet_pton(AF_INET6, a, &in6.sin6_addr);
  return evs__metrics_ip_key((struct sockaddr *)&in6);
}

/* limits.max_connections(_per_ip) count node-wide: two workers' connections add up, per
 * address and in total, and a slot the master marked dead stops counting. */
static void test_node_wide_connection_counts(void **state) {
  (void)state;
  assert_int_equal(evs__metrics_init(), 0);
  /* An IPv4-mapped address is its IPv4 address; an IPv6 /64 is one client. */
  assert_true(key4("192.0.2.1") == key6("::ffff:192.0.2.1"));
  assert_true(key4("192.0.2.1") != key4("192.0.2.2"));
  assert_true(key6("2001:db8:1:2::1") == key6("2001:db8:1:2:ffff::9"));
  assert_true(key6("2001:db8:1:2::1") != key6("2001:db8:1:3::1"));
  int64_t before = evs__metrics_node_connections();
  uint64_t a = key4("192.0.2.1"), b = key4("192.0.2.2");
  for (int slot = 10; slot < 12; slot++) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      evs__metrics_use_slot(slot);
      for (int i = 0; i < 5; i++) {
        evs__metrics_public_connections(1);
        evs__metrics_ip_add(a, 1);
      }
      evs__metrics_public_connections(1);
      evs__metrics_ip_add(b, 1);
      evs__metrics_public_connections(-1); /* b's connection closed again */
      evs__metrics_ip_add(b, -1);
      _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    assert_int_equal(WEXITSTATUS(st), 0);
  }
  assert_int_equal(evs__metrics_node_connections() - before, 10);
  assert_int_equal(evs__metrics_ip_count(a), 10);
  assert_int_equal(evs__metrics_ip_count(b), 0);
  evs__metrics_region *r = evs__metrics_region_get();
  __atomic_store_n(&r->slots[11].pid, 0, __ATOMIC_RELAXED); /* the master saw it die */
  assert_int_equal(evs__metrics_node_connections() - before, 5);
  assert_int_equal(evs__metrics_ip_count(a), 5);
  /* A new worker taking the slot starts from zero. */
  pid_t pid = fork();
  if (pid == 0) {
    evs__metrics_use_slot(10);
    _exit(evs__metrics_ip_count(a) == 0 && evs__metrics_node_connections() == before ? 0 : 1);
  }
  int st;
  waitpid(pid, &st, 0);
  assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counts_across_processes),
      cmocka_unit_test(test_plugin_counter_names),
      cmocka_unit_test(test_node_wide_connection_counts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
