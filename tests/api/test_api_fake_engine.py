"""Front-end tests against a fake engine on app.state: validation, error shapes, SSE framing."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers.fake_engine import BODY, FakeEngine, client_for
from vreason.server.api.app import create_app
from vreason.server.engine.types import EngineClientError
from vreason.server.video import VideoError


pytestmark = pytest.mark.anyio


async def test_non_stream_body():
    async with client_for(FakeEngine()) as c:
        r = await c.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 200
    j = r.json()
    assert j["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
    assert j["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                          "completion_tokens_details": {"reasoning_tokens": 0}}
    assert "vreason" not in j


async def test_trace_summary():
    async with client_for(FakeEngine()) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "vreason": {"trace": True}})
    tr = r.json()["vreason"]
    assert tr["updates"] == 1 and tr["skipped_updates"] == 0 and tr["peak_step"] == 2
    assert [s["entropy"] for s in tr["steps"]] == [1.0, 2.0]


async def test_stream_framing_and_usage():
    engine = FakeEngine()
    async with client_for(engine) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "stream": True,
                                                         "stream_options": {"include_usage": True}})
    events = [ln for ln in r.text.split("\n\n") if ln]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == "Hello world"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
    assert engine.aborted  # the stream's end always releases the request


@pytest.mark.parametrize("body,status,param", [
    ({**BODY, "model": 3}, 400, "model"),
    ({**BODY, "messages": []}, 400, "messages"),
    ({**BODY, "temperature": "hot"}, 400, "temperature"),
    ({**BODY, "n": 1000}, 400, "n"),
    ({**BODY, "top_p": 0}, 400, "top_p"),
    ({**BODY, "stream_options": {"include_usage": "yes please"}}, 400, "stream_options.include_usage"),
    ({**BODY, "stream_options": {"bogus": True}}, 400, "stream_options.bogus"),
    ({**BODY, "messages": [{"role": "tool", "content": "hi"}]}, 400, "messages.0.role"),
    ({**BODY, "messages": [{"role": "", "content": "hi"}]}, 400, "messages.0.role"),
    ({**BODY, "vreason": {"steps": 0}}, 400, "vreason.steps"),
    ({**BODY, "vreason": {"norm_restore": "layer"}}, 400, "vreason.norm_restore"),
    ({**BODY, "vreason": "yes"}, 400, "vreason"),
    ({**BODY, "model": "other"}, 404, "model"),
])
async def test_validation_errors(body, status, param):
    async with client_for(FakeEngine()) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


@pytest.mark.parametrize("fail, status", [
    (EngineClientError("bad video", param="messages", code="video_decode_failed"), 400),
    (VideoError("bad video", code="video_decode_failed"), 400),  # a ClientError: the same handler
    (VideoError("bad video", code="video_too_large", status=413), 413),
])
async def test_engine_client_error_and_not_ready(fail, status):
    async with client_for(FakeEngine(fail=fail)) as c:
        r = await c.post("/v1/chat/completions", json=BODY)
        assert r.status_code == status
        assert r.json() == {"error": {"message": "bad video", "type": "invalid_request_error",
                                      "param": "messages", "code": fail.code}}
        r = await c.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert r.status_code == status  # raised before the first chunk: a real status, not an SSE error
    async with client_for(FakeEngine(ready=False)) as c:
        assert (await c.get("/health")).status_code == 503
        assert (await c.post("/v1/chat/completions", json=BODY)).status_code == 503


async def test_vreason_defaults_merge():
    from vreason.server.controller import VReasonParams

    engine = FakeEngine()
    app = create_app(engine, manage_engine=False, vreason_default=VReasonParams(enabled=True, lr=0.5))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await c.post("/v1/chat/completions", json=BODY)
        await c.post("/v1/chat/completions", json={**BODY, "vreason": {"steps": 3}})
        await c.post("/v1/chat/completions", json={**BODY, "vreason": False})
    a, b, off = engine.seen
    assert a.vreason.lr == 0.5 and b.vreason.steps == 3 and b.vreason.lr == 0.5 and off.vreason is None
