/*
 * Unit tests of plugins/relay-inbound/relay_admin.c, the relay admin endpoints, against a fake
 * host table and fake relay_int.h functions (the real ones live in relay_inbound.c, which this
 * test does not link). The fake host queues store and body callbacks and runs them when the
 * test says so, as the real host runs them on a later loop turn; it "finishes" a request when
 * it is answered by calling the plugin's request-data free function, as the real host does.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "relay_int.h"

/* ---- the fake request and host ------------------------------------------------------------ */

struct evs_request {
  evs_request_info info;
  void *data;
  void (*free_fn)(void *);
  int answered;
  int status;
  char code[64];
  char body[8192];
};

struct relay_state {
  char path[256];
  size_t n;            /* relays in the "configuration in force" */
  evs__relay_config cfg;
  int replace_calls;
  char *replaced;      /* the last buffer relay_config_replace accepted */
  int shared;          /* config_source = store */
  int publish_status;  /* what relay_config_publish's callback reports */
  char *published;     /* the last buffer published */
};

static relay_state g_st;

/* One queued host callback. */
static struct {
  enum { Q_NONE, Q_BODY, Q_SCAN, Q_QUERY } kind;
  void *cb;
  void *arg;
  char prefix[512];
  char stream[64];
  int64_t since;
  size_t limit;
  size_t max_bytes;
} g_q;

static const char *g_body;      /* what read_body delivers */
static int g_body_status;
static const char *const *g_records; /* scan: key,value pairs; query: JSON records */
static size_t g_nrecords;

static void finish(evs_request *req) {
  req->answered = 1;
  if (req->free_fn) {
    void (*fn)(void *) = req->free_fn;
    req->free_fn = NULL;
    fn(req->data);
  }
}

static const evs_request_info *h_request_info(evs_request *req) { return &req->info; }

static void h_set_data(evs_request *req, evs_plugin *p, void *data, void (*free_fn)(void *)) {
  (void)p;
  req->data = data;
  req->free_fn = free_fn;
}

static int h_respond(evs_request *req, int status, const evs_header *h, size_t nh,
                     const uint8_t *body, size_t len) {
  (void)h;
  (void)nh;
  assert_false(req->answered);
  assert_true(len < sizeof req->body);
  req->status = status;
  memcpy(req->body, body, len);
  req->body[len] = '\0';
  finish(req);
  return 0;
}

static int h_respond_error(evs_request *req, int status, const char *code, const char *detail) {
  assert_false(req->answered);
  req->status = status;
  snprintf(req->code, sizeof req->code, "%s", code);
  snprintf(req->body, sizeof req->body, "%s", detail);
  finish(req);
  return 0;
}

static int h_read_body(evs_request *req, size_t max_bytes,
                       void (*cb)(void *, int, const uint8_t *, size_t), void *arg) {
  (void)req;
  g_q.kind = Q_BODY;
  g_q.cb = (void *)cb;
  g_q.arg = arg;
  g_q.max_bytes = max_bytes;
  return 0;
}

static int h_store_scan(evs_plugin *p, const char *prefix, evs_store_scan_cb cb, void *arg) {
  (void)p;
  g_q.kind = Q_SCAN;
  g_q.cb = (void *)cb;
  g_q.arg = arg;
  snprintf(g_q.prefix, sizeof g_q.prefix, "%s", prefix);
  return 0;
}

typedef void (*query_cb)(void *, int, int64_t, const char *);
static int h_store_query(evs_plugin *p, const char *stream, int64_t since, size_t limit,
                         query_cb cb, void *arg) {
  (void)p;
  g_q.kind = Q_QUERY;
  g_q.cb = (void *)cb;
  g_q.arg = arg;
  snprintf(g_q.stream, sizeof g_q.stream, "%s", stream);
  g_q.since = since;
  g_q.limit = limit;
  return 0;
}

