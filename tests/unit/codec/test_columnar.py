"""The columnar Avro decoder / encoder agree exactly with fastavro (property tests)."""

from __future__ import annotations

import io
import math
import random
import re
import string
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.codec.columnar import columnar_plan, decode_columns
from processor.codec.columnar_encode import encode_columns
from processor.codec.serde import (
    SerdeRegistry,
    legacy_writer_schemas,
    load_schema_json,
    strip_logical_types,
)

SERDES = SerdeRegistry()
_ADDR = re.compile(r" at 0x[0-9a-f]+")
INPUTS = ("BidOutcome", "BidRequest", "TradeOutcome", "StateRecord", "ControlCommand")
LONGS = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 1, 63, 64, -64, -65, 2**63 - 1])
)
TEXT = st.text(max_size=80)
DOUBLES = st.floats(allow_nan=True, allow_infinity=True)


def _value(t: Any, text: st.SearchStrategy[str] = TEXT) -> st.SearchStrategy[Any]:
    if isinstance(t, dict) and t.get("type") in ("long", "int", "string", "double", "boolean"):
        t = t["type"]
    if t == "string":
        return text
    if t == "long":
        return LONGS
    if t == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if t == "double":
        return DOUBLES
    if t == "boolean":
        return st.booleans()
    if t == "bytes":
        return st.binary(max_size=80)
    if isinstance(t, list):
        return st.one_of(*[st.none() if x == "null" else _value(x, text) for x in t])
    if t["type"] == "map":
        return st.dictionaries(text, _value(t["values"], text), max_size=5)
    if t["type"] == "enum":
        return st.sampled_from(t["symbols"])
    if t["type"] == "array":
        return st.lists(_value(t["items"], text), max_size=4)
    raise AssertionError(t)


def _records(name: str, text: st.SearchStrategy[str] = TEXT) -> st.SearchStrategy[dict[str, Any]]:
    schema = strip_logical_types(load_schema_json(name))
    return st.fixed_dictionaries({f["name"]: _value(f["type"], text) for f in schema["fields"]})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and type(a) is type(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


def _check(name: str, values: list[bytes | None]) -> None:
    serde = SERDES[name]
    records, ok, failures = serde.decode_many(values)
    decoded = decode_columns(serde, values)
    assert decoded is not None
    cols, col_failures = decoded
    # fastavro's messages may name a BytesIO object by address
    assert [(i, _ADDR.sub("", w)) for i, w in col_failures] == [
        (i, _ADDR.sub("", w)) for i, w in failures
    ]
    small = decode_columns(serde, values, min_vectorized=10**9)
    assert small is not None
    small_cols, small_failures = small
    assert [(i, _ADDR.sub("", w)) for i, w in small_failures] == [
        (i, _ADDR.sub("", w)) for i, w in failures
    ]
    for rec, i in zip(records, ok, strict=True):
        got = cols.record(i)
        assert _same(got, rec), (i, got, rec)
        assert _same(small_cols.record(i), rec)
    for name in cols.null:
        assert np.array_equal(cols.null[name][ok], small_cols.null[name][ok])


def test_every_input_schema_has_a_columnar_plan() -> None:
    for name in INPUTS:
        assert columnar_plan(name) is not None, name


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(INPUTS))
def test_valid_records_decode_exactly_like_fastavro(data: st.DataObject, name: str) -> None:
    records = data.draw(st.lists(_records(name), min_size=1, max_size=12))
    _check(name, [SERDES[name].encode(r) for r in records])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_records("StateRecord"), min_size=1, max_size=12), data=st.data())
