"""The Cages runner (plugins/cage-broker/cage_run.c, sandbox/cage_vmm.c, sandbox/cage_init.c)
without the front: the test plugin test-cage-run ($EVS_BUILD_DIR/test-plugins.d) starts one cage
from an image this test assembles (test-bin/evs-test-cage-mkimage: evs-cage-init as /init,
test-bin/hello-cage as the app), and the test talks to the app through the runner's app
socket. For each backend: /hello, the Encryption API round trip through the host, the
environment at start, a crash restarted and reported, no network without egress, egress on
(an allowed server name connects to a local TLS server, another fails at the handshake), and
the escape suite.

The kvm backend needs /dev/kvm, qemu-system-x86_64 and a cage kernel directory
($EVS_CAGE_KERNEL_DIR or /var/cache/evserver/cage-kernel, made by scripts/cage-kernel); it is
skipped, saying which, when one is missing or when the kernel cannot boot here at all (a bare
boot that powers off at once is tried first)."""
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import evstest

QEMU = "/usr/bin/qemu-system-x86_64"


def kernel_dir():
    for d in (os.environ.get("EVS_CAGE_KERNEL_DIR"), "/var/cache/evserver/cage-kernel"):
        if d and os.path.exists(os.path.join(d, "vmlinuz")):
            return d
    return None


def kernel_parts():
    """(vmlinuz, [modules in order]) of the cage kernel dir, or a placeholder kernel (the
    sandbox backend never boots it) and no modules."""
    d = kernel_dir()
    if not d:
        k = os.path.join(evstest.tmpdir("evs-cage-k-"), "vmlinuz")
        with open(k, "wb") as f:
            f.write(b"not a kernel: the sandbox backend runs /init directly\n")
        return k, []
    with open(os.path.join(d, "modules", "order")) as f:
        mods = [os.path.join(d, "modules", l.strip()) for l in f if l.strip()]
    return os.path.join(d, "vmlinuz"), mods


def make_image(cage, init=None, app=None, cmdline="", etc_owner=None):
    """An image: /init, and /rootfs/bin/hello-cage with /cage.json from the dict cage.
    etc_owner (uid, gid): /rootfs/etc and its files belong to them, and the image keeps the
    rootfs's owners (as `evctl cage build` does), else everything is 0:0."""
    d = evstest.tmpdir("evs-cage-img-")
    root = os.path.join(d, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "etc"))
    shutil.copy(app or evstest.build_path("test-bin", "hello-cage"),
                os.path.join(root, "bin", "hello-cage"))
    with open(os.path.join(root, "etc", "hostname"), "w") as f:
        f.write("cage\n")
    if etc_owner:
        for p in (os.path.join(root, "etc"), os.path.join(root, "etc", "hostname")):
            os.chown(p, *etc_owner)
    conf = {"version": 1, "name": "hello-cage", "debug": False, "api_key_auth": True,
            "egress": {"enabled": False, "destinations": ["*"], "ports": [443]},
            "entrypoint": ["/bin/hello-cage"], "cmd": [], "env": ["PATH=/bin", "FROM_IMAGE=yes"],
            "workdir": "/", "user": "0:0", "port": 8008}
    conf.update(cage)
    cj = os.path.join(d, "cage.json")
    with open(cj, "w") as f:
        json.dump(conf, f)
    kernel, mods = kernel_parts()
    out = os.path.join(d, "enclave.eif")
    args = [evstest.build_path("test-bin", "evs-test-cage-mkimage"), "--out", out,
            "--kernel", kernel, "--cmdline", "console=ttyS0 quiet panic=-1 reboot=t " + cmdline,
            "--init", init or evstest.build_path("evs-cage-init"), "--rootfs", root,
            "--cage-json", cj]
    for m in mods:
        args += ["--module", m]
    if etc_owner:
        args += ["--keep-owner", "1"]
    subprocess.run(args, check=True, capture_output=True)
    return out