/* Runs the queued callback, as the host's next loop turn would. */
static void run_queued(void) {
  int kind = g_q.kind;
  g_q.kind = Q_NONE;
  if (kind == Q_BODY) {
    ((void (*)(void *, int, const uint8_t *, size_t))g_q.cb)(
        g_q.arg, g_body_status, (const uint8_t *)(g_body ? g_body : ""), g_body ? strlen(g_body) : 0);
  } else if (kind == Q_SCAN) {
    evs_store_scan_cb cb = (evs_store_scan_cb)g_q.cb;
    for (size_t i = 0; i + 1 < g_nrecords; i += 2)
      if (strncmp(g_records[i], g_q.prefix, strlen(g_q.prefix)) == 0)
        cb(g_q.arg, 0, g_records[i], (const uint8_t *)g_records[i + 1], strlen(g_records[i + 1]));
    cb(g_q.arg, 0, NULL, NULL, 0);
  } else if (kind == Q_QUERY) {
    query_cb cb = (query_cb)g_q.cb;
    for (size_t i = 0; i < g_nrecords && i < g_q.limit; i++) cb(g_q.arg, 0, 1000 + (int64_t)i, g_records[i]);
    cb(g_q.arg, 0, 0, NULL);
  } else {
    fail_msg("no host callback was queued");
  }
}

static void h_log(evs_plugin *p, evs_request *req, evs_log_level level, const char *fmt, ...) {
  (void)p, (void)req, (void)level, (void)fmt;
}

static const evs_host g_host = {
    .size = sizeof(evs_host),
    .log = h_log,
    .request_info = h_request_info,
    .request_set_data = h_set_data,
    .respond = h_respond,
    .respond_error = h_respond_error,
    .read_body = h_read_body,
    .store_scan = h_store_scan,
    .store_query = h_store_query,
};

/* ---- the fake relay_int.h functions ------------------------------------------------------- */

const evs_host *relay_host(const relay_state *st) {
  (void)st;
  return &g_host;
}
evs_plugin *relay_plugin(const relay_state *st) {
  (void)st;
  return NULL;
}
const char *relay_config_path(const relay_state *st) { return st->path; }
const evs__relay_config *relay_current_config(const relay_state *st) {
  g_st.cfg.n = st->n;
  return &g_st.cfg;
}

/* Accepts any JSON object whose relays all have a string destinationDomain. */
int relay_config_replace(relay_state *st, const char *buf, size_t len, char *err, size_t errlen) {
  st->replace_calls++;
  json_t *v = json_loadb(buf, len, 0, NULL);
  const char *k;
  json_t *r;
  int good = json_is_object(v);
  json_object_foreach(v, k, r) good = good && json_is_string(json_object_get(r, "destinationDomain"));
  if (!good) {
    json_decref(v);
    snprintf(err, errlen, "relay-config.json: $: invalid");
    return -EINVAL;
  }
  st->n = json_object_size(v);
  json_decref(v);
  free(st->replaced);
  st->replaced = strndup(buf, len);
  FILE *f = fopen(st->path, "w");
  assert_non_null(f);
  fwrite(buf, 1, len, f);
  fclose(f);
  return 0;
}

int relay_config_shared(const relay_state *st) { return st->shared; }

