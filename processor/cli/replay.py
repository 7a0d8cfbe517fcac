"""``bandit-processor replay`` and ``export``."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from processor.codec.serde import SerdeRegistry, make_registry_client
from processor.config import AppConfig
from processor.errors import ConfigError, ProcessorError
from processor.kafka.clients import admin_config
from processor.replay.backtest import BacktestResult, Progress, run_backtest
from processor.replay.report import build_report, write_report
from processor.replay.source import (
    RawRecord,
    iso,
    merge,
    parse_time,
    read_files,
    read_topics,
    schema_by_topic,
    write_records,
)
from processor.replay.verify import verify_decisions

logger = logging.getLogger(__name__)

OUTPUTS_FILE = "outputs.avro"


def _serdes(config: AppConfig) -> SerdeRegistry:
    if config.schema_registry_url:
        return SerdeRegistry(
            make_registry_client(config.schema_registry_url, config.schema_registry)
        )
    return SerdeRegistry()


def _range(args: argparse.Namespace) -> tuple[int, int]:
    from_ms, to_ms = parse_time(args.from_time), parse_time(args.to_time)
    if from_ms > to_ms:
        msg = f"--from {args.from_time} is after --to {args.to_time}"
        raise ConfigError(msg)
    return from_ms, to_ms


def candidate_config(config: AppConfig, seed: int | None) -> AppConfig:
    """``config`` with ``bidding.seed`` overridden when ``seed`` is given."""
    if seed is None:
        return config
    return config.replace(bidding=dataclasses.replace(config.bidding, seed=seed))


def load_records(
    config: AppConfig,
    from_ms: int,
    to_ms: int,
    *,
    inputs: list[str] | None,
    verify: bool,
    serdes: SerdeRegistry,
) -> list[RawRecord]:
    """The merged event stream of the range, from the topics or from exported files.

    The bid-decisions topic is read too when decisions are verified or the reward join is on
    (the join matches outcomes to the decisions the live stage logged).
    """
    topics = list(config.topics.inputs)
    if verify or config.attribution.enabled:
        topics.append(config.topics.bid_decisions)
    if inputs:
        parts = read_files(inputs, from_ms, to_ms, schema_by_topic(config), serdes)
        parts = {k: v for k, v in parts.items() if k[0] in topics}
    else:
        parts = read_topics(config, topics, from_ms, to_ms, serdes)
    return list(merge(parts))


def write_outputs(path: Path, result: BacktestResult, meta: dict[str, str]) -> str:
    """Write the replayed outputs (decisions and weights, in order); returns their sha256."""
    records = [
        RawRecord(o.event_time, o.topic, 0, i, o.event_time, o.key, o.value)
        for i, o in enumerate(result.outputs)
    ]
    write_records(path, records, meta)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def produce_outputs(config: AppConfig, topic: str, result: BacktestResult) -> int:
    """Produce the replayed bid decisions to ``topic`` (never a topic the stage consumes)."""
    if topic in config.topics.inputs:
        msg = f"--output-topic {topic} is an input topic of the stage; refusing to write to it"
        raise ConfigError(msg)
    conf = admin_config(config)
    conf.update({"enable.idempotence": True, "linger.ms": 5})
    producer = Producer(conf)
    meta = producer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        msg = f"--output-topic {topic} does not exist; create it first"
        raise ConfigError(msg)
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    n = 0
    for out in result.outputs:
        if out.topic != config.topics.bid_decisions:
            continue
        while True:
            try:
                producer.produce(
                    topic, out.value, out.key, timestamp=out.event_time, on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    if producer.flush(60) != 0 or errors:
        msg = f"could not deliver every replayed decision to {topic}: {errors[:3]}"
        raise ProcessorError(msg)
    return n


def replay(config: AppConfig, args: argparse.Namespace, progress: bool = True) -> dict[str, Any]:
    """Run ``replay`` and write the report; returns the report document."""
    from_ms, to_ms = _range(args)
    config = candidate_config(config, args.seed)
    serdes = _serdes(config)
    merged = load_records(
        config, from_ms, to_ms, inputs=args.input, verify=args.verify_decisions, serdes=serdes
    )
    inputs = set(config.topics.inputs)
    total = sum(1 for r in merged if r.topic in inputs)
    bar = Progress(total) if progress else None
    result = run_backtest(config, merged, progress=bar, serdes=serdes)
    verification = (
        verify_decisions(config, merged, serdes).to_dict() if args.verify_decisions else None
    )
    folder = Path(args.report)
    folder.mkdir(parents=True, exist_ok=True)
    file_meta = {"bandit.from": str(from_ms), "bandit.to": str(to_ms), "bandit.kind": "replay"}
    digest = write_outputs(folder / OUTPUTS_FILE, result, file_meta)
    produced = produce_outputs(config, args.output_topic, result) if args.output_topic else 0
    meta: dict[str, Any] = {
        "from": iso(from_ms),
        "to": iso(to_ms),
        "from_ms": from_ms,
        "to_ms": to_ms,
        "source": {"files": list(args.input)} if args.input else {"topics": sorted(inputs)},
        "candidate": {
            "seed": config.bidding.seed,
            "arms": list(config.bidding.arm_names),
            "max_batch_events": config.max_batch_events,
            "batch_rule": "consecutive events of the merged stream, max_batch_events per batch",
        },
        "outputs": {
            "file": OUTPUTS_FILE,
            "records": len(result.outputs),
            "sha256": digest,
            "output_topic": args.output_topic,
            "produced": produced,
        },
    }
    report = build_report(result, meta, verification, seed=config.bidding.seed)
    write_report(folder, report)
    return report


def headline(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal."""
    rep, bid = report["replay"], report["bidding"]
    lines = [
        f"replayed {rep['events']} events ({report['from']} .. {report['to']}) at "
        f"{report['run']['events_per_s']:,.0f} events/s; outputs sha256 "
        f"{report['outputs']['sha256'][:16]}",
    ]
    if bid.get("outcomes"):
        for name, est in bid["estimates"].items():
            if est["value"] is not None:
                lines.append(
                    f"  {name:14s} {est['value']:10.4f}  CI [{est['ci_low']:.4f}, "
                    f"{est['ci_high']:.4f}]  ESS {est['ess']:.0f}"
                )
    if "verification" in report:
        v = report["verification"]
        lines.append(
            f"verified {v['verified']} of {v['decisions']} decisions: {v['mismatched']} "
            f"mismatches, {v['unverifiable']} unverifiable"
        )
        for m in v["mismatches"][:10]:
            lines.append(f"  mismatch {m['request_id']}: {m['differs']}")
    return lines


def cmd_replay(config: AppConfig, args: argparse.Namespace) -> int:
    """Replay a time range through ``config`` and write a report.

    Returns 1 when ``--verify-decisions`` found a mismatch, else 0.
    """
    report = replay(config, args, progress=True)
    for line in headline(report):
        print(line)
    print(f"report: {Path(args.report) / 'report.html'}")
    if "verification" in report and report["verification"]["mismatched"]:
        return 1
    return 0


def export(config: AppConfig, args: argparse.Namespace) -> int:
    """Write the range of ``args.topics`` to ``args.out``; returns the number of records."""
    from_ms, to_ms = _range(args)
    parts = read_topics(config, args.topics, from_ms, to_ms, _serdes(config))
    records = [r for key in sorted(parts) for r in parts[key]]
    meta = {
        "bandit.from": str(from_ms),
        "bandit.to": str(to_ms),
        "bandit.topics": ",".join(args.topics),
        "bandit.kind": "export",
    }
    return write_records(args.out, records, meta)


def cmd_export(config: AppConfig, args: argparse.Namespace) -> int:
    """Export topic ranges to an Avro container file."""
    n = export(config, args)
    print(f"exported {n} records to {args.out}", file=sys.stderr)
    return 0
