#!/usr/bin/env bash
# Deployment tests for systemd/ and ansible/, against a real systemd.
#
#   sudo tests/deploy/run.sh          # everything (a few minutes)
#   sudo tests/deploy/run.sh --fast   # no ansible-lint, no canary, no watchdog test
#   tests/deploy/run.sh --needs       # say what a run would install here; installs nothing
#
# Needs root (systemd-nspawn). Installs what it lacks: apt `systemd`,
# `systemd-container`, `python3-venv`, `curl`, `binutils`; a venv with
# ansible-core and ansible-lint (target/deploy-venv, or $DEPLOY_VENV).
# Binary: $HERMES_TENANTD_BIN, else `cargo build` (debug, reused when warm),
# stripped into a staging directory.
#
# Steps on the host: systemd-analyze verify (any stderr output fails),
# sysusers/tmpfiles dry run, the exposure score (systemd-analyze security
# --offline=yes, must stay <= 2.5), ansible-lint. Then systemd boots as PID 1
# in a container sharing this machine's /usr (volatile overlay) and
# tests/deploy/in-container.sh runs the systemd and Ansible scenarios there.
# Results: one "ok"/"not ok" line per check; artefacts under $OUT.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FAST=0
NEEDS=0
for a in "$@"; do
  case $a in
    --fast) FAST=1 ;;
    --needs) NEEDS=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
