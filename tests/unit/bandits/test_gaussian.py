"""The keyed Normal-Inverse-Gamma value posterior: formulas, exact propensities, retractions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from processor.bandits import KeyedNormalGamma
from processor.bandits.base import BanditInputError
from processor.bandits.normal_gamma import (
    normal_gamma_posterior,
    student_t_marginal,
    student_t_propensities,
)
from processor.errors import ConfigError, StateError

ARMS = ["a", "b", "c"]


def _reference(m: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """P(arm i is the argmax) by adaptive scipy.integrate.quad over many sub-intervals."""
    z = np.array([-1e4, -1e3, -100, -30, -10, -6, -4, -2, -1, -0.5, 0, 0.5, 1, 2, 4, 6, 10, 30])
    z = np.concatenate([z, [100, 1e3, 1e4]])
    pts = np.unique((m[:, None] + s[:, None] * z).ravel())
    out = []
    for i in range(m.size):

        def f(x: float, i: int = i) -> float:
            val = float(stats.t.pdf(x, v[i], m[i], s[i]))
            for j in range(m.size):
                if j != i:
                    val *= float(stats.t.cdf(x, v[j], m[j], s[j]))
            return val

        total = integrate.quad(f, -np.inf, pts[0], epsabs=1e-15, limit=200)[0]
        for lo, hi in itertools.pairwise(pts):
            total += integrate.quad(f, lo, hi, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
        total += integrate.quad(f, pts[-1], np.inf, epsabs=1e-15, limit=200)[0]
        out.append(total)
    return np.array(out)


CASES = [
    ([0.0, 0.0], [1.0, 1.0], [3.0, 3.0]),  # symmetric, heavy tails
    ([0.0, 0.1, 0.2, 0.3], [1.0, 1.0, 1.0, 1.0], [50.0, 60.0, 70.0, 80.0]),
    ([0.0, 1e-6], [1e-6, 1.0], [1000.0, 2.5]),  # a needle next to a wide heavy-tailed arm
    ([0.0, 0.5, -0.2], [0.01, 3.0, 0.2], [2.2, 3.0, 500.0]),
    ([10.0, 10.001, 9.999, 10.0], [1e-3, 1e-3, 2e-3, 1.5e-3], [1e5, 1e5, 1e4, 2e5]),
    ([1.0, 2.0], [0.1, 0.1], [100.0, 100.0]),  # 10 scales apart
    ([0.3, 0.31, 0.29], [0.05, 0.02, 0.2], [20.0, 400.0, 6.0]),
]


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize(("loc", "scale", "dof"), CASES)
def test_propensities_match_quad_reference(
    loc: list[float], scale: list[float], dof: list[float]
) -> None:
    m, s, v = (np.array(x) for x in (loc, scale, dof))
    got = student_t_propensities(m, s, v)
    ref = _reference(m, s, v)
    assert abs(ref.sum() - 1.0) < 1e-8
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


def test_propensities_match_monte_carlo_of_posteriors_from_data() -> None:
    # Skewed rewards like ad profit: mostly a small loss, now and then a large gain.
    rng = np.random.default_rng(3)
    vb = KeyedNormalGamma(ARMS, prior_shape=5.0)
    rows = vb.rows(["k"] * 3000)
    arms = rng.integers(0, 3, 3000)
    conv = rng.random(3000) < np.array([0.02, 0.03, 0.025])[arms]
    vb.update(rows, arms, np.where(conv, 40.0, -1.0))
    p = vb.propensities(rows[:1])[0]
    draws = 400_000
    loc, scale, dof = vb.marginals(rows[:1])
    theta = loc + scale * rng.standard_t(np.broadcast_to(dof, (draws, 3)))
    mc = np.bincount(theta.argmax(axis=1), minlength=3) / draws
    se = np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(mc - p) < 5 * se + 1e-9), (p, mc)
    picks = vb.select_sampled(np.repeat(rows[:1], 100_000), np.random.default_rng(4))
    share = np.bincount(picks, minlength=3) / 100_000
    assert np.abs(share - p).max() < 0.01


def test_posterior_matches_the_textbook_update() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 40)
    prior = {"prior_mean": 1.0, "prior_count": 2.0, "prior_shape": 3.0, "prior_rate": 4.0}
    vb = KeyedNormalGamma(["only"], prior="fixed", **prior)
    rows = vb.rows(["k"] * x.size)
    vb.update(rows, np.zeros(x.size, dtype=np.int64), x)
    mu, kappa, alpha, beta = (v[0, 0] for v in vb.posterior(rows[:1]))
    n, xbar = x.size, x.mean()
    assert kappa == pytest.approx(2.0 + n)
    assert mu == pytest.approx((2.0 * 1.0 + n * xbar) / (2.0 + n))
    assert alpha == pytest.approx(3.0 + n / 2)
    expected_beta = (
        4.0 + 0.5 * ((x - xbar) ** 2).sum() + 2.0 * n * (xbar - 1.0) ** 2 / (2 * (2.0 + n))
    )
    assert beta == pytest.approx(expected_beta)
    loc, scale, dof = student_t_marginal(mu, kappa, alpha, beta)
    assert loc == mu
    assert dof == pytest.approx(2 * alpha)
    assert scale == pytest.approx(np.sqrt(beta / (alpha * kappa)))


def test_pooled_prior_is_scale_free() -> None:
    rng = np.random.default_rng(1)
    rewards = np.where(rng.random(500) < 0.03, 30.0, -1.0)
    arms = rng.integers(0, 3, 500)
    probs = []
    for scale in (1.0, 1000.0):
        vb = KeyedNormalGamma(ARMS, prior_shape=10.0, prior_rate=1e-300)
        rows = vb.rows(["k"] * 500)
        vb.update(rows, arms, rewards * scale)
        probs.append(vb.propensities(rows[:1])[0])
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-9)


def test_pooled_prior_keeps_a_few_losses_uncertain() -> None:
    """An arm with 30 unconverted outcomes is not confidently worse than a converting arm."""
    vb = KeyedNormalGamma(["x", "y"], prior_shape=25.0)
    rows = vb.rows(["k"] * 1030)
    y = np.where(np.arange(1000) % 40 == 0, 40.0, -1.0)  # mean ~0.03
    arms = np.r_[np.zeros(30), np.ones(1000)].astype(np.int64)
    rewards = np.r_[-np.ones(30), y]
    vb.update(rows, arms, rewards)
    p = vb.propensities(rows[:1])[0]
    assert 0.05 < p[0] < 0.5  # fixed tiny-variance prior would give ~0
    fixed = KeyedNormalGamma(["x", "y"], prior="fixed")
    rows_f = fixed.rows(["k"] * 1030)
    fixed.update(rows_f, arms, rewards)
    assert fixed.propensities(rows_f[:1])[0][0] < 1e-3


EVENTS = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 2),
        st.floats(-50, 50, allow_nan=False),
        st.integers(0, 10_000_000),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(evs=EVENTS, discount=st.sampled_from([1.0, 0.9, 0.5]), split=st.integers(0, 40))
def test_batches_and_order_do_not_matter_and_retraction_restores(
    evs: list[tuple[int, int, float, int]], discount: float, split: int
) -> None:
    def table() -> KeyedNormalGamma:
        return KeyedNormalGamma(ARMS, discount=discount, discount_unit_ms=1_000_000)

    split = min(split, len(evs))
    keys = [f"k{e[0]}" for e in evs]
    arms = np.array([e[1] for e in evs])
    x = np.array([e[2] for e in evs])
    t = np.array([e[3] for e in evs])
    whole = table()
    whole.update(whole.rows(keys), arms, x, t)
    parts = table()
    for sl in (slice(0, split), slice(split, None)):
        rows = parts.rows(keys[sl])
        parts.update(rows, arms[sl], x[sl], t[sl])
    rev = table()
    rev.update(rev.rows(keys[::-1]), arms[::-1], x[::-1], t[::-1])
    for other in (parts, rev):
        for k in set(keys):
            a = np.array(whole.stats(whole.rows([k])))
            b = np.array(other.stats(other.rows([k])))
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    # observe(+1) then observe(-1) of the second half restores the first half's statistics
    first = table()
    first.update(first.rows(keys[:split]), arms[:split], x[:split], t[:split])
    undo = table()
    undo.update(undo.rows(keys), arms, x, t)
    back = -np.ones(len(keys) - split)
    undo.update(undo.rows(keys[split:]), arms[split:], x[split:], t[split:], weight=back)
    for k in set(keys):
        a = np.array(first.stats(first.rows([k])))
        b = np.array(undo.stats(undo.rows([k])))
        if discount < 1.0:  # the undone events may have moved the clock: compare as of it
            shift = undo.last_event_ms[undo.rows([k])] - first.last_event_ms[first.rows([k])]
            a = a * discount ** (shift / 1_000_000)
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-6 * (1 + np.abs(x).max() ** 2))


def test_integer_statistics_retract_exactly() -> None:
    vb = KeyedNormalGamma(ARMS)
    rows = vb.rows(["k"] * 6)
    arms = np.array([0, 1, 2, 0, 1, 2])
    vb.update(rows[:3], arms[:3], [1.0, -2.0, 5.0])
    before = [s.copy() for s in vb.stats(rows[:1])]
    vb.update(rows[3:], arms[3:], [3.0, 7.0, -1.0])
    vb.update(rows[3:], arms[3:], [3.0, 7.0, -1.0], weight=[-1.0, -1.0, -1.0])
    for a, b in zip(before, vb.stats(rows[:1]), strict=True):
        np.testing.assert_array_equal(a, b)
    # a retraction of something never applied cannot make a posterior improper
    vb.update(rows[:1], [0], [100.0], weight=[-1.0])
    n, s, q = vb.stats(rows[:1])
    assert n[0, 0] >= 0 and q[0, 0] >= s[0, 0] ** 2 / max(n[0, 0], 1e-300) - 1e-9
    assert np.isfinite(vb.propensities(rows[:1])).all()


def test_state_round_trips_and_arms() -> None:
    vb = KeyedNormalGamma(ARMS, discount=0.9)
    rows = vb.rows(["k1", "k2", "k1"])
    vb.update(rows, [0, 1, 2], [1.5, -0.5, 2.0], [10, 20, 30])
    vb.remove_arm("b", key="k1")
    clone = KeyedNormalGamma.from_dict(vb.to_dict())
    assert clone.get_key_state("k1") == vb.get_key_state("k1")
    other = KeyedNormalGamma(ARMS, discount=0.9)
    other.set_key_state("k1", vb.get_key_state("k1"))
    np.testing.assert_array_equal(
        other.propensities(other.rows(["k1"])), vb.propensities(vb.rows(["k1"]))
    )
    assert vb.propensities(vb.rows(["k1"]))[0][1] == 0.0
    vb.add_arm("b", key="k1")
    assert vb.stats(vb.rows(["k1"]))[0][0, 1] == 0.0
    with pytest.raises(StateError):
        vb.add_arm("b", key="k1")
    vb.reset_key("k1")
    assert vb.version[vb.row_of("k1")] == 0
    with pytest.raises(StateError):
        other.set_key_state("k9", {"arm_names": ["a"]})


def test_bad_input_changes_nothing() -> None:
    vb = KeyedNormalGamma(ARMS)
    rows = vb.rows(["k"])
    for args in (([0], [np.nan]), ([5], [1.0]), ([0], [1.0, 2.0])):
        with pytest.raises(BanditInputError):
            vb.update(rows, *args)
    with pytest.raises(BanditInputError):
        vb.update(rows, [0], [1.0], weight=[np.inf])
    assert vb.version[0] == 0
    for bad in ({"prior_count": 0.0}, {"prior_shape": -1.0}, {"prior": "flat"}, {"discount": 2}):
        with pytest.raises(ConfigError):
            KeyedNormalGamma(ARMS, **bad)  # type: ignore[arg-type]


def test_normal_gamma_posterior_without_data_is_the_prior() -> None:
    mu, k, a, b = normal_gamma_posterior(0.0, 0.0, 0.0, mu0=2.0, kappa0=3.0, alpha0=4.0, beta0=5.0)
    assert (float(mu), float(k), float(a), float(b)) == (2.0, 3.0, 4.0, 5.0)
