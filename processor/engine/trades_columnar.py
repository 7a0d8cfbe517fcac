"""Trade outcomes as columns: the vectorized twin of :func:`processor.engine.trades.process_trades`.

The record path validates and applies a batch one record at a time; here the same rules run on
columns (numpy arrays, and lists of the strings), so a batch of bandit-feedback trades costs a
handful of numpy operations plus one dictionary pass over its (ensemble, horizon) and
(model, horizon) pairs, which are resolved once per distinct pair. Only the maps of
full-information and attribution trades are walked entry by entry, as they must be.

The result — the learners' arrays, the ``rejected`` reasons *and their order*, ``changed`` and
the arms auto-added — is exactly the record path's (property-tested against it in
``tests/unit/engine/test_trades_columnar.py``): rejections are produced in the record path's
stages (numbers, then the per-record checks in record order, then arms removed for a learner,
bandit trades before full-information ones), and an auto-added arm or a trade without a learner
retries the batch the same way.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from processor.bandits.rewards import trade_reward_bps
from processor.engine.ensembles import EnsembleTable, arm_for, horizon_of
from processor.engine.trade_columns import TradeColumns
from processor.engine.trades import BANDIT, CONTRIB, FULL

__all__ = ["TradeColumns", "process_trade_columns"]

logger = logging.getLogger(__name__)

Rejected = dict[int, tuple[str, str]]
Changed = dict[str, tuple[str, ...]]


class _Resolver:
    """:func:`processor.engine.trades.process_trades`' ``resolve``, once per distinct
    (model name, horizon) pair; the one ensemble-dependent rule is applied per record."""

    def __init__(self, table: EnsembleTable, to_add: list[tuple[int, str, str]]) -> None:
        self.table = table
        self.names = list(table.bandit.arm_names)
        self.index = table.arm_index()
        self.configured = set(table.config.horizons)
        self.to_add = to_add
        self.add = table.config.unknown_arms == "add"
        # (name, horizon) -> (arm, column or None, reason or None, depends on the ensemble)
        self.cache: dict[tuple[str, str], tuple[str, int | None, tuple[str, str] | None, bool]] = {}

    def pair(self, name: str, horizon: str) -> tuple[str, int | None, tuple[str, str] | None, bool]:
        """What resolving ``name`` for a trade of ``horizon`` gives, before the ensemble."""
        got = self.cache.get((name, horizon))
        if got is None:
            table = self.table
            arm = arm_for(table.config.mode, name, horizon, self.names)
            if table.per_horizon and horizon_of(arm) != horizon:
                why = ("unknown_arm", f"arm {arm!r} is not a model of horizon {horizon!r}")
                got = (arm, None, why, False)
            else:
                col = self.index.get(arm)
                per_ens = col is not None and table.per_horizon and horizon not in self.configured
                got = (arm, col, None, per_ens)
            self.cache[(name, horizon)] = got
        return got

    def simple(self, name: str, horizon: str) -> int:
        """The column when it does not depend on the record, else -1."""
        _arm, col, why, per_ens = self.pair(name, horizon)
        return col if col is not None and why is None and not per_ens else -1

    def record(self, j: int, name: str, horizon: str, ens: str, rejected: Rejected) -> int | None:
        """``resolve(j, name, horizon)`` of the record path: a column, -2 (arm to add) or None
        (rejected, reason in ``rejected``)."""
        arm, col, why, per_ens = self.pair(name, horizon)
        if why is not None:
            rejected[j] = why
            return None
        if per_ens and horizon not in self.table.horizons_of(ens):
            col = None  # a horizon this ensemble has no learner for: its arms are unknown here
        if col is None:
            if self.add:
                self.to_add.append((j, ens, arm))
                return -2
            rejected[j] = ("unknown_arm", f"unknown arm {arm!r}; known: {', '.join(self.names)}")
            return None
        return col


def process_trade_columns(table: EnsembleTable, tc: TradeColumns) -> tuple[Rejected, Changed]:
    """Validate and apply a batch of trades in order; exactly
    :func:`processor.engine.trades.process_trades` on the same records.

    Returns:
        ``(rejected, changed)`` as :func:`~processor.engine.trades.process_trades` does.
    """
    n = len(tc)
    rejected: Rejected = {}
    side = tc.side.astype(np.float64)
    entry, exit_, qty = tc.entry_price, tc.exit_price, tc.quantity
    fees, slip = tc.fees, tc.slippage
    finite = np.isfinite(entry) & np.isfinite(exit_) & np.isfinite(qty)
    finite &= np.isfinite(fees) & np.isfinite(slip)
    positive = (entry > 0) & (exit_ > 0) & (qty > 0)
    sided = (side == 1) | (side == -1)
    with np.errstate(all="ignore"):
        reward = trade_reward_bps(side, entry, exit_, qty, fees, slip)
    valid = finite & positive & sided
    for j in np.flatnonzero(~valid).tolist():
        if not finite[j]:
            rejected[j] = ("value", "non-finite number in side/prices/quantity/fees/slippage")
        elif not positive[j]:
            rejected[j] = ("value", "entry_price, exit_price and quantity must be > 0")
        else:
            rejected[j] = ("value", f"side must be +1 or -1, got {int(tc.side[j])}")

    names = list(table.bandit.arm_names)
    k = len(names)
    kind = np.full(n, -1, dtype=np.int64)
    arm_col = np.full(n, -1, dtype=np.int64)
    matrix = np.full((n, k), np.nan)
    to_add: list[tuple[int, str, str]] = []
    resolver = _Resolver(table, to_add)
    stage: Rejected = {}  # the per-record checks, inserted into `rejected` in record order

    has_map = np.fromiter((m is not None for m in tc.model_rewards), dtype=np.bool_, count=n)
    has_contrib = np.fromiter(
        (m is not None for m in tc.model_contributions), dtype=np.bool_, count=n
    )
    n_kinds = tc.has_bandit.astype(np.int64) + has_map + has_contrib
    for j in np.flatnonzero(valid & (n_kinds != 1)).tolist():
        stage[j] = (
            "value",
            "a trade outcome needs exactly one of arm/family + propensity, "
            "model_rewards, model_contributions",
        )
    single = valid & (n_kinds == 1)
    p = tc.propensity
    bandit = single & tc.has_bandit
    with np.errstate(invalid="ignore"):
        p_ok = ~tc.propensity_null & (p > 0.0) & (p <= 1.0)
    for j in np.flatnonzero(bandit & ~p_ok).tolist():
        got = None if tc.propensity_null[j] else float(p[j])
        stage[j] = ("propensity", f"propensity must be in (0, 1], got {got}")
    # bandit feedback: one column per distinct (model, horizon); odd rows one by one
    bj = np.flatnonzero(bandit & p_ok)
    if bj.size:
        pick = bj.tolist()
        every = bj.size == n
        b_names = tc.name if every else [tc.name[j] for j in pick]
        b_horizons = tc.horizon if every else [tc.horizon[j] for j in pick]
        if table.per_horizon:
            b_pairs = list(zip(b_names, b_horizons, strict=True))
            by_pair = {pair: resolver.simple(*pair) for pair in dict.fromkeys(b_pairs)}
            cols = np.array([by_pair[pair] for pair in b_pairs], dtype=np.int64)
        else:  # the horizon plays no part in resolving a name
            by_name = {name: resolver.simple(name, "") for name in dict.fromkeys(b_names)}
            cols = np.array([by_name[name] for name in b_names], dtype=np.int64)
        for i in np.flatnonzero(cols < 0).tolist():
            j = pick[i]
            col = resolver.record(j, b_names[i], b_horizons[i], tc.ensemble_id[j], stage)
            cols[i] = -3 if col is None else col
        good = cols != -3
        kind[bj[good]] = BANDIT
        arm_col[bj[good]] = cols[good]
    # full information and attribution: every entry of the map, in record order
    for j in np.flatnonzero(single & ~tc.has_bandit).tolist():
        entries = tc.model_rewards[j]
        scale = 1.0
        kind_j = FULL
        if entries is None:
            entries = tc.model_contributions[j]
            assert entries is not None  # exactly one feedback kind is present
            scale = float(reward[j])
            kind_j = CONTRIB
        horizon = tc.horizon[j]
        ens = tc.ensemble_id[j]
        row_vals: dict[int, float] = {}
        added = False
        failed = False
        for name, value in entries.items():
            if not math.isfinite(value):
                stage[j] = ("value", f"non-finite value for model {name!r}")
                failed = True
                break
            col = resolver.record(j, name, horizon, ens, stage)
            if col is None:
                failed = True
                break
            if col >= 0:
                row_vals[col] = value * scale
            else:
                added = True
        if failed:
            continue
        if not row_vals and not added:
            stage[j] = ("value", "model_rewards / model_contributions is empty")
            continue
        kind[j] = kind_j
        for col, value in row_vals.items():
            matrix[j, col] = value
    for j in sorted(stage):
        rejected[j] = stage[j]
    to_add.sort(key=lambda e: e[0])  # record order (stable: a record's entries in map order)
    # Arms must be active for the learner (a removed arm is as unknown as a never-seen one); a
    # learner this batch creates has its default arms.
    live = np.flatnonzero(kind >= 0)
    existing = np.full(n, -1, dtype=np.int64)
    activity = np.zeros((n, k), dtype=np.bool_)
    if live.size == n:
        existing = table.learner_rows(tc.ensemble_id, tc.horizon, create=False)
        activity = table.learner_activity(tc.horizon, existing)
    elif live.size:
        live_horizons = [tc.horizon[j] for j in live.tolist()]
        existing[live] = table.learner_rows(
            [tc.ensemble_id[j] for j in live.tolist()], live_horizons, create=False
        )
        activity[live] = table.learner_activity(live_horizons, existing[live])
    check = np.flatnonzero((kind == BANDIT) & (arm_col >= 0))
    off = check[~activity[check, arm_col[check]]]
    for j in off.tolist():
        gone = "is removed for" if existing[j] >= 0 else "is not active for"
        rejected[j] = ("unknown_arm", f"arm {names[arm_col[j]]!r} {gone} {tc.ensemble_id[j]!r}")
    kind[off] = -1
    check = np.flatnonzero((kind == FULL) | (kind == CONTRIB))
    if check.size:
        off_cols = ~np.isnan(matrix[check]) & ~activity[check]
        for i in np.flatnonzero(off_cols.any(axis=1)).tolist():
            j = int(check[i])
            inactive = np.flatnonzero(off_cols[i])
            gone = "removed for" if existing[j] >= 0 else "not active for"
            rejected[j] = (
                "unknown_arm",
                f"arm(s) {[names[c] for c in inactive]} {gone} {tc.ensemble_id[j]!r}",
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
        return _retry(table, tc, rejected)
    every = accepted.size == n
    acc = accepted.tolist()
    acc_keys = tc.ensemble_id if every else [tc.ensemble_id[j] for j in acc]
    acc_horizons = tc.horizon if every else [tc.horizon[j] for j in acc]
    # Learners found above are still there (nothing was created since); create the others, in
    # the order of their first trade, as the record path does.
    rows = existing[accepted]
    new = np.flatnonzero(rows < 0)
    if new.size:
        rows[new] = table.learner_rows(
            [acc_keys[i] for i in new.tolist()],
            [acc_horizons[i] for i in new.tolist()],
            create=True,
        )
    lost = np.flatnonzero(rows < 0)
    if lost.size:  # an arm of an unknown horizon named in full information: no learner
        for i in lost.tolist():
            j = acc[i]
            rejected[j] = ("unknown_arm", f"no learner for horizon {tc.horizon[j]!r}")
        kind[accepted[lost]] = -1
        return _retry(table, tc, rejected)
    kinds = kind[accepted]
    # Maximal runs of one feedback kind in event order, as the record path applies them.
    starts = np.flatnonzero(np.r_[True, kinds[1:] != kinds[:-1]])
    ends = np.r_[starts[1:], kinds.size]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        sel = accepted[s:e]
        if kinds[s] == BANDIT:
            table.apply_bandit(rows[s:e], arm_col[sel], reward[sel], tc.propensity[sel])
        else:
            table.apply_full(rows[s:e], matrix[sel])
    table.note_events(acc_keys, acc_horizons, tc.event_time[accepted], rows)
    if not table.per_horizon:
        return rejected, dict.fromkeys(acc_keys, ("",))
    changed: dict[str, set[str]] = {}
    for key, h in dict.fromkeys(zip(acc_keys, acc_horizons, strict=True)):
        changed.setdefault(key, set()).add(h)
    return rejected, {key: tuple(sorted(hs)) for key, hs in changed.items()}


def _retry(table: EnsembleTable, tc: TradeColumns, rejected: Rejected) -> tuple[Rejected, Changed]:
    """Second pass once auto-added arms exist (rare path: new model names)."""
    keep = [j for j in range(len(tc)) if j not in rejected]
    sub_rejected, changed = process_trade_columns(table, tc.take(keep))
    out = dict(rejected)
    for sj, why in sub_rejected.items():
        out[keep[sj]] = why
    return out, changed
