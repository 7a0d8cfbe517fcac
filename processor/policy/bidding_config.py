"""Bidding policy settings: arms, exploration, priors, the reward and the objective."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from processor.bandits.normal_gamma import check_value_prior
from processor.errors import ConfigError

logger = logging.getLogger(__name__)

REWARD_DEFINITIONS = ("conversions", "clicks", "profit", "roi")
VALUE_REWARDS = ("profit", "roi")
SUCCESS_RULES = ("positive", "bernoulli")
OBJECTIVES = ("auto", "binary", "value")


__all__ = ["OBJECTIVES", "REWARD_DEFINITIONS", "SUCCESS_RULES", "ArmSpec", "BiddingConfig"]


@dataclass(frozen=True)
class ArmSpec:
    """What an arm does to the request's base bid and base budget."""

    bid_multiplier: float
    budget_multiplier: float

    def __post_init__(self) -> None:
        for name in ("bid_multiplier", "budget_multiplier"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                msg = f"bidding.arms: {name} must be a finite number > 0, got {v!r}"
                raise ConfigError(msg)


def _default_arms() -> dict[str, ArmSpec]:
    # Budget multipliers stay inside the default max_budget_deviation (±20%), so the
    # deviation guardrail only fires when exploration jitter pushes past it.
    return {
        "conservative": ArmSpec(0.8, 0.8),
        "balanced": ArmSpec(1.0, 1.0),
        "aggressive": ArmSpec(1.2, 1.1),
        "experimental": ArmSpec(1.4, 1.2),
    }


@dataclass(frozen=True)
class BiddingConfig:
    """Bidding policy settings.

    Attributes:
        arms: Arm name → :class:`ArmSpec` (order = arm index order).
        conservative_arm: Arm used in emergency mode and as the guardrails' fallback.
        explore_budget_jitter: Exploring decisions' budget × U(1 − this, 1 + this).
        explore_bid_jitter: Exploring decisions' bid × U(1 − this, 1 + this).
        prior_alpha: Beta prior α of every arm.
        prior_beta: Beta prior β of every arm.
        discount: Per-``discount_unit_ms`` decay γ of the evidence (1.0 = stationary).
        discount_unit_ms: Time unit of the discount.
        reward: Reward definition when an outcome carries none: ``"conversions"``,
            ``"clicks"``, ``"profit"`` (revenue − spend) or ``"roi"`` ((revenue − spend) / spend).
        success_rule: ``"positive"`` (reward > 0) or ``"bernoulli"`` (success with probability
            reward clipped to [0, 1], drawn from the request's reward stream). An outcome's own
            ``success`` flag always wins.
        objective: Which posterior decides: ``"binary"`` (Beta-Bernoulli on success),
            ``"value"`` (Normal-Inverse-Gamma on the reward's mean) or ``"auto"`` (value for
            ``profit`` / ``roi``, binary for ``conversions`` / ``clicks``). Both posteriors
            are kept up to date either way.
        value_prior: ``"pooled"`` (the prior mean and variance of an arm are those of the
            campaign's rewards over all its arms; scale-free) or ``"fixed"``.
        value_prior_mean: μ0 of a fixed prior (and of a campaign without rewards).
        value_prior_count: κ0: the prior mean weighs this many outcomes.
        value_prior_shape: α0: the prior variance weighs ``2·α0`` outcomes. Rare large rewards
            (a conversion among a hundred unconverted impressions) need a weight of the order of
            the outcomes between them, or a short run without one looks certain.
        value_prior_rate: β0 of a fixed prior; added to the pooled one as a variance floor.
        seed: Policy seed of every decision's randomness.
    """

    arms: Mapping[str, ArmSpec] = field(default_factory=_default_arms)
    conservative_arm: str = "conservative"
    explore_budget_jitter: float = 0.10
    explore_bid_jitter: float = 0.05
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    discount: float = 1.0
    discount_unit_ms: int = 3_600_000
    reward: str = "profit"
    success_rule: str = "positive"
    objective: str = "auto"
    value_prior: str = "pooled"
    value_prior_mean: float = 0.0
    value_prior_count: float = 1.0
    value_prior_shape: float = 50.0
    value_prior_rate: float = 1e-9
    seed: int = 0

    def __post_init__(self) -> None:
        arms = {str(k): _arm_spec(k, v) for k, v in dict(self.arms).items()}
        object.__setattr__(self, "arms", arms)
        if not arms:
            msg = "bidding.arms must name at least one arm"
            raise ConfigError(msg)
        if self.conservative_arm not in arms:
            msg = f"bidding.conservative_arm {self.conservative_arm!r} is not one of the arms"
            raise ConfigError(msg)
        for name in ("explore_budget_jitter", "explore_bid_jitter"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                msg = f"bidding.{name} must be in [0, 1), got {v!r}"
                raise ConfigError(msg)
        for name in ("prior_alpha", "prior_beta"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                msg = f"bidding.{name} must be > 0, got {v!r}"
                raise ConfigError(msg)
        if not 0.0 < self.discount <= 1.0:
            msg = f"bidding.discount must be in (0, 1], got {self.discount!r}"
            raise ConfigError(msg)
        if self.discount_unit_ms <= 0:
            msg = "bidding.discount_unit_ms must be > 0"
            raise ConfigError(msg)
        if self.reward not in REWARD_DEFINITIONS:
            msg = f"bidding.reward must be one of {REWARD_DEFINITIONS}, got {self.reward!r}"
            raise ConfigError(msg)
        if self.success_rule not in SUCCESS_RULES:
            msg = f"bidding.success_rule must be one of {SUCCESS_RULES}"
            raise ConfigError(msg)
        if self.objective not in OBJECTIVES:
            msg = f"bidding.objective must be one of {OBJECTIVES}, got {self.objective!r}"
            raise ConfigError(msg)
        try:
            check_value_prior(
                self.value_prior_mean,
                self.value_prior_count,
                self.value_prior_shape,
                self.value_prior_rate,
                self.value_prior,
            )
        except ConfigError as exc:
            msg = f"bidding.value_{exc}"
            raise ConfigError(msg) from exc

    @property
    def value_objective(self) -> bool:
        """True when decisions use the value posterior (see ``objective``)."""
        if self.objective == "auto":
            return self.reward in VALUE_REWARDS
        return self.objective == "value"

    @property
    def arm_names(self) -> tuple[str, ...]:
        """Arm names in index order."""
        return tuple(self.arms)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> BiddingConfig:
        """Build from a mapping (a YAML section); arms may be ``{name: [bid, budget]}`` or
        ``{name: {bid_multiplier: .., budget_multiplier: ..}}``.

        Raises:
            ConfigError: Unknown key or invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            msg = f"bidding: unknown settings {unknown}"
            raise ConfigError(msg)
        return cls(**dict(mapping))


def _arm_spec(name: Any, value: Any) -> ArmSpec:
    if isinstance(value, ArmSpec):
        return value
    if isinstance(value, Mapping):
        extra = set(value) - {"bid_multiplier", "budget_multiplier"}
        if extra:
            msg = f"bidding.arms.{name}: unknown settings {sorted(extra)}"
            raise ConfigError(msg)
        try:
            return ArmSpec(float(value["bid_multiplier"]), float(value["budget_multiplier"]))
        except KeyError as exc:
            msg = f"bidding.arms.{name}: missing {exc}"
            raise ConfigError(msg) from exc
    if isinstance(value, list | tuple) and len(value) == 2:
        return ArmSpec(float(value[0]), float(value[1]))
    msg = f"bidding.arms.{name}: expected [bid, budget] or a mapping, got {value!r}"
    raise ConfigError(msg)
