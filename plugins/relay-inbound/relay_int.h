/*
 * relay_int.h: what the files of the relay-inbound plugin share. relay_inbound.c owns the
 * request path and the relay configuration (loaded from relay-config.json, watched for changes
 * and replaced as a whole); relay_admin.c serves the admin endpoints that evctl's `relay` and
 * `activity` commands use.
 *
 * Records the request path writes through the host's store (the plugin's namespace):
 *   stream "transactions" (store_append): one JSON object per relayed request:
 *     {"requestId","relay" (domain),"method","path" (no query),"status","errorCode" (only on
 *      errors),"startedAt" (ISO 8601 UTC),"durationMs","contentType","encryptedFields":[paths],
 *      "decryptedFields": n}
 *     Never values, headers or bodies.
 *   key "structure/<domain>/<16 hex digits>" (store_put, ttl 24 h): one request shape:
 *     {"relay","method","route","contentType","fields":[paths],"lastSeen" (ms since epoch)}
 *     paths are JSONPath for JSON/XML ("$.card.number", arrays as "[*]") and names for forms.
 */
#ifndef EVS_RELAY_INT_H
#define EVS_RELAY_INT_H

#include <stddef.h>

#include "evserver/evs_plugin.h"
#include "relay_config.h"

typedef struct relay_state relay_state;

const evs_host *relay_host(const relay_state *st);
evs_plugin *relay_plugin(const relay_state *st);

/* The relay-config.json this worker serves (absolute path). */
const char *relay_config_path(const relay_state *st);

/* The configuration in force; valid until the calling callback returns. */
const evs__relay_config *relay_current_config(const relay_state *st);

/* Validates buf[0..len) as relay-config.json. On success writes it atomically (temporary file
 * and rename) to relay_config_path, applies it in this worker at once (other workers follow
 * within a second: every worker watches the file) and returns 0. On failure returns a negative
 * errno with a message in err and changes nothing. */
int relay_config_replace(relay_state *st, const char *buf, size_t len, char *err, size_t errlen);

/* config_source = store (clusters): 1 when the store's copy is authoritative. */
int relay_config_shared(const relay_state *st);

/* Writes buf[0..len) (already validated) as the store's configuration and a new generation,
 * so every worker of every node applies it at its next poll. cb(arg, status) runs once, on the
 * loop, with 0 when both writes succeeded; if this returns an error cb never runs. */
typedef void (*relay_publish_cb)(void *arg, int status);
#define RELAY_GEN_MAX 80
int relay_config_publish(relay_state *st, const char *buf, size_t len, relay_publish_cb cb,
                         void *arg);

/* relay_admin.c: the admin endpoints (GET/PUT /relays, DELETE /relays/<domain>,
 * GET /relays/structures, GET /activity). EVS_HANDLED or EVS_DECLINED. */
int relay_admin_route(relay_state *st, evs_request *req);

#endif
