"""Exp3-IX (Neu 2015) in the log domain: the keyed arrays (one row per key).

State is the cumulative loss estimate L̃ per arm; probabilities are
``(1 − ε)·softmax(−η_t L̃) + ε/K`` and an event with reward r, arm a and decision-time
propensity p adds ``ℓ / (p + γ_t)`` to ``L̃_a`` with ``ℓ = clip((hi − r)/(hi − lo), 0, 1)``.
No raw exponentiated weight is stored, so no reward can overflow anything. The same state
serves Hedge (full information, :meth:`KeyedExp3IX.update_full`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from processor.bandits.base import (
    BanditInputError,
    FloatArray,
    IntArray,
    KeyTable,
    average_weight_loss,
    check_finite,
    eta_schedule,
    index_arrays,
    inverse_cdf_select,
    mixed_probabilities,
    ranks_within_groups,
    rewards_to_losses,
    softmax_weights,
)
from processor.errors import ConfigError, StateError

logger = logging.getLogger(__name__)


def _check_config(
    gamma: float | None,
    eta: float | None,
    eta_max: float,
    reward_range: tuple[float, float],
    uniform_mix: float,
) -> None:
    if gamma is not None and not (math.isfinite(gamma) and gamma >= 0.0):
        msg = f"gamma must be None or a finite number >= 0, got {gamma}"
        raise ConfigError(msg)
    if eta is not None and not (math.isfinite(eta) and eta > 0.0):
        msg = f"eta must be None or a positive finite number, got {eta}"
        raise ConfigError(msg)
    if not (math.isfinite(eta_max) and eta_max > 0.0):
        msg = f"eta_max must be a positive finite number, got {eta_max}"
        raise ConfigError(msg)
    lo, hi = reward_range
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        msg = f"reward_range must be finite (lo, hi) with lo < hi, got {reward_range}"
        raise ConfigError(msg)
    if not 0.0 <= uniform_mix < 1.0:
        msg = f"uniform_mix must be in [0, 1), got {uniform_mix}"
        raise ConfigError(msg)


class KeyedExp3IX(KeyTable):
    """Exp3-IX (bandit feedback) and Hedge (full information) state for many keys, log domain.

    Args:
        arm_names: Global column order of the arms.
        gamma: Fixed implicit-exploration γ, or None for γ_t = η_t / 2.
        eta: Fixed learning rate, or None for η_t = min(eta_max, sqrt(ln K / (K t))).
        eta_max: Cap of the anytime learning rate.
        reward_range: (lo, hi) mapping rewards to losses in [0, 1].
        uniform_mix: ε of uniform mixing (keeps propensities positive for off-policy use).
        capacity: Initial number of rows.
    """

    _fields: ClassVar[dict[str, tuple[Any, bool, float]]] = {
        "loss_estimates": (np.float64, True, 0.0),
        "total_steps": (np.int64, False, 0),
        "arm_pulls": (np.int64, True, 0),
        "cumulative_rewards": (np.float64, True, 0.0),
    }

    def __init__(
        self,
        arm_names: Sequence[str],
        *,
        gamma: float | None = None,
        eta: float | None = None,
        eta_max: float = 0.07,
        reward_range: tuple[float, float] = (-100.0, 100.0),
        uniform_mix: float = 0.0,
        capacity: int = 256,
    ) -> None:
        rr = (float(reward_range[0]), float(reward_range[1]))
        _check_config(gamma, eta, eta_max, rr, uniform_mix)
        super().__init__(arm_names, capacity)
        self.gamma = None if gamma is None else float(gamma)
        self.eta = None if eta is None else float(eta)
        self.eta_max = float(eta_max)
        self.reward_range = rr
        self.uniform_mix = float(uniform_mix)

    @property
    def loss_estimates(self) -> FloatArray:
        """(n_keys, K) cumulative loss estimates L̃."""
        return self._arr["loss_estimates"][: self.n_keys]

    @property
    def total_steps(self) -> IntArray:
        """(n_keys,) rounds absorbed (t)."""
        return self._arr["total_steps"][: self.n_keys]

    @property
    def arm_pulls(self) -> IntArray:
        """(n_keys, K) bandit-feedback events per arm."""
        return self._arr["arm_pulls"][: self.n_keys]

    @property
    def cumulative_rewards(self) -> FloatArray:
        """(n_keys, K) sum of observed rewards per arm."""
        return self._arr["cumulative_rewards"][: self.n_keys]

    def eta_at(self, t: ArrayLike, n_arms: ArrayLike | None = None) -> FloatArray:
        """η_t: fixed eta, or min(eta_max, sqrt(ln K / (K t))) with t ≥ 1.

        ``n_arms`` defaults to the number of arms active by default.
        """
        k = int(self._default_active.sum()) if n_arms is None else n_arms
        return eta_schedule(t, k, self.eta, self.eta_max)

    def _gamma_from_eta(self, eta: FloatArray) -> FloatArray:
        if self.gamma is None:
            return eta / 2.0
        return np.full(eta.shape, self.gamma)

    def _next_eta(self, rows: IntArray, extra_arms: int = 0) -> FloatArray:
        """η of the next decision of each row (t = total_steps + 1, K = its active arms)."""
        k = self._arr["active"][rows].sum(axis=1) + extra_arms
        return eta_schedule(self._arr["total_steps"][rows] + 1, k, self.eta, self.eta_max)

    def probabilities(self, rows: ArrayLike) -> FloatArray:
        """(n, K) ``(1 − ε)·softmax(−η_t L̃) + ε/K_active``; inactive arms 0; rows sum to 1."""
        r = np.asarray(rows, dtype=np.int64)
        return mixed_probabilities(
            self._arr["loss_estimates"][r],
            self._next_eta(r),
            self._arr["active"][r],
            self.uniform_mix,
        )

    def weights(self, rows: ArrayLike) -> FloatArray:
        """(n, K) normalised exponential weights ``softmax(−η_t L̃)`` (no uniform mixing)."""
        r = np.asarray(rows, dtype=np.int64)
        return softmax_weights(
            self._arr["loss_estimates"][r], self._next_eta(r), self._arr["active"][r]
        )

    def select(self, rows: ArrayLike, uniforms: ArrayLike) -> tuple[IntArray, FloatArray]:
        """(arm, propensity) per row by inverse CDF with one uniform in [0, 1) each."""
        r = np.asarray(rows, dtype=np.int64)
        probs = self.probabilities(r)
        arms = inverse_cdf_select(probs, uniforms)
        return arms, probs[np.arange(r.size), arms]

    def update(
        self, rows: ArrayLike, arms: ArrayLike, rewards: ArrayLike, propensities: ArrayLike
    ) -> None:
        """Bandit-feedback batch, applied in order: ``L̃[row, arm] += ℓ / (p + γ_t)``.

        Events of one key get successive t; the result equals one-by-one application exactly.

        Raises:
            BanditInputError: NaN/inf reward, propensity outside (0, 1], bad or inactive arm;
                raised before anything changes.
        """
        r, a = index_arrays(self, rows, arms)
        rew = check_finite("reward", rewards)
        p = np.asarray(propensities, dtype=np.float64)
        if rew.shape != r.shape or p.shape != r.shape:
            msg = "rewards and propensities need one value per event"
            raise BanditInputError(msg)
        if not np.all((p > 0.0) & (p <= 1.0)):
            msg = "propensity must be in (0, 1]"
            raise BanditInputError(msg)
        act = self._arr["active"]
        if not np.all(act[r, a]):
            msg = "update for an arm that is not active for its key"
            raise BanditInputError(msg)
        t = self._arr["total_steps"][r] + ranks_within_groups(r) + 1
        eta = eta_schedule(t, act[r].sum(axis=1), self.eta, self.eta_max)
        est = rewards_to_losses(rew, self.reward_range) / (p + self._gamma_from_eta(eta))
        np.add.at(self._arr["loss_estimates"], (r, a), est)
        np.add.at(self._arr["cumulative_rewards"], (r, a), rew)
        np.add.at(self._arr["arm_pulls"], (r, a), 1)
        np.add.at(self._arr["total_steps"], r, 1)
        np.add.at(self._arr["version"], r, 1)

    def update_full(self, rows: ArrayLike, rewards_matrix: ArrayLike) -> None:
        """Hedge: each row of ``rewards_matrix`` (n, K) is every arm's reward this round.

        NaN means the arm was not observed (no loss added); ``L̃ += ℓ`` without importance
        weighting; t += 1 per round.

        Raises:
            BanditInputError: ±inf rewards, wrong shape or rows out of range.
        """
        r = np.asarray(rows, dtype=np.int64)
        m = np.asarray(rewards_matrix, dtype=np.float64)
        if r.ndim != 1 or m.shape != (r.size, len(self._arm_names)):
            msg = "rewards_matrix must be (len(rows), n_arms)"
            raise BanditInputError(msg)
        if np.any(np.isinf(m)):
            msg = "reward must be finite (NaN marks an unobserved arm)"
            raise BanditInputError(msg)
        if r.size and (r.min() < 0 or r.max() >= self.n_keys):
            msg = "row index out of range"
            raise BanditInputError(msg)
        seen = ~np.isnan(m) & self._arr["active"][r]
        loss = np.where(seen, rewards_to_losses(np.where(seen, m, 0.0), self.reward_range), 0.0)
        np.add.at(self._arr["loss_estimates"], r, loss)
        np.add.at(self._arr["cumulative_rewards"], r, np.where(seen, m, 0.0))
        np.add.at(self._arr["total_steps"], r, 1)
        np.add.at(self._arr["version"], r, 1)

    def add_arm(self, name: str, key: str | None = None) -> int:
        """Enable ``name`` at the average weight: its probability is exactly 1/(K+1) right after.

        Raises:
            StateError: if the arm is already active wherever it was to be added.
        """
        col = self._col.get(name)
        if col is None:
            col = self._add_column(name)
        rows = self._target_rows(key)
        act = self._arr["active"]
        fresh = rows[~act[rows, col]]
        if fresh.size == 0 and (key is not None or self._default_active[col]):
            msg = f"arm {name!r} is already active"
            raise StateError(msg)
        if key is None:
            self._default_active[col] = True
        if fresh.size:
            # η of the next decision once the arm is in (K + 1 arms), so 1/(K+1) is exact then.
            eta = self._next_eta(fresh, extra_arms=1)
            new_loss = average_weight_loss(self._arr["loss_estimates"][fresh], eta, act[fresh])
            self._arr["loss_estimates"][fresh, col] = new_loss
            self._arr["arm_pulls"][fresh, col] = 0
            self._arr["cumulative_rewards"][fresh, col] = 0.0
            act[fresh, col] = True
        return col

    def remove_arm(self, name: str, key: str | None = None) -> None:
        """Disable ``name`` for ``key`` (or all keys); at least one active arm must remain."""
        self._deactivate(name, key)

    def reset_key(self, key: str) -> None:
        """Back to zero losses with the default arms (creates the key if needed)."""
        self._init_rows(np.array([self._row_or_create(key)], dtype=np.int64))

    def set_warm_start(self, key: str, prior_weights: Mapping[str, float]) -> None:
        """Start ``key`` from prior weights π: ``L̃_i = −ln(π_i)/η`` (π normalised).

        The next decision's probabilities are then exactly π (before uniform mixing).

        Raises:
            ConfigError: unknown/inactive arm, missing active arm, or a weight not > 0.
        """
        row = self._row_or_create(key)
        names = [self._arm_names[c] for c in np.flatnonzero(self._arr["active"][row])]
        if set(prior_weights) != set(names):
            msg = f"prior_weights must name exactly the active arms {sorted(names)}"
            raise ConfigError(msg)
        w = np.array([float(prior_weights[n]) for n in names])
        if not np.all(np.isfinite(w) & (w > 0.0)):
            msg = "prior_weights must be positive and finite"
            raise ConfigError(msg)
        eta = float(self._next_eta(np.array([row], dtype=np.int64))[0])
        cols = [self._col[n] for n in names]
        self._arr["loss_estimates"][row, cols] = -np.log(w / w.sum()) / eta

    def get_key_state(self, key: str) -> dict[str, Any]:
        """State of one key with the fields of :meth:`Exp3IXBandit.to_dict`."""
        row = self._require_row(key)
        r = np.array([row], dtype=np.int64)
        cols = np.flatnonzero(self._arr["active"][row])
        eta = float(self._next_eta(r)[0])
        return {
            "n_arms": int(cols.size),
            "arm_names": [self._arm_names[c] for c in cols],
            "gamma": float(self._gamma_from_eta(np.array([eta]))[0]),
            "gamma_auto": self.gamma is None,
            "eta": eta,
            "eta_auto": self.eta is None,
            "eta_max": self.eta_max,
            "reward_range": list(self.reward_range),
            "uniform_mix": self.uniform_mix,
            "weights": self.weights(r)[0, cols].tolist(),
            "probabilities": self.probabilities(r)[0, cols].tolist(),
            "loss_estimates": self._arr["loss_estimates"][row, cols].tolist(),
            "total_steps": int(self._arr["total_steps"][row]),
            "arm_pulls": self._arr["arm_pulls"][row, cols].tolist(),
            "cumulative_rewards": self._arr["cumulative_rewards"][row, cols].tolist(),
            "version": int(self._arr["version"][row]),
        }

    def set_key_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Exact inverse of :meth:`get_key_state`; a state with only ``weights`` (the
        original format) is converted with ``L̃ = −ln(w)/η``."""
        names = [str(n) for n in state["arm_names"]]
        if not names:
            msg = f"state of key {key!r} has no arms"
            raise StateError(msg)
        row = self._row_or_create(key)
        self._init_rows(np.array([row], dtype=np.int64))
        cols = [self._col[n] if n in self._col else self._add_column(n) for n in names]
        arr = self._arr
        arr["active"][row] = False
        arr["active"][row, cols] = True
        arr["total_steps"][row] = int(state.get("total_steps", 0))
        k = len(cols)
        arr["arm_pulls"][row, cols] = np.asarray(state.get("arm_pulls", [0] * k), dtype=np.int64)
        arr["cumulative_rewards"][row, cols] = np.asarray(
            state.get("cumulative_rewards", [0.0] * k), dtype=np.float64
        )
        arr["version"][row] = int(state.get("version", arr["total_steps"][row]))
        if "loss_estimates" in state:
            arr["loss_estimates"][row, cols] = np.asarray(state["loss_estimates"], np.float64)
        else:
            w = check_finite("weights", state["weights"])
            if not np.all(w > 0.0):
                msg = "weights must be positive"
                raise StateError(msg)
            eta = float(self._next_eta(np.array([row], dtype=np.int64))[0])
            arr["loss_estimates"][row, cols] = -np.log(w / w.sum()) / eta

    def to_dict(self) -> dict[str, Any]:
        """JSON-able full state (config and every key)."""
        return {
            "gamma": self.gamma,
            "eta": self.eta,
            "eta_max": self.eta_max,
            "reward_range": list(self.reward_range),
            "uniform_mix": self.uniform_mix,
            **self._table_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyedExp3IX:
        """Exact inverse of :meth:`to_dict`."""
        lo, hi = d["reward_range"]
        obj = cls(
            d["arm_names"],
            gamma=d["gamma"],
            eta=d["eta"],
            eta_max=d["eta_max"],
            reward_range=(lo, hi),
            uniform_mix=d["uniform_mix"],
            capacity=max(len(d["keys"]), 1),
        )
        obj._load_table(dict(d))
        return obj
