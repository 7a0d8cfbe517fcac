"""Ensemble-weight learning figures and off-policy estimate coverage (issue 15), fixed seeds.

Run: ``.venv/bin/python -m tests.perf.bench_ensemble`` (``make bench-ensemble``; ``--quick`` for
100 coverage logs instead of 300). Prints a table and writes ``bench-results/ensemble.json``.

Learning figures go through the stage's own :class:`PartitionEngine` (trade outcomes encoded as
Avro, batches of 100; 20 for the regime switch, so its trade counts have that resolution) on the
seeded trading simulator:

* partial reports — A (+20 bps) reports every trade, B (0 bps) one trade in four; A's bandit
  weight after 3,000 trades (target ≥ 0.9);
* steady edge — five models, one 10 bps better, full information, sd 30 bps; the best model's
  weight after 2,000 trades (target ≥ 0.95);
* regime switch — the same, with the best model changing after 2,000 trades; trades until the
  new best has weight ≥ 0.9, with ``share`` 1e-3 (target ≤ 1,000) and without (five seeds);
* family_horizon — 20,000 selections by ``EnsembleWeightOptimizer.select`` while learning: the
  largest gap between an arm's selection frequency and its mean published probability (target
  ≤ 0.01), and the logged propensity equal to the published one;
* coverage of the 95% intervals of IPS / SNIPS / DR over simulated logs (tests/perf/ope_coverage),
  now and with the 0.2 estimators;
* time of a 2,000-resample bootstrap of 100,000 events, and the cost of ``share`` in the engine
  (fixed share applies a batch one event per ensemble at a time).

Times are wall-clock on whatever machine runs this; the JSON records the machine, and the
ranges over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from processor.bandits import EnsembleWeightOptimizer
from processor.codec.serde import SerdeRegistry
from processor.config import config_from_dict
from processor.engine import PartitionEngine, SourceBatch
from processor.policy.simulator import MarketSimulator
from processor.replay.ope import cross_fitted_q, doubly_robust, ips, snips
from tests.perf.ope_coverage import SCENARIOS, coverage

OUT = Path("bench-results/ensemble.json")
SERDES = SerdeRegistry()
FIVE = ("m0", "m1", "m2", "m3", "m4")


def _engine(families: tuple[str, ...], **ensemble: Any) -> PartitionEngine:
    cfg = config_from_dict(
        {"ensemble": {"families": list(families), "horizons": ["1h"], **ensemble}}
    )
    return PartitionEngine(cfg, 0, SERDES)


def _encoded(trades: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    enc = SERDES["TradeOutcome"].encode
    return [(t["ensemble_id"].encode(), enc(t)) for t in trades]


def _weights_along(
    eng: PartitionEngine, trades: list[dict[str, Any]], arm: str, batch: int = 100
) -> np.ndarray:
    """Bandit weight of ``arm`` after each trade's batch (ensemble ens-0)."""
    topic = eng.config.topics.trade_outcomes
    pairs = _encoded(trades)
    out = np.empty(len(trades))
    for start in range(0, len(pairs), batch):
        src = SourceBatch(topic, 0)
        for i, (k, v) in enumerate(pairs[start : start + batch]):
            src.append(k, v, start + i)
        res = eng.process({topic: src})
        assert not res.dead_letters, res.dead_letters[0].reason
        out[start : start + batch] = eng.ensembles.snapshot("ens-0")["bandit_weights"][arm]
    return out


def partial_reports(seed: int = 2) -> dict[str, Any]:
    sim = MarketSimulator(seed, families=("A", "B"), horizons=("1h",))
    sim.set_trading_truth({"A": 20.0, "B": 0.0}, sd_bps=30.0)
    trades = sim.trade_outcomes(3000, feedback="full", arm_mode="family", report_prob={"B": 0.25})
    w = _weights_along(_engine(("A", "B")), trades, "A")
    return {"weight_A_after_3000": float(w[-1]), "target": ">= 0.9"}


