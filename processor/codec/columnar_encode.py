"""Columnar (vectorized) Avro encoding of the stage's flat output records.

``encode_columns`` writes a batch given as columns with a handful of numpy operations per field
group; the bytes equal ``fastavro.schemaless_writer``'s record by record (property-tested in
``tests/unit/kafka/test_columnar.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from processor.codec.columnar import _ARANGE10, _PRIMITIVES, _SHIFTS
from processor.codec.serde import AvroSerde, load_schema_json, strip_logical_types
from processor.errors import SerializationError

_SMALL_LEN = [bytes([2 * i]) for i in range(64)]


def avro_long(n: int) -> bytes:
    """Avro zig-zag varint of a long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string_parts(texts: Sequence[str]) -> list[bytes]:
    small = _SMALL_LEN
    out = []
    for text in texts:
        data = text.encode()
        size = len(data)
        out.append((small[size] if size < 64 else avro_long(size)) + data)
    return out


def _varint_block(cols: Sequence[Any], n: int) -> list[bytes]:
    """Per row, the zig-zag varints of several long columns, concatenated (vectorized)."""
    mats = []
    lens = []
    for col in cols:
        v = np.asarray(col, dtype=np.int64)
        z = (v.astype(np.uint64) << np.uint64(1)) ^ (v >> 63).astype(np.uint64)
        groups = (z[:, None] >> _SHIFTS[None, :]) & np.uint64(0x7F)
        length = np.maximum(1, 10 - np.argmax(groups[:, ::-1] != 0, axis=1))
        length = np.where((groups != 0).any(axis=1), length, 1)
        cont = _ARANGE10[None, :] < (length - 1)[:, None]
        mats.append((groups | (cont.astype(np.uint64) << np.uint64(7))).astype(np.uint8))
        lens.append(length)
    mat = np.concatenate(mats, axis=1)
    keep = np.concatenate([_ARANGE10[None, :] < ln[:, None] for ln in lens], axis=1)
    raw = mat[keep].tobytes()
    ends = np.cumsum(np.sum(lens, axis=0)).tolist()
    starts = [0, *ends[:-1]]
    return [raw[s:e] for s, e in zip(starts, ends, strict=True)]


def _fixed_block(cols: Sequence[Any], n: int) -> list[bytes]:
    """Per row, several double columns as little-endian bytes, concatenated."""
    mat = np.column_stack([np.asarray(c, dtype="<f8") for c in cols])
    raw = mat.tobytes()
    w = 8 * len(cols)
    return [raw[i : i + w] for i in range(0, n * w, w)]


def _double_maps(maps: Sequence[Mapping[str, float]]) -> list[bytes]:
    """Per row, an Avro ``map<double>`` as fastavro writes it: one block, then the end marker."""
    names: dict[str, bytes] = {}
    out = []
    for m in maps:
        if not m:
            out.append(b"\x00")
            continue
        for name in m:
            if name not in names:
                names[name] = _string_parts([name])[0]
        try:
            values = struct.pack(f"<{len(m)}d", *m.values())
        except struct.error as exc:
            raise TypeError(str(exc)) from exc
        body = b"".join(names[k] + values[8 * i : 8 * i + 8] for i, k in enumerate(m))
        out.append(avro_long(len(m)) + body + b"\x00")
    return out


@cache
def _writer_plan(name: str) -> tuple[tuple[str, str, Any], ...] | None:
    """``(field, kind, detail)`` per field for :func:`encode_columns`, ``None`` if not flat."""
    schema = strip_logical_types(load_schema_json(name))
    plan: list[tuple[str, str, Any]] = []
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t.get("type") in _PRIMITIVES and len(t) <= 2:
            t = t["type"]
        if t in ("string", "double", "long", "int", "boolean"):
            plan.append((f["name"], str(t), None))
        elif isinstance(t, dict) and t.get("type") == "enum":
            plan.append((f["name"], "enum", {s: avro_long(i) for i, s in enumerate(t["symbols"])}))
        elif isinstance(t, dict) and t.get("type") == "array" and t.get("items") == "string":
            plan.append((f["name"], "strings", None))
        elif isinstance(t, dict) and t.get("type") == "map" and t.get("values") == "double":
            plan.append((f["name"], "map_double", None))
        else:
            return None
    return tuple(plan)


def encode_columns(serde: AvroSerde, columns: Mapping[str, Any], n: int) -> list[bytes] | None:
    """Encode ``n`` records given as columns; byte-identical to ``serde.encode`` per record.

    ``columns`` maps every field to a sequence of length ``n``: numpy arrays for numbers, str
    sequences for strings and enum symbols, lists of str for ``array<string>``, mappings for
    ``map<double>``. Returns ``None`` when the schema is not flat or a registry is configured
    (callers then encode per record).
    Values the schema cannot hold raise :class:`SerializationError` like ``encode`` does.
    """
    plan = _writer_plan(serde.name)
    if plan is None or serde.wire_format != "schemaless":
        return None
    if n == 0:
        return []
    parts: list[list[bytes]] = []
    group: list[Any] = []
    group_kind = ""

    def flush() -> None:
        nonlocal group, group_kind
        if group:
            block = _fixed_block if group_kind == "double" else _varint_block
            parts.append(block(group, n))
        group, group_kind = [], ""

    try:
        for name, kind, detail in plan:
            col = columns[name]
            if kind in ("double", "long", "int"):
                k = "double" if kind == "double" else "long"
                if k != group_kind:
                    flush()
                    group_kind = k
                if kind == "int":
                    arr = np.asarray(col, dtype=np.int64)
                    if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
                        msg = f"field {name} does not fit an Avro int"
                        raise SerializationError(msg)
                group.append(col)
                continue
            flush()
            if kind == "string":
                parts.append(_string_parts(col))
            elif kind == "boolean":
                parts.append([b"\x01" if v else b"\x00" for v in np.asarray(col, dtype=bool)])
            elif kind == "enum":
                parts.append([detail[s] for s in col])
            elif kind == "map_double":
                parts.append(_double_maps(col))
            else:
                cache_: dict[tuple[str, ...], bytes] = {}
                out = []
                for items in col:
                    key = tuple(items)
                    enc = cache_.get(key)
                    if enc is None:
                        body = b"".join(_string_parts(key))
                        enc = (avro_long(len(key)) + body + b"\x00") if key else b"\x00"
                        cache_[key] = enc
                    out.append(enc)
                parts.append(out)
        flush()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"columns do not match schema {serde.name}: {type(exc).__name__}: {exc}"
        raise SerializationError(msg) from exc
    return [b"".join(row) for row in zip(*parts, strict=True)]
