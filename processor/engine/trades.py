"""Trade outcomes → ensemble updates, record by record: the reference of the engine's path.

The stage runs :func:`processor.engine.trades_columnar.process_trade_columns` for both decodes;
this per-record version states the rules plainly, and tests pin the columnar path to it (same
state, same dead letters in the same order).

Each trade goes to the learner of its ensemble (in ``family_horizon`` mode: of its ensemble and
horizon). A bandit-feedback arm or a reported model must belong to that learner: in
``family_horizon`` mode a ``family:horizon`` arm of another horizon than the trade's is a dead
letter, as is an unknown or removed arm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from processor.bandits.rewards import trade_reward_bps
from processor.engine.ensembles import EnsembleTable, arm_for, horizon_of

BANDIT, FULL, CONTRIB = 0, 1, 2


def _column(records: Sequence[dict[str, Any]], name: str) -> np.ndarray:
    return np.fromiter((r[name] for r in records), dtype=np.float64, count=len(records))


def process_trades(
    table: EnsembleTable, records: Sequence[dict[str, Any]]
) -> tuple[dict[int, tuple[str, str]], dict[str, tuple[str, ...]]]:
    """Validate and apply a batch of TradeOutcome records in order.

    Returns:
        ``(rejected, changed)``: ``{record index: (error class, reason)}`` for records that were
        not applied (state untouched by them), and ``{ensemble id: horizons}`` of the ensembles
        whose state changed with the horizons whose learner did (``("",)`` when one learner
        serves every horizon).
    """
    n = len(records)
    cfg = table.config
    rejected: dict[int, tuple[str, str]] = {}
    side = _column(records, "side")
    entry = _column(records, "entry_price")
    exit_ = _column(records, "exit_price")
    qty = _column(records, "quantity")
    fees = _column(records, "fees")
    slip = _column(records, "slippage")
    finite = np.isfinite(side) & np.isfinite(entry) & np.isfinite(exit_) & np.isfinite(qty)
    finite &= np.isfinite(fees) & np.isfinite(slip)
    positive = (entry > 0) & (exit_ > 0) & (qty > 0)
    sided = (side == 1) | (side == -1)
    with np.errstate(all="ignore"):
        reward = trade_reward_bps(side, entry, exit_, qty, fees, slip)
    for j in np.flatnonzero(~(finite & positive & sided)).tolist():
        if not finite[j]:
            rejected[j] = ("value", "non-finite number in side/prices/quantity/fees/slippage")
        elif not positive[j]:
            rejected[j] = ("value", "entry_price, exit_price and quantity must be > 0")
        else:
            rejected[j] = ("value", f"side must be +1 or -1, got {records[j]['side']}")

    arm_index = table.arm_index()
    names = list(table.bandit.arm_names)
    k = len(names)
    kind = np.full(n, -1, dtype=np.int64)
    arm_col = np.full(n, -1, dtype=np.int64)
    prop = np.full(n, np.nan)
    matrix = np.full((n, k), np.nan)
    to_add: list[tuple[int, str, str]] = []

    configured = set(cfg.horizons)

    def resolve(j: int, name: str, horizon: str) -> int | None:
        arm = arm_for(cfg.mode, name, horizon, names)
        if table.per_horizon and horizon_of(arm) != horizon:
            rejected[j] = ("unknown_arm", f"arm {arm!r} is not a model of horizon {horizon!r}")
            return None
        col = arm_index.get(arm)
        ens = records[j]["ensemble_id"]
        if (
            col is not None
            and table.per_horizon
            and horizon not in configured
            and horizon not in table.horizons_of(ens)
        ):
            col = None  # a horizon this ensemble has no learner for: its arms are unknown here
        if col is None:
            if cfg.unknown_arms == "add":
                to_add.append((j, records[j]["ensemble_id"], arm))
                return -2
            rejected[j] = ("unknown_arm", f"unknown arm {arm!r}; known: {', '.join(names)}")
            return None
        return col

    for j, rec in enumerate(records):
        if j in rejected:
            continue
        has_bandit = rec.get("arm") is not None or rec.get("family") is not None
        present = [
            has_bandit,
            rec.get("model_rewards") is not None,
            rec.get("model_contributions") is not None,
        ]
        if sum(present) != 1:
            rejected[j] = (
                "value",
                "a trade outcome needs exactly one of arm/family + propensity, "
                "model_rewards, model_contributions",
            )
            continue
        horizon = rec["horizon"]
        if has_bandit:
            p = rec.get("propensity")
            if p is None or not math.isfinite(p) or not 0.0 < p <= 1.0:
                rejected[j] = ("propensity", f"propensity must be in (0, 1], got {p}")
                continue
            col = resolve(j, rec.get("arm") or rec.get("family") or "", horizon)
            if col is None:
                continue
            kind[j], arm_col[j], prop[j] = BANDIT, col, p
            continue
        entries = rec.get("model_rewards")
        scale = 1.0
        kind_j = FULL
        if entries is None:
            entries = rec["model_contributions"]
            scale = float(reward[j])
            kind_j = CONTRIB
        row_vals: dict[int, float] = {}
        for name, value in entries.items():
            if not math.isfinite(value):
                rejected[j] = ("value", f"non-finite value for model {name!r}")
                break
            col = resolve(j, name, horizon)
            if col is None:
                break
            if col >= 0:
                row_vals[col] = value * scale
        if j in rejected:
            continue
        if not row_vals and not any(e[0] == j for e in to_add):
            rejected[j] = ("value", "model_rewards / model_contributions is empty")
            continue
        kind[j] = kind_j
        for col, value in row_vals.items():
            matrix[j, col] = value

    keys = [r["ensemble_id"] for r in records]
    horizons = [r["horizon"] for r in records]
    # Arms must be active for the learner (a removed arm is as unknown as a never-seen one).
    existing = table.learner_rows(keys, horizons, create=False)
    # A learner created by this batch starts with its default arms: an arm that is only a column
    # (added for another ensemble) is not one of them, and would fail the update.
    activity = table.learner_activity(horizons, existing)
    # (an arm still to be added, arm_col -2, is checked in the pass after it is added)
    for j in np.flatnonzero((kind == BANDIT) & (arm_col >= 0)).tolist():
        if not activity[j, arm_col[j]]:
            gone = "is removed for" if existing[j] >= 0 else "is not active for"
            rejected[j] = ("unknown_arm", f"arm {names[arm_col[j]]!r} {gone} {keys[j]!r}")
            kind[j] = -1
    for j in np.flatnonzero((kind == FULL) | (kind == CONTRIB)).tolist():
        cols = np.flatnonzero(~np.isnan(matrix[j]))
        inactive = cols[~activity[j, cols]]
        if inactive.size:
            gone = "removed for" if existing[j] >= 0 else "not active for"
            rejected[j] = (
                "unknown_arm",
                f"arm(s) {[names[c] for c in inactive]} {gone} {keys[j]!r}",
            )
            kind[j] = -1

    accepted = np.flatnonzero(kind >= 0)
    if accepted.size == 0:
        return rejected, {}
    # Auto-added arms (unknown_arms: add) are enabled before the updates that mention them.
    if to_add:
        for j, key, arm in to_add:
            if kind[j] >= 0 and not table.has_arm(key, arm):
                table.add_arm(key, arm)
        return _retry_after_add(table, records, rejected)
    acc_keys = [keys[j] for j in accepted.tolist()]
    acc_horizons = [horizons[j] for j in accepted.tolist()]
    rows = table.learner_rows(acc_keys, acc_horizons, create=True)
    lost = np.flatnonzero(rows < 0)
    if lost.size:  # an arm of an unknown horizon named in full information: no learner
        for i in lost.tolist():
            j = int(accepted[i])
            rejected[j] = ("unknown_arm", f"no learner for horizon {horizons[j]!r}")
        kind[accepted[lost]] = -1
        return _retry_after_add(table, records, rejected)
    kinds = kind[accepted]
    # Apply maximal runs of one feedback kind in event order, so η_t / γ_t see the same t as a
    # one-by-one application would.
    starts = np.flatnonzero(np.r_[True, kinds[1:] != kinds[:-1]])
    ends = np.r_[starts[1:], kinds.size]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        sel = accepted[s:e]
        if kinds[s] == BANDIT:
            table.apply_bandit(rows[s:e], arm_col[sel], reward[sel], prop[sel])
        else:
            table.apply_full(rows[s:e], matrix[sel])
    table.note_events(
        acc_keys,
        acc_horizons,
        np.array([records[j]["event_time"] for j in accepted.tolist()], dtype=np.int64),
    )
    changed: dict[str, set[str]] = {}
    for key, h in zip(acc_keys, acc_horizons, strict=True):
        changed.setdefault(key, set()).add(h if table.per_horizon else "")
    return rejected, {key: tuple(sorted(hs)) for key, hs in changed.items()}


def _retry_after_add(
    table: EnsembleTable, records: Sequence[dict[str, Any]], rejected: dict[int, tuple[str, str]]
) -> tuple[dict[int, tuple[str, str]], dict[str, tuple[str, ...]]]:
    """Second pass once auto-added arms exist (rare path: new model names)."""
    keep = [j for j in range(len(records)) if j not in rejected]
    sub_rejected, changed = process_trades(table, [records[j] for j in keep])
    out = dict(rejected)
    for sj, why in sub_rejected.items():
        out[keep[sj]] = why
    return out, changed
