"""Shared harness pieces of ``make bench``: configs, pre-filling topics, timing a drain.

Every contender (passthrough, the stage, the original design, the Quix peer) runs in its own
subprocess and commits its consumer group's offsets. Throughput is always measured the same way
from the outside: a watcher polls the group's committed offsets every 50 ms; the clock starts at the
first commit seen and stops when the committed offsets reach the end of every input partition;
events/s = (events committed after the first commit) / (elapsed). No contender reports its own
speed, so none can be timed more kindly than another.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from processor.config import AppConfig, TopicsConfig, config_from_dict
from processor.kafka.clients import make_admin
from processor.kafka.topics import create_topics
from processor.testing import unique_name

PARTITIONS = 6
TOPIC_ROLES = tuple(f.name for f in dataclasses.fields(TopicsConfig))


def stage_config(
    bootstrap: str, workdir: Path, inputs: dict[str, str], **overrides: Any
) -> tuple[AppConfig, Path]:
    """A stage config whose inputs are the given (pre-filled or empty) topics; outputs are new.

    Args:
        bootstrap: Broker address.
        workdir: Where the YAML file goes.
        inputs: Role (``bid_outcomes`` ...) → existing topic name; other roles get fresh names.
        overrides: Top-level config settings (``processing_guarantee`` ...).
    """
    app_id = unique_name("bench")
    topics = {role: inputs.get(role, f"{app_id}-{role.replace('_', '-')}") for role in TOPIC_ROLES}
    data: dict[str, Any] = {
        "app_id": app_id,
        "bootstrap_servers": bootstrap,
        "commit_interval_ms": 100,
        "metrics_port": None,
        "topics": topics,
    }
    data.update(overrides)
    path = workdir / f"{app_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    config = config_from_dict(data)
    create_topics(make_admin(config), config, PARTITIONS, replication_factor=1)
    return config, path


def fast_producer(bootstrap: str) -> Producer:
    """Producer for pre-filling inputs (idempotent, large batches; same partitioner as Java)."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 2000000,
            "queue.buffering.max.kbytes": 2097152,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
        }
    )


def prefill(bootstrap: str, topic: str, pairs: Sequence[tuple[bytes, bytes]]) -> float:
    """Produce pre-encoded ``(key, value)`` pairs; returns seconds taken."""
    producer = fast_producer(bootstrap)
    started = time.monotonic()
    batch = getattr(producer, "produce_batch", None)
    step = 10_000
    for first in range(0, len(pairs), step):
        chunk = pairs[first : first + step]
        if batch is not None:
            msgs = [{"key": k, "value": v} for k, v in chunk]
            while msgs:
                try:
                    done = batch(topic, msgs)
                except BufferError:
                    done = 0
                # produce_batch queues a prefix and reports how many; retry the rest.
                msgs = msgs[done:]
                if msgs:
                    producer.poll(0.05)
        else:
            for k, v in chunk:
                while True:
                    try:
                        producer.produce(topic, v, k)
                        break
                    except BufferError:
                        producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        msg = f"{remaining} messages to {topic} not delivered"
        raise RuntimeError(msg)
    return time.monotonic() - started


def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """High watermark of every partition of ``topics``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("ends")})
    try:
        out = {}
        for topic in topics:
            md = c.list_topics(topic, timeout=10)
            for p in md.topics[topic].partitions:
                out[(topic, p)] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return out
    finally:
        c.close()


@dataclass
class DrainResult:
    """Outcome of watching one contender drain its input."""

    events: int
    seconds: float
    timed_out: bool

    @property
    def rate(self) -> float:
        """Events per second (0 when nothing was measured)."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


_COORDINATOR_MOVED = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


