"""The metrics / health HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

``/metrics`` serves the exposition of :data:`~processor.observability.families.REGISTRY`,
``/healthz`` says the loop is alive, ``/readyz`` says every assigned partition has been restored.
Import :class:`Health` and :func:`serve` from :mod:`processor.observability.metrics`, which
re-exports them.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.errors import ConfigError
from processor.observability.families import READY, REGISTRY, UP

# The endpoint logs under the public module's name (as it did before it got its own module).
logger = logging.getLogger("processor.observability.metrics")


class Health:
    """Liveness and readiness shared by the loop, the HTTP endpoint and the gauges.

    ``bandit_processor_up`` and ``bandit_processor_ready`` are computed from this object when
    they are scraped (see :meth:`bind_gauges`), so they always agree with ``/healthz`` and
    ``/readyz`` — also while the loop is stuck and cannot update anything.
    """

    def __init__(self, stall_s: float = 60.0) -> None:
        self.alive = False
        self.ready = False
        self.reason = "starting"
        self.stall_s = stall_s
        self.last_loop = 0.0

    def beat(self) -> None:
        """Record that the loop made progress (or is waiting on purpose, e.g. for the broker)."""
        self.last_loop = time.monotonic()

    def is_live(self, stall_s: float | None = None) -> bool:
        """Alive and looped within ``stall_s`` seconds."""
        limit = self.stall_s if stall_s is None else stall_s
        return self.alive and time.monotonic() - self.last_loop < limit

    def is_ready(self) -> bool:
        """Every assigned partition restored and the loop live."""
        return self.ready and self.is_live()

    def bind_gauges(self) -> None:
        """Make ``bandit_processor_up`` / ``_ready`` report this object at scrape time."""
        UP.set_function(lambda: 1.0 if self.is_live() else 0.0)
        READY.set_function(lambda: 1.0 if self.is_ready() else 0.0)


class _Handler(BaseHTTPRequestHandler):
    health: Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.health.is_live()
            body = f"ok: {self.health.reason}\n" if ok else "stalled\n"
            self._send(200 if ok else 503, body.encode(), "text/plain")
        elif path == "/readyz":
            ok = self.health.is_ready()
            body = "ready\n" if ok else f"not ready: {self.health.reason}\n"
            self._send(200 if ok else 503, body.encode(), "text/plain")
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
    """Start the metrics / health endpoint in a daemon thread; return the server.

    Raises:
        ConfigError: The port cannot be bound (in use, or privileged); the message names the
            port and the flag that changes it.
    """
    handler = type("Handler", (_Handler,), {"health": health})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        why = (
            "is already in use (another instance or program on this host)"
            if exc.errno == errno.EADDRINUSE
            else f"cannot be bound on {host}: {exc.strerror or exc}"
        )
        msg = (
            f"metrics port {port} {why}; choose another with --metrics-port N "
            "(0 picks a free port, -1 disables; env BANDIT_METRICS_PORT, config metrics_port)"
        )
        raise ConfigError(msg) from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    logger.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
