"""Tunnels on a TLS listener (ABI 1.7 tunnels; core/io.c stacks the tunnel's TLS over the
listener's, core/stream.c, core/route.c), through tests/plugins/connect_proxy.c (a CONNECT route
of the role "tunnel"), as the Outbound Relay's clients use them:

- TLS to the listener, CONNECT host:port, 200, then TLS *inside* the tunnel, verified by the
  client against the minted leaf's CA (for a name, and for an IP address, which sends no SNI);
  keep-alive and pipelined inner requests proxied with verification; large bodies both ways
  (backpressure through both layers); a stop drains a tunnel like any connection;
- the request-smuggling corpus replayed inside a TLS-in-TLS tunnel gets the listener's verdicts;
- a second tunnel to the same host resumes the first one's TLS session (tickets inside
  tunnels), and a listener's session never resumes inside a tunnel;
- named identities (evs_tls_identity.cache_key): the host's bounded cache evicts
  ([limits] tls_identity_cache), and a tunnel whose context was evicted keeps working.

Run with Debian's /usr/bin/python3: the corpus is YAML and needs python3-yaml.
"""

import signal
import socket
import ssl

import evstest
from evstest import recv_responses, wait_closed
import test_51_streams as t51


class InnerTLS:
    """TLS inside an already-TLS socket (Python cannot wrap an SSLSocket again): an SSLObject
    over memory BIOs, pumped through the outer socket. Offers what recv_responses and
    wait_closed use (recv, sendall, settimeout) and a few ssl attributes."""

    def __init__(self, outer, ctx, server_hostname, session=None):
        self.outer = outer
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=server_hostname,
                                session=session)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump()
        self._flush()

    def _flush(self):
        data = self.out.read()
        if data:
            self.outer.sendall(data)

    def _pump(self):
        self._flush()
        b = self.outer.recv(65536)
        if not b:
            raise ConnectionResetError("tunnel closed")
        self.inc.write(b)

    def settimeout(self, t):
        self.outer.settimeout(t)

    def fileno(self):  # for select(), which only paces
        return self.outer.fileno()

    def sendall(self, data):
        view = memoryview(data)
        while view:
            n = self.obj.write(view)
            view = view[n:]
            self._flush()

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                self._flush()
                b = self.outer.recv(65536)
                if not b:
                    return b""
                self.inc.write(b)
            except ssl.SSLZeroReturnError:
                return b""

    def getpeercert(self):
        return self.obj.getpeercert()

    @property
    def session(self):
        return self.obj.session

    @property
    def session_reused(self):
        return self.obj.session_reused

    def close(self):
        self.outer.close()


class Node:
    """evserver with a TLS listener serving the role "tunnel"; the test plugin mints leaves
    from self.ca; destinations are verified against self.dest_ca."""

    def __init__(self, plugin=None, limits=None, upstream=None, server=None, extra=None):
        self.ca, self.dest_ca = evstest.make_ca(), evstest.make_ca(name="destination CA")
        self.listener_ca = evstest.make_ca(name="listener CA")
        self.listener_cert = evstest.make_cert(self.listener_ca, ["relay.test"])
        cfg = {"ca_cert": self.ca.cert, "ca_key": self.ca.key, "upstream_ca": self.dest_ca.cert}
        cfg.update(plugin or {})
        kw = {"server": dict({"plugins_dir": evstest.build_path("test-plugins.d")},
                             **(server or {}))}
        if limits:
            kw["limits"] = limits
        if upstream:
            kw["upstream"] = upstream
        self.srv = evstest.start_server(
            plugins={"test-connect-proxy": cfg},
            listeners=dict({"tunnels": {"serves": "tunnel", "tls": True,
                                        "certificate": self.listener_cert.cert,
                                        "key": self.listener_cert.key}}, **(extra or {})), **kw)
        self.port = self.srv.port("tunnels")

    def outer(self, ctx=None):
        """A TLS connection to the listener (verified)."""
        ctx = ctx or ssl.create_default_context(cafile=self.listener_ca.cert)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname="relay.test")

    def tunnel(self, authority, name="localhost", session=None, ctx=None):
        """TLS to the listener, CONNECT authority, then TLS inside verified for name."""
        o = self.outer()
        o.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode())
        head = evstest.parse_response(t51.read_head(o), head=True)
        assert head.status == 200, head
        ctx = ctx or ssl.create_default_context(cafile=self.ca.cert)
        return InnerTLS(o, ctx, name, session=session)

    def metric(self, name):
        return t51.plugin_metric(self.srv, name)


