"""vLLM's default compiled mode against eager mode and the eager oracle (greedy fp32, demo model).

The session `server` runs the default (compiled) mode. A second server here runs first, alone,
with `--enforce-eager` and the overlay/tail self-checks on (VREASON_CHECK_OVERLAY=1): the same
requests must give the same tokens and traces on both, and the compiled server must match the
independent eager HF-transformers oracle.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.messages import QUESTION, video_messages
from tests.helpers.oracle import MAX_TOKENS
from tests.helpers.servers import start_server, stop_server
from tests.reference.eager_vreason import eager_generate
from vreason.server.controller import VReasonParams

pytestmark = pytest.mark.slow
CHECK_ENV = "VREASON_CHECK_OVERLAY"  # vreason.server.vllm_ext.runner.CHECK_ENV (no vLLM import here)

KNOBS = [None, {"update_every": 1, "steps": 2, "lr": 0.1},
         {"update_every": 2, "lr": 0.05, "apply": "next", "norm_restore": "none"}]


KNOB_IDS = ["plain", "every1-steps2", "every2-next-nonorm"]


@pytest.fixture(scope="session")
def eager_results(demo_model, media_dir, tmp_path_factory):
    """Everything the comparisons need from an eager server with the self-checks on, collected
    and the server stopped before the compiled session server starts (request this fixture
    before `server`): one engine at a time."""
    old = os.environ.get(CHECK_ENV)
    os.environ[CHECK_ENV] = "1"
    try:
        log = tmp_path_factory.mktemp("eager") / "server.log"
        s = start_server(demo_model, media_dir, log, "--enforce-eager")
    finally:
        if old is None:
            os.environ.pop(CHECK_ENV)
        else:
            os.environ[CHECK_ENV] = old
    url = f"file://{media_dir / 'shapes.mp4'}"
    try:
        out = {"answers": {k: _ask(s, url, knobs) for k, knobs in zip(KNOB_IDS, KNOBS)}}
        _ask(s, url, {"update_every": 1}, max_tokens=4)
        out["stats"] = s.stats()
    finally:
        stop_server(s)
    return out


@pytest.fixture
def url(media_dir):
    return f"file://{media_dir / 'shapes.mp4'}"


def _ask(server, url, knobs, max_tokens=24):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    extra = {} if knobs is None else {"vreason": {**knobs, "trace": True}}
    r = client.chat.completions.create(model=server.model, messages=video_messages(url, QUESTION),
                                       max_tokens=max_tokens, temperature=0, extra_body=extra)
    steps = (r.model_extra.get("vreason") or {}).get("steps", [])
    return r.choices[0].message.content, steps


def test_default_server_is_compiled_and_eager_is_not(eager_results, server):
    assert not server.stats()["compilation"].startswith("compilation mode NONE")
    assert eager_results["stats"]["compilation"].startswith("compilation mode NONE")


@pytest.mark.parametrize("key,knobs", list(zip(KNOB_IDS, KNOBS)), ids=KNOB_IDS)
def test_compiled_equals_eager(eager_results, server, url, key, knobs):
    text_c, steps_c = _ask(server, url, knobs)
    text_e, steps_e = eager_results["answers"][key]
    assert text_c == text_e
    assert len(steps_c) == len(steps_e)
    assert (len(steps_c) > 0) == (knobs is not None)
    for t, (c, e) in enumerate(zip(steps_c, steps_e), start=1):
        assert (c["alpha"], c["updated"]) == (e["alpha"], e["updated"]), t
        assert c["entropy"] == pytest.approx(e["entropy"], abs=1e-4), t
        assert c["ema"] == pytest.approx(e["ema"], abs=1e-4), t


def test_compiled_matches_eager_oracle(eager_results, server, hf):
    proc, model, inputs, hf_url = hf  # the oracle's clip (8 temporal patches)
    knobs = {"update_every": 2, "steps": 1, "lr": 0.05, "beta": 0.9}
    text, steps = _ask(server, hf_url, knobs, max_tokens=MAX_TOKENS)
    cfg = model.config
    tokens, rows = eager_generate(model, inputs, cfg.video_token_id, cfg.text_config.eos_token_id,
                                  MAX_TOKENS, VReasonParams.from_dict(knobs))
    assert text == proc.tokenizer.decode(tokens, skip_special_tokens=True)
    assert len(steps) == len(rows)
    for t, (mine, ref) in enumerate(zip(steps, rows), start=1):
        assert mine["entropy"] == pytest.approx(ref["entropy"], abs=1e-3), t
        assert (mine["alpha"], mine["updated"]) == (ref["alpha"], ref["updated"]), t


def test_overlay_and_tail_checks(eager_results):
    """With the checks on: where dV == 0 the overlay's attention equals the backend's own output
    and the lean tail reproduces vLLM's logits (fp32 demo model)."""
    stats = eager_results["stats"]
    assert stats["checks"] is True
    assert stats["calls"]["overlay_applied"] > 0
    assert stats["totals"]["overlay_checks"] > 0 and stats["totals"]["tail_checks"] > 0
    assert stats["max_overlay_error"] < 1e-4
    assert stats["max_tail_error"] < 1e-3
