#!/usr/bin/env python3
"""Functions on two nodes sharing one PostgreSQL store: a Function deployed through node A runs
on node B (B unpacks the version from the store), and a run token redeemed on both nodes at the
same moment runs exactly once (the store's delete is an atomic take on PostgreSQL too), and
deploys of one Function on both nodes at once get a version each (store_put_new).

Without EVS_TEST_PG_DSN this re-runs itself under tests/integration/pg_store.sh, which starts a
throwaway PostgreSQL (or reports "skipped" when the server binaries are absent).
"""

import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys

import evstest

HERE = os.path.dirname(os.path.abspath(__file__))


def load_t90():
    spec = importlib.util.spec_from_file_location("t90", os.path.join(HERE, "test_90_functions.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_nodes_share_functions_and_tokens():
    T = load_t90()
    T.need()
    dsn = os.environ["EVS_TEST_PG_DSN"]
    nodes = []
    try:
        for name in ("a", "b"):
            d = evstest.tmpdir("evs-fnpg-%s-" % name)
            cfg = evstest.write_config(
                d, listeners={"http": {}, "api": {}}, store={"backend": "postgresql", "dsn": dsn},
                plugins={"enclave": {"enclave_binary": evstest.build_path("evserver-enclave")},
                         "function-runtime": {"fnbox_binary": evstest.build_path("evs-fnbox")}})
            e = T.Env.__new__(T.Env)  # reuse Env's helpers with our own server
            e.dir, e.cfg = d, cfg
            e.srv = evstest.Server(cfg).start()
            e.fndir = os.path.join(d, "functions")
            os.makedirs(e.fndir)
            nodes.append(e)
        a, b = nodes
        a.app = b.app = a.evctl("app", "create")["appId"]
        a.key = b.key = a.evctl("key", "create", a.app, "--permissions",
                                "function:run,function:create-run-token")["apiKey"]
        T.FUNCTIONS["echo"] = ("node", "index.handler", "exports.handler = async (d) => ({ got: d });", {})
        a.deploy("echo")
        # Node B runs what node A deployed (admin run: B's enclave does not hold the app, and a
        # payload without ev: values needs no decryption).
        out = b.evctl("function", "run", "--app", a.app, "--name", "echo", "--data", '{"x": 1}')
        assert out["status"] == "success" and out["result"] == {"got": {"x": 1}}, out
        assert a.evctl("function", "list", "--app", a.app)["functions"][0]["name"] == "echo"
        assert b.evctl("function", "list", "--app", a.app)["functions"][0]["name"] == "echo"
        # Tokens made on A, each redeemed on A and B at once: exactly one run per token.
        tokens = []
        for i in range(8):
            st, _, tok = a.token("echo", {"i": i})
            assert st == 200, tok
            tokens.append((i, tok["token"]))

        def redeem(args):
            node, i, t = args
            return node.run("echo", {"i": i}, headers={"Authorization": "RunToken " + t})

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            for i, t in tokens:
                results = list(ex.map(redeem, [(a, i, t), (b, i, t)]))
                codes = sorted((r[0], (r[2] or {}).get("code") or r[2].get("status")) for r in results)
                assert codes == [(200, "success"), (401, "run-token-used-error")], codes
        # Deploys of one Function on both nodes at once: a version each, the highest kept.
        vers = T.concurrent_deploys([a, b], "echo", 8)
        assert sorted(vers) == list(range(4, 12)), vers  # after the first and two sequential
        for node in (a, b):
            got = json.loads(node.srv.admin_get("/functions/%s/echo" % a.app).body)
            assert got["version"] == 11, got
    finally:
        for e in nodes:
            e.stop()


if __name__ == "__main__":
    if not os.environ.get("EVS_TEST_PG_DSN"):
        script = os.path.join(HERE, "pg_store.sh")
        sys.exit(subprocess.call(["bash", script, os.path.abspath(__file__)]))
    evstest.main(globals())
