#!/usr/bin/env python3
"""A minimal fake hub for cron delivery tests (Python 3 stdlib only).

  POST /v1/tenant-runtime/{tenant}/deliveries   record; answer 503 while
                                                 "fail" > 0 (and count it down),
                                                 else 200 {"ok": true}
  GET  /deliveries                               every recorded attempt:
                                                 {path, auth, body, answered}
  POST /control {"fail": N}                      fail the next N deliveries

Start: fake_delivery_hub.py [--fail N]. The first line on stdout is {"port": N}.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
ATTEMPTS = []
STATE = {"fail": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"null")

    def do_GET(self):
        if self.path == "/deliveries":
            with LOCK:
                return self._send(200, ATTEMPTS)
        self._send(404, {"error": "no such route"})

    def do_POST(self):
        body = self._body()
        if self.path == "/control":
            with LOCK:
                STATE["fail"] = int(body.get("fail", 0))
            return self._send(200, STATE)
        if self.path.startswith("/v1/tenant-runtime/") and self.path.endswith("/deliveries"):
            with LOCK:
                failing = STATE["fail"] > 0
                if failing:
                    STATE["fail"] -= 1
                status = 503 if failing else 200
                ATTEMPTS.append({
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "body": body,
                    "answered": status,
                })
            return self._send(status, {"ok": not failing})
        self._send(404, {"error": "no such route"})


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--fail", type=int, default=0)
    ARGS = p.parse_args()
    STATE["fail"] = ARGS.fail
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