def plugins_dir():
    d = evstest.tmpdir("evs-cage-plugins-")
    os.symlink(evstest.build_path("test-plugins.d", "test-cage-run.so"),
               os.path.join(d, "test-cage-run.so"))
    return d


def start(image, backend, **plugin):
    settings = {"image": image, "backend": backend}
    settings.update(plugin)
    cfg = evstest.write_config(server={"plugins_dir": plugins_dir(), "log_level": "debug"},
                               plugins={"test-cage-run": settings})
    return evstest.Server(cfg).start()


def state(srv):
    r = srv.admin_get("/test-cage")
    assert r.status == 200, (r.status, r.body)
    return json.loads(r.body)


def wait_ready(srv, timeout=60.0, after=0):
    """Waits for READY (the (after+1)-th one in the history) and returns the state."""
    def ready():
        s = state(srv)
        n = sum(1 for h in s["history"] if h.startswith("READY"))
        return s if s["state"] == "READY" and n > after and s["app_socket"] else None
    return evstest.wait_for(ready, timeout=timeout, interval=0.02, what="the cage READY")


def app(srv, method, path, body=b"", headers=None, timeout=30.0):
    """One HTTP request through the runner's app socket: (status, parsed JSON or bytes)."""
    sock = state(srv)["app_socket"]
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock)
    h = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    s.sendall(("%s %s HTTP/1.1\r\nHost: cage\r\nContent-Length: %d\r\n%s\r\n"
               % (method, path, len(body), h)).encode() + body)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    try:
        return status, json.loads(rest)
    except ValueError:
        return status, rest


class TlsServer:
    """A local TLS server (self-signed) counting the handshakes it completed."""

    def __init__(self):
        d = evstest.tmpdir("evs-cage-tls-")
        self.cert, self.key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                        "/CN=localhost", "-keyout", self.key, "-out", self.cert],
                       check=True, capture_output=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert, self.key)
        self.port = evstest.free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.hellos = 0
        self.stopped = False
        threading.Thread(target=self.run, daemon=True).start()
        evstest.defer(self.stop)

    def run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.settimeout(5)
            try:
                if c.recv(1, socket.MSG_PEEK) == b"\x16":
                    self.hellos += 1
                    self.ctx.wrap_socket(c, server_side=True).close()
            except (OSError, ssl.SSLError):
                pass
            c.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


def tcg_cmdline(extra):
    """Under software emulation the kernel's TSC calibration against the PIT fails when the
    machine is busy (and the boot then stalls): give it a frequency instead."""
    return "tsc_early_khz=2500000" if extra.get("tcg") else ""


