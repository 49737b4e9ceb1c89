/* relay_event: see relay_event.h. */
#include "relay_event.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *evs__relay_error_message(const char *code) {
  static const struct {
    const char *code, *msg;
  } msgs[] = {
      {"subdomain-not-found", "The request was sent to a Relay subdomain that does not exist."},
      {"relay-not-found", "No Relay is configured for the requested domain."},
      {"request-timeout", "The target took too long to respond, or the client too long to send."},
      {"service-unavailable", "The target refused the connection and could not be reached."},
      {"internal-server-error", "There was an issue with Relay itself."},
      {"unsupported-content-type-in-response",
       "The target's response used a content type or encoding Relay cannot process."},
      {"proxy-auth-failed", "The request did not carry a valid API key for this Relay."},
      {"encrypted-data-in-field", "The request carried encrypted data where it was not expected."},
      {"forbidden-destination", "The request was sent to a destination that isn't trusted by Relay."},
      {"bad-request", "The request was malformed or could not be processed as sent."},
      {"content-length-required", "The Content-Length header was missing or not a number."},
      {"payload-too-large", "The request exceeded the 25 MB limit for encryption and decryption."},
  };
  for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++)
    if (strcmp(msgs[i].code, code) == 0) return msgs[i].msg;
  return "The request through Relay failed.";
}

void evs__relay_iso8601(int64_t ms, char *out, size_t n) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t w = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + w, n - w, ".%03dZ", (int)(ms % 1000));
}

void evs__relay_uuid(const char *prefix, const char *name, char *out, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
  snprintf(out, n, "%s_%016" PRIx64, prefix, h);
}

int evs__relay_error_emit(const evs_host *h, evs_plugin *p, const evs__relay_error *e) {
  char now[40];
  evs__relay_iso8601(e->now_ms, now, sizeof now);
  json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:s,s:s}", "teamUuid", e->team_uuid,
                         "errorMessage", evs__relay_error_message(e->code), "evMessage",
                         e->ev_message, "activityLink", e->activity_link, "timestamp", now,
                         "errorType", e->code, "statusCode", e->status, "statusGroup",
                         e->status >= 500 ? "5XX" : e->status >= 400 ? "4XX" : "ERR", "relayUuid", e->relay_uuid,
                         "inboundDomain", e->domain);
  char *s = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
  json_decref(ev);
  if (!s) return -ENOMEM;
  evs_event event = {sizeof event, "relay.error", s};
  int r = h->emit_event(p, &event);
  free(s);
  return r;
}
