"""The decision log: storage runs, expiry, eviction, and restore from its changelog chunks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.config import AttributionConfig
from processor.errors import StateError
from processor.join import RewardJoin, reward_join
from processor.join import log as log_module
from processor.join import table as table_module
from processor.join.log import DecisionLog
from processor.join.table import EntryTable
from processor.state.joinlog import CHUNK_ENTRIES, ENTRY, NO_TIME, ROW, SLOTS, merge_chunks
from tests.unit.join.reference import Out
from tests.unit.join.test_rule import (
    POLICY,
    STATE,
    batch_st,
    decision_batch,
    decision_st,
    events_of,
    log_view,
    outcome_batch,
)


def rows_at(times: list[int]) -> np.ndarray:
    rows = np.zeros(len(times), dtype=ROW)
    rows["t"] = times
    rows["t_out"] = NO_TIME
    return rows


def test_table_matches_a_dict_through_merges_and_purges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "RUN0", 512)  # small runs: several merge levels
    rng = np.random.default_rng(1)
    table = EntryTable()
    want: dict[int, int] = {}
    for step in range(40):
        keys = np.unique(rng.integers(0, 2**63, 2_500, dtype=np.uint64))
        rid = table.find(keys)
        fresh = keys[rid < 0]
        table.insert(fresh, rows_at([step] * fresh.size), lower_bound=NO_TIME)
        want.update(dict.fromkeys(fresh.tolist(), step))
        if step % 9 == 8:
            assert table.purge(step - 20) == sum(1 for t in want.values() if t < step - 20)
            want = {k: t for k, t in want.items() if t >= step - 20}
    assert len(table.keys) >= 3  # the runs cascaded
    assert len(table) == len(want)
    probe = np.array([*list(want)[:5000], 1, 2, 3], dtype=np.uint64)
    rid = table.find(probe)
    assert (rid[:-3] >= 0).all() and (rid[-3:] < 0).all()
    got = table.gather(rid[:-3])["t"].tolist()
    assert got == [want[k] for k in probe[:-3].tolist()]
    for keys in table.keys:
        assert np.all(keys[1:] > keys[:-1])
    assert table.used == len(want)  # the purges compacted the store


def test_the_store_grows_in_place_or_by_copy_with_the_same_rows() -> None:
    """Growth resizes the store in place unless something else refers to it (a held view, a
    restore's arrays): then it copies. Both keep every row and find every key."""
    rng = np.random.default_rng(4)
    batches = [np.unique(rng.integers(0, 2**63, 3_000, dtype=np.uint64)) for _ in range(12)]
    tables = {"in place": EntryTable(), "copied": EntryTable(), "loaded": EntryTable()}
    loaded = tables["loaded"]
    loaded.load(batches[0], rows_at([0] * batches[0].size))
    held: list[tuple[np.ndarray, list[int]]] = []
    for step, keys in enumerate(batches):
        for name, table in tables.items():
            if name == "loaded" and step == 0:
                continue
            if name == "copied":  # a view of the store held across the insert: no resize
                view = table.rows
                held.append((view, view["t"].tolist()))
            table.insert(keys, rows_at([step] * keys.size), lower_bound=NO_TIME)
    everything = np.concatenate(batches)
    steps = np.repeat(np.arange(len(batches)), [b.size for b in batches]).tolist()
    by_key = dict(zip(everything.tolist(), steps, strict=True))
    shuffled = everything[rng.permutation(everything.size)]
    for table in tables.values():
        rid = table.find(shuffled)
        assert (rid >= 0).all()
        assert table.gather(rid)["t"].tolist() == [by_key[k] for k in shuffled.tolist()]
    for view, seen in held:  # a held view still reads the rows it had
        assert view["t"].tolist() == seen


def test_expiry_follows_the_outcome_watermark() -> None:
    log = DecisionLog(retention_ms=100)
    log.insert(np.array([1, 2, 3], dtype=np.uint64), rows_at([0, 50, 120]))
    assert len(log) == 3
    log.observe_time(160)  # W = 160 → entries older than 60 are gone at the next settle
    assert len(log) == 3
    log.settle()
    found, *_ = log.lookup(np.array([1, 2, 3], dtype=np.uint64))
    assert found.tolist() == [False, False, True]
    assert len(log) == 1


def test_eviction_is_oldest_first_and_counted() -> None:
    log = DecisionLog(retention_ms=10**9, max_entries=64)
    keys = np.arange(1, 101, dtype=np.uint64)
    log.insert(keys, rows_at(list(range(100))))
    assert log.settle() == 100 - 63
    kept, rows = log.entries()
    assert kept.tolist() == list(range(38, 101))
    assert rows["t"].min() == 37 and log.evict_below == 37
    assert log.evicted == 37


def _changelog_put(changelog: dict[str, bytes], chunks: list[tuple[str, bytes]]) -> None:
    for key, blob in chunks:
        changelog[key] = blob  # compaction: the last record per key is what a restore reads


def _config(
    window: int, grace: int, accept: bool, late: bool, cap: int | None
) -> AttributionConfig:
    return AttributionConfig(
        window_ms=window,
        grace_ms=grace,
        unknown="accept" if accept else "dead_letter",
        late="apply" if late else "drop",
        max_entries=cap,
    )


def _step(join: RewardJoin, decisions: list, outs: list[Out]):  # type: ignore[no-untyped-def]
    got = join.process(outcome_batch(outs), POLICY, STATE) if outs else None
    if decisions:
        join.log_decisions(decision_batch(decisions))
    return got


def _restored(config: AttributionConfig, changelog: dict[str, bytes]) -> RewardJoin:
    join = RewardJoin(config)
    join.restore(list(changelog.values()))
    return join


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    batches=st.lists(batch_st, min_size=2, max_size=8),
    crashes=st.sets(st.integers(0, 7)),
    aborts=st.sets(st.integers(0, 7)),
    window=st.sampled_from([5, 20]),
    grace=st.sampled_from([0, 3]),
    accept=st.booleans(),
    late=st.booleans(),
    cap=st.sampled_from([None, 4]),
)
def test_restore_after_crash_or_abort_equals_an_uninterrupted_run(
    batches: list,
    crashes: set[int],
    aborts: set[int],
    window: int,
    grace: int,
    accept: bool,
    late: bool,
    cap: int | None,
) -> None:
    config = _config(window, grace, accept, late, cap)
    steady = RewardJoin(config)
    crashy = RewardJoin(config)
    changelog: dict[str, bytes] = {}
    for i, (decisions, outs) in enumerate(batches):
        if i in aborts:  # processed, then the transaction aborts: rebuilt from the changelog
            _step(crashy, decisions, outs)
            crashy = _restored(config, changelog)
        got = _step(crashy, decisions, outs)
        want = _step(steady, decisions, outs)
        if want is not None:
            assert got is not None
            assert got.status.tolist() == want.status.tolist()
            assert events_of(got) == events_of(want)
        _changelog_put(changelog, crashy.take_chunks())
        steady.take_chunks()
        if i in crashes:  # SIGKILL after the commit
            crashy = _restored(config, changelog)
        assert log_view(crashy) == log_view(steady)
        assert crashy.log.watermark == steady.log.watermark
        assert crashy.log.evict_below == steady.log.evict_below


