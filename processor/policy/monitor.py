"""Per-campaign evidence, emergency mode and the performance monitor (struct-of-arrays).

Every campaign keeps additive sufficient statistics of its outcomes — outcomes, won impressions,
clicks, conversions, spend, revenue — decayed with event time (``evidence_half_life_ms``), and the
guardrails are credible statements about them, never counts of consecutive noisy outcomes:

* **Conversions per unit of spend** λ get the Gamma–Poisson posterior
  ``Gamma(½ + conversions, rate = spend)`` (Jeffreys prior): spend is the exposure.
* **CPA** = 1/λ. ``P(CPA > m·target_cpa) = P(λ < 1/(m·target_cpa))`` is a regularized lower
  incomplete gamma. An outcome without a conversion only adds exposure; it is never an
  "infinite CPA".
* **ROAS** = λ·v̄ with v̄ = revenue / conversions, the campaign's value per conversion (its own
  noise is not modelled, so the check needs at least one conversion with revenue).
* **Emergency** is entered when either probability reaches ``emergency_confidence`` and left when
  both fall below ``recovery_confidence``, evaluated on the statistics after each batch of
  outcomes (the stage's commit-cycle batch; replay uses the same batching). A ``set_emergency``
  command holds a campaign in emergency until ``clear_emergency``.
* The **performance monitor** compares a recent reward average (``monitor_half_life_ms``) with a
  slow baseline (``baseline_half_life_ms``), both decayed sums, and flags degradation when the
  recent mean's upper 97.7% normal bound is below ``baseline − (1 − safety_threshold)·|baseline|``.

Statistics take signed weights: an outcome observed with weight −1 after weight +1 leaves them as
they were (exactly for counts, to rounding for sums of money); the flags are then re-evaluated
from the statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import special

from processor.bandits.base import unique_rows
from processor.bandits.normal_gamma import decayed_add
from processor.errors import StateError

if TYPE_CHECKING:
    from processor.policy.safety import SafetyConstraints

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

EVIDENCE_FIELDS = ("outcomes", "won", "clicks", "conversions", "spend", "revenue")
MONITOR_FIELDS = ("recent_n", "recent_sum", "recent_sq", "base_n", "base_sum", "base_sq")
FLOAT_FIELDS = (*EVIDENCE_FIELDS, *MONITOR_FIELDS, "target_cpa")
INT_FIELDS = ("clock_ms", "evidence")
FLAG_FIELDS = ("emergency", "manual")
_JEFFREYS = 0.5
_MONITOR_Z = 2.0
_V_LOW_ROAS, _V_HIGH_CPA = 2, 4  # VIOLATION_NAMES bits (safety.py imports this module)
_LN2 = float(np.log(2.0))


def _ensure(arr: npt.NDArray[Any], n: int, fill: Any) -> npt.NDArray[Any]:
    if arr.shape[0] >= n:
        return arr
    grown = np.full(max(n, 2 * arr.shape[0], 16), fill, dtype=arr.dtype)
    grown[: arr.shape[0]] = arr
    return grown


@dataclass
class OutcomeChecks:
    """Per-event results of :meth:`SafetyState.observe` (in the batch's event order)."""

    violations: I64
    """Bitmask per event over :data:`VIOLATION_NAMES`: overspend by this outcome, low ROAS and
    high CPA when the campaign's evidence after the batch says so (0 = healthy)."""
    in_emergency: B
    """Campaign's emergency flag after the batch."""
    degraded: B
    """Monitor degradation flag after the batch."""
    entered_rows: I64
    """Rows that were not in emergency before the batch and are after it."""
    left_rows: I64
    """Rows that were in emergency before the batch and are not after it."""


class PerformanceMonitor:
    """Per-campaign arrays: decayed evidence sums, the monitor's sums and a clock.

    The arrays live in :attr:`arrays` (one entry per name in :data:`FLOAT_FIELDS` and
    :data:`INT_FIELDS`), one row per campaign, shared with the Thompson rows.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, npt.NDArray[Any]] = {
            **{k: np.zeros(0, dtype=np.float64) for k in FLOAT_FIELDS},
            **{k: np.zeros(0, dtype=np.int64) for k in INT_FIELDS},
        }
        self.arrays["target_cpa"] = np.full(0, np.nan)

    def ensure_rows(self, n_rows: int) -> None:
        """Grow every array to at least ``n_rows`` rows (fresh rows have no evidence)."""
        if self.arrays["clock_ms"].shape[0] >= n_rows:  # they grow together
            return
        for k, v in self.arrays.items():
            self.arrays[k] = _ensure(v, n_rows, np.nan if k == "target_cpa" else 0)

    def _add(
        self,
        c: SafetyConstraints,
        rows: I64,
        weight: F64,
        times: I64,
        evidence: Sequence[F64],
        reward: F64,
    ) -> None:
        a = self.arrays
        ones = np.ones_like(reward)
        recent = -_LN2 / c.monitor_half_life_ms
        base = -_LN2 / c.baseline_half_life_ms
        groups = [
            ([a[k] for k in EVIDENCE_FIELDS], list(evidence), c.evidence_log_rate),
            ([a["recent_n"], a["recent_sum"], a["recent_sq"]], [ones, reward, reward**2], recent),
            ([a["base_n"], a["base_sum"], a["base_sq"]], [ones, reward, reward**2], base),
        ]
        decayed_add(groups, a["clock_ms"], rows, (rows,), weight, times)
        if (weight < 0).any():
            touched = np.unique(rows)
            for k in (*EVIDENCE_FIELDS, "recent_n", "base_n"):
                a[k][touched] = np.maximum(a[k][touched], 0.0)

    def roas(self, rows: I64) -> F64:
        """Point ROAS (revenue / spend) of the evidence; NaN before any spend."""
        a = self.arrays
        spend = a["spend"][rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(spend > 0, a["revenue"][rows] / np.where(spend > 0, spend, 1.0), np.nan)

    def cpa(self, rows: I64) -> F64:
        """Point CPA (spend / conversions); inf with spend and no conversions, NaN unspent."""
        a = self.arrays
        spend, conv = a["spend"][rows], a["conversions"][rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(
                conv > 0, spend / np.where(conv > 0, conv, 1.0), np.where(spend > 0, np.inf, np.nan)
            )

    def predicted_cvr(self, c: SafetyConstraints, rows: I64, prior_cvr: F64) -> F64:
        """Posterior mean conversions per won impression, Beta prior centred on ``prior_cvr``.

        The prior weighs ``cvr_prior_conversions`` conversions; ``prior_cvr`` (e.g. the
        request's ``base_bid / target_cpa``) is clipped to [1e-6, 1].
        """
        a = self.arrays
        # as clip(nan_to_num(prior_cvr, nan=1), 1e-6, 1) (±inf clip to the ends) without
        # nan_to_num, ~15 µs a call, paid per partition and loop
        p0 = np.clip(prior_cvr, 1e-6, 1.0)
        p0 = np.where(np.isnan(p0), 1.0, p0)
        c0 = c.cvr_prior_conversions
        return np.asarray(
            (c0 + a["conversions"][rows]) / (c0 / p0 + a["won"][rows]), dtype=np.float64
        )

    def limit_probabilities(self, c: SafetyConstraints, rows: I64) -> tuple[F64, F64]:
        """``(P(ROAS < min_roas), P(CPA > max_cpa_multiplier × target_cpa))`` per row.

        0 where there is no evidence to judge by: no spend; for ROAS, no conversion with
        revenue (the value of a conversion is unknown) or ``min_roas`` 0; for CPA, no target.
        """
        a = self.arrays
        spend, conv, rev = a["spend"][rows], a["conversions"][rows], a["revenue"][rows]
        target = a["target_cpa"][rows]
        shape = _JEFFREYS + conv
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            roas_x = np.where(
                (conv > 0) & (rev > 0), spend * c.min_roas * conv / np.where(rev > 0, rev, 1.0), 0.0
            )
            cpa_x = np.where(
                np.isfinite(target) & (target > 0),
                spend / (c.max_cpa_multiplier * np.where(target > 0, target, 1.0)),
                0.0,
            )
        p_roas = np.where(roas_x > 0, special.gammainc(shape, roas_x), 0.0)
        p_cpa = np.where(cpa_x > 0, special.gammainc(shape, cpa_x), 0.0)
        return np.asarray(p_roas, dtype=np.float64), np.asarray(p_cpa, dtype=np.float64)

    def degraded(self, c: SafetyConstraints, rows: I64) -> B:
        """Recent reward credibly below the baseline (see the module docstring)."""
        a = self.arrays
        n_r, n_b = a["recent_n"][rows], a["base_n"][rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            m_r = a["recent_sum"][rows] / n_r
            var_r = np.maximum(a["recent_sq"][rows] / n_r - m_r**2, 0.0)
            m_b = a["base_sum"][rows] / n_b
            upper = m_r + _MONITOR_Z * np.sqrt(var_r / n_r)
            margin = (1.0 - c.safety_threshold) * np.abs(m_b)
            out = (n_r >= c.min_observations) & (n_b > 0) & (upper < m_b - margin)
        return np.asarray(out, dtype=np.bool_)


class SafetyState(PerformanceMonitor):
    """Per-campaign safety arrays: the evidence and monitor, emergency flags and evidence bits."""

    def __init__(self) -> None:
        super().__init__()
        self.emergency = np.zeros(0, dtype=np.bool_)
        self.manual = np.zeros(0, dtype=np.bool_)

    def ensure_rows(self, n_rows: int) -> None:
        """Grow every array to at least ``n_rows`` rows (fresh rows are healthy)."""
        super().ensure_rows(n_rows)
        self.emergency = _ensure(self.emergency, n_rows, False)
        self.manual = _ensure(self.manual, n_rows, False)

    def observe(
        self,
        constraints: SafetyConstraints,
        rows: I64,
        *,
        reward: F64,
        spend: F64,
        revenue: F64,
        conversions: F64,
        clicks: F64,
        won: F64,
        budget: F64,
        target_cpa: F64,
        event_time_ms: I64,
        weight: F64 | None = None,
    ) -> OutcomeChecks:
        """Apply a batch of outcomes, then re-evaluate the touched campaigns' evidence.

        Args:
            constraints: Guardrail settings.
            rows: Campaign row per event.
            reward: Reward per event (the monitor's input).
            spend: Spend per event.
            revenue: Revenue per event.
            conversions: Conversions per event.
            clicks: Clicks per event.
            won: 1.0 for a won impression.
            budget: The decision's budget per event (NaN = unknown: no overspend check).
            target_cpa: Target CPA per event (NaN = none); the latest applied one is kept.
            event_time_ms: Event time per event (the decay clock).
            weight: +1 (apply, the default) or −1 (retract) per event.

        Returns:
            Per-event checks and the rows that entered / left emergency.
        """
        c = constraints
        n = rows.shape[0]
        empty = np.zeros(0, dtype=np.int64)
        if n == 0:
            z = np.zeros(0, dtype=np.bool_)
            return OutcomeChecks(empty, z, z, empty, empty)
        self.ensure_rows(int(rows.max()) + 1)
        w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
        evidence = [np.ones(n), won, clicks, conversions, spend, revenue]
        self._add(c, rows, w, event_time_ms, evidence, reward)
        has_target = (w > 0) & np.isfinite(target_cpa)
        if has_target.any():  # the last applied target of each campaign wins
            self.arrays["target_cpa"][rows[has_target]] = target_cpa[has_target]
        touched = unique_rows(rows, self.emergency.shape[0])[0]
        before = self.emergency[touched].copy()
        self._evaluate(c, touched)
        after = self.emergency[touched]
        over = np.isfinite(budget) & (w > 0) & (spend > budget * (1.0 + c.overspend_tolerance))
        flags = np.where(over, np.int64(1), np.int64(0)) | self.arrays["evidence"][rows]
        degraded = self.degraded(c, rows)
        entered, left = touched[~before & after], touched[before & ~after]
        if entered.size or left.size:
            logger.info("emergency mode: %s campaigns entered, %s left", entered.size, left.size)
        return OutcomeChecks(flags, self.emergency[rows].copy(), degraded, entered, left)

    def _evaluate(self, c: SafetyConstraints, rows: I64) -> None:
        """Emergency and evidence bits of ``rows`` from their statistics (with hysteresis)."""
        p_roas, p_cpa = self.limit_probabilities(c, rows)
        p = np.maximum(p_roas, p_cpa)
        manual = self.manual[rows]
        was = self.emergency[rows] & ~manual
        on = (p >= c.emergency_confidence) | (was & (p >= c.recovery_confidence))
        threshold = np.where(on, c.recovery_confidence, c.emergency_confidence)
        bits = np.where(p_roas >= threshold, _V_LOW_ROAS, 0) | np.where(
            p_cpa >= threshold, _V_HIGH_CPA, 0
        )
        self.arrays["evidence"][rows] = bits
        self.emergency[rows] = manual | on

    def set_emergency(self, row: int, on: bool) -> None:
        """Force emergency on (held until cleared) or off for one row (a control command)."""
        self.ensure_rows(row + 1)
        self.emergency[row] = on
        self.manual[row] = on
        self.arrays["evidence"][row] = 0

    def reset_row(self, row: int) -> None:
        """Forget everything about one row."""
        self.ensure_rows(row + 1)
        self.emergency[row] = False
        self.manual[row] = False
        for k, v in self.arrays.items():
            v[row] = np.nan if k == "target_cpa" else 0

    @property
    def state_fields(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """Names of the (float, int, flag) fields of a row's state."""
        return FLOAT_FIELDS, INT_FIELDS, FLAG_FIELDS

    def get_rows_columns(self, rows: I64) -> dict[str, npt.NDArray[Any]]:
        """State of ``rows`` as one array per field (flags, floats, ints)."""
        self.ensure_rows(int(rows.max()) + 1 if rows.size else 0)
        out: dict[str, npt.NDArray[Any]] = {"emergency": self.emergency[rows]}
        out["manual"] = self.manual[rows]
        for k in (*FLOAT_FIELDS, *INT_FIELDS):
            out[k] = self.arrays[k][rows]
        return out

    def set_rows_columns(self, rows: I64, columns: Mapping[str, Any]) -> None:
        """Inverse of :meth:`get_rows_columns` (one assignment per field)."""
        self.ensure_rows(int(rows.max()) + 1 if rows.size else 0)
        self.emergency[rows] = columns["emergency"]
        self.manual[rows] = columns["manual"]
        for k in (*FLOAT_FIELDS, *INT_FIELDS):
            self.arrays[k][rows] = columns[k]

    def get_row_states(self, rows: I64) -> list[dict[str, Any]]:
        """JSON-able state of each row (floats survive JSON exactly; NaN target → null)."""
        cols = self.get_rows_columns(rows)
        lists = {k: v.tolist() for k, v in cols.items()}
        lists["target_cpa"] = [None if x != x else x for x in lists["target_cpa"]]
        names = list(lists)
        return [dict(zip(names, vals, strict=True)) for vals in zip(*lists.values(), strict=True)]

    def get_row_state(self, row: int) -> dict[str, Any]:
        """:meth:`get_row_states` of one row."""
        return self.get_row_states(np.array([row], dtype=np.int64))[0]

    def set_row_states(self, rows: I64, states: Sequence[Mapping[str, Any]]) -> None:
        """Inverse of :meth:`get_row_states`; a 0.2 state (EWMA monitor) restores its emergency
        flag with no evidence (the 0.2 averages are not sufficient statistics).

        Raises:
            StateError: Missing or malformed fields.
        """
        try:
            cols: dict[str, list[Any]] = {k: [] for k in (*FLAG_FIELDS, *FLOAT_FIELDS, *INT_FIELDS)}
            for s in states:
                legacy = "fast" in s and "outcomes" not in s
                cols["emergency"].append(bool(s["emergency"]))
                cols["manual"].append(False if legacy else bool(s["manual"]))
                for k in FLOAT_FIELDS:
                    default = np.nan if k == "target_cpa" else 0.0
                    v = default if legacy else s[k]
                    cols[k].append(default if v is None else float(v))
                for k in INT_FIELDS:
                    cols[k].append(0 if legacy else int(s[k]))
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"safety state is malformed: {exc}"
            raise StateError(msg) from exc
        self.set_rows_columns(rows, {k: np.asarray(v) for k, v in cols.items()})

    def set_row_state(self, row: int, state: Mapping[str, Any]) -> None:
        """:meth:`set_row_states` of one row."""
        self.set_row_states(np.array([row], dtype=np.int64), [state])
