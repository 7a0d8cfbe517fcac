"""One row of a :class:`~processor.bandits.exp3ix_keyed.KeyedExp3IX` in plain Python floats.

The object APIs (:class:`~processor.bandits.exp3ix.Exp3IXBandit`,
:class:`~processor.bandits.hedge.Hedge`,
:class:`~processor.bandits.ensemble.EnsembleWeightOptimizer`) handle one event at a time, where a
numpy call on five numbers costs about a microsecond of overhead and the keyed formulas make a few
dozen of them. These functions compute the very same numbers for one row: the same IEEE operations
in the same order (sums in numpy's pairwise order, ``exp`` and ``log`` through numpy, whose SIMD
versions can differ from :mod:`math` in the last bit), so their results are bit-identical to the
keyed arrays' (tested). Probabilities and weights are cached per row until the table changes.

Fixed share (``share > 0``) mixes in the log domain with numpy's ``logaddexp``; its updates go
through the keyed (vectorized) path, as does anything these functions do not cover.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np

from processor.bandits.base import BanditInputError

if TYPE_CHECKING:
    from processor.bandits.exp3ix_keyed import KeyedExp3IX

logger = logging.getLogger(__name__)

_LOG: dict[float, float] = {}


def np_log(x: float) -> float:
    """``np.log`` of one float (cached: the rates take the log of the arm count)."""
    got = _LOG.get(x)
    if got is None:
        got = _LOG[x] = float(np.log(np.float64(x)))
    return got


def pairwise_sum(values: Sequence[float]) -> float:
    """Sum in numpy's order (``np.add.reduce`` of a contiguous row): sequential below 8 values,
    then 8 running sums combined as a tree, blocks of 128 split in halves."""
    return _pairwise(values, 0, len(values))


def _pairwise(a: Sequence[float], lo: int, n: int) -> float:
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r = list(a[lo : lo + 8])
        i = 8
        stop = n - n % 8
        while i < stop:
            for j in range(8):
                r[j] += a[lo + i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for i in range(lo + stop, lo + n):
            res += a[i]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(a, lo, half) + _pairwise(a, lo + half, n - half)


def rate(
    bandit_steps: float,
    full_steps: float,
    n_arms: float,
    eta: float | None,
    eta_max: float,
    share: float,
) -> float:
    """:func:`processor.bandits.expweights.learning_rate` of one row."""
    if eta is not None:
        return float(eta)
    k = max(float(n_arms), 1.0)
    t = bandit_steps + full_steps
    if share <= 0.0:
        cost = 0.0
    else:
        h = -share * math.log(share) - (1.0 - share) * math.log1p(-share)
        cost = share * np_log(k) + h
    complexity = np_log(k) + t * cost
    variance = max(k * bandit_steps + full_steps / 8.0, 1.0 / 8.0)
    out = math.sqrt(complexity / variance)
    return min(out, eta_max) if bandit_steps > 0 else out


class RowView:
    """The arrays of one row as Python values (read once per computation)."""

    __slots__ = ("active", "bandit_steps", "log_prior", "losses", "total_steps")

    def __init__(self, table: KeyedExp3IX, row: int) -> None:
        arr = table._arr
        self.losses: list[float] = arr["loss_estimates"][row].tolist()
        self.log_prior: list[float] = arr["log_prior"][row].tolist()
        self.active: list[bool] = arr["active"][row].tolist()
        self.total_steps = int(arr["total_steps"][row])
        self.bandit_steps = int(arr["bandit_steps"][row])


def next_eta(table: KeyedExp3IX, view: RowView, extra_arms: int = 0) -> float:
    """:meth:`KeyedExp3IX._next_eta` of one row."""
    k = sum(view.active) + extra_arms
    tb = view.bandit_steps
    tf = view.total_steps - tb
    if tb == 0 and tf > 0:  # only full-information rounds so far: the next is one too
        return rate(float(tb), float(tf + 1), k, table.eta, table.eta_max, table.share)
    return rate(float(tb + 1), float(tf), k, table.eta, table.eta_max, table.share)


def weights_of(view: RowView, eta: float) -> list[float]:
    """:func:`processor.bandits.expweights.softmax_weights` of one row (0 for inactive arms)."""
    z = [
        lp - eta * loss if a else -math.inf
        for lp, loss, a in zip(view.log_prior, view.losses, view.active, strict=True)
    ]
    top = max(z)
    e: list[float] = np.exp(np.array([x - top for x in z])).tolist()
    total = pairwise_sum(e)
    return [x / total for x in e]


def mixed(weights: list[float], active: list[bool], uniform_mix: float) -> list[float]:
    """:func:`processor.bandits.expweights.mixed_probabilities` from the row's weights."""
    if uniform_mix <= 0.0:
        return weights
    k = sum(active)
    return [
        (1.0 - uniform_mix) * w + uniform_mix / k if a else 0.0
        for w, a in zip(weights, active, strict=True)
    ]


def _view(table: KeyedExp3IX, row: int) -> RowView:
    """The row's values: the cached ones while the table has not changed, else read anew."""
    got = table._row_cache.get(row)
    if got is not None and got[0] == table._changes:
        view: RowView = got[1]
        return view
    return RowView(table, row)


