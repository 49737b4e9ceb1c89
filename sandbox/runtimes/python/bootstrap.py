# The Python bootstrap of a function box (docs/functions.md): run by evs-fnbox as
# `python3 -I -S -B /bootstrap/bootstrap.py <file>.<func> <egress socket or ''> [lc_ctype]` in
# the box. It imports the handler from /function, says `ready` (or `fail`) on fd 3, then serves
# `run` frames one at a time: print and sys.stdout/stderr writes go back as `log` frames (never
# to fd 1 or 2), context.encrypt/decrypt become `call` frames answered by `reply` (blocking),
# the outcome a `result` frame. After each run /tmp is emptied, the environment and the working
# directory restored. Standard library only.
#
# Cold start matters: only what every box needs is imported here (json; the channel is used
# through os.read/os.write, without the socket module); the rest when it is needed.
import _thread
import importlib
import io
import json
import os
import struct
import sys

CHANNEL = 3
MAX_FRAME = 32 * 1024 * 1024
HANDLER = sys.argv[1] if len(sys.argv) > 1 else ""
EGRESS = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
if (len(sys.argv) < 4 or sys.argv[3] != "lc_ctype") and "LC_CTYPE" in os.environ:
    del os.environ["LC_CTYPE"]  # set by Python's locale coercion, not by the function
ENV_SNAPSHOT = dict(os.environ)

send_lock = _thread.allocate_lock()


class ProtocolError(Exception):
    pass


def send(obj):
    body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_FRAME:
        return False
    data = memoryview(struct.pack(">I", len(body)) + body)
    with send_lock:
        while data:
            data = data[os.write(CHANNEL, data):]
    return True


def recv_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(CHANNEL, min(n - len(buf), 1 << 20))
        if not chunk:
            os._exit(0)  # the plugin closed the channel: the box ends
        buf += chunk
    return bytes(buf)


def recv():
    (n,) = struct.unpack(">I", recv_exact(4))
    if n > MAX_FRAME:
        raise ProtocolError("frame too large")
    try:
        obj = json.loads(recv_exact(n).decode("utf-8"))
    except ValueError:
        raise ProtocolError("bad frame")
    if not isinstance(obj, dict):
        raise ProtocolError("bad frame")
    return obj


def error_of(e):
    import traceback
    return {
        "message": str(e) or type(e).__name__,
        "stack": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
    }


# ---- output: log frames of the current run --------------------------------------------------
current = None  # {"id", "seq"}


class LogStream(io.TextIOBase):
    """A text stream that sends each completed line (and what is left at the end of a run) as a
    log frame of the current run; output outside a run has no run to go to and is dropped."""

    def __init__(self, name):
        self.name = name
        self._buf = []
        self._lock = _thread.allocate_lock()

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str")
        with self._lock:
            self._buf.append(s)
            if "\n" in s:
                self._flush_locked()
        return len(s)

    def flush(self):
        with self._lock:
            self._flush_locked()

    def _flush_locked(self):
        text = "".join(self._buf)
        self._buf = []
        run = current
        if text and run is not None:
            send({"t": "log", "id": run["id"], "stream": self.name, "text": text})

    def isatty(self):
        return False


sys.stdout = LogStream("stdout")
sys.stderr = LogStream("stderr")


# ---- egress: HTTP(S) through the CONNECT proxy on a unix socket -----------------------------
def install_egress():
    import socket

    class TunnelSocket(socket.socket):
        # http.client sets TCP_NODELAY on what create_connection returns; unix sockets have none.
        def setsockopt(self, level, opt, *args):
            if level == socket.IPPROTO_TCP:
                return None
            return super().setsockopt(level, opt, *args)

    def tunnel(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kw):
        return _tunnel(socket, TunnelSocket, address, timeout)

    socket.create_connection = tunnel

    # urllib3 (under requests) resolves and connects by itself: its create_connection is
    # replaced as it is imported, from the function's own copy in /function.
    def urllib3_tunnel(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None,
                       socket_options=None):
        s = _tunnel(socket, TunnelSocket, address, timeout)
        for opt in socket_options or ():
            s.setsockopt(*opt)
        return s

    import importlib.machinery

    class Urllib3Patch:
        def find_spec(self, name, path, target=None):
            if name != "urllib3.util.connection":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec and spec.loader:
                exec_module = spec.loader.exec_module

                def patched(module):
                    exec_module(module)
                    module.create_connection = urllib3_tunnel

                spec.loader.exec_module = patched
            return spec

    sys.meta_path.insert(0, Urllib3Patch())


