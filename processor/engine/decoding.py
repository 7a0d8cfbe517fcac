"""Decoding and validation of one input batch: Avro values to records or columns, limits, keys.

Shared by every handler of :class:`~processor.engine.core.PartitionEngine` and by the one-pass
request decide (:mod:`processor.engine.requests`). Whatever does not decode, breaks a limit
(``limits.*``) or has a message key that differs from its record's key becomes a dead letter
with a reason; nothing here changes state. Depends on the codec only, never on Kafka clients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.codec.columnar import Columns, MapColumn, decode_columns
from processor.codec.serde import AvroSerde
from processor.config import LimitsConfig
from processor.engine import outputs
from processor.engine.outputs import EngineOutputs, SourceBatch, dead_letter

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
# Maps that are only bounded and carried, never read: decoded lazily (``MapColumn``) on the
# columnar path.
_CARRIED_MAPS: dict[str, tuple[str, ...]] = {"BidRequest": ("context",)}
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


def decode_records(
    serde: AvroSerde, limits: LimitsConfig, source: SourceBatch, schema: str, out: EngineOutputs
) -> tuple[list[dict[str, Any]], list[int]]:
    """Decode record by record and validate; everything rejected becomes a dead letter in
    ``out``. Returns the kept records and their positions in ``source``."""
    values: list[bytes | None] = []
    idx: list[int] = []
    for i, value in enumerate(source.values):
        if value is not None and len(value) > limits.max_message_bytes:
            dead_letter(
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
    records, ok, failures = serde.decode_many(values)
    for j, why in failures:
        dead_letter(out, source, idx[j], "decode", why)
    kept: list[dict[str, Any]] = []
    kept_idx: list[int] = []
    for rec, j in zip(records, ok, strict=True):
        i = idx[j]
        rejected = check_record(limits, rec, source.keys[i], schema)
        if rejected is not None:
            dead_letter(out, source, i, *rejected)
            continue
        kept.append(rec)
        kept_idx.append(i)
    return kept, kept_idx


def check_record(
    limits: LimitsConfig, rec: Mapping[str, Any], key: bytes | None, schema: str
) -> tuple[str, str] | None:
    """``(error class, reason)`` if a decoded record breaks a limit or its key, else None."""
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


def _longest(values: list[Any]) -> int:
    """Length of the longest value (tombstones count as 0)."""
    try:
        return max(map(len, values), default=0)
    except TypeError:  # a tombstone (None) among them
        return max((len(v) for v in values if v is not None), default=0)


def decode_batch_columns(
    serde: AvroSerde, limits: LimitsConfig, source: SourceBatch, schema: str, out: EngineOutputs
) -> tuple[Columns, I64] | None:
    """Columnar :func:`decode_records`: same dead letters, same order; kept rows as positions.

    Returns ``None`` when the schema or wire format has no columnar decoder (or a message is
    oversize: the record path keeps its exact handling of those).
    """
    max_bytes = limits.max_message_bytes
    values = source.values
    if _longest(values) > max_bytes:
        # rare: keep the record path's exact handling of oversize messages
        return None
    lazy = _CARRIED_MAPS.get(schema, ())
    decoded = decode_columns(serde, values, min_vectorized=outputs.MIN_VECTORIZED, lazy_maps=lazy)
    if decoded is None:
        return None
    cols, failures = decoded
    n = len(values)
    suspect = np.zeros(n, dtype=np.bool_)
    for i, why in failures:
        dead_letter(out, source, i, "decode", why)
        suspect[i] = True
    failed = suspect.copy()
    max_len = limits.max_string_length
    for name in _STRING_FIELDS[schema]:
        col = cols.data.get(name)
        if col is not None and cols.longest.get(name, max_len + 1) > max_len:
            suspect |= np.fromiter(map(len, col), dtype=np.int64, count=n) > max_len
    for name in _FLOAT_FIELDS[schema]:
        bad_number = ~np.isfinite(cols.data[name])
        null = cols.null.get(name)
        suspect |= bad_number if null is None else bad_number & ~null
    for name in _MAP_FIELDS.get(schema, ()):
        col = cols.data[name]
        if isinstance(col, MapColumn):  # entries written: an upper bound, checked exactly below
            suspect |= col.counts > limits.max_map_entries
        else:
            sizes = [0 if m is None else len(m) for m in col.tolist()]
            suspect |= np.asarray(sizes, dtype=np.int64) > limits.max_map_entries
    key_col = cols.data[_KEY_FIELD[schema]].tolist()
    keys = source.keys
    encoded = [k.encode() for k in key_col]
    if encoded != keys or not all(encoded):  # the common case is one list comparison
        suspect |= np.fromiter(
            (not e or (m is not None and m != e) for m, e in zip(keys, encoded, strict=True)),
            dtype=np.bool_,
            count=n,
        )
    for i in np.flatnonzero(suspect & ~failed).tolist():
        rejected = check_record(limits, cols.record(i), keys[i], schema)
        if rejected is not None:
            dead_letter(out, source, i, *rejected)
        else:
            suspect[i] = False
    return cols, np.flatnonzero(~suspect)
