"""Cage attestation (docs/cages.md, "Attestation"; enclave/README.md, "The attestation keys").

A real evserver with the real enclave serves documents built by plugins/cage-broker/attest.c
and signed in the enclave with the node's attestation key, through a test plugin that stands in
for the cage-broker's front (tests/plugins/attest_doc.c: GET /.well-known/attestation on a TLS
listener, public_key = the listener's certificate). Checked: GET /attestation-root.pem (api and
admin, no auth) gives a P-384 CA; `evctl cage attest` verifies the document against that root,
the PCRs and the TLS key of the connection (exit 0, JSON too, with a fresh nonce) and refuses
other PCRs, another root, and a listener whose certificate is not the one the document names
(exit 1); two nodes on one store (separate state directories) have different node keys under one
root; the root and the node key survive a restart and a killed enclave; the store and the
state directory hold only sealed keys. Then the Node bindings' own tests (documents from the C
encoder, the unmodified SDK's createEnclaveHttpsAgent and enableEnclaves), and the bindings on a
document the server signed. `evctl cage attest` is run as evctl once the `evctl cage` dispatcher
has it, else through cage-attest-tool (the same cmd_cage_attest.c).
"""

import base64
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import urllib.request

import evstest
import test_72_enclave_node as N

PCR = {0: "a0" * 48, 1: "a1" * 48, 2: "a2" * 48, 8: "a8" * 48}
SRC = os.path.abspath(os.environ.get("EVS_SOURCE_DIR",
                                     os.path.join(os.path.dirname(__file__), "..", "..")))
BINDINGS = os.path.join(SRC, "plugins", "cage-broker", "node-bindings")


def plugins_dir():
    d = evstest.tmpdir("evs-att-plugins-")
    os.symlink(evstest.build_path("plugins.d", "enclave.so"), os.path.join(d, "enclave.so"))
    os.symlink(evstest.build_path("test-plugins.d", "test-attest-doc.so"),
               os.path.join(d, "test-attest-doc.so"))
    return d


class Node:
    """One evserver: api listener, TLS listener "cage" (cert) and "cage2" (cert2, which the
    documents do not name), both serving the test plugin's role."""

    def __init__(self, tls, dir=None, store=None, seal=None, workers=2, pdir=None):
        binary = evstest.build_path("evserver-enclave")
        if not os.access(binary, os.X_OK):
            raise evstest.Skip("evserver-enclave is not built")
        self.dir = dir or evstest.tmpdir("evs-att-")
        enclave = {"enclave_binary": binary, "request_timeout": "5s"}
        if seal:
            enclave["seal_key"] = seal
        self.config = evstest.write_config(
            self.dir,
            listeners={"api": {},
                       "cage": {"tls": True, "certificate": tls["cert"].cert,
                                "key": tls["cert"].key, "serves": "cage-test"},
                       "cage2": {"tls": True, "certificate": tls["cert2"].cert,
                                 "key": tls["cert2"].key, "serves": "cage-test"}},
            server={"workers": workers, "plugins_dir": pdir or plugins_dir()},
            store=store,
            plugins={"enclave": enclave,
                     "test-attest-doc": {"cert_file": tls["cert"].cert,
                                         **{"pcr%d" % i: v for i, v in PCR.items()}}})
        self.srv = evstest.Server(self.config).start()

    def url(self, listener="cage"):
        return "https://127.0.0.1:%d" % self.srv.port(listener)


def tls_certs():
    ca = evstest.make_ca()
    return {"ca": ca, "cert": evstest.make_cert(ca, ["hello-cage.app-test.enclave.test",
                                                     "127.0.0.1"]),
            "cert2": evstest.make_cert(ca, ["127.0.0.1"])}


def get(url, timeout=20):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def root_pem(node):
    # the first call may wait for the enclave to make the root and certify the node
    evstest.wait_for(lambda: get(node.srv.url("/attestation-root.pem", "api"))[0] == 200,
                     timeout=20, what="the attestation root")
    st, pem = get(node.srv.url("/attestation-root.pem", "api"))
    assert st == 200 and pem.startswith(b"-----BEGIN CERTIFICATE-----"), (st, pem)
    return pem


