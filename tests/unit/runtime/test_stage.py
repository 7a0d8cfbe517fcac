"""The stage's transaction state machine, driven with fake clients (tests/unit/runtime/fakes.py).

Every scenario checks the two things exactly-once promises: the committed Thompson counts equal
the counts of the outcomes (each applied once), and every request has exactly one committed
decision — whatever failed on the way. Faults against a real broker are in
tests/integration/test_faults.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from processor.cli.commands import key_state_view
from processor.config import AppConfig, KafkaConfig
from processor.engine import PartitionEngine
from processor.errors import ConfigError
from processor.kafka import transaction
from processor.kafka.clients import consumer_config
from processor.observability import metrics
from processor.runtime import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, EXIT_POISON, Stage
from processor.runtime.partitions import Partitions, misaligned
from processor.state.changelog import parse_changelog_key
from processor.testing import wait_for
from tests.integration.stagekit import expected_counts, outcome_records, request_records
from tests.unit.runtime.fakes import SERDES, FakeConsumer, FakeKafka, blocks, kafka_error, raises

ARMS = ["conservative", "balanced", "aggressive", "experimental"]


def make_config(**overrides: Any) -> AppConfig:
    settings: dict[str, Any] = {
        "app_id": "unit",
        "instance_id": "i0",
        "commit_interval_ms": 5,
        "max_batch_events": 50,
        "poll_timeout_ms": 1,
        "operation_timeout_s": 0.5,
        "retry_budget_s": 1.0,
        "metrics_port": None,
    }
    settings.update(overrides)
    return AppConfig(**settings)


def feed(
    kafka: FakeKafka, config: AppConfig, outcomes: int = 200, requests: int = 120
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    outs = outcome_records(outcomes, campaigns=6, arms=ARMS, seed=3)
    reqs = request_records(requests, campaigns=6, seed=3, start_ms=1_700_000_000_000)
    kafka.produce_records(config.topics.bid_outcomes, "BidOutcome", outs, "campaign_id")
    kafka.produce_records(config.topics.bid_requests, "BidRequest", reqs, "campaign_id")
    return outs, reqs


class Running:
    """``Stage.run()`` in a thread."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.stage.run()

    def stop(self, timeout: float = 10.0) -> int:
        self.stage.stopping.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stage did not stop"
        assert self.code is not None
        return self.code

    def exited(self, timeout: float = 10.0) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stage did not exit"
        assert self.code is not None
        return self.code


def drained(kafka: FakeKafka, config: AppConfig) -> bool:
    """Every input offset committed by the group."""
    for (topic, p), log in list(kafka.logs.items()):
        if topic in config.topics.inputs and kafka.group_offsets.get((topic, p), 0) < len(log):
            return False
    return True


def committed_counts(kafka: FakeKafka, config: AppConfig) -> dict[str, dict[str, list[int]]]:
    latest: dict[tuple[int, bytes | None], bytes | None] = {}
    for p, key, value in kafka.committed(config.changelog_topic):
        latest[(p, key)] = value
    out: dict[str, dict[str, list[int]]] = {}
    for (p, key), value in latest.items():
        assert key is not None and value is not None
        kind, name = parse_changelog_key(key)
        if kind != "campaign":
            continue
        record = SERDES["StateRecord"].decode(value)
        state = record["state_packed"] or json.loads(record["state_json"])
        engine = PartitionEngine(config, p, SERDES)
        engine.restore(kind, name, state)
        view = key_state_view(engine, kind, name)
        for arm, s in view["thompson"].items():
            counts = [round(s["alpha"] - 1.0), round(s["beta"] - 1.0)]
            if counts != [0, 0]:
                out.setdefault(name, {})[arm] = counts
    return out


def decided(kafka: FakeKafka, config: AppConfig) -> Counter[str]:
    serde = SERDES["BidDecision"]
    return Counter(
        serde.decode(v)["request_id"]
        for _, _, v in kafka.committed(config.topics.bid_decisions)
        if v
    )


