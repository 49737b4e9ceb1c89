"""evstest: the helpers evserver's integration tests share (Python standard library only).

Each tests/integration/test_*.py is a plain script that ctest runs as `python3 <file>` with
EVS_BUILD_DIR and EVS_SOURCE_DIR in the environment (tests/integration/
CMakeLists.txt). It defines test_* functions and ends with `evstest.main(globals())`, which runs
them in order and prints "N passed, M failed". What is here:

- ports and files:   free_port, free_ports, tmpdir, wait_for, defer
- the server:        write_config -> Config; Server (start/stop/signal/log/admin_get);
                     start_server (both at once); run_evserver (one-shot runs such as -t)
- a destination:     Upstream, a threaded recording HTTP(S) server; Request, what it recorded
                     RawUpstream, a plain-TCP one that keeps every byte it receives and
                     reads requests strictly (RawRequest, RawConnection)
- certificates:      make_ca, make_cert (a throwaway CA and leaf certificates via `openssl`)
- raw HTTP:          connect, send_raw (bytes in, bytes out), recv_responses and wait_closed
                     (for a socket kept open), parse_response, parse_responses,
                     Response; admin_get / admin_request over the admin Unix socket
- running:           main, Skip

Ports come from the kernel and stay reserved for the rest of the test, so no other process can
take one between its choice and the server's bind (free_ports says how). Waits poll for the
condition awaited (wait_for, wait_requests, wait_notify) with a generous deadline, never a
fixed sleep. Servers and upstreams started by a test are stopped after it, and a failed test prints the log
of every server it started. Temporary directories live under /tmp (Unix socket paths must stay
short) and are removed at exit unless EVS_KEEP_TMP=1.
"""

import collections
import hashlib
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

__all__ = [
    "SOURCE_DIR", "BUILD_DIR", "build_path", "Skip", "main", "tmpdir", "wait_for",
    "defer",
    "free_port", "free_ports", "Config", "write_config", "Server", "ServerError", "start_server",
    "run_evserver", "Upstream", "Request", "Cert", "make_ca", "make_cert", "connect", "send_raw",
    "Response", "Incomplete", "parse_response", "parse_responses", "admin_get", "admin_request",
    "RawUpstream", "RawRequest", "RawConnection", "recv_responses", "wait_closed",
]

SOURCE_DIR = os.environ.get("EVS_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("EVS_BUILD_DIR") or None


def build_path(*parts):
    """A path inside the build directory; fails clearly when EVS_BUILD_DIR is not set."""
    if not BUILD_DIR:
        raise RuntimeError("EVS_BUILD_DIR is not set: run the tests through ctest, or export "
                           "EVS_BUILD_DIR=<your cmake build directory>")
    return os.path.join(BUILD_DIR, *parts)


class Skip(Exception):
    """Raise from a test to skip it, with the reason as the message."""


DesyncCase = collections.namedtuple("DesyncCase", "id tier name head case")


def desync_corpus():
    """The HTTP request smuggling corpus (tests/data/http-desync, converted to raw requests by
    tests/unit/desync_to_raw.py), as DesyncCase(id "file:n", expected tier, printable name,
    request head bytes, parsed case) in corpus order. Needs Debian's python3-yaml."""
    try:
        import yaml
    except ImportError:
        raise Skip("python3-yaml is missing: run with Debian's /usr/bin/python3")
    corpus_dir = os.path.join(SOURCE_DIR, "tests", "data", "http-desync")
    if not os.path.isdir(corpus_dir):
        raise Skip("no corpus at %s" % corpus_dir)
    import glob
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "desync_to_raw", os.path.join(SOURCE_DIR, "tests", "unit", "desync_to_raw.py"))
    d2r = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(d2r)
    out = []
    for path in sorted(glob.glob(os.path.join(corpus_dir, "*.yaml"))):
        stem = os.path.basename(path)[:-len(".yaml")]
        with open(path, encoding="utf-8") as f:
            cases = yaml.safe_load(f) or []
        for i, case in enumerate(cases, 1):
            out.append(DesyncCase("%s:%d" % (stem, i), case["expected"]["tier"],
                                  d2r.printable(d2r.to_bytes(case.get("name"))),
                                  d2r.head_bytes(case), case))
    assert len(out) > 100, "only %d corpus cases" % len(out)
    return out


# ---- cleanup bookkeeping --------------------------------------------------------------------

_tmpdirs = []
_deferred = []      # callables run after the current test, last first
_servers = []       # servers started by the current test, whose logs a failure prints


def defer(fn):
    """Runs fn() after the current test, pass or fail (servers and upstreams do this
    themselves). Returns fn."""
    _deferred.append(fn)
    return fn


