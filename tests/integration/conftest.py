"""Fixtures for tests against a real Kafka broker (never a mock of Kafka).

One broker per test session, from :func:`processor.testing.acquire_broker`:
``KAFKA_BOOTSTRAP_SERVERS``, else testcontainers, else the local jar broker.
If none is available the session fails with instructions; it never skips.

Client factories take librdkafka settings as keyword arguments; underscores
become dots (``enable_auto_commit=True`` is ``enable.auto.commit``), and
settings whose names need no translation can be passed as ``**{"a.b": v}``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from processor.testing import Broker, acquire_broker, create_topics, unique_name

logger = logging.getLogger(__name__)

TXN_TIMEOUT_S = 30.0
"""Timeout for every transactional call: librdkafka can otherwise block forever."""

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration with ``pytest.mark.integration``."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


def _librdkafka_conf(conf: Mapping[str, Any]) -> dict[str, Any]:
    return {key.replace("_", "."): value for key, value in conf.items()}


class TopicFactory(Protocol):
    def __call__(
        self, partitions: int = 1, config: Mapping[str, str] | None = None, prefix: str = "it"
    ) -> str: ...


class ProducerFactory(Protocol):
    def __call__(self, transactional: bool = False, **conf: Any) -> Producer: ...


class ConsumerFactory(Protocol):
    def __call__(
        self,
        topics: Sequence[str],
        group_id: str | None = None,
        isolation_level: str = "read_committed",
        **conf: Any,
    ) -> Consumer: ...


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    """The session's broker (started here unless ``KAFKA_BOOTSTRAP_SERVERS`` names one)."""
    with acquire_broker() as broker:
        logger.info("integration tests use the %s broker at %s", broker.kind, broker.bootstrap)
        yield broker


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: Broker) -> str:
    """``bootstrap.servers`` of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def topic_factory(bootstrap: str) -> Iterator[TopicFactory]:
    """Create uniquely named topics; they are deleted at teardown."""
    created: list[str] = []

    def make(
        partitions: int = 1, config: Mapping[str, str] | None = None, prefix: str = "it"
    ) -> str:
        name = unique_name(prefix)
        create_topics(bootstrap, {name: partitions}, config)
        created.append(name)
        return name

    yield make
    if created:
        # Best effort: keeps a shared KAFKA_BOOTSTRAP_SERVERS broker tidy.
        futures = AdminClient({"bootstrap.servers": bootstrap}).delete_topics(created)
        for future in futures.values():
            with contextlib.suppress(Exception):
                future.result(timeout=10)


@pytest.fixture
def group_id() -> str:
    """A fresh consumer group id."""
    return f"it-group-{uuid.uuid4()}"


@pytest.fixture
def producer_factory(bootstrap: str) -> Iterator[ProducerFactory]:
    """Make producers; transactional ones get a unique ``transactional.id`` and are initialised."""
    producers: list[Producer] = []

    def make(transactional: bool = False, **conf: Any) -> Producer:
        settings: dict[str, Any] = {"bootstrap.servers": bootstrap, "linger.ms": 5}
        settings.update(_librdkafka_conf(conf))
        if transactional:
            settings.setdefault("transactional.id", unique_name("it-txn"))
            settings.setdefault("transaction.timeout.ms", 60_000)
        producer = Producer(settings)
        producers.append(producer)
        if transactional:
            producer.init_transactions(TXN_TIMEOUT_S)
        return producer

    yield make
    for producer in producers:
        # A fenced or failed producer may refuse to flush, and its close() warns that it
        # cannot abort; that is the expected end of such a producer, not a test failure.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.suppress(KafkaException, RuntimeError):
                producer.flush(5.0)
            with contextlib.suppress(KafkaException, RuntimeError):
                producer.close()
        for warning in caught:
            logger.info("producer teardown: %s", warning.message)


@pytest.fixture
def consumer_factory(bootstrap: str) -> Iterator[ConsumerFactory]:
    """Make consumers subscribed to ``topics``, reading from the earliest offset, no auto-commit."""
    consumers: list[Consumer] = []

    def make(
        topics: Sequence[str],
        group_id: str | None = None,
        isolation_level: str = "read_committed",
        **conf: Any,
    ) -> Consumer:
        settings: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id or f"it-group-{uuid.uuid4()}",
            "isolation.level": isolation_level,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        settings.update(_librdkafka_conf(conf))
        consumer = Consumer(settings)
        consumers.append(consumer)
        consumer.subscribe(list(topics))
        return consumer

    yield make
    for consumer in consumers:
        with contextlib.suppress(KafkaException, RuntimeError):
            consumer.close()
