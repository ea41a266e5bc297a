"""Extra time of a V-Reason controlled token through the real server at 7B widths, against a 7B
plain decode's byte floor measured in the same run.

Serves the random 2-layer checkpoint with Qwen2.5-VL-7B's text widths (bench/wide_model.py), fp32,
batch 1, and streams the same video question (ignore_eos, --tokens tokens) with V-Reason off and
on (default knobs: update every 2 tokens, 1 step, apply now), interleaved for --rounds rounds.
ms/token = (last chunk - first chunk) / (tokens - 1). The floor: a 7B plain decode step moves
14.14 GB of bf16 weights; divided by this machine's copy bandwidth (a 256 MiB copy, read + write,
measured before and after the rounds) it is the fastest any plain 7B step could be here.

    .venv/bin/python bench/wide_e2e.py WIDE_MODEL_DIR [--rounds 3] [--tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

from lite import body, stream_times  # bench/lite.py
from serving import start_server
from step7b import PLAIN_WEIGHT_BYTES, bandwidth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=32)
    args = p.parse_args()
    from vreason.clients.synth_video import write_moving_shapes_mp4

    media = Path(tempfile.mkdtemp(prefix="vreason-wide-bench-"))
    video = f"file://{write_moving_shapes_mp4(media / 'clip.mp4')}"
    proc, url = start_server(["--model", args.model, "--served-model-name", "bench", "--dtype", "float32",
                              "--max-num-seqs", "1", "--allowed-local-media-path", str(media)],
                             subprocess.DEVNULL, timeout_s=1200)
    try:
        cpu = torch.device("cpu")
        bw0 = bandwidth(cpu)
        ms: dict[str, list[float]] = {"off": [], "on": []}
        req = body(video, 16, max_tokens=args.tokens, ignore_eos=True)
        stream_times(url, {**req, "vreason": True})  # warm-up: both paths once
        stream_times(url, req)
        for r in range(args.rounds):
            for mode in ("off", "on"):
                t = stream_times(url, {**req, "vreason": mode == "on"})
                ms[mode].append(1000 * (t[-1] - t[0]) / (args.tokens - 1))
                print(f"  round {r + 1} {mode}: {ms[mode][-1]:.1f} ms/token", flush=True)
        bw1 = bandwidth(cpu)
    finally:
        proc.terminate()
        proc.wait(60)
    off, on = statistics.median(ms["off"]), statistics.median(ms["on"])
    floor = 1000 * PLAIN_WEIGHT_BYTES / ((bw0 + bw1) / 2)
    print(f"\ncopy bandwidth {bw0 / 1e9:.1f} / {bw1 / 1e9:.1f} GB/s (before / after); a 7B plain decode's "
          f"floor {floor:.0f} ms\n")
    print("| rounds | off ms/token | on ms/token | extra ms per controlled token | extra / 7B plain floor |")
    print("|---|---|---|---|---|")
    print(f"| {args.rounds} | {off:.1f} | {on:.1f} | {on - off:.1f} | {100 * (on - off) / floor:.0f}% |")


if __name__ == "__main__":
    main()
