"""Transactional producer calls: bounded in time, classified by what the stage must do next.

Every blocking call (``init_transactions``, ``send_offsets_to_transaction``,
``commit_transaction``, ``abort_transaction``) runs on this producer's own worker thread and is
waited for with a deadline. librdkafka's own timeouts are not always honoured: since librdkafka
2.10 a broker that drops out of a metadata response is decommissioned, and
``send_offsets_to_transaction`` can then wait forever for a group coordinator that no longer has
a broker thread (confluentinc/librdkafka#5511; reproduced here by restarting the single local
broker). A call past its deadline marks the producer *wedged*: the stage replaces it.

What a failure means for the caller (DESIGN §5):

* retriable → the same call is retried (librdkafka resumes it) until ``retry_budget_s`` is spent;
  then :class:`ProducerFailedError` (``retry_budget``).
* ``txn_requires_abort`` → :class:`AbortRequiredError`: abort, drop uncommitted state, rewind.
* fenced (``_FENCED``, ``PRODUCER_FENCED``, ``INVALID_PRODUCER_EPOCH``) while the open
  transaction is younger than ``transaction.timeout.ms`` → :class:`ProducerFencedError`: another
  instance owns this ``transactional.id``; the stage exits without committing.
* fenced after the open transaction outlived ``transaction.timeout.ms`` → the coordinator aborted
  *our* transaction and bumped the epoch (a broker outage longer than the timeout does this; the
  error is the same ``_FENCED``) → :class:`ProducerFailedError` (``txn_timeout``).
* any other fatal error (e.g. ``INVALID_TXN_STATE`` after a broker restart,
  confluentinc/librdkafka#4849), or a wedged call → :class:`ProducerFailedError`: the stage closes
  this producer, makes a new one with the same ``transactional.id`` (its ``init_transactions``
  aborts whatever was open), rewinds to the committed offsets and restores its state.
* missing ACLs / failed authentication → :class:`~processor.errors.KafkaAuthError`: no retry can
  fix it; the stage exits with a message naming the permission.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer

from processor.errors import KafkaAuthError, TransactionError
from processor.kafka.errors import AUTH_ERRORS, auth_error, error_of

logger = logging.getLogger(__name__)
T = TypeVar("T")

_FENCING = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
_BEGIN = "begin_transaction"
#: Extra time past a call's own timeout before the call counts as wedged.
WEDGE_GRACE_S = 5.0


class AbortRequiredError(TransactionError):
    """The current transaction must be aborted; the stage recovers by rewinding."""


class ProducerFencedError(TransactionError):
    """Another producer owns this ``transactional.id``: this instance must stop."""


class ProducerFailedError(TransactionError):
    """This producer cannot go on (fatal error, timed-out transaction, wedged call, retries
    exhausted); a new producer with the same ``transactional.id`` can.

    Attributes:
        reason: Short label for logs and the recoveries metric (``fatal_error``,
            ``txn_timeout``, ``wedged``, ``retry_budget``).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Job:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class CallRunner:
    """Runs blocking client calls on one daemon worker thread, each waited for with a deadline.

    After a call misses its deadline the runner is *wedged*: it refuses further calls (the worker
    is still inside the client) and its owner must discard the client.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.wedged: str | None = None
        self._current: _Job | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the caller's thread, re-raised there
                job.error = exc
            job.done.set()

    def run(self, what: str, fn: Callable[[], T], deadline_s: float) -> T:
        """Run ``fn`` on the worker; raise :class:`ProducerFailedError` past ``deadline_s``."""
        if self.wedged is not None:
            msg = f"{what}: the client is wedged in {self.wedged}"
            raise ProducerFailedError(msg, "wedged")
        job = _Job(fn)
        self._current = job
        self._jobs.put(job)
        # Event.wait is interruptible: SIGTERM's handler runs while we wait here.
        if not job.done.wait(deadline_s):
            self.wedged = what
            msg = (
                f"{what} did not return within {deadline_s:.1f}s although its timeout had passed "
                "(librdkafka#5511-like hang); replacing the producer"
            )
            raise ProducerFailedError(msg, "wedged")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]  # whatever fn returned

    def busy(self) -> bool:
        """True while the last call has not returned (a wedged call stays busy until it does)."""
        return self._current is not None and not self._current.done.is_set()

    def stop(self) -> None:
        """Let the worker exit once it is idle (a wedged worker stays where it is)."""
        self._jobs.put(None)


class Transactions:
    """Wraps a transactional producer's calls (see the module docstring for the error policy).

    Args:
        producer: A producer configured with ``transactional.id``.
        timeout_s: Timeout of each call.
        retry_budget_s: Total time retriable errors may consume per call.
        transaction_timeout_s: The producer's ``transaction.timeout.ms`` in seconds: tells a
            coordinator-aborted transaction of ours apart from fencing by another instance.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        producer: Producer,
        timeout_s: float,
        retry_budget_s: float,
        transaction_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self.transaction_timeout_s = transaction_timeout_s
        self.clock = clock
        self.active = False
        self.began_at = 0.0
        self.runner = CallRunner("txn-calls")

    @property
    def wedged(self) -> bool:
        """True once a call missed its deadline (the producer must be replaced)."""
        return self.runner.wedged is not None

    def _classify(self, name: str, exc: KafkaException) -> TransactionError | KafkaAuthError:
        err = error_of(exc)
        if err is None:
            return ProducerFailedError(f"{name} failed: {exc}", "fatal_error")
        denied = auth_error(err, name)
        if denied is not None:
            return denied
        if err.code() in _FENCING:
            age = self.clock() - self.began_at if self.active else 0.0
            if age >= self.transaction_timeout_s:
                msg = (
                    f"{name}: {err.name()} after the transaction was open {age:.0f}s "
                    f"(transaction.timeout.ms {self.transaction_timeout_s:.0f}s): the coordinator "
                    "aborted it; replacing the producer"
                )
                return ProducerFailedError(msg, "txn_timeout")
            msg = (
                f"{name}: fenced ({err.name()}: {err.str()}); another instance uses this "
                "transactional.id"
            )
            return ProducerFencedError(msg)
        if err.fatal():
            msg = f"{name}: fatal producer error {err.name()}: {err.str()}"
            return ProducerFailedError(msg, "fatal_error")
        if err.txn_requires_abort():
            msg = f"{name}: transaction must be aborted: {err.name()}: {err.str()}"
            return AbortRequiredError(msg)
        msg = f"{name} failed: {err.name()}: {err.str()}"
        return ProducerFailedError(msg, "fatal_error")

    def _call(
        self,
        name: str,
        fn: Callable[[], T],
        timeout_s: float | None = None,
        budget_s: float | None = None,
    ) -> T:
        """Run ``fn`` with retries of retriable errors, each attempt under the watchdog."""
        budget = self.retry_budget_s if budget_s is None else budget_s
        deadline = self.clock() + budget
        per_call = (self.timeout_s if timeout_s is None else timeout_s) + WEDGE_GRACE_S
        delay = 0.05
        while True:
            try:
                return self.runner.run(name, fn, per_call)
            except KafkaException as exc:
                err = error_of(exc)
                retriable = (
                    err is not None
                    and err.retriable()
                    and not err.fatal()
                    and not err.txn_requires_abort()
                    and err.code() not in AUTH_ERRORS
                )
                if not retriable:
                    raise self._classify(name, exc) from exc
                assert err is not None
                if self.clock() + delay >= deadline:
                    msg = (
                        f"{name}: still failing after {budget:.1f}s of retries "
                        f"({err.name()}: {err.str()})"
                    )
                    raise ProducerFailedError(msg, "retry_budget") from exc
                logger.warning("%s: retriable %s (%s); retrying", name, err.name(), err.str())
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def init(self) -> None:
        """``init_transactions``: fences any older producer with the same transactional id and
        aborts its open transaction."""
        self._call("init_transactions", lambda: self.producer.init_transactions(self.timeout_s))

    def begin(self) -> None:
        """Start a transaction unless one is open (a local call: no broker round trip)."""
        if not self.active:
            if self.wedged:
                msg = f"begin_transaction: the producer is wedged in {self.runner.wedged}"
                raise ProducerFailedError(msg, "wedged")
            try:
                self.producer.begin_transaction()
            except KafkaException as exc:
                raise self._classify(_BEGIN, exc) from exc
            self.active = True
            self.began_at = self.clock()

    def commit(self, offsets: list[Any], group_metadata: Any) -> None:
        """Send consumed offsets into the transaction and commit it."""
        if offsets:
            # librdkafka caps this call's timeout at transaction.timeout.ms; so does the watchdog
            timeout = min(self.timeout_s, self.transaction_timeout_s)
            self._call(
                "send_offsets_to_transaction",
                lambda: self.producer.send_offsets_to_transaction(offsets, group_metadata, timeout),
                timeout,
            )
        self._call("commit_transaction", lambda: self.producer.commit_transaction(self.timeout_s))
        self.active = False

    def abort(self, budget_s: float | None = None) -> None:
        """Abort the open transaction (no-op when none is open).

        Args:
            budget_s: Retry budget of this abort (default ``retry_budget_s``). The stage passes
                less: an abort that cannot finish is better left to a new producer, whose
                ``init_transactions`` aborts the transaction as well.
        """
        if self.active:
            self._call(
                "abort_transaction",
                lambda: self.producer.abort_transaction(self.timeout_s),
                budget_s=budget_s,
            )
            self.active = False

    def close(self) -> None:
        """Stop the worker thread (after the last call; a wedged worker is left behind)."""
        self.runner.stop()
