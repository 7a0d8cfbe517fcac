"""A batch of TradeOutcome records as columns, from a columnar decode or from decoded records."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.codec.columnar import Columns

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass
class TradeColumns:
    """A batch of TradeOutcome records as columns (row ``j`` = record ``j``).

    ``name`` is the bandit-feedback model of each trade (``arm``, else ``family``; ``""`` when
    neither is set or both are empty), ``has_bandit`` whether ``arm`` or ``family`` is present;
    ``propensity`` is NaN where ``propensity_null``. Maps are ``None`` when absent.
    """

    ensemble_id: list[str]
    horizon: list[str]
    side: I64
    entry_price: F64
    exit_price: F64
    quantity: F64
    fees: F64
    slippage: F64
    event_time: I64
    name: list[str]
    has_bandit: B
    propensity: F64
    propensity_null: B
    model_rewards: list[dict[str, float] | None]
    model_contributions: list[dict[str, float] | None]

    def __len__(self) -> int:
        return len(self.ensemble_id)

    @classmethod
    def from_columns(cls, cols: Columns, rows: I64) -> TradeColumns:
        """The ``rows`` of a columnar decode (:func:`processor.codec.columnar.decode_columns`)."""
        d, null = cols.data, cols.null
        arm = d["arm"][rows].tolist()
        family = d["family"][rows].tolist()
        return cls(
            ensemble_id=d["ensemble_id"][rows].tolist(),
            horizon=d["horizon"][rows].tolist(),
            side=np.asarray(d["side"][rows], dtype=np.int64),
            entry_price=np.asarray(d["entry_price"][rows], dtype=np.float64),
            exit_price=np.asarray(d["exit_price"][rows], dtype=np.float64),
            quantity=np.asarray(d["quantity"][rows], dtype=np.float64),
            fees=np.asarray(d["fees"][rows], dtype=np.float64),
            slippage=np.asarray(d["slippage"][rows], dtype=np.float64),
            event_time=np.asarray(d["event_time"][rows], dtype=np.int64),
            # a null string column holds "" there, so `or` picks what the record path picks
            name=[a or f for a, f in zip(arm, family, strict=True)],
            has_bandit=~(null["arm"][rows] & null["family"][rows]),
            propensity=np.where(null["propensity"][rows], np.nan, d["propensity"][rows]),
            propensity_null=np.asarray(null["propensity"][rows], dtype=np.bool_),
            model_rewards=_maps(d["model_rewards"][rows], null["model_rewards"][rows]),
            model_contributions=_maps(
                d["model_contributions"][rows], null["model_contributions"][rows]
            ),
        )

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> TradeColumns:
        """Columns of decoded records (dicts as fastavro returns them)."""
        n = len(records)

        def num(field: str) -> F64:
            return np.fromiter((r[field] for r in records), dtype=np.float64, count=n)

        props = [r.get("propensity") for r in records]
        return cls(
            ensemble_id=[r["ensemble_id"] for r in records],
            horizon=[r["horizon"] for r in records],
            side=np.fromiter((r["side"] for r in records), dtype=np.int64, count=n),
            entry_price=num("entry_price"),
            exit_price=num("exit_price"),
            quantity=num("quantity"),
            fees=num("fees"),
            slippage=num("slippage"),
            event_time=np.fromiter((r["event_time"] for r in records), dtype=np.int64, count=n),
            name=[r.get("arm") or r.get("family") or "" for r in records],
            has_bandit=np.array(
                [r.get("arm") is not None or r.get("family") is not None for r in records],
                dtype=np.bool_,
            ),
            propensity=np.array([np.nan if p is None else p for p in props], dtype=np.float64),
            propensity_null=np.array([p is None for p in props], dtype=np.bool_),
            model_rewards=[r.get("model_rewards") for r in records],
            model_contributions=[r.get("model_contributions") for r in records],
        )

    def take(self, idx: Sequence[int]) -> TradeColumns:
        """The records at ``idx``, in that order."""
        ix = np.asarray(idx, dtype=np.int64)
        pick = ix.tolist()
        return TradeColumns(
            ensemble_id=[self.ensemble_id[j] for j in pick],
            horizon=[self.horizon[j] for j in pick],
            side=self.side[ix],
            entry_price=self.entry_price[ix],
            exit_price=self.exit_price[ix],
            quantity=self.quantity[ix],
            fees=self.fees[ix],
            slippage=self.slippage[ix],
            event_time=self.event_time[ix],
            name=[self.name[j] for j in pick],
            has_bandit=self.has_bandit[ix],
            propensity=self.propensity[ix],
            propensity_null=self.propensity_null[ix],
            model_rewards=[self.model_rewards[j] for j in pick],
            model_contributions=[self.model_contributions[j] for j in pick],
        )


def _maps(values: Any, null: Any) -> list[dict[str, float] | None]:
    return [None if nl else m for m, nl in zip(values.tolist(), null.tolist(), strict=True)]