def test_values_written_before_a_trailing_field_existed_get_its_default(
    records: list[dict[str, Any]], data: st.DataObject
) -> None:
    # StateRecord gained state_packed (default null) in 0.2: a 0.1 value simply ends earlier
    old_schema = legacy_writer_schemas("StateRecord")[0]
    old_flags = [data.draw(st.booleans()) for _ in records]
    values: list[bytes | None] = []
    for rec, old in zip(records, old_flags, strict=True):
        buf = io.BytesIO()
        if old:
            fastavro.schemaless_writer(buf, old_schema, {**rec, "state_packed": None})
            values.append(buf.getvalue())
        else:
            values.append(SERDES["StateRecord"].encode(rec))
    _check("StateRecord", values)
    decoded = decode_columns(SERDES["StateRecord"], values)
    assert decoded is not None
    cols, failures = decoded
    assert failures == []
    for i, (rec, old) in enumerate(zip(records, old_flags, strict=True)):
        want = None if old else rec["state_packed"]
        assert SERDES["StateRecord"].decode(values[i])["state_packed"] == want  # type: ignore[arg-type]
        assert cols.record(i)["state_packed"] == want
        assert cols.record(i)["state_json"] == rec["state_json"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(INPUTS))
def test_damaged_values_fail_or_decode_exactly_like_fastavro(
    data: st.DataObject, name: str
) -> None:
    records = data.draw(st.lists(_records(name), min_size=1, max_size=8))
    values: list[bytes | None] = [SERDES[name].encode(r) for r in records]
    for i in range(len(values)):
        raw = values[i]
        assert raw is not None
        how = data.draw(st.sampled_from(["keep", "truncate", "extend", "flip", "none", "random"]))
        if how == "truncate":
            values[i] = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
        elif how == "extend":
            values[i] = raw + data.draw(st.binary(min_size=1, max_size=4))
        elif how == "flip" and raw:
            pos = data.draw(st.integers(0, len(raw) - 1))
            values[i] = (
                raw[:pos] + bytes([raw[pos] ^ data.draw(st.integers(1, 255))]) + raw[pos + 1 :]
            )
        elif how == "none":
            values[i] = None
        elif how == "random":
            values[i] = data.draw(st.binary(max_size=60))
    _check(name, values)


def test_a_length_near_2_to_63_fails_like_fastavro_instead_of_raising() -> None:
    """Found by the test above: a string length so large that the cursor overflowed int64 and
    indexed out of bounds (IndexError) instead of reporting the record as undecodable."""
    _check("StateRecord", [bytes(6)] * 7 + [bytes.fromhex("8000000090ffffffffffffffff0100")])


def test_batch_with_many_rows_matches() -> None:
    rng = random.Random(3)
    values = []
    for i in range(3000):
        rec = {
            "request_id": "".join(rng.choices(string.ascii_letters + "é☃", k=rng.randint(0, 90))),
            "campaign_id": f"c-{i % 97}",
            "arm": rng.choice(["balanced", "aggressive"]),
            "event_time": rng.randint(-(2**40), 2**40),
            "won": rng.random() < 0.5,
            "clicks": rng.randint(0, 2**33),
            "conversions": rng.randint(0, 3),
            "spend": rng.random(),
            "revenue": rng.random() * 100,
            "reward": None if i % 3 else rng.random(),
            "success": None if i % 4 else rng.random() < 0.5,
            "propensity": rng.random(),
            "policy_version": -1,
            "budget": None if i % 2 else 50.0,
            "target_cpa": None,
        }
        values.append(SERDES["BidOutcome"].encode(rec))
    values[17] = b"\x00"
    _check("BidOutcome", values)


