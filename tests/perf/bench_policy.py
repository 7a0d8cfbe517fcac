"""Benchmark of the bidding policy on the simulated ad market (fixed seeds, no Kafka).

``python -m tests.perf.bench_policy`` (``make bench-policy``) prints five tables and writes
``bench-results/policy.json``:

1. **Speed**: ``decide`` decisions/s (batches of 10,000 requests over 1,000 campaigns; *fresh*:
   every campaign got outcomes since its last decision, so every exact propensity is computed
   again; *cached*: the same state decided again) and ``observe`` outcomes/s, for the value
   objective, the binary objective and the 0.2 policy, in the same run.
2. **Profit per request** over 100,000 requests: the policy (value objective), the 0.2 policy
   (sign-of-profit Beta Thompson with the EWMA monitor, ``tests/perf/policy_0_2``), uniformly
   random arms, each fixed arm, and the best fixed arm per campaign in hindsight (each arm
   played from the start on the same requests; outcomes depend only on request and bid).
   Budgets do not bind here, so the numbers compare objectives, not pacing.
3. **Emergency share** of campaigns exactly on their CPA target (ROAS 1.5) at 0.5%, 1%, 3%
   conversion rate, over 100,000 requests (target < 1%).
4. **Held back**: outcomes of a campaign paying 5× its CPA target (1% CVR) until it is held
   back for good — from that decision on, ≥ 90% of its decisions have their bids capped by the
   CPA guardrail or are in emergency mode (target ≤ 1,000) — and the share held back after.
5. **Pacing**: one local day of a campaign whose unconstrained spend is twice its daily budget:
   share of the budget spent and the local hour it ran out (targets 95–100%, not before 22:00).

The machine is shared: speeds are medians of seven rounds, and ratios within one run are what
to compare. ``--quick`` runs a tenth of the closed-loop requests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from processor.policy.bidding import BiddingConfig, BidPolicy, OutcomeBatch, RequestBatch
from processor.policy.safety import G_EMERGENCY, G_MAX_CPA, SafetyConstraints
from processor.policy.simulator import CampaignSpec, MarketSimulator, run_closed_loop
from processor.policy.simulator_campaigns import default_campaigns
from processor.policy.simulator_loop import held_back_at
from tests.perf.policy_0_2.bidding import BiddingConfig as OldConfig
from tests.perf.policy_0_2.bidding import BidPolicy as OldPolicy

BATCH = 10_000
CAMPAIGNS = 1_000
REPEATS = 7
DAY = 86_400_000
HOUR = 3_600_000
CVRS = (0.005, 0.01, 0.03)


def _timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def bench_speed() -> dict[str, Any]:
    """Rounds of every contender interleaved, so the shared machine's load hits them alike."""
    contenders = {
        "value objective": BidPolicy(BiddingConfig(seed=1)),
        "binary objective": BidPolicy(BiddingConfig(seed=1, objective="binary")),
        "0.2 policy": OldPolicy(OldConfig(seed=1)),
    }
    sims = {name: MarketSimulator(3, n_campaigns=CAMPAIGNS) for name in contenders}
    states = {name: p.new_state() for name, p in contenders.items()}
    times: dict[str, dict[str, list[float]]] = {
        name: {"fresh": [], "cached": [], "observe": []} for name in contenders
    }
    for rep in range(REPEATS):
        for name, policy in contenders.items():
            sim, state, t = sims[name], states[name], times[name]
            reqs = sim.bid_requests(BATCH, start_ms=rep * 100_000, rate_per_s=10_000)
            batch = RequestBatch.from_records(reqs)
            t["fresh"].append(_timed(policy.decide, batch, state, decided_at_ms=0))
            t["cached"].append(_timed(policy.decide, batch, state, decided_at_ms=0))
            records = policy.decide(batch, state, decided_at_ms=0).to_records()
            outs = OutcomeBatch.from_records([o for o in sim.outcomes_for(records, reqs) if o])
            # every campaign gets outcomes, so the next decide meets stale propensity caches
            t["observe"].append(_timed(policy.observe, outs, state) / len(outs))
    out = {}
    for name, t in times.items():
        steady = t["fresh"][1:]  # the first round also creates the 1,000 rows
        out[name] = {
            "decide_fresh_per_s": BATCH / statistics.median(steady),
            "decide_fresh_best_per_s": BATCH / min(steady),
            "decide_cached_per_s": BATCH / statistics.median(t["cached"]),
            "observe_per_s": 1.0 / statistics.median(t["observe"]),
        }
    return out


def _book(seed: int, n: int) -> list[CampaignSpec]:
    rng = np.random.default_rng([seed, 4])
    return [replace(s, budget_ratio=1e6) for s in default_campaigns(rng, n)]


