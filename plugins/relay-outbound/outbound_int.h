/*
 * outbound_int.h: what the Outbound Relay plugin's files share (relay_outbound.c, the
 * configuration cache; outbound_proxy.c, the CONNECT proxy). Not installed, not seen by other
 * plugins.
 */
#ifndef EVS_OUTBOUND_INT_H
#define EVS_OUTBOUND_INT_H

#include <stddef.h>

#include "evserver/evs_plugin.h"
#include "outbound_config.h"

typedef struct ob_state ob_state; /* the plugin's per-worker state (relay_outbound.c) */

/* The configuration of app_id in this worker's cache (NULL if it has none, or before the first
 * load from the store). The table is replaced whole when the store changes, on the loop
 * thread: the pointer is valid until control returns to the loop, so look it up again for each
 * request rather than keeping it. Never reads the store. */
const evs__ob_app *ob_app(ob_state *st, const char *app_id);

/* The most specific destination of app_id for host (as evs__ob_authority_parse writes it),
 * port and the request path (normal form, no query; NULL at CONNECT time, before a request is
 * seen: any destination of the host then matches), or NULL. Same lifetime as ob_app's. What to
 * do with a host that has none: ob_app(st, app_id)->refuse_unconfigured (refuse when the app has
 * no configuration at all). */
const evs__ob_destination *ob_lookup(ob_state *st, const char *app_id, const char *host, int port,
                                     const char *path, size_t path_len);

/* The proxy path (outbound_proxy.c): the CONNECT route of the role "outbound" and the requests
 * in its tunnels. ob_proxy_init registers the route (init only) and reads the config items
 * destination_ca_file, spool_dir and max_body; ob_proxy_free accepts NULL. */
typedef struct ob_proxy ob_proxy;
int ob_proxy_init(const evs_host *h, evs_plugin *p, ob_state *st, ob_proxy **ret);
void ob_proxy_free(ob_proxy *px);
/* The proxy of the plugin state (route handlers get the plugin state). */
ob_proxy *ob_state_proxy(void *state);

#endif
