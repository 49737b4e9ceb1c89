"""The app of the stand-in runner (tests/plugins/cage_run_fake.c): what hello-cage answers,
served on the unix socket given as argv[1], with the Encryption API reached over fd 3 (the
runner's line protocol). Routes:
  GET  /hello      {"response": "Hello! I'm writing to you from within an enclave"}
  POST /echo       {"body": <the body as received>, "headers": {...}}
  GET  /env        {"GREETING": ..., "ACME_API_KEY": ...}
  GET  /roundtrip  {"encrypted": <what /encrypt gave>, "decrypted": <what /decrypt gave back>}
  POST /api/<path> the body passed to the Encryption API's /<path>, its answer returned
  GET  /crash      the process exits (code 3)
With FAKE_TLS_CERT and FAKE_TLS_KEY in its environment it serves HTTPS itself (a cage with
disable_tls_termination).
"""

import base64
import http.server
import json
import os
import socket
import socketserver
import sys
import threading

SOCK = sys.argv[1]
chan = socket.socket(fileno=3)
lock = threading.Lock()
replies = {}
cond = threading.Condition()
next_id = [0]


def send(line):
    with lock:
        chan.sendall((line + "\n").encode())


def reader():
    buf = b""
    while True:
        data = chan.recv(65536)
        if not data:
            os._exit(0)
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.decode().split(" ")
            if parts[0] == "REPLY":
                with cond:
                    replies[int(parts[1])] = (int(parts[2]), base64.b64decode(parts[3] if len(parts) > 3 else ""))
                    cond.notify_all()


def api(path, body):
    with cond:
        next_id[0] += 1
        i = next_id[0]
    send("API %d POST %s %s" % (i, path, base64.b64encode(body).decode() or "="))
    with cond:
        cond.wait_for(lambda: i in replies, timeout=30)
        return replies.pop(i)


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, obj, ctype="application/json"):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/hello":
            self.reply(200, {"response": "Hello! I'm writing to you from within an enclave"})
        elif self.path == "/env":
            self.reply(200, {k: os.environ.get(k) for k in ("GREETING", "ACME_API_KEY")})
        elif self.path == "/roundtrip":
            st, enc = api("/encrypt", json.dumps({"foo": "bar", "n": 7}).encode())
            st2, dec = api("/decrypt", enc)
            self.reply(200, {"encrypted": json.loads(enc), "decrypted": json.loads(dec),
                             "status": [st, st2]})
        elif self.path == "/crash":
            os._exit(3)
        else:
            self.reply(404, {"error": "no route"})

    def do_POST(self):
        b = self.body()
        if self.path == "/echo":
            if os.environ.get("FAKE_DEBUG") == "1":
                send("LOG 1 echo of %d bytes" % len(b))
            self.reply(200, {"body": b.decode(errors="replace"),
                             "headers": {k.lower(): v for k, v in self.headers.items()}})
        elif self.path.startswith("/api/"):
            st, out = api(self.path[4:], b)
            self.reply(st, out, "text/plain")
        else:
            self.reply(404, {"error": "no route"})

    def log_message(self, *a):
        pass

    def address_string(self):
        return "cage"


class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


try:
    os.unlink(SOCK)
except FileNotFoundError:
    pass
srv = S(SOCK, H)
if os.environ.get("FAKE_TLS_CERT"):  # disable_tls_termination: the app's own TLS
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.environ["FAKE_TLS_CERT"], os.environ["FAKE_TLS_KEY"])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
threading.Thread(target=reader, daemon=True).start()
send("READY")
srv.serve_forever()
