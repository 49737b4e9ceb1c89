"""The Inbound Relay encrypting fields end to end, as the documentation's Getting Started does:
curl POSTs {"name":"Claude Shannon","ssn":"123-12-1234"} through the relay; the destination (a
real local HTTP server) receives `name` in plaintext and `ssn` as an ev: string, which evserver's
own /decrypt (the SDK's endpoint) turns back into the original. Also XML, form and multipart
bodies (files as %EVENC), byte-exact forwarding around the selected values, and the documented
errors with nothing reaching the destination. Needs the real evserver-enclave."""

import base64
import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request

import evstest

EV = re.compile(r"ev:[A-Za-z0-9+/=_:-]+:\$")


def evctl_json(srv, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def curl(srv, host, path, data, ctype, extra=()):
    r = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H", "Host: " + host,
                        "-H", "Content-Type: " + ctype, "--data-binary", data, *extra,
                        srv.url(path)], capture_output=True, timeout=20)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code), body


def setup(credentials=False):
    """A server with an app and a relay for it (per test: the harness stops both after it).
    credentials: the app's token also goes to the credentials directory, so enclaves started
    later (a reload's new workers) unlock it too."""
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    up = evstest.Upstream()
    creds = evstest.tmpdir()
    cfg = evstest.write_config(listeners={"http": {}, "api": {}},
                               plugins={"enclave": {"enclave_binary": enclave,
                                                    "credentials_dir": creds},
                                        "relay-inbound": {}})
    srv = evstest.Server(cfg).start()
    app = evctl_json(srv, "app", "create")
    if credentials:
        path = os.path.join(creds, "evserver-app-" + app["appId"])
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(app["appToken"])
    key = evctl_json(srv, "key", "create", app["appId"], "--permissions", "api:decrypt")
    relays = {"shannon.example": {
        "destinationDomain": "http://127.0.0.1:%d" % up.port, "appId": app["appId"],
        "fieldsToEncrypt": [
            {"route": "/secure", "method": "POST", "fields": ["$.ssn", "$..card", "ssn", "doc"]},
        ]}}
    with open(cfg.relay_config, "w") as f:
        json.dump(relays, f)
    # Every worker re-reads the file within a second.
    evstest.wait_for(lambda: curl(srv, "shannon.example", "/secure", '{"ssn":"1"}',
                                  "application/json")[0] == 200 and
                     EV.search(up.requests[-1].body.decode()), what="relay-config applied")
    return dict(srv=srv, up=up, app=app, key=key)


