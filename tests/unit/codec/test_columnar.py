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

from processor.codec.columnar import MapColumn, columnar_plan, decode_columns
from processor.codec.columnar_encode import Categorical, encode_columns
from processor.codec.serde import (
    SerdeRegistry,
    legacy_writer_schemas,
    load_schema_json,
    strip_logical_types,
)
from processor.errors import SerializationError
from processor.policy.batches import RequestBatch
from processor.policy.simulator import MarketSimulator

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
    # every (not nullable) map of the schema decoded lazily: same failures, same records
    maps = [f for f, (kind, _) in cols.plan if kind == "map"]
    lazy = decode_columns(serde, values, lazy_maps=maps)
    assert lazy is not None
    lazy_cols, lazy_failures = lazy
    assert [i for i, _ in lazy_failures] == [i for i, _ in failures]
    for rec, i in zip(records, ok, strict=True):
        got = cols.record(i)
        assert _same(got, rec), (i, got, rec)
        assert _same(small_cols.record(i), rec)
        assert _same(lazy_cols.record(i), rec)
    for name in cols.null:
        assert np.array_equal(cols.null[name][ok], small_cols.null[name][ok])
    for name in maps:
        column = lazy_cols.data[name]
        assert isinstance(column, MapColumn)
        kept = column[np.asarray(ok, dtype=np.int64)]  # a lazy column of the decoded rows
        assert all(_same(m, rec[name]) for m, rec in zip(kept.tolist(), records, strict=True))
        assert all(int(c) >= len(rec[name]) for c, rec in zip(kept.counts, records, strict=True))


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