def assert_exact(
    kafka: FakeKafka, config: AppConfig, outs: list[dict[str, Any]], reqs: list[dict[str, Any]]
) -> None:
    assert committed_counts(kafka, config) == expected_counts(outs)
    counts = decided(kafka, config)
    assert set(counts) == {r["request_id"] for r in reqs}
    assert max(counts.values()) == 1, "a request was answered twice"


def run_to_drain(kafka: FakeKafka, config: AppConfig, timeout: float = 20.0) -> Running:
    running = Running(Stage(config, kafka=kafka.clients()))
    wait_for(
        lambda: drained(kafka, config) or running.code is not None, timeout, description="drain"
    )
    return running


def counter(family: Any, *labels: str) -> float:
    return float(family.labels(*labels)._value.get()) if labels else float(family._value.get())


# ---- the happy path and Kafka's error classes --------------------------------------------------
def test_happy_path_commits_every_outcome_and_decision_exactly_once() -> None:
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)


def test_the_loop_decides_while_a_commit_is_in_flight() -> None:
    """The commit runs on the committer thread; outputs of the batches decided meanwhile wait
    for the next transaction and are committed exactly once."""
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    release = threading.Event()
    kafka.fail("commit_transaction", lambda: None, blocks(release))
    stage = Stage(config, kafka=kafka.clients())
    running = Running(stage)
    wait_for(
        lambda: (
            stage.cycle.inflight is not None
            and release is not None
            and kafka.calls.count("commit_transaction") == 2
        ),
        10,
        description="the second commit in flight",
    )
    more = request_records(60, campaigns=6, seed=5, start_ms=1_700_000_050_000)
    kafka.produce_records(config.topics.bid_requests, "BidRequest", more, "campaign_id")
    wait_for(lambda: stage.cycle.buffered, 10, description="decisions made during the commit")
    assert not {r["request_id"] for r in more} & set(decided(kafka, config))
    release.set()
    wait_for(lambda: drained(kafka, config), 20, description="drain")
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs + more)


def test_retriable_errors_are_retried_in_place() -> None:
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    retriable = raises(kafka_error(KafkaError._TIMED_OUT, retriable=True))
    kafka.fail("send_offsets_to_transaction", retriable, retriable)
    kafka.fail("commit_transaction", retriable)
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)
    assert kafka.calls.count("abort_transaction") == 0
    assert len(kafka.producers) == 1


def test_abortable_commit_aborts_rewinds_and_restores() -> None:
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    before = counter(metrics.TRANSACTIONS, "aborted")
    kafka.fail(
        "commit_transaction", lambda: None, raises(kafka_error(KafkaError._STATE, abortable=True))
    )
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert kafka.calls.count("abort_transaction") >= 1
    assert counter(metrics.TRANSACTIONS, "aborted") > before
    assert "committed" in kafka.calls  # the rewind read the committed offsets
    assert_exact(kafka, config, outs, reqs)


def test_fatal_error_on_abort_replaces_the_producer() -> None:
    """librdkafka#4849: an abort after a broker restart fails with a fatal INVALID_TXN_STATE."""
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    before = counter(metrics.PRODUCER_RECOVERIES, "fatal_error")
    kafka.fail("commit_transaction", raises(kafka_error(KafkaError._STATE, abortable=True)))
    kafka.fail("abort_transaction", raises(kafka_error(KafkaError.INVALID_TXN_STATE, fatal=True)))
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert len(kafka.producers) == 2
    assert kafka.producers[1].epoch == kafka.producers[0].epoch + 1
    assert counter(metrics.PRODUCER_RECOVERIES, "fatal_error") == before + 1
    assert_exact(kafka, config, outs, reqs)