/* Reports at once: the admin code must cope with a callback before the call returns. */
int relay_config_publish(relay_state *st, const char *buf, size_t len, relay_publish_cb cb,
                         void *arg) {
  free(st->published);
  st->published = strndup(buf, len);
  cb(arg, st->publish_status);
  return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static void new_req(evs_request *req, const char *listener, const char *method, const char *path,
                    const char *query) {
  memset(req, 0, sizeof *req);
  req->info.size = sizeof req->info;
  req->info.listener = listener;
  req->info.method = method;
  req->info.path = path;
  req->info.query = query;
  req->info.host = "localhost";
}

static json_t *body_json(evs_request *req) {
  json_t *v = json_loads(req->body, 0, NULL);
  assert_non_null(v);
  return v;
}

static void write_file(const char *text) {
  FILE *f = fopen(g_st.path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup(void **state) {
  (void)state;
  free(g_st.replaced);
  free(g_st.published);
  memset(&g_st, 0, sizeof g_st);
  snprintf(g_st.path, sizeof g_st.path, "/tmp/test_relay_admin.%ld.json", (long)getpid());
  write_file("{\"a.test\": {\"destinationDomain\": \"a.example.com\"},\n"
             " \"B.test\": {\"destinationDomain\": \"b.example.com\"}}");
  g_st.n = 2;
  memset(&g_q, 0, sizeof g_q);
  g_body = NULL;
  g_body_status = 0;
  g_records = NULL;
  g_nrecords = 0;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  unlink(g_st.path);
  free(g_st.replaced);
  g_st.replaced = NULL;
  free(g_st.published);
  g_st.published = NULL;
  return 0;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void declines_what_is_not_its_own(void **state) {
  (void)state;
  evs_request req;
  new_req(&req, "http", "GET", "/relays", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_DECLINED);
  new_req(&req, "admin", "GET", "/apps", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_DECLINED);
  new_req(&req, "admin", "GET", "/relaysx", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_DECLINED);
  new_req(&req, "admin", "GET", "/relays/a/b", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_DECLINED);
  assert_false(req.answered);
  new_req(&req, "admin", "POST", "/relays", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_HANDLED);
  assert_int_equal(req.status, 405);
}

static void get_relays_is_the_file(void **state) {
  (void)state;
  evs_request req;
  new_req(&req, "admin", "GET", "/relays", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_HANDLED);
  assert_int_equal(req.status, 200);
  json_t *v = body_json(&req);
  assert_string_equal(json_string_value(json_object_get(v, "path")), g_st.path);
  json_t *r = json_object_get(v, "relays");
  assert_int_equal(json_object_size(r), 2);
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "B.test"),
                                                        "destinationDomain")),
                      "b.example.com");
  json_decref(v);

  write_file("{\"a.test\": ");
  new_req(&req, "admin", "GET", "/relays", "");
  relay_admin_route(&g_st, &req);
  assert_int_equal(req.status, 500);
  assert_non_null(strstr(req.body, g_st.path));
}

static void put_replaces_or_reports(void **state) {
  (void)state;
  evs_request req;
  new_req(&req, "admin", "PUT", "/relays", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_HANDLED);
  assert_false(req.answered); /* waits for the body */
  assert_int_equal(g_q.max_bytes, EVS_RELAY_CONFIG_MAX_BYTES);
  g_body = "{\"c.test\": {\"destinationDomain\": \"c\"}}";
  run_queued();
  assert_int_equal(req.status, 200);
  assert_string_equal(req.body, "{\"relays\":1}");
  assert_string_equal(g_st.replaced, g_body);

  new_req(&req, "admin", "PUT", "/relays", "");
  relay_admin_route(&g_st, &req);
  g_body = "{\"c.test\": {}}";
  run_queued();
  assert_int_equal(req.status, 400);
  assert_string_equal(req.code, "bad-request");
  assert_string_equal(req.body, "relay-config.json: $: invalid");

  new_req(&req, "admin", "PUT", "/relays", "");
  relay_admin_route(&g_st, &req);
  g_body_status = -E2BIG;
  run_queued();
  assert_int_equal(req.status, 413);
  assert_int_equal(g_st.replace_calls, 2);
}

/* config_source = store: a change is answered once the store has it, and a store that refused
 * it is a 503 saying only this node has it. */
static void shared_config_is_published(void **state) {
  (void)state;
  evs_request req;
  g_st.shared = 1;
  new_req(&req, "admin", "PUT", "/relays", "");
  relay_admin_route(&g_st, &req);
  g_body = "{\"c.test\": {\"destinationDomain\": \"c\"}}";
  run_queued();
  assert_int_equal(req.status, 200);
  assert_string_equal(req.body, "{\"relays\":1}");
  assert_string_equal(g_st.published, g_body);

  g_st.publish_status = -ENOTCONN;
  new_req(&req, "admin", "PUT", "/relays", "");
  relay_admin_route(&g_st, &req);
  run_queued();
  assert_int_equal(req.status, 503);
  assert_string_equal(req.code, "service-unavailable");

  g_st.publish_status = 0;
  new_req(&req, "admin", "DELETE", "/relays/c.test", "");
  relay_admin_route(&g_st, &req);
  assert_int_equal(req.status, 200);
  assert_string_equal(g_st.published, "{}");
}

