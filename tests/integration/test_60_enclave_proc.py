"""The enclave process, evserver-enclave, driven over its socketpair exactly as the enclave plugin
drives it (enclave/proto/evs_enclave_proto.h), with the framing spoken from Python: the sandbox
self-check (a forbidden open and socket fail with EPERM inside the enclave), APP_CREATE and
APP_UNLOCK across a restart, a 50-field ENCRYPT per curve and role decrypted back with its types,
a wrong token refused, the systemd-credentials unlock, malformed frames answered without a crash,
pipelined requests answered whole and in order, no key material on disk besides the sealed
blobs, and a process that is seccomp-filtered and not dumpable (a same-user process cannot read
its memory). Then the further connections that ATTACH hands the enclave (a unix socket passed
with SCM_RIGHTS): served like the first, apps unlocked through one usable through another, each
request answered on its own connection, the process alive until its last connection closes,
ATTACHes without a proper descriptor ignored and logged, and HELLO's pid= and tag=.
"""

import json
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import threading
import time

import evstest

MAGIC = 0x31455645
HELLO, APP_CREATE, APP_UNLOCK, APP_LOCK, APP_STATUS = 1, 2, 3, 4, 5
ENCRYPT, DECRYPT, ENCRYPT_FILE, DECRYPT_FILE, DECRYPT_ROLE = 6, 7, 8, 9, 10
ATTACH = 11
E_PROTOCOL, E_UNKNOWN_OP, E_NO_APP, E_BAD_TOKEN, E_DECRYPT, E_INVALID = -1, -2, -3, -4, -5, -6
MAX_MESSAGE = 64 << 20


def binary():
    path = evstest.build_path("evserver-enclave")
    if not os.path.exists(path):
        raise AssertionError("%s is missing: build the evserver-enclave target" % path)
    return path


def frame(op, items, request_id=1, magic=MAGIC, version=1, status=0, nitems=None):
    body = struct.pack("<IHHIiI", magic, version, op, request_id, status,
                       len(items) if nitems is None else nitems)
    body += b"".join(struct.pack("<I", len(i)) + i for i in items)
    return struct.pack("<I", len(body)) + body


class Conn:
    """The client's end of one connection to an enclave process: frames out, responses in."""

    def __init__(self, enclave, sock):
        self.enclave = enclave
        self.sock = sock
        self.sock.settimeout(30)
        self.next_id = 1

    def send_raw(self, data):
        self.sock.sendall(data)

    def recv(self):
        head = self._read(4)
        (length,) = struct.unpack("<I", head)
        body = self._read(length)
        magic, version, op, rid, status, n = struct.unpack("<IHHIiI", body[:20])
        assert magic == MAGIC and version == 1, (magic, version)
        items, off = [], 20
        for _ in range(n):
            (ln,) = struct.unpack("<I", body[off:off + 4])
            items.append(body[off + 4:off + 4 + ln])
            off += 4 + ln
        assert off == len(body)
        return op, rid, status, items

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise AssertionError("the enclave closed the connection; stderr: %r"
                                     % self.enclave.stderr())
            buf += chunk
        return buf

    def call(self, op, items):
        rid = self.next_id
        self.next_id += 1
        self.send_raw(frame(op, items, rid))
        rop, rrid, status, out = self.recv()
        assert (rop, rrid) == (op, rid), (rop, rrid, op, rid)
        return status, out

    def ok(self, op, items):
        status, out = self.call(op, items)
        assert status == 0, "op %d failed with %d" % (op, status)
        return out

    def attach(self, fds=None, items=()):
        """Sends ATTACH (request id 0; it gets no answer) with fds as SCM_RIGHTS in the same
        sendmsg. fds None: the end of a new socketpair, whose other end comes back as a Conn."""
        mine = theirs = None
        if fds is None:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds = [theirs.fileno()]
        data = frame(ATTACH, list(items), request_id=0)
        if fds:
            assert socket.send_fds(self.sock, [data], fds) == len(data)
        else:
            self.send_raw(data)
        if mine is None:
            return None
        theirs.close()  # the enclave has its own copy now
        conn = Conn(self.enclave, mine)
        evstest.defer(conn.sock.close)
        return conn

    def assert_nothing_to_read(self):
        """No bytes from the enclave wait on this connection. Meaningful after a round trip
        made on it: the enclave answers in order, so it has handled everything sent before."""
        r, _, _ = select.select([self.sock], [], [], 0.2)
        assert not r, "unexpected bytes from the enclave: %r" % self.sock.recv(4096)


