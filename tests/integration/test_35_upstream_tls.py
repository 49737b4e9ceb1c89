"""TLS towards destinations: certificate verification (relay `caFile`, `[upstream] ca_file`, the
system store, `verifyDestination: false`, host name checks) and client certificates (relay
`mtls`). A failure must come back at once as the documented error (X-Evervault-Error-Code
service-unavailable, JSON {status, code, title, detail, message}) and be counted in
evserver_upstream_errors_total; and a pooled upstream connection made under looser settings
(no verification, a client certificate) must never serve a relay with stricter or different
ones.

The destinations are evstest Upstreams serving certificates from a throwaway CA that no system
store trusts; one of them requires client certificates from that CA.
"""

import json
import os
import re
import secrets
import shutil
import subprocess

import evstest
from evstest import Upstream, parse_response, send_raw

# Longer than any client wait below: a handshake that hangs shows up as a missing response,
# not as a timeout answer.
UPSTREAM = {"connect_timeout": "20s", "response_timeout": "20s"}
CLIENT_TIMEOUT = 8.0
ERROR_KEYS = {"status", "code", "title", "detail", "message", "evervault-error-code"}


class Pki:
    def __init__(self):
        self.ca = evstest.make_ca(name="upstream CA")
        self.other_ca = evstest.make_ca(name="unrelated CA")
        self.server = evstest.make_cert(self.ca, ["localhost", "127.0.0.1"])
        self.ip_only = evstest.make_cert(self.ca, ["127.0.0.1"])
        self.wrong_name = evstest.make_cert(self.ca, ["other.test"])
        self.client = evstest.make_cert(self.ca, ["relay-client"], client=True)
        self.foreign_client = evstest.make_cert(self.other_ca, ["foreign-client"], client=True)


def get(srv, host, path="/up", api_key=None):
    """One request for relay `host`; returns the Response."""
    extra = "api-key: %s\r\n" % api_key if api_key else ""
    raw = send_raw(srv.port(), ("GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
                                % (path, host, extra)).encode(), timeout=CLIENT_TIMEOUT)
    assert raw, "no answer for %s within %gs: the upstream handshake hangs" % (host,
                                                                              CLIENT_TIMEOUT)
    return parse_response(raw)


def metric(srv, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    text = srv.admin_get("/metrics").text
    m = re.search(r"^%s%s (\d+)$" % (re.escape(name), re.escape("{%s}" % want) if want else ""),
                  text, re.M)
    return int(m.group(1)) if m else 0


def assert_service_unavailable(r, host):
    assert r.status in (502, 503), "%s: %r %r" % (host, r, r.body)
    assert r.header("X-Evervault-Error-Code") == "service-unavailable", (host, r.headers)
    body = r.json()
    assert set(body) == ERROR_KEYS, body
    assert body["status"] == r.status and body["code"] == "service-unavailable", body
    assert body["detail"] and body["message"], body


def test_destination_verified_with_relay_ca_file():
    pki = Pki()
    up = Upstream(tls=pki.server, body=b"verified")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        "ca.test": {"destinationDomain": up.url, "caFile": pki.ca.cert},
        "name.test": {"destinationDomain": "https://localhost:%d" % up.port,
                      "caFile": pki.ca.cert}})
    for host in ("ca.test", "name.test"):
        r = get(srv, host)
        assert (r.status, r.body) == (200, b"verified"), (host, r, r.body)
    assert len(up.wait_requests(2)) == 2 and not up.tls_errors, up.tls_errors


def test_destination_unknown_to_system_store_fails_fast():
    pki = Pki()
    up = Upstream(tls=pki.server, body=b"must not be seen")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        "sys.test": {"destinationDomain": up.url}})
    before = metric(srv, "evserver_upstream_errors_total", kind="tls")
    r = get(srv, "sys.test")
    assert_service_unavailable(r, "sys.test")
    assert metric(srv, "evserver_upstream_errors_total", kind="tls") == before + 1
    # evserver itself rejected the chain: the upstream saw the unknown_ca alert, no request.
    evstest.wait_for(lambda: up.tls_errors, what="the upstream to see the failed handshake")
    assert "UNKNOWN_CA" in up.tls_errors[0].upper(), up.tls_errors
    assert up.requests == []
    # A second try fails the same way (nothing cached a half-made connection).
    r = get(srv, "sys.test")
    assert_service_unavailable(r, "sys.test")