def tmpdir(prefix="evs-"):
    """A new empty directory under /tmp, removed when the run ends (unless EVS_KEEP_TMP=1)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    _tmpdirs.append(d)
    return d


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Calls predicate until it returns a true value, which is returned; raises
    AssertionError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---- ports ----------------------------------------------------------------------------------

def free_ports(n, host="127.0.0.1"):
    """n distinct TCP ports on host, chosen by the kernel (bind to port 0) and reserved until
    the end of the current test.

    Each port stays bound by a probe socket with SO_REUSEADDR that never listens. evserver's
    listeners (core/master.c), Upstream and RawUpstream set SO_REUSEADDR too, and Linux lets
    such a socket bind and listen on an address whose other sockets all set it and none is
    listening: the server binds the port it was given, and restarts or reloads on it keep
    working. Meanwhile the kernel hands that port to nobody else: a bind to port 0 and the
    source port of a connect() skip a port that has a bound socket, and a bind to it without
    SO_REUSEADDR fails with EADDRINUSE. So a port chosen here cannot be taken by another test,
    another test's server or anything else on the machine between the choice and the bind
    (the old way, close the probe then bind, left that window open). A reserved port nobody
    listens on still refuses connections, as a closed port should."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
        ports = [s.getsockname()[1] for s in socks]
    except BaseException:
        for s in socks:
            s.close()
        raise
    for s in socks:
        defer(s.close)
    return ports


def free_port(host="127.0.0.1"):
    """One TCP port on host, reserved until the end of the current test (see free_ports)."""
    return free_ports(1, host)[0]


# ---- configuration --------------------------------------------------------------------------

def _conf_value(v):
    if v is True:
        return "on"
    if v is False:
        return "off"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)


