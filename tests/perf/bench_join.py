"""The reward join without Kafka: bytes per log entry, memory at 10 million entries, and the
engine's reward-event throughput with the join on vs off in the same process.

Run: ``.venv/bin/python -m tests.perf.bench_join [--entries N] [--events N]`` (``make
bench-join``). Prints the figures and writes ``bench-results/join.json``. The machine is shared:
compare the on / off ratio of one run, and look at the spread over ``--repeat`` passes.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig, AttributionConfig
from processor.engine import PartitionEngine, SourceBatch
from processor.join import DecisionLog
from processor.state.joinlog import ENTRY, NO_TIME, ROW
from tests.perf import inputs
from tests.perf.kit import machine

OUT = Path("bench-results/join.json")
PER_PARTITION_RATE = 1_000  # decisions per second per partition
HOUR_MS = 3_600_000
COMMIT_EVERY = 10
"""Batches per commit (the stage: ~10 polls of ~1,000 reward events per partition in 100 ms)."""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def log_of(n: int, seed: int = 1, batch: int = 100_000) -> tuple[DecisionLog, float]:
    """A log with ``n`` entries inserted in batches of decisions (one hour of event time per
    3.6 million, as at 1,000 decisions/s); returns it and the seconds the inserts took."""
    rng = np.random.default_rng(seed)
    log = DecisionLog(retention_ms=10 * 24 * HOUR_MS)
    started = time.perf_counter()
    for first in range(0, n, batch):
        k = min(batch, n - first)
        keys = np.unique(rng.integers(1, 2**64 - 1, k, dtype=np.uint64))
        rows = np.zeros(keys.size, dtype=ROW)
        rows["t"] = 1_700_000_000_000 + (first + np.arange(keys.size)) * (1000 // 1)
        rows["t_out"] = NO_TIME
        rows["propensity"] = 0.25
        found, rid, _ = log.lookup(keys)
        log.put_new(keys[~found], rows[~found], rid[~found])
        log._dirty_keys.clear()  # the changelog side is measured by the restore benchmark
        log._dirty_rows.clear()
    return log, time.perf_counter() - started


def memory(n: int) -> dict[str, Any]:
    """Bytes per entry (array bytes and traced allocations) and RSS growth for ``n`` entries."""
    gc.collect()
    rss0 = _rss_mb()
    tracemalloc.start()
    log, seconds = log_of(n)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _rss_mb()
    held = len(log)
    probe = np.concatenate([log.table.keys[-1][:50_000], np.arange(1, 50_001, dtype=np.uint64)])
    t0 = time.perf_counter()
    for _ in range(20):
        log.lookup(probe[:1000])
    lookup_us = (time.perf_counter() - t0) / 20 / 1000 * 1e6
    # as the stage looks up a batch of outcomes: hashes in arrival order, half of them absent
    rng = np.random.default_rng(2)
    present = rng.choice(np.concatenate(log.table.keys), 2_500, replace=False)
    absent = rng.integers(1, 2**64 - 1, 2_500, dtype=np.uint64)
    arrival = rng.permutation(np.concatenate([present, absent]))
    t0 = time.perf_counter()
    for _ in range(20):
        log.lookup(arrival)
    arrival_us = (time.perf_counter() - t0) / 20 / arrival.size * 1e6
    return {
        "entries": held,
        "entry_bytes_layout": ENTRY.itemsize,
        "array_bytes_per_entry": round(log.nbytes / held, 2),
        "traced_bytes_per_entry": round(current / held, 2),
        "peak_traced_mb": round(peak / 2**20, 1),
        "rss_growth_mb": round(rss1 - rss0, 1),
        "rss_bytes_per_entry": round((rss1 - rss0) * 2**20 / held, 1),
        "runs": [int(k.size) for k in log.table.keys],
        "insert_seconds": round(seconds, 2),
        "lookup_us_per_key_batch_1000": round(lookup_us, 3),
        "lookup_us_per_key_batch_5000_arrival_order": round(arrival_us, 3),
        "entries_per_gib": int(2**30 / (log.nbytes / held)),
        "hours_per_gib_at_1000_per_s": round(2**30 / (log.nbytes / held) / 3.6e6, 2),
    }


def _sources(pairs: list[tuple[bytes, bytes]], topic: str, size: int) -> list[SourceBatch]:
    out = []
    for first in range(0, len(pairs), size):
        src = SourceBatch(topic, 0)
        chunk = pairs[first : first + size]
        src.keys = [k for k, _ in chunk]
        src.values = [v for _, v in chunk]
        src.offsets = list(range(first, first + len(chunk)))
        out.append(src)
    return out


def throughput(n_events: int, batch: int, repeat: int) -> dict[str, Any]:
    """Engine reward events/s, join off vs on, alternating passes in one process (wall clock
    and, less disturbed by other work on a shared machine, the process's CPU time).

    The stream is the benchmark's reward events (every request id once: each outcome creates a
    log entry, the join's most expensive case) and, for the "redelivered" row, the same events
    with a fifth of them delivered again.
    """
    pairs = inputs.reward_events(n_events)
    rng = np.random.default_rng(3)
    again = [pairs[i] for i in rng.choice(len(pairs), len(pairs) // 5, replace=False)]
    redelivered = pairs + again
    rng.shuffle(redelivered)  # type: ignore[arg-type]
    serdes = SerdeRegistry()
    base = AppConfig()
    topic = base.topics.bid_outcomes
    runs: dict[str, list[float]] = {"off": [], "on": [], "on_redelivered": []}
    cpu: dict[str, list[float]] = {"off": [], "on": [], "on_redelivered": []}
    streams = {"off": pairs, "on": pairs, "on_redelivered": redelivered}
    for _ in range(repeat):
        for label, stream in streams.items():
            cfg = base.replace(attribution=AttributionConfig(enabled=label != "off"))
            engine = PartitionEngine(cfg, 0, serdes)
            batches = _sources(stream, topic, batch)
            gc.collect()
            started, cpu0 = time.perf_counter(), time.process_time()
            for i, src in enumerate(batches):
                engine.process({topic: src}, now_ms=0)
                if i % COMMIT_EVERY == COMMIT_EVERY - 1 or i == len(batches) - 1:
                    engine.take_dirty()  # the commit's state records, join chunks included
            runs[label].append(len(stream) / (time.perf_counter() - started))
            cpu[label].append(len(stream) / (time.process_time() - cpu0))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    return {
        "events": n_events,
        "batch": batch,
        "repeat": repeat,
        "events_per_s": {k: [round(x) for x in v] for k, v in runs.items()},
        "median_events_per_s": {k: round(v) for k, v in med.items()},
        "ratio_on_to_off": round(med["on"] / med["off"], 3),
        "ratio_redelivered_to_off": round(med["on_redelivered"] / med["off"], 3),
        "cpu_events_per_s": {k: [round(x) for x in v] for k, v in cpu.items()},
        "cpu_ratio_on_to_off": round(med_cpu["on"] / med_cpu["off"], 3),
        "cpu_ratio_redelivered_to_off": round(med_cpu["on_redelivered"] / med_cpu["off"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per engine batch")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine()}
    results["throughput"] = throughput(args.events, args.batch, args.repeat)
    print("engine reward events/s:", json.dumps(results["throughput"], indent=1))
    results["memory"] = memory(args.entries)
    print("memory:", json.dumps(results["memory"], indent=1))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"written {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
