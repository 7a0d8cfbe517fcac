"""Config validation: every bad setting is a ConfigError that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.cli.main import build_config, build_parser
from processor.config import AppConfig, config_from_dict, load_config
from processor.errors import ConfigError


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"nope": 1}, "nope"),
        ({"processing_guarantee": "maybe"}, "processing_guarantee"),
        ({"commit_interval_ms": 0}, "commit_interval_ms"),
        ({"app_id": "has space"}, "app_id"),
        ({"topics": {"bid_requests": "x", "bid_outcomes": "x"}}, "distinct"),
        ({"topics": {"typo": "x"}}, "typo"),
        ({"ensemble": {"mode": "everything"}}, "ensemble.mode"),
        ({"ensemble": {"reward_range": [5, 5]}}, "reward_range"),
        ({"ensemble": {"base_weights": {"a": -1}}}, "base_weights"),
        ({"ensemble": {"blend_alpha": 2}}, "blend_alpha"),
        ({"limits": {"max_string_length": 0}}, "limits"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"bidding": {"reward": "vibes"}}, "reward"),
        ({"safety": {"unknown": 1}}, "unknown"),
    ],
)
def test_bad_settings_are_rejected_by_name(data: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(data)


def test_yaml_file_flags_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("app_id: from-file\nbootstrap_servers: file:1\nensemble:\n  mode: horizon\n")
    assert load_config(path).ensemble.arm_names == ("5m", "15m", "60m")
    args = build_parser().parse_args(["run", "--config", str(path), "--app-id", "from-flag"])
    cfg = build_config(args)
    assert (cfg.app_id, cfg.bootstrap_servers) == ("from-flag", "file:1")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:2")
    monkeypatch.setenv("BANDIT_PROCESSING_GUARANTEE", "at_least_once")
    args = build_parser().parse_args(["run", "--config", str(path)])
    cfg = build_config(args)
    assert cfg.bootstrap_servers == "env:2"
    assert not cfg.exactly_once
    args = build_parser().parse_args(
        ["run", "--config", str(path), "--bootstrap-servers", "flag:3", "--metrics-port", "-1"]
    )
    cfg = build_config(args)
    assert cfg.bootstrap_servers == "flag:3"
    assert cfg.metrics_port is None


def test_missing_or_invalid_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_defaults_are_valid_and_family_horizon_arm_names() -> None:
    cfg = AppConfig()
    assert cfg.exactly_once
    assert cfg.changelog_topic == "bandit-processor-state-changelog"
    fh = config_from_dict(
        {"ensemble": {"mode": "family_horizon", "families": ["a"], "horizons": ["1m", "5m"]}}
    )
    assert fh.ensemble.arm_names == ("a:1m", "a:5m")


def test_cli_errors_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from processor.cli.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("processing_guarantee: sometimes\n")
    assert main(["topics", "create", "--config", str(bad)]) == 2
    assert "processing_guarantee" in capsys.readouterr().err
