"""Slow clients cannot take the node down ([limits] of issue 9, item 10).

- A body below limits.min_body_rate (over its window, after its grace) is answered 408
  request-timeout and the connection closed; a body at a healthy rate passes.
- limits.request_timeout bounds a whole request, however steadily its bytes trickle in.
- limits.max_connections_per_ip refuses one address's excess connections (503) while another
  address (127.0.0.2) is served; and limits.max_connections is counted node-wide, so with two
  workers every one of max_connections is accepted wherever the kernel puts it.
- 10,000 slow connections (half trickling a head, half a body, a byte every few seconds, from
  eight addresses) while a normal client on another address keeps >= 99% success.

Conditions are polled; timings only bound how long a cut may take.
"""

import heapq
import json
import resource
import selectors
import socket
import threading
import time

import evstest
from evstest import RawUpstream, connect, recv_responses, start_server, wait_closed

RELAY = "localhost"


def relay_server(url, **config):
    return start_server(relays={RELAY: {"destinationDomain": url}}, **config)


def head(target="/", fields=(), method="GET"):
    return ("%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, RELAY) +
            "".join("%s: %s\r\n" % kv for kv in fields) + "\r\n").encode()


def check_error(raw, status, code, detail_has=None):
    r = evstest.parse_response(raw)
    assert r.status == status, raw[:500]
    assert r.header("X-Evervault-Error-Code") == code, raw[:500]
    assert (r.header("Connection") or "").lower() == "close", raw[:500]
    j = json.loads(r.body)
    assert (j["status"], j["code"]) == (status, code), j
    if detail_has:
        assert detail_has in j["detail"], j
    return j


def trickle(s, data, every, limit):
    """Sends data a byte every `every` seconds until the server closes s (returns the seconds
    that took and what it sent) or limit seconds pass (returns None)."""
    t0 = time.monotonic()
    got = b""
    for i in range(len(data)):
        try:
            s.sendall(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t0, got
        closed, extra = wait_closed(s, every)
        got += extra
        if closed:
            return time.monotonic() - t0, got
        if time.monotonic() - t0 > limit:
            return None
    closed, extra = wait_closed(s, limit)
    return (time.monotonic() - t0, got + extra) if closed else None


def test_body_below_min_rate_is_408():
    rec = RawUpstream()
    srv = relay_server(rec.url, limits={"min_body_rate": 100, "min_body_rate_window": "500ms",
                                        "min_body_rate_grace": "0ms", "body_timeout": "30s"})
    # 10 bytes/s against a minimum of 100: cut at the end of the first window.
    s = connect(srv.port())
    try:
        s.sendall(head("/slow", [("Content-Length", "1000")], "POST"))
        out = trickle(s, b"b" * 1000, 0.1, 5)
    finally:
        s.close()
    assert out, "a body at 10 bytes/s was still read after 5s"
    took, raw = out
    assert 0.3 < took < 3, took
    check_error(raw, 408, "request-timeout", "limits.min_body_rate")
    # A body well above the rate (100 bytes every 100 ms) passes.
    s = connect(srv.port())
    try:
        s.sendall(head("/fast", [("Content-Length", "1000")], "POST"))
        for _ in range(10):
            s.sendall(b"f" * 100)
            time.sleep(0.1)
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 200, rs[0].raw
    finally:
        s.close()
    assert [q.target for q in rec.requests()] == ["/fast"]


def test_min_rate_grace_and_chunked():
    """The grace lets a body start late; chunked bodies are measured on the wire too."""
    rec = RawUpstream()
    srv = relay_server(rec.url, limits={"min_body_rate": 100, "min_body_rate_window": "500ms",
                                        "min_body_rate_grace": "1s"})
    s = connect(srv.port())
    try:
        s.sendall(head("/late", [("Content-Length", "200")], "POST"))
        time.sleep(0.8)  # inside the grace: nothing sent yet, and not cut
        s.sendall(b"x" * 200)
        rs, _ = recv_responses(s, 1)
        assert rs[0].status == 200, rs[0].raw
    finally:
        s.close()
    s = connect(srv.port())
    try:
        s.sendall(head("/chunked", [("Transfer-Encoding", "chunked")], "POST"))
        out = trickle(s, b"1\r\nx\r\n" * 100, 0.1, 6)
    finally:
        s.close()
    assert out and 1.0 < out[0] < 4, out
    check_error(out[1], 408, "request-timeout", "limits.min_body_rate")


def test_request_timeout_is_total():
    rec = RawUpstream()
    srv = relay_server(rec.url, limits={"request_timeout": "1s", "min_body_rate": 0,
                                        "header_timeout": "10s", "body_timeout": "10s"})
    # A body that never stalls (a byte every 50 ms) but never ends either.
    s = connect(srv.port())
    try:
        s.sendall(head("/long", [("Content-Length", "100000")], "POST"))
        out = trickle(s, b"l" * 100000, 0.05, 5)
    finally:
        s.close()
    assert out, "request still open after 5s"
    assert 0.7 < out[0] < 3, out[0]
    check_error(out[1], 408, "request-timeout", "limits.request_timeout")
    # A head trickled in within header_timeout but beyond request_timeout.
    s = connect(srv.port())
    try:
        out = trickle(s, head("/h", [("X-Pad", "p" * 500)]), 0.05, 5)
    finally:
        s.close()
    assert out and out[0] < 3, out
    check_error(out[1], 408, "request-timeout")
    # Keep-alive: each request gets its own deadline, from its first byte.
    s = connect(srv.port())
    try:
        for i in range(3):
            s.sendall(head("/ka/%d" % i))
            rs, _ = recv_responses(s, 1)
            assert rs[0].status == 200, rs[0].raw
            time.sleep(0.5)
    finally:
        s.close()
    assert [q.target for q in rec.requests()] == ["/ka/0", "/ka/1", "/ka/2"]


def connect_from(src, port):
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))


