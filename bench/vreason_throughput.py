"""V-Reason on vs off through the real server, same prompts, same run, several concurrency levels.

Starts `vreason serve` on 127.0.0.1 (the demo model unless --model), sends the same video
question with V-Reason off and on (default knobs) at each concurrency level, interleaving the
two modes, and prints generated tokens/s for each and the on/off ratio as a Markdown table.

    .venv/bin/python bench/vreason_throughput.py [--model DIR] [--concurrency 1 4 16] [--max-tokens 64]
        [--modes off on] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serving import start_server  # bench/serving.py: a script's own folder is on sys.path


def start(model: str | None, media: Path, max_num_seqs: int) -> tuple[subprocess.Popen, str]:
    args = ["--dtype", "float32", "--max-num-seqs", str(max_num_seqs), "--allowed-local-media-path", str(media),
            "--served-model-name", "bench", *(["--model", model] if model else [])]
    return start_server(args, subprocess.DEVNULL, timeout_s=600)


async def run_level(url: str, video_url: str, concurrency: int, requests: int, max_tokens: int,
                    vreason: bool) -> tuple[int, float]:
    body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0, "vreason": vreason,
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": video_url}},
                {"type": "text", "text": "Describe the motion in this video step by step."}]}]}
    sem = asyncio.Semaphore(concurrency)
    tokens = 0
    async with httpx.AsyncClient(timeout=600) as client:
        async def one():
            nonlocal tokens
            async with sem:
                r = await client.post(f"{url}/v1/chat/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return tokens, time.perf_counter() - t0


async def main_async(args) -> None:
    from vreason.clients.synth_video import write_moving_shapes_mp4

    media = Path(tempfile.mkdtemp(prefix="vreason-bench-"))
    video = write_moving_shapes_mp4(media / "clip.mp4")
    proc, url = start(args.model, media, max(args.concurrency))
    try:
        await run_level(url, f"file://{video}", 2, 2, 8, True)  # warm-up both paths
        await run_level(url, f"file://{video}", 2, 2, 8, False)
        print(f"| concurrency | requests | off tok/s | on tok/s | on/off |\n|---|---|---|---|---|")
        for c in args.concurrency:
            n = max(args.min_requests, 2 * c)
            rates = {}
            modes = [m == "on" for m in args.modes]
            for mode in modes * args.rounds:  # interleaved: drift hits both modes alike
                tok, sec = await run_level(url, f"file://{video}", c, n, args.max_tokens, mode)
                rates.setdefault(mode, []).append(tok / sec)
                print(f"  round: concurrency {c}, V-Reason {'on' if mode else 'off'}: {tok / sec:.1f} tok/s",
                      file=sys.stderr, flush=True)
            off, on = (sum(rates[m]) / len(rates[m]) if m in rates else float("nan") for m in (False, True))
            print(f"| {c} | {n} x{args.rounds} | {off:.1f} | {on:.1f} | {on / off:.2f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--modes", nargs="+", choices=["off", "on"], default=["off", "on"],
                   help="V-Reason modes to time, interleaved in this order (off alone: plain serving)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each mode per concurrency level")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