def test_upstream_ca_file_is_the_default_and_relay_ca_file_overrides_it():
    pki = Pki()
    up = Upstream(tls=pki.server, body=b"global-ca")
    srv = evstest.start_server(upstream=dict(UPSTREAM, ca_file=pki.ca.cert), relays={
        "global.test": {"destinationDomain": up.url},
        "override.test": {"destinationDomain": up.url, "caFile": pki.other_ca.cert}})
    r = get(srv, "global.test")
    assert (r.status, r.body) == (200, b"global-ca"), (r, r.body)
    r = get(srv, "override.test")
    assert_service_unavailable(r, "override.test")
    assert len(up.requests) == 1


def test_verify_destination_false_and_pool_isolation():
    pki = Pki()
    up = Upstream(tls=pki.wrong_name, body=b"unverified")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        "noverify.test": {"destinationDomain": up.url, "verifyDestination": False},
        "verify.test": {"destinationDomain": up.url}})
    for _ in range(2):
        r = get(srv, "noverify.test")
        assert (r.status, r.body) == (200, b"unverified"), (r, r.body)
    # The unverified connection is pooled now; the verifying relay to the same address must
    # make its own connection and fail verification, not borrow it.
    r = get(srv, "verify.test")
    assert_service_unavailable(r, "verify.test")
    assert len(up.requests) == 2, up.requests


def test_hostname_mismatch_fails():
    pki = Pki()
    wrong = Upstream(tls=pki.wrong_name, body=b"wrong name")
    ip_only = Upstream(tls=pki.ip_only, body=b"ip only")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        # certificate for other.test, destination 127.0.0.1
        "mismatch.test": {"destinationDomain": wrong.url, "caFile": pki.ca.cert},
        # certificate for IP 127.0.0.1 only, destination called localhost
        "dnsname.test": {"destinationDomain": "https://localhost:%d" % ip_only.port,
                         "caFile": pki.ca.cert},
        # control: the same IP-only certificate reached by its address verifies
        "ipok.test": {"destinationDomain": ip_only.url, "caFile": pki.ca.cert}})
    before = metric(srv, "evserver_upstream_errors_total", kind="tls")
    for host in ("mismatch.test", "dnsname.test"):
        r = get(srv, host)
        assert_service_unavailable(r, host)
    assert metric(srv, "evserver_upstream_errors_total", kind="tls") == before + 2
    r = get(srv, "ipok.test")
    assert (r.status, r.body) == (200, b"ip only"), (r, r.body)
    assert wrong.requests == [] and len(ip_only.requests) == 1


ENCLAVE_PLUGINS = {"relay-inbound": {}, "enclave": {"enclave_binary":
                                                      evstest.build_path("evserver-enclave")}}


def mtls_api_key(srv, permissions="relay:inbound-mtls"):
    """An app and an API key for mTLS relays (they need the api-key header)."""
    def evctl(*args):
        r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket,
                            "--json", *args], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return json.loads(r.stdout)
    app = evctl("app", "create")
    return evctl("key", "create", app["appId"], "--permissions", permissions)["apiKey"]


def test_mtls_client_certificate_presented():
    pki = Pki()
    d = evstest.tmpdir()
    # Relative paths in relay-config.json are relative to its directory.
    shutil.copy(pki.client.cert, os.path.join(d, "client.crt"))
    shutil.copy(pki.client.key, os.path.join(d, "client.key"))
    shutil.copy(pki.ca.cert, os.path.join(d, "ca.crt"))
    up = Upstream(tls=pki.server, client_ca=pki.ca, body=b"mutual")
    cfg = evstest.write_config(d, upstream=UPSTREAM, plugins=ENCLAVE_PLUGINS, relays={
        "mtls.test": {"destinationDomain": up.url, "caFile": "ca.crt",
                      "mtls": {"certificate": "client.crt", "key": "client.key"}}})
    srv = evstest.Server(cfg).start()
    # mTLS relays need an API key with the Inbound Relay mTLS Proxy permission.
    r = get(srv, "mtls.test")
    assert r.status == 401 and b"proxy-auth-failed" in r.body, (r, r.body)
    r = get(srv, "mtls.test", api_key=mtls_api_key(srv, "api:decrypt"))
    assert r.status == 401 and b"proxy-auth-failed" in r.body, (r, r.body)
    assert up.requests == []
    r = get(srv, "mtls.test", api_key=mtls_api_key(srv))
    assert (r.status, r.body) == (200, b"mutual"), (r, r.body)
    q = up.wait_requests(1)[0]
    # The key that authenticated to the relay stops there: it could decrypt everything.
    assert q.header("api-key") is None, q.headers
    cert = q.client_cert
    assert cert, "the upstream saw no client certificate"
    subject = dict(kv for rdn in cert["subject"] for kv in rdn)
    issuer = dict(kv for rdn in cert["issuer"] for kv in rdn)
    assert subject.get("commonName") == "relay-client", cert
    assert issuer.get("commonName") == "upstream CA", cert


