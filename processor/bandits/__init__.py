"""Bandit algorithms: Thompson sampling, Exp3-IX, Hedge, ensemble weights, trade rewards.

Keyed, vectorized state for the stream stage is in :mod:`processor.bandits.keyed`; the object
APIs are single-key views over it, and every formula lives once in :mod:`processor.bandits.base`.
"""

from __future__ import annotations

from processor.bandits.base import BanditInputError, beta_credible_interval, thompson_propensities
from processor.bandits.ensemble import MODES, EnsembleWeightOptimizer, arm_name
from processor.bandits.exp3ix import Exp3IXBandit
from processor.bandits.expweights import eta_schedule, learning_rate, rewards_to_losses
from processor.bandits.gaussian import KeyedNormalGamma
from processor.bandits.hedge import Hedge
from processor.bandits.keyed import KeyedExp3IX, KeyedThompson
from processor.bandits.rewards import RewardTracker, trade_reward_bps
from processor.bandits.thompson import ThompsonSamplerArm, ThompsonSampling

__all__ = [
    "MODES",
    "BanditInputError",
    "EnsembleWeightOptimizer",
    "Exp3IXBandit",
    "Hedge",
    "KeyedExp3IX",
    "KeyedNormalGamma",
    "KeyedThompson",
    "RewardTracker",
    "ThompsonSamplerArm",
    "ThompsonSampling",
    "arm_name",
    "beta_credible_interval",
    "eta_schedule",
    "learning_rate",
    "rewards_to_losses",
    "thompson_propensities",
    "trade_reward_bps",
]
