"""V-Reason on real language-model weights: the same prompts with V-Reason off and on, side by side.

Serves the default model (SmolLM2-135M-Instruct grafted into Qwen2.5-VL, server/checkpoints/smollm2.py;
its vision tower is random, so the video carries no information the LM can use) through the real
server, sends every prompt (a synthetic moving-shapes video plus a question; once also without the
video, to show what the random visual tokens do to the answers) once per setting,
greedy, and reports per setting: mean output tokens, mean entropy, how often alpha switches per
answer, where the EMA peak falls (step and fraction of the answer), how many answers differ from
V-Reason off. It writes a Markdown report, the raw traces (JSON) and an entropy-trajectory plot (PNG).

The "off" entropy trajectory comes from a traced run with lr=1e-9 (the controller's Adam moves the
offsets by about 1e-9, so the answer is the plain one; the report checks it against "off").

    .venv/bin/python bench/real_weights.py [--max-tokens 64] [--prompts 24] [--out bench/real_weights]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serving import start_server  # bench/serving.py: a script's own folder is on sys.path

PROMPTS = [
    "Describe what happens in this video.", "What colour is the moving shape?", "How many objects are in the video?",
    "Which way does the square move?", "Is the camera moving or static?", "Summarise the video in one sentence.",
    "What shape appears first?", "Does anything change colour during the video?", "What is in the background?",
    "Is the motion fast or slow?", "What happens at the end of the video?", "Where is the object at the start?",
    "Explain step by step what the video shows.", "Could this video be from a cartoon? Why?",
    "What is the capital of France?", "Give me three tips for staying healthy.", "What is 12 plus 30?",
    "Name a fruit that is yellow.", "Why is the sky blue?", "Write a short sentence about a red square.",
    "What is the opposite of left?", "List two primary colours.", "What day comes after Monday?",
    "Explain what a circle is.",
]
NO_VIDEO = "off, text only (no video)"
SETTINGS = [  # name, vreason object (None: off)
    ("off", None),
    (NO_VIDEO, None),
    ("trace-only (lr=1e-9)", {"lr": 1e-9}),
    ("default (lr=0.01, every 2, 1 step)", {}),
    ("lr=0.1", {"lr": 0.1}),
    ("lr=0.05, every 1, 2 steps", {"lr": 0.05, "update_every": 1, "steps": 2}),
    ("text targets, default", {"targets": "text"}),
    ("text targets, lr=0.1", {"targets": "text", "lr": 0.1}),
]


def start(model: Path, media: Path, log: Path) -> tuple[subprocess.Popen, str]:
    args = ["--model", str(model), "--dtype", "float32", "--max-num-seqs", "8", "--allowed-local-media-path",
            str(media), "--served-model-name", "bench", "--log-format", "text"]
    try:
        return start_server(args, log.open("w"), timeout_s=900)
    except SystemExit as e:
        raise SystemExit(f"{e}; see {log}") from None


async def ask(client: httpx.AsyncClient, url: str, video: str, prompt: str, vreason: dict | None,
              max_tokens: int) -> dict:
    body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": ([{"type": "video_url", "video_url": {"url": video}}]
                                                      if video else []) + [{"type": "text", "text": prompt}]}]}
    if vreason is not None:
        body["vreason"] = {**vreason, "trace": True}
    r = await client.post(f"{url}/v1/chat/completions", json=body)
    r.raise_for_status()
    out = r.json()
    msg = out["choices"][0]["message"]
    text = (msg.get("reasoning") or "") + (msg.get("content") or "")
    return {"prompt": prompt, "text": text, "tokens": out["usage"]["completion_tokens"],
            "trace": out.get("vreason")}


async def run_setting(url: str, video: str, prompts: list[str], vreason: dict | None, max_tokens: int) -> list[dict]:
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=900) as client:
        async def one(p):
            async with sem:
                return await ask(client, url, video, p, vreason, max_tokens)
        return await asyncio.gather(*(one(p) for p in prompts))


def switches(steps: list[dict]) -> int:
    alphas = [s["alpha"] for s in steps]
    return sum(a != b for a, b in zip(alphas, alphas[1:]))


def summarize(name: str, results: list[dict], off: list[dict]) -> dict:
    n = len(results)
    row = {"setting": name, "mean_tokens": sum(r["tokens"] for r in results) / n,
           "differ_from_off": sum(r["text"] != o["text"] for r, o in zip(results, off))}
    traced = [r for r in results if r["trace"]]
    if traced:
        ent = [s["entropy"] for r in traced for s in r["trace"]["steps"]]
        row["mean_entropy"] = sum(ent) / len(ent)
        row["mean_switches"] = sum(switches(r["trace"]["steps"]) for r in traced) / len(traced)
        peaks = [(r["trace"]["peak_step"], len(r["trace"]["steps"])) for r in traced if r["trace"]["peak_step"]]
        row["mean_peak_step"] = sum(p for p, _ in peaks) / max(1, len(peaks))
        row["mean_peak_frac"] = sum(p / n_ for p, n_ in peaks) / max(1, len(peaks))
        row["updates"] = sum(r["trace"]["updates"] for r in traced)
        moved = [abs(s["entropy_after"] - s["entropy"]) for r in traced for s in r["trace"]["steps"] if s["updated"]]
        row["mean_abs_dH_at_update"] = sum(moved) / max(1, len(moved))
    return row


def plot(all_results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, results in all_results.items():
        traced = [r["trace"]["steps"] for r in results if r["trace"]]
        if not traced:
            continue
        n = max(len(t) for t in traced)
        for ax, key in zip(axes, ("entropy", "ema")):
            mean = []
            for i in range(n):
                vals = [t[i][key] for t in traced if len(t) > i]
                mean.append(sum(vals) / len(vals))
            ax.plot(range(1, n + 1), mean, label=name, lw=1.2)
    for ax, title in zip(axes, ("mean entropy H_t over prompts (nats)", "mean EMA of H_t over prompts")):
        ax.set_xlabel("generated token t")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(rows: list[dict], all_results: dict[str, list[dict]], args, seconds: float) -> str:
    cols = ["setting", "mean_tokens", "differ_from_off", "mean_entropy", "mean_switches", "mean_peak_step",
            "mean_peak_frac", "updates", "mean_abs_dH_at_update"]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    lines = [f"{len(PROMPTS[:args.prompts])} prompts, max_tokens {args.max_tokens}, greedy, float32; "
             f"{seconds:.0f} s in all.", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", "Answers side by side (first prompts):", ""]
    names = list(all_results)
    for i in range(min(4, args.prompts)):
        lines.append(f"**{PROMPTS[i]}**")
        lines.append("")
        for name in names:
            lines.append(f"- {name}: {json.dumps(all_results[name][i]['text'])}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--out", type=Path, default=Path("bench/real_weights"))
    ap.add_argument("--settings", default="", help="comma-separated indices into SETTINGS (default: all)")
    args = ap.parse_args()
    from vreason.clients.synth_video import write_moving_shapes_mp4
    from vreason.server.cli import default_cache_dir
    from vreason.server.checkpoints.smollm2 import ensure_smollm2_model

    model = ensure_smollm2_model(default_cache_dir(), progress=lambda m: print(m, file=sys.stderr))
    args.out.mkdir(parents=True, exist_ok=True)
    settings = [SETTINGS[int(i)] for i in args.settings.split(",")] if args.settings else SETTINGS
    prompts = PROMPTS[:args.prompts]
    with tempfile.TemporaryDirectory() as media:
        write_moving_shapes_mp4(Path(media) / "shapes.mp4")
        proc, url = start(model, Path(media), args.out / "server.log")
        try:
            t0 = time.time()
            all_results = {}
            for name, vr in settings:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                video = "" if name == NO_VIDEO else f"file://{media}/shapes.mp4"
                all_results[name] = asyncio.run(run_setting(url, video, prompts, vr, args.max_tokens))
            seconds = time.time() - t0
        finally:
            proc.terminate()
            proc.wait(60)
    off = all_results[settings[0][0]]
    rows = [summarize(name, res, off) for name, res in all_results.items()]
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "results": all_results}, indent=1))
    plot(all_results, args.out / "entropy.png")
    text = report(rows, all_results, args, seconds)
    (args.out / "report.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
