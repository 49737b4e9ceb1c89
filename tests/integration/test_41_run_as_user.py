"""`[server] user =` outside systemd (issue 9, item 11): started as root with user = nobody, the
master creates the state directory and the SQLite store as that user's (the workers open them),
keeps the TLS private key readable by root alone (it builds the TLS contexts before forking),
and a store write through the admin API (evctl app create) succeeds. `evserver -t` with a state
directory the user cannot use fails, naming the directory and the user.

Runs as root only (it switches users); skipped otherwise.
"""

import json
import os
import pwd
import socket
import ssl
import subprocess

import evstest

USER = "nobody"


def need_root():
    if os.geteuid() != 0:
        raise evstest.Skip("needs root (switches to user %s)" % USER)
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        raise evstest.Skip("no user %s" % USER)


def public_tmpdir():
    """A tmpdir the workers' user can traverse (mkdtemp makes it 0700)."""
    d = evstest.tmpdir("evs-user-")
    os.chmod(d, 0o755)
    return d


def evctl(cfg, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", cfg.admin_socket, *args],
                       capture_output=True, text=True, timeout=30)
    return r


def enclave_plugin(dir):
    real = evstest.build_path("evserver-enclave")
    if not os.access(real, os.X_OK):
        raise evstest.Skip("evserver-enclave is not built")
    return {"enclave_binary": real, "request_timeout": "5s"}


def test_fresh_state_dir_belongs_to_the_user_and_the_store_is_writable():
    pw = need_root()
    dir = public_tmpdir()
    # Not created beforehand: the master makes it (and its parent) on the first start.
    state = os.path.join(dir, "fresh", "state")
    ca = evstest.make_ca(dir)
    cert = evstest.make_cert(ca)
    os.chmod(cert.key, 0o600)  # root's alone: the workers must not need to read it
    cfg = evstest.write_config(dir, server={"user": USER, "state_dir": state, "workers": 2},
                               listeners={"http": {}, "api": {},
                                          "tls": {"tls": True, "certificate": cert.cert,
                                                  "key": cert.key}},
                               plugins={"enclave": enclave_plugin(dir)})
    with evstest.Server(cfg).start() as srv:
        st = os.stat(state)
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid), (st.st_uid, st.st_gid)
        assert st.st_mode & 0o777 == 0o700, oct(st.st_mode)
        assert os.stat(os.path.dirname(state)).st_mode & 0o005 == 0o005, "parent not traversable"
        db = os.path.join(state, "evserver.db")
        st = os.stat(db)
        assert st.st_uid == pw.pw_uid and st.st_mode & 0o077 == 0, (st.st_uid, oct(st.st_mode))
        # Every file the master or the workers created there is the user's.
        for root, dirs, files in os.walk(state):
            for n in dirs + files:
                p = os.path.join(root, n)
                assert os.lstat(p).st_uid == pw.pw_uid, "%s belongs to uid %d" % (
                    p, os.lstat(p).st_uid)
        # The workers run as the user.
        out = subprocess.run(["ps", "-o", "user=,pid=", "--ppid", str(srv.pid)],
                             capture_output=True, text=True).stdout.split()
        assert out and all(u == USER for u in out[0::2]), out
        # A write to the store through the admin API.
        r = evctl(cfg, "--json", "app", "create")
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        app = json.loads(r.stdout)
        r = evctl(cfg, "--json", "app", "list")
        assert r.returncode == 0 and app["appId"] in r.stdout, (r.stdout, r.stderr)
        # The key stayed root's, and TLS is served.
        assert os.stat(cert.key).st_uid == 0 and os.stat(cert.key).st_mode & 0o077 == 0
        ctx = ssl.create_default_context(cafile=ca.cert)
        with socket.create_connection(("127.0.0.1", srv.port("tls")), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                rs, _ = evstest.recv_responses(t, 1, allow_close=True)
                assert rs and rs[0].status == 404, rs


def test_root_owned_store_of_an_earlier_start_is_given_to_the_user():
    pw = need_root()
    dir = public_tmpdir()
    state = os.path.join(dir, "state")
    cfg = evstest.write_config(dir, server={"user": USER, "state_dir": state}, plugins={})
    # What an earlier version left: the store created by root, 0600.
    with evstest.Server(evstest.write_config(evstest.tmpdir(), server={"state_dir": state},
                                             plugins={})).start():
        pass
    db = os.path.join(state, "evserver.db")
    assert os.stat(db).st_uid == 0
    with evstest.Server(cfg).start() as srv:
        assert os.stat(db).st_uid == pw.pw_uid
        assert any(r.get("id") == "EVS-1623" for r in srv.log_records()), srv.log()


def test_check_fails_when_the_user_cannot_use_the_state_dir():
    need_root()
    dir = public_tmpdir()
    closed = os.path.join(dir, "closed")
    os.makedirs(os.path.join(closed, "state"))
    os.chmod(closed, 0o700)  # root's: nobody cannot reach state/ inside
    state = os.path.join(closed, "state")
    cfg = evstest.write_config(dir, server={"user": USER, "state_dir": state}, plugins={})
    r = subprocess.run([evstest.build_path("evserver"), "-t", "-c", cfg.path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert state in r.stderr and "'%s'" % USER in r.stderr, r.stderr
    # A state directory that does not exist yet, under a parent the user cannot reach.
    cfg = evstest.write_config(dir, server={"user": USER,
                                            "state_dir": os.path.join(closed, "new", "state")},
                               plugins={})
    r = subprocess.run([evstest.build_path("evserver"), "-t", "-c", cfg.path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and closed in r.stderr and USER in r.stderr, r.stderr
    # Once reachable, -t passes.
    os.chmod(closed, 0o755)
    os.chmod(state, 0o777)
    cfg = evstest.write_config(dir, server={"user": USER, "state_dir": state}, plugins={})
    r = subprocess.run([evstest.build_path("evserver"), "-t", "-c", cfg.path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # And the server refuses to start (rather than serve 500s) on a closed one.
    os.chmod(closed, 0o700)
    srv = evstest.Server(cfg)
    try:
        srv.start(timeout=10)
        started = True
    except AssertionError:
        started = False
    finally:
        if srv.running():
            srv.stop()
    assert not started
    assert state in srv.log() and USER in srv.log(), srv.log()


evstest.main(globals())
