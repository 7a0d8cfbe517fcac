"""The reward join on a real broker: every decision's reward counts once, across SIGKILL and a
rebalance, with redeliveries, restatements, wrong arms and foreign outcomes."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from processor.testing import wait_for
from tests.integration.stagekit import (
    StageProcess,
    app_config,
    committed_state,
    drained,
    kill_mid_stream,
    make_topics,
    produce,
    read_all,
    request_records,
    run_until_drained,
    thompson_counts,
)

FAST_GROUP = {
    "kafka": {"consumer": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}}
}


def outcome_for(decision: dict[str, Any], success: bool, delay_ms: int = 1_000, **kw: Any) -> dict:
    rec = {
        "request_id": decision["request_id"],
        "campaign_id": decision["campaign_id"],
        "arm": decision["arm"],
        "event_time": decision["event_time"] + delay_ms,
        "won": True,
        "clicks": int(success),
        "conversions": int(success),
        "spend": 0.5,
        "revenue": 2.0 if success else 0.0,
        "reward": None,
        "success": success,
        "propensity": decision["propensity"],
        "policy_version": decision["policy_version"],
        "budget": None,
        "target_cpa": None,
    }
    rec.update(kw)
    return rec


def decided(config: Any, path: Path, requests: list[dict], log: Path) -> list[dict[str, Any]]:
    """Let one stage instance answer ``requests``; returns the decisions."""
    produce(config, config.topics.bid_requests, "BidRequest", requests, "campaign_id")
    stage = StageProcess(config, path, "decider", log).start().wait_ready()
    try:
        wait_for(lambda: drained(config), timeout=120, description="requests answered")
    finally:
        assert stage.stop() == 0, stage.log_tail()
    decisions = read_all(config, config.topics.bid_decisions, "BidDecision")
    assert len(decisions) == len(requests)
    return decisions


def expected(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Counts of each decision's latest outcome (max event time; ties: the later one)."""
    latest: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        seen = latest.get(o["request_id"])
        if seen is None or o["event_time"] >= seen["event_time"]:
            latest[o["request_id"]] = o
    out: dict[str, dict[str, list[int]]] = {}
    for o in latest.values():
        cell = out.setdefault(o["campaign_id"], {}).setdefault(o["arm"], [0, 0])
        cell[0 if o["success"] else 1] += 1
    return out


def assert_counts(config: Any, want: dict[str, dict[str, list[int]]]) -> None:
    views = committed_state(config)
    for campaign, arms in want.items():
        counts = thompson_counts(views[("campaign", campaign)])
        for arm, (succ, fail) in arms.items():
            assert counts[arm] == (succ, fail), (campaign, arm, counts[arm], (succ, fail))
        for arm in set(counts) - set(arms):
            assert counts[arm] == (0.0, 0.0), (campaign, arm, counts[arm])


