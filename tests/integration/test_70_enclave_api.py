"""The enclave plugin end to end: evctl app/key commands over the admin socket, the SDK-facing
API on the `api` listener (GET /cages/key, /keys, POST /encrypt, /decrypt), permissions and
revocation, and supervision of the enclave process (killed under load: requests fail closed,
never plaintext, never a hang; it comes back within seconds and re-unlocks apps whose token is in
the credentials directory).

The tests run against the real $EVS_BUILD_DIR/evserver-enclave when it is built. Until then they
run against STUB below: a stand-in that speaks the same protocol (enclave/proto/
evs_enclave_proto.h) with fake, NOT cryptographic, "ciphertext", so the plugin's own work
(framing, batching, supervision, auth, JSON walking, typing) is still checked. Each run prints
which one it used; EVS_ENCLAVE_STUB=1 forces the stub. Crypto interoperability with the Evervault SDK is test_71_sdk.py's job, and
that test skips without the real enclave.
"""

import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import evstest

STUB = r'''#!/usr/bin/python3
# A protocol stand-in for evserver-enclave (tests only): fake ciphertext, no secrets.
import base64, hashlib, os, secrets, socket, struct, sys, zlib
args = sys.argv[1:]
fd = int(args[args.index("--fd") + 1])
creds = args[args.index("--credentials") + 1] if "--credentials" in args else None
sock = socket.socket(fileno=fd)
apps = {}
def items(payload, n):
    out, off = [], 0
    for _ in range(n):
        (l,) = struct.unpack_from("<I", payload, off); off += 4
        out.append(payload[off:off + l]); off += l
    return out
def send(op, rid, status, its):
    body = struct.pack("<IHHIiI", 0x31455645, 1, op, rid, status, len(its))
    body += b"".join(struct.pack("<I", len(i)) + i for i in its)
    sock.sendall(struct.pack("<I", len(body)) + body)
def recvn(n):
    b = bytearray()
    while len(b) < n:
        c = sock.recv(min(n - len(b), 1 << 20))
        if not c: sys.exit(0)
        b += c
    return bytes(b)
XOR = bytes(i ^ 0x5a for i in range(256))
while True:
    (l,) = struct.unpack("<I", recvn(4))
    msg = recvn(l)
    magic, ver, op, rid, st, n = struct.unpack_from("<IHHIiI", msg)
    it = items(msg[20:], n)
    if op == 1:
        send(op, rid, 0, [struct.pack("<H", 1), b"evserver-enclave stub"])
    elif op == 2:
        app = it[0]; token = secrets.token_hex(16).encode()
        k1 = b"\x02" + secrets.token_bytes(32); k2 = b"\x03" + secrets.token_bytes(32)
        wrapped = k1 + k2 + hashlib.sha256(token).digest()
        apps[app] = (k1, k2)
        send(op, rid, 0, [token, k1, k2, b"share1", b"share2", wrapped])
    elif op == 3:
        app, token, s1, s2, wrapped = it
        if not token and creds:
            try:
                token = open(os.path.join(creds, "evserver-app-" + app.decode()), "rb").read().strip()
            except OSError:
                token = b""
        if hashlib.sha256(token).digest() != wrapped[66:] or s1 != b"share1" or s2 != b"share2":
            send(op, rid, -4, []); continue
        apps[app] = (wrapped[:33], wrapped[33:66])
        send(op, rid, 0, list(apps[app]))
    elif op == 6:
        app, curve, role = it[:3]
        if app not in apps: send(op, rid, -3, []); continue
        if curve not in (b"secp256k1", b"prime256v1"): send(op, rid, -6, []); continue
        out = []
        for f in it[3:]:
            t = {b"s": b"", b"n": b"number", b"b": b"boolean"}[f[:1]]
            blob = base64.b64encode(app + b"|" + f[2:]).decode()
            mac = hashlib.sha256(blob.encode()).hexdigest()[:16]
            out.append(struct.pack("<i", 0) + ("ev:STUB%s:%s:%s:%s:$" % (t.decode(), curve.decode(), blob, mac)).encode())
        send(op, rid, 0, out)
    elif op == 7:
        app = it[0]
        if app not in apps: send(op, rid, -3, []); continue
        out = []
        for f in it[1:]:
            try:
                parts = f.decode().split(":")
                tag, blob = parts[1], parts[3]
                if hashlib.sha256(blob.encode()).hexdigest()[:16] != parts[4]: raise ValueError
                raw = base64.b64decode(blob)
                owner, _, plain = raw.partition(b"|")
                if owner != app: raise ValueError
                ty = 1 if tag.endswith("number") else 2 if tag.endswith("boolean") else 0
                out.append(struct.pack("<iB", 0, ty) + plain)
            except Exception:
                out.append(struct.pack("<i", -5))
        send(op, rid, 0, out)
    elif op == 8:
        # Files: a 55-byte header naming the app, the XORed bytes, a 16-byte MAC, a CRC-32:
        # the real format's 75 bytes of overhead and its limits (25 MiB of plaintext).
        app, curve, data = it
        if app not in apps: send(op, rid, -3, []); continue
        if len(data) > 25 << 20: send(op, rid, -6, []); continue
        body = (b"%EVENC" + app + b"|").ljust(55, b"\0") + data.translate(XOR)
        body += hashlib.sha256(body).digest()[:16]
        send(op, rid, 0, [body + struct.pack("<I", zlib.crc32(body))])
    elif op == 9:
        app, data = it
        if app not in apps: send(op, rid, -3, []); continue
        if len(data) < 75 or len(data) > (25 << 20) + 75 or not data.startswith(b"%EVENC"):
            send(op, rid, -6, []); continue
        body, mac = data[:-20], data[-20:-4]
        if (not data.startswith((b"%EVENC" + app + b"|").ljust(55, b"\0")) or
                hashlib.sha256(body).digest()[:16] != mac):
            send(op, rid, -5, []); continue
        send(op, rid, 0, [body[55:].translate(XOR)])
    else:
        send(op, rid, -2, [])
'''

