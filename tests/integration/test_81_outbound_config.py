"""The Outbound Relay's destinations configuration end to end: `evctl outbound
create|list|push|diff|delete` against the relay-outbound plugin's admin endpoints, and
GET /v2/relay-outbound (the SDK's poll) with real API keys made by `evctl key create`: the
right permission gives the app's destinations and `x-poll-interval`, a missing or unknown key
is 401 `unauthorized`, a key without the permission 403 `forbidden`. A push reaches every
worker of the node before evctl returns (node message), a second server on the same store
sees it within store_poll_interval (as another node would), and the configuration survives a
restart.

Uses the real $EVS_BUILD_DIR/evserver-enclave, or test_70's protocol stub without it.
"""

import importlib.util
import json
import os

import evstest

_spec = importlib.util.spec_from_file_location(
    "enclave_api", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "test_70_enclave_api.py"))
E = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(E)

PERM = "relay:outbound-proxy"


def need_build():
    for p in (("evserver",), ("evctl",), ("plugins.d", "relay-outbound.so"),
              ("plugins.d", "enclave.so")):
        if not os.path.exists(evstest.build_path(*p)):
            raise evstest.Skip("%s is not built" % "/".join(p))


def config(dir, workers=2, state_dir=None, **outbound):
    server = {"workers": workers}
    if state_dir:
        server["state_dir"] = state_dir
    plugins = {"enclave": {"enclave_binary": E.enclave_binary(dir), "request_timeout": "3s"}}
    if outbound:
        plugins["relay-outbound"] = outbound
    return evstest.write_config(dir, listeners={"http": {}, "api": {}}, server=server,
                                plugins=plugins)


def start(workers=2, **outbound):
    dir = evstest.tmpdir("evs-ob-")
    return evstest.Server(config(dir, workers, **outbound)).start(), dir


def poll(srv, key, headers=None):
    """GET /v2/relay-outbound on a fresh connection: (status, headers, parsed body)."""
    h = {} if key is None else {"api-key": key}
    h.update(headers or {})
    st, hdrs, body = E.api(srv, "GET", "/v2/relay-outbound", headers=h)
    return st, hdrs, json.loads(body)


def domains(obj):
    return {i: d["destinationDomain"] for i, d in obj["outboundDestinations"].items()}


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def worker_pids(srv):
    with open("/proc/%d/task/%d/children" % (srv.pid, srv.pid)) as f:
        return {int(x) for x in f.read().split() if comm(int(x)) == "evserver"}


def loaded_generations(srv):
    """{worker pid: the generation it loaded last}, from the plugin's log lines."""
    out = {}
    for r in srv.log_records():
        msg = r.get("msg", "")
        if r.get("plugin") == "relay-outbound" and msg.startswith("outbound configuration loaded"):
            out[r["pid"]] = msg.rpartition("generation ")[2]
    return out


