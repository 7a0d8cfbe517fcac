"""Budget pacing: the law, the decisions it changes, and a day in closed loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from processor.policy.bidding import BiddingConfig, BidPolicy, RequestBatch
from processor.policy.pacing import local_day_fraction, participation, planned_share
from processor.policy.safety import SafetyConstraints
from processor.policy.simulator import CampaignSpec, MarketSimulator, run_closed_loop

HOUR = 3_600_000
DAY = 24 * HOUR


def _rate(c: SafetyConstraints, spent: float, hour: float, offset: int = 0) -> float:
    t = np.array([int(hour * HOUR) - offset * 60_000], dtype=np.int64)
    return float(
        participation(
            c,
            daily_budget=np.array([100.0]),
            spent_today=np.array([spent]),
            event_time_ms=t,
            utc_offset_minutes=np.array([offset], dtype=np.int64),
        )[0]
    )


def test_the_law_throttles_only_ahead_of_plan() -> None:
    c = SafetyConstraints(pacing_gain=10.0)
    assert _rate(c, 40.0, 12.0) == 1.0  # behind plan
    assert _rate(c, 50.0, 12.0) == 1.0  # on plan
    assert _rate(c, 55.0, 12.0) == pytest.approx((0.45 / 0.5) ** 10)
    assert _rate(c, 55.0, 12.0, offset=-300) == pytest.approx((0.45 / 0.5) ** 10)  # local time
    assert _rate(c, 100.0, 12.0) == 0.0
    assert _rate(c, 99.0, 23.999999) == 1.0  # the day is over: what is left may go
    assert _rate(SafetyConstraints(pacing=False), 99.0, 1.0) == 1.0
    profile = tuple([0.0] * 12 + [1.0] * 12)  # spend only in the afternoon
    p = SafetyConstraints(pacing_profile=profile)
    assert planned_share(p, np.array([0.25, 0.5, 0.75])).tolist() == [0.0, 0.0, 0.5]
    assert _rate(p, 20.0, 6.0) == pytest.approx(0.8**10)  # nothing planned yet: 20% ahead
    assert local_day_fraction(np.array([DAY + HOUR]), np.array([60])).tolist() == [2 / 24]


def _requests(n: int, spent: float) -> RequestBatch:
    return RequestBatch.from_records(
        [
            {
                "request_id": f"r-{i}",
                "campaign_id": "c",
                "audience": "a",
                "event_time": 12 * HOUR,
                "base_bid": 1.0,
                "base_budget": 5.0,
                "daily_budget": 100.0,
                "spent_today": spent,
                "target_cpa": None,
                "utc_offset_minutes": 0,
                "context": {},
            }
            for i in range(n)
        ]
    )


def test_throttled_decisions_are_blocked_with_the_pacing_guardrail() -> None:
    policy = BidPolicy(BiddingConfig(seed=2))
    state = policy.new_state()
    d = policy.decide(_requests(4000, 53.0), state, decided_at_ms=0)
    paced = d.has_guardrail("pacing")
    assert abs(paced.mean() - (1 - (0.47 / 0.5) ** 10)) < 0.03
    assert set(d.mode_names()[paced].tolist()) == {"blocked"}
    assert np.all(d.bid_amount[paced] == 0) and np.all(d.budget[paced] == 0)
    assert {tuple(r["guardrails"]) for r in d.to_records() if "pacing" in r["guardrails"]} == {
        ("pacing",)
    }
    again = policy.decide(_requests(4000, 53.0), state, decided_at_ms=0)
    assert np.array_equal(again.has_guardrail("pacing"), paced)  # one hashed uniform each
    assert (
        not policy.decide(_requests(100, 10.0), state, decided_at_ms=0)
        .has_guardrail("pacing")
        .any()
    )


def _day(pacing: bool, seed: int, budget_ratio: float) -> tuple[float, float, float]:
    """Share of the daily budget spent in one local day, the local hour it ran out (24.0 if it
    did not), and the day's spend relative to the expected spend at the base bid."""
    spec = CampaignSpec(cvr=0.01, budget_ratio=budget_ratio, utc_offset_minutes=-300)
    sim = MarketSimulator(seed, campaigns=[spec], traffic="diurnal")
    policy = BidPolicy(BiddingConfig(seed=1), SafetyConstraints(pacing=pacing))
    start = 3 * DAY + 300 * 60_000  # local midnight at UTC−5
    seen: list[tuple[int, float]] = []

    def watch(reqs: list[dict[str, Any]], *_: Any) -> None:
        seen.extend((r["event_time"], r["spent_today"]) for r in reqs)

    run_closed_loop(
        policy, sim, 21_600, rate_per_s=0.25, start_ms=start, batch_size=100, observer=watch
    )
    assert sim.daily_budget is not None
    budget = float(sim.daily_budget[0])
    spent = sim.spent_today(sim.campaign_ids[0], start + DAY - 1)
    out = [t for t, s in seen if s >= 0.99 * budget]
    hour = (out[0] - start) / HOUR if out else 24.0
    return spent / budget, hour, spent / float(sim.expected_daily_spend(21_600)[0])


@pytest.mark.parametrize("seed", [1, 2])
def test_a_campaign_that_could_spend_twice_its_budget_spreads_it_over_the_day(seed: int) -> None:
    # what the policy spends in a day without a budget, relative to the base bid's spend
    _, _, unconstrained = _day(False, seed, budget_ratio=1e6)
    ratio = unconstrained / 2  # the budget is half of it
    share, hour, _ = _day(True, seed, ratio)
    assert 0.95 <= share <= 1.0 + 1e-9
    assert hour >= 22.0
    unpaced_share, unpaced_hour, _ = _day(False, seed, ratio)
    assert unpaced_share >= 0.99
    assert unpaced_hour < 17.0  # without pacing it runs dry in the afternoon
