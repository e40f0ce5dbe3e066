"""The runs API of the fake Hermes gateway (see fake_gateway.py).

Shapes follow hermes-agent 0.19.0 (shared/HERMES.md): `POST /v1/runs` ->
202 {run_id, status}; `GET /v1/runs/{id}/events` is SSE with `data: {json}`
frames and no `event:` line (the name is the JSON field `event`), one
consumer only (a second GET after the stream ended is 404 run_not_found),
ending with a `: stream closed` comment; stop and approval as documented.

What a run does is chosen by words in its input text:

  (default)        3 message.delta, tool.started/completed, run.completed with usage
  "approval"       approval.request, then waits for POST .../approval; deny blocks the tool
  "hang"           one delta, then waits until stopped (or the process dies)
  "fail"           run.failed
  "events:N"       N message.delta events ...
  "rate:R"         ... at R events per second (default: as fast as possible)
  "delay:S"        wait S seconds before the first event
  "say: TEXT"      prints TEXT on stdout when the run is created
  "leak"           prints the API key, an Authorization header with it
                   and every LEAK_* start variable (for redaction tests)
  "env:NAME"       one delta `NAME=value` (or `NAME unset`) from the environment
                   the gateway had at its start (its env, then HERMES_HOME/.env,
                   then the managed .env): what a tool subprocess of the real
                   hermes-agent 0.19.0 sees, which only a restart refreshes

Settings (env FAKE_GW_<NAME> or the control file): `no_runs` hides the runs
API from /v1/capabilities and 404s it (the daemon must fall back to chat
completions); `runs_429` answers 429 to that many POST /v1/runs first; `runs_fail` makes
every run end `run.failed` (a release that serves health but not runs);
`approval_timeout` (seconds) denies an unanswered approval after that long
without an `approval.responded` event and the run still ends `run.completed`,
as hermes-agent 0.19.0 does after its 60 s `approvals.timeout`.
"""

import json
import sys
import re
import secrets
import threading
import time

RUNS = {}
LOCK = threading.Lock()
# The effective environment at process start (set by fake_gateway.py).
START_ENV = {}
REJECTED = [0]


class Run:
    def __init__(self, run_id, body, approval_timeout=0):
        self.id = run_id
        self.approval_timeout = approval_timeout
        self.body = body
        self.events = []
        self.cond = threading.Condition()
        self.status = "running"
        self.done = False
        self.consumed = False
        self.stop = threading.Event()
        self.approval = None
        self.approval_pending = False
        self.fail_all = False
        self.created = time.time()

    def emit(self, name, **fields):
        payload = {"event": name, "run_id": self.id, "timestamp": time.time()}
        payload.update(fields)
        with self.cond:
            self.events.append(payload)
            if name in ("run.completed", "run.failed", "run.cancelled"):
                self.done = True
                self.status = name.split(".")[1]
            self.cond.notify_all()


def input_text(body):
    value = body.get("input")
    if isinstance(value, list):
        users = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return str(value or "")


def number(text, key, default):
    m = re.search(key + r":([0-9.]+)", text)
    return float(m.group(1)) if m else default


