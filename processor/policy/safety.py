"""Guardrail settings and the decision-side guardrails of the bidding policy.

The outcome side — evidence on each campaign's conversion rate, ROAS and CPA, emergency mode and
the performance monitor — is :mod:`processor.policy.monitor`; budget pacing is
:mod:`processor.policy.pacing`. Everything is struct-of-arrays, one row per campaign.
"""

from __future__ import annotations

import logging
import math
import warnings
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
    "min_roas",
    "max_cpa",
    "budget_deviation",
    "budget_risk",
    "budget_exhausted",
    "pacing",
)
(
    G_EMERGENCY,
    G_BLACKLIST,
    G_RESTRICTED,
    G_MIN_ROAS,
    G_MAX_CPA,
    G_DEVIATION,
    G_RISK,
    G_EXHAUSTED,
    G_PACING,
) = (np.int64(1 << i) for i in range(len(GUARDRAIL_NAMES)))

#: Outcome-side safety violations, in bit order.
VIOLATION_NAMES: tuple[str, ...] = ("overspend", "low_roas", "high_cpa")
V_OVERSPEND, V_LOW_ROAS, V_HIGH_CPA = (np.int64(1 << i) for i in range(len(VIOLATION_NAMES)))

_RESTRICTED_ACTIONS = ("block", "conservative")
_DAY_MS = 86_400_000
# Settings of 0.2 that the evidence-based guardrails replaced: accepted, warned about, unused.
_RETIRED = {
    "safety_violation_limit": "emergency is entered on evidence (emergency_confidence)",
    "emergency_recovery_outcomes": "emergency is left on evidence (recovery_confidence)",
    "monitor_alpha": "the monitor keeps decayed sums (monitor_half_life_ms)",
    "baseline_alpha": "the monitor keeps decayed sums (baseline_half_life_ms)",
}


