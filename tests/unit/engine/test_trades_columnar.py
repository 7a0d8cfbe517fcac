"""The vectorized trade path equals the record path: state, rejections (and their order), changes.

Random batches mix every feedback kind with the inputs each rule rejects (bad numbers, two kinds
at once, bad propensities, unknown arms, arms of another horizon, horizons without a learner,
arms removed for a learner, empty and non-finite maps) in every arm mode, with and without
auto-added arms and fixed share; both paths run on their own table batch after batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.config import config_from_dict
from processor.engine.ensembles import EnsembleTable
from processor.engine.trades import process_trades
from processor.engine.trades_columnar import TradeColumns, process_trade_columns

FAMILIES = ["lightgbm", "xgboost", "ridge"]
HORIZONS = ["5m", "15m"]
ENSEMBLES = ["e0", "e1", "e2", "e3", "e4", "e5"]
NAMES = [
    *FAMILIES,
    "lightgbm:5m",
    "ridge:15m",
    "xgboost:5m",
    "5m",
    "15m",
    "1d",
    "catboost",
    "catboost:1d",
    "",
]
FINITE = st.floats(-300.0, 300.0, allow_nan=False)
VALUES = st.one_of(*[FINITE] * 12, st.sampled_from([math.nan, math.inf]))
KNOWN = st.sampled_from([*FAMILIES, "lightgbm:5m", "ridge:15m", "xgboost:15m", "5m", "15m"])
MAPS = st.dictionaries(st.one_of(KNOWN, KNOWN, KNOWN, st.sampled_from(NAMES)), VALUES, max_size=4)


@st.composite
def trades(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["bandit"] * 5 + ["full"] * 3 + ["contrib", "mixed"]))
    rec: dict[str, Any] = {
        "trade_id": "t",
        "ensemble_id": draw(st.sampled_from(ENSEMBLES)),
        "symbol": "X",
        "horizon": draw(st.sampled_from([*HORIZONS, *HORIZONS, *HORIZONS, "1d", ""])),
        "side": draw(st.sampled_from([1, -1])),
        "entry_price": 100.0,
        "exit_price": draw(st.floats(90.0, 110.0)),
        "quantity": 10.0,
        "fees": draw(st.sampled_from([0.0, 0.1])),
        "slippage": 0.0,
        "event_time": draw(st.integers(-5, 10**13)),
        "family": None,
        "arm": None,
        "propensity": None,
        "model_rewards": None,
        "model_contributions": None,
    }
    if draw(st.integers(0, 9)) == 0:  # one bad number
        field, value = draw(
            st.sampled_from(
                [
                    ("side", 0),
                    ("side", 2),
                    ("exit_price", 0.0),
                    ("exit_price", -1.0),
                    ("exit_price", math.nan),
                    ("entry_price", math.inf),
                    ("quantity", 0.0),
                    ("fees", math.nan),
                ]
            )
        )
        rec[field] = value
    if kind in ("bandit", "mixed"):
        rec["arm"] = draw(st.one_of(KNOWN, KNOWN, KNOWN, st.sampled_from(NAMES), st.none()))
        rec["family"] = draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from(NAMES)))
        rec["propensity"] = draw(
            st.one_of(*[st.floats(0.01, 1.0)] * 8, st.none(), st.sampled_from([0.0, 1.5, math.nan]))
        )
    if kind == "full" or (kind == "mixed" and draw(st.booleans())):
        rec["model_rewards"] = draw(MAPS)
    if kind == "contrib" or (kind == "mixed" and draw(st.booleans())):
        rec["model_contributions"] = draw(MAPS)
    return rec


def _table(mode: str, unknown_arms: str, share: float) -> EnsembleTable:
    cfg = config_from_dict(
        {
            "ensemble": {
                "mode": mode,
                "families": FAMILIES,
                "horizons": HORIZONS,
                "unknown_arms": unknown_arms,
                "share": share,
                "warm_start_steps": 0,
            }
        }
    )
    return EnsembleTable(cfg.ensemble)


def assert_same_tables(a: EnsembleTable, b: EnsembleTable) -> None:
    ka, kb = a.bandit, b.bandit
    assert ka.keys == kb.keys
    assert ka.arm_names == kb.arm_names
    assert np.array_equal(ka.default_active, kb.default_active)
    for name, arr in ka._arr.items():
        np.testing.assert_array_equal(arr[: ka.n_keys], kb._arr[name][: kb.n_keys], err_msg=name)
    assert a.last_horizon == b.last_horizon
    assert a.last_event_ms == b.last_event_ms
    assert a._horizons == b._horizons


def _remove_some_arm(table: EnsembleTable, seed: int) -> None:
    """Disable one arm of one learner (a removed arm is rejected as unknown)."""
    keys = table.keys
    if not keys:
        return
    key = keys[seed % len(keys)]
    horizon = table.horizons_of(key)[seed % len(table.horizons_of(key))]
    row = table.bandit.row_of(table.learner_key(key, horizon))
    assert row is not None
    cols = np.flatnonzero(table.bandit.active[row])
    if cols.size > 1:
        table.remove_arm(key, table.bandit.arm_names[int(cols[seed % cols.size])])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(trades(), min_size=1, max_size=25), min_size=1, max_size=4),
    mode=st.sampled_from(["family", "horizon", "family_horizon"]),
    unknown_arms=st.sampled_from(["dead_letter", "add"]),
    share=st.sampled_from([0.0, 0.01]),
    seed=st.integers(0, 10),
)
def test_columns_equal_records(
    batches: list[list[dict[str, Any]]], mode: str, unknown_arms: str, share: float, seed: int
) -> None:
    by_record = _table(mode, unknown_arms, share)
    by_column = _table(mode, unknown_arms, share)
    for i, records in enumerate(batches):
        want = process_trades(by_record, records)
        got = process_trade_columns(by_column, TradeColumns.from_records(records))
        assert list(got[0].items()) == list(want[0].items())  # the reasons and their order
        assert list(got[1].items()) == list(want[1].items())
        assert_same_tables(by_column, by_record)
        if i == 0:
            _remove_some_arm(by_record, seed)
            _remove_some_arm(by_column, seed)


def _bandit_batch(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        out.append(
            {
                "trade_id": f"t{i}",
                "ensemble_id": f"e{rng.integers(0, 40)}",
                "symbol": "X",
                "horizon": HORIZONS[int(rng.integers(0, 2))],
                "side": int(rng.choice([1, -1])),
                "entry_price": 100.0,
                "exit_price": float(100.0 + rng.normal(0.0, 0.5)),
                "quantity": 10.0,
                "fees": 0.01,
                "slippage": 0.0,
                "event_time": 1_700_000_000_000 + int(rng.integers(0, 10**6)),
                "family": None,
                "arm": FAMILIES[int(rng.integers(0, 3))],
                "propensity": float(rng.uniform(0.05, 1.0)),
                "model_rewards": None,
                "model_contributions": None,
            }
        )
    return out


@pytest.mark.parametrize("mode", ["family", "family_horizon"])
def test_large_bandit_batches_are_identical(mode: str) -> None:
    """The shape of the stream: thousands of bandit-feedback trades over many ensembles."""
    rng = np.random.default_rng(5)
    by_record = _table(mode, "dead_letter", 0.0)
    by_column = _table(mode, "dead_letter", 0.0)
    for _ in range(3):
        records = _bandit_batch(3000, rng)
        if mode == "family_horizon":
            for rec in records[::7]:
                rec["arm"] = f"{rec['arm']}:{rec['horizon']}"
        want = process_trades(by_record, records)
        got = process_trade_columns(by_column, TradeColumns.from_records(records))
        assert got == want
        assert sum(len(h) for h in got[1].values()) >= 40
        assert_same_tables(by_column, by_record)


def test_an_arm_added_for_an_existing_learner_is_not_rejected() -> None:
    """0.2 checked the column -2 (an arm still to be added) for activity: in family_horizon mode
    that column often belongs to another horizon, so the trade was dead-lettered as removed."""
    for run in (process_trades, None):
        table = _table("family_horizon", "add", 0.0)
        first = [{**_bandit_batch(1, np.random.default_rng(1))[0], "ensemble_id": "e0"}]
        first[0].update(horizon="15m", arm="lightgbm:15m")
        new = [{**first[0], "arm": "catboost:15m", "family": None}]
        for records in (first, new):
            if run is None:
                rejected, _ = process_trade_columns(table, TradeColumns.from_records(records))
            else:
                rejected, _ = run(table, records)
            assert rejected == {}
        assert table.has_arm("e0", "catboost:15m")


def test_an_empty_arm_without_family_is_an_unknown_arm() -> None:
    rec = _bandit_batch(1, np.random.default_rng(2))[0]
    rec.update(arm="", family=None)
    for mode in ("family", "family_horizon"):
        want = process_trades(_table(mode, "dead_letter", 0.0), [rec])
        got = process_trade_columns(
            _table(mode, "dead_letter", 0.0), TradeColumns.from_records([rec])
        )
        assert got == want
        assert [why[0] for why in got[0].values()] == ["unknown_arm"]


def _mixed_batch(n: int, rng: np.random.Generator, mode: str) -> list[dict[str, Any]]:
    """Mostly valid trades of every feedback kind, one in five broken in some way."""
    out = _bandit_batch(n, rng)
    names = [*NAMES, "lightgbm:15m", "xgboost:15m", "catboost:5m"]
    if mode == "horizon":
        names += HORIZONS * 4
    for rec in out:
        if mode == "horizon":
            rec["arm"] = rec["horizon"]
        how = int(rng.integers(0, 10))
        if how in (0, 1):  # full information, some models silent
            rec.update(arm=None, propensity=None)
            picked = rng.permutation(len(names))[: int(rng.integers(1, 4))]
            rec["model_rewards"] = {names[i]: float(rng.normal(0, 50)) for i in picked}
        elif how == 2:
            shares = {"ridge": 0.5, "mlp": 0.5} if mode != "horizon" else {"5m": 1.0}
            rec.update(arm=None, propensity=None, model_contributions=shares)
        elif how == 3:
            rec["arm"] = names[int(rng.integers(0, len(names)))]
        elif how == 4:
            rec["horizon"] = str(rng.choice(["1d", "", "5m"]))
        elif how == 5:
            bad = int(rng.integers(0, 4))
            rec.update(
                [("propensity", 0.0), ("exit_price", math.nan), ("side", 3), ("model_rewards", {})][
                    bad : bad + 1
                ]
            )
    return out


@pytest.mark.parametrize("mode", ["family", "horizon", "family_horizon"])
@pytest.mark.parametrize(("unknown_arms", "share"), [("dead_letter", 0.0), ("add", 0.02)])
def test_mixed_batches_are_identical(mode: str, unknown_arms: str, share: float) -> None:
    rng = np.random.default_rng(11)
    by_record = _table(mode, unknown_arms, share)
    by_column = _table(mode, unknown_arms, share)
    reasons: set[str] = set()
    applied = 0
    for step in range(6):
        records = _mixed_batch(400, rng, mode)
        want = process_trades(by_record, records)
        got = process_trade_columns(by_column, TradeColumns.from_records(records))
        assert list(got[0].items()) == list(want[0].items())
        assert got[1] == want[1]
        assert_same_tables(by_column, by_record)
        reasons.update(why[0] for why in got[0].values())
        applied += len(records) - len(got[0])
        if step % 2 == 0:
            _remove_some_arm(by_record, step)
            _remove_some_arm(by_column, step)
    assert applied > 1000
    assert {"value", "propensity", "unknown_arm"} <= reasons


@pytest.mark.parametrize("mode", ["family", "family_horizon"])
def test_a_column_only_arm_of_a_new_learner_is_a_dead_letter_not_a_crash(mode: str) -> None:
    """An arm added for one ensemble is a column, inactive for a learner created later: 0.2
    accepted the trade and raised in the update (a poison message, exit 4)."""
    arm = "catboost:15m" if mode == "family_horizon" else "catboost"
    base = {**_bandit_batch(1, np.random.default_rng(3))[0], "horizon": "15m"}
    bandit = {**base, "ensemble_id": "new", "arm": arm}
    full = {**base, "ensemble_id": "new", "arm": None, "propensity": None}
    full["model_rewards"] = {arm: 3.0}
    for records in ([bandit], [full], [bandit, full]):
        results = []
        for columns in (False, True):
            table = _table(mode, "dead_letter", 0.0)
            table.add_arm("old", arm)
            if columns:
                results.append(process_trade_columns(table, TradeColumns.from_records(records)))
            else:
                results.append(process_trades(table, records))
            assert table.bandit.row_of(table.learner_key("new", "15m")) is None
        assert results[0] == results[1]
        assert [why[0] for why in results[0][0].values()] == ["unknown_arm"] * len(records)
        assert all("not active for 'new'" in why[1] for why in results[0][0].values())
