"""Rebalance callbacks of the stage: commit on revoke, abort on lost, check every assignment.

They run inside ``consume()`` and ``close()`` and never raise: a failure is recorded for the loop
(a reset, or a fatal error), which handles it before the next batch.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, TopicPartition

from processor.errors import KafkaAuthError, ProcessorError
from processor.kafka.transaction import (
    AbortRequiredError,
    ProducerFailedError,
    ProducerFencedError,
)
from processor.observability import metrics
from processor.observability.http import Health
from processor.runtime.commit import CommitCycle
from processor.runtime.faults import PoisonTracker
from processor.runtime.partitions import Partitions

logger = logging.getLogger(__name__)


class RebalanceCallbacks:
    """The ``on_assign`` / ``on_revoke`` / ``on_lost`` callbacks (mixed into the Stage)."""

    health: Health
    consumer: Consumer | None
    _lost_at: float | None
    parts: Partitions
    cycle: CommitCycle
    poison: PoisonTracker
    _fatal: BaseException | None
    _reset_reason: str | None
    _producer_failed: ProducerFailedError | None

    def _commit(self) -> None:
        raise NotImplementedError

    def _request_reset(self, reason: str) -> None:
        raise NotImplementedError

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return  # a replaced consumer closing in the background
        self._lost_at = None
        consumer.assign(partitions)
        consumer.pause(partitions)
        new = self.parts.assign(partitions)
        metrics.ASSIGNED_PARTITIONS.set(len(self.parts.assigned))
        if self.parts.refused is not None:
            logger.error("%s", self.parts.refused)
            self.health.ready = False
            self.health.reason = "assignment refused (not co-partitioned)"
            return
        self._update_ready()
        logger.info("assigned partitions %s; restoring state before resuming", sorted(new))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return  # a replaced consumer closing in the background: it holds nothing of ours
        revoked = {tp.partition for tp in partitions}
        if self._fatal is None and not self.cycle.open and self._reset_reason is None:
            logger.info("revoking %d topic-partitions: committing first", len(partitions))
            try:
                self._commit()
            except (AbortRequiredError, ProducerFailedError) as exc:
                logger.warning("commit on revoke failed: %s", exc)
                if isinstance(exc, ProducerFailedError):
                    self._producer_failed = exc
                self._request_reset("commit on revoke failed")
            except (ProducerFencedError, KafkaAuthError, ProcessorError) as exc:
                self._fatal = exc
            except Exception as exc:  # a bug in the commit path: never let it escape here
                logger.exception("commit on revoke: unexpected %s", type(exc).__name__)
                self._request_reset("commit on revoke failed")
        else:
            logger.info("revoking %d topic-partitions without a commit", len(partitions))
            self._request_reset("revoked during an unfinished cycle")
        self.parts.drop(revoked)
        self.poison.forget(revoked)
        metrics.ASSIGNED_PARTITIONS.set(len(self.parts.assigned))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return
        self._lost_at = time.monotonic()
        lost = {tp.partition for tp in partitions}
        logger.warning("lost partitions %s: aborting the open transaction", sorted(lost))
        self.parts.drop(lost)
        self.poison.forget(lost)
        metrics.ASSIGNED_PARTITIONS.set(len(self.parts.assigned))
        self._request_reset("partitions lost")

    def _update_ready(self) -> None:
        ready = not self.parts.pending and self.parts.refused is None
        self.health.ready = ready
        if ready:
            self.health.reason = "ready"
        elif self.parts.pending:
            self.health.reason = f"restoring {len(self.parts.pending)} partitions"
