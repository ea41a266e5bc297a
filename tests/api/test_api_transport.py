"""Reasoning split, auth, body limit, admission, timeouts, request ids and /metrics (fake engine)."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.fake_engine import BODY, FakeEngine, client_for

pytestmark = pytest.mark.anyio
THINK = ["<th", "ink>the square ", "moves</thi", "nk><answer>", "B</answer>"]


async def test_reasoning_split_non_stream():
    async with client_for(FakeEngine(words=THINK)) as c:
        j = (await c.post("/v1/chat/completions", json=BODY)).json()
    msg = j["choices"][0]["message"]
    assert msg["content"] == "<answer>B</answer>"
    assert msg["reasoning"] == msg["reasoning_content"] == "the square moves"
    assert j["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3  # "<th" does not open yet


async def test_reasoning_split_stream_with_tags_cut_across_chunks():
    async with client_for(FakeEngine(words=THINK)) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(e[6:]) for e in r.text.split("\n\n") if e and e != "data: [DONE]"]
    deltas = [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas) == "the square moves"
    assert "".join(d.get("content", "") for d in deltas) == "<answer>B</answer>"
    assert all("<" not in d.get("reasoning", "") for d in deltas)
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3


# The scripted demo model's answer, one token a string; a tuple is one delta of several tokens
# (vLLM hands the front end several tokens at once when it falls behind).
SCRIPTED = ["<think>", " square", " moves", " right", "</think>", "<answer>", "B", "</answer>"]
GROUPINGS = {
    "one-token-deltas": SCRIPTED,
    "close-and-answer-in-one": SCRIPTED[:3] + [tuple(SCRIPTED[3:6])] + SCRIPTED[6:],
    "open-and-thought-in-one": [tuple(SCRIPTED[:2])] + SCRIPTED[2:],
    "all-in-one": [tuple(SCRIPTED)],
    "thought-end-then-answer": SCRIPTED[:4] + [tuple(SCRIPTED[4:])],
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("words", GROUPINGS.values(), ids=GROUPINGS.keys())
async def test_reasoning_tokens_are_counted_per_token_in_multi_token_deltas(words, stream):
    # <think>, " square", " moves", " right", </think>: 5 tokens, however the deltas group them
    async with client_for(FakeEngine(words=words)) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "stream": stream,
                                                       **({"stream_options": {"include_usage": True}} if stream else {})})
    if stream:
        chunks = [json.loads(e[6:]) for e in r.text.split("\n\n") if e and e != "data: [DONE]"]
        deltas = [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]
        reasoning = "".join(d.get("reasoning", "") for d in deltas)
        content = "".join(d.get("content", "") for d in deltas)
        usage = chunks[-1]["usage"]
    else:
        j = r.json()
        reasoning, content = j["choices"][0]["message"]["reasoning"], j["choices"][0]["message"]["content"]
        usage = j["usage"]
    assert (reasoning, content) == (" square moves right", "<answer>B</answer>")
    assert usage["completion_tokens"] == 8
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 5


async def test_reasoning_split_can_be_turned_off():
    async with client_for(FakeEngine(words=THINK), reasoning_split=False) as c:
        j = (await c.post("/v1/chat/completions", json=BODY)).json()
    assert j["choices"][0]["message"]["content"] == "".join(THINK)
    assert "reasoning" not in j["choices"][0]["message"]


async def test_api_key():
    async with client_for(FakeEngine(), api_key="sekret") as c:
        r = await c.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await c.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer sekret"})).status_code == 200
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200


async def test_body_limit_by_header_and_by_stream():
    async with client_for(FakeEngine(), max_body_bytes=2048) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "pad": "x" * 4000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        async def chunks():  # no content-length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 1000
        r = await c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


async def test_queue_full_gives_429_and_frees_slots():
    engine = FakeEngine(delay=0.2)
    async with client_for(engine, max_queue=2) as c:
        rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=BODY) for _ in range(4)))
        codes = sorted(r.status_code for r in rs)
        assert codes == [200, 200, 429, 429]
        busy = [r for r in rs if r.status_code == 429][0]
        assert busy.json()["error"]["type"] == "rate_limit_error" and busy.headers["retry-after"]
        assert (await c.post("/v1/chat/completions", json={**BODY, "stream": True})).status_code == 200
        assert (await c.post("/v1/chat/completions", json=BODY)).status_code == 200


async def test_request_timeout_gives_504():
    engine = FakeEngine(delay=0.5)
    async with client_for(engine, request_timeout=0.2) as c:
        r = await c.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
    assert engine.aborted


async def test_request_id_is_echoed():
    async with client_for(FakeEngine()) as c:
        r = await c.get("/health", headers={"X-Request-Id": "abc123"})
        assert r.headers["x-request-id"] == "abc123"
        assert len((await c.get("/health")).headers["x-request-id"]) == 32


async def test_metrics_parse_and_move():
    async with client_for(FakeEngine()) as c:
        before = _samples((await c.get("/metrics")).text)
        await c.post("/v1/chat/completions", json={**BODY, "vreason": True})
        text = (await c.get("/metrics")).text
        after = _samples(text)
    assert after["vllm:generation_tokens_total"] == before.get("vllm:generation_tokens_total", 0) + 2
    assert after["vllm:request_success_total"] == 1
    assert after["vreason:controlled_requests_total"] == 1
    assert after["vllm:e2e_request_latency_seconds_count"] == 1
    assert after["vllm:time_to_first_token_seconds_count"] == 1
    assert after["vllm:num_requests_waiting"] == 2 and after["vllm:kv_cache_usage_perc"] == 0.25
    assert after["vreason:updates_total"] == 3 and after["vreason:controller_memory_bytes"] == 4096
    assert after["vreason:inner_step_seconds_count"] == 4  # two scrapes drained 2 steps each
    # the fake's steps take 1 ms and 2 ms: cumulative buckets
    buckets = {s.labels["le"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "vreason:inner_step_seconds_bucket"}
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.0025"], buckets["+Inf"]) == (0, 2, 4, 4)
    assert after["vreason:inner_step_seconds_sum"] == pytest.approx(0.006)


def _samples(text: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                continue
            out[s.name] = out.get(s.name, 0) + s.value
    return out
