"""The Cages front and control side (plugins/cage-broker/cage_front.c, cage_broker.c) with a
stand-in runner (tests/plugins/cage_run_fake.c: the app, tests/integration/cage/fake_app.py, runs
as a helper process on a unix socket instead of booting the image), so that everything the
front does is checked on its own, with the real enclave, real TLS, curl and evctl:

deploy through the admin API (image chunks in the store, content-addressed), the cage's own
certificate from the node CA by SNI (`https://hello-cage.<app>.cages.localhost`, curl
--resolve, the node CA as the only trust), the documented /hello answer, `unauthorized` without
or with a wrong API key, api_key_auth = false admitting, ev: strings in a JSON body decrypted
before the app sees them (and the api-key header not passed on), x-evervault-cage-ctx on every
answer matching the transaction record, the Encryption API round trip from inside the cage,
env and secrets at start (the secret never in the store in plaintext), a redeploy during a
request loop that never fails, a crash restarted and reported (list, the cage.error event),
logs for debug cages only, locked signing certificates, delete.

test_99_cages.py runs the hello-cage flow on the real runner and `evctl cage`.
"""

import base64
import importlib.util
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time

import evstest

_spec = importlib.util.spec_from_file_location(
    "t70", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_70_enclave_api.py"))
E = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(E)

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_MODULES = os.path.join(HERE, "sdk", "node_modules")
BINDINGS = os.path.join(evstest.SOURCE_DIR, "plugins", "cage-broker", "node-bindings")
DOMAIN = "cages.localhost"
HELLO = {"response": "Hello! I'm writing to you from within an enclave"}


def plugins_dir():
    d = evstest.tmpdir("evs-cagefront-plugins-")
    os.symlink(evstest.build_path("plugins.d", "enclave.so"), os.path.join(d, "enclave.so"))
    os.symlink(evstest.build_path("test-plugins.d", "cage-broker.so"),
               os.path.join(d, "cage-broker.so"))
    return d


class Env:
    def __init__(self):
        for p in ("test-plugins.d/cage-broker.so", "test-bin/evs-test-eif", "evserver-enclave"):
            if not os.path.exists(evstest.build_path(*p.split("/"))):
                raise evstest.Skip("%s is not built" % p)
        self.dir = evstest.tmpdir("evs-cagefront-")
        ca = evstest.make_ca(self.dir, name="listener CA")
        lc = evstest.make_cert(ca, ["localhost"], dir=self.dir)
        cfg = evstest.write_config(
            self.dir,
            listeners={"api": {}, "cages": {"tls": True, "certificate": lc.cert, "key": lc.key,
                                            "serves": "cages"}},
            server={"plugins_dir": plugins_dir(), "workers": getattr(self, "workers", 1)},
            plugins={"enclave": {"enclave_binary": evstest.build_path("evserver-enclave")},
                     "cage-broker": dict({"domain": DOMAIN, "sync_interval": "200ms"},
                                         **getattr(self, "broker_extra", {}))},
            )
        self.cfg = cfg
        self.srv = evstest.Server(cfg).start()
        evstest.defer(self.stop)
        E.evctl(self.srv, "relay-ca", "create")
        st, _, pem = E.api(self.srv, "GET", "/relay-ca.pem")
        assert st == 200, pem
        self.node_ca = os.path.join(self.dir, "node-ca.pem")
        with open(self.node_ca, "wb") as f:
            f.write(pem)
        self.app = E.evctl_json(self.srv, "app", "create")["appId"]
        self.key = E.evctl_json(self.srv, "key", "create", self.app, "--permissions",
                                "api:encrypt,api:decrypt")["apiKey"]
        other = E.evctl_json(self.srv, "app", "create")["appId"]
        self.other_key = E.evctl_json(self.srv, "key", "create", other, "--permissions",
                                      "api:encrypt")["apiKey"]

    def stop(self):
        self.srv.stop()
        log = self.srv.log()
        assert "Sanitizer" not in log and "runtime error:" not in log, log[-3000:]

    # ---- admin ----
    def admin(self, method, path, body=None, raw=None, timeout=30):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        r = self.srv.admin_request(method, path, body=data, timeout=timeout)
        try:
            doc = json.loads(r.body) if r.body else None
        except ValueError:
            doc = r.body
        return r.status, doc

    def image(self, tag, cert=None):
        path = os.path.join(self.dir, tag + ".eif")
        args = [evstest.build_path("test-bin", "evs-test-eif"), path, tag]
        if cert:
            args += [cert.cert, cert.key]
        pcrs = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
        with open(path, "rb") as f:
            return f.read(), pcrs

    def deploy(self, name, tag, cert=None, **settings):
        data, pcrs = self.image(tag, cert)
        import hashlib
        sha = hashlib.sha256(data).hexdigest()
        st, body = self.admin("PUT", "/cage-images/%s/0" % sha, raw=data)
        assert st == 200, body
        sets = {"debug": False, "api_key_auth": True, "trx_logging": True}
        sets.update(settings)
        st, body = self.admin("PUT", "/cages/%s/%s" % (self.app, name),
                              {"image": sha, "size": len(data), "chunks": 1, "settings": sets})
        return st, body, pcrs

    def cage(self, name):
        st, body = self.admin("GET", "/cages/%s/%s" % (self.app, name))
        assert st == 200, body
        return body

    def wait_ready(self, name, deployment=None, timeout=30):
        def ready():
            c = self.cage(name)
            ins = c["instances"]
            return ins and ins[0]["state"] == "ready" and (
                deployment is None or ins[0]["deployment"] == deployment) and c
        return evstest.wait_for(ready, timeout=timeout, what="cage %s ready" % name)

    # ---- the front ----
    def host(self, name):
        return "%s.%s.%s" % (name, self.app.replace("_", "-"), DOMAIN)

    def curl(self, name, path, *args, key=None, data=None, method=None):
        port = self.srv.port("cages")
        h = self.host(name)
        cmd = ["curl", "-sS", "-D", "-", "-o", "-", "--max-time", "20",
               "--resolve", "%s:%d:127.0.0.1" % (h, port), "--cacert", self.node_ca,
               "https://%s:%d%s" % (h, port, path)]
        if key:
            cmd += ["-H", "api-key: " + key]
        if data is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", data]
        if method:
            cmd += ["-X", method]
        cmd += list(args)
        r = subprocess.run(cmd, capture_output=True, timeout=30)
        if r.returncode != 0:
            return 0, {}, r.stderr
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs, body

    def wait_tls(self, name):
        def served():
            st, _, _ = self.curl(name, "/hello", key=self.key)
            return st == 200
        evstest.wait_for(served, timeout=30, what="the cage's TLS front")

    def sdk_attest(self, name, pcrs):
        if not shutil.which("node") or not os.path.isdir(SDK_MODULES):
            return
        st, _, root = E.api(self.srv, "GET", "/attestation-root.pem")
        assert st == 200, root
        rootf = os.path.join(self.dir, "attestation-root.pem")
        with open(rootf, "wb") as f:
            f.write(root)
        def run(p):
            env = dict(os.environ, EV_ENCLAVES_HOSTNAME=DOMAIN, NODE_EXTRA_CA_CERTS=self.node_ca,
                       EVS_SDK_DIR=SDK_MODULES, EVS_BINDINGS=BINDINGS, ATT_ROOT=rootf,
                       CAGE_HOST=self.host(name), CAGE_PORT=str(self.srv.port("cages")),
                       CAGE_NAME=name, CAGE_APP=self.app, CAGE_KEY=self.key,
                       ATT_PCRS=json.dumps(p))
            r = subprocess.run(["node", os.path.join(HERE, "cage", "sdk_attest.js")], env=env,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout.strip().splitlines()[-1])
        good = run({k: pcrs[k] for k in ("pcr0", "pcr1", "pcr2", "pcr8")})
        assert good["ok"] and good["status"] == 200 and json.loads(good["body"]) == HELLO, good
        wrong = dict(pcrs, pcr0="00" * 48)
        bad = run({k: wrong[k] for k in ("pcr0", "pcr1", "pcr2", "pcr8")})
        assert not bad["ok"] and bad["failures"], bad  # refused by the bindings, on PCRs

    def encrypt(self, value):
        st, _, body = E.api(self.srv, "POST", "/encrypt", value, headers={"api-key": self.key})
        assert st == 200, body
        return json.loads(body)


def assert_unauthorized(st, hdrs, body):
    assert st == 401, (st, body)
    assert hdrs.get("x-evervault-error-code") == "unauthorized", hdrs
    doc = json.loads(body)
    assert doc["code"] == "unauthorized" and doc["status"] == 401 and doc["detail"], doc
    assert hdrs.get("x-evervault-cage-ctx"), hdrs


def test_hello_auth_decrypt_trx_api_env():
    e = Env()
    # env and a secret, before the deploy: they reach the app when it starts
    st, body = e.admin("PUT", "/cages/%s/hello-cage/env/GREETING" % e.app, {"value": "hi"})
    assert st == 404, body  # no such cage yet
    st, body, pcrs = e.deploy("hello-cage", "v1")
    assert st == 200, body
    assert body["deployment"]["id"] == 1 and body["deployment"]["pcrs"]["pcr0"] == pcrs["pcr0"]
    assert body["domain"] == e.host("hello-cage"), body
    st, body = e.admin("PUT", "/cages/%s/hello-cage/env/GREETING" % e.app, {"value": "hi"})
    assert st == 200 and body["env"]["GREETING"] == {"value": "hi", "secret": False}, body
    st, body = e.admin("PUT", "/cages/%s/hello-cage/env/ACME_API_KEY" % e.app,
                       {"value": "s3cret-value-xyz", "secret": True})
    assert st == 200, body
    sealed = body["env"]["ACME_API_KEY"]["value"]
    assert sealed.startswith("ev:") and body["env"]["ACME_API_KEY"]["secret"] is True, body
    # env takes effect at the next start: redeploy the same image
    st, body, _ = e.deploy("hello-cage", "v1")
    assert st == 200 and body["deployment"]["id"] == 2, body
    e.wait_ready("hello-cage", deployment=2)
    e.wait_tls("hello-cage")

    st, hdrs, body = e.curl("hello-cage", "/hello", key=e.key)
    assert st == 200 and json.loads(body) == HELLO, (st, body)
    ctx = hdrs.get("x-evervault-cage-ctx")
    assert ctx and re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", ctx), hdrs

    assert_unauthorized(*e.curl("hello-cage", "/hello"))
    assert_unauthorized(*e.curl("hello-cage", "/hello", key="ev:key:not-a-key"))
    assert_unauthorized(*e.curl("hello-cage", "/hello", key=e.other_key))  # another app's key

    # ev: strings decrypted before the app sees them; the api-key is not passed on
    enc = e.encrypt({"card": "4242424242424242", "cvc": 123, "ok": True, "plain": "x"})
    assert enc["card"].startswith("ev:"), enc
    st, hdrs, body = e.curl("hello-cage", "/echo", key=e.key, data=json.dumps(enc))
    assert st == 200, body
    echo = json.loads(body)
    assert json.loads(echo["body"]) == {"card": "4242424242424242", "cvc": 123, "ok": True,
                                        "plain": "x"}, echo
    assert "api-key" not in echo["headers"], echo["headers"]
    assert echo["headers"]["host"].startswith(e.host("hello-cage")), echo["headers"]
    assert echo["headers"]["x-forwarded-proto"] == "https", echo["headers"]
    echo_ctx = hdrs["x-evervault-cage-ctx"]
    # a record longer than the front's stack buffer for it (512 bytes) is written whole
    long_path = "/long/" + "x" * 700
    st, hdrs, _ = e.curl("hello-cage", long_path, key=e.key)
    long_ctx = hdrs["x-evervault-cage-ctx"]

    # the transaction records carry the same ids (never bodies)
    def trx():
        st, body = e.admin("GET", "/cages/%s/hello-cage/transactions?limit=50" % e.app)
        assert st == 200, body
        recs = {r["ctx"]: r for r in body["records"]}
        return echo_ctx in recs and ctx in recs and long_ctx in recs and recs
    recs = evstest.wait_for(trx, timeout=10, what="transaction records")
    assert recs[long_ctx]["path"] == long_path and recs[long_ctx]["status"] == st, recs[long_ctx]
    r = recs[echo_ctx]
    assert r["method"] == "POST" and r["path"] == "/echo" and r["status"] == 200, r
    assert r["app"] == e.app and r["cage"] == "hello-cage", r
    assert r["decryptedFields"] == 4 and "4242" not in json.dumps(r), r
    # durationMs: milliseconds with three decimals (microseconds), as written by hand
    assert isinstance(r["durationMs"], float) and 0 < r["durationMs"] < 10000, r
    assert recs[ctx]["path"] == "/hello" and recs[ctx]["status"] == 200, recs[ctx]
    assert any(x["status"] == 401 for x in recs.values()), recs

    # the Encryption API from inside the cage: /encrypt then /decrypt, the documented bodies
    st, _, body = e.curl("hello-cage", "/roundtrip", key=e.key)
    assert st == 200, body
    rt = json.loads(body)
    assert rt["status"] == [200, 200], rt
    assert rt["encrypted"]["foo"].startswith("ev:") and str(rt["encrypted"]["n"]).startswith("ev:")
    assert rt["decrypted"] == {"foo": "bar", "n": 7}, rt
    # ... and a value the app got from outside
    st, _, body = e.curl("hello-cage", "/api/decrypt", key=e.key, data=json.dumps(enc))
    assert st == 200 and json.loads(body)["card"] == "4242424242424242", body

    # env and the secret reached the app at start, and the secret is only sealed in the store
    st, _, body = e.curl("hello-cage", "/env", key=e.key)
    assert st == 200 and json.loads(body) == {"GREETING": "hi",
                                               "ACME_API_KEY": "s3cret-value-xyz"}, body
    for root, _, files in os.walk(os.path.join(e.dir, "state")):
        for f in files:
            if not os.path.isfile(os.path.join(root, f)) or f.endswith(".sock"):
                continue
            with open(os.path.join(root, f), "rb") as fh:
                assert b"s3cret-value-xyz" not in fh.read(), f
    assert "s3cret-value-xyz" not in e.srv.log()
    st, body = e.admin("GET", "/cages/%s/hello-cage/env" % e.app)
    assert st == 200 and body["env"]["ACME_API_KEY"]["value"] == sealed, body

    # the attestation document (no API key), signed in the enclave, binding this TLS key
    st, hdrs, body = e.curl("hello-cage", "/.well-known/attestation")
    assert st == 200 and hdrs.get("x-evervault-cage-ctx"), (st, body)
    doc = base64.b64decode(json.loads(body)["attestation_doc"])
    assert len(doc) > 100 and doc[0] in (0x84, 0xd2), doc[:4]  # COSE_Sign1 (tagged or not)
    # the unmodified SDK accepts the right PCRs and refuses others (createEnclaveHttpsAgent)
    e.sdk_attest("hello-cage", pcrs)


def test_no_api_key_auth_logs_and_delete():
    e = Env()
    st, body, _ = e.deploy("open-cage", "open", api_key_auth=False, debug=True)
    assert st == 200, body
    e.wait_ready("open-cage")
    evstest.wait_for(lambda: e.curl("open-cage", "/hello")[0] == 200, timeout=30,
                     what="open cage")
    st, hdrs, body = e.curl("open-cage", "/echo", data='{"a":1}')
    assert st == 200 and hdrs.get("x-evervault-cage-ctx"), (st, body)
    logs = evstest.wait_for(
        lambda: (lambda r: r[0] == 200 and r[1]["records"] and r[1])(
            e.admin("GET", "/cages/%s/open-cage/logs" % e.app)), timeout=10, what="logs")
    assert any("echo of 7 bytes" in r["line"] for r in logs["records"]), logs
    # logs are refused for a cage not in debug mode
    st, body, _ = e.deploy("quiet-cage", "quiet")
    assert st == 200, body
    st, body = e.admin("GET", "/cages/%s/quiet-cage/logs" % e.app)
    assert st == 400 and "debug" in body["detail"], body
    st, body = e.admin("DELETE", "/cages/%s/open-cage" % e.app)
    assert st == 200, body
    evstest.wait_for(lambda: e.curl("open-cage", "/hello")[0] in (0, 404), timeout=10,
                     what="deleted cage gone")
    st, body = e.admin("GET", "/cages/%s/open-cage" % e.app)
    assert st == 404, body


def test_redeploy_keeps_serving_and_crash_restarts():
    e = Env()
    st, body, _ = e.deploy("hello-cage", "r1")
    assert st == 200, body
    e.wait_ready("hello-cage", deployment=1)
    e.wait_tls("hello-cage")
    failures, done, count = [], threading.Event(), [0]

    def loop():
        while not done.is_set():
            st, _, body = e.curl("hello-cage", "/hello", key=e.key)
            count[0] += 1
            if st != 200:
                failures.append((st, body))
    t = threading.Thread(target=loop)
    t.start()
    try:
        evstest.wait_for(lambda: count[0] >= 3, timeout=30, what="requests before")
        st, body, _ = e.deploy("hello-cage", "r2")
        assert st == 200 and body["deployment"]["id"] == 2, body
        e.wait_ready("hello-cage", deployment=2)
        seen = count[0]
        evstest.wait_for(lambda: count[0] >= seen + 3, timeout=30, what="requests after")
    finally:
        done.set()
        t.join()
    assert not failures, failures[:3]
    assert "deployment 2 ready" in e.srv.log()
    st, body = e.admin("GET", "/cages/%s/hello-cage/deployments" % e.app)
    assert [d["id"] for d in body["deployments"]] == [2, 1], body

    # a crash: restarted by the runner, visible in the list and as a cage.error
    e.curl("hello-cage", "/crash", key=e.key)
    c = evstest.wait_for(lambda: (lambda c: c["instances"][0]["restarts"] >= 1 and
                                  c["instances"][0]["state"] == "ready" and c)(
        e.cage("hello-cage")), timeout=30, what="restart after the crash")
    assert c["instances"][0]["deployment"] == 2, c
    assert "crashed" in e.srv.log()
    evstest.wait_for(lambda: e.curl("hello-cage", "/hello", key=e.key)[0] == 200, timeout=30,
                     what="serving after the crash")


def test_locked_certificates():
    e = Env()
    ca = evstest.make_ca(e.dir, name="signing CA", key="ec")
    signer = evstest.make_cert(ca, ["signer.example"], dir=e.dir)
    st, body, _ = e.deploy("signed", "s0")
    assert st == 200, body  # nothing locked yet: any image
    with open(signer.cert) as f:
        pem = f.read()
    st, body = e.admin("POST", "/cages/%s/signed/certs" % e.app, {"pem": pem})
    assert st == 200 and len(body["certs"]) == 1, body
    pcr8 = body["certs"][0]["pcr8"]
    st, body = e.admin("PUT", "/cages/%s/signed/certs/lock" % e.app, {"pcr8": [pcr8]})
    assert st == 200 and body["locked"] == [pcr8], body
    st, body, _ = e.deploy("signed", "s1")  # unsigned: refused
    assert st == 403 and body["code"] == "forbidden", body
    st, body, pcrs = e.deploy("signed", "s2", cert=signer)
    assert st == 200, body
    assert pcrs["pcr8"] == pcr8 and body["deployment"]["pcrs"]["pcr8"] == pcr8, (pcrs, pcr8)
    other = evstest.make_cert(ca, ["other.example"], dir=e.dir)
    st, body, _ = e.deploy("signed", "s3", cert=other)
    assert st == 403, body


def test_evctl_cage_workflow():
    """evctl cage init, deploy --eif-path, list cages|deployments, env, cert, logs, delete."""
    e = Env()
    d = os.path.join(e.dir, "cli")
    os.makedirs(d)
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write("FROM scratch\n")

    def evctl(*args, ok=True):
        r = subprocess.run([evstest.build_path("evctl"), "--socket", e.cfg.admin_socket,
                            "--json", "cage", *args], capture_output=True, text=True,
                           timeout=120, cwd=d)
        if ok:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            return json.loads(r.stdout) if r.stdout.strip() else None
        return r
    evctl("init", "--name", "cli-cage", "--app", e.app, "--debug", "-f", "Dockerfile")
    data, pcrs = e.image("cli1")
    eif = os.path.join(d, "enclave.eif")
    with open(eif, "wb") as f:
        f.write(data)
    out = evctl("deploy", "--eif-path", eif)
    assert out["deployment"]["id"] == 1 and out["deployment"]["pcrs"] == pcrs, out
    assert out["domain"] == e.host("cli-cage"), out
    # text output: the documented line
    r = subprocess.run([evstest.build_path("evctl"), "--socket", e.cfg.admin_socket, "cage",
                        "deploy", "--eif-path", eif], capture_output=True, text=True,
                       timeout=120, cwd=d)
    assert r.returncode == 0 and ("Cage deployed successfully. Your Cage is now available at "
                                  "https://" + e.host("cli-cage")) in r.stdout, (r.stdout, r.stderr)
    e.wait_ready("cli-cage", deployment=2)
    cages = evctl("list", "cages")["cages"]
    mine = [c for c in cages if c["name"] == "cli-cage"]
    assert mine and mine[0]["instances"][0]["state"] == "ready", cages
    assert mine[0]["instances"][0]["restarts"] == 0, mine
    deps = evctl("list", "deployments")["deployments"]
    assert [x["id"] for x in deps] == [2, 1], deps
    deps = evctl("list", "deployments", "--cage-uuid", mine[0]["uuid"])["deployments"]
    assert len(deps) == 2, deps
    # env
    out = evctl("env", "add", "--key", "REGION", "--value", "europe")
    assert out["env"]["REGION"] == {"value": "europe", "secret": False}, out
    out = evctl("env", "add", "--key", "ACME_API_KEY", "--value", "secretvalue", "--secret")
    assert out["env"]["ACME_API_KEY"]["value"].startswith("ev:"), out
    out = evctl("env", "get")
    assert set(out["env"]) == {"REGION", "ACME_API_KEY"}, out
    evctl("env", "delete", "--key", "REGION")
    assert set(evctl("env", "get")["env"]) == {"ACME_API_KEY"}
    # logs (the cage is in debug mode)
    evstest.wait_for(lambda: e.curl("cli-cage", "/echo", key=e.key, data="{}")[0] == 200,
                     timeout=30, what="cli cage serving")
    logs = evstest.wait_for(lambda: evctl("logs")["records"], timeout=10, what="logs")
    assert any("echo of 2 bytes" in x["line"] for x in logs), logs
    # signing certificates: upload, lock; then only a signed image with that cert deploys
    ca = evstest.make_ca(d, name="cli signing CA")
    signer = evstest.make_cert(ca, ["signer.example"], dir=d)
    out = evctl("cert", "upload", "--cert_path", signer.cert)
    assert len(out["certs"]) == 1, out
    out = evctl("cert", "lock", "--all")
    assert out["locked"] == [out["certs"][0]["pcr8"]], out
    r = evctl("deploy", "--eif-path", eif, ok=False)
    assert r.returncode != 0 and "locked" in (r.stderr + r.stdout), (r.stdout, r.stderr)
    signed, _ = e.image("cli2", signer)
    with open(eif, "wb") as f:
        f.write(signed)
    assert evctl("deploy", "--eif-path", eif)["deployment"]["id"] == 3
    evctl("delete")
    assert not [c for c in evctl("list", "cages")["cages"] if c["name"] == "cli-cage"]


def test_disable_tls_termination():
    """The client's TLS reaches the app untouched: the app's own certificate, no API key."""
    e = Env()
    st, body, _ = e.deploy("own-tls", "tls1", disable_tls_termination=True)
    assert st == 200, body
    app_ca = evstest.make_ca(e.dir, name="app CA")
    own = evstest.make_cert(app_ca, [e.host("own-tls")], dir=e.dir)
    for k, v in (("FAKE_TLS_CERT", own.cert), ("FAKE_TLS_KEY", own.key)):
        st, body = e.admin("PUT", "/cages/%s/own-tls/env/%s" % (e.app, k), {"value": v})
        assert st == 200, body
    st, body, _ = e.deploy("own-tls", "tls1", disable_tls_termination=True)  # env at start
    assert st == 200, body
    e.wait_ready("own-tls", deployment=2)
    port = e.srv.port("cages")
    h = e.host("own-tls")

    def curl(ca):
        return subprocess.run(["curl", "-sS", "--max-time", "20", "--resolve",
                               "%s:%d:127.0.0.1" % (h, port), "--cacert", ca,
                               "https://%s:%d/hello" % (h, port)], capture_output=True,
                              timeout=30)
    r = evstest.wait_for(lambda: (lambda r: r.returncode == 0 and r)(curl(app_ca.cert)),
                         timeout=30, what="the app's own TLS through the front")
    assert json.loads(r.stdout) == HELLO, r.stdout  # no api-key: the front saw no HTTP
    r = curl(e.node_ca)  # not the node CA's certificate: the app's
    assert r.returncode != 0, r.stdout
    # the other cages on the same listener still terminate here
    st, body, _ = e.deploy("hello-cage", "t2")
    assert st == 200, body
    e.wait_ready("hello-cage")
    e.wait_tls("hello-cage")
    assert "passthrough_connections" in e.srv.admin_get("/metrics").text


def test_one_certificate_across_workers():
    """Two workers make the cage's identity at once: one wins the create-only put, the other
    takes its certificate, so every connection sees the same one (the attestation binds it)."""
    class Env2(Env):
        workers = 2
    e = Env2()
    st, body, _ = e.deploy("hello-cage", "w1")
    assert st == 200, body
    e.wait_ready("hello-cage")
    e.wait_tls("hello-cage")
    import hashlib
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=e.node_ca)

    def fingerprint():
        try:
            with socket.create_connection(("127.0.0.1", e.srv.port("cages")), timeout=10) as s:
                with ctx.wrap_socket(s, server_hostname=e.host("hello-cage")) as t:
                    return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()
        except ssl.SSLError:
            return None  # a worker that has no identity yet answers with the listener's
    # Both workers serve the name (each has its own instance); within the re-read period they
    # present the one certificate in the store.
    evstest.wait_for(lambda: (lambda f: len(f) == 1 and None not in f)(
        {fingerprint() for _ in range(12)}), timeout=90, interval=1,
        what="one certificate on every worker")


