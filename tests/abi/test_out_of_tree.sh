#!/usr/bin/env bash
# tests/abi/test_out_of_tree.sh: a third party's view of the plugin ABI. Installs the build into
# a temporary prefix, builds examples/hello-plugin from a copy outside the source tree against
# ONLY the installed header (found through the installed evserver.pc), loads it into the
# installed evserver and checks it answers over HTTP.
#
# Run by ctest with EVS_BUILD_DIR and EVS_SOURCE_DIR set. Prints "N passed, M failed" and exits
# non-zero on failure. EVS_KEEP_TMP=1 keeps the temporary directory.
set -euo pipefail

oot_name=oot
# shellcheck source=oot_harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/oot_harness.sh"

# ---- 1. install into a temporary prefix --------------------------------------------------------
# Staged through DESTDIR so that a destination which ignores --prefix (an absolute path) lands
# in the stage, where it is reported, instead of in the real file system.
stage=$tmp/stage
if ! DESTDIR=$stage cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1; then
  stop_here "cmake --install $build --prefix $prefix" "$(tail -5 "$tmp/install.log")"
fi
outside=$(cd "$stage" && find . ! -type d ! -path ".$prefix/*" | sed 's|^\.||')
if [ -n "$outside" ]; then
  fail "cmake --install --prefix puts every file under the prefix" \
    "installed outside $prefix (absolute install destinations):" $outside
else
  ok "cmake --install --prefix puts every file under the prefix"
fi
[ -d "$stage$prefix" ] || stop_here "cmake --install installs anything under the prefix"
mv "$stage$prefix" "$prefix"

# ---- 2. the installed pkg-config file points into the prefix ---------------------------------
# GNUInstallDirs picks lib, lib64 or lib/<multiarch>: look rather than guess.
pcs=$(find "$prefix" -name evserver.pc)
[ "$(printf '%s\n' "$pcs" | grep -c .)" -eq 1 ] ||
  stop_here "exactly one evserver.pc under $prefix" "found: ${pcs:-none}"
