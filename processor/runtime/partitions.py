"""What one instance holds: partition engines, the assignment, the restore queue and offsets.

Input partition *p* of every input topic belongs to one engine (its state) and to changelog
partition *p*. The range assignor under the classic group protocol keeps co-partitioned topics
together; :func:`misaligned` checks every assignment anyway, because a member with another
assignor (or a server-side assignor) could split them, and two instances would then both restore
and write changelog partition *p*.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from confluent_kafka import TopicPartition

from processor.engine import PartitionEngine
from processor.observability import metrics

TP = tuple[str, int]


def misaligned(partitions: Iterable[TopicPartition], inputs: Sequence[str]) -> str | None:
    """Why an assignment is not co-partitioned (``None`` when every input topic carries the same
    partition numbers)."""
    by_topic: dict[str, set[int]] = {topic: set() for topic in inputs}
    for tp in partitions:
        by_topic.setdefault(tp.topic, set()).add(tp.partition)
    if len({frozenset(parts) for parts in by_topic.values()}) <= 1:
        return None
    shown = "; ".join(f"{topic} {sorted(parts)}" for topic, parts in sorted(by_topic.items()))
    return (
        f"the assignment is not co-partitioned ({shown}): another member of the consumer group "
        "uses a different assignor or group protocol; refusing to process until a rebalance "
        "gives every input topic the same partitions"
    )


class Partitions:
    """Engines by input partition plus the bookkeeping of the commit cycle.

    Attributes:
        engines: State and handlers per restored input partition.
        assigned: Input partitions assigned to this instance.
        pending: Assigned partitions whose state must be (re)restored before they resume.
        offsets: Next offset to commit per input topic-partition consumed since the last commit.
        first_seen: First offset consumed per topic-partition since it was assigned: where a
            rewind goes when the group has no committed offset for it yet.
        refused: Why the current assignment is refused (``None`` when it is processed).
    """

    def __init__(self, inputs: Sequence[str]) -> None:
        self.inputs = tuple(inputs)
        self.engines: dict[int, PartitionEngine] = {}
        self.assigned: set[int] = set()
        self.pending: set[int] = set()
        self.offsets: dict[TP, int] = {}
        self.first_seen: dict[TP, int] = {}
        self.refused: str | None = None

    def topic_partitions(self, parts: Iterable[int]) -> list[TopicPartition]:
        """Every input topic-partition of ``parts``."""
        return [TopicPartition(t, p) for p in sorted(parts) for t in self.inputs]

    def assign(self, partitions: Sequence[TopicPartition]) -> set[int]:
        """Record an assignment; returns the partitions that need a restore."""
        self.refused = misaligned(partitions, self.inputs)
        new = {tp.partition for tp in partitions}
        self.assigned |= new
        if self.refused is not None:
            return set()
        self.pending |= new - set(self.engines)
        return new

    def drop(self, parts: Iterable[int]) -> None:
        """Forget partitions that left this instance (state, offsets, restore queue)."""
        gone = set(parts)
        for p in gone:
            self.engines.pop(p, None)
        self.assigned -= gone
        self.pending -= gone
        self.offsets = {tp: o for tp, o in self.offsets.items() if tp[1] not in gone}
        self.first_seen = {tp: o for tp, o in self.first_seen.items() if tp[1] not in gone}
        if not self.assigned:
            self.refused = None

    def reset(self) -> set[int]:
        """Drop every engine and tracked offset (their state may be ahead of what Kafka
        committed); every assigned partition must be restored again. Returns them."""
        self.engines.clear()
        self.offsets.clear()
        if self.refused is None:
            self.pending = set(self.assigned)
        return set(self.assigned)

    def rewind_targets(self, committed: Sequence[TopicPartition]) -> list[TopicPartition]:
        """Where each of ``committed`` (the group's committed offsets) resumes after a reset.

        A committed offset wins. Without one, the first offset consumed since the assignment
        (where ``auto.offset.reset`` started it). A topic-partition with neither was never read
        from, so it needs no seek and ``auto.offset.reset`` still decides where it starts.
        """
        out = []
        for tp in committed:
            if tp.offset >= 0:
                out.append(TopicPartition(tp.topic, tp.partition, tp.offset))
            else:
                first = self.first_seen.get((tp.topic, tp.partition))
                if first is not None:
                    out.append(TopicPartition(tp.topic, tp.partition, first))
        return out

    def export_gauges(self) -> None:
        """Keys held, campaigns in emergency, partitions restoring."""
        metrics.RESTORING_PARTITIONS.set(len(self.pending))
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned))
        campaigns = ensembles = emergency = 0
        for engine in self.engines.values():
            c, e = engine.key_count()
            campaigns += c
            ensembles += e
            emergency += int(engine.campaigns.safety.emergency.sum())
        metrics.STATE_KEYS.labels("campaign").set(campaigns)
        metrics.STATE_KEYS.labels("ensemble").set(ensembles)
        metrics.EMERGENCY_CAMPAIGNS.set(emergency)
