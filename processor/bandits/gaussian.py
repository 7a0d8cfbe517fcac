"""Keyed Normal-Inverse-Gamma Thompson sampling of a mean reward (profit, ROI, bps).

For rewards with a magnitude, each (key, arm) keeps the additive sufficient statistics of its
rewards — count ``n``, sum ``s``, sum of squares ``q`` — and the posterior of the mean reward is
the Normal-Inverse-Gamma of :mod:`processor.bandits.normal_gamma`. Decisions are probability
matching over the exact propensities ``P(argmax = a)`` of the Student-t marginals, as for the
Beta form, so the logged propensity is exact.

The prior can be **pooled** (empirical Bayes): the prior mean of every arm of a key is the mean
of that key's rewards over its active arms, and the prior variance is their pooled variance with
the weight of ``2·prior_shape`` observations. The posterior is then scale-free (profit in cents
or in euros gives the same decisions) and an arm that has seen few rewards keeps the variance of
the key's rewards instead of the near-zero variance of, say, a run of unconverted impressions.
Everything stays a function of the additive statistics, so retractions stay exact.

Evidence decays with event time like discounted Thompson: ``γ^(Δt/unit)``, with the exact
retraction rule of :func:`decayed_add`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from processor.bandits.base import (
    BanditInputError,
    FloatArray,
    IntArray,
    KeyTable,
    index_arrays,
    inverse_cdf_select,
)
from processor.bandits.normal_gamma import (
    check_value_prior,
    clamp_moments,
    decay_log_rate,
    decayed_add,
    normal_gamma_posterior,
    pooled_prior,
    student_t_marginal,
    student_t_propensities,
    student_t_quantile,
)
from processor.errors import ConfigError, StateError

logger = logging.getLogger(__name__)

STAT_FIELDS = ("count", "total", "total_sq")


class KeyedNormalGamma(KeyTable):
    """Normal-Inverse-Gamma Thompson state for many keys: one row per key, one column per arm.

    Args:
        arm_names: Global column order of the arms.
        prior_mean: Prior mean μ0 (``"fixed"`` prior; the pooled prior uses it for empty keys).
        prior_count: κ0, the weight of the prior mean in observations (> 0).
        prior_shape: α0 (> 0); the prior variance weighs ``2·α0`` observations.
        prior_rate: β0 of the ``"fixed"`` prior; added to the pooled one as a variance floor.
        prior: ``"pooled"`` (empirical Bayes over the key's active arms) or ``"fixed"``.
        discount: Per-``discount_unit_ms`` decay of the statistics, in (0, 1]; 1 = stationary.
        discount_unit_ms: Time unit of the decay.
        capacity: Initial number of rows (grows by doubling).

    Example:
        >>> vb = KeyedNormalGamma(["low", "high"], prior="fixed")
        >>> rows = vb.rows(["campaign-1"] * 4)
        >>> vb.update(rows, [0, 0, 1, 1], [1.0, 3.0, -1.0, -2.0])
        >>> [round(float(m), 3) for m in vb.posterior_mean(rows[:1])[0]]
        [1.333, -1.0]
        >>> p = vb.propensities(rows[:1])[0]
        >>> bool(p[0] > 0.9) and abs(float(p.sum()) - 1.0) < 1e-12
        True
    """

    _fields: ClassVar[dict[str, tuple[Any, bool, float]]] = {
        "count": (np.float64, True, 0.0),
        "total": (np.float64, True, 0.0),
        "total_sq": (np.float64, True, 0.0),
        "last_event_ms": (np.int64, False, 0),
        "_pcache": (np.float64, True, 0.0),
        "_gcache": (np.int64, False, 0),
        "_pver": (np.int64, False, -1),
    }

    def __init__(
        self,
        arm_names: Sequence[str],
        prior_mean: float = 0.0,
        prior_count: float = 1.0,
        prior_shape: float = 1.0,
        prior_rate: float = 1e-9,
        prior: str = "pooled",
        discount: float = 1.0,
        discount_unit_ms: int = 3_600_000,
        capacity: int = 1024,
    ) -> None:
        check_value_prior(prior_mean, prior_count, prior_shape, prior_rate, prior)
        if not 0.0 < discount <= 1.0:
            msg = f"discount must be in (0, 1], got {discount}"
            raise ConfigError(msg)
        if discount_unit_ms <= 0:
            msg = f"discount_unit_ms must be positive, got {discount_unit_ms}"
            raise ConfigError(msg)
        super().__init__(arm_names, capacity)
        self.prior_mean = float(prior_mean)
        self.prior_count = float(prior_count)
        self.prior_shape = float(prior_shape)
        self.prior_rate = float(prior_rate)
        self.prior = prior
        self.discount = float(discount)
        self.discount_unit_ms = int(discount_unit_ms)

    def stats(self, rows: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(n, s, q)`` per row and arm (copies)."""
        r = np.asarray(rows, dtype=np.int64)
        return self._arr["count"][r], self._arr["total"][r], self._arr["total_sq"][r]

    @property
    def last_event_ms(self) -> IntArray:
        """(n_keys,) the decay clock: the largest event time applied."""
        return self._arr["last_event_ms"][: self.n_keys]

    def update(
        self,
        rows: ArrayLike,
        arms: ArrayLike,
        rewards: ArrayLike,
        event_time_ms: ArrayLike | None = None,
        weight: ArrayLike | None = None,
    ) -> None:
        """Apply a batch of rewards (``weight`` −1 retracts one applied earlier, see
        :func:`decayed_add`); the result does not depend on the order or batching.

        Raises:
            BanditInputError: Out-of-range rows / arms, non-finite rewards or weights; nothing
                changes.
        """
        r, a = index_arrays(self, rows, arms)
        x = np.asarray(rewards, dtype=np.float64)
        w = np.ones(r.shape) if weight is None else np.asarray(weight, dtype=np.float64)
        if x.shape != r.shape or w.shape != r.shape:
            msg = "rewards and weights must have one value per event"
            raise BanditInputError(msg)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w))):
            msg = "rewards and weights must be finite"
            raise BanditInputError(msg)
        if r.size == 0:
            return
        last = self._arr["last_event_ms"]
        if event_time_ms is None:
            times = last[r]  # no clock: nothing decays
        else:
            times = np.asarray(event_time_ms, dtype=np.int64)
            if times.shape != r.shape:
                msg = "event_time_ms must have one value per event"
                raise BanditInputError(msg)
        arr = self._arr
        log_rate = decay_log_rate(self.discount, self.discount_unit_ms)
        stats = [arr["count"], arr["total"], arr["total_sq"]]
        decayed_add([(stats, [np.ones_like(x), x, x * x], log_rate)], last, r, (r, a), w, times)
        if (w < 0).any():
            clamp_moments(arr["count"], arr["total"], arr["total_sq"], (r, a))
        np.add.at(arr["version"], r, 1)

    def posterior(self, rows: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """``(μn, κn, αn, βn)`` per row and arm (see the module docstring for the prior)."""
        r = np.asarray(rows, dtype=np.int64)
        n, s, q = self.stats(r)
        act = self._arr["active"][r]
        mu0, beta0 = pooled_prior(
            n, s, q, act, self.prior_mean, self.prior_shape, self.prior_rate, self.prior
        )
        return normal_gamma_posterior(
            n,
            s,
            q,
            mu0=mu0,
            kappa0=self.prior_count,
            alpha0=self.prior_shape,
            beta0=beta0,
        )

    def marginals(self, rows: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Student-t ``(location, scale, dof)`` of each arm's mean reward."""
        return student_t_marginal(*self.posterior(rows))

    def posterior_mean(self, rows: ArrayLike) -> FloatArray:
        """Posterior mean reward per row and arm (NaN for inactive arms)."""
        r = np.asarray(rows, dtype=np.int64)
        mu = self.posterior(r)[0]
        return np.where(self._arr["active"][r], mu, np.nan)

    def credible_interval(
        self, rows: ArrayLike, confidence: float = 0.95
    ) -> tuple[FloatArray, FloatArray]:
        """Equal-tailed credible interval of the mean reward (Student-t quantiles)."""
        if not 0.0 < confidence < 1.0:
            msg = f"confidence must be in (0, 1), got {confidence}"
            raise BanditInputError(msg)
        loc, scale, dof = self.marginals(rows)
        tail = (1.0 - confidence) / 2.0
        return (
            student_t_quantile(loc, scale, dof, tail),
            student_t_quantile(loc, scale, dof, 1.0 - tail),
        )

    def _refresh(self, r: IntArray) -> None:
        """Recompute the cached propensities and best-mean arm of rows whose version moved."""
        ver = self._arr["version"]
        pver = self._arr["_pver"]
        moved = pver[r] != ver[r]
        if moved.any():  # np.unique is ~10 µs even of nothing: skip it when all are cached
            stale = np.unique(r[moved])
            loc, scale, dof = self.marginals(stale)
            active = self._arr["active"][stale]
            self._arr["_pcache"][stale] = student_t_propensities(loc, scale, dof, active)
            # the Student-t location is the posterior mean μn
            self._arr["_gcache"][stale] = np.argmax(np.where(active, loc, -np.inf), axis=1)
            pver[stale] = ver[stale]

    def propensities(self, rows: ArrayLike) -> FloatArray:
        """(len(rows), K) exact P(arm is argmax of a posterior draw); cached per (row, version)."""
        r = np.asarray(rows, dtype=np.int64)
        self._refresh(r)
        return np.asarray(self._arr["_pcache"][r], dtype=np.float64)

    def select(self, rows: ArrayLike, uniforms: ArrayLike) -> tuple[IntArray, FloatArray]:
        """Probability-matching decisions: (arm, exact propensity) per row, one uniform each."""
        r = np.asarray(rows, dtype=np.int64)
        probs = self.propensities(r)
        arms = inverse_cdf_select(probs, uniforms)
        return arms, probs[np.arange(r.size), arms]

    def select_sampled(self, rows: ArrayLike, rng: np.random.Generator) -> IntArray:
        """Classic Thompson sampling: one Student-t draw of each arm's mean, argmax."""
        r = np.asarray(rows, dtype=np.int64)
        loc, scale, dof = self.marginals(r)
        theta = loc + scale * rng.standard_t(dof)
        theta = np.where(self._arr["active"][r], theta, -np.inf)
        return np.asarray(np.argmax(theta, axis=1), dtype=np.int64)

    def select_deterministic(self, rows: ArrayLike) -> tuple[IntArray, FloatArray]:
        """Best posterior mean among active arms (ties → lowest column) and its propensity;
        cached per (row, version) with the propensities."""
        r = np.asarray(rows, dtype=np.int64)
        self._refresh(r)
        arms = np.asarray(self._arr["_gcache"][r], dtype=np.int64)
        return arms, np.asarray(self._arr["_pcache"][r, arms], dtype=np.float64)

    def add_arm(self, name: str, key: str | None = None) -> int:
        """Enable arm ``name`` (no evidence) for ``key`` or every key; returns its column.

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
        for f in STAT_FIELDS:
            self._arr[f][fresh, col] = 0.0
        act[fresh, col] = True
        self._arr["_pver"][rows] = -1  # the pooled prior of every arm of the row changes
        return col

    def remove_arm(self, name: str, key: str | None = None) -> None:
        """Disable arm ``name`` for ``key`` (or all keys); one active arm must remain."""
        rows = self._deactivate(name, key)
        self._arr["_pver"][rows] = -1

    def reset_key(self, key: str) -> None:
        """Back to the prior with the default arms (creates the key if needed)."""
        self._init_rows(np.array([self._row_or_create(key)], dtype=np.int64))

    def get_key_state(self, key: str) -> dict[str, Any]:
        """JSON-able state of one key (active arms only)."""
        row = self._require_row(key)
        cols = np.flatnonzero(self._arr["active"][row])
        out: dict[str, Any] = {"arm_names": [self._arm_names[c] for c in cols]}
        for f in STAT_FIELDS:
            out[f] = self._arr[f][row, cols].tolist()
        out["version"] = int(self._arr["version"][row])
        out["last_event_ms"] = int(self._arr["last_event_ms"][row])
        return out

    def set_key_state(self, key: str, state: dict[str, Any]) -> None:
        """Exact inverse of :meth:`get_key_state` (creates the row and unknown arm columns).

        Raises:
            StateError: Malformed state.
        """
        try:
            names = [str(n) for n in state["arm_names"]]
            stats = [np.asarray(state[f], dtype=np.float64).reshape(1, -1) for f in STAT_FIELDS]
            version, last = int(state["version"]), int(state["last_event_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"malformed value-posterior state of key {key!r}: {exc}"
            raise StateError(msg) from exc
        row = np.array([self._row_or_create(key)], dtype=np.int64)
        self.set_rows_columns(row, names, *stats, version=[version], last_event_ms=[last])

    def set_rows_columns(
        self,
        rows: IntArray,
        arm_names: Sequence[str],
        count: ArrayLike,
        total: ArrayLike,
        total_sq: ArrayLike,
        *,
        version: ArrayLike,
        last_event_ms: ArrayLike,
    ) -> None:
        """Set the states of existing ``rows`` that list the same arms (one column per name)."""
        if not arm_names:
            msg = "a value-posterior state needs at least one arm"
            raise StateError(msg)
        cols = np.array(
            [self._col[n] if n in self._col else self._add_column(n) for n in arm_names],
            dtype=np.int64,
        )
        shape = (rows.shape[0], cols.shape[0])
        values = [np.asarray(v, dtype=np.float64) for v in (count, total, total_sq)]
        if any(v.shape != shape for v in values):
            msg = f"value-posterior state: expected {shape} statistics per field"
            raise StateError(msg)
        self._init_rows(rows)
        arr = self._arr
        at = (rows[:, None], cols[None, :])
        arr["active"][rows] = False
        arr["active"][at] = True
        for f, v in zip(STAT_FIELDS, values, strict=True):
            arr[f][at] = v
        arr["version"][rows] = version
        arr["last_event_ms"][rows] = last_event_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-able full state (config and every key)."""
        return {
            "prior_mean": self.prior_mean,
            "prior_count": self.prior_count,
            "prior_shape": self.prior_shape,
            "prior_rate": self.prior_rate,
            "prior": self.prior,
            "discount": self.discount,
            "discount_unit_ms": self.discount_unit_ms,
            **self._table_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyedNormalGamma:
        """Exact inverse of :meth:`to_dict`."""
        obj = cls(
            d["arm_names"],
            prior_mean=d["prior_mean"],
            prior_count=d["prior_count"],
            prior_shape=d["prior_shape"],
            prior_rate=d["prior_rate"],
            prior=d["prior"],
            discount=d["discount"],
            discount_unit_ms=d["discount_unit_ms"],
            capacity=max(len(d["keys"]), 1),
        )
        obj._load_table(d)
        return obj