def check_runner(backend, timeout=60.0, **extra):
    """The whole runner suite on one backend."""
    tls = TlsServer()
    image = make_image({"egress": {"enabled": True, "destinations": ["localhost"],
                                   "ports": [tls.port]}, "debug": True}, cmdline=tcg_cmdline(extra))
    t0 = time.monotonic()
    srv = start(image, backend, env="SECRET_TOKEN=s3cr3t-value;REGION=europe", egress="on",
                egress_allow="localhost", egress_ports=str(tls.port), allow_private="on",
                debug="on", **extra)
    try:
        s = wait_ready(srv, timeout)
        print("  %s: READY %.3f s after the server started" % (backend, time.monotonic() - t0))
        assert s["backend"] == backend, s
        assert s["history"][0].startswith("STARTING: booting"), s
        st, body = app(srv, "GET", "/hello")
        assert st == 200 and body == {
            "response": "Hello! I'm writing to you from within an enclave"}, (st, body)
        # POST bodies and headers arrive as sent, both ways through the mux (a body over one
        # credit window, so the flow control is exercised).
        big = (b"0123456789abcdef" * 8192)
        st, body = app(srv, "POST", "/echo", big, {"X-Test": "yes"})
        assert st == 200 and body["body"].encode() == big and body["headers"]["x-test"] == "yes"
        # The Encryption API: the host answers, the app gets the answers.
        st, body = app(srv, "POST", "/roundtrip", b'{"foo":"bar"}')
        assert st == 200, body
        assert body["encrypt_status"] == 200 and body["decrypt_status"] == 200, body
        assert body["encrypted"] == 'HOST-ENC:{"foo":"bar"}', body
        assert body["decrypted"] == '{"foo":"bar"}', body
        assert state(srv)["api_calls"] == 2
        # The environment at start: the image's and the deployment's (secrets included).
        st, env = app(srv, "GET", "/env")
        assert env.get("SECRET_TOKEN") == "s3cr3t-value" and env.get("REGION") == "europe", env
        assert env.get("FROM_IMAGE") == "yes", env
        # Debug mode: the app's stdout reached on_log; no secret went to the log.
        evstest.wait_for(lambda: "cage log 1: hello-cage listening" in srv.log(),
                         what="the app's output")
        assert "s3cr3t-value" not in srv.log()
        # Egress: an allowed name reaches the local TLS server and its handshake starts...
        st, eg = app(srv, "GET", "/egress?host=localhost&port=%d" % tls.port)
        assert st == 200 and eg["connected"] and eg["sent"], eg
        assert eg["resolved"].startswith("127.1."), eg
        assert eg["reply_bytes"] > 0 and eg["record_type"] == 22, (eg, state(srv))
        assert tls.hellos == 1
        # ...another name is refused before anything reaches a server (the handshake ends
        # where it starts: no byte comes back), and the refusal is reported.
        st, eg = app(srv, "GET", "/egress?host=forbidden.example&port=%d" % tls.port)
        assert st == 200 and eg["connected"] and eg["reply_bytes"] <= 0, eg
        assert tls.hellos == 1
        # ...and a port the image does not open is no way out either.
        st, eg = app(srv, "GET", "/egress?host=localhost&port=443")
        assert st == 200 and not eg.get("reply_bytes", 0) > 0, eg
        ev = state(srv)["egress"]
        assert any(e["host"] == "localhost" and e["allowed"] for e in ev), ev
        assert any(e["host"] == "forbidden.example" and not e["allowed"] for e in ev), ev
        # The escape suite: every attempt fails. Another cage runs beside this one (the same
        # backend): its files and its app socket are out of reach too.
        other = start(make_image({}, cmdline=tcg_cmdline(extra)), backend, **extra)
        try:
            wait_ready(other, timeout)
            esc = escape(srv, other, backend)
        finally:
            other.stop()
        # Under the sandbox every attempt fails. Under kvm the app is root of its own VM (as
        # in a Nitro enclave): mounting or a raw socket there reaches nothing outside the VM,
        # so only what would leave it must fail.
        leaving = [k for k in esc if k.startswith(("read path", "connect"))]
        checked = list(esc) if backend == "sandbox" else leaving
        allowed = [k for k in checked if esc[k] == "ALLOWED"]
        assert not allowed, esc
        assert len(esc) >= 35 and len(leaving) >= 15, esc
        if backend == "sandbox":
            check_whoami(srv)
        # A crash: reported with its cause, restarted, serving again.
        try:
            app(srv, "GET", "/crash", timeout=5)
        except OSError:
            pass
        evstest.wait_for(lambda: any(h.startswith("CRASHED: the app exited with status 1")
                                     for h in state(srv)["history"]), what="the crash reported")
        s = wait_ready(srv, timeout, after=1)
        assert any(h.startswith("STARTING: restarting") for h in s["history"]), s
        st, body = app(srv, "GET", "/hello")
        assert st == 200 and "enclave" in body["response"]
        st, env = app(srv, "GET", "/env")
        assert env.get("SECRET_TOKEN") == "s3cr3t-value", env  # sent again at the restart
        # Stop: STOPPED, the cage's processes gone.
        r = srv.admin_request("POST", "/test-cage/stop")
        assert r.status == 200
        assert state(srv)["history"][-1].startswith("STOPPED"), state(srv)
        evstest.wait_for(lambda: not os.path.exists(s["app_socket"]), what="the cage's files gone")
    finally:
        srv.stop()
    assert "Sanitizer" not in srv.log()


