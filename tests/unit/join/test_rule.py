"""The columnar join equals the plain-Python reference on random streams (Hypothesis).

Streams mix logged decisions, redeliveries inside one batch and across batches, restatements,
stale outcomes, other arms and campaigns, foreign requests, late outcomes, expiry and eviction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.config import AttributionConfig
from processor.join import STATUS_NAMES, RewardJoin
from processor.join.reward_join import campaign_hashes, request_keys
from processor.policy.batches import DecisionBatch, OutcomeBatch
from processor.policy.bidding import BiddingConfig, BiddingState, BidPolicy
from processor.state.joinlog import F_FOREIGN, F_SUCCESS, F_WON, NO_TIME
from tests.unit.join.reference import Out, ReferenceJoin

CFG = BiddingConfig()
ARMS = list(CFG.arm_names)
POLICY = BidPolicy(CFG)
STATE = BiddingState(CFG)
REQUESTS = [f"r{i}" for i in range(12)]
CONTRIBUTIONS = [
    (0.0, False, 1.0, 0.0, 0, 0, True),
    (2.5, True, 1.0, 3.5, 1, 1, True),
    (-1.0, False, 1.0, 0.0, 1, 0, True),
    (0.0, False, 0.0, 0.0, 0, 0, False),
]


def outcome_batch(outs: list[Out]) -> OutcomeBatch:
    n = len(outs)
    c = list(zip(*[o.contribution for o in outs], strict=True)) if outs else [()] * 7
    return OutcomeBatch(
        request_id=np.array([o.request for o in outs], dtype=object),
        campaign_id=np.array([o.campaign for o in outs], dtype=object),
        arm=np.array([ARMS[o.arm] for o in outs], dtype=object),
        event_time=np.array([o.t for o in outs], dtype=np.int64),
        won=np.array(c[6], dtype=bool),
        clicks=np.array(c[4], dtype=np.int64),
        conversions=np.array(c[5], dtype=np.int64),
        spend=np.array(c[2], dtype=np.float64),
        revenue=np.array(c[3], dtype=np.float64),
        reward=np.array(c[0], dtype=np.float64),
        success=np.array(c[1], dtype=np.float64),
        propensity=np.array([o.propensity for o in outs]),
        policy_version=np.full(n, -1, dtype=np.int64),
        budget=np.full(n, np.nan),
        target_cpa=np.full(n, np.nan),
    )


def decision_batch(decisions: list[tuple[str, str, int, int]]) -> DecisionBatch:
    n = len(decisions)
    return DecisionBatch(
        request_id=np.array([d[0] for d in decisions], dtype=object),
        campaign_id=np.array([d[1] for d in decisions], dtype=object),
        arm=np.array([ARMS[d[2]] for d in decisions], dtype=object),
        arm_index=np.array([d[2] for d in decisions], dtype=np.int64),
        bid_amount=np.ones(n),
        budget=np.ones(n),
        propensity=np.full(n, 0.25),
        confidence=np.full(n, 0.25),
        mode=np.zeros(n, dtype=np.int64),
        guardrails=np.zeros(n, dtype=np.int64),
        policy_version=np.zeros(n, dtype=np.int64),
        event_time=np.array([d[3] for d in decisions], dtype=np.int64),
        decided_at=np.zeros(n, dtype=np.int64),
    )


def events_of(result: Any) -> list[tuple[str, int, tuple]]:
    ev = result.events
    if ev is None:
        return []
    return [
        (
            "retract" if w < 0 else "apply",
            int(k),
            (
                float(ev.reward[i]),
                bool(ev.success[i] > 0.5),
                float(ev.spend[i]),
                float(ev.revenue[i]),
                int(ev.clicks[i]),
                int(ev.conversions[i]),
                bool(ev.won[i]),
            ),
        )
        for i, (w, k) in enumerate(zip(result.weights, result.event_outcome, strict=True))
    ]


def log_view(join: RewardJoin) -> dict[int, tuple]:
    keys, rows = join.log.entries()
    out = {}
    for k, r in zip(keys.tolist(), rows, strict=True):
        has = int(r["t_out"]) != NO_TIME
        flags = int(r["flags"])
        contribution = (
            (
                float(r["reward"]),
                bool(flags & F_SUCCESS),
                float(r["spend"]),
                float(r["revenue"]),
                int(r["clicks"]),
                int(r["conversions"]),
                bool(flags & F_WON),
            )
            if has
            else None
        )
        out[k] = (
            int(r["t"]),
            int(r["t_out"]),
            contribution,
            int(r["arm"]),
            int(r["campaign"]),
            bool(flags & F_FOREIGN),
        )
    return out


def reference_view(ref: ReferenceJoin) -> dict[int, tuple]:
    keys = request_keys(list(ref.log)).tolist() if ref.log else []
    camps = campaign_hashes([e.campaign for e in ref.log.values()]) if ref.log else []
    return {
        k: (e.t, e.t_out, e.contribution, e.arm, int(c), e.foreign)
        for k, e, c in zip(keys, ref.log.values(), camps, strict=True)
    }


outcome_st = st.builds(
    Out,
    request=st.sampled_from([*REQUESTS, "f1", "f2", "f3"]),
    campaign=st.sampled_from(["c1", "c1", "c1", "c2"]),
    arm=st.sampled_from([0, 0, 0, 1]),
    t=st.integers(0, 60),
    contribution=st.sampled_from(CONTRIBUTIONS),
    propensity=st.sampled_from([0.25, 0.5]),
)
decision_st = st.tuples(
    st.sampled_from(REQUESTS), st.sampled_from(["c1", "c1", "c2"]), st.just(0), st.integers(0, 60)
)
batch_st = st.tuples(
    st.lists(decision_st, max_size=5),
    st.one_of(
        st.lists(outcome_st, max_size=12),
        st.lists(outcome_st, max_size=8, unique_by=lambda o: o.request),  # distinct requests
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    batches=st.lists(batch_st, min_size=1, max_size=6),
    window=st.sampled_from([5, 20, 1000]),
    grace=st.sampled_from([0, 3, 1000]),
    accept=st.booleans(),
    apply_late=st.booleans(),
    max_entries=st.sampled_from([None, None, 3, 8]),
)
def test_columnar_join_equals_reference(
    batches: list[tuple[list[tuple[str, str, int, int]], list[Out]]],
    window: int,
    grace: int,
    accept: bool,
    apply_late: bool,
    max_entries: int | None,
) -> None:
    config = AttributionConfig(
        window_ms=window,
        grace_ms=grace,
        unknown="accept" if accept else "dead_letter",
        late="apply" if apply_late else "drop",
        max_entries=max_entries,
    )
    join = RewardJoin(config)
    general = RewardJoin(config)  # the same without the path for batches of distinct requests
    general.fast_path = False
    ref = ReferenceJoin(window, grace, accept, apply_late, max_entries)
    for decisions, outs in batches:
        if outs:
            got = join.process(outcome_batch(outs), POLICY, STATE)
            slow = general.process(outcome_batch(outs), POLICY, STATE)
            want_status, want_events = ref.process(outs)
            assert [STATUS_NAMES[s] for s in got.status.tolist()] == want_status
            assert events_of(got) == want_events
            assert slow.status.tolist() == got.status.tolist()
            assert events_of(slow) == want_events
            assert join.log.evicted == ref.evicted
        if decisions:
            join.log_decisions(decision_batch(decisions))
            general.log_decisions(decision_batch(decisions))
            ref.decide(decisions)
        join.log.settle()
        general.log.settle()
        ref.settle()
        assert join.log.watermark == ref.watermark
        assert log_view(join) == reference_view(ref) == log_view(general)
        assert len(join.log) == len(ref.log)


def test_posterior_equals_each_decision_s_latest_outcome_once() -> None:
    """Random redeliveries and restatements: α/β equal the latest outcomes' counts exactly."""
    rng = np.random.default_rng(3)
    join = RewardJoin(AttributionConfig())
    state = BiddingState(CFG)
    policy = BidPolicy(CFG)
    requests = [f"q{i}" for i in range(400)]
    join.log_decisions(
        decision_batch([(r, f"c{i % 5}", i % 4, 1_000 + i) for i, r in enumerate(requests)])
    )
    latest: dict[str, tuple[int, int, bool]] = {}  # request -> (t, order, success)
    stream = []
    for _ in range(3000):
        i = int(rng.integers(0, len(requests)))
        t = 2_000 + int(rng.integers(0, 50))
        success = bool(rng.random() < 0.4)
        stream.append(
            Out(requests[i], f"c{i % 5}", i % 4, t, (float(success), success, 0, 0, 0, 0, True))
        )
    for o in stream:  # the rule: max event time, ties to the later arrival
        if o.request not in latest or o.t >= latest[o.request][0]:
            latest[o.request] = (o.t, 0, o.contribution[1])
    at = 0
    while at < len(stream):
        size = int(rng.integers(1, 200))
        result = join.process(outcome_batch(stream[at : at + size]), policy, state)
        if result.events is not None:
            policy.observe(result.events, state, weight=result.weights)
        at += size
    want = np.zeros((5, 4, 2))
    for r, (_, _, success) in latest.items():
        i = requests.index(r)
        want[i % 5, i % 4, 0 if success else 1] += 1
    rows = state.rows([f"c{c}" for c in range(5)])
    assert np.array_equal(state.thompson.successes[rows], want[:, :, 0])
    assert np.array_equal(state.thompson.failures[rows], want[:, :, 1])