@pytest.mark.parametrize("shape", ["one entry each", "some empty", "some several", "repeated key"])
def test_request_contexts_decode_like_fastavro(shape: str) -> None:
    """Maps of a large batch: every row's first entry at once, rows without entries, rows with
    more entries than the others, a key written twice (the last value wins, as in fastavro)."""
    rng = random.Random(5)
    values = []
    for i in range(500):
        context = {"audience_segment": str(rng.randint(0, 9))}
        if shape == "some empty" and i % 7 == 3:
            context = {}
        if shape == "some several" and i % 5 == 1:
            context |= {f"k{j}": "v" * j for j in range(rng.randint(1, 4))}
        rec = {
            "request_id": f"r-{i}",
            "campaign_id": f"c-{i % 13}",
            "audience": "a",
            "event_time": i,
            "base_bid": 1.0,
            "base_budget": 2.0,
            "daily_budget": 100.0,
            "spent_today": 0.0,
            "target_cpa": None,
            "utc_offset_minutes": 0,
            "context": context,
        }
        values.append(SERDES["BidRequest"].encode(rec))
    if shape == "repeated key":
        # context is the last field: drop the empty map's end marker and write one block of two
        # entries with the same key ("k": "x", "k": "y"), then the end marker
        body = SERDES["BidRequest"].encode({**rec, "context": {}})[:-1]
        values[42] = body + b"\x04" + b"\x02k\x02x" + b"\x02k\x02y" + b"\x00"
        assert SERDES["BidRequest"].decode(values[42])["context"] == {"k": "y"}
    _check("BidRequest", values)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(st.text(alphabet="ab\x00\x7f\xe9", max_size=70), min_size=64, max_size=130),
    mode=st.sampled_from(["any", "ascii", "ascii with NUL"]),
)
def test_string_columns_of_large_batches_decode_exactly(ids: list[str], mode: str) -> None:
    """The vectorized string decode (64+ rows, values up to 64 bytes, ASCII without NUL) and
    its per-row fallback give fastavro's strings: NULs, trailing NULs, non-ASCII, 64/65 bytes."""
    if mode != "any":
        ids = [i.replace("\xe9", "")[:64] for i in ids]
    if mode == "ascii":
        ids = [i.replace("\x00", "") for i in ids]
    recs = [
        {
            "request_id": rid,
            "campaign_id": rid[::-1],
            "arm": "balanced",
            "event_time": 0,
            "won": True,
            "clicks": 0,
            "conversions": 0,
            "spend": 0.0,
            "revenue": 0.0,
            "reward": None,
            "success": None,
            "propensity": 0.5,
            "policy_version": -1,
            "budget": None,
            "target_cpa": None,
        }
        for rid in ids
    ]
    _check("BidOutcome", [SERDES["BidOutcome"].encode(r) for r in recs])


def _decision_columns(records: list[dict[str, Any]]) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for name in [x["name"] for x in load_schema_json("BidDecision")["fields"]]:
        col = [r[name] for r in records]
        if isinstance(col[0], float):
            columns[name] = np.array(col, dtype=np.float64)
        elif isinstance(col[0], int) and not isinstance(col[0], bool):
            columns[name] = np.array(col, dtype=np.int64)
        else:
            columns[name] = col
    return columns


@pytest.mark.parametrize("longest", [63, 64, 70])
@pytest.mark.parametrize("alphabet", [string.ascii_letters, string.ascii_letters + "é"])
def test_columnar_encoding_of_every_id_length_is_byte_identical(
    alphabet: str, longest: int
) -> None:
    """Ids of 0 to ``longest`` characters in one batch: the one-byte-length path takes a column
    whose values are all ASCII and under 64 characters; the others take the per-row path."""
    rng = random.Random(5)
    serde = SERDES["BidDecision"]
    records = []
    for i, size in enumerate([*range(longest + 1), *range(longest, -1, -1)]):
        ids = ["".join(rng.choices(alphabet, k=size)) for _ in range(3)]
        records.append(
            {
                "request_id": ids[0],
                "campaign_id": ids[1],
                "arm": ids[2],
                "bid_amount": rng.random(),
                "budget": 1e6 * rng.random(),
                "propensity": rng.random(),
                "confidence": rng.random(),
                "mode": ["explore", "exploit"][i % 2],
                "guardrails": ids[: i % 3],
                "policy_version": rng.randint(-(2**40), 2**40),
                "event_time": 1_700_000_000_000 + i,
                "decided_at": 1_700_000_000_000 + 2 * i,
            }
        )
    got = encode_columns(serde, _decision_columns(records), len(records))
    assert got == [serde.encode(r) for r in records]


# ids as the stage writes them (ASCII, mostly under 64 characters: the one-byte-length path)
ASCII_IDS = st.text(alphabet=string.ascii_letters + string.digits + "-_:", max_size=70)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(_records("BidDecision"), min_size=1, max_size=15),
        st.lists(_records("BidDecision", ASCII_IDS), min_size=1, max_size=80),
    )
)
def test_columnar_encoding_is_byte_identical(records: list[dict[str, Any]]) -> None:
    serde = SERDES["BidDecision"]
    columns = _decision_columns(records)
    assert encode_columns(serde, columns, len(records)) == [serde.encode(r) for r in records]
