"""The broker really does transactions: the guarantees the exactly-once loop relies on.

Every transactional call has a finite timeout (librdkafka can block forever otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

TXN_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 30.0

ProducerFactory = Callable[..., Producer]
ConsumerFactory = Callable[..., Consumer]
TopicFactory = Callable[..., str]


def read_until(
    consumer: Consumer, last_value: bytes, timeout: float = READ_TIMEOUT_S
) -> list[bytes]:
    """Poll until a record with ``last_value`` arrives; return every value read, in offset order."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        error = msg.error()
        if error is not None:
            # A partition EOF or a transient error is no reason to stop reading.
            assert not error.fatal(), error
            continue
        messages.append(msg)
        if msg.value() == last_value:
            messages.sort(key=lambda m: (m.partition() or 0, m.offset() or 0))
            return [m.value() or b"" for m in messages]
    pytest.fail(f"{last_value!r} not read within {timeout} s; got {len(messages)} records")


def produce_in_transaction(
    producer: Producer, topic: str, values: list[bytes], *, commit: bool
) -> None:
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, value=value, key=b"k")
    if commit:
        producer.commit_transaction(TXN_TIMEOUT_S)
    else:
        producer.flush(TXN_TIMEOUT_S)  # the aborted records must reach the log first
        producer.abort_transaction(TXN_TIMEOUT_S)


def test_transactional_produce_is_read_committed(
    topic_factory: TopicFactory,
    producer_factory: ProducerFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    topic = topic_factory(partitions=1)
    producer = producer_factory(transactional=True)
    values = [f"v{i}".encode() for i in range(20)]

    produce_in_transaction(producer, topic, values, commit=True)

    assert read_until(consumer_factory([topic]), values[-1]) == values


def test_aborted_transaction_is_invisible_to_read_committed(
    topic_factory: TopicFactory,
    producer_factory: ProducerFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    topic = topic_factory(partitions=1)
    producer = producer_factory(transactional=True)
    before, aborted, after = [b"c1", b"c2"], [b"a1", b"a2", b"a3"], [b"c3"]

    produce_in_transaction(producer, topic, before, commit=True)
    produce_in_transaction(producer, topic, aborted, commit=False)
    produce_in_transaction(producer, topic, after, commit=True)

    committed_view = read_until(consumer_factory([topic], isolation_level="read_committed"), b"c3")
    uncommitted_view = read_until(
        consumer_factory([topic], isolation_level="read_uncommitted"), b"c3"
    )
    assert committed_view == before + after
    assert uncommitted_view == before + aborted + after


def test_offsets_sent_to_transaction_become_group_offsets(
    topic_factory: TopicFactory,
    producer_factory: ProducerFactory,
    consumer_factory: ConsumerFactory,
    group_id: str,
) -> None:
    source, sink = topic_factory(partitions=1), topic_factory(partitions=1)
    plain = producer_factory()
    for i in range(5):
        plain.produce(source, value=f"in{i}".encode())
    assert plain.flush(TXN_TIMEOUT_S) == 0
    consumer = consumer_factory([source], group_id=group_id)
    read = read_until(consumer, b"in4")
    assert len(read) == 5

    producer = producer_factory(transactional=True)
    producer.begin_transaction()
    for value in read:
        producer.produce(sink, value=value.upper())
    # Commit what was processed + 1 (the next offset to read), tracked here, not position().
    positions = [TopicPartition(source, 0, len(read))]
    producer.send_offsets_to_transaction(
        positions, consumer.consumer_group_metadata(), TXN_TIMEOUT_S
    )
    producer.commit_transaction(TXN_TIMEOUT_S)

    committed = consumer.committed([TopicPartition(source, 0)], timeout=TXN_TIMEOUT_S)
    assert [(tp.topic, tp.partition, tp.offset) for tp in committed] == [(source, 0, 5)]
    assert read_until(consumer_factory([sink]), b"IN4") == [v.upper() for v in read]


def test_second_producer_with_same_transactional_id_fences_the_first(
    topic_factory: TopicFactory,
    producer_factory: ProducerFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    topic = topic_factory(partitions=1)
    conf: dict[str, Any] = {"transactional.id": "it-fencing-" + topic}
    zombie = producer_factory(transactional=True, **conf)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie")
    assert zombie.flush(TXN_TIMEOUT_S) == 0

    successor = producer_factory(transactional=True, **conf)  # bumps the epoch
    produce_in_transaction(successor, topic, [b"successor"], commit=True)

    # The zombie's next transactional operation finds its epoch bumped.
    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(TXN_TIMEOUT_S)
    error = raised.value.args[0]
    assert isinstance(error, KafkaError)
    assert error.fatal(), error
    assert error.code() in {KafkaError._FENCED, KafkaError.PRODUCER_FENCED}, error
    # The successor's init aborted the zombie's open transaction.
    assert read_until(consumer_factory([topic]), b"successor") == [b"successor"]
