#!/usr/bin/env bash
# Contract fuzzing: schemathesis (all phases, stateful included) against the
# real daemon, once with the Unicode codec and once with ASCII. Any failure
# fails the run. Installs schemathesis into a venv (target/schemathesis-venv,
# or $SCHEMATHESIS_VENV) the way tests/deploy/run.sh installs Ansible.
# Binary: $HERMES_TENANTD_BIN, else `cargo build` (debug, reused when warm).
# Examples per operation: $ST_EXAMPLES (default 50); seed: $ST_SEED (fixed,
# so a run is repeatable; one worker, so the daemon sees requests in the
# same order). Two to three minutes per codec on a shared 2-core box, most
# of it the coverage phase (max-examples does not bound that one).
# Operations excused from one check, and why: tests/schemathesis/schemathesis.toml.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
say() { printf '== schemathesis: %s\n' "$*"; }

VENV=${SCHEMATHESIS_VENV:-$REPO/target/schemathesis-venv}
# Pinned: a new release may add checks or change generation, and the run
# must be repeatable (docs/testing.md says which version was checked).
ST_VERSION=4.32.5
if [[ ! -x $VENV/bin/st || $("$VENV/bin/st" --version 2>/dev/null) != *" $ST_VERSION" ]]; then
  say "installing schemathesis $ST_VERSION into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi

BIN=${HERMES_TENANTD_BIN:-}
if [[ -z $BIN ]]; then
  cargo build --locked --quiet --bin hermes-tenantd
  BIN=$REPO/target/debug/hermes-tenantd
fi

WORK=$(mktemp -d)
PID=
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

TENANT=tenant-st
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
umask 077
printf '%s' "$TOKEN" >"$WORK/credential"
mkdir -p "$WORK/home/skills" "$WORK/workspace"
cat >"$WORK/config.toml" <<TOML
tenant_id = "$TENANT"
data_dir = "$WORK/data"

[listen]
addr = "127.0.0.1:0"

[auth]
credential_file = "$WORK/credential"

[gateway]
command = "/bin/false"
hermes_home = "$WORK/home"

# The gateway never starts (/bin/false): runs stay queued. Room for every
# run the fuzzer submits, so it is not slowed by 429 + Retry-After waits.
[runs]
queue_depth = 10000

[log]
format = "json"
level = "warn,hermes_tenantd=info"

[[files.roots]]
name = "workspace"
path = "$WORK/workspace"
TOML
# The document's tenantId is any id; this VM serves one. Pin it in a copy
# of the document (not with a parameter override, which would also send
# the valid id where a negative test means an invalid one).
sed "s|schema: {type: string, pattern: '^\[A-Za-z0-9\]\[A-Za-z0-9._-\]{0,127}\$'}|schema: {type: string, enum: [$TENANT]}|" \
  schema/openapi.yaml >"$WORK/openapi.yaml"
grep -q "enum: \[$TENANT\]" "$WORK/openapi.yaml" || { say "cannot pin tenantId in the document"; exit 1; }
cp tests/schemathesis/schemathesis.toml "$WORK/schemathesis.toml"

# The daemon reads HERMES_TENANTD_* as config overrides: hand it none of
# the caller's (this script's own HERMES_TENANTD_BIN would be `bin`).
own=()
for v in $(compgen -e | grep '^HERMES_TENANTD_' || true); do own+=(-u "$v"); done
env "${own[@]}" "$BIN" run --config "$WORK/config.toml" 2>"$WORK/daemon.log" &
PID=$!
ADDR=
for _ in $(seq 300); do
  ADDR=$(sed -n 's/.*"message":"listening".*"addr":"\([^"]*\)".*/\1/p' "$WORK/daemon.log" | head -1)
  [[ -n $ADDR ]] && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/daemon.log"; exit 1; }
  sleep 0.1
done
[[ -n $ADDR ]] || { say "daemon did not start"; cat "$WORK/daemon.log"; exit 1; }

status=0
for codec in utf-8 ascii; do
  say "codec $codec against http://$ADDR"
  # From the temp dir: schemathesis keeps a crash cache in its working
  # directory, which must not land in the tree.
  (cd "$WORK" && "$VENV/bin/st" --config-file "$WORK/schemathesis.toml" run "$WORK/openapi.yaml" \
    --url "http://$ADDR" \
    --header "Authorization: Bearer $TOKEN" \
    --phases examples,coverage,fuzzing,stateful \
    --generation-codec "$codec" \
    --max-examples "${ST_EXAMPLES:-50}" \
    --seed "${ST_SEED:-20261206}" \
    --workers 1 \
    --rate-limit auto \
    --no-color \
    --output-sanitize true \
    --generation-database none) || status=1
done
if grep -q '"level":"ERROR"' "$WORK/daemon.log"; then
  say "the daemon logged errors:"
  grep '"level":"ERROR"' "$WORK/daemon.log" | head -20
  status=1
fi
exit $status
