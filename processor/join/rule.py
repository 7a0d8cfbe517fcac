"""The join rule on columnar batches: which outcomes change the posterior, and how.

**Rule.** The reward of a decision is its latest outcome within the attribution window: the
posterior equals applying each decision's latest outcome exactly once. "Latest" orders outcomes
by event time, then by arrival (offset order within the partition: of two outcomes with the same
event time the later one wins). Processed one outcome at a time, in arrival order, against the
log (``W`` is the watermark at the start of the batch, ``D`` the window, ``G`` the grace):

* entry found, other arm or campaign → ``ARM_MISMATCH`` (dead letter, nothing changes);
* entry found, event time > entry time + D → ``LATE`` (``late: apply`` joins it anyway);
* entry found without an outcome → ``JOINED``: apply the outcome;
* entry found with outcome o: event time ≥ o's and the same contribution → ``DUPLICATE`` (o is
  replaced, the posterior is not touched); ≥ o's and another contribution → ``RESTATED``:
  retract o's contribution, apply the new one; older than o → ``DUPLICATE`` (stale);
* no entry and event time < W − G (or below the eviction bound: its decision may have been
  evicted) → ``LATE`` (``late: apply`` applies it without a join);
* no entry otherwise → ``UNKNOWN``: an entry is created from the outcome (its arm, propensity,
  event time) and the outcome applied; with ``unknown: dead_letter`` → ``UNKNOWN_REJECTED``.

:func:`plan_join` does exactly this for a whole batch with array operations (tested against a
plain-Python transcription of the list above): outcomes are grouped by request, each group is a
sequence "stored outcome, then the batch's outcomes", and a grouped running maximum of the event
time tells each outcome whether it is newer than everything before it (a *record*) and which
record it replaces. The posterior changes it asks for are listed in arrival order, as the
sequential rule would make them, so their sum — and the version count — do not depend on
batching.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.state.joinlog import F_SUCCESS, F_WON, NO_TIME

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint64]
U4 = npt.NDArray[np.uint32]
B = npt.NDArray[np.bool_]

JOINED, UNKNOWN, DUPLICATE, RESTATED, LATE, ARM_MISMATCH, UNKNOWN_REJECTED = range(7)
STATUS_NAMES = (
    "joined",
    "unknown",
    "duplicate",
    "restated",
    "late",
    "arm_mismatch",
    "unknown_rejected",
)


@dataclass(frozen=True)
class Contribution:
    """What one outcome adds to the posterior and the guardrail statistics, as columns."""

    reward: F64
    success: B
    spend: F64
    revenue: F64
    clicks: I64
    conversions: I64
    won: B

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def take(self, index: Any) -> Contribution:
        """Rows ``index``."""
        return Contribution(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Contribution]) -> Contribution:
        """Rows of ``parts`` one after the other."""
        names = [f.name for f in fields(parts[0])]
        return Contribution(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})

    @staticmethod
    def of_rows(rows: npt.NDArray[Any]) -> Contribution:
        """The contribution stored in log rows (:data:`processor.state.joinlog.ROW`)."""
        flags = rows["flags"]
        return Contribution(
            reward=rows["reward"].astype(np.float64),
            success=(flags & F_SUCCESS) != 0,
            spend=rows["spend"].astype(np.float64),
            revenue=rows["revenue"].astype(np.float64),
            clicks=rows["clicks"].astype(np.int64),
            conversions=rows["conversions"].astype(np.int64),
            won=(flags & F_WON) != 0,
        )

    def equal(self, i: I64, j: I64) -> B:
        """Whether rows ``i`` and rows ``j`` are the same contribution (exact)."""
        same = np.ones(i.shape[0], dtype=np.bool_)
        for f in fields(self):
            col = getattr(self, f.name)
            same &= col[i] == col[j]
        return same


@dataclass(frozen=True)
class JoinInput:
    """One batch of outcomes (arrival order) as the join sees them."""

    key: U8
    """64-bit hash of the request id."""
    campaign: U4
    """32-bit hash of the campaign id."""
    arm: I64
    """Thompson column of the outcome's arm."""
    t: I64
    """Event time."""
    contribution: Contribution

    def __len__(self) -> int:
        return int(self.key.shape[0])


@dataclass(frozen=True)
class Entries:
    """The log entries of a batch's requests, one per group (request)."""

    found: B
    t: I64
    t_out: I64
    arm: I64
    campaign: U4
    contribution: Contribution


