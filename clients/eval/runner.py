"""The evaluation loop: concurrent requests over HTTP (asyncio + httpx), resumable JSONL results.

Modes: "on" runs V-Reason with its per-token trace. "off" is the baseline; by default it runs
*observe-only*: the controller is enabled with ``trace: true`` and ``update_every: 4096`` (the
largest value the server accepts), so with max_tokens < 4096 no update ever runs and the outputs
are the plain model's, while the trace still records the entropy/EMA curve the paper's baseline
plots show. ``baseline="plain"`` sends ``"vreason": false`` instead (no trace, no controller
overhead: use it when baseline latency matters).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .dataset import load_dataset, video_url
from .prompt import build_prompt, chat_body
from .scoring import metric_of, score_output
from .summary import read_results, summarize

OBSERVE_UPDATE_EVERY = 4096


@dataclass
class EvalConfig:
    """Everything a run needs besides the dataset and the output folder."""

    base_url: str
    model: str | None = None  # None: the first model the server lists
    modes: tuple[str, ...] = ("on",)
    baseline: str = "observe"  # how mode "off" runs: "observe" or "plain"
    vreason_options: dict = field(default_factory=dict)  # extra knobs for mode "on" (lr, steps, ...)
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    concurrency: int = 4
    limit: int | None = None
    video_mode: str = "data"
    mm_processor_kwargs: dict = field(default_factory=dict)
    timeout_s: float = 600.0
    retries: int = 2
    api_key: str | None = None
    progress: bool = True


def api_base(url: str) -> str:
    """http://host:port from either http://host:port or http://host:port/v1."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def vreason_field(mode: str, cfg: EvalConfig):
    """The request's `vreason` value for a mode."""
    if mode == "on":
        return {**cfg.vreason_options, "enabled": True, "trace": True}
    if mode != "off":
        raise ValueError(f"mode must be 'on' or 'off', got {mode!r}")
    if cfg.baseline == "plain":
        return False
    # Same knobs (beta shapes the EMA), but an update period no generation here reaches.
    return {**cfg.vreason_options, "enabled": True, "trace": True, "update_every": OBSERVE_UPDATE_EVERY}


def full_text(content: str, reasoning: str | None) -> str:
    """The output as the model wrote it, for servers that move <think> text to
    `message.reasoning`: scoring then matches a server that does not split (Video-R1 reads the
    whole output)."""
    return f"<think>{reasoning}</think>{content}" if reasoning else content


async def first_model(http) -> str:
    r = await http.get("/v1/models")
    r.raise_for_status()
    return r.json()["data"][0]["id"]


async def ask(http, model: str, item: dict, mode: str, cfg: EvalConfig) -> dict:
    """One item in one mode -> a result row. Never raises for server or model faults: they
    become the row's "error" (and such rows are retried by the next run)."""
    import httpx

    row = {k: item.get(k) for k in ("id", "dataset", "type", "question", "options", "answer")}
    row["mode"] = mode
    vr = vreason_field(mode, cfg)
    err = None
    try:
        # Reading and encoding a large file would stall every other request's I/O on this loop.
        url = await asyncio.to_thread(video_url, item["video"], cfg.video_mode)
    except OSError as e:
        err = f"video: {e}"
    else:
        prompt = build_prompt(item["question"], item["type"], item.get("options"))
        body = chat_body(
            model,
            url,
            prompt,
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            vreason=vr,
            mm_processor_kwargs=cfg.mm_processor_kwargs,
        )
        for attempt in range(cfg.retries + 1):
            t0 = time.perf_counter()
            retry = False
            try:
                r = await http.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as e:
                err, retry = f"{type(e).__name__}: {e}", True
            else:
                latency = time.perf_counter() - t0
                if r.status_code == 200:
                    try:
                        data = r.json()
                        choice = data["choices"][0]
                        content = choice["message"]["content"] or ""
                        reasoning = choice["message"].get("reasoning") or choice["message"].get(
                            "reasoning_content"
                        )
                        usage = data.get("usage") or {}
                    except (ValueError, KeyError, IndexError, TypeError):
                        err = f"malformed response: {r.text[:200]!r}"
                    else:
                        return {
                            **row,
                            "output": content,
                            "reasoning": reasoning,
                            "finish_reason": choice.get("finish_reason"),
                            "prompt_tokens": usage.get("prompt_tokens"),
                            "completion_tokens": usage.get("completion_tokens"),
                            "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get(
                                "reasoning_tokens"
                            ),
                            "latency_s": round(latency, 4),
                            **score_output(item, full_text(content, reasoning)),
                            "vreason_request": vr,
                            "vreason": data.get("vreason"),
                            "error": None,
                        }
                else:
                    err = f"HTTP {r.status_code}: {r.text[:300]}"
                    retry = r.status_code >= 500 or r.status_code == 429
            if not retry or attempt == cfg.retries:
                break
            await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
    return {
        **row,
        "output": None,
        "reasoning": None,
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "reasoning_tokens": None,
        "latency_s": None,
        "prediction": None,
        "extraction": "error",
        "answered": False,
        "score": 0.0,
        "metric": metric_of(item["type"]),
        "vreason_request": vr,
        "vreason": None,
        "error": err,
    }


