"""Keyed, vectorized bandit state for the stream stage: one row per key, one column per arm.

A batch of N events is a handful of numpy operations. Both classes keep the global column order
of arms (``arm_names``); ``active`` says which arms each key may play. Updates apply events in
the given order and equal the same events applied one by one (tested with Hypothesis).
"""

from __future__ import annotations

import itertools
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
    beta_credible_interval,
    index_arrays,
    inverse_cdf_select,
    ranks_within_groups,
    thompson_propensities,
    unique_rows,
)
from processor.bandits.exp3ix_keyed import KeyedExp3IX
from processor.errors import ConfigError, StateError

logger = logging.getLogger(__name__)

# KeyedExp3IX is defined next to the Exp3-IX object API (keeps modules small) and re-exported.
__all__ = ["KeyedExp3IX", "KeyedThompson"]


def _grouped_running_max(groups: IntArray, times: IntArray) -> IntArray:
    """Running max of ``times`` among earlier-or-equal elements of the same group (input order)."""
    n = groups.shape[0]
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    t = times[order]
    dense = np.concatenate([[0], np.cumsum(g[1:] != g[:-1])]).astype(np.int64)
    rel = t - t.min()
    span = int(rel.max()) + 1
    out = np.empty(n, dtype=np.int64)
    if (int(dense[-1]) + 1) * span < 2**62:
        # Offsetting each group above the previous one makes one global cummax a grouped one.
        offset = dense * span
        out[order] = np.maximum.accumulate(rel + offset) - offset + t.min()
        return out
    running = t.copy()  # pathological time spans: per-group loop
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1], [True]]))
    for s, e in itertools.pairwise(starts):
        running[s:e] = np.maximum.accumulate(t[s:e])
    out[order] = running
    return out


