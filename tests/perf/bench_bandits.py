"""Per-event object APIs vs the keyed batch API: updates/s and decisions/s, 1,000 keys × 4 arms.

Run: ``.venv/bin/python -m tests.perf.bench_bandits`` (``make bench-bandits``). Prints a table and
writes ``bench-results/bandits.json``.

Baselines:

* ``original`` — written the way the starting documents did it: one Python object per arm,
  numpy scalar sampling per call, Exp3 with raw multiplicative weights (kept here, never in the
  package; its Exp3 overflows on bps rewards, so it is fed rewards in [0, 1]);
* ``object`` — this package's single-key object APIs, one call per event;
* ``keyed`` — :class:`KeyedThompson` / :class:`KeyedExp3IX`, one call per batch.

Then the per-event object API's cost of one select + update on a learning stream
(:mod:`tests.perf.object_steps`; target ≤ 20 µs).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from processor.bandits import (
    Exp3IXBandit,
    KeyedExp3IX,
    KeyedThompson,
    ThompsonSampling,
    thompson_propensities,
)
from tests.perf import object_steps

N_KEYS = 1_000
ARMS = ["conservative", "balanced", "aggressive", "experimental"]
BATCH = 100_000
MEANS = np.array([0.02, 0.03, 0.035, 0.025])
OUT = Path("bench-results/bandits.json")


class OriginalThompsonArm:
    """One object per arm, numpy scalar sampling per call (the original notes' shape)."""

    def __init__(self, arm_id: str, prior_alpha: float = 1.0, prior_beta: float = 1.0) -> None:
        self.arm_id = arm_id
        self.alpha = prior_alpha
        self.beta = prior_beta

    def sample(self) -> float:
        return float(np.random.beta(self.alpha, self.beta))

    def update(self, reward: float, success: bool | None = None) -> None:
        if success is None:
            success = reward > 0
        if success:
            self.alpha += 1
        else:
            self.beta += 1


class OriginalExp3:
    """The original document's Exp3: raw weights, u_i ← u_i·exp(η r/p), 5% mixing."""

    def __init__(self, n_arms: int, gamma: float = 0.05, eta: float = 0.07) -> None:
        self._weights = np.ones(n_arms)
        self._gamma = gamma
        self._eta = eta
        self._n = n_arms

    def get_probabilities(self) -> np.ndarray:
        normalized = self._weights / np.sum(self._weights)
        return (1 - self._gamma) * normalized + self._gamma / self._n

    def select_arm(self) -> int:
        return int(np.random.choice(self._n, p=self.get_probabilities()))

    def update(self, arm: int, reward: float) -> None:
        p_arm = self.get_probabilities()[arm]
        self._weights[arm] *= math.exp(self._eta * reward / p_arm)


def _rate(n: int, fn: Callable[[], Any], repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def _events(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = rng.integers(0, N_KEYS, n)
    arms = rng.integers(0, len(ARMS), n)
    success = (rng.random(n) < MEANS[arms]).astype(np.float64)
    return rows, arms, success


def bench_thompson(rng: np.random.Generator) -> dict[str, float]:
    keys = [f"campaign-{i}" for i in range(N_KEYS)]
    n_ev = 20_000
    rows, arms, success = _events(rng, BATCH)
    res: dict[str, float] = {}

    orig = {k: {a: OriginalThompsonArm(a) for a in ARMS} for k in keys}

    def orig_update() -> None:
        for r, a, s in zip(
            rows[:n_ev].tolist(), arms[:n_ev].tolist(), success[:n_ev].tolist(), strict=True
        ):
            orig[keys[r]][ARMS[a]].update(s, s > 0)

    def orig_decide() -> None:
        for r in rows[:n_ev].tolist():
            arm_objs = orig[keys[r]]
            samples = {a: o.sample() for a, o in arm_objs.items()}
            max(samples, key=lambda x: samples[x])

    res["original_updates_per_s"] = _rate(n_ev, orig_update)
    res["original_decisions_per_s"] = _rate(n_ev, orig_decide)

    objs = {k: ThompsonSampling(ARMS, seed=i) for i, k in enumerate(keys)}

    def obj_update() -> None:
        for r, a, s in zip(
            rows[:n_ev].tolist(), arms[:n_ev].tolist(), success[:n_ev].tolist(), strict=True
        ):
            objs[keys[r]].update(ARMS[a], success=s)

    n_obj = 2_000

    def obj_decide() -> None:
        for r in rows[:n_obj].tolist():
            o = objs[keys[r]]
            o.update(ARMS[0], success=False)  # new state each time: no cache help
            o.select()
            o.propensities()

    res["object_updates_per_s"] = _rate(n_ev, obj_update)
    res["object_decisions_with_propensity_per_s"] = _rate(n_obj, obj_decide, repeat=1)

    kt = KeyedThompson(ARMS, capacity=N_KEYS)
    krows = kt.rows(keys)
    key_batch = [keys[r] for r in rows]
    res["keyed_updates_per_s"] = _rate(BATCH, lambda: kt.update(krows[rows], arms, success))
    res["keyed_updates_with_key_lookup_per_s"] = _rate(
        BATCH, lambda: kt.update(kt.rows(key_batch), arms, success)
    )
    gen = np.random.default_rng(1)
    res["keyed_decisions_no_propensity_per_s"] = _rate(
        BATCH, lambda: kt.select_sampled(krows[rows], gen)
    )
    uniforms = gen.random(BATCH)

    def cold_decide() -> None:
        kt.update(krows, np.zeros(N_KEYS, dtype=np.int64), np.zeros(N_KEYS))  # every key changes
        kt.select(krows[rows], uniforms)

    t_upd = BATCH / res["keyed_updates_per_s"] * N_KEYS / BATCH
    res["keyed_decisions_with_propensity_cold_per_s"] = BATCH / (
        BATCH / _rate(BATCH, cold_decide) - t_upd
    )
    kt.select(krows[rows], uniforms)
    res["keyed_decisions_with_propensity_cached_per_s"] = _rate(
        BATCH, lambda: kt.select(krows[rows], uniforms)
    )
    all_rows = np.arange(N_KEYS)
    res["keyed_quadrature_us_per_key_state"] = 1e6 / _rate(
        N_KEYS, lambda: thompson_propensities(kt.alpha(all_rows), kt.beta(all_rows), kt.active)
    )

    def cycle() -> None:
        r2, a2, s2 = rows[:10_000], arms[:10_000], success[:10_000]
        kt.update(krows[r2], a2, s2)
        kt.select(krows[rows[10_000:20_000]], uniforms[:10_000])

    res["keyed_cycle_10k_updates_10k_decisions_per_s"] = _rate(20_000, cycle)
    return res


def bench_exp3(rng: np.random.Generator) -> dict[str, float]:
    keys = [f"ensemble-{i}" for i in range(N_KEYS)]
    n_ev = 20_000
    rows, arms, success = _events(rng, BATCH)
    rewards = success * 40.0 - 20.0
    props = np.full(BATCH, 0.25)
    res: dict[str, float] = {}

    orig = {k: OriginalExp3(len(ARMS)) for k in keys}

    def orig_update() -> None:
        for r, a, s in zip(
            rows[:n_ev].tolist(), arms[:n_ev].tolist(), success[:n_ev].tolist(), strict=True
        ):
            orig[keys[r]].update(a, s)

    def orig_decide() -> None:
        for r in rows[:n_ev].tolist():
            o = orig[keys[r]]
            o.select_arm()
            o.get_probabilities()

    res["original_updates_per_s"] = _rate(n_ev, orig_update)
    res["original_decisions_per_s"] = _rate(n_ev, orig_decide)

    objs = {k: Exp3IXBandit(len(ARMS), ARMS, seed=i) for i, k in enumerate(keys)}

    def obj_update() -> None:
        for r, a, w in zip(
            rows[:n_ev].tolist(), arms[:n_ev].tolist(), rewards[:n_ev].tolist(), strict=True
        ):
            objs[keys[r]].update(a, w, 0.25)

    def obj_decide() -> None:
        for r in rows[:n_ev].tolist():
            o = objs[keys[r]]
            a = o.select_arm()
            float(o.get_probabilities()[a])

    res["object_updates_per_s"] = _rate(n_ev, obj_update)
    res["object_decisions_with_propensity_per_s"] = _rate(n_ev, obj_decide)

    ke = KeyedExp3IX(ARMS, capacity=N_KEYS)
    krows = ke.rows(keys)
    res["keyed_updates_per_s"] = _rate(BATCH, lambda: ke.update(krows[rows], arms, rewards, props))
    uniforms = np.random.default_rng(2).random(BATCH)
    res["keyed_decisions_with_propensity_per_s"] = _rate(
        BATCH, lambda: ke.select(krows[rows], uniforms)
    )
    matrix = np.where(
        rng.random((BATCH, len(ARMS))) < 0.1, np.nan, rng.normal(0, 20, (BATCH, len(ARMS)))
    )
    res["keyed_hedge_updates_per_s"] = _rate(BATCH, lambda: ke.update_full(krows[rows], matrix))
    return res


def main() -> None:
    rng = np.random.default_rng(12345)
    np.random.seed(12345)
    results: dict[str, Any] = {"thompson": bench_thompson(rng), "exp3ix": bench_exp3(rng)}
    steps = object_steps.run()
    meta = {
        "keys": N_KEYS,
        "arms": len(ARMS),
        "batch": BATCH,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
    }
    targets = {
        "keyed_updates_per_s": 1_000_000,
        "keyed_decisions_with_propensity_per_s": 200_000,
    }
    print(f"bandit benchmark: {N_KEYS} keys × {len(ARMS)} arms, batch {BATCH}")
    print(f"{'algorithm':<9} {'measure':<48} {'per second':>14}")
    for algo, rows in results.items():
        for name, value in rows.items():
            unit = "µs" if name.endswith("_us_per_key_state") else "/s"
            print(f"{algo:<9} {name:<48} {value:>12,.0f} {unit}")
    ts, ex = results["thompson"], results["exp3ix"]
    checks = {
        "thompson_keyed_updates>=1e6": ts["keyed_updates_per_s"] >= targets["keyed_updates_per_s"],
        "exp3ix_keyed_updates>=1e6": ex["keyed_updates_per_s"] >= targets["keyed_updates_per_s"],
        "thompson_keyed_decisions_with_propensity_cold>=2e5": ts[
            "keyed_decisions_with_propensity_cold_per_s"
        ]
        >= targets["keyed_decisions_with_propensity_per_s"],
        "exp3ix_keyed_decisions_with_propensity>=2e5": ex["keyed_decisions_with_propensity_per_s"]
        >= targets["keyed_decisions_with_propensity_per_s"],
    }
    print(
        f"object API, one select + update ({steps['steps']:,} events per stream, "
        f"seeds {steps['seeds']}; see tests/perf/object_steps.py):"
    )
    for name, fig in steps["classes"].items():
        print(f"  {name:<24} {fig['us_per_step']:>8.1f} µs a step ({fig['min']}–{fig['max']})")
        checks[f"{name}_select_update<=20us"] = fig["us_per_step"] <= 20.0
    results["object_api"] = steps
    for name, ok in checks.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "results": results, "targets_met": checks}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
