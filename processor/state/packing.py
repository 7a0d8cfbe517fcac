"""Packed binary layout of a campaign's state (``StateRecord.state_packed``), versioned.

JSON costs ~20 µs per key to parse; a restore of a million keys spent most of its time there. A
packed state is fixed-width once its arm list is known, and a changelog partition's campaigns
nearly always share one arm list, so a whole partition decodes with one ``np.frombuffer``.

Every blob starts with its layout version; this build writes version 2 and reads 1 and 2.

Layout version 2 (little-endian), one blob per campaign::

    u8 layout version (2)
    u8 K, then K × (u8 length, UTF-8 name)          the campaign's active arms, column order
    f8[K] successes, f8[K] failures                  Beta counts beyond the prior
    f8[K] count, f8[K] total, f8[K] total_sq         value posterior: n, Σ reward, Σ reward²
    i8 version, i8 last_event_ms                     events applied; the decay clock
    u1 emergency, u1 manual, u1 evidence             flags; evidence bits (VIOLATION_NAMES)
    f8 × 13  outcomes, won, clicks, conversions, spend, revenue      evidence (decayed sums)
             recent_n, recent_sum, recent_sq, base_n, base_sum, base_sq   monitor sums
             target_cpa                                             latest target (NaN: none)

Layout version 1 (0.2): the same header; ``f8[K]`` successes and failures, ``i8`` version and
last_event_ms, ``u1`` emergency, then the 0.2 monitor's seven EWMAs and three counters. It
restores the Beta counts, version, clock and emergency flag; the value posterior starts at its
prior and the evidence empty (EWMAs are not sufficient statistics).

The field lists are fixed here; a unit test fails if the state's fields change without a new
layout version. This module knows bytes and columns only: the policy's state
(:meth:`processor.policy.state.BiddingState.pack` / ``restore_packed``) hands it the columns of
its rows and loads the columns it gets back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from processor.errors import StateError

LAYOUT_VERSION = 2
READABLE_VERSIONS = (1, 2)
VALUE_FIELDS = ("count", "total", "total_sq")
SAFETY_FLAGS = ("emergency", "manual", "evidence")
SAFETY_FLOATS = (
    "outcomes",
    "won",
    "clicks",
    "conversions",
    "spend",
    "revenue",
    "recent_n",
    "recent_sum",
    "recent_sq",
    "base_n",
    "base_sum",
    "base_sq",
    "target_cpa",
)
V1_SAFETY_FLOATS = ("fast", "fast_w", "base", "base_w", "spend", "revenue", "conv")
V1_SAFETY_INTS = ("n", "violation_run", "healthy_run")


def campaign_dtype(k: int, version: int = LAYOUT_VERSION) -> np.dtype[Any]:
    """Structured dtype of the fixed-width part for ``k`` arms in layout ``version``."""
    if version == 1:
        return np.dtype(
            [
                ("successes", "<f8", (k,)),
                ("failures", "<f8", (k,)),
                ("version", "<i8"),
                ("last_event_ms", "<i8"),
                ("emergency", "u1"),
                *[(name, "<f8") for name in V1_SAFETY_FLOATS],
                *[(name, "<i8") for name in V1_SAFETY_INTS],
            ]
        )
    return np.dtype(
        [
            ("successes", "<f8", (k,)),
            ("failures", "<f8", (k,)),
            *[(name, "<f8", (k,)) for name in VALUE_FIELDS],
            ("version", "<i8"),
            ("last_event_ms", "<i8"),
            *[(name, "u1") for name in SAFETY_FLAGS],
            *[(name, "<f8") for name in SAFETY_FLOATS],
        ]
    )


def _header(arm_names: Sequence[str]) -> bytes:
    parts = [bytes([LAYOUT_VERSION, len(arm_names)])]
    for name in arm_names:
        data = name.encode()
        if not data or len(data) > 255:
            msg = f"arm name {name!r} cannot be packed (1..255 UTF-8 bytes)"
            raise StateError(msg)
        parts.append(bytes([len(data)]) + data)
    return b"".join(parts)


def _parse_header(blob: bytes) -> tuple[bytes, int, tuple[str, ...]]:
    """``(header bytes, layout version, arm names)`` of one blob; :class:`StateError` if bad."""
    if len(blob) < 2 or blob[0] not in READABLE_VERSIONS:
        version = blob[0] if blob else None
        msg = f"packed state: unknown layout version {version!r} (this build reads 1 and 2)"
        raise StateError(msg)
    k = blob[1]
    pos = 2
    names = []
    try:
        for _ in range(k):
            size = blob[pos]
            names.append(blob[pos + 1 : pos + 1 + size].decode())
            pos += 1 + size
    except (IndexError, UnicodeDecodeError) as exc:
        msg = f"packed state: malformed arm list ({exc})"
        raise StateError(msg) from exc
    if pos > len(blob) or k == 0:
        msg = "packed state: malformed arm list"
        raise StateError(msg)
    return blob[:pos], blob[0], tuple(names)


def pack_columns(arm_names: Sequence[str], cols: Mapping[str, Any]) -> list[bytes]:
    """Packed state (layout 2) of each row of ``cols``, column-wise.

    Args:
        arm_names: The names of the K arm columns of the per-arm arrays.
        cols: ``active`` (n × K bool: the arms of each campaign), ``successes``, ``failures`` and
            every :data:`VALUE_FIELDS` (n × K), ``version`` and ``last_event_ms`` (n), every
            :data:`SAFETY_FLAGS` and :data:`SAFETY_FLOATS` (n).
    """
    active = np.asarray(cols["active"], dtype=np.bool_)
    n = active.shape[0]
    if n == 0:
        return []
    masks, group = np.unique(active, axis=0, return_inverse=True)
    group = group.reshape(-1)
    out: list[bytes] = [b""] * n
    for g, mask in enumerate(masks):
        arms = np.flatnonzero(mask)
        header = _header([arm_names[int(c)] for c in arms])
        idx = np.flatnonzero(group == g)
        rec = np.zeros(idx.size, dtype=campaign_dtype(arms.size))
        for name in ("successes", "failures", *VALUE_FIELDS):
            rec[name] = cols[name][idx][:, arms]
        for name in ("version", "last_event_ms", *SAFETY_FLAGS, *SAFETY_FLOATS):
            rec[name] = cols[name][idx]
        raw = rec.tobytes()
        w = rec.dtype.itemsize
        blobs = [header + raw[i : i + w] for i in range(0, idx.size * w, w)]
        if idx.size == n:
            return blobs
        for i, blob in zip(idx.tolist(), blobs, strict=True):
            out[i] = blob
    return out


def unpack_groups(blobs: Sequence[bytes]) -> list[tuple[tuple[str, ...], Any, Any]]:
    """Decode blobs into groups ``(arm names, index array into blobs, structured records)``.

    Records of a group share one layout version (``records.dtype`` tells which).

    Raises:
        StateError: A blob is malformed (unknown layout, bad arm list, wrong length).
    """
    n = len(blobs)
    if n == 0:
        return []
    header, version, names = _parse_header(blobs[0])
    dtype = campaign_dtype(len(names), version)
    width = len(header) + dtype.itemsize
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    if bool((lengths == width).all()):
        buf = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(n, width)
        same = (buf[:, : len(header)] == np.frombuffer(header, dtype=np.uint8)).all(axis=1)
        if bool(same.all()):
            rec = np.ascontiguousarray(buf[:, len(header) :]).view(dtype)
            return [(names, np.arange(n), rec.reshape(-1))]
    # several arm lists (or layouts) in one partition: group blobs by header
    by_header: dict[bytes, list[int]] = {}
    parsed: dict[bytes, tuple[int, tuple[str, ...]]] = {}
    for i, blob in enumerate(blobs):
        head, ver, arms = _parse_header(blob)
        by_header.setdefault(head, []).append(i)
        parsed[head] = (ver, arms)
    groups = []
    for head, members in by_header.items():
        ver, arms = parsed[head]
        dtype = campaign_dtype(len(arms), ver)
        if any(len(blobs[i]) != len(head) + dtype.itemsize for i in members):
            msg = f"packed state: wrong length for arms {list(arms)} (layout {ver})"
            raise StateError(msg)
        body = b"".join(blobs[i][len(head) :] for i in members)
        groups.append((arms, np.array(members), np.frombuffer(body, dtype=dtype)))
    return groups


def _is_v1(rec: Any) -> bool:
    return "count" not in (rec.dtype.names or ())


def unpack_columns(
    blobs: Sequence[bytes],
) -> list[tuple[tuple[str, ...], Any, dict[str, Any]]]:
    """Decode blobs into groups ``(arm names, index array into blobs, columns)``: the columns
    :func:`pack_columns` takes, per arm for the group's arms (a layout-1 blob gives an empty
    value posterior and empty evidence), ``safety`` holding the guardrail columns.

    Raises:
        StateError: A blob is malformed (unknown layout, bad arm list, wrong length).
    """
    out = []
    for arms, idx, rec in unpack_groups(blobs):
        v1 = _is_v1(rec)
        zeros = np.zeros((rec.shape[0], len(arms)))
        cols: dict[str, Any] = {
            "successes": rec["successes"],
            "failures": rec["failures"],
            "version": rec["version"],
            "last_event_ms": rec["last_event_ms"],
            "safety": _safety_columns(rec, v1),
        }
        for name in VALUE_FIELDS:
            cols[name] = zeros if v1 else rec[name]
        out.append((arms, idx, cols))
    return out


def _safety_columns(rec: Any, v1: bool) -> dict[str, Any]:
    n = rec.shape[0]
    if v1:
        cols: dict[str, Any] = {name: np.zeros(n) for name in SAFETY_FLOATS}
        cols["target_cpa"] = np.full(n, np.nan)
        cols.update(manual=np.zeros(n, dtype=np.bool_), evidence=np.zeros(n, dtype=np.int64))
        cols["clock_ms"] = np.zeros(n, dtype=np.int64)
    else:
        cols = {name: rec[name] for name in SAFETY_FLOATS}
        cols["manual"] = rec["manual"].astype(np.bool_)
        cols["evidence"] = rec["evidence"].astype(np.int64)
        cols["clock_ms"] = rec["last_event_ms"]
    cols["emergency"] = rec["emergency"].astype(np.bool_)
    return cols


def campaign_state_dicts(blobs: Sequence[bytes]) -> list[dict[str, Any]]:
    """The JSON-shaped state (``BiddingState.get_key_state``) of each packed blob.

    A layout-1 blob gives its 0.2 shape (the EWMA monitor in ``safety``, no ``value``).
    """
    out: list[dict[str, Any]] = [{}] * len(blobs)
    for arms, idx, rec in unpack_groups(blobs):
        v1 = _is_v1(rec)
        names = rec.dtype.names or ()
        for i, r in zip(idx.tolist(), rec.tolist(), strict=True):
            fields = dict(zip(names, r, strict=True))
            state: dict[str, Any] = {
                "thompson": {
                    "arm_names": list(arms),
                    "successes": [float(x) for x in fields["successes"]],
                    "failures": [float(x) for x in fields["failures"]],
                    "version": int(fields["version"]),
                    "last_event_ms": int(fields["last_event_ms"]),
                },
            }
            if v1:
                state["safety"] = {
                    "emergency": bool(fields["emergency"]),
                    **{k: float(fields[k]) for k in V1_SAFETY_FLOATS},
                    **{k: int(fields[k]) for k in V1_SAFETY_INTS},
                }
            else:
                state["value"] = {k: [float(x) for x in fields[k]] for k in VALUE_FIELDS}
                target = float(fields["target_cpa"])
                state["safety"] = {
                    "emergency": bool(fields["emergency"]),
                    "manual": bool(fields["manual"]),
                    **{k: float(fields[k]) for k in SAFETY_FLOATS},
                    "target_cpa": None if target != target else target,
                    "clock_ms": int(fields["last_event_ms"]),
                    "evidence": int(fields["evidence"]),
                }
            out[i] = state
    return out
