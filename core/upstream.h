/*
 * The upstream connection pool (upstream.c), as the worker sees it. Proxying a request is in
 * proxy.h, the plugins' client requests in client.h; what those two share of the connections is
 * in upstream_conn.h.
 */
#ifndef EVS_CORE_UPSTREAM_H
#define EVS_CORE_UPSTREAM_H

/* Closes every idle pooled connection (worker drain and stop); connections in use close when
 * their request ends. Loop thread. */
void evs__upstream_pool_close_all(void);

#endif
