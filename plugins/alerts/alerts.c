/*
 * alerts: sends error alerts to webhooks, Slack and Discord, as the product documentation's
 * "Alerts" describe. Other plugins emit events (host->emit_event, type "relay.error" from the
 * Inbound Relay, later "function.error"); this plugin subscribes to the configured type
 * prefixes, matches each event against alerts.json, and delivers one HTTP POST per matching
 * destination with the host's HTTP client.
 *
 * Per destination: a token bucket (max_per_minute) decides at arrival whether an alert is sent
 * at all; accepted alerts wait in a bounded FIFO (queue_size, the oldest dropped first) and go
 * out one at a time, so a slow or failing receiver holds back only its own alerts. Failures
 * worth retrying (transport errors, 429, 5xx) are retried with capped exponential backoff and
 * jitter; a webhook is re-signed on every attempt so its timestamp stays fresh.
 *
 * Everything here is per worker process, as every plugin's state is (abi/README.md): each
 * worker rate-limits the events its own requests produced.
 *
 * Never logged: the signing key, alert bodies, and destination URLs beyond scheme and host
 * (a Slack or Discord webhook URL is itself a credential).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "alerts_core.h"
#include "evserver/evs_plugin.h"
#include "token_bucket.h"

#define ALERTS_VERSION "0.1.0"
#define USER_AGENT "evserver-alerts/" ALERTS_VERSION
#define KEY_FILE_NAME "alerts-signing.key"
#define KEY_MIN 32   /* bytes of key text */
#define KEY_MAX 4096
#define MAX_PREFIXES 16
#define TICK_MS 1000 /* how often rate-limited destinations are checked for a summary */

typedef struct alerts_state alerts_state;

typedef struct item {
  struct item *next;
  char *body;
  size_t len;
  char event_type[64];
  char delivery_id[33]; /* the same on every attempt, so receivers can drop duplicates */
  unsigned attempts;    /* attempts made so far */
} item;

typedef struct dest {
  alerts_state *st;
  const evs__alert_dest *cfg;
  char origin[256]; /* scheme://host[:port], for logs */
  item *head, *tail;
  size_t nqueued;
  int inflight;      /* head is being sent */
  evs_timer *retry;  /* head waits for its next attempt */
  evs_token_bucket bucket;
  uint64_t suppressed; /* dropped by the rate limit since the last summary */
} dest;

struct alerts_state {
  const evs_host *host;
  evs_plugin *plugin;
  evs__alerts_config *cfg;
  dest *dests;
  evs_timer *ticker;
  uint8_t key[KEY_MAX];
  size_t key_len;
  int64_t max_per_minute, retries, timeout_ms, queue_size;
  const char *ca_file;
};

static const evs_config_item items[] = {
    {"alerts_config", EVS_CONFIG_PATH, "alerts.json", 0, 0, 0,
     "the alerts (relay or function, type, url) as JSON; a missing file means no alerts"},
    {"signing_key_file", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "HMAC-SHA256 key for X-Evervault-Signature (default: " KEY_FILE_NAME
     " in the state directory, generated on first start)"},
    {"event_prefixes", EVS_CONFIG_STRING, "relay.", 0, 0, 0,
     "space-separated event type prefixes to alert on"},
    {"max_per_minute", EVS_CONFIG_INT, "30", 1, 100000, 0,
     "alerts per destination per minute (per worker); more are dropped and summarised"},
    {"retries", EVS_CONFIG_INT, "5", 0, 20, 0,
     "retries after a transport error, 429 or 5xx (backoff 1s doubling to 60s, jittered)"},
    {"timeout", EVS_CONFIG_DURATION, "10s", 100, 300000, 0, "time allowed for one delivery attempt"},
    {"queue_size", EVS_CONFIG_INT, "1000", 1, 100000, 0,
     "alerts waiting per destination; the oldest is dropped when full"},
    {"ca_file", EVS_CONFIG_PATH, NULL, 0, 0, 0,
     "CA bundle for https destinations (default: [upstream] ca_file, else the system's)"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void iso_now(char *buf, size_t len) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  char base[32];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf, len, "%s.%03dZ", base, (int)(ts.tv_nsec / 1000000) % 1000);
}

/* nbytes (<= 32) random bytes as lower-case hex into out (2 * nbytes + 1 bytes). Also makes
 * the signing key, hence the wipe. Returns 0, or -EIO if the generator failed. */
