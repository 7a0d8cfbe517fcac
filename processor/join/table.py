"""The decision log's storage: entries keyed by a 64-bit request-id hash, as sorted numpy runs.

A Python dict costs ~100 bytes per entry before its values; here an entry is one fixed-width row
(:data:`processor.state.joinlog.ROW`, 60 bytes) plus its 8-byte key, and a batch of lookups or
inserts is a few numpy calls. The runs form a small log-structured merge tree: new keys go into
run 0 (at most 16,384 keys, kept sorted by ``np.insert``); a run that outgrows its capacity
(16,384 · 8^i) is merged into the next one, so an insert costs O(log n) amortized copies and a
lookup is one ``searchsorted`` per run (four for ten million entries). A key lives in exactly one
run; rows are updated in place.

Removal is by time only: every row whose entry time is below a lower bound (expired or evicted)
is *dead*. Lookups ignore dead rows, inserts reuse a dead row of the same key, merges drop them,
and :meth:`EntryTable.purge` removes them from every run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.state.joinlog import RAW, ROW, take_rows

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
Rows = npt.NDArray[Any]

RUN0 = 16_384
GROWTH = 8


class EntryTable:
    """Rows keyed by unique ``uint64`` keys, in sorted runs (see the module docstring)."""

    def __init__(self) -> None:
        self.keys: list[U8] = []
        self.rows: list[Rows] = []

    def __len__(self) -> int:
        return sum(k.shape[0] for k in self.keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by keys and rows."""
        return sum(k.nbytes + r.nbytes for k, r in zip(self.keys, self.rows, strict=True))

    def load(self, keys: U8, rows: Rows) -> None:
        """Replace the content with ``keys`` (sorted, unique) and their ``rows``."""
        self.keys = [np.zeros(0, dtype=np.uint64)]
        self.rows = [np.zeros(0, dtype=ROW)]
        if keys.shape[0]:
            self.keys.append(np.ascontiguousarray(keys, dtype=np.uint64))
            self.rows.append(np.ascontiguousarray(rows))

    def find(self, keys: U8) -> tuple[I64, I64]:
        """``(run, position)`` of each key (``run`` −1 where absent, dead rows included)."""
        n = keys.shape[0]
        run = np.full(n, -1, dtype=np.int64)
        pos = np.zeros(n, dtype=np.int64)
        for i, run_keys in enumerate(self.keys):
            size = run_keys.shape[0]
            if not size:
                continue
            p = np.searchsorted(run_keys, keys)
            inside = p < size
            hit = np.zeros(n, dtype=np.bool_)
            hit[inside] = run_keys[p[inside]] == keys[inside]
            run[hit] = i
            pos[hit] = p[hit]
        return run, pos

    def gather(self, run: I64, pos: I64) -> Rows:
        """Rows at ``(run, pos)`` (zeros where ``run`` is −1)."""
        out = np.zeros(run.shape[0], dtype=ROW)
        raw = out.view(RAW)
        for i, rows in enumerate(self.rows):
            sel = np.flatnonzero(run == i)
            if sel.size:
                raw[sel] = rows.view(RAW)[pos[sel]]
        return out

    def scatter(self, run: I64, pos: I64, rows: Rows) -> None:
        """Overwrite the rows at ``(run, pos)`` (every ``run`` ≥ 0)."""
        src = rows.view(RAW)
        for i, table in enumerate(self.rows):
            sel = np.flatnonzero(run == i)
            if sel.size:
                table.view(RAW)[pos[sel]] = src[sel]

    def insert(self, keys: U8, rows: Rows, lower_bound: int) -> None:
        """Add new keys (unique, in no run) with their rows; runs that overflow are merged."""
        if not keys.shape[0]:
            return
        if not self.keys:
            self.load(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=ROW))
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], take_rows(rows, order)
        at = np.searchsorted(self.keys[0], keys)
        self.keys[0] = np.insert(self.keys[0], at, keys)
        self.rows[0] = _insert_rows(self.rows[0], at, rows)
        level = 0
        while self.keys[level].shape[0] > RUN0 * GROWTH**level:
            self._merge_down(level, lower_bound)
            level += 1

    def _merge_down(self, level: int, lower_bound: int) -> None:
        """Merge run ``level`` (its dead rows dropped) into the next run, which may be new."""
        live = np.flatnonzero(self.rows[level]["t"] >= lower_bound)
        keys, rows = self.keys[level][live], take_rows(self.rows[level], live)
        self.keys[level] = np.zeros(0, dtype=np.uint64)
        self.rows[level] = np.zeros(0, dtype=ROW)
        if level + 1 == len(self.keys):
            self.keys.append(keys)
            self.rows.append(rows)
            return
        at = np.searchsorted(self.keys[level + 1], keys)
        self.keys[level + 1] = np.insert(self.keys[level + 1], at, keys)
        self.rows[level + 1] = _insert_rows(self.rows[level + 1], at, rows)

    def purge(self, lower_bound: int) -> int:
        """Drop every row whose entry time is below ``lower_bound``; returns how many."""
        dropped = 0
        for i, rows in enumerate(self.rows):
            live = rows["t"] >= lower_bound
            if not live.all():
                dropped += int(live.size - np.count_nonzero(live))
                keep = np.flatnonzero(live)
                self.keys[i] = self.keys[i][keep]
                self.rows[i] = take_rows(rows, keep)
        return dropped

    def times(self) -> I64:
        """Entry time of every row (all runs, dead rows included)."""
        if not self.rows:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([r["t"] for r in self.rows])

    def select(self, mask_of: Any) -> tuple[U8, Rows]:
        """Keys and rows (copies) of every run's rows where ``mask_of(rows)`` is true."""
        keys: list[U8] = []
        rows: list[Rows] = []
        for k, r in zip(self.keys, self.rows, strict=True):
            m = np.flatnonzero(mask_of(r))
            if m.size:
                keys.append(k[m])
                rows.append(take_rows(r, m))
        if not keys:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=ROW)
        return np.concatenate(keys), np.concatenate([r.view(RAW) for r in rows]).view(ROW)

    def set_slot(self, run: I64, pos: I64, slot: int) -> None:
        """Set the ``slot`` field of the rows at ``(run, pos)``."""
        for i, table in enumerate(self.rows):
            sel = run == i
            if sel.any():
                table["slot"][pos[sel]] = slot


def _insert_rows(rows: Rows, at: I64, new: Rows) -> Rows:
    """``np.insert`` of rows, on their raw-bytes view (see :data:`RAW`)."""
    return np.insert(rows.view(RAW), at, new.view(RAW)).view(ROW)
