"""What one outcome adds to a campaign's statistics, kept so that it can be taken back exactly.

The reward join (DESIGN §3b) applies each decision's latest outcome once: on a restated outcome
it retracts the earlier contribution (``BidPolicy.observe(..., weight=-1)``) and applies the new
one. It stores, per applied outcome, the numbers :meth:`BidPolicy.contribution` returns:

=============  =======  ==========================================================
field          dtype    used by
=============  =======  ==========================================================
reward         f8       value posterior (n, Σr, Σr²), performance monitor
spend          f8       evidence (exposure of the CPA / ROAS bounds)
revenue        f8       evidence (ROAS)
clicks         u2       evidence
conversions    u2       evidence (CPA / ROAS), predicted conversion rate
flags          u1       bit 0 success (Beta counts), bit 1 won (predicted CVR)
=============  =======  ==========================================================

29 bytes, plus the outcome's ``event_time`` the join keeps anyway (it needs it to know which
outcome is the latest): every statistic decays by event time, and a retraction with the same
``event_time`` removes exactly what is left of the contribution. ``success`` is stored as
applied, so the ``bernoulli`` success rule is never drawn again. Counts above 65,535 in one
outcome need a wider column.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.policy.batches import OutcomeBatch

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Contribution:
    """Per-outcome numbers :meth:`BidPolicy.observe` adds, in outcome order."""

    reward: F64
    success: B
    won: B
    clicks: I64
    conversions: I64
    spend: F64
    revenue: F64

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def take(self, index: Any) -> Contribution:
        """Sub-batch of the rows selected by ``index``."""
        return Contribution(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def flags(self) -> npt.NDArray[np.uint8]:
        """``success`` (bit 0) and ``won`` (bit 1) packed in one byte per outcome."""
        return (self.success.astype(np.uint8) | (self.won.astype(np.uint8) << 1)).astype(np.uint8)

    @classmethod
    def from_columns(
        cls,
        *,
        reward: Any,
        spend: Any,
        revenue: Any,
        clicks: Any,
        conversions: Any,
        flags: Any,
    ) -> Contribution:
        """Rebuild from stored columns (the inverse of the table in the module docstring)."""
        f = np.asarray(flags, dtype=np.uint8)
        return cls(
            reward=np.asarray(reward, dtype=np.float64),
            success=(f & 1) != 0,
            won=(f & 2) != 0,
            clicks=np.asarray(clicks, dtype=np.int64),
            conversions=np.asarray(conversions, dtype=np.int64),
            spend=np.asarray(spend, dtype=np.float64),
            revenue=np.asarray(revenue, dtype=np.float64),
        )

    def outcomes(
        self,
        *,
        request_id: Any,
        campaign_id: Any,
        arm: Any,
        event_time: Any,
        propensity: Any = None,
    ) -> OutcomeBatch:
        """An :class:`OutcomeBatch` that applies exactly these numbers again (or, observed with
        weight −1, takes them back): explicit ``reward`` and ``success``, no budget or target."""
        n = len(self)
        nan = np.full(n, np.nan)
        p = np.ones(n) if propensity is None else np.asarray(propensity, dtype=np.float64)
        return OutcomeBatch(
            request_id=np.asarray(request_id, dtype=object),
            campaign_id=np.asarray(campaign_id, dtype=object),
            arm=np.asarray(arm, dtype=object),
            event_time=np.asarray(event_time, dtype=np.int64),
            won=self.won.copy(),
            clicks=self.clicks.copy(),
            conversions=self.conversions.copy(),
            spend=self.spend.copy(),
            revenue=self.revenue.copy(),
            reward=self.reward.copy(),
            success=self.success.astype(np.float64),
            propensity=p,
            policy_version=np.full(n, -1, dtype=np.int64),
            budget=nan,
            target_cpa=nan.copy(),
        )
