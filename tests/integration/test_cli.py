"""The command line against a real broker: topics, startup checks, at-least-once mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from processor.testing import wait_for
from tests.integration.stagekit import (
    StageProcess,
    app_config,
    drained,
    make_topics,
    outcome_records,
    produce,
    read_all,
    request_records,
)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def test_topics_create_is_idempotent_and_compacts_the_changelog(
    bootstrap: str, tmp_path: Path
) -> None:
    config, path = app_config(bootstrap, tmp_path)
    first = cli("topics", "create", "--config", str(path), "--partitions", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == 8
    again = cli("topics", "create", "--config", str(path), "--partitions", "3")
    assert again.returncode == 0
    assert again.stdout.count("exists") == 8
    admin = AdminClient({"bootstrap.servers": bootstrap})
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    res = ConfigResource("topic", config.changelog_topic)
    described = admin.describe_configs([res])[res].result()
    assert described["cleanup.policy"].value == "compact"
    # Asking for another partition count than the existing topics have is an error, not "exists".
    other = cli("topics", "create", "--config", str(path), "--partitions", "4")
    assert other.returncode == 2
    assert other.stdout.count("(3 partitions, not 4)") == 7  # every co-partitioned topic
    assert "must all have 4 partitions" in other.stderr
    assert "--partitions 3" in other.stderr


def test_startup_refuses_missing_and_mismatched_topics(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(bootstrap, tmp_path)
    missing = cli("run", "--config", str(path), "--metrics-port", "-1", timeout=60)
    assert missing.returncode == 2
    assert "missing topic" in missing.stderr
    assert "topics create" in missing.stderr
    make_topics(config, partitions=2)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Recreate one input with another partition count.
    admin.delete_topics([config.topics.trade_outcomes])[config.topics.trade_outcomes].result()
    wait_for(
        lambda: config.topics.trade_outcomes not in admin.list_topics(timeout=5).topics, timeout=30
    )
    new = NewTopic(config.topics.trade_outcomes, num_partitions=3, replication_factor=1)
    admin.create_topics([new])[config.topics.trade_outcomes].result()
    wait_for(
        lambda: config.topics.trade_outcomes in admin.list_topics(timeout=5).topics, timeout=30
    )
    mismatch = cli("run", "--config", str(path), "--metrics-port", "-1", timeout=60)
    assert mismatch.returncode == 2
    assert "not co-partitioned" in mismatch.stderr
    assert f"{config.topics.trade_outcomes}=3" in mismatch.stderr


def test_state_show_for_unknown_key_exits_1(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(bootstrap, tmp_path)
    make_topics(config, partitions=1)
    out = cli("state", "show", "--config", str(path), "--key", "nobody")
    assert out.returncode == 1
    assert "no committed state" in out.stderr


def test_at_least_once_answers_every_request_and_learns(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(bootstrap, tmp_path, processing_guarantee="at_least_once")
    make_topics(config, partitions=2)
    outcomes = outcome_records(2000, campaigns=4, arms=["balanced", "aggressive"], seed=41)
    requests = request_records(500, campaigns=4, seed=41)
    produce(config, config.topics.bid_outcomes, "BidOutcome", outcomes, "campaign_id")
    stage = StageProcess(config, path, "alo", tmp_path / "stage.log").start().wait_ready()
    try:
        # the stage does not order topics by event time: requests produced with the outcomes
        # may be fetched (and decided) first, so they follow once the rewards are committed
        wait_for(lambda: drained(config), timeout=90, description="rewards drained")
        produce(config, config.topics.bid_requests, "BidRequest", requests, "campaign_id")
        wait_for(lambda: drained(config), timeout=90, description="drained")
    finally:
        assert stage.stop() == 0, stage.log_tail()
    decisions = read_all(
        config, config.topics.bid_decisions, "BidDecision", isolation="read_uncommitted"
    )
    assert {d["request_id"] for d in decisions} == {r["request_id"] for r in requests}
    # Without a crash nothing is duplicated, and later decisions saw every earlier reward.
    assert len(decisions) == len(requests)
    assert max(d["policy_version"] for d in decisions) > 0


def test_two_instances_with_default_ports_serve_metrics_on_9400_plus_slot(
    bootstrap: str, tmp_path: Path
) -> None:
    # Issue 17: with default settings the second instance on a host crashed with "Address already
    # in use". Now each takes a host-local slot and serves on 9400 + slot.
    config, path = app_config(bootstrap, tmp_path)
    make_topics(config, 2)
    locks = tmp_path / "locks"
    stages = [
        StageProcess(
            config, path, "", tmp_path / f"stage{i}.log", default_ports=True, lock_dir=locks
        )
        for i in range(2)
    ]
    try:
        for stage in stages:  # one after the other: the first takes slot 0
            stage.start().wait_ready()
        assert [stage.port for stage in stages] == [9400, 9401]
        for stage in stages:
            assert "bandit_processor_up 1.0" in stage.metrics()
        # A port set explicitly that is taken: one line naming it and the flag, exit 2.
        taken = cli("run", "--config", str(path), "--instance-id", "x", "--metrics-port", "9400")
        assert taken.returncode == 2
        errors = [line for line in taken.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1
        assert "metrics port 9400 is already in use" in errors[0]
        assert "--metrics-port N" in errors[0]
        assert "Traceback" not in taken.stderr
    finally:
        for stage in stages:
            if stage.proc is not None:
                assert stage.stop() == 0, stage.log_tail()
