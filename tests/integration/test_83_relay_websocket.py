"""WebSockets through the Inbound Relay, against independent implementations on both ends:
Python's `websockets` (Debian's python3-websockets) and Node's `ws` (npm, in
tests/integration/sdk) as clients and as destinations, and libwebsockets' own test server
(Debian's libwebsockets-test-server) as a destination. Selected JSON and XML fields of client
messages arrive at the destination as ev: strings that POST /decrypt opens; ev: strings in the
destination's messages reach the client as plaintext; an ev: string the relay will not encrypt
closes the client with 1008. Raw sockets play the misbehaving side (malformed frames, a
destination that dies mid-message, a client that never reads): no implementation sends those.

Run with Debian's /usr/bin/python3 (python3-websockets); needs the real evserver-enclave."""

import asyncio
import base64
import hashlib
import http
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request

import evstest

EV = re.compile(r"ev:[A-Za-z0-9+/=_:-]+:\$")
SDK_DIR = os.path.join(evstest.SOURCE_DIR, "tests", "integration", "sdk")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

try:
    import websockets
except ImportError:  # the version-managed python3 has no Debian modules
    websockets = None


def need_websockets():
    if websockets is None:
        raise evstest.Skip("python3-websockets is missing: run with Debian's /usr/bin/python3")


# ---- a Python `websockets` destination, in a thread of its own -------------------------------

class PyDest:
    """websockets.serve on a kernel-assigned port. Echoes every message back (recording it),
    /refuse answers 403, /push sends `push` messages first, /flood sends until stopped.
    ssl: an SSLContext to serve wss."""

    def __init__(self, ssl=None):
        self.ssl = ssl
        need_websockets()
        self.messages = []
        self.heads = []
        self.push = []
        self.flooding = True
        self.sent = 0
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(10)
        evstest.defer(self.stop)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def process_request(path, headers):
            self.heads.append((path, dict(headers.raw_items())))
            if path.startswith("/refuse"):
                return (http.HTTPStatus.FORBIDDEN, [("Content-Type", "application/json")],
                        b'{"refused":true}')
            return None

        async def handler(ws, path):
            try:
                if path.startswith("/push"):
                    for m in self.push:
                        await ws.send(m)
                if path.startswith("/flood"):
                    chunk = json.dumps({"n": "x" * 60000})
                    while self.flooding:
                        await ws.send(chunk)
                        self.sent += 1
                    return
                async for m in ws:
                    self.messages.append(m)
                    await ws.send(m)
            except websockets.ConnectionClosed:
                pass

        async def main():
            self.server = await websockets.serve(
                handler, "127.0.0.1", 0, process_request=process_request, max_size=None,
                subprotocols=["chat.v1", "chat.v2"], ssl=self.ssl)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(main())
        self.loop.run_forever()

    def stop(self):
        self.flooding = False
        self.loop.call_soon_threadsafe(self.server.close)


# ---- raw sockets: the misbehaving peers -------------------------------------------------------

def frame(op, payload, mask=True, fin=True, rsv=0, length=None):
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | op])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def read_frames(sock, timeout=10.0):
    """Frames until a close frame or EOF: [(opcode, payload)]."""
    sock.settimeout(timeout)
    buf = b""
    out = []
    while True:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                o = 2
                if n == 126 and len(buf) >= 4:
                    n, o = struct.unpack(">H", buf[2:4])[0], 4
                elif n == 127 and len(buf) >= 10:
                    n, o = struct.unpack(">Q", buf[2:10])[0], 10
                elif n >= 126:
                    break
                if buf[1] & 0x80:
                    o += 4
                if len(buf) >= o + n:
                    out.append((buf[0] & 0x0F, buf[o:o + n]))
                    buf = buf[o + n:]
                    if out[-1][0] == 8:
                        return out
                    continue
            break
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return out
        if not d:
            return out
        buf += d


def read_until(sock, done, timeout=10.0):
    """Frames until done(frames), a close or EOF; on a timeout, what came: [(opcode, payload)]."""
    sock.settimeout(timeout)
    buf, out = b"", []
    while not done(out) and not any(op == 8 for op, _ in out):
        if len(buf) >= 4 or (len(buf) >= 2 and buf[1] & 0x7F < 126):
            ln, o = buf[1] & 0x7F, 2
            if ln == 126:
                ln, o = struct.unpack(">H", buf[2:4])[0], 4
            if len(buf) >= o + ln:
                out.append((buf[0] & 0x0F, buf[o:o + ln]))
                buf = buf[o + ln:]
                continue
        try:
            d = sock.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        buf += d
    return out


def data_of(frames):
    return [(op, p) for op, p in frames if op in (1, 2)]


def close_code(frames):
    for op, p in frames:
        if op == 8:
            return struct.unpack(">H", p[:2])[0] if len(p) >= 2 else 1005
    return None


