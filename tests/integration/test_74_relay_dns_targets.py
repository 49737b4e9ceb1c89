"""Relays on a custom domain with `dnsTargets` (relay-config.json): the request goes to a target's
address (an IPv4 for A, a host name resolved for CNAME; evserver's `port` extension picks the
port), over https, with SNI, certificate verification and the Host header all naming the relay
domain, as if the client had reached the destination directly through DNS. Several targets
take turns per request (round robin). A certificate for another name fails with the documented
service-unavailable. Fields are encrypted and responses decrypted as on any relay.

The destinations are evstest Upstreams serving certificates for the relay domain from a
throwaway CA, given to the relay as `caFile`.
"""

import json
import os
import re
import subprocess

import evstest
from evstest import Upstream, parse_response, send_raw

UPSTREAM = {"connect_timeout": "20s", "response_timeout": "20s"}
CLIENT_TIMEOUT = 8.0
DOMAIN = "shop.example"


def get(srv, host=DOMAIN, path="/orders?id=7", extra=""):
    raw = send_raw(srv.port(), ("GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
                                % (path, host, extra)).encode(), timeout=CLIENT_TIMEOUT)
    assert raw, "no answer for %s within %gs" % (host, CLIENT_TIMEOUT)
    return parse_response(raw)


def target(address, port, type_="A"):
    return {"type": type_, "address": address, "port": port}


def test_a_target_gets_the_relay_domain_as_host_and_tls_name():
    ca = evstest.make_ca(name="dns CA")
    up = Upstream(tls=evstest.make_cert(ca, [DOMAIN]), body=b"via A")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        DOMAIN: {"dnsTargets": [target("127.0.0.1", up.port)], "caFile": ca.cert}})
    r = get(srv, host="Shop.Example")  # relay domains compare case-insensitively
    assert (r.status, r.body) == (200, b"via A"), (r, r.body)
    q = up.wait_requests(1)[0]
    assert q.header("host") == DOMAIN, q.headers
    assert q.path == "/orders?id=7", q.path
    assert not up.tls_errors, up.tls_errors
    # The request pipeline is the relay's: ev: data in a header is still refused.
    r = get(srv, extra="X-Card: ev:QkTC:number:abc:def:$\r\n")
    assert r.status == 400 and r.header("X-Evervault-Error-Code") == "encrypted-data-in-field", r
    assert len(up.requests) == 1


def test_cname_target_is_resolved():
    ca = evstest.make_ca(name="dns CA")
    up = Upstream(tls=evstest.make_cert(ca, [DOMAIN]), body=b"via CNAME")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        DOMAIN: {"dnsTargets": [target("localhost", up.port, "CNAME")], "caFile": ca.cert}})
    r = get(srv)
    assert (r.status, r.body) == (200, b"via CNAME"), (r, r.body)
    assert up.wait_requests(1)[0].header("host") == DOMAIN


def test_certificate_for_another_name_fails():
    ca = evstest.make_ca(name="dns CA")
    # A certificate for the target's address and name, but not for the relay domain.
    up = Upstream(tls=evstest.make_cert(ca, ["localhost", "127.0.0.1"]), body=b"never")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        DOMAIN: {"dnsTargets": [target("127.0.0.1", up.port)], "caFile": ca.cert},
        "lax.example": {"dnsTargets": [target("127.0.0.1", up.port)],
                        "verifyDestination": False}})
    r = get(srv)
    assert r.status == 502, (r, r.body)
    assert r.header("X-Evervault-Error-Code") == "service-unavailable", r.headers
    assert r.json()["detail"] == "TLS with the destination failed", r.body
    assert up.requests == []
    # verifyDestination: false is honoured (and its connection is not the verifying relay's).
    r = get(srv, host="lax.example")
    assert (r.status, r.body) == (200, b"never"), (r, r.body)
    assert up.wait_requests(1)[0].header("host") == "lax.example"
    r = get(srv)
    assert r.status == 502, (r, r.body)


def test_two_targets_take_turns():
    ca = evstest.make_ca(name="dns CA")
    cert = evstest.make_cert(ca, [DOMAIN])
    one, two = Upstream(tls=cert, body=b"one"), Upstream(tls=cert, body=b"two")
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        DOMAIN: {"dnsTargets": [target("127.0.0.1", one.port),
                                target("localhost", two.port, "CNAME")],
                 "caFile": ca.cert}})
    bodies = [get(srv).body for _ in range(4)]
    assert sorted(bodies) == [b"one", b"one", b"two", b"two"], bodies
    assert bodies[0] != bodies[1] and bodies[1] != bodies[2], bodies
    assert len(one.requests) == 2 and len(two.requests) == 2
    assert all(q.header("host") == DOMAIN for q in one.requests + two.requests)


def test_unreachable_target_is_service_unavailable():
    ca = evstest.make_ca(name="dns CA")
    up = Upstream(tls=evstest.make_cert(ca, [DOMAIN]))
    port = up.port
    up.stop()
    srv = evstest.start_server(upstream=UPSTREAM, relays={
        DOMAIN: {"dnsTargets": [target("127.0.0.1", port)], "caFile": ca.cert}})
    r = get(srv)
    assert r.status == 503 and r.header("X-Evervault-Error-Code") == "service-unavailable", r



def test_fields_encrypted_and_responses_decrypted():
    """The request pipeline is the relay's own: fieldsToEncrypt and response decryption."""
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    ca = evstest.make_ca(name="dns CA")
    # The destination echoes the body it got: the client sees it decrypted again.
    up = Upstream(tls=evstest.make_cert(ca, [DOMAIN]),
                  handler=lambda q: (200, {"Content-Type": "application/json"}, q.body))
    cfg = evstest.write_config(upstream=UPSTREAM, plugins={
        "enclave": {"enclave_binary": enclave}, "relay-inbound": {}})
    srv = evstest.Server(cfg).start()
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket,
                        "--json", "app", "create"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    app = json.loads(r.stdout)["appId"]
    with open(cfg.relay_config, "w") as f:
        json.dump({DOMAIN: {"dnsTargets": [target("127.0.0.1", up.port)], "caFile": ca.cert,
                            "appId": app, "fieldsToEncrypt": [
                                {"route": "/pay", "method": "POST", "fields": ["$.ssn"]}]}}, f)
    body = b'{"name":"Ada","ssn":"123-12-1234"}'

    def post():
        raw = send_raw(srv.port(), b"POST /pay HTTP/1.1\r\nHost: " + DOMAIN.encode() +
                       b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                       b"Connection: close\r\n\r\n" % len(body) + body, timeout=CLIENT_TIMEOUT)
        return parse_response(raw) if raw else None
    # Every worker re-reads the file within a second.
    evstest.wait_for(lambda: getattr(post(), "status", 0) == 200, what="relay-config applied")
    r = post()
    assert (r.status, r.body) == (200, body), (r, r.body)
    q = up.requests[-1]
    sent = json.loads(q.body)
    assert sent["name"] == "Ada" and re.fullmatch(r"ev:[A-Za-z0-9+/=_:-]+:\$", sent["ssn"]), q.body
    assert q.header("host") == DOMAIN, q.headers


evstest.main(globals())
