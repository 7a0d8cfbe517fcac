"""Implementations of the CLI commands ``run``, ``topics``, ``state`` and ``config``."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import numpy as np
import yaml

from processor.codec.serde import SerdeRegistry
from processor.config import (
    DEFAULT_METRICS_PORT,
    AppConfig,
    config_json_schema,
    config_to_dict,
)
from processor.engine import PartitionEngine
from processor.kafka.clients import InstanceClaim, make_admin, restore_consumer_factory
from processor.kafka.topics import create_topics, partition_counts, partition_mismatches
from processor.observability import metrics
from processor.runtime import Stage
from processor.state.changelog import read_changelog

logger = logging.getLogger(__name__)


def choose_metrics_port(configured: int | None, *, follows_slot: bool, slot: int) -> int | None:
    """The port ``run`` serves /metrics on (``None``: disabled).

    Args:
        configured: ``metrics_port`` of the configuration.
        follows_slot: True when the port was not set by a flag, the environment or the YAML
            file: then it is :data:`~processor.config.DEFAULT_METRICS_PORT` + ``slot``, so
            instances on one host started with default settings do not collide.
        slot: The instance's host-local slot (0 when the instance id was given).
    """
    if not follows_slot:
        return configured
    return DEFAULT_METRICS_PORT + slot


def cmd_run(config: AppConfig, *, port_follows_slot: bool = False) -> int:
    """``bandit-processor run``.

    Args:
        config: The effective configuration.
        port_follows_slot: ``metrics_port`` was not set explicitly: serve on 9400 + the instance
            slot (see :func:`choose_metrics_port`).
    """
    claim = None
    if not config.instance_id:
        claim = InstanceClaim(config.app_id)
        config = config.replace(instance_id=claim.instance_id)
    logger.info(
        "instance id %s (transactional.id %s-%s)",
        config.instance_id,
        config.app_id,
        config.instance_id,
    )
    server = None
    try:
        port = choose_metrics_port(
            config.metrics_port,
            follows_slot=port_follows_slot,
            slot=claim.slot if claim is not None else 0,
        )
        health = metrics.Health()
        health.bind_gauges()
        if port is not None:
            server = metrics.serve(port, health)
        stage = Stage(config, health)
        stage.install_signal_handlers()
        return stage.run()
    finally:
        if server is not None:
            server.shutdown()
        if claim is not None:
            claim.release()


def _print_text(text: str) -> int:
    # ``config schema | head`` closes the pipe early: that is no error of ours.
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_config_show(config: AppConfig, *, as_json: bool) -> int:
    """``bandit-processor config show``: the effective configuration, secrets masked."""
    data = config_to_dict(config)
    if as_json:
        return _print_text(json.dumps(data, indent=2) + "\n")
    return _print_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def cmd_config_schema() -> int:
    """``bandit-processor config schema``: JSON Schema of the YAML configuration file."""
    return _print_text(json.dumps(config_json_schema(), indent=2) + "\n")


def cmd_topics_create(config: AppConfig, partitions: int, replication_factor: int) -> int:
    """``bandit-processor topics create``: exit 2 when existing topics have another partition
    count (``run`` would refuse them)."""
    admin = make_admin(config)
    result = create_topics(admin, config, partitions, replication_factor)
    wrong = partition_mismatches(admin, config, partitions)
    for name, status in result.items():
        note = f" ({wrong[name]} partitions, not {partitions})" if name in wrong else ""
        print(f"{status:8s} {name}{note}")
    if wrong:
        shown = ", ".join(f"{name} has {n}" for name, n in sorted(wrong.items()))
        print(
            f"bandit-processor: error: co-partitioned topics must all have {partitions} "
            f"partitions, but {shown}. `run` would refuse to start. Either create them with "
            f"--partitions {max(wrong.values())} if that is the count you meant, or delete the "
            "mismatched topics (their data, and the changelog's state, is lost) and run "
            "`topics create` again; growing partitions of a keyed topic moves keys to other "
            "partitions, so do not do that with kafka-topics --alter.",
            file=sys.stderr,
        )
        return 2
    return 0


def key_state_view(engine: PartitionEngine, kind: str, key: str) -> dict[str, Any]:
    """The ``state show`` view of one restored key."""
    if kind == "campaign":
        ts = engine.campaigns.thompson
        row = ts.row_of(key)
        assert row is not None
        rows = np.array([row], dtype=np.int64)
        alpha, beta = ts.alpha(rows)[0], ts.beta(rows)[0]
        probs = ts.propensities(rows)[0]
        arms = {
            name: {
                "alpha": float(a),
                "beta": float(b),
                "mean": float(a / (a + b)),
                "p_best": float(p),
            }
            for name, a, b, p, on in zip(
                ts.arm_names, alpha, beta, probs, ts.active[row], strict=True
            )
            if on
        }
        full = engine.campaigns.get_key_state(key)
        return {
            "key": key,
            "kind": kind,
            "policy_version": int(ts.version[row]),
            "thompson": arms,
            "state": full,
        }
    if kind == "join":  # one chunk of the reward join's decision log
        log = engine.join.log if engine.join is not None else None
        return {
            "key": key,
            "kind": kind,
            "entries": len(log) if log is not None else 0,
            "watermark": log.watermark if log is not None else None,
        }
    return {
        "key": key,
        "kind": kind,
        "exp3ix": engine.ensembles.exp3ix_state(key),  # family_horizon: one per horizon
        "weights": engine.ensembles.snapshot(key),
    }


def cmd_state_show(config: AppConfig, key: str, *, as_json: bool) -> int:
    """``bandit-processor state show``: the committed state of ``key`` from the changelog."""
    topic = config.changelog_topic
    count = partition_counts(make_admin(config), [topic])[topic]
    if count == 0:
        print(f"bandit-processor: error: changelog topic {topic} does not exist", file=sys.stderr)
        return 2
    serdes = SerdeRegistry()

    factory = restore_consumer_factory(config, "state-show")

    views = []
    for p in range(count):
        states, _ = read_changelog(factory, topic, p, serdes["StateRecord"])
        for (kind, k), state in states.items():
            if k != key:
                continue
            engine = PartitionEngine(config, p, serdes)
            engine.restore(kind, k, state)
            views.append(key_state_view(engine, kind, k))
    if not views:
        print(f"bandit-processor: no committed state for key {key!r} in {topic}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(views[0] if len(views) == 1 else views, indent=2, sort_keys=True))
        return 0
    for view in views:
        print(f"{view['kind']} {view['key']}")
        if view["kind"] == "join":
            print(f"  decision-log chunk: {view['entries']} entries, watermark {view['watermark']}")
        elif view["kind"] == "campaign":
            print(f"  policy_version {view['policy_version']}")
            print(f"  {'arm':16s} {'alpha':>10s} {'beta':>10s} {'mean':>8s} {'P(best)':>8s}")
            for arm, s in view["thompson"].items():
                print(
                    f"  {arm:16s} {s['alpha']:10.1f} {s['beta']:10.1f} {s['mean']:8.4f} "
                    f"{s['p_best']:8.4f}"
                )
        else:
            w = view["weights"]
            print(f"  total_steps {w['total_steps']}  warm {w['warm']}")
            print(f"  {'arm':20s} {'weight':>8s} {'bandit':>8s} {'prob':>8s}")
            for arm, weight in w["weights"].items():
                print(
                    f"  {arm:20s} {weight:8.4f} {w['bandit_weights'][arm]:8.4f} "
                    f"{w['probabilities'][arm]:8.4f}"
                )
    return 0
