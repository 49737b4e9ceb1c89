"""Streams handed back to the HTTP engine, and client streams (ABI 1.7: stream_serve_http,
request_tunnel, stream_connect; core/stream.c), through the test plugin
tests/plugins/connect_proxy.c (a CONNECT route of the role "tunnel"), loaded from
$EVS_BUILD_DIR/test-plugins.d. TLS inside a TLS listener's tunnels: test_52.

- CONNECT host:port, then TLS inside the tunnel with a leaf the plugin mints for the SNI name
  from a test CA (the client verifies it against that CA), then several keep-alive requests in
  the tunnel, each proxied by the host to https://host:port with verification; a destination
  whose certificate does not verify gets 502;
- the HTTP request-smuggling corpus (tests/data/http-desync) replayed inside a tunnel gets the
  same verdict as on the listener, case by case;
- the plugin opens client streams: TCP and TLS to an echo server, TLS verification failures
  (unknown CA, wrong name) and refused connections reported to it.

Run with Debian's /usr/bin/python3: the corpus is YAML and needs python3-yaml.
"""

import os
import select
import signal
import socket
import ssl
import threading

import evstest
from evstest import RawUpstream, Skip, recv_responses, wait_closed

FOLLOW_UP = b"GET /follow-up HTTP/1.1\r\nHost: localhost\r\n\r\n"


def start(ca, plugin=None, **kw):
    """The plugin serves the role "tunnel" (a CONNECT route and two path routes)."""
    cfg = {"ca_cert": ca.cert, "ca_key": ca.key}
    cfg.update(plugin or {})
    kw.setdefault("server", {})["plugins_dir"] = evstest.build_path("test-plugins.d")
    kw.setdefault("listeners", {"http": {"serves": "tunnel"}})
    return evstest.start_server(plugins={"test-connect-proxy": cfg}, **kw)


def read_head(sock):
    got = b""
    while not got.endswith(b"\r\n\r\n"):
        b = sock.recv(1)
        assert b, "connection closed inside the response head: %r" % got
        got += b
    return got


def open_tunnel(srv, authority, ca, sni="localhost"):
    """CONNECT authority, then TLS verified against ca for sni. Returns the TLS socket."""
    s = evstest.connect(srv.port(), timeout=10)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode())
    head = evstest.parse_response(read_head(s), head=True)
    assert head.status == 200, head
    ctx = ssl.create_default_context(cafile=ca.cert)
    return ctx.wrap_socket(s, server_hostname=sni)


def metric(srv, name):
    for line in srv.admin_get("/metrics").text.splitlines():
        k, _, v = line.rpartition(" ")
        if k == name:
            return int(float(v))
    return 0


def plugin_metric(srv, name):
    return metric(srv, 'evserver_plugin_events_total{plugin="test-connect-proxy",name="%s"}'
                  % name)


def test_tunnel_inner_requests_proxied_over_verified_tls():
    ca, dest_ca = evstest.make_ca(), evstest.make_ca(name="destination CA")
    dest = evstest.Upstream(tls=evstest.make_cert(dest_ca, ["localhost"]),
                            handler=lambda r: (200, {"X-Path": r.path}, b"dest:" + r.body))
    srv = start(ca, {"upstream_ca": dest_ca.cert})
    authority = "localhost:%d" % dest.port
    t = open_tunnel(srv, authority, ca)
    # The minted leaf verified against the test CA (wrap_socket checked chain and name).
    assert ("commonName", "localhost") in [a for rdn in t.getpeercert()["subject"] for a in rdn]
    sent = [(b"GET /one?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n", b"dest:"),
            (b"POST /two HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
             b"dest:hello"),
            (b"POST /three HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\n\r\n", b"dest:abc")]
    for raw, want in sent:  # one after the other on the same connection: keep-alive
        t.sendall(raw)
        rs, rest = recv_responses(t, 1, timeout=10)
        assert rs[0].status == 200 and rs[0].body == want, rs[0]
        assert rest == b""
        assert (rs[0].header("Connection") or "").lower() != "close", rs[0].headers
    # Pipelined, then a request no one takes (the service declines: 404 as on a listener).
    t.sendall(b"GET /four HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"GET /declined HTTP/1.1\r\nHost: localhost\r\n\r\n")
    rs, _ = recv_responses(t, 2, timeout=10)
    assert rs[0].status == 200 and rs[0].header("X-Path") == "/four", rs[0]
    assert rs[1].status == 404 and rs[1].header("X-Evervault-Error-Code") == "relay-not-found"
    assert [r.path for r in dest.requests] == ["/one?x=1", "/two", "/three", "/four"]
    assert all(r.header("Host") == authority for r in dest.requests), [
        r.header("Host") for r in dest.requests]
    t.close()
    evstest.wait_for(lambda: plugin_metric(srv, "tunnels_closed") == 1,
                     what="the service's closed callback")
    assert plugin_metric(srv, "tunnels") == 1
    assert plugin_metric(srv, "inner_requests") == 5
    # The CONNECT and each inner request have their access log line.
    lines = [r for r in srv.log_records() if r.get("id") == "EVS-1100"]
    assert any(" CONNECT " in " %s " % r["msg"] and " 200 " in r["msg"] for r in lines), lines
    assert sum("/two 200" in r["msg"] for r in lines) == 1, lines


def test_tunnel_client_hello_and_request_sent_early():
    """The client sends its ClientHello right behind the CONNECT head, in the same write: those
    bytes must reach the tunnel's TLS (not be parsed as HTTP), and the request that follows the
    handshake is served."""
    ca, dest_ca = evstest.make_ca(), evstest.make_ca(name="destination CA")
    dest = evstest.Upstream(tls=evstest.make_cert(dest_ca, ["localhost"]), body=b"early ok")
    srv = start(ca, {"upstream_ca": dest_ca.cert})
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=ca.cert).wrap_bio(inc, out, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    authority = "localhost:%d" % dest.port
    s = evstest.connect(srv.port(), timeout=10)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode() +
              out.read())
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        assert b, "closed before the 200: %r" % buf
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    inc.write(rest)

    def pump():
        data = out.read()
        if data:
            s.sendall(data)
        b = s.recv(65536)
        assert b, "tunnel closed during the TLS exchange"
        inc.write(b)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
    tls.write(b"GET /early HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    s.sendall(out.read())
    got = b""
    while b"early ok" not in got:
        try:
            got += tls.read(65536)
        except ssl.SSLWantReadError:
            pump()
        except ssl.SSLZeroReturnError:
            break
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"early ok"), got
    s.close()
    assert [r.path for r in dest.requests] == ["/early"]


