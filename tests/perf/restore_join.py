"""Restore time of the reward join's decision log: one hour at 1,000 decisions/s in a partition.

The changelog is written by the log's own code, as the stage writes it: one hour of event time in
100 ms commits (36,000), each logging 100 new decisions and joining an outcome to 100 earlier
ones, so the partition holds 3.6 million live entries in about 7.2 million entry versions. Then the
real stage starts on it; figures: its ``restore_duration_seconds`` (read + decode + merge + load,
every partition) and the wall time from process start to ``/readyz``.

Run alone: ``python -m tests.perf.restore_join [--hours H]`` (``make bench`` runs it as
``join_restore``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer

from processor.codec.serde import SerdeRegistry
from processor.join import DecisionLog
from processor.state.changelog import encode_state_records
from processor.state.joinlog import NO_TIME, ROW
from processor.testing import acquire_broker, free_port, stage_ready, stop_process, wait_for
from tests.perf.kit import metric_value, spawn, stage_config

RATE = 1_000  # decisions per second
COMMIT_MS = 100
T0 = 1_700_000_000_000


def write_log(producer: Producer, topic: str, hours: float, partition: int = 0) -> dict[str, Any]:
    """Produce one partition's decision-log chunks for ``hours`` of traffic."""
    log = DecisionLog(retention_ms=3_600_000 + 300_000)
    serde = SerdeRegistry()["StateRecord"]
    per = RATE * COMMIT_MS // 1000
    commits = int(hours * 3_600_000 / COMMIT_MS)
    rng = np.random.default_rng(11)
    keys_made = np.empty(commits * per, dtype=np.uint64)
    records = nbytes = 0
    started = time.monotonic()
    for c in range(commits):
        t = T0 + c * COMMIT_MS
        keys = rng.integers(1, 2**64 - 1, per, dtype=np.uint64)
        keys_made[c * per : (c + 1) * per] = keys
        rows = np.zeros(per, dtype=ROW)
        rows["t"] = t + np.arange(per)
        rows["t_out"] = NO_TIME
        rows["propensity"] = 0.25
        found, rid, _ = log.lookup(keys)
        log.put_new(keys[~found], rows[~found], rid[~found])
        if c >= 20:  # outcomes for decisions of about two seconds ago
            old = np.unique(keys_made[(c - 20) * per : (c - 19) * per])
            found, rid, got = log.lookup(old)
            got = got[found]
            got["t_out"] = t
            got["reward"] = 1.0
            got["spend"] = 0.4
            got["revenue"] = 1.4
            got["flags"] = 1
            log.update(old[found], rid[found], got)
            log.observe_time(t)
        items = [("join", key, blob) for key, blob in log.take_chunks()]
        for key, value in encode_state_records(serde, items):
            while True:
                try:
                    producer.produce(topic, value, key, partition)
                    break
                except BufferError:
                    producer.poll(0.05)
            records += 1
            nbytes += len(value)
        producer.poll(0)
    producer.flush(300)
    return {
        "hours": hours,
        "decisions": commits * per,
        "live_entries": len(log),
        "records_written": records,
        "bytes_written": nbytes,
        "write_seconds": round(time.monotonic() - started, 1),
    }


def run_restore_join(
    bootstrap: str, workdir: Path, hours: float = 1.0, python: str | None = None
) -> dict[str, Any]:
    """Fill partition 0 of a fresh changelog with ``hours`` of log and time the stage's restore."""
    config, path = stage_config(bootstrap, workdir, {})
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
    written = write_log(producer, config.changelog_topic, hours)
    port = free_port()
    started = time.monotonic()
    args = ["processor", "run", "--config", str(path), "--instance-id", "restore-join"]
    proc = spawn(
        [*args, "--metrics-port", str(port)],
        workdir / f"{config.app_id}.log",
        python,
    )
    try:
        wait_for(lambda: stage_ready(port), timeout=900, interval=0.05, description="restored")
        wall = time.monotonic() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        stop_process(proc)
    entries = metric_value(text, "bandit_processor_decision_log_entries")  # partition 0 first
    return {
        **written,
        "restored_entries": int(entries),
        "restore_seconds": round(
            metric_value(text, "bandit_processor_restore_duration_seconds_sum"), 3
        ),
        "start_to_ready_seconds": round(wall, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--hours", type=float, default=1.0)
    args = parser.parse_args(argv)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    with acquire_broker() as broker:
        result = run_restore_join(broker.bootstrap, out, args.hours)
    print(json.dumps(result, indent=1))
    (out / "restore-join.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
