"""In-memory fakes of the Kafka clients, for unit tests of the stage's state machine only.

A :class:`FakeKafka` keeps topic logs, the group's committed offsets and transaction epochs with
Kafka's visibility rules: a transaction's records and offsets become visible when it commits,
vanish when it aborts, and a newer ``init_transactions`` with the same id aborts the open one and
fences the old producer. Failures are injected per call with :meth:`FakeKafka.fail`. These fakes
stand in for Kafka nowhere else: integration tests use a real broker.
"""

from __future__ import annotations

import threading
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.runtime import Clients

SERDES = SerdeRegistry()
TP = tuple[str, int]


def kafka_error(
    code: int, *, fatal: bool = False, retriable: bool = False, abortable: bool = False
) -> KafkaException:
    """A ``KafkaException`` as librdkafka raises it."""
    return KafkaException(
        KafkaError(code, "injected", fatal=fatal, retriable=retriable, txn_requires_abort=abortable)
    )


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _error: KafkaError | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error


Failure = Callable[[], None]
"""Injected behaviour of one call: raise, block, or do nothing."""


@dataclass
class FakeKafka:
    """Topic logs, committed group offsets and transactional ids of one fake cluster."""

    partitions: int = 2
    logs: dict[TP, list[tuple[bytes | None, bytes | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    group_offsets: dict[TP, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    failures: dict[str, list[Failure]] = field(default_factory=lambda: defaultdict(list))
    calls: list[str] = field(default_factory=list)
    producers: list[FakeProducer] = field(default_factory=list)
    consumers: list[FakeConsumer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def partition_of(self, key: bytes) -> int:
        return zlib.crc32(key) % self.partitions

    def append(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        p = self.partition_of(key or b"") if partition is None else partition
        with self.lock:
            self.logs[(topic, p)].append((key, value))

    def produce_records(
        self, topic: str, schema: str, records: list[dict[str, Any]], key: str
    ) -> None:
        for r in records:
            self.append(topic, r[key].encode(), SERDES[schema].encode(r))

    def fail(self, call: str, *behaviours: Failure) -> None:
        """The next calls of ``call`` behave as given (one behaviour per call, in order)."""
        self.failures[call].extend(behaviours)

    def hook(self, call: str) -> None:
        self.calls.append(call)
        queue = self.failures.get(call)
        if queue:
            queue.pop(0)()

    def committed(self, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
        """Committed records of ``topic``: ``(partition, key, value)``."""
        with self.lock:
            return [
                (p, k, v) for (t, p), log in sorted(self.logs.items()) if t == topic for k, v in log
            ]

    def clients(self) -> Clients:
        def consumer(config: AppConfig, **extra: Any) -> FakeConsumer:
            c = FakeConsumer(self, restore=bool(extra))
            self.consumers.append(c)
            return c

        def producer(config: AppConfig, **extra: Any) -> FakeProducer:
            p = FakeProducer(self, f"{config.app_id}-{config.instance_id}")
            self.producers.append(p)
            return p

        def restore_factory(config: AppConfig) -> Callable[..., FakeConsumer]:
            return lambda **extra: FakeConsumer(self, restore=True)

        return Clients(
            admin=lambda config: None,  # type: ignore[arg-type,return-value]
            consumer=consumer,  # type: ignore[arg-type]
            producer=producer,  # type: ignore[arg-type]
            restore_consumer_factory=restore_factory,  # type: ignore[arg-type]
            topology=lambda admin, config: self.partitions,
        )


def raises(exc: BaseException) -> Failure:
    def behave() -> None:
        raise exc

    return behave


def blocks(release: threading.Event) -> Failure:
    def behave() -> None:
        release.wait()

    return behave


class FakeProducer:
    """A transactional producer: records are visible only once their transaction commits."""

    def __init__(self, kafka: FakeKafka, transactional_id: str) -> None:
        self.kafka = kafka
        self.tid = transactional_id
        self.epoch = -1
        self.pending: list[tuple[str, int, bytes | None, bytes]] = []
        self.pending_offsets: dict[TP, int] = {}
        self.in_txn = False
        self.closed = False
        self.buffer_full = False

    def _fenced(self) -> bool:
        return self.kafka.epochs.get(self.tid, -1) != self.epoch

    def init_transactions(self, timeout: float) -> None:
        self.kafka.hook("init_transactions")
        with self.kafka.lock:
            self.epoch = self.kafka.epochs.get(self.tid, -1) + 1
            self.kafka.epochs[self.tid] = self.epoch  # fences (and so aborts) older producers

    def begin_transaction(self) -> None:
        self.kafka.hook("begin_transaction")
        assert not self.in_txn, "begin_transaction while a transaction is open"
        self.in_txn = True

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> None:
        self.kafka.hook("produce")
        if self.buffer_full:
            raise BufferError("Local: Queue full")
        p = self.kafka.partition_of(key or b"") if partition is None else partition
        self.pending.append((topic, p, key, value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: Any, timeout: float
    ) -> None:
        self.kafka.hook("send_offsets_to_transaction")
        for tp in offsets:
            self.pending_offsets[(tp.topic, tp.partition)] = tp.offset

    def commit_transaction(self, timeout: float) -> None:
        self.kafka.hook("commit_transaction")
        with self.kafka.lock:
            if self._fenced():
                self.pending.clear()
                self.pending_offsets.clear()
                raise kafka_error(KafkaError._FENCED, fatal=True)
            for topic, p, key, value in self.pending:
                self.kafka.logs[(topic, p)].append((key, value))
            self.kafka.group_offsets.update(self.pending_offsets)
        self.pending.clear()
        self.pending_offsets.clear()
        self.in_txn = False

    def abort_transaction(self, timeout: float) -> None:
        self.kafka.hook("abort_transaction")
        self.pending.clear()
        self.pending_offsets.clear()
        self.in_txn = False

    def purge(self, *args: Any) -> None:
        self.pending.clear()

    def close(self) -> None:
        self.closed = True


class FakeConsumer:
    """A group consumer that owns every partition (or a restore consumer of the changelog)."""

    def __init__(self, kafka: FakeKafka, restore: bool = False) -> None:
        self.kafka = kafka
        self.restore = restore
        self.positions: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.callbacks: dict[str, Any] = {}
        self.topics: list[str] = []
        self.assigned: list[TopicPartition] = []
        self.events: list[Callable[[FakeConsumer], None]] = []
        self.closed = False

    # -- group ---------------------------------------------------------------------------------
    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any, on_lost: Any) -> None:
        self.topics = topics
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.events.append(lambda c: c.rebalance(c.all_partitions()))

    def all_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.topics for p in range(self.kafka.partitions)]

    def rebalance(self, partitions: list[TopicPartition]) -> None:
        """Eager rebalance: revoke everything held, then assign ``partitions``."""
        if self.assigned:
            self.callbacks["revoke"](self, list(self.assigned))
            self.assigned = []
        self.callbacks["assign"](self, partitions)

    def lose(self) -> None:
        self.callbacks["lost"](self, list(self.assigned))
        self.assigned = []

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            committed = self.kafka.group_offsets.get(key)
            if tp.offset >= 0:
                self.positions[key] = tp.offset
            else:
                self.positions[key] = committed if committed is not None else 0

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, tp: TopicPartition) -> None:
        key = (tp.topic, tp.partition)
        if tp.offset == OFFSET_BEGINNING:
            self.positions[key] = 0
        elif tp.offset == OFFSET_END:
            self.positions[key] = len(self.kafka.logs[key])
        else:
            self.positions[key] = tp.offset

    def committed(
        self, partitions: list[TopicPartition], timeout: float = 0
    ) -> list[TopicPartition]:
        self.kafka.hook("committed")
        return [
            TopicPartition(
                tp.topic,
                tp.partition,
                self.kafka.group_offsets.get((tp.topic, tp.partition), OFFSET_INVALID),
            )
            for tp in partitions
        ]

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[FakeMessage]:
        if self.events:
            self.events.pop(0)(self)
        out: list[FakeMessage] = []
        held = [(tp.topic, tp.partition) for tp in self.assigned]
        for key in held:
            if key in self.paused:
                continue
            log = self.kafka.logs.get(key, [])
            pos = self.positions.get(key, 0)
            while pos < len(log) and len(out) < num_messages:
                k, v = log[pos]
                out.append(FakeMessage(key[0], key[1], pos, k, v))
                pos += 1
            self.positions[key] = pos
        if not out:
            threading.Event().wait(min(timeout, 0.002))
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.callbacks and self.assigned:
            self.callbacks["revoke"](self, list(self.assigned))
        self.assigned = []

    # -- restore consumer (the changelog) -----------------------------------------------------
    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        self.kafka.hook("get_watermark_offsets")
        return 0, len(self.kafka.logs.get((tp.topic, tp.partition), []))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), 0))
            for tp in partitions
        ]
