"""Campaigns of the simulated ad market: what each one is, and the closed forms of its auctions.

Every request is a **second-price** auction for one impression: the highest competing bid ``D``
is log-normal, ``ln D ~ N(μ_c, σ²)``; the campaign wins when its bid ``b`` exceeds ``D`` and pays
``D``. So the win rate ``Φ((ln b − μ)/σ)`` rises with the bid, and so does the average price
paid. A won impression is clicked with probability ``ctr`` and converts with probability
``cvr`` (0.5–3% each; view-through conversions need no click); a conversion is worth the
campaign's value per conversion (±10%). With ``v = cvr × value`` the expected profit of a
request is ``E[(v − D); D < b]``, largest at ``b = v``: an arm that bids above it wins more
auctions, at a loss on the extra ones.

A campaign is specified by its economics at its base bid (:class:`CampaignSpec`): win rate, CPA
relative to its target, ROAS, and daily budget relative to what it would spend unconstrained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

F64 = npt.NDArray[np.float64]

AUDIENCE_POOL = ("sports", "news", "gaming", "finance", "travel", "music", "health", "autos")
PRICE_SIGMA = 0.5
UTC_OFFSETS = np.array([-480, -300, 0, 60, 330, 540])


@dataclass(frozen=True)
class CampaignSpec:
    """One simulated campaign, by its economics at its base bid.

    Attributes:
        cvr: Conversions per won impression.
        ctr: Clicks per won impression.
        cpa_ratio: CPA at the base bid / ``target_cpa`` (1.0: exactly on target; ``None``: no
            target).
        roas: ROAS (revenue / spend) on target: the value per conversion is ``roas ×
            target_cpa`` (without a target, ``roas ×`` the CPA at the base bid). ``roas = 1.5,
            cpa_ratio = 5`` pays 5× its target per conversion, a ROAS of 0.3.
        win_rate: Share of auctions the base bid wins.
        base_bid: The request's ``base_bid``.
        budget_ratio: ``daily_budget`` / the campaign's expected daily spend at its base bid.
        utc_offset_minutes: The campaign's local time.
        popularity: Relative share of the request stream.
    """

    cvr: float = 0.01
    ctr: float = 0.01
    cpa_ratio: float | None = 1.0
    roas: float = 1.5
    win_rate: float = 0.45
    base_bid: float = 1.0
    budget_ratio: float = 100.0
    utc_offset_minutes: int = 0
    popularity: float = 1.0


def default_campaigns(rng: np.random.Generator, n: int) -> list[CampaignSpec]:
    """A mixed book: CVR 0.5–3%, ROAS 1.0–1.8 on target, 70% with a CPA target they roughly
    meet (CPA 0.8–1.2× target), budgets from 0.6× to 4× the unconstrained daily spend. An
    impression is worth 0.6–1.6× the base bid, so the most profitable arm differs between
    campaigns and bidding above it loses money."""
    cvr = rng.uniform(0.005, 0.03, n)
    ctr = rng.uniform(0.005, 0.03, n)
    has_target = rng.random(n) < 0.7
    cpa_ratio = rng.uniform(0.8, 1.2, n)
    roas = rng.uniform(1.0, 1.8, n)
    win = rng.uniform(0.3, 0.6, n)
    bid = rng.uniform(0.5, 3.0, n)
    budget = rng.uniform(0.6, 4.0, n)
    offset = rng.choice(UTC_OFFSETS, n)
    pop = rng.dirichlet(np.full(n, 2.0)) * n
    return [
        CampaignSpec(
            cvr=float(cvr[i]),
            ctr=float(ctr[i]),
            cpa_ratio=float(cpa_ratio[i]) if has_target[i] else None,
            roas=float(roas[i]),
            win_rate=float(win[i]),
            base_bid=float(bid[i]),
            budget_ratio=float(budget[i]),
            utc_offset_minutes=int(offset[i]),
            popularity=float(pop[i]),
        )
        for i in range(n)
    ]


def price_mu(base_bid: F64, win_rate: F64, sigma: float = PRICE_SIGMA) -> F64:
    """``μ`` of the competing bid's log-normal so that ``base_bid`` wins ``win_rate``."""
    return np.asarray(np.log(base_bid) - sigma * special.ndtri(win_rate), dtype=np.float64)


def win_probability(bid: F64, mu: F64, sigma: float = PRICE_SIGMA) -> F64:
    """``P(D < bid)``."""
    with np.errstate(divide="ignore"):
        z = (np.log(np.maximum(bid, 0.0)) - mu) / sigma
    return np.asarray(special.ndtr(z), dtype=np.float64)


def expected_price(bid: F64, mu: F64, sigma: float = PRICE_SIGMA) -> F64:
    """``E[D; D < bid]``: the expected second-price payment of one request."""
    with np.errstate(divide="ignore"):
        z = (np.log(np.maximum(bid, 0.0)) - mu) / sigma
    return np.asarray(np.exp(mu + sigma**2 / 2) * special.ndtr(z - sigma), dtype=np.float64)


def cpa_at(bid: F64, mu: F64, cvr: F64, sigma: float = PRICE_SIGMA) -> F64:
    """Expected CPA at ``bid``: average price of a won impression / conversions per won one."""
    return np.asarray(
        expected_price(bid, mu, sigma) / win_probability(bid, mu, sigma) / cvr, dtype=np.float64
    )


def diurnal_factor(local_hour: F64, amplitude: float) -> F64:
    """Relative traffic at a local hour: peak at 15:00, trough at 03:00, mean 1."""
    return np.asarray(
        1.0 + amplitude * np.sin(2.0 * math.pi * (local_hour - 9.0) / 24.0), dtype=np.float64
    )


def skip_legacy_draws(rng: np.random.Generator, n: int, k: int) -> None:
    """Advance ``rng`` past the ad draws of the 0.2 simulator, so each seed keeps its trading
    models (the trading tests and benchmarks are tuned on them)."""
    for _ in range(11):
        rng.random(n)
    rng.choice(np.array([0, 1, 2, 3, 4, 5]), n)
    rng.random(n)
    rng.random((n, k))
    rng.dirichlet(np.full(n, 2.0))
    for _ in range(n):
        rng.choice(np.array(AUDIENCE_POOL), 3, replace=False)
