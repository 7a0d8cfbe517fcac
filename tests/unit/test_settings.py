"""Where settings come from (flags > environment > YAML > defaults), config show / schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from processor.cli.main import ENV, build_parser, main, resolve_args
from processor.cli.settings import resolve
from processor.config import (
    AppConfig,
    config_from_dict,
    config_json_schema,
    config_to_dict,
)
from processor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _show(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["config", "show", "--json", *argv]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def _errors(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()


@pytest.mark.parametrize(
    ("yaml_text", "line"),
    [
        (
            "commit_interval_ms: abc\n",
            "commit_interval_ms: 'abc' is invalid: should be a valid integer",
        ),
        ("max_batch_events: 1.5\n", "max_batch_events: 1.5 is invalid: should be a valid integer"),
        (
            "safety:\n  max_cpa_multiplier: -1\n",
            "safety.max_cpa_multiplier: -1 is invalid: should be greater than 0",
        ),
        (
            "bidding:\n  arms: {a: [1.0, 0]}\n  conservative_arm: a\n",
            "bidding.arms.a.budget_multiplier: 0 is invalid: should be greater than 0",
        ),
        ("metrics_port: 70000\n", "metrics_port: 70000 is invalid"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, yaml_text: str, line: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    lines = _errors(capsys, "config", "show", "--config", str(path))
    assert len(lines) == 1
    assert lines[0].startswith(f"bandit-processor: error: {line}")
    assert lines[0].endswith(f"(in {path})")


def test_a_quoted_port_is_a_port_and_every_bad_setting_gets_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('metrics_port: "9411"\n')
    assert _show(capsys, "--config", str(path))["metrics_port"] == 9411
    path.write_text(
        "commit_interval_ms: abc\nmax_batch_events: 1.5\nlimits: {max_map_entries: 0}\n"
    )
    lines = _errors(capsys, "run", "--config", str(path))
    assert [line.split(":")[2].strip() for line in lines] == [
        "commit_interval_ms",
        "max_batch_events",
        "limits.max_map_entries",
    ]


def test_direct_construction_raises_config_error_naming_the_setting() -> None:
    from processor.policy.bidding import BiddingConfig
    from processor.policy.safety import SafetyConstraints

    with pytest.raises(ConfigError, match=r"^commit_interval_ms: 'abc' is invalid"):
        AppConfig(commit_interval_ms="abc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^max_batch_events: True is invalid"):
        AppConfig().replace(max_batch_events=True)
    with pytest.raises(ConfigError, match=r"^safety\.max_cpa_multiplier: 0 is invalid"):
        SafetyConstraints(max_cpa_multiplier=0)
    with pytest.raises(ConfigError, match=r"^bidding\.reward: 'vibes' is invalid"):
        BiddingConfig.from_dict({"reward": "vibes"})
    assert AppConfig(metrics_port="9400").metrics_port == 9400  # type: ignore[arg-type]


def test_unknown_settings_name_the_setting_and_the_allowed_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("attribution:\n  windw_ms: 5\n")
    (line,) = _errors(capsys, "config", "show", "--config", str(path))
    assert "unknown setting attribution.windw_ms" in line
    assert "allowed: enabled, grace_ms, late, max_entries, unknown, window_ms" in line
    path.write_text("")
    monkeypatch.setenv("BANDIT_SAFETY__TYPO", "1")
    (line,) = _errors(capsys, "config", "show", "--config", str(path))
    assert "unknown setting safety.typo (from BANDIT_SAFETY__TYPO); allowed: " in line
    # A BANDIT_ variable that is no top-level setting is another tool's (BANDIT_LOCK_DIR, ...).
    monkeypatch.delenv("BANDIT_SAFETY__TYPO")
    monkeypatch.setenv("BANDIT_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("BANDIT_KAFKA_CACHE", str(tmp_path))
    assert _show(capsys)["app_id"] == "bandit-processor"


def test_todays_environment_variables_still_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("commit_interval_ms: 250\n")
    values = {
        "bootstrap_servers": "env-broker:9092",
        "app_id": "env-app",
        "instance_id": "pod-7",
        "metrics_port": "9555",
        "processing_guarantee": "at_least_once",
        "schema_registry_url": "http://registry:8081",
    }
    for name, value in values.items():
        monkeypatch.setenv(ENV[name], value)
    monkeypatch.setenv(ENV["config"], str(path))
    shown = _show(capsys)
    assert {name: shown[name] for name in values} == {**values, "metrics_port": 9555}
    assert shown["commit_interval_ms"] == 250  # BANDIT_CONFIG was read
    monkeypatch.setenv(ENV["log_level"], "warning")
    monkeypatch.setenv(ENV["log_format"], "json")
    import logging

    assert main(["config", "show"]) == 0
    root = logging.getLogger()
    assert root.level == logging.WARNING
    assert type(root.handlers[0].formatter).__name__ == "JsonFormatter"
    monkeypatch.setenv(ENV["log_level"], "loud")
    (line,) = _errors(capsys, "config", "show")
    assert "BANDIT_LOG_LEVEL: 'LOUD' is invalid" in line
    monkeypatch.delenv(ENV["log_level"])
    monkeypatch.setenv(ENV["metrics_port"], "ninety")
    (line,) = _errors(capsys, "config", "show")
    assert "metrics_port: 'ninety' is invalid" in line
    assert line.endswith("(from BANDIT_METRICS_PORT)")


def test_nested_settings_have_variables_merged_with_the_yaml_section(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("safety:\n  min_roas: 0.8\n  max_cpa_multiplier: 2.5\n")
    monkeypatch.setenv("BANDIT_SAFETY__MAX_CPA_MULTIPLIER", "3")
    monkeypatch.setenv("BANDIT_SAFETY__BLACKLISTED_AUDIENCES", '["minors", "bots"]')
    monkeypatch.setenv("bandit_attribution__window_ms", "60000")  # names are case-insensitive
    monkeypatch.setenv("BANDIT_KAFKA__COMMON", '{"sasl.username": "svc", "linger.ms": 5}')
    cfg = resolve({}, str(path)).config
    assert cfg.safety.max_cpa_multiplier == 3.0
    assert cfg.safety.min_roas == 0.8  # the rest of the YAML section stays
    assert cfg.safety.blacklisted_audiences == ("minors", "bots")
    assert cfg.attribution.window_ms == 60000
    assert dict(cfg.kafka.common) == {"sasl.username": "svc", "linger.ms": "5"}
    monkeypatch.setenv("BANDIT_SAFETY__MAX_CPA_MULTIPLIER", "-2")
    (line,) = _errors(capsys, "config", "show", "--config", str(path))
    assert line == (
        "bandit-processor: error: safety.max_cpa_multiplier: '-2' is invalid: should be greater "
        "than 0 (from BANDIT_SAFETY__MAX_CPA_MULTIPLIER)"
    )


def test_precedence_flag_over_environment_over_yaml_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("app_id: yaml-app\nmetrics_port: 9001\nbootstrap_servers: yaml:1\n")
    parser = build_parser()

    def effective(*flags: str) -> tuple[str, int | None, str, int]:
        resolved = resolve_args(parser.parse_args(["run", "--config", str(path), *flags]))
        c = resolved.config
        return c.app_id, c.metrics_port, c.bootstrap_servers, c.commit_interval_ms

    assert effective() == ("yaml-app", 9001, "yaml:1", 100)
    monkeypatch.setenv("BANDIT_APP_ID", "env-app")
    monkeypatch.setenv("BANDIT_METRICS_PORT", "9002")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:2")
    assert effective() == ("env-app", 9002, "env:2", 100)
    monkeypatch.setenv("BANDIT_BOOTSTRAP_SERVERS", "env:3")  # the BANDIT_ name wins
    assert effective()[2] == "env:3"
    assert effective(
        "--app-id", "flag-app", "--metrics-port", "-1", "--bootstrap-servers", "f:4"
    ) == (
        "flag-app",
        None,
        "f:4",
        100,
    )
    # A flag naming another file than BANDIT_CONFIG wins too.
    other = tmp_path / "other.yaml"
    other.write_text("commit_interval_ms: 7\n")
    monkeypatch.setenv("BANDIT_CONFIG", str(path))
    assert resolve({}, str(other)).config.commit_interval_ms == 7
    assert resolve({}).config.app_id == "env-app"


def test_explicit_settings_are_those_some_source_gave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("app_id: a\n")
    assert "metrics_port" not in resolve({}, str(path)).explicit
    assert "metrics_port" in resolve({"metrics_port": 9400}, str(path)).explicit
    monkeypatch.setenv("BANDIT_METRICS_PORT", "9400")
    assert "metrics_port" in resolve({}, str(path)).explicit
    monkeypatch.delenv("BANDIT_METRICS_PORT")
    path.write_text("metrics_port: 9400\n")
    assert "metrics_port" in resolve({}, str(path)).explicit


SECRETS = {
    "kafka": {"common": {"sasl.username": "svc", "sasl.password": "hunter2"}},
    "schema_registry": {"basic.auth.user.info": "svc:reg-pass"},
    "schema_registry_url": "https://svc:url-pass@registry:8081",
}


def test_config_show_masks_secrets_and_round_trips(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**SECRETS, "ensemble": {"mode": "horizon"}}))
    monkeypatch.setenv("BANDIT_KAFKA__PRODUCER", '{"sasl.oauthbearer.config": "tok=env-pass"}')
    for as_json in (True, False):
        argv = ["config", "show", "--config", str(path), *(["--json"] if as_json else [])]
        assert main(argv) == 0
        out = capsys.readouterr().out
        for secret in ("hunter2", "reg-pass", "url-pass", "env-pass"):
            assert secret not in out
        data = json.loads(out) if as_json else yaml.safe_load(out)
        assert data["kafka"]["common"] == {"sasl.username": "svc", "sasl.password": "***"}
        assert data["kafka"]["producer"] == {"sasl.oauthbearer.config": "***"}
        assert data["schema_registry"] == {"basic.auth.user.info": "***"}
        assert data["schema_registry_url"] == "https://***@registry:8081"
        assert data["ensemble"]["mode"] == "horizon"
        assert config_from_dict(data).ensemble.arm_names == ("5m", "15m", "60m")
    config = config_from_dict(SECRETS)
    assert config_from_dict(config_to_dict(config, masked=False)) == config
    assert config.schema_registry_url == SECRETS["schema_registry_url"]  # the value is intact


def test_repr_masks_secrets() -> None:
    text = repr(config_from_dict(SECRETS))
    for secret in ("hunter2", "reg-pass", "url-pass"):
        assert secret not in text
    assert "'sasl.username': 'svc'" in text


def test_schema_is_a_json_schema_that_accepts_valid_and_rejects_invalid_configs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(config_json_schema()))
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    validator.validate(config_to_dict(AppConfig(), masked=False))
    validator.validate(json.loads(json.dumps(config_to_dict(config_from_dict(SECRETS)))))
    readme = (ROOT / "README.md").read_text().split("## Configuration", 1)[1]
    example = yaml.safe_load(readme.split("```yaml", 1)[1].split("```", 1)[0])
    validator.validate(example)
    config_from_dict(example)
    for bad in (
        {"commit_interval_ms": 1.5},
        {"commit_interval_ms": "abc"},
        {"bogus": 1},
        {"safety": {"typo": 1}},
        {"ensemble": {"mode": "everything"}},
        {"bidding": {"arms": {"a": [1.0]}}},
    ):
        assert not validator.is_valid(bad), bad
