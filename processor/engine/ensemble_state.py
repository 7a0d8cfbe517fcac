"""The changelog payload of one ensemble, and reading the 0.2 layout.

``family`` / ``horizon`` modes (one learner, row key = ensemble id), as in 0.2::

    {"exp3ix": <learner state>, "base_weights": ..., "horizon": ..., "event_time": ...}

``family_horizon`` mode (one learner per horizon)::

    {"learners": {"15m": {"exp3ix": <learner state>, "event_time": ...}, ...},
     "base_weights": ..., "horizon": <last updated>, "event_time": <latest>}

A 0.2 ``family_horizon`` state (one learner over every ``family:horizon`` arm) is split into one
learner per horizon: each keeps its arms' loss estimates, pulls and rewards, its bandit rounds
are its arms' pulls, and the full-information rounds — 0.2 counted them for the ensemble, not
per horizon — are shared evenly between the horizons (they set only η). 0.2 propensities were
normalised over all arms, so the loss estimates it learnt from bandit feedback are inflated about
K_horizons-fold for every arm alike; they are kept as they are (a uniform scale changes only how
sharp the weights are, not their order).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from processor.errors import StateError

if TYPE_CHECKING:
    from processor.engine.ensembles import EnsembleTable

logger = logging.getLogger(__name__)


def ensemble_state(table: EnsembleTable, key: str) -> dict[str, Any]:
    """JSON-able state of ensemble ``key``."""
    common = {
        "base_weights": table.base_overrides.get(key),
        "horizon": table.last_horizon.get(key, ""),
    }
    if not table.per_horizon:
        return {
            "exp3ix": table.bandit.get_key_state(key),
            **common,
            "event_time": table.last_event_ms.get(key, 0),
        }
    learners: dict[str, dict[str, Any]] = {}
    latest = 0
    for h in table.horizons_of(key):
        lkey = table.learner_key(key, h)
        event_ms = table.last_event_ms.get(lkey, 0)
        learners[h] = {"exp3ix": table.bandit.get_key_state(lkey), "event_time": event_ms}
        latest = max(latest, event_ms)
    return {"learners": learners, **common, "event_time": latest}


def load_ensemble_state(table: EnsembleTable, key: str, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`ensemble_state`; also reads every 0.2 state (module docstring)."""
    if table.per_horizon:
        table._create([key])
        learners = state["learners"] if "learners" in state else _split_legacy(state)
        for h, sub in learners.items():
            lkey = table.learner_key(key, str(h))
            table.bandit.set_key_state(lkey, sub["exp3ix"])
            if str(h) not in table._horizons[key]:
                table._horizons[key].append(str(h))
            if sub.get("event_time"):
                table.last_event_ms[lkey] = int(sub["event_time"])
    else:
        if "learners" in state:
            msg = "state was written in family_horizon mode (one learner per horizon)"
            raise StateError(msg)
        table.bandit.set_key_state(key, state["exp3ix"])
        if state.get("event_time"):
            table.last_event_ms[key] = int(state["event_time"])
    if state.get("base_weights"):
        table.base_overrides[key] = dict(state["base_weights"])
    if state.get("horizon"):
        table.last_horizon[key] = str(state["horizon"])


def _split_legacy(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One learner state per horizon from a 0.2 family_horizon state (module docstring)."""
    old = state["exp3ix"]
    names = [str(n) for n in old["arm_names"]]
    k = len(names)
    pulls = [int(x) for x in old.get("arm_pulls", [0] * k)]
    rewards = [float(x) for x in old.get("cumulative_rewards", [0.0] * k)]
    losses = [float(x) for x in old["loss_estimates"]] if "loss_estimates" in old else None
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if ":" not in name:
            logger.warning("0.2 state: arm %r has no horizon; not restored", name)
            continue
        groups.setdefault(name.rpartition(":")[2], []).append(i)
    if not groups:
        msg = "0.2 family_horizon state has no family:horizon arm"
        raise StateError(msg)
    total = int(old.get("total_steps", 0))
    full = max(total - sum(pulls), 0)
    share, extra = divmod(full, len(groups))
    version = int(old.get("version", total))
    out = {}
    for j, (h, idx) in enumerate(groups.items()):
        bandit = sum(pulls[i] for i in idx)
        sub: dict[str, Any] = {
            "arm_names": [names[i] for i in idx],
            "arm_pulls": [pulls[i] for i in idx],
            "cumulative_rewards": [rewards[i] for i in idx],
            "total_steps": bandit + share + (1 if j < extra else 0),
            "bandit_steps": bandit,
            "version": version,
        }
        if losses is not None:
            sub["loss_estimates"] = [losses[i] for i in idx]
        else:
            sub["weights"] = [float(old["weights"][i]) for i in idx]
        out[h] = {"exp3ix": sub, "event_time": int(state.get("event_time", 0))}
    return out
