"""Thin builders for the confluent-kafka clients the stage uses.

Our settings come first, then the user's pass-through librdkafka settings (``kafka.common`` and the
per-client mapping) override them, except for the few that exactly-once correctness depends on,
which are enforced and logged when a user tries to change them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from processor.config import AppConfig, mask_secrets
from processor.errors import ConfigError
from processor.kafka.errors import CLIENT_ERRORS
from processor.kafka.topics import check_topology

logger = logging.getLogger(__name__)

RDKAFKA_LOGGER = logging.getLogger("librdkafka")
"""librdkafka's own log lines go to this logger (so they follow --log-level / --log-format)."""


class InstanceClaim:
    """A host-local slot that makes the default instance id ``<hostname>-<slot>``.

    The first instance of an app on a host takes slot 0, a second one running at the same time
    slot 1, and so on; slots are held with an advisory file lock that the OS releases when the
    process dies. A restarted instance therefore gets the same id back, and its transactional
    producer fences the dead one's open transaction at once instead of leaving it to time out.
    """

    def __init__(self, app_id: str, lock_dir: Path | None = None, max_slots: int = 64) -> None:
        root = lock_dir or Path(
            os.environ.get(
                "BANDIT_LOCK_DIR", Path.home() / ".cache" / "bandit-processor" / "instances"
            )
        )
        host = socket.gethostname()
        self._handle: IO[str] | None = None
        #: The host-local slot (0 for the first instance of the app on this host).
        self.slot = 0
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # e.g. a read-only home in a container: one instance per host is then assumed; pass
            # --instance-id (or BANDIT_INSTANCE_ID, e.g. the pod name) to run more.
            logger.warning("cannot create %s (%s); using instance id %s-0", root, exc, host)
            self.instance_id = f"{host}-0"
            return
        for slot in range(max_slots):
            path = root / f"{app_id}-{host}-{slot}.lock"
            handle = path.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self._handle = handle
            self.slot = slot
            self.instance_id = f"{host}-{slot}"
            return
        msg = f"no free instance slot for app {app_id} on {host} (max {max_slots})"
        raise ConfigError(msg)

    def release(self) -> None:
        """Give the slot back (also happens when the process exits)."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def transactional_id(config: AppConfig) -> str:
    """``<app_id>-<instance_id>``: stable across restarts of the same instance."""
    if not config.instance_id:
        msg = "instance_id must be set (the CLI claims a host-local default)"
        raise ConfigError(msg)
    return f"{config.app_id}-{config.instance_id}"


def _merge(
    base: dict[str, Any],
    *user: Any,
    enforced: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``base`` < user pass-through settings < ``enforced`` < ``code``.

    ``enforced`` protects exactly-once from a user's librdkafka settings; ``code`` is what the
    stage itself asks for a special-purpose client (e.g. the restore's read_uncommitted
    watermark probe) and wins over both.
    """
    conf = dict(base)
    for override in user:
        conf.update(override)
    for name, value in (enforced or {}).items():
        if name in conf and str(conf[name]).lower() != str(value).lower():
            logger.warning(
                "ignoring kafka setting %s=%s: the stage needs %s", name, conf[name], value
            )
        conf[name] = value
    conf.update(code or {})
    return conf


# What co-partitioning needs from the group: the classic protocol with the range assignor
# puts partition p of every input topic on the same member. A user setting that would change it
# is refused, not silently overridden.
_CO_PARTITIONING = {"partition.assignment.strategy": "range", "group.protocol": "classic"}


def _refuse_co_partitioning_overrides(config: AppConfig) -> None:
    for where, settings in (
        ("kafka.common", config.kafka.common),
        ("kafka.consumer", config.kafka.consumer),
    ):
        for name, needed in _CO_PARTITIONING.items():
            value = settings.get(name)
            if value is not None and str(value).strip().lower() != needed:
                msg = (
                    f"{where}: {name}={value} is not supported: the stage needs {name}={needed} "
                    "so that partition p of every input topic lands on the same instance "
                    "(co-partitioned state); remove the setting"
                )
                raise ConfigError(msg)


