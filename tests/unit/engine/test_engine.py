"""PartitionEngine without Kafka: handler order, dead letters, dirty keys and restore."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig, config_from_dict
from processor.engine import PartitionEngine, SourceBatch
from processor.policy.simulator import MarketSimulator

SERDES = SerdeRegistry()
CFG = AppConfig()
T = CFG.topics


def batch(topic: str, schema: str, records: list[dict[str, Any]], key_field: str) -> SourceBatch:
    src = SourceBatch(topic, 0)
    for i, rec in enumerate(records):
        src.append(str(rec[key_field]).encode(), SERDES[schema].encode(rec), i)
    return src


def outcome(**kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": "r",
        "campaign_id": "c1",
        "arm": "balanced",
        "event_time": 1_700_000_000_000,
        "won": True,
        "clicks": 1,
        "conversions": 1,
        "spend": 1.0,
        "revenue": 3.0,
        "reward": None,
        "success": True,
        "propensity": 0.25,
        "policy_version": -1,
        "budget": None,
        "target_cpa": None,
    }
    rec.update(kw)
    return rec


def trade(**kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "trade_id": "t",
        "ensemble_id": "e1",
        "symbol": "X",
        "horizon": "15m",
        "side": 1,
        "entry_price": 100.0,
        "exit_price": 100.5,
        "quantity": 10.0,
        "fees": 0.0,
        "slippage": 0.0,
        "event_time": 1_700_000_000_000,
        "family": None,
        "arm": "ridge",
        "propensity": 0.2,
        "model_rewards": None,
        "model_contributions": None,
    }
    rec.update(kw)
    return rec


def control(**kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "command_id": "k",
        "key": "c1",
        "target": "campaign",
        "command": "set_emergency",
        "arm": None,
        "weights": None,
        "issued_by": "t",
        "reason": "t",
        "event_time": 1,
    }
    rec.update(kw)
    return rec


def engine(config: AppConfig = CFG) -> PartitionEngine:
    return PartitionEngine(config, 0, SERDES)


def test_rewards_in_a_batch_are_seen_by_its_decisions() -> None:
    eng = engine()
    sim = MarketSimulator(1, n_campaigns=1)
    reqs = sim.bid_requests(5, start_ms=1_700_000_000_000)
    cid = reqs[0]["campaign_id"]
    outs = [outcome(campaign_id=cid, request_id=f"o{i}") for i in range(7)]
    out = eng.process(
        {
            T.bid_requests: batch(T.bid_requests, "BidRequest", reqs, "campaign_id"),
            T.bid_outcomes: batch(T.bid_outcomes, "BidOutcome", outs, "campaign_id"),
        },
        now_ms=0,
    )
    assert out.rewards_applied == 7
    decisions = [SERDES["BidDecision"].decode(v) for _, v in out.decisions]
    assert [d["request_id"] for d in decisions] == [r["request_id"] for r in reqs]
    assert {d["policy_version"] for d in decisions} == {7}
    assert eng.dirty_campaigns == {cid}


def test_bad_outcomes_are_dead_lettered_and_change_nothing() -> None:
    eng = engine()
    eng.process({T.bid_outcomes: batch(T.bid_outcomes, "BidOutcome", [outcome()], "campaign_id")})
    eng.take_dirty()
    before = copy.deepcopy(eng.campaigns.get_key_state("c1"))
    bad = [
        outcome(reward=math.nan),
        outcome(spend=math.inf),
        outcome(arm="nope"),
        outcome(propensity=0.0),
        outcome(propensity=1.01),
        outcome(request_id="x" * 1000),
    ]
    src = batch(T.bid_outcomes, "BidOutcome", bad, "campaign_id")
    src.append(b"c1", b"\x07garbage", 99)
    src.append(b"other", SERDES["BidOutcome"].encode(outcome()), 100)
    out = eng.process({T.bid_outcomes: src})
    assert out.rewards_applied == 0
    assert len(out.dead_letters) == len(bad) + 2
    assert {d.error_class for d in out.dead_letters} >= {
        "value",
        "unknown_arm",
        "propensity",
        "oversize",
        "decode",
        "key_mismatch",
    }
    assert all(d.reason for d in out.dead_letters)
    assert eng.campaigns.get_key_state("c1") == before
    assert not eng.dirty_campaigns


def test_trades_update_ensembles_and_publish_weights() -> None:
    eng = engine()
    trades = [trade(trade_id=f"t{i}", arm=a) for i, a in enumerate(["ridge", "mlp", "ridge"])]
    trades.append(
        trade(trade_id="full", arm=None, propensity=None, model_rewards={"ridge": 5.0, "mlp": -5.0})
    )
    trades.append(
        trade(
            trade_id="contrib",
            arm=None,
            propensity=None,
            model_contributions={"lstm": 0.5, "xgboost": 0.5},
        )
    )
    out = eng.process(
        {T.trade_outcomes: batch(T.trade_outcomes, "TradeOutcome", trades, "ensemble_id")}
    )
    assert out.trades_applied == 5
    assert not out.dead_letters
    assert len(out.weights) == 1
    weights = SERDES["EnsembleWeights"].decode(out.weights[0][1])
    assert weights["total_steps"] == 5
    assert weights["warm"] is False  # base weights until warm_start_steps
    assert math.isclose(sum(weights["weights"].values()), 1.0)
    assert math.isclose(sum(weights["probabilities"].values()), 1.0)


@pytest.mark.parametrize(
    ("change", "error_class"),
    [
        ({"propensity": None}, "propensity"),
        ({"propensity": 2.0}, "propensity"),
        ({"arm": "catboost"}, "unknown_arm"),
        ({"exit_price": math.nan}, "value"),
        ({"quantity": 0.0}, "value"),
        ({"side": 2}, "value"),
        ({"model_rewards": {"ridge": 1.0}}, "value"),  # two feedback kinds at once
    ],
)
def test_bad_trades(change: dict[str, Any], error_class: str) -> None:
    eng = engine()
    out = eng.process(
        {
            T.trade_outcomes: batch(
                T.trade_outcomes, "TradeOutcome", [trade(**change)], "ensemble_id"
            )
        }
    )
    assert [d.error_class for d in out.dead_letters] == [error_class]
    assert eng.ensembles.bandit.n_keys == 0
    assert not out.weights


def test_unknown_arms_can_be_added_automatically() -> None:
    cfg = config_from_dict({"ensemble": {"unknown_arms": "add"}})
    eng = engine(cfg)
    out = eng.process(
        {
            T.trade_outcomes: batch(
                T.trade_outcomes, "TradeOutcome", [trade(arm="catboost")], "ensemble_id"
            )
        }
    )
    assert not out.dead_letters
    assert "catboost" in eng.ensembles.snapshot("e1")["probabilities"]


def test_controls_apply_before_rewards_and_bad_ones_are_rejected() -> None:
    eng = engine()
    cmds = [
        control(),
        control(key="ghost", command="reset"),
        control(command="add_arm", arm="moonshot"),
        control(
            key="e1",
            target="ensemble",
            command="set_base_weights",
            weights={"ridge": 3.0, "mlp": 1.0},
        ),
        control(key="e1", target="ensemble", command="set_emergency"),
    ]
    out = eng.process({T.control: batch(T.control, "ControlCommand", cmds, "key")})
    assert out.controls_applied == 2
    assert [d.error_class for d in out.dead_letters] == ["command"] * 3
    assert eng.campaigns.in_emergency("c1")
    base = eng.ensembles.base_weights("e1")
    assert math.isclose(base["ridge"], 0.75)
    reqs = MarketSimulator(2, n_campaigns=1).bid_requests(3, start_ms=1_700_000_000_000)
    for r in reqs:
        r["campaign_id"] = "c1"
    out = eng.process({T.bid_requests: batch(T.bid_requests, "BidRequest", reqs, "campaign_id")})
    modes = {SERDES["BidDecision"].decode(v)["mode"] for _, v in out.decisions}
    assert modes <= {"emergency", "blocked"}


@pytest.mark.parametrize("state_format", ["json", "packed"])
def test_dirty_state_round_trips_through_restore(state_format: str) -> None:
    eng = engine(CFG.replace(state_format=state_format))
    rng = np.random.default_rng(3)
    outs = [
        outcome(
            campaign_id=f"c{rng.integers(5)}",
            arm=str(rng.choice(["balanced", "aggressive"])),
            success=bool(rng.random() < 0.4),
            request_id=str(i),
        )
        for i in range(300)
    ]
    trades = [
        trade(
            trade_id=str(i),
            arm=str(rng.choice(["ridge", "mlp"])),
            exit_price=float(100 + rng.normal()),
        )
        for i in range(100)
    ]
    eng.process(
        {
            T.bid_outcomes: batch(T.bid_outcomes, "BidOutcome", outs, "campaign_id"),
            T.trade_outcomes: batch(T.trade_outcomes, "TradeOutcome", trades, "ensemble_id"),
        }
    )
    items = eng.take_dirty()
    assert {k for kind, k, _ in items if kind == "campaign"} == {f"c{i}" for i in range(5)}
    assert all(
        isinstance(s, bytes) == (state_format == "packed") for k, _, s in items if k == "campaign"
    )
    fresh = engine()
    for kind, key, state in items:
        fresh.restore(
            kind, key, state if isinstance(state, bytes) else json.loads(json.dumps(state))
        )
    assert fresh.join is not None and eng.join is not None
    assert len(fresh.join.log) == len(eng.join.log) == len(outs)
    for kind, key, _ in items:
        if kind == "join":
            continue
        got = (
            fresh.campaigns.get_key_state(key)
            if kind == "campaign"
            else fresh.ensembles.get_key_state(key)
        )
        want = (
            eng.campaigns.get_key_state(key)
            if kind == "campaign"
            else eng.ensembles.get_key_state(key)
        )
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert fresh.ensembles.snapshot("e1") == eng.ensembles.snapshot("e1")
