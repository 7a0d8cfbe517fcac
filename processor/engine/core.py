"""Batch handlers for one input partition (see the package docstring)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from processor import metrics_families as families
from processor.config import AppConfig
from processor.engine import outputs
from processor.engine.attribution import join_outcomes, split_join_records, take_join_records
from processor.engine.controls import apply_control
from processor.engine.ensemble_publish import publish_weights
from processor.engine.ensembles import EnsembleTable
from processor.engine.outputs import DeadLetter, EngineOutputs, SourceBatch
from processor.engine.requests import decide_requests
from processor.engine.trades import process_trades
from processor.engine.trades_columnar import TradeColumns, process_trade_columns
from processor.errors import StateError
from processor.join import RewardJoin
from processor.kafka.columnar import Columns, decode_columns
from processor.kafka.serde import SerdeRegistry
from processor.policy.bidding import (
    BiddingState,
    BidPolicy,
    DecisionBatch,
    OutcomeBatch,
)
from processor.state.changelog import StoredState
from processor.state.packing import pack_campaigns, restore_campaigns

logger = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]

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
        for rec, j in zip(records, ok, strict=True):
            i = idx[j]
            rejected = self._check(rec, source.keys[i], schema)
            if rejected is not None:
                self._dead(out, source, i, *rejected)
                continue
            kept.append(rec)
            kept_idx.append(i)
        return kept, kept_idx

    def _check(
        self, rec: Mapping[str, Any], key: bytes | None, schema: str
    ) -> tuple[str, str] | None:
        """``(error class, reason)`` if a decoded record breaks a limit or its key, else None."""
        limits = self.config.limits
        key_field = _KEY_FIELD[schema]
        max_len = limits.max_string_length
        max_map = limits.max_map_entries
        for name in _STRING_FIELDS[schema]:
            text = rec.get(name)
            if text is not None and len(text) > max_len:
                return "oversize", f"field {name} has {len(text)} characters (max {max_len})"
        for name in _FLOAT_FIELDS[schema]:
            number = rec.get(name)
            if number is not None and not math.isfinite(number):
                return "value", f"field {name} is {number} (must be a finite number)"
        for name in _MAP_FIELDS.get(schema, ()):
            entries = rec.get(name)
            if entries is not None and len(entries) > max_map:
                return "oversize", f"field {name} has {len(entries)} entries (max {max_map})"
        if not rec[key_field]:
            return "value", f"{key_field} is empty"
        if key is not None and key != rec[key_field].encode():
            return (
                "key_mismatch",
                f"message key {key!r} differs from "
                f"{key_field}={rec[key_field]!r}; state would land on the wrong partition",
            )
        return None

    def _decode_columns(
        self, source: SourceBatch, schema: str, out: EngineOutputs
    ) -> tuple[Columns, I64] | None:
        """Columnar :meth:`_decode`: same dead letters, same order; kept rows as positions.

        Returns ``None`` when the schema or wire format has no columnar decoder.
        """
        limits = self.config.limits
        max_bytes = limits.max_message_bytes
        values = source.values
        if any(v is not None and len(v) > max_bytes for v in values):
            # rare: keep the record path's exact handling of oversize messages
            return None
        decoded = decode_columns(self.serdes[schema], values, min_vectorized=outputs.MIN_VECTORIZED)
        if decoded is None:
            return None
        cols, failures = decoded
        n = len(values)
        suspect = np.zeros(n, dtype=np.bool_)
        for i, why in failures:
            self._dead(out, source, i, "decode", why)
            suspect[i] = True
        failed = suspect.copy()
        max_len = limits.max_string_length
        for name in _STRING_FIELDS[schema]:
            col = cols.data.get(name)
            if col is not None:
                suspect |= np.fromiter(map(len, col), dtype=np.int64, count=n) > max_len
        for name in _FLOAT_FIELDS[schema]:
            bad_number = ~np.isfinite(cols.data[name])
            null = cols.null.get(name)
            suspect |= bad_number if null is None else bad_number & ~null
        for name in _MAP_FIELDS.get(schema, ()):
            col = cols.data[name]
            sizes = [0 if m is None else len(m) for m in col.tolist()]
            suspect |= np.asarray(sizes, dtype=np.int64) > limits.max_map_entries
        key_col = cols.data[_KEY_FIELD[schema]].tolist()
        keys = source.keys
        suspect |= np.fromiter(
            (
                not k or (m is not None and m != k.encode())
                for m, k in zip(keys, key_col, strict=True)
            ),
            dtype=np.bool_,
            count=n,
        )
        for i in np.flatnonzero(suspect & ~failed).tolist():
            rejected = self._check(cols.record(i), keys[i], schema)
            if rejected is not None:
                self._dead(out, source, i, *rejected)
            else:
                suspect[i] = False
        return cols, np.flatnonzero(~suspect)

    @staticmethod
    def _dead(
        out: EngineOutputs, source: SourceBatch, i: int, error_class: str, reason: str
    ) -> None:
        out.dead_letters.append(
            DeadLetter(
                source.topic,
                source.partition_of(i),
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
        columnar = self._decode_columns(source, "BidOutcome", out)
        if columnar is not None:
            cols, rows = columnar
            if not rows.size:
                return
            batch = OutcomeBatch.from_columns(cols, rows)
            idx: list[int] = rows.tolist()
        else:
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
        kept = np.flatnonzero(~bad)
        good = batch.take(kept) if bad.any() else batch
        if self.join is not None:
            join_outcomes(self, good, np.asarray(idx, dtype=np.int64)[kept], source, out)
            return
        self.policy.observe(good, self.campaigns)
        self.dirty_campaigns.update(np.unique(good.campaign_id).tolist())
        out.rewards_applied += len(good)

    def _logged_decisions(self, source: SourceBatch) -> None:
        """Replay: log the decisions of the bid-decisions topic (undecodable ones are skipped)."""
        if self.join is None:
            return
        records, _, _ = self.serdes["BidDecision"].decode_many(source.values)
        self.join.log_records(records, self.policy, self.campaigns)

    def log_decisions(self, decisions: DecisionBatch) -> None:
        """Log decisions this engine made (live; replay logs the recorded ones instead)."""
        if self.join is not None and self.decisions == "own":
            self.join.log_decisions(decisions)

    def _trades(self, source: SourceBatch, out: EngineOutputs) -> None:
        columnar = self._decode_columns(source, "TradeOutcome", out)
        if columnar is not None:
            cols, rows = columnar
            if not rows.size:
                return
            n = int(rows.size)
            trades = TradeColumns.from_columns(cols, rows)
            rejected, changed = process_trade_columns(self.ensembles, trades)
            idx: list[int] = rows.tolist()
        else:
            records, idx = self._decode(source, "TradeOutcome", out)
            if not records:
                return
            n = len(records)
            rejected, changed = process_trades(self.ensembles, records)
        for j, (error_class, reason) in rejected.items():
            self._dead(out, source, idx[j], error_class, reason)
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
            pack_campaigns(self.campaigns, keys)
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
            restore_campaigns(self.campaigns, [key], [state])
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
            restore_campaigns(self.campaigns, keys, values)  # type: ignore[arg-type]
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
            restore_campaigns(self.campaigns, packed_keys, packed)
        for kind, key, state in others:
            self.restore(kind, key, state)

    def key_count(self) -> tuple[int, int]:
        """Number of (campaign, ensemble) keys held."""
        return self.campaigns.thompson.n_keys, self.ensembles.bandit.n_keys
