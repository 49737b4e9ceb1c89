"""evctl against a fake admin API: a small http.server on a Unix socket in this process answers
the way evserver's admin listener does (and, on purpose, the ways it must not), so evctl's
flags, output, colour rules, HTTP framing and error handling are checked without the server.
The last test runs evctl against the real evserver when it is built.
"""

import json
import os
import pty
import select
import socket
import socketserver
import subprocess
import threading
import time
import http.server

import evstest

STATUS = {"version": "0.1.0", "pid": 4242, "workers": 2, "generation": 3, "uptime_s": 3725,
          "connections": 7, "requests": 123456}
PLUGINS = {"plugins": [
    {"name": "relay-inbound", "version": "0.1.0", "description": "Inbound Relay proxy",
     "file": "/usr/lib/evserver/plugins.d/relay-inbound.so", "status": "loaded", "reason": ""},
    {"name": "broken-abi", "version": "9.9.9", "description": "built for another host",
     "file": "/usr/lib/evserver/plugins.d/broken-abi.so", "status": "rejected",
     "reason": "ABI major version 2, this evserver has 1: rebuild the plugin"},
]}
ESC = b"\x1b"


class FakeAdmin:
    """A threaded HTTP/1.1 server on a Unix socket. routes maps a path to a callable(handler)
    that writes the answer, or to (status, obj) sent as JSON. requests records (method, path,
    headers) of everything received."""

    def __init__(self, routes):
        self.dir = evstest.tmpdir("evs-ctl-")
        self.path = os.path.join(self.dir, "admin.sock")
        self.routes = routes
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.requests.append((self.command, self.path, dict(self.headers.items())))
                route = fake.routes.get(self.path)
                if route is None:
                    route = (404, {"status": 404, "code": "not-found", "title": "Not Found",
                                   "detail": "no such admin resource", "message": "Not Found"})
                if callable(route):
                    route(self)
                    return
                status, obj = route
                send_json(self, status, obj)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(self.path, Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def send_json(h, status, obj, headers=()):
    body = json.dumps(obj).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    for k, v in headers:
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def fake(routes=None):
    f = FakeAdmin(routes if routes is not None else {"/status": (200, STATUS),
                                                      "/plugins": (200, PLUGINS)})
    evstest.defer(f.stop)
    return f


def base_env(**extra):
    """The environment without anything that changes evctl's defaults, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "EV_NO_COLOR", "EVSERVER_ADMIN_SOCKET", "TERM")}
    env.update(extra)
    return env


def evctl(*args, env=None, timeout=30):
    """Runs evctl with stdout and stderr as pipes; returns CompletedProcess (bytes)."""
    return subprocess.run([evstest.build_path("evctl"), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, env=env or base_env())


def evctl_pty(*args, env=None, timeout=30):
    """Runs evctl with stdout on a pseudo-terminal (so it believes a person is watching);
    returns (exit status, bytes written to the terminal)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([evstest.build_path("evctl"), *args], stdin=subprocess.DEVNULL,
                             stdout=slave, stderr=subprocess.DEVNULL,
                             env=env or base_env(TERM="xterm-256color"))
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    b = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
                if not b:
                    break
                out += b
            elif p.poll() is not None:
                break
    finally:
        os.close(master)
    return p.wait(timeout), out


def check_one_json_object(out, expected):
    text = out.decode()
    obj = json.loads(text)  # the whole of stdout is one JSON document
    assert obj == expected, "evctl printed %r, the server sent %r" % (obj, expected)


# ---- output ---------------------------------------------------------------------------------

def test_status_json_equals_what_the_server_sent():
    f = fake()
    r = evctl("--socket", f.path, "--json", "status")
    assert r.returncode == 0, r
    check_one_json_object(r.stdout, STATUS)
    assert r.stderr == b"", r.stderr


def test_plugins_json_equals_what_the_server_sent():
    f = fake()
    r = evctl("plugins", "--json", "--socket", f.path)  # global flags anywhere
    assert r.returncode == 0, r
    check_one_json_object(r.stdout, PLUGINS)


def test_json_keeps_fields_evctl_does_not_know():
    extra = dict(STATUS, future_field={"nested": [1, 2]}, ratio=0.5)
    f = fake({"/status": (200, extra)})
    r = evctl("--socket", f.path, "--json", "status")
    assert r.returncode == 0, r
    check_one_json_object(r.stdout, extra)


def test_status_human():
    f = fake()
    r = evctl("--socket", f.path, "status")
    assert r.returncode == 0, r
    out = r.stdout.decode()
    for s in ("evserver 0.1.0", "pid", "4242", "workers", "generation", "uptime", "1h 2m 5s",
              "connections", "requests", "123456"):
        assert s in out, "%r not in:\n%s" % (s, out)
    assert ESC not in r.stdout


def test_plugins_human_lists_names_and_reasons():
    f = fake()
    r = evctl("--socket", f.path, "plugins")
    assert r.returncode == 0, r
    out = r.stdout.decode()
    for s in ("NAME", "STATUS", "relay-inbound", "broken-abi", "loaded", "rejected",
              "ABI major version 2", "broken-abi.so", "1 loaded, 1 rejected"):
        assert s in out, "%r not in:\n%s" % (s, out)
    lines = out.splitlines()
    header = lines[0]
    # Aligned columns: every row's STATUS starts where the header's does.
    col = header.index("STATUS")
    for line in lines[1:3]:
        assert line[col:].startswith(("loaded", "rejected")), lines


def test_no_plugins():
    f = fake({"/plugins": (200, {"plugins": []})})
    r = evctl("--socket", f.path, "plugins")
    assert r.returncode == 0 and b"No plugins" in r.stdout, r


def test_socket_from_environment_and_flag_precedence():
    f = fake()
    r = evctl("--json", "status", env=base_env(EVSERVER_ADMIN_SOCKET=f.path))
    assert r.returncode == 0, r
    check_one_json_object(r.stdout, STATUS)
    r = evctl("--socket", f.path, "--json", "status",
              env=base_env(EVSERVER_ADMIN_SOCKET="/nonexistent/admin.sock"))
    assert r.returncode == 0, r


def test_request_is_http11_with_connection_close():
    f = fake()
    assert evctl("--socket", f.path, "status").returncode == 0
    method, path, headers = f.requests[-1]
    assert (method, path) == ("GET", "/status")
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers.get("connection") == "close" and "host" in headers, headers
    assert headers.get("user-agent", "").startswith("evctl/"), headers


# ---- colour ---------------------------------------------------------------------------------

def test_colour_on_a_terminal_by_default():
    # The positive control for the tests below: on a terminal, with nothing disabling it,
    # evctl does colour.
    f = fake()
    rc, out = evctl_pty("--socket", f.path, "plugins")
    assert rc == 0 and b"relay-inbound" in out, (rc, out)
    assert ESC in out, out


def test_no_color_flag_and_variables_disable_colour_on_a_terminal():
    f = fake()
    cases = [(("--no-color",), {}), ((), {"NO_COLOR": "1"}), ((), {"EV_NO_COLOR": "1"}),
             ((), {"TERM": "dumb"})]
    for args, env in cases:
        for cmd in ("plugins", "status"):
            rc, out = evctl_pty("--socket", f.path, *args, cmd,
                                env=base_env(**dict({"TERM": "xterm"}, **env)))
            assert rc == 0 and len(out) > 20, (args, env, rc, out)
            assert ESC not in out, "colour with %r %r: %r" % (args, env, out)


def test_empty_no_color_does_not_disable_colour():
    # no-color.org: only a non-empty NO_COLOR counts.
    f = fake()
    rc, out = evctl_pty("--socket", f.path, "status",
                        env=base_env(TERM="xterm", NO_COLOR="", EV_NO_COLOR=""))
    assert rc == 0 and ESC in out, out


def test_no_colour_when_piped():
    f = fake()
    for cmd in ("status", "plugins"):
        r = evctl("--socket", f.path, cmd, env=base_env(TERM="xterm"))
        assert r.returncode == 0 and ESC not in r.stdout, r.stdout


def test_server_text_cannot_drive_the_terminal():
    # A plugin's description is the plugin author's text: escape sequences in it must not
    # reach the terminal, coloured or not.
    evil = {"plugins": [{"name": "evil\x1b]0;owned\x07", "version": "1\x9b2J",
                         "description": "clear\x1b[2J screen", "file": "/x.so",
                         "status": "rejected", "reason": "bad\x1b[31m reason\r\n"}]}
    f = fake({"/plugins": (200, evil)})
    rc, out = evctl_pty("--socket", f.path, "--no-color", "plugins",
                        env=base_env(TERM="xterm"))
    assert rc == 0 and b"evil" in out, out
    assert ESC not in out and b"\x9b" not in out and b"\x07" not in out, out
    rc, out = evctl_pty("--socket", f.path, "plugins")
    assert rc == 0
    assert b"\x1b]0;" not in out and b"\x1b[2J" not in out and b"\x07" not in out, out


# ---- errors ---------------------------------------------------------------------------------

def test_missing_socket_is_a_clear_error():
    d = evstest.tmpdir()
    path = os.path.join(d, "admin.sock")
    for extra in ((), ("--json",)):
        r = evctl("--socket", path, *extra, "status")
        assert r.returncode == 1, r
        assert r.stderr.decode() == ("evctl: cannot connect to %s: No such file or directory "
                                     "(is evserver running?)\n" % path), r.stderr
        assert r.stdout == b"", r.stdout


def test_default_socket_path_is_named():
    r = evctl("status")
    if os.path.exists("/run/evserver/admin.sock"):
        raise evstest.Skip("an evserver is running on this machine")
    assert r.returncode == 1, r
    assert b"evctl: cannot connect to /run/evserver/admin.sock: " in r.stderr, r.stderr


def test_refused_connection():
    d = evstest.tmpdir()
    path = os.path.join(d, "admin.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # bound but not listening: connect() is refused
    try:
        r = evctl("--socket", path, "status")
    finally:
        s.close()
    assert r.returncode == 1, r
    assert b"Connection refused (is evserver running?)" in r.stderr, r.stderr


def test_silent_server_times_out():
    d = evstest.tmpdir()
    path = os.path.join(d, "admin.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)  # accepted by the kernel, never answered
    try:
        started = time.monotonic()
        r = evctl("--socket", path, "status", timeout=20)
        took = time.monotonic() - started
    finally:
        s.close()
    assert r.returncode == 1, r
    assert b"timed out after 5s" in r.stderr, r.stderr
    assert took < 15, took


def test_http_error_reports_detail_and_code():
    err = {"status": 503, "code": "server-draining", "title": "Service Unavailable",
           "detail": "the server is shutting down", "message": "Service Unavailable"}
    f = fake({"/status": lambda h: send_json(h, 503, err,
                                             [("X-Evervault-Error-Code", "server-draining")])})
    r = evctl("--socket", f.path, "status")
    assert r.returncode == 1 and r.stdout == b"", r
    msg = r.stderr.decode()
    assert "503" in msg and "the server is shutting down" in msg and "server-draining" in msg, msg
    r = evctl("--socket", f.path, "--json", "status")
    assert r.returncode == 1, r
    check_one_json_object(r.stdout, err)


def test_error_without_json_body():
    def plain(h):
        h.send_response(500)
        h.send_header("Content-Length", "13")
        h.end_headers()
        h.wfile.write(b"it broke\nbadly")
    f = fake({"/status": plain})
    r = evctl("--socket", f.path, "status")
    assert r.returncode == 1 and b"500" in r.stderr and b"it broke" in r.stderr, r


def test_unknown_path_404():
    f = fake({})
    r = evctl("--socket", f.path, "plugins")
    assert r.returncode == 1 and b"404" in r.stderr and b"no such admin resource" in r.stderr, r


def raw(data):
    """A route that writes data as the whole answer and closes the connection."""
    def write(h):
        h.wfile.write(data)
        h.wfile.flush()
        h.close_connection = True
    return write


def test_chunked_close_delimited_and_interim_responses():
    body = json.dumps(STATUS).encode()
    half = len(body) // 2
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" +
               b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n"
               % (half, body[:half], len(body) - half, body[half:]))
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + body
    interim = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
               b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    lf_only = b"HTTP/1.0 200 OK\nContent-Length: %d\n\n%s" % (len(body), body)
    for name, data in (("chunked", chunked), ("close", until_close), ("interim", interim),
                       ("lf", lf_only)):
        f = fake({"/status": raw(data)})
        r = evctl("--socket", f.path, "--json", "status")
        assert r.returncode == 0, (name, r)
        check_one_json_object(r.stdout, STATUS)


def test_malformed_responses_are_errors():
    body = json.dumps(STATUS).encode()
    cases = {
        "garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
        "empty": b"",
        "truncated head": b"HTTP/1.1 200 OK\r\nContent-Len",
        "short body": b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n" + body,
        "bad length": b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n" + body,
        "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n{}{}",
        "bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "unfinished chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
        "not json": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "json array": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        "huge length": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    }
    for name, data in cases.items():
        f = fake({"/status": raw(data)})
        r = evctl("--socket", f.path, "--json", "status")
        assert r.returncode == 1, (name, r)
        assert r.stderr.startswith(b"evctl: ") and r.stdout == b"", (name, r)


def test_plugins_answer_without_list_is_an_error():
    f = fake({"/plugins": (200, {"nope": 1})})
    r = evctl("--socket", f.path, "plugins")
    assert r.returncode == 1 and b"plugins" in r.stderr, r


# ---- usage ----------------------------------------------------------------------------------

def test_usage_errors_exit_2():
    f = fake()
    for args in ((), ("frobnicate",), ("--frobnicate", "status"), ("status", "extra"),
                 ("status", "--bogus"), ("--socket",), ("--socket=", "status")):
        r = evctl(*args, env=base_env(EVSERVER_ADMIN_SOCKET=f.path))
        assert r.returncode == 2, (args, r)
        assert r.stderr and r.stdout == b"", (args, r)
    assert not f.requests, "a usage error must not reach the server"


def test_command_options_share_one_parser():
    # Every command's options go through evctl_parse_opts: the same errors everywhere, and
    # none of them reaches the server.
    f = fake()
    app = "app_0123456789ab"
    cases = (
        (("function", "run", "--app", app, "--app", app), b"given twice"),
        (("function", "env", "--secret=yes"), b"takes no value"),
        (("outbound", "list", "--all"), b"unknown option"),
        (("key", "create", app, "--permissions"), b"needs a value"),
        (("relay", "push", "extra"), b"unexpected argument"),
        (("encrypt", app), b"missing argument"),
        (("activity", "--limit", "1", "--limit", "2"), b"given twice"),
    )
    for args, why in cases:
        r = evctl(*args, env=base_env(EVSERVER_ADMIN_SOCKET=f.path))
        assert r.returncode == 2 and why in r.stderr, (args, r)
    assert not f.requests, "a usage error must not reach the server"


def test_help_and_version():
    r = evctl("--help")
    assert r.returncode == 0 and b"Usage: evctl" in r.stdout, r
    for word in (b"status", b"plugins", b"--socket", b"--json", b"--no-color", b"NO_COLOR"):
        assert word in r.stdout, word
    r = evctl("plugins", "--help")
    assert r.returncode == 0 and b"evctl [flags] plugins" in r.stdout, r
    r = evctl("--version")
    assert r.returncode == 0 and r.stdout.startswith(b"evctl "), r


def test_closed_stdout_is_an_error():
    f = fake()
    with open("/dev/full", "wb") as full:
        p = subprocess.run([evstest.build_path("evctl"), "--socket", f.path, "plugins"],
                           stdout=full, stderr=subprocess.PIPE, env=base_env(), timeout=30)
    assert p.returncode == 1 and b"standard output" in p.stderr, p


# ---- against the real server ----------------------------------------------------------------

def test_against_evserver():
    if not os.path.exists(evstest.build_path("evserver")):
        raise evstest.Skip("evserver is not built")
    if not os.path.exists(evstest.build_path("plugins.d", "relay-inbound.so")):
        raise evstest.Skip("the relay-inbound plugin is not built")
    srv = evstest.start_server()
    sock = srv.config.admin_socket
    r = evctl("--socket", sock, "--json", "status")
    assert r.returncode == 0, r
    st = json.loads(r.stdout)
    for key in ("version", "pid", "workers", "generation", "uptime_s", "connections", "requests"):
        assert key in st, (key, st)
    assert st["pid"] == srv.pid, (st, srv.pid)
    r = evctl("--socket", sock, "--json", "plugins")
    assert r.returncode == 0, r
    plugins = {p["name"]: p for p in json.loads(r.stdout)["plugins"]}
    assert plugins.get("relay-inbound", {}).get("status") == "loaded", plugins
    r = evctl("--socket", sock, "plugins")
    assert r.returncode == 0 and b"relay-inbound" in r.stdout, r
    assert srv.stop() == 0


evstest.main(globals())
