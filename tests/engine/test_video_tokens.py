"""The front end's admission count of video tokens equals what each family's HF processor (the one
vLLM runs) puts in the prompt, for the server's own frame sampling of short and long clips."""

from __future__ import annotations

import pytest

from tests.helpers.clips import LONG_CLIP, SHORT_CLIP
from vreason.server.engine.controlled import video_tokens
from vreason.server.video import SamplingSpec, VideoLimits, decode_video, resolve_video_url


@pytest.mark.parametrize("fixture", ["demo_model", "qwen2_vl_model", "qwen3_vl_model"])
def test_admission_count_equals_the_processors_placeholders(request, fixture, media_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(request.getfixturevalue(fixture))
    video_id = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    limits = VideoLimits()
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}]
    text = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    for clip in (SHORT_CLIP, LONG_CLIP):
        src = resolve_video_url(f"file://{media_dir / clip}", allowed_local_media_path=str(media_dir), limits=limits)
        video = decode_video(src, SamplingSpec(), limits)
        meta = {k: v for k, v in video.metadata.items() if k != "do_sample_frames"}
        inputs = proc(text=[text], videos=[video.frames], return_tensors="pt",
                      videos_kwargs={"do_sample_frames": False, "video_metadata": [meta]})
        placed = int((inputs["input_ids"][0] == video_id).sum())
        assert video_tokens(proc.video_processor, video.frames) == placed > 0, (fixture, clip)