class Enclave(Conn):
    """One evserver-enclave process and the plugin's end of its socketpair, its first
    connection."""

    def __init__(self, state_dir, credentials=None, env=None, user=None, extra_fds=(),
                 args=()):
        sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        super().__init__(self, sock)
        self.seal_key = os.path.join(state_dir, "seal.key")
        args = [binary(), "--fd", str(theirs.fileno()), "--seal-key", self.seal_key, *args]
        if credentials:
            args += ["--credentials", credentials]
        self.stderr_path = os.path.join(evstest.tmpdir("evs-enclave-log-"), "stderr")
        with open(self.stderr_path, "wb") as err:
            kw = {"user": user} if user is not None else {}
            self.fd = theirs.fileno()
            self.proc = subprocess.Popen(args, pass_fds=[theirs.fileno(), *extra_fds],
                                         stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         env=env if env is not None else {}, **kw)
        theirs.close()
        evstest.defer(self.kill)

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read()

    def close(self):
        """EOF on the socket: the enclave must exit 0."""
        self.sock.close()
        return self.proc.wait(timeout=10)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def create_app(enc, app_id):
    out = enc.ok(APP_CREATE, [app_id])
    assert len(out) == 6
    token, pub_k1, pub_p256, share1, share2, wrapped = out
    assert token.startswith(b"evt_") and len(token) == 47, token
    assert len(pub_k1) == 33 and len(pub_p256) == 33 and pub_k1[0] in (2, 3)
    return out


# ---- tests ----------------------------------------------------------------------------------

def test_hello_sandbox_self_check():
    # A descriptor leaked to the enclave by its parent must be closed before it sandboxes itself.
    leak_r, leak_w = os.pipe()
    evstest.defer(lambda: (os.close(leak_r), os.close(leak_w)))
    enc = Enclave(evstest.tmpdir(), extra_fds=(leak_r, leak_w))
    out = enc.ok(HELLO, [])
    try:
        fds = sorted(int(x) for x in os.listdir("/proc/%d/fd" % enc.proc.pid))
    except PermissionError:  # not dumpable: only root may look
        fds = None
    if fds is not None:
        assert fds == sorted({0, 1, 2, enc.fd}), fds
    assert struct.unpack("<H", out[0])[0] == 1
    text = out[1].decode()
    assert text.startswith("evserver-enclave "), text
    # Checked live inside the enclave: opening a file and creating a socket are refused.
    assert "sandbox=enclave" in text and "open=EPERM" in text and "socket=EPERM" in text, text
    assert enc.close() == 0
    assert enc.stderr() == b"", enc.stderr()