class KeyedThompson(KeyTable):
    """Beta-Bernoulli Thompson state for many keys: one row per key, one column per arm.

    ``successes``/``failures`` are counts beyond the prior (decayed when ``discount < 1``):
    α = prior_alpha + successes, β = prior_beta + failures.

    Args:
        arm_names: Global column order of the arms.
        prior_alpha: Beta prior α0 (> 0; propensities are tested to 1e-6 down to 0.01).
        prior_beta: Beta prior β0.
        discount: Per-``discount_unit_ms`` decay factor of the counts, in (0, 1]; 1 = stationary.
        discount_unit_ms: Time unit of the decay.
        capacity: Initial number of rows (grows by doubling).
    """

    _fields: ClassVar[dict[str, tuple[Any, bool, float]]] = {
        "successes": (np.float64, True, 0.0),
        "failures": (np.float64, True, 0.0),
        "last_event_ms": (np.int64, False, 0),
        "_pcache": (np.float64, True, 0.0),
        "_pver": (np.int64, False, -1),
    }

    def __init__(
        self,
        arm_names: Sequence[str],
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        discount: float = 1.0,
        discount_unit_ms: int = 3_600_000,
        capacity: int = 1024,
    ) -> None:
        for name, value in (("prior_alpha", prior_alpha), ("prior_beta", prior_beta)):
            if not (np.isfinite(value) and value > 0.0):
                msg = f"{name} must be a positive finite number, got {value}"
                raise ConfigError(msg)
        if not 0.0 < discount <= 1.0:
            msg = f"discount must be in (0, 1], got {discount}"
            raise ConfigError(msg)
        if discount_unit_ms <= 0:
            msg = f"discount_unit_ms must be positive, got {discount_unit_ms}"
            raise ConfigError(msg)
        super().__init__(arm_names, capacity)
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        self.discount = float(discount)
        self.discount_unit_ms = int(discount_unit_ms)

    @property
    def successes(self) -> FloatArray:
        """(n_keys, K) successes beyond the prior."""
        return self._arr["successes"][: self.n_keys]

    @property
    def failures(self) -> FloatArray:
        """(n_keys, K) failures beyond the prior."""
        return self._arr["failures"][: self.n_keys]

    @property
    def last_event_ms(self) -> IntArray:
        """(n_keys,) running max event time seen (the discount clock)."""
        return self._arr["last_event_ms"][: self.n_keys]

    def alpha(self, rows: ArrayLike) -> FloatArray:
        """Posterior α per row and arm."""
        return self.prior_alpha + self._arr["successes"][np.asarray(rows, dtype=np.int64)]

    def beta(self, rows: ArrayLike) -> FloatArray:
        """Posterior β per row and arm."""
        return self.prior_beta + self._arr["failures"][np.asarray(rows, dtype=np.int64)]

    def update(
        self,
        rows: ArrayLike,
        arms: ArrayLike,
        success: ArrayLike,
        event_time_ms: ArrayLike | None = None,
        weight: ArrayLike | None = None,
    ) -> None:
        """Apply a batch of reward events in order (equal to applying them one by one).

        ``success`` is in [0, 1] (1/0 for Bernoulli). With ``discount < 1`` a key's counts are
        multiplied by ``discount ** (Δt / discount_unit_ms)`` before each event that moves its
        clock forward; late events are not decayed and do not move the clock. Without event
        times each event advances the clock by one unit (classic per-step discounting).
        ``weight`` (default 1) scales each event's counts; −1 retracts an event applied before
        (counts that rounding would take below zero are clipped at zero).

        Raises:
            BanditInputError: on out-of-range rows/arms, a success outside [0, 1] or a
                non-finite weight; nothing changes.
        """
        r, a = index_arrays(self, rows, arms)
        s = np.asarray(success, dtype=np.float64)
        if s.shape != r.shape or not np.all((s >= 0.0) & (s <= 1.0)):
            msg = "success must be one value in [0, 1] per event"
            raise BanditInputError(msg)
        wt = np.ones(r.shape) if weight is None else np.asarray(weight, dtype=np.float64)
        if wt.shape != r.shape or not np.all(np.isfinite(wt)):
            msg = "weight must be one finite value per event"
            raise BanditInputError(msg)
        if r.size == 0:
            return
        last = self._arr["last_event_ms"]
        times: IntArray | None = None
        if event_time_ms is not None:
            times = np.asarray(event_time_ms, dtype=np.int64)
            if times.shape != r.shape:
                msg = "event_time_ms must have one value per event"
                raise BanditInputError(msg)
        elif self.discount < 1.0:
            times = last[r] + (ranks_within_groups(r) + 1) * self.discount_unit_ms
        succ, fail = self._arr["successes"], self._arr["failures"]
        if self.discount < 1.0 and times is not None:
            clock = np.maximum(_grouped_running_max(r, times), last[r])
            touched, inv = unique_rows(r, last.shape[0])
            final = last[touched]
            np.maximum.at(final, inv, times)
            log_d = np.log(self.discount) / self.discount_unit_ms
            row_decay = np.exp(log_d * (final - last[touched]).astype(np.float64))
            succ[touched] *= row_decay[:, None]
            fail[touched] *= row_decay[:, None]
            w = wt * np.exp(log_d * (final[inv] - clock).astype(np.float64))
            np.add.at(succ, (r, a), s * w)
            np.add.at(fail, (r, a), (1.0 - s) * w)
            last[touched] = final
        else:
            np.add.at(succ, (r, a), s * wt)
            np.add.at(fail, (r, a), (1.0 - s) * wt)
            if times is not None:
                np.maximum.at(last, r, times)
        if (wt < 0).any():
            succ[r, a] = np.maximum(succ[r, a], 0.0)
            fail[r, a] = np.maximum(fail[r, a], 0.0)
        np.add.at(self._arr["version"], r, 1)
        self._changes += 1

    def propensities(self, rows: ArrayLike) -> FloatArray:
        """(len(rows), K) exact P(arm is argmax of a posterior draw); inactive arms 0.

        Computed once per distinct (row, version) and cached, so repeated keys in a batch cost
        one quadrature per distinct key state.
        """
        r = np.asarray(rows, dtype=np.int64)
        ver = self._arr["version"]
        pver = self._arr["_pver"]
        moved = pver[r] != ver[r]
        if moved.any():  # np.unique is ~10 µs even of nothing: skip it when all are cached
            stale = np.unique(r[moved])
            self._arr["_pcache"][stale] = thompson_propensities(
                self.alpha(stale), self.beta(stale), self._arr["active"][stale]
            )
            pver[stale] = ver[stale]
        return np.asarray(self._arr["_pcache"][r], dtype=np.float64)

    def select(self, rows: ArrayLike, uniforms: ArrayLike) -> tuple[IntArray, FloatArray]:
        """Thompson sampling decisions for a batch: (arm index, propensity) per row.

        Thompson sampling is probability matching: it plays arm a with probability P(a is the
        argmax of a posterior draw). Drawing the arm from those exact probabilities by inverse
        CDF (active arms, column order) with one caller-supplied uniform in [0, 1) gives the
        chosen arm exactly the distribution of Thompson's argmax, plus its exact propensity for
        off-policy evaluation — and is deterministic given the state and the uniforms.
        """
        r = np.asarray(rows, dtype=np.int64)
        probs = self.propensities(r)
        arms = inverse_cdf_select(probs, uniforms)
        return arms, probs[np.arange(r.size), arms]

    def select_sampled(self, rows: ArrayLike, rng: np.random.Generator) -> IntArray:
        """Classic Thompson sampling (one Beta draw per arm, argmax) without propensities."""
        r = np.asarray(rows, dtype=np.int64)
        theta = rng.beta(self.alpha(r), self.beta(r))
        theta = np.where(self._arr["active"][r], theta, -1.0)
        return np.asarray(np.argmax(theta, axis=1), dtype=np.int64)

    def select_deterministic(self, rows: ArrayLike) -> tuple[IntArray, FloatArray]:
        """Best posterior mean among active arms (ties → lowest column) and its propensity."""
        r = np.asarray(rows, dtype=np.int64)
        mean = np.where(self._arr["active"][r], self.posterior_mean(r), -np.inf)
        arms = np.asarray(np.argmax(mean, axis=1), dtype=np.int64)
        return arms, self.propensities(r)[np.arange(r.size), arms]

    def posterior_mean(self, rows: ArrayLike) -> FloatArray:
        """α / (α + β) per row and arm (NaN for inactive arms)."""
        r = np.asarray(rows, dtype=np.int64)
        a, b = self.alpha(r), self.beta(r)
        return np.where(self._arr["active"][r], a / (a + b), np.nan)

    def credible_interval(
        self, rows: ArrayLike, confidence: float = 0.95
    ) -> tuple[FloatArray, FloatArray]:
        """Equal-tailed credible interval (exact Beta quantiles) per row and arm."""
        r = np.asarray(rows, dtype=np.int64)
        return beta_credible_interval(self.alpha(r), self.beta(r), confidence)

    def add_arm(self, name: str, key: str | None = None) -> int:
        """Enable arm ``name`` (at the prior) for ``key`` or for every key; returns its column.

        A new name gets a new column, inactive for the other keys when ``key`` is given.

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
        self._arr["successes"][fresh, col] = 0.0
        self._arr["failures"][fresh, col] = 0.0
        act[fresh, col] = True
        self._arr["_pver"][fresh] = -1
        self._changes += 1
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
        return {
            "arm_names": [self._arm_names[c] for c in cols],
            "successes": self._arr["successes"][row, cols].tolist(),
            "failures": self._arr["failures"][row, cols].tolist(),
            "version": int(self._arr["version"][row]),
            "last_event_ms": int(self._arr["last_event_ms"][row]),
        }

    def set_key_state(self, key: str, state: dict[str, Any]) -> None:
        """Exact inverse of :meth:`get_key_state` (creates the row and unknown arm columns)."""
        names = [str(n) for n in state["arm_names"]]
        if not names:
            msg = f"state of key {key!r} has no arms"
            raise StateError(msg)
        row = self._row_or_create(key)
        self._init_rows(np.array([row], dtype=np.int64))
        cols = [self._col[n] if n in self._col else self._add_column(n) for n in names]
        self._arr["active"][row] = False
        self._arr["active"][row, cols] = True
        self._arr["successes"][row, cols] = np.asarray(state["successes"], dtype=np.float64)
        self._arr["failures"][row, cols] = np.asarray(state["failures"], dtype=np.float64)
        self._arr["version"][row] = int(state["version"])
        self._arr["last_event_ms"][row] = int(state["last_event_ms"])
        self._changes += 1

    def get_key_states(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """:meth:`get_key_state` of many keys, with one array read per field."""
        rows = self.rows(keys)
        arr = self._arr
        names = self._arm_names
        active = arr["active"][rows]
        all_active = np.all(active, axis=1).tolist()
        succ: list[list[float]] = arr["successes"][rows].tolist()
        fail: list[list[float]] = arr["failures"][rows].tolist()
        version = arr["version"][rows].tolist()
        last = arr["last_event_ms"][rows].tolist()
        out: list[dict[str, Any]] = []
        for i in range(len(keys)):
            if all_active[i]:
                arm_names, s_i, f_i = list(names), succ[i], fail[i]
            else:
                cols = np.flatnonzero(active[i]).tolist()
                arm_names = [names[c] for c in cols]
                s_i = [succ[i][c] for c in cols]
                f_i = [fail[i][c] for c in cols]
            out.append(
                {
                    "arm_names": arm_names,
                    "successes": s_i,
                    "failures": f_i,
                    "version": int(version[i]),
                    "last_event_ms": int(last[i]),
                }
            )
        return out

    def set_key_states(self, keys: Sequence[str], states: Sequence[dict[str, Any]]) -> None:
        """:meth:`set_key_state` of many keys.

        States in the usual shape (every column active, in column order) are written with one
        assignment per field; any other goes through :meth:`set_key_state`, so the result is
        the same as restoring key by key.
        """
        names = list(self._arm_names)  # a state below may add a column: keep the old ones
        k = len(names)
        self.rows(keys)  # rows in the given order, as key-by-key restoring assigns them
        fast_keys: list[str] = []
        fast: list[dict[str, Any]] = []
        for key, state in zip(keys, states, strict=True):
            s, f = state.get("successes"), state.get("failures")
            if (
                state.get("arm_names") == names
                and isinstance(s, list)
                and isinstance(f, list)
                and len(s) == k
                and len(f) == k
            ):
                fast_keys.append(key)
                fast.append(state)
            else:
                self.set_key_state(key, state)
        if not fast:
            return
        try:
            succ = np.array([s["successes"] for s in fast], dtype=np.float64)
            fail = np.array([s["failures"] for s in fast], dtype=np.float64)
            version = np.array([int(s["version"]) for s in fast], dtype=np.int64)
            last = np.array([int(s["last_event_ms"]) for s in fast], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"malformed Thompson state: {exc}"
            raise StateError(msg) from exc
        self.set_rows_columns(self.rows(fast_keys), names, succ, fail, version, last)

    def set_rows_columns(
        self,
        rows: IntArray,
        arm_names: Sequence[str],
        successes: ArrayLike,
        failures: ArrayLike,
        version: ArrayLike,
        last_event_ms: ArrayLike,
    ) -> None:
        """Set the states of many existing ``rows`` that list the same arms, as columns.

        ``successes`` / ``failures`` have one row per row and one column per name in
        ``arm_names`` (the key's active arms; unknown names become new columns). Equals
        :meth:`set_key_state` per key.
        """
        if not arm_names:
            msg = "a Thompson state needs at least one arm"
            raise StateError(msg)
        cols = np.array(
            [self._col[n] if n in self._col else self._add_column(n) for n in arm_names],
            dtype=np.int64,
        )
        self._init_rows(rows)
        arr = self._arr
        at = (rows[:, None], cols[None, :])
        arr["active"][rows] = False
        arr["active"][at] = True
        arr["successes"][at] = successes
        arr["failures"][at] = failures
        arr["version"][rows] = version
        arr["last_event_ms"][rows] = last_event_ms
        self._changes += 1

    def export_rows(self, rows: ArrayLike) -> dict[str, np.ndarray]:
        """Copies of the arrays of ``rows`` (fast path for changelog writers)."""
        r = np.asarray(rows, dtype=np.int64)
        names = ("successes", "failures", "active", "version", "last_event_ms")
        return {n: self._arr[n][r].copy() for n in names}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able full state (config and every key)."""
        return {
            "prior_alpha": self.prior_alpha,
            "prior_beta": self.prior_beta,
            "discount": self.discount,
            "discount_unit_ms": self.discount_unit_ms,
            **self._table_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyedThompson:
        """Exact inverse of :meth:`to_dict`."""
        obj = cls(
            d["arm_names"],
            prior_alpha=d["prior_alpha"],
            prior_beta=d["prior_beta"],
            discount=d["discount"],
            discount_unit_ms=d["discount_unit_ms"],
            capacity=max(len(d["keys"]), 1),
        )
        obj._load_table(d)
        return obj