def _open_for_append(path: Path):
    # A run killed mid-write can leave a torn last line; start ours on a fresh one.
    needs_newline = False
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as tail:
            tail.seek(-1, 2)
            needs_newline = tail.read(1) != b"\n"
    fh = path.open("a", encoding="utf-8")
    if needs_newline:
        fh.write("\n")
    return fh


async def run_eval_async(dataset: str | Path, out_dir: str | Path, cfg: EvalConfig) -> dict:
    """Run (or resume) an evaluation; returns the summary also written to out_dir/summary.json."""
    import httpx
    from tqdm import tqdm

    items = load_dataset(dataset, cfg.limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {(r["id"], r["mode"]) for r in read_results(results_path) if not r.get("error")}
    jobs = [(it, m) for it in items for m in cfg.modes if (it["id"], m) not in done]
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=cfg.concurrency + 2, max_keepalive_connections=cfg.concurrency + 2)
    async with httpx.AsyncClient(
        base_url=api_base(cfg.base_url), timeout=cfg.timeout_s, headers=headers, limits=limits
    ) as http:
        model = cfg.model or await first_model(http)
        config = {
            **asdict(cfg),
            "model": model,
            "api_key": None,
            "dataset": str(Path(dataset).resolve()),
            "items": len(items),
            "skipped_as_done": len(items) * len(cfg.modes) - len(jobs),
        }
        (out / "run_config.json").write_text(json.dumps(config, indent=2))
        sem = asyncio.Semaphore(cfg.concurrency)
        bar = tqdm(total=len(jobs), desc="eval", unit="req", file=sys.stderr, disable=not cfg.progress)
        with _open_for_append(results_path) as fh:

            async def one(item: dict, mode: str) -> None:
                async with sem:
                    row = await ask(http, model, item, mode, cfg)
                fh.write(json.dumps(row) + "\n")
                fh.flush()  # each finished item survives an interrupted run
                bar.update(1)

            try:
                await asyncio.gather(*(one(it, m) for it, m in jobs))
            finally:
                bar.close()
    return write_summary(out, items, cfg.modes, config)


def write_summary(out: Path, items: list[dict], modes, config: dict) -> dict:
    """Summarise this dataset's latest rows for the given modes into out/summary.json."""
    ids = {it["id"] for it in items}
    rows = [r for r in read_results(out / "results.jsonl") if r["id"] in ids and r["mode"] in modes]
    summary = {**summarize(rows), "config": config, "notes": []}
    if "off" in modes and config.get("baseline") == "observe":
        summary["notes"].append(
            "baseline 'off' ran observe-only (vreason enabled with update_every=4096): entropy is traced, "
            "no update runs below 4096 generated tokens; its latency includes the tracing overhead."
        )
        if (summary["modes"].get("off", {}).get("mean_updates") or 0) > 0:
            summary["notes"].append("WARNING: the observe-only baseline made updates (max_tokens >= 4096?).")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_eval(dataset: str | Path, out_dir: str | Path, cfg: EvalConfig) -> dict:
    """Blocking wrapper around run_eval_async."""
    return asyncio.run(run_eval_async(dataset, out_dir, cfg))
