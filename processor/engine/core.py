"""Batch handlers for one input partition (see the package docstring)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.codec.columnar import Columns
from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine.attribution import join_outcomes, split_join_records, take_join_records
from processor.engine.controls import apply_control
from processor.engine.decoding import decode_batch_columns, decode_records
from processor.engine.ensemble_publish import publish_weights
from processor.engine.ensembles import EnsembleTable
from processor.engine.outputs import EngineOutputs, SourceBatch, dead_letter
from processor.engine.requests import decide_requests
from processor.engine.trades_columnar import TradeColumns, process_trade_columns
from processor.errors import StateError
from processor.join import RewardJoin
from processor.observability import families
from processor.policy.bidding import (
    BiddingState,
    BidPolicy,
    DecisionBatch,
    OutcomeBatch,
)
from processor.state.changelog import StoredState

logger = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]


class PartitionEngine:
    """State and handlers of one input partition.

    Args:
        config: Application configuration.
        partition: The input partition this engine owns (also its changelog partition).
        serdes: Encoders / decoders shared by the instance.
        decisions: Which decisions enter the reward join's log: ``"own"`` (the live stage: every
            decision this engine makes) or ``"logged"`` (replay: the bid-decisions topic's
            records in the batch, the decisions the live stage made).
    """

    def __init__(
        self,
        config: AppConfig,
        partition: int,
        serdes: SerdeRegistry,
        decisions: str = "own",
    ) -> None:
        self.config = config
        self.partition = partition
        self.serdes = serdes
        self.policy = BidPolicy(config.bidding, config.safety)
        self.campaigns = BiddingState(config.bidding)
        self.ensembles = EnsembleTable(config.ensemble)
        self.dirty_campaigns: set[str] = set()
        self.dirty_ensembles: set[str] = set()
        if decisions not in ("own", "logged"):
            msg = f"decisions must be 'own' or 'logged', got {decisions!r}"
            raise ValueError(msg)
        self.decisions = decisions
        self.join = RewardJoin(config.attribution) if config.attribution.enabled else None
        if self.join is not None:
            families.DECISION_LOG_ENTRIES.track(partition, self.join.log)

    # ---- decoding: engine/decoding.py ------------------------------------------------------
    def decode(
        self, source: SourceBatch, schema: str, out: EngineOutputs
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """Records of ``source`` that decode and pass the limits (see :func:`decode_records`)."""
        return decode_records(self.serdes[schema], self.config.limits, source, schema, out)

    def decode_columns(
        self, source: SourceBatch, schema: str, out: EngineOutputs
    ) -> tuple[Columns, I64] | None:
        """Columnar :meth:`decode` (see :func:`decode_batch_columns`)."""
        return decode_batch_columns(self.serdes[schema], self.config.limits, source, schema, out)

    # ---- the batch --------------------------------------------------------------------------
    def process(
        self, batches: Mapping[str, SourceBatch], now_ms: int | None = None
    ) -> EngineOutputs:
        """Run one batch: control commands, reward events, then decisions.

        Args:
            batches: Raw messages by topic name (only this engine's partition).
            now_ms: Wall-clock time for ``decided_at`` (default: now); replay passes event time.
        """
        out = EngineOutputs()
        topics = self.config.topics
        now = int(time.time() * 1000) if now_ms is None else now_ms
        control = batches.get(topics.control)
        if control:
            self._controls(control, out)
        logged = batches.get(topics.bid_decisions)
        if logged and self.decisions == "logged":
            self._logged_decisions(logged)
        outcomes = batches.get(topics.bid_outcomes)
        if outcomes:
            self._outcomes(outcomes, out)
        trades = batches.get(topics.trade_outcomes)
        if trades:
            self._trades(trades, out)
        requests = batches.get(topics.bid_requests)
        if requests:
            self._requests(requests, out, now)
        return out

    def _controls(self, source: SourceBatch, out: EngineOutputs) -> None:
        records, idx = self.decode(source, "ControlCommand", out)
        for rec, i in zip(records, idx, strict=True):
            reason = apply_control(self, rec)
            if reason is not None:
                dead_letter(out, source, i, "command", reason)
                continue
            out.controls_applied += 1
            if rec["target"] == "ensemble" and self.ensembles.has_key(rec["key"]):
                out.weights.append(self._encode_weights(rec["key"]))

    def _outcomes(self, source: SourceBatch, out: EngineOutputs) -> None:
        columnar = self.decode_columns(source, "BidOutcome", out)
        if columnar is not None:
            cols, rows = columnar
            if not rows.size:
                return
            batch = OutcomeBatch.from_columns(cols, rows)
            idx: list[int] = rows.tolist()
        else:
            records, idx = self.decode(source, "BidOutcome", out)
            if not records:
                return
            batch = OutcomeBatch.from_records(records)
        reasons = self.policy.validate_outcomes(batch, self.campaigns)
        bad = np.array([r is not None for r in reasons], dtype=bool)
        for j in np.flatnonzero(bad).tolist():
            error_class = (
                "propensity"
                if "propensity" in str(reasons[j])
                else ("unknown_arm" if "arm" in str(reasons[j]) else "value")
            )
            dead_letter(out, source, idx[j], error_class, str(reasons[j]))
        if bad.all():
            return
        kept = np.flatnonzero(~bad)
        good = batch.take(kept) if bad.any() else batch
        if self.join is not None:
            join_outcomes(self, good, np.asarray(idx, dtype=np.int64)[kept], source, out)
            return
        self.policy.observe(good, self.campaigns)
        self.dirty_campaigns.update(good.campaign_id.tolist())
        out.rewards_applied += len(good)

    def _logged_decisions(self, source: SourceBatch) -> None:
        """Replay: log the decisions of the bid-decisions topic (undecodable ones are skipped)."""
        if self.join is None:
            return
        records, _, _ = self.serdes["BidDecision"].decode_many(source.values)
        self.join.log_records(records, self.policy, self.campaigns)

    def log_decisions(
        self, decisions: DecisionBatch, keys: npt.NDArray[np.uint64] | None = None
    ) -> None:
        """Log decisions this engine made (live; replay logs the recorded ones instead).
        ``keys``: their :func:`~processor.join.reward_join.request_keys`, if already hashed."""
        if self.join is not None and self.decisions == "own":
            self.join.log_decisions(decisions, keys)

    def _trades(self, source: SourceBatch, out: EngineOutputs) -> None:
        # one implementation for both decodes (the record path: oversize values, registry
        # wire format); engine/trades.py's per-record version is the reference tests pin it to
        columnar = self.decode_columns(source, "TradeOutcome", out)
        if columnar is not None:
            cols, rows = columnar
            trades = TradeColumns.from_columns(cols, rows) if rows.size else None
            idx: list[int] = rows.tolist()
        else:
            records, idx = self.decode(source, "TradeOutcome", out)
            trades = TradeColumns.from_records(records) if records else None
        if trades is None:
            return
        n = len(idx)
        rejected, changed = process_trade_columns(self.ensembles, trades)
        for j, (error_class, reason) in rejected.items():
            dead_letter(out, source, idx[j], error_class, reason)
        out.trades_applied += n - len(rejected)
        self.dirty_ensembles.update(changed)
        # one record per learner that changed (per horizon in family_horizon mode)
        out.weights.extend(publish_weights(self.ensembles, self.serdes["EnsembleWeights"], changed))

    def _requests(self, source: SourceBatch, out: EngineOutputs, now_ms: int) -> None:
        p = source.partition
        decide_requests({p: self}, {p: source}, {p: out}, now_ms)

    def _encode_weights(self, key: str) -> tuple[bytes, bytes]:
        return key.encode(), self.serdes["EnsembleWeights"].encode(self.ensembles.snapshot(key))

    # ---- state persistence ------------------------------------------------------------------
    def take_dirty(self) -> list[tuple[str, str, StoredState]]:
        """``(kind, key, state)`` for every key changed since the last call; clears the marks.

        Campaign states are packed bytes when ``state_format`` is ``packed``, else JSON-able
        dicts; ensemble states are always dicts.
        """
        items = self._campaign_states(sorted(self.dirty_campaigns))
        items.extend(
            ("ensemble", key, self.ensembles.get_key_state(key))
            for key in sorted(self.dirty_ensembles)
        )
        self.dirty_campaigns.clear()
        self.dirty_ensembles.clear()
        items.extend(take_join_records(self))
        return items

    def _campaign_states(self, keys: list[str]) -> list[tuple[str, str, StoredState]]:
        """``(kind, key, state)`` of dirty campaigns, read column-wise (a commit under load has
        a thousand of them; per key this costs ~25 µs of row lookups)."""
        states: Sequence[StoredState] = (
            self.campaigns.pack(keys)
            if self.config.state_format == "packed"
            else self.campaigns.get_key_states(keys)
        )
        return [("campaign", key, state) for key, state in zip(keys, states, strict=True)]

    def restore(self, kind: str, key: str, state: StoredState) -> None:
        """Load one key's state from a changelog record (a dict, or packed campaign bytes).

        A ``join`` record is one chunk of the decision log: alone it restores only that chunk's
        entries (``state show``); :meth:`restore_many` restores a partition's whole log.
        """
        if kind == "join":
            if not isinstance(state, bytes):
                msg = f"join record {key!r} is not packed"
                raise StateError(msg)
            if self.join is not None:
                self.join.restore([state])
            return
        if isinstance(state, bytes):
            if kind != "campaign":
                msg = f"packed state for {kind} {key!r}: only campaign state is packed"
                raise StateError(msg)
            self.campaigns.restore_packed([key], [state])
        elif kind == "campaign":
            self.campaigns.set_key_state(key, state)
        elif kind == "ensemble":
            self.ensembles.set_key_state(key, state)
        else:
            msg = f"unknown state kind {kind!r} for key {key!r}"
            raise StateError(msg)

    def restore_many(self, states: Mapping[tuple[str, str], StoredState]) -> None:
        """:meth:`restore` for a whole changelog partition (campaigns column-wise).

        The result equals restoring key by key in the same order; the ``join`` records (the
        decision log's chunks) are restored together.
        """
        if "join" in set(map(itemgetter(0), states)):
            chunks, states = split_join_records(states)
            if self.join is not None:
                self.join.restore(chunks)
        values = list(states.values())
        if set(map(type, values)) == {bytes} and set(map(itemgetter(0), states)) == {"campaign"}:
            # the usual partition, packed campaigns only (checked and split at C speed)
            keys = list(map(itemgetter(1), states))
            self.campaigns.restore_packed(keys, values)  # type: ignore[arg-type]
            return
        packed_keys: list[str] = []
        packed: list[bytes] = []
        json_keys: list[str] = []
        json_states: list[Mapping[str, Any]] = []
        others: list[tuple[str, str, StoredState]] = []
        for (kind, key), state in states.items():
            if kind != "campaign":
                others.append((kind, key, state))
            elif type(state) is bytes:
                packed_keys.append(key)
                packed.append(state)
            else:
                json_keys.append(key)
                json_states.append(state)  # type: ignore[arg-type]  # not bytes: a mapping
        if json_keys and packed_keys:  # new rows in the given order, as key by key
            self.campaigns.rows([key for kind, key in states if kind == "campaign"])
        if json_keys:
            self.campaigns.set_key_states(json_keys, json_states)
        if packed_keys:
            self.campaigns.restore_packed(packed_keys, packed)
        for kind, key, state in others:
            self.restore(kind, key, state)

    def key_count(self) -> tuple[int, int]:
        """Number of (campaign, ensemble) keys held."""
        return self.campaigns.thompson.n_keys, self.ensembles.bandit.n_keys
