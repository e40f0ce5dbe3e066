#!/usr/bin/env bash
# Regenerate link/symbol-order.txt: the functions of the daemon's binary that
# run from start through an idle minute, which build.rs asks the linker
# (lld) to place together at the start of .text (see build.rs and
# BENCHMARKS.md, "Idle memory").
#
#   benches/symbol-order.sh [BINARY]    (default target/release/hermes-tenantd)
#   benches/symbol-order.sh --check [BINARY]
#
# Runs BINARY under valgrind's callgrind (Debian package `valgrind`) as
# `run --dev` in a fresh directory (no gateway installed), sends a few
# authenticated requests once it listens (so the request path is placed
# with the rest), lets it idle IDLE_S seconds (default 30: the periodic
# tasks run), dumps, stops it, and writes every function of BINARY that ran.
# Rebuild afterwards (`cargo build --release`). Names are the binary's
# mangled symbols; run it on a build of the current source without the
# list's effect mattering (the order does not change names). A name the
# next build lacks is skipped by the linker, so a stale list only costs
# memory: rerun after large changes and compare with benches/idle.sh.
# `--check` only says how many of the listed names BINARY has (the names
# carry hashes that change with the code, the dependencies' features and
# the toolchain; well under ~90 % means the list is due).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--check" ]; then
    shift
    bin=${1:-$root/target/release/hermes-tenantd}
    list=$root/link/symbol-order.txt
    have=$(comm -12 <(sort -u "$list") <(nm "$bin" | awk 'NF == 3 { print $3 }' | sort -u) | wc -l)
    echo "$have of $(sort -u "$list" | wc -l) listed functions are in $bin"
    exit 0
fi
bin=$(readlink -f "${1:-$root/target/release/hermes-tenantd}")
idle_s=${IDLE_S:-30}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }

work=$(mktemp -d)
vg=""
cleanup() {
    if [ -n "$vg" ] && kill -0 "$vg" 2>/dev/null; then
        kill "$vg" 2>/dev/null || true
        wait "$vg" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

(cd "$work" && HOME="$work" exec valgrind --tool=callgrind --demangle=no \
    --callgrind-out-file="$work/callgrind.out" "$bin" run --dev >"$work/stdout" 2>"$work/stderr") &
vg=$!

# Under valgrind start-up takes tens of seconds.
for _ in $(seq 1 300); do
    grep -q '"listening"\|listening addr' "$work/stderr" 2>/dev/null && break
    kill -0 "$vg" 2>/dev/null || { cat "$work/stderr" >&2; exit 1; }
    sleep 1
done
grep -q 'listening' "$work/stderr" || { echo "the daemon did not start" >&2; exit 1; }
addr=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$work/stderr" | head -1)
tenant=$(sed -n 's/.*tenant_id=\([^ ]*\).*/\1/p' "$work/stderr" | head -1)
token=$(tr -d '\n' <"$work/.tenantd-dev/credential")
for path in version agent; do
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" \
        "http://$addr/v1/tenant-runtime/$tenant/$path" || true
done
curl -fsS -o /dev/null "http://$addr/v1/healthz" || true
sleep "$idle_s"
callgrind_control -d "$vg" >/dev/null 2>&1
sleep 2
kill "$vg"
wait "$vg" 2>/dev/null || true
vg=""

dump=$(ls "$work"/callgrind.out.* | head -1)
python3 - "$dump" "$bin" "$root/link/symbol-order.txt" <<'PY'
import re, sys
dump, binary, out = sys.argv[1:]
objects, names, ran = {}, {}, set()
current_object = None
for line in open(dump, errors="replace"):
    m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, i, name = m.groups()
        if name:
            objects[i] = name
        if kind == "ob":
            current_object = objects.get(i)
        continue
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, i, name = m.groups()
        if name:
            names[i] = name
        if kind == "fn" and current_object == binary:
            ran.add(i)
symbols = sorted({re.sub(r"'\d+$", "", names[i]) for i in ran} - {""})
symbols = [s for s in symbols if not s.startswith(("(", "0x"))]
with open(out, "w") as f:
    f.write("\n".join(symbols) + "\n")
print(f"{len(symbols)} functions written to {out}")
PY
