/*
 * abi-echo: the well-behaved plugin of tests/abi. It answers every request for Host
 * abi-echo.test with 200 and a JSON body echoing the method and path. Before answering, each
 * request walks a chain through the host's asynchronous services (a one-shot timer, store_put,
 * store_get, emit_event and this plugin's own event subscription) and the body reports what each
 * step saw, so test_abi_plugins.py can check the round trips over real HTTP. It also shows the
 * pattern a plugin that answers asynchronously needs: the request may go away (client closed)
 * while a callback is pending, and the free_fn given to request_set_data is how it learns so.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "evserver/evs_plugin.h"

#define ECHO_HOST "abi-echo.test"

/* Opening a plugin runs its ELF constructors: this one records which process ran it (in the file
 * named by ABI_ECHO_CTOR_LOG), so the test can check that the master never opens a plugin. */
__attribute__((constructor)) static void record_opener(void) {
  const char *path = getenv("ABI_ECHO_CTOR_LOG");
  if (!path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%ld\n", (long)getpid());
  fclose(f);
}
#define EVENT_TYPE "abi-echo.request"

typedef struct echo_call echo_call;

typedef struct echo_state {
  const evs_host *host;
  evs_plugin *plugin;
  const char *greeting;  /* owned by the host's configuration */
  int64_t tick_ms;
  int flag;
  evs_timer *ticker;     /* repeating; freed in fini */
  uint64_t ticks;
  uint64_t seq;          /* requests taken */
  uint64_t logged;       /* our requests the LOG hook saw complete */
  uint64_t events;       /* events delivered to our subscription */
  uint64_t orphaned;     /* requests the host freed before their chain ended */
  echo_call *calls;      /* every live call, so fini can release them */
} echo_state;

/* One request's walk through the services. Two references: the request's (dropped by the
 * free_fn when the host frees the request) and the chain's (dropped when the chain ends). */
struct echo_call {
  echo_state *st;
  evs_request *req;      /* NULL once the host has freed the request */
  int refs;
  uint64_t seq;
  evs_timer *timer;
  int timer_fired;
  int waiting_event;
  char key[32];
  char *put_value;       /* "METHOD path", what went into the store */
  char *got_value;       /* what came back out */
  echo_call *next;
};

static const evs_config_item items[] = {
    {"greeting", EVS_CONFIG_STRING, "hello", 0, 0, 0, "echoed back in every response"},
    {"tick", EVS_CONFIG_DURATION, "50ms", 1, 60000, 0, "period of the background ticker"},
    {"flag", EVS_CONFIG_BOOL, "off", 0, 0, 0, "echoed back, to test boolean items"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static void call_unref(echo_call *c) {
  if (--c->refs > 0) return;
  for (echo_call **p = &c->st->calls; *p; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      break;
    }
  }
  free(c->put_value);
  free(c->got_value);
  free(c);
}

/* The host frees the request (answered, or the client went away): forget it. */
static void call_request_gone(void *data) {
  echo_call *c = data;
  if (c->refs > 1) c->st->orphaned++;
  c->req = NULL;
  call_unref(c);
}

/* Appends s as a JSON string; the buffer is sized for the worst case by the caller. */
static size_t json_str(char *out, const char *s) {
  size_t o = 0;
  out[o++] = '"';
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      out[o++] = '\\';
      out[o++] = (char)ch;
    } else if (ch < 0x20) {
      o += (size_t)sprintf(out + o, "\\u%04x", ch);
    } else {
      out[o++] = (char)ch;
    }
  }
  out[o++] = '"';
  out[o] = '\0';
  return o;
}

static char *json_dup(const char *s) {
  char *out = malloc(strlen(s) * 6 + 3);
  if (out) json_str(out, s);
  return out;
}

/* Ends the chain with an error answer, if there is still someone to answer. */
static void call_fail(echo_call *c, const char *step, int rc) {
  if (c->req) {
    char detail[128];
    snprintf(detail, sizeof detail, "abi-echo: %s failed (%d)", step, rc);
    c->st->host->respond_error(c->req, 500, "internal-server-error", detail);
  }
  c->waiting_event = 0;
  call_unref(c);
}

