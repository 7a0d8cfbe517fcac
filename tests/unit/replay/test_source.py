"""Time parsing, the event-time merge and exported files."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.codec.serde import SerdeRegistry
from processor.errors import ConfigError
from processor.replay.source import RawRecord, iso, merge, parse_time, read_files, write_records


def rec(t: int, topic: str, p: int, off: int, ts: int | None = None) -> RawRecord:
    return RawRecord(t, topic, p, off, t if ts is None else ts, b"k", b"v%d" % off)


def test_parse_time_forms() -> None:
    assert parse_time("1970-01-01T00:00:01Z") == 1000
    assert parse_time("1970-01-01T01:00:00+01:00") == 0
    assert parse_time("1970-01-01T00:00:02") == 2000  # naive means UTC
    assert parse_time("12345") == 12345
    assert iso(1000) == "1970-01-01T00:00:01Z"
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time("yesterday")


def test_merge_orders_by_event_time_then_topic_partition_offset() -> None:
    parts = {
        ("b", 0): [rec(1, "b", 0, 0), rec(5, "b", 0, 1)],
        ("a", 1): [rec(1, "a", 1, 0), rec(3, "a", 1, 1)],
        ("a", 0): [rec(1, "a", 0, 7), rec(1, "a", 0, 8), rec(9, "a", 0, 9)],
    }
    got = [(r.event_time, r.topic, r.partition, r.offset) for r in merge(parts)]
    assert got == [
        (1, "a", 0, 7),
        (1, "a", 0, 8),
        (1, "a", 1, 0),
        (1, "b", 0, 0),
        (3, "a", 1, 1),
        (5, "b", 0, 1),
        (9, "a", 0, 9),
    ]


def test_exported_file_round_trip_reads_exactly_the_range(tmp_path: Path) -> None:
    records = [rec(t, "x", t % 2, t, ts=1000 + t) for t in range(40)]
    path = tmp_path / "x.avro"
    assert write_records(path, records, {"m": "1"}) == 40
    parts = read_files([path], 1010, 1029, {}, SerdeRegistry())
    got = sorted(r.offset for rs in parts.values() for r in rs)
    assert got == list(range(10, 30))
    for (_, p), rs in parts.items():
        assert [r.offset for r in rs] == sorted(r.offset for r in rs)
        assert all(r.partition == p and r.value == b"v%d" % r.offset for r in rs)
    # Reading the same file twice (or two overlapping files) does not duplicate records.
    twice = read_files([path, path], 0, 10**6, {}, SerdeRegistry())
    assert sum(len(v) for v in twice.values()) == 40


def test_export_is_byte_identical(tmp_path: Path) -> None:
    records = [rec(t, "x", 0, t) for t in range(10)]
    a, b = tmp_path / "a.avro", tmp_path / "b.avro"
    write_records(a, records, {"m": "1"})
    write_records(b, records, {"m": "1"})
    assert a.read_bytes() == b.read_bytes()


def test_not_an_export_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avro"
    bad.write_bytes(b"not avro")
    with pytest.raises(ConfigError, match="cannot read exported file"):
        read_files([bad], 0, 1, {}, SerdeRegistry())
    with pytest.raises(ConfigError):
        read_files([tmp_path / "missing.avro"], 0, 1, {}, SerdeRegistry())
