"""Helpers of the stage's fault handling: waiting out Kafka, and finding an input that breaks a
handler."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, TopicPartition

from processor.errors import ConfigError, KafkaAuthError
from processor.kafka.transaction import (
    AbortRequiredError,
    ProducerFailedError,
    ProducerFencedError,
)
from processor.observability.http import Health
from processor.runtime.batch import Batch

logger = logging.getLogger(__name__)
T = TypeVar("T")

POISON_STRIKES = 2
"""Failures of the same single input message before the stage gives up on it."""
BACKOFF_MAX_S = 5.0


class StopRequestedError(Exception):
    """The stage was asked to stop while it waited (internal to the runtime)."""


class Waiter:
    """Sleeps and retries for the stage without going deaf: liveness keeps beating (the stage
    waits on purpose), readiness says what it waits for, and a stop request ends every wait."""

    def __init__(
        self,
        health: Health,
        stopping: threading.Event,
        explain: Callable[[str], KafkaAuthError | None] | None = None,
    ) -> None:
        self.health = health
        self.stopping = stopping
        self.explain = explain

    def sleep(self, seconds: float) -> None:
        """Sleep, beating the heartbeat; :class:`StopRequestedError` when asked to stop."""
        end = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := end - time.monotonic()) > 0:
            self.health.beat()
            self.stopping.wait(min(left, 0.5))
        if self.stopping.is_set():
            raise StopRequestedError

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` until it succeeds, backing off (0.2 s doubling to 5 s) while Kafka is
        unreachable. Fencing, authorization and configuration errors are not retried, and
        neither is a failure that ``explain`` attributes to authentication."""
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except (ProducerFencedError, KafkaAuthError, ConfigError):
                raise
            except (ProducerFailedError, AbortRequiredError, KafkaException) as exc:
                denied = self.explain(what) if self.explain is not None else None
                if denied is not None:
                    raise denied from exc
                if self.stopping.is_set():
                    raise StopRequestedError from exc
                self.health.reason = f"waiting for Kafka: {what} (attempt {attempt})"
                log = logger.warning if attempt in (1, 3) or attempt % 20 == 0 else logger.debug
                log("%s failed (attempt %d): %s; retrying in %.1fs", what, attempt, exc, delay)
                self.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)


class PoisonTracker:
    """Finds the input message that makes a handler fail, and says when to give up.

    After a batch fails, its range is re-read one message at a time (:meth:`batch_size` is 1
    until every partition of it has been passed again). A single message that fails
    :data:`POISON_STRIKES` times is named and the stage exits; so does a failure that keeps
    coming back outside any batch (e.g. in the commit path).
    """

    def __init__(self) -> None:
        self.careful: dict[tuple[str, int], int] = {}
        self.strikes: Counter[tuple[str, int, int]] = Counter()
        self.other_strikes = 0

    def batch_size(self, normal: int) -> int:
        """How many messages the next ``consume()`` may take."""
        return 1 if self.careful else normal

    def passed(self, ends: dict[tuple[str, int], int]) -> None:
        """A batch reaching these next offsets was processed."""
        for tp, end in ends.items():
            careful_end = self.careful.get(tp)
            if careful_end is not None and end >= careful_end:
                del self.careful[tp]

    def forget(self, partitions: set[int]) -> None:
        """Partitions left this instance."""
        self.careful = {tp: o for tp, o in self.careful.items() if tp[1] not in partitions}

    def progress(self) -> None:
        """A commit with new events went through."""
        self.other_strikes = 0
        if not self.careful:
            self.strikes.clear()

    def failed(self, batch: Batch | None, exc: BaseException) -> str | None:
        """Record a failure; returns why to give up (exit), or ``None`` to rewind and retry."""
        if batch is not None and self.careful and batch.events == 1:
            ((_, by_topic),) = batch.sources.items()
            ((topic, source),) = by_topic.items()
            key = (topic, source.partition, source.offsets[0])
            self.strikes[key] += 1
            if self.strikes[key] >= POISON_STRIKES:
                return (
                    f"input {topic}[{key[1]}] at offset {key[2]} fails processing every time "
                    f"({type(exc).__name__}: {exc}); exiting without committing it (fix the "
                    "bug, or move the group's offset past it)"
                )
        else:
            self.other_strikes += 1
            if self.other_strikes > POISON_STRIKES + 1:
                return f"processing keeps failing ({type(exc).__name__}: {exc}); exiting"
        if batch:
            assert batch is not None
            for tp, end in batch.ends().items():
                self.careful[tp] = max(end, self.careful.get(tp, 0))
        return None


def describe(batch: Any) -> str:
    """Where a failure happened, for the log."""
    return batch.describe() if isinstance(batch, Batch) else "outside a batch"


def read_committed(
    consumer: Consumer,
    tps: list[TopicPartition],
    waiter: Waiter,
    timeout_s: float,
    attempts: int = 3,
) -> list[TopicPartition] | None:
    """The group's committed offsets of ``tps``; ``None`` when ``attempts`` reads in a row
    failed (the consumer's group coordinator is unreachable: the caller replaces it)."""
    per_call = min(timeout_s, 10.0)
    for attempt in range(1, attempts + 1):
        try:
            return consumer.committed(tps, timeout=per_call)
        except KafkaException as exc:
            logger.warning("reading the committed offsets failed (attempt %d): %s", attempt, exc)
            waiter.health.reason = "waiting for Kafka: reading the committed offsets"
            waiter.sleep(min(0.5 * attempt, BACKOFF_MAX_S))
    return None


def close_in_background(consumer: Consumer) -> None:
    """Close a discarded consumer without holding up the loop (its close may wait for the
    group coordinator). Its rebalance callbacks then run in that thread: the stage ignores
    callbacks of a consumer that is no longer its own."""

    def close() -> None:
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            logger.debug("closing a discarded consumer: %s", exc)

    threading.Thread(target=close, name="consumer-close", daemon=True).start()
