"""bf16 weights on CPU: the runner keeps transposed copies of layer L's tail for the input
gradient (the default, `--vreason-transposed-tail on`), and controlled requests update through them.

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
