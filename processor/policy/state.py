"""Per-campaign state of the bidding policy: both arm posteriors and the safety arrays.

Row ``i`` of every table belongs to the same campaign. :class:`CampaignArms` is the
Beta-Bernoulli table the rest of the stage knows as ``state.thompson`` (keys, rows, arms,
``version`` = reward events applied); it keeps a :class:`~processor.bandits.KeyedNormalGamma`
value posterior in step with it — same rows, same columns, same active arms — so a control
command that adds or removes an arm, or a reset, acts on both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.bandits.base import FloatArray, IntArray
from processor.bandits.gaussian import STAT_FIELDS, KeyedNormalGamma
from processor.bandits.keyed import KeyedThompson
from processor.errors import StateError
from processor.policy.bidding_config import BiddingConfig
from processor.policy.monitor import SafetyState
from processor.state.packing import pack_columns, unpack_columns

logger = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]

__all__ = ["BiddingState", "CampaignArms"]


class CampaignArms(KeyedThompson):
    """:class:`KeyedThompson` whose rows, columns and active arms are mirrored in ``value``.

    Rows are created, reset and given columns through the table's own hooks, so every path —
    new keys, restores, ``add_arm`` / ``remove_arm`` commands, ``reset_key`` — keeps the two
    tables aligned.
    """

    def __init__(self, arm_names: Sequence[str], value: KeyedNormalGamma, **kwargs: Any) -> None:
        self.value = value
        super().__init__(arm_names, **kwargs)

    def _new_rows(self, keys: Sequence[str]) -> None:
        self.value._new_rows(keys)
        super()._new_rows(keys)

    def _init_rows(self, rows: IntArray) -> None:
        super()._init_rows(rows)
        if rows.size and self.value.n_keys > int(rows.max()):
            self.value._init_rows(rows)

    def _add_column(self, name: str) -> int:
        col = super()._add_column(name)
        if name not in self.value.arm_names:
            self.value._add_column(name)
        return col

    def add_arm(self, name: str, key: str | None = None) -> int:
        """Enable arm ``name`` in both posteriors (see :meth:`KeyedThompson.add_arm`)."""
        col = super().add_arm(name, key)
        self.value.add_arm(name, key)
        return col

    def remove_arm(self, name: str, key: str | None = None) -> None:
        """Disable arm ``name`` in both posteriors (see :meth:`KeyedThompson.remove_arm`)."""
        super().remove_arm(name, key)
        self.value.remove_arm(name, key)


class BiddingState:
    """Struct-of-arrays state of many campaigns: arm posteriors plus safety arrays.

    Attributes:
        thompson: Beta-Bernoulli posteriors and the key table (:class:`CampaignArms`).
        value: Normal-Inverse-Gamma posteriors of the mean reward, aligned with ``thompson``.
        safety: Evidence, emergency flags and the performance monitor.
    """

    def __init__(self, config: BiddingConfig) -> None:
        self.config = config
        names = list(config.arm_names)
        self.value = KeyedNormalGamma(
            names,
            prior_mean=config.value_prior_mean,
            prior_count=config.value_prior_count,
            prior_shape=config.value_prior_shape,
            prior_rate=config.value_prior_rate,
            prior=config.value_prior,
            discount=config.discount,
            discount_unit_ms=config.discount_unit_ms,
        )
        self.thompson = CampaignArms(
            names,
            self.value,
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

    def propensities(self, rows: I64) -> FloatArray:
        """Exact P(argmax = arm) of the posterior that decides (``config.objective``)."""
        posterior = self.value if self.config.value_objective else self.thompson
        return np.asarray(posterior.propensities(rows), dtype=np.float64)

    def get_key_state(self, key: str) -> dict[str, Any]:
        """JSON-able state of one campaign (exact round trip through JSON)."""
        return self.get_key_states([key])[0]

    def get_key_states(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """:meth:`get_key_state` of many campaigns (column-wise: a commit has many dirty keys)."""
        if not keys:
            return []
        rows = self.rows(list(keys))
        thompson = self.thompson.get_key_states(keys)
        safety = self.safety.get_row_states(rows)
        active = self.thompson.active[rows]
        stats = [v.tolist() for v in self.value.stats(rows)]
        all_active = np.all(active, axis=1).tolist()
        out = []
        for i, (t, s) in enumerate(zip(thompson, safety, strict=True)):
            if all_active[i]:
                value = {f: stats[j][i] for j, f in enumerate(STAT_FIELDS)}
            else:
                cols = np.flatnonzero(active[i]).tolist()
                value = {f: [stats[j][i][c] for c in cols] for j, f in enumerate(STAT_FIELDS)}
            out.append({"thompson": t, "value": value, "safety": s})
        return out

    def set_key_states(self, keys: Sequence[str], states: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`set_key_state` of many campaigns (a changelog partition at once).

        A state written by 0.2 (no ``value``, the EWMA monitor in ``safety``) restores its Beta
        counts and emergency flag; the value posterior starts from its prior.

        Raises:
            StateError: Malformed state.
        """
        for key, state in zip(keys, states, strict=True):
            if not isinstance(state, Mapping) or not {"thompson", "safety"} <= set(state):
                msg = f"bidding state for {key!r} needs 'thompson' and 'safety'"
                raise StateError(msg)
        self.thompson.set_key_states(keys, [dict(s["thompson"]) for s in states])
        rows = self.rows(list(keys))
        for key, row, state in zip(keys, rows.tolist(), states, strict=True):
            self._set_value(key, row, state)
        self.safety.set_row_states(rows, [s["safety"] for s in states])

    def _set_value(self, key: str, row: int, state: Mapping[str, Any]) -> None:
        """The value posterior of one restored row; arms without statistics (a 0.2 state, an
        arm appended to the list) start at the prior."""
        arms = [str(a) for a in state["thompson"]["arm_names"]]
        t = self.thompson
        value = state.get("value") or {}
        stats = []
        for f in STAT_FIELDS:
            try:
                given = np.asarray(value.get(f, []), dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as exc:
                msg = f"value state of {key!r} is malformed: {exc}"
                raise StateError(msg) from exc
            if given.size > len(arms) or not np.all(np.isfinite(given)):
                msg = f"value state of {key!r}: {f} must be finite, at most one per arm"
                raise StateError(msg)
            stats.append(np.pad(given, (0, len(arms) - given.size)).reshape(1, -1))
        self.value.set_rows_columns(
            np.array([row], dtype=np.int64),
            arms,
            *stats,
            version=[int(t.version[row])],
            last_event_ms=[int(t.last_event_ms[row])],
        )

    def set_key_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Restore one campaign from :meth:`get_key_state` output (or a 0.2 state).

        Raises:
            StateError: Malformed state.
        """
        self.set_key_states([key], [state])

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

    def pack(self, keys: Sequence[str]) -> list[bytes]:
        """Packed state (:mod:`processor.state.packing`, current layout) of each of ``keys``
        (created if new)."""
        if not keys:
            return []
        rows = self.rows(list(keys))
        thompson = self.thompson.export_rows(rows)
        count, total, total_sq = self.value.stats(rows)
        cols = {
            **self.safety.get_rows_columns(rows),
            "active": thompson["active"],
            "successes": thompson["successes"],
            "failures": thompson["failures"],
            "count": count,
            "total": total,
            "total_sq": total_sq,
            "version": thompson["version"],
            "last_event_ms": thompson["last_event_ms"],
        }
        return pack_columns(self.thompson.arm_names, cols)

    def restore_packed(self, keys: Sequence[str], blobs: Sequence[bytes]) -> None:
        """Load packed states (any readable layout) into ``keys``; equals ``set_key_state`` per
        key.

        Raises:
            StateError: A blob is malformed.
        """
        all_rows = self.rows(list(keys))  # new rows in the given order, as key by key
        for arms, idx, cols in unpack_columns(blobs):
            rows = all_rows[idx]
            version, last = cols["version"], cols["last_event_ms"]
            self.thompson.set_rows_columns(
                rows, arms, cols["successes"], cols["failures"], version, last
            )
            self.value.set_rows_columns(
                rows,
                arms,
                cols["count"],
                cols["total"],
                cols["total_sq"],
                version=version,
                last_event_ms=last,
            )
            self.safety.set_rows_columns(rows, cols["safety"])
