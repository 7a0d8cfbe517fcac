"""Backtest analysis of ensembles: regret of the logged choices and off-policy estimates.

Trade outcomes with ``arm`` + ``propensity`` are bandit feedback logged by whatever chose the
arm upstream (the logging policy). For each such trade the backtest records the candidate's
probabilities over the same learner's arms just before the trade's batch
(:class:`~processor.replay.backtest.Backtest`): the candidate's own choice at that point,
computed from earlier trades only. From these:

* **logged** — the logged policy's mean reward per trade (bps);
* **IPS / SNIPS / DR** — the candidate's value per trade, ``w = π_candidate(a) / p_logged(a)``;
  DR's reward model is cross-fitted per (learner, arm) on the other half of the trades, shrunk
  towards the arm's mean over learners, and 0 (the IPS term only) for an arm with no trade
  (:func:`processor.replay.ope.group_arm_means`);
* **regret** against the best fixed arm in hindsight per learner, over the arms that learner
  logged at least once (IPS values); arms it never logged are listed, not valued.

A learner is the ensemble, or the (ensemble, horizon) pair in ``family_horizon`` mode.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from processor.replay.ope import (
    arms_with_data,
    cross_fitted_q,
    doubly_robust,
    hindsight,
    ips,
    mean_estimate,
    snips,
    thin,
)

if TYPE_CHECKING:
    from processor.replay.backtest import BacktestResult

logger = logging.getLogger(__name__)


def _index(values: list[str]) -> tuple[list[str], np.ndarray]:
    vocab = sorted(set(values))
    col = {v: i for i, v in enumerate(vocab)}
    return vocab, np.array([col[v] for v in values], dtype=np.int64)


def ensemble_analysis(result: BacktestResult, seed: int = 0) -> dict[str, Any]:
    """Regret and OPE of the candidate on the logged bandit-feedback trades."""
    trades = result.trades
    if not trades:
        return {"trades": 0}
    learners = [t[0] for t in result.trade_targets] or [t[0] for t in trades]
    names, g = _index(learners)
    vocab, arm = _index([t[1] for t in trades])
    n_g, k = len(names), len(vocab)
    prop = np.array([t[2] for t in trades])
    rewards = np.array([t[3] for t in trades])
    means, best = hindsight(g, arm, prop, rewards, n_g, k)
    seen = arms_with_data(g, arm, n_g, k)
    best_val = means[np.arange(n_g), best]
    regret = np.cumsum(best_val[g] - rewards)
    count = np.bincount(g, minlength=n_g)
    sum_r = np.bincount(g, weights=rewards, minlength=n_g)
    out: dict[str, Any] = {
        "trades": len(trades),
        "reward_total_bps": float(rewards.sum()),
        "regret_bps": float(regret[-1]),
    }
    if result.trade_targets:
        out["estimates"] = _estimates(result, g, arm, vocab, prop, rewards, n_g, seed)
    x, rc = thin(regret)
    _, cc = thin(np.cumsum(rewards))
    out["per_ensemble"] = [
        {
            "ensemble_id": names[i],
            "trades": int(count[i]),
            "reward_bps": float(sum_r[i]),
            "best_arm": vocab[int(best[i])],
            "best_arm_value_ips": float(best_val[i]),
            "regret_bps": float(count[i] * best_val[i] - sum_r[i]),
            "arms_without_trades": [vocab[j] for j in np.flatnonzero(~seen[i])],
        }
        for i in range(n_g)
    ]
    out["curves"] = {"x": x, "regret": rc, "reward": cc}
    return out


def _estimates(
    result: BacktestResult,
    g: np.ndarray,
    arm: np.ndarray,
    vocab: list[str],
    prop: np.ndarray,
    rewards: np.ndarray,
    n_g: int,
    seed: int,
) -> dict[str, Any]:
    col = {a: i for i, a in enumerate(vocab)}
    target = np.zeros((len(rewards), len(vocab)))
    for i, (_, dist) in enumerate(result.trade_targets):
        for name, p in dist.items():
            if name in col:
                target[i, col[name]] = p
    tp = target[np.arange(len(rewards)), arm]
    q = cross_fitted_q(g, arm, rewards, n_g, len(vocab))
    q_logged = q[np.arange(len(rewards)), arm]
    q_target = (target * q).sum(axis=1)
    return {
        "logged": mean_estimate(rewards, seed=seed).to_dict(),
        "ips": ips(rewards, tp, prop, seed=seed).to_dict(),
        "snips": snips(rewards, tp, prop, seed=seed).to_dict(),
        "doubly_robust": doubly_robust(rewards, tp, prop, q_logged, q_target, seed=seed).to_dict(),
    }
