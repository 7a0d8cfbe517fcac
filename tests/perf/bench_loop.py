"""The stage's loop at a moderate request rate, without Kafka: milliseconds a loop and a cycle end.

At 10,000 bid requests/s a loop takes a few requests from each of 6 partitions, so its fixed
costs (per call and per partition) matter more than its cost per request. This runs the stage's
request handler (:func:`~processor.engine.requests.decide_requests`, the handler the loop calls)
on loops of ``--per-partition`` requests from each of 6 partitions, and every ``--loops``
loops a cycle end (each engine's ``take_dirty`` and the changelog records' encoding), as one
100 ms commit cycle at that rate.

Run: ``.venv/bin/python -m tests.perf.bench_loop [--per-partition N] [--loops N]``. Prints the
figures and writes ``bench-results/loop.json``. The machine is shared: compare runs of two
commits back to back, alternating, and look at the spread.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine import PartitionEngine, SourceBatch
from processor.engine.outputs import EngineOutputs
from processor.engine.requests import decide_requests
from processor.state.changelog import encode_state_records
from tests.perf import inputs
from tests.perf.kit import PARTITIONS, machine

OUT = Path("bench-results/loop.json")


def run(
    requests: int, per_partition: int, loops_per_cycle: int, partitions: int = PARTITIONS
) -> dict[str, Any]:
    """Loop and cycle-end times (ms) over ``requests`` bid requests."""
    config = AppConfig()
    serdes = SerdeRegistry()
    topic = config.topics.bid_requests
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(partitions)}
    for key, value in inputs.bid_requests(requests):
        by_partition[zlib.crc32(key) % partitions].append((key, value))
    engines = {p: PartitionEngine(config, p, serdes) for p in range(partitions)}
    serde = serdes["StateRecord"]
    rounds = min(len(v) for v in by_partition.values()) // per_partition
    loop_s: list[float] = []
    end_s: list[float] = []
    gc.collect()
    for r in range(rounds):
        sources = {}
        for p, pairs in by_partition.items():
            chunk = pairs[r * per_partition : (r + 1) * per_partition]
            src = SourceBatch(topic, p)
            src.keys = [k for k, _ in chunk]
            src.values = [v for _, v in chunk]
            src.offsets = list(range(r * per_partition, r * per_partition + len(chunk)))
            sources[p] = src
        outs = {p: EngineOutputs() for p in range(partitions)}
        started = time.perf_counter()
        decide_requests(engines, sources, outs, 0)
        loop_s.append(time.perf_counter() - started)
        if r % loops_per_cycle == loops_per_cycle - 1:
            started = time.perf_counter()
            for engine in engines.values():
                items = engine.take_dirty()
                if items:
                    encode_state_records(serde, items)
            end_s.append(time.perf_counter() - started)
    loops, ends = np.array(loop_s) * 1e3, np.array(end_s) * 1e3
    return {
        "requests_per_loop": per_partition * partitions,
        "partitions": partitions,
        "loops": len(loop_s),
        "loops_per_cycle": loops_per_cycle,
        "loop_ms_min": round(float(loops.min()), 3),
        "loop_ms_median": round(float(np.median(loops)), 3),
        "loop_ms_p99": round(float(np.percentile(loops, 99)), 3),
        "cycle_end_ms_median": round(float(np.median(ends)), 3),
        "cycle_end_ms_p99": round(float(np.percentile(ends, 99)), 3),
        "cycle_work_ms": round(float(loops.sum() / len(ends) + ends.mean()), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument(
        "--per-partition", type=int, default=5, help="requests of each partition in a loop"
    )
    parser.add_argument("--loops", type=int, default=30, help="loops per commit cycle")
    parser.add_argument(
        "--partitions",
        type=int,
        default=PARTITIONS,
        help="input partitions the requests are spread over (1: the backlog shape, where a "
        "consume() returns one partition's messages)",
    )
    args = parser.parse_args(argv)
    loop = run(args.requests, args.per_partition, args.loops, args.partitions)
    results = {"machine": machine(), "loop": loop}
    print(json.dumps(results["loop"], indent=1))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"written {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
