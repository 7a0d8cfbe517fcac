"""The exactly-once runtime: the loop, rebalance handling, commit, restore and fault recovery.

:class:`Stage` is the entry point (``bandit-processor run``). Kafka-free batch handling lives in
:mod:`processor.engine`; client builders and the transactional calls in :mod:`processor.kafka`.
"""

from processor.kafka.clients import Clients
from processor.runtime.stage import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, EXIT_POISON, Stage

__all__ = ["EXIT_CONFIG", "EXIT_FATAL", "EXIT_OK", "EXIT_POISON", "Clients", "Stage"]
