"""The packed campaign state layout: exact round trips, arm-list groups, versions, clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine import PartitionEngine
from processor.errors import StateError
from processor.policy.bidding import BiddingConfig, BiddingState, BidPolicy, OutcomeBatch
from processor.policy.monitor import SafetyState
from processor.state.changelog import _load_state, parse_changelog_key
from processor.state.packing import (
    LAYOUT_VERSION,
    SAFETY_FLAGS,
    SAFETY_FLOATS,
    VALUE_FIELDS,
    campaign_dtype,
    campaign_state_dicts,
    unpack_groups,
)

FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
FIXTURE = Path(__file__).parent / "fixtures" / "changelog-0.2.json"


def _filled(n: int, seed: int) -> BiddingState:
    """``n`` campaigns with arbitrary (but exact-to-the-bit) posteriors and safety values."""
    state = BiddingState(BiddingConfig())
    keys = [f"c-{i}" for i in range(n)]
    rows = state.rows(keys)
    rng = np.random.default_rng(seed)
    arr = state.thompson._arr
    k = len(state.thompson.arm_names)
    arr["successes"][rows, :k] = rng.gamma(2.0, 50.0, (n, k))
    arr["failures"][rows, :k] = rng.gamma(2.0, 80.0, (n, k))
    arr["version"][rows] = rng.integers(0, 10**9, n)
    arr["last_event_ms"][rows] = rng.integers(0, 2**50, n)
    value = state.value._arr
    for name in VALUE_FIELDS:
        value[name][rows, :k] = rng.normal(size=(n, k))
    value["version"][rows] = arr["version"][rows]
    value["last_event_ms"][rows] = arr["last_event_ms"][rows]
    for name in SAFETY_FLOATS:
        state.safety.arrays[name][rows] = rng.normal(size=n)
    state.safety.arrays["clock_ms"][rows] = arr["last_event_ms"][rows]
    state.safety.arrays["evidence"][rows] = rng.integers(0, 7, n)
    state.safety.emergency[rows] = rng.random(n) < 0.3
    state.safety.manual[rows] = state.safety.emergency[rows] & (rng.random(n) < 0.5)
    return state


def test_layout_covers_exactly_the_state_fields() -> None:
    # a field added without a new layout version would be silently dropped
    floats, ints, flags = SafetyState().state_fields
    assert floats == SAFETY_FLOATS
    assert set(ints) | set(flags) == {"clock_ms", *SAFETY_FLAGS}
    assert VALUE_FIELDS == ("count", "total", "total_sq")
    k = 4
    assert campaign_dtype(k).itemsize == 8 * k * 5 + 8 * 2 + 3 + 8 * len(floats)
    assert LAYOUT_VERSION == 2


def test_round_trip_is_exact_with_several_arm_lists() -> None:
    source = _filled(300, 1)
    keys = source.thompson.keys
    source.thompson.remove_arm("balanced", keys[3])
    source.thompson.remove_arm("aggressive", keys[7])
    source.thompson.add_arm("newcomer", keys[11])
    blobs = source.pack(keys)
    assert all(b[0] == LAYOUT_VERSION for b in blobs)
    assert [len(arms) for arms, _, _ in unpack_groups(blobs)] == [4, 3, 3, 5]
    restored = BiddingState(BiddingConfig())
    restored.restore_packed(keys, blobs)
    for key in keys:
        assert restored.get_key_state(key) == source.get_key_state(key), key
    assert json.dumps(campaign_state_dicts(blobs)) == json.dumps(
        [source.get_key_state(k) for k in keys]
    )
    # the same as key-by-key JSON restoring, array for array
    by_key = BiddingState(BiddingConfig())
    for key in keys:
        by_key.set_key_state(key, json.loads(json.dumps(source.get_key_state(key))))
    assert restored.thompson.keys == by_key.thompson.keys == restored.value.keys
    n = restored.thompson.n_keys
    for name in ("successes", "failures", "active", "version", "last_event_ms"):
        assert np.array_equal(restored.thompson._arr[name][:n], by_key.thompson._arr[name][:n])
    for name in (*VALUE_FIELDS, "active", "version", "last_event_ms"):
        assert np.array_equal(restored.value._arr[name][:n], by_key.value._arr[name][:n])


@settings(max_examples=40, deadline=None)
@given(
    posteriors=st.lists(FLOATS, min_size=20, max_size=20),
    safety=st.lists(FLOATS, min_size=len(SAFETY_FLOATS), max_size=len(SAFETY_FLOATS)),
    counts=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=2),
    flags=st.tuples(st.booleans(), st.booleans(), st.integers(0, 7)),
)
def test_any_values_survive_bit_for_bit(
    posteriors: list[float],
    safety: list[float],
    counts: list[int],
    flags: tuple[bool, bool, int],
) -> None:
    state = BiddingState(BiddingConfig())
    safety_state: dict[str, Any] = dict(zip(SAFETY_FLOATS, safety, strict=True))
    want = {
        "thompson": {
            "arm_names": state.thompson.arm_names,
            "successes": posteriors[0:4],
            "failures": posteriors[4:8],
            "version": counts[0],
            "last_event_ms": counts[1],
        },
        "value": {f: posteriors[8 + 4 * i : 12 + 4 * i] for i, f in enumerate(VALUE_FIELDS)},
        "safety": {
            "emergency": flags[0],
            "manual": flags[1],
            **safety_state,
            "clock_ms": counts[1],
            "evidence": flags[2],
        },
    }
    state.set_key_state("k", want)
    blob = state.pack(["k"])[0]
    assert campaign_state_dicts([blob]) == [want]
    other = BiddingState(BiddingConfig())
    other.restore_packed(["k"], [blob])
    assert other.get_key_state("k") == want


def _fixture(fmt: str) -> tuple[dict[tuple[str, str], Any], dict[str, Any]]:
    data = json.loads(FIXTURE.read_text())["formats"][fmt]
    decode = SerdeRegistry()["StateRecord"].decode
    states = {}
    for rec in data["records"]:
        ident = parse_changelog_key(bytes.fromhex(rec["key"]))
        states[ident] = _load_state(ident, decode, bytes.fromhex(rec["value"]))
    return states, data["key_states"]


@pytest.mark.parametrize("fmt", ["packed", "json"])
def test_a_changelog_written_by_0_2_restores(fmt: str) -> None:
    """StateRecords written by the 0.2 code (commit 65714dd): Beta counts, versions, clocks, arm
    lists and emergency flags come back; the value posterior and the evidence start empty."""
    states, written = _fixture(fmt)
    assert all(isinstance(s, bytes) == (fmt == "packed") for s in states.values())
    if fmt == "packed":
        assert {s[0] for s in states.values()} == {1}  # layout 1
        views = campaign_state_dicts(list(states.values()))
        assert views == [written[key] for _, key in states]  # the 0.2 view, as 0.2 showed it
    engine = PartitionEngine(AppConfig(), 0, SerdeRegistry())
    engine.restore_many(states)
    for key, old in written.items():
        now = engine.campaigns.get_key_state(key)
        assert now["thompson"] == old["thompson"], key
        assert now["safety"]["emergency"] == old["safety"]["emergency"]
        assert now["safety"]["manual"] is False
        assert now["value"]["count"] == [0.0] * len(old["thompson"]["arm_names"])
    assert engine.campaigns.thompson.active[engine.campaigns.row("cmp-3")].sum() == 3
    assert engine.campaigns.in_emergency("cmp-4")
    # and the restored state keeps working: decisions, outcomes, a new packed layout
    policy = BidPolicy(engine.config.bidding, engine.config.safety)
    out = {
        "request_id": "x",
        "campaign_id": "cmp-0",
        "arm": "balanced",
        "event_time": 1_700_000_500_000,
        "won": True,
        "clicks": 0,
        "conversions": 0,
        "spend": 1.0,
        "revenue": 0.0,
        "reward": None,
        "success": None,
        "propensity": 0.25,
        "policy_version": -1,
        "budget": 2.0,
        "target_cpa": 10.0,
    }
    policy.observe(OutcomeBatch.from_records([out]), engine.campaigns)
    assert engine.campaigns.pack(["cmp-0"])[0][0] == LAYOUT_VERSION


def test_mixed_layouts_in_one_partition() -> None:
    states, _ = _fixture("packed")
    old = list(states.values())
    source = _filled(3, 4)
    new = source.pack(source.thompson.keys)
    groups = unpack_groups(old + new)
    assert sorted(len(idx) for _, idx, _ in groups) == [1, 3, 4]  # 0.2: one arm list without
    restored = BiddingState(BiddingConfig())
    keys = [f"old-{i}" for i in range(len(old))] + source.thompson.keys
    restored.restore_packed(keys, old + new)
    for key in source.thompson.keys:
        assert restored.get_key_state(key) == source.get_key_state(key)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b"\x03" + b[1:], "unknown layout version 3"),
        (lambda b: b"", "unknown layout version None"),
        (lambda b: b[:-1], "wrong length"),
        (lambda b: b + b"\x00", "wrong length"),
        (lambda b: b"\x01" + b[1:], "wrong length"),  # a layout-2 body under a layout-1 header
        (lambda b: b[:5], "malformed arm list"),
        (lambda b: b"\x02\x00" + b[2:], "malformed arm list"),
    ],
)
def test_malformed_blobs_raise_state_error_with_the_reason(
    damage: Callable[[bytes], bytes], reason: str
) -> None:
    state = _filled(3, 2)
    blobs = state.pack(state.thompson.keys)
    blobs[1] = damage(blobs[1])
    fresh = BiddingState(BiddingConfig())
    with pytest.raises(StateError, match=reason):
        fresh.restore_packed(["a", "b", "c"], blobs)
