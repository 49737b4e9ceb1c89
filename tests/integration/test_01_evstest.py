"""The test harness checked first: evstest's response parser, recording upstream (plain, TLS,
client certificates), certificate helpers, raw sockets, and the server lifecycle (config
writing, start on the admin socket, systemd notify, SIGTERM stop). If these fail, the other
integration tests' failures say nothing about evserver.
"""

import errno
import json
import os
import socket
import ssl
import threading

import evstest
from evstest import Incomplete, Upstream, parse_response, parse_responses, send_raw


def test_parse_response_framings():
    r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloREST")
    assert (r.status, r.reason, r.body, r.rest) == (200, "OK", b"hello", b"REST")
    assert r.header("x-A") == "1" and r.header_all("X-A") == ["1", "2"]
    r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n")
    assert r.body == b"abcde" and r.rest == b""
    r = parse_response(b"HTTP/1.0 500 Internal Server Error\r\n\r\nuntil close")
    assert (r.version, r.status, r.body) == ("HTTP/1.0", 500, b"until close")
    r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head=True)
    assert r.body == b""
    rs = parse_responses(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    assert [x.status for x in rs] == [100, 204, 200] and rs[2].json() == {}
    for bad in (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
        try:
            parse_response(bad)
        except Incomplete:
            pass
        else:
            raise AssertionError("parsed an incomplete response: %r" % bad)
    try:
        parse_response(b"SSH-2.0\r\n\r\n")
    except Incomplete:
        raise AssertionError("garbage is not merely incomplete")
    except ValueError:
        pass


def test_upstream_records_requests_and_keeps_connections_alive():
    up = Upstream(status=201, body=b"made", headers={"X-Up": "yes"})
    data = (b"POST /a?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n")
    got = send_raw(up.port, data, responses=2)
    rs = parse_responses(got)
    assert [r.status for r in rs] == [201, 201] and rs[0].body == b"made", rs
    assert rs[0].header("X-Up") == "yes" and rs[0].header("Content-Type") == "text/plain"
    reqs = up.wait_requests(2)
    assert [(q.method, q.path, q.body) for q in reqs] == [("POST", "/a?q=1", b"abc"),
                                                          ("PUT", "/b", b"de")], reqs
    assert reqs[0].header("host") == "x" and reqs[0].connection == reqs[1].connection == 1
    assert up.connections == 1


def test_upstream_handler_delay_and_set_response():
    up = Upstream(handler=lambda q: (418, [("X-Path", q.path)], q.body[::-1]))
    r = parse_response(send_raw(up.port, b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                         b"Connection: close\r\n\r\nabc"))
    assert (r.status, r.header("X-Path"), r.body) == (418, "/h", b"cba"), r
    up.set_response(handler=lambda q: None, status=503, body="late", delay=0.3)
    r = parse_response(send_raw(up.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert (r.status, r.body) == (503, b"late"), r


def test_tls_upstream_with_client_certificates():
    ca = evstest.make_ca()
    server = evstest.make_cert(ca, ["localhost", "127.0.0.1"])
    client = evstest.make_cert(ca, ["evs-client"], client=True)
    up = Upstream(tls=server, client_ca=ca, body=b"secret")
    assert up.url.startswith("https://")

    ctx = ssl.create_default_context(cafile=ca.cert)  # verifies the server chain and name
    ctx.load_cert_chain(client.cert, client.key)
    req = b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    r = parse_response(send_raw(up.port, req, tls=ctx, server_hostname="localhost"))
    assert (r.status, r.body) == (200, b"secret"), r
    cert = up.wait_requests(1)[0].client_cert
    assert ("commonName", "evs-client") in [kv for rdn in cert["subject"] for kv in rdn], cert

    bare = ssl.create_default_context(cafile=ca.cert)
    try:
        got = send_raw(up.port, req, tls=bare, server_hostname="localhost", timeout=3)
    except (ssl.SSLError, OSError):
        got = b""
    assert not got.startswith(b"HTTP/"), "answered a client without a certificate: %r" % got
    evstest.wait_for(lambda: up.tls_errors, what="the rejected handshake")
    assert len(up.requests) == 1


def test_free_ports_are_distinct_and_bindable():
    ports = evstest.free_ports(5)
    assert len(set(ports)) == 5 and all(1024 <= p <= 65535 for p in ports), ports
    # Reserved: a plain bind (no SO_REUSEADDR) is refused, a listener with SO_REUSEADDR (as
    # evserver's and the upstreams' are) binds it, and nothing listening means refused.
    plain = socket.socket()
    try:
        plain.bind(("127.0.0.1", ports[0]))
        raise AssertionError("port %d is not reserved" % ports[0])
    except OSError as e:
        assert e.errno == errno.EADDRINUSE, e
    finally:
        plain.close()
    try:
        socket.create_connection(("127.0.0.1", ports[1]), timeout=2).close()
        raise AssertionError("port %d accepted a connection" % ports[1])
    except ConnectionRefusedError:
        pass
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", ports[1]))
    ls.listen(1)
    socket.create_connection(("127.0.0.1", ports[1]), timeout=2).close()
    ls.close()


def test_write_config():
    cfg = evstest.write_config(listeners={"a": {}, "b": {"address": "127.0.0.1:1"}},
                               limits={"max_body_bytes": "1k"}, server={"log_level": None},
                               plugins={"relay-inbound": {"base_domain": "r.test"}},
                               relays={"x.r.test": {"destinationDomain": "http://127.0.0.1:9"}},
                               extra="# tail")
    text = cfg.text()
    assert cfg.port("b") == 1 and cfg.port("a") > 1024
    assert "[limits]\nmax_body_bytes = 1k" in text and "log_level" not in text
    assert 'base_domain = r.test' in text and text.rstrip().endswith("# tail")
    assert "relay_config = %s" % cfg.relay_config in text
    with open(cfg.relay_config) as f:
        assert json.load(f) == {"x.r.test": {"destinationDomain": "http://127.0.0.1:9"}}
    assert os.path.isdir(cfg.state_dir) and cfg.admin_socket.startswith(cfg.dir)


def need_server():
    if not os.path.exists(evstest.build_path("evserver")):
        raise evstest.Skip("evserver is not built")


def test_config_check():
    need_server()
    cfg = evstest.write_config()
    r = evstest.run_evserver("-t", "-c", cfg.path)
    assert r.returncode == 0, r
    assert "configuration file %s test is successful" % cfg.path in r.stdout + r.stderr, r


def test_server_lifecycle():
    need_server()
    srv = evstest.start_server(notify=True)
    pid, msg = srv.wait_notify("READY=1")
    assert pid == srv.pid, "READY=1 came from %s, not the master %s" % (pid, srv.pid)
    st = srv.admin_get("/status")
    assert st.status == 200 and st.json()["pid"] == srv.pid, st
    # Concurrent admin calls all get answers.
    results = []
    threads = [threading.Thread(target=lambda: results.append(srv.admin_get("/status").status))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8, results
    assert srv.stop() == 0
    assert srv.log_records(), "no JSON log lines:\n" + srv.log()


evstest.main(globals())
