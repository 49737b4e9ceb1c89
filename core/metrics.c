/*
 * Shared-memory metrics (see metrics.h) and their Prometheus text rendering.
 */
#include "metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

const double evs__metrics_buckets_ms[EVS_METRICS_NBUCKETS] = {1, 2.5, 5, 10, 25, 50, 100, 250,
                                                              500, 1000, 2500, 10000};

static evs__metrics_region *region;
static evs__metrics_slot *mine;
static evs__metrics_slot fallback; /* before a slot is chosen (tests, -t) */

#define ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)

int evs__metrics_init(void) {
  if (region) return 0;
  void *m = mmap(NULL, sizeof *region, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return -errno;
  region = m;
  uint64_t seed = 0;
  if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
    seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15u;
  region->ip_seed = seed;
  return 0;
}

evs__metrics_region *evs__metrics_region_get(void) { return region; }

void evs__metrics_use_slot(int slot) {
  if (!region || slot < 0 || slot >= EVS_METRICS_SLOTS) {
    mine = &fallback;
    return;
  }
  mine = &region->slots[slot];
  /* The connections of the previous owner of this slot are gone. Zeroed before the pid is
   * published, so no other worker counts them. */
  __atomic_store_n(&mine->active_connections, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&mine->public_connections, 0, __ATOMIC_RELAXED);
  for (int r = 0; r < EVS_IPCOUNT_ROWS; r++)
    for (int k = 0; k < EVS_IPCOUNT_COLS; k++)
      __atomic_store_n(&mine->ip_connections[r][k], 0, __ATOMIC_RELAXED);
  __atomic_store_n(&mine->pid, (int32_t)getpid(), __ATOMIC_RELEASE);
}

static evs__metrics_slot *slot(void) { return mine ? mine : &fallback; }

void evs__metrics_request(int status, uint64_t latency_us) {
  evs__metrics_slot *s = slot();
  if (status < 0 || status >= 600) status = 0;
  ADD(&s->requests[status], 1);
  double ms = (double)latency_us / 1000.0;
  int b = 0;
  while (b < EVS_METRICS_NBUCKETS && ms > evs__metrics_buckets_ms[b]) b++;
  ADD(&s->latency_buckets[b], 1);
  ADD(&s->latency_sum_us, latency_us);
  ADD(&s->latency_count, 1);
}

void evs__metrics_upstream_error(enum evs__upstream_error e) { ADD(&slot()->upstream_errors[e], 1); }

void evs__metrics_connections(int delta) {
  evs__metrics_slot *s = slot();
  ADD(&s->active_connections, delta);
  if (delta > 0) ADD(&s->connections_total, (uint64_t)delta);
}

void evs__metrics_rejected_connection(void) { ADD(&slot()->rejected_connections, 1); }

void evs__metrics_public_connections(int delta) { ADD(&slot()->public_connections, delta); }

/* Live slots: every slot of the region whose worker the master has not marked dead, or only
 * this process's own slot without a region (tests, -t). */
#define FOR_LIVE_SLOTS(s)                                                                 \
  for (int i_ = 0, n_ = region ? EVS_METRICS_SLOTS : 1; i_ < n_; i_++)                      \
    for (evs__metrics_slot *s = region ? &region->slots[i_] : slot(); s; s = NULL)          \
      if (!region || __atomic_load_n(&s->pid, __ATOMIC_ACQUIRE) != 0)

int64_t evs__metrics_node_connections(void) {
  int64_t n = 0;
  FOR_LIVE_SLOTS(s) n += LOAD(&s->public_connections);
  return n;
}

uint64_t evs__metrics_ip_key(const struct sockaddr *sa) {
  uint64_t k = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    memcpy(&k, &in->sin_addr, 4);
    return k | (uint64_t)4 << 32;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      memcpy(&k, in6->sin6_addr.s6_addr + 12, 4);
      return k | (uint64_t)4 << 32;
    }
    memcpy(&k, in6->sin6_addr.s6_addr, 8); /* the /64 */
    return k ^ 6;
  }
  return 0;
}

