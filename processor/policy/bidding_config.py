"""Bidding policy settings: arms, exploration, priors, the reward and the objective."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, model_validator
from pydantic.dataclasses import dataclass

from processor.bandits.normal_gamma import check_value_prior
from processor.config_types import (
    MODEL_CONFIG,
    FiniteFloat,
    Fraction,
    Int,
    PositiveFloat,
    PositiveInt,
    config_errors,
)
from processor.errors import ConfigError

logger = logging.getLogger(__name__)

Reward = Literal["conversions", "clicks", "profit", "roi"]
SuccessRule = Literal["positive", "bernoulli"]
Objective = Literal["auto", "binary", "value"]
REWARD_DEFINITIONS: tuple[str, ...] = get_args(Reward)
VALUE_REWARDS = ("profit", "roi")
SUCCESS_RULES: tuple[str, ...] = get_args(SuccessRule)
OBJECTIVES: tuple[str, ...] = get_args(Objective)


__all__ = ["OBJECTIVES", "REWARD_DEFINITIONS", "SUCCESS_RULES", "ArmSpec", "BiddingConfig"]


@config_errors("bidding.arms")
@dataclass(frozen=True, config=MODEL_CONFIG)
class ArmSpec:
    """What an arm does to the request's base bid and base budget."""

    bid_multiplier: PositiveFloat
    budget_multiplier: PositiveFloat


def _default_arms() -> dict[str, ArmSpec]:
    # Budget multipliers stay inside the default max_budget_deviation (±20%), so the
    # deviation guardrail only fires when exploration jitter pushes past it.
    return {
        "conservative": ArmSpec(0.8, 0.8),
        "balanced": ArmSpec(1.0, 1.0),
        "aggressive": ArmSpec(1.2, 1.1),
        "experimental": ArmSpec(1.4, 1.2),
    }


def _arms_from_pairs(value: Any) -> Any:
    # An arm may be written ``[bid, budget]``; pydantic builds ArmSpec from a mapping.
    if not isinstance(value, Mapping):
        return value
    return {
        name: (
            {"bid_multiplier": spec[0], "budget_multiplier": spec[1]}
            if isinstance(spec, list | tuple) and len(spec) == 2
            else spec
        )
        for name, spec in value.items()
    }


Arms = Annotated[
    Mapping[str, ArmSpec],
    BeforeValidator(
        _arms_from_pairs,
        json_schema_input_type=dict[str, ArmSpec | tuple[PositiveFloat, PositiveFloat]],
    ),
    Field(min_length=1),
]


@config_errors("bidding")
@dataclass(frozen=True, config=MODEL_CONFIG)
class BiddingConfig:
    """Bidding policy settings.

    Attributes:
        arms: Arm name → :class:`ArmSpec` (order = arm index order); in YAML an arm is
            ``[bid, budget]`` or ``{bid_multiplier: .., budget_multiplier: ..}``.
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

    arms: Arms = field(default_factory=_default_arms)
    conservative_arm: str = "conservative"
    explore_budget_jitter: Fraction = 0.10
    explore_bid_jitter: Fraction = 0.05
    prior_alpha: PositiveFloat = 1.0
    prior_beta: PositiveFloat = 1.0
    discount: Annotated[FiniteFloat, Field(gt=0, le=1)] = 1.0
    discount_unit_ms: PositiveInt = 3_600_000
    reward: Reward = "profit"
    success_rule: SuccessRule = "positive"
    objective: Objective = "auto"
    value_prior: Literal["pooled", "fixed"] = "pooled"
    value_prior_mean: FiniteFloat = 0.0
    value_prior_count: PositiveFloat = 1.0
    value_prior_shape: PositiveFloat = 50.0
    value_prior_rate: PositiveFloat = 1e-9
    seed: Int = 0

    @model_validator(mode="after")
    def _check(self) -> BiddingConfig:
        if self.conservative_arm not in self.arms:
            arms = ", ".join(self.arms)
            msg = f"conservative_arm {self.conservative_arm!r} is not one of the arms ({arms})"
            raise ValueError(msg)
        try:
            check_value_prior(
                self.value_prior_mean,
                self.value_prior_count,
                self.value_prior_shape,
                self.value_prior_rate,
                self.value_prior,
            )
        except ConfigError as exc:
            msg = f"value_{exc}"
            raise ValueError(msg) from exc
        return self

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
            ConfigError: Unknown key or invalid value (one line per bad setting).
        """
        if not isinstance(mapping, Mapping):
            msg = f"bidding must be a mapping, got {type(mapping).__name__}"
            raise ConfigError(msg)
        return cls(**{str(k): v for k, v in mapping.items()})