def subject_cn(t):
    return [v for rdn in t.getpeercert()["subject"] for k, v in rdn if k == "commonName"]


def test_tls_in_tls_inner_requests_keep_alive_and_pipelined():
    dest_body = lambda r: (200, {"X-Path": r.path}, b"dest:" + r.body)  # noqa: E731
    n = Node()
    dest = evstest.Upstream(tls=evstest.make_cert(n.dest_ca, ["localhost"]), handler=dest_body)
    authority = "localhost:%d" % dest.port
    t = n.tunnel(authority)
    assert subject_cn(t) == ["localhost"]  # the minted leaf, verified against the test CA
    for raw, want in [(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n", b"dest:"),
                      (b"POST /two HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
                       b"dest:hello"),
                      (b"POST /three HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked"
                       b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"dest:abc")]:
        t.sendall(raw)
        rs, rest = recv_responses(t, 1, timeout=10)
        assert rs[0].status == 200 and rs[0].body == want, rs[0]
        assert rest == b"" and (rs[0].header("Connection") or "").lower() != "close"
    t.sendall(b"GET /four HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"GET /five HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"GET /declined HTTP/1.1\r\nHost: localhost\r\n\r\n")
    rs, _ = recv_responses(t, 3, timeout=10)
    assert [r.status for r in rs] == [200, 200, 404], rs
    assert [r.header("X-Path") for r in rs[:2]] == ["/four", "/five"]
    assert rs[2].header("X-Evervault-Error-Code") == "relay-not-found"
    assert [r.path for r in dest.requests] == ["/one", "/two", "/three", "/four", "/five"]
    # Connection: close inside the tunnel ends it after the answer.
    t.sendall(b"GET /last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    rs, _ = recv_responses(t, 1, timeout=10, allow_close=True)
    assert rs[0].status == 200 and rs[0].header("X-Path") == "/last"
    assert wait_closed(t, 5)[0]
    evstest.wait_for(lambda: n.metric("tunnels_closed") == 1, what="the closed callback")
    assert n.metric("tunnels") == 1 and n.metric("inner_requests") == 7
    # Requests inside say tls = 1 (the plugin refuses otherwise) and were logged.
    lines = [r["msg"] for r in n.srv.log_records() if r.get("id") == "EVS-1100"]
    assert any(m.startswith("CONNECT ") and " 200 " in m for m in lines), lines
    assert sum(m.startswith("POST /two 200") for m in lines) == 1, lines


def test_connect_only_on_connect_routes():
    """The plugin's CONNECT route serves its role only: a CONNECT on a listener of another role
    never reaches it (test-takeover's ROUTE hook, which every listener runs, may take it). On
    the tunnel listener, a request for a path goes to the plugin's catch route ("/", any
    method), a CONNECT to its CONNECT route; /routes lists the CONNECT route without prefix."""
    rec = evstest.Upstream(body=b"direct")
    n = Node(plugin={"direct_upstream": "127.0.0.1:%d" % rec.port},
             extra={"other": {"serves": "outbound"}})
    evstest.send_raw(n.srv.port("other"),
                     b"CONNECT localhost:9 HTTP/1.1\r\nHost: localhost:9\r\n\r\n", timeout=2)
    assert n.metric("tunnels") == 0
    o = n.outer()
    o.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    rs, _ = recv_responses(o, 1, timeout=10, allow_close=True)
    assert rs[0].status == 200 and rs[0].body == b"direct", rs[0]
    o.close()
    t = n.tunnel("localhost:%d" % rec.port)
    t.close()
    assert n.metric("tunnels") == 1
    assert [r.path for r in rec.requests] == ["/x"]
    routes = n.srv.admin_get("/routes").json()["routes"]
    mine = [(r["role"], r["method"], r["prefix"]) for r in routes
            if r["plugin"] == "test-connect-proxy"]
    assert ("tunnel", "CONNECT", "") in mine and ("tunnel", "*", "/") in mine, mine


def test_client_hello_right_behind_the_connect():
    """The ClientHello follows the CONNECT at once, in the same TLS record and in a record of
    its own right behind it: both ways the bytes reach the tunnel's TLS (the second way they
    wait, decrypted or not, in the listener's TLS layer while the plugin takes over)."""
    n = Node()
    dest = evstest.Upstream(tls=evstest.make_cert(n.dest_ca, ["localhost"]), body=b"early")
    authority = "localhost:%d" % dest.port
    connect = ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode()
    for same_record in (True, False):
        o = n.outer()
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ssl.create_default_context(cafile=n.ca.cert).wrap_bio(inc, out,
                                                                     server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        if same_record:
            o.sendall(connect + hello)
        else:
            o.sendall(connect)
            o.sendall(hello)
        head = evstest.parse_response(t51.read_head(o), head=True)
        assert head.status == 200, head
        t = InnerTLS.__new__(InnerTLS)  # finish the handshake already begun
        t.outer, t.inc, t.out, t.obj = o, inc, out, obj
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                t._pump()
        t._flush()
        t.sendall(b"GET /early HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        rs, _ = recv_responses(t, 1, timeout=10, allow_close=True)
        assert rs[0].status == 200 and rs[0].body == b"early", (same_record, rs[0])
        t.close()
    assert len(dest.requests) == 2


def test_ip_destination_without_sni():
    """An IP destination: the client sends no SNI; the plugin mints for the CONNECT host (an
    IP SAN) and the client verifies it."""
    n = Node()
    dest = evstest.Upstream(tls=evstest.make_cert(n.dest_ca, ["127.0.0.1"]), body=b"by ip")
    t = n.tunnel("127.0.0.1:%d" % dest.port, name="127.0.0.1")
    assert subject_cn(t) == ["127.0.0.1"]
    t.sendall(b"GET /ip HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    rs, _ = recv_responses(t, 1, timeout=10)
    assert rs[0].status == 200 and rs[0].body == b"by ip", rs[0]
    t.close()


def test_large_bodies_both_ways():
    """25 MB up and 25 MB down through both TLS layers: backpressure holds on each side."""
    big = bytes(range(256)) * (100 * 1024)  # 25.6 MB
    n = Node()
    dest = evstest.Upstream(tls=evstest.make_cert(n.dest_ca, ["localhost"]),
                            handler=lambda r: (200, {"X-Len": str(len(r.body))},
                                               big if r.path == "/down" else b"up"))
    t = n.tunnel("localhost:%d" % dest.port)
    t.sendall(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(big)
              + big)
    rs, _ = recv_responses(t, 1, timeout=60)
    assert rs[0].status == 200 and rs[0].header("X-Len") == str(len(big)), rs[0]
    assert dest.requests[0].body == big
    t.sendall(b"GET /down HTTP/1.1\r\nHost: localhost\r\n\r\n")
    rs, _ = recv_responses(t, 1, timeout=60)
    assert rs[0].status == 200 and rs[0].body == big, (rs[0].status, len(rs[0].body))
    t.close()


def test_tunnel_on_tls_listener_drains():
    n = Node(limits={"drain_timeout": "10s"})
    dest = evstest.Upstream(tls=evstest.make_cert(n.dest_ca, ["localhost"]), delay=1.0)
    authority = "localhost:%d" % dest.port
    idle, busy = n.tunnel(authority), n.tunnel(authority)
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
    dest.wait_requests(1, timeout=10)
    n.srv.signal(signal.SIGTERM)
    rs, _ = recv_responses(busy, 1, timeout=10)
    assert rs[0].status == 200 and rs[0].header("Connection", "").lower() == "close", rs[0]
    assert wait_closed(busy, 10)[0]
    assert wait_closed(idle, 10)[0]
    assert n.srv.wait(15) == 0


def test_second_tunnel_resumes_and_listener_sessions_do_not():
    n = Node(plugin={"cache_leaves": True})
    dest = evstest.Upstream(tls=evstest.make_cert(n.dest_ca, ["localhost"]), body=b"r")
    authority = "localhost:%d" % dest.port
    ctx = ssl.create_default_context(cafile=n.ca.cert)

    def one(session=None):
        t = n.tunnel(authority, session=session, ctx=ctx)
        t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        rs, _ = recv_responses(t, 1, timeout=10)  # the TLS 1.3 ticket has arrived by now
        assert rs[0].status == 200, rs[0]
        reused, sess = t.session_reused, t.session
        t.close()
        return reused, sess

    reused, sess = one()
    assert not reused and sess is not None
    reused, sess2 = one(sess)
    assert reused, "the second tunnel to the same host did a full handshake"
    # One leaf minted for both (the plugin keeps it and names it to the host).
    assert n.metric("leaves_minted") == 1
    # A session of the listener's own TLS is not accepted inside a tunnel (one client context
    # trusting both CAs, so that Python lets the session be offered).
    both = ssl.create_default_context(cafile=n.ca.cert)
    both.load_verify_locations(n.listener_ca.cert)
    o = n.outer(both)
    o.sendall(b"GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n")
    recv_responses(o, 1, timeout=10, allow_close=True)
    listener_session = o.session
    assert listener_session is not None and listener_session.has_ticket
    o.close()
    t = n.tunnel(authority, session=listener_session, ctx=both)
    t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    rs, _ = recv_responses(t, 1, timeout=10)
    assert rs[0].status == 200 and not t.session_reused
    tunnel_session = t.session
    assert tunnel_session is not None and tunnel_session.has_ticket
    t.close()
    # Nor a tunnel's on the listener.
    raw = socket.create_connection(("127.0.0.1", n.port), timeout=10)
    o = both.wrap_socket(raw, server_hostname="relay.test", session=tunnel_session)
    assert not o.session_reused
    o.close()


def test_identity_cache_eviction_keeps_live_tunnels():
    """[limits] tls_identity_cache = 1: every new name evicts the previous context, and a
    tunnel whose context was evicted goes on working; the name handshakes again later."""
    n = Node(plugin={"cache_leaves": True}, limits={"tls_identity_cache": 1},
             server={"workers": 1})
    dest = evstest.Upstream(tls=evstest.make_cert(n.dest_ca, ["localhost"]),
                            handler=lambda r: (200, {}, r.path.encode()))
    authority = "localhost:%d" % dest.port

    def ask(t, path):
        t.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
        rs, _ = recv_responses(t, 1, timeout=10)
        assert rs[0].status == 200 and rs[0].body == path, rs[0]

    a = n.tunnel(authority, name="a.test")
    ask(a, b"/a1")
    b = n.tunnel(authority, name="b.test")  # evicts a.test's context
    ask(b, b"/b1")
    c = n.tunnel(authority, name="c.test")  # evicts b.test's
    ask(c, b"/c1")
    ask(a, b"/a2")
    ask(b, b"/b2")
    a2 = n.tunnel(authority, name="a.test")  # built again from the plugin's PEM
    assert subject_cn(a2) == ["a.test"]
    ask(a2, b"/a3")
    for t in (a, b, c, a2):
        t.close()
    assert n.metric("leaves_minted") == 3
    assert n.srv.running()


def test_desync_corpus_inside_tls_in_tls_tunnel():
    corpus = [(c.id, c.tier, c.head) for c in evstest.desync_corpus()]
    rec = t51.RawUpstream()
    n = Node(plugin={"inner_scheme": "http", "direct_upstream": "127.0.0.1:%d" % rec.port},
             upstream={"pool_max_idle": 0, "response_timeout": "5s"},
             limits={"header_timeout": "3s", "body_timeout": "3s"})
    authority = "127.0.0.1:%d" % rec.port
    failures, rejected, tally = [], 0, {}
    for cid, tier, head in corpus:
        body = t51.body_for(head)
        o = n.outer()
        try:
            on_listener = t51.verdict(o, head, body)
        finally:
            o.close()
        n0 = len(rec.conns)
        t = n.tunnel(authority, name="localhost")
        try:
            in_tunnel = t51.verdict(t, head, body)
        finally:
            t.close()
        key = (tier, in_tunnel[0][0])
        tally[key] = tally.get(key, 0) + 1
        if on_listener != in_tunnel:
            failures.append("%s %s: listener %r, tunnel %r" % (tier, cid, on_listener, in_tunnel))
        if in_tunnel[0][0] in (400, 501, 505):
            rejected += 1
            evstest.wait_for(lambda: all(c.closed for c in rec.conns[n0:]), timeout=5,
                             what="upstream connections of %s to close" % cid)
            leaked = sum(len(c.data) for c in rec.conns[n0:])
            if leaked:
                failures.append("%s %s: rejected, yet %d bytes reached the destination"
                                % (tier, cid, leaked))
        elif tier == "Severe":
            failures.append("Severe %s forwarded inside the tunnel: %r" % (cid, in_tunnel))
        assert n.srv.running(), "evserver exited during %s" % cid
    print("desync corpus in TLS-in-TLS tunnels: %d cases, %d rejected" % (len(corpus), rejected))
    assert not failures, "%d case(s) differ:\n  %s" % (len(failures), "\n  ".join(failures))
    assert rejected > 20
    assert tally.get(("Compliant", 200), 0) > 5, tally


if __name__ == "__main__":  # test_82 imports the helpers
    evstest.main(globals())
