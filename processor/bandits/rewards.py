"""Trade rewards in basis points: the per-trade tracker and the vectorized formula.

``reward_bps = (side·(exit − entry)·quantity − fees − slippage) / (entry·quantity) · 10⁴``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from processor.bandits.base import BanditInputError, FloatArray, check_finite
from processor.errors import StateError

logger = logging.getLogger(__name__)


def trade_reward_bps(
    side: ArrayLike,
    entry_price: ArrayLike,
    exit_price: ArrayLike,
    quantity: ArrayLike,
    fees: ArrayLike,
    slippage: ArrayLike,
) -> FloatArray:
    """Net P&L over notional in bps, elementwise on numpy arrays (broadcasting).

    Invalid rows (non-positive entry price or quantity) give NaN, so a batch caller can
    dead-letter them instead of losing the batch.

    Example:
        >>> float(np.round(trade_reward_bps(1, 150.0, 150.5, 100, 0.5, 0.2), 2))
        32.87
    """
    s = np.asarray(side, dtype=np.float64)
    entry = np.asarray(entry_price, dtype=np.float64)
    exit_ = np.asarray(exit_price, dtype=np.float64)
    qty = np.asarray(quantity, dtype=np.float64)
    notional = entry * qty
    pnl = (
        s * (exit_ - entry) * qty - np.asarray(fees, np.float64) - np.asarray(slippage, np.float64)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(notional > 0.0, pnl / notional * 1e4, np.nan)
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class OpenTrade:
    """A trade waiting for its exit."""

    arm: str
    entry_price: float
    quantity: float
    timestamp: datetime | float
    side: int


class RewardTracker:
    """Open trades per arm (FIFO) and realized rewards in bps.

    Example:
        >>> t = RewardTracker()
        >>> t.record_trade("lightgbm", entry_price=150.00, quantity=100, timestamp=0.0)
        >>> round(t.close_trade("lightgbm", exit_price=150.50, fees=0.50, slippage=0.20), 2)
        32.87
    """

    def __init__(self) -> None:
        self._open: dict[str, deque[OpenTrade]] = {}
        self._closed: dict[str, list[float]] = {}

    def record_trade(
        self,
        arm: str,
        entry_price: float,
        quantity: float,
        timestamp: datetime | float,
        side: int = 1,
    ) -> None:
        """Open a trade for ``arm`` (side +1 long, −1 short).

        Raises:
            BanditInputError: non-finite or non-positive price/quantity, side not ±1.
        """
        check_finite("entry_price/quantity", [entry_price, quantity])
        if entry_price <= 0.0 or quantity <= 0.0 or side not in (1, -1):
            msg = "entry_price and quantity must be > 0 and side must be +1 or -1"
            raise BanditInputError(msg)
        trade = OpenTrade(arm, float(entry_price), float(quantity), timestamp, int(side))
        self._open.setdefault(arm, deque()).append(trade)

    def open_trades(self, arm: str) -> int:
        """Number of open trades of ``arm``."""
        return len(self._open.get(arm, ()))

    def close_trade(
        self, arm: str, exit_price: float, fees: float = 0.0, slippage: float = 0.0
    ) -> float:
        """Close the oldest open trade of ``arm``; returns net P&L in bps.

        Raises:
            StateError: no open trade for ``arm``.
            BanditInputError: non-finite exit price, fees or slippage.
        """
        check_finite("exit_price/fees/slippage", [exit_price, fees, slippage])
        queue = self._open.get(arm)
        if not queue:
            msg = f"no open trade for arm {arm!r}"
            raise StateError(msg)
        trade = queue.popleft()
        reward = float(
            trade_reward_bps(
                trade.side, trade.entry_price, exit_price, trade.quantity, fees, slippage
            )
        )
        self._closed.setdefault(arm, []).append(reward)
        logger.debug("closed trade arm=%s reward_bps=%s", arm, reward)
        return reward

    def get_stats(self) -> dict[str, Any]:
        """Per-arm count, total and mean of closed-trade rewards (bps)."""
        return {
            arm: {
                "trades": len(r),
                "total_bps": float(np.sum(r)),
                "mean_bps": float(np.mean(r)) if r else 0.0,
                "open": self.open_trades(arm),
            }
            for arm, r in self._closed.items()
        }
