"""Functions end to end: the function-runtime plugin, evs-fnbox boxes and the real enclave.

`evctl function init|deploy|list|env|run|run-status|delete` with Node.js and Python hello-world
Functions; the official SDK (@evervault/sdk 6.4.0, tests/integration/sdk/functions.js)
encrypts a name, runs the Function and sees it decrypted, gets FunctionRuntimeError for a
throwing handler and creates run tokens, which are then redeemed over plain HTTP with
`Authorization: RunToken` and `Bearer` (single use, bound to the payload, expiring); async runs
(X-Async) polled to completion; a run past its timeout kills its box (the evs-fnbox process is
gone); secrets reach the Function's environment and never appear in evserver's log or store in
plaintext; every documented error code of the Function Run API; console output kept with the
run record, not in evserver's log; runs in the activity stream and the counters.

Needs node (and python3) and the real $EVS_BUILD_DIR/evserver-enclave and evs-fnbox.
"""

import base64
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import evstest

SDK_DIR = os.path.join(evstest.SOURCE_DIR, "tests", "integration", "sdk")
TOKEN_TTL = 2  # seconds (run_token_ttl)
# scripts/test's ASan suite: evs-fnbox is instrumented too, and ASan's shadow memory does not
# fit under RLIMIT_AS, so Python boxes run without it there.
SANITIZED = os.environ.get("EVS_SANITIZED") == "1"

NODE_HELLO = r"""
exports.handler = async (data, context) => {
  console.log('hello-log-line ' + (data && data.plain));
  const enc = await context.encrypt('inner secret');
  const rt = await context.decrypt(await context.encrypt({ a: 'x', n: 2, b: true }));
  return { name: data.name, enc, rt, greeting: process.env.GREETING || null,
           secret: process.env.API_SECRET || null, tmpClean: require('fs').readdirSync('/tmp').length };
};
"""
PY_HELLO = """
def handler(data, context):
    print('py-log-line')
    return {'name': data.get('name'), 'lang': 'python', 'enc': context.encrypt('py secret')}
"""
FUNCTIONS = {
    "hello": ("node", "index.handler", NODE_HELLO, {}),
    "pyhello": ("python", "main.handler", PY_HELLO, {}),
    "thrower": ("node", "index.handler", "exports.handler = async () => { throw new Error('boom'); };", {}),
    "slow": ("node", "index.handler",
             "exports.handler = async () => { await new Promise(r => setTimeout(r, 20000)); return 1; };",
             {"timeout": 1}),
    "crasher": ("node", "index.handler", "exports.handler = async () => { process.exit(3); };", {}),
    "sleepy": ("node", "index.handler",
               "exports.handler = async (d) => { await new Promise(r => setTimeout(r, 1500)); "
               "return { waited: d.ms }; };", {"timeout": 10}),
    "walled": ("node", "index.handler", "exports.handler = async () => 'hi';",
               {"inbound_allowlist": ["10.9.8.7", "192.0.2.0/24"]}),
    "opened": ("node", "index.handler", "exports.handler = async () => 'hi';",
               {"inbound_allowlist": ["127.0.0.0/8"]}),
    "fetcher": ("node", "index.handler",
                "exports.handler = async (d) => { try { const r = await fetch(d.url); "
                "return { status: r.status, body: await r.text() }; } catch (e) { "
                "return { error: String(e.cause ? e.cause.message : e.message) }; } };", {}),
    "getter": ("node", "index.handler",
               "const http = require('http');\nexports.handler = (d) => new Promise((res) => { "
               "http.get(d.url, (r) => { let b = ''; r.on('data', (c) => b += c); "
               "r.on('end', () => res({ status: r.statusCode, body: b })); })"
               ".on('error', (e) => res({ error: e.message })); });", {}),
    "pyfetch": ("python", "main.handler",
                "import urllib.request\ndef handler(d, context):\n    try:\n"
                "        with urllib.request.urlopen(d['url'], timeout=10) as r:\n"
                "            return {'status': r.status, 'body': r.read().decode()}\n"
                "    except Exception as e:\n        return {'error': str(e)}\n", {}),
    "fenced": ("node", "index.handler",
               "exports.handler = async (d) => { try { const r = await fetch(d.url); return { status: r.status }; }"
               " catch (e) { return { error: String(e.cause ? e.cause.message : e.message) }; } };",
               {"outbound_allowlist": ["api.example.invalid", "*.example.invalid"]}),
    "namer": ("node", "index.handler",
              "const http = require('http'), https = require('https');\n"
              "exports.handler = (d) => new Promise((res) => { const m = d.tls ? https : http; "
              "const o = { host: d.host, port: d.port, path: '/named', rejectUnauthorized: false };"
              "if (d.tls) o.servername = d.name; else o.headers = { Host: d.name };"
              "m.get(o, (r) => { let b = ''; r.on('data', (c) => b += c); "
              "r.on('end', () => res({ status: r.statusCode, body: b })); })"
              ".on('error', (e) => res({ error: e.code || e.message })); });", {}),
    "pyhog": ("python", "main.handler",
              "def handler(d, context):\n    return len(bytearray(4 * 1024 ** 3))\n", {}),
    "badload": ("node", "index.handler", "throw new Error('cannot load this');\nexports.handler = () => 1;", {}),
    "stuck": ("node", "index.handler",
              "const t = Date.now() + 30000; while (Date.now() < t) {}\nexports.handler = async () => 1;", {}),
}


