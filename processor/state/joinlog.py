"""Binary layout of the decision log (the reward join's state) in the changelog.

The log of input partition *p* is written to changelog partition *p* as StateRecords of kind
``join`` whose ``state_packed`` holds a *chunk*: the log entries changed by one commit (their full
values, not a diff), so the latest version of an entry is its state. A chunk's key is
``join/<slot>/<j>``: a ring of :data:`SLOTS` slots, ``j`` counting the chunks written into the
slot's current generation. Compaction keeps the last chunk per key, so the changelog holds at most
``SLOTS × (largest j + 1)`` join records whatever the stage's age. Before a slot is reused, every
live entry whose latest version sits in it is written again (in the chunks that overwrite it), so
overwriting a slot never loses an entry (see :mod:`processor.join.log`).

Chunk layout version 1 (little-endian)::

    u1 layout version (1)
    u1 slot, u4 j, u8 seq                    ring position and global write order
    i8 watermark, i8 evict_below             the log's clocks after the commit
    i8 slot_bucket                           time bucket in which the slot was taken over
    u4 n                                     entries that follow
    n × ENTRY                                one fixed-width row per entry (:data:`ENTRY`)

Restore reads every chunk of the partition, orders them by ``seq`` and keeps each entry's last
version; entries below the restored lower bound (expired or evicted) are dropped. The result is
exactly the log the writer held after its last committed transaction (tested).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from processor.errors import StateError

LAYOUT_VERSION = 1
SLOTS = 64
"""Slots of the ring (an entry's slot is one byte in memory)."""
NO_TIME = np.iinfo(np.int64).min
"""``t_out`` of an entry without an applied outcome; a clock that has not started."""

F_SUCCESS = 1
F_WON = 2
F_FOREIGN = 4
"""Entry created from an outcome whose request this stage never decided."""

# One entry: the request-id hash (the key) and everything the join needs. The key is kept apart
# from the other fields in memory (a contiguous column that ``searchsorted`` can use), so
# ``ROW`` is the entry without it and ``ENTRY`` = ``h`` + ``ROW``.
_ROW_FIELDS: list[tuple[str, str]] = [
    ("t", "<i8"),  # entry time: the decision's event time (or the first outcome's)
    ("t_out", "<i8"),  # event time of the applied outcome (NO_TIME: none applied)
    ("reward", "<f8"),  # the applied contribution: what the policy added ...
    ("spend", "<f8"),
    ("revenue", "<f8"),
    ("clicks", "<u4"),
    ("conversions", "<u4"),
    ("propensity", "<f4"),  # the logged propensity of the decision
    ("campaign", "<u4"),  # 32-bit hash of the campaign id
    ("arm", "<u2"),  # Thompson column of the decided arm
    ("flags", "u1"),  # F_SUCCESS | F_WON | F_FOREIGN
    ("slot", "u1"),  # ring slot holding the entry's latest version
]
ROW = np.dtype(_ROW_FIELDS)
ROW_NAMES: tuple[str, ...] = tuple(name for name, _ in _ROW_FIELDS)
ENTRY = np.dtype([("h", "<u8"), *_ROW_FIELDS])
RAW = np.dtype(f"V{ROW.itemsize}")
"""A row as opaque bytes: numpy copies structured rows field by field (~8× slower) unless they
are viewed as one void item; gathers, scatters and merges of rows go through this view."""


def take_rows(rows: npt.NDArray[Any], index: Any) -> npt.NDArray[Any]:
    """``rows[index]`` for :data:`ROW` arrays, copied as raw bytes."""
    out: npt.NDArray[Any] = rows.view(RAW)[index].view(ROW)
    return out


def to_entries(keys: U8, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """:data:`ENTRY` rows from keys and their :data:`ROW` rows (bytes copied, not fields)."""
    n = keys.shape[0]
    out = np.empty((n, ENTRY.itemsize), dtype=np.uint8)
    out[:, :8] = np.ascontiguousarray(keys, dtype="<u8").view(np.uint8).reshape(n, 8)
    out[:, 8:] = np.ascontiguousarray(rows).view(np.uint8).reshape(n, ROW.itemsize)
    return out.view(ENTRY).reshape(n)


MAX_COUNT = int(np.iinfo(np.uint32).max)
"""Largest clicks / conversions one entry stores exactly."""

_HEADER = struct.Struct("<BBIQqqqI")
HEADER_BYTES = _HEADER.size
CHUNK_ENTRIES = 12_000
"""Entries per chunk at most: 12,000 × 68 bytes keeps a record under Kafka's default 1 MB."""

U8 = npt.NDArray[np.uint64]


class ChunkHeader(NamedTuple):
    """The fixed part of a chunk."""

    slot: int
    j: int
    seq: int
    watermark: int
    evict_below: int
    slot_bucket: int
    n: int


def chunk_key(slot: int, j: int) -> str:
    """StateRecord key of chunk ``j`` of ``slot`` (kind ``join``)."""
    return f"{slot}/{j}"


def pack_chunk(header: ChunkHeader, entries: npt.NDArray[Any]) -> bytes:
    """One chunk: header and ``entries`` (an :data:`ENTRY` array of ``header.n`` rows)."""
    if entries.dtype != ENTRY or entries.shape[0] != header.n:
        msg = "pack_chunk needs header.n ENTRY rows"
        raise StateError(msg)
    head = _HEADER.pack(
        LAYOUT_VERSION,
        header.slot,
        header.j,
        header.seq,
        header.watermark,
        header.evict_below,
        header.slot_bucket,
        header.n,
    )
    return head + entries.tobytes()


def read_header(blob: bytes) -> ChunkHeader:
    """The header of a chunk (checked against the blob's length)."""
    if len(blob) < HEADER_BYTES:
        msg = f"join chunk of {len(blob)} bytes is shorter than its header"
        raise StateError(msg)
    version, slot, j, seq, watermark, evict, bucket, n = _HEADER.unpack_from(blob)
    if version != LAYOUT_VERSION:
        msg = f"join chunk layout {version} is not supported (this version reads {LAYOUT_VERSION})"
        raise StateError(msg)
    if len(blob) != HEADER_BYTES + n * ENTRY.itemsize or slot >= SLOTS:
        msg = f"corrupt join chunk (slot {slot}, {n} entries, {len(blob)} bytes)"
        raise StateError(msg)
    return ChunkHeader(slot, j, seq, watermark, evict, bucket, n)


@dataclass
class RestoredLog:
    """A partition's decision log as read from its chunks."""

    keys: U8
    """Sorted request-id hashes."""
    rows: npt.NDArray[Any]
    """:data:`ROW` per key, latest version, ``slot`` set to the chunk that holds it."""
    watermark: int
    evict_below: int
    last: ChunkHeader | None
    """The chunk written last (ring position to continue from); None for an empty log."""
    chunks: int


def merge_chunks(blobs: Iterable[bytes]) -> RestoredLog:
    """Every entry's latest version over a partition's chunks (any order in, seq order applied).

    The chunks' entries are joined as raw bytes and read through strided views, so a restore of
    millions of entries is a sort of their keys and two gathers.

    Raises:
        StateError: A malformed chunk.
    """
    items = [(read_header(b), b) for b in blobs]
    items.sort(key=lambda hb: hb[0].seq)
    if not items:
        return RestoredLog(
            np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=ROW), NO_TIME, NO_TIME, None, 0
        )
    watermark = max(h.watermark for h, _ in items)
    evict = max(h.evict_below for h, _ in items)
    full = [(h, b) for h, b in items if h.n]
    payload = b"".join(memoryview(b)[HEADER_BYTES:] for _, b in full)
    total = len(payload) // ENTRY.itemsize
    if not total:
        empty = np.zeros(0, dtype=ROW)
        return RestoredLog(
            np.zeros(0, dtype=np.uint64), empty, watermark, evict, items[-1][0], len(items)
        )
    stride = (ENTRY.itemsize,)
    h = np.ascontiguousarray(
        np.ndarray((total,), dtype="<u8", buffer=payload, offset=0, strides=stride)
    )
    raw = np.ndarray((total,), dtype=RAW, buffer=payload, offset=8, strides=stride)
    order = np.argsort(h, kind="stable")  # timsort: each chunk is a sorted run already
    sorted_keys = h[order]
    starts = np.ones(total, dtype=np.bool_)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first = np.flatnonzero(starts)
    latest = np.maximum.reduceat(order, first)  # the version written last (seq order)
    rows = raw[latest].view(ROW)
    slots = np.repeat(
        np.array([hd.slot for hd, _ in full], dtype=np.uint8), [hd.n for hd, _ in full]
    )
    rows["slot"] = slots[latest]
    keys = np.ascontiguousarray(sorted_keys[first], dtype=np.uint64)
    return RestoredLog(keys, rows, watermark, evict, items[-1][0], len(items))
