"""Off-policy evaluation of a candidate policy on logged bandit data.

Estimators (numpy arrays in, :class:`Estimate` out; one entry per logged event):

* **IPS** — mean of ``w·r`` with ``w = π_target(a) / π_logging(a)``. Unbiased whenever the
  logging propensities are the true ones, including adaptive logging (a learning logger): each
  term has conditional mean equal to the target's value given the past, so the average is a
  martingale estimate.
* **SNIPS** — ``Σ w·r / Σ w``; a ratio estimator, biased by O(1/n) but with much lower variance.
* **Doubly robust** — ``q_target + w·(r − q_logged)`` with a reward model ``q``; unbiased if either
  the propensities or the model are right (the model must not be fitted on the event it corrects:
  :func:`evaluate_bidding` cross-fits it on two folds).
* **Replay** (rejection sampling, Li et al. 2011) — the mean reward of the events on which a
  learning candidate, updated only on kept events, chose the logged arm. It is unbiased for
  uniformly random logging; under a non-uniform logger it over-represents the logger's favourite
  arms, which the report says next to the number.

Every estimate carries a percentile bootstrap confidence interval (fixed seed, resampling events)
and the effective sample size ``(Σw)² / Σw²`` (the kept count for replay). The bootstrap treats
events as exchangeable, which adaptive logs are not exactly; read the interval as indicative.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.errors import ProcessorError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

N_BOOT = 200
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate with a bootstrap interval and its effective sample size."""

    value: float
    ci_low: float
    ci_high: float
    ess: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN becomes ``None``)."""
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


_EMPTY = Estimate(float("nan"), float("nan"), float("nan"), 0.0, 0)


def _arrays(*arrays: Any) -> list[F64]:
    out = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    if len({a.size for a in out}) > 1:
        msg = f"OPE inputs must have equal lengths, got {[a.size for a in out]}"
        raise ProcessorError(msg)
    return out


def _weights(target: F64, logging: F64) -> F64:
    if np.any(~np.isfinite(logging) | (logging <= 0) | (logging > 1)):
        msg = "logging propensities must be in (0, 1]"
        raise ProcessorError(msg)
    if np.any(~np.isfinite(target) | (target < 0) | (target > 1)):
        msg = "target propensities must be in [0, 1]"
        raise ProcessorError(msg)
    return target / logging


def ess(weights: F64) -> float:
    """Effective sample size ``(Σw)² / Σw²`` of importance weights."""
    w = np.asarray(weights, dtype=np.float64)
    denom = float(np.dot(w, w))
    return float(w.sum() ** 2 / denom) if denom > 0 else 0.0


def bootstrap(
    terms: F64,
    weights: F64 | None = None,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(terms)`` (or ``Σterms / Σweights``)."""
    n = terms.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        if weights is None:
            stats[start:stop] = terms[idx].mean(axis=1)
        else:
            w = weights[idx].sum(axis=1)
            stats[start:stop] = np.where(w > 0, terms[idx].sum(axis=1) / np.where(w > 0, w, 1), 0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def ips(
    rewards: Any, target_propensity: Any, logging_propensity: Any, *, seed: int = 0
) -> Estimate:
    """Inverse propensity scoring estimate of the target policy's mean reward per event."""
    r, t, lp = _arrays(rewards, target_propensity, logging_propensity)
    if r.size == 0:
        return _EMPTY
    w = _weights(t, lp)
    terms = w * r
    lo, hi = bootstrap(terms, seed=seed)
    return Estimate(float(terms.mean()), lo, hi, ess(w), int(r.size))


def snips(
    rewards: Any, target_propensity: Any, logging_propensity: Any, *, seed: int = 0
) -> Estimate:
    """Self-normalized IPS: ``Σ w·r / Σ w``."""
    r, t, lp = _arrays(rewards, target_propensity, logging_propensity)
    if r.size == 0:
        return _EMPTY
    w = _weights(t, lp)
    total = float(w.sum())
    value = float(np.dot(w, r) / total) if total > 0 else float("nan")
    lo, hi = bootstrap(w * r, w, seed=seed)
    return Estimate(value, lo, hi, ess(w), int(r.size))


def doubly_robust(
    rewards: Any,
    target_propensity: Any,
    logging_propensity: Any,
    q_logged: Any,
    q_target: Any,
    *,
    seed: int = 0,
) -> Estimate:
    """Doubly robust estimate: ``mean(q_target + w·(r − q_logged))``.

    Args:
        rewards: Logged reward per event.
        target_propensity: Target policy's probability of the logged arm.
        logging_propensity: Logging policy's probability of the logged arm.
        q_logged: Reward model's prediction for the logged arm.
        q_target: Reward model's expectation under the target policy, ``Σ_a π(a) q(a)``.
        seed: Bootstrap seed.
    """
    r, t, lp, ql, qt = _arrays(rewards, target_propensity, logging_propensity, q_logged, q_target)
    if r.size == 0:
        return _EMPTY
    w = _weights(t, lp)
    terms = qt + w * (r - ql)
    lo, hi = bootstrap(terms, seed=seed)
    return Estimate(float(terms.mean()), lo, hi, ess(w), int(r.size))


def mean_estimate(rewards: Any, *, seed: int = 0) -> Estimate:
    """Plain mean with a bootstrap interval (the logged policy's own value, or replay's kept)."""
    (r,) = _arrays(rewards)
    if r.size == 0:
        return _EMPTY
    lo, hi = bootstrap(r, seed=seed)
    return Estimate(float(r.mean()), lo, hi, float(r.size), int(r.size))


def group_arm_means(groups: I64, arms: I64, rewards: F64, n_groups: int, n_arms: int) -> F64:
    """Mean logged reward per (group, arm); an unseen pair falls back to its group's mean."""
    flat = groups * n_arms + arms
    size = n_groups * n_arms
    total = np.bincount(flat, weights=rewards, minlength=size).reshape(n_groups, n_arms)
    count = np.bincount(flat, minlength=size).reshape(n_groups, n_arms)
    gmean = np.bincount(groups, weights=rewards, minlength=n_groups) / np.maximum(
        np.bincount(groups, minlength=n_groups), 1
    )
    return np.where(count > 0, total / np.maximum(count, 1), gmean[:, None])


def hindsight(
    groups: I64, arms: I64, propensity: F64, rewards: F64, n_groups: int, n_arms: int
) -> tuple[F64, I64]:
    """IPS estimate of every fixed arm's mean reward per group, and each group's best arm.

    With logged bandit data only the played arm's reward is seen; ``Σ 1[a_i = a]·r_i / p_i / n``
    is the unbiased estimate of what always playing ``a`` would have earned per event.
    """
    flat = groups * n_arms + arms
    size = n_groups * n_arms
    total = np.bincount(flat, weights=rewards / propensity, minlength=size)
    n = np.maximum(np.bincount(groups, minlength=n_groups), 1)
    means = total.reshape(n_groups, n_arms) / n[:, None]
    return means, np.asarray(np.argmax(means, axis=1), dtype=np.int64)


def thin(values: F64, points: int = 400) -> tuple[list[int], list[float]]:
    """At most ``points`` evenly spaced (index, value) pairs of a curve, for plots."""
    n = values.size
    if n == 0:
        return [], []
    idx = np.unique(np.linspace(0, n - 1, min(points, n)).astype(np.int64))
    return (idx + 1).tolist(), values[idx].tolist()
