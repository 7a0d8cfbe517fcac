"""The synthetic market: record shapes, determinism, closed loop and hidden truths."""

from __future__ import annotations

import numpy as np
import pytest

from processor.errors import ConfigError
from processor.policy.bidding import BiddingConfig
from processor.policy.simulator import DEFAULT_ARM_MULTIPLIERS, MarketSimulator

REQUEST_KEYS = {
    "request_id",
    "campaign_id",
    "audience",
    "event_time",
    "base_bid",
    "base_budget",
    "daily_budget",
    "spent_today",
    "target_cpa",
    "utc_offset_minutes",
    "context",
}
OUTCOME_KEYS = {
    "request_id",
    "campaign_id",
    "arm",
    "event_time",
    "won",
    "clicks",
    "conversions",
    "spend",
    "revenue",
    "reward",
    "success",
    "propensity",
    "policy_version",
    "budget",
    "target_cpa",
}
TRADE_KEYS = {
    "trade_id",
    "ensemble_id",
    "symbol",
    "horizon",
    "side",
    "entry_price",
    "exit_price",
    "quantity",
    "fees",
    "slippage",
    "event_time",
    "family",
    "arm",
    "propensity",
    "model_rewards",
    "model_contributions",
}


def _decision(req: dict[str, object], arm: str, mode: str = "exploit") -> dict[str, object]:
    bid_m, bud_m = DEFAULT_ARM_MULTIPLIERS[arm]
    return {
        "arm": arm,
        "bid_amount": float(req["base_bid"]) * bid_m,  # type: ignore[arg-type]
        "budget": float(req["base_budget"]) * bud_m,  # type: ignore[arg-type]
        "mode": mode,
        "propensity": 0.25,
        "policy_version": 3,
    }


def test_defaults_match_the_bidding_config() -> None:
    cfg = BiddingConfig()
    assert {n: (a.bid_multiplier, a.budget_multiplier) for n, a in cfg.arms.items()} == (
        DEFAULT_ARM_MULTIPLIERS
    )


def test_request_and_outcome_shapes_and_types() -> None:
    sim = MarketSimulator(3)
    reqs = sim.bid_requests(200, start_ms=1_000, rate_per_s=100)
    assert all(set(r) == REQUEST_KEYS for r in reqs)
    assert reqs[1]["event_time"] == 1_010
    assert len({r["request_id"] for r in reqs + sim.bid_requests(10)}) == 210
    assert all(isinstance(r["event_time"], int) and isinstance(r["context"], dict) for r in reqs)
    assert {type(r["target_cpa"]) for r in reqs} <= {float, type(None)}
    outs = sim.outcomes_for([_decision(r, "balanced") for r in reqs], reqs)
    assert all(o is not None and set(o) == OUTCOME_KEYS for o in outs)
    assert all(o["spend"] == 0 and o["clicks"] == 0 for o in outs if o and not o["won"])
    assert any(o["conversions"] > 0 for o in outs if o)
    assert all(o["conversions"] <= o["clicks"] for o in outs if o)
    assert sim.outcome_for(_decision(reqs[0], "balanced", mode="blocked"), reqs[0]) is None


def test_seeded_and_order_independent() -> None:
    a, b = MarketSimulator(5), MarketSimulator(5)
    ra, rb = a.bid_requests(300), b.bid_requests(300)
    assert ra == rb
    da = [_decision(r, "aggressive") for r in ra]
    forward = a.outcomes_for(da, ra)
    backward = b.outcomes_for(da[::-1], ra[::-1])[::-1]
    assert forward == backward
    assert MarketSimulator(6).bid_requests(5) != ra[:5]


def test_closed_loop_outcome_depends_on_the_decision() -> None:
    sim = MarketSimulator(9, n_campaigns=5)
    reqs = sim.bid_requests(4000)
    low = sim.outcomes_for([_decision(r, "conservative") for r in reqs], reqs)
    high = sim.outcomes_for([_decision(r, "experimental") for r in reqs], reqs)
    win_low = np.mean([o["won"] for o in low if o])
    win_high = np.mean([o["won"] for o in high if o])
    assert win_high > win_low + 0.05
    spend_high = np.mean([o["spend"] for o in high if o])
    spend_low = np.mean([o["spend"] for o in low if o])
    assert spend_high > spend_low


