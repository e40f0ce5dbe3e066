#!/bin/bash
# Runs inside the systemd-nspawn container booted by tests/deploy/run.sh
# (systemd is PID 1). Writes "ok"/"not ok" lines to /out/results and ends
# with "# done". Environment: REPO, VENV, FAST; /stage holds the releases.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root ANSIBLE_LOCAL_TEMP=/tmp/ansible-local ANSIBLE_REMOTE_TMP=/tmp/ansible-remote
export ANSIBLE_CONFIG=$REPO/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
mkdir -p "$HOME" /out/logs
# shellcheck disable=SC1091
. /stage/env
R=/out/results
: >"$R"
UNIT=hermes-tenantd
TENANT=t-deploy-1
CRED=deploy-test-credential-0123456789abcdef
API=http://127.0.0.1:8643
PLAYBOOK="$VENV/bin/ansible-playbook"

ok() { echo "ok $1" >>"$R"; echo "ok $1"; }
notok() { echo "not ok $1 # ${2:-}" >>"$R"; echo "not ok $1 # ${2:-}"; }
# check NAME CMD...: ok when CMD succeeds; its output goes to the runner log.
check() {
  local name=$1
  shift
  if "$@"; then ok "$name"; else notok "$name" "command: $*"; fi
}
prop() { systemctl show -p "$1" --value "$UNIT"; }
ready() { curl -fsS -m 2 "$API/v1/readyz" >/dev/null 2>&1; }
version_seen() {
  curl -fsS -m 2 -H "Authorization: Bearer $CRED" "$API/v1/tenant-runtime/$TENANT/version" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["daemon"])' 2>/dev/null
}
# wait_until SECONDS CMD...: poll every 0.2 s.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS >= deadline)) && return 1
    sleep 0.2
  done
}
recap_changed() { grep -E "^ *[0-9.]+ $2 +:" "$1" | sed -E 's/.*changed=([0-9]+).*/\1/'; }
recap_failed() { grep -E "^ *[0-9.]+ $2 +:" "$1" | sed -E 's/.*failed=([0-9]+).*/\1/'; }

# The inventory is ansible/inventory.example.yml itself, unmodified: what an
# operator copies is what runs here, so its variable names cannot drift
# from the role's again. On top of it, only what a real site adds:
# /tmp/inventory.yml, this machine as the host (local connection) with its
# tenant and credential; /tmp/release.yml, the release under test (given
# with -e like the documented upgrade command) and the site's wheel mirror
# for the agent. The example's own hosts are left out with --limit.
cat >/tmp/inventory.yml <<EOF
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: /usr/bin/python3
hermes_tenants:
  vars:
    hermes_tenantd_tenant_id: $TENANT
    hermes_tenantd_credential: $CRED
  hosts:
    tenant-vm:
EOF
cat >/tmp/release.yml <<EOF
hermes_tenantd_version: "$V0"
# From the controller instead of the example's download URL.
hermes_tenantd_binary_url: ""
hermes_tenantd_binary_src: /stage/v0/hermes-tenantd
hermes_tenantd_binary_sha256: $SHA_V0
# The example's hermes_tenantd_agent_version (0.19.0) is installed from
# stand-in wheels (tests/deploy/make_fake_agent_wheel.py) whose hermes
# command is fake_gateway.py; with the role's [mcp] extra (the stand-in
# declares it, with nothing to pull).
hermes_tenantd_agent_pip_packages: ["hermes-agent[mcp]"]
hermes_tenantd_agent_pip_args: [--no-index, --find-links, /stage/wheels]
hermes_tenantd_gate_retries: 15
hermes_tenantd_gate_delay: 1
EOF
play() { # play LOG PLAYBOOK ARGS...
  local log=$1 pb=$2
  shift 2
  # Each output line is prefixed with seconds since start, to see where time goes.
  (cd "$REPO/ansible" && "$PLAYBOOK" -i inventory.example.yml -i /tmp/inventory.yml --limit 'all:!*.example.com' \
    -e @/tmp/release.yml "$pb" "$@" 2>&1) |
    python3 -u -c 'import sys,time
t=time.time()
for l in sys.stdin: sys.stdout.write("%6.1f %s" % (time.time()-t, l))' >"/out/logs/$log"
  return "${PIPESTATUS[0]}"
}

echo "# container: $(systemctl --version | head -1)" >>"$R"
# The container has no network manager: the *-wait-online services would
# hold network-online.target (which the unit wants) for 2 minutes.
systemctl mask --runtime --now systemd-networkd-wait-online.service NetworkManager-wait-online.service >/dev/null 2>&1

# ---- Ansible: install ---------------------------------------------------------
T0=$SECONDS
play install-1.log install.yml
rc=$?
check "ansible install.yml succeeds (rc=$rc, $((SECONDS - T0)) s)" test "$rc" = 0
if [[ $rc != 0 ]]; then
  tail -n 30 /out/logs/install-1.log
  echo "# install failed: nothing else can be tested" >>"$R"
  echo "# done" >>"$R"
  exit 0
