"""Run stock vLLM offline (our plugin disabled) on the same prompt and frames as the server.

Usage: python stock_generate.py MODEL_DIR VIDEO_PATH[,VIDEO_PATH...] QUESTION MAX_TOKENS [--logprobs K]
-> prints, per video in order, one line `RESULT {json}` with "text", "num_tokens", "token_ids" and, with --logprobs,
"logprobs": per generated token a {token_id: logprob} map of the top K. Frames come from the
server's own decoder with the server's defaults. Greedy, fp32.
"""

import argparse
import json
import os


def main() -> None:
    os.environ["VLLM_PLUGINS"] = "none"  # allow-list naming no plugin: stock model and worker
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("videos", help="comma-separated video paths, answered in one engine")
    ap.add_argument("question")
    ap.add_argument("max_tokens", type=int)
    ap.add_argument("--logprobs", type=int, default=None)
    args = ap.parse_args()

    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    from vreason.server.video import SamplingSpec, VideoLimits, decode_video, resolve_video_url

    limits = VideoLimits()
    videos = []
    for path in args.videos.split(","):
        src = resolve_video_url(f"file://{path}", allowed_local_media_path=os.path.dirname(path), limits=limits)
        videos.append(decode_video(src, SamplingSpec(fps=2.0), limits))
    proc = AutoProcessor.from_pretrained(args.model)
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": args.question}]}]
    prompt = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    llm = LLM(model=args.model, dtype="float32", max_model_len=4096, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"video": 1, "image": 0})
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, logprobs=args.logprobs)
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"video": [(dv.frames, dv.metadata)]}}
                         for dv in videos], params)
    for o in outs:
        out = o.outputs[0]
        result = {"text": out.text, "num_tokens": len(out.token_ids), "token_ids": list(out.token_ids)}
        if args.logprobs is not None:
            result["logprobs"] = [{str(k): v.logprob for k, v in step.items()} for step in out.logprobs]
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
