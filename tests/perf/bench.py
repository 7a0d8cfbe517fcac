"""``make bench``: the stage against the limit, the original per-event design and a peer (issue 7).

Run: ``python -m tests.perf.bench [--quick]`` (``make bench`` runs it in ``.venv-bench``). Uses
``processor.testing.acquire_broker()`` (``KAFKA_BOOTSTRAP_SERVERS`` or a local jar broker). Prints a
table and writes ``bench-results/bench.json`` with every figure and the machine description.

Every contender is a subprocess on the same pre-filled 6-partition topics with the same commit
interval (100 ms) and is timed from the outside by its consumer group's committed offsets (see
``tests/perf/kit.py``). Inputs are encoded once and cached in ``bench-results/`` between runs.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from processor.policy.bidding import BiddingConfig, BidPolicy
from processor.policy.simulator import MarketSimulator, run_closed_loop
from processor.testing import acquire_broker, stop_process, unique_name
from tests.perf import inputs
from tests.perf.kit import (
    BUSY_OTHER_SHARE,
    BUSY_STEAL_SHARE,
    PARTITIONS,
    QUIET_MAX_WINDOWS,
    QUIET_SAMPLE_S,
    MachineWatch,
    cpu_speed_ms,
    end_offsets,
    machine,
    prefill,
    spawn,
    stage_config,
    watch_drain,
)
from tests.perf.latency import run_latency
from tests.perf.restore import run_restore
from tests.perf.restore_join import run_restore_join

OUT = Path("bench-results")
TARGETS = {
    "reward_events_per_s": 150_000,
    # DESIGN.md §8 and issue 16: ratios to the same run's passthrough
    "reward_ratio_to_limit": 0.85,
    "bid_request_ratio_to_limit": 0.7,
    "trade_ratio_to_limit": 0.6,
    "decisions_per_s": 60_000,
    "p99_ms_exactly_once": 150,
    "p99_ms_at_least_once": 25,
    "ratio_to_original": 20,
    "ratio_to_peer": 3,
    "restore_seconds_1m": 10,
    "join_on_to_off": 0.8,
    "join_restore_seconds_1h": 10,
}
KINDS = {
    # input kind: (config role, generator, full-run count)
    "reward_events": ("bid_outcomes", inputs.reward_events, 1_000_000),
    # a million each: the passthrough drains 200k trades in ~0.5 s, a few commit intervals,
    # too short to time from its first commit
    "bid_requests": ("bid_requests", inputs.bid_requests, 1_000_000),
    "trade_outcomes": ("trade_outcomes", inputs.trade_outcomes, 1_000_000),
}


def _cached(kind: str, n: int, make: Callable[[int], list[tuple[bytes, bytes]]]) -> Any:
    path = OUT / f".inputs-{kind}-{n}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    pairs = make(n)
    path.write_bytes(pickle.dumps(pairs, protocol=pickle.HIGHEST_PROTOCOL))
    return pairs


def _contender(
    bootstrap: str,
    work: Path,
    name: str,
    role: str,
    topic: str,
    timeout_s: float,
) -> dict[str, Any]:
    """Run one contender on one pre-filled topic; return its drain figures."""
    # "stage_join_off[_again]": the stage with the reward join switched off (issue 14)
    off = name.startswith("stage_join_off")
    overrides = {"attribution": {"enabled": False}} if off else {}
    config, path = stage_config(bootstrap, work, {role: topic}, **overrides)
    log = work / f"{name}-{config.app_id}.log"
    group = config.app_id
    if name.startswith("stage"):
        args = ["processor", "run", "--config", str(path), "--instance-id", "bench"]
        args += ["--metrics-port", "-1"]
    elif name.startswith("limit"):
        args = ["tests.perf.passthrough", str(path), config.topics.bid_decisions]
    elif name == "original":
        args = ["tests.perf.original_design", str(path)]
    else:
        group = unique_name("quix")
        state_dir = tempfile.mkdtemp(prefix="quix-state-", dir=work)
        arms = ",".join(BiddingConfig().arm_names)
        args = ["tests.perf.quix_peer", bootstrap, group, topic, state_dir, arms]
    ends = end_offsets(bootstrap, [topic])
    watch = MachineWatch()
    proc = spawn(args, log)
    try:
        res = watch_drain(bootstrap, group, ends, proc, timeout_s)
    finally:
        code = stop_process(proc)
    out = {
        "machine": watch.stop(),
        "events": res.events,
        "seconds": round(res.seconds, 3),
        "events_per_s": round(res.rate, 1),
        "timed_out": res.timed_out,
        "exit_code": code,
    }
    busy = " (machine busy)" if out["machine"]["busy"] else ""
    print(f"  {name:<14} {res.rate:>12,.0f}/s  ({res.events} events in {res.seconds:.2f}s){busy}")
    return out


def learning_quality(n: int) -> dict[str, Any]:
    """Closed-loop reward on the simulator: learned vs uniform random vs each fixed arm."""
    cfg = BiddingConfig()
    res: dict[str, Any] = {"requests": n}
    learned = run_closed_loop(BidPolicy(cfg), MarketSimulator(7), n, learn=True)
    random = run_closed_loop(BidPolicy(cfg), MarketSimulator(7), n, learn=False)
    res["reward_learned"] = round(learned.total_reward, 2)
    res["reward_uniform_random"] = round(random.total_reward, 2)
    fixed = {}
    for arm in cfg.arm_names:
        one = replace(cfg, arms={arm: cfg.arms[arm]}, conservative_arm=arm)
        fixed[arm] = run_closed_loop(BidPolicy(one), MarketSimulator(7), n).total_reward
    best = max(fixed, key=lambda a: fixed[a])
    res["reward_fixed_arms"] = {a: round(v, 2) for a, v in fixed.items()}
    res["best_fixed_arm"] = best
    res["reward_best_fixed_arm"] = round(fixed[best], 2)
    res["ratio_learned_to_random"] = round(learned.total_reward / random.total_reward, 3)
    res["ratio_learned_to_best_fixed"] = round(learned.total_reward / fixed[best], 3)
    res["violation_rate_learned"] = round(learned.violation_rate, 5)
    return res


def run(quick: bool, only: set[str]) -> dict[str, Any]:
    OUT.mkdir(exist_ok=True)
    scale = 10 if quick else 1
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "cpu_speed_ms_start": cpu_speed_ms()},
        "notes": (
            "2 cores: the broker takes one, each contender runs as one Python process on the "
            "other (the harness's offset watcher and, in the latency test, its producer and "
            "reader share the machine). Compare ratios within one run."
        ),
        "throughput": {},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=OUT))
    with acquire_broker() as broker:
        bootstrap = broker.bootstrap
        results["broker"] = broker.kind
        print(f"broker {broker.kind} at {bootstrap}; logs in {work}")
        for kind, (role, make, full_n) in KINDS.items():
            if only and kind not in only:
                continue
            n = full_n // scale
            t0 = time.monotonic()
            pairs = _cached(kind, n, make)
            topic = unique_name(f"bench-{kind.replace('_', '-')}")
            config, _ = stage_config(bootstrap, work, {role: topic})
            del config
            fill = prefill(bootstrap, topic, pairs)
            print(f"{kind}: {n} events ready in {time.monotonic() - t0:.1f}s (produce {fill:.1f}s)")
            del pairs
            # the limit first and again last: the first run after the broker started measured
            # 148k-222k/s where the same passthrough later did 290k-500k/s (a cold JVM), so
            # the stage is compared with the faster of the two
            names = ["limit", "stage", "original", "limit_again"]
            if kind == "reward_events":
                # join off and on in ABBA order: the run right after the passthrough is slowed
                # by the broker still writing its output (measured), so neither side always
                # runs first
                names[1:2] = ["stage_join_off", "stage", "stage_again", "stage_join_off_again"]
                names.append("peer")
            figures = {
                name: _contender(bootstrap, work, name, role, topic, timeout_s=900)
                for name in names
            }
            limit = max(figures["limit"]["events_per_s"], figures["limit_again"]["events_per_s"])
            figures["limit_best_events_per_s"] = limit
            stage = figures["stage"]["events_per_s"]
            figures["ratio_to_limit"] = round(stage / limit, 3) if limit else None
            orig = figures["original"]["events_per_s"]
            figures["ratio_to_original"] = round(stage / orig, 2) if orig else None
            if "peer" in figures:
                peer = figures["peer"]["events_per_s"]
                figures["ratio_to_peer"] = round(stage / peer, 2) if peer else None
            if "stage_join_off" in figures:
                on = stage + figures["stage_again"]["events_per_s"]
                off = (
                    figures["stage_join_off"]["events_per_s"]
                    + figures["stage_join_off_again"]["events_per_s"]
                )
                figures["ratio_join_on_to_off"] = round(on / off, 3) if off else None
            results["throughput"][kind] = figures
        if not only or "latency" in only:
            seconds = 10.0 if quick else 30.0
            results["latency"] = {}
            # default settings (poll_timeout_ms 5, commit_interval_ms 100)
            runs: list[tuple[str, str, dict[str, Any]]] = [
                ("exactly_once", "exactly_once", {}),
                ("at_least_once", "at_least_once", {}),
            ]
            for label, guarantee, overrides in runs:
                # the limit first: a passthrough echoing each request, same rate and guarantee
                for contender in ("limit", "stage"):
                    watch = MachineWatch()
                    lat = run_latency(
                        bootstrap,
                        work,
                        guarantee,
                        10_000.0,
                        seconds,
                        contender=contender,
                        **overrides,
                    )
                    lat["machine"] = watch.stop()
                    key = label if contender == "stage" else f"{label}_limit"
                    results["latency"][key] = lat
                    print(f"latency {key}: {lat}")
        if not only or "join_restore" in only:
            # the decision log of one partition: an hour at 1,000 decisions/s (a tenth: --quick)
            results["join_restore"] = run_restore_join(bootstrap, work, 1.0 / scale)
            print(f"join restore: {results['join_restore']}")
        if not only or "restore" in only:
            results["restore"] = run_restore(bootstrap, work, 1_000_000 // scale)
            print(f"restore: {results['restore']}")
            # the JSON state of 0.1 (state_format: json), on a tenth of the keys
            results["restore_json"] = run_restore(
                bootstrap, work, 100_000 // scale, state_format="json"
            )
            print(f"restore (json): {results['restore_json']}")
    if not only or "learning" in only:
        results["learning"] = learning_quality(10_000 if quick else 50_000)
        print(f"learning: {results['learning']}")
    results["machine"]["cpu_speed_ms_end"] = cpu_speed_ms()
    results["partitions"] = PARTITIONS
    results["targets"] = TARGETS
    return results


def _busy_parts(results: dict[str, Any]) -> list[str]:
    """Names of the contender runs during which the machine was busy (see ``MachineWatch``)."""
    runs = [
        (f"{kind.replace('_', ' ')} {name.replace('_', ' ')}", v)
        for kind, f in results.get("throughput", {}).items()
        for name, v in f.items()
        if isinstance(v, dict)
    ]
    runs += [
        (f"latency {key.replace('_', ' ')}", v) for key, v in results.get("latency", {}).items()
    ]
    return [name for name, v in runs if v.get("machine", {}).get("busy")]


def machine_line(results: dict[str, Any]) -> str:
    """One sentence on the machine: its speed at start and end and the runs it was busy in."""
    m = results.get("machine", {})
    busy = _busy_parts(results)
    text = (
        f"Machine: {m.get('cores')} cores, {m.get('cpu')}; a fixed single-core task took "
        f"{m.get('cpu_speed_ms_start')} ms at the start and {m.get('cpu_speed_ms_end')} ms at the "
        "end (lower is faster; compare days by it). "
    )
    if busy:
        return text + (
            f"Busy (other processes above {BUSY_OTHER_SHARE:.0%} of the CPU in every quiet sample "
            f"before the run, up to {QUIET_MAX_WINDOWS * QUIET_SAMPLE_S:.0f} s, or steal above "
            f"{BUSY_STEAL_SHARE:.0%} during it) in: {', '.join(busy)}."
        )
    return text + "Not busy during any run (other processes and steal below the thresholds)."


def _percent(ratio: float | None) -> str:
    """A ratio as a percentage; "–" when a run was too short to time (``--quick``)."""
    return "–" if ratio is None else f"{ratio:.0%}"


def _limit_cell(f: dict[str, Any]) -> str:
    """The limit's two runs (first, last); the ratio uses the faster."""
    runs = [f[n]["events_per_s"] for n in ("limit", "limit_again") if n in f]
    return " / ".join(f"{r:,.0f}/s" for r in runs)


