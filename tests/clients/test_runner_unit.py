"""The eval request loop against a mocked transport: reasoning split, retries, malformed replies."""

from __future__ import annotations

import asyncio
import json

import httpx
from vreason.clients.eval.runner import EvalConfig, ask, full_text, vreason_field

ITEM = {
    "id": "q1",
    "dataset": "d",
    "type": "multiple-choice",
    "question": "Which way?",
    "options": ["left", "right"],
    "answer": "B",
    "video": "data:video/mp4;base64,AAAA",
}


def reply(content, reasoning=None, tokens=7):
    msg = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning"] = msg["reasoning_content"] = reasoning
    return {
        "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": tokens,
            "total_tokens": 50 + tokens,
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
        "vreason": {"updates": 3, "skipped_updates": 0, "peak_step": 2, "steps": []},
    }


def run_ask(responses: list, mode: str = "on", **cfg):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        r = responses[min(len(seen), len(responses)) - 1]
        return r if isinstance(r, httpx.Response) else httpx.Response(200, json=r)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x") as http:
            return await ask(http, "m", ITEM, mode, EvalConfig(base_url="http://x", max_tokens=64, **cfg))

    return asyncio.run(go()), seen


def test_reasoning_split_reply_is_scored_like_the_whole_output():
    assert (
        full_text("<answer>B</answer>", " it moves right")
        == "<think> it moves right</think><answer>B</answer>"
    )
    assert full_text("B", None) == "B"
    row, seen = run_ask([reply("<answer>B</answer>", " square moves right")])
    assert row["score"] == 1.0 and row["extraction"] == "tag" and row["reasoning"] == " square moves right"
    assert row["reasoning_tokens"] == 5 and row["completion_tokens"] == 7 and row["vreason"]["updates"] == 3
    body = seen[0]
    assert body["vreason"] == {"enabled": True, "trace": True} and body["max_tokens"] == 64
    assert body["messages"][0]["content"][0] == {"type": "video_url", "video_url": {"url": ITEM["video"]}}
    assert "Options:\nA. left\nB. right" in body["messages"][0]["content"][1]["text"]
    # an answer only inside the thought, as the unsplit output would show it: last tag wins
    row, _ = run_ask([reply("", "I pick <answer>B</answer>")])
    assert row["score"] == 1.0


def test_retries_then_success_and_errors_that_are_not_retried():
    row, seen = run_ask(
        [httpx.Response(503, json={"error": {"message": "busy"}}), reply("<answer>A</answer>")], retries=1
    )
    assert len(seen) == 2 and row["error"] is None and row["score"] == 0.0 and row["answered"]
    row, seen = run_ask([httpx.Response(400, json={"error": {"message": "bad video"}})], retries=3)
    assert len(seen) == 1 and row["error"].startswith("HTTP 400") and row["score"] == 0.0
    row, _ = run_ask([httpx.Response(200, text="not json")], retries=0)
    assert row["error"].startswith("malformed response") and row["extraction"] == "error"


def test_mode_bodies():
    cfg = EvalConfig(base_url="x", vreason_options={"beta": 0.9, "update_every": 1})
    assert vreason_field("on", cfg) == {"beta": 0.9, "update_every": 1, "enabled": True, "trace": True}
    assert vreason_field("off", cfg) == {"beta": 0.9, "update_every": 4096, "enabled": True, "trace": True}
    assert vreason_field("off", EvalConfig(base_url="x", baseline="plain")) is False
    _, seen = run_ask([reply("x")], mode="off", baseline="plain")
    assert seen[0]["vreason"] is False
