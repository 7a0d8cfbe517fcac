"""``bandit-processor simulate``: the synthetic market in closed loop through Kafka.

Produces bid requests (at ``--rate``) and trade outcomes, reads the stage's bid decisions and
ensemble weights (read_committed), and answers every decision with the BidOutcome the hidden market
produces for it — so the stage learns from the consequences of its own decisions. Trades use the
latest published ensemble probabilities to pick the arm (bandit feedback with its propensity).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from processor.codec.serde import SerdeRegistry
from processor.config import AppConfig
from processor.kafka.clients import admin_config
from processor.kafka.topics import partition_counts
from processor.policy.simulator import MarketSimulator

logger = logging.getLogger(__name__)


@dataclass
class SimulationReport:
    """What a simulation run sent and received."""

    requests_sent: int = 0
    decisions: int = 0
    duplicate_decisions: int = 0
    outcomes_sent: int = 0
    trades_sent: int = 0
    weights_seen: int = 0
    reward_total: float = 0.0
    arms: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable summary."""
        share = ", ".join(
            f"{a}={n / max(1, self.decisions):.1%}" for a, n in self.arms.most_common()
        )
        return [
            f"requests sent      {self.requests_sent}",
            f"decisions received {self.decisions} (duplicates {self.duplicate_decisions})",
            f"outcomes sent      {self.outcomes_sent}",
            f"trades sent        {self.trades_sent}; weight updates seen {self.weights_seen}",
            f"mean reward        {self.reward_total / max(1, self.outcomes_sent):.4f}",
            f"arm shares         {share}",
            f"modes              {dict(self.modes)}",
            f"elapsed            {self.seconds:.1f}s",
        ]


def _producer(config: AppConfig) -> Producer:
    conf = admin_config(config)
    conf.update({"enable.idempotence": True, "linger.ms": 5, "partitioner": "murmur2_random"})
    return Producer(conf)


def _tail_consumer(config: AppConfig, topics: list[str]) -> Consumer:
    """A group-less read_committed consumer positioned at the current end of ``topics``."""
    conf = admin_config(config)
    conf.update(
        {
            "group.id": f"{config.app_id}-simulator",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer = Consumer(conf)
    counts = partition_counts_from(config, topics)
    tps = []
    for topic in topics:
        for p in range(counts[topic]):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            tps.append(TopicPartition(topic, p, high))
    consumer.assign(tps)
    return consumer


def partition_counts_from(config: AppConfig, topics: list[str]) -> dict[str, int]:
    """Partition counts via a short-lived admin client."""
    from processor.kafka.clients import make_admin

    return partition_counts(make_admin(config), topics)


def run_simulation(
    config: AppConfig,
    *,
    campaigns: int,
    requests: int,
    trades: int,
    rate: float,
    seed: int,
    timeout_s: float,
    sim: MarketSimulator | None = None,
) -> SimulationReport:
    """Drive the closed loop; returns when every request was answered or at the timeout.

    ``sim`` replaces the default market of ``campaigns`` campaigns (e.g. explicit campaigns).
    """
    t = config.topics
    serdes = SerdeRegistry()
    if sim is None:
        sim = MarketSimulator(
            seed,
            n_campaigns=campaigns,
            arm_multipliers={
                a: (s.bid_multiplier, s.budget_multiplier) for a, s in config.bidding.arms.items()
            },
            families=config.ensemble.families,
            horizons=config.ensemble.horizons,
        )
    producer = _producer(config)
    consumer = _tail_consumer(config, [t.bid_decisions, t.ensemble_weights])
    report = SimulationReport()
    pending: dict[str, dict[str, Any]] = {}
    answered: set[str] = set()
    probabilities: dict[str, float] | None = None
    started = time.monotonic()
    duration = requests / rate if rate > 0 else 0.0
    chunk = max(1, int(rate / 100))
    trades_per_request = trades / max(1, requests)
    trade_credit = 0.0
    deadline = started + duration + timeout_s
    enc_req, enc_out, enc_trade = serdes["BidRequest"], serdes["BidOutcome"], serdes["TradeOutcome"]
    while time.monotonic() < deadline:
        elapsed = time.monotonic() - started
        due = min(requests, int(elapsed * rate) + chunk) if rate > 0 else requests
        if report.requests_sent < due:
            n = due - report.requests_sent
            now_ms = int(time.time() * 1000)
            for rec in sim.bid_requests(n, start_ms=now_ms, rate_per_s=max(rate, 1.0)):
                rec["event_time"] = now_ms
                pending[rec["request_id"]] = rec
                producer.produce(t.bid_requests, enc_req.encode(rec), rec["campaign_id"].encode())
            report.requests_sent += n
            trade_credit += n * trades_per_request
            k = min(int(trade_credit), trades - report.trades_sent)
            if k > 0:
                mode = config.ensemble.mode
                kind = "bandit"
                for rec in sim.trade_outcomes(
                    k,
                    start_ms=now_ms,
                    rate_per_s=1000.0,
                    feedback=kind,
                    arm_mode=mode,
                    probabilities=probabilities,
                ):
                    rec["event_time"] = now_ms
                    producer.produce(
                        t.trade_outcomes, enc_trade.encode(rec), rec["ensemble_id"].encode()
                    )
                report.trades_sent += k
                trade_credit -= k
        producer.poll(0)
        for msg in consumer.consume(1000, 0.01):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    logger.warning("simulator consumer: %s", err.str())
                continue
            value = msg.value()
            if value is None:
                continue
            if msg.topic() == t.ensemble_weights:
                weights = serdes["EnsembleWeights"].decode(value)
                probabilities = dict(weights["probabilities"])
                report.weights_seen += 1
                continue
            decision = serdes["BidDecision"].decode(value)
            rid = decision["request_id"]
            if rid in answered:
                report.duplicate_decisions += 1
                continue
            request = pending.pop(rid, None)
            if request is None:
                continue
            answered.add(rid)
            report.decisions += 1
            report.arms[decision["arm"]] += 1
            report.modes[decision["mode"]] += 1
            outcome = sim.outcome_for(decision, request)
            if outcome is not None:
                outcome["event_time"] = int(time.time() * 1000)
                producer.produce(
                    t.bid_outcomes, enc_out.encode(outcome), outcome["campaign_id"].encode()
                )
                report.outcomes_sent += 1
                report.reward_total += float(outcome["revenue"]) - float(outcome["spend"])
        if report.requests_sent >= requests and report.trades_sent >= trades and not pending:
            break
    producer.flush(30)
    consumer.close()
    report.seconds = time.monotonic() - started
    return report


def cmd_simulate(config: AppConfig, args: argparse.Namespace) -> int:
    """CLI entry of ``simulate``."""
    report = run_simulation(
        config,
        campaigns=args.campaigns,
        requests=args.requests,
        trades=args.trades,
        rate=args.rate,
        seed=args.seed,
        timeout_s=args.timeout,
    )
    for line in report.lines():
        print(line)
    unanswered = report.requests_sent - report.decisions
    if unanswered:
        print(f"{unanswered} request(s) unanswered within the timeout")
        return 1
    return 0
