"""The exactly-once stage against a real broker: end to end, crashes, rebalances, fencing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from processor.cli.simulate import run_simulation
from processor.testing import wait_for
from tests.integration.stagekit import (
    StageProcess,
    app_config,
    committed_state,
    drained,
    expected_counts,
    kill_mid_stream,
    make_topics,
    outcome_records,
    produce,
    read_all,
    request_records,
    run_until_drained,
    thompson_counts,
)

ARMS = ["conservative", "balanced", "aggressive", "experimental"]
FAST_GROUP = {
    "kafka": {"consumer": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}}
}


def assert_exact_thompson(config, outcomes) -> None:  # type: ignore[no-untyped-def]
    views = committed_state(config)
    for campaign, arms in expected_counts(outcomes).items():
        counts = thompson_counts(views[("campaign", campaign)])
        for arm, (succ, fail) in arms.items():
            assert counts[arm] == (succ, fail), (campaign, arm, counts[arm], (succ, fail))
        for arm in set(counts) - set(arms):
            assert counts[arm] == (0.0, 0.0)


def assert_each_request_answered_once(config, requests) -> None:  # type: ignore[no-untyped-def]
    decisions = read_all(config, config.topics.bid_decisions, "BidDecision")
    ids = Counter(d["request_id"] for d in decisions)
    duplicated = [rid for rid, n in ids.items() if n > 1]
    missing = {r["request_id"] for r in requests} - set(ids)
    assert not duplicated, f"{len(duplicated)} duplicated decisions, e.g. {duplicated[:3]}"
    assert not missing, f"{len(missing)} requests unanswered, e.g. {sorted(missing)[:3]}"


class Input:
    """Outcomes and requests produced so far; more are added when the stage drains too soon."""

    def __init__(self, config, campaigns: int, seed: int) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.campaigns = campaigns
        self.seed = seed
        self.outcomes: list[dict] = []  # type: ignore[type-arg]
        self.requests: list[dict] = []  # type: ignore[type-arg]

    def add(self, outcomes: int = 30000, requests: int = 6000) -> None:
        c, seed = self.config, self.seed + len(self.outcomes)
        o = outcome_records(outcomes, campaigns=self.campaigns, arms=ARMS, seed=seed)
        r = request_records(requests, campaigns=self.campaigns, seed=seed)
        produce(c, c.topics.bid_outcomes, "BidOutcome", o, "campaign_id")
        produce(c, c.topics.bid_requests, "BidRequest", r, "campaign_id")
        self.outcomes += o
        self.requests += r


def test_end_to_end_closed_loop(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(bootstrap, tmp_path)
    make_topics(config, partitions=2)
    stage = StageProcess(config, path, "e2e", tmp_path / "stage.log").start().wait_ready()
    try:
        report = run_simulation(
            config, campaigns=6, requests=600, trades=150, rate=400.0, seed=3, timeout_s=60.0
        )
        assert report.requests_sent == 600
        assert report.decisions == 600, stage.log_tail()
        assert report.duplicate_decisions == 0
        assert report.outcomes_sent > 0
        assert report.trades_sent == 150
        wait_for(lambda: drained(config), timeout=60, description="input drained")
        text = stage.metrics()
        assert "bandit_processor_transactions_total" in text
    finally:
        assert stage.stop() == 0, stage.log_tail()
    decisions = read_all(config, config.topics.bid_decisions, "BidDecision")
    assert len({d["request_id"] for d in decisions}) == len(decisions) == 600
    assert all(0.0 < d["propensity"] <= 1.0 for d in decisions)
    weights = read_all(config, config.topics.ensemble_weights, "EnsembleWeights")
    assert weights, "no ensemble weights were published"
    assert abs(sum(weights[-1]["weights"].values()) - 1.0) < 1e-9
    assert weights[-1]["total_steps"] >= 1
    # `state show` reads the committed changelog.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "processor",
            "state",
            "show",
            "--bootstrap-servers",
            bootstrap,
            "--config",
            str(path),
            "--key",
            "ens-0",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["exp3ix"]["total_steps"] == 150
    assert set(shown["exp3ix"]["arm_names"]) == set(config.ensemble.arm_names)


def test_crash_mid_stream_restores_exact_state(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(
        bootstrap, tmp_path, commit_every_events=200, max_batch_events=200, **FAST_GROUP
    )
    make_topics(config, partitions=3)
    data = Input(config, campaigns=12, seed=11)
    data.add()
    log = tmp_path / "stage.log"
    kill_mid_stream(config, path, "crashy", log, 3, data.add)
    run_until_drained(config, path, "crashy", log)
    assert_exact_thompson(config, data.outcomes)
    assert_each_request_answered_once(config, data.requests)


def test_rebalance_survivor_restores_exact_state(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(
        bootstrap, tmp_path, commit_every_events=500, max_batch_events=500, **FAST_GROUP
    )
    make_topics(config, partitions=4)
    first = outcome_records(8000, campaigns=16, arms=ARMS, seed=21)
    produce(config, config.topics.bid_outcomes, "BidOutcome", first, "campaign_id")
    a = StageProcess(config, path, "a", tmp_path / "a.log").start()
    b = StageProcess(config, path, "b", tmp_path / "b.log").start()
    try:
        a.wait_ready(90)
        b.wait_ready(90)
        wait_for(lambda: drained(config), timeout=120, description="first half drained")
        second = outcome_records(8000, campaigns=16, arms=ARMS, seed=22)
        requests = request_records(2000, campaigns=16, seed=22)
        produce(config, config.topics.bid_outcomes, "BidOutcome", second, "campaign_id")
        produce(config, config.topics.bid_requests, "BidRequest", requests, "campaign_id")
        a.kill()
        wait_for(lambda: drained(config), timeout=180, description="survivor drained everything")
        assert "assigned partitions" in b.log_tail(200)
    finally:
        assert b.stop() == 0, b.log_tail()
    assert_exact_thompson(config, first + second)
    assert_each_request_answered_once(config, requests)


def test_restart_restores_state_and_same_id_fences_the_older(
    bootstrap: str, tmp_path: Path
) -> None:
    config, path = app_config(bootstrap, tmp_path, **FAST_GROUP)
    make_topics(config, partitions=2)
    outcomes = outcome_records(3000, campaigns=5, arms=ARMS, seed=31)
    produce(config, config.topics.bid_outcomes, "BidOutcome", outcomes, "campaign_id")
    log = tmp_path / "stage.log"
    stage = StageProcess(config, path, "same", log).start().wait_ready()
    wait_for(lambda: drained(config), timeout=90, description="drained")
    assert stage.stop() == 0
    before = committed_state(config)
    # Restart: the state is restored from the changelog, then more events are added to it.
    more = outcome_records(1000, campaigns=5, arms=ARMS, seed=32)
    older = StageProcess(config, path, "same", log).start().wait_ready()
    produce(config, config.topics.bid_outcomes, "BidOutcome", more, "campaign_id")
    wait_for(lambda: drained(config), timeout=90, description="drained after restart")
    assert_exact_thompson(config, outcomes + more)
    assert before  # the first run committed state
    # A second instance with the same transactional id fences the first, which exits non-zero.
    newer = StageProcess(config, path, "same", tmp_path / "newer.log").start()
    wait_for(
        lambda: "transactional producer ready" in newer.log_tail(),
        timeout=60,
        description="newer instance initialised its transactions",
    )
    produce(
        config,
        config.topics.bid_outcomes,
        "BidOutcome",
        outcome_records(500, campaigns=5, arms=ARMS, seed=33),
        "campaign_id",
    )
    assert older.proc is not None
    try:
        older.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fenced instance kept running:\n{older.log_tail()}")
    assert older.proc.returncode == 3, older.log_tail()
    assert "fatal" in older.log_tail(100).lower()
    newer.wait_ready(90)
    wait_for(lambda: drained(config), timeout=120, description="newer instance drained")
    assert newer.stop() == 0, newer.log_tail()


def test_at_least_once_crashes_lose_nothing(bootstrap: str, tmp_path: Path) -> None:
    # At-least-once commits a cycle's offsets asynchronously once its records (decisions and
    # changelog) are acknowledged, while the loop goes on. SIGKILL right after commits, three
    # times: every request is still answered and no reward is lost from the state (some may
    # count twice: that is the guarantee's price, so only lower bounds are asserted).
    config, path = app_config(
        bootstrap,
        tmp_path,
        processing_guarantee="at_least_once",
        commit_every_events=200,
        max_batch_events=200,
        **FAST_GROUP,
    )
    make_topics(config, partitions=3)
    data = Input(config, campaigns=12, seed=12)
    data.add()
    log = tmp_path / "stage.log"
    kill_mid_stream(config, path, "alo", log, 3, data.add)
    run_until_drained(config, path, "alo", log)
    decisions = read_all(
        config, config.topics.bid_decisions, "BidDecision", isolation="read_uncommitted"
    )
    missing = {r["request_id"] for r in data.requests} - {d["request_id"] for d in decisions}
    assert not missing, f"{len(missing)} requests unanswered, e.g. {sorted(missing)[:3]}"
    views = committed_state(config)
    for campaign, arms in expected_counts(data.outcomes).items():
        counts = thompson_counts(views[("campaign", campaign)])
        for arm, (succ, fail) in arms.items():
            got = counts[arm]
            assert got[0] >= succ and got[1] >= fail, (campaign, arm, got, (succ, fail))
