"""Thompson selection by inverse CDF without a quadrature after every update.

:meth:`~processor.bandits.thompson.ThompsonSampling.select` draws the arm whose interval of the
cumulative exact propensities contains a uniform u — the same choice as
:meth:`~processor.bandits.keyed.KeyedThompson.select`. The propensities change with every update,
and computing them (composite quadrature over every arm's posterior) takes a few hundred
microseconds. But an update moves them by a bounded amount, so most choices can be made from
the last exact propensities:

* An update changes one arm's posterior from μ = Beta(α, β) to ν = Beta(α + 1, β) (a success)
  or Beta(α, β + 1) (a failure). For any event E of the independent draws, |P_ν(E) − P_μ(E)| ≤
  TV(μ, ν), and the total variation has a closed form: the densities cross at the mean
  m = α/(α + β), and ``I_x(α, β) − I_x(α + 1, β) = x^α (1 − x)^β / (α B(α, β))`` gives
  ``TV = m^α (1 − m)^β / (α B(α, β))`` for a success (β in the denominator for a failure).
* The sign is known too. ``C_j = P(argmax ≤ j)`` is the probability of a set of draws that grows
  with the updated arm's draw when that arm is among the first j + 1 columns, and shrinks with it
  otherwise; a success moves the arm's law up (ν dominates μ), a failure down. So each update
  widens every boundary C_j on one side only, by TV.

The choice counts the boundaries below u·C_K. While u is outside every boundary's interval
``[C_j + lo_j − ε, C_j + hi_j + ε]`` (ε covers the quadrature's own error, < 1e-6 per
propensity, with a wide margin), the count — and so the arm — is the one the exact propensities
would give; otherwise the caller computes them exactly and starts again from there. Fractional
successes, discounting and arm changes start again too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

logger = logging.getLogger(__name__)

EPS = 1e-4  # margin around each boundary: quadrature error (< 1e-6 a propensity) and rounding
_MAX_WIDTH = 0.25  # past this drift, exact propensities are cheaper than the near misses
_MAX_COUNTS = 1e12  # larger posteriors: the closed form's rounding is not covered


def tv_bound(alpha: float, beta: float, success: bool) -> float:
    """Upper bound of TV(Beta(α, β), Beta(α + 1, β)) (a success) or of TV(Beta(α, β),
    Beta(α, β + 1)) (a failure): the closed form above, enlarged by its rounding error."""
    m = alpha / (alpha + beta)
    t1 = alpha * math.log(m)  # <= 0
    t2 = beta * math.log1p(-m)  # <= 0
    t3 = math.lgamma(alpha)
    t4 = math.lgamma(beta)
    t5 = math.lgamma(alpha + beta)
    t6 = math.log(alpha if success else beta)
    # every term is good to a few ulps of its own size: cover them all, then some
    slack = 1e-14 * (abs(t1) + abs(t2) + abs(t3) + abs(t4) + abs(t5) + abs(t6)) + 1e-12
    return math.exp(math.fsum((t1, t2, -t3, -t4, t5, -t6)) + slack)


class Drift:
    """Exact propensities at some state and how far each boundary may have moved since.

    Args:
        probs: Exact propensities over every column (0 for inactive arms).
        last_active: The last active column: C_j is the total from there on.
        changes: The table's change counter they belong to.
    """

    __slots__ = ("cdf", "changes", "hi", "last", "lo", "width")

    def __init__(self, probs: Sequence[float], last_active: int, changes: int) -> None:
        acc = 0.0
        self.cdf: list[float] = []
        for i, p in enumerate(probs):
            acc = p if i == 0 else acc + p
            self.cdf.append(acc)
        self.lo = [0.0] * len(self.cdf)
        self.hi = [0.0] * len(self.cdf)
        self.changes = changes
        self.last = last_active  # from there on C_j is the total, which u·C_K never reaches
        self.width = 0.0  # every update widens every boundary by its TV: all widths are equal

    def note(self, col: int, success: bool, alpha: float, beta: float, changes: int) -> bool:
        """Widen the boundaries for a 0/1 update of column ``col`` whose posterior was
        Beta(α, β); False once the bounds are too wide (or too large to trust) to be useful."""
        if alpha + beta > _MAX_COUNTS:
            return False
        tv = tv_bound(alpha, beta, success)
        hi, lo = self.hi, self.lo
        for j in range(self.last):
            if (col <= j) == success:
                hi[j] += tv
            else:
                lo[j] -= tv
        self.changes = changes
        self.width += tv
        return self.width <= _MAX_WIDTH

    def choose(self, u: float) -> int | None:
        """The column the exact inverse CDF gives for ``u``, or None if it is not certain."""
        if u > 1.0 - 2.0 * EPS:
            return None
        count = 0
        cdf, lo, hi = self.cdf, self.lo, self.hi
        for j in range(self.last):
            if cdf[j] + hi[j] + EPS < u:
                count += 1
            elif cdf[j] + lo[j] - EPS <= u:
                return None
            else:
                break  # boundaries only rise: the rest are above u as well
        return count
