"""The reward join: a decision log per input partition, and the rule that joins outcomes to it.

Free of Kafka, like :mod:`processor.engine`: the live stage and replay run the same code.
:class:`RewardJoin` is the engine's entry point; :mod:`processor.join.rule` holds the join rule
on columnar batches, :mod:`processor.join.log` the log (expiry, eviction, changelog chunks) and
:mod:`processor.join.table` its storage. DESIGN §3b; README "Reward join".
"""

from __future__ import annotations

from processor.join.log import DecisionLog
from processor.join.reward_join import JoinResult, RewardJoin
from processor.join.rule import STATUS_NAMES

__all__ = ["STATUS_NAMES", "DecisionLog", "JoinResult", "RewardJoin"]
