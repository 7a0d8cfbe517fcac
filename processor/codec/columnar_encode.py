"""Columnar (vectorized) Avro encoding of the stage's flat output records.

``encode_columns`` writes a batch given as columns with a handful of numpy operations per field
group; the bytes equal ``fastavro.schemaless_writer``'s record by record (property-tested in
``tests/unit/kafka/test_columnar.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from processor.codec.columnar import _ARANGE10, _PRIMITIVES, _SHIFTS
from processor.codec.serde import AvroSerde, load_schema_json, strip_logical_types
from processor.errors import SerializationError

_SMALL_LEN = [bytes([2 * i]) for i in range(64)]
# zig-zag values from these up take one more varint byte: 2^7, 2^14, ..., 2^63
_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


@dataclass(frozen=True)
class Categorical:
    """A column given as ``codes`` (int array, one per row) into ``values``, its distinct values:
    each value is encoded once and its bytes copied to its rows (a decision's mode or guardrail
    list, where a batch has a handful of distinct values)."""

    codes: Any
    values: Sequence[Any]


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


Flat = tuple[Any, Any]
"""One field of every row: ``(lengths, data)``, the ``n`` byte lengths and the bytes of all rows
concatenated in row order (uint8)."""


def _flat(parts: Sequence[bytes]) -> Flat:
    """A field given as one ``bytes`` per row."""
    lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    return lens, np.frombuffer(b"".join(parts), dtype=np.uint8)


def _string_flat(texts: Sequence[str]) -> Flat:
    """Avro strings (length varint, UTF-8); ASCII values under 64 characters (a one-byte length,
    bytes = characters: the ids the stage writes) without a Python operation per row."""
    texts = texts.tolist() if isinstance(texts, np.ndarray) else texts
    joined = "".join(texts)  # TypeError unless every value is a str
    data = joined.encode()
    n = len(texts)
    chars = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    if len(data) != len(joined) or (n and int(chars.max()) >= 64):
        return _flat(_string_parts(texts))
    lens = chars + 1
    size = int(chars[0]) if n else 0
    if n and bool((chars == size).all()):  # one length (request ids): rows of size + 1 bytes
        rows = np.empty((n, size + 1), dtype=np.uint8)
        rows[:, 0] = 2 * size
        rows[:, 1:] = np.frombuffer(data, dtype=np.uint8).reshape(n, size)
        return lens, rows.reshape(-1)
    ends = np.cumsum(lens)
    flat = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)
    prefix = ends - lens
    flat[prefix] = (2 * chars).astype(np.uint8)
    body = np.ones(flat.shape[0], dtype=np.bool_)
    body[prefix] = False
    flat[body] = np.frombuffer(data, dtype=np.uint8)
    return lens, flat


def _zigzag(col: Any) -> Any:
    v = np.asarray(col, dtype=np.int64)
    return (v.astype(np.uint64) << np.uint64(1)) ^ (v >> 63).astype(np.uint64)


def _varint_block(cols: Sequence[Any], n: int) -> Flat:
    """The zig-zag varints of several long columns, per row concatenated (vectorized).

    A column whose varints all have one length (a constant such as the policy version or the
    decision time, timestamps of one era) is written as an ``n × length`` block directly; the
    block is the rows' bytes when every column is such a column.
    """
    blocks = []
    for col in cols:
        z = _zigzag(col)
        length = np.searchsorted(_VARINT_STEPS, z, side="right") + 1
        width = int(length[0])
        if not bool((length == width).all()):
            return _varint_block_general(cols, n)
        if bool((z == z[0]).all()):
            one = np.frombuffer(avro_long(int(np.asarray(col)[0])), dtype=np.uint8)
            blocks.append(np.broadcast_to(one, (n, width)))
            continue
        groups = (z[:, None] >> _SHIFTS[None, :width]) & np.uint64(0x7F)
        groups[:, :-1] |= np.uint64(0x80)
        blocks.append(groups.astype(np.uint8))
    block = np.concatenate(blocks, axis=1) if len(blocks) > 1 else np.ascontiguousarray(blocks[0])
    return np.full(n, block.shape[1], dtype=np.int64), block.reshape(-1)


def _varint_block_general(cols: Sequence[Any], n: int) -> Flat:
    """:func:`_varint_block` for columns of varints of several lengths."""
    mats = []
    lens = []
    for col in cols:
        z = _zigzag(col)
        groups = (z[:, None] >> _SHIFTS[None, :]) & np.uint64(0x7F)
        length = np.maximum(1, 10 - np.argmax(groups[:, ::-1] != 0, axis=1))
        length = np.where((groups != 0).any(axis=1), length, 1)
        cont = _ARANGE10[None, :] < (length - 1)[:, None]
        mats.append((groups | (cont.astype(np.uint64) << np.uint64(7))).astype(np.uint8))
        lens.append(length)
    mat = np.concatenate(mats, axis=1)
    keep = np.concatenate([_ARANGE10[None, :] < ln[:, None] for ln in lens], axis=1)
    return np.sum(lens, axis=0).astype(np.int64), mat[keep]


def _fixed_block(cols: Sequence[Any], n: int) -> Flat:
    """Several double columns as little-endian bytes, per row concatenated."""
    mat = np.ascontiguousarray(np.column_stack([np.asarray(c, dtype="<f8") for c in cols]))
    return np.full(n, 8 * len(cols), dtype=np.int64), mat.view(np.uint8).reshape(-1)


def _assemble(fields: Sequence[Flat], n: int) -> list[bytes]:
    """The records: each row's fields one after the other, written into one buffer by numpy
    scatters (one per field), then cut into one ``bytes`` per row."""
    lens = np.column_stack([f[0] for f in fields])
    row_end = np.cumsum(lens.sum(axis=1))
    row_start = np.empty_like(row_end)
    row_start[0] = 0
    row_start[1:] = row_end[:-1]
    field_start = row_start[:, None] + np.cumsum(lens, axis=1) - lens
    total = int(row_end[-1])
    out = np.empty(total, dtype=np.uint8)
    for f, (field_lens, data) in enumerate(fields):
        width = int(field_lens[0])
        if width and bool((field_lens == width).all()):
            # the same width in every row: rows written at their offsets through a view of the
            # buffer's width-byte windows (no n × width index array)
            windows = np.lib.stride_tricks.sliding_window_view(out, width, writeable=True)
            windows[field_start[:, f]] = data.reshape(n, width)
        elif data.size:
            first = np.cumsum(field_lens) - field_lens
            at = np.repeat(field_start[:, f] - first, field_lens)
            at += np.arange(at.shape[0], dtype=np.int64)
            out[at] = data
    raw = out.tobytes()
    return [raw[s:e] for s, e in zip(row_start.tolist(), row_end.tolist(), strict=True)]


def _codes(col: Categorical) -> Any:
    """``col``'s codes as indices, each checked to name one of its values."""
    codes = np.asarray(col.codes, dtype=np.intp)
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= len(col.values)):
        msg = f"a code is outside the {len(col.values)} values of its column"
        raise ValueError(msg)
    return codes


