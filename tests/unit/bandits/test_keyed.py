"""Keyed Thompson and Exp3-IX: batch = sequential, probabilities, round trips (Hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import processor.bandits.keyed as keyed_mod
from processor.bandits import BanditInputError, KeyedExp3IX, KeyedThompson
from processor.errors import StateError

ARMS = ["a", "b", "c", "d"]
KEYS = ["k0", "k1", "k2"]

events = st.lists(
    st.tuples(
        st.integers(0, len(KEYS) - 1),
        st.integers(0, len(ARMS) - 1),
        st.floats(0.0, 1.0),
        st.integers(0, 20_000_000),
        st.floats(-150.0, 150.0),
        st.floats(0.01, 1.0),
    ),
    min_size=1,
    max_size=40,
)


def _arrays(evs: list[tuple[int, int, float, int, float, float]]) -> dict[str, np.ndarray]:
    cols = list(zip(*evs, strict=True))
    return {
        "rows": np.array(cols[0], dtype=np.int64),
        "arms": np.array(cols[1], dtype=np.int64),
        "success": np.array(cols[2]),
        "times": np.array(cols[3], dtype=np.int64),
        "rewards": np.array(cols[4]),
        "props": np.array(cols[5]),
    }


def _roundtrip(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(d))
    return out


# ---- Thompson --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(evs=events, discount=st.sampled_from([1.0, 0.9, 0.5]), with_times=st.booleans())
def test_thompson_batch_equals_sequential(
    evs: list[tuple[int, int, float, int, float, float]], discount: float, with_times: bool
) -> None:
    e = _arrays(evs)
    batch = KeyedThompson(ARMS, discount=discount, discount_unit_ms=1_000_000)
    seq = KeyedThompson(ARMS, discount=discount, discount_unit_ms=1_000_000)
    batch.rows(KEYS)
    seq.rows(KEYS)
    times = e["times"] if with_times else None
    batch.update(e["rows"], e["arms"], e["success"], times)
    for i in range(len(evs)):
        t = None if times is None else times[i : i + 1]
        seq.update(e["rows"][i : i + 1], e["arms"][i : i + 1], e["success"][i : i + 1], t)
    if discount == 1.0:
        np.testing.assert_array_equal(batch.successes, seq.successes)
        np.testing.assert_array_equal(batch.failures, seq.failures)
    else:
        np.testing.assert_allclose(batch.successes, seq.successes, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(batch.failures, seq.failures, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(batch.version, seq.version)
    np.testing.assert_array_equal(batch.last_event_ms, seq.last_event_ms)


def test_thompson_discount_by_hand() -> None:
    k = KeyedThompson(["x", "y"], discount=0.5, discount_unit_ms=1000)
    r = k.rows(["key"])
    k.update(r, [0], [1.0], [5000])
    k.update(r, [0], [1.0], [7000])  # decay 0.5**2 first
    assert k.successes[0, 0] == pytest.approx(1.25)
    k.update(r, [1], [0.0], [6000])  # late: no decay, clock stays
    assert k.successes[0, 0] == pytest.approx(1.25)
    assert k.failures[0, 1] == pytest.approx(1.0)
    assert k.last_event_ms[0] == 7000
    np.testing.assert_allclose(k.alpha(r), [[2.25, 1.0]])


@settings(max_examples=40, deadline=None)
@given(evs=events)
def test_thompson_probabilities_sum_to_one_and_roundtrip(
    evs: list[tuple[int, int, float, int, float, float]],
) -> None:
    e = _arrays(evs)
    k = KeyedThompson(ARMS, discount=0.9, discount_unit_ms=100_000)
    rows = k.rows(KEYS)
    k.remove_arm("b", key="k1")
    ok = ~((e["rows"] == 1) & (e["arms"] == 1))
    k.update(e["rows"][ok], e["arms"][ok], e["success"][ok], e["times"][ok])
    p = k.propensities(rows)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert p[1, 1] == 0.0
    back = KeyedThompson.from_dict(_roundtrip(k.to_dict()))
    assert back.to_dict() == k.to_dict()
    np.testing.assert_array_equal(back.propensities(rows), p)
    other = KeyedThompson(ARMS)
    for key in KEYS:
        other.set_key_state(key, _roundtrip(k.get_key_state(key)))
        assert other.get_key_state(key) == k.get_key_state(key)


def test_thompson_propensity_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = keyed_mod.thompson_propensities

    def counting(a: np.ndarray, b: np.ndarray, act: np.ndarray) -> np.ndarray:
        calls.append(a.shape[0])
        return real(a, b, act)

    monkeypatch.setattr(keyed_mod, "thompson_propensities", counting)
    k = KeyedThompson(ARMS)
    rows = k.rows(["p", "q", "p", "p", "q"])
    k.propensities(rows)
    k.propensities(rows)
    assert calls == [2]
    k.update(rows[:1], [2], [1.0])
    k.propensities(rows)
    assert calls == [2, 1]


def test_thompson_select_is_probability_matching() -> None:
    k = KeyedThompson(ARMS)
    r = k.rows(["key"])
    k.update(np.repeat(r, 6), [0, 0, 1, 2, 2, 2], [1, 0, 1, 1, 0, 1], None)
    n = 200_000
    arms, props = k.select(np.repeat(r, n), np.random.default_rng(3).random(n))
    p = k.propensities(r)[0]
    np.testing.assert_array_equal(props, p[arms])
    freq = np.bincount(arms, minlength=4) / n
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-12)
    # and the same as the argmax of posterior draws
    draws = np.random.default_rng(4).beta(k.alpha(r)[0], k.beta(r)[0], size=(n, 4))
    mc = np.bincount(draws.argmax(axis=1), minlength=4) / n
    assert np.all(np.abs(mc - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_thompson_select_skips_inactive_and_is_deterministic() -> None:
    k = KeyedThompson(ARMS)
    rows = k.rows(["x"] * 1000)
    k.remove_arm("c", key="x")
    u = np.random.default_rng(0).random(1000)
    a1, p1 = k.select(rows, u)
    a2, p2 = k.select(rows, u)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(p1, p2)
    assert 2 not in set(a1.tolist())
    np.testing.assert_allclose(p1, 1 / 3, atol=1e-9)
    with pytest.raises(BanditInputError):
        k.select(rows[:1], [1.0])


def test_thompson_deterministic_and_arms() -> None:
    k = KeyedThompson(ARMS)
    r = k.rows(["x"])
    arm, _ = k.select_deterministic(r)
    assert arm[0] == 0  # ties → lowest column
    k.update(r, [3], [1.0])
    arm, prop = k.select_deterministic(r)
    assert arm[0] == 3
    assert prop[0] == pytest.approx(k.propensities(r)[0, 3])
    col = k.add_arm("e", key="x")
    assert col == 4
    assert k.active[0, 4]
    other = k.rows(["y"])
    assert not k.active[other[0], 4]
    for name in ["a", "b", "c", "d"]:
        k.remove_arm(name, key="x")
    with pytest.raises(StateError):
        k.remove_arm("e", key="x")
    with pytest.raises(StateError):
        k.add_arm("e", key="x")
    k.reset_key("x")
    assert k.version[0] == 0
    assert k.active[0].tolist() == [True, True, True, True, False]


# ---- Exp3-IX ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    evs=events,
    gamma=st.sampled_from([None, 0.05]),
    mix=st.sampled_from([0.0, 0.1]),
    share=st.sampled_from([0.0, 0.001, 0.2]),
)
def test_exp3_batch_equals_sequential(
    evs: list[tuple[int, int, float, int, float, float]],
    gamma: float | None,
    mix: float,
    share: float,
) -> None:
    e = _arrays(evs)
    batch = KeyedExp3IX(ARMS, gamma=gamma, uniform_mix=mix, share=share)
    seq = KeyedExp3IX(ARMS, gamma=gamma, uniform_mix=mix, share=share)
    batch.rows(KEYS)
    seq.rows(KEYS)
    batch.update(e["rows"], e["arms"], e["rewards"], e["props"])
    for i in range(len(evs)):
        sl = slice(i, i + 1)
        seq.update(e["rows"][sl], e["arms"][sl], e["rewards"][sl], e["props"][sl])
    assert batch.to_dict() == seq.to_dict()
    p = batch.probabilities(np.arange(3))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    back = KeyedExp3IX.from_dict(_roundtrip(batch.to_dict()))
    assert back.to_dict() == batch.to_dict()
    np.testing.assert_array_equal(back.probabilities(np.arange(3)), p)


@settings(max_examples=40, deadline=None)
@given(
    m=st.lists(
        st.lists(st.one_of(st.just(float("nan")), st.floats(-200, 200)), min_size=4, max_size=4),
        min_size=1,
        max_size=10,
    ),
    rows=st.lists(st.integers(0, 2), min_size=10, max_size=10),
)
@pytest.mark.parametrize("share", [0.0, 0.01])
def test_hedge_batch_equals_sequential(m: list[list[float]], rows: list[int], share: float) -> None:
    mat = np.array(m)
    mat[np.isnan(mat).all(axis=1), 0] = 0.0  # a round needs at least one report
    r = np.array(rows[: len(m)], dtype=np.int64)
    batch, seq = KeyedExp3IX(ARMS, share=share), KeyedExp3IX(ARMS, share=share)
    batch.rows(KEYS)
    seq.rows(KEYS)
    batch.update_full(r, mat)
    for i in range(len(m)):
        seq.update_full(r[i : i + 1], mat[i : i + 1])
    assert batch.to_dict() == seq.to_dict()
    assert np.isfinite(batch.loss_estimates).all()


def test_exp3_update_formula_by_hand() -> None:
    k = KeyedExp3IX(["x", "y", "z"], reward_range=(-100.0, 100.0))
    r = k.rows(["key"])
    k.update(r, [1], [50.0], [0.25])
    eta1 = min(0.07, np.sqrt(np.log(3) / 3))
    assert k.loss_estimates[0, 1] == pytest.approx(0.25 / (0.25 + eta1 / 2), rel=1e-15)
    k.update(r, [1], [-1e9], [0.5])  # clipped to loss 1
    eta2 = min(0.07, np.sqrt(np.log(3) / 6))
    assert k.loss_estimates[0, 1] == pytest.approx(
        0.25 / (0.25 + eta1 / 2) + 1 / (0.5 + eta2 / 2), rel=1e-15
    )
    eta3 = k.eta_at(np.array([3]))[0]
    z = -eta3 * k.loss_estimates[0]
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(k.probabilities(r)[0], expected, rtol=1e-14)


def test_exp3_rejects_bad_input_without_change() -> None:
    k = KeyedExp3IX(ARMS)
    r = k.rows(["key", "other"])
    before = k.to_dict()
    for reward, prop in [(float("nan"), 0.5), (float("inf"), 0.5), (1.0, 0.0), (1.0, 1.5)]:
        with pytest.raises(BanditInputError):
            k.update(r, [0, 1], [1.0, reward], [0.5, prop])
        with pytest.raises(ValueError, match=r"."):
            k.update(r, [0, 1], [1.0, reward], [0.5, prop])
    with pytest.raises(BanditInputError):
        k.update_full(r[:1], np.array([[1.0, np.inf, 0.0, 0.0]]))
    k.remove_arm("c", key="key")
    before = k.to_dict()
    with pytest.raises(BanditInputError):
        k.update(r[:1], [2], [1.0], [0.5])
    assert k.to_dict() == before


def test_exp3_never_overflows() -> None:
    k = KeyedExp3IX(ARMS, eta=5.0, gamma=1e-12)
    r = np.repeat(k.rows(["key"]), 10_000)
    k.update(r, np.zeros(10_000, dtype=np.int64), np.full(10_000, -1e200), np.full(10_000, 1e-9))
    p = k.probabilities(r[:1])
    assert np.isfinite(p).all()
    assert p[0, 0] == 0.0
    assert p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("eta", "mix"), [(None, 0.0), (0.3, 0.0), (None, 0.2)])
def test_exp3_add_arm_gets_exactly_one_over_k_plus_one(eta: float | None, mix: float) -> None:
    k = KeyedExp3IX(ARMS, eta=eta, uniform_mix=mix)
    rows = k.rows(KEYS)
    rng = np.random.default_rng(2)
    n = 300
    k.update(
        rng.integers(0, 3, n), rng.integers(0, 4, n), rng.uniform(-100, 100, n), np.full(n, 0.3)
    )
    k.remove_arm("d", key="k2")
    col = k.add_arm("e")
    p = k.probabilities(rows)
    np.testing.assert_allclose(p[:, col], [1 / 5, 1 / 5, 1 / 4], rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)


def test_exp3_warm_start_reproduces_prior() -> None:
    k = KeyedExp3IX(["x", "y", "z"])
    r = k.rows(["key"])
    k.update(np.repeat(r, 5), [0, 1, 2, 0, 0], [1.0, 2.0, 3.0, 4.0, 5.0], np.full(5, 0.3))
    k.set_warm_start("key", {"x": 2.0, "y": 1.0, "z": 1.0})
    np.testing.assert_allclose(k.probabilities(r)[0], [0.5, 0.25, 0.25], rtol=1e-12)
    state = k.get_key_state("key")
    assert state["arm_names"] == ["x", "y", "z"]
    assert state["total_steps"] == 5
