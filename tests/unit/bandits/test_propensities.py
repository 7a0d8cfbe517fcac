"""Exact Thompson propensities against independent numerical integration and closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import integrate, special, stats

from processor.bandits.base import beta_credible_interval, thompson_propensities


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(arm i is the argmax) by adaptive scipy.integrate.quad on many sub-intervals."""
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    z = np.array([-60, -40, -25, -16, -10, -6, -4, -2, -1, 0, 1, 2, 4, 6, 10, 16, 25, 40, 60])
    graded = 10.0 ** -np.arange(1, 16)
    pts = np.concatenate(
        [[0.0, 1.0], (mean[:, None] + sd[:, None] * z).ravel(), graded, 1 - graded]
    )
    pts = np.unique(np.clip(pts, 0.0, 1.0))
    out = []
    for i in range(a.size):

        def f(x: float, i: int = i) -> float:
            v = np.exp(
                special.xlogy(a[i] - 1, x)
                + special.xlog1py(b[i] - 1, -x)
                - special.betaln(a[i], b[i])
            )
            for j in range(a.size):
                if j != i:
                    v *= special.betainc(a[j], b[j], x)
            return float(v)

        total = 0.0
        for lo, hi in itertools.pairwise(pts):
            total += integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-11, limit=200)[0]
        out.append(total)
    return np.array(out)


CASES = [
    ([1, 1], [1, 1]),  # flat priors
    ([1, 2, 3, 4], [5, 4, 3, 2]),  # small counts
    ([3, 8, 2], [9, 4, 7]),
    ([1e6, 1e6 + 1000], [1e6, 1e6]),  # large counts, close
    ([1e6, 2], [1e6, 1]),  # very unequal widths
    ([500, 520, 480, 510], [500, 480, 520, 490]),  # nearly equal arms
    ([30000, 30100], [70000, 69900]),
    ([1e6, 1e6, 3], [3e6, 3.001e6, 9]),  # two peaked arms and a broad one
    ([200_001, 199_999, 200_000], [800_000, 800_002, 800_001]),  # peaked, nearly equal
    ([5.69, 578.69, 314199.16], [1.2, 23087.45, 52699.34]),  # fractional (discounted) counts
    ([2.57, 95.83, 2.62, 94.7], [3.08, 129.16, 2.15, 626.75]),
    ([1.3, 40.2], [7.7, 1.4]),
]


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize(("alpha", "beta"), CASES)
def test_matches_quad_reference(alpha: list[float], beta: list[float]) -> None:
    a = np.array(alpha, dtype=float)
    b = np.array(beta, dtype=float)
    got = thompson_propensities(a, b)
    ref = _reference(a, b)
    assert abs(ref.sum() - 1.0) < 1e-8  # the reference itself is sound
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


def test_exponential_limit_closed_form() -> None:
    # Beta(1, n) ≈ Exp(n): P(X0 is max) = 1 − λ0/(λ0+λ1) − λ0/(λ0+λ2) + λ0/(λ0+λ1+λ2).
    lam = np.array([1e6, 1e5, 1e4])
    got = thompson_propensities(np.ones(3), lam)
    l0, l1, l2 = lam
    expected0 = 1 - l0 / (l0 + l1) - l0 / (l0 + l2) + l0 / (l0 + l1 + l2)
    assert got[0] == pytest.approx(expected0, abs=2e-6)


@pytest.mark.parametrize("k", [1, 5, 50, 1000])
def test_uniform_against_power(k: int) -> None:
    # Beta(k, 1) has CDF x^k: P(U > X) = 1/(k+1).
    got = thompson_propensities(np.array([1.0, k]), np.array([1.0, 1.0]))
    assert got[0] == pytest.approx(1 / (k + 1), abs=1e-9)


