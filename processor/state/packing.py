"""Packed binary layout of a campaign's state (``StateRecord.state_packed``).

JSON costs ~20 µs per key to parse; a restore of a million keys spent most of its time there. A
packed state is fixed-width once its arm list is known, and a changelog partition's campaigns
nearly always share one arm list, so a whole partition decodes with one ``np.frombuffer``.

Layout version 1 (little-endian), one blob per campaign::

    u8 layout version (1)
    u8 K, then K × (u8 length, UTF-8 name)          the campaign's active arms, column order
    f8[K] successes, f8[K] failures                  Thompson counts beyond the prior
    i8 version, i8 last_event_ms
    u1 emergency
    f8 × 7  fast, fast_w, base, base_w, spend, revenue, conv      safety monitor EWMAs
    i8 × 3  n, violation_run, healthy_run                         safety counters

The safety field list is fixed here; a unit test fails if SafetyState's fields change without a
new layout version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from processor.errors import StateError

if TYPE_CHECKING:
    from processor.policy.bidding import BiddingState

LAYOUT_VERSION = 1
SAFETY_FLOATS = ("fast", "fast_w", "base", "base_w", "spend", "revenue", "conv")
SAFETY_INTS = ("n", "violation_run", "healthy_run")


def campaign_dtype(k: int) -> np.dtype[Any]:
    """Structured dtype of the fixed-width part for ``k`` arms."""
    return np.dtype(
        [
            ("successes", "<f8", (k,)),
            ("failures", "<f8", (k,)),
            ("version", "<i8"),
            ("last_event_ms", "<i8"),
            ("emergency", "u1"),
            *[(name, "<f8") for name in SAFETY_FLOATS],
            *[(name, "<i8") for name in SAFETY_INTS],
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


def _parse_header(blob: bytes) -> tuple[bytes, tuple[str, ...]]:
    """``(header bytes, arm names)`` of one blob; :class:`StateError` if malformed."""
    if len(blob) < 2 or blob[0] != LAYOUT_VERSION:
        version = blob[0] if blob else None
        msg = f"packed state: unknown layout version {version!r} (this build reads 1)"
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
    return blob[:pos], tuple(names)


def pack_campaigns(state: BiddingState, keys: Sequence[str]) -> list[bytes]:
    """Packed state of each of ``keys`` (created if new), column-wise."""
    n = len(keys)
    if n == 0:
        return []
    rows = state.rows(list(keys))
    thompson = state.thompson.export_rows(rows)
    safety = state.safety.get_rows_columns(rows)
    names = state.thompson.arm_names
    active = thompson["active"]
    masks, group = np.unique(active, axis=0, return_inverse=True)
    group = group.reshape(-1)
    out: list[bytes] = [b""] * n
    for g, mask in enumerate(masks):
        cols = np.flatnonzero(mask)
        header = _header([names[c] for c in cols])
        idx = np.flatnonzero(group == g)
        rec = np.zeros(idx.size, dtype=campaign_dtype(cols.size))
        rec["successes"] = thompson["successes"][idx][:, cols]
        rec["failures"] = thompson["failures"][idx][:, cols]
        rec["version"] = thompson["version"][idx]
        rec["last_event_ms"] = thompson["last_event_ms"][idx]
        for name in ("emergency", *SAFETY_FLOATS, *SAFETY_INTS):
            rec[name] = safety[name][idx]
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

    Raises:
        StateError: A blob is malformed (unknown layout, bad arm list, wrong length).
    """
    n = len(blobs)
    if n == 0:
        return []
    header, names = _parse_header(blobs[0])
    width = len(header) + campaign_dtype(len(names)).itemsize
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    if bool((lengths == width).all()):
        buf = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(n, width)
        same = (buf[:, : len(header)] == np.frombuffer(header, dtype=np.uint8)).all(axis=1)
        if bool(same.all()):
            rec = np.ascontiguousarray(buf[:, len(header) :]).view(campaign_dtype(len(names)))
            return [(names, np.arange(n), rec.reshape(-1))]
    # several arm lists in one partition: group blobs by header
    by_header: dict[bytes, list[int]] = {}
    parsed: dict[bytes, tuple[str, ...]] = {}
    for i, blob in enumerate(blobs):
        head, arms = _parse_header(blob)
        by_header.setdefault(head, []).append(i)
        parsed[head] = arms
    groups = []
    for head, members in by_header.items():
        arms = parsed[head]
        dtype = campaign_dtype(len(arms))
        if any(len(blobs[i]) != len(head) + dtype.itemsize for i in members):
            msg = f"packed state: wrong length for arms {list(arms)}"
            raise StateError(msg)
        body = b"".join(blobs[i][len(head) :] for i in members)
        groups.append((arms, np.array(members), np.frombuffer(body, dtype=dtype)))
    return groups


def restore_campaigns(state: BiddingState, keys: Sequence[str], blobs: Sequence[bytes]) -> None:
    """Load packed states into ``state`` (equals ``set_key_state`` per key)."""
    all_rows = state.rows(list(keys))  # new rows in the given order, as key by key
    for arms, idx, rec in unpack_groups(blobs):
        rows = all_rows[idx]
        state.thompson.set_rows_columns(
            rows,
            arms,
            rec["successes"],
            rec["failures"],
            rec["version"],
            rec["last_event_ms"],
        )
        columns = {name: rec[name] for name in ("emergency", *SAFETY_FLOATS, *SAFETY_INTS)}
        columns["emergency"] = columns["emergency"].astype(np.bool_)
        state.safety.set_rows_columns(rows, columns)


def campaign_state_dicts(blobs: Sequence[bytes]) -> list[dict[str, Any]]:
    """The JSON-shaped state (``BiddingState.get_key_state``) of each packed blob."""
    out: list[dict[str, Any]] = [{}] * len(blobs)
    for arms, idx, rec in unpack_groups(blobs):
        for i, r in zip(idx.tolist(), rec.tolist(), strict=True):
            fields = dict(zip(rec.dtype.names or (), r, strict=True))
            out[i] = {
                "thompson": {
                    "arm_names": list(arms),
                    "successes": [float(x) for x in fields["successes"]],
                    "failures": [float(x) for x in fields["failures"]],
                    "version": int(fields["version"]),
                    "last_event_ms": int(fields["last_event_ms"]),
                },
                "safety": {
                    "emergency": bool(fields["emergency"]),
                    **{k: float(fields[k]) for k in SAFETY_FLOATS},
                    **{k: int(fields[k]) for k in SAFETY_INTS},
                },
            }
    return out
