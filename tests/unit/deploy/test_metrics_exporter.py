"""observability.metrics: the gauge exporter, bounded label sets and the exposition format."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from confluent_kafka import TopicPartition
from prometheus_client import generate_latest

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine import PartitionEngine
from processor.observability import metrics
from processor.testing import unique_name
from tests.unit.deploy.promkit import promtool

SERDES = SerdeRegistry()


def _samples(gauge: object, **match: str) -> dict[tuple[str, ...], float]:
    out = {}
    for family in gauge.collect():  # type: ignore[attr-defined]
        for s in family.samples:
            if all(s.labels.get(k) == v for k, v in match.items()):
                out[tuple(s.labels.values())] = s.value
    return out


@dataclass
class FakeConsumer:
    """position() and cached watermarks, as librdkafka's consumer answers them."""

    positions: dict[tuple[str, int], int]
    highs: dict[tuple[str, int], int]

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001)
            )
            for tp in tps
        ]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        assert cached, "the exporter must not make a broker round trip"
        return (0, self.highs.get((tp.topic, tp.partition), -1001))


def test_lag_per_partition_skips_unknown_and_removes_revoked() -> None:
    topic = unique_name("lagtopic")
    consumer = FakeConsumer(
        positions={(topic, 0): 10, (topic, 1): 5, (topic, 2): 7},
        highs={(topic, 0): 25, (topic, 1): 5, (topic, 3): 9},
    )
    exporter = metrics.GaugeExporter()
    exporter.export_lag(consumer, [topic], [0, 1, 2, 3])
    # Partition 2 has no watermark yet: no series rather than a made-up value. Partition 3 was
    # fetched but nothing was consumed since the assignment: caught up.
    assert _samples(metrics.CONSUMER_LAG, topic=topic) == {
        (topic, "0"): 15.0,
        (topic, "1"): 0.0,
        (topic, "3"): 0.0,
    }
    consumer.positions[(topic, 0)] = 25
    exporter.export_lag(consumer, [topic], [0, 1, 2, 3])
    assert _samples(metrics.CONSUMER_LAG, topic=topic)[(topic, "0")] == 0.0
    exporter.export_lag(consumer, [topic], [1])
    assert _samples(metrics.CONSUMER_LAG, topic=topic) == {(topic, "1"): 0.0}
    exporter.export_lag(consumer, [topic], [])
    assert _samples(metrics.CONSUMER_LAG, topic=topic) == {}


def test_selection_ratio_is_the_share_since_the_previous_refresh() -> None:
    exporter = metrics.GaugeExporter()
    exporter.export_selection_ratio()
    metrics.ARM_SELECTIONS.labels("ratio-a").inc(3)
    metrics.ARM_SELECTIONS.labels("ratio-b").inc(1)
    exporter.export_selection_ratio()
    ratios = _samples(metrics.ARM_SELECTION_RATIO)
    assert ratios[("ratio-a",)] == 0.75
    assert ratios[("ratio-b",)] == 0.25
    assert sum(ratios.values()) == 1.0
    exporter.export_selection_ratio()  # no decisions since: the last shares stay
    assert _samples(metrics.ARM_SELECTION_RATIO)[("ratio-a",)] == 0.75
    metrics.ARM_SELECTIONS.labels("ratio-b").inc(2)
    exporter.export_selection_ratio()
    assert _samples(metrics.ARM_SELECTION_RATIO)[("ratio-a",)] == 0.0
    assert _samples(metrics.ARM_SELECTION_RATIO)[("ratio-b",)] == 1.0


def _engine(partition: int, campaigns: int, ensembles: list[str]) -> PartitionEngine:
    engine = PartitionEngine(AppConfig(), partition, SERDES)
    rows = engine.campaigns.rows(np.array([f"c{partition}-{i}" for i in range(campaigns)]))
    rng = np.random.default_rng(partition)
    n = 50 * campaigns
    engine.campaigns.thompson.update(
        rows[rng.integers(0, campaigns, n)], rng.integers(0, 4, n), rng.random(n) < 0.3
    )
    if ensembles:
        engine.ensembles.rows(ensembles)
    return engine


def test_posterior_mean_averages_active_arms_over_campaigns() -> None:
    engines = [_engine(0, 30, []), _engine(1, 10, [])]
    metrics.GaugeExporter().export_arms(engines)
    means = np.vstack(
        [e.campaigns.thompson.posterior_mean(np.arange(e.key_count()[0])) for e in engines]
    )
    expected = np.nanmean(means, axis=0)
    got = _samples(metrics.ARM_POSTERIOR_MEAN)
    for name, value in zip(engines[0].campaigns.thompson.arm_names, expected, strict=True):
        assert abs(got[(name,)] - value) < 1e-12


