#!/usr/bin/env python3
"""The demo destination: an HTTP server on 127.0.0.1:9000 that echoes what it received, so a
request through the relay shows exactly what the destination saw (method, path, headers, body as
text). A JSON body is also echoed as JSON ("json"): its ev: strings are values the relay decrypts
on the way back, so the client gets them in plaintext, as the Getting Started describes."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sys.stderr.write("demo-upstream: received %s\n" % body.decode("utf-8", "replace")[:500])
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": {k: v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        try:
            echo["json"] = json.loads(body)
        except ValueError:
            pass
        out = json.dumps(echo, indent=2).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _echo

    def log_message(self, fmt, *args):
        sys.stderr.write("demo-upstream: " + (fmt % args) + "\n")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
