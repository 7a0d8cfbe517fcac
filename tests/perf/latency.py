"""Decision latency at a fixed request rate: event time → decision visible to a reader.

The harness produces bid requests at a steady rate with ``event_time`` = the wall clock at send
time, and a ``read_committed`` consumer in the same process reads the stage's decisions; latency is
(wall clock when the decision is read) − (its ``event_time``). The first seconds (group join,
first fetches) are a warm-up and are not counted.
"""

from __future__ import annotations

import io
import time
import urllib.request
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processor.codec.serde import SerdeRegistry, parsed_schema
from processor.policy.simulator import MarketSimulator
from processor.testing import free_port, stage_ready, stop_process, unique_name, wait_for
from tests.perf.kit import PARTITIONS, metric_value, spawn, stage_config

WARMUP_S = 3.0


def run_latency(
    bootstrap: str,
    workdir: Path,
    guarantee: str,
    rate: float,
    seconds: float,
    campaigns: int = 1000,
    python: str | None = None,
    contender: str = "stage",
    **overrides: Any,
) -> dict[str, Any]:
    """Run a contender under ``rate`` requests/s for ``seconds``; return latency percentiles (ms).

    ``contender`` is ``"stage"``, or ``"limit"``: the raw passthrough (tests/perf/passthrough.py)
    answering each request with its own bytes on the decisions topic, with the same client
    settings, guarantee and commit cycle — the latency the client and broker allow at this rate.
    ``overrides`` are extra settings (e.g. ``poll_timeout_ms``), reported with the figures.
    """
    config, path = stage_config(bootstrap, workdir, {}, processing_guarantee=guarantee, **overrides)
    port = free_port()
    if contender == "limit":
        args = ["tests.perf.passthrough", str(path), config.topics.bid_decisions]
    else:
        args = [
            "processor",
            "run",
            "--config",
            str(path),
            "--instance-id",
            "lat",
            "--metrics-port",
            str(port),
        ]
    proc = spawn(args, workdir / f"{config.app_id}.log", python)
    serde = SerdeRegistry()["BidRequest"]
    # the limit echoes the request: read it back with the request's schema
    decision_schema = parsed_schema("BidRequest" if contender == "limit" else "BidDecision")
    sim = MarketSimulator(11, n_campaigns=campaigns)
    total = int(rate * seconds)
    pool = sim.bid_requests(total, 0, rate)
    # the load generator's own batching delay is upstream of the stage: keep it at 1 ms
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 1}
    )
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("latency"),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "fetch.min.bytes": 1,
        }
    )
    try:
        if contender == "limit":
            wait_for(
                lambda: _group_has_assignment(bootstrap, config.app_id),
                120,
                description="limit joined",
            )
        else:
            wait_for(lambda: stage_ready(port), timeout=120, description="stage ready")
        reader.assign(
            [TopicPartition(config.topics.bid_decisions, p, 0) for p in range(PARTITIONS)]
        )
        lat: list[float] = []
        warm: list[float] = []
        to_decision: list[float] = []
        sent = 0
        started = time.monotonic()
        chunk = max(1, int(rate / 500))
        while True:
            now = time.monotonic()
            due = min(total, int((now - started) * rate) + chunk)
            while sent < due:
                rec = pool[sent]
                rec["event_time"] = int(time.time() * 1000)
                producer.produce(
                    config.topics.bid_requests, serde.encode(rec), rec["campaign_id"].encode()
                )
                sent += 1
            producer.poll(0)
            for msg in reader.consume(2000, 0.001):
                if msg.error() is not None or msg.value() is None:
                    continue
                d = fastavro.schemaless_reader(io.BytesIO(msg.value()), decision_schema, None)
                ms = time.time() * 1000 - d["event_time"]  # type: ignore[call-overload,index]
                if time.monotonic() - started < WARMUP_S:
                    warm.append(ms)
                else:
                    lat.append(ms)
                    if contender != "limit":
                        # event → the stage's decision (input path + loop), then → visible here
                        to_decision.append(d["decided_at"] - d["event_time"])  # type: ignore[call-overload,index]
            received = len(lat) + len(warm)
            if sent >= total and received >= total:
                break
            if now - started > seconds + 60:
                break
        achieved = sent / max(1e-9, time.monotonic() - started)
        inside = _stage_view(port) if contender != "limit" else {}
    finally:
        reader.close()
        producer.flush(30)
        code = stop_process(proc)
    arr = np.asarray(lat) if lat else np.zeros(1)
    return {
        "contender": contender,
        "guarantee": guarantee,
        "settings": dict(overrides),
        "target_rate": rate,
        "achieved_send_rate": round(achieved, 1),
        "requests": total,
        "decisions_seen": len(lat) + len(warm),
        "measured": len(lat),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "max_ms": round(float(arr.max()), 2),
        "to_decision_p50_ms": round(float(np.percentile(to_decision or [0], 50)), 2),
        "to_decision_p99_ms": round(float(np.percentile(to_decision or [0], 99)), 2),
        "stage_exit": code,
        **inside,
    }


def _stage_view(port: int) -> dict[str, Any]:
    """Where the stage's own time went (its histograms, whole run): loops and commits."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, Any] = {}
    for name, label in (
        ("batch_duration_seconds", "batch"),
        ("commit_duration_seconds", "commit"),
        ("decision_latency_seconds", "decision_latency"),
    ):
        total = metric_value(text, f"bandit_processor_{name}_sum")
        count = metric_value(text, f"bandit_processor_{name}_count")
        n = int(count) if count > 0 else 0  # NaN when not exposed
        out[f"stage_{label}s"] = n
        out[f"stage_{label}_mean_ms"] = round(1000 * total / n, 2) if n else None
    return out


def _group_has_assignment(bootstrap: str, group: str) -> bool:
    """True once consumer group ``group`` is stable with partitions assigned."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except KafkaException:
        return False
    return bool(desc.members) and any(m.assignment.topic_partitions for m in desc.members)
