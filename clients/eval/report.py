"""`vreason report DIR`: a Markdown report with PNG plots from an eval output folder.

Plots: mean entropy and EMA per generated-token position per mode (the paper's curves), score
and mean output tokens per dataset/type per mode (bars), and the alpha pattern of one example.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .summary import MODE_ORDER, group_table, read_results, summarize, summary_table

COLORS = {"off": "#4C72B0", "on": "#DD8452"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def mean_curves(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per mode: mean entropy and EMA at each generated-token position, and how many items
    reach that position (later positions average over fewer, longer, answers)."""
    acc: dict[str, dict[str, list]] = defaultdict(lambda: {"entropy": [], "ema": [], "count": []})
    for r in rows:
        steps = (r.get("vreason") or {}).get("steps") if isinstance(r.get("vreason"), dict) else None
        if not steps:
            continue
        a = acc[r["mode"]]
        for t, s in enumerate(steps):
            if len(a["count"]) <= t:
                a["entropy"].append(0.0)
                a["ema"].append(0.0)
                a["count"].append(0)
            if s.get("entropy") is not None and s.get("ema") is not None:  # null = a non-finite step
                a["entropy"][t] += s["entropy"]
                a["ema"][t] += s["ema"]
                a["count"][t] += 1
    out = {}
    for mode, a in acc.items():
        n = a["count"]
        out[mode] = {
            "entropy": [e / c if c else float("nan") for e, c in zip(a["entropy"], n)],
            "ema": [e / c if c else float("nan") for e, c in zip(a["ema"], n)],
            "count": n,
        }
    return out


def _mode_order(modes) -> list[str]:
    return sorted(modes, key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else 9, m))


def plot_entropy(rows: list[dict], path: Path) -> bool:
    curves = mean_curves(rows)
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for mode in _mode_order(curves):
        c, x = curves[mode], range(1, len(curves[mode]["ema"]) + 1)
        color = COLORS.get(mode)
        ax.plot(x, c["entropy"], color=color, alpha=0.35, lw=1, label=f"{mode}: mean entropy")
        ax.plot(x, c["ema"], color=color, lw=2.2, label=f"{mode}: mean EMA")
    ax.set_xlabel("generated token")
    ax.set_ylabel("entropy (nats)")
    ax.set_title("Output entropy per generated token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_groups(summary: dict, key: str, ylabel: str, title: str, path: Path) -> bool:
    """Grouped bars: one group per (dataset, type), one bar per mode. For key "score" each group
    uses its own metric (MRA for regression, accuracy otherwise)."""
    groups = sorted({(g["dataset"], g["type"]) for g in summary["groups"]})
    modes = _mode_order({g["mode"] for g in summary["groups"]})
    if not groups:
        return False
    plt = _plt()
    vals = {(g["dataset"], g["type"], g["mode"]): g for g in summary["groups"]}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4.5))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        ys = []
        for d, t in groups:
            g = vals.get((d, t, mode), {})
            v = g.get(("mra" if t == "regression" else "accuracy") if key == "score" else key)
            ys.append(v or 0.0)
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, ys, width, label=mode, color=COLORS.get(mode))
        ax.bar_label(bars, fmt="%.2f" if key == "score" else "%.0f", fontsize=7)  # zero bars stay readable
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [f"{d}\n{t}" + (" (MRA)" if key == "score" and t == "regression" else "") for d, t in groups],
        fontsize=8,
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if key == "score":
        ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pick_example(rows: list[dict]) -> dict | None:
    """The V-Reason-on row whose trace shows the most: both alpha signs if any, then most steps."""
    traced = [
        r
        for r in rows
        if r.get("mode") == "on" and isinstance(r.get("vreason"), dict) and r["vreason"].get("steps")
    ]
    if not traced:
        return None

    def rank(r):
        steps = r["vreason"]["steps"]
        signs = {s.get("alpha") for s in steps if s.get("alpha") is not None}
        return (len(signs), len(steps), r["vreason"].get("updates") or 0, str(r["id"]))

    return max(traced, key=rank)


