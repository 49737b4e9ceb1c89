"""The Outbound Relay's proxy path (plugins/relay-outbound/outbound_proxy.c) with real processes:
evserver with the enclave and relay-outbound plugins, a TLS listener `serves = outbound`, the
relay CA made with `evctl relay-ca create`, apps and keys made with `evctl`, values encrypted by
POST /encrypt, and an HTTPS destination (evstest.Upstream, certificate from a test CA given to
the plugin's destination_ca_file) that records what it receives. Clients: curl (`--proxy
https://...`, the key on the inner request with -H or on the CONNECT with --proxy-header).

- a configured destination gets every ev: value decrypted (typed JSON), the right
  Content-Length, and never Proxy-Authorization; the app gets the destination's response;
- 407 proxy-auth-failed for a missing or wrong key, on the CONNECT and on the inner request;
- 403 forbidden-destination for ev: data to a host that is not a destination (body, header,
  path, percent-encoded), and unconfiguredHosts refuse vs passthrough;
- a destination with an invalid certificate is 502; a 26 MB body is 413; a compressed body 415;
- response encryption: a destination's fieldsToEncrypt (JSON, nested JSON, XML, multipart text
  fields, and files with encryptFiles, whole bodies too; gzip responses decoded first) reach the app encrypted
  with its key, and POST /decrypt gives the originals back; other destinations are untouched;
- leaves minted before authentication are rate-limited (a tiny bucket: 503, a counter);
- IPv6: `CONNECT [::1]:port` to a destination listening on ::1 (leaf with the IP SAN ::1),
  decrypted for the destination spelt `::1`, `[::1]` or `[::1]:port`; a DNS name resolving to
  ::1 (skipped when no name does on this machine);
- relay.error events reach the alerts plugin's webhook (forbidden-destination, a destination
  resetting mid-response: statusGroup ERR), with the documented fields and no value or key;
- a key revoked while its tunnel is open: the next request in the tunnel is 407
  proxy-auth-failed and the tunnel ends.
"""

import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time

import evstest

_spec = importlib.util.spec_from_file_location(
    "enclave_api", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "test_70_enclave_api.py"))
E = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(E)

PERM = "relay:outbound-proxy"


def need_build():
    for p in (("evserver",), ("evctl",), ("plugins.d", "relay-outbound.so"),
              ("plugins.d", "enclave.so"), ("evserver-enclave",)):
        if not os.path.exists(evstest.build_path(*p)):
            raise evstest.Skip("%s is not built" % "/".join(p))


class Env:
    """A server with an outbound listener, a relay CA, an app with keys, and a destination."""

    def __init__(self, workers=1, outbound=None, alerts=None):
        need_build()
        self.dir = evstest.tmpdir("evs-obp-")
        plugins_extra = {}
        if alerts is not None:  # alerts.json next to evserver.conf
            with open(os.path.join(self.dir, "alerts.json"), "w") as f:
                json.dump(alerts, f)
            plugins_extra["alerts"] = {}
        self.dest_ca = evstest.make_ca(name="destination CA")
        self.listener_ca = evstest.make_ca(name="listener CA")
        lc = evstest.make_cert(self.listener_ca, ["localhost", "127.0.0.1"])
        plugin = {"destination_ca_file": self.dest_ca.cert}
        plugin.update(outbound or {})
        cfg = evstest.write_config(
            self.dir,
            listeners={"http": {}, "api": {},
                       "outbound": {"serves": "outbound", "tls": True, "certificate": lc.cert,
                                    "key": lc.key}},
            server={"workers": workers},
            plugins=dict({"enclave": {"enclave_binary": E.enclave_binary(self.dir),
                                      "request_timeout": "5s"},
                          "relay-outbound": plugin}, **plugins_extra))
        self.srv = evstest.Server(cfg).start()
        E.evctl(self.srv, "relay-ca", "create")
        st, _, pem = E.api(self.srv, "GET", "/relay-ca.pem")
        assert st == 200, pem
        self.relay_ca = os.path.join(self.dir, "relay-ca.pem")
        with open(self.relay_ca, "wb") as f:
            f.write(pem)
        self.app = E.evctl_json(self.srv, "app", "create")["appId"]
        self.key = E.evctl_json(self.srv, "key", "create", self.app, "--permissions",
                                PERM + ",api:encrypt")["apiKey"]
        self.dest = evstest.Upstream(tls=evstest.make_cert(self.dest_ca, ["localhost",
                                                                          "127.0.0.1"]),
                                     handler=self.echo)

    @staticmethod
    def echo(req):
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"seen": req.body.decode(errors="replace")}).encode()

    def destination(self, domain):
        E.evctl_json(self.srv, "outbound", "create", self.app, "--destination-domain", domain)

    def unconfigured(self, mode):
        st, body = self.admin("GET", "/outbound/" + self.app)
        cfg = json.loads(body)["config"]
        cfg["unconfiguredHosts"] = mode
        st, body = self.admin("PUT", "/outbound/" + self.app, json.dumps(cfg).encode())
        assert st == 200, body

    def admin(self, method, path, body=None):
        r = self.srv.admin_request(method, path, body=body, timeout=15)
        return r.status, r.body

    def encrypt(self, value):
        st, _, body = E.api(self.srv, "POST", "/encrypt", value, headers={"api-key": self.key})
        assert st == 200, body
        return json.loads(body)

    def curl(self, url, *args, key=None, connect_key=None, data=None, host_ip=False):
        """(status, body) of curl through the outbound listener."""
        cmd = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", url,
               "--proxy", "https://localhost:%d" % self.srv.port("outbound"),
               "--proxy-cacert", self.listener_ca.cert, "--cacert", self.relay_ca,
               "--max-time", "20"]
        if key is not None:
            cmd += ["-H", "Proxy-Authorization: " + key]
        if connect_key is not None:
            cmd += ["--proxy-header", "Proxy-Authorization: " + connect_key]
        if data is not None:
            cmd += ["--data-binary", "@-", "-H", "Content-Type: application/json"]
        cmd += list(args)
        r = subprocess.run(cmd, input=data, capture_output=True, timeout=60)
        out = r.stdout
        body, _, code = out.rpartition(b"\n")
        return int(code or 0), body, r.stderr.decode(errors="replace")


