"""Transactional producer calls with bounded timeouts and the error policy of DESIGN §5.

* retriable → retry the same call until ``retry_budget_s`` is spent;
* ``txn_requires_abort`` → :class:`AbortRequiredError` (the caller aborts, drops uncommitted
  state and rewinds);
* fatal (e.g. fenced by a newer instance with the same ``transactional.id``) or anything
  unclassified → :class:`~processor.errors.TransactionError`; the stage exits non-zero rather than
  keep going with state that may be stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer

from processor.errors import TransactionError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class AbortRequiredError(TransactionError):
    """The current transaction must be aborted; the stage can recover by rewinding."""


def _error_of(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


class Transactions:
    """Wraps a transactional producer's calls.

    Args:
        producer: A producer configured with ``transactional.id``.
        timeout_s: Timeout of each call.
        retry_budget_s: Total time retriable errors may consume per call.
    """

    def __init__(self, producer: Producer, timeout_s: float, retry_budget_s: float) -> None:
        self.producer = producer
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self.active = False

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.05
        while True:
            try:
                return fn()
            except KafkaException as exc:
                err = _error_of(exc)
                if err is None:
                    msg = f"{name} failed: {exc}"
                    raise TransactionError(msg) from exc
                if err.fatal():
                    msg = f"{name}: fatal producer error {err.name()}: {err.str()}"
                    raise TransactionError(msg) from exc
                if err.txn_requires_abort():
                    msg = f"{name}: transaction must be aborted: {err.name()}: {err.str()}"
                    raise AbortRequiredError(msg) from exc
                if err.retriable() and time.monotonic() + delay < deadline:
                    logger.warning("%s: retriable %s (%s); retrying", name, err.name(), err.str())
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                msg = f"{name} failed: {err.name()}: {err.str()}"
                raise TransactionError(msg) from exc

    def init(self) -> None:
        """``init_transactions``: fences any older producer with the same transactional id."""
        self._call("init_transactions", lambda: self.producer.init_transactions(self.timeout_s))

    def begin(self) -> None:
        """Start a transaction unless one is open."""
        if not self.active:
            self._call("begin_transaction", self.producer.begin_transaction)
            self.active = True

    def commit(self, offsets: list[Any], group_metadata: Any) -> None:
        """Send consumed offsets into the transaction and commit it."""
        if offsets:
            self._call(
                "send_offsets_to_transaction",
                lambda: self.producer.send_offsets_to_transaction(
                    offsets, group_metadata, self.timeout_s
                ),
            )
        self._call("commit_transaction", lambda: self.producer.commit_transaction(self.timeout_s))
        self.active = False

    def abort(self) -> None:
        """Abort the open transaction (no-op when none is open)."""
        if self.active:
            self._call("abort_transaction", lambda: self.producer.abort_transaction(self.timeout_s))
            self.active = False
