"""A private local Kafka (one node or a cluster, plain or secured) that a fault test may stop,
kill and restart, driven through ``deploy/local-kafka/kafka.sh`` in its own run directory.

The session broker of ``conftest.py`` is shared by every test and never disturbed; tests that
take brokers down start one of these. They need the local jar broker (Java), like CI has.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from processor.testing import LOCAL_KAFKA_SCRIPT

logger = logging.getLogger(__name__)


class LocalKafka:
    """``with LocalKafka(brokers=3) as kafka: kafka.kill(2); kafka.start_node(2)``."""

    def __init__(self, brokers: int = 1, secure: bool = False) -> None:
        self.brokers = brokers
        self.secure = secure
        self.run_dir = Path(tempfile.mkdtemp(prefix="bandit-kafka-faults-"))
        self.env = {
            **os.environ,
            "BANDIT_KAFKA_RUN_DIR": str(self.run_dir),
            "PYTHON": sys.executable,
        }
        self.bootstrap = ""

    def _run(self, *args: str, timeout: float = 300.0) -> str:
        done = subprocess.run(
            ["bash", str(LOCAL_KAFKA_SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.splitlines()[-30:])
            msg = f"kafka.sh {' '.join(args)} failed (exit {done.returncode}):\n{tail}"
            raise RuntimeError(msg)
        return done.stdout.strip()

    def start(self) -> LocalKafka:
        """Start every node (formatting fresh storage the first time)."""
        args = ["start", "--brokers", str(self.brokers)]
        if self.secure:
            args.append("--secure")
        self.bootstrap = self._run(*args).splitlines()[-1]
        return self

    def stop(self, node: int | None = None) -> None:
        """Stop every node, or one (SIGTERM, then SIGKILL after 30 s)."""
        self._run("stop", *(["--node", str(node)] if node is not None else []))

    def kill(self, node: int) -> None:
        """SIGKILL one node."""
        self._run("kill", "--node", str(node))

    def start_node(self, node: int) -> None:
        """Start one node again on its data."""
        self._run("start", "--node", str(node))

    def restart(self) -> None:
        """Start every node again on its data (after :meth:`stop`)."""
        self._run("start")

    def client_config(self) -> dict[str, str]:
        """librdkafka settings of the admin principal (SASL_SSL when secure)."""
        out = self._run("client-config")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def node_of_port(self, port: int) -> int:
        """Node number listening on client ``port``."""
        for node in range(1, self.brokers + 1):
            ports = (self.run_dir / f"node-{node}" / "ports").read_text().split()
            if int(ports[0]) == port:
                return node
        msg = f"no node listens on {port}"
        raise KeyError(msg)

    def log_tail(self, node: int = 1, lines: int = 30) -> str:
        path = self.run_dir / f"node-{node}" / "broker.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            logger.warning(
                "stopping the fault-test Kafka failed: %s; run dir kept: %s", err, self.run_dir
            )
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)