static int random_hex(char *out, size_t nbytes) {
  uint8_t r[32];
  static const char hex[] = "0123456789abcdef";
  if (nbytes > sizeof r) nbytes = sizeof r;
  if (RAND_bytes(r, (int)nbytes) != 1) return -EIO;
  for (size_t i = 0; i < nbytes; i++) {
    out[2 * i] = hex[r[i] >> 4];
    out[2 * i + 1] = hex[r[i] & 15];
  }
  out[2 * nbytes] = 0;
  OPENSSL_cleanse(r, sizeof r);
  return 0;
}

/* ---- the queue ----------------------------------------------------------------------------- */

static void item_free(item *it) {
  if (!it) return;
  free(it->body);
  free(it);
}

static item *pop_head(dest *d) {
  item *it = d->head;
  if (!it) return NULL;
  d->head = it->next;
  if (!d->head) d->tail = NULL;
  d->nqueued--;
  return it;
}

static void kick(dest *d);

/* Takes ownership of body. */
static void enqueue(dest *d, char *body, size_t len, const char *event_type) {
  alerts_state *st = d->st;
  item *it = calloc(1, sizeof *it);
  if (!it) {
    free(body);
    st->host->counter_add(st->plugin, "alerts_dropped_queue", 1);
    return;
  }
  it->body = body;
  it->len = len;
  snprintf(it->event_type, sizeof it->event_type, "%s", event_type);
  if (random_hex(it->delivery_id, 16) < 0) /* an id, not a secret: a fallback will do */
    snprintf(it->delivery_id, sizeof it->delivery_id, "%032llx", (unsigned long long)now_ms());
  if (d->nqueued >= (size_t)st->queue_size) {
    /* Full: drop the oldest alert that is not on its way (the head may be in flight or
     * waiting for a retry, and is then the one being worked on). */
    item *victim;
    if (d->head && (d->inflight || d->retry)) {
      victim = d->head->next;
      if (victim) {
        d->head->next = victim->next;
        if (d->tail == victim) d->tail = d->head;
        d->nqueued--;
      }
    } else {
      victim = pop_head(d);
    }
    if (victim) {
      item_free(victim);
      st->host->counter_add(st->plugin, "alerts_dropped_queue", 1);
    }
  }
  if (d->tail) d->tail->next = it;
  else d->head = it;
  d->tail = it;
  d->nqueued++;
  kick(d);
}

/* ---- delivery ----------------------------------------------------------------------------- */

static void on_sent(void *arg, int status, const uint8_t *body, size_t body_len);

static void on_retry_timer(void *arg) {
  dest *d = arg;
  d->st->host->timer_free(d->retry);
  d->retry = NULL;
  kick(d);
}

static void finish_head(dest *d, int ok, int status) {
  alerts_state *st = d->st;
  item *it = pop_head(d);
  if (ok) {
    st->host->counter_add(st->plugin, "alerts_sent", 1);
  } else {
    st->host->counter_add(st->plugin, "alerts_failed", 1);
    if (status > 0)
      st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                    "alert to %s (%s) failed: the receiver answered %d after %u attempt(s)",
                    d->origin, it ? it->event_type : "?", status, it ? it->attempts : 0);
    else
      st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                    "alert to %s (%s) failed: %s (%d) after %u attempt(s)", d->origin,
                    it ? it->event_type : "?",
                    status == EVS_EUPSTREAM_TIMEOUT   ? "timed out"
                    : status == EVS_EUPSTREAM_REFUSED ? "connection refused"
                    : status == EVS_ETLS              ? "TLS failure"
                                                      : "transport error",
                    status, it ? it->attempts : 0);
  }
  item_free(it);
}

/* A failed attempt of the head: schedule another or give up. The caller kicks the queue. */
static void attempt_failed(dest *d, int status) {
  alerts_state *st = d->st;
  item *it = d->head;
  if (evs__alert_retryable(status) && it->attempts <= (unsigned)st->retries) {
    uint32_t rnd = 0;
    if (RAND_bytes((uint8_t *)&rnd, sizeof rnd) != 1) rnd = (uint32_t)now_ms();
    uint64_t delay = evs__alert_backoff_ms(it->attempts, rnd);
    d->retry = st->host->timer_start(st->plugin, delay, 0, on_retry_timer, d);
    if (d->retry) {
      st->host->counter_add(st->plugin, "alerts_retried", 1);
      st->host->log(st->plugin, NULL, EVS_LOG_DEBUG, "alert to %s: attempt %u got %d; retry in %llu ms",
                    d->origin, it->attempts, status, (unsigned long long)delay);
      return;
    }
  }
  finish_head(d, 0, status);
}

