"""Request shapes of the evaluation harnesses, replayed against the real server.

lmms-eval's OpenAI backend sends a video as N base64 JPEG `image_url` parts (its default) or as
a `video_url` plus `media_io_kwargs.video.num_frames` (`pass_video_url=True`), optionally with
`chat_template_kwargs`; VLMEvalKit's OpenAI API backend sends `image_url` parts with `detail`
and a system prompt. vLLM's own frame-list URL `data:video/jpeg;base64,f1,f2,...` is accepted too.
"""

from __future__ import annotations

import base64

import cv2
import httpx
import pytest

from vreason.clients.synth_video import render_moving_shapes

pytestmark = pytest.mark.slow
QUESTION = "Which way does the red square move? Answer with A or B."


@pytest.fixture(scope="module")
def jpeg_frames() -> list[str]:
    frames = render_moving_shapes(num_frames=8)
    return [base64.b64encode(cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()
            for f in frames]


def post(server, body):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": server.model, "temperature": 0,
                                                              "max_tokens": 12, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_lmms_eval_image_frames_equal_vllm_frame_list(server, jpeg_frames):
    as_images = post(server, {"messages": [{"role": "user", "content": [
        *({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b}"}} for b in jpeg_frames),
        {"type": "text", "text": QUESTION}]}]})
    as_list = post(server, {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(jpeg_frames)}},
        {"type": "text", "text": QUESTION}]}]})
    # 8 frames of 112x112 -> 4 temporal groups x 16 merged patches = 64 video tokens
    assert as_images["usage"]["prompt_tokens"] > 64
    assert as_images["choices"][0]["message"]["content"] == as_list["choices"][0]["message"]["content"]
    assert as_images["usage"] == as_list["usage"]


def test_lmms_eval_video_url_with_num_frames(server, media_dir):
    def ask(n):
        return post(server, {
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"file://{media_dir / 'shapes.mp4'}"}},
                {"type": "text", "text": QUESTION}]}],
            "media_io_kwargs": {"video": {"num_frames": n}},
            "chat_template_kwargs": {"enable_thinking": False}})

    few, more = ask(4), ask(8)
    assert more["usage"]["prompt_tokens"] - few["usage"]["prompt_tokens"] == 32  # 2 more groups x 16


def test_vlmevalkit_image_parts_with_detail_and_system_prompt(server, jpeg_frames):
    out = post(server, {"messages": [
        {"role": "system", "content": "You are a careful video analyst."},
        {"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            *({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b}", "detail": "low"}}
              for b in jpeg_frames[:4])]}],
        "n": 1, "vreason": {"enabled": True}})
    assert out["choices"][0]["finish_reason"] in ("length", "stop")
    assert out["usage"]["prompt_tokens"] > 32