def consumer_config(config: AppConfig, **extra: Any) -> dict[str, Any]:
    """Settings of the input consumer (group = app id).

    Raises:
        ConfigError: A pass-through setting would break co-partitioning.
    """
    _refuse_co_partitioning_overrides(config)
    base = {
        "bootstrap.servers": config.bootstrap_servers,
        "group.id": config.app_id,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": min(100, config.commit_interval_ms),
        "queued.max.messages.kbytes": 65536,
        # librdkafka waits this long before it fetches again for a partition whose queue was
        # over queued.min.messages / kbytes; its default (1000 ms) starved every loop reading a
        # backlog: a bare consumer read 180-210k/s with it, 1.0-1.4M/s at 10-100 ms (issue 16)
        "fetch.queue.backoff.ms": 10,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 2000,
        "max.poll.interval.ms": 300000,
    }
    enforced: dict[str, Any] = {
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        **_CO_PARTITIONING,
    }
    if config.exactly_once:
        enforced["isolation.level"] = "read_committed"
    return _merge(base, config.kafka.common, config.kafka.consumer, enforced=enforced, code=extra)


def producer_config(config: AppConfig, **extra: Any) -> dict[str, Any]:
    """Settings of the output producer (transactional in exactly-once mode)."""
    base: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        # at-least-once makes a decision visible once it is delivered: do not hold it back 5 ms
        # (under load records still batch while earlier requests are in flight); exactly-once
        # makes it visible at the commit, which flushes anyway
        "linger.ms": 5 if config.exactly_once else 1,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 1048576,
        "compression.type": "lz4",
    }
    enforced: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
    if config.exactly_once:
        enforced["transactional.id"] = transactional_id(config)
        base["transaction.timeout.ms"] = config.transaction_timeout_ms
    return _merge(base, config.kafka.common, config.kafka.producer, enforced=enforced, code=extra)


def restore_consumer_factory(
    config: AppConfig, purpose: str = "restore"
) -> Callable[..., Consumer]:
    """Factory of the consumers :func:`processor.state.changelog.read_changelog` needs.

    read_committed by default; ``read_changelog`` also asks it for a read_uncommitted probe of
    the high watermark, which these code-supplied settings get even in exactly-once mode.
    """

    def make(**extra: Any) -> Consumer:
        settings = {
            "group.id": f"{config.app_id}-{purpose}",
            "isolation.level": "read_committed",
            # a restore reads whole partitions: large fetches (measured 2.3x faster than the
            # 1 MiB default per partition)
            "max.partition.fetch.bytes": 16 << 20,
            "fetch.max.bytes": 64 << 20,
            **extra,
        }
        return make_consumer(config, **settings)

    return make


def consume_ready(consumer: Consumer, limit: int, timeout_s: float) -> list[Any]:
    """Up to ``limit`` messages: all that are fetched already, or else the first to arrive
    within ``timeout_s`` and whatever came with it.

    ``Consumer.consume(n, timeout)`` returns only once it has ``n`` messages or the timeout has
    passed, so at moderate rates every loop would wait the whole timeout before deciding
    anything; this returns as soon as there is something to do.
    """
    msgs: list[Any] = consumer.consume(limit, 0)
    if msgs or limit < 1:
        return msgs
    msgs = consumer.consume(1, timeout_s)
    if msgs and limit > 1:
        msgs.extend(consumer.consume(limit - 1, 0))
    return msgs


def admin_config(config: AppConfig) -> dict[str, Any]:
    """Settings of the admin client."""
    return _merge(
        {"bootstrap.servers": config.bootstrap_servers}, config.kafka.common, config.kafka.admin
    )


def make_consumer(config: AppConfig, **extra: Any) -> Consumer:
    """Create a consumer; its settings are logged with secrets masked."""
    conf = consumer_config(
        config, **{"error_cb": CLIENT_ERRORS.on_error, "logger": RDKAFKA_LOGGER, **extra}
    )
    logger.debug("consumer settings: %s", mask_secrets(conf))
    return Consumer(conf)


def make_producer(config: AppConfig, **extra: Any) -> Producer:
    """Create a producer; its settings are logged with secrets masked."""
    conf = producer_config(
        config, **{"error_cb": CLIENT_ERRORS.on_error, "logger": RDKAFKA_LOGGER, **extra}
    )
    logger.debug("producer settings: %s", mask_secrets(conf))
    return Producer(conf)


def make_admin(config: AppConfig) -> AdminClient:
    """Create an admin client."""
    conf: dict[str, Any] = {
        **admin_config(config),
        "error_cb": CLIENT_ERRORS.on_error,
        "logger": RDKAFKA_LOGGER,
    }
    return AdminClient(conf)


@dataclass
class Clients:
    """How the stage makes its Kafka clients (unit tests of the loop pass fakes)."""

    admin: Callable[[AppConfig], AdminClient] = make_admin
    consumer: Callable[..., Consumer] = make_consumer
    producer: Callable[..., Producer] = make_producer
    restore_consumer_factory: Callable[[AppConfig], Callable[..., Consumer]] = (
        restore_consumer_factory
    )
    topology: Callable[[AdminClient, AppConfig], int] = check_topology
