"""Bidding on evidence through the real stage: a closed loop on a real broker.

Four campaigns exactly on their CPA target at a 1% conversion rate and one paying 5× its target
bid through the stage (``bandit-processor run``) while the simulator answers every decision with
its outcome (``run_simulation``). The on-target campaigns (almost) never go into emergency; the
bad one is held back — its bids capped by the CPA guardrail at the predicted conversion rate, or
the campaign in emergency mode, for ≥ 90% of its decisions from then on — within 1,000 of its
outcomes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from processor.cli.simulate import run_simulation
from processor.policy.simulator import CampaignSpec, MarketSimulator
from processor.policy.simulator_loop import held_back_at
from processor.testing import wait_for
from tests.integration.stagekit import StageProcess, app_config, drained, make_topics, read_all

HELD = {"emergency_mode", "max_cpa"}


def test_on_target_campaigns_stay_out_of_emergency_and_a_bad_one_is_held_back(
    bootstrap: str, tmp_path: Path
) -> None:
    config, path = app_config(bootstrap, tmp_path, bidding={"seed": 5})
    make_topics(config, partitions=2)
    specs = [CampaignSpec(cvr=0.01, cpa_ratio=1.0, roas=1.5)] * 4
    specs.append(CampaignSpec(cvr=0.01, cpa_ratio=5.0, roas=1.5))
    sim = MarketSimulator(21, campaigns=specs)
    bad = sim.campaign_ids[-1]
    stage = StageProcess(config, path, "bidding", tmp_path / "stage.log").start().wait_ready()
    try:
        report = run_simulation(
            config,
            campaigns=5,
            requests=6_000,
            trades=0,
            rate=600.0,
            seed=21,
            timeout_s=90.0,
            sim=sim,
        )
        assert report.decisions == 6_000, stage.log_tail()
        wait_for(lambda: drained(config), timeout=90, description="input drained")
    finally:
        assert stage.stop() == 0, stage.log_tail()
    decisions = read_all(config, config.topics.bid_decisions, "BidDecision")
    assert len(decisions) == 6_000
    by_campaign: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in decisions:
        by_campaign[d["campaign_id"]].append(d)
    for cid, ds in by_campaign.items():
        if cid == bad:
            continue
        emergency = sum(d["mode"] == "emergency" for d in ds)
        assert emergency / len(ds) < 0.01, (cid, emergency, len(ds))
    mine = sorted(by_campaign[bad], key=lambda d: d["policy_version"])
    held = [bool(HELD & set(d["guardrails"])) for d in mine]
    # policy_version: the campaign's outcomes the stage had applied when it decided
    at = held_back_at([d["policy_version"] for d in mine], held)
    assert 0 <= at <= 1_000
    assert sum(d["policy_version"] >= at for d in mine) >= 500  # long enough to tell
