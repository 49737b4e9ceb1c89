"""TLS session resumption (core/tls_tickets.c, docs/configuration.md `session_tickets`,
`tls_ticket_rotation`): a client that comes back with the ticket of an earlier connection skips
the full handshake, on TLS 1.3 and 1.2, whichever worker accepts it, across a reload; a listener
with session_tickets = off never resumes; a ticket stops resuming once its key has rotated out.

Driven by Python's ssl module (the client keeps the session and says whether it was reused)
against a relay on a TLS listener; every request's log line names the worker that served it.
"""

import signal
import socket
import ssl

import evstest
from evstest import Upstream

HOST = "app.test"


class Node:
    def __init__(self, listener=None, server=None, workers=2):
        self.ca = evstest.make_ca()
        self.cert = evstest.make_cert(self.ca, [HOST])
        self.up = Upstream(body=b"resumed")
        tls = {"tls": True, "certificate": self.cert.cert, "key": self.cert.key}
        tls.update(listener or {})
        srv = {"workers": workers}
        srv.update(server or {})
        self.srv = evstest.Server(evstest.write_config(
            server=srv, listeners={"http": {}, "https": tls},
            relays={HOST: {"destinationDomain": self.up.url}}), notify=True).start()
        self.port = self.srv.port("https")

    def context(self, version=None):
        ctx = ssl.create_default_context(cafile=self.ca.cert)
        if version:
            ctx.minimum_version = ctx.maximum_version = version
        return ctx

    def get(self, ctx, session=None, path="/r"):
        """One request on a new connection; returns (reused, session for the next one)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=HOST, session=session) as s:
                s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                           % (path, HOST)).encode())
                data = b""
                while True:  # reading to the end also takes in the TLS 1.3 ticket
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 "), data[:200]
                assert data.endswith(b"resumed"), data[-200:]
                return s.session_reused, s.session

    def served_by(self, path):
        """The pid of the worker whose log line has this path."""
        def find():
            for r in self.srv.log_records():  # request lines: "GET /path 200 ..."
                if r.get("id") == "EVS-1100" and r.get("msg", "").startswith("GET %s " % path):
                    return r.get("pid")
            return None
        evstest.wait_for(lambda: find() is not None, what="the log line of %s" % path)
        return find()


def ready_count(srv):
    return sum("READY=1" in m for _, m in srv.notifications())


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_tls13_and_tls12_resume():
    n = Node()
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = n.context(version)
        reused, sess = n.get(ctx)
        assert not reused, "the first connection cannot resume"
        assert sess is not None and sess.has_ticket, "%s: no ticket issued" % version
        for i in range(5):
            offered = sess
            reused, sess = n.get(ctx, sess)
            assert reused, "%s: connection %d made a full handshake" % (version, i + 2)
            if version == ssl.TLSVersion.TLSv1_3:
                # A fresh ticket on every resumption (RFC 8446 C.4): OpenSSL clients never
                # offer a used ticket again, so without one every other connection was full.
                assert sess.id != offered.id, "connection %d got no new ticket" % (i + 2)


def test_a_ticket_resumes_on_the_next_generation_of_workers():
    # Tickets sealed by one worker open on any other: a reload replaces every worker, so the
    # connection after it lands on a process that never saw the ticket being made.
    n = Node()
    ctx = n.context()
    _, sess = n.get(ctx, path="/before")
    before = n.served_by("/before")
    n.srv.signal(signal.SIGHUP)
    evstest.wait_for(lambda: ready_count(n.srv) >= 2, timeout=15, what="READY=1 after reload")
    evstest.wait_for(lambda: not pid_alive(before), timeout=30,
                     what="worker %d of the old generation to exit" % before)
    reused, _ = n.get(ctx, sess, path="/after")
    after = n.served_by("/after")
    assert after != before, (before, after)
    assert reused, "a ticket from worker %d did not resume on worker %d" % (before, after)


def test_session_tickets_off_never_resumes():
    n = Node(listener={"session_tickets": False})
    ctx = n.context()
    reused, sess = n.get(ctx)
    assert sess is None or not sess.has_ticket, "a ticket was issued with session_tickets = off"
    for _ in range(3):
        reused, sess = n.get(ctx, sess)
        assert not reused


def test_a_ticket_expires_with_its_key():
    # With a 1 s rotation the key that sealed a ticket is gone after at most 3 rotations (plus
    # the master's 1 s tick); the ticket then gets a full handshake, and a fresh one resumes.
    n = Node(server={"tls_ticket_rotation": "1s"}, workers=1)
    ctx = n.context()

    def fresh_resumes():
        # A ticket lives two to three rotations (2-3 s here): one used at once resumes, unless
        # the machine stalled that long between the two connections; then the next pair does.
        _, sess = n.get(ctx)
        return sess if n.get(ctx, sess)[0] else None
    old = evstest.wait_for(fresh_resumes, timeout=20, what="a fresh ticket to resume")
    evstest.wait_for(lambda: not n.get(ctx, old)[0], timeout=20, interval=0.5,
                     what="the old ticket to stop resuming")
    evstest.wait_for(fresh_resumes, timeout=20, what="a fresh ticket to resume after rotations")


if __name__ == "__main__":
    evstest.main(globals())
