"""What the engine reads and writes: raw message batches, dead letters, outputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processor import __version__

# Below this many records per batch, record-by-record fastavro beats the columnar codecs' ~1 ms
# fixed cost (measured; small batches are what a latency-bound stage sees).
MIN_VECTORIZED = 64


@dataclass
class SourceBatch:
    """Raw messages of one topic-partition, in offset order."""

    topic: str
    partition: int
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def append(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        """Add one message."""
        self.keys.append(key)
        self.values.append(value)
        self.offsets.append(offset)

    def partition_of(self, i: int) -> int:
        """Input partition of message ``i``."""
        return self.partition


class MergedSource(SourceBatch):
    """The messages of one topic from several partitions, one after the other."""

    def __init__(self, sources: Sequence[SourceBatch]) -> None:
        super().__init__(sources[0].topic, -1)
        for s in sources:
            self.keys.extend(s.keys)
            self.values.extend(s.values)
            self.offsets.extend(s.offsets)
        self.partition_array = np.repeat(
            np.array([s.partition for s in sources], dtype=np.int64), [len(s) for s in sources]
        )

    def partition_of(self, i: int) -> int:
        """Input partition of message ``i``."""
        return int(self.partition_array[i])


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input record and why (becomes a DeadLetter Avro record)."""

    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    reason: str

    def to_record(self, now_ms: int) -> dict[str, Any]:
        """The DeadLetter schema's dict."""
        return {
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "key": self.key,
            "value": self.value,
            "error_class": self.error_class,
            "reason": self.reason,
            "processor_version": __version__,
            "dead_lettered_at": now_ms,
        }


@dataclass
class EngineOutputs:
    """What one batch produced: encoded outputs plus counts for metrics."""

    decisions: list[tuple[bytes, bytes]] = field(default_factory=list)
    decision_event_ms: list[int] = field(default_factory=list)
    weights: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rewards_applied: int = 0
    trades_applied: int = 0
    controls_applied: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    guardrails: Counter[str] = field(default_factory=Counter)
    arms_chosen: Counter[str] = field(default_factory=Counter)
    join: Counter[str] = field(default_factory=Counter)
    """Bid outcomes by reward-join status (joined, duplicate, restated, unknown, late, ...)."""
    outcomes_applied: list[int] = field(default_factory=list)
    """Source positions of the bid outcomes whose contribution was applied (replay reports)."""

    def extend(self, other: EngineOutputs) -> None:
        """Merge another batch's outputs into this one."""
        self.decisions.extend(other.decisions)
        self.decision_event_ms.extend(other.decision_event_ms)
        self.weights.extend(other.weights)
        self.dead_letters.extend(other.dead_letters)
        self.rewards_applied += other.rewards_applied
        self.trades_applied += other.trades_applied
        self.controls_applied += other.controls_applied
        self.modes.update(other.modes)
        self.guardrails.update(other.guardrails)
        self.arms_chosen.update(other.arms_chosen)
        self.join.update(other.join)
        self.outcomes_applied.extend(other.outcomes_applied)


def dead_letter(
    out: EngineOutputs, source: SourceBatch, i: int, error_class: str, reason: str
) -> None:
    """Add a dead letter for message ``i`` of ``source`` to ``out``: the message as it came (topic,
    partition, offset, key, value), the error class and the reason."""
    out.dead_letters.append(
        DeadLetter(
            source.topic,
            source.partition_of(i),
            source.offsets[i],
            source.keys[i],
            source.values[i],
            error_class,
            reason,
        )
    )