def _run_ring(monkeypatch: pytest.MonkeyPatch, stall: bool) -> None:
    monkeypatch.setattr(log_module, "CHUNKS_PER_SLOT", 3)
    config = AttributionConfig(window_ms=6_200, grace_ms=0, max_entries=None)
    join = RewardJoin(config)
    changelog: dict[str, bytes] = {}
    rng = np.random.default_rng(7)
    for step in range(600):
        t = 10_000 if stall else 10_000 + step * 25
        requests = [f"s{step}-{i}" for i in range(3)]
        join.log_decisions(decision_batch([(r, "c1", 0, t) for r in requests]))
        old = f"s{int(rng.integers(0, step + 1))}-0"
        outs = [Out(old, "c1", 0, t, (1.0, True, 0.0, 1.0, 0, 1, True))]
        join.process(outcome_batch(outs), POLICY, STATE)
        _changelog_put(changelog, join.take_chunks())
        assert len(changelog) <= SLOTS * 3
        if step % 97 == 0 or step == 599:
            fresh = RewardJoin(config)
            fresh.restore(list(changelog.values()))
            assert log_view(fresh) == log_view(join)


def test_ring_reuses_slots_without_losing_live_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    _run_ring(monkeypatch, stall=False)


def test_ring_moves_on_when_the_watermark_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    _run_ring(monkeypatch, stall=True)