/* splitmix64's finaliser over the key, the node's seed and the row. */
static unsigned ip_col(uint64_t key, int row) {
  uint64_t x = key ^ (region ? region->ip_seed : 0) ^ ((uint64_t)(row + 1) * 0x9e3779b97f4a7c15u);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  x ^= x >> 31;
  return (unsigned)(x % EVS_IPCOUNT_COLS);
}

void evs__metrics_ip_add(uint64_t key, int delta) {
  evs__metrics_slot *s = slot();
  for (int r = 0; r < EVS_IPCOUNT_ROWS; r++)
    ADD(&s->ip_connections[r][ip_col(key, r)], (uint32_t)delta);
}

uint32_t evs__metrics_ip_count(uint64_t key) {
  unsigned cols[EVS_IPCOUNT_ROWS];
  uint64_t sums[EVS_IPCOUNT_ROWS] = {0};
  for (int r = 0; r < EVS_IPCOUNT_ROWS; r++) cols[r] = ip_col(key, r);
  FOR_LIVE_SLOTS(s)
    for (int r = 0; r < EVS_IPCOUNT_ROWS; r++) sums[r] += LOAD(&s->ip_connections[r][cols[r]]);
  uint64_t m = sums[0];
  for (int r = 1; r < EVS_IPCOUNT_ROWS; r++)
    if (sums[r] < m) m = sums[r];
  return m > UINT32_MAX ? UINT32_MAX : (uint32_t)m;
}

int evs__metrics_plugin_add(const char *plugin, const char *name, uint64_t delta) {
  evs__metrics_slot *s = slot();
  if (strlen(plugin) >= EVS_METRICS_NAME_MAX || strlen(name) >= EVS_METRICS_NAME_MAX) return -EINVAL;
  for (const char *c = name; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) return -EINVAL;
  /* Only this process writes names into its slot, so no lock is needed. */
  for (int i = 0; i < EVS_METRICS_PLUGIN_COUNTERS; i++) {
    evs__plugin_counter *c = &s->plugin_counters[i];
    if (c->name[0] == '\0') {
      snprintf(c->plugin, sizeof c->plugin, "%s", plugin);
      __atomic_thread_fence(__ATOMIC_RELEASE);
      snprintf(c->name, sizeof c->name, "%s", name);
    }
    if (strcmp(c->name, name) == 0 && strcmp(c->plugin, plugin) == 0) {
      ADD(&c->value, delta);
      return 0;
    }
  }
  return -ENOSPC;
}

typedef struct out {
  char *buf;
  size_t len, cap;
} out;

static void emit(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(out *o, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (o->len + (size_t)n < o->cap) {
      o->len += (size_t)n;
      return;
    }
    size_t ncap = o->cap * 2 + (size_t)n;
    char *nb = realloc(o->buf, ncap);
    if (!nb) return;
    o->buf = nb;
    o->cap = ncap;
  }
}

