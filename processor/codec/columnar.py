"""Columnar (vectorized) Avro decoding and encoding for the stage's flat record types.

A batch of values is decoded field by field with numpy over one concatenated buffer instead of one
fastavro call per record; anything the fast path does not accept is handed to fastavro for that
record alone, so records and failure reasons are always exactly fastavro's. The encoder is
:mod:`processor.codec.columnar_encode`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from processor.codec.serde import AvroSerde, load_schema_json, strip_logical_types

# ---- columnar decoding ----------------------------------------------------------------------
# fastavro's reader costs ~10 µs per record in Python objects alone. The stage's input schemas are
# flat (primitives, strings, ["null", T] unions, maps of primitives), so a batch can be decoded
# field by field over all records at once: one numpy cursor per record into the concatenated
# values, varints / zig-zag / doubles gathered with fancy indexing, strings sliced. Anything the
# vectorized pass does not accept as canonical (a truncated value, a varint longer than the type
# allows, a boolean byte other than 0/1, a negative map block count, invalid UTF-8, trailing bytes)
# is handed to fastavro for that record alone, so the result — records or the failure reason — is
# always exactly fastavro's. A value that ends before its schema's trailing defaulted fields
# (written before they were added, see processor.codec.serde) gets their defaults.

_PRIMITIVES = ("boolean", "int", "long", "double", "string", "bytes")
_PAD = 64  # zero bytes after the values: every cursor position has a full window (_Cursor.window)


def _column_kind(t: Any) -> tuple[str, Any] | None:
    """``(kind, detail)`` of a field type the columnar decoder handles, else ``None``."""
    if isinstance(t, str) and t in _PRIMITIVES:
        return ("prim", t)
    if isinstance(t, list) and len(t) == 2 and t[0] == "null":
        inner = _column_kind(t[1])
        if inner is not None and inner[0] in ("prim", "map"):
            return ("nullable", inner)
        return None
    if isinstance(t, dict):
        if t.get("type") == "map" and t.get("values") in ("string", "double", "long", "int"):
            return ("map", t["values"])
        if t.get("type") == "enum":
            return ("enum", tuple(t["symbols"]))
        if t.get("type") in _PRIMITIVES and len(t) == 1:
            return ("prim", t["type"])
    return None


@cache
def columnar_plan(name: str) -> tuple[tuple[str, tuple[str, Any]], ...] | None:
    """Field plan of schema ``name`` for :class:`ColumnarDecoder`, or ``None`` if not flat."""
    schema = strip_logical_types(load_schema_json(name))
    plan = []
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and "logicalType" not in t and t.get("type") in _PRIMITIVES:
            t = t["type"]
        kind = _column_kind(t)
        if kind is None:
            return None
        plan.append((f["name"], kind))
    return tuple(plan)


@cache
def _optional_tail(name: str) -> frozenset[str]:
    """Fields a value of schema ``name`` may end before: the trailing ones with defaults."""
    fields = load_schema_json(name)["fields"]
    tail: set[str] = set()
    for f in reversed(fields):
        if "default" not in f:
            break
        tail.add(f["name"])
    return frozenset(tail)


class Columns:
    """A decoded batch as one array per field (row ``i`` = input value ``i``).

    Numbers are numpy arrays (``int64``, ``float64``, ``bool``); strings and maps are object
    arrays. A nullable field has a boolean array in :attr:`null` (True = the value is null; the
    array then holds 0 / NaN / ``""`` / ``None`` there). Rows listed in ``failures`` hold filler.
    """

    def __init__(self, n: int, plan: tuple[tuple[str, tuple[str, Any]], ...]) -> None:
        self.n = n
        self.plan = plan
        self.data: dict[str, Any] = {}
        self.null: dict[str, Any] = {}
        self.longest: dict[str, int] = {}
        """Per string column, when known: no value has more characters (its longest UTF-8)."""

    def set_row(self, i: int, record: Mapping[str, Any]) -> None:
        """Overwrite row ``i`` with a record decoded elsewhere (fastavro fallback)."""
        for name, (kind, _detail) in self.plan:
            value = record[name]
            if name in self.longest and isinstance(value, str):
                self.longest[name] = max(self.longest[name], len(value))
            if kind == "nullable":
                self.null[name][i] = value is None
                if value is None:
                    continue
            self.data[name][i] = value

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as the dict fastavro would have returned."""
        out: dict[str, Any] = {}
        for name, (kind, detail) in self.plan:
            if kind == "nullable" and self.null[name][i]:
                out[name] = None
                continue
            inner = detail if kind == "nullable" else (kind, detail)
            out[name] = _py(self.data[name][i], inner)
        return out


