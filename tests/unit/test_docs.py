"""The README, the config reference and --help tell the truth."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from processor.cli.main import ENV, build_parser
from processor.config import (
    AppConfig,
    AttributionConfig,
    EnsembleConfig,
    KafkaConfig,
    LimitsConfig,
    TopicsConfig,
)
from processor.kafka.acls import stage_grants
from processor.policy.bidding import BiddingConfig
from processor.policy.safety import SafetyConstraints

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "cls",
    [
        AppConfig,
        TopicsConfig,
        BiddingConfig,
        SafetyConstraints,
        EnsembleConfig,
        LimitsConfig,
        KafkaConfig,
        AttributionConfig,
    ],
)
def test_every_setting_is_in_the_readme_config_table(cls: type) -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in table]
    assert not missing, f"{cls.__name__} settings missing from README: {missing}"


def test_every_environment_variable_is_named_in_help_and_readme() -> None:
    parser = build_parser()
    helps = []
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            helps.append(sub.format_help())
            for inner in (
                getattr(sub, "_subparsers", None)._group_actions if sub._subparsers else []
            ):
                helps.extend(p.format_help() for p in inner.choices.values())
    text = " ".join(helps)
    for var in ENV.values():
        assert var in text, f"{var} not in --help"
        assert var in README, f"{var} not in README"


def test_readme_commands_exist() -> None:
    pattern = (
        r"bandit-processor ((?:topics create)|(?:state show)|(?:config show)|(?:config schema)"
        r"|run|simulate|replay|export)\b"
    )
    commands = set(re.findall(pattern, README))
    assert commands == {
        "topics create",
        "state show",
        "config show",
        "config schema",
        "run",
        "simulate",
        "replay",
        "export",
    }
    parser = build_parser()
    required = {
        "state": ["--key", "k"],
        "replay": ["--from", "a", "--to", "b", "--report", "r"],
        "export": ["--from", "a", "--to", "b", "--topics", "t", "--out", "o"],
    }
    for cmd in commands:
        args = cmd.split()
        parser.parse_args(args + required.get(args[0], []))


def test_every_exported_metric_is_in_the_readme() -> None:
    from processor.observability.metrics import REGISTRY

    names = {metric.name for metric in REGISTRY.collect()}
    section = README.split("## Operations", 1)[1].split("\n## ", 1)[0]
    missing = sorted(n for n in names if n not in section)
    assert not missing, f"metrics missing from README: {missing}"


def test_deploy_readme_lists_exactly_the_grants_the_stage_needs() -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    section = text.split("## Least privileges", 1)[1].split("\n## ", 1)[0]
    rows = {line for line in section.splitlines() if line.startswith("| ") and "`" in line}
    wanted = {
        f"| {g.resource} | `{g.name}` | {g.pattern} | {g.operation} | {g.why} |"
        for g in stage_grants(AppConfig(app_id="<app_id>"))
    }
    assert rows == wanted
