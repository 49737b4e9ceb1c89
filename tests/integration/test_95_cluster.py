"""Two evserver nodes, one PostgreSQL, HAProxy in front (docs/state.md): everything an app does
works on either node, and a node dying loses nothing the cluster acknowledged.

The setup (cluster() below, also what scripts/demo --cluster starts): a throwaway PostgreSQL 15
(Debian's binaries, unix socket only, run as user postgres when root) holding the state store
(database evs) and the enclave's share store (database evs_shares); two nodes with two workers
each, `[store] backend = postgresql`, the same sealing key (a copy of one 32-byte file per node,
as an operator distributes it) and `config_source = store` for the Inbound Relay; Debian's
HAProxy balancing the relay and API listeners round robin with a TCP health check every 200 ms.

- An app and key created through node A encrypt on B and decrypt on A (and the other way), once
  the app is unlocked on B (per node: docs/state.md, "Unlocking a cluster"); a key revoked on A
  is refused on B within a second; client-side tokens and Functions' run tokens used on one
  node are refused on the other; Functions deployed through A run on both; Outbound Relay
  destinations added on A are served by B.
- `evctl relay push` on A applies on B without touching B's files.
- kill -9 of node A while clients send through HAProxy: once the health check has removed A,
  every request succeeds; every request whose response a client received completely, before
  the kill or after, has its transaction record in PostgreSQL (a response's end waits for its
  record's commit: docs/state.md).
- A response in flight while PostgreSQL is down closes without its end after [store]
  record_timeout, later ones are refused with 503, and the held record is written afterwards.
- PostgreSQL restarted while clients send: the requests that need it (API key checks, and
  relayed requests, whose records it keeps) fail with the documented 503 or succeed, never
  anything else; every relayed request that succeeded has its record; the nodes reconnect on
  their own.

Skipped without PostgreSQL 15's server binaries, HAProxy or the real evserver-enclave.
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException

import evstest

PG_BINDIR = os.environ.get("EVS_PG_BINDIR", "/usr/lib/postgresql/15/bin")
HAPROXY = os.environ.get("EVS_HAPROXY", "/usr/sbin/haproxy")
EV = re.compile(r"ev:[A-Za-z0-9+/=_:-]+:\$")
DOMAIN = "shannon.example"


# ---- PostgreSQL ------------------------------------------------------------------------------

class Postgres:
    """A throwaway PostgreSQL cluster in a temporary directory, on a unix socket only."""

    def __init__(self):
        for b in ("initdb", "pg_ctl", "postgres", "psql"):
            if not os.access(os.path.join(PG_BINDIR, b), os.X_OK):
                raise evstest.Skip("PostgreSQL server binaries not found in %s "
                                   "(apt-get install postgresql-15)" % PG_BINDIR)
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        self.dir = evstest.tmpdir("evs-pg-")
        self.sock = os.path.join(self.dir, "sock")
        os.makedirs(self.sock)
        if self.as_pg:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self._run("initdb", "-D", self.data, "-U", "evs", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self.start()
        evstest.defer(self.stop)
        for db in ("evs", "evs_shares"):
            self.sql("CREATE DATABASE %s" % db)

    def _run(self, binary, *args):
        r = subprocess.run([*self.as_pg, os.path.join(PG_BINDIR, binary), *args], cwd=self.dir,
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError("%s %s: %s%s" % (binary, " ".join(args), r.stdout, r.stderr))
        return r.stdout

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start", "-o",
                  "-c listen_addresses='' -c unix_socket_directories='%s' -c port=5432 "
                  "-c max_connections=200" % self.sock)

    def stop(self, mode="fast"):
        subprocess.run([*self.as_pg, os.path.join(PG_BINDIR, "pg_ctl"), "-D", self.data, "-m",
                        mode, "-w", "stop"], cwd=self.dir, capture_output=True, timeout=120)

    def dsn(self, db="evs"):
        return "host=%s port=5432 user=evs dbname=%s" % (self.sock, db)

    def sql(self, query, db="postgres"):
        return self._run("psql", "-h", self.sock, "-p", "5432", "-U", "evs", "-d", db, "-At",
                         "-v", "ON_ERROR_STOP=1", "-c", query)


# ---- the nodes and HAProxy --------------------------------------------------------------------

def functions_available():
    return (os.access(evstest.build_path("evs-fnbox"), os.X_OK) and
            os.path.exists(evstest.build_path("plugins.d", "function-runtime.so")) and
            shutil.which("node"))


def node(name, pg, seal, enclave, workers=2, log_level="info", relay=None, store=None):
    """A node of the cluster (bench/cluster/run passes the keyword arguments: workers, log
    level, relay-inbound items, a store other than the cluster's)."""
    dir = evstest.tmpdir("evs-%s-" % name)
    # Each node has its own copy of the one sealing key (what an operator distributes).
    key = os.path.join(dir, "enclave-seal.key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, seal)
    os.close(fd)
    creds = os.path.join(dir, "credentials")  # as systemd's $CREDENTIALS_DIRECTORY
    os.mkdir(creds, 0o700)
    plugins = {"enclave": {"enclave_binary": enclave, "seal_key": key, "credentials_dir": creds,
                           "share_store": pg.dsn("evs_shares"), "request_timeout": "3s"},
               "relay-inbound": dict({"config_source": "store", "store_poll_interval": "200ms"},
                                     **(relay or {}))}
    if functions_available():
        plugins["function-runtime"] = {"fnbox_binary": evstest.build_path("evs-fnbox"),
                                       "start_timeout": "5s"}
    cfg = evstest.write_config(
        dir, listeners={"http": {}, "api": {}},
        server={"workers": workers, "log_level": log_level},
        store=store or {"backend": "postgresql", "dsn": pg.dsn()}, plugins=plugins)
    return evstest.Server(cfg).start(timeout=30)


class HAProxy:
    """Debian's HAProxy: one frontend per role (relay, api), round robin over the nodes, a TCP
    health check every 200 ms (two failures: down), and a retry on another node for a request
    whose connection failed."""

    def __init__(self, nodes, ports=None):
        if not os.access(HAPROXY, os.X_OK):
            raise evstest.Skip("%s not found (apt-get install haproxy)" % HAPROXY)
        self.dir = evstest.tmpdir("evs-haproxy-")
        self.ports = dict(zip(("http", "api"), ports or evstest.free_ports(2)))
        self.stats = os.path.join(self.dir, "stats.sock")
        lines = ["global", "  stats socket %s mode 600 level admin" % self.stats,
                 "  maxconn 2000", "defaults", "  mode http", "  timeout connect 1s",
                 "  timeout client 30s", "  timeout server 30s", "  retries 3",
                 "  option redispatch 1", "  retry-on conn-failure empty-response",
                 "  option http-buffer-request"]
        for role, port in self.ports.items():
            lines += ["frontend fe_%s" % role, "  bind 127.0.0.1:%d" % port,
                      "  default_backend be_%s" % role, "backend be_%s" % role,
                      "  balance roundrobin"]
            for i, n in enumerate(nodes):
                lines.append("  server node%s 127.0.0.1:%d check inter 200ms fall 2 rise 2"
                             % ("AB"[i], n.port(role)))
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(self.dir, "haproxy.log"), "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        evstest.defer(self.stop)
        evstest.wait_for(lambda: self.up("be_api") == 2 and self.up("be_http") == 2,
                         timeout=15, what="HAProxy to see both nodes up")

    def stat(self):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(self.stats)
        s.sendall(b"show stat\n")
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        s.close()
        rows = out.decode().splitlines()
        head = rows[0].lstrip("# ").split(",")
        return [dict(zip(head, r.split(","))) for r in rows[1:] if r]

    def up(self, backend):
        if self.proc.poll() is not None:
            with open(self.log.name) as f:
                raise AssertionError("haproxy exited: %s" % f.read())
        try:
            rows = self.stat()
        except OSError:
            return 0  # not listening on its stats socket yet
        return sum(1 for r in rows if r["pxname"] == backend and r["svname"] != "BACKEND"
                   and r["status"].startswith("UP"))

    def url(self, role, path):
        return "http://127.0.0.1:%d%s" % (self.ports[role], path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def cluster(ports=None):
    """PostgreSQL, nodes A and B, HAProxy (on ports (relay, api) if given). scripts/demo
    --cluster starts this too."""
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    pg = Postgres()
    seal = os.urandom(32)
    a = node("a", pg, seal, enclave)
    b = node("b", pg, seal, enclave)
    return pg, a, b, HAProxy([a, b], ports)


# ---- clients ------------------------------------------------------------------------------------

def assert_clean(*nodes):
    """No sanitizer report (ASan builds) in a node's log."""
    for srv in nodes:
        log = srv.log()
        assert "Sanitizer" not in log and "runtime error:" not in log, log[-3000:]


def evctl(srv, *args, stdin=None):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], input=stdin, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout) if r.stdout.strip() else None


def http(url, body=None, headers=None, timeout=10):
    """(status, headers dict lower-case, body bytes); connection errors give status 0."""
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    hdrs = dict({"Content-Type": "application/json"} if data is not None else {}, **(headers or {}))
    req = urllib.request.Request(url, data=data, headers=hdrs,
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
    except (OSError, urllib.error.URLError, HTTPException) as e:
        return 0, {}, str(e).encode()  # a response cut short counts as not received


def api_url(srv, path):
    return srv.url(path, "api")


def basic(app, key):
    return {"Authorization": "Basic " + base64.b64encode(
        ("%s:%s" % (app["appId"], key["apiKey"])).encode()).decode()}


def encrypt(url, key, value):
    st, h, body = http(url, {"v": value}, {"api-key": key["apiKey"]})
    assert st == 200, (url, st, body)
    return json.loads(body)["v"]


def decrypt(url, app, key, ev):
    st, h, body = http(url, {"data": ev}, basic(app, key))
    assert st == 200, (url, st, body)
    return json.loads(body)["data"]


def relay(url_base, path, body, host=DOMAIN):
    return http(url_base + path, body, {"Host": host})


def relays_for(app, up, route="/secure/*"):
    return {DOMAIN: {"destinationDomain": "http://127.0.0.1:%d" % up.port, "appId": app["appId"],
                     "fieldsToEncrypt": [{"route": route, "method": "POST",
                                          "fields": ["$.ssn"]}]}}


def push(srv, relays):
    path = os.path.join(srv.config.dir, "push.json")
    with open(path, "w") as f:
        json.dump(relays, f)
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "relay",
                        "push", "--file", path, "--prune", "--yes"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, (r.stdout, r.stderr)


def setup_app(a, b):
    """An app and key made on A, unlocked on B too (the one step each node needs)."""
    app = evctl(a, "app", "create")
    key = evctl(a, "key", "create", app["appId"], "--permissions", "api:encrypt,api:decrypt")
    out = evctl(b, "app", "unlock", app["appId"], stdin=app["appToken"] + "\n")
    assert out["unlocked"] and out["workers"] == out["workersUnlocked"], out
    return app, key


class Load:
    """Client threads sending Getting Started requests through HAProxy's relay frontend until
    stopped; each result is (finish time, status, request id, error code). The finish time is
    taken once the whole response was read."""

    def __init__(self, ha, up, threads=4):
        self.ha, self.results, self.stopping = ha, [], threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        i = 0
        me = threading.get_ident()
        while not self.stopping.is_set():
            i += 1
            path = "/secure/t%x-%d" % (me, i)
            st, h, body = relay(self.ha.url("http", ""), path,
                                {"name": "Claude Shannon", "ssn": "123-12-1234"})
            with self.lock:
                self.results.append((time.monotonic(), st, path,
                                     h.get("x-evervault-error-code")))

    def count(self):
        with self.lock:
            return len(self.results)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        return list(self.results)


# ---- tests ------------------------------------------------------------------------------------

def test_app_keys_relay_across_nodes():
    pg, a, b, ha = cluster()
    app, key = setup_app(a, b)
    # Encrypt on one node, decrypt on the other, both ways; and through HAProxy.
    ev = encrypt(api_url(a, "/encrypt"), key, "123-12-1234")
    assert EV.fullmatch(ev), ev
    assert decrypt(api_url(b, "/decrypt"), app, key, ev) == "123-12-1234"
    ev = encrypt(api_url(b, "/encrypt"), key, "from b")
    assert decrypt(api_url(a, "/decrypt"), app, key, ev) == "from b"
    for i in range(6):
        ev = encrypt(ha.url("api", "/encrypt"), key, "lb-%d" % i)
        assert decrypt(ha.url("api", "/decrypt"), app, key, ev) == "lb-%d" % i

    # A client-side token made on A and used on B is refused on A (and the other way round):
    # single use across the cluster (the store's atomic take of cstlive/<hash>).
    for maker, user, other in ((a, b, a), (b, a, b)):
        ev = encrypt(api_url(maker, "/encrypt"), key, "4242")
        st, h, body = http(api_url(maker, "/client-side-tokens"),
                           {"action": "api:decrypt", "payload": {"card": ev}}, basic(app, key))
        assert st == 200, (st, body)
        tok = {"Authorization": "Token " + json.loads(body)["token"]}
        st, h, body = http(api_url(user, "/decrypt"), {"data": {"card": ev}}, tok)
        assert st == 200 and json.loads(body) == {"data": {"card": "4242"}}, (st, body)
        st, h, body = http(api_url(other, "/decrypt"), {"data": {"card": ev}}, tok)
        assert st == 401 and json.loads(body)["code"] == "token-used", (st, body)

    # A key revoked on A is refused on A at once and on B within the key cache's second
    # (ENC_KEYCACHE_MS: each worker answers a key it checked less than a second ago without
    # reading the store).
    key2 = evctl(a, "key", "create", app["appId"], "--permissions", "api:encrypt")
    for srv in (a, b, a, b):
        assert http(api_url(srv, "/encrypt"), {"v": 1}, {"api-key": key2["apiKey"]})[0] == 200
    evctl(a, "key", "revoke", app["appId"], key2["keyId"])
    revoked_at = time.monotonic()
    for _ in range(4):
        st, h, body = http(api_url(a, "/encrypt"), {"v": 1}, {"api-key": key2["apiKey"]})
        assert st == 401, (st, body)
    evstest.wait_for(lambda: all(http(api_url(b, "/encrypt"), {"v": 1},
                                      {"api-key": key2["apiKey"]})[0] == 401 for _ in range(4)),
                     timeout=5, what="B to refuse the key revoked on A")
    assert time.monotonic() - revoked_at < 2.0, time.monotonic() - revoked_at

    # A relay pushed on A applies on B: nobody touches B's files or restarts it.
    with evstest.Upstream() as up:
        push(a, relays_for(app, up))
        evstest.wait_for(lambda: all(relay(b.url(""), "/secure/1", {"ssn": "1"})[0] == 200
                                     for _ in range(20)),
                         timeout=10, what="every worker of B to serve the relay pushed on A")
        st, h, body = relay(b.url(""), "/secure/2", {"name": "Claude Shannon", "ssn": "123-12-1234"})
        assert st == 200, (st, body)
        got = up.requests[-1].json()
        assert got["name"] == "Claude Shannon" and EV.fullmatch(got["ssn"]), got
        # The value B encrypted decrypts on A.
        assert decrypt(api_url(a, "/decrypt"), app, key, got["ssn"]) == "123-12-1234"
        # B's relay-config.json is the store's copy now (a restart without the store keeps it).
        with open(b.config.relay_config) as f:
            assert DOMAIN in json.load(f)
        # And a change pushed on B reaches A (a second route).
        relays = relays_for(app, up)
        relays[DOMAIN]["fieldsToEncrypt"].append({"route": "/other", "method": "POST",
                                                  "fields": ["$.card"]})
        push(b, relays)

        def a_encrypts_card():
            st, h, body = relay(a.url(""), "/other", {"card": "4242"})
            return st == 200 and EV.fullmatch(str(up.requests[-1].json().get("card")))
        evstest.wait_for(a_encrypts_card, timeout=10, what="A to apply the relay pushed on B")
    # Outbound Relay destinations added on A are served by every worker of B (its cache
    # follows the store's generation, store_poll_interval).
    okey = evctl(a, "key", "create", app["appId"], "--permissions", "relay:outbound-proxy")
    r = evstest.admin_request(a.config.admin_socket, "POST",
                              "/outbound/%s/destinations" % app["appId"],
                              json.dumps({"id": "pay", "destinationDomain": "pay.example.com",
                                          "fieldsToEncrypt": []}).encode(),
                              {"Content-Type": "application/json"})
    assert r.status in (200, 201), (r.status, r.body)

    def b_serves_pay():
        for _ in range(10):
            st, h, body = http(api_url(b, "/v2/relay-outbound"), headers={"api-key": okey["apiKey"]})
            if st != 200 or "pay" not in json.loads(body)["outboundDestinations"]:
                return False
        return True
    evstest.wait_for(b_serves_pay, timeout=15, what="B to serve the destination added on A")
    for srv in (a, b):
        assert app["appToken"] not in srv.log() and key["apiKey"] not in srv.log()
    assert_clean(a, b)


def deploy(srv, app, name, code):
    d = os.path.join(srv.config.dir, "fn-" + name)
    os.makedirs(d)
    with open(os.path.join(d, "function.toml"), "w") as f:
        f.write('[function]\nname = "%s"\nhandler = "index.handler"\nlanguage = "node@18"\n'
                % name)
    with open(os.path.join(d, "index.js"), "w") as f:
        f.write(code)
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        "function", "deploy", "--app", app["appId"]], cwd=d, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_functions_and_run_tokens_across_nodes():
    if not functions_available():
        raise evstest.Skip("function-runtime, evs-fnbox or node is not available")
    pg, a, b, ha = cluster()
    app, key = setup_app(a, b)
    fkey = evctl(a, "key", "create", app["appId"], "--permissions",
                 "function:run,function:create-run-token,api:encrypt")
    deploy(a, app, "echo", "exports.handler = async (d) => ({ got: d });")
    # Deployed through A, run through HAProxy (both nodes), with an encrypted field that each
    # node's enclave decrypts for the Function.
    ev = encrypt(api_url(b, "/encrypt"), fkey, "123-12-1234")
    for i in range(4):
        st, h, body = http(ha.url("api", "/functions/echo/runs"), {"payload": {"ssn": ev, "i": i}},
                           basic(app, fkey), timeout=60)
        assert st == 200, (st, body)
        out = json.loads(body)
        assert out["result"] == {"got": {"ssn": "123-12-1234", "i": i}}, out
    # A run token made on A and used on A is refused on B, and the other way round.
    for maker, user, other in ((a, a, b), (b, b, a)):
        st, h, body = http(api_url(maker, "/v2/functions/echo/run-token"), {"x": 1},
                           {"api-key": fkey["apiKey"]})
        assert st == 200, (st, body)
        tok = {"Authorization": "RunToken " + json.loads(body)["token"]}
        st, h, body = http(api_url(user, "/functions/echo/runs"), {"payload": {"x": 1}}, tok,
                           timeout=60)
        assert st == 200, (st, body)
        st, h, body = http(api_url(other, "/functions/echo/runs"), {"payload": {"x": 1}}, tok,
                           timeout=60)
        assert st == 401 and json.loads(body)["code"] == "run-token-used-error", (st, body)
    assert_clean(a, b)


def test_unlock_from_credentials_on_every_node():
    """The unattended way (docs/state.md, "Unlocking a cluster"): the app's token as a systemd
    credential on every node; a node that starts unlocks it by itself, no evctl needed."""
    pg, a, b, ha = cluster()
    app = evctl(a, "app", "create")
    key = evctl(a, "key", "create", app["appId"], "--permissions", "api:encrypt,api:decrypt")
    st, h, body = http(api_url(b, "/encrypt"), {"v": 1}, {"api-key": key["apiKey"]})
    assert st == 503 and h.get("x-evervault-error-code") == "service-unavailable", (st, body)
    path = os.path.join(b.config.dir, "credentials", "evserver-app-" + app["appId"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, app["appToken"].encode())
    os.close(fd)
    b.stop()
    b.start(timeout=30)
    # Every worker of B unlocks it from the credential at its enclave's start.
    evstest.wait_for(lambda: all(http(api_url(b, "/encrypt"), {"v": i},
                                      {"api-key": key["apiKey"]})[0] == 200 for i in range(10)),
                     timeout=15, what="B to unlock the app from its credential")
    ev = encrypt(api_url(b, "/encrypt"), key, "from b")
    assert decrypt(api_url(a, "/decrypt"), app, key, ev) == "from b"
    assert app["appToken"] not in b.log()
    assert_clean(a, b)


def test_kill_node_under_load():
    pg, a, b, ha = cluster()
    app, key = setup_app(a, b)
    with evstest.Upstream() as up:
        push(a, relays_for(app, up))
        # Every worker of both nodes follows within store_poll_interval (200 ms here): twenty
        # fresh connections in a row to each node succeed.
        for srv in (a, b):
            evstest.wait_for(lambda: all(relay(srv.url(""), "/secure/0", {"ssn": "1"})[0] == 200
                                         for _ in range(20)),
                             timeout=10, what="every worker of both nodes to serve the relay")
        load = Load(ha, up)
        evstest.wait_for(lambda: load.count() >= 100, timeout=30, what="some load")
        killed_at = time.monotonic()
        a.proc.send_signal(signal.SIGKILL)
        # The master's death takes its workers and enclaves with it (parent-death signals).
        evstest.wait_for(lambda: ha.up("be_http") == 1, timeout=10,
                         what="HAProxy's health check to remove A")
        down_at = time.monotonic()
        n = load.count()
        evstest.wait_for(lambda: load.count() >= n + 200, timeout=60, what="load on B alone")
        results = load.stop()
    before = [r for r in results if r[0] < killed_at]
    window = [r for r in results if killed_at <= r[0] < down_at]
    after = [r for r in results if r[0] >= down_at]
    bad_after = [r for r in after if r[1] != 200]
    print("kill -9 A: %d requests before, %d between the kill and A's removal (%d failed), "
          "%d after (%d failed), %.0f ms to removal"
          % (len(before), len(window), sum(1 for r in window if r[1] != 200), len(after),
             len(bad_after), (down_at - killed_at) * 1000), flush=True)
    assert all(r[1] == 200 for r in before), [r for r in before if r[1] != 200][:5]
    assert not bad_after, bad_after[:5]
    # A response's end leaves only once its transaction record is committed (group commit,
    # core/appendq.c), so every response a client received completely has its record, up to
    # the instant of the kill: each client request had a path of its own, which its record
    # keeps. B is alive, so what it answered after the kill is in as well.
    stored = set(pg.sql("SELECT record::json->>'path' FROM evs_log WHERE record LIKE "
                        "'%/secure/t%'", db="evs").split())
    acked = {r[2] for r in results if r[1] == 200}
    missing = acked - stored
    last = {r[2] for r in before if r[0] >= killed_at - 0.25}
    print("transaction records: %d responses received, %d of them in the 250 ms before the "
          "kill; %d without a record" % (len(acked), len(last), len(missing)), flush=True)
    assert last, "no response in the last 250 ms before the kill: the check proves nothing"
    assert not missing, sorted(missing)[:5]
    assert_clean(b)


def test_postgresql_restart_under_load():
    pg, a, b, ha = cluster()
    app, key = setup_app(a, b)
    up = evstest.Upstream()
    evstest.defer(up.stop)
    push(a, relays_for(app, up))
    for srv in (a, b):
        evstest.wait_for(lambda: all(relay(srv.url(""), "/secure/0", {"ssn": "1"})[0] == 200
                                     for _ in range(20)),
                         timeout=10, what="every worker of both nodes to serve the relay")
    statuses = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            st, h, body = http(ha.url("api", "/encrypt"), {"v": "x"}, {"api-key": key["apiKey"]})
            code = h.get("x-evervault-error-code")
            statuses.append((st, code))
            if st != 200 and not (st == 503 and code == "service-unavailable"):
                statuses.append(("bad", body[:200]))
    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    load = Load(ha, up, threads=2)  # the Inbound Relay, encrypting, at the same time
    evstest.wait_for(lambda: len(statuses) >= 50 and load.count() >= 50, timeout=30,
                     what="some load")
    pg.stop("fast")
    n = len(statuses)
    # Relay clients may be waiting: a response in flight when the database went away waits
    # for its record (up to record_timeout), so only the API's progress is awaited here.
    evstest.wait_for(lambda: len(statuses) >= n + 20, timeout=30,
                     what="API requests while PostgreSQL is down")
    pg.start()
    # The nodes reconnect by themselves: successes again through both.
    evstest.wait_for(lambda: all(s[0] == 200 for s in statuses[-20:]), timeout=30,
                     what="API requests to succeed again")
    stop.set()
    for t in threads:
        t.join(30)
    relayed = load.stop()
    bad = [s for s in statuses if s[0] == "bad"]
    failed = [s for s in statuses if s[0] not in (200, "bad")]
    relay_failed = [r for r in relayed if r[1] != 200]
    print("PostgreSQL restart: %d API requests, %d failed cleanly (%s), %d otherwise; %d relay "
          "requests, %d failed (%s)" % (len(statuses), len(failed), sorted(set(failed)),
                                        len(bad), len(relayed), len(relay_failed),
                                        sorted({r[1] for r in relay_failed})), flush=True)
    assert not bad, bad[:5]
    # A relayed request needs its transaction record committed before its response ends:
    # while the store is away the relay refuses with the documented 503 (before anything
    # reaches the destination), and a response in flight waits for the store's return
    # (at most [store] record_timeout, 10 s, longer than this restart).
    assert all(r[1] in (200, 503) for r in relayed), relay_failed[:5]
    assert all(r[3] == "service-unavailable" for r in relay_failed), relay_failed[:5]
    # Each node answers again. Waited for: the successes above came through HAProxy, and a
    # worker that has not been asked since PostgreSQL came back may still be in its reconnect
    # backoff (up to 1 s), answering the documented 503 until its next attempt.
    for srv in (a, b):
        evstest.wait_for(lambda: http(api_url(srv, "/encrypt"), {"v": "y"},
                                      {"api-key": key["apiKey"]})[0] == 200,
                         timeout=10, what="each node to answer the API again")
    # Every relayed request that succeeded has its record (committed before its response
    # ended, or kept and written once the store came back).
    want = {r[2] for r in relayed if r[1] == 200}

    def missing():
        got = set(pg.sql("SELECT record::json->>'path' FROM evs_log WHERE record LIKE "
                         "'%/secure/t%'", db="evs").split())
        return want - got
    evstest.wait_for(lambda: not missing(), timeout=15,
                     what="every relayed request's transaction record in PostgreSQL")
    # Nothing half-written: the app has all its records.
    for prefix in ("app/", "share1/", "wrapped/"):
        n = pg.sql("SELECT count(*) FROM evs_kv WHERE ns = 'enclave' AND "
                   "convert_from(key, 'UTF8') LIKE '%s%%'" % prefix, db="evs").strip()
        assert n == "1", (prefix, n)
    assert_clean(a, b)


def test_record_timeout_while_postgresql_is_down():
    """A response in flight when the store went away never reaches its end without its record
    ([store] record_timeout: the connection closes first); the requests after it are refused
    up front with the documented 503; the record is written once the store is back."""
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    pg = Postgres()
    seal = os.urandom(32)
    n = node("a", pg, seal, enclave, workers=1,
             store={"backend": "postgresql", "dsn": pg.dsn(), "record_timeout": "500ms"})
    app = evctl(n, "app", "create")
    with evstest.Upstream() as up:
        push(n, relays_for(app, up))
        evstest.wait_for(lambda: relay(n.url(""), "/secure/0", {"ssn": "1"})[0] == 200,
                         timeout=10, what="the relay to serve")
        pg.stop("fast")
        # No batch has failed yet: this request is relayed, and its end waits for its record.
        t0 = time.monotonic()
        st, h, body = relay(n.url(""), "/secure/held", {"ssn": "2"})
        held = time.monotonic() - t0
        assert st == 0, (st, body)  # the connection closed before the response's end
        assert held >= 0.45, held
        # The worker knows the store is away now: refused before anything is relayed.
        hits = len(up.requests)
        st, h, body = relay(n.url(""), "/secure/refused", {"ssn": "3"})
        assert st == 503 and h.get("x-evervault-error-code") == "service-unavailable", (st, body)
        assert len(up.requests) == hits, "a refused request reached the destination"
        pg.start()
        evstest.wait_for(lambda: relay(n.url(""), "/secure/again", {"ssn": "4"})[0] == 200,
                         timeout=20, what="the relay to serve again once PostgreSQL is back")
    stored = set(pg.sql("SELECT record::json->>'path' FROM evs_log", db="evs").split())
    # The unanswered request's record was kept and written; the refused one has its own.
    assert "/secure/held" in stored and "/secure/again" in stored, sorted(stored)
    assert "EVS-1108" in n.log()
    assert_clean(n)


if __name__ == "__main__":
    evstest.main(globals())
