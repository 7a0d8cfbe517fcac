"""Prometheus metrics, defined once at module level, and the HTTP endpoint.

Every name starts with ``bandit_processor_``; label sets are fixed and bounded (topics, reasons,
rules and modes are closed sets; per-arm series are capped, see ``MAX_ARM_SERIES``; per-ensemble
series are capped, see ``MAX_ENSEMBLE_SERIES``).
``/metrics`` serves the exposition, ``/healthz`` says the loop is alive, ``/readyz`` says every
assigned partition has been restored.

Gauges that describe state (lag, per-arm posteriors, ensemble probabilities) are refreshed about
once a second by :data:`GAUGES` (a :class:`GaugeExporter`), called from the stage's loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from confluent_kafka import TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from processor import __version__

logger = logging.getLogger(__name__)

# The text format would add a ``*_created`` gauge per counter and histogram series: it doubles the
# series count, and rate() / increase() already handle restarts without it.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
REGISTRY = CollectorRegistry(auto_describe=True)
MAX_ARM_SERIES = 32
"""At most this many distinct arm label values are exported per arm metric; the rest are summed
under ``arm="_other"`` so a misbehaving producer cannot explode the series count."""
MAX_ENSEMBLE_SERIES = 10
"""At most this many ensembles get per-arm probability and weight series (the first ones this
instance holds; an ensemble keeps its series until its partition leaves the instance)."""
MAX_POSTERIOR_ROWS = 20_000
"""The per-arm posterior mean is averaged over an evenly strided sample of at most this many
campaigns per refresh, so the refresh stays cheap with millions of campaigns."""
ARM_REFRESH_S = 5.0
"""Posterior-mean and ensemble gauges are refreshed at most this often."""

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
RESTORING_PARTITIONS = Gauge(
    "bandit_processor_restoring_partitions",
    "Assigned input partitions still waiting for their state to be restored.",
    registry=REGISTRY,
)
ARM_SELECTION_RATIO = Gauge(
    "bandit_processor_arm_selection_ratio",
    "Share of the bid decisions since the previous refresh (about 1 s) that chose each arm.",
    ["arm"],
    registry=REGISTRY,
)
ARM_POSTERIOR_MEAN = Gauge(
    "bandit_processor_arm_posterior_mean",
    "Thompson posterior mean of each arm, averaged over the campaigns where it is active "
    f"(a strided sample of at most {MAX_POSTERIOR_ROWS} campaigns).",
    ["arm"],
    registry=REGISTRY,
)
ENSEMBLE_PROBABILITY = Gauge(
    "bandit_processor_ensemble_arm_probability",
    f"Exp3-IX probability of each arm, for at most {MAX_ENSEMBLE_SERIES} ensembles.",
    ["ensemble", "arm"],
    registry=REGISTRY,
)
ENSEMBLE_WEIGHT = Gauge(
    "bandit_processor_ensemble_arm_weight",
    f"Published (blended) weight of each arm, for at most {MAX_ENSEMBLE_SERIES} ensembles.",
    ["ensemble", "arm"],
    registry=REGISTRY,
)
BUILD_INFO = Info("bandit_processor_build", "Version of the running stage.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

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


def _sample_rows(n: int, budget: int) -> np.ndarray:
    """``budget`` evenly strided rows of ``n`` (all of them when ``n <= budget``)."""
    if n <= budget:
        return np.arange(n, dtype=np.int64)
    return np.arange(0, n, math.ceil(n / budget), dtype=np.int64)


class GaugeExporter:
    """Refreshes the gauges that are read from the stage's state rather than counted.

    It keeps the series it exported, so a series whose partition, ensemble or arm went away is
    removed instead of freezing at its last value. All methods run on the stage's loop thread.
    """

    def __init__(self) -> None:
        self._lag_series: dict[tuple[str, int], Any] = {}
        self._lag_assignment: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())
        self._lag_tps: list[Any] = []
        self._lag_keys: list[tuple[str, int]] = []
        self._lag_last: list[int] = []
        self._ensembles: dict[str, None] = {}
        self._ensemble_series: set[tuple[str, str]] = set()
        self._arm_series: set[str] = set()
        self._last_selections: dict[str, float] = {}
        self._last_arms = -math.inf

    def export_lag(self, consumer: Any, topics: Iterable[str], partitions: Iterable[int]) -> None:
        """Set ``consumer_lag_messages`` per assigned input partition.

        Lag is the cached high watermark minus the consumer's position; both come from
        librdkafka's memory (no broker round trip). A partition without a fetched watermark yet
        has no series; one with a watermark but no position (nothing consumed since assignment)
        counts as caught up. Leave partitions paused for restore out of ``partitions``: they
        are not fetched (``restoring_partitions`` shows them).

        Args:
            consumer: The stage's ``confluent_kafka.Consumer``.
            topics: Input topics.
            partitions: Assigned input partitions.
        """
        assignment = (tuple(sorted(topics)), tuple(sorted(partitions)))
        if assignment != self._lag_assignment:
            self._lag_assignment = assignment
            wanted = [(t, p) for t in assignment[0] for p in assignment[1]]
            for gone in set(self._lag_series) - set(wanted):
                CONSUMER_LAG.remove(gone[0], str(gone[1]))
                del self._lag_series[gone]
            self._lag_tps = [TopicPartition(t, p) for t, p in wanted]
            self._lag_keys = wanted
            self._lag_last = [-1] * len(wanted)
        if not self._lag_tps:
            return
        watermarks = consumer.get_watermark_offsets
        last = self._lag_last
        # position() keeps the order of its argument, so index i is self._lag_keys[i].
        for i, tp in enumerate(consumer.position(self._lag_tps)):
            high = watermarks(tp, cached=True)[1]
            if high < 0:
                continue
            # No position yet but a fetched watermark: the partition is fetched and nothing was
            # handed to the stage since its assignment, so it is caught up.
            lag = max(0, high - tp.offset) if tp.offset >= 0 else 0
            if lag != last[i]:
                # Only changed values are set: a gauge set takes a lock, and most lags are steady.
                last[i] = lag
                key = self._lag_keys[i]
                child = self._lag_series.get(key)
                if child is None:
                    child = self._lag_series[key] = CONSUMER_LAG.labels(key[0], str(key[1]))
                child.set(lag)

    def export_selection_ratio(self) -> None:
        """Set ``arm_selection_ratio`` from the decisions counted since the previous call."""
        current = {
            s.labels["arm"]: s.value
            for metric in ARM_SELECTIONS.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        }
        delta = {arm: n - self._last_selections.get(arm, 0.0) for arm, n in current.items()}
        self._last_selections = current
        total = sum(delta.values())
        if total <= 0:
            return
        for arm, n in delta.items():
            ARM_SELECTION_RATIO.labels(arm).set(n / total)

    def export_arms(self, engines: Iterable[Any], force: bool = False) -> None:
        """Set the per-arm posterior means and the capped per-ensemble probabilities / weights.

        They move slowly and cost a few snapshots, so they are refreshed at most every
        ``ARM_REFRESH_S`` seconds (a scrape interval is rarely shorter).

        Args:
            engines: The stage's ``PartitionEngine`` objects.
            force: Refresh even if the last refresh is recent.
        """
        now = time.monotonic()
        if not force and now - self._last_arms < ARM_REFRESH_S:
            return
        self._last_arms = now
        engines = list(engines)
        self._export_posteriors(engines)
        self._export_ensembles(engines)

    def _export_posteriors(self, engines: list[Any]) -> None:
        total = sum(e.campaigns.thompson.n_keys for e in engines)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for engine in engines:
            thompson = engine.campaigns.thompson
            n = thompson.n_keys
            if n == 0:
                continue
            budget = max(1, MAX_POSTERIOR_ROWS * n // total)
            means = thompson.posterior_mean(_sample_rows(n, budget))
            col_sums = np.nansum(means, axis=0)
            col_counts = np.count_nonzero(~np.isnan(means), axis=0)
            for name, s, c in zip(thompson.arm_names, col_sums, col_counts, strict=True):
                if c:
                    label = arm_label(name)
                    sums[label] = sums.get(label, 0.0) + float(s)
                    counts[label] = counts.get(label, 0) + int(c)
        for label in self._arm_series - set(sums):
            ARM_POSTERIOR_MEAN.remove(label)
        for label, s in sums.items():
            ARM_POSTERIOR_MEAN.labels(label).set(s / counts[label])
        self._arm_series = set(sums)

    def _export_ensembles(self, engines: list[Any]) -> None:
        owner: dict[str, Any] = {}
        for key in self._ensembles:
            for engine in engines:
                if engine.ensembles.has_key(key):
                    owner[key] = engine
                    break
        for engine in engines:
            if len(owner) >= MAX_ENSEMBLE_SERIES:
                break
            for key in engine.ensembles.bandit.keys:
                if len(owner) >= MAX_ENSEMBLE_SERIES:
                    break
                owner.setdefault(key, engine)
        self._ensembles = dict.fromkeys(owner)
        series: dict[tuple[str, str], tuple[float, float]] = {}
        for key, engine in owner.items():
            snap = engine.ensembles.snapshot(key)
            weights = snap["weights"]
            for arm, p in snap["probabilities"].items():
                label = (key, arm_label(arm))
                prob, weight = series.get(label, (0.0, 0.0))
                series[label] = (prob + p, weight + weights.get(arm, 0.0))
        for label in self._ensemble_series - set(series):
            ENSEMBLE_PROBABILITY.remove(*label)
            ENSEMBLE_WEIGHT.remove(*label)
        for label, (prob, weight) in series.items():
            ENSEMBLE_PROBABILITY.labels(*label).set(prob)
            ENSEMBLE_WEIGHT.labels(*label).set(weight)
        self._ensemble_series = set(series)


GAUGES = GaugeExporter()
"""The process's exporter (metrics are process-wide, so is the record of exported series)."""


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
