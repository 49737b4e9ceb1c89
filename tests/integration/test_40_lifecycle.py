"""The master's life cycle (core/master.c, core/worker.c, docs/ARCHITECTURE.md): `evserver -t`,
the systemd notify protocol (READY=1, RELOADING=1 with MONOTONIC_USEC, STOPPING=1, WATCHDOG=1
under WATCHDOG_USEC), graceful stop (in-flight requests finish, new connections are refused,
exit 0 within limits.drain_timeout), worker supervision (a killed worker is replaced and the
shared counters carry on), and what /metrics and /status report.

Reloads under load and failed reloads are in test_45_reload.py.
"""

import os
import re
import signal
import socket
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
        # pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == master_pid and fields[0] != "Z":
            out.add(int(d))
    return out


def metrics(srv):
    """GET /metrics as {'name{labels}': value}."""
    r = srv.admin_get("/metrics")
    assert r.status == 200, r
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def relay_get(port, host="app.test", path="/", timeout=5.0):
    raw = send_raw(port, ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                          % (path, host)).encode(), timeout=timeout)
    return parse_response(raw)


def notes_after(srv, index, text):
    """Indexes of notify messages containing text at positions >= index."""
    return [i for i, (_, m) in enumerate(srv.notifications()) if i >= index and text in m]


