"""Ensemble learners in the engine: one per horizon in family_horizon mode, partial reports."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from processor.codec.serde import SerdeRegistry
from processor.config import config_from_dict
from processor.engine import PartitionEngine, SourceBatch

SERDES = SerdeRegistry()
FAMILIES = ["lightgbm", "xgboost", "ridge"]


def _engine(mode: str = "family_horizon", **ensemble: Any) -> PartitionEngine:
    cfg = config_from_dict(
        {
            "ensemble": {
                "mode": mode,
                "families": FAMILIES,
                "horizons": ["5m", "15m"],
                "warm_start_steps": 0,
                **ensemble,
            }
        }
    )
    return PartitionEngine(cfg, 0, SERDES)


def _trade(i: int, horizon: str = "15m", reward_bps: float = 5.0, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "trade_id": f"t{i}",
        "ensemble_id": "e1",
        "symbol": "X",
        "horizon": horizon,
        "side": 1,
        "entry_price": 100.0,
        "exit_price": 100.0 * (1 + reward_bps / 1e4),
        "quantity": 10.0,
        "fees": 0.0,
        "slippage": 0.0,
        "event_time": 1_700_000_000_000 + i,
        "family": None,
        "arm": None,
        "propensity": None,
        "model_rewards": None,
        "model_contributions": None,
    }
    rec.update(kw)
    return rec


def _run(eng: PartitionEngine, trades: list[dict[str, Any]]) -> Any:
    topic = eng.config.topics.trade_outcomes
    src = SourceBatch(topic, 0)
    for i, rec in enumerate(trades):
        src.append(rec["ensemble_id"].encode(), SERDES["TradeOutcome"].encode(rec), i)
    return eng.process({topic: src})


def test_each_horizon_is_its_own_learner_and_publishes_its_own_record() -> None:
    eng = _engine()
    trades = [_trade(i, arm="ridge:15m", propensity=1 / 3) for i in range(4)]
    trades.append(_trade(9, horizon="5m", family="lightgbm", propensity=1 / 3))
    out = _run(eng, trades)
    assert not out.dead_letters
    records = [SERDES["EnsembleWeights"].decode(v) for _, v in out.weights]
    by_horizon = {r["horizon"]: r for r in records}
    assert set(by_horizon) == {"5m", "15m"} and len(records) == 2
    for h, rec in by_horizon.items():
        assert rec["mode"] == "family_horizon"
        assert set(rec["probabilities"]) == {f"{f}:{h}" for f in FAMILIES}
        assert math.isclose(sum(rec["probabilities"].values()), 1.0)
        assert math.isclose(sum(rec["weights"].values()), 1.0)
    assert by_horizon["15m"]["total_steps"] == 4 and by_horizon["5m"]["total_steps"] == 1
    # the untouched 5m arms did not move with the 15m learner's t: 5m is still near uniform
    assert max(by_horizon["5m"]["probabilities"].values()) < max(
        by_horizon["15m"]["probabilities"].values()
    )


def test_an_arm_of_another_horizon_is_a_dead_letter() -> None:
    eng = _engine()
    out = _run(eng, [_trade(0, horizon="5m", arm="ridge:15m", propensity=0.3)])
    assert [d.error_class for d in out.dead_letters] == ["unknown_arm"]
    assert "horizon" in out.dead_letters[0].reason
    out = _run(eng, [_trade(1, horizon="5m", model_rewards={"ridge:15m": 1.0, "ridge": 2.0})])
    assert [d.error_class for d in out.dead_letters] == ["unknown_arm"]
    assert not eng.ensembles.has_key("e1")


def test_unreported_models_are_charged_the_mean_loss_in_the_engine() -> None:
    eng = _engine(mode="family")
    out = _run(eng, [_trade(0, model_rewards={"lightgbm": 40.0, "xgboost": 0.0})])
    assert not out.dead_letters
    losses = dict(
        zip(
            eng.ensembles.bandit.arm_names,
            eng.ensembles.bandit.loss_estimates[0].tolist(),
            strict=True,
        )
    )
    assert losses["lightgbm"] == pytest.approx(0.3) and losses["xgboost"] == pytest.approx(0.5)
    assert losses["ridge"] == pytest.approx(0.4)  # neither better nor worse than the field


def test_controls_and_unknown_arms_per_horizon() -> None:
    eng = _engine(unknown_arms="add")
    out = _run(eng, [_trade(0, arm="ridge:15m", propensity=1 / 3)])
    table = eng.ensembles
    table.add_arm("e1", "catboost:15m")
    assert table.snapshot("e1", "15m")["probabilities"]["catboost:15m"] == pytest.approx(1 / 4)
    assert "catboost:15m" not in table.snapshot("e1", "5m")["probabilities"]
    table.add_arm("e1", "mlp")  # a bare family joins every horizon
    assert "mlp:5m" in table.snapshot("e1", "5m")["probabilities"]
    table.remove_arm("e1", "ridge:15m")
    assert "ridge:15m" not in table.snapshot("e1", "15m")["probabilities"]
    # an unknown model in a new horizon: its own learner, with that arm
    out = _run(eng, [_trade(1, horizon="1h", arm="lstm:1h", propensity=1.0)] * 2)
    assert not out.dead_letters
    assert table.snapshot("e1", "1h")["probabilities"] == {"lstm:1h": 1.0}
    table.reset("e1")
    assert table.snapshot("e1", "15m")["total_steps"] == 0
    assert set(table.snapshot("e1", "15m")["probabilities"]) == {f"{f}:15m" for f in FAMILIES}
    assert table.snapshot("e1", "1h")["probabilities"] == {"lstm:1h": 1.0}


def test_family_horizon_state_round_trips() -> None:
    eng = _engine(share=0.01)
    rng = np.random.default_rng(4)
    trades = [
        _trade(
            i,
            horizon=str(rng.choice(["5m", "15m"])),
            reward_bps=float(rng.normal(0, 20)),
            family=str(rng.choice(FAMILIES)),
            propensity=1 / 3,
        )
        for i in range(60)
    ]
    _run(eng, trades)
    fresh = _engine(share=0.01)
    for kind, key, state in eng.take_dirty():
        fresh.restore(kind, key, json.loads(json.dumps(state)))
    assert fresh.ensembles.snapshots("e1") == eng.ensembles.snapshots("e1")
    wrong_mode = _engine(mode="family")
    with pytest.raises(Exception, match="family_horizon"):
        wrong_mode.restore("ensemble", "e1", fresh.ensembles.get_key_state("e1"))