def test_decrypts_for_a_destination_key_on_inner_request_and_on_connect():
    env = Env()
    env.destination("localhost")
    enc = env.encrypt({"ssn": "123-45-6789", "n": 42, "ok": True, "plain": "x"})
    body = json.dumps(enc).encode()
    url = "https://localhost:%d/pay?x=1" % env.dest.port
    st, out, err = env.curl(url, key=env.key, data=body)
    assert st == 200, (st, out, err)
    got = env.dest.wait_requests(1)[0]
    assert json.loads(got.body) == {"ssn": "123-45-6789", "n": 42, "ok": True, "plain": "x"}, got.body
    assert got.header("Proxy-Authorization") is None
    assert int(got.header("Content-Length")) == len(got.body)
    assert json.loads(json.loads(out)["seen"])["ssn"] == "123-45-6789"
    # The key on the CONNECT (createRelayHttpsAgent), none inside.
    st, out, err = env.curl(url, connect_key=env.key, data=body)
    assert st == 200, (st, out, err)
    got = env.dest.wait_requests(2)[1]
    assert json.loads(got.body)["n"] == 42 and got.header("Proxy-Authorization") is None
    # evctl activity: both requests in the transaction log (never a value, never the key).
    out = E.evctl(env.srv, "--json", "activity").stdout
    recs = [r for r in json.loads(out)["transactions"] if r.get("relay") == "outbound"]
    assert len(recs) == 2, out
    for r in recs:
        assert r["status"] == 200 and r["path"] == "/pay" and r["appId"] == env.app, r
        assert r["destination"] == "localhost:%d" % env.dest.port and r["decryptedFields"] == 4, r
    assert "ev:" not in out and env.key not in out and "123-45" not in out
    text = E.evctl(env.srv, "activity").stdout
    assert "outbound to localhost:%d" % env.dest.port in text and "(4 decrypted)" in text, text


def test_proxy_auth_failed():
    env = Env()
    env.destination("localhost")
    url = "https://localhost:%d/" % env.dest.port
    for kw in ({}, {"key": "ev:key:wrong"}):
        st, out, err = env.curl(url, **kw)
        assert st == 407, (st, out, err)
        assert json.loads(out)["code"] == "proxy-auth-failed", out
    # On the CONNECT: curl reports the proxy's refusal.
    st, out, err = env.curl(url, connect_key="ev:key:wrong")
    assert st == 407 or "407" in err, (st, out, err)
    # A key without the permission.
    other = E.evctl_json(env.srv, "key", "create", env.app, "--permissions", "")["apiKey"]
    st, out, _ = env.curl(url, key=other)
    assert st == 407, (st, out)
    assert env.dest.requests == []


def test_forbidden_destination_and_unconfigured_hosts():
    env = Env()
    env.destination("elsewhere.example")
    ev = env.encrypt("secret")
    url = "https://localhost:%d/p" % env.dest.port
    # Default refuse: even plain requests.
    st, out, _ = env.curl(url, key=env.key)
    assert st == 403 and json.loads(out)["code"] == "forbidden-destination", (st, out)
    env.unconfigured("passthrough")
    st, out, _ = env.curl(url, key=env.key, data=b'{"a":"plain"}')
    assert st == 200, (st, out)
    assert env.dest.wait_requests(1)[0].body == b'{"a":"plain"}'
    pct = ev.replace(":", "%3A")
    cases = [dict(data=json.dumps({"x": ev}).encode()),
             dict(data=json.dumps({"x": ev.replace("e", "\\u0065", 1)}).encode()),
             dict(args=("-H", "X-Card: " + ev)),
             dict(path="/p/" + pct),
             dict(path="/p?q=" + pct)]
    for c in cases:
        u = "https://localhost:%d%s" % (env.dest.port, c.get("path", "/p"))
        st, out, _ = env.curl(u, *c.get("args", ()), key=env.key, data=c.get("data"))
        assert st == 403 and json.loads(out)["code"] == "forbidden-destination", (c, st, out)
    assert len(env.dest.requests) == 1
    out = json.loads(E.evctl(env.srv, "--json", "activity", "--status", "403").stdout)
    codes = [r.get("errorCode") for r in out["transactions"]]
    assert len(codes) == 1 + len(cases) and set(codes) == {"forbidden-destination"}, out


