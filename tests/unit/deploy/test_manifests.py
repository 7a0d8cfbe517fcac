"""Dockerfile, docker-compose and Kubernetes manifests, checked statically (no Docker here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from processor import __version__
from processor.config import AppConfig, config_from_dict
from tests.unit.deploy.promkit import DEPLOY

IMAGE = f"bandit-processor:{__version__}"  # manifests name the image of this version
PORT = AppConfig().metrics_port
ROOT = DEPLOY.parent


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _runtime_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_dockerfile_is_slim_non_root_with_healthcheck_on_the_metrics_port() -> None:
    stage = _runtime_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    users = [arg for word, arg in stage if word == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    (expose,) = [arg for word, arg in stage if word == "EXPOSE"]
    assert expose == str(PORT)
    (health,) = [arg for word, arg in stage if word == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{PORT}/healthz" in health
    assert "curl" not in health and "wget" not in health  # neither exists in the slim image
    env = " ".join(arg for word, arg in stage if word == "ENV")
    assert "BANDIT_SCHEMA_DIR=/opt/bandit-processor/schemas" in env
    assert ("COPY", "schemas /opt/bandit-processor/schemas") in stage
    entry = [arg for word, arg in stage if word == "ENTRYPOINT"]
    assert entry == ['["bandit-processor"]']


def test_dockerfile_copies_only_paths_that_exist() -> None:
    for word, arg in _instructions():
        if word == "COPY" and not arg.startswith("--from"):
            *sources, _dest = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), src


def test_compose_runs_the_whole_stack_from_the_same_image() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "processor", "simulator", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    for name in ("topics", "processor", "simulator"):
        svc = services[name]
        assert svc["image"] == IMAGE
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    assert f"127.0.0.1:{PORT}:{PORT}" in services["processor"]["ports"]
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        assert (DEPLOY / source).exists(), mount


def test_k8s_has_every_object_the_issue_asks_for() -> None:
    docs = _k8s()
    for kind in ("Deployment", "ConfigMap", "Service", "PodMonitor", "PodDisruptionBudget"):
        assert kind in docs, kind
    kustomize = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomize["resources"])
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def test_deployment_probes_ports_limits_and_image() -> None:
    docs = _k8s()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": PORT}
    probes = {k: container[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert all(p["port"] in ("metrics", PORT) for p in probes.values())
    limits = container["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits)
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["BANDIT_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["terminationGracePeriodSeconds"] >= 30  # SIGTERM commits before exiting
    mount = container["volumeMounts"][0]["mountPath"]
    assert env["BANDIT_CONFIG"]["value"] == f"{mount}/config.yaml"


def test_configmap_holds_a_valid_configuration() -> None:
    config = config_from_dict(yaml.safe_load(_k8s()["ConfigMap"]["data"]["config.yaml"]))
    assert config.metrics_port == PORT
    assert config.exactly_once


def test_service_and_monitor_select_the_pods_and_the_metrics_port() -> None:
    docs = _k8s()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service"]["spec"]
    assert set(service["selector"].items()) <= set(labels.items())
    assert service["ports"][0]["targetPort"] == "metrics"
    monitor = docs["PodMonitor"]["spec"]
    assert set(monitor["selector"]["matchLabels"].items()) <= set(labels.items())
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["podMetricsEndpoints"][0]["path"] == "/metrics"
    # alerts.yml selects job="bandit-processor": the job label comes from this pod label.
    assert labels[monitor["jobLabel"]] == "bandit-processor"
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert set(pdb["selector"]["matchLabels"].items()) <= set(labels.items())


def test_every_file_under_deploy_k8s_is_yaml() -> None:
    files = list(Path(DEPLOY / "k8s").iterdir())
    assert files
    assert all(f.suffix == ".yaml" for f in files)
