#!/usr/bin/env bash
# Acceptance (issue 14): the hub's agent policy and an MCP connection,
# through hermes-tenantd, against the real Hermes gateway (hermes-agent
# 0.19.0 with its `mcp` extra) and a local model stand-in that records what
# the gateway sends it. Checks:
#   * an enforced model.default is the model the stand-in receives, after
#     the tenant's PATCH is refused and even with the tenant's own
#     config.yaml naming another model;
#   * an MCP server (tests/fake_mcp_server.py, Streamable HTTP) registered
#     with PUT /connections/{name} gets the token from the env key its
#     header references, and its tool is offered to the model in the next
#     run; DELETE takes the tool away.
#
#   tests/acceptance/policy_mcp.sh
#   HERMES_VENV=/path/to/venv tests/acceptance/policy_mcp.sh   # reuse a venv
#
# Needs python3 (3.11-3.13), PyPI for the first run (hermes-agent[mcp]==0.19.0
# aiohttp into target/hermes-venv-mcp), curl.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${HERMES_VENV:-$ROOT/target/hermes-venv-mcp}"
PY="${PYTHON:-python3}"
DAEMON="${DAEMON:-$ROOT/target/debug/hermes-tenantd}"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log (tail) ---" >&2; tail -30 "$WORK/daemon.log" >&2 || true; exit 1; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ ! -x "$VENV/bin/hermes" ] || ! "$VENV/bin/python" -c 'import mcp' 2>/dev/null; then
  echo "== installing hermes-agent[mcp]==0.19.0 aiohttp into $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "hermes-agent[mcp]==0.19.0" aiohttp
fi
[ -x "$DAEMON" ] || (cd "$ROOT" && cargo build --bin hermes-tenantd)

MODEL_PORT=$(free_port); MCP_PORT=$(free_port); GW_PORT=$(free_port); API_PORT=$(free_port)
TENANT=acceptance
TOKEN="acceptance-credential-0123456789abcdef"
MCP_TOKEN="mcp-token-$RANDOM$RANDOM"

# ---- the model stand-in (records {model, tools} of every chat request) --------
"$PY" "$ROOT/tests/acceptance/model_standin.py" "$MODEL_PORT" "$WORK/model.jsonl" & PIDS+=($!)
"$PY" "$ROOT/tests/fake_mcp_server.py" "$MCP_PORT" "$WORK/mcp.jsonl" & PIDS+=($!)

mkdir -p "$WORK/home"
cat > "$WORK/home/config.yaml" <<YAML
model:
  provider: custom
  base_url: http://127.0.0.1:$MODEL_PORT/v1
  default: tenant-model
  api_key: standin-key
security:
  tirith_enabled: false
YAML
printf '%s' "$TOKEN" > "$WORK/credential"; chmod 600 "$WORK/credential"
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
health_interval = "2s"
TOML

BASE="http://127.0.0.1:$API_PORT/v1/tenant-runtime/$TENANT"
api() { curl -sS -H "Authorization: Bearer $TOKEN" "$@"; }
json() { api -H 'Content-Type: application/json' "$@"; }
pyq() { "$PY" -c "import json,sys; v=json.load(sys.stdin); $1"; }
until_ok() { # until_ok SECONDS WHAT COMMAND...
  local deadline=$(( $(date +%s) + $1 )); local what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && fail "$what"
    sleep 0.2
  done
}
agent_running() { api "$BASE/agent" | pyq "sys.exit(0 if v['state']=='running' else 1)"; }
pid() { api "$BASE/agent" | pyq "print(v['pid'])"; }
run() { # one run through the daemon; waits for its end
  local id
  id=$(json -X POST -d "{\"input\":\"$1\"}" "$BASE/runs" | pyq "print(v['run_id'])")
  timeout 180 curl -sS -N -H "Authorization: Bearer $TOKEN" "$BASE/runs/$id/events" > /dev/null || fail "run $1 did not end"
  [ "$(api "$BASE/runs/$id" | pyq "print(v['status'])")" = completed ] || fail "run $1 did not complete"
}
last_request() { tail -n 1 "$WORK/model.jsonl"; }

echo "== starting the daemon with the real gateway"
env -u RUST_LOG TIRITH_ENABLED=false "$DAEMON" run --config "$WORK/config.toml" 2> "$WORK/daemon.log" & PIDS+=($!)
until_ok 150 "never reached running" agent_running

