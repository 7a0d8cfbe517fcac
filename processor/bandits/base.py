"""Shared math and the keyed struct-of-arrays table behind every bandit class.

Everything numeric lives here once: the exact Thompson propensity quadrature, Beta credible
intervals and inverse-CDF arm selection (the Exp3-IX / Hedge exponential-weights math is in
:mod:`processor.bandits.expweights`). The keyed classes (:mod:`processor.bandits.keyed`) and the
single-key object APIs call these functions, so the formulas exist exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import repeat
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from processor.bandits.beta_tails import graded_quadrature
from processor.errors import ProcessorError, StateError

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

# Breakpoints of the propensity quadrature, in posterior standard deviations around the mean.
# Posteriors with α, β ≥ 1/2 carry less than ~1e-10 mass beyond ±30 sd (even the skewed
# Beta(1, β) ones), and the denser levels near the mean put panel edges where densities bend.
_Z_LEVELS = np.array([-30.0, -12.0, -6.0, -3.0, -1.0, 1.0, 3.0, 6.0, 12.0, 30.0])
_Z_TAIL = 30.0
_GL_NODES = 6
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_GL_NODES)
_GL_T = (_GL_X + 1.0) / 2.0
_QUAD_CHUNK = 1024
_SMOOTH = 5.0
_TINY = np.finfo(np.float64).tiny
_ONE_MINUS = np.nextafter(1.0, 0.0)


class BanditInputError(ProcessorError, ValueError):
    """A reward, propensity or arm is invalid (NaN/inf, out of range, unknown); nothing changed."""


def check_finite(name: str, values: ArrayLike) -> FloatArray:
    """Return ``values`` as float64, raising :class:`BanditInputError` on NaN or ±inf."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        msg = f"{name} must be finite (got NaN or inf)"
        raise BanditInputError(msg)
    return arr


# ---- Thompson sampling (Beta-Bernoulli) ----------------------------------------------------


def beta_mean(alpha: ArrayLike, beta: ArrayLike) -> FloatArray:
    """Posterior mean α / (α + β), elementwise."""
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    return np.asarray(a / (a + b), dtype=np.float64)


