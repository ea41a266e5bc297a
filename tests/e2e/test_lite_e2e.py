"""V-Reason Lite end to end: a server started with --vreason-lite-rate 0.5 against the session's
unpruned server, the eager oracle given the kept tokens, and plain requests beside Lite ones."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest
import torch

from tests.helpers.messages import QUESTION, video_messages
from tests.helpers.oracle import MAX_TOKENS
from tests.helpers.servers import start_server, stop_server
from tests.reference.eager_vreason import eager_generate, video_embeddings
from vreason.server.controller import VReasonParams
from vreason.server.lite import kept_tokens

pytestmark = pytest.mark.slow

RATE = 0.5
KNOBS = [{"update_every": 1, "steps": 1, "lr": 0.1},
         {"update_every": 2, "steps": 2, "lr": 0.05, "apply": "next", "norm_restore": "none"}]


@pytest.fixture(scope="module")
def lite(demo_model, media_dir, tmp_path_factory):
    s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("lite") / "server.log",
                     "--vreason-lite-rate", str(RATE))
    yield s
    stop_server(s)


def _chat(server, url: str, **extra) -> dict:
    body = {"model": server.model, "messages": video_messages(url, QUESTION), "max_tokens": MAX_TOKENS,
            "temperature": 0, "return_token_ids": True, **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def _kept(hf) -> torch.Tensor:
    """The video tokens Lite keeps, by its rule on the oracle's own video embeddings; the test
    needs the choice to be clear of ties that arithmetic could flip."""
    from vreason.server.vllm_ext.lite import keep_mask  # vLLM: not at collection (tests/vllm_ext/test_lite.py)

    proc, model, inputs, _ = hf
    emb = video_embeddings(model, inputs)
    frames = int(inputs["video_grid_thw"][0, 0])
    keep = keep_mask(emb, frames, RATE)
    norms = torch.linalg.vector_norm(emb, dim=-1)
    gap = float(norms[keep].min() - norms[~keep].max())
    assert gap > 1e-4 * float(norms.max()), f"near-tie in the norm ranking ({gap}): choose another clip"
    return keep


def test_lite_prompt_keeps_half_the_video_tokens_at_their_places(server, lite, hf):
    """Half the placeholders, the text around them unchanged, usage and the worker's count agree,
    and a controlled request controls exactly the kept tokens."""
    proc, model, inputs, url = hf
    vid = model.config.video_token_id
    stats0 = lite.stats()["totals"]["lite_pruned_tokens"]
    assert stats0 == 0  # vLLM's start-up profiling with dummy videos is not counted
    full = _chat(server, url)["prompt_token_ids"]
    out = _chat(lite, url, vreason={"trace": True, "update_every": 2})
    mine = out["prompt_token_ids"]
    grid = [int(x) for x in inputs["video_grid_thw"][0]]
    per = grid[1] * grid[2] // 4
    n_full, n_lite = full.count(vid), mine.count(vid)
    assert n_full == grid[0] * per and n_lite == kept_tokens(per, grid[0], RATE) == n_full // 2
    assert [t for t in mine if t != vid] == [t for t in full if t != vid]
    first = mine.index(vid)
    assert mine[first:first + n_lite] == [vid] * n_lite  # one run, where the full run starts
    assert first == full.index(vid)
    assert out["videos"][0]["tokens_kept"] == n_lite and out["videos"][0]["tokens_pruned"] == n_full - n_lite
    assert out["vreason"]["controlled_positions"] == n_lite
    assert out["vreason"]["complete"] is True
    plain = _chat(lite, url)  # Lite alone, no controller: the same pruned prompt
    assert plain["prompt_token_ids"] == mine and "vreason" not in plain
    assert plain["videos"][0]["tokens_pruned"] == n_full - n_lite
    # the worker pruned each request's video once (prefix caching may reuse the encoder's output)
    assert lite.stats()["totals"]["lite_pruned_tokens"] - stats0 in (n_full - n_lite, 2 * (n_full - n_lite))
    metrics = httpx.get(f"{lite.url}/metrics", timeout=30).text
    line = next(x for x in metrics.splitlines() if x.startswith("vreason:lite_tokens_pruned_total"))
    assert float(line.split()[-1]) >= n_full - n_lite


@pytest.mark.parametrize("knobs", KNOBS, ids=["every1-now", "every2-steps2-next-nonorm"])
def test_lite_trace_matches_eager_reference_on_the_kept_tokens(lite, hf, knobs):
    """The oracle, given the kept tokens at their full-prompt positions, decodes the same tokens
    with the same trace: wrong tokens kept, or a kept token or the text after the video at
    another position, would change the entropies."""
    proc, model, inputs, url = hf
    keep = _kept(hf)
    out = _chat(lite, url, vreason={**knobs, "trace": True})
    steps = out["vreason"]["steps"]
    tokens, rows = eager_generate(model, inputs, model.config.video_token_id, model.config.text_config.eos_token_id,
                                  MAX_TOKENS, VReasonParams.from_dict(knobs), keep=keep)
    assert out["choices"][0]["token_ids"] == tokens
    assert len(rows) == len(steps) == len(tokens)
    for t, (s, ref) in enumerate(zip(steps, rows), start=1):
        assert s["entropy"] == pytest.approx(ref["entropy"], abs=1e-3), t
        assert (s["alpha"], s["updated"]) == (ref["alpha"], ref["updated"]), t
    # and the pruning matters: the unpruned oracle decodes differently
    full_tokens, full_rows = eager_generate(model, inputs, model.config.video_token_id,
                                            model.config.text_config.eos_token_id, MAX_TOKENS,
                                            VReasonParams.from_dict(knobs))
    assert max(abs(a["entropy"] - b["entropy"]) for a, b in zip(rows, full_rows)) > 1e-2


def test_plain_request_beside_lite_requests_is_unchanged(lite, hf):
    """A text-only greedy request gives the same tokens alone and beside controlled Lite requests."""
    url = hf[3]
    plain = {"model": lite.model, "messages": [{"role": "user", "content": "Count to twenty."}],
             "max_tokens": 48, "temperature": 0, "logprobs": True}

    def ask(body):
        r = httpx.post(f"{lite.url}/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    solo = ask(plain)
    with cf.ThreadPoolExecutor(4) as ex:
        others = [ex.submit(_chat, lite, url, vreason={"update_every": 1, "lr": 0.1}) for _ in range(3)]
        beside = ex.submit(ask, plain)
        for f in others:
            f.result()
        beside = beside.result()
    assert beside["choices"][0]["message"]["content"] == solo["choices"][0]["message"]["content"]
    a = [x["logprob"] for x in solo["choices"][0]["logprobs"]["content"]]
    b = [x["logprob"] for x in beside["choices"][0]["logprobs"]["content"]]
    assert a == pytest.approx(b, abs=1e-4)


def test_lite_on_a_family_it_cannot_prune_refuses_to_start(qwen3_vl_model, demo_model):
    """Lite changes every video prompt: where it cannot prune, the server does not start (the
    check runs before vLLM starts; Qwen2.5-VL passes it)."""
    from transformers import AutoProcessor

    from vreason.server.engine.config import EngineConfig
    from vreason.server.engine.vllm_engine import VllmEngine, VReasonUnavailable

    engine = VllmEngine(EngineConfig(model=str(qwen3_vl_model), vreason_lite_rate=RATE))
    with pytest.raises(VReasonUnavailable, match="Lite prunes Qwen2_5_VLForConditionalGeneration only.*"
                                                 "Qwen3VLForConditionalGeneration"):
        engine._refuse_lite(AutoProcessor.from_pretrained(qwen3_vl_model))
    VllmEngine(EngineConfig(model=str(demo_model), vreason_lite_rate=RATE))._refuse_lite(
        AutoProcessor.from_pretrained(demo_model))