static void delete_removes_one_key(void **state) {
  (void)state;
  evs_request req;
  new_req(&req, "admin", "DELETE", "/relays/b.TEST", "");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_HANDLED);
  assert_int_equal(req.status, 200);
  json_t *v = body_json(&req);
  assert_string_equal(json_string_value(json_object_get(v, "deleted")), "b.test");
  assert_int_equal(json_integer_value(json_object_get(v, "relays")), 1);
  json_decref(v);
  v = json_loads(g_st.replaced, 0, NULL);
  assert_int_equal(json_object_size(v), 1);
  assert_non_null(json_object_get(v, "a.test"));
  json_decref(v);

  new_req(&req, "admin", "DELETE", "/relays/b.test", "");
  relay_admin_route(&g_st, &req);
  assert_int_equal(req.status, 404);
  assert_string_equal(req.code, "relay-not-found");
  new_req(&req, "admin", "DELETE", "/relays/%2e%2e", "");
  relay_admin_route(&g_st, &req);
  assert_int_equal(req.status, 404);
  assert_int_equal(g_st.replace_calls, 1);
}

static void structures_by_relay_newest_first(void **state) {
  (void)state;
  static const char *const recs[] = {
      "structure/a.test/0000000000000001", "{\"relay\":\"a.test\",\"method\":\"POST\",\"lastSeen\":5}",
      "structure/a.test/0000000000000002", "{\"relay\":\"a.test\",\"method\":\"GET\",\"lastSeen\":9}",
      "structure/a.test/0000000000000003", "not json",
      "structure/b.test/0000000000000001", "{\"relay\":\"b.test\",\"method\":\"PUT\",\"lastSeen\":7}",
  };
  g_records = recs;
  g_nrecords = sizeof recs / sizeof recs[0];
  evs_request req;
  new_req(&req, "admin", "GET", "/relays/structures", "relay=A.test");
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_HANDLED);
  assert_string_equal(g_q.prefix, "structure/a.test/");
  run_queued();
  assert_int_equal(req.status, 200);
  json_t *v = body_json(&req), *s = json_object_get(v, "structures");
  assert_int_equal(json_array_size(s), 2);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(s, 0), "lastSeen")), 9);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(s, 1), "lastSeen")), 5);
  json_decref(v);

  new_req(&req, "admin", "GET", "/relays/structures", "");
  relay_admin_route(&g_st, &req);
  assert_string_equal(g_q.prefix, "structure/");
  run_queued();
  v = body_json(&req);
  s = json_object_get(v, "structures");
  assert_int_equal(json_array_size(s), 3);
  assert_string_equal(json_string_value(json_object_get(json_array_get(s, 1), "method")), "PUT");
  json_decref(v);

  /* A relay filter can never widen the store prefix. */
  new_req(&req, "admin", "GET", "/relays/structures", "relay=a.test/..");
  relay_admin_route(&g_st, &req);
  assert_int_equal(req.status, 400);
  assert_int_equal(g_q.kind, Q_NONE);
}

static const char *const txs[] = {
    "{\"requestId\":\"r5\",\"relay\":\"a.test\",\"method\":\"GET\",\"status\":404}",
    "{\"requestId\":\"r4\",\"relay\":\"b.test\",\"method\":\"POST\",\"status\":200}",
    "{\"requestId\":\"r3\",\"relay\":\"a.test\",\"method\":\"POST\",\"status\":502}",
    "{\"requestId\":\"r2\",\"relay\":\"A.test\",\"method\":\"post\",\"status\":200}",
    "[]",
    "{\"requestId\":\"r1\",\"relay\":\"a.test\",\"method\":\"PUT\",\"status\":\"200\"}",
};