def test_create_unlock_encrypt_decrypt():
    state = evstest.tmpdir()
    enc = Enclave(state)
    token, pub_k1, pub_p256, share1, share2, wrapped = create_app(enc, b"app_int1")
    assert enc.close() == 0

    # A new process (a restart): the app is locked until unlocked with its token.
    enc = Enclave(state)
    status, out = enc.call(APP_STATUS, [b"app_int1"])
    assert status == 0 and out[0] == b"\x00", out
    status, _ = enc.call(ENCRYPT, [b"app_int1", b"secp256k1", b"", b"s:x"])
    assert status == E_NO_APP, status
    out = enc.ok(APP_UNLOCK, [b"app_int1", token, share1, share2, wrapped])
    assert out == [pub_k1, pub_p256]
    out = enc.ok(APP_STATUS, [b"app_int1"])
    assert out == [b"\x01", pub_k1, pub_p256]

    # 50 fields per message: strings, numbers, booleans; both curves, with and without a role.
    values, expected = [], []
    for i in range(50):
        kind = i % 5
        if kind == 0:
            values.append(b"s:value %d \xc3\xa9" % i)
            expected.append((0, b"value %d \xc3\xa9" % i))
        elif kind == 1:
            values.append(b"s:  padded %d\n" % i)     # trimmed like the SDK does
            expected.append((0, b"padded %d" % i))
        elif kind == 2:
            values.append(b"n:%d.25" % (i * 1000))
            expected.append((1, b"%d.25" % (i * 1000)))
        elif kind == 3:
            values.append(b"n:-%de+21" % i)
            expected.append((1, b"-%de+21" % i))
        else:
            values.append(b"b:true" if i % 2 else b"b:false")
            expected.append((2, b"true" if i % 2 else b"false"))
    all_ev, all_expected = [], []
    for curve, tags in ((b"secp256k1", (b"ev:RFVC", b"ev:S0lS")),
                        (b"prime256v1", (b"ev:Tk9D", b"ev:QkTC"))):
        for role, tag in ((b"", tags[0]), (b"pii-1", tags[1])):
            out = enc.ok(ENCRYPT, [b"app_int1", curve, role] + values)
            assert len(out) == 50
            for item in out:
                assert struct.unpack("<i", item[:4])[0] == 0
                ev = item[4:]
                assert ev.startswith(tag) and ev.endswith(b":$"), ev
                all_ev.append(ev)
            all_expected += expected
    # One ephemeral key per curve and window: every value of a message shares it.
    assert len({ev.split(b":")[-3] for ev in all_ev[:50]}) == 1

    out = enc.ok(DECRYPT, [b"app_int1"] + all_ev + [b"ev:RFVC:not:valid:$"])
    assert len(out) == len(all_ev) + 1
    for item, (typ, text) in zip(out, all_expected):
        assert struct.unpack("<i", item[:4])[0] == 0, item
        assert item[4] == typ and item[5:] == text, (item, typ, text)
    assert struct.unpack("<i", out[-1][:4])[0] < 0
    # DECRYPT_ROLE adds the data role: none for the first 50, pii-1 for the next 50.
    out = enc.ok(DECRYPT_ROLE, [b"app_int1"] + all_ev[:100])
    for i, item in enumerate(out):
        role = b"pii-1" if i >= 50 else b""
        assert item[4] == all_expected[i][0] and item[5] == len(role), item
        assert item[6:6 + len(role)] == role and item[6 + len(role):] == all_expected[i][1]

    # Files round-trip too.
    data = os.urandom(100000)
    (evenc,) = enc.ok(ENCRYPT_FILE, [b"app_int1", b"prime256v1", data])
    assert evenc.startswith(b"%EVENC") and len(evenc) == len(data) + 75
    assert enc.ok(DECRYPT_FILE, [b"app_int1", evenc]) == [data]

    # The largest file the SDK allows (25 MiB), through messages of about 25 MiB each way.
    data = os.urandom(25 * 1024 * 1024)
    (evenc,) = enc.ok(ENCRYPT_FILE, [b"app_int1", b"secp256k1", data])
    assert enc.ok(DECRYPT_FILE, [b"app_int1", evenc]) == [data]
    status, _ = enc.call(ENCRYPT_FILE, [b"app_int1", b"secp256k1", data + b"x"])
    assert status == E_INVALID

    # Creating an app that is unlocked here again is refused (it would replace its keys).
    status, _ = enc.call(APP_CREATE, [b"app_int1"])
    assert status == E_INVALID

    # LOCK: the keys are gone from the enclave.
    enc.ok(APP_LOCK, [b"app_int1"])
    status, _ = enc.call(DECRYPT, [b"app_int1", all_ev[0]])
    assert status == E_NO_APP
    assert enc.close() == 0
    assert enc.stderr() == b""


def test_wrong_token_refused():
    state = evstest.tmpdir()
    enc = Enclave(state)
    token, _, _, share1, share2, wrapped = create_app(enc, b"app_wrong")
    _, _, _, share1b, share2b, wrappedb = create_app(enc, b"app_other")
    enc.close()
    enc = Enclave(state)
    bad = token[:10] + (b"A" if token[10:11] != b"A" else b"B") + token[11:]
    for t in (bad, b"evt_" + b"A" * 43, b"not a token", b"evt_"):
        status, out = enc.call(APP_UNLOCK, [b"app_wrong", t, share1, share2, wrapped])
        assert status == E_BAD_TOKEN and out == [], (t, status)
    # Blobs of another app, or tampered: refused as invalid.
    status, _ = enc.call(APP_UNLOCK, [b"app_wrong", token, share1b, share2, wrapped])
    assert status == E_INVALID, status
    tampered = bytearray(share2)
    tampered[-1] ^= 1
    status, _ = enc.call(APP_UNLOCK, [b"app_wrong", token, share1, bytes(tampered), wrapped])
    assert status == E_INVALID, status
    status, out = enc.call(APP_STATUS, [b"app_wrong"])
    assert out[0] == b"\x00"
    enc.ok(APP_UNLOCK, [b"app_wrong", token, share1, share2, wrapped])
    # The token must not show up in anything the enclave logged.
    assert token not in enc.stderr()
    assert enc.close() == 0