fi
check "hermes (agent) and hermes-tenantd (daemon) users exist (sysusers)" bash -c "id hermes && id hermes-tenantd"
check "the daemon's user is in the agent's group, not the other way round" \
  bash -c "id -nG hermes-tenantd | grep -qw hermes && ! id -nG hermes | grep -qw hermes-tenantd"
mode_owner() { [[ $(stat -c '%a %U:%G' "$1") == "$2" ]] || { echo "$1: $(stat -c '%a %U:%G' "$1") != $2"; return 1; }; }
check "/etc/hermes-tenantd is 750 root:hermes-tenantd" mode_owner /etc/hermes-tenantd "750 root:hermes-tenantd"
check "config.toml is 640 root:hermes-tenantd" mode_owner /etc/hermes-tenantd/config.toml "640 root:hermes-tenantd"
check "credential is 600 root:root (systemd hands it over: LoadCredential=)" mode_owner /etc/hermes-tenantd/credential "600 root:root"
check "state dir is 700 hermes-tenantd:hermes-tenantd" mode_owner /var/lib/hermes-tenantd "700 hermes-tenantd:hermes-tenantd"
check "Hermes home is 700 hermes:hermes" mode_owner /home/hermes/.hermes "700 hermes:hermes"
check "binary is 755 root:root" mode_owner "/opt/hermes-tenantd/releases/$V0/hermes-tenantd" "755 root:root"
check "current -> releases/$V0" test "$(readlink /opt/hermes-tenantd/current)" = "/opt/hermes-tenantd/releases/$V0"
check "agent venv: current -> /opt/hermes-agent/0.19.0, root-owned" \
  bash -c '[[ $(readlink /opt/hermes-agent/current) == /opt/hermes-agent/0.19.0 && $(stat -c %U /opt/hermes-agent/0.19.0/bin/hermes) == root ]]'
check "credential never printed by ansible" bash -c "! grep -q '$CRED' /out/logs/install-1.log"
check "config accepted by check-config (as hermes-tenantd)" \
  setpriv --reuid=hermes-tenantd --regid=hermes-tenantd --init-groups -- /opt/hermes-tenantd/current/hermes-tenantd check-config --config /etc/hermes-tenantd/config.toml
check "unit enabled" test "$(systemctl is-enabled $UNIT)" = enabled
check "unit active" test "$(systemctl is-active $UNIT)" = active
check "installed unit: systemd-analyze verify prints nothing" \
  bash -c "systemd-analyze verify /etc/systemd/system/$UNIT.service 2>&1 | tee /out/logs/verify-installed.log | (! grep -q .)"

T0=$SECONDS
play install-2.log install.yml
rc=$?
c=$(recap_changed /out/logs/install-2.log tenant-vm)
check "second install run: rc=0 and changed=0 (changed=$c, $((SECONDS - T0)) s)" test "$rc:$c" = "0:0"

# ---- systemd behaviour ----------------------------------------------------------
systemctl stop $UNIT
# start returns only after READY=1: the API answers on the very first try.
T0=$(date +%s%N)
systemctl start $UNIT
T1=$(date +%s%N)
first_try=fail
ready && first_try=ok
check "systemctl start returned after READY ($(((T1 - T0) / 1000000)) ms): readyz answers at once" test $first_try = ok
check "unit is active (running) after start" test "$(prop ActiveState)/$(prop SubState)" = "active/running"
check "/version reports $V0" test "$(version_seen)" = "$V0"
check "watchdog armed (WatchdogUSec=30s)" test "$(prop WatchdogUSec)" = 30s

# Hardening vs the gateway. When the daemon has no supervisor yet (no
# /agent route), a test drop-in starts the fake gateway from the unit's own
# ExecStart (same sandbox, same cgroup, child of the daemon's PID) so the
# sandbox is what is tested.
agent_code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $CRED" "$API/v1/tenant-runtime/$TENANT/agent")
rm -f /home/hermes/.hermes/selftest.json
if [[ $agent_code == 200 ]]; then
  echo "# gateway spawned by the daemon's supervisor" >>"$R"
  # A fresh gateway (the desired state is running: it starts with the daemon).
  systemctl restart $UNIT
  curl -fsS -X POST -H "Authorization: Bearer $CRED" "$API/v1/tenant-runtime/$TENANT/agent/start" >/dev/null 2>&1
  DROPIN=""
else
  echo "# no supervisor in this build (GET /agent: $agent_code): fake gateway started from ExecStart by a test drop-in" >>"$R"
  DROPIN=/run/systemd/system/$UNIT.service.d/50-test-gateway.conf
  mkdir -p "$(dirname "$DROPIN")"
  cat >"$DROPIN" <<EOF
