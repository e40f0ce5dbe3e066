#!/usr/bin/env python3
"""A fake Hermes gateway for hermes-tenantd's integration tests.

Python 3.11 standard library only. It behaves like `hermes gateway run`
where the daemon can see it:

* settings come from the environment, then `HERMES_HOME/.env`, then the
  managed scope `HERMES_MANAGED_DIR/.env` (last wins, key by key), so the
  daemon-owned `API_SERVER_PORT` / `API_SERVER_KEY` are honoured exactly as
  the real gateway does;
* `GET /health` (no auth) -> `{"status":"ok","platform":"hermes-agent","version":...}`;
  `GET /v1/capabilities` needs `Authorization: Bearer API_SERVER_KEY`;
* SIGTERM -> exit code 1 (as the real one), after noting whether the
  planned-stop marker `HERMES_HOME/.gateway-planned-stop.json` named it.

Failure modes (environment `FAKE_GW_<NAME>` or key `<name>` in the control
file `HERMES_HOME/fake_gateway.json`; the file wins and is re-read on every
request, so a test can flip modes while the process runs or between spawns):

  ready_delay  seconds before /health answers ok (503 before)       [0]
  never_ready  /health never answers ok                               [false]
  exit_after   exit on its own after N seconds ...                    [none]
  exit_code    ... with this code                                     [1]
  exit_spawns  apply exit_after only to the first N starts (spawns.log) [all]
  ignore_term  ignore SIGTERM (so the daemon must SIGKILL)            [false]
  grandchild   spawn a grandchild process (same process group)        [false]
  unhealthy    /health answers 503 (also: POST /fake/unhealthy {"on": true})
  term_exit_code  exit code on SIGTERM                                [1]
  POST /fake/crash {"signal": N}: die by signal N now (default SIGSEGV)
  version      version reported by /health                            [0.19.0-fake]
  no_listen    never open the port at all                             [false]
  term_close_listener  on SIGTERM close the listening socket and stay
               alive (hermes-agent 0.19.0 closes its API listener first
               and exits after its teardown), until killed            [false]
  accomplice   once listening, start a process in the gateway's group
               and cgroup (the agent's shell tool) that binds the port
               as soon as it is free and answers like a healthy gateway,
               logging to `accomplice.log`: "bound", then "connection"
               per accepted connection and "read <bytes>" per request   [false]
  reject_managed  exit 78 (EX_CONFIG) at start when the managed
               `HERMES_MANAGED_DIR/config.yaml` contains this text     [none]
  mcp_fail     at start, log to `HERMES_HOME/logs/errors.log` that the MCP
               server of this name could not be connected, as
               hermes-agent 0.19.0 does                                [none]

What it did is written under `HERMES_HOME/fake_gateway/` for the tests to
read: `spawns.log` ("pid start_time" per start), `env_at_start.<pid>`
(the bytes of `HERMES_HOME/.env` it loaded), `grandchild.<pid>` (the
grandchild's pid), `events.log` ("pid sigterm planned=true|false"),
`accomplice.log` (see `accomplice`).

Extending it: add a handler to ROUTES (method, path) -> function(handler,
state) and return `(status, json_body)`; prefix routes (e.g. `/v1/runs/`)
go in PREFIX_ROUTES.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_gateway_runs  # noqa: E402  (the runs API, in its own file)

STARTED = time.monotonic()


def read_env_file(path):
    out = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip().strip('"').strip("'")
    return out


def effective_env():
    env = dict(os.environ)
    home = os.environ.get("HERMES_HOME")
    if home:
        env.update(read_env_file(Path(home) / ".env"))
    # As 0.19.0 (hermes_cli/env_loader.py): the managed directory is looked
    # up after the tenant's `.env` was loaded over the environment.
    managed = env.get("HERMES_MANAGED_DIR")
    if managed:
        env.update(read_env_file(Path(managed) / ".env"))
    return env


class State:
    """Settings, the control file, and the record directory."""

    def __init__(self):
        self.env = effective_env()
        self.home = Path(self.env.get("HERMES_HOME", "."))
        self.control = Path(os.environ.get("FAKE_GW_CONTROL", self.home / "fake_gateway.json"))
        self.records = self.home / "fake_gateway"
        self.records.mkdir(parents=True, exist_ok=True)
        self.unhealthy_override = None
        self.lock = threading.Lock()

    def setting(self, name, default=None):
        try:
            control = json.loads(self.control.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            control = {}
        if name in control:
            return control[name]
        raw = os.environ.get("FAKE_GW_" + name.upper())
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        try:
            return float(raw)
        except ValueError:
            return raw

    def record(self, name, line):
        with self.lock:
            with open(self.records / name, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def healthy(self):
        if self.setting("never_ready", False):
            return False
        if time.monotonic() - STARTED < float(self.setting("ready_delay", 0) or 0):
            return False
        if self.unhealthy_override is not None:
            return not self.unhealthy_override
        return not self.setting("unhealthy", False)


def proc_start_time(pid):
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rfind(")") + 2:].split()[19])


# ---- routes ---------------------------------------------------------------------


def health(handler, state):
    if not state.healthy():
        return 503, {"status": "starting_or_unhealthy"}
    return 200, {
        "status": "ok",
        "platform": "hermes-agent",
        "version": str(state.setting("version", "0.19.0-fake")),
    }


def capabilities(handler, state):
    # The shape of hermes-agent 0.19.0's document (the parts the daemon reads).
    runs = fake_gateway_runs.capabilities_runs(state)
    endpoints = {"chat_completions": {"method": "POST", "path": "/v1/chat/completions"}}
    if runs:
        endpoints["runs"] = {"method": "POST", "path": "/v1/runs"}
    return 200, {
        "object": "hermes.api_server.capabilities",
        "platform": "hermes-agent",
        "features": {
            "chat_completions": True,
            "chat_completions_streaming": True,
            "run_submission": runs,
            "run_events_sse": runs,
            "run_stop": runs,
            "run_approval_response": runs,
        },
        "endpoints": endpoints,
        "fake": True,
    }


def set_unhealthy(handler, state):
    body = handler.json_body() or {}
    state.unhealthy_override = bool(body.get("on", True))
    return 200, {"unhealthy": state.unhealthy_override}


def crash(handler, state):
    body = handler.json_body() or {}
    sig = int(body.get("signal", signal.SIGSEGV))
    handler.send_json(200, {"crashing": sig})
    handler.wfile.flush()
    # Python leaves SIGSEGV/SIGABRT/SIGKILL at their defaults: the process dies.
    os.kill(os.getpid(), sig)
    return None


# (method, exact path) -> (handler, needs the API key)
ROUTES = {
    ("GET", "/health"): (health, False),
    ("GET", "/v1/health"): (health, False),
    ("GET", "/v1/capabilities"): (capabilities, True),
    ("POST", "/fake/unhealthy"): (set_unhealthy, False),
    ("POST", "/fake/crash"): (crash, False),
}
# (method, path prefix) -> (handler, needs the API key); checked after ROUTES.
PREFIX_ROUTES = {}
fake_gateway_runs.register(ROUTES, PREFIX_ROUTES)


class Handler(BaseHTTPRequestHandler):
    state = None  # set in main()
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-gateway: " + (fmt % args) + "\n")

    def json_body(self):
        # Read once and keep it: an unread body would be taken for the
        # next request on a kept-alive connection.
        if not hasattr(self, "_body"):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n > 0 else b""
            try:
                self._body = json.loads(raw) if raw else None
            except ValueError:
                self._body = None
        return self._body

    def send_json(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        key = self.state.env.get("API_SERVER_KEY", "")
        return bool(key) and self.headers.get("Authorization") == f"Bearer {key}"

    def dispatch(self, method):
        # One handler serves every request of a kept-alive connection.
        self.__dict__.pop("_body", None)
        self.json_body()
        path = self.path.split("?", 1)[0]
        route = ROUTES.get((method, path))
        if route is None:
            for (m, prefix), r in PREFIX_ROUTES.items():
                if m == method and path.startswith(prefix):
                    route = r
                    break
        if route is None:
            return self.send_json(404, {"error": {"message": "not found", "code": "not_found"}})
        fn, needs_key = route
        if needs_key and not self.authorized():
            return self.send_json(401, {"error": {"message": "invalid key", "code": "invalid_api_key"}})
        result = fn(self, self.state)
        if result is not None:
            self.send_json(*result)

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")


def spawn_grandchild(state):
    code = "import signal, time\n"
    if state.setting("grandchild_ignore_term", False):
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "time.sleep(1000000)\n"
    p = subprocess.Popen([sys.executable, "-c", code])
    (state.records / f"grandchild.{os.getpid()}").write_text(str(p.pid))
    return p


# The agent's shell tool taking the gateway's port (switch `accomplice`):
# argv port, log path. Exits when its parent (the gateway) is gone.
ACCOMPLICE = r"""
import os, socket, sys, time
port, log, parent = int(sys.argv[1]), sys.argv[2], os.getppid()
def note(line):
    with open(log, "a", encoding="utf-8") as f:
        f.write(line + "\n")
