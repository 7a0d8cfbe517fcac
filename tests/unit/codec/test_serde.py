"""Serde: round trips, failures as data, and the Confluent wire format framing."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from processor.codec.serde import AvroSerde, load_schema_json
from processor.errors import SerializationError

OUTCOME: dict[str, Any] = {
    "request_id": "r-1",
    "campaign_id": "c-1",
    "arm": "balanced",
    "event_time": 1_700_000_000_000,
    "won": True,
    "clicks": 1,
    "conversions": 0,
    "spend": 0.5,
    "revenue": 0.0,
    "reward": None,
    "success": None,
    "propensity": 0.25,
    "policy_version": 3,
    "budget": 10.0,
    "target_cpa": None,
}


def test_round_trip_schemaless() -> None:
    serde = AvroSerde("BidOutcome")
    assert serde.wire_format == "schemaless"
    assert serde.decode(serde.encode(OUTCOME)) == OUTCOME


def test_defaults_fill_optional_fields() -> None:
    serde = AvroSerde("BidOutcome")
    minimal = {
        k: v
        for k, v in OUTCOME.items()
        if k not in ("reward", "success", "policy_version", "budget", "target_cpa")
    }
    decoded = serde.decode(serde.encode(minimal))
    assert decoded["reward"] is None and decoded["policy_version"] == -1


def test_encode_rejects_wrong_types() -> None:
    with pytest.raises(SerializationError, match="BidOutcome"):
        AvroSerde("BidOutcome").encode({**OUTCOME, "spend": "lots"})


def test_decode_many_returns_failures_as_data() -> None:
    serde = AvroSerde("BidOutcome")
    good = serde.encode(OUTCOME)
    values = [good, b"\xff\xff\xff", None, good + b"junk", good[:5], good]
    records, ok, failures = serde.decode_many(values)
    assert ok == [0, 5]
    assert [r["request_id"] for r in records] == ["r-1", "r-1"]
    assert sorted(i for i, _ in failures) == [1, 2, 3, 4]
    assert all("BidOutcome" in reason or "tombstone" in reason for _, reason in failures)


def test_decode_of_garbage_raises_serialization_error_with_raw() -> None:
    with pytest.raises(SerializationError) as info:
        AvroSerde("BidRequest").decode(b"\x02\x41")
    assert info.value.raw == b"\x02\x41"


class FakeRegistry:
    """In-memory stand-in for a schema registry (the framing is what is under test)."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}

    def register_schema(self, subject_name: str, schema: Any) -> int:
        schema_id = 100 + len(self.schemas)
        self.schemas[schema_id] = schema.schema_str
        return schema_id

    def get_schema(self, schema_id: int) -> Any:
        class Found:
            schema_str = self.schemas[schema_id]

        return Found()


def test_confluent_wire_format_framing_and_writer_schema_resolution() -> None:
    registry = FakeRegistry()
    serde = AvroSerde("BidOutcome", registry)
    data = serde.encode(OUTCOME)
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert (magic, schema_id) == (0, 100)
    assert serde.decode(data) == OUTCOME
    # A producer on an older schema (no budget / target_cpa fields) is resolved to ours.
    old = load_schema_json("BidOutcome")
    old = {**old, "fields": [f for f in old["fields"] if f["name"] not in ("budget", "target_cpa")]}
    registry.schemas[7] = json.dumps(old)
    import io

    import fastavro

    body = io.BytesIO()
    fastavro.schemaless_writer(
        body,
        fastavro.parse_schema(old),
        {k: v for k, v in OUTCOME.items() if k not in ("budget", "target_cpa")},
    )
    decoded = serde.decode(struct.pack(">bI", 0, 7) + body.getvalue())
    assert decoded["budget"] is None and decoded["campaign_id"] == "c-1"
    with pytest.raises(SerializationError, match="magic"):
        serde.decode(b"\x01" + data[1:])
