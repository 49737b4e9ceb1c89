"""The Inbound Relay decrypting compressed responses (issue 9 item 5). A destination returns JSON
with an ev: value compressed with gzip, deflate (zlib-wrapped and raw), br and stacked codings;
clients that send Accept-Encoding (curl --compressed, raw sockets) get the plaintext, sent as
identity, never an ev: string. The destination is asked only for codings the relay decodes; one
that sends another anyway (zstd, compress, unknown, two Content-Encoding fields) gets the client
502 unsupported-content-type-in-response, with no ciphertext. A gzip bomb and a corrupt gzip body
abort the response (the head has already gone), with a log line saying why. A relay with
responseDecryption off passes compressed responses byte for byte. br bytes come from Debian's
libbrotlienc through ctypes. Needs the real evserver-enclave."""

import ctypes
import ctypes.util
import json
import os
import re
import subprocess
import zlib

import evstest

EV = re.compile(r"ev:[A-Za-z0-9+/=_:-]+:\$")
SSN = "123-12-1234"


def brotli(data):
    name = ctypes.util.find_library("brotlienc") or "libbrotlienc.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise evstest.Skip("libbrotlienc is not installed")
    out_len = ctypes.c_size_t(len(data) + 1024)
    out = ctypes.create_string_buffer(out_len.value)
    # BrotliEncoderCompress(quality, lgwin, mode, input_size, input, *encoded_size, encoded)
    ok = lib.BrotliEncoderCompress(5, 22, 0, ctypes.c_size_t(len(data)), data,
                                   ctypes.byref(out_len), out)
    assert ok == 1
    return out.raw[:out_len.value]


def zenc(data, wbits):
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": lambda b: zenc(b, 31),
    "x-gzip": lambda b: zenc(b, 31),
    "deflate": lambda b: zenc(b, 15),
    "deflate-raw": lambda b: zenc(b, -15),
    "br": brotli,
    "gzip, br": lambda b: brotli(zenc(b, 31)),
}


def evctl_json(srv, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def curl(srv, host, path, extra=()):
    r = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H", "Host: " + host,
                        *extra, srv.url(path)], capture_output=True, timeout=30)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code), body


def setup():
    """A server with an app, a relay that decrypts responses (dec.example) and one that does
    not (plain.example), both to one destination; and an ev: string of SSN."""
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built" % enclave)
    up = evstest.Upstream()
    cfg = evstest.write_config(listeners={"http": {}},
                               plugins={"enclave": {"enclave_binary": enclave},
                                        "relay-inbound": {}})
    srv = evstest.Server(cfg).start()
    app = evctl_json(srv, "app", "create")
    dest = "http://127.0.0.1:%d" % up.port
    relays = {
        "dec.example": {"destinationDomain": dest, "appId": app["appId"],
                        "fieldsToEncrypt": [{"route": "/secure", "method": "POST",
                                             "fields": ["$.ssn"]}]},
        "plain.example": {"destinationDomain": dest, "appId": app["appId"],
                          "responseDecryption": False},
    }
    with open(cfg.relay_config, "w") as f:
        json.dump(relays, f)

    def encrypted():
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                            "Host: dec.example", "-H", "Content-Type: application/json",
                            "--data-binary", '{"ssn":"%s"}' % SSN, srv.url("/secure")],
                           capture_output=True, timeout=20)
        return r.stdout == b"200" and up.requests and EV.search(up.requests[-1].body.decode())

    evstest.wait_for(encrypted, what="relay-config applied")
    ev = EV.search(up.requests[-1].body.decode()).group(0)
    return dict(srv=srv, up=up, ev=ev)


def serve(up, coding, body, ctype="application/json"):
    """The destination answers every request with body encoded as coding."""
    enc = ENCODERS[coding](body) if coding in ENCODERS else body
    ce = "deflate" if coding == "deflate-raw" else coding
    up.set_response(handler=lambda r: (200, [("Content-Type", ctype),
                                             ("Content-Encoding", ce)], enc))
    return enc


def raw_get(srv, host, headers=(), method="GET", timeout=10.0):
    req = ("%s /data HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
           % (method, host, "".join("%s: %s\r\n" % h for h in headers))).encode()
    return evstest.send_raw(srv.port(), req, timeout=timeout)


def doc(ev):
    return ('{"name": "Ada", "ssn": "%s", "pad": "%s"}' % (ev, "lorem ipsum " * 500)).encode()


def plain_doc():
    return ('{"name": "Ada", "ssn": "%s", "pad": "%s"}' % (SSN, "lorem ipsum " * 500)).encode()


def test_codings_curl_compressed():
    c = setup()
    for coding in ENCODERS:
        serve(c["up"], coding, doc(c["ev"]))
        n = len(c["up"].requests)
        code, out = curl(c["srv"], "dec.example", "/data", ["--compressed"])
        assert code == 200, (coding, code, out[:300])
        assert out == plain_doc(), (coding, out[:300])
        # curl offers zstd too; the destination is asked only for what the relay decodes.
        ae = c["up"].wait_requests(n + 1)[-1].header("accept-encoding")
        assert ae and "zstd" not in ae and "gzip" in ae and "br" in ae, ae