def test_truths_match_simulated_averages() -> None:
    sim = MarketSimulator(4, n_campaigns=3)
    truth = sim.expected_reward("profit")
    assert truth.shape == (3, 4)
    assert set(sim.best_arms().values()) <= set(sim.arm_names)
    reqs = sim.bid_requests(30_000, rate_per_s=0.3)  # spans more than a day: every hour
    for arm_i, arm in enumerate(sim.arm_names):
        outs = sim.outcomes_for([_decision(r, arm) for r in reqs], reqs)
        for c_i, cid in enumerate(sim.campaign_ids):
            prof = [o["revenue"] - o["spend"] for o in outs if o and o["campaign_id"] == cid]
            mean, se = np.mean(prof), np.std(prof) / np.sqrt(len(prof))
            # Over-delivery (1% of capped placements) is left out of the truth: allow 5 SE.
            assert abs(mean - truth[c_i, arm_i]) < 5 * se + 0.02 * abs(truth[c_i, arm_i])


def test_regime_switch_flips_arm_quality() -> None:
    sim = MarketSimulator(4, scenario="regime_switch", switch_ms=1_000)
    before = sim.expected_reward("conversions", at_ms=0)
    after = sim.expected_reward("conversions", at_ms=2_000)
    assert not np.allclose(before, after)
    stable = MarketSimulator(4)
    assert np.allclose(
        stable.expected_reward("conversions", 0), stable.expected_reward("conversions", 2_000)
    )
    with pytest.raises(ConfigError):
        MarketSimulator(1, scenario="chaos")


@pytest.mark.parametrize("mode", ["family", "horizon", "family_horizon"])
def test_trade_outcomes_bandit_feedback(mode: str) -> None:
    sim = MarketSimulator(2)
    arms = sim.trade_arms(mode)
    probs = np.linspace(1, 2, len(arms))
    trades = sim.trade_outcomes(3000, feedback="bandit", arm_mode=mode, probabilities=probs)
    assert all(set(t) == TRADE_KEYS for t in trades)
    expected = probs / probs.sum()
    counts = np.array([sum(t["arm"] == a for t in trades) for a in arms]) / len(trades)
    assert np.abs(counts - expected).max() < 0.03
    assert all(t["propensity"] == pytest.approx(expected[arms.index(t["arm"])]) for t in trades)
    if mode == "family_horizon":
        assert all(t["arm"] == f"{t['family']}:{t['horizon']}" for t in trades)
        means = sim.trade_means(mode)
        got = {a: [] for a in arms}
        for t in trades:
            notional = t["entry_price"] * t["quantity"]
            pnl = t["side"] * (t["exit_price"] - t["entry_price"]) * t["quantity"]
            got[t["arm"]].append((pnl - t["fees"] - t["slippage"]) / notional * 1e4)
        best = max(means, key=lambda a: means[a])
        worst = min(means, key=lambda a: means[a])
        assert np.mean(got[best]) > np.mean(got[worst])


def test_trade_outcomes_full_and_contributions() -> None:
    sim = MarketSimulator(2)
    full = sim.trade_outcomes(5, feedback="full")
    assert set(full[0]["model_rewards"]) == set(sim.model_arms)
    assert full[0]["arm"] is None
    assert full[0]["propensity"] is None
    contrib = sim.trade_outcomes(5, feedback="contributions", probabilities={"lstm:5m": 1.0})
    assert contrib[0]["model_contributions"] == {
        "lightgbm": 0.0,
        "xgboost": 0.0,
        "ridge": 0.0,
        "mlp": 0.0,
        "lstm": 1.0,
    }
    assert contrib[0]["trade_id"] != full[0]["trade_id"]
    with pytest.raises(ConfigError):
        sim.trade_outcomes(1, feedback="partial")
