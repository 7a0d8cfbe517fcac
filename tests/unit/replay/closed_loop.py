"""A closed loop through in-process partition engines, logged like the live topics."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig, config_from_dict
from processor.engine import PartitionEngine, SourceBatch
from processor.policy.simulator import MarketSimulator
from processor.replay.source import Partitions, RawRecord, merge, schema_by_topic, with_event_times

SERDES = SerdeRegistry()
Item = tuple[str, int, int, int, bytes | None, bytes | None]


@dataclass
class Loop:
    """The logged topics of one closed-loop run."""

    config: AppConfig
    parts: Partitions
    bad_outcome: tuple[int, int]  # (partition, offset) of the outcome the stage dead-lettered
    engines: list[PartitionEngine] | None = None  # the live engines, after the run

    def merged(self, *, decisions: bool = True) -> list[RawRecord]:
        keep = {
            k: v
            for k, v in self.parts.items()
            if decisions or k[0] != self.config.topics.bid_decisions
        }
        return list(merge(keep))


def closed_loop(
    rounds: int = 30,
    per_round: int = 60,
    partitions: int = 2,
    seed: int = 3,
    campaigns: int = 6,
    redeliver: float = 0.0,
) -> Loop:
    """Run the stage's engines on simulated traffic with irregular live batches.

    Every round adds requests, lets each partition's engine process a random prefix of what it
    has not seen yet (cut across topics like a poll would), and answers the new decisions with
    the market's outcomes. One campaign is put into emergency mode and released by control
    commands, and one malformed outcome is dead-lettered. With ``redeliver`` > 0 that share of
    the outcomes is delivered a second time, and as many are restated with one more conversion.
    """
    config = config_from_dict({"max_batch_events": 97, "bidding": {"seed": 11}})
    if rounds * per_round > 20_000:
        config = config.replace(max_batch_events=5000)
    t = config.topics
    sim = MarketSimulator(seed, n_campaigns=campaigns)
    rng = np.random.default_rng(seed)
    engines = [PartitionEngine(config, p, SERDES) for p in range(partitions)]
    logs: dict[tuple[str, int], list[Item]] = {}
    # What each partition has not processed yet, in arrival order.
    pending: list[list[tuple[str, int]]] = [[] for _ in range(partitions)]
    requests: dict[str, dict[str, Any]] = {}
    clock = 0
    bad: tuple[int, int] = (-1, -1)

    def part(key: str) -> int:
        return zlib.crc32(key.encode()) % partitions

    def append(topic: str, key: str, value: bytes, event_time: int) -> tuple[int, int]:
        p = part(key)
        log = logs.setdefault((topic, p), [])
        log.append((topic, p, len(log), event_time, key.encode(), value))
        if topic in t.inputs:
            pending[p].append((topic, len(log) - 1))
        return p, len(log) - 1

    def run(p: int, upto: int) -> None:
        chunk, pending[p] = pending[p][:upto], pending[p][upto:]
        if not chunk:
            return
        batches: dict[str, SourceBatch] = {}
        for topic, off in chunk:
            item = logs[(topic, p)][off]
            batches.setdefault(topic, SourceBatch(topic, p)).append(item[4], item[5], off)
        out = engines[p].process(batches)
        decisions = [SERDES["BidDecision"].decode(v) for _, v in out.decisions]
        for (k, v), d in zip(out.decisions, decisions, strict=True):
            append(t.bid_decisions, k.decode(), v, d["event_time"])
        answers = sim.outcomes_for(decisions, [requests[d["request_id"]] for d in decisions])
        nonlocal clock
        for o in answers:
            if o is None:
                continue
            clock += 1
            o["event_time"] = clock
            append(t.bid_outcomes, o["campaign_id"], SERDES["BidOutcome"].encode(o), clock)
            if redeliver and rng.random() < redeliver:  # a redelivery: same bytes, later offset
                append(t.bid_outcomes, o["campaign_id"], SERDES["BidOutcome"].encode(o), clock)
            if redeliver and rng.random() < redeliver:  # a restatement: a conversion arrived
                clock += 1
                later = {**o, "event_time": clock, "conversions": o["conversions"] + 1}
                later["revenue"] = o["revenue"] + 5.0
                enc = SERDES["BidOutcome"].encode(later)
                append(t.bid_outcomes, o["campaign_id"], enc, clock)

    def flush() -> None:
        # Twice: answering the first pass's decisions adds outcomes the engines have not seen.
        for _ in range(2):
            for p in range(partitions):
                run(p, len(pending[p]))

    def control(command: str, key: str) -> None:
        nonlocal clock
        flush()
        clock += 1
        rec = {
            "command_id": f"c{clock}",
            "key": key,
            "target": "campaign",
            "command": command,
            "arm": None,
            "weights": None,
            "issued_by": "test",
            "reason": "test",
            "event_time": clock,
        }
        append(t.control, key, SERDES["ControlCommand"].encode(rec), clock)
        flush()

    for r in range(rounds):
        clock = max(clock, r * 10_000)
        for req in sim.bid_requests(per_round, start_ms=clock + 1, rate_per_s=1000.0):
            requests[req["request_id"]] = req
            clock = req["event_time"]
            append(t.bid_requests, req["campaign_id"], SERDES["BidRequest"].encode(req), clock)
        if r == 10:
            control("set_emergency", sim.campaign_ids[0])
        if r == 18:
            control("clear_emergency", sim.campaign_ids[0])
        if r == 5:
            flush()
            clock += 1
            broken = {
                "request_id": "broken",
                "campaign_id": sim.campaign_ids[1],
                "arm": "no-such-arm",
                "event_time": clock,
                "won": False,
                "clicks": 0,
                "conversions": 0,
                "spend": 0.0,
                "revenue": 0.0,
                "propensity": 0.5,
            }
            bad = append(
                t.bid_outcomes, sim.campaign_ids[1], SERDES["BidOutcome"].encode(broken), clock
            )
        for p in range(partitions):
            run(p, int(rng.integers(0, len(pending[p]) + 1)))
    flush()
    schemas = schema_by_topic(config)
    parts = {k: with_event_times(v, schemas, SERDES) for k, v in logs.items()}
    return Loop(config, parts, bad, engines)
