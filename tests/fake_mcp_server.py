#!/usr/bin/env python3
"""A tiny MCP server over Streamable HTTP for hermes-tenantd's acceptance
test of MCP connections (Python 3.11 standard library only).

    fake_mcp_server.py PORT RECORD_FILE

POST /mcp takes JSON-RPC 2.0 and answers `application/json` (the
Streamable HTTP transport allows a plain JSON answer): `initialize`,
`ping`, `tools/list` (one tool, `lookup_flamingo`) and `tools/call`;
notifications get 202. GET/HEAD/DELETE /mcp: 405 (no server-initiated
stream, no session teardown). Every request is appended to RECORD_FILE as
one JSON line `{method, rpc, authorization}` so a test can see which
credential the agent sent (the expanded `${ENV}` header).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOL = {
    "name": "lookup_flamingo",
    "description": "Look up a flamingo fact (hermes-tenantd acceptance test tool).",
    "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    record = None

    def log_message(self, *args):
        pass

    def note(self, rpc):
        with open(self.record, "a", encoding="utf-8") as f:
            f.write(json.dumps({
                "method": self.command,
                "rpc": rpc,
                "authorization": self.headers.get("Authorization"),
            }) + "\n")

    def send(self, code, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Mcp-Session-Id", "fake-session")
        self.end_headers()
        self.wfile.write(data)

    def refuse(self):
        self.note(None)
        self.send(405, {"error": "method not allowed"})

    do_GET = do_HEAD = do_DELETE = refuse

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            msg = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return self.send(400, {"error": "not JSON"})
        method = msg.get("method")
        self.note(method)
        if "id" not in msg:
            return self.send(202)
        rid = msg["id"]
        if method == "initialize":
            version = (msg.get("params") or {}).get("protocolVersion", "2025-06-18")
            result = {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "fake-mcp", "version": "1.0.0"},
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": [TOOL]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "flamingos are pink"}], "isError": False}
        else:
            return self.send(200, {"jsonrpc": "2.0", "id": rid,
                                   "error": {"code": -32601, "message": "method not found"}})
        self.send(200, {"jsonrpc": "2.0", "id": rid, "result": result})


def main():
    Handler.record = sys.argv[2]
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()


if __name__ == "__main__":
    main()