def test_bad_destination_certificate_large_and_compressed_bodies():
    env = Env()
    env.destination("localhost")
    env.destination("127.0.0.1")
    other_ca = evstest.make_ca(name="other CA")
    bad = evstest.Upstream(tls=evstest.make_cert(other_ca, ["localhost"]))
    st, out, _ = env.curl("https://localhost:%d/" % bad.port, key=env.key)
    assert st == 502, (st, out)
    assert bad.requests == []
    big = b'{"a":"' + b"x" * (26 << 20) + b'"}'
    st, out, _ = env.curl("https://localhost:%d/" % env.dest.port, key=env.key, data=big)
    assert st == 413 and json.loads(out)["code"] == "payload-too-large", (st, out[:200])
    st, out, _ = env.curl("https://localhost:%d/" % env.dest.port, "-H", "Content-Encoding: gzip",
                          key=env.key, data=b"xx")
    assert st == 415, (st, out)
    # Every Content-Encoding field counts, not only the first.
    st, out, _ = env.curl("https://localhost:%d/" % env.dest.port, "-H", "Content-Encoding: identity",
                          "-H", "Content-Encoding: gzip", key=env.key, data=b"xx")
    assert st == 415, (st, out)
    # An IP destination: no SNI, a leaf with an IP SAN.
    enc = env.encrypt({"v": "by ip"})
    st, out, err = env.curl("https://127.0.0.1:%d/" % env.dest.port, key=env.key,
                            data=json.dumps(enc).encode())
    assert st == 200, (st, out, err)
    assert json.loads(env.dest.requests[-1].body) == {"v": "by ip"}


def tunnel(env, authority, connect_headers=b"", name="localhost"):
    """TLS to the outbound listener, CONNECT, then TLS inside verified against the relay CA:
    (InnerTLS, CONNECT response)."""
    import test_52_tunnel_tls_in_tls as t52
    ctx = ssl.create_default_context(cafile=env.listener_ca.cert)
    raw = socket.create_connection(("127.0.0.1", env.srv.port("outbound")), timeout=10)
    o = ctx.wrap_socket(raw, server_hostname="localhost")
    o.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority.encode(),
                                                                 authority.encode(),
                                                                 connect_headers))
    head = evstest.parse_response(t52.t51.read_head(o), head=True)
    if head.status != 200:
        return None, head
    return t52.InnerTLS(o, ssl.create_default_context(cafile=env.relay_ca), name), head


