"""Cage images: `evctl cage init|build|describe|cert new` with Debian's buildah, checked by an
independent reader of Nitro's Enclave Image File format written here (header, section table,
CRC-32, PCRs as Nitro's image-format library computes them, the signature section's CBOR and
its COSE_Sign1 verified with `openssl`), and the ramdisks unpacked by Python's gzip and a newc
reader of its own.

The Dockerfiles are `FROM scratch` plus static binaries made here with `gcc -static` (the
machine may have no registry), a local image and an OCI archive made with buildah. The kernel
is the kernel directory that scripts/install-deps makes (scripts/cage-kernel); without one a
stand-in vmlinuz is used for everything but the boot test. The boot test starts the image's
kernel and ramdisks in `qemu-system-x86_64 -M microvm` (TCG with -icount: no KVM needed) with a
test /init that reports what it sees and powers off.

buildah runs with its own storage (a storage.conf in a temporary directory, vfs driver), so
the machine's images are neither used nor changed.
"""

import gzip
import hashlib
import json
import os
import re
import shutil
import ssl
import struct
import subprocess
import zlib

import evstest

APP = "app_0123456789ab"
KERNEL_DIRS = [os.environ.get("EVS_CAGE_KERNEL_DIR") or "", "/var/cache/evserver/cage-kernel"]

# ---- an independent Enclave Image File reader (Nitro's aws-nitro-enclaves-image-format) ------


def nitro_pcr(*parts):
    """PCR = SHA-384(48 zero bytes || SHA-384(bytes)): the tpm extend of the hash of the bytes."""
    inner = hashlib.sha384(b"".join(parts)).digest()
    return hashlib.sha384(b"\0" * 48 + inner).hexdigest()


class Eif:
    def __init__(self, data):
        assert data[:4] == b".eif", "magic"
        (self.version, self.flags, self.mem, self.cpus, _res,
         self.nsections) = struct.unpack(">HHQQHH", data[4:28])
        offs = struct.unpack(">32Q", data[28:284])
        sizes = struct.unpack(">32Q", data[284:540])
        unused, crc = struct.unpack(">II", data[540:548])
        assert unused == 0
        assert zlib.crc32(data[:544] + data[548:]) == crc, "CRC-32 over all but the CRC field"
        self.sections = []
        off = 548
        while off < len(data):
            t, fl, size = struct.unpack(">HHQ", data[off:off + 12])
            i = len(self.sections)
            assert offs[i] == off and sizes[i] == size, "header table points at section headers"
            assert fl == 0
            self.sections.append((t, data[off + 12:off + 12 + size]))
            off += 12 + size
        assert off == len(data) and len(self.sections) == self.nsections

    def of(self, t):
        return [d for (tt, d) in self.sections if tt == t]

    def pcrs(self):
        kernel, cmdline, ramdisks = self.of(1)[0], self.of(2)[0], self.of(3)
        p = {"PCR0": nitro_pcr(kernel, cmdline, *ramdisks),
             "PCR1": nitro_pcr(kernel, cmdline, ramdisks[0]),
             "PCR2": nitro_pcr(*ramdisks[1:])}
        sig = self.of(4)
        if sig:
            entry = cbor_decode(sig[0])[0][0]
            der = ssl.PEM_cert_to_DER_cert(bytes(entry["signing_certificate"]).decode())
            p["PCR8"] = nitro_pcr(der)
        return p


def cbor_decode(b, i=0):
    """Returns (value, next index) for the definite-length CBOR that serde_cbor writes."""
    ib = b[i]
    major, ai = ib >> 5, ib & 31
    i += 1
    if ai < 24:
        v = ai
    else:
        n = {24: 1, 25: 2, 26: 4, 27: 8}[ai]
        v = int.from_bytes(b[i:i + n], "big")
        i += n
    if major == 0:
        return v, i
    if major == 1:
        return -1 - v, i
    if major in (2, 3):
        s = b[i:i + v]
        return (s if major == 2 else s.decode()), i + v
    if major == 4:
        out = []
        for _ in range(v):
            x, i = cbor_decode(b, i)
            out.append(x)
        return out, i
    if major == 5:
        out = {}
        for _ in range(v):
            k, i = cbor_decode(b, i)
            out[k], i = cbor_decode(b, i)
        return out, i
    raise AssertionError("unexpected CBOR major type %d" % major)


