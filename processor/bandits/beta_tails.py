"""Thompson propensities of rows whose Beta posteriors are singular at 0 or 1 (small α or β).

With a fractional α (or β) below 5 — fractional priors, discounted counts — the integrand
``f_a Π_{j≠a} F_j`` of ``P(arm a is the argmax)`` behaves like a power of x near 0 (of 1 − x near
1). With α, β down to ~0.5 graded panels suffice, but a prior of 0.1 puts a third of an arm's
mass below 1e-10 and panels alone miss it (0.2 lost 6e-3 of probability at prior 0.1, 3e-2 at
0.05). Here the two ends are integrated exactly instead:

* **near 0**, below ``x0 = 2^-40``, every CDF is a power law, ``F_j(x) = F_j(x0)·(x/x0)^α_j``
  (relative error O(β·x0)), so ``∫_0^x0 f_a Π_{j≠a} F_j = (α_a / Σα)·Π_j F_j(x0)`` — the chance
  that every draw is below x0, times the chance that arm a is the largest of them;
* **near 1**, above ``1 − u1`` with ``u1 = 2^-40``, every survival function is a power law of
  ``u = 1 − x``, ``S_j(u) = s_j·(u/u1)^β_j`` with ``s_j = S_j(u1)``, so the contribution is
  ``s_a·∫_0^1 Π_{j≠a} (1 − s_j y^{β_j/β_a}) dy`` (y = (u/u1)^β_a), a bounded one-dimensional
  integral done by Gauss–Legendre on panels graded towards y = 0;
* **in between**, composite Gauss–Legendre on the posteriors' mean ± z·sd ladder plus panels
  graded geometrically (2^-k) towards each singular end. Nodes above 1/2 are placed and
  evaluated through u = 1 − x (``F = 1 − I_u(β, α)``), so a panel at 1 − 2^-40 keeps full
  precision, which a node stored as x cannot.

Checked against an independent quadrature in the probability scale (tests) to 1e-6 for priors
down to 0.01.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from scipy import special

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_LEVELS = 40
_GRADED = 2.0 ** -np.arange(1, _LEVELS + 1)  # also the u of the graded points near 1
_END = float(_GRADED[-1])  # x0 and u1
_GL_X, _GL_W = np.polynomial.legendre.leggauss(6)
_GL_T = (_GL_X + 1.0) / 2.0
# The integral of the cap near 1 in y ∈ [0, 1]: panels [2^-(k+1), 2^-k] and [1 − 2^-k, ...]
_Y_EDGES = np.unique(
    np.concatenate([[0.0, 1.0], 2.0 ** -np.arange(1, 61), 1.0 - 2.0 ** -np.arange(2, 8)])
)
_CAP_GL_X, _CAP_GL_W = np.polynomial.legendre.leggauss(8)
_Y_NODES = (_Y_EDGES[:-1, None] + np.diff(_Y_EDGES)[:, None] * (_CAP_GL_X + 1.0) / 2.0).ravel()
_Y_WEIGHTS = (np.diff(_Y_EDGES)[:, None] * _CAP_GL_W / 2.0).ravel()
_TINY = np.finfo(np.float64).tiny
_ONE_MINUS = np.nextafter(1.0, 0.0)
_CAP_ROWS = 64
_QTAIL = 1e-13  # rows per block of the (n, K, K, nodes) cap tensor


def _key(x: FloatArray, u: FloatArray) -> FloatArray:
    """Order of points given as (x, u = 1 − x): x below 1/2, −ln u above (no ties near 1)."""
    return np.where(x < 0.5, x, 10.0 - np.log(np.maximum(u, _TINY)))


def graded_quadrature(
    a: FloatArray,
    b: FloatArray,
    act: BoolArray,
    grade0: BoolArray,
    grade1: BoolArray,
    z_levels: FloatArray,
    z_tail: float,
) -> FloatArray:
    """Unnormalised P(argmax = a) for (n, K) rows with an endpoint singularity (module doc)."""
    n = a.shape[0]
    s_ab = a + b
    mean = a / s_ab
    sd = np.sqrt(a * b / (s_ab * s_ab * (s_ab + 1.0)))
    # ±z_tail sd is not far enough out for a parameter < 1/2 (1 − X ~ Gamma(0.03) has 3e-5 of
    # its mass beyond 30 sd): each arm's range also reaches its 1e-13 and 1 − 1e-13 quantiles.
    lo_j = np.clip(mean - z_tail * sd, 0.0, 1.0)
    hi_j = np.clip(1.0 - mean - z_tail * sd, 0.0, 1.0)  # as u = 1 − x
    thin = act & (np.minimum(a, b) < 0.5)
    if thin.any():
        with np.errstate(all="ignore"):
            q_lo = np.nan_to_num(special.betaincinv(a[thin], b[thin], _QTAIL), nan=0.0)
            q_hi = np.nan_to_num(special.betaincinv(b[thin], a[thin], _QTAIL), nan=0.0)
        lo_j[thin] = np.minimum(lo_j[thin], q_lo)
        hi_j[thin] = np.minimum(hi_j[thin], q_hi)
    lo = np.where(act, lo_j, -np.inf).max(axis=1)
    hi_u = np.where(act, hi_j, np.inf).min(axis=1)
    head = grade0 & (lo < _END)
    tail = grade1 & (hi_u < _END)
    start_x = np.where(head, _END, lo)
    end_u = np.where(tail, _END, hi_u)
    end_x = 1.0 - end_u
    # breakpoints as (x, u): z ladder, 1/2, graded towards 0 and towards 1
    zx = (mean[:, :, None] + sd[:, :, None] * z_levels).reshape(n, -1)
    zok = np.repeat(act, z_levels.size, axis=1)
    half = np.full((n, 1), 0.5)
    g0 = np.broadcast_to(_GRADED, (n, _LEVELS))
    bx = np.concatenate([zx, half, g0, 1.0 - g0], axis=1)
    bu = np.concatenate([1.0 - zx, half, 1.0 - g0, g0], axis=1)
    ok = np.concatenate(
        [
            zok,
            grade1[:, None],
            np.repeat(grade0[:, None], _LEVELS, 1),
            np.repeat(grade1[:, None], _LEVELS, 1),
        ],
        axis=1,
    )
    key = _key(bx, bu)
    k_lo = _key(start_x, 1.0 - start_x)[:, None]
    k_hi = _key(end_x, end_u)[:, None]
    inside = ok & (key > k_lo) & (key < k_hi)
    order = np.argsort(np.where(inside, key, np.inf), axis=1, kind="stable")
    cols = int(np.max(inside.sum(axis=1)))
    order = order[:, :cols]
    keep = np.take_along_axis(inside, order, axis=1)
    ex = np.where(keep, np.take_along_axis(bx, order, axis=1), end_x[:, None])
    eu = np.where(keep, np.take_along_axis(bu, order, axis=1), end_u[:, None])
    ex = np.concatenate([start_x[:, None], ex, end_x[:, None]], axis=1)
    eu = np.concatenate([1.0 - start_x[:, None], eu, end_u[:, None]], axis=1)
    upper = (ex[:, :-1] >= 0.5)[:, :, None]  # panels right of 1/2: place nodes through u
    t = _GL_T[None, None, :]
    x_lo = ex[:, :-1, None] + (ex[:, 1:] - ex[:, :-1])[:, :, None] * t
    u_hi = eu[:, 1:, None] + (eu[:, :-1] - eu[:, 1:])[:, :, None] * (1.0 - t)
    width = np.where(upper[:, :, 0], eu[:, :-1] - eu[:, 1:], ex[:, 1:] - ex[:, :-1])
    upper_n = np.broadcast_to(upper, x_lo.shape).reshape(n, -1)
    x = np.where(upper_n, 1.0 - u_hi.reshape(n, -1), x_lo.reshape(n, -1))
    u = np.where(upper_n, u_hi.reshape(n, -1), 1.0 - x_lo.reshape(n, -1))
    w = (np.maximum(width, 0.0)[:, :, None] * (_GL_W / 2.0)).reshape(n, -1)
    x = np.maximum(x, _TINY)
    u = np.maximum(u, _TINY)
    a3, b3, up3 = a[:, :, None], b[:, :, None], upper_n[:, None, :]
    val = special.betainc(
        np.where(up3, b3, a3),
        np.where(up3, a3, b3),
        np.where(upper_n, u, x)[:, None, :],
    )
    cdf = np.where(act[:, :, None], np.where(up3, 1.0 - val, val), 1.0)
    log_x = np.where(upper_n, np.log1p(-np.minimum(u, _ONE_MINUS)), np.log(x))[:, None, :]
    log_u = np.where(upper_n, np.log(u), np.log1p(-np.minimum(x, _ONE_MINUS)))[:, None, :]
    log_pdf = (a3 - 1.0) * log_x + (b3 - 1.0) * log_u - special.betaln(a, b)[:, :, None]
    pdf = np.where(act[:, :, None], np.exp(log_pdf), 0.0)
    ones = np.ones((n, 1, x.shape[1]))
    prefix = np.cumprod(np.concatenate([ones, cdf[:, :-1, :]], axis=1), axis=1)
    suffix = np.cumprod(np.concatenate([ones, cdf[:, :0:-1, :]], axis=1), axis=1)[:, ::-1, :]
    probs = np.einsum("nkx,nx->nk", pdf * prefix * suffix, w)
    if head.any():
        probs[head] += _head(a[head], b[head], act[head])
    if tail.any():
        probs[tail] += _tail(a[tail], b[tail], act[tail])
    return np.asarray(np.where(act, np.maximum(probs, 0.0), 0.0), dtype=np.float64)


def _head(a: FloatArray, b: FloatArray, act: BoolArray) -> FloatArray:
    """``∫_0^x0 f_a Π_{j≠a} F_j = (α_a / Σα)·Π_j F_j(x0)`` over active arms."""
    cdf = np.where(act, special.betainc(a, b, _END), 1.0)
    total = np.where(act, a, 0.0).sum(axis=1, keepdims=True)
    return np.asarray(np.where(act, a / total, 0.0) * np.prod(cdf, axis=1, keepdims=True))


def _tail(a: FloatArray, b: FloatArray, act: BoolArray) -> FloatArray:
    """``∫_{1−u1}^1 f_a Π_{j≠a} F_j = s_a ∫_0^1 Π_{j≠a}(1 − s_j y^{β_j/β_a}) dy``."""
    out = np.zeros(a.shape)
    s = np.where(act, special.betainc(b, a, _END), 0.0)  # S_j(u1) = I_{u1}(β, α)
    log_y = np.log(np.maximum(_Y_NODES, _TINY))
    k = a.shape[1]
    off_diag = ~np.eye(k, dtype=bool)
    for start in range(0, a.shape[0], _CAP_ROWS):
        sl = slice(start, start + _CAP_ROWS)
        ratio = b[sl][:, None, :] / b[sl][:, :, None]  # [row, a, j] = β_j / β_a
        terms = -s[sl][:, None, :, None] * np.exp(ratio[..., None] * log_y)
        log_factor = np.log1p(np.maximum(terms, -1.0 + 1e-300))
        mask = (off_diag[None] & act[sl][:, None, :])[..., None]
        inner = np.exp(np.where(mask, log_factor, 0.0).sum(axis=2)) @ _Y_WEIGHTS
        out[sl] = np.where(act[sl], s[sl] * inner, 0.0)
    return out
