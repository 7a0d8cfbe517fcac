"""The stage's producer: outputs, changelog and dead letters, and its replacement after a failure.

Exactly-once: one transactional producer (:class:`~processor.kafka.transaction.Transactions`).
When it fails in a way only a new producer can fix (a fatal error other than fencing, a
transaction the coordinator timed out, a call that never returned), :meth:`OutputProducer.replace`
makes a new one with the same ``transactional.id``; its ``init_transactions`` aborts whatever the
old one left open. A wedged producer cannot be closed while the client is still inside a call, so
it is kept aside (``abandoned``) until that call returns; more than :data:`MAX_WEDGED` of them
means this process should be restarted.

At-least-once: a plain idempotent producer. Every record carries the delivery callback of the
commit cycle it was produced in (:class:`Deliveries`); a cycle's offsets are committed once every
one of its records is acknowledged, without waiting for the records of later cycles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from processor.kafka.errors import auth_error, error_of
from processor.kafka.transaction import AbortRequiredError, ProducerFailedError, Transactions
from processor.observability import metrics

logger = logging.getLogger(__name__)

MAX_WEDGED = 3
"""Producers still stuck inside a client call that this process tolerates before it gives up."""


class Deliveries:
    """The records one at-least-once commit cycle produced, and their delivery reports.

    Reports of one partition arrive in produce order, of different partitions in any order: so a
    cycle is complete when its own count is, not when some count over all cycles is.
    """

    __slots__ = ("delivered", "errors", "produced")

    def __init__(self) -> None:
        self.produced = 0
        self.delivered = 0
        self.errors: list[str] = []

    def report(self, err: KafkaError | None, _msg: Any) -> None:
        """The producer's delivery callback (served by ``poll`` / ``flush``)."""
        if err is None:
            self.delivered += 1
        else:
            self.errors.append(err.str())

    @property
    def complete(self) -> bool:
        """Every record produced has a report (successful or not)."""
        return self.delivered + len(self.errors) >= self.produced