def decrypt(c, value):
    auth = base64.b64encode(("%s:%s" % (c["app"]["appId"], c["key"]["apiKey"])).encode()).decode()
    req = urllib.request.Request(c["srv"].url("/decrypt", "api"),
                                 data=json.dumps({"data": value}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Basic " + auth})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["data"]


def test_getting_started():
    c = setup()
    n = len(c["up"].requests)
    c["up"].set_response(handler=lambda r: (200, [("Content-Type", "application/json")], r.body))
    code, echoed = curl(c["srv"], "shannon.example", "/secure",
                        '{"name":"Claude Shannon", "ssn":"123-12-1234"}', "application/json")
    assert code == 200
    # The destination echoes what it got; the client gets plaintext back (response decryption).
    assert echoed == b'{"name":"Claude Shannon", "ssn":"123-12-1234"}', echoed
    got = c["up"].wait_requests(n + 1)[-1]
    text = got.body.decode()
    assert "123-12-1234" not in text
    m = re.fullmatch(r'\{"name":"Claude Shannon", "ssn":"(ev:[^"]+)"\}', text)
    assert m, text
    assert decrypt(c, m.group(1)) == "123-12-1234"
    assert int(got.header("content-length")) == len(got.body)


def test_byte_exact_and_typed():
    c = setup()
    n = len(c["up"].requests)
    body = ('{ "a" : 1.50e3 ,"big":123456789012345678901234567890,"s":"\\u00e9\\n",'
            '"ssn" : 42 ,"items":[{"card":true},{"card":"4242"}] }')
    code, _ = curl(c["srv"], "shannon.example", "/secure", body, "application/json")
    assert code == 200
    out = c["up"].wait_requests(n + 1)[-1].body.decode()
    vals = EV.findall(out)
    assert len(vals) == 3, out
    expect = ('{ "a" : 1.50e3 ,"big":123456789012345678901234567890,"s":"\\u00e9\\n",'
              '"ssn" : "X" ,"items":[{"card":"X"},{"card":"X"}] }')
    assert EV.sub("X", out) == expect, out
    assert decrypt(c, vals[0]) == 42 and decrypt(c, vals[1]) is True
    assert decrypt(c, vals[2]) == "4242"


def test_response_decryption_typed_and_files():
    c = setup()
    ev = {}
    up = c["up"]
    curl(c["srv"], "shannon.example", "/secure", '{"ssn": 42, "card": {"card": true}}',
         "application/json")
    vals = EV.findall(up.requests[-1].body.decode())
    body = ('{"n": "%s", "b": "%s", "x": "ev:not:real:$"}' % (vals[0], vals[1])).encode()
    up.set_response(handler=lambda r: (200, [("Content-Type", "application/json")], body))
    code, out = curl(c["srv"], "shannon.example", "/other", "{}", "application/json")
    assert code == 200 and out == b'{"n": 42, "b": true, "x": "ev:not:real:$"}', out
    up.set_response(handler=lambda r: (200, [("Content-Type", "text/plain")], b"plain body"))
    assert curl(c["srv"], "shannon.example", "/other", "{}", "application/json")[1] == b"plain body"
    # A large response (held until its values are decrypted, then sent in bounded pieces).
    pad = "x" * 1000
    big = ("[" + ",".join('{"i": %d, "n": "%s", "pad": "%s"}' % (i, vals[0], pad)
                          for i in range(800)) + "]").encode()
    up.set_response(handler=lambda r: (200, [("Content-Type", "application/json")], big))
    code, out = curl(c["srv"], "shannon.example", "/other", "{}", "application/json")
    want = ("[" + ",".join('{"i": %d, "n": 42, "pad": "%s"}' % (i, pad) for i in range(800))
            + "]").encode()
    assert code == 200 and out == want, (code, len(out), out[:200])


def test_xml_form_multipart():
    c = setup()
    srv, up = c["srv"], c["up"]
    n = len(up.requests)
    code, _ = curl(srv, "shannon.example", "/secure",
                   "<user><name>Ada</name><ssn>123-12-1234</ssn></user>", "application/xml")
    assert code == 200
    out = up.wait_requests(n + 1)[-1].body.decode()
    m = re.fullmatch(r"<user><name>Ada</name><ssn>(ev:[^<]+)</ssn></user>", out)
    assert m and decrypt(c, m.group(1)) == "123-12-1234", out
    code, _ = curl(srv, "shannon.example", "/secure", "name=Ada+L&ssn=123-12-1234",
                   "application/x-www-form-urlencoded")
    assert code == 200
    out = up.wait_requests(n + 2)[-1].body.decode()
    m = re.fullmatch(r"name=Ada\+L&ssn=(.+)", out)
    assert m, out
    value = urllib.parse.unquote_plus(m.group(1))
    assert EV.fullmatch(value) and decrypt(c, value) == "123-12-1234"
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                        "Host: shannon.example", "-F", "name=Ada", "-F", "ssn=123-12-1234",
                        "-F", "doc=@-;filename=scan.png;type=image/png", srv.url("/secure")],
                       input=b"\x89PNG secret file bytes", capture_output=True, timeout=20)
    assert r.stdout == b"200"
    raw = up.wait_requests(n + 3)[-1].body
    assert b"123-12-1234" not in raw and b"secret file bytes" not in raw
    assert b'filename="scan.png"' in raw and b"%EVENC" in raw


def test_errors_forward_nothing():
    c = setup()
    srv, up = c["srv"], c["up"]
    n = len(up.requests)
    cases = [
        ('{"ssn": "1",}', "application/json", 400, "bad-request"),
        ('{"ssn": "1", "ssn": "2"}', "application/json", 400, "bad-request"),
        ("<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x><ssn>&e;</ssn></x>",
         "application/xml", 400, "bad-request"),
        ('{"name": "ev:RFVC:AAAA:BBBB:CCCC:$", "ssn": "1"}', "application/json", 400,
         "encrypted-data-in-field"),
    ]
    for body, ctype, status, code in cases:
        got, resp = curl(srv, "shannon.example", "/secure", body, ctype)
        assert got == status, (body, got, resp)
        assert json.loads(resp)["code"] == code, resp
    got, resp = curl(srv, "shannon.example", "/secure", '{"ssn":"1"}', "application/json",
                     ("-H", "X-Card: ev:RFVC:AAAA:BBBB:CCCC:$"))
    assert got == 400 and b"encrypted-data-in-field" in resp
    got, resp = curl(srv, "shannon.example", "/x/ev:RFVC:AAAA:BBBB:CCCC:$", "{}",
                     "application/json")
    assert got == 400 and b"encrypted-data-in-field" in resp
    time.sleep(0.3)
    assert len(up.requests) == n, "an invalid request reached the destination"


