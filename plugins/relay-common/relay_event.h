/*
 * relay_event: the relay.error event both relays emit when a request ends with a documented
 * error (the alerts plugin turns it into webhook, Slack and Discord alerts), with the words for
 * each documented code in one table. Library code: it builds and emits, never logs.
 */
#ifndef EVS_RELAY_EVENT_H
#define EVS_RELAY_EVENT_H

#include <stdint.h>

#include "evserver/evs_plugin.h"

typedef struct evs__relay_error {
  const char *team_uuid;
  const char *activity_link; /* where `evctl activity` / the dashboard shows the request */
  const char *relay_uuid;    /* stable per relay: "relay_<hash>", "outbound_<hash>" */
  const char *domain;        /* the relay's domain (inbound) or the destination (outbound) */
  const char *ev_message;    /* one line: which relay, which request, which code */
  const char *code;          /* the documented error code (errorType) */
  int status;                /* below 400: a response cut short after its head (group ERR) */
  int64_t now_ms;            /* wall clock */
} evs__relay_error;

/* What a documented relay error code means, in words (errorMessage). */
const char *evs__relay_error_message(const char *code);
/* "2026-12-06T10:00:00.123Z" */
void evs__relay_iso8601(int64_t ms, char *out, size_t n);
/* "<prefix>_<16 hex digits>": a stable id from a name (FNV-1a 64). */
void evs__relay_uuid(const char *prefix, const char *name, char *out, size_t n);
/* Emits relay.error; 0, or a negative errno when it could not be built. */
int evs__relay_error_emit(const evs_host *h, evs_plugin *p, const evs__relay_error *e);

#endif