def need():
    for p in ("evserver", "evctl", "evs-fnbox", "evserver-enclave", "plugins.d/function-runtime.so"):
        if not os.path.exists(evstest.build_path(*p.split("/"))):
            raise evstest.Skip("%s is not built" % p)
    if not shutil.which("node"):
        raise evstest.Skip("node is not installed")


class Env:
    """One server with the enclave and function-runtime, one app, keys, deployed Functions."""

    def __init__(self, alerts=None, workers=1, **runtime):
        need()
        self.dir = evstest.tmpdir("evs-fn-")
        extra = {}
        if alerts is not None:
            with open(os.path.join(self.dir, "alerts.json"), "w") as f:
                json.dump(alerts, f)
            extra["alerts"] = {"event_prefixes": "function."}
        cfg = evstest.write_config(
            self.dir, listeners={"http": {}, "api": {}}, server={"workers": workers},
            plugins={"enclave": {"enclave_binary": evstest.build_path("evserver-enclave")},
                     "relay-inbound": {},
                     "function-runtime": {"fnbox_binary": evstest.build_path("evs-fnbox"),
                                          "run_token_ttl": "%ds" % TOKEN_TTL,
                                          "start_timeout": "3s", "idle_timeout": "60s",
                                          "python_rlimit_as": not SANITIZED, **runtime},
                     **extra})
        self.cfg = cfg
        self.srv = evstest.Server(cfg).start()
        self.app = self.evctl("app", "create")["appId"]
        self.key = self.evctl("key", "create", self.app, "--permissions",
                              "function:run,function:create-run-token,api:decrypt")["apiKey"]
        self.encrypt_only = self.evctl("key", "create", self.app, "--permissions", "")["apiKey"]
        self.fndir = os.path.join(self.dir, "functions")
        os.makedirs(self.fndir)

    def evctl(self, *args, cwd=None, ok=True, env=None):
        r = subprocess.run([evstest.build_path("evctl"), "--socket", self.cfg.admin_socket, "--json",
                            *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                           env=dict(os.environ, **(env or {})))
        if ok:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        out = json.loads(r.stdout) if r.stdout.strip() else None
        return out if ok else (r.returncode, out, r.stderr)

    def deploy(self, name):
        lang, handler, code, extra = FUNCTIONS[name]
        d = os.path.join(self.fndir, name)
        os.makedirs(d, exist_ok=True)
        toml = ['[function]', 'name = "%s"' % name, 'handler = "%s"' % handler,
                'language = "%s"' % ("node@18" if lang == "node" else "python@3.9")]
        if "timeout" in extra:
            toml.append("timeout = %d" % extra["timeout"])
        if "outbound_allowlist" in extra:
            toml.append("outbound_allowlist = [%s]" % ", ".join('"%s"' % a for a in extra["outbound_allowlist"]))
        if "inbound_allowlist" in extra:
            toml.append("inbound_allowlist = [%s]" % ", ".join('"%s"' % a for a in extra["inbound_allowlist"]))
        with open(os.path.join(d, "function.toml"), "w") as f:
            f.write("\n".join(toml) + "\n")
        with open(os.path.join(d, "index.js" if lang == "node" else "main.py"), "w") as f:
            f.write(code)
        return self.evctl("function", "deploy", "--app", self.app, cwd=d)

    def api(self, method, path, body=None, headers=None, raw=None, timeout=60):
        hdrs = dict(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.srv.url(path, "api"), data=data, headers=hdrs, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read() or b"null")

    def basic(self, key=None, app=None):
        cred = "%s:%s" % (app or self.app, key or self.key)
        return {"Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}

    def run(self, name, payload, headers=None, **kw):
        h = self.basic() if headers is None else headers
        return self.api("POST", "/functions/%s/runs" % name, {"payload": payload}, headers=h, **kw)

    def encrypt(self, value):
        st, _, body = self.api("POST", "/encrypt", value, headers={"api-key": self.key})
        assert st == 200, body
        return body

    def decrypt(self, value):
        st, _, body = self.api("POST", "/decrypt", {"data": value}, headers=self.basic())
        assert st == 200, body
        return body["data"]

    def token(self, name, payload, key=None):
        return self.api("POST", "/v2/functions/%s/run-token" % name, payload,
                        headers={"api-key": key or self.key})

    def stop(self):
        self.srv.stop()
        log = self.srv.log()
        # Nothing crashed, in the server or (under ASan) at the workers' exit after fini.
        assert "Sanitizer" not in log and "runtime error:" not in log and "EVS-1603" not in log, log[-3000:]


def assert_error(status, headers, body, want_status, code):
    assert status == want_status, (status, body)
    assert headers.get("x-evervault-error-code") == code, (headers, body)
    assert body["code"] == code and body["status"] == want_status, body
    assert body["detail"] and body["message"] and body["title"], body


def box_pids(log):
    return [int(m) for m in re.findall(r"helper evs-fnbox started: pid (\d+)", log)]


def test_cli_deploy_run_env_delete():
    e = Env()
    try:
        # init writes a runnable hello-world for both languages; deploy it as is.
        for lang in ("node", "python"):
            d = os.path.join(e.fndir, "init-" + lang)
            out = e.evctl("function", "init", "--language", lang, d)
            assert out["name"] == "init-" + lang
            dep = e.evctl("function", "deploy", "--app", e.app, cwd=d)
            assert dep["version"] == 1 and dep["runtime"] == lang, dep
            res = e.evctl("function", "run", "--app", e.app, "--data", '{"name": "Grace"}', cwd=d)
            assert res["status"] == "success", res
            assert "5 letters" in res["result"]["message"], res
            # The name comes from function.toml, the app from EV_APP_ID.
            res = e.evctl("function", "run", "--in", os.path.join(d, "function.toml"), cwd=d,
                          env={"EV_APP_ID": e.app}, ok=False)
            assert res[0] != 0  # function.toml is not JSON: refused before anything is sent
        # create-toml writes a starter file that deploys with a handler next to it.
        d = os.path.join(e.fndir, "from-toml")
        os.makedirs(d)
        e.evctl("function", "create-toml", "--name", "from-toml", cwd=d)
        assert 'name = "from-toml"' in open(os.path.join(d, "function.toml")).read()
        code, _, err = e.evctl("function", "deploy", "--app", e.app, cwd=d, ok=False)
        assert code != 0 and "index.js" in err, err  # the handler's file is missing
        # Redeploying makes a new version; list shows the app's functions.
        e.deploy("hello")
        assert e.deploy("hello")["version"] == 2
        names = {f["name"]: f for f in e.evctl("function", "list", "--app", e.app)["functions"]}
        assert {"init-node", "init-python", "hello"} <= set(names), names
        # A language the node cannot serve is refused with what is installed.
        d = os.path.join(e.fndir, "future")
        os.makedirs(d)
        with open(os.path.join(d, "function.toml"), "w") as f:
            f.write('[function]\nname = "future"\nhandler = "index.handler"\nlanguage = "node@99"\n')
        open(os.path.join(d, "index.js"), "w").write("exports.handler = async () => 1;\n")
        code, out, err = e.evctl("function", "deploy", "--app", e.app, cwd=d, ok=False)
        assert code != 0 and "node@99" in err and "this node has node" in err, err
        # Environment: a plain value and a secret reach process.env when a box starts.
        e.evctl("function", "env", "set", "--app", e.app, "--name", "hello", "--key", "GREETING",
                "--value", "bonjour")
        secret = "s3cr3t-%d-value" % os.getpid()
        out = e.evctl("function", "env", "set", "--app", e.app, "--name", "hello", "--key",
                      "API_SECRET", "--value", secret, "--secret")
        assert out["env"]["API_SECRET"]["value"].startswith("ev:"), out
        assert out["env"]["API_SECRET"]["secret"] is True
        env = e.evctl("function", "env", "get", "--app", e.app, "--name", "hello")["env"]
        assert env["GREETING"]["value"] == "bonjour" and secret not in json.dumps(env)
        res = e.evctl("function", "run", "--app", e.app, "--name", "hello", "--data", '{"name": "x", "plain": 41}')
        assert res["result"]["greeting"] == "bonjour" and res["result"]["secret"] == secret, res
        assert e.decrypt(res["result"]["enc"]) == "inner secret"  # context.encrypt, app's keys
        assert res["result"]["rt"] == {"a": "x", "n": 2, "b": True}, res  # context.decrypt, typed
        assert res["result"]["tmpClean"] == 0, res  # /tmp is emptied between runs
        # The unpacked code is readable by others whatever the umask (a box started by root
        # runs as a uid of its own).
        code = os.path.join(e.dir, "state", "functions", e.app, "hello")
        ver = sorted(os.listdir(code))[-1]
        assert os.stat(os.path.join(code, ver)).st_mode & 0o777 == 0o755
        assert os.stat(os.path.join(code, ver, "index.js")).st_mode & 0o777 == 0o644
        # The console output is kept with the run record, not in evserver's log.
        rec = e.evctl("function", "run-status", "--app", e.app, "--name", "hello", res["runId"])
        assert any("hello-log-line 41" in l["text"] for l in rec["logs"]), rec
        assert rec["status"] == "success"
        e.evctl("function", "env", "delete", "--app", e.app, "--name", "hello", "--key", "GREETING")
        res = e.evctl("function", "run", "--app", e.app, "--name", "hello", "--data", '{"name": "x"}')
        assert res["result"]["greeting"] is None, res
        # Python, through the API with Basic auth, context.encrypt included.
        e.deploy("pyhello")
        st, _, body = e.run("pyhello", {"name": e.encrypt("Alan")})
        assert st == 200 and body["status"] == "success", body
        assert body["result"]["name"] == "Alan" and body["result"]["lang"] == "python", body
        assert e.decrypt(body["result"]["enc"]) == "py secret"
        # delete: gone for runs and for the list.
        e.evctl("function", "delete", "--app", e.app, "--name", "pyhello")
        assert_error(*e.run("pyhello", {}), 404, "resource-not-found")
        names = {f["name"] for f in e.evctl("function", "list", "--app", e.app)["functions"]}
        assert "pyhello" not in names
        # Secrets and console output never reach evserver's log or store in plaintext: the
        # run records keep what a Function produced sealed with the app's keys.
        e.stop()
        log = e.srv.log()
        assert secret not in log and "hello-log-line" not in log and "py-log-line" not in log
        state = os.path.join(e.dir, "state")
        for root, _, files in os.walk(state):
            if os.path.join(state, "functions") in root:
                continue
            for fn in files:
                with open(os.path.join(root, fn), "rb") as f:
                    data = f.read()
                    for plain in (secret.encode(), b"hello-log-line", b"py-log-line"):
                        assert plain not in data, (fn, plain)
    finally:
        if e.srv.running():
            e.stop()


def test_sdk_run_tokens_async_timeout():
    e = Env()
    try:
        for name in ("hello", "thrower", "slow", "sleepy"):
            e.deploy(name)
        if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@evervault", "sdk")):
            raise evstest.Skip("tests/integration/sdk/node_modules is missing")
        env = dict(os.environ, EV_API_URL="http://127.0.0.1:%d" % e.srv.port("api"), EVS_APP_ID=e.app,
                   EVS_API_KEY=e.key, EVS_FN="hello", EVS_THROW_FN="thrower", EVS_SLOW_FN="slow")
        r = subprocess.run(["node", os.path.join(SDK_DIR, "functions.js")], cwd=SDK_DIR, env=env,
                           capture_output=True, text=True, timeout=120)
        print(r.stdout, end="")
        assert r.returncode == 0, r.stdout + r.stderr
        tokens = json.loads(r.stdout.strip().splitlines()[-1])
        enc = tokens["encryptedName"]
        # RunToken, as the SDK's own e2e test redeems it: the payload decrypted, then single use.
        h = {"Authorization": "RunToken " + tokens["runToken"]}
        st, _, body = e.run("hello", {"name": enc}, headers=h)
        assert st == 200 and body["result"]["name"] == "Claude Shannon", body
        assert_error(*e.run("hello", {"name": enc}, headers=h), 401, "run-token-used-error")
        # Bearer with the docs' curl body (the payload itself); a different payload is refused
        # without using the token up.
        h = {"Authorization": "Bearer " + tokens["bearer"]}
        assert_error(*e.api("POST", "/functions/hello/runs", {"name": "Eve"}, headers=h), 403,
                     "payload-verification-error")
        st, _, body = e.api("POST", "/functions/hello/runs", {"name": "Ada"}, headers=h)
        assert st == 200 and body["result"]["name"] == "Ada", body
        assert_error(*e.run("hello", {"name": "Ada"}, headers=h), 401, "run-token-used-error")
        # A token for one function does not run another; forged and malformed tokens.
        st, _, tok = e.token("hello", {"a": 1})
        assert st == 200 and tok["token"].startswith("rt_"), tok
        assert_error(*e.run("sleepy", {"a": 1}, headers={"Authorization": "RunToken " + tok["token"]}),
                     401, "run-token-validation-error")
        assert_error(*e.run("hello", {"a": 1}, headers={"Authorization": "RunToken rt_" + "A" * 43}), 401,
                     "run-token-validation-error")
        assert_error(*e.run("hello", {"a": 1}, headers={"Authorization": "Bearer nonsense"}), 401,
                     "run-token-validation-error")
        # Expiry (run_token_ttl is 2 s here): a token is refused once its lifetime is over.
        h = {"Authorization": "RunToken " + tokens["mismatch"]}
        time.sleep(TOKEN_TTL + 0.5)  # wall-clock expiry: nothing to poll without using the token
        assert_error(*e.run("hello", {"name": "Ada"}, headers=h), 401, "run-token-expired")
        # A token needs function:create-run-token and an existing function.
        assert_error(*e.token("hello", {}, key=e.encrypt_only), 401, "unauthorized")
        assert_error(*e.token("nope", {}), 404, "resource-not-found")
        # Async: 202 at once, then the status moves to success with the result.
        st, _, body = e.run("sleepy", {"ms": 1500}, headers=dict(e.basic(), **{"X-Async": "true"}))
        assert st == 202 and body["status"] == "queued" and body["runId"].startswith("func_run_"), body
        run_id = body["runId"]
        seen = set()

        def finished():
            s, _, b = e.api("GET", "/functions/sleepy/runs/" + run_id, headers=e.basic())
            assert s == 200, b
            seen.add(b["status"])
            return b if b["status"] not in ("queued", "running") else None
        final = evstest.wait_for(finished, timeout=30, interval=0.1, what="the async run")
        assert final["status"] == "success" and final["result"] == {"waited": 1500}, final
        assert "logs" not in final
        assert_error(*e.api("GET", "/functions/sleepy/runs/func_run_nope", headers=e.basic()), 404,
                     "resource-not-found")
        # An async run past its timeout ends as "timeout".
        st, _, body = e.run("slow", {}, headers=dict(e.basic(), **{"X-Async": "true"}))
        assert st == 202

        def timed_out():
            b = e.api("GET", "/functions/slow/runs/" + body["runId"], headers=e.basic())[2]
            return b if b["status"] not in ("queued", "running") else None
        assert evstest.wait_for(timed_out, timeout=30, what="the async timeout")["status"] == "timeout"
        # A sync timeout answers request-timeout and kills the box: its evs-fnbox is gone.
        before = set(box_pids(e.srv.log()))
        assert_error(*e.run("slow", {}), 408, "request-timeout")
        new = set(box_pids(e.srv.log())) - before
        assert new, "no box was started for the run"
        for pid in new:
            evstest.wait_for(lambda: not os.path.exists("/proc/%d" % pid) or
                             open("/proc/%d/stat" % pid).read().split()[2] == "Z",
                             timeout=10, what="the killed box to go")
        # Activity and counters: runs are recorded, payloads are not.
        act = json.loads(e.srv.admin_get("/function-activity?limit=100").body)
        statuses = {(r["functionName"], r["runStatus"]) for r in act["transactions"]}
        assert ("hello", "success") in statuses and ("slow", "timeout") in statuses, statuses
        assert ("thrower", "failure") in statuses
        assert "Claude" not in json.dumps(act) and enc not in json.dumps(act)
        listed = e.evctl("activity", "--limit", "100")["transactions"]
        assert any(t.get("relay") == "function hello" and t["status"] == 200 for t in listed), listed
        assert any(t.get("relay") == "function slow" and t["status"] == 408 for t in listed), listed
        metrics = e.srv.admin_get("/metrics").body.decode()
        assert re.search(r'plugin="function-runtime",name="function_runs"\} [1-9]', metrics), metrics[-2000:]
        assert 'name="function_runs_timeout"' in metrics
    finally:
        e.stop()


def test_error_codes():
    hook = evstest.Upstream()
    e = Env(alerts=[{"function": "crasher", "type": "webhook", "url": hook.url + "/alerts"}])
    try:
        for name in ("hello", "crasher", "walled", "opened", "stuck", "pyhog", "badload"):
            e.deploy(name)
        st, _, body = e.run("hello", {"name": "Linus"})
        assert st == 200 and body["status"] == "success", body
        # bad-request: no payload member, not JSON.
        assert_error(*e.api("POST", "/functions/hello/runs", {"name": "x"}, headers=e.basic()), 400, "bad-request")
        assert_error(*e.api("POST", "/functions/hello/runs", raw=b"{not json", headers=e.basic()), 400,
                     "bad-request")
        # resource-not-found: no such function.
        assert_error(*e.run("missing", {}), 404, "resource-not-found")
        # unauthorized: no credential, a wrong key, a key of the wrong app, a key without function:run.
        assert_error(*e.run("hello", {}, headers={}), 401, "unauthorized")
        assert_error(*e.run("hello", {}, headers=e.basic(key="ev:key:1:nope")), 401, "unauthorized")
        assert_error(*e.run("hello", {}, headers=e.basic(app="app_000000000000")), 401, "unauthorized")
        assert_error(*e.run("hello", {}, headers=e.basic(key=e.encrypt_only)), 401, "unauthorized")
        # decryption-error: a tampered ev: string.
        enc = e.encrypt("hello there")
        bad = enc[:-6] + ("AAAAAA" if not enc.endswith("AAAAAA") else "BBBBBB")
        assert_error(*e.run("hello", {"name": bad}), 422, "decryption-error")
        # forbidden-ip-error: the inbound allowlist.
        assert_error(*e.run("walled", {}), 403, "forbidden-ip-error")
        st, _, body = e.run("opened", {})
        assert st == 200 and body["result"] == "hi", body
        # internal-error: the handler's process dies mid-run; the next run gets a fresh box.
        assert_error(*e.run("crasher", {}), 500, "internal-error")
        assert_error(*e.run("crasher", {}), 500, "internal-error")
        # The crashes raised function.error alerts with the documented fields.
        hook.wait_requests(1, timeout=15)
        alert = json.loads(hook.requests[0].body)
        for f in ("teamUuid", "errorMessage", "evMessage", "activityLink", "timestamp", "errorType",
                  "statusCode", "statusGroup", "functionUuid", "functionName"):
            assert f in alert, (f, alert)
        assert alert["functionName"] == "crasher" and alert["errorType"] == "internal-error", alert
        assert alert["statusCode"] == 500 and alert["statusGroup"] == "5XX", alert
        assert alert["functionUuid"].startswith("func_"), alert
        # memory_max (1g): a Python box cannot take 4 GiB; the handler fails, the server is fine.
        if not SANITIZED:
            st, _, body = e.run("pyhog", {})
            assert st == 200 and body["status"] == "failure" and "MemoryError" in json.dumps(body["error"]), body
        # A handler module that throws while loading: the run fails with its error (the SDK's
        # FunctionRuntimeError), every time, and nothing else is disturbed.
        for _ in range(2):
            st, _, body = e.run("badload", {})
            assert st == 200 and body["status"] == "failure", body
            assert "cannot load this" in body["error"]["message"], body
        # function-not-ready-error: the box does not become ready within start_timeout.
        assert_error(*e.run("stuck", {}), 503, "function-not-ready-error")
        # The server is still fine.
        st, _, body = e.run("hello", {"name": "Linus"})
        assert st == 200 and body["result"]["name"] == "Linus", body
        # Only the crasher's alerts went to its webhook.
        assert all(json.loads(r.body)["functionName"] == "crasher" for r in hook.requests)
    finally:
        e.stop()
        hook.stop()


def test_warm_pool():
    """pool_max bounds the boxes of a Function (runs beyond wait, none fail); a warm box serves
    the next run without a cold start; idle boxes stop after idle_timeout; a redeploy gets fresh
    boxes. Pre-warming is off: its box would start at the deploy, before the count."""
    e = Env(pool_max=2, idle_timeout="1s", prewarm=False)
    try:
        e.deploy("sleepy")
        e.deploy("hello")
        before = len(box_pids(e.srv.log()))
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            results = list(ex.map(lambda i: e.run("sleepy", {"ms": i}), range(6)))
        assert all(r[0] == 200 and r[2]["status"] == "success" for r in results), results
        assert sorted(r[2]["result"]["waited"] for r in results) == list(range(6))
        pids = box_pids(e.srv.log())[before:]
        assert len(pids) == 2, pids  # six runs, two boxes
        # Warm: back-to-back runs of hello reuse one box.
        n = len(box_pids(e.srv.log()))
        for i in range(5):
            assert e.run("hello", {"name": "n%d" % i})[0] == 200
        assert len(box_pids(e.srv.log())) == n + 1
        # Idle boxes stop after idle_timeout (1 s here): their processes go.
        for pid in box_pids(e.srv.log()):
            evstest.wait_for(lambda: not os.path.exists("/proc/%d" % pid) or
                             open("/proc/%d/stat" % pid).read().split()[2] == "Z",
                             timeout=15, what="idle box %d to stop" % pid)
        act = json.loads(e.srv.admin_get("/function-activity?limit=100").body)["transactions"]
        colds = [t["coldStart"] for t in act if t["functionName"] == "hello"]
        assert colds.count(True) == 1 and colds.count(False) == 4, colds
    finally:
        e.stop()


def test_two_workers():
    """Deployed code and run records are shared through the store: with two workers, runs land
    on either and both unpack the same version once."""
    e = Env(workers=2)
    try:
        e.deploy("hello")
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda i: e.run("hello", {"name": "w%d" % i}), range(12)))
        assert all(r[0] == 200 and r[2]["result"]["name"] == "w%d" % i for i, r in enumerate(results)), results
        st, _, body = e.run("sleepy", {}, headers=dict(e.basic(), **{"X-Async": "true"}))
        assert st == 404  # not deployed here
    finally:
        e.stop()


