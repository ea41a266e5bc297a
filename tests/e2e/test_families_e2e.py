"""The other model families end to end: plain requests equal stock vLLM, V-Reason traces equal
the eager oracle (Qwen2.5-VL, the reference family, has its own files: test_eager_reference.py,
test_server_e2e.py).

Each family's tiny random checkpoint (`vreason make-demo-model --architecture ...`) is served by
a real `vreason serve`; stock vLLM runs offline on the same frames (stock_generate.py); the eager
HF oracle builds the family's own M-RoPE positions (tests/reference/eager_vreason.py) on the long
clip (16 frames, 8 temporal patches: one video run for Qwen2-VL, 8 runs after their timestamps
for Qwen3-VL).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from tests.helpers.clips import LONG_CLIP
from tests.helpers.messages import QUESTION, video_messages
from tests.helpers.oracle import MAX_TOKENS, oracle_inputs
from tests.helpers.servers import clean_env, start_server, stop_server
from tests.reference.eager_vreason import eager_generate
from vreason.server.controller import VReasonParams

pytestmark = pytest.mark.slow

TOP = 5
# fp32 on both sides; the same bound as the oracle-vs-stock check (test_oracle_positions.py):
# the two stacks sum in different orders, seen up to ~3.5e-5, far below any position error.
LOGPROB_TOL = 1e-3
KNOBS = [{"update_every": 1, "steps": 2, "lr": 0.1},
         {"update_every": 3, "steps": 1, "lr": 0.1, "apply": "next", "norm_restore": "none"}]


FAMILIES = {"qwen2_vl": ("qwen2_vl_model", "VReasonQwen2_VL", 1),
            "qwen3_vl": ("qwen3_vl_model", "VReasonQwen3_VL", 8)}  # fixture, adapter, video runs


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(name, checkpoint, adapter, video runs in the long clip's prompt)."""
    fixture, adapter, runs = FAMILIES[request.param]
    return request.param, request.getfixturevalue(fixture), adapter, runs


@pytest.fixture(scope="module")
def family_server(family, media_dir, tmp_path_factory):
    name, model, *_ = family
    s = start_server(model, media_dir, tmp_path_factory.mktemp(name) / "server.log", name=name)
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def family_oracle(family, media_dir):
    return oracle_inputs(family[1], media_dir)


def _chat(server, url: str, vreason=None, **kw) -> dict:
    body = {"model": server.model, "messages": video_messages(url), "max_tokens": MAX_TOKENS, "temperature": 0,
            **kw, **({"vreason": vreason} if vreason is not None else {})}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_served_with_its_adapter_and_vreason_available(family, family_server):
    adapter = family[2]
    stats = httpx.get(f"{family_server.url}/vreason/stats", timeout=30).json()
    assert stats["available"] is True and stats["unavailable"] == [] and stats["adapter"] == adapter
    (model,) = httpx.get(f"{family_server.url}/v1/models", timeout=30).json()["data"]
    assert model["vreason"] == {"available": True, "adapter": adapter}


def test_plain_greedy_tokens_and_logprobs_equal_stock_vllm(family, family_server, media_dir):
    video, model_dir = media_dir / LONG_CLIP, family[1]
    out = _chat(family_server, f"file://{video}", logprobs=True, top_logprobs=TOP, return_token_ids=True)
    mine = out["choices"][0]["logprobs"]["content"]
    script = Path(__file__).with_name("stock_generate.py")
    run = subprocess.run([sys.executable, str(script), str(model_dir), str(video), QUESTION, str(MAX_TOKENS),
                          "--logprobs", str(TOP)], capture_output=True, text=True, timeout=600, env=clean_env())
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, run.stdout[-2000:] + run.stderr[-4000:]
    stock = json.loads(lines[-1][7:])
    assert out["choices"][0]["token_ids"] == stock["token_ids"]
    # Offline vLLM decodes the whole output at once and ends a character cut by max_tokens with
    # U+FFFD; the served (incremental) detokenizer, ours as stock's API server, holds the
    # incomplete bytes back. Same tokens, so the texts differ by that one character at most.
    assert out["choices"][0]["message"]["content"] == stock["text"].removesuffix("\ufffd")
    assert out["usage"]["completion_tokens"] == stock["num_tokens"] == len(mine)
    for t, (row, top) in enumerate(zip(mine, stock["logprobs"]), start=1):
        theirs = sorted((v for v in top.values() if math.isfinite(v)), reverse=True)
        assert row["logprob"] == pytest.approx(theirs[0], abs=LOGPROB_TOL), t  # greedy: the top one
        assert sorted((x["logprob"] for x in row["top_logprobs"]), reverse=True) == pytest.approx(
            theirs[:TOP], abs=LOGPROB_TOL), t


