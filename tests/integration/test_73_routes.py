"""Routes registered with the host (ABI 1.7 add_route) and the roles each listener serves
(`serves =` in [listener], core/route.c, core/server.c): a relay's Host sent to the API listener
is not relayed, an API path on a relay listener is not the API's, each gets its listener's
documented 404 (`resource-not-found` for the API, `relay-not-found` for relays); the most
specific route wins; `evctl routes` prints the table; a plugin built for ABI 1.6 still routes
with its ROUTE hook. Plugins: relay-inbound and enclave from plugins.d, and the test plugins
tests/plugins/routes.c (test-routes) and legacy_hook.c (test-legacy).
"""

import json
import os
import subprocess

import evstest
from evstest import Upstream, parse_response, send_raw

def plugins_dir():
    d = evstest.tmpdir("evs-routes-plugins-")
    for name in ("relay-inbound", "enclave"):
        os.symlink(evstest.build_path("plugins.d", name + ".so"), os.path.join(d, name + ".so"))
    for name in ("test-routes", "test-legacy"):
        os.symlink(evstest.build_path("test-plugins.d", name + ".so"),
                   os.path.join(d, name + ".so"))
    return d


def server():
    """A server (stopped after the test) and its destination: listeners http (relay, by
    default), api (api, by default), both (api relay) and out (a plugin's own role); relays
    good.example and decline.test to the destination."""
    binary = evstest.build_path("evserver-enclave")
    if not os.access(binary, os.X_OK):
        raise evstest.Skip("evserver-enclave is not built")
    up = Upstream(body=b"from the destination")
    relay = {"destinationDomain": "http://127.0.0.1:%d" % up.port}
    cfg = evstest.write_config(
        listeners={"http": {}, "api": {}, "both": {"serves": "api relay"},
                   "out": {"serves": "outbound"}},
        server={"plugins_dir": plugins_dir()},
        plugins={"relay-inbound": {}, "enclave": {"enclave_binary": binary}},
        relays={"good.example": relay, "decline.test": relay})
    return evstest.Server(cfg).start(), up


def request(srv, listener, host, path="/", method="GET", body=b""):
    head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, host)
    if body or method == "POST":
        head += "Content-Length: %d\r\n" % len(body)
    raw = send_raw(srv.port(listener), head.encode() + b"\r\n" + body, timeout=10)
    assert raw, "no answer from %s for %s %s" % (listener, host, path)
    return parse_response(raw)


def assert_404(r, code):
    assert r.status == 404, (r, r.body)
    assert r.header("X-Evervault-Error-Code") == code, r.headers
    doc = r.json()
    assert doc["status"] == 404 and doc["code"] == code, doc
    assert set(doc) >= {"status", "code", "title", "detail", "message"}, doc


def test_relay_host_on_api_listener_is_not_relayed():
    srv, up = server()
    before = len(up.requests)
    r = request(srv, "http", "good.example", "/orders")
    assert (r.status, r.body) == (200, b"from the destination"), (r, r.body)
    up.wait_requests(before + 1)
    for path in ("/orders", "/", "/encrypt/x"):
        assert_404(request(srv, "api", "good.example", path), "resource-not-found")
    r = request(srv, "api", "good.example", "/orders", "POST", b'{"ssn": "123"}')
    assert_404(r, "resource-not-found")
    assert len(up.requests) == before + 1, [q.path for q in up.requests]


def test_api_path_on_relay_listener():
    srv, up = server()
    before = len(up.requests)
    for path in ("/cages/key", "/keys", "/encrypt"):
        method = "POST" if path == "/encrypt" else "GET"
        assert_404(request(srv, "http", "127.0.0.1", path, method, b"{}" if method == "POST"
                           else b""), "relay-not-found")
    # On a relay's own name the path is the destination's, relayed like any other.
    r = request(srv, "http", "good.example", "/cages/key")
    assert (r.status, r.body) == (200, b"from the destination"), (r, r.body)
    assert up.wait_requests(before + 1)[-1].path == "/cages/key"


