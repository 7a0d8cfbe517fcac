"""Bidding policy: Thompson-sampled bid strategies under safety guardrails.

* :mod:`processor.policy.bidding` — ``BidPolicy.decide`` / ``observe`` / ``contribution``;
* :mod:`processor.policy.bidding_config` — ``BiddingConfig`` (arms, priors, reward, objective);
* :mod:`processor.policy.state` — ``BiddingState``: both arm posteriors and the safety arrays;
* :mod:`processor.policy.batches` — request, outcome and decision columns and their checks;
* :mod:`processor.policy.safety` — guardrail settings and the decision-side guardrails;
* :mod:`processor.policy.monitor` — evidence (credible bounds), emergency mode, the monitor;
* :mod:`processor.policy.pacing` — budget pacing over the local day;
* :mod:`processor.policy.contribution` — what an outcome adds, for exact retraction;
* :mod:`processor.policy.hashing` — per-request uniforms (the decisions' only randomness);
* :mod:`processor.policy.simulator` — a seeded synthetic ad market for tests, demo and benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from processor.policy.batches import (
    MODES,
    DecisionBatch,
    OutcomeBatch,
    RequestBatch,
    validate_outcomes,
    validate_requests,
)
from processor.policy.bidding import BidPolicy, ObserveResult
from processor.policy.bidding_config import ArmSpec, BiddingConfig
from processor.policy.contribution import Contribution
from processor.policy.hashing import request_uniforms, seed_for
from processor.policy.monitor import PerformanceMonitor
from processor.policy.safety import GUARDRAIL_NAMES, VIOLATION_NAMES, SafetyConstraints
from processor.policy.state import BiddingState

if TYPE_CHECKING:
    from processor.policy.simulator import CampaignSpec, MarketSimulator, run_closed_loop


def __getattr__(name: str) -> Any:
    # The simulator pulls in scipy.stats (~1 s of imports); the stage never needs it.
    if name in ("CampaignSpec", "MarketSimulator", "run_closed_loop"):
        from processor.policy import simulator

        return getattr(simulator, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "GUARDRAIL_NAMES",
    "MODES",
    "VIOLATION_NAMES",
    "ArmSpec",
    "BidPolicy",
    "BiddingConfig",
    "BiddingState",
    "CampaignSpec",
    "Contribution",
    "DecisionBatch",
    "MarketSimulator",
    "ObserveResult",
    "OutcomeBatch",
    "PerformanceMonitor",
    "RequestBatch",
    "SafetyConstraints",
    "request_uniforms",
    "run_closed_loop",
    "seed_for",
    "validate_outcomes",
    "validate_requests",
]
