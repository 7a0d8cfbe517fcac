"""The stage's handlers, free of Kafka: the live stage and replay both run them.

:class:`PartitionEngine` owns the state of one input partition (campaigns of bid-requests /
bid-outcomes partition *p*, ensembles of trade-outcomes partition *p*) and turns one batch of raw
messages into outputs, in the order that is part of the contract (DESIGN §1): control commands,
then reward events, then decisions. Decisions therefore see every reward of their batch.
"""

from __future__ import annotations

from processor.engine.core import PartitionEngine
from processor.engine.outputs import DeadLetter, EngineOutputs, SourceBatch

__all__ = ["DeadLetter", "EngineOutputs", "PartitionEngine", "SourceBatch"]
