"""Bidding policy: Thompson-sampled bid strategies under safety guardrails.

* :mod:`processor.policy.bidding` — config, batches, state, ``BidPolicy.decide`` / ``observe``;
* :mod:`processor.policy.safety` — guardrail settings, emergency mode, performance monitor;
* :mod:`processor.policy.hashing` — per-request uniforms (the decisions' only randomness);
* :mod:`processor.policy.simulator` — a seeded synthetic market for tests, demo and benchmarks.
"""

from __future__ import annotations

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
from processor.policy.simulator import MarketSimulator, run_closed_loop

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
