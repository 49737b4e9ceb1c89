"""The enclave plugin with several workers: every worker has its own evserver-enclave, and
`evctl app unlock` / `evctl app lock` (answered by one worker) reach all of them through the
master (ABI node messages). An enclave outlives its worker: the master keeps a spare connection
to it (ABI keep_fd), so a reload's new worker, or the replacement of a crashed one, attaches to
the same enclave and apps unlocked by hand stay unlocked; a reload that changes what an enclave
is started with starts new ones. Also the share store: sealed share 2 lives in a second store
(share_store), never in the state store, and an app cannot be opened with one store alone.

Uses the real $EVS_BUILD_DIR/evserver-enclave, or test_70's protocol stub without it.
"""

import json
import os
import re
import shutil
import signal
import sqlite3

import evstest

import importlib.util

_spec = importlib.util.spec_from_file_location(
    "enclave_api", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "test_70_enclave_api.py"))
E = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(E)

N = 60  # requests per round: enough for both workers to serve some


def config(dir, workers=2, **plugin):
    binary = E.enclave_binary(dir)
    plugin = dict({"enclave_binary": binary, "request_timeout": "3s"}, **plugin)
    return evstest.write_config(dir, listeners={"http": {}, "api": {}},
                                server={"workers": workers}, plugins={"enclave": plugin})


def start(workers=2, **plugin):
    dir = evstest.tmpdir("evs-node-")
    return evstest.Server(config(dir, workers, **plugin)).start(), dir


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def ppid(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rpartition(")")[2].split()[1])


def worker_pids(srv):
    """The master's children that are workers (enclaves whose worker exited become the master's
    children too)."""
    with open("/proc/%d/task/%d/children" % (srv.pid, srv.pid)) as f:
        return [int(x) for x in f.read().split() if comm(int(x)) == "evserver"]


def enclaves(dir):
    """Live evserver-enclave processes started for the server in dir (by their sealing key)."""
    seal = os.path.join(dir, "state", "enclave-seal.key").encode()
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                args = f.read().split(b"\0")
            with open("/proc/%s/stat" % d) as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if args and args[0].endswith(b"evserver-enclave") and seal in args and state != "Z":
            out.add(int(d))
    return out


def edit_conf(srv, old, new):
    with open(srv.config.path) as f:
        text = f.read()
    assert old in text, (old, text)
    with open(srv.config.path, "w") as f:
        f.write(text.replace(old, new, 1))


def reload(srv):
    """SIGHUP; returns once a new generation serves and the old one has exited."""
    old = set(worker_pids(srv))
    n = srv.log().count('"EVS-1612"')
    srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: srv.log().count('"EVS-1612"') > n, timeout=15, what="the reload")
    evstest.wait_for(lambda: not old & set(worker_pids(srv)), timeout=15,
                     what="the old generation to exit")


def enclave_pids(srv):
    """{worker pid: its enclave pid}, from what each live worker logged of the enclave it uses
    last (started, carried over from its predecessor, restarted): the host runs enclaves under
    a shepherd (core/helper.c), so the process tree no longer tells."""
    live = set(worker_pids(srv))
    out = {}
    for r in srv.log_records():
        m = re.match(r"enclave process (?:restarted \(pid )?(\d+)", r.get("msg", ""))
        if m and r.get("plugin") == "enclave" and r.get("pid") in live:
            out[r["pid"]] = int(m.group(1))
    return {w: e for w, e in out.items() if e in enclaves_alive()}


def enclaves_alive():
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit() and comm(int(d)).startswith("evserver-encla"):
            pids.add(int(d))
    return pids


def round_trips(srv, app, key, n=N):
    """n encrypt+decrypt pairs on fresh connections; the statuses seen, per serving worker."""
    hdr = E.basic(app["appId"], key["apiKey"])
    statuses = []
    for i in range(n):
        st, h, body = E.api(srv, "POST", "/encrypt", {"v": "secret-%d" % i, "n": i},
                            headers={"api-key": key["apiKey"]})
        if st != 200:
            assert st == 503 and h.get("x-evervault-error-code") == "service-unavailable", (st, body)
            assert b"secret-" not in body
            statuses.append(st)
            continue
        enc = json.loads(body)
        assert enc["v"].startswith("ev:"), enc
        st, h, body = E.api(srv, "POST", "/decrypt", {"data": enc}, headers=hdr)
        if st == 200:
            assert json.loads(body)["data"] == {"v": "secret-%d" % i, "n": i}, body
        else:
            assert st == 503 and h.get("x-evervault-error-code") == "service-unavailable", (st, body)
        statuses.append(st)
    return statuses


