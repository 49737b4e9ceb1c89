/*
 * encrypt_body: a body's selected fields encrypted through the host's typed crypto calls, the
 * one implementation both relays use: the Inbound Relay for its requests' fieldsToEncrypt
 * (relay-inbound/relay_encrypt.c), the Outbound Relay for its destinations' responses
 * (relay-outbound/outbound_proxy.c, fieldsToEncrypt and encryptFiles). The body goes through the
 * rewriter for its Content-Type (rewriter.h); every selected value becomes a hole in the spool
 * and joins a batch for the enclave (encrypt_values, up to 512 values or 256 KiB per call;
 * encrypt_file per file part), at most 4 calls in flight (evs__encrypt_body_busy: the caller
 * pauses its source). A value that already is an ev: string (or a %EVENC file) is never
 * encrypted twice: refused (refuse_ev) or written as it is. Any failure fails the whole body,
 * with the relay's documented answer (evs__encrypt_body_error): the caller never sends a
 * half-encrypted one.
 *
 * Like decrypt_body.c this file calls the host (the plugin ABI, abi/ only) and is library code:
 * no plugin state, no logging; every object belongs to its caller.
 *
 * Lifetime: the object is the caller's; evs__encrypt_body_free may be called while enclave calls
 * are in flight: their callbacks then only release memory, and progress never runs after free.
 */
#ifndef EVS_RELAY_ENCRYPT_BODY_H
#define EVS_RELAY_ENCRYPT_BODY_H

#include <stddef.h>
#include <stdint.h>

#include "evserver/evs_plugin.h"
#include "rewriter.h"
#include "spool.h"

#define EVS__EBODY_PENDING 1

typedef struct evs__encrypt_body_cfg {
  size_t size;              /* sizeof(struct evs__encrypt_body_cfg) */
  const evs_host *host;
  evs_plugin *plugin;
  const char *app_id;       /* copied; NULL only when nothing is selected */
  const char *curve;        /* copied; NULL: secp256k1 */
  const char *spool_dir;    /* borrowed: must outlive the object */
  /* The body's format (evs__rewriter_for_content_type) and what it selects (borrowed by new as
   * rewriter.h says). ops NULL or sel NULL: no rewriter, the bytes are spooled unchanged. */
  const evs__rewriter_ops *ops;
  const evs__rewriter_select *sel;
  /* Nonzero: a selected value that is already encrypted is an error (encrypted-data-in-field):
   * the Inbound Relay's relays that decrypt responses. Zero: it is written as it is. */
  int refuse_ev;
  /* Zero: file parts (EVS__RW_FILE) are written as they are, not encrypted. */
  int files;
  /* Without a rewriter (ops NULL): nonzero encrypts the whole body as one %EVENC file
   * (encrypt_file at finish; the body is held in memory, so the caller bounds it). A body that
   * already is one is written as it is. */
  int whole_file;
  /* Runs on the loop after each enclave call came back (never after free): the caller resumes
   * its source when no longer busy, and goes on when evs__encrypt_body_idle after finish. */
  void (*progress)(void *arg);
  /* Optional: how many encrypted values the caller's guard (ev_guard.h) found in the body,
   * asked once at finish, after the rewriter's end: more than were passed as selected values is
   * encrypted-data-in-field (the Inbound Relay's trust boundary). */
  uint64_t (*ev_found)(void *arg);
  void *arg;
} evs__encrypt_body_cfg;

typedef struct evs__encrypt_body evs__encrypt_body;

/* Returns 0 and sets *ret, or -EINVAL, -ENOMEM, EVS__RW_E_BOUNDARY (multipart without a valid
 * boundary). */
int evs__encrypt_body_new(const evs__encrypt_body_cfg *cfg, evs__encrypt_body **ret);
/* Makes an idle body ready for the next one, as evs__encrypt_body_new(cfg) would, keeping the
 * memory it grew (a WebSocket's messages, one after another): what the last one held is wiped.
 * cfg's sel must select what the one e was made with selected; a rewriter of the same format
 * that can be reset is, any other is made anew. Returns 0; -EBUSY while calls are in flight
 * (free e and make a new one); or new's errors, after which e is only fit to be freed. */
int evs__encrypt_body_reuse(evs__encrypt_body *e, const evs__encrypt_body_cfg *cfg);
/* Feeds the next bytes of the body (any split). 0 or a negative error (see
 * evs__encrypt_body_error for its answer). */
int evs__encrypt_body_feed(evs__encrypt_body *e, const uint8_t *p, size_t n);
/* The end of the body: the rewriter's end and the last batch. 0 when nothing waits (the spool is
 * complete), EVS__EBODY_PENDING (progress runs later; idle then says it is over), or a negative
 * error. */
int evs__encrypt_body_finish(evs__encrypt_body *e);
/* Records an error found by the caller (first one wins), answered as a rewriter error would be
 * (rewriter.h), -E2BIG as 413, anything else as 500. */
void evs__encrypt_body_fail(evs__encrypt_body *e, int err);
/* The first error (0 if none), and the relay's documented answer to it (status, error code, a
 * detail sentence in request terms; static strings). */
int evs__encrypt_body_error(const evs__encrypt_body *e, int *ret_status, const char **ret_code,
                            const char **ret_detail);
/* Nonzero when enough calls are in flight that the caller should pause its source. */
int evs__encrypt_body_busy(const evs__encrypt_body *e);
/* Nonzero when no enclave call is in flight (NULL accepted). */
int evs__encrypt_body_idle(const evs__encrypt_body *e);
/* The output, holes filled once finish returned 0 or idle after finish without error. */
relay_spool *evs__encrypt_body_spool(evs__encrypt_body *e);
/* Values encrypted so far; selected values that were already encrypted and passed as they were. */
uint64_t evs__encrypt_body_encrypted(const evs__encrypt_body *e);
uint64_t evs__encrypt_body_passed(const evs__encrypt_body *e);
/* Frees (NULL accepted); calls in flight only release memory when they come back. */
void evs__encrypt_body_free(evs__encrypt_body *e);

#endif