@pytest.mark.parametrize("knobs", KNOBS, ids=["every1-steps2-now", "every3-next-nonorm"])
def test_vreason_trace_and_tokens_equal_the_eager_oracle(family, family_server, family_oracle, knobs):
    proc, model, inputs, url = family_oracle
    out = _chat(family_server, url, {**knobs, "trace": True}, return_token_ids=True)
    tr = out["vreason"]
    tokens, rows = eager_generate(model, inputs, model.config.video_token_id, model.config.text_config.eos_token_id,
                                  MAX_TOKENS, VReasonParams.from_dict(knobs))
    prompt = torch.tensor(out["prompt_token_ids"])
    assert torch.equal(prompt, inputs["input_ids"][0])  # the server's prompt is the oracle's (timestamps too)
    is_video = (prompt == model.config.video_token_id).int()
    runs = int((is_video[1:] > is_video[:-1]).sum()) + int(is_video[0])
    assert runs == family[3]  # Qwen3-VL: one run per temporal patch, after its timestamp text
    assert tr["controlled_positions"] == int(is_video.sum()) > 0  # exactly the prompt's video tokens
    steps = tr["steps"]
    assert len(steps) == len(rows) == out["usage"]["completion_tokens"] >= 16
    assert out["choices"][0]["token_ids"] == tokens
    # a character cut by max_tokens: the served text holds its bytes back (see the parity test)
    assert out["choices"][0]["message"]["content"] == proc.tokenizer.decode(
        tokens, skip_special_tokens=True).removesuffix("\ufffd")
    for t, (mine, ref) in enumerate(zip(steps, rows), start=1):
        assert mine["entropy"] == pytest.approx(ref["entropy"], abs=1e-3), t
        assert mine["ema"] == pytest.approx(ref["ema"], abs=1e-3), t
        assert (mine["alpha"], mine["updated"]) == (ref["alpha"], ref["updated"]), t
    assert tr["updates"] == sum(r["updated"] for r in rows) > 0
    worst = max(abs(mine["entropy"] - ref["entropy"]) for mine, ref in zip(steps, rows))
    print(f"{family[0]} {knobs}: max |entropy - oracle| over {len(rows)} steps: {worst:.3g}")


# Qwen3-VL prompts carry a `<t seconds>` text per temporal patch, from the frames' times: the
# same request must give stock vLLM's prompt, so the video runs V-Reason controls are the frames
# the user sent. Requests: the mp4 at the server's default fps; the mp4 with num_frames equal to
# the clip's frames at 2 fps (stock samples the loaded frames again at 2 fps, so only such a
# count can agree); a frame list with its fps stated (vLLM's frame-list URL carries no timing).
PROMPT_REQUESTS = {"mp4": ("mp4", {}),
                   "mp4_num_frames_16": ("mp4", {"media_io_kwargs": {"video": {"num_frames": 16}}}),
                   "frame_list_fps2": ("frames", {"media_io_kwargs": {"video": {"fps": 2.0}}})}


def _frame_list_url(n: int) -> str:
    import base64

    import cv2

    from vreason.clients.synth_video import render_moving_shapes

    jpgs = [base64.b64encode(cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()
            for f in render_moving_shapes(num_frames=n)]
    return "data:video/jpeg;base64," + ",".join(jpgs)


def _prompts(url: str, model: str, media_dir: Path) -> dict:
    urls = {"mp4": f"file://{media_dir / LONG_CLIP}", "frames": _frame_list_url(8)}
    out = {}
    for key, (video, extra) in PROMPT_REQUESTS.items():
        body = {"model": model, "messages": video_messages(urls[video]), "max_tokens": 1, "temperature": 0,
                "return_token_ids": True, **extra}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, (key, r.text)
        out[key] = r.json()["prompt_token_ids"]
    return out


def test_qwen3_vl_timestamped_prompts_equal_stock_vllm(family, family_server, media_dir, tmp_path_factory):
    """mp4, num_frames and frame-list requests: the server's prompt tokens, timestamps included,
    equal stock vLLM's OpenAI server's for the same request; with a num_frames stock does not
    honour (it samples again at 2 fps), the server's prompt is the HF processor's for the frames
    it sampled, at their own times."""
    if family[0] != "qwen3_vl":
        pytest.skip("only Qwen3-VL prompts carry timestamps")
    from tests.helpers.servers import start_stock_server, stop_stock_server

    model_dir = family[1]
    logs = tmp_path_factory.mktemp("qwen3_stock")
    (logs / "generation_config.json").write_text("{}")
    proc, url = start_stock_server(model_dir, media_dir, logs / "stock.log", logs, '{"video": 1, "image": 0}',
                                   name=family_server.model)
    try:
        stock = _prompts(url, family_server.model, media_dir)
    finally:
        stop_stock_server(proc)
    ours = _prompts(family_server.url, family_server.model, media_dir)
    video_id = json.loads((model_dir / "config.json").read_text())["video_token_id"]
    for key in PROMPT_REQUESTS:
        assert ours[key] == stock[key], key
        runs = sum(1 for a, b in zip([None, *ours[key]], ours[key]) if b == video_id != a)
        assert runs == (4 if key.startswith("frame_list") else 8), key  # one run per 2 frames

    # num_frames=8 of the 16-frame clip: 4 runs at the mean times of the frame pairs sampled.
    from transformers import AutoProcessor

    from vreason.server.video import SamplingSpec, VideoLimits, decode_video, resolve_video_url

    body = {"model": family_server.model, "messages": video_messages(f"file://{media_dir / LONG_CLIP}"),
            "max_tokens": 1, "temperature": 0, "return_token_ids": True,
            "media_io_kwargs": {"video": {"num_frames": 8}}}
    r = httpx.post(f"{family_server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    limits = VideoLimits()
    video = decode_video(resolve_video_url(f"file://{media_dir / LONG_CLIP}", allowed_local_media_path=str(media_dir),
                                           limits=limits), SamplingSpec(num_frames=8), limits)
    proc = AutoProcessor.from_pretrained(model_dir)
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    meta = {k: v for k, v in video.metadata.items() if k != "do_sample_frames"}
    inputs = proc(text=[text], videos=[video.frames], return_tensors="pt",
                  videos_kwargs={"do_sample_frames": False, "video_metadata": [meta]})
    assert r.json()["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    assert r.json()["videos"][0]["frames_used"] == 8