def test_trx_records_survive_worker_kill():
    """A response's end leaves only once its record's batch has committed, and a commit is in
    the SQLite file when it returns (core/store_sqlite_vfs.c holds WAL writes until the commit
    frame): so every answered request has its record, whenever the worker dies (kill -9)."""
    e = Env()
    st, body, _ = e.deploy("hello-cage", "k1")
    assert st == 200, body
    e.wait_ready("hello-cage", deployment=1)
    e.wait_tls("hello-cage")
    answered, done, lock = [], threading.Event(), threading.Lock()

    def loop():
        while not done.is_set():
            st, hdrs, _ = e.curl("hello-cage", "/hello", key=e.key)
            if st == 200 and hdrs.get("x-evervault-cage-ctx"):
                with lock:
                    answered.append(hdrs["x-evervault-cage-ctx"])
    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        evstest.wait_for(lambda: len(answered) >= 40, timeout=60, what="answers before the kill")
        workers = [int(x) for x in open("/proc/%d/task/%d/children" % (e.srv.pid, e.srv.pid))
                   .read().split()
                   if open("/proc/%s/comm" % x).read().strip() == "evserver"]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        n = len(answered)
        # answers from the replacement worker count too: their records are committed as well
        evstest.wait_for(lambda: len(answered) >= n + 5, timeout=60,
                         what="answers after the kill")
    finally:
        done.set()
        for t in threads:
            t.join()
    assert "worker %d exited unexpectedly" % workers[0] in e.srv.log()
    dbs = [os.path.join(e.srv.config.state_dir, f) for f in os.listdir(e.srv.config.state_dir)
           if f.endswith(".db")]
    assert len(dbs) == 1, dbs
    db = sqlite3.connect(dbs[0])
    try:
        rows = db.execute("SELECT l.record FROM evs_log l JOIN evs_log_stream s "
                          "ON s.id = l.stream_id WHERE s.name = 'cage-broker/trx'").fetchall()
    finally:
        db.close()
    recorded = {json.loads(r[0]).get("ctx") for r in rows}
    missing = [c for c in answered if c not in recorded]
    print("%d answered (%d before the kill), %d records" % (len(answered), n, len(rows)),
          flush=True)
    assert not missing, "%d answered requests without a record, e.g. %s" % (len(missing),
                                                                          missing[:3])


evstest.main(globals())
