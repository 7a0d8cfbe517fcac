"""0.2 baseline: copy of processor/policy/monitor.py at 65714dd.

The performance monitor and per-campaign safety state (struct-of-arrays).

Outcome-side checks of :class:`~processor.policy.safety.SafetyConstraints`: consecutive violation
runs, emergency mode and the EWMA performance monitor, vectorized so that a batch of outcomes gives
the same counters, EWMAs and emergency flags as applying them one by one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.errors import StateError
from tests.perf.policy_0_2.safety import (
    V_HIGH_CPA,
    V_LOW_ROI,
    V_OVERSPEND,
    SafetyConstraints,
)

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


class _Groups:
    """Stable grouping of a batch by row: sorted order, group ids and per-event positions."""

    def __init__(self, rows: I64) -> None:
        self.order = np.argsort(rows, kind="stable")
        srows = rows[self.order]
        n = srows.shape[0]
        start = np.ones(n, dtype=np.bool_)
        start[1:] = srows[1:] != srows[:-1]
        self.starts = np.flatnonzero(start)
        self.gid = np.cumsum(start) - 1
        self.group_rows = srows[self.starts]
        self.gstart_of = self.starts[self.gid]
        self.pos = np.arange(n) - self.gstart_of
        self.ends = np.append(self.starts[1:], n) - 1


def _run_lengths(flag: B, g: _Groups, carry: I64) -> I64:
    """Length of the run of True ending at each (sorted) event, continuing ``carry`` per group."""
    idx = np.arange(flag.shape[0])
    last_false = np.maximum.accumulate(np.where(flag, g.gstart_of - 1, idx))
    run = np.where(flag, idx - last_false, 0)
    reaches_start = flag & (last_false == g.gstart_of - 1)
    return np.asarray(run + np.where(reaches_start, carry[g.gid], 0), dtype=np.int64)


def _ewma_sequential(x: F64, g: _Groups, init: F64, alpha: float) -> F64:
    """Order-exact per-group EWMA ``m ← (1 − α)m + αx`` after each sorted event.

    Works in blocks of positions so the scale factors stay below 2**10 (precision), with a
    dense (groups × positions) cumsum per block — a handful of numpy operations.
    """
    r = 1.0 - alpha
    out = np.empty_like(x)
    block = int(10 * math.log(2) / -math.log(r)) if r > 0 else 1
    block = max(block, 1)
    m_prev = init.copy()  # per group
    max_pos = int(g.pos.max()) if x.shape[0] else -1
    for b0 in range(0, max_pos + 1, block):
        sel = np.flatnonzero((g.pos >= b0) & (g.pos < b0 + block))
        gids = g.gid[sel]
        ug, dense_g = np.unique(gids, return_inverse=True)
        p = g.pos[sel] - b0
        width = int(p.max()) + 1
        mat = np.zeros((ug.shape[0], width))
        scale = r ** -np.arange(width, dtype=np.float64)
        mat[dense_g, p] = x[sel] * scale[p]
        csum = np.cumsum(mat, axis=1)
        rp = r ** p.astype(np.float64)
        vals = r * rp * m_prev[gids] + alpha * rp * csum[dense_g, p]
        out[sel] = vals
        last = np.zeros(ug.shape[0], dtype=np.int64)
        np.maximum.at(last, dense_g, p)
        is_last = p == last[dense_g]
        m_prev[gids[is_last]] = vals[is_last]
    return out


def _degraded(c: SafetyConstraints, recent: F64, base: F64, n: I64) -> B:
    margin = (1.0 - c.safety_threshold) * np.abs(base)
    return np.asarray((n >= c.min_observations) & (recent < base - margin), dtype=np.bool_)


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
    """Bitmask per event over :data:`VIOLATION_NAMES` (0 = healthy)."""
    in_emergency: B
    """Campaign's emergency flag after the event."""
    degraded: B
    """Monitor degradation flag after the event."""
    entered_rows: I64
    """Rows that were not in emergency before the batch and are after it."""
    left_rows: I64
    """Rows that were in emergency before the batch and are not after it."""


