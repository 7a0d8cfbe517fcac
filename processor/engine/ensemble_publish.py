"""EnsembleWeights records of the learners a batch changed: one snapshot pass, one encode pass.

The records, their keys and their order are those of one
:meth:`~processor.engine.ensembles.EnsembleTable.snapshot` and one ``serde.encode`` per changed
learner (ensembles sorted, horizons sorted within each), which is what the stage published
before; a batch that changes many learners pays one probability computation and one columnar
encode instead of one of each per learner.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from processor.codec.columnar_encode import encode_columns
from processor.codec.serde import AvroSerde
from processor.engine import outputs
from processor.errors import StateError

if TYPE_CHECKING:
    from processor.engine.ensembles import EnsembleTable

logger = logging.getLogger(__name__)


def publish_weights(
    table: EnsembleTable, serde: AvroSerde, changed: Mapping[str, tuple[str, ...]]
) -> list[tuple[bytes, bytes]]:
    """``(key, EnsembleWeights value)`` per changed learner (``changed`` as returned by
    :func:`~processor.engine.trades.process_trades`: ensemble id → horizons, ``""`` for the
    one learner of an ensemble in ``family`` / ``horizon`` mode)."""
    wanted = [(key, horizon or None) for key in sorted(changed) for horizon in changed[key]]
    if not wanted:
        return []
    snaps = snapshot_many(table, wanted)
    n = len(snaps)
    values = None
    if n >= outputs.MIN_VECTORIZED:
        columns: dict[str, Any] = {name: [s[name] for s in snaps] for name in snaps[0]}
        for name in ("total_steps", "policy_version", "event_time"):
            columns[name] = np.array(columns[name], dtype=np.int64)
        values = encode_columns(serde, columns, n)
    if values is None:
        values = [serde.encode(s) for s in snaps]
    return [(key.encode(), v) for (key, _), v in zip(wanted, values, strict=True)]


def snapshot_many(
    table: EnsembleTable, wanted: Sequence[tuple[str, str | None]]
) -> list[dict[str, Any]]:
    """:meth:`EnsembleTable.snapshot` of many ``(key, horizon)`` at once (one probability pass)."""
    lkeys: list[str] = []
    horizons: list[str] = []
    rows: list[int] = []
    for key, horizon in wanted:
        h = table._horizon(key, horizon)
        lkey = table.learner_key(key, h)
        row = table.bandit.row_of(lkey) if table.has_key(key) else None
        if row is None:
            msg = f"no ensemble state for {key!r}" + (f" horizon {h!r}" if h else "")
            raise StateError(msg)
        lkeys.append(lkey)
        horizons.append(h)
        rows.append(row)
    r = np.array(rows, dtype=np.int64)
    bandit = table.bandit
    probs = bandit.probabilities(r).tolist()
    bandit_w = bandit.weights(r).tolist()
    active = bandit.active[r].tolist()
    steps_of = bandit.total_steps[r].tolist()
    versions = bandit.version[r].tolist()
    names = bandit.arm_names
    out = []
    for i, (key, _h) in enumerate(wanted):
        h = horizons[i]
        act = active[i]
        prob_map = {n: p for n, p, a in zip(names, probs[i], act, strict=True) if a}
        bandit_map = {n: w for n, w, a in zip(names, bandit_w[i], act, strict=True) if a}
        base = table.base_weights(key, h)
        steps = int(steps_of[i])
        warm = steps >= table.config.warm_start_steps
        alpha = table.config.blend_alpha if warm else 0.0
        blended = {a: (1.0 - alpha) * base[a] + alpha * bandit_map[a] for a in base}
        total = math.fsum(blended.values())
        out.append(
            {
                "ensemble_id": key,
                "horizon": h if table.per_horizon else table.last_horizon.get(key, ""),
                "mode": table.config.mode,
                "weights": {a: w / total for a, w in blended.items()},
                "bandit_weights": bandit_map,
                "probabilities": prob_map,
                "total_steps": steps,
                "warm": warm,
                "policy_version": int(versions[i]),
                "event_time": int(table.last_event_ms.get(lkeys[i], 0)),
            }
        )
    return out