def served(s, target):
    s.sendall(head(target))
    rs, _ = recv_responses(s, 1)
    return rs[0].status == 200


def test_max_connections_per_ip():
    rec = RawUpstream()
    srv = relay_server(rec.url, server={"workers": 2}, limits={"max_connections_per_ip": 3})
    held = []
    try:
        for i in range(3):
            held.append(connect_from("127.0.0.1", srv.port()))
            assert served(held[-1], "/a/%d" % i)
        # The fourth from the same address is refused before its request is read...
        s = connect_from("127.0.0.1", srv.port())
        try:
            closed, raw = wait_closed(s, 5)
        finally:
            s.close()
        assert closed
        check_error(raw, 503, "service-unavailable", "this address")
        # ...while another address is served, on the same workers.
        others = [connect_from("127.0.0.2", srv.port()) for _ in range(3)]
        try:
            for i, o in enumerate(others):
                assert served(o, "/b/%d" % i)
        finally:
            for o in others:
                o.close()
        # The held ones still work; closing one makes room for its address again.
        for i, h in enumerate(held):
            assert served(h, "/again/%d" % i)
        held.pop().close()

        def room_again():
            s = connect_from("127.0.0.1", srv.port())
            try:
                return served(s, "/room")
            except AssertionError:
                return False
            finally:
                s.close()
        evstest.wait_for(room_again, timeout=5, interval=0.1, what="room after a close")
    finally:
        for h in held:
            h.close()
    m = srv.admin_get("/metrics").body.decode()
    assert "evserver_rejected_connections_total 1" in m or \
        "evserver_rejected_connections_total 2" in m, m


def test_max_connections_is_node_wide():
    """Two workers, max_connections = 6: all six are accepted whichever worker takes them
    (a per-worker share of 3 refused as soon as one worker had its 4th), the 7th is not."""
    rec = RawUpstream()
    srv = relay_server(rec.url, server={"workers": 2}, limits={"max_connections": 6})
    held = []
    try:
        for i in range(6):
            held.append(connect(srv.port()))
            assert served(held[-1], "/n/%d" % i)
        s = connect(srv.port())
        try:
            closed, raw = wait_closed(s, 5)
        finally:
            s.close()
        assert closed
        check_error(raw, 503, "service-unavailable", "Too many connections")
    finally:
        for h in held:
            h.close()