def concurrent_deploys(nodes, name, n):
    """n deploys of one Function at once, spread over nodes (Envs): their versions."""
    for e in nodes:
        e.deploy(name)  # writes the Function's directory (and deploys once)
    def one(i):
        e = nodes[i % len(nodes)]
        return e.evctl("function", "deploy", "--app", nodes[0].app, cwd=os.path.join(e.fndir, name))

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        outs = list(ex.map(one, range(n)))
    return [o["version"] for o in outs]


def test_concurrent_deploys():
    """Deploys of one Function at the same moment, on two workers, each get a version of their
    own, and the record left is the highest; a deleted Function deployed again goes on from its
    last version (nodes keep unpacked code by version number)."""
    e = Env(workers=2)
    try:
        n = 8
        vers = concurrent_deploys([e], "hello", n)
        assert sorted(vers) == list(range(2, 2 + n)), vers  # one deploy came first
        got = json.loads(e.srv.admin_get("/functions/%s/hello" % e.app).body)
        assert got["version"] == 1 + n, got
        e.evctl("function", "delete", "--app", e.app, "--name", "hello")
        assert e.deploy("hello")["version"] == 2 + n
        st, _, body = e.run("hello", {"name": "again"})
        assert st == 200 and body["result"]["name"] == "again", body
    finally:
        e.stop()