[Service]
ExecStart=
ExecStart=/bin/sh -c 'HERMES_HOME=/home/hermes/.hermes /usr/bin/python3 $REPO/tests/deploy/fake_gateway.py & exec /opt/hermes-tenantd/current/hermes-tenantd run --config /etc/hermes-tenantd/config.toml'
EOF
  systemctl daemon-reload
  systemctl restart $UNIT
fi
if wait_until 20 test -s /home/hermes/.hermes/selftest.json; then
  cp /home/hermes/.hermes/selftest.json /out/logs/gateway-selftest.json
  for step in write_state sqlite_wal tool_subprocess ctypes_callback tcp_client resolve tmp_write; do
    res=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))" /out/logs/gateway-selftest.json $step)
    if [[ $res == ok ]]; then ok "sandboxed gateway: $step"; else notok "sandboxed gateway: $step" "$res"; fi
  done
  GW_PID=$(python3 -c "import json; print(json.load(open('/out/logs/gateway-selftest.json'))['pid'])")
  MAIN=$(prop MainPID)
  check "gateway runs as hermes, the daemon as hermes-tenantd" \
    bash -c "[[ \$(stat -c %U /proc/$GW_PID) == hermes && \$(stat -c %U /proc/$MAIN) == hermes-tenantd ]]"
  check "gateway holds no capability and cannot gain one (no_new_privs)" \
    bash -c "grep -Eq '^CapPrm:\s+0+$' /proc/$GW_PID/status && grep -Eq '^CapEff:\s+0+$' /proc/$GW_PID/status && grep -Eq '^CapAmb:\s+0+$' /proc/$GW_PID/status && grep -Eq '^NoNewPrivs:\s+1$' /proc/$GW_PID/status"
  check "daemon holds only CAP_SETUID, CAP_SETGID, CAP_KILL (CapEff 00000000000000e0)" \
    grep -Eq '^CapEff:\s+00000000000000e0$' /proc/"$MAIN"/status
  check "gateway is the daemon's child, in the unit's agent/ cgroup; the daemon in daemon/" \
    bash -c "[[ \$(cut -d' ' -f4 /proc/$GW_PID/stat) == $MAIN ]] && grep -q '$UNIT.service/agent$' /proc/$GW_PID/cgroup && grep -q '$UNIT.service/daemon$' /proc/$MAIN/cgroup"
  check "gateway /health answers on 127.0.0.1:8642" curl -fsS -m 2 http://127.0.0.1:8642/health
  check "gateway wrote its state in the Hermes home" test -s /home/hermes/.hermes/state.db -a -s /home/hermes/.hermes/tool-output.txt
  adj=$(python3 -c "import json; print(json.load(open('/out/logs/gateway-selftest.json'))['oom_score_adj'])")
  dadj=$(cat /proc/"$MAIN"/oom_score_adj)
  echo "# oom_score_adj: daemon $dadj (unit OOMScoreAdjust=$(prop OOMScoreAdjust)), gateway $adj" >>"$R"
  if [[ $dadj == -500 ]]; then
    ok "daemon runs with OOMScoreAdjust=-500"
  else
    # systemd ignores EPERM here when the host lacks CAP_SYS_RESOURCE (a docker host).
    echo "# daemon oom_score_adj not settable in this container (no CAP_SYS_RESOURCE): not verified" >>"$R"
  fi
  if [[ -z $DROPIN ]]; then
    check "gateway oom_score_adj ($adj) above the daemon's ($dadj)" test "$adj" -gt "$dadj"
  fi
else
  notok "fake gateway started under the unit's sandbox" "no selftest.json; journal: $(journalctl -u $UNIT -n 20 --no-pager | tail -5)"
  GW_PID=""
fi

# Clean stop: exit 0, gateway gone, empty cgroup.
# The unit's cgroup directory, wherever nspawn mounted the hierarchy.
CG=$(find /sys/fs/cgroup -type d -name "$UNIT.service" -print -quit)
# (cgroupfs files report size 0: count lines, never test -s)
check "cgroup of the running unit has processes ($CG)" grep -qx 'populated 1' "$CG/cgroup.events"
T0=$(date +%s%N)
systemctl stop $UNIT
T1=$(date +%s%N)
check "stop: clean exit ($(((T1 - T0) / 1000000)) ms): status 0, Result=success" \
  test "$(prop ExecMainCode)/$(prop ExecMainStatus)/$(prop Result)" = "1/0/success"
journalctl -u $UNIT --no-pager -o cat >/out/logs/journal-stop.log
check "stop: daemon logged its own shutdown" grep -q '"stopped"\|stopped' /out/logs/journal-stop.log
if [[ -n $GW_PID ]]; then check "stop: gateway process gone" bash -c "! kill -0 $GW_PID 2>/dev/null"; fi
check "stop: no process left in the unit's cgroup (sub-cgroups included)" \
  bash -c "[[ -n '$CG' ]] && { [[ ! -e '$CG/cgroup.events' ]] || grep -qx 'populated 0' '$CG/cgroup.events'; }"
check "stop: no process of user hermes left" bash -c "! pgrep -u hermes"