@dataclass(frozen=True)
class JoinPlan:
    """What a batch does (see :func:`plan_join`).

    Contribution sources (``ev_src``, ``final_src``) index the batch's outcomes for values < n and
    the stored contribution of group ``value − n`` otherwise.
    """

    status: npt.NDArray[np.int8]
    ev_outcome: I64
    """Outcome that causes each posterior change, in order."""
    ev_retract: B
    """True: retract the contribution ``ev_src`` (weight −1); false: apply it (+1)."""
    ev_src: I64
    changed: I64
    """Groups whose entry is written (created or updated)."""
    final_src: I64
    """Outcome whose contribution each changed group's entry now holds."""
    creator: I64
    """Outcome that created each changed group's entry (−1: the entry existed)."""
    t_max: int
    """Largest event time of the outcomes not dead-lettered (NO_TIME: none)."""


def _shift(a: I64, start: B, fill: int) -> I64:
    """``a`` moved one place right within groups that begin where ``start`` is true."""
    out = np.empty_like(a)
    out[1:] = a[:-1]
    out[start] = fill
    return out


def plan_join(
    batch: JoinInput,
    group: I64,
    entries: Entries,
    *,
    late_before: int,
    window_ms: int,
    accept_unknown: bool,
    apply_late: bool,
    distinct: bool = False,
) -> JoinPlan:
    """Classify a batch of outcomes and list the posterior changes (module docstring).

    Args:
        batch: The outcomes, in arrival order.
        group: Request (group) of each outcome, 0 .. m−1.
        entries: The live log entry of each group (``found`` false: none).
        late_before: An outcome without an entry is late when its event time is below this:
            max(W − G, the eviction bound), W the watermark at the start of the batch (NO_TIME:
            never late).
        window_ms: Attribution window D.
        accept_unknown: ``attribution.unknown == "accept"``.
        apply_late: ``attribution.late == "apply"``.
        distinct: Every outcome is of another request (one per group): the sequences are at
            most "stored, new", and a shorter path gives the same plan.
    """
    n = len(batch)
    idx = np.arange(n, dtype=np.int64)
    t = batch.t
    has = entries.found[group]
    # requests without an entry: the first outcome that is not late creates one (accept mode)
    late_grace = ~has & (t < late_before)
    creator_of = np.full(entries.found.shape[0], n, dtype=np.int64)
    cand = np.flatnonzero(~has & ~late_grace) if accept_unknown else np.zeros(0, dtype=np.int64)
    if cand.size and distinct:
        creator_of[group[cand]] = cand
    elif cand.size:
        with_cand, first_cand = np.unique(group[cand], return_index=True)
        creator_of[with_cand] = cand[first_cand]
    creator = creator_of[group]
    created = ~has & (creator < n)
    after = created & (idx >= creator)  # the creator and what follows it
    ref = np.where(after, creator, 0)
    e_arm = np.where(has, entries.arm[group], batch.arm[ref])
    e_camp = np.where(has, entries.campaign[group], batch.campaign[ref])
    e_t = np.where(has, entries.t[group], t[ref])
    in_log = has | after
    mismatch = in_log & ((batch.arm != e_arm) | (batch.campaign != e_camp))
    late_window = in_log & ~mismatch & (t > e_t + window_ms)
    status = np.full(n, JOINED, dtype=np.int8)
    status[~in_log & late_grace] = LATE
    status[~in_log & ~late_grace] = UNKNOWN_REJECTED  # accept mode: only non-late go to `after`
    status[mismatch] = ARM_MISMATCH
    status[late_window] = LATE
    joinable = in_log & ~mismatch & (~late_window | apply_late)
    raw_late = ~in_log & late_grace & apply_late

    if distinct:
        return _plan_distinct(
            batch, group, entries, status, created, creator_of, joinable, raw_late, late_window
        )
    # the sequences: each group's stored outcome (if any) first, then its joinable outcomes
    base_g = np.flatnonzero(entries.found & (entries.t_out != NO_TIME))
    jk = np.flatnonzero(joinable)
    ig = np.concatenate([base_g, group[jk]])
    io = np.concatenate([np.full(base_g.size, -1, dtype=np.int64), jk])
    it = np.concatenate([entries.t_out[base_g], t[jk]])
    isrc = np.concatenate([n + base_g, jk])
    order = np.lexsort((io, ig))
    ig, io, it, isrc = ig[order], io[order], it[order], isrc[order]
    m_items = ig.shape[0]
    ev_outcome: list[I64] = []
    ev_src: list[I64] = []
    ev_retract: list[B] = []
    changed = final_src = creators = np.zeros(0, dtype=np.int64)
    if m_items:
        rank = np.unique(it, return_inverse=True)[1].astype(np.int64).reshape(-1)
        span = int(rank.max()) + 1
        offset = ig * span
        running = np.maximum.accumulate(rank + offset) - offset
        start = np.ones(m_items, dtype=np.bool_)
        start[1:] = ig[1:] != ig[:-1]
        is_record = rank >= _shift(running, start, -1)
        last_record = np.maximum.accumulate(np.where(is_record, np.arange(m_items), -1))
        prev = _shift(last_record, start, -1)
        outcome_item = io >= 0
        k = io[outcome_item]
        first = prev[outcome_item] < 0
        record = is_record[outcome_item]
        prev_src = np.where(first, 0, isrc[np.maximum(prev, 0)][outcome_item])
        table = Contribution.concat([batch.contribution, entries.contribution])
        same = table.equal(k, prev_src)
        kind = np.where(
            first,
            np.where(created[k], UNKNOWN, JOINED),
            np.where(record & ~same, RESTATED, DUPLICATE),
        )
        status[k] = np.where(late_window[k], LATE, kind).astype(np.int8)
        applies = first | (record & ~same)
        restated = ~first & record & ~same
        ev_outcome += [k[restated], k[applies]]
        ev_src += [prev_src[restated], k[applies]]
        ev_retract += [np.ones(int(restated.sum()), bool), np.zeros(int(applies.sum()), bool)]
        # each group's final record: its entry's new state when it is one of the batch's outcomes
        end = np.ones(m_items, dtype=np.bool_)
        end[:-1] = ig[1:] != ig[:-1]
        final = isrc[last_record[end]]
        groups = ig[end]
        moved = final < n
        changed, final_src = groups[moved], final[moved]
        creators = np.where(entries.found[changed], -1, creator_of[changed])
    return _finish(
        t, status, raw_late, ev_outcome, ev_src, ev_retract, changed, final_src, creators
    )


