"""Value rewards, signed outcomes (the reward join's contract) and exact retraction."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.bandits.base import BanditInputError
from processor.policy.bidding import (
    BiddingConfig,
    BiddingState,
    BidPolicy,
    Contribution,
    OutcomeBatch,
    RequestBatch,
)
from processor.policy.safety import SafetyConstraints

HOUR = 3_600_000
TWO_ARMS = {"low": (0.9, 1.0), "high": (2.0, 1.0)}


def outcome(i: int, arm: str, **kw: Any) -> dict[str, Any]:
    o = {
        "request_id": f"o-{i}",
        "campaign_id": "c",
        "arm": arm,
        "event_time": 1_000 * i,
        "won": False,
        "clicks": 0,
        "conversions": 0,
        "spend": 0.0,
        "revenue": 0.0,
        "reward": None,
        "success": None,
        "propensity": 0.5,
        "policy_version": -1,
        "budget": 10.0,
        "target_cpa": None,
    }
    o.update(kw)
    return o


def request(i: int) -> dict[str, Any]:
    return {
        "request_id": f"r-{i}",
        "campaign_id": "c",
        "audience": "a",
        "event_time": 10**9,
        "base_bid": 1.0,
        "base_budget": 10.0,
        "daily_budget": 1e9,
        "spent_today": 0.0,
        "target_cpa": None,
        "utc_offset_minutes": 0,
        "context": {},
    }


def market(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``high`` wins 80% of auctions at 1.0 each, ``low`` 30% at 0.5; 1% of won impressions
    convert, worth 60. Profit per outcome: high 0.8·(0.6 − 1.0) = −0.32, low +0.03; chance of
    a profitable outcome (a conversion): high 0.8%, low 0.3%."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arm = "high" if i % 2 else "low"
        won = rng.random() < (0.8 if arm == "high" else 0.3)
        conv = bool(won and rng.random() < 0.01)
        spend = (1.0 if arm == "high" else 0.5) if won else 0.0
        out.append(
            outcome(i, arm, won=won, conversions=int(conv), spend=spend, revenue=60.0 * conv)
        )
    return out


def test_the_arm_that_wins_more_at_a_loss_loses_to_the_one_that_wins_less_at_a_profit() -> None:
    outs = OutcomeBatch.from_records(market(20_000))
    reqs = RequestBatch.from_records([request(i) for i in range(2_000)])
    picks = {}
    for objective in ("value", "binary"):
        policy = BidPolicy(
            BiddingConfig(arms=TWO_ARMS, conservative_arm="low", objective=objective, seed=3)
        )
        state = policy.new_state()
        policy.observe(outs, state)
        d = policy.decide(reqs, state, decided_at_ms=0)
        picks[objective] = float(np.mean(d.arm == "low"))
        # the logged propensity is the exact probability of the played arm
        probs = state.propensities(state.rows(["c"]))[0]
        col = {a: i for i, a in enumerate(state.thompson.arm_names)}
        expected = np.array([probs[col[a]] for a in d.arm])
        np.testing.assert_array_equal(d.propensity, expected)
    assert picks["value"] > 0.95
    assert picks["binary"] < 0.05  # sign of profit: more conversions wins


def test_roi_rewards_use_the_value_posterior() -> None:
    policy = BidPolicy(BiddingConfig(arms=TWO_ARMS, conservative_arm="low", reward="roi"))
    assert policy.config.value_objective
    state = policy.new_state()
    res = policy.observe(OutcomeBatch.from_records(market(20_000)), state)
    assert res.reward[~np.isfinite(res.reward)].size == 0
    mean = state.value.posterior_mean(state.rows(["c"]))[0]
    col = {a: i for i, a in enumerate(state.thompson.arm_names)}
    assert mean[col["low"]] > mean[col["high"]]


def _everything(state: BiddingState, key: str = "c") -> str:
    return json.dumps(state.get_key_state(key), sort_keys=True)


def _close(a: BiddingState, b: BiddingState, key: str = "c") -> None:
    sa, sb = a.get_key_state(key), b.get_key_state(key)
    for part in ("thompson", "value", "safety"):
        for k, v in sa[part].items():
            if k in ("version", "arm_names", "emergency", "manual", "evidence"):
                continue  # flags are re-evaluated from the statistics, with hysteresis
            np.testing.assert_allclose(
                np.asarray(v, dtype=float),
                np.asarray(sb[part][k], dtype=float),
                rtol=1e-9,
                atol=1e-7,
                err_msg=f"{part}.{k}",
            )


OUTS = st.lists(
    st.tuples(
        st.sampled_from(["low", "high"]),
        st.booleans(),
        st.integers(0, 2),
        st.floats(0, 5, allow_nan=False),
        st.floats(0, 100, allow_nan=False),
        st.integers(0, 6 * HOUR),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=50, deadline=None)
@given(first=OUTS, second=OUTS, discount=st.sampled_from([1.0, 0.8]))
def test_observe_then_retract_restores_every_statistic(
    first: list[tuple[str, bool, int, float, float, int]],
    second: list[tuple[str, bool, int, float, float, int]],
    discount: float,
) -> None:
    def recs(evs: list[tuple[str, bool, int, float, float, int]], off: int) -> OutcomeBatch:
        return OutcomeBatch.from_records(
            [
                outcome(
                    off + i,
                    a,
                    won=w,
                    conversions=c,
                    spend=s,
                    revenue=r,
                    event_time=t,
                    target_cpa=20.0,
                )
                for i, (a, w, c, s, r, t) in enumerate(evs)
            ]
        )

    cfg = BiddingConfig(arms=TWO_ARMS, conservative_arm="low", discount=discount)
    policy = BidPolicy(cfg, SafetyConstraints(evidence_half_life_ms=2 * HOUR))
    only, both = policy.new_state(), policy.new_state()
    a, b = recs(first, 0), recs(second, 1000)
    policy.observe(a, only)
    policy.observe(a, both)
    policy.observe(b, both)
    policy.observe(b, both, weight=-np.ones(len(b)))
    # the second batch may have moved the clock: compare "only" as of the same clock
    clock = int(both.thompson.last_event_ms[0])
    policy.observe(recs([("low", False, 0, 0.0, 0.0, clock)], 5000), only)
    policy.observe(recs([("low", False, 0, 0.0, 0.0, clock)], 5000), both)
    _close(only, both)
    if discount == 1.0:  # counts are exact
        ka, kb = only.get_key_state("c"), both.get_key_state("c")
        assert ka["thompson"]["successes"] == kb["thompson"]["successes"]
        assert ka["thompson"]["failures"] == kb["thompson"]["failures"]
        assert ka["value"]["count"] == kb["value"]["count"]


def test_a_restated_outcome_replaces_the_earlier_one_exactly() -> None:
    policy = BidPolicy(BiddingConfig(arms=TWO_ARMS, conservative_arm="low"))
    failure = outcome(1, "high", won=True, spend=1.0, event_time=5 * HOUR, target_cpa=30.0)
    success = {**failure, "conversions": 1, "revenue": 60.0}
    restated, direct = policy.new_state(), policy.new_state()
    policy.observe(OutcomeBatch.from_records(market(200)), restated)
    policy.observe(OutcomeBatch.from_records(market(200)), direct)
    policy.observe(OutcomeBatch.from_records([failure]), restated)
    res = policy.observe(
        OutcomeBatch.from_records([failure, success]), restated, weight=np.array([-1.0, 1.0])
    )
    assert res.success.tolist() == [False, True]
    policy.observe(OutcomeBatch.from_records([success]), direct)
    _close(restated, direct)
    rs, ds = restated.get_key_state("c"), direct.get_key_state("c")
    assert rs["thompson"]["successes"] == ds["thompson"]["successes"]
    assert rs["thompson"]["failures"] == ds["thompson"]["failures"]
    assert rs["value"]["count"] == ds["value"]["count"]
    assert rs["thompson"]["version"] == ds["thompson"]["version"] + 2  # every event counts


def test_contribution_retracts_a_bernoulli_success_without_redrawing_it() -> None:
    policy = BidPolicy(BiddingConfig(reward="roi", success_rule="bernoulli", objective="binary"))
    recs = [outcome(i, "balanced", reward=0.5, won=True, spend=1.0) for i in range(200)]
    batch = OutcomeBatch.from_records(recs)
    state = policy.new_state()
    contribution = policy.contribution(batch)
    assert 60 < contribution.success.sum() < 140  # drawn from the request id's hash stream
    stored = {
        "reward": contribution.reward.astype("<f8"),
        "spend": contribution.spend.astype("<f8"),
        "revenue": contribution.revenue.astype("<f8"),
        "clicks": contribution.clicks.astype("<u2"),
        "conversions": contribution.conversions.astype("<u2"),
        "flags": contribution.flags(),
    }
    assert sum(v.dtype.itemsize for v in stored.values()) == 29
    policy.observe(batch, state)
    back = Contribution.from_columns(**stored).outcomes(
        request_id=[f"other-{i}" for i in range(200)],  # a redraw would see other uniforms
        campaign_id=batch.campaign_id,
        arm=batch.arm,
        event_time=batch.event_time,
    )
    res = policy.observe(back, state, weight=-np.ones(200))
    np.testing.assert_array_equal(res.success, contribution.success)
    after = json.loads(_everything(state))
    t = after["thompson"]
    assert sum(t["successes"]) == 0 and sum(t["failures"]) == 0  # counts: exact
    assert after["value"]["count"] == [0.0] * 4
    assert after["safety"]["outcomes"] == pytest.approx(0.0, abs=1e-9)  # decayed sums: rounding


def test_bad_weights_change_nothing() -> None:
    policy = BidPolicy(BiddingConfig())
    state = policy.new_state()
    batch = OutcomeBatch.from_records([outcome(0, "balanced")])
    policy.observe(batch, state)
    before = _everything(state)
    for bad in (np.array([np.nan]), np.array([1.0, 1.0]), np.array([np.inf])):
        with pytest.raises(BanditInputError):
            policy.observe(batch, state, weight=bad)
    assert _everything(state) == before