# kill -9: systemd restarts it.
systemctl start $UNIT
P1=$(prop MainPID)
N1=$(prop NRestarts)
T0=$(date +%s%N)
[[ $P1 -gt 1 ]] && kill -9 "$P1"
restarted() { local p; p=$(prop MainPID); [[ $p != 0 && $p != "$P1" && $(prop ActiveState) == active ]] && ready; }
if wait_until 30 restarted; then
  T1=$(date +%s%N)
  ok "kill -9: restarted by systemd and answering after $(((T1 - T0) / 1000000)) ms (NRestarts $N1 -> $(prop NRestarts))"
else
  notok "kill -9: restarted by systemd" "MainPID $(prop MainPID) state $(prop ActiveState)/$(prop SubState)"
fi
# A fresh gateway after the restart, and only one: the gateway is the only
# process of the agent's user.
check "kill -9: one gateway after the restart" \
  wait_until 15 bash -c "[[ \$(pgrep -c -u hermes) == 1 ]] && curl -fsS -m 1 http://127.0.0.1:8642/health >/dev/null"

if [[ $FAST == 0 ]]; then
  # Watchdog: a frozen daemon (SIGSTOP) is killed and restarted. WatchdogSec
  # is shortened by a runtime drop-in to keep this fast.
  mkdir -p /run/systemd/system/$UNIT.service.d
  printf '[Service]\nWatchdogSec=3s\n' >/run/systemd/system/$UNIT.service.d/60-test-watchdog.conf
  systemctl daemon-reload
  systemctl restart $UNIT
  P1=$(prop MainPID)
  [[ $P1 -gt 1 ]] && kill -STOP "$P1"
  wd() { [[ $(prop MainPID) != "$P1" && $(prop ActiveState) == active ]]; }
  if wait_until 20 wd; then
    ok "watchdog: frozen daemon killed and restarted ($(journalctl -u $UNIT --no-pager | grep -c -i 'watchdog timeout') watchdog timeout logged)"
  else
    notok "watchdog: frozen daemon killed and restarted" "$(prop Result) $(prop ActiveState)"
  fi
  rm -f /run/systemd/system/$UNIT.service.d/60-test-watchdog.conf
fi
[[ -n $DROPIN ]] && rm -f "$DROPIN"

# ---- the evil agent: a hostile gateway under its own user and cgroup ---------
# tests/deploy/evil_gateway.py runs as the gateway (the agent's user), tries
# to reach the daemon's state, plants symlinks at the names the daemon writes
# in the Hermes home, and detaches sleepers. Nothing may get through.
if [[ $agent_code == 200 ]]; then
  EVIL_DROPIN=/run/systemd/system/$UNIT.service.d/70-test-evil.conf
  mkdir -p "$(dirname "$EVIL_DROPIN")"
  # An active agent release wins over gateway.command (releases.dir is the
  # role's /opt/hermes-agent): point releases.dir at an empty directory for
  # this scenario so the configured command, the evil gateway, runs.
  printf '[Service]\nEnvironment="HERMES_TENANTD_GATEWAY__COMMAND=/usr/bin/python3 %s/tests/deploy/evil_gateway.py"\nEnvironment="HERMES_TENANTD_RELEASES__DIR=/var/lib/hermes-tenantd/evil-releases"\n' "$REPO" >"$EVIL_DROPIN"
  systemctl daemon-reload
  rm -rf /home/hermes/.hermes/evil
  systemctl restart $UNIT
  EVIL=/home/hermes/.hermes/evil
  if wait_until 30 test -s $EVIL/report.json; then
    cp $EVIL/report.json /out/logs/evil-report.json
    python3 - "$EVIL/report.json" >>"$R" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r.items():
    if isinstance(v, str) and (v.startswith("denied") or v == "SUCCEEDED"):
        print(("ok" if v.startswith("denied") else "not ok") + f" evil agent: {k}: {v.split(':')[0]}")
