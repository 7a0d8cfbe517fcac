"""At-least-once offset commits: a cycle's offsets wait for its own deliveries, in cycle order."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

from processor.codec.serde import SerdeRegistry
from processor.config import config_from_dict
from processor.kafka.transaction import AbortRequiredError
from processor.runtime.commit import CommitCycle, _Delivering
from processor.runtime.outputs import Deliveries


class Recorder:
    """Stands in for the producer (flush) and the consumer (commit) of one cycle."""

    def __init__(self, on_flush: Any = None) -> None:
        self.commits: list[tuple[dict[tuple[str, int], int], bool]] = []
        self.on_flush = on_flush
        self.producer = self
        self.txn = None

    def flush(self, timeout: float) -> int:
        if self.on_flush is not None:
            self.on_flush()
        return 0

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(({(tp.topic, tp.partition): tp.offset for tp in offsets}, asynchronous))


def cycle() -> CommitCycle:
    config = config_from_dict({"instance_id": "i", "processing_guarantee": "at_least_once"})
    return CommitCycle(config, SerdeRegistry())


def ended(produced: int, offsets: dict[int, int], events: int = 10) -> _Delivering:
    d = Deliveries()
    d.produced = produced
    tps = [TopicPartition("in", p, o) for p, o in offsets.items()]
    return _Delivering(d, tps, events, [], 0.0)


def test_offsets_wait_for_their_own_cycle_and_commit_in_order() -> None:
    c, kafka = cycle(), Recorder()
    first, second = ended(2, {0: 5, 1: 7}), ended(1, {0: 9})
    c.delivering.extend([first, second])
    assert c.settle(False, kafka, kafka) is None  # type: ignore[arg-type]
    second.deliveries.report(None, None)  # the later cycle is acknowledged first
    assert c.settle(False, kafka, kafka) is None  # type: ignore[arg-type]
    assert kafka.commits == []  # its offsets imply the first cycle's: they must wait
    first.deliveries.report(None, None)
    first.deliveries.report(None, None)
    assert c.settle(False, kafka, kafka) == 20  # type: ignore[arg-type]
    # one asynchronous commit: the later offsets win, partitions only the first had stay
    assert kafka.commits == [({("in", 0): 9, ("in", 1): 7}, True)]
    assert not c.delivering


def test_a_failed_delivery_commits_nothing_and_asks_for_a_reset() -> None:
    c, kafka = cycle(), Recorder()
    head = ended(2, {0: 5})
    c.delivering.append(head)
    head.deliveries.report(None, None)
    head.deliveries.report(_Err(), None)
    with pytest.raises(AbortRequiredError, match="delivery failed"):
        c.settle(False, kafka, kafka)  # type: ignore[arg-type]
    assert kafka.commits == []


def test_blocking_settle_flushes_then_commits_synchronously() -> None:
    head = ended(1, {0: 4})
    kafka = Recorder(on_flush=lambda: head.deliveries.report(None, None))
    c = cycle()
    c.delivering.append(head)
    assert c.settle(True, kafka, kafka) == 10  # type: ignore[arg-type]
    assert kafka.commits == [({("in", 0): 4}, False)]


def test_blocking_settle_with_records_still_undelivered_raises() -> None:
    c, kafka = cycle(), Recorder()
    c.delivering.append(ended(3, {0: 4}))
    with pytest.raises(AbortRequiredError, match="3 records undelivered"):
        c.settle(True, kafka, kafka)  # type: ignore[arg-type]
    assert kafka.commits == []


def test_discard_forgets_cycles_waiting_for_deliveries() -> None:
    c = cycle()
    c.delivering.append(ended(1, {0: 4}))
    c.discard()
    assert not c.delivering


class _Err:
    def str(self) -> str:
        return "Broker: Not enough in-sync replicas"
