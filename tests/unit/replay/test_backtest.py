"""Backtest determinism, the batch rule, the decision audit and the report (no broker)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from processor.cli import main
from processor.replay.backtest import run_backtest
from processor.replay.report import build_report, write_report
from processor.replay.source import RawRecord, write_records
from processor.replay.verify import verify_decisions
from tests.unit.replay.closed_loop import SERDES, Loop


def test_same_input_and_seed_give_byte_identical_outputs(loop: Loop) -> None:
    a = run_backtest(loop.config, loop.merged())
    b = run_backtest(loop.config, loop.merged())
    assert a.outputs and [(o.key, o.value) for o in a.outputs] == [
        (o.key, o.value) for o in b.outputs
    ]
    other = run_backtest(loop.config.replace(bidding=_seeded(loop, 12)), loop.merged())
    assert [o.value for o in other.outputs] != [o.value for o in a.outputs]


def _seeded(loop: Loop, seed: int):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(loop.config.bidding, seed=seed)


def test_batch_rule_and_topic_filter(loop: Loop) -> None:
    res = run_backtest(loop.config, loop.merged(), rejection=False)
    inputs = sum(len(v) for k, v in loop.parts.items() if k[0] in loop.config.topics.inputs)
    assert res.events == inputs  # bid-decisions records are not replayed as input
    assert res.batches == math.ceil(inputs / loop.config.max_batch_events)
    requests = sum(len(v) for k, v in loop.parts.items() if k[0] == "bid-requests")
    decisions = [SERDES["BidDecision"].decode(o.value) for o in res.outputs]
    assert len(decisions) == requests
    # decided_at is the batch's last event time, never the wall clock.
    assert all(d["decided_at"] < 10**9 for d in decisions)


def test_dead_letters_name_the_real_partition_and_offset(loop: Loop) -> None:
    res = run_backtest(loop.config, loop.merged(), rejection=False)
    assert [(d.source_topic, d.source_partition, d.source_offset) for d in res.dead_letters] == [
        ("bid-outcomes", *loop.bad_outcome)
    ]
    assert res.dead_letters[0].error_class == "unknown_arm"


def test_verify_reproduces_every_live_decision(loop: Loop) -> None:
    result = verify_decisions(loop.config, loop.merged())
    decisions = sum(len(v) for k, v in loop.parts.items() if k[0] == "bid-decisions")
    assert result.decisions == decisions
    assert result.mismatches == []
    assert result.matched == result.verified == decisions
    assert result.unverifiable == 0


def test_verify_reports_a_tampered_decision(loop: Loop) -> None:
    key = ("bid-decisions", 1)
    victim = loop.parts[key][7]
    rec = SERDES["BidDecision"].decode(victim.value or b"")
    rec["bid_amount"] += 0.01
    parts = dict(loop.parts)
    parts[key] = list(parts[key])
    parts[key][7] = victim._replace(value=SERDES["BidDecision"].encode(rec))
    tampered = Loop(loop.config, parts, loop.bad_outcome)
    result = verify_decisions(loop.config, tampered.merged())
    assert len(result.mismatches) == 1
    m = result.mismatches[0]
    assert m["request_id"] == rec["request_id"]
    assert set(m["differs"]) == {"bid_amount"}


def test_verify_with_a_different_seed_mismatches(loop: Loop) -> None:
    config = loop.config.replace(bidding=_seeded(loop, 99))
    result = verify_decisions(config, loop.merged())
    assert len(result.mismatches) > result.verified // 4


def test_report_files(loop: Loop, tmp_path: Path) -> None:
    res = run_backtest(loop.config, loop.merged())
    report = build_report(res, {"from": "a", "to": "b"}, None)
    jpath, hpath = write_report(tmp_path, report)
    data = json.loads(jpath.read_text())
    est = data["bidding"]["estimates"]
    assert set(est) == {"logged", "ips", "snips", "doubly_robust", "replay"}
    for e in est.values():
        assert e["ci_low"] <= e["value"] <= e["ci_high"] and e["ess"] > 0
    assert data["bidding"]["campaigns"] == 6
    assert len(data["bidding"]["per_campaign"]) == 6
    page = hpath.read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert "Off-policy estimates" in page


def test_cli_replay_from_exported_file_is_repeatable(loop: Loop, tmp_path: Path) -> None:
    records: list[RawRecord] = [r for k in sorted(loop.parts) for r in loop.parts[k]]
    export = tmp_path / "export.avro"
    write_records(export, records, {"k": "v"})
    cfg = tmp_path / "candidate.yaml"
    cfg.write_text(yaml.safe_dump({"max_batch_events": 97, "bidding": {"seed": 11}}))
    argv = ["replay", "--config", str(cfg), "--from", "0", "--to", "99999999999"]
    argv += ["--input", str(export), "--verify-decisions", "--report"]
    assert main([*argv, str(tmp_path / "r1")]) == 0
    assert main([*argv, str(tmp_path / "r2")]) == 0
    one = (tmp_path / "r1" / "outputs.avro").read_bytes()
    assert one == (tmp_path / "r2" / "outputs.avro").read_bytes()
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["verification"]["mismatched"] == 0
    assert report["verification"]["verified"] == report["verification"]["decisions"] > 0
    direct = run_backtest(loop.config, loop.merged())
    assert report["outputs"]["records"] == len(direct.outputs)


def test_verify_over_a_late_range_reports_unverifiable_not_mismatches(loop: Loop) -> None:
    merged = loop.merged()
    cut = merged[len(merged) // 2].event_time
    late = [r for r in merged if r.event_time >= cut]
    result = verify_decisions(loop.config, late)
    assert result.mismatches == []
    assert result.unverifiable == result.decisions > 0
    assert set(result.unverifiable_reasons) <= {
        "request not in range",
        "campaign history starts before the range",
    }
    assert result.unverifiable_reasons["campaign history starts before the range"] > 0
