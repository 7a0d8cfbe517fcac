"""A running stage's /metrics, /healthz and /readyz: exposition valid for promtool, series there."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from processor.cli.simulate import run_simulation
from processor.testing import wait_for
from tests.integration.stagekit import StageProcess, app_config, drained, make_topics
from tests.unit.deploy.promkit import exported_names, promtool

PARTITIONS = 2


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_scrape_a_running_stage(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(bootstrap, tmp_path)
    make_topics(config, partitions=PARTITIONS)
    stage = StageProcess(config, path, "metrics", tmp_path / "stage.log").start().wait_ready()
    try:
        assert _status(stage.port, "/healthz") == 200
        assert _status(stage.port, "/readyz") == 200
        assert _status(stage.port, "/nothing-here") == 404
        report = run_simulation(
            config, campaigns=6, requests=400, trades=100, rate=800, seed=5, timeout_s=60
        )
        assert report.decisions == report.requests_sent == 400
        wait_for(lambda: drained(config), 60, interval=0.3, description="inputs committed")
        inputs = config.topics.inputs

        def settled() -> str | None:
            text = stage.metrics()
            samples = _samples(text)
            lag = {
                (dict(k)["topic"], dict(k)["partition"])
                for n, k in samples
                if n == "bandit_processor_consumer_lag_messages"
            }
            wanted = {(t, str(p)) for t in inputs for p in range(PARTITIONS)}
            names = {n for n, _ in samples}
            ready = (
                lag == wanted
                and "bandit_processor_arm_posterior_mean" in names
                and "bandit_processor_ensemble_arm_weight" in names
            )
            return text if ready else None

        # The lag and per-arm gauges refresh every 1 s and 5 s.
        text = wait_for(settled, 30, interval=0.5, description="lag and per-arm gauges")
    finally:
        code = stage.stop()
    assert code == 0, stage.log_tail()

    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout

    samples = _samples(text)
    names = {n for n, _ in samples}
    assert names <= exported_names() | {"bandit_processor_build_info"}

    def value(name: str, **labels: str) -> float:
        return sum(
            v
            for (n, k), v in samples.items()
            if n == name and all(dict(k).get(a) == b for a, b in labels.items())
        )

    t = config.topics
    assert value("bandit_processor_events_consumed_total", topic=t.bid_requests) == 400
    assert value("bandit_processor_events_consumed_total", topic=t.bid_outcomes) > 0
    assert value("bandit_processor_events_consumed_total", topic=t.trade_outcomes) == 100
    assert value("bandit_processor_events_produced_total", topic=t.bid_decisions) == 400
    assert value("bandit_processor_decisions_total") == 400
    assert value("bandit_processor_arm_selections_total") == 400
    assert value("bandit_processor_decision_latency_seconds_count") == 400
    assert value("bandit_processor_transactions_total", outcome="committed") > 0
    assert value("bandit_processor_transactions_total", outcome="aborted") == 0
    assert value("bandit_processor_consumer_lag_messages") == 0  # drained
    assert value("bandit_processor_state_keys", kind="campaign") == 6
    assert value("bandit_processor_assigned_partitions") == PARTITIONS
    assert value("bandit_processor_restoring_partitions") == 0
    assert value("bandit_processor_ready") == 1
    assert value("bandit_processor_up") == 1
    # one restore pass for the partitions assigned together (a single instance: all of them)
    assert value("bandit_processor_restore_duration_seconds_count") == 1
    shares = [v for (n, _), v in samples.items() if n == "bandit_processor_arm_selection_ratio"]
    assert shares and abs(sum(shares) - 1.0) < 1e-9
    for name in (
        "bandit_processor_ensemble_arm_probability",
        "bandit_processor_ensemble_arm_weight",
    ):
        per_ensemble = [v for (n, k), v in samples.items() if n == name]
        assert abs(sum(per_ensemble) - 1.0) < 1e-9  # one ensemble (ens-0): sums to 1
    means = [v for (n, _), v in samples.items() if n == "bandit_processor_arm_posterior_mean"]
    assert means and all(0.0 < m < 1.0 for m in means)
