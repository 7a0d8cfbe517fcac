"""0.2 baseline: copy of processor/policy/safety.py at 65714dd.

Safety guardrails, emergency mode and the performance monitor for the bidding policy.

Everything here is struct-of-arrays, one row per campaign (rows are shared with
the Thompson state), and every batch operation is order-exact: applying a batch
of outcomes gives the same counters, EWMAs and emergency flags as applying the
events one by one in batch order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.errors import ConfigError

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

#: Decision-side guardrails, in bit order (bit i of a decision's mask = name i).
GUARDRAIL_NAMES: tuple[str, ...] = (
    "emergency_mode",
    "blacklisted_audience",
    "restricted_hours",
    "min_roi",
    "max_cpa",
    "budget_deviation",
    "budget_risk",
    "budget_exhausted",
)
G_EMERGENCY, G_BLACKLIST, G_RESTRICTED, G_MIN_ROI, G_MAX_CPA, G_DEVIATION, G_RISK, G_EXHAUSTED = (
    np.int64(1 << i) for i in range(len(GUARDRAIL_NAMES))
)

#: Outcome-side safety violations, in bit order.
VIOLATION_NAMES: tuple[str, ...] = ("overspend", "low_roi", "high_cpa")
V_OVERSPEND, V_LOW_ROI, V_HIGH_CPA = (np.int64(1 << i) for i in range(len(VIOLATION_NAMES)))

_RESTRICTED_ACTIONS = ("block", "conservative")


@dataclass(frozen=True)
class SafetyConstraints:
    """Guardrail settings: the original design's names and defaults, plus its implicit knobs.

    Attributes:
        max_budget_deviation: A decision's budget stays within ``base_budget × (1 ± this)``.
        min_roi_threshold: Smoothed ROI (revenue / spend) below this is a violation, and a
            campaign below it gets the conservative arm.
        max_cpa_multiplier: Smoothed CPA above this × ``target_cpa`` is a violation; bids are
            capped at this × ``target_cpa``.
        blacklisted_audiences: Audiences that never get a bid.
        restricted_times: Local hour ranges ``(start, end)``, end exclusive, wrapping past
            midnight when ``start > end`` (``(22, 6)``). Local = UTC + the request's
            ``utc_offset_minutes``.
        max_budget_risk: A decision's budget is at most this fraction of the daily budget.
        safety_threshold: The monitor flags degradation when the fast reward EWMA falls below
            ``baseline − (1 − safety_threshold)·|baseline|``.
        safety_violation_limit: This many consecutive violations put a campaign in emergency.
        restricted_action: ``"block"`` or ``"conservative"`` for restricted hours.
        emergency_recovery_outcomes: Consecutive healthy outcomes that end emergency mode
            (0: only a ``clear_emergency`` command ends it).
        overspend_tolerance: Spend above ``budget × (1 + this)`` is an overspend violation.
        monitor_alpha: EWMA weight of the fast (ROI / CPA / reward) averages.
        baseline_alpha: EWMA weight of the slow reward baseline.
        min_observations: Outcomes a campaign needs before ROI / CPA / degradation checks apply.
    """

    max_budget_deviation: float = 0.2
    min_roi_threshold: float = 0.5
    max_cpa_multiplier: float = 2.0
    blacklisted_audiences: tuple[str, ...] = ()
    restricted_times: tuple[tuple[int, int], ...] = ()
    max_budget_risk: float = 0.1
    safety_threshold: float = 0.8
    safety_violation_limit: int = 5
    restricted_action: str = "block"
    emergency_recovery_outcomes: int = 50
    overspend_tolerance: float = 0.1
    monitor_alpha: float = 0.01
    baseline_alpha: float = 0.001
    min_observations: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "blacklisted_audiences", tuple(self.blacklisted_audiences))
        object.__setattr__(
            self, "restricted_times", tuple((int(a), int(b)) for a, b in self.restricted_times)
        )
        for name in ("max_budget_deviation", "max_budget_risk", "overspend_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                msg = f"safety.{name} must be a finite number >= 0, got {value!r}"
                raise ConfigError(msg)
        if not (math.isfinite(self.min_roi_threshold)):
            msg = f"safety.min_roi_threshold must be finite, got {self.min_roi_threshold!r}"
            raise ConfigError(msg)
        if not (math.isfinite(self.max_cpa_multiplier) and self.max_cpa_multiplier > 0):
            msg = f"safety.max_cpa_multiplier must be > 0, got {self.max_cpa_multiplier!r}"
            raise ConfigError(msg)
        if not 0.0 <= self.safety_threshold <= 1.0:
            msg = f"safety.safety_threshold must be in [0, 1], got {self.safety_threshold!r}"
            raise ConfigError(msg)
        for name in ("monitor_alpha", "baseline_alpha"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                msg = f"safety.{name} must be in (0, 1], got {value!r}"
                raise ConfigError(msg)
        if self.safety_violation_limit < 1:
            msg = f"safety.safety_violation_limit must be >= 1, got {self.safety_violation_limit}"
            raise ConfigError(msg)
        for name in ("emergency_recovery_outcomes", "min_observations"):
            if getattr(self, name) < 0:
                msg = f"safety.{name} must be >= 0, got {getattr(self, name)}"
                raise ConfigError(msg)
        if self.restricted_action not in _RESTRICTED_ACTIONS:
            msg = f"safety.restricted_action must be one of {_RESTRICTED_ACTIONS}"
            raise ConfigError(msg)
        for start, end in self.restricted_times:
            if not (0 <= start <= 23 and 0 <= end <= 24):
                msg = f"safety.restricted_times: bad hour range ({start}, {end})"
                raise ConfigError(msg)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> SafetyConstraints:
        """Build from a mapping (YAML section), rejecting unknown keys.

        Raises:
            ConfigError: Unknown key or invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            msg = f"safety: unknown settings {unknown}"
            raise ConfigError(msg)
        return cls(**dict(mapping))

    def restricted_hour_table(self) -> B:
        """24 flags, True for restricted local hours."""
        table = np.zeros(24, dtype=np.bool_)
        for start, end in self.restricted_times:
            hours = np.arange(24)
            table |= (
                (hours >= start) & (hours < end)
                if start <= end
                else (hours >= start) | (hours < end)
            )
        return table


