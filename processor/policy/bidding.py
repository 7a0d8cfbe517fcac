"""Bidding policy: Thompson-sampled bid strategies under evidence-based guardrails, on batches.

``BidPolicy.decide`` turns a batch of bid requests (columns) into a batch of decisions with a
handful of numpy operations; ``BidPolicy.observe`` applies a batch of outcomes.

Semantics (documented contract):

* **Objective.** Binary rewards (``conversions``, ``clicks``, an explicit ``success``) feed a
  Beta-Bernoulli posterior per arm; value rewards (``profit``, ``roi``) feed a
  Normal-Inverse-Gamma posterior of the mean reward per arm, so an arm that wins more auctions
  at a loss loses to one that wins fewer at a profit. ``BiddingConfig.objective`` says which
  decides (``auto``: by the reward definition); both are kept up to date.
* **Randomness.** Every random number of a decision comes from
  :func:`~processor.policy.hashing.request_uniforms` on ``(seed, stream, request_id)``:
  the same state and request always give the same decision, however requests are batched.
* **Mode.** ``exploit`` when the Thompson draw picked the arm with the best posterior mean,
  ``explore`` otherwise; only exploring decisions get bid / budget jitter. ``emergency``
  when the campaign is in emergency mode (conservative arm, no jitter); ``blocked`` when a
  guardrail refused to bid (``bid_amount = budget = 0``), pacing included. ``deterministic=True``
  always plays the best posterior mean (mode ``exploit``).
* **Confidence**: the posterior probability that the played arm is the best arm, P(argmax = arm),
  computed exactly.
* **Propensity**: the probability with which the logging policy played that arm in this
  context — the Thompson P(argmax) for sampled decisions, 1.0 when the arm was fixed
  (``deterministic``, emergency, restricted-hours conservative arm). This is the number
  off-policy evaluation needs.
* **policy_version**: reward events (retractions included) applied to the campaign so far.
* **Signed outcomes.** ``observe(..., weight=-1)`` retracts an outcome applied before with the
  same field values and ``event_time``: every statistic is additive and decays by event time,
  so the retraction is exact (see :mod:`processor.policy.contribution`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.bandits.base import BanditInputError, inverse_cdf_select
from processor.bandits.keyed import _grouped_running_max
from processor.policy.batches import (
    MODES,
    DecisionBatch,
    OutcomeBatch,
    RequestBatch,
    defined_reward,
    validate_outcomes,
    validate_requests,
)
from processor.policy.bidding_config import REWARD_DEFINITIONS, ArmSpec, BiddingConfig
from processor.policy.contribution import Contribution
from processor.policy.hashing import (
    STREAM_ARM,
    STREAM_BID_JITTER,
    STREAM_BUDGET_JITTER,
    STREAM_PACING,
    STREAM_REWARD,
    request_uniform_streams,
    request_uniforms,
)
from processor.policy.pacing import participation
from processor.policy.safety import (
    G_EXHAUSTED,
    G_PACING,
    GUARDRAIL_NAMES,
    VIOLATION_NAMES,
    SafetyConstraints,
    arm_overrides,
    clamp_money,
)
from processor.policy.state import BiddingState

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

M_EXPLORE, M_EXPLOIT, M_EMERGENCY, M_BLOCKED = range(4)

__all__ = [
    "GUARDRAIL_NAMES",
    "MODES",
    "REWARD_DEFINITIONS",
    "VIOLATION_NAMES",
    "ArmSpec",
    "BidPolicy",
    "BiddingConfig",
    "BiddingState",
    "Contribution",
    "DecisionBatch",
    "ObserveResult",
    "OutcomeBatch",
    "RequestBatch",
    "validate_outcomes",
    "validate_requests",
]


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


ArmTable = tuple[npt.NDArray[Any], F64, F64, int]
"""Arm names, bid and budget multipliers per state column, and the conservative column."""


@dataclass(frozen=True)
class LookedUp:
    """What deciding a batch reads from the campaigns' state, one row per request."""

    arms: ArmTable
    props: F64
    greedy: I64
    emergency: B
    evidence: I64
    predicted_cvr: F64
    version: I64

    def same_arms(self, other: LookedUp) -> bool:
        """True when both were looked up in states with the same arm columns."""
        a, b = self.arms, other.arms
        return (
            a[3] == b[3]
            and a[0].tolist() == b[0].tolist()
            and bool((a[1] == b[1]).all() and (a[2] == b[2]).all())
        )

    @staticmethod
    def concat(parts: list[LookedUp]) -> LookedUp:
        """One :class:`LookedUp` of several (same arm table: see :meth:`same_arms`)."""
        return LookedUp(
            arms=parts[0].arms,
            props=np.concatenate([p.props for p in parts]),
            greedy=np.concatenate([p.greedy for p in parts]),
            emergency=np.concatenate([p.emergency for p in parts]),
            evidence=np.concatenate([p.evidence for p in parts]),
            predicted_cvr=np.concatenate([p.predicted_cvr for p in parts]),
            version=np.concatenate([p.version for p in parts]),
        )


