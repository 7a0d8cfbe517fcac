"""``make demo`` end to end on the session's broker: summary lines, metric count, clean stop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from processor.testing import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_prints_a_summary_and_stops_cleanly(bootstrap: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DEMO_SECONDS": "4",
        "DEMO_RATE": "100",
        "DEMO_METRICS_PORT": str(port),
        "DEMO_INTERVAL": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "processor.cli.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out
    assert "events in" in out and "decisions" in out and "lag" in out
    assert "arm share" in out and "posterior" in out
    assert "metric families" in out
    assert "decisions received 400 (duplicates 0)" in out
    assert "stage stopped with exit code 0" in out
    # the closing summary, with real latency figures (not histogram bucket bounds)
    summary = out.split("== summary of", 1)[1]
    assert "decisions        400 committed, 0 duplicates" in summary
    assert re.search(r"latency +event → decision visible: p50 \d+ ms, p99 \d+ ms", summary)
    assert "arm shares" in summary and "stage exit code 0" in summary
