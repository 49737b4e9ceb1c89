"""The Inbound Relay's trust boundary, as an attacker tries it from outside, against a destination
that records the raw bytes it receives and echoes what it got (so a relay that decrypts responses
would hand back the plaintext of anything it let through):

- no decryption oracle: a real ev: string (or a %EVENC file) anywhere in a request, in any
  spelling a destination could decode, is refused with `encrypted-data-in-field` and nothing
  reaches the destination: one property (`refused`), checked across places (path, query,
  headers, body), content types, spellings, routes with and without fields, and relays with and
  without response decryption;
- a route that selects fields never forwards a body it cannot parse;
- a selected value that is already an ev: string is never encrypted twice: passed as it is where
  responses are not decrypted, refused where they are;
- relay encryption keeps a value's bytes exactly (whitespace included);
- compressed request bodies are refused; Proxy-Authorization never reaches the destination;
- an enclave that stops answering gives a retryable 503, not 500.
Needs the real evserver-enclave."""

import json
import os
import re
import signal
import urllib.parse

import evstest

EV = re.compile(rb"ev:[A-Za-z0-9+/=_:-]+:\$")
RELAYS = ("dec.example", "nodec.example")


def evctl_json(srv, *args):
    import subprocess
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def setup(enclave_timeout=None):
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    up = evstest.Upstream()
    # The destination echoes what it received, as the attacker used it.
    up.set_response(handler=lambda r: (200, [("Content-Type", r.header("Content-Type")
                                              or "application/octet-stream")], r.body))
    creds = evstest.tmpdir()
    enc = {"enclave_binary": enclave, "credentials_dir": creds}
    if enclave_timeout:
        enc["request_timeout"] = enclave_timeout
    cfg = evstest.write_config(listeners={"http": {}, "api": {}},
                               plugins={"enclave": enc, "relay-inbound": {}})
    srv = evstest.Server(cfg).start()
    app = evctl_json(srv, "app", "create")
    path = os.path.join(creds, "evserver-app-" + app["appId"])
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(app["appToken"])
    dest = "http://127.0.0.1:%d" % up.port
    routes = [{"route": "/enc", "method": "POST", "fields": ["$.ssn", "ssn"]}]
    relays = {"dec.example": {"destinationDomain": dest, "appId": app["appId"],
                              "fieldsToEncrypt": routes},
              "nodec.example": {"destinationDomain": dest, "appId": app["appId"],
                                "responseDecryption": False, "fieldsToEncrypt": routes}}
    with open(cfg.relay_config, "w") as f:
        json.dump(relays, f)
    c = dict(srv=srv, up=up, app=app, cfg=cfg)
    evstest.wait_for(lambda: send(c, "POST", "nodec.example", "/enc", b'{"ssn":"1"}',
                                  "application/json")[0] == 200, what="relay-config applied")
    # A real ciphertext of this app, as the destination would have stored it.
    c["token"] = EV.search(up.requests[-1].body).group(0).decode()
    return c


