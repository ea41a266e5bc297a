"""Inputs of the eager HF-transformers oracle (tests/reference/eager_vreason.py) for the long clip."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.clips import LONG_CLIP
from tests.helpers.messages import QUESTION
from vreason.server.video import SamplingSpec, VideoLimits, decode_video, resolve_video_url

MAX_TOKENS = 32  # tokens generated in the oracle comparisons


def hf_model(model_dir: Path):
    """The checkpoint's HF transformers model (its config's architecture), fp32, eval."""
    import transformers
    from transformers import AutoConfig

    (arch,) = AutoConfig.from_pretrained(model_dir).architectures
    return getattr(transformers, arch).from_pretrained(model_dir, dtype=torch.float32).eval()


def oracle_inputs(demo_model: Path, media_dir: Path, prefill: str | None = None):
    """(processor, fp32 eager model, processor inputs, file URL) for QUESTION about the long clip,
    sampled with the server's defaults. The clip samples to 8 temporal patches, where the M-RoPE
    positions after the video follow the family's original rule (see the reference's notes).
    With `prefill`, the prompt ends with that assistant text, continued (continue_final_message)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(demo_model)
    model = hf_model(demo_model)
    url = f"file://{media_dir / LONG_CLIP}"
    limits = VideoLimits()  # the server's defaults
    video = decode_video(resolve_video_url(url, allowed_local_media_path=str(media_dir), limits=limits),
                         SamplingSpec(), limits)
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    if prefill is None:
        text = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    else:
        chat.append({"role": "assistant", "content": prefill})
        text = proc.apply_chat_template(chat, continue_final_message=True, tokenize=False)
    meta = {k: v for k, v in video.metadata.items() if k != "do_sample_frames"}
    inputs = proc(text=[text], videos=[video.frames], return_tensors="pt",
                  videos_kwargs={"do_sample_frames": False, "video_metadata": [meta]})
    assert int(inputs["video_grid_thw"][0, 0]) >= 4  # the case transformers 5.19 gets wrong
    return proc, model, inputs, url
