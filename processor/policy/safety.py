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
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, Field, model_validator
from pydantic.dataclasses import dataclass

from processor.config_types import (
    MODEL_CONFIG,
    FiniteFloat,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    config_errors,
)
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

_DAY_MS = 86_400_000
_DEFAULT_MIN_ROAS = 0.5
# Settings of 0.2 that the evidence-based guardrails replaced: accepted, warned about, unused.
_RETIRED = {
    "safety_violation_limit": "emergency is entered on evidence (emergency_confidence)",
    "emergency_recovery_outcomes": "emergency is left on evidence (recovery_confidence)",
    "monitor_alpha": "the monitor keeps decayed sums (monitor_half_life_ms)",
    "baseline_alpha": "the monitor keeps decayed sums (baseline_half_life_ms)",
}


def _hour_range(pair: tuple[int, int]) -> tuple[int, int]:
    start, end = pair
    if not (0 <= start <= 23 and 0 <= end <= 24):
        msg = f"bad hour range ({start}, {end}): start in 0..23, end in 0..24"
        raise ValueError(msg)
    return pair


def _pacing_profile(profile: tuple[float, ...]) -> tuple[float, ...]:
    if profile and (len(profile) != 24 or sum(profile) <= 0):
        msg = "should be 24 weights >= 0 (one per local hour), not all 0, or empty"
        raise ValueError(msg)
    return profile


HourRange = Annotated[tuple[Int, Int], AfterValidator(_hour_range)]


@config_errors("safety")
@dataclass(frozen=True, config=MODEL_CONFIG)
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

    max_budget_deviation: NonNegativeFloat = 0.2
    min_roas: NonNegativeFloat = _DEFAULT_MIN_ROAS
    min_roi_threshold: FiniteFloat | None = None
    max_cpa_multiplier: PositiveFloat = 2.0
    blacklisted_audiences: tuple[str, ...] = ()
    restricted_times: tuple[HourRange, ...] = ()
    max_budget_risk: NonNegativeFloat = 0.1
    restricted_action: Literal["block", "conservative"] = "block"
    overspend_tolerance: NonNegativeFloat = 0.1
    emergency_confidence: Annotated[FiniteFloat, Field(gt=0, lt=1)] = 0.95
    recovery_confidence: Annotated[FiniteFloat, Field(gt=0, lt=1)] = 0.5
    evidence_half_life_ms: NonNegativeInt = 7 * _DAY_MS
    cvr_prior_conversions: PositiveFloat = 1.0
    pacing: bool = True
    pacing_gain: PositiveFloat = 10.0
    pacing_profile: Annotated[tuple[NonNegativeFloat, ...], AfterValidator(_pacing_profile)] = ()
    safety_threshold: Annotated[FiniteFloat, Field(ge=0, le=1)] = 0.8
    monitor_half_life_ms: PositiveInt = 3_600_000
    baseline_half_life_ms: PositiveInt = _DAY_MS
    min_observations: NonNegativeInt = 100
    safety_violation_limit: Int | None = None
    emergency_recovery_outcomes: Int | None = None
    monitor_alpha: FiniteFloat | None = None
    baseline_alpha: FiniteFloat | None = None

    @model_validator(mode="after")
    def _check(self) -> SafetyConstraints:
        self._deprecations()
        if not self.recovery_confidence < self.emergency_confidence:
            msg = (
                "need 0 < recovery_confidence < emergency_confidence < 1, got "
                f"{self.recovery_confidence!r} and {self.emergency_confidence!r}"
            )
            raise ValueError(msg)
        return self

    def _deprecations(self) -> None:
        if self.min_roi_threshold is not None:
            msg = (
                "safety.min_roi_threshold is deprecated: it is a ROAS floor (revenue / spend), "
                "now named safety.min_roas"
            )
            warnings.warn(msg, DeprecationWarning, stacklevel=2)
            logger.warning(msg)
            if self.min_roas not in (_DEFAULT_MIN_ROAS, self.min_roi_threshold):
                msg = "min_roas and its deprecated name min_roi_threshold disagree"
                raise ValueError(msg)
            if self.min_roi_threshold < 0:
                msg = f"min_roi_threshold (min_roas) must be >= 0, got {self.min_roi_threshold!r}"
                raise ValueError(msg)
            object.__setattr__(self, "min_roas", float(self.min_roi_threshold))
        for name, why in _RETIRED.items():
            if getattr(self, name) is not None:
                msg = f"safety.{name} is no longer used and is ignored: {why}"
                warnings.warn(msg, DeprecationWarning, stacklevel=2)
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
            ConfigError: Unknown key or invalid value (one line per bad setting).
        """
        if not isinstance(mapping, Mapping):
            msg = f"safety must be a mapping, got {type(mapping).__name__}"
            raise ConfigError(msg)
        return cls(**{str(k): v for k, v in mapping.items()})

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