def _per_campaign_profit(policy: Any, sim: MarketSimulator, n: int) -> tuple[Any, dict[str, float]]:
    profit: dict[str, float] = {}

    def watch(reqs: Any, decisions: Any, outs: list[dict[str, Any]], res: Any) -> None:
        for o in outs:
            profit[o["campaign_id"]] = profit.get(o["campaign_id"], 0.0) + o["revenue"] - o["spend"]

    result = run_closed_loop(policy, sim, n, rate_per_s=1.0, observer=watch)
    return result, profit


def bench_profit(n: int, seeds: tuple[int, ...] = (7, 8, 9), campaigns: int = 2) -> dict[str, Any]:
    cfg = BiddingConfig(seed=1)
    out: dict[str, Any] = {"requests": n, "campaigns": campaigns, "seeds": list(seeds)}
    rows: dict[str, list[float]] = {}
    for seed in seeds:

        def sim(seed: int = seed) -> MarketSimulator:
            return MarketSimulator(seed, campaigns=_book(seed, campaigns))

        fixed: dict[str, dict[str, float]] = {}
        for arm in cfg.arm_names:
            one = BidPolicy(replace(cfg, arms={arm: cfg.arms[arm]}, conservative_arm=arm))
            result, by_campaign = _per_campaign_profit(one, sim(), n)
            fixed[arm] = by_campaign
            rows.setdefault(f"fixed: {arm}", []).append(result.profit / n)
        ids = sim().campaign_ids
        best = sum(max(fixed[a].get(c, 0.0) for a in cfg.arm_names) for c in ids)
        rows.setdefault("best fixed arm per campaign (hindsight)", []).append(best / n)
        policies = {
            "policy (value objective)": BidPolicy(cfg),
            "0.2 policy (sign of profit)": OldPolicy(OldConfig(seed=1)),
            "policy, binary objective": BidPolicy(replace(cfg, objective="binary")),
        }
        for name, policy in policies.items():
            result = run_closed_loop(policy, sim(), n, rate_per_s=1.0)
            rows.setdefault(name, []).append(result.profit / n)
        random = run_closed_loop(BidPolicy(cfg), sim(), n, rate_per_s=1.0, learn=False)
        rows.setdefault("uniformly random arms", []).append(random.profit / n)
    out["profit_per_request"] = rows
    return out


def _emergency_share(policy: Any, seed: int, n: int) -> dict[float, float]:
    specs = [CampaignSpec(cvr=c, cpa_ratio=1.0, roas=1.5) for c in CVRS for _ in range(5)]
    sim = MarketSimulator(seed, campaigns=specs)
    group = {cid: specs[i].cvr for i, cid in enumerate(sim.campaign_ids)}
    counts = {c: [0, 0] for c in CVRS}

    def watch(reqs: Any, decisions: Any, outs: Any, res: Any) -> None:
        for cid, mode in zip(decisions.campaign_id, decisions.mode_names(), strict=True):
            counts[group[cid]][0] += 1
            counts[group[cid]][1] += mode == "emergency"

    run_closed_loop(policy, sim, n, rate_per_s=1.0, observer=watch)
    return {c: e / max(1, d) for c, (d, e) in counts.items()}


