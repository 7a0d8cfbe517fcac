"""The engine's side of the reward join (DESIGN §3b): outcomes through the partition's join,
its counters, and the join records of a changelog partition. The join itself is
:mod:`processor.join`; :class:`~processor.engine.core.PartitionEngine` calls these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from processor.engine.outputs import EngineOutputs, SourceBatch, dead_letter
from processor.errors import StateError
from processor.observability import families
from processor.policy.bidding import OutcomeBatch
from processor.state.changelog import StoredState

if TYPE_CHECKING:
    from processor.engine.core import PartitionEngine

I64 = npt.NDArray[np.int64]


def join_outcomes(
    engine: PartitionEngine,
    good: OutcomeBatch,
    positions: I64,
    source: SourceBatch,
    out: EngineOutputs,
) -> None:
    """Join validated outcomes (at ``positions`` of ``source``) and apply what the join asks."""
    assert engine.join is not None
    joined = engine.join.process(good, engine.policy, engine.campaigns)
    for j, error_class, reason in joined.rejected:
        dead_letter(out, source, int(positions[j]), error_class, reason)
    count(joined.counts)
    out.join.update(joined.counts)
    out.outcomes_applied.extend(positions[joined.applied].tolist())
    events = joined.events
    if events is None:
        return
    retracts = bool((joined.weights < 0).any())  # without, the default (cheaper) path
    engine.policy.observe(events, engine.campaigns, weight=joined.weights if retracts else None)
    engine.dirty_campaigns.update(events.campaign_id.tolist())
    out.rewards_applied += len(joined.applied)


def count(counts: Mapping[str, int]) -> None:
    """Add one batch's join classification to the Prometheus counters."""
    for name, family in (
        ("joined", families.JOINED_OUTCOMES),
        ("duplicate", families.DUPLICATE_OUTCOMES),
        ("restated", families.RESTATED_OUTCOMES),
        ("late", families.LATE_OUTCOMES),
    ):
        if counts.get(name):
            family.inc(counts[name])
    unknown = counts.get("unknown", 0) + counts.get("unknown_rejected", 0)
    if unknown:
        families.UNKNOWN_OUTCOMES.inc(unknown)


def split_join_records(
    states: Mapping[tuple[str, str], StoredState],
) -> tuple[list[bytes], dict[tuple[str, str], StoredState]]:
    """A changelog partition's join chunks, and its other states.

    Raises:
        StateError: A join record that is not packed.
    """
    chunks: list[bytes] = []
    rest: dict[tuple[str, str], StoredState] = {}
    for ident, value in states.items():
        if ident[0] != "join":
            rest[ident] = value
        elif isinstance(value, bytes):
            chunks.append(value)
        else:
            msg = f"join record {ident[1]!r} is not packed"
            raise StateError(msg)
    return chunks, rest


def take_join_records(engine: PartitionEngine) -> list[tuple[str, str, StoredState]]:
    """The commit's join chunks as ``(kind, key, state)`` items; counts the evictions."""
    if engine.join is None:
        return []
    items: list[tuple[str, str, StoredState]] = [
        ("join", key, chunk) for key, chunk in engine.join.take_chunks()
    ]
    evicted = engine.join.log.evicted
    if evicted:
        families.DECISION_LOG_EVICTIONS.inc(evicted)
        engine.join.log.evicted = 0
    return items