def test_keys_in_one_tunnel_and_pipelining():
    env = Env()
    env.destination("localhost")
    auth = "localhost:%d" % env.dest.port
    ev = env.encrypt("pipelined secret")
    body = json.dumps({"v": ev}).encode()
    k = env.key.encode()

    def post(path, key=None):
        h = b"Proxy-Authorization: " + key + b"\r\n" if key is not None else b""
        return (b"POST %s HTTP/1.1\r\nHost: localhost\r\n%sContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (path.encode(), h, len(body), body))

    # The first request authenticates the tunnel; later ones may omit the key, a different
    # key is refused (407 ends the tunnel: its body was not read); pipelined on one connection.
    t, _ = tunnel(env, auth)
    t.sendall(post("/1", k) + post("/2") + post("/3", b"ev:key:other") + post("/4", k))
    rs, _ = evstest.recv_responses(t, 3, timeout=15, allow_close=True)
    assert [r.status for r in rs] == [200, 200, 407], rs
    assert rs[2].header("X-Evervault-Error-Code") == "proxy-auth-failed"
    assert json.loads(rs[2].body)["code"] == "proxy-auth-failed"
    got = env.dest.wait_requests(2)
    assert [r.path for r in got] == ["/1", "/2"]
    assert all(json.loads(r.body) == {"v": "pipelined secret"} for r in got)
    assert all(r.header("Proxy-Authorization") is None for r in got)
    # No key on the first request: 407.
    t, _ = tunnel(env, auth)
    t.sendall(post("/5"))
    rs, _ = evstest.recv_responses(t, 1, timeout=15, allow_close=True)
    assert rs[0].status == 407, rs
    # A wrong key on the CONNECT: 407 with the documented body, no tunnel.
    t, head = tunnel(env, auth, b"Proxy-Authorization: ev:key:nope\r\n")
    assert t is None and head.status == 407, head
    # The key on the CONNECT: requests inside need none, the same one passes, a different one
    # is refused.
    t, _ = tunnel(env, auth, b"Proxy-Authorization: " + k + b"\r\n")
    t.sendall(post("/6") + post("/7", k) + post("/8", b"ev:key:other"))
    rs, _ = evstest.recv_responses(t, 3, timeout=15, allow_close=True)
    assert [r.status for r in rs] == [200, 200, 407], rs
    assert [r.path for r in env.dest.requests] == ["/1", "/2", "/6", "/7"]


def test_destination_resets_mid_response():
    """The destination sends a head and part of the body, then resets: the client sees the
    response cut short (never a complete-looking one), and the relay goes on serving."""
    env = Env()
    env.destination("localhost")
    cert = evstest.make_cert(env.dest_ca, ["localhost"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    evstest.defer(lsock.close)

    def serve():
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            s = None
            try:
                s = ctx.wrap_socket(c, server_side=True)  # takes c's descriptor over
                s.recv(65536)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, ssl.SSLError):
                pass
            (s or c).close()
    threading.Thread(target=serve, daemon=True).start()
    port = lsock.getsockname()[1]
    t0 = time.monotonic()
    st, out, err = env.curl("https://localhost:%d/" % port, key=env.key)
    assert len(out) < 100000 and time.monotonic() - t0 < 15, (st, len(out), err)
    st, out, err = env.curl("https://localhost:%d/" % env.dest.port, key=env.key)
    assert st == 200, (st, out, err)


def test_desync_corpus_inside_an_outbound_tunnel():
    """evstest's request-smuggling corpus inside authenticated outbound tunnels (the host's one
    parser; test_52 compares its verdicts with a listener's): a rejected case never reaches the
    destination, no Severe case is forwarded, and compliant ones are."""
    import test_51_streams as t51
    corpus = [(c.id, c.tier, c.head) for c in evstest.desync_corpus()]
    env = Env()
    env.destination("localhost")
    # Empty answers (Content-Length: 0), so that an answer to HEAD parses the same either way.
    env.dest = evstest.Upstream(tls=evstest.make_cert(env.dest_ca, ["localhost"]), body=b"")
    auth = "localhost:%d" % env.dest.port
    rejecting = (400, 431, 501, 505)
    failures, rejected, tally = [], 0, {}
    for cid, tier, head in corpus:
        body = t51.body_for(head)
        n0 = len(env.dest.requests)
        t, _ = tunnel(env, auth, b"Proxy-Authorization: " + env.key.encode() + b"\r\n")
        try:
            inside = t51.verdict(t, head, body)
        finally:
            t.close()
        tally[(tier, inside[0][0])] = tally.get((tier, inside[0][0]), 0) + 1
        if inside[0][0] in rejecting:
            rejected += 1
            paths = [r.path for r in env.dest.requests[n0:]]
            if paths:
                failures.append("%s %s: rejected, yet the destination got %r" % (tier, cid, paths))
        elif tier == "Severe":
            failures.append("Severe %s forwarded inside the tunnel: %r" % (cid, inside))
        assert env.srv.running(), "evserver exited during %s" % cid
    print("desync corpus in outbound tunnels: %d cases, %d rejected" % (len(corpus), rejected))
    assert not failures, "%d case(s) differ:\n  %s" % (len(failures), "\n  ".join(failures))
    assert rejected > 20
    assert tally.get(("Compliant", 200), 0) > 5, tally


RESP_JSON = {"card": {"number": "4242424242424242", "cvc": 123}, "name": "Ann Lee",
             "plain": "visible", "n": 7}
RESP_XML = b"<?xml version=\"1.0\"?><r><iban>DE89 3704</iban><keep>k</keep></r>"
BOUNDARY = "b0undary"
EV_LIKE = "ev:Tk9D:abc:def:ghi:$"  # looks encrypted: unselected in a response, it passes
FILE_BYTES = b"%PDF-1.4 binary \x00\x01\xff file"


def resp_handler(req):
    path = req.path.split("?")[0]
    if path.endswith("/json"):
        return 200, {"Content-Type": "application/json"}, json.dumps(RESP_JSON).encode()
    if path.endswith("/gz"):
        import gzip
        return 200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, \
            gzip.compress(json.dumps(RESP_JSON).encode())
    if path.endswith("/xml"):
        return 200, {"Content-Type": "application/xml"}, RESP_XML
    if path.endswith("/mp"):
        body = ("--%s\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nsecret note\r\n"
                "--%s\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.pdf\"\r\n"
                "Content-Type: application/pdf\r\n\r\n" % (BOUNDARY, BOUNDARY)).encode() + \
            FILE_BYTES + ("\r\n--%s--\r\n" % BOUNDARY).encode()
        return 200, {"Content-Type": "multipart/form-data; boundary=" + BOUNDARY}, body
    if path.endswith("/evjson"):
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"name": "Ann Lee", "token": EV_LIKE}).encode()
    if path.endswith("/raw"):
        return 200, {"Content-Type": "application/pdf"}, FILE_BYTES
    return 200, {"Content-Type": "text/plain"}, b"plain text"


def decrypt(env, value):
    st, _, body = E.api(env.srv, "POST", "/decrypt", {"data": value},
                        headers=E.basic(env.app, env.dkey))
    assert st == 200, body
    return json.loads(body)["data"]


