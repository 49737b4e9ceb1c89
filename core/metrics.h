/*
 * Metrics shared by all processes of a node: the master maps one anonymous shared region before
 * forking, each worker owns one slot and only adds to it (relaxed atomics), and whichever worker
 * answers GET /metrics sums the slots. Counters survive worker restarts and reloads because a
 * new worker continues the slot of the one it replaces, so Prometheus never sees a reset.
 *
 * The same region carries the node-wide connection counts behind limits.max_connections and
 * limits.max_connections_per_ip: each worker counts its own open public connections, in total
 * and per client address, in its slot, and a worker deciding whether to accept one more sums
 * the slots of live workers. A slot is zeroed when a worker takes it and left out once the
 * master marks its worker dead, so a crashed worker's connections never stay counted.
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

/* Connections per client address are counted in a count-min sketch: ROWS rows of COLS
 * counters, each row indexed by its own keyed hash of the address. The estimate is the
 * smallest of an address's ROWS counters: never below the true count, and above it only when
 * the address collides, in every row, with addresses that hold many connections. With 4 x 4096
 * counters and a thousand such addresses that happens to a given address with odds of about
 * 1 in 300,000. 64 KiB per slot, pages touched only by slots in use. */
#define EVS_IPCOUNT_ROWS 4
#define EVS_IPCOUNT_COLS 4096

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
  int64_t public_connections;        /* open connections on public listeners (not admin) */
  uint32_t ip_connections[EVS_IPCOUNT_ROWS][EVS_IPCOUNT_COLS];
  evs__plugin_counter plugin_counters[EVS_METRICS_PLUGIN_COUNTERS];
} evs__metrics_slot;

typedef struct evs__metrics_region {
  uint64_t ip_seed;                  /* random, set before the first fork: keys the sketch */
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
/* Node-wide connection counts (see above). public_connections adds delta to this worker's
 * count of public connections; node_connections is the sum over live workers. ip_key folds a
 * client address into the sketch's key: an IPv4 address (also IPv4-mapped IPv6) whole, an IPv6
 * address by its /64 prefix, since one client usually holds a whole /64. ip_add adds delta for
 * key to this worker's counters; ip_count estimates key's open connections on the node (never
 * below the true count). Relaxed atomics: two workers accepting at the same instant may both
 * see room for one more, so a limit can be passed by at most one connection per worker. */
void evs__metrics_public_connections(int delta);
int64_t evs__metrics_node_connections(void);
struct sockaddr;
uint64_t evs__metrics_ip_key(const struct sockaddr *sa);
void evs__metrics_ip_add(uint64_t key, int delta);
uint32_t evs__metrics_ip_count(uint64_t key);
int evs__metrics_plugin_add(const char *plugin, const char *name, uint64_t delta);
/* Render the Prometheus text format; returns a malloc'd string. */
char *evs__metrics_render(size_t *ret_len);

#endif
