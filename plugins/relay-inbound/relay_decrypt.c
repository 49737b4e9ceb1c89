/*
 * relay_decrypt.c: response decryption for the Inbound Relay. Not wired yet: responses pass
 * through unchanged (see plugins/relay-inbound/README.md, "Response decryption").
 */
#include "relay_priv.h"

evs_body_filter_fn relay_response_filter(relay_txn *t) {
  (void)t;
  return NULL;
}