def _py(value: Any, kind: tuple[str, Any]) -> Any:
    if kind[0] == "map":
        return dict(value)
    if kind[0] == "enum":
        return str(value)
    t = kind[1]
    if t == "boolean":
        return bool(value)
    if t in ("int", "long"):
        return int(value)
    if t == "double":
        return float(value)
    return value


class MapColumn:
    """A map field decoded lazily: the entry count of every row now, a row's dict when asked.

    For a map the consumer only bounds and carries (a bid request's ``context``: the policy never
    reads it), building 5,000 dicts a batch was a third of decoding a request. The map's bytes are
    checked as fully as an eager decode (structure, UTF-8; anything else takes the fastavro path
    for its record), so decoding one later cannot fail. Indexing with an integer gives that row's
    dict; with a slice, mask or index array, another lazy column of those rows; ``tolist()`` all
    the dicts. Rows written by :meth:`Columns.set_row` (the fastavro fallback) hold their dicts.
    """

    counts: Any
    """Entries written per row (int64): at least the dict's length (a key written twice counts
    twice), so a bound on it is safe to check first."""

    __slots__ = ("_end", "_fixed", "_raw", "_start", "_values", "counts")

    def __init__(
        self,
        counts: Any,
        raw: bytes,
        start: Any,
        end: Any,
        values_type: str,
        fixed: Any,
    ) -> None:
        self.counts = counts
        self._raw = raw
        self._start = start
        self._end = end
        self._values = values_type
        self._fixed = fixed

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            fixed = self._fixed[index]
            if fixed is not None:
                return fixed
            return self._decode(np.array([int(index)], dtype=np.int64))[0]
        return MapColumn(
            self.counts[index],
            self._raw,
            self._start[index],
            self._end[index],
            self._values,
            self._fixed[index],
        )

    def __setitem__(self, i: int, value: Mapping[str, Any]) -> None:
        self._fixed[i] = dict(value)
        self.counts[i] = len(value)

    def tolist(self) -> list[dict[str, Any]]:
        """Every row's dict (decoded now, except the rows set from fastavro records)."""
        maps: list[dict[str, Any] | None] = self._fixed.tolist()
        lazy = [i for i, m in enumerate(maps) if m is None]
        for i, m in zip(lazy, self._decode(np.array(lazy, dtype=np.int64)), strict=True):
            maps[i] = m
        return maps  # type: ignore[return-value]  # every None was replaced

    def _decode(self, rows: Any) -> list[dict[str, Any]]:
        # positions copied by the fancy index: the reads advance them
        cur = _Cursor.at(self._raw, self._start[rows], self._end[rows])
        maps: list[dict[str, Any]] = cur.read_map(np.arange(len(rows)), self._values).tolist()
        return maps


_SHIFTS = (np.arange(10, dtype=np.uint64) * np.uint64(7)).astype(np.uint64)
_ARANGE10 = np.arange(10, dtype=np.int64)
_ARANGE64 = np.arange(64, dtype=np.int64)


