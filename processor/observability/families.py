"""The Prometheus registry and every metric family of the stage, each created exactly once.

Every name starts with ``bandit_processor_``; label sets are fixed and bounded (topics, reasons,
rules and modes are closed sets; per-arm label values go through
:func:`processor.observability.metrics.arm_label`; per-ensemble series are capped, see
``MAX_ENSEMBLE_SERIES``).
Import them from :mod:`processor.observability.metrics`, which re-exports this module's names.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from processor import __version__

# The text format would add a ``*_created`` gauge per counter and histogram series: it doubles the
# series count, and rate() / increase() already handle restarts without it.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
REGISTRY = CollectorRegistry(auto_describe=True)
MAX_ENSEMBLE_SERIES = 10
"""At most this many ensembles get per-arm probability and weight series (the first ones this
instance holds; an ensemble keeps its series until its partition leaves the instance)."""
MAX_POSTERIOR_ROWS = 20_000
"""The per-arm posterior mean is averaged over an evenly strided sample of at most this many
campaigns per refresh, so the refresh stays cheap with millions of campaigns."""

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


class ArrayHistogram(Collector):
    """A histogram fed a whole array at a time (``observe_many``: one ``searchsorted``).

    ``prometheus_client.Histogram.observe`` is a Python call with a lock per value; the stage
    observes one latency per decision, ten thousand a second and more. Exposed exactly like a
    ``Histogram`` without labels (``_bucket{le}``, ``_count``, ``_sum``).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(self.bounds.size + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: npt.ArrayLike) -> None:
        """Count every value (seconds) in its bucket."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if not v.size:
            return
        counts = np.bincount(
            np.searchsorted(self.bounds, v, side="left"), minlength=self._counts.size
        )
        with self._lock:
            self._counts += counts
            self._sum += float(v.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The histogram family, cumulative buckets (``le`` is inclusive, as Prometheus's)."""
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        bounds = self.bounds.tolist()
        buckets = [
            (floatToGoString(b), float(c))  # type: ignore[no-untyped-call]
            for b, c in zip(bounds, cumulative, strict=False)
        ]
        buckets.append(("+Inf", float(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family


DECISION_LATENCY = ArrayHistogram(
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
    "Time to restore the partitions assigned together from the changelog.",
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
UP = Gauge(
    "bandit_processor_up",
    "1 while the processing loop is live (it looped, or waited on purpose, within 60 s).",
    registry=REGISTRY,
)
READY = Gauge(
    "bandit_processor_ready",
    "1 when the loop is live and every assigned partition is restored (as /readyz).",
    registry=REGISTRY,
)
PRODUCER_RECOVERIES = Counter(
    "bandit_processor_producer_recoveries_total",
    "Producers replaced by a new one with the same transactional.id, by reason (fatal_error, "
    "txn_timeout, wedged, retry_budget).",
    ["reason"],
    registry=REGISTRY,
)
CONSUMER_RECOVERIES = Counter(
    "bandit_processor_consumer_recoveries_total",
    "Input consumers replaced by a new group member, by reason (offsets_unreadable, "
    "no_assignment).",
    ["reason"],
    registry=REGISTRY,
)
WEDGED_PRODUCERS = Gauge(
    "bandit_processor_wedged_producers",
    "Replaced producers still stuck inside a client call (kept until it returns).",
    registry=REGISTRY,
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
# ---- the reward join (issue 14; README "Reward join") --------------------------------------------
JOINED_OUTCOMES = Counter(
    "bandit_processor_joined_outcomes_total",
    "Bid outcomes applied to their logged decision for the first time.",
    registry=REGISTRY,
)
DUPLICATE_OUTCOMES = Counter(
    "bandit_processor_duplicate_outcomes_total",
    "Bid outcomes that changed nothing: a redelivery of the applied one, or older than it.",
    registry=REGISTRY,
)
RESTATED_OUTCOMES = Counter(
    "bandit_processor_restated_outcomes_total",
    "Bid outcomes that replaced the one applied for their decision (retracted, then applied).",
    registry=REGISTRY,
)
UNKNOWN_OUTCOMES = Counter(
    "bandit_processor_unknown_outcomes_total",
    "Bid outcomes of requests not in the decision log (accepted or dead-lettered per "
    "attribution.unknown).",
    registry=REGISTRY,
)
LATE_OUTCOMES = Counter(
    "bandit_processor_late_outcomes_total",
    "Bid outcomes past the attribution window (dropped or applied per attribution.late).",
    registry=REGISTRY,
)
DECISION_LOG_EVICTIONS = Counter(
    "bandit_processor_decision_log_evictions_total",
    "Decision-log entries evicted (oldest first) because attribution.max_entries was reached.",
    registry=REGISTRY,
)


class DecisionLogEntries(Collector):
    """``bandit_processor_decision_log_entries{partition}``, read from the live logs at scrape
    time: a log is tracked by weak reference, so a partition's series goes when its engine does.
    """

    name = "bandit_processor_decision_log_entries"

    def __init__(self, registry: CollectorRegistry) -> None:
        self._logs: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        registry.register(self)

    def track(self, partition: int, log: Any) -> None:
        """Export ``log.held`` (entries in memory) as the series of ``partition``."""
        self._logs[partition] = log

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge family, a series per tracked partition."""
        family = GaugeMetricFamily(
            self.name,
            "Entries held in the reward join's decision log, per input partition.",
            labels=["partition"],
        )
        items = list(self._logs.items())  # a copy: the garbage collector may drop entries
        for partition, log in sorted(items, key=lambda item: item[0]):
            family.add_metric([str(partition)], float(log.held))
        yield family


DECISION_LOG_ENTRIES = DecisionLogEntries(REGISTRY)