def test_record_read_after_answer():
    """A run's record is in the store when its answer arrives (it is written off the event
    loop, and the answer waits for it): a read right after, on either of two workers, finds
    the final record of a sync run and at least "queued" for an async one."""
    e = Env(workers=2)
    try:
        e.deploy("hello")
        e.deploy("thrower")
        for i in range(20):
            name = "thrower" if i % 4 == 3 else "hello"
            st, _, body = e.run(name, {"name": "r%d" % i})
            assert st == 200, body
            path = "/functions/%s/runs/%s" % (name, body["runId"])
            s, _, rec = e.api("GET", path, headers=e.basic())
            assert s == 200 and rec["status"] == body["status"], (i, s, rec)
            async_h = dict(e.basic(), **{"X-Async": "true"})
            st, _, body = e.run("hello", {"name": "a%d" % i}, headers=async_h)
            assert st == 202, body
            s, _, rec = e.api("GET", "/functions/hello/runs/" + body["runId"], headers=e.basic())
            assert s == 200 and rec["status"] in ("queued", "running", "success"), (i, s, rec)
    finally:
        e.stop()


def counter(e, name):
    metrics = e.srv.admin_get("/metrics").body.decode()
    m = re.search(r'plugin="function-runtime",name="%s"\} (\d+)' % name, metrics)
    return int(m.group(1)) if m else 0