def test_fencing_by_another_instance_exits_3_without_committing() -> None:
    kafka, config = FakeKafka(), make_config(transaction_timeout_ms=60_000)
    feed(kafka, config)
    running = Running(Stage(config, kafka=kafka.clients()))
    wait_for(lambda: kafka.group_offsets, 10, description="a first commit")
    with kafka.lock:  # another instance with the same transactional.id starts
        kafka.epochs["unit-i0"] += 1
    kafka.produce_records(
        config.topics.bid_requests, "BidRequest", request_records(30, 6, seed=9), "campaign_id"
    )
    assert running.exited() == EXIT_FATAL
    assert len(kafka.producers) == 1  # not replaced: that would fence the rightful owner


def test_timed_out_transaction_is_recovered_not_mistaken_for_fencing() -> None:
    """The coordinator aborts a transaction older than transaction.timeout.ms and bumps the
    epoch: librdkafka reports _FENCED, as for fencing. The stage replaces its producer."""
    kafka, config = FakeKafka(), make_config(transaction_timeout_ms=1)
    outs, reqs = feed(kafka, config)
    before = counter(metrics.PRODUCER_RECOVERIES, "txn_timeout")
    fenced = raises(kafka_error(KafkaError._FENCED, fatal=True))

    def fence_after_the_timeout() -> None:
        # what the coordinator does: abort a transaction once it outlived the timeout (a fast
        # loop commits in under the 1 ms of this config, which then reads as fencing)
        deadline = time.monotonic() + config.transaction_timeout_ms / 1000
        while time.monotonic() < deadline:
            time.sleep(config.transaction_timeout_ms / 4000)
        fenced()

    kafka.fail("commit_transaction", lambda: None, fence_after_the_timeout)
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert counter(metrics.PRODUCER_RECOVERIES, "txn_timeout") == before + 1
    assert_exact(kafka, config, outs, reqs)


def test_a_wedged_commit_is_abandoned_and_the_producer_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """librdkafka#5511: send_offsets_to_transaction can wait forever after a broker restart."""
    monkeypatch.setattr(transaction, "WEDGE_GRACE_S", 0.1)
    kafka, config = FakeKafka(), make_config(operation_timeout_s=0.2)
    outs, reqs = feed(kafka, config)
    release = threading.Event()
    kafka.fail("send_offsets_to_transaction", lambda: None, blocks(release))
    before = counter(metrics.PRODUCER_RECOVERIES, "wedged")
    running = run_to_drain(kafka, config)
    assert counter(metrics.PRODUCER_RECOVERIES, "wedged") == before + 1
    assert counter(metrics.WEDGED_PRODUCERS) == 1
    release.set()  # the stuck call returns (fenced) at last: the old producer is closed
    wait_for(lambda: kafka.producers[0].closed, 5, description="old producer closed")
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)


def test_retry_budget_exhausted_replaces_the_producer() -> None:
    kafka, config = FakeKafka(), make_config(retry_budget_s=0.3)
    outs, reqs = feed(kafka, config)
    retriable = raises(kafka_error(KafkaError._TIMED_OUT, retriable=True))
    kafka.fail("commit_transaction", lambda: None, *[retriable] * 3)
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert len(kafka.producers) == 2
    assert_exact(kafka, config, outs, reqs)


def test_repeated_producer_failures_end_the_process() -> None:
    kafka, config = FakeKafka(), make_config()
    feed(kafka, config)
    fatal = raises(kafka_error(KafkaError.INVALID_TXN_STATE, fatal=True))
    kafka.fail("commit_transaction", *[fatal] * 20)
    running = Running(Stage(config, kafka=kafka.clients()))
    assert running.exited(20) == EXIT_FATAL
    assert not kafka.group_offsets  # nothing was ever committed


def test_broker_unreachable_while_replacing_the_producer_is_waited_out() -> None:
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    down = raises(kafka_error(KafkaError._TRANSPORT, retriable=True))
    kafka.fail("commit_transaction", raises(kafka_error(KafkaError.INVALID_TXN_STATE, fatal=True)))
    # the first init succeeds (start), the next ones fail for a while (the broker is down)
    kafka.fail("init_transactions", lambda: None, *[down] * 6)
    running = run_to_drain(kafka, config, timeout=40)
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)


