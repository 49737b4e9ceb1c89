"""The HTTP request-smuggling corpus through a relay, byte for byte.

tests/data/http-desync (aws/http-desync-guardian's cases; see its SOURCE.md) holds
requests classified Compliant, Acceptable, Ambiguous or Severe. Each is turned into raw bytes
exactly as tests/unit/desync_to_raw.py does for the parser's unit test (that module is imported,
so both tests send the same bytes), given a body that matches its framing, followed by a
pipelined follow-up request, and sent over a raw socket to a listener whose relay forwards to a
RawUpstream, which keeps every byte it receives and reads requests strictly. Pooling of
upstream connections is off, so each relayed request arrives on its own upstream connection and
the bytes of one case can be told from the next.

What must hold (SOURCE.md):
- Severe: a clean 400 (the documented error shape), the client connection closed, and not one
  byte at the upstream.
- Ambiguous: rejected the same way, or forwarded in a form the upstream reads exactly as
  evserver did (one request, one framing header or none, the same body, nothing left over).
- Compliant and Acceptable: forwarded and answered; except the cases evserver refuses on purpose
  (the justified list in tests/unit/test_http_desync_corpus.c, read from that file), which must
  get a clean 400, 501 or 505, and nothing else may.
- The follow-up request on a connection that stayed open is answered next: the connection is
  still in step after the case.
Ambiguous requests that were forwarded must also have their client connection closed after the
response (Connection: close); that is a separate test,
test_desync_ambiguous_forwarded_then_connection_closed.

Run with Debian's /usr/bin/python3: the corpus is YAML and needs python3-yaml.
"""

import os
import re
import socket
import time

import evstest
from evstest import RawUpstream, Skip, connect, recv_responses, start_server, wait_closed

UNIT_DIR = os.path.join(evstest.SOURCE_DIR, "tests", "unit")
RELAY_HOST = "localhost"  # the Host desync_to_raw.py gives cases that have none
FOLLOW_UP = b"GET /follow-up HTTP/1.1\r\nHost: localhost\r\n\r\n"
# Bodies larger than this are sent only once evserver has answered (a refusal comes at once,
# STAGE_WAIT at most) or passed the head on, so a refusal's response is read before megabytes of
# unread body could turn evserver's close into a reset. (The relay reads a body whole before it
# passes anything on, so the wait ends without either for an accepted request.) Only more-compliant-tests:7 (Content-Length 4000000) is affected; a large body sent
# in one write with its head is test_20_http_engine.py's
# test_large_body_sent_with_its_head_in_one_write.
STAGE_BODY_OVER = 16 * 1024
STAGE_WAIT = 0.5
# RFC 9112 §6.1: a server that does not understand a transfer coding SHOULD answer 501. The
# corpus calls "Transfer-Encoding: xchunked" Severe; evserver's 501 refuses it just as firmly.
SEVERE_STATUS_EXCEPTIONS = {"severe:6": 501}
REJECT_STATUSES = (400, 501, 505)


def expected_rejections():
    """The ids test_http_desync_corpus.c lists as Compliant/Acceptable cases rejected on
    purpose."""
    with open(os.path.join(UNIT_DIR, "test_http_desync_corpus.c")) as f:
        src = f.read()
    m = re.search(r"expected_rejections\[\] = \{(.*?)\n\};", src, re.S)
    assert m, "expected_rejections[] not found in test_http_desync_corpus.c"
    ids = re.findall(r'\{"([a-z-]+:\d+)",\s*"', m.group(1))
    assert len(ids) > 10, ids
    return set(ids)


def framing_of(head):
    """How a strict reader frames the body of this head: ("chunked", None), ("length", n) or
    (None, None). Only exact field names count (what RFC 9112 reads); lookalikes do not."""
    te, cl = [], []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if name.lower() == b"transfer-encoding":
            te.append(value.strip(b" \t"))
        elif name.lower() == b"content-length":
            cl.append(value.strip(b" \t"))
    if te:
        return "chunked", None
    if cl and cl[0].isdigit():
        return "length", int(cl[0])
    return None, None


def body_for(head):
    kind, n = framing_of(head)
    if kind == "chunked":
        return b"0\r\n\r\n"
    if kind == "length" and n <= 8 * 1024 * 1024:
        return b"x" * n
    return b""  # absurd lengths: evserver must refuse these before any body matters