REAL = os.path.join(evstest.BUILD_DIR or "", "evserver-enclave")


def enclave_binary(dir):
    if evstest.BUILD_DIR and os.access(REAL, os.X_OK) and not os.environ.get("EVS_ENCLAVE_STUB"):
        return REAL
    path = os.path.join(dir, "enclave-stub")
    with open(path, "w") as f:
        f.write(STUB)
    os.chmod(path, 0o755)
    return path


def start(creds=None):
    dir = evstest.tmpdir("evs-enc-")
    binary = enclave_binary(dir)
    print("enclave: %s" % ("real evserver-enclave" if binary == REAL else
                           "protocol stub (evserver-enclave not built)"), flush=True)
    plugin = {"enclave_binary": binary, "request_timeout": "3s"}
    if creds:
        plugin["credentials_dir"] = creds
    cfg = evstest.write_config(dir, listeners={"http": {}, "api": {}},
                               plugins={"enclave": plugin})
    return evstest.Server(cfg).start()


def evctl(srv, *args, stdin=None, check=True):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, *args],
                       input=stdin, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise AssertionError("evctl %s: %d\n%s%s" % (" ".join(args), r.returncode, r.stdout,
                                                      r.stderr))
    return r


def evctl_json(srv, *args):
    return json.loads(evctl(srv, "--json", *args).stdout)


