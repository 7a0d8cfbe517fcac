"""A seeded synthetic market for tests, the demo and benchmarks.

Ad side (see :mod:`processor.policy.simulator_campaigns` for the auction): every request is a
second-price auction for one impression, whose win rate rises with the bid; won impressions are
clicked and convert at 0.5–3%, and conversions carry a value. Campaigns have CPA targets, daily
budgets, local time zones, and traffic that follows the local hour of the day. The simulator
keeps each campaign's spend of its local day, so ``spent_today`` on the next requests is what the
decisions actually spent (closed loop). With ``conversion_delay_ms`` a conversion arrives late,
as a restated outcome for the same request (:meth:`MarketSimulator.restatements`); by default
each decision gets one outcome with its conversion in it. 1% of won impressions over-deliver by
up to 15% (billing lag), the only source of overspend.

Trading side: models (families × horizons) with hidden normal P&L distributions in basis points,
emitted as TradeOutcome dicts with bandit, full-information or contribution feedback
(:mod:`processor.policy.simulator_trading`, a base of :class:`MarketSimulator`).

Every outcome's randomness comes from :func:`request_uniforms` on the request or trade id, so
outcomes do not depend on call order or batching; only ``spent_today`` depends on the outcomes
produced before a request.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from processor.errors import ConfigError
from processor.policy.hashing import request_uniforms
from processor.policy.simulator_campaigns import (
    AUDIENCE_POOL,
    PRICE_SIGMA,
    CampaignSpec,
    cpa_at,
    default_campaigns,
    diurnal_factor,
    expected_price,
    price_mu,
    skip_legacy_draws,
    win_probability,
)
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
    "CampaignSpec",
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
SCENARIOS = ("default", "regime_switch")
TRAFFIC = ("steady", "diurnal")

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_STEP_MS = 60_000
_OVERDELIVERY_PROB = 0.01
_OVERDELIVERY_MAX = 0.15
_SWITCH_FACTOR = float(np.log(1.6))
# Uniform streams of the ad outcome (distinct from the policy's streams by the seed salt).
_S_WIN, _S_CLICK, _S_CONV, _S_REV, _S_OVER, _S_OVERAMT, _S_DELAY = range(10, 17)


class MarketSimulator(TradingMarket):
    """Seeded synthetic ad market and trading-model market.

    Args:
        seed: Seed of everything hidden and every draw.
        n_campaigns: Number of campaigns of the default book (ignored with ``campaigns``).
        scenario: ``"default"`` (stationary apart from the hour of day) or ``"regime_switch"``
            (at ``switch_ms`` competition gets 1.6× dearer for even campaigns and 1.6× cheaper
            for odd ones, and each model's mean P&L is permuted).
        campaigns: Explicit campaigns instead of the default book.
        arm_multipliers: Arm name → (bid multiplier, budget multiplier) used by the truths.
        switch_ms: Regime switch time for ``"regime_switch"``.
        families: Trading model families.
        horizons: Trading horizons.
        tod_amplitude: Amplitude of the hour-of-day traffic curve (peak 15:00 local).
        traffic: ``"steady"`` (requests evenly spaced at the given rate; each campaign's share
            follows its local hour) or ``"diurnal"`` (the stream's rate itself follows the
            campaigns' hours: use it with one campaign or a few in one time zone).
        conversion_delay_ms: Mean delay of a conversion after its impression (exponential);
            0 (default) puts the conversion in the decision's only outcome.
    """

    def __init__(
        self,
        seed: int,
        n_campaigns: int = 20,
        scenario: str = "default",
        *,
        campaigns: Sequence[CampaignSpec] | None = None,
        arm_multipliers: Mapping[str, tuple[float, float]] | None = None,
        switch_ms: int = 3_600_000,
        families: Sequence[str] = DEFAULT_FAMILIES,
        horizons: Sequence[str] = DEFAULT_HORIZONS,
        tod_amplitude: float = 0.6,
        traffic: str = "steady",
        conversion_delay_ms: float = 0.0,
    ) -> None:
        if scenario not in SCENARIOS:
            msg = f"scenario must be one of {SCENARIOS}, got {scenario!r}"
            raise ConfigError(msg)
        if traffic not in TRAFFIC:
            msg = f"traffic must be one of {TRAFFIC}, got {traffic!r}"
            raise ConfigError(msg)
        if campaigns is None and n_campaigns < 1:
            msg = "n_campaigns must be >= 1"
            raise ConfigError(msg)
        if not 0.0 <= tod_amplitude < 1.0 or conversion_delay_ms < 0:
            msg = "tod_amplitude must be in [0, 1) and conversion_delay_ms >= 0"
            raise ConfigError(msg)
        self.seed = seed
        self.scenario = scenario
        self.switch_ms = switch_ms
        self.tod_amplitude = tod_amplitude
        self.traffic = traffic
        self.conversion_delay_ms = float(conversion_delay_ms)
        self.arms = dict(arm_multipliers or DEFAULT_ARM_MULTIPLIERS)
        self.arm_names = tuple(self.arms)
        self._arm_index = {a: i for i, a in enumerate(self.arm_names)}
        legacy = np.random.default_rng([seed, 1])
        n_legacy = n_campaigns if campaigns is None else len(campaigns)
        skip_legacy_draws(legacy, n_legacy, len(self.arm_names))
        self.families = tuple(families)
        self.horizons = tuple(horizons)
        fh = [f"{f}:{h}" for f in self.families for h in self.horizons]
        self.model_arms = tuple(fh)
        self.model_mean_bps = legacy.normal(0.0, 4.0, len(fh))
        self.model_sd_bps = legacy.uniform(15.0, 40.0, len(fh))
        self._trade_counter = 0
        book = np.random.default_rng([seed, 4])
        specs = list(campaigns) if campaigns is not None else default_campaigns(book, n_campaigns)
        self._set_campaigns(specs, book)
        self._rng = np.random.default_rng([seed, 2])
        self._counter = 0
        self.daily_budget: F64 | None = None
        self._spent = np.zeros(len(specs))
        self._spent_day = np.full(len(specs), -(2**62), dtype=np.int64)
        self._late: list[tuple[int, int, dict[str, Any]]] = []
        self._late_seq = 0

    def _set_campaigns(self, specs: list[CampaignSpec], rng: np.random.Generator) -> None:
        n = len(specs)
        self.specs = specs
        self.campaign_ids = [f"cmp-{i:04d}" for i in range(n)]
        self._cidx = {c: i for i, c in enumerate(self.campaign_ids)}

        def col(name: str) -> F64:
            return np.array([float(getattr(s, name)) for s in specs])

        self.cvr, self.ctr, self.base_bid = col("cvr"), col("ctr"), col("base_bid")
        self.win_rate, self.budget_ratio = col("win_rate"), col("budget_ratio")
        self.popularity = col("popularity")
        self.utc_offset = np.array([s.utc_offset_minutes for s in specs], dtype=np.int64)
        self.base_budget = self.base_bid * rng.uniform(2.0, 5.0, n)
        self.mu = price_mu(self.base_bid, self.win_rate)
        cpa = cpa_at(self.base_bid, self.mu, self.cvr)
        ratio = np.array([np.nan if s.cpa_ratio is None else s.cpa_ratio for s in specs])
        self.target_cpa = cpa / ratio
        self.value = col("roas") * np.where(np.isnan(ratio), cpa, self.target_cpa)
        self.audiences = [
            list(rng.choice(np.array(AUDIENCE_POOL), 3, replace=False)) for _ in range(n)
        ]

    # -- hidden parameters -------------------------------------------------------------
    def _mu_at(self, ci: npt.NDArray[np.int64], t: Any) -> F64:
        mu = self.mu[ci]
        if self.scenario == "regime_switch":
            sign = np.where(ci % 2 == 0, 1.0, -1.0)
            mu = np.where(np.asarray(t) >= self.switch_ms, mu + sign * _SWITCH_FACTOR, mu)
        return np.asarray(mu, dtype=np.float64)

    def _local_hour(self, ci: npt.NDArray[np.int64], t_ms: npt.NDArray[np.int64]) -> F64:
        local = t_ms + self.utc_offset[ci] * 60_000
        return np.asarray(np.mod(local, _DAY_MS) / _HOUR_MS, dtype=np.float64)

    def _local_day(self, ci: npt.NDArray[np.int64], t_ms: npt.NDArray[np.int64]) -> Any:
        return (t_ms + self.utc_offset[ci] * 60_000) // _DAY_MS

    def _shares(self, t_ms: npt.NDArray[np.int64]) -> F64:
        """(len(t), n_campaigns) share of the request stream of each campaign at each time."""
        n = len(self.campaign_ids)
        ci = np.arange(n)
        hours = self._local_hour(np.broadcast_to(ci, (t_ms.size, n)), t_ms[:, None])
        w = self.popularity * diurnal_factor(hours, self.tod_amplitude)
        return np.asarray(w, dtype=np.float64)

    def expected_daily_spend(self, requests_per_day: float) -> F64:
        """Expected spend of a day per campaign at its base bid, for a stream of that size."""
        share = self.popularity / self.popularity.sum()
        return np.asarray(
            requests_per_day * share * expected_price(self.base_bid, self.mu), dtype=np.float64
        )

    # -- requests ----------------------------------------------------------------------
    def _arrival_times(self, n: int, start_ms: int, rate_per_s: float) -> npt.NDArray[np.int64]:
        step = 1000.0 / rate_per_s
        if self.traffic == "steady":
            return np.asarray(start_ms + (np.arange(n) * step).astype(np.int64), dtype=np.int64)
        # Non-homogeneous arrivals: evenly spaced in "traffic time" τ = ∫ intensity dt.
        need = n * step
        span = int(need / (1.0 - self.tod_amplitude) / _STEP_MS) + 2
        grid = start_ms + np.arange(span + 1, dtype=np.int64) * _STEP_MS
        shares = self._shares(grid[:-1]).sum(axis=1) / self.popularity.sum()
        tau = np.concatenate([[0.0], np.cumsum(shares * _STEP_MS)])
        times = np.interp(np.arange(n) * step, tau, grid.astype(np.float64))
        return np.asarray(times.astype(np.int64), dtype=np.int64)

    def bid_requests(
        self, n: int, start_ms: int = 0, rate_per_s: float = 1000.0
    ) -> list[dict[str, Any]]:
        """Generate ``n`` BidRequest dicts from ``start_ms`` on at ``rate_per_s`` on average.

        Campaigns are drawn by popularity × their local hour's traffic; ids continue across
        calls. The first call sizes the daily budgets for this rate (``budget_ratio`` × the
        expected unconstrained spend of a day at it).
        """
        if self.daily_budget is None:
            self.daily_budget = self.budget_ratio * self.expected_daily_spend(rate_per_s * 86_400)
        times = self._arrival_times(n, start_ms, rate_per_s)
        u = self._rng.random(n)
        aud = self._rng.integers(0, 3, n)
        hours = times // _HOUR_MS
        ci = np.zeros(n, dtype=np.int64)
        uniq, inv = np.unique(hours, return_inverse=True)
        cum = np.cumsum(self._shares(uniq * _HOUR_MS + _HOUR_MS // 2), axis=1)
        cum /= cum[:, -1:]
        for j in range(uniq.size):
            sel = inv == j
            ci[sel] = np.minimum(np.searchsorted(cum[j], u[sel], side="right"), cum.shape[1] - 1)
        day = self._local_day(ci, times)
        spent = np.where(self._spent_day[ci] == day, self._spent[ci], 0.0)
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
        """Vectorized :meth:`outcome_for` over aligned decisions and requests.

        Adds the spend to each campaign's day and, with ``conversion_delay_ms``, queues the
        restated outcome of every conversion.
        """
        n = len(decisions)
        if n == 0:
            return []
        rid = [str(r["request_id"]) for r in requests]
        ci = np.array([self._cidx[str(r["campaign_id"])] for r in requests], dtype=np.int64)
        t = np.array([int(r["event_time"]) for r in requests], dtype=np.int64)
        bid = np.array([float(d["bid_amount"]) for d in decisions])
        budget = np.array([float(d["budget"]) for d in decisions])
        blocked = np.array([d["mode"] == "blocked" for d in decisions])
        u = {s: request_uniforms(self.seed, rid, s) for s in range(_S_WIN, _S_DELAY + 1)}
        price = np.exp(self._mu_at(ci, t) + PRICE_SIGMA * special.ndtri(u[_S_WIN]))
        won = (bid > price) & ~blocked & (budget > 0)
        over = np.where(u[_S_OVER] < _OVERDELIVERY_PROB, _OVERDELIVERY_MAX * u[_S_OVERAMT], 0.0)
        spend = np.where(won, np.minimum(price, budget) * (1.0 + over), 0.0)
        clicks = won & (u[_S_CLICK] < self.ctr[ci])
        conv = won & (u[_S_CONV] < self.cvr[ci])
        revenue = np.where(conv, self.value[ci] * (0.9 + 0.2 * u[_S_REV]), 0.0)
        self._book_spend(ci, t, spend)
        late = conv & (self.conversion_delay_ms > 0)
        delay = (-self.conversion_delay_ms * np.log1p(-u[_S_DELAY])).astype(np.int64)
        out: list[dict[str, Any] | None] = []
        for j in range(n):
            if blocked[j]:
                out.append(None)
                continue
            d, r = decisions[j], requests[j]
            rec = {
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
            if late[j]:
                restated: dict[str, Any] = {**rec, "event_time": int(t[j] + delay[j])}
                self._late_seq += 1
                entry = (int(restated["event_time"]), self._late_seq, restated)
                heapq.heappush(self._late, entry)
                rec.update(conversions=0, revenue=0.0)
            out.append(rec)
        return out

    def restatements(self, until_ms: int) -> list[dict[str, Any]]:
        """Restated outcomes (a late conversion) due by ``until_ms``, in event-time order.

        Each carries the request's full latest outcome: the same ``request_id``, spend and
        impression as the first one, now with the conversion and its revenue.
        """
        out = []
        while self._late and self._late[0][0] <= until_ms:
            out.append(heapq.heappop(self._late)[2])
        return out

    def _book_spend(self, ci: npt.NDArray[np.int64], t: npt.NDArray[np.int64], spend: F64) -> None:
        """Add spend to each campaign's local day (a new day starts from zero)."""
        day = self._local_day(ci, t)
        latest = self._spent_day.copy()
        np.maximum.at(latest, ci, day)
        new_day = latest > self._spent_day
        self._spent[new_day] = 0.0
        self._spent_day = latest
        today = day == latest[ci]
        np.add.at(self._spent, ci[today], spend[today])

    def spent_today(self, campaign_id: str, at_ms: int) -> float:
        """What the campaign spent of its local day at ``at_ms`` (as the next request says)."""
        c = self._cidx[campaign_id]
        day = self._local_day(np.array([c]), np.array([at_ms]))[0]
        return float(self._spent[c]) if self._spent_day[c] == day else 0.0

    # -- truths ------------------------------------------------------------------------
    def expected_reward(self, metric: str = "profit", at_ms: int = 0) -> F64:
        """Expected value per request, (n_campaigns, n_arms), at nominal arm multipliers.

        ``metric``: ``"profit"``, ``"conversions"``, ``"clicks"``, ``"spend"`` or ``"wins"``.
        Ignores guardrails, jitter, budgets and over-delivery.
        """
        n, k = len(self.campaign_ids), len(self.arm_names)
        ci = np.repeat(np.arange(n), k)
        mult = np.array([self.arms[a][0] for a in self.arm_names])
        bid = self.base_bid[ci] * np.tile(mult, n)
        mu = self._mu_at(ci, np.full(n * k, at_ms))
        p_win = win_probability(bid, mu)
        spend = expected_price(bid, mu)
        metrics = {
            "profit": p_win * self.cvr[ci] * self.value[ci] - spend,
            "conversions": p_win * self.cvr[ci],
            "clicks": p_win * self.ctr[ci],
            "spend": spend,
            "wins": p_win,
        }
        if metric not in metrics:
            msg = f"unknown metric {metric!r}"
            raise ConfigError(msg)
        return np.asarray(metrics[metric].reshape(n, k), dtype=np.float64)

    def best_arms(self, metric: str = "profit", at_ms: int = 0) -> dict[str, str]:
        """Campaign id → arm with the highest expected reward."""
        best = self.expected_reward(metric, at_ms).argmax(axis=1)
        return {c: self.arm_names[int(b)] for c, b in zip(self.campaign_ids, best, strict=True)}
