"""Aggregation of per-item results into per-mode and per-group summaries, and their tables."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

MODE_ORDER = ("off", "on")


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]) of finite values; None if there are none."""
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def read_results(path: str | Path) -> list[dict]:
    """The latest row per (id, mode) of a results.jsonl; torn or malformed lines are skipped
    (a run killed mid-write must not make the file unusable)."""
    latest: dict[tuple[str, str], dict] = {}
    path = Path(path)
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                latest[(str(row["id"]), str(row["mode"]))] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return list(latest.values())


def mode_stats(rows: list[dict]) -> dict:
    """Scores, tokens and latency of one mode's rows. Errored rows count as wrong, and are
    left out of token and latency means."""
    ok = [r for r in rows if not r.get("error")]
    acc_rows = [r for r in rows if r.get("metric", "acc") == "acc"]
    mra_rows = [r for r in rows if r.get("metric") == "mra"]
    lat = [r.get("latency_s") for r in ok]
    traced = [r["vreason"] for r in ok if isinstance(r.get("vreason"), dict)]
    return {
        "items": len(rows),
        "errors": len(rows) - len(ok),
        "answered": sum(1 for r in ok if r.get("answered")),
        "accuracy": _mean(r.get("score", 0.0) for r in acc_rows),
        "accuracy_items": len(acc_rows),
        "mra": _mean(r.get("score", 0.0) for r in mra_rows),
        "mra_items": len(mra_rows),
        "mean_output_tokens": _mean(r.get("completion_tokens") for r in ok),
        "truncated": sum(1 for r in ok if r.get("finish_reason") == "length"),
        "mean_latency_s": _mean(lat),
        "p50_latency_s": percentile(lat, 50),
        "p90_latency_s": percentile(lat, 90),
        "mean_updates": _mean(t.get("updates") for t in traced) if traced else None,
        "traced_items": len(traced),
    }


def summarize(rows: list[dict]) -> dict:
    """{"modes": {mode: stats}, "groups": [{dataset, type, mode, stats}]} over result rows."""
    by_mode: dict[str, list[dict]] = defaultdict(list)
    by_group: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_mode[r["mode"]].append(r)
        by_group[(str(r.get("dataset", "")), str(r.get("type", "")), r["mode"])].append(r)
    modes = sorted(by_mode, key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else 9, m))
    return {
        "modes": {m: mode_stats(by_mode[m]) for m in modes},
        "groups": [
            {"dataset": d, "type": t, "mode": m, **mode_stats(g)} for (d, t, m), g in sorted(by_group.items())
        ],
    }


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


TABLE_ROWS = (
    ("items", "items"),
    ("errors", "errors"),
    ("answered", "answered (valid <answer>)"),
    ("accuracy", "accuracy (non-regression)"),
    ("mra", "MRA (regression)"),
    ("mean_output_tokens", "mean output tokens"),
    ("truncated", "hit max_tokens"),
    ("mean_latency_s", "mean latency (s)"),
    ("p50_latency_s", "p50 latency (s)"),
    ("p90_latency_s", "p90 latency (s)"),
    ("mean_updates", "mean V-Reason updates"),
)


def summary_table(summary: dict) -> str:
    """A Markdown table: one column per mode, plus on - off when both ran."""
    modes = list(summary["modes"])
    both = "off" in modes and "on" in modes
    head = ["metric", *modes] + (["on - off"] if both else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in TABLE_ROWS:
        vals = [summary["modes"][m].get(key) for m in modes]
        cells = [label, *(_fmt(v) for v in vals)]
        if both:
            a, b = summary["modes"]["off"].get(key), summary["modes"]["on"].get(key)
            cells.append(_fmt(b - a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(summary: dict) -> str:
    """Per dataset and type: score (accuracy, or MRA for regression) and mean output tokens per mode."""
    modes = list(summary["modes"])
    cells: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for g in summary["groups"]:
        cells[(g["dataset"], g["type"])][g["mode"]] = g
    head = ["dataset", "type", "n"] + [f"score {m}" for m in modes] + [f"tokens {m}" for m in modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, qtype), per in sorted(cells.items()):
        n = max(g["items"] for g in per.values())
        key = "mra" if qtype == "regression" else "accuracy"
        row = (
            [dataset, qtype, str(n)]
            + [_fmt(per.get(m, {}).get(key)) for m in modes]
            + [_fmt(per.get(m, {}).get("mean_output_tokens"), 1) for m in modes]
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