def escape(srv, other, backend="sandbox"):
    """The escape attempts of hello-cage's /escape from srv's cage: evserver's files (its
    store, log, config, admin socket), the cage's own directory on the host, another cage's
    (other) files and app socket, the host's processes through /proc (evserver's pid, init's
    memory: under the sandbox only, a VM's init being inside the VM), /proc's global knobs,
    forbidden calls, raw sockets, the network."""
    mine = os.path.dirname(state(srv)["app_socket"])
    theirs = os.path.dirname(state(other)["app_socket"])
    pid = srv.proc.pid
    paths = [os.path.join(srv.config.state_dir, "store.db"), srv.log_path, srv.config.path,
             "/proc/1/root/etc/passwd", mine, os.path.join(mine, "root", "cage.json"),
             theirs, os.path.join(theirs, "root", "rootfs", "bin", "hello-cage"),
             "/proc/%d/environ" % pid, "/proc/%d/root/etc/passwd" % pid]
    if backend == "sandbox":
        paths += ["/proc/1/mem", "/proc/1/environ"]
    wpaths = ["/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger", "/proc/1/mem",
              "/sys/kernel/uevent_helper"]
    socks = [state(srv)["app_socket"], state(other)["app_socket"], srv.config.admin_socket]
    st, esc = app(srv, "GET", "/escape?paths=%s&port=%d&wpaths=%s&socks=%s&pid=%d"
                  % (",".join(paths), srv.port(), ",".join(wpaths), ",".join(socks), pid))
    assert st == 200, esc
    for k in ("add_key", "perf_event_open", "open_tree", "userfaultfd",
              "process_vm_readv init", "reboot", "signal a host process",
              "connect unix socket 2", "write path 0"):
        assert k in esc, (k, esc)
    return esc


CAGE_UID = 2147352576  # sandbox/userns.h EVS_CAGE_UID_BASE: the cage's uid 0 when run by root
CAGE_IDS = 65536


def host_proc_masked():
    """Whether the host's /proc is partly hidden (mounts over its files, as container runtimes
    do): the kernel then refuses a user namespace a /proc of its own, and the cage has none."""
    with open("/proc/self/mountinfo") as f:
        points = [l.split()[4] for l in f]
    return any(p.startswith("/proc/") and "binfmt_misc" not in p for p in points)


def check_whoami(srv, runner_uid=None, uid=0, gid=0):
    """The app is uid (the image's USER) of its cage and owns its files there. On the host the
    cage's uid 0 is the runner's uid, except that a runner started by root maps the cage's ids
    0..65535 to EVS_CAGE_UID_BASE + n, never to root: what the app creates belongs to that, and
    the host's root is nobody in the cage. /proc is the cage's own: the app, init and nothing of
    the host's."""
    st, who = app(srv, "GET", "/whoami")
    assert st == 200 and who["uid"] == uid and who["gid"] == gid, who
    assert who["write own file"] == "ALLOWED", who
    assert who["create own file"] == "ALLOWED", who
    runner_uid = os.geteuid() if runner_uid is None else runner_uid
    want = CAGE_UID + uid if runner_uid == 0 else runner_uid
    want_gid = CAGE_UID + gid if runner_uid == 0 else os.getegid()
    made = os.path.join(os.path.dirname(state(srv)["app_socket"]), "root", "rootfs", "etc",
                        "whoami-file")
    assert os.lstat(made).st_uid == want, (made, want, os.lstat(made))
    if runner_uid == 0:
        assert os.lstat(made).st_gid == want_gid, (made, want_gid, os.lstat(made))
    with open("/proc/sys/kernel/overflowuid") as f:
        nobody = int(f.read())
    assert who["dev_null_uid"] == nobody, who  # the host's root (owner of /dev/null) unmapped
    if host_proc_masked():
        print("  the host's /proc is partly masked: the cage has none (documented)")
        return who
    # /proc: the cage's own pid namespace and user namespace.
    map_ = ["0", str(CAGE_UID), str(CAGE_IDS)] if runner_uid == 0 else ["0", str(want), "1"]
    assert who["uid_map"].split() == map_, who
    assert who["status_pid"] == who["pid"] and who["status_uid"] == uid, who
    pids = who["proc_pids"]
    assert 1 in pids and who["pid"] in pids and len(pids) < 10, who  # init, the app, its own
    assert srv.proc.pid not in pids or srv.proc.pid < 10, who
    return who


