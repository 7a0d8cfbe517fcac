"""Bidding policy: Thompson-sampled bid strategies under safety guardrails, on batches.

``BidPolicy.decide`` turns a batch of bid requests (columns) into a batch of decisions
with a handful of numpy operations; ``BidPolicy.observe`` applies a batch of outcomes.

Semantics (documented contract):

* **Randomness.** Every random number of a decision comes from
  :func:`~processor.policy.hashing.request_uniforms` on ``(seed, stream, request_id)``:
  the same state and request always give the same decision, however requests are batched.
* **Mode.** ``exploit`` when the Thompson draw picked the arm with the best posterior mean,
  ``explore`` otherwise; only exploring decisions get bid / budget jitter. ``emergency``
  when the campaign is in emergency mode (conservative arm, no jitter); ``blocked`` when a
  guardrail refused to bid (``bid_amount = budget = 0``). ``deterministic=True`` always plays
  the best posterior mean (mode ``exploit``).
* **Confidence** (the original ``explore_vs_exploit`` confidence, redefined): the posterior
  probability that the played arm is the best arm, P(argmax = arm), computed exactly.
* **Propensity**: the probability with which the logging policy played that arm in this
  context — the Thompson P(argmax) for sampled decisions, 1.0 when the arm was fixed
  (``deterministic``, emergency, restricted-hours / ROI-floor conservative arm). This is the
  number off-policy evaluation needs.
* **policy_version**: reward events applied to the campaign so far.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.bandits.keyed import KeyedThompson
from processor.errors import ConfigError, StateError
from processor.policy.batches import (
    MODES,
    DecisionBatch,
    OutcomeBatch,
    RequestBatch,
    validate_outcomes,
    validate_requests,
)
from processor.policy.hashing import (
    STREAM_ARM,
    STREAM_BID_JITTER,
    STREAM_BUDGET_JITTER,
    STREAM_REWARD,
    request_uniform_streams,
    request_uniforms,
)
from processor.policy.safety import (
    G_EXHAUSTED,
    GUARDRAIL_NAMES,
    VIOLATION_NAMES,
    SafetyConstraints,
    SafetyState,
    arm_overrides,
    clamp_money,
)

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

REWARD_DEFINITIONS = ("conversions", "clicks", "profit", "roi")
SUCCESS_RULES = ("positive", "bernoulli")
M_EXPLORE, M_EXPLOIT, M_EMERGENCY, M_BLOCKED = range(4)

__all__ = [
    "GUARDRAIL_NAMES",
    "MODES",
    "VIOLATION_NAMES",
    "ArmSpec",
    "BidPolicy",
    "BiddingConfig",
    "BiddingState",
    "DecisionBatch",
    "ObserveResult",
    "OutcomeBatch",
    "RequestBatch",
]


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


class BiddingState:
    """Struct-of-arrays state of many campaigns: Thompson posteriors plus safety arrays.

    Row ``i`` of the :class:`KeyedThompson` and of the :class:`SafetyState` belong to the
    same campaign.
    """

    def __init__(self, config: BiddingConfig) -> None:
        self.config = config
        self.thompson = KeyedThompson(
            list(config.arm_names),
            prior_alpha=config.prior_alpha,
            prior_beta=config.prior_beta,
            discount=config.discount,
            discount_unit_ms=config.discount_unit_ms,
        )
        self.safety = SafetyState()

    def rows(self, campaign_ids: Any, create: bool = True) -> I64:
        """Rows of ``campaign_ids`` (new campaigns get fresh rows when ``create``)."""
        keys = campaign_ids.tolist() if isinstance(campaign_ids, np.ndarray) else campaign_ids
        rows = np.asarray(self.thompson.rows(keys, create=create), dtype=np.int64)
        self.safety.ensure_rows(self.thompson.n_keys)
        return rows

    def row(self, key: str) -> int:
        """Row of one campaign, created if new."""
        return int(self.rows(np.array([key], dtype=object))[0])

    def get_key_state(self, key: str) -> dict[str, Any]:
        """JSON-able state of one campaign (exact round trip through JSON)."""
        row = self.row(key)
        return {
            "thompson": self.thompson.get_key_state(key),
            "safety": self.safety.get_row_state(row),
        }

    def get_key_states(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """:meth:`get_key_state` of many campaigns (column-wise: a commit has many dirty keys)."""
        if not keys:
            return []
        rows = self.rows(list(keys))
        thompson = self.thompson.get_key_states(keys)
        safety = self.safety.get_row_states(rows)
        return [{"thompson": t, "safety": s} for t, s in zip(thompson, safety, strict=True)]

    def set_key_states(self, keys: Sequence[str], states: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`set_key_state` of many campaigns (a changelog partition at once).

        Raises:
            StateError: Malformed state.
        """
        for key, state in zip(keys, states, strict=True):
            if not isinstance(state, Mapping) or not {"thompson", "safety"} <= set(state):
                msg = f"bidding state for {key!r} needs 'thompson' and 'safety'"
                raise StateError(msg)
        self.thompson.set_key_states(keys, [dict(s["thompson"]) for s in states])
        rows = self.rows(list(keys))
        self.safety.set_row_states(rows, [s["safety"] for s in states])

    def set_key_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Restore one campaign from :meth:`get_key_state` output.

        Raises:
            StateError: Malformed state.
        """
        if not isinstance(state, Mapping) or not {"thompson", "safety"} <= set(state):
            msg = f"bidding state for {key!r} needs 'thompson' and 'safety'"
            raise StateError(msg)
        self.thompson.set_key_state(key, state["thompson"])
        self.safety.set_row_state(self.row(key), state["safety"])

    def reset_key(self, key: str) -> None:
        """Forget one campaign's posteriors and safety history."""
        self.thompson.reset_key(key)
        self.safety.reset_row(self.row(key))

    def set_emergency(self, key: str, on: bool) -> None:
        """Force a campaign into (``on``) or out of emergency mode (a control command)."""
        self.safety.set_emergency(self.row(key), on)
        logger.info("emergency mode %s for campaign %s by command", "set" if on else "cleared", key)

    def in_emergency(self, key: str) -> bool:
        """Whether one campaign is in emergency mode."""
        return bool(self.safety.emergency[self.row(key)])


