/*
 * Node messages between the workers of a node, relayed by the master, and the descriptors the
 * master keeps per rank (node.c; the master's side is in master.c).
 */
#ifndef EVS_CORE_NODE_H
#define EVS_CORE_NODE_H

#include <stdint.h>

#include "evserver/evs_plugin.h"
#include "plugin.h"

/* One SOCK_SEQPACKET socketpair per worker; the master forwards a BCAST to every other worker
 * and tells the sender how many it reached (COUNT); receivers answer with a REPLY addressed to
 * the sender's slot. Payloads may be secret: every buffer that held one is wiped. */
enum { EVS__NODE_BCAST = 1, EVS__NODE_COUNT = 2, EVS__NODE_REPLY = 3 };
/* KEEP (worker to master): payload = the name; one descriptor as SCM_RIGHTS, or none to drop. */
enum { EVS__NODE_KEEP = 4 };
typedef struct evs__node_hdr {
  uint8_t type;
  uint8_t pad[3];
  uint32_t seq;       /* chosen by the sender */
  int32_t origin;     /* the sender's slot (the master sets it on BCAST) */
  int32_t value;      /* COUNT: workers reached; REPLY: status */
  char plugin[64];    /* NUL-terminated plugin name */
} evs__node_hdr;
#define EVS__NODE_DGRAM_MAX (sizeof(evs__node_hdr) + EVS_NODE_MSG_MAX)

int evs__node_start(evs__worker *w);
/* Drops pending broadcasts (their done never runs) and unanswered messages; closes the fd. */
void evs__node_stop(evs__worker *w);
int evs__node_broadcast(evs__plugin_rec *p, const uint8_t *msg, size_t len, uint64_t timeout_ms,
                        evs_node_done_fn done, void *arg);
void evs__node_reply(evs_node_msg *m, int status);
int evs__node_keep_fd(evs__plugin_rec *p, const char *name, int fd);
int evs__node_kept_fd(evs__plugin_rec *p, const char *name);
/* Closes the kept descriptors no plugin took (after init). */
void evs__node_kept_close_rest(evs__worker *w);

#endif
