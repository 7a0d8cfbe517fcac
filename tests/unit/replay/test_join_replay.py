"""Replay uses the live reward join: a backtest of a topic with redeliveries and restatements
ends in the live stage's Thompson state, and the decision audit still reproduces every decision."""

from __future__ import annotations

import numpy as np
import pytest

from processor.engine import PartitionEngine
from processor.replay.backtest import Backtest
from processor.replay.verify import verify_decisions
from tests.unit.replay.closed_loop import Loop, closed_loop


@pytest.fixture(scope="module")
def noisy() -> Loop:
    return closed_loop(rounds=20, redeliver=0.25)


def _counts(engines: list[PartitionEngine]) -> dict[str, tuple[list[float], list[float], int]]:
    out = {}
    for eng in engines:
        ts = eng.campaigns.thompson
        for key in ts.keys:
            row = ts.row_of(key)
            assert row is not None
            out[key] = (ts.successes[row].tolist(), ts.failures[row].tolist(), int(ts.version[row]))
    return out


def test_the_stream_has_redeliveries_and_restatements(noisy: Loop) -> None:
    assert noisy.engines is not None
    topic = noisy.config.topics.bid_outcomes
    outcomes = sum(len(v) for k, v in noisy.parts.items() if k[0] == topic)
    assert outcomes > 500
    applied = sum(
        int(e.campaigns.thompson.version[: e.campaigns.thompson.n_keys].sum())
        for e in noisy.engines
    )
    assert applied < outcomes * 1.2  # far fewer updates than twice the outcomes


@pytest.mark.parametrize("with_decisions", [True, False])
def test_backtest_state_equals_the_live_state(noisy: Loop, with_decisions: bool) -> None:
    assert noisy.engines is not None
    bt = Backtest(noisy.config, rejection=False)
    bt.run(noisy.merged(decisions=with_decisions))
    live = _counts(noisy.engines)
    replayed = _counts([bt.engine])
    assert set(replayed) == set(live)
    for key, want in live.items():
        assert replayed[key] == want, key


def test_join_off_in_the_candidate_counts_redeliveries(noisy: Loop) -> None:
    import dataclasses

    config = noisy.config.replace(
        attribution=dataclasses.replace(noisy.config.attribution, enabled=False)
    )
    bt = Backtest(config, rejection=False)
    bt.run(noisy.merged())
    live = _counts(noisy.engines or [])
    total = sum(np.sum(s) + np.sum(f) for s, f, _ in _counts([bt.engine]).values())
    assert total > sum(np.sum(s) + np.sum(f) for s, f, _ in live.values())


def test_report_rewards_are_the_joined_ones(noisy: Loop) -> None:
    bt = Backtest(noisy.config, rejection=False)
    res = bt.run(noisy.merged())
    ids = [r["request_id"] for r in res.outcome_records]
    assert len(ids) == len(set(ids))  # one reward per decision
    assert sum(len(r) for r in res.outcome_rewards) == len(ids)


def test_audit_reproduces_every_decision_despite_redeliveries(noisy: Loop) -> None:
    result = verify_decisions(noisy.config, noisy.merged())
    assert result.mismatches == []
    assert result.matched == result.verified == result.decisions > 0
