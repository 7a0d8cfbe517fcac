"""The synthetic market: record shapes, determinism, closed loop and hidden truths."""

from __future__ import annotations

import numpy as np
import pytest

from processor.errors import ConfigError
from processor.policy.bidding import BiddingConfig
from processor.policy.simulator import DEFAULT_ARM_MULTIPLIERS, CampaignSpec, MarketSimulator

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
    assert {type(r["target_cpa"]) for r in reqs} == {float, type(None)}
    outs = sim.outcomes_for([_decision(r, "balanced") for r in reqs], reqs)
    assert all(o is not None and set(o) == OUTCOME_KEYS for o in outs)
    assert all(o["spend"] == o["clicks"] == o["conversions"] == 0 for o in outs if not o["won"])
    assert all(0 < o["spend"] <= o["budget"] * 1.15 for o in outs if o["won"])
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


def test_second_price_auction_rates_and_truths() -> None:
    sim = MarketSimulator(4, campaigns=[CampaignSpec(cvr=0.02, ctr=0.01, win_rate=0.4)])
    reqs = sim.bid_requests(60_000, rate_per_s=10.0)
    truth = {m: sim.expected_reward(m)[0] for m in ("wins", "spend", "profit", "conversions")}
    by_arm = {}
    for i, arm in enumerate(sim.arm_names):
        outs = [o for o in sim.outcomes_for([_decision(r, arm) for r in reqs], reqs) if o]
        won = np.array([o["won"] for o in outs])
        spend = np.array([o["spend"] for o in outs])
        bids = np.array([r["base_bid"] for r in reqs]) * DEFAULT_ARM_MULTIPLIERS[arm][0]
        assert np.all(spend[won] <= bids[won] * (1 + 0.15))  # second price: at most the bid
        profit = np.array([o["revenue"] - o["spend"] for o in outs])
        conv = np.array([o["conversions"] for o in outs])
        n = len(outs)
        assert abs(won.mean() - truth["wins"][i]) < 4 * np.sqrt(truth["wins"][i] / n)
        assert abs(spend.mean() - truth["spend"][i]) < 0.02 * truth["spend"][i]
        assert abs(conv.mean() - truth["conversions"][i]) < 5 * np.sqrt(conv.mean() / n)
        assert abs(profit.mean() - truth["profit"][i]) < 5 * profit.std() / np.sqrt(n)
        by_arm[arm] = won.mean()
    wins = [by_arm[a] for a in ("conservative", "balanced", "aggressive", "experimental")]
    assert wins == sorted(wins)  # the win rate rises with the bid
    assert truth["wins"][1] == pytest.approx(0.4)  # the base bid wins its win_rate
    conv_per_won = sum(o["conversions"] for o in outs) / max(1, int(won.sum()))
    assert 0.015 < conv_per_won < 0.025


def test_on_target_campaign_is_on_target() -> None:
    spec = CampaignSpec(cvr=0.01, cpa_ratio=1.0, roas=1.5)
    sim = MarketSimulator(2, campaigns=[spec])
    reqs = sim.bid_requests(100_000, rate_per_s=10.0)
    outs = [o for o in sim.outcomes_for([_decision(r, "balanced") for r in reqs], reqs) if o]
    spend = sum(o["spend"] for o in outs)
    conv = sum(o["conversions"] for o in outs)
    revenue = sum(o["revenue"] for o in outs)
    target = reqs[0]["target_cpa"]
    assert 0.85 < spend / conv / target < 1.15
    assert 1.3 < revenue / spend < 1.7
    bad = MarketSimulator(2, campaigns=[CampaignSpec(cvr=0.01, cpa_ratio=5.0, roas=1.5)])
    assert bad.target_cpa[0] == pytest.approx(sim.target_cpa[0] / 5)


def test_closed_loop_spend_reaches_spent_today() -> None:
    sim = MarketSimulator(9, campaigns=[CampaignSpec(budget_ratio=1.0)])
    first = sim.bid_requests(500, start_ms=0, rate_per_s=1.0)
    assert {r["spent_today"] for r in first} == {0.0}
    outs = sim.outcomes_for([_decision(r, "balanced") for r in first], first)
    spent = sum(o["spend"] for o in outs if o)
    nxt = sim.bid_requests(1, start_ms=600_000, rate_per_s=1.0)[0]
    assert nxt["spent_today"] == pytest.approx(spent)
    assert sim.spent_today("cmp-0000", 600_000) == pytest.approx(spent)
    # a new local day starts from zero
    assert sim.bid_requests(1, start_ms=86_400_000, rate_per_s=1.0)[0]["spent_today"] == 0.0
    # the budget is the expected unconstrained spend of a day at the first call's rate
    assert nxt["daily_budget"] == pytest.approx(sim.expected_daily_spend(86_400.0)[0])


def test_diurnal_traffic_follows_the_local_hour() -> None:
    spec = CampaignSpec(utc_offset_minutes=120)
    sim = MarketSimulator(1, campaigns=[spec], traffic="diurnal")
    reqs = sim.bid_requests(86_400, start_ms=0, rate_per_s=1.0)
    hours = (np.array([r["event_time"] for r in reqs]) // 3_600_000 + 2) % 24
    counts = np.bincount(hours, minlength=24)
    assert counts[15] > 3 * counts[3]  # peak 15:00 local, trough 03:00
    assert abs(reqs[-1]["event_time"] - 86_400_000) < 3_600_000


def test_late_conversions_are_restated_outcomes_of_the_same_request() -> None:
    sim = MarketSimulator(3, campaigns=[CampaignSpec(cvr=0.03)], conversion_delay_ms=600_000)
    reqs = sim.bid_requests(20_000, rate_per_s=10.0)
    outs = [o for o in sim.outcomes_for([_decision(r, "experimental") for r in reqs], reqs) if o]
    assert sum(o["conversions"] for o in outs) == 0
    assert sim.restatements(reqs[0]["event_time"]) == []
    late = sim.restatements(10**15)
    assert late and all(o["conversions"] == 1 and o["revenue"] > 0 for o in late)
    first = {o["request_id"]: o for o in outs}
    for o in late:
        before = first[o["request_id"]]
        assert o["event_time"] > before["event_time"]
        assert (o["spend"], o["won"], o["arm"]) == (before["spend"], True, before["arm"])
    assert [o["event_time"] for o in late] == sorted(o["event_time"] for o in late)
    again = MarketSimulator(3, campaigns=[CampaignSpec(cvr=0.03)])
    reqs2 = again.bid_requests(20_000, rate_per_s=10.0)
    outs2 = again.outcomes_for([_decision(r, "experimental") for r in reqs2], reqs2)
    assert sum(o["conversions"] for o in outs2 if o) == len(late)  # same conversions, on time


def test_regime_switch_moves_prices() -> None:
    sim = MarketSimulator(4, scenario="regime_switch", switch_ms=1_000)
    before = sim.expected_reward("profit", at_ms=0)
    after = sim.expected_reward("profit", at_ms=2_000)
    assert not np.allclose(before, after)
    stable = MarketSimulator(4)
    assert np.allclose(stable.expected_reward("spend", 0), stable.expected_reward("spend", 2_000))
    with pytest.raises(ConfigError):
        MarketSimulator(1, scenario="chaos")
    with pytest.raises(ConfigError):
        MarketSimulator(1, traffic="bursty")


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
