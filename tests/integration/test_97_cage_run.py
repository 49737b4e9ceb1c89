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


def make_image(cage, init=None, app=None, cmdline=""):
    """An image: /init, and /rootfs/bin/hello-cage with /cage.json from the dict cage."""
    d = evstest.tmpdir("evs-cage-img-")
    root = os.path.join(d, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "etc"))
    shutil.copy(app or evstest.build_path("test-bin", "hello-cage"),
                os.path.join(root, "bin", "hello-cage"))
    with open(os.path.join(root, "etc", "hostname"), "w") as f:
        f.write("cage\n")
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
        # The escape suite: every attempt fails.
        cfg_dir = os.path.dirname(srv.config.path) if hasattr(srv, "config") else ""
        paths = [os.path.join(srv.config.state_dir, "store.db") if hasattr(srv, "config") else "",
                 srv.log_path, cfg_dir + "/evserver.conf", "/proc/1/root/etc/passwd",
                 os.path.dirname(state(srv)["app_socket"])]
        st, esc = app(srv, "GET", "/escape?paths=%s&port=%d"
                      % (",".join(p for p in paths if p), srv.port()))
        assert st == 200, esc
        # Under the sandbox every attempt fails. Under kvm the app is root of its own VM (as
        # in a Nitro enclave): mounting or a raw socket there reaches nothing outside the VM,
        # so only what would leave it must fail.
        leaving = [k for k in esc if k.startswith(("read path", "connect"))]
        checked = list(esc) if backend == "sandbox" else leaving
        allowed = [k for k in checked if esc[k] == "ALLOWED"]
        assert not allowed, esc
        assert len(esc) >= 14 and len(leaving) >= 6, esc
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


CAGE_UID = 2147483645  # sandbox/userns.h EVS_CAGE_UID


def check_whoami(srv, runner_uid=None):
    """The app is uid 0 of its cage and owns its files there. On the host that uid 0 is the
    runner's uid, except that a runner started by root maps it to EVS_CAGE_UID, never to root:
    what the app creates belongs to that uid, and the host's root is nobody in the cage."""
    st, who = app(srv, "GET", "/whoami")
    assert st == 200 and who["uid"] == 0, who
    assert who["write own file"] == "ALLOWED", who
    assert who["create own file"] == "ALLOWED", who
    runner_uid = os.geteuid() if runner_uid is None else runner_uid
    want = CAGE_UID if runner_uid == 0 else runner_uid
    made = os.path.join(os.path.dirname(state(srv)["app_socket"]), "root", "rootfs", "etc",
                        "whoami-file")
    assert os.lstat(made).st_uid == want and os.lstat(made).st_gid == want, (made, want)
    with open("/proc/sys/kernel/overflowuid") as f:
        nobody = int(f.read())
    assert who["dev_null_uid"] == nobody, who  # the host's root (owner of /dev/null) unmapped
    if who["uid_map"]:  # (the cage may have no /proc)
        assert who["uid_map"].split() == ["0", str(want), "1"], who


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


def test_sandbox_runner_as_user():
    """Run by a user ([server] user = nobody), the cage's uid 0 is that user on the host."""
    if os.geteuid() != 0:
        raise evstest.Skip("needs root to start evserver as nobody")
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    image = make_image({})
    for p in (os.path.dirname(image), image):
        os.chmod(p, 0o755)
    d = evstest.tmpdir("evs-cage-user-")
    os.chmod(d, 0o755)
    plugins = plugins_dir()
    os.chmod(plugins, 0o755)
    cfg = evstest.write_config(d, server={"plugins_dir": plugins, "user": "nobody",
                                          "state_dir": os.path.join(d, "fresh", "state")},
                               plugins={"test-cage-run": {"image": image, "backend": "sandbox"}})
    srv = evstest.Server(cfg).start()
    try:
        wait_ready(srv)
        check_whoami(srv, runner_uid=nobody)
    finally:
        srv.stop()
    assert "Sanitizer" not in srv.log()


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