def check_no_egress(backend, timeout=60.0, **extra):
    """Without egress: no DNS, no egress listener, no route anywhere."""
    image = make_image({}, cmdline=tcg_cmdline(extra))
    srv = start(image, backend, **extra)
    try:
        wait_ready(srv, timeout)
        st, eg = app(srv, "GET", "/egress?host=localhost&port=443")
        assert st == 200 and eg["resolved"] is False, eg
        st, esc = app(srv, "GET", "/escape?port=%d" % srv.port())
        assert esc["connect outside"].startswith("blocked"), esc
        assert esc["connect host loopback port"].startswith("blocked"), esc
        assert state(srv)["egress"] == []
        # Not in debug mode: the app's output reaches nothing of the host's.
        assert "hello-cage listening" not in srv.log()
        assert state(srv)["logs"] == 0
    finally:
        srv.stop()


def test_sandbox_runner():
    check_runner("sandbox")


def test_sandbox_no_egress():
    check_no_egress("sandbox")


def start_as_nobody(image):
    """evserver started by root as [server] user = nobody, running image on the sandbox."""
    for p in (os.path.dirname(image), image):
        os.chmod(p, 0o755)
    d = evstest.tmpdir("evs-cage-user-")
    os.chmod(d, 0o755)
    plugins = plugins_dir()
    os.chmod(plugins, 0o755)
    cfg = evstest.write_config(d, server={"plugins_dir": plugins, "user": "nobody",
                                          "state_dir": os.path.join(d, "fresh", "state")},
                               plugins={"test-cage-run": {"image": image, "backend": "sandbox"}})
    return evstest.Server(cfg).start()


def test_sandbox_runner_as_user():
    """Run by a user ([server] user = nobody), the cage's uid 0 is that user on the host."""
    if os.geteuid() != 0:
        raise evstest.Skip("needs root to start evserver as nobody")
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    srv = start_as_nobody(make_image({}))
    try:
        wait_ready(srv)
        check_whoami(srv, runner_uid=nobody)
    finally:
        srv.stop()
    assert "Sanitizer" not in srv.log()


