"""``make demo``: a local broker, the stage and the simulator, with a live terminal summary.

Steps: find a broker (``KAFKA_BOOTSTRAP_SERVERS``, else the local jar broker in its own run
directory ``deploy/local-kafka/run/demo``, else :func:`processor.testing.acquire_broker`), create
the topics, start ``bandit-processor run`` and ``bandit-processor simulate`` as subprocesses, print
a summary every ``DEMO_INTERVAL`` seconds read from the stage's ``/metrics`` and from its
``bid-decisions``, then stop the stage (SIGTERM, exit 0 expected) and the broker.

Environment: ``DEMO_SECONDS`` (default 60), ``DEMO_RATE`` (bid requests per second, default
300), ``DEMO_PARTITIONS`` (default 3), ``DEMO_METRICS_PORT`` (default 9400, a free port if busy),
``DEMO_INTERVAL`` (default 2). Ctrl-C stops everything the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig, config_from_dict
from processor.errors import ConfigError, ProcessorError
from processor.kafka.clients import make_admin
from processor.kafka.topics import create_topics, partition_counts
from processor.testing import (
    BOOTSTRAP_ENV,
    LOCAL_KAFKA_SCRIPT,
    acquire_broker,
    free_port,
    stage_ready,
    stop_process,
    wait_for,
)

ROOT = LOCAL_KAFKA_SCRIPT.parent.parent.parent
RUN_DIR = LOCAL_KAFKA_SCRIPT.parent / "run" / "demo"
SAMPLE_CAMPAIGNS = 3
SAMPLE_AFTER_DECISIONS = 1000  # the sample is the busiest campaigns, fixed after this many
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:
        msg = f"{name} must be a number >= {minimum:g}, got {raw!r}"
        raise ConfigError(msg)
    return value


def _port(preferred: int) -> int:
    try:
        with contextlib.closing(socket.create_server(("0.0.0.0", preferred))):
            return preferred
    except OSError:
        return free_port()


def _kafka(command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BANDIT_KAFKA_RUN_DIR": str(RUN_DIR), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(LOCAL_KAFKA_SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@contextlib.contextmanager
def demo_broker() -> Iterator[str]:
    """Yield a bootstrap address; stop the broker afterwards if this function started it."""
    if os.environ.get(BOOTSTRAP_ENV, "").strip() or shutil.which("java") is None:
        with acquire_broker() as broker:
            yield broker.bootstrap
        return
    _kafka("clean")  # a fresh, empty broker every run: old demo topics would only confuse
    print(f"starting a local Kafka broker in {RUN_DIR.relative_to(ROOT)} ...", flush=True)
    started = _kafka("start")
    if started.returncode != 0 or not started.stdout.split():
        msg = f"kafka.sh start failed:\n{started.stderr[-2000:]}"
        raise ProcessorError(msg)
    try:
        yield started.stdout.split()[-1]
    finally:
        print("stopping the Kafka broker ...", flush=True)
        _kafka("stop")


def scrape(port: int) -> Samples:
    """Every sample of the stage's ``/metrics`` as ``{(name, sorted labels): value}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def count_metrics(port: int) -> tuple[int, int]:
    """(metric families, samples) the stage exports right now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    return len(families), sum(len(f.samples) for f in families)


def _total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == x for k, x in match.items())
    )


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (n, labels), v in samples.items():
        if n == name:
            out[dict(labels).get(label, "")] += v
    return dict(out)


def _quantile(now: Samples, before: Samples, name: str, q: float) -> float | None:
    """Quantile of a histogram's observations between two scrapes (bucket upper bound)."""
    buckets = []
    for (n, labels), v in now.items():
        if n == f"{name}_bucket":
            le = float(dict(labels)["le"])
            buckets.append((le, v - before.get((n, labels), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    return next(le for le, count in buckets if count >= target)


def _shares(counts: dict[str, float]) -> str:
    total = sum(counts.values())
    if total <= 0:
        return "-"
    return "  ".join(f"{a} {n / total:4.0%}" for a, n in sorted(counts.items()))


class DecisionTail:
    """Reads committed bid decisions and keeps arm counts for a few sample campaigns."""

    def __init__(self, config: AppConfig, partitions: int) -> None:
        self.serde = SerdeRegistry()["BidDecision"]
        self.consumer = Consumer(
            {
                "bootstrap.servers": config.bootstrap_servers,
                "group.id": "demo-summary",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        topic = config.topics.bid_decisions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.arms: dict[str, Counter[str]] = defaultdict(Counter)
        self.sample: list[str] = []
        self.seen = 0
        self.ids: set[str] = set()
        self.duplicates = 0
        self.modes: Counter[str] = Counter()
        self.latency_ms: list[float] = []

    def poll(self) -> None:
        """Take whatever arrived since the last call."""
        for msg in self.consumer.consume(5000, 0.05):
            value = msg.value()
            if msg.error() is None and value is not None:
                decision = self.serde.decode(value)
                # event time → the decision visible to a read_committed reader (this one)
                self.latency_ms.append(time.time() * 1000 - decision["event_time"])
                self.arms[decision["campaign_id"]][decision["arm"]] += 1
                self.modes[decision["mode"]] += 1
                if decision["request_id"] in self.ids:
                    self.duplicates += 1
                self.ids.add(decision["request_id"])
                self.seen += 1

    def arm_shares(self) -> dict[str, float]:
        """Decisions by arm, over every campaign."""
        total: Counter[str] = Counter()
        for counts in self.arms.values():
            total.update(counts)
        return dict(total)

    def lines(self) -> list[str]:
        """Arm shares of the sample campaigns (the busiest until enough were seen, then fixed)."""
        if len(self.sample) < SAMPLE_CAMPAIGNS or self.seen < SAMPLE_AFTER_DECISIONS:
            busiest = sorted(self.arms, key=lambda c: -sum(self.arms[c].values()))
            self.sample = sorted(busiest[:SAMPLE_CAMPAIGNS])
        out = []
        for campaign in self.sample:
            counts = self.arms[campaign]
            n = sum(counts.values())
            out.append(f"       {campaign:<10} {_shares(dict(counts))}  ({n} decisions)")
        return out

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


def summary(now: Samples, before: Samples, dt: float, elapsed: float) -> list[str]:
    """The lines printed every interval."""

    def rate(name: str, **match: str) -> float:
        return (_total(now, name, **match) - _total(before, name, **match)) / dt

    p50 = _quantile(now, before, "bandit_processor_decision_latency_seconds", 0.5)
    p99 = _quantile(now, before, "bandit_processor_decision_latency_seconds", 0.99)
    latency = f"p50 ≤ {p50:g} s, p99 ≤ {p99:g} s" if p50 is not None and p99 is not None else "-"
    selections = {
        arm: now.get(k, 0.0) - before.get(k, 0.0)
        for k in now
        if k[0] == "bandit_processor_arm_selections_total"
        for arm in [dict(k[1])["arm"]]
    }
    posterior = _by(now, "bandit_processor_arm_posterior_mean", "arm")
    lines = [
        f"[{elapsed:4.0f}s] events in {rate('bandit_processor_events_consumed_total'):6.0f}/s"
        f"  decisions {rate('bandit_processor_decisions_total'):5.0f}/s"
        f"  lag {_total(now, 'bandit_processor_consumer_lag_messages'):4.0f}"
        f"  decision latency {latency}",
        f"       commits {rate('bandit_processor_transactions_total', outcome='committed'):4.1f}/s"
        f"  aborts {_total(now, 'bandit_processor_transactions_total', outcome='aborted'):.0f}"
        f"  dead letters {_total(now, 'bandit_processor_dead_letters_total'):.0f}"
        f"  emergency campaigns {_total(now, 'bandit_processor_emergency_campaigns'):.0f}",
        f"       arm share  {_shares(selections)}",
        "       posterior  "
        + ("  ".join(f"{a} {m:.3f}" for a, m in sorted(posterior.items())) or "-"),
    ]
    weights: dict[str, dict[str, float]] = defaultdict(dict)
    for (n, labels), v in now.items():
        if n == "bandit_processor_ensemble_arm_weight":
            d = dict(labels)
            weights[d["ensemble"]][d["arm"]] = v
    for ensemble, ws in sorted(weights.items())[:2]:
        text = "  ".join(f"{a} {w:.3f}" for a, w in sorted(ws.items()))
        lines.append(f"       weights {ensemble}: {text}")
    return lines


def final_summary(tail: DecisionTail, samples: Samples, elapsed: float, code: int) -> list[str]:
    """The closing block: what the run did, with real latency percentiles."""
    consumed = _by(samples, "bandit_processor_events_consumed_total", "topic")
    modes = tail.modes
    n = sum(modes.values())
    lat = np.asarray(tail.latency_ms) if tail.latency_ms else np.zeros(0)

    def pct(counts: Counter[str], key: str) -> str:
        return f"{key} {counts[key] / n:.0%}" if n else f"{key} -"

    lines = [
        f"== summary of {elapsed:.0f} s ==",
        f"events consumed  {sum(consumed.values()):,.0f} ("
        + ", ".join(f"{topic} {v:,.0f}" for topic, v in sorted(consumed.items()))
        + ")",
        f"decisions        {n:,} committed, {tail.duplicates} duplicates; "
        + ", ".join(pct(modes, m) for m in ("exploit", "explore", "emergency", "blocked")),
        f"arm shares       {_shares(tail.arm_shares())}",
    ]
    weights: dict[str, dict[str, float]] = defaultdict(dict)
    for (name, labels), v in samples.items():
        if name == "bandit_processor_ensemble_arm_weight":
            d = dict(labels)
            weights[d["ensemble"]][d["arm"]] = v
    for ensemble, ws in sorted(weights.items())[:3]:
        text = "  ".join(f"{a} {w:.2f}" for a, w in sorted(ws.items()))
        lines.append(f"weights {ensemble:<8} {text}")
    if lat.size:
        p50, p99 = np.percentile(lat, [50, 99])
        lines.append(
            f"latency          event → decision visible: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
            f"max {lat.max():.0f} ms ({lat.size:,} decisions)"
        )
    committed = _total(samples, "bandit_processor_transactions_total", outcome="committed")
    aborted = _total(samples, "bandit_processor_transactions_total", outcome="aborted")
    dead = _total(samples, "bandit_processor_dead_letters_total")
    lines.append(
        f"transactions     {committed:,.0f} committed, {aborted:,.0f} aborted; "
        f"dead letters {dead:,.0f}; stage exit code {code}"
    )
    return lines


def _start(cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C in the terminal reaches only the demo, which then stops its
    # children in order (stage before broker) instead of all of them at once.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def run_demo(bootstrap: str, seconds: float, rate: float, partitions: int, port: int) -> int:
    """Run stage and simulator against ``bootstrap``; returns the stage's exit code."""
    interval = _env_number("DEMO_INTERVAL", 2.0, 0.5)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    config = config_from_dict({"app_id": "demo", "bootstrap_servers": bootstrap})
    admin = make_admin(config)
    create_topics(admin, config, partitions, replication_factor=1)
    # Topics left by an earlier demo on an external broker keep their partition count.
    partitions = partition_counts(admin, [config.topics.bid_decisions])[config.topics.bid_decisions]
    print(f"broker {bootstrap}; topics ready ({partitions} partitions each)", flush=True)
    py = [sys.executable, "-m", "processor"]
    common = ["--bootstrap-servers", bootstrap, "--app-id", "demo"]
    stage_log = (RUN_DIR / "stage.log").open("wb")
    sim_log = (RUN_DIR / "simulate.log").open("wb")
    stage = _start(
        [*py, "run", *common, "--instance-id", "demo-0", "--metrics-port", str(port)], stage_log
    )
    sim: subprocess.Popen[bytes] | None = None
    tail: DecisionTail | None = None
    try:
        wait_for(lambda: _ready(stage, port), 90, interval=0.2, description="the stage's /readyz")
        print(f"stage ready — metrics at http://127.0.0.1:{port}/metrics (log {stage_log.name})")
        requests = int(rate * seconds)
        sim = _start(
            [
                *py,
                "simulate",
                *common,
                "--requests",
                str(requests),
                "--trades",
                str(requests // 5),
                "--rate",
                str(rate),
                "--timeout",
                "20",
            ],
            sim_log,
        )
        tail = DecisionTail(config, partitions)
        started = last_t = time.monotonic()
        last = scrape(port)
        while sim.poll() is None and time.monotonic() - started < seconds + 30:
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and sim.poll() is None:
                tail.poll()
            now, now_t = scrape(port), time.monotonic()
            print("\n".join(summary(now, last, now_t - last_t, now_t - started)), flush=True)
            print("\n".join(tail.lines()), flush=True)
            last, last_t = now, now_t
        families, n_samples = count_metrics(port)
        print(
            f"\nmetrics: {families} metric families, {n_samples} samples, "
            f"at http://127.0.0.1:{port}/metrics (until the stage stops)"
        )
        drain_until = time.monotonic() + 5.0
        while time.monotonic() < drain_until and tail.seen < requests:
            tail.poll()  # the last decisions, committed after the simulator finished
        final = scrape(port)
        elapsed = time.monotonic() - started
    finally:
        if tail is not None:
            tail.close()
        if sim is not None:
            stop_process(sim)
        code = stop_process(stage)
        stage_log.close()
        sim_log.close()
    print("simulator report:")
    print("".join(f"    {line}\n" for line in _read(RUN_DIR / "simulate.log")[-8:]), end="")
    print(f"stage stopped with exit code {code} (SIGTERM: finish the batch, commit, exit)\n")
    if tail is not None:
        print("\n".join(final_summary(tail, final, elapsed, code)))
    return code


def _ready(stage: subprocess.Popen[bytes], port: int) -> bool:
    if stage.poll() is not None:
        msg = f"the stage exited with {stage.returncode}; see {RUN_DIR / 'stage.log'}"
        raise ProcessorError(msg)
    return stage_ready(port)


def _read(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Entry point of ``python -m processor.cli.demo`` (``make demo``)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        seconds = _env_number("DEMO_SECONDS", 60.0, 1.0)
        rate = _env_number("DEMO_RATE", 300.0, 1.0)
        partitions = int(_env_number("DEMO_PARTITIONS", 3.0, 1.0))
        port = _port(int(_env_number("DEMO_METRICS_PORT", 9400.0, 1.0)))
        print(
            f"bandit-processor demo: {seconds:g} s at {rate:g} requests/s (DEMO_SECONDS, "
            "DEMO_RATE); Ctrl-C stops early",
            flush=True,
        )
        with demo_broker() as bootstrap:
            code = run_demo(bootstrap, seconds, rate, partitions, port)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the stage, the simulator and a broker the demo started are stopped",
            file=sys.stderr,
        )
        return 130
    except ProcessorError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
