/*
 * cage_int.h: what the cage-broker plugin's front files share (cage_broker.c: configuration,
 * the store, the admin routes behind `evctl cage`, the sync loop that runs every deployed
 * cage on this worker; cage_front.c: the HTTPS front of each cage and its Encryption API).
 * Everything runs on the worker's loop thread.
 */
#ifndef EVS_CAGE_INT_H
#define EVS_CAGE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <evserver/evs_plugin.h>

#include "cage_run.h"

#define CB_NAME_MAX 63
#define CB_APP_MAX 63
#define CB_HOST_MAX 400
/* Images are stored in chunks below the store's 16 MiB value limit (see cage_broker.c). */
#define CB_CHUNK (8u << 20)
#define CB_RETIRE_MS 10000 /* longest wait for a replaced instance's requests to finish */

typedef struct cb_state cb_state;
typedef struct cb_cage cb_cage;

typedef struct cb_inst {
  cb_state *st;
  cb_cage *c;              /* NULL once the cage is gone (the instance is then stopping) */
  cage_instance *ci;       /* NULL until cage_run_start succeeded */
  int64_t deploy_id;
  char image[65];          /* sha256 hex of the image file */
  cage_state state;
  unsigned restarts;
  char why[160];
  int stopping;
  int preparing;           /* image fetch or env decryption in flight */
  /* Requests proxied to it and not finished: a replaced instance is stopped once they are
   * (or after CB_RETIRE_MS), and its memory outlives its STOPPED while any remains. */
  unsigned inflight;
  int retiring, dead;
  evs_timer *retire_timer;
  struct cb_inst *next_all;
} cb_inst;

/* A deployed cage as this worker knows it (from the store's record). */
struct cb_cage {
  cb_state *st;
  char app[CB_APP_MAX + 1], name[CB_NAME_MAX + 1];
  char host[CB_HOST_MAX];       /* <name>.<app with _ as ->.<domain> */
  json_t *rec;                  /* the store's record */
  int64_t deploy_id;
  char image[65];
  int debug, api_key_auth, trx_logging, no_tls_termination;
  int seen;
  /* TLS identity: one key and certificate per cage, shared by every worker and node through
   * the store (the key sealed with the app's keys as an ev: string). */
  char *cert_pem, *key_pem;
  size_t cert_len, key_len;
  char cache_key[256];
  uint8_t *spki;                /* DER SubjectPublicKeyInfo of the certificate (attestation) */
  size_t spki_len;
  int tls_pending;
  int64_t tls_checked_ms;
  cb_inst *cur;                 /* serving */
  cb_inst *next_inst;           /* starting (a redeploy): replaces cur once READY */
  int refs;                     /* requests holding it after removal */
  int removed;
  cb_cage *next;
};

struct cb_state {
  const evs_host *h;
  evs_plugin *p;
  char domain[256];
  char dir[4096];               /* <state_dir>/cage-broker */
  char spool_dir[4200];         /* <dir>/spool: request bodies being decrypted */
  char node_id[96];
  cage_backend backend;
  uint64_t memory;
  int64_t max_body;
  int64_t sync_ms;
  evs_timer *sync_timer;
  evs_timer *soon_timer;
  int syncing;
  int stopping;
  cb_cage *cages;
  cb_inst *insts;
};

/* cage_broker.c */
/* A request proxied to the instance starts and ends (see cb_inst.inflight). */
void cb_inst_hold(cb_inst *in);
void cb_inst_release(cb_inst *in);
int64_t cb_now_ms(void);
void cb_random_hex(char *out, size_t nbytes);
cb_cage *cb_cage_by_host(cb_state *st, const char *host);
void cb_cage_ref(cb_cage *c);
void cb_cage_unref(cb_cage *c);
void cb_sync_soon(cb_state *st);

/* cage_front.c */
int cb_front_init(cb_state *st);
/* The runner's callbacks for an instance's Encryption API. */
void cb_front_on_api(void *arg, cage_instance *ci, cage_api_call *call, const char *method,
                     const char *path, const uint8_t *body, size_t len);
/* Makes (or loads from the store) the cage's TLS key and certificate. */
void cb_front_tls_ensure(cb_cage *c);

#endif