def arm_overrides(
    constraints: SafetyConstraints,
    *,
    in_emergency: B,
    audience: npt.NDArray[Any],
    event_time_ms: I64,
    utc_offset_minutes: I64,
    roi_below_floor: B,
) -> tuple[B, B, I64]:
    """Arm-level guardrails, applied before money amounts are computed.

    Args:
        constraints: Settings.
        in_emergency: Campaign in emergency mode, per request.
        audience: Audience per request.
        event_time_ms: Request time.
        utc_offset_minutes: Campaign's local-time offset.
        roi_below_floor: Campaign's smoothed ROI is below ``min_roi_threshold``.

    Returns:
        ``(force_conservative, blocked, guardrail_mask)`` per request.
    """
    n = in_emergency.shape[0]
    mask = np.where(in_emergency, G_EMERGENCY, np.int64(0))
    blocked = np.zeros(n, dtype=np.bool_)
    if constraints.blacklisted_audiences:
        black = np.isin(
            np.asarray(audience, dtype=object),
            np.asarray(constraints.blacklisted_audiences, dtype=object),
        )
        blocked |= black
        mask |= np.where(black, G_BLACKLIST, 0)
    conservative = in_emergency.copy()
    if constraints.restricted_times:
        table = constraints.restricted_hour_table()
        restricted = table[local_hours(event_time_ms, utc_offset_minutes)]
        if constraints.restricted_action == "block":
            blocked |= restricted
        else:
            conservative |= restricted
        mask |= np.where(restricted, G_RESTRICTED, 0)
    low = roi_below_floor & ~in_emergency
    conservative |= low
    mask |= np.where(low, G_MIN_ROI, 0)
    return conservative, blocked, np.asarray(mask, dtype=np.int64)


def clamp_money(
    constraints: SafetyConstraints,
    *,
    bid: F64,
    budget: F64,
    base_budget: F64,
    daily_budget: F64,
    spent_today: F64,
    target_cpa: F64,
) -> tuple[F64, F64, B, I64]:
    """Money-level guardrails: CPA bid cap, budget deviation, budget risk, exhausted budget.

    Returns:
        ``(bid, budget, blocked, guardrail_mask)`` per request; a guardrail is in the mask
        only if it changed the amount.
    """
    c = constraints
    mask = np.zeros(bid.shape[0], dtype=np.int64)
    has_target = np.isfinite(target_cpa) & (target_cpa > 0)
    cap = np.where(has_target, c.max_cpa_multiplier * target_cpa, np.inf)
    capped = bid > cap
    bid = np.where(capped, cap, bid)
    mask |= np.where(capped, G_MAX_CPA, 0)
    lo = base_budget * (1.0 - c.max_budget_deviation)
    hi = base_budget * (1.0 + c.max_budget_deviation)
    clipped = np.clip(budget, lo, hi)
    mask |= np.where(clipped != budget, G_DEVIATION, 0)
    remaining = daily_budget - spent_today
    risk_cap = np.minimum(c.max_budget_risk * daily_budget, remaining)
    risky = clipped > risk_cap
    budget = np.where(risky, risk_cap, clipped)
    mask |= np.where(risky, G_RISK, 0)
    exhausted = remaining <= 0
    mask |= np.where(exhausted, G_EXHAUSTED, 0)
    return bid, np.maximum(budget, 0.0), exhausted, mask


def local_hours(event_time_ms: I64, utc_offset_minutes: I64) -> I64:
    """Local hour of day (0–23) of each event."""
    local_min = event_time_ms // 60_000 + utc_offset_minutes
    return np.asarray((local_min // 60) % 24, dtype=np.int64)


# The outcome-side state lives in processor.policy.monitor; re-exported for existing imports.
from tests.perf.policy_0_2.monitor import OutcomeChecks, PerformanceMonitor, SafetyState  # noqa: E402

__all__ = [
    "GUARDRAIL_NAMES",
    "VIOLATION_NAMES",
    "OutcomeChecks",
    "PerformanceMonitor",
    "SafetyConstraints",
    "SafetyState",
    "arm_overrides",
    "clamp_money",
    "local_hours",
]
