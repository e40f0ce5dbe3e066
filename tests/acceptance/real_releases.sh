#!/usr/bin/env bash
# Acceptance (issue 15): the real hermes-agent 0.19.0 as a release, installed
# by the daemon through the API from a package source, activated behind the
# health gate (with its smoke run: a real turn through the model stand-in),
# a turn run through it; then a broken release (its entry point
# exits 1, the shape of a bad entry point) is activated and rolled back by
# itself, and runs work again.
#
#   tests/acceptance/real_releases.sh
#   WHEELS=/path/to/wheelhouse tests/acceptance/real_releases.sh   # offline
#   INDEX_URL=https://pypi.org/simple tests/acceptance/real_releases.sh
#
# By default a wheelhouse is made once in target/wheels-hermes-0.19.0
# (`pip download hermes-agent==0.19.0 aiohttp`, needs PyPI) and the daemon
# installs from it with --find-links (no index). Needs python3 (3.11-3.13), curl.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-python3}"
DAEMON="${DAEMON:-$ROOT/target/debug/hermes-tenantd}"
WHEELS="${WHEELS:-$ROOT/target/wheels-hermes-0.19.0}"
INDEX_URL="${INDEX_URL:-}"
WORK="$(mktemp -d)"
DAEMON_PID="" STANDIN_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  [ -n "$STANDIN_PID" ] && kill "$STANDIN_PID" 2>/dev/null || true
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log (tail) ---" >&2; tail -40 "$WORK/daemon.log" >&2 || true; exit 1; }
now_ms() { date +%s%3N; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
jget() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

if [ -z "$INDEX_URL" ] && ! ls "$WHEELS"/hermes_agent-0.19.0-*.whl >/dev/null 2>&1; then
  echo "== wheelhouse: pip download hermes-agent==0.19.0 aiohttp -> $WHEELS"
  "$PY" -m pip download -q -d "$WHEELS" hermes-agent==0.19.0 aiohttp
fi
[ -x "$DAEMON" ] || (cd "$ROOT" && cargo build --bin hermes-tenantd)

STANDIN_PORT=$(free_port); GW_PORT=$(free_port); API_PORT=$(free_port)
TENANT=acceptance
TOKEN="acceptance-credential-0123456789abcdef"
BASE="http://127.0.0.1:$API_PORT/v1/tenant-runtime/$TENANT"
api() { curl -sS -H "Authorization: Bearer $TOKEN" "$@"; }

# The model stand-in (as tests/acceptance/real_hermes.sh): a fixed "pong".
cp "$ROOT/tests/acceptance/model_standin.py" "$WORK/standin.py"
"$PY" "$WORK/standin.py" "$STANDIN_PORT" & STANDIN_PID=$!

mkdir -p "$WORK/home"
cat > "$WORK/home/config.yaml" <<YAML
model:
  provider: custom
  base_url: http://127.0.0.1:$STANDIN_PORT/v1
  default: standin
  api_key: standin-key
security:
  tirith_enabled: false
YAML
printf '%s' "$TOKEN" > "$WORK/credential"; chmod 600 "$WORK/credential"
SOURCE="find_links = \"$WHEELS\""
[ -n "$INDEX_URL" ] && SOURCE="index_url = \"$INDEX_URL\""
cat > "$WORK/config.toml" <<TOML
tenant_id = "$TENANT"
data_dir = "$WORK/data"
[listen]
addr = "127.0.0.1:$API_PORT"
[auth]
credential_file = "$WORK/credential"
[log]
format = "json"
[gateway]
command = "hermes gateway run --external-supervisor"
hermes_home = "$WORK/home"
port = $GW_PORT
start_timeout = "120s"
stop_grace = "20s"
health_interval = "2s"
backoff_base = "1s"
[releases]
$SOURCE
gate_timeout = "150s"
smoke_input = "Say hello."
smoke_timeout = "120s"
min_free_bytes = 600000000
TOML
env -u RUST_LOG "$DAEMON" run --config "$WORK/config.toml" >"$WORK/daemon.log" 2>&1 & DAEMON_PID=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$API_PORT/v1/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

state_of() { api "$BASE/agent/releases" | jget "next((r['state'] for r in d['releases'] if r['version']=='$1'), '')"; }
wait_state() { # version state... timeout_s
  local v=$1 t=$2; shift 2
  for _ in $(seq $((t * 2))); do
    s=$(state_of "$v"); for want in "$@"; do [ "$s" = "$want" ] && { echo "$s"; return 0; }; done
    sleep 0.5
  done
  fail "release $v never reached $* (last: $s): $(api "$BASE/agent/releases")"
}
run_turn() {
  local run id
  run=$(api -X POST -H 'Content-Type: application/json' -d '{"input":"ping","platform":"web"}' "$BASE/runs")
  id=$(echo "$run" | jget "d.get('run_id') or d.get('id')")
  for _ in $(seq 240); do
    st=$(api "$BASE/runs/$id" | jget "d['status']")
    case "$st" in completed) echo "$id"; return 0;; failed|cancelled) fail "run $id $st: $(api "$BASE/runs/$id")";; esac
    sleep 0.5
  done
  fail "run $id did not complete"
}