def test_tunnel_destination_not_verified_gets_502():
    ca, dest_ca, other_ca = (evstest.make_ca(), evstest.make_ca(name="destination CA"),
                             evstest.make_ca(name="other CA"))
    dest = evstest.Upstream(tls=evstest.make_cert(other_ca, ["localhost"]))
    srv = start(ca, {"upstream_ca": dest_ca.cert})
    t = open_tunnel(srv, "localhost:%d" % dest.port, ca)
    t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    rs, _ = recv_responses(t, 1, timeout=10)
    assert rs[0].status == 502, rs[0]
    assert rs[0].header("X-Evervault-Error-Code") == "service-unavailable", rs[0].headers
    assert not dest.requests
    t.close()


def test_tunnel_limits_apply_inside():
    """The listener's limits hold inside the tunnel: a head larger than max_header_bytes is
    refused with 431 and the connection closed; an idle head times out."""
    ca = evstest.make_ca()
    srv = start(ca, limits={"max_header_bytes": "4k", "header_timeout": "1s"})
    t = open_tunnel(srv, "localhost:9", ca)
    t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
    rs, _ = recv_responses(t, 1, timeout=10, allow_close=True)
    assert rs and rs[0].status == 431, rs
    assert wait_closed(t, 5)[0]
    t = open_tunnel(srv, "localhost:9", ca)
    t.sendall(b"GET / HTTP/1.1\r\nHost: local")  # never finished
    rs, _ = recv_responses(t, 1, timeout=10, allow_close=True)
    assert rs and rs[0].status == 408, rs
    assert wait_closed(t, 5)[0]


def test_tunnel_drains_like_a_connection():
    """On stop, a request in flight inside a tunnel is answered with Connection: close, an idle
    tunnel is closed like an idle keep-alive connection, and the server exits cleanly."""
    ca, dest_ca = evstest.make_ca(), evstest.make_ca(name="destination CA")
    dest = evstest.Upstream(tls=evstest.make_cert(dest_ca, ["localhost"]), delay=1.0)
    srv = start(ca, {"upstream_ca": dest_ca.cert}, limits={"drain_timeout": "10s"})
    authority = "localhost:%d" % dest.port
    idle = open_tunnel(srv, authority, ca)
    busy = open_tunnel(srv, authority, ca)
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
    dest.wait_requests(1, timeout=10)
    srv.signal(signal.SIGTERM)
    rs, _ = recv_responses(busy, 1, timeout=10)
    assert rs[0].status == 200 and rs[0].header("Connection", "").lower() == "close", rs[0]
    assert wait_closed(busy, 10)[0]
    assert wait_closed(idle, 10)[0]
    assert srv.wait(15) == 0


# ---- the smuggling corpus, on the listener and inside a tunnel --------------------------------

def body_for(head):
    """A body matching the head's framing as a strict reader sees it (test_21's rule)."""
    te = cl = None
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.lower() == b"transfer-encoding":
            te = True
        elif sep and name.lower() == b"content-length" and cl is None:
            cl = value.strip(b" \t")
    if te:
        return b"0\r\n\r\n"
    if cl is not None and cl.isdigit() and int(cl) <= 8 * 1024 * 1024:
        return b"x" * int(cl)
    return b""