def _merge(defaults, overrides):
    out = dict(defaults)
    for k, v in (overrides or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


class Config:
    """What write_config wrote: dir, path (evserver.conf), relay_config (relay-config.json),
    admin_socket, state_dir, and listeners {name: (host, port)}."""

    def __init__(self, dir, path, relay_config, admin_socket, state_dir, listeners):
        self.dir, self.path, self.relay_config = dir, path, relay_config
        self.admin_socket, self.state_dir, self.listeners = admin_socket, state_dir, listeners

    def port(self, listener="http"):
        """The port of a listener."""
        return self.listeners[listener][1]

    def text(self):
        """The configuration file as written."""
        with open(self.path) as f:
            return f.read()


def write_config(dir=None, *, listeners=None, server=None, admin=None, limits=None, upstream=None,
                 store=None, certificates=None, plugins=None, relays=None, extra=""):
    """Writes evserver.conf and relay-config.json into dir (a new tmpdir() by default) and
    returns a Config.

    Each section argument is a dict of key -> value merged over the defaults below; a value of
    None removes a key, True/False become on/off, lists are joined by spaces.
      server:       workers=1, state_dir=<dir>/state, plugins_dir=$EVS_BUILD_DIR/plugins.d,
                    log_level=info
      admin:        socket=<dir>/admin.sock
      limits, upstream, store: nothing (the server's defaults)
      listeners:    {name: {key: value}}, default {"http": {}}; a listener without `address` gets
                    127.0.0.1:<free port>; tls defaults to off
      certificates: {name: {server_names, certificate, key}}
      plugins:      {name: {key: value}}; default {"relay-inbound": {}}, whose relay_config and
                    base_domain default to the written file and relay.localhost. {} loads none.
      relays:       the relay-config.json object (default {})
      extra:        text appended verbatim (for sections the arguments do not cover)
    """
    dir = dir or tmpdir()
    os.makedirs(dir, exist_ok=True)
    state_dir = os.path.join(dir, "state")
    os.makedirs(state_dir, exist_ok=True)
    relay_path = os.path.join(dir, "relay-config.json")
    with open(relay_path, "w") as f:
        json.dump(relays if relays is not None else {}, f, indent=2)

    srv = _merge({"workers": 1, "state_dir": state_dir,
                  "plugins_dir": build_path("plugins.d"), "log_level": "info"}, server)
    adm = _merge({"socket": os.path.join(dir, "admin.sock")}, admin)
    lines = ["# written by evstest"]

    def section(header, items):
        lines.append("")
        lines.append(header)
        for k, v in items.items():
            lines.append("%s = %s" % (k, _conf_value(v)))

    section("[server]", srv)
    section("[admin]", adm)
    for name, items in (("limits", limits), ("upstream", upstream), ("store", store)):
        if items:
            section("[%s]" % name, _merge({}, items))

    ports = {}
    for name, items in (listeners if listeners is not None else {"http": {}}).items():
        items = _merge({"tls": False}, items)
        if "address" not in items:
            items["address"] = "127.0.0.1:%d" % free_port()
        host, _, port = items["address"].rpartition(":")
        ports[name] = (host.strip("[]").replace("*", "127.0.0.1"), int(port))
        items = {"address": items.pop("address"), **items}
        section('[listener "%s"]' % name, items)
    for name, items in (certificates or {}).items():
        section('[certificate "%s"]' % name, _merge({}, items))
    for name, items in (plugins if plugins is not None else {"relay-inbound": {}}).items():
        defaults = ({"relay_config": relay_path, "base_domain": "relay.localhost"}
                    if name == "relay-inbound" else {})
        section('[plugin "%s"]' % name, _merge(defaults, items))
    if extra:
        lines.append("")
        lines.append(extra)

    path = os.path.join(dir, "evserver.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Config(dir, path, relay_path, adm["socket"], srv["state_dir"], ports)


# ---- the server -----------------------------------------------------------------------------

class ServerError(AssertionError):
    """The server did not start, or did not stop in time; the message carries its log."""


def run_evserver(*args, timeout=30, env=None):
    """Runs `$EVS_BUILD_DIR/evserver *args` to completion (for -t, -V, bad flags) and returns
    subprocess.CompletedProcess with text stdout and stderr."""
    return subprocess.run([build_path("evserver"), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


class Server:
    """One evserver process run on a Config.

    Server(config, args=(), env=None, notify=False, watchdog_usec=None, binary=None)
      start(timeout=10): spawn `evserver -c <conf>` with stdout and stderr to <dir>/evserver.log
                 and wait until GET /status on the admin socket answers 200. Raises ServerError
                 (with the log) if the process exits or the timeout passes. Returns self.
      stop(sig=SIGTERM, timeout=30): signal and wait; SIGKILL and ServerError after timeout.
                 Returns the exit status (negative: killed by that signal).
      signal(sig), pid, running(), wait(timeout), returncode
      log() -> str; log_records() -> the JSON log lines as dicts (other lines skipped)
      admin_get(path) / admin_request(method, path, body) -> Response
      url(path="/", listener="http"), port(listener="http")
      notify=True gives the process a NOTIFY_SOCKET (systemd's readiness protocol);
      notifications() -> [(sender_pid, message)], wait_notify(text, timeout) waits for a
      message containing text. watchdog_usec sets WATCHDOG_USEC for it.
    Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(self, config, *, args=(), env=None, notify=False, watchdog_usec=None,
                 binary=None):
        self.config = config
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.binary = binary or build_path("evserver")
        self.log_path = os.path.join(config.dir, "evserver.log")
        self.proc = None
        self._notify_sock = None
        self._notes = []
        self._notes_cv = threading.Condition()
        self.env.pop("NOTIFY_SOCKET", None)
        if notify:
            path = os.path.join(config.dir, "notify.sock")
            self._notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify_sock.bind(path)
            self._notify_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.env["NOTIFY_SOCKET"] = path
            threading.Thread(target=self._read_notes, daemon=True).start()
        if watchdog_usec:
            self.env["WATCHDOG_USEC"] = str(int(watchdog_usec))

    def _read_notes(self):
        creds_len = socket.CMSG_SPACE(12)  # struct ucred: pid, uid, gid
        while True:
            try:
                data, anc, _, _ = self._notify_sock.recvmsg(4096, creds_len)
            except OSError:
                return
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], sys.byteorder)
            with self._notes_cv:
                self._notes.append((pid, data.decode("utf-8", "replace")))
                self._notes_cv.notify_all()

    def notifications(self):
        """The notify messages received so far, as (sender pid, text) pairs."""
        with self._notes_cv:
            return list(self._notes)

    def wait_notify(self, text, timeout=10.0):
        """Waits for a notify message containing text and returns (pid, message)."""
        deadline = time.monotonic() + timeout
        with self._notes_cv:
            while True:
                for n in self._notes:
                    if text in n[1]:
                        return n
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no notify message containing %r within %gs; got %r"
                                         % (text, timeout, self._notes))
                self._notes_cv.wait(left)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def port(self, listener="http"):
        return self.config.port(listener)

    def url(self, path="/", listener="http"):
        host, port = self.config.listeners[listener]
        return "http://%s:%d%s" % (host, port, path)

    def log(self):
        """The server's output so far (stdout and stderr)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_records(self):
        """The log lines that are JSON objects, parsed."""
        out = []
        for line in self.log().splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict):
                out.append(v)
        return out

    def _fail(self, what):
        raise ServerError("%s\n--- evserver log (%s) ---\n%s--- end of log ---"
                          % (what, self.log_path, _tail(self.log())))

    def start(self, timeout=10.0):
        _servers.append(self)
        defer(self._cleanup)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", self.config.path, *self.args],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env, cwd=self.config.dir)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.proc.poll() is not None:
                self._fail("evserver exited with status %d while starting" % self.proc.returncode)
            try:
                r = admin_get(self.config.admin_socket, "/status", timeout=2)
                if r.status == 200:
                    return self
                last = "GET /status answered %d" % r.status
            except (OSError, Incomplete, ValueError) as e:
                last = "%s: %s" % (type(e).__name__, e)
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self._fail("evserver did not answer on %s within %gs (%s)"
                           % (self.config.admin_socket, timeout, last))
            time.sleep(0.05)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30.0):
        """Waits for the process to exit; returns its status or raises ServerError."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._fail("evserver did not exit within %gs" % timeout)

    def stop(self, sig=None, timeout=30.0):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            return self.wait(timeout)
        finally:
            self._close_notify()

    def _close_notify(self):
        if self._notify_sock:
            self._notify_sock.close()
            self._notify_sock = None

    def _cleanup(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()
        self._close_notify()

    def admin_get(self, path, timeout=5.0):
        return admin_get(self.config.admin_socket, path, timeout=timeout)

    def admin_request(self, method, path, body=None, headers=None, timeout=5.0):
        return admin_request(self.config.admin_socket, method, path, body, headers, timeout)

    def __enter__(self):
        return self if self.running() else self.start()

    def __exit__(self, *exc):
        self.stop()


def start_server(*, timeout=10.0, args=(), env=None, notify=False, **config):
    """write_config(**config) in a new directory, then Server(...).start(). Returns the Server;
    its Config is server.config."""
    return Server(write_config(**config), args=args, env=env, notify=notify).start(timeout)


def _tail(text, limit=20000):
    if len(text) > limit:
        text = "[... %d bytes cut ...]\n%s" % (len(text) - limit, text[-limit:])
    return text if text.endswith("\n") or not text else text + "\n"


# ---- a recording upstream -------------------------------------------------------------------

class Request:
    """One request an Upstream received: method, path (the request target), version,
    headers [(name, value)] in order as received, body (bytes, de-chunked), client_cert (the
    peer certificate dict for TLS with client certificates, else None), and connection (the
    number of the connection it came on, from 1)."""

    def __init__(self, method, path, version, headers, body, client_cert, connection):
        self.method, self.path, self.version = method, path, version
        self.headers, self.body, self.client_cert = headers, body, client_cert
        self.connection = connection

    def header(self, name, default=None):
        """The first header called name (case-insensitive), or default."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Request(%s %s, %d body bytes)" % (self.method, self.path, len(self.body))


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, request, client_address, server, conn_id):
        self.conn_id = conn_id  # handlers run on many threads, so it cannot live on the server
        super().__init__(request, client_address, server)

    def log_message(self, *args):
        pass

    def __getattr__(self, name):
        # Any method (do_GET, do_PURGE, ...) goes to one handler.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        up = self.server.upstream
        body = self._read_body()
        cert = None
        if isinstance(self.connection, ssl.SSLSocket):
            cert = self.connection.getpeercert() or None
        req = Request(self.command, self.path, self.request_version, list(self.headers.items()),
                      body, cert, self.conn_id)
        with up._lock:
            up.requests.append(req)
            status, headers, rbody, delay, handler = (up.status, up.headers, up.body, up.delay,
                                                      up.handler)
            up._cv.notify_all()
        if handler:
            out = handler(req)
            if out is not None:
                status, headers, rbody = out
        if delay:
            time.sleep(delay)
        if isinstance(rbody, str):
            rbody = rbody.encode()
        headers = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        self.send_response(status)
        names = {k.lower() for k, _ in headers}
        if "content-type" not in names:
            headers.append(("Content-Type", "text/plain"))
        if "content-length" not in names and "transfer-encoding" not in names:
            headers.append(("Content-Length", str(len(rbody))))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(rbody)


class _UpstreamServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, upstream, ctx):
        self.upstream, self.ctx = upstream, ctx
        if ":" in addr[0]:  # an IPv6 address ("::1")
            self.address_family = socket.AF_INET6
        super().__init__(addr, _UpstreamHandler)

    def finish_request(self, request, client_address):
        up = self.upstream
        with up._lock:
            up.connections += 1
            conn_id = up.connections
            up._socks.add(request)
        try:
            if self.ctx:
                request.settimeout(10)
                try:
                    request = self.ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    with up._lock:
                        up.tls_errors.append(str(e))
                    return
                request.settimeout(None)
                with up._lock:
                    up._socks.add(request)
            _UpstreamHandler(request, client_address, self, conn_id)
        finally:
            with up._lock:
                up._socks.discard(request)

    def handle_error(self, request, client_address):
        pass  # a client hanging up mid-request is routine here


