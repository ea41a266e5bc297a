"""`vreason bench`: a bounded load generator for one server (V-Reason vs baseline, interleaved)
or two servers (A vs B), reporting TTFT, time per output token, end-to-end latency percentiles
and output tokens/s per concurrency level, with B/A ratios from the same run.

Bounded by construction: a fixed number of requests per arm and level, each with a timeout.
It talks only to the URLs it is given. TPOT = (E2E - TTFT) / (output tokens - 1), as in
`vllm bench serve`. Repeated identical requests hit the server's prefix cache after the first,
so these numbers are mostly about decoding.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from vreason.clients.eval.runner import api_base
from vreason.clients.eval.summary import percentile

DEFAULT_PROMPT = "Describe what happens in this video, step by step."


@dataclass
class Arm:
    name: str
    base_url: str
    vreason: Any = None  # None: leave the field out (the server's default)
    model: str | None = None


@dataclass
class BenchConfig:
    """See `vreason bench --help`."""

    base_url: str
    base_url_b: str | None = None
    model: str | None = None
    model_b: str | None = None
    requests: int = 8
    concurrency: tuple[int, ...] = (1, 4, 16)
    vreason_on: bool = False
    vreason_options: dict = field(default_factory=dict)
    max_tokens: int = 128
    temperature: float = 0.0
    video: str | None = None  # None: a synthetic moving-shapes clip
    video_mode: str = "data"
    prompt: str = DEFAULT_PROMPT
    warmup: int = 1
    timeout_s: float = 300.0


def make_arms(cfg: BenchConfig) -> list[Arm]:
    """Two servers: A as is, B with V-Reason if --vreason-on. One server: V-Reason off vs on
    with --vreason-on, else a single arm with the server's defaults."""
    on = {**cfg.vreason_options, "enabled": True}
    if cfg.base_url_b:
        return [
            Arm("A", api_base(cfg.base_url), None, cfg.model),
            Arm("B", api_base(cfg.base_url_b), on if cfg.vreason_on else None, cfg.model_b or cfg.model),
        ]
    if cfg.vreason_on:
        return [
            Arm("baseline", api_base(cfg.base_url), False, cfg.model),
            Arm("vreason", api_base(cfg.base_url), on, cfg.model),
        ]
    return [Arm("default", api_base(cfg.base_url), None, cfg.model)]


def _body(arm: Arm, cfg: BenchConfig, video_url: str) -> dict:
    from vreason.clients.eval.prompt import chat_body

    return chat_body(
        arm.model,
        video_url,
        cfg.prompt,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        vreason=arm.vreason,
        stream=True,
    )


