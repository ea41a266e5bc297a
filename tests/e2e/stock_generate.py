"""Run stock vLLM offline (our plugin disabled) on the same prompt and frames as the server.

Usage: python stock_generate.py MODEL_DIR VIDEO_PATH QUESTION MAX_TOKENS  -> prints JSON
{"text", "num_tokens"}. Frames come from the server's own decoder with the server's defaults.
"""

import json
import os
import sys


def main() -> None:
    os.environ["VLLM_PLUGINS"] = "none"  # allow-list naming no plugin: stock model and worker
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    from vreason.server.video import SamplingSpec, VideoLimits, decode_video, resolve_video_url

    model, video, question, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    limits = VideoLimits()
    src = resolve_video_url(f"file://{video}", allowed_local_media_path=os.path.dirname(video), limits=limits)
    dv = decode_video(src, SamplingSpec(fps=2.0), limits)
    proc = AutoProcessor.from_pretrained(model)
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    llm = LLM(model=model, dtype="float32", max_model_len=4096, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"video": 1, "image": 0})
    out = llm.generate([{"prompt": prompt, "multi_modal_data": {"video": [(dv.frames, dv.metadata)]}}],
                       SamplingParams(max_tokens=max_tokens, temperature=0))[0].outputs[0]
    print("RESULT " + json.dumps({"text": out.text, "num_tokens": len(out.token_ids)}), flush=True)


if __name__ == "__main__":
    main()
