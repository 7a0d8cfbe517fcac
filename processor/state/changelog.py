"""The compacted state changelog: writing dirty keys and restoring a partition.

Record key: ``<kind>/<key>`` (``campaign/c-17``, ``ensemble/e-1``, ``join/3/17``) so a campaign and
an ensemble with the same id never overwrite each other under compaction. Value: a StateRecord
holding the key's full state (not a delta), so the latest committed record per key is the state.
Kind ``join`` holds one chunk of the reward join's decision log (:mod:`processor.state.joinlog`),
always packed. State of input partition *p* always goes to changelog partition *p*.

A state is held as JSON in ``state_json`` or, for campaigns when ``state_format: packed`` (the
default), in the binary layout of :mod:`processor.state.packing` in ``state_packed`` (with
``state_json`` empty). Readers take either, so the setting can change at any time; versions
before 0.2 read only JSON.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from processor import __version__
from processor.codec.columnar import decode_columns
from processor.codec.columnar_encode import avro_long
from processor.codec.serde import AvroSerde
from processor.errors import StateError

logger = logging.getLogger(__name__)

KINDS = ("campaign", "ensemble", "join")
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
}

StoredState: TypeAlias = Mapping[str, Any] | bytes
"""A key's state as read from or written to the changelog: JSON-able, or packed bytes."""


def changelog_key(kind: str, key: str) -> bytes:
    """Kafka key of a state record."""
    return f"{kind}/{key}".encode()


def parse_changelog_key(raw: bytes) -> tuple[str, str]:
    """Inverse of :func:`changelog_key`."""
    kind, sep, key = raw.decode().partition("/")
    if not sep or kind not in KINDS:
        msg = f"malformed changelog key {raw!r}"
        raise StateError(msg)
    return kind, key


def _state_record(kind: str, key: str, state: StoredState, now: int) -> dict[str, Any]:
    packed = isinstance(state, bytes)
    return {
        "key": key,
        "kind": kind,
        "state_json": "" if packed else _dumps(state),
        "processor_version": __version__,
        "written_at": now,
        "state_packed": state if packed else None,
    }


def _dumps(state: Any) -> str:
    return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False)


