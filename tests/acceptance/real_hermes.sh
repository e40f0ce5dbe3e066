#!/usr/bin/env bash
# Acceptance: hermes-tenantd supervising the real Hermes gateway
# (hermes-agent 0.19.0 from PyPI) with its model pointed at a tiny local
# OpenAI-compatible stand-in. Checks: reaches running (capabilities probed),
# a run relayed end to end (numbered SSE events, output, conversation
# record; events carry the daemon's run id), a turn posted to the gateway's
# own API directly becomes searchable through the daemon (history sync),
# restarts after kill -9, stops cleanly (planned stop, nothing left).
# Prints the gateway's start time and RSS.
#
#   tests/acceptance/real_hermes.sh            # builds the daemon (debug)
#   HERMES_VENV=/path/to/venv tests/acceptance/real_hermes.sh   # reuse a venv
#   DAEMON=target/release/hermes-tenantd tests/acceptance/real_hermes.sh
#   sudo AGENT_UID=64123 tests/acceptance/real_hermes.sh   # the agent as its own user
#     (root; venv from /usr/bin/python3 in target/hermes-venv-system so that
#     user can run it; also checks the gateway's uid and the managed scope)
#
# Needs python3 (3.11-3.13), network access to PyPI for the first run
# (~45 s, ~240 MB), curl.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
AGENT_UID="${AGENT_UID:-}"
if [ -n "$AGENT_UID" ]; then
  VENV="${HERMES_VENV:-$ROOT/target/hermes-venv-system}"
  PY="${PYTHON:-/usr/bin/python3}"
else
  VENV="${HERMES_VENV:-$ROOT/target/hermes-venv}"
  PY="${PYTHON:-python3}"
fi
DAEMON="${DAEMON:-$ROOT/target/debug/hermes-tenantd}"
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

if [ ! -x "$VENV/bin/hermes" ]; then
  echo "== installing hermes-agent==0.19.0 aiohttp into $VENV"
  t=$(now_ms)
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q hermes-agent==0.19.0 aiohttp
  echo "   installed in $(( ($(now_ms) - t) / 1000 )) s, $(du -sm "$VENV" | cut -f1) MB"
fi
if [ ! -x "$DAEMON" ]; then
  (cd "$ROOT" && cargo build --bin hermes-tenantd)
fi

STANDIN_PORT=$(free_port); GW_PORT=$(free_port); API_PORT=$(free_port)
TENANT=acceptance
TOKEN="acceptance-credential-0123456789abcdef"

# ---- the model stand-in: /v1/models and a fixed chat completion -----------------
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
MANAGED="$WORK/data/gateway-managed"; MANAGED_MODE=600; AGENT_TOML=""
if [ -n "$AGENT_UID" ]; then
  # The agent reaches its home (and nothing else) in the work dir.
  chmod 711 "$WORK"; chown -R "$AGENT_UID:$AGENT_UID" "$WORK/home"
  MANAGED="$WORK/managed"; MANAGED_MODE=640
  AGENT_TOML="user = \"$AGENT_UID\"
group = \"$AGENT_UID\"
managed_dir = \"$MANAGED\""
fi
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
venv = "$VENV"
hermes_home = "$WORK/home"
port = $GW_PORT
start_timeout = "120s"
stop_grace = "20s"
health_interval = "2s"
backoff_base = "1s"
$AGENT_TOML
[runs]
history_sync_interval = "1s"
TOML

BASE="http://127.0.0.1:$API_PORT/v1/tenant-runtime/$TENANT"
api() { curl -sS -H "Authorization: Bearer $TOKEN" "$@"; }
field() { "$PY" -c "import json,sys; v=json.load(sys.stdin); print(v.get('$1') if not isinstance(v.get('$1'), (dict, list)) else json.dumps(v.get('$1')))"; }
wait_for() { # wait_for SECONDS PYTHON-PREDICATE-ON-v
  local deadline=$(( $(date +%s) + $1 )); local v
  while :; do
    v=$(api "$BASE/agent" 2>/dev/null || true)
    if [ -n "$v" ] && echo "$v" | "$PY" -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if ($2) else 1)" 2>/dev/null; then
      echo "$v"; return 0; fi
    [ "$(date +%s)" -ge "$deadline" ] && { echo "last: $v" >&2; return 1; }
    sleep 0.05
  done
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

echo "== starting the daemon"
T0=$(now_ms)
env -u RUST_LOG TIRITH_ENABLED=false "$DAEMON" run --config "$WORK/config.toml" 2> "$WORK/daemon.log" & DAEMON_PID=$!
v=$(wait_for 150 "v['state'] == 'running'") || fail "never reached running"
T_RUN=$(now_ms)
GW_PID=$(echo "$v" | field pid)
echo "   running: pid $GW_PID, release $(echo "$v" | field release), $(( T_RUN - T0 )) ms after daemon start"
v=$(wait_for 30 "v['capabilities'] is not None") || fail "capabilities never probed"
echo "   capabilities: $(echo "$v" | field capabilities | cut -c1-200)"
sleep 5
RSS1=$(rss_kb "$GW_PID")
echo "   gateway RSS after 5 s idle: $RSS1 KiB"

