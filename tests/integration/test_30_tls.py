"""TLS listeners: the documented policy (TLS 1.2 and 1.3 only, AEAD ciphers only, ALPN
http/1.1), certificate choice by SNI (exact name, one-label wildcard, default otherwise), and
X-Forwarded-Proto at the destination. Driven by curl, `openssl s_client` and Python's ssl module
against the built evserver (docs/configuration.md, core/tls.c).

Every test starts its own server: one TLS listener whose default certificate is for
default.test (EC P-256), plus [certificate] sections for exact.test (EC), *.wild.test (EC) and
rsa.test (RSA, so CBC refusal is checked with both key types), all signed by a throwaway CA.
"""

import re
import socket
import ssl
import subprocess

import evstest
from evstest import Upstream, parse_response

REQ = "GET /tls-probe HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"

# Every CBC suite OpenSSL knows for TLS 1.2 with ECDSA, RSA and plain-RSA key exchange; with
# @SECLEVEL=0 the client really offers all of them (checked in the handshake transcript by the
# control case below, which uses the same client with an AEAD suite).
CBC_SUITES = ("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:"
              "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
              "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:AES128-SHA:AES256-SHA:"
              "AES128-SHA256:AES256-SHA256:@SECLEVEL=0")


class Tls:
    """A CA, the certificates above, a recording upstream and a server with one plain and one
    TLS listener; relays exact.test and default.test go to the upstream."""

    def __init__(self):
        self.ca = evstest.make_ca()
        self.default = evstest.make_cert(self.ca, ["default.test"])
        self.exact = evstest.make_cert(self.ca, ["exact.test"])
        self.wild = evstest.make_cert(self.ca, ["*.wild.test"], cn="wild.test wildcard")
        self.rsa = evstest.make_cert(self.ca, ["rsa.test"], key="rsa")
        self.up = Upstream(body=b"tls-upstream")
        self.srv = evstest.start_server(
            listeners={"http": {},
                       "https": {"tls": True, "certificate": self.default.cert,
                                 "key": self.default.key}},
            certificates={
                "exact": {"server_names": "exact.test", "certificate": self.exact.cert,
                          "key": self.exact.key},
                "wild": {"server_names": "*.wild.test", "certificate": self.wild.cert,
                         "key": self.wild.key},
                "rsa": {"server_names": "rsa.test", "certificate": self.rsa.cert,
                        "key": self.rsa.key}},
            relays={"exact.test": {"destinationDomain": self.up.url},
                    "default.test": {"destinationDomain": self.up.url}})
        self.port = self.srv.port("https")


def s_client(port, *args, data="", timeout=15):
    """Runs `openssl s_client -connect 127.0.0.1:port *args` with data on stdin; returns
    (exit status, stdout + stderr)."""
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, *args],
                       input=data, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def subject_cn(out):
    """The CN of the peer certificate in s_client's output ("subject=CN = x")."""
    m = re.search(r"^subject=.*?CN\s*=\s*([^,\n]+)", out, re.M)
    assert m, "no peer certificate subject in s_client output:\n" + out
    return m.group(1).strip()


def negotiated(out):
    """(protocol, cipher) from s_client's "New, TLSv1.x, Cipher is X" line."""
    m = re.search(r"^New, (\S+), Cipher is (\S+)", out, re.M)
    assert m, "no 'New, ...' line in s_client output:\n" + out
    return m.group(1).rstrip(","), m.group(2)


def assert_refused(rc, out, alert, what):
    proto, cipher = negotiated(out)
    assert rc != 0 and (proto, cipher) == ("(NONE)", "(NONE)"), \
        "%s was accepted (%s, %s):\n%s" % (what, proto, cipher, out)
    assert alert in out, "%s: expected the server's '%s' alert:\n%s" % (what, alert, out)


