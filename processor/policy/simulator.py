"""A seeded synthetic market for tests, the demo and benchmarks.

Ad side: campaigns with audiences and hidden per-arm inventory quality. A request
is an auction for a placement. Win probability rises with the decision's actual bid
(``w_c·(bid/base_bid)^e_c`` times a time-of-day factor); a won placement delivers
``min(demand, budget)`` of spend (demand ~ Gamma around ``base_budget``, scaled by
the bid), clicks ~ Poisson(spend / effective CPC × quality), conversions ~
Binomial(clicks, cvr × arm quality), revenue = conversions × value. The outcome
therefore depends on the decision taken (closed loop). A small share of capped
placements over-deliver (pacing lag) — the only source of overspend.

Trading side: models (families × horizons) with hidden normal P&L distributions
in basis points, emitted as TradeOutcome dicts with bandit, full-information or
contribution feedback.

The trading methods live in :mod:`processor.policy.simulator_trading` (:class:`TradingMarket`,
a base of :class:`MarketSimulator`) and the closed-loop driver :func:`run_closed_loop` in
:mod:`processor.policy.simulator_loop`; both are re-exported here, so import from this module.

Every outcome's randomness comes from :func:`request_uniforms` on the request or
trade id, so results do not depend on call order or batching.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from processor.errors import ConfigError
from processor.policy.hashing import request_uniforms
from processor.policy.simulator_loop import ClosedLoopResult, run_closed_loop
from processor.policy.simulator_trading import (
    ARM_MODES,
    DEFAULT_FAMILIES,
    DEFAULT_HORIZONS,
    F64,
    FEEDBACK_KINDS,
    TradingMarket,
)

__all__ = [
    "ARM_MODES",
    "AUDIENCE_POOL",
    "DEFAULT_ARM_MULTIPLIERS",
    "DEFAULT_FAMILIES",
    "DEFAULT_HORIZONS",
    "F64",
    "FEEDBACK_KINDS",
    "SCENARIOS",
    "ClosedLoopResult",
    "MarketSimulator",
    "TradingMarket",
    "run_closed_loop",
]

logger = logging.getLogger(__name__)

#: Arm multipliers (bid, budget) the truths assume; the same defaults as BiddingConfig.
DEFAULT_ARM_MULTIPLIERS: dict[str, tuple[float, float]] = {
    "conservative": (0.8, 0.8),
    "balanced": (1.0, 1.0),
    "aggressive": (1.2, 1.1),
    "experimental": (1.4, 1.2),
}
AUDIENCE_POOL = ("sports", "news", "gaming", "finance", "travel", "music", "health", "autos")
SCENARIOS = ("default", "regime_switch")

_DEMAND_SHAPE = 3.0
_OVERDELIVERY_PROB = 0.01
_OVERDELIVERY_MAX = 0.15
_DAY_MS = 86_400_000
# Uniform streams of the ad outcome (distinct from the policy's streams by the seed salt).
_S_WIN, _S_DEMAND, _S_CLICKS, _S_CONV, _S_REV, _S_OVER, _S_OVERAMT = range(10, 17)


class MarketSimulator(TradingMarket):
    """Seeded synthetic ad market and trading-model market.

    Args:
        seed: Seed of everything hidden and every draw.
        n_campaigns: Number of campaigns.
        scenario: ``"default"`` (stationary apart from time of day) or ``"regime_switch"``
            (each campaign's per-arm quality and each model's mean P&L are permuted at
            ``switch_ms``).
        arm_multipliers: Arm name → (bid multiplier, budget multiplier) used by the truths.
        switch_ms: Regime switch time for ``"regime_switch"``.
        families: Trading model families.
        horizons: Trading horizons.
        tod_amplitude: Amplitude of the time-of-day effect on win and click rates.
    """

    def __init__(
        self,
        seed: int,
        n_campaigns: int = 20,
        scenario: str = "default",
        *,
        arm_multipliers: Mapping[str, tuple[float, float]] | None = None,
        switch_ms: int = 3_600_000,
        families: Sequence[str] = DEFAULT_FAMILIES,
        horizons: Sequence[str] = DEFAULT_HORIZONS,
        tod_amplitude: float = 0.3,
    ) -> None:
        if scenario not in SCENARIOS:
            msg = f"scenario must be one of {SCENARIOS}, got {scenario!r}"
            raise ConfigError(msg)
        if n_campaigns < 1:
            msg = "n_campaigns must be >= 1"
            raise ConfigError(msg)
        self.seed = seed
        self.scenario = scenario
        self.switch_ms = switch_ms
        self.tod_amplitude = tod_amplitude
        self.arms = dict(arm_multipliers or DEFAULT_ARM_MULTIPLIERS)
        self.arm_names = tuple(self.arms)
        self._arm_index = {a: i for i, a in enumerate(self.arm_names)}
        rng = np.random.default_rng([seed, 1])
        n, k = n_campaigns, len(self.arm_names)
        self.campaign_ids = [f"cmp-{i:04d}" for i in range(n)]
        self._cidx = {c: i for i, c in enumerate(self.campaign_ids)}
        self.base_bid = rng.uniform(0.5, 3.0, n)
        self.base_budget = self.base_bid * rng.uniform(20.0, 60.0, n)
        self.daily_budget = self.base_budget * rng.uniform(8.0, 30.0, n)
        self.pace = rng.uniform(0.5, 0.95, n)
        self.win_base = rng.uniform(0.2, 0.4, n)
        self.elasticity = rng.uniform(1.0, 2.0, n)
        self.cpc = self.base_bid * rng.uniform(0.8, 1.2, n)
        self.cvr = rng.uniform(0.02, 0.08, n)
        self.roi_level = rng.uniform(1.5, 4.0, n)
        self.value = self.roi_level * self.cpc / self.cvr
        has_target = rng.random(n) < 0.7
        self.target_cpa = np.where(has_target, self.value * rng.uniform(0.5, 1.0, n), np.nan)
        self.utc_offset = rng.choice(np.array([-480, -300, 0, 60, 330, 540]), n)
        self.tod_phase = rng.uniform(0.0, 24.0, n)
        self.quality = rng.uniform(0.6, 1.4, (n, k))
        self.popularity = rng.dirichlet(np.full(n, 2.0))
        self.audiences = [
            list(rng.choice(np.array(AUDIENCE_POOL), 3, replace=False)) for _ in range(n)
        ]
        self.families = tuple(families)
        self.horizons = tuple(horizons)
        self._rng = np.random.default_rng([seed, 2])
        self._counter = 0
        self._trade_counter = 0
        fh = [f"{f}:{h}" for f in self.families for h in self.horizons]
        self.model_arms = tuple(fh)
        self.model_mean_bps = rng.normal(0.0, 4.0, len(fh))
        self.model_sd_bps = rng.uniform(15.0, 40.0, len(fh))

    # -- hidden parameters -------------------------------------------------------------
    def _quality_at(self, ci: npt.NDArray[np.int64], ai: npt.NDArray[np.int64], t: Any) -> F64:
        q = self.quality[ci, ai]
        if self.scenario == "regime_switch":
            flipped = self.quality[ci, len(self.arm_names) - 1 - ai]
            q = np.where(np.asarray(t) >= self.switch_ms, flipped, q)
        return np.asarray(q, dtype=np.float64)

    def _tod(self, ci: npt.NDArray[np.int64], t_ms: npt.NDArray[np.int64]) -> F64:
        local_h = ((t_ms // 60_000 + self.utc_offset[ci]) % (24 * 60)) / 60.0
        phase = 2 * np.pi * (local_h - self.tod_phase[ci]) / 24.0
        return np.asarray(1.0 + self.tod_amplitude * np.sin(phase), dtype=np.float64)

    # -- requests ----------------------------------------------------------------------
    def bid_requests(
        self, n: int, start_ms: int = 0, rate_per_s: float = 1000.0
    ) -> list[dict[str, Any]]:
        """Generate ``n`` BidRequest dicts at a steady rate starting at ``start_ms``.

        Campaigns are drawn by a fixed popularity; ids continue across calls.
        """
        ci = self._rng.choice(len(self.campaign_ids), n, p=self.popularity)
        aud = self._rng.integers(0, 3, n)
        times = start_ms + (np.arange(n) * (1000.0 / rate_per_s)).astype(np.int64)
        day_frac = (times % _DAY_MS) / _DAY_MS
        spent = self.daily_budget[ci] * day_frac * self.pace[ci]
        out = []
        for j in range(n):
            c = int(ci[j])
            tgt = self.target_cpa[c]
            out.append(
                {
                    "request_id": f"req-{self.seed}-{self._counter + j}",
                    "campaign_id": self.campaign_ids[c],
                    "audience": str(self.audiences[c][int(aud[j])]),
                    "event_time": int(times[j]),
                    "base_bid": float(self.base_bid[c]),
                    "base_budget": float(self.base_budget[c]),
                    "daily_budget": float(self.daily_budget[c]),
                    "spent_today": float(spent[j]),
                    "target_cpa": None if np.isnan(tgt) else float(tgt),
                    "utc_offset_minutes": int(self.utc_offset[c]),
                    "context": {"audience_segment": str(aud[j])},
                }
            )
        self._counter += n
        return out

    # -- outcomes (closed loop) ----------------------------------------------------------
    def outcome_for(
        self, decision: Mapping[str, Any], request: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """BidOutcome for one decision; ``None`` for a blocked decision (no bid was placed)."""
        return self.outcomes_for([decision], [request])[0]

    def outcomes_for(
        self, decisions: Sequence[Mapping[str, Any]], requests: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Vectorized :meth:`outcome_for` over aligned decisions and requests."""
        n = len(decisions)
        if n == 0:
            return []
        rid = [str(r["request_id"]) for r in requests]
        ci = np.array([self._cidx[str(r["campaign_id"])] for r in requests], dtype=np.int64)
        ai = np.array([self._arm_index[str(d["arm"])] for d in decisions], dtype=np.int64)
        t = np.array([int(r["event_time"]) for r in requests], dtype=np.int64)
        bid = np.array([float(d["bid_amount"]) for d in decisions])
        budget = np.array([float(d["budget"]) for d in decisions])
        blocked = np.array([d["mode"] == "blocked" for d in decisions])
        u = {s: request_uniforms(self.seed, rid, s) for s in range(_S_WIN, _S_OVERAMT + 1)}
        tod = self._tod(ci, t)
        ratio = np.maximum(bid, 0.0) / self.base_bid[ci]
        p_win = np.clip(self.win_base[ci] * ratio ** self.elasticity[ci] * tod, 0.0, 0.95)
        won = (u[_S_WIN] < p_win) & ~blocked & (budget > 0)
        demand = special.gammaincinv(_DEMAND_SHAPE, u[_S_DEMAND]) / _DEMAND_SHAPE
        demand = demand * self.base_budget[ci] * np.sqrt(ratio)
        over = u[_S_OVER] < _OVERDELIVERY_PROB
        cap = budget * np.where(over, 1.0 + _OVERDELIVERY_MAX * u[_S_OVERAMT], 1.0)
        spend = np.where(won, np.minimum(demand, cap), 0.0)
        q = self._quality_at(ci, ai, t)
        eff_cpc = self.cpc[ci] * np.sqrt(np.maximum(ratio, 1e-9))
        lam = spend / eff_cpc * tod
        clicks = np.where(won, stats.poisson.ppf(u[_S_CLICKS], lam), 0.0)
        conv = stats.binom.ppf(u[_S_CONV], clicks, np.clip(self.cvr[ci] * q, 0.0, 1.0))
        conv = np.where(clicks > 0, conv, 0.0)
        revenue = conv * self.value[ci] * (0.9 + 0.2 * u[_S_REV])
        out: list[dict[str, Any] | None] = []
        for j in range(n):
            if blocked[j]:
                out.append(None)
                continue
            d, r = decisions[j], requests[j]
            out.append(
                {
                    "request_id": rid[j],
                    "campaign_id": str(r["campaign_id"]),
                    "arm": str(d["arm"]),
                    "event_time": int(t[j]),
                    "won": bool(won[j]),
                    "clicks": int(clicks[j]),
                    "conversions": int(conv[j]),
                    "spend": float(spend[j]),
                    "revenue": float(revenue[j]),
                    "reward": None,
                    "success": None,
                    "propensity": float(d["propensity"]),
                    "policy_version": int(d.get("policy_version", -1)),
                    "budget": float(budget[j]),
                    "target_cpa": r.get("target_cpa"),
                }
            )
        return out

    # -- truths ------------------------------------------------------------------------
    def expected_reward(self, metric: str = "profit", at_ms: int = 0) -> F64:
        """Expected reward per request, (n_campaigns, n_arms), at nominal arm multipliers.

        Averages over the 24 local hours; ignores guardrails, jitter and over-delivery.
        ``metric`` is ``"profit"``, ``"conversions"``, ``"clicks"`` or ``"spend"``.
        """
        n, k = len(self.campaign_ids), len(self.arm_names)
        ci = np.repeat(np.arange(n), k)
        ai = np.tile(np.arange(k), n)
        mult = np.array([self.arms[a] for a in self.arm_names])
        ratio = mult[ai, 0]
        budget = self.base_budget[ci] * mult[ai, 1]
        total = np.zeros(n * k)
        for hour in range(24):
            t = np.full(n * k, at_ms - at_ms % _DAY_MS + hour * 3_600_000, dtype=np.int64)
            t = t - self.utc_offset[ci] * 60_000
            tod = self._tod(ci, t)
            p_win = np.clip(self.win_base[ci] * ratio ** self.elasticity[ci] * tod, 0.0, 0.95)
            theta = self.base_budget[ci] * np.sqrt(ratio) / _DEMAND_SHAPE
            x = budget / theta
            below = _DEMAND_SHAPE * theta * special.gammainc(_DEMAND_SHAPE + 1, x)
            spend = below + budget * special.gammaincc(_DEMAND_SHAPE, x)
            clicks = spend / (self.cpc[ci] * np.sqrt(ratio)) * tod
            q = self._quality_at(ci, ai, np.full(n * k, at_ms))
            conv = clicks * np.clip(self.cvr[ci] * q, 0.0, 1.0)
            metrics = {
                "profit": conv * self.value[ci] - spend,
                "conversions": conv,
                "clicks": clicks,
                "spend": spend,
            }
            if metric not in metrics:
                msg = f"unknown metric {metric!r}"
                raise ConfigError(msg)
            total += p_win * metrics[metric]
        return np.asarray((total / 24.0).reshape(n, k), dtype=np.float64)

    def best_arms(self, metric: str = "profit", at_ms: int = 0) -> dict[str, str]:
        """Campaign id → arm with the highest expected reward."""
        best = self.expected_reward(metric, at_ms).argmax(axis=1)
        return {c: self.arm_names[int(b)] for c, b in zip(self.campaign_ids, best, strict=True)}