def exchange(port, head, body, rec, timeout=5.0):
    """Sends head + body + FOLLOW_UP; returns (responses, closed, bytes left over). Large
    bodies wait until evserver has either answered or passed the head on."""
    s = connect(port, timeout=timeout)
    try:
        staged = len(body) > STAGE_BODY_OVER
        try:
            if staged:
                n0 = len(rec.conns)
                s.sendall(head)
                deadline = time.monotonic() + STAGE_WAIT
                while time.monotonic() < deadline:
                    if any(b"\r\n\r\n" in bytes(c.data) for c in rec.conns[n0:]):
                        break
                    s.settimeout(0.02)
                    try:
                        if s.recv(1, socket.MSG_PEEK):
                            break  # evserver answered already
                    except socket.timeout:
                        pass
                s.settimeout(timeout)
                s.sendall(body + FOLLOW_UP)
            else:
                s.sendall(head + body + FOLLOW_UP)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed early: read what it said
        rs, rest = recv_responses(s, 1, timeout=timeout)
        first = rs[0]
        if first.status in REJECT_STATUSES or first.header("Connection", "").lower() == "close":
            closed, extra = wait_closed(s, 3)
            return [first], closed, rest + extra
        # Forwarded: the follow-up is answered next, or the connection ends.
        more, rest = recv_responses(s, 1, timeout=timeout, data=rest, allow_close=True)
        return [first] + more, not more, rest
    finally:
        s.close()


def error_shape_problems(r):
    """What is wrong with r as a documented error response (empty list if nothing)."""
    probs = []
    # A Content-Length that is not a number has its own documented code.
    code = r.header("X-Evervault-Error-Code")
    if code not in ("bad-request", "content-length-required"):
        probs.append("X-Evervault-Error-Code %r" % code)
    try:
        j = r.json()
    except ValueError:
        return probs + ["body is not JSON: %r" % r.body[:200]]
    if sorted(j) != ["code", "detail", "evervault-error-code", "message", "status", "title"]:
        probs.append("JSON members %r" % sorted(j))
    elif j["status"] != r.status or j["code"] != code or j["evervault-error-code"] != code:
        probs.append("JSON status/code %r/%r" % (j["status"], j["code"]))
    if (r.header("Connection") or "").lower() != "close":
        probs.append("no Connection: close")
    return probs


def start_corpus_server():
    rec = RawUpstream()
    srv = start_server(relays={RELAY_HOST: {"destinationDomain": rec.url}},
                       upstream={"pool_max_idle": 0, "response_timeout": "5s"},
                       limits={"header_timeout": "3s", "body_timeout": "3s"})
    return rec, srv


def run_case(srv, rec, cid, tier, head):
    """Runs one case; returns (outcome, problems, info). outcome: "rejected" or "forwarded"."""
    body = body_for(head)
    n0 = len(rec.conns)
    rs, closed, extra = exchange(srv.port(), head, body, rec)
    first = rs[0]
    probs = []
    # Each relayed request has its own upstream connection (pooling is off): once they are all
    # closed every byte evserver sent is in the recorder.
    evstest.wait_for(lambda: all(c.closed for c in rec.conns[n0:]), timeout=5,
                     what="upstream connections of %s to close" % cid)
    conns = rec.conns[n0:]
    up_bytes = sum(len(c.data) for c in conns)
    reqs = [r for c in conns for r in c.requests]
    if first.status in REJECT_STATUSES:
        probs += error_shape_problems(first)
        if not closed:
            probs.append("connection left open after %d" % first.status)
        if up_bytes:
            probs.append("%d bytes reached the upstream: %r" % (up_bytes, b"".join(
                bytes(c.data) for c in conns)[:300]))
        return "rejected", first.status, probs
    if first.status != 200 or first.header("X-Raw-Upstream") != "1":
        return "other", first.status, ["unexpected answer %d %r" % (first.status, first.raw[:300])]
    for c in conns:
        if c.error:
            probs.append("upstream could not read what evserver sent: %s; bytes %r"
                         % (c.error, bytes(c.data)[:400]))
        if c.leftover:
            probs.append("bytes after the request at the upstream: %r" % c.leftover[:200])
    if probs:
        return "forwarded", 200, probs
    answered = len(rs)
    if len(reqs) != answered:
        probs.append("upstream read %d requests, client got %d answers" % (len(reqs), answered))
        return "forwarded", 200, probs
    q = reqs[0]
    line = head.split(b"\r\n", 1)[0].split(b" ")
    if (q.method.encode("latin-1"), q.target.encode("latin-1")) != (line[0], line[1]):
        probs.append("request line changed: %s %s" % (q.method, q.target))
    kind, n = framing_of(head)
    want_body = b"" if kind == "chunked" else body
    if q.body != want_body:
        probs.append("upstream body %r, sent %r" % (q.body[:60], want_body[:60]))
    # The relay reads a body whole before forwarding it (to check it for encrypted data), so a
    # chunked body may arrive with its decoded length instead.
    if kind == "chunked" and q.framing != "chunked" and not (
            q.framing == "length" and q.header("Content-Length") == str(len(want_body))):
        probs.append("chunked body forwarded with framing %s" % q.framing)
    if kind == "length" and (q.framing != "length" or q.header("Content-Length") != str(n)):
        probs.append("Content-Length %s body forwarded as %s %r" % (
            n, q.framing, q.header_all("Content-Length")))
    if kind is None and q.framing is not None:
        probs.append("bodiless request forwarded with framing %s" % q.framing)
    if len(q.header_all("Host")) != 1:
        probs.append("Host fields at the upstream: %r" % q.header_all("Host"))
    if answered == 2:
        f = reqs[1]
        if (f.method, f.target, f.body) != ("GET", "/follow-up", b"") or rs[1].status != 200:
            probs.append("follow-up out of step: %r / %r" % (f, rs[1]))
    elif not closed:
        probs.append("follow-up neither answered nor the connection closed")
    return "forwarded", 200, probs


