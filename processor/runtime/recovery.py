"""How the stage recovers: abort or replace the producer, rewind, replace the consumer.

A reset drops every engine and rewinds the consumer to the committed offsets; each partition is
restored from its changelog before it resumes. Broker outages are waited out
(:class:`~processor.runtime.faults.Waiter`); a producer or consumer that only a new one can fix
is replaced. Mixed into :class:`~processor.runtime.stage.Stage`.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer

from processor.config import AppConfig
from processor.errors import KafkaAuthError, TransactionError
from processor.kafka.clients import Clients
from processor.kafka.errors import CLIENT_ERRORS
from processor.kafka.transaction import AbortRequiredError, ProducerFailedError
from processor.observability import metrics
from processor.observability.http import Health
from processor.runtime.batch import Batch
from processor.runtime.commit import CommitCycle
from processor.runtime.faults import (
    PoisonTracker,
    Waiter,
    close_in_background,
    describe,
    read_committed,
)
from processor.runtime.outputs import MAX_WEDGED, OutputProducer
from processor.runtime.partitions import Partitions

logger = logging.getLogger(__name__)

MAX_RECOVERIES = 5
"""Producer replacements in a row (no successful commit in between) before the stage gives up."""


class Recovery:
    """Resets and client replacements (mixed into the Stage)."""

    config: AppConfig
    health: Health
    kafka: Clients
    consumer: Consumer | None
    out: OutputProducer
    cycle: CommitCycle
    parts: Partitions
    poison: PoisonTracker
    waiter: Waiter
    _current_batch: Batch | None
    _reset_reason: str | None
    _producer_failed: ProducerFailedError | None
    _fatal: BaseException | None
    _recoveries: int
    _lost_at: float | None

    def _subscribe(self) -> Consumer:
        raise NotImplementedError

    # ---- failure handling -------------------------------------------------------------------
    def _request_reset(self, reason: str) -> None:
        """Nothing of the open cycle may be committed: reset before the next batch."""
        self.cycle.discard()
        self._current_batch = None
        if self._reset_reason is None:
            self._reset_reason = reason

    def _authentication_failed(self, what: str) -> KafkaAuthError | None:
        """After a failed call: did librdkafka report an authentication error meanwhile?"""
        self.out.poll()  # serves the producer's error_cb
        return CLIENT_ERRORS.auth_failure(what)

    def _abort_quietly(self) -> None:
        txn = self.out.txn
        if txn is None or not txn.active or txn.wedged:
            return
        try:
            txn.abort()
            metrics.TRANSACTIONS.labels("aborted").inc()
        except (TransactionError, KafkaAuthError) as exc:
            logger.warning("abort failed: %s", exc)

    def _reset(self) -> None:
        """Abort (or replace the producer), drop every engine, rewind to the committed offsets;
        every assigned partition is restored before it resumes. Waits out broker outages."""
        reason = self._reset_reason
        self.health.ready = False
        self.health.reason = f"recovering: {reason}"
        self.cycle.delivering.clear()  # at-least-once: the rewind goes to what was committed
        if self.cycle.inflight is not None:
            try:  # whatever it did is in Kafka; the reset rewinds to what was committed
                self.cycle.settle(True, self.out, self.consumer)
            except ProducerFailedError as exc:
                self._producer_failed = self._producer_failed or exc
            except (AbortRequiredError, TransactionError) as exc:
                logger.warning("the commit in flight failed too: %s", exc)
        txn = self.out.txn
        if self._producer_failed is None and txn is not None and txn.active:
            try:
                txn.abort(budget_s=self.config.operation_timeout_s)
                metrics.TRANSACTIONS.labels("aborted").inc()
            except ProducerFailedError as exc:
                logger.warning("abort failed, replacing the producer: %s", exc)
                self._producer_failed = exc
        if self._producer_failed is not None:
            self._replace_producer(self._producer_failed)
        self.cycle.discard()
        parts = self.parts.reset()
        consumer = self.consumer
        if parts and consumer is not None:
            tps = self.parts.topic_partitions(parts)
            consumer.pause(tps)
            committed = read_committed(consumer, tps, self.waiter, self.config.operation_timeout_s)
            if committed is None:
                # its group coordinator stays unreachable although the cluster answers
                # (librdkafka#5511 on the consumer side): a new consumer rejoins the group
                self._replace_consumer("offsets_unreadable", "committed offsets unreadable")
                self._reset_reason = None
                return
            for tp in self.parts.rewind_targets(committed):
                consumer.seek(tp)
        logger.info("reset (%s): rewound %d partitions; restoring their state", reason, len(parts))
        self._reset_reason = None

    def _replace_consumer(self, label: str, reason: str) -> None:
        """Drop the consumer (closed in the background: its close can block on the group) and
        join the group with a new one; everything it held is restored after the rebalance."""
        old, self.consumer = self.consumer, None
        self.parts.drop(set(self.parts.assigned))
        self._lost_at = None
        metrics.CONSUMER_RECOVERIES.labels(label).inc()
        logger.warning("replacing the consumer (%s); it rejoins the group", reason)
        if old is not None:
            close_in_background(old)
        self.consumer = self.waiter.retry("creating the consumer", self._subscribe)

    def _replace_producer(self, failure: ProducerFailedError) -> None:
        self._recoveries += 1
        if self._recoveries > MAX_RECOVERIES:
            # a grant taken away at run time fails inside transactions with unhelpful errors:
            # the topology check names a missing one
            self.kafka.topology(self.kafka.admin(self.config), self.config)
            msg = (
                f"the producer failed {self._recoveries} times without a successful commit in "
                f"between (last: {failure}); giving up"
            )
            raise TransactionError(msg)
        if self.out.reap() >= MAX_WEDGED:
            msg = f"{MAX_WEDGED} producers are stuck inside librdkafka; restart the process"
            raise TransactionError(msg)
        self.waiter.retry("replacing the producer", lambda: self.out.replace(failure.reason))
        self._producer_failed = None

    def _on_unexpected(self, exc: Exception) -> None:
        """A bug or fault outside Kafka's error classes: never commit; find the input."""
        batch, self._current_batch = self._current_batch, None
        logger.exception("unexpected %s while processing %s", type(exc).__name__, describe(batch))
        give_up = self.poison.failed(batch, exc)
        if give_up is not None:
            logger.error("%s", give_up)
            self._fatal = exc
            return
        self._request_reset(f"{type(exc).__name__} in a handler")
