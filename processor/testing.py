"""Helpers for tests, benchmarks and demos that need a real Kafka broker.

:func:`acquire_broker` finds or starts a broker, in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: use that broker as it is.
2. A Docker engine answers: a throwaway KRaft broker from testcontainers.
3. Java 17+ (and Maven, the first time) are present: the single-node broker
   from Maven Central jars, ``deploy/local-kafka/kafka.sh``, in a private run
   directory so it never collides with a developer's ``make kafka-up`` broker.

If none works it raises :class:`BrokerUnavailableError` saying how to get one;
it never skips, so CI cannot pass without having run the integration tests.

Example:
    >>> from processor.testing import acquire_broker, create_topics, unique_name
    >>> with acquire_broker() as broker:  # doctest: +SKIP
    ...     topic = unique_name("events")
    ...     create_topics(broker.bootstrap, {topic: 3})
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# The typed home of NewTopic; confluent_kafka.admin re-exports it without declaring so.
from confluent_kafka.cimpl import NewTopic

from processor.errors import ProcessorError, TopologyError

logger = logging.getLogger(__name__)

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
"""Environment variable naming an existing broker (``host:port[,host:port]``)."""

TESTCONTAINERS_IMAGE_ENV = "BANDIT_KAFKA_TC_IMAGE"
"""Environment variable overriding the testcontainers image."""

# testcontainers' KafkaContainer drives the Confluent image's start scripts, so
# it needs a cp-kafka image (KRaft from 7.0); 7.9 ships Apache Kafka 3.9.
TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:7.9.0"

LOCAL_KAFKA_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "local-kafka" / "kafka.sh"
"""The local jar broker's control script, found relative to this package in a checkout."""

# A cold jar cache downloads ~45 MB from Maven Central before the broker starts.
_LOCAL_START_TIMEOUT_S = 600.0
_LOCAL_STOP_TIMEOUT_S = 60.0
_DOCKER_PING_TIMEOUT_S = 3.0

BrokerKind = Literal["env", "testcontainers", "local"]
_T = TypeVar("_T")


class BrokerUnavailableError(ProcessorError):
    """No Kafka broker could be found or started."""


class WaitTimeoutError(ProcessorError, TimeoutError):
    """A condition awaited by :func:`wait_for` did not become true in time."""


@dataclass(frozen=True)
class Broker:
    """A reachable Kafka broker.

    Attributes:
        bootstrap: ``bootstrap.servers`` value for clients.
        kind: where it came from: ``"env"`` (``KAFKA_BOOTSTRAP_SERVERS``),
            ``"testcontainers"`` or ``"local"`` (the Maven-jar broker).
    """

    bootstrap: str
    kind: BrokerKind