def api(srv, method, path, body=None, headers=None, timeout=10):
    """(status, headers dict lower-case, body bytes)."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if isinstance(body, bytes):
            data = body
            hdrs.setdefault("Content-Type", "application/octet-stream")
        else:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(srv.url(path, "api"), data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def basic(app, key):
    return {"Authorization": "Basic " + base64.b64encode(("%s:%s" % (app, key)).encode()).decode()}


def enclave_pid(srv):
    """The enclave process: a child of the worker, itself a child of the master."""
    def children(pid):
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []
    for w in children(srv.pid):
        for c in children(w):
            return c
    return None


def setup(srv):
    app = evctl_json(srv, "app", "create")
    key = evctl_json(srv, "key", "create", app["appId"], "--permissions", "api:decrypt")
    return app, key


def assert_error(status, hdrs, body, want_status, want_code):
    assert status == want_status, (status, body)
    assert hdrs.get("x-evervault-error-code") == want_code, hdrs
    obj = json.loads(body)
    for k in ("status", "code", "title", "detail", "message"):
        assert k in obj, obj
    assert obj["code"] == want_code and obj["status"] == want_status, obj


def test_app_and_key_commands():
    srv = start()
    app = evctl_json(srv, "app", "create")
    assert app["appId"].startswith("app_") and len(app["appId"]) == 16, app
    assert app["appToken"], app
    for k in ("ecdhKey", "ecdhP256Key"):
        assert len(base64.b64decode(app[k])) == 33, app
    apps = evctl_json(srv, "app", "list")["apps"]
    assert [a["appId"] for a in apps] == [app["appId"]], apps
    assert "appToken" not in json.dumps(apps)
    key = evctl_json(srv, "key", "create", app["appId"], "--permissions", "api:decrypt")
    parts = key["apiKey"].split(":")
    assert parts[:3] == ["ev", "key", "1"] and len(parts) == 6, key
    assert len(base64.b64decode(parts[3])) == 32
    want = base64.b64encode(hashlib.sha512(app["appId"].encode()).digest()).decode()[:6]
    assert parts[4] == want, (parts[4], want)
    assert parts[5] == key["keyId"]
    keys = evctl_json(srv, "key", "list", app["appId"])["keys"]
    assert [k["keyId"] for k in keys] == [key["keyId"]] and not keys[0]["revoked"], keys
    assert key["apiKey"] not in json.dumps(keys) and "hash" not in keys[0]
    assert "api:encrypt" in keys[0]["permissions"] and "api:decrypt" in keys[0]["permissions"]
    r = evctl(srv, "key", "create", app["appId"], "--permissions", "no:such", check=False)
    assert r.returncode == 1 and "bad-request" in r.stderr, r
    # Unlock with the token (stdin) works; a wrong token is refused.
    evctl(srv, "app", "unlock", app["appId"], stdin=app["appToken"] + "\n")
    r = evctl(srv, "app", "unlock", app["appId"], "--token", "wrong", check=False)
    assert r.returncode == 1 and "unauthorized" in r.stderr, r
    # evctl encrypt / decrypt, typed.
    ev = evctl(srv, "encrypt", app["appId"], "hello").stdout.strip()
    assert ev.startswith("ev:"), ev
    assert evctl(srv, "decrypt", app["appId"], ev).stdout.strip() == "hello"
    enc = evctl_json(srv, "encrypt", app["appId"], "--curve", "prime256v1", '{"a": 1, "b": [true]}')
    assert enc["data"]["a"].startswith("ev:") and enc["data"]["b"][0].startswith("ev:"), enc
    dec = evctl_json(srv, "decrypt", app["appId"], json.dumps(enc["data"]))
    assert dec["data"] == {"a": 1, "b": [True]}, dec
    # Secrets never reach the log.
    log = srv.log()
    assert app["appToken"] not in log and key["apiKey"] not in log


def test_keys_endpoint_and_round_trip():
    srv = start()
    app, key = setup(srv)
    st, h, body = api(srv, "GET", "/cages/key", headers={"api-key": key["apiKey"]})
    assert st == 200, body
    keys = json.loads(body)
    assert keys["ecdhKey"] == app["ecdhKey"] and keys["ecdhP256Key"] == app["ecdhP256Key"]
    assert len(base64.b64decode(keys["ecdhKey"])) == 33
    assert base64.b64decode(keys["ecdhKey"])[0] in (2, 3)
    st, _, body = api(srv, "GET", "/keys", headers={"api-key": key["apiKey"],
                                                   "x-evervault-app-id": app["appId"]})
    assert st == 200 and json.loads(body) == keys, body
    st, h, body = api(srv, "GET", "/keys", headers={"api-key": key["apiKey"],
                                                   "x-evervault-app-id": "app_000000000000"})
    assert_error(st, h, body, 401, "unauthorized")

    value = {"name": "Claude", "n": 42, "f": 1.5, "ok": True, "no": False, "nil": None,
             "nested": {"list": ["a", 2, {"deep": "x"}]}}
    for curve in ("secp256k1", "prime256v1"):
        st, _, body = api(srv, "POST", "/encrypt?curve=" + curve, value,
                          headers={"api-key": key["apiKey"]})
        assert st == 200, body
        enc = json.loads(body)
        assert enc["nil"] is None
        for leaf in (enc["name"], enc["n"], enc["ok"], enc["nested"]["list"][2]["deep"]):
            assert isinstance(leaf, str) and leaf.startswith("ev:"), enc
        assert "Claude" not in body.decode()
        st, _, body = api(srv, "POST", "/decrypt", {"data": enc},
                          headers=basic(app["appId"], key["apiKey"]))
        assert st == 200, body
        assert json.loads(body)["data"] == value, body
    # A single string, and a file.
    st, _, body = api(srv, "POST", "/encrypt", "just text", headers={"api-key": key["apiKey"]})
    assert st == 200, body
    one = json.loads(body)
    assert isinstance(one, str) and one.startswith("ev:")
    st, _, body = api(srv, "POST", "/decrypt", {"data": one},
                      headers=basic(app["appId"], key["apiKey"]))
    assert json.loads(body) == {"data": "just text"}, body
    blob = bytes(range(256)) * 10
    st, _, enc = api(srv, "POST", "/encrypt", blob, headers={"api-key": key["apiKey"]})
    assert st == 200 and enc.startswith(b"%EVENC") and blob not in enc
    st, h, body = api(srv, "POST", "/decrypt", enc, headers=basic(app["appId"], key["apiKey"]))
    assert st == 200 and body == blob and h["content-type"] == "application/octet-stream"
    # Tampered ciphertext: 422 decryption-error, in the documented shape.
    bad = one[:-6] + ("A" if one[-6] != "A" else "B") + one[-5:]
    st, h, body = api(srv, "POST", "/decrypt", {"data": bad},
                      headers=basic(app["appId"], key["apiKey"]))
    assert_error(st, h, body, 422, "decryption-error")
    # The audit trail has the decryptions (who, app, op, field count, outcome), never values.
    r = srv.admin_get("/audit?limit=50")
    assert r.status == 200, r.body
    recs = r.json()["records"]
    decs = [x for x in recs if x["op"] == "decrypt" and x["who"] == key["keyId"]]
    assert any(x["outcome"] == "ok" and x["fields"] == 8 for x in decs), recs
    assert any(x["outcome"] == "error" for x in decs), recs
    assert any(x["op"] == "key.create" and x["app"] == app["appId"] for x in recs), recs
    assert b"Claude" not in r.body and b"just text" not in r.body


# The one app id rule (enclave/proto/evs_app_id.h) at the two entry points a client reaches:
# evctl and the plugin's admin API. tests/unit/test_app_id.c runs the same ids through the rule
# and the enclave process (APP_CREATE); keep the lists alike.
GOOD_IDS = ["app_0123456789ab", "app_a", "app_int1", "app_" + "z" * 27, "app_000000000000"]
BAD_IDS = ["", "app_", "app", "APP_abc", "App_abc", "app_ABC", "app_abC", "app-abc", "app_a-b",
           "app_a_b", "app_a.b", "app_a/b", "app_" + "z" * 28, "xapp_1", " app_1", "app_1 ",
           "app_\u00e9", "key_0123"]


def test_one_app_id_rule():
    srv = start()
    created = evctl_json(srv, "app", "create")["appId"]
    for app in GOOD_IDS + BAD_IDS + [created]:
        good = app in GOOD_IDS or app == created
        r = evctl(srv, "app", "lock", app, check=False)
        refused = r.returncode == 2 and "is not an app id" in r.stderr
        assert refused != good, (app, r.returncode, r.stdout, r.stderr)
        # The admin API, for the ids a path segment can carry as they are.
        if app and all(c.isascii() and (c.isalnum() or c in "_.-") for c in app):
            resp = srv.admin_request("POST", "/apps/%s/lock" % app)
            refused = resp.status == 400 and resp.header("X-Evervault-Error-Code") == "bad-request"
            assert refused != good, (app, resp.status, resp.body)


def test_wrong_and_revoked_keys_refused():
    srv = start()
    app, key = setup(srv)
    enc_only = evctl_json(srv, "key", "create", app["appId"], "--permissions", "")
    st, _, body = api(srv, "POST", "/encrypt", {"x": "secret"}, headers={"api-key": key["apiKey"]})
    enc = json.loads(body)
    ok = basic(app["appId"], key["apiKey"])
    assert api(srv, "POST", "/decrypt", {"data": enc}, headers=ok)[0] == 200
    # No credential, garbage, a wrong secret with a real key id, the wrong app.
    assert_error(*api(srv, "POST", "/decrypt", {"data": enc}), 401, "unauthorized")
    assert_error(*api(srv, "GET", "/cages/key", headers={"api-key": "nope"}), 401, "unauthorized")
    parts = key["apiKey"].split(":")
    parts[3] = base64.b64encode(b"\0" * 32).decode()
    forged = ":".join(parts)
    assert_error(*api(srv, "POST", "/decrypt", {"data": enc}, headers=basic(app["appId"], forged)),
                 401, "unauthorized")
    assert_error(*api(srv, "POST", "/decrypt", {"data": enc},
                      headers=basic("app_000000000000", key["apiKey"])), 401, "unauthorized")
    # A key without api:decrypt may encrypt but not decrypt.
    assert api(srv, "POST", "/encrypt", {"x": 1}, headers={"api-key": enc_only["apiKey"]})[0] == 200
    assert_error(*api(srv, "POST", "/decrypt", {"data": enc},
                      headers=basic(app["appId"], enc_only["apiKey"])), 403, "forbidden")
    # Revoked: refused at once.
    out = evctl(srv, "key", "revoke", app["appId"], key["keyId"]).stdout
    assert "revoked" in out, out
    assert_error(*api(srv, "POST", "/decrypt", {"data": enc}, headers=ok), 401, "unauthorized")
    assert_error(*api(srv, "GET", "/cages/key", headers={"api-key": key["apiKey"]}), 401,
                 "unauthorized")
    keys = evctl_json(srv, "key", "list", app["appId"])["keys"]
    assert [k["revoked"] for k in keys if k["keyId"] == key["keyId"]] == [True], keys


def test_enclave_killed_fails_closed_and_recovers():
    creds = evstest.tmpdir("evs-creds-")
    srv = start(creds)
    app, key = setup(srv)
    with open(os.path.join(creds, "evserver-app-" + app["appId"]), "w") as f:
        f.write(app["appToken"])
    hdr = basic(app["appId"], key["apiKey"])
    st, _, body = api(srv, "POST", "/encrypt", {"v": "plain-secret", "n": 7},
                      headers={"api-key": key["apiKey"]})
    enc = json.loads(body)
    assert api(srv, "POST", "/decrypt", {"data": enc}, headers=hdr)[0] == 200
    pid = enclave_pid(srv)
    assert pid, "no enclave process found under the worker"

    results = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                st, h, body = api(srv, "POST", "/decrypt", {"data": enc}, headers=hdr, timeout=8)
            except Exception as e:  # noqa: BLE001 - recorded and judged below
                st, h, body = -1, {}, repr(e).encode()
            results.append((time.monotonic(), time.monotonic() - t0, st, h, body))
            time.sleep(0.02)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    evstest.wait_for(lambda: len(results) >= 3, timeout=20, what="requests before the kill")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # Recovery: a new process, the app unlocked again from the credentials directory.
    evstest.wait_for(lambda: enclave_pid(srv) not in (None, pid), timeout=20,
                     what="a new enclave process")
    evstest.wait_for(lambda: any(r[0] > killed_at and r[2] == 200 for r in results), timeout=20,
                     what="decrypt to work again after the restart")
    done = len(results)
    evstest.wait_for(lambda: len(results) >= done + 3, timeout=20,
                     what="requests after the recovery")
    stop.set()
    th.join(10)
    failures = [r for r in results if r[2] != 200]
    for _, took, st, h, body in results:
        assert took < 6, "a request hung for %.1fs" % took
        if st == 200:
            assert json.loads(body)["data"] == {"v": "plain-secret", "n": 7}
        else:
            assert st in (503,), (st, body)
            assert b"plain-secret" not in body
            assert h.get("x-evervault-error-code") == "service-unavailable", h
    print("requests: %d, failed closed: %d" % (len(results), len(failures)), flush=True)
    # evctl-unlocked apps (no credential file) stay locked after a restart until unlocked again.
    app2 = evctl_json(srv, "app", "create")
    k2 = evctl_json(srv, "key", "create", app2["appId"], "--permissions", "api:decrypt")
    assert api(srv, "POST", "/encrypt", {"x": "y"}, headers={"api-key": k2["apiKey"]})[0] == 200
    pid = enclave_pid(srv)
    os.kill(pid, signal.SIGKILL)
    evstest.wait_for(lambda: api(srv, "POST", "/decrypt", {"data": enc}, headers=hdr)[0] == 200,
                     timeout=20, what="the credential-mode app to come back")
    st, h, body = api(srv, "POST", "/encrypt", {"x": "y"}, headers={"api-key": k2["apiKey"]})
    assert_error(st, h, body, 503, "service-unavailable")
    evctl(srv, "app", "unlock", app2["appId"], "--token", app2["appToken"])
    assert api(srv, "POST", "/encrypt", {"x": "y"}, headers={"api-key": k2["apiKey"]})[0] == 200


# ---- parameters, typed values, files and their limits (issue 9, items 8 and 9) -------------

MiB = 1024 * 1024
FILE_MAX = 25 * MiB        # the SDK's largest file (EV_MAX_FILE_SIZE_IN_MB=25, in MiB)
FILE_OVERHEAD = 75         # %EVENC: 55-byte header, 16-byte tag, 4-byte CRC


def curve_of(ev):
    """The curve an ev: string was made with (the stub writes it in clear)."""
    parts = ev.split(":")
    if parts[1].startswith("STUB"):
        return parts[2]
    return {"RFVC": "secp256k1", "S0lS": "secp256k1", "Tk9D": "prime256v1",
            "QkTC": "prime256v1"}[parts[1]]


def relabel(ev, type):
    """ev with the type tag `type` (the tag of RFVC / Tk9D is not authenticated)."""
    parts = ev.split(":")
    if parts[1].startswith("STUB"):
        parts[1] = "STUB" + type
    else:
        assert len(parts) == 6, ev
        parts.insert(2, type)
    return ":".join(parts)


def assert_bad_param(st, h, body, name):
    assert_error(st, h, body, 400, "bad-request")
    assert name in json.loads(body)["detail"], (name, body)


def test_parameters_never_dropped():
    srv = start()
    app, key = setup(srv)
    k = {"api-key": key["apiKey"]}
    ok = basic(app["appId"], key["apiKey"])
    # The documented curve names and aliases, in any case.
    for name, curve in (("secp256k1", "secp256k1"), ("koblitz", "secp256k1"),
                        ("SECP256K1", "secp256k1"), ("Koblitz", "secp256k1"),
                        ("prime256v1", "prime256v1"), ("secp256r1", "prime256v1"),
                        ("nist", "prime256v1"), ("NIST", "prime256v1"),
                        ("Prime256V1", "prime256v1"), ("SECP256R1", "prime256v1")):
        st, _, body = api(srv, "POST", "/encrypt?curve=" + name, "v", headers=k)
        assert st == 200, (name, body)
        assert curve_of(json.loads(body)) == curve, (name, body)
    # A curve name that is too long, unknown, empty or given twice is refused: never the default.
    for q in ("curve=prime256v1xxxxxxxxx", "curve=" + "a" * 64, "curve=ed25519", "curve=",
              "curve", "curve=prime256v1&curve=secp256k1", "curve=p%2D256", "curve=%6Eist%20"):
        assert_bad_param(*api(srv, "POST", "/encrypt?" + q, "v", headers=k), "'curve'")
    # A role that is too long, not a role, empty or given twice is refused: never dropped.
    for q in ("role=" + "a" * 64, "role=" + "a" * 21, "role=Upper", "role=a_b", "role=",
              "role", "role=a&role=b", "role=a%00"):
        assert_bad_param(*api(srv, "POST", "/encrypt?" + q, "v", headers=k), "'role'")
    # 20 characters is a role, and it is used.
    st, _, body = api(srv, "POST", "/encrypt?role=" + "a" * 20 + "&curve=nist", "v", headers=k)
    assert st == 200, body
    if not json.loads(body).startswith("ev:STUB"):
        assert json.loads(body).startswith("ev:QkTC:"), body
    # Data roles are for values, not files.
    assert_bad_param(*api(srv, "POST", "/encrypt?role=my-role", b"file bytes", headers=k),
                     "'role': data roles cannot be used with files")
    # Unknown query parameters are refused, naming them; the endpoints without parameters too.
    assert_bad_param(*api(srv, "POST", "/encrypt?roles=a", "v", headers=k), "'roles'")
    assert_bad_param(*api(srv, "POST", "/encrypt?curve=nist&x=1", "v", headers=k), "'x'")
    st, _, enc = api(srv, "POST", "/encrypt", {"a": "b"}, headers=k)
    assert_bad_param(*api(srv, "POST", "/decrypt?curve=nist", {"data": json.loads(enc)},
                          headers=ok), "'curve'")
    assert_bad_param(*api(srv, "POST", "/decrypt?role=x", {"data": "x"}, headers=ok), "'role'")
    assert_bad_param(*api(srv, "GET", "/cages/key?x=1", headers=k), "'x'")
    assert_bad_param(*api(srv, "GET", "/keys?curve=nist", headers=k), "'curve'")
    # The names echoed are only short printable ones.
    st, h, body = api(srv, "POST", "/encrypt?%22%3Cscript%3E=1", "v", headers=k)
    assert_bad_param(st, h, body, "unprintable")
    # /decrypt's body: "data" next to another key is refused, naming it.
    assert_bad_param(*api(srv, "POST", "/decrypt", {"data": json.loads(enc), "role": "x"},
                          headers=ok), "'role'")
    # The admin encrypt/decrypt take their parameters from the body, by the same rules.
    def admin(path, body):
        r = srv.admin_request("POST", "/apps/%s/%s" % (app["appId"], path), body)
        return r.status, {k.lower(): v for k, v in r.headers}, r.body
    st, _, body = admin("encrypt", {"data": "v", "curve": "Koblitz", "role": "r-1"})
    assert st == 200, body
    assert curve_of(json.loads(body)["data"]) == "secp256k1", body
    for bad, name in (({"curve": "prime256v1xxxxxxxxx"}, "'curve'"), ({"curve": 1}, "'curve'"),
                      ({"curve": ""}, "'curve'"), ({"role": "a" * 64}, "'role'"),
                      ({"role": 5}, "'role'"), ({"role": ""}, "'role'"), ({"rol": "x"}, "'rol'")):
        assert_bad_param(*admin("encrypt", dict(bad, data="v")), name)
    assert_bad_param(*admin("decrypt", {"data": "x", "curve": "nist"}), "'curve'")
    # Nothing of the above reached the enclave as an encryption without its role.
    assert api(srv, "POST", "/decrypt", {"data": json.loads(enc)}, headers=ok)[0] == 200


def test_typed_values_must_parse():
    srv = start()
    app, key = setup(srv)
    k = {"api-key": key["apiKey"]}
    ok = basic(app["appId"], key["apiKey"])
    texts = ["abc", "12", "-1.5e3", "null", "true", "false", "True", "1", "0x10", "1e400",
             "18446744073709551616", "Infinity", "NaN", "12 ", "01", "\u00e9"]
    for curve in ("secp256k1", "prime256v1"):
        st, _, body = api(srv, "POST", "/encrypt?curve=" + curve, texts, headers=k)
        assert st == 200, body
        enc = dict(zip(texts, json.loads(body)))
        good = {("12", "number"): 12, ("1", "number"): 1, ("-1.5e3", "number"): -1500.0, ("null", "number"): None,
                ("18446744073709551616", "number"): 18446744073709551616.0,
                ("true", "boolean"): True, ("false", "boolean"): False}
        # Valid relabelled texts come back typed.
        st, _, body = api(srv, "POST", "/decrypt",
                          {"data": [relabel(enc[t], ty) for t, ty in good]}, headers=ok)
        assert st == 200, body
        assert json.loads(body)["data"] == list(good.values()), body
        # A :number / :boolean whose text is not one is a decryption error, never a string.
        for t in texts:
            for ty in ("number", "boolean"):
                if (t, ty) in good or (t == "12 " and ty == "number"):
                    continue
                st, h, body = api(srv, "POST", "/decrypt", {"data": {"v": relabel(enc[t], ty)}},
                                  headers=ok)
                assert_error(st, h, body, 422, "decryption-error")
                assert json.loads(body)["detail"] == "Unable to decrypt data", body


def post(srv, path, headers, body=None, length=None, chunks=None):
    """POST on a new connection: body with Content-Length (length alone: the head only, what a
    server may refuse before the body), or chunks with Transfer-Encoding: chunked.
    (status, headers dict lower-case, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port("api"), timeout=60)
    try:
        c.putrequest("POST", path, skip_accept_encoding=True)
        for kv in dict({"Content-Type": "application/octet-stream"}, **headers).items():
            c.putheader(*kv)
        if chunks is not None:
            c.putheader("Transfer-Encoding", "chunked")
        else:
            c.putheader("Content-Length", str(len(body) if length is None else length))
        c.endheaders()
        try:
            if chunks is not None:
                for ch in chunks:
                    c.send(b"%x\r\n%s\r\n" % (len(ch), ch))
                c.send(b"0\r\n\r\n")
            elif body:
                c.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early: read what the server said
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def pieces(data, size=1 << 20):
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_garbage_evenc_is_decryption_error():
    srv = start()
    app, key = setup(srv)
    ok = basic(app["appId"], key["apiKey"])
    blob = bytes(range(256)) * 40
    st, _, enc = api(srv, "POST", "/encrypt?curve=nist", blob, headers={"api-key": key["apiKey"]})
    assert st == 200 and enc.startswith(b"%EVENC"), enc[:40]
    flip = lambda b, i: b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]  # noqa: E731
    # Empty, the magic alone, a zero header, truncated below the format's 75 bytes, another
    # version, offset or flags byte, no magic at all (tampering with the ciphertext or the CRC,
    # and truncation past the header, fail the CRC and were 422 already).
    bad = [b"", b"%EVENC", b"%EVENC" + b"\0" * 100, enc[:74], flip(enc, 6), flip(enc, 7),
           flip(enc, 54), b"not an encrypted file at all" * 10]
    for i, b in enumerate(bad):
        st, h, body = api(srv, "POST", "/decrypt", b, headers=ok)
        assert_error(st, h, body, 422, "decryption-error")
        assert json.loads(body)["detail"] == "Unable to decrypt data", (i, body)
    assert api(srv, "POST", "/decrypt", enc, headers=ok)[:3:2] == (200, blob)