class Upstream:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records every request and answers with a
    configurable response: the destination for relay tests.

    Upstream(status=200, body=b"ok", headers=None, delay=0.0, handler=None, tls=None,
             client_ca=None, host="127.0.0.1", port=0)
      host:     the address to listen on ("::1" for IPv6; url then has it in brackets)
      headers:  dict or [(name, value)] added to every response (Content-Type and
                Content-Length are added unless given)
      delay:    seconds to wait before answering
      handler:  callable(Request) -> (status, headers, body), or None for the defaults
      tls:      a Cert (or (certfile, keyfile)) to serve HTTPS
      client_ca: a CA file; clients must then present a certificate it signed
    Attributes: host, port, url, requests [Request], connections (count accepted),
    tls_errors [str]. Methods: set_response(...), wait_requests(n, timeout), stop().
    Started on construction, stopped after the test (or by stop(), or as a context manager).
    """

    def __init__(self, status=200, body=b"ok", headers=None, delay=0.0, handler=None, tls=None,
                 client_ca=None, host="127.0.0.1", port=0):
        self.status, self.body, self.headers, self.delay, self.handler = (status, body, headers,
                                                                          delay, handler)
        self.requests, self.tls_errors, self.connections = [], [], 0
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._socks = set()
        ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            if client_ca:
                client_ca = client_ca.cert if isinstance(client_ca, Cert) else client_ca
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
        self.tls = bool(tls)
        self._srv = _UpstreamServer((host, port), self, ctx)
        self.host, self.port = self._srv.server_address[:2]
        self.url = "%s://%s:%d" % ("https" if tls else "http",
                                   "[%s]" % self.host if ":" in self.host else self.host,
                                   self.port)
        self._thread = threading.Thread(target=self._srv.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        defer(self.stop)

    def set_response(self, status=None, body=None, headers=None, delay=None, handler=None):
        """Changes the response for the requests that follow; None leaves a setting as is."""
        with self._lock:
            for k, v in (("status", status), ("body", body), ("headers", headers),
                         ("delay", delay), ("handler", handler)):
                if v is not None:
                    setattr(self, k, v)

    def wait_requests(self, n, timeout=5.0):
        """Waits until at least n requests were received and returns the list."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("upstream got %d requests, expected %d"
                                         % (len(self.requests), n))
                self._cv.wait(left)
            return list(self.requests)

    def stop(self):
        if self._srv is None:
            return
        self._srv.shutdown()
        self._srv.server_close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:  # keep-alive connections would otherwise outlive the server
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._srv = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---- a raw recording upstream ---------------------------------------------------------------

_TCHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class RawRequest:
    """One request a RawUpstream read: method, target, version (str), headers [(name, value)]
    as str (latin-1, values without surrounding SP/HTAB) in order, head (the raw head bytes
    including the final CRLF CRLF), body (bytes, de-chunked), raw (every byte of the message as
    received, body framing included), framing ("length", "chunked" or None) and connection (the
    index of its RawConnection in RawUpstream.conns)."""

    def __init__(self, method, target, version, headers, head, body, raw, framing, connection):
        self.method, self.target, self.version, self.headers = method, target, version, headers
        self.head, self.body, self.raw, self.framing = head, body, raw, framing
        self.connection = connection

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "RawRequest(%s %s, %d body bytes, %s)" % (self.method, self.target, len(self.body),
                                                         self.framing)


class RawConnection:
    """One connection a RawUpstream accepted: data (every byte received, in order), requests
    [RawRequest] read from it, error (why reading requests stopped: a framing or syntax
    problem, or None) and closed (the peer closed or reset it)."""

    def __init__(self, index):
        self.index = index
        self.data = bytearray()
        self.requests = []
        self.error = None
        self.closed = False

    @property
    def leftover(self):
        """The bytes received after the last complete request (what a desync would leave)."""
        used = sum(len(r.raw) for r in self.requests)
        return bytes(self.data[used:])


class _RecordingIO:
    """A file-like reader over a socket that records every byte it receives."""

    def __init__(self, sock, conn, lock):
        self.sock, self.conn, self.lock = sock, conn, lock
        self.buf = bytearray()
        self.pos = 0  # bytes of the current message consumed so far (for RawRequest.raw)

    def _fill(self):
        try:
            b = self.sock.recv(262144)
        except OSError:
            b = b""
        if not b:
            raise EOFError
        with self.lock:
            self.conn.data += b
        self.buf += b

    def readline(self, limit=65536):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise ValueError("line longer than %d bytes" % limit)
            self._fill()

    def read(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_into(self, n, sink):
        """Reads n bytes, passing them to sink(bytes) in pieces (for large bodies)."""
        while n > 0:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take


class RawUpstream:
    """A plain-TCP destination that records every byte it receives, reads requests with a
    strict HTTP/1.1 parser (exactly one framing header: one Content-Length of digits, or one
    Transfer-Encoding: chunked; field names must be tokens; lines must end in CRLF) and answers
    each one. Anything else stops reading that connection (the rest is still recorded) and is
    noted in RawConnection.error. Use it where Upstream's http.server would hide what evserver
    actually sent.

    RawUpstream(response=None, answer=True, keep_body=True, host="127.0.0.1")
      response:  bytes sent after each request, or callable(RawRequest) -> bytes; default
                 "HTTP/1.1 200 OK" with X-Raw-Upstream: 1 and Content-Length: 0
      answer:    False reads requests but never answers (a destination that hangs)
      keep_body: False keeps only body_sha256/body_len on requests (RawRequest.body is b"")
    Attributes: host, port, url, conns [RawConnection]. Methods: requests() (all, in order of
    connection then arrival), data() (all bytes received), wait_requests(n, timeout),
    wait_closed(timeout) (every connection closed by the peer), stop().
    Started on construction, stopped after the test.
    """

    DEFAULT_RESPONSE = b"HTTP/1.1 200 OK\r\nX-Raw-Upstream: 1\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, response=None, answer=True, keep_body=True, host="127.0.0.1"):
        self.response = response if response is not None else self.DEFAULT_RESPONSE
        self.answer, self.keep_body = answer, keep_body
        self.conns = []
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._socks = []
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((host, 0))
        self._lsock.listen(128)
        self.host, self.port = self._lsock.getsockname()[:2]
        self.url = "http://%s:%d" % (self.host, self.port)
        self._stopped = False
        threading.Thread(target=self._accept_loop, daemon=True).start()
        defer(self.stop)

    def _accept_loop(self):
        while True:
            try:
                s, _ = self._lsock.accept()
            except OSError:
                return
            with self._cv:
                if self._stopped:
                    s.close()
                    return
                conn = RawConnection(len(self.conns))
                self.conns.append(conn)
                self._socks.append(s)
                self._cv.notify_all()
            threading.Thread(target=self._serve, args=(s, conn), daemon=True).start()

    def _serve(self, s, conn):
        rd = _RecordingIO(s, conn, self._lock)
        try:
            while True:
                try:
                    req = self._read_request(rd, conn)
                except EOFError:
                    break
                except ValueError as e:
                    with self._cv:
                        conn.error = str(e)
                        self._cv.notify_all()
                    while True:  # keep recording what else arrives
                        rd.buf.clear()
                        rd._fill()
                with self._cv:
                    conn.requests.append(req)
                    self._cv.notify_all()
                if self.answer:
                    resp = self.response(req) if callable(self.response) else self.response
                    try:
                        s.sendall(resp)
                    except OSError:
                        pass
        except EOFError:
            pass
        finally:
            with self._cv:
                conn.closed = True
                self._cv.notify_all()
            try:
                s.close()
            except OSError:
                pass

    def _read_request(self, rd, conn):
        raw = bytearray()
        head = bytearray()
        line = rd.readline()
        head += line
        if not line.endswith(b"\r\n"):
            raise ValueError("request line does not end in CRLF: %r" % line[:200])
        parts = line[:-2].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ValueError("malformed request line: %r" % line[:200])
        headers = []
        while True:
            line = rd.readline()
            head += line
            if len(head) > 1 << 20:
                raise ValueError("head over 1 MiB")
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                raise ValueError("header line without CRLF or with a bare CR: %r" % line[:200])
            if line == b"\r\n":
                break
            name, sep, value = line[:-2].partition(b":")
            if not sep or not name or any(c not in _TCHARS for c in name):
                raise ValueError("invalid header field: %r" % line[:200])
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        raw += head
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        if te and cl:
            raise ValueError("both Transfer-Encoding and Content-Length")
        if len(te) > 1 or len(cl) > 1:
            raise ValueError("duplicate framing header: %r %r" % (te, cl))
        body = bytearray()
        digest = hashlib.sha256()
        nbody = [0]

        def sink(b):
            digest.update(b)
            nbody[0] += len(b)
            if self.keep_body:
                body.extend(b)
                raw.extend(b)

        framing = None
        if te:
            if te[0].lower() != "chunked":
                raise ValueError("unsupported Transfer-Encoding: %r" % te[0])
            framing = "chunked"
            while True:
                line = rd.readline()
                raw += line
                if not line.endswith(b"\r\n"):
                    raise ValueError("chunk size line without CRLF: %r" % line[:100])
                size_s = line[:-2].split(b";")[0]
                if not size_s or any(c not in b"0123456789abcdefABCDEF" for c in size_s):
                    raise ValueError("bad chunk size line: %r" % line[:100])
                size = int(size_s, 16)
                if size == 0:
                    while True:
                        line = rd.readline()
                        raw += line
                        if line == b"\r\n":
                            break
                        if not line.endswith(b"\r\n"):
                            raise ValueError("trailer line without CRLF")
                    break
                rd.read_into(size, sink)
                crlf = rd.read(2)
                raw += crlf
                if crlf != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
        elif cl:
            if not cl[0].isdigit():
                raise ValueError("bad Content-Length: %r" % cl[0])
            framing = "length"
            rd.read_into(int(cl[0]), sink)
        if not self.keep_body:
            raw = bytearray(head)
        p = parts
        req = RawRequest(p[0].decode("latin-1"), p[1].decode("latin-1"), p[2].decode("latin-1"),
                         headers, bytes(head), bytes(body), bytes(raw), framing, conn.index)
        req.body_sha256, req.body_len = digest.hexdigest(), nbody[0]
        return req

    def requests(self):
        with self._lock:
            return [r for c in self.conns for r in c.requests]

    def data(self):
        """Every byte received, all connections concatenated in order of acceptance."""
        with self._lock:
            return b"".join(bytes(c.data) for c in self.conns)

    def wait_requests(self, n, timeout=5.0):
        """Waits until at least n requests were read and returns them."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while sum(len(c.requests) for c in self.conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("raw upstream read %d requests, expected %d"
                                         % (sum(len(c.requests) for c in self.conns), n))
                self._cv.wait(left)
        return self.requests()

    def wait_closed(self, timeout=5.0):
        """Waits until the peer closed every accepted connection."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not all(c.closed for c in self.conns):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("raw upstream connections still open after %gs" % timeout)
                self._cv.wait(left)

    def stop(self):
        with self._cv:
            if self._stopped:
                return
            self._stopped = True
            socks = list(self._socks)
        try:
            self._lsock.close()
        except OSError:
            pass
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---- certificates ---------------------------------------------------------------------------

Cert = collections.namedtuple("Cert", "cert key")
Cert.__doc__ = "Paths of a PEM certificate and its unencrypted PEM private key."


def _openssl(*args):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(args), r.stderr))