def test_credentials_directory_unlock():
    state = evstest.tmpdir()
    enc = Enclave(state)
    token, pub_k1, _, share1, share2, wrapped = create_app(enc, b"app_cred")
    enc.close()
    creds = evstest.tmpdir()
    with open(os.path.join(creds, "evserver-app-app_cred"), "wb") as f:
        f.write(token + b"\n")
    with open(os.path.join(creds, "unrelated"), "wb") as f:
        f.write(b"ignored")
    # --credentials DIR, and the systemd default $CREDENTIALS_DIRECTORY.
    for kw in ({"credentials": creds}, {"env": {"CREDENTIALS_DIRECTORY": creds}}):
        enc = Enclave(state, **kw)
        out = enc.ok(APP_UNLOCK, [b"app_cred", b"", share1, share2, wrapped])
        assert out[0] == pub_k1
        (ev,) = enc.ok(ENCRYPT, [b"app_cred", b"secp256k1", b"", b"s:hi"])
        assert enc.ok(DECRYPT, [b"app_cred", ev[4:]]) == [b"\0\0\0\0\0hi"]
        assert enc.close() == 0
    # Without a credential, an empty token is refused.
    enc = Enclave(state)
    status, _ = enc.call(APP_UNLOCK, [b"app_cred", b"", share1, share2, wrapped])
    assert status == E_BAD_TOKEN
    enc.close()


def test_malformed_frames_survive():
    enc = Enclave(evstest.tmpdir())
    # Bad magic, bad version, non-zero status: PROTOCOL, echoing the request id.
    for kw in ({"magic": 0x12345678}, {"version": 9}, {"status": -1}):
        enc.send_raw(frame(HELLO, [], request_id=77, **kw))
        op, rid, status, items = enc.recv()
        assert (op, rid, status, items) == (HELLO, 77, E_PROTOCOL, []), (kw, op, rid, status)
    # Items that do not fill the body, an item count over the limit, a short body.
    enc.send_raw(frame(HELLO, [b"abc"], request_id=78, nitems=2))
    assert enc.recv()[1:3] == (78, E_PROTOCOL)
    enc.send_raw(frame(HELLO, [], request_id=79, nitems=4097))
    assert enc.recv()[1:3] == (79, E_PROTOCOL)
    enc.send_raw(struct.pack("<I", 3) + b"abc")
    assert enc.recv()[2] == E_PROTOCOL
    enc.send_raw(struct.pack("<I", 0))
    assert enc.recv()[2] == E_PROTOCOL
    # Unknown op, wrong item counts, garbage items.
    status, _ = enc.call(4242, [])
    assert status == E_UNKNOWN_OP
    status, _ = enc.call(APP_UNLOCK, [b"x"])
    assert status == E_PROTOCOL
    status, _ = enc.call(APP_CREATE, [b"\xff\x00bad id"])
    assert status == E_INVALID
    status, _ = enc.call(DECRYPT_FILE, [b"app_none", b"%EVENC" + b"\0" * 100])
    assert status == E_NO_APP
    # Over EVS_EP_MAX_MESSAGE: the body is read and discarded, then an error comes back.
    # Its header is still read, so the response names the request.
    head = frame(ENCRYPT_FILE, [], request_id=80)
    enc.send_raw(struct.pack("<I", MAX_MESSAGE + 1) + head[4:])
    chunk = b"\0" * (1 << 20)
    left = MAX_MESSAGE + 1 - (len(head) - 4)
    while left:
        n = min(left, len(chunk))
        enc.sock.sendall(chunk[:n])
        left -= n
    assert enc.recv() == (ENCRYPT_FILE, 80, E_PROTOCOL, [])
    # Still alive and answering.
    assert enc.proc.poll() is None
    assert enc.ok(HELLO, [])[1].startswith(b"evserver-enclave ")
    # A frame cut short by EOF: a clean exit.
    enc.send_raw(struct.pack("<I", 100) + b"partial")
    assert enc.close() == 0