def verdict(sock, head, body):
    """Sends one case and its follow-up; returns (statuses, closed). A large body waits until
    the server answered or half a second passed (pacing only), as in test_21."""
    try:
        if len(body) > 16 * 1024:
            sock.sendall(head)
            select.select([sock], [], [], 0.5)
            sock.sendall(body + FOLLOW_UP)
        else:
            sock.sendall(head + body + FOLLOW_UP)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    rs, rest = recv_responses(sock, 1, timeout=10)
    first = rs[0]
    if first.status in (400, 431, 501, 505) or (first.header("Connection") or "").lower() == \
            "close":
        closed, _ = wait_closed(sock, 5)
        return (first.status,), closed
    more, _ = recv_responses(sock, 1, timeout=10, data=rest, allow_close=True)
    return tuple([first.status] + [r.status for r in more]), not more


def test_desync_corpus_inside_tunnel_same_verdicts_as_listener():
    corpus = [(c.id, c.tier, c.head) for c in evstest.desync_corpus()]
    ca = evstest.make_ca()
    rec = RawUpstream()
    srv = start(ca, {"inner_scheme": "http", "direct_upstream": "127.0.0.1:%d" % rec.port},
                upstream={"pool_max_idle": 0, "response_timeout": "5s"},
                limits={"header_timeout": "3s", "body_timeout": "3s"})
    authority = "127.0.0.1:%d" % rec.port
    failures, rejected = [], 0
    tally = {}
    for cid, tier, head in corpus:
        body = body_for(head)
        s = evstest.connect(srv.port(), timeout=10)
        try:
            on_listener = verdict(s, head, body)
        finally:
            s.close()
        n0 = len(rec.conns)
        t = open_tunnel(srv, authority, ca)
        try:
            in_tunnel = verdict(t, head, body)
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
                failures.append("%s %s: rejected in the tunnel, yet %d bytes reached the "
                                "destination" % (tier, cid, leaked))
        elif tier == "Severe":
            failures.append("Severe %s forwarded inside the tunnel: %r" % (cid, in_tunnel))
        assert srv.running(), "evserver exited during %s" % cid
    print("desync corpus: %d cases, %d rejected inside the tunnel as on the listener"
          % (len(corpus), rejected))
    for (tier, status), n in sorted(tally.items()):
        print("  %-10s %d: %d" % (tier, status, n))
    assert not failures, "%d case(s) differ:\n  %s" % (len(failures), "\n  ".join(failures))
    assert rejected > 20
    assert tally.get(("Compliant", 200), 0) > 5, tally


# ---- client streams -------------------------------------------------------------------------

class EchoServer:
    """Echoes every connection's bytes back, over TCP or TLS (ctx)."""

    def __init__(self, ctx=None):
        self.ctx = ctx
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.tls_errors = []
        threading.Thread(target=self._accept, daemon=True).start()
        evstest.defer(self.lsock.close)

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(10)
            if self.ctx:
                c = self.ctx.wrap_socket(c, server_side=True)
            while True:
                b = c.recv(4096)
                if not b:
                    break
                c.sendall(b)
        except (OSError, ssl.SSLError) as e:
            self.tls_errors.append(str(e))
        finally:
            c.close()


def tls_server_ctx(cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def dial(srv, query):
    r = evstest.parse_response(evstest.send_raw(
        srv.port(), ("GET /dial?%s HTTP/1.1\r\nHost: dial.test\r\nConnection: close\r\n\r\n"
                     % query).encode(), timeout=15))
    return r.status, r.body


def test_client_streams_tcp_and_verified_tls():
    ca, dest_ca, other_ca = (evstest.make_ca(), evstest.make_ca(name="destination CA"),
                             evstest.make_ca(name="other CA"))
    plain = EchoServer()
    good = EchoServer(tls_server_ctx(evstest.make_cert(dest_ca, ["localhost"])))
    untrusted = EchoServer(tls_server_ctx(evstest.make_cert(other_ca, ["localhost"])))
    srv = start(ca, {"upstream_ca": dest_ca.cert})
    assert dial(srv, "host=127.0.0.1&port=%d" % plain.port) == (200, b"ping\n")
    assert dial(srv, "host=localhost&port=%d&tls=1" % good.port) == (200, b"ping\n")
    # Verification failures are reported to the plugin (EVS_ETLS = -10005), never ignored.
    assert dial(srv, "host=localhost&port=%d&tls=1" % untrusted.port) == (502, b"error -10005")
    assert dial(srv, "host=127.0.0.1&port=%d&tls=1&sni=wrong.test" % good.port) == (
        502, b"error -10005")
    # Nothing listening: refused (EVS_EUPSTREAM_REFUSED = -10001).
    assert dial(srv, "host=127.0.0.1&port=%d" % evstest.free_port()) == (502, b"error -10001")
    assert plugin_metric(srv, "tunnels") == 0


if __name__ == "__main__":  # test_52 imports the helpers
    evstest.main(globals())
