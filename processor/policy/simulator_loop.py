"""Closed-loop driver of the market simulator: decide → simulate → observe, batch by batch.

:func:`run_closed_loop` runs a :class:`~processor.policy.bidding.BidPolicy` against a
:class:`~processor.policy.simulator.MarketSimulator` and sums the run in a
:class:`ClosedLoopResult`. Both are re-exported by :mod:`processor.policy.simulator`.

Late conversions (a simulator with ``conversion_delay_ms``) arrive as restated outcomes of
requests already answered. ``restated="replace"`` does what the reward join does (DESIGN §3b):
it retracts the outcome applied before (``observe(..., weight=-1)``) and applies the latest one,
so every decision counts once with its latest outcome. ``"count"`` observes the restatement as
one more outcome (what the stage does without the join: spend and the impression are counted
twice); ``"ignore"`` drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from processor.policy.batches import OutcomeBatch, RequestBatch

if TYPE_CHECKING:
    from processor.policy.bidding import BidPolicy
    from processor.policy.simulator import MarketSimulator

RESTATED = ("replace", "count", "ignore")

Observer = Callable[[list[dict[str, Any]], Any, list[dict[str, Any]], Any], None]
"""Called per batch with (requests, decisions, outcomes applied, observe result)."""


@dataclass(frozen=True)
class ClosedLoopResult:
    """Totals of a closed-loop run (see :func:`run_closed_loop`)."""

    decisions: int
    outcomes: int
    blocked: int
    total_reward: float
    violations: int
    emergency_entries: int
    emergency_decisions: int = 0
    spend: float = 0.0
    revenue: float = 0.0
    conversions: int = 0
    restated: int = 0

    @property
    def violation_rate(self) -> float:
        """Safety violations per outcome."""
        return self.violations / self.outcomes if self.outcomes else 0.0

    @property
    def profit(self) -> float:
        """Revenue − spend of the run (the latest outcome of each decision)."""
        return self.revenue - self.spend

    @property
    def emergency_share(self) -> float:
        """Share of decisions made in emergency mode."""
        return self.emergency_decisions / self.decisions if self.decisions else 0.0


def run_closed_loop(
    policy: BidPolicy,
    sim: MarketSimulator,
    n_requests: int,
    *,
    batch_size: int = 1000,
    rate_per_s: float = 100.0,
    learn: bool = True,
    start_ms: int = 0,
    restated: str = "replace",
    observer: Observer | None = None,
) -> ClosedLoopResult:
    """Decide → simulate → observe, batch by batch, on the default DESIGN batching rule.

    With ``learn=False`` decisions always come from a fresh state (uniform Thompson
    propensities, so uniformly random arms under the same guardrails) while outcomes still
    go through a separate state for reward and violation accounting: the random baseline.
    Restated outcomes due by the end of a batch are applied with that batch, and those still
    pending at the end of the run after the last one (see the module docstring for
    ``restated``).
    """
    if restated not in RESTATED:
        msg = f"restated must be one of {RESTATED}, got {restated!r}"
        raise ValueError(msg)
    decide_state = policy.new_state()
    observe_state = decide_state if learn else policy.new_state()
    totals = dict.fromkeys(
        ("decisions", "outcomes", "blocked", "violations", "entries", "emergency", "restated"), 0
    )
    money = {"reward": 0.0, "spend": 0.0, "revenue": 0.0, "conversions": 0.0}
    applied: dict[str, dict[str, Any]] = {}

    def apply(outs: list[dict[str, Any]], late: list[dict[str, Any]]) -> Any:
        back: list[dict[str, Any]] = []
        if restated == "replace":
            # the reward join's rule: each decision's latest outcome, exactly once
            fresh, extra = list(outs), []
            position = {o["request_id"]: i for i, o in enumerate(outs)}
            for o in late:
                i = position.get(o["request_id"])
                if i is not None:
                    fresh[i] = o
                else:
                    if o["request_id"] in applied:
                        back.append(applied[o["request_id"]])
                    extra.append(o)
            batch = back + fresh + extra
            applied.update((o["request_id"], o) for o in fresh + extra)
        else:
            batch = outs + (late if restated == "count" else [])
        weight = np.r_[-np.ones(len(back)), np.ones(len(batch) - len(back))]
        outcomes = OutcomeBatch.from_records(batch)
        if back:
            res = policy.observe(outcomes, observe_state, weight=weight)
        else:  # also drives policies without signed outcomes (the 0.2 baseline)
            res = policy.observe(outcomes, observe_state)
        for o, w in zip(batch, weight.tolist(), strict=True):
            money["spend"] += w * o["spend"]
            money["revenue"] += w * o["revenue"]
            money["conversions"] += w * o["conversions"]
        money["reward"] += float(np.dot(weight, res.reward))
        totals["violations"] += int(res.violation[len(back) :].sum())
        totals["entries"] += len(res.entered_emergency)
        totals["restated"] += len(late)
        return batch, res

    t = start_ms
    for first in range(0, n_requests, batch_size):
        n = min(batch_size, n_requests - first)
        reqs = sim.bid_requests(n, t, rate_per_s)
        t = int(reqs[-1]["event_time"]) + 1
        decisions = policy.decide(RequestBatch.from_records(reqs), decide_state, decided_at_ms=t)
        records = decisions.to_records()
        totals["emergency"] += sum(r["mode"] == "emergency" for r in records)
        outs = [o for o in sim.outcomes_for(records, reqs) if o is not None]
        batch, res = apply(outs, sim.restatements(t))
        totals["decisions"] += n
        totals["outcomes"] += len(outs)
        totals["blocked"] += n - len(outs)
        if observer is not None:
            observer(reqs, decisions, batch, res)
    pending = sim.restatements(2**62)  # conversions still on their way at the end of the run
    if pending:
        apply([], pending)
    return ClosedLoopResult(
        decisions=totals["decisions"],
        outcomes=totals["outcomes"],
        blocked=totals["blocked"],
        total_reward=money["reward"],
        violations=totals["violations"],
        emergency_entries=totals["entries"],
        emergency_decisions=totals["emergency"],
        spend=money["spend"],
        revenue=money["revenue"],
        conversions=round(money["conversions"]),
        restated=totals["restated"],
    )


def held_back_at(outcomes_seen: Any, held: Any, share: float = 0.9) -> int:
    """When a campaign was held back for good: the outcomes it had at the first of its decisions
    from which at least ``share`` of its decisions are held back (−1 if never).

    Args:
        outcomes_seen: Per decision of the campaign, in order, its outcomes applied before it.
        held: Per decision, whether a guardrail held it back (emergency, CPA cap, ...).
        share: Share of the decisions from there on that must be held back.
    """
    flags = np.asarray(held, dtype=np.float64)
    if flags.size == 0:
        return -1
    suffix = np.cumsum(flags[::-1])[::-1] / np.arange(flags.size, 0, -1)
    ok = np.flatnonzero((suffix >= share) & (flags > 0))
    return int(np.asarray(outcomes_seen)[ok[0]]) if ok.size else -1
