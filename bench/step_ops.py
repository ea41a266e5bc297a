"""Ops and time per decode step of the real engine, V-Reason on vs off, by step kind.

Runs vLLM's engine in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the V-Reason CPU worker,
eager mode so every op goes through the dispatcher), puts R identical video requests in the
batch (all controlled, or none) and steps the engine by hand. Over the decode steps it counts the
torch ops dispatched (a `TorchDispatchMode` that counts, records nothing else) and times each step
without the counter. On steps are split into steps with an update and steps without one (the
worker's `aux_hidden_states` call count says which). The off rows are vLLM's own plain step.

    .venv/bin/python bench/step_ops.py --model DIR [--rows 1 8] [--steps 32] [--profile]

`--profile` prints cProfile's top functions of this project in the on steps, by step kind.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core and worker in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def build(model: str, rows: int):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    from vreason.server.engine.config import EngineConfig, engine_args

    cfg = EngineConfig(model=model, dtype="float32", max_num_seqs=max(rows), enforce_eager=True)
    args = vars(engine_args(cfg))
    fields = EngineArgs.__dataclass_fields__
    return LLMEngine.from_engine_args(EngineArgs(**{k: v for k, v in args.items() if k in fields}))


def video_prompt(model: str):
    from transformers import AutoProcessor

    from vreason.clients.synth_video import write_moving_shapes_mp4
    from vreason.server.video import SamplingSpec, VideoLimits, decode_video, resolve_video_url

    media = Path(tempfile.mkdtemp(prefix="vreason-ops-"))
    path = write_moving_shapes_mp4(media / "clip.mp4")
    limits = VideoLimits()
    src = resolve_video_url(f"file://{path}", allowed_local_media_path=str(media), limits=limits)
    dv = decode_video(src, SamplingSpec(fps=2.0), limits)
    proc = AutoProcessor.from_pretrained(model)
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the motion."}]}]
    prompt = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return {"prompt": prompt, "multi_modal_data": {"video": [(dv.frames, dv.metadata)]}}


def aux_calls(engine) -> int:
    (stats,) = engine.collective_rpc("vreason_stats")
    return stats["calls"].get("aux_hidden_states", 0)


def run(engine, prompt, rows: int, on: bool, steps: int, counting: bool, profiles: dict | None):
    """Per decode step: (kind, ops or None, seconds). Kind: "off", "on", "on+update". With
    `profiles`, each decode step is profiled and its stats added to profiles[kind]."""
    from vllm import SamplingParams

    from vreason.server.controller import VReasonParams
    from vreason.server.keys import EXTRA_ARGS_KEY, REQUEST_TAG_KEY

    tag = f"{'on' if on else 'off'}-{rows}-{counting}-{time.monotonic_ns()}"
    for r in range(rows):
        extra = {EXTRA_ARGS_KEY: VReasonParams().to_dict(), REQUEST_TAG_KEY: f"{tag}-{r}"} if on else None
        params = SamplingParams(max_tokens=steps + 4, temperature=0, ignore_eos=True, extra_args=extra)
        engine.add_request(f"{tag}-{r}", prompt, params)
    out, seen, hist = [], 0, {}
    while engine.has_unfinished_requests():
        before = aux_calls(engine) if on else 0
        counter = OpCounter() if counting else None
        t0 = time.perf_counter()
        if counter is not None:
            with counter:
                outs = engine.step()
        elif profiles is not None and seen > 0:
            one = cProfile.Profile()
            one.enable()
            outs = engine.step()
            one.disable()
        else:
            outs = engine.step()
        dt = time.perf_counter() - t0
        generated = sum(len(o.outputs[0].token_ids) for o in outs) if outs else 0
        decoding = seen > 0 and generated > 0  # past the prefill step(s)
        seen += generated
        if decoding and len(out) < steps:
            kind = "off" if not on else ("on+update" if aux_calls(engine) > before else "on")
            out.append((kind, sum(counter.ops.values()) if counter is not None else None, dt))
            if profiles is not None:
                if kind in profiles:
                    profiles[kind].add(one)
                else:
                    profiles[kind] = pstats.Stats(one)
            if counter is not None:
                hist.setdefault(kind, Counter()).update(counter.ops)
    run.hist = hist  # the last counted run's op histogram per step kind (--detail)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--detail", action="store_true", help="the most dispatched ops per step kind")
    args = p.parse_args()
    engine = build(args.model, args.rows)
    prompt = video_prompt(args.model)
    run(engine, prompt, 1, True, 4, False, None)  # warm-up both paths
    run(engine, prompt, 1, False, 4, False, None)
    print("| rows | step | ops per step | ms per step (median) | steps timed |\n|---|---|---|---|---|")
    profiles = {} if args.profile else None
    for rows in args.rows:
        ops: dict[str, list[int]] = {}
        secs: dict[str, list[float]] = {}
        for on in (False, True):
            for kind, n, _ in run(engine, prompt, rows, on, args.steps, True, None):
                ops.setdefault(kind, []).append(n)
            if args.detail:
                for kind, h in run.hist.items():
                    steps = len([n for n in ops[kind]])
                    print(f"{rows} rows, {kind}: " + ", ".join(f"{k} {v / steps:.1f}" for k, v in h.most_common(25)))
            for _ in range(2):  # timed without the counter, twice interleaved
                for kind, _, dt in run(engine, prompt, rows, on, args.steps, False, profiles if on else None):
                    secs.setdefault(kind, []).append(dt)
        for kind in ("off", "on", "on+update"):
            if kind in ops:
                print(f"| {rows} | {kind} | {statistics.median(ops[kind]):.0f} | "
                      f"{1000 * statistics.median(secs.get(kind, [float('nan')])):.2f} | {len(secs.get(kind, []))} |",
                      flush=True)
    for kind, stats in (profiles or {}).items():  # our code only, per step of that kind
        print(f"\n## {kind} steps (last row count), this project's functions, cumulative ms per step")
        stats.stream = sys.stdout
        stats.sort_stats("cumulative").print_stats(r"/(server|kernels)/", 30)


if __name__ == "__main__":
    main()
