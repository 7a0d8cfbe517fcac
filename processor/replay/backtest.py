"""Run a merged event stream through the stage's own handlers on isolated in-memory state.

Batch rule (the replay half of DESIGN §1): the merged stream (see :mod:`processor.replay.source`)
is cut into consecutive batches of ``config.max_batch_events`` events. Each batch goes to one
:class:`~processor.engine.PartitionEngine` as ``{topic: SourceBatch}``; the engine applies control
commands, then bid and trade outcomes, then decides the requests — the same order as the live stage.
``decided_at`` is the batch's last event time, so the output is a pure function of the input, the
configuration and its seeds. One engine holds the keys of every partition (keys are disjoint).

Live, a batch is whatever one poll returned for one partition, so a live run and a replay agree
decision by decision only where the two batchings put the same outcomes before a request; the
audit of what the live stage did is :mod:`processor.replay.verify`, which does not depend on
batching at all.

Alongside the main engine a second one runs the *replay* (rejection sampling) estimator of Li et
al. (2011): it sees every request and control command but only the outcomes whose logged arm
equals the arm it chose itself for that request, so it learns only from kept events.

Reward join (DESIGN §3b): both engines join outcomes exactly as the live stage does, against the
decisions the live stage logged — the bid-decisions records in the stream ride along with the
batch they fall in (they do not count towards ``max_batch_events``) — not against the candidate's
own decisions, which may choose other arms. Without bid-decisions in the input every outcome is
"unknown" and still de-duplicated by request id. The report's rewards are each decision's
joined reward: duplicates are left out and a restated outcome replaces the earlier one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from processor.bandits.rewards import trade_reward_bps
from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine import DeadLetter, PartitionEngine, SourceBatch
from processor.engine.ensembles import EnsembleTable, arm_for
from processor.errors import StateError
from processor.policy.bidding import OutcomeBatch
from processor.replay.source import RawRecord, iso

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


class Progress:
    """A one-line progress bar on a terminal: events, events/s and event time covered."""

    def __init__(self, total: int, stream: TextIO | None = None, every_s: float = 0.5) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self._last = 0.0
        self.enabled = self.stream.isatty()

    def update(self, done: int, first_ms: int, last_ms: int, *, final: bool = False) -> None:
        """Redraw (at most every ``every_s`` seconds unless ``final``)."""
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < self.every_s):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        span = (last_ms - first_ms) / 3_600_000
        self.stream.write(
            f"\rreplay [{bar:<30s}] {done}/{self.total} events {rate:,.0f} ev/s "
            f"event time {iso(first_ms)} +{span:.2f} h"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()


@dataclass
class Output:
    """One record the replay produced (for the output file or ``--output-topic``)."""

    topic: str
    key: bytes
    value: bytes
    event_time: int


@dataclass
class BacktestResult:
    """Everything a backtest produced, in stream order."""

    events: int = 0
    batches: int = 0
    first_ms: int = 0
    last_ms: int = 0
    seconds: float = 0.0
    events_by_topic: Counter[str] = field(default_factory=Counter)
    outputs: list[Output] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)
    guardrails: Counter[str] = field(default_factory=Counter)
    arms_chosen: Counter[str] = field(default_factory=Counter)
    # Candidate's action distribution per decided request: names of the columns, the request ids
    # of each block and the (n, K) probabilities.
    target_blocks: list[tuple[tuple[str, ...], list[str], F64]] = field(default_factory=list)
    outcome_records: list[dict[str, Any]] = field(default_factory=list)
    outcome_rewards: list[F64] = field(default_factory=list)
    trades: list[tuple[str, str, float, float, int]] = field(default_factory=list)
    # Per trade of ``trades``: its learner and the candidate's probabilities over the learner's
    # arms just before the trade's batch (the candidate's own choice; ensemble OPE).
    trade_targets: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    rejection_rewards: list[float] = field(default_factory=list)
    rejection_seen: int = 0
    # Timelines, one point per batch: (batch end event time, values).
    arm_timeline: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    weight_timeline: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    guardrail_timeline: list[tuple[int, dict[str, int]]] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Replayed events per second of wall time."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def target_table(self) -> tuple[list[str], dict[str, int], F64]:
        """``(arm names, request id → row, probabilities)`` over the union of arm columns."""
        names: list[str] = []
        for block_names, _, _ in self.target_blocks:
            names += [n for n in block_names if n not in names]
        col = {n: i for i, n in enumerate(names)}
        rows: dict[str, int] = {}
        total = sum(len(ids) for _, ids, _ in self.target_blocks)
        table = np.zeros((total, len(names)))
        at = 0
        for block_names, ids, probs in self.target_blocks:
            cols = [col[n] for n in block_names]
            table[at : at + len(ids), cols] = probs
            for j, rid in enumerate(ids):
                rows[rid] = at + j  # a duplicated request id keeps its last decision
            at += len(ids)
        return names, rows, table


class Backtest:
    """Feed batches to a candidate engine (and the rejection-sampling engine) and collect.

    Args:
        config: The candidate configuration (its seeds fix every random choice).
        serdes: Encoders / decoders.
        rejection: Also run the rejection-sampling replay estimator.
    """

    def __init__(
        self, config: AppConfig, serdes: SerdeRegistry | None = None, *, rejection: bool = True
    ) -> None:
        self.config = config
        self.serdes = serdes or SerdeRegistry()
        self.engine = PartitionEngine(config, 0, self.serdes, decisions="logged")
        self.rejector = (
            PartitionEngine(config, 0, self.serdes, decisions="logged") if rejection else None
        )
        self.rejection_choice: dict[str, str] = {}
        self._probe: EnsembleTable | None = None
        self.result = BacktestResult()
        self._inputs = set(config.topics.inputs)
        self._logged = config.topics.bid_decisions
        # each decision's joined reward: position of its record in outcome_records / rejection
        self._reward_at: dict[str, tuple[int, int, int]] = {}
        self._rejection_at: dict[str, int] = {}

    def run(self, records: Iterable[RawRecord], progress: Progress | None = None) -> BacktestResult:
        """Replay ``records`` (already merged) in batches of ``max_batch_events``."""
        started = time.monotonic()
        size = self.config.max_batch_events
        batch: list[RawRecord] = []
        inputs = 0
        res = self.result
        for rec in records:
            if rec.topic not in self._inputs:
                if rec.topic == self._logged:
                    batch.append(rec)  # for the reward join; not an input event
                continue
            if not res.events and not inputs:
                res.first_ms = rec.event_time
            batch.append(rec)
            inputs += 1
            if inputs >= size:
                self.process(batch)
                batch, inputs = [], 0
                if progress is not None:
                    progress.update(res.events, res.first_ms, res.last_ms)
        if batch:
            self.process(batch)
        res.seconds = time.monotonic() - started
        if progress is not None:
            progress.update(res.events, res.first_ms, res.last_ms, final=True)
        return res

    def process(self, batch: Sequence[RawRecord]) -> None:
        """One batch through both engines."""
        res = self.result
        topics = self.config.topics
        base = res.events
        sources: dict[str, SourceBatch] = {}
        for i, r in enumerate(batch):
            sb = sources.get(r.topic)
            if sb is None:
                sb = sources[r.topic] = SourceBatch(r.topic, 0)
            # The engine sees a stream index as "offset"; dead letters are mapped back below.
            sb.append(r.key, r.value, base + i)
            if r.topic != self._logged:
                res.events_by_topic[r.topic] += 1
        inputs = [r for r in batch if r.topic != self._logged]
        if not inputs:
            self.engine.process(sources, now_ms=batch[-1].event_time)
            if self.rejector is not None:
                self.rejector.process(sources, now_ms=batch[-1].event_time)
            return
        now_ms = inputs[-1].event_time
        trade_src = sources.get(topics.trade_outcomes)
        trade_pairs = self._decoded(trade_src, "TradeOutcome", set())
        targets = [self._ensemble_target(rec) for rec, _ in trade_pairs]
        out = self.engine.process(sources, now_ms=now_ms)
        res.events += len(inputs)
        res.batches += 1
        res.last_ms = max(res.last_ms, now_ms)
        for dl in out.dead_letters:
            src = batch[dl.source_offset - base]
            res.dead_letters.append(
                DeadLetter(
                    src.topic,
                    src.partition,
                    src.offset,
                    dl.key,
                    dl.value,
                    dl.error_class,
                    dl.reason,
                )
            )
        res.outputs += [Output(topics.bid_decisions, k, v, now_ms) for k, v in out.decisions]
        res.outputs += [Output(topics.ensemble_weights, k, v, now_ms) for k, v in out.weights]
        res.modes.update(out.modes)
        res.guardrails.update(out.guardrails)
        res.arms_chosen.update(out.arms_chosen)
        res.guardrail_timeline.append((now_ms, dict(res.guardrails)))
        self._targets(out.decisions, now_ms)
        self._weights(out.weights, now_ms)
        dead = {dl.source_offset for dl in out.dead_letters}
        outcome_pairs = self._decoded(sources.get(topics.bid_outcomes), "BidOutcome", dead)
        self._joined_rewards(outcome_pairs, out.outcomes_applied)
        self._trades(
            [
                (rec, target)
                for (rec, i), target in zip(trade_pairs, targets, strict=True)
                if trade_src is not None and trade_src.offsets[i] not in dead
            ]
        )
        if self.rejector is not None:
            self._reject(sources, outcome_pairs, now_ms)

    def _joined_rewards(self, pairs: list[tuple[dict[str, Any], int]], applied: list[int]) -> None:
        """Record the reward of each outcome the join applied; a restatement replaces the
        earlier record of its request (the join off: every outcome that was not dead-lettered)."""
        if self.engine.join is not None:
            at = {i: rec for rec, i in pairs}
            pairs = [(at[i], i) for i in applied if i in at]
        if not pairs:
            return
        records = [rec for rec, _ in pairs]
        rewards, _ = self.engine.policy.rewards(OutcomeBatch.from_records(records))
        res = self.result
        fresh: list[float] = []
        block = len(res.outcome_rewards)
        for rec, reward in zip(records, rewards.tolist(), strict=True):
            rid = str(rec["request_id"])
            where = self._reward_at.get(rid) if self.engine.join is not None else None
            if where is None:
                self._reward_at[rid] = (block, len(fresh), len(res.outcome_records))
                res.outcome_records.append(rec)
                fresh.append(reward)
            elif where[0] == block:
                fresh[where[1]] = reward
                res.outcome_records[where[2]] = rec
            else:
                res.outcome_rewards[where[0]][where[1]] = reward
                res.outcome_records[where[2]] = rec
        if fresh:
            res.outcome_rewards.append(np.asarray(fresh, dtype=np.float64))

    def _decoded(
        self, source: SourceBatch | None, schema: str, dead: set[int]
    ) -> list[tuple[dict[str, Any], int]]:
        """``(record, index in source)`` of the records the engine applied (not dead-lettered)."""
        if not source:
            return []
        records, ok, _ = self.serdes[schema].decode_many(source.values)
        return [(r, i) for r, i in zip(records, ok, strict=True) if source.offsets[i] not in dead]

    def _targets(self, decisions: list[tuple[bytes, bytes]], now_ms: int) -> None:
        if not decisions:
            return
        recs, _, _ = self.serdes["BidDecision"].decode_many([v for _, v in decisions])
        state = self.engine.campaigns
        rows = state.rows(np.array([r["campaign_id"] for r in recs], dtype=object), create=False)
        ts = state.thompson
        # the policy's own objective per campaign (Beta or the value posterior)
        probs = np.array(state.propensities(rows), dtype=np.float64)
        names = tuple(ts.arm_names)
        col = {n: i for i, n in enumerate(names)}
        # A decision with propensity 1 was forced (emergency, guardrail fallback, deterministic):
        # the candidate played that arm for sure.
        forced = np.array([r["propensity"] >= 1.0 for r in recs], dtype=bool)
        if forced.any():
            chosen = np.array([col[r["arm"]] for r in recs], dtype=np.int64)
            probs[forced] = 0.0
            probs[np.flatnonzero(forced), chosen[forced]] = 1.0
        self.result.target_blocks.append((names, [r["request_id"] for r in recs], probs))
        mean = probs.mean(axis=0)
        self.result.arm_timeline.append((now_ms, dict(zip(names, mean.tolist(), strict=True))))

    def _weights(self, weights: list[tuple[bytes, bytes]], now_ms: int) -> None:
        if not weights:
            return
        recs, _, _ = self.serdes["EnsembleWeights"].decode_many([v for _, v in weights])
        total: Counter[str] = Counter()
        for r in recs:
            total.update(r["probabilities"])
        point = {k: v / len(recs) for k, v in sorted(total.items())}
        self.result.weight_timeline.append((now_ms, point))

    def _ensemble_target(self, rec: dict[str, Any]) -> tuple[str, dict[str, float]] | None:
        """The candidate's learner and probabilities for a bandit-feedback trade, before it."""
        name = rec.get("arm") or rec.get("family")
        if not name or not rec.get("propensity"):
            return None
        table = self.engine.ensembles
        key, horizon = rec["ensemble_id"], rec["horizon"]
        label = table.learner_key(key, horizon).replace("\x00", "@")
        if not table.has_key(key) or (table.per_horizon and horizon not in table.horizons_of(key)):
            if self._probe is None:  # what a learner that has seen nothing plays
                self._probe = EnsembleTable(self.config.ensemble)
                self._probe.rows(["probe"])
            table, key = self._probe, "probe"
        try:
            snap = table.snapshot(key, horizon if table.per_horizon else None)
        except StateError:  # a horizon with no learner: the candidate has no arm to play
            return label, {}
        return label, snap["probabilities"]

    def _trades(
        self, pairs: list[tuple[dict[str, Any], tuple[str, dict[str, float]] | None]]
    ) -> None:
        bandit = [(r, t) for r, t in pairs if r.get("arm") and r.get("propensity")]
        if not bandit:
            return
        mode = self.config.ensemble.mode
        names = self.engine.ensembles.bandit.arm_names
        cols = {
            name: np.array([float(r[name]) for r, _ in bandit])
            for name in ("side", "entry_price", "exit_price", "quantity", "fees", "slippage")
        }
        with np.errstate(all="ignore"):
            reward = trade_reward_bps(
                cols["side"],
                cols["entry_price"],
                cols["exit_price"],
                cols["quantity"],
                cols["fees"],
                cols["slippage"],
            )
        for (r, target), x in zip(bandit, np.asarray(reward).tolist(), strict=True):
            if np.isfinite(x):
                arm = arm_for(mode, r["arm"], r["horizon"], names)
                self.result.trades.append(
                    (r["ensemble_id"], arm, float(r["propensity"]), x, int(r["event_time"]))
                )
                if target is not None:
                    self.result.trade_targets.append(target)

    def _reject(
        self,
        sources: dict[str, SourceBatch],
        outcomes: list[tuple[dict[str, Any], int]],
        now_ms: int,
    ) -> None:
        assert self.rejector is not None
        topic = self.config.topics.bid_outcomes
        filtered = dict(sources)
        src = sources.get(topic)
        kept_recs = []
        if src is not None:
            kept = SourceBatch(topic, 0)
            for rec, i in outcomes:
                self.result.rejection_seen += 1
                if self.rejection_choice.get(rec["request_id"]) == rec["arm"]:
                    kept.append(src.keys[i], src.values[i], src.offsets[i])
                    kept_recs.append(rec)
            filtered[topic] = kept
        out = self.rejector.process(filtered, now_ms=now_ms)
        if self.rejector.join is not None:
            kept_recs = [kept_recs[i] for i in out.outcomes_applied if i < len(kept_recs)]
        if kept_recs:
            rewards, _ = self.rejector.policy.rewards(OutcomeBatch.from_records(kept_recs))
            for rec, reward in zip(kept_recs, rewards.tolist(), strict=True):
                rid = str(rec["request_id"])
                pos = self._rejection_at.get(rid) if self.rejector.join is not None else None
                if pos is None:
                    self._rejection_at[rid] = len(self.result.rejection_rewards)
                    self.result.rejection_rewards.append(reward)
                else:
                    self.result.rejection_rewards[pos] = reward
        if out.decisions:
            recs, _, _ = self.serdes["BidDecision"].decode_many([v for _, v in out.decisions])
            for rec in recs:
                self.rejection_choice[rec["request_id"]] = rec["arm"]


def run_backtest(
    config: AppConfig,
    records: Iterable[RawRecord],
    *,
    progress: Progress | None = None,
    rejection: bool = True,
    serdes: SerdeRegistry | None = None,
) -> BacktestResult:
    """Replay merged ``records`` through ``config`` (see the module docstring)."""
    return Backtest(config, serdes, rejection=rejection).run(records, progress)
