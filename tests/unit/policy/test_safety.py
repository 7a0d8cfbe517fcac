"""Safety constraints, outcome-side checks, emergency mode and the performance monitor."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.errors import ConfigError, StateError
from processor.policy.safety import (
    V_HIGH_CPA,
    V_LOW_ROI,
    V_OVERSPEND,
    VIOLATION_NAMES,
    PerformanceMonitor,
    SafetyConstraints,
    SafetyState,
    local_hours,
)

NAN = float("nan")


def test_defaults_are_the_original_ones() -> None:
    c = SafetyConstraints()
    assert (c.max_budget_deviation, c.min_roi_threshold, c.max_cpa_multiplier) == (0.2, 0.5, 2.0)
    assert (c.max_budget_risk, c.safety_threshold, c.safety_violation_limit) == (0.1, 0.8, 5)
    assert c.blacklisted_audiences == ()
    assert c.restricted_times == ()


def test_from_dict_rejects_unknown_and_bad_values() -> None:
    c = SafetyConstraints.from_dict(
        {"blacklisted_audiences": ["kids"], "restricted_times": [[1, 3]]}
    )
    assert c.blacklisted_audiences == ("kids",)
    assert c.restricted_times == ((1, 3),)
    with pytest.raises(ConfigError, match="unknown"):
        SafetyConstraints.from_dict({"max_budget_devation": 0.1})
    for bad in (
        {"max_budget_risk": -0.1},
        {"safety_threshold": 1.5},
        {"safety_violation_limit": 0},
        {"restricted_action": "pause"},
        {"restricted_times": [(25, 3)]},
        {"monitor_alpha": 0.0},
        {"max_cpa_multiplier": math.inf},
    ):
        with pytest.raises(ConfigError):
            SafetyConstraints.from_dict(bad)


def test_restricted_hours_wrap_midnight_and_use_local_time() -> None:
    table = SafetyConstraints(restricted_times=((22, 2), (12, 13))).restricted_hour_table()
    assert set(np.flatnonzero(table)) == {22, 23, 0, 1, 12}
    t = np.array([0, 0, 23 * 3_600_000], dtype=np.int64)  # 00:00 UTC, 00:00 UTC, 23:00 UTC
    off = np.array([0, -60, 90], dtype=np.int64)
    assert local_hours(t, off).tolist() == [0, 23, 0]


def _reference(
    c: SafetyConstraints, rows: np.ndarray, cols: dict[str, np.ndarray], n_rows: int
) -> tuple[list[int], list[bool], dict[str, np.ndarray]]:
    """One event at a time, straight from the definitions."""
    ma, ba = c.monitor_alpha, c.baseline_alpha
    s = {
        k: np.zeros(n_rows)
        for k in ("fast", "fast_w", "base", "base_w", "spend", "revenue", "conv")
    }
    n = np.zeros(n_rows, dtype=int)
    vrun = np.zeros(n_rows, dtype=int)
    hrun = np.zeros(n_rows, dtype=int)
    em = np.zeros(n_rows, dtype=bool)
    viol_out, em_out = [], []
    for i, r in enumerate(rows):
        for k, x, a in (
            ("fast", cols["reward"][i], ma),
            ("fast_w", 1.0, ma),
            ("base", cols["reward"][i], ba),
            ("base_w", 1.0, ba),
            ("spend", cols["spend"][i], ma),
            ("revenue", cols["revenue"][i], ma),
            ("conv", cols["conv"][i], ma),
        ):
            s[k][r] = (1 - a) * s[k][r] + a * x
        n[r] += 1
        v = 0
        if cols["spend"][i] > cols["budget"][i] * (1 + c.overspend_tolerance):
            v |= int(V_OVERSPEND)
        warm = n[r] >= c.min_observations
        roi = s["revenue"][r] / s["spend"][r] if s["spend"][r] > 0 else math.inf
        if warm and roi < c.min_roi_threshold:
            v |= int(V_LOW_ROI)
        tgt = cols["target"][i]
        if s["conv"][r] > 0:
            cpa = s["spend"][r] / s["conv"][r]
        else:
            cpa = math.inf if s["spend"][r] > 0 else 0.0
        if warm and not math.isnan(tgt) and cpa > c.max_cpa_multiplier * tgt:
            v |= int(V_HIGH_CPA)
        if v:
            vrun[r] += 1
            hrun[r] = 0
            if vrun[r] >= c.safety_violation_limit:
                em[r] = True
        else:
            hrun[r] += 1
            vrun[r] = 0
            if c.emergency_recovery_outcomes and hrun[r] >= c.emergency_recovery_outcomes:
                em[r] = False
        viol_out.append(v)
        em_out.append(bool(em[r]))
    return viol_out, em_out, {**s, "n": n, "violation_run": vrun, "healthy_run": hrun}


def _events(seed: int, n: int, n_rows: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_rows, n)
    spend = rng.random(n)
    revenue = rng.random(n) * 1.4 * rng.integers(0, 2, n)
    return rows, {
        "reward": revenue - spend,
        "spend": spend,
        "revenue": revenue,
        "conv": (revenue > 0).astype(float),
        "budget": np.where(rng.random(n) < 0.5, 0.95, NAN),
        "target": np.where(rng.random(n) < 0.5, 0.4, NAN),
    }


def _observe(
    state: SafetyState, c: SafetyConstraints, rows: np.ndarray, cols: dict[str, Any]
) -> Any:
    return state.observe(
        c,
        rows,
        cols["reward"],
        cols["spend"],
        cols["revenue"],
        cols["conv"],
        cols["budget"],
        cols["target"],
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 400),
    n_rows=st.integers(1, 6),
    split=st.integers(1, 50),
    alpha=st.sampled_from([0.001, 0.05, 0.3, 0.9]),
)
def test_batch_equals_one_by_one_reference(
    seed: int, n: int, n_rows: int, split: int, alpha: float
) -> None:
    c = SafetyConstraints(
        min_observations=3,
        safety_violation_limit=2,
        emergency_recovery_outcomes=3,
        monitor_alpha=alpha,
        baseline_alpha=alpha / 3,
    )
    rows, cols = _events(seed, n, n_rows)
    ref_v, ref_em, ref_state = _reference(c, rows, cols, n_rows)
    whole = SafetyState()
    out = _observe(whole, c, rows, cols)
    assert out.violations.tolist() == ref_v
    assert out.in_emergency.tolist() == ref_em
    pieces = SafetyState()
    got_em: list[bool] = []
    for s in range(0, n, split):
        part = {k: v[s : s + split] for k, v in cols.items()}
        got_em += _observe(pieces, c, rows[s : s + split], part).in_emergency.tolist()
    assert got_em == ref_em
    for k, v in ref_state.items():
        np.testing.assert_allclose(whole.arrays[k][:n_rows], v, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(pieces.arrays[k][:n_rows], v, rtol=1e-9, atol=1e-12)
    assert whole.emergency[:n_rows].tolist() == pieces.emergency[:n_rows].tolist()


def _one(state: SafetyState, c: SafetyConstraints, *, spend: float, budget: float) -> Any:
    f = np.array
    return state.observe(c, f([0]), f([0.0]), f([spend]), f([0.0]), f([0.0]), f([budget]), f([NAN]))


def test_emergency_enters_at_limit_and_leaves_after_healthy_outcomes() -> None:
    c = SafetyConstraints(
        safety_violation_limit=3, emergency_recovery_outcomes=4, min_observations=10**9
    )
    s = SafetyState()
    flags = [_one(s, c, spend=2.0, budget=1.0) for _ in range(3)]
    assert [bool(f.in_emergency[0]) for f in flags] == [False, False, True]
    assert flags[-1].entered_rows.tolist() == [0]
    assert flags[0].violations[0] == V_OVERSPEND
    healthy = [_one(s, c, spend=0.5, budget=1.0) for _ in range(4)]
    assert [bool(f.in_emergency[0]) for f in healthy] == [True, True, True, False]
    assert healthy[-1].left_rows.tolist() == [0]
    # A violation inside the recovery window restarts the healthy count.
    for _ in range(3):
        _one(s, c, spend=2.0, budget=1.0)
    for _ in range(3):
        _one(s, c, spend=0.5, budget=1.0)
    _one(s, c, spend=2.0, budget=1.0)
    assert bool(s.emergency[0])
    assert [bool(_one(s, c, spend=0.5, budget=1.0).in_emergency[0]) for _ in range(4)][-1] is False


def test_recovery_zero_means_only_a_command_clears() -> None:
    c = SafetyConstraints(
        safety_violation_limit=1, emergency_recovery_outcomes=0, min_observations=10**9
    )
    s = SafetyState()
    _one(s, c, spend=2.0, budget=1.0)
    for _ in range(200):
        _one(s, c, spend=0.1, budget=1.0)
    assert bool(s.emergency[0])
    s.set_emergency(0, False)
    assert not bool(s.emergency[0])
    assert s.arrays["violation_run"][0] == 0


def test_roi_and_cpa_violations_after_warmup() -> None:
    c = SafetyConstraints(min_observations=5, monitor_alpha=0.5)
    s = SafetyState()
    f = np.array
    n = 6
    out = s.observe(
        c,
        np.zeros(n, dtype=np.int64),
        f([0.0] * n),
        f([1.0] * n),
        f([0.2] * n),
        f([0.0] * n),
        f([NAN] * n),
        f([0.3] * n),
    )
    assert out.violations[:4].tolist() == [0, 0, 0, 0]
    assert out.violations[4] == V_LOW_ROI | V_HIGH_CPA
    assert VIOLATION_NAMES == ("overspend", "low_roi", "high_cpa")
    assert s.roi_below_floor(c, np.array([0])).tolist() == [True]


def test_monitor_baseline_trend_and_degradation() -> None:
    c = SafetyConstraints(
        min_observations=20, monitor_alpha=0.2, baseline_alpha=0.01, safety_threshold=0.8
    )
    s = SafetyState()
    zeros = np.zeros(300)
    rows = np.zeros(300, dtype=np.int64)
    nan = np.full(300, NAN)
    reward = np.r_[np.full(200, 1.0), np.full(100, 0.5)]
    out = s.observe(c, rows, reward, zeros, zeros, zeros, nan, nan)
    assert not out.degraded[:200].any()
    assert out.degraded[-1]
    r0 = np.array([0])
    assert s.trend(r0)[0] < -0.1
    assert 0.6 < s.baseline(r0)[0] < 0.9
    assert s.recent(r0)[0] == pytest.approx(0.5)
    assert s.degraded(c, r0).tolist() == [True]
    assert isinstance(s, PerformanceMonitor)


def test_row_state_round_trips_through_json() -> None:
    c = SafetyConstraints(min_observations=3)
    s = SafetyState()
    rows, cols = _events(3, 50, 2)
    _observe(s, c, rows, cols)
    blob = json.loads(json.dumps(s.get_row_state(1)))
    t = SafetyState()
    t.set_row_state(4, blob)
    assert t.get_row_state(4) == s.get_row_state(1)
    with pytest.raises(StateError):
        t.set_row_state(0, {"emergency": True})
    t.reset_row(4)
    assert t.get_row_state(4)["n"] == 0
