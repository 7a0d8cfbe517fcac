"""Stable per-request uniforms: the randomness of every decision is a pure function.

A decision's random numbers come from ``(policy seed, stream, request_id)`` and
nothing else, so the same state and request always give the same decision —
on any machine, in any batch split, in a live run or a replay. Python's
``hash()`` is salted per process and therefore unusable here.

Algorithm (fixed; changing it changes every logged decision):

1. The id is read as Unicode code points (numpy ``U`` dtype viewed as
   ``uint32``), so no per-id ``encode`` call is needed.
2. 64-bit FNV-1a over the code points, one numpy operation per character
   column; padding columns past an id's length are skipped and the length is
   folded in. (numpy strings cannot hold trailing NUL characters, so ids that
   differ only by those collide.)
3. The result is xor-ed with ``splitmix64(seed) ^ splitmix64(stream·c1 + c2)`` and
   passed through the splitmix64 finalizer twice.
4. The top 53 bits become a float64 in ``[0, 1)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = 0x9E3779B97F4A7C15
_STREAM_SALT = 0x632BE59BD9B4E019
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFT30 = np.uint64(30)
_SHIFT27 = np.uint64(27)
_SHIFT31 = np.uint64(31)
_SHIFT11 = np.uint64(11)
_INV_2_53 = 1.0 / float(1 << 53)

#: Named streams, so callers never share a uniform between two purposes.
STREAM_ARM = 0
STREAM_BID_JITTER = 1
STREAM_BUDGET_JITTER = 2
STREAM_REWARD = 3
STREAM_PACING = 4


def _splitmix64_int(x: int) -> int:
    """Scalar splitmix64 (increment then finalize) in exact Python integers."""
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _finalize(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Vectorized splitmix64 finalizer (uint64 arithmetic wraps modulo 2**64)."""
    h = (h ^ (h >> _SHIFT30)) * _MIX1
    h = (h ^ (h >> _SHIFT27)) * _MIX2
    return h ^ (h >> _SHIFT31)


def _fnv_codepoints(ids: Sequence[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.uint64]:
    """FNV-1a over each id's code points, length folded in."""
    arr = np.asarray(ids, dtype=np.str_)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    n = arr.shape[0]
    width = arr.dtype.itemsize // 4
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    lengths = np.strings.str_len(arr).astype(np.int64)
    if width > 0:
        # one contiguous row of code points per character position
        codes = np.ascontiguousarray(arr).view(np.uint32).reshape(n, width).T
        codes = codes.astype(np.uint64, order="C")
        shortest = int(lengths.min())
        for j in range(width):
            if j < shortest:  # every id has a character here: in place, no mask
                h ^= codes[j]
                h *= _FNV_PRIME
            else:  # only ids longer than j take this column: no padding effects
                np.copyto(h, (h ^ codes[j]) * _FNV_PRIME, where=lengths > j)
    return (h ^ lengths.astype(np.uint64)) * _FNV_PRIME


def request_hashes(
    seed: int, request_ids: Sequence[str] | npt.NDArray[np.str_], stream: int = 0
) -> npt.NDArray[np.uint64]:
    """64-bit stable hashes of ``(seed, stream, request_id)``.

    Args:
        seed: Policy seed (any Python int; reduced modulo 2**64).
        request_ids: Request ids.
        stream: Independent stream number (see the ``STREAM_*`` constants).

    Returns:
        ``uint64`` array, one hash per id.
    """
    return _salted(_fnv_codepoints(request_ids), seed, stream)


def _salted(fnv: npt.NDArray[np.uint64], seed: int, stream: int) -> npt.NDArray[np.uint64]:
    salt = _splitmix64_int(seed & _MASK64) ^ _splitmix64_int(
        (stream * _STREAM_SALT + 0x5DEECE66D) & _MASK64
    )
    return _finalize(_finalize(fnv ^ np.uint64(salt)))


def request_uniforms(
    seed: int, request_ids: Sequence[str] | npt.NDArray[np.str_], stream: int = 0
) -> npt.NDArray[np.float64]:
    """Uniforms in ``[0, 1)`` that depend only on ``(seed, stream, request_id)``.

    Args:
        seed: Policy seed.
        request_ids: Request ids (a list or a numpy string/object array).
        stream: Stream number; different streams give independent uniforms.

    Returns:
        ``float64`` array with one uniform per id.

    Examples:
        >>> u = request_uniforms(7, ["r1", "r2", "r1"])
        >>> bool(u[0] == u[2]) and bool(0.0 <= u[1] < 1.0)
        True
    """
    return request_uniform_streams(seed, request_ids, [stream])[0]


def request_uniform_streams(
    seed: int, request_ids: Sequence[str] | npt.NDArray[np.str_], streams: Sequence[int]
) -> list[npt.NDArray[np.float64]]:
    """:func:`request_uniforms` of several streams, hashing the ids once.

    Examples:
        >>> a, b = request_uniform_streams(7, ["r1", "r2"], [0, 1])
        >>> bool((a == request_uniforms(7, ["r1", "r2"], 0)).all())
        True
        >>> bool((b == request_uniforms(7, ["r1", "r2"], 1)).all())
        True
    """
    fnv = _fnv_codepoints(request_ids)
    return [(_salted(fnv, seed, s) >> _SHIFT11).astype(np.float64) * _INV_2_53 for s in streams]


def seed_for(seed: int, key: str) -> int:
    """A stable 63-bit seed derived from ``(seed, key)``, e.g. for a per-key generator.

    Args:
        seed: Base seed.
        key: Any string key.

    Returns:
        Non-negative int below 2**63.
    """
    return int(request_hashes(seed, [key], stream=0x7FFF)[0] >> np.uint64(1))
