"""bf16 weights on CPU: the runner keeps transposed copies of layer L's tail for the input
gradient (the default, `--vreason-transposed-tail on`), and controlled requests update through them;
the KV layout this CPU packs bf16 in (amx with AMX tiles, else vec) is proven at start-up; and the
trace follows the eager oracle within bf16 bounds.

The numerics of the transposed path against float64 autograd are in
tests/controller/test_controller.py; this test covers the runner's seam: the copies are built at
start-up, sized as the formula says, reported, and used by real update steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from tests.helpers.servers import start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bf16_server(demo_model, media_dir, tmp_path_factory):
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("bf16") / "server.log", "--dtype", "bfloat16",
                     "--enforce-eager")
    yield s
    stop_server(s)


def _tail_bytes(model_dir: Path) -> int:
    """bf16 bytes of layer L's o_proj, gate_up, down and lm_head, from the model's config."""
    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    h, i, v = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    hq_d = text["num_attention_heads"] * (h // text["num_attention_heads"])
    return 2 * (h * hq_d + 2 * i * h + h * i + v * h)


def test_transposed_tail_is_built_reported_and_used(bf16_server, demo_model, media_dir):
    stats = bf16_server.stats()
    assert stats["available"], stats["unavailable"]
    assert stats["tail_transposed_bytes"] == _tail_bytes(Path(demo_model))
    assert "transposed copies of layer L's tail and lm_head" in bf16_server.log.read_text()
    clip = f"file://{media_dir / 'shapes.mp4'}"
    body = {"model": bf16_server.model, "temperature": 0, "max_tokens": 12, "ignore_eos": True,
            "vreason": {"trace": True, "update_every": 1},
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": clip}},
                                                      {"type": "text", "text": "What moves?"}]}]}
    r = httpx.post(f"{bf16_server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    trace = r.json()["vreason"]
    assert trace["complete"] and trace["updates"] == 12 and trace["skipped_updates"] == 0
    assert trace["controlled_positions"] > 0
    assert len(trace["steps"]) == 12
    after = bf16_server.wait_idle()
    assert after["totals"]["created"] == after["totals"]["freed"] == 1
    assert after["totals"].get("failed", 0) == 0


def test_bf16_reads_the_cache_this_cpu_packs(bf16_server):
    """bf16 on a CPU with AMX tiles packs the KV cache for ISA amx; elsewhere vec. Either way the
    layout was proven at start-up and the controlled request above (or here) ran on it."""
    layout = bf16_server.stats()["kv_layout"]
    amx = torch.cpu._is_amx_tile_supported()
    assert layout["proven"], layout
    assert (layout["isa"], layout["packing"]) == (("amx", "amx") if amx else ("vec", "strided"))
    assert "in bfloat16 (--dtype bfloat16)" in bf16_server.log.read_text()


BF16_KNOBS = [{"update_every": 1, "steps": 1, "lr": 0.1}, {"update_every": 2, "steps": 2, "lr": 0.05, "apply": "next"}]


@pytest.mark.parametrize("knobs", BF16_KNOBS, ids=["every1-now", "every2-steps2-next"])
def test_bf16_trace_follows_the_eager_reference(bf16_server, hf, knobs):
    """The bf16 server's trace against the eager oracle with its weights rounded to bf16 (fp32
    math), teacher-forced along the server's own tokens: greedy decoding of a random model meets
    near-ties where bf16 and fp32 pick different tokens (on AMX machines after 8 tokens, elsewhere
    after 16 or more), so a free-running oracle would compare different texts. vLLM computes every
    activation in bf16, so the bound is in bf16 terms (0.2 nats; seen: 0.10 on AVX-512, AMX in
    the closing note), the update schedule must be the same, and the oracle without the controller
    (same tokens) must sit further from the trace than the oracle with it."""
    from tests.helpers.messages import QUESTION, video_messages
    from tests.helpers.oracle import MAX_TOKENS
    from tests.reference.eager_vreason import eager_generate
    from vreason.server.controller import VReasonParams

    proc, model, inputs, url = hf
    body = {"model": bf16_server.model, "temperature": 0, "max_tokens": MAX_TOKENS, "return_token_ids": True,
            "messages": video_messages(url, QUESTION), "vreason": {**knobs, "trace": True}}
    r = httpx.post(f"{bf16_server.url}/v1/chat/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    steps, tokens = r.json()["vreason"]["steps"], r.json()["choices"][0]["token_ids"]
    assert len(steps) == len(tokens) >= 16
    fp32 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        args = (model, inputs, model.config.video_token_id, model.config.text_config.eos_token_id, len(tokens))
        _, ref = eager_generate(*args, VReasonParams.from_dict(knobs), forced=tokens)
        _, plain = eager_generate(*args, None, forced=tokens)
    finally:
        model.load_state_dict(fp32)
    assert len(ref) == len(plain) == len(steps)
    err = max(abs(m["entropy"] - o["entropy"]) for m, o in zip(steps, ref))
    off = max(abs(m["entropy"] - o["entropy"]) for m, o in zip(steps, plain))
    print(f"bf16 {knobs}: max |entropy - oracle| over {len(steps)} steps: {err:.3g} (oracle without the "
          f"controller: {off:.3g})")
    assert [s["updated"] for s in steps] == [o["updated"] for o in ref]
    assert err < 0.2, err
    assert off > err, (off, err)
