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
    ends = np.cumsum(lens)
    flat = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)
    prefix = ends - lens
    flat[prefix] = (2 * chars).astype(np.uint8)
    body = np.ones(flat.shape[0], dtype=np.bool_)
    body[prefix] = False
    flat[body] = np.frombuffer(data, dtype=np.uint8)
    return lens, flat


def _varint_block(cols: Sequence[Any], n: int) -> Flat:
    """The zig-zag varints of several long columns, per row concatenated (vectorized)."""
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
    out = np.empty(int(row_end[-1]), dtype=np.uint8)
    for f, (field_lens, data) in enumerate(fields):
        width = int(field_lens[0])
        if bool((field_lens == width).all()):
            at = (field_start[:, f][:, None] + np.arange(width, dtype=np.int64)).reshape(-1)
        else:
            first = np.cumsum(field_lens) - field_lens
            at = np.repeat(field_start[:, f] - first, field_lens)
            at += np.arange(at.shape[0], dtype=np.int64)
        out[at] = data
    raw = out.tobytes()
    return [raw[s:e] for s, e in zip(row_start.tolist(), row_end.tolist(), strict=True)]


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
                parts.append(_string_flat(col))
            elif kind == "boolean":
                flags = np.asarray(col, dtype=np.bool_).astype(np.uint8)
                parts.append((np.ones(n, dtype=np.int64), flags))
            elif kind == "enum":
                parts.append(_flat([detail[s] for s in col]))
            elif kind == "map_double":
                parts.append(_flat(_double_maps(col)))
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
                parts.append(_flat(out))
        flush()
        if any(lens.shape != (n,) for lens, _ in parts):
            msg = f"a column does not have {n} values"
            raise ValueError(msg)
        return _assemble(parts, n)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"columns do not match schema {serde.name}: {type(exc).__name__}: {exc}"
        raise SerializationError(msg) from exc
