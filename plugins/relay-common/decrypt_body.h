/*
 * decrypt_body: a body's Evervault values decrypted through the host's typed crypto calls, the
 * one implementation both relays use: the Inbound Relay for its destinations' responses
 * (relay-inbound/relay_decrypt.c), the Outbound Relay for its apps' requests to a destination
 * (relay-outbound/outbound_proxy.c). The body goes through decrypt_scan.c (chosen by its
 * Content-Type); bytes before the first value go to the caller's emit callback (or, without
 * one, to the spool), from the first value on the output is spooled with a hole per value while
 * the values go to the enclave in batches (decrypt_values, 512 per call; decrypt_file per
 * %EVENC file). JSON values come back typed: numbers and booleans are written bare, as
 * POST /decrypt does. A value the app's keys do not open is left as it was. An enclave failure
 * fails the whole body: the caller never sends a half-decrypted one.
 *
 * Unlike the rest of relay-common this file calls the host (the plugin ABI, abi/ only): it is
 * still library code (no plugin state, no logging; every object belongs to its caller).
 *
 * Lifetime: the object is the caller's; evs__decrypt_body_free may be called while enclave
 * calls are in flight (the request went away): their callbacks then only release memory, and
 * done never runs after free.
 */
#ifndef EVS_RELAY_DECRYPT_BODY_H
#define EVS_RELAY_DECRYPT_BODY_H

#include <stddef.h>
#include <stdint.h>

#include "evserver/evs_plugin.h"
#include "spool.h"

#define EVS__DBODY_PENDING 1

typedef struct evs__decrypt_body_cfg {
  size_t size;              /* sizeof(struct evs__decrypt_body_cfg) */
  const evs_host *host;
  evs_plugin *plugin;
  const char *app_id;       /* copied */
  const char *spool_dir;    /* borrowed: must outlive the object */
  size_t max_file;          /* largest %EVENC file (and body) held; 0: 25 MiB */
  /* Bytes before the first value, as they come (a response filter's filter_emit); NULL:
   * everything goes to the spool. Returns 0 or a negative error. */
  int (*emit)(void *arg, const uint8_t *p, size_t n);
  /* Runs once, on a later loop turn, when evs__decrypt_body_finish returned
   * EVS__DBODY_PENDING and every value is back: status 0 (the spool is complete) or a negative
   * error (the enclave failed). */
  void (*done)(void *arg, int status);
  void *arg;
} evs__decrypt_body_cfg;

typedef struct evs__decrypt_body evs__decrypt_body;

/* content_type: the body's Content-Type value (NULL if absent; only read during the call).
 * Returns 0 and sets *ret, or -EINVAL / -ENOMEM. */
int evs__decrypt_body_new(const evs__decrypt_body_cfg *cfg, const char *content_type,
                          evs__decrypt_body **ret);
/* Feeds the next bytes of the body (any split). 0 or a negative error (EVS__DSCAN_E_TOOBIG for
 * a file over max_file, an enclave call that could not start, -ENOMEM, -EIO/-ENOSPC). */
int evs__decrypt_body_feed(evs__decrypt_body *d, const uint8_t *p, size_t n);
/* The end of the body: sends the last batch. Returns 0 when nothing waits (the spool, if any
 * value was found, is complete), EVS__DBODY_PENDING (done runs later), or a negative error. */
int evs__decrypt_body_finish(evs__decrypt_body *d);
/* The spooled output: what followed the first value (everything without emit), holes filled
 * once finish returned 0 or done ran with 0. */
relay_spool *evs__decrypt_body_spool(evs__decrypt_body *d);
/* How many values were found so far, and how many decrypted. */
uint64_t evs__decrypt_body_found(const evs__decrypt_body *d);
uint64_t evs__decrypt_body_decrypted(const evs__decrypt_body *d);
/* Frees (NULL accepted); calls in flight only release memory when they come back. */
void evs__decrypt_body_free(evs__decrypt_body *d);

#endif