def test_mtls_required_but_missing_or_foreign_fails():
    pki = Pki()
    up = Upstream(tls=pki.server, client_ca=pki.ca, body=b"mutual")
    srv = evstest.start_server(upstream=UPSTREAM, plugins=ENCLAVE_PLUGINS, relays={
        "mtls.test": {"destinationDomain": up.url, "caFile": pki.ca.cert,
                      "mtls": {"certificate": pki.client.cert, "key": pki.client.key}},
        "nomtls.test": {"destinationDomain": up.url, "caFile": pki.ca.cert},
        "foreign.test": {"destinationDomain": up.url, "caFile": pki.ca.cert,
                         "mtls": {"certificate": pki.foreign_client.cert,
                                  "key": pki.foreign_client.key}}})
    key = mtls_api_key(srv)
    # First a good mTLS request, so an authenticated connection sits in the pool.
    r = get(srv, "mtls.test", api_key=key)
    assert (r.status, r.body) == (200, b"mutual"), (r, r.body)
    for n, host in enumerate(("nomtls.test", "foreign.test"), 1):
        r = get(srv, host, api_key=key)
        assert_service_unavailable(r, host)
        evstest.wait_for(lambda: len(up.tls_errors) >= n,
                         what="the upstream to refuse the handshake of %s" % host)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in up.tls_errors[0].upper(), up.tls_errors
    # Only the request with the right certificate ever reached the destination.
    assert len(up.requests) == 1, up.requests
    assert all(q.client_cert for q in up.requests)



def test_mtls_encrypted_key_with_passphrase_file():
    pki = Pki()
    d = evstest.tmpdir()
    secret = "pass-" + secrets.token_hex(12)
    wrong = "wrong-" + secrets.token_hex(12)
    shutil.copy(pki.client.cert, os.path.join(d, "client.crt"))
    shutil.copy(pki.ca.cert, os.path.join(d, "ca.crt"))
    # The client key, encrypted with AES-256 under the passphrase.
    subprocess.run(["openssl", "pkey", "-in", pki.client.key, "-aes256", "-passout",
                    "pass:" + secret, "-out", os.path.join(d, "client.key")],
                   check=True, capture_output=True)
    with open(os.path.join(d, "client.key")) as f:
        assert "ENCRYPTED" in f.read()
    for name, text in (("client.pass", secret + "\n"), ("wrong.pass", wrong + "\r\n")):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(d, name), 0o600)
    up = Upstream(tls=pki.server, client_ca=pki.ca, body=b"mutual")

    def relay(**mtls):
        return {"destinationDomain": up.url, "caFile": "ca.crt",
                "mtls": dict({"certificate": "client.crt", "key": "client.key"}, **mtls)}
    cfg = evstest.write_config(d, upstream=UPSTREAM, plugins=ENCLAVE_PLUGINS, relays={
        "pass.test": relay(passphraseFile="client.pass"),
        "wrongpass.test": relay(passphraseFile="wrong.pass"),
        "nopass.test": relay(),
        "nofile.test": relay(passphraseFile="missing.pass")})
    srv = evstest.Server(cfg).start()
    key = mtls_api_key(srv)
    r = get(srv, "pass.test", api_key=key)
    assert (r.status, r.body) == (200, b"mutual"), (r, r.body)
    cert = up.wait_requests(1)[0].client_cert
    assert cert and dict(kv for rdn in cert["subject"] for kv in rdn)["commonName"] == \
        "relay-client", cert
    # The same key with the wrong passphrase, none, or an unreadable file: a clean 502 (the
    # pooled connection of pass.test is not borrowed: the passphrase file is in the pool key).
    for host in ("wrongpass.test", "nopass.test", "nofile.test"):
        r = get(srv, host, api_key=key)
        assert_service_unavailable(r, host)
        assert r.status == 502 and r.json()["detail"] == "TLS with the destination failed", r.body
    assert len(up.requests) == 1, up.requests
    # Still works after the failures (its context was cached, nothing was left half-set).
    r = get(srv, "pass.test", api_key=key)
    assert (r.status, r.body) == (200, b"mutual"), (r, r.body)
    # The reasons are logged, by file name; the passphrases never appear, nor in the admin API.
    log = srv.log()
    assert "wrong passphrase" in log and "wrong.pass" in log and "missing.pass" in log, log
    relays = srv.admin_get("/relays").text
    assert '"passphraseFile"' in relays and "client.pass" in relays, relays
    for text in (log, relays):
        assert secret not in text and wrong not in text


evstest.main(globals())
