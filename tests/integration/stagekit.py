"""Helpers for driving the real stage (``python -m processor run``) in integration tests."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from processor.cli.commands import key_state_view
from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig, TopicsConfig, config_from_dict
from processor.engine import PartitionEngine
from processor.kafka.clients import make_admin
from processor.kafka.topics import create_topics
from processor.state.changelog import read_changelog
from processor.testing import free_port, stage_ready, stop_process, unique_name, wait_for

SERDES = SerdeRegistry()


def app_config(bootstrap: str, tmp: Path, **overrides: Any) -> tuple[AppConfig, Path]:
    """A config with unique topic names, written to a YAML file for the subprocess."""
    app_id = unique_name("app")
    data: dict[str, Any] = {
        "app_id": app_id,
        "bootstrap_servers": bootstrap,
        "commit_interval_ms": 100,
        "topics": {
            name: f"{app_id}-{name.replace('_', '-')}"
            for name in (f.name for f in dataclasses.fields(TopicsConfig))
        },
    }
    data.update(overrides)
    path = tmp / f"{app_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_from_dict(data), path


def make_topics(config: AppConfig, partitions: int, replication_factor: int = 1) -> None:
    create_topics(make_admin(config), config, partitions, replication_factor=replication_factor)


@dataclass
class StageProcess:
    """A stage instance running as a subprocess."""

    config: AppConfig
    config_path: Path
    instance_id: str
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    #: No --instance-id / --metrics-port: the stage takes a host-local slot (locks under
    #: ``lock_dir``) and serves on 9400 + slot; ``port`` is read from its log.
    default_ports: bool = False
    lock_dir: Path | None = None

    def start(self) -> StageProcess:
        if self.default_ports:
            self.port = 0
            ids: list[str] = []
        else:
            self.port = free_port()
            ids = ["--instance-id", self.instance_id, "--metrics-port", str(self.port)]
        cmd = [
            sys.executable,
            "-m",
            "processor",
            "run",
            "--config",
            str(self.config_path),
            *ids,
            *self.extra_args,
        ]
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.lock_dir is not None:
            env["BANDIT_LOCK_DIR"] = str(self.lock_dir)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            msg = f"stage exited with {self.proc.returncode}:\n{self.log_tail()}"
            raise AssertionError(msg)
        if not self.port:
            found = re.search(r"metrics on http://\S+:(\d+)/metrics", self.log_tail(10_000))
            if found is None:
                return False
            self.port = int(found.group(1))
        return stage_ready(self.port)

    def wait_ready(self, timeout: float = 60.0) -> StageProcess:
        wait_for(self.ready, timeout=timeout, description="stage /readyz")
        return self

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return stop_process(self.proc, timeout)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def producer(config: AppConfig) -> Producer:
    return Producer(
        {
            "bootstrap.servers": config.bootstrap_servers,
            **config.kafka.common,
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )


def produce(
    config: AppConfig, topic: str, schema: str, records: Iterable[Mapping[str, Any]], key_field: str
) -> int:
    p = producer(config)
    serde = SERDES[schema]
    n = 0
    for rec in records:
        while True:
            try:
                p.produce(topic, serde.encode(rec), str(rec[key_field]).encode())
                break
            except BufferError:
                p.poll(0.1)
        n += 1
    assert p.flush(30) == 0
    return n


def produce_raw(
    config: AppConfig, topic: str, pairs: Iterable[tuple[bytes | None, bytes | None]]
) -> None:
    p = producer(config)
    for key, value in pairs:
        p.produce(topic, value, key)
    assert p.flush(30) == 0


def read_all(
    config: AppConfig,
    topic: str,
    schema: str | None,
    timeout: float = 30.0,
    isolation: str = "read_committed",
) -> list[Any]:
    """Every committed record of ``topic`` up to its current end."""
    c = Consumer(
        {
            "bootstrap.servers": config.bootstrap_servers,
            **config.kafka.common,
            "group.id": unique_name("reader"),
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    md = c.list_topics(topic, timeout=10)
    parts = list(md.topics[topic].partitions)
    # End = high watermark (a read_committed watermark is the LSO, which can lag the commit).
    probe = Consumer(
        {
            "bootstrap.servers": config.bootstrap_servers,
            **config.kafka.common,
            "group.id": unique_name("probe"),
            "isolation.level": "read_uncommitted",
        }
    )
    ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    probe.close()
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    done: set[int] = {p for p, end in ends.items() if end == 0}
    while len(done) < len(parts) and time.monotonic() < deadline:
        for msg in c.consume(1000, 0.2):
            if msg.error():
                continue
            out.append(SERDES[schema].decode(msg.value()) if schema else (msg.key(), msg.value()))
        for p in parts:
            if p not in done and c.position([TopicPartition(topic, p)])[0].offset >= ends[p]:
                done.add(p)
    c.close()
    return out


def drained(config: AppConfig) -> bool:
    """True when the group's committed offsets reached the end of every input partition."""
    c = Consumer(
        {
            "bootstrap.servers": config.bootstrap_servers,
            **config.kafka.common,
            "group.id": config.app_id,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        tps = []
        for topic in config.topics.inputs:
            md = c.list_topics(topic, timeout=10)
            tps += [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        try:
            found = c.committed(tps, timeout=10)
        except KafkaException:
            # Offsets of a dead instance's open transaction stay unstable until it times out.
            return False
        committed = {(tp.topic, tp.partition): tp.offset for tp in found}
        for tp in tps:
            _, high = c.get_watermark_offsets(tp, timeout=10)
            if high > 0 and committed[(tp.topic, tp.partition)] < high:
                return False
        return True
    finally:
        c.close()


def committed_total(config: AppConfig, topic: str) -> int:
    """Sum of the group's committed offsets over ``topic``'s partitions (0 when none yet)."""
    c = Consumer(
        {
            "bootstrap.servers": config.bootstrap_servers,
            **config.kafka.common,
            "group.id": config.app_id,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        tps = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        try:
            found = c.committed(tps, timeout=10)
        except KafkaException:
            return 0  # offsets of an open transaction are unstable until it ends
        return sum(max(tp.offset, 0) for tp in found)
    finally:
        c.close()


def committed_state(config: AppConfig) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(kind, key): state show view}`` of everything in the committed changelog."""
    topic = config.changelog_topic
    md = make_admin(config).list_topics(topic, timeout=10)
    views = {}
    for p in md.topics[topic].partitions:

        def factory(**extra: Any) -> Consumer:
            return Consumer(
                {
                    "bootstrap.servers": config.bootstrap_servers,
                    **config.kafka.common,
                    "group.id": unique_name("restore"),
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    **extra,
                }
            )

        states, _ = read_changelog(factory, topic, p, SERDES["StateRecord"])
        for (kind, key), state in states.items():
            engine = PartitionEngine(config, p, SERDES)
            engine.restore(kind, key, state)
            views[(kind, key)] = key_state_view(engine, kind, key)
    return views


def kill_mid_stream(
    config: AppConfig, path: Path, name: str, log: Path, kills: int, more: Callable[[], None]
) -> None:
    """SIGKILL the stage right after it committed something more, ``kills`` times, mid-stream
    whatever its speed: when it drains the input before a kill it is stopped and ``more()``
    produces more input."""
    done = rounds = 0
    while done < kills:
        rounds += 1
        assert rounds <= kills + 7, "the stage drains every input before a kill"
        before = committed_total(config, config.topics.bid_outcomes)
        stage = StageProcess(config, path, name, log).start().wait_ready(timeout=90)
        wait_for(
            lambda: committed_total(config, config.topics.bid_outcomes) > before,  # noqa: B023
            timeout=60,
            interval=0.01,
            description="a commit after the restart",
        )
        if drained(config):
            assert stage.stop() == 0, stage.log_tail()
            more()
            continue
        stage.kill()
        done += 1


def run_until_drained(config: AppConfig, path: Path, name: str, log: Path) -> str:
    """Start the stage, wait until it has committed every input, stop it (exit 0); returns
    its last ``/metrics`` text."""
    stage = StageProcess(config, path, name, log).start().wait_ready(timeout=90)
    try:
        wait_for(lambda: drained(config), timeout=180, description="input drained")
        return stage.metrics()
    finally:
        assert stage.stop() == 0, stage.log_tail()


def thompson_counts(view: Mapping[str, Any], prior: float = 1.0) -> dict[str, tuple[float, float]]:
    return {arm: (s["alpha"] - prior, s["beta"] - prior) for arm, s in view["thompson"].items()}


def outcome_records(n: int, campaigns: int, arms: list[str], seed: int) -> list[dict[str, Any]]:
    """Reward events with explicit success flags (exact expected counts are derivable)."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, campaigns, n)
    a = rng.integers(0, len(arms), n)
    s = rng.random(n) < 0.3
    return [
        {
            "request_id": f"o-{seed}-{i}",
            "campaign_id": f"cmp-{c[i]}",
            "arm": arms[a[i]],
            "event_time": 1_700_000_000_000 + i,
            "won": True,
            "clicks": int(s[i]),
            "conversions": int(s[i]),
            "spend": 0.0,
            "revenue": 1.0 if s[i] else 0.0,
            "reward": None,
            "success": bool(s[i]),
            "propensity": 0.25,
            "policy_version": -1,
            "budget": None,
            "target_cpa": None,
        }
        for i in range(n)
    ]


def expected_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for r in records:
        cell = out.setdefault(r["campaign_id"], {}).setdefault(r["arm"], [0, 0])
        cell[0 if r["success"] else 1] += 1
    return out


def request_records(
    n: int, campaigns: int, seed: int, start_ms: int | None = None
) -> list[dict[str, Any]]:
    t0 = int(time.time() * 1000) if start_ms is None else start_ms
    return [
        {
            "request_id": f"q-{seed}-{i}",
            "campaign_id": f"cmp-{i % campaigns}",
            "audience": "general",
            "event_time": t0 + i,
            "base_bid": 1.0,
            "base_budget": 50.0,
            "daily_budget": 1000.0,
            "spent_today": 10.0,
            "target_cpa": None,
            "utc_offset_minutes": 0,
            "context": {},
        }
        for i in range(n)
    ]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
