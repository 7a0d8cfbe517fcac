"""Changelog restore sees everything committed, even right after the commit returns."""

from __future__ import annotations

import io
import json
import threading
from typing import TYPE_CHECKING, Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import Consumer

from processor.codec.serde import AvroSerde, SerdeRegistry, legacy_writer_schemas
from processor.config import config_from_dict
from processor.engine import PartitionEngine
from processor.kafka.clients import restore_consumer_factory
from processor.state.changelog import encode_state_records, iter_changelog, read_changelog

if TYPE_CHECKING:
    from tests.integration.conftest import ProducerFactory, TopicFactory


def _factory(bootstrap: str) -> Any:
    def factory(**extra: Any) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "restore-test",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                **extra,
            }
        )

    return factory


@pytest.mark.parametrize("factory_kind", ["plain", "stage"])
def test_restore_waits_for_transactions_still_open_below_committed_state(
    bootstrap: str,
    topic_factory: TopicFactory,
    producer_factory: ProducerFactory,
    factory_kind: str,
) -> None:
    """The last stable offset can stand below committed records (an open transaction in front of
    them, or commit markers not written yet right after ``commit_transaction`` returns). A restore
    that stops at the LSO misses the committed state; it must read to the high watermark."""
    topic = topic_factory(partitions=1)
    serde = AvroSerde("StateRecord")
    slow = producer_factory(transactional=True)
    fast = producer_factory(transactional=True)
    slow.begin_transaction()
    for key, value in encode_state_records(serde, [("campaign", "slow", {"v": 1})]):
        slow.produce(topic, value, key, partition=0)
    slow.flush(30)
    fast.begin_transaction()
    for key, value in encode_state_records(serde, [("campaign", "fast", {"v": 2})]):
        fast.produce(topic, value, key, partition=0)
    fast.commit_transaction(30)
    result: dict[str, Any] = {}
    # "stage": the factory the stage and `state show` use, in exactly-once mode (its enforced
    # read_committed must not swallow the read_uncommitted watermark probe).
    if factory_kind == "plain":
        factory = _factory(bootstrap)
    else:
        stage_config = config_from_dict({"bootstrap_servers": bootstrap, "app_id": "restore-test"})
        factory = restore_consumer_factory(stage_config)
    reader = threading.Thread(
        target=lambda: result.update(out=read_changelog(factory, topic, 0, serde, 30))
    )
    reader.start()
    reader.join(1.0)  # it must NOT finish while the slow transaction is open
    assert reader.is_alive(), "restore returned while a transaction below committed state was open"
    slow.commit_transaction(30)
    reader.join(30)
    states, records = result["out"]
    assert states == {("campaign", "slow"): {"v": 1}, ("campaign", "fast"): {"v": 2}}
    assert records == 2


def test_restore_right_after_commit_sees_the_committed_records(
    bootstrap: str, topic_factory: TopicFactory, producer_factory: ProducerFactory
) -> None:
    topic = topic_factory(partitions=1, config={"cleanup.policy": "compact"})
    serde = AvroSerde("StateRecord")
    producer = producer_factory(transactional=True)
    for round_ in range(5):
        producer.begin_transaction()
        items = [("campaign", f"c{i}", {"round": round_, "i": i}) for i in range(5)]
        for key, value in encode_state_records(serde, items):
            producer.produce(topic, value, key, partition=0)
        producer.commit_transaction(30)
        states, records = read_changelog(_factory(bootstrap), topic, 0, serde, timeout_s=30)
        assert records == 5 * (round_ + 1)
        assert states == {("campaign", f"c{i}"): {"round": round_, "i": i} for i in range(5)}


