"""ABI 1.9 (abi/evserver/evs_plugin.h): evs_upstream.unix_path (a proxied request reaches an
HTTP server on a unix socket, pooled, and a dead socket is the documented 503, as a refused TCP
connect), evs_stream_connect.unix_path (a plugin's client stream to the same socket), add_tls_identity
(a plugin's certificate chosen by SNI suffix on a TLS listener serving its role; other names
keep the listener's own) and response_add_header (a field on the proxied response, on an
error, and its refusals). The plugin is tests/plugins/abi19.c (test-abi19); what the Cages
front builds on (plugins/cage-broker/cage_front.c).
"""

import http.server
import os
import socket
import socketserver
import ssl
import threading

import evstest


class UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []
    closing = False

    def do_GET(self):
        if Handler.closing:
            self.close_connection = True
        Handler.seen.append((self.path, self.headers.get("Host"), id(self.connection)))
        body = ("unix says %s" % self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

    def address_string(self):
        return "unix"


def plugins_dir():
    d = evstest.tmpdir("evs-abi19-plugins-")
    os.symlink(evstest.build_path("test-plugins.d", "test-abi19.so"),
               os.path.join(d, "test-abi19.so"))
    return d


def setup():
    so = evstest.build_path("test-plugins.d", "test-abi19.so")
    if not os.path.exists(so):
        raise evstest.Skip("test-abi19 is not built")
    d = evstest.tmpdir("evs-abi19-")
    sock = os.path.join(d, "app.sock")
    httpd = UnixHTTP(sock, Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    evstest.defer(httpd.shutdown)
    ca = evstest.make_ca(d)
    listener_cert = evstest.make_cert(ca, ("localhost",), dir=d)
    # The plugin's identity is signed by another CA, so a client can tell which one it got.
    d2 = os.path.join(d, "ca2")
    os.makedirs(d2)
    ca2 = evstest.make_ca(d2, name="plugin CA")
    ident = evstest.make_cert(ca2, ("a.ident.test",), dir=d2)
    cfg = evstest.write_config(
        d, listeners={"https": {"tls": True, "certificate": listener_cert.cert,
                                "key": listener_cert.key, "serves": "relay"},
                      "http": {"serves": "relay"}},
        server={"plugins_dir": plugins_dir()},
        plugins={"test-abi19": {"cert": ident.cert, "key": ident.key, "socket": sock}})
    srv = evstest.Server(cfg).start()
    evstest.defer(srv.stop)
    return srv, ca, ca2, sock, httpd


def get(srv, path, listener="http"):
    raw = evstest.send_raw(srv.port(listener),
                           ("GET %s HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n"
                            % path).encode(), timeout=10)
    return evstest.parse_response(raw)


def test_unix_upstream_and_added_field():
    srv, _, _, _, httpd = setup()
    Handler.seen.clear()
    for _ in range(3):
        r = get(srv, "/unix/a?b=1")
        assert r.status == 200, r
        assert r.body == b"unix says /unix/a?b=1", r.body
        assert r.header("x-abi19-added") == "yes", r.headers
    assert [s[1] for s in Handler.seen] == ["unix.test"] * 3, Handler.seen
    # Pooled: the three requests came over one connection to the socket.
    assert len({s[2] for s in Handler.seen}) == 1, Handler.seen
    # The server goes away: its kept connection closes after one more answer, then the socket
    # refuses.
    Handler.closing = True
    httpd.shutdown()
    httpd.server_close()
    os.unlink(httpd.server_address)
    get(srv, "/unix/last")
    r = get(srv, "/unix/gone")
    assert r.status == 503 and r.header("X-Evervault-Error-Code") == "service-unavailable", r
    assert r.header("x-abi19-added") == "yes", r.headers


def test_unix_stream():
    srv, *_ = setup()
    r = get(srv, "/unix-stream")
    assert r.status == 200 and r.body == b"HTTP/1.1 200 OK", (r, r.body)


def test_added_field_on_error_and_refusals():
    srv, *_ = setup()
    r = get(srv, "/added-error")
    assert r.status == 418 and r.header("x-abi19-added") == "on-error", r.headers
    assert r.header("X-Evervault-Error-Code") == "teapot", r.headers
    r = get(srv, "/bad-adds")
    assert r.status == 200 and r.header("x-ok") is None, r.headers
    metrics = srv.admin_get("/metrics").text
    assert 'name="bad_add_refused"} 4' in metrics, metrics
    assert 'name="late_add_refused"} 1' in metrics, metrics


def tls_peer(port, sni, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(("GET /unix/tls HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                       % sni).encode())
            data = b""
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
            return t.getpeercert(), data


def test_plugin_identity_by_sni():
    srv, ca, ca2, *_ = setup()
    port = srv.port("https")
    for _ in range(2):  # the second handshake uses the cached context
        cert, data = tls_peer(port, "a.ident.test", ca2.cert)
        assert ("DNS", "a.ident.test") in cert["subjectAltName"], cert
        assert data.startswith(b"HTTP/1.1 200") and b"unix says /unix/tls" in data, data
    # Another name keeps the listener's certificate (the plugin's CA does not verify it).
    cert, _ = tls_peer(port, "localhost", ca.cert)
    assert ("DNS", "localhost") in cert["subjectAltName"], cert
    try:
        tls_peer(port, "localhost", ca2.cert)
        assert False, "the listener's certificate verified with the plugin's CA"
    except ssl.SSLCertVerificationError:
        pass


evstest.main(globals())
