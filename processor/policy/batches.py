"""Columnar batches of the bidding policy: requests, outcomes and decisions, and their checks.

Numbers that are optional in the schemas are NaN when missing; strings are numpy object arrays.
The stage builds these from decoded records (``from_records``) or from columnar-decoded batches
(``from_columns``); ``validate_*`` return one reason (or ``None``) per row so bad rows can be
dead-lettered before anything touches state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from processor.policy.safety import GUARDRAIL_NAMES

if TYPE_CHECKING:
    from processor.policy.state import BiddingState

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

MODES = ("explore", "exploit", "emergency", "blocked")
#: Largest money amount or reward one outcome may carry: beyond it a sum of squares overflows.
MAX_AMOUNT = 1e15
#: Largest click or conversion count of one outcome (a contribution stores them as u2).
MAX_COUNT = 65_535


def _col_str(records: Sequence[Mapping[str, Any]], name: str) -> npt.NDArray[Any]:
    return np.array([str(r.get(name) or "") for r in records] or [], dtype=object)


def _col_float(records: Sequence[Mapping[str, Any]], name: str) -> F64:
    vals = [r.get(name) for r in records]
    return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)


def _col_int(records: Sequence[Mapping[str, Any]], name: str, default: int = 0) -> I64:
    vals = [r.get(name) for r in records]
    return np.array([default if v is None else int(v) for v in vals], dtype=np.int64)


def _cols_str(columns: Any, name: str, rows: I64) -> npt.NDArray[Any]:
    return np.asarray(columns.data[name][rows], dtype=object)


def _cols_float(columns: Any, name: str, rows: I64) -> F64:
    values = np.asarray(columns.data[name][rows], dtype=np.float64)
    null = columns.null.get(name)
    return np.where(null[rows], np.nan, values) if null is not None else values


def _cols_int(columns: Any, name: str, rows: I64) -> I64:
    return np.asarray(columns.data[name][rows], dtype=np.int64)


@dataclass(frozen=True)
class RequestBatch:
    """A batch of BidRequest records as numpy columns (NaN = missing ``target_cpa``).

    ``context`` (the policy never reads it) is a column of dicts: an object array from records, a
    lazily decoded :class:`~processor.codec.columnar.MapColumn` from columns; both index like an
    array and give the dicts with ``tolist()``.
    """

    request_id: npt.NDArray[Any]
    campaign_id: npt.NDArray[Any]
    audience: npt.NDArray[Any]
    event_time: I64
    base_bid: F64
    base_budget: F64
    daily_budget: F64
    spent_today: F64
    target_cpa: F64
    utc_offset_minutes: I64
    context: Any

    def __len__(self) -> int:
        return int(self.request_id.shape[0])

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> RequestBatch:
        """Columns from BidRequest dicts (DESIGN §2 shapes)."""
        ctx = np.empty(len(records), dtype=object)
        ctx[:] = [dict(r.get("context") or {}) for r in records]
        return cls(
            request_id=_col_str(records, "request_id"),
            campaign_id=_col_str(records, "campaign_id"),
            audience=_col_str(records, "audience"),
            event_time=_col_int(records, "event_time"),
            base_bid=_col_float(records, "base_bid"),
            base_budget=_col_float(records, "base_budget"),
            daily_budget=_col_float(records, "daily_budget"),
            spent_today=_col_float(records, "spent_today"),
            target_cpa=_col_float(records, "target_cpa"),
            utc_offset_minutes=_col_int(records, "utc_offset_minutes"),
            context=ctx,
        )

    @classmethod
    def from_columns(cls, columns: Any, rows: I64) -> RequestBatch:
        """Columns from a columnar-decoded BidRequest batch (``processor.codec.columnar.Columns``).

        Same values as :meth:`from_records` on the same rows, without building a dict per record.
        """
        return cls(
            request_id=_cols_str(columns, "request_id", rows),
            campaign_id=_cols_str(columns, "campaign_id", rows),
            audience=_cols_str(columns, "audience", rows),
            event_time=_cols_int(columns, "event_time", rows),
            base_bid=_cols_float(columns, "base_bid", rows),
            base_budget=_cols_float(columns, "base_budget", rows),
            daily_budget=_cols_float(columns, "daily_budget", rows),
            spent_today=_cols_float(columns, "spent_today", rows),
            target_cpa=_cols_float(columns, "target_cpa", rows),
            utc_offset_minutes=_cols_int(columns, "utc_offset_minutes", rows),
            context=columns.data["context"][rows],
        )

    def take(self, index: Any) -> RequestBatch:
        """Sub-batch of the rows selected by ``index`` (slice, mask or indices)."""
        return RequestBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass(frozen=True)
class OutcomeBatch:
    """A batch of BidOutcome records as numpy columns.

    ``reward``, ``success`` (1.0 / 0.0), ``budget`` and ``target_cpa`` are NaN when missing;
    ``policy_version`` is -1 when unknown.
    """

    request_id: npt.NDArray[Any]
    campaign_id: npt.NDArray[Any]
    arm: npt.NDArray[Any]
    event_time: I64
    won: B
    clicks: I64
    conversions: I64
    spend: F64
    revenue: F64
    reward: F64
    success: F64
    propensity: F64
    policy_version: I64
    budget: F64
    target_cpa: F64

    def __len__(self) -> int:
        return int(self.request_id.shape[0])

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> OutcomeBatch:
        """Columns from BidOutcome dicts (DESIGN §2 shapes)."""
        return cls(
            request_id=_col_str(records, "request_id"),
            campaign_id=_col_str(records, "campaign_id"),
            arm=_col_str(records, "arm"),
            event_time=_col_int(records, "event_time"),
            won=np.array([bool(r.get("won")) for r in records], dtype=np.bool_),
            clicks=_col_int(records, "clicks"),
            conversions=_col_int(records, "conversions"),
            spend=_col_float(records, "spend"),
            revenue=_col_float(records, "revenue"),
            reward=_col_float(records, "reward"),
            success=_col_float(records, "success"),
            propensity=_col_float(records, "propensity"),
            policy_version=_col_int(records, "policy_version", -1),
            budget=_col_float(records, "budget"),
            target_cpa=_col_float(records, "target_cpa"),
        )

    @classmethod
    def from_columns(cls, columns: Any, rows: I64) -> OutcomeBatch:
        """Columns from a columnar-decoded BidOutcome batch (``processor.codec.columnar.Columns``).

        Same values as :meth:`from_records` on the same rows, without building a dict per record.
        """
        success = np.asarray(columns.data["success"][rows], dtype=np.float64)
        return cls(
            request_id=_cols_str(columns, "request_id", rows),
            campaign_id=_cols_str(columns, "campaign_id", rows),
            arm=_cols_str(columns, "arm", rows),
            event_time=_cols_int(columns, "event_time", rows),
            won=np.asarray(columns.data["won"][rows], dtype=np.bool_),
            clicks=_cols_int(columns, "clicks", rows),
            conversions=_cols_int(columns, "conversions", rows),
            spend=_cols_float(columns, "spend", rows),
            revenue=_cols_float(columns, "revenue", rows),
            reward=_cols_float(columns, "reward", rows),
            success=np.where(columns.null["success"][rows], np.nan, success),
            propensity=_cols_float(columns, "propensity", rows),
            policy_version=_cols_int(columns, "policy_version", rows),
            budget=_cols_float(columns, "budget", rows),
            target_cpa=_cols_float(columns, "target_cpa", rows),
        )

    def take(self, index: Any) -> OutcomeBatch:
        """Sub-batch of the rows selected by ``index``."""
        return OutcomeBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass(frozen=True)
class DecisionBatch:
    """A batch of decisions as numpy columns.

    ``mode`` holds indices into :data:`MODES`; ``guardrails`` is a bitmask over
    :data:`GUARDRAIL_NAMES` (bit i = name i).
    """

    request_id: npt.NDArray[Any]
    campaign_id: npt.NDArray[Any]
    arm: npt.NDArray[Any]
    arm_index: I64
    bid_amount: F64
    budget: F64
    propensity: F64
    confidence: F64
    mode: I64
    guardrails: I64
    policy_version: I64
    event_time: I64
    decided_at: I64

    def __len__(self) -> int:
        return int(self.request_id.shape[0])

    def take(self, index: Any) -> DecisionBatch:
        """Sub-batch of the rows selected by ``index``."""
        return DecisionBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def mode_names(self) -> npt.NDArray[Any]:
        """Mode names per decision."""
        return np.array(MODES, dtype=object)[self.mode]

    def has_guardrail(self, name: str) -> B:
        """Decisions whose guardrail list contains ``name``."""
        bit = np.int64(1 << GUARDRAIL_NAMES.index(name))
        return np.asarray((self.guardrails & bit) != 0, dtype=np.bool_)

    def to_records(self) -> list[dict[str, Any]]:
        """BidDecision dicts (DESIGN §2 shape), guardrails as a list of names."""
        names = [
            [g for i, g in enumerate(GUARDRAIL_NAMES) if m >> i & 1]
            for m in self.guardrails.tolist()
        ]
        cols = zip(
            self.request_id.tolist(),
            self.campaign_id.tolist(),
            self.arm.tolist(),
            self.bid_amount.tolist(),
            self.budget.tolist(),
            self.propensity.tolist(),
            self.confidence.tolist(),
            self.mode_names().tolist(),
            names,
            self.policy_version.tolist(),
            self.event_time.tolist(),
            self.decided_at.tolist(),
            strict=True,
        )
        keys = (
            "request_id",
            "campaign_id",
            "arm",
            "bid_amount",
            "budget",
            "propensity",
            "confidence",
            "mode",
            "guardrails",
            "policy_version",
            "event_time",
            "decided_at",
        )
        return [dict(zip(keys, c, strict=True)) for c in cols]


def defined_reward(definition: str, outcomes: OutcomeBatch) -> F64:
    """The reward of each outcome by ``bidding.reward`` (an outcome's own reward overrides it)."""
    spend, revenue = outcomes.spend, outcomes.revenue
    if definition == "conversions":
        return np.asarray(outcomes.conversions, dtype=np.float64)
    if definition == "clicks":
        return np.asarray(outcomes.clicks, dtype=np.float64)
    if definition == "profit":
        return np.asarray(revenue - spend, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        roi = np.where(spend > 0, (revenue - spend) / np.where(spend > 0, spend, 1), 0.0)
    return np.asarray(roi, dtype=np.float64)


def _bad_money(x: F64, allow_nan: bool = False) -> B:
    bad = ~np.isfinite(x) | (x < 0)
    return np.asarray(bad & ~np.isnan(x) if allow_nan else bad, dtype=np.bool_)


def _empty(ids: npt.NDArray[Any]) -> B:
    """True where the id (a str column, object or unicode dtype) is the empty string."""
    return np.asarray(ids == "", dtype=np.bool_).reshape(len(ids))


CONTROL_CHARACTERS = ("\n", "\r", "\t", "\x1b")
"""Characters an id must not hold (they break log lines and downstream text formats)."""


def _has_control(ids: npt.NDArray[Any]) -> B:
    """True where the id (a str column) holds one of :data:`CONTROL_CHARACTERS`.

    The common batch has none: one scan of the column joined into one string says so, without
    converting the column to a numpy string array (~0.35 ms for 5,000 ids) and searching it per
    character.
    """
    column = np.asarray(ids, dtype=object)
    joined = "".join(column.tolist())
    out = np.zeros(column.shape[0], dtype=np.bool_)
    if any(cc in joined for cc in CONTROL_CHARACTERS):
        text = np.asarray(column, dtype=np.str_)
        for cc in CONTROL_CHARACTERS:
            out |= np.strings.find(text, cc) >= 0
    return out


def _reasons(n: int, checks: list[tuple[B, str]]) -> npt.NDArray[Any]:
    out = np.full(n, None, dtype=object)
    for bad, reason in reversed(checks):  # the first failing check names the row
        out[bad] = reason
    return out


def validate_requests(requests: RequestBatch) -> npt.NDArray[Any]:
    """Reason per request it must not be decided (dead-letter), or ``None``.

    Checks empty ids, ids with control characters, NaN / inf / negative money and a
    non-positive ``target_cpa``.
    """
    n = len(requests)
    ids, cps = requests.request_id, requests.campaign_id
    ctrl = _has_control(ids) | _has_control(cps)
    tgt = requests.target_cpa
    return _reasons(
        n,
        [
            (_empty(ids), "empty request_id"),
            (_empty(cps), "empty campaign_id"),
            (ctrl, "control character in an id"),
            (_bad_money(requests.base_bid), "base_bid is NaN, infinite or negative"),
            (_bad_money(requests.base_budget), "base_budget is NaN, infinite or negative"),
            (_bad_money(requests.daily_budget), "daily_budget is NaN, infinite or negative"),
            (_bad_money(requests.spent_today), "spent_today is NaN, infinite or negative"),
            (~np.isnan(tgt) & ~(np.isfinite(tgt) & (tgt > 0)), "target_cpa must be > 0"),
        ],
    )


def validate_outcomes(outcomes: OutcomeBatch, state: BiddingState) -> npt.NDArray[Any]:
    """Reason per outcome it must not be applied (dead-letter), or ``None``.

    Checks empty ids, arms that are not active for the campaign, propensity outside
    (0, 1], NaN / inf / negative spend, revenue, counts and budget, a non-finite reward,
    amounts and rewards beyond :data:`MAX_AMOUNT` (the reward by the configured definition
    included: ROI on a spend of 1e-300 is), counts beyond :data:`MAX_COUNT`, and a success
    flag other than 0 / 1. Does not create state rows.
    """
    n = len(outcomes)
    ts = state.thompson
    names = list(ts.arm_names)
    lut = {a: i for i, a in enumerate(names)}
    arm_idx = np.fromiter(map(lut.get, outcomes.arm.tolist(), repeat(-1)), np.int64, count=n)
    known = ts.rows(outcomes.campaign_id.tolist(), create=False)
    has_row = known >= 0
    rows = np.where(has_row, known, 0)
    # A campaign without a row would get the default arms; KeyedThompson does not expose its
    # run-time default set, so the configured arms stand in for it (an arm unknown to the
    # table is dead-lettered as unknown before this check names it).
    configured = np.array([a in state.config.arms for a in names] + [False], dtype=np.bool_)
    configured = configured[arm_idx]
    active = has_row | configured
    sel = has_row & (arm_idx >= 0)
    if sel.any():
        active[sel] = np.asarray(ts.active)[rows[sel], arm_idx[sel]]
    p = outcomes.propensity
    rew, suc = outcomes.reward, outcomes.success
    with np.errstate(invalid="ignore"):
        effective = np.where(np.isnan(rew), defined_reward(state.config.reward, outcomes), rew)
        huge = (np.abs(effective) > MAX_AMOUNT) & ~np.isinf(rew)
        big_money = (outcomes.spend > MAX_AMOUNT) | (outcomes.revenue > MAX_AMOUNT)
    big_count = (outcomes.clicks > MAX_COUNT) | (outcomes.conversions > MAX_COUNT)
    return _reasons(
        n,
        [
            (_empty(outcomes.request_id), "empty request_id"),
            (_empty(outcomes.campaign_id), "empty campaign_id"),
            (arm_idx < 0, "unknown arm"),
            (~active, "arm not active for this campaign"),
            (~(np.isfinite(p) & (p > 0) & (p <= 1)), "propensity outside (0, 1]"),
            (_bad_money(outcomes.spend), "spend is NaN, infinite or negative"),
            (_bad_money(outcomes.revenue), "revenue is NaN, infinite or negative"),
            ((outcomes.clicks < 0) | (outcomes.conversions < 0), "negative clicks or conversions"),
            (_bad_money(outcomes.budget, allow_nan=True), "budget is infinite or negative"),
            (np.isinf(rew), "reward is infinite"),
            (big_money, f"spend or revenue above {MAX_AMOUNT:g}"),
            (huge, f"reward beyond ±{MAX_AMOUNT:g}"),
            (big_count, f"more than {MAX_COUNT} clicks or conversions in one outcome"),
            (~np.isnan(suc) & (suc != 0) & (suc != 1), "success must be true or false"),
        ],
    )