def table(results: dict[str, Any]) -> str:
    """The markdown table of the README's Performance section."""
    lines = [
        machine_line(results),
        "",
        "| input (exactly-once, 6 partitions) | limit (passthrough), first / last | stage "
        "| stage / faster limit "
        "| original design | stage / original | Quix Streams | stage / Quix |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, f in results.get("throughput", {}).items():
        peer = f.get("peer", {}).get("events_per_s")
        lines.append(
            f"| {kind.replace('_', ' ')} | {_limit_cell(f)} "
            f"| {f['stage']['events_per_s']:,.0f}/s | {_percent(f['ratio_to_limit'])} "
            f"| {f['original']['events_per_s']:,.0f}/s | {f['ratio_to_original']}× "
            f"| {f'{peer:,.0f}/s' if peer else '–'} "
            f"| {str(f.get('ratio_to_peer')) + '×' if peer else '–'} |"
        )
    lat = results.get("latency")
    if lat:
        lines += [
            "",
            "| latency at 10,000 requests/s, event → visible | p50 | p99 | max "
            "| event → decided p50 / p99 | stage loop mean | commit mean |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for v in lat.values():
            who = "limit (echo passthrough)" if v.get("contender") == "limit" else "stage"
            inside = v.get("contender") != "limit"
            guarantee = v["guarantee"].replace("_", "-")
            lines.append(
                f"| {who}, {guarantee} | {v['p50_ms']} ms | {v['p99_ms']} ms "
                f"| {v['max_ms']} ms "
                + (
                    f"| {v['to_decision_p50_ms']} / {v['to_decision_p99_ms']} ms "
                    f"| {v['stage_batch_mean_ms']} ms | {v['stage_commit_mean_ms']} ms |"
                    if inside
                    else "| – | – | – |"
                )
            )
    reward = results.get("throughput", {}).get("reward_events", {})
    if reward.get("ratio_join_on_to_off") is not None:
        on = [reward[n]["events_per_s"] for n in ("stage", "stage_again")]
        off = [reward[n]["events_per_s"] for n in ("stage_join_off", "stage_join_off_again")]
        lines += [
            "",
            f"Reward join, reward events in ABBA order: with the join {on[0]:,.0f} and "
            f"{on[1]:,.0f}/s, without it {off[0]:,.0f} and {off[1]:,.0f}/s: on / off "
            f"{reward['ratio_join_on_to_off']:.0%}.",
        ]
    jr = results.get("join_restore")
    if jr:
        lines += [
            "",
            f"Decision-log restore ({jr['restored_entries']:,} entries, {jr['hours']} h at "
            f"1,000 decisions/s, {jr['records_written']:,} records, "
            f"{jr['bytes_written'] / 2**20:,.0f} MiB): {jr['restore_seconds']} s in the stage's "
            f"restore (start to ready {jr['start_to_ready_seconds']} s).",
        ]
    rest = results.get("restore")
    if rest:
        lines += [
            "",
            f"Restore of {rest['keys']:,} keys ({rest['state_format']} state): "
            f"{rest['restore_seconds']} s in the stage's restore (start to ready "
            f"{rest['start_to_ready_seconds']} s).",
        ]
    rest_json = results.get("restore_json")
    if rest_json:
        lines[-1] += (
            f" JSON state (state_format: json), {rest_json['keys']:,} keys: "
            f"{rest_json['restore_seconds']} s."
        )
    learn = results.get("learning")
    if learn:
        lines += [
            "",
            f"Learning ({learn['requests']:,} requests, closed loop on the simulator): reward "
            f"{learn['reward_learned']:,.0f} vs uniform random "
            f"{learn['reward_uniform_random']:,.0f} "
            f"({learn['ratio_learned_to_random']}×) vs best fixed arm ({learn['best_fixed_arm']}) "
            f"{learn['reward_best_fixed_arm']:,.0f} ({learn['ratio_learned_to_best_fixed']}×).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a tenth of the events (development)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="subset: reward_events bid_requests trade_outcomes latency restore join_restore "
        "learning",
    )
    args = parser.parse_args(argv)
    results = run(args.quick, set(args.only))
    text = table(results)
    results["table_markdown"] = text
    name = (
        "bench-quick.json" if args.quick else ("bench-partial.json" if args.only else "bench.json")
    )
    (OUT / name).write_text(json.dumps(results, indent=1, sort_keys=True))
    print()
    print(text)
    print(f"\nwritten {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