def lookalike_fields(head):
    """Field names that are not framing fields for a strict reader but resemble one."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, _ = line.partition(b":")
        norm = re.sub(rb"[^a-z]", b"", name.lower())
        if sep and norm in (b"transferencoding", b"contentlength") and name.lower() not in (
                b"transfer-encoding", b"content-length"):
            out.append(name)
    return out


def test_desync_corpus_through_relay():
    corpus = evstest.desync_corpus()
    listed = expected_rejections()
    rec, srv = start_corpus_server()
    tiers = ["Compliant", "Acceptable", "Ambiguous", "Severe"]
    tally = {t: {"forwarded": 0, "rejected": 0} for t in tiers}
    failures, ambiguous_forwarded = [], []
    seen_listed = set()
    for cid, tier, name, head, _ in corpus:
        assert tier in tiers, (cid, tier)
        outcome, status, probs = run_case(srv, rec, cid, tier, head)
        if outcome in tally[tier]:
            tally[tier][outcome] += 1
        if cid in listed:
            seen_listed.add(cid)
            if tier not in ("Compliant", "Acceptable"):
                probs.append("listed as an expected rejection but its tier is %s" % tier)
            if outcome != "rejected":
                probs.append("listed as rejected on purpose, but %s (%d)" % (outcome, status))
        elif tier == "Severe":
            want = SEVERE_STATUS_EXCEPTIONS.get(cid, 400)
            if outcome != "rejected" or status != want:
                probs.append("Severe must be refused with %d; got %s %d" % (want, outcome, status))
        elif tier in ("Compliant", "Acceptable"):
            if outcome != "forwarded":
                probs.append("must be forwarded; got %s %d" % (outcome, status))
        else:
            if outcome not in ("forwarded", "rejected"):
                probs.append("Ambiguous: neither forwarded nor cleanly rejected (%d)" % status)
            if outcome == "forwarded":
                ambiguous_forwarded.append((cid, name, lookalike_fields(head)))
        if probs:
            failures.append("%s %s (%s): %s" % (tier, cid, name, "; ".join(probs)))
        # Every case leaves evserver able to serve the next one.
        assert srv.running(), "evserver exited during %s" % cid
    print("desync corpus through the relay (%d cases):" % len(corpus))
    for t in tiers:
        print("  %-10s %3d forwarded, %3d rejected" % (t, tally[t]["forwarded"],
                                                       tally[t]["rejected"]))
    print("  expected rejections used: %d of %d listed" % (len(seen_listed), len(listed)))
    for cid, name, look in ambiguous_forwarded:
        print("  Ambiguous forwarded: %-26s %s%s" % (cid, name, "  (lookalike framing field %s "
              "passed on unchanged)" % look if look else ""))
    assert not failures, "%d case(s) failed:\n  %s" % (len(failures), "\n  ".join(failures))
    assert seen_listed == listed, "listed ids not in the corpus: %s" % sorted(listed - seen_listed)
    assert tally["Severe"]["forwarded"] == 0


def test_desync_ambiguous_forwarded_then_connection_closed():
    """Ambiguous requests evserver forwards (a body on GET/HEAD, framing-lookalike field names)
    are answered with Connection: close and the client connection is then closed (SOURCE.md):
    nothing more is read from a connection whose framing a front end may see differently."""
    corpus = evstest.desync_corpus()
    rec, srv = start_corpus_server()
    kept_open = []
    for cid, tier, name, head, _ in corpus:
        if tier != "Ambiguous":
            continue
        outcome, status, probs = run_case(srv, rec, cid, tier, head)
        assert not probs, (cid, probs)
        if outcome != "forwarded":
            continue
        s = connect(srv.port())
        try:
            s.sendall(head + body_for(head))
            rs, _ = recv_responses(s, 1)
            closed, _ = wait_closed(s, 2)
        finally:
            s.close()
        if not closed or (rs[0].header("Connection") or "").lower() != "close":
            kept_open.append("%s (%s)" % (cid, name))
    assert not kept_open, "forwarded Ambiguous requests whose connection stayed open:\n  %s" % (
        "\n  ".join(kept_open))


evstest.main(globals())
