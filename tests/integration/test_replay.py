"""Replay against a real broker: audit a live run, repeatability, export, exact time ranges."""

from __future__ import annotations

import json
import time
from pathlib import Path

from confluent_kafka import Producer

from processor.cli.main import build_parser
from processor.cli.replay import export, replay
from processor.cli.simulate import run_simulation
from processor.codec.serde import SerdeRegistry
from processor.replay.source import read_topics
from processor.testing import create_topics, wait_for
from tests.integration.stagekit import (
    StageProcess,
    app_config,
    drained,
    make_topics,
    read_all,
    request_records,
)


def test_replay_audits_the_live_stage_and_repeats_exactly(bootstrap: str, tmp_path: Path) -> None:
    config, path = app_config(bootstrap, tmp_path)
    make_topics(config, partitions=2)
    started = int(time.time() * 1000) - 1000
    stage = StageProcess(config, path, "replay", tmp_path / "stage.log").start().wait_ready()
    try:
        report = run_simulation(
            config, campaigns=6, requests=800, trades=100, rate=400.0, seed=5, timeout_s=60.0
        )
        assert report.decisions == 800, stage.log_tail()
        wait_for(lambda: drained(config), timeout=60, description="input drained")
    finally:
        assert stage.stop() == 0, stage.log_tail()
    ended = int(time.time() * 1000) + 1000
    window = ["--from", str(started), "--to", str(ended)]
    parser = build_parser()
    common = ["--config", str(path), "--bootstrap-servers", bootstrap, *window]

    out_topic = f"{config.app_id}-replayed"
    create_topics(bootstrap, {out_topic: 2})
    args = parser.parse_args(
        [
            "replay",
            *common,
            "--verify-decisions",
            "--output-topic",
            out_topic,
            "--report",
            str(tmp_path / "a"),
        ]
    )
    first = replay(config, args, progress=False)
    ver = first["verification"]
    assert ver["decisions"] == 800
    assert ver["mismatched"] == 0, ver["mismatches"][:3]
    assert ver["verified"] == ver["matched"] == 800
    assert first["replay"]["events_by_topic"][config.topics.bid_requests] == 800
    assert first["bidding"]["outcomes"] == report.outcomes_sent
    assert len(read_all(config, out_topic, "BidDecision")) == 800

    again = replay(
        config,
        parser.parse_args(["replay", *common, "--report", str(tmp_path / "b")]),
        progress=False,
    )
    a_bytes = (tmp_path / "a" / "outputs.avro").read_bytes()
    assert a_bytes == (tmp_path / "b" / "outputs.avro").read_bytes()
    assert again["outputs"]["sha256"] == first["outputs"]["sha256"]

    dump = tmp_path / "dump.avro"
    topics = [*config.topics.inputs, config.topics.bid_decisions]
    n = export(
        config,
        parser.parse_args(
            [
                "export",
                "--bootstrap-servers",
                bootstrap,
                *window,
                "--topics",
                *topics,
                "--out",
                str(dump),
            ]
        ),
    )
    assert n == sum(first["replay"]["events_by_topic"].values()) + 800
    from_file = replay(
        config,
        parser.parse_args(
            [
                "replay",
                *common,
                "--input",
                str(dump),
                "--verify-decisions",
                "--report",
                str(tmp_path / "c"),
            ]
        ),
        progress=False,
    )
    assert from_file["outputs"]["sha256"] == first["outputs"]["sha256"]
    assert from_file["verification"]["mismatched"] == 0
    assert (tmp_path / "c" / "report.html").stat().st_size > 10_000
    assert json.loads((tmp_path / "c" / "report.json").read_text())["bidding"]["estimates"]


def test_time_range_reads_exactly_the_events_in_it(bootstrap: str, tmp_path: Path) -> None:
    config, _ = app_config(bootstrap, tmp_path)
    make_topics(config, partitions=3)
    t0 = 1_700_000_000_000
    serde = SerdeRegistry()["BidRequest"]
    records = request_records(300, campaigns=9, seed=1, start_ms=t0)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, rec in enumerate(records):
        producer.produce(
            config.topics.bid_requests,
            serde.encode(rec),
            rec["campaign_id"].encode(),
            timestamp=t0 + 1000 * i,
        )
    assert producer.flush(30) == 0
    lo, hi = t0 + 1000 * 100, t0 + 1000 * 199
    parts = read_topics(config, [config.topics.bid_requests], lo, hi, SerdeRegistry())
    got = sorted(r.timestamp for rs in parts.values() for r in rs)
    assert got == [t0 + 1000 * i for i in range(100, 200)]
    assert len(parts) == 3
    empty = read_topics(
        config, [config.topics.bid_requests], t0 + 10**9, t0 + 2 * 10**9, SerdeRegistry()
    )
    assert sum(len(v) for v in empty.values()) == 0
