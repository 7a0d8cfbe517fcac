"""Shared helpers of the deploy tests: promtool, the exported metric names, the deploy folder."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from processor.observability import metrics

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
METRIC_NAME = re.compile(r"\bbandit_processor_[a-z0-9_]+")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail (never skip) when it is missing, saying how to install it."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` (Debian/Ubuntu; .ci/run "
            "does it) or put the promtool binary from a Prometheus release on PATH"
        )
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def exported_names() -> set[str]:
    """Every sample name the stage can export (counters with _total, histogram series, ...)."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def names_in(expr: str) -> set[str]:
    """The bandit_processor_* names a PromQL expression mentions."""
    return set(METRIC_NAME.findall(expr))
