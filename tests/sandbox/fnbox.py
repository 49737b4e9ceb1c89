"""A driver for evs-fnbox (sandbox/fnbox.c) speaking the channel protocol of docs/functions.md:
starts a real box on a socketpair (fd 3), reads and writes length-prefixed JSON frames. Used by
tests/sandbox/test_fnbox.py and bench/functions/run."""
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

BUILD = os.environ.get("EVS_BUILD_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build")
FNBOX = os.path.join(BUILD, "evs-fnbox")


def interpreter(runtime):
    """The interpreter for a runtime, or None: node from PATH, python 3.11 (the system's)."""
    if runtime == "node":
        p = shutil.which("node") or ("/usr/bin/node" if os.path.exists("/usr/bin/node") else None)
        return os.path.realpath(p) if p else None
    for p in ("/usr/bin/python3.11", sys.executable):
        if p and os.path.exists(p):
            return os.path.realpath(p)
    return None


def sanitized():
    """Whether evs-fnbox was built with the sanitizers (-DEVS_SANITIZE=ON)."""
    try:
        with open(FNBOX, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


class Box:
    """One evs-fnbox process. files: {name: source} written to a fresh code dir."""

    def __init__(self, runtime, files, handler=None, env=None, tmp_size=8 << 20, egress=None,
                 rlimit_as=None, code_dir=None, extra_args=(), preexec=None):
        self.runtime = runtime
        self.tmp = tempfile.mkdtemp(prefix="fnbox-test-")
        os.chmod(self.tmp, 0o755)
        self.code = code_dir or os.path.join(self.tmp, "code")
        if not code_dir:
            os.mkdir(self.code)
            os.chmod(self.code, 0o755)
            for name, src in files.items():
                p = os.path.join(self.code, name)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "w") as f:
                    f.write(src)
                os.chmod(p, 0o644)
        if handler is None:
            handler = "index.handler" if runtime == "node" else "main.handler"
        args = [FNBOX, "--runtime", runtime, "--interpreter", interpreter(runtime), "--code",
                self.code, "--handler", handler, "--tmp-size", str(tmp_size)]
        if egress:
            args += ["--egress", egress]
        args += list(extra_args)
        self.sock, child = socket.socketpair()

        def pre():
            os.dup2(child.fileno(), 3)
            if rlimit_as:
                resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))
            if preexec:
                preexec()

        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, pass_fds=(3,), preexec_fn=pre,
                                     env=env if env is not None else {"FN_ENV": "fn"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        child.close()
        self.sock.settimeout(30)

    # ---- frames ---------------------------------------------------------------------------
    def send(self, obj):
        body = json.dumps(obj).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            c = self.sock.recv(n - len(buf))
            if not c:
                return None
            buf += c
        return buf

    def recv(self):
        """The next frame, or None at EOF."""
        h = self._exact(4)
        if h is None:
            return None
        body = self._exact(struct.unpack(">I", h)[0])
        return None if body is None else json.loads(body)

    def start(self):
        """The first frame (ready or fail), and the seconds it took."""
        f = self.recv()
        return f, time.monotonic() - self.t0

    def run(self, payload, run_id="run1", reply=None):
        """Sends one run; answers call frames with reply(frame) -> reply frame (default: echo
        "ev:" + json); returns (result frame or None at EOF, [log frames], [call frames])."""
        self.send({"t": "run", "id": run_id, "payload": payload})
        logs, calls = [], []
        while True:
            f = self.recv()
            if f is None or f["t"] == "result":
                return f, logs, calls
            if f["t"] == "log":
                logs.append(f)
            elif f["t"] == "call":
                calls.append(f)
                r = reply(f) if reply else {"ok": True, "data": "ev:" + json.dumps(f["data"])}
                self.send(dict(r, t="reply", seq=f["seq"]))

    def close(self):
        if self.tmp is None:
            return self.proc.returncode
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.stderr = self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        return self.proc.returncode