def test_redeliveries_across_sigkill_count_once(bootstrap: str, tmp_path: Path) -> None:
    # small batches and commits: the input takes many commits, so a kill lands mid-stream
    config, path = app_config(
        bootstrap, tmp_path, commit_every_events=50, max_batch_events=50, **FAST_GROUP
    )
    make_topics(config, partitions=3)
    log = tmp_path / "stage.log"
    decisions = decided(config, path, request_records(3000, campaigns=9, seed=41), log)
    rng = random.Random(41)
    outcomes = [outcome_for(d, rng.random() < 0.3) for d in decisions]
    twice = outcomes + outcomes
    rng.shuffle(twice)  # every outcome twice, the copies anywhere in the stream
    produce(config, config.topics.bid_outcomes, "BidOutcome", twice, "campaign_id")

    def redeliver() -> None:  # the stage was faster than this input: redeliver more of it
        more = rng.sample(outcomes, len(outcomes) // 2)
        produce(config, config.topics.bid_outcomes, "BidOutcome", more, "campaign_id")

    kill_mid_stream(config, path, "crashy", log, 2, redeliver)
    third = rng.sample(outcomes, 800)  # and some a third time after the crashes
    produce(config, config.topics.bid_outcomes, "BidOutcome", third, "campaign_id")
    text = run_until_drained(config, path, "crashy", log)
    assert_counts(config, expected(outcomes))
    assert "bandit_processor_duplicate_outcomes_total" in text
    assert "bandit_processor_decision_log_entries{partition=" in text
    letters = read_all(config, config.topics.dead_letters, "DeadLetter")
    assert letters == []


def test_restatements_wrong_arms_and_foreign_outcomes(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(bootstrap, tmp_path, **FAST_GROUP)
    make_topics(config, partitions=2)
    log = tmp_path / "stage.log"
    decisions = decided(config, path, request_records(400, campaigns=4, seed=43), log)
    arms = ["conservative", "balanced", "aggressive", "experimental"]
    first = decisions[:200]
    # a failure, then the same request restated as a success, then the failure redelivered
    restated = [outcome_for(d, False) for d in first]
    restated += [outcome_for(d, True, delay_ms=60_000) for d in first]
    restated += [outcome_for(d, False) for d in first[:50]]
    wrong = [
        outcome_for(d, True, arm=next(a for a in arms if a != d["arm"])) for d in decisions[200:260]
    ]
    t0 = decisions[0]["event_time"]
    foreign = [
        {
            **outcome_for(decisions[0], i % 2 == 0),
            "request_id": f"other-policy-{i}",
            "campaign_id": f"cmp-{i % 4}",
            "arm": arms[i % 4],
            "event_time": t0 + 5_000 + i,
            "propensity": 0.5,
        }
        for i in range(100)
    ]
    stream = restated + wrong + foreign + foreign  # foreign ones delivered twice
    produce(config, config.topics.bid_outcomes, "BidOutcome", stream, "campaign_id")
    stage = StageProcess(config, path, "joiner", log).start().wait_ready()
    try:
        wait_for(lambda: drained(config), timeout=120, description="outcomes drained")
        text = stage.metrics()
    finally:
        assert stage.stop() == 0, stage.log_tail()
    assert_counts(config, expected(restated + foreign))
    letters = read_all(config, config.topics.dead_letters, "DeadLetter")
    assert Counter(d["error_class"] for d in letters) == {"arm_mismatch": 60}
    assert "bandit_processor_restated_outcomes_total 200.0" in text
    assert "bandit_processor_unknown_outcomes_total 100.0" in text
    assert "bandit_processor_duplicate_outcomes_total 150.0" in text  # 50 stale + 100 foreign
    assert 'bandit_processor_dead_letters_total{reason="arm_mismatch"} 60.0' in text


def test_rebalance_between_two_instances_stays_exact(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(
        bootstrap, tmp_path, commit_every_events=300, max_batch_events=300, **FAST_GROUP
    )
    make_topics(config, partitions=4)
    decisions = decided(
        config, path, request_records(2400, campaigns=16, seed=47), tmp_path / "d.log"
    )
    rng = np.random.default_rng(47)
    outcomes = [outcome_for(d, bool(rng.random() < 0.4)) for d in decisions]
    half = len(outcomes) // 2
    a = StageProcess(config, path, "a", tmp_path / "a.log").start()
    b = StageProcess(config, path, "b", tmp_path / "b.log").start()
    try:
        a.wait_ready(90)
        b.wait_ready(90)
        first = outcomes[:half] + outcomes[: half // 2]  # a duplicated stream
        produce(config, config.topics.bid_outcomes, "BidOutcome", first, "campaign_id")
        wait_for(lambda: drained(config), timeout=120, description="first half drained")
        second = outcomes[half:] + outcomes[half // 2 : half] + outcomes[half:]
        produce(config, config.topics.bid_outcomes, "BidOutcome", second, "campaign_id")
        a.kill()  # b takes a's partitions over and restores their logs mid-stream
        wait_for(lambda: drained(config), timeout=180, description="survivor drained everything")
        assert "assigned partitions" in b.log_tail(200)
    finally:
        assert b.stop() == 0, b.log_tail()
    assert_counts(config, expected(outcomes))