def test_response_encryption():
    env = Env()
    env.dkey = E.evctl_json(env.srv, "key", "create", env.app, "--permissions",
                            "api:decrypt")["apiKey"]
    env.dest = evstest.Upstream(tls=evstest.make_cert(env.dest_ca, ["localhost", "127.0.0.1"]),
                                handler=resp_handler)
    E.evctl_json(env.srv, "outbound", "create", env.app, "--id", "enc",
                 "--destination-domain", "localhost/enc/*", "--fields-to-encrypt",
                 "$.card.number,$.name,$.n,$.iban,$.note,$.doc", "--encrypt-files")
    E.evctl_json(env.srv, "outbound", "create", env.app, "--id", "plain",
                 "--destination-domain", "localhost")
    base = "https://localhost:%d" % env.dest.port
    # JSON: a nested field, a top-level string and a number encrypted; the rest as it was.
    for path in ("/enc/json", "/enc/gz"):
        st, out, err = env.curl(base + path, key=env.key)
        assert st == 200, (path, st, out, err)
        got = json.loads(out)
        for k in ("name", "n"):
            assert isinstance(got[k], str) and got[k].startswith("ev:"), (path, got)
        assert got["card"]["number"].startswith("ev:") and got["card"]["cvc"] == 123, got
        assert got["plain"] == "visible" and b"4242424242424242" not in out and b"Ann Lee" not in out, out
        assert decrypt(env, got) == RESP_JSON, (path, got)
    # XML.
    st, out, err = env.curl(base + "/enc/xml", key=env.key)
    assert st == 200 and b"DE89" not in out and b"<keep>k</keep>" in out, (st, out, err)
    iban = out.split(b"<iban>")[1].split(b"</iban>")[0].decode()
    assert iban.startswith("ev:") and decrypt(env, iban) == "DE89 3704", out
    # Multipart: the text field and (encryptFiles) the file, its filename unchanged.
    st, out, err = env.curl(base + "/enc/mp", key=env.key)
    assert st == 200, (st, out, err)
    assert b"secret note" not in out and FILE_BYTES not in out and b'filename="a.pdf"' in out, out
    parts = out.split(("--" + BOUNDARY).encode())
    note = parts[1].split(b"\r\n\r\n", 1)[1][:-2].decode()
    assert note.startswith("ev:") and decrypt(env, note) == "secret note", parts[1]
    doc = parts[2].split(b"\r\n\r\n", 1)[1][:-2]
    assert doc.startswith(b"%EVENC"), doc[:20]
    st, _, plain = E.api(env.srv, "POST", "/decrypt", doc, headers=E.basic(env.app, env.dkey))
    assert st == 200 and plain == FILE_BYTES, (st, plain[:40])
    # An unselected field that looks encrypted passes as it is (the request-side refusal is
    # not applied to responses).
    st, out, err = env.curl(base + "/enc/evjson", key=env.key)
    assert st == 200, (st, out, err)
    got = json.loads(out)
    assert got["token"] == EV_LIKE and got["name"].startswith("ev:"), got
    # Another destination: untouched.
    st, out, _ = env.curl(base + "/json", key=env.key)
    assert st == 200 and json.loads(out) == RESP_JSON, (st, out)
    out = json.loads(E.evctl(env.srv, "--json", "activity").stdout)
    counts = sorted(r.get("encryptedFields", -1) for r in out["transactions"]
                    if r.get("relay") == "outbound")
    assert counts == [-1, 1, 1, 2, 3, 3], counts
    # Fields without encryptFiles: a body the relay cannot select fields in (text) is the
    # documented error, nothing of it sent; with encryptFiles it is one file (below).
    E.evctl_json(env.srv, "outbound", "create", env.app, "--id", "fields",
                 "--destination-domain", "localhost/fields/*", "--fields-to-encrypt", "$.name")
    st, out, _ = env.curl(base + "/fields/text", key=env.key)
    assert st == 502 and json.loads(out)["code"] == "unsupported-content-type-in-response", \
        (st, out)
    st, out, _ = env.curl(base + "/enc/text", key=env.key)
    assert st == 200 and out.startswith(b"%EVENC"), (st, out)
    # encryptFiles alone: a whole file body becomes a %EVENC file; JSON has no file to encrypt.
    E.evctl_json(env.srv, "outbound", "create", env.app, "--id", "files",
                 "--destination-domain", "localhost/files/*", "--encrypt-files")
    st, out, err = env.curl(base + "/files/raw", key=env.key)
    assert st == 200 and out.startswith(b"%EVENC") and FILE_BYTES not in out, (st, out[:60], err)
    st, _, plain = E.api(env.srv, "POST", "/decrypt", out, headers=E.basic(env.app, env.dkey))
    assert st == 200 and plain == FILE_BYTES, (st, plain[:40])
    st, out, _ = env.curl(base + "/files/json", key=env.key)
    assert st == 200 and json.loads(out) == RESP_JSON, (st, out)


def connect_status(env, authority, connect_headers=b""):
    """The status of a CONNECT to the outbound listener (nothing sent inside the tunnel)."""
    import test_52_tunnel_tls_in_tls as t52
    ctx = ssl.create_default_context(cafile=env.listener_ca.cert)
    raw = socket.create_connection(("127.0.0.1", env.srv.port("outbound")), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as o:
        o.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            authority.encode(), authority.encode(), connect_headers))
        head = evstest.parse_response(t52.t51.read_head(o), head=True)
    return head