def test_pipelined_requests_answered_in_order():
    """The plugin pipelines requests and reads the responses later; the enclave reads requests
    in chunks and writes responses in groups. All 300 come back whole and in order, with a file
    larger than the enclave's read buffer and a malformed frame among them, while the requests
    are still arriving in odd-sized pieces."""
    enc = Enclave(evstest.tmpdir())
    app = b"app_pipe"
    create_app(enc, app)
    big = os.urandom(600 * 1024)
    reqs, expect = [], []
    for i in range(300):
        rid = 1000 + i
        if i == 150:
            reqs.append(frame(ENCRYPT_FILE, [app, b"prime256v1", big], rid))
            expect.append((ENCRYPT_FILE, rid, 0))
        elif i == 200:
            reqs.append(frame(HELLO, [b"x"], rid))
            expect.append((HELLO, rid, E_PROTOCOL))
        else:
            reqs.append(frame(ENCRYPT, [app, b"secp256k1", b"", b"s:v%d" % i], rid))
            expect.append((ENCRYPT, rid, 0))
    data = b"".join(reqs)

    def send():
        for off in range(0, len(data), 4099):
            enc.sock.sendall(data[off:off + 4099])

    sender = threading.Thread(target=send)
    sender.start()
    outs = [enc.recv() for _ in reqs]
    sender.join()
    assert [o[:3] for o in outs] == expect
    assert enc.ok(DECRYPT_FILE, [app, outs[150][3][0]]) == [big]
    for i in (0, 149, 151, 299):
        field = outs[i][3][0]
        assert field[:4] == b"\0\0\0\0", field
        (plain,) = enc.ok(DECRYPT, [app, field[4:]])
        assert plain == b"\0\0\0\0\0" + b"v%d" % i, plain
    assert enc.close() == 0
    assert enc.stderr() == b""


def test_no_key_material_on_disk_after_kill():
    state = evstest.tmpdir()
    enc = Enclave(state)
    token, _, _, share1, share2, wrapped = create_app(enc, b"app_disk")
    enc.ok(ENCRYPT, [b"app_disk", b"secp256k1", b"", b"s:secret"])
    os.kill(enc.proc.pid, signal.SIGKILL)
    enc.proc.wait()
    # Only the sealing key file; nothing else (no core dump, no key, no token) was written.
    assert sorted(os.listdir(state)) == ["seal.key"], os.listdir(state)
    st = os.stat(enc.seal_key)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 32
    with open(enc.seal_key, "rb") as f:
        seal = f.read()
    for secret in (token,):
        assert secret not in seal
    # The sealing key alone does not open the app: the token is still needed.
    enc = Enclave(state)
    status, _ = enc.call(APP_UNLOCK, [b"app_disk", b"", share1, share2, wrapped])
    assert status == E_BAD_TOKEN
    enc.ok(APP_UNLOCK, [b"app_disk", token, share1, share2, wrapped])
    enc.close()
    # A sealing key readable by others is refused at start-up.
    os.chmod(enc.seal_key, 0o644)
    enc = Enclave(state)
    assert enc.proc.wait(timeout=10) == 1
    assert b"EVS-3007" in enc.stderr()
    os.chmod(enc.seal_key, 0o600)