print(f"# evil agent ran as uid {r['uid']} gid {r['gid']} groups {r['groups']}")
PY
    sum_daemon() { sha256sum /var/lib/hermes-tenantd/gateway_api_key /var/lib/hermes-tenantd/credential.state 2>/dev/null; }
    BEFORE=$(sum_daemon)
    db_ok() { python3 -c "import sqlite3,sys; c=sqlite3.connect('file:/var/lib/hermes-tenantd/tenantd.db?mode=ro', uri=True); sys.exit(0 if c.execute('pragma quick_check').fetchone()[0]=='ok' and c.execute('select count(*) from daemon_state').fetchone()[0] > 0 else 1)"; }
    auth=(-H "Authorization: Bearer $CRED")
    OLD_GW=$(python3 -c "import json; print(json.load(open('$EVIL/report.json'))['pid'])")
    read -r -a SLEEPERS < <(tr '\n' ' ' <$EVIL/sleepers)
    check "evil agent: detached sleepers alive before the links (${SLEEPERS[*]})" bash -c "kill -0 ${SLEEPERS[0]} && kill -0 ${SLEEPERS[1]}"
    rm -f $EVIL/report.json
    # While it runs, the agent plants links at every name the daemon writes
    # in the Hermes home: .env (to the database), config.yaml (to
    # credential.state), the planned-stop marker (to the gateway key).
    curl -sS -m 10 -X POST http://127.0.0.1:8642/evil/plant >/out/logs/evil-plant.json || true
    echo "# evil agent planted $(cat /out/logs/evil-plant.json)" >>"$R"
    # Make the daemon write .env and config.yaml through them.
    env_code=$(curl -s -o /out/logs/evil-env.json -w '%{http_code}' -X PUT "${auth[@]}" -H 'Content-Type: application/json' \
      -d '{"value":"v"}' "$API/v1/tenant-runtime/$TENANT/env/EVIL_TEST_KEY")
    set_code=$(curl -s -o /out/logs/evil-settings.json -w '%{http_code}' -X PATCH "${auth[@]}" -H 'Content-Type: application/json' \
      -d '{"personality":"evil"}' "$API/v1/tenant-runtime/$TENANT/settings")
    echo "# evil agent: PUT /env answered $env_code, PATCH /settings $set_code" >>"$R"
    # Nobody asks for a restart: the gateway would follow the .env link on
    # its next turn, so the daemon's guard replaces it (writing the
    # planned-stop marker, a link now) and no gateway is started on a .env
    # it cannot check: the agent stays down and says why.
    # down_because TEXT...: the agent is not running and its last_error holds
    # every TEXT and no daemon path.
    down_because() {
      curl -fsS -m 2 "${auth[@]}" "$API/v1/tenant-runtime/$TENANT/agent" >/out/logs/evil-agent.json &&
        python3 -c "import json,sys; a=json.load(open('/out/logs/evil-agent.json')); e=a.get('last_error') or ''; sys.exit(0 if a['state'] != 'running' and all(t in e for t in sys.argv[1:]) and '/var/lib' not in e else 1)" "$@"
    }
    check "evil agent: links planted while it runs: the gateway is replaced by none, last_error says why" wait_until 30 down_because ".env cannot be checked"
    check "evil agent: no gateway started on the symlinked .env" test ! -s $EVIL/report.json
    check "evil agent: neither the old gateway nor a detached sleeper survives the replacement" \
      wait_until 10 bash -c "! kill -0 ${SLEEPERS[0]} 2>/dev/null && ! kill -0 ${SLEEPERS[1]} 2>/dev/null && ! kill -0 $OLD_GW 2>/dev/null"
    check "evil agent: the daemon's key and credential state unchanged" test "$(sum_daemon)" = "$BEFORE"
    check "evil agent: the daemon's database intact" db_ok
    # The tenant removes the .env link: config.yaml, a link too, still
    # cannot be checked for external secret sources, so the agent stays
    # down and says so.
    rm -f /home/hermes/.hermes/.env
    curl -sS -X POST "${auth[@]}" "$API/v1/tenant-runtime/$TENANT/agent/start" >/out/logs/evil-start.json || true
    check "evil agent: a symlinked config.yaml keeps the gateway down too, last_error says why" wait_until 30 down_because config.yaml 'secret sources'
    check "evil agent: no gateway started on the symlinked config.yaml" test ! -s $EVIL/report.json
    # ...and then a config.yaml whose secret source may override (the agent's
    # own bin/bws would set HERMES_MANAGED_DIR under hermes-agent 0.19.0).
    rm -f /home/hermes/.hermes/config.yaml
    printf 'secrets:\n  bitwarden:\n    enabled: true\n    project_id: p\n' >/home/hermes/.hermes/config.yaml
    chown hermes: /home/hermes/.hermes/config.yaml
    curl -sS -X POST "${auth[@]}" "$API/v1/tenant-runtime/$TENANT/agent/start" >/out/logs/evil-start.json || true
    check "evil agent: a secret source that may override keeps the gateway down" wait_until 30 down_because secrets.bitwarden override_existing
    check "evil agent: no gateway started with that secret source" test ! -s $EVIL/report.json
    # The tenant tells the source not to override: the agent starts again.
    printf '    override_existing: false\n' >>/home/hermes/.hermes/config.yaml
    curl -sS -X POST "${auth[@]}" "$API/v1/tenant-runtime/$TENANT/agent/start" >/out/logs/evil-start.json || true
    check "evil agent: started again once .env is plain and the source cannot override (a new gateway wrote its report)" wait_until 60 test -s $EVIL/report.json
    CG=$(find /sys/fs/cgroup -type d -name "$UNIT.service" -print -quit)
    if [[ -n $CG && -f $CG/agent/pids.max && $(cat "$CG/agent/pids.max") != max ]]; then
      curl -s -m 120 -X POST http://127.0.0.1:8642/evil/forkbomb >/out/logs/evil-forkbomb.json &
      FB=$!
      check "evil agent: fork bomb: daemon keeps answering /v1/healthz" wait_until 10 bash -c "curl -fsS -m 2 $API/v1/healthz >/dev/null"
      wait $FB
      check "evil agent: fork bomb stopped at pids.max ($(cat /out/logs/evil-forkbomb.json))" \
        python3 -c "import json,sys; r=json.load(open('/out/logs/evil-forkbomb.json')); sys.exit(0 if r['forked'] < $(cat "$CG/agent/pids.max") else 1)"
    else
      echo "# evil agent: fork bomb NOT run: no pids controller delegated in this container (pids.max cannot be set here; see TOOLING.md)" >>"$R"
    fi
    if [[ -n $CG && -f $CG/agent/memory.max && $(cat "$CG/agent/memory.max") != max ]]; then
      curl -s -m 120 -X POST http://127.0.0.1:8642/evil/allocate >/out/logs/evil-allocate.json
      check "evil agent: allocation past memory.max: daemon alive and answering" bash -c "curl -fsS -m 2 $API/v1/healthz >/dev/null"
      check "evil agent: the OOM kill hit the agent cgroup, not the daemon" bash -c "grep -q '^oom_kill [1-9]' $CG/agent/memory.events"
    else
      echo "# evil agent: allocation NOT run: no memory controller delegated in this container (memory.max cannot be set here)" >>"$R"
    fi
  else
    notok "evil agent started" "no report; journal: $(journalctl -u $UNIT -n 20 --no-pager | tail -5)"
  fi
  journalctl -u $UNIT --no-pager >/out/logs/journal-evil.log
  check "evil agent: no secret in the daemon's journal" bash -c "! grep -q '$CRED' /out/logs/journal-evil.log"
  rm -f "$EVIL_DROPIN"
  rm -f /home/hermes/.hermes/.env /home/hermes/.hermes/config.yaml /home/hermes/.hermes/.gateway-planned-stop.json
  systemctl daemon-reload
