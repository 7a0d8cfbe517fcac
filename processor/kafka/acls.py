"""The least privileges the stage needs on a cluster with an authorizer (DESIGN §9).

One list, used by the tests against a SASL_SSL broker with the StandardAuthorizer and printed in
deploy/README.md "Least privileges" (a unit test checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from processor.config import AppConfig


@dataclass(frozen=True)
class Grant:
    """One ALLOW rule: ``operation`` on a ``resource`` named ``name`` (``pattern`` literal or
    prefixed) for the stage's principal."""

    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID
    name: str
    pattern: str  # LITERAL, PREFIXED
    operation: str  # READ, WRITE (each implies DESCRIBE)
    why: str


def stage_grants(config: AppConfig) -> list[Grant]:
    """Every ACL ``bandit-processor run`` needs (also enough for ``state show``).

    READ and WRITE imply DESCRIBE in Kafka's authorizer, which covers the topic and coordinator
    look-ups, so no DESCRIBE grant is listed.
    """
    t = config.topics
    grants: list[Grant] = []
    for topic in t.inputs:
        grants.append(Grant("TOPIC", topic, "LITERAL", "READ", "consume an input"))
    for topic in (t.bid_decisions, t.ensemble_weights, t.dead_letters):
        grants.append(Grant("TOPIC", topic, "LITERAL", "WRITE", "produce an output"))
    changelog = config.changelog_topic
    grants += [
        Grant("TOPIC", changelog, "LITERAL", "READ", "restore state"),
        Grant("TOPIC", changelog, "LITERAL", "WRITE", "write state"),
        # the consumer group itself, and the restore readers' <app_id>-restore / -state groups
        Grant("GROUP", config.app_id, "PREFIXED", "READ", "join the group, commit offsets"),
        Grant(
            "TRANSACTIONAL_ID",
            f"{config.app_id}-",
            "PREFIXED",
            "WRITE",
            "transactions (transactional.id <app_id>-<instance_id>)",
        ),
    ]
    return grants
