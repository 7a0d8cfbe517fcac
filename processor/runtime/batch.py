"""One consumed batch: group messages by partition and run the partition engines on them."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from processor.engine import EngineOutputs, PartitionEngine, SourceBatch
from processor.engine.requests import decide_requests
from processor.errors import TransactionError
from processor.kafka.errors import auth_error
from processor.observability import metrics

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Messages of one ``consume()`` call, by input partition and topic."""

    sources: dict[int, dict[str, SourceBatch]] = field(default_factory=dict)
    events: int = 0

    def __bool__(self) -> bool:
        return bool(self.sources)

    def describe(self) -> str:
        """``topic[p]@first..last`` of every source (for logs)."""
        return ", ".join(
            f"{topic}[{p}]@{s.offsets[0]}..{s.offsets[-1]}"
            for p, by_topic in sorted(self.sources.items())
            for topic, s in sorted(by_topic.items())
        )

    def ends(self) -> dict[tuple[str, int], int]:
        """Next offset per topic-partition after this batch."""
        return {
            (topic, p): s.offsets[-1] + 1
            for p, by_topic in self.sources.items()
            for topic, s in by_topic.items()
        }


def group_messages(
    msgs: list[Any],
    engines: Mapping[int, PartitionEngine],
    seek: Callable[[TopicPartition], None],
    warn: Callable[[str], None],
) -> Batch:
    """Group ``msgs`` by topic-partition, dropping errors and partitions not restored yet.

    A message of a partition without an engine was fetched before the pause took effect: the
    consumer is sought back to the first such message, so nothing is skipped once the partition
    is restored and resumed.

    Raises:
        TransactionError: A fatal consumer error.
        KafkaAuthError: The consumer is not authorized (a missing ACL).
    """
    groups: dict[tuple[str, int], list[Any]] = {}
    rewound: set[tuple[str, int]] = set()
    for msg in msgs:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            denied = auth_error(err, "consume")
            if denied is not None:
                raise denied
            if err.fatal():
                msg_ = f"fatal consumer error: {err.str()}"
                raise TransactionError(msg_)
            warn(f"consumer error: {err.str()}")
            continue
        tp = (msg.topic(), msg.partition())
        group = groups.get(tp)
        if group is None:
            if tp[1] not in engines:
                if tp not in rewound:
                    rewound.add(tp)
                    seek(TopicPartition(tp[0], tp[1], msg.offset()))
                continue
            group = groups[tp] = []
        group.append(msg)
    batch = Batch()
    by_partition: dict[int, dict[str, SourceBatch]] = defaultdict(dict)
    # keys / values / offsets with one list comprehension per group: ~2x cheaper per message
    # than appending one at a time
    for (topic, p), group in groups.items():
        source = SourceBatch(topic, p)
        source.keys = [m.key() for m in group]
        source.values = [m.value() for m in group]
        source.offsets = [m.offset() for m in group]
        by_partition[p][topic] = source
        batch.events += len(group)
    batch.sources = dict(by_partition)
    return batch


def run_engines(
    batch: Batch,
    engines: Mapping[int, PartitionEngine],
    requests_topic: str,
    now_ms: int,
) -> dict[int, EngineOutputs]:
    """Per partition: controls, rewards and trades (the engine), then the requests of every
    partition in one pass (decoded and encoded once, decided per partition)."""
    work = {p: dict(by_topic) for p, by_topic in batch.sources.items()}
    requests = {
        p: by_topic.pop(requests_topic)
        for p, by_topic in work.items()
        if requests_topic in by_topic
    }
    outs = {
        p: engines[p].process(by_topic, now_ms) if by_topic else EngineOutputs()
        for p, by_topic in work.items()
    }
    if requests:
        decide_requests(engines, requests, outs, now_ms)
    return outs


def record_metrics(batch: Batch, out: EngineOutputs) -> None:
    """Count one batch's inputs and what the engines did with them."""
    for by_topic in batch.sources.values():
        for topic, source in by_topic.items():
            metrics.EVENTS_CONSUMED.labels(topic).inc(len(source))
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
