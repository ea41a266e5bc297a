"""Differential test: the same table of chat requests against stock `vllm serve` and this server.

Stock vLLM 0.32's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, our plugin
disabled) and `vreason serve` run one after the other on the demo model (float32, eager, seed 0,
and the same `--generation-config` directory holding Qwen2.5-VL-7B-Instruct's sampling defaults,
so requests that leave fields unset get the model's defaults on both). Each row is sent to both;
the test asserts the same status class, the same tokens for greedy and seeded rows, logprobs
within LOGPROB_TOL, the same finish/stop reasons and token counts, and the same JSON shape for
the fields both return. Every difference must be in one of the commented allow-lists below.
The table and both sides' answers are written to parity.json (print with -s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from tests.helpers.servers import start_server, start_stock_server, stop_server, stop_stock_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# Qwen2.5-VL-7B-Instruct's generation_config.json sampling defaults.
QWEN_DEFAULTS = {"repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
# Both servers run the same float32 model and kernels; the only numeric difference is batch
# composition in the CPU matmuls, orders of magnitude below this (measured: ~2e-6).
LOGPROB_TOL = 1e-4
HI = [{"role": "user", "content": "Describe the weather in one sentence."}]
Q = "Which way does the red square move?"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TOOL = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
SAMPLE = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}  # overrides the model's near-greedy defaults
OMIT = object()  # a body value that removes the field (e.g. the model) from the request
# An assistant message to continue (continue_final_message), plain and as an open thought.
PREFILL = [*HI, {"role": "assistant", "content": "The weather today is"}]
THINK = [*HI, {"role": "assistant", "content": "<think>\nThe user asks about"}]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


def vmsg(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": Q}]}]


@dataclass(frozen=True)
class Row:
    id: str
    body: dict
    compare: str = "tokens"  # tokens: same text/logprobs; status: same status class only
    stock: bool = True  # False: never sent to stock vLLM (it would crash its engine)
    ours_status: int | None = None  # ours must answer exactly this (and name a param if 4xx)
    video: str | None = None  # "mp4" or "frames": filled in with the media fixture
    path: str = "/v1/chat/completions"


def R(id: str, stream: bool = False, compare: str = "tokens", **body) -> Row:
    base = {"max_tokens": 8, "messages": HI}
    return Row(id, {**base, **body, **({"stream": True} if stream else {})}, compare)


def B(id: str, compare: str = "tokens", stream: bool = False, **body) -> Row:
    """A row for vLLM's batch route: two conversations (unless `messages` says), one choice each."""
    body.setdefault("messages", [HI, [{"role": "user", "content": "Name a colour."}]])
    return replace(R(id, stream, compare, **body), path="/v1/chat/completions/batch")


