"""Closed-loop driver of the market simulator: decide → simulate → observe, batch by batch.

:func:`run_closed_loop` runs a :class:`~processor.policy.bidding.BidPolicy` against a
:class:`~processor.policy.simulator.MarketSimulator` and sums the run in a
:class:`ClosedLoopResult`. Both are re-exported by :mod:`processor.policy.simulator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from processor.policy.bidding import BiddingState, BidPolicy, OutcomeBatch, RequestBatch

if TYPE_CHECKING:
    from processor.policy.simulator import MarketSimulator


@dataclass(frozen=True)
class ClosedLoopResult:
    """Totals of a closed-loop run (see :func:`run_closed_loop`)."""

    decisions: int
    outcomes: int
    blocked: int
    total_reward: float
    violations: int
    emergency_entries: int

    @property
    def violation_rate(self) -> float:
        """Safety violations per outcome."""
        return self.violations / self.outcomes if self.outcomes else 0.0


def run_closed_loop(
    policy: BidPolicy,
    sim: MarketSimulator,
    n_requests: int,
    *,
    batch_size: int = 1000,
    rate_per_s: float = 100.0,
    learn: bool = True,
    start_ms: int = 0,
) -> ClosedLoopResult:
    """Decide → simulate → observe, batch by batch, on the default DESIGN batching rule.

    With ``learn=False`` decisions always come from a fresh state (uniform Thompson
    propensities, so uniformly random arms under the same guardrails) while outcomes still
    go through a separate state for reward and violation accounting: the random baseline.
    """
    decide_state = BiddingState(policy.config)
    observe_state = decide_state if learn else BiddingState(policy.config)
    totals = {"decisions": 0, "outcomes": 0, "blocked": 0, "violations": 0, "entries": 0}
    reward = 0.0
    t = start_ms
    for first in range(0, n_requests, batch_size):
        n = min(batch_size, n_requests - first)
        reqs = sim.bid_requests(n, t, rate_per_s)
        t = int(reqs[-1]["event_time"]) + 1
        decisions = policy.decide(RequestBatch.from_records(reqs), decide_state, decided_at_ms=t)
        records = decisions.to_records()
        outs = [o for o in sim.outcomes_for(records, reqs) if o is not None]
        res = policy.observe(OutcomeBatch.from_records(outs), observe_state)
        totals["decisions"] += n
        totals["outcomes"] += len(outs)
        totals["blocked"] += n - len(outs)
        totals["violations"] += int(res.violation.sum())
        totals["entries"] += len(res.entered_emergency)
        reward += float(res.reward.sum())
    return ClosedLoopResult(
        decisions=totals["decisions"],
        outcomes=totals["outcomes"],
        blocked=totals["blocked"],
        total_reward=reward,
        violations=totals["violations"],
        emergency_entries=totals["entries"],
    )
