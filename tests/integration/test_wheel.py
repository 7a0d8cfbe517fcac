"""The wheel works on its own: built, installed into a fresh virtualenv and run from another
working directory (no checkout on sys.path, no BANDIT_SCHEMA_DIR) against the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from processor import __version__
from processor.testing import free_port, stage_ready, stop_process, wait_for
from tests.integration.stagekit import app_config, produce, read_all, request_records

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def test_wheel_installs_and_runs_from_anywhere(bootstrap: str, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "BANDIT_SCHEMA_DIR", "VIRTUAL_ENV")
    }
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        tmp_path,
        env,
    )
    (wheel,) = dist.glob("bandit_processor-*.whl")
    assert wheel.name.startswith(f"bandit_processor-{__version__}-")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import processor; print(processor.__file__)"],
        elsewhere,
        env,
    )
    assert str(venv) in where, where  # the wheel's copy, not the checkout
    cmd = str(venv / "bin" / "bandit-processor")
    assert __version__ in _run([cmd, "--version"], elsewhere, env)
    config, path = app_config(bootstrap, tmp_path)
    created = _run(
        [cmd, "topics", "create", "--config", str(path), "--partitions", "2"], elsewhere, env
    )
    assert created.count("created") == 8
    port = free_port()
    log = (tmp_path / "stage.log").open("wb")
    stage = subprocess.Popen(
        [cmd, "run", "--config", str(path), "--instance-id", "wheel", "--metrics-port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: stage.poll() is not None or stage_ready(port), 90, description="/readyz")
        assert stage.poll() is None, (tmp_path / "stage.log").read_text()
        requests = request_records(40, campaigns=3, seed=71)
        produce(config, config.topics.bid_requests, "BidRequest", requests, "campaign_id")
        wait_for(
            lambda: len(read_all(config, config.topics.bid_decisions, "BidDecision")) >= 40,
            60,
            description="decisions from the wheel-installed stage",
        )
    finally:
        assert stop_process(stage) == 0, (tmp_path / "stage.log").read_text()[-3000:]