def test_a_consumer_that_cannot_read_committed_offsets_is_replaced() -> None:
    """After a broker restart the consumer's group coordinator can stay unreachable."""
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    before = counter(metrics.CONSUMER_RECOVERIES, "offsets_unreadable")
    timeout = raises(kafka_error(KafkaError._TIMED_OUT, retriable=True))
    kafka.fail("commit_transaction", raises(kafka_error(KafkaError._STATE, abortable=True)))
    kafka.fail("committed", timeout, timeout, timeout)
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert counter(metrics.CONSUMER_RECOVERIES, "offsets_unreadable") == before + 1
    assert len(kafka.consumers) == 2
    assert kafka.consumers[0].closed
    assert_exact(kafka, config, outs, reqs)


def test_missing_acl_exits_2() -> None:
    kafka, config = FakeKafka(), make_config()
    feed(kafka, config)
    kafka.fail(
        "send_offsets_to_transaction",
        raises(kafka_error(KafkaError.GROUP_AUTHORIZATION_FAILED, abortable=True)),
    )
    running = Running(Stage(config, kafka=kafka.clients()))
    assert running.exited() == EXIT_CONFIG


# ---- bugs in handlers --------------------------------------------------------------------------
def _poison(monkeypatch: pytest.MonkeyPatch, request_id: str, times: int) -> list[int]:
    """Make the outcome handler raise on batches holding ``request_id`` (``times`` times)."""
    original = PartitionEngine._outcomes
    raised = [0]

    def outcomes(self: PartitionEngine, source: Any, out: Any) -> None:
        ids = {SERDES["BidOutcome"].decode(v)["request_id"] for v in source.values}
        if request_id in ids and raised[0] < times:
            raised[0] += 1
            msg = "bug in a handler"
            raise RuntimeError(msg)
        original(self, source, out)

    monkeypatch.setattr(PartitionEngine, "_outcomes", outcomes)
    return raised


def test_an_exception_in_a_handler_never_commits_half_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    raised = _poison(monkeypatch, outs[120]["request_id"], times=1)
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    assert raised == [1]
    assert_exact(kafka, config, outs, reqs)


def test_a_poison_message_ends_the_process_naming_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kafka, config = FakeKafka(), make_config()
    outs, _ = feed(kafka, config)
    bad = outs[120]
    _poison(monkeypatch, bad["request_id"], times=1_000)
    caplog.set_level(logging.ERROR)
    running = Running(Stage(config, kafka=kafka.clients()))
    assert running.exited(20) == EXIT_POISON
    p = kafka.partition_of(bad["campaign_id"].encode())
    log = kafka.logs[(config.topics.bid_outcomes, p)]
    offset = next(
        i
        for i, (_, v) in enumerate(log)
        if SERDES["BidOutcome"].decode(v)["request_id"] == bad["request_id"]
    )
    assert f"{config.topics.bid_outcomes}[{p}] at offset {offset}" in caplog.text
    # everything committed is exact: the outcomes before the poison of its partition, each once
    committed = kafka.group_offsets.get((config.topics.bid_outcomes, p), 0)
    assert committed <= offset
    applied = [SERDES["BidOutcome"].decode(v) for _, v in log[:committed]]
    got = {
        c: a
        for c, a in committed_counts(kafka, config).items()
        if kafka.partition_of(c.encode()) == p
    }
    assert got == expected_counts(applied)


