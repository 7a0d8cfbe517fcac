"""Benchmark of the bidding policy: ``BidPolicy.decide`` decisions/s with exact propensities.

Batches of 10,000 requests over 1,000 campaigns. Two cases:

* ``fresh``: every campaign received rewards since its last decision (the stream's steady
  state), so every decide recomputes the exact Thompson propensities by quadrature;
* ``cached``: the same state decided again (propensities cached per (campaign, version)).

Also measures ``observe`` (reward events/s) and the closed-loop figures of the default
simulator scenario. Run ``python -m tests.perf.bench_policy``; writes
``bench-results/policy.json``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from processor.policy.bidding import (
    BiddingConfig,
    BiddingState,
    BidPolicy,
    OutcomeBatch,
    RequestBatch,
)
from processor.policy.simulator import MarketSimulator, run_closed_loop

BATCH = 10_000
CAMPAIGNS = 1_000
REPEATS = 7


def _timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def bench_decide() -> dict[str, Any]:
    sim = MarketSimulator(3, n_campaigns=CAMPAIGNS)
    policy = BidPolicy(BiddingConfig(seed=1))
    state = BiddingState(policy.config)
    fresh, cached, observe = [], [], []
    for rep in range(REPEATS):
        reqs = sim.bid_requests(BATCH, start_ms=rep * 100_000, rate_per_s=10_000)
        batch = RequestBatch.from_records(reqs)
        fresh.append(_timed(policy.decide, batch, state, decided_at_ms=0))
        cached.append(_timed(policy.decide, batch, state, decided_at_ms=0))
        records = policy.decide(batch, state, decided_at_ms=0).to_records()
        outs = OutcomeBatch.from_records([o for o in sim.outcomes_for(records, reqs) if o])
        # Give every campaign a reward so the next decide meets stale propensity caches.
        observe.append(_timed(policy.observe, outs, state) / len(outs))
    # The first fresh round also creates 1,000 rows: report the rounds after it.
    steady = fresh[1:]
    return {
        "batch": BATCH,
        "campaigns": CAMPAIGNS,
        "decide_fresh_decisions_per_s": BATCH / statistics.median(steady),
        "decide_fresh_best_decisions_per_s": BATCH / min(steady),
        "decide_cached_decisions_per_s": BATCH / statistics.median(cached),
        "observe_events_per_s": 1.0 / statistics.median(observe),
    }


def bench_closed_loop() -> dict[str, Any]:
    policy = BidPolicy(BiddingConfig(seed=1))
    learned = run_closed_loop(policy, MarketSimulator(7), 30_000)
    random = run_closed_loop(policy, MarketSimulator(7), 30_000, learn=False)
    return {
        "scenario": "default, seed 7, 20 campaigns, 30,000 requests, batches of 1,000",
        "reward_policy": learned.total_reward,
        "reward_uniform_random": random.total_reward,
        "reward_ratio": learned.total_reward / random.total_reward,
        "violation_rate_policy": learned.violation_rate,
        "violation_rate_random": random.violation_rate,
        "emergency_entries_policy": learned.emergency_entries,
    }


def main() -> None:
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "decide": bench_decide(),
        "closed_loop": bench_closed_loop(),
    }
    d, c = result["decide"], result["closed_loop"]
    print(f"decide, fresh propensities : {d['decide_fresh_decisions_per_s']:>12,.0f} decisions/s")
    print(f"decide, cached propensities: {d['decide_cached_decisions_per_s']:>12,.0f} decisions/s")
    print(f"observe                    : {d['observe_events_per_s']:>12,.0f} events/s")
    print(f"closed loop reward vs random: {c['reward_ratio']:.2f}x")
    vp, vr = c["violation_rate_policy"], c["violation_rate_random"]
    print(f"violation rate: policy {vp:.3%}, random {vr:.3%}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "policy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'policy.json'}")


if __name__ == "__main__":
    main()