fi
systemctl daemon-reload
systemctl restart $UNIT
journalctl -u $UNIT --no-pager >/out/logs/journal-systemd-phase.log

# ---- Ansible: upgrade to a good release, with a run in flight --------------------
# upgrade.yml drains first: the run started before it completes and is
# recorded; the restart comes after it (fake gateway: "slow:N" lasts N s).
AUTH=(-H "Authorization: Bearer $CRED")
TAPI=$API/v1/tenant-runtime/$TENANT
agent_running() {
  curl -fsS -m 2 "${AUTH[@]}" "$TAPI/agent" |
    python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["state"] != "running")' 2>/dev/null
}
run_status() {
  curl -fsS -m 2 "${AUTH[@]}" "$TAPI/runs/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null
}
run_is() { [[ $(run_status "$1") == "$2" ]]; }
curl -fsS -X POST "${AUTH[@]}" "$TAPI/agent/start" >/dev/null 2>&1
UPGRADE_RUN=none
if wait_until 60 agent_running; then
  ok "GET /agent: the daemon's gateway is running (the port check, run as the agent, accepts it)"
  UPGRADE_RUN=$(curl -fsS -m 5 -X POST "${AUTH[@]}" -H 'Content-Type: application/json' \
    -d '{"input":"a long answer slow:8"}' "$TAPI/runs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
  check "upgrade with a run in flight: the run is running before the upgrade" wait_until 30 run_is "$UPGRADE_RUN" running
else
  # Before the nested-as_agent fix the port check ran half as the daemon,
  # which ProtectProc=invisible hides the gateway from: never running.
  notok "GET /agent: the daemon's gateway is running" "$(curl -fsS -m 2 "${AUTH[@]}" "$TAPI/agent" | head -c 300)"
fi
P_BEFORE=$(prop MainPID)
V1_ARGS=(-e "hermes_tenantd_version=$V1" -e hermes_tenantd_binary_src=/stage/v1/hermes-tenantd -e "hermes_tenantd_binary_sha256=$SHA_V1")
T0=$SECONDS
play upgrade-good.log upgrade.yml "${V1_ARGS[@]}" -e hermes_tenantd_drain_deadline=60s
rc=$?
check "upgrade with a run in flight: drained before the restart" grep -q "Drain the daemon so the restart cuts no run" /out/logs/upgrade-good.log
check "upgrade with a run in flight: the daemon restarted" test "$(prop MainPID)" != "$P_BEFORE"
if [[ $UPGRADE_RUN != none ]]; then
  check "upgrade with a run in flight: the run completed and is recorded (status $(run_status "$UPGRADE_RUN"))" \
    run_is "$UPGRADE_RUN" completed
fi
not_draining() {
  curl -fsS -m 5 "${AUTH[@]}" "$TAPI/agent" |
    python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["drain"]["state"] != "off")' 2>/dev/null
}
check "upgrade with a run in flight: the new daemon is not draining" not_draining
check "upgrade to $V1: passes the health gate (rc=$rc, $((SECONDS - T0)) s)" test "$rc" = 0
check "upgrade to $V1: /version reports $V1" test "$(version_seen)" = "$V1"
check "upgrade to $V1: previous release kept beside it" test -x "/opt/hermes-tenantd/releases/$V0/hermes-tenantd"

