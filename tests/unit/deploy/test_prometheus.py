"""Alert rules and the Prometheus config: promtool checks and metric names that exist."""

from __future__ import annotations

import yaml

from tests.unit.deploy.promkit import DEPLOY, exported_names, names_in, promtool

RULES = DEPLOY / "prometheus" / "alerts.yml"


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_config() -> None:
    done = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_cover_the_issue_and_use_exported_metrics() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    for required in (
        "BanditProcessorDown",
        "BanditProcessorConsumerLagGrowing",
        "BanditProcessorDeadLetterRate",
        "BanditProcessorEmergencyMode",
        "BanditProcessorTransactionsAborted",
    ):
        assert required in names
    exported = exported_names()
    for rule in rules:
        used = names_in(rule["expr"])
        assert used <= exported, (rule["alert"], used - exported)
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_scrape_config_targets_the_stage_port_with_the_alerts_job() -> None:
    conf = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = conf["scrape_configs"]
    assert job["job_name"] == "bandit-processor"
    assert job["static_configs"][0]["targets"] == ["processor:9400"]
    assert conf["rule_files"] == ["alerts.yml"]