def _newkey(key):
    if key == "rsa":
        return ["-newkey", "rsa:2048"]
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def make_ca(dir=None, name="evstest CA", key="ec"):
    """A self-signed CA in dir (a new tmpdir() by default). key: "ec" (P-256) or "rsa".
    Returns Cert(cert, key)."""
    dir = dir or tmpdir("evs-ca-")
    base = os.path.join(dir, re.sub(r"[^A-Za-z0-9_.-]", "_", name))
    cnf = base + ".cnf"
    with open(cnf, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n"
                "[dn]\nCN = %s\n[ext]\nbasicConstraints = critical,CA:TRUE\n"
                "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n" % name)
    _openssl("req", "-x509", "-new", *_newkey(key), "-nodes", "-keyout", base + ".key",
             "-out", base + ".crt", "-days", "2", "-config", cnf)
    return Cert(base + ".crt", base + ".key")


def make_cert(ca, names=("localhost", "127.0.0.1"), *, cn=None, client=False, dir=None,
              key="ec", days=2):
    """A leaf certificate signed by ca (a Cert from make_ca) with subjectAltName from names
    (host names become DNS:, IP addresses IP:); cn defaults to the first name. client=True
    makes a client certificate (extendedKeyUsage clientAuth) instead of a server one. Written
    beside the CA unless dir is given. Returns Cert(cert, key)."""
    dir = dir or os.path.dirname(ca.cert)
    cn = cn or (names[0] if names else "evstest")
    base = os.path.join(dir, "%s-%s" % (re.sub(r"[^A-Za-z0-9_.-]", "_", cn), secrets.token_hex(3)))
    sans = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            sans.append("IP:" + n)
        except ValueError:
            sans.append("DNS:" + n)
    with open(base + ".cnf", "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = %s\n" % cn)
    with open(base + ".ext", "w") as f:
        f.write("basicConstraints = critical,CA:FALSE\n"
                "keyUsage = critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage = %s\n" % ("clientAuth" if client else "serverAuth") +
                ("subjectAltName = %s\n" % ",".join(sans) if sans else "") +
                "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
    _openssl("req", "-new", *_newkey(key), "-nodes", "-keyout", base + ".key", "-out",
             base + ".csr", "-config", base + ".cnf")
    _openssl("x509", "-req", "-in", base + ".csr", "-CA", ca.cert, "-CAkey", ca.key,
             "-set_serial", "0x" + secrets.token_hex(8), "-days", str(days), "-out",
             base + ".crt", "-extfile", base + ".ext")
    return Cert(base + ".crt", base + ".key")


# ---- raw HTTP -------------------------------------------------------------------------------

class Incomplete(ValueError):
    """The bytes end before the response does."""


class Response:
    """A parsed HTTP/1.x response: version ("HTTP/1.1"), status (int), reason, headers
    [(name, value)] in order, body (bytes, de-chunked), raw (the bytes it was parsed from)."""

    def __init__(self, version, status, reason, headers, body, raw):
        self.version, self.status, self.reason = version, status, reason
        self.headers, self.body, self.raw = headers, body, raw

    def header(self, name, default=None):
        """The first header called name (case-insensitive), or default."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Response(%d %s, %d body bytes)" % (self.status, self.reason, len(self.body))


def _parse(data, head, eof):
    """(Response, bytes used). Raises Incomplete or ValueError."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete("no complete response head in %d bytes" % len(data))
    lines = data[:end].decode("latin-1").split("\r\n")
    m = re.match(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise ValueError("not a status line: %r" % lines[0])
    version, status, reason = m.group(1), int(m.group(2)), m.group(3) or ""
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("malformed header line: %r" % line)
        headers.append((name, value.strip(" \t")))
    pos = end + 4
    hv = lambda n: [v for k, v in headers if k.lower() == n]  # noqa: E731
    te, cl = hv("transfer-encoding"), hv("content-length")
    if head or status < 200 or status in (204, 304):
        body = b""
    elif te and te[-1].split(",")[-1].strip().lower() == "chunked":
        body = b""
        while True:
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                raise Incomplete("chunk size line")
            size = int(data[pos:nl].split(b";")[0].strip(), 16)
            pos = nl + 2
            if size == 0:
                while True:
                    nl = data.find(b"\r\n", pos)
                    if nl < 0:
                        raise Incomplete("trailers")
                    line, pos = data[pos:nl], nl + 2
                    if not line:
                        break
                break
            if len(data) < pos + size + 2:
                raise Incomplete("chunk data")
            body += data[pos:pos + size]
            if data[pos + size:pos + size + 2] != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")
            pos += size + 2
    elif cl and not te:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise ValueError("bad Content-Length: %r" % cl)
        n = int(cl[0])
        if len(data) < pos + n:
            raise Incomplete("body: have %d of %d bytes" % (len(data) - pos, n))
        body, pos = data[pos:pos + n], pos + n
    else:
        if not eof:
            raise Incomplete("body runs to the close of the connection")
        body, pos = data[pos:], len(data)
    return Response(version, status, reason, headers, body, data[:pos]), pos


def parse_response(data, head=False):
    """Parses one response from the start of data (everything received: a body without
    framing runs to its end). head=True: the answer to a HEAD request (no body). Returns a
    Response whose `rest` attribute holds the bytes after it. Raises Incomplete or
    ValueError."""
    r, used = _parse(data, head, True)
    r.rest = data[used:]
    return r


def parse_responses(data):
    """All the responses in data, in order (pipelined answers on one connection, including
    interim 1xx ones). Raises Incomplete or ValueError if bytes are left that are not a
    complete response."""
    out = []
    while data:
        r = parse_response(data)
        out.append(r)
        data = r.rest
    return out


def _count_complete(data):
    n = 0
    while data:
        try:
            _, used = _parse(data, False, False)
        except ValueError:
            break
        n, data = n + 1, data[used:]
    return n


def connect(port, host="127.0.0.1", *, tls=None, server_hostname=None, timeout=5.0):
    """A connected TCP socket (TLS when tls is True, which does not verify, or an
    ssl.SSLContext). server_hostname is the SNI name (default: none for IP hosts)."""
    s = socket.create_connection((host, port), timeout=timeout)
    if tls:
        ctx = tls if isinstance(tls, ssl.SSLContext) else _unverified_ctx()
        s = ctx.wrap_socket(s, server_hostname=server_hostname)
    return s


def _unverified_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send_raw(port, data, host="127.0.0.1", *, timeout=5.0, tls=None, server_hostname=None,
             pause=0.0, shut_wr=False, responses=None):
    """Sends data (bytes, or a list of byte strings sent with `pause` seconds between them)
    and returns every byte read until the server closes the connection, timeout seconds have
    passed, or, when responses=N, N complete responses have arrived. shut_wr=True half-closes
    after sending. tls and server_hostname are as for connect()."""
    deadline = time.monotonic() + timeout
    s = connect(port, host, tls=tls, server_hostname=server_hostname, timeout=timeout)
    got = b""
    try:
        chunks = data if isinstance(data, (list, tuple)) else [data]
        for i, chunk in enumerate(chunks):
            if i and pause:
                time.sleep(pause)
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered early and closed: read what it said
        if shut_wr:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, ssl.SSLError):
                break
            if not b:
                break
            got += b
            if responses and _count_complete(got) >= responses:
                break
    finally:
        s.close()
    return got


def recv_responses(sock, n=1, *, timeout=5.0, head=False, data=b"", allow_close=False):
    """Reads from a connected socket until n complete responses (interim 1xx ones count) have
    arrived and returns (responses, rest): the parsed Responses and any bytes after the n-th.
    data: bytes already read (the rest of an earlier call). head=True parses them as answers to
    HEAD (no bodies). Raises AssertionError, showing what did arrive, if timeout seconds pass or
    the peer closes first; with allow_close=True a close instead returns the complete responses
    so far (fewer than n: the caller sees the connection ended) and the bytes left over."""
    deadline = time.monotonic() + timeout
    got = data

    def complete():
        data, out = got, []
        try:
            while len(out) < n:
                r, used = _parse(data, head, False)
                out.append(r)
                data = data[used:]
        except ValueError:  # Incomplete included
            return None
        return out, data

    while True:
        done = complete()
        if done:
            for r in done[0]:
                r.rest = b""
            return done
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("%d response(s) not complete within %gs; got %r"
                                 % (n, timeout, got[:2000]))
        sock.settimeout(left)
        try:
            b = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError):
            b = b""
        if not b:
            rs, data = [], got
            try:  # a close-delimited body ends here
                while len(rs) < n and data:
                    r = parse_response(data, head=head)
                    rs.append(r)
                    data, r.rest = r.rest, b""
            except ValueError:
                pass
            if len(rs) == n or allow_close:
                return rs, data
            raise AssertionError("connection closed before %d complete response(s); got %r"
                                 % (n, got[:2000]))
        got += b


