"""The Outbound Relay's CA (enclave/README.md, "The relay CA"): `evctl relay-ca create`, `show`,
`rotate` and `remove` over the admin socket; GET /relay-ca.pem on the api listener, without auth,
from every worker, with its ETag; leaf certificates issued through ABI 1.7's issue_certificate by
a test plugin (tests/plugins/certs.c) for a key the test made, verified with `openssl verify`
against the served CA, with their SANs and serverAuth; rotation (new leaves chain to the new CA,
the bundle holds both, every worker serves the new bundle); bad SANs and keys refused with
EVS_CRYPTO_E_INVALID; the CA key never in the store (the record holds the enclave's sealed blob)
nor in the logs; and a killed enclave comes back able to sign (the CA is unsealed again).
"""

import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import urllib.error
import urllib.request

import evstest
import test_72_enclave_node as N

E_INVALID, UNAVAILABLE, EINVAL = -6, -8, -22
PUBLIC_URL = "https://api.example.test/relay-ca.pem"


def plugins_dir():
    d = evstest.tmpdir("evs-ca-plugins-")
    os.symlink(evstest.build_path("plugins.d", "enclave.so"), os.path.join(d, "enclave.so"))
    os.symlink(evstest.build_path("test-plugins.d", "test-certs.so"),
               os.path.join(d, "test-certs.so"))
    return d


def start(workers=2):
    binary = evstest.build_path("evserver-enclave")
    if not os.access(binary, os.X_OK):
        raise evstest.Skip("evserver-enclave is not built")
    dir = evstest.tmpdir("evs-ca-")
    cfg = evstest.write_config(
        dir, listeners={"http": {}, "api": {}},
        server={"workers": workers, "plugins_dir": plugins_dir()},
        plugins={"enclave": {"enclave_binary": binary, "request_timeout": "5s",
                             "relay_ca_url": PUBLIC_URL},
                 "test-certs": {}})
    return evstest.Server(cfg).start(), dir


def evctl(srv, *args, check=True):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, *args],
                       capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise AssertionError("evctl %s: %d\n%s%s" % (" ".join(args), r.returncode, r.stdout,
                                                      r.stderr))
    return r


def evctl_json(srv, *args):
    return json.loads(evctl(srv, "--json", *args).stdout)


