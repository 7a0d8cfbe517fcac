"""The decision log of one input partition: entries, clocks, expiry, eviction, changelog chunks.

Clocks (event time, milliseconds):

* ``watermark`` W — the largest event time of the partition's bid outcomes that were not
  dead-lettered, as of the end of the previous batch (Kafka Streams' "stream time"). Requests do
  not move it, so a request topic consumed ahead of its outcomes (a backlog after a restart) never
  expires entries whose outcomes are still to come.
* ``evict_below`` — raised by :attr:`DecisionLog.max_entries` (oldest first).
* The lower bound L = max(W − retention, evict_below): an entry is live iff its time ≥ L. Expired
  and evicted entries are gone for lookups at once; memory is reclaimed by run merges and by a
  purge each time L has moved by retention / 16.

Changelog: every commit writes the entries changed since the previous one (and the clocks) as
chunks into the current slot of a ring (:mod:`processor.state.joinlog`). The ring moves to the
next slot when W enters a new time bucket (retention / 62 wide) or after
:data:`CHUNKS_PER_SLOT` chunks; the live entries whose latest version is in the slot about to be
reused are written again first, so nothing live is ever overwritten. With the watermark moving
normally the slot being reused holds only expired entries and nothing is rewritten.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.errors import StateError
from processor.join.table import EntryTable
from processor.state.joinlog import (
    CHUNK_ENTRIES,
    NO_TIME,
    RAW,
    ROW,
    SLOTS,
    ChunkHeader,
    chunk_key,
    merge_chunks,
    pack_chunk,
    take_rows,
    to_entries,
)

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
Rows = npt.NDArray[Any]

CHUNKS_PER_SLOT = 1024
"""Chunks written into one slot before the ring moves on even if the watermark stands still."""
EVICT_TO = 63 / 64
"""Past ``max_entries`` the oldest entries are evicted down to this share of it (hysteresis:
eviction does not run on every batch once the log is full)."""


class DecisionLog:
    """The decision log of one input partition (see the module docstring).

    Args:
        retention_ms: How long (event time) an entry lives after its time: the attribution
            window plus the grace period.
        max_entries: Cap on live entries (None: no cap).
    """

    def __init__(self, retention_ms: int, max_entries: int | None = None) -> None:
        if retention_ms <= 0:
            msg = "the decision log's retention must be > 0 ms"
            raise StateError(msg)
        self.retention_ms = int(retention_ms)
        self.max_entries = max_entries
        self.table = EntryTable()
        self.watermark = NO_TIME
        self.pending_watermark = NO_TIME
        self.evict_below = NO_TIME
        self.evicted = 0
        self._purged_at = NO_TIME
        self._dirty_keys: list[U8] = []
        self._dirty_rows: list[Rows] = []
        # the changed rows' ids, valid while the table's layout is the one they were taken in
        self._dirty_ids: list[I64] = []
        self._dirty_layout = self.table.layout
        # ring position (continued from the last chunk after a restore)
        self._slot = 0
        self._j = 0
        self._seq = 0
        self._slot_bucket: int | None = None
        self._written_clocks = (NO_TIME, NO_TIME)  # an empty, unchanged log writes nothing
        self._bucket_ms = max(1, self.retention_ms // (SLOTS - 2))

    # ---- clocks -----------------------------------------------------------------------------
    @property
    def lower_bound(self) -> int:
        """Smallest live entry time (NO_TIME when nothing has expired or been evicted)."""
        expiry = NO_TIME if self.watermark == NO_TIME else self.watermark - self.retention_ms
        return max(expiry, self.evict_below)

    def late_before(self, grace_ms: int) -> int:
        """Outcomes of requests not in the log are late below this: max(W − grace, the
        eviction bound) — their decision could have been in the log and be gone."""
        grace = NO_TIME if self.watermark == NO_TIME else self.watermark - grace_ms
        return max(grace, self.evict_below)

    def observe_time(self, t_max: int) -> None:
        """An outcome with event time ``t_max`` was processed; W moves at :meth:`settle`."""
        self.pending_watermark = max(self.pending_watermark, int(t_max))

    def settle(self) -> int:
        """Apply the pending watermark, purge and evict; returns the entries evicted now."""
        self.watermark = max(self.watermark, self.pending_watermark)
        bound = self.lower_bound
        if bound != NO_TIME and (
            self._purged_at == NO_TIME or bound - self._purged_at >= self.retention_ms // 16
        ):
            self.table.purge(bound)
            self._purged_at = bound
        evicted = 0
        if self.max_entries is not None and len(self.table) > self.max_entries:
            evicted = self._evict(self.max_entries)
        return evicted

    def _evict(self, cap: int) -> int:
        times = self.table.times()
        live = times[times >= self.lower_bound]
        if live.size <= cap:
            self.table.purge(self.lower_bound)
            return 0
        target = int(cap * EVICT_TO)
        k = live.size - target
        threshold = int(np.partition(live, k - 1)[k - 1]) + 1
        self.evict_below = max(self.evict_below, threshold)
        remaining = int(np.count_nonzero(live >= self.evict_below))
        self.table.purge(self.lower_bound)
        evicted = live.size - remaining
        self.evicted += evicted
        logger.debug("decision log full: evicted %d entries older than %d", evicted, threshold)
        return evicted

    def __len__(self) -> int:
        """Live entries (rows not yet purged but below the lower bound do not count)."""
        bound = self.lower_bound
        if bound == NO_TIME:
            return len(self.table)
        return int(np.count_nonzero(self.table.times() >= bound))

    @property
    def held(self) -> int:
        """Rows in memory (live ones plus dead ones not purged yet)."""
        return len(self.table)

    @property
    def nbytes(self) -> int:
        """Memory held by the entries."""
        return self.table.nbytes

    # ---- entries ----------------------------------------------------------------------------
    def entries(self) -> tuple[U8, Rows]:
        """Keys and rows (copies) of every live entry, sorted by key."""
        bound = self.lower_bound
        keys, rows, _ = self.table.select(lambda r: r["t"] >= bound)
        order = np.argsort(keys, kind="stable")
        return keys[order], take_rows(rows, order)

    def lookup(self, keys: U8) -> tuple[B, I64, Rows]:
        """Live entries of ``keys``: ``(found, row id, rows)``; a dead row has a row id ≥ 0
        with ``found`` false (an insert of that key reuses it)."""
        rid = self.table.find(keys)
        rows = self.table.gather(rid)
        found = (rid >= 0) & (rows["t"] >= self.lower_bound)
        return found, rid, rows

    def update(self, keys: U8, rid: I64, rows: Rows) -> None:
        """Overwrite existing rows (live, or dead ones being reused) and mark them changed."""
        if not keys.shape[0]:
            return
        self.table.scatter(rid, rows)
        self._mark(keys, rows, rid)

    def insert(self, keys: U8, rows: Rows) -> None:
        """Add entries for keys in no run (unique) and mark them changed."""
        if not keys.shape[0]:
            return
        rid = self.table.insert(keys, rows, self.lower_bound)
        self._mark(keys, rows, rid)

    def put_new(self, keys: U8, rows: Rows, rid: I64) -> None:
        """New entries: reuse the dead row of the same key where there is one, else insert."""
        reuse = np.flatnonzero(rid >= 0)
        if reuse.size:
            self.update(keys[reuse], rid[reuse], take_rows(rows, reuse))
        if reuse.size < keys.shape[0]:
            fresh = np.flatnonzero(rid < 0)
            self.insert(keys[fresh], take_rows(rows, fresh))

    def _mark(self, keys: U8, rows: Rows, rid: Any) -> None:
        if not self._dirty_keys:
            self._dirty_layout = self.table.layout
        self._dirty_keys.append(keys.copy())
        self._dirty_rows.append(rows.copy())
        self._dirty_ids.append(np.asarray(rid, dtype=np.int64))

    @property
    def has_changes(self) -> bool:
        """Whether :meth:`take_chunks` has something to write."""
        return bool(self._dirty_keys) or self._written_clocks != (
            max(self.watermark, self.pending_watermark),
            self.evict_below,
        )

    # ---- changelog --------------------------------------------------------------------------
    def take_chunks(self) -> list[tuple[str, bytes]]:
        """``(key, chunk)`` pairs persisting every change since the last call (may be empty).

        Settles first, so the chunks carry the clocks a restore needs to drop exactly what this
        log has dropped.
        """
        self.settle()
        clocks = (self.watermark, self.evict_below)
        keys, rows, rid = self._take_dirty()
        if not keys.shape[0] and clocks == self._written_clocks:
            return []
        bucket = self.watermark // self._bucket_ms
        if self._slot_bucket is None:
            self._slot_bucket = bucket
        elif bucket > self._slot_bucket or self._j >= CHUNKS_PER_SLOT:
            keys, rows, rid = self._take_over(keys, rows, rid, bucket)
        if rid is None:  # the rows moved (a purge) since they changed: look them up
            rid = self.table.find(keys)
        self.table.set_slot(rid, self._slot)
        rows["slot"] = self._slot
        entries = to_entries(keys, rows)
        out = []
        for first in range(0, max(1, entries.shape[0]), CHUNK_ENTRIES):
            part = entries[first : first + CHUNK_ENTRIES]
            header = ChunkHeader(
                self._slot,
                self._j,
                self._seq,
                self.watermark,
                self.evict_below,
                self._slot_bucket,
                part.shape[0],
            )
            out.append((chunk_key(self._slot, self._j), pack_chunk(header, part)))
            self._j += 1
            self._seq += 1
        self._written_clocks = clocks
        return out

    def _take_dirty(self) -> tuple[U8, Rows, I64 | None]:
        """The changed entries' latest versions (live ones only), sorted by key, and their row
        ids (None when a purge has moved rows since they changed)."""
        if not self._dirty_keys:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=ROW), np.zeros(0, np.int64)
        keys = np.concatenate(self._dirty_keys)
        rows = np.concatenate([r.view(RAW) for r in self._dirty_rows]).view(ROW)
        ids = np.concatenate(self._dirty_ids)
        valid = self._dirty_layout == self.table.layout
        self._dirty_keys.clear()
        self._dirty_rows.clear()
        self._dirty_ids.clear()
        keys, rows, last = _latest(keys, rows)
        live = np.flatnonzero(rows["t"] >= self.lower_bound)
        return keys[live], take_rows(rows, live), ids[last[live]] if valid else None

    def _take_over(
        self, keys: U8, rows: Rows, rid: I64 | None, bucket: int
    ) -> tuple[U8, Rows, I64 | None]:
        """Move the ring to the next slot; add the live entries held there to what is written."""
        nxt = (self._slot + 1) % SLOTS
        bound = self.lower_bound
        old_keys, old_rows, old_rid = self.table.select(
            lambda r: (r["slot"] == nxt) & (r["t"] >= bound)
        )
        if old_keys.shape[0]:
            logger.debug("changelog slot %d reused: rewriting %d live entries", nxt, old_keys.size)
            both = np.concatenate([old_rows.view(RAW), rows.view(RAW)]).view(ROW)
            keys, rows, last = _latest(np.concatenate([old_keys, keys]), both)
            rid = None if rid is None else np.concatenate([old_rid, rid])[last]
        self._slot = nxt
        self._j = 0
        self._slot_bucket = bucket if self._slot_bucket is None else max(bucket, self._slot_bucket)
        return keys, rows, rid

    def restore(self, chunks: list[bytes]) -> int:
        """Replace the log with the one ``chunks`` (a partition's join records) describe.

        Returns:
            Live entries restored.
        """
        merged = merge_chunks(chunks)
        self.watermark = self.pending_watermark = merged.watermark
        self.evict_below = merged.evict_below
        self._dirty_keys.clear()
        self._dirty_rows.clear()
        self._dirty_ids.clear()
        bound = self.lower_bound
        live = np.flatnonzero(merged.rows["t"] >= bound)
        if live.size < merged.keys.shape[0]:
            self.table.load(merged.keys[live], take_rows(merged.rows, live))
        else:
            self.table.load(merged.keys, merged.rows)
        self._purged_at = bound
        last = merged.last
        if last is None:
            self._slot, self._j, self._seq, self._slot_bucket = 0, 0, 0, None
            self._written_clocks = (NO_TIME, NO_TIME)
        else:
            self._slot, self._j, self._seq = last.slot, last.j + 1, last.seq + 1
            self._slot_bucket = last.slot_bucket
            self._written_clocks = (last.watermark, last.evict_below)
        return int(live.size)


def _latest(keys: U8, rows: Rows) -> tuple[U8, Rows, I64]:
    """Last row per key (input order), sorted by key; and where each was in the input."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    last = np.ones(k.shape[0], dtype=np.bool_)
    if k.shape[0] > 1:
        last[:-1] = k[1:] != k[:-1]
    where = order[last]
    return k[last], take_rows(rows, where), where