@dataclass(frozen=True)
class SafetyConstraints:
    """Guardrail settings: the original design's names and defaults, now acting on evidence.

    Attributes:
        max_budget_deviation: A decision's budget stays within ``base_budget × (1 ± this)``.
        min_roas: ROAS floor (revenue / spend; ROI would be (revenue − spend) / spend). A
            campaign whose ROAS is below it with probability ``emergency_confidence`` goes into
            emergency mode.
        min_roi_threshold: Deprecated name of ``min_roas`` (it always meant revenue / spend).
        max_cpa_multiplier: A campaign whose CPA is above this × ``target_cpa`` with probability
            ``emergency_confidence`` goes into emergency mode; bids are capped at this ×
            ``target_cpa`` × the campaign's predicted conversion rate per won impression.
        blacklisted_audiences: Audiences that never get a bid.
        restricted_times: Local hour ranges ``(start, end)``, end exclusive, wrapping past
            midnight when ``start > end`` (``(22, 6)``). Local = UTC + ``utc_offset_minutes``.
        max_budget_risk: A decision's budget is at most this fraction of the daily budget.
        restricted_action: ``"block"`` or ``"conservative"`` for restricted hours.
        overspend_tolerance: Spend above ``budget × (1 + this)`` is an overspend violation.
        emergency_confidence: Posterior probability that a limit is crossed (ROAS below
            ``min_roas``, CPA above ``max_cpa_multiplier × target_cpa``) that enters emergency.
        recovery_confidence: Emergency ends when that probability falls below this.
        evidence_half_life_ms: Half-life of the guardrails' evidence in event time (0: never
            forget).
        cvr_prior_conversions: Weight, in conversions, of the prior of the predicted conversion
            rate (the request's ``base_bid / target_cpa``) in the CPA bid cap.
        pacing: Spread each campaign's ``daily_budget`` over its local day.
        pacing_gain: Exponent of the pacing law (see :mod:`processor.policy.pacing`).
        pacing_profile: 24 relative weights of the planned spend per local hour (empty: even).
        safety_threshold: The monitor flags degradation when recent reward is credibly below
            ``baseline − (1 − safety_threshold)·|baseline|``.
        monitor_half_life_ms: Half-life of the monitor's recent reward average.
        baseline_half_life_ms: Half-life of the monitor's baseline.
        min_observations: Recent (decayed) outcomes the monitor needs before it judges.
        safety_violation_limit: Retired (0.2: consecutive violations before emergency).
        emergency_recovery_outcomes: Retired (0.2: healthy outcomes that ended emergency).
        monitor_alpha: Retired (0.2: EWMA weight of the monitor).
        baseline_alpha: Retired (0.2: EWMA weight of the baseline).
    """

    max_budget_deviation: float = 0.2
    min_roas: float = 0.5
    min_roi_threshold: float | None = None
    max_cpa_multiplier: float = 2.0
    blacklisted_audiences: tuple[str, ...] = ()
    restricted_times: tuple[tuple[int, int], ...] = ()
    max_budget_risk: float = 0.1
    restricted_action: str = "block"
    overspend_tolerance: float = 0.1
    emergency_confidence: float = 0.95
    recovery_confidence: float = 0.5
    evidence_half_life_ms: int = 7 * _DAY_MS
    cvr_prior_conversions: float = 1.0
    pacing: bool = True
    pacing_gain: float = 10.0
    pacing_profile: tuple[float, ...] = ()
    safety_threshold: float = 0.8
    monitor_half_life_ms: int = 3_600_000
    baseline_half_life_ms: int = _DAY_MS
    min_observations: int = 100
    safety_violation_limit: int | None = None
    emergency_recovery_outcomes: int | None = None
    monitor_alpha: float | None = None
    baseline_alpha: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "blacklisted_audiences", tuple(self.blacklisted_audiences))
        object.__setattr__(
            self, "restricted_times", tuple((int(a), int(b)) for a, b in self.restricted_times)
        )
        object.__setattr__(self, "pacing_profile", tuple(float(w) for w in self.pacing_profile))
        self._deprecations()
        for name in ("max_budget_deviation", "max_budget_risk", "overspend_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                msg = f"safety.{name} must be a finite number >= 0, got {value!r}"
                raise ConfigError(msg)
        if not (math.isfinite(self.min_roas) and self.min_roas >= 0):
            msg = f"safety.min_roas must be a finite number >= 0, got {self.min_roas!r}"
            raise ConfigError(msg)
        if not (math.isfinite(self.max_cpa_multiplier) and self.max_cpa_multiplier > 0):
            msg = f"safety.max_cpa_multiplier must be > 0, got {self.max_cpa_multiplier!r}"
            raise ConfigError(msg)
        if not 0.0 < self.recovery_confidence < self.emergency_confidence < 1.0:
            msg = (
                "safety: need 0 < recovery_confidence < emergency_confidence < 1, got "
                f"{self.recovery_confidence!r} and {self.emergency_confidence!r}"
            )
            raise ConfigError(msg)
        if not 0.0 <= self.safety_threshold <= 1.0:
            msg = f"safety.safety_threshold must be in [0, 1], got {self.safety_threshold!r}"
            raise ConfigError(msg)
        for name in ("evidence_half_life_ms", "min_observations"):
            if getattr(self, name) < 0:
                msg = f"safety.{name} must be >= 0, got {getattr(self, name)}"
                raise ConfigError(msg)
        for name in ("monitor_half_life_ms", "baseline_half_life_ms"):
            if getattr(self, name) <= 0:
                msg = f"safety.{name} must be > 0, got {getattr(self, name)}"
                raise ConfigError(msg)
        for name in ("cvr_prior_conversions", "pacing_gain"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                msg = f"safety.{name} must be a finite number > 0, got {value!r}"
                raise ConfigError(msg)
        profile = self.pacing_profile
        if profile and (
            len(profile) != 24
            or not all(math.isfinite(w) and w >= 0 for w in profile)
            or sum(profile) <= 0
        ):
            msg = "safety.pacing_profile must be 24 weights >= 0 (one per local hour), not all 0"
            raise ConfigError(msg)
        if self.restricted_action not in _RESTRICTED_ACTIONS:
            msg = f"safety.restricted_action must be one of {_RESTRICTED_ACTIONS}"
            raise ConfigError(msg)
        for start, end in self.restricted_times:
            if not (0 <= start <= 23 and 0 <= end <= 24):
                msg = f"safety.restricted_times: bad hour range ({start}, {end})"
                raise ConfigError(msg)

    def _deprecations(self) -> None:
        if self.min_roi_threshold is not None:
            msg = (
                "safety.min_roi_threshold is deprecated: it is a ROAS floor (revenue / spend), "
                "now named safety.min_roas"
            )
            warnings.warn(msg, DeprecationWarning, stacklevel=4)
            logger.warning(msg)
            if self.min_roas != type(self).min_roas and self.min_roas != self.min_roi_threshold:
                msg = "safety: min_roas and its deprecated name min_roi_threshold disagree"
                raise ConfigError(msg)
            if not isinstance(self.min_roi_threshold, int | float):
                msg = f"safety.min_roi_threshold must be a number, got {self.min_roi_threshold!r}"
                raise ConfigError(msg)
            object.__setattr__(self, "min_roas", float(self.min_roi_threshold))
        for name, why in _RETIRED.items():
            if getattr(self, name) is not None:
                msg = f"safety.{name} is no longer used and is ignored: {why}"
                warnings.warn(msg, DeprecationWarning, stacklevel=4)
                logger.warning(msg)

    @property
    def evidence_log_rate(self) -> float:
        """Log decay per millisecond of the evidence (0: no decay)."""
        h = self.evidence_half_life_ms
        return -math.log(2.0) / h if h > 0 else 0.0

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
    evidence: I64,
    audience: npt.NDArray[Any],
    event_time_ms: I64,
    utc_offset_minutes: I64,
) -> tuple[B, B, I64]:
    """Arm-level guardrails, applied before money amounts are computed.

    Args:
        constraints: Settings.
        in_emergency: Campaign in emergency mode, per request.
        evidence: Campaign's evidence bits (:data:`VIOLATION_NAMES`), per request; an
            emergency decision lists the rules whose evidence holds the campaign there.
        audience: Audience per request.
        event_time_ms: Request time.
        utc_offset_minutes: Campaign's local-time offset.

    Returns:
        ``(force_conservative, blocked, guardrail_mask)`` per request.
    """
    n = in_emergency.shape[0]
    mask = np.where(in_emergency, G_EMERGENCY, np.int64(0))
    mask |= np.where(in_emergency & ((evidence & V_LOW_ROAS) != 0), G_MIN_ROAS, 0)
    mask |= np.where(in_emergency & ((evidence & V_HIGH_CPA) != 0), G_MAX_CPA, 0)
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
    predicted_cvr: F64,
) -> tuple[F64, F64, B, I64]:
    """Money-level guardrails: CPA bid cap, budget deviation, budget risk, exhausted budget.

    The CPA cap is ``max_cpa_multiplier × target_cpa × predicted_cvr``: the most an impression
    is worth at the CPA limit, given the conversions per won impression the campaign is
    predicted to get.

    Returns:
        ``(bid, budget, blocked, guardrail_mask)`` per request; a guardrail is in the mask
        only if it changed the amount.
    """
    c = constraints
    mask = np.zeros(bid.shape[0], dtype=np.int64)
    has_target = np.isfinite(target_cpa) & (target_cpa > 0) & np.isfinite(predicted_cvr)
    cap = np.where(has_target, c.max_cpa_multiplier * target_cpa * predicted_cvr, np.inf)
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


__all__ = [
    "GUARDRAIL_NAMES",
    "VIOLATION_NAMES",
    "SafetyConstraints",
    "arm_overrides",
    "clamp_money",
    "local_hours",
]