def test_two_arms_integer_closed_form() -> None:
    # P(X > Y) for Beta(a1,b1), Beta(a2,b2) integers: Evan Miller's finite sum.
    a1, b1, a2, b2 = 13, 7, 9, 11
    i = np.arange(a1)
    total = np.exp(
        special.betaln(a2 + i, b1 + b2)
        - np.log(b1 + i)
        - special.betaln(1 + i, b1)
        - special.betaln(a2, b2)
    ).sum()
    got = thompson_propensities(np.array([a2, a1], float), np.array([b2, b1], float))
    assert got[1] == pytest.approx(total, abs=1e-9)  # arm 1 is (a1, b1)


def test_identical_arms_are_symmetric() -> None:
    got = thompson_propensities(np.full(4, 37.0), np.full(4, 91.0))
    np.testing.assert_allclose(got, 0.25, atol=1e-12)


def test_inactive_arms_and_rows() -> None:
    a = np.array([[5.0, 50.0, 3.0], [2.0, 2.0, 2.0], [4.0, 9.0, 1.0]])
    b = np.array([[5.0, 1.0, 3.0], [2.0, 2.0, 2.0], [4.0, 9.0, 1.0]])
    active = np.array([[True, False, True], [True, True, True], [False, True, False]])
    got = thompson_propensities(a, b, active)
    assert got[0, 1] == 0.0
    assert got[0, 0] == pytest.approx(0.5, abs=1e-9)
    np.testing.assert_allclose(got[1], 1 / 3, atol=1e-9)
    np.testing.assert_array_equal(got[2], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)


def test_vectorized_rows_equal_single_rows() -> None:
    rng = np.random.default_rng(5)
    a = 1 + rng.integers(0, 500, size=(40, 4)).astype(float)
    b = 1 + rng.integers(0, 500, size=(40, 4)).astype(float)
    batch = thompson_propensities(a, b)
    for i in range(0, 40, 7):
        np.testing.assert_allclose(batch[i], thompson_propensities(a[i], b[i]), atol=1e-15)


def test_monte_carlo_agreement() -> None:
    rng = np.random.default_rng(11)
    a = np.array([12.0, 15.0, 9.0, 14.0])
    b = np.array([20.0, 22.0, 14.0, 25.0])
    draws = rng.beta(a, b, size=(400_000, 4))
    freq = np.bincount(draws.argmax(axis=1), minlength=4) / draws.shape[0]
    got = thompson_propensities(a, b)
    # 5 binomial standard errors
    assert np.all(np.abs(freq - got) < 5 * np.sqrt(got * (1 - got) / draws.shape[0]))


def test_credible_interval_matches_scipy() -> None:
    lo, hi = beta_credible_interval(np.array([3.0, 300.0]), np.array([7.0, 700.0]), 0.9)
    np.testing.assert_allclose(lo, stats.beta.ppf(0.05, [3, 300], [7, 700]), rtol=1e-10)
    np.testing.assert_allclose(hi, stats.beta.ppf(0.95, [3, 300], [7, 700]), rtol=1e-10)


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_priors_below_one() -> None:
    # Densities with α or β < 1 are unbounded at an endpoint; graded panels still give < 1e-6.
    a, b = np.array([0.5, 0.5]), np.array([0.5, 3.0])
    got = thompson_propensities(a, b)
    other = _reference(a[::-1], b[::-1])[0]  # arm 1's integrand is bounded
    assert got[1] == pytest.approx(other, abs=1e-6)
    sym = thompson_propensities(np.array([0.5, 1e5 + 0.5]), np.array([0.5, 1e5 + 0.5]))
    np.testing.assert_allclose(sym, 0.5, atol=1e-6)


# ---- small priors (α or β well below 1): mass piles up at 0 and 1 ---------------------------


def _inverse(a: float, b: float, v: float) -> float:
    """I⁻¹(a, b; v), with the power-law limit where scipy's inverse gives up (v → 0)."""
    x = float(special.betaincinv(a, b, v))
    if not np.isfinite(x) or x < 1e-250 or v < 1e-60:
        x = float(np.exp((np.log(v) + np.log(a) + special.betaln(a, b)) / a))
    return x


