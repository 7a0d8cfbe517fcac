"""Exception hierarchy: one root, a small subclass per concern.

Third-party errors are converted at the boundary with ``raise ... from exc`` so
callers only ever need to catch :class:`ProcessorError`.
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ProcessorError):
    """The configuration is invalid; the message names the offending setting."""


class SerializationError(ProcessorError):
    """A record could not be encoded or decoded.

    Keeps where the record came from so it can be dead-lettered with context.
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.raw = raw


class StateError(ProcessorError):
    """Keyed state is inconsistent or could not be restored."""


class TransactionError(ProcessorError):
    """A Kafka transaction failed in a way the stage cannot recover from."""


class TopologyError(ProcessorError):
    """Topics are missing or not co-partitioned."""


class KafkaAuthError(ProcessorError):
    """Kafka refused this principal (missing ACL) or its credentials; retrying cannot help."""