def request_lines(srv):
    """(pid, method, path, status) of every request line (EVS-1100) in the log."""
    out = []
    for r in srv.log_records():
        if r.get("id") == "EVS-1100":
            m, p, st = r["msg"].split()[:3]
            out.append((r["pid"], m, p, int(st)))
    return out


def served_by(srv, path):
    """Worker pids that logged a request line for path."""
    return {pid for pid, _, p, _ in request_lines(srv) if p == path}


def test_unlock_and_lock_reach_every_worker():
    srv, _ = start()
    assert len(worker_pids(srv)) == 2
    evstest.wait_for(lambda: len(enclave_pids(srv)) == 2, what="an enclave per worker")
    # Run by the host as helpers: the exec stage the host loads, then the enclave's own filter.
    for e in enclave_pids(srv).values():
        with open("/proc/%d/status" % e) as f:
            status = f.read()
        assert re.search(r"^Seccomp:\s+2$", status, re.M), status
        assert int(re.search(r"^Seccomp_filters:\s+(\d+)$", status, re.M).group(1)) >= 2, status
        assert comm(ppid(e)) == "evs-helper" and ppid(ppid(e)) == srv.pid
    app, key = E.setup(srv)
    # A new app works in every worker at once (the creating worker fans out the fresh token).
    assert set(round_trips(srv, app, key)) == {200}
    # Lock: no worker can use it.
    out = E.evctl_json(srv, "app", "lock", app["appId"])
    assert out == {"appId": app["appId"], "locked": True, "workers": 2, "workersLocked": 2}, out
    assert set(round_trips(srv, app, key, 20)) == {503}
    # Unlock once, through whichever worker answers the admin socket: all of them can.
    out = E.evctl_json(srv, "app", "unlock", app["appId"], "--token", app["appToken"])
    assert out == {"appId": app["appId"], "unlocked": True, "workers": 2,
                   "workersUnlocked": 2}, out
    assert set(round_trips(srv, app, key)) == {200}
    assert len(served_by(srv, "/decrypt")) == 2, "one worker served every request"
    text = E.evctl(srv, "app", "unlock", app["appId"], stdin=app["appToken"] + "\n").stdout
    assert "unlocked in 2 of 2 workers" in text, text
    # A wrong token changes nothing anywhere.
    r = E.evctl(srv, "app", "unlock", app["appId"], "--token", "evt_wrong", check=False)
    assert r.returncode == 1 and "unauthorized" in r.stderr, r
    assert set(round_trips(srv, app, key, 20)) == {200}
    log = srv.log()
    assert app["appToken"] not in log and key["apiKey"] not in log


def test_unlock_after_server_restart_with_three_workers():
    dir = evstest.tmpdir("evs-node-")
    cfg = config(dir, workers=3)
    srv = evstest.Server(cfg).start()
    app, key = E.setup(srv)
    srv.stop()
    # Nothing kept the token: after a restart the app is locked in all three enclaves.
    srv = evstest.Server(cfg).start()
    evstest.wait_for(lambda: len(enclave_pids(srv)) == 3, what="an enclave per worker")
    assert set(round_trips(srv, app, key, 20)) == {503}
    out = E.evctl_json(srv, "app", "unlock", app["appId"], "--token", app["appToken"])
    assert out["workers"] == 3 and out["workersUnlocked"] == 3, out
    assert set(round_trips(srv, app, key)) == {200}


def test_killed_enclave_comes_back_locked_in_its_worker_only():
    srv, _ = start()
    evstest.wait_for(lambda: len(enclave_pids(srv)) == 2, what="an enclave per worker")
    app, key = E.setup(srv)
    assert set(round_trips(srv, app, key, 20)) == {200}
    before = enclave_pids(srv)
    victim_worker, victim = sorted(before.items())[0]
    os.kill(victim, signal.SIGKILL)
    new = evstest.wait_for(lambda: enclave_pids(srv).get(victim_worker) not in (None, victim)
                           and enclave_pids(srv)[victim_worker], timeout=20,
                           what="the enclave to be restarted")
    # Restarted means it answered HELLO: the worker says so in the log (not a fixed delay).
    evstest.wait_for(lambda: "enclave process restarted (pid %d)" % new in srv.log(), timeout=20,
                     what="the restarted enclave %d to answer its worker" % new)
    # Documented: the restarted enclave has the evctl-unlocked app locked (the token was never
    # kept); the other worker's enclave still has it. Every answer is 200 or a clean 503.
    # Which worker the kernel hands a connection is its choice: rounds go on until both
    # workers have served (a round may land on one worker only).
    served = set()
    for _ in range(20):
        seen = len(request_lines(srv))
        statuses = round_trips(srv, app, key)
        assert set(statuses) <= {200, 503}, statuses
        after = [(pid, st) for pid, _, p, st in request_lines(srv)[seen:] if p == "/encrypt"]
        assert all(st == 503 for pid, st in after if pid == victim_worker), after
        assert all(st == 200 for pid, st in after if pid != victim_worker), after
        served |= {pid == victim_worker for pid, _ in after}
        if served == {True, False}:
            break
    else:
        raise AssertionError("not both workers served a request: %r" % served)
    # One evctl app unlock brings the whole node back.
    out = E.evctl_json(srv, "app", "unlock", app["appId"], "--token", app["appToken"])
    assert out["workersUnlocked"] == 2, out
    assert set(round_trips(srv, app, key)) == {200}