pcdir=$(dirname "$pcs")
# PKG_CONFIG_LIBDIR replaces the default search path: only the installed file can answer.
export PKG_CONFIG_PATH=$pcdir PKG_CONFIG_LIBDIR=$pcdir
cflags=$(pkg-config --cflags evserver) || stop_here "pkg-config --cflags evserver"
plugindir=$(pkg-config --variable=plugindir evserver)
bad=""
for f in $cflags; do
  case "$f" in
    -I"$prefix"/*) [ -f "${f#-I}/evserver/evs_plugin.h" ] || bad="$bad $f (no evserver/evs_plugin.h)" ;;
    -I*) bad="$bad $f" ;;
  esac
done
if [ -n "$bad" ] || [ -z "$cflags" ]; then
  fail "pkg-config --cflags evserver names the installed header's directory" \
    "evserver.pc: $pcs" "cflags: '$cflags'; outside $prefix or without the header:$bad" \
    "$(cat "$pcs")"
else
  ok "pkg-config --cflags evserver names the installed header's directory"
fi
case "$plugindir" in
  "$prefix"/*) ok "pkg-config --variable=plugindir evserver is under the prefix" ;;
  *) fail "pkg-config --variable=plugindir evserver is under the prefix" "got '$plugindir'" ;;
esac

# ---- 3. build the example from a copy, away from the source tree ------------------------------
hello=$tmp/hello-plugin
cp -R "$src/examples/hello-plugin" "$hello"
rm -f "$hello/hello.so"
if ! make -C "$hello" >"$tmp/make.log" 2>&1; then
  stop_here "make builds hello.so with -Werror and -z defs" "$(cat "$tmp/make.log")"
fi
ok "make builds hello.so with -Werror and -z defs"
# The header the compiler really used, as it resolved it, against the one installed.
used=$(cd "$hello" && cc $cflags -M hello.c | tr ' \\' '\n\n' | grep 'evs_plugin\.h$' || true)
installed=$(find "$prefix" -name evs_plugin.h)
if [ -n "$used" ] && [ "$(realpath "$used")" = "$(realpath "$installed")" ]; then
  ok "hello.c compiles against the installed header only"
else
  fail "hello.c compiles against the installed header only" "used: '$used'" \
    "installed: '$installed'"
fi
# Strong undefined symbols only (weak ones such as __gmon_start__ may stay unresolved).
undefined=$(nm -D --undefined-only "$hello/hello.so" | awk '$1 == "U" {print $2}' | grep -v '@GLIBC' || true)
if [ -z "$undefined" ]; then
  ok "hello.so needs nothing from the host but the evs_host table"
else
  fail "hello.so needs nothing from the host but the evs_host table" "undefined: $undefined"
fi
plugins=$tmp/plugins.d
make -C "$hello" install PLUGINDIR="$plugins" >>"$tmp/make.log" 2>&1 ||
  stop_here "make install PLUGINDIR=..." "$(tail -5 "$tmp/make.log")"
[ "$(ls "$plugins")" = hello.so ] || stop_here "plugins dir holds only hello.so" "$(ls "$plugins")"

# ---- 4. load it into the installed evserver ----------------------------------------------------
evserver=$prefix/bin/evserver
[ -x "$evserver" ] || stop_here "evserver installed at $evserver"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$tmp/state"
cat >"$tmp/evserver.conf" <<EOF
[server]
workers = 1
state_dir = $tmp/state
plugins_dir = $plugins
[admin]
socket = $tmp/admin.sock
[listener "http"]
address = 127.0.0.1:$port
[plugin "hello"]
message = Hello, out of tree
EOF
if "$evserver" -c "$tmp/evserver.conf" -t >"$tmp/check.log" 2>&1; then
  ok "evserver -t accepts hello.so"
else
  fail "evserver -t accepts hello.so" "$(cat "$tmp/check.log")"
fi

"$evserver" -c "$tmp/evserver.conf" >"$tmp/evserver.log" 2>&1 &
server_pid=$!
up=0
for _ in $(seq 1 100); do
  if curl -sf --unix-socket "$tmp/admin.sock" http://localhost/status >/dev/null 2>&1; then
    up=1
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[ "$up" = 1 ] || stop_here "the installed evserver starts with hello.so" "$(cat "$tmp/evserver.log")"

status=$(curl -sS --unix-socket "$tmp/admin.sock" http://localhost/plugins)
if printf '%s' "$status" | python3 -c '
import json, sys
p = json.load(sys.stdin)["plugins"]
sys.exit(0 if [(x["name"], x["status"], x["version"]) for x in p] == [("hello", "loaded", "1.0.0")] else 1)'
then
  ok "GET /plugins lists hello as loaded"
else
  fail "GET /plugins lists hello as loaded" "$status"
fi

body=$(curl -sS --max-time 10 -H 'Host: hello.test' -w '\n%{http_code}' "http://127.0.0.1:$port/from/outside")
expected=$(printf 'Hello, out of tree\nGET /from/outside\n\n200')
if [ "$body" = "$expected" ]; then
  ok "hello.so answers Host hello.test over HTTP"
else
  fail "hello.so answers Host hello.test over HTTP" "got: $body" "$(tail -5 "$tmp/evserver.log")"
fi
code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H 'Host: other.test' "http://127.0.0.1:$port/")
if [ "$code" = 404 ]; then
  ok "hello.so declines other hosts"
else
  fail "hello.so declines other hosts" "got HTTP $code"
fi

kill -TERM "$server_pid"
if wait "$server_pid"; then ok "evserver stops cleanly with hello.so loaded"; else
  fail "evserver stops cleanly with hello.so loaded" "$(tail -5 "$tmp/evserver.log")"
fi
server_pid=
finish
