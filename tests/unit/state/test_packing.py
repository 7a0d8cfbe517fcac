"""The packed campaign state layout: exact round trips, arm-list groups, clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.errors import StateError
from processor.policy.bidding import BiddingConfig, BiddingState
from processor.policy.monitor import SafetyState
from processor.state.packing import (
    SAFETY_FLOATS,
    SAFETY_INTS,
    campaign_dtype,
    campaign_state_dicts,
    pack_campaigns,
    restore_campaigns,
    unpack_groups,
)

FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _filled(n: int, seed: int) -> BiddingState:
    """``n`` campaigns with arbitrary (but exact-to-the-bit) counts and safety values."""
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
    for name in SAFETY_FLOATS:
        state.safety.arrays[name][rows] = rng.normal(size=n)
    for name in SAFETY_INTS:
        state.safety.arrays[name][rows] = rng.integers(0, 1000, n)
    state.safety.emergency[rows] = rng.random(n) < 0.3
    return state


def test_layout_covers_exactly_the_safety_state_fields() -> None:
    # a SafetyState field added without a new layout version would be silently dropped
    floats, ints = SafetyState().state_fields
    assert (floats, ints) == (SAFETY_FLOATS, SAFETY_INTS)
    assert campaign_dtype(4).itemsize == 8 * 4 * 2 + 8 * 2 + 1 + 8 * len(floats) + 8 * len(ints)


def test_round_trip_is_exact_with_several_arm_lists() -> None:
    source = _filled(300, 1)
    keys = source.thompson.keys
    source.thompson.remove_arm("balanced", keys[3])
    source.thompson.remove_arm("aggressive", keys[7])
    source.thompson.add_arm("newcomer", keys[11])
    blobs = pack_campaigns(source, keys)
    assert [len(arms) for arms, _, _ in unpack_groups(blobs)] == [4, 3, 3, 5]
    restored = BiddingState(BiddingConfig())
    restore_campaigns(restored, keys, blobs)
    for key in keys:
        assert restored.get_key_state(key) == source.get_key_state(key), key
    assert json.dumps(campaign_state_dicts(blobs)) == json.dumps(
        [source.get_key_state(k) for k in keys]
    )
    # the same as key-by-key JSON restoring, array for array
    by_key = BiddingState(BiddingConfig())
    for key in keys:
        by_key.set_key_state(key, json.loads(json.dumps(source.get_key_state(key))))
    assert restored.thompson.keys == by_key.thompson.keys
    n = restored.thompson.n_keys
    for name in ("successes", "failures", "active", "version", "last_event_ms"):
        assert np.array_equal(restored.thompson._arr[name][:n], by_key.thompson._arr[name][:n])


@settings(max_examples=40, deadline=None)
@given(
    succ=st.lists(FLOATS, min_size=4, max_size=4),
    fail=st.lists(FLOATS, min_size=4, max_size=4),
    safety=st.lists(FLOATS, min_size=len(SAFETY_FLOATS), max_size=len(SAFETY_FLOATS)),
    counts=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=5, max_size=5),
    emergency=st.booleans(),
)
def test_any_values_survive_bit_for_bit(
    succ: list[float], fail: list[float], safety: list[float], counts: list[int], emergency: bool
) -> None:
    state = BiddingState(BiddingConfig())
    want = {
        "thompson": {
            "arm_names": state.thompson.arm_names,
            "successes": succ,
            "failures": fail,
            "version": counts[0],
            "last_event_ms": counts[1],
        },
        "safety": {
            "emergency": emergency,
            **dict(zip(SAFETY_FLOATS, safety, strict=True)),
            **dict(zip(SAFETY_INTS, counts[2:], strict=True)),
        },
    }
    state.set_key_state("k", want)
    blob = pack_campaigns(state, ["k"])[0]
    assert campaign_state_dicts([blob]) == [want]
    other = BiddingState(BiddingConfig())
    restore_campaigns(other, ["k"], [blob])
    assert other.get_key_state("k") == want


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b"\x02" + b[1:], "unknown layout version 2"),
        (lambda b: b"", "unknown layout version None"),
        (lambda b: b[:-1], "wrong length"),
        (lambda b: b + b"\x00", "wrong length"),
        (lambda b: b[:5], "malformed arm list"),
        (lambda b: b"\x01\x00" + b[2:], "malformed arm list"),
    ],
)
def test_malformed_blobs_raise_state_error_with_the_reason(
    damage: Callable[[bytes], bytes], reason: str
) -> None:
    state = _filled(3, 2)
    blobs = pack_campaigns(state, state.thompson.keys)
    blobs[1] = damage(blobs[1])
    fresh = BiddingState(BiddingConfig())
    with pytest.raises(StateError, match=reason):
        restore_campaigns(fresh, ["a", "b", "c"], blobs)
