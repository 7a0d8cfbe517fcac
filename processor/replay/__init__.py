"""Replay and backtest of historical topics, off-policy evaluation and decision audit.

* :mod:`~processor.replay.source` reads a time range of the input topics (or exported Avro files)
  and merges partitions by event time.
* :mod:`~processor.replay.backtest` runs the merged stream through the stage's own handlers.
* :mod:`~processor.replay.ope` holds the off-policy estimators (IPS, SNIPS, doubly robust, replay).
* :mod:`~processor.replay.report` writes ``report.json`` and ``report.html``.
* :mod:`~processor.replay.verify` re-derives logged decisions (``--verify-decisions``).
"""

from __future__ import annotations

from processor.replay.ope import Estimate, doubly_robust, ips, snips

__all__ = ["Estimate", "doubly_robust", "ips", "snips"]
