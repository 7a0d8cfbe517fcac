"""The package layout of docs/architecture.md, enforced: no import cycles, layers only import down.

Every ``import`` inside ``processor/`` is read with :mod:`ast`. The layer rules apply to all of
them (module level, inside functions, under ``TYPE_CHECKING``); the cycle check to every import
that runs (a lazy import inside a function hides a cycle, it does not remove it), not to imports
for annotations only (``if TYPE_CHECKING:``), which never run. A failure names the modules, so
the fix is where the message points.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "processor"

#: The layers of docs/architecture.md: what each part of ``processor`` may import from the
#: package. ``processor`` is ``processor/__init__.py`` (the version); a part not listed here
#: fails the test until it is given a place.
ALLOWED: dict[str, frozenset[str]] = {
    "processor": frozenset(),
    "errors": frozenset(),
    "bandits": frozenset({"errors"}),
    "codec": frozenset({"errors", "processor"}),
    "state": frozenset({"codec", "errors", "processor"}),
    "policy": frozenset({"bandits", "config_types", "errors", "state"}),
    "join": frozenset({"config", "errors", "policy", "state"}),
    "config_types": frozenset({"errors"}),
    "config": frozenset({"config_types", "errors", "policy"}),
    "observability": frozenset({"errors", "processor"}),
    "kafka": frozenset({"config", "errors"}),
    "engine": frozenset(
        {
            "bandits",
            "codec",
            "config",
            "errors",
            "join",
            "observability",
            "policy",
            "processor",
            "state",
        }
    ),
    "runtime": frozenset(
        {"codec", "config", "engine", "errors", "kafka", "observability", "processor", "state"}
    ),
    "replay": frozenset(
        {
            "bandits",
            "codec",
            "config",
            "engine",
            "errors",
            "join",
            "kafka",
            "policy",
            "processor",
            "state",
        }
    ),
    "testing": frozenset({"errors"}),
    "cli": frozenset(
        {
            "codec",
            "config",
            "engine",
            "errors",
            "kafka",
            "observability",
            "policy",
            "processor",
            "replay",
            "runtime",
            "state",
            "testing",
        }
    ),
}
#: Parts that never touch a Kafka client (confluent_kafka), so they run and test without a broker.
KAFKA_FREE = frozenset(
    {"bandits", "codec", "config", "config_types", "engine", "errors", "join", "policy"}
)
#: The one exception: the codec asks a schema registry for writer schemas (HTTP, no broker).
KAFKA_FREE_EXCEPTIONS = frozenset({("codec", "confluent_kafka.schema_registry")})


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:``."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(name: str, path: Path, runtime_only: bool = False) -> set[str]:
    """Every module (inside or outside the package) that ``name`` imports (``runtime_only``:
    without the imports for annotations under ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    skip = _type_only(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            subs = {f"{module}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(subs)
            if len(subs) < len(node.names):  # names from the module itself
                found.add(module)
    return found - {name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}
RUNTIME_GRAPH = {name: _imports(name, path, True) for name, path in MODULES.items()}


def part(module: str) -> str:
    """The part of the layout a module belongs to (``processor.engine.core`` → ``engine``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "processor"
    if parts[1] == "__main__":
        return "cli"  # python -m processor
    return parts[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read() -> None:
    # guards the test itself: known edges are seen
    assert "processor.engine.decoding" in GRAPH["processor.engine.core"]
    assert "processor.codec.serde" in GRAPH["processor.codec.columnar"]
    assert "confluent_kafka" in GRAPH["processor.kafka.clients"]
    assert "processor.engine.core" in GRAPH["processor.engine.requests"]  # for annotations
    assert "processor.engine.core" not in RUNTIME_GRAPH["processor.engine.requests"]


def test_no_import_cycles() -> None:
    internal = {name: {m for m in deps if m in MODULES} for name, deps in RUNTIME_GRAPH.items()}
    assert _cycles(internal) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layers_import_only_down(name: str) -> None:
    mine = part(name)
    assert mine in ALLOWED, f"{name}: part {mine!r} has no layer in docs/architecture.md"
    wrong = sorted(
        m for m in GRAPH[name] if m in MODULES and part(m) != mine and part(m) not in ALLOWED[mine]
    )
    assert wrong == [], f"{name} ({mine}) may not import {wrong}; see docs/architecture.md"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if part(n) in KAFKA_FREE))
def test_kafka_free_parts_import_no_kafka_client(name: str) -> None:
    clients = sorted(
        m
        for m in GRAPH[name]
        if m.split(".")[0] == "confluent_kafka" and (part(name), m) not in KAFKA_FREE_EXCEPTIONS
    )
    assert clients == [], f"{name} imports {clients}: {part(name)}/ is Kafka-free"
