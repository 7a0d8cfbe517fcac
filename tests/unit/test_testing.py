"""Unit tests for the broker-free parts of processor.testing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor import testing
from processor.errors import ProcessorError
from processor.testing import (
    BOOTSTRAP_ENV,
    BrokerUnavailableError,
    WaitTimeoutError,
    acquire_broker,
    broker_unavailable_message,
    free_port,
    unique_name,
    wait_for,
)


def test_free_port_is_bindable_and_never_zero() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_unique_name_keeps_prefix_and_differs() -> None:
    names = {unique_name("orders") for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith("orders-") and len(name) == len("orders-") + 12 for name in names)


def test_wait_for_returns_first_truthy_result() -> None:
    results: Iterator[object] = iter([None, 0, [], "ready"])
    assert wait_for(lambda: next(results), timeout=5.0, interval=0.0) == "ready"


def test_wait_for_raises_a_processor_error_and_timeout_error() -> None:
    with pytest.raises(WaitTimeoutError, match="waiting for the moon") as raised:
        wait_for(lambda: False, timeout=0.0, description="the moon")
    assert isinstance(raised.value, ProcessorError)
    assert isinstance(raised.value, TimeoutError)


def test_message_lists_what_was_tried_and_the_three_ways() -> None:
    message = broker_unavailable_message(["no Docker engine answers", "java not found"])
    assert "  - no Docker engine answers\n  - java not found" in message
    assert BOOTSTRAP_ENV in message
    assert "Docker" in message
    assert "Java 17+ and Maven" in message
    assert "kafka.sh" in message


def test_env_broker_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, " broker-1:9092,broker-2:9092 ")
    with acquire_broker() as broker:
        assert broker.bootstrap == "broker-1:9092,broker-2:9092"
        assert broker.kind == "env"


def test_no_way_to_a_broker_raises_with_instructions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    monkeypatch.setattr(testing, "docker_available", lambda: False)
    monkeypatch.setattr(testing, "LOCAL_KAFKA_SCRIPT", tmp_path / "missing" / "kafka.sh")
    with pytest.raises(BrokerUnavailableError) as raised, acquire_broker():
        pytest.fail("must not yield a broker")
    message = str(raised.value)
    assert "no Docker engine answers" in message
    assert "missing/kafka.sh not found" in message
    assert "Get a broker in one of three ways" in message


class FakeContainer:
    """Stands in for testcontainers' KafkaContainer (builder methods, start, stop)."""

    fail_start = False
    instances: list[FakeContainer] = []  # noqa: RUF012 - test-only registry

    def __init__(self, image: str) -> None:
        self.image = image
        self.env: dict[str, str] = {}
        self.kraft = False
        self.stopped = False
        FakeContainer.instances.append(self)

    def with_kraft(self) -> FakeContainer:
        self.kraft = True
        return self

    def with_env(self, key: str, value: str) -> FakeContainer:
        self.env[key] = value
        return self

    def start(self, timeout: int = 30) -> FakeContainer:
        if self.fail_start:
            raise RuntimeError("image pull refused")
        return self

    def get_bootstrap_server(self) -> str:
        return "localhost:32768"

    def stop(self) -> None:
        self.stopped = True


def test_docker_engine_gives_a_single_broker_container_with_rf1_transactions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    monkeypatch.setattr(testing, "docker_available", lambda: True)
    monkeypatch.setattr(testing, "_kafka_container_class", lambda: FakeContainer)
    FakeContainer.instances.clear()
    with acquire_broker() as broker:
        assert (broker.bootstrap, broker.kind) == ("localhost:32768", "testcontainers")
    (container,) = FakeContainer.instances
    assert container.kraft
    assert container.env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert container.env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert container.stopped


def test_failed_container_falls_through_and_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    monkeypatch.setattr(testing, "docker_available", lambda: True)
    monkeypatch.setattr(FakeContainer, "fail_start", True)
    monkeypatch.setattr(testing, "_kafka_container_class", lambda: FakeContainer)
    monkeypatch.setattr(testing, "LOCAL_KAFKA_SCRIPT", tmp_path / "kafka.sh")
    with pytest.raises(BrokerUnavailableError, match="image pull refused"), acquire_broker():
        pytest.fail("must not yield a broker")