def wait_closed(sock, timeout=5.0):
    """Waits until the peer closes (EOF or reset) a connected socket. Returns (closed, extra):
    closed is False if timeout seconds passed first; extra is whatever bytes arrived meanwhile."""
    deadline = time.monotonic() + timeout
    extra = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, extra
        sock.settimeout(left)
        try:
            b = sock.recv(65536)
        except socket.timeout:
            return False, extra
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True, extra
        if not b:
            return True, extra
        extra += b


def admin_request(socket_path, method, path, body=None, headers=None, timeout=5.0):
    """One request to the admin API over its Unix socket (Connection: close); body may be
    bytes, str, or a dict/list sent as JSON. Returns a Response."""
    hdrs = {"Host": "localhost", "Connection": "close"}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    elif isinstance(body, str):
        body = body.encode()
    if body is not None:
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    req = ("%s %s HTTP/1.1\r\n" % (method, path) +
           "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n").encode() + (body or b"")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    got = b""
    try:
        s.connect(socket_path)
        s.sendall(req)
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    finally:
        s.close()
    rs = parse_responses(got)
    final = [r for r in rs if r.status >= 200]
    if not final:
        raise Incomplete("no final response from %s" % socket_path)
    return final[-1]


def admin_get(socket_path, path, timeout=5.0):
    """GET path from the admin API at socket_path. Returns a Response (r.json() for the body)."""
    return admin_request(socket_path, "GET", path, timeout=timeout)


