/*
 * libFuzzer target for plugins/alerts/alerts_core.c. The input is used twice: as alerts.json
 * (the loader, with its merging of destinations) and as an event's JSON object (the sanitiser
 * and every payload builder, then the signature over the webhook body). Invariants checked
 * besides memory errors: every payload is valid JSON, a webhook body holds only documented
 * field names, and a URL never appears in a loader error.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alerts_core.h"

static void check_json(const char *s, int webhook) {
  if (!s) return; /* ENOMEM only */
  json_t *j = json_loads(s, 0, NULL);
  if (!j || !json_is_object(j)) __builtin_trap();
  if (webhook) {
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
      int known = 0;
      for (int i = 0; i < EVS__AF_COUNT; i++) known |= strcmp(k, evs__alert_field_names[i]) == 0;
      if (!known) __builtin_trap();
    }
  }
  json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512];
  evs__alerts_config *c = NULL;
  err[0] = 0;
  if (evs__alerts_config_parse((const char *)data, size, "alerts.json", &c, err, sizeof err) < 0) {
    if (strstr(err, "https://x") || strstr(err, "http://x")) __builtin_trap();
  }

  char *text = malloc(size + 1);
  if (!text) {
    evs__alerts_config_free(c);
    return 0;
  }
  memcpy(text, data, size);
  text[size] = 0;
  static const char *const types[] = {"relay.error", "function.error", "other"};
  for (int t = 0; t < 3; t++) {
    evs__alert_event *ev = NULL;
    if (evs__alert_event_parse(types[t], text, &ev) < 0) continue;
    for (size_t i = 0; c && i < c->n; i++) (void)evs__alert_dest_matches(&c->dests[i], ev);
    size_t len = 0;
    char *w = evs__alert_body(EVS__ALERT_WEBHOOK, ev, &len);
    check_json(w, 1);
    if (w) {
      char sig[EVS__ALERTS_SIG_MAX];
      if (evs__alert_sign((const uint8_t *)"k", 1, 1, (const uint8_t *)w, len, sig, sizeof sig) < 0)
        __builtin_trap();
    }
    free(w);
    char *s = evs__alert_body(EVS__ALERT_SLACK, ev, &len);
    check_json(s, 0);
    free(s);
    s = evs__alert_body(EVS__ALERT_DISCORD, ev, &len);
    check_json(s, 0);
    free(s);
    evs__alert_event_free(ev);
  }
  free(text);
  evs__alerts_config_free(c);
  return 0;
}