grep -q "API_SERVER_KEY=" "$MANAGED/.env" || fail "managed .env not written"
[ "$(stat -c %a "$MANAGED/.env")" = "$MANAGED_MODE" ] || fail "managed .env not $MANAGED_MODE"
if [ -n "$AGENT_UID" ]; then
  [ "$(stat -c %u "/proc/$GW_PID")" = "$AGENT_UID" ] || fail "the gateway does not run as $AGENT_UID"
  grep -Eq '^CapEff:\s+0+$' "/proc/$GW_PID/status" || fail "the gateway holds capabilities"
  echo "   gateway runs as uid $AGENT_UID, no capabilities"
fi

echo "== a run through the real gateway's runs API"
T_RUN0=$(now_ms)
RUN=$(api -X POST -H 'Content-Type: application/json' -d '{"input":"ping","platform":"web"}' "$BASE/runs")
RUN_ID=$(echo "$RUN" | field run_id)
[ -n "$RUN_ID" ] && [ "$RUN_ID" != None ] || fail "POST /runs answered $RUN"
# The SSE stream ends after the terminal event.
timeout 120 curl -sS -N -H "Authorization: Bearer $TOKEN" "$BASE/runs/$RUN_ID/events" > "$WORK/events.sse" \
  || fail "event stream did not end: $(tail -c 600 "$WORK/events.sse")"
T_RUN1=$(now_ms)
grep -q '^event: run.completed$' "$WORK/events.sse" || fail "no run.completed: $(tail -c 600 "$WORK/events.sse")"
grep -q '^id: 1$' "$WORK/events.sse" || fail "events are not numbered"
v=$(api "$BASE/runs/$RUN_ID")
echo "$v" | "$PY" -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if v['status']=='completed' and 'pong' in (v.get('output') or '') else 1)" \
  || fail "run did not complete with the model's answer: $v"
hits=$(api "$BASE/conversations/search?q=pong" | "$PY" -c "import json,sys; print(len(json.load(sys.stdin)['items']))")
[ "$hits" -ge 1 ] || fail "the answer is not in the conversation store"
echo "   run $RUN_ID completed in $(( T_RUN1 - T_RUN0 )) ms, $(grep -c '^id: ' "$WORK/events.sse") events, answer recorded"
sed -n 's/^data: //p' "$WORK/events.sse" | RUN_ID="$RUN_ID" "$PY" -c '
import json, os, sys
ours = os.environ["RUN_ID"]
for line in sys.stdin:
    v = json.loads(line)
    g = v.get("gateway_run_id") or ""
    if v.get("run_id") != ours or not g.startswith("run_") or g == ours:
        sys.exit("event ids: " + line[:300])
' || fail "an event does not carry the daemon's run id"
echo "   every event: run_id = $RUN_ID, gateway_run_id = the gateway's"

echo "== a turn sent to the gateway's own API directly is imported by history sync"
GW_KEY=$(sed -n 's/^API_SERVER_KEY=//p' "$MANAGED/.env" | tr -d '"'"'"'')
[ -n "$GW_KEY" ] || fail "no API_SERVER_KEY in the managed .env"
code=$(curl -sS -o "$WORK/direct.json" -w '%{http_code}' -H "Authorization: Bearer $GW_KEY" \
  -H 'Content-Type: application/json' \
  -d '{"model":"hermes-agent","messages":[{"role":"user","content":"flamingo direct question"}]}' \
  "http://127.0.0.1:$GW_PORT/v1/chat/completions")
[ "$code" = 200 ] || fail "direct chat completion answered $code: $(head -c 300 "$WORK/direct.json")"
deadline=$(( $(date +%s) + 60 ))
while :; do
  hits=$(api "$BASE/conversations/search?q=flamingo" | "$PY" -c "import json,sys; print(len(json.load(sys.stdin)['items']))")
  [ "$hits" -ge 1 ] && break
  [ "$(date +%s)" -ge "$deadline" ] && fail "the direct turn was not imported within 60 s"
  sleep 0.5
done
[ "$hits" = 1 ] || fail "the direct turn was imported $hits times"
hits=$(api "$BASE/conversations/search?q=ping" | "$PY" -c "import json,sys; print(len(json.load(sys.stdin)['items']))")
[ "$hits" = 1 ] || fail "the daemon's own run was imported again ($hits hits for its input)"
echo "   direct turn searchable once; the daemon's own run not imported twice"