ROWS = [
    # -- greedy and model defaults --
    R("greedy", temperature=0),
    R("greedy_stream", stream=True, temperature=0),
    R("model_defaults_unset", max_tokens=10),  # generation_config: top_k 1, repetition_penalty 1.05
    R("model_defaults_stream", stream=True, max_tokens=10),
    R("top_k_1_temperature_1", temperature=1, top_k=1, seed=3),  # equals greedy
    R("max_completion_tokens", temperature=0, max_completion_tokens=5, max_tokens=None),
    # -- logprobs --
    R("logprobs_top5", temperature=0, logprobs=True, top_logprobs=5),
    R("logprobs_only", temperature=0, logprobs=True),
    R("logprobs_top20_stream", stream=True, temperature=0, logprobs=True, top_logprobs=20),
    R("logprobs_sampled_seeded", **SAMPLE, seed=21, logprobs=True, top_logprobs=3),
    # -- seeded sampling --
    R("seeded", **SAMPLE, seed=7, max_tokens=12),
    R("seeded_stream", stream=True, **SAMPLE, seed=7, max_tokens=12),
    R("seeded_n2", **SAMPLE, seed=11, n=2),
    R("seeded_n2_stream_usage", stream=True, **SAMPLE, seed=11, n=2, stream_options={"include_usage": True}),
    R("min_p", **SAMPLE, min_p=0.2, seed=5, max_tokens=12),
    R("top_p_seeded", temperature=1, top_p=0.5, top_k=0, seed=9, max_tokens=12),
    # -- penalties --
    R("presence_penalty", temperature=0, presence_penalty=1.5, max_tokens=16),
    R("frequency_penalty", temperature=0, frequency_penalty=1.5, max_tokens=16),
    R("repetition_penalty", temperature=0, repetition_penalty=1.3, max_tokens=16),
    # -- stops, lengths, token sets --
    R("stop_token_ids", temperature=0, stop_token_ids=list(range(100, 700)), max_tokens=16),
    R("stop_strings_included", temperature=0, stop=["1", "2", "3", "e"], include_stop_str_in_output=True,
      max_tokens=16),
    R("stop_strings", temperature=0, stop=["1", "2", "3", "e"], max_tokens=16),
    R("min_tokens_ignore_eos", temperature=0, min_tokens=6, max_tokens=8, ignore_eos=True),
    R("logit_bias_forces_token", temperature=0, logit_bias={"50": 100}, max_tokens=4),
    R("allowed_token_ids", temperature=0, allowed_token_ids=list(range(10, 60)), max_tokens=6),
    R("bad_words", temperature=0, bad_words=["e", "s"], max_tokens=8),
    R("skip_special_tokens_false", temperature=0, skip_special_tokens=False,
      spaces_between_special_tokens=False, max_tokens=12),
    # -- structured outputs --
    R("json_object", temperature=0, response_format={"type": "json_object"}, max_tokens=24),
    R("json_schema", temperature=0, max_tokens=24,
      response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}),
    R("json_schema_stream", stream=True, temperature=0, max_tokens=24,
      response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}),
    R("structured_choice", temperature=0, structured_outputs={"choice": ["sunny", "rainy", "cloudy"]}),
    R("structured_regex", temperature=0, structured_outputs={"regex": "[0-9]{3}-[a-z]{2}"}),
    R("structured_json", temperature=0, structured_outputs={"json": SCHEMA}, max_tokens=24),
    R("structured_grammar", temperature=0, structured_outputs={"grammar": 'root ::= "yes" | "no" | "maybe"'}),
    R("structured_choice_stream", stream=True, temperature=0, structured_outputs={"choice": ["sunny", "rainy"]}),
    R("bad_structured_two_constraints", compare="status", structured_outputs={"choice": ["a"], "regex": "a"}),
    # -- prompt rendering: assistant prefill, continuation, echo --
    R("continue_final_message", temperature=0, messages=PREFILL, **CONTINUE),
    R("continue_final_message_stream", stream=True, temperature=0, messages=PREFILL, **CONTINUE),
    # An open <think>: our split returns the continuation as reasoning, so the token ids are compared.
    R("continue_final_message_think", temperature=0, messages=THINK, return_token_ids=True, logprobs=True,
      **CONTINUE),
    R("add_generation_prompt_false", temperature=0, add_generation_prompt=False),
    R("echo_continued", temperature=0, messages=PREFILL, echo=True, **CONTINUE),
    R("echo_continued_stream", stream=True, temperature=0, messages=PREFILL, echo=True, **CONTINUE),
    R("echo_new_message", temperature=0, messages=PREFILL, echo=True),  # echoes the last assistant message
    R("echo_user_message", temperature=0, echo=True),  # last message not the answer's role: nothing echoed
    # echo with logprobs: prompt_logprobs default to top_logprobs (vLLM's rule)
    R("echo_logprobs", temperature=0, messages=PREFILL, echo=True, logprobs=True, top_logprobs=2, **CONTINUE),
    R("bad_continue_with_generation_prompt", compare="status", messages=PREFILL, continue_final_message=True),
    # -- prompt logprobs, token ids --
    R("prompt_logprobs", temperature=0, prompt_logprobs=3, max_tokens=2),
    R("prompt_logprobs_0", temperature=0, prompt_logprobs=0, max_tokens=2),
    R("bad_prompt_logprobs_stream", stream=True, compare="status", prompt_logprobs=1),
    R("bad_prompt_logprobs_21", compare="status", prompt_logprobs=21),
    R("return_token_ids", temperature=0, return_token_ids=True),
    R("return_token_ids_stream", stream=True, temperature=0, return_token_ids=True),
    R("return_token_ids_n2_seeded", **SAMPLE, seed=13, n=2, return_token_ids=True),
    # -- model, roles, beam search --
    R("model_omitted", temperature=0, model=OMIT),
    R("model_empty", temperature=0, model=""),
    R("developer_role", temperature=0, messages=[{"role": "developer", "content": "Answer in one word."}, *HI]),
    R("developer_after_system", temperature=0, messages=[{"role": "system", "content": "You are terse."},
                                                         {"role": "developer", "content": "Answer in French."}, *HI]),
    R("custom_role", temperature=0, messages=[{"role": "narrator", "content": "It is a cold morning."}, *HI]),
    R("use_beam_search_false", temperature=0, use_beam_search=False, length_penalty=1.0),
    # -- vLLM's batch route --
    B("batch", temperature=0),
    B("batch_token_ids_logprobs", temperature=0, return_token_ids=True, logprobs=True, top_logprobs=2),
    B("batch_continue_echo", temperature=0, echo=True, **CONTINUE,
      messages=[PREFILL, [{"role": "user", "content": "Count: 1, 2,"}]]),
    B("bad_batch_n2", compare="status", n=2),
    B("batch_tools", compare="status", tools=TOOL),
    B("batch_stream", compare="status", stream=True),
    # -- accepted and ignored --
    R("ignored_user_metadata_store", temperature=0, user="u1", metadata={"k": "v"}, store=False),
    R("tool_choice_none_without_tools", temperature=0, tool_choice="none"),
    # -- bad values (both refuse) --
    R("bad_tools_required", compare="status", tools=TOOL, tool_choice="required"),
    R("bad_tools_auto", compare="status", tools=TOOL),
    R("bad_top_logprobs_without_logprobs", compare="status", top_logprobs=2),
    R("bad_top_logprobs_21", compare="status", logprobs=True, top_logprobs=21),
    R("bad_temperature_negative", compare="status", temperature=-1),
    R("bad_top_k_string", compare="status", top_k="x"),
    R("bad_min_tokens_over_max", compare="status", min_tokens=9, max_tokens=3),
    R("bad_logit_bias_key", compare="status", logit_bias={"abc": 1}),
    R("bad_stop_token_out_of_vocab", compare="status", stop_token_ids=[99999]),
    R("bad_json_schema_missing", compare="status", response_format={"type": "json_schema"}),
    R("bad_n_zero", compare="status", n=0),
    R("bad_stream_options_without_stream", compare="status", stream_options={"include_usage": True}),
    R("bad_presence_penalty", compare="status", presence_penalty=3),
    # -- differences by design (see STATUS_DIFFERENCES) --
    R("unknown_field", compare="status", temperature=0, foo=1),
    R("tools_with_tool_choice_none", compare="status", temperature=0, tools=TOOL, tool_choice="none"),
    R("use_beam_search", compare="status", temperature=0, use_beam_search=True, n=2),
    R("message_reasoning_field", compare="status", temperature=0,
      messages=[*HI, {"role": "assistant", "content": "Sunny.", "reasoning": "It is July."}, *HI]),
    R("tool_role_message", compare="status", temperature=0,
      messages=[*HI, {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]),
    # -- never sent to stock: its CPU engine dies on top_logprobs near the vocabulary size --
    Row("top_logprobs_near_vocab", {"max_tokens": 2, "messages": HI, "logprobs": True, "top_logprobs": 2000},
        "status", stock=False, ours_status=400),
    # -- video --
    Row("video_mp4_all_frames", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2,
                                 "media_io_kwargs": {"video": {"num_frames": 16}}}, video="mp4"),
    # lmms-eval's default of 64 frames: above our 32-frame cap (sampled at the cap, then limited
    # by the clip's 16 frames); stock takes every frame. Same frames, same answer.
    Row("video_mp4_64_frames_lmms_eval", {"max_tokens": 8, "temperature": 0,
                                          "media_io_kwargs": {"video": {"num_frames": 64}}}, video="mp4"),
    Row("video_mp4_default_sampling", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2},
        video="mp4"),
    Row("video_mp4_default_sampling_stream", {"max_tokens": 8, "temperature": 0, "stream": True}, video="mp4"),
    # vLLM's frame-list URL carries no timing; both take media_io_kwargs.video.fps for it.
    Row("video_frame_list_fps2", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2,
                                  "media_io_kwargs": {"video": {"fps": 2.0}}}, video="frames"),
    Row("video_frame_list", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2},
        video="frames"),
    Row("video_frame_list_stream", {"max_tokens": 8, "temperature": 0, "stream": True}, video="frames"),
    Row("video_mp4_seeded", {"max_tokens": 8, **SAMPLE, "seed": 4}, video="mp4"),
]
for _r in ROWS:  # R(max_tokens=None) drops the field
    for _k in [k for k, v in _r.body.items() if v is None]:
        del _r.body[_k]