def test_process_is_filtered_and_not_dumpable():
    state = evstest.tmpdir()
    user = None
    if os.getuid() == 0:
        # Run the enclave as an unprivileged user, so that "same user, no privilege" is what
        # tries to read its memory below (root with CAP_SYS_PTRACE is not stopped by this).
        user = 65534
        os.chown(state, user, -1)
    enc = Enclave(state, user=user)
    enc.ok(HELLO, [])  # start-up finished: the sandbox is in place
    pid = enc.proc.pid
    with open("/proc/%d/status" % pid) as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    assert status["Seccomp"].strip() == "2", status.get("Seccomp")
    assert int(status.get("Seccomp_filters", "1")) >= 1
    assert status["NoNewPrivs"].strip() == "1"
    # Not dumpable: the kernel makes its /proc entries root's, and a process of the same user
    # cannot open its memory.
    enclave_uid = user if user is not None else os.getuid()
    assert os.stat("/proc/%d/status" % pid).st_uid != enclave_uid
    probe = ("import sys\n"
             "try:\n"
             "    open('/proc/%d/mem', 'rb').close()\n"
             "except PermissionError:\n"
             "    sys.exit(0)\n"
             "sys.exit(3)\n" % pid)
    kw = {"user": user} if user is not None else {}
    r = subprocess.run(["/usr/bin/python3", "-c", probe], **kw)
    assert r.returncode == 0, "a same-user process could open the enclave's memory"
    with open("/proc/%d/limits" % pid) as f:
        core = [line for line in f if line.startswith("Max core file size")]
    assert core and core[0].split()[4:6] == ["0", "0"], core
    assert enc.close() == 0


# ---- further connections: ATTACH --------------------------------------------------------------

HELLO_TEXT = re.compile(r"evserver-enclave (?P<version>\S+) sandbox=(?P<sandbox>\S+) "
                        r"open=(?P<open>\S+) socket=(?P<socket>\S+) mlock=(?P<mlock>\S+) "
                        r"pid=(?P<pid>[0-9]+)(?: tag=(?P<tag>[A-Za-z0-9_-]{1,64}))?")


def hello(conn):
    """HELLO on conn; its text, parsed."""
    out = conn.ok(HELLO, [])
    m = HELLO_TEXT.fullmatch(out[1].decode())
    assert m, out[1]
    return m


def log_ids(enc):
    """The ids of the enclave's log lines (each a JSON object on one line)."""
    return [json.loads(line)["id"] for line in enc.stderr().splitlines()]


def test_attach_serves_a_second_connection():
    state = evstest.tmpdir()
    tag = "cfg-1_" + "A" * 58  # the longest tag: 64 characters
    enc = Enclave(state, args=["--tag", tag])
    m = hello(enc)
    assert int(m["pid"]) == enc.proc.pid and m["tag"] == tag, m[0]
    assert m["sandbox"] == "enclave" and m["open"] == "EPERM" and m["socket"] == "EPERM", m[0]
    token, pub_k1, pub_p256, share1, share2, wrapped = create_app(enc, b"app_att")
    enc.ok(APP_LOCK, [b"app_att"])
    enc.ok(APP_UNLOCK, [b"app_att", token, share1, share2, wrapped])  # by hand, on connection 1

    conn2 = enc.attach()
    # ATTACH is one-way: the next answer on connection 1 is the next request's.
    hello(enc)
    enc.assert_nothing_to_read()
    m = hello(conn2)
    assert int(m["pid"]) == enc.proc.pid and m["tag"] == tag, m[0]
    # One enclave, one table of apps: unlocked through connection 1, usable through 2.
    assert conn2.ok(APP_STATUS, [b"app_att"]) == [b"\x01", pub_k1, pub_p256]
    (ev,) = conn2.ok(ENCRYPT, [b"app_att", b"prime256v1", b"", b"s:through two"])
    assert ev[:4] == b"\0\0\0\0", ev
    assert conn2.ok(DECRYPT, [b"app_att", ev[4:]]) == [b"\0\0\0\0\0through two"]
    assert enc.ok(DECRYPT, [b"app_att", ev[4:]]) == [b"\0\0\0\0\0through two"]
    # A connection attached through an attached one is served too.
    conn3 = conn2.attach()
    assert int(hello(conn3)["pid"]) == enc.proc.pid
    # A lock through one connection holds for all.
    conn3.ok(APP_LOCK, [b"app_att"])
    status, _ = enc.call(DECRYPT, [b"app_att", ev[4:]])
    assert status == E_NO_APP, status
    conn2.assert_nothing_to_read()
    conn2.sock.close()
    conn3.sock.close()
    assert enc.close() == 0
    assert enc.stderr() == b"", enc.stderr()

    # Without --tag, HELLO has no tag field.
    enc = Enclave(state)
    m = hello(enc)
    assert m["tag"] is None and int(m["pid"]) == enc.proc.pid, m[0]
    assert enc.close() == 0


