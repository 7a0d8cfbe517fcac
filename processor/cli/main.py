"""The ``bandit-processor`` command.

Precedence of settings: flag > environment variable > ``--config`` YAML file > default
(:mod:`processor.cli.settings`). Every flag that has an environment variable names it in ``--help``;
every other setting has one too (``BANDIT_SECTION__NAME``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from processor import __version__
from processor.cli.settings import ENV, Resolved, command_settings, resolve
from processor.config import AppConfig
from processor.errors import ConfigError, ProcessorError

logger = logging.getLogger(__name__)

__all__ = ["ENV", "build_config", "build_parser", "main", "resolve_args", "setup_logging"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
#: Flags that set a top-level setting of the configuration (flag dest = setting name).
SETTING_FLAGS = (
    "bootstrap_servers",
    "app_id",
    "instance_id",
    "metrics_port",
    "processing_guarantee",
    "schema_registry_url",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger (only the CLI does this)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _common(p: argparse.ArgumentParser, *, app_id: bool = True) -> None:
    p.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers HOST:PORT[,...] (env KAFKA_BOOTSTRAP_SERVERS; "
        "config bootstrap_servers)",
    )
    p.add_argument(
        "--config",
        help="YAML configuration file (env BANDIT_CONFIG); see README 'Configuration'",
    )
    if app_id:
        p.add_argument(
            "--app-id",
            help="application id: consumer group, transactional.id prefix and changelog "
            "'<app-id>-state-changelog' (env BANDIT_APP_ID; default bandit-processor)",
        )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING, ERROR, CRITICAL (env BANDIT_LOG_LEVEL; default INFO)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log line format (env BANDIT_LOG_FORMAT; default text)",
    )


def _stage_flags(p: argparse.ArgumentParser) -> None:
    """The flags of settings only ``run`` uses (``config show`` takes them too)."""
    p.add_argument(
        "--instance-id",
        help="instance id; transactional.id is '<app-id>-<instance-id>' (env BANDIT_INSTANCE_ID; "
        "default '<hostname>-<slot>', stable across restarts on this host: the first instance "
        "takes slot 0, a second one running at the same time slot 1)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="port of /metrics, /healthz, /readyz; 0 picks a free port, -1 disables "
        "(env BANDIT_METRICS_PORT; config metrics_port; default 9400 + the instance slot: "
        "9400 for the first instance on a host, 9401 for a second one)",
    )
    p.add_argument(
        "--processing-guarantee",
        choices=("exactly_once", "at_least_once"),
        help="exactly_once (default): outputs, state and offsets in one transaction; "
        "at_least_once: lower latency, but after a crash rewards may be counted twice and requests "
        "answered twice (env BANDIT_PROCESSING_GUARANTEE)",
    )
    p.add_argument(
        "--schema-registry-url",
        help="use the Confluent wire format with this schema registry "
        "(env BANDIT_SCHEMA_REGISTRY_URL; default: schemaless Avro)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="bandit-processor",
        description="Exactly-once Kafka stage that learns online: Thompson sampling for bid "
        "decisions, Exp3-IX / Hedge for ensemble weights.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the stage (exactly once by default)",
        description="Run the stage until SIGTERM / SIGINT. Broker outages are waited out.",
        epilog="exit codes: 0 clean stop; 2 configuration error, missing ACL or failed "
        "authentication; 3 fatal Kafka error (fenced by another instance, or the producer could "
        "not be recovered); 4 processing failed again and again on the same input (the log "
        "names its topic, partition and offset)",
    )
    _common(run)
    _stage_flags(run)

    topics = sub.add_parser("topics", help="manage the application's topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="create every topic (the changelog compacted)")
    _common(create)
    create.add_argument(
        "--partitions",
        type=int,
        default=6,
        help="partitions of every co-partitioned topic (default 6)",
    )
    create.add_argument(
        "--replication-factor",
        type=int,
        default=-1,
        help="replication factor (default -1: the broker's default.replication.factor)",
    )

    state = sub.add_parser("state", help="inspect committed state")
    ssub = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    show = ssub.add_parser("show", help="show one key's committed state from the changelog")
    _common(show)
    show.add_argument("--key", required=True, help="a campaign_id or an ensemble_id")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sim = sub.add_parser(
        "simulate", help="drive the synthetic market in closed loop through the topics"
    )
    _common(sim)
    sim.add_argument("--campaigns", type=int, default=20, help="number of campaigns (default 20)")
    sim.add_argument(
        "--requests", type=int, default=10000, help="bid requests to send (default 10000)"
    )
    sim.add_argument(
        "--trades", type=int, default=2000, help="trade outcomes to send (default 2000)"
    )
    sim.add_argument(
        "--rate", type=float, default=1000.0, help="requests per second (default 1000)"
    )
    sim.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    sim.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="give up waiting for decisions after this many seconds (default 120)",
    )
    replay = sub.add_parser(
        "replay",
        help="replay historical topics (or exported Avro files) through a candidate config and "
        "write a backtest report",
    )
    _common(replay)
    replay.add_argument(
        "--from",
        dest="from_time",
        required=True,
        help="start of the range, ISO 8601 (e.g. 2026-11-01T00:00:00Z)",
    )
    replay.add_argument("--to", dest="to_time", required=True, help="end of the range, ISO 8601")
    replay.add_argument("--report", required=True, help="folder for report.json and report.html")
    replay.add_argument(
        "--output-topic",
        default=None,
        help="also produce the replayed decisions to this topic (default: none; "
        "replay never writes to live topics unless asked)",
    )
    replay.add_argument(
        "--input",
        nargs="+",
        default=None,
        metavar="FILE.avro",
        help="read exported Avro container files instead of the topics",
    )
    replay.add_argument(
        "--verify-decisions",
        action="store_true",
        help="re-derive every logged bid decision from its policy_version and "
        "request_id and report mismatches",
    )
    replay.add_argument(
        "--seed", type=int, default=None, help="override bidding.seed of the candidate config"
    )

    export = sub.add_parser("export", help="dump topic ranges to an Avro container file")
    _common(export, app_id=False)
    export.add_argument("--from", dest="from_time", required=True, help="start, ISO 8601")
    export.add_argument("--to", dest="to_time", required=True, help="end, ISO 8601")
    export.add_argument("--topics", nargs="+", required=True, help="topics to export")
    export.add_argument("--out", required=True, help="output file (Avro object container)")

    config = sub.add_parser(
        "config",
        help="show the effective configuration or its JSON Schema",
        description="Settings come from flags > environment variables (BANDIT_NAME, "
        "BANDIT_SECTION__NAME) > the --config YAML file > defaults.",
    )
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show_config = csub.add_parser(
        "show",
        help="print the effective configuration (after flags, environment and YAML) as YAML, "
        "secrets masked",
    )
    _common(show_config)
    _stage_flags(show_config)
    show_config.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    csub.add_parser(
        "schema",
        help="print the JSON Schema of the YAML configuration file (for editors, e.g. a YAML "
        "language server)",
    )
    return parser


def resolve_args(args: argparse.Namespace) -> Resolved:
    """The effective configuration of a parsed command line: flags > environment > YAML."""
    flags = {name: getattr(args, name, None) for name in SETTING_FLAGS}
    return resolve(flags, getattr(args, "config", None))


def build_config(args: argparse.Namespace) -> AppConfig:
    """Merge YAML, environment and flags (see :func:`processor.cli.settings.resolve`)."""
    return resolve_args(args).config


def _logging_settings(args: argparse.Namespace) -> tuple[str, str]:
    env = command_settings()
    level = getattr(args, "log_level", None) or env.get("log_level", "INFO").upper()
    fmt = getattr(args, "log_format", None) or env.get("log_format", "text")
    if level not in LOG_LEVELS:
        msg = f"BANDIT_LOG_LEVEL: {level!r} is invalid: should be one of {', '.join(LOG_LEVELS)}"
        raise ConfigError(msg)
    if fmt not in LOG_FORMATS:
        msg = f"BANDIT_LOG_FORMAT: {fmt!r} is invalid: should be one of {', '.join(LOG_FORMATS)}"
        raise ConfigError(msg)
    return level, fmt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "config" and args.config_command == "schema":
            from processor.cli.commands import cmd_config_schema

            return cmd_config_schema()
        setup_logging(*_logging_settings(args))
        resolved = resolve_args(args)
        config = resolved.config
        if args.command == "config":
            from processor.cli.commands import cmd_config_show

            return cmd_config_show(config, as_json=args.json)
        if args.command == "run":
            from processor.cli.commands import cmd_run

            return cmd_run(config, port_follows_slot="metrics_port" not in resolved.explicit)
        if args.command == "topics":
            from processor.cli.commands import cmd_topics_create

            return cmd_topics_create(config, args.partitions, args.replication_factor)
        if args.command == "state":
            from processor.cli.commands import cmd_state_show

            return cmd_state_show(config, args.key, as_json=args.json)
        if args.command == "replay":
            from processor.cli.replay import cmd_replay

            return cmd_replay(config, args)
        if args.command == "export":
            from processor.cli.replay import cmd_export

            return cmd_export(config, args)
        if args.command == "simulate":
            from processor.cli.simulate import cmd_simulate

            return cmd_simulate(config, args)
    except ProcessorError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"bandit-processor: error: {line}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover - parser.error exits
