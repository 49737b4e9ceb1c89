"""[limits] enforced on real connections: head size and field count (431), body size with
Content-Length and chunked (413, before or during streaming), header_timeout against a
slowloris, body_timeout against a stalled body, idle_timeout on keep-alive connections and
max_connections (503, and room again once a connection closes; counted node-wide, see
test_24_slowloris.py).

Each test runs one evserver worker with small limits and a relay for Host "localhost" in front
of a RawUpstream, so "nothing reached the upstream" is checked on the bytes it received.
"""

import json
import time

import evstest
from evstest import RawUpstream, connect, recv_responses, start_server, wait_closed

RELAY = "localhost"


def relay_server(rec, **config):
    return start_server(relays={RELAY: {"destinationDomain": rec.url}}, **config)


def head(target="/", fields=(), method="GET"):
    return ("%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, RELAY) +
            "".join("%s: %s\r\n" % kv for kv in fields) + "\r\n").encode()


def check_error(r, status, code, body=True):
    """r is a documented error: status, X-Evervault-Error-Code, Connection: close and (unless
    body=False) the JSON body."""
    assert r.status == status, r.raw[:500]
    assert r.header("X-Evervault-Error-Code") == code, r.raw[:500]
    assert (r.header("Connection") or "").lower() == "close", r.raw[:500]
    if body:
        j = json.loads(r.body)
        assert sorted(j) == ["code", "detail", "evervault-error-code", "message", "status",
                             "title"], j
        assert (j["status"], j["code"], j["evervault-error-code"]) == (status, code, code), j


def answer_then_close(s, timeout=5.0):
    """The one response on s, and whether evserver then closed the connection. No bytes may
    follow the response."""
    rs, rest = recv_responses(s, 1, timeout=timeout)
    closed, extra = wait_closed(s, 3)
    assert not rest + extra, "bytes after the response: %r" % (rest + extra)
    return rs[0], closed


def test_head_over_max_header_bytes_is_431():
    rec = RawUpstream()
    srv = relay_server(rec, limits={"max_header_bytes": "1k"})
    # Just under the limit passes...
    ok = head("/fits", [("X-Pad", "a" * (1024 - len(head("/fits", [("X-Pad", "")]))))])
    assert len(ok) == 1024
    s = connect(srv.port())
    try:
        s.sendall(ok)
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 200, rs[0].raw
    finally:
        s.close()
    # ...one byte more does not, whether the head ends or not.
    over = head("/big", [("X-Pad", "a" * (1025 - len(head("/big", [("X-Pad", "")]))))])
    for data in (over, over[:-2] + b"X-More: " + b"m" * 4000):
        s = connect(srv.port())
        try:
            s.sendall(data)
            r, closed = answer_then_close(s)
        finally:
            s.close()
        check_error(r, 431, "bad-request")
        assert closed, "connection left open after 431"
    assert len(rec.requests()) == 1 and rec.requests()[0].target == "/fits"


def test_too_many_header_fields_is_431():
    rec = RawUpstream()
    srv = relay_server(rec, limits={"max_header_fields": 10})
    fields = [("X-F%d" % i, "v") for i in range(9)]  # with Host: 10 fields
    s = connect(srv.port())
    try:
        s.sendall(head("/ten", fields))
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 200, rs[0].raw
    finally:
        s.close()
    s = connect(srv.port())
    try:
        s.sendall(head("/eleven", fields + [("X-F9", "v")]))
        r, closed = answer_then_close(s)
    finally:
        s.close()
    check_error(r, 431, "bad-request")
    assert closed
    assert [q.target for q in rec.requests()] == ["/ten"]


def test_content_length_over_max_body_bytes_is_413_before_upstream():
    rec = RawUpstream()
    srv = relay_server(rec, limits={"max_body_bytes": "1k"})
    s = connect(srv.port())
    try:  # exactly the limit is fine
        s.sendall(head("/limit", [("Content-Length", "1024")], "POST") + b"b" * 1024)
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 200, rs[0].raw
    finally:
        s.close()
    n0 = len(rec.conns)
    s = connect(srv.port())
    try:
        # Only the head: the answer must not wait for a body it will refuse anyway.
        s.sendall(head("/over", [("Content-Length", "1025")], "POST"))
        r, closed = answer_then_close(s)
    finally:
        s.close()
    check_error(r, 413, "payload-too-large")
    assert closed
    time.sleep(0.2)
    assert sum(len(c.data) for c in rec.conns[n0:]) == 0, "the upstream saw the refused request"
    assert [q.target for q in rec.requests()] == ["/limit"]