def test_tls12_with_curl_verifies_and_relays():
    t = Tls()
    url = "https://exact.test:%d/tls-probe" % t.port
    r = subprocess.run(["curl", "-sS", "-v", "--tlsv1.2", "--tls-max", "1.2", "--cacert", t.ca.cert,
                        "--resolve", "exact.test:%d:127.0.0.1" % t.port, "-o", "-",
                        "-w", "\n%{http_code}", url],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, "curl failed (%d):\n%s" % (r.returncode, r.stderr)
    body, _, code = r.stdout.rpartition("\n")
    assert (code, body) == ("200", "tls-upstream"), r.stdout
    m = re.search(r"SSL connection using (\S+) / (\S+)", r.stderr)
    assert m and m.group(1) == "TLSv1.2", r.stderr
    assert re.search(r"GCM|CHACHA20", m.group(2)), "non-AEAD cipher %s" % m.group(2)
    assert "ALPN: server accepted http/1.1" in r.stderr, r.stderr
    q = t.up.wait_requests(1)[0]
    assert q.path == "/tls-probe" and q.header("host"), q.headers


def test_tls13_with_s_client_serves_a_request():
    t = Tls()
    rc, out = s_client(t.port, "-tls1_3", "-servername", "exact.test", "-CAfile", t.ca.cert,
                       "-verify_return_error", "-ign_eof", data=REQ % "exact.test")
    assert rc == 0, out
    proto, cipher = negotiated(out)
    assert proto == "TLSv1.3" and cipher.startswith("TLS_"), out
    assert "Verify return code: 0 (ok)" in out, out
    i = out.find("HTTP/1.1 ")
    assert i >= 0, "no HTTP response through TLS 1.3:\n" + out
    resp = parse_response(out[i:].replace("\r\n", "\n").replace("\n", "\r\n").encode())
    assert resp.status == 200, out
    assert "tls-upstream" in out[i:], out


def test_tls10_and_tls11_refused():
    t = Tls()
    for flag, name in (("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")):
        rc, out = s_client(t.port, flag, "-cipher", "DEFAULT:@SECLEVEL=0", "-servername",
                           "exact.test")
        if "no protocols available" in out or "unsupported protocol" in out.lower():
            # This openssl build cannot even offer the version: ask Python's ssl instead, and
            # skip only if that cannot offer it either (then the server was never asked).
            python_refused_or_skip(t.port, name)
            continue
        # The client offered the old version (its hello is on the wire: "Protocol : TLSv1.x"
        # in the session summary) and the server answered with alert 70, protocol_version.
        assert re.search(r"^\s*Protocol\s*:\s*%s\s*$" % re.escape(name), out, re.M), out
        assert_refused(rc, out, "alert protocol version", name)


def python_refused_or_skip(port, name):
    version = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1}[name]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = version
    except (ValueError, ssl.SSLError) as e:
        raise evstest.Skip("neither openssl s_client nor Python ssl can offer %s here (%s)"
                           % (name, e))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        ctx.wrap_socket(s, server_hostname="exact.test")
    except ssl.SSLError as e:
        if "NO_PROTOCOLS_AVAILABLE" in str(e).upper():
            raise evstest.Skip("the local TLS library cannot offer %s at all: %s" % (name, e))
        assert "PROTOCOL_VERSION" in str(e).upper() or "VERSION" in str(e).upper(), e
        return
    finally:
        s.close()
    raise AssertionError("%s handshake succeeded" % name)


def test_cbc_ciphers_refused_on_tls12():
    t = Tls()
    for sni in ("exact.test", "rsa.test"):
        # Control: the same client, same key type, an AEAD suite: accepted.
        aead = "ECDHE-RSA-AES128-GCM-SHA256" if sni == "rsa.test" else "ECDHE-ECDSA-AES128-GCM-SHA256"
        rc, out = s_client(t.port, "-tls1_2", "-cipher", aead + ":@SECLEVEL=0", "-servername", sni)
        assert rc == 0 and negotiated(out) == ("TLSv1.2", aead), out
        rc, out = s_client(t.port, "-tls1_2", "-cipher", CBC_SUITES, "-servername", sni)
        assert_refused(rc, out, "alert handshake failure", "CBC-only hello to %s" % sni)
    # A client offering everything gets an AEAD suite on TLS 1.2.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with evstest.connect(t.port, tls=ctx, server_hostname="exact.test") as s:
        name, version, _ = s.cipher()
        assert version == "TLSv1.2" and re.search(r"GCM|CHACHA20", name), s.cipher()