def refused(port):
    """True when a connection to port is refused (ECONNREFUSED: no listening socket is left).
    False when it is accepted, or reset: a connection that reached the listen queue just before
    the last copy of the listening socket was closed (the master's and the workers' copies go
    at slightly different moments after SIGTERM) is reset by the kernel, and the connect()
    reports ECONNRESET; the socket is then on its way out but that is not yet a refusal."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    s.close()
    return False


# ---- evserver -t ----------------------------------------------------------------------------

def test_config_check_exit_status_and_location():
    cfg = evstest.write_config()
    r = evstest.run_evserver("-t", "-c", cfg.path)
    assert r.returncode == 0, r
    assert "test is successful" in r.stdout, r
    good = cfg.text()
    n = good.count("\n")  # the appended lines start at n + 1
    bad_cases = [
        # (text appended, line of the error relative to the appended block, words expected)
        ("[limits]\nmax_body = 3\n", 2, "unknown key 'max_body'"),
        ("[limits]\nidle_timeout = soon\n", 2, "idle_timeout"),
        ("[limits]\nmax_connections = 10\nmax_connections = 20\n", 3, "already set on line"),
        ('[listener "second"]\naddress = 127.0.0.1:%d\ntls = on\n' % evstest.free_port(), 1,
         "certificate"),
    ]
    for extra, rel_line, words in bad_cases:
        with open(cfg.path, "w") as f:
            f.write(good + extra)
        r = evstest.run_evserver("-t", "-c", cfg.path)
        assert r.returncode == 1, (extra, r)
        where = "%s:%d:" % (cfg.path, n + rel_line)
        assert where in r.stderr, "expected %r in stderr for %r:\n%s" % (where, extra, r.stderr)
        assert words in r.stderr, (words, r.stderr)
        assert "test is successful" not in r.stdout + r.stderr
    # A plugin's own section is checked against its item table, with the same file:line.
    with open(cfg.path, "w") as f:
        f.write(good.replace("base_domain = relay.localhost",
                             "base_domain = relay.localhost\nbase_domian = typo"))
    line = cfg.text().splitlines().index("base_domian = typo") + 1
    r = evstest.run_evserver("-t", "-c", cfg.path)
    assert r.returncode == 1 and "%s:%d:" % (cfg.path, line) in r.stderr, r
    # A missing file is an error too, and names the file.
    r = evstest.run_evserver("-t", "-c", cfg.path + ".missing")
    assert r.returncode == 1 and cfg.path + ".missing" in r.stderr, r


# ---- systemd notify -------------------------------------------------------------------------

def test_sd_notify_ready_reload_watchdog_stop():
    up = Upstream(body=b"A")
    cfg = evstest.write_config(relays={"app.test": {"destinationDomain": up.url}})
    srv = evstest.Server(cfg, notify=True, watchdog_usec=1000000).start()
    pid, msg = srv.wait_notify("READY=1")
    notes = srv.notifications()
    assert "READY=1" in notes[0][1], "the first notification is not READY=1: %r" % notes
    assert pid == srv.pid

    # WATCHDOG=1 at least every WATCHDOG_USEC/2 (0.5 s); counted over 2.5 s with slack.
    start = len(srv.notifications())
    time.sleep(2.5)
    dogs = [n for n in srv.notifications()[start:] if "WATCHDOG=1" in n[1]]
    assert len(dogs) >= 3, "only %d WATCHDOG=1 in 2.5s with WATCHDOG_USEC=1000000: %r" % (
        len(dogs), srv.notifications())

    # SIGHUP: RELOADING=1 (with MONOTONIC_USEC, for Type=notify-reload) ... READY=1.
    mark = len(srv.notifications())
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: [i for i in notes_after(srv, mark, "READY=1")
                              if notes_after(srv, mark, "RELOADING=1")
                              and i > notes_after(srv, mark, "RELOADING=1")[0]],
                     what="READY=1 after RELOADING=1")
    after = srv.notifications()[mark:]
    texts = [m for _, m in after if "WATCHDOG=1" not in m]
    rel = next(i for i, m in enumerate(texts) if "RELOADING=1" in m)
    rdy = next(i for i, m in enumerate(texts) if "READY=1" in m)
    assert rel < rdy, texts
    mono = [m for m in texts[rel:rdy + 1] if "MONOTONIC_USEC=" in m]
    assert mono, "no MONOTONIC_USEC= with the reload: %r" % texts
    usec = int(re.search(r"MONOTONIC_USEC=(\d+)", mono[0]).group(1))
    now = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
    assert abs(now - usec) < 30e6, (usec, now)
    evstest.wait_for(lambda: srv.admin_get("/status").json()["generation"] == 2,
                     what="generation 2")
    assert relay_get(srv.port()).status == 200

    # SIGTERM: STOPPING=1, then a clean exit. No READY=1 after STOPPING=1.
    mark = len(srv.notifications())
    srv.signal(signal.SIGTERM)
    srv.wait_notify("STOPPING=1")
    assert srv.wait(15) == 0
    after = [m for _, m in srv.notifications()[mark:]]
    stop = next(i for i, m in enumerate(after) if "STOPPING=1" in m)
    assert not any("READY=1" in m for m in after[stop:]), after
    # NotifyAccess=main: every message came from the master.
    senders = {p for p, _ in srv.notifications()}
    assert senders == {srv.pid}, "notifications from %r, master is %d" % (senders, srv.pid)


def test_no_watchdog_without_watchdog_usec():
    srv = evstest.start_server(notify=True)
    srv.wait_notify("READY=1")
    time.sleep(1.5)
    assert not [n for n in srv.notifications() if "WATCHDOG=1" in n[1]], srv.notifications()
    assert srv.stop() == 0


# ---- graceful stop --------------------------------------------------------------------------

def test_sigterm_drains_in_flight_request_and_refuses_new_connections():
    up = Upstream(body=b"slow but complete", delay=2.0)
    cfg = evstest.write_config(limits={"drain_timeout": "10s"},
                               relays={"app.test": {"destinationDomain": up.url}})
    srv = evstest.Server(cfg, notify=True).start()
    port = srv.port()
    s = evstest.connect(port, timeout=15)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
    up.wait_requests(1)  # in flight at the destination now
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.wait_notify("STOPPING=1")
    evstest.wait_for(lambda: refused(port), timeout=3,
                     what="new connections to be refused after SIGTERM")
    got = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout) as e:
            raise AssertionError("in-flight request lost during drain: %r after %r" % (e, got))
        if not b:
            break
        got += b
    s.close()
    r = parse_response(got)
    assert (r.status, r.body) == (200, b"slow but complete"), (r, got)
    assert r.header("Connection", "").lower() == "close", r.headers
    assert srv.wait(15) == 0
    took = time.monotonic() - t0
    assert took < 10, "stop took %.1fs, longer than drain_timeout" % took
    assert refused(port)
    assert len(up.requests) == 1


def test_drain_timeout_bounds_stop():
    up = Upstream(body=b"too late", delay=8.0)
    cfg = evstest.write_config(limits={"drain_timeout": "1s"},
                               relays={"app.test": {"destinationDomain": up.url}})
    srv = evstest.Server(cfg).start()
    s = evstest.connect(srv.port(), timeout=15)
    s.sendall(b"GET /slower HTTP/1.1\r\nHost: app.test\r\n\r\n")
    up.wait_requests(1)
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait(15) == 0
    took = time.monotonic() - t0
    # drain_timeout (1 s) passed, then the worker closed the connection: well before the
    # destination's 8 s answer.
    assert 0.8 <= took < 6, "stop took %.2fs with drain_timeout=1s" % took
    try:
        got = s.recv(65536)
    except ConnectionResetError:
        got = b""
    s.close()
    assert not got.startswith(b"HTTP/1.1 200"), got
    assert "drain timeout" in srv.log(), srv.log()


# ---- supervision and counters ---------------------------------------------------------------

def test_killed_worker_is_replaced_and_counters_continue():
    up = Upstream(body=b"A")
    srv = evstest.start_server(server={"workers": 2},
                               relays={"app.test": {"destinationDomain": up.url}})
    pids = evstest.wait_for(lambda: worker_pids(srv.pid) if len(worker_pids(srv.pid)) == 2
                            else None, what="two workers")
    for _ in range(6):
        assert relay_get(srv.port()).status == 200
    for _ in range(3):
        assert relay_get(srv.port(), host="nobody.test").status == 404
    before = metrics(srv)
    relayed = 'evserver_plugin_events_total{plugin="relay-inbound",name="relayed_requests"}'
    assert before[relayed] == 6 and before['evserver_requests_total{code="404"}'] == 3, before

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    evstest.wait_for(lambda: victim not in worker_pids(srv.pid) and
                     len(worker_pids(srv.pid)) == 2, what="a replacement worker")
    evstest.wait_for(lambda: srv.admin_get("/status").json()["workers"] == 2,
                     what="/status to show 2 workers")
    assert re.search(r'"EVS-1603".*worker %d exited unexpectedly' % victim, srv.log()), srv.log()

    for _ in range(4):
        assert relay_get(srv.port()).status == 200
    assert relay_get(srv.port(), host="nobody.test").status == 404
    after = metrics(srv)
    # The killed worker's counts stay in the sum, exactly.
    assert after[relayed] == 10, (before[relayed], after[relayed])
    assert after['evserver_requests_total{code="404"}'] == 4, after
    for k, v in before.items():
        if k.startswith(("evserver_requests_total", "evserver_connections_total",
                         "evserver_request_duration_seconds_count")):
            assert after.get(k, 0) >= v, "%s went from %g to %g" % (k, v, after.get(k, 0))
    assert after["evserver_active_connections"] >= 1  # this /metrics request


def test_metrics_and_status_reflect_requests_and_reloads():
    up = Upstream(body=b"A")
    closed = evstest.free_port()
    srv = evstest.start_server(notify=True, relays={
        "app.test": {"destinationDomain": up.url},
        "down.test": {"destinationDomain": "http://127.0.0.1:%d" % closed}})
    st0 = srv.admin_get("/status").json()
    assert st0["pid"] == srv.pid and st0["workers"] == 1 and st0["generation"] == 1, st0
    assert isinstance(st0["version"], str) and st0["version"], st0
    assert isinstance(st0["uptime_s"], int) and st0["uptime_s"] >= 0, st0
    m0 = metrics(srv)
    for _ in range(4):
        assert relay_get(srv.port()).status == 200
    for _ in range(2):
        assert relay_get(srv.port(), host="nobody.test").status == 404
    r = relay_get(srv.port(), host="down.test")
    assert r.status == 503 and r.header("X-Evervault-Error-Code") == "service-unavailable", r
    m1 = metrics(srv)

    def delta(k):
        return m1.get(k, 0) - m0.get(k, 0)

    # +1 for the first GET /metrics itself, counted once it completed.
    assert delta('evserver_requests_total{code="200"}') == 5, (m0, m1)
    assert delta('evserver_requests_total{code="404"}') == 2
    assert delta('evserver_requests_total{code="503"}') == 1
    assert delta("evserver_request_duration_seconds_count") == 8
    assert delta('evserver_request_duration_seconds_bucket{le="+Inf"}') == 8
    assert delta("evserver_connections_total") == 8  # 7 TCP clients and 1 admin connection
    assert delta('evserver_upstream_errors_total{kind="refused"}') == 1
    assert delta('evserver_plugin_events_total{plugin="relay-inbound",name="relayed_requests"}') == 5
    assert delta('evserver_plugin_events_total{plugin="relay-inbound",name="relay_not_found"}') == 2
    assert m1["evserver_request_duration_seconds_sum"] > m0.get(
        "evserver_request_duration_seconds_sum", 0)
    buckets = [(k, v) for k, v in m1.items()
               if k.startswith("evserver_request_duration_seconds_bucket")]
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), buckets
    assert m1["evserver_reloads_total"] == 0
    st1 = srv.admin_get("/status").json()
    # st0, m0, 7 requests and m1 completed since st0 was rendered.
    assert st1["requests"] - st0["requests"] == 10, (st0, st1)

    for n in (1, 2):
        srv.signal(signal.SIGHUP)
        evstest.wait_for(lambda: len(notes_after(srv, 0, "READY=1")) == n + 1,
                         what="READY=1 after reload %d" % n)
        evstest.wait_for(lambda: srv.admin_get("/status").json()["generation"] == n + 1,
                         what="generation %d in /status" % (n + 1))
        m = metrics(srv)
        assert m["evserver_reloads_total"] == n, m["evserver_reloads_total"]
        # Counters do not reset across generations.
        assert m['evserver_requests_total{code="200"}'] >= m1['evserver_requests_total{code="200"}']
        assert m['evserver_requests_total{code="404"}'] == m1['evserver_requests_total{code="404"}']
    assert srv.admin_get("/status").json()["requests"] > st1["requests"]
    plugins = srv.admin_get("/plugins").json()["plugins"]
    relay = [(p["name"], p["status"]) for p in plugins if p["name"] == "relay-inbound"]
    assert relay == [("relay-inbound", "loaded")], plugins
    assert all(p["status"] == "loaded" for p in plugins), plugins


evstest.main(globals())