class _Cursor:
    """Per-record read positions into one concatenated buffer."""

    def __init__(self, values: Sequence[bytes]) -> None:
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        ends = np.cumsum(lengths)
        self._over(b"".join(values) + bytes(_PAD), ends - lengths, ends)

    @classmethod
    def at(cls, raw: bytes, pos: Any, ends: Any) -> _Cursor:
        """A cursor over ``raw`` (a buffer made by ``__init__``) at positions ``pos``."""
        cur = cls.__new__(cls)
        cur._over(raw, pos, ends)
        return cur

    def _over(self, raw: bytes, pos: Any, ends: Any) -> None:
        self.raw = raw
        self.buf = np.frombuffer(raw, dtype=np.uint8)
        # every 64-byte window of the buffer, as a view: a gather of ``width`` bytes at n
        # positions is one row gather from it, with no n × width index array to build
        self.windows = np.lib.stride_tricks.sliding_window_view(self.buf, _PAD)
        # the little-endian double starting at every byte (an unaligned view: one gather a column)
        self.doubles = np.ndarray((len(raw) - 7,), dtype="<f8", buffer=raw, strides=(1,))
        self.ends = ends
        self.pos = pos
        self.bad = np.zeros(len(pos), dtype=np.bool_)
        self.limit = len(raw) - 1
        self.widest = 0  # set by string_column

    def window(self, pos: Any, width: int) -> Any:
        """``(len(pos), width)`` bytes starting at each position (``width`` ≤ 64); a position
        outside the values reads the zero padding."""
        return self.windows[np.clip(pos, 0, len(self.windows) - 1), :width]

    def spans_block(self, start: Any, size: Any, width: int) -> Any:
        """The spans ``start[i] : start[i] + size[i]`` (each at most ``width`` ≤ 64 bytes) as
        rows of ``width`` bytes, zero after each span's end."""
        used = _ARANGE64[None, :width] < size[:, None]
        return np.where(used, self.window(start, width), np.uint8(0))

    def varint(self, rows: Any, max_bytes: int) -> Any:
        """Zig-zag varints at ``rows``' cursors (advanced); overlong ones mark rows bad.

        A column of one-byte varints (string lengths, small counts, enum indexes) costs one
        gather; otherwise a window of 3, else ``max_bytes``, bytes per row is decoded at once (a
        fixed dozen numpy operations, whatever the lengths: small batches pay little per field).
        """
        pos = self.pos[rows]
        first = self.buf[np.clip(pos, 0, self.limit)]
        if bool((first < 0x80).all()):  # one byte each: always canonical, always in range
            small = first.astype(np.int64)
            self.pos[rows] = pos + 1
            return (small >> 1) ^ -(small & 1)
        # most multi-byte varints are short (lengths, counts): try a 3-byte window first
        for width in (min(3, max_bytes), max_bytes):
            window = self.window(pos, width)
            stop = window < 0x80
            ends = stop.any(axis=1)
            if width == max_bytes or bool(ends.all()):
                break
        length = np.argmax(stop, axis=1) + 1
        length[~ends] = 0
        used = _ARANGE10[None, :width] < length[:, None]
        groups = (window & 0x7F).astype(np.uint64) << _SHIFTS[None, :width]
        raw = np.bitwise_or.reduce(np.where(used, groups, np.uint64(0)), axis=1)
        last = window[np.arange(len(rows)), np.maximum(length - 1, 0)]
        bad = length == 0
        length[bad] = max_bytes
        value = (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)
        if max_bytes == 10:
            bad |= (length == 10) & (last > 1)
        else:  # int: 5 bytes, and the value must fit in 32 bits
            bad |= (value < -(2**31)) | (value >= 2**31)
        self.bad[rows[bad]] = True
        self.pos[rows] = pos + length
        return value

    def double(self, rows: Any) -> Any:
        pos = self.pos[rows]
        self.pos[rows] = pos + 8
        return self.doubles[np.clip(pos, 0, len(self.doubles) - 1)]

    def boolean(self, rows: Any) -> Any:
        pos = self.pos[rows]
        b = self.buf[np.clip(pos, 0, self.limit)]
        self.bad[rows[b > 1]] = True
        self.pos[rows] = pos + 1
        return b == 1

    def _spans(self, rows: Any) -> tuple[Any, Any]:
        """``(start, end)`` of the length-prefixed values (string, bytes) at ``rows``' cursors."""
        size = self.varint(rows, 10)
        start = self.pos[rows]
        end = start + size
        bad = (size < 0) | (end > self.ends[rows])
        if bad.any():
            self.bad[rows[bad]] = True
            end = np.where(bad, start, end)
        self.pos[rows] = end
        return start, end

    def string_column(self, rows: Any) -> Any:
        """:meth:`string` as an object array; ASCII ids up to 64 bytes without NUL (the common
        case) are decoded in a few numpy operations instead of one slice per row."""
        mark = self.pos[rows]
        start, end = self._spans(rows)
        size = end - start
        width = int(size.max()) if size.size else 0
        self.widest = width  # bytes: a bound on the characters of every value read here
        if 0 < width <= 64 and size.size >= 64:
            block = self.spans_block(start, size, width)
            # a NUL inside a value would be stripped by the fixed-width cast; non-ASCII needs
            # the UTF-8 decode: both take the per-row path
            if not (block >= 0x80).any() and (block != 0).sum() == int(size.sum()):
                # ASCII bytes are their code points: widened to UCS-4 they are the str_ array
                # (~40× faster than numpy's S → U cast, which decodes row by row)
                wide = np.ascontiguousarray(block, dtype=np.uint32).view(f"U{width}")
                return wide.reshape(-1).astype(object)
        self.pos[rows] = mark  # re-read the spans below
        return np.array(self.string(rows), dtype=object)

    def string(self, rows: Any) -> list[str]:
        start, end = self._spans(rows)
        raw = self.raw
        constant = self._constant(start, end)
        if constant is not None:
            try:
                return [constant.decode()] * len(rows)
            except UnicodeDecodeError:
                pass  # each row is marked bad below
        try:
            return [raw[s:e].decode() for s, e in zip(start.tolist(), end.tolist(), strict=True)]
        except UnicodeDecodeError:
            out = []
            for r, s, e in zip(rows.tolist(), start.tolist(), end.tolist(), strict=True):
                try:
                    out.append(raw[s:e].decode())
                except UnicodeDecodeError:
                    self.bad[r] = True
                    out.append("")
            return out

    def _constant(self, start: Any, end: Any) -> bytes | None:
        """The value when every slice ``start[i]:end[i]`` holds the same short bytes, else None
        (a column such as a version string or an empty field then costs one comparison)."""
        if not start.size:
            return None
        size = end - start
        width = int(size[0])
        if width > 32 or not bool((size == width).all()):
            return None
        if width:
            block = self.window(start, width)
            if not bool((block == block[0]).all()):
                return None
        return self.raw[int(start[0]) : int(start[0]) + width]

    def read(self, rows: Any, t: str) -> Any:
        if t == "boolean":
            return self.boolean(rows)
        if t == "int":
            return self.varint(rows, 5)
        if t == "long":
            return self.varint(rows, 10)
        if t == "double":
            return self.double(rows)
        if t == "bytes":
            return self.bytes_(rows)
        return self.string_column(rows)

    def bytes_(self, rows: Any) -> Any:
        start, end = self._spans(rows)
        raw = self.raw
        out = np.empty(len(rows), dtype=object)
        out[:] = [raw[s:e] for s, e in zip(start.tolist(), end.tolist(), strict=True)]
        return out

    def _map_entries(self, rows: Any, counts: Any) -> Iterator[tuple[Any, Any]]:
        """Walk the Avro maps at ``rows``' cursors block by block: yields ``(sub, slot)`` once per
        entry position (the rows that have an entry there and their positions in ``rows``); the
        caller reads or steps over that entry's key and value. Adds each block's count to
        ``counts`` (by slot); marks rows bad for a negative block count or a read past the end."""
        slot = np.arange(len(rows))
        active = rows
        while active.size:
            count = self.varint(active, 10)
            self.bad[active[count < 0]] = True
            more = count > 0
            active, slot, count = active[more], slot[more], count[more]
            counts[slot] += count
            left = count
            sub, sub_slot = active, slot
            while sub.size:
                yield sub, sub_slot
                left = left - 1
                self.bad[sub[self.pos[sub] > self.ends[sub]]] = True
                go = (left > 0) & ~self.bad[sub]
                sub, sub_slot, left = sub[go], sub_slot[go], left[go]
            # another block follows each finished one; guard against runaway garbage
            self.bad[active[self.pos[active] > self.ends[active]]] = True
            ok = ~self.bad[active]
            active, slot = active[ok], slot[ok]

    def read_map(self, rows: Any, values_type: str) -> Any:
        n = len(rows)
        # a row's dict is made with its first entry ({k: v}, the common one-entry context of a
        # request costs one dict display); rows without entries get theirs at the end
        maps: list[dict[str, Any] | None] = [None] * n
        for sub, sub_slot in self._map_entries(rows, np.zeros(n, dtype=np.int64)):
            keys = self.string(sub)
            vals = self.read(sub, values_type)
            vals_py = vals.tolist() if isinstance(vals, np.ndarray) else vals
            if sub_slot.size == n and maps[0] is None:  # every row's first entry
                maps = [{k: v} for k, v in zip(keys, vals_py, strict=True)]
            else:
                for s, k, v in zip(sub_slot.tolist(), keys, vals_py, strict=True):
                    m = maps[s]
                    if m is None:
                        maps[s] = {k: v}
                    else:
                        m[k] = v
        if None in maps:
            maps = [{} if m is None else m for m in maps]
        return np.fromiter(maps, dtype=object, count=n)

    def map_column(self, rows: Any, values_type: str) -> MapColumn:
        """:meth:`read_map` as a :class:`MapColumn`: the maps at ``rows`` are checked, counted
        and stepped over; their dicts are built only when asked for."""
        n = len(rows)
        start = self.pos[rows]
        counts = np.zeros(n, dtype=np.int64)
        for sub, _ in self._map_entries(rows, counts):
            self._skip(sub, "string")
            self._skip(sub, values_type)
        fixed = np.empty(n, dtype=object)
        return MapColumn(counts, self.raw, start, self.ends[rows], values_type, fixed)

    def _skip(self, rows: Any, t: str) -> None:
        """Step over one value of type ``t`` at ``rows``' cursors, checking it as :meth:`read`
        would (strings must be UTF-8: ASCII spans up to 64 bytes in one gather, the others
        decoded row by row)."""
        if t == "double":
            self.pos[rows] += 8
            return
        if t in ("int", "long"):
            self.varint(rows, 5 if t == "int" else 10)
            return
        start, end = self._spans(rows)
        size = end - start
        check = size > 64
        short = np.flatnonzero(~check & (size > 0))
        if short.size:
            block = self.spans_block(start[short], size[short], int(size[short].max()))
            check[short] = (block >= 0x80).any(axis=1)
        if check.any():
            raw = self.raw
            for r, s0, e0 in zip(
                rows[check].tolist(), start[check].tolist(), end[check].tolist(), strict=True
            ):
                try:
                    raw[s0:e0].decode()
                except UnicodeDecodeError:
                    self.bad[r] = True


