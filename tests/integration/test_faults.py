"""Faults around the stage, on brokers of its own: a broker outage mid-stream, and the leader of a
busy partition SIGKILLed in a three-broker cluster (replication factor 3, min.insync.replicas 2).

Traffic keeps flowing through both faults (an idempotent load producer rides them out), and
afterwards the committed Thompson state equals the counts of the outcomes — each applied once —
and every request has exactly one committed decision.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from processor.config import AppConfig
from processor.testing import wait_for
from tests.integration.localkafka import LocalKafka
from tests.integration.stagekit import (
    SERDES,
    StageProcess,
    app_config,
    drained,
    make_topics,
    outcome_records,
    request_records,
)
from tests.integration.test_stage import (
    ARMS,
    FAST_GROUP,
    assert_each_request_answered_once,
    assert_exact_thompson,
)

OUTAGE_S = 15.0


class Load:
    """Sends outcomes and requests at a steady rate from a thread, through broker faults."""

    def __init__(
        self,
        config: AppConfig,
        outcomes: list[dict[str, Any]],
        requests: list[dict[str, Any]],
        seconds: float,
    ) -> None:
        self.config = config
        self.items = [(config.topics.bid_outcomes, "BidOutcome", r) for r in outcomes] + [
            (config.topics.bid_requests, "BidRequest", r) for r in requests
        ]
        # interleave outcomes and requests so both flow the whole time
        self.items.sort(key=lambda item: item[2]["request_id"][::-1])
        self.seconds = seconds
        self.sent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            p = Producer(
                {
                    "bootstrap.servers": self.config.bootstrap_servers,
                    "enable.idempotence": True,
                    "linger.ms": 5,
                    "message.timeout.ms": 300000,
                }
            )
            per_tick = max(1, int(len(self.items) / (self.seconds / 0.05)))
            for i in range(0, len(self.items), per_tick):
                for topic, schema, rec in self.items[i : i + per_tick]:
                    while True:
                        try:
                            p.produce(
                                topic, SERDES[schema].encode(rec), rec["campaign_id"].encode()
                            )
                            break
                        except BufferError:
                            p.poll(0.1)
                    self.sent += 1
                p.poll(0)
                time.sleep(0.05)  # the load's pace, not a wait for a condition
            remaining = p.flush(300)
            if remaining:
                msg = f"{remaining} load records undelivered"
                raise RuntimeError(msg)
        except BaseException as exc:
            self.error = exc

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the load producer did not finish"
        assert self.error is None, self.error


def _workload(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (
        outcome_records(24000, campaigns=12, arms=ARMS, seed=seed),
        request_records(6000, campaigns=12, seed=seed),
    )


@pytest.fixture(scope="module")
def solo() -> Iterator[LocalKafka]:
    with LocalKafka(brokers=1) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def trio() -> Iterator[LocalKafka]:
    with LocalKafka(brokers=3) as kafka:
        yield kafka


def test_broker_outage_mid_stream_is_waited_out_exactly(solo: LocalKafka, tmp_path: Path) -> None:
    config, path = app_config(
        solo.bootstrap, tmp_path, commit_every_events=500, max_batch_events=500, **FAST_GROUP
    )
    make_topics(config, partitions=3)
    outcomes, requests = _workload(61)
    stage = StageProcess(config, path, "outage", tmp_path / "stage.log").start().wait_ready(90)
    load = Load(config, outcomes, requests, seconds=40).start()
    try:
        wait_for(lambda: load.sent > len(load.items) // 4, 60, description="a quarter of the load")
        solo.stop()
        time.sleep(OUTAGE_S)  # the outage's length is the scenario, not a wait for a condition
        assert stage.proc is not None and stage.proc.poll() is None, stage.log_tail()
        solo.restart()
        load.wait(400)
        wait_for(lambda: drained(config), timeout=240, description="drained after the outage")
        assert stage.proc.poll() is None, stage.log_tail()
        assert "bandit_processor_ready 1.0" in stage.metrics()
    finally:
        assert stage.stop() == 0, stage.log_tail(80)
    assert_exact_thompson(config, outcomes)
    assert_each_request_answered_once(config, requests)


def _leader(bootstrap: str, topic: str, partition: int) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return int(admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader)


def test_cluster_leader_killed_mid_stream_state_exact(trio: LocalKafka, tmp_path: Path) -> None:
    config, path = app_config(
        trio.bootstrap,
        tmp_path,
        commit_every_events=500,
        max_batch_events=500,
        **FAST_GROUP,
    )
    make_topics(config, partitions=3, replication_factor=3)
    admin = AdminClient({"bootstrap.servers": trio.bootstrap})
    md = admin.list_topics(config.topics.bid_outcomes, timeout=10)
    assert all(
        len(p.replicas) == 3 for p in md.topics[config.topics.bid_outcomes].partitions.values()
    )
    outcomes, requests = _workload(62)
    stage = StageProcess(config, path, "cluster", tmp_path / "stage.log").start().wait_ready(120)
    load = Load(config, outcomes, requests, seconds=40).start()
    try:
        wait_for(lambda: load.sent > len(load.items) // 4, 60, description="a quarter of the load")
        victim = _leader(trio.bootstrap, config.topics.bid_outcomes, 0)
        trio.kill(victim)
        wait_for(
            lambda: _leader(trio.bootstrap, config.topics.bid_outcomes, 0) not in (victim, -1),
            60,
            description="a new leader for the busy partition",
        )
        wait_for(lambda: load.sent > len(load.items) // 2, 120, description="half the load")
        trio.start_node(victim)
        load.wait(400)
        wait_for(lambda: drained(config), timeout=240, description="drained after the kill")
        assert stage.proc is not None and stage.proc.poll() is None, stage.log_tail()
    finally:
        assert stage.stop() == 0, stage.log_tail(80)
    assert_exact_thompson(config, outcomes)
    assert_each_request_answered_once(config, requests)