def test_enclave_lives_until_its_last_connection_closes():
    enc = Enclave(evstest.tmpdir())
    create_app(enc, b"app_last")
    conn2 = enc.attach()
    hello(conn2)
    enc.sock.close()  # the worker that started the enclave goes away
    time.sleep(0.3)
    assert enc.proc.poll() is None, enc.stderr()
    (ev,) = conn2.ok(ENCRYPT, [b"app_last", b"secp256k1", b"", b"s:still here"])
    assert conn2.ok(DECRYPT, [b"app_last", ev[4:]]) == [b"\0\0\0\0\0still here"]
    # Attached through the second, which then closes: the third keeps the enclave alive.
    conn3 = conn2.attach()
    hello(conn3)
    conn2.sock.close()
    time.sleep(0.3)
    assert enc.proc.poll() is None, enc.stderr()
    assert conn3.ok(DECRYPT, [b"app_last", ev[4:]]) == [b"\0\0\0\0\0still here"]
    conn3.sock.close()  # the last one
    assert enc.proc.wait(timeout=10) == 0
    assert enc.stderr() == b"", enc.stderr()


def test_two_connections_pipelined_at_once():
    """Two clients pipeline 300 requests each, at the same time, in odd-sized pieces: every
    response comes back whole, in order, on the connection its request came on (each client's
    values carry its own prefix, and decrypt back to it) — with a file larger than the read
    buffer among one client's requests and a malformed frame among the other's."""
    enc = Enclave(evstest.tmpdir())
    app = b"app_two"
    create_app(enc, app)
    conns = [enc, enc.attach()]
    big = os.urandom(600 * 1024)
    plans = []
    for k in range(2):
        reqs, expect = [], []
        for i in range(300):
            rid = 1000 * (k + 1) + i
            if k == 0 and i == 120:
                reqs.append(frame(ENCRYPT_FILE, [app, b"prime256v1", big], rid))
                expect.append((ENCRYPT_FILE, rid, 0))
            elif k == 1 and i == 200:
                reqs.append(frame(HELLO, [b"x"], rid))
                expect.append((HELLO, rid, E_PROTOCOL))
            else:
                reqs.append(frame(ENCRYPT, [app, b"secp256k1", b"", b"s:c%d-v%d" % (k, i)], rid))
                expect.append((ENCRYPT, rid, 0))
        plans.append((b"".join(reqs), expect))

    results = [None, None]
    errors = []

    def send(k):
        data, piece = plans[k][0], 4099 + 1000 * k
        for off in range(0, len(data), piece):
            conns[k].sock.sendall(data[off:off + piece])

    def receive(k):
        try:
            results[k] = [conns[k].recv() for _ in plans[k][1]]
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=f, args=(k,)) for k in range(2) for f in (send, receive)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(2):
        assert [o[:3] for o in results[k]] == plans[k][1], k
        for i in (0, 119, 121, 199, 201, 299):
            field = results[k][i][3][0]
            assert field[:4] == b"\0\0\0\0", field
            # Decrypted through the other connection: it is the same enclave.
            (plain,) = conns[1 - k].ok(DECRYPT, [app, field[4:]])
            assert plain == b"\0\0\0\0\0" + b"c%d-v%d" % (k, i), plain
    assert conns[1].ok(DECRYPT_FILE, [app, results[0][120][3][0]]) == [big]
    for c in conns:
        c.assert_nothing_to_read()
    conns[1].sock.close()
    assert enc.close() == 0
    assert enc.stderr() == b"", enc.stderr()


