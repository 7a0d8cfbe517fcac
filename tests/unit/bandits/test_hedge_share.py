"""Hedge at the full-information rate, partial reports, fixed share, and one-arm learners."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from processor.bandits import (
    BanditInputError,
    EnsembleWeightOptimizer,
    Exp3IXBandit,
    Hedge,
    KeyedExp3IX,
    learning_rate,
)
from processor.bandits.expweights import switch_cost

K5 = ["m0", "m1", "m2", "m3", "m4"]


def test_rates_full_information_bandit_and_mixed() -> None:
    k = KeyedExp3IX(["a", "b", "c"])
    full, bandit, mixed = k.rows(["full", "bandit", "mixed"])
    for _ in range(10):
        k.update_full([full, mixed], np.zeros((2, 3)))
    for _ in range(4):
        k.update([bandit, mixed], [0, 1], [1.0, 1.0], [0.5, 0.5])
    eta = k._next_eta(np.array([full, bandit, mixed]))
    assert eta[0] == pytest.approx(math.sqrt(8 * math.log(3) / 11), rel=1e-15)  # no cap
    assert eta[1] == pytest.approx(min(0.07, math.sqrt(math.log(3) / (3 * 5))), rel=1e-15)
    # mixed: ln K / (K t_b + t_f / 8), capped because the row has bandit rounds
    assert eta[2] == pytest.approx(min(0.07, math.sqrt(math.log(3) / (3 * 5 + 10 / 8))))
    # share adds the switch cost to the complexity: the rate no longer vanishes
    late = learning_rate(0, 10**9, 5, eta=None, eta_max=0.07, share=1e-3)
    assert float(late) == pytest.approx(math.sqrt(8 * float(switch_cost(1e-3, 5))), rel=1e-6)


def test_partial_reports_do_not_reward_silence() -> None:
    # The reproduction: A reports +20 bps on every trade, B reports 0 bps on one in four.
    h = Hedge(2, ["A", "B"])
    for i in range(3000):
        h.update({"A": 20.0, "B": 0.0} if i % 4 == 0 else {"A": 20.0})
    assert h.get_weights_dict()["A"] >= 0.9  # 0.2 code: A got 1e-5 after 5,000 trades
    # a round only A reports leaves the gap between the two unchanged
    gap = np.diff(h.keyed.loss_estimates[0])[0]
    h.update({"A": 20.0})
    assert np.diff(h.keyed.loss_estimates[0])[0] == pytest.approx(gap, abs=1e-12)


def test_steady_edge_full_information_k5() -> None:
    # 10 bps edge, 30 bps noise per model: the best model dominates after 2,000 trades.
    rng = np.random.default_rng(15)
    h = Hedge(5, K5)
    mean = np.array([10.0, 0.0, 0.0, 0.0, 0.0])
    for _ in range(2000):
        h.update(rng.normal(mean, 30.0))
    assert h.get_weights()[0] >= 0.95  # 0.47 at the bandit rate capped at 0.07


def _switch_time(share: float, seed: int = 3) -> int:
    """Trades after the switch until the new best model reaches weight 0.9."""
    rng = np.random.default_rng(seed)
    h = Hedge(5, K5, share=share)
    before = np.array([10.0, 0.0, 0.0, 0.0, 0.0])
    for _ in range(2000):
        h.update(rng.normal(before, 30.0))
    after = before[::-1]
    for n in range(1, 8001):
        h.update(rng.normal(after, 30.0))
        if h.get_weights()[4] >= 0.9:
            return n
    return 10**9


def test_fixed_share_follows_a_regime_switch() -> None:
    with_share, without = _switch_time(1e-3), _switch_time(0.0)
    assert with_share <= 1000
    assert without > 2 * with_share


def test_share_keeps_every_arm_reachable_and_never_overflows() -> None:
    k = KeyedExp3IX(["a", "b", "c"], share=0.01)
    r = k.rows(["x"])
    for _ in range(500):
        k.update_full(r, np.array([[1e9, -1e9, -1e9]]))
        k.update(r, [0], [1e12], [1e-6])
    p = k.probabilities(r)[0]
    assert np.isfinite(k.log_prior).all() and np.isfinite(p).all()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p.min() >= 0.01 / 3 * 0.99  # the share floor α/K (up to one round of losses)


def test_share_state_round_trips_and_add_arm_is_exact() -> None:
    k = KeyedExp3IX(["a", "b", "c"], share=0.05, uniform_mix=0.1)
    rows = k.rows(["x", "y"])
    rng = np.random.default_rng(2)
    k.update(
        rng.integers(0, 2, 50), rng.integers(0, 3, 50), rng.normal(0, 50, 50), np.full(50, 0.3)
    )
    back = KeyedExp3IX.from_dict(json.loads(json.dumps(k.to_dict())))
    np.testing.assert_array_equal(back.probabilities(rows), k.probabilities(rows))
    col = k.add_arm("d")
    np.testing.assert_allclose(k.probabilities(rows)[:, col], 0.25, rtol=1e-12)


def test_full_round_without_a_report_is_rejected_unchanged() -> None:
    h = Hedge(3, ["a", "b", "c"])
    h.update({"a": 1.0})
    before = h.to_dict()
    with pytest.raises(BanditInputError, match="at least one"):
        h.update({})
    with pytest.raises(BanditInputError):
        h.update([np.nan, np.nan, np.nan])
    assert h.to_dict() == before


def test_one_arm_is_legal_everywhere() -> None:
    b = Exp3IXBandit(1, ["solo"])
    assert b.eta == 0.0
    b.update(0, 25.0, propensity=1.0)
    assert b.get_probabilities().tolist() == [1.0]
    b.keyed.set_warm_start("default", {"solo": 3.0})
    assert b.get_probabilities().tolist() == [1.0]
    idx = b.add_arm("duo")
    p = b.get_probabilities()
    assert np.isfinite(p).all() and p[idx] == pytest.approx(0.5, rel=1e-12)
    old = {"n_arms": 1, "arm_names": ["solo"], "weights": [1.0], "total_steps": 7}
    restored = Exp3IXBandit.from_dict(old)
    assert restored.get_probabilities().tolist() == [1.0]
    restored.add_arm("duo")
    assert np.isfinite(restored.get_probabilities()).all()
    h = Hedge(1, ["solo"], share=0.01)
    h.update({"solo": 5.0})
    assert h.get_weights().tolist() == [1.0]
    opt = EnsembleWeightOptimizer(["only"], ["1h"], mode="family_horizon", warm_start_steps=0)
    arm, prop = opt.select("1h")
    opt.update("only", "1h", 10.0, prop)
    assert (arm, prop) == ("only:1h", 1.0)
    assert opt.get_blending_weights("1h") == {"only:1h": 1.0}


def test_legacy_keyed_dict_gets_its_bandit_rounds_from_the_pulls() -> None:
    k = KeyedExp3IX(["a", "b"])
    r = k.rows(["x"])
    k.update(np.repeat(r, 3), [0, 1, 0], [1.0, 2.0, 3.0], np.full(3, 0.5))
    k.update_full(r, np.array([[1.0, 2.0]]))
    d = k.to_dict()
    for name in ("bandit_steps", "log_prior"):
        del d["arrays"][name]
    del d["share"]
    back = KeyedExp3IX.from_dict(d)
    assert back.bandit_steps.tolist() == [3]
    np.testing.assert_array_equal(back.probabilities(r), k.probabilities(r))


def test_family_horizon_optimizer_normalises_within_the_horizon() -> None:
    opt = EnsembleWeightOptimizer(["f1", "f2", "f3"], ["5m", "15m"], mode="family_horizon", seed=4)
    probs = opt.get_probabilities("15m")
    assert set(probs) == {"f1:15m", "f2:15m", "f3:15m"}
    arm, p = opt.select("15m")
    assert p == pytest.approx(probs[arm], rel=1e-15) == pytest.approx(1 / 3)
    for _ in range(30):
        arm, p = opt.select("15m")
        opt.update(arm.split(":")[0], "15m", 50.0 if arm == "f2:15m" else -50.0, p)
    assert opt.total_steps("15m") == 30 and opt.total_steps("5m") == 0  # own t per horizon
    assert opt.get_probabilities("5m") == pytest.approx(
        dict.fromkeys(opt.get_probabilities("5m"), 1 / 3)
    )


def test_family_horizon_logged_propensity_is_the_selection_probability() -> None:
    # 0.2 returned the probability over all family x horizon arms (1/6 here) while drawing
    # within the horizon (1/3), inflating Exp3-IX estimates threefold.
    fams = ["f1", "f2", "f3"]
    opt = EnsembleWeightOptimizer(fams, ["5m", "15m"], mode="family_horizon", seed=8)
    rng = np.random.default_rng(8)
    n = 20_000
    chosen = np.zeros(3)
    expected = np.zeros(3)
    for _ in range(n):
        probs = opt.get_probabilities("15m")
        arm, p = opt.select("15m")
        assert p == pytest.approx(probs[arm], rel=1e-12)
        chosen[fams.index(arm.split(":")[0])] += 1
        expected += [probs[f + ":15m"] for f in fams]
        opt.update(arm.split(":")[0], "15m", float(rng.normal(10 * fams.index(arm[:2]), 30)), p)
    assert np.abs(chosen - expected).max() / n < 0.01