char *evs__metrics_render(size_t *ret_len) {
  evs__metrics_slot *slots = region ? region->slots : &fallback;
  int nslots = region ? EVS_METRICS_SLOTS : 1;
  out o = {malloc(16384), 0, 16384};
  if (!o.buf) return NULL;

  emit(&o, "# HELP evserver_requests_total Requests answered, by status code.\n"
           "# TYPE evserver_requests_total counter\n");
  for (int code = 0; code < 600; code++) {
    uint64_t sum = 0;
    for (int i = 0; i < nslots; i++) sum += LOAD(&slots[i].requests[code]);
    if (sum) emit(&o, "evserver_requests_total{code=\"%d\"} %llu\n", code, (unsigned long long)sum);
  }
  emit(&o, "# HELP evserver_request_duration_seconds Time from request head to response end.\n"
           "# TYPE evserver_request_duration_seconds histogram\n");
  uint64_t cum = 0, count = 0, sum_us = 0;
  for (int b = 0; b <= EVS_METRICS_NBUCKETS; b++) {
    for (int i = 0; i < nslots; i++) cum += LOAD(&slots[i].latency_buckets[b]);
    if (b < EVS_METRICS_NBUCKETS)
      emit(&o, "evserver_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
           evs__metrics_buckets_ms[b] / 1000.0, (unsigned long long)cum);
    else
      emit(&o, "evserver_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
  }
  for (int i = 0; i < nslots; i++) {
    count += LOAD(&slots[i].latency_count);
    sum_us += LOAD(&slots[i].latency_sum_us);
  }
  emit(&o, "evserver_request_duration_seconds_sum %.6f\n", (double)sum_us / 1e6);
  emit(&o, "evserver_request_duration_seconds_count %llu\n", (unsigned long long)count);

  static const char *const uperr[EVS_UPERR_COUNT] = {"refused", "timeout", "dns", "tls", "reset",
                                                     "protocol"};
  emit(&o, "# HELP evserver_upstream_errors_total Upstream failures, by kind.\n"
           "# TYPE evserver_upstream_errors_total counter\n");
  for (int e = 0; e < EVS_UPERR_COUNT; e++) {
    uint64_t sum = 0;
    for (int i = 0; i < nslots; i++) sum += LOAD(&slots[i].upstream_errors[e]);
    emit(&o, "evserver_upstream_errors_total{kind=\"%s\"} %llu\n", uperr[e], (unsigned long long)sum);
  }
  int64_t active = 0;
  uint64_t total = 0, rejected = 0;
  for (int i = 0; i < nslots; i++) {
    if (LOAD(&slots[i].pid) != 0) active += LOAD(&slots[i].active_connections);
    total += LOAD(&slots[i].connections_total);
    rejected += LOAD(&slots[i].rejected_connections);
  }
  emit(&o, "# HELP evserver_active_connections Open client connections.\n"
           "# TYPE evserver_active_connections gauge\nevserver_active_connections %lld\n",
       (long long)active);
  emit(&o, "# HELP evserver_connections_total Client connections accepted.\n"
           "# TYPE evserver_connections_total counter\nevserver_connections_total %llu\n",
       (unsigned long long)total);
  emit(&o, "# HELP evserver_rejected_connections_total Connections refused at max_connections "
           "or max_connections_per_ip.\n"
           "# TYPE evserver_rejected_connections_total counter\n"
           "evserver_rejected_connections_total %llu\n", (unsigned long long)rejected);
  if (region)
    emit(&o, "# HELP evserver_reloads_total Configuration reloads.\n"
             "# TYPE evserver_reloads_total counter\nevserver_reloads_total %llu\n",
         (unsigned long long)LOAD(&region->reloads));

  /* Plugin counters: sum equal (plugin, name) pairs across slots. */
  emit(&o, "# HELP evserver_plugin_events_total Counters reported by plugins.\n"
           "# TYPE evserver_plugin_events_total counter\n");
  for (int i = 0; i < nslots; i++) {
    for (int k = 0; k < EVS_METRICS_PLUGIN_COUNTERS; k++) {
      const evs__plugin_counter *c = &slots[i].plugin_counters[k];
      if (!c->name[0]) break;
      int seen = 0;
      for (int j = 0; j < i && !seen; j++)
        for (int m = 0; m < EVS_METRICS_PLUGIN_COUNTERS && slots[j].plugin_counters[m].name[0]; m++)
          if (!strcmp(slots[j].plugin_counters[m].name, c->name) &&
              !strcmp(slots[j].plugin_counters[m].plugin, c->plugin)) {
            seen = 1;
            break;
          }
      if (seen) continue;
      uint64_t sum = 0;
      for (int j = i; j < nslots; j++)
        for (int m = 0; m < EVS_METRICS_PLUGIN_COUNTERS && slots[j].plugin_counters[m].name[0]; m++)
          if (!strcmp(slots[j].plugin_counters[m].name, c->name) &&
              !strcmp(slots[j].plugin_counters[m].plugin, c->plugin))
            sum += LOAD(&slots[j].plugin_counters[m].value);
      emit(&o, "evserver_plugin_events_total{plugin=\"%s\",name=\"%s\"} %llu\n", c->plugin,
           c->name, (unsigned long long)sum);
    }
  }
  *ret_len = o.len;
  return o.buf;
}
