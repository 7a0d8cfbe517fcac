"""Coverage of the off-policy estimators' 95% intervals on simulated logs with a known truth.

Each scenario draws logs of ``n`` events: a group (campaign / ensemble learner) per event, the
logged arm from fixed logging probabilities, a reward from the arm's (and group's) distribution.
The target policy's true value per event is known, so the share of logs whose interval contains
it is the coverage. Used by ``tests.perf.bench_ensemble`` (300 logs) and by a unit test (fewer
logs, a looser bound).

``legacy`` re-creates the 0.2 estimators for comparison: 200 resamples, a SNIPS resample without
weight scored 0, and the DR model falling back to the group's mean for an unseen arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from processor.replay.ope import cross_fitted_q, doubly_robust, ips, snips


@dataclass(frozen=True)
class Scenario:
    """One kind of simulated log."""

    name: str
    n: int
    logging: tuple[float, ...]
    target: tuple[float, ...]
    means: tuple[float, ...]
    sd: float | None  # None: Bernoulli rewards
    groups: int = 1
    group_spread: float = 0.0  # group effect: evenly spaced in ±group_spread


SCENARIOS = {
    "mild": Scenario("mild", 2000, (0.4, 0.3, 0.2, 0.1), (0.1, 0.2, 0.3, 0.4), (1, 2, -1, 3), 20),
    "mild_groups": Scenario(
        "mild, 50 groups",
        2000,
        (0.55, 0.25, 0.15, 0.05),
        (0.05, 0.15, 0.3, 0.5),
        (1, 2, 4, 6),
        10,
        groups=50,
        group_spread=2.0,
    ),
    "extreme_bernoulli": Scenario(
        "extreme: target on an arm logged 0.5% of the time, Bernoulli rewards",
        500,
        (0.9, 0.05, 0.03, 0.015, 0.005),
        (0, 0, 0, 0.2, 0.8),
        (0.05, 0.05, 0.05, 0.1, 0.3),
        None,
    ),
    "extreme_level": Scenario(
        "extreme: same logging, rewards 10-20 bps with sd 5",
        500,
        (0.9, 0.05, 0.03, 0.015, 0.005),
        (0, 0, 0, 0.2, 0.8),
        (10, 10, 10, 12, 20),
        5,
    ),
}


def draw_log(sc: Scenario, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``(groups, arms, rewards, truth)`` of one log."""
    p = np.array(sc.logging)
    g = rng.integers(0, sc.groups, sc.n)
    a = rng.choice(p.size, sc.n, p=p)
    offset = np.linspace(-sc.group_spread, sc.group_spread, sc.groups)
    mu = np.array(sc.means, dtype=float)[None, :] + offset[:, None]
    if sc.sd is None:
        r = (rng.random(sc.n) < mu[g, a]).astype(float)
    else:
        r = rng.normal(mu[g, a], sc.sd)
    truth = float((mu * np.array(sc.target)).sum(axis=1).mean())
    return g, a, r, np.array(truth)


def _legacy_snips_interval(r: np.ndarray, w: np.ndarray, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r.size, size=(200, r.size))
    tot = w[idx].sum(axis=1)
    stats = np.where(tot > 0, (w * r)[idx].sum(axis=1) / np.where(tot > 0, tot, 1), 0)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return float(lo), float(hi)


def _legacy_q(g: np.ndarray, a: np.ndarray, r: np.ndarray, n_g: int, k: int) -> np.ndarray:
    fold = np.arange(r.size) % 2
    q = np.empty((r.size, k))
    for f in (0, 1):
        tr = fold != f
        flat = g[tr] * k + a[tr]
        tot = np.bincount(flat, weights=r[tr], minlength=n_g * k).reshape(n_g, k)
        cnt = np.bincount(flat, minlength=n_g * k).reshape(n_g, k)
        gmean = np.bincount(g[tr], weights=r[tr], minlength=n_g) / np.maximum(
            np.bincount(g[tr], minlength=n_g), 1
        )
        table = np.where(cnt > 0, tot / np.maximum(cnt, 1), gmean[:, None])
        q[fold == f] = table[g[fold == f]]
    return q


def coverage(key: str, logs: int, seed: int = 0, legacy: bool = False) -> dict[str, Any]:
    """Coverage, mean interval width, RMSE and dropped resamples of IPS / SNIPS / DR."""
    sc = SCENARIOS[key]
    rng = np.random.default_rng(seed)
    target = np.array(sc.target)
    logging = np.array(sc.logging)
    hits = dict.fromkeys(("ips", "snips", "dr"), 0)
    widths: dict[str, list[float]] = {k: [] for k in hits}
    errors: dict[str, list[float]] = {k: [] for k in hits}
    dropped = 0
    n_boot = 0
    for i in range(logs):
        g, a, r, truth = draw_log(sc, rng)
        tp, lp = target[a], logging[a]
        if legacy:
            q = _legacy_q(g, a, r, sc.groups, target.size)
        else:
            q = cross_fitted_q(g, a, r, sc.groups, target.size)
        ql = q[np.arange(r.size), a]
        qt = (q * target[None, :]).sum(axis=1)
        boots = 200 if legacy else None
        kw = {} if boots is None else {"n_boot": boots}
        est = {
            "ips": ips(r, tp, lp, seed=i, **kw),
            "snips": snips(r, tp, lp, seed=i, **kw),
            "dr": doubly_robust(r, tp, lp, ql, qt, seed=i, **kw),
        }
        intervals = {k: (e.ci_low, e.ci_high) for k, e in est.items()}
        if legacy:
            intervals["snips"] = _legacy_snips_interval(r, tp / lp, seed=i)
        for k, e in est.items():
            lo, hi = intervals[k]
            hits[k] += bool(lo <= truth <= hi)
            widths[k].append(hi - lo)
            if np.isfinite(e.value):
                errors[k].append(e.value - float(truth))
        dropped += est["snips"].boot_dropped
        n_boot = est["snips"].n_boot
    return {
        "scenario": sc.name,
        "logs": logs,
        "events": sc.n,
        "n_boot": 200 if legacy else n_boot,
        "coverage": {k: hits[k] / logs for k in hits},
        "mean_width": {k: float(np.mean(v)) for k, v in widths.items()},
        "rmse": {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items()},
        "snips_dropped_per_log": dropped / logs,
    }
