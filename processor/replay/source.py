"""Where replayed events come from: a time range of Kafka topics, or exported Avro files.

Range semantics (documented contract):

* The range ``[from, to]`` is bounded by the Kafka **record timestamp** (producer CreateTime, or
  the broker's LogAppendTime if the topic is configured so), inclusive at both ends. Reading
  starts at ``offsets_for_times(from)`` and stops, per partition, at the first record whose
  timestamp is after ``to`` or at the end offset seen when reading started. Records are read
  ``read_committed``: aborted transactions never enter a replay.
* The events' own ``event_time`` field orders the merge: a k-way heap merge of the per-partition
  sequences on ``(event_time, topic, partition, offset)``, so ties are broken by topic, partition
  and offset and the merged order is a pure function of the input.
* Exported files keep each record's topic, partition, offset, timestamp, key and value bytes, so a
  replay from a file sees exactly the bytes a replay from the topics sees.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.errors import ConfigError, ProcessorError
from processor.kafka.clients import admin_config

logger = logging.getLogger(__name__)

EXPORT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "ExportedRecord",
    "namespace": "processor.v1.export",
    "doc": "One Kafka record as read from its topic (raw key and value bytes).",
    "fields": [
        {"name": "topic", "type": "string", "doc": "Source topic."},
        {"name": "partition", "type": "int", "doc": "Source partition."},
        {"name": "offset", "type": "long", "doc": "Source offset."},
        {"name": "timestamp", "type": "long", "doc": "Kafka record timestamp (epoch ms)."},
        {"name": "key", "type": ["null", "bytes"], "doc": "Raw key bytes."},
        {"name": "value", "type": ["null", "bytes"], "doc": "Raw value bytes."},
    ],
}
_PARSED_EXPORT = fastavro.parse_schema(EXPORT_SCHEMA)


class RawRecord(NamedTuple):
    """One input record; tuples order by ``(event_time, topic, partition, offset)``."""

    event_time: int
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


Partitions = dict[tuple[str, int], list[RawRecord]]


def parse_time(text: str) -> int:
    """ISO 8601 (``Z`` or an offset; naive means UTC) or epoch milliseconds → epoch ms.

    Raises:
        ConfigError: Not a time.
    """
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    try:
        moment = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError as exc:
        msg = f"not an ISO 8601 time: {text!r} (e.g. 2026-11-01T00:00:00Z)"
        raise ConfigError(msg) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def schema_by_topic(config: AppConfig) -> dict[str, str]:
    """Record type of every topic replay reads or verifies."""
    t = config.topics
    return {
        t.bid_requests: "BidRequest",
        t.bid_outcomes: "BidOutcome",
        t.trade_outcomes: "TradeOutcome",
        t.control: "ControlCommand",
        t.bid_decisions: "BidDecision",
        t.ensemble_weights: "EnsembleWeights",
    }


def with_event_times(
    items: Sequence[tuple[str, int, int, int, bytes | None, bytes | None]],
    schemas: Mapping[str, str],
    serdes: SerdeRegistry,
) -> list[RawRecord]:
    """``RawRecord``s of one partition's ``(topic, partition, offset, ts, key, value)`` items.

    The event time is the record's ``event_time`` field; an undecodable record (it will become a
    dead letter) or a topic without a known schema falls back to the Kafka timestamp.
    """
    if not items:
        return []
    topic = items[0][0]
    times = [it[3] for it in items]
    schema = schemas.get(topic)
    if schema is not None:
        records, ok, _ = serdes[schema].decode_many([it[5] for it in items])
        for rec, i in zip(records, ok, strict=True):
            value = rec.get("event_time")
            if isinstance(value, int):
                times[i] = value
    return [
        RawRecord(t, topic, p, off, ts, k, v)
        for t, (topic, p, off, ts, k, v) in zip(times, items, strict=True)
    ]


def merge(partitions: Mapping[tuple[str, int], Sequence[RawRecord]]) -> Iterator[RawRecord]:
    """K-way heap merge by ``(event_time, topic, partition, offset)``.

    Each partition is a run in offset order; a partition whose event times are not monotonic
    still merges deterministically (the heap compares the heads).
    """
    runs = [partitions[k] for k in sorted(partitions)]
    return heapq.merge(*runs)


def read_topics(
    config: AppConfig,
    topics: Sequence[str],
    from_ms: int,
    to_ms: int,
    serdes: SerdeRegistry,
    timeout_s: float = 60.0,
) -> Partitions:
    """Every committed record of ``topics`` with a timestamp in ``[from_ms, to_ms]``.

    Raises:
        ConfigError: A topic does not exist.
        ProcessorError: The broker did not deliver the range within ``timeout_s``.
    """
    conf = admin_config(config)
    conf.update(
        {
            "group.id": f"{config.app_id}-replay-{time.time_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            # a replay reads whole ranges: librdkafka's 1000 ms fetch backoff once a partition's
            # queue is full would idle it (see consumer_config), and large fetches help as in
            # the restore
            "fetch.queue.backoff.ms": 10,
            "max.partition.fetch.bytes": 16 << 20,
        }
    )
    consumer = Consumer(conf)
    try:
        return _read(consumer, topics, from_ms, to_ms, schema_by_topic(config), serdes, timeout_s)
    finally:
        consumer.close()


def _read(
    consumer: Consumer,
    topics: Sequence[str],
    from_ms: int,
    to_ms: int,
    schemas: Mapping[str, str],
    serdes: SerdeRegistry,
    timeout_s: float,
) -> Partitions:
    wanted: list[TopicPartition] = []
    for topic in topics:
        md = consumer.list_topics(topic, timeout=10)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            msg = f"topic {topic} does not exist (replay reads {', '.join(topics)})"
            raise ConfigError(msg)
        wanted += [TopicPartition(topic, p, from_ms) for p in sorted(meta.partitions)]
    starts = consumer.offsets_for_times(wanted, timeout=10)
    assign: list[TopicPartition] = []
    ends: dict[tuple[str, int], int] = {}
    for tp in starts:
        _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
        # offset -1: no record at or after ``from`` in this partition.
        if 0 <= tp.offset < high:
            assign.append(TopicPartition(tp.topic, tp.partition, tp.offset))
            ends[(tp.topic, tp.partition)] = high
    raw: dict[tuple[str, int], list[tuple[str, int, int, int, bytes | None, bytes | None]]] = {
        (tp.topic, tp.partition): [] for tp in wanted
    }
    done: set[tuple[str, int]] = set()
    if assign:
        consumer.assign(assign)
    deadline = time.monotonic() + timeout_s
    while len(done) < len(ends):
        if time.monotonic() > deadline:
            text = f"replay: reading {sorted(set(ends) - done)} did not finish in {timeout_s}s"
            raise ProcessorError(text)
        for message in consumer.consume(5000, 0.2):
            err = message.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    text = f"replay consumer: {err.str()}"
                    raise ProcessorError(text) from KafkaException(err)
                continue
            tp_key = (str(message.topic()), int(message.partition() or 0))
            if tp_key in done:
                continue
            ts = int(message.timestamp()[1])
            offset = int(message.offset() or 0)
            if ts > to_ms:
                done.add(tp_key)
                continue
            if ts >= from_ms:
                raw[tp_key].append(
                    (tp_key[0], tp_key[1], offset, ts, message.key(), message.value())
                )
            if offset + 1 >= ends[tp_key]:
                done.add(tp_key)
        # Transaction markers occupy offsets no message is delivered for: check positions too.
        pending = [TopicPartition(t, p) for (t, p) in ends if (t, p) not in done]
        if pending:
            for tp in consumer.position(pending):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    done.add((tp.topic, tp.partition))
    return {k: with_event_times(v, schemas, serdes) for k, v in raw.items()}


def _sync_marker(seed: str) -> bytes:
    # A fixed marker (fastavro draws a random one) keeps equal exports byte-identical.
    return hashlib.sha256(seed.encode()).digest()[:16]


def write_records(path: str | Path, records: Iterable[RawRecord], meta: Mapping[str, str]) -> int:
    """Write records to an Avro object container file; returns how many.

    The sync marker derives from ``meta``, so the same records and metadata give the same bytes.
    """
    rows = [
        {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp,
            "key": r.key,
            "value": r.value,
        }
        for r in records
    ]
    marker = _sync_marker(repr(sorted(meta.items())))
    with Path(path).open("wb") as fo:
        fastavro.writer(fo, _PARSED_EXPORT, rows, metadata=dict(meta), sync_marker=marker)
    return len(rows)


def read_files(
    paths: Sequence[str | Path],
    from_ms: int,
    to_ms: int,
    schemas: Mapping[str, str],
    serdes: SerdeRegistry,
) -> Partitions:
    """Records of exported files with a timestamp in ``[from_ms, to_ms]``, per partition.

    Raises:
        ConfigError: A file is missing or not an export.
    """
    raw: dict[tuple[str, int], list[tuple[str, int, int, int, bytes | None, bytes | None]]] = {}
    seen: set[tuple[str, int, int]] = set()
    for path in paths:
        try:
            with Path(path).open("rb") as fo:
                for row in fastavro.reader(fo, reader_schema=_PARSED_EXPORT):
                    rec: dict[str, Any] = row  # type: ignore[assignment]
                    ts = int(rec["timestamp"])
                    ident = (rec["topic"], int(rec["partition"]), int(rec["offset"]))
                    if not from_ms <= ts <= to_ms or ident in seen:
                        continue
                    seen.add(ident)
                    raw.setdefault(ident[:2], []).append(
                        (ident[0], ident[1], ident[2], ts, rec["key"], rec["value"])
                    )
        except (OSError, ValueError, fastavro.read.SchemaResolutionError) as exc:
            msg = f"cannot read exported file {path}: {exc}"
            raise ConfigError(msg) from exc
    out: Partitions = {}
    for k, items in raw.items():
        items.sort(key=lambda it: it[2])
        out[k] = with_event_times(items, schemas, serdes)
    return out


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
