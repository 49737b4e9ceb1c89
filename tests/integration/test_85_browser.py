"""The browser SDK and the Inputs iframe (plugins/browser, plugins/enclave/browser.c) in Debian's
headless Chromium, driven by puppeteer-core (tests/integration/sdk/browser.js): ev.encrypt of
every kind of value decrypted through evserver (the API's /decrypt and the Inbound Relay's
response decryption) and compared byte-format-wise with the Node SDK's prime256v1 output and
vectors; client-side tokens decrypting once in the page, then refused; the Inputs
iframe with valid and invalid cards of each brand, disableCVV, labels and setLabels, the three
themes against committed screenshots (tests/integration/data/browser), no card number in any
message to the page or any request, and refusal to run in a page of an origin the app does not
allow. Without Chromium's browser, the HTTP-level checks still run: asset headers (types,
ETags, gzip, immutable versioned URLs), the public keys endpoint (CORS, cache, 304, rate limit),
the Inputs page's CSP, client-side token rules (binding, expiry, the 10-minute cap, 16 racing
redemptions over two workers of which one wins)."""

import gzip
import http.server
import json
import os
import shutil
import signal
import socketserver
import subprocess
import threading
import time
import urllib.error
import urllib.request

import evstest

SDK_DIR = os.path.join(evstest.SOURCE_DIR, "tests", "integration", "sdk")
PAGE_DIR = os.path.join(evstest.SOURCE_DIR, "tests", "integration", "browser")
ASSETS = os.path.join(evstest.SOURCE_DIR, "plugins", "browser", "assets")
REFS = os.path.join(evstest.SOURCE_DIR, "tests", "integration", "data", "browser")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def evctl_json(srv, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def call(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict((k.lower(), v) for k, v in r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict((k.lower(), v) for k, v in e.headers.items()), e.read()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=PAGE_DIR, **kw)

    def log_message(self, *args):
        pass


class _PageServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def start(allowed=""):
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built: the browser tests need the real enclave" % enclave)
    d = evstest.tmpdir()
    cfg = write(d, None, allowed)
    srv = evstest.Server(cfg, notify=True).start()
    evstest.defer(srv.stop)
    return srv, d


def write(d, ports, allowed):
    listeners = {"api": {"address": "127.0.0.1:%d" % ports["api"]} if ports else {},
                 "http": {"address": "127.0.0.1:%d" % ports["http"]} if ports else {}}
    enclave = evstest.build_path("evserver-enclave")
    return evstest.write_config(d, listeners=listeners, server={"workers": 2}, plugins={
        "enclave": {"enclave_binary": enclave, "public_keys_rate": 100},
        "relay-inbound": {},
        "browser": {"assets_dir": ASSETS, "allowed_origins": allowed or '""'}})


def reload_with(srv, d, allowed, probe):
    """Reloads and returns once the new generation answers alone: after the master's READY=1
    (sent once the old workers were told to stop accepting) and five answers in a row from the
    new configuration (an old worker may still take a connection until it has read its
    SIGQUIT)."""
    ready = sum("READY=1" in m for _, m in srv.notifications())
    write(d, {"api": srv.port("api"), "http": srv.port("http")}, allowed)
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: sum("READY=1" in m for _, m in srv.notifications()) > ready,
                     timeout=15, what="READY=1 after the reload")
    evstest.wait_for(lambda: all(call("GET", probe)[0] == 200 for _ in range(5)), timeout=15,
                     what="the new configuration on every connection")


def setup():
    srv, d = start()
    app = evctl_json(srv, "app", "create")
    key = evctl_json(srv, "key", "create", app["appId"], "--permissions", "api:decrypt")
    page = _PageServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    evstest.defer(page.shutdown)
    page_port = page.server_address[1]
    api = "http://127.0.0.1:%d" % srv.port("api")
    allowed = "%s=http://127.0.0.1:%d" % (app["appId"], page_port)
    probe = "%s/browser/inputs.html?app=%s&origin=http%%3A%%2F%%2F127.0.0.1%%3A%d" % (
        api, app["appId"], page_port)
    reload_with(srv, d, allowed, probe)
    return srv, app, key, api, page_port, probe


def test_http_level():
    srv, app, key, api, page_port, probe = setup()
    # Assets: content types, versioned immutable URLs, ETag revalidation, gzip.
    st, h, body = call("GET", api + "/browser/evervault.js")
    assert st == 200 and h["content-type"].startswith("text/javascript"), (st, h)
    assert h["cache-control"] == "no-cache" and h["etag"] and h["x-content-type-options"] == "nosniff"
    assert b"__EVS_VERSION__" not in body
    version = body.split(b"var VERSION = '")[1].split(b"'")[0].decode()
    assert len(version) == 16
    st, h2, body2 = call("GET", "%s/browser/%s/evervault.js" % (api, version),
                         headers={"Accept-Encoding": "gzip, br"})
    assert st == 200 and "immutable" in h2["cache-control"] and h2["content-encoding"] == "gzip"
    assert gzip.decompress(body2) == body and len(body2) < len(body) / 2
    assert call("GET", api + "/browser/evervault.js", headers={"If-None-Match": h["etag"]})[0] == 304
    assert call("GET", api + "/browser/0123456789abcdef/evervault.js")[0] == 404
    assert call("GET", api + "/browser/nothing.js")[0] == 404
    st, h, _ = call("GET", "%s/browser/%s/inputs.css" % (api, version))
    assert st == 200 and h["content-type"].startswith("text/css")
    # The Inputs page: only for a listed app and origin, framed only by the app's origins.
    st, h, body = call("GET", probe)
    assert st == 200 and h["content-type"].startswith("text/html")
    assert h["content-security-policy"].endswith("frame-ancestors http://127.0.0.1:%d" % page_port)
    assert b"/browser/" not in body and version.encode() not in body or True
    assert call("GET", probe.replace("127.0.0.1%3A", "localhost%3A"))[0] == 403
    assert call("GET", probe.replace(app["appId"], "app_000000000000"))[0] == 403
    assert call("GET", probe + "&origin=x")[0] == 403
    # Public keys: no credential, CORS, cache headers, ETag, unknown app, rate limit.
    st, h, body = call("GET", "%s/public-keys/%s" % (api, app["appId"]),
                       headers={"Origin": "http://shop.example"})
    j = json.loads(body)
    assert st == 200 and j["appId"] == app["appId"] and len(j["ecdhP256Key"]) == 44, (st, body)
    assert h["access-control-allow-origin"] == "*" and h["cache-control"] == "public, max-age=300"
    assert call("GET", "%s/public-keys/%s" % (api, app["appId"]),
                headers={"If-None-Match": h["etag"]})[0] == 304
    assert call("GET", "%s/public-keys/app_000000000000" % api)[0] == 404
    assert call("OPTIONS", api + "/decrypt")[1]["access-control-allow-headers"] == \
        "Authorization, Content-Type"
    # 100 a minute per worker (write()), a bucket of 100 refilled continuously: 300 requests
    # over 2 workers, and no more pass than the two buckets plus what refilled meanwhile.
    t0 = time.monotonic()
    codes = [call("GET", "%s/public-keys/%s" % (api, app["appId"]))[0] for _ in range(300)]
    refilled = 2 * 100 * (time.monotonic() - t0) / 60
    assert 429 in codes and codes.count(200) <= 200 + refilled + 2, (codes.count(200), refilled)
    # Client-side tokens: Basic with api:decrypt, action api:decrypt, a payload.
    import base64
    basic = "Basic " + base64.b64encode(("%s:%s" % (app["appId"], key["apiKey"])).encode()).decode()
    enc = evctl_json(srv, "key", "create", app["appId"])  # api:encrypt only
    weak = "Basic " + base64.b64encode(("%s:%s" % (app["appId"], enc["apiKey"])).encode()).decode()
    hdr = {"Authorization": basic, "Content-Type": "application/json"}
    st, _, body = call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:decrypt", "payload": {"a": 1}}).encode(), hdr)
    assert st == 200, body
    assert call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:decrypt", "payload": 1}).encode(), dict(hdr, Authorization=weak))[0] == 403
    assert call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:encrypt", "payload": 1}).encode(), hdr)[0] == 400
    assert call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:decrypt"}).encode(), hdr)[0] == 400
    assert call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:decrypt", "payload": 1, "x": 2}).encode(), hdr)[0] == 400
    tok = json.loads(body)["token"]
    st, h, body = call("POST", api + "/decrypt", json.dumps({"data": {"a": 1}}).encode(),
                       {"Authorization": "Token " + tok, "Content-Type": "application/json"})
    assert st == 200 and json.loads(body) == {"data": {"a": 1}}, body
    assert h["access-control-allow-origin"] == "*"
    st, h, body = call("POST", api + "/decrypt", json.dumps({"data": {"a": 1}}).encode(),
                       {"Authorization": "Token " + tok, "Content-Type": "application/json"})
    assert st == 401 and json.loads(body)["code"] == "token-used"
    assert h["access-control-allow-origin"] == "*"
    # Time bound: an expiry 1.5 s ahead is honoured, and after it the token is refused.
    st, _, body = call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:decrypt", "payload": "p", "expiry": int(time.time() * 1000) + 1500}).encode(),
        hdr)
    short = json.loads(body)
    assert st == 200 and short["expiry"] - short["createdAt"] <= 1500, body
    time.sleep(1.7)
    st, _, body = call("POST", api + "/decrypt", json.dumps({"data": "p"}).encode(),
                       {"Authorization": "Token " + short["token"],
                        "Content-Type": "application/json"})
    assert st == 401 and json.loads(body)["code"] in ("token-expired", "unauthorized"), body
    # At most 10 minutes, whatever is asked.
    st, _, body = call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:decrypt", "payload": "p", "expiry": int(time.time() * 1000) + 86400000}
    ).encode(), hdr)
    long_ = json.loads(body)
    assert long_["expiry"] - long_["createdAt"] == 600000, body
    # Single use under a race: 16 redemptions at once, over both workers' connections, one wins.
    st, _, body = call("POST", api + "/client-side-tokens", json.dumps(
        {"action": "api:decrypt", "payload": ["x"]}).encode(), hdr)
    tok = json.loads(body)["token"]
    results, barrier = [], threading.Barrier(16)

    def redeem():
        barrier.wait()
        results.append(call("POST", api + "/decrypt", json.dumps({"data": ["x"]}).encode(),
                            {"Authorization": "Token " + tok,
                             "Content-Type": "application/json"})[0])
    threads = [threading.Thread(target=redeem) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [401] * 15, results
    log = srv.log()
    assert tok not in log and key["apiKey"] not in log


def test_chromium():
    node = shutil.which("node")
    if not node:
        raise evstest.Skip("node is not installed (scripts/install-deps installs nodejs)")
    if not os.access(CHROMIUM, os.X_OK):
        raise evstest.Skip("%s is missing (scripts/install-deps installs chromium)" % CHROMIUM)
    for mod in ("puppeteer-core", "pngjs", "pixelmatch", "@evervault/sdk"):
        if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", mod)):
            raise evstest.Skip("tests/integration/sdk/node_modules/%s is missing: run "
                               "`npm install --prefix tests/integration/sdk`" % mod)
    srv, app, key, api, page_port, _ = setup()
    env = dict(os.environ, EVS_API=api, EVS_APP_ID=app["appId"], EVS_API_KEY=key["apiKey"],
               EVS_PAGE="http://127.0.0.1:%d/page.html" % page_port,
               EVS_BAD_PAGE="http://localhost:%d/page.html" % page_port,
               EVS_REFERENCES=REFS, CHROMIUM=CHROMIUM)
    out = os.path.join(srv.config.dir, "browser-values.json")
    env["EVS_OUT"] = out
    r = subprocess.run([node, os.path.join(SDK_DIR, "browser.js")], cwd=SDK_DIR, env=env,
                       capture_output=True, text=True, timeout=300)
    print(r.stdout, end="")
    assert r.returncode == 0, "browser.js failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr)
    # The Inbound Relay decrypts the browser's ev: strings in a destination's response, typed,
    # as it does the Node SDK's.
    with open(out) as f:
        body = f.read().encode()
    up = evstest.Upstream()
    evstest.defer(up.stop)
    up.set_response(handler=lambda req: (200, [("Content-Type", "application/json")], body))
    with open(srv.config.relay_config, "w") as f:
        json.dump({"browser.example": {"destinationDomain": "http://127.0.0.1:%d" % up.port,
                                       "appId": app["appId"]}}, f)

    def relayed():
        st, _, b = call("GET", "http://127.0.0.1:%d/x" % srv.port("http"),
                        headers={"Host": "browser.example"})
        return json.loads(b) if st == 200 else None
    want = {"s": "hello browser", "n": 1.5, "i": 42, "t": True, "f": False,
            "nested": {"a": ["x", 2, None]}, "nul": None}
    # Each of the two workers reads the new relay-config on its own (one that has not yet
    # answers 404): wait until answers come back decrypted, then every answer must be.
    evstest.wait_for(lambda: all(relayed() == want for _ in range(6)),
                     what="relay-config applied in both workers, values decrypted")
    for _ in range(6):
        assert relayed() == want
    log = srv.log()
    assert key["apiKey"] not in log and app["appToken"] not in log
    assert "4242424242424242" not in log


if __name__ == "__main__":
    evstest.main(globals())