class PerformanceMonitor:
    """Per-campaign performance monitor: EWMA baseline, trend and degradation flag.

    Keeps debiased EWMAs (each EWMA ``m`` has a weight ``w`` from the same recurrence on
    ones, and reports ``m / w``): a fast reward average (``monitor_alpha``), a slow reward
    baseline (``baseline_alpha``), and fast spend / revenue / conversion averages for the
    smoothed ROI and CPA. ``trend = recent − baseline``. Updates are order-exact.
    """

    _FLOAT_FIELDS: tuple[str, ...] = (
        "fast",
        "fast_w",
        "base",
        "base_w",
        "spend",
        "revenue",
        "conv",
    )
    _INT_FIELDS: tuple[str, ...] = ("n",)

    def __init__(self) -> None:
        self.arrays: dict[str, npt.NDArray[Any]] = {
            **{k: np.zeros(0, dtype=np.float64) for k in self._FLOAT_FIELDS},
            **{k: np.zeros(0, dtype=np.int64) for k in self._INT_FIELDS},
        }

    def ensure_rows(self, n_rows: int) -> None:
        """Grow every array to at least ``n_rows`` rows (fresh rows are zero / healthy)."""
        for k, v in self.arrays.items():
            self.arrays[k] = _ensure(v, n_rows, 0)

    def _update_sorted(
        self, c: SafetyConstraints, g: _Groups, reward: F64, spend: F64, revenue: F64, conv: F64
    ) -> dict[str, F64]:
        """EWMA series after each event (inputs and outputs in ``g.order``); stores the last."""
        a = self.arrays
        gr = g.group_rows
        ones = np.ones(reward.shape[0])
        ma = c.monitor_alpha
        series = {
            "fast": _ewma_sequential(reward, g, a["fast"][gr], ma),
            "fast_w": _ewma_sequential(ones, g, a["fast_w"][gr], ma),
            "base": _ewma_sequential(reward, g, a["base"][gr], c.baseline_alpha),
            "base_w": _ewma_sequential(ones, g, a["base_w"][gr], c.baseline_alpha),
            "spend": _ewma_sequential(spend, g, a["spend"][gr], ma),
            "revenue": _ewma_sequential(revenue, g, a["revenue"][gr], ma),
            "conv": _ewma_sequential(conv, g, a["conv"][gr], ma),
        }
        count = a["n"][gr][g.gid] + g.pos + 1
        for k, v in series.items():
            a[k][gr] = v[g.ends]
        a["n"][gr] = count[g.ends]
        series["n"] = count.astype(np.float64)
        return series

    def roi(self, rows: I64) -> F64:
        """Smoothed ROI (revenue / spend); NaN before any spend."""
        a = self.arrays
        spend = a["spend"][rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(spend > 0, a["revenue"][rows] / np.where(spend > 0, spend, 1.0), np.nan)

    def cpa(self, rows: I64) -> F64:
        """Smoothed CPA (spend / conversions); inf with spend and no conversions, NaN unspent."""
        a = self.arrays
        spend, conv = a["spend"][rows], a["conv"][rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(
                conv > 0, spend / np.where(conv > 0, conv, 1.0), np.where(spend > 0, np.inf, np.nan)
            )

    def baseline(self, rows: I64) -> F64:
        """Slow EWMA of reward (the campaign's baseline); NaN before any outcome."""
        w = self.arrays["base_w"][rows]
        return np.where(w > 0, self.arrays["base"][rows] / np.where(w > 0, w, 1.0), np.nan)

    def recent(self, rows: I64) -> F64:
        """Fast EWMA of reward; NaN before any outcome."""
        w = self.arrays["fast_w"][rows]
        return np.where(w > 0, self.arrays["fast"][rows] / np.where(w > 0, w, 1.0), np.nan)

    def trend(self, rows: I64) -> F64:
        """``recent − baseline`` per row."""
        return self.recent(rows) - self.baseline(rows)

    def degraded(self, constraints: SafetyConstraints, rows: I64) -> B:
        """Degradation flag per row (see :class:`SafetyConstraints.safety_threshold`)."""
        return _degraded(
            constraints, self.recent(rows), self.baseline(rows), self.arrays["n"][rows]
        )

    def roi_below_floor(self, constraints: SafetyConstraints, rows: I64) -> B:
        """Campaigns whose smoothed ROI is below ``min_roi_threshold`` (after warm-up)."""
        c = constraints
        roi = self.roi(rows)
        return np.asarray(
            (self.arrays["n"][rows] >= c.min_observations) & (roi < c.min_roi_threshold),
            dtype=np.bool_,
        )


class SafetyState(PerformanceMonitor):
    """Per-campaign safety arrays: the performance monitor plus emergency flags and runs."""

    _INT_FIELDS = ("n", "violation_run", "healthy_run")

    def __init__(self) -> None:
        super().__init__()
        self.emergency = np.zeros(0, dtype=np.bool_)

    def ensure_rows(self, n_rows: int) -> None:
        """Grow every array to at least ``n_rows`` rows (fresh rows are zero / healthy)."""
        super().ensure_rows(n_rows)
        self.emergency = _ensure(self.emergency, n_rows, False)

    def observe(
        self,
        constraints: SafetyConstraints,
        rows: I64,
        reward: F64,
        spend: F64,
        revenue: F64,
        conversions: F64,
        budget: F64,
        target_cpa: F64,
    ) -> OutcomeChecks:
        """Apply a batch of outcomes in order: monitor EWMAs, violation checks, emergency.

        Args:
            constraints: Guardrail settings.
            rows: Campaign row per event.
            reward: Reward per event.
            spend: Spend per event.
            revenue: Revenue per event.
            conversions: Conversions per event.
            budget: The decision's budget per event (NaN = unknown: no overspend check).
            target_cpa: Target CPA per event (NaN = none: no CPA check).

        Returns:
            Per-event checks and the rows that entered / left emergency.
        """
        c = constraints
        n = rows.shape[0]
        empty = np.zeros(0, dtype=np.int64)
        if n == 0:
            z = np.zeros(0, dtype=np.bool_)
            return OutcomeChecks(np.zeros(0, dtype=np.int64), z, z, empty, empty)
        self.ensure_rows(int(rows.max()) + 1)
        a = self.arrays
        g = _Groups(rows)
        o = g.order
        gr = g.group_rows
        series = self._update_sorted(c, g, reward[o], spend[o], revenue[o], conversions[o])
        count = series["n"].astype(np.int64)
        warm = count >= c.min_observations
        sp, rev, cv = series["spend"], series["revenue"], series["conv"]
        with np.errstate(divide="ignore", invalid="ignore"):
            roi = np.where(sp > 0, rev / np.where(sp > 0, sp, 1.0), np.inf)
            cpa = np.where(cv > 0, sp / np.where(cv > 0, cv, 1.0), np.where(sp > 0, np.inf, 0.0))
        tgt = target_cpa[o]
        bud = budget[o]
        viol = np.zeros(n, dtype=np.int64)
        viol |= np.where(
            np.isfinite(bud) & (spend[o] > bud * (1.0 + c.overspend_tolerance)), V_OVERSPEND, 0
        )
        viol |= np.where(warm & (roi < c.min_roi_threshold), V_LOW_ROI, 0)
        viol |= np.where(
            warm & np.isfinite(tgt) & (tgt > 0) & (cpa > c.max_cpa_multiplier * tgt), V_HIGH_CPA, 0
        )
        bad = viol != 0
        vrun = _run_lengths(bad, g, a["violation_run"][gr])
        hrun = _run_lengths(~bad, g, a["healthy_run"][gr])
        idx = np.arange(n)
        enter = bad & (vrun >= c.safety_violation_limit)
        recov = c.emergency_recovery_outcomes
        leave = (~bad) & (hrun >= recov) if recov > 0 else np.zeros(n, dtype=np.bool_)
        last_e = np.maximum.accumulate(np.where(enter, idx, g.gstart_of - 1))
        last_l = np.maximum.accumulate(np.where(leave, idx, g.gstart_of - 1))
        before = self.emergency[gr]
        em = np.where(last_e == last_l, before[g.gid], last_e > last_l)
        with np.errstate(invalid="ignore"):
            recent = series["fast"] / series["fast_w"]
            base = series["base"] / series["base_w"]
        degraded = _degraded(c, recent, base, count)
        e = g.ends
        a["violation_run"][gr] = vrun[e]
        a["healthy_run"][gr] = hrun[e]
        after = em[e]
        self.emergency[gr] = after
        inv = np.empty(n, dtype=np.int64)
        inv[o] = idx
        entered = gr[~before & after]
        left = gr[before & ~after]
        if entered.size or left.size:
            logger.info("emergency mode: %s rows entered, %s left", entered.size, left.size)
        return OutcomeChecks(viol[inv], em[inv], degraded[inv], entered, left)

    def set_emergency(self, row: int, on: bool) -> None:
        """Force emergency on or off for one row; clears the run counters."""
        self.ensure_rows(row + 1)
        self.emergency[row] = on
        self.arrays["violation_run"][row] = 0
        self.arrays["healthy_run"][row] = 0

    def reset_row(self, row: int) -> None:
        """Forget everything about one row."""
        self.ensure_rows(row + 1)
        self.emergency[row] = False
        for v in self.arrays.values():
            v[row] = 0

    def get_row_state(self, row: int) -> dict[str, Any]:
        """JSON-able state of one row (floats survive JSON exactly via ``repr``)."""
        self.ensure_rows(row + 1)
        out: dict[str, Any] = {"emergency": bool(self.emergency[row])}
        for k in self._FLOAT_FIELDS:
            out[k] = float(self.arrays[k][row])
        for k in self._INT_FIELDS:
            out[k] = int(self.arrays[k][row])
        return out

    def get_row_states(self, rows: I64) -> list[dict[str, Any]]:
        """:meth:`get_row_state` of many rows, with one array read per field."""
        columns = {k: v.tolist() for k, v in self.get_rows_columns(rows).items()}
        names = list(columns)
        return [
            dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)
        ]

    def set_row_states(self, rows: I64, states: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`set_row_state` of many rows (one assignment per field).

        Raises:
            StateError: Missing or malformed fields.
        """
        try:
            columns: dict[str, list[Any]] = {"emergency": [bool(s["emergency"]) for s in states]}
            for k in self._FLOAT_FIELDS:
                columns[k] = [float(s[k]) for s in states]
            for k in self._INT_FIELDS:
                columns[k] = [int(s[k]) for s in states]
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"safety state is malformed: {exc}"
            raise StateError(msg) from exc
        self.set_rows_columns(rows, columns)

    @property
    def state_fields(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Names of the (float, int) fields of a row's state, besides ``emergency``."""
        return self._FLOAT_FIELDS, self._INT_FIELDS

    def get_rows_columns(self, rows: I64) -> dict[str, npt.NDArray[Any]]:
        """State of ``rows`` as one array per field (``emergency`` and :attr:`state_fields`)."""
        self.ensure_rows(int(rows.max()) + 1 if rows.size else 0)
        out: dict[str, npt.NDArray[Any]] = {"emergency": self.emergency[rows]}
        for k in (*self._FLOAT_FIELDS, *self._INT_FIELDS):
            out[k] = self.arrays[k][rows]
        return out

    def set_rows_columns(self, rows: I64, columns: Mapping[str, Any]) -> None:
        """Inverse of :meth:`get_rows_columns` (one assignment per field)."""
        self.ensure_rows(int(rows.max()) + 1 if rows.size else 0)
        self.emergency[rows] = columns["emergency"]
        for k in (*self._FLOAT_FIELDS, *self._INT_FIELDS):
            self.arrays[k][rows] = columns[k]

    def set_row_state(self, row: int, state: Mapping[str, Any]) -> None:
        """Restore one row from :meth:`get_row_state` output.

        Raises:
            StateError: Missing fields.
        """
        self.ensure_rows(row + 1)
        try:
            self.emergency[row] = bool(state["emergency"])
            for k in self._FLOAT_FIELDS:
                self.arrays[k][row] = float(state[k])
            for k in self._INT_FIELDS:
                self.arrays[k][row] = int(state[k])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"safety state for row {row} is malformed: {exc}"
            raise StateError(msg) from exc
