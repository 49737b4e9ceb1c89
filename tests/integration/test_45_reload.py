"""Reload (SIGHUP, core/master.c reload()): under continuous load no request may fail, a changed
relay-config.json takes effect once the old generation is gone, and an invalid configuration
keeps the running one (docs/ARCHITECTURE.md, "Reload").

What counts as a failed request in the load test (every one is listed on failure):
  - connect refused or reset, a TLS handshake error, a send error;
  - the connection closing (cleanly or not) after the client sent a request and before the
    complete response arrived - even for an idempotent GET a client could retry: the proxy
    promises no lost requests, so a retry must not be needed;
  - a timeout, a status other than 200, or a body that is not one of the destinations' bodies.
Not a failure: a keep-alive connection the server closed while the client had sent nothing on
it yet (seen as EOF by a zero-timeout poll just before sending; the client then reconnects).
With continuous load no keep-alive connection is idle for the 1 s drain grace, so these should
not even occur; their count is printed.

A draining worker keeps a keep-alive connection whose last response went out without
`Connection: close` (its head left before the drain began) open for the client's next request,
and answers that one with `Connection: close` (core/server.c conn_after_response);
test_keepalive_response_straddling_reload_is_not_cut checks it deterministically, and the load
test counts any request that meets a closed connection there as a failure like any other.
"""

import collections
import http.client
import json
import os
import re
import select
import signal
import socket
import ssl
import threading
import time

import evstest
from evstest import Upstream, parse_response, send_raw


# ---- helpers --------------------------------------------------------------------------------