class OutputProducer:
    """Produces the stage's records; owns the (transactional) producer and replaces it.

    Args:
        make_producer: Builds a producer from extra librdkafka settings.
        exactly_once: Transactional producer (else at-least-once with a delivery callback).
        timeout_s: Timeout of each transactional call and of a full output queue.
        retry_budget_s: Total time retriable errors may take per transactional call.
        transaction_timeout_s: The producer's ``transaction.timeout.ms`` in seconds.
        stopping: Set when the stage is asked to stop (a full queue then gives up at once).
    """

    def __init__(
        self,
        make_producer: Callable[..., Producer],
        *,
        exactly_once: bool,
        timeout_s: float,
        retry_budget_s: float,
        transaction_timeout_s: float,
        stopping: threading.Event,
    ) -> None:
        self._make = make_producer
        self.exactly_once = exactly_once
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self.transaction_timeout_s = transaction_timeout_s
        self.stopping = stopping
        self.producer: Producer | None = None
        self.txn: Transactions | None = None
        self.generation = 0
        self.abandoned: list[tuple[Producer, Transactions]] = []
        self.deliveries = Deliveries()

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Create the producer; in exactly-once mode ``init_transactions`` (fences zombies)."""
        # at-least-once: successes are reported too (each record carries its cycle's callback)
        reports = {} if self.exactly_once else {"delivery.report.only.error": False}
        producer = self._make(**reports)
        self.producer = producer
        self.generation += 1
        if self.exactly_once:
            self.txn = Transactions(
                producer, self.timeout_s, self.retry_budget_s, self.transaction_timeout_s
            )
            self.txn.init()

    def replace(self, reason: str) -> None:
        """Discard the current producer and start a new one (one attempt; may raise)."""
        self._discard()
        metrics.PRODUCER_RECOVERIES.labels(reason).inc()
        self.start()
        logger.warning(
            "producer replaced (%s): generation %d; any transaction the old one left open is "
            "aborted",
            reason,
            self.generation,
        )

    def _discard(self) -> None:
        old, txn = self.producer, self.txn
        self.producer = None
        self.txn = None
        self.deliveries = Deliveries()
        if old is None:
            return
        if txn is not None and txn.wedged:
            # the worker is still inside the client: closing it now would free memory in use
            self.abandoned.append((old, txn))
            logger.warning("keeping a wedged producer aside (%d now)", len(self.abandoned))
        else:
            if txn is not None:
                txn.close()
            _close_in_background(old)
        self.reap()

    def reap(self) -> int:
        """Close abandoned producers whose stuck call has returned; returns how many are left."""
        still = []
        for producer, txn in self.abandoned:
            if txn.runner.busy():
                producer.poll(0)  # drain its log and error queues (poll is thread-safe)
                still.append((producer, txn))
            else:
                txn.close()
                _close_in_background(producer)
        self.abandoned = still
        metrics.WEDGED_PRODUCERS.set(len(still))
        return len(still)

    def close(self, flush: bool) -> None:
        """Flush (when ``flush``) and close the current producer."""
        producer, txn = self.producer, self.txn
        if producer is None:
            return
        if flush and (txn is None or not txn.wedged):
            try:
                producer.flush(self.timeout_s)
            except KafkaException as exc:
                logger.warning("producer flush on close: %s", exc)
        if txn is not None:
            txn.close()
        if txn is None or not txn.wedged:
            try:
                _close(producer)
            except (KafkaException, RuntimeError) as exc:
                logger.warning("producer close: %s", exc)
        self.producer = None
        self.txn = None

    # ---- records ----------------------------------------------------------------------------
    def send(
        self, topic: str, pairs: Sequence[tuple[bytes | None, bytes]], partition: int | None
    ) -> None:
        """Queue ``(key, value)`` pairs (to ``partition``, or by key when ``None``).

        A full queue is waited out (serving delivery reports) for at most ``timeout_s``, and not
        at all once the stage is stopping: then :class:`AbortRequiredError`, so the transaction
        with the records queued so far is aborted instead of half committed.
        """
        if not pairs:
            return
        producer = self.producer
        assert producer is not None
        produce = producer.produce
        deliveries = None if self.exactly_once else self.deliveries
        extra: dict[str, Any] = {} if deliveries is None else {"on_delivery": deliveries.report}
        queued = 0
        try:
            for key, value in pairs:
                waited_since = 0.0
                while True:
                    try:
                        if partition is None:
                            produce(topic, value, key, **extra)
                        else:
                            produce(topic, value, key, partition, **extra)
                        queued += 1
                        break
                    except BufferError:
                        now = time.monotonic()
                        waited_since = waited_since or now
                        if self.stopping.is_set() or now - waited_since > self.timeout_s:
                            why = "the stage is stopping" if self.stopping.is_set() else "timed out"
                            msg = f"output queue full and {why}: aborting the transaction"
                            raise AbortRequiredError(msg) from None
                        producer.poll(0.05)
                    except KafkaException as exc:
                        raise self._produce_error(exc) from exc
        finally:
            if deliveries is not None:
                deliveries.produced += queued
        metrics.EVENTS_PRODUCED.labels(topic).inc(len(pairs))

    def _produce_error(self, exc: KafkaException) -> Exception:
        err = error_of(exc)
        if err is not None:
            denied = auth_error(err, "produce")
            if denied is not None:
                return denied
            if err.txn_requires_abort() or (err.code() == KafkaError._STATE and not err.fatal()):
                return AbortRequiredError(f"produce: {err.name()}: {err.str()}")
        return ProducerFailedError(f"produce failed: {exc}", "fatal_error")

    def poll(self) -> None:
        """Serve delivery reports."""
        if self.producer is not None:
            self.producer.poll(0)

    def rotate(self) -> Deliveries:
        """At-least-once: the deliveries of the cycle that ends now; later records get new ones."""
        ended, self.deliveries = self.deliveries, Deliveries()
        return ended


def _close_in_background(producer: Producer) -> None:
    """Close a discarded producer without holding up the loop (close waits for its threads)."""

    def close() -> None:
        try:
            producer.purge()
            _close(producer)
        except (KafkaException, RuntimeError) as exc:
            logger.debug("closing a discarded producer: %s", exc)

    threading.Thread(target=close, name="producer-close", daemon=True).start()


def _close(producer: Producer) -> None:
    # Producer.close() is recent (confluent-kafka 2.13); older clients close when collected.
    close = getattr(producer, "close", None)
    if close is not None:
        close()
