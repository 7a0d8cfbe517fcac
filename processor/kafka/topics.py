"""Creating the application's topics and checking that they are co-partitioned."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from processor.config import AppConfig
from processor.errors import KafkaAuthError, TopologyError
from processor.kafka.acls import stage_grants
from processor.kafka.errors import CLIENT_ERRORS, auth_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic the application needs."""

    name: str
    compacted: bool = False
    co_partitioned: bool = True


def topic_specs(config: AppConfig) -> list[TopicSpec]:
    """Every topic of the application (inputs, outputs, changelog, dead letters)."""
    t = config.topics
    return [
        TopicSpec(t.bid_requests),
        TopicSpec(t.bid_outcomes),
        TopicSpec(t.trade_outcomes),
        TopicSpec(t.control),
        TopicSpec(t.bid_decisions),
        TopicSpec(t.ensemble_weights),
        TopicSpec(config.changelog_topic, compacted=True),
        TopicSpec(t.dead_letters, co_partitioned=False),
    ]


def create_topics(
    admin: AdminClient,
    config: AppConfig,
    partitions: int,
    replication_factor: int = -1,
    timeout_s: float = 30.0,
) -> dict[str, str]:
    """Create every missing topic; return ``{topic: "created" | "exists"}``.

    ``replication_factor=-1`` uses the broker's ``default.replication.factor``.
    """
    if partitions <= 0:
        msg = f"--partitions must be > 0, got {partitions}"
        raise TopologyError(msg)
    new = []
    for spec in topic_specs(config):
        cfg = (
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
            if spec.compacted
            else {}
        )
        new.append(
            NewTopic(
                spec.name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config=cfg,
            )
        )
    result: dict[str, str] = {}
    futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result()
            result[name] = "created"
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
            else:
                denied = auth_error(err, f"creating topic {name}")
                if denied is not None:
                    raise denied from exc
                msg = f"cannot create topic {name}: {err.str()}"
                raise TopologyError(msg) from exc
    _wait_visible(admin, list(result), timeout_s)
    return result


def partition_mismatches(admin: AdminClient, config: AppConfig, partitions: int) -> dict[str, int]:
    """Co-partitioned topics whose partition count is not ``partitions``: ``{topic: count}``."""
    specs = [s for s in topic_specs(config) if s.co_partitioned]
    counts = partition_counts(admin, [s.name for s in specs])
    return {name: n for name, n in counts.items() if n != partitions}


def _wait_visible(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(timeout=min(5.0, timeout_s))
        missing = [n for n in names if n not in md.topics or md.topics[n].error is not None]
        if not missing:
            return
        if time.monotonic() > deadline:
            msg = f"topics not visible after {timeout_s}s: {', '.join(missing)}"
            raise TopologyError(msg)
        time.sleep(0.2)


def partition_counts(
    admin: AdminClient, names: list[str], timeout_s: float = 10.0
) -> dict[str, int]:
    """Partition count per topic (0 when the topic does not exist)."""
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb: was it authentication?
        denied = CLIENT_ERRORS.auth_failure("reading topic metadata")
        if denied is not None:
            raise denied from exc
        msg = f"cannot reach the Kafka cluster to read topic metadata: {exc}"
        raise TopologyError(msg) from exc
    counts = {}
    for name in names:
        topic = md.topics.get(name)
        if topic is None:
            # The cluster-wide listing leaves out topics this principal may not describe: ask for
            # this one by name to tell "missing" from "not authorized".
            try:
                topic = admin.list_topics(topic=name, timeout=timeout_s).topics.get(name)
            except KafkaException:
                topic = None
        if topic is not None and topic.error is not None:
            denied = auth_error(topic.error, f"describing topic {name}")
            if denied is not None:
                raise denied
        counts[name] = 0 if topic is None or topic.error is not None else len(topic.partitions)
    return counts


def check_permissions(admin: AdminClient, config: AppConfig, timeout_s: float = 10.0) -> None:
    """Refuse to run when the principal lacks a topic grant of :func:`stage_grants`.

    Kafka reports a topic's authorized operations for the caller (KIP-430; every operation when
    no authorizer is on). Checking up front turns "a produce fails inside a transaction, the
    abort fails, the producer is replaced, again and again" into one clear error.

    Raises:
        KafkaAuthError: Names the topic and the missing operation.
    """
    needed: dict[str, set[str]] = {}
    for grant in stage_grants(config):
        if grant.resource == "TOPIC":
            needed.setdefault(grant.name, set()).add(grant.operation)
    try:
        futures = admin.describe_topics(
            TopicCollection(sorted(needed)),
            include_authorized_operations=True,
            request_timeout=timeout_s,
        )
        described = {name: fut.result() for name, fut in futures.items()}
    except (KafkaException, TypeError, AttributeError) as exc:
        # an old client or broker: the errors at use still name a missing grant
        logger.debug("authorized operations unavailable (%s); not checked up front", exc)
        return
    for name, ops in sorted(needed.items()):
        allowed = described[name].authorized_operations
        if allowed is None:
            continue
        have = {op.name for op in allowed}
        missing = sorted(ops - have)
        if missing:
            msg = (
                f"topic {name}: not authorized to {' and '.join(missing)} (the principal may "
                f"{', '.join(sorted(have)) or 'nothing'}); the principal lacks a topic ACL — see "
                "deploy/README.md 'Least privileges' for what the stage needs"
            )
            raise KafkaAuthError(msg)


def check_topology(admin: AdminClient, config: AppConfig) -> int:
    """Refuse to run unless every topic exists, the co-partitioned ones agree, and the principal
    may read and write what it must (:func:`check_permissions`).

    Returns:
        The common partition count.
    """
    specs = topic_specs(config)
    counts = partition_counts(admin, [s.name for s in specs])
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        msg = (
            f"missing topic(s): {', '.join(missing)}. Create them with "
            f"`bandit-processor topics create --bootstrap-servers {config.bootstrap_servers} "
            f"--app-id {config.app_id}`"
        )
        raise TopologyError(msg)
    co = {s.name: counts[s.name] for s in specs if s.co_partitioned}
    if len(set(co.values())) != 1:
        detail = ", ".join(f"{name}={n}" for name, n in co.items())
        msg = (
            "topics are not co-partitioned: bid-requests, bid-outcomes, bid-decisions, "
            "trade-outcomes, ensemble-weights, bandit-control and the changelog must have the same "
            f"partition count, found {detail}. State for input partition p lives in changelog "
            "partition p, so running would mix keys; recreate or repartition the topics."
        )
        raise TopologyError(msg)
    check_permissions(admin, config)
    return next(iter(co.values()))
