"""Benchmark inputs from the market simulator, encoded once (``(key, value)`` Avro pairs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from processor.codec.serde import SerdeRegistry
from processor.policy.bidding import BiddingConfig
from processor.policy.simulator import MarketSimulator

SEED = 42
CAMPAIGNS = 1000
ENSEMBLES = 24
_CHUNK = 50_000


def reward_events(n: int) -> list[tuple[bytes, bytes]]:
    """BidOutcome pairs: simulator outcomes of uniformly random arms (propensity 1/K)."""
    sim = MarketSimulator(SEED, n_campaigns=CAMPAIGNS)
    arms = BiddingConfig().arms
    names = list(arms)
    rng = np.random.default_rng(SEED)
    serde = SerdeRegistry()["BidOutcome"]
    out: list[tuple[bytes, bytes]] = []
    t = 1_700_000_000_000
    while len(out) < n:
        k = min(_CHUNK, n - len(out))
        reqs = sim.bid_requests(k, t, 1000.0)
        t = int(reqs[-1]["event_time"]) + 1
        pick = rng.integers(0, len(names), k).tolist()
        decisions: list[dict[str, Any]] = []
        for r, a in zip(reqs, pick, strict=True):
            spec = arms[names[a]]
            decisions.append(
                {
                    "arm": names[a],
                    "bid_amount": r["base_bid"] * spec.bid_multiplier,
                    "budget": r["base_budget"] * spec.budget_multiplier,
                    "mode": "explore",
                    "propensity": 1.0 / len(names),
                    "policy_version": -1,
                }
            )
        for rec in sim.outcomes_for(decisions, reqs):
            if rec is not None:
                out.append((rec["campaign_id"].encode(), serde.encode(rec)))
    return out[:n]


def bid_requests(n: int) -> list[tuple[bytes, bytes]]:
    """BidRequest pairs."""
    sim = MarketSimulator(SEED + 1, n_campaigns=CAMPAIGNS)
    serde = SerdeRegistry()["BidRequest"]
    out: list[tuple[bytes, bytes]] = []
    t = 1_700_000_000_000
    while len(out) < n:
        reqs = sim.bid_requests(min(_CHUNK, n - len(out)), t, 1000.0)
        t = int(reqs[-1]["event_time"]) + 1
        out.extend((r["campaign_id"].encode(), serde.encode(r)) for r in reqs)
    return out


def trade_outcomes(n: int) -> list[tuple[bytes, bytes]]:
    """TradeOutcome pairs with bandit feedback (family arms), spread over 24 ensembles."""
    sim = MarketSimulator(SEED + 2, n_campaigns=1)
    serde = SerdeRegistry()["TradeOutcome"]
    per = -(-n // ENSEMBLES)
    rows: list[tuple[int, tuple[bytes, bytes]]] = []
    for e in range(ENSEMBLES):
        recs = sim.trade_outcomes(
            min(per, n - e * per) if e * per < n else 0,
            1_700_000_000_000,
            100.0,
            feedback="bandit",
            arm_mode="family",
            ensemble_id=f"ens-{e:02d}",
        )
        rows.extend((r["event_time"], (r["ensemble_id"].encode(), serde.encode(r))) for r in recs)
    rows.sort(key=lambda x: x[0])
    return [pair for _, pair in rows][:n]
