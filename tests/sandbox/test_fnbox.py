"""tests/sandbox: evs-fnbox, real boxes on a socketpair (tests/sandbox/fnbox.py), for node and
python. `python3 test_fnbox.py [protocol|escape|egress|lifecycle] [-v]`; as root, `--as-nobody`
runs the same tests as uid 65534 (evserver may run unprivileged: the box must work there too).

Protocol: ready, typed payload round trip, log frames, context calls, throws, load failures,
/tmp emptied and the environment restored between runs. Escape: each attempt from inside a
function must fail: host paths, sockets, namespaces and mounts, ptrace/bpf/kexec, processes,
writes outside /tmp, a full /tmp, memory, leftovers of a previous run. Lifecycle: killing
evs-fnbox's pid ends the whole tree."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fnbox  # noqa: E402
from fnbox import Box  # noqa: E402

NODE_OK = fnbox.interpreter("node") is not None


def node_fn(body):
    return {"index.js": "exports.handler = async (data, context) => {\n%s\n};\n" % body}


def py_fn(body):
    src = "def handler(data, context):\n" + "".join("    " + l + "\n" for l in body.splitlines())
    return {"main.py": src}


class Common:
    """Protocol tests, once per runtime (the subclasses set RT and fn)."""
    RT = None

    def box(self, files, **kw):
        b = Box(self.RT, files, **kw)
        self.addCleanup(b.close)
        return b

    def ready(self, files, **kw):
        b = self.box(files, **kw)
        f, _ = b.start()
        self.assertEqual(f, {"t": "ready"}, getattr(b, "stderr", ""))
        return b

    def test_hello_world(self):
        b = self.ready(self.fn(self.HELLO))
        r, logs, calls = b.run({"name": "world"}, "r-1")
        self.assertEqual(r, {"t": "result", "id": "r-1", "ok": True, "result": "hello world"})

    def test_payload_round_trip(self):
        b = self.ready(self.fn(self.ECHO))
        payload = {"s": "h\u00e9llo \U0001F600 \"q\" \n", "i": 42, "neg": -7, "f": 1.5,
                   "big": 9007199254740991, "t": True, "fa": False, "n": None,
                   "a": [1, "two", {"three": [3]}, [], {}], "o": {"nested": {"deep": [None]}}}
        for p in (payload, [1, 2], "str", 3, None, True):
            r, _, _ = b.run(p)
            self.assertTrue(r["ok"], r)
            self.assertEqual(r["result"], p)

    def test_console_to_log_frames(self):
        b = self.ready(self.fn(self.LOGS))
        r, logs, _ = b.run({}, "r-log")
        self.assertTrue(r["ok"], r)
        self.assertTrue(logs)
        for f in logs:
            self.assertEqual(f["id"], "r-log")
        out = "".join(f["text"] for f in logs if f["stream"] == "stdout")
        err = "".join(f["text"] for f in logs if f["stream"] == "stderr")
        self.assertIn("to stdout 1", out)
        self.assertIn("to stderr 2", err)

    def test_context_encrypt_decrypt(self):
        b = self.ready(self.fn(self.CALLS))
        seen = []

        def reply(f):
            seen.append(f)
            if f["op"] == "encrypt":
                return {"ok": True, "data": {"card": "ev:abc"}}
            return {"ok": True, "data": {"card": "4242"}}

        r, _, calls = b.run({"card": "4242"}, "r-c", reply)
        self.assertTrue(r["ok"], r)
        self.assertEqual([c["op"] for c in calls], ["encrypt", "decrypt"])
        self.assertEqual(calls[0]["data"], {"card": "4242"})
        self.assertEqual(calls[0]["id"], "r-c")
        self.assertNotEqual(calls[0]["seq"], calls[1]["seq"])
        self.assertEqual(r["result"], {"enc": {"card": "ev:abc"}, "dec": {"card": "4242"}})
        # A refused call reaches the handler as an error.
        r, _, _ = b.run({"card": "1"}, "r-d", lambda f: {"ok": False, "error": "no such key"})
        self.assertFalse(r["ok"])
        self.assertIn("no such key", r["error"]["message"])

    def test_handler_throws(self):
        b = self.ready(self.fn(self.THROWS))
        r, _, _ = b.run({}, "r-t")
        self.assertEqual(r["id"], "r-t")
        self.assertFalse(r["ok"])
        self.assertIn("boom", r["error"]["message"])
        self.assertIn("boom", r["error"]["stack"])
        r, _, _ = b.run({"ok": 1}, "r-t2")  # the box survives its handler's throw
        self.assertTrue(r["ok"], r)

    def test_syntax_error_fails(self):
        b = self.box(self.SYNTAX)
        f, _ = b.start()
        self.assertEqual(f["t"], "fail")
        self.assertTrue(f["error"]["message"])
        self.assertIsNone(b.recv())
        self.assertNotEqual(b.close(), 0)

    def test_missing_handler_fails(self):
        b = self.box(self.fn(self.HELLO), handler=self.MISSING)
        f, _ = b.start()
        self.assertEqual(f["t"], "fail")
        self.assertIsNone(b.recv())

    def test_tmp_emptied_between_runs(self):
        b = self.ready(self.fn(self.TMP))
        r, _, _ = b.run({"write": True})
        self.assertTrue(r["ok"], r)
        self.assertEqual(sorted(r["result"]), [".hidden", "a.txt", "d"])
        r, _, _ = b.run({"write": False})
        self.assertEqual(r["result"], [])  # nothing of the previous run is left

    def test_env_restored(self):
        b = self.ready(self.fn(self.ENV), env={"FN_ENV": "fn", "KEEP": "1"})
        r, _, _ = b.run({"mutate": True})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["FN_ENV"], "fn")
        r, _, _ = b.run({"mutate": False})
        env = r["result"]
        self.assertEqual(env.get("FN_ENV"), "fn")
        self.assertEqual(env.get("KEEP"), "1")
        self.assertNotIn("ADDED", env)
        # evserver's (here: the test's) own environment never reaches the box
        self.assertNotIn("PATH", env)
        self.assertEqual(set(env), {"FN_ENV", "KEEP"})

    def test_cwd_is_the_code(self):
        b = self.ready(self.fn(self.CWD))
        r, _, _ = b.run({})
        self.assertEqual(r["result"], "/function")

    def test_late_output_stays_out_of_the_next_run(self):
        if self.RT != "node":
            self.skipTest("python threads carry no run")
        b = self.ready(self.fn(
            "if (data.leave) { setTimeout(() => console.log('late', data.secret), 50); return 1; }"
            "await new Promise(r => setTimeout(r, 200)); console.log('own'); return 2;"))
        r, logs, _ = b.run({"leave": True, "secret": "4242"}, "r-a")
        self.assertEqual(r["result"], 1)
        r, logs, _ = b.run({}, "r-b")
        self.assertEqual(r["result"], 2)
        self.assertEqual([f["text"] for f in logs], ["own\n"])

    def test_exit_on_channel_close(self):
        b = self.ready(self.fn(self.HELLO))
        b.sock.close()
        self.assertEqual(b.proc.wait(timeout=10), 0)


@unittest.skipUnless(NODE_OK, "node is not installed")
class NodeProtocol(Common, unittest.TestCase):
    RT = "node"
    fn = staticmethod(node_fn)
    HELLO = "return 'hello ' + data.name;"
    ECHO = "return data;"
    LOGS = ("console.log('to stdout', 1); console.error('to stderr', 2);"
            "process.stdout.write('raw\\n'); return 1;")
    CALLS = ("const enc = await context.encrypt(data); const dec = await context.decrypt(enc);"
             "return {enc, dec};")
    THROWS = "if (data.ok) return 1; throw new Error('boom');"
    SYNTAX = {"index.js": "exports.handler = async (data => {\n"}
    MISSING = "index.nope"
    CWD = "return process.cwd();"
    TMP = ("const fs = require('fs');"
           "if (data.write) { fs.writeFileSync('/tmp/a.txt', 'x'); fs.writeFileSync('/tmp/.hidden', 'x');"
           "fs.mkdirSync('/tmp/d/e', {recursive: true}); fs.writeFileSync('/tmp/d/e/f', 'x'); }"
           "return fs.readdirSync('/tmp');")
    ENV = ("if (data.mutate) { process.env.ADDED = 'x'; process.env.KEEP = 'changed';"
           "delete process.env.FN_ENV; return {FN_ENV: 'fn'}; } return Object.assign({}, process.env);")


@unittest.skipUnless(NODE_OK, "node is not installed")
class NodeModules(unittest.TestCase):
    def test_es_modules_and_node_modules(self):
        for files in ({"index.mjs": "export const handler = async (data) => data.x + 1;\n"},
                      {"package.json": '{"type": "module"}',
                       "index.js": "export async function handler(data) { return data.x + 1; }\n"},
                      {"node_modules/dep/index.js": "module.exports = (x) => x + 1;\n",
                       "index.js": "const dep = require('dep');\n"
                                   "exports.handler = async (data) => dep(data.x);\n"}):
            with self.subTest(files=sorted(files)):
                b = Box("node", files)
                try:
                    self.assertEqual(b.start()[0], {"t": "ready"})
                    r, _, _ = b.run({"x": 1})
                    self.assertEqual(r["result"], 2)
                finally:
                    b.close()


class PythonProtocol(Common, unittest.TestCase):
    def test_async_handler(self):
        b = self.ready({"main.py": "import asyncio\nasync def handler(data, context):\n"
                                   "    await asyncio.sleep(0.01)\n    return data\n"})
        r, _, _ = b.run({"a": 1})
        self.assertEqual(r["result"], {"a": 1})

    RT = "python"
    fn = staticmethod(py_fn)
    HELLO = "return 'hello ' + data['name']"
    ECHO = "return data"
    LOGS = ("import sys\nprint('to stdout', 1)\nprint('to stderr', 2, file=sys.stderr)\n"
            "sys.stdout.write('raw\\n')\nreturn 1")
    CALLS = "enc = context.encrypt(data)\ndec = context.decrypt(enc)\nreturn {'enc': enc, 'dec': dec}"
    THROWS = "if data.get('ok'): return 1\nraise ValueError('boom')"
    SYNTAX = {"main.py": "def handler(data, context)\n    return 1\n"}
    MISSING = "main.nope"
    CWD = "import os\nreturn os.getcwd()"
    TMP = ("import os\nif data['write']:\n    open('/tmp/a.txt', 'w').write('x')\n"
           "    open('/tmp/.hidden', 'w').write('x')\n    os.makedirs('/tmp/d/e')\n"
           "    open('/tmp/d/e/f', 'w').write('x')\nreturn os.listdir('/tmp')")
    ENV = ("import os\nif data['mutate']:\n    os.environ['ADDED'] = 'x'\n"
           "    os.environ['KEEP'] = 'changed'\n    del os.environ['FN_ENV']\n"
           "    return {'FN_ENV': 'fn'}\nreturn dict(os.environ)")


# ---- escape suite ---------------------------------------------------------------------------

class HostBait:
    """What a function must not reach: another function's code, a state dir with a database, an
    admin unix socket, a TCP port on the host's 127.0.0.1."""

    def __init__(self):
        # Outside /tmp, so that the box's own /tmp cannot hide it by chance.
        self.dir = tempfile.mkdtemp(prefix="fnbox-bait-", dir="/var/tmp" if os.access(
            "/var/tmp", os.W_OK) else None)
        os.chmod(self.dir, 0o755)
        self.other_code = os.path.join(self.dir, "other-fn")
        os.mkdir(self.other_code)
        self.other_file = os.path.join(self.other_code, "index.js")
        with open(self.other_file, "w") as f:
            f.write("// another app's code\n")
        os.chmod(self.other_file, 0o644)
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.state)
        self.db = os.path.join(self.state, "evserver.db")
        with open(self.db, "w") as f:
            f.write("secret state\n")
        os.chmod(self.db, 0o644)
        self.admin = os.path.join(self.dir, "admin.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.admin)
        os.chmod(self.admin, 0o777)
        self.unix.listen(8)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.port = self.tcp.getsockname()[1]

    def payload(self):
        return {"other": self.other_file, "otherDir": self.other_code, "db": self.db,
                "state": self.state, "admin": self.admin, "port": self.port}

    def close(self):
        self.unix.close()
        self.tcp.close()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


NODE_ESCAPES = r"""
const fs = require('fs'); const net = require('net'); const cp = require('child_process');
const out = {};
const tryIt = async (name, f) => {
  try { const v = await f(); out[name] = 'ALLOWED ' + JSON.stringify(v === undefined ? null : v).slice(0, 80); }
  catch (e) { out[name] = 'denied ' + (e.code || e.message); }
};
await tryIt('read other code', () => fs.readFileSync(data.other, 'utf8'));
await tryIt('list other code', () => fs.readdirSync(data.otherDir));
await tryIt('read state db', () => fs.readFileSync(data.db, 'utf8'));
out.passwd = fs.readFileSync('/etc/passwd', 'utf8');
await tryIt('read /etc/hostname', () => fs.readFileSync('/etc/hostname', 'utf8'));
await tryIt('read /etc/shadow', () => fs.readFileSync('/etc/shadow', 'utf8'));
await tryIt('admin socket', () => new Promise((res, rej) => {
  const s = net.connect({path: data.admin}); s.on('connect', () => res('connected')); s.on('error', rej); }));
await tryIt('tcp host loopback', () => new Promise((res, rej) => {
  const s = net.connect({host: '127.0.0.1', port: data.port}); s.on('connect', () => res('connected')); s.on('error', rej);
  setTimeout(() => rej(new Error('timeout')), 3000); }));
await tryIt('spawn', () => cp.spawnSync('/usr/bin/node', ['-e', '1']).error ? (() => { throw cp.spawnSync('/usr/bin/node', ['-e', '1']).error; })() : 'ran');
await tryIt('exec', () => new Promise((res, rej) => cp.exec('id', (e, o) => e ? rej(e) : res(o))));
await tryIt('fork bomb', () => { for (let i = 0; i < 50; i++) { const r = cp.spawnSync(process.execPath, ['-e', '1']); if (r.error) throw r.error; } return 'ran'; });
await tryIt('write /function', () => fs.writeFileSync('/function/x', 'x'));
await tryIt('write /', () => fs.writeFileSync('/x', 'x'));
await tryIt('write /bootstrap', () => fs.writeFileSync('/bootstrap/bootstrap.js', 'x'));
await tryIt('write /usr', () => fs.writeFileSync(process.execPath, 'x'));
await tryIt('mkdir /etc/x', () => fs.mkdirSync('/etc/x'));
await tryIt('write /dev/x', () => fs.writeFileSync('/dev/x', 'x'));
out.procs = fs.readdirSync('/proc').filter(n => /^\d+$/.test(n));
const st = fs.readFileSync('/proc/self/status', 'utf8');
for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp'])
  out[k] = (st.match(new RegExp('^' + k + ':\\s*(\\S+)', 'm')) || [])[1];
out.root = fs.readdirSync('/').sort();
out.hostname = require('os').hostname();
return out;
"""

PY_ESCAPES = r"""
import ctypes, errno, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def try_it(name, f):
    try:
        out[name] = 'ALLOWED %r' % (f(),)
    except Exception as e:
        out[name] = 'denied %s' % (getattr(e, 'errno', None) and errno.errorcode.get(e.errno) or type(e).__name__)
def sysc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *args)
    if r == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r
try_it('read other code', lambda: open(data['other']).read())
try_it('read state db', lambda: open(data['db']).read())
try_it('list state dir', lambda: os.listdir(data['state']))
out['passwd'] = open('/etc/passwd').read()
try_it('read /etc/hostname', lambda: open('/etc/hostname').read())
def unix_connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(data['admin']); return 'connected'
try_it('admin socket', unix_connect)
try_it('inet socket', lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
try_it('inet6 socket', lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
try_it('raw socket', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1))
try_it('packet socket', lambda: socket.socket(17, socket.SOCK_RAW, 0))
try_it('netlink socket', lambda: socket.socket(16, socket.SOCK_RAW, 0))
try_it('tcp host loopback', lambda: socket.create_connection(('127.0.0.1', data['port']), timeout=3))
try_it('os.fork', lambda: os.fork())
try_it('subprocess', lambda: subprocess.run(['/bin/sh', '-c', 'id']))
try_it('vfork', lambda: sysc(58))
try_it('clone3', lambda: sysc(435, 0, 0))
try_it('mount', lambda: sysc(165, b'none', b'/tmp', b'tmpfs', 0, 0))
try_it('unshare user', lambda: sysc(272, 0x10000000))
try_it('unshare net', lambda: sysc(272, 0x40000000))
try_it('setns', lambda: sysc(308, 0, 0))
try_it('pivot_root', lambda: sysc(155, b'/tmp', b'/tmp'))
try_it('chroot', lambda: os.chroot('/tmp'))
try_it('keyctl', lambda: sysc(250, 0, 0, 0, 0, 0))
try_it('io_uring_setup', lambda: sysc(425, 1, 0))
try_it('write /function', lambda: open('/function/x', 'w').write('x'))
try_it('write /', lambda: open('/x', 'w').write('x'))
try_it('write stdlib', lambda: open(os.__file__, 'a').write('x'))
try_it('mknod', lambda: os.mknod('/tmp/n', 0o20666, os.makedev(1, 3)))
try_it('setuid', lambda: os.setuid(1))
try_it('ssl private keys', lambda: os.listdir('/etc/ssl/private'))
def rewrite(p):  # the same value back: harmless if it ever got through
    v = open(p).read()
    with open(p, 'w') as f:
        f.write(v)
for p in ('/proc/sys/kernel/core_pattern', '/proc/sys/kernel/modprobe', '/proc/sys/vm/overcommit_memory',
          '/proc/sys/net/ipv4/ip_forward', '/proc/sysrq-trigger', '/proc/self/oom_score_adj'):
    try_it('write ' + p, lambda: rewrite(p) if 'sysrq' not in p else os.close(os.open(p, os.O_WRONLY)))
import ssl
out['ca_certs'] = len(ssl.create_default_context().get_ca_certs()) + len(os.listdir(ssl.get_default_verify_paths().openssl_capath))
out['procs'] = [n for n in os.listdir('/proc') if n.isdigit()]
for line in open('/proc/self/status'):
    k, _, v = line.partition(':')
    if k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp'):
        out[k] = v.strip()
out['root'] = sorted(os.listdir('/'))
out['hostname'] = socket.gethostname()
libdir = '/usr/lib/x86_64-linux-gnu'
out['libs'] = sorted(os.listdir(libdir)) if os.path.isdir(libdir) else None
return out
"""

# Each deadly call kills the box (SIGSYS): run one per box.
PY_DEADLY = {
    "ptrace": "sysc(101, 0, 0, 0, 0)",
    "bpf": "sysc(321, 0, 0, 0)",
    "kexec_load": "sysc(246, 0, 0, 0, 0)",
    "perf_event_open": "sysc(298, 0, 0, 0, 0, 0)",
    "init_module": "sysc(175, 0, 0, 0)",
    "process_vm_readv": "sysc(310, 1, 0, 0, 0, 0, 0)",
    "execve": "import sys\nos.execv(sys.executable, [sys.executable, '-c', '0'])",
    "execveat": "sysc(322, -100, b'/function/main.py', 0, 0, 0)",
}
PY_SYSC = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "def sysc(nr, *a):\n    return libc.syscall(nr, *a)\n")


