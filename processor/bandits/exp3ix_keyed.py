"""Exp3-IX (Neu 2015) and Hedge in the log domain: the keyed arrays (one row per key).

State per row: cumulative loss estimates L̃, a log-prior b (zero unless a warm start, a
restored weights-only state or fixed share set it) and the counts of bandit and
full-information rounds. Probabilities are ``(1 − ε)·softmax(b − η L̃) + ε/K``.

* **Exp3-IX** (bandit feedback): an event with reward r, arm a and decision-time propensity p adds
  ``ℓ / (p + γ_t)`` to ``L̃_a``, ``ℓ = clip((hi − r)/(hi − lo), 0, 1)``, γ_t = η_t/2.
* **Hedge** (full information, :meth:`KeyedExp3IX.update_full`): every reported arm's own loss
  is added; an arm that did not report is charged the mean loss of the arms that did, so it
  neither gains nor loses against the field that round (charging it nothing would reward silence).

The anytime rate (:func:`processor.bandits.expweights.learning_rate`) is Neu's
``sqrt(ln K / (K t))`` (capped at ``eta_max``) for bandit rounds and Hedge's ``sqrt(8 ln K / t)``
(no cap) for full-information rounds. No raw exponentiated weight is stored, so no reward can
overflow anything.

Fixed share α > 0 (Herbster & Warmuth 1998; with Exp3-IX it is Neu's Exp3-SIX) mixes the weights
after every round, ``w ← (1 − α)·w + α/K``, in the log domain: the mixed log-weights go to b and
L̃ restarts at 0. A batch is still exact — it equals the same events applied one at a time —
but mixing does not commute, so a batch is applied one event per key at a time (vectorized
across keys). Without share the updates are additive and a batch is one pass.
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
    check_finite,
    index_arrays,
    inverse_cdf_select,
    ranks_within_groups,
)
from processor.bandits.exp3ix_state import key_state, legacy_bandit_steps, load_key_state
from processor.bandits.expweights import (
    eta_schedule,
    learning_rate,
    log_weights,
    mean_weight_arm,
    mixed_probabilities,
    rewards_to_losses,
    share_mix,
    softmax_weights,
)
from processor.errors import ConfigError, StateError

logger = logging.getLogger(__name__)


def check_config(
    gamma: float | None,
    eta: float | None,
    eta_max: float,
    reward_range: tuple[float, float],
    uniform_mix: float,
    share: float = 0.0,
) -> None:
    """Raise :class:`ConfigError` on an invalid Exp3-IX / Hedge setting (names the setting)."""
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
    if not (math.isfinite(share) and 0.0 <= share < 1.0):
        msg = f"share must be in [0, 1), got {share}"
        raise ConfigError(msg)


class KeyedExp3IX(KeyTable):
    """Exp3-IX (bandit feedback) and Hedge (full information) state for many keys, log domain.

    Args:
        arm_names: Global column order of the arms.
        gamma: Fixed implicit-exploration γ, or None for γ_t = η_t / 2.
        eta: Fixed learning rate, or None for the anytime rate (module docstring).
        eta_max: Cap of the anytime rate of rows with bandit-feedback rounds (Hedge is uncapped).
        reward_range: (lo, hi) mapping rewards to losses in [0, 1].
        uniform_mix: ε of uniform mixing (keeps propensities positive for off-policy use).
        share: Fixed-share α in [0, 1): weight mixed towards uniform after every round.
        capacity: Initial number of rows.
    """

    _fields: ClassVar[dict[str, tuple[Any, bool, float]]] = {
        "loss_estimates": (np.float64, True, 0.0),
        "log_prior": (np.float64, True, 0.0),
        "total_steps": (np.int64, False, 0),
        "bandit_steps": (np.int64, False, 0),
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
        share: float = 0.0,
        capacity: int = 256,
    ) -> None:
        rr = (float(reward_range[0]), float(reward_range[1]))
        check_config(gamma, eta, eta_max, rr, uniform_mix, share)
        super().__init__(arm_names, capacity)
        self.gamma = None if gamma is None else float(gamma)
        self.eta = None if eta is None else float(eta)
        self.eta_max = float(eta_max)
        self.reward_range = rr
        self.uniform_mix = float(uniform_mix)
        self.share = float(share)

    @property
    def loss_estimates(self) -> FloatArray:
        """(n_keys, K) cumulative loss estimates L̃ (since the last fold when share > 0)."""
        return self._arr["loss_estimates"][: self.n_keys]

    @property
    def log_prior(self) -> FloatArray:
        """(n_keys, K) log-prior b of the weights softmax(b − η L̃)."""
        return self._arr["log_prior"][: self.n_keys]

    @property
    def total_steps(self) -> IntArray:
        """(n_keys,) rounds absorbed (t), both feedback kinds."""
        return self._arr["total_steps"][: self.n_keys]

    @property
    def bandit_steps(self) -> IntArray:
        """(n_keys,) bandit-feedback rounds among them."""
        return self._arr["bandit_steps"][: self.n_keys]

    @property
    def arm_pulls(self) -> IntArray:
        """(n_keys, K) bandit-feedback events per arm."""
        return self._arr["arm_pulls"][: self.n_keys]

    @property
    def cumulative_rewards(self) -> FloatArray:
        """(n_keys, K) sum of observed rewards per arm."""
        return self._arr["cumulative_rewards"][: self.n_keys]

    def eta_at(self, t: ArrayLike, n_arms: ArrayLike | None = None) -> FloatArray:
        """η of bandit round t ≥ 1 of a bandit-only row (``n_arms``: default-active arms)."""
        k = int(self._default_active.sum()) if n_arms is None else n_arms
        return eta_schedule(t, k, self.eta, self.eta_max, self.share)

    def _gamma_from_eta(self, eta: FloatArray) -> FloatArray:
        if self.gamma is None:
            return eta / 2.0
        return np.full(eta.shape, self.gamma)

    def _rate(self, tb: ArrayLike, tf: ArrayLike, k: ArrayLike) -> FloatArray:
        return learning_rate(tb, tf, k, eta=self.eta, eta_max=self.eta_max, share=self.share)

    def _next_eta(self, rows: IntArray, extra_arms: int = 0) -> FloatArray:
        """η of the next decision of each row (its active arms, one more round).

        The next round is taken to be a full-information one for rows that have only had
        full-information rounds, else a bandit one (a fresh row decides as Exp3-IX).
        """
        k = self._arr["active"][rows].sum(axis=1) + extra_arms
        tb = self._arr["bandit_steps"][rows]
        tf = self._arr["total_steps"][rows] - tb
        hedge = (tb == 0) & (tf > 0)
        return self._rate(np.where(hedge, tb, tb + 1), np.where(hedge, tf + 1, tf), k)

    def probabilities(self, rows: ArrayLike) -> FloatArray:
        """(n, K) ``(1 − ε)·softmax(b − η_t L̃) + ε/K_active``; inactive arms 0; rows sum to 1."""
        r = np.asarray(rows, dtype=np.int64)
        arr = self._arr
        return mixed_probabilities(
            arr["loss_estimates"][r],
            arr["log_prior"][r],
            self._next_eta(r),
            arr["active"][r],
            self.uniform_mix,
        )

    def weights(self, rows: ArrayLike) -> FloatArray:
        """(n, K) normalised exponential weights ``softmax(b − η_t L̃)`` (no uniform mixing)."""
        r = np.asarray(rows, dtype=np.int64)
        arr = self._arr
        return softmax_weights(
            arr["loss_estimates"][r], arr["log_prior"][r], self._next_eta(r), arr["active"][r]
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
        arr = self._arr
        act = arr["active"]
        if not np.all(act[r, a]):
            msg = "update for an arm that is not active for its key"
            raise BanditInputError(msg)
        losses = rewards_to_losses(rew, self.reward_range)
        if self.share > 0.0:
            self._in_levels(r, lambda sel, rr: self._bandit_step(rr, a[sel], losses[sel], p[sel]))
        else:
            tb = arr["bandit_steps"][r] + ranks_within_groups(r) + 1
            tf = arr["total_steps"][r] - arr["bandit_steps"][r]
            eta = self._rate(tb, tf, act[r].sum(axis=1))
            np.add.at(arr["loss_estimates"], (r, a), losses / (p + self._gamma_from_eta(eta)))
            np.add.at(arr["total_steps"], r, 1)
            np.add.at(arr["bandit_steps"], r, 1)
        np.add.at(arr["cumulative_rewards"], (r, a), rew)
        np.add.at(arr["arm_pulls"], (r, a), 1)
        np.add.at(arr["version"], r, 1)
        self._changes += 1

    def update_full(self, rows: ArrayLike, rewards_matrix: ArrayLike) -> None:
        """Hedge: each row of ``rewards_matrix`` (n, K) is every arm's reward this round.

        NaN means the arm did not report: an active arm that did not report is charged the
        mean loss of the arms that did (it neither wins nor loses the round). ``L̃ += ℓ``
        without importance weighting; t += 1 per round.

        Raises:
            BanditInputError: ±inf rewards, wrong shape, rows out of range, or a round in which
                no active arm reported; raised before anything changes.
        """
        r = np.asarray(rows, dtype=np.int64)
        m = np.asarray(rewards_matrix, dtype=np.float64)
        if r.ndim != 1 or m.shape != (r.size, len(self._arm_names)):
            msg = "rewards_matrix must be (len(rows), n_arms)"
            raise BanditInputError(msg)
        if np.any(np.isinf(m)):
            msg = "reward must be finite (NaN marks an arm that did not report)"
            raise BanditInputError(msg)
        if r.size and (r.min() < 0 or r.max() >= self.n_keys):
            msg = "row index out of range"
            raise BanditInputError(msg)
        arr = self._arr
        act = arr["active"][r]
        seen = ~np.isnan(m) & act
        n_seen = seen.sum(axis=1)
        if np.any(n_seen == 0):
            msg = "a full-information round needs a reward of at least one active arm"
            raise BanditInputError(msg)
        loss = np.where(seen, rewards_to_losses(np.where(seen, m, 0.0), self.reward_range), 0.0)
        mean = loss.sum(axis=1) / n_seen
        charged = np.where(seen, loss, np.where(act, mean[:, None], 0.0))
        if self.share > 0.0:
            self._in_levels(r, lambda sel, rr: self._full_step(rr, charged[sel]))
        else:
            np.add.at(arr["loss_estimates"], r, charged)
            np.add.at(arr["total_steps"], r, 1)
        np.add.at(arr["cumulative_rewards"], r, np.where(seen, m, 0.0))
        np.add.at(arr["version"], r, 1)
        self._changes += 1

    # ---- fixed share: one event per key at a time --------------------------------------------
    def _in_levels(self, r: IntArray, step: Any) -> None:
        """Call ``step(selector, rows)`` for the 1st, 2nd, ... event of every key in turn."""
        ranks = ranks_within_groups(r)
        order = np.argsort(ranks, kind="stable")
        bounds = np.searchsorted(ranks[order], np.arange(int(ranks.max(initial=-1)) + 2))
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            sel = order[lo:hi]
            step(sel, r[sel])

    def _bandit_step(self, rr: IntArray, a: IntArray, loss: FloatArray, p: FloatArray) -> None:
        arr = self._arr
        tb = arr["bandit_steps"][rr] + 1
        tf = arr["total_steps"][rr] - arr["bandit_steps"][rr]
        eta = self._rate(tb, tf, arr["active"][rr].sum(axis=1))
        arr["loss_estimates"][rr, a] += loss / (p + self._gamma_from_eta(eta))
        arr["total_steps"][rr] += 1
        arr["bandit_steps"][rr] += 1
        self._fold(rr)

    def _full_step(self, rr: IntArray, charged: FloatArray) -> None:
        self._arr["loss_estimates"][rr] += charged
        self._arr["total_steps"][rr] += 1
        self._fold(rr)

    def _fold(self, rr: IntArray) -> None:
        """Mix the next decision's weights with uniform (log domain) into b; L̃ restarts at 0."""
        arr = self._arr
        act = arr["active"][rr]
        lw = log_weights(arr["loss_estimates"][rr], arr["log_prior"][rr], self._next_eta(rr), act)
        mixed = share_mix(lw, act, self.share)
        arr["log_prior"][rr] = np.where(act, mixed, arr["log_prior"][rr])
        arr["loss_estimates"][rr] = np.where(act, 0.0, arr["loss_estimates"][rr])

    # ---- arms and keys ------------------------------------------------------------------------
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
            # η of the next decision once the arm is in (K + 1 ≥ 2 arms, so η > 0).
            eta = self._next_eta(fresh, extra_arms=1)
            arr = self._arr
            loss, prior = mean_weight_arm(
                arr["loss_estimates"][fresh], arr["log_prior"][fresh], eta, act[fresh]
            )
            arr["loss_estimates"][fresh, col] = loss
            arr["log_prior"][fresh, col] = prior
            arr["arm_pulls"][fresh, col] = 0
            arr["cumulative_rewards"][fresh, col] = 0.0
            act[fresh, col] = True
        self._changes += 1
        return col

    def remove_arm(self, name: str, key: str | None = None) -> None:
        """Disable ``name`` for ``key`` (or all keys); at least one active arm must remain."""
        self._deactivate(name, key)

    def ensure_column(self, name: str) -> int:
        """Column of ``name``, added (active for no key) if it is new."""
        col = self._col.get(name)
        return self._add_column(name) if col is None else col

    def reset_key(self, key: str) -> None:
        """Back to zero losses with the default arms (creates the key if needed)."""
        self._init_rows(np.array([self._row_or_create(key)], dtype=np.int64))

    def set_active(self, rows: ArrayLike, active: ArrayLike) -> None:
        """Set the arms ``rows`` may play (bool (n, K) or (K,)); each row needs one."""
        r = np.asarray(rows, dtype=np.int64)
        mask = np.broadcast_to(np.asarray(active, dtype=bool), (r.size, len(self._arm_names)))
        if r.size and not mask.any(axis=1).all():
            msg = "every key needs at least one active arm"
            raise StateError(msg)
        self._arr["active"][r] = mask
        self._changes += 1

    def set_warm_start(self, key: str, prior_weights: Mapping[str, float]) -> None:
        """Start ``key`` from prior weights π: ``b = ln(π / Σπ)``, ``L̃ = 0``.

        The next decision's probabilities are then exactly π (before uniform mixing), whatever
        the learning rate — also with one arm (π = 1).

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
        cols = [self._col[n] for n in names]
        self._arr["log_prior"][row, cols] = np.log(w / w.sum())
        self._arr["loss_estimates"][row, cols] = 0.0
        self._changes += 1

    # ---- state --------------------------------------------------------------------------------
    def get_key_state(self, key: str) -> dict[str, Any]:
        """State of one key with the fields of :meth:`Exp3IXBandit.to_dict`."""
        return key_state(self, self._require_row(key))

    def set_key_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Exact inverse of :meth:`get_key_state`; also reads 0.2 states and the original
        weights-only format (see :func:`processor.bandits.exp3ix_state.load_key_state`)."""
        names = [str(n) for n in state["arm_names"]]
        if not names:
            msg = f"state of key {key!r} has no arms"
            raise StateError(msg)
        row = self._row_or_create(key)
        self._init_rows(np.array([row], dtype=np.int64))
        cols = [self._col[n] if n in self._col else self._add_column(n) for n in names]
        load_key_state(self, row, cols, state)
        self._changes += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able full state (config and every key)."""
        return {
            "gamma": self.gamma,
            "eta": self.eta,
            "eta_max": self.eta_max,
            "reward_range": list(self.reward_range),
            "uniform_mix": self.uniform_mix,
            "share": self.share,
            **self._table_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyedExp3IX:
        """Exact inverse of :meth:`to_dict` (also reads the 0.2 layout)."""
        lo, hi = d["reward_range"]
        obj = cls(
            d["arm_names"],
            gamma=d["gamma"],
            eta=d["eta"],
            eta_max=d["eta_max"],
            reward_range=(lo, hi),
            uniform_mix=d["uniform_mix"],
            share=d.get("share", 0.0),
            capacity=max(len(d["keys"]), 1),
        )
        obj._load_table(dict(d))
        if "bandit_steps" not in d["arrays"]:
            n = obj.n_keys
            obj._arr["bandit_steps"][:n] = legacy_bandit_steps(
                obj._arr["total_steps"][:n], obj._arr["arm_pulls"][:n]
            )
        return obj
