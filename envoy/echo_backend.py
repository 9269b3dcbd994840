#!/usr/bin/env python3
"""Demo backend: answers every request with 200 and JSON of what it received.

The JSON is ``{"method": ..., "path": ..., "headers": ["name: value", ...]}``, headers in arrival order.

It stands in for an MCP server behind the gateway, so you can see which credential outgoing-auth
sent it. Each request is also printed on one line (method, path, credential headers).
Standard library only; used by ``envoy/demo.py`` and by the ``backend`` service of
``envoy/docker-compose.yaml``.

    python3 envoy/echo_backend.py --host 127.0.0.1 --port 18080
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Headers worth showing in the one-line request log.
SHOWN = ("authorization", "x-api-key")


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-backend"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per request is printed by _handle instead

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = [[k.lower(), v] for k, v in self.headers.items()]
        shown = " ".join(f"{k}={v!r}" for k, v in headers if k in SHOWN) or "(no credential)"
        print(f"{self.command} {self.path} {shown}", flush=True)
        seen = {"method": self.command, "path": self.path, "headers": [f"{k}: {v}" for k, v in headers]}
        body = json.dumps(seen, indent=2)
        data = (body + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
