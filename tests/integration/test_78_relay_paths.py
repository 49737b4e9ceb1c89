"""Route matching cannot be bypassed by spelling the path differently (issue 9 item 3): a relay
encrypting `$.ssn` on route /enc gets the same request as /ENC, //enc, /%65nc, /x/../enc, /./enc,
/enc;x=1 and /enc/ (each of which some framework routes to /enc), sent over raw sockets so no
client normalises them first. The destination never sees the plaintext: the field arrives as an
ev: string, or the request is refused and nothing reaches it. Ambiguous spellings (encoded '/',
backslash, %00, double encoding) are refused with bad-request; a relay without fields to encrypt
forwards them unchanged. A relay with "caseSensitiveRoutes": true does not encrypt /ENC (the
documented option). Needs the real evserver-enclave."""

import json
import os
import re
import subprocess

import evstest

EV = re.compile(r"ev:[A-Za-z0-9+/=_:-]+:\$")
SSN = "111-11-1111"
BODY = json.dumps({"ssn": SSN}).encode()


def evctl_json(srv, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def post(srv, host, target, body=BODY):
    head = ("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\nConnection: close\r\n\r\n" % (target, host, len(body)))
    raw = evstest.send_raw(srv.port(), head.encode("latin-1") + body, timeout=10)
    return evstest.parse_response(raw)


def setup():
    """A server with an app and three relays to one recording destination: paths.example and
    strict.example (caseSensitiveRoutes) encrypt $.ssn on POST /enc, plain.example encrypts
    nothing."""
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    up = evstest.Upstream()
    cfg = evstest.write_config(listeners={"http": {}, "api": {}},
                               plugins={"enclave": {"enclave_binary": enclave},
                                        "relay-inbound": {}})
    srv = evstest.Server(cfg).start()
    app = evctl_json(srv, "app", "create")
    dest = "http://127.0.0.1:%d" % up.port
    route = [{"route": "/enc", "method": "POST", "fields": ["$.ssn"]}]
    relays = {
        "paths.example": {"destinationDomain": dest, "appId": app["appId"],
                          "fieldsToEncrypt": route},
        "strict.example": {"destinationDomain": dest, "appId": app["appId"],
                           "caseSensitiveRoutes": True, "fieldsToEncrypt": route},
        "plain.example": {"destinationDomain": dest, "appId": app["appId"]},
    }
    with open(cfg.relay_config, "w") as f:
        json.dump(relays, f)
    # Every worker re-reads the file within a second.
    evstest.wait_for(lambda: post(srv, "strict.example", "/enc").status == 200 and
                     EV.search(up.requests[-1].body.decode()), what="relay-config applied")
    return srv, up


def send(srv, up, host, target):
    """POSTs {"ssn": SSN} to target; returns (response, the request the destination got or
    None)."""
    n = len(up.requests)
    r = post(srv, host, target)
    got = up.wait_requests(n + 1)[-1] if r.status == 200 else None
    assert len(up.requests) == (n + 1 if got else n), (target, r, up.requests[n:])
    return r, got


def test_spellings_never_leak():
    srv, up = setup()
    for target in ["/enc", "/ENC", "//enc", "/%65nc", "/x/../enc", "/./enc", "/enc;x=1", "/enc/",
                   "/Enc//", "/x/..;/enc", "/x/%2e%2E/enc", "/%2e/eNc", "///enc;a=1/.",
                   "/a/b/../../enc?q=1", "/e%6Ec"]:
        r, got = send(srv, up, "paths.example", target)
        if got is None:
            assert r.status == 400 and r.header("X-Evervault-Error-Code") == "bad-request", \
                (target, r, r.body)
            continue
        text = got.body.decode()
        assert SSN not in text, (target, text)
        assert EV.fullmatch(json.loads(text)["ssn"]), (target, text)
        # The destination gets the path as the client wrote it: its framework reads it, and
        # the relay matched every reading. (Python's http.server merges leading slashes.)
        assert got.path == re.sub("^/+", "/", target), (target, got.path)
    for u in up.requests:
        assert SSN.encode() not in u.body, u


def test_ambiguous_refused():
    srv, up = setup()
    for target in ["/enc%2F", "/x%2F..%2Fenc", "/x%2f..%2fenc", "/x/..%5Cenc", "/x\\..\\enc",
                   "/enc%00", "/%2565nc", "/%25%36%35nc"]:
        r, got = send(srv, up, "paths.example", target)
        assert got is None and r.status == 400, (target, r)
        assert r.header("X-Evervault-Error-Code") == "bad-request", (target, r.headers)
        assert r.json()["code"] == "bad-request", r.body
    # Not where nothing is encrypted: a relay without fieldsToEncrypt passes them on.
    r, got = send(srv, up, "plain.example", "/x%2F..%2Fenc")
    assert r.status == 200 and got.path == "/x%2F..%2Fenc", (r, got)
    for u in up.requests:
        assert SSN.encode() not in u.body or u.path == "/x%2F..%2Fenc", u


def test_case_sensitive_option():
    srv, up = setup()
    r, got = send(srv, up, "strict.example", "/ENC")
    assert r.status == 200 and json.loads(got.body)["ssn"] == SSN, got.body  # documented option
    for target in ["/enc", "/%65nc", "//enc/", "/x/../enc;y"]:
        r, got = send(srv, up, "strict.example", target)
        assert r.status == 200 and EV.fullmatch(json.loads(got.body)["ssn"]), (target, got.body)


if __name__ == "__main__":
    evstest.main(globals())
