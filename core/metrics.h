/*
 * Metrics shared by all processes of a node: the master maps one anonymous shared region before
 * forking, each worker owns one slot and only adds to it (relaxed atomics), and whichever worker
 * answers GET /metrics sums the slots. Counters survive worker restarts and reloads because a
 * new worker continues the slot of the one it replaces, so Prometheus never sees a reset.
 */
#ifndef EVS_CORE_METRICS_H
#define EVS_CORE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define EVS_METRICS_SLOTS 64
#define EVS_METRICS_PLUGIN_COUNTERS 64
#define EVS_METRICS_NAME_MAX 64

/* Latency histogram bucket upper bounds in milliseconds (+Inf is implicit). */
#define EVS_METRICS_NBUCKETS 12
extern const double evs__metrics_buckets_ms[EVS_METRICS_NBUCKETS];

enum evs__upstream_error {
  EVS_UPERR_REFUSED, EVS_UPERR_TIMEOUT, EVS_UPERR_DNS, EVS_UPERR_TLS, EVS_UPERR_RESET,
  EVS_UPERR_PROTOCOL, EVS_UPERR_COUNT
};

typedef struct evs__plugin_counter {
  char plugin[EVS_METRICS_NAME_MAX];
  char name[EVS_METRICS_NAME_MAX];
  uint64_t value;
} evs__plugin_counter;

typedef struct evs__metrics_slot {
  int32_t pid;                       /* 0: free */
  uint64_t requests[600];            /* by status code */
  uint64_t latency_buckets[EVS_METRICS_NBUCKETS + 1];
  uint64_t latency_sum_us;
  uint64_t latency_count;
  uint64_t upstream_errors[EVS_UPERR_COUNT];
  int64_t active_connections;
  uint64_t connections_total;
  uint64_t rejected_connections;
  evs__plugin_counter plugin_counters[EVS_METRICS_PLUGIN_COUNTERS];
} evs__metrics_slot;

typedef struct evs__metrics_region {
  uint64_t reloads;
  uint64_t worker_restarts;
  evs__metrics_slot slots[EVS_METRICS_SLOTS];
} evs__metrics_region;

/* Master: map the region (before forking). */
int evs__metrics_init(void);
evs__metrics_region *evs__metrics_region_get(void);
/* Worker: choose the slot it writes to. */
void evs__metrics_use_slot(int slot);
void evs__metrics_request(int status, uint64_t latency_us);
void evs__metrics_upstream_error(enum evs__upstream_error e);
void evs__metrics_connections(int delta);
void evs__metrics_rejected_connection(void);
int evs__metrics_plugin_add(const char *plugin, const char *name, uint64_t delta);
/* Render the Prometheus text format; returns a malloc'd string. */
char *evs__metrics_render(size_t *ret_len);

#endif
