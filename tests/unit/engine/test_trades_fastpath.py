"""The stage's trade handling on the columnar path equals the record path, bytes included.

Covers the whole of ``PartitionEngine._trades``: columnar decode and its dead letters (undecodable
values, oversize fields, key mismatches), the vectorized validation, the published
EnsembleWeights (one snapshot pass; columnar encode above ``MIN_VECTORIZED`` records) and the
dirty state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.codec.columnar_encode import encode_columns
from processor.codec.serde import SerdeRegistry
from processor.config import config_from_dict
from processor.engine import PartitionEngine, SourceBatch
from processor.engine import decoding as engine_decoding
from processor.engine import outputs as engine_outputs
from processor.engine.ensemble_publish import snapshot_many
from processor.policy.simulator import MarketSimulator

SERDES = SerdeRegistry()


def _trades(n: int, seed: int, mode: str) -> list[tuple[bytes | None, bytes | None]]:
    sim = MarketSimulator(seed, n_campaigns=1)
    serde = SERDES["TradeOutcome"]
    feedback = ["bandit", "full", "contributions"]
    out: list[tuple[bytes | None, bytes | None]] = []
    for e in range(12):
        recs = sim.trade_outcomes(
            n // 12,
            1_700_000_000_000 + e,
            50.0,
            feedback=feedback[e % 3] if e % 4 else "bandit",
            arm_mode=mode,
            ensemble_id=f"ens-{e}",
        )
        for i, rec in enumerate(recs):
            key: bytes | None = rec["ensemble_id"].encode()
            if i % 37 == 3:
                rec["exit_price"] = math.nan
            if i % 41 == 5 and rec["arm"] is not None:
                rec["arm"] = "catboost"
            if i % 43 == 7:
                key = b"another"
            if i % 47 == 9:
                rec["symbol"] = "S" * 300
            if i % 53 == 11 and rec["propensity"] is not None:
                rec["propensity"] = 1.5
            value: bytes | None = serde.encode(rec)
            if i % 59 == 13:
                value = b"\x02garbage"
            if i % 61 == 15:
                value = None
            out.append((key, value))
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def _run(
    mode: str, columnar: bool, threshold: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], Any]:
    monkeypatch.setattr(engine_outputs, "MIN_VECTORIZED", threshold)
    if not columnar:
        monkeypatch.setattr(engine_decoding, "decode_columns", lambda *a, **k: None)
    cfg = config_from_dict({"ensemble": {"mode": mode, "warm_start_steps": 50}})
    engine = PartitionEngine(cfg, 0, SERDES)
    topic = cfg.topics.trade_outcomes
    outs = []
    for step in range(3):
        source = SourceBatch(topic, 0)
        for j, (k, v) in enumerate(_trades(600, step, mode)):
            source.append(k, v, 1000 * step + j)
        outs.append(engine.process({topic: source}))
    dirty = engine.take_dirty()
    monkeypatch.undo()
    return outs, dirty


@pytest.mark.parametrize("mode", ["family", "family_horizon"])
@pytest.mark.parametrize("threshold", [64, 0, 10**9])
def test_columnar_trades_equal_record_trades(
    mode: str, threshold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, fast_dirty = _run(mode, True, threshold, monkeypatch)
    slow, slow_dirty = _run(mode, False, threshold, monkeypatch)
    assert fast_dirty == slow_dirty
    dead = 0
    for a, b in zip(fast, slow, strict=True):
        assert a.weights == b.weights
        assert a.dead_letters == b.dead_letters
        assert a.trades_applied == b.trades_applied
        dead += len(a.dead_letters)
        assert a.trades_applied > 300
        assert len(a.weights) >= 12
    classes = {d.error_class for o in fast for d in o.dead_letters}
    assert {"decode", "value", "oversize", "key_mismatch", "unknown_arm", "propensity"} <= classes
    assert dead > 60


WEIGHTS = st.dictionaries(
    st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True), max_size=6
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "ensemble_id": st.text(max_size=20),
                "horizon": st.text(max_size=5),
                "mode": st.sampled_from(["family", "horizon", "family_horizon"]),
                "weights": WEIGHTS,
                "bandit_weights": WEIGHTS,
                "probabilities": WEIGHTS,
                "total_steps": st.integers(-(2**63), 2**63 - 1),
                "warm": st.booleans(),
                "policy_version": st.integers(-(2**63), 2**63 - 1),
                "event_time": st.integers(-(2**63), 2**63 - 1),
            }
        ),
        min_size=1,
        max_size=12,
    )
)
def test_columnar_ensemble_weights_are_byte_identical(records: list[dict[str, Any]]) -> None:
    serde = SERDES["EnsembleWeights"]
    columns: dict[str, Any] = {name: [r[name] for r in records] for name in records[0]}
    for name in ("total_steps", "policy_version", "event_time"):
        columns[name] = np.array(columns[name], dtype=np.int64)
    assert encode_columns(serde, columns, len(records)) == [serde.encode(r) for r in records]


def test_snapshot_many_equals_one_snapshot_at_a_time() -> None:
    cfg = config_from_dict({"ensemble": {"mode": "family_horizon", "warm_start_steps": 5}})
    engine = PartitionEngine(cfg, 0, SERDES)
    topic = cfg.topics.trade_outcomes
    source = SourceBatch(topic, 0)
    for j, (k, v) in enumerate(_trades(600, 4, "family_horizon")):
        source.append(k, v, j)
    engine.process({topic: source})
    table = engine.ensembles
    table.set_base_weights("ens-1", {"lightgbm:5m": 3.0})
    wanted = [(key, h) for key in table.keys for h in [*table.horizons_of(key), None]]
    assert len(wanted) > 30
    assert snapshot_many(table, wanted) == [table.snapshot(k, h) for k, h in wanted]
