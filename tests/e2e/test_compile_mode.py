"""vLLM's default compiled mode against eager mode and the eager oracle (greedy fp32, demo model).

The session `server` runs the default (compiled) mode. A second server here runs with
`--enforce-eager` and the overlay/tail self-checks on (VREASON_CHECK_OVERLAY=1): the same
requests must give the same tokens and traces on both, and the compiled server must match the
independent eager HF-transformers oracle.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import start_server, stop_server
from tests.e2e.test_eager_reference import MAX_TOKENS, QUESTION, hf  # noqa: F401  (module fixture)
from tests.e2e.test_server_e2e import video_messages
from tests.reference.eager_vreason import eager_generate
from vreason.server.controller import VReasonParams

pytestmark = pytest.mark.slow
CHECK_ENV = "VREASON_CHECK_OVERLAY"  # vreason.server.vllm_ext.runner.CHECK_ENV (no vLLM import here)

KNOBS = [None, {"update_every": 1, "steps": 2, "lr": 0.1},
         {"update_every": 2, "lr": 0.05, "apply": "next", "norm_restore": "none"}]


@pytest.fixture(scope="module")
def eager_server(demo_model, media_dir, tmp_path_factory):
    old = os.environ.get(CHECK_ENV)
    os.environ[CHECK_ENV] = "1"
    try:
        s = start_server(demo_model, media_dir, tmp_path_factory.mktemp("eager") / "server.log", "--enforce-eager")
    finally:
        if old is None:
            os.environ.pop(CHECK_ENV)
        else:
            os.environ[CHECK_ENV] = old
    yield s
    stop_server(s)


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


def test_default_server_is_compiled_and_eager_is_not(server, eager_server):
    assert "mode NONE" not in server.stats()["compilation"]
    assert "mode NONE" in eager_server.stats()["compilation"]


@pytest.mark.parametrize("knobs", KNOBS, ids=["plain", "every1-steps2", "every2-next-nonorm"])
def test_compiled_equals_eager(server, eager_server, url, knobs):
    text_c, steps_c = _ask(server, url, knobs)
    text_e, steps_e = _ask(eager_server, url, knobs)
    assert text_c == text_e
    assert len(steps_c) == len(steps_e) == (0 if knobs is None else len(steps_e))
    for t, (c, e) in enumerate(zip(steps_c, steps_e), start=1):
        assert (c["alpha"], c["updated"]) == (e["alpha"], e["updated"]), t
        assert c["entropy"] == pytest.approx(e["entropy"], abs=1e-4), t
        assert c["ema"] == pytest.approx(e["ema"], abs=1e-4), t


def test_compiled_matches_eager_oracle(server, hf, url):  # noqa: F811
    proc, model, inputs, _ = hf
    knobs = {"update_every": 2, "steps": 1, "lr": 0.05, "beta": 0.9}
    text, steps = _ask(server, url, knobs, max_tokens=MAX_TOKENS)
    tokens, rows = eager_generate(model, inputs, model.config.video_token_id, model.config.text_config.eos_token_id,
                                  MAX_TOKENS, VReasonParams.from_dict(knobs))
    assert text == proc.tokenizer.decode(tokens, skip_special_tokens=True)
    assert len(steps) == len(rows)
    for t, (mine, ref) in enumerate(zip(steps, rows), start=1):
        assert mine["entropy"] == pytest.approx(ref["entropy"], abs=1e-3), t
        assert (mine["alpha"], mine["updated"]) == (ref["alpha"], ref["updated"]), t


def test_overlay_and_tail_checks(eager_server, url):
    """With the checks on: where dV == 0 the overlay's attention equals the backend's own output
    and the lean tail reproduces vLLM's logits (fp32 demo model)."""
    _ask(eager_server, url, {"update_every": 1}, max_tokens=4)
    stats = eager_server.stats()
    assert stats["checks"] is True
    assert stats["calls"]["overlay_applied"] > 0
    assert stats["totals"]["overlay_checks"] > 0 and stats["totals"]["tail_checks"] > 0
    assert stats["max_overlay_error"] < 1e-4
    assert stats["max_tail_error"] < 1e-3