def test_prewarm_every_worker():
    """After a deploy every worker of the node has a warm box of the new version (the deploying
    worker tells the others with a node message), so runs landing on any worker start warm;
    an environment change (a new environment version) warms again."""
    workers = 3
    e = Env(workers=workers, pool_max=2)
    try:
        e.deploy("hello")
        evstest.wait_for(lambda: counter(e, "function_prewarmed") >= workers, timeout=30,
                         what="a warm box in every worker")
        assert counter(e, "function_prewarmed") == workers  # one each, not more
        assert len(box_pids(e.srv.log())) == workers
        cold = counter(e, "function_cold_starts")
        for i in range(15):  # new connections: the workers take turns accepting them
            st, _, body = e.run("hello", {"name": "w%d" % i})
            assert st == 200 and body["result"]["name"] == "w%d" % i, body
        assert counter(e, "function_cold_starts") == cold
        act = json.loads(e.srv.admin_get("/function-activity?limit=100").body)["transactions"]
        colds = [t["coldStart"] for t in act if t["functionName"] == "hello"]
        assert len(colds) == 15 and not any(colds), colds
        assert len(box_pids(e.srv.log())) == workers  # no box started for a run
        e.evctl("function", "env", "set", "--app", e.app, "--name", "hello", "--key", "GREETING",
                "--value", "hi")
        evstest.wait_for(lambda: counter(e, "function_prewarmed") >= 2 * workers, timeout=30,
                         what="warm boxes of the new environment")
        st, _, body = e.run("hello", {"name": "env"})
        assert st == 200 and body["result"]["greeting"] == "hi", body
        assert counter(e, "function_cold_starts") == cold
        assert len(box_pids(e.srv.log())) == 2 * workers
        # A reload replaces every worker: the new ones warm what ran lately.
        e.srv.signal(signal.SIGHUP)
        evstest.wait_for(lambda: counter(e, "function_prewarmed") >= 3 * workers, timeout=30,
                         what="the new workers to warm hello")
        evstest.wait_for(lambda: len(box_pids(e.srv.log())) == 3 * workers, timeout=30,
                         what="the new workers' boxes")
        for i in range(6):
            st, _, body = e.run("hello", {"name": "r%d" % i})
            assert st == 200 and body["result"]["greeting"] == "hi", body
        assert counter(e, "function_cold_starts") == cold
    finally:
        e.stop()


