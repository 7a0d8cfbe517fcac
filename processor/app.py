"""The streaming stage: consume → handlers → produce, exactly once (DESIGN §5).

One commit cycle (every ``commit_interval_ms`` or ``commit_every_events``) is one Kafka
transaction holding the cycle's decisions, ensemble weights and dead letters, one changelog record
per key whose state changed, and the consumed offsets (+1). State of input partition *p* lives in
a :class:`~processor.engine.PartitionEngine` and in changelog partition *p*; an assigned
partition is
paused until its state is restored. When a transaction has to be aborted, every engine is dropped
and rebuilt from the committed changelog and the consumer rewinds to the committed offsets, so
in-memory state never runs ahead of what Kafka has committed.

In ``at_least_once`` mode there is no transaction: outputs and changelog are flushed, then offsets
are committed. After a crash, events since the last offset commit are processed again, so a reward
can be counted twice and a request answered twice; decisions are visible sooner.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from types import FrameType
from typing import Any

import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from processor import metrics
from processor.config import AppConfig
from processor.engine import EngineOutputs, PartitionEngine, SourceBatch
from processor.engine.requests import decide_requests
from processor.errors import ProcessorError, TransactionError
from processor.kafka.clients import (
    make_admin,
    make_consumer,
    make_producer,
    restore_consumer_factory,
)
from processor.kafka.serde import SerdeRegistry, make_registry_client
from processor.kafka.topics import check_topology
from processor.kafka.transaction import AbortRequiredError, Transactions
from processor.state.changelog import encode_state_records, iter_changelog

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 3


class Stage:
    """One instance of the stage. ``run()`` blocks until stopped; returns the exit code."""

    def __init__(self, config: AppConfig, health: metrics.Health | None = None) -> None:
        self.config = config
        self.health = health or metrics.Health()
        registry = (
            make_registry_client(config.schema_registry_url, config.schema_registry)
            if config.schema_registry_url
            else None
        )
        self.serdes = SerdeRegistry(registry)
        self.engines: dict[int, PartitionEngine] = {}
        self.assigned: set[int] = set()
        self.pending: set[int] = set()
        self.offsets: dict[tuple[str, int], int] = {}
        self.stopping = threading.Event()
        self._fatal = False
        self._events_since_commit = 0
        self._last_commit = time.monotonic()
        self._last_gauges = 0.0
        self._pending_latency: list[int] = []
        self._delivery_errors: list[str] = []
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.txn: Transactions | None = None
        self._inputs = set(config.topics.inputs)
        self.producer_transactional_id = (
            f"{config.app_id}-{config.instance_id}" if config.exactly_once else ""
        )

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
        partitions = check_topology(make_admin(cfg), cfg)
        logger.info(
            "starting app_id=%s guarantee=%s partitions=%d inputs=%s",
            cfg.app_id,
            cfg.processing_guarantee,
            partitions,
            ",".join(cfg.topics.inputs),
        )
        # Exactly-once: commit_transaction() reports any failed delivery, so no per-message
        # Python callback. At-least-once: a callback for failures only, checked before offsets.
        reports = (
            {}
            if cfg.exactly_once
            else {"on_delivery": self._on_delivery, "delivery.report.only.error": True}
        )
        self.producer = make_producer(cfg, **reports)
        if cfg.exactly_once:
            self.txn = Transactions(self.producer, cfg.operation_timeout_s, cfg.retry_budget_s)
            self.txn.init()
            logger.info(
                "transactional producer ready (transactional.id %s); any older instance with this "
                "id is now fenced",
                self.producer_transactional_id,
            )
        self.consumer = make_consumer(cfg)
        self.consumer.subscribe(
            list(cfg.topics.inputs),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.health.alive = True
        metrics.UP.set(1)
        code = EXIT_OK
        try:
            while not self.stopping.is_set():
                self.health.beat()
                if self.pending:
                    self._restore_pending()
                msgs = self.consumer.consume(cfg.max_batch_events, cfg.poll_timeout_ms / 1000)
                if msgs:
                    self._process(msgs)
                self.producer.poll(0)
                if self._commit_due():
                    self._commit()
                if time.monotonic() - self._last_gauges >= 1.0:
                    self._export_gauges()
            self._commit()
        except TransactionError as exc:
            logger.error("fatal: %s; exiting without committing", exc)
            self._fatal = True
            code = EXIT_FATAL
        except ProcessorError as exc:
            logger.error("fatal: %s", exc)
            self._fatal = True
            code = EXIT_FATAL
        finally:
            self._close()
        return code

    def _close(self) -> None:
        metrics.UP.set(0)
        self.health.alive = False
        self.health.ready = False
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                logger.warning("consumer close: %s", exc)
        if self.producer is not None and not self._fatal:
            self.producer.flush(self.config.operation_timeout_s)

    # ---- rebalance callbacks ----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        consumer.pause(partitions)
        new = {tp.partition for tp in partitions}
        self.assigned |= new
        self.pending |= new - set(self.engines)
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned))
        self.health.ready = not self.pending
        metrics.READY.set(1 if self.health.ready else 0)
        logger.info("assigned partitions %s; restoring state before resuming", sorted(new))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("revoking %d topic-partitions: committing first", len(partitions))
        if not self._fatal:
            try:
                self._commit()
            except AbortRequiredError as exc:
                logger.warning("commit on revoke needs an abort: %s", exc)
                self._abort_and_rewind()
        self._drop({tp.partition for tp in partitions})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions}
        logger.warning("lost partitions %s: aborting the open transaction", sorted(lost))
        self._drop(lost)
        if not self._fatal:
            self._abort_and_rewind()

    def _drop(self, parts: set[int]) -> None:
        for p in parts:
            self.engines.pop(p, None)
        self.assigned -= parts
        self.pending -= parts
        self.offsets = {tp: o for tp, o in self.offsets.items() if tp[1] not in parts}
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned))

    # ---- restore ----------------------------------------------------------------------------
    def _restore_pending(self) -> None:
        assert self.consumer is not None
        started = time.monotonic()
        # A restore allocates a dict per key and nothing cyclic; without this the collector
        # re-walks the growing heap again and again (JSON decoding measured ~1.6x slower).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        keys = 0
        try:
            # one consumer fetches every pending partition; each is loaded as soon as it is
            # complete while librdkafka goes on fetching the others
            for p, states, records in iter_changelog(
                restore_consumer_factory(self.config),
                self.config.changelog_topic,
                sorted(self.pending),
                self.serdes["StateRecord"],
                timeout_s=max(60.0, self.config.operation_timeout_s),
            ):
                engine = PartitionEngine(self.config, p, self.serdes)
                engine.restore_many(states)
                self.engines[p] = engine
                keys += len(states)
                logger.info(
                    "restored partition %d: %d keys from %d records (%.3fs into the restore)",
                    p,
                    len(states),
                    records,
                    time.monotonic() - started,
                )
        finally:
            if gc_was_enabled:
                gc.enable()
        metrics.RESTORE_SECONDS.observe(time.monotonic() - started)
        metrics.RESTORED_KEYS.inc(keys)
        tps = [TopicPartition(t, p) for t in self._inputs for p in self.pending]
        self.consumer.resume(tps)
        self.pending.clear()
        self.health.ready = True
        metrics.READY.set(1)
        self._update_key_gauges()

    # ---- processing -------------------------------------------------------------------------
    def _process(self, msgs: list[Any]) -> None:
        started = time.monotonic()
        by_partition: dict[int, dict[str, SourceBatch]] = defaultdict(dict)
        rewound: set[tuple[str, int]] = set()
        # Group by topic-partition first and read keys / values / offsets with one list
        # comprehension per group: ~2x cheaper per message than appending one at a time.
        groups: dict[tuple[str, int], list[Any]] = {}
        engines = self.engines
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    msg = f"fatal consumer error: {err.str()}"
                    raise TransactionError(msg)
                logger.warning("consumer error: %s", err.str())
                continue
            tp = (msg.topic(), msg.partition())
            group = groups.get(tp)
            if group is None:
                if tp[1] not in engines:
                    # Fetched before the pause took effect: rewind to the first such message so
                    # nothing is skipped once the partition is restored and resumed.
                    if tp not in rewound:
                        rewound.add(tp)
                        assert self.consumer is not None
                        self.consumer.seek(TopicPartition(tp[0], tp[1], msg.offset()))
                    continue
                group = groups[tp] = []
            group.append(msg)
        for (topic, p), group in groups.items():
            source = SourceBatch(topic, p)
            source.keys = [m.key() for m in group]
            source.values = [m.value() for m in group]
            source.offsets = [m.offset() for m in group]
            by_partition[p][topic] = source
        if not by_partition:
            return
        if self.txn is not None:
            self.txn.begin()
        now_ms = int(time.time() * 1000)
        for p, batches in by_partition.items():
            for topic, source in batches.items():
                self.offsets[(topic, p)] = source.offsets[-1] + 1
                metrics.EVENTS_CONSUMED.labels(topic).inc(len(source))
                self._events_since_commit += len(source)
        # Per partition: controls, rewards and trades first (the engine), then the requests of
        # every partition in one pass (decoded and encoded once, decided per partition).
        requests_topic = self.config.topics.bid_requests
        requests = {
            p: batches.pop(requests_topic)
            for p, batches in by_partition.items()
            if requests_topic in batches
        }
        outs = {
            p: self.engines[p].process(batches, now_ms) if batches else EngineOutputs()
            for p, batches in by_partition.items()
        }
        if requests:
            decide_requests(self.engines, requests, outs, now_ms)
        total = EngineOutputs()
        for p, out in outs.items():
            self._produce(p, out)
            total.extend(out)
        self._pending_latency.extend(total.decision_event_ms)
        self._record(total)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)

    def _produce(self, partition: int, out: EngineOutputs) -> None:
        topics = self.config.topics
        self._send(topics.bid_decisions, out.decisions, partition)
        self._send(topics.ensemble_weights, out.weights, partition)
        if out.dead_letters:
            serde = self.serdes["DeadLetter"]
            now = int(time.time() * 1000)
            pairs = [(d.key, serde.encode(d.to_record(now))) for d in out.dead_letters]
            self._send(topics.dead_letters, pairs, None)

    def _send(
        self, topic: str, pairs: Sequence[tuple[bytes | None, bytes]], partition: int | None
    ) -> None:
        if not pairs:
            return
        assert self.producer is not None
        produce = self.producer.produce
        for key, value in pairs:
            while True:
                try:
                    if partition is None:
                        produce(topic, value, key)
                    else:
                        produce(topic, value, key, partition)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        metrics.EVENTS_PRODUCED.labels(topic).inc(len(pairs))

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(err.str())

    def _record(self, out: EngineOutputs) -> None:
        for reason_key, n in Counter(d.error_class for d in out.dead_letters).items():
            metrics.DEAD_LETTERS.labels(reason_key).inc(n)
        if out.rewards_applied:
            metrics.REWARDS_APPLIED.labels("bid_outcome").inc(out.rewards_applied)
        if out.trades_applied:
            metrics.REWARDS_APPLIED.labels("trade_outcome").inc(out.trades_applied)
        for mode, n in out.modes.items():
            metrics.DECISIONS.labels(mode).inc(n)
        for rule, n in out.guardrails.items():
            metrics.GUARDRAILS.labels(rule).inc(n)
        for arm, n in out.arms_chosen.items():
            metrics.ARM_SELECTIONS.labels(metrics.arm_label(arm)).inc(n)

    # ---- commit -----------------------------------------------------------------------------
    def _commit_due(self) -> bool:
        if self._events_since_commit >= self.config.commit_every_events:
            return True
        elapsed_ms = (time.monotonic() - self._last_commit) * 1000
        return elapsed_ms >= self.config.commit_interval_ms

    def _commit(self) -> None:
        """Close the commit cycle (no-op when nothing happened since the last one)."""
        self._last_commit = time.monotonic()
        open_txn = self.txn is not None and self.txn.active
        if self._events_since_commit == 0 and not open_txn and not self._dirty():
            return
        started = time.monotonic()
        serde = self.serdes["StateRecord"]
        topic = self.config.changelog_topic
        if self.txn is not None:
            self.txn.begin()
        for p, engine in self.engines.items():
            items = engine.take_dirty()
            if items:
                self._send(topic, list(encode_state_records(serde, items)), p)
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in self.offsets.items() if p in self.engines
        ]
        assert self.consumer is not None
        assert self.producer is not None
        try:
            if self.txn is not None:
                self.txn.commit(offsets, self.consumer.consumer_group_metadata())
            else:
                remaining = self.producer.flush(self.config.operation_timeout_s)
                if remaining or self._delivery_errors:
                    errors = self._delivery_errors[:3]
                    msg = f"at-least-once: {remaining} undelivered, errors {errors}"
                    raise TransactionError(msg)
                if offsets:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
        except AbortRequiredError as exc:
            logger.warning("aborting: %s", exc)
            self._abort_and_rewind()
            return
        metrics.TRANSACTIONS.labels("committed").inc()
        if self._pending_latency:
            now_ms = time.time() * 1000
            event_ms = np.asarray(self._pending_latency, dtype=np.float64)
            metrics.DECISION_LATENCY.observe_many(np.maximum(0.0, (now_ms - event_ms) / 1000))
            self._pending_latency.clear()
        self._events_since_commit = 0
        metrics.COMMIT_SECONDS.observe(time.monotonic() - started)
        self._update_key_gauges()

    def _dirty(self) -> bool:
        return any(e.dirty_campaigns or e.dirty_ensembles for e in self.engines.values())

    def _abort_and_rewind(self) -> None:
        """Abort, drop in-memory state, rewind to committed offsets, restore from the changelog."""
        if self.txn is not None:
            self.txn.abort()
        metrics.TRANSACTIONS.labels("aborted").inc()
        self._events_since_commit = 0
        self._pending_latency.clear()
        self._delivery_errors.clear()
        parts = set(self.engines) | self.pending
        self.engines.clear()
        self.offsets.clear()
        if not parts or self.consumer is None:
            return
        tps = [TopicPartition(t, p) for t in self._inputs for p in parts]
        committed = self.consumer.committed(tps, timeout=self.config.operation_timeout_s)
        self.consumer.pause(tps)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        self.pending |= parts
        self.health.ready = False
        metrics.READY.set(0)

    def _export_gauges(self) -> None:
        """Refresh the gauges that describe state and progress (about once a second)."""
        self._last_gauges = time.monotonic()
        self._update_key_gauges()
        self._export_lag()
        metrics.GAUGES.export_selection_ratio()
        metrics.GAUGES.export_arms(self.engines.values())

    def _export_lag(self) -> None:
        if self.consumer is None:
            return
        try:
            metrics.GAUGES.export_lag(self.consumer, self._inputs, self.assigned - self.pending)
        except KafkaException as exc:
            # Lag is informational: a failed read (e.g. mid-rebalance) must not stop the loop.
            logger.debug("consumer lag not exported: %s", exc)

    def _update_key_gauges(self) -> None:
        metrics.RESTORING_PARTITIONS.set(len(self.pending))
        campaigns = ensembles = emergency = 0
        for engine in self.engines.values():
            c, e = engine.key_count()
            campaigns += c
            ensembles += e
            emergency += int(engine.campaigns.safety.emergency.sum())
        metrics.STATE_KEYS.labels("campaign").set(campaigns)
        metrics.STATE_KEYS.labels("ensemble").set(ensembles)
        metrics.EMERGENCY_CAMPAIGNS.set(emergency)