def steady_edge(seed: int = 15) -> dict[str, Any]:
    sim = MarketSimulator(seed, families=FIVE, horizons=("1h",))
    sim.set_trading_truth({"m0": 10.0}, sd_bps=30.0)
    trades = sim.trade_outcomes(2000, feedback="full", arm_mode="family")
    w = _weights_along(_engine(FIVE), trades, "m0")
    return {"weight_best_after_2000": float(w[-1]), "target": ">= 0.95"}


def regime_switch(share: float, seed: int) -> int:
    sim = MarketSimulator(seed, families=FIVE, horizons=("1h",))
    sim.set_trading_truth(
        {"m0": 10.0}, sd_bps=30.0, switch_ms=2000 * 100, mean_after_bps={"m4": 10.0}
    )
    trades = sim.trade_outcomes(8000, feedback="full", arm_mode="family")
    w = _weights_along(_engine(FIVE, share=share), trades, "m4", batch=20)[2000:]
    hit = np.flatnonzero(w >= 0.9)
    return int(hit[0]) + 1 if hit.size else -1


def regime_switches(seeds: range) -> dict[str, Any]:
    with_share = [regime_switch(1e-3, s) for s in seeds]
    without = [regime_switch(0.0, s) for s in seeds]
    return {
        "trades_to_0.9_share_1e-3": with_share,
        "trades_to_0.9_no_share": without,
        "note": "-1: not reached within 6,000 trades after the switch",
        "target": "share <= 1000",
    }


def family_horizon_propensity(n: int = 20_000, seed: int = 8) -> dict[str, Any]:
    fams = ["f1", "f2", "f3"]
    opt = EnsembleWeightOptimizer(fams, ["5m", "15m"], mode="family_horizon", seed=seed)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(3)
    expected = np.zeros(3)
    worst_logged = 0.0
    for _ in range(n):
        probs = opt.get_probabilities("15m")
        arm, p = opt.select("15m")
        worst_logged = max(worst_logged, abs(p - probs[arm]))
        i = fams.index(arm.split(":")[0])
        chosen[i] += 1
        expected += [probs[f + ":15m"] for f in fams]
        opt.update(fams[i], "15m", float(rng.normal(10.0 * i, 30.0)), p)
    return {
        "selections": n,
        "max_abs_frequency_minus_probability": float(np.abs(chosen - expected).max() / n),
        "max_abs_logged_minus_published": worst_logged,
        "target": "<= 0.01",
    }


def bootstrap_times(repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    n, k = 100_000, 5
    a = rng.integers(0, k, n)
    r = rng.normal(0.0, 20.0, n)
    lp = np.full(n, 1 / k)
    target = rng.dirichlet(np.ones(k), n)
    tp = target[np.arange(n), a]
    q = cross_fitted_q(np.zeros(n, dtype=np.int64), a, r, 1, k)
    ql, qt = q[np.arange(n), a], (q * target).sum(axis=1)
    times: dict[str, list[float]] = {"ips": [], "snips": [], "doubly_robust": []}
    for rep in range(repeats):
        for name, fn in (
            ("ips", lambda s: ips(r, tp, lp, seed=s)),
            ("snips", lambda s: snips(r, tp, lp, seed=s)),
            ("doubly_robust", lambda s: doubly_robust(r, tp, lp, ql, qt, seed=s)),
        ):
            t0 = time.perf_counter()
            est = fn(rep)
            times[name].append(time.perf_counter() - t0)
            assert est.n_boot == 2000
    return {
        "events": n,
        "resamples": 2000,
        "seconds": {k: [round(min(v), 4), round(max(v), 4)] for k, v in times.items()},
        "target": "< 1 s",
    }


def share_cost(repeats: int) -> dict[str, Any]:
    sim = MarketSimulator(4, families=FIVE, horizons=("1h",))
    trades = []
    for e in range(24):
        trades += sim.trade_outcomes(
            20_000 // 24, feedback="full", arm_mode="family", ensemble_id=f"ens-{e}"
        )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(trades))
    encoded = _encoded(trades)
    pairs = [encoded[i] for i in order]
    out: dict[str, Any] = {"trades": len(pairs), "ensembles": 24, "batch": 5000}
    for share in (0.0, 1e-3):
        rates = []
        for _ in range(repeats):
            eng = _engine(FIVE, share=share)
            topic = eng.config.topics.trade_outcomes
            t0 = time.perf_counter()
            for start in range(0, len(pairs), 5000):
                src = SourceBatch(topic, 0)
                for i, (key, v) in enumerate(pairs[start : start + 5000]):
                    src.append(key, v, start + i)
                eng.process({topic: src})
            rates.append(len(pairs) / (time.perf_counter() - t0))
        out[f"trades_per_s_share_{share:g}"] = [round(min(rates)), round(max(rates))]
    return out


