"""V-Reason Lite against no pruning and against vLLM's own EVS at the same rate, one server per mode,
the same 32-frame video and question, in one run.

Per mode: video tokens kept (usage.videos), prompt tokens, KV bytes per request (prompt tokens x
the model's KV bytes per token: layers x 2 x KV heads x head dim x 4 B, fp32), KV cache use
during decode (vLLM's `vllm:kv_cache_usage_perc` gauge read while one request decodes), prefill
(the whole time of a 1-token request; median of --repeats; prefix caching off), decode
ms/token (streamed, ignore_eos, --decode-tokens tokens; median) plain and with V-Reason on.

The demo models cannot see, so instead of accuracy: agreement with the unpruned model along the
unpruned greedy answer (32 tokens, ignore_eos) (teacher-forced with an assistant prefill of that answer and
prompt_logprobs 20): the share of the first 32 answer positions whose top token agrees, and the
mean KL(unpruned || pruned) over the unpruned top-20 tokens renormalised (a pruned top-20 that
misses a token gives it the pruned 20th logprob: an upper bound on its probability).

    .venv/bin/python bench/lite.py [--model DIR] [--rate 0.5] [--frames 32] [--max-pixels 50176]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from serving import start_server  # bench/serving.py: a script's own folder is on sys.path

QUESTION = "Describe the motion in this video step by step."
MODES = {"none": [], "lite": ["--vreason-lite-rate"], "evs": ["--video-pruning-rate"]}


def kv_bytes_per_token(model: str) -> int:
    cfg = json.loads((Path(model) / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * head_dim * 4


def body(video: str, frames: int, **extra) -> dict:
    return {"model": "bench", "temperature": 0, "mm_processor_kwargs": {"num_frames": frames},
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                      {"type": "text", "text": QUESTION}]}], **extra}


def stream_times(url: str, payload: dict) -> list[float]:
    """Arrival times (s after sending) of the streamed chunks that carry tokens (by their token ids:
    a random model's tokens may have no text)."""
    t0, times = time.perf_counter(), []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**payload, "stream": True, "return_token_ids": True},
                      timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("token_ids"):
                    times.append(time.perf_counter() - t0)
    return times


def kv_usage_while_decoding(url: str, payload: dict) -> float:
    """The KV cache use gauge, read once the stream has passed its 8th token."""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**payload, "stream": True}, timeout=600) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                seen += 1
                if seen == 8:
                    metrics = httpx.get(f"{url}/metrics", timeout=30).text
                    return float(next(x for x in metrics.splitlines()
                                       if x.startswith("vllm:kv_cache_usage_perc")).split()[-1])
    return float("nan")


def agreement(ref: list[dict], mine: list[dict]) -> tuple[float, float]:
    """(top-1 agreement, mean truncated KL) over aligned prompt_logprobs positions."""
    agree, kls = 0, []
    for p, q in zip(ref, mine):
        pt = {int(k): v for k, v in p.items()}
        qt = {int(k): v for k, v in q.items()}
        top = lambda d: min(d, key=lambda k: d[k]["rank"] or 10**9)  # noqa: E731
        agree += top(pt) == top(qt)
        floor = min(v["logprob"] for v in qt.values())
        lp = {k: v["logprob"] for k, v in pt.items()}
        z = math.log(sum(math.exp(x) for x in lp.values()))
        lq = {k: qt[k]["logprob"] if k in qt else floor for k in lp}
        zq = math.log(sum(math.exp(x) for x in lq.values()))
        kls.append(sum(math.exp(lp[k] - z) * ((lp[k] - z) - (lq[k] - zq)) for k in lp))
    return agree / len(ref), statistics.mean(kls)


