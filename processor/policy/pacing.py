"""Budget pacing: spread each campaign's daily budget over its local day.

Every request carries the campaign's ``daily_budget``, ``spent_today`` (since local midnight)
and its local time (``event_time`` + ``utc_offset_minutes``). The plan is the share ``F(h)`` of
the day's budget that should be spent by local time ``h`` — even over the day, or following
``safety.pacing_profile`` (24 hourly weights, e.g. the campaign's traffic curve). The controller
compares what is left of the budget with what is left of the plan,

    ratio = (1 − spent_today / daily_budget) / (1 − F(h)),

and takes part in an auction with probability ``min(1, ratio ** pacing_gain)``; a request it
skips is blocked with the guardrail ``pacing``. Behind plan (ratio ≥ 1) nothing is throttled;
ahead of plan the participation falls steeply (gain 10: 7% ahead of the remaining plan halves
it). ``spent_today`` is the integral of the spend rate, so this proportional law on the budget
that is left is an integral law on the spend rate: a campaign that could spend twice its budget
settles at about half participation, about 7% ahead of the remaining plan, and meets its budget
at the end of its day. The law needs no state of its own: every input is on the request, so the
throttle of a decision is reproducible from the request alone (replay, audit), and nothing has
to reach the changelog on the request path (the engine writes a campaign's state when outcomes
or commands change it, not when it decides). The skip itself is one hashed uniform per request
(``STREAM_PACING``), so it is reproducible too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from processor.policy.safety import SafetyConstraints

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_END = 1e-9  # plan share left below which the day is over (spend what is left)


def local_day_fraction(event_time_ms: I64, utc_offset_minutes: I64) -> F64:
    """Fraction of the local day elapsed at each event, in [0, 1)."""
    local = event_time_ms + utc_offset_minutes * 60_000
    return np.asarray(np.mod(local, _DAY_MS) / _DAY_MS, dtype=np.float64)


def planned_share(constraints: SafetyConstraints, day_fraction: F64) -> F64:
    """``F(h)``: share of the daily budget planned to be spent by each local time."""
    profile = constraints.pacing_profile
    if not profile:
        return day_fraction
    weights = np.asarray(profile, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
    hours = np.arange(25, dtype=np.float64)
    return np.asarray(np.interp(day_fraction * 24.0, hours, cum), dtype=np.float64)


def participation(
    constraints: SafetyConstraints,
    *,
    daily_budget: F64,
    spent_today: F64,
    event_time_ms: I64,
    utc_offset_minutes: I64,
) -> F64:
    """Probability of taking part in each auction (1.0 when pacing is off or behind plan)."""
    n = daily_budget.shape[0]
    if not constraints.pacing or n == 0:
        return np.ones(n)
    plan_left = 1.0 - planned_share(
        constraints, local_day_fraction(event_time_ms, utc_offset_minutes)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        budget_left = np.where(daily_budget > 0, 1.0 - spent_today / daily_budget, 0.0)
        ratio = np.where(plan_left > _END, np.maximum(budget_left, 0.0) / plan_left, np.inf)
        rate = np.minimum(1.0, ratio**constraints.pacing_gain)
    return np.asarray(np.where(np.isnan(rate), 1.0, rate), dtype=np.float64)
