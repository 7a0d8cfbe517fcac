"""Prometheus metrics of the stage: the public module for metrics, gauges and the endpoint.

The metric families are created once, in :mod:`processor.observability.families`; the HTTP
endpoint (:class:`Health`, :func:`serve`) lives in :mod:`processor.observability.http`. Both are
re-exported here, so callers use ``from processor.observability import metrics`` and
``metrics.NAME``.

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
from typing import Any

import numpy as np
from confluent_kafka import TopicPartition

from processor.observability.families import (
    ARM_POSTERIOR_MEAN,
    ARM_SELECTION_RATIO,
    ARM_SELECTIONS,
    ASSIGNED_PARTITIONS,
    BATCH_SECONDS,
    BUILD_INFO,
    COMMIT_SECONDS,
    CONSUMER_LAG,
    CONSUMER_RECOVERIES,
    DEAD_LETTERS,
    DECISION_LATENCY,
    DECISIONS,
    EMERGENCY_CAMPAIGNS,
    ENSEMBLE_PROBABILITY,
    ENSEMBLE_WEIGHT,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    GUARDRAILS,
    MAX_ENSEMBLE_SERIES,
    MAX_POSTERIOR_ROWS,
    PRODUCER_RECOVERIES,
    READY,
    REGISTRY,
    RESTORE_SECONDS,
    RESTORED_KEYS,
    RESTORING_PARTITIONS,
    REWARDS_APPLIED,
    STATE_KEYS,
    TRANSACTIONS,
    UP,
    WEDGED_PRODUCERS,
)
from processor.observability.http import Health, serve

__all__ = [
    "ARM_POSTERIOR_MEAN",
    "ARM_REFRESH_S",
    "ARM_SELECTIONS",
    "ARM_SELECTION_RATIO",
    "ASSIGNED_PARTITIONS",
    "BATCH_SECONDS",
    "BUILD_INFO",
    "COMMIT_SECONDS",
    "CONSUMER_LAG",
    "CONSUMER_RECOVERIES",
    "DEAD_LETTERS",
    "DECISIONS",
    "DECISION_LATENCY",
    "EMERGENCY_CAMPAIGNS",
    "ENSEMBLE_PROBABILITY",
    "ENSEMBLE_WEIGHT",
    "EVENTS_CONSUMED",
    "EVENTS_PRODUCED",
    "GAUGES",
    "GUARDRAILS",
    "MAX_ARM_SERIES",
    "MAX_ENSEMBLE_SERIES",
    "MAX_POSTERIOR_ROWS",
    "PRODUCER_RECOVERIES",
    "READY",
    "REGISTRY",
    "RESTORED_KEYS",
    "RESTORE_SECONDS",
    "RESTORING_PARTITIONS",
    "REWARDS_APPLIED",
    "STATE_KEYS",
    "TRANSACTIONS",
    "UP",
    "WEDGED_PRODUCERS",
    "GaugeExporter",
    "Health",
    "arm_label",
    "serve",
]

logger = logging.getLogger(__name__)

MAX_ARM_SERIES = 32
"""At most this many distinct arm label values are exported per arm metric; the rest are summed
under ``arm="_other"`` so a misbehaving producer cannot explode the series count."""
ARM_REFRESH_S = 5.0
"""Posterior-mean and ensemble gauges are refreshed at most this often."""

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
            for key in engine.ensembles.keys:
                if len(owner) >= MAX_ENSEMBLE_SERIES:
                    break
                owner.setdefault(key, engine)
        self._ensembles = dict.fromkeys(owner)
        series: dict[tuple[str, str], tuple[float, float]] = {}
        for key, engine in owner.items():
            for snap in engine.ensembles.snapshots(key):  # one per horizon in family_horizon
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
