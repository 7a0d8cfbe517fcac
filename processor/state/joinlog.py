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
from typing import Any

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
MAX_COUNT = int(np.iinfo(np.uint32).max)
"""Largest clicks / conversions one entry stores exactly."""

_HEADER = struct.Struct("<BBIQqqqI")
HEADER_BYTES = _HEADER.size
CHUNK_ENTRIES = 12_000
"""Entries per chunk at most: 12,000 × 68 bytes keeps a record under Kafka's default 1 MB."""

U8 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class ChunkHeader:
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

    Raises:
        StateError: A malformed chunk.
    """
    items = [(read_header(b), b) for b in blobs]
    items.sort(key=lambda hb: hb[0].seq)
    if not items:
        return RestoredLog(
            np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=ROW), NO_TIME, NO_TIME, None, 0
        )
    parts = [np.frombuffer(b, dtype=ENTRY, offset=HEADER_BYTES) for h, b in items if h.n]
    total = sum(p.shape[0] for p in parts)
    entries = np.empty(total, dtype=ENTRY)
    at = 0
    for part, (header, _) in zip(parts, [hb for hb in items if hb[0].n], strict=True):
        entries[at : at + part.shape[0]] = part
        entries["slot"][at : at + part.shape[0]] = header.slot
        at += part.shape[0]
    order = np.argsort(entries["h"], kind="stable")  # equal keys keep seq order
    keys = entries["h"][order]
    last = np.ones(total, dtype=np.bool_)
    if total > 1:
        last[:-1] = keys[1:] != keys[:-1]
    keep = order[last]
    rows = np.empty(keep.size, dtype=ROW)
    for name in ROW_NAMES:
        rows[name] = entries[name][keep]
    watermark = max(h.watermark for h, _ in items)
    evict = max(h.evict_below for h, _ in items)
    return RestoredLog(
        np.ascontiguousarray(keys[last]), rows, watermark, evict, items[-1][0], len(items)
    )