def _tunnel(socket, TunnelSocket, address, timeout):
    host, port = address[0], address[1]
    s = TunnelSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            s.settimeout(timeout)
        s.connect(EGRESS)
        hp = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (hp, hp)).encode("idna"))
        head = b""
        while b"\r\n\r\n" not in head:
            c = s.recv(1)  # byte by byte: nothing after the head may be consumed
            if not c or len(head) > 16384:
                raise ConnectionError("egress proxy: bad reply")
            head += c
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise ConnectionRefusedError(
                "egress proxy refused %s (%s)"
                % (hp, status[1].decode() if len(status) > 1 else "?"))
        return s
    except BaseException:
        s.close()
        raise


if EGRESS:
    install_egress()


# ---- calls: context.encrypt / decrypt (blocking) --------------------------------------------
pending_runs = []


class Context:
    def __init__(self, run):
        self._run = run
        self.run_id = run["id"]

    def _call(self, op, data):
        run = self._run
        if current is not run:
            raise RuntimeError("context.%s called outside its run" % op)
        run["seq"] += 1
        seq = run["seq"]
        if not send({"t": "call", "id": run["id"], "seq": seq, "op": op, "data": data}):
            raise ValueError("context.%s: value too large" % op)
        while True:
            f = recv()
            if f.get("t") == "reply" and f.get("seq") == seq:
                if f.get("ok"):
                    return f.get("data")
                raise RuntimeError(str(f.get("error") or "context call failed"))
            if f.get("t") == "run":
                pending_runs.append(f)  # out of contract, but keep it for later

    def encrypt(self, data):
        return self._call("encrypt", data)

    def decrypt(self, data):
        return self._call("decrypt", data)


# ---- after a run ----------------------------------------------------------------------------
def remove_tree(d):
    """Removes everything under d. The box has no capability, so a directory the function made
    unreadable or unwritable is opened up first."""
    try:
        os.chmod(d, 0o1777 if d == "/tmp" else 0o700)
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = os.path.join(d, n)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                remove_tree(p)
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass


def clean_tmp():
    """Whether /tmp is empty afterwards: if not, the box must not serve another run."""
    remove_tree("/tmp")
    try:
        return not os.listdir("/tmp")
    except OSError:
        return False


def restore_env():
    if dict(os.environ) != ENV_SNAPSHOT:
        os.environ.clear()
        os.environ.update(ENV_SNAPSHOT)


# ---- the handler ----------------------------------------------------------------------------
def load():
    file, dot, func = HANDLER.rpartition(".")
    if not dot or not file or not func:
        raise ValueError("handler must be <file>.<func>, got %r" % HANDLER)
    sys.path.insert(0, "/function")
    # Dependencies evctl installed from requirements.txt at deploy (evctl function deploy).
    if os.path.isdir("/function/.python_packages"):
        sys.path.insert(1, "/function/.python_packages")
    mod = importlib.import_module(file.replace("/", "."))
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise AttributeError("%s has no function %r" % (file, func))
    return fn


def serve(handler, frame):
    global current
    run = {"id": str(frame.get("id")), "seq": 0}
    current = run
    try:
        value = handler(frame.get("payload"), Context(run))
        if hasattr(value, "__await__"):  # an async def handler
            import asyncio
            value = asyncio.run(value)
        body = {"t": "result", "id": run["id"], "ok": True, "result": value}
        try:
            json.dumps(body, allow_nan=False)
        except (TypeError, ValueError) as e:
            body = {"t": "result", "id": run["id"], "ok": False,
                    "error": {"message": "result is not JSON: %s" % e, "stack": ""}}
    except BaseException as e:  # SystemExit from the handler fails the run, not the box
        body = {"t": "result", "id": run["id"], "ok": False, "error": error_of(e)}
    sys.stdout.flush()
    sys.stderr.flush()
    current = None
    if not send(body):
        send({"t": "result", "id": run["id"], "ok": False,
              "error": {"message": "result too large", "stack": ""}})
    # Nothing of this run may reach the next: /tmp, the environment, the working directory.
    # What cannot be undone ends the box (the plugin starts a fresh one).
    if not clean_tmp():
        os._exit(1)
    restore_env()
    try:
        os.chdir("/function")
    except OSError:
        pass


def main():
    try:
        handler = load()
    except BaseException as e:
        send({"t": "fail", "error": error_of(e)})
        return 1
    send({"t": "ready"})
    try:
        while True:
            f = pending_runs.pop(0) if pending_runs else recv()
            if f.get("t") == "run":
                serve(handler, f)
    except ProtocolError:
        return 1


if __name__ == "__main__":
    os._exit(main() or 0)
