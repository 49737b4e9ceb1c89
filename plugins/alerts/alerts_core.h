/*
 * alerts_core.h — the parts of the alerts plugin that need no host: the alerts.json loader,
 * the event sanitiser, the payload builders (webhook, Slack, Discord), the webhook signature,
 * and the retry backoff. Pure functions (no logging, no I/O
 * except the file loader), so tests/unit/test_alerts.c and fuzz/fuzz_alerts.c exercise them
 * without a server. alerts.c is the plugin around them.
 */
#ifndef EVS_ALERTS_CORE_H
#define EVS_ALERTS_CORE_H

#include <stddef.h>
#include <stdint.h>

#define EVS__ALERTS_MAX_ENTRIES 256          /* alerts in one alerts.json */
#define EVS__ALERTS_MAX_FILE (1u << 20)      /* alerts.json size cap */
#define EVS__ALERTS_MAX_URL 2048             /* destination URL length cap */
#define EVS__ALERTS_MAX_FIELD 2048           /* longest string field kept from an event */
#define EVS__ALERTS_SIG_MAX 96               /* "t=<20 digits>,v1=<64 hex>" and a NUL */

typedef enum evs__alert_kind {
  EVS__ALERT_WEBHOOK = 0,
  EVS__ALERT_SLACK = 1,
  EVS__ALERT_DISCORD = 2,
} evs__alert_kind;

/* One destination: a (type, url) pair, with every alerts.json entry that named it merged in.
 * An event is sent to it when one of its patterns matches (evs__alert_dest_matches). */
typedef struct evs__alert_dest {
  evs__alert_kind kind;
  char *url;
  char **relays;    /* inbound domains, lower-case; "*" matches every relay event */
  size_t nrelays;
  char **functions; /* function names; "*" matches every function event */
  size_t nfunctions;
} evs__alert_dest;

typedef struct evs__alerts_config {
  evs__alert_dest *dests;
  size_t n;
  size_t nentries; /* entries in the file, before merging */
} evs__alerts_config;

/* Parses alerts.json text (a JSON array of {"relay"|"function", "type", "url"} objects).
 * `name` prefixes error messages. Returns 0 and *ret_config, or -EINVAL with a message naming
 * the JSON path (or line and column) in err. */
int evs__alerts_config_parse(const char *text, size_t len, const char *name,
                             evs__alerts_config **ret_config, char *err, size_t errlen);
/* Reads and parses a file: -ENOENT (and no message) when it does not exist, -EFBIG over
 * EVS__ALERTS_MAX_FILE, other negative errno with a message. */
int evs__alerts_config_load_file(const char *path, evs__alerts_config **ret_config, char *err,
                                 size_t errlen);
void evs__alerts_config_free(evs__alerts_config *c);

/* The documented alert fields (relay and function alerts together), in the order they are sent.
 * An event keeps only these; everything else an emitter put in is dropped. */
typedef enum evs__alert_field {
  EVS__AF_TEAM_UUID, EVS__AF_ERROR_MESSAGE, EVS__AF_EV_MESSAGE, EVS__AF_ACTIVITY_LINK,
  EVS__AF_TIMESTAMP, EVS__AF_ERROR_TYPE, EVS__AF_STATUS_CODE, EVS__AF_STATUS_GROUP,
  EVS__AF_RELAY_UUID, EVS__AF_INBOUND_DOMAIN, EVS__AF_FUNCTION_UUID, EVS__AF_FUNCTION_NAME,
  EVS__AF_COUNT
} evs__alert_field;

extern const char *const evs__alert_field_names[EVS__AF_COUNT];

/* An event reduced to the documented fields. String fields are NULL when absent (or of the
 * wrong type, or longer than EVS__ALERTS_MAX_FIELD); statusCode is kept when it is an integer
 * in 0..999. */
typedef struct evs__alert_event {
  char *type;                      /* the event type, e.g. "relay.error" */
  char *str[EVS__AF_COUNT];        /* unused at EVS__AF_STATUS_CODE */
  int status_code;                 /* valid when has_status_code */
  int has_status_code;
} evs__alert_event;

/* Builds an evs__alert_event from an event's type and JSON object. -EINVAL if json is not a
 * JSON object or type is empty, -ENOMEM. */
int evs__alert_event_parse(const char *type, const char *json, evs__alert_event **ret_event);
void evs__alert_event_free(evs__alert_event *ev);

/* 1 if the destination wants the event: a "relay." event whose inboundDomain matches one of
 * the relay patterns (case-insensitively, or "*"), or a "function." event whose functionName
 * matches one of the function patterns. */
int evs__alert_dest_matches(const evs__alert_dest *d, const evs__alert_event *ev);

/* The request body for one destination kind, NUL-terminated, malloc'd (caller frees), built
 * from the event's documented fields only. Webhook: the fields as a JSON object. Slack:
 * {"text": ...}; Discord: {"content": ..., "allowed_mentions": {"parse": []}}. NULL on ENOMEM. */
char *evs__alert_body(evs__alert_kind kind, const evs__alert_event *ev, size_t *ret_len);

/* The body announcing that `count` alerts to this destination were dropped by the rate limit
 * (max_per_minute). timestamp_iso is the time of the summary. NULL on ENOMEM. */
char *evs__alert_summary_body(evs__alert_kind kind, uint64_t count, int64_t max_per_minute,
                              const char *timestamp_iso, size_t *ret_len);

/* The X-Evervault-Signature value: "t=<unix>,v1=<hex HMAC-SHA256(key, "<unix>.<body>")>".
 * Returns 0, or -EINVAL / -ENOSPC (ret smaller than EVS__ALERTS_SIG_MAX) / -EIO. */
int evs__alert_sign(const uint8_t *key, size_t key_len, int64_t unix_time, const uint8_t *body,
                    size_t body_len, char *ret, size_t ret_size);

/* Delay before retry number `attempt` (1 for the first retry): 1 s doubled per attempt, capped
 * at 60 s, with "equal jitter" (half the delay fixed, half chosen by `rnd`), so a burst of
 * failures does not retry in lock-step. */
uint64_t evs__alert_backoff_ms(unsigned attempt, uint32_t rnd);

/* 1 if an HTTP status (or a negative transport error) is worth retrying: transport errors, 429, 5xx.
 * Other statuses (2xx aside) are final: the receiver refused this alert. */
int evs__alert_retryable(int status);

/* The short form of a URL for logs: scheme and authority only. Chat webhook URLs carry their
 * credential in the path, so a full URL is never logged. */
void evs__alert_url_origin(const char *url, char *ret, size_t ret_size);

#endif
