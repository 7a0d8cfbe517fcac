"""The object APIs' per-event fast paths give exactly what the keyed (vectorized) path gives.

Each test drives an object and an oracle — the same state updated and read only through the
keyed numpy methods — with one random sequence of operations, and compares every probability,
weight, choice and array bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from processor.bandits import (
    BanditInputError,
    EnsembleWeightOptimizer,
    Exp3IXBandit,
    Hedge,
    KeyedExp3IX,
    KeyedThompson,
    ThompsonSampling,
)
from processor.bandits.base import inverse_cdf_select, thompson_propensities
from processor.bandits.exp3ix_scalar import pairwise_sum
from processor.bandits.thompson_drift import Drift, tv_bound

NAMES = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]


def same_arrays(a: KeyedExp3IX | KeyedThompson, b: KeyedExp3IX | KeyedThompson) -> None:
    assert a.arm_names == b.arm_names
    for name, arr in a._arr.items():
        if name[0] != "_":
            np.testing.assert_array_equal(arr[: a.n_keys], b._arr[name][: b.n_keys], name)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e30, 1e30), min_size=0, max_size=300))
def test_pairwise_sum_is_numpys(values: list[float]) -> None:
    assert pairwise_sum(values) == float(np.array(values, dtype=np.float64).reshape(1, -1).sum())


exp3_configs = st.fixed_dictionaries(
    {
        "k": st.integers(1, 9),
        "gamma": st.sampled_from([None, 0.05]),
        "eta": st.sampled_from([None, None, 0.1]),
        "uniform_mix": st.sampled_from([0.0, 0.0, 0.1]),
        "share": st.sampled_from([0.0, 0.0, 0.02]),
        "reward_range": st.sampled_from([(-100.0, 100.0), (0.0, 1.0)]),
    }
)
ops = st.lists(
    st.tuples(
        st.sampled_from(["step", "step", "step", "own", "full", "add", "remove", "bad"]),
        st.floats(-300.0, 300.0),
        st.floats(0.01, 1.0),
        st.integers(0, 8),
    ),
    min_size=1,
    max_size=60,
)


def _exp3(cls: Any, cfg: dict[str, Any], seed: int) -> Any:
    kw = {k: v for k, v in cfg.items() if k != "k"}
    if cls is Hedge:
        kw.pop("gamma")
        kw.pop("uniform_mix")
    return cls(cfg["k"], NAMES[: cfg["k"]], seed=seed, **kw)


@settings(max_examples=120, deadline=None)
@given(cfg=exp3_configs, steps=ops, seed=st.integers(0, 10**6), hedge=st.booleans())
def test_exp3ix_and_hedge_objects_equal_the_keyed_path(
    cfg: dict[str, Any], steps: list[tuple[str, float, float, int]], seed: int, hedge: bool
) -> None:
    cls = Hedge if hedge else Exp3IXBandit
    obj = _exp3(cls, cfg, seed)
    oracle = _exp3(cls, cfg, seed)
    k = oracle.keyed
    rows = oracle._rows
    gen = np.random.default_rng(seed)  # the object's own generator, replayed
    fresh = 0
    for what, reward, prop, i in steps:
        cols = np.flatnonzero(k.active[0])
        want_p = k.probabilities(rows)[0, cols]
        np.testing.assert_array_equal(obj.get_probabilities(), want_p)
        np.testing.assert_array_equal(obj.get_weights(), k.weights(rows)[0, cols])
        assert obj.eta == float(k._next_eta(rows)[0])
        assert obj.arm_names == [k.arm_names[c] for c in cols]
        if what in ("step", "own"):
            arm = obj.select_arm()
            assert arm == int(inverse_cdf_select(want_p[None, :], [gen.random()])[0])
            if hedge:
                values = [reward + 7.0 * j for j in range(cols.size)]
                obj.update(dict(zip(obj.arm_names, values, strict=True)))
                matrix = np.full((1, len(k.arm_names)), np.nan)
                matrix[0, cols] = values
                k.update_full(rows, matrix)
            else:
                p = None if what == "own" else prop
                obj.update(arm, reward, p)
                k.update(rows, [int(cols[arm])], [reward], [want_p[arm] if p is None else p])
            fresh += 1
        elif what == "full" and hedge:
            values = [reward if j % 2 else math.nan for j in range(cols.size)]
            if any(not math.isnan(v) for v in values):
                obj.update(values)
                matrix = np.full((1, len(k.arm_names)), np.nan)
                matrix[0, cols] = values
                k.update_full(rows, matrix)
        elif what == "add":
            name = f"x{i}"
            if not obj.has_arm(name):
                weight = None if i % 2 else 0.3
                if cols.size + 1 >= 2:
                    obj.add_arm(name, weight)
                    oracle.add_arm(name, weight)
        elif what == "remove" and cols.size > 1:
            name = obj.arm_names[i % cols.size]
            obj.remove_arm(name)
            oracle.remove_arm(name)
        elif what == "bad":
            before = obj.to_dict()
            if hedge:
                with pytest.raises(BanditInputError):
                    obj.update([math.inf] * cols.size)
            else:
                with pytest.raises(BanditInputError):
                    obj.update(0, math.nan if i % 2 else 1.0, 0.0 if i % 2 == 0 else None)
            assert obj.to_dict() == before
        same_arrays(obj.keyed, k)
    assert obj.to_dict() == oracle.to_dict()


def test_keyed_changes_made_directly_are_seen() -> None:
    b = Exp3IXBandit(3, ["a", "b", "c"], seed=1)
    b.update(0, 50.0, 0.3)
    first = b.get_probabilities()
    b.keyed.set_warm_start("default", {"a": 0.2, "b": 0.3, "c": 0.5})
    np.testing.assert_allclose(b.get_probabilities(), [0.2, 0.3, 0.5], rtol=1e-12)
    state = Exp3IXBandit(3, ["a", "b", "c"]).to_dict()
    b.keyed.set_key_state("default", state)
    np.testing.assert_array_equal(b.get_probabilities(), np.full(3, 1 / 3))
    assert not np.array_equal(first, b.get_probabilities())


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["family", "horizon", "family_horizon"]),
    seed=st.integers(0, 10**6),
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.floats(-200, 200), st.sampled_from(["b", "f", "c"])),
        min_size=1,
        max_size=50,
    ),
)
def test_ensemble_optimizer_equals_the_keyed_path(
    mode: str, seed: int, steps: list[tuple[int, float, str]]
) -> None:
    fams, hs = ["f1", "f2", "f3"], ["5m", "15m", "1h"]
    obj = EnsembleWeightOptimizer(fams, hs, mode=mode, seed=seed, warm_start_steps=3)
    oracle = EnsembleWeightOptimizer(fams, hs, mode=mode, seed=seed, warm_start_steps=3)
    k = oracle.bandit
    gen = np.random.default_rng(seed)
    for hi, reward, kind in steps:
        h = hs[hi]
        rows = oracle._row(h)
        probs = k.probabilities(rows)
        assert obj.get_probabilities(h) == oracle._restricted(probs[0], h)
        assert obj.get_bandit_weights(h) == oracle._restricted(k.weights(rows)[0], h)
        if kind == "b":
            arm, p = obj.select(h)
            arms, props = k.select(rows, np.array([gen.random()]))
            assert (arm, p) == (k.arm_names[int(arms[0])], float(props[0]))
            family = arm.split(":")[0] if mode != "horizon" else fams[0]
            obj.update(family, h, reward, p)
            k.update(rows, [k.column(arm if mode != "horizon" else h)], [reward], [p])
        else:
            rewards = {f: reward + j for j, f in enumerate(fams[: 1 + hi])}
            if mode == "horizon":
                rewards = {h: reward}
            if kind == "c":
                obj.update_contributions(h, reward, dict.fromkeys(rewards, 0.5))
                matrix = np.full((1, len(k.arm_names)), np.nan)
                for n in rewards:
                    matrix[0, k.column(oracle._resolve(n, h))] = reward * 0.5
            else:
                obj.update_full(h, rewards)
                matrix = np.full((1, len(k.arm_names)), np.nan)
                for n, v in rewards.items():
                    matrix[0, k.column(oracle._resolve(n, h))] = v
            k.update_full(rows, matrix)
        assert obj.get_blending_weights(h) == oracle.get_blending_weights(h)
        same_arrays(obj.bandit, k)
    with pytest.raises(BanditInputError):
        obj.update_full(hs[0], {fams[0] if mode != "horizon" else hs[0]: math.nan})
    same_arrays(obj.bandit, k)


# ---- Thompson sampling ------------------------------------------------------------------------


def test_tv_bound_is_the_total_variation() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        a, b = (float(x) for x in np.exp(rng.uniform(-4.0, 9.0, 2)))
        m = a / (a + b)
        for success in (True, False):
            na, nb = (a + 1, b) if success else (a, b + 1)
            exact = abs(special.betainc(a, b, m) - special.betainc(na, nb, m))  # at the crossing
            bound = tv_bound(a, b, success)
            assert bound >= exact * (1 - 1e-9) - 1e-15
            assert bound <= exact * (1 + 1e-6) + 1e-12
            # and no other threshold beats the crossing (it is the sup)
            xs = np.clip(m + np.linspace(-0.2, 0.2, 41), 1e-9, 1 - 1e-9)
            gaps = np.abs(special.betainc(a, b, xs) - special.betainc(na, nb, xs))
            assert gaps.max() <= bound * (1 + 1e-9) + 1e-15


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 400)), min_size=2, max_size=6),
    arm=st.integers(0, 5),
    success=st.booleans(),
    prior=st.sampled_from([(1.0, 1.0), (0.5, 2.0), (3.0, 3.0)]),
)
def test_one_update_moves_each_boundary_inside_its_one_sided_bound(
    counts: list[tuple[int, int]], arm: int, success: bool, prior: tuple[float, float]
) -> None:
    a = np.array([prior[0] + s for s, _ in counts])
    b = np.array([prior[1] + f for _, f in counts])
    col = arm % len(counts)
    before = thompson_propensities(a, b)
    drift = Drift(before.tolist(), len(counts) - 1, 0)
    assert drift.note(col, success, float(a[col]), float(b[col]), 1) or True
    (a if success else b)[col] += 1.0
    after = thompson_propensities(a, b)
    moved = np.cumsum(after) - np.cumsum(before)
    for j in range(len(counts) - 1):
        assert drift.lo[j] - 4e-6 <= moved[j] <= drift.hi[j] + 4e-6
        assert drift.lo[j] == 0.0 or drift.hi[j] == 0.0  # one side only


def _thompson_run(
    arms: list[str], steps: int, seed: int, rates: list[float], **kw: Any
) -> tuple[ThompsonSampling, int, int]:
    """Run an object and the keyed select side by side; returns (object, steps, quadratures)."""
    obj = ThompsonSampling(arms, seed=seed, **kw)
    k = KeyedThompson(arms, **{n: v for n, v in kw.items() if n != "seed"})
    row = k.rows(["only"])
    gen = np.random.default_rng(seed)
    outcomes = np.random.default_rng(seed + 1)
    quadratures = 0
    real = obj.keyed.propensities

    def counted(rows: Any) -> Any:
        nonlocal quadratures
        quadratures += 1
        return real(rows)

    obj.keyed.propensities = counted  # type: ignore[method-assign]
    for t in range(steps):
        name = obj.select()
        picked, _ = k.select(row, np.array([gen.random()]))
        assert name == k.arm_names[int(picked[0])], t
        i = obj.arms.index(name)
        s: float = float(outcomes.random() < rates[i % len(rates)])
        if kw.get("discount", 1.0) == 1.0 and t % 97 == 13:
            s = 0.25  # a fractional success: exact propensities next time
        when = 1_000 * t if t % 2 else None
        obj.update(name, success=s, event_time=when)
        k.update(row, [k.column(name)], [s], None if when is None else [when])
    same_arrays(obj.keyed, k)
    return obj, steps, quadratures


@pytest.mark.parametrize(
    ("arms", "rates", "kw"),
    [
        (["a", "b", "c", "d"], [0.02, 0.03, 0.035, 0.025], {}),
        (["a", "b", "c", "d", "e"], [0.1, 0.2, 0.3, 0.4, 0.5], {}),
        (["a", "b"], [0.5, 0.52], {"prior_alpha": 0.5, "prior_beta": 2.0}),
        (["a", "b", "c"], [0.3, 0.1, 0.2], {"discount": 0.9, "discount_unit_ms": 5_000}),
    ],
)
def test_thompson_choices_equal_the_keyed_select(
    arms: list[str], rates: list[float], kw: dict[str, Any]
) -> None:
    obj, steps, quadratures = _thompson_run(arms, 1500, 17, rates, **kw)
    p = obj.propensities()
    want = obj.keyed.propensities(obj._rows)[0]
    assert list(p.values()) == [want[obj.keyed.column(a)] for a in p]
    if kw.get("discount", 1.0) == 1.0:
        assert quadratures < steps / 3  # most choices were certain without one
    else:
        assert quadratures >= steps - 1  # discounting moves every count: nothing to bound


def test_thompson_arm_changes_and_restores_keep_the_choices_exact() -> None:
    obj = ThompsonSampling(["a", "b", "c"], seed=5)
    k = KeyedThompson(["a", "b", "c"])
    row = k.rows(["only"])
    gen = np.random.default_rng(5)
    for t in range(400):
        if t == 100:
            obj.add_arm("d")
            k.add_arm("d", key="only")
        if t == 200:
            obj.remove_arm("b")
            k.remove_arm("b", key="only")
        if t == 300:
            state = obj.to_dict()
            obj = ThompsonSampling.from_dict(state)
            obj.keyed.set_key_state(obj._KEY, k.get_key_state("only"))
        name = obj.select()
        picked, _ = k.select(row, np.array([gen.random()]))
        assert name == k.arm_names[int(picked[0])]
        success = name in ("c", "d") and t % 3 == 0
        obj.update(name, success=success)
        k.update(row, [k.column(name)], [float(success)])
    with pytest.raises(BanditInputError):
        obj.update("a", success=1.5)
    with pytest.raises(BanditInputError):
        obj.update("b", success=True)  # removed