def script(run):
    text = input_text(run.body)
    delay = number(text, "delay", 0)
    if delay and run.stop.wait(delay):
        run.emit("run.cancelled")
        return
    m = re.search(r"env:([A-Z][A-Z0-9_]*)", text)
    if m:
        name = m.group(1)
        said = f"{name}={START_ENV[name]}" if name in START_ENV else f"{name} unset"
        run.emit("message.delta", delta=said)
        run.emit("run.completed", output=said, usage={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2})
        return
    if "fail" in text or run.fail_all:
        run.emit("message.delta", delta="about to fail")
        run.emit("run.failed", error="model exploded")
        return
    if "hang" in text:
        run.emit("message.delta", delta="working")
        run.stop.wait()
        run.emit("run.cancelled")
        return
    if "approval" in text:
        run.emit("message.delta", delta="I need to run a command.")
        with run.cond:
            run.approval_pending = True
            run.status = "waiting_for_approval"
        run.emit(
            "approval.request",
            command="rm -rf /tmp/x",
            pattern_key="rm",
            pattern_keys=["rm"],
            description="delete files",
            allow_permanent=True,
            choices=["once", "session", "always", "deny"],
        )
        deadline = time.monotonic() + run.approval_timeout if run.approval_timeout else None
        with run.cond:
            while run.approval is None and not run.stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                run.cond.wait(0.1)
            choice = run.approval
            run.approval_pending = False
            run.status = "running"
        if run.stop.is_set():
            # As hermes-agent does: the stop denies the approval and the
            # agent unwinds (it may still say something) before the end.
            run.emit("message.delta", delta=" Stopped.")
            run.emit("run.cancelled")
            return
        if choice is None:
            # Expired: the tool is told it was blocked; no event says so.
            run.emit("message.delta", delta="The command was not approved in time.")
            run.emit("run.completed", output="I need to run a command.The command was not approved in time.",
                     usage={"input_tokens": 20, "output_tokens": 9, "total_tokens": 29})
            return
        run.emit("approval.responded", choice=choice, resolved=True)
        if choice == "deny":
            run.emit("message.delta", delta="The command was denied.")
            run.emit("run.completed", output="The command was denied.",
                     usage={"input_tokens": 20, "output_tokens": 5, "total_tokens": 25})
            return
        run.emit("tool.started", tool="terminal", preview="rm -rf /tmp/x")
        run.emit("tool.completed", tool="terminal", duration=0.01, error=False)
        run.emit("run.completed", output="Done.", usage={"input_tokens": 20, "output_tokens": 2, "total_tokens": 22})
        return
    n = int(number(text, "events", 0))
    if n:
        rate = number(text, "rate", 0)
        gap = 1.0 / rate if rate else 0
        start = time.monotonic()
        for i in range(n):
            if run.stop.is_set():
                run.emit("run.cancelled")
                return
            if gap:
                wait = start + i * gap - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            run.emit("message.delta", delta=f"d{i} ", sent_at=time.time())
        run.emit("run.completed", output=f"{n} deltas", usage={"input_tokens": 1, "output_tokens": n, "total_tokens": n + 1})
        return
    for d in ("Hello", " from", " the fake gateway."):
        run.emit("message.delta", delta=d)
    run.emit("tool.started", tool="web_search", preview="weather lisbon")
    run.emit("tool.completed", tool="web_search", duration=0.02, error=False)
    run.emit("run.completed", output="Hello from the fake gateway.",
             usage={"input_tokens": 12, "output_tokens": 6, "total_tokens": 18})


def run_id_of(handler, suffix=""):
    path = handler.path.split("?", 1)[0]
    rest = path[len("/v1/runs/"):]
    if suffix:
        rest = rest[: -len(suffix)] if rest.endswith(suffix) else None
    return rest


def not_found(run_id):
    return 404, {"error": {"message": f"run {run_id} not found", "code": "run_not_found"}}


def say(state, text):
    """What the real gateway's tools may print: "say: TEXT" prints TEXT,
    "leak" prints the API key (plain and as an Authorization header) and
    every LEAK_* variable of the start environment (the logs API and
    diagnostics must redact all of it)."""
    if "say:" in text:
        print("fake-gateway: " + text.split("say:", 1)[1].strip(), flush=True)
    if "leak" in text.split():
        key = state.env.get("API_SERVER_KEY", "")
        print(f"fake-gateway: my key is {key}", flush=True)
        print(f"fake-gateway: sending Authorization: Bearer {key}", file=sys.stderr, flush=True)
        for k, v in sorted(START_ENV.items()):
            if k.startswith("LEAK_"):
                print(f"fake-gateway: {k}={v}", flush=True)