# ---- 10,000 slow connections ----------------------------------------------------------------

class Flood:
    """One selector loop in a thread: `count` slow connections from each (address, count) (four
    in five trickle a request head, the fifth a body after a complete head), a byte every
    `every` seconds each, each reopened a second after the server closes it; and a minimal
    destination the relay proxies to (it answers every body-less request and swallows bodies,
    which never end)."""

    def __init__(self, addresses, every):
        self.sel = selectors.DefaultSelector()
        self.addresses, self.every = addresses, every
        self.up = socket.socket()
        self.up.bind(("127.0.0.1", 0))
        self.up.listen(4096)
        self.up.setblocking(False)
        self.sel.register(self.up, selectors.EVENT_READ, ("accept", None))
        self.url = "http://127.0.0.1:%d" % self.up.getsockname()[1]
        self.port = None
        self.open = 0
        self.peak = 0
        self.cut = 0            # slow connections the server closed
        self.answers = {}       # status the server answered before closing -> count
        self.sent = 0
        self.stop = False
        self.timers = []        # (when, seq, what, slot, generation): "open" or "send"
        self.gen = 0
        self.seq = 0
        self.socks = {}         # slot -> [sock, data, offset]

    def start(self, port):
        self.port = port
        n = 0
        for a, count in self.addresses:
            for _ in range(count):
                self.later(0.0005 * n, "open", (a, n))  # spread the connects over ~5s
                n += 1
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def later(self, delay, what, slot, gen=0):
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.seq, what, slot, gen))

    def data_for(self, n):
        if n % 5:
            return head("/slowhead", [("X-Pad", "p" * 200)])
        return head("/slowbody", [("Content-Length", "1000000")], "POST") + b"b" * 100000

    def opened(self, slot):
        a, n = slot
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((a, 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            self.later(1, "open", slot)
            return
        data = self.data_for(n)
        # A body's head goes at once; the body (or a head) then trickles.
        first = data.index(b"\r\n\r\n") + 4 if n % 5 == 0 else 1
        self.gen += 1
        self.socks[slot] = [s, data, 0, first, self.gen]
        self.sel.register(s, selectors.EVENT_READ, ("client", slot))
        self.open += 1
        self.peak = max(self.peak, self.open)
        self.later(0.05, "send", slot, self.gen)

    def closed(self, slot):
        s = self.socks.pop(slot)[0]
        self.sel.unregister(s)
        s.close()
        self.open -= 1
        self.cut += 1
        if not self.stop:
            self.later(1, "open", slot)

    def tick(self, what, slot, gen):
        st = self.socks.get(slot)
        if what == "open":
            if st is None and not self.stop:
                self.opened(slot)
            return
        if st is None or st[4] != gen:
            return  # a send for a connection since closed
        s, data, off, first, _ = st
        n = first if off == 0 else 1
        try:
            k = s.send(data[off:off + n])
        except BlockingIOError:
            k = 0
        except OSError:
            self.closed(slot)
            return
        st[2] = off + k
        self.sent += k
        if st[2] < len(data):
            self.later(self.every, "send", slot, gen)

    def upstream(self, s, buf):
        while True:
            mode = buf.get("mode")
            if mode == "body":
                buf["data"] = b""
                return
            i = buf["data"].find(b"\r\n\r\n")
            if i < 0:
                return
            h, buf["data"] = buf["data"][:i].lower(), buf["data"][i + 4:]
            if b"content-length:" in h and b"content-length: 0" not in h:
                buf["mode"] = "body"
            else:
                s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def run(self):
        while not self.stop or self.socks:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, what, slot, gen = heapq.heappop(self.timers)
                self.tick(what, slot, gen)
            wait = max(0, min(0.02, self.timers[0][0] - now)) if self.timers else 0.02
            for key, _ in self.sel.select(wait):
                kind, slot = key.data
                if kind == "accept":
                    while True:
                        try:
                            c, _ = self.up.accept()
                        except BlockingIOError:
                            break
                        c.setblocking(False)
                        self.sel.register(c, selectors.EVENT_READ, ("up", {"data": b""}))
                elif kind == "up":
                    try:
                        b = key.fileobj.recv(65536)
                    except OSError:
                        b = b""
                    if not b:
                        self.sel.unregister(key.fileobj)
                        key.fileobj.close()
                        continue
                    slot["data"] += b
                    self.upstream(key.fileobj, slot)
                else:
                    try:
                        b = key.fileobj.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        b = b""
                    if b.startswith(b"HTTP/1.1 "):
                        st = b[9:12].decode()
                        if b"this address" in b:
                            st += " per-address"
                        self.answers[st] = self.answers.get(st, 0) + 1
                    if not b:
                        self.closed(slot)
            if self.stop:
                for slot in list(self.socks):
                    self.closed(slot)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()


def test_10k_slow_connections_leave_room_for_a_normal_client():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 65536:
        try:  # root may raise its own hard limit (the server inherits it)
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ValueError, OSError):
            pass
    if hard != resource.RLIM_INFINITY and hard < 16384:
        raise evstest.Skip("RLIMIT_NOFILE hard limit %d is below 16384" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Ten attacking addresses x 1000 connections (the default per-address limit), under a
    # max_connections with room for them and for the normal client; an eleventh address tries
    # 1300 and is held to 1000 (the rest refused, and retried every second).
    attackers = [("127.0.1.%d" % i, 1000) for i in range(1, 11)] + [("127.0.1.11", 1300)]
    flood = Flood(attackers, every=3.0)
    evstest.defer(lambda: setattr(flood, "stop", True))
    srv = relay_server(flood.url, server={"workers": 2, "log_level": "warn"},
                       limits={"max_connections": 12000, "header_timeout": "4s",
                               "min_body_rate_window": "3s", "min_body_rate_grace": "1s"})
    flood.start(srv.port())

    def active():
        for line in srv.admin_get("/metrics").body.decode().splitlines():
            if line.startswith("evserver_active_connections "):
                return int(line.split()[1])
        return 0
    evstest.wait_for(lambda: active() >= 6000, timeout=30, interval=0.5,
                     what="at least 6000 slow connections held")
    # A normal client, on its own address, one new connection per request.
    ok = fail = 0
    errors = []
    most = 0
    t_end = time.monotonic() + 12
    while time.monotonic() < t_end:
        try:
            s = connect_from("127.0.0.2", srv.port())
            try:
                if served(s, "/normal"):
                    ok += 1
                else:
                    fail += 1
            finally:
                s.close()
        except (OSError, AssertionError) as e:
            fail += 1
            errors.append("%.1fs: %s" % (time.monotonic() - t_end + 12, str(e)[:200]))
        if (ok + fail) % 50 == 0:
            most = max(most, active())
    flood.stop = True
    flood.thread.join(30)
    total = ok + fail
    print("normal: %d/%d ok; flood: peak %d open, %d cut by the server (answers %r), %d bytes "
          "sent; server held up to %d" % (ok, total, flood.peak, flood.cut, flood.answers,
                                          flood.sent, most))
    assert total >= 50, "only %d normal requests in 12s" % total
    assert ok >= 0.99 * total, "normal client: %d of %d failed: %s" % (fail, total, errors[:5])
    # The slow ones were cut (header_timeout, min_body_rate), not left to pile up.
    assert flood.cut >= 5000, flood.cut
    assert flood.answers.get("408", 0) >= 5000 and flood.answers.get("503 per-address", 0) > 0, \
        flood.answers


evstest.main(globals())
