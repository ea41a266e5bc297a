"""Qwen2-VL end to end: plain requests equal stock vLLM, V-Reason traces equal the eager oracle.

The tiny random Qwen2-VL checkpoint (`vreason make-demo-model --architecture qwen2_vl`) is
served by a real `vreason serve`; stock vLLM runs offline on the same frames
(stock_generate.py); the eager HF oracle builds Qwen2-VL's own M-RoPE positions (temporal index
= patch number; tests/reference/eager_vreason.py) on the long clip (8 temporal patches).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

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


@pytest.fixture(scope="module")
def qwen2_vl_server(qwen2_vl_model, media_dir, tmp_path_factory):
    s = start_server(qwen2_vl_model, media_dir, tmp_path_factory.mktemp("qwen2vl") / "server.log",
                     name="qwen2-vl")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def hf2(qwen2_vl_model, media_dir):
    return oracle_inputs(qwen2_vl_model, media_dir)


def _chat(server, url: str, vreason=None, **kw) -> dict:
    body = {"model": server.model, "messages": video_messages(url), "max_tokens": MAX_TOKENS, "temperature": 0,
            **kw, **({"vreason": vreason} if vreason is not None else {})}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_served_as_qwen2_vl_with_vreason_available(qwen2_vl_server):
    stats = httpx.get(f"{qwen2_vl_server.url}/vreason/stats", timeout=30).json()
    assert stats["available"] is True and stats["unavailable"] == [] and stats["adapter"] == "VReasonQwen2_VL"
    (model,) = httpx.get(f"{qwen2_vl_server.url}/v1/models", timeout=30).json()["data"]
    assert model["vreason"] == {"available": True, "adapter": "VReasonQwen2_VL"}


def test_plain_greedy_tokens_and_logprobs_equal_stock_vllm(qwen2_vl_server, qwen2_vl_model, media_dir):
    video = media_dir / LONG_CLIP
    out = _chat(qwen2_vl_server, f"file://{video}", logprobs=True, top_logprobs=TOP, return_token_ids=True)
    mine = out["choices"][0]["logprobs"]["content"]
    script = Path(__file__).with_name("stock_generate.py")
    run = subprocess.run([sys.executable, str(script), str(qwen2_vl_model), str(video), QUESTION, str(MAX_TOKENS),
                          "--logprobs", str(TOP)], capture_output=True, text=True, timeout=600, env=clean_env())
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, run.stdout[-2000:] + run.stderr[-4000:]
    stock = json.loads(lines[-1][7:])
    assert out["choices"][0]["message"]["content"] == stock["text"]
    assert out["choices"][0]["token_ids"] == stock["token_ids"]
    assert out["usage"]["completion_tokens"] == stock["num_tokens"] == len(mine)
    for t, (row, top) in enumerate(zip(mine, stock["logprobs"]), start=1):
        theirs = sorted((v for v in top.values() if math.isfinite(v)), reverse=True)
        assert row["logprob"] == pytest.approx(theirs[0], abs=LOGPROB_TOL), t  # greedy: the top one
        assert sorted((x["logprob"] for x in row["top_logprobs"]), reverse=True) == pytest.approx(
            theirs[:TOP], abs=LOGPROB_TOL), t


@pytest.mark.parametrize("knobs", KNOBS, ids=["every1-steps2-now", "every3-next-nonorm"])
def test_vreason_trace_and_tokens_equal_the_eager_oracle(qwen2_vl_server, hf2, knobs):
    proc, model, inputs, url = hf2
    out = _chat(qwen2_vl_server, url, {**knobs, "trace": True})
    tr = out["vreason"]
    tokens, rows = eager_generate(model, inputs, model.config.video_token_id, model.config.text_config.eos_token_id,
                                  MAX_TOKENS, VReasonParams.from_dict(knobs))
    video_tokens = int((inputs["input_ids"][0] == model.config.video_token_id).sum())
    assert tr["controlled_positions"] == video_tokens > 0  # exactly the prompt's video tokens
    steps = tr["steps"]
    assert len(steps) == len(rows) == out["usage"]["completion_tokens"] >= 16
    assert out["choices"][0]["message"]["content"] == proc.tokenizer.decode(tokens, skip_special_tokens=True)
    for t, (mine, ref) in enumerate(zip(steps, rows), start=1):
        assert mine["entropy"] == pytest.approx(ref["entropy"], abs=1e-3), t
        assert mine["ema"] == pytest.approx(ref["ema"], abs=1e-3), t
        assert (mine["alpha"], mine["updated"]) == (ref["alpha"], ref["updated"]), t
    assert tr["updates"] == sum(r["updated"] for r in rows) > 0
    worst = max(abs(mine["entropy"] - ref["entropy"]) for mine, ref in zip(steps, rows))
    print(f"Qwen2-VL {knobs}: max |entropy - oracle| over {len(rows)} steps: {worst:.3g}")