def cbor_head(major, v):
    if v < 24:
        return bytes([major << 5 | v])
    for ai, n in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if v < 1 << (8 * n):
            return bytes([major << 5 | ai]) + v.to_bytes(n, "big")


def cbor_bstr(b):
    return cbor_head(2, len(b)) + b


def newc(data):
    """Entries of a newc cpio: [(name, mode, uid, gid, mtime, ino, bytes, rdevmajor, rdevminor)]."""
    out, i = [], 0
    while True:
        h = data[i:i + 110]
        assert h[:6] == b"070701", "newc magic at %d" % i
        f = [int(h[6 + 8 * k:14 + 8 * k], 16) for k in range(13)]
        ino, mode, uid, gid, _nlink, mtime, size = f[:7]
        rmaj, rmin, namesize = f[9], f[10], f[11]
        name = data[i + 110:i + 110 + namesize - 1].decode()
        i = (i + 110 + namesize + 3) & ~3
        body = data[i:i + size]
        i = (i + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, uid, gid, mtime, ino, body, rmaj, rmin))


def ramdisk(eif, n):
    z = eif.of(3)[n]
    assert z[:4] == b"\x1f\x8b\x08\x00" and z[4:8] == b"\0\0\0\0", "gzip: no name, mtime 0"
    return {e[0]: e for e in newc(gzip.decompress(z))}


# ---- the environment ------------------------------------------------------------------------

_env = {}


def env():
    """evctl, buildah with private storage, a kernel directory and a static test /init."""
    if _env:
        return _env
    if not shutil.which("buildah"):
        raise evstest.Skip("buildah is not installed (scripts/install-deps installs it)")
    if not shutil.which("gcc"):
        raise evstest.Skip("no gcc to make the static test binaries")
    root = evstest.tmpdir("evs-cage-")
    conf = os.path.join(root, "storage.conf")
    with open(conf, "w") as f:
        f.write('[storage]\ndriver = "vfs"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n'
                % (root, root))
    e = dict(os.environ, CONTAINERS_STORAGE_CONF=conf, TMPDIR=root)
    e.pop("EVS_CAGE_KERNEL_DIR", None)
    kdir = next((d for d in KERNEL_DIRS if d and os.path.isfile(os.path.join(d, "vmlinuz"))), None)
    real = kdir is not None
    if not real:  # a stand-in kernel directory: the format tests do not boot it
        kdir = os.path.join(root, "kernel")
        os.makedirs(os.path.join(kdir, "modules"))
        with open(os.path.join(kdir, "vmlinuz"), "wb") as f:
            f.write(b"MZ stand-in kernel " * 1000)
        with open(os.path.join(kdir, "modules", "virtio.ko"), "wb") as f:
            f.write(b"\x7fELF stand-in module")
        with open(os.path.join(kdir, "modules", "order"), "w") as f:
            f.write("virtio.ko\n")
        with open(os.path.join(kdir, "version"), "w") as f:
            f.write("0.0-stand-in\n")
    init = static_binary(root, "init", INIT_C)
    _env.update(root=root, env=e, kdir=kdir, real_kernel=real, init=init)
    return _env


INIT_C = r"""
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>
int main(void) {
  struct stat st;
  char buf[4096] = "";
  FILE *f = fopen("/cage.json", "r");
  if (f) { buf[fread(buf, 1, sizeof buf - 1, f)] = 0; fclose(f); }
  for (char *p = buf; *p; p++) if (*p == '\n') *p = ' ';
  printf("EVS-TEST-INIT pid=%d app=%d modules=%d cage.json=%s\n", (int)getpid(),
         stat("/rootfs/app/server", &st) == 0, stat("/lib/modules/evs/order", &st) == 0, buf);
  fflush(stdout);
  sync();
  reboot(RB_POWER_OFF);
  return 0;
}
"""


