"""Ensemble-weight state for many ensembles: Exp3-IX / Hedge learners plus base weights.

One :class:`~processor.bandits.keyed.KeyedExp3IX` row per *learner* holds the log-domain state.
In ``family`` and ``horizon`` modes an ensemble has one learner (its row key is the ensemble id,
shared by its horizons). In ``family_horizon`` mode an ensemble has one learner per horizon,
over that horizon's ``family:horizon`` arms, with its own round count t, rate η and γ: its
probabilities — and so the propensities logged with its choices — are normalised within the
horizon, and it publishes one EnsembleWeights record per horizon (``horizon`` set,
``mode: family_horizon``).

Trade outcomes update a learner three ways (DESIGN §3):

* **bandit feedback** — ``arm`` + decision-time ``propensity``: Exp3-IX's implicit-exploration
  estimate ``ℓ / (p + γ_t)``;
* **full information** — ``model_rewards``: Hedge, every reported arm's own loss; an arm that did
  not report is charged the mean loss of the reporters (it neither wins nor loses that round);
* **attribution** — ``model_contributions``: a heuristic kept from the original design; each
  contributing arm is charged the loss of ``reward × contribution`` as if it were its own reward
  (the others as for full information). It is not an unbiased estimate of anything and is
  documented as such.

Published weights are ``(1 − blend_alpha)·base + blend_alpha·bandit`` once ``warm_start_steps``
rewards were absorbed by the learner, the base weights before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from processor.bandits.keyed import KeyedExp3IX
from processor.config import EnsembleConfig
from processor.engine.ensemble_publish import snapshot_many
from processor.engine.ensemble_state import ensemble_state, load_ensemble_state
from processor.errors import StateError

logger = logging.getLogger(__name__)

_SEP = "\x00"  # learner key = ensemble id + NUL + horizon (family_horizon mode)


def arm_for(mode: str, name: str, horizon: str, arm_names: Sequence[str]) -> str:
    """Resolve a model name from an event to an arm name of ``mode``.

    An exact arm name wins; in ``family_horizon`` mode a bare family name becomes
    ``family:horizon`` with the event's horizon.
    """
    if name in arm_names or mode != "family_horizon" or ":" in name:
        return name
    return f"{name}:{horizon}"


def horizon_of(arm: str) -> str:
    """Horizon part of a ``family:horizon`` arm name ("" if it has none)."""
    return arm.rpartition(":")[2] if ":" in arm else ""


class EnsembleTable:
    """Keyed ensemble state (one learner row per ensemble, or per ensemble and horizon)."""

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config
        self.per_horizon = config.mode == "family_horizon"
        self.bandit = KeyedExp3IX(
            list(config.arm_names),
            gamma=config.gamma,
            eta=config.eta,
            eta_max=config.eta_max,
            reward_range=config.reward_range,
            uniform_mix=config.uniform_mix,
            share=config.share,
        )
        self.base_overrides: dict[str, dict[str, float]] = {}
        self.last_horizon: dict[str, str] = {}
        self.last_event_ms: dict[str, int] = {}  # per learner key
        self._horizons: dict[str, list[str]] = {}  # family_horizon: ensemble → its learners

    # ---- keys -------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """Ensemble ids held, in order of creation."""
        return list(self._horizons) if self.per_horizon else list(self.bandit.keys)

    def has_key(self, key: str) -> bool:
        """True if ``key`` has state."""
        if self.per_horizon:
            return key in self._horizons
        return self.bandit.row_of(key) is not None

    def learner_key(self, key: str, horizon: str) -> str:
        """Row key of the learner serving ``horizon`` of ensemble ``key``."""
        return f"{key}{_SEP}{horizon}" if self.per_horizon else key

    def horizons_of(self, key: str) -> list[str]:
        """Horizons with a learner of ensemble ``key`` (``[""]`` when one learner serves all)."""
        if not self.per_horizon:
            return [""] if self.has_key(key) else []
        return list(self._horizons.get(key, ()))

    def horizon_mask(self, horizon: str) -> np.ndarray:
        """(K,) the configured arms of ``horizon`` (family_horizon mode)."""
        names = self.bandit.arm_names
        configured = set(self.config.arm_names)
        return np.array([n in configured and horizon_of(n) == horizon for n in names], bool)

    def _create(self, keys: Sequence[str]) -> None:
        """Rows for new ensembles: one learner, or one per configured horizon."""
        if not self.per_horizon:
            self.bandit.rows(keys)
            return
        for key in dict.fromkeys(keys):
            if key in self._horizons:
                continue
            horizons = list(self.config.horizons)
            rows = self.bandit.rows([self.learner_key(key, h) for h in horizons])
            self.bandit.set_active(rows, np.stack([self.horizon_mask(h) for h in horizons]))
            self._horizons[key] = horizons

    def _learner(self, key: str, horizon: str, arm_col: int | None = None) -> int:
        """Row of a learner, created if needed; a learner of a horizon that is not configured
        (an arm added for it) starts with ``arm_col`` as its only arm."""
        self._create([key])
        lkey = self.learner_key(key, horizon)
        row = self.bandit.row_of(lkey)
        if row is None:
            if arm_col is None:
                msg = f"ensemble {key!r} has no learner for horizon {horizon!r}"
                raise StateError(msg)
            row = int(self.bandit.rows([lkey])[0])
            mask = np.zeros(len(self.bandit.arm_names), dtype=bool)
            mask[arm_col] = True
            self.bandit.set_active([row], mask)
            self._horizons[key].append(horizon)
        return row

    def rows(self, keys: Sequence[str], create: bool = True) -> np.ndarray:
        """Learner row per ensemble id (family_horizon: of its first horizon); -1 if absent."""
        if create:
            self._create(keys)
        if not self.per_horizon:
            return self.bandit.rows(keys, create=False)
        first = [self._horizons[k][0] if k in self._horizons else "" for k in keys]
        return self.learner_rows(keys, first, create=False)

    def learner_rows(
        self, keys: Sequence[str], horizons: Sequence[str], create: bool = True
    ) -> np.ndarray:
        """Learner row per (ensemble, horizon) of events; -1 where there is none (never
        created for a horizon that is not configured and has no arm)."""
        if create:
            self._create(keys)
        if not self.per_horizon:
            return self.bandit.rows(keys, create=False)
        # one learner key per distinct (ensemble, horizon): a batch has a handful of them
        pairs = list(zip(keys, horizons, strict=True))
        distinct = list(dict.fromkeys(pairs))
        found = self.bandit.rows([f"{k}{_SEP}{h}" for k, h in distinct], create=False)
        if len(distinct) == len(pairs):
            return found
        row_of = dict(zip(distinct, found.tolist(), strict=True))
        return np.fromiter((row_of[p] for p in pairs), dtype=np.int64, count=len(pairs))

    def learner_activity(self, horizons: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """(n, K) arms of each event's learner (``rows`` from :meth:`learner_rows`): its active
        arms, or for a learner not created yet (row -1) those it will start with (none when its
        horizon has no learner to create)."""
        r = np.asarray(rows, dtype=np.int64)
        out = self.bandit.active[np.maximum(r, 0)] if self.bandit.n_keys else None
        k = len(self.bandit.arm_names)
        if out is None:
            out = np.zeros((r.size, k), dtype=bool)
        new = np.flatnonzero(r < 0)
        if not new.size:
            return out
        if not self.per_horizon:
            out[new] = self.bandit.default_active
            return out
        configured = set(self.config.horizons)
        masks: dict[str, np.ndarray] = {}
        for i in new.tolist():
            h = horizons[i]
            if h not in masks:
                masks[h] = self.horizon_mask(h) if h in configured else np.zeros(k, dtype=bool)
            out[i] = masks[h]
        return out

    def arm_index(self) -> dict[str, int]:
        """Column of each arm name (global; per-learner activity is in ``bandit.active``)."""
        return {name: i for i, name in enumerate(self.bandit.arm_names)}

    # ---- weights ----------------------------------------------------------------------------
    def _horizon(self, key: str, horizon: str | None) -> str:
        if not self.per_horizon:
            return ""
        known = self._horizons.get(key, [])
        if horizon is None:
            last = self.last_horizon.get(key)
            horizon = last if last in known else (known[0] if known else "")
        return horizon

    def base_weights(self, key: str, horizon: str | None = None) -> dict[str, float]:
        """Base weights over the learner's active arms, normalised to sum 1."""
        h = self._horizon(key, horizon)
        row = self.bandit.row_of(self.learner_key(key, h))
        names = list(self.bandit.arm_names)
        if row is not None:
            active = self.bandit.active[row]
        elif self.per_horizon:
            active = self.horizon_mask(h)
        else:
            active = np.ones(len(names), dtype=bool)
        arms = [n for n, a in zip(names, active, strict=True) if a]
        source = self.base_overrides.get(key) or self.config.base_weights
        raw = np.ones(len(arms))
        if source:
            raw = np.array([max(0.0, float(source.get(a, 0.0))) for a in arms])
            if raw.sum() <= 0:
                raw = np.ones(len(arms))
        raw = raw / raw.sum()
        return dict(zip(arms, (float(x) for x in raw), strict=True))

    def snapshot(self, key: str, horizon: str | None = None) -> dict[str, Any]:
        """Everything an EnsembleWeights record publishes for ``key`` (family_horizon: for
        ``horizon``, by default the one last updated)."""
        return snapshot_many(self, [(key, horizon)])[0]

    def snapshots(self, key: str) -> list[dict[str, Any]]:
        """:meth:`snapshot` of every learner of ``key`` (one record per horizon)."""
        if not self.per_horizon:
            return [self.snapshot(key)]
        return [self.snapshot(key, h) for h in self.horizons_of(key)]

    # ---- updates ----------------------------------------------------------------------------
    def note_events(
        self,
        keys: Sequence[str],
        horizons: Sequence[str],
        times: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> None:
        """Remember the latest horizon per ensemble and event time per learner.

        ``rows`` (the learner row of each event, when the caller has them) makes this a few
        numpy operations over the distinct learners instead of a pass over the events.
        """
        if rows is None or not len(keys):
            # the last event of each ensemble names its horizon (a dict keeps the last value)
            self.last_horizon.update(zip(keys, horizons, strict=True))
            latest: dict[str, int] = {}
            for lkey, t in zip(self._learner_keys(keys, horizons), times.tolist(), strict=True):
                if t > latest.get(lkey, -(2**63)):
                    latest[lkey] = t
        else:
            r = np.asarray(rows, dtype=np.int64)
            t = np.asarray(times, dtype=np.int64)
            distinct, inverse = np.unique(r, return_inverse=True)
            most = np.full(distinct.size, np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(most, inverse, t)
            # each learner's last event, in event order: the last one per ensemble wins
            last_at = np.full(distinct.size, -1, dtype=np.int64)
            np.maximum.at(last_at, inverse, np.arange(r.size, dtype=np.int64))
            for i in last_at[np.argsort(last_at)].tolist():
                self.last_horizon[keys[i]] = horizons[i]
            names = self.bandit.keys
            latest = dict(zip([names[x] for x in distinct.tolist()], most.tolist(), strict=True))
        last = self.last_event_ms
        for lkey, ms in latest.items():
            if ms > last.get(lkey, -1):
                last[lkey] = int(ms)

    def _learner_keys(self, keys: Sequence[str], horizons: Sequence[str]) -> Sequence[str]:
        if not self.per_horizon:
            return keys
        return [f"{k}{_SEP}{h}" for k, h in zip(keys, horizons, strict=True)]

    def apply_bandit(
        self, rows: np.ndarray, arms: np.ndarray, rewards: np.ndarray, propensities: np.ndarray
    ) -> None:
        """Exp3-IX update with decision-time propensities (validated by the caller)."""
        self.bandit.update(rows, arms, rewards, propensities)

    def apply_full(self, rows: np.ndarray, reward_matrix: np.ndarray) -> None:
        """Hedge update; NaN entries are arms without a reported reward this round."""
        self.bandit.update_full(rows, reward_matrix)

    # ---- control ----------------------------------------------------------------------------
    def set_base_weights(self, key: str, weights: Mapping[str, float]) -> None:
        """Operator override of the ensemble's base weights (all its learners)."""
        self._create([key])
        self.base_overrides[key] = {str(k): float(v) for k, v in weights.items()}

    def add_arm(self, key: str, arm: str) -> None:
        """Enable ``arm`` for ``key`` at the average weight (probability exactly 1/(K+1)).

        In family_horizon mode ``family:horizon`` goes to that horizon's learner and a bare
        family name to every learner of the ensemble.
        """
        self._create([key])
        if not self.per_horizon:
            self.bandit.add_arm(arm, key=key)
            return
        names = [arm] if ":" in arm else [f"{arm}:{h}" for h in self._horizons[key]]
        for name in names:
            col = self.bandit.ensure_column(name)
            row = self.bandit.row_of(self.learner_key(key, horizon_of(name)))
            if row is None:
                self._learner(key, horizon_of(name), arm_col=col)
            else:
                self.bandit.add_arm(name, key=self.learner_key(key, horizon_of(name)))

    def has_arm(self, key: str, arm: str) -> bool:
        """True if ``arm`` is active in the learner of ``key`` it belongs to."""
        col = self.arm_index().get(arm)
        if col is None or not self.has_key(key):
            return False
        row = self.bandit.row_of(self.learner_key(key, horizon_of(arm)))
        return row is not None and bool(self.bandit.active[row, col])

    def remove_arm(self, key: str, arm: str) -> None:
        """Disable ``arm`` for ``key`` (family_horizon: in its horizon's learner)."""
        if not self.per_horizon:
            self.bandit.remove_arm(arm, key=key)
            return
        if key not in self._horizons or horizon_of(arm) not in self._horizons[key]:
            msg = f"arm {arm!r} is not an arm of a horizon of ensemble {key!r}"
            raise StateError(msg)
        self.bandit.remove_arm(arm, key=self.learner_key(key, horizon_of(arm)))

    def reset(self, key: str) -> None:
        """Forget everything learnt for ``key`` (base weight overrides included)."""
        if self.per_horizon:
            self._create([key])
            for h in list(self._horizons[key]):
                lkey = self.learner_key(key, h)
                row = self.bandit.row_of(lkey)
                assert row is not None  # every listed horizon has its learner row
                kept = self.bandit.active[row].copy()
                self.bandit.reset_key(lkey)
                mask = self.horizon_mask(h)
                # a learner of a horizon that is not configured keeps the arms added for it
                self.bandit.set_active([row], mask if mask.any() else kept)
                self.last_event_ms.pop(lkey, None)
        else:
            self.bandit.reset_key(key)
            self.last_event_ms.pop(key, None)
        self.base_overrides.pop(key, None)
        self.last_horizon.pop(key, None)

    # ---- persistence ------------------------------------------------------------------------
    def exp3ix_state(self, key: str) -> dict[str, Any]:
        """The learner state of ``key`` (family_horizon: ``{horizon: state}``), for display."""
        if not self.per_horizon:
            return self.bandit.get_key_state(key)
        get = self.bandit.get_key_state
        return {h: get(self.learner_key(key, h)) for h in self.horizons_of(key)}

    def get_key_state(self, key: str) -> dict[str, Any]:
        """JSON-able state of one ensemble (the changelog payload)."""
        return ensemble_state(self, key)

    def set_key_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`get_key_state`; also reads the 0.2 layout (see
        :mod:`processor.engine.ensemble_state`)."""
        try:
            load_ensemble_state(self, key, state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            msg = f"corrupt ensemble state for {key!r}: {exc}"
            raise StateError(msg) from exc