def outbound_counters(srv):
    import re
    out = {}
    for line in srv.admin_get("/metrics").text.splitlines():
        m = re.match(r'evserver_plugin_events_total\{plugin="relay-outbound",name="(\w+)"\} '
                     r'(\d+)$', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def test_unauthenticated_leaves_are_rate_limited():
    """A CONNECT without a key makes the worker mint a leaf for any name: a tiny bucket (burst
    2, 1 a minute) lets two new names through, then answers 503; a cached name is free, and so
    is a tunnel authenticated on the CONNECT."""
    env = Env(outbound={"unauthenticated_leaf_rate": 1, "unauthenticated_leaf_burst": 2})
    assert connect_status(env, "one.example:443").status == 200
    assert connect_status(env, "two.example:443").status == 200
    head = connect_status(env, "three.example:443")
    assert head.status == 503 and head.header("X-Evervault-Error-Code") == "service-unavailable", \
        head
    assert connect_status(env, "one.example:443").status == 200  # cached: free
    key = b"Proxy-Authorization: " + env.key.encode() + b"\r\n"
    assert connect_status(env, "four.example:443", key).status == 200
    c = outbound_counters(env.srv)
    assert c.get("leaf_rate_limited") == 1 and c.get("leaves_issued") == 3, c


# ---- IPv6 destinations ----------------------------------------------------------------------

def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_destinations():
    """`CONNECT [::1]:port` to a destination on ::1: the leaf carries the IP SAN ::1 (curl
    checks it against the relay CA), values are decrypted for a destination spelt `::1` (Node's
    options.hostname), `[::1]` or `[::1]:port` alike, and the destination's certificate is
    verified against the address."""
    if not have_ipv6_loopback():
        raise evstest.Skip("no IPv6 loopback (::1) on this machine")
    env = Env()
    dest6 = evstest.Upstream(tls=evstest.make_cert(env.dest_ca, ["::1"]), handler=Env.echo,
                             host="::1")
    plain = {"card": "4242424242424242", "n": 6}
    body = json.dumps(env.encrypt(plain)).encode()
    url = "https://[::1]:%d/six" % dest6.port
    # Not a destination yet: encrypted data is refused, nothing is sent.
    st, out, err = env.curl(url, key=env.key, data=body)
    assert st == 403 and json.loads(out)["code"] == "forbidden-destination", (st, out, err)
    assert dest6.requests == []
    for i, domain in enumerate(("::1", "[::1]", "[0:0::1]:%d" % dest6.port, "::1/six")):
        doc = {"outboundDestinations": {"six": {"destinationDomain": domain}}}
        st, res = env.admin("PUT", "/outbound/" + env.app, json.dumps(doc).encode())
        assert st == 200, (domain, res)
        st, out, err = env.curl(url, key=env.key, data=body)
        assert st == 200, (domain, st, out, err)
        got = dest6.wait_requests(i + 1)[i]
        assert json.loads(got.body) == plain, (domain, got.body)
        assert got.header("Proxy-Authorization") is None
    # Served to the SDK as written (it compares the spelling its client uses).
    st, _, out = E.api(env.srv, "GET", "/v2/relay-outbound", headers={"api-key": env.key})
    assert st == 200 and json.loads(out)["outboundDestinations"]["six"]["destinationDomain"] == \
        "::1/six", out
    # The same address twice, in the two spellings, is one destination: refused.
    doc = {"outboundDestinations": {"a": {"destinationDomain": "::1"},
                                    "b": {"destinationDomain": "[::1]"}}}
    st, res = env.admin("PUT", "/outbound/" + env.app, json.dumps(doc).encode())
    assert st == 400 and b"the same" in res, (st, res)
    # A port without brackets is not a port: refused at push time only if it is no address.
    doc = {"outboundDestinations": {"a": {"destinationDomain": "::1:99999"}}}
    st, res = env.admin("PUT", "/outbound/" + env.app, json.dumps(doc).encode())
    assert st == 400 and b"brackets" in res, (st, res)
    # A certificate without the address (only a DNS name) fails verification: 502.
    bad = evstest.Upstream(tls=evstest.make_cert(env.dest_ca, ["localhost"]), host="::1")
    st, out, _ = env.curl("https://[::1]:%d/six" % bad.port, key=env.key)
    assert st == 502, (st, out)
    assert bad.requests == []
    # The CONNECT target needs the brackets (RFC 9110 authority form).
    assert connect_status(env, "::1:%d" % dest6.port).status == 400
    recs = json.loads(E.evctl(env.srv, "--json", "activity").stdout)["transactions"]
    assert any(r.get("destination") == "[::1]:%d" % dest6.port and r["status"] == 200 and
               r.get("decryptedFields") == 2 for r in recs), recs


def name_resolving_to_v6_loopback():
    """A host name this machine resolves to ::1, or None."""
    for name in ("localhost", "ip6-localhost", "localhost6", "ip6-loopback"):
        try:
            infos = socket.getaddrinfo(name, 443, socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            continue
        if any(i[4][0] == "::1" for i in infos):
            return name
    return None


def test_dns_name_resolving_to_ipv6():
    """A destination given by a DNS name that resolves to ::1, listening on ::1 only: the
    relay connects to it (trying the name's addresses in turn) and decrypts for it."""
    if not have_ipv6_loopback():
        raise evstest.Skip("no IPv6 loopback (::1) on this machine")
    name = name_resolving_to_v6_loopback()
    if not name:
        raise evstest.Skip("no host name resolves to ::1 here (localhost: %s)" % sorted(
            {i[4][0] for i in socket.getaddrinfo("localhost", 443, 0, socket.SOCK_STREAM)}))
    env = Env()
    dest6 = evstest.Upstream(tls=evstest.make_cert(env.dest_ca, [name]), handler=Env.echo,
                             host="::1")
    # The same port on 127.0.0.1 is held without listening, so an IPv4 address of the name
    # refuses at once rather than reaching someone else's server.
    v4 = socket.socket()
    try:
        v4.bind(("127.0.0.1", dest6.port))
        evstest.defer(v4.close)
    except OSError:
        v4.close()
        raise evstest.Skip("port %d is taken on 127.0.0.1" % dest6.port)
    env.destination(name)
    plain = {"v": "by name over six"}
    st, out, err = env.curl("https://%s:%d/n" % (name, dest6.port), key=env.key,
                            data=json.dumps(env.encrypt(plain)).encode())
    assert st == 200, (st, out, err)
    assert json.loads(dest6.wait_requests(1)[0].body) == plain


# ---- relay.error events to the alerts plugin --------------------------------------------------

def test_relay_errors_reach_the_alerts_webhook():
    """The Outbound Relay's errors reach a webhook end to end (plugins/alerts): a
    forbidden-destination (4XX) and a destination that resets mid-response (the app got a 200
    head and a cut body: errorType service-unavailable, statusGroup ERR). The documented fields
    only, signed; never a value (plaintext or ev:) nor the key."""
    import test_80_alerts as t80
    hook = evstest.Upstream()
    env = Env(alerts=[{"relay": "*", "type": "webhook", "url": hook.url + "/h"}],
              outbound={"team_uuid": "team_ob11", "activity_url": "http://127.0.0.1/activity"})
    env.destination("localhost")
    secret = "123-45-6789"
    ev = env.encrypt({"ssn": secret})
    body = json.dumps(ev).encode()
    # 1. Encrypted data to a host that is not a destination (127.0.0.1 is not "localhost").
    st, out, _ = env.curl("https://127.0.0.1:%d/pay?q=1" % env.dest.port, key=env.key, data=body)
    assert st == 403 and json.loads(out)["code"] == "forbidden-destination", (st, out)
    hook.wait_requests(1, timeout=15)
    # 2. A destination that sends a head and part of the body, then resets (RST) once the
    # app has the head: the relay has forwarded it, so the response is cut short, not a 502.
    cert = evstest.make_cert(env.dest_ca, ["localhost"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    evstest.defer(lsock.close)
    received, head_seen = [], threading.Event()
    evstest.defer(head_seen.set)

    def serve():
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        s = None
        try:
            s = ctx.wrap_socket(c, server_side=True)
            req = s.recv(65536)
            head, _, rest = req.partition(b"\r\n\r\n")
            n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(rest) < n:
                more = s.recv(65536)
                if not more:
                    break
                rest += more
            received.append(rest)
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            head_seen.wait(30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, ssl.SSLError):
            pass
        (s or c).close()
    threading.Thread(target=serve, daemon=True).start()
    port = lsock.getsockname()[1]
    t, _ = tunnel(env, "localhost:%d" % port, b"Proxy-Authorization: %s\r\n" % env.key.encode())
    t.sendall(b"POST /reset HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    t.settimeout(15)
    got_back = b""
    while b"\r\n\r\n" not in got_back:
        chunk = t.recv(65536)
        assert chunk, got_back
        got_back += chunk
    assert got_back.startswith(b"HTTP/1.1 200 "), got_back[:200]
    head_seen.set()
    while True:  # the rest, until the relay ends the connection
        try:
            chunk = t.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        got_back += chunk
    assert len(got_back) < 100000, len(got_back)
    t.close()
    assert received and secret.encode() in received[0]  # decrypted for the destination
    hook.wait_requests(2, timeout=15)
    got = {}
    for r in hook.requests:
        assert r.header("X-Evervault-Event") == "relay.error", r.headers
        t80.verify_signature(t80.key_of(env.srv), r)
        ev_body = json.loads(r.body)
        assert list(ev_body) == t80.FIELDS, list(ev_body)
        got[ev_body["errorType"]] = ev_body
        everything = r.body + repr(r.headers).encode()
        for leak in (secret.encode(), b"ev:", env.key.encode(), b"q=1"):
            assert leak not in everything, (leak, r.body)
    f = got["forbidden-destination"]
    assert f["statusCode"] == 403 and f["statusGroup"] == "4XX", f
    assert f["inboundDomain"] == "127.0.0.1" and f["relayUuid"].startswith("outbound_"), f
    assert f["teamUuid"] == "team_ob11" and f["activityLink"].startswith(
        "http://127.0.0.1/activity?requestId="), f
    assert "127.0.0.1:%d" % env.dest.port in f["evMessage"] and "/pay" in f["evMessage"], f
    c = got["service-unavailable"]
    assert c["statusCode"] == 200 and c["statusGroup"] == "ERR", c
    assert c["inboundDomain"] == "localhost" and "cut short" in c["evMessage"], c
    assert "localhost:%d" % port in c["evMessage"], c
    # The transaction log says the same (a 200 that failed).
    recs = json.loads(E.evctl(env.srv, "--json", "activity").stdout)["transactions"]
    assert any(r.get("path") == "/reset" and r["status"] == 200 and
               r.get("errorCode") == "service-unavailable" for r in recs), recs
    assert env.dest.requests == []
    log = env.srv.log()
    assert secret not in log and env.key not in log


# ---- a key revoked while its tunnel is open ---------------------------------------------------

def test_revoked_key_ends_its_open_tunnel():
    """The tunnel's key is checked again for every request in it: after `evctl key revoke`, the
    next request in an already-open tunnel (key given on the first inner request, or on the
    CONNECT) is 407 proxy-auth-failed with the documented body, and the tunnel ends after that
    answer (a pipelined request behind it is never served). Two workers: the revocation reaches
    the other worker's cache through a node message before evctl returns."""
    env = Env(workers=2)
    env.destination("localhost")
    auth = "localhost:%d" % env.dest.port

    def get(path, key=None):
        h = b"Proxy-Authorization: " + key.encode() + b"\r\n" if key else b""
        return b"GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (path.encode(), h)

    for how in ("inner", "connect", "inner-again"):
        k = E.evctl_json(env.srv, "key", "create", env.app, "--permissions", PERM)
        connect_h = b"Proxy-Authorization: %s\r\n" % k["apiKey"].encode() if how == "connect" else b""
        t, head = tunnel(env, auth, connect_h)
        assert t is not None, head
        first = get("/%s-1" % how, k["apiKey"] if how != "connect" else None)
        t.sendall(first + get("/%s-2" % how))
        rs, _ = evstest.recv_responses(t, 2, timeout=15)
        assert [r.status for r in rs] == [200, 200], (how, rs)
        E.evctl(env.srv, "key", "revoke", env.app, k["keyId"])
        # The same key again on the request, or none (the tunnel's): both refused now.
        again = k["apiKey"] if how == "inner-again" else None
        t.sendall(get("/%s-3" % how, again) + get("/%s-4" % how))
        rs, _ = evstest.recv_responses(t, 2, timeout=15, allow_close=True)
        assert len(rs) == 1 and rs[0].status == 407, (how, rs)
        assert rs[0].header("X-Evervault-Error-Code") == "proxy-auth-failed", rs[0].headers
        assert rs[0].header("Connection") == "close", rs[0].headers
        assert json.loads(rs[0].body)["code"] == "proxy-auth-failed", rs[0].body
        t.close()
        # A new tunnel with the revoked key is refused too.
        st, out, _ = env.curl("https://%s/" % auth, key=k["apiKey"])
        assert st == 407, (how, st, out)
    paths = [r.path for r in env.dest.requests]
    assert paths == ["/inner-1", "/inner-2", "/connect-1", "/connect-2", "/inner-again-1",
                     "/inner-again-2"], paths
    # A key that stays valid keeps its tunnel.
    t, _ = tunnel(env, auth, b"Proxy-Authorization: %s\r\n" % env.key.encode())
    t.sendall(get("/kept-1") + get("/kept-2"))
    rs, _ = evstest.recv_responses(t, 2, timeout=15)
    assert [r.status for r in rs] == [200, 200], rs
    assert env.key not in env.srv.log()


SDK_DIR = os.path.join(evstest.SOURCE_DIR, "tests", "integration", "sdk")


def test_official_sdk():
    """@evervault/sdk 6.4.0 unmodified (tests/integration/sdk/outbound.js): createRelayHttpsAgent
    (key on the CONNECT), enableOutboundRelay with decryptionDomains (key inside the tunnel) and
    with the destinations of GET /v2/relay-outbound; values the SDK encrypted arrive decrypted."""
    node = shutil.which("node")
    if not node:
        raise evstest.Skip("node is not installed")
    if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@evervault", "sdk")):
        raise evstest.Skip("tests/integration/sdk/node_modules is missing")
    env = Env()
    env.destination("localhost")
    api = "http://127.0.0.1:%d" % env.srv.port("api")
    penv = dict(os.environ, EV_API_URL=api,
                EV_TUNNEL_HOSTNAME="https://127.0.0.1:%d" % env.srv.port("outbound"),
                EV_CERT_HOSTNAME=api + "/relay-ca.pem",
                # The listener's CA: NODE_EXTRA_CA_CERTS alone is lost once the SDK adds the
                # relay CA to every context (addCACert starts from Node's bundled roots), so
                # the OpenSSL store (SSL_CERT_FILE) carries it.
                NODE_EXTRA_CA_CERTS=env.listener_ca.cert, NODE_OPTIONS="--use-openssl-ca",
                SSL_CERT_FILE=env.listener_ca.cert, EVS_APP_ID=env.app,
                EVS_API_KEY=env.key, EVS_DEST_PORT=str(env.dest.port))
    for i, mode in enumerate(("agent", "domains", "config")):
        r = subprocess.run([node, os.path.join(SDK_DIR, "outbound.js"), mode], cwd=SDK_DIR,
                           env=penv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (mode, r.stdout, r.stderr)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["status"] == 200, (mode, res)
        got = env.dest.wait_requests(i + 1)[i]
        assert got.path == "/sdk-" + mode, got
        assert json.loads(got.body) == {"ssn": "123-45-6789", "n": 42, "ok": True, "mode": mode}, \
            (mode, got.body)
        assert got.header("Proxy-Authorization") is None
        assert json.loads(json.loads(res["body"])["seen"])["ssn"] == "123-45-6789"
    assert env.key not in env.srv.log()


evstest.main(globals())
