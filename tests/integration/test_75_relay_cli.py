"""The relay management surface: evctl's relay and activity commands against the real evserver
and its relay-inbound plugin's admin endpoints (GET/PUT /relays, DELETE /relays/<domain>,
GET /relays/structures, GET /activity), and `evctl relay dev`, which runs its own evserver.

A relay pushed with evctl must take effect in the running server: same process, and a
keep-alive connection opened before the push carries requests to the new relay after it.
"""

import json
import os
import pty
import select
import signal
import socket
import subprocess
import time

import evstest


def need_build():
    for p in (("evserver",), ("evctl",), ("plugins.d", "relay-inbound.so")):
        if not os.path.exists(evstest.build_path(*p)):
            raise evstest.Skip("%s is not built" % "/".join(p))


def evctl(srv, *args, cwd=None, timeout=30):
    """Runs evctl against srv's admin socket (srv None: no server) in cwd; CompletedProcess
    with text output."""
    env = {k: v for k, v in os.environ.items() if k not in ("EVSERVER_ADMIN_SOCKET", "TERM")}
    env["NO_COLOR"] = "1"
    sock = ["--socket", srv.config.admin_socket] if srv else []
    return subprocess.run([evstest.build_path("evctl"), *sock, *args], cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(r):
    assert r.returncode == 0, "evctl failed (%d)\nstdout: %s\nstderr: %s" % (
        r.returncode, r.stdout, r.stderr)
    return r


def one_json(r):
    """The whole of stdout is exactly one JSON object."""
    obj = json.loads(r.stdout)
    assert isinstance(obj, dict), r.stdout
    return obj


def request(port, host, method="GET", path="/", body=None, sock=None):
    """One HTTP/1.1 request with Host; on sock (kept open) or a new connection. Returns the
    Response."""
    body = body.encode() if isinstance(body, str) else body
    head = "%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, path, host)
    if body is not None:
        head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    if sock is None:
        head += "Connection: close\r\n"
    data = head.encode() + b"\r\n" + (body or b"")
    if sock is None:
        return evstest.parse_response(evstest.send_raw(port, data, responses=1))
    sock.sendall(data)
    responses, rest = evstest.recv_responses(sock, 1)
    assert rest == b"", rest
    return responses[0]


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def read_json(path):
    with open(path) as f:
        return json.load(f)


# ---- create (no server) -------------------------------------------------------------------

def test_create_writes_relay_config():
    need_build()
    d = evstest.tmpdir()
    r = ok(evctl(None, "--json", "relay", "create", "--destination-domain", "http://127.0.0.1:9000",
                 cwd=d))
    out = one_json(r)
    assert out["domain"] == "127-0-0-1.relay.localhost" and out["relayType"] == "AUTO", out
    content = read_json(os.path.join(d, "relay-config.json"))
    assert content == {"127-0-0-1.relay.localhost": {
        "destinationDomain": "http://127.0.0.1:9000", "fieldsToEncrypt": []}}, content

    # Never overwritten without --force; the file stays as it was.
    r = evctl(None, "relay", "create", "--destination-domain", "other.example.com", cwd=d)
    assert r.returncode == 1 and "already exists" in r.stderr and "--force" in r.stderr, r
    assert read_json(os.path.join(d, "relay-config.json")) == content

    ok(evctl(None, "relay", "create", "--force", "--custom-domain", "API.Example.com",
             "--destination-domain", "backend.example.com", cwd=d))
    assert read_json(os.path.join(d, "relay-config.json")) == {"api.example.com": {
        "destinationDomain": "backend.example.com", "fieldsToEncrypt": []}}

    f = os.path.join(d, "dns.json")
    ok(evctl(None, "relay", "create", "--relay-type", "DNS", "--custom-domain", "dns.example.com",
             "--dns-target", '{"type":"A","address":"203.0.113.7"}',
             "--dns-target", '{"type":"CNAME","address":"b.example.com"}', "--file", f, cwd=d))
    assert read_json(f) == {"dns.example.com": {"dnsTargets": [
        {"type": "A", "address": "203.0.113.7"}, {"type": "CNAME", "address": "b.example.com"}],
        "fieldsToEncrypt": []}}, read_json(f)

    ok(evctl(None, "relay", "create", "--base-domain", "relay.example.net", "--file", "b.json",
             "--destination-domain", "pay.example.com:8443", cwd=d))
    assert list(read_json(os.path.join(d, "b.json"))) == ["pay-example-com.relay.example.net"]

    for args, words in (
            (["--relay-type", "DNS", "--custom-domain", "x.example.com"], "--dns-target"),
            (["--relay-type", "CUSTOM", "--destination-domain", "a.example.com"], "--custom-domain"),
            (["--relay-type", "nope"], "AUTO, CUSTOM or DNS"),
            ([], "--destination-domain"),
            (["--dns-target", "[1]", "--custom-domain", "x.example.com"], "not a JSON object"),
            (["--destination-domain", "a.example.com", "--bogus"], "unknown option")):
        r = evctl(None, "relay", "create", "--file", "u.json", *args, cwd=d)
        assert r.returncode == 2 and words in r.stderr, (args, r)
        assert not os.path.exists(os.path.join(d, "u.json"))


# ---- push, diff, clone, delete, list against the server ------------------------------------

def test_push_applies_without_restart():
    need_build()
    up = evstest.Upstream(body=b"from-destination")
    srv = evstest.start_server()
    port = srv.port()
    d = evstest.tmpdir()
    # A keep-alive connection from before the push.
    sock = evstest.connect(port)
    evstest.defer(sock.close)
    r = request(port, "api.test", sock=sock)
    assert r.status == 404 and r.header("X-Evervault-Error-Code") == "relay-not-found", r

    ok(evctl(srv, "relay", "create", "--custom-domain", "api.test", "--destination-domain",
             "http://127.0.0.1:%d" % up.port, cwd=d))
    r = ok(evctl(srv, "relay", "push", "--yes", cwd=d))
    assert "api.test" in r.stdout and "1 to add" in r.stdout, r.stdout

    got = srv.admin_get("/relays").json()
    assert got["path"] == srv.config.relay_config, got
    assert got["relays"] == read_json(os.path.join(d, "relay-config.json")), got
    assert read_json(srv.config.relay_config) == got["relays"]

    r = request(port, "api.test", "POST", "/users?x=1", '{"name":"a"}', sock=sock)
    assert r.status == 200 and r.body == b"from-destination", (r, r.body)
    seen = up.wait_requests(1)[0]
    assert seen.method == "POST" and seen.path == "/users?x=1" and seen.body == b'{"name":"a"}'
    assert srv.running() and one_json(ok(evctl(srv, "--json", "status")))["pid"] == srv.pid

    # Pushing the same file again changes nothing.
    out = one_json(ok(evctl(srv, "--json", "relay", "push", "--yes", cwd=d)))
    assert out["pushed"] is False and out["added"] == [] and out["changed"] == [], out

    # Without --yes and without a terminal, push refuses and changes nothing.
    r = evctl(srv, "relay", "push", cwd=d)
    assert r.returncode == 2 and "--yes" in r.stderr, r


def push_on_terminal(srv, cwd, answer):
    """Runs `relay push` on a pseudo-terminal, answers the prompt, returns (status, output)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("EVSERVER_ADMIN_SOCKET",)}
    env.update(NO_COLOR="1", TERM="dumb")
    try:
        p = subprocess.Popen([evstest.build_path("evctl"), "--socket", srv.config.admin_socket,
                              "relay", "push"], cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                             env=env)
    finally:
        os.close(slave)
    out, answered, deadline = b"", False, time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    b = os.read(master, 65536)
                except OSError:
                    break
                if not b:
                    break
                out += b
                if not answered and b"[y/N]" in out:
                    os.write(master, answer + b"\n")
                    answered = True
            elif p.poll() is not None:
                break
    finally:
        os.close(master)
    return p.wait(10), out.decode(errors="replace")


def test_push_asks_on_a_terminal():
    need_build()
    srv = evstest.start_server()
    d = evstest.tmpdir()
    ok(evctl(srv, "relay", "create", "--custom-domain", "t.test", "--destination-domain",
             "http://127.0.0.1:9", cwd=d))
    status, out = push_on_terminal(srv, d, b"n")
    assert status == 1 and "+ t.test" in out and "cancelled" in out, (status, out)
    assert srv.admin_get("/relays").json()["relays"] == {}
    status, out = push_on_terminal(srv, d, b"y")
    assert status == 0 and "Pushed" in out, (status, out)
    assert list(srv.admin_get("/relays").json()["relays"]) == ["t.test"]


def test_push_merges_and_prune_replaces():
    need_build()
    srv = evstest.start_server(relays={
        "keep.test": {"destinationDomain": "http://127.0.0.1:9"},
        "api.test": {"destinationDomain": "http://127.0.0.1:10"}})
    d = evstest.tmpdir()
    f = os.path.join(d, "relay-config.json")
    write_json(f, {"API.test": {"destinationDomain": "http://127.0.0.1:11"},
                   "new.test": {"destinationDomain": "http://127.0.0.1:12"}})
    out = one_json(ok(evctl(srv, "--json", "relay", "push", "--yes", cwd=d)))
    assert out["added"] == ["new.test"] and out["removed"] == [] and out["relays"] == 3, out
    assert [c["domain"] for c in out["changed"]] == ["API.test"], out
    relays = srv.admin_get("/relays").json()["relays"]
    assert set(relays) == {"keep.test", "API.test", "new.test"}, relays
    assert relays["API.test"]["destinationDomain"] == "http://127.0.0.1:11"

    out = one_json(ok(evctl(srv, "--json", "relay", "diff", "--prune", cwd=d)))
    assert out == {"added": [], "removed": ["keep.test"], "changed": []}, out
    out = one_json(ok(evctl(srv, "--json", "relay", "push", "--prune", "--yes", cwd=d)))
    assert out["removed"] == ["keep.test"] and out["relays"] == 2, out
    assert set(srv.admin_get("/relays").json()["relays"]) == {"API.test", "new.test"}


def test_diff_per_relay_and_key():
    need_build()
    srv = evstest.start_server(relays={
        "a.test": {"destinationDomain": "http://127.0.0.1:9",
                   "fieldsToEncrypt": [{"route": "/x", "method": "POST", "fields": ["$.a"]}]},
        "b.test": {"destinationDomain": "http://127.0.0.1:9"}})
    d = evstest.tmpdir()
    f = os.path.join(d, "relay-config.json")
    write_json(f, {"a.test": {"destinationDomain": "http://127.0.0.1:9",
                              "fieldsToEncrypt": [{"route": "/x", "method": "POST",
                                                   "fields": ["$.a", "$.b"]}],
                              "responseDecryption": False},
                   "c.test": {"destinationDomain": "http://127.0.0.1:9"}})
    out = one_json(ok(evctl(srv, "--json", "relay", "diff", cwd=d)))
    assert out["added"] == ["c.test"] and out["removed"] == [] and out["kept"] == ["b.test"], out
    assert len(out["changed"]) == 1, out
    ch = out["changed"][0]
    assert ch["domain"] == "a.test", ch
    assert ch["from"]["fieldsToEncrypt"][0]["fields"] == ["$.a"], ch
    assert ch["to"]["fieldsToEncrypt"][0]["fields"] == ["$.a", "$.b"], ch

    r = ok(evctl(srv, "relay", "diff", cwd=d))
    lines = r.stdout.splitlines()
    assert "+ c.test" in lines and "~ a.test" in lines, r.stdout
    assert any(l.strip().startswith("~ fieldsToEncrypt:") and "->" in l for l in lines), r.stdout
    assert any(l.strip() == "+ responseDecryption: false" for l in lines), r.stdout
    assert "1 to add, 1 to change, 0 to remove" in r.stdout, r.stdout
    # diff never changes the server.
    assert "c.test" not in srv.admin_get("/relays").json()["relays"]

    write_json(f, {"b.test": {"destinationDomain": "http://127.0.0.1:9"}})
    out = one_json(ok(evctl(srv, "--json", "relay", "diff", cwd=d)))
    assert out["added"] == [] and out["changed"] == [] and out["removed"] == [], out


def test_clone_delete_list():
    need_build()
    relays = {"a.test": {"destinationDomain": "http://127.0.0.1:9",
                         "fieldsToEncrypt": [{"route": "/u", "method": "POST",
                                              "fields": ["$.ssn", "$.card.number"]}],
                         "responseDecryption": False},
              "b.test": {"dnsTargets": [{"type": "A", "address": "203.0.113.7"},
                                        {"type": "CNAME", "address": "c.example", "port": 8443}]}}
    srv = evstest.start_server(relays=relays)
    d = evstest.tmpdir()

    out = one_json(ok(evctl(srv, "--json", "relay", "list")))
    assert out["relays"] == relays and out["path"] == srv.config.relay_config, out
    r = ok(evctl(srv, "relay", "list"))
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["DOMAIN", "DESTINATION"], r.stdout
    row = next(l for l in lines if l.startswith("a.test"))
    assert "POST /u (2)" in row and row.rstrip().endswith("off"), row
    row = next(l for l in lines if l.startswith("b.test"))
    assert "dns: A 203.0.113.7, CNAME c.example:8443" in row, row

    ok(evctl(srv, "relay", "clone", "--domain", "A.TEST", "--file", "a.json", cwd=d))
    assert read_json(os.path.join(d, "a.json")) == {"a.test": relays["a.test"]}
    r = evctl(srv, "relay", "clone", "--domain", "a.test", "--file", "a.json", cwd=d)
    assert r.returncode == 1 and "--force" in r.stderr, r
    ok(evctl(srv, "relay", "clone", "--domain", "b.test", "--file", "a.json", "--force", cwd=d))
    assert read_json(os.path.join(d, "a.json")) == {"b.test": relays["b.test"]}
    r = evctl(srv, "relay", "clone", "--domain", "nope.test", "--file", "n.json", cwd=d)
    assert r.returncode == 1 and "nope.test" in r.stderr, r
    assert not os.path.exists(os.path.join(d, "n.json"))

    out = one_json(ok(evctl(srv, "--json", "relay", "delete", "--domain", "a.test")))
    assert out == {"deleted": "a.test", "relays": 1}, out
    assert list(srv.admin_get("/relays").json()["relays"]) == ["b.test"]
    assert list(read_json(srv.config.relay_config)) == ["b.test"]
    r = evctl(srv, "relay", "delete", "--domain", "a.test")
    assert r.returncode == 1 and "relay-not-found" in r.stderr, r
    r = request(srv.port(), "a.test")
    assert r.status == 404 and r.header("X-Evervault-Error-Code") == "relay-not-found", r


def test_invalid_file_changes_nothing():
    need_build()
    relays = {"a.test": {"destinationDomain": "http://127.0.0.1:9"}}
    srv = evstest.start_server(relays=relays)
    before = open(srv.config.relay_config, "rb").read()
    d = evstest.tmpdir()
    f = os.path.join(d, "relay-config.json")
    write_json(f, {"b.test": {"destinationDomain": "http://127.0.0.1:9",
                              "fieldsToEncrypt": [{"route": "/x", "method": "post",
                                                   "fields": ["$.a"]}]}})
    r = evctl(srv, "relay", "push", "--yes", cwd=d)
    assert r.returncode == 1, r
    assert "fieldsToEncrypt[0].method" in r.stderr and "bad-request" in r.stderr, r.stderr
    assert open(srv.config.relay_config, "rb").read() == before
    assert srv.admin_get("/relays").json()["relays"] == relays

    # A file that is not JSON is refused before anything is sent.
    with open(f, "w") as fh:
        fh.write('{"b.test": {"destinationDomain": }')
    r = evctl(srv, "--json", "relay", "push", "--yes", cwd=d)
    assert r.returncode == 1 and r.stdout == "" and "relay-config.json:1:" in r.stderr, r
    r = evctl(srv, "relay", "diff", "--file", "missing.json", cwd=d)
    assert r.returncode == 1 and "missing.json" in r.stderr and "relay create" in r.stderr, r
    assert open(srv.config.relay_config, "rb").read() == before

    # The endpoint itself: invalid bodies are 400 with the validation message.
    resp = srv.admin_request("PUT", "/relays", b"[1]")
    assert resp.status == 400 and resp.header("X-Evervault-Error-Code") == "bad-request", resp
    # Larger than 1 MiB: refused from the head, before the body is read.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.config.admin_socket)
    s.sendall(b"PUT /relays HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
              % (1024 * 1024 + 1))
    resp, _ = evstest.recv_responses(s, 1, allow_close=True)
    s.close()
    assert resp and resp[0].status == 413, resp
    assert open(srv.config.relay_config, "rb").read() == before


def test_admin_endpoints_decline_and_validate():
    need_build()
    srv = evstest.start_server()
    for path, code in (("/activity?limit=0", 400), ("/activity?limit=1001", 400),
                       ("/activity?status=abc", 400), ("/activity?color=red", 400),
                       ("/relays/structures?relay=a/b", 400), ("/activity?limit=5", 200),
                       ("/activity?status=4xx&method=post&since=0&requestId=x", 200)):
        r = srv.admin_get(path)
        assert r.status == code, (path, r, r.body)
    assert srv.admin_request("POST", "/relays", {}).status == 405
    # Paths that are not the relay endpoints reach the host's 404 (nobody took them).
    r = srv.admin_get("/relaysx")
    assert r.status == 404, r
    # The relay endpoints exist only on the admin socket.
    r = request(srv.port(), "localhost", "GET", "/relays")
    assert r.status == 404 and b"destinationDomain" not in r.body, r


# ---- structures and activity (recorded by the request path) --------------------------------

def test_structures_and_activity():
    need_build()
    up = evstest.Upstream()
    srv = evstest.start_server(relays={"act.test": {
        "destinationDomain": "http://127.0.0.1:%d" % up.port}})
    for i in range(3):
        assert request(srv.port(), "act.test", "POST", "/orders/%d" % i,
                       '{"card":{"number":"4242"},"name":"n"}').status == 200
    up.set_response(status=404)
    assert request(srv.port(), "act.test", "GET", "/missing?q=secret").status == 404

    def transactions(*args):
        return one_json(ok(evctl(srv, "--json", "activity", *args)))["transactions"]

    txs = evstest.wait_for(lambda: (lambda t: t if len(t) >= 4 else None)(transactions()),
                           what="4 recorded transactions")
    assert txs[0]["method"] == "GET" and txs[0]["path"] == "/missing", txs[0]
    assert txs[0]["status"] == 404 and txs[0]["relay"] == "act.test", txs[0]
    assert all("secret" not in json.dumps(t) and "4242" not in json.dumps(t) for t in txs), txs
    assert [t["status"] for t in transactions("--status", "4xx")] == [404]
    assert len(transactions("--method", "post")) == 3
    assert len(transactions("--limit", "2")) == 2
    assert transactions("--relay", "other.test") == []
    assert len(transactions("--since", "1h")) == 4
    rid = txs[1]["requestId"]
    assert [t["requestId"] for t in transactions("--request-id", rid)] == [rid]
    r = ok(evctl(srv, "activity"))
    assert r.stdout.splitlines()[0].split()[:3] == ["TIME", "RELAY", "METHOD"], r.stdout
    assert "/missing" in r.stdout and "404" in r.stdout, r.stdout

    def structures(*args):
        return one_json(ok(evctl(srv, "--json", "relay", "structures", *args)))["structures"]

    st = evstest.wait_for(lambda: structures("--relay", "act.test") or None,
                          what="a recorded structure")
    post = [s for s in st if s["method"] == "POST"]
    assert post and post[0]["relay"] == "act.test", st
    assert "$.card.number" in post[0]["fields"] and "$.name" in post[0]["fields"], post
    seen = [s["lastSeen"] for s in st]
    assert seen == sorted(seen, reverse=True), st
    assert structures("--relay", "other.test") == []
    r = ok(evctl(srv, "relay", "structures"))
    assert "act.test" in r.stdout and "LAST SEEN" in r.stdout, r.stdout


def test_activity_written_before_stop():
    """Records are written behind (in batches, off the loop); the records of requests answered
    just before SIGTERM are written by the stopping workers, none lost, none twice."""
    need_build()
    up = evstest.Upstream()
    srv = evstest.start_server(server={"workers": 2}, relays={"stop.test": {
        "destinationDomain": "http://127.0.0.1:%d" % up.port}})
    for i in range(60):
        assert request(srv.port(), "stop.test", "GET", "/n/%d" % i).status == 200
    srv.stop()
    assert srv.proc.returncode == 0, srv.proc.returncode
    srv.start()
    txs = one_json(ok(evctl(srv, "--json", "activity", "--limit", "1000")))["transactions"]
    paths = sorted(t["path"] for t in txs)
    assert paths == sorted("/n/%d" % i for i in range(60)), paths


# ---- relay dev ------------------------------------------------------------------------------

def read_json_object(proc, timeout=10.0):
    """Reads stdout of proc until it holds one whole JSON object."""
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.1)
        if r:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            try:
                return json.loads(buf)
            except ValueError:
                continue
        elif proc.poll() is not None:
            break
    raise AssertionError("no JSON object from relay dev: %r" % buf)


def test_relay_dev_forwards_and_follows_edits():
    need_build()
    up = evstest.Upstream(body=b"dev-destination")
    d = evstest.tmpdir()
    f = os.path.join(d, "relay-config.json")
    # The destinations in the file are replaced by --host/--port.
    write_json(f, {"dev.test": {"destinationDomain": "https://unused.example.com",
                                "fieldsToEncrypt": [{"route": "/other", "method": "POST",
                                                     "fields": ["$.ssn"]}]}})
    port = evstest.free_port()
    log = open(os.path.join(d, "dev.log"), "wb")
    proc = subprocess.Popen([evstest.build_path("evctl"), "--json", "relay", "dev", "--port",
                             str(up.port), "--file", f, "--listen", "127.0.0.1:%d" % port],
                            cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)

    def stop():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    evstest.defer(stop)
    try:
        info = read_json_object(proc)
        assert info["url"] == "http://127.0.0.1:%d" % port, info
        assert info["destination"] == "http://127.0.0.1:%d" % up.port, info
        assert info["relays"] == [{"domain": "dev.test", "hostHeader": "dev.test"}], info

        def through(host, path, body):
            try:
                return request(port, host, "POST", path, body)
            except (OSError, AssertionError, ValueError):
                return None

        r = evstest.wait_for(lambda: through("dev.test", "/plain", '{"ssn":"123"}'),
                             what="relay dev answering")
        assert r.status == 200 and r.body == b"dev-destination", (r, r.body)
        assert up.wait_requests(1)[-1].body == b'{"ssn":"123"}'
        assert request(port, "dev2.test").status == 404

        # Edit the file: /plain now encrypts $.ssn, and a second relay appears.
        write_json(f, {"dev.test": {"destinationDomain": "https://unused.example.com",
                                    "fieldsToEncrypt": [{"route": "/plain", "method": "POST",
                                                         "fields": ["$.ssn"]}]},
                       "dev2.test": {"destinationDomain": "https://unused.example.com"}})
        r = evstest.wait_for(lambda: (lambda x: x if x and x.status == 200 else None)(
            through("dev2.test", "/", "{}")), timeout=10, what="the edited file applied")
        assert r.body == b"dev-destination"
        # The changed route's field is no longer forwarded in the clear (encrypted, or refused
        # when no crypto provider is loaded: never plaintext).
        n = len(up.requests)
        r = request(port, "dev.test", "POST", "/plain", '{"ssn":"123"}')
        assert all(b'"123"' not in q.body for q in up.requests[n:]), (r, up.requests[n:])
    finally:
        stop()
    assert proc.returncode == 0, proc.returncode
    # The temporary directory with its configuration and socket is gone.
    assert not os.path.exists(os.path.dirname(info["adminSocket"])), info


def test_relay_dev_usage():
    need_build()
    d = evstest.tmpdir()
    r = evctl(None, "relay", "dev", cwd=d)
    assert r.returncode == 2 and "--port" in r.stderr, r
    r = evctl(None, "relay", "dev", "--port", "70000", cwd=d)
    assert r.returncode == 2, r
    r = evctl(None, "relay", "dev", "--port", "8000", cwd=d)
    assert r.returncode == 1 and "relay-config.json" in r.stderr, r


evstest.main(globals())