def _take(table: Flat, codes: Any) -> Flat:
    """The rows of a field given as the encoded distinct values ``table`` and each row's code."""
    table_lens, table_data = table
    lens = table_lens[codes]
    width = int(table_lens[0]) if table_lens.size else 0
    if table_lens.size and bool((table_lens == width).all()):
        return lens, table_data.reshape(-1, width)[codes].reshape(-1)
    starts = np.cumsum(table_lens) - table_lens
    first = np.cumsum(lens) - lens
    at = np.repeat(starts[codes] - first, lens)
    at += np.arange(at.shape[0], dtype=np.int64)
    return lens, table_data[at]


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


def _field(kind: str, detail: Any, col: Sequence[Any]) -> Flat:
    """One field of every row that is not a number: a string, boolean, enum symbol,
    ``map<double>`` or ``array<string>``."""
    if kind == "string":
        return _string_flat(col)
    if kind == "boolean":
        flags = np.asarray(col, dtype=np.bool_).astype(np.uint8)
        return np.ones(len(flags), dtype=np.int64), flags
    if kind == "enum":
        return _flat([detail[s] for s in col])
    if kind == "map_double":
        return _flat(_double_maps(col))
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
    return _flat(out)


def encode_columns(serde: AvroSerde, columns: Mapping[str, Any], n: int) -> list[bytes] | None:
    """Encode ``n`` records given as columns; byte-identical to ``serde.encode`` per record.

    ``columns`` maps every field to a sequence of length ``n``: numpy arrays for numbers, str
    sequences for strings and enum symbols, lists of str for ``array<string>``, mappings for
    ``map<double>``; any column may be a :class:`Categorical` instead. Returns ``None`` when
    the schema is not flat or a registry is configured (callers then encode per record).
    Values the schema cannot hold raise :class:`SerializationError` like ``encode`` does.
    """
    plan = _writer_plan(serde.name)
    if plan is None or serde.wire_format != "schemaless":
        return None
    if n == 0:
        return []
    parts: list[Flat] = []
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
                if isinstance(col, Categorical):
                    col = np.asarray(col.values)[_codes(col)]
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
            if isinstance(col, Categorical):
                parts.append(_take(_field(kind, detail, col.values), _codes(col)))
            else:
                parts.append(_field(kind, detail, col))
        flush()
        if any(lens.shape != (n,) for lens, _ in parts):
            msg = f"a column does not have {n} values"
            raise ValueError(msg)
        return _assemble(parts, n)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"columns do not match schema {serde.name}: {type(exc).__name__}: {exc}"
        raise SerializationError(msg) from exc