def watch_drain(
    bootstrap: str,
    group: str,
    ends: dict[tuple[str, int], int],
    proc: subprocess.Popen[bytes] | None,
    timeout_s: float,
    interval_s: float = 0.05,
) -> DrainResult:
    """Time the group from its first offset commit to committed == end on every partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = [TopicPartition(t, p) for (t, p) in ends if ends[(t, p)] > 0]
    total = sum(ends.values())
    deadline = time.monotonic() + timeout_s
    t0: float | None = None
    base = 0
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                msg = f"contender exited early with code {proc.returncode}"
                raise RuntimeError(msg)
            try:
                committed = c.committed(tps, timeout=10)
            except KafkaException as exc:
                # a broker just started moves group coordinators (NOT_COORDINATOR, load in
                # progress): ask again
                if not exc.args[0].retriable() and exc.args[0].code() not in _COORDINATOR_MOVED:
                    raise
                time.sleep(interval_s)
                continue
            now = time.monotonic()
            done = sum(max(0, tp.offset) for tp in committed)
            if t0 is None and done > 0:
                t0, base = now, done
            if t0 is not None and done >= total:
                return DrainResult(total - base, now - t0, False)
            time.sleep(interval_s)
        done_events = 0 if t0 is None else done - base
        return DrainResult(done_events, time.monotonic() - (t0 or deadline), True)
    finally:
        c.close()


def spawn(
    args: Sequence[str], log_path: Path, python: str | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m <args>`` with output to ``log_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = log_path.open("ab")
    return subprocess.Popen(
        [python or sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=env
    )


def metric_value(text: str, name: str) -> float:
    """First sample of ``name`` in a Prometheus text exposition (NaN when absent)."""
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else float("nan")


def machine() -> dict[str, Any]:
    """Description of this machine and the client libraries."""
    import confluent_kafka
    import fastavro
    import numpy

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "confluent_kafka": str(
            getattr(confluent_kafka, "__version__", confluent_kafka.version()[0])
        ),
        "librdkafka": confluent_kafka.libversion()[0],
        "fastavro": fastavro.__version__,
        "numpy": numpy.__version__,
    }


# ---- is the machine busy? -----------------------------------------------------------------
QUIET_SAMPLE_S = 1.0
QUIET_MAX_WINDOWS = 20
"""Up to this many quiet samples before a part: the broker keeps writing for seconds after a
prefill or a contender's run (a first sample of 13-24% CPU where the next ones read 3-9%), so
the part starts once a sample is quiet, or after the last window is marked busy."""
BUSY_OTHER_SHARE = 0.10
"""Before a part, more than this share of the machine's CPU used while nothing of the bench
runs (other processes, other tenants) marks the part's figures as measured on a busy machine."""
BUSY_STEAL_SHARE = 0.05
"""The same for CPU time the hypervisor gave to other machines during the part."""


def _cpu_jiffies() -> tuple[int, int, int] | None:
    """(total, idle incl. iowait, steal) jiffies of all cores since boot; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return sum(values), values[3] + values[4], values[7]


def cpu_speed_ms(repeat: int = 9) -> float:
    """Milliseconds for a fixed single-core task, best of ``repeat`` (lower is faster).

    Interpreted Python and small numpy calls, the mix of the stage's loop: the same code on the
    same machine takes longer when the core is slower or shared, so figures from two days can be
    read against this one.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    data = rng.random(64)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        total = 0
        for i in range(400_000):
            total += i & 7
        for _ in range(4_000):
            data = np.sort(data) * 1.0
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


class MachineWatch:
    """What else used the machine around one part of the bench.

    ``MachineWatch()`` samples the CPU in windows of :data:`QUIET_SAMPLE_S` while nothing of the
    bench runs (the share used then is other processes' or the hypervisor's) until one window is
    at most :data:`BUSY_OTHER_SHARE` or ``max_windows`` were sampled; :meth:`stop` adds the steal
    share and the machine's own use during the part, and whether either marks it busy.
    """

    def __init__(
        self, quiet_sample_s: float = QUIET_SAMPLE_S, max_windows: int = QUIET_MAX_WINDOWS
    ) -> None:
        self.load_before = round(os.getloadavg()[0], 2)
        self.other_share: float | None = None
        self.quiet_windows = 0
        first = _cpu_jiffies()
        self._start = first
        while self.quiet_windows < max(1, max_windows):
            time.sleep(quiet_sample_s)  # a measurement window; the loop waits for a quiet one
            self._start = _cpu_jiffies()
            self.quiet_windows += 1
            if first is None or self._start is None:
                break
            total = self._start[0] - first[0]
            busy = total - (self._start[1] - first[1])
            self.other_share = round(busy / total, 3) if total > 0 else None
            if self.other_share is None or self.other_share <= BUSY_OTHER_SHARE:
                break
            first = self._start

    def stop(self) -> dict[str, Any]:
        """The figures of the part since construction."""
        end = _cpu_jiffies()
        out: dict[str, Any] = {
            "load_before": self.load_before,
            "other_share_before": self.other_share,
            "quiet_windows": self.quiet_windows,
            "steal_share": None,
            "busy_share": None,
        }
        if end is not None and self._start is not None:
            total = end[0] - self._start[0]
            if total > 0:
                out["steal_share"] = round((end[2] - self._start[2]) / total, 3)
                out["busy_share"] = round(1 - (end[1] - self._start[1]) / total, 3)
        out["busy"] = bool(
            (self.other_share or 0) > BUSY_OTHER_SHARE
            or (out["steal_share"] or 0) > BUSY_STEAL_SHARE
        )
        return out
