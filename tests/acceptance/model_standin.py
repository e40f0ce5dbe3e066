#!/usr/bin/env python3
"""The model stand-in of the acceptance tests: an OpenAI-compatible
`/v1/models` and `/v1/chat/completions` (streamed or not) that always
answers "pong", and appends `{model, tools}` of every chat request as one
JSON line to RECORD_FILE (what the gateway sent the model).

    model_standin.py PORT [RECORD_FILE]
"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
RECORD = sys.argv[2] if len(sys.argv) > 2 else None
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code); self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            return self.send(200, {"object": "list", "data": [{"id": "standin", "object": "model", "owned_by": "test"}]})
        self.send(404, {"error": {"message": "not found"}})
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0); req = json.loads(self.rfile.read(n) or b"{}")
        if not self.path.endswith("/chat/completions"):
            return self.send(404, {"error": {"message": "not found"}})
        tools = [t.get("function", {}).get("name") for t in req.get("tools") or []]
        if RECORD:
            with open(RECORD, "a") as f:
                f.write(json.dumps({"model": req.get("model"), "tools": tools}) + "\n")
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        msg = {"role": "assistant", "content": "pong"}
        if req.get("stream"):
            chunks = [{"id": "c1", "object": "chat.completion.chunk", "created": int(time.time()), "model": "standin",
                       "choices": [{"index": 0, "delta": msg, "finish_reason": None}]},
                      {"id": "c1", "object": "chat.completion.chunk", "created": int(time.time()), "model": "standin",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}]
            body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return self.send(200, body.encode(), "text/event-stream")
        self.send(200, {"id": "c1", "object": "chat.completion", "created": int(time.time()), "model": "standin",
                        "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}], "usage": usage})
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
