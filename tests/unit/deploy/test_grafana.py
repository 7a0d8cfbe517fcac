"""The Grafana dashboard and its provisioning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml

from tests.unit.deploy.promkit import DEPLOY, exported_names, names_in

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bandit-processor.json"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_every_query_names_only_exported_metrics() -> None:
    exported = exported_names()
    queries = [t["expr"] for p in _panels(_dashboard()["panels"]) for t in p.get("targets", [])]
    assert len(queries) >= 20
    for expr in queries:
        used = names_in(expr)
        assert used, f"query names no bandit_processor metric: {expr}"
        assert used <= exported, f"{expr}: not exported: {sorted(used - exported)}"


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    used = set().union(
        *(
            names_in(t["expr"])
            for p in _panels(_dashboard()["panels"])
            for t in p.get("targets", [])
        )
    )
    for name in (
        "bandit_processor_events_consumed_total",
        "bandit_processor_consumer_lag_messages",
        "bandit_processor_decision_latency_seconds_bucket",
        "bandit_processor_dead_letters_total",
        "bandit_processor_arm_selections_total",
        "bandit_processor_ensemble_arm_weight",
        "bandit_processor_emergency_campaigns",
        "bandit_processor_guardrail_activations_total",
        "bandit_processor_transactions_total",
    ):
        assert name in used, name


def test_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    cells: set[tuple[int, int]] = set()
    ids = []
    for panel in _panels(_dashboard()["panels"]):
        ids.append(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == ds["uid"]
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
    assert len(ids) == len(set(ids))


def test_dashboard_provider_points_where_compose_mounts_the_json() -> None:
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "bandit-processor.yml").read_text()
    )["providers"][0]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
