"""The served default (SmolLM2 grafted into Qwen2.5-VL) through the real server: it speaks English,
and a V-Reason request on a video runs and returns its trace."""

from __future__ import annotations

import re

import pytest

from tests.helpers.messages import video_messages
from tests.helpers.servers import start_server, stop_server

pytestmark = pytest.mark.slow

WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[.,!?:;]*$")


@pytest.fixture(scope="module")
def smollm2_server(smollm2_model, media_dir, tmp_path_factory):
    s = start_server(smollm2_model, media_dir, tmp_path_factory.mktemp("smollm2") / "server.log", name="smollm2")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def smollm2_client(smollm2_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def assert_english(text: str) -> None:
    assert all(c.isprintable() or c == "\n" for c in text), repr(text)
    words = text.split()
    assert len(words) >= 4, repr(text)
    assert sum(bool(WORD.match(w)) for w in words) >= 0.8 * len(words), repr(text)


def test_text_answer_is_english(smollm2_client, smollm2_server):
    r = smollm2_client.chat.completions.create(
        model=smollm2_server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert_english(text)
    assert "Paris" in text  # SmolLM2-135M-Instruct's greedy answer (HF transformers gives the same)


@pytest.mark.parametrize("targets", ["video", "text"])
def test_vreason_on_a_video_runs_and_returns_a_trace(smollm2_client, smollm2_server, media_dir, targets):
    r = smollm2_client.chat.completions.create(
        model=smollm2_server.model, messages=video_messages(f"file://{media_dir / 'shapes.mp4'}",
                                                            "Describe this video in one sentence."),
        max_tokens=16, temperature=0, extra_body={"vreason": {"trace": True, "targets": targets}})
    tr = r.model_extra["vreason"]
    assert len(tr["steps"]) == r.usage.completion_tokens > 0
    assert tr["updates"] == r.usage.completion_tokens // 2 and tr["skipped_updates"] == 0  # update_every=2
    assert all(s["entropy"] >= 0 for s in tr["steps"])
    assert r.choices[0].message.content.strip()
