"""What librdkafka's errors mean for the stage: denied or unauthenticated, and who said so."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError, KafkaException

from processor.errors import KafkaAuthError

logger = logging.getLogger(__name__)

#: Error codes that mean "not allowed" or "not who you say": retrying cannot help.
AUTH_ERRORS = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "consumer group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
    KafkaError.SASL_AUTHENTICATION_FAILED: "authentication",
    KafkaError._AUTHENTICATION: "authentication",
}


def error_of(exc: BaseException) -> KafkaError | None:
    """The :class:`KafkaError` a ``KafkaException`` carries, if any."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err if isinstance(err, KafkaError) else None


def auth_error(err: KafkaError, what: str) -> KafkaAuthError | None:
    """A :class:`KafkaAuthError` for an authorization / authentication error, else ``None``."""
    kind = AUTH_ERRORS.get(err.code())
    if kind is None:
        return None
    if kind == "authentication":
        msg = (
            f"{what}: authentication failed ({err.name()}: {err.str()}); check the SASL / TLS "
            "settings in kafka.common (user, password, mechanism, CA)"
        )
    else:
        msg = (
            f"{what}: not authorized ({err.name()}: {err.str()}); the principal lacks a {kind} "
            "ACL — see deploy/README.md 'Least privileges' for what the stage needs"
        )
    return KafkaAuthError(msg)


class ClientErrors:
    """Collects the errors librdkafka reports through ``error_cb`` (all clients of a process).

    librdkafka retries a failed SASL authentication forever and a blocking call only times out
    (``_TRANSPORT``, ``_TIMED_OUT``); the reason arrives as an ``_AUTHENTICATION`` error event,
    served by the client's next ``poll()``. Callers that saw a call fail poll the client and ask
    :meth:`auth_failure` whether the reason was authentication.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._auth: KafkaError | None = None

    def on_error(self, err: KafkaError) -> None:
        """The ``error_cb`` of every client the stage makes."""
        if err.code() in AUTH_ERRORS:
            with self._lock:
                self._auth = err
            logger.error("kafka: %s", err.str())
        else:
            logger.debug("kafka client error: %s", err.str())

    def auth_failure(self, what: str) -> KafkaAuthError | None:
        """A :class:`KafkaAuthError` if an authentication error was reported (then cleared)."""
        with self._lock:
            err, self._auth = self._auth, None
        return None if err is None else auth_error(err, what)


CLIENT_ERRORS = ClientErrors()
