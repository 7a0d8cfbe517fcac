"""The commit cycle: changelog records of dirty keys, consumed offsets, and the commit itself."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition

from processor import metrics
from processor.config import AppConfig
from processor.kafka.serde import SerdeRegistry
from processor.kafka.transaction import AbortRequiredError
from processor.runtime.outputs import OutputProducer
from processor.runtime.partitions import Partitions
from processor.state.changelog import encode_state_records


class CommitCycle:
    """What the open cycle holds, and how it is committed.

    ``open`` is True while a batch (or a commit) is half done: nothing may be committed then —
    not by the loop, not by a rebalance callback, not on close.
    """

    def __init__(self, config: AppConfig, serdes: SerdeRegistry) -> None:
        self.config = config
        self.serdes = serdes
        self.events = 0
        self.last = time.monotonic()
        self.pending_latency: list[int] = []
        self.open = False

    def due(self) -> bool:
        """Every ``commit_interval_ms``, or earlier after ``commit_every_events`` events."""
        if self.events >= self.config.commit_every_events:
            return True
        return (time.monotonic() - self.last) * 1000 >= self.config.commit_interval_ms

    def discard(self) -> None:
        """Forget the open cycle (it was aborted)."""
        self.events = 0
        self.pending_latency.clear()
        self.open = False

    def commit(self, parts: Partitions, out: OutputProducer, consumer: Consumer) -> int:
        """Close the cycle; returns the number of input events it committed (0: no-op).

        Raises:
            AbortRequiredError: A batch is half processed, or the commit must be aborted.
            ProducerFailedError / ProducerFencedError: See :mod:`processor.kafka.transaction`.
        """
        self.last = time.monotonic()
        txn = out.txn
        open_txn = txn is not None and txn.active
        dirty = any(e.dirty_campaigns or e.dirty_ensembles for e in parts.engines.values())
        if self.events == 0 and not open_txn and not dirty:
            return 0
        if self.open:
            msg = "commit requested while a batch is half processed"
            raise AbortRequiredError(msg)
        started = time.monotonic()
        serde = self.serdes["StateRecord"]
        topic = self.config.changelog_topic
        if txn is not None:
            txn.begin()
        self.open = True  # taking the dirty keys changes what a retry would write
        for p, engine in parts.engines.items():
            items = engine.take_dirty()
            if items:
                out.send(topic, encode_state_records(serde, items), p)
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in parts.offsets.items() if p in parts.engines
        ]
        if txn is not None:
            txn.commit(offsets, consumer.consumer_group_metadata())
        else:
            self._commit_at_least_once(out, consumer, offsets)
        self.open = False
        metrics.TRANSACTIONS.labels("committed").inc()
        if self.pending_latency:
            now_ms = time.time() * 1000
            event_ms = np.asarray(self.pending_latency, dtype=np.float64)
            metrics.DECISION_LATENCY.observe_many(np.maximum(0.0, (now_ms - event_ms) / 1000))
            self.pending_latency.clear()
        committed, self.events = self.events, 0
        metrics.COMMIT_SECONDS.observe(time.monotonic() - started)
        return committed

    def _commit_at_least_once(
        self, out: OutputProducer, consumer: Consumer, offsets: Sequence[TopicPartition]
    ) -> None:
        producer = out.producer
        assert producer is not None
        remaining = producer.flush(self.config.operation_timeout_s)
        if remaining or out.delivery_errors:
            errors = out.delivery_errors[:3]
            msg = f"at-least-once: {remaining} undelivered, errors {errors}"
            raise AbortRequiredError(msg)
        if offsets:
            try:
                consumer.commit(offsets=list(offsets), asynchronous=False)
            except KafkaException as exc:
                msg = f"at-least-once offset commit failed: {exc}"
                raise AbortRequiredError(msg) from exc