def test_close_after_a_bug_does_not_commit_in_on_revoke(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug outside the handled classes used to reach consumer.close() → on_revoke → commit."""
    kafka, config = FakeKafka(), make_config()
    feed(kafka, config)
    stage = Stage(config, kafka=kafka.clients())

    def broken_commit() -> None:
        msg = "bug while encoding the changelog"
        raise TypeError(msg)

    monkeypatch.setattr(stage.cycle, "due", lambda: False)
    running = Running(stage)
    wait_for(lambda: stage.parts.offsets, 10, description="a processed batch")
    monkeypatch.setattr(stage, "_commit", broken_commit)
    assert running.stop() == EXIT_POISON
    assert "commit_transaction" not in kafka.calls
    assert not kafka.committed(config.topics.bid_decisions)


# ---- rebalances --------------------------------------------------------------------------------
def test_revoke_commits_a_finished_cycle_and_assign_restores() -> None:
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    stage = Stage(config, kafka=kafka.clients())
    running = Running(stage)
    wait_for(lambda: kafka.group_offsets, 10, description="a first commit")
    consumer = stage.consumer
    assert consumer is not None
    consumer.events.append(lambda c: c.rebalance(c.all_partitions()))  # type: ignore[attr-defined]
    wait_for(lambda: drained(kafka, config), 20, description="drain")
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)


def test_commit_failing_inside_revoke_commits_nothing_half_done() -> None:
    kafka, config = FakeKafka(), make_config(commit_interval_ms=10_000)
    outs, reqs = feed(kafka, config)
    stage = Stage(config, kafka=kafka.clients())
    running = Running(stage)
    wait_for(lambda: stage.parts.offsets, 10, description="a processed batch")
    kafka.fail("commit_transaction", raises(kafka_error(KafkaError._STATE, abortable=True)))
    consumer = stage.consumer
    assert consumer is not None
    consumer.events.append(lambda c: c.rebalance(c.all_partitions()))  # type: ignore[attr-defined]
    wait_for(lambda: "abort_transaction" in kafka.calls, 10, description="the abort")
    stage.cycle.config = stage.config.replace(commit_interval_ms=5)
    wait_for(lambda: drained(kafka, config), 20, description="drain")
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)


def test_lost_partitions_abort_and_rewind() -> None:
    kafka, config = FakeKafka(), make_config(commit_interval_ms=10_000)
    outs, reqs = feed(kafka, config)
    stage = Stage(config, kafka=kafka.clients())
    running = Running(stage)
    wait_for(lambda: stage.parts.offsets, 10, description="a processed batch")
    consumer = stage.consumer
    assert consumer is not None
    consumer.events.append(lambda c: c.lose())  # type: ignore[attr-defined]
    consumer.events.append(lambda c: c.rebalance(c.all_partitions()))  # type: ignore[attr-defined]
    wait_for(lambda: "abort_transaction" in kafka.calls, 10, description="the abort")
    assert not kafka.committed(config.topics.bid_decisions)
    stage.cycle.config = stage.config.replace(commit_interval_ms=5)
    wait_for(lambda: drained(kafka, config), 20, description="drain")
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)


def test_a_split_assignment_is_refused_until_a_rebalance_fixes_it() -> None:
    kafka, config = FakeKafka(), make_config()
    outs, reqs = feed(kafka, config)
    stage = Stage(config, kafka=kafka.clients())
    split = [
        TopicPartition(config.topics.bid_requests, 0),
        TopicPartition(config.topics.bid_outcomes, 1),
    ]
    running = Running(stage)
    wait_for(lambda: stage.consumer is not None, 5)
    consumer: Any = stage.consumer
    consumer.events.extend([lambda c: c.rebalance(split)] + [lambda c: None] * 50)
    wait_for(lambda: stage.parts.refused is not None, 5, description="the refusal")
    committed_before = dict(kafka.group_offsets)
    more = request_records(40, campaigns=6, seed=11, start_ms=1_700_000_100_000)
    kafka.produce_records(config.topics.bid_requests, "BidRequest", more, "campaign_id")
    wait_for(lambda: not consumer.events, 10, description="50 polls")
    assert not stage.health.is_ready()
    assert not stage.parts.engines
    assert kafka.group_offsets == committed_before
    assert not {r["request_id"] for r in more} & set(decided(kafka, config))
    consumer.events.append(lambda c: c.rebalance(c.all_partitions()))
    wait_for(lambda: drained(kafka, config), 20, description="drain")
    assert running.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs + more)


# ---- stopping ----------------------------------------------------------------------------------
def test_a_full_queue_while_stopping_aborts_instead_of_waiting() -> None:
    kafka, config = FakeKafka(), make_config(commit_interval_ms=10_000, operation_timeout_s=30)
    feed(kafka, config)
    stage = Stage(config, kafka=kafka.clients())
    running = Running(stage)
    wait_for(lambda: len(kafka.producers) == 1, 5)
    kafka.producers[0].buffer_full = True
    wait_for(lambda: kafka.calls.count("produce") > 0, 10, description="a produce attempt")
    assert running.stop(timeout=5) == EXIT_OK
    assert "commit_transaction" not in kafka.calls
    assert not kafka.committed(config.topics.bid_decisions)


# ---- pieces ------------------------------------------------------------------------------------
def test_rewind_prefers_committed_then_first_consumed_else_no_seek() -> None:
    parts = Partitions(["a", "b"])
    parts.first_seen[("a", 0)] = 40
    targets = parts.rewind_targets(
        [TopicPartition("a", 0, -1001), TopicPartition("a", 1, 7), TopicPartition("b", 0, -1001)]
    )
    assert [(t.topic, t.partition, t.offset) for t in targets] == [("a", 0, 40), ("a", 1, 7)]


def test_misaligned_names_the_split() -> None:
    tps = [TopicPartition("a", 0), TopicPartition("b", 1)]
    why = misaligned(tps, ["a", "b"])
    assert why is not None and "a [0]; b [1]" in why
    assert misaligned([TopicPartition("a", 0), TopicPartition("b", 0)], ["a", "b"]) is None


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("consumer", "partition.assignment.strategy", "cooperative-sticky"),
        ("common", "partition.assignment.strategy", "roundrobin"),
        ("consumer", "group.protocol", "consumer"),
    ],
)
def test_settings_that_break_co_partitioning_are_refused(
    section: str, name: str, value: str
) -> None:
    config = make_config(kafka=KafkaConfig(**{section: {name: value}}))
    with pytest.raises(ConfigError, match=name):
        consumer_config(config)


def test_the_co_partitioning_settings_are_enforced() -> None:
    conf = consumer_config(make_config(kafka=KafkaConfig(consumer={"group.protocol": "CLASSIC"})))
    assert conf["partition.assignment.strategy"] == "range"
    assert conf["group.protocol"] == "classic"


def test_a_long_restore_keeps_the_liveness_heartbeat() -> None:
    """A liveness probe must not kill a pod that is restoring a large changelog."""
    kafka, config = FakeKafka(), make_config(commit_every_events=40, max_batch_events=40)
    outs, reqs = feed(kafka, config)
    running = run_to_drain(kafka, config)
    assert running.stop() == EXIT_OK
    records = len(kafka.committed(config.changelog_topic))
    assert records >= 15

    class SlowRestore(FakeConsumer):
        def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Any]:
            threading.Event().wait(0.08)  # a slow fetch
            return super().consume(1, timeout)

    clients = kafka.clients()
    clients.restore_consumer_factory = lambda cfg: lambda **extra: SlowRestore(kafka, restore=True)
    health = metrics.Health(stall_s=0.5)  # five slow fetches without a beat would fail it
    stage = Stage(config, health=health, kafka=clients)
    restarted = Running(stage)
    live_while_restoring = []
    wait_for(lambda: stage.parts.pending, 5, description="the restore to start")
    started = time.monotonic()
    while stage.parts.pending:
        live_while_restoring.append(health.is_live())
        threading.Event().wait(0.01)
    lasted = time.monotonic() - started
    assert lasted > 1.5 * health.stall_s, f"the restore ({lasted:.2f}s) was too short to test"
    assert all(live_while_restoring)
    assert restarted.stop() == EXIT_OK
    assert_exact(kafka, config, outs, reqs)