def write(dir, name, data):
    path = os.path.join(dir, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def evctl_attest(*args):
    """`evctl cage attest *args` -> CompletedProcess."""
    evctl = evstest.build_path("evctl")
    probe = subprocess.run([evctl, "cage", "attest", "--help"], capture_output=True, text=True,
                           timeout=20)
    if probe.returncode == 0 and "attestation" in probe.stdout:
        cmd = [evctl, "cage", "attest", *args]
    else:
        cmd = [evstest.build_path("cage-attest-tool"), "evctl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def pcr_args(pcrs=PCR):
    out = []
    for i, v in pcrs.items():
        out += ["--pcr%d" % i, v]
    return out


def openssl_text(pem):
    r = subprocess.run(["openssl", "x509", "-noout", "-text", "-fingerprint", "-sha256"],
                       input=pem, capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def doc_of(url):
    st, body = get(url + "/.well-known/attestation")
    assert st == 200, (st, body)
    return base64.b64decode(json.loads(body)["attestation_doc"])


def test_root_and_evctl_attest():
    tls = tls_certs()
    node = Node(tls)
    pem = root_pem(node)
    text = openssl_text(pem)
    assert "NIST CURVE: P-384" in text and "CA:TRUE" in text, text
    r = node.srv.admin_request("GET", "/attestation-root.pem", timeout=15)
    assert r.status == 200 and r.body == pem, r.status
    dir = node.dir
    root = write(dir, "root.pem", pem)

    ok = evctl_attest("--url", node.url(), "--root", root, *pcr_args())
    assert ok.returncode == 0 and "attestation verified" in ok.stdout, (ok.stdout, ok.stderr)
    assert "(matches)" in ok.stdout
    j = evctl_attest("--url", node.url(), "--root", root, "--pcr8", PCR[8], "--nonce", "--json")
    assert j.returncode == 0, (j.stdout, j.stderr)
    res = json.loads(j.stdout)
    assert res["verified"] is True and res["moduleId"] == "evserver-sandbox-test-cage", res
    assert res["pcrs"]["0"] == PCR[0] and res["pcrs"]["3"] == "00" * 48, res
    assert len(res["nonce"]) == 32, res

    toml = write(dir, "cage.toml", ('name = "hello-cage"\n[attestation]\nHashAlgorithm = "x"\n' +
                                    "".join('PCR%d = "%s"\n' % (i, v.upper())
                                            for i, v in PCR.items())).encode())
    r = evctl_attest("--url", node.url(), "--root", root, "--pcrs-from", toml)
    assert r.returncode == 0, (r.stdout, r.stderr)

    # refusals, each with its reason, exit 1
    bad = dict(PCR)
    bad[2] = "b2" * 48
    r = evctl_attest("--url", node.url(), "--root", root, *pcr_args(bad))
    assert r.returncode == 1 and "PCR" in r.stderr and "b2b2" in r.stderr, (r.stdout, r.stderr)
    other = evstest.tmpdir("evs-att-other-")
    subprocess.run([evstest.build_path("cage-attest-tool"), "ca", other], check=True)
    r = evctl_attest("--url", node.url(), "--root", os.path.join(other, "root.pem"), *pcr_args())
    assert r.returncode == 1 and "chain" in r.stderr, (r.stdout, r.stderr)
    r = evctl_attest("--url", node.url("cage2"), "--root", root, *pcr_args())
    assert r.returncode == 1 and "another TLS key" in r.stderr, (r.stdout, r.stderr)
    r = evctl_attest("--url", "https://127.0.0.1:%d" % evstest.free_port(), "--root", root,
                     *pcr_args())
    assert r.returncode == 1 and "connect" in r.stderr, (r.stdout, r.stderr)
    for args in (["--root", root, *pcr_args()], ["--url", node.url(), *pcr_args()],
                 ["--url", node.url(), "--root", root],
                 ["--url", "http://x", "--root", root, *pcr_args()],
                 ["--url", node.url(), "--root", root, "--pcr0", "abc"]):
        r = evctl_attest(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)

    # where the keys live: sealed in the store and in the state directory, nothing in clear
    with open(os.path.join(node.config.state_dir, "attest-node.json")) as f:
        rec = json.load(f)
    assert base64.b64decode(rec["sealedKey"])[:4] == b"EVA\x01", rec
    db = sqlite3.connect(os.path.join(node.config.state_dir, "evserver.db"))
    blob = b"".join(bytes(str(row), "utf8") for row in db.execute("select * from evs_kv"))
    assert b"attest-root" in blob and b"PRIVATE KEY" not in blob
    assert b"PRIVATE KEY" not in open(node.srv.log_path, "rb").read()

    # a killed enclave comes back and signs with the same keys
    before = N.enclaves(dir)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    evstest.wait_for(lambda: N.enclaves(dir) and not N.enclaves(dir) & before, timeout=20,
                     what="new enclave processes")
    evstest.wait_for(lambda: evctl_attest("--url", node.url(), "--root", root,
                                          *pcr_args()).returncode == 0,
                     timeout=30, what="documents from the restarted enclaves")
    node_cert = rec["cert"]

    # a restart keeps the root and the node key
    node.srv.stop()
    node.srv = evstest.Server(node.config).start()
    assert root_pem(node) == pem
    r = evctl_attest("--url", node.url(), "--root", root, *pcr_args())
    assert r.returncode == 0, (r.stdout, r.stderr)
    with open(os.path.join(node.config.state_dir, "attest-node.json")) as f:
        assert json.load(f)["cert"] == node_cert
    node.srv.stop()


def test_two_nodes_one_root():
    """Two nodes on one store (and one sealing key): one root, a key per node."""
    tls = tls_certs()
    shared = evstest.tmpdir("evs-att-shared-")
    seal = os.path.join(shared, "seal.key")
    store = {"path": os.path.join(shared, "cluster.db")}
    pdir = plugins_dir()
    a = Node(tls, store=store, seal=seal, workers=1, pdir=pdir)
    pem = root_pem(a)
    b = Node(tls, store=store, seal=seal, workers=1, pdir=pdir)
    assert root_pem(b) == pem
    root = write(a.dir, "root.pem", pem)
    node_certs = set()
    for n in (a, b):
        r = evctl_attest("--url", n.url(), "--root", root, *pcr_args(), "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "OU=attestation node" in json.loads(r.stdout)["signer"], r.stdout
        with open(os.path.join(n.config.state_dir, "attest-node.json")) as f:
            node_certs.add(json.load(f)["cert"])
    assert len(node_certs) == 2  # a key of its own per node, both under the one root
    a.srv.stop()
    b.srv.stop()


def test_node_bindings():
    node_bin = shutil.which("node")
    if not node_bin:
        raise evstest.Skip("node is not installed")
    env = dict(os.environ, EVS_BUILD_DIR=evstest.build_path(),
               EVS_SDK_DIR=os.path.join(SRC, "tests", "integration", "sdk", "node_modules"))
    r = subprocess.run([node_bin, "--test", os.path.join(BINDINGS, "test", "attest.test.js")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "# fail 0" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]

    # the bindings on a document the server signed in its enclave
    tls = tls_certs()
    node = Node(tls, workers=1)
    pem = root_pem(node)
    doc = write(node.dir, "doc.cbor", doc_of(node.url()))
    script = ("const b = require(process.argv[1]); const fs = require('fs');"
              "const c = new (require('crypto').X509Certificate)(fs.readFileSync(process.argv[3]));"
              "const r = b.verifyAttestationDocument(fs.readFileSync(process.argv[2]), {root: "
              "fs.readFileSync(process.argv[4], 'utf8'), certDER: c.raw, pcrsList: [JSON.parse("
              "process.argv[5])]}); console.log(JSON.stringify(r.ok ? {ok: true} : r));")
    root = write(node.dir, "root.pem", pem)
    for pcrs, want in (({"pcr0": PCR[0], "pcr8": PCR[8]}, True), ({"pcr1": "00" * 48}, False)):
        r = subprocess.run([node_bin, "-e", script, BINDINGS, doc, tls["cert"].cert, root,
                            json.dumps(pcrs)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout)["ok"] is want, (r.stdout, r.stderr)
    node.srv.stop()


evstest.main(globals())