def test_stop_with_runs_in_flight():
    """Stopping the server with async runs in their boxes and runs waiting for a box: the boxes
    are killed, the worker exits cleanly (no crash, nothing left running)."""
    e = Env(pool_max=1)
    try:
        e.deploy("sleepy")
        ids = []
        for i in range(3):
            st, _, body = e.run("sleepy", {"ms": i}, headers=dict(e.basic(), **{"X-Async": "true"}))
            assert st == 202, body
            ids.append(body["runId"])
        evstest.wait_for(lambda: box_pids(e.srv.log()), timeout=10, what="a box")
        pids = box_pids(e.srv.log())
    finally:
        e.stop()
    assert e.srv.returncode == 0, e.srv.returncode
    for pid in pids:
        evstest.wait_for(lambda: not os.path.exists("/proc/%d" % pid) or
                         open("/proc/%d/stat" % pid).read().split()[2] == "Z",
                         timeout=10, what="box %d to go with the server" % pid)
    assert "Sanitizer" not in e.srv.log()


def test_egress():
    """Functions reach the network only through their box's CONNECT proxy: fetch, http.get and
    Python's urllib get through to an allowed destination; the outbound allowlist refuses other
    hosts; without egress_allow_private the node's own loopback services stay out of reach."""
    dest = evstest.Upstream(body=b"from the destination")
    e = Env(egress_allow_private="on")
    try:
        for name in ("fetcher", "getter", "pyfetch", "fenced"):
            e.deploy(name)
        url = "http://127.0.0.1:%d/hello" % dest.port
        for name in ("fetcher", "getter", "pyfetch"):
            st, _, body = e.run(name, {"url": url})
            assert st == 200 and body["result"] == {"status": 200, "body": "from the destination"}, (name, body)
        assert len(dest.requests) == 3 and dest.requests[0].path == "/hello"
        st, _, body = e.run("fenced", {"url": url})
        assert st == 200 and "403" in body["result"]["error"], body
        assert len(dest.requests) == 3
    finally:
        e.stop()
    e = Env()  # egress_allow_private off (the default)
    try:
        e.deploy("fetcher")
        e.deploy("pyfetch")
        for name in ("fetcher", "pyfetch"):
            st, _, body = e.run(name, {"url": "http://127.0.0.1:%d/" % e.srv.port("api")})
            assert st == 200 and "403" in body["result"]["error"], (name, body)
            st, _, body = e.run(name, {"url": "http://localhost:%d/" % dest.port})
            assert st == 200 and "403" in body["result"]["error"], (name, body)
        assert len(dest.requests) == 3
    finally:
        e.stop()
        dest.stop()


