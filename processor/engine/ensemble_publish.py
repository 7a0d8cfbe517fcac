"""EnsembleWeights records of the learners a batch changed: one snapshot pass, one encode pass.

The records, their keys and their order are those of one
:meth:`~processor.engine.ensembles.EnsembleTable.snapshot` and one ``serde.encode`` per changed
learner (ensembles sorted, horizons sorted within each), which is what the stage published
before; a batch that changes many learners pays one probability computation and one columnar
encode instead of one of each per learner.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from processor.engine import outputs
from processor.engine.ensembles import EnsembleTable
from processor.kafka.columnar_encode import encode_columns
from processor.kafka.serde import AvroSerde

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
    snaps = table.snapshot_many(wanted)
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