def create_run(handler, state):
    if state.setting("no_runs", False):
        return 404, {"error": {"message": "not found", "code": "not_found"}}
    limit = int(state.setting("runs_429", 0) or 0)
    if REJECTED[0] < limit:
        REJECTED[0] += 1
        return 429, {"error": {"message": "too many runs", "code": "rate_limit_exceeded"}}, {"Retry-After": "1"}
    body = handler.json_body() or {}
    if not body.get("input"):
        return 400, {"error": {"message": "input is required", "code": "invalid_request"}}
    say(state, input_text(body))
    run = Run("run_" + secrets.token_hex(16), body, float(state.setting("approval_timeout", 0) or 0))
    run.fail_all = bool(state.setting("runs_fail", False))
    with LOCK:
        RUNS[run.id] = run
    threading.Thread(target=script, args=(run,), daemon=True).start()
    return 202, {"run_id": run.id, "status": "started"}


def runs_get(handler, state):
    path = handler.path.split("?", 1)[0]
    if path.endswith("/events"):
        return run_events(handler, state)
    run_id = run_id_of(handler)
    run = RUNS.get(run_id)
    if run is None:
        return not_found(run_id)
    return 200, {"object": "hermes.run", "run_id": run.id, "status": run.status,
                 "created_at": run.created, "updated_at": time.time()}


def run_events(handler, state):
    run_id = run_id_of(handler, "/events")
    run = RUNS.get(run_id)
    if run is None or run.consumed:
        return not_found(run_id)
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    sent = 0
    try:
        while True:
            with run.cond:
                while sent >= len(run.events) and not run.done:
                    if not run.cond.wait(30):
                        break
                batch = run.events[sent:]
                done = run.done and sent + len(batch) >= len(run.events)
            if not batch and not done:
                handler.wfile.write(b": keep-alive\n\n")
                handler.wfile.flush()
                continue
            out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in batch)
            sent += len(batch)
            handler.wfile.write(out)
            handler.wfile.flush()
            if done:
                handler.wfile.write(b": stream closed\n\n")
                handler.wfile.flush()
                run.consumed = True
                return None
    except (BrokenPipeError, ConnectionResetError):
        return None


def runs_post(handler, state):
    path = handler.path.split("?", 1)[0]
    if path.endswith("/stop"):
        run_id = run_id_of(handler, "/stop")
        run = RUNS.get(run_id)
        if run is None:
            return not_found(run_id)
        run.stop.set()
        with run.cond:
            run.status = "stopping"
            run.cond.notify_all()
        return 200, {"run_id": run_id, "status": "stopping"}
    if path.endswith("/approval"):
        run_id = run_id_of(handler, "/approval")
        run = RUNS.get(run_id)
        if run is None:
            return not_found(run_id)
        body = handler.json_body() or {}
        choice = body.get("choice")
        if choice not in ("once", "session", "always", "deny"):
            return 400, {"error": {"message": "invalid choice", "code": "invalid_approval_choice"}}
        with run.cond:
            if not run.approval_pending:
                return 409, {"error": {"message": "no approval pending", "code": "approval_not_active"}}
            run.approval = choice
            run.cond.notify_all()
        return 200, {"run_id": run_id, "choice": choice, "resolved": True}
    return 404, {"error": {"message": "not found", "code": "not_found"}}


def chat_completions(handler, state):
    body = handler.json_body() or {}
    messages = body.get("messages") or []
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    text = str(users[-1]) if users else ""
    words = ["You", " said:", " " + text[:40]]
    session = handler.headers.get("X-Hermes-Session-Id") or ("sess_" + secrets.token_hex(8))
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("X-Hermes-Session-Id", session)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    try:
        for w in words:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}}]}
            handler.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            handler.wfile.flush()
        handler.wfile.write(b'event: hermes.tool.progress\ndata: {"tool": "memory", "status": "done"}\n\n')
        usage = {"object": "chat.completion.chunk", "choices": [],
                 "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
        handler.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass
    return None


def capabilities_runs(state):
    return not state.setting("no_runs", False)


def register(routes, prefix_routes):
    routes[("POST", "/v1/runs")] = (create_run, True)
    routes[("POST", "/v1/chat/completions")] = (chat_completions, True)
    prefix_routes[("GET", "/v1/runs/")] = (runs_get, True)
    prefix_routes[("POST", "/v1/runs/")] = (runs_post, True)
