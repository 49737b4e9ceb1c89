#!/usr/bin/env bash
# tests/abi/test_out_of_tree_crypto.sh: the typed crypto and auth calls of ABI 1.6, from a third
# party's side. Installs the build into a temporary prefix, builds tests/abi/oot-crypto from a
# copy outside the source tree against ONLY the installed header (through the installed
# evserver.pc), runs the installed evserver with the installed enclave plugin and enclave, and
# checks that the plugin encrypts a value and decrypts it back, round-trips a file, and checks
# API keys created with evctl.
#
# Run by ctest with EVS_BUILD_DIR and EVS_SOURCE_DIR set. Prints "N passed, M failed" and exits
# non-zero on failure. EVS_KEEP_TMP=1 keeps the temporary directory.
set -euo pipefail

oot_name=ootc
# shellcheck source=oot_harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/oot_harness.sh"
# expect NAME WANT GOT [context...]
expect() {
  local name=$1 want=$2 got=$3
  shift 3
  if [ "$got" = "$want" ]; then ok "$name"; else fail "$name" "want: $want" "got:  $got" "$@"; fi
}

# ---- 1. install, and find what the plugin builds against -------------------------------------
stage=$tmp/stage
DESTDIR=$stage cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
  stop_here "cmake --install $build --prefix $prefix" "$(tail -5 "$tmp/install.log")"
[ -d "$stage$prefix" ] || stop_here "cmake --install installs under the prefix"
mv "$stage$prefix" "$prefix"
pcs=$(find "$prefix" -name evserver.pc)
[ "$(printf '%s\n' "$pcs" | grep -c .)" -eq 1 ] || stop_here "exactly one evserver.pc" "${pcs:-none}"
export PKG_CONFIG_PATH=$(dirname "$pcs") PKG_CONFIG_LIBDIR=$(dirname "$pcs")
plugindir=$(pkg-config --variable=plugindir evserver)
enclave_bin=$(find "$prefix" -name evserver-enclave -type f | head -1)
evserver=$prefix/bin/evserver
evctl=$prefix/bin/evctl
[ -x "$evserver" ] && [ -x "$evctl" ] || stop_here "evserver and evctl installed under $prefix/bin"
[ -n "$enclave_bin" ] && [ -f "$plugindir/enclave.so" ] ||
  stop_here "the enclave plugin and evserver-enclave are installed" "plugindir: $(ls "$plugindir")"

# ---- 2. build the plugin from a copy, against the installed header ---------------------------
demo=$tmp/oot-crypto
cp -R "$src/tests/abi/oot-crypto" "$demo"
rm -f "$demo/crypto_demo.so"
make -C "$demo" >"$tmp/make.log" 2>&1 ||
  stop_here "make builds crypto_demo.so with -Werror and -z defs" "$(cat "$tmp/make.log")"
ok "make builds crypto_demo.so with -Werror and -z defs"
used=$(cd "$demo" && cc $(pkg-config --cflags evserver) -M crypto_demo.c | tr ' \\' '\n\n' |
  grep 'evs_plugin\.h$' || true)
installed=$(find "$prefix" -name evs_plugin.h)
if [ -n "$used" ] && [ "$(realpath "$used")" = "$(realpath "$installed")" ]; then
  ok "crypto_demo.c compiles against the installed header only"
else
  fail "crypto_demo.c compiles against the installed header only" "used: '$used'" "installed: '$installed'"
fi
if grep -rq 'evs_enclave_proto\|evs_ep_' "$demo"; then
  fail "crypto_demo.c knows nothing of the enclave protocol"
else
  ok "crypto_demo.c knows nothing of the enclave protocol"
fi
plugins=$tmp/plugins.d
mkdir -p "$plugins"
cp "$plugindir/enclave.so" "$demo/crypto_demo.so" "$plugins/"

# ---- 3. run the installed evserver with the enclave plugin -----------------------------------
read -r port api_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
mkdir -p "$tmp/state" "$tmp/creds"
chmod 700 "$tmp/creds"
cat >"$tmp/evserver.conf" <<EOF
[server]
workers = 1
state_dir = $tmp/state
plugins_dir = $plugins
[admin]
socket = $tmp/admin.sock
[listener "http"]
address = 127.0.0.1:$port
[listener "api"]
address = 127.0.0.1:$api_port
[plugin "enclave"]
enclave_binary = $enclave_bin
credentials_dir = $tmp/creds
EOF
"$evserver" -c "$tmp/evserver.conf" >"$tmp/evserver.log" 2>&1 &
server_pid=$!
up=0
for _ in $(seq 1 200); do
  if curl -sf --unix-socket "$tmp/admin.sock" http://localhost/status >/dev/null 2>&1; then
    up=1
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[ "$up" = 1 ] || stop_here "the installed evserver starts with enclave.so and crypto_demo.so" \
  "$(tail -20 "$tmp/evserver.log")"

