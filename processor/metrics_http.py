"""The metrics / health HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

``/metrics`` serves the exposition of :data:`~processor.metrics_families.REGISTRY`,
``/healthz`` says the loop is alive, ``/readyz`` says every assigned partition has been restored.
Import :class:`Health` and :func:`serve` from :mod:`processor.metrics`, which re-exports them.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.metrics_families import REGISTRY

# The endpoint logs under the public module's name (as it did before it got its own module).
logger = logging.getLogger("processor.metrics")


class Health:
    """Liveness and readiness flags shared by the loop and the HTTP endpoint."""

    def __init__(self) -> None:
        self.alive = False
        self.ready = False
        self.last_loop = 0.0

    def beat(self) -> None:
        """Record that the loop made progress."""
        self.last_loop = time.monotonic()

    def is_live(self, stall_s: float = 60.0) -> bool:
        """Alive and looped within ``stall_s`` seconds."""
        return self.alive and time.monotonic() - self.last_loop < stall_s


class _Handler(BaseHTTPRequestHandler):
    health: Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.health.is_live()
            self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n", "text/plain")
        elif path == "/readyz":
            ok = self.health.ready and self.health.is_live()
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
        else:
            self._send(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http: " + format, *args)


def serve(port: int, health: Health, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the metrics / health endpoint in a daemon thread; return the server."""
    handler = type("Handler", (_Handler,), {"health": health})
    server = ThreadingHTTPServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    logger.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
