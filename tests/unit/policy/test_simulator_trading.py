"""The trading market's controlled truths, partial reports and regime switch, through the engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from processor.codec.serde import SerdeRegistry
from processor.config import config_from_dict
from processor.engine import PartitionEngine, SourceBatch
from processor.errors import ConfigError
from processor.policy.simulator import MarketSimulator

SERDES = SerdeRegistry()
FAMILIES = ("m0", "m1", "m2", "m3", "m4")


def _engine(families: tuple[str, ...], **ensemble: Any) -> PartitionEngine:
    cfg = config_from_dict(
        {
            "ensemble": {
                "families": list(families),
                "horizons": ["1h"],
                "warm_start_steps": 0,
                **ensemble,
            }
        }
    )
    return PartitionEngine(cfg, 0, SERDES)


def _feed(eng: PartitionEngine, trades: list[dict[str, Any]], best: str) -> list[float]:
    """Apply ``trades`` in batches of 100; the bandit weight of ``best`` after each trade's
    batch (one value per trade)."""
    topic = eng.config.topics.trade_outcomes
    out: list[float] = []
    for start in range(0, len(trades), 100):
        chunk = trades[start : start + 100]
        src = SourceBatch(topic, 0)
        for i, rec in enumerate(chunk):
            src.append(rec["ensemble_id"].encode(), SERDES["TradeOutcome"].encode(rec), i)
        res = eng.process({topic: src})
        assert not res.dead_letters
        out += [eng.ensembles.snapshot("ens-0")["bandit_weights"][best]] * len(chunk)
    return out


def test_truth_partial_reports_and_errors() -> None:
    sim = MarketSimulator(1, families=("a", "b"), horizons=("1h",))
    sim.set_trading_truth({"a": 20.0}, sd_bps=1e-9)
    trades = sim.trade_outcomes(400, feedback="full", arm_mode="family", report_prob={"b": 0.25})
    reports_b = np.mean(["b" in t["model_rewards"] for t in trades])
    assert 0.2 < reports_b < 0.3
    assert all("a" in t["model_rewards"] for t in trades)
    assert trades[0]["model_rewards"]["a"] == pytest.approx(20.0)
    with pytest.raises(ConfigError, match="unknown model"):
        sim.set_trading_truth({"zzz": 1.0})
    with pytest.raises(ConfigError, match="report_prob"):
        sim.trade_outcomes(1, feedback="full", arm_mode="family", report_prob={"a": 0.0, "b": 0.0})
    with pytest.raises(ConfigError, match="unknown arms"):
        sim.trade_outcomes(1, feedback="full", arm_mode="family", report_prob={"c": 0.5})


def test_partial_reports_through_the_engine() -> None:
    # The case: A +20 bps reports every trade, B 0 bps one trade in four.
    sim = MarketSimulator(2, families=("A", "B"), horizons=("1h",))
    sim.set_trading_truth({"A": 20.0, "B": 0.0}, sd_bps=30.0)
    trades = sim.trade_outcomes(3000, feedback="full", arm_mode="family", report_prob={"B": 0.25})
    weights = _feed(_engine(("A", "B")), trades, "A")
    assert weights[-1] >= 0.9


def _trades_to_90(share: float, seed: int = 3) -> int:
    sim = MarketSimulator(seed, families=FAMILIES, horizons=("1h",))
    switch_ms = 2000 * 100  # trade 2,000 at 10 trades/s
    sim.set_trading_truth({"m0": 10.0}, 30.0, switch_ms=switch_ms, mean_after_bps={"m4": 10.0})
    trades = sim.trade_outcomes(7000, feedback="full", arm_mode="family")
    weights = _feed(_engine(FAMILIES, share=share), trades, "m4")
    after = np.flatnonzero(np.array(weights[2000:]) >= 0.9)
    return int(after[0]) + 1 if after.size else 10**9


def test_regime_switch_needs_share() -> None:
    with_share, without = _trades_to_90(1e-3), _trades_to_90(0.0)
    assert with_share <= 1000
    assert without > 2 * with_share