def test_alpn_selects_http11():
    t = Tls()
    for ver in ("-tls1_2", "-tls1_3"):
        rc, out = s_client(t.port, ver, "-alpn", "h2,http/1.1", "-servername", "exact.test")
        assert rc == 0, out
        assert "ALPN protocol: http/1.1" in out, out
    # Python's view of the same thing, listing h2 first.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with evstest.connect(t.port, tls=ctx, server_hostname="exact.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    # Only h2 offered: RFC 7301 no_application_protocol, never a silent h2 answer in HTTP/1.1.
    rc, out = s_client(t.port, "-alpn", "h2", "-servername", "exact.test")
    assert_refused(rc, out, "no application protocol", "an h2-only ALPN hello")


def test_sni_selects_certificate():
    t = Tls()
    cases = [
        (["-servername", "exact.test"], "exact.test"),
        (["-servername", "EXACT.Test"], "exact.test"),          # names compare case-insensitively
        (["-servername", "a.wild.test"], "wild.test wildcard"),
        (["-servername", "Zz-9.WILD.test"], "wild.test wildcard"),
        (["-servername", "a.b.wild.test"], "default.test"),     # a wildcard covers one label only
        (["-servername", "wild.test"], "default.test"),         # nor the bare suffix
        (["-servername", "rsa.test"], "rsa.test"),
        (["-servername", "unknown.test"], "default.test"),
        (["-noservername"], "default.test"),
    ]
    for args, want in cases:
        for ver in ("-tls1_2", "-tls1_3"):
            rc, out = s_client(t.port, ver, *args)
            assert rc == 0, "%s %s: handshake failed:\n%s" % (ver, args, out)
            assert subject_cn(out) == want, "%s %s: got %r, want %r" % (ver, args,
                                                                        subject_cn(out), want)
    # The chosen certificate also verifies for the name (so it is the whole chain, not just
    # the subject): Python with the CA and hostname checking on.
    ctx = ssl.create_default_context(cafile=t.ca.cert)
    for name in ("exact.test", "x.wild.test", "rsa.test"):
        with evstest.connect(t.port, tls=ctx, server_hostname=name) as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_x_forwarded_proto_at_upstream():
    t = Tls()
    spoof = ("GET /p HTTP/1.1\r\nHost: exact.test\r\nX-Forwarded-Proto: http\r\n"
             "Connection: close\r\n\r\n").encode()
    r = parse_response(evstest.send_raw(t.port, spoof, tls=True, server_hostname="exact.test"))
    assert r.status == 200, r
    q = t.up.wait_requests(1)[-1]
    assert q.header_all("X-Forwarded-Proto") == ["https"], q.headers
    # And on the plain listener the same relay sees http, also replacing a client's value.
    spoof = spoof.replace(b"X-Forwarded-Proto: http", b"X-Forwarded-Proto: https")
    r = parse_response(evstest.send_raw(t.srv.port("http"), spoof))
    assert r.status == 200, r
    q = t.up.wait_requests(2)[-1]
    assert q.header_all("X-Forwarded-Proto") == ["http"], q.headers


def test_small_response_is_one_tls_record():
    """A response evserver writes whole (head and body gathered in the cork) leaves in one TLS
    record, not one per piece (core/io.c seals a corked TLS connection's plaintext at uncork):
    counted on the wire, TLS 1.2 so that every application-data record is the response's."""
    t = Tls()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="default.test")
    sock = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    with sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(out.read())
                data = sock.recv(65536)
                assert data, "the server closed during the handshake"
                inc.write(data)
        sock.sendall(out.read())
        tls.write(b"GET /nowhere HTTP/1.1\r\nHost: unknown.test\r\nConnection: close\r\n\r\n")
        sock.sendall(out.read())
        wire = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            wire += data
    records, off = [], 0
    while off + 5 <= len(wire):
        n = int.from_bytes(wire[off + 3:off + 5], "big")
        records.append((wire[off], n))
        off += 5 + n
    assert off == len(wire), "a truncated record on the wire"
    inc.write(wire)
    plain = b""
    try:
        while True:
            chunk = tls.read(65536)
            if not chunk:
                break
            plain += chunk
    except (ssl.SSLZeroReturnError, ssl.SSLWantReadError):
        pass
    r = parse_response(plain)
    assert r.status == 404 and r.body, r
    app = [n for typ, n in records if typ == 23]
    assert len(app) == 1, "response in %d application-data records %r" % (len(app), records)


evstest.main(globals())
