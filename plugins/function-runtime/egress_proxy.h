/*
 * egress_proxy.h: the egress proxy of a function box. A box has no network (its own network
 * namespace); what it may reach goes through this CONNECT proxy, on a unix socket that only that
 * box sees (evs-fnbox binds it at /run/evs/egress.sock, where the bootstraps point Node's and
 * Python's HTTP clients). The proxy, outside the sandbox, decides:
 *   - the CONNECT host must match the Function's outbound allowlist (the destination-domain
 *     syntax of the Outbound Relay, hosts and ports only; an empty list allows any host, as
 *     the documentation's default);
 *   - the address it connects to must be public (not loopback, private, link-local, CGNAT,
 *     multicast or unspecified; checked on the resolved address, so DNS cannot point a name
 *     at the node's own services) unless allow_private;
 *   - a TLS client's SNI, and a plain HTTP client's Host, must name the CONNECT host: a
 *     function allowed one name on a shared address (a CDN) cannot ask it for another.
 * Bytes then flow both ways with backpressure; the proxy never logs or keeps them.
 */
#ifndef EVS_EGRESS_PROXY_H
#define EVS_EGRESS_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct egress_proxy egress_proxy;

/* What the proxy did with one CONNECT (for the run's log, counters and tests; never data).
 * allowed 1: connected; 0: refused, why says which rule (a static sentence). */
typedef void (*egress_proxy_event_fn)(void *arg, const char *host, int port, int allowed,
                                   const char *why);

typedef struct egress_proxy_opts {
  const char *path;               /* the unix socket to create (an old file there is replaced) */
  const char *const *allow;       /* destination domains: host, host:port, *.suffix, [v6] */
  size_t n_allow;                 /* 0: any host */
  int allow_private;              /* also loopback, private and link-local addresses */
  unsigned max_tunnels;           /* at once; over it: 503 (0: 64) */
  uint64_t connect_timeout_ms;    /* DNS and TCP connect (0: 10 s) */
  uint64_t idle_timeout_ms;       /* a tunnel with no bytes either way (0: 300 s) */
  egress_proxy_event_fn event;
  void *event_arg;
} egress_proxy_opts;

/* Starts listening. Returns 0 and *ret, or a negative errno with a static sentence in *ret_why
 * (a pattern of allow that does not parse, a socket that cannot be made). */
int egress_proxy_open(uv_loop_t *loop, const egress_proxy_opts *o, egress_proxy **ret,
                   const char **ret_why);

/* Stops listening, removes the socket file and ends every tunnel; the memory goes once libuv has
 * closed the handles (on a later loop turn). */
void egress_proxy_close(egress_proxy *e);

/* Tunnels open now. */
unsigned egress_proxy_tunnels(const egress_proxy *e);

#endif