@dataclass(frozen=True)
class ObserveResult:
    """Per-event results of :meth:`BidPolicy.observe`, in event order."""

    reward: F64
    success: B
    violations: I64
    """Bitmask over :data:`VIOLATION_NAMES` (0 = healthy)."""
    in_emergency: B
    degraded: B
    entered_emergency: list[str]
    left_emergency: list[str]

    @property
    def violation(self) -> B:
        """Events that were a safety violation."""
        return np.asarray(self.violations != 0, dtype=np.bool_)


class BidPolicy:
    """Thompson-sampling bid policy with safe exploration and guardrails.

    Args:
        config: Arms, jitter, priors, reward definition, seed.
        safety: Guardrail settings.
    """

    def __init__(self, config: BiddingConfig, safety: SafetyConstraints | None = None) -> None:
        self.config = config
        self.safety = safety if safety is not None else SafetyConstraints()

    def _arm_table(self, state: BiddingState) -> tuple[npt.NDArray[Any], F64, F64, int]:
        """Names, bid and budget multipliers per Thompson column, and the conservative column.

        Arms added at run time by a control command that the config does not name bid like
        a neutral arm (multipliers 1.0).
        """
        names = state.thompson.arm_names
        neutral = ArmSpec(1.0, 1.0)
        specs = [self.config.arms.get(a, neutral) for a in names]
        return (
            np.array(names, dtype=object),
            np.array([s.bid_multiplier for s in specs]),
            np.array([s.budget_multiplier for s in specs]),
            state.thompson.column(self.config.conservative_arm),
        )

    def new_state(self) -> BiddingState:
        """Empty state for this policy's config."""
        return BiddingState(self.config)

    def decide(
        self,
        requests: RequestBatch,
        state: BiddingState,
        deterministic: bool = False,
        decided_at_ms: int | None = None,
    ) -> DecisionBatch:
        """Decide a batch of requests (see the module docstring for the semantics).

        Args:
            requests: Validated requests (see :func:`validate_requests`).
            state: Campaign state; unknown campaigns get fresh rows.
            deterministic: Exploit only (best posterior mean, no jitter).
            decided_at_ms: ``decided_at`` of every decision (default: wall clock).

        Returns:
            One decision per request, in request order.
        """
        cfg, n = self.config, len(requests)
        rows = state.rows(requests.campaign_id)
        arm_names, bid_mult, budget_mult, cons = self._arm_table(state)
        ts = state.thompson
        ids = requests.request_id
        props = np.asarray(ts.propensities(rows), dtype=np.float64) if n else np.zeros((0, 1))
        greedy, _ = ts.select_deterministic(rows)
        greedy = np.asarray(greedy, dtype=np.int64)
        # the ids are hashed once for every stream a decision may use
        u_arm, u_bid, u_budget = request_uniform_streams(
            cfg.seed, ids, (STREAM_ARM, STREAM_BID_JITTER, STREAM_BUDGET_JITTER)
        )
        if deterministic:
            arm = greedy.copy()
            propensity = np.ones(n)
            mode = np.full(n, M_EXPLOIT, dtype=np.int64)
        else:
            arm_s, prop_s = ts.select(rows, u_arm)
            arm = np.asarray(arm_s, dtype=np.int64)
            propensity = np.asarray(prop_s, dtype=np.float64)
            mode = np.where(arm == greedy, M_EXPLOIT, M_EXPLORE)
        emergency = state.safety.emergency[rows]
        forced, blocked, mask = arm_overrides(
            self.safety,
            in_emergency=emergency,
            audience=requests.audience,
            event_time_ms=requests.event_time,
            utc_offset_minutes=requests.utc_offset_minutes,
            roi_below_floor=state.safety.roi_below_floor(self.safety, rows),
        )
        arm = np.where(forced, cons, arm)
        propensity = np.where(forced, 1.0, propensity)
        mode = np.where(forced, M_EXPLOIT, mode)
        mode = np.where(emergency, M_EMERGENCY, mode)
        exploring = mode == M_EXPLORE
        bid = requests.base_bid * bid_mult[arm]
        budget = requests.base_budget * budget_mult[arm]
        if exploring.any():
            bid_jitter = 1.0 + cfg.explore_bid_jitter * (2.0 * u_bid - 1.0)
            budget_jitter = 1.0 + cfg.explore_budget_jitter * (2.0 * u_budget - 1.0)
            bid = bid * np.where(exploring, bid_jitter, 1.0)
            budget = budget * np.where(exploring, budget_jitter, 1.0)
        bid, budget, exhausted, mask2 = clamp_money(
            self.safety,
            bid=bid,
            budget=budget,
            base_budget=requests.base_budget,
            daily_budget=requests.daily_budget,
            spent_today=requests.spent_today,
            target_cpa=requests.target_cpa,
        )
        # A refused request lists only the reason it was refused.
        mask2 = np.where(exhausted, G_EXHAUSTED, mask2)
        mask = mask | np.where(blocked, np.int64(0), mask2)
        blocked = blocked | exhausted
        mode = np.where(blocked, M_BLOCKED, mode)
        now = int(time.time() * 1000) if decided_at_ms is None else int(decided_at_ms)
        return DecisionBatch(
            request_id=ids,
            campaign_id=requests.campaign_id,
            arm=arm_names[arm],
            arm_index=arm,
            bid_amount=np.where(blocked, 0.0, bid),
            budget=np.where(blocked, 0.0, budget),
            propensity=propensity,
            confidence=props[np.arange(n), arm] if n else np.zeros(0),
            mode=mode.astype(np.int64),
            guardrails=mask.astype(np.int64),
            policy_version=np.asarray(ts.version[rows], dtype=np.int64),
            event_time=requests.event_time,
            decided_at=np.full(n, now, dtype=np.int64),
        )

    @staticmethod
    def validate_requests(requests: RequestBatch) -> npt.NDArray[Any]:
        """Same as the module-level :func:`validate_requests`."""
        return validate_requests(requests)

    @staticmethod
    def validate_outcomes(outcomes: OutcomeBatch, state: BiddingState) -> npt.NDArray[Any]:
        """Same as the module-level :func:`validate_outcomes`."""
        return validate_outcomes(outcomes, state)

    def rewards(self, outcomes: OutcomeBatch) -> tuple[F64, B]:
        """Reward and success per outcome (event ``success`` > event ``reward`` > definition)."""
        cfg = self.config
        spend, revenue = outcomes.spend, outcomes.revenue
        if cfg.reward == "conversions":
            defined = outcomes.conversions.astype(np.float64)
        elif cfg.reward == "clicks":
            defined = outcomes.clicks.astype(np.float64)
        elif cfg.reward == "profit":
            defined = revenue - spend
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                defined = np.where(
                    spend > 0, (revenue - spend) / np.where(spend > 0, spend, 1), 0.0
                )
        reward = np.where(np.isnan(outcomes.reward), defined, outcomes.reward)
        if cfg.success_rule == "positive":
            rule = reward > 0
        else:
            u = request_uniforms(cfg.seed, outcomes.request_id, STREAM_REWARD)
            rule = u < np.clip(reward, 0.0, 1.0)
        success = np.where(np.isnan(outcomes.success), rule, outcomes.success > 0.5)
        return np.asarray(reward, dtype=np.float64), np.asarray(success, dtype=np.bool_)

    def observe(
        self, outcomes: OutcomeBatch, state: BiddingState, weight: F64 | None = None
    ) -> ObserveResult:
        """Apply a batch of validated outcomes in event order.

        Thompson update (order-exact batch), outcome-side safety checks, consecutive
        violation counters, emergency enter / leave and the performance monitor.

        Args:
            outcomes: Outcomes that passed :func:`validate_outcomes`.
            state: Campaign state; unknown campaigns get fresh rows.
            weight: Per outcome, +1.0 applies it (the default) and −1.0 retracts an outcome
                applied before with +1.0 (the reward join's restatements). A retraction must
                carry the retracted outcome's explicit ``success`` and ``reward`` (what was
                applied), so nothing is drawn again.

        Returns:
            Per-event reward, success and safety flags, and the campaigns whose emergency
            mode changed.
        """
        rows = state.rows(outcomes.campaign_id)
        reward, success = self.rewards(outcomes)
        arms = self.arm_indices(outcomes.arm, state)
        if len(outcomes):
            state.thompson.update(
                rows,
                arms,
                success.astype(np.float64),
                event_time_ms=outcomes.event_time,
                weight=weight,
            )
        # JOIN-CONTRACT: the EWMA safety monitor cannot take an outcome back, so retractions
        # (weight < 0) skip it and a restated outcome is monitored as one more observation.
        # Issue 13's additive guardrail statistics replace this: retract them with weight −1.
        on: Any = slice(None) if weight is None else np.flatnonzero(np.asarray(weight) > 0)
        checks = state.safety.observe(
            self.safety,
            rows[on],
            reward[on],
            outcomes.spend[on],
            outcomes.revenue[on],
            outcomes.conversions[on].astype(np.float64),
            outcomes.budget[on],
            outcomes.target_cpa[on],
        )
        keys = state.thompson.keys
        violations, in_emergency, degraded = checks.violations, checks.in_emergency, checks.degraded
        if weight is not None:
            violations = np.zeros(len(outcomes), dtype=np.int64)
            violations[on] = checks.violations
            in_emergency = np.asarray(state.safety.emergency[rows], dtype=np.bool_)
            in_emergency[on] = checks.in_emergency
            degraded = np.zeros(len(outcomes), dtype=np.bool_)
            degraded[on] = checks.degraded
        return ObserveResult(
            reward=reward,
            success=success,
            violations=violations,
            in_emergency=in_emergency,
            degraded=degraded,
            entered_emergency=[str(keys[int(r)]) for r in checks.entered_rows],
            left_emergency=[str(keys[int(r)]) for r in checks.left_rows],
        )

    @staticmethod
    def arm_indices(arms: npt.NDArray[Any], state: BiddingState) -> I64:
        """Thompson column per arm name (-1 for unknown names)."""
        uniq, inv = np.unique(np.asarray(arms, dtype=np.str_), return_inverse=True)
        col = {a: i for i, a in enumerate(state.thompson.arm_names)}
        lut = np.array([col.get(str(a), -1) for a in uniq.tolist()], dtype=np.int64)
        return lut[inv] if uniq.size else np.zeros(0, dtype=np.int64)
