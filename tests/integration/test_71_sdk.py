"""The official Evervault Node.js SDK (@evervault/sdk 6.4.0, tests/integration/sdk/) against
evserver's API listener: encrypt with both curves, with and without a data role, strings,
numbers, booleans, nested objects and a file; decrypt() through evserver returns the originals;
a revoked key is refused. Needs node, `npm install --prefix tests/integration/sdk` (.ci/run does
it) and the real $EVS_BUILD_DIR/evserver-enclave (the SDK's cryptography must really match)."""

import json
import os
import shutil
import subprocess

import evstest

SDK_DIR = os.path.join(evstest.SOURCE_DIR, "tests", "integration", "sdk")


def evctl_json(srv, *args):
    r = subprocess.run([evstest.build_path("evctl"), "--socket", srv.config.admin_socket, "--json",
                        *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_sdk_round_trip():
    node = shutil.which("node")
    if not node:
        raise evstest.Skip("node is not installed (scripts/install-deps installs nodejs)")
    if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@evervault", "sdk")):
        raise evstest.Skip("tests/integration/sdk/node_modules is missing: run "
                           "`npm install --prefix tests/integration/sdk`")
    enclave = evstest.build_path("evserver-enclave")
    if not os.access(enclave, os.X_OK):
        raise evstest.Skip("%s is not built: the SDK needs the real enclave" % enclave)
    cfg = evstest.write_config(listeners={"http": {}, "api": {}},
                               plugins={"enclave": {"enclave_binary": enclave}})
    srv = evstest.Server(cfg).start()
    app = evctl_json(srv, "app", "create")
    key = evctl_json(srv, "key", "create", app["appId"], "--permissions", "api:decrypt")
    bad = evctl_json(srv, "key", "create", app["appId"], "--permissions", "api:decrypt")
    evctl_json(srv, "key", "revoke", app["appId"], bad["keyId"])
    env = dict(os.environ, EV_API_URL="http://127.0.0.1:%d" % srv.port("api"),
               EVS_APP_ID=app["appId"], EVS_API_KEY=key["apiKey"], EVS_BAD_KEY=bad["apiKey"])
    r = subprocess.run([node, os.path.join(SDK_DIR, "interop.js")], cwd=SDK_DIR, env=env,
                       capture_output=True, text=True, timeout=120)
    print(r.stdout, end="")
    assert r.returncode == 0, "interop.js failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr)
    log = srv.log()
    assert key["apiKey"] not in log and app["appToken"] not in log


if __name__ == "__main__":
    evstest.main(globals())