static void call_answer(echo_call *c, const evs_event *ev) {
  echo_state *st = c->st;
  const evs_host *h = st->host;
  if (!c->req) {
    call_unref(c); /* the client left; nothing to answer */
    return;
  }
  const evs_request_info *info = h->request_info(c->req);
  char *method = json_dup(info->method), *path = json_dup(info->path);
  char *query = json_dup(info->query), *greeting = json_dup(st->greeting ? st->greeting : "");
  char *stored = json_dup(c->got_value ? c->got_value : "");
  char *etype = json_dup(ev->type), *ejson = json_dup(ev->json);
  char *body = NULL;
  int len = -1;
  if (method && path && query && greeting && stored && etype && ejson) {
    len = asprintf(&body,
                   "{\"plugin\":\"abi-echo\",\"method\":%s,\"path\":%s,\"query\":%s,"
                   "\"greeting\":%s,\"tick_ms\":%" PRId64 ",\"flag\":%s,\"ticks\":%" PRIu64
                   ",\"seq\":%" PRIu64 ",\"logged\":%" PRIu64 ",\"timer\":%s,\"store\":%s,"
                   "\"store_ok\":%s,\"event_type\":%s,\"event_json\":%s,\"events\":%" PRIu64 "}\n",
                   method, path, query, greeting, st->tick_ms, st->flag ? "true" : "false",
                   st->ticks, c->seq, st->logged, c->timer_fired ? "\"fired\"" : "\"pending\"",
                   stored,
                   c->got_value && strcmp(c->got_value, c->put_value) == 0 ? "true" : "false",
                   etype, ejson, st->events);
  }
  free(method), free(path), free(query), free(greeting), free(stored), free(etype), free(ejson);
  if (len < 0) {
    call_fail(c, "building the response", -ENOMEM);
    return;
  }
  static const evs_header ct = {"Content-Type", 12, "application/json", 16};
  /* respond may complete the request at once, so c->req is not used after it. */
  int rc = h->respond(c->req, 200, &ct, 1, (const uint8_t *)body, (size_t)len);
  free(body);
  if (rc < 0) {
    call_fail(c, "respond", rc);
    return;
  }
  h->store_delete(st->plugin, c->key, NULL, NULL);
  call_unref(c);
}

/* Step 4: our own subscription sees the event the chain emitted. */
static void on_event(void *state, const evs_event *ev) {
  echo_state *st = state;
  st->events++;
  const char *p = strstr(ev->json, "\"seq\":");
  if (!p) return;
  uint64_t seq = strtoull(p + 6, NULL, 10);
  for (echo_call *c = st->calls; c; c = c->next) {
    if (c->seq == seq && c->waiting_event) {
      c->waiting_event = 0;
      call_answer(c, ev);
      return;
    }
  }
}

/* Step 3: the value is back from the store; announce it. */
static void on_got(void *arg, int status, const uint8_t *value, size_t len) {
  echo_call *c = arg;
  if (status < 0) {
    call_fail(c, "store_get", status);
    return;
  }
  c->got_value = strndup((const char *)value, len);
  char json[64];
  snprintf(json, sizeof json, "{\"seq\":%" PRIu64 "}", c->seq);
  evs_event ev = {sizeof ev, EVENT_TYPE, json};
  int rc = c->st->host->emit_event(c->st->plugin, &ev);
  if (rc < 0) {
    call_fail(c, "emit_event", rc);
    return;
  }
  c->waiting_event = 1;
}

/* Step 2: stored; read it back. */
static void on_put(void *arg, int status, const uint8_t *value, size_t len) {
  (void)value;
  (void)len;
  echo_call *c = arg;
  int rc = status < 0 ? status : c->st->host->store_get(c->st->plugin, c->key, on_got, c);
  if (rc < 0) call_fail(c, status < 0 ? "store_put" : "store_get", rc);
}