def write(dir, name, obj):
    path = os.path.join(dir, name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    return path


def test_commands_and_poll():
    need_build()
    srv, dir = start()
    app = E.evctl_json(srv, "app", "create")["appId"]
    key = E.evctl_json(srv, "key", "create", app, "--permissions", PERM)["apiKey"]
    enc_only = E.evctl_json(srv, "key", "create", app, "--permissions", "")["apiKey"]

    # Nothing configured yet: an empty object (the SDK needs the member), and the poll period.
    st, h, obj = poll(srv, key)
    assert st == 200 and obj == {"outboundDestinations": {}}, (st, obj)
    assert h.get("x-poll-interval") == "5", h
    assert E.evctl_json(srv, "outbound", "list")["apps"] == []

    # Documented errors: no key, an unknown key, a key without the permission.
    for k, status, code in ((None, 401, "unauthorized"), ("ev:key:nope", 401, "unauthorized"),
                            (enc_only, 403, "forbidden")):
        st, h, body = E.api(srv, "GET", "/v2/relay-outbound",
                            headers={} if k is None else {"api-key": k})
        E.assert_error(st, h, body, status, code)
        assert b"outboundDestinations" not in body

    # create, seen at once by every worker (the answer waits for them).
    out = E.evctl_json(srv, "outbound", "create", app, "--destination-domain", "api.pay.example",
                       "--id", "pay", "--fields-to-encrypt", "$.card.number,$.iban")
    assert out["destinationId"] == "pay" and out["version"] == 1, out
    assert out["workers"] == 2 and out["workersReloaded"] == 2, out
    text = E.evctl(srv, "outbound", "create", app, "--destination-domain", "*.example.org").stdout
    assert "Created destination dest_" in text and "2 of 2 workers" in text, text
    for _ in range(20):  # fresh connections: both workers answer some
        st, h, obj = poll(srv, key)
        assert st == 200, (st, obj)
        got = domains(obj)
        assert got["pay"] == "api.pay.example" and "*.example.org" in got.values(), got
        assert obj["outboundDestinations"]["pay"]["fieldsToEncrypt"] == ["$.card.number", "$.iban"]

    # list: the apps, and one app's destinations.
    apps = E.evctl_json(srv, "outbound", "list")["apps"]
    assert [(a["appId"], a["version"], a["destinations"], a["unconfiguredHosts"]) for a in apps] \
        == [(app, 2, 2, "refuse")], apps
    one = E.evctl_json(srv, "outbound", "list", app)
    assert one["version"] == 2 and one["etag"].startswith('"2-'), one
    table = E.evctl(srv, "outbound", "list", app).stdout
    assert "api.pay.example" in table and "*.example.org" in table, table

    # A conflicting id and an invalid domain change nothing; the error names the field.
    r = E.evctl(srv, "outbound", "create", app, "--destination-domain", "x.example", "--id", "pay",
                check=False)
    assert r.returncode == 1 and "conflict" in r.stderr, r
    r = E.evctl(srv, "outbound", "create", app, "--destination-domain", "https://x.example",
                check=False)
    assert r.returncode == 1 and "destinationDomain" in r.stderr and "scheme" in r.stderr, r
    assert E.evctl_json(srv, "outbound", "list", app)["version"] == 2

    # diff and push of a file: one kept and changed, one removed, one added, a setting.
    f = write(dir, "outbound.json", {
        "appId": app,
        "outboundDestinations": {
            "pay": {"destinationDomain": "api.pay.example/v1/*", "encryptFiles": True},
            "echo": {"destinationDomain": "127.0.0.1/evserver-interop-echo/*"},
        },
        "unconfiguredHosts": "passthrough",
    })
    d = E.evctl_json(srv, "outbound", "diff", f)
    assert [a["id"] for a in d["added"]] == ["echo"], d
    assert [c["id"] for c in d["changed"]] == ["pay"], d
    assert len(d["removed"]) == 1 and d["removed"][0]["from"]["destinationDomain"] == "*.example.org"
    assert d["settings"] == [{"name": "unconfiguredHosts", "from": "refuse", "to": "passthrough"}]
    text = E.evctl(srv, "outbound", "diff", f).stdout
    assert "+ echo" in text and "~ pay" in text and "- dest_" in text, text
    assert "1 to add, 1 to change, 1 to remove" in text, text
    assert E.evctl_json(srv, "outbound", "list", app)["version"] == 2  # diff stores nothing

    before = loaded_generations(srv)
    pushed = E.evctl_json(srv, "outbound", "push", f)
    assert pushed["version"] == 3 and pushed["workersReloaded"] == 2, pushed
    # Every live worker loaded the new generation, before evctl returned, without a restart.
    after = loaded_generations(srv)
    workers = worker_pids(srv)
    assert len(workers) == 2 and workers <= set(after), (workers, after)
    gens = {after[w] for w in workers}
    assert len(gens) == 1 and not (gens & set(before.values())), (before, after)
    for _ in range(20):
        st, h, obj = poll(srv, key)
        assert domains(obj) == {"pay": "api.pay.example/v1/*",
                                "echo": "127.0.0.1/evserver-interop-echo/*"}, obj
    assert "0 to add, 0 to change, 0 to remove" in E.evctl(srv, "outbound", "diff", f).stdout

    # An invalid file: evctl exits 1, the server names the field, nothing changes.
    bad = write(dir, "bad.json", {"appId": app, "outboundDestinations": {
        "x": {"destinationDomain": "api.example.com", "fieldsToEncrypt": "ssn"}}})
    r = E.evctl(srv, "outbound", "push", bad, check=False)
    assert r.returncode == 1 and "outboundDestinations.x.fieldsToEncrypt" in r.stderr, r
    r = E.evctl(srv, "outbound", "diff", bad, check=False)
    assert r.returncode == 1 and "outboundDestinations.x.fieldsToEncrypt" in r.stderr, r
    notjson = write(dir, "notjson.json", {})
    with open(notjson, "w") as fh:
        fh.write("{\"outboundDestinations\": ")
    r = E.evctl(srv, "outbound", "push", notjson, "--app", app, check=False)
    assert r.returncode == 1 and "notjson.json:1:" in r.stderr, r
    r = E.evctl(srv, "outbound", "push", write(dir, "noapp.json", {"outboundDestinations": {}}),
                check=False)
    assert r.returncode == 2 and "--app" in r.stderr, r
    assert E.evctl_json(srv, "outbound", "list", app)["version"] == 3

    # delete one destination, then the whole configuration.
    out = E.evctl_json(srv, "outbound", "delete", app, "echo")
    assert out["workersReloaded"] == 2
    assert domains(poll(srv, key)[2]) == {"pay": "api.pay.example/v1/*"}
    r = E.evctl(srv, "outbound", "delete", app, "echo", check=False)
    assert r.returncode == 1 and "resource-not-found" in r.stderr, r
    assert "Deleted the outbound configuration" in E.evctl(srv, "outbound", "delete", app,
                                                           "--all").stdout
    assert poll(srv, key)[2] == {"outboundDestinations": {}}
    assert E.evctl_json(srv, "outbound", "list")["apps"] == []
    r = E.evctl(srv, "outbound", "delete", app, check=False)
    assert r.returncode == 2, r


def test_other_node_and_restart():
    """A second server on the same store stands for another node: it learns of a push by
    polling the store's generation. Then both stop; a restarted server still has the
    configuration, and poll_interval sets x-poll-interval."""
    need_build()
    srv, dir = start(workers=2, store_poll_interval="300ms")
    app = E.evctl_json(srv, "app", "create")["appId"]
    key = E.evctl_json(srv, "key", "create", app, "--permissions", PERM)["apiKey"]
    dir2 = evstest.tmpdir("evs-ob2-")
    other = evstest.Server(config(dir2, 1, state_dir=srv.config.state_dir,
                                  store_poll_interval="300ms")).start()
    assert poll(other, key)[2] == {"outboundDestinations": {}}

    f = write(dir, "o.json", {"outboundDestinations": {"a": {"destinationDomain": "a.example"}}})
    E.evctl_json(srv, "outbound", "push", f, "--app", app)
    evstest.wait_for(lambda: domains(poll(other, key)[2]) == {"a": "a.example"},
                     timeout=15, what="the other node to load the push")
    # And the other way round.
    E.evctl_json(other, "outbound", "create", app, "--destination-domain", "b.example", "--id", "b")
    evstest.wait_for(lambda: all(domains(poll(srv, key)[2]) == {"a": "a.example", "b": "b.example"}
                                 for _ in range(6)),
                     timeout=15, what="both workers of the first node to load the other's change")
    other.stop()
    srv.stop()

    srv = evstest.Server(config(dir, 2, poll_interval="2500ms")).start()
    for _ in range(10):
        st, h, obj = poll(srv, key)
        assert st == 200 and domains(obj) == {"a": "a.example", "b": "b.example"}, obj
        assert h.get("x-poll-interval") == "2.500", h
    assert E.evctl_json(srv, "outbound", "list", app)["version"] == 2


evstest.main(globals())
