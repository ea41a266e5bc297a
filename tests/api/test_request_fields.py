"""Every chat field is honoured, refused with a 400 naming it, or listed as ignored (fake engine).

The engine side (vLLM's own conversion of these fields, logprobs from the sampled logits) is
checked against stock vLLM in tests/e2e/test_vllm_parity.py; here: what reaches the engine, and
how its logprobs / video reports come back in the body and the stream.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.fake_engine import BODY, FakeEngine, client_for
from vreason.server.api.schemas import IGNORED_FIELDS, ChatCompletionRequest
from vreason.server.engine.types import MAX_LOGPROBS, ChoiceDelta, TokenLogprob, VideoUse

pytestmark = pytest.mark.anyio


async def post(body: dict, engine=None):
    engine = engine or FakeEngine()
    async with client_for(engine) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, **body})
    return r, engine


SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.05, "presence_penalty": 0.5,
            "frequency_penalty": -0.5, "repetition_penalty": 1.1, "seed": 3, "stop": ["x"],
            "stop_token_ids": [7, 8], "n": 2, "ignore_eos": True, "logprobs": True, "top_logprobs": 4,
            "logit_bias": {"12": -3.0}, "min_tokens": 2, "skip_special_tokens": False,
            "spaces_between_special_tokens": False, "include_stop_str_in_output": True,
            "bad_words": ["no"], "allowed_token_ids": [1, 2, 3], "max_completion_tokens": 9,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}}


async def test_every_sampling_field_reaches_the_engine():
    r, engine = await post(SAMPLING)
    assert r.status_code == 200, r.text
    s = engine.seen[0].sampling
    for k, v in SAMPLING.items():
        if k == "max_completion_tokens":
            assert s.max_tokens == 9
        elif k == "response_format":
            assert s.response_format == {"type": "json_schema", "json_schema": {"name": "a",
                                                                              "schema": {"type": "object"}}}
        else:
            got = getattr(s, k)
            assert (list(got) if isinstance(got, tuple) else got) == v, k


async def test_unset_sampling_fields_stay_unset_for_the_model_defaults():
    r, engine = await post({})
    s = engine.seen[0].sampling
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.max_tokens) == (None,) * 5


async def test_unknown_fields_are_refused_and_all_named():
    r, _ = await post({"foo": 1, "best_of": 2})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "foo" and err["code"] == "unknown_field"
    assert "foo" in err["message"] and "best_of" in err["message"]


async def test_unknown_message_field_is_refused():
    r, _ = await post({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.tool_calls"


async def test_ignored_fields_are_accepted():
    values = {"user": "u", "metadata": {"a": "b"}, "store": False, "service_tier": "auto",
              "parallel_tool_calls": True}
    assert set(values) == set(IGNORED_FIELDS)
    r, _ = await post(values)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tools": []}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
])
async def test_tools_are_refused(body, param):
    r, engine = await post(body)
    assert r.status_code == 400 and not engine.seen
    err = r.json()["error"]
    assert err["param"] == param and "tool calling is not supported" in err["message"]


async def test_tool_choice_none_is_fine():
    r, _ = await post({"tool_choice": "none"})
    assert r.status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"logprobs": True, "top_logprobs": MAX_LOGPROBS + 1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2000}, "top_logprobs"),  # stock vLLM's CPU engine dies on this
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"logit_bias": {"a": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 101}}, "logit_bias.1"),
    ({"stop_token_ids": [-1]}, "stop_token_ids.0"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"min_tokens": -1}, "min_tokens"),
])
async def test_bad_values_name_the_field(body, param):
    r, engine = await post(body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert not engine.seen


class LogprobEngine(FakeEngine):
    async def generate(self, request, usage):
        self.seen.append(request)
        usage.prompt_tokens = 5
        usage.videos.append(VideoUse(frames=32, requested=64, capped=True, param="media_io_kwargs.video.num_frames"))
        alt = TokenLogprob("B", -2.0, (66,))
        for i, w in enumerate(("A", "C"), start=1):
            usage.completion_tokens = i
            lp = [TokenLogprob(w, -0.5 * i, tuple(w.encode()), (TokenLogprob(w, -0.5 * i, tuple(w.encode())), alt))]
            yield ChoiceDelta(0, w, i, "stop" if i == 2 else None, logprobs=lp, stop_reason=7 if i == 2 else None)


async def test_logprobs_stop_reason_and_video_report_in_the_body():
    r, _ = await post({"logprobs": True, "top_logprobs": 2}, LogprobEngine())
    j = r.json()
    c = j["choices"][0]
    assert c["logprobs"]["content"][1] == {"token": "C", "logprob": -1.0, "bytes": [67], "top_logprobs": [
        {"token": "C", "logprob": -1.0, "bytes": [67]}, {"token": "B", "logprob": -2.0, "bytes": [66]}]}
    assert c["stop_reason"] == 7 and c["finish_reason"] == "stop"
    assert j["videos"] == [{"frames_used": 32, "frames_requested": 64, "capped": True,
                            "param": "media_io_kwargs.video.num_frames"}]


async def test_logprobs_and_video_report_in_the_stream():
    async with client_for(LogprobEngine()) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "stream": True, "logprobs": True,
                                                       "stream_options": {"include_usage": True,
                                                                          "continuous_usage_stats": True}})
    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    assert chunks[0]["videos"][0]["capped"] is True
    tokens = [t["token"] for ch in chunks for c in ch["choices"] if c["logprobs"] for t in c["logprobs"]["content"]]
    assert tokens == ["A", "C"]
    assert all("usage" in ch for ch in chunks)  # continuous_usage_stats: usage on every chunk
    assert [c.get("stop_reason") for ch in chunks for c in ch["choices"] if c["finish_reason"]] == [7]


def test_frame_count_field_is_named_as_sent():
    msgs = [{"role": "user", "content": "hi"}]
    io = ChatCompletionRequest.model_validate({"model": "m", "messages": msgs,
                                               "media_io_kwargs": {"video": {"num_frames": 64}}})
    mm = ChatCompletionRequest.model_validate({"model": "m", "messages": msgs,
                                               "mm_processor_kwargs": {"num_frames": 64}})
    assert io.to_generate_request("r", None).video.num_frames_param == "media_io_kwargs.video.num_frames"
    assert mm.to_generate_request("r", None).video.num_frames_param == "mm_processor_kwargs.num_frames"
