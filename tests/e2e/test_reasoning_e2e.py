"""Reasoning split through a real server, on the scripted demo model (a real checkpoint whose
greedy answer to any prompt is `SCRIPT`), with the openai SDK."""

from __future__ import annotations

import pytest

from tests.helpers.servers import start_server, stop_server
from vreason.server.checkpoints.demo import SCRIPT, ensure_demo_model

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Which way does the square move?"}]


@pytest.fixture(scope="module")
def scripted(media_dir, tmp_path_factory):
    model = ensure_demo_model(tmp_path_factory.mktemp("scripted"), script=SCRIPT)
    s = start_server(model, media_dir, tmp_path_factory.mktemp("scripted-log") / "server.log", name="scripted")
    yield s
    stop_server(s)


def sdk(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_non_stream_split(scripted):
    r = sdk(scripted).chat.completions.create(model="scripted", messages=MESSAGES, max_tokens=32, temperature=0)
    msg = r.choices[0].message
    assert msg.content == "<answer>B</answer>"
    assert msg.model_extra["reasoning"] == msg.model_extra["reasoning_content"] == " square moves right"
    # <think>, " square", " moves", " right", </think>: 5 of the 9 generated tokens (+ end token)
    assert r.usage.completion_tokens_details.reasoning_tokens == 5
    assert r.choices[0].finish_reason == "stop"


def test_stream_split(scripted):
    chunks = list(sdk(scripted).chat.completions.create(
        model="scripted", messages=MESSAGES, max_tokens=32, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "<answer>B</answer>"
    assert "".join((d.model_extra or {}).get("reasoning", "") for d in deltas) == " square moves right"
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 5
