"""One key's Exp3-IX / Hedge state as JSON, and reading the layouts of earlier versions.

Layout (``get_key_state``): the original design's field names (``n_arms``, ``arm_names``,
``gamma``, ``eta``, ``eta_auto``, ``weights``, ``total_steps``, ...) plus ``loss_estimates``,
``log_prior`` and ``bandit_steps`` for an exact restore. Older layouts read:

* **0.2** (no ``log_prior`` / ``bandit_steps``): b = 0; the bandit rounds are the arm pulls
  (0.2 counted one pull per bandit event), the rest of ``total_steps`` were full-information
  rounds. Pulls of arms removed before the state was written are not in it, so such a row may
  count a few bandit rounds as full-information ones (its rate differs slightly, nothing else).
* **original** (only ``weights``): ``b = ln(w / Σw)``, ``L̃ = 0`` — exactly those weights next,
  whatever the rate (the 0.2 reader divided by η, which is 0 with one arm).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from processor.bandits.base import IntArray, check_finite
from processor.errors import StateError

if TYPE_CHECKING:
    from processor.bandits.exp3ix_keyed import KeyedExp3IX

logger = logging.getLogger(__name__)


def legacy_bandit_steps(total_steps: IntArray, arm_pulls: IntArray) -> IntArray:
    """Bandit rounds of 0.2 rows: their pulls (one per bandit event), at most ``total_steps``."""
    pulls = np.asarray(arm_pulls, dtype=np.int64)
    out: IntArray = np.minimum(np.asarray(total_steps, dtype=np.int64), pulls.sum(axis=-1))
    return out


def key_state(table: KeyedExp3IX, row: int) -> dict[str, Any]:
    """JSON-able state of ``row`` (active arms only, in column order)."""
    arr = table._arr
    r = np.array([row], dtype=np.int64)
    cols = np.flatnonzero(arr["active"][row])
    eta = float(table._next_eta(r)[0])
    return {
        "n_arms": int(cols.size),
        "arm_names": [table.arm_names[c] for c in cols],
        "gamma": float(table._gamma_from_eta(np.array([eta]))[0]),
        "gamma_auto": table.gamma is None,
        "eta": eta,
        "eta_auto": table.eta is None,
        "eta_max": table.eta_max,
        "reward_range": list(table.reward_range),
        "uniform_mix": table.uniform_mix,
        "share": table.share,
        "weights": table.weights(r)[0, cols].tolist(),
        "probabilities": table.probabilities(r)[0, cols].tolist(),
        "loss_estimates": arr["loss_estimates"][row, cols].tolist(),
        "log_prior": arr["log_prior"][row, cols].tolist(),
        "total_steps": int(arr["total_steps"][row]),
        "bandit_steps": int(arr["bandit_steps"][row]),
        "arm_pulls": arr["arm_pulls"][row, cols].tolist(),
        "cumulative_rewards": arr["cumulative_rewards"][row, cols].tolist(),
        "version": int(arr["version"][row]),
    }


def load_key_state(
    table: KeyedExp3IX, row: int, cols: Sequence[int], state: Mapping[str, Any]
) -> None:
    """Write ``state`` (any layout above) into a freshly reset ``row`` over ``cols``."""
    arr = table._arr
    k = len(cols)
    arr["active"][row] = False
    arr["active"][row, cols] = True
    total = int(state.get("total_steps", 0))
    arr["total_steps"][row] = total
    pulls = np.asarray(state.get("arm_pulls", [0] * k), dtype=np.int64)
    arr["arm_pulls"][row, cols] = pulls
    arr["cumulative_rewards"][row, cols] = np.asarray(
        state.get("cumulative_rewards", [0.0] * k), dtype=np.float64
    )
    if "bandit_steps" in state:
        arr["bandit_steps"][row] = int(state["bandit_steps"])
    else:
        arr["bandit_steps"][row] = int(legacy_bandit_steps(np.array(total), pulls))
    arr["version"][row] = int(state.get("version", total))
    if "loss_estimates" in state:
        arr["loss_estimates"][row, cols] = check_finite("loss_estimates", state["loss_estimates"])
        arr["log_prior"][row, cols] = check_finite("log_prior", state.get("log_prior", [0.0] * k))
        return
    w = check_finite("weights", state["weights"])
    if w.shape != (k,) or not np.all(w > 0.0):
        msg = "weights must be positive, one per arm"
        raise StateError(msg)
    arr["log_prior"][row, cols] = np.log(w / w.sum())
    arr["loss_estimates"][row, cols] = 0.0
