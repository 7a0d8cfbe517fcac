"""BidPolicy.decide / observe semantics, guardrails, state and validation.

Most tests here pin the Beta-Bernoulli path (``objective="binary"``, explicit success flags);
the value objective, evidence and retractions have their own modules.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from processor.codec.serde import load_schema_json
from processor.errors import ConfigError, StateError
from processor.policy.bidding import (
    GUARDRAIL_NAMES,
    MODES,
    ArmSpec,
    BiddingConfig,
    BiddingState,
    BidPolicy,
    DecisionBatch,
    OutcomeBatch,
    RequestBatch,
    validate_outcomes,
    validate_requests,
)
from processor.policy.safety import SafetyConstraints

HOUR = 3_600_000


def req(i: int = 0, **kw: Any) -> dict[str, Any]:
    r = {
        "request_id": f"r-{i}",
        "campaign_id": "c-1",
        "audience": "sports",
        "event_time": 12 * HOUR,
        "base_bid": 1.0,
        "base_budget": 10.0,
        "daily_budget": 1000.0,
        "spent_today": 0.0,
        "target_cpa": None,
        "utc_offset_minutes": 0,
        "context": {},
    }
    r.update(kw)
    return r


def out(i: int = 0, **kw: Any) -> dict[str, Any]:
    o = {
        "request_id": f"o-{i}",
        "campaign_id": "c-1",
        "arm": "balanced",
        "event_time": 12 * HOUR,
        "won": True,
        "clicks": 3,
        "conversions": 1,
        "spend": 5.0,
        "revenue": 20.0,
        "reward": None,
        "success": None,
        "propensity": 0.25,
        "policy_version": 0,
        "budget": 10.0,
        "target_cpa": None,
    }
    o.update(kw)
    return o


def decide(
    policy: BidPolicy, state: BiddingState, reqs: list[dict[str, Any]], **kw: Any
) -> DecisionBatch:
    return policy.decide(RequestBatch.from_records(reqs), state, decided_at_ms=5, **kw)


def observe(policy: BidPolicy, state: BiddingState, outs: list[dict[str, Any]]) -> Any:
    return policy.observe(OutcomeBatch.from_records(outs), state)


def setup(safety: SafetyConstraints | None = None, **cfg: Any) -> tuple[BidPolicy, BiddingState]:
    config = BiddingConfig(seed=11, **{"objective": "binary", **cfg})
    return BidPolicy(config, safety or SafetyConstraints()), BiddingState(config)


def teach(policy: BidPolicy, state: BiddingState, campaign: str = "c-1", n: int = 40) -> None:
    """Make 'aggressive' clearly best for ``campaign``."""
    outs = [
        out(i, campaign_id=campaign, arm=arm, success=(arm == "aggressive") or (i % 4 == 0))
        for i in range(n)
        for arm in ("conservative", "balanced", "aggressive", "experimental")
    ]
    observe(policy, state, outs)


# -- config -----------------------------------------------------------------------------


def test_config_defaults_and_from_dict() -> None:
    c = BiddingConfig()
    assert c.arm_names == ("conservative", "balanced", "aggressive", "experimental")
    assert c.arms["conservative"] == ArmSpec(0.8, 0.8)
    d = BiddingConfig.from_dict(
        {
            "arms": {"low": [0.5, 0.5], "high": {"bid_multiplier": 2, "budget_multiplier": 1.1}},
            "conservative_arm": "low",
            "reward": "conversions",
            "seed": 3,
        }
    )
    assert d.arms["high"] == ArmSpec(2.0, 1.1)
    for bad in (
        {"armz": {}},
        {"conservative_arm": "nope"},
        {"reward": "likes"},
        {"success_rule": "sometimes"},
        {"explore_bid_jitter": 1.5},
        {"arms": {"a": [0.0, 1.0]}, "conservative_arm": "a"},
        {"arms": {"a": {"bid_multiplier": 1.0}}, "conservative_arm": "a"},
        {"discount": 0.0},
    ):
        with pytest.raises(ConfigError):
            BiddingConfig.from_dict(bad)


# -- decide semantics ---------------------------------------------------------------------


def test_decision_fields_modes_and_confidence() -> None:
    policy, state = setup()
    teach(policy, state, n=4)
    d = decide(policy, state, [req(i) for i in range(400)])
    recs = d.to_records()
    assert set(recs[0]) == {f["name"] for f in load_schema_json("BidDecision")["fields"]}
    assert {r["mode"] for r in recs} == {"explore", "exploit"}
    assert np.all((d.propensity > 0) & (d.propensity <= 1))
    # Sampled decisions: propensity = confidence = P(played arm is best).
    np.testing.assert_array_equal(d.propensity, d.confidence)
    exploit = d.mode == MODES.index("exploit")
    assert set(d.arm[exploit].tolist()) == {"aggressive"}
    assert d.policy_version.tolist() == [16] * 400
    assert recs[0]["decided_at"] == 5
    assert recs[0]["event_time"] == 12 * HOUR
    # Thompson matches probabilities: the best arm is played about as often as its propensity.
    share = float(np.mean(d.arm == "aggressive"))
    p_best = float(d.confidence[d.arm == "aggressive"][0])
    assert abs(share - p_best) < 0.08


def test_deterministic_exploits_best_mean_without_jitter() -> None:
    policy, state = setup()
    teach(policy, state)
    d = decide(policy, state, [req(i) for i in range(50)], deterministic=True)
    assert set(d.arm.tolist()) == {"aggressive"}
    assert set(d.mode_names().tolist()) == {"exploit"}
    assert np.all(d.propensity == 1.0)
    assert np.all(d.confidence < 1.0)
    np.testing.assert_allclose(d.bid_amount, 1.2)
    np.testing.assert_allclose(d.budget, 11.0)


def test_same_state_and_request_same_decision_and_seed_matters() -> None:
    policy, state = setup()
    reqs = [req(i) for i in range(200)]
    a = decide(policy, state, reqs).to_records()
    b = decide(policy, state, list(reversed(reqs))).to_records()
    assert a == list(reversed(b))
    other = BidPolicy(BiddingConfig(seed=12), SafetyConstraints())
    c = decide(other, BiddingState(BiddingConfig(seed=12)), reqs)
    assert c.arm.tolist() != [r["arm"] for r in a]


def test_exploring_decisions_get_bounded_jitter() -> None:
    policy, state = setup()
    d = decide(policy, state, [req(i, base_budget=100.0, daily_budget=1e6) for i in range(500)])
    mult = {n: (s.bid_multiplier, s.budget_multiplier) for n, s in policy.config.arms.items()}
    nominal_bid = np.array([mult[a][0] for a in d.arm])
    nominal_budget = 100.0 * np.array([mult[a][1] for a in d.arm])
    explore = d.mode == MODES.index("explore")
    exploit = ~explore
    assert explore.sum() > 100
    assert exploit.sum() > 50
    rb = d.bid_amount / nominal_bid
    assert np.all(np.abs(rb[explore] - 1) <= 0.05 + 1e-12)
    assert np.ptp(rb[explore]) > 0.05  # really jittered
    np.testing.assert_allclose(rb[exploit], 1.0)
    dev = d.budget / nominal_budget
    unclipped = explore & (d.guardrails == 0)
    assert unclipped.sum() > 100
    assert np.all(np.abs(dev[unclipped] - 1) <= 0.10 + 1e-12)


def test_batch_equals_one_by_one_on_10000_requests() -> None:
    safety = SafetyConstraints(
        blacklisted_audiences=("kids",),
        restricted_times=((2, 4),),
        restricted_action="conservative",
    )
    policy, state = setup(safety)
    for c in range(30):
        teach(policy, state, f"c-{c}", n=c % 7)
    state.set_emergency("c-3", True)
    rng = np.random.default_rng(0)
    reqs = [
        req(
            i,
            campaign_id=f"c-{rng.integers(0, 40)}",
            audience=str(rng.choice(["kids", "news", "sports"])),
            event_time=int(rng.integers(0, 24)) * HOUR,
            base_bid=float(rng.uniform(0.5, 2)),
            base_budget=float(rng.uniform(5, 50)),
            daily_budget=float(rng.uniform(50, 500)),
            spent_today=float(rng.uniform(0, 520)),
            target_cpa=None if i % 3 else float(rng.uniform(0.3, 3)),
            utc_offset_minutes=int(rng.choice([0, 330, -480])),
        )
        for i in range(10_000)
    ]
    batch = decide(policy, state, reqs).to_records()
    singles = [decide(policy, state, [r]).to_records()[0] for r in reqs]
    assert batch == singles
    assert {r["mode"] for r in batch} == set(MODES)
    assert {g for r in batch for g in r["guardrails"]} == set(GUARDRAIL_NAMES) - {"min_roas"}


# -- guardrails ---------------------------------------------------------------------------


def test_blacklisted_audience_is_blocked_and_never_bids() -> None:
    policy, state = setup(SafetyConstraints(blacklisted_audiences=("kids", "gambling")))
    reqs = [req(i, audience=["kids", "sports", "gambling"][i % 3]) for i in range(300)]
    recs = decide(policy, state, reqs).to_records()
    for r, q in zip(recs, reqs, strict=True):
        if q["audience"] in ("kids", "gambling"):
            assert r["mode"] == "blocked"
            assert r["bid_amount"] == 0.0
            assert r["budget"] == 0.0
            assert r["guardrails"] == ["blacklisted_audience"]
        else:
            assert r["mode"] != "blocked"
            assert r["bid_amount"] > 0
    # Even in emergency and deterministic mode.
    state.set_emergency("c-1", True)
    d = decide(policy, state, reqs[:3], deterministic=True)
    assert d.bid_amount[0] == 0.0
    assert d.mode_names()[0] == "blocked"


@pytest.mark.parametrize("action", ["block", "conservative"])
def test_restricted_hours_in_campaign_local_time(action: str) -> None:
    policy, state = setup(SafetyConstraints(restricted_times=((22, 6),), restricted_action=action))
    # 23:00 UTC is restricted in UTC but 09:00 at UTC+10.
    reqs = [req(i, event_time=23 * HOUR, utc_offset_minutes=600 * (i % 2)) for i in range(100)]
    d = decide(policy, state, reqs)
    local = np.arange(100) % 2 == 1
    assert not d.has_guardrail("restricted_hours")[local].any()
    hit = ~local
    assert d.has_guardrail("restricted_hours")[hit].all()
    if action == "block":
        assert set(d.mode_names()[hit].tolist()) == {"blocked"}
        assert np.all(d.bid_amount[hit] == 0)
    else:
        assert set(d.arm[hit].tolist()) == {"conservative"}
        assert np.all(d.propensity[hit] == 1.0)
        assert set(d.mode_names()[hit].tolist()) == {"exploit"}
        np.testing.assert_allclose(d.bid_amount[hit], 0.8)


def test_max_cpa_caps_the_bid() -> None:
    policy, state = setup()
    d = decide(policy, state, [req(i, target_cpa=0.35) for i in range(50)])
    np.testing.assert_allclose(d.bid_amount, 0.7)  # 2.0 × 0.35, below every arm's bid
    assert d.has_guardrail("max_cpa").all()
    free = decide(policy, state, [req(i, target_cpa=10.0) for i in range(50)])
    assert not free.has_guardrail("max_cpa").any()


def test_budget_deviation_clips_to_base_range() -> None:
    arms = {"conservative": [0.8, 0.5], "wild": [1.0, 1.6]}
    policy, state = setup(arms=arms)
    d = decide(policy, state, [req(i) for i in range(200)], deterministic=False)
    assert np.all((d.budget >= 8.0 - 1e-9) & (d.budget <= 12.0 + 1e-9))
    assert d.has_guardrail("budget_deviation").all()
    assert "budget_deviation" in d.to_records()[0]["guardrails"]


def test_budget_risk_caps_spend_at_risk_and_exhausted_budget_blocks() -> None:
    policy, state = setup(SafetyConstraints(pacing=False))
    d = decide(policy, state, [req(i, daily_budget=60.0) for i in range(50)])
    np.testing.assert_allclose(d.budget, 6.0)  # 10% of the daily budget
    assert d.has_guardrail("budget_risk").all()
    d2 = decide(policy, state, [req(i, daily_budget=1000.0, spent_today=997.0) for i in range(20)])
    np.testing.assert_allclose(d2.budget, 3.0)  # what is left of the day
    assert d2.has_guardrail("budget_risk").all()
    d3 = decide(policy, state, [req(i, daily_budget=100.0, spent_today=100.0) for i in range(20)])
    assert set(d3.mode_names().tolist()) == {"blocked"}
    assert np.all(d3.bid_amount == 0)
    assert {tuple(r["guardrails"]) for r in d3.to_records()} == {("budget_exhausted",)}


def test_emergency_command_holds_until_cleared() -> None:
    policy, state = setup()
    state.set_emergency("c-9", True)
    d = decide(policy, state, [req(i, campaign_id="c-9") for i in range(100)])
    assert set(d.mode_names().tolist()) == {"emergency"}
    assert set(d.arm.tolist()) == {"conservative"}
    assert np.all(d.propensity == 1.0)
    assert d.has_guardrail("emergency_mode").all()
    np.testing.assert_allclose(d.bid_amount, 0.8)  # no exploration jitter
    # healthy outcomes do not end an emergency set by command
    res = observe(policy, state, [out(i, campaign_id="c-9") for i in range(300)])
    assert res.in_emergency.all()
    assert res.left_emergency == []
    state.set_emergency("c-9", False)
    assert decide(policy, state, [req(0, campaign_id="c-9")]).mode_names()[0] != "emergency"


# -- observe --------------------------------------------------------------------------------


def test_reward_and_success_precedence() -> None:
    policy, state = setup()
    res = observe(
        policy,
        state,
        [
            out(0, spend=5.0, revenue=20.0),  # profit 15 → success
            out(1, spend=5.0, revenue=0.0),  # profit -5 → failure
            out(2, reward=-1.0),  # reward wins over the definition
            out(3, reward=-1.0, success=True),  # success flag wins over everything
        ],
    )
    assert res.reward.tolist() == [15.0, -5.0, -1.0, -1.0]
    assert res.success.tolist() == [True, False, False, True]
    ts = state.thompson
    row = ts.row_of("c-1")
    assert ts.successes[row].sum() == 2
    assert ts.failures[row].sum() == 2
    assert ts.version[row] == 4
    assert decide(policy, state, [req()]).policy_version[0] == 4


@pytest.mark.parametrize(
    ("reward", "expected"),
    [("conversions", 1.0), ("clicks", 3.0), ("profit", 15.0), ("roi", 3.0)],
)
def test_reward_definitions(reward: str, expected: float) -> None:
    policy, state = setup(reward=reward)
    assert observe(policy, state, [out(0)]).reward.tolist() == [expected]


def test_bernoulli_success_rule_is_per_request_and_calibrated() -> None:
    policy, state = setup(reward="roi", success_rule="bernoulli")
    outs = [out(i, reward=0.3) for i in range(4000)]
    a = observe(policy, state, outs).success
    b = observe(policy, BiddingState(policy.config), outs).success
    assert np.array_equal(a, b)
    assert abs(a.mean() - 0.3) < 0.03


def test_state_round_trips_through_json_and_reset() -> None:
    policy, state = setup(SafetyConstraints(min_observations=3))
    teach(policy, state)
    state.set_emergency("c-1", True)
    blob = json.loads(json.dumps(state.get_key_state("c-1")))
    fresh = BiddingState(policy.config)
    fresh.set_key_state("c-1", blob)
    assert fresh.get_key_state("c-1") == state.get_key_state("c-1")
    reqs = [req(i) for i in range(100)]
    assert decide(policy, fresh, reqs).to_records() == decide(policy, state, reqs).to_records()
    with pytest.raises(StateError):
        fresh.set_key_state("c-2", {"thompson": blob["thompson"]})
    state.reset_key("c-1")
    assert not state.in_emergency("c-1")
    assert state.thompson.version[state.thompson.row_of("c-1")] == 0


def test_runtime_added_arm_is_playable_with_neutral_multipliers() -> None:
    policy, state = setup()
    state.thompson.add_arm("newbie", key="c-1")
    observe(policy, state, [out(i, arm="newbie", success=True) for i in range(30)])
    d = decide(policy, state, [req(i) for i in range(100)], deterministic=True)
    assert set(d.arm.tolist()) == {"newbie"}
    np.testing.assert_allclose(d.bid_amount, 1.0)
    state.thompson.remove_arm("newbie", key="c-1")
    assert "newbie" not in decide(policy, state, [req(i) for i in range(200)]).arm.tolist()


# -- validation -----------------------------------------------------------------------------


def test_validate_requests_reasons() -> None:
    reqs = [
        req(0),
        req(1, request_id=""),
        req(2, base_bid=float("nan")),
        req(3, daily_budget=float("inf")),
        req(4, spent_today=-1.0),
        req(5, target_cpa=0.0),
        req(6, campaign_id="a\nb"),
    ]
    reasons = validate_requests(RequestBatch.from_records(reqs)).tolist()
    assert BidPolicy.validate_requests(RequestBatch.from_records(reqs)).tolist() == reasons
    assert reasons[0] is None
    assert all(isinstance(r, str) for r in reasons[1:])
    assert "request_id" in reasons[1]
    assert "base_bid" in reasons[2]
    assert "daily_budget" in reasons[3]
    assert "spent_today" in reasons[4]
    assert "target_cpa" in reasons[5]
    assert "control" in reasons[6]


@pytest.mark.parametrize("cc", ["\n", "\r", "\t", "\x1b"])
@pytest.mark.parametrize("where", ["request_id", "campaign_id"])
def test_control_characters_are_found_in_any_row_and_position(where: str, cc: str) -> None:
    """A large batch where only some ids hold the control character (at the start, middle or
    end), and one where none does: the same rows as checking each id on its own."""
    rng = np.random.default_rng(11)
    reqs = [req(i) for i in range(300)]
    for i in rng.choice(300, 12, replace=False).tolist():
        ident = f"id-{i}"
        at = [0, len(ident) // 2, len(ident)][i % 3]
        reqs[i][where] = ident[:at] + cc + ident[at:]
    for batch, flagged in ((reqs, 12), ([req(i) for i in range(300)], 0)):
        reasons = validate_requests(RequestBatch.from_records(batch)).tolist()
        want = [any(c in r["request_id"] + r["campaign_id"] for c in "\n\r\t\x1b") for r in batch]
        assert sum(want) == flagged
        assert [r == "control character in an id" for r in reasons] == want
        assert sum(r is not None for r in reasons) == flagged


def test_validate_outcomes_reasons_without_creating_rows() -> None:
    _policy, state = setup()
    state.thompson.add_arm("only-c2", key="c-2")
    outs = [
        out(0),
        out(1, arm="mystery"),
        out(2, arm="only-c2"),
        out(3, propensity=0.0),
        out(4, propensity=1.5),
        out(5, spend=float("nan")),
        out(6, revenue=-3.0),
        out(7, conversions=-1),
        out(8, reward=float("inf")),
        out(9, budget=-1.0),
        out(10, campaign_id=""),
        out(11, campaign_id="c-2", arm="only-c2"),
    ]
    reasons = validate_outcomes(OutcomeBatch.from_records(outs), state).tolist()
    batch = OutcomeBatch.from_records(outs)
    assert BidPolicy(BiddingConfig()).validate_outcomes(batch, state).tolist() == reasons
    assert reasons[0] is None
    assert reasons[11] is None
    assert reasons[1] == "unknown arm"
    assert reasons[2] == "arm not active for this campaign"
    assert "propensity" in reasons[3]
    assert "propensity" in reasons[4]
    assert "spend" in reasons[5]
    assert "revenue" in reasons[6]
    assert "negative" in reasons[7]
    assert "reward" in reasons[8]
    assert "budget" in reasons[9]
    assert "campaign_id" in reasons[10]
    assert state.thompson.row_of("c-1") is None


def test_validate_outcomes_rejects_amounts_whose_squares_overflow() -> None:
    outs = [
        out(0, reward=1e200),
        out(1, spend=1e16),
        out(2, clicks=70_000),
        out(3, spend=1e-300, revenue=1.0),  # an ROI of 1e300
        out(4, spend=2.0, revenue=3.0),
    ]
    batch = OutcomeBatch.from_records(outs)
    reasons = validate_outcomes(batch, BiddingState(BiddingConfig())).tolist()
    assert "reward" in reasons[0]
    assert "spend or revenue" in reasons[1]
    assert "clicks or conversions" in reasons[2]
    assert reasons[3] is None and reasons[4] is None  # profit: 1.0, fine
    roi = validate_outcomes(batch, BiddingState(BiddingConfig(reward="roi"))).tolist()
    assert "reward" in roi[3]
    assert roi[4] is None


def test_empty_batches() -> None:
    policy, state = setup()
    assert decide(policy, state, []).to_records() == []
    assert len(decide(policy, state, [], deterministic=True)) == 0
    res = observe(policy, state, [])
    assert res.reward.shape == (0,)
    assert res.entered_emergency == []
    assert validate_requests(RequestBatch.from_records([])).shape == (0,)
    assert validate_outcomes(OutcomeBatch.from_records([]), state).shape == (0,)
