"""Ensemble weights learned online: Exp3-IX (bandit feedback) or Hedge (full information),
blended with base weights.

Arm names (:func:`arm_name`, the same naming the stream stage uses):

* ``family`` mode — one arm per model family (``"lightgbm"``); one learner per horizon;
* ``horizon`` mode — one arm per horizon (``"15m"``); one learner;
* ``family_horizon`` mode — one arm per pair, ``"family:horizon"`` (``"lightgbm:15m"``); one
  learner per horizon over that horizon's pairs, with its own t, η and γ, so its probabilities
  (and the propensity :meth:`EnsembleWeightOptimizer.select` returns) are normalised within
  the horizon.

Bandit feedback (:meth:`~EnsembleWeightOptimizer.update`) is Exp3-IX; full information
(:meth:`~EnsembleWeightOptimizer.update_full`) is Hedge at the full-information rate, a model
that did not report being charged the mean loss of those that did. Published weights are the
base weights until the learner has absorbed ``warm_start_steps`` rounds, then
``(1 − blend_alpha)·base + blend_alpha·bandit``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from processor.bandits.base import BanditInputError, check_finite
from processor.bandits.exp3ix_scalar import inverse_cdf, row_state, update_full_one, update_one
from processor.bandits.keyed import KeyedExp3IX
from processor.errors import ConfigError

logger = logging.getLogger(__name__)

MODES = ("family", "horizon", "family_horizon")
_ALL = "*"


def arm_name(mode: str, family: str, horizon: str) -> str:
    """Arm name of (family, horizon) in ``mode``: family, horizon or ``"family:horizon"``.

    Example:
        >>> arm_name("family_horizon", "lightgbm", "15m")
        'lightgbm:15m'
    """
    if mode == "family":
        return family
    if mode == "horizon":
        return horizon
    if mode == "family_horizon":
        return f"{family}:{horizon}"
    msg = f"mode must be one of {MODES}, got {mode!r}"
    raise ConfigError(msg)


class EnsembleWeightOptimizer:
    """Blending weights for an ensemble of model families over horizons.

    Args:
        families: Model family names.
        horizons: Horizon names.
        mode: ``family``, ``horizon`` or ``family_horizon``.
        blend_alpha: Share of the bandit weights in the published weights.
        warm_start_steps: Rounds before the bandit weights are used.
        base_weights: Base weight per arm name (default uniform); normalised per horizon.
        gamma: Exp3-IX γ (None: η/2).
        eta: Learning rate (None: anytime schedule).
        eta_max: Cap of the anytime rate of bandit-feedback rounds (Hedge is not capped).
        reward_range: Reward (bps) range mapped to losses in [0, 1].
        uniform_mix: Uniform mixing ε of the selection probabilities.
        seed: Seed of :meth:`select`.
        share: Fixed-share α for a best model that changes over time (0 = off).
    """

    def __init__(
        self,
        families: Sequence[str],
        horizons: Sequence[str],
        mode: str = "family",
        blend_alpha: float = 0.3,
        warm_start_steps: int = 500,
        base_weights: Mapping[str, float] | None = None,
        gamma: float | None = None,
        eta: float | None = None,
        eta_max: float = 0.07,
        reward_range: tuple[float, float] = (-100.0, 100.0),
        uniform_mix: float = 0.0,
        seed: int | None = None,
        share: float = 0.0,
    ) -> None:
        if mode not in MODES:
            msg = f"mode must be one of {MODES}, got {mode!r}"
            raise ConfigError(msg)
        if not families or not horizons:
            msg = "families and horizons must be non-empty"
            raise ConfigError(msg)
        if not 0.0 <= blend_alpha <= 1.0:
            msg = f"blend_alpha must be in [0, 1], got {blend_alpha}"
            raise ConfigError(msg)
        if warm_start_steps < 0:
            msg = f"warm_start_steps must be >= 0, got {warm_start_steps}"
            raise ConfigError(msg)
        self.families = list(families)
        self.horizons = list(horizons)
        self.mode = mode
        self.blend_alpha = float(blend_alpha)
        self.warm_start_steps = int(warm_start_steps)
        if mode == "family":
            arms = list(self.families)
        elif mode == "horizon":
            arms = list(self.horizons)
        else:
            arms = [arm_name(mode, f, h) for f in self.families for h in self.horizons]
        self.bandit = KeyedExp3IX(
            arms,
            gamma=gamma,
            eta=eta,
            eta_max=eta_max,
            reward_range=reward_range,
            uniform_mix=uniform_mix,
            share=share,
        )
        self.base_weights: dict[str, float] = dict.fromkeys(arms, 1.0)
        if base_weights is not None:
            self.set_base_weights(base_weights)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @property
    def arms(self) -> list[str]:
        """All arm names."""
        return self.bandit.arm_names

    def _key(self, horizon: str) -> str:
        if horizon not in self.horizons:
            msg = f"unknown horizon {horizon!r}"
            raise BanditInputError(msg)
        return _ALL if self.mode == "horizon" else horizon

    def _row(self, horizon: str) -> np.ndarray:
        return np.array([self._row_index(horizon)], dtype=np.int64)

    def _row_index(self, horizon: str) -> int:
        """Row of the learner serving ``horizon`` (created on first use)."""
        key = self._key(horizon)
        row = self.bandit.row_of(key)
        if row is not None:
            return row
        rows = self.bandit.rows([key])
        if self.mode == "family_horizon":
            mine = {arm_name(self.mode, f, horizon) for f in self.families}
            self.bandit.set_active(rows, [n in mine for n in self.bandit.arm_names])
        return int(rows[0])

    def _arms_of(self, horizon: str) -> list[str]:
        """Arms whose weights are published for ``horizon``."""
        if self.mode == "family_horizon":
            return [arm_name(self.mode, f, horizon) for f in self.families]
        return self.arms

    def _resolve(self, name: str, horizon: str) -> str:
        if name in self.bandit.arm_names:
            return name
        if self.mode == "family_horizon" and name in self.families:
            return arm_name(self.mode, name, horizon)
        msg = f"unknown arm or model {name!r}"
        raise BanditInputError(msg)

    def set_base_weights(self, weights: Mapping[str, float]) -> None:
        """Replace base weights (arm name → weight ≥ 0; arms not named keep theirs)."""
        for name, w in weights.items():
            if name not in self.base_weights:
                msg = f"base_weights: unknown arm {name!r}"
                raise ConfigError(msg)
            if not (math.isfinite(w) and w >= 0.0):
                msg = f"base_weights: weight of {name!r} must be finite and >= 0, got {w}"
                raise ConfigError(msg)
        self.base_weights.update({k: float(v) for k, v in weights.items()})

    def total_steps(self, horizon: str) -> int:
        """Rounds absorbed by the learner serving ``horizon``."""
        return int(self.bandit._arr["total_steps"][self._row_index(horizon)])

    def _restricted(self, values: np.ndarray, horizon: str) -> dict[str, float]:
        names = self._arms_of(horizon)
        cols = [self.bandit.column(n) for n in names]
        v = values[cols]
        total = float(v.sum())
        share = v / total if total > 0.0 else np.full(len(cols), 1.0 / len(cols))
        return dict(zip(names, share.tolist(), strict=True))

    def get_bandit_weights(self, horizon: str) -> dict[str, float]:
        """Learned weights softmax(−η L̃) of ``horizon``'s arms (sum 1)."""
        _, w = row_state(self.bandit, self._row_index(horizon))
        return self._restricted(np.array(w), horizon)

    def get_probabilities(self, horizon: str) -> dict[str, float]:
        """Selection probabilities of ``horizon``'s arms (sum 1)."""
        p, _ = row_state(self.bandit, self._row_index(horizon))
        return self._restricted(np.array(p), horizon)

    def get_base_weights(self, horizon: str) -> dict[str, float]:
        """Base weights of ``horizon``'s arms, normalised."""
        base = np.array([self.base_weights[a] for a in self.arms])
        return self._restricted(base, horizon)

    def get_blending_weights(self, horizon: str) -> dict[str, float]:
        """Published weights: base before warm start, then (1 − α)·base + α·bandit (sum 1)."""
        base = self.get_base_weights(horizon)
        if self.total_steps(horizon) < self.warm_start_steps:
            return base
        bandit = self.get_bandit_weights(horizon)
        a = self.blend_alpha
        return {k: (1.0 - a) * base[k] + a * bandit[k] for k in base}

    def select(self, horizon: str) -> tuple[str, float]:
        """Draw an arm for ``horizon`` with its propensity (log it with the trade): the
        probability with which it was drawn, within the horizon's learner."""
        p, _ = row_state(self.bandit, self._row_index(horizon))
        col = inverse_cdf(p, self._rng.random())
        return self.bandit._arm_names[col], p[col]

    def update(
        self, family: str, horizon: str, reward: float, propensity: float | None = None
    ) -> None:
        """Bandit feedback (Exp3-IX): the played arm's reward in bps and its decision-time
        propensity (default: the current probability — only correct if nothing changed)."""
        name = arm_name(self.mode, family, horizon)
        row = self._row_index(horizon)
        col = self.bandit.column(name)
        p = row_state(self.bandit, row)[0][col] if propensity is None else propensity
        update_one(self.bandit, row, col, reward, p)

    def update_full(self, horizon: str, model_rewards: Mapping[str, float]) -> None:
        """Full information (Hedge): each model's own reward this round (absent = unobserved).

        Keys are arm names, or family names in ``family_horizon`` mode.
        """
        self._key(horizon)
        values = [math.nan] * len(self.bandit.arm_names)
        for name, value in model_rewards.items():
            reward = float(value)
            if not math.isfinite(reward):
                msg = "reward must be finite (got NaN or inf)"
                raise BanditInputError(msg)
            values[self.bandit.column(self._resolve(name, horizon))] = reward
        # the learner is created once the round is known to be valid
        update_full_one(self.bandit, self._row_index(horizon), values)

    def update_contributions(
        self, horizon: str, reward: float, contributions: Mapping[str, float]
    ) -> None:
        """Attribution heuristic from the original design: each contributing model is
        charged ``reward × contribution`` as if that were its own reward (a Hedge round).

        It is not an unbiased estimate of any model's reward — prefer :meth:`update` or
        :meth:`update_full` when the data allow.
        """
        r = float(check_finite("reward", reward))
        self.update_full(horizon, {k: r * float(c) for k, c in contributions.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (config, base weights, learner state)."""
        return {
            "families": self.families,
            "horizons": self.horizons,
            "mode": self.mode,
            "blend_alpha": self.blend_alpha,
            "warm_start_steps": self.warm_start_steps,
            "base_weights": dict(self.base_weights),
            "bandit": self.bandit.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], seed: int | None = None) -> EnsembleWeightOptimizer:
        """Exact inverse of :meth:`to_dict`."""
        b = d["bandit"]
        obj = cls(
            d["families"],
            d["horizons"],
            mode=d["mode"],
            blend_alpha=d["blend_alpha"],
            warm_start_steps=d["warm_start_steps"],
            base_weights=d["base_weights"],
            gamma=b["gamma"],
            eta=b["eta"],
            eta_max=b["eta_max"],
            reward_range=tuple(b["reward_range"]),
            uniform_mix=b["uniform_mix"],
            seed=seed,
            share=b.get("share", 0.0),
        )
        bandit = KeyedExp3IX.from_dict(b)
        if obj.mode == "family_horizon" and _ALL in bandit.keys:
            bandit = _split_family_horizon(bandit, obj.horizons)
        obj.bandit = bandit
        return obj


def _split_family_horizon(old: KeyedExp3IX, horizons: Sequence[str]) -> KeyedExp3IX:
    """A 0.2 ``family_horizon`` learner (one row ``*`` over every pair) as one row per horizon.

    Each horizon keeps its pairs' loss estimates, pulls and rewards; its bandit rounds are its
    pulls and the other rounds of the shared row are split evenly (0.2 did not count them per
    horizon). Rows of horizons not in ``horizons`` are dropped.
    """
    new = KeyedExp3IX.from_dict({**old.to_dict(), "keys": [], "arrays": {}})
    row = old.row_of(_ALL)
    assert row is not None
    state = old.get_key_state(_ALL)
    names = state["arm_names"]
    full = state["total_steps"] - state["bandit_steps"]
    share, extra = divmod(full, len(horizons))
    for j, h in enumerate(horizons):
        idx = [i for i, n in enumerate(names) if n.rpartition(":")[2] == h]
        if not idx:
            continue
        pulls = [state["arm_pulls"][i] for i in idx]
        sub = {
            "arm_names": [names[i] for i in idx],
            "loss_estimates": [state["loss_estimates"][i] for i in idx],
            "arm_pulls": pulls,
            "cumulative_rewards": [state["cumulative_rewards"][i] for i in idx],
            "bandit_steps": sum(pulls),
            "total_steps": sum(pulls) + share + (1 if j < extra else 0),
            "version": state["version"],
        }
        new.set_key_state(h, sub)
    return new
