#!/usr/bin/env python3
"""A stand-in for `hermes gateway run` used by the deployment tests.

It does what the real gateway needs its sandbox to allow, records whether
each step worked in $HERMES_HOME/selftest.json, then serves GET /health like
the real one ({"status":"ok","platform":"hermes-agent","version":V}) on
127.0.0.1:$API_SERVER_PORT (default 8642) until SIGTERM (exit 1, like the
real gateway) or SIGINT (exit 0).

  --version V        version reported by /health (default 0.19.0)
  --exit-at-once     exit 1 immediately (a broken agent release)
"""

import ctypes
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def selftest(home: str) -> dict:
    results = {}

    def step(name, fn):
        try:
            fn()
            results[name] = "ok"
        except Exception as e:  # noqa: BLE001 - the point is to record any failure
            results[name] = f"failed: {type(e).__name__}: {e}"

    def write_state():
        os.makedirs(os.path.join(home, "state"), exist_ok=True)
        with open(os.path.join(home, "gateway_state.json"), "w") as f:
            json.dump({"pid": os.getpid(), "started_at": time.time()}, f)

    def sqlite_wal():
        conn = sqlite3.connect(os.path.join(home, "state.db"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.close()

    def tool_subprocess():
        # The agent's terminal tool: a shell writing into the workspace.
        out = subprocess.run(
            ["/bin/sh", "-c", 'echo tool-ran > "$HERMES_HOME/tool-output.txt" && id -un'],
            env={**os.environ, "HERMES_HOME": home},
            capture_output=True, text=True, timeout=10, check=True,
        )
        results["tool_user"] = out.stdout.strip()

    def ctypes_callback():
        # libffi closure: needs writable+executable memory on some builds.
        cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)
        cb = cb_type(lambda x: x + 1)
        if cb(41) != 42:
            raise RuntimeError("callback returned the wrong value")

    def tcp_client():
        # Outbound TCP (to the loopback daemon or anything listening locally).
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect_ex(("127.0.0.1", 9))
        finally:
            s.close()

    def resolve():
        socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG)

    def tmp_write():
        with open("/tmp/fake-gateway-tmp", "w") as f:
            f.write("x")

    step("write_state", write_state)
    step("sqlite_wal", sqlite_wal)
    step("tool_subprocess", tool_subprocess)
    step("ctypes_callback", ctypes_callback)
    step("tcp_client", tcp_client)
    step("resolve", resolve)
    step("tmp_write", tmp_write)
    try:
        with open("/proc/self/oom_score_adj") as f:
            results["oom_score_adj"] = int(f.read().strip())
    except OSError as e:
        results["oom_score_adj"] = str(e)
    results["uid"] = os.getuid()
    results["pid"] = os.getpid()
    return results


def main() -> int:
    args = sys.argv[1:]
    version = "0.19.0"
    if "--version" in args:
        version = args[args.index("--version") + 1]
    if "--exit-at-once" in args:
        print("fake gateway: exiting at once (broken release)", file=sys.stderr)
        return 1
    home = os.environ.get("HERMES_HOME") or os.path.expanduser("~/.hermes")
    os.makedirs(home, exist_ok=True)
    results = selftest(home)
    results["version"] = version
    tmp = os.path.join(home, "selftest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f)
    os.replace(tmp, os.path.join(home, "selftest.json"))

    runs = {}

    class Health(BaseHTTPRequestHandler):
        def send_json(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server API
            if self.path in ("/health", "/v1/health"):
                self.send_json(200, {"status": "ok", "platform": "hermes-agent", "version": version})
            elif self.path == "/v1/capabilities":
                # The parts of hermes-agent 0.19.0's document the daemon reads.
                self.send_json(200, {
                    "object": "hermes.api_server.capabilities", "platform": "hermes-agent",
                    "features": {"chat_completions": True, "run_submission": True, "run_events_sse": True},
                    "endpoints": {"runs": {"method": "POST", "path": "/v1/runs"}},
                })
            elif self.path.startswith("/v1/runs/") and self.path.endswith("/events"):
                self.run_events(self.path[len("/v1/runs/"):-len("/events")])
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def do_POST(self):  # noqa: N802 - http.server API
            # A run of the runs API: "slow:N" in its input makes it last N
            # seconds (one delta a second), for the upgrade-with-a-run scenario.
            if self.path != "/v1/runs":
                self.send_json(404, {"error": {"message": "not found", "code": "not_found"}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            text = body.get("input") if isinstance(body.get("input"), str) else json.dumps(body.get("input"))
            secs = 0
            if "slow:" in text:
                secs = int("".join(c for c in text.split("slow:", 1)[1][:4] if c.isdigit()) or 0)
            run_id = "run_" + os.urandom(8).hex()
            runs[run_id] = secs
            self.send_json(202, {"run_id": run_id, "status": "started"})

        def run_events(self, run_id):
            secs = runs.pop(run_id, None)
            if secs is None:
                self.send_json(404, {"error": {"message": "run not found", "code": "run_not_found"}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()

            def event(name, **fields):
                doc = {"event": name, "run_id": run_id, "timestamp": time.time(), **fields}
                self.wfile.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
                self.wfile.flush()

            try:
                for i in range(secs):
                    event("message.delta", delta=f"d{i} ")
                    time.sleep(1)
                event("run.completed", output=f"done after {secs} s",
                      usage={"input_tokens": 1, "output_tokens": secs, "total_tokens": secs + 1})
                self.wfile.write(b": stream closed\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *a):
            pass

    port = int(os.environ.get("API_SERVER_PORT", "8642"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Health)
    code = {"value": 0}

    def on_signal(signum, _frame):
        code["value"] = 1 if signum == signal.SIGTERM else 0
        server.shutdown()

    signal.signal(signal.SIGTERM, lambda s, f: __import__("threading").Thread(target=on_signal, args=(s, f)).start())
    signal.signal(signal.SIGINT, lambda s, f: __import__("threading").Thread(target=on_signal, args=(s, f)).start())
    print(f"fake gateway {version} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    return code["value"]


if __name__ == "__main__":
    sys.exit(main())