def test_unknown_api_path_is_resource_not_found():
    srv, _ = server()
    for method, path in (("GET", "/nope"), ("GET", "/cages"), ("POST", "/cages/key"),
                         ("GET", "/encrypt"), ("DELETE", "/keys")):
        assert_404(request(srv, "api", "127.0.0.1", path, method), "resource-not-found")
    # The API's own endpoints still answer, also written with a doubled slash (an EV_API_URL
    # with a trailing slash): here 401, for want of an API key.
    for path in ("/cages/key", "//cages/key"):
        r = request(srv, "api", "127.0.0.1", path)
        assert r.status == 401 and r.header("X-Evervault-Error-Code") == "unauthorized", (r, r.body)


def test_most_specific_route_wins():
    srv, up = server()
    cases = [
        ("http", "GET", "exact.test", "/", "exact"),
        ("http", "GET", "EXACT.test", "/x", "exact"),
        ("http", "GET", "exact.test", "/deep", "exact_deep"),
        ("http", "GET", "exact.test", "/deep/er?q=1", "exact_deep"),
        ("http", "GET", "exact.test", "/deeper", "exact"),  # prefixes end at a '/'
        ("http", "POST", "exact.test", "/deep/x", "exact_deep_post"),
        ("http", "GET", "exact.test", "/plugin-path", "exact"),  # an exact host first
        ("http", "GET", "a.wild.test", "/", "wild"),
        ("http", "GET", "a.b.wild.test", "/plugin-path", "wild"),
        ("http", "GET", "x.deep.wild.test", "/", "deep_wild"),  # the longer suffix
        ("http", "GET", "other.test", "/plugin-path/y", "any_plugin_path"),
        ("api", "GET", "exact.test", "/extra", "api_extra"),
        ("both", "GET", "anything.test", "/extra", "api_extra"),
        ("both", "GET", "exact.test", "/extra", "exact"),
        ("out", "GET", "exact.test", "/", "outbound"),
    ]
    for listener, method, host, path, label in cases:
        r = request(srv, listener, host, path, method, b"x" if method == "POST" else b"")
        assert (r.status, r.body) == (200, b"test-routes:" + label.encode()), \
            (listener, method, host, path, r, r.body)
    # Roles keep apart what they do not serve.
    assert_404(request(srv, "http", "other.test", "/extra"), "relay-not-found")
    assert_404(request(srv, "api", "exact.test", "/"), "resource-not-found")
    assert_404(request(srv, "api", "a.wild.test", "/plugin-path"), "resource-not-found")
    assert_404(request(srv, "http", "wild.test", "/"), "relay-not-found")  # not *.wild.test
    # A listener serving "api relay" answers the first role's 404; it relays too.
    assert_404(request(srv, "both", "nothing.test", "/"), "resource-not-found")
    before = len(up.requests)
    r = request(srv, "both", "good.example", "/via-both")
    assert (r.status, r.body) == (200, b"from the destination"), (r, r.body)
    # A route that declines passes the request on: here to the relay's catch route.
    r = request(srv, "http", "decline.test", "/declined")
    assert (r.status, r.body) == (200, b"from the destination"), (r, r.body)
    assert [q.path for q in up.wait_requests(before + 2)[before:]] == ["/via-both", "/declined"]
    # Admin routes are served on the admin socket only.
    a = srv.admin_get("/test-routes")
    assert (a.status, a.body) == (200, b"test-routes:admin"), (a, a.body)
    assert_404(request(srv, "http", "127.0.0.1", "/test-routes"), "relay-not-found")
    a = srv.admin_get("/no-such-endpoint")
    assert a.status == 404 and a.header("X-Evervault-Error-Code") == "resource-not-found", a


def metric(srv, name):
    for line in srv.admin_get("/metrics").text.splitlines():
        k, _, v = line.rpartition(" ")
        if k == name:
            return int(float(v))
    return 0


def test_add_route_is_init_only():
    srv, _ = server()
    # test-routes checked -EINVAL and -EEXIST in init (it would not have loaded otherwise);
    # its timer tries once more after init.
    evstest.wait_for(lambda: metric(srv, 'evserver_plugin_events_total{plugin="test-routes",'
                                         'name="late_add_route_refused"}') == 1,
                     what="add_route after init refused with -EPERM")


