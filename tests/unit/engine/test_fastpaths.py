"""The engine's columnar fast paths give the same outputs and state as the per-record paths."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from processor import __version__
from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine import EngineOutputs, PartitionEngine, SourceBatch
from processor.engine import decoding as engine_decoding
from processor.engine import outputs as engine_outputs
from processor.engine import requests as engine_requests
from processor.policy.simulator import MarketSimulator
from processor.state.changelog import encode_state_records
from processor.state.packing import campaign_state_dicts

SERDES = SerdeRegistry()
CFG = AppConfig()


def _outcomes(n: int, seed: int) -> list[tuple[bytes | None, bytes | None]]:
    rng = np.random.default_rng(seed)
    sim = MarketSimulator(seed, n_campaigns=30)
    reqs = sim.bid_requests(n, 1_700_000_000_000, 100.0)
    arms = list(CFG.bidding.arms)
    decisions = [
        {
            "arm": arms[int(rng.integers(0, len(arms)))],
            "bid_amount": r["base_bid"],
            "budget": r["base_budget"],
            "mode": "explore",
            "propensity": 0.25,
            "policy_version": -1,
        }
        for r in reqs
    ]
    out: list[tuple[bytes | None, bytes | None]] = []
    serde = SERDES["BidOutcome"]
    for i, rec in enumerate(o for o in sim.outcomes_for(decisions, reqs) if o is not None):
        key: bytes | None = rec["campaign_id"].encode()
        if i % 50 == 3:
            rec["spend"] = float("nan")
        if i % 70 == 5:
            rec["arm"] = "no-such-arm"
        if i % 90 == 7:
            key = b"other"
        if i % 110 == 9:
            rec["request_id"] = "x" * 300
        if i % 130 == 11:
            rec["propensity"] = 0.0
        if i % 40 == 1:
            key = None
        value: bytes | None = serde.encode(rec)
        if i % 150 == 13:
            value = b"\x02garbage"
        if i % 170 == 15:
            value = None
        out.append((key, value))
    return out


def _requests(n: int, seed: int) -> list[tuple[bytes | None, bytes | None]]:
    sim = MarketSimulator(seed, n_campaigns=30)
    serde = SERDES["BidRequest"]
    out: list[tuple[bytes | None, bytes | None]] = []
    for i, rec in enumerate(sim.bid_requests(n, 1_700_000_000_000, 100.0)):
        if i % 60 == 2:
            rec["base_bid"] = float("inf")
        if i % 80 == 4:
            rec["context"] = {str(j): "v" for j in range(100)}
        if i % 45 == 6:
            rec["campaign_id"] = ""
        if i % 95 == 9:  # too long; and a long id whose UTF-8 exceeds the limit, not its text
            rec["request_id"] = "r" * 300 if i % 2 else "é" * 200
        value: bytes | None = serde.encode(rec)
        if i % 120 == 8:
            value = value[:5] if value else value
        out.append((rec["campaign_id"].encode(), value))
    return out


def _batch(
    topic: str, pairs: list[tuple[bytes | None, bytes | None]], first: int, partition: int = 0
) -> SourceBatch:
    sb = SourceBatch(topic, partition)
    for j, (k, v) in enumerate(pairs):
        sb.append(k, v, first + j)
    return sb


def _run(slow: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    if slow:
        monkeypatch.setattr(engine_decoding, "decode_columns", lambda *a, **k: None)
        monkeypatch.setattr(engine_requests, "encode_columns", lambda *a: None)
    engine = PartitionEngine(CFG, 0, SERDES)
    t = CFG.topics
    outs = []
    for step in range(3):
        batches = {
            t.bid_outcomes: _batch(t.bid_outcomes, _outcomes(700, step), step * 1000),
            t.bid_requests: _batch(t.bid_requests, _requests(500, step), step * 1000),
        }
        outs.append(engine.process(batches, now_ms=1_700_000_100_000 + step))
    dirty = engine.take_dirty()
    monkeypatch.undo()
    return outs, dirty


def test_columnar_engine_equals_record_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_outs, fast_dirty = _run(False, monkeypatch)
    slow_outs, slow_dirty = _run(True, monkeypatch)
    assert fast_dirty == slow_dirty
    total_dead = 0
    for a, b in zip(fast_outs, slow_outs, strict=True):
        assert a.decisions == b.decisions
        assert a.dead_letters == b.dead_letters
        assert a.decision_event_ms == b.decision_event_ms
        assert (a.rewards_applied, a.modes, a.arms_chosen, a.guardrails) == (
            b.rewards_applied,
            b.modes,
            b.arms_chosen,
            b.guardrails,
        )
        total_dead += len(a.dead_letters)
    classes = {d.error_class for o in fast_outs for d in o.dead_letters}
    assert {"decode", "value", "oversize", "key_mismatch", "unknown_arm", "propensity"} <= classes
    assert total_dead > 50


@pytest.mark.parametrize("state_format", ["json", "packed"])
def test_batched_campaign_states_equal_per_key_states(state_format: str) -> None:
    engine = PartitionEngine(CFG.replace(state_format=state_format), 0, SERDES)
    t = CFG.topics
    engine.process({t.bid_outcomes: _batch(t.bid_outcomes, _outcomes(800, 1), 0)})
    keys = sorted(engine.dirty_campaigns)
    engine.campaigns.thompson.remove_arm("aggressive", keys[1])
    engine.campaigns.set_emergency(keys[2], True)
    batched = engine._campaign_states(keys)
    expected = [("campaign", k, engine.campaigns.get_key_state(k)) for k in keys]
    if state_format == "packed":
        assert all(isinstance(s, bytes) for _, _, s in batched)
        blobs = [s for _, _, s in batched]
        assert isinstance(blobs[0], bytes)
        dicts = campaign_state_dicts(blobs)  # type: ignore[arg-type]
        assert [("campaign", k, d) for k, d in zip(keys, dicts, strict=True)] == expected
        assert json.dumps(dicts) == json.dumps([s for _, _, s in expected])
        return
    assert batched == expected
    assert json.dumps(batched) == json.dumps(expected)


@pytest.mark.parametrize("state_format", ["json", "packed", "mixed"])
def test_restore_many_equals_key_by_key_restore(state_format: str) -> None:
    source = PartitionEngine(CFG.replace(state_format="json"), 0, SERDES)
    t = CFG.topics
    source.process({t.bid_outcomes: _batch(t.bid_outcomes, _outcomes(800, 2), 0)})
    keys = sorted(source.dirty_campaigns)
    source.campaigns.thompson.remove_arm("balanced", keys[0])
    states = {
        ("campaign", k): json.loads(json.dumps(s))
        for kind, k, s in source.take_dirty()
        if kind == "campaign"
    }
    odd = json.loads(json.dumps(states[("campaign", keys[3])]))
    odd["thompson"]["arm_names"] = [*odd["thompson"]["arm_names"], "brand-new"]
    odd["thompson"]["successes"].append(4.0)
    odd["thompson"]["failures"].append(2.0)
    states[("campaign", "odd")] = odd
    states[("campaign", "late")] = states[("campaign", keys[4])]
    if state_format != "json":
        # the packed form of the very same states (for "mixed", every other one)
        holder = PartitionEngine(CFG, 0, SERDES)
        holder.restore_many(states)
        for i, (kind, key) in enumerate(list(states)):
            if state_format == "packed" or i % 2:
                states[(kind, key)] = holder.campaigns.pack([key])[0]
    one, many = PartitionEngine(CFG, 0, SERDES), PartitionEngine(CFG, 0, SERDES)
    many.campaigns.row(keys[5])  # an existing row is overwritten, not duplicated
    one.campaigns.row(keys[5])
    for (kind, key), state in states.items():
        one.restore(kind, key, state)
    many.restore_many(states)
    assert one.campaigns.thompson.keys == many.campaigns.thompson.keys
    assert one.campaigns.thompson.arm_names == many.campaigns.thompson.arm_names
    for key in [*keys, "odd", "late"]:
        assert one.campaigns.get_key_state(key) == many.campaigns.get_key_state(key)
    n = one.campaigns.thompson.n_keys
    for name, arr in one.campaigns.thompson._arr.items():
        assert np.array_equal(arr[:n], many.campaigns.thompson._arr[name][:n]), name


@pytest.mark.parametrize("now", [0, 1, -1, 1_700_000_000_000, 2**62])
def test_state_records_bytes_equal_fastavro(now: int) -> None:
    serde = SERDES["StateRecord"]
    items = [
        ("campaign", "c-1", {"a": [1.5, 2], "b": None}),
        ("ensemble", "é" * 100, {"x": "☃"}),
        ("campaign", "", {}),
    ]
    items += [("campaign", "p-1", b"\x01packed"), ("campaign", "p-2", bytes(range(256)) * 3)]
    got = encode_state_records(serde, items, now)
    for (key, value), (kind, ident, state) in zip(got, items, strict=True):
        packed = isinstance(state, bytes)
        expected = serde.encode(
            {
                "key": ident,
                "kind": kind,
                "state_json": ""
                if packed
                else json.dumps(state, sort_keys=True, separators=(",", ":")),
                "processor_version": __version__,
                "written_at": now,
                "state_packed": state if packed else None,
            }
        )
        assert value == expected
        assert key == f"{kind}/{ident}".encode()


def test_small_batches_take_the_record_path_with_the_same_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = CFG.topics
    pairs = _outcomes(300, 4)
    reqs = _requests(300, 4)
    results = []
    for threshold in (0, 10**9):
        monkeypatch.setattr(engine_outputs, "MIN_VECTORIZED", threshold)
        engine = PartitionEngine(CFG, 0, SERDES)
        outs = []
        for first in range(0, 300, 30):
            outs.append(
                engine.process(
                    {
                        t.bid_outcomes: _batch(t.bid_outcomes, pairs[first : first + 30], first),
                        t.bid_requests: _batch(t.bid_requests, reqs[first : first + 30], first),
                    },
                    now_ms=1_700_000_100_000,
                )
            )
        results.append(
            (
                [o.decisions for o in outs],
                [o.dead_letters for o in outs],
                engine.take_dirty(),
            )
        )
    assert results[0] == results[1]
    assert sum(len(d) for d in results[0][0]) > 200


@pytest.mark.parametrize("threshold", [64, 0, 10**9])
def test_requests_of_several_partitions_in_one_pass_equal_each_partition_alone(
    monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    """The stage decides every partition's requests of a loop in one pass; per partition the
    decisions (bytes and order), dead letters and counts are those of the partition alone."""
    monkeypatch.setattr(engine_outputs, "MIN_VECTORIZED", threshold)
    t = CFG.topics
    parts = [0, 3, 5]
    alone = {p: PartitionEngine(CFG, p, SERDES) for p in parts}
    together = {p: PartitionEngine(CFG, p, SERDES) for p in parts}
    for step in range(3):
        rewards = {p: _outcomes(200, 10 * step + p) for p in parts}
        requests = {p: _requests(40 + 90 * p, 10 * step + p) for p in parts}
        now = 1_700_000_100_000 + step
        expected = {}
        for p in parts:
            sources = {
                t.bid_outcomes: _batch(t.bid_outcomes, rewards[p], 0, p),
                t.bid_requests: _batch(t.bid_requests, requests[p], 0, p),
            }
            expected[p] = alone[p].process(sources, now_ms=now)
        outs = {p: EngineOutputs() for p in parts}
        for p in parts:
            outs[p] = together[p].process(
                {t.bid_outcomes: _batch(t.bid_outcomes, rewards[p], 0, p)}, now_ms=now
            )
        engine_requests.decide_requests(
            together, {p: _batch(t.bid_requests, requests[p], 0, p) for p in parts}, outs, now
        )
        for p in parts:
            a, b = expected[p], outs[p]
            assert b.decisions == a.decisions, p
            assert b.dead_letters == a.dead_letters, p
            assert {d.source_partition for d in b.dead_letters} <= {p}
            assert b.decision_event_ms == a.decision_event_ms
            assert (b.modes, b.arms_chosen, b.guardrails) == (a.modes, a.arms_chosen, a.guardrails)
            assert len(a.decisions) > 0 and len(a.dead_letters) > 0


def test_partitions_with_different_arm_tables_are_decided_each_on_its_own_columns() -> None:
    """The one-pass decision needs one arm table; when a partition's differs (arms restored
    from another configuration), each partition is decided on its own columns, as alone."""
    t = CFG.topics
    parts = [0, 1]
    alone = {p: PartitionEngine(CFG, p, SERDES) for p in parts}
    together = {p: PartitionEngine(CFG, p, SERDES) for p in parts}
    for engines in (alone, together):
        policy = engines[0].policy
        table = policy._arm_table

        def shifted(state: Any, table: Any = table) -> Any:
            names, bid, budget, cons = table(state)
            return names, bid * 1.5, budget, cons

        policy._arm_table = shifted  # type: ignore[method-assign]
    requests = {p: _requests(120, 40 + p) for p in parts}
    now = 1_700_000_200_000
    expected = {
        p: alone[p].process({t.bid_requests: _batch(t.bid_requests, requests[p], 0, p)}, now_ms=now)
        for p in parts
    }
    outs = {p: EngineOutputs() for p in parts}
    engine_requests.decide_requests(
        together, {p: _batch(t.bid_requests, requests[p], 0, p) for p in parts}, outs, now
    )
    for p in parts:
        assert outs[p].decisions == expected[p].decisions, p
    assert expected[0].decisions != expected[1].decisions
