"""Backtest report: the numbers (``report.json``) and the same with plots (``report.html``).

Regret is measured against the best fixed arm in hindsight *per campaign* (per ensemble for trade
outcomes). Logged data shows only the played arm's reward, so each fixed arm's value is an IPS
estimate from the logged propensities (:func:`processor.replay.ope.hindsight`); the candidate's
cumulative reward is the IPS estimate too. The report labels both as estimates. Plots use
matplotlib's Agg backend and are embedded as base64 PNGs, so the HTML is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from processor.replay.backtest import BacktestResult
from processor.replay.ope import (
    doubly_robust,
    group_arm_means,
    hindsight,
    ips,
    mean_estimate,
    snips,
    thin,
)

logger = logging.getLogger(__name__)

NOTES = [
    "Fixed-arm values and the candidate's reward are IPS estimates from logged propensities "
    "(only the played arm's reward is observed), not simulator ground truth.",
    "OPE covers bid outcomes whose request the candidate decided in this replay; the candidate "
    "learns from every logged outcome (off-policy learning), except for the replay estimator, "
    "which learns only from kept events.",
    "The best fixed arm is the maximum of noisy IPS estimates, which is biased upwards: with few "
    "outcomes per campaign the regret is overstated.",
    "The replay (rejection sampling) estimator is unbiased only under uniform logging.",
    "Bootstrap intervals resample events as if independent; adaptive logs make them indicative.",
]


def _arm_index(names: list[str], arms: list[str]) -> tuple[list[str], np.ndarray]:
    vocab = list(names)
    vocab += sorted({a for a in arms if a not in names})
    col = {a: i for i, a in enumerate(vocab)}
    return vocab, np.array([col[a] for a in arms], dtype=np.int64)


def bidding_analysis(result: BacktestResult, seed: int = 0) -> dict[str, Any]:
    """Regret against the best fixed arm per campaign, and OPE of the candidate."""
    recs = result.outcome_records
    if not recs:
        return {"outcomes": 0}
    rewards = np.concatenate(result.outcome_rewards)
    prop = np.array([float(r["propensity"]) for r in recs])
    valid = np.isfinite(rewards) & np.isfinite(prop) & (prop > 0) & (prop <= 1)
    recs = [r for r, ok in zip(recs, valid.tolist(), strict=True) if ok]
    rewards, prop = rewards[valid], prop[valid]
    names, rows, table = result.target_table()
    vocab, arm = _arm_index(names, [str(r["arm"]) for r in recs])
    k = len(vocab)
    campaigns, g = np.unique(
        np.array([r["campaign_id"] for r in recs], dtype=str), return_inverse=True
    )
    n_g = campaigns.size
    means, best = hindsight(g, arm, prop, rewards, n_g, k)
    best_val = means[np.arange(n_g), best]
    trow = np.array([rows.get(str(r["request_id"]), -1) for r in recs], dtype=np.int64)
    has = trow >= 0
    target = np.zeros((len(recs), k))
    target[has, : len(names)] = table[trow[has]]
    tp = target[np.arange(len(recs)), arm]
    w = tp / prop
    logged_regret = np.cumsum(best_val[g] - rewards)
    cand_regret = np.cumsum(np.where(has, best_val[g] - w * rewards, 0.0))
    # Cross-fitted reward model: each half of the events is predicted by a model of the other.
    fold = np.arange(len(recs)) % 2
    q_by_fold = [
        group_arm_means(g[fold == f], arm[fold == f], rewards[fold == f], n_g, k) for f in (0, 1)
    ]
    q_ev = np.where((fold == 0)[:, None], q_by_fold[1][g], q_by_fold[0][g])
    q_logged = q_ev[np.arange(len(recs)), arm]
    q_target = (target * q_ev).sum(axis=1)
    sel = has
    estimates = {
        "logged": mean_estimate(rewards[sel], seed=seed).to_dict(),
        "ips": ips(rewards[sel], tp[sel], prop[sel], seed=seed).to_dict(),
        "snips": snips(rewards[sel], tp[sel], prop[sel], seed=seed).to_dict(),
        "doubly_robust": doubly_robust(
            rewards[sel], tp[sel], prop[sel], q_logged[sel], q_target[sel], seed=seed
        ).to_dict(),
        "replay": mean_estimate(np.array(result.rejection_rewards), seed=seed).to_dict(),
    }
    estimates["replay"]["ess"] = float(len(result.rejection_rewards))
    estimates["replay"]["considered"] = result.rejection_seen
    count = np.bincount(g, minlength=n_g)
    sum_r = np.bincount(g, weights=rewards, minlength=n_g)
    cand = np.bincount(g, weights=np.where(has, w * rewards, 0.0), minlength=n_g)
    per = [
        {
            "campaign_id": str(campaigns[i]),
            "outcomes": int(count[i]),
            "logged_reward": float(sum_r[i]),
            "best_arm": vocab[int(best[i])],
            "best_arm_value_ips": float(best_val[i]),
            "regret_logged": float(count[i] * best_val[i] - sum_r[i]),
            "candidate_reward_ips": float(cand[i]),
            "regret_candidate_ips": float(count[i] * best_val[i] - cand[i]),
        }
        for i in range(n_g)
    ]
    x, lr = thin(logged_regret)
    _, cr = thin(cand_regret)
    _, lc = thin(np.cumsum(rewards))
    _, cc = thin(np.cumsum(np.where(has, w * rewards, 0.0)))
    return {
        "outcomes": len(recs),
        "outcomes_with_candidate_decision": int(has.sum()),
        "campaigns": int(n_g),
        "reward_total_logged": float(rewards.sum()),
        "regret_logged": float(logged_regret[-1]),
        "regret_candidate_ips": float(cand_regret[-1]),
        "estimates": estimates,
        "per_campaign": per,
        "curves": {
            "x": x,
            "logged_regret": lr,
            "candidate_regret": cr,
            "logged_reward": lc,
            "candidate_reward": cc,
        },
    }


def ensemble_analysis(result: BacktestResult, seed: int = 0) -> dict[str, Any]:
    """Regret and off-policy estimates for ensembles (:mod:`processor.replay.ope_ensemble`)."""
    from processor.replay.ope_ensemble import ensemble_analysis as analyse

    return analyse(result, seed)


def build_report(
    result: BacktestResult,
    meta: Mapping[str, Any],
    verification: Mapping[str, Any] | None,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``report.json`` document."""
    reasons = Counter(d.error_class for d in result.dead_letters)
    report: dict[str, Any] = {
        **meta,
        "replay": {
            "events": result.events,
            "batches": result.batches,
            "events_by_topic": dict(sorted(result.events_by_topic.items())),
            "event_time_first": result.first_ms,
            "event_time_last": result.last_ms,
            "outputs": len(result.outputs),
            "dead_letters": dict(sorted(reasons.items())),
            "modes": dict(sorted(result.modes.items())),
            "guardrails": dict(sorted(result.guardrails.items())),
            "arms_chosen": dict(sorted(result.arms_chosen.items())),
        },
        "run": {"seconds": round(result.seconds, 3), "events_per_s": round(result.throughput, 1)},
        "bidding": bidding_analysis(result, seed),
        "ensembles": ensemble_analysis(result, seed),
        "timelines": {
            "arm_probabilities": result.arm_timeline[:: max(1, len(result.arm_timeline) // 400)],
            "ensemble_probabilities": result.weight_timeline[
                :: max(1, len(result.weight_timeline) // 400)
            ],
            "guardrails": result.guardrail_timeline[
                :: max(1, len(result.guardrail_timeline) // 400)
            ],
        },
        "notes": NOTES,
    }
    if verification is not None:
        report["verification"] = dict(verification)
    return report


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _timeline_plot(ax: Any, points: list[Any], title: str, ylabel: str) -> None:
    names = sorted({n for _, p in points for n in p})
    t = np.array([(ms - points[0][0]) / 60_000 for ms, _ in points])
    ys = np.array([[p.get(n, 0.0) for _, p in points] for n in names])
    ax.stackplot(t, ys, labels=names) if ylabel == "probability" else [
        ax.plot(t, y, label=n) for n, y in zip(names, ys, strict=True)
    ]
    ax.set_title(title)
    ax.set_xlabel("event time (minutes from start)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left")


def figures(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(caption, base64 PNG)`` of every plot the report has data for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    bid = report["bidding"]
    if bid.get("outcomes"):
        c = bid["curves"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
        a1.plot(c["x"], c["logged_reward"], label="logged policy")
        a1.plot(c["x"], c["candidate_reward"], label="candidate (IPS estimate)")
        a1.set_title("cumulative reward, all campaigns")
        a2.plot(c["x"], c["logged_regret"], label="logged policy")
        a2.plot(c["x"], c["candidate_regret"], label="candidate (IPS estimate)")
        a2.set_title("regret vs best fixed arm per campaign (IPS)")
        for ax in (a1, a2):
            ax.set_xlabel("bid outcomes")
            ax.legend(fontsize=8)
        out.append(("Bidding: cumulative reward and regret", _png(fig)))
        per = sorted(bid["per_campaign"], key=lambda r: -r["outcomes"])[:25]
        fig, ax = plt.subplots(figsize=(11, 3.4))
        xs = np.arange(len(per))
        ax.bar(xs - 0.2, [r["regret_logged"] for r in per], 0.4, label="logged")
        ax.bar(xs + 0.2, [r["regret_candidate_ips"] for r in per], 0.4, label="candidate (IPS)")
        ax.set_xticks(xs, [r["campaign_id"] for r in per], rotation=70, fontsize=7)
        ax.set_title("regret per campaign (largest 25 by outcomes)")
        ax.legend(fontsize=8)
        out.append(("Regret per campaign", _png(fig)))
        est = bid["estimates"]
        labels = [
            k
            for k in ("logged", "ips", "snips", "doubly_robust", "replay")
            if est[k]["value"] is not None
        ]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        vals = [est[k]["value"] for k in labels]
        err = [
            [
                v - (est[k]["ci_low"] if est[k]["ci_low"] is not None else v)
                for k, v in zip(labels, vals, strict=True)
            ],
            [
                (est[k]["ci_high"] if est[k]["ci_high"] is not None else v) - v
                for k, v in zip(labels, vals, strict=True)
            ],
        ]
        ax.bar(labels, vals, yerr=err, capsize=4, color="tab:blue")
        ax.set_title("value per bid outcome: logged policy and candidate estimates (95% CI)")
        out.append(("Off-policy estimates", _png(fig)))
    ens = report["ensembles"]
    if ens.get("trades"):
        c = ens["curves"]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot(c["x"], c["reward"], label="cumulative reward (bps)")
        ax.plot(c["x"], c["regret"], label="regret vs best fixed arm (IPS)")
        ax.set_xlabel("trades")
        ax.legend(fontsize=8)
        ax.set_title("ensembles (logged bandit-feedback trades)")
        out.append(("Ensembles: cumulative reward and regret", _png(fig)))
    tl = report["timelines"]
    for key, title, ylabel in (
        (
            "arm_probabilities",
            "candidate arm probabilities (mean over decided requests)",
            "probability",
        ),
        (
            "ensemble_probabilities",
            "ensemble arm probabilities (mean over updated ensembles)",
            "probability",
        ),
        ("guardrails", "guardrail activations (cumulative)", "decisions"),
    ):
        points = tl[key]
        if points and any(p for _, p in points):
            fig, ax = plt.subplots(figsize=(9, 3.2))
            _timeline_plot(ax, points, title, ylabel)
            out.append((title, _png(fig)))
    return out


def _table(rows: Sequence[Mapping[str, Any]], limit: int = 50) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>" for r in rows[:limit]
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def render_html(report: Mapping[str, Any]) -> str:
    """Self-contained HTML: headline numbers, estimates, plots, per-key tables, notes."""
    rep = report["replay"]
    bid = report["bidding"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>bandit-processor backtest</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
        "<h1>Backtest report</h1>",
        f"<p>range {html.escape(str(report.get('from')))} → {html.escape(str(report.get('to')))}; "
        f"{rep['events']} events in {rep['batches']} batches; "
        f"{report['run']['events_per_s']:,.0f} events/s.</p>",
        _table([{"topic": t, "events": n} for t, n in rep["events_by_topic"].items()]),
    ]
    if bid.get("outcomes"):
        est = [{"estimator": k, **v} for k, v in bid["estimates"].items()]
        parts += ["<h2>Off-policy estimates (value per bid outcome)</h2>", _table(est)]
    if "verification" in report:
        ver = report["verification"]
        parts += [
            "<h2>Decision verification</h2>",
            _table([{k: v for k, v in ver.items() if not isinstance(v, list | dict)}]),
            _table(ver.get("mismatches", [])[:50]),
        ]
    try:
        plots = figures(report)
    except ImportError:
        logger.warning("matplotlib is not installed: report.html has no plots")
        parts.append("<p>Plots need matplotlib: pip install 'bandit-processor[report]'.</p>")
        plots = []
    for caption, png in plots:
        parts.append(f"<h3>{html.escape(caption)}</h3><img src='data:image/png;base64,{png}'>")
    if bid.get("outcomes"):
        parts += ["<h2>Per campaign</h2>", _table(bid["per_campaign"], limit=200)]
    if report["ensembles"].get("trades"):
        ens_est = report["ensembles"].get("estimates", {})
        if ens_est:
            rows = [{"estimator": k, **v} for k, v in ens_est.items()]
            parts += ["<h2>Off-policy estimates (value per trade, bps)</h2>", _table(rows)]
        parts += ["<h2>Per ensemble</h2>", _table(report["ensembles"]["per_ensemble"], limit=200)]
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in NOTES))
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def write_report(folder: str | Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``folder`` (created)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    jpath, hpath = root / "report.json", root / "report.html"
    jpath.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    hpath.write_text(render_html(report), encoding="utf-8")
    return jpath, hpath
