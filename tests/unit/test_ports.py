"""The metrics port: 9400 + the host-local instance slot by default; a taken port is one line."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processor.cli import commands, main
from processor.cli.commands import choose_metrics_port
from processor.config import DEFAULT_METRICS_PORT
from processor.errors import ConfigError
from processor.kafka.clients import InstanceClaim
from processor.observability import metrics


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_the_default_port_follows_the_slot_and_an_explicit_one_does_not() -> None:
    assert choose_metrics_port(DEFAULT_METRICS_PORT, follows_slot=True, slot=0) == 9400
    assert choose_metrics_port(DEFAULT_METRICS_PORT, follows_slot=True, slot=3) == 9403
    assert choose_metrics_port(9400, follows_slot=False, slot=3) == 9400
    assert choose_metrics_port(0, follows_slot=False, slot=3) == 0
    assert choose_metrics_port(None, follows_slot=False, slot=3) is None


def test_instances_of_one_app_on_one_host_get_slots_0_and_1(tmp_path: Path) -> None:
    first = InstanceClaim("app", lock_dir=tmp_path)
    second = InstanceClaim("app", lock_dir=tmp_path)
    other_app = InstanceClaim("other", lock_dir=tmp_path)
    try:
        assert (first.slot, second.slot, other_app.slot) == (0, 1, 0)
        assert second.instance_id.endswith("-1")
    finally:
        for claim in (first, second, other_app):
            claim.release()


@pytest.mark.parametrize(
    ("argv", "env", "follows"),
    [
        ([], {}, True),
        (["--metrics-port", "9400"], {}, False),
        ([], {"BANDIT_METRICS_PORT": "9400"}, False),
        (["--config", "{yaml}"], {}, False),
    ],
)
def test_run_lets_the_port_follow_the_slot_only_when_no_source_set_it(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    follows: bool,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("metrics_port: 9400\n")
    seen: dict[str, Any] = {}

    def fake_run(config: Any, *, port_follows_slot: bool) -> int:
        seen.update(port=config.metrics_port, follows=port_follows_slot)
        return 0

    monkeypatch.setattr(commands, "cmd_run", fake_run)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["run", *(a.replace("{yaml}", str(path)) for a in argv)]) == 0
    assert seen == {"port": 9400, "follows": follows}


def test_a_port_that_cannot_be_bound_is_a_config_error_naming_port_and_flag(
    taken_port: int,
) -> None:
    with pytest.raises(ConfigError) as info:
        metrics.serve(taken_port, metrics.Health())
    text = str(info.value)
    assert "\n" not in text
    assert f"metrics port {taken_port} is already in use" in text
    assert "--metrics-port N (0 picks a free port, -1 disables" in text


def test_run_on_a_taken_port_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], taken_port: int
) -> None:
    # The port is bound before any Kafka client is made: no broker is needed to see the error.
    argv = ["run", "--instance-id", "i-0", "--metrics-port", str(taken_port)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("bandit-processor: error")]
    assert line.startswith(f"bandit-processor: error: metrics port {taken_port} is already in use")