def _filler(t: str, n: int) -> Any:
    if t == "double":
        return np.full(n, np.nan)
    if t in ("int", "long"):
        return np.zeros(n, dtype=np.int64)
    if t == "boolean":
        return np.zeros(n, dtype=np.bool_)
    out = np.empty(n, dtype=object)
    out[:] = {"string": "", "bytes": b""}.get(t)
    return out


def decode_columns(
    serde: AvroSerde,
    values: Sequence[bytes | None],
    min_vectorized: int = 0,
    lazy_maps: Collection[str] = (),
) -> tuple[Columns, list[tuple[int, str]]] | None:
    """Decode a batch into :class:`Columns`; ``None`` if the schema or wire format is unsupported.

    Args:
        serde: The record type's serde.
        values: Raw values.
        min_vectorized: Below this many values, decode record by record with fastavro and fill
            the columns from the records: the vectorized pass has ~1 ms of fixed cost per batch,
            which dominates the small batches of a lightly loaded, latency-bound stage.
        lazy_maps: Map fields (not nullable) to decode as a :class:`MapColumn` on the vectorized
            path: checked and counted, their dicts built only when read.

    Returns:
        ``(columns, failures)`` with ``(input index, reason)`` for values that fastavro could not
        decode either (their rows hold filler).
    """
    plan = columnar_plan(serde.name)
    if plan is None or serde.wire_format != "schemaless":
        return None
    n = len(values)
    cols = Columns(n, plan)
    if n < min_vectorized:
        for name, (kind, detail) in plan:
            if kind == "nullable":
                inner_kind, inner = detail
                cols.data[name] = _filler(inner if inner_kind == "prim" else "map", n)
                cols.null[name] = np.ones(n, dtype=np.bool_)
            elif kind == "prim":
                cols.data[name] = _filler(detail, n)
            else:
                cols.data[name] = _filler("map", n)
        records, ok, failed = serde.decode_many(values)
        for rec, i in zip(records, ok, strict=True):
            cols.set_row(i, rec)
        return cols, failed
    present = [v if v else b"" for v in values]
    cur = _Cursor(present)
    all_rows = np.arange(n, dtype=np.int64)
    tail = _optional_tail(serde.name)
    ended = np.zeros(n, dtype=np.bool_)
    for name, (kind, detail) in plan:
        rows = all_rows
        if name in tail:
            ended |= cur.pos == cur.ends
            if kind == "nullable":
                rows = all_rows[~ended]
            else:  # fastavro fills other defaults
                cur.bad |= ended
        if kind == "prim":
            cols.data[name] = cur.read(rows, detail)
            if detail == "string":
                cols.longest[name] = cur.widest
        elif kind == "enum":
            index = cur.varint(rows, 10)
            out_of_range = (index < 0) | (index >= len(detail))
            cur.bad[rows[out_of_range]] = True
            symbols = np.array(detail, dtype=object)
            cols.data[name] = symbols[np.where(out_of_range, 0, index)]
        elif kind == "map":
            if name in lazy_maps:
                cols.data[name] = cur.map_column(rows, detail)
            else:
                cols.data[name] = cur.read_map(rows, detail)
        else:
            branch = cur.varint(rows, 10)
            cur.bad[rows[(branch != 0) & (branch != 1)]] = True
            has = rows[branch == 1]
            inner_kind, inner = detail
            t = inner if inner_kind == "prim" else "map"
            col = _filler(t, n)
            if has.size:
                col[has] = cur.read_map(has, inner) if t == "map" else cur.read(has, inner)
            cols.data[name] = col
            null = np.ones(n, dtype=np.bool_)
            null[rows] = branch != 1
            cols.null[name] = null
    cur.bad |= cur.pos != cur.ends
    bad = np.flatnonzero(cur.bad).tolist()
    failures: list[tuple[int, str]] = []
    if bad:
        records, ok, failed = serde.decode_many([values[i] for i in bad])
        for rec, j in zip(records, ok, strict=True):
            cols.set_row(bad[j], rec)
        failures = [(bad[j], why) for j, why in failed]
    return cols, failures