def _finish(
    t: I64,
    status: npt.NDArray[np.int8],
    raw_late: B,
    ev_outcome: list[I64],
    ev_src: list[I64],
    ev_retract: list[B],
    changed: I64,
    final_src: I64,
    creators: I64,
) -> JoinPlan:
    """Add the late outcomes applied without a join and order the events."""
    raw = np.flatnonzero(raw_late)
    ev_outcome.append(raw)
    ev_src.append(raw)
    ev_retract.append(np.zeros(raw.size, dtype=np.bool_))
    eo = np.concatenate(ev_outcome)
    er = np.concatenate(ev_retract)
    es = np.concatenate(ev_src)
    if er.any() or raw.size or (eo.size > 1 and not bool((eo[1:] > eo[:-1]).all())):
        ev_order = np.argsort(eo * 2 + (~er), kind="stable")  # per outcome: retract, then apply
        eo, er, es = eo[ev_order], er[ev_order], es[ev_order]
    kept = (status != ARM_MISMATCH) & (status != UNKNOWN_REJECTED)
    t_max = int(t[kept].max()) if kept.any() else NO_TIME
    return JoinPlan(
        status=status,
        ev_outcome=eo,
        ev_retract=er,
        ev_src=es,
        changed=changed,
        final_src=final_src,
        creator=creators,
        t_max=t_max,
    )


def _plan_distinct(
    batch: JoinInput,
    group: I64,
    entries: Entries,
    status: npt.NDArray[np.int8],
    created: B,
    creator_of: I64,
    joinable: B,
    raw_late: B,
    late_window: B,
) -> JoinPlan:
    """:func:`plan_join` when no two outcomes share a request: each sequence is at most the
    stored outcome, then the new one."""
    n = len(batch)
    t = batch.t
    k = np.flatnonzero(joinable)
    g = group[k]
    has_base = entries.found[g] & (entries.t_out[g] != NO_TIME)
    record = ~has_base | (t[k] >= entries.t_out[g])
    if has_base.any():
        table = Contribution.concat([batch.contribution, entries.contribution])
        same = has_base & table.equal(k, n + g)
    else:  # first outcomes only: nothing to compare with
        same = has_base
    kind = np.where(
        ~has_base,
        np.where(created[k], UNKNOWN, JOINED),
        np.where(record & ~same, RESTATED, DUPLICATE),
    )
    status[k] = np.where(late_window[k], LATE, kind).astype(np.int8)
    applies = ~has_base | (record & ~same)
    restated = has_base & record & ~same
    moved = record  # the new outcome is the group's final record
    changed = g[moved]
    creators = np.where(entries.found[changed], -1, creator_of[changed])
    return _finish(
        t,
        status,
        raw_late,
        [k[restated], k[applies]],
        [n + g[restated], k[applies]],
        [np.ones(int(restated.sum()), bool), np.zeros(int(applies.sum()), bool)],
        changed,
        k[moved],
        creators,
    )
