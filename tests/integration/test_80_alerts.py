"""Alerts (plugins/alerts/): relay error events delivered to webhooks, Slack and Discord.

The events come from the test plugin tests/plugins/emit_event.c (test-emit, loaded from
$EVS_BUILD_DIR/test-plugins.d): `POST /emit-test-event` emits its body as a "relay.error" event,
exactly as relay-inbound emits one for an error answer. The receiver is evstest.Upstream, a
threaded recording HTTP server. Checked here:

- a webhook gets the ten documented fields, as emitted, and nothing else (fields an emitter
  adds beyond the documented ones, such as request data, never leave), with Content-Type,
  User-Agent and an X-Evervault-Signature that verifies with the generated key file (mode 0600);
- only alerts whose relay matches the event's inboundDomain (or "*") receive it;
- a receiver answering 500 twice, then 200, gets the alert three times and it counts as sent
  once (alerts_retried 2, alerts_sent 1); a 400 is final (alerts_failed, no retry);
- a storm of 200 events reaches a destination at most max_per_minute times, the rest are
  counted as alerts_dropped_rate, and a summary follows once the bucket refills;
- Slack gets {"text": ...} and Discord {"content": ..., "allowed_mentions": ...} built from the
  fields only;
- a missing alerts.json loads the plugin with no alerts; an invalid one rejects it;
- the real emitters: relay-inbound's error answers and a response its destination cut short
  after the head (statusGroup ERR); the Outbound Relay's in test_82_outbound_proxy.py.
"""

import hashlib
import hmac
import json
import os
import re
import stat
import time

import evstest

RELAY = "payments-example-com.relay.localhost"
FIELDS = ["teamUuid", "errorMessage", "evMessage", "activityLink", "timestamp", "errorType",
          "statusCode", "statusGroup", "relayUuid", "inboundDomain"]
SECRET_MARKERS = ["4242424242424242", "Bearer sk_live_secret", "ssn=123-45-6789"]


def event(**over):
    ev = {
        "teamUuid": "team_7f3a",
        "errorMessage": "The target refused the connection and could not be reached.",
        "evMessage": "Error in Relay %s while forwarding to 127.0.0.1:9" % RELAY,
        "activityLink": "http://127.0.0.1/activity/relay/0a1b2c",
        "timestamp": "2026-03-01T12:00:00.000Z",
        "errorType": "service-unavailable",
        "statusCode": 503,
        "statusGroup": "5XX",
        "relayUuid": "relay_9c1d",
        "inboundDomain": RELAY,
    }
    ev.update(over)
    return ev


def plugins_dir():
    """A plugins directory holding the built alerts plugin and the test emitter."""
    d = evstest.tmpdir("evs-alerts-plugins-")
    os.symlink(evstest.build_path("plugins.d", "alerts.so"), os.path.join(d, "alerts.so"))
    os.symlink(evstest.build_path("test-plugins.d", "test-emit.so"),
               os.path.join(d, "test-emit.so"))
    return d


def start(alerts, **settings):
    """evserver with alerts.json = alerts (None: no file) and [plugin "alerts"] settings."""
    d = evstest.tmpdir()
    if alerts is not None:
        with open(os.path.join(d, "alerts.json"), "w") as f:
            json.dump(alerts, f)
    cfg = evstest.write_config(d, server={"plugins_dir": plugins_dir(), "log_level": "debug"},
                               plugins={"alerts": settings})
    return evstest.Server(cfg).start()


def emit(srv, ev, count=1, type=None):
    body = json.dumps(ev).encode()
    q = "count=%d" % count + ("&type=%s" % type if type else "")
    raw = evstest.send_raw(srv.port(), (
        "POST /emit-test-event?%s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\nConnection: close\r\n\r\n" % (q, len(body))).encode() + body)
    r = evstest.parse_response(raw)
    assert r.status == 202, (r, r.body)


