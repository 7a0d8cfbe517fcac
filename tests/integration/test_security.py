"""The stage against a SASL_SSL (SCRAM-SHA-512 over TLS) broker with the StandardAuthorizer on.

The stage's principal gets exactly the grants of :func:`processor.kafka.acls.stage_grants` (what
deploy/README.md lists) and runs a closed loop exactly once; a principal lacking any one kind of
grant, or a wrong password, makes the stage exit with code 2 and a message naming what is
missing — within a bounded time, never a hang. Secrets never reach the logs or the metrics.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from processor.config import AppConfig
from processor.kafka.acls import Grant, stage_grants
from processor.testing import wait_for
from tests.integration.localkafka import LocalKafka
from tests.integration.stagekit import (
    StageProcess,
    app_config,
    drained,
    expected_counts,
    make_topics,
    outcome_records,
    produce,
    request_records,
)
from tests.integration.test_stage import (
    ARMS,
    assert_each_request_answered_once,
    assert_exact_thompson,
)

EXIT_WITHIN_S = 90.0


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalKafka]:
    with LocalKafka(brokers=1, secure=True) as kafka:
        yield kafka


def _admin(kafka: LocalKafka) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap, **kafka.client_config()})


def _security(kafka: LocalKafka, user: str, password: str) -> dict[str, str]:
    conf = kafka.client_config()
    return {
        "security.protocol": conf["security.protocol"],
        "sasl.mechanism": conf["sasl.mechanism"],
        "ssl.ca.location": conf["ssl.ca.location"],
        "sasl.username": user,
        "sasl.password": password,
    }


def _add_user(kafka: LocalKafka, user: str) -> str:
    password = secrets.token_urlsafe(18)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    admin = _admin(kafka)  # kept alive until the futures are done
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, info, password.encode())]
    )
    for fut in futures.values():
        fut.result()
    return password


def _grant(kafka: LocalKafka, user: str, grants: list[Grant]) -> None:
    bindings = [
        AclBinding(
            ResourceType[g.resource],
            g.name,
            ResourcePatternType[g.pattern],
            f"User:{user}",
            "*",
            AclOperation[g.operation],
            AclPermissionType.ALLOW,
        )
        for g in grants
    ]
    admin = _admin(kafka)
    for fut in admin.create_acls(bindings).values():
        fut.result()


def _setup(
    kafka: LocalKafka, tmp_path: Path, user: str, keep: Callable[[Grant], bool] = lambda g: True
) -> tuple[AppConfig, Path, AppConfig, str]:
    """Topics (made by the admin), a user with the stage's grants that ``keep`` keeps, and the
    stage's config file for that user. Returns (stage config, its path, admin config,
    password)."""
    admin_config, _ = app_config(kafka.bootstrap, tmp_path, kafka={"common": kafka.client_config()})
    make_topics(admin_config, partitions=2)
    password = _add_user(kafka, user)
    overrides: dict[str, Any] = {
        "app_id": admin_config.app_id,
        "topics": {
            "bid_requests": admin_config.topics.bid_requests,
            "bid_outcomes": admin_config.topics.bid_outcomes,
            "trade_outcomes": admin_config.topics.trade_outcomes,
            "control": admin_config.topics.control,
            "bid_decisions": admin_config.topics.bid_decisions,
            "ensemble_weights": admin_config.topics.ensemble_weights,
            "dead_letters": admin_config.topics.dead_letters,
        },
        "kafka": {"common": _security(kafka, user, password)},
        "commit_every_events": 500,
        "operation_timeout_s": 10.0,
        "retry_budget_s": 20.0,
    }
    config, path = app_config(kafka.bootstrap, tmp_path, **overrides)
    _grant(kafka, user, [g for g in stage_grants(config) if keep(g)])
    return config, path, admin_config, password


def _exits(stage: StageProcess) -> int:
    assert stage.proc is not None
    try:
        return stage.proc.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        stage.kill()
        pytest.fail(f"the stage hung instead of exiting:\n{stage.log_tail(60)}")


def test_least_privileges_are_enough_and_secrets_stay_secret(
    secured: LocalKafka, tmp_path: Path
) -> None:
    config, path, admin_config, password = _setup(secured, tmp_path, "stage")
    outcomes = outcome_records(3000, campaigns=6, arms=ARMS, seed=51)
    requests = request_records(800, campaigns=6, seed=51)
    produce(admin_config, config.topics.bid_outcomes, "BidOutcome", outcomes, "campaign_id")
    produce(admin_config, config.topics.bid_requests, "BidRequest", requests, "campaign_id")
    log = tmp_path / "stage.log"
    stage = StageProcess(config, path, "sec", log, extra_args=["--log-level", "DEBUG"])
    stage.start().wait_ready(120)
    try:
        wait_for(lambda: drained(admin_config), timeout=120, description="drained under ACLs")
        metrics = stage.metrics()
    finally:
        assert stage.stop() == 0, stage.log_tail(60)
    assert_exact_thompson(admin_config, outcomes)
    assert_each_request_answered_once(admin_config, requests)
    text = log.read_text(errors="replace")
    assert "sasl.password" in text  # the settings were logged (DEBUG) ...
    assert password not in text  # ... with the secret masked
    assert password not in metrics
    assert password not in repr(config)
    assert expected_counts(outcomes)  # the test had real work


# Each case takes away one kind of grant; the stage must say what is missing and exit 2.
CASES = {
    "no-transactional-id": (lambda g: g.resource != "TRANSACTIONAL_ID", "transactional id"),
    "no-group": (lambda g: g.resource != "GROUP", "consumer group"),
    "no-write-on-an-output": (
        lambda g: not (g.operation == "WRITE" and "decisions" in g.name),
        "topic",
    ),
    "no-read-on-an-input": (
        lambda g: not (g.operation == "READ" and "outcomes" in g.name),
        "topic",
    ),
    "no-grant-on-dead-letters": (lambda g: "dead-letters" not in g.name, "topic"),
    "describe-but-no-write-on-an-output": (
        lambda g: not (g.operation == "WRITE" and "decisions" in g.name),
        "topic",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_missing_grant_is_a_clear_error_never_a_hang(
    secured: LocalKafka, tmp_path: Path, case: str
) -> None:
    keep, named = CASES[case]
    user = f"stage-{case}"
    config, path, admin_config, _ = _setup(secured, tmp_path, user, keep)
    if case == "describe-but-no-write-on-an-output":
        # the topic is visible, so the stage starts and fails only when it produces a decision
        _grant(
            secured, user, [Grant("TOPIC", config.topics.bid_decisions, "LITERAL", "DESCRIBE", "")]
        )
    produce(
        admin_config,
        config.topics.bid_outcomes,
        "BidOutcome",
        outcome_records(200, 4, ARMS, seed=52),
        "campaign_id",
    )
    produce(
        admin_config,
        config.topics.bid_requests,
        "BidRequest",
        request_records(50, 4, seed=52),
        "campaign_id",
    )
    stage = StageProcess(config, path, case, tmp_path / "stage.log").start()
    assert _exits(stage) == 2, stage.log_tail(60)
    tail = stage.log_tail(80)
    assert "not authorized" in tail and named in tail, tail
    assert "Traceback" not in tail


def test_a_wrong_password_is_a_clear_error_never_a_hang(
    secured: LocalKafka, tmp_path: Path
) -> None:
    config, path, _, password = _setup(secured, tmp_path, "stage-wrong-password")
    text = path.read_text().replace(password, "not-the-password")
    path.write_text(text)
    stage = StageProcess(config, path, "wrong", tmp_path / "stage.log").start()
    assert _exits(stage) == 2, stage.log_tail(60)
    tail = stage.log_tail(60)
    assert "authentication failed" in tail, tail
    assert "not-the-password" not in (tmp_path / "stage.log").read_text()