# ---- Ansible: upgrade to a bad release --------------------------------------------
BAD=$V0-bad1
BAD_ARGS=(-e "hermes_tenantd_version=$BAD" -e hermes_tenantd_binary_src=/stage/bad/hermes-tenantd -e "hermes_tenantd_binary_sha256=$SHA_BAD")
T0=$SECONDS
play upgrade-bad.log upgrade.yml "${BAD_ARGS[@]}"
rc=$?
check "upgrade to bad $BAD: host fails (rc=$rc, $((SECONDS - T0)) s)" test "$rc" != 0
check "upgrade to bad $BAD: failure says rolled back" grep -q "rolled back to $V1" /out/logs/upgrade-bad.log
check "upgrade to bad $BAD: current -> $V1 again" test "$(readlink /opt/hermes-tenantd/current)" = "/opt/hermes-tenantd/releases/$V1"
check "upgrade to bad $BAD: unit active" test "$(systemctl is-active $UNIT)" = active
check "upgrade to bad $BAD: old version $V1 answers" test "$(version_seen)" = "$V1"
check "upgrade to bad $BAD: recorded as bad" grep -q "release=$BAD" "/opt/hermes-tenantd/bad-releases/$BAD"
P1=$(prop MainPID)
play upgrade-bad-2.log upgrade.yml "${BAD_ARGS[@]}"
rc=$?
c=$(recap_changed /out/logs/upgrade-bad-2.log tenant-vm)
check "rerun of bad $BAD: refused without trying (rc=$rc changed=$c)" \
  bash -c "[[ $rc != 0 && $c == 0 ]] && grep -q 'failed the health gate on this host before' /out/logs/upgrade-bad-2.log"
check "rerun of bad $BAD: daemon untouched (same MainPID)" test "$(prop MainPID)" = "$P1"
check "rerun of bad $BAD: $V1 still answers" test "$(version_seen)" = "$V1"

# ---- Ansible: a bad release that migrated the store first ---------------------------
# The store as the daemon left it, read as its own user (the data dir is 0700).
store_version() {
  setpriv --reuid=hermes-tenantd --regid=hermes-tenantd --init-groups -- python3 -c 'import sqlite3; print(sqlite3.connect("/var/lib/hermes-tenantd/tenantd.db").execute("PRAGMA user_version").fetchone()[0])'
}
SCHEMA_BEFORE=$(store_version)
BADMIG=$V0-bad3
play upgrade-badmig.log upgrade.yml -e "hermes_tenantd_version=$BADMIG" \
  -e hermes_tenantd_binary_src=/stage/badmig/hermes-tenantd -e "hermes_tenantd_binary_sha256=$SHA_BADMIG"
rc=$?
check "bad $BADMIG that migrated the store: host fails (rc=$rc)" test "$rc" != 0
check "bad $BADMIG: the store was copied before the switch" grep -q "Copy the store before the new release can migrate it" /out/logs/upgrade-badmig.log
check "bad $BADMIG: the copy was put back" \
  bash -c "grep -A1 'TASK \[hermes_tenantd : Keep the migrated store aside' /out/logs/upgrade-badmig.log | grep -q 'changed:'"
check "bad $BADMIG: unit active" test "$(systemctl is-active $UNIT)" = active
check "bad $BADMIG: $V1 answers" test "$(version_seen)" = "$V1"
check "bad $BADMIG: the store is the one $V1 left (schema $SCHEMA_BEFORE)" test "$(store_version)" = "$SCHEMA_BEFORE"
check "bad $BADMIG: the migrated store is kept aside" test -e "/var/lib/hermes-tenantd/tenantd.db.failed-$BADMIG"
check "bad $BADMIG: no copy left behind" test ! -e /var/lib/hermes-tenantd/tenantd.db.pre-upgrade