static void send_head(dest *d) {
  alerts_state *st = d->st;
  item *it = d->head;
  evs_header h[5];
  size_t n = 0;
  char sig[EVS__ALERTS_SIG_MAX];
  h[n++] = (evs_header){"Content-Type", 12, "application/json", 16};
  h[n++] = (evs_header){"User-Agent", 10, USER_AGENT, sizeof USER_AGENT - 1};
  if (d->cfg->kind == EVS__ALERT_WEBHOOK) {
    if (evs__alert_sign(st->key, st->key_len, (int64_t)time(NULL), (const uint8_t *)it->body,
                        it->len, sig, sizeof sig) < 0) {
      finish_head(d, 0, -EIO);
      return;
    }
    h[n++] = (evs_header){"X-Evervault-Signature", 21, sig, strlen(sig)};
    h[n++] = (evs_header){"X-Evervault-Event", 17, it->event_type, strlen(it->event_type)};
    h[n++] = (evs_header){"X-Evervault-Delivery", 20, it->delivery_id, strlen(it->delivery_id)};
  }
  evs_client_request cr;
  memset(&cr, 0, sizeof cr);
  cr.size = sizeof cr;
  cr.method = "POST";
  cr.url = d->cfg->url;
  cr.headers = h;
  cr.nheaders = n;
  cr.body = (const uint8_t *)it->body;
  cr.body_len = it->len;
  cr.timeout_ms = (uint64_t)st->timeout_ms;
  cr.ca_file = st->ca_file;
  cr.verify = 1;
  it->attempts++;
  int rc = st->host->http_request(st->plugin, &cr, on_sent, d);
  if (rc == -EINVAL) { /* the host's client cannot use this URL: retrying will not help */
    finish_head(d, 0, rc);
    return;
  }
  if (rc < 0) {
    attempt_failed(d, rc);
    return;
  }
  d->inflight = 1;
}

static void on_sent(void *arg, int status, const uint8_t *body, size_t body_len) {
  dest *d = arg;
  (void)body; /* a receiver's answer is never logged: it may echo the alert */
  (void)body_len;
  d->inflight = 0;
  if (!d->head) return;
  if (status >= 200 && status < 300) finish_head(d, 1, status);
  else attempt_failed(d, status);
  kick(d);
}

/* Sends the head if nothing is in flight or waiting. Each send_head starts a request, sets a
 * retry timer or drops the head, so the loop ends. */
static void kick(dest *d) {
  while (d->head && !d->inflight && !d->retry) send_head(d);
}

/* ---- events ------------------------------------------------------------------------------- */

static void on_event(void *state, const evs_event *e) {
  alerts_state *st = state;
  evs__alert_event *ev = NULL;
  int rc = evs__alert_event_parse(e->type, e->json, &ev);
  if (rc < 0) {
    st->host->log(st->plugin, NULL, EVS_LOG_WARN, "event %s ignored: %s", e->type,
                  rc == -ENOMEM ? "out of memory" : "not a JSON object");
    return;
  }
  uint64_t now = now_ms();
  for (size_t i = 0; i < st->cfg->n; i++) {
    dest *d = &st->dests[i];
    if (!evs__alert_dest_matches(d->cfg, ev)) continue;
    if (!evs_token_bucket_take(&d->bucket, now)) {
      if (d->suppressed++ == 0)
        st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                      "alerts to %s exceed %lld per minute; dropping them until the rate falls",
                      d->origin, (long long)st->max_per_minute);
      st->host->counter_add(st->plugin, "alerts_dropped_rate", 1);
      continue;
    }
    size_t len = 0;
    char *body = evs__alert_body(d->cfg->kind, ev, &len);
    if (!body) {
      st->host->counter_add(st->plugin, "alerts_dropped_queue", 1);
      continue;
    }
    enqueue(d, body, len, ev->type);
  }
  evs__alert_event_free(ev);
}

/* Once a rate-limited destination has a token again, tell it how many alerts it missed. */
static void on_tick(void *arg) {
  alerts_state *st = arg;
  uint64_t now = now_ms();
  for (size_t i = 0; i < st->cfg->n; i++) {
    dest *d = &st->dests[i];
    if (!d->suppressed || !evs_token_bucket_take(&d->bucket, now)) continue;
    char ts[40];
    iso_now(ts, sizeof ts);
    size_t len = 0;
    char *body = evs__alert_summary_body(d->cfg->kind, d->suppressed, st->max_per_minute, ts, &len);
    if (!body) continue;
    st->host->log(st->plugin, NULL, EVS_LOG_INFO, "%llu alert(s) to %s were suppressed",
                  (unsigned long long)d->suppressed, d->origin);
    d->suppressed = 0;
    enqueue(d, body, len, "alerts.suppressed");
  }
}