def test_file_limits_exact():
    """25 MiB of plaintext is the largest file: its ciphertext (25 MiB + 75 bytes) decrypts,
    one byte more on either side is 413 payload-too-large, with or without Content-Length."""
    srv = start()
    app, key = setup(srv)
    k = {"api-key": key["apiKey"]}
    ok = basic(app["appId"], key["apiKey"])
    data = os.urandom(FILE_MAX)
    st, _, enc = api(srv, "POST", "/encrypt", data, headers=k, timeout=60)
    assert st == 200 and enc.startswith(b"%EVENC"), enc[:100]
    assert len(enc) == FILE_MAX + FILE_OVERHEAD
    st, h, body = api(srv, "POST", "/decrypt", enc, headers=ok, timeout=60)
    assert st == 200 and h["content-type"] == "application/octet-stream", body[:200]
    assert body == data
    # The same through a chunked body (no Content-Length).
    st, _, body = post(srv, "/decrypt", ok, chunks=pieces(enc))
    assert st == 200 and body == data, (st, body[:200])
    # One byte over: refused before it is read (Content-Length) or once read (chunked).
    # The detail states the limit.
    for path, n, hdr, limit in (("/decrypt", FILE_MAX + FILE_OVERHEAD + 1, ok, b"26214475 bytes"),
                                ("/encrypt", FILE_MAX + 1, k, b"26214400 bytes")):
        for r in (post(srv, path, hdr, length=n), post(srv, path, hdr, chunks=pieces(b"\0" * n))):
            assert_error(*r, 413, "payload-too-large")
            assert limit in r[2], r
    # JSON: 25 MiB is the per-request limit too (the docs' "25 MB for encryption/decryption").
    json_hdr = dict(ok, **{"Content-Type": "application/json"})
    body = b'{"data":"' + b"x" * (FILE_MAX - 11) + b'"}'
    assert len(body) == FILE_MAX
    st, _, out = post(srv, "/decrypt", json_hdr, body)
    assert st == 200 and len(out) == FILE_MAX, (st, out[:200])
    for r in (post(srv, "/decrypt", json_hdr, length=FILE_MAX + 1),
              post(srv, "/encrypt", dict(k, **{"Content-Type": "application/json"}),
                   chunks=pieces(b'"' + b"x" * (FILE_MAX - 1) + b'"'))):
        assert_error(*r, 413, "payload-too-large")
        assert b"26214400 bytes" in r[2], r

if __name__ == "__main__":
    evstest.main(globals())
