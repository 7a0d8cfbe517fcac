"""Hedge: the full-information variant of the log-domain Exp3-IX core.

Every round reports every arm's own reward (NaN, or a missing name, for an arm that did not
report). Reported arms add their own loss; an arm that did not report is charged the mean loss
of those that did, so it neither wins nor loses against them that round — charging it nothing
would make silence the best strategy. The anytime rate is the full-information one,
``η_t = sqrt(8 ln K / t)``, with no cap. State, arm management and serialization are those of
:class:`~processor.bandits.exp3ix.Exp3IXBandit`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from processor.bandits.base import BanditInputError
from processor.bandits.exp3ix import SingleKeyExp3View, _config_from_state
from processor.bandits.exp3ix_scalar import update_full_one

logger = logging.getLogger(__name__)


class Hedge(SingleKeyExp3View):
    """Exponential weights with full information, on :class:`~processor.bandits.keyed.KeyedExp3IX`.

    Args:
        n_arms: Number of arms.
        arm_names: Their names (default ``arm_0``…).
        eta: Fixed learning rate, None for the anytime ``sqrt(8 ln K / t)`` (with ``share``:
            see :mod:`processor.bandits.expweights`).
        eta_max: Cap of the rate of bandit-feedback rounds only; a Hedge learner has none
            (kept for compatibility with the original signature).
        reward_range: Rewards are mapped to losses in [0, 1] over this range.
        seed: Seed of :meth:`select_arm`.
        share: Fixed-share α (Herbster–Warmuth) so the weights can follow a best arm that
            changes; 0 = off.

    Example:
        >>> h = Hedge(2, ["a", "b"], reward_range=(0.0, 1.0))
        >>> for _ in range(200):
        ...     h.update({"a": 1.0, "b": 0.0})
        >>> bool(h.get_weights_dict()["a"] > 0.9)
        True
    """

    def __init__(
        self,
        n_arms: int,
        arm_names: Sequence[str] | None = None,
        eta: float | None = None,
        eta_max: float = 0.07,
        reward_range: tuple[float, float] = (-100.0, 100.0),
        seed: int | None = None,
        share: float = 0.0,
    ) -> None:
        super().__init__(
            n_arms,
            arm_names,
            gamma=None,
            eta=eta,
            eta_max=eta_max,
            reward_range=reward_range,
            uniform_mix=0.0,
            seed=seed,
            share=share,
        )

    def update(self, rewards: Mapping[str, float] | ArrayLike) -> None:
        """One round: every arm's reward, as a name → reward mapping (missing = did not report)
        or an array in arm-index order (NaN = did not report). At least one arm must report.

        Raises:
            BanditInputError: unknown arm name, wrong length, ±inf, or no arm reported.
        """
        cols = self._active_cols()
        names = self._layout[2]
        row = [math.nan] * len(self.keyed._arm_names)
        if isinstance(rewards, Mapping):
            unknown = set(rewards).difference(names)
            if unknown:
                msg = f"unknown arms {sorted(unknown)}"
                raise BanditInputError(msg)
            for name, c in zip(names, cols, strict=True):
                if name in rewards:
                    row[c] = float(rewards[name])
        else:
            values = np.asarray(rewards, dtype=np.float64)
            if values.shape != (len(names),):
                msg = f"expected {len(names)} rewards, got shape {values.shape}"
                raise BanditInputError(msg)
            for c, v in zip(cols, values.tolist(), strict=True):
                row[c] = v
        update_full_one(self.keyed, self._row, row)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], seed: int | None = None) -> Hedge:
        """Restore from :meth:`to_dict`."""
        names = list(state["arm_names"])
        cfg = _config_from_state(state)
        obj = cls(
            len(names),
            names,
            eta=cfg["eta"],
            eta_max=cfg["eta_max"],
            reward_range=cfg["reward_range"],
            seed=seed,
            share=cfg["share"],
        )
        obj._load(state)
        return obj
