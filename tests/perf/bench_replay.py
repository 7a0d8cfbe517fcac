"""Benchmark of replay: events/s of the backtest, of the decision audit and of the report.

The input is a closed loop of in-process partition engines on the synthetic market (the same
helper the unit tests use, at a larger size): 4 partitions, 200 campaigns, bid requests, their
decisions and outcomes. Timed stages:

* ``merge``: k-way event-time merge of the partitions;
* ``backtest``: the candidate engine plus the rejection-sampling engine (what ``replay`` runs);
* ``backtest_only``: the candidate engine alone;
* ``verify``: ``--verify-decisions`` over every logged decision;
* ``report``: report.json analysis (OPE with bootstrap) and report.html with plots.

Run ``python -m tests.perf.bench_replay``; writes ``bench-results/replay.json``.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from processor.replay.backtest import run_backtest
from processor.replay.report import build_report, write_report
from processor.replay.source import merge
from processor.replay.verify import verify_decisions
from tests.unit.replay.closed_loop import closed_loop


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> dict[str, Any]:
    """Run the benchmark and return (and write) the results."""
    loop, gen_s = _timed(
        lambda: closed_loop(rounds=100, per_round=500, partitions=4, campaigns=200)
    )
    inputs = {k: v for k, v in loop.parts.items() if k[0] != loop.config.topics.bid_decisions}
    merged, merge_s = _timed(lambda: list(merge(loop.parts)))
    n_inputs = sum(len(v) for v in inputs.values())
    n_decisions = len(merged) - n_inputs
    result, bt_s = _timed(lambda: run_backtest(loop.config, merged))
    _, bt_only_s = _timed(lambda: run_backtest(loop.config, merged, rejection=False))
    verified, verify_s = _timed(lambda: verify_decisions(loop.config, merged))
    with tempfile.TemporaryDirectory() as tmp:
        _, report_s = _timed(
            lambda: write_report(tmp, build_report(result, {"from": "-", "to": "-"}, None))
        )
    out = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "input_events": n_inputs,
        "logged_decisions": n_decisions,
        "generate_s": round(gen_s, 2),
        "merge_events_per_s": round(len(merged) / merge_s),
        "backtest_events_per_s": round(n_inputs / bt_s),
        "backtest_only_events_per_s": round(n_inputs / bt_only_s),
        "verify_decisions_per_s": round(n_decisions / verify_s),
        "verify_mismatches": len(verified.mismatches),
        "report_s": round(report_s, 2),
    }
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/replay.json").write_text(json.dumps(out, indent=2) + "\n")
    for k, v in out.items():
        print(f"{k:28s} {v}")
    return out


if __name__ == "__main__":
    main()
