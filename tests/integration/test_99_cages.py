"""The hello-cage flow end to end with real processes: `evctl cage init` -> `evctl cage deploy`
(which builds the image with `evctl cage build`: buildah, the node's cage kernel, evs-cage-init)
-> the runner boots it (the sandbox backend, and once on kvm where /dev/kvm exists) -> curl
through the cage's TLS front (curl --resolve, the node CA as the only trust):

the documented /hello answer; unauthorized without or with a wrong API key; an ev: string made
by the API's /encrypt posted to /echo arrives decrypted at the app; x-evervault-cage-ctx matches
the transaction record; the 9999 /encrypt -> /decrypt round trip from inside the cage
(hello-cage's /roundtrip); /.well-known/attestation verified by the unmodified SDK's
createEnclaveHttpsAgent with the repository's bindings (right PCRs accepted, wrong refused);
env and a secret reach the app at start, the secret never in the store in plaintext; a redeploy
during a request loop never fails; a crash is restarted and reported.

test_97_cage_front.py checks the same front with a stand-in runner, and everything else the
plugin does (deploy API, logs, certificate locks, disable_tls_termination, evctl).
Needs buildah, the cage kernel (scripts/cage-kernel), evs-cage-init and the runner.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import threading

import evstest

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("t97", os.path.join(HERE, "test_97_cage_front.py"))
T97 = importlib.util.module_from_spec(_spec)
_src = open(os.path.join(HERE, "test_97_cage_front.py")).read().replace(
    "\nevstest.main(globals())", "\n")
exec(compile(_src, "test_97_cage_front.py", "exec"), T97.__dict__)

HELLO = T97.HELLO
KERNEL_DIR = os.environ.get("EVS_CAGE_KERNEL_DIR", "/var/cache/evserver/cage-kernel")


def need():
    for p in ("evs-cage-vmm", "evs-cage-init", "test-bin/hello-cage", "plugins.d/cage-broker.so"):
        if not os.path.exists(evstest.build_path(*p.split("/"))):
            raise evstest.Skip("%s is not built (the runner has not landed)" % p)
    if not shutil.which("buildah"):
        raise evstest.Skip("buildah is not installed")
    if not os.path.exists(os.path.join(KERNEL_DIR, "vmlinuz")):
        raise evstest.Skip("no cage kernel in %s (scripts/cage-kernel)" % KERNEL_DIR)


def real_plugins_dir():
    d = evstest.tmpdir("evs-cages-plugins-")
    for name in ("enclave", "cage-broker"):
        os.symlink(evstest.build_path("plugins.d", name + ".so"), os.path.join(d, name + ".so"))
    return d


class Env(T97.Env):
    """test_97's environment with the real plugin and runner."""

    def __init__(self, backend):
        need()
        T97.plugins_dir = real_plugins_dir  # the real cage-broker.so, not the stand-in's
        self.backend = backend
        self.broker_extra = {"backend": backend}
        super().__init__()

    def cage_dir(self, user=None):
        """The hello-cage Dockerfile; user: its USER (the binary then belongs to that user)."""
        d = os.path.join(self.dir, "hello-cage")
        os.makedirs(d, exist_ok=True)
        shutil.copy(evstest.build_path("test-bin", "hello-cage"), os.path.join(d, "hello-cage"))
        with open(os.path.join(d, "Dockerfile"), "w") as f:
            if user:
                f.write('FROM scratch\nCOPY --chown=%s hello-cage /hello-cage\nUSER %s\n'
                        'EXPOSE 8008\nENTRYPOINT ["/hello-cage"]\n' % (user, user))
            else:
                f.write('FROM scratch\nCOPY hello-cage /hello-cage\nEXPOSE 8008\n'
                        'ENTRYPOINT ["/hello-cage"]\n')
        return d

    def evctl(self, d, *args, ok=True):
        r = subprocess.run([evstest.build_path("evctl"), "--socket", self.cfg.admin_socket,
                            "--json", "cage", *args], capture_output=True, text=True,
                           timeout=600, cwd=d)
        if ok:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            return json.loads(r.stdout) if r.stdout.strip() else None
        return r


def pcrs_of(d):
    out = subprocess.run([evstest.build_path("evctl"), "--json", "cage", "describe",
                          os.path.join(d, "enclave.eif")], capture_output=True, text=True,
                         timeout=60, cwd=d)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    p = doc.get("pcrs") or doc.get("measurements") or doc
    return {k: p.get(k) or p.get(k.upper()) for k in ("pcr0", "pcr1", "pcr2", "pcr8")}