async def one_request(http, arm: Arm, body: dict) -> dict:
    """One streamed request: TTFT at the first chunk after the role chunk, output
    tokens from the final usage chunk. Failures are recorded, never raised."""
    import httpx

    t0 = time.perf_counter()
    ttft = tokens = err = None
    try:
        async with http.stream("POST", f"{arm.base_url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                err = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    obj = json.loads(line[6:])
                    if "error" in obj:
                        err = str(obj["error"].get("message", obj["error"]))[:200]
                        break
                    for ch in obj.get("choices") or []:
                        # Every chunk after the role announcement is a generated token, even one
                        # whose text is held back (a split tag) or goes to `reasoning`.
                        delta = ch.get("delta") or {}
                        if ttft is None and (
                            "role" not in delta or delta.get("content") or delta.get("reasoning")
                        ):
                            ttft = time.perf_counter() - t0
                    if obj.get("usage"):
                        tokens = obj["usage"].get("completion_tokens")
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        err = f"{type(e).__name__}: {e}"
    e2e = time.perf_counter() - t0
    tpot = (e2e - ttft) / (tokens - 1) if err is None and ttft is not None and tokens and tokens > 1 else None
    return {
        "arm": arm.name,
        "ok": err is None,
        "error": err,
        "ttft_s": ttft,
        "e2e_s": e2e,
        "tpot_s": tpot,
        "output_tokens": tokens if err is None else None,
    }


def arm_stats(records: list[dict], duration_s: float) -> dict:
    ok = [r for r in records if r["ok"]]
    ttft, e2e = [r["ttft_s"] for r in ok], [r["e2e_s"] for r in ok]
    tpot = [r["tpot_s"] for r in ok if r["tpot_s"] is not None]
    tokens = sum(r["output_tokens"] or 0 for r in ok)
    return {
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "mean_output_tokens": tokens / len(ok) if ok else None,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "tpot_mean_s": _mean_or_none(tpot),
        "e2e_p50_s": percentile(e2e, 50),
        "e2e_p90_s": percentile(e2e, 90),
        "e2e_p99_s": percentile(e2e, 99),
        "output_tok_per_s": tokens / duration_s if duration_s > 0 else None,
        # Per request, so it stays meaningful when interleaved arms share the wall time.
        "request_tok_per_s": _mean_or_none(
            [r["output_tokens"] / r["e2e_s"] for r in ok if r["output_tokens"] and r["e2e_s"] > 0]
        ),
        "duration_s": duration_s,
    }


def _mean_or_none(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


async def _run_jobs(http, jobs: list[tuple[Arm, dict]], concurrency: int) -> tuple[list[dict], float]:
    sem = asyncio.Semaphore(concurrency)

    async def go(arm, body):
        async with sem:
            return await one_request(http, arm, body)

    t0 = time.perf_counter()
    records = await asyncio.gather(*(go(a, b) for a, b in jobs))
    return list(records), time.perf_counter() - t0


async def run_bench_async(cfg: BenchConfig) -> dict:
    """All levels for all arms; returns {"arms", "levels": [{"concurrency", "interleaved", "stats"}]}."""
    import httpx
    from vreason.clients.eval.dataset import video_url
    from vreason.clients.synth_video import mp4_data_url

    if cfg.requests < 1 or not cfg.concurrency or min(cfg.concurrency) < 1:
        raise ValueError("need --requests >= 1 and concurrency levels >= 1")
    arms = make_arms(cfg)
    video = video_url(cfg.video, cfg.video_mode) if cfg.video else mp4_data_url()
    limits = httpx.Limits(max_connections=2 * max(cfg.concurrency) + 4)
    async with httpx.AsyncClient(timeout=cfg.timeout_s, limits=limits) as http:
        for arm in arms:
            if arm.model is None:
                r = await http.get(f"{arm.base_url}/v1/models")
                r.raise_for_status()
                arm.model = r.json()["data"][0]["id"]
        bodies = {arm.name: _body(arm, cfg, video) for arm in arms}
        for arm in arms:  # warm-up: first-request costs (video decode, caches) stay out of the numbers
            for _ in range(cfg.warmup):
                await one_request(http, arm, bodies[arm.name])
        interleaved = len(arms) > 1 and not cfg.base_url_b
        levels = []
        for c in cfg.concurrency:
            stats = {}
            if interleaved:
                # Same server: alternate arms so that both see the same load at the same time.
                jobs = [(arm, bodies[arm.name]) for _ in range(cfg.requests) for arm in arms]
                records, duration = await _run_jobs(http, jobs, c)
                for arm in arms:
                    stats[arm.name] = arm_stats([r for r in records if r["arm"] == arm.name], duration)
            else:
                # Two servers may share hardware: measure them one after the other.
                for arm in arms:
                    records, duration = await _run_jobs(http, [(arm, bodies[arm.name])] * cfg.requests, c)
                    stats[arm.name] = arm_stats(records, duration)
            levels.append({"concurrency": c, "interleaved": interleaved, "stats": stats})
    return {
        "arms": [
            {"name": a.name, "base_url": a.base_url, "model": a.model, "vreason": a.vreason} for a in arms
        ],
        "requests_per_arm_and_level": cfg.requests,
        "max_tokens": cfg.max_tokens,
        "levels": levels,
    }


COLUMNS = (
    ("mean_output_tokens", "out tok", 1, 1),
    ("ttft_p50_s", "TTFT p50 ms", 1000, 1),
    ("ttft_p99_s", "TTFT p99 ms", 1000, 1),
    ("tpot_mean_s", "TPOT ms", 1000, 2),
    ("e2e_p50_s", "E2E p50 s", 1, 3),
    ("e2e_p90_s", "E2E p90 s", 1, 3),
    ("e2e_p99_s", "E2E p99 s", 1, 3),
    ("request_tok_per_s", "tok/s per req", 1, 1),
    ("output_tok_per_s", "out tok/s", 1, 1),
)


def bench_table(result: dict) -> str:
    """Markdown: one row per level and arm, then a ratio row (last arm / first arm) per level."""
    names = [a["name"] for a in result["arms"]]
    head = ["conc", "arm", "ok", "err", *(c[1] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lvl in result["levels"]:
        for name in names:
            s = lvl["stats"][name]
            cells = [str(lvl["concurrency"]), name, str(s["ok"]), str(s["errors"])]
            cells += [f"{s[k] * scale:.{d}f}" if s[k] is not None else "-" for k, _, scale, d in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        if len(names) > 1:
            a, b = lvl["stats"][names[0]], lvl["stats"][names[-1]]
            cells = [str(lvl["concurrency"]), f"**{names[-1]}/{names[0]}**", "", ""]
            cells += [f"{b[k] / a[k]:.2f}x" if a[k] and b[k] is not None else "-" for k, *_ in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Arms interleaved on one server: out tok/s is each arm's tokens over the level's shared wall time."
        if any(lvl["interleaved"] for lvl in result["levels"])
        else ""
    )
    return "\n".join(lines) + ("\n\n" + note if note else "")


def run_bench(cfg: BenchConfig) -> dict:
    """Blocking wrapper around run_bench_async."""
    return asyncio.run(run_bench_async(cfg))
