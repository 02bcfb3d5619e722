"""One small HTTP service of the shop example: `python app.py NAME [--calls URL] [--fail-rate F]`.

Plain stdlib, mesh-unaware, as an application in a mesh should be:

- it listens on `127.0.0.1:$PORT` (`pymesh up` sets `PORT`, and `PYMESH_HOST` if not loopback);
- it calls the next service by its mesh name (`http://orders/orders`) with urllib, which sends
  the request through `$http_proxy` — the sidecar's outbound listener — and never resolves the
  name itself;
- every answer is JSON naming the services the request went through, e.g.
  `{"service": "web", "path": ["web", "orders", "inventory"]}`, also in the `x-shop-path`
  header, so a test can see the request cross all three sidecars.

With `--fail-rate F` a share F of requests gets a deliberate 503; a failed call downstream
becomes a 502 here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CALL_TIMEOUT_S = 5.0
MAX_DOWNSTREAM_BODY = 64 * 1024


class ShopHandler(BaseHTTPRequestHandler):
    """Answers every GET; keep-alive (HTTP/1.1 with Content-Length) towards the sidecar."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the second waits for the sidecar's
    # delayed ACK (~40 ms) on every reused keep-alive connection.
    disable_nagle_algorithm = True
    server: ShopServer

    def do_GET(self) -> None:
        srv = self.server
        # A little service time, with a tail, so p50 and p99 differ.
        time.sleep(min(random.expovariate(1 / 0.0015), 0.05))
        if srv.fail_rate and random.random() < srv.fail_rate:
            self._reply(503, {"service": srv.name, "error": "injected failure"})
            return
        path = [srv.name]
        if srv.calls:
            try:
                with srv.opener.open(srv.calls, timeout=CALL_TIMEOUT_S) as resp:
                    downstream: Any = json.loads(resp.read(MAX_DOWNSTREAM_BODY))
            except urllib.error.HTTPError as exc:
                status = exc.code
                exc.close()
                error = f"{srv.calls} answered {status}"
                self._reply(502, {"service": srv.name, "error": error})
                return
            except (OSError, ValueError) as exc:
                self._reply(502, {"service": srv.name, "error": f"{srv.calls}: {exc}"})
                return
            path += [str(p) for p in downstream.get("path", [])]
        self._reply(200, {"service": srv.name, "path": path})

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if "path" in doc:
            self.send_header("x-shop-path", ",".join(doc["path"]))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the sidecars keep the access log."""


class ShopServer(ThreadingHTTPServer):
    """The listener plus what the handler needs to know."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], name: str, calls: str | None, fail_rate: float):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, ShopHandler)
        self.name = name
        self.calls = calls
        self.fail_rate = fail_rate
        # build_opener() installs a ProxyHandler from the environment (http_proxy).
        self.opener = urllib.request.build_opener()


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--calls", metavar="URL", help="call this URL (through http_proxy) per request")
    p.add_argument("--fail-rate", type=float, default=0.0, metavar="F")
    args = p.parse_args(argv)
    host = os.environ.get("PYMESH_HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    with ShopServer((host, port), args.name, args.calls, args.fail_rate) as server:
        print(f"{args.name} listening on {host}:{port}", file=sys.stderr, flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