# ---- prerequisites ----------------------------------------------------------
apt_missing=()
command -v systemd-nspawn >/dev/null || apt_missing+=(systemd-container)
command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || apt_missing+=(python3-venv)
command -v curl >/dev/null || apt_missing+=(curl)
command -v strip >/dev/null || apt_missing+=(binutils)
VENV=${DEPLOY_VENV:-$REPO/target/deploy-venv}
if ((NEEDS)); then
  # What a run would install, said before anything needs root (scripts/test-all).
  ((${#apt_missing[@]})) && echo "apt-get install ${apt_missing[*]} (as root)"
  [[ -x $VENV/bin/ansible-playbook && -x $VENV/bin/ansible-lint ]] ||
    echo "a Python venv with ansible-core and ansible-lint in $VENV (pip, about 1 minute)"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  # CI runs this as root and must not skip; elsewhere a skip is not a failure.
  if [[ ${CI:-} == true ]]; then echo "run.sh: needs root (systemd-nspawn)" >&2; exit 2; fi
  echo "run.sh: SKIPPED (needs root for systemd-nspawn; run with sudo)" >&2
  exit 0
fi

OUT=${DEPLOY_OUT:-$(mktemp -d /var/tmp/hermes-deploy-test.XXXXXX)}
mkdir -p "$OUT/out" "$OUT/stage"
START=$(date +%s)
FAILS=0
say() { printf '== %s\n' "$*"; }
ok() { echo "ok $1"; echo "ok $1" >>"$OUT/host-results"; }
notok() { echo "not ok $1 # ${2:-}"; echo "not ok $1 # ${2:-}" >>"$OUT/host-results"; FAILS=$((FAILS + 1)); }

if ((${#apt_missing[@]})); then
  say "apt-get install ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
# /usr/bin/python3: the container sees the host's /usr only.
if [[ ! -x $VENV/bin/ansible-playbook || ! -x $VENV/bin/ansible-lint ]]; then
  say "creating $VENV (ansible-core, ansible-lint)"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q ansible-core ansible-lint
fi

# ---- releases under test ----------------------------------------------------
BIN=${HERMES_TENANTD_BIN:-}
if [[ -z $BIN ]]; then
  say "cargo build --bin hermes-tenantd"
  (cd "$REPO" && cargo build --quiet --bin hermes-tenantd)
  BIN=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/hermes-tenantd
fi
STAGE=$OUT/stage
mkdir -p "$STAGE/v0" "$STAGE/v1" "$STAGE/bad"
# Stripped: same code, 20 MB instead of 130 MB to copy around.
strip -o "$STAGE/v0/hermes-tenantd" "$BIN"
V0=$("$STAGE/v0/hermes-tenantd" version | awk '{print $2}')
# The "new" release: the same binary reporting another version of the same
# length (tests/deploy/patch_version.py), e.g. 0.1.0 -> 0.1.1.
V1=${V0%?}$(( (${V0: -1} + 1) % 10 ))
python3 "$REPO/tests/deploy/patch_version.py" "$STAGE/v0/hermes-tenantd" "$STAGE/v1/hermes-tenantd" "$V0" "$V1"
if [[ $("$STAGE/v1/hermes-tenantd" version | awk '{print $2}') == "$V1" ]]; then
  ok "patched release reports $V1"
else
  notok "patched release reports $V1"
fi
# The bad release: a binary that exits at once and never becomes ready.
printf '#!/bin/sh\necho "hermes-tenantd: broken release" >&2\nexit 1\n' >"$STAGE/bad/hermes-tenantd"
chmod 0755 "$STAGE/bad/hermes-tenantd"
# A bad release that first migrates the store as a newer, incompatible
# build would (schema 99, compatibility floor 99), then exits: the previous
# release refuses that store, and the rollback must put back the copy the
# role took before the switch.
mkdir -p "$STAGE/badmig"
cat >"$STAGE/badmig/hermes-tenantd" <<'SH'
#!/bin/sh
if [ "$1" = run ]; then
  python3 -c 'import sqlite3
c = sqlite3.connect("/var/lib/hermes-tenantd/tenantd.db")
c.execute("INSERT INTO daemon_state (key, value, updated_at) VALUES (?, ?, 0) ON CONFLICT (key) DO UPDATE SET value = excluded.value", ("schema.compat_floor", "99"))
c.execute("PRAGMA user_version = 99")
c.commit()'
fi
echo "hermes-tenantd: migrated the store, then broke" >&2
exit 1
SH
chmod 0755 "$STAGE/badmig/hermes-tenantd"
# Stand-in hermes-agent releases (a wheel whose `hermes` runs fake_gateway.py).
for v in 0.19.0 0.19.1; do python3 "$REPO/tests/deploy/make_fake_agent_wheel.py" "$STAGE/wheels" "$v" >/dev/null; done
python3 "$REPO/tests/deploy/make_fake_agent_wheel.py" "$STAGE/wheels" 0.19.2 --broken >/dev/null
cat >"$STAGE/env" <<EOF
V0=$V0
V1=$V1
SHA_V0=$(sha256sum "$STAGE/v0/hermes-tenantd" | cut -d' ' -f1)
SHA_V1=$(sha256sum "$STAGE/v1/hermes-tenantd" | cut -d' ' -f1)
SHA_BAD=$(sha256sum "$STAGE/bad/hermes-tenantd" | cut -d' ' -f1)
SHA_BADMIG=$(sha256sum "$STAGE/badmig/hermes-tenantd" | cut -d' ' -f1)
EOF

# ---- static checks ----------------------------------------------------------
mkdir -p "$OUT/verify"
sed "s#/opt/hermes-tenantd/current/hermes-tenantd#$STAGE/v0/hermes-tenantd#" \
  "$REPO/systemd/hermes-tenantd.service" >"$OUT/verify/hermes-tenantd.service"
if systemd-analyze verify "$OUT/verify/hermes-tenantd.service" >"$OUT/verify/stdout" 2>"$OUT/verify/stderr" &&
  [[ ! -s $OUT/verify/stderr ]]; then
  ok "systemd-analyze verify prints nothing"
else
  notok "systemd-analyze verify prints nothing" "$(head -c 500 "$OUT/verify/stderr")"
fi
mkdir -p "$OUT/sysroot/etc"
if systemd-sysusers --root="$OUT/sysroot" "$REPO/systemd/sysusers.d/hermes-tenantd.conf" 2>"$OUT/sysusers.err" &&
  grep -q '^hermes:.*:/home/hermes:/usr/sbin/nologin$' "$OUT/sysroot/etc/passwd" &&
  grep -q '^hermes-tenantd:.*:/var/lib/hermes-tenantd:/usr/sbin/nologin$' "$OUT/sysroot/etc/passwd" &&
  grep -Eq '^hermes:[^:]*:[0-9]+:(.*,)?hermes-tenantd(,.*)?$' "$OUT/sysroot/etc/group"; then
  ok "sysusers.d creates the agent (hermes) and daemon (hermes-tenantd) users, the daemon in the agent's group"
else
  notok "sysusers.d creates both users" "$(head -c 300 "$OUT/sysusers.err")"
fi
systemd-analyze security --offline=yes "$OUT/verify/hermes-tenantd.service" >"$OUT/security.txt" 2>&1 || true
SCORE=$(grep -o 'Overall exposure level for [^:]*: [0-9.]*' "$OUT/security.txt" | awk '{print $NF}')
if [[ -n $SCORE ]] && awk -v s="$SCORE" 'BEGIN{exit !(s <= 2.5)}'; then
  ok "exposure score $SCORE <= 2.5 (systemd-analyze security --offline=yes)"
else
  notok "exposure score ${SCORE:-?} <= 2.5" "see $OUT/security.txt"
fi
if ((FAST == 0)); then
  if (cd "$REPO/ansible" && PATH="$VENV/bin:$PATH" ansible-lint --offline --nocolor >"$OUT/ansible-lint.log" 2>&1); then
    ok "ansible-lint clean"
  else
    notok "ansible-lint clean" "$(tail -n 15 "$OUT/ansible-lint.log")"
  fi
fi

# ---- the container ----------------------------------------------------------
# A copy: editing the checkout while a run is in progress must not change it.
cp "$REPO/tests/deploy/in-container.sh" "$STAGE/in-container.sh"
cat >"$OUT/deploy-test-runner.service" <<EOF
[Unit]
Description=hermes-tenantd deployment test runner
[Service]
Type=oneshot
Environment=REPO=$REPO VENV=$VENV FAST=$FAST
ExecStart=/bin/bash /stage/in-container.sh
StandardOutput=append:/out/runner.log
StandardError=append:/out/runner.log
TimeoutStartSec=900
ExecStopPost=/usr/bin/systemctl poweroff --no-block
EOF
binds=(--bind-ro=/etc/hosts --bind-ro=/etc/nsswitch.conf --bind-ro="$REPO" --bind-ro="$STAGE:/stage"
  --bind="$OUT/out:/out" --bind-ro="$OUT/deploy-test-runner.service:/etc/systemd/system/deploy-test-runner.service")
[[ $VENV == "$REPO"/* ]] || binds+=(--bind-ro="$VENV")
say "booting systemd in a container (log: $OUT/console.log)"
# A pure cgroup v2 hierarchy inside (the host is a v1 hybrid): the unit's
# delegated cgroup, cgroup.kill and the agent's sub-cgroup need it.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 timeout -k 10 "${DEPLOY_TIMEOUT:-1800}" systemd-nspawn --quiet --register=no --keep-unit -D / --volatile=yes \
  --private-network --capability=CAP_SYS_RESOURCE --console=pipe --machine="hermes-deploy-$$" "${binds[@]}" \
  -b systemd.unit=deploy-test-runner.service >"$OUT/console.log" 2>&1 || true

if [[ -s $OUT/out/results ]]; then
  cat "$OUT/out/results"
  FAILS=$((FAILS + $(grep -c '^not ok' "$OUT/out/results" || true)))
  grep -q '^# done' "$OUT/out/results" || { notok "container run finished" "see $OUT/out/runner.log"; }
else
  notok "container run produced results" "see $OUT/console.log and $OUT/out/runner.log"
fi
say "exposure score: ${SCORE:-?}; artefacts: $OUT; $(($(date +%s) - START)) s"
if ((FAILS > 0)); then
  say "$FAILS failed check(s)"
  exit 1
fi
say "all checks passed"
