"""Exp3-IX (Neu 2015): the single-key object API over :class:`KeyedExp3IX`.

The math lives in :mod:`processor.bandits.exp3ix_keyed` (keyed arrays) and
:mod:`processor.bandits.base`; the classes here are one-key views with the original design's names
(``select_arm``, ``get_probabilities``, ``update``, ``to_dict`` ...).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from processor.bandits.base import BanditInputError, FloatArray, IntArray
from processor.bandits.exp3ix_keyed import KeyedExp3IX
from processor.bandits.exp3ix_scalar import RowView, inverse_cdf, next_eta, row_state, update_one
from processor.errors import ConfigError, StateError

__all__ = ["Exp3IXBandit", "KeyedExp3IX", "SingleKeyExp3View"]

logger = logging.getLogger(__name__)


class SingleKeyExp3View:
    """One key of a :class:`KeyedExp3IX`, seen as a classic bandit object (shared by
    :class:`Exp3IXBandit` and :class:`~processor.bandits.hedge.Hedge`).

    Arm indices are positions among the active arms in column order, so removing an arm
    shifts the indices after it, as in the original API.
    """

    _KEY = "default"

    def __init__(
        self,
        n_arms: int,
        arm_names: Sequence[str] | None,
        *,
        gamma: float | None,
        eta: float | None,
        eta_max: float,
        reward_range: tuple[float, float],
        uniform_mix: float,
        seed: int | None,
        share: float = 0.0,
    ) -> None:
        names = [f"arm_{i}" for i in range(n_arms)] if arm_names is None else list(arm_names)
        if len(names) != n_arms or n_arms < 1:
            msg = f"n_arms ({n_arms}) must be >= 1 and match arm_names ({len(names)})"
            raise ConfigError(msg)
        self.keyed = KeyedExp3IX(
            names,
            gamma=gamma,
            eta=eta,
            eta_max=eta_max,
            reward_range=reward_range,
            uniform_mix=uniform_mix,
            share=share,
            capacity=1,
        )
        self._row = int(self.keyed.rows([self._KEY])[0])
        self._rows = np.array([self._row], dtype=np.int64)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._layout: tuple[bytes, list[int], list[str]] = (b"", [], [])

    def _cols(self) -> IntArray:
        return np.array(self._active_cols(), dtype=np.int64)

    def _active_cols(self) -> list[int]:
        """Columns of the active arms (cached while the row's arm set is the same)."""
        mask = self.keyed._arr["active"][self._row]
        key = mask.tobytes()
        if key != self._layout[0]:
            cols = np.flatnonzero(mask).tolist()
            names = self.keyed.arm_names
            self._layout = (key, cols, [names[c] for c in cols])
        return self._layout[1]

    def _col_of(self, arm: int) -> int:
        cols = self._active_cols()
        if not 0 <= int(arm) < len(cols):
            msg = f"arm index {arm} out of range (n_arms={len(cols)})"
            raise BanditInputError(msg)
        return cols[int(arm)]

    def _probs(self) -> list[float]:
        """Probabilities of the active arms (scalar path, bit-identical to the keyed one)."""
        p, _ = row_state(self.keyed, self._row)
        return [p[c] for c in self._active_cols()]

    @property
    def arm_names(self) -> list[str]:
        """Names of the arms, in index order."""
        self._active_cols()
        return list(self._layout[2])

    @property
    def n_arms(self) -> int:
        """Number of arms."""
        return len(self._active_cols())

    @property
    def total_steps(self) -> int:
        """Rounds absorbed."""
        return int(self.keyed.total_steps[self._row])

    @property
    def eta(self) -> float:
        """Learning rate of the next round."""
        return next_eta(self.keyed, RowView(self.keyed, self._row))

    def get_probabilities(self) -> FloatArray:
        """Probabilities of the next decision, one per arm (sum 1)."""
        return np.array(self._probs(), dtype=np.float64)

    def select_arm(self) -> int:
        """Draw an arm index from the current probabilities (seeded generator)."""
        probs = self._probs()
        return inverse_cdf(probs, self._rng.random())

    def get_weights(self) -> FloatArray:
        """Normalised weights softmax(−η L̃) (no uniform mixing)."""
        _, w = row_state(self.keyed, self._row)
        return np.array([w[c] for c in self._active_cols()], dtype=np.float64)

    def get_weights_dict(self) -> dict[str, float]:
        """:meth:`get_weights` keyed by arm name."""
        return dict(zip(self.arm_names, self.get_weights().tolist(), strict=True))

    def has_arm(self, arm_name: str) -> bool:
        """True if ``arm_name`` is an (active) arm."""
        return arm_name in self.arm_names

    def get_arm_index(self, arm_name: str) -> int:
        """Index of ``arm_name`` (StateError if absent)."""
        try:
            return self.arm_names.index(arm_name)
        except ValueError:
            msg = f"unknown arm {arm_name!r}"
            raise StateError(msg) from None

    def add_arm(self, arm_name: str, initial_weight: float | None = None) -> int:
        """Add an arm; returns its index.

        Args:
            arm_name: New arm's name.
            initial_weight: Its normalised weight right after, in (0, 1). None: the average
                weight, i.e. probability exactly 1/(K+1).
        """
        if self.has_arm(arm_name):
            msg = f"arm {arm_name!r} already exists"
            raise StateError(msg)
        if initial_weight is not None and not 0.0 < initial_weight < 1.0:
            msg = f"initial_weight must be in (0, 1), got {initial_weight}"
            raise ConfigError(msg)
        col = self.keyed.add_arm(arm_name, key=self._KEY)
        if initial_weight is not None:
            cols = self._cols()
            others = cols[cols != col]
            eta = float(self.keyed._next_eta(self._rows)[0])
            k = self.keyed
            z = k.log_prior[self._row, others] - eta * k.loss_estimates[self._row, others]
            odds = math.log(initial_weight / (1.0 - initial_weight))
            # in the prior, not in L̃: exact whatever η is (η > 0 here: K + 1 ≥ 2 arms)
            k.log_prior[self._row, col] = odds + float(np.logaddexp.reduce(z))
            k.loss_estimates[self._row, col] = 0.0
            k._changes += 1
        return self.get_arm_index(arm_name)

    def remove_arm(self, arm_name: str) -> None:
        """Remove an arm (at least one must remain)."""
        self.get_arm_index(arm_name)
        self.keyed.remove_arm(arm_name, key=self._KEY)

    def get_stats(self) -> dict[str, Any]:
        """Summary with per-arm pulls, rewards, weight and probability."""
        state = self.keyed.get_key_state(self._KEY)
        arm_stats = [
            {
                "name": name,
                "pulls": pulls,
                "cumulative_reward": cum,
                "avg_reward": cum / pulls if pulls else 0.0,
                "weight": w,
                "probability": p,
            }
            for name, pulls, cum, w, p in zip(
                state["arm_names"],
                state["arm_pulls"],
                state["cumulative_rewards"],
                state["weights"],
                state["probabilities"],
                strict=True,
            )
        ]
        keys = ("n_arms", "total_steps", "gamma", "eta")
        return {**{k: state[k] for k in keys}, "arm_stats": arm_stats}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (original field names plus ``loss_estimates`` for exact restore)."""
        return self.keyed.get_key_state(self._KEY)

    def _load(self, state: Mapping[str, Any]) -> None:
        self.keyed.set_key_state(self._KEY, state)


def _config_from_state(state: Mapping[str, Any]) -> dict[str, Any]:
    gamma = None if state.get("gamma_auto", False) else state.get("gamma")
    eta = None if state.get("eta_auto", True) else state.get("eta")
    lo, hi = state.get("reward_range", (-100.0, 100.0))
    return {
        "gamma": gamma,
        "eta": eta,
        "eta_max": state.get("eta_max", 0.07),
        "reward_range": (float(lo), float(hi)),
        "share": float(state.get("share", 0.0)),
    }


class Exp3IXBandit(SingleKeyExp3View):
    """Neu's Exp3-IX for one decision stream (a thin view over :class:`KeyedExp3IX`).

    Args:
        n_arms: Number of arms.
        arm_names: Their names (default ``arm_0``…).
        gamma: Fixed implicit exploration, None for η_t/2.
        eta: Fixed learning rate, None for the anytime schedule ``min(eta_max, sqrt(ln K/(K t)))``.
        eta_max: Cap of the anytime learning rate.
        reward_range: Rewards are mapped to losses over this range.
        uniform_mix: Optional uniform mixing ε.
        seed: Seed of :meth:`select_arm`.
        share: Fixed-share α (Exp3-SIX) for a best arm that changes over time; 0 = off.

    Example:
        >>> b = Exp3IXBandit(3, ["a", "b", "c"], reward_range=(0.0, 1.0), seed=7)
        >>> b.update(b.select_arm(), 1.0)
        >>> round(float(b.get_probabilities().sum()), 12)
        1.0
    """

    def __init__(
        self,
        n_arms: int,
        arm_names: Sequence[str] | None = None,
        gamma: float | None = None,
        eta: float | None = None,
        eta_max: float = 0.07,
        reward_range: tuple[float, float] = (-100.0, 100.0),
        uniform_mix: float = 0.0,
        seed: int | None = None,
        share: float = 0.0,
    ) -> None:
        super().__init__(
            n_arms,
            arm_names,
            gamma=gamma,
            eta=eta,
            eta_max=eta_max,
            reward_range=reward_range,
            uniform_mix=uniform_mix,
            seed=seed,
            share=share,
        )

    @property
    def gamma(self) -> float:
        """Implicit exploration γ of the next round."""
        return float(self.keyed._gamma_from_eta(np.array([self.eta]))[0])

    def update(self, arm: int, reward: float, propensity: float | None = None) -> None:
        """Absorb ``reward`` of ``arm``; ``propensity`` = its probability at decision time
        (default: the current one). NaN/inf raises :class:`BanditInputError`, nothing changes."""
        col = self._col_of(arm)
        p = self._probs()[arm] if propensity is None else propensity
        update_one(self.keyed, self._row, col, reward, p)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], seed: int | None = None) -> Exp3IXBandit:
        """Restore from :meth:`to_dict` (or the original format with only ``weights``)."""
        names = list(state["arm_names"])
        obj = cls(
            len(names),
            names,
            uniform_mix=state.get("uniform_mix", 0.0),
            seed=seed,
            **_config_from_state(state),
        )
        obj._load(state)
        return obj