class EscapeChecks:
    def check_out(self, out, extra_denied=()):
        allowed = {k: v for k, v in out.items() if isinstance(v, str) and v.startswith("ALLOWED")}
        self.assertEqual(allowed, {}, "escapes that worked: %r" % allowed)
        self.assertEqual(out["procs"], ["1"])  # only the box in its pid namespace
        self.assertEqual(out["passwd"], "root:x:0:0:function:/tmp:/nonexistent\n")  # the box's
        for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            self.assertEqual(int(out[k], 16), 0, k)
        self.assertEqual(out["NoNewPrivs"], "1")
        self.assertEqual(out["Seccomp"], "2")
        self.assertEqual(out["hostname"], "fnbox")
        for hidden in ("root", "home", "work", "var", "srv", "opt", "mnt", "sys"):
            self.assertNotIn(hidden, out["root"])
        self.assertTrue({"bootstrap", "dev", "function", "proc", "tmp"} <= set(out["root"]))


class EscapeTests(EscapeChecks, unittest.TestCase):
    def setUp(self):
        self.bait = HostBait()
        self.addCleanup(self.bait.close)

    def box(self, rt, files, **kw):
        b = Box(rt, files, **kw)
        self.addCleanup(b.close)
        f, _ = b.start()
        self.assertEqual(f, {"t": "ready"})
        return b

    @unittest.skipUnless(NODE_OK, "node is not installed")
    def test_node_escapes(self):
        b = self.box("node", node_fn(NODE_ESCAPES))
        r, _, _ = b.run(self.bait.payload())
        self.assertTrue(r["ok"], r)
        self.check_out(r["result"])
        self.assertTrue(r["result"]["spawn"].startswith("denied"), r["result"])

    def test_python_escapes(self):
        b = self.box("python", py_fn(PY_ESCAPES))
        r, _, _ = b.run(self.bait.payload())
        self.assertTrue(r["ok"], r)
        out = r["result"]
        self.check_out(out)
        self.assertEqual(out["clone3"], "denied ENOSYS")
        self.assertEqual(out["inet socket"], "denied EPERM")
        self.assertEqual(out["mount"], "denied EPERM")
        if os.path.isdir("/etc/ssl/certs"):
            self.assertGreater(out["ca_certs"], 0)  # public CAs are there, private keys not
        if out["libs"] is not None:  # the libraries python loads, not the host's whole directory
            self.assertIn("libc.so.6", out["libs"])
            self.assertLess(len(out["libs"]), 80, out["libs"])

    def test_net_namespace_alone(self):
        # With seccomp in log mode (sockets allowed), the network namespace still has nothing
        # but its own loopback: the host's 127.0.0.1 port is not there.
        b = self.box("python", py_fn(
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', data['port']), timeout=3)\n"
            "    return 'ALLOWED'\nexcept OSError as e:\n    return e.errno"), extra_args=["--seccomp-log"])
        r, _, _ = b.run(self.bait.payload())
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"], 111)  # ECONNREFUSED: the box's loopback, nobody listening

    def test_python_deadly_calls_kill_the_box(self):
        for name, call in PY_DEADLY.items():
            with self.subTest(call=name):
                b = Box("python", py_fn(PY_SYSC + call + "\nreturn 'survived'"))
                try:
                    f, _ = b.start()
                    self.assertEqual(f, {"t": "ready"})
                    r, _, _ = b.run({})
                    self.assertIsNone(r, "%s returned: %r" % (name, r))
                    self.assertEqual(b.proc.wait(timeout=10), -signal.SIGSYS)
                finally:
                    b.close()

    def test_tmp_size_enforced_box_survives(self):
        for rt, files in (("python", py_fn(
                "try:\n    f = open('/tmp/big', 'wb')\n    [f.write(b'x' * 65536) for _ in range(64)]\n"
                "    f.flush()\n    return 'wrote 4 MiB'\nexcept OSError as e:\n    return e.errno")),
                ("node", node_fn(
                    "const fs = require('fs'); try { const fd = fs.openSync('/tmp/big', 'w');"
                    "for (let i = 0; i < 64; i++) fs.writeSync(fd, Buffer.alloc(65536)); return 'wrote 4 MiB'; }"
                    "catch (e) { return e.code; }"))):
            if rt == "node" and not NODE_OK:
                continue
            with self.subTest(runtime=rt):
                b = self.box(rt, files, tmp_size=1 << 20)
                r, _, _ = b.run({})
                self.assertTrue(r["ok"], r)
                self.assertIn(r["result"], (28, "ENOSPC"))
                r, _, _ = b.run({})  # alive, and /tmp was emptied: the same again
                self.assertIn(r["result"], (28, "ENOSPC"))

    def test_locked_leftovers_do_not_survive(self):
        # A run hides data for the next one in a directory it made unreadable, under /tmp made
        # unwritable; the next run finds an empty /tmp (or a fresh box), never the data.
        for rt, files in (("python", py_fn(
                "import os\nif data['hide']:\n    os.makedirs('/tmp/a/b')\n"
                "    open('/tmp/a/b/secret', 'w').write('card 4242')\n    os.chmod('/tmp/a/b', 0)\n"
                "    os.chmod('/tmp/a', 0)\n    os.chmod('/tmp', 0o500)\n    return 'hidden'\n"
                "os.chmod('/tmp', 0o1777)\nreturn [os.listdir('/tmp'), os.getcwd()]")),
                ("node", node_fn(
                    "const fs = require('fs'); if (data.hide) { fs.mkdirSync('/tmp/a/b', {recursive: true});"
                    "fs.writeFileSync('/tmp/a/b/secret', 'card 4242'); fs.chmodSync('/tmp/a/b', 0);"
                    "fs.chmodSync('/tmp/a', 0); fs.chmodSync('/tmp', 0o500); process.chdir('/tmp'); return 'hidden'; }"
                    "return [fs.readdirSync('/tmp'), process.cwd()];"))):
            if rt == "node" and not NODE_OK:
                continue
            with self.subTest(runtime=rt):
                b = self.box(rt, files)
                r, _, _ = b.run({"hide": True})
                self.assertEqual(r["result"], "hidden")
                r, _, _ = b.run({"hide": False})
                self.assertIsNotNone(r, "the box ended instead: acceptable, but not expected here")
                self.assertEqual(r["result"], [[], "/function"])

    @unittest.skipIf(fnbox.sanitized(), "ASan's shadow memory does not fit in RLIMIT_AS")
    def test_python_memory_limit(self):
        b = self.box("python", py_fn("return len(bytearray(data['n']))"), rlimit_as=1 << 30)
        r, _, _ = b.run({"n": 2 << 30})
        self.assertFalse(r["ok"])
        self.assertIn("MemoryError", r["error"]["stack"])
        r, _, _ = b.run({"n": 1 << 20})
        self.assertEqual(r["result"], 1 << 20)

    @unittest.skipUnless(NODE_OK, "node is not installed")
    def test_node_memory_limit(self):
        # The heap limit comes from the function's NODE_OPTIONS here (the plugin's choice):
        # running out ends the box (V8 aborts), not the host.
        b = self.box("node", node_fn("const a = []; for (;;) a.push(new Array(1e5).fill(1));"),
                     env={"NODE_OPTIONS": "--max-old-space-size=64"})
        r, _, _ = b.run({})
        self.assertIsNone(r)
        self.assertNotEqual(b.proc.wait(timeout=30), 0)


