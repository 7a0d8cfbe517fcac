"""The original per-event design, run through Kafka with the same transactions as the stage.

Run as ``python -m tests.perf.original_design CONFIG.yaml``. Written the way the starting document
did it: every message is decoded on its own (``fastavro.schemaless_reader``), every campaign holds
one :class:`OriginalThompsonArm` object per arm (numpy scalar sampling per call), every ensemble an
:class:`OriginalExp3` object, and every output is encoded and produced on its own. The arm classes
are the ones of ``tests/perf/bench_bandits.py`` (not duplicated here).

What it does per input type (the stage does the same work and more):

* reward events (BidOutcome): decode, profit reward, ``success`` as the stage derives it, one arm
  update; at commit one JSON state record per changed campaign to the changelog (like the stage);
* bid requests: decode, one Beta draw per arm, argmax, bid / budget from the arm multipliers, encode
  and produce a BidDecision (it logs no propensity: the original never computed one);
* trade outcomes: decode, reward in bps mapped to [0, 1] (its raw-weight Exp3 overflows on bps),
  one update, encode and produce an EnsembleWeights record per trade.

Consumer / producer settings and the commit cycle are the stage's (same config file).
"""

from __future__ import annotations

import io
import json
import signal
import sys
import time
from types import FrameType
from typing import Any

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition

from processor.codec.serde import parsed_schema
from processor.config import load_config
from processor.kafka.clients import consumer_config, producer_config
from tests.perf.bench_bandits import OriginalExp3, OriginalThompsonArm


class OriginalStage:
    """Per-event handlers with per-object state."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.arm_specs = dict(config.bidding.arms)
        self.arm_names = list(self.arm_specs)
        self.families = list(config.ensemble.families)
        self.campaigns: dict[str, dict[str, OriginalThompsonArm]] = {}
        self.ensembles: dict[str, OriginalExp3] = {}
        self.dirty: set[str] = set()
        self.schemas = {
            n: parsed_schema(n)
            for n in ("BidOutcome", "BidRequest", "TradeOutcome", "BidDecision", "EnsembleWeights")
        }

    def _decode(self, name: str, value: bytes) -> dict[str, Any]:
        return fastavro.schemaless_reader(io.BytesIO(value), self.schemas[name], None)  # type: ignore[no-any-return]

    def _encode(self, name: str, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.schemas[name], record)
        return buf.getvalue()

    def _arms(self, key: str) -> dict[str, OriginalThompsonArm]:
        arms = self.campaigns.get(key)
        if arms is None:
            arms = self.campaigns[key] = {a: OriginalThompsonArm(a) for a in self.arm_names}
        return arms

    def outcome(self, value: bytes) -> None:
        rec = self._decode("BidOutcome", value)
        arm = self._arms(rec["campaign_id"]).get(rec["arm"])
        if arm is None:
            return
        reward = rec["reward"]
        if reward is None:
            reward = rec["revenue"] - rec["spend"]
        success = rec["success"]
        arm.update(reward, reward > 0 if success is None else success)
        self.dirty.add(rec["campaign_id"])

    def request(self, value: bytes, now_ms: int) -> tuple[bytes, bytes]:
        rec = self._decode("BidRequest", value)
        arms = self._arms(rec["campaign_id"])
        samples = {a: o.sample() for a, o in arms.items()}
        best = max(samples, key=lambda a: samples[a])
        spec = self.arm_specs[best]
        decision = {
            "request_id": rec["request_id"],
            "campaign_id": rec["campaign_id"],
            "arm": best,
            "bid_amount": rec["base_bid"] * spec.bid_multiplier,
            "budget": rec["base_budget"] * spec.budget_multiplier,
            "propensity": 0.0,
            "confidence": samples[best],
            "mode": "exploit",
            "guardrails": [],
            "policy_version": -1,
            "event_time": rec["event_time"],
            "decided_at": now_ms,
        }
        return rec["campaign_id"].encode(), self._encode("BidDecision", decision)

    def trade(self, value: bytes) -> tuple[bytes, bytes] | None:
        rec = self._decode("TradeOutcome", value)
        name = rec.get("family") or rec.get("arm")
        if name not in self.families:
            return None
        key = rec["ensemble_id"]
        bandit = self.ensembles.get(key)
        if bandit is None:
            bandit = self.ensembles[key] = OriginalExp3(len(self.families))
        bps = rec["side"] * (rec["exit_price"] - rec["entry_price"]) / rec["entry_price"] * 1e4
        reward = min(1.0, max(0.0, (bps + 100.0) / 200.0))
        bandit.update(self.families.index(name), reward)
        probs = bandit.get_probabilities()
        weights = {f: float(p) for f, p in zip(self.families, probs, strict=True)}
        out = {
            "ensemble_id": key,
            "horizon": rec["horizon"],
            "mode": "family",
            "weights": weights,
            "bandit_weights": weights,
            "probabilities": weights,
            "total_steps": 0,
            "warm": True,
            "policy_version": -1,
            "event_time": rec["event_time"],
        }
        return key.encode(), self._encode("EnsembleWeights", out)

    def take_dirty(self) -> list[tuple[bytes, bytes]]:
        out = []
        for key in sorted(self.dirty):
            state = {a: [o.alpha, o.beta] for a, o in self.campaigns[key].items()}
            out.append((f"campaign/{key}".encode(), json.dumps(state, sort_keys=True).encode()))
        self.dirty.clear()
        return out


def main(argv: list[str]) -> int:
    config = load_config(argv[0]).replace(instance_id="original")
    topics = config.topics
    stopping = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    stage = OriginalStage(config)
    producer = Producer(producer_config(config))
    consumer = Consumer(consumer_config(config))
    producer.init_transactions(30)
    consumer.subscribe(list(topics.inputs))
    offsets: dict[tuple[str, int], int] = {}
    open_txn = False
    since = 0
    last = time.monotonic()

    def send(topic: str, key: bytes, value: bytes, partition: int) -> None:
        while True:
            try:
                producer.produce(topic, value, key, partition)
                return
            except BufferError:
                producer.poll(0.05)

    dirty_part: dict[str, int] = {}
    while not stopping:
        msgs = consumer.consume(config.max_batch_events, config.poll_timeout_ms / 1000)
        for m in msgs:
            if m.error() is not None:
                continue
            if not open_txn:
                producer.begin_transaction()
                open_txn = True
            topic, p = m.topic(), m.partition()
            if topic == topics.bid_outcomes:
                stage.outcome(m.value())
                dirty_part[m.key().decode()] = p
            elif topic == topics.bid_requests:
                key, value = stage.request(m.value(), int(time.time() * 1000))
                send(topics.bid_decisions, key, value, p)
            elif topic == topics.trade_outcomes:
                out = stage.trade(m.value())
                if out is not None:
                    send(topics.ensemble_weights, out[0], out[1], p)
            offsets[(topic, p)] = m.offset() + 1
            since += 1
        producer.poll(0)
        due = since >= config.commit_every_events
        due = due or (time.monotonic() - last) * 1000 >= config.commit_interval_ms
        if due:
            last = time.monotonic()
            if since:
                for key, value in stage.take_dirty():
                    campaign = key.decode().split("/", 1)[1]
                    send(config.changelog_topic, key, value, dirty_part.get(campaign, 0))
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
                open_txn = False
                since = 0
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