def test_legacy_route_hook_still_works():
    srv, _ = server()
    plugins = {p["name"]: p for p in srv.admin_get("/plugins").json()["plugins"]}
    assert plugins["test-legacy"]["status"] == "loaded" and plugins["test-legacy"]["abi"] == "1.6"
    # After the routes missed, on every listener, as before routes existed.
    for listener in ("http", "api", "both"):
        r = request(srv, listener, "legacy.test", "/anything")
        assert (r.status, r.body) == (200, b"test-legacy"), (listener, r, r.body)
    # A route still comes first: the catch route of the role "outbound" here.
    r = request(srv, "api", "legacy.test", "/extra")
    assert r.body == b"test-routes:api_extra", r.body
    r = request(srv, "out", "legacy.test", "/")
    assert r.body == b"test-routes:outbound", r.body


def evctl(srv, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, *args],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout


def test_evctl_routes():
    srv, _ = server()
    doc = json.loads(evctl(srv, "--json", "routes"))
    assert doc == srv.admin_get("/routes").json(), doc
    rows = [(r["role"], r["host"], r["method"], r["prefix"], r["plugin"]) for r in doc["routes"]]
    # In the order they are tried: exact hosts, then wildcards (longer first), then any host;
    # within each, longer prefixes first, a named method before any.
    relay = [r for r in rows if r[0] == "relay"]
    assert relay == [
        ("relay", "exact.test", "POST", "/deep", "test-routes"),
        ("relay", "exact.test", "*", "/deep", "test-routes"),
        ("relay", "exact.test", "*", "/", "test-routes"),
        ("relay", "decline.test", "*", "/", "test-routes"),  # as specific: registration order
        ("relay", "*.deep.wild.test", "*", "/", "test-routes"),
        ("relay", "*.wild.test", "*", "/", "test-routes"),
        ("relay", "*", "*", "/plugin-path", "test-routes"),
        ("relay", "*", "*", "/", "relay-inbound"),
    ], relay
    for row in [("api", "*", "GET", "/cages/key", "enclave"), ("api", "*", "POST", "/encrypt", "enclave"),
                ("api", "*", "*", "/", "enclave"), ("api", "*", "GET", "/extra", "test-routes"),
                ("admin", "*", "*", "/apps", "enclave"), ("admin", "*", "*", "/relays", "relay-inbound"),
                ("admin", "*", "*", "/activity", "relay-inbound"),
                ("outbound", "*", "*", "/", "test-routes")]:
        assert row in rows, (row, rows)
    listeners = {l["name"]: l["roles"] for l in doc["listeners"]}
    assert listeners == {"http": ["relay"], "api": ["api"], "both": ["api", "relay"],
                         "out": ["outbound"], "admin": ["admin"]}, listeners
    assert doc["route_hooks"] == ["test-legacy"], doc["route_hooks"]
    text = evctl(srv, "routes")
    lines = text.splitlines()
    assert lines[0].split() == ["ROLE", "HOST", "METHOD", "PREFIX", "PLUGIN"], text
    cells = [l.split() for l in lines]
    assert ["relay", "exact.test", "POST", "/deep", "test-routes"] in cells, text
    assert ["relay", "*", "*", "/", "relay-inbound"] in cells, text
    assert ["LISTENER", "ADDRESS", "SERVES"] in cells, text
    assert ["both", "127.0.0.1:%d" % srv.port("both"), "api", "relay"] in cells, text
    assert "ROUTE hooks, after the routes: test-legacy" in text, text


def test_serves_is_checked():
    for serves, want in (("admin", "role 'admin' is served by the admin socket only"),
                         ("Relay", "'Relay' is not a role"),
                         ("api api", "role 'api' is named twice")):
        cfg = evstest.write_config(listeners={"http": {"serves": serves}}, plugins={})
        r = evstest.run_evserver("-t", "-c", cfg.path)
        assert r.returncode != 0, (serves, r.stdout, r.stderr)
        assert "key 'serves'" in r.stderr and want in r.stderr, (serves, r.stderr)


evstest.main(globals())