def test_codings_raw_socket():
    c = setup()
    for coding in ENCODERS:
        serve(c["up"], coding, doc(c["ev"]))
        n = len(c["up"].requests)
        got = raw_get(c["srv"], "dec.example", [("Accept-Encoding", "gzip, deflate, br, zstd, *")])
        r = evstest.parse_response(got)
        assert r.status == 200, (coding, r.status, r.body[:300])
        assert r.header("content-encoding") is None, (coding, r.headers)
        assert r.header("content-length") is None and r.header("transfer-encoding") == "chunked"
        assert r.body == plain_doc() and b"ev:" not in got, (coding, r.body[:300])
        assert c["up"].wait_requests(n + 1)[-1].header("accept-encoding") == "gzip, deflate, br"
    # A client without Accept-Encoding: the destination is asked for identity; one that
    # compresses anyway is decoded all the same.
    serve(c["up"], "gzip", doc(c["ev"]))
    n = len(c["up"].requests)
    r = evstest.parse_response(raw_get(c["srv"], "dec.example"))
    assert r.status == 200 and r.body == plain_doc()
    assert c["up"].wait_requests(n + 1)[-1].header("accept-encoding") == "identity"
    # HEAD: no Content-Encoding, and not the compressed length either.
    got = raw_get(c["srv"], "dec.example", [("Accept-Encoding", "gzip")], method="HEAD")
    r = evstest.parse_response(got, head=True)
    assert r.status == 200 and r.header("content-encoding") is None, r.headers
    assert r.header("content-length") is None, r.headers
    # Other content types are decoded too (text: ev: tokens anywhere).
    serve(c["up"], "br", ("card %s ok" % c["ev"]).encode(), ctype="text/plain")
    r = evstest.parse_response(raw_get(c["srv"], "dec.example", [("Accept-Encoding", "br")]))
    assert r.status == 200 and r.body == ("card %s ok" % SSN).encode(), r.body
    # An empty body with a coding is an empty body.
    c["up"].set_response(handler=lambda r: (200, [("Content-Encoding", "gzip")], b""))
    r = evstest.parse_response(raw_get(c["srv"], "dec.example", [("Accept-Encoding", "gzip")]))
    assert r.status == 200 and r.body == b"" and r.header("content-encoding") is None


def test_unsupported_codings_refused():
    c = setup()
    body = doc(c["ev"])
    for ce in (["zstd"], ["compress"], ["gzip, zstd"], ["x-unknown"], ["gzip, br, deflate, gzip"],
               ["identity", "gzip"]):
        enc = zenc(body, 31) if ce == ["identity", "gzip"] else body
        c["up"].set_response(handler=lambda r: (200, [("Content-Type", "application/json")] +
                                                [("Content-Encoding", v) for v in ce], enc))
        got = raw_get(c["srv"], "dec.example", [("Accept-Encoding", "gzip, zstd")])
        r = evstest.parse_response(got)
        assert r.status == 502, (ce, r.status, r.body[:200])
        assert r.header("x-evervault-error-code") == "unsupported-content-type-in-response"
        assert r.json()["code"] == "unsupported-content-type-in-response"
        assert b"ev:" not in got and enc not in got, ce
    # The server carries on.
    serve(c["up"], "gzip", body)
    assert curl(c["srv"], "dec.example", "/data", ["--compressed"]) == (200, plain_doc())


def test_gzip_bomb_and_corrupt():
    c = setup()
    srv = c["srv"]
    # 40 MiB of JSON (over max_body, 25 MiB) in about 40 KiB of gzip.
    bomb = zenc(b'{"pad": "' + b" " * (40 << 20) + b'"}', 31)
    assert len(bomb) < 100 << 10
    c["up"].set_response(handler=lambda r: (200, [("Content-Type", "application/json"),
                                                  ("Content-Encoding", "gzip")], bomb))
    s = evstest.connect(srv.port(), timeout=30)
    s.sendall(b"GET /bomb HTTP/1.1\r\nHost: dec.example\r\nAccept-Encoding: gzip\r\n\r\n")
    rs, rest = evstest.recv_responses(s, 1, timeout=30, allow_close=True)
    s.close()
    assert rs == [], rs  # the response was cut off, never completed
    evstest.wait_for(lambda: "decodes to more than max_body" in srv.log(), what="bomb logged")
    # Corrupt: a gzip header, then garbage; and a truncated stream.
    good = zenc(doc(c["ev"]), 31)
    for bad in (good[:10] + b"\xff" * 200 + good[210:], good[:len(good) // 2]):
        c["up"].set_response(handler=lambda r: (200, [("Content-Type", "application/json"),
                                                      ("Content-Encoding", "gzip")], bad))
        s = evstest.connect(srv.port(), timeout=10)
        s.sendall(b"GET /bad HTTP/1.1\r\nHost: dec.example\r\nAccept-Encoding: gzip\r\n\r\n")
        rs, rest = evstest.recv_responses(s, 1, timeout=10, allow_close=True)
        s.close()
        assert rs == [] and b"ev:" not in rest, (rs, rest[:300])
    evstest.wait_for(lambda: "is corrupt or truncated" in srv.log(), what="corrupt logged")
    # Still serving.
    serve(c["up"], "gzip", doc(c["ev"]))
    assert curl(srv, "dec.example", "/data", ["--compressed"]) == (200, plain_doc())


def test_decryption_off_untouched():
    c = setup()
    for coding in ("gzip", "br", "zstd"):
        enc = serve(c["up"], coding, doc(c["ev"]))
        n = len(c["up"].requests)
        got = raw_get(c["srv"], "plain.example", [("Accept-Encoding", "gzip, br, zstd")])
        r = evstest.parse_response(got)
        assert r.status == 200 and r.body == enc, (coding, r.status)
        assert r.header("content-encoding") == coding and r.header("content-length") == str(len(enc))
        assert c["up"].wait_requests(n + 1)[-1].header("accept-encoding") == "gzip, br, zstd"


if __name__ == "__main__":
    evstest.main(globals())
