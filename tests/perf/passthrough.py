"""The limit: a raw exactly-once passthrough (consume → produce the same bytes, no decode).

Run as ``python -m tests.perf.passthrough CONFIG.yaml OUTPUT_TOPIC``. It uses the stage's own client
settings (:func:`consumer_config` / :func:`producer_config` of the same config file: read_committed,
range assignor, the same linger, batch and compression), the same way of consuming
(:func:`consume_ready`) and the same commit cycle (one transaction
per ``commit_interval_ms`` or ``commit_every_events``, offsets sent inside it). Each message goes to
the same partition number of the output topic. Messages are queued with ``produce_batch`` when the
client has it (one call per partition and batch): the cheapest way this client can move bytes, so
the ceiling is a hard one. At-least-once, like the stage, it commits a cycle's offsets
(asynchronously) once that cycle's records are acknowledged, without stopping the loop.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import defaultdict, deque
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from processor.config import load_config
from processor.kafka.clients import consume_ready, consumer_config, producer_config
from processor.runtime.outputs import Deliveries


def main(argv: list[str]) -> int:
    config = load_config(argv[0]).replace(instance_id="passthrough")
    out_topic = argv[1]
    stopping = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    eos = config.exactly_once
    producer = Producer(
        producer_config(config, **({} if eos else {"delivery.report.only.error": False}))
    )
    consumer = Consumer(consumer_config(config))
    if eos:
        producer.init_transactions(30)
    consumer.subscribe(list(config.topics.inputs))
    offsets: dict[tuple[str, int], int] = {}
    open_txn = False
    since = 0
    last = time.monotonic()
    batch = getattr(producer, "produce_batch", None)
    deliveries = Deliveries()  # at-least-once: this cycle's records
    delivering: deque[tuple[Deliveries, list[TopicPartition]]] = deque()
    cb: dict[str, Any] = {} if eos else {"on_delivery": deliveries.report}
    while not stopping:
        msgs = consume_ready(consumer, config.max_batch_events, config.poll_timeout_ms / 1000)
        if msgs:
            if eos and not open_txn:
                producer.begin_transaction()
                open_txn = True
            by_part: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for m in msgs:
                if m.error() is not None:
                    continue
                p = m.partition()
                offsets[(m.topic(), p)] = m.offset() + 1
                if batch is not None:
                    by_part[p].append({"key": m.key(), "value": m.value()})
                else:
                    _produce_one(producer, out_topic, m.value(), m.key(), p, cb)
                    deliveries.produced += 1
            for p, items in by_part.items():
                while items:
                    try:
                        done = batch(out_topic, items, partition=p, **cb)  # type: ignore[misc]
                    except BufferError:
                        done = 0
                    deliveries.produced += done
                    items = items[done:]
                    if items:
                        producer.poll(0.05)
            since += len(msgs)
        producer.poll(0)
        if delivering:
            _commit_delivered(consumer, delivering)
        due = since >= config.commit_every_events
        due = due or (time.monotonic() - last) * 1000 >= config.commit_interval_ms
        if due:
            last = time.monotonic()
            if since and eos:
                _commit(producer, consumer, offsets, eos)
                open_txn = False
            elif since:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                delivering.append((deliveries, tps))
                deliveries = Deliveries()
                cb = {"on_delivery": deliveries.report}
            since = 0
    if since or delivering:
        _commit(producer, consumer, offsets, eos)
    consumer.close()
    producer.flush(30)
    return 0


def _commit_delivered(
    consumer: Consumer, delivering: deque[tuple[Deliveries, list[TopicPartition]]]
) -> None:
    done: list[TopicPartition] = []
    while delivering and delivering[0][0].complete:
        deliveries, done = delivering.popleft()
        if deliveries.errors:
            raise RuntimeError(f"delivery failed: {deliveries.errors[:3]}")
    if done:
        consumer.commit(offsets=done, asynchronous=True)


def _produce_one(
    producer: Producer, topic: str, value: Any, key: Any, partition: int, cb: dict[str, Any]
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition, **cb)
            return
        except BufferError:
            producer.poll(0.05)


def _commit(
    producer: Producer, consumer: Consumer, offsets: dict[tuple[str, int], int], eos: bool
) -> None:
    tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    if eos:
        producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
    else:
        producer.flush(30)
        consumer.commit(offsets=tps, asynchronous=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
