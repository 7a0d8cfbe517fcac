"""Batch handlers for one input partition (see the package docstring)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processor import __version__
from processor.config import AppConfig
from processor.engine.controls import apply_control
from processor.engine.ensembles import EnsembleTable
from processor.engine.trades import process_trades
from processor.errors import StateError
from processor.kafka.serde import SerdeRegistry
from processor.policy.bidding import BiddingState, BidPolicy, OutcomeBatch, RequestBatch

logger = logging.getLogger(__name__)

# Fields whose strings are bounded by ``limits.max_string_length`` per record type.
_STRING_FIELDS: dict[str, tuple[str, ...]] = {
    "BidRequest": ("request_id", "campaign_id", "audience"),
    "BidOutcome": ("request_id", "campaign_id", "arm"),
    "TradeOutcome": ("trade_id", "ensemble_id", "symbol", "horizon", "family", "arm"),
    "ControlCommand": ("command_id", "key", "arm", "issued_by", "reason"),
}
_MAP_FIELDS: dict[str, tuple[str, ...]] = {
    "BidRequest": ("context",),
    "TradeOutcome": ("model_rewards", "model_contributions"),
    "ControlCommand": ("weights",),
}
# Numbers that must be finite when present. Checked before columns are built, because the policy's
# batches use NaN to mean "missing": an explicit NaN must not slip through as "no value".
_FLOAT_FIELDS: dict[str, tuple[str, ...]] = {
    "BidRequest": ("base_bid", "base_budget", "daily_budget", "spent_today", "target_cpa"),
    "BidOutcome": ("spend", "revenue", "reward", "propensity", "budget", "target_cpa"),
    "TradeOutcome": (),
    "ControlCommand": (),
}
_KEY_FIELD = {
    "BidRequest": "campaign_id",
    "BidOutcome": "campaign_id",
    "TradeOutcome": "ensemble_id",
    "ControlCommand": "key",
}


@dataclass
class SourceBatch:
    """Raw messages of one topic-partition, in offset order."""

    topic: str
    partition: int
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def append(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        """Add one message."""
        self.keys.append(key)
        self.values.append(value)
        self.offsets.append(offset)


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input record and why (becomes a DeadLetter Avro record)."""

    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    reason: str

    def to_record(self, now_ms: int) -> dict[str, Any]:
        """The DeadLetter schema's dict."""
        return {
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "key": self.key,
            "value": self.value,
            "error_class": self.error_class,
            "reason": self.reason,
            "processor_version": __version__,
            "dead_lettered_at": now_ms,
        }


@dataclass
class EngineOutputs:
    """What one batch produced: encoded outputs plus counts for metrics."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)
    decision_event_ms: list[int] = field(default_factory=list)
    weights: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rewards_applied: int = 0
    trades_applied: int = 0
    controls_applied: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    guardrails: Counter[str] = field(default_factory=Counter)
    arms_chosen: Counter[str] = field(default_factory=Counter)

    def extend(self, other: EngineOutputs) -> None:
        """Merge another batch's outputs into this one."""
        self.decisions.extend(other.decisions)
        self.decision_event_ms.extend(other.decision_event_ms)
        self.weights.extend(other.weights)
        self.dead_letters.extend(other.dead_letters)
        self.rewards_applied += other.rewards_applied
        self.trades_applied += other.trades_applied
        self.controls_applied += other.controls_applied
        self.modes.update(other.modes)
        self.guardrails.update(other.guardrails)
        self.arms_chosen.update(other.arms_chosen)


