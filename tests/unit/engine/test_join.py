"""The reward join inside PartitionEngine: duplicates, restatements, wrong arms, foreign and late
outcomes, the logged propensity, the join switched off, and signed Thompson updates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from processor.bandits.keyed import KeyedThompson
from processor.config import AppConfig, AttributionConfig
from processor.engine import PartitionEngine
from processor.join import RewardJoin
from processor.policy.bidding import BiddingConfig, BiddingState, BidPolicy
from processor.policy.monitor import EVIDENCE_FIELDS, MONITOR_FIELDS
from tests.unit.engine.test_engine import SERDES, batch, outcome
from tests.unit.join.reference import Out
from tests.unit.join.test_rule import decision_batch, outcome_batch

T = AppConfig().topics
T0 = 1_700_000_000_000


def engine(**attribution: Any) -> PartitionEngine:
    return PartitionEngine(AppConfig(attribution=AttributionConfig(**attribution)), 0, SERDES)


def outcomes(eng: PartitionEngine, records: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    return eng.process(
        {T.bid_outcomes: batch(T.bid_outcomes, "BidOutcome", records, "campaign_id")}
    )


def counts(eng: PartitionEngine, campaign: str = "c1") -> dict[str, tuple[float, float]]:
    ts = eng.campaigns.thompson
    row = ts.row_of(campaign)
    assert row is not None
    return {
        a: (float(ts.successes[row, i]), float(ts.failures[row, i]))
        for i, a in enumerate(ts.arm_names)
        if ts.successes[row, i] or ts.failures[row, i]
    }


def decide(eng: PartitionEngine, request_ids: list[str], campaign: str = "c1") -> dict[str, str]:
    """Let the engine decide requests; returns request id → the arm it chose."""
    reqs = [
        {
            "request_id": rid,
            "campaign_id": campaign,
            "audience": "general",
            "event_time": T0,
            "base_bid": 1.0,
            "base_budget": 10.0,
            "daily_budget": 1000.0,
            "spent_today": 0.0,
            "target_cpa": None,
            "utc_offset_minutes": 0,
            "context": {},
        }
        for rid in request_ids
    ]
    out = eng.process({T.bid_requests: batch(T.bid_requests, "BidRequest", reqs, "campaign_id")})
    recs = [SERDES["BidDecision"].decode(v) for _, v in out.decisions]
    return {d["request_id"]: d["arm"] for d in recs}


def test_redeliveries_inside_and_across_batches_count_once() -> None:
    eng = engine()
    first = [outcome(request_id=f"r{i}", success=i % 3 == 0, event_time=T0 + i) for i in range(30)]
    out = outcomes(eng, first + first[:10])  # ten redelivered inside the batch
    assert out.join["unknown"] == 30 and out.join["duplicate"] == 10
    assert out.rewards_applied == 30
    out = outcomes(eng, first[5:25] + first[5:8])  # and across batches
    assert out.join["duplicate"] == 23 and out.rewards_applied == 0
    assert counts(eng) == {"balanced": (10.0, 20.0)}


def test_a_restated_outcome_replaces_the_earlier_one() -> None:
    eng = engine()
    outcomes(eng, [outcome(request_id="r", success=False, event_time=T0)])
    assert counts(eng) == {"balanced": (0.0, 1.0)}
    out = outcomes(eng, [outcome(request_id="r", success=True, event_time=T0 + 5)])
    assert out.join["restated"] == 1
    assert counts(eng) == {"balanced": (1.0, 0.0)}
    # the older failure redelivered now is stale: nothing changes
    out = outcomes(eng, [outcome(request_id="r", success=False, event_time=T0)])
    assert out.join["duplicate"] == 1 and counts(eng) == {"balanced": (1.0, 0.0)}
    # apply, then retract + apply: the version counts Thompson updates
    ts = eng.campaigns.thompson
    assert int(ts.version[ts.row_of("c1")]) == 3


def test_restatement_inside_one_batch_applies_only_the_latest() -> None:
    eng = engine()
    out = outcomes(
        eng,
        [
            outcome(request_id="r", success=False, event_time=T0),
            outcome(request_id="r", success=True, event_time=T0 + 1),
            outcome(request_id="r", success=False, event_time=T0 - 1),  # stale
        ],
    )
    assert (out.join["unknown"], out.join["restated"], out.join["duplicate"]) == (1, 1, 1)
    assert counts(eng) == {"balanced": (1.0, 0.0)}


def test_an_outcome_naming_another_arm_or_campaign_is_a_dead_letter() -> None:
    eng = engine()
    chosen = decide(eng, ["q1", "q2"])
    other = next(a for a in BiddingConfig().arm_names if a != chosen["q1"])
    before = eng.campaigns.get_key_state("c1")
    out = outcomes(
        eng,
        [
            outcome(request_id="q1", arm=other, event_time=T0 + 1),
            outcome(request_id="q2", arm=chosen["q2"], campaign_id="c2", event_time=T0 + 1),
        ],
    )
    assert [d.error_class for d in out.dead_letters] == ["arm_mismatch", "arm_mismatch"]
    assert "q1" in out.dead_letters[0].reason and repr(chosen["q1"]) in out.dead_letters[0].reason
    assert eng.campaigns.get_key_state("c1") == before
    assert eng.campaigns.thompson.row_of("c2") is None
    out = outcomes(eng, [outcome(request_id="q1", arm=chosen["q1"], event_time=T0 + 2)])
    assert out.join["joined"] == 1 and not out.dead_letters


def test_unknown_requests_can_be_dead_lettered() -> None:
    eng = engine(unknown="dead_letter")
    decide(eng, ["known"])
    out = outcomes(eng, [outcome(request_id="stranger", event_time=T0)])
    assert [d.error_class for d in out.dead_letters] == ["unknown_request"]
    assert out.join["unknown_rejected"] == 1 and out.rewards_applied == 0


@pytest.mark.parametrize("late", ["drop", "apply"])
def test_late_outcomes_are_counted_and_dropped_or_applied(late: str) -> None:
    eng = engine(window_ms=1_000, grace_ms=100, late=late)
    outcomes(eng, [outcome(request_id="a", event_time=T0 + 10_000)])  # watermark T0 + 10 s
    out = outcomes(
        eng,
        [
            outcome(request_id="old", event_time=T0),  # unknown and 10 s behind: late
            outcome(request_id="a", event_time=T0 + 11_500, success=False),  # past a's window
        ],
    )
    assert out.join["late"] == 2
    if late == "drop":
        assert out.rewards_applied == 0 and counts(eng) == {"balanced": (1.0, 0.0)}
    else:  # "old" applied without a join; "a" restated through the join
        assert out.rewards_applied == 2 and counts(eng) == {"balanced": (1.0, 1.0)}


def test_the_logged_propensity_is_used() -> None:
    cfg = BiddingConfig()
    policy, state = BidPolicy(cfg), BiddingState(cfg)
    join = RewardJoin(AttributionConfig())
    join.log_decisions(decision_batch([("r", "c1", 0, 10)]))  # logged propensity 0.25
    res = join.process(
        outcome_batch([Out("r", "c1", 0, 11, (1.0, True, 0.0, 1.0, 0, 1, True), 0.9)]),
        policy,
        state,
    )
    assert res.events is not None and res.events.propensity.tolist() == [0.25]


def test_join_switched_off_trusts_every_outcome() -> None:
    eng = engine(enabled=False)
    first = [outcome(request_id="r", event_time=T0)] * 3
    out = outcomes(eng, first)
    assert out.rewards_applied == 3 and counts(eng) == {"balanced": (3.0, 0.0)}
    assert not [k for k, _, _ in eng.take_dirty() if k == "join"]


def test_engine_restores_its_log_from_take_dirty() -> None:
    eng = engine()
    decide(eng, [f"q{i}" for i in range(40)])
    outcomes(eng, [outcome(request_id=f"o{i}", event_time=T0 + i) for i in range(25)])
    items = eng.take_dirty()
    fresh = engine()
    fresh.restore_many({(k, key): s for k, key, s in items})
    assert fresh.join is not None and eng.join is not None
    assert len(fresh.join.log) == len(eng.join.log) == 65
    # a redelivery after the restore is still a duplicate
    out = outcomes(fresh, [outcome(request_id="o3", event_time=T0 + 3)])
    assert out.join["duplicate"] == 1


def test_signed_thompson_updates_are_exact_and_clipped() -> None:
    ts = KeyedThompson(["a", "b"])
    rows = ts.rows(["k"])
    ts.update([rows[0]] * 3, [0, 0, 1], [1.0, 0.0, 1.0])
    ts.update([rows[0]], [0], [1.0], weight=[-1.0])
    assert ts.successes[0].tolist() == [0.0, 1.0] and ts.failures[0].tolist() == [1.0, 0.0]
    ts.update([rows[0]], [1], [1.0], weight=[-1.0])
    ts.update([rows[0]], [1], [1.0], weight=[-1.0])  # more than was applied: clipped at zero
    assert ts.successes[0].tolist() == [0.0, 0.0]
    assert int(ts.version[0]) == 6


def test_discounted_retraction_removes_what_the_outcome_has_left() -> None:
    unit = 1_000
    ts = KeyedThompson(["a"], discount=0.5, discount_unit_ms=unit)
    r = ts.rows(["k"])[0]
    ts.update([r], [0], [1.0], event_time_ms=[0])
    ts.update([r], [0], [0.0], event_time_ms=[2 * unit])  # the success has decayed to 1/4
    assert ts.successes[0, 0] == pytest.approx(0.25)
    ts.update([r], [0], [1.0], event_time_ms=[0], weight=[-1.0])  # retract it at its own time
    assert ts.successes[0, 0] == pytest.approx(0.0, abs=1e-15)
    assert ts.failures[0, 0] == pytest.approx(1.0)
    assert int(ts.last_event_ms[0]) == 2 * unit  # a retraction never moves the clock


def test_a_restatement_leaves_every_statistic_as_the_latest_outcome_alone() -> None:
    """The join retracts the earlier contribution (weight −1) and applies the new one: Beta
    counts, the value posterior's moments and the guardrails' evidence end as if only the
    latest outcome had arrived."""
    first = outcome(request_id="r", success=False, event_time=T0, spend=2.0, revenue=0.0)
    latest = outcome(
        request_id="r", success=True, event_time=T0 + 5, spend=2.0, revenue=9.0, conversions=1
    )
    restated, alone = engine(), engine()
    outcomes(restated, [first])
    out = outcomes(restated, [latest])
    assert out.join["restated"] == 1
    outcomes(alone, [latest])
    a, b = restated.campaigns, alone.campaigns
    assert counts(restated) == counts(alone) == {"balanced": (1.0, 0.0)}
    rows = np.array([a.thompson.row_of("c1")]), np.array([b.thompson.row_of("c1")])
    for x, y in zip(a.value.stats(rows[0]), b.value.stats(rows[1]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    for name in (*EVIDENCE_FIELDS, *MONITOR_FIELDS):
        np.testing.assert_allclose(
            a.safety.arrays[name][rows[0]], b.safety.arrays[name][rows[1]], rtol=1e-9, atol=1e-9
        )
