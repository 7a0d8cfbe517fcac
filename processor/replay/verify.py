"""``--verify-decisions``: re-derive every logged bid decision and report any mismatch.

Why a decision can be re-derived: it depends only on the campaign's state after
``policy_version`` reward events, on the request (its ``request_id`` seeds the randomness through
``request_uniforms(bidding.seed, request_id, stream)``) and on the configuration. Live, a campaign's
outcomes are applied in the offset order of its bid-outcomes partition, and outcomes that were
dead-lettered do not count. So the audit rebuilds each campaign's state by applying its outcomes in
``(partition, offset)`` order, one valid outcome per campaign per step (vectorized across
campaigns), and decides each logged request against the state after exactly ``policy_version``
valid outcomes of its campaign. Batching plays no part, so this works whatever batches the live
stage formed.

Control commands change decisions without changing the version. A command for a campaign is
applied after the campaign outcomes that precede it in the merged event-time order (and before
any decision taken at that version). Limits: when a command and an outcome have about the same
event time, or a decision was taken between a command and the next outcome, the order may differ
from the live one and the decisions right there can show as mismatches (they name the command).
Commands that ``reset`` a campaign restart its version count and are not supported; ensemble
commands do not affect bid decisions.

With the reward join on (``attribution.enabled``), an outcome applies the Thompson updates the
live join made for it — none for a duplicate, a retraction and an application for a restatement —
computed per partition in offset order by :mod:`processor.replay.joined` (its limits apply);
an outcome that made no update (a duplicate) is not a step.

Compared fields: ``arm``, ``bid_amount``, ``budget``, ``propensity`` (relative tolerance 1e-9:
the quadrature is deterministic, the tolerance only absorbs float formatting), ``mode`` and
``guardrails``. ``decided_at`` is wall clock live and is never compared. A decision whose request
is outside the range, or whose campaign absorbed outcomes before the range (its earliest logged
decision has a higher ``policy_version`` than the range holds outcomes before it), or whose version
is never reached by the outcomes in the range, is counted as unverifiable, not as a mismatch. To
audit everything, start the range before the campaigns' first events.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine import PartitionEngine
from processor.engine.controls import apply_control
from processor.policy.bidding import DecisionBatch, OutcomeBatch, RequestBatch
from processor.policy.safety import GUARDRAIL_NAMES
from processor.replay.joined import JoinedEvents, join_events
from processor.replay.source import RawRecord

logger = logging.getLogger(__name__)

FIELDS = ("arm", "bid_amount", "budget", "propensity", "mode", "guardrails")
RTOL = 1e-9


@dataclass
class Verification:
    """Result of a verification run."""

    decisions: int = 0
    verified: int = 0
    matched: int = 0
    unverifiable: int = 0
    unverifiable_reasons: dict[str, int] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, limit: int = 1000) -> dict[str, Any]:
        """JSON-able summary (at most ``limit`` mismatches listed)."""
        return {
            "decisions": self.decisions,
            "verified": self.verified,
            "matched": self.matched,
            "mismatched": len(self.mismatches),
            "unverifiable": self.unverifiable,
            "unverifiable_reasons": dict(sorted(self.unverifiable_reasons.items())),
            "mismatches": self.mismatches[:limit],
        }

    def _skip(self, reason: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.unverifiable += n
        self.unverifiable_reasons[reason] = self.unverifiable_reasons.get(reason, 0) + n


def _decode(records: Sequence[RawRecord], schema: str, serdes: SerdeRegistry) -> list[Any]:
    recs, ok, _ = serdes[schema].decode_many([r.value for r in records])
    return [(records[i], rec) for rec, i in zip(recs, ok, strict=True)]


def verify_decisions(
    config: AppConfig,
    merged: Sequence[RawRecord],
    serdes: SerdeRegistry | None = None,
) -> Verification:
    """Re-derive the logged decisions in ``merged`` (inputs plus the bid-decisions topic)."""
    serdes = serdes or SerdeRegistry()
    t = config.topics
    by_topic: dict[str, list[RawRecord]] = {}
    for r in merged:
        by_topic.setdefault(r.topic, []).append(r)
    result = Verification()
    logged = _decode(by_topic.get(t.bid_decisions, []), "BidDecision", serdes)
    result.decisions = len(logged)
    if not logged:
        return result
    requests = {
        rec["request_id"]: rec
        for _, rec in _decode(by_topic.get(t.bid_requests, []), "BidRequest", serdes)
    }
    # Outcomes per campaign in (partition, offset) order; position in the merged stream kept
    # to place control commands.
    outs = _decode(by_topic.get(t.bid_outcomes, []), "BidOutcome", serdes)
    outs.sort(key=lambda x: (x[1]["campaign_id"], x[0].partition, x[0].offset))
    joined = join_events(config, outs, logged) if config.attribution.enabled else None
    if joined is not None:  # an outcome that changed nothing is no step
        effective = joined.effective()
        outs = [outs[j] for j in effective.tolist()]
        joined = joined.subset(effective)
    camp_names = sorted(
        {rec["campaign_id"] for _, rec in outs} | {d["campaign_id"] for _, d in logged}
    )
    cidx = {c: i for i, c in enumerate(camp_names)}
    n_c = len(camp_names)
    out_camp = np.array([cidx[rec["campaign_id"]] for _, rec in outs], dtype=np.int64)
    start = np.searchsorted(out_camp, np.arange(n_c), side="left")
    end = np.searchsorted(out_camp, np.arange(n_c), side="right")
    all_outcomes = OutcomeBatch.from_records([rec for _, rec in outs])
    # Each control command's step: how many of its campaign's outcomes precede it in event order.
    controls = _control_steps(by_topic.get(t.control, []), outs, cidx, serdes)

    keep = [(raw, d) for raw, d in logged if d["request_id"] in requests]
    result._skip("request not in range", len(logged) - len(keep))
    partial = _partial_history(keep, outs, joined)
    kept = [(raw, d) for raw, d in keep if d["campaign_id"] not in partial]
    result._skip("campaign history starts before the range", len(keep) - len(kept))
    keep = kept
    keep.sort(
        key=lambda x: (
            cidx[x[1]["campaign_id"]],
            x[1]["policy_version"],
            x[0].partition,
            x[0].offset,
        )
    )
    dec = [d for _, d in keep]
    if not dec:
        return result
    dec_key = np.array([cidx[d["campaign_id"]] for d in dec], dtype=np.int64) * (
        1 << 40
    ) + np.array([d["policy_version"] for d in dec], dtype=np.int64)
    table = _Logged(dec)
    req_batch = RequestBatch.from_records([requests[d["request_id"]] for d in dec])
    engine = PartitionEngine(config, 0, serdes)
    state, policy = engine.campaigns, engine.policy
    rows = state.rows(np.array(camp_names, dtype=object))
    ptr = start.copy()
    done = np.zeros(len(dec), dtype=bool)
    while True:
        taken = np.asarray(state.thompson.version[rows], dtype=np.int64)
        for cmd in controls.pop_due(ptr - start):
            apply_control(engine, cmd)
        probe = np.arange(n_c, dtype=np.int64) * (1 << 40) + taken
        lo = np.searchsorted(dec_key, probe, side="left")
        hi = np.searchsorted(dec_key, probe, side="right")
        hit = np.flatnonzero(hi > lo)
        idx = (
            np.concatenate([np.arange(lo[c], hi[c]) for c in hit.tolist()])
            if hit.size
            else np.zeros(0, dtype=np.int64)
        )
        idx = idx[~done[idx]]
        if idx.size:
            table.compare(policy.decide(req_batch.take(idx), state, decided_at_ms=0), idx, result)
            done[idx] = True
        live = np.flatnonzero(ptr < end)
        if live.size == 0:
            break
        batch = all_outcomes.take(ptr[live])
        reasons = policy.validate_outcomes(batch, state)
        ok = np.array([r is None for r in reasons], dtype=bool)
        if ok.any() and joined is None:
            policy.observe(batch.take(np.flatnonzero(ok)), state)
        elif ok.any() and joined is not None:
            events, weights = joined.of(ptr[live][ok])
            if events is not None:
                policy.observe(events, state, weight=weights)
        ptr[live] += 1
    result._skip("policy_version not reached by the outcomes in range", int((~done).sum()))
    return result


def _partial_history(
    decisions: Sequence[tuple[RawRecord, Mapping[str, Any]]],
    outs: Sequence[tuple[RawRecord, Mapping[str, Any]]],
    joined: JoinedEvents | None = None,
) -> set[str]:
    """Campaigns whose earliest logged decision needs more updates than the range holds before it.

    Such a campaign absorbed outcomes before ``--from``; its state cannot be rebuilt, and deciding
    its requests anyway would report false mismatches. An outcome is one update, or with the
    reward join the number of updates the join made for it.
    """
    first: dict[str, tuple[RawRecord, int]] = {}
    for raw, d in decisions:
        seen = first.get(d["campaign_id"])
        if seen is None or raw < seen[0]:
            first[d["campaign_id"]] = (raw, int(d["policy_version"]))
    before: dict[str, int] = dict.fromkeys(first, 0)
    for j, (raw, rec) in enumerate(outs):
        c = rec["campaign_id"]
        if c in first and raw < first[c][0]:
            before[c] += 1 if joined is None else int(joined.end[j] - joined.start[j])
    return {c for c, (_, version) in first.items() if version > before[c]}


class _Controls:
    """Pending campaign control commands, released when their campaign reaches their step."""

    def __init__(self, items: list[tuple[int, int, dict[str, Any]]]) -> None:
        self.items = items  # (campaign index, step, command) in stream order

    def pop_due(self, steps: np.ndarray) -> list[dict[str, Any]]:
        due = [cmd for c, s, cmd in self.items if steps[c] >= s]
        self.items = [(c, s, cmd) for c, s, cmd in self.items if steps[c] < s]
        return due


def _control_steps(
    controls: Sequence[RawRecord],
    outs: Sequence[tuple[RawRecord, dict[str, Any]]],
    index: Mapping[str, int],
    serdes: SerdeRegistry,
) -> _Controls:
    camp_order: dict[str, list[RawRecord]] = {}
    for raw, rec in outs:
        camp_order.setdefault(rec["campaign_id"], []).append(raw)
    items: list[tuple[int, int, dict[str, Any]]] = []
    for raw, cmd in _decode(controls, "ControlCommand", serdes):
        if cmd["target"] != "campaign" or cmd["key"] not in index:
            continue
        seen = camp_order.get(cmd["key"], [])
        step = sum(1 for r in seen if r < raw)  # RawRecord order = merged event-time order
        items.append((index[cmd["key"]], step, cmd))
    return _Controls(items)


class _Logged:
    """The logged decisions as columns, for a vectorized comparison."""

    def __init__(self, decisions: Sequence[Mapping[str, Any]]) -> None:
        self.records = decisions
        self.arm = np.array([d["arm"] for d in decisions], dtype=object)
        self.mode = np.array([d["mode"] for d in decisions], dtype=object)
        self.money = {
            name: np.array([float(d[name]) for d in decisions])
            for name in ("bid_amount", "budget", "propensity")
        }
        bit = {g: 1 << i for i, g in enumerate(GUARDRAIL_NAMES)}
        # An unknown guardrail name can never match a derived decision: mask -1.
        self.guardrails = np.array(
            [
                sum(bit[g] for g in d["guardrails"]) if set(d["guardrails"]) <= set(bit) else -1
                for d in decisions
            ],
            dtype=np.int64,
        )

    def compare(self, derived: DecisionBatch, idx: np.ndarray, result: Verification) -> None:
        """Count matches among ``idx`` and describe every mismatch."""
        bad = {
            "arm": derived.arm != self.arm[idx],
            "mode": derived.mode_names() != self.mode[idx],
            "guardrails": derived.guardrails != self.guardrails[idx],
        }
        for name, logged in self.money.items():
            got = getattr(derived, name)
            bad[name] = ~np.isclose(got, logged[idx], rtol=RTOL, atol=0.0)
        any_bad = np.zeros(idx.size, dtype=bool)
        for mask in bad.values():
            any_bad |= np.asarray(mask, dtype=bool)
        result.verified += int(idx.size)
        result.matched += int(idx.size - any_bad.sum())
        if not any_bad.any():
            return
        rows = np.flatnonzero(any_bad)
        subset = DecisionBatch(
            **{f.name: getattr(derived, f.name)[rows] for f in dataclasses.fields(derived)}
        )
        derived_recs = subset.to_records()
        for r, rec in zip(rows.tolist(), derived_recs, strict=True):
            want = self.records[int(idx[r])]
            result.mismatches.append(
                {
                    "request_id": want["request_id"],
                    "campaign_id": want["campaign_id"],
                    "policy_version": want["policy_version"],
                    "differs": {
                        name: {"logged": want[name], "derived": rec[name]}
                        for name in FIELDS
                        if bool(bad[name][r])
                    },
                }
            )