def worker_pids(master_pid):
    """The pids of the master's live child processes (its workers), from /proc."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == master_pid and fields[0] != "Z":
            out.add(int(d))
    return out


def write_relays(cfg, relays):
    tmp = cfg.relay_config + ".tmp"
    with open(tmp, "w") as f:
        json.dump(relays, f)
    os.replace(tmp, cfg.relay_config)


def relay_get(port, host="app.test", timeout=5.0):
    raw = send_raw(port, ("GET /r HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                          % host).encode(), timeout=timeout)
    return parse_response(raw)


def ready_count(srv):
    return sum("READY=1" in m for _, m in srv.notifications())


def reload_and_wait(srv, expect_ready):
    """SIGHUP, then wait for the master's READY=1 and for every worker of the previous
    generation to exit. Returns (time of SIGHUP, time the old generation was gone)."""
    old = worker_pids(srv.pid)
    t = time.monotonic()
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: ready_count(srv) >= expect_ready, timeout=15,
                     what="READY=1 number %d" % expect_ready)
    evstest.wait_for(lambda: not (old & worker_pids(srv.pid)), timeout=15,
                     what="the old generation %s to exit" % sorted(old))
    return t, time.monotonic()


def metric(srv, name):
    m = re.search(r"^%s (\d+)$" % re.escape(name), srv.admin_get("/metrics").text, re.M)
    return int(m.group(1)) if m else None


# ---- load -----------------------------------------------------------------------------------

Result = collections.namedtuple(
    "Result", "thread started finished body err reused prev_close prev_finished")
Result.__doc__ = """One request of the load: body (None on failure), err (None on success),
reused (sent on a kept-alive connection), prev_close (the previous response on that connection
said Connection: close), prev_finished (when that response ended)."""


class Load:
    """Client threads hammering relay app.test until stop(): keep-alive http.client connections
    (plain and TLS) and one-request connections (plain and TLS); results are Result records."""

    BODIES = (b"A", b"B")

    def __init__(self, port, tls_port):
        self.port, self.tls_port = port, tls_port
        self.results, self.presend_closes = [], 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ctx = ctx
        kinds = [("keepalive-1", True, False), ("keepalive-2", True, False),
                 ("keepalive-tls", True, True), ("fresh", False, False),
                 ("fresh-tls", False, True)]
        self.threads = [threading.Thread(target=self._run, args=k, daemon=True) for k in kinds]
        for t in self.threads:
            t.start()

    def _conn(self, tls):
        if tls:
            return http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=10,
                                               context=self.ctx)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _closed_before_send(self, sock):
        """True if the server closed this idle connection (EOF waiting) before we sent."""
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        if isinstance(sock, ssl.SSLSocket):
            sock.setblocking(False)
            try:
                data = sock.recv(1)
            except ssl.SSLWantReadError:
                return False
            except (ssl.SSLError, OSError):
                return True
            finally:
                sock.settimeout(10)
        else:
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                return True
        if data:
            raise AssertionError("unsolicited bytes on an idle connection: %r" % data)
        return True

    def _run(self, name, keepalive, tls):
        conn = None
        n = 0
        prev_close, prev_finished = False, 0.0
        while not self._stop.is_set():
            n += 1
            if conn is None:
                conn = self._conn(tls)
            elif conn.sock is not None:
                try:
                    if self._closed_before_send(conn.sock):
                        with self._lock:
                            self.presend_closes += 1
                        conn.close()
                except AssertionError as e:
                    self._record(Result(name, time.monotonic(), time.monotonic(), None, str(e),
                                        True, False, 0.0))
                    conn.close()
            reused = keepalive and conn.sock is not None
            started = time.monotonic()
            body = err = None
            close_hdr = False
            try:
                headers = {"Host": "app.test", "X-Load": "%s-%d" % (name, n)}
                if not keepalive:
                    headers["Connection"] = "close"
                conn.request("GET", "/load/%s/%d" % (name, n), headers=headers)
                resp = conn.getresponse()
                close_hdr = "close" in (resp.getheader("Connection") or "").lower()
                data = resp.read()
                if resp.status != 200 or data not in self.BODIES:
                    err = "status %d body %r" % (resp.status, data[:200])
                else:
                    body = data
            except Exception as e:  # noqa: BLE001 - every error is a failed request here
                err = "%s: %s" % (type(e).__name__, e)
            finished = time.monotonic()
            self._record(Result(name, started, finished, body, err, reused,
                                prev_close if reused else False,
                                prev_finished if reused else 0.0))
            prev_close, prev_finished = close_hdr, finished
            if err or not keepalive:
                conn.close()
                conn = None
        if conn:
            conn.close()

    def _record(self, result):
        with self._lock:
            self.results.append(result)

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(20)
            assert not t.is_alive(), "a client thread is stuck"


def test_reload_under_load_loses_no_request_and_switches_relay():
    ca = evstest.make_ca()
    cert = evstest.make_cert(ca, ["localhost", "127.0.0.1"])
    up_a, up_b = Upstream(body=b"A"), Upstream(body=b"B")
    relays_a = {"app.test": {"destinationDomain": up_a.url}}
    relays_b = {"app.test": {"destinationDomain": up_b.url}}
    cfg = evstest.write_config(
        server={"workers": 2}, relays=relays_a,
        listeners={"http": {}, "https": {"tls": True, "certificate": cert.cert,
                                         "key": cert.key}})
    srv = evstest.Server(cfg, notify=True).start()
    srv.wait_notify("READY=1")
    evstest.wait_for(lambda: len(worker_pids(srv.pid)) == 2, what="two workers")

    load = Load(srv.port("http"), srv.port("https"))
    try:
        time.sleep(0.8)
        # (relays written before the reload, body expected once the old generation is gone)
        plan = [(None, b"A"), (relays_b, b"B"), (None, b"B"), (relays_a, b"A")]
        windows = []   # (sighup time, old generation gone, expected body)
        for i, (relays, want) in enumerate(plan):
            if relays is not None:
                write_relays(cfg, relays)
            hup, gone = reload_and_wait(srv, expect_ready=i + 2)
            windows.append((hup, gone, want))
            time.sleep(0.7)
        time.sleep(0.3)
    finally:
        load.stop()
    end = time.monotonic()

    results = load.results
    failures = [r for r in results if r.err]
    print("load: %d requests, %d failed, %d keep-alive closes before sending"
          % (len(results), len(failures), load.presend_closes))
    assert not failures, "%d of %d requests failed during reloads, first ones:\n%s" % (
        len(failures), len(results),
        "\n".join("  %s at +%.3fs (reused=%s, previous response Connection: close=%s): %s"
                  % (r.thread, r.started - results[0].started, r.reused, r.prev_close, r.err)
                  for r in failures[:15]))
    per_thread = collections.Counter(r.thread for r in results)
    assert len(per_thread) == 5 and min(per_thread.values()) >= 20, per_thread
    # Requests were in flight while reloads happened (otherwise this tested nothing).
    spanning = sum(1 for hup, _, _ in windows for r in results if r.started < hup < r.finished)
    during = sum(1 for hup, gone, _ in windows for r in results if hup <= r.started <= gone)
    assert spanning + during >= len(windows), (spanning, during)

    # The relay change took effect: a request started after the old generation was gone gets
    # the new destination, until the next reload starts.
    bounds = [w[0] for w in windows[1:]] + [end]
    for (hup, gone, want), until in zip(windows, bounds):
        seen = [r.body for r in results if not r.err and gone < r.started and r.finished < until]
        assert seen, "no requests between reload at %.2f and %.2f" % (hup, until)
        wrong = [b for b in seen if b != want]
        assert not wrong, "after the reload expecting %r, %d of %d requests got %r" % (
            want, len(wrong), len(seen), set(wrong))
    before_switch = [r.body for r in results if not r.err and r.finished < windows[1][0]]
    assert before_switch and set(before_switch) == {b"A"}, set(before_switch)
    assert len(up_b.requests) > 0

    assert metric(srv, "evserver_reloads_total") == 4
    assert srv.admin_get("/status").json()["generation"] == 5
    evstest.wait_for(lambda: len(worker_pids(srv.pid)) == 2, what="two workers after reloads")
    assert len(re.findall(r'"EVS-1612"', srv.log())) == 4, srv.log()
    assert srv.stop() == 0


class SplitUpstream:
    """A raw HTTP/1.1 destination that sends a response head at once and its 4-byte body only
    when release() is called (for paths containing /hold; others get the body at once), so a
    test can start a response before a reload and finish it after."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._release = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()
        evstest.defer(self.stop)

    def release(self):
        self._release.set()

    def stop(self):
        self._release.set()
        self.sock.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
                if b"/hold" in head.split(b"\r\n")[0]:
                    self._release.wait(20)
                c.sendall(b"body")
        except OSError:
            pass
        finally:
            c.close()