def start_with_app_unlocked_by_hand():
    """Two workers, each with its enclave, and an app that only `evctl app unlock` opened (no
    credential anywhere). Returns the server, its directory, the app, its key and the two
    enclave processes."""
    srv, dir = start()
    evstest.wait_for(lambda: len(enclave_pids(srv)) == 2, what="an enclave per worker")
    app, key = E.setup(srv)
    E.evctl_json(srv, "app", "lock", app["appId"])
    out = E.evctl_json(srv, "app", "unlock", app["appId"], "--token", app["appToken"])
    assert out["workersUnlocked"] == out["workers"] == 2, out
    before = enclaves(dir)
    assert len(before) == 2, before
    return srv, dir, app, key, before


def test_killed_worker_keeps_its_enclave():
    srv, dir, app, key, before = start_with_app_unlocked_by_hand()
    first = worker_pids(srv)
    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    evstest.wait_for(lambda: len(worker_pids(srv)) == 2 and victim not in worker_pids(srv),
                     timeout=10, what="a replacement worker")
    evstest.wait_for(lambda: "carried over" in srv.log(), what="the replacement to attach")
    replacement = set(worker_pids(srv)) - set(first)
    # The replacement attached to the dead worker's enclave: the same two processes, and the app
    # is unlocked everywhere without anyone running evctl app unlock again.
    assert enclaves(dir) == before
    for _ in range(5):
        assert set(round_trips(srv, app, key)) == {200}
        if replacement & served_by(srv, "/decrypt"):
            break
    else:
        raise AssertionError("the replacement worker served no request")


def test_reload_keeps_apps_unlocked_by_hand():
    srv, dir, app, key, before = start_with_app_unlocked_by_hand()
    # Requests go on during three reloads: none fails, none is refused as locked.
    import threading
    stop, results = threading.Event(), []

    def load():
        while not stop.is_set():
            results.extend(round_trips(srv, app, key, 5))

    t = threading.Thread(target=load, daemon=True)
    t.start()
    for _ in range(3):
        reload(srv)
        # Some requests on each new generation before the next reload (not a fixed delay).
        done = len(results)
        evstest.wait_for(lambda: len(results) >= done + 5, timeout=30,
                         what="requests served after the reload")
    stop.set()
    t.join(30)
    assert len(results) >= 20 and set(results) == {200}, (len(results), set(results))
    # The new workers use the enclaves the first generation started, whose shepherds are the
    # master's children.
    assert enclaves(dir) == before
    kids = open("/proc/%d/task/%d/children" % (srv.pid, srv.pid)).read().split()
    assert {ppid(e) for e in before} <= {int(k) for k in kids}, (before, kids)
    assert set(round_trips(srv, app, key)) == {200}
    # Locking still reaches every enclave, and a stop ends them all.
    out = E.evctl_json(srv, "app", "lock", app["appId"])
    assert out["workersLocked"] == 2, out
    assert set(round_trips(srv, app, key, 10)) == {503}
    srv.stop()
    assert not enclaves(dir), "an enclave outlived the server"
    log = srv.log()
    assert app["appToken"] not in log and key["apiKey"] not in log


def test_reload_with_other_enclave_settings_starts_new_enclaves():
    srv, dir, app, key, before = start_with_app_unlocked_by_hand()
    # A credentials directory changes what an enclave is started with: the new workers start
    # their own enclaves (the app is locked in them), and the old ones end.
    creds = evstest.tmpdir("evs-creds-")
    edit_conf(srv, '[plugin "enclave"]\n', '[plugin "enclave"]\ncredentials_dir = %s\n' % creds)
    reload(srv)
    evstest.wait_for(lambda: len(enclaves(dir)) == 2 and not enclaves(dir) & before,
                     what="new enclaves, and the old ones gone")
    assert set(round_trips(srv, app, key, 10)) == {503}
    E.evctl_json(srv, "app", "unlock", app["appId"], "--token", app["appToken"])
    assert set(round_trips(srv, app, key, 10)) == {200}