assert len({r.id for r in ROWS}) == len(ROWS) >= 30

# Rows whose status differs by design (stock 200, ours 400), with why.
STATUS_DIFFERENCES = {
    "unknown_field": "stock ignores unknown fields; this server refuses them with a 400 naming them",
    "tools_with_tool_choice_none": "stock renders the tools into the prompt and ignores them; this server "
                                   "has no tool calling and refuses `tools` outright",
    "use_beam_search": "this server refuses beam search (vLLM runs it in its API layer; V-Reason's controller "
                       "runs one sequence per choice)",
    "message_reasoning_field": "stock hands a message's reasoning to the template, which drops it (Qwen2.5-VL's "
                               "does not read it); this server refuses it rather than drop it silently",
    "tool_role_message": "stock renders tool messages; this server has no tool calling and refuses them",
    "batch_stream": "stock's batch route ignores stream (it answers in one body); this server refuses it",
    "batch_tools": "stock's batch route renders the tools (tool_choice is \"none\" there); this server refuses "
                   "tools",
}
# Streamed rows that stock fails after its 200 (an error event), with why: ours is compared with
# stock's answer to the same request without streaming (the row named).
STOCK_STREAM_FAILS = {
    "echo_continued_stream": ("echo_continued", "vLLM 0.32 builds the echo chunk from the parsed message, "
                                                "whose content is a list of parts: DeltaMessage refuses it"),
}
# Rows whose text differs by design, with why; their token ids (return_token_ids), logprobs,
# finish reasons and usage are still compared.
TEXT_DIFFERENCES = {
    "continue_final_message_think": "the continued <think> goes to message.reasoning here (the reasoning "
                                    "split), to content on stock (no reasoning parser)",
}
# Rows whose tokens may differ (status, shape and finish reason are still compared), with why.
# Measured: for the 16-frame clip stock's prompt has 89 tokens (4 frames) with and without
# num_frames=16, ours 185 (the 16 frames asked for); stock's Qwen2.5-VL processor samples the
# loaded frames again at its own fps (2), this server samples once, to exactly num_frames.
_NUM_FRAMES = "this server honours media_io_kwargs.video.num_frames exactly; stock re-samples at 2 fps"
# vLLM's frame-list URL carries no timing: stock assumes 1 fps, this server --video-fps (2);
# with media_io_kwargs.video.fps set, both agree (row video_frame_list_fps2).
_FRAME_FPS = "unstated frame-list spacing: 1 fps on stock, --video-fps (2) here"
TOKEN_DIFFERENCES: dict[str, str] = {
    "video_mp4_all_frames": _NUM_FRAMES,
    "video_mp4_64_frames_lmms_eval": _NUM_FRAMES,
    "video_frame_list": _FRAME_FPS,
    "video_frame_list_stream": _FRAME_FPS,
}
# Response paths only this server returns.
OURS_ONLY = {
    "usage.completion_tokens_details",  # stock's stream usage chunk has no such key
    "videos", "videos[]", "videos[].frames_used", "videos[].frames_requested", "videos[].capped",
    "videos[].param",  # what each video was sampled to (the frame-cap report)
    "usage.completion_tokens_details.reasoning_tokens",  # the <think> split counts reasoning tokens
    "choices[].message.reasoning_content",  # the split's OpenAI-compatible alias, when it fires
}
# Response paths only stock returns (with a non-null value).
STOCK_ONLY = {
    "system_fingerprint",  # vLLM's version string; this server has /version instead
}
# Paths whose JSON type differs: stock sends null where this server sends an object.
TYPE_DIFFERENCES = {
    "usage.completion_tokens_details",  # {reasoning_tokens} here, null on stock
    "error.code",  # OpenAI's string codes here ("invalid_request"); stock repeats the HTTP status
}


