"""The decision log's storage: entries keyed by a 64-bit request-id hash.

A Python dict costs ~100 bytes per entry before its values; here an entry is one fixed-width row
(:data:`processor.state.joinlog.ROW`, 60 bytes) in an append-only *store*, plus its 8-byte key and
a 4-byte row id in a sorted *run*, and a batch of lookups or inserts is a few numpy calls. The runs
form a small log-structured merge tree: a batch of new keys waits as a small sorted run; eight of
them go into run 0 together (at most 4,096 keys, kept sorted by ``np.insert``); a run that outgrows
its capacity (4,096 · 8^i) is merged into the next one, so an insert costs O(log n) amortized
copies — of 12 bytes (key and row id), never of the row, which stays where it was appended — and a
lookup is one ``searchsorted`` per run (at most five plus eight pending for ten million entries).
A key lives in exactly one run; rows are updated in place.

Removal is by time only: every row whose entry time is below a lower bound (expired or evicted)
is *dead*. Lookups ignore dead rows, inserts reuse a dead row of the same key, merges drop dead
keys, and :meth:`EntryTable.purge` compacts the store and the runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.state.joinlog import RAW, ROW, take_rows

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
Rows = npt.NDArray[Any]

RUN0 = 4096
GROWTH = 8
PENDING = 8
"""Inserted batches wait as small sorted runs until this many, then go into run 0 together: a
batch of new keys costs no ``np.insert`` of its own."""
STORE_GROWTH = 1.25
"""The store grows by a quarter when full: at most 25% of its rows are spare."""


class EntryTable:
    """Rows keyed by unique ``uint64`` keys (see the module docstring)."""

    def __init__(self) -> None:
        self.keys: list[U8] = [np.zeros(0, dtype=np.uint64)]
        self.ids: list[I32] = [np.zeros(0, dtype=np.int32)]
        self.store: Rows = np.zeros(0, dtype=ROW)
        self.used = 0
        self._pending = 0  # how many of the last runs are pending batches
        self.layout = 0
        """Changes whenever row ids do (a purge that drops rows, a load): a row id taken under
        one layout is valid while it lasts."""

    def __len__(self) -> int:
        return sum(k.shape[0] for k in self.keys)

    @property
    def nbytes(self) -> int:
        """Bytes held: the store (spare rows included), keys and row ids."""
        runs = sum(k.nbytes + i.nbytes for k, i in zip(self.keys, self.ids, strict=True))
        return int(self.store.nbytes) + runs

    @property
    def rows(self) -> Rows:
        """The store's rows in use (a view; dead rows included)."""
        return self.store[: self.used]

    def load(self, keys: U8, rows: Rows) -> None:
        """Replace the content with ``keys`` (sorted, unique) and their ``rows`` (the table
        takes ``rows`` over: a restore does not copy a partition's rows once more)."""
        n = keys.shape[0]
        self.store = np.ascontiguousarray(rows)
        self.used = n
        self.layout += 1
        self.keys = [np.zeros(0, dtype=np.uint64)]
        self.ids = [np.zeros(0, dtype=np.int32)]
        self._pending = 0
        if n:
            self.keys.append(np.ascontiguousarray(keys, dtype=np.uint64))
            self.ids.append(np.arange(n, dtype=np.int32))

    def find(self, keys: U8) -> I64:
        """Row id of each key (−1 where absent; dead rows included)."""
        n = keys.shape[0]
        # Sorted needles are ~3× faster to search in a large run than hashes in arrival order
        # (each binary search starts near the last one's result and stays in cache).
        order = None if bool((keys[1:] >= keys[:-1]).all()) else np.argsort(keys)
        needles = keys if order is None else keys[order]
        found = np.full(n, -1, dtype=np.int64)
        for run_keys, run_ids in zip(self.keys, self.ids, strict=True):
            size = run_keys.shape[0]
            if not size:
                continue
            p = np.searchsorted(run_keys, needles)
            np.minimum(p, size - 1, out=p)
            hit = run_keys[p] == needles
            found[hit] = run_ids[p[hit]]
        if order is None:
            return found
        rid = np.empty(n, dtype=np.int64)
        rid[order] = found
        return rid

    def gather(self, rid: I64) -> Rows:
        """Rows ``rid`` (zeros where ``rid`` is −1)."""
        out = np.zeros(rid.shape[0], dtype=ROW)
        sel = np.flatnonzero(rid >= 0)
        if sel.size:
            out.view(RAW)[sel] = self.store.view(RAW)[rid[sel]]
        return out

    def scatter(self, rid: I64, rows: Rows) -> None:
        """Overwrite rows ``rid`` (every one ≥ 0)."""
        self.store.view(RAW)[rid] = rows.view(RAW)

    def insert(self, keys: U8, rows: Rows, lower_bound: int) -> I32:
        """Add new keys (unique, in no run) with their rows; runs that overflow are merged.
        Returns the new rows' ids (in the order of ``keys``)."""
        k = keys.shape[0]
        if not k:
            return np.zeros(0, dtype=np.int32)
        new_ids = self._append(rows)
        order = np.argsort(keys, kind="stable")
        # a pending run is one more run at the end of the lists (searched like the others)
        self.keys.append(keys[order])
        self.ids.append(new_ids[order])
        self._pending += 1
        if self._pending < PENDING:
            return new_ids
        n_runs = len(self.keys) - self._pending
        keys = np.concatenate(self.keys[n_runs:])
        ids = np.concatenate(self.ids[n_runs:])
        del self.keys[n_runs:], self.ids[n_runs:]
        self._pending = 0
        order = np.argsort(keys, kind="stable")
        keys, ids = keys[order], ids[order]
        at = np.searchsorted(self.keys[0], keys)
        self.keys[0] = np.insert(self.keys[0], at, keys)
        self.ids[0] = np.insert(self.ids[0], at, ids)
        level = 0
        while self.keys[level].shape[0] > RUN0 * GROWTH**level:
            self._merge_down(level, lower_bound)
            level += 1
        return new_ids

    def _append(self, rows: Rows) -> I32:
        """Append rows to the store (growing it by :data:`STORE_GROWTH`); their row ids."""
        k = rows.shape[0]
        end = self.used + k
        if end > self.store.shape[0]:
            self._grow(max(end, int(self.store.shape[0] * STORE_GROWTH) + RUN0))
        self.store.view(RAW)[self.used : end] = rows.view(RAW)
        ids = np.arange(self.used, end, dtype=np.int32)
        self.used = end
        return ids

    def _grow(self, capacity: int) -> None:
        """Enlarge the store to ``capacity`` rows (new rows zero).

        In place where numpy allows it (the store owns its memory and nothing else refers to
        it): a large block is then moved by the allocator (``realloc``, page remapping for big
        blocks) rather than copied into freshly faulted pages, which made growth ~10× dearer
        (``tests/perf/bench_join``). Otherwise — a store loaded from a restore's arrays, or a
        view of it held elsewhere — a new array and a copy.
        """
        try:
            self.store.resize(capacity, refcheck=True)
        except ValueError:  # not its own memory, or referenced: copy
            grown = np.zeros(capacity, dtype=ROW)
            grown.view(RAW)[: self.used] = self.store.view(RAW)[: self.used]
            self.store = grown

    def _merge_down(self, level: int, lower_bound: int) -> None:
        """Merge run ``level`` (its dead keys dropped) into the next run, which may be new."""
        ids = self.ids[level]
        live = np.flatnonzero(self.store["t"][ids] >= lower_bound)
        keys, ids = self.keys[level][live], ids[live]
        self.keys[level] = np.zeros(0, dtype=np.uint64)
        self.ids[level] = np.zeros(0, dtype=np.int32)
        if level + 1 == len(self.keys):  # no pending runs now: they were just merged
            self.keys.append(keys)
            self.ids.append(ids)
            return
        at = np.searchsorted(self.keys[level + 1], keys)
        self.keys[level + 1] = np.insert(self.keys[level + 1], at, keys)
        self.ids[level + 1] = np.insert(self.ids[level + 1], at, ids)

    def purge(self, lower_bound: int) -> int:
        """Drop every row whose entry time is below ``lower_bound``; returns how many.

        Live rows move to the front of the store (its capacity is kept) and the runs are
        renumbered.
        """
        live = self.rows["t"] >= lower_bound
        if live.all():
            return 0
        keep = np.flatnonzero(live)
        renumber = np.cumsum(live, dtype=np.int64).astype(np.int32) - 1
        moved = take_rows(self.rows, keep)
        self.store.view(RAW)[: keep.size] = moved.view(RAW)
        dropped = self.used - keep.size
        self.used = int(keep.size)
        self.layout += 1
        for i, ids in enumerate(self.ids):
            alive = live[ids]
            self.keys[i] = self.keys[i][alive]
            self.ids[i] = renumber[ids[alive]]
        return dropped

    def times(self) -> I64:
        """Entry time of every row in use (dead rows included)."""
        return np.asarray(self.rows["t"], dtype=np.int64)

    def select(self, mask_of: Callable[[Rows], B]) -> tuple[U8, Rows, I64]:
        """Keys, rows (copies) and row ids of the rows where ``mask_of(rows)`` is true (store
        order)."""
        rows = self.rows
        m = np.flatnonzero(mask_of(rows))
        if not m.size:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=ROW), m
        key_of = np.zeros(self.used, dtype=np.uint64)
        for keys, ids in zip(self.keys, self.ids, strict=True):
            key_of[ids] = keys
        return key_of[m], take_rows(rows, m), m

    def set_slot(self, rid: I64, slot: int) -> None:
        """Set the ``slot`` field of rows ``rid``."""
        self.store["slot"][rid] = slot