def _table(res: dict[str, Any]) -> str:
    lines = [
        f"partial reports: weight of the always-reporting better model after 3,000 trades "
        f"{res['partial_reports']['weight_A_after_3000']:.3f} (target >= 0.9)",
        f"steady 10 bps edge, K=5, full information: best weight after 2,000 trades "
        f"{res['steady_edge']['weight_best_after_2000']:.4f} (target >= 0.95)",
        "regime switch, trades until the new best reaches 0.9 (seeds "
        f"{res['regime_switch']['seeds']}): share 1e-3 "
        f"{res['regime_switch']['trades_to_0.9_share_1e-3']}, no share "
        f"{res['regime_switch']['trades_to_0.9_no_share']}",
        "family_horizon, 20,000 selections: max |frequency - probability| "
        f"{res['family_horizon']['max_abs_frequency_minus_probability']:.4f} (target <= 0.01)",
        "",
        f"{'coverage of 95% intervals':58s} {'logs':>5s} {'IPS':>6s} {'SNIPS':>6s} {'DR':>6s}"
        f" {'0.2 IPS':>8s} {'0.2 SNIPS':>9s} {'0.2 DR':>7s}",
    ]
    for row in res["coverage"]:
        new, old = row["now"]["coverage"], row["0.2"]["coverage"]
        lines.append(
            f"{row['now']['scenario'][:58]:58s} {row['now']['logs']:5d} {new['ips']:6.3f} "
            f"{new['snips']:6.3f} {new['dr']:6.3f} {old['ips']:8.3f} {old['snips']:9.3f} "
            f"{old['dr']:7.3f}"
        )
    bt = res["bootstrap_100k"]["seconds"]
    lines.append("")
    lines.append(
        "bootstrap, 100,000 events, 2,000 resamples (s, min-max): "
        + ", ".join(f"{k} {v[0]:.3f}-{v[1]:.3f}" for k, v in bt.items())
    )
    sc = res["share_cost"]
    lines.append(
        "engine, 20,000 full-information trades over 24 ensembles (trades/s, min-max): share 0 "
        f"{sc['trades_per_s_share_0']}, share 1e-3 {sc['trades_per_s_share_0.001']}"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 coverage logs instead of 300")
    args = ap.parse_args()
    logs = 100 if args.quick else 300
    seeds = range(5)
    started = time.time()
    res: dict[str, Any] = {
        "partial_reports": partial_reports(),
        "steady_edge": steady_edge(),
        "regime_switch": {"seeds": list(seeds), **regime_switches(seeds)},
        "family_horizon": family_horizon_propensity(),
        "coverage": [
            {"now": coverage(key, logs), "0.2": coverage(key, logs, legacy=True)}
            for key in SCENARIOS
        ],
        "bootstrap_100k": bootstrap_times(5),
        "share_cost": share_cost(3),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "shared machine: times are indicative, see the min-max ranges",
        },
    }
    res["seconds"] = round(time.time() - started, 1)
    print(_table(res))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {OUT} ({res['seconds']} s)")


if __name__ == "__main__":
    main()