def counters(srv):
    out = {}
    for line in srv.admin_get("/metrics").text.splitlines():
        m = re.match(r'evserver_plugin_events_total\{plugin="alerts",name="(\w+)"\} (\d+)$', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def wait_counter(srv, name, value, timeout=15):
    return evstest.wait_for(lambda: counters(srv).get(name, 0) >= value, timeout=timeout,
                            what="counter %s >= %d (have %r)" % (name, value, counters(srv)))


def key_of(srv):
    path = os.path.join(srv.config.state_dir, "alerts-signing.key")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    with open(path, "rb") as f:
        return f.read().strip()


def verify_signature(key, req):
    """What a receiver does (plugins/alerts/README.md): split t= and v1=, recompute the HMAC
    over "<t>.<body>", compare in constant time, check the timestamp is recent."""
    sig = req.header("X-Evervault-Signature")
    assert sig, req.headers
    parts = dict(p.split("=", 1) for p in sig.split(","))
    assert set(parts) == {"t", "v1"}, sig
    t = int(parts["t"])
    assert abs(time.time() - t) < 300, (t, time.time())
    want = hmac.new(key, b"%d." % t + req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(want, parts["v1"]), (sig, want)
    # A tampered body must not verify.
    bad = hmac.new(key, b"%d." % t + req.body + b" ", hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(bad, parts["v1"])


# ---- tests ----------------------------------------------------------------------------------

def test_webhook_fields_and_signature():
    hook = evstest.Upstream()
    other = evstest.Upstream()
    srv = start([{"relay": RELAY, "type": "webhook", "url": hook.url + "/hooks/evervault"},
                 {"relay": "other.example.com", "type": "webhook", "url": other.url + "/x"}])
    # An emitter bug that leaks request data into the event must not leak it further.
    leaky = event(requestBody={"card": SECRET_MARKERS[0]}, authorization=SECRET_MARKERS[1],
                  query=SECRET_MARKERS[2])
    emit(srv, leaky)
    hook.wait_requests(1, timeout=10)
    req = hook.requests[0]
    assert req.method == "POST" and req.path == "/hooks/evervault", (req.method, req.path)
    assert req.header("Content-Type") == "application/json", req.headers
    assert req.header("User-Agent", "").startswith("evserver-alerts/"), req.headers
    assert req.header("X-Evervault-Event") == "relay.error", req.headers
    assert re.fullmatch(r"[0-9a-f]{32}", req.header("X-Evervault-Delivery", "")), req.headers
    body = json.loads(req.body)
    assert list(body) == FIELDS, list(body)
    assert body == event(), body
    assert body["errorType"] == "service-unavailable" and body["statusCode"] == 503
    assert body["statusGroup"] == "5XX" and body["inboundDomain"] == RELAY
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["timestamp"])
    everything = req.body + repr(req.headers).encode()
    for m in SECRET_MARKERS:
        assert m.encode() not in everything, m
    verify_signature(key_of(srv), req)
    wait_counter(srv, "alerts_sent", 1)
    time.sleep(0.5)
    assert other.requests == [], "an alert for another relay fired"
    assert len(hook.requests) == 1
    for m in SECRET_MARKERS:
        assert m not in srv.log(), "event data in the log"


def test_wildcard_and_case_insensitive_relay():
    hook = evstest.Upstream()
    star = evstest.Upstream()
    srv = start([{"relay": RELAY.upper(), "type": "webhook", "url": hook.url},
                 {"relay": "*", "type": "webhook", "url": star.url}])
    emit(srv, event(inboundDomain="elsewhere.example.com"))
    emit(srv, event())
    star.wait_requests(2, timeout=10)
    hook.wait_requests(1, timeout=10)
    time.sleep(0.3)
    assert len(hook.requests) == 1 and json.loads(hook.requests[0].body)["inboundDomain"] == RELAY
    # Events of types the plugin does not subscribe to (event_prefixes = "relay.") are ignored.
    emit(srv, event(), type="audit.something")
    time.sleep(0.5)
    assert len(star.requests) == 2


def test_retries_on_500_then_delivers_once():
    answers = [500, 500]

    def handler(req):
        status = answers.pop(0) if answers else 200
        return status, {}, b"nope" if status != 200 else b"ok"

    hook = evstest.Upstream(handler=handler)
    srv = start([{"relay": "*", "type": "webhook", "url": hook.url}], retries=5)
    emit(srv, event())
    wait_counter(srv, "alerts_sent", 1, timeout=20)
    assert len(hook.requests) == 3, len(hook.requests)
    bodies = {r.body for r in hook.requests}
    assert len(bodies) == 1, bodies
    ids = {r.header("X-Evervault-Delivery") for r in hook.requests}
    assert len(ids) == 1, ids  # the same delivery, retried
    key = key_of(srv)
    for r in hook.requests:
        verify_signature(key, r)
    c = counters(srv)
    assert c.get("alerts_retried") == 2 and c.get("alerts_sent") == 1, c
    assert c.get("alerts_failed", 0) == 0, c
    time.sleep(1.0)
    assert len(hook.requests) == 3


def test_client_error_is_final_and_retries_are_bounded():
    bad = evstest.Upstream(status=400)
    down = evstest.Upstream(status=503)
    srv = start([{"relay": "*", "type": "webhook", "url": bad.url},
                 {"relay": "*", "type": "webhook", "url": down.url}], retries=1)
    emit(srv, event())
    wait_counter(srv, "alerts_failed", 2, timeout=20)
    assert len(bad.requests) == 1, len(bad.requests)   # 4xx: no retry
    assert len(down.requests) == 2, len(down.requests)  # 5xx: one retry, then given up
    c = counters(srv)
    assert c.get("alerts_retried") == 1 and c.get("alerts_sent", 0) == 0, c
    log = srv.log()
    assert "answered 400" in log and "answered 503" in log, log[-2000:]


def test_unreachable_destination_is_retried_then_failed():
    port = evstest.free_port()  # nothing listens there
    srv = start([{"relay": "*", "type": "webhook", "url": "http://127.0.0.1:%d/h" % port}],
                retries=1, timeout="2s")
    emit(srv, event())
    wait_counter(srv, "alerts_failed", 1, timeout=20)
    c = counters(srv)
    assert c.get("alerts_retried") == 1, c


def test_storm_is_rate_limited_and_summarised():
    hook = evstest.Upstream()
    # 60 per minute refills one token a second, so the summary comes within seconds.
    srv = start([{"relay": "*", "type": "webhook", "url": hook.url}], max_per_minute=60)
    emit(srv, event(), count=200)
    wait_counter(srv, "alerts_dropped_rate", 140)
    wait_counter(srv, "alerts_sent", 60)
    c = counters(srv)
    assert c["alerts_sent"] + c["alerts_dropped_rate"] >= 200, c
    summaries = evstest.wait_for(
        lambda: [r for r in hook.requests if r.header("X-Evervault-Event") == "alerts.suppressed"],
        timeout=10, what="a suppression summary")
    s = json.loads(summaries[0].body)
    assert s["errorType"] == "alerts-suppressed" and s["suppressedCount"] >= 139, s
    verify_signature(key_of(srv), summaries[0])
    alerts = [r for r in hook.requests if r.header("X-Evervault-Event") == "relay.error"]
    assert len(alerts) <= 60 + 3, len(alerts)  # 60 at once, plus at most one per second since


def test_storm_capped_at_max_per_minute():
    hook = evstest.Upstream()
    srv = start([{"relay": "*", "type": "webhook", "url": hook.url}], max_per_minute=5)
    emit(srv, event(), count=200)
    wait_counter(srv, "alerts_dropped_rate", 195)
    wait_counter(srv, "alerts_sent", 5)
    time.sleep(1.5)
    assert len(hook.requests) == 5, len(hook.requests)


def test_slack_and_discord_payloads():
    slack = evstest.Upstream()
    discord = evstest.Upstream()
    srv = start([{"relay": RELAY, "type": "slack", "url": slack.url + "/services/T0/B0/xyz"},
                 {"relay": RELAY, "type": "discord", "url": discord.url + "/api/webhooks/1/tok"}])
    emit(srv, event(errorMessage="Upstream <refused> & gone @everyone", requestBody="leak-me"))
    slack.wait_requests(1, timeout=10)
    discord.wait_requests(1, timeout=10)
    s = json.loads(slack.requests[0].body)
    assert list(s) == ["text"], s
    t = s["text"]
    assert RELAY in t and "503" in t and "service-unavailable" in t and "5XX" in t, t
    assert "&lt;refused&gt; &amp; gone" in t, t  # Slack markup escaped
    assert "<http://127.0.0.1/activity/relay/0a1b2c|View activity>" in t, t
    d = json.loads(discord.requests[0].body)
    assert set(d) == {"content", "allowed_mentions"}, d
    assert d["allowed_mentions"] == {"parse": []}, d
    assert RELAY in d["content"] and "503" in d["content"], d
    assert "http://127.0.0.1/activity/relay/0a1b2c" in d["content"], d
    for r in (slack.requests[0], discord.requests[0]):
        assert r.header("Content-Type") == "application/json"
        assert b"leak-me" not in r.body
    # Chat webhook URLs are credentials: never in the log.
    log = srv.log()
    assert "/services/T0/B0/xyz" not in log and "/api/webhooks/1/tok" not in log


def test_missing_alerts_file_loads_without_alerts():
    srv = start(None)
    records = srv.log_records()
    assert any("no alerts configured" in r.get("msg", "") for r in records), srv.log()
    plugins = srv.admin_get("/plugins").json()
    text = json.dumps(plugins)
    assert '"alerts"' in text and "rejected" not in text, plugins
    emit(srv, event())
    time.sleep(0.3)
    assert counters(srv).get("alerts_sent", 0) == 0
    # No webhook, no signing key: nothing is created in the state directory.
    assert not os.path.exists(os.path.join(srv.config.state_dir, "alerts-signing.key"))


def test_invalid_alerts_file_is_rejected():
    d = evstest.tmpdir()
    with open(os.path.join(d, "alerts.json"), "w") as f:
        json.dump([{"relay": "*", "type": "pager", "url": "https://hooks.example.com/secret-token"}],
                  f)
    cfg = evstest.write_config(d, server={"plugins_dir": plugins_dir()}, plugins={"alerts": {}})
    r = evstest.run_evserver("-t", "-c", cfg.path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert "$[0]" in out and "expected one of webhook, slack, discord" in out, out
    assert "secret-token" not in out, out


def test_configured_signing_key_is_used():
    hook = evstest.Upstream()
    d = evstest.tmpdir()
    key = b"k" * 40
    with open(os.path.join(d, "my.key"), "wb") as f:
        f.write(key + b"\n")
    os.chmod(os.path.join(d, "my.key"), 0o600)
    with open(os.path.join(d, "alerts.json"), "w") as f:
        json.dump([{"relay": "*", "type": "webhook", "url": hook.url}], f)
    cfg = evstest.write_config(d, server={"plugins_dir": plugins_dir()},
                               plugins={"alerts": {"signing_key_file": "my.key"}})
    srv = evstest.Server(cfg).start()
    emit(srv, event())
    hook.wait_requests(1, timeout=10)
    verify_signature(key, hook.requests[0])
    assert not os.path.exists(os.path.join(cfg.state_dir, "alerts-signing.key"))



def test_relay_errors_reach_the_webhook():
    """The real emitter: relay-inbound answering service-unavailable for a closed destination."""
    hook = evstest.Upstream()
    d = evstest.tmpdir()
    with open(os.path.join(d, "alerts.json"), "w") as f:
        json.dump([{"relay": RELAY, "type": "webhook", "url": hook.url + "/h"}], f)
    pd = plugins_dir()
    os.symlink(evstest.build_path("plugins.d", "relay-inbound.so"),
               os.path.join(pd, "relay-inbound.so"))
    closed = evstest.free_port()
    cfg = evstest.write_config(d, server={"plugins_dir": pd},
                               plugins={"alerts": {}, "relay-inbound": {}},
                               relays={RELAY: {"destinationDomain": "http://127.0.0.1:%d" % closed}})
    srv = evstest.Server(cfg).start()
    body = b'{"card": "%s"}' % SECRET_MARKERS[0].encode()
    raw = evstest.send_raw(srv.port(), (
        "POST /pay?token=%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\nConnection: close\r\n\r\n" % (SECRET_MARKERS[2], RELAY,
                                                                len(body))).encode() + body)
    assert evstest.parse_response(raw).status == 503
    hook.wait_requests(1, timeout=10)
    req = hook.requests[0]
    got = json.loads(req.body)
    assert list(got) == FIELDS, list(got)
    assert got["errorType"] == "service-unavailable" and got["statusCode"] == 503
    # errorMessage explains; errorType carries the code.
    assert got["errorMessage"] == "The target refused the connection and could not be reached."
    assert got["statusGroup"] == "5XX" and got["inboundDomain"] == RELAY
    for m in SECRET_MARKERS:
        assert m.encode() not in req.body, m
    verify_signature(key_of(srv), req)


def test_response_cut_short_reaches_the_webhook():
    """relay-inbound's destination sends a 200 head and part of the body, then resets: the
    client's response is cut short, and the alert says so (statusGroup ERR, the status sent)."""
    import socket
    import struct
    import threading
    hook = evstest.Upstream()
    d = evstest.tmpdir()
    with open(os.path.join(d, "alerts.json"), "w") as f:
        json.dump([{"relay": "*", "type": "webhook", "url": hook.url + "/h"}], f)
    pd = plugins_dir()
    os.symlink(evstest.build_path("plugins.d", "relay-inbound.so"),
               os.path.join(pd, "relay-inbound.so"))
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    evstest.defer(lsock.close)
    head_seen = threading.Event()
    evstest.defer(head_seen.set)

    def serve():
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        with c:
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            head_seen.wait(30)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    threading.Thread(target=serve, daemon=True).start()
    cfg = evstest.write_config(d, server={"plugins_dir": pd},
                               plugins={"alerts": {}, "relay-inbound": {}},
                               relays={RELAY: {"destinationDomain": "http://127.0.0.1:%d" %
                                               lsock.getsockname()[1]}})
    srv = evstest.Server(cfg).start()
    with socket.create_connection(("127.0.0.1", srv.port()), timeout=15) as c:
        c.sendall(("GET /cut?token=%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (
            SECRET_MARKERS[2], RELAY)).encode())
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = c.recv(65536)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 "), got[:100]
        head_seen.set()
        while True:
            try:
                chunk = c.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    assert len(got) < 100000, len(got)
    hook.wait_requests(1, timeout=15)
    got = json.loads(hook.requests[0].body)
    assert list(got) == FIELDS, list(got)
    assert got["errorType"] == "service-unavailable" and got["statusCode"] == 200, got
    assert got["statusGroup"] == "ERR" and "cut short" in got["evMessage"], got
    assert SECRET_MARKERS[2].encode() not in hook.requests[0].body
    verify_signature(key_of(srv), hook.requests[0])

if __name__ == "__main__":
    evstest.main(globals())
