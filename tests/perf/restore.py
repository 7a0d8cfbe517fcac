"""Restore time: a changelog with N campaign keys, then the real stage starts on it.

Every key holds the state a campaign has after a few hundred reward events (taken from a real
:class:`BiddingState`), written as the stage writes it (one StateRecord per key, key
``campaign/<id>``, packed or JSON per ``state_format``), spread evenly over the changelog's
partitions. Figures: the stage's own ``restore_duration_seconds`` (one restore pass over every
partition: read + decode + load into the arrays) and the wall time from process start to
``/readyz``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer

from processor.codec.serde import SerdeRegistry
from processor.policy.bidding import BiddingConfig, BiddingState, BidPolicy, OutcomeBatch
from processor.state.changelog import StoredState, encode_state_records
from processor.testing import free_port, stage_ready, stop_process, wait_for
from tests.perf.kit import PARTITIONS, metric_value, spawn, stage_config


def sample_state() -> dict[str, Any]:
    """A campaign's state after 400 reward events."""
    cfg = BiddingConfig()
    state = BiddingState(cfg)
    rng = np.random.default_rng(5)
    n = 400
    arms = np.array(cfg.arm_names, dtype=object)[rng.integers(0, len(cfg.arm_names), n)]
    batch = OutcomeBatch(
        request_id=np.array([f"r{i}" for i in range(n)], dtype=object),
        campaign_id=np.array(["c"] * n, dtype=object),
        arm=arms,
        event_time=np.arange(n, dtype=np.int64) + 1_700_000_000_000,
        won=np.ones(n, dtype=bool),
        clicks=rng.integers(0, 3, n),
        conversions=rng.integers(0, 2, n),
        spend=rng.uniform(0, 5, n),
        revenue=rng.uniform(0, 8, n),
        reward=np.full(n, np.nan),
        success=np.full(n, np.nan),
        propensity=np.full(n, 0.25),
        policy_version=np.full(n, -1, dtype=np.int64),
        budget=np.full(n, 50.0),
        target_cpa=np.full(n, np.nan),
    )
    BidPolicy(cfg).observe(batch, state)
    return state.get_key_state("c")


def run_restore(
    bootstrap: str,
    workdir: Path,
    n_keys: int,
    python: str | None = None,
    state_format: str = "packed",
) -> dict[str, Any]:
    """Fill a changelog with ``n_keys`` keys and time the stage's restore."""
    config, path = stage_config(bootstrap, workdir, {}, state_format=state_format)
    sample = sample_state()
    json_bytes = len(json.dumps(sample, sort_keys=True, separators=(",", ":")))
    state: StoredState = sample
    if state_format == "packed":
        holder = BiddingState(BiddingConfig())
        holder.set_key_state("c", sample)
        state = holder.pack(["c"])[0]
    serde = SerdeRegistry()["StateRecord"]
    t0 = time.monotonic()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 2000000,
            "queue.buffering.max.kbytes": 2097152,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )
    step = 50_000
    for first in range(0, n_keys, step):
        items = [
            ("campaign", f"cmp-{i:07d}", state) for i in range(first, min(n_keys, first + step))
        ]
        for j, (key, value) in enumerate(encode_state_records(serde, items)):
            while True:
                try:
                    producer.produce(config.changelog_topic, value, key, (first + j) % PARTITIONS)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    fill_s = time.monotonic() - t0
    port = free_port()
    started = time.monotonic()
    proc = spawn(
        [
            "processor",
            "run",
            "--config",
            str(path),
            "--instance-id",
            "restore",
            "--metrics-port",
            str(port),
        ],
        workdir / f"{config.app_id}.log",
        python,
    )

    try:
        wait_for(
            lambda: stage_ready(port), timeout=600, interval=0.05, description="stage restored"
        )
        wall = time.monotonic() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        stop_process(proc)
    return {
        "keys": n_keys,
        "state_format": state_format,
        "state_bytes": len(state) if isinstance(state, bytes) else json_bytes,
        "changelog_fill_seconds": round(fill_s, 2),
        "restore_seconds": round(
            metric_value(text, "bandit_processor_restore_duration_seconds_sum"), 3
        ),
        "restored_keys": int(metric_value(text, "bandit_processor_restored_keys_total")),
        "start_to_ready_seconds": round(wall, 3),
    }