def bench_emergency(n: int, seeds: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": n, "seeds": list(seeds)}
    for name, policy in (
        ("policy", BidPolicy(BiddingConfig(seed=1))),
        ("0.2 policy", OldPolicy(OldConfig(seed=1))),
    ):
        shares = [_emergency_share(policy, s, n) for s in seeds]
        out[name] = {f"{c:.1%}": [sh[c] for sh in shares] for c in CVRS}
    return out


def _held_back(policy: Any, seed: int, n: int) -> tuple[int, float]:
    specs = [CampaignSpec(cvr=0.01, cpa_ratio=1.0)] * 4 + [CampaignSpec(cvr=0.01, cpa_ratio=5.0)]
    sim = MarketSimulator(seed, campaigns=specs)
    bad = sim.campaign_ids[-1]
    outcomes, seen_at, held = [0], [], []

    def watch(reqs: Any, decisions: Any, outs: Any, res: Any) -> None:
        mine = decisions.campaign_id == bad
        holds = (decisions.guardrails & (G_EMERGENCY | G_MAX_CPA)) != 0
        seen_at.extend([outcomes[0]] * int(mine.sum()))
        held.extend(holds[mine].tolist())
        outcomes[0] += sum(o["campaign_id"] == bad for o in outs)

    run_closed_loop(policy, sim, n, rate_per_s=1.0, batch_size=200, observer=watch)
    at = held_back_at(seen_at, held)
    after = [h for s_, h in zip(seen_at, held, strict=True) if at >= 0 and s_ >= at]
    return at, float(np.mean(after)) if after else 0.0


def bench_held_back(n: int, seeds: tuple[int, ...] = tuple(range(10))) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": n, "seeds": list(seeds)}
    for name, policy in (
        ("policy", BidPolicy(BiddingConfig(seed=1))),
        ("0.2 policy", OldPolicy(OldConfig(seed=1))),
    ):
        results = [_held_back(policy, s, n) for s in seeds]
        out[name] = {
            "outcomes_until_held_back": [r[0] for r in results],
            "share_held_back_after": [r[1] for r in results],
        }
    return out


def _day(policy: Any, seed: int, budget_ratio: float, rate: float) -> tuple[float, float, float]:
    spec = CampaignSpec(cvr=0.01, budget_ratio=budget_ratio, utc_offset_minutes=-300)
    sim = MarketSimulator(seed, campaigns=[spec], traffic="diurnal")
    start = 3 * DAY + 300 * 60_000  # local midnight
    seen: list[tuple[int, float]] = []

    def watch(reqs: list[dict[str, Any]], *_: Any) -> None:
        seen.extend((r["event_time"], r["spent_today"]) for r in reqs)

    n = int(rate * 86_400)
    batch = max(10, int(rate * 400))  # about 7 minutes of requests: spent_today lags that much
    run_closed_loop(
        policy, sim, n, rate_per_s=rate, start_ms=start, batch_size=batch, observer=watch
    )
    assert sim.daily_budget is not None
    budget = float(sim.daily_budget[0])
    spent = sim.spent_today(sim.campaign_ids[0], start + DAY - 1)
    out = [t for t, s in seen if s >= 0.99 * budget]
    hour = (out[0] - start) / HOUR if out else 24.0
    return spent / budget, hour, spent / float(sim.expected_daily_spend(n)[0])


def bench_pacing(rate: float, seeds: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    out: dict[str, Any] = {"requests_per_day": int(rate * 86_400), "seeds": list(seeds)}
    paced = BidPolicy(BiddingConfig(seed=1))
    unpaced = BidPolicy(BiddingConfig(seed=1), SafetyConstraints(pacing=False))
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        unconstrained = _day(unpaced, seed, 1e6, rate)[2]
        for name, policy in (("pacing", paced), ("no pacing", unpaced)):
            share, hour, _ = _day(policy, seed, unconstrained / 2, rate)
            row = rows.setdefault(name, {"share_spent": [], "ran_out_hour": []})
            row["share_spent"].append(share)
            row["ran_out_hour"].append(hour)
    out.update(rows)
    return out


def _fmt(values: list[float], spec: str) -> str:
    return ", ".join(format(v, spec) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the closed-loop work")
    args = parser.parse_args()
    n = 10_000 if args.quick else 100_000
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "speed": bench_speed(),
    }
    print("speed (median of 7 rounds; 10,000 requests over 1,000 campaigns per batch)")
    for name, s in result["speed"].items():
        print(
            f"  {name:<18} decide fresh {s['decide_fresh_per_s']:>10,.0f}/s  "
            f"cached {s['decide_cached_per_s']:>11,.0f}/s  observe {s['observe_per_s']:>11,.0f}/s"
        )
    result["profit"] = bench_profit(n)
    print(f"profit per request, {n:,} requests, 2 campaigns, seeds 7, 8, 9")
    for name, values in result["profit"]["profit_per_request"].items():
        print(f"  {name:<42} {_fmt(values, '.4f')}   mean {np.mean(values):.4f}")
    result["emergency"] = bench_emergency(n)
    print(f"share of decisions in emergency, on-target campaigns, {n:,} requests, seeds 1-3")
    for name in ("policy", "0.2 policy"):
        row = result["emergency"][name]
        print(f"  {name:<11} " + "  ".join(f"CVR {c}: {_fmt(v, '.2%')}" for c, v in row.items()))
    result["held_back"] = bench_held_back(max(n // 5, 2_000))
    print("a campaign at 5x its CPA target, seeds 0-9")
    for name in ("policy", "0.2 policy"):
        row = result["held_back"][name]
        print(
            f"  {name:<11} outcomes until held back {row['outcomes_until_held_back']}; "
            f"held back after: {_fmt(row['share_held_back_after'], '.0%')}"
        )
    result["pacing"] = bench_pacing(0.05 if args.quick else 0.5)
    print("one local day, unconstrained spend = 2x the daily budget, seeds 1-3")
    for name in ("pacing", "no pacing"):
        row = result["pacing"][name]
        print(
            f"  {name:<10} share of budget spent {_fmt(row['share_spent'], '.1%')}; "
            f"ran out at local hour {_fmt(row['ran_out_hour'], '.1f')} (24.0: did not)"
        )
    result["seconds"] = time.perf_counter() - started
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "policy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'policy.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
