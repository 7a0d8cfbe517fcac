"""Every schema parses, documents every field, and stays backward compatible with its previous
committed version (readers with the new schema must read data written with the old one)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import fastavro
import pytest

from processor.codec.serde import SCHEMA_NAMES, load_schema_json, packaged_schema, schema_dir

ROOT = Path(__file__).resolve().parents[2]


def _fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in schema["fields"]}


def backward_incompatibilities(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Reasons a reader using ``new`` cannot read data written with ``old`` (empty: compatible)."""
    problems = []
    old_f, new_f = _fields(old), _fields(new)
    for name, field in new_f.items():
        if name not in old_f and "default" not in field:
            problems.append(f"field {name} added without a default")
    for name in old_f.keys() & new_f.keys():
        try:
            fastavro.parse_schema({"type": "record", "name": "X", "fields": [old_f[name]]})
            sample = _sample_for(old_f[name]["type"], old)
            writer = fastavro.parse_schema(
                {"type": "record", "name": "W", "namespace": "t", "fields": [old_f[name]]}
            )
            reader = fastavro.parse_schema(
                {"type": "record", "name": "W", "namespace": "t", "fields": [new_f[name]]}
            )
            import io

            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, {name: sample})
            buf.seek(0)
            fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:
            problems.append(f"field {name} changed incompatibly: {exc}")
    return problems


def _sample_for(t: Any, _schema: dict[str, Any]) -> Any:
    if isinstance(t, list):
        return None if "null" in t else _sample_for(t[0], _schema)
    if isinstance(t, dict):
        kind = t["type"]
        if kind == "enum":
            return t["symbols"][0]
        if kind == "map":
            return {"a": _sample_for(t["values"], _schema)}
        if kind == "array":
            return [_sample_for(t["items"], _schema)]
        return _sample_for(kind, _schema)
    return {
        "string": "s",
        "long": 1,
        "int": 1,
        "double": 1.5,
        "float": 1.5,
        "boolean": True,
        "bytes": b"x",
        "null": None,
    }[t]


def previous_version(name: str) -> dict[str, Any] | None:
    """The schema as last committed before the current version (None when there is none)."""
    rel = f"schemas/{name}.avsc"
    current = (ROOT / rel).read_text()

    def show(rev: str) -> str | None:
        res = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{rel}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return res.stdout if res.returncode == 0 else None

    head = show("HEAD")
    if head is not None and head != current:
        return dict(json.loads(head))
    log = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--format=%H", "--", rel],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if len(log) >= 2:
        before = show(log[1])
        if before is not None:
            return dict(json.loads(before))
    return None


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_parses_and_documents_every_field(name: str) -> None:
    schema = load_schema_json(name)
    fastavro.parse_schema(schema)
    assert schema["namespace"] == "processor.v1"
    assert schema["doc"]
    for field in schema["fields"]:
        assert field.get("doc"), f"{name}.{field['name']} has no doc"
        if isinstance(field["type"], list) and field["type"][0] == "null":
            assert "default" in field and field["default"] is None, f"{name}.{field['name']}"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_backward_compatible_with_previous_committed_version(name: str) -> None:
    previous = previous_version(name)
    current = load_schema_json(name)
    # With no earlier version the schema is compared with itself, which must trivially pass.
    assert backward_incompatibilities(previous or current, current) == []


def test_checker_detects_incompatible_changes() -> None:
    old = load_schema_json("BidOutcome")
    added = json.loads(json.dumps(old))
    added["fields"].append({"name": "extra", "type": "long", "doc": "x"})
    assert any("without a default" in p for p in backward_incompatibilities(old, added))
    retyped = json.loads(json.dumps(old))
    for f in retyped["fields"]:
        if f["name"] == "spend":
            f["type"] = "boolean"
    assert any("spend" in p for p in backward_incompatibilities(old, retyped))
    defaulted = json.loads(json.dumps(old))
    defaulted["fields"].append({"name": "extra", "type": "long", "doc": "x", "default": 0})
    assert backward_incompatibilities(old, defaulted) == []


def test_packaged_schemas_are_the_repository_schemas() -> None:
    """``schemas/`` is the source of truth; the wheel carries ``processor/schemas/``."""
    assert schema_dir() is None  # no BANDIT_SCHEMA_DIR: the packaged copies are read
    repo = {p.name: p.read_bytes() for p in (ROOT / "schemas").glob("*.avsc")}
    packaged = {p.name: p.read_bytes() for p in (ROOT / "processor" / "schemas").glob("*.avsc")}
    assert sorted(p[:-5] for p in repo) == sorted(SCHEMA_NAMES)
    stale = sorted(name for name in repo if packaged.get(name) != repo[name])
    assert not stale and set(packaged) == set(repo), (
        f"processor/schemas/ differs from schemas/ ({stale}): cp schemas/*.avsc processor/schemas/"
    )
    for name in SCHEMA_NAMES:
        assert packaged_schema(name).read_bytes() == repo[f"{name}.avsc"]
