"""Bidding policy: Thompson-sampled bid strategies under safety guardrails.

* :mod:`processor.policy.bidding` — config, batches, state, ``BidPolicy.decide`` / ``observe``;
* :mod:`processor.policy.safety` — guardrail settings, emergency mode, performance monitor;
* :mod:`processor.policy.hashing` — per-request uniforms (the decisions' only randomness);
* :mod:`processor.policy.simulator` — a seeded synthetic market for tests, demo and benchmarks.
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
from processor.policy.bidding import (
    GUARDRAIL_NAMES,
    ArmSpec,
    BiddingConfig,
    BiddingState,
    BidPolicy,
    ObserveResult,
)
from processor.policy.hashing import request_uniforms, seed_for
from processor.policy.safety import VIOLATION_NAMES, PerformanceMonitor, SafetyConstraints

if TYPE_CHECKING:
    from processor.policy.simulator import MarketSimulator, run_closed_loop


def __getattr__(name: str) -> Any:
    # The simulator pulls in scipy.stats (~1 s of imports); the stage never needs it.
    if name in ("MarketSimulator", "run_closed_loop"):
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
