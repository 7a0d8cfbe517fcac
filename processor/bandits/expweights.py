"""Exponential-weights math shared by Exp3-IX (bandit feedback) and Hedge (full information).

Everything is in the log domain: a row's weights are ``softmax(b − η·L̃)`` with ``L̃`` the
cumulative loss estimates and ``b`` a log-prior (zero unless set by a warm start, a restored
weights-only state or fixed share), so no weight is ever exponentiated raw.

Learning rate (anytime). A row that has absorbed ``t_b`` bandit rounds and ``t_f``
full-information rounds, counting the round the rate is for, uses

    η = sqrt(C / V),   V = K·t_b + t_f / 8,   C = ln K + t·(α ln K + h(α)),   t = t_b + t_f,

capped at ``eta_max`` once the row has bandit rounds. ``V`` is the variance term of the regret
bound (``η K`` per Exp3-IX round with γ = η/2, ``η/8`` per Hedge round with losses in [0, 1]) and
``C`` its complexity term, so a pure bandit row gets Neu's ``sqrt(ln K / (K t))`` and a pure
full-information row Hedge's ``sqrt(8 ln K / t)``. With fixed share α (Herbster & Warmuth 1998)
``C`` also pays for the switches the share assumes — one every 1/α rounds costs ``ln(K/α)`` each
and every other round ``ln(1/(1 − α))``, together ``t·(α ln K + h(α))`` with h the binary entropy
in nats — so a tracking learner keeps a rate that does not vanish (η → sqrt(8 (α ln K + h(α)))).
With α = 0 this is the plain anytime rate. K = 1 gives η = 0 (nothing to learn), which no formula
here divides by.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def rewards_to_losses(rewards: ArrayLike, reward_range: tuple[float, float]) -> FloatArray:
    """Map rewards to losses ``clip((hi − r) / (hi − lo), 0, 1)``."""
    lo, hi = reward_range
    r = np.asarray(rewards, dtype=np.float64)
    return np.asarray(np.clip((hi - r) / (hi - lo), 0.0, 1.0), dtype=np.float64)


def switch_cost(share: float, n_arms: ArrayLike) -> FloatArray:
    """Complexity per round of fixed share α: ``α ln K + h(α)`` (0 when α = 0)."""
    k = np.maximum(np.asarray(n_arms, dtype=np.float64), 1.0)
    if share <= 0.0:
        return np.zeros(k.shape, dtype=np.float64)
    h = -share * math.log(share) - (1.0 - share) * math.log1p(-share)
    return np.asarray(share * np.log(k) + h, dtype=np.float64)


def learning_rate(
    bandit_steps: ArrayLike,
    full_steps: ArrayLike,
    n_arms: ArrayLike,
    *,
    eta: float | None,
    eta_max: float,
    share: float = 0.0,
) -> FloatArray:
    """η of a round given the rounds absorbed *including* it (see the module docstring).

    Args:
        bandit_steps: Bandit-feedback rounds t_b (counting this one if it is one).
        full_steps: Full-information rounds t_f (counting this one if it is one).
        n_arms: Active arms K.
        eta: A fixed rate (returned as is), or None for the anytime rate.
        eta_max: Cap of the rate of rows with bandit rounds.
        share: Fixed-share α.
    """
    tb = np.asarray(bandit_steps, dtype=np.float64)
    tf = np.asarray(full_steps, dtype=np.float64)
    shape = np.broadcast_shapes(tb.shape, tf.shape, np.shape(n_arms))
    if eta is not None:
        return np.full(shape, float(eta), dtype=np.float64)
    k = np.maximum(np.asarray(n_arms, dtype=np.float64), 1.0)
    t = tb + tf
    complexity = np.log(k) + t * switch_cost(share, k)
    variance = np.maximum(k * tb + tf / 8.0, 1.0 / 8.0)
    rate = np.sqrt(complexity / variance)
    out: FloatArray = np.where(tb > 0, np.minimum(rate, eta_max), rate)
    return np.broadcast_to(out, shape).astype(np.float64)


def eta_schedule(
    t: ArrayLike, n_arms: ArrayLike, eta: float | None, eta_max: float, share: float = 0.0
) -> FloatArray:
    """Exp3-IX rate of bandit round t ≥ 1: ``min(eta_max, sqrt(ln K / (K t)))`` when α = 0."""
    tt = np.maximum(np.asarray(t, dtype=np.float64), 1.0)
    return learning_rate(tt, 0.0, n_arms, eta=eta, eta_max=eta_max, share=share)


def log_weights(
    losses: FloatArray, log_prior: FloatArray, eta: FloatArray, active: BoolArray
) -> FloatArray:
    """Normalised log-weights ``b − η L̃ − logsumexp(b − η L̃)`` (−inf for inactive arms)."""
    z = np.where(active, log_prior - eta[:, None] * losses, -np.inf)
    top = z.max(axis=1, keepdims=True)
    lse = top + np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    return np.asarray(z - lse, dtype=np.float64)


def softmax_weights(
    losses: FloatArray, log_prior: FloatArray, eta: FloatArray, active: BoolArray
) -> FloatArray:
    """Normalised exponential weights ``softmax(b − η L̃)`` over active arms (0 elsewhere).

    Computed with the usual max shift, so nothing is exponentiated raw and nothing overflows.
    """
    z = np.where(active, log_prior - eta[:, None] * losses, -np.inf)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def mixed_probabilities(
    losses: FloatArray,
    log_prior: FloatArray,
    eta: FloatArray,
    active: BoolArray,
    uniform_mix: float,
) -> FloatArray:
    """``(1 − ε)·softmax(b − η L̃) + ε / K_active`` over active arms; rows sum to 1."""
    p = softmax_weights(losses, log_prior, eta, active)
    if uniform_mix > 0.0:
        k_active = active.sum(axis=1, keepdims=True)
        p = np.where(active, (1.0 - uniform_mix) * p + uniform_mix / k_active, 0.0)
    return p


def mean_weight_arm(
    losses: FloatArray, log_prior: FloatArray, eta: FloatArray, active: BoolArray
) -> tuple[FloatArray, FloatArray]:
    """``(L̃_new, b_new)`` of a new arm whose weight is the mean weight of the active arms.

    ``b_new`` is the mean prior (log-mean-exp of b) and ``L̃_new`` the rest, so
    ``b_new − η L̃_new = logmeanexp(b − η L̃)``: the new arm's probability is exactly 1/(K+1)
    (also after uniform mixing, which is uniform). With b = 0 this is the learner's mix loss
    ``−(logsumexp(−η L̃) − ln K) / η``. ``eta`` must be > 0 (it is the rate with K + 1 arms).
    """
    k = np.log(active.sum(axis=1))
    z = np.where(active, log_prior - eta[:, None] * losses, -np.inf)
    b_new = special.logsumexp(np.where(active, log_prior, -np.inf), axis=1) - k
    z_new = special.logsumexp(z, axis=1) - k
    return np.asarray((b_new - z_new) / eta, dtype=np.float64), np.asarray(b_new, np.float64)


def share_mix(log_w: FloatArray, active: BoolArray, share: float) -> FloatArray:
    """Fixed share in the log domain: ``log((1 − α)·w + α / K_active)`` (−inf for inactive)."""
    k = active.sum(axis=1, keepdims=True).astype(np.float64)
    mixed = np.logaddexp(math.log1p(-share) + log_w, math.log(share) - np.log(k))
    return np.asarray(np.where(active, mixed, -np.inf), dtype=np.float64)
