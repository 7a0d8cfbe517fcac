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

Every estimate carries a percentile bootstrap confidence interval (fixed seed, 2,000 resamples
of the events) and the effective sample size ``(Σw)² / Σw²`` (the kept count for replay). A
resample in which a ratio estimator is undefined (SNIPS with no weight: no event of an arm the
target plays) is dropped, not scored 0, and the estimate reports how many were
(``boot_dropped``); scoring them 0 pulled intervals towards 0 (coverage 0.70 in an extreme
case). Above 4,096 events the bootstrap resamples the sums of a fixed random partition of the
events into 4,096 blocks instead of single events: the blocks are i.i.d. when the events are,
their bootstrap is the ordinary bootstrap of a sample of 4,096, and the distribution of the mean
(all its cumulants) is the same — it costs 2,000 × 4,096 draws whatever n is. The bootstrap
treats events as exchangeable, which adaptive logs are not exactly; read the interval as
indicative.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.errors import ProcessorError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

N_BOOT = 2000
LEVEL = 0.95
BLOCKS = 4096
_CHUNK = 4_000_000  # resampled indices per chunk (32 MB)


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate with a bootstrap interval and its effective sample size.

    ``boot_dropped`` of the ``n_boot`` resamples were degenerate (the estimator undefined on
    them) and are not in the interval.
    """

    value: float
    ci_low: float
    ci_high: float
    ess: float
    n: int
    boot_dropped: int = 0
    n_boot: int = 0

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


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval and how many resamples were dropped as degenerate."""

    low: float
    high: float
    dropped: int
    n_boot: int