class Lifecycle(unittest.TestCase):
    def box_pids(self, pid):
        """evs-fnbox's descendants, from /proc."""
        kids, todo = [], [pid]
        while todo:
            p = todo.pop()
            try:
                with open("/proc/%d/task/%d/children" % (p, p)) as f:
                    c = [int(x) for x in f.read().split()]
            except OSError:
                c = []
            kids += c
            todo += c
        return kids

    def alive(self, pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def test_kill_ends_the_tree(self):
        for rt in ("python", "node") if NODE_OK else ("python",):
            with self.subTest(runtime=rt):
                files = (py_fn("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\nreturn 1")
                         if rt == "python" else node_fn("setInterval(() => {}, 1000); return 1;"))
                b = Box(rt, files)
                try:
                    f, _ = b.start()
                    self.assertEqual(f, {"t": "ready"})
                    r, _, _ = b.run({})
                    self.assertTrue(r["ok"])
                    kids = self.box_pids(b.proc.pid)
                    self.assertTrue(kids)
                    os.kill(b.proc.pid, signal.SIGKILL)
                    b.proc.wait(timeout=10)
                    deadline = time.monotonic() + 5
                    while any(self.alive(k) for k in kids) and time.monotonic() < deadline:
                        time.sleep(0.02)
                    self.assertEqual([k for k in kids if self.alive(k)], [])
                finally:
                    b.close()

    @unittest.skipUnless(NODE_OK, "node is not installed")
    def test_node_under_write_xor_execute(self):
        # As under systemd's MemoryDenyWriteExecute=: V8's JIT cannot run, node runs jitless.
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if libc.prctl(65, 1, 0, 0, 0) == 0 else 1)  # PR_SET_MDWE
        if os.waitpid(pid, 0)[1] != 0:
            self.skipTest("no PR_SET_MDWE in this kernel")
        b = Box("node", node_fn("return [1, 2, 3].map(x => x * data.k);"),
                preexec=lambda: libc.prctl(65, 1, 0, 0, 0))
        try:
            f, _ = b.start()
            self.assertEqual(f, {"t": "ready"})
            r, _, _ = b.run({"k": 2})
            self.assertEqual(r["result"], [2, 4, 6])
        finally:
            b.close()

    def test_box_uid_on_the_host(self):
        # Started by root, no process of the box is the host's root (EVS_FNBOX_UID instead);
        # started by another user, the box is that user.
        want = 2147483646 if os.geteuid() == 0 else os.geteuid()
        b = Box("python", py_fn("return 1"))
        try:
            self.assertEqual(b.start()[0], {"t": "ready"})
            kids = self.box_pids(b.proc.pid)
            self.assertGreaterEqual(len(kids), 1)
            for k in kids:
                with open("/proc/%d/status" % k) as f:
                    ids = {l.split(":")[0]: l.split()[1:] for l in f if l.startswith(("Uid", "Gid"))}
                self.assertEqual(ids["Uid"], [str(want)] * 4, k)
                self.assertEqual(ids["Gid"], [str(want)] * 4 if os.geteuid() == 0 else ids["Gid"], k)
        finally:
            b.close()

    def test_set_up_error_is_a_fail_frame(self):
        b = Box("python", py_fn("return 1"), code_dir="/nonexistent/code")
        try:
            f, _ = b.start()
            self.assertEqual(f["t"], "fail")
            self.assertIn("/nonexistent/code", f["error"]["message"])
        finally:
            self.assertEqual(b.close(), 127)


