"""Client settings: enforced exactly-once settings, secrets masked, instance slots."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from processor.config import config_from_dict, mask_secrets
from processor.errors import ConfigError
from processor.kafka.clients import (
    InstanceClaim,
    consumer_config,
    producer_config,
    transactional_id,
)


def test_exactly_once_settings_are_enforced_over_user_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config_from_dict(
        {
            "app_id": "a",
            "instance_id": "i",
            "kafka": {
                "consumer": {"enable.auto.commit": "true", "fetch.min.bytes": "10"},
                "producer": {"enable.idempotence": "false", "linger.ms": "1"},
            },
        }
    )
    with caplog.at_level(logging.WARNING):
        consumer = consumer_config(cfg)
        producer = producer_config(cfg)
    assert consumer["enable.auto.commit"] is False
    assert consumer["isolation.level"] == "read_committed"
    assert consumer["fetch.min.bytes"] == "10"  # pass-through
    assert consumer["partition.assignment.strategy"] == "range"
    assert producer["enable.idempotence"] is True
    assert producer["transactional.id"] == "a-i" == transactional_id(cfg)
    assert producer["linger.ms"] == "1"
    assert "enable.auto.commit" in caplog.text


def test_the_stage_own_settings_win_over_enforced_ones(caplog: pytest.LogCaptureFixture) -> None:
    # The restore's watermark probe must really be read_uncommitted (see state/changelog.py).
    cfg = config_from_dict({"kafka": {"consumer": {"isolation.level": "read_uncommitted"}}})
    with caplog.at_level(logging.WARNING):
        probe = consumer_config(cfg, **{"isolation.level": "read_uncommitted"})
        plain = consumer_config(cfg)
    assert probe["isolation.level"] == "read_uncommitted"
    assert plain["isolation.level"] == "read_committed"
    assert probe["enable.auto.commit"] is False


def test_the_fetch_backoff_is_short_by_default_and_can_be_overridden() -> None:
    # librdkafka's 1000 ms default idles a loop that drains its prefetched queue sooner
    assert consumer_config(config_from_dict({}))["fetch.queue.backoff.ms"] == 10
    cfg = config_from_dict({"kafka": {"consumer": {"fetch.queue.backoff.ms": "500"}}})
    assert consumer_config(cfg)["fetch.queue.backoff.ms"] == "500"


def test_at_least_once_has_no_transactional_id() -> None:
    cfg = config_from_dict({"instance_id": "i", "processing_guarantee": "at_least_once"})
    assert "transactional.id" not in producer_config(cfg)
    assert "isolation.level" not in consumer_config(cfg)


def test_secrets_never_show_in_repr_or_masked_settings() -> None:
    cfg = config_from_dict(
        {
            "kafka": {"common": {"sasl.password": "hunter2", "sasl.username": "u"}},
            "schema_registry": {"basic.auth.user.info": "u:pw"},
        }
    )
    assert "hunter2" not in repr(cfg)
    masked = mask_secrets(producer_config(cfg.replace(instance_id="x")))
    assert masked["sasl.password"] == "***"
    assert masked["sasl.username"] == "u"
    assert producer_config(cfg.replace(instance_id="x"))["sasl.password"] == "hunter2"


def test_instance_slots_are_stable_and_distinct(tmp_path: Path) -> None:
    host = socket.gethostname()
    first = InstanceClaim("app", tmp_path)
    second = InstanceClaim("app", tmp_path)
    assert (first.instance_id, second.instance_id) == (f"{host}-0", f"{host}-1")
    first.release()
    again = InstanceClaim("app", tmp_path)  # a restart gets its old slot (and id) back
    assert again.instance_id == f"{host}-0"
    other_app = InstanceClaim("other", tmp_path)
    assert other_app.instance_id == f"{host}-0"
    for claim in (second, again, other_app):
        claim.release()


def test_unwritable_lock_dir_falls_back_to_slot_zero(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    claim = InstanceClaim("app", blocker / "locks")
    assert claim.instance_id.endswith("-0")


def test_transactional_id_needs_an_instance_id() -> None:
    with pytest.raises(ConfigError):
        transactional_id(config_from_dict({}))