def host_uid_of(srv, name):
    """The host uid and gid (real) of the process under srv whose command line starts with
    name, or None."""
    parent, cmd = {}, {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                cmd[int(p)] = f.read()
            with open("/proc/%s/status" % p) as f:
                parent[int(p)] = dict(l.split(":", 1) for l in f if ":" in l)
        except OSError:
            continue
    for pid, c in cmd.items():
        if not c.startswith(name.encode() + b"\0") or pid not in parent:
            continue
        up = pid
        while up in parent and up != srv.proc.pid:
            up = int(parent[up]["PPid"])
        if up == srv.proc.pid:
            st = parent[pid]
            return int(st["Uid"].split()[0]), int(st["Gid"].split()[0])
    return None


def test_sandbox_non_root_user():
    """An image whose Dockerfile says USER 1000 (its /etc is 1000's) answers requests under the
    sandbox: run by root, the cage has 65536 ids, the app is 1000:1000 inside and
    EVS_CAGE_UID_BASE + 1000 outside (no host user's uid, not root), and writes its files.
    Run by a user, the cage has one id: the start is refused with the documented sentence."""
    if os.geteuid() != 0:
        raise evstest.Skip("needs root (the range of ids; the user run starts evserver as nobody)")
    image = make_image({"user": "1000:1000"}, etc_owner=(1000, 1000))
    srv = start(image, "sandbox")
    try:
        wait_ready(srv)
        st, body = app(srv, "GET", "/hello")
        assert st == 200 and "enclave" in body["response"], (st, body)
        check_whoami(srv, uid=1000, gid=1000)
        outside = host_uid_of(srv, "/bin/hello-cage")
        assert outside == (CAGE_UID + 1000, CAGE_UID + 1000), outside
        etc = os.path.join(os.path.dirname(state(srv)["app_socket"]), "root", "rootfs", "etc")
        assert os.stat(etc).st_uid == CAGE_UID + 1000  # the image's owner, shifted
        st, esc = app(srv, "GET", "/escape?port=%d&pid=%d" % (srv.port(), srv.proc.pid))
        assert not [k for k in esc if esc[k] == "ALLOWED"], esc
    finally:
        srv.stop()
    assert "Sanitizer" not in srv.log()
    # Started by a user: refused, saying why (and never started as another uid).
    srv = start_as_nobody(image)
    try:
        why = "this cage has only uid and gid 0: the sandbox backend maps a range of ids only"
        evstest.wait_for(lambda: any(why in h for h in state(srv)["history"]), timeout=60,
                         what="the refusal of USER 1000 reported")
        assert state(srv)["state"] != "READY"
        assert host_uid_of(srv, "/bin/hello-cage") is None
    finally:
        srv.stop()


def kvm_usable():
    """None if the kvm backend can run here, else why not (a bare boot is tried)."""
    if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm"
    if not os.access(QEMU, os.X_OK):
        return "qemu-system-x86_64 is not installed"
    if not kernel_dir():
        return "no cage kernel directory (scripts/cage-kernel; $EVS_CAGE_KERNEL_DIR)"
    d = evstest.tmpdir("evs-cage-bare-")
    poweroff = os.path.join(d, "init")
    subprocess.run(["cc", "-static", "-O2", "-o", poweroff, "-x", "c", "-"], check=True,
                   input=b"#include <sys/reboot.h>\nint main(void){reboot(RB_POWER_OFF);}\n")
    img = os.path.join(d, "initrd")
    subprocess.run("cd %s && echo init | cpio -o -H newc 2>/dev/null | gzip > %s" % (d, img),
                   shell=True, check=True)
    try:
        subprocess.run([QEMU, "-M", "microvm", "-enable-kvm", "-m", "256", "-nodefaults",
                        "-no-user-config", "-nographic", "-no-reboot", "-kernel",
                        os.path.join(kernel_dir(), "vmlinuz"), "-initrd", img, "-append",
                        "console=ttyS0 quiet panic=-1"], timeout=60, capture_output=True)
    except subprocess.TimeoutExpired:
        return ("/dev/kvm and qemu are here, but the kernel does not even finish a bare boot "
                "in 60 s under this machine's KVM (nested virtualisation)")
    return None


def test_kvm_runner():
    why = kvm_usable()
    if why:
        raise evstest.Skip(why)
    check_runner("kvm", timeout=120)
    check_no_egress("kvm", timeout=120)


def test_kvm_backend_under_tcg():
    """The kvm backend's whole path (qemu microvm, the image's kernel and modules, the
    virtio-serial port, evs-cage-init in VM mode) under qemu's software emulation: where KVM
    works, test_kvm_runner covers it at full speed; where it cannot boot (nested
    virtualisation), this still proves the VM side."""
    if not os.access(QEMU, os.X_OK):
        raise evstest.Skip("qemu-system-x86_64 is not installed")
    if not kernel_dir():
        raise evstest.Skip("no cage kernel directory (scripts/cage-kernel; $EVS_CAGE_KERNEL_DIR)")
    check_runner("kvm", timeout=300, tcg="on")
    check_no_egress("kvm", timeout=300, tcg="on")


if __name__ == "__main__":
    evstest.main(globals())
