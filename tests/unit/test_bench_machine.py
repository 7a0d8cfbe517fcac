"""The bench says when the machine was busy (tests/perf/kit.py MachineWatch, bench.machine_line)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.perf import bench, kit


def _feed(monkeypatch: pytest.MonkeyPatch, samples: list[tuple[int, int, int]]) -> None:
    it: Iterator[tuple[int, int, int]] = iter(samples)
    monkeypatch.setattr(kit, "_cpu_jiffies", lambda: next(it))


def test_quiet_machine_is_not_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    # before: 200 jiffies, 198 idle (1% used); during: 1,000 jiffies, 400 idle, 10 stolen
    _feed(monkeypatch, [(0, 0, 0), (200, 198, 0), (1200, 598, 10)])
    figures = kit.MachineWatch(quiet_sample_s=0).stop()
    assert figures["other_share_before"] == 0.01
    assert figures["quiet_windows"] == 1
    assert figures["busy_share"] == 0.6
    assert figures["steal_share"] == 0.01
    assert figures["busy"] is False


def test_other_processes_before_the_run_mark_it_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    # 25% used at rest, then 20%: still above the rule after the last window
    _feed(monkeypatch, [(0, 0, 0), (200, 150, 0), (400, 310, 0), (1400, 710, 0)])
    figures = kit.MachineWatch(quiet_sample_s=0, max_windows=2).stop()
    assert figures["other_share_before"] == 0.2
    assert figures["quiet_windows"] == 2
    assert figures["busy"] is True


def test_the_part_waits_for_a_quiet_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # the broker still writing (30%), then quiet (4%): the part starts after the second window
    # and its own figures count from there
    _feed(monkeypatch, [(0, 0, 0), (200, 140, 0), (400, 332, 0), (1400, 732, 0)])
    figures = kit.MachineWatch(quiet_sample_s=0, max_windows=5).stop()
    assert figures["other_share_before"] == 0.04
    assert figures["quiet_windows"] == 2
    assert figures["busy_share"] == 0.6
    assert figures["busy"] is False


def test_steal_during_the_run_marks_it_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    _feed(monkeypatch, [(0, 0, 0), (200, 200, 0), (1200, 600, 80)])  # 8% stolen
    figures = kit.MachineWatch(quiet_sample_s=0).stop()
    assert figures["steal_share"] == 0.08
    assert figures["busy"] is True


def test_without_proc_stat_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kit, "_cpu_jiffies", lambda: None)
    figures = kit.MachineWatch(quiet_sample_s=0).stop()
    assert figures["other_share_before"] is None
    assert figures["steal_share"] is None
    assert figures["busy"] is False


def test_the_table_names_the_busy_runs() -> None:
    quiet = {"machine": {"busy": False}, "events_per_s": 1.0}
    loud = {"machine": {"busy": True}, "events_per_s": 1.0}
    results = {
        "machine": {"cores": 2, "cpu": "x", "cpu_speed_ms_start": 30.0, "cpu_speed_ms_end": 31.0},
        "throughput": {"bid_requests": {"limit": quiet, "stage": loud, "ratio_to_limit": 0.5}},
        "latency": {"at_least_once_limit": {"machine": {"busy": True}}},
    }
    line = bench.machine_line(results)
    assert "30.0 ms at the start and 31.0 ms" in line
    assert "bid requests stage" in line
    assert "latency at least once limit" in line
    assert "bid requests limit" not in line
    results["throughput"]["bid_requests"]["stage"] = quiet
    results["latency"] = {}
    assert "Not busy during any run" in bench.machine_line(results)