def beta_credible_interval(
    alpha: ArrayLike, beta: ArrayLike, confidence: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Equal-tailed credible interval from exact Beta quantiles (``scipy.special.betaincinv``)."""
    if not 0.0 < confidence < 1.0:
        msg = f"confidence must be in (0, 1), got {confidence}"
        raise BanditInputError(msg)
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    tail = (1.0 - confidence) / 2.0
    lo = np.asarray(special.betaincinv(a, b, tail), dtype=np.float64)
    hi = np.asarray(special.betaincinv(a, b, 1.0 - tail), dtype=np.float64)
    return lo, hi


def thompson_propensities(
    alpha: ArrayLike, beta: ArrayLike, active: ArrayLike | None = None
) -> FloatArray:
    """Exact probability that each arm is the argmax of one posterior draw.

    ``P(a) = ∫ f_a(x) Π_{j≠a} F_j(x) dx`` with ``f``/``F`` the Beta(α, β) density and CDF, by
    composite Gauss–Legendre quadrature. The range is ``[max_j (m_j − 30 s_j), max_j (m_j + 30
    s_j)]`` (m, s: posterior mean and sd, clipped to [0, 1]): below it the most advanced arm's CDF
    is negligible, above it every density is. Panel edges are every active arm's mean ± z·sd for
    a ladder of z, so every panel is narrow compared with every density it crosses — a fixed grid
    on [0, 1] would miss a posterior of width 1e-4. Fractional α or β below 5 (discounted or
    fractional counts, small priors) make the integrand singular at 0 or 1; those rows also get
    breakpoints graded geometrically (2^-k) towards the endpoint and the last 2^-48 next to it
    integrated in closed form (:mod:`processor.bandits.beta_tails`). Absolute error is below
    1e-6 (tests against independent quadrature, counts up to 1e6, priors down to 0.01;
    typically ~1e-9); rows are normalised to sum to 1.

    Args:
        alpha: (n, K) or (K,) posterior α.
        beta: same shape, posterior β.
        active: optional bool mask; inactive arms get probability 0 and do not compete.

    Returns:
        (n, K) (or (K,)) float64 probabilities.
    """
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    squeeze = a.ndim == 1
    a2 = np.atleast_2d(a)
    b2 = np.atleast_2d(b)
    act = np.ones(a2.shape, dtype=bool) if active is None else np.atleast_2d(np.asarray(active))
    out = np.empty(a2.shape, dtype=np.float64)
    for start in range(0, a2.shape[0], _QUAD_CHUNK):
        sl = slice(start, start + _QUAD_CHUNK)
        out[sl] = _propensities_block(a2[sl], b2[sl], act[sl].astype(bool))
    return out[0] if squeeze else out


def _propensities_block(a: FloatArray, b: FloatArray, act: BoolArray) -> FloatArray:
    n, k = a.shape
    if n == 1 and _plain_row(a[0].tolist(), b[0].tolist(), act[0].tolist()):
        return _quadrature(a, b, act)  # what the general code does with such a row, less setup
    out = np.zeros((n, k), dtype=np.float64)
    if n == 0:
        return out
    n_active = act.sum(axis=1)
    single = n_active == 1
    out[single] = act[single]
    todo = np.flatnonzero(n_active > 1)
    if todo.size == 0:
        return out
    # Fractional α or β below _SMOOTH give the integrand an endpoint singularity (x^0.2, ...);
    # those rows get breakpoints graded geometrically towards 0 and 1. They are integrated
    # apart so ordinary rows do not pay for the padding.
    a, b, act = a[todo], b[todo], act[todo]
    grade0 = np.any(act & (a < _SMOOTH) & (np.abs(a - np.round(a)) > 1e-9), axis=1)
    grade1 = np.any(act & (b < _SMOOTH) & (np.abs(b - np.round(b)) > 1e-9), axis=1)
    graded = grade0 | grade1
    sel = np.flatnonzero(~graded)
    if sel.size:
        out[todo[sel]] = _quadrature(a[sel], b[sel], act[sel])
    # graded rows by which end they grade: fewer padded (zero-width) panels per group
    for g0, g1 in ((True, False), (False, True), (True, True)):
        sel = np.flatnonzero((grade0 == g0) & (grade1 == g1))
        if sel.size:
            probs = graded_quadrature(
                a[sel], b[sel], act[sel], grade0[sel], grade1[sel], _Z_LEVELS, _Z_TAIL
            )
            out[todo[sel]] = probs / probs.sum(axis=1, keepdims=True)
    return out


def _plain_row(a: list[float], b: list[float], act: list[bool]) -> bool:
    """True if one row has two or more active arms and no graded end (see below)."""
    if sum(act) < 2:
        return False
    for x, y, on in zip(a, b, act, strict=True):
        if on and (
            (x < _SMOOTH and abs(x - round(x)) > 1e-9) or (y < _SMOOTH and abs(y - round(y)) > 1e-9)
        ):
            return False
    return True


def _quadrature(a: FloatArray, b: FloatArray, act: BoolArray) -> FloatArray:
    n = a.shape[0]
    s_ab = a + b
    mean = a / s_ab
    sd = np.sqrt(a * b / (s_ab * s_ab * (s_ab + 1.0)))
    lo = np.where(act, np.clip(mean - _Z_TAIL * sd, 0.0, 1.0), -np.inf).max(axis=1)
    hi = np.where(act, np.clip(mean + _Z_TAIL * sd, 0.0, 1.0), -np.inf).max(axis=1)
    bp = (mean[:, :, None] + sd[:, :, None] * _Z_LEVELS).reshape(n, -1)
    ok = np.repeat(act, _Z_LEVELS.size, axis=1)
    inside = ok & (bp > lo[:, None]) & (bp < hi[:, None])
    bp = np.sort(np.where(inside, bp, np.nan), axis=1)
    width_cols = int(np.max(np.sum(inside, axis=1)))
    bp = np.where(np.isnan(bp[:, :width_cols]), hi[:, None], bp[:, :width_cols])
    edges = np.concatenate([lo[:, None], bp, hi[:, None]], axis=1)
    left = edges[:, :-1]
    width = np.diff(edges, axis=1)
    x = (left[:, :, None] + width[:, :, None] * _GL_T).reshape(n, -1)
    w = (width[:, :, None] * (_GL_W / 2.0)).reshape(n, -1)
    # Nodes are interior, but hi = 1 can round a node onto 1.0; keep the logs finite.
    x = np.clip(x, _TINY, _ONE_MINUS)
    log_x = np.log(x)[:, None, :]
    log_1mx = np.log1p(-x)[:, None, :]
    a3 = a[:, :, None]
    b3 = b[:, :, None]
    cdf = special.betainc(a3, b3, x[:, None, :])
    cdf = np.where(act[:, :, None], cdf, 1.0)
    log_pdf = (a3 - 1.0) * log_x + (b3 - 1.0) * log_1mx - special.betaln(a, b)[:, :, None]
    pdf = np.where(act[:, :, None], np.exp(log_pdf), 0.0)
    # Product of the other arms' CDFs by prefix/suffix products: no division by a CDF near 0.
    ones = np.ones((n, 1, x.shape[1]))
    prefix = np.cumprod(np.concatenate([ones, cdf[:, :-1, :]], axis=1), axis=1)
    suffix = np.cumprod(np.concatenate([ones, cdf[:, :0:-1, :]], axis=1), axis=1)[:, ::-1, :]
    probs = np.einsum("nkx,nx->nk", pdf * prefix * suffix, w)
    probs = np.where(act, np.maximum(probs, 0.0), 0.0)
    return np.asarray(probs / probs.sum(axis=1, keepdims=True), dtype=np.float64)


# ---- batch helpers -------------------------------------------------------------------------


def inverse_cdf_select(probs: FloatArray, uniforms: ArrayLike) -> IntArray:
    """Arm per row drawn from ``probs`` with one uniform in [0, 1) each (column order CDF).

    Zero-probability (inactive) arms are never chosen: the CDF does not rise at them.
    """
    u = np.asarray(uniforms, dtype=np.float64)
    # NaN fails both comparisons, so it is rejected too.
    if u.shape != (probs.shape[0],) or (u.size and not (u.min() >= 0.0 and u.max() < 1.0)):
        msg = "uniforms must be one value in [0, 1) per row"
        raise BanditInputError(msg)
    cdf = np.cumsum(probs, axis=1)
    arms = np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1), probs.shape[1] - 1)
    idx = np.arange(arms.size)
    stuck = probs[idx, arms] <= 0.0
    if stuck.any():
        # Rounding left u·total at the very top: take the last arm with mass.
        last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0.0, axis=1)
        arms = np.where(stuck, last, arms)
    return np.asarray(arms, dtype=np.int64)


def unique_rows(rows: IntArray, n_rows: int) -> tuple[IntArray, IntArray]:
    """``np.unique(rows, return_inverse=True)`` for row indices (or any codes) in ``[0, n_rows)``.

    When the table is not much larger than the batch (a state table of thousands of keys, a
    batch of thousands of events) the distinct rows are marked in a table of ``n_rows`` and
    ranked by a cumulative sum — no sort; otherwise ``np.unique``. Same arrays either way.

    Examples:
        >>> touched, inverse = unique_rows(np.array([3, 1, 3, 0]), 5)
        >>> touched.tolist(), inverse.tolist()
        ([0, 1, 3], [2, 1, 2, 0])
    """
    rows = np.asarray(rows)
    if n_rows > 4 * rows.shape[0] + 4096:
        touched, inverse = np.unique(rows, return_inverse=True)
        return touched, inverse.reshape(-1)
    rank = np.zeros(n_rows, dtype=np.intp)
    rank[rows] = 1
    touched = np.flatnonzero(rank).astype(rows.dtype, copy=False)
    np.cumsum(rank, out=rank)
    rank -= 1
    return touched, rank[rows]


def ranks_within_groups(groups: IntArray) -> IntArray:
    """0-based position of each element among the earlier elements with the same group id."""
    n = groups.shape[0]
    order = np.argsort(groups, kind="stable")
    sorted_g = groups[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_g[1:] != sorted_g[:-1]
    if starts.all():
        return np.zeros(n, dtype=np.int64)
    idx = np.arange(n, dtype=np.int64)
    first = np.maximum.accumulate(np.where(starts, idx, 0))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = idx - first
    return ranks


class KeyTable:
    """Rows per key, columns per arm, grown by doubling; subclasses declare their arrays.

    ``_fields`` maps an array name to ``(dtype, per_arm, fill)``; fresh rows and new columns
    get ``fill``. ``active`` (which arms a key may play) and ``version`` (reward events applied)
    are common to every keyed bandit.
    """

    _fields: ClassVar[dict[str, tuple[Any, bool, float]]] = {}

    def __init__(self, arm_names: Sequence[str], capacity: int) -> None:
        names = [str(n) for n in arm_names]
        if not names or len(set(names)) != len(names):
            msg = f"arm_names must be non-empty and unique, got {names}"
            raise StateError(msg)
        self._arm_names = names
        self._col = {n: i for i, n in enumerate(names)}
        # Bumped by every change of the arrays (the object APIs cache one row's probabilities).
        self._changes = 0
        self._row_cache: dict[int, Any] = {}
        self._keys: list[str] = []
        self._row: dict[str, int] = {}
        self._default_active = np.ones(len(names), dtype=bool)
        cap = max(int(capacity), 1)
        k = len(names)
        self._arr: dict[str, np.ndarray] = {
            "active": np.zeros((cap, k), dtype=bool),
            "version": np.zeros(cap, dtype=np.int64),
        }
        for name, (dtype, per_arm, fill) in self._fields.items():
            shape = (cap, k) if per_arm else (cap,)
            self._arr[name] = np.full(shape, fill, dtype=dtype)

    @property
    def arm_names(self) -> list[str]:
        """Global column order of the arms."""
        return list(self._arm_names)

    @property
    def n_keys(self) -> int:
        """Number of keys with a row."""
        return len(self._keys)

    @property
    def keys(self) -> list[str]:
        """Key of each row, in row order."""
        return self._keys

    @property
    def default_active(self) -> BoolArray:
        """(K,) copy of the arms a new key starts with (changed by add/remove_arm with no key)."""
        return self._default_active.copy()

    @property
    def active(self) -> BoolArray:
        """(n_keys, K) bool: arm enabled for this key."""
        return self._arr["active"][: self.n_keys]

    @property
    def version(self) -> IntArray:
        """(n_keys,) int64: reward events applied to the key."""
        return self._arr["version"][: self.n_keys]

    def column(self, name: str) -> int:
        """Column of arm ``name`` (StateError if unknown)."""
        try:
            return self._col[name]
        except KeyError:
            msg = f"unknown arm {name!r}"
            raise StateError(msg) from None

    def row_of(self, key: str) -> int | None:
        """Row of ``key`` or None."""
        return self._row.get(key)

    def rows(self, keys: Sequence[str], create: bool = True) -> IntArray:
        """Row per key; new keys get fresh rows (or -1 when ``create`` is false)."""
        get = self._row.get
        if self._row:
            out = np.fromiter(map(get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        else:
            out = np.full(len(keys), -1, dtype=np.int64)
        if create:
            missing = np.flatnonzero(out < 0)
            if missing.size:
                new_keys = [keys[i] for i in missing.tolist()]
                before = len(self._keys)
                self._new_rows(new_keys)
                if len(self._keys) - before == len(new_keys):
                    # all distinct: they got consecutive rows in their order
                    out[missing] = np.arange(before, len(self._keys), dtype=np.int64)
                else:
                    row_of = self._row
                    out[missing] = np.fromiter(
                        (row_of[k] for k in new_keys), dtype=np.int64, count=len(new_keys)
                    )
        return out

    def _row_or_create(self, key: str) -> int:
        row = self._row.get(key)
        return self._new_row(key) if row is None else row

    def _require_row(self, key: str) -> int:
        row = self._row.get(key)
        if row is None:
            msg = f"unknown key {key!r}"
            raise StateError(msg)
        return row

    def _new_row(self, key: str) -> int:
        self._new_rows([key])
        return self._row[key]

    def _new_rows(self, keys: Sequence[str]) -> None:
        """Fresh rows for the new ones of ``keys``, in first-seen order, with one array reset.

        Capacity doubles until it fits, so rows and capacity are the same as creating the keys
        one by one (a restore of a million keys would otherwise spend ~30 µs per key).
        """
        row_of = self._row
        new = [k for k in dict.fromkeys(keys) if k not in row_of]
        if not new:
            return
        start = len(self._keys)
        need = start + len(new)
        cap = self._arr["version"].shape[0]
        if need > cap:
            while cap < need:
                cap *= 2
            for name, arr in self._arr.items():
                grown = np.zeros((cap, *arr.shape[1:]), dtype=arr.dtype)
                grown[: arr.shape[0]] = arr
                self._arr[name] = grown
        self._keys.extend(new)
        row_of.update(zip(new, range(start, need), strict=True))
        self._init_rows(np.arange(start, need, dtype=np.int64))

    def _init_rows(self, rows: IntArray) -> None:
        """Reset ``rows`` to the fresh state (prior / zero losses), default arm activity."""
        self._changes += 1
        for name, (_dtype, _per_arm, fill) in self._fields.items():
            self._arr[name][rows] = fill
        self._arr["active"][rows] = self._default_active
        self._arr["version"][rows] = 0

    def _add_column(self, name: str) -> int:
        self._changes += 1
        col = len(self._arm_names)
        self._arm_names.append(name)
        self._col[name] = col
        self._default_active = np.append(self._default_active, False)
        for field, arr in list(self._arr.items()):
            if arr.ndim == 2:
                fill = False if field == "active" else self._fields[field][2]
                extra = np.full((arr.shape[0], 1), fill, dtype=arr.dtype)
                self._arr[field] = np.concatenate([arr, extra], axis=1)
        return col

    def _target_rows(self, key: str | None) -> IntArray:
        if key is None:
            return np.arange(self.n_keys, dtype=np.int64)
        return np.array([self._row_or_create(key)], dtype=np.int64)

    def _deactivate(self, name: str, key: str | None) -> IntArray:
        col = self.column(name)
        rows = self._target_rows(key)
        act = self._arr["active"]
        remaining = act[rows].sum(axis=1) - act[rows, col]
        if np.any(remaining < 1):
            msg = f"cannot remove arm {name!r}: at least one active arm must remain"
            raise StateError(msg)
        if key is None:
            if self._default_active.sum() - self._default_active[col] < 1:
                msg = f"cannot remove arm {name!r}: it is the last default arm"
                raise StateError(msg)
            self._default_active[col] = False
        act[rows, col] = False
        self._changes += 1
        return rows

    def _table_dict(self) -> dict[str, Any]:
        n = self.n_keys
        return {
            "arm_names": list(self._arm_names),
            "default_active": self._default_active.tolist(),
            "keys": list(self._keys),
            "arrays": {name: arr[:n].tolist() for name, arr in self._arr.items() if name[0] != "_"},
        }

    def _load_table(self, d: dict[str, Any]) -> None:
        self._changes += 1
        keys = [str(k) for k in d["keys"]]
        self._keys = []
        self._row = {}
        self._default_active = np.asarray(d["default_active"], dtype=bool)
        for key in keys:
            self._new_row(key)
        n = len(keys)
        for name, values in d["arrays"].items():
            arr = self._arr[name]
            if n:
                arr[:n] = np.asarray(values, dtype=arr.dtype).reshape(arr[:n].shape)


def index_arrays(table: KeyTable, rows: ArrayLike, arms: ArrayLike) -> tuple[IntArray, IntArray]:
    """Validate a batch's row and arm indices (1-d, same length, in range) as int64."""
    r = np.asarray(rows, dtype=np.int64)
    a = np.asarray(arms, dtype=np.int64)
    if r.shape != a.shape or r.ndim != 1:
        msg = "rows and arms must be 1-d arrays of the same length"
        raise BanditInputError(msg)
    if r.size and (r.min() < 0 or r.max() >= table.n_keys):
        msg = "row index out of range"
        raise BanditInputError(msg)
    if a.size and (a.min() < 0 or a.max() >= len(table.arm_names)):
        msg = "arm index out of range"
        raise BanditInputError(msg)
    return r, a