def bootstrap(
    terms: F64,
    weights: F64 | None = None,
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
    blocks: int = BLOCKS,
) -> Interval:
    """Percentile bootstrap interval of ``mean(terms)`` (or of ``Σ terms / Σ weights``).

    Resamples whose ``Σ weights`` is 0 (the ratio is undefined) are dropped and counted. Above
    ``blocks`` events the sums of a fixed random partition into ``blocks`` blocks are resampled
    (module docstring). Vectorized: ``n_boot × min(n, blocks)`` draws in chunks.
    """
    n = terms.size
    if n == 0 or n_boot == 0:
        return Interval(float("nan"), float("nan"), 0, n_boot)
    rng = np.random.default_rng(seed)
    num = np.asarray(terms, dtype=np.float64)
    den = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if n > blocks:
        block = rng.permutation(n) % blocks
        num = np.bincount(block, weights=num, minlength=blocks).astype(np.float64)
        den = np.bincount(block, weights=den, minlength=blocks).astype(np.float64)
    m = num.size
    stats = np.empty(n_boot)
    keep = np.empty(n_boot, dtype=bool)
    chunk = max(1, min(n_boot, _CHUNK // m))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, m, size=(stop - start, m))
        top = num.take(idx).sum(axis=1)
        bottom = den.take(idx).sum(axis=1)
        ok = bottom > 0
        keep[start:stop] = ok
        stats[start:stop] = np.where(ok, top / np.where(ok, bottom, 1.0), np.nan)
    dropped = int(n_boot - keep.sum())
    if dropped == n_boot:
        return Interval(float("nan"), float("nan"), dropped, n_boot)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats[keep], [alpha, 1.0 - alpha])
    return Interval(float(lo), float(hi), dropped, n_boot)


def _estimate(value: float, iv: Interval, w: F64, n: int) -> Estimate:
    return Estimate(value, iv.low, iv.high, ess(w), n, iv.dropped, iv.n_boot)


def ips(
    rewards: Any,
    target_propensity: Any,
    logging_propensity: Any,
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> Estimate:
    """Inverse propensity scoring estimate of the target policy's mean reward per event."""
    r, t, lp = _arrays(rewards, target_propensity, logging_propensity)
    if r.size == 0:
        return _EMPTY
    w = _weights(t, lp)
    terms = w * r
    iv = bootstrap(terms, seed=seed, n_boot=n_boot)
    return _estimate(float(terms.mean()), iv, w, int(r.size))


def snips(
    rewards: Any,
    target_propensity: Any,
    logging_propensity: Any,
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> Estimate:
    """Self-normalized IPS: ``Σ w·r / Σ w``."""
    r, t, lp = _arrays(rewards, target_propensity, logging_propensity)
    if r.size == 0:
        return _EMPTY
    w = _weights(t, lp)
    total = float(w.sum())
    value = float(np.dot(w, r) / total) if total > 0 else float("nan")
    return _estimate(value, bootstrap(w * r, w, seed=seed, n_boot=n_boot), w, int(r.size))


def doubly_robust(
    rewards: Any,
    target_propensity: Any,
    logging_propensity: Any,
    q_logged: Any,
    q_target: Any,
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> Estimate:
    """Doubly robust estimate: ``mean(q_target + w·(r − q_logged))``.

    Args:
        rewards: Logged reward per event.
        target_propensity: Target policy's probability of the logged arm.
        logging_propensity: Logging policy's probability of the logged arm.
        q_logged: Reward model's prediction for the logged arm.
        q_target: Reward model's expectation under the target policy, ``Σ_a π(a) q(a)``.
        seed: Bootstrap seed.
        n_boot: Bootstrap resamples (0: no interval).
    """
    r, t, lp, ql, qt = _arrays(rewards, target_propensity, logging_propensity, q_logged, q_target)
    if r.size == 0:
        return _EMPTY
    w = _weights(t, lp)
    terms = qt + w * (r - ql)
    iv = bootstrap(terms, seed=seed, n_boot=n_boot)
    return _estimate(float(terms.mean()), iv, w, int(r.size))


def mean_estimate(rewards: Any, *, seed: int = 0) -> Estimate:
    """Plain mean with a bootstrap interval (the logged policy's own value, or replay's kept)."""
    (r,) = _arrays(rewards)
    if r.size == 0:
        return _EMPTY
    iv = bootstrap(r, seed=seed)
    return Estimate(float(r.mean()), iv.low, iv.high, float(r.size), int(r.size), 0, iv.n_boot)


SHRINK = 5.0


def group_arm_means(
    groups: I64, arms: I64, rewards: F64, n_groups: int, n_arms: int, shrink: float = SHRINK
) -> F64:
    """Reward model per (group, arm) for doubly robust estimates: shrunken cell means.

    ``q(g, a) = (Σ r + κ·m_a) / (n_ga + κ)`` with ``m_a`` the arm's mean over every group
    (κ = ``shrink`` pseudo-events): a cell with few events borrows from the arm's other groups
    (in simulated logs of 50 groups this cut the DR error by a quarter, coverage unchanged). An
    arm with no event at all gets ``q = 0``, so for that arm the DR estimate is its IPS term
    alone: with no data the model knows nothing, and a guessed value (0.2 used the group's mean
    of the other arms) is a constant the event bootstrap cannot vary, so intervals were too
    narrow exactly where the target leans on that arm.
    """
    flat = groups * n_arms + arms
    size = n_groups * n_arms
    total = np.bincount(flat, weights=rewards, minlength=size).reshape(n_groups, n_arms)
    count = np.bincount(flat, minlength=size).reshape(n_groups, n_arms).astype(np.float64)
    arm_n = count.sum(axis=0)
    arm_mean = np.where(arm_n > 0, total.sum(axis=0) / np.maximum(arm_n, 1.0), 0.0)
    q = (total + shrink * arm_mean[None, :]) / np.maximum(count + shrink, 1e-300)
    return np.asarray(np.where(arm_n[None, :] > 0, q, 0.0), dtype=np.float64)


def cross_fitted_q(
    groups: I64, arms: I64, rewards: F64, n_groups: int, n_arms: int, folds: int = 2
) -> F64:
    """(n, K) reward model for each event from the *other* folds' data (events by index mod
    ``folds``), so no event's own reward enters the model that corrects it."""
    fold = np.arange(rewards.size) % folds
    q = np.empty((rewards.size, n_arms))
    for f in range(folds):
        train = fold != f
        table = group_arm_means(groups[train], arms[train], rewards[train], n_groups, n_arms)
        q[fold == f] = table[groups[fold == f]]
    return q


def arms_with_data(groups: I64, arms: I64, n_groups: int, n_arms: int) -> npt.NDArray[np.bool_]:
    """(G, K) True where the group logged the arm at least once."""
    flat = groups * n_arms + arms
    return np.bincount(flat, minlength=n_groups * n_arms).reshape(n_groups, n_arms) > 0


def hindsight(
    groups: I64, arms: I64, propensity: F64, rewards: F64, n_groups: int, n_arms: int
) -> tuple[F64, I64]:
    """IPS estimate of every fixed arm's mean reward per group, and each group's best arm.

    With logged bandit data only the played arm's reward is seen; ``Σ 1[a_i = a]·r_i / p_i / n``
    is the unbiased estimate of what always playing ``a`` would have earned per event. An arm a
    group never logged has no estimate (NaN; see :func:`arms_with_data`) and is never its best
    arm — 0.2 valued it at 0, so with all-negative rewards an unplayed arm was called best.
    """
    flat = groups * n_arms + arms
    size = n_groups * n_arms
    total = np.bincount(flat, weights=rewards / propensity, minlength=size)
    n = np.maximum(np.bincount(groups, minlength=n_groups), 1)
    seen = arms_with_data(groups, arms, n_groups, n_arms)
    means = np.where(seen, total.reshape(n_groups, n_arms) / n[:, None], np.nan)
    best = np.argmax(np.where(seen, means, -np.inf), axis=1)
    return means, np.asarray(best, dtype=np.int64)


def thin(values: F64, points: int = 400) -> tuple[list[int], list[float]]:
    """At most ``points`` evenly spaced (index, value) pairs of a curve, for plots."""
    n = values.size
    if n == 0:
        return [], []
    idx = np.unique(np.linspace(0, n - 1, min(points, n)).astype(np.int64))
    return (idx + 1).tolist(), values[idx].tolist()