def row_state(table: KeyedExp3IX, row: int) -> tuple[list[float], list[float]]:
    """``(probabilities, weights)`` of ``row`` over every column (0 for inactive arms), as
    :meth:`KeyedExp3IX.probabilities` / :meth:`KeyedExp3IX.weights` give them; cached until the
    table changes. The lists are shared: do not modify them."""
    cache = table._row_cache
    got = cache.get(row)
    if got is not None and got[0] == table._changes:
        view = got[1]
        if got[2] is not None:
            return got[2], got[3]
    else:
        view = RowView(table, row)
    w = weights_of(view, next_eta(table, view))
    p = mixed(w, view.active, table.uniform_mix)
    if len(cache) > 64:
        cache.clear()
    cache[row] = (table._changes, view, p, w)
    return p, w


def inverse_cdf(probs: Sequence[float], u: float) -> int:
    """:func:`processor.bandits.base.inverse_cdf_select` of one row."""
    if not 0.0 <= u < 1.0:
        msg = "uniforms must be one value in [0, 1) per row"
        raise BanditInputError(msg)
    cdf = list(accumulate(probs))  # numpy's cumsum is sequential too
    x = u * cdf[-1]
    arm = min(sum(c <= x for c in cdf), len(cdf) - 1)
    if probs[arm] <= 0.0:  # rounding left u·total at the very top: the last arm with mass
        arm = max(i for i, p in enumerate(probs) if p > 0.0)
    return arm


def _loss(reward: float, reward_range: tuple[float, float]) -> float:
    lo, hi = reward_range
    x = (hi - reward) / (hi - lo)
    return x if 0.0 <= x <= 1.0 else (0.0 if x < 0.0 else 1.0)


def update_one(table: KeyedExp3IX, row: int, col: int, reward: float, propensity: float) -> None:
    """:meth:`KeyedExp3IX.update` of one event; nothing changes when it raises.

    Raises:
        BanditInputError: as :meth:`KeyedExp3IX.update` does.
    """
    r = float(reward)
    p = float(propensity)
    if not math.isfinite(r):
        msg = "reward must be finite (got NaN or inf)"
        raise BanditInputError(msg)
    if not 0.0 < p <= 1.0:
        msg = "propensity must be in (0, 1]"
        raise BanditInputError(msg)
    if not 0 <= row < table.n_keys:
        msg = "row index out of range"
        raise BanditInputError(msg)
    view = _view(table, row)
    if not view.active[col]:
        msg = "update for an arm that is not active for its key"
        raise BanditInputError(msg)
    if table.share > 0.0:  # fixed share: the keyed path's log-domain mixing
        table.update([row], [col], [r], [p])
        return
    arr = table._arr
    tb = view.bandit_steps
    tf = view.total_steps - tb
    eta = rate(float(tb + 1), float(tf), sum(view.active), table.eta, table.eta_max, table.share)
    gamma = eta / 2.0 if table.gamma is None else table.gamma
    loss = view.losses[col] + _loss(r, table.reward_range) / (p + gamma)
    arr["loss_estimates"][row, col] = loss
    arr["total_steps"][row] = view.total_steps + 1
    arr["bandit_steps"][row] = tb + 1
    rewards, pulls, version = arr["cumulative_rewards"], arr["arm_pulls"], arr["version"]
    rewards[row, col] = rewards.item(row, col) + r
    pulls[row, col] = pulls.item(row, col) + 1
    version[row] = version.item(row) + 1
    table._changes += 1
    # the row's values stay known: the next probabilities need no read of the arrays
    view.losses[col] = loss
    view.total_steps += 1
    view.bandit_steps += 1
    table._row_cache[row] = (table._changes, view, None, None)


def update_full_one(table: KeyedExp3IX, row: int, rewards: Sequence[float]) -> None:
    """:meth:`KeyedExp3IX.update_full` of one round (``rewards`` over every column, NaN = did not
    report); nothing changes when it raises.

    Raises:
        BanditInputError: as :meth:`KeyedExp3IX.update_full` does.
    """
    m = [float(x) for x in rewards]
    if len(m) != len(table._arm_names):
        msg = "rewards_matrix must be (len(rows), n_arms)"
        raise BanditInputError(msg)
    if math.inf in m or -math.inf in m:
        msg = "reward must be finite (NaN marks an arm that did not report)"
        raise BanditInputError(msg)
    if not 0 <= row < table.n_keys:
        msg = "row index out of range"
        raise BanditInputError(msg)
    view = _view(table, row)
    lo, hi = table.reward_range
    span = hi - lo
    loss: list[float] = []
    seen: list[bool] = []
    for x, on in zip(m, view.active, strict=True):
        if on and x == x:  # reported (not NaN) by an active arm
            y = (hi - x) / span  # rewards_to_losses: clip to [0, 1]
            loss.append(y if 0.0 <= y <= 1.0 else (0.0 if y < 0.0 else 1.0))
            seen.append(True)
        else:
            loss.append(0.0)
            seen.append(False)
    n_seen = seen.count(True)
    if n_seen == 0:
        msg = "a full-information round needs a reward of at least one active arm"
        raise BanditInputError(msg)
    if table.share > 0.0:
        table.update_full([row], [m])
        return
    mean = pairwise_sum(loss) / n_seen
    losses = [
        old + (x if s else (mean if on else 0.0))
        for old, x, s, on in zip(view.losses, loss, seen, view.active, strict=True)
    ]
    arr = table._arr
    arr["loss_estimates"][row] = losses
    arr["total_steps"][row] = view.total_steps + 1
    cumulative = arr["cumulative_rewards"]
    cumulative[row] = [
        c + (x if s else 0.0) for c, x, s in zip(cumulative[row].tolist(), m, seen, strict=True)
    ]
    arr["version"][row] = arr["version"].item(row) + 1
    table._changes += 1
    view.losses = losses
    view.total_steps += 1
    table._row_cache[row] = (table._changes, view, None, None)