# ---- canary: several hosts -----------------------------------------------------------
if [[ $FAST == 0 ]]; then
  # Five inventory aliases of this one machine (local connection). A bad
  # release must stop after the canary batch; a good one goes 1, 2, 2.
  sed -i 's/^    tenant-vm:$/    canary-1:\n    fleet-2:\n    fleet-3:\n    fleet-4:\n    fleet-5:/' /tmp/inventory.yml
  BAD2=$V0-bad2
  play canary-bad.log upgrade.yml -e "hermes_tenantd_version=$BAD2" -e hermes_tenantd_binary_src=/stage/bad/hermes-tenantd \
    -e "hermes_tenantd_binary_sha256=$SHA_BAD" -e '{"hermes_tenantd_serial": [1, "40%", "100%"]}'
  rc=$?
  check "canary with a bad release: rollout fails (rc=$rc)" test "$rc" != 0
  check "canary with a bad release: canary-1 failed" test "$(recap_failed /out/logs/canary-bad.log canary-1)" = 1
  check "canary with a bad release: only the canary batch ran" \
    bash -c "grep -q 'batch: canary-1' /out/logs/canary-bad.log && ! grep -q 'fleet-[2-5]' /out/logs/canary-bad.log"
  check "canary with a bad release: $V1 still answers" test "$(version_seen)" = "$V1"
  # The batch plan (--tags rollout-plan runs only the announcement).
  play canary-plan.log upgrade.yml --tags rollout-plan -e '{"hermes_tenantd_serial": [1, "40%", "100%"]}'
  rc=$?
  check "canary plan: 5 hosts go in batches 1, 2, 2 (rc=$rc)" \
    bash -c "grep -q \"batch: canary-1'\" /out/logs/canary-plan.log && grep -q \"batch: fleet-2,fleet-3'\" /out/logs/canary-plan.log && grep -q \"batch: fleet-4,fleet-5'\" /out/logs/canary-plan.log"
  sed -i 's/^    canary-1:$/    tenant-vm:/; /^    fleet-[2-5]:$/d' /tmp/inventory.yml
fi


# ---- credential rotation: one gated restart, old and new both accepted ----------
if [[ $FAST == 0 ]]; then
  NEW_CRED=deploy-test-credential-rotated-fedcba9876543210
  P1=$(prop MainPID)
  # Same release as running ($V1): only the credential differs.
  play rotate.log install.yml -e "hermes_tenantd_credential=$NEW_CRED" "${V1_ARGS[@]}"
  rc=$?
  # LoadCredential= copies the credential at start: a new one takes a restart,
  # through the same health gate as a release.
  check "rotation: credential written, daemon restarted through the gate (rc=$rc)" bash -c "[[ $rc == 0 ]] &&
    grep -A1 'TASK \[hermes_tenantd : Write the tenant-runtime credential' /out/logs/rotate.log | grep -q 'changed:' &&
    grep -A1 'TASK \[hermes_tenantd : Restart hermes-tenantd' /out/logs/rotate.log | grep -q 'changed:'"
  check "rotation: daemon restarted once" test "$(prop MainPID)" != "$P1"
  check "rotation: new value never printed" bash -c "! grep -q '$NEW_CRED' /out/logs/rotate.log"
  code_for() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$API/v1/tenant-runtime/$TENANT/version"; }
  check "rotation: new credential accepted" wait_until 20 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer $NEW_CRED' $API/v1/tenant-runtime/$TENANT/version) == 200 ]]"
  check "rotation: old credential still accepted during the overlap (it survived the restart)" test "$(code_for "$CRED")" = 200
  check "rotation: a wrong credential is refused" test "$(code_for wrong-credential-0123456789)" = 401
  sed -i "s/hermes_tenantd_credential: $CRED/hermes_tenantd_credential: $NEW_CRED/" /tmp/inventory.yml
  CRED=$NEW_CRED
fi

# ---- hermes-agent venv upgrade (needs the daemon's gateway supervisor) ----------
if [[ $FAST == 0 && $agent_code == 200 ]]; then
  AGENT_ARGS=()
  gw_version() { curl -fsS -m 2 http://127.0.0.1:8642/health | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null; }
  check "agent 0.19.0 (installed with the daemon): gateway /health reports it" wait_until 20 bash -c '[[ $(curl -fsS -m 2 http://127.0.0.1:8642/health) == *0.19.0* ]]'
  play agent-2.log upgrade.yml "${AGENT_ARGS[@]}" -e hermes_tenantd_agent_version=0.19.1
  rc=$?
  check "agent upgrade to 0.19.1 through /agent/restart passes its gate (rc=$rc)" test "$rc:$(gw_version)" = "0:0.19.1"
  check "agent 0.19.0 venv kept beside 0.19.1" test -x /opt/hermes-agent/0.19.0/bin/hermes
  play agent-bad.log upgrade.yml "${AGENT_ARGS[@]}" -e hermes_tenantd_agent_version=0.19.2
  rc=$?
  check "broken agent 0.19.2: host fails (rc=$rc)" test "$rc" != 0
  check "broken agent 0.19.2: rolled back, current -> 0.19.1" \
    bash -c "[[ \$(readlink /opt/hermes-agent/current) == /opt/hermes-agent/0.19.1 ]]" 
  check "broken agent 0.19.2: gateway answers 0.19.1" wait_until 20 bash -c '[[ $(curl -fsS -m 2 http://127.0.0.1:8642/health) == *0.19.1* ]]'
  check "broken agent 0.19.2: recorded as bad" test -s /opt/hermes-tenantd/bad-releases/agent-0.19.2
elif [[ $FAST == 0 ]]; then
  echo "# agent venv upgrade not tested: this daemon build has no gateway supervisor (GET /agent: $agent_code)" >>"$R"
fi

journalctl -u $UNIT --no-pager >/out/logs/journal-all.log
echo "# done" >>"$R"