def get_pem(srv, headers=None):
    """(status, headers lower-case, body) of GET /relay-ca.pem on the api listener, no auth."""
    req = urllib.request.Request(srv.url("/relay-ca.pem", "api"), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def issue(srv, names, key_pem, validity=None):
    q = "names=" + ",".join(names) + ("&validity=%d" % validity if validity is not None else "")
    return admin(srv, "POST", "/test-cert?" + q, key_pem)


def admin(srv, method, path, body=None):
    r = srv.admin_request(method, path, body=body, timeout=15)
    return r.status, r.body


def certs(pem):
    return re.findall(rb"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", pem, re.S)


def write(dir, name, data):
    path = os.path.join(dir, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def openssl(*args, input=None):
    r = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=20)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def fingerprint(pem):
    rc, out = openssl("x509", "-noout", "-fingerprint", "-sha256", input=pem)
    assert rc == 0, out
    return out.strip().split("=", 1)[1]


def leaf_key(dir, name="leaf"):
    key = os.path.join(dir, name + ".key")
    rc, out = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-out", key)
    assert rc == 0, out
    rc, pub = openssl("pkey", "-in", key, "-pubout")
    assert rc == 0, pub
    return key, pub.encode()


def verify(dir, ca_pem, leaf_pem):
    rc, out = openssl("verify", "-purpose", "sslserver", "-CAfile", write(dir, "ca.pem", ca_pem),
                      write(dir, "leaf.pem", leaf_pem))
    return rc == 0 and ": OK" in out, out


def all_workers_serve(srv, etag, n=N.N):
    """n requests on fresh connections (both workers answer some) all see etag."""
    return all(get_pem(srv)[1].get("etag") == etag for _ in range(n))


def test_create_show_serve_issue_rotate():
    srv, dir = start()
    tmp = evstest.tmpdir("evs-ca-files-")
    key, pub = leaf_key(tmp)

    # No CA yet: 404 with the documented body, show fails, issue_certificate is UNAVAILABLE.
    st, h, body = get_pem(srv)
    assert st == 404, (st, body)
    err = json.loads(body)
    assert err["code"] == "resource-not-found" and "relay-ca create" in err["detail"], err
    r = evctl(srv, "relay-ca", "show", check=False)
    assert r.returncode == 1 and "relay-ca create" in r.stderr, r
    assert issue(srv, ["example.test"], pub) == (502, b"status=%d" % UNAVAILABLE)
    assert admin(srv, "GET", "/test-ca-bundle") == (502, b"status=%d" % UNAVAILABLE)

    # Create: the answer is what show prints.
    made = evctl_json(srv, "relay-ca", "create")
    cur = made["current"]
    assert "evserver Outbound Relay CA" in cur["subject"], made
    assert made["path"] == "/relay-ca.pem" and made["url"] == PUBLIC_URL, made
    assert made["workers"] == 2 and made["workersUpdated"] == 2, made
    assert len(made["trusted"]) == 1
    again = evctl(srv, "relay-ca", "create", check=False)
    assert again.returncode == 1 and "rotate" in again.stderr, again
    text = evctl(srv, "relay-ca", "show").stdout
    for want in (cur["subject"], cur["fingerprint"], cur["notAfter"], PUBLIC_URL):
        assert want in text, (want, text)

    # Served without auth, from memory, the same by every worker.
    st, h, ca_pem = get_pem(srv)
    assert st == 200 and h["content-type"] == "application/x-pem-file", (st, h)
    assert h["cache-control"] == "no-cache" and h["etag"].startswith('"'), h
    assert len(certs(ca_pem)) == 1 and fingerprint(ca_pem) == cur["fingerprint"]
    assert all_workers_serve(srv, h["etag"])
    st2, h2, body2 = get_pem(srv, {"If-None-Match": h["etag"]})
    assert st2 == 304 and body2 == b"" and h2["etag"] == h["etag"], (st2, h2)
    rc, out = openssl("x509", "-noout", "-text", input=ca_pem)
    assert "CA:TRUE" in out and "Certificate Sign" in out and "prime256v1" in out, out
    # A validity of about ten years.
    assert cur["notAfter"][:4] == str(int(cur["notBefore"][:4]) + 10), cur

    # A leaf for a DNS name and an IP address, for the test's own key.
    st, chain = issue(srv, ["example.test", "127.0.0.1"], pub)
    assert st == 200, chain
    leaf, signer = certs(chain)
    assert signer == ca_pem
    ok, out = verify(tmp, ca_pem, leaf)
    assert ok, out
    rc, text = openssl("x509", "-noout", "-text", input=leaf)
    assert "DNS:example.test, IP Address:127.0.0.1" in text, text
    assert "TLS Web Server Authentication" in text and "CA:FALSE" in text, text
    assert "Subject: CN = example.test" in text, text
    rc, mod_leaf = openssl("x509", "-noout", "-pubkey", input=leaf)
    assert mod_leaf.encode().strip() == pub.strip()
    # The leaf works for TLS with the key only the test has.
    rc, out = openssl("x509", "-noout", "-checkhost", "example.test", "-checkip", "127.0.0.1",
                      input=leaf)
    assert "does match" in out and "NOT" not in out, out
    # IPv6 and a short validity.
    st, chain = issue(srv, ["::1"], pub, validity=3600)
    assert st == 200, chain
    rc, text = openssl("x509", "-noout", "-text", input=certs(chain)[0])
    assert "IP Address:0:0:0:0:0:0:0:1" in text, text

    # Bad names and keys: refused with EVS_CRYPTO_E_INVALID, or by the host's shape checks.
    for names in (["bad_name.test"], ["*.example.test"], ["exa%20mple.test"], ["%C3%A9.test"], ["-x.test"],
                  ["a" * 64 + ".test"], ["1.2.3"], ["999.1.1.1"], ["[::1]"], ["fe80::1%25eth0"],
                  ["example.test."]):
        assert issue(srv, names, pub) == (502, b"status=%d" % E_INVALID), names
    assert issue(srv, ["a%d.test" % i for i in range(9)], pub) == (502, b"call=%d" % EINVAL)
    assert issue(srv, ["example.test", ""], pub) == (502, b"call=%d" % EINVAL)
    assert issue(srv, ["x" * 254], pub) == (502, b"call=%d" % EINVAL)
    assert issue(srv, ["example.test"], b"not a key")[1] == b"status=%d" % E_INVALID
    assert issue(srv, ["example.test"], pub, validity=10 * 365 * 86400)[1] == \
        b"status=%d" % E_INVALID

    # Rotate: a new current CA, the old one still trusted; every worker serves the new bundle.
    rot = evctl_json(srv, "relay-ca", "rotate")
    new_fp = rot["current"]["fingerprint"]
    assert new_fp != cur["fingerprint"] and rot["workersUpdated"] == 2, rot
    assert [t["fingerprint"] for t in rot["trusted"]] == [new_fp, cur["fingerprint"]], rot
    st, h, bundle = get_pem(srv)
    assert st == 200 and len(certs(bundle)) == 2 and certs(bundle)[1] == ca_pem
    assert all_workers_serve(srv, h["etag"])
    new_ca = certs(bundle)[0]
    assert fingerprint(new_ca) == new_fp
    assert admin(srv, "GET", "/test-ca-bundle") == (200, bundle)
    for _ in range(6):  # whichever worker answers signs with the new CA
        st, chain = issue(srv, ["example.test"], pub)
        assert st == 200 and certs(chain)[1] == new_ca, chain
        assert verify(tmp, new_ca, certs(chain)[0])[0]
        assert not verify(tmp, ca_pem, certs(chain)[0])[0]
        assert verify(tmp, bundle, certs(chain)[0])[0]

    # The current CA cannot be removed; the old one can.
    r = evctl(srv, "relay-ca", "remove", new_fp, check=False)
    assert r.returncode == 1 and "rotate first" in r.stderr, r
    rem = evctl_json(srv, "relay-ca", "remove", cur["fingerprint"])
    assert [t["fingerprint"] for t in rem["trusted"]] == [new_fp], rem
    st, h, bundle = get_pem(srv)
    assert certs(bundle) == [new_ca]
    assert all_workers_serve(srv, h["etag"])

    # The key is nowhere in plaintext: the store holds the enclave's sealed blob, and neither
    # the database files nor the logs hold a private key in PEM or DER.
    state = os.path.join(dir, "state")
    con = sqlite3.connect(os.path.join(state, "evserver.db"))
    rows = dict((bytes(k).decode(), bytes(v)) for k, v in
                con.execute("SELECT key, value FROM evs_kv WHERE ns = 'enclave'"))
    con.close()
    rec = json.loads(rows["relay-ca"])
    assert [c.keys() for c in rec["cas"]] and len(rec["cas"]) == 1, rec
    sealed = base64.b64decode(rec["cas"][0]["sealedKey"])
    assert sealed[:4] == b"EVC\x01" and len(sealed) == 4 + 12 + 121 + 16, len(sealed)
    sec1 = bytes.fromhex("30770201010420")  # ECPrivateKey, version 1, a 32-byte scalar
    pkcs8 = bytes.fromhex("020100301306072a8648ce3d0201")  # PrivateKeyInfo of an EC key
    blobs = [sealed]
    for root, _, files in os.walk(state):
        for f in files:
            if f != "enclave-seal.key":
                with open(os.path.join(root, f), "rb") as fh:
                    blobs.append(fh.read())
    blobs.append(srv.log().encode())
    for b in blobs:
        assert b"PRIVATE KEY" not in b and sec1 not in b and pkcs8 not in b

    # A killed enclave comes back (a fresh process: nothing unsealed) and signs again.
    before = N.enclaves(dir)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    evstest.wait_for(lambda: N.enclaves(dir) and not N.enclaves(dir) & before, timeout=20,
                     what="new enclave processes")

    def signs():
        st, chain = issue(srv, ["example.test"], pub)
        return st == 200 and certs(chain)[1] == new_ca

    evstest.wait_for(lambda: all(signs() for _ in range(6)), timeout=20,
                     what="leaves from the restarted enclaves")
    srv.stop()


def test_every_worker_picks_up_a_rotation_from_the_store():
    """A CA created in one server's store is served by a second server on the same store (as a
    second node on a PostgreSQL store would): it reads the store on a miss."""
    srv, dir = start(workers=1)
    made = evctl_json(srv, "relay-ca", "create", "--cn", "Test Relay CA", "--days", "30")
    assert made["current"]["subject"].endswith("CN=Test Relay CA"), made
    srv.stop()
    srv = evstest.Server(srv.config).start()
    st, h, pem = get_pem(srv)
    assert st == 200 and fingerprint(pem) == made["current"]["fingerprint"], (st, pem)
    bad = evctl(srv, "relay-ca", "rotate", "--days", "0", check=False)
    assert bad.returncode == 2, bad
    bad = evctl(srv, "relay-ca", "rotate", "--cn", "\x01", check=False)
    assert bad.returncode == 1 and "commonName" in bad.stderr, bad
    srv.stop()


evstest.main(globals())