def send(c, method, host, target, body=b"", ctype=None, headers=()):
    """One request on its own connection; returns (status, error code or None, body)."""
    head = ["%s %s HTTP/1.1" % (method, target), "Host: " + host, "Connection: close"]
    if ctype is not None:
        head.append("Content-Type: " + ctype)
    head += ["%s: %s" % h for h in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        head.append("Content-Length: %d" % len(body))
    raw = evstest.send_raw(c["srv"].port(), ("\r\n".join(head) + "\r\n\r\n").encode() + body,
                           timeout=20, responses=1)
    r = evstest.parse_response(raw)
    return r.status, r.header("X-Evervault-Error-Code"), r.body


def refused(c, cases):
    """The property: every case is answered with its documented error and nothing of any of
    them reaches the destination. A case is (method, host, target, body, ctype, headers,
    (status, code)), or a set of such pairs where a body is refused for more than one reason."""
    up = c["up"]
    before = len(up.requests)
    for method, host, target, body, ctype, headers, want in cases:
        got = send(c, method, host, target, body, ctype, headers)
        ok = got[:2] in want if isinstance(want, set) else got[:2] == want
        assert ok, ((method, host, target, body[:200], ctype, headers), got)
        assert c["token"].encode() not in got[2] or not c["token"]
    # A request that may pass, as a barrier: everything before it has been handled.
    assert send(c, "GET", "nodec.example", "/barrier")[0] == 200
    got = up.wait_requests(before + 1)
    assert len(got) == before + 1 and got[-1].path == "/barrier", got[before:]


def spellings(token):
    """The same ev: string as a destination could decode it, for a JSON string, XML text, a
    form value, a URL and plain text: (name, text, contexts it is valid in)."""
    pct = "".join("%%%02X" % b for b in token.encode())
    return [
        ("raw", token, "json xml form url text"),
        ("json \\u", "\\u0065" + token[1:-1] + "\\u0024", "json"),
        ("json \\/", token.replace("/", "\\/"), "json"),
        ("percent", pct, "form url text"),
        ("percent first", "%65" + token[1:], "form url text"),
        ("percent twice", "%2565" + token[1:], "form url text"),
        ("char ref", "&#101;" + token[1:-1] + "&#x24;", "xml text"),
        ("named ref", token[:-2] + "&colon;&dollar;", "xml text"),
        ("json in url", urllib.parse.quote("\\u0065" + token[1:]), "url"),
    ]


def body_cases(token):
    """(content type, body) carrying token in every format the relay knows, and in ones it
    does not."""
    out = []
    for name, text, ctx in spellings(token):
        if "json" in ctx:
            out.append(("application/json", ('{"x": "%s"}' % text).encode()))
            out.append(("application/vnd.api+json", ('[1, {"deep": ["%s"]}]' % text).encode()))
        if "xml" in ctx:
            # (XML declares no named entities: &colon; is refused as malformed XML too.)
            out.append(("application/xml", ("<a><x>%s</x></a>" % text).encode()))
            out.append(("text/xml", ('<a b="%s"/>' % text).encode()))
        if "form" in ctx:
            out.append(("application/x-www-form-urlencoded", ("a=1&x=%s" % text).encode()))
        if "text" in ctx:
            for ct in ("text/plain", "application/octet-stream", "application/x-unknown", None,
                       "application/x-json"):
                out.append((ct, ("note: %s." % text).encode()))
    mp = ('--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n%s\r\n--b--\r\n' % token)
    out.append(("multipart/form-data; boundary=b", mp.encode()))
    evenc = b"%EVENC" + os.urandom(64)
    out.append(("application/octet-stream", evenc))
    out.append((None, evenc))
    mpf = (b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n'
           b'Content-Type: image/png\r\n\r\n' + evenc + b"\r\n--b--\r\n")
    out.append(("multipart/form-data; boundary=b", mpf))
    return out


def transfer_encoded_parts(token):
    """Multipart parts a destination may decode (base64, quoted-printable) before it reads them:
    their content cannot be checked, so the part is refused whatever it holds."""
    import base64
    out = []
    for cte, data in (("base64", base64.b64encode(token.encode())),
                      ("quoted-printable", b"=65" + token[1:].encode()),
                      ("BASE64", base64.b64encode(b"harmless"))):
        out.append(b'--b\r\nContent-Disposition: form-data; name="x"\r\n'
                   b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n" + data +
                   b"\r\n--b--\r\n")
    return out


PARSEABLE = ("application/json", "application/vnd.api+json", "application/xml", "text/xml",
             "application/x-www-form-urlencoded", "multipart/form-data; boundary=b")


def test_no_decryption_oracle_anywhere():
    c = setup()
    token = c["token"]
    cases = []
    ok = (400, "encrypted-data-in-field")
    for host in RELAYS:
        for name, text, ctx in spellings(token):
            if "url" not in ctx:
                continue
            cases.append(("GET", host, "/plain/" + text.replace("/", "%2F"), b"", None, (), ok))
            cases.append(("GET", host, "/plain?q=" + text, b"", None, (), ok))
            cases.append(("GET", host, "/plain?" + text, b"", None, (), ok))
            cases.append(("GET", host, "/plain", b"", None, (("X-Data", text),), ok))
            cases.append(("GET", host, "/plain", b"", None, (("Cookie", "s=" + text),), ok))
        for route in ("/plain", "/enc"):
            for ctype, body in body_cases(token):
                want = ok
                if b"&colon;" in body and ctype in PARSEABLE:
                    want = {ok, (400, "bad-request")}
                if route == "/enc" and ctype not in PARSEABLE:
                    want = (415, "bad-request")  # a body with selected fields it cannot parse
                cases.append(("POST", host, route, body, ctype, (), want))
                cases.append(("PUT", host, route, body, ctype, (), ok))  # /enc is POST only
            for body in transfer_encoded_parts(token):
                cases.append(("POST", host, route, body, "multipart/form-data; boundary=b", (),
                              (400, "bad-request")))
    refused(c, cases)


def test_already_encrypted_selected_values():
    c = setup()
    token, up = c["token"], c["up"]
    # Where responses are decrypted, a client's own ciphertext is refused even in a selected
    # field: echoed back (now or later), the relay would decrypt it.
    refused(c, [("POST", "dec.example", "/enc", ('{"ssn": "%s"}' % token).encode(),
                 "application/json", (), (400, "encrypted-data-in-field")),
                ("POST", "dec.example", "/enc", ("ssn=" + urllib.parse.quote(token)).encode(),
                 "application/x-www-form-urlencoded", (), (400, "encrypted-data-in-field"))])
    # Elsewhere it passes as it is: never encrypted twice.
    n = len(up.requests)
    status, _, _ = send(c, "POST", "nodec.example", "/enc",
                        ('{"ssn": "%s", "name": "A"}' % token).encode(), "application/json")
    assert status == 200
    assert up.wait_requests(n + 1)[-1].body == ('{"ssn": "%s", "name": "A"}' % token).encode()
    status, _, _ = send(c, "POST", "nodec.example", "/enc",
                        ("ssn=" + urllib.parse.quote(token, safe="")).encode(),
                        "application/x-www-form-urlencoded")
    assert status == 200
    got = up.wait_requests(n + 2)[-1].body.decode()
    assert urllib.parse.parse_qs(got)["ssn"] == [token], got
    # ... but not beside an unselected one.
    refused(c, [("POST", "nodec.example", "/enc",
                 ('{"ssn": "%s", "name": "%s"}' % (token, token)).encode(), "application/json",
                 (), (400, "encrypted-data-in-field"))])


def test_fields_never_forwarded_unparsed():
    c = setup()
    body = b'{"ssn":"111-11-1111"}'
    cases = []
    for host in RELAYS:
        for ctype in ("text/plain", "application/x-json", None, "application/octet-stream",
                      "json", "application/jsonx"):
            cases.append(("POST", host, "/enc", body, ctype, (), (415, "bad-request")))
        # A compressed body could hide fields and ciphertext alike.
        cases.append(("POST", host, "/enc", body, "application/json",
                      (("Content-Encoding", "gzip"),), (415, "bad-request")))
        cases.append(("POST", host, "/plain", body, "application/json",
                      (("Content-Encoding", "br"),), (415, "bad-request")))
    refused(c, cases)
    assert all(b"111-11-1111" not in r.body for r in c["up"].requests)


def test_content_length_not_a_number():
    c = setup()
    before = len(c["up"].requests)
    for value in ("abc", "1e3", "-5", "0x10", "12, 12"):
        raw = evstest.send_raw(c["srv"].port(), (
            "POST /enc HTTP/1.1\r\nHost: dec.example\r\nContent-Type: application/json\r\n"
            "Content-Length: %s\r\n\r\n{}" % value).encode(), timeout=10)
        r = evstest.parse_response(raw)
        assert r.header("X-Evervault-Error-Code") == "content-length-required", (value, raw)
        assert json.loads(r.body)["evervault-error-code"] == "content-length-required", r.body
    assert len(c["up"].requests) == before


def test_exact_bytes_and_no_proxy_credentials():
    c = setup()
    up = c["up"]
    n = len(up.requests)
    password = " \t p4ss word \u00e9 "
    status, _, echoed = send(c, "POST", "dec.example", "/enc",
                             json.dumps({"ssn": password}).encode(), "application/json",
                             (("Proxy-Authorization", "Basic c2VjcmV0"),))
    assert status == 200
    got = up.wait_requests(n + 1)[-1]
    assert got.header("Proxy-Authorization") is None, got.headers
    assert password.encode() not in got.body and EV.search(got.body)
    # The echo comes back decrypted: the value as sent, whitespace and all.
    assert json.loads(echoed) == {"ssn": password}, echoed


def test_enclave_down_is_retryable():
    c = setup(enclave_timeout="1s")
    seal = os.path.join(c["cfg"].dir, "state", "enclave-seal.key").encode()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"evserver-enclave") and seal in args:
                pids.append(int(d))
    assert pids, "no enclave process found"
    for p in pids:
        os.kill(p, signal.SIGSTOP)

    def resume():
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    evstest.defer(resume)
    refused(c, [("POST", "nodec.example", "/enc", b'{"ssn":"1"}', "application/json", (),
                 (503, "service-unavailable"))])
    resume()
    # The enclave comes back (unlocked from the credentials directory) and serves again.
    evstest.wait_for(lambda: send(c, "POST", "nodec.example", "/enc", b'{"ssn":"2"}',
                                  "application/json")[0] == 200, timeout=20,
                     what="the enclave back")
    assert "stays locked" not in c["srv"].log()


if __name__ == "__main__":
    evstest.main(globals())