echo "== POST /agent/releases {version: 0.19.0} (install from $([ -n "$INDEX_URL" ] && echo "$INDEX_URL" || echo "$WHEELS"))"
t=$(now_ms)
code=$(api -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d '{"version":"0.19.0"}' "$BASE/agent/releases")
[ "$code" = 202 ] || fail "POST /agent/releases answered $code"
wait_state 0.19.0 600 ready >/dev/null
echo "   ready in $(( ($(now_ms) - t) / 1000 )) s; $(api "$BASE/agent/releases" | jget "[(r['version'], r['size']) for r in d['releases']]")"
[ -x "$WORK/data/releases/0.19.0/bin/hermes" ] || fail "no bin/hermes in the release"
v=$("$WORK/data/releases/0.19.0/bin/hermes" --version 2>&1 || true); echo "   hermes --version: $(echo "$v" | head -1)"

echo "== activate 0.19.0 behind the gate"
t=$(now_ms)
api -o /dev/null -X POST "$BASE/agent/releases/0.19.0/activate"
wait_state 0.19.0 300 active >/dev/null
echo "   active in $(( ($(now_ms) - t) / 1000 )) s; agent: $(api "$BASE/agent" | jget "(d['state'], d['release'])")"
grep -q "smoke run of the health gate completed" "$WORK/daemon.log" || fail "the gate passed without its smoke run"
echo "   $(grep "smoke run of the health gate completed" "$WORK/daemon.log" | tail -1 | cut -c1-200)"
id=$(run_turn); echo "   a turn through 0.19.0 completed: $id"

echo "== a broken release (entry point exits 1), activated: rolled back by itself"
mkdir -p "$WORK/data/releases/0.19.1/bin"
printf '#!/bin/sh\necho "broken entry point" >&2\nexit 1\n' > "$WORK/data/releases/0.19.1/bin/hermes"
chmod 755 "$WORK/data/releases/0.19.1/bin/hermes"
code=$(api -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d '{"version":"0.19.1"}' "$BASE/agent/releases")
[ "$code" = 202 ] || fail "POST 0.19.1 answered $code"
t=$(now_ms)
api -o /dev/null -X POST "$BASE/agent/releases/0.19.1/activate"
wait_state 0.19.1 300 failed quarantined >/dev/null
for _ in $(seq 300); do
  a=$(api "$BASE/agent"); [ "$(echo "$a" | jget "(d['state'], d['release'])")" = "('running', '0.19.0')" ] && break; sleep 0.5
done
echo "   rolled back in $(( ($(now_ms) - t) / 1000 )) s; 0.19.1: $(api "$BASE/agent/releases" | jget "[(r['state'], r['last_error']) for r in d['releases'] if r['version']=='0.19.1']")"
[ "$(state_of 0.19.0)" = active ] || fail "0.19.0 is not active again"
[ "$(readlink "$WORK/data/releases/current")" = "$WORK/data/releases/0.19.0" ] || fail "current does not point at 0.19.0"
id=$(run_turn); echo "   a turn after the rollback completed: $id"
echo "PASS"
