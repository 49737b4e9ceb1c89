"""Connection takeover (evs_host takeover / stream_* / stream_start_tls, core/server.c) through
the test plugin tests/plugins/takeover.c, loaded from $EVS_BUILD_DIR/test-plugins.d:

- CONNECT host:port gets 200, then a TLS server inside the tunnel whose certificate the plugin
  mints for the SNI name; the plugin echoes what it reads in upper case;
- `Upgrade: echo` gets 101 and a raw upper-case echo, bytes sent right after the request head
  included.
"""

import signal
import socket
import ssl
import subprocess
import time

import evstest


def start(**kw):
    kw.setdefault("server", {})["plugins_dir"] = evstest.build_path("test-plugins.d")
    return evstest.start_server(plugins={}, **kw)


def unverified(**versions):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in versions.items():
        setattr(ctx, k, v)
    return ctx


def read_head(sock):
    """Reads byte by byte up to the end of a response head, so nothing after it is consumed."""
    got = b""
    while not got.endswith(b"\r\n\r\n"):
        b = sock.recv(1)
        assert b, "connection closed inside the response head: %r" % got
        got += b
    return got


def read_exactly(read, n):
    got = b""
    while len(got) < n:
        b = read(n - len(got))
        assert b, "closed after %r, expected %d bytes" % (got, n)
        got += b
    return got


def cert_subject(der):
    pem = ssl.DER_cert_to_PEM_cert(der)
    r = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"],
                       input=pem, capture_output=True, text=True, check=True)
    return r.stdout.strip().partition("=")[2]


def metric(srv, name):
    for line in srv.admin_get("/metrics").text.splitlines():
        k, _, v = line.rpartition(" ")
        if k == name:
            return int(float(v))
    return 0


def test_connect_tunnel_tls_minted_per_sni():
    srv = start()
    ders = {}
    for name in ("secure.example.test", "other.example.test"):
        s = evstest.connect(srv.port(), timeout=10)
        s.sendall(("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (name, name)).encode())
        head = evstest.parse_response(read_head(s), head=True)
        assert head.status == 200, head
        t = unverified().wrap_socket(s, server_hostname=name)
        der = t.getpeercert(binary_form=True)
        assert cert_subject(der) == "CN=%s" % name, cert_subject(der)
        assert t.version() in ("TLSv1.2", "TLSv1.3"), t.version()
        for msg in (b"hello tunnel\n", b"second write, MiXeD 123\n"):
            t.sendall(msg)
            assert read_exactly(t.recv, len(msg)) == msg.upper()
        ders[name] = der
        t.close()
    assert ders["secure.example.test"] != ders["other.example.test"]
    evstest.wait_for(lambda: metric(
        srv, 'evserver_plugin_events_total{plugin="test-takeover",name="tunnels"}') == 2,
        what="2 tunnels counted")


def test_connect_with_client_hello_sent_before_the_200():
    """The client pipelines its TLS ClientHello right behind the CONNECT head: those early bytes
    must reach the tunnel's TLS server, not be lost or parsed as HTTP."""
    srv = start()
    name = "early.example.test"
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = unverified().wrap_bio(inc, out, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello, "no ClientHello produced"
    s = evstest.connect(srv.port(), timeout=10)
    s.sendall(("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (name, name)).encode() + hello)
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
    s.sendall(out.read())
    assert cert_subject(tls.getpeercert(binary_form=True)) == "CN=" + name
    tls.write(b"pipelined ok")
    got = b""
    while len(got) < 12:
        try:
            got += tls.read(64)
        except ssl.SSLWantReadError:
            pump()
    assert got == b"PIPELINED OK", got
    s.close()


EARLY = b"early bytes, right after the head|"


def upgrade_echo(sock_factory, early=EARLY):
    """Opens a connection, upgrades it to the echo protocol sending `early` in the same write as
    the request head, and checks the 101 head, the echo of the early bytes and two more
    round trips (a small one and one larger than a TLS record). Returns the socket."""
    s = sock_factory()
    s.sendall(b"GET /chat HTTP/1.1\r\nHost: echo.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n"
              b"\r\n" + early)
    head = evstest.parse_response(read_head(s), head=True)
    assert head.status == 101, head
    assert head.header("Upgrade") == "echo" and head.header("Connection") == "Upgrade", head.headers
    assert head.header("Content-Length") is None and head.header("Transfer-Encoding") is None
    if early:
        assert read_exactly(s.recv, len(early)) == early.upper()
    for msg in (b"abc", b"x" * 20000):
        s.sendall(msg)
        assert read_exactly(s.recv, len(msg)) == msg.upper()
    return s


def test_upgrade_echo_with_early_bytes():
    srv = start()
    s = upgrade_echo(lambda: evstest.connect(srv.port(), timeout=10))
    before = metric(srv, 'evserver_requests_total{code="101"}')
    # The client half-closes: the plugin sees the end of the stream and closes it.
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    assert s.recv(100) == b"", "the server kept the stream open after the client's EOF"
    s.close()
    evstest.wait_for(lambda: metric(srv, 'evserver_requests_total{code="101"}') == before + 1,
                     what="the upgraded request to be counted once the stream closed")
    assert metric(srv, 'evserver_plugin_events_total{plugin="test-takeover",name="upgrades"}') == 1
    # An ordinary request to the same server is not taken over (no route: a JSON error).
    r = evstest.parse_response(evstest.send_raw(
        srv.port(), b"GET / HTTP/1.1\r\nHost: echo.test\r\nConnection: close\r\n\r\n"))
    assert r.status != 101 and r.header("X-Evervault-Error-Code"), r


def test_upgrade_echo_on_tls_listener():
    """The same through a TLS listener. Early bytes there are plaintext the TLS layer already
    decrypted: the taken-over stream must hand them to the plugin as they are, not feed them to
    the TLS engine again as ciphertext (core/server.c evs__stream_read_start)."""
    ca = evstest.make_ca()
    cert = evstest.make_cert(ca, ["echo.test"])
    srv = start(listeners={"https": {"tls": True, "certificate": cert.cert, "key": cert.key}})
    ctx = ssl.create_default_context(cafile=ca.cert)

    def dial():
        return evstest.connect(srv.port("https"), tls=ctx, server_hostname="echo.test",
                               timeout=10)

    upgrade_echo(dial, early=b"").close()  # no early bytes
    upgrade_echo(dial).close()  # bytes sent right after the Upgrade head


def test_takeover_stream_is_bounded_by_drain_timeout():
    srv = start(limits={"drain_timeout": "1s"})
    s = upgrade_echo(lambda: evstest.connect(srv.port(), timeout=10))
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    # Still the plugin's stream while draining...
    s.sendall(b"during drain")
    assert read_exactly(s.recv, 12) == b"DURING DRAIN"
    # ...until drain_timeout closes it, and the server exits cleanly.
    s.settimeout(10)
    try:
        rest = s.recv(100)
    except ConnectionResetError:
        rest = b""
    assert rest == b"", rest
    assert srv.wait(10) == 0
    took = time.monotonic() - t0
    assert took < 6, "stop took %.1fs with drain_timeout=1s" % took


evstest.main(globals())