class BidPolicy:
    """Thompson-sampling bid policy with safe exploration, guardrails on evidence and pacing.

    Args:
        config: Arms, jitter, priors, reward definition, objective, seed.
        safety: Guardrail and pacing settings.
    """

    def __init__(self, config: BiddingConfig, safety: SafetyConstraints | None = None) -> None:
        self.config = config
        self.safety = safety if safety is not None else SafetyConstraints()
        self._arm_tables: dict[tuple[str, ...], ArmTable] = {}

    def _arm_table(self, state: BiddingState) -> ArmTable:
        """Names, bid and budget multipliers per column, and the conservative column.

        Arms added at run time by a control command that the config does not name bid like
        a neutral arm (multipliers 1.0).
        """
        names = tuple(state.thompson.arm_names)
        table = self._arm_tables.get(names)
        if table is None:  # once per set of arms (they change only by control commands)
            neutral = ArmSpec(1.0, 1.0)
            specs = [self.config.arms.get(a, neutral) for a in names]
            table = (
                np.array(names, dtype=object),
                np.array([s.bid_multiplier for s in specs]),
                np.array([s.budget_multiplier for s in specs]),
                state.thompson.column(self.config.conservative_arm),
            )
            for column in table[:3]:
                column.flags.writeable = False  # shared by every look-up
            if len(self._arm_tables) > 64:
                self._arm_tables.clear()
            self._arm_tables[names] = table
        return table

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
        looked_up = self.look_up(requests, state)
        return self.decide_looked_up(requests, looked_up, deterministic, decided_at_ms)

    def look_up(self, requests: RequestBatch, state: BiddingState) -> LookedUp:
        """What a decision needs from the campaigns' state, per request (the only part of
        :meth:`decide` that reads state: requests of several partitions, each looked up in its
        own state, are then decided in one elementwise pass)."""
        rows = state.rows(requests.campaign_id)
        posterior = state.value if self.config.value_objective else state.thompson
        greedy, _ = posterior.select_deterministic(rows)
        safety = state.safety
        with np.errstate(divide="ignore", invalid="ignore"):
            prior_cvr = requests.base_bid / requests.target_cpa
        return LookedUp(
            arms=self._arm_table(state),
            props=np.asarray(posterior.propensities(rows), dtype=np.float64),
            greedy=np.asarray(greedy, dtype=np.int64),
            emergency=np.asarray(safety.emergency[rows], dtype=np.bool_),
            evidence=safety.arrays["evidence"][rows],
            predicted_cvr=safety.predicted_cvr(self.safety, rows, prior_cvr),
            version=np.asarray(state.thompson.version[rows], dtype=np.int64),
        )

    def decide_looked_up(
        self,
        requests: RequestBatch,
        looked_up: LookedUp,
        deterministic: bool = False,
        decided_at_ms: int | None = None,
    ) -> DecisionBatch:
        """:meth:`decide` once the state is looked up (elementwise over the batch)."""
        cfg, n = self.config, len(requests)
        arm_names, bid_mult, budget_mult, cons = looked_up.arms
        props, greedy = looked_up.props, looked_up.greedy
        ids = requests.request_id
        # the ids are hashed once for every stream a decision may use
        u_arm, u_bid, u_budget, u_pace = request_uniform_streams(
            cfg.seed, ids, (STREAM_ARM, STREAM_BID_JITTER, STREAM_BUDGET_JITTER, STREAM_PACING)
        )
        idx = np.arange(n)
        if deterministic:
            arm = greedy.copy()
            propensity = np.ones(n)
            mode = np.full(n, M_EXPLOIT, dtype=np.int64)
        else:
            arm = inverse_cdf_select(props, u_arm) if n else np.zeros(0, dtype=np.int64)
            propensity = props[idx, arm]
            mode = np.where(arm == greedy, M_EXPLOIT, M_EXPLORE)
        emergency = looked_up.emergency
        forced, refused, arm_mask = arm_overrides(
            self.safety,
            in_emergency=emergency,
            evidence=looked_up.evidence,
            audience=requests.audience,
            event_time_ms=requests.event_time,
            utc_offset_minutes=requests.utc_offset_minutes,
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
        bid, budget, exhausted, money_mask = clamp_money(
            self.safety,
            bid=bid,
            budget=budget,
            base_budget=requests.base_budget,
            daily_budget=requests.daily_budget,
            spent_today=requests.spent_today,
            target_cpa=requests.target_cpa,
            predicted_cvr=looked_up.predicted_cvr,
        )
        rate = participation(
            self.safety,
            daily_budget=requests.daily_budget,
            spent_today=requests.spent_today,
            event_time_ms=requests.event_time,
            utc_offset_minutes=requests.utc_offset_minutes,
        )
        paced = ~refused & ~exhausted & (u_pace >= rate)
        # A refused request lists only the reason it was refused.
        money_mask = np.where(exhausted, G_EXHAUSTED, money_mask)
        money_mask = np.where(paced, G_PACING, money_mask)
        mask = arm_mask | np.where(refused, np.int64(0), money_mask)
        blocked = refused | exhausted | paced
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
            confidence=props[idx, arm] if n else np.zeros(0),
            mode=mode.astype(np.int64),
            guardrails=mask.astype(np.int64),
            policy_version=looked_up.version,
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
        """Reward and success per outcome (event ``success`` > event ``reward`` > definition).

        The value posterior learns the reward; the Beta posterior learns the success.
        """
        cfg = self.config
        defined = defined_reward(cfg.reward, outcomes)
        reward = np.where(np.isnan(outcomes.reward), defined, outcomes.reward)
        if cfg.success_rule == "positive":
            rule = reward > 0
        else:
            u = request_uniforms(cfg.seed, outcomes.request_id, STREAM_REWARD)
            rule = u < np.clip(reward, 0.0, 1.0)
        success = np.where(np.isnan(outcomes.success), rule, outcomes.success > 0.5)
        return np.asarray(reward, dtype=np.float64), np.asarray(success, dtype=np.bool_)

    def contribution(self, outcomes: OutcomeBatch) -> Contribution:
        """The numbers :meth:`observe` adds per outcome (:mod:`processor.policy.contribution`)."""
        reward, success = self.rewards(outcomes)
        return Contribution(
            reward=reward,
            success=success,
            won=np.asarray(outcomes.won, dtype=np.bool_),
            clicks=np.asarray(outcomes.clicks, dtype=np.int64),
            conversions=np.asarray(outcomes.conversions, dtype=np.int64),
            spend=np.asarray(outcomes.spend, dtype=np.float64),
            revenue=np.asarray(outcomes.revenue, dtype=np.float64),
        )

    def observe(
        self, outcomes: OutcomeBatch, state: BiddingState, weight: F64 | None = None
    ) -> ObserveResult:
        """Apply a batch of validated outcomes.

        Both arm posteriors, the guardrails' evidence and the monitor take each outcome's
        numbers with its ``weight``; emergency mode is then re-evaluated on evidence.

        Args:
            outcomes: Outcomes that passed :func:`validate_outcomes` (or a
                :meth:`Contribution.outcomes` batch).
            state: Campaign state; unknown campaigns get fresh rows.
            weight: Per outcome, +1.0 (apply; the default) or −1.0 (retract an outcome applied
                earlier with the same field values and ``event_time``).

        Returns:
            Per-event reward, success and safety flags, and the campaigns whose emergency
            mode changed.

        Raises:
            BanditInputError: ``weight`` is not one finite number per outcome; nothing changes.
        """
        n = len(outcomes)
        w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)):
            msg = "weight must be one finite number per outcome"
            raise BanditInputError(msg)
        rows = state.rows(outcomes.campaign_id)
        reward, success = self.rewards(outcomes)
        arms = self.arm_indices(outcomes.arm, state)
        t = np.asarray(outcomes.event_time, dtype=np.int64)
        if n:
            state.value.update(rows, arms, reward, event_time_ms=t, weight=w)
            ts = state.thompson
            last = ts.last_event_ms[rows]
            t_beta = np.where(w > 0, t, np.minimum(t, last))
            w_beta = self._beta_weights(state, rows, t_beta, w, last)
            ts.update(rows, arms, success.astype(np.float64), event_time_ms=t_beta, weight=w_beta)
        checks = state.safety.observe(
            self.safety,
            rows,
            reward=reward,
            spend=outcomes.spend,
            revenue=outcomes.revenue,
            conversions=outcomes.conversions.astype(np.float64),
            clicks=outcomes.clicks.astype(np.float64),
            won=outcomes.won.astype(np.float64),
            budget=outcomes.budget,
            target_cpa=outcomes.target_cpa,
            event_time_ms=t,
            weight=w,
        )
        keys = state.thompson.keys
        return ObserveResult(
            reward=reward,
            success=success,
            violations=checks.violations,
            in_emergency=checks.in_emergency,
            degraded=checks.degraded,
            entered_emergency=[str(keys[int(r)]) for r in checks.entered_rows],
            left_emergency=[str(keys[int(r)]) for r in checks.left_rows],
        )

    def _beta_weights(self, state: BiddingState, rows: I64, t: I64, w: F64, last: I64) -> F64:
        """Weights that give the Beta counts the value posterior's decay rule.

        :class:`KeyedThompson` counts a late event in full at the current clock; the policy
        decays it by its lateness ``γ^((clock − t)/unit)`` first, so every statistic is
        ``Σ w x γ^((C − t)/unit)`` and a retraction with the same ``t`` is exact.
        """
        ts = state.thompson
        if ts.discount >= 1.0:
            return w
        clock = np.maximum(_grouped_running_max(rows, np.where(w > 0, t, last)), last)
        late = (clock - np.minimum(t, clock)).astype(np.float64)
        return np.asarray(w * np.exp(np.log(ts.discount) / ts.discount_unit_ms * late))

    @staticmethod
    def arm_indices(arms: npt.NDArray[Any], state: BiddingState) -> I64:
        """Thompson column per arm name (-1 for unknown names)."""
        col = {a: i for i, a in enumerate(state.thompson.arm_names)}
        names = arms.tolist() if isinstance(arms, np.ndarray) else list(arms)
        return np.fromiter(map(col.get, names, repeat(-1)), dtype=np.int64, count=len(names))