def encode_state_records(
    serde: AvroSerde, items: Iterable[tuple[str, str, StoredState]], now_ms: int | None = None
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs of StateRecords for ``(kind, key, state)`` items."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if serde.wire_format != "schemaless" or serde.name != "StateRecord":
        return [
            (changelog_key(kind, key), serde.encode(_state_record(kind, key, state, now)))
            for kind, key, state in items
        ]
    # Schemaless StateRecord written directly: field order key, kind (enum index), state_json,
    # processor_version, written_at, state_packed (union branch 0 = null, 1 = bytes). Several
    # times cheaper than fastavro's generic writer on a commit with a thousand dirty keys; a unit
    # test checks the bytes equal fastavro's.
    out = []
    tail = _avro_string(__version__) + avro_long(now)
    json_tail = tail + b"\x00"
    packed_head = _avro_string("") + tail + b"\x02"
    for kind, key, state in items:
        kind_bytes = _KIND_BYTES.get(kind)
        try:
            if kind_bytes is None:
                raise ValueError(kind)
            body: tuple[bytes, ...]
            if isinstance(state, bytes):
                body = (packed_head, avro_long(len(state)), state)
            else:
                body = (_avro_string(_dumps(state)), json_tail)
            value = b"".join((_avro_string(key), kind_bytes, *body))
        except ValueError:
            # unknown kind or unencodable state: the generic writer raises its usual error
            value = serde.encode(_state_record(kind, key, state, now))
        out.append((changelog_key(kind, key), value))
    return out


def _avro_string(text: str) -> bytes:
    data = text.encode()
    return avro_long(len(data)) + data


_KIND_BYTES = {kind: avro_long(i) for i, kind in enumerate(KINDS)}


def _load_state(
    ident: tuple[str, str], decode: Callable[[bytes], dict[str, Any]], value: bytes
) -> StoredState:
    try:
        record = decode(value)
        packed: bytes | None = record["state_packed"]
        return packed if packed is not None else json.loads(record["state_json"])
    except (ValueError, KeyError) as exc:
        msg = f"corrupt changelog record for {ident}: {exc}"
        raise StateError(msg) from exc


class RestoreTimeoutError(StateError):
    """A changelog partition did not reach its end in time (e.g. the broker is unreachable).

    Unlike a corrupt record this is transient: the stage backs off and restores again.
    """


@dataclass(frozen=True)
class RestoreStats:
    """What one partition's restore did."""

    partition: int
    records: int
    keys: int
    seconds: float


def read_changelog(
    consumer_factory: Callable[..., Consumer],
    topic: str,
    partition: int,
    serde: AvroSerde,
    timeout_s: float = 60.0,
) -> tuple[dict[tuple[str, str], StoredState], int]:
    """Read committed changelog partition ``partition`` to its end (see :func:`iter_changelog`).

    Returns:
        ``({(kind, key): state}, records read)``.
    """
    ((_, states, records),) = iter_changelog(consumer_factory, topic, [partition], serde, timeout_s)
    return states, records


def iter_changelog(
    consumer_factory: Callable[..., Consumer],
    topic: str,
    partitions: Sequence[int],
    serde: AvroSerde,
    timeout_s: float = 60.0,
    on_progress: Callable[[], None] | None = None,
) -> Iterator[tuple[int, dict[tuple[str, str], StoredState], int]]:
    """Read committed changelog partitions to their ends; yield each as soon as it is complete.

    One consumer fetches every partition, so librdkafka keeps fetching the others while a
    finished one is decoded and loaded by the caller.

    Args:
        consumer_factory: Makes a read_committed consumer; called with
            ``**{"isolation.level": "read_uncommitted"}`` it must make one that is not.
        timeout_s: Longest wait for the next partition to complete (:class:`RestoreTimeoutError`
            after).
        on_progress: Called after every fetch (the stage beats its liveness heartbeat here, so a
            long restore is not mistaken for a stalled loop).

    Yields:
        ``(partition, {(kind, key): state}, records read)`` once per partition (empty ones
        first); the last record per key wins and tombstones delete. A state is a dict (JSON) or
        packed campaign bytes.

    The end of a partition is its *high watermark* when the restore starts, read with
    ``read_uncommitted``, and the records are read ``read_committed`` until
    ``position() >= end`` (transaction markers leave offset gaps). A read_committed watermark
    would be the last stable offset instead, and right after the previous owner's
    ``commit_transaction()`` returns its commit markers may not be written yet: the LSO still
    stands before its records, and a restore that stopped there would miss that owner's last
    committed state while the group's committed offsets already include it. Waiting for the high
    watermark also waits for a dead owner's open transaction to be aborted (at most
    ``transaction.timeout.ms``).
    """
    probe = consumer_factory(**{"isolation.level": "read_uncommitted"})
    try:
        ends = {}
        for p in partitions:
            try:
                low, high = probe.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout_s, cached=False
                )
            except KafkaException as exc:
                why = f"cannot read the end offset of {topic}[{p}]: {exc}"
                raise RestoreTimeoutError(why) from exc
            ends[p] = (low, high)
    finally:
        probe.close()
    todo = {p: high for p, (low, high) in ends.items() if high > low}
    for p in partitions:
        if p not in todo:
            yield p, {}, 0
    if not todo:
        return
    consumer = consumer_factory()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        deadline = time.monotonic() + timeout_s
        records = dict.fromkeys(todo, 0)
        latest: dict[int, dict[bytes | None, bytes | None]] = {p: {} for p in todo}
        while todo:
            msgs = consumer.consume(num_messages=10000, timeout=0.1)
            if on_progress is not None:
                on_progress()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal() or err.code() in _DENIED:
                        raise KafkaException(err)
                    # e.g. a broker outage or a leader change: keep fetching until the deadline
                    logger.debug("restore: transient consumer error %s", err.str())
                    continue
                part: int = msg.partition()  # type: ignore[assignment]  # set on fetched messages
                latest[part][msg.key()] = msg.value()
                records[part] += 1
            positions = consumer.position([TopicPartition(topic, p) for p in todo])
            for tp in positions:
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
                    consumer.pause([tp])
                    done = latest[tp.partition]
                    latest[tp.partition] = {}  # anything fetched beyond the end is not restored
                    yield tp.partition, _decode_states(serde, done), records[tp.partition]
                    # the time the caller took to load it does not count against the others
                    deadline = time.monotonic() + timeout_s
            if todo and time.monotonic() > deadline:
                where = ", ".join(f"{topic}[{p}] to offset {end}" for p, end in todo.items())
                why = f"changelog restore did not reach {where} in {timeout_s}s"
                raise RestoreTimeoutError(why)
    finally:
        consumer.close()


def _decode_states(
    serde: AvroSerde, latest: dict[bytes | None, bytes | None]
) -> dict[tuple[str, str], StoredState]:
    """States of one partition's last record per Kafka key (tombstones and keyless skipped)."""
    states: dict[tuple[str, str], StoredState] = {}
    values = [value for key, value in latest.items() if key is not None and value is not None]
    decoded = decode_columns(serde, values)
    if decoded is None or decoded[1]:
        # registry wire format, or an undecodable record: one at a time (the error names it)
        for key, value in latest.items():
            if key is not None and value is not None:
                ident = parse_changelog_key(key)
                states[ident] = _load_state(ident, serde.decode, value)
        return states
    columns = decoded[0]
    # the record's own kind and key equal its Kafka key's (the writer derives one from the
    # other); reading them from the decoded columns spares parsing a million keys
    idents = zip(columns.data["kind"].tolist(), columns.data["key"].tolist(), strict=True)
    texts = columns.data["state_json"].tolist()
    packed = columns.data["state_packed"].tolist()
    is_json = columns.null["state_packed"].tolist()
    if not any(is_json):  # all packed (the default): one C-level dict build
        states.update(zip(idents, packed, strict=True))
        return states
    loads = json.loads
    for ident, text, blob, from_json in zip(idents, texts, packed, is_json, strict=True):
        try:
            states[ident] = loads(text) if from_json else blob
        except ValueError as exc:
            why = f"corrupt changelog record for {ident}: {exc}"
            raise StateError(why) from exc
    return states
