#!/bin/bash
# Plugins see only the evs_host table: the evserver executable exports no symbol of its own
# (no evs__ internals a plugin could link against and come to depend on).
set -euo pipefail
bin=${EVS_BUILD_DIR:?}/evserver
# Dynamic symbols the executable defines; the sanitizer runtimes, when linked in, export their
# own (__asan_*, __ubsan_*, interceptors), which are not ours.
ours=$(nm -D --defined-only "$bin" | awk '{print $NF}' | grep -E '^(evs|EVS)' || true)
if [ -n "$ours" ]; then
  echo "evserver exports internal symbols:" >&2
  echo "$ours" | head -20 >&2
  echo "($(echo "$ours" | wc -l) in all)" >&2
  exit 1
fi
# And the check itself can fail: evscore's objects do define evs__ functions.
# (grep -c reads all of nm's output: with -q, nm could die of SIGPIPE and pipefail would fail.)
[ "$(nm --defined-only "$bin" | grep -c ' evs__')" -gt 0 ] || { echo "no evs__ symbols at all: is $bin stripped?" >&2; exit 1; }
echo "ok: no evs symbols exported by $bin"
