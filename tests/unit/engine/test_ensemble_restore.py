"""Ensemble state written by 0.2 (tests/fixtures/ensemble_state_0_2.json) restores and learns on."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processor.bandits import EnsembleWeightOptimizer, Exp3IXBandit, Hedge
from processor.codec.serde import SerdeRegistry
from processor.config import config_from_dict
from processor.engine import PartitionEngine, SourceBatch
from processor.state.changelog import parse_changelog_key

FIXTURE = json.loads(
    (Path(__file__).parents[2] / "fixtures" / "ensemble_state_0_2.json").read_text()
)
SERDES = SerdeRegistry()
MODES = ("family", "horizon", "family_horizon")


def _restored(mode: str) -> tuple[PartitionEngine, dict[str, Any]]:
    """A fresh engine of the fixture's config with the 0.2 changelog records restored."""
    fx = FIXTURE["modes"][mode]
    eng = PartitionEngine(config_from_dict(fx["config"]), 0, SERDES)
    states = {}
    for rec in fx["changelog"]:
        value = SERDES["StateRecord"].decode(base64.b64decode(rec["value"]))
        assert value["processor_version"] == "0.2.0"
        ident = parse_changelog_key(base64.b64decode(rec["key"]))
        states[ident] = json.loads(value["state_json"])
    eng.restore_many(states)
    return eng, fx


@pytest.mark.parametrize("mode", MODES)
def test_every_ensemble_restores_with_sane_weights(mode: str) -> None:
    eng, fx = _restored(mode)
    table = eng.ensembles
    assert sorted(table.keys) == sorted(fx["states"])
    for key in fx["states"]:
        for snap in table.snapshots(key):
            for field in ("weights", "bandit_weights", "probabilities"):
                values = np.array(list(snap[field].values()))
                assert np.isfinite(values).all() and math.isclose(values.sum(), 1.0)
            assert snap["mode"] == mode


@pytest.mark.parametrize("mode", ["family", "horizon"])
def test_one_learner_modes_keep_state_and_bandit_probabilities(mode: str) -> None:
    eng, fx = _restored(mode)
    table = eng.ensembles
    for key, old in fx["states"].items():
        new = table.get_key_state(key)["exp3ix"]
        for field in ("arm_names", "loss_estimates", "arm_pulls", "total_steps", "version"):
            assert new[field] == old["exp3ix"][field]
    # bandit feedback only: same rate as in 0.2, so the same probabilities
    new_p = table.snapshot("e-bandit")["probabilities"]
    assert new_p == pytest.approx(fx["snapshots"]["e-bandit"]["probabilities"], rel=1e-12)
    # full information: the same losses at the Hedge rate, so the same order, sharper weights
    old = fx["snapshots"]["e-full"]["bandit_weights"]
    new_w = table.snapshot("e-full")["bandit_weights"]
    assert sorted(old, key=old.__getitem__) == sorted(new_w, key=new_w.__getitem__)
    assert max(new_w.values()) > max(old.values())


def test_family_horizon_state_is_split_into_one_learner_per_horizon() -> None:
    eng, fx = _restored("family_horizon")
    table = eng.ensembles
    for key, old_state in fx["states"].items():
        old = old_state["exp3ix"]
        learners = table.get_key_state(key)["learners"]
        assert set(learners) == {"5m", "15m"}
        arms = [a for h in ("5m", "15m") for a in learners[h]["exp3ix"]["arm_names"]]
        assert sorted(arms) == sorted(old["arm_names"])
        losses = dict(zip(old["arm_names"], old["loss_estimates"], strict=True))
        for h, sub in learners.items():
            st = sub["exp3ix"]
            assert all(a.endswith(":" + h) for a in st["arm_names"])
            assert st["loss_estimates"] == [losses[a] for a in st["arm_names"]]
            assert st["bandit_steps"] == sum(st["arm_pulls"])
            probs = table.snapshot(key, h)["probabilities"]
            assert set(probs) == set(st["arm_names"])
            assert math.isclose(sum(probs.values()), 1.0)
        assert sum(learners[h]["exp3ix"]["total_steps"] for h in learners) == old["total_steps"]


@pytest.mark.parametrize("mode", MODES)
def test_restored_state_learns_on_and_round_trips(mode: str) -> None:
    eng, fx = _restored(mode)
    t = eng.config.topics
    src = SourceBatch(t.trade_outcomes, 0)
    for i, rec in enumerate(fx["trades"]):
        src.append(rec["ensemble_id"].encode(), SERDES["TradeOutcome"].encode(rec), i)
    out = eng.process({t.trade_outcomes: src})
    # only trades naming the arm removed by the fixture's control command are refused
    assert {d.error_class for d in out.dead_letters} <= {"unknown_arm"}
    assert all("removed" in d.reason for d in out.dead_letters)
    assert out.trades_applied == len(fx["trades"]) - len(out.dead_letters)
    fresh = PartitionEngine(eng.config, 0, SERDES)
    for kind, key, state in eng.take_dirty():
        fresh.restore(kind, key, json.loads(json.dumps(state)))
    for key in eng.ensembles.keys:
        assert fresh.ensembles.snapshots(key) == eng.ensembles.snapshots(key)


def test_object_states_of_0_2() -> None:
    objs = FIXTURE["objects"]
    exp3 = Exp3IXBandit.from_dict(objs["exp3ix"])
    np.testing.assert_allclose(exp3.get_probabilities(), objs["exp3ix_probabilities"], rtol=1e-12)
    hedge = Hedge.from_dict(objs["hedge"])
    old = np.array(objs["hedge_weights"])
    assert np.argsort(hedge.get_weights()).tolist() == np.argsort(old).tolist()
    opt = EnsembleWeightOptimizer.from_dict(objs["optimizer_family_horizon"])
    for h in ("5m", "15m"):
        probs = opt.get_probabilities(h)
        assert all(a.endswith(":" + h) for a in probs)
        assert math.isclose(sum(probs.values()), 1.0)
    assert opt.total_steps("5m") + opt.total_steps("15m") == 30
    one = Exp3IXBandit.from_dict(objs["exp3ix_one_arm"])
    one.add_arm("second")
    assert np.isfinite(one.get_probabilities()).all()