evctl_json() { "$evctl" --socket "$tmp/admin.sock" --json "$@"; }
jget() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
app_json=$(evctl_json app create) || stop_here "evctl app create" "$app_json"
app=$(printf '%s' "$app_json" | jget appId)
printf '%s' "$app_json" | jget appToken >"$tmp/creds/evserver-app-$app"
chmod 600 "$tmp/creds/evserver-app-$app"
key=$(evctl_json key create "$app" --permissions relay:inbound-mtls | jget apiKey) ||
  stop_here "evctl key create"
other_key=$(evctl_json key create "$app" --permissions api:decrypt | jget apiKey) ||
  stop_here "evctl key create (another permission)"

# req METHOD PATH [curl args...]: prints the body, then the HTTP status on its own line.
req() {
  local method=$1 path=$2
  shift 2
  curl -sS --max-time 20 -X "$method" -H 'Host: crypto.test' -w '\n%{http_code}' "$@" \
    "http://127.0.0.1:$port$path"
}
body_of() { printf '%s' "$1" | sed '$d'; }
code_of() { printf '%s' "$1" | tail -n 1; }

# ---- 4. encrypt_values / decrypt_values ------------------------------------------------------
value='  whitespace kept, "quoted" and ünïcode  '
r=$(req POST "/encrypt?app=$app" --data-binary "$value")
ev=$(body_of "$r")
expect "encrypt_values answers 200" 200 "$(code_of "$r")" "$ev" "$(tail -5 "$tmp/evserver.log")"
if printf '%s' "$ev" | grep -Eq '^ev:[A-Za-z0-9+/=_:-]+:\$$'; then
  ok "encrypt_values returns an ev: string"
else
  fail "encrypt_values returns an ev: string" "got: $ev"
fi
r=$(req POST "/decrypt?app=$app" --data-binary "$ev")
expect "decrypt_values gives the exact string back (EVS_CRYPTO_STRING_EXACT)" \
  "string:$value" "$(body_of "$r")"
r=$(req POST "/decrypt?app=$app" --data-binary "${ev%??}xx:\$")
expect "a tampered value gets EVS_CRYPTO_E_DECRYPT or _INVALID" 502 "$(code_of "$r")" "$(body_of "$r")"
case "$(body_of "$r")" in
  "status -5 decrypt" | "status -6 invalid") ok "the failed value's status is named" ;;
  *) fail "the failed value's status is named" "got: $(body_of "$r")" ;;
esac
r=$(req POST "/encrypt?app=app_000000000000" --data-binary x)
expect "an unknown app gets EVS_CRYPTO_E_NO_APP" "status -3 no-app" "$(body_of "$r")"

# ---- 5. encrypt_file / decrypt_file ----------------------------------------------------------
head -c 70000 /dev/urandom >"$tmp/file.bin"
curl -sS --max-time 20 -H 'Host: crypto.test' --data-binary "@$tmp/file.bin" -D "$tmp/file.head" \
  -o "$tmp/file.out" "http://127.0.0.1:$port/file?app=$app"
if cmp -s "$tmp/file.bin" "$tmp/file.out"; then
  ok "encrypt_file then decrypt_file gives the file back"
else
  fail "encrypt_file then decrypt_file gives the file back" "$(head -c 200 "$tmp/file.out")"
fi
expect "the %EVENC file is the plaintext plus 75 bytes" 70075 \
  "$(tr -d '\r' <"$tmp/file.head" | awk -F': ' 'tolower($1) == "x-encrypted-length" {print $2}')"

# ---- 6. check_api_key ------------------------------------------------------------------------
r=$(req GET "/check?perm=relay:inbound-mtls" -H "api-key: $key")
expect "check_api_key accepts the key and names its app" "$app
200" "$r"
r=$(req GET "/check?perm=relay:inbound-mtls" -H "api-key: $other_key")
expect "check_api_key refuses a key without the permission (-EACCES)" 401 "$(code_of "$r")" "$r"
r=$(req GET "/check?perm=relay:inbound-mtls" -H "api-key: ${key%?}x")
expect "check_api_key refuses a wrong key" 401 "$(code_of "$r")" "$r"

kill -TERM "$server_pid"
if wait "$server_pid"; then ok "evserver stops cleanly"; else
  fail "evserver stops cleanly" "$(tail -5 "$tmp/evserver.log")"
fi
server_pid=
finish