@dataclass
class Answer:
    status: int
    param: str | None = None
    choices: dict = field(default_factory=dict)  # index -> {text, finish, stop, logprobs}
    usage: dict | None = None
    shape: dict = field(default_factory=dict)  # JSON path -> type name (nulls as "null")
    raw: object = None
    prompt: dict = field(default_factory=dict)  # prompt_token_ids, prompt_logprobs (when not null)
    error: dict | None = None  # an error event inside a 200 stream


def _shape(obj, path: str, out: dict) -> None:
    if isinstance(obj, dict):
        if path:
            out.setdefault(path, "object")
        for k, v in obj.items():
            _shape(v, f"{path}.{k}" if path else k, out)
    elif isinstance(obj, list):
        out.setdefault(path, "list")
        for v in obj:
            _shape(v, path + "[]", out)
    else:
        t = "null" if obj is None else "number" if isinstance(obj, (int, float)) and not isinstance(obj, bool) \
            else type(obj).__name__
        if out.get(path, "null") == "null":
            out[path] = t


def _tokens(lp: dict | None) -> list | None:
    if lp is None:
        return None
    return [(t["token"], t["logprob"], [(a["token"], a["logprob"]) for a in t["top_logprobs"]]) for t in lp["content"]]


def _prompt_logprobs(positions: list | None) -> list | None:
    """Per prompt position: sorted (token id, logprob, rank, decoded token)."""
    if positions is None:
        return None
    return [None if p is None else sorted((int(k), v["logprob"], v["rank"], v["decoded_token"]) for k, v in p.items())
            for p in positions]