/* Step 1: the one-shot timer fired; store "METHOD path". */
static void on_timer(void *arg) {
  echo_call *c = arg;
  echo_state *st = c->st;
  c->timer_fired = 1;
  st->host->timer_free(c->timer);
  c->timer = NULL;
  if (!c->req) {
    call_unref(c);
    return;
  }
  int rc = st->host->store_put(st->plugin, c->key, (const uint8_t *)c->put_value,
                               strlen(c->put_value), 60, on_put, c);
  if (rc < 0) call_fail(c, "store_put", rc);
}

static int route(void *state, evs_request *req) {
  echo_state *st = state;
  const evs_host *h = st->host;
  const evs_request_info *info = h->request_info(req);
  if (strcmp(info->host, ECHO_HOST) != 0) return EVS_DECLINED;
  h->counter_add(st->plugin, "echo_requests", 1);
  echo_call *c = calloc(1, sizeof *c);
  if (!c || asprintf(&c->put_value, "%s %s", info->method, info->path) < 0) {
    free(c);
    h->respond_error(req, 500, "internal-server-error", "abi-echo: out of memory");
    return EVS_HANDLED;
  }
  c->st = st;
  c->req = req;
  c->seq = ++st->seq;
  c->refs = 2;
  snprintf(c->key, sizeof c->key, "echo:%" PRIu64, c->seq);
  c->next = st->calls;
  st->calls = c;
  h->request_set_data(req, st->plugin, c, call_request_gone);
  /* ?delay=<ms> holds the answer back, so a test can stop the server while a chain is pending. */
  uint64_t delay = 1;
  const char *d = strstr(info->query, "delay=");
  if (d) delay = strtoull(d + 6, NULL, 10);
  if (delay > 10000) delay = 10000;
  c->timer = h->timer_start(st->plugin, delay, 0, on_timer, c);
  if (!c->timer) call_fail(c, "timer_start", -ENOMEM);
  return EVS_HANDLED;
}

static int log_hook(void *state, evs_request *req) {
  echo_state *st = state;
  if (strcmp(st->host->request_info(req)->host, ECHO_HOST) == 0) st->logged++;
  return EVS_DECLINED;
}

static void on_tick(void *arg) {
  echo_state *st = arg;
  st->ticks++;
}

static void fini(void *state) {
  echo_state *st = state;
  size_t pending = 0;
  for (echo_call *c = st->calls; c; c = c->next) pending++;
  st->host->log(st->plugin, NULL, EVS_LOG_INFO,
                "stopping: %zu chain(s) pending, %" PRIu64 " request(s) freed before their answer",
                pending, st->orphaned);
  /* Requests are gone by now; release the chains still waiting on a timer or an event. */
  while (st->calls) {
    echo_call *c = st->calls;
    st->calls = c->next;
    if (c->timer) st->host->timer_free(c->timer);
    free(c->put_value);
    free(c->got_value);
    free(c);
  }
  st->host->timer_free(st->ticker);
  free(st);
}

static int init(const evs_host *host, evs_plugin *plugin, void **ret_state) {
  echo_state *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->host = host;
  st->plugin = plugin;
  st->greeting = host->config_string(plugin, "greeting");
  st->tick_ms = host->config_int(plugin, "tick");
  st->flag = host->config_bool(plugin, "flag");
  int rc = host->add_hook(plugin, EVS_PHASE_ROUTE, route);
  if (rc == 0) rc = host->add_hook(plugin, EVS_PHASE_LOG, log_hook);
  if (rc == 0) rc = host->subscribe_events(plugin, "abi-echo.", on_event);
  if (rc < 0) {
    free(st);
    return rc;
  }
  /* Started last: on failure above there is nothing to undo but the allocation. */
  st->ticker = host->timer_start(plugin, (uint64_t)st->tick_ms, (uint64_t)st->tick_ms, on_tick, st);
  if (!st->ticker) {
    free(st);
    return -ENOMEM;
  }
  host->log(plugin, NULL, EVS_LOG_INFO, "answering Host %s (tick %" PRId64 "ms)", ECHO_HOST,
            st->tick_ms);
  *ret_state = st;
  return 0;
}

EVS_PLUGIN_DEFINE("abi-echo", "1.0.0", "tests/abi: echoes method and path, exercises services",
                  items, init, fini);