def flow(backend):
    e = Env(backend)
    d = e.cage_dir()
    e.evctl(d, "init", "-f", "Dockerfile", "--name", "hello-cage", "--app", e.app)
    # deploy without --eif-path builds first (evctl cage build's code)
    out = e.evctl(d, "deploy", "--output", d)
    assert out["deployment"]["id"] == 1 and out["domain"] == e.host("hello-cage"), out
    c = e.wait_ready("hello-cage", deployment=1, timeout=120)
    assert c["instances"][0]["backend"] == backend, c
    e.wait_tls("hello-cage")
    st, hdrs, body = e.curl("hello-cage", "/hello", key=e.key)
    assert st == 200 and json.loads(body) == HELLO, (st, body)
    ctx = hdrs["x-evervault-cage-ctx"]
    T97.assert_unauthorized(*e.curl("hello-cage", "/hello"))
    T97.assert_unauthorized(*e.curl("hello-cage", "/hello", key=e.other_key))
    enc = e.encrypt({"card": "4242424242424242", "name": "Ada"})
    st, hdrs, body = e.curl("hello-cage", "/echo", key=e.key, data=json.dumps(enc))
    assert st == 200, body
    assert "4242424242424242" in body.decode() and "ev:" not in body.decode(), body
    echo_ctx = hdrs["x-evervault-cage-ctx"]

    def trx():
        st, b = e.admin("GET", "/cages/%s/hello-cage/transactions" % e.app)
        recs = {r["ctx"]: r for r in b["records"]}
        return ctx in recs and echo_ctx in recs and recs
    recs = evstest.wait_for(trx, timeout=10, what="transaction records")
    assert recs[echo_ctx]["path"] == "/echo" and recs[echo_ctx]["decryptedFields"] == 2

    st, _, body = e.curl("hello-cage", "/roundtrip", key=e.key, data='{"foo":"bar"}')
    rt = json.loads(body)
    assert st == 200 and rt["encrypt_status"] == 200 and rt["decrypt_status"] == 200, body
    assert json.loads(rt["encrypted"])["foo"].startswith("ev:"), rt
    assert json.loads(rt["decrypted"]) == {"foo": "bar"}, rt
    e.sdk_attest("hello-cage", pcrs_of(d))
    return e, d


def test_hello_cage_sandbox():
    e, d = flow("sandbox")
    # env and a secret reach the app at its next start; a redeploy under a request loop
    e.evctl(d, "env", "add", "--key", "GREETING", "--value", "hi")
    e.evctl(d, "env", "add", "--key", "ACME_API_KEY", "--value", "s3cret-cage-value", "--secret")
    failures, done, count = [], threading.Event(), [0]

    def loop():
        while not done.is_set():
            st, _, body = e.curl("hello-cage", "/hello", key=e.key)
            count[0] += 1
            if st != 200:
                failures.append((st, body))
    t = threading.Thread(target=loop)
    t.start()
    try:
        evstest.wait_for(lambda: count[0] >= 3, timeout=30, what="requests before")
        out = e.evctl(d, "deploy", "--eif-path", os.path.join(d, "enclave.eif"))
        assert out["deployment"]["id"] == 2, out
        e.wait_ready("hello-cage", deployment=2, timeout=120)
        seen = count[0]
        evstest.wait_for(lambda: count[0] >= seen + 3, timeout=30, what="requests after")
    finally:
        done.set()
        t.join()
    assert not failures, failures[:3]
    st, _, body = e.curl("hello-cage", "/env", key=e.key)
    env = body.decode()
    assert st == 200 and "GREETING" in env and "s3cret-cage-value" in env, body
    for root, _, files in os.walk(os.path.join(e.dir, "state")):
        for f in files:
            path = os.path.join(root, f)
            if os.path.isfile(path) and not f.endswith(".sock"):
                with open(path, "rb") as fh:
                    assert b"s3cret-cage-value" not in fh.read(), path
    # a crash: restarted by the runner, and reported
    e.curl("hello-cage", "/crash", key=e.key)
    evstest.wait_for(lambda: (lambda c: c["instances"][0]["restarts"] >= 1 and
                              c["instances"][0]["state"] == "ready")(e.cage("hello-cage")),
                     timeout=120, what="restart after the crash")
    assert "crashed" in e.srv.log()


def test_non_root_user_sandbox():
    """A Dockerfile whose USER is 1000 (no /etc/passwd: gid 0, as Docker does), built by evctl,
    deployed and answering through the front on the sandbox backend: the app runs as 1000 in its
    cage and sees its own /proc (run by root, the cage has 65536 ids: docs/cages.md)."""
    if os.geteuid() != 0:
        raise evstest.Skip("a cage with more than one id needs evserver run by root")
    e = Env("sandbox")
    d = e.cage_dir(user="1000")
    e.evctl(d, "init", "-f", "Dockerfile", "--name", "hello-cage", "--app", e.app)
    e.evctl(d, "deploy", "--output", d)
    e.wait_ready("hello-cage", deployment=1, timeout=120)
    e.wait_tls("hello-cage")
    st, _, body = e.curl("hello-cage", "/hello", key=e.key)
    assert st == 200 and json.loads(body) == HELLO, (st, body)
    st, _, body = e.curl("hello-cage", "/whoami", key=e.key)
    who = json.loads(body)
    assert st == 200 and who["uid"] == 1000 and who["gid"] == 0, who
    with open("/proc/self/mountinfo") as f:  # a masked host /proc: no /proc in a cage
        masked = any(l.split()[4].startswith("/proc/") and "binfmt_misc" not in l for l in f)
    if not masked:
        assert who["status_uid"] == 1000 and who["status_pid"] == who["pid"], who
        assert 1 in who["proc_pids"] and len(who["proc_pids"]) < 10, who


def test_hello_cage_kvm():
    need()
    # cage-run's probe: a bare boot of the cage kernel under KVM must finish first.
    spec = importlib.util.spec_from_file_location("t97run", os.path.join(HERE,
                                                                         "test_97_cage_run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    why = run.kvm_usable()
    if why:
        raise evstest.Skip(why)
    flow("kvm")


evstest.main(globals())
