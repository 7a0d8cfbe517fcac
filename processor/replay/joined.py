"""The reward join's posterior changes for a logged outcome stream, outcome by outcome (audit).

The decision audit (:mod:`processor.replay.verify`) replays each campaign's outcomes one at a
time. With the reward join on, an outcome applies zero (a duplicate), one (joined, unknown) or two
(a restatement: retract, apply) Thompson updates, and which depends on the other outcomes of its
request before it. :func:`join_events` runs the live join per input partition over the outcomes
in offset order — against the logged decisions, in chunks of ``max_batch_events`` — and returns
each outcome's updates, so the audit can apply them at that outcome's step.

Limits (they show up as mismatches, never hidden): the live batches are approximated by chunks of
``max_batch_events``, so a late / expired verdict right at the edge of the window can differ;
``max_entries`` evictions are not reproduced (the audit's log has no cap); an outcome dead-lettered
live because its arm was inactive after a control command is joined here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.config import AppConfig
from processor.join import RewardJoin
from processor.policy.bidding import BiddingState, BidPolicy, OutcomeBatch
from processor.replay.source import RawRecord

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclasses.dataclass(frozen=True)
class JoinedEvents:
    """Every outcome's Thompson updates: rows ``start[j]:end[j]`` of ``events`` / ``weights``."""

    events: OutcomeBatch | None
    weights: F64
    start: I64
    end: I64

    def effective(self) -> I64:
        """Outcomes that made at least one update (the others changed nothing)."""
        return np.flatnonzero(self.end > self.start)

    def subset(self, outcomes: I64) -> JoinedEvents:
        """The same updates, for ``outcomes`` only (renumbered 0..)."""
        return JoinedEvents(self.events, self.weights, self.start[outcomes], self.end[outcomes])

    def of(self, outcomes: I64) -> tuple[OutcomeBatch | None, F64]:
        """The updates of ``outcomes`` (indices), in that order."""
        if self.events is None or not outcomes.size:
            return None, np.zeros(0)
        lo, hi = self.start[outcomes], self.end[outcomes]
        spans = zip(lo.tolist(), hi.tolist(), strict=True)
        rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in spans])
        if not rows.size:
            return None, np.zeros(0)
        return self.events.take(rows), self.weights[rows]


def join_events(
    config: AppConfig,
    outcomes: Sequence[tuple[RawRecord, Mapping[str, Any]]],
    decisions: Sequence[tuple[RawRecord, Mapping[str, Any]]],
) -> JoinedEvents:
    """The live join's updates for each of ``outcomes`` (in their given order)."""
    policy = BidPolicy(config.bidding, config.safety)
    state = BiddingState(config.bidding)
    names = {str(rec["arm"]) for _, rec in outcomes} | {str(d["arm"]) for _, d in decisions}
    for arm in sorted(names - set(state.thompson.arm_names)):
        state.thompson.add_arm(arm)  # every name gets a column, so arms compare by name
    attribution = dataclasses.replace(config.attribution, max_entries=None)
    by_part: dict[int, list[int]] = {}
    for j, (raw, _) in enumerate(outcomes):
        by_part.setdefault(raw.partition, []).append(j)
    pieces: list[tuple[I64, OutcomeBatch, F64]] = []
    size = config.max_batch_events
    for p, idx in sorted(by_part.items()):
        idx.sort(key=lambda j: outcomes[j][0].offset)
        join = RewardJoin(attribution)
        join.log_records([d for raw, d in decisions if raw.partition == p], policy, state)
        for first in range(0, len(idx), size):
            chunk = np.array(idx[first : first + size], dtype=np.int64)
            batch = OutcomeBatch.from_records([outcomes[j][1] for j in chunk.tolist()])
            state.rows(batch.campaign_id)  # every arm active: only structural checks remain
            ok = np.flatnonzero(
                np.array([r is None for r in policy.validate_outcomes(batch, state)], dtype=bool)
            )
            if not ok.size:
                continue
            res = join.process(batch.take(ok), policy, state)
            if res.events is not None:
                pieces.append((chunk[ok[res.event_outcome]], res.events, res.weights))
    n = len(outcomes)
    if not pieces:
        zeros = np.zeros(n, dtype=np.int64)
        return JoinedEvents(None, np.zeros(0), zeros, zeros)
    owner = np.concatenate([o for o, _, _ in pieces])
    events = _concat([e for _, e, _ in pieces])
    weights = np.concatenate([w for _, _, w in pieces])
    order = np.argsort(owner, kind="stable")  # an outcome's updates stay in their order
    owner = owner[order]
    start = np.searchsorted(owner, np.arange(n), side="left")
    end = np.searchsorted(owner, np.arange(n), side="right")
    return JoinedEvents(events.take(order), weights[order], start, end)


def _concat(batches: list[OutcomeBatch]) -> OutcomeBatch:
    if len(batches) == 1:
        return batches[0]
    columns = {
        f.name: np.concatenate([getattr(b, f.name) for b in batches])
        for f in dataclasses.fields(OutcomeBatch)
    }
    return OutcomeBatch(**columns)
