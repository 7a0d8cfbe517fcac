"""Object APIs: ThompsonSamplerArm, ThompsonSampling, Exp3IXBandit, Hedge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from processor.bandits import (
    BanditInputError,
    Exp3IXBandit,
    Hedge,
    ThompsonSamplerArm,
    ThompsonSampling,
)
from processor.errors import ConfigError, StateError


def test_sampler_arm_updates_and_interval() -> None:
    arm = ThompsonSamplerArm("balanced", prior_alpha=2.0, prior_beta=3.0, seed=1)
    arm.update(5.0)
    arm.update(-1.0)
    arm.update(0.0, success=True)
    assert (arm.alpha, arm.beta) == (4.0, 4.0)
    lo, hi = arm.get_confidence_interval(0.95)
    assert lo == pytest.approx(stats.beta.ppf(0.025, 4, 4), rel=1e-12)
    assert hi == pytest.approx(stats.beta.ppf(0.975, 4, 4), rel=1e-12)
    draws = [arm.sample() for _ in range(2000)]
    assert abs(np.mean(draws) - 0.5) < 0.02
    back = ThompsonSamplerArm.from_dict(json.loads(json.dumps(arm.to_dict())))
    assert back.to_dict() == arm.to_dict()
    with pytest.raises(BanditInputError):
        arm.update(math.nan)
    assert arm.to_dict() == back.to_dict()
    with pytest.raises(ConfigError):
        ThompsonSamplerArm("x", prior_alpha=0.0)


def test_sampler_arm_fractional_success_matches_thompson_sampling() -> None:
    arm = ThompsonSamplerArm("a")
    arm.update(0.0, success=0.3)  # 0.2 added a whole success here (bool(0.3))
    assert (arm.alpha, arm.beta) == pytest.approx((1.3, 1.7), rel=1e-15)
    ts = ThompsonSampling(["a", "b"])
    ts.update("a", success=0.3)
    state = ts.to_dict()["state"]
    assert (1.0 + state["successes"][0], 1.0 + state["failures"][0]) == (arm.alpha, arm.beta)
    arm.update(0.0, success=True)
    assert arm.alpha == pytest.approx(2.3)
    before = arm.to_dict()
    for bad in (1.5, -0.1, math.nan):
        with pytest.raises(BanditInputError):
            arm.update(0.0, success=bad)
    assert arm.to_dict() == before


def test_thompson_sampling_api() -> None:
    ts = ThompsonSampling(["conservative", "balanced", "aggressive"], seed=5)
    for _ in range(30):
        ts.update("aggressive", reward=2.0)
        ts.update("balanced", reward=-1.0)
    p = ts.propensities()
    assert sum(p.values()) == pytest.approx(1.0, abs=1e-12)
    assert ts.select(deterministic=True) == "aggressive"
    picks = [ts.select() for _ in range(200)]
    assert picks.count("aggressive") > 150
    ts.add_arm("experimental")
    assert ts.propensities()["experimental"] > 0
    ts.remove_arm("conservative")
    assert "conservative" not in ts.propensities()
    with pytest.raises(BanditInputError):
        ts.update("conservative", success=True)
    back = ThompsonSampling.from_dict(json.loads(json.dumps(ts.to_dict())))
    assert back.propensities() == ts.propensities()
    assert [back.select() for _ in range(20)] == [ts.select() for _ in range(20)]
    ci = ts.credible_intervals()["aggressive"]
    assert ci[0] < ts.posterior_means()["aggressive"] < ci[1]


def test_thompson_sampling_discount() -> None:
    ts = ThompsonSampling(["a", "b"], discount=0.5, discount_unit_ms=1000)
    ts.update("a", success=True, event_time=0)
    ts.update("a", success=True, event_time=1000)
    state = ts.to_dict()["state"]
    assert state["successes"][0] == pytest.approx(1.5)
    plain = ThompsonSampling(["a", "b"], discount=0.5)
    plain.update("a", success=True)
    plain.update("a", success=True)  # no times: one unit per update
    assert plain.to_dict()["state"]["successes"][0] == pytest.approx(1.5)
    with pytest.raises(ConfigError):
        ThompsonSampling(["a"], discount=1.5)


def test_exp3ix_object_api() -> None:
    names = ["lightgbm", "xgboost", "ridge", "mlp", "lstm"]
    b = Exp3IXBandit(5, names, seed=42)
    assert b.get_probabilities() == pytest.approx(np.full(5, 0.2))
    for _ in range(200):
        arm = b.select_arm()
        b.update(arm, 30.0 if b.arm_names[arm] == "ridge" else -30.0)
    w = b.get_weights_dict()
    assert max(w, key=lambda k: w[k]) == "ridge"
    assert sum(w.values()) == pytest.approx(1.0)
    stats_ = b.get_stats()
    assert stats_["total_steps"] == 200
    assert sum(a["pulls"] for a in stats_["arm_stats"]) == 200
    state = json.loads(json.dumps(b.to_dict()))
    for field in ("n_arms", "arm_names", "gamma", "eta", "eta_auto", "weights", "total_steps"):
        assert field in state
    assert "arm_pulls" in state
    assert "cumulative_rewards" in state
    back = Exp3IXBandit.from_dict(state, seed=1)
    np.testing.assert_array_equal(back.get_probabilities(), b.get_probabilities())
    assert back.to_dict() == b.to_dict()


def test_exp3ix_nan_reward_changes_nothing() -> None:
    b = Exp3IXBandit(3, seed=0)
    b.update(0, 10.0)
    before = b.to_dict()
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            b.update(1, bad)
    assert b.to_dict() == before
    with pytest.raises(BanditInputError):
        b.update(7, 1.0)


def test_exp3ix_huge_rewards_do_not_overflow() -> None:
    b = Exp3IXBandit(3, seed=0)
    for i in range(2000):
        b.update(i % 3, 1e6 if i % 3 == 0 else -1e6, propensity=0.5)
    p = b.get_probabilities()
    assert np.isfinite(p).all()
    assert p.sum() == pytest.approx(1.0)
    assert p[0] > 0.9


def test_exp3ix_arm_management() -> None:
    b = Exp3IXBandit(3, ["a", "b", "c"], eta=0.2, uniform_mix=0.1, seed=3)
    for i in range(50):
        b.update(i % 3, float(i % 3))
    idx = b.add_arm("d")
    assert idx == 3
    assert b.get_probabilities()[idx] == pytest.approx(1 / 4, rel=1e-12)
    idx = b.add_arm("e", initial_weight=0.5)
    assert b.get_weights()[idx] == pytest.approx(0.5, rel=1e-12)
    b.remove_arm("b")
    assert b.arm_names == ["a", "c", "d", "e"]
    assert b.get_arm_index("c") == 1
    assert b.has_arm("e")
    assert not b.has_arm("b")
    with pytest.raises(StateError):
        b.add_arm("a")
    with pytest.raises(StateError):
        b.get_arm_index("b")
    for name in ("a", "c", "d"):
        b.remove_arm(name)
    with pytest.raises(StateError):
        b.remove_arm("e")


def test_exp3ix_legacy_state_with_only_weights() -> None:
    legacy = {
        "n_arms": 3,
        "arm_names": ["x", "y", "z"],
        "gamma": 0.05,
        "eta": 0.042,
        "eta_auto": True,
        "weights": [2.0, 1.0, 1.0],
        "total_steps": 0,
        "arm_pulls": [0, 0, 0],
        "cumulative_rewards": [0.0, 0.0, 0.0],
    }
    b = Exp3IXBandit.from_dict(legacy)
    np.testing.assert_allclose(b.get_weights(), [0.5, 0.25, 0.25], rtol=1e-12)
    assert b.keyed.gamma == 0.05


def test_exp3ix_decision_time_propensity_is_used() -> None:
    a = Exp3IXBandit(2, reward_range=(0.0, 1.0))
    b = Exp3IXBandit(2, reward_range=(0.0, 1.0))
    a.update(0, 0.0, propensity=0.9)
    b.update(0, 0.0, propensity=0.1)
    assert a.keyed.loss_estimates[0, 0] < b.keyed.loss_estimates[0, 0]


def test_hedge_full_information() -> None:
    h = Hedge(3, ["a", "b", "c"], reward_range=(0.0, 1.0))
    for _ in range(300):
        h.update({"a": 0.2, "b": 0.9, "c": 0.5})
    w = h.get_weights_dict()
    assert w["b"] > 0.8
    before = h.keyed.loss_estimates[0].copy()
    h.update([np.nan, 1.0, np.nan])
    after = h.keyed.loss_estimates[0]
    assert after[0] == before[0]
    assert after[2] == before[2]
    assert after[1] == before[1]  # reward 1.0 at hi → loss 0
    with pytest.raises(BanditInputError):
        h.update({"zzz": 1.0})
    with pytest.raises(BanditInputError):
        h.update([1.0, np.inf, 0.0])
    back = Hedge.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.to_dict() == h.to_dict()
