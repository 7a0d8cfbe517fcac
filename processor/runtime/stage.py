"""The streaming stage: consume → handlers → produce, exactly once (DESIGN §5).

One commit cycle (every ``commit_interval_ms`` or ``commit_every_events``) is one Kafka
transaction holding the cycle's decisions, ensemble weights and dead letters, one changelog record
per key whose state changed, and the consumed offsets (+1). State of input partition *p* lives in
a :class:`~processor.engine.PartitionEngine` and in changelog partition *p*; an assigned partition
is paused until its state is restored.

Nothing is ever committed that was not processed to its end. When a cycle cannot be committed —
an abortable error, a producer that must be replaced, a bug in a handler, lost partitions — the
open transaction is aborted (or left to the new producer's ``init_transactions``), every engine
is dropped, the consumer rewinds to the committed offsets and the state is restored from the
changelog. README "Faults" lists every failure class and what the stage does about it.

In ``at_least_once`` mode there is no transaction: decisions are produced as soon as they are made,
and a cycle's offsets are committed (asynchronously) once every record it produced, changelog
included, is acknowledged — the loop never waits for it (:class:`CommitCycle`). After a crash,
events since the last offset commit are processed again, so a reward can be counted twice and a
request answered twice; decisions are visible sooner.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaException

from processor.codec.serde import SerdeRegistry, make_registry_client
from processor.config import AppConfig
from processor.engine import EngineOutputs, PartitionEngine
from processor.errors import (
    ConfigError,
    KafkaAuthError,
    ProcessorError,
    TopologyError,
)
from processor.kafka.clients import Clients, consume_ready
from processor.kafka.transaction import (
    AbortRequiredError,
    ProducerFailedError,
    ProducerFencedError,
)
from processor.observability import metrics
from processor.runtime.batch import Batch, group_messages, record_metrics, run_engines
from processor.runtime.commit import CommitCycle
from processor.runtime.faults import (
    PoisonTracker,
    StopRequestedError,
    Waiter,
)
from processor.runtime.outputs import OutputProducer
from processor.runtime.partitions import Partitions
from processor.runtime.rebalance import RebalanceCallbacks
from processor.runtime.recovery import Recovery
from processor.runtime.restore import restore_partitions
from processor.state.changelog import RestoreTimeoutError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FATAL = 3
EXIT_POISON = 4

REJOIN_TIMEOUT_S = 90.0
"""After partitions were lost, a consumer without a new assignment this long is replaced."""


class Stage(Recovery, RebalanceCallbacks):
    """One instance of the stage. ``run()`` blocks until stopped; returns the exit code."""

    def __init__(
        self,
        config: AppConfig,
        health: metrics.Health | None = None,
        kafka: Clients | None = None,
    ) -> None:
        self.config = config
        self.health = health or metrics.Health()
        self.kafka = kafka or Clients()
        registry = (
            make_registry_client(config.schema_registry_url, config.schema_registry)
            if config.schema_registry_url
            else None
        )
        self.serdes = SerdeRegistry(registry)
        self.parts = Partitions(config.topics.inputs)
        self.stopping = threading.Event()
        self.waiter = Waiter(self.health, self.stopping, self._authentication_failed)
        self.consumer: Consumer | None = None
        self.out = OutputProducer(
            lambda **extra: self.kafka.producer(config, **extra),
            exactly_once=config.exactly_once,
            timeout_s=config.operation_timeout_s,
            retry_budget_s=config.retry_budget_s,
            transaction_timeout_s=config.transaction_timeout_ms / 1000,
            stopping=self.stopping,
        )
        self.cycle = CommitCycle(config, self.serdes)
        self.poison = PoisonTracker()
        self.producer_transactional_id = (
            f"{config.app_id}-{config.instance_id}" if config.exactly_once else ""
        )
        self._last_gauges = 0.0
        self._current_batch: Batch | None = None
        self._reset_reason: str | None = None
        self._producer_failed: ProducerFailedError | None = None
        self._fatal: BaseException | None = None
        self._recoveries = 0
        self._lost_at: float | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: finish the batch, commit, close, exit 0."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            logger.info("signal %s: finishing the batch, committing and closing", signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Run until stopped. Returns 0 on a clean stop, non-zero after a fatal error."""
        cfg = self.config
        code = EXIT_OK
        clean = False
        try:
            partitions = self.kafka.topology(self.kafka.admin(cfg), cfg)
            logger.info(
                "starting app_id=%s guarantee=%s partitions=%d inputs=%s",
                cfg.app_id,
                cfg.processing_guarantee,
                partitions,
                ",".join(cfg.topics.inputs),
            )
            self.waiter.retry("starting the producer", self.out.start)
            if cfg.exactly_once:
                logger.info(
                    "transactional producer ready (transactional.id %s); any older instance "
                    "with this id is now fenced",
                    self.producer_transactional_id,
                )
            self.consumer = self._subscribe()
            self.health.alive = True
            # what start-up created (modules, config, clients) lives as long as the process:
            # leave it out of the full collections, which otherwise stop the loop for 15-25 ms
            gc.freeze()
            if self.config.exactly_once:
                # the committer thread returns from each client call into Python: at the default
                # 5 ms switch interval it waits up to that long for the loop to release the GIL,
                # a few times per commit (measured: p99 event → visible 142-172 → 138-148 ms)
                sys.setswitchinterval(0.001)
            code = self._loop()
            clean = code == EXIT_OK and self._fatal is None
        except StopRequestedError:
            logger.info("stopped while waiting; nothing was committed since the last commit")
        except KafkaAuthError as exc:
            logger.error("fatal: %s", exc)
            code = EXIT_CONFIG
        except (ConfigError, TopologyError) as exc:
            logger.error("%s", exc)
            code = EXIT_CONFIG
        except ProcessorError as exc:
            logger.error("fatal: %s", exc)
            code = EXIT_FATAL
        except Exception as exc:
            logger.exception("unexpected %s; exiting without committing", type(exc).__name__)
            code = EXIT_POISON
        finally:
            self._close(clean)
        return code

    def _loop(self) -> int:
        while not self.stopping.is_set():
            try:
                self._step()
            except StopRequestedError:
                return EXIT_OK
            except AbortRequiredError as exc:
                logger.warning("aborting: %s", exc)
                self._request_reset(f"abort: {exc}")
            except ProducerFailedError as exc:
                logger.warning("producer failed: %s", exc)
                self._producer_failed = exc
                self._request_reset(f"producer failed ({exc.reason})")
            except (ProducerFencedError, KafkaAuthError, ProcessorError) as exc:
                logger.error("fatal: %s; exiting without committing", exc)
                self._fatal = exc
            except Exception as exc:
                self._on_unexpected(exc)
            if self._fatal is not None:  # also set by a rebalance callback
                return self._exit_code(self._fatal)
        # stopping: commit what was fully processed
        try:
            if not self._reset_reason:
                self._commit()
        except (AbortRequiredError, ProducerFailedError) as exc:
            logger.warning("final commit failed (%s); it will be processed again", exc)
            self._abort_quietly()
        except Exception as exc:
            logger.exception("final commit: unexpected %s; nothing committed", type(exc).__name__)
            self._fatal = exc
            return EXIT_POISON
        return EXIT_OK

    @staticmethod
    def _exit_code(exc: BaseException) -> int:
        if isinstance(exc, KafkaAuthError):
            return EXIT_CONFIG
        if isinstance(exc, ProcessorError):
            return EXIT_FATAL
        return EXIT_POISON

    def _step(self) -> None:
        assert self.consumer is not None
        self.health.beat()
        if self._reset_reason is not None:
            self._reset()
        if self._lost_at is not None and time.monotonic() - self._lost_at > REJOIN_TIMEOUT_S:
            self._replace_consumer("no_assignment", "no assignment since partitions were lost")
        if self.parts.pending:
            self._restore_pending()
        if self.cycle.buffered_events >= self.config.commit_every_events:
            self._settle(block=True)  # do not run ahead of a slow commit without bound
        # after a handler failed, its range is re-read one message at a time (PoisonTracker)
        n = self.poison.batch_size(self.config.max_batch_events)
        msgs = consume_ready(self.consumer, n, self.config.poll_timeout_ms / 1000)
        if self._reset_reason is not None:
            return  # a rebalance callback inside consume() asked for a reset: handle it first
        if msgs:
            self._process(msgs)
        self.out.poll()
        self._settle(block=False)
        started = self.cycle.inflight is None and self.cycle.due()
        if started and self.cycle.start(self.parts, self.out, self.consumer):
            self.parts.export_gauges()
        if time.monotonic() - self._last_gauges >= 1.0:
            self._export_gauges()

    def _close(self, clean: bool) -> None:
        self.health.alive = False
        self.health.ready = False
        self.health.reason = "stopped"
        if not clean:
            # A commit still running on the committer thread holds a cycle processed to its
            # end: let it finish (each call inside has a deadline) rather than abort under it —
            # an abort racing the commit is not an operation the transaction allows.
            if self.cycle.inflight is not None:
                try:
                    self.cycle.settle(True, self.out, self.consumer)
                except Exception as exc:  # exiting anyway: what it did not commit is re-read
                    logger.warning("the commit in flight at exit failed: %s", exc)
            # the close below triggers on_revoke: it must not commit anything now
            self.cycle.open = True
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                logger.warning("consumer close: %s", exc)
        if not clean:
            self._abort_quietly()
        self.out.close(flush=clean)

    def _subscribe(self) -> Consumer:
        extra = {} if self.config.exactly_once else {"on_commit": self.cycle.on_offsets_committed}
        consumer = self.kafka.consumer(self.config, **extra)
        consumer.subscribe(
            list(self.config.topics.inputs),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    # ---- restore ----------------------------------------------------------------------------
    def _restore_pending(self) -> None:
        self._update_ready()

        def loaded(p: int, engine: PartitionEngine) -> None:
            self.parts.engines[p] = engine
            self.parts.pending.discard(p)
            if self.consumer is not None:
                self.consumer.resume(self.parts.topic_partitions([p]))

        try:
            restore_partitions(
                self.config,
                self.serdes,
                set(self.parts.pending),
                self.kafka.restore_consumer_factory(self.config),
                loaded,
                on_progress=self.health.beat,
            )
        except (RestoreTimeoutError, KafkaException) as exc:
            logger.warning("restore interrupted (%s); retrying", exc)
            self.waiter.sleep(1.0)
            return
        self._update_ready()
        self.parts.export_gauges()
        gc.freeze()  # the restored state stays too

    # ---- processing -------------------------------------------------------------------------
    def _process(self, msgs: list[Any]) -> None:
        started = time.monotonic()
        assert self.consumer is not None
        batch = group_messages(
            msgs, self.parts.engines, self.consumer.seek, lambda text: logger.warning("%s", text)
        )
        if not batch:
            return
        self._current_batch = batch
        overlapping = self.cycle.inflight is not None
        if self.out.txn is not None and not overlapping:
            self.out.txn.begin()
        self.cycle.open = True
        ends = batch.ends()
        for (topic, p), end in ends.items():
            self.parts.first_seen.setdefault((topic, p), batch.sources[p][topic].offsets[0])
            self.parts.offsets[(topic, p)] = end
        self.cycle.events += batch.events
        now_ms = int(time.time() * 1000)
        outs = run_engines(batch, self.parts.engines, self.config.topics.bid_requests, now_ms)
        total = EngineOutputs()
        for p, out in outs.items():
            if overlapping:  # the previous commit still runs: produce after it (see _settle)
                self.cycle.buffered.append((p, out))
            else:
                self._produce(p, out)
            total.extend(out)
        if overlapping:
            self.cycle.buffered_events += batch.events
        self.cycle.pending_latency.extend(total.decision_event_ms)
        self.cycle.open = False
        self._current_batch = None
        self.poison.passed(ends)
        record_metrics(batch, total)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)

    def _produce(self, partition: int, out: EngineOutputs) -> None:
        topics = self.config.topics
        self.out.send(topics.bid_decisions, out.decisions, partition)
        self.out.send(topics.ensemble_weights, out.weights, partition)
        if out.dead_letters:
            serde = self.serdes["DeadLetter"]
            now = int(time.time() * 1000)
            pairs = [(d.key, serde.encode(d.to_record(now))) for d in out.dead_letters]
            self.out.send(topics.dead_letters, pairs, None)

    def _settle(self, block: bool) -> None:
        """Finish an in-flight commit (raising its error); then begin the next transaction with
        the outputs that waited for it."""
        committed = self.cycle.settle(block, self.out, self.consumer)
        if committed is None:
            return
        if committed:
            self._recoveries = 0
            self.poison.progress()
        if self.cycle.buffered:
            if self.out.txn is not None:
                self.out.txn.begin()
            self.cycle.open = True
            for p, out in self.cycle.buffered:
                self._produce(p, out)
            self.cycle.buffered.clear()
            self.cycle.buffered_events = 0
            self.cycle.open = False

    def _commit(self) -> None:
        """Commit everything processed so far, now (rebalance, stop)."""
        assert self.consumer is not None
        self._settle(block=True)
        if self.cycle.commit(self.parts, self.out, self.consumer):
            self._recoveries = 0
            self.poison.progress()
        self.parts.export_gauges()

    # ---- gauges -----------------------------------------------------------------------------
    def _export_gauges(self) -> None:
        """Refresh the gauges that describe state and progress (about once a second)."""
        self._last_gauges = time.monotonic()
        if self.out.abandoned:
            self.out.reap()
        self.parts.export_gauges()
        if self.consumer is not None:
            try:
                restored = self.parts.assigned - self.parts.pending
                metrics.GAUGES.export_lag(self.consumer, set(self.parts.inputs), restored)
            except KafkaException as exc:
                # Lag is informational: a failed read (e.g. mid-rebalance) must not stop the loop
                logger.debug("consumer lag not exported: %s", exc)
        metrics.GAUGES.export_selection_ratio()
        metrics.GAUGES.export_arms(self.parts.engines.values())
