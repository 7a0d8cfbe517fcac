"""Safety settings, the evidence behind the guardrails, emergency mode and the monitor."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from processor.errors import ConfigError, StateError
from processor.policy.monitor import PerformanceMonitor, SafetyState
from processor.policy.safety import (
    V_HIGH_CPA,
    V_LOW_ROAS,
    V_OVERSPEND,
    VIOLATION_NAMES,
    SafetyConstraints,
    local_hours,
)

NAN = float("nan")
HOUR = 3_600_000


def test_defaults_keep_the_original_limits() -> None:
    c = SafetyConstraints()
    assert (c.max_budget_deviation, c.min_roas, c.max_cpa_multiplier) == (0.2, 0.5, 2.0)
    assert (c.max_budget_risk, c.safety_threshold) == (0.1, 0.8)
    assert (c.emergency_confidence, c.recovery_confidence) == (0.95, 0.5)
    assert c.blacklisted_audiences == ()
    assert c.restricted_times == ()
    assert VIOLATION_NAMES == ("overspend", "low_roas", "high_cpa")


def test_from_dict_rejects_unknown_and_bad_values() -> None:
    c = SafetyConstraints.from_dict(
        {
            "blacklisted_audiences": ["kids"],
            "restricted_times": [[1, 3]],
            "pacing_profile": [1] * 24,
        }
    )
    assert c.blacklisted_audiences == ("kids",)
    assert c.restricted_times == ((1, 3),)
    with pytest.raises(ConfigError, match="unknown"):
        SafetyConstraints.from_dict({"max_budget_devation": 0.1})
    for bad in (
        {"max_budget_risk": -0.1},
        {"safety_threshold": 1.5},
        {"restricted_action": "pause"},
        {"restricted_times": [(25, 3)]},
        {"max_cpa_multiplier": math.inf},
        {"min_roas": -1.0},
        {"emergency_confidence": 0.4},  # below the recovery confidence
        {"recovery_confidence": 0.0},
        {"evidence_half_life_ms": -1},
        {"monitor_half_life_ms": 0},
        {"pacing_gain": 0.0},
        {"pacing_profile": [1.0] * 23},
        {"pacing_profile": [0.0] * 24},
        {"cvr_prior_conversions": math.nan},
    ):
        with pytest.raises(ConfigError):
            SafetyConstraints.from_dict(bad)


def test_min_roi_threshold_is_the_deprecated_name_of_min_roas() -> None:
    with pytest.warns(DeprecationWarning, match="min_roas"):
        c = SafetyConstraints.from_dict({"min_roi_threshold": 0.8})
    assert c.min_roas == 0.8
    with pytest.warns(DeprecationWarning, match="min_roas"):
        same = SafetyConstraints(min_roi_threshold=0.8, min_roas=0.8)
    assert same.min_roas == 0.8
    with (
        pytest.warns(DeprecationWarning, match="min_roas"),
        pytest.raises(ConfigError, match="disagree"),
    ):
        SafetyConstraints(min_roi_threshold=0.8, min_roas=0.6)
    for retired in ("safety_violation_limit", "emergency_recovery_outcomes", "monitor_alpha"):
        with pytest.warns(DeprecationWarning, match="no longer used"):
            SafetyConstraints.from_dict({retired: 5})


def test_restricted_hours_wrap_midnight_and_use_local_time() -> None:
    table = SafetyConstraints(restricted_times=((22, 2), (12, 13))).restricted_hour_table()
    assert set(np.flatnonzero(table)) == {22, 23, 0, 1, 12}
    t = np.array([23 * HOUR, 23 * HOUR, 0], dtype=np.int64)
    off = np.array([0, 120, -30], dtype=np.int64)
    assert local_hours(t, off).tolist() == [23, 1, 23]


def _observe(state: SafetyState, c: SafetyConstraints, rows: list[int], **cols: Any) -> Any:
    n = len(rows)
    base: dict[str, Any] = {
        "reward": np.zeros(n),
        "spend": np.ones(n),
        "revenue": np.zeros(n),
        "conversions": np.zeros(n),
        "clicks": np.zeros(n),
        "won": np.ones(n),
        "budget": np.full(n, NAN),
        "target_cpa": np.full(n, NAN),
        "event_time_ms": np.zeros(n, dtype=np.int64),
        "weight": np.ones(n),
    }
    for k, v in cols.items():
        base[k] = np.broadcast_to(np.asarray(v, dtype=base[k].dtype), (n,)).copy()
    return state.observe(c, np.asarray(rows, dtype=np.int64), **base)


def test_an_outcome_without_a_conversion_is_exposure_not_a_violation() -> None:
    c = SafetyConstraints(evidence_half_life_ms=0)
    s = SafetyState()
    # 50 impressions at 1 each, target CPA 100 (a conversion expected every 100 spend)
    res = _observe(s, c, [0] * 50, target_cpa=100.0)
    assert res.violations.tolist() == [0] * 50
    assert not res.in_emergency.any()
    p_roas, p_cpa = s.limit_probabilities(c, np.array([0]))
    # P(CPA > 200) = P(λ < 1/200), λ ~ Gamma(1/2, rate 50): only spend, no conversion yet
    assert p_cpa[0] == pytest.approx(stats.gamma.cdf(1 / 200, 0.5, scale=1 / 50))
    assert p_roas[0] == 0.0  # no conversion: the value of one is unknown


def test_cpa_and_roas_bounds_are_gamma_poisson() -> None:
    c = SafetyConstraints(evidence_half_life_ms=0, min_roas=0.5)
    s = SafetyState()
    # 3 conversions worth 40 each for 1,000 of spend: CPA ≈ 333, ROAS 0.12
    _observe(s, c, [0] * 1000, target_cpa=50.0)
    _observe(s, c, [0] * 3, spend=0.0, conversions=1.0, revenue=40.0)
    p_roas, p_cpa = s.limit_probabilities(c, np.array([0]))
    lam = stats.gamma(0.5 + 3, scale=1 / 1000)
    assert p_cpa[0] == pytest.approx(lam.cdf(1 / (2.0 * 50.0)))
    assert p_roas[0] == pytest.approx(lam.cdf(0.5 / 40.0))
    assert s.emergency[0]
    assert s.arrays["evidence"][0] == V_LOW_ROAS | V_HIGH_CPA
    assert s.cpa(np.array([0]))[0] == pytest.approx(1000 / 3)
    assert s.roas(np.array([0]))[0] == pytest.approx(0.12)


def test_emergency_is_entered_and_left_on_evidence() -> None:
    c = SafetyConstraints(evidence_half_life_ms=0, min_roas=0.0)
    s = SafetyState()
    # 600 spend without a conversion at target CPA 100: P(CPA > 200) = erf(√3) ≈ 0.986
    res = _observe(s, c, [0] * 600, target_cpa=100.0)
    assert res.entered_rows.tolist() == [0]
    assert (res.violations & V_HIGH_CPA != 0).all()
    # a few conversions bring the probability down, but not below the recovery level yet
    res = _observe(s, c, [0] * 2, spend=0.0, conversions=1.0)
    assert s.emergency[0]
    assert 0.5 < s.limit_probabilities(c, np.array([0]))[1][0] < 0.95
    # plenty more, at a CPA of 60: out
    res = _observe(s, c, [0] * 10, spend=60.0, conversions=1.0)
    assert res.left_rows.tolist() == [0]
    assert not res.in_emergency.any()
    assert s.arrays["evidence"][0] == 0


def test_overspend_is_a_per_outcome_violation_that_does_not_trip_emergency() -> None:
    c = SafetyConstraints(overspend_tolerance=0.1)
    s = SafetyState()
    res = _observe(s, c, [0, 0, 0], spend=[1.0, 1.11, 1.2], budget=[1.0, 1.0, NAN])
    assert res.violations.tolist() == [0, V_OVERSPEND, 0]
    assert not s.emergency[0]


def test_predicted_cvr_is_a_beta_posterior_around_the_prior() -> None:
    c = SafetyConstraints(cvr_prior_conversions=2.0, evidence_half_life_ms=0)
    s = SafetyState()
    _observe(s, c, [0, 1] * 400, won=[1.0, 0.0] * 400, conversions=[0.0, 0.0] * 400)
    _observe(s, c, [0] * 4, conversions=1.0)
    p = s.predicted_cvr(c, np.array([0, 1, 2]), np.array([0.01, 0.01, NAN]))
    assert p[0] == pytest.approx((2 + 4) / (2 / 0.01 + 404))
    assert p[1] == pytest.approx(0.01)  # lost auctions say nothing about conversion rates
    assert p[2] == pytest.approx(1.0)  # no prior: the cap does not bind


def test_predicted_cvr_clips_odd_priors_to_its_range() -> None:
    """A base bid / target CPA that is NaN (no target), infinite (target 0), negative or out of
    [1e-6, 1] gives the prior the clip of ``nan_to_num(prior, nan=1)`` to [1e-6, 1]."""
    c = SafetyConstraints(cvr_prior_conversions=2.0)
    s = SafetyState()
    s.ensure_rows(1)
    odd = np.array([NAN, np.inf, -np.inf, -1.0, 0.0, 1e-9, 0.25, 3.0])
    p = s.predicted_cvr(c, np.zeros(odd.size, dtype=np.int64), odd)
    want = np.clip(np.nan_to_num(odd, nan=1.0), 1e-6, 1.0)  # no evidence: the prior's mean
    np.testing.assert_allclose(p, want, rtol=1e-12)


def test_evidence_decays_with_event_time() -> None:
    c = SafetyConstraints(evidence_half_life_ms=HOUR)
    s = SafetyState()
    _observe(s, c, [0] * 10, event_time_ms=0)
    _observe(s, c, [0], event_time_ms=2 * HOUR, spend=0.0, won=0.0)
    assert s.arrays["spend"][0] == pytest.approx(10 / 4)
    assert s.arrays["outcomes"][0] == pytest.approx(10 / 4 + 1)
    assert s.arrays["clock_ms"][0] == 2 * HOUR


OUTCOMES = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.floats(0, 20, allow_nan=False),
        st.integers(0, 1),
        st.integers(0, 5 * HOUR),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(events=OUTCOMES, split=st.integers(0, 30), half_life=st.sampled_from([0, HOUR]))
def test_statistics_do_not_depend_on_batching_and_retract_exactly(
    events: list[tuple[int, float, int, int]], split: int, half_life: int
) -> None:
    c = SafetyConstraints(evidence_half_life_ms=half_life)
    rows = [e[0] for e in events]
    cols = {
        "spend": [e[1] for e in events],
        "conversions": [float(e[2]) for e in events],
        "revenue": [30.0 * e[2] for e in events],
        "reward": [30.0 * e[2] - e[1] for e in events],
        "event_time_ms": [e[3] for e in events],
    }

    def part(sl: slice) -> dict[str, Any]:
        return {k: v[sl] for k, v in cols.items()}

    whole, pieces = SafetyState(), SafetyState()
    _observe(whole, c, rows, **cols)
    split = min(split, len(events))
    for sl in (slice(0, split), slice(split, None)):
        if rows[sl]:
            _observe(pieces, c, rows[sl], **part(sl))
    r = np.arange(3)
    for k in ("outcomes", "spend", "conversions", "revenue", "recent_sum", "base_sq"):
        np.testing.assert_allclose(whole.arrays[k][r], pieces.arrays[k][r], rtol=1e-9, atol=1e-9)
    # apply everything, take the second part back: the first part's statistics are left
    # (as of the later clock when the evidence decays)
    first, undo = SafetyState(), SafetyState()
    if rows[:split]:
        _observe(first, c, rows[:split], **part(slice(0, split)))
    _observe(undo, c, rows, **cols)
    if rows[split:]:
        back = np.full(len(rows) - split, -1.0)
        _observe(undo, c, rows[split:], weight=back, **part(slice(split, None)))
    first.ensure_rows(3)
    for k in ("outcomes", "spend", "conversions", "revenue"):
        shift = (undo.arrays["clock_ms"][r] - first.arrays["clock_ms"][r]).astype(float)
        decay = 0.5 ** (shift / half_life) if half_life else 1.0
        np.testing.assert_allclose(
            first.arrays[k][r] * decay, undo.arrays[k][r], rtol=1e-9, atol=1e-9
        )


def test_counts_retract_exactly_and_flags_follow_the_statistics() -> None:
    c = SafetyConstraints(evidence_half_life_ms=0)
    s = SafetyState()
    _observe(s, c, [0] * 20, spend=2.0, target_cpa=100.0)  # P(CPA > 200) = erf(√0.2) < 0.5
    before = {k: v[0] for k, v in s.arrays.items()}
    res = _observe(s, c, [0] * 400, spend=2.0, target_cpa=100.0)
    assert res.entered_rows.tolist() == [0]
    res = _observe(s, c, [0] * 400, spend=2.0, weight=-1.0)
    assert res.left_rows.tolist() == [0]
    for k, v in before.items():
        assert s.arrays[k][0] == v, k


def test_monitor_flags_a_credible_drop_below_the_baseline() -> None:
    c = SafetyConstraints(min_observations=20, monitor_half_life_ms=HOUR)
    s = SafetyState()
    assert isinstance(s, PerformanceMonitor)
    t = np.arange(2000, dtype=np.int64) * 60_000  # a day and a half at one per minute
    res = _observe(
        s, c, [0] * 2000, reward=np.where(np.arange(2000) % 2, 1.2, 0.8), event_time_ms=t
    )
    assert not res.degraded.any()
    later = t[-1] + 60_000 * (1 + np.arange(300))
    res = _observe(s, c, [0] * 300, reward=0.2, event_time_ms=later)
    assert res.degraded.all()


def test_row_state_round_trips_through_json_and_0_2_states_restore() -> None:
    c = SafetyConstraints()
    s = SafetyState()
    _observe(s, c, [0, 1, 1], spend=[1.0, 2.0, 3.0], target_cpa=[5.0, NAN, NAN])
    s.set_emergency(1, True)
    blob = json.loads(json.dumps(s.get_row_states(np.array([0, 1]))))
    t = SafetyState()
    t.set_row_states(np.array([0, 1]), blob)
    assert t.get_row_states(np.array([0, 1])) == s.get_row_states(np.array([0, 1]))
    assert blob[1]["target_cpa"] is None and blob[1]["manual"] is True
    legacy = {
        "emergency": True,
        "fast": 1.0,
        "fast_w": 1.0,
        "base": 0.5,
        "base_w": 1.0,
        "spend": 2.0,
        "revenue": 1.0,
        "conv": 0.1,
        "n": 9,
        "violation_run": 5,
        "healthy_run": 0,
    }
    t.set_row_state(2, legacy)
    assert t.emergency[2] and not t.manual[2]
    assert t.arrays["spend"][2] == 0.0  # EWMAs are not sufficient statistics: no evidence
    with pytest.raises(StateError):
        t.set_row_state(3, {"emergency": False})
    s.reset_row(1)
    assert not s.emergency[1] and math.isnan(s.arrays["target_cpa"][1])
