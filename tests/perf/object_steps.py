"""The per-event object API: µs for one select + update, as a library user calls it (issue 16).

Each class learns one decision stream for ``STEPS`` events from its own seed, Bernoulli outcomes
from fixed means, and the mean cost of a step over the whole stream is reported (the first steps,
with small counts, cost most for Thompson sampling: see :mod:`processor.bandits.thompson_drift`).
A step is what a user writes:

* ``ThompsonSampling``: ``arm = ts.select(); ts.update(arm, success=...)``;
* ``Exp3IXBandit``: ``i = b.select_arm(); p = b.get_probabilities()[i]; b.update(i, bps, p)``;
* ``Hedge``: ``i = h.select_arm(); h.update({model: bps, ...})`` (every model reports);
* ``EnsembleWeightOptimizer``: ``arm, p = opt.select(h); opt.update(family, h, bps, p)``.

Only the public API is used, so the same code times an older version of the package (run
``python tests/perf/object_steps.py`` with another ``processor`` first on ``sys.path``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from processor.bandits import EnsembleWeightOptimizer, Exp3IXBandit, Hedge, ThompsonSampling

ARMS = ["conservative", "balanced", "aggressive", "experimental"]
RATES = [0.02, 0.03, 0.035, 0.025]  # conversion rates of the arms (ad bidding)
MODELS = ["lightgbm", "xgboost", "ridge", "mlp", "lstm"]
EDGE_BPS = [2.0, 4.0, 6.0, 3.0, 1.0]  # mean trade reward of each model, sd 30 bps
STEPS = 20_000


def _time(step: Callable[[int], None], steps: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - t0) / steps * 1e6


def thompson(steps: int, seed: int) -> float:
    ts = ThompsonSampling(ARMS, seed=seed)
    draws = np.random.default_rng(seed + 1).random(steps).tolist()
    index = {a: i for i, a in enumerate(ARMS)}

    def step(i: int) -> None:
        arm = ts.select()
        ts.update(arm, success=draws[i] < RATES[index[arm]])

    return _time(step, steps)


def exp3ix(steps: int, seed: int) -> float:
    b = Exp3IXBandit(len(MODELS), MODELS, seed=seed)
    noise = np.random.default_rng(seed + 1).normal(0.0, 30.0, steps).tolist()

    def step(i: int) -> None:
        arm = b.select_arm()
        p = b.get_probabilities()[arm]
        b.update(arm, EDGE_BPS[arm] + noise[i], p)

    return _time(step, steps)


def hedge(steps: int, seed: int) -> float:
    h = Hedge(len(MODELS), MODELS, seed=seed)
    noise = np.random.default_rng(seed + 1).normal(0.0, 30.0, (steps, len(MODELS))).tolist()

    def step(i: int) -> None:
        h.select_arm()
        h.update({m: e + n for m, e, n in zip(MODELS, EDGE_BPS, noise[i], strict=True)})

    return _time(step, steps)


def ensemble(steps: int, seed: int) -> float:
    opt = EnsembleWeightOptimizer(MODELS, ["5m", "15m", "60m"], mode="family", seed=seed)
    noise = np.random.default_rng(seed + 1).normal(0.0, 30.0, steps).tolist()
    horizons = ["5m", "15m", "60m"]
    edge = dict(zip(MODELS, EDGE_BPS, strict=True))

    def step(i: int) -> None:
        h = horizons[i % 3]
        arm, p = opt.select(h)
        opt.update(arm, h, edge[arm] + noise[i], p)

    return _time(step, steps)


CLASSES: dict[str, Callable[[int, int], float]] = {
    "ThompsonSampling": thompson,
    "Exp3IXBandit": exp3ix,
    "Hedge": hedge,
    "EnsembleWeightOptimizer": ensemble,
}


def run(steps: int = STEPS, seeds: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    """Mean µs per step of each class (one stream per seed), and its range over the seeds."""
    out: dict[str, Any] = {}
    for name, fn in CLASSES.items():
        per_seed = [fn(steps, seed) for seed in seeds]
        out[name] = {
            "us_per_step": round(float(np.mean(per_seed)), 2),
            "min": round(min(per_seed), 2),
            "max": round(max(per_seed), 2),
        }
    return {"steps": steps, "seeds": list(seeds), "classes": out}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else STEPS
    print(json.dumps(run(n)))