# ---- egress ---------------------------------------------------------------------------------

class EgressProxy:
    """A CONNECT proxy on a unix socket, as the plugin runs one: every tunnel goes to the
    test's HTTP server on 127.0.0.1, whatever host was asked for; hosts in `refuse` get 403."""

    def __init__(self, target_port, refuse=(), ports=None):
        self.dir = tempfile.mkdtemp(prefix="fnbox-egress-")
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "egress.sock")
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        os.chmod(self.path, 0o777)
        self.srv.listen(16)
        self.target_port = target_port
        self.refuse = refuse
        self.ports = ports or {}  # requested port -> the local server for it
        self.asked = []
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(c,), daemon=True).start()

    def one(self, c):
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(1)
            if not d:
                c.close()
                return
            head += d
        target = head.split(b" ")[1].decode()
        self.asked.append(target)
        if target.rsplit(":", 1)[0] in self.refuse:
            c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            c.close()
            return
        port = int(target.rsplit(":", 1)[1])
        up = socket.create_connection(("127.0.0.1", self.ports.get(port, self.target_port)))
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    b.sendall(d)
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(c, up), daemon=True).start()
        pump(up, c)

    def close(self):
        self.srv.close()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


class Egress(unittest.TestCase):
    def setUp(self):
        import http.server

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = ("hello from %s" % self.headers.get("Host")).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.addCleanup(self.http.server_close)
        self.addCleanup(self.http.shutdown)
        # HTTPS: a self-signed certificate for api.example.test, trusted by the functions
        # through their own code (python: cadata; node: NODE_EXTRA_CA_CERTS=/function/ca.pem).
        import ssl
        self.certdir = tempfile.mkdtemp(prefix="fnbox-tls-")
        self.addCleanup(lambda: __import__("shutil").rmtree(self.certdir, ignore_errors=True))
        key, crt = (os.path.join(self.certdir, n) for n in ("key.pem", "crt.pem"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", "/CN=api.example.test",
                        "-addext", "subjectAltName=DNS:api.example.test"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(crt) as f:
            self.ca = f.read()
        self.https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        self.https.socket = ctx.wrap_socket(self.https.socket, server_side=True)
        threading.Thread(target=self.https.serve_forever, daemon=True).start()
        self.addCleanup(self.https.server_close)
        self.addCleanup(self.https.shutdown)
        self.proxy = EgressProxy(self.http.server_address[1], refuse=("denied.test",),
                                 ports={443: self.https.server_address[1]})
        self.addCleanup(self.proxy.close)

    def test_private_egress_socket(self):
        # A socket only its owner may use still works: as root the box then keeps uid 0.
        os.chmod(self.proxy.path, 0o600)
        b = self.box("python", py_fn(
            "import urllib.request\nreturn urllib.request.urlopen('http://a.test:8080/', timeout=10).read().decode()"))
        r, _, _ = b.run({})
        self.assertEqual(r["result"], "hello from a.test:8080")

    def box(self, rt, files, **kw):
        b = Box(rt, files, egress=self.proxy.path, **kw)
        self.addCleanup(b.close)
        f, _ = b.start()
        self.assertEqual(f, {"t": "ready"}, getattr(b, "stderr", ""))
        return b

    def test_python_http_through_proxy(self):
        b = self.box("python", py_fn(
            "import urllib.request\nout = {}\n"
            "out['ok'] = urllib.request.urlopen('http://api.example.test:8080/x', timeout=10).read().decode()\n"
            "try:\n    urllib.request.urlopen('http://denied.test/', timeout=10)\n    out['denied'] = 'ALLOWED'\n"
            "except Exception as e:\n    out['denied'] = str(e)\nreturn out"))
        r, _, _ = b.run({})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["ok"], "hello from api.example.test:8080")
        self.assertIn("403", r["result"]["denied"])
        self.assertIn("api.example.test:8080", self.proxy.asked)

    @unittest.skipUnless(NODE_OK, "node is not installed")
    def test_node_http_and_fetch_through_proxy(self):
        b = self.box("node", node_fn(
            "const http = require('http'); const out = {};"
            "out.ok = await new Promise((res, rej) => http.get('http://api.example.test:8080/x', r => {"
            "  let s = ''; r.on('data', d => s += d); r.on('end', () => res(s)); }).on('error', rej));"
            "out.denied = await new Promise(res => http.get('http://denied.test/', r => res('ALLOWED'))"
            "  .on('error', e => res(e.message)));"
            "try { out.fetch = await (await fetch('http://fetch.example.test:81/y')).text(); }"
            "catch (e) { out.fetch = 'error ' + e.message + ' ' + (e.cause && e.cause.message); }"
            "return out;"))
        r, _, _ = b.run({})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["ok"], "hello from api.example.test:8080")
        self.assertIn("403", r["result"]["denied"])
        self.assertEqual(r["result"]["fetch"], "hello from fetch.example.test:81")

    def test_python_https_through_proxy(self):
        b = self.box("python", py_fn(
            "import ssl, urllib.request\nctx = ssl.create_default_context(cadata=data['ca'])\n"
            "return urllib.request.urlopen('https://api.example.test/x', context=ctx, timeout=10).read().decode()"))
        r, _, _ = b.run({"ca": self.ca})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"], "hello from api.example.test")

    def test_python_requests_through_proxy(self):
        # requests (urllib3 underneath) resolves and connects by itself: the bootstrap hooks it.
        # The function brings its own copy, as a deployed one would; skipped without one here.
        src, cands = None, list(sys.path)
        try:  # or from any python3 on PATH that has them (a pyenv one, say)
            cands.append(subprocess.run(
                ["python3", "-c", "import os, requests; print(os.path.dirname(os.path.dirname("
                 "requests.__file__)))"], capture_output=True, text=True, timeout=20).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
        for d in cands:
            if all(os.path.isdir(os.path.join(d, m)) for m in ("requests", "urllib3", "idna", "certifi")):
                src = d
                break
        if not src or not os.access(os.path.join(src, "requests", "__init__.py"), os.R_OK):
            self.skipTest("no requests/urllib3/idna/certifi to vendor")
        import shutil
        files = py_fn("import requests\nout = {}\n"
                      "out['https'] = requests.get('https://api.example.test/x', verify='/function/ca.pem', timeout=10).text\n"
                      "out['http'] = requests.get('http://api.example.test:8080/y', timeout=10).text\n"
                      "return out")
        files["ca.pem"] = self.ca
        b = Box("python", files, egress=self.proxy.path)
        self.addCleanup(b.close)
        for m in ("requests", "urllib3", "idna", "certifi", "charset_normalizer"):
            if os.path.isdir(os.path.join(src, m)):
                shutil.copytree(os.path.join(src, m), os.path.join(b.code, m), dirs_exist_ok=True)
        f, _ = b.start()
        self.assertEqual(f, {"t": "ready"})
        r, _, _ = b.run({})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"], {"https": "hello from api.example.test",
                                       "http": "hello from api.example.test:8080"})

    @unittest.skipUnless(NODE_OK, "node is not installed")
    def test_node_https_and_fetch_through_proxy(self):
        files = node_fn(
            "const https = require('https'); const out = {};"
            "out.https = await new Promise((res, rej) => https.get('https://api.example.test/x', r => {"
            "  let s = ''; r.on('data', d => s += d); r.on('end', () => res(s)); }).on('error', rej));"
            "out.fetch = await (await fetch('https://api.example.test/y')).text();"
            "return out;")
        files["ca.pem"] = self.ca
        b = self.box("node", files, env={"NODE_EXTRA_CA_CERTS": "/function/ca.pem"})
        r, _, _ = b.run({})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"], {"https": "hello from api.example.test",
                                       "fetch": "hello from api.example.test"})

    def test_no_egress_no_network(self):
        # Without --egress the same code has no way out.
        b = Box("python", py_fn(
            "import urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:%d/', timeout=5)\n"
            "    return 'ALLOWED'\nexcept Exception as e:\n    return str(e)" % self.http.server_address[1]))
        self.addCleanup(b.close)
        self.assertEqual(b.start()[0], {"t": "ready"})
        r, _, _ = b.run({})
        self.assertNotIn("ALLOWED", r["result"])


GROUPS = {
    "protocol": [NodeProtocol, NodeModules, PythonProtocol],
    "escape": [EscapeTests],
    "lifecycle": [Lifecycle],
    "egress": [Egress],
}


def main():
    args = sys.argv[1:]
    if "--as-nobody" in args:
        args.remove("--as-nobody")
        if os.geteuid() == 0:
            # The same tests as an unprivileged user: the box needs no privilege of its own.
            os.execvp("setpriv", ["setpriv", "--reuid", "65534", "--regid", "65534",
                                  "--clear-groups", "--reset-env", "env",
                                  "EVS_BUILD_DIR=" + os.path.abspath(fnbox.BUILD),
                                  "PATH=/usr/bin:/bin", "HOME=/tmp",
                                  "/usr/bin/python3", os.path.abspath(__file__)] + args)
    groups = [a for a in args if a in GROUPS] or list(GROUPS)
    verbosity = 2 if "-v" in args else 1
    suite = unittest.TestSuite()
    for g in groups:
        for cls in GROUPS[g]:
            suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(cls))
    r = unittest.TextTestRunner(verbosity=verbosity).run(suite)
    sys.exit(0 if r.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