def test_attach_without_a_proper_descriptor_is_ignored():
    enc = Enclave(evstest.tmpdir())
    # No descriptor at all.
    enc.attach(fds=[])
    hello(enc)
    enc.assert_nothing_to_read()
    assert log_ids(enc) == ["EVS-3040"], enc.stderr()

    # A pipe's end: not a socket. The enclave closes its copy, so with ours closed the read end
    # sees EOF.
    r, w = os.pipe()
    evstest.defer(lambda: os.close(r))
    enc.attach(fds=[w])
    os.close(w)
    hello(enc)
    enc.assert_nothing_to_read()
    ready, _, _ = select.select([r], [], [], 10)
    assert ready and os.read(r, 1) == b"", "the enclave kept the pipe open"
    # A datagram socket: not a stream socket.
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    evstest.defer(mine.close)
    enc.attach(fds=[theirs.fileno()])
    theirs.close()
    hello(enc)
    assert log_ids(enc) == ["EVS-3040", "EVS-3041", "EVS-3041"], enc.stderr()

    # A proper socket with an ATTACH that has items: malformed, so ignored, and the socket
    # closed (our end sees EOF).
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    evstest.defer(mine.close)
    enc.attach(fds=[theirs.fileno()], items=[b"x"])
    theirs.close()
    hello(enc)
    enc.assert_nothing_to_read()
    mine.settimeout(10)
    assert mine.recv(1) == b""
    assert log_ids(enc)[-1] == "EVS-3042", enc.stderr()

    # Descriptors beyond what waits for ATTACH frames (4) are closed and logged; the next
    # ATTACH takes the oldest that waited.
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(5)]
    for p in pairs:
        evstest.defer(p[0].close)
    data = frame(HELLO, [], request_id=500)
    assert socket.send_fds(enc.sock, [data], [p[1].fileno() for p in pairs]) == len(data)
    for p in pairs:
        p[1].close()
    assert enc.recv()[:3] == (HELLO, 500, 0)
    assert log_ids(enc)[-1] == "EVS-3044", enc.stderr()
    pairs[4][0].settimeout(10)
    assert pairs[4][0].recv(1) == b""  # the fifth: closed
    enc.attach(fds=[])  # consumes the first waiting descriptor
    first = Conn(enc, pairs[0][0])
    assert int(hello(first)["pid"]) == enc.proc.pid

    # Through all of it the enclave served, and logged nothing but those lines.
    assert enc.proc.poll() is None
    assert log_ids(enc) == ["EVS-3040", "EVS-3041", "EVS-3041", "EVS-3042", "EVS-3044"]
    first.sock.close()
    assert enc.close() == 0


def test_attach_beyond_the_connection_limit_is_refused():
    enc = Enclave(evstest.tmpdir())
    conns = [enc.attach() for _ in range(15)]  # 16 with the first
    for c in conns:
        hello(c)
    extra = enc.attach()
    hello(enc)
    extra.sock.settimeout(10)
    assert extra.sock.recv(1) == b""  # refused: closed
    assert log_ids(enc) == ["EVS-3043"], enc.stderr()
    # Once one has closed, there is room again.
    conns[0].sock.close()

    def attach_again():  # the enclave sees the close when it sees it: poll, no fixed delay
        c = enc.attach()
        try:
            return c if int(hello(c)["pid"]) == enc.proc.pid else None
        except (AssertionError, OSError):  # refused (closed) while the slot is still taken
            c.sock.close()
            return None

    again = evstest.wait_for(attach_again, timeout=20, interval=0.1,
                             what="an attach to be accepted after one connection closed")
    for c in conns[1:] + [again]:
        c.sock.close()
    assert enc.close() == 0


def test_stalled_connection_is_dropped_alone():
    """A request that never arrives whole: after 10 s without progress the enclave closes that
    connection (meanwhile the others wait) and goes on serving the rest."""
    enc = Enclave(evstest.tmpdir())
    conn2 = enc.attach()
    hello(conn2)
    head = frame(ENCRYPT_FILE, [], request_id=9)
    conn2.send_raw(struct.pack("<I", 1 << 20) + head[4:] + b"\0" * 1000)
    conn2.sock.settimeout(60)
    assert conn2.sock.recv(1) == b""
    assert log_ids(enc) == ["EVS-3033"], enc.stderr()
    assert int(hello(enc)["pid"]) == enc.proc.pid
    assert enc.close() == 0


def test_tag_must_be_valid():
    for tag in ("", "a" * 65, "has space", "semi;colon", "caf\u00e9", None):
        args = [binary(), "--fd", "0", "--seal-key", "/nonexistent/seal.key", "--tag"]
        r = subprocess.run(args + ([tag] if tag is not None else []), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={}, timeout=10)
        assert r.returncode == 2 and b"usage:" in r.stderr, (tag, r.returncode, r.stderr)


if __name__ == "__main__":
    evstest.main(globals())