# ---- the runner -----------------------------------------------------------------------------

def _run_deferred():
    while _deferred:
        fn = _deferred.pop()
        try:
            fn()
        except Exception:  # cleanup must reach every object
            traceback.print_exc()
    _servers.clear()


def main(namespace):
    """Runs the test_* functions of namespace (pass globals()) in definition order, or only
    those named on the command line. Prints each result and the log of every server a failed
    test started, then "N passed, M failed" (", K skipped" when some were), and exits 1 if any
    failed."""
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    wanted = sys.argv[1:]
    if wanted:
        unknown = set(wanted) - {n for n, _ in tests}
        if unknown:
            print("no such test: %s" % ", ".join(sorted(unknown)))
            sys.exit(2)
        tests = [(n, f) for n, f in tests if n in wanted]
    passed = failed = skipped = 0
    for name, fn in tests:
        started = time.monotonic()
        try:
            fn()
        except Skip as e:
            skipped += 1
            print("skip %s: %s" % (name, e), flush=True)
        except BaseException as e:  # noqa: B902 - a test's KeyboardInterrupt still ends the run
            failed += 1
            print("FAIL %s (%.2fs)" % (name, time.monotonic() - started))
            traceback.print_exc(file=sys.stdout)
            for obj in _servers:
                if not isinstance(e, ServerError):
                    print("--- evserver log (%s) ---\n%s--- end of log ---"
                          % (obj.log_path, _tail(obj.log())))
            sys.stdout.flush()
            if isinstance(e, KeyboardInterrupt):
                _run_deferred()
                raise
        else:
            passed += 1
            print("ok   %s (%.2fs)" % (name, time.monotonic() - started), flush=True)
        finally:
            _run_deferred()
    if os.environ.get("EVS_KEEP_TMP") != "1":
        for d in _tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
    elif _tmpdirs:
        print("kept: %s" % " ".join(_tmpdirs))
    print("%d passed, %d failed%s" % (passed, failed,
                                      ", %d skipped" % skipped if skipped else ""), flush=True)
    sys.exit(1 if failed else 0)