/* ---- the signing key ---------------------------------------------------------------------- */

/* Writes a new random key to path without ever exposing a partial file: a private temporary
 * file, then link(2), which fails if another worker got there first (then its key is used). */
static int generate_key(alerts_state *st, const char *path) {
  char tmp[PATH_MAX];
  char hex[2 * 32 + 2];
  if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp) return -ENAMETOOLONG;
  if (random_hex(hex, 32) < 0) return -EIO;
  size_t len = 2 * 32 + 1;
  hex[len - 1] = '\n';
  int fd = mkstemp(tmp); /* mode 0600 */
  if (fd < 0) {
    int e = errno;
    OPENSSL_cleanse(hex, sizeof hex);
    return -e;
  }
  int rc = 0;
  errno = 0;
  if (fchmod(fd, 0600) < 0 || write(fd, hex, len) != (ssize_t)len || fsync(fd) < 0)
    rc = errno ? -errno : -EIO; /* a short write sets no errno */
  OPENSSL_cleanse(hex, sizeof hex);
  if (close(fd) < 0 && rc == 0) rc = -errno;
  if (rc == 0 && link(tmp, path) < 0 && errno != EEXIST) rc = -errno;
  unlink(tmp);
  if (rc == 0)
    st->host->log(st->plugin, NULL, EVS_LOG_INFO, "webhook signing key ready at %s", path);
  return rc;
}

static int read_key(alerts_state *st, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    st->host->log(st->plugin, NULL, EVS_LOG_ERROR, "signing key %s: %s", path, strerror(e));
    return -e;
  }
  struct stat sb;
  if (fstat(fd, &sb) == 0 && (sb.st_mode & 077))
    st->host->log(st->plugin, NULL, EVS_LOG_WARN,
                  "signing key %s is readable by group or others (mode %03o); chmod 600 it",
                  path, (unsigned)(sb.st_mode & 0777));
  uint8_t buf[KEY_MAX + 1];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (len == sizeof buf) break;
  }
  close(fd);
  size_t b = 0, e = len;
  while (b < e && (buf[b] == ' ' || buf[b] == '\t' || buf[b] == '\n' || buf[b] == '\r')) b++;
  while (e > b && (buf[e - 1] == ' ' || buf[e - 1] == '\t' || buf[e - 1] == '\n' ||
                   buf[e - 1] == '\r'))
    e--;
  int rc = 0;
  if (len > KEY_MAX || e - b < KEY_MIN) {
    st->host->log(st->plugin, NULL, EVS_LOG_ERROR,
                  "signing key %s: expected %d to %d bytes of key text", path, KEY_MIN, KEY_MAX);
    rc = -EINVAL;
  } else {
    memcpy(st->key, buf + b, e - b);
    st->key_len = e - b;
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return rc;
}

static int load_key(alerts_state *st) {
  const char *path = st->host->config_string(st->plugin, "signing_key_file");
  char def[PATH_MAX];
  if (!path) {
    const char *sd = st->host->state_dir(st->plugin);
    if (!sd || snprintf(def, sizeof def, "%s/%s", sd, KEY_FILE_NAME) >= (int)sizeof def)
      return -ENAMETOOLONG;
    path = def;
    if (access(path, F_OK) < 0 && errno == ENOENT) {
      int rc = generate_key(st, path);
      if (rc < 0) {
        st->host->log(st->plugin, NULL, EVS_LOG_ERROR, "cannot create the signing key %s: %s",
                      path, strerror(-rc));
        return rc;
      }
    }
  }
  return read_key(st, path);
}

/* ---- init and fini ------------------------------------------------------------------------ */

static void state_free(alerts_state *st) {
  if (!st) return;
  if (st->ticker) st->host->timer_free(st->ticker);
  if (st->dests) {
    for (size_t i = 0; i < st->cfg->n; i++) {
      dest *d = &st->dests[i];
      if (d->retry) st->host->timer_free(d->retry);
      while (d->head) item_free(pop_head(d));
    }
  }
  free(st->dests);
  evs__alerts_config_free(st->cfg);
  OPENSSL_cleanse(st->key, sizeof st->key);
  free(st);
}