def _request(i: int, campaign: str, context: dict[str, str]) -> dict[str, Any]:
    """A BidRequest record numbered ``i`` with the given campaign and context."""
    return {
        "request_id": f"r-{i}",
        "campaign_id": campaign,
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


@pytest.mark.parametrize(
    "shape", ["one entry each", "some empty", "some several", "repeated key", "two blocks"]
)
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
        rec = _request(i, f"c-{i % 13}", context)
        values.append(SERDES["BidRequest"].encode(rec))
    if shape == "repeated key":
        # context is the last field: drop the empty map's end marker and write one block of two
        # entries with the same key ("k": "x", "k": "y"), then the end marker
        body = SERDES["BidRequest"].encode({**rec, "context": {}})[:-1]
        values[42] = body + b"\x04" + b"\x02k\x02x" + b"\x02k\x02y" + b"\x00"
        assert SERDES["BidRequest"].decode(values[42])["context"] == {"k": "y"}
    if shape == "two blocks":  # a writer may split a map into blocks: one entry each here
        body = SERDES["BidRequest"].encode({**rec, "context": {}})[:-1]
        values[42] = body + b"\x02" + b"\x02k\x02x" + b"\x02" + b"\x02j\x02y" + b"\x00"
        assert SERDES["BidRequest"].decode(values[42])["context"] == {"k": "x", "j": "y"}
    _check("BidRequest", values)


def test_a_request_batch_carries_the_same_contexts_from_columns_as_from_records() -> None:
    """The columnar path keeps ``context`` lazily decoded; sub-batches of it (by slice, mask,
    indices) hold the dicts the record path holds, and a row written from a fastavro record
    (a map in a negative-count block: not the vectorized path's) keeps its dict."""
    sim = MarketSimulator(4, n_campaigns=5)
    records = list(sim.bid_requests(300, 1_700_000_000_000, 100.0))
    for i in range(0, 300, 7):
        records[i]["context"] = {f"k{j}": "é" * j for j in range(i % 4)}
    serde = SERDES["BidRequest"]
    values = [serde.encode(r) for r in records]
    # context is the last field: rewrite row 10's as one block of count -1 with its byte size
    body = serde.encode({**records[10], "context": {}})[:-1]
    values[10] = body + b"\x01" + b"\x0c" + b"\x04ab\x04cd" + b"\x00"
    records[10]["context"] = {"ab": "cd"}
    assert serde.decode(values[10])["context"] == {"ab": "cd"}
    decoded = decode_columns(serde, values, lazy_maps=["context"])
    assert decoded is not None and decoded[1] == []
    lazy = RequestBatch.from_columns(decoded[0], np.arange(300))
    eager = RequestBatch.from_records(records)
    assert isinstance(lazy.context, MapColumn)
    mask = np.arange(300) % 3 == 1
    for index in (slice(None), slice(5, 50), mask, np.array([10, 3, 299, 10])):
        assert lazy.take(index).context.tolist() == eager.take(index).context.tolist()
    assert lazy.context[10] == {"ab": "cd"} and lazy.context[14] == eager.context[14]


@pytest.mark.parametrize("where", ["key", "value"])
@pytest.mark.parametrize("length", [5, 64, 65, 200])
def test_lazily_decoded_maps_reject_invalid_utf8_like_fastavro(where: str, length: int) -> None:
    """A map decoded lazily is still checked: invalid UTF-8 in a key or a value, in a span the
    one-gather check covers (up to 64 bytes) or one decoded row by row, fails its record exactly
    as fastavro does; valid non-ASCII text in the same batch decodes."""
    marker = "M" * length
    values = []
    for i in range(200):
        context = {"seg": str(i % 9)}
        if i % 10 == 3:
            context[marker if where == "key" else "k"] = "v" if where == "key" else marker
        if i % 10 == 7:
            context["é" * (length // 2)] = "ü" * (length // 2)
        rec = _request(i, "c", context)
        raw = SERDES["BidRequest"].encode(rec)
        if i % 20 == 3:  # every other marked row: a byte of the marker made invalid
            at = raw.index(marker.encode()) + length // 2
            raw = raw[:at] + b"\xff" + raw[at + 1 :]
        values.append(raw)
    _check("BidRequest", values)
    decoded = decode_columns(SERDES["BidRequest"], values, lazy_maps=["context"])
    assert decoded is not None
    assert [i for i, _ in decoded[1]] == list(range(3, 200, 20))


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


LONG_SHAPES = {
    "constant": lambda i: 7,
    "one length": lambda i: 1_700_000_000_000 + 37 * i,  # six bytes each
    "mixed": lambda i: (-1) ** i * 3**i if i < 40 else i - 70,
    "negative constant": lambda i: -(2**62),
}


@pytest.mark.parametrize("shape", list(LONG_SHAPES))
@pytest.mark.parametrize("ids", ["one length", "several lengths"])
def test_decision_columns_of_one_width_or_value_encode_byte_identical(shape: str, ids: str) -> None:
    """The shapes the stage's decisions have: a constant policy version and decision time,
    timestamps whose varints all have one length, request ids of one length — each written as a
    block of rows — beside columns of mixed widths, in every combination."""
    rng = random.Random(11)
    make = LONG_SHAPES[shape]
    records = []
    for i in range(120):
        width = 12 if ids == "one length" else rng.randint(0, 20)
        records.append(
            {
                "request_id": "".join(rng.choices(string.ascii_letters, k=width)),
                "campaign_id": f"c-{rng.randint(0, 10 ** rng.randint(0, 6))}",
                "arm": rng.choice(["b0.8", "balanced", "aggressive-1.3"]),
                "bid_amount": rng.random(),
                "budget": 1e3 * rng.random(),
                "propensity": rng.random(),
                "confidence": rng.random(),
                "mode": rng.choice(["explore", "exploit", "emergency", "blocked"]),
                "guardrails": rng.choice([[], ["pacing"], ["cpa_cap", "budget_exhausted"]]),
                "policy_version": make(i),
                "event_time": LONG_SHAPES["one length"](i),
                "decided_at": make(119 - i),
            }
        )
    serde = SERDES["BidDecision"]
    assert encode_columns(serde, _decision_columns(records), 120) == [
        serde.encode(r) for r in records
    ]


MODE_NAMES = ["explore", "exploit", "emergency", "blocked"]


def test_categorical_columns_encode_like_the_values_they_stand_for() -> None:
    """A column given as codes into its distinct values (modes, guardrail lists, arms; distinct
    values of one length and of several) writes the same bytes as the values themselves."""
    rng = random.Random(12)
    serde = SERDES["BidDecision"]
    guardrails = [[], ["pacing"], ["cpa_cap", "budget_exhausted"], ["é-non-ascii"]]
    records = [
        {
            "request_id": f"r-{i}",
            "campaign_id": "c",
            "arm": rng.choice(["b0.8", "b1.2"]),
            "bid_amount": 1.0,
            "budget": 2.0,
            "propensity": 0.5,
            "confidence": 0.5,
            "mode": rng.choice(["explore", "blocked"]),
            "guardrails": rng.choice(guardrails),
            "policy_version": rng.choice([3, 300]),
            "event_time": i,
            "decided_at": 5,
        }
        for i in range(150)
    ]
    columns = _decision_columns(records)
    for name, values in [
        ("arm", ["b0.8", "b1.2"]),
        ("mode", MODE_NAMES),
        ("guardrails", guardrails),
        ("policy_version", [3, 300]),
    ]:
        codes = np.array([values.index(r[name]) for r in records])
        columns[name] = Categorical(codes, values)
    assert encode_columns(serde, columns, 150) == [serde.encode(r) for r in records]
    for bad in (-1, 4):  # a code naming no value is refused, not wrapped around
        codes = np.zeros(150, dtype=np.int64)
        codes[7] = bad
        with pytest.raises(SerializationError, match="outside the 4 values"):
            encode_columns(serde, {**columns, "mode": Categorical(codes, MODE_NAMES)}, 150)


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