/* Runs GET /activity?query and returns the request ids answered, joined by commas. */
static void activity(const char *query, int want_status, const char *want_ids) {
  g_records = txs;
  g_nrecords = sizeof txs / sizeof txs[0];
  evs_request req;
  new_req(&req, "admin", "GET", "/activity", query);
  assert_int_equal(relay_admin_route(&g_st, &req), EVS_HANDLED);
  if (want_status != 200) {
    assert_int_equal(req.status, want_status);
    assert_int_equal(g_q.kind, Q_NONE);
    return;
  }
  assert_string_equal(g_q.stream, "transactions");
  run_queued();
  assert_int_equal(req.status, 200);
  json_t *v = body_json(&req), *t;
  char ids[256] = "";
  size_t i;
  json_array_foreach(json_object_get(v, "transactions"), i, t) {
    strcat(ids, i ? "," : "");
    strcat(ids, json_string_value(json_object_get(t, "requestId")));
  }
  json_decref(v);
  assert_string_equal(ids, want_ids);
}

static void activity_filters(void **state) {
  (void)state;
  activity("", 200, "r5,r4,r3,r2,r1");
  assert_int_equal(g_q.since, 0);
  assert_int_equal(g_q.limit, 50);
  activity("limit=2", 200, "r5,r4");
  assert_int_equal(g_q.limit, 2);
  activity("relay=a.test", 200, "r5,r3,r2,r1");
  assert_int_equal(g_q.limit, 10000); /* filters look further back than limit */
  activity("relay=a.test&limit=2", 200, "r5,r3");
  activity("status=4xx", 200, "r5");
  activity("status=5XX", 200, "r3");
  activity("status=200", 200, "r4,r2"); /* r1's status is not a number */
  activity("method=post", 200, "r4,r3,r2");
  activity("requestId=r3", 200, "r3");
  activity("method=POST&status=2xx&relay=a.test", 200, "r2");
  activity("since=1700000000000&relay=b%2etest", 200, "r4");
  assert_int_equal(g_q.since, 1700000000000LL);

  activity("limit=0", 400, NULL);
  activity("limit=1001", 400, NULL);
  activity("limit=x", 400, NULL);
  activity("status=600", 400, NULL);
  activity("status=4x", 400, NULL);
  activity("since=-1", 400, NULL);
  activity("method=GE%0aT", 400, NULL);
  activity("relay=%zz", 400, NULL);
  activity("colour=red", 400, NULL);
}

/* The client goes away while the store is being read: the late callback answers nothing and
 * frees its state (checked by the sanitizer build). */
static void gone_request_is_not_answered(void **state) {
  (void)state;
  g_records = txs;
  g_nrecords = sizeof txs / sizeof txs[0];
  evs_request req;
  new_req(&req, "admin", "GET", "/activity", "");
  relay_admin_route(&g_st, &req);
  finish(&req); /* the host ends the request */
  req.answered = 0;
  run_queued();
  assert_false(req.answered);
  assert_int_equal(req.status, 0);

  new_req(&req, "admin", "PUT", "/relays", "");
  relay_admin_route(&g_st, &req);
  finish(&req);
  req.answered = 0;
  g_body = "{}";
  run_queued();
  assert_false(req.answered);
  assert_int_equal(g_st.replace_calls, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(declines_what_is_not_its_own, setup, teardown),
      cmocka_unit_test_setup_teardown(get_relays_is_the_file, setup, teardown),
      cmocka_unit_test_setup_teardown(put_replaces_or_reports, setup, teardown),
      cmocka_unit_test_setup_teardown(delete_removes_one_key, setup, teardown),
      cmocka_unit_test_setup_teardown(shared_config_is_published, setup, teardown),
      cmocka_unit_test_setup_teardown(structures_by_relay_newest_first, setup, teardown),
      cmocka_unit_test_setup_teardown(activity_filters, setup, teardown),
      cmocka_unit_test_setup_teardown(gone_request_is_not_answered, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