echo "== an enforced model.default wins over the tenant's"
code=$(json -o /dev/null -w '%{http_code}' -X PUT -d '{"version":1,"enforced":{"model.default":"enforced-model"}}' "$BASE/agent-policy")
[ "$code" = 200 ] || fail "PUT /agent-policy answered $code"
code=$(json -o "$WORK/patch.json" -w '%{http_code}' -X PATCH -d '{"model.default":"tenant-patched"}' "$BASE/settings")
[ "$code" = 403 ] && grep -q policy_enforced "$WORK/patch.json" || fail "PATCH of an enforced key answered $code"
# The tenant's own file names another model (edited behind the API's back).
sed -i 's/default: tenant-model/default: tenant-edited/' "$WORK/home/config.yaml"
run "which model"
last_request | pyq "sys.exit(0 if v['model']=='enforced-model' else 'model sent: ' + str(v['model']))" \
  || fail "the model did not receive the enforced model"
echo "   the model received model=enforced-model"

echo "== an MCP connection with its token from an env key"
code=$(json -o /dev/null -w '%{http_code}' -X PUT -d "{\"value\":\"$MCP_TOKEN\"}" "$BASE/env/FLAMINGO_TOKEN")
[ "$code" = 200 ] || fail "PUT /env answered $code"
code=$(json -o "$WORK/conn.json" -w '%{http_code}' -X PUT \
  -d "{\"transport\":\"http\",\"url\":\"http://127.0.0.1:$MCP_PORT/mcp\",\"headers\":{\"Authorization\":\"Bearer \${FLAMINGO_TOKEN}\"}}" \
  "$BASE/connections/flamingo")
[ "$code" = 202 ] || fail "PUT /connections answered $code: $(cat "$WORK/conn.json")"
grep -q "$MCP_TOKEN" "$WORK/data/gateway-managed/config.yaml" && fail "the token is in the managed config.yaml"
conn_loaded() { api "$BASE/connections" | pyq "sys.exit(0 if any(c['name']=='flamingo' and c['status']=='loaded' for c in v['connections']) else 1)"; }
until_ok 180 "the connection never loaded" conn_loaded
until_ok 60 "not running after the restart" agent_running
until_ok 60 "the MCP server never saw the token" grep -q "Bearer $MCP_TOKEN" "$WORK/mcp.jsonl"
grep -q '"tools/list"' "$WORK/mcp.jsonl" || fail "the gateway never listed the MCP server's tools"
run "use the flamingo tool"
last_request | pyq "sys.exit(0 if any('lookup_flamingo' in (t or '') for t in v['tools']) else 'tools: ' + str(v['tools']))" \
  || fail "the MCP tool was not offered to the model"
echo "   the gateway connected with the env token; the model was offered $(last_request | pyq "print([t for t in v['tools'] if 'flamingo' in t])")"

echo "== a server the gateway cannot reach is reported failed, with the error it logged"
DEAD_PORT=$(free_port)
code=$(json -o /dev/null -w '%{http_code}' -X PUT -d "{\"transport\":\"http\",\"url\":\"http://127.0.0.1:$DEAD_PORT/mcp\"}" "$BASE/connections/dead")
[ "$code" = 202 ] || fail "PUT /connections/dead answered $code"
conn_failed() { api "$BASE/connections" | pyq "sys.exit(0 if any(c['name']=='dead' and c['status']=='failed' for c in v['connections']) else 1)"; }
T_DEAD=$(date +%s)
until_ok 300 "the unreachable server never showed failed: $(api "$BASE/connections")" conn_failed
echo "   dead: $(api "$BASE/connections" | pyq "print([c.get('error') for c in v['connections'] if c['name']=='dead'][0])") ($(( $(date +%s) - T_DEAD )) s)"
code=$(api -o /dev/null -w '%{http_code}' -X DELETE "$BASE/connections/dead")
[ "$code" = 202 ] || fail "DELETE /connections/dead answered $code"
until_ok 180 "flamingo never loaded again" conn_loaded

echo "== deleting the connection takes the tool away"
OLD=$(pid)
code=$(api -o /dev/null -w '%{http_code}' -X DELETE "$BASE/connections/flamingo")
[ "$code" = 202 ] || fail "DELETE /connections answered $code"
restarted() { [ "$(pid)" != "$OLD" ] && agent_running; }
until_ok 180 "the gateway never restarted without the connection" restarted
grep -q flamingo "$WORK/data/gateway-managed/config.yaml" && fail "the connection is still in the managed config.yaml"
run "and now"
last_request | pyq "sys.exit(0 if not any('flamingo' in (t or '') for t in v['tools']) else 'tools: ' + str(v['tools']))" \
  || fail "the MCP tool is still offered after DELETE"
echo "   after DELETE the model is no longer offered the tool"
echo "PASS"
