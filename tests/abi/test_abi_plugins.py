"""tests/abi: the real evserver against the deliberately broken plugins of tests/abi/plugins/.

The server runs with plugins_dir = $EVS_BUILD_DIR/abi-plugins.d, which holds one good plugin
(abi-echo) and one specimen of each way a plugin can be rejected. Checked here: the server
starts and keeps serving; each rejection is one error log line (EVS-1401) naming the file, what
was wanted and what was found; GET /plugins on the admin socket lists the rejected plugins with
their reasons; registrations made by a failing init are dropped; abi-echo answers over real
HTTP and its answer proves the service round trips (config, counter, timers, store, events);
and `evserver -t` exits 1 naming the rejected file.

Run by ctest (tests/abi/CMakeLists.txt) with EVS_BUILD_DIR and EVS_SOURCE_DIR set; prints
"N passed, M failed" and exits non-zero when a test failed.
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

SOURCE_DIR = os.environ.get("EVS_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
import evstest  # noqa: E402  (the shared integration helpers)
from evstest import Server, build_path, run_evserver, tmpdir, write_config  # noqa: E402


def _abi_version():
    with open(os.path.join(SOURCE_DIR, "abi", "evserver", "evs_plugin.h")) as f:
        text = f.read()
    major = int(re.search(r"#define EVS_ABI_MAJOR (\d+)", text).group(1))
    minor = int(re.search(r"#define EVS_ABI_MINOR (\d+)", text).group(1))
    return major, minor


MAJOR, MINOR = _abi_version()
PLUGIN_DIR = build_path("abi-plugins.d")
ECHO_HOST = "abi-echo.test"

# Configuration sections: abi-echo's values are echoed back; the two bad-config specimens each
# get a section the host must refuse (an unknown key; a value out of range).
SECTIONS = {
    "abi-echo": {"greeting": '"hello, tests"', "tick": "20ms", "flag": True},
    "abi-bad-key": {"colour": "blue"},
    "abi-bad-value": {"limit": 1000},
}

# Each rejected file: (what the line must say was wanted, what it must say was found).
REJECTED = {
    "abi-bad-magic.so": (r"wanted 0x50535645", r"found 0x4b4c4f47"),
    "abi-bad-major.so": (r"major.*wanted %d\b" % MAJOR, r"found %d\b" % (MAJOR + 1)),
    "abi-newer-minor.so": (r"wanted minor <= %d\b" % MINOR, r"found %d\.%d\b" % (MAJOR, MINOR + 1)),
    "abi-truncated.so": (r"wanted at least \d+ bytes", r"found 12\b"),
    "abi-no-descriptor.so": (r"wanted a plugin declared with EVS_PLUGIN_DEFINE",
                             r"no 'evs_plugin_entry' symbol"),
    "abi-init-fails.so": (r"see the plugin's log", r"init failed \(-22\b"),
    "abi-bad-key.so": (r"known keys: limit, window", r"unknown key 'colour'"),
    "abi-bad-value.so": (r"expected an integer in \[1, 100\]", r"got '1000'"),
    # The file exists but is text: the loader's error (in parentheses) must say so.
    "bad.so": (r"wanted (an ELF |a )?shared object", r"\([^)]*ELF[^)]*\)"),
}
# -t validates descriptors and configuration in the master, then initialises every plugin once
# in a child process (the master itself runs no plugin code), so an init failure shows there too.
REJECTED_BY_CHECK = sorted(REJECTED)


def path_of(file):
    return os.path.join(PLUGIN_DIR, file)


def start(plugins_dir=PLUGIN_DIR, sections=None, **config):
    for f in list(REJECTED) + ["abi-echo.so"]:
        assert os.path.exists(path_of(f)), "%s missing: build first (cmake --build)" % path_of(f)
    cfg = write_config(server={"plugins_dir": plugins_dir},
                       plugins=SECTIONS if sections is None else sections, **config)
    return Server(cfg).start()


def get(server, path, method="GET", host=ECHO_HOST, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port(), timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def echo(server, path, method="GET", body=None):
    status, headers, data = get(server, path, method, body=body)
    assert status == 200, "abi-echo answered %d: %r" % (status, data)
    assert headers.get("Content-Type") == "application/json", headers
    return json.loads(data)


# ---- the server runs --------------------------------------------------------------------------

def test_server_runs_beside_rejected_plugins():
    s = start()
    assert s.admin_get("/status").status == 200
    status, _, _ = get(s, "/", host="nothing.test")
    assert status == 404, status
    time.sleep(0.2)
    assert s.running(), "evserver exited"


def test_master_runs_no_plugin_code():
    # Opening a plugin runs its constructors; the master (the node's supervisor, root in
    # production) checks descriptors in a child process and never opens one itself.
    log = os.path.join(tmpdir(), "ctor.log")
    cfg = write_config(server={"plugins_dir": PLUGIN_DIR}, plugins=SECTIONS)
    s = Server(cfg, env={"ABI_ECHO_CTOR_LOG": log}).start()
    echo(s, "/ctor")  # a worker has loaded abi-echo and served with it
    with open(log) as f:
        pids = [int(x) for x in f.read().split()]
    assert pids, "abi-echo's constructor never ran"
    assert s.pid not in pids, "the master (pid %d) opened a plugin: %r" % (s.pid, pids)


# ---- rejections: the log and /plugins ---------------------------------------------------------

def test_each_rejection_is_one_log_line():
    s = start()
    lines = s.log().splitlines()
    problems = []
    for file, (wanted, found) in sorted(REJECTED.items()):
        path = path_of(file)
        naming = [l for l in lines if path in l]
        if len(naming) != 1:
            problems.append("%s: %d log lines name it, wanted exactly 1:\n    %s"
                            % (file, len(naming), "\n    ".join(naming)))
            if not naming:
                continue
        try:
            rec = json.loads(naming[-1])
        except ValueError:
            problems.append("%s: its log line is not JSON: %s" % (file, naming[-1]))
            continue
        if rec.get("id") != "EVS-1401" or rec.get("level") != "error":
            problems.append("%s: wanted an error line with id EVS-1401, got %r" % (file, rec))
        msg = rec.get("msg", "")
        for what, pattern in (("wanted", wanted), ("found", found)):
            if not re.search(pattern, msg):
                problems.append("%s: the line does not say what was %s (/%s/): %s"
                                % (file, what, pattern, msg))
        if "file not found" in msg:
            problems.append("%s: the line says 'file not found' but the file exists: %s"
                            % (file, msg))
    if "init ran although the configuration was invalid" in s.log():
        problems.append("init of a plugin with an invalid configuration section ran")
    assert not problems, "\n".join(problems)


def test_admin_lists_rejected_plugins_with_reasons():
    s = start()
    r = s.admin_get("/plugins")
    assert r.status == 200, r
    plugins = {p["file"]: p for p in r.json()["plugins"]}
    problems = []
    for file, (wanted, found) in sorted(REJECTED.items()):
        p = plugins.get(path_of(file))
        if not p:
            problems.append("%s not listed: %s" % (file, sorted(plugins)))
            continue
        if p.get("status") != "rejected":
            problems.append("%s: status %r, wanted rejected" % (file, p.get("status")))
        reason = p.get("reason") or ""
        if not re.search(found, reason):
            problems.append("%s: reason lacks /%s/: %r" % (file, found, reason))
        if "file not found" in reason:
            problems.append("%s: reason says 'file not found' but the file exists: %r"
                            % (file, reason))
    good = plugins.get(path_of("abi-echo.so"))
    if not good or good.get("status") != "loaded" or good.get("name") != "abi-echo":
        problems.append("abi-echo not listed as loaded: %r" % good)
    elif "reason" in good:
        problems.append("a loaded plugin has a reason: %r" % good)
    elif good.get("version") != "1.0.0":
        problems.append("abi-echo version %r, wanted 1.0.0" % good.get("version"))
    if len(plugins) != len(REJECTED) + 1:
        problems.append("wanted %d plugins listed, got %d" % (len(REJECTED) + 1, len(plugins)))
    assert not problems, "\n".join(problems)


def test_failed_init_registrations_are_dropped():
    s = start()
    status, headers, body = get(s, "/", host="abi-init-fails.test")
    assert status == 404, "the hook of a failed init answered: %d %r" % (status, body)
    assert headers.get("X-Evervault-Error-Code") == "relay-not-found", headers
    # The plugin's own error line reached the log, and the host's line came after it.
    log = s.log()
    own = log.find("refusing to start (deliberately, for tests/abi)")
    host = log.find(path_of("abi-init-fails.so"))
    assert 0 <= own < host, "wanted the plugin's line before the host's rejection line"


# ---- the good plugin over real HTTP -------------------------------------------------------------

def test_echo_answers_with_service_round_trips():
    s = start()
    a = echo(s, "/hello/world?x=1")
    assert (a["method"], a["path"], a["query"]) == ("GET", "/hello/world", "x=1"), a
    assert a["greeting"] == "hello, tests", a          # config_string (quotes removed)
    assert a["tick_ms"] == 20 and a["flag"] is True, a  # config_int (DURATION), config_bool
    assert a["timer"] == "fired", a                     # one-shot timer_start / timer_free
    assert a["store"] == "GET /hello/world" and a["store_ok"] is True, a  # store_put, store_get
    assert a["event_type"] == "abi-echo.request", a     # emit_event -> subscribe_events
    assert json.loads(a["event_json"]) == {"seq": a["seq"]}, a
    assert a["events"] >= 1, a

    b = echo(s, "/second", method="DELETE")
    assert (b["method"], b["path"], b["seq"]) == ("DELETE", "/second", a["seq"] + 1), b
    assert b["store"] == "DELETE /second" and b["store_ok"] is True, b
    assert b["logged"] >= 1, "the LOG hook did not see the first request: %r" % b
    # The repeating timer keeps ticking between requests.
    time.sleep(0.15)
    c = echo(s, "/third", method="POST", body=b"ignored")
    assert c["ticks"] > b["ticks"], (b["ticks"], c["ticks"])

    # counter_add reaches /metrics.
    metrics = s.admin_get("/metrics").text
    m = re.search(r'^evserver_plugin_events_total\{plugin="abi-echo",name="echo_requests"\} (\d+)$',
                  metrics, re.M)
    assert m and int(m.group(1)) == 3, "echo_requests counter: %r" % (m and m.group(0))


def test_echo_with_curl():
    curl = shutil.which("curl")
    if not curl:
        raise evstest.Skip("curl is not installed")
    s = start()
    out = subprocess.run([curl, "-sS", "--max-time", "10", "-H", "Host: " + ECHO_HOST,
                          "-w", "\n%{http_code}", s.url("/via/curl?y=2")],
                         capture_output=True, text=True, timeout=20)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", (out.stdout, out.stderr)
    a = json.loads(body)
    assert a["path"] == "/via/curl" and a["query"] == "y=2" and a["store_ok"] is True, a


def test_stop_frees_a_request_the_plugin_still_holds():
    # abi-echo answers after a timer, the store and an event; ?delay= holds that back. When the
    # drain timeout closes a request whose answer is still pending, the host frees the request
    # and must tell the plugin so (the free_fn given to request_set_data) before fini, and the
    # stop must not wait for the plugin's timer.
    s = start(limits={"drain_timeout": "200ms"})
    c = socket.create_connection(("127.0.0.1", s.port()), timeout=10)
    try:
        c.sendall(b"GET /slow?delay=5000 HTTP/1.1\r\nHost: abi-echo.test\r\n\r\n")
        time.sleep(0.2)  # the hook ran; its timer is pending
        started = time.monotonic()
        rc = s.stop()
        assert rc == 0, "evserver exited with %r" % rc
        assert time.monotonic() - started < 5, "stop waited for the plugin's 5s timer"
        assert c.recv(65536) == b"", "a response arrived for a request closed at stop"
    finally:
        c.close()
    log = s.log()
    assert "1 request(s) freed before their answer" in log, \
        "abi-echo's free_fn did not run before fini:\n" + log[-3000:]
    for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert bad not in log, "sanitizer report in the log:\n" + log[-5000:]


# ---- evserver -t --------------------------------------------------------------------------------

def _check(files, sections):
    d = tmpdir("evs-abi-t-")
    for f in files:
        os.symlink(path_of(f), os.path.join(d, f))
    cfg = write_config(server={"plugins_dir": d}, plugins=sections)
    return run_evserver("-c", cfg.path, "-t"), d


def test_check_exits_1_naming_a_rejected_plugin():
    cfg = write_config(server={"plugins_dir": PLUGIN_DIR}, plugins=SECTIONS)
    r = run_evserver("-c", cfg.path, "-t")
    assert r.returncode == 1, "exit %d\n%s" % (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert any(path_of(f) in last and "rejected" in last for f in REJECTED_BY_CHECK), \
        "the final error names no rejected plugin file: %r" % last


def test_check_rejects_each_specimen_alone():
    problems = []
    for f in REJECTED_BY_CHECK:
        name = f[:-3]
        r, d = _check([f], {name: SECTIONS[name]} if name in SECTIONS else {})
        path = os.path.join(d, f)
        if r.returncode != 1:
            problems.append("%s: -t exited %d, wanted 1" % (f, r.returncode))
        elif not any(path in l and "rejected" in l for l in r.stderr.splitlines()):
            problems.append("%s: -t did not name %s:\n%s" % (f, path, r.stderr))
    r, _ = _check(["abi-echo.so"], {"abi-echo": SECTIONS["abi-echo"]})
    if r.returncode != 0:
        problems.append("abi-echo alone: -t exited %d:\n%s" % (r.returncode, r.stderr))
    r, _ = _check(["abi-init-fails.so"], {})
    if "failed to initialise" not in r.stderr:
        problems.append("abi-init-fails alone: -t should report the failed initialisation:\n%s"
                        % r.stderr)
    assert not problems, "\n".join(problems)


def test_section_for_a_plugin_that_is_not_there_is_fatal():
    # The counterpart of the rejected-plugin case: a section naming no plugin file at all is a
    # configuration error even for a running server.
    r, _ = _check(["abi-echo.so"], {"abi-echo": {}, "abi-missing": {}})
    assert r.returncode == 1 and "abi-missing" in r.stderr, (r.returncode, r.stderr)


if __name__ == "__main__":
    evstest.main(globals())