def test_posterior_mean_samples_large_tables() -> None:
    rows = metrics._sample_rows(1_000_000, metrics.MAX_POSTERIOR_ROWS)
    assert 0 < rows.size <= metrics.MAX_POSTERIOR_ROWS
    assert rows[0] == 0 and rows[-1] >= 1_000_000 - 1_000_000 // rows.size - 1
    assert np.all(np.diff(rows) == rows[1] - rows[0])
    assert metrics._sample_rows(7, 100).tolist() == list(range(7))


def test_ensemble_series_are_capped_and_follow_the_assignment() -> None:
    prefix = unique_name("ens")
    first = [f"{prefix}-a{i}" for i in range(7)]
    second = [f"{prefix}-b{i}" for i in range(7)]
    engines = [_engine(0, 1, first), _engine(1, 1, second)]
    exporter = metrics.GaugeExporter()
    exporter.export_arms(engines, force=True)
    probs = {
        k: v for k, v in _samples(metrics.ENSEMBLE_PROBABILITY).items() if k[0].startswith(prefix)
    }
    exported = {k[0] for k in probs}
    assert len(exported) == metrics.MAX_ENSEMBLE_SERIES
    assert set(first) <= exported  # the first ones held, in order
    arms = AppConfig().ensemble.arm_names
    for ensemble in exported:
        p = [probs[(ensemble, a)] for a in arms]
        assert abs(sum(p) - 1.0) < 1e-12
        w = [_samples(metrics.ENSEMBLE_WEIGHT)[(ensemble, a)] for a in arms]
        assert abs(sum(w) - 1.0) < 1e-12
    # Partition 0 leaves: its ensembles' series go, partition 1's take the free slots.
    exporter.export_arms(engines[1:], force=True)
    left = {k[0] for k in _samples(metrics.ENSEMBLE_PROBABILITY) if k[0].startswith(prefix)}
    assert left == set(second)
    assert not {k[0] for k in _samples(metrics.ENSEMBLE_WEIGHT)} & set(first)


def test_arm_refresh_is_rate_limited() -> None:
    engine = _engine(0, 3, [])
    exporter = metrics.GaugeExporter()
    exporter.export_arms([engine])
    metrics.ARM_POSTERIOR_MEAN.labels("conservative").set(-1.0)
    exporter.export_arms([engine])  # within ARM_REFRESH_S: untouched
    assert _samples(metrics.ARM_POSTERIOR_MEAN)[("conservative",)] == -1.0
    exporter.export_arms([engine], force=True)
    assert _samples(metrics.ARM_POSTERIOR_MEAN)[("conservative",)] > 0


def test_exposition_passes_promtool_and_follows_naming_conventions() -> None:
    metrics.EVENTS_CONSUMED.labels("bid-requests").inc(5)
    metrics.DEAD_LETTERS.labels("decode").inc()
    metrics.DECISION_LATENCY.observe_many([0.02, 0.3])
    metrics.TRANSACTIONS.labels("committed").inc()
    metrics.GUARDRAILS.labels("budget_risk").inc()
    metrics.DECISIONS.labels("explore").inc()
    metrics.GaugeExporter().export_arms([_engine(0, 2, ["expo-e"])], force=True)
    text = generate_latest(metrics.REGISTRY).decode()
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr
    for family in metrics.REGISTRY.collect():
        assert family.name.startswith("bandit_processor_")
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
    assert "_created" not in text


def test_arm_label_caps_the_label_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_seen_arms", set())  # leave the process-wide record alone
    labels = {metrics.arm_label(unique_name("arm")) for _ in range(metrics.MAX_ARM_SERIES + 5)}
    assert "_other" in labels
    assert len(labels) <= metrics.MAX_ARM_SERIES + 1


def test_array_histogram_exposes_what_a_histogram_of_the_same_values_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from processor.observability.families import ArrayHistogram

    bounds = (0.001, 0.01, 0.1, 0.15, 1.0, 10.0)
    rng = np.random.default_rng(4)
    # exact bucket bounds land in their own bucket (le is inclusive); 0 and 100 at the ends
    values = np.concatenate([rng.exponential(0.2, 2000), bounds, [0.0, 100.0]])
    plain, batched = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_seconds", "doc", buckets=bounds, registry=plain)
    for v in values:
        reference.observe(float(v))
    hist = ArrayHistogram("x_seconds", "doc", buckets=bounds, registry=batched)
    hist.observe_many(values[:700])
    hist.observe_many(np.zeros(0))
    hist.observe_many(values[700:])
    want = generate_latest(plain).decode().splitlines()
    got = generate_latest(batched).decode().splitlines()
    assert [line for line in got if "_sum" not in line] == [
        line for line in want if "_sum" not in line
    ]
    (got_sum,) = (float(line.split()[-1]) for line in got if line.startswith("x_seconds_sum"))
    assert got_sum == pytest.approx(float(values.sum()), rel=1e-12)