def test_restore_skips_aborted_records_and_an_empty_partition(
    bootstrap: str, topic_factory: TopicFactory, producer_factory: ProducerFactory
) -> None:
    topic = topic_factory(partitions=1)
    serde = AvroSerde("StateRecord")

    factory = _factory(bootstrap)

    assert read_changelog(factory, topic, 0, serde, timeout_s=30) == ({}, 0)
    producer = producer_factory(transactional=True)
    producer.begin_transaction()
    for key, value in encode_state_records(serde, [("campaign", "kept", {"v": 1})]):
        producer.produce(topic, value, key, partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for key, value in encode_state_records(
        serde, [("campaign", "kept", {"v": 2}), ("ensemble", "gone", {"v": 3})]
    ):
        producer.produce(topic, value, key, partition=0)
    producer.abort_transaction(30)
    states, _ = read_changelog(factory, topic, 0, serde, timeout_s=30)
    assert states == {("campaign", "kept"): {"v": 1}}


def test_restore_reads_packed_json_and_pre_0_2_records_in_one_partition(
    bootstrap: str, topic_factory: TopicFactory, producer_factory: ProducerFactory
) -> None:
    """A changelog written across an upgrade holds 0.1 records (no state_packed field at all),
    JSON and packed records; the last one per key wins whatever its form, and a stage restores
    every key to the state that was written."""
    topic = topic_factory(partitions=1, config={"cleanup.policy": "compact"})
    serde = AvroSerde("StateRecord")
    source = PartitionEngine(config_from_dict({}).replace(state_format="json"), 0, SerdeRegistry())
    keys = [f"c{i}" for i in range(6)]
    rows = source.campaigns.rows(keys)
    source.campaigns.thompson._arr["successes"][rows, 0] = np.arange(6) + 0.5
    source.campaigns.safety.emergency[rows[::2]] = True
    want = {k: source.campaigns.get_key_state(k) for k in keys}
    packed = dict(zip(keys, source.campaigns.pack(keys), strict=True))
    old_schema = legacy_writer_schemas("StateRecord")[0]
    producer = producer_factory(transactional=True)
    producer.begin_transaction()
    for i, key in enumerate(keys):
        # first a stale value of every key, then its real state in form i % 3
        for k, value in encode_state_records(serde, [("campaign", key, {"stale": True})]):
            producer.produce(topic, value, k, partition=0)
        if i % 3 == 0:  # written by 0.1: the record ends before state_packed
            buf = io.BytesIO()
            record = {
                "key": key,
                "kind": "campaign",
                "state_json": json.dumps(want[key]),
                "processor_version": "0.1.0",
                "written_at": 0,
            }
            fastavro.schemaless_writer(buf, old_schema, record)
            producer.produce(topic, buf.getvalue(), f"campaign/{key}".encode(), partition=0)
        else:
            state = want[key] if i % 3 == 1 else packed[key]
            for k, value in encode_state_records(serde, [("campaign", key, state)]):
                producer.produce(topic, value, k, partition=0)
    producer.commit_transaction(30)
    states, records = read_changelog(_factory(bootstrap), topic, 0, serde, timeout_s=30)
    assert records == 12
    assert [type(states[("campaign", k)]) for k in keys] == [dict, dict, bytes] * 2
    restored = PartitionEngine(config_from_dict({}), 0, SerdeRegistry())
    restored.restore_many(states)
    assert {k: restored.campaigns.get_key_state(k) for k in keys} == want


def test_iter_changelog_yields_every_partition_once_with_its_own_state(
    bootstrap: str, topic_factory: TopicFactory, producer_factory: ProducerFactory
) -> None:
    topic = topic_factory(partitions=3, config={"cleanup.policy": "compact"})
    serde = AvroSerde("StateRecord")
    producer = producer_factory(transactional=True)
    producer.begin_transaction()
    for p in (0, 2):  # partition 1 stays empty
        items = [("campaign", f"p{p}-c{i}", {"p": p, "i": i}) for i in range(200 * (p + 1))]
        for key, value in encode_state_records(serde, items):
            producer.produce(topic, value, key, partition=p)
    producer.commit_transaction(30)
    seen = list(iter_changelog(_factory(bootstrap), topic, [0, 1, 2], serde, timeout_s=30))
    assert sorted(p for p, _, _ in seen) == [0, 1, 2]
    by_partition = {p: (states, records) for p, states, records in seen}
    assert by_partition[1] == ({}, 0)
    for p in (0, 2):
        states, records = by_partition[p]
        assert records == 200 * (p + 1)
        assert states == {
            ("campaign", f"p{p}-c{i}"): {"p": p, "i": i} for i in range(200 * (p + 1))
        }
