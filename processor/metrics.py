"""Prometheus metrics, defined once at module level, and the HTTP endpoint.

Every name starts with ``bandit_processor_``; label sets are fixed and bounded (topics, reasons,
rules and modes are closed sets; per-arm series are capped, see ``MAX_ARM_SERIES``).
``/metrics`` serves the exposition, ``/healthz`` says the loop is alive, ``/readyz`` says every
assigned partition has been restored.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
MAX_ARM_SERIES = 32
"""At most this many distinct arm label values are exported per arm metric; the rest are summed
under ``arm="_other"`` so a misbehaving producer cannot explode the series count."""

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS_CONSUMED = Counter(
    "bandit_processor_events_consumed_total",
    "Input records consumed, by topic.",
    ["topic"],
    registry=REGISTRY,
)
EVENTS_PRODUCED = Counter(
    "bandit_processor_events_produced_total",
    "Records produced, by topic.",
    ["topic"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "bandit_processor_dead_letters_total",
    "Input records dead-lettered, by error class.",
    ["reason"],
    registry=REGISTRY,
)
REWARDS_APPLIED = Counter(
    "bandit_processor_rewards_applied_total",
    "Reward events applied to state, by kind.",
    ["kind"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "bandit_processor_batch_duration_seconds",
    "Time to process one consumed batch.",
    buckets=_LAT_BUCKETS,
    registry=REGISTRY,
)
COMMIT_SECONDS = Histogram(
    "bandit_processor_commit_duration_seconds",
    "Time to commit one transaction (or offset commit).",
    buckets=_LAT_BUCKETS,
    registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "bandit_processor_decision_latency_seconds",
    "Request event time to decision committed (visible to read_committed readers).",
    buckets=_LAT_BUCKETS,
    registry=REGISTRY,
)
TRANSACTIONS = Counter(
    "bandit_processor_transactions_total",
    "Transactions by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "bandit_processor_consumer_lag_messages",
    "High watermark minus position, per input partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
STATE_KEYS = Gauge(
    "bandit_processor_state_keys", "Keys held in memory, by kind.", ["kind"], registry=REGISTRY
)
RESTORE_SECONDS = Histogram(
    "bandit_processor_restore_duration_seconds",
    "Time to restore one partition from the changelog.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
RESTORED_KEYS = Counter(
    "bandit_processor_restored_keys_total", "Keys restored from the changelog.", registry=REGISTRY
)
EMERGENCY_CAMPAIGNS = Gauge(
    "bandit_processor_emergency_campaigns",
    "Campaigns currently in emergency mode.",
    registry=REGISTRY,
)
GUARDRAILS = Counter(
    "bandit_processor_guardrail_activations_total",
    "Decisions changed by a guardrail, by rule.",
    ["rule"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "bandit_processor_decisions_total", "Bid decisions, by mode.", ["mode"], registry=REGISTRY
)
ARM_SELECTIONS = Counter(
    "bandit_processor_arm_selections_total",
    "Bid decisions, by chosen arm (capped label set).",
    ["arm"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "bandit_processor_assigned_partitions",
    "Input partitions assigned to this instance.",
    registry=REGISTRY,
)
UP = Gauge("bandit_processor_up", "1 while the processing loop runs.", registry=REGISTRY)
READY = Gauge(
    "bandit_processor_ready", "1 when every assigned partition is restored.", registry=REGISTRY
)

_seen_arms: set[str] = set()
_arm_lock = threading.Lock()


def arm_label(arm: str) -> str:
    """Bounded label value for ``arm``."""
    with _arm_lock:
        if arm in _seen_arms:
            return arm
        if len(_seen_arms) < MAX_ARM_SERIES:
            _seen_arms.add(arm)
            return arm
    return "_other"


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