def ask(url: str, row: Row, model: str, path: str = "/v1/chat/completions") -> Answer:
    body = {k: v for k, v in {"model": model, **row.body}.items() if v is not OMIT}
    with httpx.Client(timeout=180) as http:
        if not body.get("stream"):
            r = http.post(url + path, json=body)
            data = r.json()
            ans = Answer(r.status_code, raw=data)
            _shape(data, "", ans.shape)
            if r.status_code != 200:
                ans.param = data["error"]["param"]
                return ans
            for c in data["choices"]:
                ans.choices[c["index"]] = {"text": c["message"]["content"], "finish": c["finish_reason"],
                                           "stop": c.get("stop_reason"), "logprobs": _tokens(c["logprobs"]),
                                           "role": c["message"]["role"], "token_ids": c.get("token_ids")}
            ans.usage = {k: data["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
            ans.prompt = {k: data[k] for k in ("prompt_token_ids", "prompt_logprobs") if data.get(k) is not None}
            if "prompt_logprobs" in ans.prompt:
                ans.prompt["prompt_logprobs"] = _prompt_logprobs(ans.prompt["prompt_logprobs"])
            return ans
        with http.stream("POST", url + path, json=body) as r:
            if r.status_code != 200:
                data = json.loads(r.read())
                ans = Answer(r.status_code, data["error"]["param"], raw=data)
                _shape(data, "", ans.shape)
                return ans
            ans, chunks = Answer(200), []
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        ans.raw = chunks
        for ch in chunks:
            _shape(ch, "", ans.shape)
            if ch.get("usage"):
                ans.usage = {k: ch["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
            if ch.get("prompt_token_ids") is not None:
                ans.prompt["prompt_token_ids"] = ch["prompt_token_ids"]
            if "error" in ch:
                ans.error = ch["error"]
                continue
            for c in ch["choices"]:
                cur = ans.choices.setdefault(c["index"], {"text": "", "finish": None, "stop": None, "logprobs": None,
                                                          "role": None, "token_ids": None})
                cur["role"] = cur["role"] or c["delta"].get("role")
                if c.get("token_ids") is not None:
                    cur["token_ids"] = (cur["token_ids"] or []) + c["token_ids"]
                cur["text"] += c["delta"].get("content") or ""
                if c.get("finish_reason"):
                    cur["finish"], cur["stop"] = c["finish_reason"], c.get("stop_reason")
                if c.get("logprobs"):
                    cur["logprobs"] = (cur["logprobs"] or []) + _tokens(c["logprobs"])
        return ans


def _bodies(media_dir: Path, frames_url: str) -> list[Row]:
    out = []
    for row in ROWS:
        if row.video is None:
            out.append(row)
            continue
        url = f"file://{media_dir / 'shapes.mp4'}" if row.video == "mp4" else frames_url
        out.append(replace(row, body={**row.body, "messages": vmsg(url)}))
    return out


@pytest.fixture(scope="module")
def rows(media_dir) -> list[Row]:
    import base64

    import cv2

    from vreason.clients.synth_video import render_moving_shapes

    jpgs = [base64.b64encode(cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()
            for f in render_moving_shapes(num_frames=8)]
    return _bodies(media_dir, "data:video/jpeg;base64," + ",".join(jpgs))


@pytest.fixture(scope="module")
def gen_config(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("genconfig")
    (d / "generation_config.json").write_text(json.dumps(QWEN_DEFAULTS))
    return d


@pytest.fixture(scope="module")
def answers(demo_model, media_dir, gen_config, rows, tmp_path_factory) -> dict:
    """Both servers' answers to every row; stock first, then ours (one engine at a time)."""
    logs = tmp_path_factory.mktemp("parity")
    proc, url = start_stock_server(demo_model, media_dir, logs / "stock.log", gen_config, '{"video": 1, "image": 0}')
    try:
        stock = {r.id: ask(url, r, "demo", r.path) for r in rows if r.stock}
        stock_routes = _routes(url)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200, "stock vLLM died during the table"
    finally:
        stop_stock_server(proc)
    ours_server = start_server(demo_model, media_dir, logs / "ours.log", "--generation-config", str(gen_config))
    try:
        ours = {r.id: ask(ours_server.url, r, "demo", r.path) for r in rows}
        ours_routes = _routes(ours_server.url)
        log = ours_server.log.read_text()
    finally:
        stop_server(ours_server)
    table = {r.id: {"stock": _brief(stock.get(r.id)), "ours": _brief(ours[r.id])} for r in rows}
    (logs / "parity.json").write_text(json.dumps(table, indent=1))
    print("\n" + "\n".join(f"{k:36s} stock={v['stock']} ours={v['ours']}" for k, v in table.items()))
    return {"stock": stock, "ours": ours, "log": log, "routes": {"stock": stock_routes, "ours": ours_routes}}


# Routes beyond chat completions, asked of both servers (test_other_routes_as_on_stock).
INVOCATION = R("invocations", temperature=0)


def _routes(url: str) -> dict:
    return {"version": httpx.get(f"{url}/version", timeout=10).json(),
            "ping": httpx.get(f"{url}/ping", timeout=10).status_code,
            "invocations": ask(url, INVOCATION, "demo", "/invocations")}


def _brief(a: Answer | None) -> str:
    if a is None:
        return "not sent"
    if a.status != 200:
        return f"{a.status} param={a.param}"
    if a.error is not None or not a.choices:
        return f"200, then {a.error and a.error['message'][:60]!r}"
    c = a.choices[0]
    return f"200 {c['text']!r} finish={c['finish']} tokens={a.usage and a.usage['completion_tokens']}"


LOGPROB_DIFFS: list[float] = []  # every compared sampled-token logprob, for the summary below


def _assert_logprobs_close(ours: list | None, stock: list | None, where: str) -> None:
    assert (ours is None) == (stock is None), f"{where}: logprobs present on one side only"
    if ours is None:
        return
    assert len(ours) == len(stock), where
    for i, ((tok_o, lp_o, top_o), (tok_s, lp_s, top_s)) in enumerate(zip(ours, stock)):
        assert tok_o == tok_s, f"{where} token {i}"
        LOGPROB_DIFFS.append(abs(lp_o - lp_s))
        assert abs(lp_o - lp_s) <= LOGPROB_TOL, f"{where} token {i}: {lp_o} vs {lp_s}"
        assert [t for t, _ in top_o] == [t for t, _ in top_s], f"{where} token {i} top tokens"
        for (_, a), (_, b) in zip(top_o, top_s):
            assert abs(a - b) <= LOGPROB_TOL, f"{where} token {i} top: {a} vs {b}"


def _assert_prompt_logprobs_close(ours: list | None, stock: list | None, where: str) -> None:
    assert (ours is None) == (stock is None), f"{where}: prompt_logprobs on one side only"
    if ours is None:
        return
    assert len(ours) == len(stock) and (ours[0], stock[0]) == (None, None), where
    for i, (o, s) in enumerate(zip(ours[1:], stock[1:]), start=1):
        assert [(t, r, d) for t, _, r, d in o] == [(t, r, d) for t, _, r, d in s], f"{where} prompt position {i}"
        for (_, a, _, _), (_, b, _, _) in zip(o, s):
            LOGPROB_DIFFS.append(abs(a - b))
            assert abs(a - b) <= LOGPROB_TOL, f"{where} prompt position {i}: {a} vs {b}"


def _assert_same_shape(ours: dict, stock: dict, where: str) -> None:
    for path, t in ours.items():
        if path in stock:
            if stock[path] != t and "null" not in (t, stock[path]) or path in TYPE_DIFFERENCES:
                assert path in TYPE_DIFFERENCES, f"{where}: {path} is {t} here, {stock[path]} on stock"
        else:
            assert path in OURS_ONLY or t == "null", f"{where}: {path} only here (not in OURS_ONLY)"
    for path, t in stock.items():
        if path not in ours and t != "null":  # vLLM's null-valued extension fields are not sent here
            assert path in STOCK_ONLY or path.split(".")[0] in STOCK_ONLY, f"{where}: {path} only on stock"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_same_answer_as_stock_vllm(row: Row, answers: dict):
    ours = answers["ours"][row.id]
    if row.ours_status is not None:
        assert ours.status == row.ours_status, ours.raw
    if ours.status >= 400:
        assert ours.param, f"{row.id}: our 4xx names no param: {ours.raw}"
    if not row.stock:
        return
    stock = answers["stock"][row.id]
    assert ours.error is None, ours.error
    if row.id in STOCK_STREAM_FAILS:
        assert stock.error is not None, "stock streams this row now: compare it directly"
        twin = answers["stock"][STOCK_STREAM_FAILS[row.id][0]]
        assert [(c["text"], c["finish"]) for c in ours.choices.values()] == \
            [(c["text"], c["finish"]) for c in twin.choices.values()]
        assert ours.usage is None or ours.usage == twin.usage
        return
    assert stock.error is None, stock.error
    if row.id in STATUS_DIFFERENCES:
        assert (stock.status, ours.status) == (200, 400), (stock.raw, ours.raw)
        return
    assert stock.status // 100 == ours.status // 100, f"stock {stock.raw}\nours {ours.raw}"
    _assert_same_shape(ours.shape, stock.shape, row.id)
    if row.compare == "status" or ours.status != 200:
        return
    if row.id in TOKEN_DIFFERENCES:
        assert [c["finish"] for c in ours.choices.values()] == [c["finish"] for c in stock.choices.values()]
        assert (ours.usage or {}).get("completion_tokens") == (stock.usage or {}).get("completion_tokens")
        return
    assert ours.usage == stock.usage
    assert sorted(ours.choices) == sorted(stock.choices)
    for i in ours.choices:
        o, s = ours.choices[i], stock.choices[i]
        assert (o["finish"], o["stop"], o["role"], o["token_ids"]) == (s["finish"], s["stop"], s["role"],
                                                                       s["token_ids"]), f"choice {i}"
        if row.id not in TEXT_DIFFERENCES:
            assert o["text"] == s["text"], f"choice {i}"
        _assert_logprobs_close(o["logprobs"], s["logprobs"], f"{row.id} choice {i}")
    assert ours.prompt.get("prompt_token_ids") == stock.prompt.get("prompt_token_ids")
    _assert_prompt_logprobs_close(ours.prompt.get("prompt_logprobs"), stock.prompt.get("prompt_logprobs"), row.id)


def test_other_routes_as_on_stock(answers: dict):
    """/version's `version` is vLLM's on both (ours adds `vreason`); SageMaker's /ping and
    /invocations (a chat completion) answer alike."""
    stock, ours = answers["routes"]["stock"], answers["routes"]["ours"]
    assert ours["version"]["version"] == stock["version"]["version"] and "vreason" in ours["version"]
    assert ours["ping"] == stock["ping"] == 200
    o, s = ours["invocations"], stock["invocations"]
    assert o.status == s.status == 200 and o.choices[0]["text"] == s.choices[0]["text"] and o.usage == s.usage


def test_frame_cap_is_reported_in_the_response_and_the_log(answers: dict):
    """lmms-eval's 64 frames: sampled at the 32-frame cap (the clip has 16), said in both places."""
    ours = answers["ours"]["video_mp4_64_frames_lmms_eval"]
    assert ours.raw["videos"] == [{"frames_used": 16, "frames_requested": 64, "capped": True,
                                   "param": "media_io_kwargs.video.num_frames"}]
    assert ("64 frames asked (media_io_kwargs.video.num_frames), above the server's cap: sampled at most 32 "
            "(16 used)") in answers["log"]
    plain = answers["ours"]["video_mp4_all_frames"]
    assert plain.raw["videos"] == [{"frames_used": 16, "frames_requested": 16, "capped": False}]


def test_logprob_difference_summary(answers: dict):
    """After the table (runs last): how far apart the logprobs were (printed with -s)."""
    if not LOGPROB_DIFFS:
        pytest.skip("no logprob rows ran in this session")
    print(f"\nlogprobs compared: {len(LOGPROB_DIFFS)}, max |ours - stock| = {max(LOGPROB_DIFFS):.2e}")
