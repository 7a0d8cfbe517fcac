"""The commit cycle: changelog records of dirty keys, consumed offsets, and the commit itself."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.engine import EngineOutputs
from processor.kafka.transaction import AbortRequiredError
from processor.observability import metrics
from processor.runtime.outputs import Deliveries, OutputProducer
from processor.runtime.partitions import Partitions
from processor.state.changelog import encode_state_records

logger = logging.getLogger(__name__)


@dataclass
class _InFlight:
    """A commit running on the committer thread."""

    future: Future[None]
    events: int
    latency: list[int]
    started: float


@dataclass
class _Delivering:
    """An at-least-once cycle whose records are not all acknowledged yet."""

    deliveries: Deliveries
    offsets: list[TopicPartition]
    events: int
    latency: list[int]
    started: float


class CommitCycle:
    """What the open cycle holds, and how it is committed.

    ``open`` is True while a batch (or a commit) is half done: nothing may be committed then —
    not by the loop, not by a rebalance callback, not on close.

    Exactly-once commits overlap the next batches (:meth:`start` / :meth:`settle`): the
    changelog records and offsets of the cycle go into its transaction, ``commit_transaction``
    runs on a committer thread (it mostly waits for the broker, without the GIL), and the loop
    goes on deciding; the outputs of those next batches wait in ``buffered`` until the commit
    returned and the next transaction began. If the commit fails, the stage resets: the buffered
    batches are dropped with the rest of the in-memory state and read again.

    At-least-once cycles do not stop the loop either: :meth:`start` ends the cycle (its changelog
    records queued, its offsets noted) and the loop goes on; each loop's :meth:`settle` commits
    the offsets of the cycles whose records are all acknowledged, in cycle order, asynchronously
    (a failed offset commit is logged and superseded by the next). A failed delivery resets the
    stage to the committed offsets. Before a rebalance or stop, :meth:`settle` with ``block``
    flushes and commits synchronously.
    """

    def __init__(self, config: AppConfig, serdes: SerdeRegistry) -> None:
        self.config = config
        self.serdes = serdes
        self.events = 0
        self.last = time.monotonic()
        self.pending_latency: list[int] = []
        self.open = False
        self.inflight: _InFlight | None = None
        self.buffered: list[tuple[int, EngineOutputs]] = []
        self.buffered_events = 0
        self.delivering: deque[_Delivering] = deque()
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="committer")

    def due(self) -> bool:
        """Every ``commit_interval_ms``, or earlier after ``commit_every_events`` events."""
        if self.events >= self.config.commit_every_events:
            return True
        return (time.monotonic() - self.last) * 1000 >= self.config.commit_interval_ms

    def discard(self) -> None:
        """Forget the open cycle (it was aborted); an in-flight commit is left to :meth:`settle`."""
        self.events = 0
        self.pending_latency.clear()
        self.buffered.clear()
        self.buffered_events = 0
        self.delivering.clear()  # the reset rewinds to the committed offsets
        self.open = False

    def _stage(
        self, parts: Partitions, out: OutputProducer, consumer: Consumer
    ) -> list[TopicPartition] | None:
        """Write the cycle's changelog records; return the offsets to commit (None: nothing)."""
        self.last = time.monotonic()
        txn = out.txn
        open_txn = txn is not None and txn.active
        dirty = any(e.dirty_campaigns or e.dirty_ensembles for e in parts.engines.values())
        if self.events == 0 and not open_txn and not dirty:
            return None
        if self.open:
            msg = "commit requested while a batch is half processed"
            raise AbortRequiredError(msg)
        serde = self.serdes["StateRecord"]
        topic = self.config.changelog_topic
        if txn is not None:
            txn.begin()
        self.open = True  # taking the dirty keys changes what a retry would write
        for p, engine in parts.engines.items():
            items = engine.take_dirty()
            if items:
                out.send(topic, encode_state_records(serde, items), p)
        return [
            TopicPartition(t, p, o) for (t, p), o in parts.offsets.items() if p in parts.engines
        ]

    def start(self, parts: Partitions, out: OutputProducer, consumer: Consumer) -> bool:
        """Start committing the cycle on the committer thread (exactly-once; at-least-once
        commits at once). Returns whether there was anything to commit."""
        txn = out.txn
        assert self.inflight is None, "one commit at a time"
        offsets = self._stage(parts, out, consumer)
        if offsets is None:
            return False
        if txn is None:
            ended = _Delivering(
                out.rotate(), offsets, self.events, self.pending_latency, time.monotonic()
            )
            self.delivering.append(ended)
            self.events = 0
            self.pending_latency = []
            self.open = False
            return True
        meta = consumer.consumer_group_metadata()
        future = self._committer.submit(txn.commit, offsets, meta)
        self.inflight = _InFlight(future, self.events, self.pending_latency, time.monotonic())
        self.events = 0
        self.pending_latency = []
        self.open = False
        return True

    def settle(self, block: bool, out: OutputProducer, consumer: Consumer | None) -> int | None:
        """The in-flight commit's outcome: the events it committed, ``None`` while it runs (only
        when not ``block``), 0 without one. At-least-once: commits the offsets of the cycles
        delivered so far.

        Raises:
            Whatever the commit raised (see :mod:`processor.kafka.transaction`);
            AbortRequiredError: at-least-once records were not delivered.
        """
        if self.delivering and consumer is not None:
            return self._settle_delivered(block, out, consumer)
        inflight = self.inflight
        if inflight is None:
            return 0
        if not block and not inflight.future.done():
            return None
        self.inflight = None
        inflight.future.result()  # each call inside has its own deadline: this returns
        self._committed(inflight.latency, inflight.started)
        return inflight.events

    def commit(self, parts: Partitions, out: OutputProducer, consumer: Consumer) -> int:
        """Close the cycle now; returns the number of input events it committed (0: no-op).

        Raises:
            AbortRequiredError: A batch is half processed, or the commit must be aborted.
            ProducerFailedError / ProducerFencedError: See :mod:`processor.kafka.transaction`.
        """
        assert self.inflight is None, "settle the in-flight commit first"
        started = time.monotonic()
        offsets = self._stage(parts, out, consumer)
        if offsets is None:
            return 0
        txn = out.txn
        if txn is not None:
            txn.commit(offsets, consumer.consumer_group_metadata())
        else:
            self._commit_at_least_once(out, consumer, offsets)
        self.open = False
        self._committed(self.pending_latency, started)
        self.pending_latency = []
        committed, self.events = self.events, 0
        return committed

    def _committed(self, latency: list[int], started: float) -> None:
        metrics.TRANSACTIONS.labels("committed").inc()
        if latency:
            now_ms = time.time() * 1000
            event_ms = np.asarray(latency, dtype=np.float64)
            metrics.DECISION_LATENCY.observe_many(np.maximum(0.0, (now_ms - event_ms) / 1000))
        metrics.COMMIT_SECONDS.observe(time.monotonic() - started)

    def _settle_delivered(self, block: bool, out: OutputProducer, consumer: Consumer) -> int | None:
        """Commit the offsets of the leading cycles whose records are all acknowledged."""
        if block:
            producer = out.producer
            assert producer is not None
            producer.flush(self.config.operation_timeout_s)
        done: dict[tuple[str, int], TopicPartition] = {}
        events = 0
        while self.delivering:
            head = self.delivering[0]
            if head.deliveries.errors:
                msg = f"at-least-once: delivery failed: {head.deliveries.errors[:3]}"
                raise AbortRequiredError(msg)
            if not head.deliveries.complete:
                if block:
                    left = head.deliveries.produced - head.deliveries.delivered
                    msg = f"at-least-once: {left} records undelivered after the flush"
                    raise AbortRequiredError(msg)
                break
            self.delivering.popleft()
            for tp in head.offsets:  # later cycles carry later offsets
                done[(tp.topic, tp.partition)] = tp
            events += head.events
            self._committed(head.latency, head.started)
        if not done and not events:
            return None if self.delivering else 0
        if done:
            self._commit_offsets(consumer, list(done.values()), asynchronous=not block)
        return events

    def _commit_offsets(
        self, consumer: Consumer, offsets: Sequence[TopicPartition], asynchronous: bool
    ) -> None:
        try:
            if asynchronous:
                consumer.commit(offsets=list(offsets), asynchronous=True)
            else:
                consumer.commit(offsets=list(offsets), asynchronous=False)
        except KafkaException as exc:
            if asynchronous:  # not sent now: the next cycle's commit carries later offsets
                logger.warning("at-least-once offset commit not sent: %s", exc)
                return
            msg = f"at-least-once offset commit failed: {exc}"
            raise AbortRequiredError(msg) from exc

    def on_offsets_committed(self, err: Any, _partitions: Any) -> None:
        """The consumer's ``on_commit`` callback (at-least-once): a failure only delays the
        offsets (the next commit carries later ones); it is counted and logged."""
        if err is not None:
            metrics.TRANSACTIONS.labels("offset_commit_failed").inc()
            logger.warning("at-least-once offset commit failed: %s", err)

    def _commit_at_least_once(
        self, out: OutputProducer, consumer: Consumer, offsets: Sequence[TopicPartition]
    ) -> None:
        producer = out.producer
        assert producer is not None
        deliveries = out.rotate()
        remaining = producer.flush(self.config.operation_timeout_s)
        if remaining or deliveries.errors or not deliveries.complete:
            errors = deliveries.errors[:3]
            msg = f"at-least-once: {remaining} undelivered, errors {errors}"
            raise AbortRequiredError(msg)
        if offsets:
            try:
                consumer.commit(offsets=list(offsets), asynchronous=False)
            except KafkaException as exc:
                msg = f"at-least-once offset commit failed: {exc}"
                raise AbortRequiredError(msg) from exc
