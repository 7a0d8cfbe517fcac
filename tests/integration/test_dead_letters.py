"""Every kind of bad input lands in the dead-letter topic with a reason and changes no state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from processor.codec.serde import AvroSerde
from processor.testing import wait_for
from tests.integration.stagekit import (
    StageProcess,
    app_config,
    committed_state,
    drained,
    make_topics,
    outcome_records,
    produce,
    produce_raw,
    read_all,
)

ARMS = ["conservative", "balanced", "aggressive", "experimental"]


def _outcome(**changes: Any) -> dict[str, Any]:
    base = outcome_records(1, campaigns=1, arms=ARMS, seed=99)[0]
    base.update(changes)
    return base


def _trade(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "trade_id": "t-1",
        "ensemble_id": "ens-x",
        "symbol": "ABC",
        "horizon": "15m",
        "side": 1,
        "entry_price": 100.0,
        "exit_price": 101.0,
        "quantity": 10.0,
        "fees": 0.1,
        "slippage": 0.1,
        "event_time": 1_700_000_000_000,
        "family": None,
        "arm": "lightgbm",
        "propensity": 0.2,
        "model_rewards": None,
        "model_contributions": None,
    }
    rec.update(changes)
    return rec


def _control(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "command_id": "c-1",
        "key": "cmp-0",
        "target": "campaign",
        "command": "remove_arm",
        "arm": "balanced",
        "weights": None,
        "issued_by": "test",
        "reason": "test",
        "event_time": 1_700_000_000_000,
    }
    rec.update(changes)
    return rec


def test_bad_input_goes_to_dead_letters_and_leaves_state_unchanged(
    bootstrap: str, tmp_path: Path
) -> None:
    config, path = app_config(bootstrap, tmp_path, limits={"max_string_length": 64})
    make_topics(config, partitions=1)
    t = config.topics
    good = outcome_records(200, campaigns=1, arms=ARMS, seed=98)
    produce(config, t.bid_outcomes, "BidOutcome", good, "campaign_id")
    produce(config, t.trade_outcomes, "TradeOutcome", [_trade()], "ensemble_id")
    stage = StageProcess(config, path, "dlq", tmp_path / "stage.log").start().wait_ready()
    try:
        wait_for(lambda: drained(config), timeout=60, description="baseline drained")
        before = committed_state(config)
        out = AvroSerde("BidOutcome")
        trade = AvroSerde("TradeOutcome")
        ctrl = AvroSerde("ControlCommand")
        bad_outcomes = {
            "nan_reward": _outcome(reward=math.nan),
            "inf_spend": _outcome(spend=math.inf),
            "negative_spend": _outcome(spend=-1.0),
            "unknown_arm": _outcome(arm="yolo"),
            "zero_propensity": _outcome(propensity=0.0),
            "propensity_above_one": _outcome(propensity=1.5),
            "oversize": _outcome(request_id="x" * 500),
        }
        produce_raw(
            config, t.bid_outcomes, [(b"cmp-0", out.encode(r)) for r in bad_outcomes.values()]
        )
        produce_raw(
            config,
            t.bid_outcomes,
            [
                (b"cmp-0", b"\x00\x01garbage"),  # undecodable
                (b"cmp-0", trade.encode(_trade(ensemble_id="cmp-0"))),  # wrong schema on this topic
                (b"cmp-9", out.encode(_outcome())),  # key does not match campaign_id
            ],
        )
        produce_raw(
            config,
            t.trade_outcomes,
            [
                (b"ens-x", trade.encode(_trade(propensity=None))),
                (b"ens-x", trade.encode(_trade(arm="unknown-model"))),
                (b"ens-x", trade.encode(_trade(exit_price=math.nan))),
                (b"ens-x", trade.encode(_trade(propensity=0.0))),
            ],
        )
        produce_raw(
            config,
            t.control,
            [
                (b"nobody", ctrl.encode(_control(key="nobody"))),  # unknown key
                (
                    b"cmp-0",
                    ctrl.encode(_control(command="add_arm", arm="moonshot")),
                ),  # no multipliers
                (
                    b"ens-x",
                    ctrl.encode(
                        _control(
                            key="ens-x",
                            target="ensemble",
                            command="set_base_weights",
                            weights={"lightgbm": -1.0},
                        )
                    ),
                ),
                (
                    b"ens-x",
                    ctrl.encode(_control(key="ens-x", target="ensemble", command="set_emergency")),
                ),
            ],
        )
        expected = len(bad_outcomes) + 3 + 4 + 4
        wait_for(lambda: drained(config), timeout=60, description="bad input drained")
        letters = read_all(config, t.dead_letters, "DeadLetter")
        assert len(letters) == expected, [(d["error_class"], d["reason"]) for d in letters]
        assert all(d["reason"] and d["processor_version"] for d in letters)
        classes = {d["error_class"] for d in letters}
        assert {
            "decode",
            "value",
            "unknown_arm",
            "propensity",
            "oversize",
            "command",
            "key_mismatch",
        } <= classes, classes
        assert {d["source_topic"] for d in letters} == {t.bid_outcomes, t.trade_outcomes, t.control}
        assert any(d["value"] == b"\x00\x01garbage" for d in letters)
        after = committed_state(config)
        assert after == before
        assert stage.proc is not None and stage.proc.poll() is None
        assert "bandit_processor_dead_letters_total" in stage.metrics()
    finally:
        assert stage.stop() == 0, stage.log_tail()