def static_binary(dir, name, source):
    src = os.path.join(dir, name + ".c")
    out = os.path.join(dir, name)
    with open(src, "w") as f:
        f.write(source)
    subprocess.run(["gcc", "-static", "-O2", "-o", out, src], check=True)
    return out


def server_c(word):
    return '#include <stdio.h>\nint main(void) { puts("%s"); return 0; }\n' % word


def evctl(*args, cwd, check=True, json_out=False):
    e = env()
    cmd = [evstest.build_path("evctl")] + (["--json"] if json_out else []) + list(args)
    r = subprocess.run(cmd, cwd=cwd, env=e["env"], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError("%s: exit %d\nstdout: %s\nstderr: %s"
                             % (" ".join(args), r.returncode, r.stdout, r.stderr[-4000:]))
    return r


def project(name, word="hello", extra_docker="", init_args=()):
    """A directory with a static server binary, a Dockerfile and a cage.toml."""
    d = evstest.tmpdir("evs-cagep-")
    static_binary(d, "server", server_c(word))
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write("FROM scratch\n"
                "COPY --chown=1000:1000 server /app/server\n"
                "%s"
                "USER 1000\nWORKDIR /app\nENV GREETING=hi\nEXPOSE 8080 9000\n"
                'ENTRYPOINT ["/app/server"]\nCMD ["--port", "8080"]\n' % extra_docker)
    evctl("cage", "init", "--name", name, "--app", APP, *init_args, cwd=d)
    return d


def build(d, *args, out="out"):
    e = env()
    evctl("cage", "build", "--output", out, "--kernel-dir", e["kdir"], "--init", e["init"], *args,
          cwd=d)
    with open(os.path.join(d, out, "enclave.eif"), "rb") as f:
        return f.read()


def toml_pcrs(d):
    text = open(os.path.join(d, "cage.toml")).read()
    att = text[text.index("[attestation]"):]
    return dict(re.findall(r'^(PCR\d) = "([0-9a-f]{96})"$', att, re.M)), text


# ---- tests ----------------------------------------------------------------------------------


def test_init_writes_cage_toml():
    """init writes the documented cage.toml from its options; bad names, a missing app and an
    existing cage.toml are refused."""
    env()
    d = evstest.tmpdir("evs-cagei-")
    evctl("cage", "init", "--name", "hello-cage", "--app", APP, "--debug", "--egress",
          "--egress-ports", "443,5432", "--egress-destinations", "*.evervault.com, api.x.io",
          "--disable-api-key-auth", "-f", "./Dockerfile", cwd=d)
    t = open(os.path.join(d, "cage.toml")).read()
    for line in ('name = "hello-cage"', 'app_uuid = "%s"' % APP, "debug = true",
                 "api_key_auth = false", "trx_logging = true", "disable_tls_termination = false",
                 'dockerfile = "./Dockerfile"', "[egress]", "enabled = true",
                 'destinations = ["*.evervault.com", "api.x.io"]', 'ports = ["443", "5432"]'):
        assert re.search("^" + re.escape(line) + "$", t, re.M), (line, t)
    assert re.search(r'^uuid = "cage_[0-9a-f]{12}"$', t, re.M), t
    assert "[signing]" not in t
    r = evctl("cage", "init", "--name", "hello-cage", "--app", APP, cwd=d, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr, r.stderr
    for bad in (["--name", "Bad_Name", "--app", APP], ["--name", "x", "--app", "nope"],
                ["--name", "x", "--app", APP, "--egress-ports", "0"],
                ["--name", "x", "--app", APP, "--signing-cert", "c.pem"]):
        r = evctl("cage", "init", *bad, "--force", cwd=d, check=False)
        assert r.returncode == 2, (bad, r.stderr)
    e2 = dict(env()["env"])
    e2.pop("EV_APP_ID", None)
    r = subprocess.run([evstest.build_path("evctl"), "cage", "init", "--name", "x", "--force"],
                       cwd=d, env=e2, capture_output=True, text=True)
    assert r.returncode == 2 and "which app" in r.stderr, r.stderr
    # --json and a second directory (-o)
    r = evctl("cage", "init", "--name", "two", "--app", APP, "-o", "sub", cwd=d, json_out=True)
    j = json.loads(r.stdout)
    assert j["name"] == "two" and j["app_uuid"] == APP
    assert os.path.isfile(os.path.join(d, j["config"]))


def test_build_and_describe():
    """build: enclave.eif in Nitro's format with PCRs an independent reader agrees with, the same
    PCRs in cage.toml and from describe --json, ev-user.Dockerfile, and ramdisks holding what
    docs/cages.md says."""
    e = env()
    d = project("hello-cage", init_args=("--egress", "--egress-ports", "443,5432"))
    data = build(d)
    eif = Eif(data)
    assert eif.version == 4 and eif.flags == 0 and eif.mem == 1 << 30 and eif.cpus == 2
    assert [t for t, _ in eif.sections] == [1, 2, 5, 3, 3], "kernel, cmdline, metadata, ramdisks"
    assert eif.of(1)[0] == open(os.path.join(e["kdir"], "vmlinuz"), "rb").read()
    assert b"\0" not in eif.of(2)[0] and b"rdinit=/init" in eif.of(2)[0]
    meta = json.loads(eif.of(5)[0])
    assert meta["ImageName"] == "hello-cage" and "BuildMetadata" in meta
    want = eif.pcrs()
    assert "PCR8" not in want
    got, text = toml_pcrs(d)
    assert got == want, (got, want)
    assert 'HashAlgorithm = "Sha384 { ... }"' in text
    assert text.count("[attestation]") == 1
    r = evctl("cage", "describe", "out/enclave.eif", cwd=d, json_out=True)
    j = json.loads(r.stdout)
    assert {k: v for k, v in j["measurements"].items() if k != "HashAlgorithm"} == want
    assert j["signed"] is False
    assert open(os.path.join(d, "out", "ev-user.Dockerfile")).read() == \
        open(os.path.join(d, "Dockerfile")).read()

    boot = ramdisk(eif, 0)
    assert boot["init"][6] == open(e["init"], "rb").read() and boot["init"][1] == 0o100755
    order = open(os.path.join(e["kdir"], "modules", "order")).read().split()
    assert boot["lib/modules/evs/order"][6].decode().split() == order
    for m in order:
        assert boot["lib/modules/evs/" + m][6] == open(os.path.join(e["kdir"], "modules", m),
                                                       "rb").read()
    assert boot["dev/console"][1] & 0o170000 == 0o020000 and boot["dev/console"][7:9] == (5, 1)
    app = ramdisk(eif, 1)
    names = [n for n in app]
    assert names == sorted(names), "entries sorted"
    assert all(x[4] == 0 for x in app.values()), "mtimes 0"
    assert [x[5] for x in app.values()] == list(range(1, len(app) + 1)), "inodes in order"
    srv = app["rootfs/app/server"]
    assert srv[6] == open(os.path.join(d, "server"), "rb").read()
    assert (srv[2], srv[3]) == (1000, 1000), "the image's owner kept (COPY --chown)"
    assert app["rootfs"][1] == 0o040755
    cj = json.loads(app["cage.json"][6])
    assert cj["name"] == "hello-cage" and cj["app_uuid"] == APP and cj["version"] == 1
    assert cj["uuid"] == re.search(r'^uuid = "(.*)"$', text, re.M).group(1)
    assert cj["port"] == 8080, "the first EXPOSE"
    assert cj["entrypoint"] == ["/app/server"] and cj["cmd"] == ["--port", "8080"]
    assert "GREETING=hi" in cj["env"] and cj["workdir"] == "/app" and cj["user"] == "1000:0"
    assert cj["egress"] == {"enabled": True, "destinations": ["*"], "ports": [443, 5432]}
    assert cj["api_key_auth"] is True and cj["debug"] is False
    assert cj["trx_logging"] is True and cj["disable_tls_termination"] is False
    # Text output of describe carries the same lines as cage.toml.
    r = evctl("cage", "describe", "out/enclave.eif", cwd=d)
    for k, v in want.items():
        assert '%s = "%s"' % (k, v) in r.stdout


def test_reproducible():
    """The same inputs give the same bytes and PCRs, whatever the files' times, and leave no
    image behind; another binary changes PCR0 and PCR2 but not PCR1; a cage.toml setting is
    measured in PCR2."""
    d = project("repro")

    def images():
        return subprocess.run(["buildah", "images", "--all", "-q"], env=env()["env"],
                              capture_output=True, text=True, check=True).stdout.split()
    before = images()
    a = build(d, out="a")
    os.utime(os.path.join(d, "server"), (1, 1))
    b = build(d, out="b")
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    assert images() == before, "no image left in the builder's storage"
    pa = Eif(a).pcrs()
    static_binary(d, "server", server_c("another"))
    pc = Eif(build(d, out="c")).pcrs()
    assert pc["PCR0"] != pa["PCR0"] and pc["PCR2"] != pa["PCR2"] and pc["PCR1"] == pa["PCR1"]
    got, _ = toml_pcrs(d)
    assert got == pc, "cage.toml holds the last build's PCRs"
    # debug = true is baked into /cage.json: PCR2 changes with it.
    t = open(os.path.join(d, "cage.toml")).read().replace("debug = false", "debug = true")
    open(os.path.join(d, "cage.toml"), "w").write(t)
    pd = Eif(build(d, out="d")).pcrs()
    assert pd["PCR2"] != pc["PCR2"] and pd["PCR1"] == pc["PCR1"]


def verify_cose_sign1(cose, cert_pem, pcr0_hex, dir):
    """The COSE_Sign1 as aws-nitro-enclaves-cose writes it: [protected {1: -35}, {}, payload,
    r||s]; payload PcrInfo {register_index: 0, register_value: PCR0}; verified by openssl."""
    prot, unprot, payload, sig = cbor_decode(cose)[0]
    assert cbor_decode(prot)[0] == {1: -35}, "ES384"
    assert unprot == {}
    info = cbor_decode(payload)[0]
    assert info == {"register_index": 0, "register_value": list(bytes.fromhex(pcr0_hex))}
    tbs = (cbor_head(4, 4) + cbor_head(3, 10) + b"Signature1" + cbor_bstr(prot) + cbor_bstr(b"")
           + cbor_bstr(payload))
    assert len(sig) == 96

    def der_int(x):
        x = x.lstrip(b"\0") or b"\0"
        if x[0] & 0x80:
            x = b"\0" + x
        return b"\x02" + bytes([len(x)]) + x
    body = der_int(sig[:48]) + der_int(sig[48:])
    der = b"\x30" + bytes([len(body)]) + body
    paths = {n: os.path.join(dir, n) for n in ("tbs", "sig", "cert.pem", "pub.pem")}
    open(paths["tbs"], "wb").write(tbs)
    open(paths["sig"], "wb").write(der)
    open(paths["cert.pem"], "wb").write(cert_pem)
    subprocess.run(["openssl", "x509", "-in", paths["cert.pem"], "-pubkey", "-noout", "-out",
                    paths["pub.pem"]], check=True)
    r = subprocess.run(["openssl", "dgst", "-sha384", "-verify", paths["pub.pem"], "-signature",
                        paths["sig"], paths["tbs"]], capture_output=True, text=True)
    return r.returncode == 0


def test_signed_build():
    """cert new makes a P-384 certificate; a signed build has Nitro's signature section, PCR8 =
    SHA-384(zeros || SHA-384(certificate DER)), a COSE_Sign1 over PCR0 that openssl verifies;
    another certificate changes PCR8 only; cage.toml's [signing] signs too."""
    d = project("signed")
    evctl("cage", "cert", "new", "-o", "certs", "--subj", "/CN=Test Signer/O=evserver", cwd=d)
    evctl("cage", "cert", "new", "-o", "certs2", cwd=d)
    r = evctl("cage", "cert", "new", "-o", "certs", cwd=d, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    assert os.stat(os.path.join(d, "certs", "key.pem")).st_mode & 0o777 == 0o600
    t = subprocess.run(["openssl", "x509", "-in", os.path.join(d, "certs", "cert.pem"), "-noout",
                        "-text"], capture_output=True, text=True, check=True).stdout
    assert "NIST CURVE: P-384" in t and "CN = Test Signer" in t, t
    unsigned = Eif(build(d, out="u")).pcrs()
    data = build(d, "--signing-cert", "certs/cert.pem", "--private-key", "certs/key.pem", out="s")
    eif = Eif(data)
    assert [t for t, _ in eif.sections] == [1, 2, 5, 3, 3, 4]
    p = eif.pcrs()
    der = ssl.PEM_cert_to_DER_cert(open(os.path.join(d, "certs", "cert.pem")).read())
    assert p["PCR8"] == nitro_pcr(der)
    assert {k: p[k] for k in ("PCR0", "PCR1", "PCR2")} == unsigned
    got, _ = toml_pcrs(d)
    assert got == p
    entries = cbor_decode(eif.of(4)[0])[0]
    assert len(entries) == 1 and set(entries[0]) == {"signing_certificate", "signature"}
    cert_pem = bytes(entries[0]["signing_certificate"])
    assert cert_pem == open(os.path.join(d, "certs", "cert.pem"), "rb").read()
    assert verify_cose_sign1(bytes(entries[0]["signature"]), cert_pem, p["PCR0"], d)
    j = json.loads(evctl("cage", "describe", "s/enclave.eif", cwd=d, json_out=True).stdout)
    assert j["signed"] is True and j["signatureValid"] is True and j["measurements"]["PCR8"] == \
        p["PCR8"]
    p2 = Eif(build(d, "--signing-cert", "certs2/cert.pem", "--private-key", "certs2/key.pem",
                   out="s2")).pcrs()
    assert p2["PCR8"] != p["PCR8"] and all(p2[k] == p[k] for k in ("PCR0", "PCR1", "PCR2"))
    # A key that is not the certificate's is refused before anything is written.
    r = evctl("cage", "build", "-o", "bad", "--kernel-dir", env()["kdir"], "--init",
              env()["init"], "--signing-cert", "certs/cert.pem", "--private-key",
              "certs2/key.pem", cwd=d, check=False)
    assert r.returncode == 1 and "does not belong" in r.stderr, r.stderr
    # The [signing] table of cage.toml (init --signing-cert/--private-key).
    d2 = project("signed2", init_args=("--signing-cert", os.path.join(d, "certs", "cert.pem"),
                                       "--private-key", os.path.join(d, "certs", "key.pem")))
    assert Eif(build(d2)).pcrs()["PCR8"] == p["PCR8"]
    # A signature section tampered with: describe says so and fails.
    sig = eif.of(4)[0]
    i = data.rindex(sig)
    bad = bytearray(data)
    # The last byte of s. Nitro encodes bytes as an array of CBOR integers (one byte below 24,
    # else 0x18 and the byte): the section's last byte is always a value, and its low bit
    # flipped stays a value of the same encoding (a prefix byte flipped broke the structure).
    bad[i + len(sig) - 1] ^= 1
    bad[544:548] = struct.pack(">I", zlib.crc32(bytes(bad[:544] + bad[548:])))
    open(os.path.join(d, "tampered.eif"), "wb").write(bad)
    r = evctl("cage", "describe", "tampered.eif", cwd=d, check=False)
    assert r.returncode == 1 and "SIGNATURE INVALID" in r.stdout, (r.returncode, r.stdout, r.stderr)


def test_local_base_and_oci_archive():
    """FROM a local image and FROM oci-archive:PATH build offline; the base's files are in the
    rootfs, and the base's EXPOSE gives the port when the Dockerfile has none."""
    e = env()
    d = evstest.tmpdir("evs-cageb-")
    static_binary(d, "base", server_c("base"))
    with open(os.path.join(d, "Base.Dockerfile"), "w") as f:
        f.write("FROM scratch\nCOPY base /usr/bin/base\nEXPOSE 7000\n")
    subprocess.run(["buildah", "bud", "--isolation=chroot", "-f", "Base.Dockerfile", "-t",
                    "localhost/evs-test-base:1", "."], cwd=d, env=e["env"], check=True,
                   capture_output=True)
    archive = os.path.join(d, "base.tar")
    subprocess.run(["buildah", "push", "localhost/evs-test-base:1", "oci-archive:" + archive],
                   env=e["env"], check=True, capture_output=True)
    static_binary(d, "server", server_c("on top"))
    for i, base in enumerate(("localhost/evs-test-base:1", "oci-archive:" + archive)):
        with open(os.path.join(d, "Dockerfile"), "w") as f:
            f.write('FROM %s\nCOPY server /app/server\nCMD ["/app/server"]\n' % base)
        evctl("cage", "init", "--name", "based%d" % i, "--app", APP, "--force", cwd=d)
        app = ramdisk(Eif(build(d, out="o%d" % i)), 1)
        assert "rootfs/usr/bin/base" in app and "rootfs/app/server" in app
        cj = json.loads(app["cage.json"][6])
        assert cj["port"] == 7000 and cj["cmd"] == ["/app/server"] and cj["user"] == "0:0"


def test_build_args_and_short_options():
    """--build-arg reaches the Dockerfile's ARG; -c, -f and -o work as ev-cage's do, with the
    cage.toml and Dockerfile elsewhere than the current directory."""
    e = env()
    d = project("args")
    os.makedirs(os.path.join(d, "conf"))
    os.rename(os.path.join(d, "cage.toml"), os.path.join(d, "conf", "cage.toml"))
    with open(os.path.join(d, "conf", "Args.Dockerfile"), "w") as f:
        f.write('FROM scratch\nARG WHO=nobody\nENV WHO=$WHO\nCOPY server /server\n'
                'ENTRYPOINT ["/server"]\n')
    evctl("cage", "build", "-c", "conf/cage.toml", "-f", "conf/Args.Dockerfile", "-o", "o1",
          "--build-arg", "WHO=someone", "--kernel-dir", e["kdir"], "--init", e["init"], ".",
          cwd=d)
    eif = Eif(open(os.path.join(d, "o1", "enclave.eif"), "rb").read())
    cj = json.loads(ramdisk(eif, 1)["cage.json"][6])
    assert "WHO=someone" in cj["env"] and cj["port"] == 8008, cj
    got, _ = toml_pcrs(os.path.join(d, "conf"))
    assert got == eif.pcrs()


def test_bad_inputs():
    """Clear errors: no Dockerfile, a bad cage.toml, no kernel, a dynamic /init, a base image
    that is not there, a reserved port, and corrupt or truncated images for describe."""
    e = env()
    d = project("badin")
    args = ["--kernel-dir", e["kdir"], "--init", e["init"]]

    def fails(*a, code=1, text=None, where="stderr"):
        r = evctl(*a, cwd=d, check=False)
        out = getattr(r, where)
        assert r.returncode == code and (text is None or text in out), (a, r.returncode, out)
        return out

    fails("cage", "build", "-f", "Nope.Dockerfile", *args, text="no Dockerfile")
    fails("cage", "build", "-c", "missing.toml", *args, text="cage init")
    open(os.path.join(d, "broken.toml"), "w").write('name = "x"\nthis is not toml\n')
    fails("cage", "build", "-c", "broken.toml", *args, text="line 2")
    open(os.path.join(d, "noname.toml"), "w").write('uuid = "cage_1"\napp_uuid = "%s"\n' % APP)
    fails("cage", "build", "-c", "noname.toml", *args, text="needs name")
    open(os.path.join(d, "baddebug.toml"), "w").write(
        'name = "x"\nuuid = "cage_1"\napp_uuid = "%s"\ndebug = "yes"\n' % APP)
    fails("cage", "build", "-c", "baddebug.toml", *args, text="true or false")
    fails("cage", "build", "--kernel-dir", os.path.join(d, "nokernel"), "--init", e["init"],
          text="scripts/cage-kernel")
    dyn = os.path.join(d, "dyn")
    subprocess.run(["gcc", "-o", dyn, "-x", "c", "-"], input="int main(void){return 0;}",
                   text=True, check=True)
    fails("cage", "build", "--kernel-dir", e["kdir"], "--init", dyn, text="not a static")
    fails("cage", "build", "--bogus", code=2, text="unknown option")
    with open(os.path.join(d, "Missing.Dockerfile"), "w") as f:
        f.write("FROM localhost/evs-no-such-image:1\n")
    fails("cage", "build", "-f", "Missing.Dockerfile", *args, text="oci-archive")
    with open(os.path.join(d, "Reserved.Dockerfile"), "w") as f:
        f.write("FROM scratch\nCOPY server /server\nEXPOSE 9999\n")
    fails("cage", "build", "-f", "Reserved.Dockerfile", *args, text="reserved")
    assert not os.path.exists(os.path.join(d, "enclave.eif"))
    # describe
    fails("cage", "describe", "nothing.eif", text="no such image file")
    good = build(d)
    for name, data in (("trunc.eif", good[:len(good) // 2]),
                       ("flip.eif", good[:1000] + bytes([good[1000] ^ 1]) + good[1001:]),
                       ("junk.eif", b"not an image at all")):
        open(os.path.join(d, name), "wb").write(data)
    fails("cage", "describe", "trunc.eif", text="past the end")
    fails("cage", "describe", "flip.eif", text="CRC")
    fails("cage", "describe", "junk.eif", text="magic")


def test_boots_under_qemu():
    """The image's kernel boots its two ramdisks (concatenated, as Nitro loads them) in a QEMU
    microvm: the test /init runs as PID 1 and sees the app, the modules and /cage.json."""
    e = env()
    if not e["real_kernel"]:
        raise evstest.Skip("no kernel directory (scripts/cage-kernel; install-deps makes one)")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise evstest.Skip("qemu-system-x86_64 is not installed (Debian's qemu-system-x86)")
    d = project("booted")
    eif = Eif(build(d))
    k, rd = os.path.join(d, "k"), os.path.join(d, "rd")
    open(k, "wb").write(eif.of(1)[0])
    open(rd, "wb").write(b"".join(eif.of(3)))
    # -icount: guest time follows instructions, not the host clock, so the kernel's timer
    # calibration holds on a loaded machine (without it a busy host stalls the boot).
    r = subprocess.run([qemu, "-M", "microvm", "-accel", "tcg", "-icount", "shift=3", "-m", "256",
                        "-no-reboot",
                        "-nodefaults", "-nographic", "-serial", "stdio", "-kernel", k, "-initrd",
                        rd, "-append", eif.of(2)[0].decode()], capture_output=True, text=True,
                       timeout=120)
    m = re.search(r"EVS-TEST-INIT pid=(\d+) app=(\d) modules=(\d) cage.json=(.*)", r.stdout)
    assert m, r.stdout[-3000:] + r.stderr[-2000:]
    assert m.group(1, 2, 3) == ("1", "1", "1"), m.group(0)
    assert json.loads(m.group(4))["name"] == "booted"


if __name__ == "__main__":
    evstest.main(globals())
