"""The server's V-Reason (batched, in vLLM) against the eager HF-transformers oracle, greedy fp32.

The clip samples to 8 temporal patches, so the oracle's M-RoPE positions after the video follow
the original Qwen2.5-VL rule rather than transformers 5.19's (tests/reference/eager_vreason.py).
"""

from __future__ import annotations

import pytest

from tests.helpers.messages import QUESTION, video_messages
from tests.helpers.oracle import MAX_TOKENS, oracle_inputs
from tests.reference.eager_vreason import eager_generate
from vreason.server.controller import VReasonParams

pytestmark = pytest.mark.slow

KNOBS = [
    {"update_every": 1, "steps": 2, "lr": 0.1},
    {"update_every": 3, "steps": 1, "lr": 0.1, "apply": "next", "norm_restore": "none"},
    {"update_every": 2, "steps": 1, "lr": 0.05, "beta": 0.9},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=["every1-steps2-now", "every3-next-nonorm", "every2-beta0.9"])
def test_server_trace_and_tokens_match_eager_reference(client, server, hf, knobs):
    proc, model, inputs, url = hf
    r = client.chat.completions.create(model=server.model, messages=video_messages(url, QUESTION),
                                       max_tokens=MAX_TOKENS, temperature=0,
                                       extra_body={"vreason": {**knobs, "trace": True}})
    steps = r.model_extra["vreason"]["steps"]
    tokens, rows = eager_generate(model, inputs, model.config.video_token_id, model.config.text_config.eos_token_id,
                                  MAX_TOKENS, VReasonParams.from_dict(knobs))
    assert len(rows) == len(steps) == r.usage.completion_tokens >= 32
    assert r.choices[0].message.content == proc.tokenizer.decode(tokens, skip_special_tokens=True)
    for t, (mine, ref) in enumerate(zip(steps, rows), start=1):
        assert mine["entropy"] == pytest.approx(ref["entropy"], abs=1e-3), t
        assert mine["ema"] == pytest.approx(ref["ema"], abs=1e-3), t
        assert (mine["alpha"], mine["updated"]) == (ref["alpha"], ref["updated"]), t
    assert max(s["entropy"] for s in steps) - min(s["entropy"] for s in steps) > 1.0


def test_continued_thought_is_controlled_from_the_first_generated_token(client, server, demo_model, media_dir):
    """An assistant prefill that opens a thought (continue_final_message): the server continues
    it, and its trace follows the oracle's on the prefilled prompt from row 1 = the first
    generated token (entropies, update schedule, tokens); the continuation is reasoning."""
    prefill = "<think>\nThe video shows"
    proc, model, inputs, url = oracle_inputs(demo_model, media_dir, prefill=prefill)
    knobs = {"update_every": 2, "steps": 1, "lr": 0.1}
    r = client.chat.completions.create(
        model=server.model, max_tokens=MAX_TOKENS, temperature=0,
        messages=[*video_messages(url, QUESTION), {"role": "assistant", "content": prefill}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False, "return_token_ids": True,
                    "vreason": {**knobs, "trace": True}})
    steps, ids = r.model_extra["vreason"]["steps"], r.choices[0].model_extra["token_ids"]
    assert r.model_extra["prompt_token_ids"] == inputs["input_ids"][0].tolist()  # the prefill ends the prompt
    tokens, rows = eager_generate(model, inputs, model.config.video_token_id, model.config.text_config.eos_token_id,
                                  MAX_TOKENS, VReasonParams.from_dict(knobs))
    assert len(steps) == len(ids) == r.usage.completion_tokens == len(rows)
    assert ids == tokens
    for t, (mine, ref) in enumerate(zip(steps, rows), start=1):
        assert mine["entropy"] == pytest.approx(ref["entropy"], abs=1e-3), t
        assert mine["ema"] == pytest.approx(ref["ema"], abs=1e-3), t
        assert mine["alpha"] == ref["alpha"] and mine["updated"] == ref["updated"] == (t % 2 == 0), t
    text = proc.tokenizer.decode(tokens, skip_special_tokens=True)
    msg = r.choices[0].message
    thought, _, answer = text.partition("</think>")
    assert (msg.model_extra["reasoning"], msg.content) == (thought, answer)  # the open <think> goes on
