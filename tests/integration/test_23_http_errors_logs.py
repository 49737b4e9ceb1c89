"""The error contract and the access log, through a relay.

Errors carry X-Evervault-Error-Code and the JSON body {status, code, title, detail, message}:
relay-not-found and subdomain-not-found (404), service-unavailable (503, destination refuses),
request-timeout (504, destination never answers within response_timeout). The log is JSON lines
on stderr; each request gets one EVS-1100 access line with its request_id, method, path
(without the query) and status, and the log never carries a body, a query string or a header
value a client sent.
"""

import re
import time

import evstest
from evstest import RawUpstream, Upstream, connect, recv_responses, start_server, wait_closed

RELAY = "localhost"
MARKER = "SECRET-marker-123"
ERROR_MEMBERS = ["code", "detail", "evervault-error-code", "message", "status", "title"]


def get(port, target="/", host=RELAY, method="GET", fields=(), body=b"", timeout=5.0):
    data = ("%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host) +
            "".join("%s: %s\r\n" % kv for kv in fields) +
            ("Content-Length: %d\r\n" % len(body) if body else "") + "\r\n").encode() + body
    s = connect(port, timeout=timeout)
    try:
        s.sendall(data)
        rs, rest = recv_responses(s, 1, timeout=timeout)
        assert rest == b"", rest
        return rs[0]
    finally:
        s.close()


def check_error(r, status, code, title):
    assert r.status == status, r.raw
    assert r.header_all("X-Evervault-Error-Code") == [code], r.raw
    assert r.header("Content-Type") == "application/json", r.raw
    j = r.json()
    assert sorted(j) == ERROR_MEMBERS, j
    assert (j["status"], j["code"], j["title"]) == (status, code, title), j
    assert j["evervault-error-code"] == code, j  # the documented field
    assert isinstance(j["detail"], str) and j["detail"], j
    assert isinstance(j["message"], str) and j["message"], j
    return j


def test_unknown_host_is_relay_not_found():
    up = Upstream()
    srv = start_server(relays={RELAY: {"destinationDomain": up.url}})
    r = get(srv.port(), "/x?y=1", host="unknown.example")
    check_error(r, 404, "relay-not-found", "Not Found")
    r = get(srv.port(), "/x", host="UNKNOWN.example:8080")
    check_error(r, 404, "relay-not-found", "Not Found")
    # Under the base domain, a name that matches no relay is a missing subdomain.
    r = get(srv.port(), "/x", host="nobody.relay.localhost")
    check_error(r, 404, "subdomain-not-found", "Not Found")
    # ...while the hosted-style name of the destination routes ("127-0-0-1.relay.localhost").
    r = get(srv.port(), "/hosted", host="127-0-0-1.relay.localhost")
    assert r.status == 200 and r.body == b"ok", r.raw
    assert [q.path for q in up.requests] == ["/hosted"]


def test_destination_refusing_is_503():
    port = evstest.free_port()  # nothing listens there
    srv = start_server(relays={RELAY: {"destinationDomain": "http://127.0.0.1:%d" % port}},
                       upstream={"connect_timeout": "2s"})
    t0 = time.monotonic()
    r = get(srv.port(), "/refused")
    assert time.monotonic() - t0 < 2, "a refused connection waited for connect_timeout"
    check_error(r, 503, "service-unavailable", "Service Unavailable")
    # The connection to the client remains usable or is closed cleanly; the server lives on.
    r = get(srv.port(), "/refused-again")
    check_error(r, 503, "service-unavailable", "Service Unavailable")
    assert srv.running()


def test_destination_not_answering_is_504():
    rec = RawUpstream(answer=False)
    srv = start_server(relays={RELAY: {"destinationDomain": rec.url}},
                       upstream={"response_timeout": "1s"})
    t0 = time.monotonic()
    r = get(srv.port(), "/hang", timeout=10)
    took = time.monotonic() - t0
    check_error(r, 504, "request-timeout", "Gateway Timeout")
    assert 0.9 < took < 5, took
    assert [q.target for q in rec.requests()] == ["/hang"]  # it did get the request
    rec.wait_closed()  # and evserver gave up on that connection


def _access_lines(srv):
    """EVS-1100 lines for relay clients (not the harness's admin-socket polls)."""
    return [r for r in srv.log_records()
            if r.get("id") == "EVS-1100" and "client=127.0.0.1" in r.get("msg", "")]


def test_access_log_one_line_per_request_without_secrets():
    up = Upstream(body=b"fine")
    srv = start_server(relays={RELAY: {"destinationDomain": up.url}})
    port = srv.port()
    sent = [  # (method, target, host, fields, body, expected status)
        ("GET", "/q?token=%s&x=1" % MARKER, RELAY, [("X-Api-Key", MARKER)], b"", 200),
        ("POST", "/body", RELAY, [("Content-Type", "application/json")],
         ('{"ssn":"%s"}' % MARKER).encode(), 200),
        ("PUT", "/put?%s" % MARKER, RELAY, [("Cookie", "s=%s" % MARKER)], MARKER.encode(), 200),
        ("GET", "/nowhere?k=%s" % MARKER, "unknown.example", [], b"", 404),
        ("DELETE", "/items/7", RELAY, [("Authorization", "Bearer " + MARKER)], b"", 200),
    ]
    for method, target, host, fields, body, status in sent:
        r = get(port, target, host, method, fields, body)
        assert r.status == status, (target, r.raw)
    # A chunked body, and a keep-alive connection carrying two requests.
    s = connect(port)
    try:
        s.sendall(("POST /chunked?c=%s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "%x\r\n%s\r\n0\r\n\r\n" % (MARKER, RELAY, len(MARKER), MARKER)).encode() +
                  b"GET /second HTTP/1.1\r\nHost: localhost\r\n\r\n")
        rs, _ = recv_responses(s, 2)
        assert [r.status for r in rs] == [200, 200], rs
    finally:
        s.close()
    # A request the parser refuses, with the marker in its target.
    s = connect(port)
    try:
        s.sendall(("GET /bad?%s HTTP/1.1\r\nHost: %s\r\nBad Field: %s\r\n\r\n"
                   % (MARKER, RELAY, MARKER)).encode())
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 400, rs[0].raw
        wait_closed(s, 2)
    finally:
        s.close()

    expect = [(m, t.split("?")[0], st) for m, t, _, _, _, st in sent]
    expect += [("POST", "/chunked", 200), ("GET", "/second", 200)]
    lines = evstest.wait_for(lambda: len(_access_lines(srv)) >= len(expect) and
                             _access_lines(srv), what="%d access lines" % len(expect))
    time.sleep(0.2)  # a late duplicate would show up now
    lines = _access_lines(srv)
    got = []
    for rec in lines:
        m = re.match(r"(\S+) (\S+) (\d{3}) ", rec["msg"])
        assert m, rec
        assert re.fullmatch(r"[0-9a-f]{8,}", rec.get("request_id", "")), rec
        got.append((m.group(1), m.group(2), int(m.group(3))))
    assert got == expect, "access lines:\n%s\nexpected:\n%s" % (got, expect)
    ids = [rec["request_id"] for rec in lines]
    assert len(set(ids)) == len(ids), "request_id repeated: %s" % ids
    assert all("?" not in g[1] for g in got), got
    log = srv.log()
    assert MARKER not in log, "the log holds a value the client sent:\n" + "\n".join(
        ln for ln in log.splitlines() if MARKER in ln)
    # The refused request is logged too, without its bytes.
    assert any(r.get("id") == "EVS-1202" for r in srv.log_records()), log[-2000:]


evstest.main(globals())