class PartitionEngine:
    """State and handlers of one input partition.

    Args:
        config: Application configuration.
        partition: The input partition this engine owns (also its changelog partition).
        serdes: Encoders / decoders shared by the instance.
    """

    def __init__(self, config: AppConfig, partition: int, serdes: SerdeRegistry) -> None:
        self.config = config
        self.partition = partition
        self.serdes = serdes
        self.policy = BidPolicy(config.bidding, config.safety)
        self.campaigns = BiddingState(config.bidding)
        self.ensembles = EnsembleTable(config.ensemble)
        self.dirty_campaigns: set[str] = set()
        self.dirty_ensembles: set[str] = set()

    # ---- decoding ---------------------------------------------------------------------------
    def _decode(
        self, source: SourceBatch, schema: str, out: EngineOutputs
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """Decode and structurally validate; everything rejected becomes a dead letter."""
        limits = self.config.limits
        values: list[bytes | None] = []
        idx: list[int] = []
        for i, value in enumerate(source.values):
            if value is not None and len(value) > limits.max_message_bytes:
                self._dead(
                    out,
                    source,
                    i,
                    "oversize",
                    f"value of {len(value)} bytes exceeds "
                    f"limits.max_message_bytes={limits.max_message_bytes}",
                )
                continue
            values.append(value)
            idx.append(i)
        records, ok, failures = self.serdes[schema].decode_many(values)
        for j, why in failures:
            self._dead(out, source, idx[j], "decode", why)
        kept: list[dict[str, Any]] = []
        kept_idx: list[int] = []
        key_field = _KEY_FIELD[schema]
        max_len = limits.max_string_length
        max_map = limits.max_map_entries
        for rec, j in zip(records, ok, strict=True):
            i = idx[j]
            reason: str | None = None
            for name in _STRING_FIELDS[schema]:
                text = rec.get(name)
                if text is not None and len(text) > max_len:
                    reason = f"field {name} has {len(text)} characters (max {max_len})"
                    break
            if reason is None:
                for name in _FLOAT_FIELDS[schema]:
                    number = rec.get(name)
                    if number is not None and not math.isfinite(number):
                        reason = f"field {name} is {number} (must be a finite number)"
                        break
                if reason is not None:
                    self._dead(out, source, i, "value", reason)
                    continue
                for name in _MAP_FIELDS.get(schema, ()):
                    entries = rec.get(name)
                    if entries is not None and len(entries) > max_map:
                        reason = f"field {name} has {len(entries)} entries (max {max_map})"
                        break
            if reason is not None:
                self._dead(out, source, i, "oversize", reason)
                continue
            if not rec[key_field]:
                self._dead(out, source, i, "value", f"{key_field} is empty")
                continue
            key = source.keys[i]
            if key is not None and key != rec[key_field].encode():
                self._dead(
                    out,
                    source,
                    i,
                    "key_mismatch",
                    f"message key {key!r} differs from "
                    f"{key_field}={rec[key_field]!r}; state would land on the wrong partition",
                )
                continue
            kept.append(rec)
            kept_idx.append(i)
        return kept, kept_idx

    @staticmethod
    def _dead(
        out: EngineOutputs, source: SourceBatch, i: int, error_class: str, reason: str
    ) -> None:
        out.dead_letters.append(
            DeadLetter(
                source.topic,
                source.partition,
                source.offsets[i],
                source.keys[i],
                source.values[i],
                error_class,
                reason,
            )
        )

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
        records, idx = self._decode(source, "ControlCommand", out)
        for rec, i in zip(records, idx, strict=True):
            reason = apply_control(self, rec)
            if reason is not None:
                self._dead(out, source, i, "command", reason)
                continue
            out.controls_applied += 1
            if rec["target"] == "ensemble" and self.ensembles.has_key(rec["key"]):
                out.weights.append(self._encode_weights(rec["key"]))

    def _outcomes(self, source: SourceBatch, out: EngineOutputs) -> None:
        records, idx = self._decode(source, "BidOutcome", out)
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
            self._dead(out, source, idx[j], error_class, str(reasons[j]))
        if bad.all():
            return
        good = batch.take(np.flatnonzero(~bad)) if bad.any() else batch
        self.policy.observe(good, self.campaigns)
        self.dirty_campaigns.update(np.unique(good.campaign_id).tolist())
        out.rewards_applied += len(good)

    def _trades(self, source: SourceBatch, out: EngineOutputs) -> None:
        records, idx = self._decode(source, "TradeOutcome", out)
        if not records:
            return
        rejected, changed = process_trades(self.ensembles, records)
        for j, (error_class, reason) in rejected.items():
            self._dead(out, source, idx[j], error_class, reason)
        out.trades_applied += len(records) - len(rejected)
        self.dirty_ensembles.update(changed)
        for key in sorted(changed):
            out.weights.append(self._encode_weights(key))

    def _requests(self, source: SourceBatch, out: EngineOutputs, now_ms: int) -> None:
        records, idx = self._decode(source, "BidRequest", out)
        if not records:
            return
        batch = RequestBatch.from_records(records)
        reasons = self.policy.validate_requests(batch)
        bad = np.array([r is not None for r in reasons], dtype=bool)
        for j in np.flatnonzero(bad).tolist():
            self._dead(out, source, idx[j], "value", str(reasons[j]))
        if bad.all():
            return
        good = batch.take(np.flatnonzero(~bad)) if bad.any() else batch
        decisions = self.policy.decide(good, self.campaigns, decided_at_ms=now_ms)
        serde = self.serdes["BidDecision"]
        for rec in decisions.to_records():
            out.decisions.append((rec["campaign_id"].encode(), serde.encode(rec)))
            out.modes[rec["mode"]] += 1
            out.arms_chosen[rec["arm"]] += 1
            out.guardrails.update(rec["guardrails"])
        out.decision_event_ms.extend(good.event_time.tolist())

    def _encode_weights(self, key: str) -> tuple[bytes, bytes]:
        return key.encode(), self.serdes["EnsembleWeights"].encode(self.ensembles.snapshot(key))

    # ---- state persistence ------------------------------------------------------------------
    def take_dirty(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(kind, key, state)`` for every key changed since the last call; clears the marks."""
        items: list[tuple[str, str, dict[str, Any]]] = [
            ("campaign", key, self.campaigns.get_key_state(key))
            for key in sorted(self.dirty_campaigns)
        ]
        items.extend(
            ("ensemble", key, self.ensembles.get_key_state(key))
            for key in sorted(self.dirty_ensembles)
        )
        self.dirty_campaigns.clear()
        self.dirty_ensembles.clear()
        return items

    def restore(self, kind: str, key: str, state: Mapping[str, Any]) -> None:
        """Load one key's state from a changelog record."""
        if kind == "campaign":
            self.campaigns.set_key_state(key, state)
        elif kind == "ensemble":
            self.ensembles.set_key_state(key, state)
        else:
            msg = f"unknown state kind {kind!r} for key {key!r}"
            raise StateError(msg)

    def key_count(self) -> tuple[int, int]:
        """Number of (campaign, ensemble) keys held."""
        return self.campaigns.thompson.n_keys, self.ensembles.bandit.n_keys


def encode_state(kind: str, key: str, state: Mapping[str, Any]) -> str:
    """Canonical JSON of a state payload (sorted keys, no NaN)."""
    return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False)


def unique_keys(values: Sequence[str]) -> list[str]:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))