echo "== an .env change: one restart of the real gateway when idle, then the next run goes through"
OLD=$(api "$BASE/agent" | field pid)
code=$(api -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' -d '{"value":"v1"}' "$BASE/env/ACCEPTANCE_KEY")
[ "$code" = 200 ] || fail "PUT /env answered $code"
deadline=$(( $(date +%s) + 150 ))
until api "$BASE/env" | "$PY" -c "import json,sys; sys.exit(0 if not json.load(sys.stdin)['agent']['pending'] else 1)"; do
  [ "$(date +%s)" -ge "$deadline" ] && fail "the .env change never took effect"
  sleep 0.2
done
v=$(wait_for 60 "v['state'] == 'running'") || fail "not running after the .env restart"
GW_PID=$(echo "$v" | field pid)
[ "$GW_PID" != "$OLD" ] || fail "the gateway was not restarted for the .env change"
grep -q "ACCEPTANCE_KEY=" "$WORK/home/.env" || fail "the key is not in the Hermes .env"
RUN=$(api -X POST -H 'Content-Type: application/json' -d '{"input":"ping again"}' "$BASE/runs")
RUN_ID=$(echo "$RUN" | field run_id)
timeout 120 curl -sS -N -H "Authorization: Bearer $TOKEN" "$BASE/runs/$RUN_ID/events" > /dev/null || fail "stream after the .env restart"
[ "$(api "$BASE/runs/$RUN_ID" | field status)" = completed ] || fail "the run after the .env restart did not complete"
echo "   restarted once (pid $OLD -> $GW_PID), next run completed"

echo "== kill -9 the gateway"
T_KILL=$(now_ms)
kill -9 "$GW_PID"
v=$(wait_for 150 "v['state'] == 'running' and v['pid'] != $GW_PID") || fail "no restart after kill -9"
T_BACK=$(now_ms)
GW2=$(echo "$v" | field pid)
echo "   running again: pid $GW2, $(( T_BACK - T_KILL )) ms after the kill (includes the 1 s backoff), restarts $(echo "$v" | field restarts)"
[ -e "/proc/$GW_PID" ] && fail "old gateway $GW_PID still exists"

echo "== seven restarts in a row: the gateway's own respawn-storm breaker stays off"
T_R0=$(now_ms); PREV=$GW2
for i in 1 2 3 4 5 6 7; do
  code=$(api -o /dev/null -w '%{http_code}' -X POST "$BASE/agent/restart")
  [ "$code" = 202 ] || fail "restart $i answered $code"
  v=$(wait_for 150 "v['state'] == 'running' and v['pid'] != $PREV") || fail "restart $i never came back"
  PREV=$(echo "$v" | field pid)
done
T_R1=$(now_ms)
# hermes-agent 0.19.0 logs this (and sleeps 10 s, 20 s, ...) past 5 starts in 120 s
# unless HERMES_GATEWAY_MAX_STARTS <= 0, which the daemon sets.
grep -q "to break a respawn storm" "$WORK/daemon.log" && fail "the gateway's respawn breaker slowed a restart"
echo "   7 restarts in $(( T_R1 - T_R0 )) ms, no respawn-storm back-off"
GW2=$PREV

echo "== stop"
T_STOP=$(now_ms)
code=$(api -o /dev/null -w '%{http_code}' -X POST "$BASE/agent/stop")
[ "$code" = 202 ] || fail "stop answered $code"
v=$(wait_for 60 "v['state'] == 'stopped'") || fail "never stopped"
T_STOPPED=$(now_ms)
echo "   stopped in $(( T_STOPPED - T_STOP )) ms; last_exit $(echo "$v" | field last_exit)"
echo "$v" | "$PY" -c "import json,sys; v=json.load(sys.stdin); e=v['last_exit']; sys.exit(0 if e['reason']=='planned' and e['signal'] is None else 1)" \
  || fail "stop was not a clean planned exit"
sleep 0.5
[ -e "/proc/$GW2" ] && fail "gateway $GW2 still exists after stop"
left=$( (grep -l "HERMES_MANAGED_DIR=$MANAGED" /proc/[0-9]*/environ 2>/dev/null || true) | wc -l)
[ "$left" = 0 ] || fail "$left gateway process(es) left after stop"

echo "== start again, then a graceful daemon stop takes the gateway down"
api -o /dev/null -X POST "$BASE/agent/start"
v=$(wait_for 150 "v['state'] == 'running'") || fail "no start"
GW3=$(echo "$v" | field pid)
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=""
sleep 0.2
[ -e "/proc/$GW3" ] && fail "gateway $GW3 outlived the daemon's graceful stop"

echo "== figures"
echo "   real gateway start (daemon start -> /health ok): $(( T_RUN - T0 )) ms"
echo "   real gateway RSS idle: $RSS1 KiB"
echo "   kill -9 -> running again (1 s backoff included): $(( T_BACK - T_KILL )) ms"
echo "   planned stop -> stopped: $(( T_STOPPED - T_STOP )) ms"
echo "PASS"
