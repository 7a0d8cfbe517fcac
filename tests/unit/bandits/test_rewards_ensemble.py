"""Trade rewards in bps and the ensemble weight optimizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from processor.bandits import (
    BanditInputError,
    EnsembleWeightOptimizer,
    RewardTracker,
    arm_name,
    trade_reward_bps,
)
from processor.errors import ConfigError, StateError


def test_original_example_holds() -> None:
    t = RewardTracker()
    t.record_trade("lightgbm", entry_price=150.00, quantity=100, timestamp=0.0)
    reward = t.close_trade("lightgbm", exit_price=150.50, fees=0.50, slippage=0.20)
    assert round(reward, 2) == 32.87
    assert reward == pytest.approx((50 - 0.70) / 15000 * 10000, rel=1e-15)
    assert t.get_stats()["lightgbm"]["trades"] == 1


def test_tracker_fifo_short_and_errors() -> None:
    t = RewardTracker()
    t.record_trade("m", 100.0, 10, 0.0, side=-1)
    t.record_trade("m", 200.0, 10, 1.0)
    assert t.close_trade("m", 99.0) == pytest.approx(100.0)  # short gains 1%
    assert t.close_trade("m", 202.0) == pytest.approx(100.0)
    with pytest.raises(StateError):
        t.close_trade("m", 1.0)
    with pytest.raises(BanditInputError):
        t.record_trade("m", -1.0, 10, 0.0)
    with pytest.raises(BanditInputError):
        t.record_trade("m", 1.0, 10, 0.0, side=2)


def test_vectorized_reward() -> None:
    side = np.array([1, -1, 1, 1])
    entry = np.array([150.0, 100.0, 10.0, 0.0])
    exit_ = np.array([150.5, 99.0, 9.0, 1.0])
    qty = np.array([100.0, 10.0, 5.0, 1.0])
    fees = np.array([0.5, 0.0, 0.1, 0.0])
    slip = np.array([0.2, 0.0, 0.0, 0.0])
    got = trade_reward_bps(side, entry, exit_, qty, fees, slip)
    expected = (
        (side[:3] * (exit_[:3] - entry[:3]) * qty[:3] - fees[:3] - slip[:3])
        / (entry[:3] * qty[:3])
        * 1e4
    )
    np.testing.assert_allclose(got[:3], expected, rtol=1e-15)
    assert np.isnan(got[3])  # zero notional is flagged, not raised


def test_arm_names() -> None:
    assert arm_name("family", "lightgbm", "15m") == "lightgbm"
    assert arm_name("horizon", "lightgbm", "15m") == "15m"
    assert arm_name("family_horizon", "lightgbm", "15m") == "lightgbm:15m"
    with pytest.raises(ConfigError):
        arm_name("nope", "a", "b")


@pytest.mark.parametrize("mode", ["family", "horizon", "family_horizon"])
def test_blending_weights_sum_to_one_and_warm_start(mode: str) -> None:
    opt = EnsembleWeightOptimizer(
        ["lightgbm", "xgboost", "ridge"],
        ["5m", "15m"],
        mode=mode,
        blend_alpha=0.3,
        warm_start_steps=20,
        reward_range=(-100.0, 100.0),
        seed=1,
    )
    base = opt.get_blending_weights("15m")
    assert sum(base.values()) == pytest.approx(1.0)
    for _ in range(20):
        arm, p = opt.select("15m")
        fam = arm.split(":")[0] if mode != "horizon" else "lightgbm"
        good = arm.startswith("ridge") or arm == "15m"
        opt.update(fam, "15m", 80.0 if good else -80.0, propensity=p)
    w = opt.get_blending_weights("15m")
    assert sum(w.values()) == pytest.approx(1.0)
    bandit = opt.get_bandit_weights("15m")
    base_w = opt.get_base_weights("15m")
    for k in w:
        assert w[k] == pytest.approx(0.7 * base_w[k] + 0.3 * bandit[k])
    if mode == "family":
        assert opt.get_blending_weights("5m") == opt.get_base_weights("5m")  # own learner
    back = EnsembleWeightOptimizer.from_dict(json.loads(json.dumps(opt.to_dict())))
    assert back.get_blending_weights("15m") == w


def test_full_information_and_contributions() -> None:
    a = EnsembleWeightOptimizer(["f1", "f2"], ["1h"], mode="family_horizon", warm_start_steps=0)
    b = EnsembleWeightOptimizer(["f1", "f2"], ["1h"], mode="family_horizon", warm_start_steps=0)
    a.update_contributions("1h", 40.0, {"f1": 0.75, "f2": 0.25})
    b.update_full("1h", {"f1:1h": 30.0, "f2": 10.0})
    assert a.bandit.to_dict() == b.bandit.to_dict()
    w = a.get_bandit_weights("1h")
    assert w["f1:1h"] > w["f2:1h"]
    with pytest.raises(BanditInputError):
        a.update_full("1h", {"f3": 1.0})
    with pytest.raises(BanditInputError):
        a.update_full("2h", {"f1": 1.0})


def test_base_weights_validation() -> None:
    opt = EnsembleWeightOptimizer(
        ["a", "b"], ["h"], base_weights={"a": 3.0, "b": 1.0}, warm_start_steps=5
    )
    assert opt.get_blending_weights("h") == {"a": 0.75, "b": 0.25}
    with pytest.raises(ConfigError):
        opt.set_base_weights({"c": 1.0})
    with pytest.raises(ConfigError):
        EnsembleWeightOptimizer(["a"], ["h"], blend_alpha=2.0)