static int subscribe(alerts_state *st) {
  const char *list = st->host->config_string(st->plugin, "event_prefixes");
  int n = 0;
  for (const char *p = list ? list : ""; *p;) {
    size_t len = strcspn(p, " \t,");
    if (len) {
      char prefix[64];
      if (len >= sizeof prefix || n == MAX_PREFIXES) {
        st->host->log(st->plugin, NULL, EVS_LOG_ERROR,
                      "event_prefixes: at most %d prefixes of at most %zu bytes", MAX_PREFIXES,
                      sizeof prefix - 1);
        return -EINVAL;
      }
      memcpy(prefix, p, len);
      prefix[len] = 0;
      int rc = st->host->subscribe_events(st->plugin, prefix, on_event);
      if (rc < 0) return rc;
      n++;
    }
    p += len;
    p += strspn(p, " \t,");
  }
  if (n == 0) {
    st->host->log(st->plugin, NULL, EVS_LOG_ERROR, "event_prefixes is empty");
    return -EINVAL;
  }
  return 0;
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  alerts_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  st->max_per_minute = host->config_int(plugin, "max_per_minute");
  st->retries = host->config_int(plugin, "retries");
  st->timeout_ms = host->config_int(plugin, "timeout");
  st->queue_size = host->config_int(plugin, "queue_size");
  st->ca_file = host->config_string(plugin, "ca_file");

  const char *path = host->config_string(plugin, "alerts_config");
  char err[512] = "";
  int rc = evs__alerts_config_load_file(path, &st->cfg, err, sizeof err);
  if (rc == -ENOENT) {
    host->log(plugin, NULL, EVS_LOG_INFO, "%s does not exist: no alerts configured", path);
    rc = evs__alerts_config_parse("[]", 2, path, &st->cfg, err, sizeof err);
  }
  if (rc < 0) {
    host->log(plugin, NULL, EVS_LOG_ERROR, "%s", err[0] ? err : strerror(-rc));
    state_free(st);
    return rc;
  }
  /* Only webhooks are signed: without one, no key file is read or created. */
  int webhooks = 0;
  for (size_t i = 0; i < st->cfg->n; i++) webhooks |= st->cfg->dests[i].kind == EVS__ALERT_WEBHOOK;
  if ((webhooks && (rc = load_key(st)) < 0) || (rc = subscribe(st)) < 0) {
    state_free(st);
    return rc;
  }
  st->dests = calloc(st->cfg->n ? st->cfg->n : 1, sizeof *st->dests);
  if (!st->dests) {
    state_free(st);
    return -ENOMEM;
  }
  uint64_t now = now_ms();
  for (size_t i = 0; i < st->cfg->n; i++) {
    dest *d = &st->dests[i];
    d->st = st;
    d->cfg = &st->cfg->dests[i];
    evs__alert_url_origin(d->cfg->url, d->origin, sizeof d->origin);
    evs_token_bucket_init(&d->bucket, st->max_per_minute, st->max_per_minute, now);
    const char *h = d->cfg->url + 7;
    int loopback = strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost", 9) == 0 ||
                   strncmp(h, "[::1]", 5) == 0;
    if (strncmp(d->cfg->url, "http://", 7) == 0 && !loopback)
      host->log(plugin, NULL, EVS_LOG_WARN,
                "alerts to %s travel unencrypted (http://); use https:// beyond this host",
                d->origin);
  }
  if (st->cfg->n) {
    st->ticker = host->timer_start(plugin, TICK_MS, TICK_MS, on_tick, st);
    if (!st->ticker) {
      state_free(st);
      return -ENOMEM;
    }
  }
  host->log(plugin, NULL, EVS_LOG_INFO, "%zu alert(s), %zu destination(s) from %s",
            st->cfg->nentries, st->cfg->n, path);
  *ret_state = st;
  return 0;
}

/* Alerts still queued are lost with the worker (they are not persisted): the count is logged
 * so an operator knows. The host runs no timer or event callback after fini. */
static void fini(void *state) {
  alerts_state *st = state;
  size_t left = 0;
  for (size_t i = 0; st->dests && i < st->cfg->n; i++) left += st->dests[i].nqueued;
  if (left)
    st->host->log(st->plugin, NULL, EVS_LOG_WARN, "%zu undelivered alert(s) dropped at shutdown",
                  left);
  state_free(st);
}

EVS_PLUGIN_DEFINE("alerts", ALERTS_VERSION,
                  "Alerts: relay and function errors to webhooks, Slack and Discord", items, init,
                  fini);