def test_structures_and_activity_recorded():
    c = setup()
    srv = c["srv"]
    assert curl(srv, "shannon.example", "/secure", '{"ssn":', "application/json")[0] == 400
    assert curl(srv, "shannon.example", "/secure", '{"ssn":"123-12-1234"}',
                "application/json")[0] == 200
    acts = json.loads(srv.admin_get("/activity?relay=shannon.example").body)["transactions"]
    assert acts and all("123-12-1234" not in json.dumps(a) for a in acts)
    assert any(a["status"] == 400 and a.get("errorCode") for a in acts)
    ok = [a for a in acts if a["status"] == 200][0]
    assert ok["encryptedFields"] == ["$.ssn", "$..card", "ssn", "doc"], ok
    assert ok["method"] == "POST" and ok["path"] == "/secure" and ok["contentType"] == "json", ok
    assert isinstance(ok["durationMs"], float) and ok["encryptedCount"] == 1, ok
    # Structures: field paths for each content type, never values (XML as the XML rewriter
    # selects: $ is the root element).
    xml = ('<?xml version="1.0"?><person><name>Ada</name><ns:ssn>123-12-1234</ns:ssn>'
           '<cards><card>4242</card><card><![CDATA[5555]]></card></cards><empty/></person>')
    assert curl(srv, "shannon.example", "/xml", xml, "application/xml")[0] == 200
    assert curl(srv, "shannon.example", "/form", "a=1&b=2", "application/x-www-form-urlencoded")[0] == 200

    def shapes():
        st = json.loads(srv.admin_get("/relays/structures?relay=shannon.example").body)
        return {(s["route"], s["contentType"]): s["fields"] for s in st["structures"]}
    got = evstest.wait_for(lambda: (lambda s: s if ("/xml", "xml") in s and ("/form", "form") in s
                                    else None)(shapes()), what="xml and form structures")
    assert sorted(got[("/xml", "xml")]) == ["$.cards.card", "$.name", "$['ns:ssn']"], got
    assert sorted(got[("/form", "form")]) == ["a", "b"], got
    assert ("/secure", "json") in got and got[("/secure", "json")] == ["$.ssn"], got
    assert all("123-12-1234" not in f and "4242" not in f for v in got.values() for f in v), got




def test_reload_under_load_fails_no_request():
    """relay-config.json rewritten every 0.2 s (selectors switch between two sets) and a SIGHUP,
    while 4 keep-alive clients POST: every request succeeds, ssn never reaches the destination
    in plaintext, and both selections were in force at some point. The app is unlocked from
    the credentials directory, as a reload's new enclaves need (enclave/README.md)."""
    import http.client
    import threading
    c = setup(credentials=True)
    srv, up = c["srv"], c["up"]
    with open(srv.config.relay_config) as f:
        relays = json.load(f)
    body = json.dumps({"name": "Claude Shannon", "ssn": "123-12-1234"})
    stop, lock, results = threading.Event(), threading.Lock(), []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", srv.port(), timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/secure", body, {"Host": "shannon.example",
                                                       "Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                out = r.status if r.status == 200 else (r.status, data[:200])
            except Exception as e:  # a failed request is what this test looks for
                out = repr(e)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port(), timeout=10)
            with lock:
                results.append(out)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    selections = (["$.ssn"], ["$.ssn", "$.name"])
    deadline = time.monotonic() + 4
    i = 0
    while time.monotonic() < deadline:
        i += 1
        relays["shannon.example"]["fieldsToEncrypt"][0]["fields"] = selections[i % 2]
        tmp = srv.config.relay_config + ".tmp"
        with open(tmp, "w") as f:
            json.dump(relays, f)
        os.replace(tmp, srv.config.relay_config)
        if i == 10:
            srv.signal(__import__("signal").SIGHUP)
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive(), "a client is stuck"
    failed = [r for r in results if r != 200]
    assert len(results) >= 100 and not failed, (len(results), failed[:5])
    bodies = [json.loads(r.body) for r in up.requests if r.path == "/secure"]
    assert all(EV.fullmatch(b["ssn"]) for b in bodies), [b for b in bodies if "ssn" in b][:3]
    names = {"ev" if EV.fullmatch(b["name"]) else b["name"] for b in bodies if "name" in b}
    assert names == {"ev", "Claude Shannon"}, names


if __name__ == "__main__":
    evstest.main(globals())