def broker_unavailable_message(reasons: list[str]) -> str:
    """Explain why no broker was found and the three ways to get one.

    Args:
        reasons: one line per way that was tried and why it did not work.

    Returns:
        A message for :class:`BrokerUnavailableError`.
    """
    tried = "".join(f"\n  - {reason}" for reason in reasons) or "\n  - (nothing was tried)"
    return (
        "No Kafka broker for the integration tests. Tried:"
        f"{tried}\n"
        "Get a broker in one of three ways:\n"
        f"  1. point {BOOTSTRAP_ENV} at a running broker (host:port) whose internal topics\n"
        "     allow transactions on it (e.g. transaction.state.log.replication.factor=1 and\n"
        "     transaction.state.log.min.isr=1 for a single broker);\n"
        "  2. run a Docker engine, so testcontainers can start one;\n"
        "  3. install Java 17+ and Maven (Maven Central reachable once), so\n"
        "     deploy/local-kafka/kafka.sh can start one from Maven jars (make kafka-up)."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago.

    Binds port 0, reads the port the OS chose and closes the socket. Another
    process can take it before the caller binds it, which is fine for tests.

    Args:
        host: interface to bind.

    Returns:
        The port number (never 0).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def unique_name(prefix: str) -> str:
    """Return ``<prefix>-<12 hex chars>``, unique enough for topics, groups and ids.

    Args:
        prefix: readable part, e.g. the test's subject.

    Returns:
        The name.
    """
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGTERM, wait up to ``timeout_s``, SIGKILL if it hangs; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    return int(proc.returncode)


def stage_ready(port: int, host: str = "127.0.0.1") -> bool:
    """True when the stage's ``/readyz`` on ``port`` answers 200 (False while unreachable)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], _T],
    timeout: float,
    *,
    interval: float = 0.05,
    description: str | None = None,
) -> _T:
    """Call ``predicate`` until it returns a truthy value, for at most ``timeout`` seconds.

    Args:
        predicate: condition to poll; its first truthy result is returned.
        timeout: seconds before giving up.
        interval: seconds between calls.
        description: what is awaited, for the error message.

    Returns:
        The predicate's first truthy result.

    Raises:
        WaitTimeoutError: the predicate stayed falsy for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = description or getattr(predicate, "__name__", "condition")
            msg = f"timed out after {timeout:g} s waiting for {what}"
            raise WaitTimeoutError(msg)
        time.sleep(interval)


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    timeout: float = 30.0,
) -> None:
    """Create topics (replication factor 1) and wait until every partition has a leader.

    A topic that already exists with the requested partition count is accepted.

    Args:
        bootstrap: ``bootstrap.servers``.
        topics: topic name → partition count.
        config: topic configs applied to every topic (e.g. ``cleanup.policy``).
        timeout: seconds for creation and for the topics to become usable.

    Raises:
        TopologyError: creation failed, or an existing topic has another partition count.
        WaitTimeoutError: the topics did not get leaders in time.
    """
    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))
        for name, partitions in topics.items()
    ]
    futures = admin.create_topics(new, request_timeout=timeout, operation_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            msg = f"could not create topic {name!r}: {exc}"
            raise TopologyError(msg) from exc

    def all_ready() -> bool:
        metadata = admin.list_topics(timeout=min(timeout, 5.0))
        for name, partitions in topics.items():
            found = metadata.topics.get(name)
            if found is None or found.error is not None:
                return False
            if len(found.partitions) != partitions:
                msg = (
                    f"topic {name!r} has {len(found.partitions)} partitions, expected {partitions}"
                )
                raise TopologyError(msg)
            if any(p.leader < 0 for p in found.partitions.values()):
                return False
        return True

    wait_for(all_ready, timeout, interval=0.1, description=f"topics {sorted(topics)}")


def docker_available(timeout: float = _DOCKER_PING_TIMEOUT_S) -> bool:
    """Tell, quickly and quietly, whether a Docker engine answers.

    Args:
        timeout: seconds to wait for the engine.

    Returns:
        True if the docker SDK's ping (or, without the SDK, ``docker info``) succeeds.
    """
    try:
        import docker  # type: ignore[import-untyped]  # dev-only dependency, no stubs
    except ImportError:
        if shutil.which("docker") is None:
            return False
        try:
            done = subprocess.run(
                ["docker", "info"],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0
    try:
        client = docker.from_env(timeout=int(max(1.0, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure (no socket, refused, timeout) means "no engine here"
        return False


def _kafka_container_class() -> type[Any] | None:
    # Dev-only dependency: imported on demand, and its absence is not an error here.
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        try:
            from testcontainers.kafka import KafkaContainer
        except ImportError:
            return None
    container_class: type[Any] = KafkaContainer
    return container_class


def _start_container(container_class: type[Any]) -> Any:
    image = os.environ.get(TESTCONTAINERS_IMAGE_ENV, TESTCONTAINERS_IMAGE)
    container = (
        container_class(image)
        .with_kraft()
        # Single broker: the default RF 3 / min ISR 2 would leave transactions without
        # a coordinator, and init_transactions would time out.
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "1")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    logger.info("starting a Kafka container from %s", image)
    return container.start(timeout=180)


def _local_broker_missing_tools(script: Path) -> str | None:
    if not script.is_file():
        return f"{script} not found (the local broker needs a source checkout)"
    if shutil.which("bash") is None:
        return "bash not found"
    java_home = os.environ.get("JAVA_HOME")
    has_java = bool(java_home and Path(java_home, "bin", "java").is_file()) or bool(
        shutil.which("java")
    )
    if not has_java:
        return "java not found (JAVA_HOME unset and no java on PATH)"
    return None


def _run_script(
    script: Path, command: str, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), command],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def _local_broker(script: Path) -> Iterator[Broker]:
    run_dir = Path(tempfile.mkdtemp(prefix="bandit-kafka-"))
    # kafka.sh's own Python is only used to pick ports; this interpreter surely exists.
    env = {**os.environ, "BANDIT_KAFKA_RUN_DIR": str(run_dir), "PYTHON": sys.executable}
    logger.info("starting the local jar broker in %s", run_dir)
    try:
        try:
            done = _run_script(script, "start", env, _LOCAL_START_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            msg = f"{script} start did not finish in {_LOCAL_START_TIMEOUT_S:g} s"
            raise BrokerUnavailableError(msg) from exc
        lines = done.stdout.split()
        if done.returncode != 0 or not lines:
            tail = "\n".join(done.stderr.splitlines()[-40:])
            msg = f"{script} start failed (exit {done.returncode}):\n{tail}"
            raise BrokerUnavailableError(msg)
        yield Broker(bootstrap=lines[-1], kind="local")
    finally:
        try:
            stopped = _run_script(script, "stop", env, _LOCAL_STOP_TIMEOUT_S)
            if stopped.returncode != 0:
                logger.warning("kafka.sh stop failed: %s", stopped.stderr.strip())
        except (OSError, subprocess.TimeoutExpired):
            logger.warning("kafka.sh stop did not finish; run dir %s kept", run_dir)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def acquire_broker() -> Iterator[Broker]:
    """Find or start a Kafka broker for the duration of the ``with`` block.

    Order: ``KAFKA_BOOTSTRAP_SERVERS``, then testcontainers when a Docker engine
    answers, then the local jar broker (``deploy/local-kafka/kafka.sh``) in a
    private temporary run directory. A broker this function started is stopped
    and removed on exit; an external one is left alone.

    Yields:
        The broker.

    Raises:
        BrokerUnavailableError: none of the three ways worked; the message says
            what was tried and how to get a broker.
    """
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        logger.info("using the broker at %s from %s", external, BOOTSTRAP_ENV)
        yield Broker(bootstrap=external, kind="env")
        return

    reasons = [f"{BOOTSTRAP_ENV} is not set"]
    if not docker_available():
        reasons.append("no Docker engine answers (testcontainers needs one)")
    elif (container_class := _kafka_container_class()) is None:
        reasons.append("a Docker engine answers but testcontainers is not installed")
    else:
        try:
            container = _start_container(container_class)
        except Exception as exc:  # image pull, engine or startup failure: try the next way
            logger.warning("testcontainers could not start Kafka: %s", exc)
            reasons.append(f"testcontainers could not start Kafka: {exc}")
        else:
            try:
                yield Broker(bootstrap=str(container.get_bootstrap_server()), kind="testcontainers")
            finally:
                container.stop()
            return

    missing = _local_broker_missing_tools(LOCAL_KAFKA_SCRIPT)
    if missing is not None:
        reasons.append(f"local jar broker: {missing}")
        raise BrokerUnavailableError(broker_unavailable_message(reasons))
    with _local_broker(LOCAL_KAFKA_SCRIPT) as broker:
        yield broker