def make_wheel(path, name, version, files):
    """A pure-Python wheel, by hand (zip + dist-info), so that pip installs it offline."""
    import zipfile
    info = "%s-%s.dist-info" % (name, version)
    entries = dict(files)
    entries[info + "/METADATA"] = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)
    entries[info + "/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries[info + "/RECORD"] = "".join("%s,,\n" % f for f in list(entries) + [info + "/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in entries.items():
            z.writestr(f, text)


def test_dependencies_are_installed_at_deploy():
    """As the documentation says: a Node.js Function's dependencies come from package.json unless
    it ships node_modules, a Python Function's from requirements.txt. evctl installs them on the
    deploying machine (npm, pip: here from local packages, offline) into what it packs; the
    Function then imports them in its box."""
    if not shutil.which("npm"):
        raise evstest.Skip("npm is not installed")
    if subprocess.run(["python3", "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise evstest.Skip("pip is not installed for python3")
    e = Env()
    try:
        d = os.path.join(e.fndir, "withdeps")
        os.makedirs(os.path.join(d, "vendor", "shout"))
        with open(os.path.join(d, "vendor", "shout", "package.json"), "w") as f:
            json.dump({"name": "shout", "version": "1.0.0", "main": "index.js"}, f)
        with open(os.path.join(d, "vendor", "shout", "index.js"), "w") as f:
            f.write("module.exports = (s) => s.toUpperCase() + '!';\n")
        with open(os.path.join(d, "package.json"), "w") as f:
            json.dump({"name": "withdeps", "version": "1.0.0",
                       "dependencies": {"shout": "file:./vendor/shout"}}, f)
        with open(os.path.join(d, "index.js"), "w") as f:
            f.write("const shout = require('shout');\nexports.handler = async (d) => shout(d.name);\n")
        with open(os.path.join(d, "function.toml"), "w") as f:
            f.write('[function]\nname = "withdeps"\nhandler = "index.handler"\nlanguage = "node@18"\n')
        e.evctl("function", "deploy", "--app", e.app, cwd=d)
        assert not os.path.exists(os.path.join(d, "node_modules")), "installed into the user's directory"
        st, _, body = e.run("withdeps", {"name": "grace"})
        assert st == 200 and body["result"] == "GRACE!", body

        p = os.path.join(e.fndir, "pydeps")
        os.makedirs(os.path.join(p, "vendor"))
        make_wheel(os.path.join(p, "vendor", "titlecase-1.0-py3-none-any.whl"), "titlecase", "1.0",
                   {"titlecase/__init__.py": "def tc(s):\n    return s.title() + ' (from a wheel)'\n"})
        with open(os.path.join(p, "requirements.txt"), "w") as f:
            f.write("# local, offline\n./vendor/titlecase-1.0-py3-none-any.whl\n")
        with open(os.path.join(p, "main.py"), "w") as f:
            f.write("from titlecase import tc\ndef handler(d, context):\n    return tc(d['name'])\n")
        with open(os.path.join(p, "function.toml"), "w") as f:
            f.write('[function]\nname = "pydeps"\nhandler = "main.handler"\nlanguage = "python@3.9"\n')
        e.evctl("function", "deploy", "--app", e.app, cwd=p)
        st, _, body = e.run("pydeps", {"name": "ada lovelace"})
        assert st == 200 and body["result"] == "Ada Lovelace (from a wheel)", body

        # --no-install packs the directory as it is: the import then fails in the box.
        e.evctl("function", "deploy", "--app", e.app, "--no-install", cwd=p)
        st, _, body = e.run("pydeps", {"name": "x"})
        assert body.get("status") != "success", body
        # A failing install stops the deploy with the installer's exit code in the message.
        with open(os.path.join(p, "requirements.txt"), "w") as f:
            f.write("./vendor/missing-1.0-py3-none-any.whl\n")
        rc, _, err = e.evctl("function", "deploy", "--app", e.app, cwd=p, ok=False)
        assert rc != 0 and "pip install failed" in err, err
    finally:
        e.stop()


def test_egress_names_the_connect_host():
    """The egress proxy reads a Function's first bytes: a TLS server name, or a plain request's
    Host, must name the host the tunnel was opened to. An address allowed for one name (a CDN's)
    cannot be asked for another; the same request naming the CONNECT host goes through."""
    ca = evstest.make_ca()
    cert = evstest.make_cert(ca, ["localhost"])
    plain = evstest.Upstream(body=b"plain")
    tls = evstest.Upstream(body=b"tls", tls=cert)
    e = Env(egress_allow_private="on")
    try:
        e.deploy("namer")
        for up, is_tls in ((plain, False), (tls, True)):
            ok = e.run("namer", {"host": "localhost", "port": up.port, "tls": is_tls, "name": "localhost"})
            assert ok[0] == 200 and ok[2]["result"]["status"] == 200, ok
            other = e.run("namer", {"host": "localhost", "port": up.port, "tls": is_tls,
                                    "name": "other.example"})
            assert other[0] == 200 and "error" in other[2]["result"], other
        assert len(plain.requests) == 1 and len(tls.requests) == 1
        evstest.wait_for(lambda: "names another host than the CONNECT" in e.srv.log(),
                         what="the refusal's log line")
    finally:
        e.stop()
        plain.stop()
        tls.stop()


if __name__ == "__main__":
    evstest.main(globals())