def test_keepalive_response_straddling_reload_is_not_cut():
    """A response whose head left before SIGHUP (so it promised keep-alive) ends after the old
    worker began draining; the client then sends its next request on that connection at once,
    well inside the documented 1 s idle grace. It must get a complete response (with
    Connection: close), not a closed connection."""
    up = SplitUpstream()
    srv = evstest.Server(evstest.write_config(
        relays={"app.test": {"destinationDomain": up.url}}), notify=True).start()
    s = evstest.connect(srv.port(), timeout=5)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: app.test\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        d = s.recv(4096)
        assert d, "closed before the first response head: %r" % got
        got += d
    assert b"connection: close" not in got.lower(), got
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: ready_count(srv) >= 2, what="READY=1 after the reload")
    evstest.wait_for(lambda: "draining (reload)" in srv.log(), what="the old worker to drain")
    up.release()
    while not got.endswith(b"body"):
        d = s.recv(4096)
        assert d, "the first response was cut: %r" % got
        got += d
    first = parse_response(got)
    assert (first.status, first.body) == (200, b"body"), got
    # The next request, immediately: the connection was promised to stay open.
    second = b""
    try:
        s.sendall(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
        while True:
            d = s.recv(4096)
            if not d:
                break
            second += d
    except (ConnectionResetError, BrokenPipeError):
        pass
    s.close()
    assert second, "the draining worker closed the promised keep-alive connection: no bytes"
    r = parse_response(second)
    assert (r.status, r.body) == (200, b"body"), second
    assert r.header("Connection", "").lower() == "close", r.headers


def test_reload_rotates_certificate_and_moves_listener():
    """Certificate rotation and a changed listener address take effect on reload; the old
    address refuses connections once the old generation is gone: no process keeps the old
    listening socket (the new workers must not inherit it at fork)."""
    ca = evstest.make_ca()
    old_cert = evstest.make_cert(ca, ["rot.test"], cn="rot.test old")
    new_cert = evstest.make_cert(ca, ["rot.test"], cn="rot.test new")
    up = Upstream(body=b"A")
    cfg = evstest.write_config(
        relays={"rot.test": {"destinationDomain": up.url}},
        listeners={"http": {}, "https": {"tls": True, "certificate": old_cert.cert,
                                         "key": old_cert.key}})
    srv = evstest.Server(cfg, notify=True).start()
    verify = ssl.create_default_context(cafile=ca.cert)

    def served_cn():
        with evstest.connect(srv.port("https"), tls=verify, server_hostname="rot.test") as t:
            cert = t.getpeercert()
        return dict(kv for rdn in cert["subject"] for kv in rdn)["commonName"]

    assert served_cn() == "rot.test old"
    old_port = srv.port("http")
    new_port = evstest.free_port()
    text = cfg.text().replace(old_cert.cert, new_cert.cert).replace(
        old_cert.key, new_cert.key).replace("127.0.0.1:%d" % old_port, "127.0.0.1:%d" % new_port)
    with open(cfg.path, "w") as f:
        f.write(text)
    reload_and_wait(srv, expect_ready=2)
    assert served_cn() == "rot.test new"
    r = relay_get(new_port, host="rot.test")
    assert (r.status, r.body) == (200, b"A"), r
    try:
        raw = send_raw(old_port, b"GET /r HTTP/1.1\r\nHost: rot.test\r\nConnection: close\r\n\r\n",
                       timeout=2)
    except ConnectionRefusedError:
        return
    raise AssertionError("the old listener address still accepts connections after the reload "
                         "(a stale listening socket), answer %r" % raw[:80])


def test_invalid_config_reload_keeps_running_configuration():
    up_a, up_b = Upstream(body=b"A"), Upstream(body=b"B")
    cfg = evstest.write_config(relays={"app.test": {"destinationDomain": up_a.url}})
    srv = evstest.Server(cfg, notify=True).start()
    srv.wait_notify("READY=1")
    workers = worker_pids(srv.pid)
    good = cfg.text()
    # A broken evserver.conf, and a relay change that must not be picked up with it.
    with open(cfg.path, "w") as f:
        f.write(good + "\n[limits]\nmax_body = 25m\n")
    bad_line = cfg.text().splitlines().index("max_body = 25m") + 1
    write_relays(cfg, {"app.test": {"destinationDomain": up_b.url}})
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: ready_count(srv) >= 2, what="READY=1 after the failed reload")
    assert any("reload failed" in m for _, m in srv.notifications()), srv.notifications()
    evstest.wait_for(lambda: "EVS-1610" in srv.log(), what="the reload failure log line")
    log = srv.log()
    assert "%s:%d:" % (cfg.path, bad_line) in log and "max_body" in log, log
    assert "keeping the running configuration" in log, log

    time.sleep(0.3)
    assert worker_pids(srv.pid) == workers, "a new generation started on an invalid config"
    for _ in range(3):
        r = relay_get(srv.port())
        assert (r.status, r.body) == (200, b"A"), (r, r.body)
    st = srv.admin_get("/status").json()
    assert st["generation"] == 1, st
    assert metric(srv, "evserver_reloads_total") == 0

    # Fixed: the next reload applies everything, including the relay change.
    with open(cfg.path, "w") as f:
        f.write(good)
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: ready_count(srv) >= 3, what="READY=1 after the good reload")
    evstest.wait_for(lambda: not (workers & worker_pids(srv.pid)), what="old generation exit")
    r = relay_get(srv.port())
    assert (r.status, r.body) == (200, b"B"), (r, r.body)
    assert metric(srv, "evserver_reloads_total") == 1


