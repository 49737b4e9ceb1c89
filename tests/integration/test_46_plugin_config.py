"""A plugin's configuration lookups (core/plugin.c config_string, config_int, config_bool).

The test plugin tests/plugins/config_keys.c (test-config-keys) reads declared keys and two keys
its descriptor does not declare, in init and on every `GET /config-keys`. Checked here:

- declared keys give the configured value or the default;
- an undeclared key is an error return, not a silent 0: config_string NULL, config_int
  EVS_CONFIG_UNDECLARED, config_bool -ENOENT;
- each undeclared key is logged exactly once per process (EVS-1410, naming the plugin and the
  key), however often and through however many lookups it is read.
"""

import json
import os

import evstest

PLUGIN = "test-config-keys"


def start(workers=1, **section):
    d = evstest.tmpdir("evs-config-keys-")
    os.symlink(evstest.build_path("test-plugins.d", PLUGIN + ".so"),
               os.path.join(d, PLUGIN + ".so"))
    cfg = evstest.write_config(server={"plugins_dir": d, "workers": workers},
                               plugins={PLUGIN: section})
    return evstest.Server(cfg).start()


def get(srv):
    raw = evstest.send_raw(srv.port(), b"GET /config-keys HTTP/1.1\r\nHost: localhost\r\n"
                                       b"Connection: close\r\n\r\n")
    r = evstest.parse_response(raw)
    assert r.status == 200, (r, r.body)
    return json.loads(r.body)


def undeclared_lines(srv):
    return [r for r in srv.log_records() if r.get("id") == "EVS-1410"]


def test_declared_keys_read_values_and_defaults():
    srv = start(limit=42)
    got = get(srv)
    assert got["limit"] == 42 and got["greeting"] == "hi" and got["flag"] == 0, got


def test_undeclared_key_is_an_error_logged_once_per_key():
    srv = start()
    for _ in range(3):
        got = get(srv)
        assert got["colour_null"] is True, got
        assert got["colour_int_undeclared"] is True and got["shade_undeclared"] is True, got
        assert got["colour_bool"] == -2, got  # -ENOENT
    evstest.wait_for(lambda: len(undeclared_lines(srv)) >= 2, what="EVS-1410 lines")
    lines = undeclared_lines(srv)
    keys = sorted(("'colour'" in r["msg"], "'shade'" in r["msg"]) for r in lines)
    assert keys == [(False, True), (True, False)], lines
    for r in lines:
        assert r["level"] == "error" and r["plugin"] == PLUGIN, r
        assert PLUGIN in r["msg"] and "does not declare" in r["msg"], r


def test_once_per_process():
    srv = start(workers=2)
    for _ in range(4):
        get(srv)
    evstest.wait_for(lambda: len(undeclared_lines(srv)) >= 4, what="EVS-1410 lines")
    lines = undeclared_lines(srv)
    per = {}
    for r in lines:
        key = "colour" if "'colour'" in r["msg"] else "shade"
        per.setdefault((r["pid"], key), 0)
        per[(r["pid"], key)] += 1
    assert len(per) == 4 and set(per.values()) == {1}, per


if __name__ == "__main__":
    evstest.main(globals())
