"""Beta-Bernoulli Thompson sampling: a per-arm object and the single-stream object API.

:class:`ThompsonSampling` is a thin single-key view over
:class:`~processor.bandits.keyed.KeyedThompson`, so the object and keyed APIs share every
formula (exact propensities, discounting, credible intervals).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from processor.bandits.base import BanditInputError, beta_credible_interval, check_finite
from processor.bandits.exp3ix_scalar import inverse_cdf
from processor.bandits.keyed import KeyedThompson
from processor.bandits.thompson_drift import Drift
from processor.errors import ConfigError

logger = logging.getLogger(__name__)


class ThompsonSamplerArm:
    """One Beta-Bernoulli arm: α = prior_alpha + successes, β = prior_beta + failures.

    Args:
        arm_id: Name of the arm.
        prior_alpha: Prior α (> 0).
        prior_beta: Prior β (> 0).
        seed: Seed of :meth:`sample`.

    Example:
        >>> arm = ThompsonSamplerArm("balanced", seed=1)
        >>> arm.update(2.5)
        >>> (arm.alpha, arm.beta)
        (2.0, 1.0)
    """

    def __init__(
        self,
        arm_id: str,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if not (prior_alpha > 0.0 and prior_beta > 0.0):
            msg = f"prior_alpha and prior_beta must be > 0, got {prior_alpha}, {prior_beta}"
            raise ConfigError(msg)
        self.arm_id = arm_id
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        self.alpha = float(prior_alpha)
        self.beta = float(prior_beta)
        self.n_updates = 0
        self.total_reward = 0.0
        self._rng = np.random.default_rng(seed)

    @property
    def mean(self) -> float:
        """Posterior mean α / (α + β)."""
        return self.alpha / (self.alpha + self.beta)

    def sample(self) -> float:
        """One draw θ ~ Beta(α, β)."""
        return float(self._rng.beta(self.alpha, self.beta))

    def update(self, reward: float, success: bool | float | None = None) -> None:
        """Count a success (default: ``reward > 0``) or a failure; a fractional ``success``
        s in [0, 1] adds s to α and 1 − s to β, as :meth:`ThompsonSampling.update` does.

        Raises:
            BanditInputError: NaN/inf reward, or ``success`` outside [0, 1] (nothing changes).
        """
        r = float(check_finite("reward", reward))
        if success is None:
            s = 1.0 if r > 0.0 else 0.0
        else:
            s = float(check_finite("success", float(success)))
            if not 0.0 <= s <= 1.0:
                msg = f"success must be a bool or a fraction in [0, 1], got {success}"
                raise BanditInputError(msg)
        self.alpha += s
        self.beta += 1.0 - s
        self.n_updates += 1
        self.total_reward += r

    def get_confidence_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Equal-tailed credible interval from exact Beta quantiles."""
        lo, hi = beta_credible_interval(self.alpha, self.beta, confidence)
        return float(lo), float(hi)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {
            "arm_id": self.arm_id,
            "prior_alpha": self.prior_alpha,
            "prior_beta": self.prior_beta,
            "alpha": self.alpha,
            "beta": self.beta,
            "n_updates": self.n_updates,
            "total_reward": self.total_reward,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], seed: int | None = None) -> ThompsonSamplerArm:
        """Exact inverse of :meth:`to_dict`."""
        arm = cls(d["arm_id"], d["prior_alpha"], d["prior_beta"], seed=seed)
        arm.alpha = float(d["alpha"])
        arm.beta = float(d["beta"])
        arm.n_updates = int(d.get("n_updates", 0))
        arm.total_reward = float(d.get("total_reward", 0.0))
        return arm


def _to_ms(event_time: int | float | datetime | None) -> int | None:
    if event_time is None:
        return None
    if isinstance(event_time, datetime):
        return round(event_time.timestamp() * 1000.0)
    return int(event_time)


