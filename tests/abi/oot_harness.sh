# tests/abi/oot_harness.sh: what the out-of-tree tests share, sourced by them after they set
# oot_name: the build and source directories from ctest's environment, a temporary directory
# ($tmp, with $prefix inside it) removed at exit unless EVS_KEEP_TMP=1, the server started as
# $server_pid stopped at exit, and the reporting helpers ok, fail, finish and stop_here.

build=${EVS_BUILD_DIR:?set EVS_BUILD_DIR to the cmake build directory}
src=${EVS_SOURCE_DIR:?set EVS_SOURCE_DIR to the evserver source directory}
tmp=$(mktemp -d "/tmp/evs-${oot_name:?}-XXXXXX")
prefix=$tmp/prefix
server_pid=

cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "${EVS_KEEP_TMP:-}" = 1 ]; then echo "kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() {
  echo "FAIL $1"
  shift
  for line in "$@"; do printf '     %s\n' "$line"; done
  failed=$((failed + 1))
}
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && exit 0
  exit 1
}
# The rest of the checks need what a failed step would have produced.
stop_here() {
  fail "$@"
  finish
}