@pytest.mark.parametrize("stall", [False, True])
def test_row_ids_kept_from_the_changes_set_the_slots_a_lookup_would(
    monkeypatch: pytest.MonkeyPatch, stall: bool
) -> None:
    """take_chunks marks the written rows with their slot by the row ids noted when they
    changed (or, after a purge moved rows, by looking the keys up): through slot take-overs,
    purges and reused dead rows, the chunks and every row's slot equal the lookup's."""
    monkeypatch.setattr(log_module, "CHUNKS_PER_SLOT", 3)
    config = AttributionConfig(window_ms=3_100, grace_ms=0, max_entries=None)
    fast, looked_up = RewardJoin(config), RewardJoin(config)
    rng = np.random.default_rng(8)
    moved = 0
    for step in range(400):
        t = 10_000 if stall else 10_000 + step * 25
        again = [f"s{int(rng.integers(0, step + 1))}-1"]  # an old id: a dead row reused
        requests = [f"s{step}-{i}" for i in range(3)] + again
        old = f"s{int(rng.integers(0, step + 1))}-0"
        outs = [Out(old, "c1", 0, t, (1.0, True, 0.0, 1.0, 0, 1, True))]
        for join in (fast, looked_up):
            join.log_decisions(decision_batch([(r, "c1", 0, t) for r in requests]))
            join.process(outcome_batch(outs), POLICY, STATE)
        looked_up.log._dirty_layout = -1  # as if a purge had moved the rows
        layout = fast.log.table.layout
        assert fast.take_chunks() == looked_up.take_chunks()
        moved += fast.log.table.layout != layout
        used = fast.log.table.used
        assert used == looked_up.log.table.used
        assert np.array_equal(
            fast.log.table.store["slot"][:used], looked_up.log.table.store["slot"][:used]
        )
    assert moved or stall  # purges happened between changes and their chunks


def test_a_large_commit_is_split_into_chunks() -> None:
    join = RewardJoin(AttributionConfig())
    n = CHUNK_ENTRIES * 2 + 5
    join.log_decisions(decision_batch([(f"x{i}", "c", 1, 1_000 + i) for i in range(n)]))
    chunks = join.take_chunks()
    assert len(chunks) == 3
    assert max(len(b) for _, b in chunks) < 1_000_000
    fresh = RewardJoin(AttributionConfig())
    assert fresh.restore([b for _, b in chunks]) == n
    assert log_view(fresh) == log_view(join)
    assert join.take_chunks() == []  # nothing changed since


def test_an_idle_log_writes_nothing() -> None:
    join = RewardJoin(AttributionConfig())
    assert join.take_chunks() == []
    join.log.observe_time(5)  # the watermark moved: its clock must reach the changelog
    assert len(join.take_chunks()) == 1
    assert join.take_chunks() == []


def test_corrupt_chunks_are_refused() -> None:
    join = RewardJoin(AttributionConfig())
    join.log_decisions(decision_batch([("x", "c", 1, 5)]))
    ((_, blob),) = join.take_chunks()
    with pytest.raises(StateError):
        merge_chunks([blob[:-3]])
    with pytest.raises(StateError):
        merge_chunks([b"\x09" + blob[1:]])
    assert merge_chunks([blob]).keys.size == 1
    assert ENTRY.itemsize == 68


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    steps=st.lists(
        st.tuples(st.lists(st.lists(decision_st, max_size=5), max_size=3), batch_st),
        min_size=1,
        max_size=6,
    ),
    window=st.sampled_from([5, 20]),
    cap=st.sampled_from([None, 4]),
    commit_every=st.sampled_from([1, 2, 100]),
)
def test_queued_decisions_leave_the_log_as_inserting_each_batch_at_once(
    steps: list, window: int, cap: int | None, commit_every: int
) -> None:
    """Decision batches wait for the log's next read (an outcome batch, a commit) and go in as
    one insert: every join result, changelog chunk and entry is the same as with an insert per
    batch — duplicate requests across the queued batches, expired decisions and the cap
    included."""
    config = AttributionConfig(window_ms=window, grace_ms=2, max_entries=cap)
    queued, eager = RewardJoin(config), RewardJoin(config)
    for i, (decision_batches, (more, outs)) in enumerate(steps):
        for decisions in [*decision_batches, more]:
            if decisions:
                queued.log_decisions(decision_batch(decisions))
                eager.log_decisions(decision_batch(decisions))
                assert eager.log is not None  # a read: inserts this batch now
        assert queued.pending_decisions == sum(len(d) for d in [*decision_batches, more])
        if outs:
            got = queued.process(outcome_batch(outs), POLICY, STATE)
            want = eager.process(outcome_batch(outs), POLICY, STATE)
            assert got.status.tolist() == want.status.tolist()
            assert events_of(got) == events_of(want)
            assert got.counts == want.counts
            assert queued.pending_decisions == 0
        if i % commit_every == 0:
            assert queued.take_chunks() == eager.take_chunks()
        assert log_view(queued) == log_view(eager)
        assert len(queued.log) == len(eager.log) and queued.log.evicted == eager.log.evicted


def test_queued_decisions_are_inserted_once_the_queue_is_large() -> None:
    """A caller that never reads the log (no outcomes, no commits) does not queue forever."""
    join = RewardJoin(AttributionConfig())
    n = reward_join.MAX_PENDING // 4 + 1
    for b in range(4):
        join.log_decisions(decision_batch([(f"r{b}-{i}", "c1", 0, 1_000) for i in range(n)]))
    assert join.pending_decisions == 0  # the fourth batch passed the bound
    assert len(join._store) == 4 * n
