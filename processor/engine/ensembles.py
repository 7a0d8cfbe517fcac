"""Ensemble-weight state for many ensembles: Exp3-IX / Hedge rows plus base weights.

One :class:`~processor.bandits.keyed.KeyedExp3IX` row per ensemble holds the log-domain loss
estimates. Trade outcomes update it three ways (DESIGN §3):

* **bandit feedback** — ``arm`` + decision-time ``propensity``: Exp3-IX's implicit-exploration
  estimate ``ℓ / (p + γ_t)``;
* **full information** — ``model_rewards``: Hedge, every reported arm's own loss;
* **attribution** — ``model_contributions``: a heuristic kept from the original design; each
  contributing arm is charged the loss of ``reward × contribution`` as if it were its own reward. It
  is not an unbiased estimate of anything and is documented as such.

Published weights are ``(1 − blend_alpha)·base + blend_alpha·bandit`` once ``warm_start_steps``
rewards were absorbed, the base weights before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from processor.bandits.keyed import KeyedExp3IX
from processor.config import EnsembleConfig
from processor.errors import StateError

logger = logging.getLogger(__name__)


def arm_for(mode: str, name: str, horizon: str, arm_names: Sequence[str]) -> str:
    """Resolve a model name from an event to an arm name of ``mode``.

    An exact arm name wins; in ``family_horizon`` mode a bare family name becomes
    ``family:horizon`` with the event's horizon.
    """
    if name in arm_names or mode != "family_horizon" or ":" in name:
        return name
    return f"{name}:{horizon}"


class EnsembleTable:
    """Keyed ensemble state (one row per ensemble id)."""

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config
        self.bandit = KeyedExp3IX(
            list(config.arm_names),
            gamma=config.gamma,
            eta=config.eta,
            eta_max=config.eta_max,
            reward_range=config.reward_range,
            uniform_mix=config.uniform_mix,
        )
        self.base_overrides: dict[str, dict[str, float]] = {}
        self.last_horizon: dict[str, str] = {}
        self.last_event_ms: dict[str, int] = {}

    # ---- keys -------------------------------------------------------------------------------
    def rows(self, keys: Sequence[str], create: bool = True) -> np.ndarray:
        """Row index per ensemble id (new ids get fresh rows unless ``create`` is false)."""
        return self.bandit.rows(keys, create=create)

    def has_key(self, key: str) -> bool:
        """True if ``key`` has state."""
        return self.bandit.row_of(key) is not None

    def arm_index(self) -> dict[str, int]:
        """Column of each arm name (global columns; per-key activity is in ``bandit.active``)."""
        return {name: i for i, name in enumerate(self.bandit.arm_names)}

    # ---- weights ----------------------------------------------------------------------------
    def base_weights(self, key: str) -> dict[str, float]:
        """Base weights over the key's active arms, normalised to sum 1."""
        row = self.bandit.row_of(key)
        names = list(self.bandit.arm_names)
        active = self.bandit.active[row] if row is not None else np.ones(len(names), dtype=bool)
        arms = [n for n, a in zip(names, active, strict=True) if a]
        source = self.base_overrides.get(key) or self.config.base_weights
        if source:
            raw = np.array([max(0.0, float(source.get(a, 0.0))) for a in arms])
            if raw.sum() <= 0:
                raw = np.ones(len(arms))
        else:
            raw = np.ones(len(arms))
        raw = raw / raw.sum()
        return dict(zip(arms, (float(x) for x in raw), strict=True))

    def snapshot(self, key: str) -> dict[str, Any]:
        """Everything an EnsembleWeights record publishes for ``key``."""
        row = self.bandit.row_of(key)
        if row is None:
            msg = f"no ensemble state for {key!r}"
            raise StateError(msg)
        rows = np.array([row], dtype=np.int64)
        probs = self.bandit.probabilities(rows)[0]
        bandit_w = self.bandit.weights(rows)[0]
        names = self.bandit.arm_names
        active = self.bandit.active[row]
        prob_map = {n: float(p) for n, p, a in zip(names, probs, active, strict=True) if a}
        bandit_map = {n: float(w) for n, w, a in zip(names, bandit_w, active, strict=True) if a}
        base = self.base_weights(key)
        steps = int(self.bandit.total_steps[row])
        warm = steps >= self.config.warm_start_steps
        alpha = self.config.blend_alpha if warm else 0.0
        blended = {a: (1.0 - alpha) * base[a] + alpha * bandit_map[a] for a in base}
        total = math.fsum(blended.values())
        blended = {a: w / total for a, w in blended.items()}
        return {
            "ensemble_id": key,
            "horizon": self.last_horizon.get(key, ""),
            "mode": self.config.mode,
            "weights": blended,
            "bandit_weights": bandit_map,
            "probabilities": prob_map,
            "total_steps": steps,
            "warm": warm,
            "policy_version": int(self.bandit.version[row]),
            "event_time": int(self.last_event_ms.get(key, 0)),
        }

    # ---- updates ----------------------------------------------------------------------------
    def note_events(self, keys: Sequence[str], horizons: Sequence[str], times: np.ndarray) -> None:
        """Remember the latest horizon and event time per key (last occurrence wins)."""
        for key, horizon, t in zip(keys, horizons, times.tolist(), strict=True):
            self.last_horizon[key] = horizon
            if t > self.last_event_ms.get(key, -1):
                self.last_event_ms[key] = int(t)

    def apply_bandit(
        self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray, propensities: np.ndarray
    ) -> None:
        """Exp3-IX update with decision-time propensities (validated by the caller)."""
        self.bandit.update(rows, arms, rewards, propensities)

    def apply_full(self, rows: np.ndarray, reward_matrix: np.ndarray) -> None:
        """Hedge update; NaN entries are arms without a reported reward this round."""
        self.bandit.update_full(rows, reward_matrix)

    # ---- control ----------------------------------------------------------------------------
    def set_base_weights(self, key: str, weights: Mapping[str, float]) -> None:
        """Operator override of the key's base weights."""
        self.rows([key])
        self.base_overrides[key] = {str(k): float(v) for k, v in weights.items()}

    def add_arm(self, key: str, arm: str) -> None:
        """Enable ``arm`` for ``key`` at the average weight (probability exactly 1/(K+1))."""
        self.rows([key])
        self.bandit.add_arm(arm, key=key)

    def remove_arm(self, key: str, arm: str) -> None:
        """Disable ``arm`` for ``key``."""
        self.bandit.remove_arm(arm, key=key)

    def reset(self, key: str) -> None:
        """Forget everything learnt for ``key`` (base weight overrides included)."""
        self.bandit.reset_key(key)
        self.base_overrides.pop(key, None)
        self.last_horizon.pop(key, None)
        self.last_event_ms.pop(key, None)

    # ---- persistence ------------------------------------------------------------------------
    def get_key_state(self, key: str) -> dict[str, Any]:
        """JSON-able state of one ensemble (the changelog payload)."""
        return {
            "exp3ix": self.bandit.get_key_state(key),
            "base_weights": self.base_overrides.get(key),
            "horizon": self.last_horizon.get(key, ""),
            "event_time": self.last_event_ms.get(key, 0),
        }

    def set_key_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`get_key_state`."""
        try:
            self.bandit.set_key_state(key, state["exp3ix"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"corrupt ensemble state for {key!r}: {exc}"
            raise StateError(msg) from exc
        if state.get("base_weights"):
            self.base_overrides[key] = dict(state["base_weights"])
        if state.get("horizon"):
            self.last_horizon[key] = str(state["horizon"])
        if state.get("event_time"):
            self.last_event_ms[key] = int(state["event_time"])
