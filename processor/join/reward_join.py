"""The reward join of one input partition: bid outcomes in, posterior changes out.

:class:`RewardJoin` turns a batch of validated outcomes into the Thompson updates the join rule
(:mod:`processor.join.rule`) asks for — an :class:`OutcomeBatch` of events with weights +1
(apply) and −1 (retract an earlier contribution) — plus the outcomes to dead-letter, and keeps
the partition's :class:`~processor.join.log.DecisionLog` up to date. Decisions enter the log via
:meth:`RewardJoin.log_decisions` right after the policy made them (live) or from the logged
bid-decisions topic (replay).

Keys: a request is identified by a 64-bit hash of its ``request_id`` (FNV-1a + splitmix64, the
policy's stable hash on a stream of its own, independent of the policy seed). Two different
request ids in the log share a hash with probability about n² / 2⁶⁵ — 3.5 · 10⁻⁷ for a
partition holding 3.6 million entries — and would be treated as one request. Campaigns are
compared by a 32-bit hash (an outcome naming another campaign escapes ``arm_mismatch`` with
probability 2⁻³²).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from processor.join.log import DecisionLog
from processor.join.rule import (
    ARM_MISMATCH,
    STATUS_NAMES,
    UNKNOWN_REJECTED,
    Contribution,
    Entries,
    JoinInput,
    JoinPlan,
    plan_join,
)
from processor.policy.hashing import request_hashes
from processor.state.joinlog import (
    F_FOREIGN,
    F_SUCCESS,
    F_WON,
    MAX_COUNT,
    NO_TIME,
    ROW,
    take_rows,
)

if TYPE_CHECKING:
    from processor.config import AttributionConfig
    from processor.policy.bidding import BiddingState, BidPolicy, DecisionBatch, OutcomeBatch

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint64]
U4 = npt.NDArray[np.uint32]

INVALID = -1
"""Status of an outcome the log cannot store (dead-lettered before the join)."""
STREAM_REQUEST = 0x4A4F494E  # "JOIN": the request-id key
STREAM_CAMPAIGN = 0x4A4F494F


def request_keys(request_ids: Any) -> U8:
    """The log key of each request id."""
    return request_hashes(0, np.asarray(request_ids, dtype=np.str_), STREAM_REQUEST)


def campaign_hashes(campaign_ids: Any) -> U4:
    """32-bit hash of each campaign id (compared, never used as a key)."""
    h = request_hashes(0, np.asarray(campaign_ids, dtype=np.str_), STREAM_CAMPAIGN)
    return (h >> np.uint64(32)).astype(np.uint32)


def contributions(policy: BidPolicy, outcomes: OutcomeBatch) -> Contribution:
    """What applying each outcome adds to the state (:meth:`BidPolicy.contribution`): stored in
    the log, so that a restatement can take exactly that back (``observe(..., weight=-1)``)."""
    c = policy.contribution(outcomes)
    return Contribution(
        reward=c.reward,
        success=c.success,
        spend=c.spend,
        revenue=c.revenue,
        clicks=c.clicks,
        conversions=c.conversions,
        won=c.won,
    )


@dataclass
class JoinResult:
    """What one batch of outcomes did."""

    status: npt.NDArray[np.int8]
    """:data:`processor.join.rule` status per outcome."""
    rejected: list[tuple[int, str, str]]
    """``(outcome index, error class, reason)`` to dead-letter."""
    events: OutcomeBatch | None
    weights: F64
    applied: I64
    """Outcomes whose contribution was applied (in event order)."""
    event_outcome: I64
    """The outcome that caused each event."""
    counts: dict[str, int] = field(default_factory=dict)


MAX_PENDING = 100_000
"""Queued decisions that trigger an insert without a read (a caller that never reads)."""


class RewardJoin:
    """The reward join and decision log of one input partition.

    Args:
        config: The ``attribution`` settings.
    """

    def __init__(self, config: AttributionConfig) -> None:
        self.config = config
        self._store = DecisionLog(config.window_ms + config.grace_ms, config.max_entries)
        self.fast_path = True  # tests switch it off to check both paths give one result
        self._campaign_hash: dict[str, int] = {}
        # decisions logged since the last read of the log, inserted together on that read
        self._pending: list[tuple[Any, Any, I64, F64, I64, U8]] = []
        self._pending_rows = 0

    @property
    def log(self) -> DecisionLog:
        """The decision log, with every decision logged so far in it.

        :meth:`log_decisions` only queues its batch: each per-partition insert has a fixed
        cost (~0.1 ms) that at moderate rates is most of a loop's work for a few decisions, and
        nothing reads the log before the next outcome batch or commit. Until the log is read
        the queued batches change nothing its readers could see (its clocks move only with
        outcomes and settling, both of which read it first), so one insert of all of them
        leaves the log as the inserts one by one would (tested).
        """
        if self._pending:
            self._flush()
        return self._store

    @property
    def pending_decisions(self) -> int:
        """Decisions queued for the log's next read (see :attr:`log`)."""
        return self._pending_rows

    def _campaigns(self, campaign_ids: Any) -> U4:
        """:func:`campaign_hashes`, remembered per campaign (a partition has few campaigns)."""
        ids = campaign_ids.tolist()
        cache = self._campaign_hash
        try:
            return np.array(list(map(cache.__getitem__, ids)), dtype=np.uint32)
        except KeyError:
            if len(cache) > 1_000_000:
                cache.clear()
            missing = [c for c in set(ids) if c not in cache]
            cache.update(zip(missing, campaign_hashes(missing).tolist(), strict=True))
            return np.array(list(map(cache.__getitem__, ids)), dtype=np.uint32)

    # ---- outcomes ---------------------------------------------------------------------------
    def process(self, outcomes: OutcomeBatch, policy: BidPolicy, state: BiddingState) -> JoinResult:
        """Join a batch of validated outcomes (arrival order); updates the log."""
        cfg = self.config
        log = self.log
        evicted = log.settle()
        n = len(outcomes)
        over = (outcomes.clicks > MAX_COUNT) | (outcomes.conversions > MAX_COUNT)
        keys = request_keys(outcomes.request_id)
        batch = JoinInput(
            key=keys,
            campaign=self._campaigns(outcomes.campaign_id),
            arm=_columns(outcomes.arm, state),
            t=np.asarray(outcomes.event_time, dtype=np.int64),
            contribution=contributions(policy, outcomes),
        )
        sel = np.flatnonzero(~over)
        sub = _take_input(batch, sel) if over.any() else batch
        uniq, group = np.unique(sub.key, return_inverse=True)
        group = group.astype(np.int64).reshape(-1)
        found, rid, rows = log.lookup(uniq)
        entries = Entries(
            found=found,
            t=rows["t"],
            t_out=rows["t_out"],
            arm=rows["arm"].astype(np.int64),
            campaign=rows["campaign"],
            contribution=Contribution.of_rows(rows),
        )
        plan = plan_join(
            sub,
            group,
            entries,
            late_before=log.late_before(cfg.grace_ms),
            window_ms=cfg.window_ms,
            accept_unknown=cfg.unknown == "accept",
            apply_late=cfg.late == "apply",
            distinct=uniq.shape[0] == len(sub) and self.fast_path,
        )
        self._write(plan, sub, outcomes.propensity[sel], uniq, rid, rows)
        if plan.t_max != NO_TIME:
            log.observe_time(plan.t_max)
        status = np.full(n, INVALID, dtype=np.int8)
        status[sel] = plan.status
        rejected = [
            (int(j), "value", f"clicks or conversions above {MAX_COUNT}")
            for j in np.flatnonzero(over).tolist()
        ]
        names = state.thompson.arm_names
        for j in np.flatnonzero(plan.status == ARM_MISMATCH).tolist():
            i, e = int(sel[j]), int(group[j])
            logged = (
                f"arm {names[int(entries.arm[e])]!r}"
                if found[e]
                else "the arm and campaign of its first outcome in this batch"
            )
            why = (
                f"request {outcomes.request_id[i]!r} is in the decision log with {logged}; the "
                f"outcome names arm {outcomes.arm[i]!r} of campaign {outcomes.campaign_id[i]!r}"
            )
            rejected.append((i, "arm_mismatch", why))
        for j in np.flatnonzero(plan.status == UNKNOWN_REJECTED).tolist():
            why = "no decision for this request_id in the log (attribution.unknown: dead_letter)"
            rejected.append((int(sel[j]), "unknown_request", why))
        rejected.sort()
        events, weights = self._events(plan, outcomes, sel, sub, entries, rows, found, group)
        freq = np.bincount(plan.status.astype(np.int64), minlength=len(STATUS_NAMES))
        counts = dict(zip(STATUS_NAMES, freq.tolist(), strict=True))
        counts["evicted"] = evicted
        applied = sel[plan.ev_outcome[~plan.ev_retract]]
        return JoinResult(status, rejected, events, weights, applied, sel[plan.ev_outcome], counts)

    def _write(
        self,
        plan: JoinPlan,
        batch: JoinInput,
        propensity: F64,
        uniq: U8,
        rid: I64,
        rows: npt.NDArray[Any],
    ) -> None:
        """Store each changed group's new entry."""
        if not plan.changed.size:
            return
        g = plan.changed
        src = plan.final_src
        created = plan.creator >= 0
        c = batch.contribution
        if created.all():  # only new entries (the usual batch of first outcomes)
            new = np.zeros(g.shape[0], dtype=ROW)
            flags = np.full(g.shape[0], F_FOREIGN, dtype=np.uint8)
        else:
            new = take_rows(rows, g)
            flags = np.asarray(new["flags"] & F_FOREIGN, dtype=np.uint8)
            flags[created] = F_FOREIGN
        if created.any():
            k = plan.creator[created]
            at = np.flatnonzero(created)
            new["t"][at] = batch.t[k]
            new["arm"][at] = batch.arm[k]
            new["campaign"][at] = batch.campaign[k]
            new["propensity"][at] = propensity[k]
            new["slot"][at] = 0
        new["t_out"] = batch.t[src]
        new["reward"] = c.reward[src]
        new["spend"] = c.spend[src]
        new["revenue"] = c.revenue[src]
        new["clicks"] = c.clicks[src]
        new["conversions"] = c.conversions[src]
        flags |= np.where(c.success[src], F_SUCCESS, 0).astype(np.uint8)
        flags |= np.where(c.won[src], F_WON, 0).astype(np.uint8)
        new["flags"] = flags
        old = np.flatnonzero(~created)
        if old.size:
            self.log.update(uniq[g[old]], rid[g[old]], take_rows(new, old))
        fresh = np.flatnonzero(created)
        if fresh.size:
            gf = g[fresh]
            self.log.put_new(uniq[gf], take_rows(new, fresh), rid[gf])

    @staticmethod
    def _events(
        plan: JoinPlan,
        outcomes: OutcomeBatch,
        sel: I64,
        batch: JoinInput,
        entries: Entries,
        rows: npt.NDArray[Any],
        found: npt.NDArray[np.bool_],
        group: I64,
    ) -> tuple[OutcomeBatch | None, F64]:
        """The posterior changes as an OutcomeBatch (explicit success and reward) and weights."""
        if not plan.ev_outcome.size:
            return None, np.zeros(0)
        src = plan.ev_src
        k = plan.ev_outcome
        n = len(batch)
        if k.shape[0] == n == len(outcomes) and not plan.ev_retract.any() and (k == src).all():
            if (k == np.arange(n)).all():  # the usual batch: every outcome applied once, in order
                c, times, base = batch.contribution, batch.t, outcomes
            else:
                c, times, base = batch.contribution.take(k), batch.t[k], outcomes.take(k)
        else:
            table = Contribution.concat([batch.contribution, entries.contribution])
            c = table.take(src)
            times = np.concatenate([batch.t, entries.t_out])[src]
            base = outcomes.take(sel[k])
        g = group[k]
        logged = np.where(found[g], rows["propensity"][g].astype(np.float64), base.propensity)
        events = dataclasses.replace(
            base,
            event_time=times,
            won=c.won,
            clicks=c.clicks,
            conversions=c.conversions,
            spend=c.spend,
            revenue=c.revenue,
            reward=c.reward,
            success=c.success.astype(np.float64),
            propensity=logged,
        )
        return events, np.where(plan.ev_retract, -1.0, 1.0)

    # ---- decisions --------------------------------------------------------------------------
    def log_decisions(self, decisions: DecisionBatch, keys: U8 | None = None) -> None:
        """Log the policy's decisions (a request already in the log keeps its entry);
        ``keys`` are their :func:`request_keys` when the caller hashed them already.

        The batch is queued and inserted when the log is next read (see :attr:`log`).
        """
        n = len(decisions.request_id)
        if not n:
            return
        self._pending.append(
            (
                decisions.request_id,
                decisions.campaign_id,
                np.asarray(decisions.arm_index, dtype=np.int64),
                np.asarray(decisions.propensity, dtype=np.float64),
                np.asarray(decisions.event_time, dtype=np.int64),
                request_keys(decisions.request_id) if keys is None else keys,
            )
        )
        self._pending_rows += n
        if self._pending_rows >= MAX_PENDING:
            self._flush()

    def _flush(self) -> int:
        """Insert the queued decisions (in the order they were logged); returns new entries."""
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if len(pending) == 1:
            return self._log(*pending[0])
        columns = list(zip(*pending, strict=True))
        return self._log(*(np.concatenate(c) for c in columns))

    def log_records(
        self, records: Sequence[Mapping[str, Any]], policy: BidPolicy, state: BiddingState
    ) -> int:
        """Log BidDecision records (replay: the decisions the live stage made)."""
        if not records:
            return 0
        arms = np.array([str(r["arm"]) for r in records], dtype=object)
        col = policy.arm_indices(arms, state)
        ok = np.flatnonzero(col >= 0)
        kept = [records[i] for i in ok.tolist()]
        return self._log(
            np.array([str(r["request_id"]) for r in kept], dtype=object),
            np.array([str(r["campaign_id"]) for r in kept], dtype=object),
            col[ok],
            np.array([float(r["propensity"]) for r in kept]),
            np.array([int(r["event_time"]) for r in kept], dtype=np.int64),
        )

    def _log(
        self,
        request_id: Any,
        campaign_id: Any,
        arm: I64,
        propensity: F64,
        event_time: I64,
        keys: U8 | None = None,
    ) -> int:
        if not len(request_id):
            return 0
        log = self.log  # queued decisions first: they were logged before these
        t = np.asarray(event_time, dtype=np.int64)
        if keys is None:
            keys = request_keys(request_id)
        alive = np.flatnonzero(t >= log.lower_bound)  # an expired decision would be dead at once
        _, first = np.unique(keys[alive], return_index=True)
        first = alive[first]
        uniq = keys[first]
        found, rid, _ = log.lookup(uniq)
        new = np.flatnonzero(~found)
        if not new.size:
            return 0
        k = first[new]
        rows = np.zeros(new.size, dtype=ROW)
        rows["t"] = t[k]
        rows["t_out"] = NO_TIME
        rows["arm"] = np.asarray(arm)[k]
        rows["campaign"] = self._campaigns(np.asarray(campaign_id, dtype=object)[k])
        rows["propensity"] = np.asarray(propensity)[k]
        log.put_new(uniq[new], rows, rid[new])
        return int(new.size)

    # ---- state ------------------------------------------------------------------------------
    def take_chunks(self) -> list[tuple[str, bytes]]:
        """Changelog chunks for the commit (see :meth:`DecisionLog.take_chunks`)."""
        return self.log.take_chunks()

    def restore(self, chunks: list[bytes]) -> int:
        """Load the partition's log from its chunks; returns the live entries."""
        return self.log.restore(chunks)


def _columns(arms: Any, state: BiddingState) -> I64:
    """Thompson column per arm name (−1 unknown), by dictionary: cheaper than a string sort."""
    col = {a: i for i, a in enumerate(state.thompson.arm_names)}
    names = arms.tolist()
    try:  # validated outcomes name known arms
        return np.array(list(map(col.__getitem__, names)), dtype=np.int64)
    except KeyError:
        return np.array([col.get(a, -1) for a in names], dtype=np.int64)


def _take_input(batch: JoinInput, index: I64) -> JoinInput:
    return JoinInput(
        key=batch.key[index],
        campaign=batch.campaign[index],
        arm=batch.arm[index],
        t=batch.t[index],
        contribution=batch.contribution.take(index),
    )
