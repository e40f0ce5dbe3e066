#!/usr/bin/env python3
"""A fake hub for hermes-tenantd's heartbeat tests (Python 3 stdlib only).

It records every heartbeat and answers according to a mode that tests switch
at run time:

  POST /v1/tenant-runtime/{tenant}/heartbeat   record, then answer per mode
  GET  /beats?since=N                          recorded beats from index N
  POST /control   {"mode": ..., "desired": {...}|null, "interval_s": x|null,
                   "now_offset_s": x, "ack": true|false, "ack_seq": n|null,
                   "hang_s": x}                 merge into the settings
  POST /reset                                  forget recorded beats
  GET  /healthz

Modes: "ack" (200 with a reply: ack_seq = highest usage seq received unless
"ack" is false or "ack_seq" overrides it, plus desired/interval/now),
"500" (HTTP 500), "hang" (never answers; holds the request until the mode
changes or hang_s passes, then drops it), "garbage" (200 with a non-JSON
body), "close" (drops the connection without answering).

Start: fake_hub.py [--port N] [--record FILE.jsonl] [--quiet]
                   [--tls-cert CERT.pem --tls-key KEY.pem]   (HTTPS)
The first line on stdout is {"port": N}.
"""

import argparse
import datetime
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
BEATS = []
SETTINGS = {
    "mode": "ack",
    "desired": None,
    "interval_s": None,
    "now_offset_s": 0.0,
    "ack": True,
    "ack_seq": None,
    "hang_s": 60.0,
}
RECORD = None
MAX_BODY = 16 * 1024 * 1024


def now_iso(offset_s):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet by default
        if not ARGS.quiet:
            sys.stderr.write("fake_hub: " + (fmt % args) + "\n")

    def _send(self, status, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/healthz":
            return self._send(200, {"status": "ok"})
        if self.path.startswith("/beats"):
            since = 0
            if "since=" in self.path:
                since = int(self.path.split("since=", 1)[1].split("&", 1)[0])
            with LOCK:
                beats = BEATS[since:]
                total = len(BEATS)
            return self._send(200, {"beats": beats, "total": total})
        return self._send(404, {"code": "not_found"})

    def do_POST(self):
        raw = self._body()
        if self.path == "/control":
            change = json.loads(raw or b"{}")
            with LOCK:
                SETTINGS.update(change)
                current = dict(SETTINGS)
            return self._send(200, current)
        if self.path == "/reset":
            with LOCK:
                BEATS.clear()
            return self._send(200, {"ok": True})
        parts = self.path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "tenant-runtime"] and parts[3] == "heartbeat":
            return self._heartbeat(parts[2], raw)
        return self._send(404, {"code": "not_found"})

    def _heartbeat(self, tenant, raw):
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unparsed": raw.decode("utf-8", "replace")}
        with LOCK:
            settings = dict(SETTINGS)
            entry = {
                "i": len(BEATS),
                "t": time.monotonic(),
                "wall": time.time(),
                "tenant": tenant,
                "auth": self.headers.get("Authorization"),
                "content_type": self.headers.get("Content-Type"),
                "mode": settings["mode"],
                "body": body,
            }
            BEATS.append(entry)
            if RECORD:
                RECORD.write(json.dumps(entry) + "\n")
                RECORD.flush()
        mode = settings["mode"]
        if mode == "500":
            return self._send(500, b"internal error", "text/plain")
        if mode == "garbage":
            return self._send(200, b"<html>this is not json", "application/json")
        if mode == "close":
            self.close_connection = True
            return
        if mode == "hang":
            deadline = time.monotonic() + float(settings["hang_s"])
            while time.monotonic() < deadline:
                with LOCK:
                    if SETTINGS["mode"] != "hang":
                        break
                time.sleep(0.05)
            self.close_connection = True
            return
        reply = {"now": now_iso(float(settings["now_offset_s"])), "hub_note": "unknown fields are ignored"}
        if settings["ack"]:
            if settings["ack_seq"] is not None:
                reply["ack_seq"] = settings["ack_seq"]
            else:
                entries = (body.get("usage") or {}).get("entries") or [] if isinstance(body, dict) else []
                if entries:
                    reply["ack_seq"] = max(e["seq"] for e in entries)
        if settings["desired"] is not None:
            reply["desired"] = settings["desired"]
        if settings["interval_s"] is not None:
            reply["heartbeat_interval_s"] = settings["interval_s"]
        return self._send(200, reply)


def main():
    global RECORD, ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--record")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    ARGS = p.parse_args()
    if ARGS.record:
        RECORD = open(ARGS.record, "a", encoding="utf-8")
    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # a fleet simulation connects hundreds at once
        allow_reuse_address = True

    server = Server(("127.0.0.1", ARGS.port), Handler)
    if ARGS.tls_cert:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


ARGS = None
if __name__ == "__main__":
    main()