class ThompsonSampling:
    """Thompson sampling over named arms (one decision stream).

    Args:
        arms: Arm names.
        prior_alpha: Beta prior α0.
        prior_beta: Beta prior β0.
        discount: < 1 for discounted Thompson sampling (decay per ``discount_unit_ms`` of
            event time, or per update when no event time is given).
        seed: Seed of :meth:`select`.
        discount_unit_ms: Time unit of the discount.

    Example:
        >>> ts = ThompsonSampling(["a", "b"], seed=3)
        >>> ts.update("a", success=True)
        >>> round(sum(ts.propensities().values()), 12)
        1.0
    """

    _KEY = "default"

    def __init__(
        self,
        arms: Sequence[str],
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        discount: float = 1.0,
        seed: int | None = None,
        discount_unit_ms: int = 3_600_000,
    ) -> None:
        self.keyed = KeyedThompson(
            arms,
            prior_alpha=prior_alpha,
            prior_beta=prior_beta,
            discount=discount,
            discount_unit_ms=discount_unit_ms,
            capacity=1,
        )
        self._rows = self.keyed.rows([self._KEY])
        self._row = int(self._rows[0])
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._layout: tuple[bytes, dict[str, int], int] = (b"", {}, 0)
        self._exact: tuple[int, list[float]] | None = None  # (table changes, propensities)
        self._drift: Drift | None = None

    def _cols(self) -> np.ndarray:
        return np.flatnonzero(self.keyed.active[self._row])

    def _active(self) -> dict[str, int]:
        """Active arm name → column, in column order (cached while the arm set is the same)."""
        mask = self.keyed._arr["active"][self._row]
        key = mask.tobytes()
        if key != self._layout[0]:
            names = self.keyed.arm_names
            cols = np.flatnonzero(mask).tolist()
            self._layout = (key, {names[c]: c for c in cols}, cols[-1])
        return self._layout[1]

    @property
    def arms(self) -> list[str]:
        """Active arm names in column order."""
        return list(self._active())

    def _col(self, arm: str) -> int:
        col = self._active().get(arm)
        if col is None:
            msg = f"unknown arm {arm!r}"
            raise BanditInputError(msg)
        return col

    def _exact_propensities(self) -> list[float]:
        """Exact propensities over every column at the current state (cached)."""
        changes = self.keyed._changes
        if self._exact is None or self._exact[0] != changes:
            probs = self.keyed.propensities(self._rows)[0].tolist()
            self._exact = (changes, probs)
            self._active()
            self._drift = Drift(probs, self._layout[2], changes)
        return self._exact[1]

    def select(self, deterministic: bool = False) -> str:
        """Thompson decision (probability matching on exact propensities) or, with
        ``deterministic``, the best posterior mean.

        The choice is the one :meth:`KeyedThompson.select` makes with this object's uniform,
        but the exact propensities are only computed when the bounds on how far the updates
        since the last computation moved them leave it open
        (:mod:`processor.bandits.thompson_drift`).
        """
        if deterministic:
            arms, _ = self.keyed.select_deterministic(self._rows)
            return self.keyed.arm_names[int(arms[0])]
        u = self._rng.random()
        col = None
        drift = self._drift
        if drift is not None and drift.changes == self.keyed._changes:
            col = drift.choose(u)
        if col is None:
            col = inverse_cdf(self._exact_propensities(), u)
        return self.keyed._arm_names[col]

    def update(
        self,
        arm: str,
        reward: float | None = None,
        success: bool | float | None = None,
        event_time: int | float | datetime | None = None,
    ) -> None:
        """Absorb one outcome: ``success`` (bool or a fraction in [0, 1]) or else
        ``reward > 0``; ``event_time`` (ms or datetime) drives the discount."""
        col = self._col(arm)
        if success is None:
            if reward is None:
                msg = "update needs reward or success"
                raise BanditInputError(msg)
            s = 1.0 if float(check_finite("reward", reward)) > 0.0 else 0.0
        else:
            s = float(success)
        t = _to_ms(event_time)
        k = self.keyed
        if k.discount < 1.0 or not 0.0 <= s <= 1.0:  # discounting; errors: the keyed path
            times = None if t is None else np.array([t], dtype=np.int64)
            k.update(self._rows, np.array([col]), np.array([s]), times)
            return
        # one event without discount, as KeyedThompson.update adds it
        row = self._row
        arr = k._arr
        succ, fail = arr["successes"], arr["failures"]
        before_s, before_f = succ.item(row, col), fail.item(row, col)
        if t is not None:
            last = arr["last_event_ms"]
            last[row] = max(last.item(row), t)
        succ[row, col] = before_s + s
        fail[row, col] = before_f + (1.0 - s)
        arr["version"][row] = arr["version"].item(row) + 1
        drift = self._drift
        fresh = drift is not None and drift.changes == k._changes
        k._changes += 1
        if fresh and (s in (0.0, 1.0)):
            assert drift is not None
            alpha, beta = k.prior_alpha + before_s, k.prior_beta + before_f
            if not drift.note(col, s == 1.0, alpha, beta, k._changes):
                self._drift = None

    def propensities(self) -> dict[str, float]:
        """Exact P(arm is the argmax of a posterior draw), per arm (quadrature)."""
        probs = self._exact_propensities()
        return {name: probs[c] for name, c in self._active().items()}

    def posterior_means(self) -> dict[str, float]:
        """Posterior mean per arm."""
        means = self.keyed.posterior_mean(self._rows)[0]
        return {self.keyed.arm_names[c]: float(means[c]) for c in self._cols()}

    def credible_intervals(self, confidence: float = 0.95) -> dict[str, tuple[float, float]]:
        """Credible interval per arm."""
        lo, hi = self.keyed.credible_interval(self._rows, confidence)
        names = self.keyed.arm_names
        return {names[c]: (float(lo[0, c]), float(hi[0, c])) for c in self._cols()}

    def add_arm(self, arm: str) -> None:
        """Add an arm at the prior."""
        self.keyed.add_arm(arm, key=self._KEY)

    def remove_arm(self, arm: str) -> None:
        """Remove an arm (one must remain)."""
        self._col(arm)
        self.keyed.remove_arm(arm, key=self._KEY)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: config, posterior counts, and the generator state."""
        k = self.keyed
        return {
            "prior_alpha": k.prior_alpha,
            "prior_beta": k.prior_beta,
            "discount": k.discount,
            "discount_unit_ms": k.discount_unit_ms,
            "state": k.get_key_state(self._KEY),
            "rng_state": self._rng.bit_generator.state,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], seed: int | None = None) -> ThompsonSampling:
        """Inverse of :meth:`to_dict`; the generator continues where it was unless ``seed``."""
        state = d["state"]
        obj = cls(
            state["arm_names"],
            prior_alpha=d["prior_alpha"],
            prior_beta=d["prior_beta"],
            discount=d["discount"],
            seed=seed,
            discount_unit_ms=d["discount_unit_ms"],
        )
        obj.keyed.set_key_state(cls._KEY, state)
        if seed is None and "rng_state" in d:
            obj._rng.bit_generator.state = dict(d["rng_state"])
        return obj