def plot_alpha(row: dict, path: Path) -> None:
    plt = _plt()
    steps = row["vreason"]["steps"]
    x = list(range(1, len(steps) + 1))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(
        x,
        [s.get("alpha") if s.get("alpha") is not None else float("nan") for s in steps],
        where="post",
        color="black",
        lw=1.6,
        label="alpha (+1 raise, -1 lower entropy)",
    )
    upd = [t for t, s in zip(x, steps) if s.get("updated")]
    ax.scatter(
        upd,
        [steps[t - 1].get("alpha") or 0 for t in upd],
        s=14,
        color="#DD8452",
        zorder=3,
        label="update step",
    )
    ax.set_ylim(-1.5, 1.5)
    ax.set_xlabel("generated token")
    ax.set_ylabel("alpha")
    ax2 = ax.twinx()
    ax2.plot(x, [s.get("ema") for s in steps], color="#4C72B0", lw=1.2, alpha=0.8, label="EMA entropy")
    ax2.set_ylabel("EMA entropy (nats)")
    peak = row["vreason"].get("peak_step")
    if peak:
        ax.axvline(peak, color="gray", ls="--", lw=1, label=f"EMA peak (step {peak})")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
    ax.set_title(f"V-Reason alpha pattern: item {row['id']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: str | Path) -> Path:
    """Write out_dir/report.md and its PNGs from out_dir/results.jsonl; returns the report path."""
    out = Path(out_dir)
    rows = read_results(out / "results.jsonl")
    if not rows:
        raise FileNotFoundError(f"no results in {out / 'results.jsonl'}")
    summary = summarize(rows)
    cfg_path = out / "run_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    md = ["# V-Reason evaluation report", ""]
    if cfg:
        md += [
            f"Dataset `{cfg.get('dataset')}`, model `{cfg.get('model')}`, server `{cfg.get('base_url')}`, "
            f"max_tokens {cfg.get('max_tokens')}, temperature {cfg.get('temperature')}, "
            f"baseline `{cfg.get('baseline')}`.",
            "",
        ]
    md += [
        "## Summary",
        "",
        summary_table(summary),
        "",
        "## Per dataset and type",
        "",
        group_table(summary),
        "",
    ]
    md += [
        "Scores: accuracy for multiple-choice, numerical and free-form items; MRA (mean relative accuracy "
        "over thresholds 0.50..0.95) for regression items.",
        "",
    ]
    if plot_entropy(rows, out / "entropy_curve.png"):
        md += [
            "## Entropy per generated token",
            "",
            "Mean entropy (thin) and its EMA (thick) at each generated-token position, averaged over the "
            "items that reach it. The `off` curve comes from the observe-only baseline "
            "(trace on, no update).",
            "",
            "![entropy](entropy_curve.png)",
            "",
        ]
    else:
        md += ["No entropy traces in these results (a `plain` baseline run without V-Reason has none).", ""]
    if plot_groups(
        summary, "score", "score", "Accuracy (MRA for regression) per dataset/type", out / "accuracy.png"
    ):
        md += ["## Accuracy", "", "![accuracy](accuracy.png)", ""]
    if plot_groups(
        summary,
        "mean_output_tokens",
        "mean output tokens",
        "Output tokens per dataset/type",
        out / "output_tokens.png",
    ):
        md += ["## Output tokens", "", "![output tokens](output_tokens.png)", ""]
    example = pick_example(rows)
    if example is not None:
        plot_alpha(example, out / "alpha_example.png")
        v = example["vreason"]
        md += [
            "## Alpha pattern of one example",
            "",
            f"Item `{example['id']}`: {len(v['steps'])} tokens, {v.get('updates')} updates, EMA peak at step "
            f"{v.get('peak_step')}. alpha = +1 (raise entropy) while the EMA is at its running peak, -1 "
            "(lower entropy) once the EMA falls below it; dots mark update steps.",
            "",
            "![alpha](alpha_example.png)",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