def test_chunked_body_over_max_body_bytes_stopped_midstream():
    rec = RawUpstream()
    srv = relay_server(rec, limits={"max_body_bytes": "1k"},
                       upstream={"pool_max_idle": 0})
    s = connect(srv.port())
    try:
        s.sendall(head("/chunked-over", [("Transfer-Encoding", "chunked")], "POST"))
        # (The relay reads a body whole before it passes anything on: the head stays here.)
        for i in range(8):  # 8 x 300 bytes: over the limit on the 4th chunk
            try:
                s.sendall(b"12c\r\n" + b"c" * 300 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
        try:
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, raw = wait_closed(s, 5)
    finally:
        s.close()
    assert closed, "connection still open after the body passed max_body_bytes: %r" % raw
    check_error(evstest.parse_response(raw), 413, "payload-too-large")
    assert rec.requests() == [] and rec.data() == b"", "bytes reached the upstream: %r" % (
        rec.data()[:200])


def test_header_timeout_cuts_slowloris():
    rec = RawUpstream()
    srv = relay_server(rec, limits={"header_timeout": "500ms"})
    # A head that stops half-way.
    s = connect(srv.port())
    try:
        t0 = time.monotonic()
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n")
        closed, raw = wait_closed(s, 5)
        took = time.monotonic() - t0
    finally:
        s.close()
    assert closed and 0.4 < took < 4, (closed, took)
    if raw:  # framing in detail: test_canned_408_and_503_are_well_framed
        check_error(evstest.parse_response(raw), 408, "request-timeout")
    # A head that trickles in a byte at a time never resets the clock.
    data = b"GET /trickle HTTP/1.1\r\nHost: localhost\r\n" + b"X-Pad: " + b"p" * 200 + b"\r\n\r\n"
    s = connect(srv.port())
    try:
        t0 = time.monotonic()
        closed = False
        for i in range(len(data)):
            try:
                s.sendall(data[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed, _ = wait_closed(s, 0.05)
            if closed:
                break
        took = time.monotonic() - t0
    finally:
        s.close()
    assert closed and took < 4, "trickled head still accepted after %.1fs" % took
    assert rec.requests() == [] and rec.data() == b""


def test_body_timeout_on_stalled_body():
    rec = RawUpstream()
    srv = relay_server(rec, limits={"body_timeout": "500ms"})
    s = connect(srv.port())
    try:
        s.sendall(head("/stall", [("Content-Length", "100")], "POST") + b"0123456789")
        t0 = time.monotonic()
        closed, raw = wait_closed(s, 5)
        took = time.monotonic() - t0
    finally:
        s.close()
    assert closed and 0.3 < took < 4, (closed, took, raw)
    r = evstest.parse_response(raw)
    check_error(r, 408, "request-timeout")
    rec.wait_closed()
    assert rec.requests() == [], "the upstream got a complete request: %r" % rec.requests()


def test_idle_timeout_closes_keepalive_connection():
    rec = RawUpstream()
    srv = relay_server(rec, limits={"idle_timeout": "500ms", "header_timeout": "10s"})
    s = connect(srv.port())
    try:
        s.sendall(head("/one"))
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 200 and rs[0].header("Connection") is None, rs[0].raw
        # Still usable shortly after...
        time.sleep(0.2)
        s.sendall(head("/two"))
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 200, rs[0].raw
        # ...and closed once idle for longer than idle_timeout.
        t0 = time.monotonic()
        closed, extra = wait_closed(s, 5)
        took = time.monotonic() - t0
    finally:
        s.close()
    assert closed and extra == b"" and 0.4 < took < 4, (closed, extra, took)
    assert [q.target for q in rec.requests()] == ["/one", "/two"]


def test_max_connections():
    rec = RawUpstream()
    srv = relay_server(rec, server={"workers": 1}, limits={"max_connections": 3})
    held = []
    try:
        for i in range(3):
            s = connect(srv.port())
            held.append(s)
            s.sendall(head("/held/%d" % i))
            rs, _ = recv_responses(s, 1)
            assert rs[0].status == 200, rs[0].raw
        s4 = connect(srv.port())
        try:
            s4.sendall(head("/fourth"))
            r, closed = answer_then_close(s4)
        finally:
            s4.close()
        check_error(r, 503, "service-unavailable")
        assert closed
        # The three held connections still work.
        for i, s in enumerate(held):
            s.sendall(head("/again/%d" % i))
            rs, _ = recv_responses(s, 1)
            assert rs[0].status == 200, rs[0].raw
        # Closing one makes room for a new one.
        held.pop().close()

        def new_one_works():
            s = connect(srv.port())
            try:
                s.sendall(head("/fifth"))
                rs, _ = recv_responses(s, 1)
                return rs[0].status == 200
            finally:
                s.close()
        evstest.wait_for(new_one_works, timeout=5, interval=0.1,
                         what="a new connection after one closed")
    finally:
        for s in held:
            s.close()
    targets = [q.target for q in rec.requests()]
    assert "/fourth" not in targets and "/fifth" in targets, targets


def test_canned_408_and_503_are_well_framed():
    """The two pre-written error responses in core/server.c (on_timeout()'s 408 for
    header_timeout, on_connection()'s 503 for max_connections) declare the Content-Length of
    their JSON body exactly: the whole body, and not one byte after it."""
    rec = RawUpstream()
    srv = relay_server(rec, server={"workers": 1},
                       limits={"header_timeout": "300ms", "max_connections": 1})
    s = connect(srv.port())
    try:
        s.sendall(b"GET /half HTTP/1.1\r\n")
        closed, raw408 = wait_closed(s, 5)
    finally:
        s.close()
    evstest.wait_for(lambda: srv.admin_get("/status").status == 200, what="the admin socket")
    held = connect(srv.port())
    try:
        held.sendall(head("/held"))
        recv_responses(held, 1)
        s = connect(srv.port())
        try:
            closed, raw503 = wait_closed(s, 5)
        finally:
            s.close()
    finally:
        held.close()
    problems = []
    for raw, status, code in ((raw408, 408, "request-timeout"), (raw503, 503,
                                                                  "service-unavailable")):
        try:
            r = evstest.parse_response(raw)
            if r.rest:
                problems.append("%d: %d bytes after the declared body: %r" % (status, len(r.rest),
                                                                               r.rest))
            check_error(r, status, code)
        except (AssertionError, ValueError) as e:
            problems.append("%d: %s: %r" % (status, e, raw))
    assert not problems, "\n".join(problems)


evstest.main(globals())