def _probability_scale_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(arm i is the argmax), integrated in arm i's own probability scale.

    With v = F_i(x) below 1/2 and w = S_i(x) = 1 − F_i(x) above, ``P(i) = ∫ Π_{j≠i} F_j(x(v)) dv
    + ∫ Π_{j≠i} (1 − S_j(u(w))) dw`` (u = 1 − x from the complementary inverse): bounded
    integrands on finite ranges, whatever α and β are — independent of the production method.
    """
    grid = np.concatenate([[0.0], 10.0 ** -np.arange(300, 0, -2.0)])
    out = []
    for i in range(a.size):
        others = [j for j in range(a.size) if j != i]

        def lower(v: float, i: int = i, others: list[int] = others) -> float:
            x = _inverse(a[i], b[i], v) if v > 0 else 0.0
            return float(np.prod([special.betainc(a[j], b[j], x) for j in others]))

        def upper(w: float, i: int = i, others: list[int] = others) -> float:
            u = _inverse(b[i], a[i], w) if w > 0 else 0.0
            return float(np.prod([1.0 - special.betainc(b[j], a[j], u) for j in others]))

        total = 0.0
        for f, top in (
            (lower, special.betainc(a[i], b[i], 0.5)),
            (upper, special.betainc(b[i], a[i], 0.5)),
        ):
            pts = np.concatenate([grid[grid < top], [top]])
            for lo, hi in itertools.pairwise(pts):
                total += integrate.quad(f, lo, hi, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
        out.append(total)
    return np.array(out)


SMALL_PRIOR_CASES = [
    ([0.1, 0.1], [0.1, 1.1]),  # the 0.2 code was off by 6e-3 here
    ([0.05, 1.05, 3.05], [0.05, 0.05, 2.05]),  # and by 3e-2 here
    ([0.02, 2.02, 0.02], [1e6 + 0.02, 3.02, 0.02]),  # a huge-β arm next to U-shaped ones
    ([0.2, 7.2, 0.2, 40.2], [0.2, 3.2, 12.2, 9.2]),
    ([1e6, 0.03, 5.03], [0.03, 0.03, 1.03]),  # a huge-α arm with a tiny β
]


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize(("alpha", "beta"), SMALL_PRIOR_CASES)
def test_small_priors_match_a_probability_scale_reference(
    alpha: list[float], beta: list[float]
) -> None:
    a, b = np.array(alpha), np.array(beta)
    ref = _probability_scale_reference(a, b)
    assert abs(ref.sum() - 1.0) < 1e-9  # the reference itself is sound
    np.testing.assert_allclose(thompson_propensities(a, b), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("prior", [0.01, 0.05, 0.1, 0.3])
def test_small_priors_against_power_function_closed_forms(prior: float) -> None:
    # Beta(α, 1) has CDF x^α: P(a is the max) = α_a / Σα.
    a = prior * np.array([1.0, 2.0, 7.0])
    np.testing.assert_allclose(thompson_propensities(a, np.ones(3)), a / a.sum(), atol=1e-9)
    # Beta(1, β) has survival u^β: P(a) = Σ_{T ⊆ others} (−1)^|T| β_a / (β_a + β_T).
    b = prior * np.array([1.0, 3.0, 0.5])
    expected = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        expected.append(
            sum(
                (-1) ** len(t) * b[i] / (b[i] + sum(b[j] for j in t))
                for r in range(3)
                for t in itertools.combinations(others, r)
            )
        )
    np.testing.assert_allclose(thompson_propensities(np.ones(3), b), expected, atol=1e-9)
    sym = thompson_propensities(np.full(5, prior), np.full(5, prior))
    np.testing.assert_allclose(sym, 0.2, atol=1e-12)