s = None
while s is None:
    if os.getppid() != parent:
        sys.exit(0)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        c.bind(("127.0.0.1", port))
        c.listen()
        s = c
    except OSError:
        c.close()
        time.sleep(0.005)
note("bound")
s.settimeout(0.2)
body = b'{"status":"ok","platform":"hermes-agent","version":"accomplice"}'
while os.getppid() == parent:
    try:
        conn, _ = s.accept()
    except socket.timeout:
        continue
    note("connection")
    conn.settimeout(2)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    if data:
        note("read " + repr(data[:400]))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    conn.close()
"""


def main():
    state = State()
    Handler.state = state
    # What the process (and every tool it starts) keeps until a restart.
    fake_gateway_runs.START_ENV = effective_env()
    pid = os.getpid()
    state.record("spawns.log", f"{pid} {proc_start_time(pid)}")
    try:
        seen = (state.home / ".env").read_bytes()
    except OSError:
        seen = b""
    # Whole or absent for a test polling it: written aside, then renamed.
    aside = state.records / f".env_at_start.{pid}.tmp"
    aside.write_bytes(seen)
    os.replace(aside, state.records / f"env_at_start.{pid}")
    done = threading.Event()
    exit_code = [1]
    servers = []

    def on_term(signum, frame):
        planned = False
        try:
            marker = json.loads((state.home / ".gateway-planned-stop.json").read_text())
            planned = marker.get("target_pid") == pid and marker.get("target_start_time") == proc_start_time(pid)
        except (OSError, ValueError):
            pass
        state.record("events.log", f"{pid} sigterm planned={'true' if planned else 'false'}")
        if state.setting("ignore_term", False):
            print(f"fake-gateway {pid}: ignoring SIGTERM", flush=True)
            return
        if state.setting("term_close_listener", False):
            print(f"fake-gateway {pid}: SIGTERM: closing the listener, exiting later", flush=True)
            for server in servers:
                threading.Thread(target=lambda s=server: (s.shutdown(), s.server_close())).start()
            return
        # The real gateway exits 1 on SIGTERM on purpose (0 after a planned stop).
        exit_code[0] = int(state.setting("term_exit_code", 1))
        done.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, lambda s, f: (exit_code.__setitem__(0, 0), done.set()))

    if state.setting("grandchild", False):
        spawn_grandchild(state)

    # hermes-agent 0.19.0 connects its MCP servers before it serves and
    # logs each failure (tools/mcp_tool.py) to logs/errors.log.
    mcp_fail = state.setting("mcp_fail", None)
    if mcp_fail:
        logs = state.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "errors.log", "a", encoding="utf-8") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S,000")
                    + f" WARNING tools.mcp_tool: Failed to connect to MCP server '{mcp_fail}': "
                    + "Connection refused (attempt 1)\n")

    # A configuration the real gateway refuses: it exits 78 before serving.
    reject = state.setting("reject_managed", None)
    managed = state.env.get("HERMES_MANAGED_DIR")
    if reject and managed:
        try:
            text = (Path(managed) / "config.yaml").read_text(encoding="utf-8")
        except OSError:
            text = ""
        if str(reject) in text:
            print(f"fake-gateway {pid}: refusing the managed config (exit 78)", flush=True)
            os._exit(78)

    port = int(state.env.get("API_SERVER_PORT", "8642"))
    host = state.env.get("API_SERVER_HOST", "127.0.0.1")
    if not state.setting("no_listen", False):
        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        # shutdown() waits for serve_forever's next poll (0.5 s by default):
        # close the listener about as soon as 0.19.0 does (~70 ms).
        poll = 0.05 if state.setting("term_close_listener", False) else 0.5
        threading.Thread(target=server.serve_forever, args=(poll,), daemon=True).start()
        servers.append(server)
        if state.setting("accomplice", False):
            log = state.records / "accomplice.log"
            subprocess.Popen([sys.executable, "-c", ACCOMPLICE, str(port), str(log)])
    print(f"fake-gateway {pid}: listening on {host}:{port}", flush=True)
    print(f"fake-gateway {pid}: a line on stderr", file=sys.stderr, flush=True)

    exit_after = state.setting("exit_after", None)
    exit_spawns = state.setting("exit_spawns", None)
    if exit_spawns not in (None, False, ""):
        spawns = len((state.records / "spawns.log").read_text().splitlines())
        if spawns > int(exit_spawns):
            exit_after = None
    if exit_after not in (None, False, ""):
        if done.wait(float(exit_after)):
            os._exit(exit_code[0])
        code = int(state.setting("exit_code", 1))
        print(f"fake-gateway {pid}: exiting with {code}", flush=True)
        os._exit(code)
    while not done.wait(1.0):
        pass
    print(f"fake-gateway {pid}: stopping", flush=True)
    os._exit(exit_code[0])


if __name__ == "__main__":
    main()