def test_reload_to_fewer_workers_ends_the_spare_enclave():
    srv, dir, app, key, before = start_with_app_unlocked_by_hand()
    edit_conf(srv, "workers = 2\n", "workers = 1\n")
    reload(srv)
    evstest.wait_for(lambda: len(enclaves(dir)) == 1, what="one enclave left")
    assert enclaves(dir) < before
    assert set(round_trips(srv, app, key, 10)) == {200}


def kv_keys(path):
    con = sqlite3.connect(path)
    try:
        return {(ns, bytes(k).decode()) for ns, k in con.execute("SELECT ns, key FROM evs_kv")}
    finally:
        con.close()


def test_share_store_is_separate_and_required():
    srv, dir = start(workers=1)
    state = os.path.join(dir, "state")
    app, key = E.setup(srv)
    a = app["appId"]
    main_db = os.path.join(state, "evserver.db")
    share_db = os.path.join(state, "share-store", "shares.db")
    assert oct(os.stat(os.path.dirname(share_db)).st_mode & 0o777) == "0o700"
    main = kv_keys(main_db)
    assert ("enclave", "share1/" + a) in main and ("enclave", "share2/" + a) not in main, main
    assert kv_keys(share_db) == {("enclave", "share2/" + a)}
    srv.stop()
    # Only the state store present: the app cannot be opened, with a clear error.
    shutil.move(share_db, share_db + ".away")
    srv = evstest.Server(srv.config).start()
    r = E.evctl(srv, "app", "unlock", a, "--token", app["appToken"], check=False)
    assert r.returncode == 1 and "share store" in r.stderr, r
    assert set(round_trips(srv, app, key, 5)) == {503}
    srv.stop()
    # Only the share store present (share 1 and the wrapped keys gone): no either.
    shutil.move(share_db + ".away", share_db)
    for ext in ("-wal", "-shm"):
        if os.path.exists(share_db + ".away" + ext):
            os.remove(share_db + ".away" + ext)
    shutil.copy(main_db, main_db + ".bak")
    con = sqlite3.connect(main_db)
    con.execute("DELETE FROM evs_kv WHERE ns = 'enclave' AND key IN (?, ?)",
                (("share1/" + a).encode(), ("wrapped/" + a).encode()))
    con.commit()
    con.close()
    srv = evstest.Server(srv.config).start()
    r = E.evctl(srv, "app", "unlock", a, "--token", app["appToken"], check=False)
    assert r.returncode == 1, r
    srv.stop()
    # Both stores: it opens.
    shutil.move(main_db + ".bak", main_db)
    for ext in ("-wal", "-shm"):
        if os.path.exists(main_db + ext):
            os.remove(main_db + ext)
    srv = evstest.Server(srv.config).start()
    E.evctl(srv, "app", "unlock", a, "--token", app["appToken"])
    assert set(round_trips(srv, app, key, 5)) == {200}


def test_share2_migrates_out_of_the_state_store():
    srv, dir = start(workers=2)
    state = os.path.join(dir, "state")
    app, key = E.setup(srv)
    a = app["appId"]
    srv.stop()
    main_db = os.path.join(state, "evserver.db")
    share_db = os.path.join(state, "share-store", "shares.db")
    # As an older evserver left it: share 2 in the state store, no share store.
    con = sqlite3.connect(share_db)
    (v,) = con.execute("SELECT value FROM evs_kv WHERE key = ?", (("share2/" + a).encode(),)).fetchone()
    con.close()
    shutil.rmtree(os.path.dirname(share_db))
    con = sqlite3.connect(main_db)
    con.execute("INSERT INTO evs_kv (ns, key, value) VALUES ('enclave', ?, ?)",
                (("share2/" + a).encode(), v))
    con.commit()
    con.close()
    srv = evstest.Server(srv.config).start()
    evstest.wait_for(lambda: ("enclave", "share2/" + a) not in kv_keys(main_db),
                     what="share 2 to leave the state store")
    assert ("enclave", "share2/" + a) in kv_keys(share_db)
    E.evctl(srv, "app", "unlock", a, "--token", app["appToken"])
    assert set(round_trips(srv, app, key, 20)) == {200}


if __name__ == "__main__":
    evstest.main(globals())