def test_invalid_relay_config_reload_keeps_running_relays():
    """A reload with an invalid relay-config.json is refused: the error (file:line:column) is
    logged, the old generation keeps serving the old relays, and `evserver -t` rejects the
    same configuration."""
    up_a = Upstream(body=b"A")
    cfg = evstest.write_config(relays={"app.test": {"destinationDomain": up_a.url}})
    srv = evstest.Server(cfg, notify=True).start()
    srv.wait_notify("READY=1")
    workers = worker_pids(srv.pid)
    with open(cfg.relay_config, "w") as f:
        f.write('{"app.test": {"destinationDomain": ')  # truncated: a syntax error
    check = evstest.run_evserver("-t", "-c", cfg.path)
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: ready_count(srv) >= 2, what="READY=1 after the reload")
    evstest.wait_for(lambda: "relay-config.json:1:" in srv.log(),
                     what="the relay-config.json error (file:line:column) in the log")
    time.sleep(0.5)
    r = relay_get(srv.port())
    assert (r.status, r.body) == (200, b"A"), (r, r.body)
    assert worker_pids(srv.pid) == workers
    assert check.returncode == 1 and "relay-config.json" in check.stderr, check


def test_reload_with_unloadable_certificate_keeps_serving():
    """A reload whose certificate file cannot be loaded is refused: the old generation keeps
    serving, the log names the file, and `evserver -t` rejects the same configuration."""
    ca = evstest.make_ca()
    cert = evstest.make_cert(ca, ["localhost"])
    up_a = Upstream(body=b"A")
    cfg = evstest.write_config(
        relays={"app.test": {"destinationDomain": up_a.url}},
        listeners={"http": {}, "https": {"tls": True, "certificate": cert.cert,
                                         "key": cert.key}})
    srv = evstest.Server(cfg, notify=True).start()
    srv.wait_notify("READY=1")
    text = cfg.text().replace(cert.cert, os.path.join(cfg.dir, "missing.crt"))
    with open(cfg.path, "w") as f:
        f.write(text)
    check = evstest.run_evserver("-t", "-c", cfg.path)
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: ready_count(srv) >= 2, what="READY=1 after the reload")
    time.sleep(0.5)
    try:
        r = relay_get(srv.port(), timeout=3)
    except evstest.Incomplete as e:
        raise AssertionError("no worker serves after a reload with an unloadable certificate "
                             "(no answer within 3s: %s)" % e)
    assert (r.status, r.body) == (200, b"A"), (r, r.body)
    assert "missing.crt" in srv.log()
    assert check.returncode == 1 and "missing.crt" in check.stderr, check


evstest.main(globals())