def raw_client(srv, host, path="/chat"):
    s = socket.create_connection(("127.0.0.1", srv.port()), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
               % (path, host, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(1)
        assert d, head
        head += d
    assert head.startswith(b"HTTP/1.1 101"), head
    want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    assert b"Sec-WebSocket-Accept: " + want in head, head
    return s


class RawDest:
    """A TCP destination that completes the handshake, then sends `after` (bytes) and closes
    (close=True) or keeps the connection."""

    def __init__(self, after=b"", close=True):
        # after: bytes, or a list of chunks written apart (so they reach the relay in separate
        # reads; paced, not a synchronisation: any split must give the same result)
        self.after, self.close = after, close
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._run, daemon=True).start()
        evstest.defer(self.sock.close)

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(4096)
                if not d:
                    break
                head += d
            key = re.search(rb"Sec-WebSocket-Key: (\S+)", head, re.I).group(1)
            acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
            chunks = self.after if isinstance(self.after, list) else [self.after]
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n" +
                      chunks[0])
            for chunk in chunks[1:]:
                time.sleep(0.1)
                c.sendall(chunk)
            if self.close:
                time.sleep(0.2)  # paces the close after the bytes: not a synchronisation
                c.close()


# ---- the server -------------------------------------------------------------------------------

def evctl_json(srv, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def setup(destinations, relay_options=None, workers=None, listeners=None, relay_extra=None):
    """A server with an app and one relay per destination {"name.example": "http://..."}, each
    selecting $.ssn, $.card.number and (XML) $.doc.ssn on GET /chat (relay_extra: more members
    for every relay)."""
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    creds = evstest.tmpdir()
    server = {"workers": workers} if workers else None
    cfg = evstest.write_config(listeners=dict({"http": {}, "api": {}}, **(listeners or {})),
                               server=server,
                               plugins={"enclave": {"enclave_binary": enclave,
                                                    "credentials_dir": creds},
                                        "relay-inbound": dict(relay_options or {})})
    srv = evstest.Server(cfg).start()
    app = evctl_json(srv, "app", "create")
    key = evctl_json(srv, "key", "create", app["appId"], "--permissions", "api:decrypt")
    relays = {}
    for name, dest in destinations.items():
        relays[name] = {"destinationDomain": dest, "appId": app["appId"],
                        "fieldsToEncrypt": [{"route": "/chat", "method": "GET",
                                             "fields": ["$.ssn", "$.card.number", "$.doc.ssn"]}]}
        relays[name].update(relay_extra or {})
    with open(cfg.relay_config, "w") as f:
        json.dump(relays, f)
    evstest.wait_for(lambda: all(n in srv.log() for n in ["%d relay(s)" % len(relays)]),
                     what="relay-config applied")
    return dict(srv=srv, app=app, key=key)


def decrypt(c, value):
    auth = base64.b64encode(("%s:%s" % (c["app"]["appId"], c["key"]["apiKey"])).encode()).decode()
    req = urllib.request.Request(c["srv"].url("/decrypt", "api"),
                                 data=json.dumps({"data": value}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Basic " + auth})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["data"]


def py_connect(srv, host, path="/chat", **kw):
    return websockets.connect("ws://%s:%d%s" % (host, srv.port(), path), host="127.0.0.1",
                              port=srv.port(), max_size=None, **kw)


# ---- tests ------------------------------------------------------------------------------------

def test_python_both_ends():
    """Python client, Python destination: encrypted fields at the destination (JSON, XML, a
    fragmented message), plaintext back at the client, binary and text pass-through,
    subprotocols end to end, compression never negotiated."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})
    srv = c["srv"]
    doc = {"name": "Claude", "ssn": "123-12-1234", "card": {"number": "4242424242424242"}}
    xml = "<doc><name>Claude</name><ssn>123-12-1234</ssn></doc>"

    async def run():
        async with py_connect(srv, "py.example", subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            assert ws.extensions == [], ws.extensions
            await ws.send(json.dumps(doc))
            back = json.loads(await ws.recv())
            await ws.send(xml)
            back_xml = await ws.recv()
            # fragmented: three frames, one message
            await ws.send(iter(['{"ssn":', '"987-65-', '4321","n":1}']))
            back_frag = json.loads(await ws.recv())
            await ws.send(b"\x00\x01binary")
            back_bin = await ws.recv()
            await ws.send("plain text, not JSON")
            back_txt = await ws.recv()
            # JSON after JSON: the relay reuses one rewriter per direction, reset between
            # messages; each must be selected as if it came first
            back_more = []
            for m in more:
                await ws.send(json.dumps(m))
                back_more.append(json.loads(await ws.recv()))
            # XML after JSON (a new rewriter), then XML after XML (reset)
            for m in more_xml:
                await ws.send(m)
                back_more.append(await ws.recv())
            pong = await ws.ping(b"are you there")  # answered by the destination, end to end
            await asyncio.wait_for(pong, 10)
            return back, back_xml, back_frag, back_bin, back_txt, back_more

    more = [{"ssn": "111-11-1111", "card": {"number": "5555555555554444", "ssn": "not"}},
            {"deep": [[{"ssn": "no"}]], "ssn": "222-22-2222"},
            {"card": {"number": 4000056655665556}}]
    more_xml = ["<doc><ssn>333-33-3333</ssn><name>x</name></doc>",
                "<doc><inner><ssn>no</ssn></inner><ssn>444-44-4444</ssn></doc>"]
    back, back_xml, back_frag, back_bin, back_txt, back_more = asyncio.run(run())
    assert back_more == more + more_xml, back_more
    # the client gets its own plaintext back: the destination echoed ev: strings, decrypted
    assert back == doc, back
    assert back_xml == xml, back_xml
    assert back_frag == {"ssn": "987-65-4321", "n": 1}, back_frag
    assert back_bin == b"\x00\x01binary" and back_txt == "plain text, not JSON"
    at_dest = dest.messages
    first = json.loads(at_dest[0])
    assert first["name"] == "Claude" and EV.fullmatch(first["ssn"]), first
    assert EV.fullmatch(first["card"]["number"]), first
    assert decrypt(c, first["ssn"]) == "123-12-1234"
    assert decrypt(c, first["card"]["number"]) in ("4242424242424242", 4242424242424242)
    m = re.search(r"<ssn>(ev:[^<]+)</ssn>", at_dest[1])
    assert m and "123-12-1234" not in at_dest[1], at_dest[1]
    assert decrypt(c, m.group(1)) == "123-12-1234"
    frag = json.loads(at_dest[2])
    assert EV.fullmatch(frag["ssn"]) and decrypt(c, frag["ssn"]) == "987-65-4321"
    assert at_dest[3:5] == [b"\x00\x01binary", "plain text, not JSON"]
    m1, m2, m3 = (json.loads(x) for x in at_dest[5:8])
    assert EV.fullmatch(m1["ssn"]) and EV.fullmatch(m1["card"]["number"]), m1
    assert m1["card"]["ssn"] == "not" and decrypt(c, m1["ssn"]) == "111-11-1111", m1
    assert m2["deep"] == [[{"ssn": "no"}]] and decrypt(c, m2["ssn"]) == "222-22-2222", m2
    assert decrypt(c, m3["card"]["number"]) in (4000056655665556, "4000056655665556"), m3
    x1, x2 = at_dest[8:10]
    m = re.fullmatch(r"<doc><ssn>(ev:[^<]+)</ssn><name>x</name></doc>", x1)
    assert m and decrypt(c, m.group(1)) == "333-33-3333", x1
    m = re.fullmatch(r"<doc><inner><ssn>no</ssn></inner><ssn>(ev:[^<]+)</ssn></doc>", x2)
    assert m and decrypt(c, m.group(1)) == "444-44-4444", x2
    # the destination saw the relay's handshake: no compression offered, the subprotocol passed
    path, head = dest.heads[-1]
    lower = {k.lower(): v for k, v in head.items()}
    assert "sec-websocket-extensions" not in lower, head
    assert lower.get("sec-websocket-protocol") == "chat.v1", head
    # the transaction log: the connection and its message counts, never contents
    evstest.wait_for(lambda: '"websocket"' in json.dumps(evctl_json(srv, "activity")),
                     what="transaction recorded")
    act = json.dumps(evctl_json(srv, "activity"))
    assert '"messagesIn": 10' in act or '"messagesIn":10' in act, act
    assert "123-12-1234" not in act and "123-12-1234" not in srv.log()


def test_wss_both_legs():
    """wss:// to a TLS listener of evserver, and wss to the destination, whose certificate the
    relay verifies (caFile); one the relay cannot verify fails the upgrade with 502."""
    import ssl as ssl_mod
    need_websockets()
    ca = evstest.make_ca()
    leaf = evstest.make_cert(ca, names=("localhost", "127.0.0.1", "ws.example"))
    sctx = ssl_mod.SSLContext(ssl_mod.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(leaf.cert, leaf.key)
    dest = PyDest(ssl=sctx)
    other = evstest.make_ca(name="untrusted CA")
    c = setup({"wss.example": "https://127.0.0.1:%d" % dest.port},
              listeners={"https": {"tls": True, "certificate": leaf.cert, "key": leaf.key}},
              relay_extra={"caFile": ca.cert})
    srv = c["srv"]
    cctx = ssl_mod.create_default_context(cafile=ca.cert)
    cctx.check_hostname = False

    async def run():
        async with websockets.connect("wss://wss.example:%d/chat" % srv.port("https"),
                                      host="127.0.0.1", port=srv.port("https"), ssl=cctx,
                                      server_hostname="ws.example", max_size=None) as ws:
            await ws.send(json.dumps({"ssn": "123-12-1234"}))
            return json.loads(await ws.recv())
    assert asyncio.run(run()) == {"ssn": "123-12-1234"}
    assert EV.fullmatch(json.loads(dest.messages[-1])["ssn"]), dest.messages
    # the destination's certificate is not from the relay's caFile: no WebSocket
    relays = {"wss.example": {"destinationDomain": "https://127.0.0.1:%d" % dest.port,
                              "appId": c["app"]["appId"], "caFile": other.cert}}
    with open(srv.config.relay_config, "w") as f:
        json.dump(relays, f)

    async def refused():
        try:
            async with websockets.connect("wss://wss.example:%d/chat" % srv.port("https"),
                                          host="127.0.0.1", port=srv.port("https"), ssl=cctx,
                                          server_hostname="ws.example"):
                return None
        except websockets.InvalidStatusCode as e:
            return e.status_code
    evstest.wait_for(lambda: asyncio.run(refused()) == 502, what="verification refused")


def test_mtls_destination():
    """An mTLS relay: the WebSocket needs the api-key (relay:inbound-mtls), which stops at the
    relay; the destination, requiring a client certificate, sees the relay's."""
    import ssl as ssl_mod
    need_websockets()
    ca = evstest.make_ca(name="upstream CA")
    server = evstest.make_cert(ca, ["localhost", "127.0.0.1"])
    client = evstest.make_cert(ca, ["relay-client"], client=True)
    sctx = ssl_mod.SSLContext(ssl_mod.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server.cert, server.key)
    sctx.verify_mode = ssl_mod.CERT_REQUIRED
    sctx.load_verify_locations(ca.cert)
    dest = PyDest(ssl=sctx)
    c = setup({"mtls.example": "https://127.0.0.1:%d" % dest.port},
              relay_extra={"caFile": ca.cert,
                           "mtls": {"certificate": client.cert, "key": client.key}})
    srv = c["srv"]
    key = evctl_json(srv, "key", "create", c["app"]["appId"], "--permissions",
                     "relay:inbound-mtls")["apiKey"]

    async def run(headers):
        try:
            async with py_connect(srv, "mtls.example", extra_headers=headers) as ws:
                await ws.send(json.dumps({"ssn": "1"}))
                return json.loads(await ws.recv())
        except websockets.InvalidStatusCode as e:
            return e.status_code
    assert asyncio.run(run({})) == 401
    assert asyncio.run(run({"api-key": key})) == {"ssn": "1"}
    path, head = dest.heads[-1]
    assert "api-key" not in {k.lower() for k in head}, head
    assert EV.fullmatch(json.loads(dest.messages[-1])["ssn"]), dest.messages


def test_limits_idle_timeout_and_metrics():
    """websocket_max_connections: the next upgrade gets 503; websocket_idle_timeout closes an
    idle WebSocket with 1001; the counters reach /metrics."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port},
              relay_options={"websocket_max_connections": 1, "websocket_idle_timeout": "1s"})
    srv = c["srv"]
    s = raw_client(srv, "py.example")
    s2 = socket.create_connection(("127.0.0.1", srv.port()), timeout=10)
    s2.sendall(b"GET /chat HTTP/1.1\r\nHost: py.example\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    resp = evstest.recv_responses(s2, 1)[0][0]
    assert resp.status == 503, resp
    frames = read_frames(s, timeout=10)
    assert close_code(frames) == 1001 and frames[-1][1][2:] == b"idle timeout", frames
    s.close()
    m = srv.admin_get("/metrics").body.decode()
    for name in ("websocket_connections", "websocket_limit", "websocket_idle_timeouts"):
        assert 'name="%s"' % name in m, (name, m[-2000:])


def test_trust_boundary_refuses_ev_data():
    """An ev: string the relay is not going to encrypt (an unselected field, a text message)
    closes the client with 1008 encrypted-data-in-field; nothing reaches the destination."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})
    srv = c["srv"]

    async def first_ev():
        async with py_connect(srv, "py.example") as ws:
            await ws.send(json.dumps({"ssn": "1"}))
            await ws.recv()
            return json.loads(dest.messages[-1])

    ev = asyncio.run(first_ev())["ssn"]
    assert EV.fullmatch(ev)
    n = len(dest.messages)
    for msg in (json.dumps({"note": ev}), "see " + ev, json.dumps({"note": ev.replace("e", "\\u0065", 1)})):
        async def attempt():
            async with py_connect(srv, "py.example") as ws:
                await ws.send(msg)
                try:
                    await ws.recv()
                except websockets.ConnectionClosed as e:
                    return e.code, e.reason
                return None
        assert asyncio.run(attempt()) == (1008, "encrypted-data-in-field"), msg
    assert len(dest.messages) == n, dest.messages[n:]


def test_trust_boundary_without_response_decryption():
    """responseDecryption false: a selected field whose whole value already is an ev: string is
    forwarded as it is (nothing on the way back decrypts), as in request bodies; one anywhere
    else still closes the client with 1008."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port},
              relay_extra={"responseDecryption": False})
    srv = c["srv"]

    async def send(msg):
        async with py_connect(srv, "py.example") as ws:
            await ws.send(msg)
            try:
                return await ws.recv()
            except websockets.ConnectionClosed as e:
                return (e.code, e.reason)
    back = json.loads(asyncio.run(send(json.dumps({"ssn": "123-12-1234"}))))
    ev = back["ssn"]  # not decrypted on the way back on this relay
    assert EV.fullmatch(ev) and decrypt(c, ev) == "123-12-1234", back
    assert json.loads(asyncio.run(send(json.dumps({"ssn": ev})))) == {"ssn": ev}
    assert json.loads(dest.messages[-1]) == {"ssn": ev}, dest.messages[-1]
    n = len(dest.messages)
    assert asyncio.run(send(json.dumps({"note": ev}))) == (1008, "encrypted-data-in-field")
    assert len(dest.messages) == n


def test_node_ws_both_ends():
    """Node's ws as client and as destination (which offers permessage-deflate: never
    negotiated through the relay)."""
    node = shutil.which("node")
    if not node:
        raise evstest.Skip("node is not installed")
    if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "ws")):
        raise evstest.Skip("tests/integration/sdk/node_modules/ws is missing: npm install there")
    peer = os.path.join(SDK_DIR, "ws_peer.js")
    server = subprocess.Popen([node, peer, "server"], stdout=subprocess.PIPE, text=True)
    evstest.defer(server.kill)
    port = json.loads(server.stdout.readline())["port"]
    c = setup({"node.example": "http://127.0.0.1:%d" % port})
    srv = c["srv"]
    msgs = [json.dumps({"ssn": "123-12-1234", "x": [1, 2]}),
            {"fragments": ['{"card":{"numb', 'er":"4242424242424242"}}']},
            {"binary": base64.b64encode(b"\xff\x00bin").decode()}, "hello"]
    r = subprocess.run([node, peer, "client", "ws://127.0.0.1:%d/chat" % srv.port(),
                        "node.example"], input=json.dumps(msgs), capture_output=True, text=True,
                       timeout=30)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0].get("open") and lines[0]["protocol"] == "chat.v1", lines
    assert lines[0]["extensions"] == "", lines
    assert lines[1] == {"text": msgs[0]}, lines
    assert json.loads(lines[2]["text"]) == {"card": {"number": "4242424242424242"}}, lines
    assert lines[3] == {"binary": msgs[2]["binary"]} and lines[4] == {"text": "hello"}, lines
    assert lines[5] == {"close": 1000, "reason": "done"}, lines
    seen = []
    server.kill()
    for x in server.stdout.read().splitlines():
        seen.append(json.loads(x))
    assert seen[0]["connection"] == "/chat" and seen[0]["extensions"] is None, seen
    got = json.loads(seen[1]["text"])
    assert EV.fullmatch(got["ssn"]) and decrypt(c, got["ssn"]) == "123-12-1234", seen
    got = json.loads(seen[2]["text"])
    assert EV.fullmatch(got["card"]["number"]), seen


def test_python_client_node_destination_and_node_client_python_destination():
    """The two implementations across each other."""
    node = shutil.which("node")
    if not node or not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "ws")):
        raise evstest.Skip("node and tests/integration/sdk/node_modules/ws needed")
    peer = os.path.join(SDK_DIR, "ws_peer.js")
    server = subprocess.Popen([node, peer, "server"], stdout=subprocess.PIPE, text=True)
    evstest.defer(server.kill)
    port = json.loads(server.stdout.readline())["port"]
    dest = PyDest()
    c = setup({"node.example": "http://127.0.0.1:%d" % port,
               "py.example": "http://127.0.0.1:%d" % dest.port})
    srv = c["srv"]

    async def run():
        async with py_connect(srv, "node.example") as ws:
            await ws.send(json.dumps({"ssn": "555-55-5555"}))
            return json.loads(await ws.recv())
    assert asyncio.run(run()) == {"ssn": "555-55-5555"}
    r = subprocess.run([node, peer, "client", "ws://127.0.0.1:%d/chat" % srv.port(),
                        "py.example"], input=json.dumps([json.dumps({"ssn": "666"})]),
                       capture_output=True, text=True, timeout=30)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[1] == {"text": json.dumps({"ssn": "666"})}, lines
    assert EV.fullmatch(json.loads(dest.messages[-1])["ssn"]), dest.messages


def test_refused_upgrade_passes_status():
    """The destination refuses the upgrade: its status and body reach the client; no 101."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})

    async def run():
        try:
            async with py_connect(c["srv"], "py.example", path="/refuse"):
                return None
        except websockets.InvalidStatusCode as e:
            return e.status_code
    assert asyncio.run(run()) == 403
    s = socket.create_connection(("127.0.0.1", c["srv"].port()), timeout=10)
    s.sendall(b"GET /refuse HTTP/1.1\r\nHost: py.example\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    resp = evstest.recv_responses(s, 1)[0][0]
    assert resp.status == 403 and resp.body == b'{"refused":true}', resp


def test_destination_silent_or_unreachable():
    """No answer to the handshake within websocket_handshake_timeout: 504 request-timeout;
    nothing listening, or no route: 502 service-unavailable."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts (the kernel does) and never answers
    evstest.defer(silent.close)
    closed = evstest.free_port()  # reserved, nobody listens
    # no route: connecting to the broadcast address fails at once (ENETUNREACH)
    c = setup({"silent.example": "http://127.0.0.1:%d" % silent.getsockname()[1],
               "closed.example": "http://127.0.0.1:%d" % closed,
               "bcast.example": "http://255.255.255.255:9"},
              relay_options={"websocket_handshake_timeout": "1s"})
    for host, status, code in (("silent.example", 504, b"request-timeout"),
                               ("closed.example", 502, b"service-unavailable"),
                               ("bcast.example", 502, b"service-unavailable")):
        s = socket.create_connection(("127.0.0.1", c["srv"].port()), timeout=10)
        s.sendall(("GET /chat HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n" % host).encode())
        resp = evstest.recv_responses(s, 1, timeout=10)[0][0]
        assert resp.status == status and code in resp.body, (host, resp, resp.body)
        s.close()


def test_big_messages():
    """A 16 MiB message passes both ways (websocket_max_message 16m); one byte more is closed
    with 1009 and never reaches the destination."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})
    big = os.urandom(16 << 20)

    async def run(payload):
        async with py_connect(c["srv"], "py.example") as ws:
            await ws.send(payload)
            try:
                return await asyncio.wait_for(ws.recv(), 60)
            except websockets.ConnectionClosed as e:
                return e.code
    got = asyncio.run(run(big))
    assert got == big, got if isinstance(got, int) else (type(got), len(got))
    n = len(dest.messages)
    assert asyncio.run(run(big + b"!")) == 1009
    assert len(dest.messages) == n


def test_malformed_frames_from_the_client():
    """Each broken client frame gets the documented close; the destination gets 1001."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})
    cases = [
        ("unmasked frame", frame(1, b"hi", mask=False), 1002),
        ("reserved bit", frame(1, b"hi", rsv=0x40), 1002),
        ("control frame over 125 bytes", frame(9, b"p" * 126), 1002),
        ("fragmented control frame", frame(9, b"p", fin=False), 1002),
        ("unknown opcode", frame(3, b"x"), 1002),
        ("continuation without a message", frame(0, b"x"), 1002),
        ("invalid UTF-8 in a text frame", frame(1, b"\xc3\x28"), 1007),
        ("invalid UTF-8 across fragments", frame(1, b"ok\xe2", fin=False) + frame(0, b"\x28\xa1"), 1007),
        ("close code 1005 on the wire", frame(8, struct.pack(">H", 1005)), 1002),
        ("close code 999", frame(8, struct.pack(">H", 999)), 1002),
        ("close frame of 1 byte", frame(8, b"\x03"), 1002),
        ("close reason not UTF-8", frame(8, struct.pack(">H", 1000) + b"\xff"), 1007),
    ]
    for name, data, code in cases:
        s = raw_client(c["srv"], "py.example")
        s.sendall(data)
        got = close_code(read_frames(s))
        assert got == code, (name, got)
        s.close()
    # a good close is answered with the destination's close
    s = raw_client(c["srv"], "py.example")
    s.sendall(frame(8, struct.pack(">H", 1000) + b"bye"))
    assert close_code(read_frames(s)) == 1000


def test_destination_misbehaving():
    """Malformed destination frames and a destination that dies mid-message: the client gets
    1014 (bad gateway); the destination gets the protocol code."""
    cases = [
        ("masked server frame", frame(1, b"hi", mask=True)),
        ("reserved bit", frame(1, b"hi", mask=False, rsv=0x20)),
        ("invalid UTF-8", frame(1, b"\xed\xa0\x80", mask=False)),
        ("closed mid-message", frame(1, b"x" * 1000, mask=False)[:500]),
        ("closed mid-fragmented-message", frame(1, b"part", mask=False, fin=False)),
    ]
    dests = {"d%d.example" % i: RawDest(after=data) for i, (_, data) in enumerate(cases)}
    c = setup({n: "http://127.0.0.1:%d" % d.port for n, d in dests.items()})
    for i, (name, _) in enumerate(cases):
        s = raw_client(c["srv"], "d%d.example" % i)
        frames = read_frames(s)
        assert close_code(frames) == 1014, (name, frames)
        assert all(op == 8 for op, _ in frames), (name, frames)  # nothing half-relayed
        s.close()


def test_batched_split_and_fragmented_client_frames():
    """What the fast path (whole frames of one read, one write) hands to the streaming path and
    back: several messages in one write, fragmented ones and pings among them, a frame split
    across reads, a UTF-8 character split across fragments, a message to encrypt between plain
    ones (order kept), and in one write a good message followed by invalid UTF-8 or an ev: token
    (the good one reaches the destination, then 1007 or 1008, nothing of the bad one)."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})
    srv = c["srv"]
    # /plain: no fields selected, every message passes through
    s = raw_client(srv, "py.example", path="/plain")
    s.sendall(frame(1, b"one") + frame(1, b"tw", fin=False) + frame(9, b"ping-1") +
              frame(0, b"o") + frame(2, b"\x00three") + frame(1, b"caf\xc3", fin=False) +
              frame(0, b"\xa9!") + frame(9, b"ping-2") + frame(1, b'{"n":4}'))
    # the pings go end to end: the destination's pongs come back, in any order with the data
    got = read_until(s, lambda f: len(data_of(f)) >= 5 and sum(op == 10 for op, _ in f) >= 2)
    assert data_of(got) == [(1, b"one"), (1, b"two"), (2, b"\x00three"), (1, "café!".encode()),
                            (1, b'{"n":4}')], got
    assert sorted(p for op, p in got if op == 10) == [b"ping-1", b"ping-2"], got
    assert dest.messages[:5] == ["one", "two", b"\x00three", "café!", '{"n":4}'], dest.messages
    # a frame split across reads: in its head, then in its payload (paced: any split must give
    # the same result)
    text = json.dumps({"x": "y" * 300}).encode()
    big = frame(1, text)
    for cut in (1, 3, 9, 150):
        s.sendall(big[:cut])
        time.sleep(0.05)
        s.sendall(big[cut:] + frame(1, b"after-%d" % cut))
        got = read_until(s, lambda f: len(data_of(f)) >= 2)
        assert data_of(got) == [(1, text), (1, b"after-%d" % cut)], (cut, got)
    s.close()
    # /chat selects $.ssn: the message to encrypt waits for the enclave; the plain ones around
    # it keep their order
    s = raw_client(srv, "py.example")
    s.sendall(frame(1, b"before") + frame(1, b'{"ssn":"123-12-1234"}') + frame(1, b"after"))
    got = data_of(read_until(s, lambda f: len(data_of(f)) >= 3))
    assert len(got) == 3 and got[0] == (1, b"before") and got[2] == (1, b"after"), got
    assert json.loads(got[1][1]) == {"ssn": "123-12-1234"}, got
    assert dest.messages[-3] == "before" and dest.messages[-1] == "after", dest.messages
    assert EV.fullmatch(json.loads(dest.messages[-2])["ssn"]), dest.messages
    s.close()
    # a good message, then a bad one, in one write
    fake = "ev:RFVC:Ak3X:AAAA:BBBB:$"
    # (the relay's own close, by its reason: the destination would refuse invalid UTF-8 too)
    for bad, code, reason in ((frame(1, b"\xc3\x28"), 1007, b"invalid UTF-8"),
                              (frame(1, json.dumps({"note": fake}).encode()), 1008,
                               b"encrypted-data-in-field"),
                              (frame(1, b"ok \xe2", fin=False) + frame(0, b"\x28\xa1"), 1007,
                               b"invalid UTF-8")):
        n = len(dest.messages)
        s = raw_client(srv, "py.example", path="/plain")
        s.sendall(frame(1, b"good-%d" % code) + bad)
        frames = read_frames(s)
        assert close_code(frames) == code and frames[-1][1][2:] == reason, (bad, frames)
        s.close()
        evstest.wait_for(lambda: len(dest.messages) > n, what="the good message")
        assert dest.messages[n:] == ["good-%d" % code], (bad, dest.messages[n:])


def test_fast_path_block_boundaries():
    """The client fast path checks a message sixteen bytes at a time in one pass: an ev: token,
    an escaped one, a non-ASCII byte (valid or not) and an 'e' before a trigger, on either side
    of those blocks' boundaries and at the message's ends, give the same verdicts as the full
    checks (1008, 1007, or passed unchanged), with a good message before them in the same
    write always delivered."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})
    srv = c["srv"]
    size = 50
    cases = []
    for tok in (b"ev:RFVC:Ak3X:AAAA:BBBB:$", b"%65v:RFVC:Ak3X:AAAA:BBBB:$"):
        for at in sorted({0, 1, 14, 15, 16, 17, 31, size - len(tok)}):
            cases.append((b"x" * at + tok + b"x" * (size - at - len(tok)), 1008))
    for at in (0, 15, 16, 17, 31, 32, size - 1):
        cases.append((b"y" * at + b"\xff" + b"y" * (size - at - 1), 1007))
    for at in (0, 15, 16, 31, size - 2):
        body = b"z" * at + "é".encode() + b"z" * (size - at - 2)
        cases.append((body, None))                                # valid UTF-8 passes
        cases.append((body[:at] + b"e%" + body[at + 2:], None))  # a stray escape start passes
    cases += [(b"z" * (size - 1) + b"e", None), (b"v" + b"z" * (size - 1), None)]
    s = raw_client(srv, "py.example", path="/plain")
    for body, code in cases:
        if code is not None:
            continue
        # passes: several in one write, the fast path's batch
        n = len(dest.messages)
        s.sendall(frame(1, b"good") + frame(1, body))
        got = read_until(s, lambda f: len(data_of(f)) >= 2)
        assert data_of(got) == [(1, b"good"), (1, body)], (body, got)
        assert dest.messages[n:] == ["good", body.decode()], (body, dest.messages[n:])
    s.close()
    for body, code in cases:
        if code is None:
            continue
        n = len(dest.messages)
        s = raw_client(srv, "py.example", path="/plain")
        s.sendall(frame(1, b"good-%d" % code) + frame(1, body))
        frames = read_frames(s)
        assert close_code(frames) == code, (body, frames)
        s.close()
        evstest.wait_for(lambda: len(dest.messages) > n, what="the good message")
        assert dest.messages[n:] == ["good-%d" % code], (body, dest.messages[n:])


def test_batched_split_and_fragmented_destination_frames():
    """The destination's side of the same: several frames in one write (fragmented messages,
    pings among them), frames split across reads, and a good message followed by invalid UTF-8
    (in one frame, or split across fragments): the good ones reach the client whole and in
    order, then 1014; nothing of the bad message."""
    ok = (frame(1, b"one", mask=False) + frame(1, b"tw", mask=False, fin=False) +
          frame(9, b"ping", mask=False) + frame(0, b"o", mask=False) +
          frame(1, b"caf\xc3", mask=False, fin=False) + frame(0, b"\xa9", mask=False) +
          frame(2, b"\x00bin", mask=False))
    split = frame(1, b"s" * 300, mask=False) + frame(1, b"end", mask=False)
    cases = [
        ("batched", [ok], [(1, b"one"), (1, b"two"), (1, "café".encode()), (2, b"\x00bin")]),
        ("split in a head", [split[:1], split[1:3], split[3:]], [(1, b"s" * 300), (1, b"end")]),
        ("split in a payload", [split[:100], split[100:]], [(1, b"s" * 300), (1, b"end")]),
        ("then invalid UTF-8", [frame(1, b"good", mask=False) + frame(1, b"\xed\xa0\x80",
                                                                       mask=False)],
         [(1, b"good")]),
        ("then invalid UTF-8 across fragments",
         [frame(1, b"good", mask=False) + frame(1, b"x\xe2", mask=False, fin=False) +
          frame(0, b"\x28\xa1", mask=False)], [(1, b"good")]),
    ]
    dests = {"d%d.example" % i: RawDest(after=after) for i, (_, after, _) in enumerate(cases)}
    c = setup({n: "http://127.0.0.1:%d" % d.port for n, d in dests.items()})
    for i, (name, _, want) in enumerate(cases):
        s = raw_client(c["srv"], "d%d.example" % i, path="/plain")
        frames = read_frames(s)
        assert [f for f in frames if f[0] in (1, 2)] == want, (name, frames)
        assert close_code(frames) == 1014, (name, frames)
        if name == "batched":
            assert (9, b"ping") in frames, frames
        s.close()


def test_client_that_never_reads():
    """A destination floods a client that never reads: the relay stops reading the destination
    once its queue toward the client is full, so the worker's memory stays bounded while the
    destination's sends block."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port}, workers=1)
    srv = c["srv"]
    s = raw_client(srv, "py.example", path="/flood")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    worker = [r for r in srv.log_records() if r.get("role") == "worker"][0]["pid"]

    def rss_kib():
        with open("/proc/%d/status" % worker) as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    # the destination stalls: its count stops moving
    last = [-1, 0]

    def stalled():
        if dest.sent == last[0]:
            last[1] += 1
        else:
            last[:] = [dest.sent, 0]
        return last[1] >= 10 and dest.sent > 0
    evstest.wait_for(stalled, timeout=30, interval=0.1, what="destination blocked")
    sent = dest.sent
    rss = rss_kib()
    # 60 KB messages: what is in flight is a few MB at most (socket buffers on both sides,
    # the relay's queue of 256 KiB and one message), far below what was sent if unbounded
    assert sent * 60000 < 64 << 20, sent
    assert rss < 64 * 1024, rss
    # the client reads again: the relay resumes reading the destination (a stream paused with
    # input waiting is re-armed, since its edge came while it was paused), so the destination
    # sends again and its messages arrive whole
    s.settimeout(10)
    buf, got = b"", 0
    while got < sent + 20:
        chunk = s.recv(1 << 20)
        assert chunk, "the relay closed"
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">H", buf[2:4])[0]:
            n = struct.unpack(">H", buf[2:4])[0]
            assert buf[0] == 0x81 and buf[1] == 126 and json.loads(buf[4:4 + n]) == \
                {"n": "x" * 60000}, buf[:8]
            buf, got = buf[4 + n:], got + 1
    assert dest.sent > sent, (dest.sent, sent)
    s.close()


def test_drain_closes_with_1001():
    """SIGHUP and SIGTERM: open WebSockets get close 1001; after a reload new ones open; after
    SIGTERM the server exits."""
    dest = PyDest()
    c = setup({"py.example": "http://127.0.0.1:%d" % dest.port})
    s = raw_client(c["srv"], "py.example")
    s.sendall(frame(1, b'{"a":1}'))
    frames = read_frames(s, timeout=2)
    assert frames and frames[0] == (1, b'{"a":1}'), frames
    # a reload: the old worker's WebSockets get 1001, new ones open on the new generation
    c["srv"].signal(signal.SIGHUP)
    frames = read_frames(s, timeout=10)
    assert close_code(frames) == 1001 and frames[-1][1][2:] == b"server going away", frames
    s.sendall(frame(8, struct.pack(">H", 1001)))
    s.close()
    s = raw_client(c["srv"], "py.example")
    s.sendall(frame(1, b'{"b":2}'))
    frames = read_frames(s, timeout=2)
    assert frames and frames[0] == (1, b'{"b":2}'), frames
    c["srv"].signal(signal.SIGTERM)
    frames = read_frames(s, timeout=10)
    assert close_code(frames) == 1001, frames
    s.sendall(frame(8, struct.pack(">H", 1001)))
    c["srv"].wait(30)


def test_libwebsockets_test_server_destination():
    """libwebsockets' own test server as the destination: its dumb-increment protocol's text
    counts pass through, and its mirror protocol echoes a JSON message whose field the relay
    encrypted (decrypted again on the way back)."""
    need_websockets()
    lws = shutil.which("libwebsockets-test-server")
    if not lws:
        raise evstest.Skip("libwebsockets-test-server is not installed")
    # libwebsockets binds [::]:port itself, so evstest's reserved ports (a bound probe) refuse
    # it, and so does a port of the ephemeral range some connection uses from another address:
    # try ports below that range whose wildcard bind works now, another if one was taken.
    import random
    for _ in range(20):
        port = random.randrange(10000, 32000)
        probe = socket.socket(socket.AF_INET6)
        try:
            probe.bind(("::", port))
        except OSError:
            continue
        finally:
            probe.close()
        p = subprocess.Popen([lws, "--port=%d" % port], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=evstest.tmpdir())
        evstest.defer(p.kill)
        evstest.wait_for(lambda: p.poll() is not None or
                         socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                         what="libwebsockets-test-server listening")
        if p.poll() is None:
            break
    else:
        raise AssertionError("libwebsockets-test-server did not start")
    c = setup({"lws.example": "http://127.0.0.1:%d" % port})

    async def run():
        async with py_connect(c["srv"], "lws.example", path="/",
                              subprotocols=["dumb-increment-protocol"]) as ws:
            a = int(await ws.recv())
            b = int(await ws.recv())
        async with py_connect(c["srv"], "lws.example", path="/",
                              subprotocols=["lws-mirror-protocol"]) as ws:
            await ws.send(json.dumps({"ssn": "123-12-1234"}))
            m = await asyncio.wait_for(ws.recv(), 10)
        return a, b, m
    a, b, m = asyncio.run(run())
    assert b == a + 1, (a, b)
    assert json.loads(m) == {"ssn": "123-12-1234"}, m


if __name__ == "__main__":
    evstest.main(globals())