def measure(url: str, video: str, args) -> dict:
    out: dict = {}
    r = httpx.post(f"{url}/v1/chat/completions", json=body(video, args.frames, max_tokens=1), timeout=600)
    r.raise_for_status()
    j = r.json()
    v = j.get("videos", [{}])[0]
    out["prompt_tokens"] = j["usage"]["prompt_tokens"]
    out["video_kept"] = v.get("tokens_kept")
    out["video_pruned"] = v.get("tokens_pruned", 0)
    ttft = []
    for _ in range(args.repeats):  # a 1-token request: prefill, one sample, the answer
        t0 = time.perf_counter()
        httpx.post(f"{url}/v1/chat/completions", json=body(video, args.frames, max_tokens=1),
                   timeout=600).raise_for_status()
        ttft.append(time.perf_counter() - t0)
    out["prefill_s"] = statistics.median(ttft)
    dec = body(video, args.frames, max_tokens=args.decode_tokens, ignore_eos=True)
    for mode, extra in (("plain", {}), ("vreason", {"vreason": True})):
        ms = []
        for _ in range(args.repeats):
            t = stream_times(url, {**dec, **extra})
            ms.append(1000 * (t[-1] - t[0]) / (args.decode_tokens - 1))  # ignore_eos: all of them came
        out[f"decode_ms_{mode}"] = statistics.median(ms)
    out["kv_usage"] = kv_usage_while_decoding(url, dec)
    g = httpx.post(f"{url}/v1/chat/completions", json=body(video, args.frames, max_tokens=32, ignore_eos=True),
                   timeout=600).json()
    out["answer"], out["answer_tokens"] = g["choices"][0]["message"]["content"], g["usage"]["completion_tokens"]
    return out


def forced_logprobs(url: str, video: str, args, answer: str) -> list[dict]:
    """prompt_logprobs (top 20) of the prompt ending with `answer` as an assistant prefill."""
    forced = body(video, args.frames, max_tokens=1, prompt_logprobs=20, continue_final_message=True,
                  add_generation_prompt=False)
    forced["messages"].append({"role": "assistant", "content": answer})
    r = httpx.post(f"{url}/v1/chat/completions", json=forced, timeout=600)
    r.raise_for_status()
    return r.json()["prompt_logprobs"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the SmolLM2 demo model (built once)")
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=48)
    p.add_argument("--max-pixels", type=int, default=None, help="the servers' --video-max-pixels (default: theirs)")
    args = p.parse_args()
    from vreason.clients.synth_video import write_moving_shapes_mp4
    from vreason.server.checkpoints.smollm2 import ensure_smollm2_model
    from vreason.server.cli import default_cache_dir

    model = args.model or str(ensure_smollm2_model(default_cache_dir(), progress=print))
    media = Path(tempfile.mkdtemp(prefix="vreason-lite-bench-"))
    video = f"file://{write_moving_shapes_mp4(media / 'clip.mp4', num_frames=args.frames, fps=4.0, size=(224, 224))}"
    results, answer = {}, None
    for mode, flags in MODES.items():  # "none" first: its greedy answer is what the others are forced along
        extra = [*flags, str(args.rate)] if flags else []
        proc, url = start_server(["--model", model, "--served-model-name", "bench", "--dtype", "float32",
                                  "--no-prefix-caching", "--allowed-local-media-path", str(media), *extra,
                                  *(["--video-max-pixels", str(args.max_pixels)] if args.max_pixels else [])],
                                 subprocess.DEVNULL, timeout_s=900)
        try:
            r = results[mode] = measure(url, video, args)
            if answer is None:
                answer, k = r["answer"], min(32, r["answer_tokens"])
            r["forced"] = forced_logprobs(url, video, args, answer)[-k:]
        finally:
            proc.terminate()
            proc.wait(60)
        print(f"  {mode}: done", flush=True)
    per_token = kv_bytes_per_token(model)
    print(f"\nmodel {model}, {args.frames} frames, rate {args.rate}, max pixels {args.max_pixels or 'default'}, "
          f"{k} forced answer positions\n")
    print("| mode | video tokens kept / pruned | prompt tokens | KV MiB per request | KV cache use in decode | "
          "prefill s | decode ms/token plain | decode ms/token V-Reason | top-1 agreement | mean KL (top-20) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        agree, kl = agreement(results["none"]["forced"], r["forced"])
        kept = r["video_kept"] if r["video_kept"] is not None else "all"
        print(f"| {mode} | {kept} / {r['video_pruned']} | {r['prompt_tokens']} | "
              f"{r['prompt_tokens'] * per_token / 2**20:.2f} | {100 * r['kv_usage']:.2f}% | {r['prefill_s']:.3f} | "
              f"{r['decode_ms_plain']:.1f} | {r['decode_ms_vreason']:.1f} | {agree:.2f} | {kl:.4f} |", flush=True)


if __name__ == "__main__":
    main()
