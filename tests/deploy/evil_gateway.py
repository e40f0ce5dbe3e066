#!/usr/bin/env python3
"""An "evil agent" for the deployment tests: a gateway stand-in that serves
GET /health like the real one and, as the agent's user, tries everything a
prompt-injected agent would try against the daemon.

At start it records in $HERMES_HOME/evil/report.json, per attempt, either
"denied: <error>" or "SUCCEEDED" (the test fails on any SUCCEEDED):
  read the credential (the /etc file and the unit's credential directory),
  read or open the daemon's database, its gateway key and credential state,
  write the managed scope, write into the daemon's cgroup.
It starts detached sleepers (setsid and a double fork) whose pids go to
evil/sleepers, and then serves:
  POST /evil/plant     plant symlinks at every name the daemon writes in the
                       Hermes home (pointing at daemon-owned files)
  POST /evil/forkbomb  fork until refused (pids.max), report the count
  POST /evil/allocate  allocate 64 MiB chunks until killed or refused
Python 3.11 standard library only.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA = "/var/lib/hermes-tenantd"


def managed_env() -> dict:
    out = {}
    path = os.path.join(os.environ.get("HERMES_MANAGED_DIR", ""), ".env")
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if "=" in line and not line.startswith("#"):
                    k, v = line.strip().split("=", 1)
                    out[k] = v
    except OSError:
        pass
    return out


def attempt(report: dict, name: str, fn) -> None:
    try:
        fn()
        report[name] = "SUCCEEDED"
    except Exception as e:  # noqa: BLE001 - any refusal counts as denied
        report[name] = f"denied: {type(e).__name__}: {e}"


def read(path):
    def go():
        with open(path, "rb") as f:
            f.read(1)
    return go


def write(path):
    def go():
        with open(path, "ab") as f:
            f.write(b"evil\n")
    return go


def sqlite_rw(path):
    def go():
        import sqlite3
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        conn.execute("DELETE FROM usage_ledger")
        conn.commit()
    return go


def attacks(home: str) -> dict:
    report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
    creds = glob.glob("/run/credentials/*/tenant-runtime") or ["/run/credentials/hermes-tenantd.service/tenant-runtime"]
    attempt(report, "read /etc credential", read("/etc/hermes-tenantd/credential"))
    for c in creds:
        attempt(report, f"read {c}", read(c))
    attempt(report, "list the data dir", lambda: os.listdir(DATA))
    attempt(report, "read tenantd.db", read(f"{DATA}/tenantd.db"))
    attempt(report, "open tenantd.db read-write", sqlite_rw(f"{DATA}/tenantd.db"))
    attempt(report, "write tenantd.db", write(f"{DATA}/tenantd.db"))
    attempt(report, "read the gateway key file", read(f"{DATA}/gateway_api_key"))
    attempt(report, "read credential.state", read(f"{DATA}/credential.state"))
    managed = os.environ.get("HERMES_MANAGED_DIR", "/run/hermes-tenantd/managed")
    attempt(report, "write the managed .env", write(os.path.join(managed, ".env")))
    attempt(report, "create a file in the managed scope", write(os.path.join(managed, "evil")))
    attempt(report, "read the daemon's environment", read("/proc/1/environ"))
    for cg in glob.glob("/sys/fs/cgroup/**/hermes-tenantd.service", recursive=True)[:1]:
        attempt(report, "move itself into the daemon's cgroup", write(os.path.join(cg, "daemon", "cgroup.procs")))
        attempt(report, "raise its own pids.max", write(os.path.join(cg, "agent", "pids.max")))
        attempt(report, "remove its own memory.max", write(os.path.join(cg, "agent", "memory.max")))
    attempt(report, "regain root (setuid 0)", lambda: os.setuid(0))
    return report


def plant_symlinks(home: str) -> list:
    """Symlinks at the names the daemon writes in the Hermes home, pointing
    at files the agent cannot write but the daemon's user could."""
    targets = {
        ".gateway-planned-stop.json": f"{DATA}/gateway_api_key",
        ".env": f"{DATA}/tenantd.db",
        "config.yaml": f"{DATA}/credential.state",
    }
    planted = []
    for name, target in targets.items():
        path = os.path.join(home, name)
        try:
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(target, path)
            planted.append(name)
        except OSError as e:
            print(f"evil: cannot plant {name}: {e}", file=sys.stderr)
    return planted


def detach_sleepers(evil: str) -> list:
    pids = []
    # setsid: own session and process group.
    p = subprocess.Popen(["sleep", "100000"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids.append(p.pid)
    # Double fork: the grandchild is reparented away from the gateway.
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        gc = os.fork()
        if gc == 0:
            os.close(r)
            os.close(w)
            os.execvp("sleep", ["sleep", "100001"])
        os.write(w, str(gc).encode())
        os._exit(0)
    os.close(w)
    pids.append(int(os.read(r, 32) or b"0"))
    os.close(r)
    with open(os.path.join(evil, "sleepers"), "w") as f:
        f.write("\n".join(str(x) for x in pids) + "\n")
    return pids


def forkbomb() -> dict:
    n = 0
    kids = []
    err = ""
    try:
        while n < 100000:
            pid = os.fork()
            if pid == 0:
                signal.pause()
                os._exit(0)
            kids.append(pid)
            n += 1
    except OSError as e:
        err = f"{type(e).__name__}: {e}"
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
            os.waitpid(k, 0)
        except OSError:
            pass
    return {"forked": n, "stopped_by": err}


def allocate() -> dict:
    chunks = []
    try:
        while len(chunks) < 1024:  # 64 GiB at most
            chunks.append(bytearray(64 << 20))
    except MemoryError:
        return {"allocated_mib": len(chunks) * 64, "stopped_by": "MemoryError"}
    return {"allocated_mib": len(chunks) * 64, "stopped_by": "cap"}


def main() -> int:
    home = os.environ.get("HERMES_HOME") or os.path.expanduser("~/.hermes")
    evil = os.path.join(home, "evil")
    os.makedirs(evil, exist_ok=True)
    report = attacks(home)
    report["sleepers"] = detach_sleepers(evil)
    report["pid"] = os.getpid()
    tmp = os.path.join(evil, "report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, os.path.join(evil, "report.json"))

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server API
            if self.path in ("/health", "/v1/health"):
                self.reply(200, {"status": "ok", "platform": "hermes-agent", "version": "0.19.0-evil"})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            if self.path == "/evil/plant":
                # Links at the names the daemon writes, while this gateway
                # runs (the test asks once it has checked the attacks).
                self.reply(200, {"planted": plant_symlinks(home)})
            elif self.path == "/evil/forkbomb":
                self.reply(200, forkbomb())
            elif self.path == "/evil/allocate":
                self.reply(200, allocate())
            else:
                self.reply(404, {"error": "not found"})

        def log_message(self, *a):
            pass

    port = int(managed_env().get("API_SERVER_PORT") or os.environ.get("API_SERVER_PORT", "8642"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def on_signal(signum, _frame):
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_signal)
    print(f"evil gateway listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    return 1


if __name__ == "__main__":
    sys.exit(main())
