"""The eager oracle's M-RoPE positions: each family's original rule, checked against stock vLLM.

transformers 5.19 starts the text after a video at `max(h, w) // merge` past the video's start;
the original rule (and vLLM) starts it at the video's maximum position + 1. They agree for a
video of 1 or 2 temporal patches and disagree by whole nats from 3 on. The oracle builds the
positions itself (tests/reference/eager_vreason.py), and here its logits must equal stock vLLM's
for clips of 3, 4 and 8 temporal patches.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.servers import clean_env
from tests.reference.eager_vreason import eager_generate, mrope_positions
from vreason.clients.synth_video import write_moving_shapes_mp4
from vreason.server.video import SamplingSpec, VideoLimits, decode_video, resolve_video_url

QUESTION = "What moves in this video?"
STEPS = 6
TOP = 20
# fp32 on both sides. Measured on the demo model (top-20 logprobs, 6 steps): 1.9e-5 to 3.5e-5
# with the original rule (the two stacks sum in different orders over logits of large
# magnitude), 2.7 and 5.6 nats with transformers 5.19's positions at 3 and 4 patches. 1e-3
# leaves other CPUs' summation orders room and stays far below a position error.
LOGPROB_TOL = 1e-3


def test_positions_follow_the_original_rule():
    """Text, a video of grid (3, 4, 4) (merge 2: 3 x 2 x 2 tokens) at 0.5 s/patch and 2 tokens/s,
    then text: temporal ids 0, 1, 2 (floor(k * 0.5 * 2)) plus the start; text resumes at max + 1."""
    v = 9
    ids = torch.tensor([1, 2] + [v] * 12 + [3, 4])
    pos = mrope_positions(ids, v, torch.tensor([[3, 4, 4]]), [0.5], 2, 2)
    assert pos[:, :2].tolist() == [[0, 1]] * 3
    vid = pos[:, 2:14]
    assert vid[0].tolist() == [2] * 4 + [3] * 4 + [4] * 4
    assert vid[1].tolist() == [2, 2, 3, 3] * 3 and vid[2].tolist() == [2, 3, 2, 3] * 3
    # max vision position is 4 -> text at 5, 6 (transformers 5.19 would give 4, 5)
    assert pos[:, 14:].tolist() == [[5, 6]] * 3
    with pytest.raises(ValueError):
        mrope_positions(ids[:10], v, torch.tensor([[3, 4, 4]]), [0.5], 2, 2)


def test_qwen2_vl_positions_count_temporal_patches():
    """Qwen2-VL (no seconds per patch): the temporal index is the patch number; text resumes at max + 1."""
    v = 9
    ids = torch.tensor([1] + [v] * 12 + [3])
    pos = mrope_positions(ids, v, torch.tensor([[3, 4, 4]]), None, 2, None)
    assert pos[0, 1:13].tolist() == [1] * 4 + [2] * 4 + [3] * 4
    assert pos[:, 13].tolist() == [4, 4, 4]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_oracle_logits_equal_stock_vllm_for_long_clips(request, family, tmp_path):
    from transformers import AutoProcessor

    from tests.helpers.oracle import hf_model

    demo_model = request.getfixturevalue({"qwen2_5_vl": "demo_model", "qwen2_vl": "qwen2_vl_model",
                                          "qwen3_vl": "qwen3_vl_model"}[family])

    clips = {}
    for frames in (6, 8, 16):  # 2 fps -> 3, 4 and 8 temporal patches
        clips[frames] = write_moving_shapes_mp4(tmp_path / f"clip{frames}.mp4", num_frames=frames, fps=2.0)
    script = Path(__file__).with_name("stock_generate.py")
    out = subprocess.run([sys.executable, str(script), str(demo_model), ",".join(map(str, clips.values())),
                          QUESTION, str(STEPS), "--logprobs", str(TOP)],
                         capture_output=True, text=True, timeout=600, env=clean_env())
    results = [json.loads(ln[7:]) for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(results) == len(clips), out.stdout[-2000:] + out.stderr[-4000:]

    proc = AutoProcessor.from_pretrained(demo_model)
    model = hf_model(demo_model)
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    limits = VideoLimits()
    for (frames, path), stock in zip(clips.items(), results):
        src = resolve_video_url(f"file://{path}", allowed_local_media_path=str(tmp_path), limits=limits)
        video = decode_video(src, SamplingSpec(fps=2.0), limits)
        meta = {k: v for k, v in video.metadata.items() if k != "do_sample_frames"}
        inputs = proc(text=[text], videos=[video.frames], return_tensors="pt",
                      videos_kwargs={"do_sample_frames": False, "video_metadata": [meta]})
        assert int(inputs["video_grid_thw"][0, 0]) == frames // 2
        tokens, rows = eager_generate(model, inputs, model.config.video_token_id,
                                      model.config.text_config.eos_token_id, STEPS, None, keep_logits=True)
        assert tokens == stock["token_ids"], frames
        worst = 0.0
        for t, (row, top) in enumerate(zip(rows, stock["logprobs"]), start=1):
            logp = torch.log_softmax(row["logits"].double(), -1)
            worst = max(worst, *(abs(logp[int(k)].item() - v) for k, v in top.items() if math.isfinite(v)))
            assert worst < LOGPROB_TOL, f"{frames} frames, step {t}: |dlogprob| {worst:.3g}"
        print(f"{frames} frames ({frames // 2} temporal patches): max |dlogprob| over the top {TOP}, "
              f"{STEPS} steps: {worst:.3g}")
